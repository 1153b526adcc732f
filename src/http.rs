//! serve-backup's HTTP endpoint (axum on hyper), on its own port so that probes and scrapes
//! never touch the backup port:
//!
//! - `/healthz`: the agent answers (no database call): the sidecar's liveness;
//! - `/readyz`: the pod should receive reads (see [`monitor::readiness`]); the body names only
//!   the class of a failure, the details go to the log: the mysql container's readiness;
//! - `/metrics`: Prometheus text (see [`crate::metrics`]);
//! - `/status`: JSON, how far this pod has applied the primary's history (see
//!   [`crate::survey`]): what a primary that lost its volume asks its replicas.
//!
//! Anyone who can reach the port can open connections, so none may hold a resource for long:
//! a client has [`HEADER_READ_TIMEOUT`] to send its request and [`CONNECTION_TIMEOUT`] in all,
//! one request per connection, and past [`MAX_CONNECTIONS`] the oldest connection is closed
//! for the newest. Idle or slow clients cannot use up the sidecar's descriptors, and a probe
//! always gets through.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::monitor::{Health, Judge, Readiness, Refresh};
use crate::survey::{self, PeerStatus, ReplicationState};

/// Connections served at once; the oldest is closed to make room for a new one.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send its request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection may live, request and response included.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `/status` waits for its check (the monitor's own bound, plus its queue).
const STATUS_TIMEOUT: Duration = Duration::from_secs(8);
/// Pause after a failed accept (out of descriptors, say) before trying again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The bounds above, as values, so tests can shrink them.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub connection_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: MAX_CONNECTIONS,
            header_read_timeout: HEADER_READ_TIMEOUT,
            connection_timeout: CONNECTION_TIMEOUT,
        }
    }
}

/// What the handlers read.
pub struct HttpState {
    /// This pod's name, for `/status`.
    pub pod: String,
    /// Asks the monitor for a check now, for `/status`.
    pub refresh: mpsc::Sender<Refresh>,
    pub metrics: Arc<Metrics>,
    pub health: watch::Receiver<Option<Health>>,
    pub judge: Judge,
}

/// OpenMetrics is what prometheus-client writes, and what Prometheus negotiates first.
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(survey::STATUS_PATH, get(status))
        .with_state(state)
}

/// Serves `app` on `listener` until `cancel`, within `limits`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    cancel: CancellationToken,
) -> Result<()> {
    let address = listener.local_addr().context("reading the HTTP address")?;
    info!(%address, "serving /healthz, /readyz and /metrics");
    let live: Arc<Mutex<VecDeque<(u64, CancellationToken)>>> = Arc::default();
    let tracker = TaskTracker::new();
    let mut next_id = 0u64;
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "accepting an HTTP connection failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let id = next_id;
        next_id = next_id.wrapping_add(1);
        let token = cancel.child_token();
        {
            let mut live = live.lock().unwrap_or_else(PoisonError::into_inner);
            while live.len() >= limits.max_connections.max(1) {
                if let Some((_, oldest)) = live.pop_front() {
                    oldest.cancel();
                }
            }
            live.push_back((id, token.clone()));
        }
        let (app, live) = (app.clone(), Arc::clone(&live));
        tracker.spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
            tokio::select! {
                served = tokio::time::timeout(limits.connection_timeout, connection) => {
                    match served {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => debug!(%peer, error = %e, "HTTP connection failed"),
                        Err(_) => debug!(%peer, "HTTP connection took too long; closed"),
                    }
                }
                () = token.cancelled() => debug!(%peer, "HTTP connection closed to make room"),
            }
            live.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|(other, _)| *other != id);
        });
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(limits.connection_timeout, tracker.wait())
        .await
        .is_err()
    {
        warn!("HTTP connections still open after shutdown");
    }
    Ok(())
}

