//! `serve-backup`: the sidecar. Points replication at the primary from the clone's
//! coordinates (once), and serves backups to peers on port 3307.
//!
//! The listener opens at once, but a replica answers NOT-READY until its replication is
//! configured: a backup taken before that would carry no coordinates, and the peer cloning
//! it could never replicate. With a backup secret, a client first proves it knows the secret
//! (see [`crate::protocol::handshake`]); until then it learns nothing, not even readiness.
//!
//! No client can hold the sidecar: at most [`MAX_PENDING_CLIENTS`] may be in the opening
//! exchange at once (the oldest is dropped for a new one), each within the handshake's own
//! timeout, and a client that stops reading a backup for `--stall-timeout` is dropped with
//! its backup tool, freeing the slot.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::accounts::{self, Account, Role};
use crate::backup_tool::{self, BackupTool};
use crate::errors::{self, report};
use crate::fsutil;
use crate::handoff::{self, SendState};
use crate::http::{self, HttpState};
use crate::metadata::BackupMetadata;
use crate::metrics::{self, BackupResult, Metrics};
use crate::monitor::{self, Judge, Readiness};
use crate::mysql::{self, MysqlTarget, ServerInfo};
use crate::pod::PodIdentity;
use crate::process::{Finished, Supervised};
use crate::progress::{self, Sample};
use crate::protocol::handshake::{self, AUTH_TIMEOUT, LINE_WRITE_TIMEOUT};
use crate::protocol::{Message, Rejection, StreamInfo, StreamStatus};
use crate::replication::{self, Outcome, Source};
use crate::retry;
use crate::secrets::{BackupSecret, ClientOptions};
use crate::sockets;
use crate::tls::TlsDir;

/// How long in-flight backups get to wind down after SIGTERM.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Pause after a failed accept (out of file descriptors, say) before trying again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(200);
/// Clients in the opening exchange at once (challenge unanswered, or waiting for their
/// refusal line to be read); past this the oldest is dropped for the newest.
pub const MAX_PENDING_CLIENTS: usize = 64;
/// The default of `--stall-timeout`: a client that accepts no byte for this long is dropped.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(60);

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
    /// Mutual TLS on the port (`--tls-dir`); `None` sends the stream in clear.
    pub tls: Option<Arc<TlsDir>>,
    /// `--backup-tool`, or `None` to search PATH.
    pub tool: Option<PathBuf>,
    pub max_backups: usize,
    /// The backup tool's --parallel.
    pub backup_threads: u32,
    /// A client that takes no byte for this long is dropped, its tool killed.
    pub stall_timeout: Duration,
    /// Where /healthz, /readyz and /metrics are served.
    pub http_listen: SocketAddr,
    /// A replica lagging more than this is not ready.
    pub max_replication_lag: Duration,
    pub progress_interval: Duration,
    /// Where the primary archives its binary logs (`--archive-binlogs-to`).
    pub archive: Option<crate::archiver::Config>,
}

/// What every connection handler shares.
pub struct Server {
    config: Config,
    tool: BackupTool,
    slots: Arc<Semaphore>,
    readiness: watch::Receiver<Readiness>,
    metrics: Arc<Metrics>,
}

