//! `clone`: turns an empty data dir into a prepared copy of a peer's data, or leaves it alone.
//!
//! The data dir is a volume that outlives the container, and the container can be killed at
//! any instant, so the state lives on disk:
//!
//! 1. [`IN_PROGRESS_MARKER`] is written (durably) before anything else, only into an empty dir;
//! 2. the stream is extracted into [`STAGING_DIR`] inside the data dir (same file system),
//!    checked for completeness and prepared there;
//! 3. the prepared files are renamed into place, the file system is synced once, and
//!    [`DONE_MARKER`] is written atomically before the in-progress marker is removed.
//!
//! A run that finds the in-progress marker without the done marker knows the data dir holds
//! nothing but its own leftovers, wipes them and starts over. mysqld never sees unprepared
//! data, and a partial clone is never mistaken for a finished one.

use std::fmt;
use std::fs;
use std::io::{self, BufRead, BufReader, Cursor, Read, Write};
use std::net::Shutdown;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail, ensure};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::backup_tool::{self, BackupTool};
use crate::coordinates::{self, Coordinates};
use crate::fsutil;
use crate::pod::PodIdentity;
use crate::process;
use crate::progress::{self, Sample};
use crate::protocol::{self, Message, StreamInfo, StreamStatus};
use crate::replication::ServerVersion;
use crate::retry;
use crate::secrets::BackupSecret;
use crate::xbstream::{self, Extractor, Progress, Summary};

/// Where a clone is extracted and prepared before being moved into place. It exists only
/// while this init container runs: a backup tool would take any directory in the data dir
/// for a database, dotted or not.
pub const STAGING_DIR: &str = ".mysql-agent-staging";
/// Present from the first byte written until the clone is complete.
pub const IN_PROGRESS_MARKER: &str = ".mysql-agent-clone-in-progress";
/// Written last: the data dir holds a complete, prepared clone.
pub const DONE_MARKER: &str = ".mysql-agent-clone-done";
/// Entries a fresh volume may hold that say nothing about MySQL data.
const IGNORED_ENTRIES: [&str; 1] = ["lost+found"];

/// Entries that say nothing about the data: a fresh volume's, and the temporary files of the
/// agent's own atomic writes (a kill while writing the first marker leaves one).
fn is_ignored(name: &str) -> bool {
    IGNORED_ENTRIES.contains(&name)
        || (name.starts_with("..mysql-agent-") && name.ends_with(".tmp"))
}
/// How long connecting to one donor may take before trying the next.
pub const DONOR_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A peer's backup server: `HOST[:PORT]`, port 3307 by default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Donor {
    pub host: String,
    pub port: u16,
}

impl FromStr for Donor {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .with_context(|| format!("donor {s:?}: unclosed '['"))?;
            match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None if after.is_empty() => (host, None),
                None => bail!("donor {s:?}: unexpected text after ']'"),
            }
        } else {
            match s.rsplit_once(':') {
                // More than one ':' without brackets is a bare IPv6 address.
                Some((host, port)) if !host.contains(':') => (host, Some(port)),
                _ => (s, None),
            }
        };
        ensure!(!host.is_empty(), "donor {s:?} has no host");
        let port = match port {
            Some(p) => p
                .parse()
                .with_context(|| format!("donor {s:?}: port {p:?} is not a port number"))?,
            None => protocol::DEFAULT_PORT,
        };
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for Donor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub pod: PodIdentity,
    pub data_dir: PathBuf,
    /// Tried in order, round after round.
    pub donors: Vec<Donor>,
    pub tool: BackupTool,
    /// Failed transfers (a donor that streamed and then failed) before giving up.
    pub max_attempts: u32,
    /// How long to keep waiting while no donor can serve at all.
    pub donor_wait: Duration,
    /// A transfer with no byte for this long has stalled.
    pub stall_timeout: Duration,
    /// Refuse streams without the agent's end-of-stream entry (no tutorial donors).
    pub require_end_marker: bool,
    /// Prove it to donors and require their proof; `None` accepts any donor.
    pub secret: Option<BackupSecret>,
    pub progress_interval: Duration,
}

