//! The one retry policy: exponential back-off with jitter. The base delay doubles from 1 s to
//! 15 s and jitter adds up to as much again, so no wait exceeds 30 s.
//!
//! Used wherever the agent waits for something that will come up on its own (a donor's backup
//! server, the local mysqld, the primary), instead of exiting into CrashLoopBackOff.

use std::time::Duration;

use anyhow::{Result, bail};
use backon::BackoffBuilder;
use tokio_util::sync::CancellationToken;

pub const INITIAL_DELAY: Duration = Duration::from_secs(1);
/// The base delay stops growing here.
pub const MAX_BASE_DELAY: Duration = Duration::from_secs(15);
/// The longest wait the schedule yields, jitter included.
pub const MAX_DELAY: Duration = Duration::from_secs(30);

/// An endless schedule of delays between tries.
pub fn backoff() -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(INITIAL_DELAY)
        .with_max_delay(MAX_BASE_DELAY)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Sleeps for `delay` unless cancelled first, which is an error the caller propagates.
pub async fn sleep(delay: Duration, cancel: &CancellationToken) -> Result<()> {
    tokio::select! {
        () = tokio::time::sleep(delay) => Ok(()),
        () = cancel.cancelled() => bail!("cancelled"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap() {
        let delays: Vec<Duration> = backoff().take(12).collect();
        assert_eq!(delays.len(), 12);
        assert!(delays[0] >= INITIAL_DELAY && delays[0] <= INITIAL_DELAY * 2);
        assert!(delays.iter().all(|d| *d <= MAX_DELAY));
        assert!(delays[11] >= MAX_BASE_DELAY);
    }

    #[tokio::test]
    async fn sleep_ends_early_when_cancelled() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        assert!(sleep(Duration::from_secs(3600), &cancel).await.is_err());
    }
}