pub async fn run(config: Config, cancel: CancellationToken) -> Result<()> {
    let tool = BackupTool::locate(config.tool.as_deref())
        .await
        .map_err(errors::usage)?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| {
            format!(
                "listening for backup clients on {} (see --listen)",
                config.listen
            )
        })
        .map_err(errors::usage)?;
    let http_listener = TcpListener::bind(config.http_listen)
        .await
        .with_context(|| {
            format!(
                "listening for HTTP on {} (see --http-listen)",
                config.http_listen
            )
        })
        .map_err(errors::usage)?;
    raise_descriptor_limit();
    info!(listen = %listener.local_addr()?, tool = %tool, "serving backups");
    if let Some(tls) = &config.tls {
        info!(
            dir = %tls.dir().display(),
            kernel_tls = crate::tls::kernel_tls_available(),
            "port 3307 speaks mutual TLS 1.3; the backup tool's output is relayed and encrypted in user space"
        );
    }
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
    let (refresh, refresh_rx) = mpsc::channel(monitor::MAX_PENDING_REFRESHES);
    let judge = Judge {
        setup: readiness.clone(),
        replica: !config.pod.is_primary(),
        max_lag: config.max_replication_lag,
    };
    // Serving stops at SIGTERM, or when set-up finds this pod can never serve.
    let serving = cancel.child_token();
    let setup = AbortOnDropHandle::new(tokio::spawn(
        set_up(
            config.clone(),
            tool.clone(),
            judge.clone(),
            ready_tx,
            monitor::Channels {
                health: health_tx,
                refresh: refresh_rx,
            },
            Arc::clone(&metrics),
            serving.clone(),
        )
        .instrument(info_span!("setup")),
    ));
    let app = http::router(Arc::new(HttpState {
        pod: config.pod.name.clone(),
        refresh,
        metrics: Arc::clone(&metrics),
        health,
        judge,
    }));
    let http = AbortOnDropHandle::new(tokio::spawn(http::serve(
        http_listener,
        app,
        http::Limits::default(),
        serving.clone(),
    )));
    let _archiver = match (&config.archive, config.pod.is_primary()) {
        (Some(archive), true) => Some(AbortOnDropHandle::new(tokio::spawn(
            crate::archiver::run(
                archive.clone(),
                config.mysql.clone(),
                Arc::clone(&metrics),
                serving.clone(),
            )
            .instrument(info_span!("archive", store = %archive.location)),
        ))),
        (Some(_), false) => {
            info!(
                "--archive-binlogs-to: the primary (ordinal 0) archives the binary logs; a replica does not"
            );
            None
        }
        (None, _) => None,
    };
    let server = Arc::new(Server {
        slots: Arc::new(Semaphore::new(config.max_backups)),
        config,
        tool,
        readiness,
        metrics,
    });
    serve(listener, server, serving).await;
    match tokio::time::timeout(http::CONNECTION_TIMEOUT, http).await {
        Ok(Ok(Err(e))) => warn!(error = %report(&e), "the HTTP endpoint failed"),
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

/// The sidecar holds sockets for clients, probes and mysqld; a container's soft limit of
/// 1024 descriptors is far below what the kernel allows it, so take the hard limit.
fn raise_descriptor_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => info!(from = soft, to = hard, "raised the open-files limit"),
            Err(e) => warn!(soft, hard, error = %e, "could not raise the open-files limit"),
        },
        Ok(_) => {}
        Err(e) => warn!(error = %e, "could not read the open-files limit"),
    }
}

