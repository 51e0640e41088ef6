#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    hourglass::cli::main()
}

/// glibc gives threads that allocate at the same time arenas of their own
/// (up to eight per core) and keeps what each one freed for later: during
/// a large sync the tokio workers, SQLite's thread and the blocking pool
/// held ~20 MB more at peak than with fewer arenas. Four keep that peak
/// (benches/ingest.rs, 20,000 messages: ~80 MB, against ~88 MB with
/// glibc's default) without the lock contention of two, where the tokio
/// workers and SQLite's thread queued for one arena's lock (~15 % more
/// CPU per message). An operator's own `MALLOC_ARENA_MAX` still wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: first thing in main, before any other thread exists;
        // mallopt only sets one of the allocator's tunables.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 4);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}
