//! hourglass: the daemon.