/// Identifies the local server, refuses a backup tool that cannot handle it, then makes the
/// pod ready: at once on the primary, once replication is configured on a replica. Returns
/// an error only for what no retry can fix, after stopping `serving`.
async fn set_up(
    config: Config,
    tool: BackupTool,
    judge: Judge,
    ready: watch::Sender<Readiness>,
    channels: monitor::Channels,
    metrics: Arc<Metrics>,
    serving: CancellationToken,
) -> Result<()> {
    // Broken coordinates are known without mysqld and will not mend: say so at once.
    let coordinates = if config.pod.is_primary() {
        Ok(None)
    } else {
        BackupMetadata::read(&config.data_dir)
            .and_then(|meta| meta.coordinates())
            .map_err(|e| report(&e))
    };
    if let Err(reason) = &coordinates {
        error!(%reason, "replication cannot be configured; backups will be refused");
        let _ = ready.send(Readiness::NotReady(reason.clone()));
    }
    let server = match mysql::identify_with_retry(&config.mysql, &serving).await {
        Ok(server) => server,
        Err(e) if serving.is_cancelled() => {
            info!(error = %report(&e), "stopped before mysqld answered");
            return Ok(());
        }
        Err(e) => {
            // The server answered, and what it said makes no sense: no retry will change it.
            error!(error = %report(&e), "cannot identify the local mysqld; backups will be refused");
            let _ = ready.send(Readiness::NotReady(format!(
                "cannot identify the local mysqld: {}",
                report(&e)
            )));
            return Ok(());
        }
    };
    if let Err(e) = backup_tool::check_compatible(&tool, &server.version) {
        error!(error = %report(&e), "this pod cannot serve backups");
        serving.cancel();
        return Err(e);
    }
    info!(server = %server.version, tool = %tool, "the backup tool matches the server");
    tokio::spawn(
        monitor::run(
            config.mysql.clone(),
            server.version,
            judge,
            Arc::clone(&metrics),
            channels,
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
    let _ = ready.send(Readiness::NotReady("replication is being set up".into()));
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
        Err(e) => info!(error = %report(&e), "replication setup interrupted"),
    }
    Ok(())
}

/// The clients still in the opening exchange, oldest first, each with the token that drops it.
type Pending = Arc<Mutex<VecDeque<(u64, CancellationToken)>>>;

/// Accepts clients until `cancel`, then gives in-flight backups [`SHUTDOWN_GRACE`] to end.
pub async fn serve(listener: TcpListener, server: Arc<Server>, cancel: CancellationToken) {
    let tracker = TaskTracker::new();
    let pending: Pending = Arc::default();
    let mut next_id = 0u64;
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((socket, peer)) => {
                let id = next_id;
                next_id = next_id.wrapping_add(1);
                let dropped = cancel.child_token();
                {
                    let mut pending = pending.lock().unwrap_or_else(PoisonError::into_inner);
                    while pending.len() >= MAX_PENDING_CLIENTS {
                        if let Some((_, oldest)) = pending.pop_front() {
                            oldest.cancel();
                            server.metrics.refused(metrics::Refusal::Overload);
                        }
                    }
                    pending.push_back((id, dropped.clone()));
                }
                let (server, cancel, pending) =
                    (Arc::clone(&server), cancel.clone(), Arc::clone(&pending));
                tracker.spawn(
                    async move {
                        handle(socket, &server, &cancel, &dropped, || {
                            pending
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .retain(|(other, _)| *other != id);
                        })
                        .await;
                    }
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
    let created = retry::until_ok("creating accounts", cancel, || async {
        let mut conn = mysql::connect(&config.mysql).await?;
        let mut result = Ok(());
        for (account, role) in wanted {
            if account.user != config.mysql.user {
                result = accounts::ensure(
                    &mut conn,
                    &server.version,
                    server.no_backslash_escapes,
                    account,
                    role,
                )
                .await
                .map_err(|f| f.context(format!("on {}", config.mysql)));
                if result.is_err() {
                    break;
                }
            }
        }
        let _ = conn.disconnect().await;
        result
    })
    .await;
    if let Err(e) = created
        && !cancel.is_cancelled()
    {
        error!(error = %report(&e), "the accounts could not be created, and retrying cannot fix it");
    }
}

/// One client: the opening exchange (its end, `admitted`, removes the client from the
/// pending list), then the backup.
async fn handle(
    socket: TcpStream,
    server: &Server,
    cancel: &CancellationToken,
    dropped: &CancellationToken,
    admitted: impl FnOnce(),
) {
    if let Err(e) = sockets::tune(&socket) {
        warn!(error = %report(&e), "cannot tune the client's socket");
    }
    // With TLS, nothing of the agent's protocol is said before the client's certificate
    // checks out: a raw client gets a TLS alert, not a byte of backup.
    let mut socket: ClientStream = match &server.config.tls {
        None => Either::Left(socket),
        Some(tls) => {
            let accept = tokio::time::timeout(
                AUTH_TIMEOUT,
                TlsAcceptor::from(tls.server_config()).accept(socket),
            );
            let accepted = tokio::select! {
                accepted = accept => accepted,
                () = dropped.cancelled() => {
                    info!("dropped a client still in the TLS handshake to make room");
                    return;
                }
            };
            match accepted {
                Ok(Ok(stream)) => Either::Right(Box::new(stream)),
                Ok(Err(e)) => {
                    warn!(error = %e, "refused a client whose TLS handshake failed (no certificate of our CA, or not TLS at all)");
                    server.metrics.refused(metrics::Refusal::Denied);
                    admitted();
                    return;
                }
                Err(_) => {
                    warn!(
                        "refused a client that did not finish its TLS handshake in {AUTH_TIMEOUT:?}"
                    );
                    server.metrics.refused(metrics::Refusal::Denied);
                    admitted();
                    return;
                }
            }
        }
    };
    let admit = || {
        if let Readiness::NotReady(reason) = &*server.readiness.borrow() {
            return Err(Message::NotReady(reason.clone()));
        }
        Arc::clone(&server.slots).try_acquire_owned().map_err(|_| {
            Message::Busy(format!(
                "already serving {} backup(s); retry later",
                server.config.max_backups
            ))
        })
    };
    let opened = tokio::select! {
        opened = handshake::server_open(&mut socket, server.config.secret.as_ref(), admit) => opened,
        () = dropped.cancelled() => {
            info!("dropped a client still in the opening exchange to make room");
            return;
        }
    };
    admitted();
    let _permit = match opened {
        Ok(permit) => permit,
        Err(Rejection::Denied(e)) => {
            warn!(reason = %report(&e), "refused a client that did not prove it knows the backup secret");
            server.metrics.refused(metrics::Refusal::Denied);
            return;
        }
        Err(Rejection::Refused(refusal)) => {
            info!(%refusal, "refusing a backup client");
            server.metrics.refused(match refusal {
                Message::Busy(_) => metrics::Refusal::Busy,
                _ => metrics::Refusal::NotReady,
            });
            return;
        }
    };
    let started = Instant::now();
    info!("serving a backup");
    let metrics = &server.metrics;
    metrics.backups_in_progress.inc();
    let result = match stream_backup(&mut socket, server, cancel).await {
        Ok(Streamed::Finished(status)) => {
            let chunks = status.to_chunks();
            let sent = tokio::time::timeout(LINE_WRITE_TIMEOUT, async {
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
        Ok(Streamed::Stalled(stall)) => {
            warn!(
                stalled_for = ?stall,
                "the client accepted no byte for --stall-timeout; dropped it and killed its backup tool"
            );
            BackupResult::Stalled
        }
        Err(e) => {
            warn!(error = %report(&e), "backup aborted");
            BackupResult::Aborted
        }
    };
    metrics.backups_in_progress.dec();
    metrics.backup_ended(result, started.elapsed());
}

/// A client's connection: plain TCP (the tool writes into it itself), or a TLS session
/// (the agent relays the tool's output into it).
type ClientStream = Either<TcpStream, Box<TlsStream<TcpStream>>>;

/// How a backup's stream ended, short of an error.
enum Streamed {
    /// The tool exited; the status to append.
    Finished(StreamStatus),
    /// The client stopped reading for this long; the tool was killed.
    Stalled(Duration),
}

/// Sends the stream info, then runs the backup tool with its stdout on the client's socket,
/// with progress lines. An error when the client is gone or the agent is shutting down (the
/// tool is then killed with its process group).
async fn stream_backup(
    socket: &mut ClientStream,
    server: &Server,
    cancel: &CancellationToken,
) -> Result<Streamed> {
    let config = &server.config;
    // What to expect, first: the data dir's size without its logs, for the receiver's
    // progress lines.
    let data_dir = config.data_dir.clone();
    let estimated_bytes =
        tokio::task::spawn_blocking(move || fsutil::backup_size_estimate(&data_dir))
            .await
            .unwrap_or_default();
    let info = StreamInfo { estimated_bytes }.to_chunks();
    tokio::time::timeout(config.stall_timeout, socket.write_all(&info))
        .await
        .map_err(|_| anyhow::anyhow!("the client took nothing for {:?}", config.stall_timeout))?
        .context("sending to the client")?;
    let sent = Arc::new(AtomicU64::new(info.len() as u64));
    server.metrics.stream_bytes.inc_by(info.len() as u64);
    // Aborted when dropped: a backup cut short by a panic or a drop leaves no reporter.
    let _reporter = AbortOnDropHandle::new(tokio::spawn(progress::report(
        "streaming",
        config.progress_interval,
        std::time::Instant::now(),
        {
            let sent = Arc::clone(&sent);
            move || Sample {
                bytes: sent.load(Ordering::Relaxed),
                files: None,
                estimated_bytes: Some(estimated_bytes),
            }
        },
    )));
    match socket {
        Either::Left(tcp) => stream_tool_output(tcp, server, cancel, &sent).await,
        Either::Right(tls) => relay_tool_output(tls, server, cancel, &sent).await,
    }
}

/// Bytes the relay moves at a time.
const RELAY_BUFFER: usize = 256 * 1024;
/// The tool's stdout pipe under TLS (Linux's default is 64 KiB; unprivileged processes may
/// go up to /proc/sys/fs/pipe-max-size, 1 MiB by default).
const RELAY_PIPE_SIZE: i32 = 1 << 20;

/// The backup tool's output relayed into a TLS session, which the tool cannot write into
/// itself: read from its stdout pipe, encrypted and sent. A client that takes nothing for
/// `--stall-timeout` (one write cannot complete) is dropped, its tool killed.
async fn relay_tool_output<S: AsyncWrite + Unpin>(
    stream: &mut S,
    server: &Server,
    cancel: &CancellationToken,
    sent: &Arc<AtomicU64>,
) -> Result<Streamed> {
    let config = &server.config;
    let mut child = spawn_tool(server, std::process::Stdio::piped())?;
    let mut stdout = child
        .take_stdout()
        .context("the backup tool's stdout was not a pipe")?;
    // A larger pipe: fewer, larger reads and TLS writes per gigabyte. Best effort (the
    // system's pipe-max-size may be lower).
    if let Err(e) = nix::fcntl::fcntl(&stdout, nix::fcntl::FcntlArg::F_SETPIPE_SZ(RELAY_PIPE_SIZE))
    {
        debug!(error = %e, "could not enlarge the backup tool's pipe");
    }
    let relayed = relay(&mut stdout, stream, config.stall_timeout, cancel, |n| {
        count_sent(server, sent, n)
    })
    .await;
    drop(stdout);
    match relayed {
        Ok(Relayed::Done) => {}
        Ok(Relayed::Stalled(stalled)) => {
            child.kill().await?;
            return Ok(Streamed::Stalled(stalled));
        }
        Err(e) => {
            let finished = child.kill().await?;
            return Err(e.context(format!("backup tool killed ({})", finished.describe())));
        }
    }
    // Its output is closed: the tool is finishing. A tool that hangs there is killed.
    let waited = tokio::select! {
        waited = tokio::time::timeout(TOOL_EXIT_TIMEOUT, child.wait()) => waited,
        () = cancel.cancelled() => {
            let finished = child.kill().await?;
            bail!("the agent is shutting down; backup tool killed ({})", finished.describe());
        }
    };
    let finished = match waited {
        Ok(finished) => finished?,
        Err(_) => {
            let finished = child.kill().await?;
            bail!(
                "the backup tool closed its output but did not exit within {TOOL_EXIT_TIMEOUT:?}; killed ({})",
                finished.describe()
            );
        }
    };
    Ok(finished_stream(server, &finished, sent))
}

/// Starts the backup tool with its stdout on `stdout`. Its options file (with the
/// password) lives only until the tool has started: never on a disk or a command line.
fn spawn_tool(server: &Server, stdout: std::process::Stdio) -> Result<Supervised> {
    let config = &server.config;
    let options = ClientOptions::new(&config.backup_account.user, &config.backup_account.password)?;
    let mut command = server.tool.backup_command(
        &config.data_dir,
        &config.mysql,
        &options.path(),
        config.backup_threads,
    );
    command.stdout(stdout);
    // Spawning consumes the command and with it the agent's copy of the tool's stdout.
    Supervised::spawn(command, "backup")
}

/// `n` more bytes of the tool's stream reached the client.
fn count_sent(server: &Server, sent: &AtomicU64, n: u64) {
    server.metrics.stream_bytes.inc_by(n);
    sent.fetch_add(n, Ordering::Relaxed);
}

/// The end-of-stream status for a tool that exited after sending `sent` bytes.
fn finished_stream(server: &Server, finished: &Finished, sent: &AtomicU64) -> Streamed {
    let failure = (!backup_tool::completed_ok(finished))
        .then(|| format!("{} {}", server.tool.path.display(), finished.describe()));
    Streamed::Finished(StreamStatus {
        failure,
        stream_bytes: sent.load(Ordering::Relaxed),
        tool: server.tool.to_string(),
    })
}

/// How long the backup tool may take to exit once it closed its output.
const TOOL_EXIT_TIMEOUT: Duration = Duration::from_secs(60);

/// How a relay ended, short of an error.
#[derive(Debug, PartialEq, Eq)]
pub enum Relayed {
    /// The source reached its end and everything was sent.
    Done,
    /// One write could not complete for this long: the reader stopped.
    Stalled(Duration),
}

/// Copies `from` into `to` until `from` ends, calling `counted` with each piece sent. A
/// piece that `to` does not take within `stall` ends it (the source may pause as long as it
/// likes: that is the tool's pace); `cancel` ends it with an error.
pub async fn relay<R, W>(
    from: &mut R,
    to: &mut W,
    stall: Duration,
    cancel: &CancellationToken,
    mut counted: impl FnMut(u64),
) -> Result<Relayed>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = vec![0u8; RELAY_BUFFER];
    loop {
        let n = tokio::select! {
            n = from.read(&mut buffer) => n.context("reading the backup tool's output")?,
            () = cancel.cancelled() => bail!("the agent is shutting down"),
        };
        if n == 0 {
            let flushed = tokio::time::timeout(stall, to.flush()).await;
            return match flushed {
                Ok(result) => result
                    .context("sending to the client")
                    .map(|()| Relayed::Done),
                Err(_) => Ok(Relayed::Stalled(stall)),
            };
        }
        let written = tokio::select! {
            written = tokio::time::timeout(stall, to.write_all(&buffer[..n])) => written,
            () = cancel.cancelled() => bail!("the agent is shutting down"),
        };
        match written {
            Ok(result) => result.context("sending to the client")?,
            Err(_) => return Ok(Relayed::Stalled(stall)),
        }
        counted(n as u64);
    }
}

/// The stall rule on the serving side, apart from any clock: the client must acknowledge
/// new bytes within `window` whenever bytes are waiting for it. Nothing waiting (the tool is
/// between files, or holding its locks) is the tool's pace, not the client's.
#[derive(Debug, Clone, Copy)]
pub struct SendWatch {
    window: Duration,
    acked: u64,
    since: Instant,
}

impl SendWatch {
    pub fn new(window: Duration, now: Instant, acked: u64) -> Self {
        Self {
            window,
            acked,
            since: now,
        }
    }

    /// `Some(how long)` once the client has stalled.
    pub fn observe(&mut self, now: Instant, state: &SendState) -> Option<Duration> {
        if state.acked != self.acked || state.drained {
            self.acked = state.acked;
            self.since = now;
            return None;
        }
        let stalled = now.saturating_duration_since(self.since);
        (stalled >= self.window).then_some(stalled)
    }
}

/// The backup tool, writing into the client socket itself (see [`handoff`]); see
/// [`stream_backup`].
async fn stream_tool_output(
    socket: &mut TcpStream,
    server: &Server,
    cancel: &CancellationToken,
    sent: &Arc<AtomicU64>,
) -> Result<Streamed> {
    let config = &server.config;
    // What the agent wrote so far is acknowledged before the tool starts, so the count
    // after it exits minus this one is the tool's output.
    let baseline = handoff::drained(socket.as_fd(), config.stall_timeout, cancel).await?;
    let blocking = handoff::BlockingGuard::new(socket.as_fd())?;
    let tool_end = socket
        .as_fd()
        .try_clone_to_owned()
        .context("duplicating the client socket")?;
    let mut child = spawn_tool(server, std::process::Stdio::from(tool_end))?;
    let mut counted = 0u64;
    let mut count = |acked: u64| {
        let delivered = acked.saturating_sub(baseline);
        count_sent(server, sent, delivered.saturating_sub(counted));
        counted = delivered;
    };
    let mut watch = SendWatch::new(config.stall_timeout, Instant::now(), baseline);
    let mut tick = tokio::time::interval(handoff::POLL_TICK);
    enum End {
        Exited(Finished),
        Stalled(Duration),
        Cancelled,
    }
    // One wait future for the whole run: dropping it half-way could lose the tool's stderr.
    let end = {
        let wait = child.wait();
        tokio::pin!(wait);
        loop {
            tokio::select! {
                finished = &mut wait => break End::Exited(finished?),
                _ = tick.tick() => {
                    if let Ok(state) = handoff::send_state(socket.as_fd()) {
                        count(state.acked);
                        if let Some(stalled) = watch.observe(Instant::now(), &state) {
                            break End::Stalled(stalled);
                        }
                    }
                }
                () = cancel.cancelled() => break End::Cancelled,
            }
        }
    };
    let finished = match end {
        End::Exited(finished) => finished,
        End::Stalled(stalled) => {
            child.kill().await?;
            return Ok(Streamed::Stalled(stalled));
        }
        End::Cancelled => {
            let finished = child.kill().await?;
            bail!(
                "the agent is shutting down; backup tool killed ({})",
                finished.describe()
            );
        }
    };
    let acked = handoff::drained(socket.as_fd(), config.stall_timeout, cancel)
        .await
        .with_context(|| format!("the backup tool {}", finished.describe()))?;
    count(acked);
    drop(blocking);
    Ok(finished_stream(server, &finished, sent))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(acked: u64, drained: bool) -> SendState {
        SendState {
            acked,
            drained,
            peer_gone: false,
        }
    }

    /// The TLS relay delivers every byte in order and counts them; a reader that stops
    /// taking bytes ends it after the stall window, on the paused clock.
    #[tokio::test(start_paused = true)]
    async fn the_relay_delivers_everything_and_gives_up_on_a_reader_that_stopped() {
        let data: Vec<u8> = (0..(3 << 20)).map(|i| (i % 251) as u8).collect();
        let cancel = CancellationToken::new();
        let window = Duration::from_secs(60);
        let (mut to, mut from_relay) = tokio::io::duplex(64 * 1024);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            from_relay.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut counted = 0;
        let relayed = relay(&mut &data[..], &mut to, window, &cancel, |n| counted += n)
            .await
            .unwrap();
        drop(to);
        assert_eq!(relayed, Relayed::Done);
        assert_eq!(counted, data.len() as u64);
        assert!(reader.await.unwrap() == data);

        let (mut to, _never_read) = tokio::io::duplex(1024);
        let started = Instant::now();
        let relayed = relay(&mut &data[..], &mut to, window, &cancel, |_| {})
            .await
            .unwrap();
        assert_eq!(relayed, Relayed::Stalled(window));
        assert!(started.elapsed() >= window && started.elapsed() < window * 2);

        cancel.cancel();
        let (mut to, _never_read) = tokio::io::duplex(1024);
        assert!(
            relay(&mut &data[..], &mut to, window, &cancel, |_| {})
                .await
                .is_err()
        );
    }

    /// A client that stops acknowledging while bytes wait is stalled after the window; one
    /// that keeps up, or that is merely waiting for the tool, is not.
    #[tokio::test(start_paused = true)]
    async fn the_serving_stall_rule() {
        let window = Duration::from_secs(60);
        let mut watch = SendWatch::new(window, Instant::now(), 100);
        for step in 1..=10u64 {
            tokio::time::advance(Duration::from_secs(30)).await;
            assert_eq!(
                watch.observe(Instant::now(), &state(100 + step, false)),
                None
            );
        }
        // The tool is busy (nothing queued): no stall however long.
        tokio::time::advance(Duration::from_secs(600)).await;
        assert_eq!(watch.observe(Instant::now(), &state(110, true)), None);
        // Bytes wait and the client takes none of them.
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(watch.observe(Instant::now(), &state(110, false)), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            watch.observe(Instant::now(), &state(110, false)),
            Some(window)
        );
    }
}