/// The replication state as a check run for this request shows it (not the last snapshot:
/// the asker decides where to recover a primary from); 503 while set-up has not finished or
/// mysqld does not answer, so "not known" is never mistaken for "nothing applied".
async fn status(State(state): State<Arc<HttpState>>) -> axum::response::Response {
    let unavailable =
        |why: &str| (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response();
    if let Readiness::NotReady(_) = &*state.judge.setup.borrow() {
        return unavailable("setting up");
    }
    let (reply, answer) = oneshot::channel();
    if state.refresh.try_send(reply).is_err() {
        return unavailable("busy");
    }
    let health = match tokio::time::timeout(STATUS_TIMEOUT, answer).await {
        Ok(Ok(health)) => health,
        _ => return unavailable("the local mysqld was not checked in time"),
    };
    if health.mysqld_error.is_some() {
        return unavailable("the local mysqld does not answer");
    }
    let status = PeerStatus {
        pod: state.pod.clone(),
        replication: health.replica.map(|r| ReplicationState {
            source_host: r.source_host,
            io_running: r.io_running,
            sql_running: r.sql_running,
            executed: r.executed,
            source_log_file: r.source_log_file,
        }),
    };
    axum::Json(status).into_response()
}

async fn readyz(State(state): State<Arc<HttpState>>) -> (StatusCode, String) {
    match state.judge.verdict(state.health.borrow().as_ref()) {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(not_ready) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", not_ready.class.as_str()),
        ),
    }
}

async fn metrics(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        state.metrics.encode(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::Readiness;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn start(limits: Limits) -> (std::net::SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_setup_tx, setup) = watch::channel(Readiness::NotReady("waiting".into()));
        let (_health_tx, health) = watch::channel(None);
        // The senders may go: the receivers keep the last values.
        let state = Arc::new(HttpState {
            pod: "mysql-1".into(),
            refresh: mpsc::channel(1).0,
            metrics: Arc::new(Metrics::new()),
            health,
            judge: Judge {
                setup,
                replica: true,
                max_lag: Duration::from_secs(60),
            },
        });
        let cancel = CancellationToken::new();
        tokio::spawn(serve(listener, router(state), limits, cancel.clone()));
        (addr, cancel)
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: agent\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn probes_answer_and_readyz_tells_only_the_class() {
        let (addr, cancel) = start(Limits::default()).await;
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        let ready = get(addr, "/readyz").await;
        assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
        assert!(ready.ends_with("not ready: setting-up\n"), "{ready}");
        assert!(!ready.contains("waiting"), "details leak: {ready}");
        cancel.cancel();
    }

    /// Idle connections past the cap close the oldest: a probe still gets its answer.
    #[tokio::test]
    async fn idle_connections_cannot_crowd_out_a_probe() {
        let limits = Limits {
            max_connections: 8,
            ..Limits::default()
        };
        let (addr, cancel) = start(limits).await;
        let mut idle = Vec::new();
        for _ in 0..100 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        let answer = tokio::time::timeout(Duration::from_secs(5), get(addr, "/healthz"))
            .await
            .expect("the probe waited");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        // Most of the idle ones were closed by the server.
        let mut closed = 0;
        for mut stream in idle {
            let mut byte = [0u8; 1];
            if let Ok(Ok(0)) =
                tokio::time::timeout(Duration::from_millis(50), stream.read(&mut byte)).await
            {
                closed += 1;
            }
        }
        assert!(closed >= 90, "only {closed} idle connections were closed");
        cancel.cancel();
    }

    /// A client that sends nothing is closed after the header timeout (paused clock).
    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_closed_after_the_header_timeout() {
        let (addr, cancel) = start(Limits::default()).await;
        let started = tokio::time::Instant::now();
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
        let waited = started.elapsed();
        assert!(
            waited >= HEADER_READ_TIMEOUT && waited <= CONNECTION_TIMEOUT,
            "{waited:?}"
        );
        cancel.cancel();
    }
}