/// What the data dir holds when `clone` starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataDirState {
    Empty,
    /// A clone by this agent finished.
    CloneDone,
    /// A clone by this agent started and did not finish: only its own leftovers are here.
    CloneInterrupted,
    /// A server's data the agent did not clone (initialised by mysqld, or cloned by the
    /// tutorial's scripts before a migration).
    Initialized,
    /// A backup nobody prepared: the tutorial's partial-clone failure. Never started on.
    Unprepared {
        backup_type: String,
    },
    /// Something else; nothing is touched.
    Unknown {
        entries: Vec<String>,
    },
}

/// Classifies a data dir from its top-level names and its checkpoints file's backup_type.
pub fn classify(entries: &[String], backup_type: Option<&str>) -> DataDirState {
    let entries: Vec<&String> = entries.iter().filter(|e| !is_ignored(e)).collect();
    let has = |name: &str| entries.iter().any(|e| *e == name);
    if has(DONE_MARKER) {
        DataDirState::CloneDone
    } else if has(IN_PROGRESS_MARKER) || (entries.len() == 1 && has(STAGING_DIR)) {
        DataDirState::CloneInterrupted
    } else if let Some(bt) = backup_type.filter(|bt| !coordinates::is_prepared(bt)) {
        DataDirState::Unprepared {
            backup_type: bt.to_owned(),
        }
    } else if has("mysql") || has("ibdata1") {
        DataDirState::Initialized
    } else if entries.is_empty() {
        DataDirState::Empty
    } else {
        DataDirState::Unknown {
            entries: entries.into_iter().cloned().collect(),
        }
    }
}

pub fn inspect(data_dir: &Path) -> Result<DataDirState> {
    let entries = fsutil::list_dir(data_dir)?;
    let backup_type = match coordinates::read_optional(data_dir, &coordinates::CHECKPOINTS_FILES)? {
        Some((path, text)) => Some(
            coordinates::parse_backup_type(&text)
                .with_context(|| format!("reading {}", path.display()))?,
        ),
        None => None,
    };
    Ok(classify(&entries, backup_type.as_deref()))
}

/// A clone received, verified and prepared in the staging directory.
#[derive(Debug)]
struct Cloned {
    donor: Donor,
    bytes: u64,
    files: u64,
    coordinates: Coordinates,
    elapsed: Duration,
}

/// Why one attempt at one donor did not produce a clone.
#[derive(Debug)]
enum AttemptError {
    /// The donor cannot serve now (not up, busy, not ready): wait and retry, no harm done.
    Unavailable(String),
    /// A transfer started and failed: counts towards `max_attempts`.
    Failed(anyhow::Error),
    /// The local volume failed (full, over quota, read-only): no retry can help.
    Fatal(anyhow::Error),
}

