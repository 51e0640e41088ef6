//! Work that must not start, or go on, after a deadline.

use std::future::Future;

use tokio::time::Instant;

/// How a call missed its deadline.
#[derive(Debug, PartialEq, Eq)]
pub enum Late {
    /// The call was never started: nothing reached the platform.
    BeforeStart,
    /// The call was under way: whether it reached the platform is unknown.
    Midway,
}

/// Runs `call` only while `deadline` has not passed, and checks the clock
/// *before* every poll of it.
///
/// `tokio::time::timeout` polls its future first and the timer second, so a
/// daemon that was stopped (SIGSTOP, a frozen VM) past its deadline would
/// still start the send on its first poll after it wakes: by then the
/// reply's lease may have run out and another daemon may have checked the
/// platform, found nothing and sent it. Checking first closes that door:
/// once the deadline has passed, the call is not started or continued. The
/// monotonic clock keeps running while a process is stopped.
pub async fn before<F: Future>(deadline: Instant, call: F) -> Result<F::Output, Late> {
    let mut call = std::pin::pin!(call);
    let mut started = false;
    let sleep = tokio::time::sleep_until(deadline);
    tokio::pin!(sleep);
    std::future::poll_fn(|cx| {
        if Instant::now() >= deadline {
            return std::task::Poll::Ready(Err(if started {
                Late::Midway
            } else {
                Late::BeforeStart
            }));
        }
        started = true;
        if let std::task::Poll::Ready(out) = call.as_mut().poll(cx) {
            return std::task::Poll::Ready(Ok(out));
        }
        // Wakes us at the deadline even if the call never does.
        let _ = sleep.as_mut().poll(cx);
        std::task::Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use tokio::time::Instant;

    use super::{before, Late};

    #[tokio::test]
    async fn a_call_whose_deadline_passed_is_never_started() {
        // What a daemon sees when it wakes from SIGSTOP after its lease:
        // `tokio::time::timeout` would poll the send once here.
        let polled = AtomicBool::new(false);
        let deadline = Instant::now();
        let out = before(deadline, async {
            polled.store(true, Ordering::SeqCst);
        })
        .await;
        assert_eq!(out, Err(Late::BeforeStart));
        assert!(!polled.load(Ordering::SeqCst), "the send was started");
    }

    #[tokio::test]
    async fn a_call_under_way_at_the_deadline_is_reported_midway() {
        let deadline = Instant::now() + Duration::from_millis(20);
        let out = before(deadline, std::future::pending::<()>()).await;
        assert_eq!(out, Err(Late::Midway));
    }

    #[tokio::test]
    async fn a_call_that_ends_in_time_gives_its_output() {
        let deadline = Instant::now() + Duration::from_secs(3600);
        let out = before(deadline, async {
            tokio::task::yield_now().await;
            7
        })
        .await;
        assert_eq!(out, Ok(7));
    }
}
