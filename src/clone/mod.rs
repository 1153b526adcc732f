//! `clone`: turns an empty data dir into a prepared copy of a peer's data, or leaves it alone.
//!
//! - [`datadir`]: the states a data dir goes through, and the durable steps between them;
//! - [`donor`]: who to clone from;
//! - [`receive`]: one transfer from one donor, into the staging directory;
//! - [`verify`]: whether what arrived is a whole backup this pod can use;
//! - this module: the order of things, and the retry policy across donors.

pub mod datadir;
pub mod donor;
pub mod receive;
pub mod verify;

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{Instrument, info, info_span, warn};

use crate::backup_tool::{self, BackupTool};
use crate::coordinates::Coordinates;
use crate::errors::{Interrupted, report};
use crate::metadata::BackupMetadata;
use crate::pod::PodIdentity;
use crate::process;
use crate::progress::{self, Sample};
use crate::protocol::StreamInfo;
use crate::retry::Backoff;
use crate::secrets::BackupSecret;
use crate::xbstream::Progress;
use datadir::DataDirState;
pub use datadir::{DONE_MARKER, IN_PROGRESS_MARKER, STAGING_DIR};
pub use donor::Donor;

#[derive(Debug, Clone)]
pub struct Config {
    pub pod: PodIdentity,
    pub data_dir: PathBuf,
    /// Tried in order, round after round.
    pub donors: Vec<Donor>,
    /// `--backup-tool`, or `None` to search PATH.
    pub tool: Option<PathBuf>,
    pub policy: Policy,
    /// A transfer moving less than [`receive::STALL_MIN_BYTES`] in this long has stalled.
    pub stall_timeout: Duration,
    /// Refuse streams without the agent's end-of-stream entry (no tutorial donors).
    pub require_end_marker: bool,
    /// Prove it to donors and require their proof; `None` accepts any donor.
    pub secret: Option<BackupSecret>,
    pub progress_interval: Duration,
}

/// How long to keep trying donors.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Failed transfers (a donor that streamed and then failed) before giving up.
    pub max_attempts: u32,
    /// How long to keep waiting while no donor can serve at all.
    pub donor_wait: Duration,
}

/// Why one attempt at one donor did not produce a clone.
#[derive(Debug)]
pub enum AttemptError {
    /// The donor cannot serve now (not up, busy, not ready): wait and retry, no harm done.
    Unavailable(String),
    /// A transfer started and failed: counts towards `max_attempts`.
    Failed(anyhow::Error),
    /// The local volume failed (full, over quota, read-only), or the pods disagree on the
    /// secret: no retry can help.
    Fatal(anyhow::Error),
}

impl AttemptError {
    /// Sorts an error of a started transfer: the local volume's fault, or the transfer's.
    pub fn from_transfer(e: anyhow::Error) -> Self {
        if is_local_volume_error(&e) {
            AttemptError::Fatal(e.context("the data volume cannot take the clone"))
        } else {
            AttemptError::Failed(e)
        }
    }
}

/// ENOSPC, EDQUOT and EROFS: the data volume cannot take the clone, whoever sends it.
fn is_local_volume_error(e: &anyhow::Error) -> bool {
    use nix::libc::{EDQUOT, ENOSPC, EROFS};
    e.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
            .is_some_and(|code| [ENOSPC, EDQUOT, EROFS].contains(&code))
    })
}

/// A clone received, verified and prepared in the staging directory.
#[derive(Debug)]
struct Cloned {
    bytes: u64,
    files: u64,
    coordinates: Coordinates,
    elapsed: Duration,
}