impl AttemptError {
    /// Sorts an error of a started transfer: the local volume's fault, or the transfer's.
    fn from_transfer(e: anyhow::Error) -> Self {
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

pub async fn run(config: &Config, cancel: &CancellationToken) -> Result<()> {
    let data_dir = &config.data_dir;
    if config.pod.is_primary() {
        info!(pod = %config.pod, "ordinal 0 is the primary: nothing to clone");
        return Ok(());
    }
    ensure!(
        fs::metadata(data_dir).map(|m| m.is_dir()).unwrap_or(false),
        "the data dir {} does not exist or is not a directory (see --data-dir)",
        data_dir.display()
    );
    if config.secret.is_none() {
        warn!(
            "no --backup-secret-file: donors are not authenticated, so anyone on the pod network could feed this pod a backup"
        );
    }
    match inspect(data_dir)? {
        DataDirState::Empty => {}
        DataDirState::CloneDone => {
            fsutil::remove_all(&data_dir.join(IN_PROGRESS_MARKER))?;
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
            blocking(wipe, data_dir).await?;
        }
    }
    fsutil::write_atomic(
        &data_dir.join(IN_PROGRESS_MARKER),
        format!("pod = {}\nstarted_at = {}\n", config.pod, now()).as_bytes(),
    )?;
    let cloned = match clone_from_donors(config, cancel).await {
        Ok(cloned) => cloned,
        Err(e) => {
            // Free the space now; the marker makes the next run start clean anyway.
            let _ = blocking(|d| fsutil::remove_all(&d.join(STAGING_DIR)), data_dir).await;
            return Err(e);
        }
    };
    let record = format!(
        "completed_at = {}\ndonor = {}\nstream_bytes = {}\nfiles = {}\ncoordinates = {:?}\n",
        now(),
        cloned.donor,
        cloned.bytes,
        cloned.files,
        cloned.coordinates
    );
    blocking(move |d| commit(d, &record), data_dir).await?;
    info!(
        donor = %cloned.donor,
        bytes = cloned.bytes,
        files = cloned.files,
        elapsed = ?cloned.elapsed,
        origin = ?cloned.coordinates.origin,
        position = ?cloned.coordinates.position,
        "clone complete"
    );
    Ok(())
}

async fn clone_from_donors(config: &Config, cancel: &CancellationToken) -> Result<Cloned> {
    ensure!(!config.donors.is_empty(), "no donor to clone from");
    let mut failures = 0;
    let mut delays = retry::backoff();
    let mut waiting_since = Instant::now();
    loop {
        let mut reasons = Vec::new();
        for donor in &config.donors {
            let span = info_span!("clone", %donor);
            match attempt(config, donor, cancel).instrument(span).await {
                Ok(cloned) => return Ok(cloned),
                Err(_) if cancel.is_cancelled() => bail!("clone interrupted by shutdown"),
                Err(AttemptError::Unavailable(reason)) => {
                    info!(%donor, %reason, "donor cannot serve now; trying the next one");
                    reasons.push(format!("{donor}: {reason}"));
                }
                Err(AttemptError::Fatal(e)) => {
                    let staging = config.data_dir.join(STAGING_DIR);
                    blocking(fsutil::remove_all, &staging).await?;
                    return Err(e.context(format!(
                        "cloning into {} failed, and retrying would not help",
                        config.data_dir.display()
                    )));
                }
                Err(AttemptError::Failed(e)) => {
                    failures += 1;
                    warn!(%donor, failures, max = config.max_attempts, error = %format_args!("{e:#}"), "clone attempt failed");
                    let staging = config.data_dir.join(STAGING_DIR);
                    blocking(fsutil::remove_all, &staging).await?;
                    if failures >= config.max_attempts {
                        return Err(e.context(format!(
                            "giving up after {failures} failed clone attempts; the last one, from {donor}"
                        )));
                    }
                    waiting_since = Instant::now();
                }
            }
        }
        if !reasons.is_empty() && waiting_since.elapsed() >= config.donor_wait {
            bail!(
                "no donor could serve a backup for {}: {}",
                humantime::format_duration(config.donor_wait),
                reasons.join("; ")
            );
        }
        let delay = delays.next().unwrap_or(retry::MAX_DELAY);
        info!(retry_in = ?delay, "no clone yet; retrying the donors");
        retry::sleep(delay, cancel)
            .await
            .context("clone interrupted by shutdown")?;
    }
}

async fn attempt(
    config: &Config,
    donor: &Donor,
    cancel: &CancellationToken,
) -> Result<Cloned, AttemptError> {
    let staging = config.data_dir.join(STAGING_DIR);
    let socket = connect(donor)
        .await
        .map_err(|e| AttemptError::Unavailable(format!("{e:#}")))?;
    let started = Instant::now();
    let progress = Arc::new(Progress::default());

    // The extraction blocks on the socket; shutting the socket down is what interrupts it.
    let shutter = socket
        .try_clone()
        .map_err(|e| AttemptError::Failed(e.into()))?;
    let watcher = tokio::spawn({
        let cancel = cancel.clone();
        async move {
            cancel.cancelled().await;
            let _ = shutter.shutdown(Shutdown::Both);
        }
    });
    let reporter = tokio::spawn({
        let progress = Arc::clone(&progress);
        progress::report("receiving", config.progress_interval, started, move || {
            sample(&progress)
        })
    });
    let transfer = Transfer {
        staging: staging.clone(),
        flavor: config.tool.flavor(),
        stall: config.stall_timeout,
        secret: config.secret.clone(),
        progress: Arc::clone(&progress),
        cancel: cancel.clone(),
    };
    let received = tokio::task::spawn_blocking(move || receive(socket, transfer)).await;
    watcher.abort();
    reporter.abort();
    let summary = received.map_err(|e| AttemptError::Failed(e.into()))??;
    let failed = AttemptError::from_transfer;

    verify_complete(&summary, &staging, config.require_end_marker).map_err(failed)?;
    let coordinates = coordinates::read_from_dir(&staging)
        .map_err(failed)?
        .ok_or_else(|| {
            failed(anyhow!(
                "the backup carries no replication coordinates (neither {} nor {}): the donor is not the primary with binary logging on, nor a configured replica",
                coordinates::BINLOG_INFO_FILES[0],
                coordinates::SLAVE_INFO_FILES[0]
            ))
        })?;
    let elapsed = started.elapsed();
    info!(
        bytes = summary.bytes,
        files = summary.files,
        elapsed = ?elapsed,
        rate_mib_s = format!("{:.1}", mib(summary.bytes) / elapsed.as_secs_f64().max(1e-3)),
        "stream received and complete; preparing"
    );
    check_tool_against_backup(&config.tool, &staging).map_err(AttemptError::Fatal)?;
    crate::crash_point!("clone-after-extract");
    prepare(&config.tool, &staging, cancel)
        .await
        .map_err(failed)?;
    crate::crash_point!("clone-after-prepare");
    Ok(Cloned {
        donor: donor.clone(),
        bytes: summary.bytes,
        files: summary.files,
        coordinates,
        elapsed: started.elapsed(),
    })
}

async fn connect(donor: &Donor) -> Result<std::net::TcpStream> {
    let socket = tokio::time::timeout(
        DONOR_CONNECT_TIMEOUT,
        TcpStream::connect((donor.host.as_str(), donor.port)),
    )
    .await
    .map_err(anyhow::Error::from)
    .and_then(|r| r.map_err(anyhow::Error::from))
    .with_context(|| format!("connecting to {donor}"))?;
    let socket = socket.into_std()?;
    socket.set_nonblocking(false)?;
    Ok(socket)
}

/// What the blocking thread receiving from one donor needs.
struct Transfer {
    staging: PathBuf,
    flavor: xbstream::Flavor,
    stall: Duration,
    secret: Option<BackupSecret>,
    progress: Arc<Progress>,
    cancel: CancellationToken,
}

/// Reads the donor's answer on a blocking thread: the handshake when there is a secret, then
/// a refusal line or a stream to extract.
fn receive(socket: std::net::TcpStream, transfer: Transfer) -> Result<Summary, AttemptError> {
    let Transfer {
        staging,
        flavor,
        stall,
        secret,
        progress,
        cancel,
    } = transfer;
    let (staging, secret) = (staging.as_path(), secret.as_ref());
    let failed = |e: anyhow::Error| AttemptError::from_transfer(explain_stall(e, stall));
    socket
        .set_read_timeout(Some(stall))
        .map_err(|e| AttemptError::Failed(e.into()))?;
    let mut replies = socket
        .try_clone()
        .map_err(|e| AttemptError::Failed(e.into()))?;
    // Buffered so that the lines and the stream after them are read from one place.
    let mut input = BufReader::new(socket);
    let mut authenticated = false;
    let head = loop {
        let head =
            read_head(&mut input).map_err(|e| failed(e.context("reading from the donor")))?;
        if head.is_empty() {
            return Err(AttemptError::Unavailable(
                "the donor closed the connection without sending anything".into(),
            ));
        }
        if head != protocol::LINE_PREFIX.as_bytes()[..8] {
            break head;
        }
        let line = read_line(&head, &mut input).map_err(failed)?;
        match Message::parse(&line).map_err(AttemptError::Failed)? {
            Message::Challenge(server_nonce) => {
                let Some(secret) = secret else {
                    return Err(AttemptError::Fatal(anyhow!(
                        "the donor requires a backup secret: pass --backup-secret-file with the StatefulSet's secret"
                    )));
                };
                answer_challenge(secret, &server_nonce, &mut replies, &mut input).map_err(|e| match e {
                    Handshake::Denied(reason) => AttemptError::Fatal(anyhow!(
                        "the donor refused our backup secret ({reason}): the pods do not share the same secret"
                    )),
                    Handshake::Failed(e) => failed(e),
                })?;
                authenticated = true;
            }
            refusal @ (Message::Busy(_) | Message::NotReady(_)) => {
                return Err(AttemptError::Unavailable(refusal.to_string()));
            }
            other => {
                return Err(AttemptError::Failed(anyhow!(
                    "unexpected {other} from the donor"
                )));
            }
        }
    };
    if secret.is_some() && !authenticated {
        return Err(AttemptError::Failed(anyhow!(
            "the donor sent a backup without proving it knows the backup secret (it runs without one); refused"
        )));
    }
    fs::create_dir(staging)
        .with_context(|| format!("creating {}", staging.display()))
        .map_err(AttemptError::from_transfer)?;
    Extractor::new(staging, flavor)
        .with_header(protocol::INFO_ENTRY)
        .with_trailer(protocol::STATUS_ENTRY)
        .with_progress(progress)
        .with_cancel(cancel)
        .extract(Cursor::new(head).chain(input))
        .context("receiving the backup stream")
        .map_err(failed)
}

/// The first 8 bytes of what comes next (fewer at the end of the stream): enough to tell an
/// agent line from xbstream's magic.
fn read_head(input: &mut impl Read) -> Result<Vec<u8>> {
    let mut head = Vec::with_capacity(8);
    input.take(8).read_to_end(&mut head)?;
    Ok(head)
}

/// The rest of an agent line whose first bytes were `head`, without its newline.
fn read_line(head: &[u8], input: &mut impl BufRead) -> Result<String> {
    let mut line = head.to_vec();
    input
        .take(protocol::MAX_LINE_LEN as u64)
        .read_until(b'\n', &mut line)
        .context("reading a line from the donor")?;
    ensure!(
        line.ends_with(b"\n"),
        "a line from the donor without an end"
    );
    line.pop();
    String::from_utf8(line).context("a line from the donor that is not text")
}

enum Handshake {
    /// The donor says our proof is wrong.
    Denied(String),
    Failed(anyhow::Error),
}

/// Proves we know the secret, and checks the donor's proof that it does too.
fn answer_challenge(
    secret: &BackupSecret,
    server_nonce: &protocol::Nonce,
    replies: &mut impl Write,
    input: &mut impl BufRead,
) -> Result<(), Handshake> {
    let failed = Handshake::Failed;
    let nonce = protocol::nonce().map_err(failed)?;
    let auth = Message::Auth {
        nonce,
        mac: protocol::client_proof(secret, server_nonce, &nonce),
    };
    replies
        .write_all(auth.to_line().as_bytes())
        .context("answering the donor's challenge")
        .map_err(failed)?;
    let head = read_head(input).map_err(failed)?;
    let line = read_line(&head, input).map_err(failed)?;
    match Message::parse(&line).map_err(failed)? {
        Message::Proof(mac)
            if protocol::server_proof_is_valid(secret, server_nonce, &nonce, &mac) =>
        {
            Ok(())
        }
        Message::Proof(_) => Err(failed(anyhow!(
            "the donor's proof does not match: it does not know the backup secret"
        ))),
        Message::Denied(reason) => Err(Handshake::Denied(reason)),
        other => Err(failed(anyhow!("unexpected {other} after our proof"))),
    }
}

/// A read timeout surfaces as EAGAIN; say what it means.
fn explain_stall(e: anyhow::Error, stall: Duration) -> anyhow::Error {
    let timed_out = e.chain().any(|cause| {
        cause.downcast_ref::<io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            )
        })
    });
    if timed_out {
        e.context(format!(
            "no data from the donor for {} (see --stall-timeout)",
            humantime::format_duration(stall)
        ))
    } else {
        e
    }
}

