//! Accepting connections without spinning on errors.
//!
//! `accept` fails for reasons that last (EMFILE, ENFILE, ENOBUFS: out of descriptors or
//! memory) until something else frees a resource; retrying at once would spin a core and
//! flood the log. So a failed accept waits, and a burst of failures is logged once.

use std::future::Future;
use std::time::Duration;

/// Pause after a failed accept.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts with a pause after each failure; remembers the current burst of failures.
#[derive(Debug)]
pub struct Acceptor {
    what: &'static str,
    failures_in_burst: u64,
}

impl Acceptor {
    /// An acceptor for the listener named `what` in log lines.
    pub fn new(what: &'static str) -> Acceptor {
        Acceptor { what, failures_in_burst: 0 }
    }

    /// Calls `accept` until it succeeds, waiting [`ACCEPT_BACKOFF`] after every failure.
    pub async fn accept<T, F>(&mut self, mut accept: impl FnMut() -> F) -> T
    where
        F: Future<Output = std::io::Result<T>>,
    {
        loop {
            match accept().await {
                Ok(accepted) => {
                    if self.failures_in_burst > 0 {
                        tracing::info!(
                            "{}: accepting again after {} failed accepts",
                            self.what,
                            self.failures_in_burst
                        );
                        self.failures_in_burst = 0;
                    }
                    return accepted;
                }
                Err(err) => {
                    if self.failures_in_burst == 0 {
                        tracing::warn!("{}: accept failed: {err}; retrying every {ACCEPT_BACKOFF:?}", self.what);
                    }
                    self.failures_in_burst += 1;
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn failed_accepts_back_off_instead_of_spinning() {
        let mut acceptor = Acceptor::new("test listener");
        let mut calls = 0u32;
        let started = Instant::now();
        let accepted = acceptor
            .accept(|| {
                calls += 1;
                let result = if calls <= 4 { Err(std::io::Error::from_raw_os_error(24)) } else { Ok(calls) };
                std::future::ready(result)
            })
            .await;
        assert_eq!(accepted, 5, "four EMFILE errors, then a connection");
        assert!(started.elapsed() >= 4 * ACCEPT_BACKOFF, "each failure waited: {:?}", started.elapsed());
        assert_eq!(acceptor.failures_in_burst, 0, "a success ends the burst");
    }
}