pub async fn run(config: &Config, cancel: &CancellationToken) -> Result<()> {
    let data_dir = &config.data_dir;
    if config.pod.is_primary() {
        info!(pod = %config.pod, "ordinal 0 is the primary: nothing to clone");
        return Ok(());
    }
    if config.secret.is_none() {
        warn!(
            "no --backup-secret-file: donors are not authenticated, so anyone on the pod network could feed this pod a backup"
        );
    }
    match datadir::inspect(data_dir)? {
        DataDirState::Empty => {}
        DataDirState::CloneDone => {
            datadir::tidy_done(data_dir)?;
            info!(data_dir = %data_dir.display(), "the data dir already holds a completed clone");
            return Ok(());
        }
        DataDirState::Initialized => {
            info!(data_dir = %data_dir.display(), "the data dir already holds a server's data; leaving it alone");
            return Ok(());
        }
        DataDirState::Unprepared { backup_type } => bail!(
            "{} holds a backup that was never prepared (backup_type = {backup_type}), probably a clone interrupted under another tool; \
             refusing to start on it or to delete it: move it away or empty the directory to clone afresh",
            data_dir.display()
        ),
        DataDirState::Unknown { entries } => bail!(
            "{} is not empty but holds no MySQL data ({}); refusing to clone over it",
            data_dir.display(),
            entries.join(", ")
        ),
        DataDirState::CloneInterrupted => {
            warn!(data_dir = %data_dir.display(), "an earlier clone did not finish; removing what it left");
            blocking(datadir::wipe, data_dir).await?;
        }
    }
    let tool = BackupTool::locate(config.tool.as_deref())
        .await
        .map_err(crate::errors::usage)?;
    datadir::begin(
        data_dir,
        &format!("pod = {}\nstarted_at = {}\n", config.pod, now()),
    )?;
    let tool = &tool;
    let cloned = from_donors(&config.donors, config.policy, cancel, |donor| {
        let span = info_span!("clone", %donor);
        async move {
            let attempt = attempt(config, tool, &donor, cancel).await;
            if attempt.is_err() {
                // Free the space now; the marker makes the next run start clean anyway.
                let _ = blocking(datadir::discard_staging, data_dir).await;
            }
            attempt
        }
        .instrument(span)
    })
    .await;
    let (donor, cloned) = match cloned {
        Ok(cloned) => cloned,
        Err(e) => {
            let _ = blocking(datadir::discard_staging, data_dir).await;
            return Err(e.context(format!("cloning into {}", data_dir.display())));
        }
    };
    let record = format!(
        "completed_at = {}\ndonor = {donor}\nstream_bytes = {}\nfiles = {}\ncoordinates = {:?}\n",
        now(),
        cloned.bytes,
        cloned.files,
        cloned.coordinates
    );
    blocking(move |d| datadir::commit(d, &record), data_dir).await?;
    info!(
        %donor,
        bytes = cloned.bytes,
        files = cloned.files,
        elapsed = ?cloned.elapsed,
        origin = ?cloned.coordinates.origin,
        position = ?cloned.coordinates.position,
        "clone complete"
    );
    Ok(())
}

