//! `serve-backup`: the sidecar. Points replication at the primary from the clone's
//! coordinates (once), and serves backups to peers on port 3307.
//!
//! The listener opens at once, but a replica answers NOT-READY until its replication is
//! configured: a backup taken before that would carry no coordinates, and the peer cloning
//! it could never replicate. With a backup secret, a client first proves it knows the secret
//! (see [`crate::protocol::Message`]); until then it learns nothing, not even readiness.

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, info_span, warn};

use crate::accounts::{self, Account, Role};
use crate::backup_tool::{self, BackupTool};
use crate::coordinates;
use crate::fsutil;
use crate::handoff;
use crate::http::{self, HttpState};
use crate::metrics::{self, BackupResult, Metrics};
use crate::monitor::{self, Health};
use crate::mysql::{self, MysqlTarget, ServerInfo};
use crate::pod::PodIdentity;
use crate::process::Supervised;
use crate::progress::{self, Sample};
use crate::protocol::{self, Message, StreamInfo, StreamStatus};
use crate::replication::{self, Outcome, Source};
use crate::retry;
use crate::secrets::{BackupSecret, ClientOptionsFile};

/// How long a refusal line or a final status may take to send before the client is dropped.
const SHORT_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long in-flight backups get to wind down after SIGTERM.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Pause after a failed accept (out of file descriptors, say) before trying again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(200);

#[derive(Debug, Clone)]
pub struct Config {
    pub pod: PodIdentity,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// The local mysqld, for replication setup and for the backup tool.
    pub mysql: MysqlTarget,
    /// The primary, as the replica's IO thread reaches it, with the replication account.
    pub source: Source,
    /// The account the backup tool connects with.
    pub backup_account: Account,
    /// Create the replication and backup accounts on the primary when missing.
    pub create_accounts: bool,
    /// Serve only clients that prove they know it; `None` is the tutorial's open port.
    pub secret: Option<BackupSecret>,
    pub tool: BackupTool,
    pub max_backups: usize,
    /// The backup tool's --parallel.
    pub backup_threads: u32,
    /// Where /healthz, /readyz and /metrics are served.
    pub http_listen: SocketAddr,
    /// A replica lagging more than this is not ready.
    pub max_replication_lag: Duration,
    pub progress_interval: Duration,
}

/// Whether backups may be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    NotReady(String),
}

/// What every connection handler shares.
pub struct Server {
    config: Config,
    slots: Arc<Semaphore>,
    readiness: watch::Receiver<Readiness>,
    metrics: Arc<Metrics>,
}

pub async fn run(config: Config, cancel: CancellationToken) -> Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening for backup clients on {}", config.listen))?;
    let http_listener = TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("listening for HTTP on {}", config.http_listen))?;
    info!(listen = %listener.local_addr()?, tool = %config.tool, "serving backups");
    if config.secret.is_none() {
        warn!(
            listen = %config.listen,
            "no --backup-secret-file: anyone who reaches this port can download a full copy of the database \
             (the tutorial's raw mode, kept so a tutorial StatefulSet can be migrated pod by pod)"
        );
    }
    let metrics = Arc::new(Metrics::new());
    let (ready_tx, readiness) =
        watch::channel(Readiness::NotReady("waiting for the local mysqld".into()));
    let (health_tx, health) = watch::channel(None);
    // Serving stops at SIGTERM, or when set-up finds this pod can never serve.
    let serving = cancel.child_token();
    let setup = tokio::spawn(
        set_up(
            config.clone(),
            ready_tx,
            health_tx,
            Arc::clone(&metrics),
            serving.clone(),
        )
        .instrument(info_span!("setup")),
    );
    let http_state = Arc::new(HttpState {
        metrics: Arc::clone(&metrics),
        setup: readiness.clone(),
        health,
        replica: !config.pod.is_primary(),
        max_lag: config.max_replication_lag,
    });
    let http = tokio::spawn(http::serve(http_listener, http_state, serving.clone()));
    let server = Arc::new(Server {
        slots: Arc::new(Semaphore::new(config.max_backups)),
        config,
        readiness,
        metrics,
    });
    serve(listener, server, serving).await;
    match tokio::time::timeout(SHORT_WRITE_TIMEOUT, http).await {
        Ok(Ok(Err(e))) => warn!(error = %format_args!("{e:#}"), "the HTTP endpoint failed"),
        Ok(_) => {}
        Err(_) => warn!("the HTTP endpoint did not stop in time"),
    }
    if !setup.is_finished() {
        setup.abort();
    }
    match setup.await {
        Ok(Err(fatal)) => Err(fatal),
        _ => Ok(()),
    }
}

