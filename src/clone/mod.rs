//! `clone`: turns an empty data dir into a prepared copy of a peer's data, or of a stored
//! backup (`--restore-from`), or leaves it alone.
//!
//! - [`datadir`]: the states a data dir goes through, and the durable steps between them;
//! - [`donor`]: who to clone from;
//! - [`receive`]: one transfer from one donor, into the staging directory;
//! - [`verify`]: whether what arrived is a whole backup this pod can use;
//! - this module: the order of things, the retry policy across donors, and the restore from
//!   a store ([`crate::restore`] reads it), which lands in the same staging and goes through
//!   the same checks, prepare and commit as a peer's stream.

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
use crate::catalog;
use crate::coordinates::Coordinates;
use crate::errors::{Interrupted, report};
use crate::manifest::Manifest;
use crate::metadata::BackupMetadata;
use crate::packing::{self, Identities};
use crate::pod::PodIdentity;
use crate::process;
use crate::progress::{self, Sample};
use crate::protocol::StreamInfo;
use crate::restore;
use crate::retry::Backoff;
use crate::secrets::BackupSecret;
use crate::server_version::ServerVersion;
use crate::store::{Location, S3Settings, Store};
use crate::survey;
use crate::xbstream::{Progress, Summary};
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
    /// Mutual TLS with the donors (`--tls-dir`).
    pub tls: Option<Arc<crate::tls::TlsDir>>,
    pub progress_interval: Duration,
    /// Where to restore from when no peer can serve (and on ordinal 0).
    pub restore: Option<Restore>,
    /// How ordinal 0 asks its replicas (`donors`) before starting empty.
    pub survey: Survey,
}

/// How ordinal 0 asks its replicas how far they are (see [`crate::survey`]).
#[derive(Debug, Clone, Copy)]
pub struct Survey {
    /// The replicas' sidecar HTTP port.
    pub http_port: u16,
    /// How long to wait for answers before concluding that this is a first boot.
    pub wait: Duration,
    /// `--donor` was given: a human chose whom ordinal 0 recovers from.
    pub explicit_donors: bool,
}

/// A stored backup to restore from (`clone --restore-from`).
#[derive(Debug, Clone)]
pub struct Restore {
    pub location: Location,
    pub s3: S3Settings,
    /// A backup's name, or `None` for the newest complete one.
    pub backup: Option<String>,
    /// The private keys for an encrypted backup.
    pub identities: Option<Arc<Identities>>,
    /// Point-in-time recovery: replay the archived binary logs up to here (ordinal 0).
    pub until: Option<crate::pitr::Target>,
    /// `--mysqld-defaults-file` for the replay server.
    pub replay: Option<PathBuf>,
}

/// No donor could serve for the whole `--donor-wait`: the one failure a restore from a
/// store may stand in for.
#[derive(Debug)]
pub struct NoDonor {
    pub waited: Duration,
    pub reasons: Vec<String>,
}

impl std::fmt::Display for NoDonor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no donor could serve a backup for {}: {}",
            humantime::format_duration(self.waited),
            self.reasons.join("; ")
        )
    }
}

impl std::error::Error for NoDonor {}

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
    /// Where it came from: a donor, or a stored backup.
    source: String,
    bytes: u64,
    files: u64,
    coordinates: Coordinates,
    elapsed: Duration,
}