/// The stream is a whole backup: the agent's end-of-stream entry vouches for it, or (from a
/// donor without the agent) the tool's own last files are there. xbstream alone cannot tell.
fn verify_complete(summary: &Summary, staging: &Path, require_end_marker: bool) -> Result<()> {
    match &summary.trailer {
        Some(trailer) => StreamStatus::parse(&trailer.contents)?.verify(trailer.stream_offset)?,
        None => {
            ensure!(
                !require_end_marker,
                "the donor sent no end-of-stream entry (is it the tutorial's ncat sidecar?) and --require-end-marker is set"
            );
            ensure!(
                coordinates::read_optional(staging, &coordinates::INFO_FILES)?.is_some(),
                "the stream ended without the agent's end-of-stream entry and without the backup tool's final {}: it was cut short",
                coordinates::INFO_FILES[0]
            );
            warn!(
                "no end-of-stream entry (a donor running the tutorial's ncat sidecar?); accepting the stream because the backup's own completion files are present"
            );
        }
    }
    let (path, text) = coordinates::read_optional(staging, &coordinates::CHECKPOINTS_FILES)?
        .with_context(|| {
            format!(
                "the stream holds no {}: it is not a complete backup",
                coordinates::CHECKPOINTS_FILES[0]
            )
        })?;
    let backup_type = coordinates::parse_backup_type(&text)
        .with_context(|| format!("reading {}", path.display()))?;
    ensure!(
        backup_type == coordinates::BACKUP_TYPE_FULL,
        "the backup's type is {backup_type:?}, not a full backup ({})",
        coordinates::BACKUP_TYPE_FULL
    );
    Ok(())
}

