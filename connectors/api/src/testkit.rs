//! Test support, never in the production binary: a scriptable in-memory
//! connector and the conformance suite every real connector runs in its
//! own tests. (The simulated marketplace of the demo is the crate
//! `hourglass-simulated`.)

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::Utc;

use crate::{
    Batch, Capabilities, Connector, ConnectorError, Cursors, Direction, Message, OutgoingReply,
    SentCheck, SentReply,
};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned test platform is still usable: the data is plain.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The in-memory "platform" behind a [`ScriptedConnector`]: tests append
/// messages and queue errors, and read the replies that were sent.
#[derive(Debug, Default)]
pub struct ScriptedPlatform {
    messages: Mutex<Vec<Message>>,
    errors: Mutex<Vec<ConnectorError>>,
    sent: Mutex<Vec<OutgoingReply>>,
    /// Messages returned per poll at most (pagination).
    page_size: Mutex<Option<usize>>,
}

impl ScriptedPlatform {
    pub fn new() -> Arc<ScriptedPlatform> {
        Arc::new(ScriptedPlatform::default())
    }

    pub fn push(&self, message: Message) {
        lock(&self.messages).push(message);
    }

    /// The next poll (or send) fails with `error`, once.
    pub fn fail_next(&self, error: ConnectorError) {
        lock(&self.errors).push(error);
    }

    pub fn set_page_size(&self, size: usize) {
        *lock(&self.page_size) = Some(size);
    }

    pub fn sent(&self) -> Vec<OutgoingReply> {
        lock(&self.sent).clone()
    }

    fn take_error(&self) -> Option<ConnectorError> {
        let mut errors = lock(&self.errors);
        if errors.is_empty() {
            None
        } else {
            Some(errors.remove(0))
        }
    }
}

/// A connector over a [`ScriptedPlatform`]. Its cursor is the index of the
/// next message.
#[derive(Debug, Clone)]
pub struct ScriptedConnector {
    instance: String,
    channel: String,
    platform: Arc<ScriptedPlatform>,
}

impl ScriptedConnector {
    pub fn new(instance: &str, channel: &str, platform: Arc<ScriptedPlatform>) -> Self {
        ScriptedConnector {
            instance: instance.to_owned(),
            channel: channel.to_owned(),
            platform,
        }
    }
}

fn cursor_index(cursors: &Cursors) -> Result<usize, ConnectorError> {
    match cursors.get("") {
        None => Ok(0),
        Some(v) => v.parse().map_err(|_| ConnectorError::BadData {
            reason: format!("cursor {v:?} is not an index"),
            raw: v.as_bytes().to_vec(),
        }),
    }
}

#[async_trait]
impl Connector for ScriptedConnector {
    fn kind(&self) -> &str {
        "scripted"
    }

    fn channel(&self) -> &str {
        &self.channel
    }

    fn instance(&self) -> &str {
        &self.instance
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            poll: true,
            push: false,
            send: true,
            check_sent: true,
        }
    }

    async fn health_check(&self) -> Result<(), ConnectorError> {
        Ok(())
    }

    async fn poll(&self, cursors: &Cursors) -> Result<Batch, ConnectorError> {
        if let Some(err) = self.platform.take_error() {
            return Err(err);
        }
        let start = cursor_index(cursors)?;
        let all = lock(&self.platform.messages);
        let page = lock(&self.platform.page_size).unwrap_or(usize::MAX);
        let end = all.len().min(start.saturating_add(page));
        let messages = all
            .get(start..end)
            .map(<[Message]>::to_vec)
            .unwrap_or_default();
        let mut batch = Batch {
            messages,
            more: end < all.len(),
            ..Batch::default()
        };
        batch.cursors.insert(String::new(), end.to_string());
        Ok(batch)
    }

    async fn send_reply(&self, reply: &OutgoingReply) -> Result<SentReply, ConnectorError> {
        if let Some(err) = self.platform.take_error() {
            return Err(err);
        }
        lock(&self.platform.sent).push(reply.clone());
        Ok(SentReply {
            external_id: format!("scripted-{}", reply.outbox_id),
            sent_at: Utc::now(),
        })
    }

    async fn check_sent(&self, reply: &OutgoingReply) -> Result<SentCheck, ConnectorError> {
        let sent = lock(&self.platform.sent);
        Ok(match sent.iter().find(|r| r.outbox_id == reply.outbox_id) {
            Some(r) => SentCheck::Sent(SentReply {
                external_id: format!("scripted-{}", r.outbox_id),
                sent_at: Utc::now(),
            }),
            None => SentCheck::NotSent,
        })
    }
}