pub async fn run(config: &Config, cancel: &CancellationToken) -> Result<()> {
    let data_dir = &config.data_dir;
    let primary = config.pod.is_primary();
    if config.secret.is_none() && !primary {
        warn!(
            "no --backup-secret-file: donors are not authenticated, so anyone on the pod network could feed this pod a backup"
        );
    }
    let state = match datadir::inspect(data_dir) {
        Ok(state) => state,
        // The primary has always left its data dir to mysqld; an odd file there must not
        // keep it from starting.
        Err(e) if primary => {
            warn!(data_dir = %data_dir.display(), error = %report(&e), "cannot tell what the data dir holds; leaving it to mysqld");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    match state {
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
        // The primary has always left such a data dir to mysqld, which says what it thinks.
        DataDirState::Unknown { entries } if primary => {
            warn!(data_dir = %data_dir.display(), ?entries, "the data dir holds no MySQL data but is not empty; leaving it to mysqld");
            return Ok(());
        }
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
    // Ordinal 0 with an empty data dir: a first boot, or a primary that lost its volume while
    // its replicas hold the data. Ask them before mysqld may initialise an empty database.
    let recovery = if primary {
        match recovery_plan(config, cancel).await? {
            Some(recovery) => Some(recovery),
            None if config.restore.is_some() => None,
            None => {
                info!(
                    waited = ?config.survey.wait,
                    "no replica answered: a first boot, so mysqld initialises an empty data dir"
                );
                return Ok(());
            }
        }
    } else {
        None
    };
    if let (Some(recovery), Some(until)) = (
        &recovery,
        config.restore.as_ref().and_then(|r| r.until.as_ref()),
    ) {
        let donors: Vec<String> = recovery.donors.iter().map(ToString::to_string).collect();
        bail!(
            "--restore-until {until} rebuilds the whole cluster as of that moment, but replicas still hold data ({}): \
             delete their volumes too (scale to 0, delete the claims, scale up), or remove --restore-until so ordinal 0 recovers from them",
            donors.join(", ")
        );
    }
    let tool = BackupTool::locate(config.tool.as_deref())
        .await
        .map_err(crate::errors::usage)?;
    // Ordinal 0 restores: the store, the backup and the key are checked before anything is
    // written, so a wrong one leaves the data dir as it was.
    let planned = match (&config.restore, primary && recovery.is_none()) {
        (Some(restore), true) => Some(plan_restore(restore, &tool).await?),
        _ => None,
    };
    datadir::begin(
        data_dir,
        &format!("pod = {}\nstarted_at = {}\n", config.pod, now()),
    )?;
    let mut replayed = None;
    let cloned = match (&recovery, &config.restore, planned) {
        // A primary that lost its volume: the most advanced replica's data.
        (Some(recovery), _, _) => recover_from_replicas(config, &tool, recovery, cancel).await,
        // Ordinal 0 with no replica: it rebuilds the cluster from the store.
        (None, Some(restore), Some((store, manifest, pitr))) => {
            info!(store = %restore.location, backup = %manifest.name, "ordinal 0 with an empty data dir and no replica: restoring from the backup store");
            let restored =
                restore_from_store(config, &tool, restore, (store.clone(), manifest), cancel).await;
            match (restored, pitr) {
                (Ok(cloned), Some((decided, replay))) => {
                    let target = decided.plan.target.clone();
                    let replaying = crate::pitr::replay(
                        &decided,
                        &store,
                        restore.identities.clone(),
                        &replay,
                        data_dir,
                        &data_dir.join(STAGING_DIR),
                        cancel,
                    )
                    .instrument(info_span!("replay", until = %target))
                    .await
                    .with_context(|| {
                        format!("replaying the archived binary logs up to {target}")
                    });
                    replaying.map(|()| {
                        replayed = Some((target, decided.range));
                        cloned
                    })
                }
                (restored, _) => restored,
            }
        }
        (None, restore, _) => match from_peers(config, &config.donors, &tool, cancel).await {
            Err(e)
                if e.downcast_ref::<NoDonor>().is_some()
                    && restore.as_ref().is_some_and(|r| r.until.is_some()) =>
            {
                Err(e.context(
                    "with --restore-until a replica clones from the restored primary only, never from the store \
                     (a backup there would not stand at the primary's point in time)",
                ))
            }
            Err(e) if e.downcast_ref::<NoDonor>().is_some() && restore.is_some() => {
                let restore = restore.as_ref().expect("checked above");
                warn!(
                    store = %restore.location,
                    reason = %report(&e),
                    "no peer could serve a clone; restoring from the backup store instead"
                );
                match plan_restore(restore, &tool).await {
                    Ok((store, manifest, _)) => {
                        restore_from_store(config, &tool, restore, (store, manifest), cancel).await
                    }
                    Err(plan) => Err(plan.context(report(&e))),
                }
            }
            other => other,
        },
    };
    let cloned = match cloned {
        Ok(cloned) => cloned,
        Err(e) => {
            let _ = blocking(datadir::discard_staging, data_dir).await;
            let _ = crate::fsutil::remove_all(&data_dir.join(crate::pitr::BINLOG_DIR));
            return Err(e.context(format!("cloning into {}", data_dir.display())));
        }
    };
    let mut record = format!(
        "completed_at = {}\nsource = {}\nstream_bytes = {}\nfiles = {}\ncoordinates = {:?}\n",
        now(),
        cloned.source,
        cloned.bytes,
        cloned.files,
        cloned.coordinates
    );
    if let Some((target, range)) = &replayed {
        record.push_str(&format!(
            "restored_until = {target}\nreplayed_transactions = {}\nlast_replayed_gtid = {}\n",
            range.transactions,
            range.last_gtid.map_or("none".into(), |g| g.to_string())
        ));
    }
    if let Some(recovery) = &recovery {
        let continued =
            continue_binlog_history(data_dir, &recovery.source_log_file, &cloned.coordinates)?;
        record.push_str(&format!(
            "recovered_primary_from = {}\nprimary_log_file = {}\nbinlog_state = {}\n",
            cloned.source,
            recovery.source_log_file,
            continued.as_deref().unwrap_or("none")
        ));
    }
    blocking(move |d| datadir::commit(d, &record), data_dir).await?;
    info!(
        source = %cloned.source,
        bytes = cloned.bytes,
        files = cloned.files,
        elapsed = ?cloned.elapsed,
        origin = ?cloned.coordinates.origin,
        position = ?cloned.coordinates.position,
        "clone complete"
    );
    Ok(())
}

/// What a primary that lost its volume recovers from.
#[derive(Debug)]
struct Recovery {
    donors: Vec<Donor>,
    /// Where the chosen replicas said they stand; `None` when a human named the donors.
    expected: Option<crate::coordinates::Position>,
    /// The primary's binary log file name, as the replicas read it.
    source_log_file: String,
}

/// Ordinal 0's question to its replicas (see [`crate::survey`]): `None` when no replica is
/// there (a first boot), the most advanced ones otherwise; an error when a replica is there
/// but silent, or when they cannot be ranked. With `--donor` given, a human has chosen:
/// those donors, whatever they report.
async fn recovery_plan(config: &Config, cancel: &CancellationToken) -> Result<Option<Recovery>> {
    let hosts: Vec<String> = config.donors.iter().map(|d| d.host.clone()).collect();
    if hosts.is_empty() {
        return Ok(None);
    }
    info!(replicas = ?hosts, wait = ?config.survey.wait, "ordinal 0 with an empty data dir: asking the replicas how far they have applied before mysqld may start empty");
    let survey =
        survey::survey(&hosts, config.survey.http_port, config.survey.wait, cancel).await?;
    let log_file = |answers: &[survey::Answer]| {
        answers
            .iter()
            .filter_map(|a| a.status.replication.as_ref())
            .map(|r| r.source_log_file.clone())
            .find(|f| !f.is_empty())
            .unwrap_or_default()
    };
    if config.survey.explicit_donors {
        info!(donors = ?hosts, "ordinal 0 with an empty data dir and --donor given: cloning from the named donors");
        return Ok(Some(Recovery {
            donors: config.donors.clone(),
            expected: None,
            source_log_file: log_file(&survey.answers),
        }));
    }
    if !survey.silent.is_empty() {
        let silent: Vec<String> = survey
            .silent
            .iter()
            .map(|(peer, why)| format!("{peer} ({why})"))
            .collect();
        bail!(
            "ordinal 0 lost its data and {} did not report how far it has replicated within {}: it may hold the \
             newest data, so the primary neither starts empty nor chooses without it; bring it up, or clone the \
             primary from a replica of your choice with --donor",
            silent.join(", "),
            humantime::format_duration(config.survey.wait.max(survey::PRESENT_PEER_WAIT))
        );
    }
    let choice = survey::choose(&survey.answers).map_err(|e| {
        anyhow::Error::new(e)
            .context("ordinal 0 lost its data and cannot recover it from its replicas on its own")
    })?;
    let Some(choice) = choice else {
        return Ok(None);
    };
    info!(
        chosen = ?choice.peers,
        position = ?choice.position,
        behind = ?choice.behind,
        "the primary's data is gone but its replicas hold it: cloning from the most advanced"
    );
    Ok(Some(Recovery {
        donors: config
            .donors
            .iter()
            .filter(|d| choice.peers.contains(&d.host))
            .cloned()
            .collect(),
        expected: Some(choice.position),
        source_log_file: choice.source_log_file,
    }))
}

/// Clones the primary from the recovery's donors (any of them, all being equal).
async fn recover_from_replicas(
    config: &Config,
    tool: &BackupTool,
    recovery: &Recovery,
    cancel: &CancellationToken,
) -> Result<Cloned> {
    let cloned = from_peers(config, &recovery.donors, tool, cancel).await?;
    // The clone's own metadata says where its data stands: at or past what the replica
    // reported (it may have applied more meanwhile), never behind it or elsewhere.
    if let Some(expected) = &recovery.expected {
        use std::cmp::Ordering::{Equal, Greater};
        match survey::compare(&cloned.coordinates.position, expected) {
            Ok(survey::Relation::Ordered(Equal | Greater)) => {}
            other => bail!(
                "the backup from {} stands at {:?}, not at or past the {:?} it reported ({other:?})",
                cloned.source,
                cloned.coordinates.position,
                expected
            ),
        }
    }
    Ok(cloned)
}

/// A recovered MariaDB primary starts with no binary log, so its replicas' positions would be
/// in no log of it: one exactly as far as the data continues unharmed, but one that lags
/// would silently skip what it lacks. Seeding the binary log state with the position the
/// data holds (the `.state` file mysqld reads when it opens its binary log) makes the new
/// log continue the old history, and a lagging replica fail loudly (error 1236) instead.
/// Returns the state written, if any.
fn continue_binlog_history(
    data_dir: &Path,
    source_log_file: &str,
    coordinates: &Coordinates,
) -> Result<Option<String>> {
    use crate::coordinates::Position;
    match &coordinates.position {
        // No transaction yet: the new log starts the history as the old one did.
        Position::MariaDbGtid { gtid_pos } if gtid_pos.is_empty() => Ok(None),
        Position::MariaDbGtid { gtid_pos } => {
            let base = survey::split_log_file(source_log_file)
                .map(|(base, _)| base)
                .ok()
                .filter(|base| !base.is_empty() && !base.contains('/') && !base.starts_with('.'));
            let Some(base) = base else {
                warn!(
                    log_file = %source_log_file,
                    "cannot tell the primary's binary log name from the replicas; its new log starts without the old history, \
                     so a lagging replica could skip transactions: check every replica's position"
                );
                return Ok(None);
            };
            let staging = data_dir.join(STAGING_DIR);
            let lines: String = gtid_pos
                .split(',')
                .map(|g| format!("{}\n", g.trim()))
                .collect();
            crate::fsutil::write_atomic(&staging.join(format!("{base}.state")), lines.as_bytes())?;
            info!(state = %gtid_pos, file = %format!("{base}.state"), "the new binary log continues the old history");
            Ok(Some(gtid_pos.clone()))
        }
        // MySQL keeps its executed GTID set in the data (mysql.gtid_executed): a recovered
        // primary knows it, and auto-positioned replicas continue or fail loudly.
        Position::MysqlGtid { .. } => Ok(None),
        Position::File { file, pos } => {
            warn!(
                %file, pos,
                "the replicas replicate by file and position: the recovered primary writes new binary logs, \
                 so each replica must be re-cloned from it (delete its volume); see the README"
            );
            Ok(None)
        }
    }
}

/// A clone from the first peer that can serve one.
async fn from_peers(
    config: &Config,
    donors: &[Donor],
    tool: &BackupTool,
    cancel: &CancellationToken,
) -> Result<Cloned> {
    let data_dir = &config.data_dir;
    let cloned = from_donors(donors, config.policy, cancel, |donor| {
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
    .await?;
    Ok(cloned.1)
}

/// A point-in-time recovery's decided range and how its replay runs.
type PitrPlan = Option<(crate::pitr::Decided, crate::pitr::Replay)>;

/// The backup to restore: the store opened, the backup chosen (named, or the newest complete
/// one, or for `--restore-until` the newest before the target, with the archived binary logs
/// that reach it), the local tool matched to its server, and its key checked.
async fn plan_restore(restore: &Restore, tool: &BackupTool) -> Result<(Store, Manifest, PitrPlan)> {
    let store = Store::open(&restore.location, &restore.s3, false).map_err(crate::errors::usage)?;
    let (manifest, pitr) = match &restore.until {
        None => (
            catalog::choose(&store, restore.backup.as_deref()).await?,
            None,
        ),
        Some(target) => {
            let programs = crate::pitr::Programs::locate()?;
            let mut timelines = Vec::new();
            for name in crate::archive::timelines(&store).await? {
                timelines.push(crate::archive::load(&store, &name).await?);
            }
            let backups = catalog::list(&store).await?.complete;
            let planning = async {
                let candidates = crate::pitr::candidates(target, &timelines, &backups)?;
                if let Some(plan) = candidates.first()
                    && plan.timeline.info.recipients.is_some()
                    && restore.identities.is_none()
                {
                    bail!(
                        "the binary log archive (timeline {}) is encrypted (age): pass --age-identity-file with its private key",
                        plan.timeline.info.name
                    );
                }
                crate::pitr::decide(candidates, &store, restore.identities.clone()).await
            };
            let decided = planning.await.with_context(|| {
                format!("planning the restore of {} to {target}", store.location)
            })?;
            let (plan, range) = (&decided.plan, &decided.range);
            info!(
                backup = %plan.backup.name,
                timeline = %plan.timeline.info.name,
                files = range.stop.0 + 1 - range.start.0,
                transactions = range.transactions,
                "point-in-time recovery to {target}: this backup, then the archived binary logs"
            );
            let manifest = plan.backup.clone();
            let replay = crate::pitr::Replay {
                programs,
                defaults_file: restore.replay.clone(),
            };
            (manifest, Some((decided, replay)))
        }
    };
    let server = ServerVersion::parse(&manifest.server.version)?;
    backup_tool::check_compatible(tool, &server).context("the backup cannot be prepared here")?;
    restore::check_identities(&store, &manifest, restore.identities.as_deref()).await?;
    Ok((store, manifest, pitr))
}

/// A clone from the backup store, retried like a donor's transfer when the store fails on
/// the way, never when the backup itself is wrong.
async fn restore_from_store(
    config: &Config,
    tool: &BackupTool,
    restore: &Restore,
    (store, manifest): (Store, Manifest),
    cancel: &CancellationToken,
) -> Result<Cloned> {
    let mut backoff = Backoff::new();
    let mut failures = 0;
    loop {
        let attempt = restore_attempt(config, tool, &store, &manifest, restore, cancel)
            .instrument(info_span!("restore", store = %restore.location))
            .await;
        if cancel.is_cancelled() {
            return Err(anyhow!(Interrupted).context("restoring from the backup store"));
        }
        let e = match attempt {
            Ok(cloned) => return Ok(cloned),
            Err(AttemptError::Fatal(e)) => return Err(e),
            Err(AttemptError::Failed(e)) => e,
            Err(AttemptError::Unavailable(reason)) => anyhow!(reason),
        };
        blocking(datadir::discard_staging, &config.data_dir).await?;
        failures += 1;
        warn!(failures, max = config.policy.max_attempts, error = %report(&e), "restore attempt failed");
        if failures >= config.policy.max_attempts {
            return Err(e.context(format!(
                "giving up after {failures} failed restore attempts"
            )));
        }
        backoff
            .wait(cancel)
            .await
            .context("waiting to retry the restore")?;
    }
}

/// One restore: the backup chosen, fetched, checked object by object, unpacked and decoded
/// into staging, then verified and prepared like a peer's stream.
async fn restore_attempt(
    config: &Config,
    tool: &BackupTool,
    store: &Store,
    manifest: &Manifest,
    restore: &Restore,
    cancel: &CancellationToken,
) -> Result<Cloned, AttemptError> {
    info!(backup = %manifest.name, "restoring {}", manifest.summary_line());
    let opened = restore::open(store, manifest, restore.identities.is_some())
        .map_err(AttemptError::Fatal)?;
    let restore::Opened { stored, check } = opened;
    let staging = config.data_dir.join(STAGING_DIR);
    let started = std::time::Instant::now();
    let progress = Arc::new(Progress::default());
    // The manifest knows the stream's exact size; the estimate inside the stream is the
    // donor's guess from its data directory when the backup was taken.
    let stream_bytes = manifest.stream_bytes;
    let reporter = AbortOnDropHandle::new(tokio::spawn({
        let progress = Arc::clone(&progress);
        progress::report("restoring", config.progress_interval, started, move || {
            Sample {
                estimated_bytes: Some(stream_bytes),
                ..sample(&progress)
            }
        })
    }));
    let transfer = receive::Transfer {
        staging: staging.clone(),
        flavor: tool.flavor(),
        stall: config.stall_timeout,
        secret: None,
        tls: None,
        progress: Arc::clone(&progress),
        cancel: cancel.clone(),
    };
    let identities = restore.identities.clone();
    let encrypted = manifest.encryption.is_some();
    let decoded = tokio::task::spawn_blocking(move || -> Result<Summary> {
        let input = restore::read_ahead(move || {
            packing::unpack(stored, identities.as_deref().filter(|_| encrypted))
        })
        .context("starting the unpacking thread")?;
        receive::decode(input, transfer)
    })
    .await;
    drop(reporter);
    let summary = match decoded {
        Ok(Ok(summary)) => summary,
        Ok(Err(e)) => {
            let e = check.explain(e).await;
            return Err(if e.downcast_ref::<restore::Damaged>().is_some() {
                AttemptError::Fatal(e)
            } else {
                AttemptError::from_transfer(e)
            });
        }
        Err(e) => {
            return Err(AttemptError::Failed(anyhow!(
                "the restoring thread failed: {e}"
            )));
        }
    };
    check.finish().await.map_err(AttemptError::Fatal)?;
    let cloned = finish_attempt(config, tool, &summary, started, cancel).await?;
    if cloned.coordinates != manifest.coordinates {
        return Err(AttemptError::Fatal(anyhow!(
            "backup {}: its files say {:?}, its manifest {:?}",
            manifest.name,
            cloned.coordinates,
            manifest.coordinates
        )));
    }
    Ok(Cloned {
        source: format!("backup {} in {}", manifest.name, store.location),
        ..cloned
    })
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
            return Err(anyhow::Error::new(NoDonor {
                waited: policy.donor_wait,
                reasons,
            }));
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
        staging,
        flavor: tool.flavor(),
        stall: config.stall_timeout,
        secret: config.secret.clone(),
        tls: config.tls.clone(),
        progress: Arc::clone(&progress),
        cancel: cancel.clone(),
    };
    let received = receive::receive(donor, transfer).await;
    drop(reporter);
    let summary = received?;
    Ok(Cloned {
        source: format!("donor {donor}"),
        ..finish_attempt(config, tool, &summary, started, cancel).await?
    })
}

/// What every source's stream goes through once it sits in staging: the backup's metadata
/// read, completeness and coordinates checked, the tool matched to the backup, prepare.
async fn finish_attempt(
    config: &Config,
    tool: &BackupTool,
    summary: &Summary,
    started: std::time::Instant,
    cancel: &CancellationToken,
) -> Result<Cloned, AttemptError> {
    let staging = config.data_dir.join(STAGING_DIR);
    let failed = AttemptError::from_transfer;
    let meta = blocking(BackupMetadata::read, &staging)
        .await
        .map_err(failed)?;
    verify::complete(summary, &meta, config.require_end_marker).map_err(failed)?;
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
        source: String::new(),
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