/// Prepare needs a tool that knows the donor server's formats; the info file names it.
fn check_tool_against_backup(tool: &BackupTool, staging: &Path) -> Result<()> {
    let Some((path, text)) = coordinates::read_optional(staging, &coordinates::INFO_FILES)? else {
        return Ok(());
    };
    let Some(version) = coordinates::field(&text, "server_version") else {
        return Ok(());
    };
    let server = ServerVersion::parse(&version)
        .with_context(|| format!("reading server_version in {}", path.display()))?;
    backup_tool::check_compatible(tool, &server)
        .context("the donor's backup cannot be prepared here")
}

async fn prepare(tool: &BackupTool, staging: &Path, cancel: &CancellationToken) -> Result<()> {
    let finished = process::run(tool.prepare_command(staging), "prepare", cancel).await?;
    ensure!(
        finished.completed_ok(),
        "{} --prepare {}",
        tool.path.display(),
        finished.describe()
    );
    let (_, text) = coordinates::read_optional(staging, &coordinates::CHECKPOINTS_FILES)?
        .context("the checkpoints file vanished during prepare")?;
    let backup_type = coordinates::parse_backup_type(&text)?;
    ensure!(
        coordinates::is_prepared(&backup_type),
        "after --prepare the backup's type is {backup_type:?}, not a prepared one"
    );
    Ok(())
}