/// The conformance suite. Seed the platform behind `conn` with at least one
/// inbound message first; the suite polls until the connector says there is
/// no more and checks the contract of [`Connector::poll`]. Returns every
/// broken rule, so a test prints them all at once.
pub async fn conformance(conn: &dyn Connector) -> Result<ConformanceReport, Vec<String>> {
    let mut problems = Vec::new();
    if conn.instance().is_empty() {
        problems.push("instance() is empty".to_owned());
    }
    if conn.kind().is_empty() {
        problems.push("kind() is empty".to_owned());
    }
    if let Err(e) = conn.health_check().await {
        problems.push(format!("health_check failed: {e}"));
    }
    if !conn.capabilities().poll {
        problems.push("capabilities().poll is false".to_owned());
        return Err(problems);
    }

    let mut cursors = Cursors::new();
    let mut seen = HashSet::new();
    let mut report = ConformanceReport::default();
    for round in 0..1000 {
        let batch = match conn.poll(&cursors).await {
            Ok(b) => b,
            Err(e) => {
                problems.push(format!("poll {round} failed: {e}"));
                break;
            }
        };
        for m in &batch.messages {
            check_message(m, &mut problems);
            if !seen.insert(m.external_id.clone()) {
                problems.push(format!(
                    "poll {round} returned {:?} again although its cursor was committed",
                    m.external_id
                ));
            }
        }
        report.messages += batch.messages.len();
        report.quarantined += batch.quarantined.len();
        report.polls += 1;
        let progressed = !batch.cursors.is_empty();
        cursors.extend(batch.cursors);
        if !batch.more {
            break;
        }
        if !progressed {
            problems.push(format!("poll {round} said more=true but moved no cursor"));
            break;
        }
    }
    if report.messages == 0 {
        problems.push("no message came back from a seeded platform".to_owned());
    }
    // A poll after everything was read returns nothing new.
    match conn.poll(&cursors).await {
        Ok(b) => {
            for m in &b.messages {
                if seen.contains(&m.external_id) {
                    problems.push(format!(
                        "a poll at the end returned {:?} again",
                        m.external_id
                    ));
                }
            }
        }
        Err(e) => problems.push(format!("the final poll failed: {e}")),
    }
    if problems.is_empty() {
        Ok(report)
    } else {
        Err(problems)
    }
}

/// What the conformance suite saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConformanceReport {
    pub polls: usize,
    pub messages: usize,
    pub quarantined: usize,
}

fn check_message(m: &Message, problems: &mut Vec<String>) {
    let id = &m.external_id;
    if id.trim().is_empty() {
        problems.push("a message has an empty external_id".to_owned());
    }
    if m.thread_key.trim().is_empty() {
        problems.push(format!("{id:?} has an empty thread_key"));
    }
    if m.sent_at > Utc::now() + chrono::Duration::days(1) {
        problems.push(format!("{id:?} is dated in the future: {}", m.sent_at));
    }
    if m.direction == Direction::Inbound && m.customer.is_none() {
        problems.push(format!("inbound {id:?} has no customer identity"));
    }
    if let Some(c) = &m.customer {
        if c.handle.trim().is_empty() {
            problems.push(format!("{id:?} has a customer with an empty handle"));
        }
    }
    if let Some(order) = &m.order_id {
        if order.trim().is_empty() {
            problems.push(format!("{id:?} has an empty order id"));
        }
    }
    for a in &m.attachments {
        if let Some(data) = &a.data {
            if data.len() as u64 != a.size {
                problems.push(format!(
                    "{id:?} has an attachment whose size {} differs from its {} bytes",
                    a.size,
                    data.len()
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CustomerIdentity;

    fn inbound(i: usize) -> Message {
        let mut m = Message::new(
            format!("m{i}"),
            "t1",
            Direction::Inbound,
            Utc::now(),
            "hello",
        );
        m.customer = Some(CustomerIdentity {
            channel: "test".into(),
            handle: "buyer".into(),
            display_name: None,
            email: None,
        });
        m
    }

    #[tokio::test]
    async fn scripted_connector_passes_conformance_with_pagination() {
        let platform = ScriptedPlatform::new();
        platform.set_page_size(2);
        for i in 0..5 {
            platform.push(inbound(i));
        }
        let conn = ScriptedConnector::new("t", "test", platform);
        let report = conformance(&conn).await.unwrap();
        assert_eq!(report.messages, 5);
        assert_eq!(report.polls, 3);
    }

    #[tokio::test]
    async fn conformance_catches_a_connector_that_repeats_itself() {
        struct Repeats(ScriptedConnector);
        #[async_trait]
        impl Connector for Repeats {
            fn kind(&self) -> &str {
                "repeats"
            }
            fn instance(&self) -> &str {
                "r"
            }
            fn capabilities(&self) -> Capabilities {
                self.0.capabilities()
            }
            async fn health_check(&self) -> Result<(), ConnectorError> {
                Ok(())
            }
            async fn poll(&self, _: &Cursors) -> Result<Batch, ConnectorError> {
                // Ignores the cursor, like an IMAP client that forgets that
                // `UID FETCH n:*` always returns the newest message.
                self.0.poll(&Cursors::new()).await
            }
            async fn send_reply(&self, r: &OutgoingReply) -> Result<SentReply, ConnectorError> {
                self.0.send_reply(r).await
            }
        }
        let platform = ScriptedPlatform::new();
        platform.push(inbound(1));
        let conn = Repeats(ScriptedConnector::new("r", "test", platform));
        let problems = conformance(&conn).await.unwrap_err();
        assert!(problems.iter().any(|p| p.contains("again")), "{problems:?}");
    }
}
