//! SIGTERM and SIGINT become a cancellation every long-running task watches.
//!
//! The agent is PID 1 in its container, and the kernel gives PID 1 no default action for
//! SIGTERM: without this handler the kubelet would wait out the grace period and SIGKILL.
//! Outside a container the default action is death, so a SIGTERM that arrives before the
//! handler exists must wait for it: [`hold_signals`] runs first thing in `main`.

use anyhow::{Context, Result};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::info;

fn shutdown_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set
}

/// Blocks SIGTERM and SIGINT on the calling thread (and the threads it starts later), so
/// they stay pending until [`on_signals`] is ready for them.
pub fn hold_signals() -> Result<()> {
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&shutdown_signals()), None)
        .context("blocking shutdown signals")
}

/// Returns a token cancelled at the first SIGTERM (Kubernetes stopping the container) or
/// SIGINT (Ctrl-C while developing), then unblocks those signals on the calling thread,
/// which must be the one that called [`hold_signals`].
pub fn on_signals() -> Result<CancellationToken> {
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        info!(signal = name, "shutting down");
        cancel.cancel();
    });
    pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&shutdown_signals()), None)
        .context("unblocking shutdown signals")?;
    Ok(token)
}