/// Identifies the local server, refuses a backup tool that cannot handle it, then makes the
/// pod ready: at once on the primary, once replication is configured on a replica. Returns
/// an error only for what no retry can fix, after stopping `serving`.
async fn set_up(
    config: Config,
    ready: watch::Sender<Readiness>,
    health: watch::Sender<Option<Health>>,
    metrics: Arc<Metrics>,
    serving: CancellationToken,
) -> Result<()> {
    // Broken coordinates are known without mysqld and will not mend: say so at once.
    let coordinates = if config.pod.is_primary() {
        Ok(None)
    } else {
        coordinates::read_from_dir(&config.data_dir).map_err(|e| format!("{e:#}"))
    };
    if let Err(reason) = &coordinates {
        error!(%reason, "replication cannot be configured; backups will be refused");
        let _ = ready.send(Readiness::NotReady(reason.clone()));
    }
    let Ok(server) = mysql::identify_with_retry(&config.mysql, &serving).await else {
        return Ok(()); // cancelled
    };
    if let Err(e) = backup_tool::check_compatible(&config.tool, &server.version) {
        error!(error = %e, "this pod cannot serve backups");
        serving.cancel();
        return Err(e);
    }
    info!(server = %server.version, tool = %config.tool, "the backup tool matches the server");
    tokio::spawn(
        monitor::run(
            config.mysql.clone(),
            server.version,
            !config.pod.is_primary(),
            Arc::clone(&metrics),
            health,
            serving.clone(),
        )
        .instrument(info_span!("monitor")),
    );
    let Ok(coordinates) = coordinates else {
        return Ok(());
    };
    if config.pod.is_primary() {
        if config.create_accounts {
            create_accounts(&config, &server, &serving).await;
        }
        let _ = ready.send(Readiness::Ready);
        return Ok(());
    }
    let _ = ready.send(Readiness::NotReady(
        "replication is not configured yet".into(),
    ));
    match replication::ensure_configured(
        &config.mysql,
        &config.source,
        &config.data_dir,
        coordinates.as_ref(),
        &serving,
    )
    .await
    {
        Ok(Outcome::Configured) => {
            info!(primary = %config.source.host, "replication is configured");
            metrics.replication_configured.set(1);
            let _ = ready.send(Readiness::Ready);
        }
        Ok(Outcome::NotConfigured(reason)) => {
            error!(%reason, "replication is not configured; backups will be refused");
            let _ = ready.send(Readiness::NotReady(reason));
        }
        Err(e) => info!(error = %format_args!("{e:#}"), "replication setup interrupted"),
    }
    Ok(())
}

