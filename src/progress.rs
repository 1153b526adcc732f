//! Progress lines for long transfers, one every few seconds and never per chunk: a clone of
//! a large database takes minutes to hours, and a silent init container helps nobody.

use std::time::{Duration, Instant};

use tracing::info;

/// How often a running transfer logs a line, unless `--progress-interval` says otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

const MIB: f64 = 1024.0 * 1024.0;

/// What a transfer has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    pub bytes: u64,
    /// Files completed, when the transfer knows.
    pub files: Option<u64>,
    /// What the donor announced it would send, when it did.
    pub estimated_bytes: Option<u64>,
}

/// Logs `what` with `sample()` every `interval` until the task is dropped.
pub async fn report(
    what: &'static str,
    interval: Duration,
    started: Instant,
    mut sample: impl FnMut() -> Sample,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        log(what, sample(), started.elapsed());
    }
}

/// One progress line: amount, rate, elapsed, and against an estimate the share and time left.
/// The message reads as a sentence; the raw numbers are fields, for JSON logs.
pub fn log(what: &str, sample: Sample, elapsed: Duration) {
    let message = describe(what, sample, elapsed);
    info!(
        bytes = sample.bytes,
        estimated_bytes = sample.estimated_bytes,
        files = sample.files,
        elapsed_s = elapsed.as_secs(),
        "{message}"
    );
}

fn describe(what: &str, sample: Sample, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let mib = sample.bytes as f64 / MIB;
    let rate = mib / secs;
    let mut line = format!("{what}: {mib:.1} MiB");
    let estimate = sample.estimated_bytes.filter(|&total| total > 0);
    if let Some(total) = estimate {
        let percent = (100.0 * sample.bytes as f64 / total as f64).min(100.0);
        line.push_str(&format!(
            " of about {:.1} MiB ({percent:.0}%)",
            total as f64 / MIB
        ));
    }
    line.push_str(&format!(", {rate:.1} MiB/s"));
    if let Some(files) = sample.files {
        line.push_str(&format!(", {files} files"));
    }
    line.push_str(&format!(", {} s elapsed", secs.round() as u64));
    if let Some(total) = estimate
        && rate > 0.0
        && total > sample.bytes
    {
        let left = (total - sample.bytes) as f64 / MIB / rate;
        line.push_str(&format!(", about {} s left", left.round() as u64));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_read_as_sentences() {
        let sample = Sample {
            bytes: 30 * 1024 * 1024,
            files: Some(5),
            estimated_bytes: Some(120 * 1024 * 1024),
        };
        assert_eq!(
            describe("receiving", sample, Duration::from_secs(10)),
            "receiving: 30.0 MiB of about 120.0 MiB (25%), 3.0 MiB/s, 5 files, 10 s elapsed, about 30 s left"
        );
        let bare = Sample {
            bytes: 1024 * 1024,
            ..Default::default()
        };
        assert_eq!(
            describe("streaming", bare, Duration::from_secs(2)),
            "streaming: 1.0 MiB, 0.5 MiB/s, 2 s elapsed"
        );
    }
}