/// Tries `donors` in order, round after round with back-off, until one `attempt` succeeds.
/// Gives up after `policy.max_attempts` failed transfers, after `policy.donor_wait` without
/// any donor able to serve, at once on a fatal error, and on cancellation (an
/// [`Interrupted`] error).
pub async fn from_donors<T, F, Fut>(
    donors: &[Donor],
    policy: Policy,
    cancel: &CancellationToken,
    mut attempt: F,
) -> Result<(Donor, T)>
where
    F: FnMut(Donor) -> Fut,
    Fut: Future<Output = Result<T, AttemptError>>,
{
    anyhow::ensure!(!donors.is_empty(), "no donor to take a backup from");
    let mut failures = 0;
    let mut backoff = Backoff::new();
    let mut waiting_since = Instant::now();
    loop {
        let mut reasons = Vec::new();
        for donor in donors {
            let result = attempt(donor.clone()).await;
            if cancel.is_cancelled() {
                return Err(anyhow!(Interrupted).context(format!("taking a backup from {donor}")));
            }
            match result {
                Ok(value) => return Ok((donor.clone(), value)),
                Err(AttemptError::Unavailable(reason)) => {
                    info!(%donor, %reason, "donor cannot serve now; trying the next one");
                    reasons.push(format!("{donor}: {reason}"));
                }
                Err(AttemptError::Fatal(e)) => {
                    return Err(e.context(format!(
                        "taking a backup from {donor} failed, and retrying would not help"
                    )));
                }
                Err(AttemptError::Failed(e)) => {
                    failures += 1;
                    warn!(%donor, failures, max = policy.max_attempts, error = %report(&e), "attempt failed");
                    if failures >= policy.max_attempts {
                        return Err(e.context(format!(
                            "giving up after {failures} failed attempts; the last one, from {donor}"
                        )));
                    }
                    waiting_since = Instant::now();
                }
            }
        }
        if !reasons.is_empty() && waiting_since.elapsed() >= policy.donor_wait {
            bail!(
                "no donor could serve a backup for {}: {}",
                humantime::format_duration(policy.donor_wait),
                reasons.join("; ")
            );
        }
        let delay = backoff.next_delay();
        info!(retry_in = ?delay, "no backup yet; retrying the donors");
        crate::retry::sleep(delay, cancel)
            .await
            .context("waiting for a donor")?;
    }
}

/// One donor: receive, verify, prepare.
async fn attempt(
    config: &Config,
    tool: &BackupTool,
    donor: &Donor,
    cancel: &CancellationToken,
) -> Result<Cloned, AttemptError> {
    let staging = config.data_dir.join(STAGING_DIR);
    let started = std::time::Instant::now();
    let progress = Arc::new(Progress::default());
    let reporter = AbortOnDropHandle::new(tokio::spawn({
        let progress = Arc::clone(&progress);
        progress::report("receiving", config.progress_interval, started, move || {
            sample(&progress)
        })
    }));
    let transfer = receive::Transfer {
        staging: staging.clone(),
        flavor: tool.flavor(),
        stall: config.stall_timeout,
        secret: config.secret.clone(),
        progress: Arc::clone(&progress),
        cancel: cancel.clone(),
    };
    let received = receive::receive(donor, transfer).await;
    drop(reporter);
    let summary = received?;
    let failed = AttemptError::from_transfer;
    let meta = blocking(BackupMetadata::read, &staging)
        .await
        .map_err(failed)?;
    verify::complete(&summary, &meta, config.require_end_marker).map_err(failed)?;
    let coordinates = verify::coordinates(&meta).map_err(failed)?;
    let elapsed = started.elapsed();
    info!(
        bytes = summary.bytes,
        files = summary.files,
        elapsed = ?elapsed,
        rate_mib_s = format!("{:.1}", mib(summary.bytes) / elapsed.as_secs_f64().max(1e-3)),
        "stream received and complete; preparing"
    );
    verify::tool_fits(tool, &meta).map_err(AttemptError::Fatal)?;
    crate::crash_point!("clone-after-extract");
    prepare(tool, &staging, cancel).await.map_err(failed)?;
    crate::crash_point!("clone-after-prepare");
    Ok(Cloned {
        bytes: summary.bytes,
        files: summary.files,
        coordinates,
        elapsed: started.elapsed(),
    })
}

/// Runs the tool's `--prepare` in `staging` and checks the result.
pub async fn prepare(tool: &BackupTool, staging: &Path, cancel: &CancellationToken) -> Result<()> {
    let finished = process::run(tool.prepare_command(staging), "prepare", cancel).await?;
    anyhow::ensure!(
        backup_tool::completed_ok(&finished),
        "{} --prepare {}",
        tool.path.display(),
        finished.describe()
    );
    let after = blocking(BackupMetadata::read, staging).await?;
    verify::prepared(&after)
}

