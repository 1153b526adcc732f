//! The one retry policy: exponential back-off with jitter. The base delay doubles from 1 s to
//! 15 s and jitter adds up to as much again, so no wait exceeds 30 s.
//!
//! Used wherever the agent waits for something that will come up on its own (a donor's backup
//! server, the local mysqld, the primary), instead of exiting into CrashLoopBackOff; errors
//! that no retry can fix are [`Failure::Permanent`] and end the wait at once.

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, Result};
use backon::BackoffBuilder;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::errors::{Interrupted, report};

pub const INITIAL_DELAY: Duration = Duration::from_secs(1);
/// The base delay stops growing here.
pub const MAX_BASE_DELAY: Duration = Duration::from_secs(15);
/// The longest wait the schedule yields, jitter included.
pub const MAX_DELAY: Duration = Duration::from_secs(30);

/// The delays between tries, growing to the cap.
pub struct Backoff {
    delays: Box<dyn Iterator<Item = Duration> + Send>,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    pub fn new() -> Self {
        Self {
            delays: Box::new(
                backon::ExponentialBuilder::default()
                    .with_min_delay(INITIAL_DELAY)
                    .with_max_delay(MAX_BASE_DELAY)
                    .with_jitter()
                    .without_max_times()
                    .build(),
            ),
        }
    }

    /// The next delay of the schedule.
    pub fn next_delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(MAX_DELAY).min(MAX_DELAY)
    }

    /// Sleeps the next delay, unless cancelled first (an [`Interrupted`] error).
    pub async fn wait(&mut self, cancel: &CancellationToken) -> Result<()> {
        sleep(self.next_delay(), cancel).await
    }
}

/// Sleeps for `delay` unless cancelled first, which is an [`Interrupted`] error the caller
/// propagates.
pub async fn sleep(delay: Duration, cancel: &CancellationToken) -> Result<()> {
    tokio::select! {
        () = tokio::time::sleep(delay) => Ok(()),
        () = cancel.cancelled() => Err(anyhow::Error::new(Interrupted)),
    }
}

/// How one try failed.
#[derive(Debug)]
pub enum Failure {
    /// It may work later: wait and try again.
    Transient(anyhow::Error),
    /// No retry can fix it (a syntax error, a refused privilege, a wrong configuration).
    Permanent(anyhow::Error),
}

impl Failure {
    /// Adds context to the error, keeping its kind.
    pub fn context(self, context: String) -> Self {
        match self {
            Failure::Transient(e) => Failure::Transient(e.context(context)),
            Failure::Permanent(e) => Failure::Permanent(e.context(context)),
        }
    }

    pub fn into_error(self) -> anyhow::Error {
        match self {
            Failure::Transient(e) | Failure::Permanent(e) => e,
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Transient(e)
    }
}

/// Runs `op` until it succeeds, waiting the back-off schedule after each transient failure
/// (logged with `what`). Ends with the error on a permanent failure, and with an
/// [`Interrupted`] error on cancellation.
pub async fn until_ok<T, F, Fut>(what: &str, cancel: &CancellationToken, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let mut backoff = Backoff::new();
    for attempt in 1u64.. {
        match op().await {
            Ok(value) => return Ok(value),
            Err(Failure::Permanent(e)) => return Err(e),
            Err(Failure::Transient(e)) => {
                if cancel.is_cancelled() {
                    return Err(e.context(Interrupted));
                }
                let delay = backoff.next_delay();
                info!(attempt, error = %report(&e), retry_in = ?delay, "{what}: not yet; retrying");
                sleep(delay, cancel)
                    .await
                    .with_context(|| format!("{what}: {}", report(&e)))?;
            }
        }
    }
    unreachable!("the attempt counter is unbounded")
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::anyhow;
    use tokio::time::Instant;

    #[test]
    fn delays_grow_to_the_cap() {
        let mut backoff = Backoff::new();
        let delays: Vec<Duration> = (0..12).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] >= INITIAL_DELAY && delays[0] <= INITIAL_DELAY * 2);
        assert!(delays.iter().all(|d| *d <= MAX_DELAY));
        assert!(delays[11] >= MAX_BASE_DELAY);
    }

    /// Three transient failures cost three back-off waits on the (paused) clock, no more.
    #[tokio::test(start_paused = true)]
    async fn transient_failures_wait_the_schedule() {
        let cancel = CancellationToken::new();
        let started = Instant::now();
        let mut tries = 0;
        let value = until_ok("the test", &cancel, || {
            tries += 1;
            let t = tries;
            async move {
                if t <= 3 {
                    Err(Failure::Transient(anyhow!("not yet")))
                } else {
                    Ok(t)
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(value, 4);
        let waited = started.elapsed();
        // 1-2 s, 2-4 s, 4-8 s.
        assert!(
            waited >= Duration::from_secs(7) && waited <= Duration::from_secs(14),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_failures_and_cancellation_end_the_wait() {
        let cancel = CancellationToken::new();
        let started = Instant::now();
        let err = until_ok::<(), _, _>("the test", &cancel, || async {
            Err(Failure::Permanent(anyhow!("syntax error")))
        })
        .await
        .unwrap_err();
        assert_eq!(err.to_string(), "syntax error");
        assert_eq!(started.elapsed(), Duration::ZERO);

        let canceller = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(100)).await;
            canceller.cancel();
        });
        let err = until_ok::<(), _, _>("the test", &cancel, || async {
            Err(Failure::Transient(anyhow!("down")))
        })
        .await
        .unwrap_err();
        assert!(err.downcast_ref::<Interrupted>().is_some(), "{err:#}");
        assert!(started.elapsed() >= Duration::from_secs(100));
        assert!(started.elapsed() < Duration::from_secs(100) + MAX_DELAY);
    }
}