/// Accepts clients until `cancel`, then gives in-flight backups [`SHUTDOWN_GRACE`] to end.
pub async fn serve(listener: TcpListener, server: Arc<Server>, cancel: CancellationToken) {
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((socket, peer)) => {
                let (server, cancel) = (Arc::clone(&server), cancel.clone());
                tracker.spawn(
                    async move { handle(socket, &server, &cancel).await }
                        .instrument(info_span!("backup", %peer)),
                );
            }
            Err(e) => {
                warn!(error = %e, "accepting a backup client failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        warn!("backups still running after the shutdown grace period");
    }
}

/// Creates the replication and backup accounts, retrying through transient failures; an
/// account the admin user itself serves as is left alone.
async fn create_accounts(config: &Config, server: &ServerInfo, cancel: &CancellationToken) {
    let replication = Account {
        user: config.source.user.clone(),
        password: config.source.password.clone(),
    };
    let wanted = [
        (&replication, Role::Replication),
        (&config.backup_account, Role::Backup),
    ];
    let mut delays = retry::backoff();
    loop {
        let created: Result<()> = async {
            let mut conn = mysql::connect_with_retry(&config.mysql, cancel).await?;
            for (account, role) in wanted {
                if account.user != config.mysql.user {
                    accounts::ensure(
                        &mut conn,
                        &server.version,
                        server.no_backslash_escapes,
                        account,
                        role,
                    )
                    .await?;
                }
            }
            let _ = conn.disconnect().await;
            Ok(())
        }
        .await;
        match created {
            Ok(()) => return,
            Err(_) if cancel.is_cancelled() => return,
            Err(e) => {
                let delay = delays.next().unwrap_or(retry::MAX_DELAY);
                warn!(error = %format_args!("{e:#}"), retry_in = ?delay, "creating accounts failed; retrying");
                if retry::sleep(delay, cancel).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// How long a client has to answer the challenge.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);

/// Challenges the client; `Err` says why it failed, for the log (the client learns only that
/// it was denied).
async fn authenticate(socket: &mut TcpStream, secret: &BackupSecret) -> Result<()> {
    let server_nonce = protocol::nonce()?;
    socket
        .write_all(Message::Challenge(server_nonce).to_line().as_bytes())
        .await
        .context("sending the challenge")?;
    let line = tokio::time::timeout(AUTH_TIMEOUT, read_line(socket))
        .await
        .context("no answer to the challenge in time")??;
    let Message::Auth { nonce, mac } = Message::parse(&line).context("a garbled answer")? else {
        anyhow::bail!("an answer that is not an authentication");
    };
    if !protocol::client_proof_is_valid(secret, &server_nonce, &nonce, &mac) {
        anyhow::bail!("a proof that does not match the secret (a wrong secret, or a replay)");
    }
    let proof = Message::Proof(protocol::server_proof(secret, &server_nonce, &nonce));
    socket
        .write_all(proof.to_line().as_bytes())
        .await
        .context("sending the proof")
}

/// One line from the client, without its newline, at most [`protocol::MAX_LINE_LEN`] bytes.
/// Byte by byte: nothing may be read past it, and a handshake line is short.
async fn read_line(socket: &mut TcpStream) -> Result<String> {
    let mut line = Vec::new();
    loop {
        let byte = socket
            .read_u8()
            .await
            .context("reading the client's answer")?;
        if byte == b'\n' {
            return String::from_utf8(line).context("an answer that is not text");
        }
        anyhow::ensure!(
            line.len() < protocol::MAX_LINE_LEN,
            "an answer too long to be one"
        );
        line.push(byte);
    }
}

async fn handle(mut socket: TcpStream, server: &Server, cancel: &CancellationToken) {
    if let Some(secret) = &server.config.secret
        && let Err(e) = authenticate(&mut socket, secret).await
    {
        warn!(reason = %format_args!("{e:#}"), "refused a client that did not prove it knows the backup secret");
        server.metrics.refused(metrics::Refusal::Denied);
        let denied = Message::Denied("authentication failed".into()).to_line();
        let _ =
            tokio::time::timeout(SHORT_WRITE_TIMEOUT, socket.write_all(denied.as_bytes())).await;
        return;
    }
    let refusal = match &*server.readiness.borrow() {
        Readiness::NotReady(reason) => Some(Message::NotReady(reason.clone())),
        Readiness::Ready => None,
    };
    let permit = match refusal {
        Some(refusal) => Err(refusal),
        None => Arc::clone(&server.slots).try_acquire_owned().map_err(|_| {
            Message::Busy(format!(
                "already serving {} backup(s); retry later",
                server.config.max_backups
            ))
        }),
    };
    let _permit = match permit {
        Ok(permit) => permit,
        Err(refusal) => {
            info!(%refusal, "refusing a backup client");
            server.metrics.refused(match refusal {
                Message::Busy(_) => metrics::Refusal::Busy,
                _ => metrics::Refusal::NotReady,
            });
            let line = refusal.to_line();
            let _ =
                tokio::time::timeout(SHORT_WRITE_TIMEOUT, socket.write_all(line.as_bytes())).await;
            return;
        }
    };
    let started = Instant::now();
    info!("serving a backup");
    let metrics = &server.metrics;
    metrics.backups_in_progress.inc();
    let result = match stream_backup(&mut socket, server, cancel).await {
        Ok(status) => {
            let chunks = status.to_chunks();
            let sent = tokio::time::timeout(SHORT_WRITE_TIMEOUT, async {
                socket.write_all(&chunks).await?;
                socket.shutdown().await
            })
            .await;
            let elapsed = started.elapsed();
            match (&status.failure, sent) {
                (None, Ok(Ok(()))) => {
                    info!(bytes = status.stream_bytes, ?elapsed, "backup served");
                    BackupResult::Completed
                }
                (Some(reason), _) => {
                    warn!(%reason, bytes = status.stream_bytes, "backup failed; the client was told");
                    BackupResult::Failed
                }
                (None, _) => {
                    warn!("backup completed but the client left before its status");
                    BackupResult::Aborted
                }
            }
        }
        Err(e) => {
            warn!(error = %format_args!("{e:#}"), "backup aborted");
            BackupResult::Aborted
        }
    };
    metrics.backups_in_progress.dec();
    metrics.backup_ended(result, started.elapsed());
}

/// Sends the stream info, then runs the backup tool with its stdout copied to the client,
/// with progress lines. Returns the status to append, or an error when the client is gone or
/// the agent is shutting down (the tool is then killed with its process group).
async fn stream_backup(
    socket: &mut TcpStream,
    server: &Server,
    cancel: &CancellationToken,
) -> Result<StreamStatus> {
    let config = &server.config;
    // What to expect, first: the data dir's size, for the receiver's progress lines.
    let data_dir = config.data_dir.clone();
    let estimated_bytes = tokio::task::spawn_blocking(move || fsutil::tree_size(&data_dir))
        .await
        .unwrap_or_default();
    let info = StreamInfo { estimated_bytes }.to_chunks();
    socket
        .write_all(&info)
        .await
        .context("sending to the client")?;
    let sent = Arc::new(AtomicU64::new(info.len() as u64));
    server.metrics.stream_bytes.inc_by(info.len() as u64);
    let reporter = tokio::spawn(progress::report(
        "streaming",
        config.progress_interval,
        Instant::now(),
        {
            let sent = Arc::clone(&sent);
            move || Sample {
                bytes: sent.load(Ordering::Relaxed),
                files: None,
                estimated_bytes: Some(estimated_bytes),
            }
        },
    ));
    let result = stream_tool_output(socket, server, cancel, &sent).await;
    reporter.abort();
    result
}

/// The backup tool, writing into the client socket itself (see [`handoff`]); see
/// [`stream_backup`].
async fn stream_tool_output(
    socket: &mut TcpStream,
    server: &Server,
    cancel: &CancellationToken,
    sent: &Arc<AtomicU64>,
) -> Result<StreamStatus> {
    let config = &server.config;
    // Lives until the tool is done: its password never touches the tool's command line.
    let options =
        ClientOptionsFile::create(&config.backup_account.user, &config.backup_account.password)?;
    let mut command = config.tool.backup_command(
        &config.data_dir,
        &config.mysql,
        options.path(),
        config.backup_threads,
    );
    // What the agent wrote so far is acknowledged before the tool starts, so the count
    // after it exits minus this one is the tool's output.
    let baseline = handoff::drained(socket.as_fd(), handoff::DRAIN_TIMEOUT, cancel).await?;
    let blocking = handoff::BlockingGuard::new(socket.as_fd())?;
    let tool_end = socket
        .as_fd()
        .try_clone_to_owned()
        .context("duplicating the client socket")?;
    command.stdout(std::process::Stdio::from(tool_end));
    // Spawning consumes the command and with it the agent's copy of the tool's descriptor.
    let mut child = Supervised::spawn(command, "backup")?;
    let mut counted = 0u64;
    let mut count = |acked: u64| {
        let delivered = acked.saturating_sub(baseline);
        server.metrics.stream_bytes.inc_by(delivered - counted);
        sent.fetch_add(delivered - counted, Ordering::Relaxed);
        counted = delivered;
    };
    let mut tick = tokio::time::interval(handoff::POLL_TICK);
    // One wait future for the whole run: dropping it half-way could lose the tool's stderr.
    let finished = {
        let wait = child.wait();
        tokio::pin!(wait);
        loop {
            tokio::select! {
                finished = &mut wait => break Some(finished?),
                _ = tick.tick() => {
                    if let Ok(state) = handoff::send_state(socket.as_fd()) {
                        count(state.acked);
                    }
                }
                () = cancel.cancelled() => break None,
            }
        }
    };
    let Some(finished) = finished else {
        let finished = child.kill().await?;
        bail!(
            "the agent is shutting down; backup tool killed ({})",
            finished.describe()
        );
    };
    let acked = handoff::drained(socket.as_fd(), handoff::DRAIN_TIMEOUT, cancel)
        .await
        .with_context(|| format!("the backup tool {}", finished.describe()))?;
    count(acked);
    drop(blocking);
    let failure = (!finished.completed_ok())
        .then(|| format!("{} {}", config.tool.path.display(), finished.describe()));
    Ok(StreamStatus {
        failure,
        stream_bytes: sent.load(Ordering::Relaxed),
        tool: config.tool.to_string(),
    })
}