/// Moves the prepared clone into place and records it durably (see the module docs).
fn commit(data_dir: &Path, record: &str) -> Result<()> {
    let staging = data_dir.join(STAGING_DIR);
    for (i, name) in fsutil::list_dir(&staging)?.into_iter().enumerate() {
        let to = data_dir.join(&name);
        ensure!(!fsutil::exists(&to)?, "{} already exists", to.display());
        fs::rename(staging.join(&name), &to)
            .with_context(|| format!("moving {name} into {}", data_dir.display()))?;
        if i == 0 {
            crate::crash_point!("clone-mid-commit");
        }
    }
    fsutil::sync_filesystem(data_dir)?;
    fs::remove_dir(&staging).with_context(|| format!("removing {}", staging.display()))?;
    fsutil::write_atomic(&data_dir.join(DONE_MARKER), record.as_bytes())?;
    fsutil::remove_all(&data_dir.join(IN_PROGRESS_MARKER))?;
    fsutil::fsync_dir(data_dir)
}

/// Removes everything an interrupted clone left in the data dir but its in-progress marker,
/// which must outlive the rest: a kill mid-wipe would otherwise leave partial data with no
/// marker, for the next run to take for a server's data. The new run rewrites the marker.
fn wipe(data_dir: &Path) -> Result<()> {
    for name in fsutil::list_dir(data_dir)? {
        if name != IN_PROGRESS_MARKER && !IGNORED_ENTRIES.contains(&name.as_str()) {
            fsutil::remove_all(&data_dir.join(name))?;
            crate::crash_point!("clone-mid-wipe");
        }
    }
    fsutil::fsync_dir(data_dir)
}