/// What the decoding has done so far, with the donor's estimate once its info arrived.
fn sample(progress: &Progress) -> Sample {
    Sample {
        bytes: progress.bytes(),
        files: Some(progress.files()),
        estimated_bytes: progress
            .header()
            .and_then(|h| StreamInfo::parse(h).ok())
            .map(|info| info.estimated_bytes),
    }
}

/// Runs file-system work that may take a while (big trees, syncs) off the async threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce(&Path) -> Result<T> + Send + 'static,
    path: &Path,
) -> Result<T> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || f(&path))
        .await
        .context("file-system task panicked")?
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn donors() -> Vec<Donor> {
        vec![
            "mysql-1.mysql".parse().unwrap(),
            "mysql-0.mysql".parse().unwrap(),
        ]
    }

    const POLICY: Policy = Policy {
        max_attempts: 3,
        donor_wait: Duration::from_secs(600),
    };

    /// Donors that never come up are waited for `--donor-wait`, with back-off in between
    /// (about 30 s at most past the deadline), on the paused clock.
    #[tokio::test(start_paused = true)]
    async fn unavailable_donors_are_waited_for_then_given_up() {
        let cancel = CancellationToken::new();
        let started = Instant::now();
        let mut tries = 0;
        let err = from_donors::<(), _, _>(&donors(), POLICY, &cancel, |_| {
            tries += 1;
            async { Err(AttemptError::Unavailable("busy".into())) }
        })
        .await
        .unwrap_err();
        let waited = started.elapsed();
        assert!(
            waited >= POLICY.donor_wait && waited <= POLICY.donor_wait + crate::retry::MAX_DELAY,
            "{waited:?}"
        );
        let msg = format!("{err:#}");
        assert!(
            msg.contains("no donor could serve a backup for 10m"),
            "{msg}"
        );
        assert!(msg.contains("mysql-0.mysql:3307: busy"), "{msg}");
        // Back-off, not a busy loop: a few dozen rounds in ten minutes.
        assert!(tries > 20 && tries < 200, "{tries} tries");
    }

    #[tokio::test(start_paused = true)]
    async fn failed_transfers_count_and_success_ends_the_loop() {
        let cancel = CancellationToken::new();
        let mut tries = 0;
        let err = from_donors::<(), _, _>(&donors(), POLICY, &cancel, |_| {
            tries += 1;
            async { Err(AttemptError::Failed(anyhow!("checksum mismatch"))) }
        })
        .await
        .unwrap_err();
        assert_eq!(tries, 3);
        assert!(format!("{err:#}").contains("giving up after 3 failed attempts"));

        let mut tries = 0;
        let (donor, value) = from_donors(&donors(), POLICY, &cancel, |d| {
            tries += 1;
            let ok = tries == 4 && d.host == "mysql-0.mysql";
            async move {
                if ok {
                    Ok(7)
                } else {
                    Err(AttemptError::Unavailable("not ready".into()))
                }
            }
        })
        .await
        .unwrap();
        assert_eq!((donor.host.as_str(), value), ("mysql-0.mysql", 7));
    }

    #[tokio::test(start_paused = true)]
    async fn fatal_errors_and_cancellation_stop_at_once() {
        let cancel = CancellationToken::new();
        let started = Instant::now();
        let err = from_donors::<(), _, _>(&donors(), POLICY, &cancel, |_| async {
            Err(AttemptError::Fatal(anyhow!("No space left on device")))
        })
        .await
        .unwrap_err();
        assert!(format!("{err:#}").contains("retrying would not help"));
        assert_eq!(started.elapsed(), Duration::ZERO);

        let canceller = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(45)).await;
            canceller.cancel();
        });
        let err = from_donors::<(), _, _>(&donors(), POLICY, &cancel, |_| async {
            Err(AttemptError::Unavailable("down".into()))
        })
        .await
        .unwrap_err();
        assert!(err.downcast_ref::<Interrupted>().is_some(), "{err:#}");
        assert!(started.elapsed() < Duration::from_secs(45) + Duration::from_secs(1));
    }
}
