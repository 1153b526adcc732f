//! serve-backup's HTTP endpoint (axum), on its own port so that probes and scrapes never
//! touch the backup port:
//!
//! - `/healthz`: the agent answers (no database call): the sidecar's liveness;
//! - `/readyz`: the pod should receive reads (see [`monitor::readiness`]), the reason in the
//!   body: the mysql container's readiness;
//! - `/metrics`: Prometheus text (see [`crate::metrics`]).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::metrics::Metrics;
use crate::monitor::{self, Health};
use crate::serve::Readiness;

/// What the handlers read.
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    pub setup: watch::Receiver<Readiness>,
    pub health: watch::Receiver<Option<Health>>,
    pub replica: bool,
    pub max_lag: Duration,
}

/// OpenMetrics is what prometheus-client writes, and what Prometheus negotiates first.
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub async fn serve(
    listener: TcpListener,
    state: Arc<HttpState>,
    cancel: CancellationToken,
) -> Result<()> {
    let address = listener.local_addr().context("reading the HTTP address")?;
    info!(%address, "serving /healthz, /readyz and /metrics");
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
        .with_context(|| format!("serving HTTP on {address}"))
}

async fn readyz(State(state): State<Arc<HttpState>>) -> (StatusCode, String) {
    let verdict = monitor::readiness(
        &state.setup.borrow(),
        state.health.borrow().as_ref(),
        state.replica,
        state.max_lag,
    );
    match verdict {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

async fn metrics(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        state.metrics.encode(),
    )
}