/// What the extraction has done so far, with the donor's estimate once its info arrived.
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
async fn blocking<T: Send + 'static>(
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

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_donors() {
        let d = |s: &str| s.parse::<Donor>().unwrap();
        assert_eq!(
            d("mysql-1.mysql"),
            Donor {
                host: "mysql-1.mysql".into(),
                port: 3307
            }
        );
        assert_eq!(
            d("10.0.0.5:4000"),
            Donor {
                host: "10.0.0.5".into(),
                port: 4000
            }
        );
        assert_eq!(
            d("[::1]:4000"),
            Donor {
                host: "::1".into(),
                port: 4000
            }
        );
        assert_eq!(d("[::1]").port, 3307);
        assert_eq!(d("fe80::1").host, "fe80::1");
        assert_eq!(d("[::1]:4000").to_string(), "[::1]:4000");
        for bad in ["", ":3307", "host:port", "host:70000", "[::1", "[::1]x"] {
            assert!(bad.parse::<Donor>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn classifies_data_dirs() {
        use DataDirState::*;
        assert_eq!(classify(&[], None), Empty);
        assert_eq!(classify(&names(&["lost+found"]), None), Empty);
        // Killed while writing the first marker.
        assert_eq!(
            classify(&names(&["..mysql-agent-clone-in-progress.tmp"]), None),
            Empty
        );
        assert_eq!(
            classify(
                &names(&[DONE_MARKER, IN_PROGRESS_MARKER, "mysql", "ibdata1"]),
                Some("log-applied")
            ),
            CloneDone
        );
        // Interrupted at any point: staging only, or files half moved into place.
        assert_eq!(
            classify(&names(&[IN_PROGRESS_MARKER]), None),
            CloneInterrupted
        );
        assert_eq!(
            classify(
                &names(&[IN_PROGRESS_MARKER, STAGING_DIR, "mysql"]),
                Some("full-backuped")
            ),
            CloneInterrupted
        );
        assert_eq!(classify(&names(&[STAGING_DIR]), None), CloneInterrupted);
        // A tutorial pod cloned and prepared before migrating to the agent.
        assert_eq!(
            classify(&names(&["mysql", "ibdata1"]), Some("full-prepared")),
            Initialized
        );
        assert_eq!(
            classify(&names(&["mysql", "ibdata1", "lost+found"]), None),
            Initialized
        );
        // The tutorial's partial clone: xbstream got as far as the checkpoints.
        assert_eq!(
            classify(
                &names(&["mysql", "xtrabackup_checkpoints"]),
                Some("full-backuped")
            ),
            Unprepared {
                backup_type: "full-backuped".into()
            }
        );
        assert_eq!(
            classify(&names(&["notes.txt", STAGING_DIR]), None),
            Unknown {
                entries: names(&["notes.txt", STAGING_DIR])
            }
        );
    }

    #[test]
    fn inspect_reads_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("mysql")).unwrap();
        fs::write(
            dir.path().join("xtrabackup_checkpoints"),
            "backup_type = full-backuped\n",
        )
        .unwrap();
        assert!(matches!(
            inspect(dir.path()).unwrap(),
            DataDirState::Unprepared { .. }
        ));
        fs::write(
            dir.path().join("xtrabackup_checkpoints"),
            "backup_type = log-applied\n",
        )
        .unwrap();
        assert_eq!(inspect(dir.path()).unwrap(), DataDirState::Initialized);
    }

    #[test]
    fn commit_moves_everything_and_swaps_markers() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(d.join(IN_PROGRESS_MARKER), "x").unwrap();
        fs::create_dir_all(d.join(STAGING_DIR).join("mysql")).unwrap();
        fs::write(d.join(STAGING_DIR).join("ibdata1"), "data").unwrap();
        commit(d, "completed_at = now\n").unwrap();
        assert_eq!(
            fsutil::list_dir(d).unwrap(),
            names(&[DONE_MARKER, "ibdata1", "mysql"])
        );
        assert_eq!(inspect(d).unwrap(), DataDirState::CloneDone);
    }

    #[test]
    fn wipe_keeps_the_marker_and_lost_and_found() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in ["lost+found", STAGING_DIR, "mysql"] {
            fs::create_dir(d.join(sub)).unwrap();
        }
        fs::write(d.join(IN_PROGRESS_MARKER), "x").unwrap();
        fs::write(d.join("..mysql-agent-clone-done.tmp"), "x").unwrap();
        fs::write(d.join("ibdata1"), "x").unwrap();
        wipe(d).unwrap();
        assert_eq!(
            fsutil::list_dir(d).unwrap(),
            names(&[IN_PROGRESS_MARKER, "lost+found"])
        );
        // Whatever a kill mid-wipe leaves, the marker is still there to say "interrupted".
        assert_eq!(inspect(d).unwrap(), DataDirState::CloneInterrupted);
    }

    #[test]
    fn completeness_needs_the_entry_or_the_tools_last_files() {
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path();
        fs::write(
            staging.join("xtrabackup_checkpoints"),
            "backup_type = full-backuped\n",
        )
        .unwrap();
        let status = |bytes| StreamStatus {
            failure: None,
            stream_bytes: bytes,
            tool: "t".into(),
        };
        let with = |s: StreamStatus, offset| Summary {
            bytes: 0,
            files: 0,
            header: None,
            trailer: Some(xbstream::Trailer {
                stream_offset: offset,
                contents: s.to_text().into_bytes(),
            }),
        };
        verify_complete(&with(status(100), 100), staging, true).unwrap();
        assert!(verify_complete(&with(status(100), 90), staging, true).is_err());
        let without = Summary {
            bytes: 0,
            files: 0,
            header: None,
            trailer: None,
        };
        let cut = format!(
            "{:#}",
            verify_complete(&without, staging, false).unwrap_err()
        );
        assert!(cut.contains("cut short"), "{cut}");
        fs::write(staging.join("xtrabackup_info"), "tool_name = xtrabackup\n").unwrap();
        verify_complete(&without, staging, false).unwrap();
        assert!(verify_complete(&without, staging, true).is_err());
        fs::write(
            staging.join("xtrabackup_checkpoints"),
            "backup_type = incremental\n",
        )
        .unwrap();
        assert!(verify_complete(&without, staging, false).is_err());
    }
}
