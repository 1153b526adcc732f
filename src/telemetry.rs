//! Where the agent reports: log lines on stderr (text or JSON, the level from RUST_LOG), and a
//! fatal error in the container's termination log, which `kubectl describe pod` shows.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use tracing_subscriber::EnvFilter;

/// How log lines are written: `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Kubernetes mounts this file in every container and reads it when the container dies.
pub const DEFAULT_TERMINATION_LOG: &str = "/dev/termination-log";
/// Kubernetes keeps at most this much of a termination message.
const TERMINATION_MESSAGE_LIMIT: usize = 4096;

pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        // kubectl logs is not a terminal; colour codes would only garble it.
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
            .init(),
        LogFormat::Json => builder.json().with_target(false).init(),
    }
}

/// Writes `message` where Kubernetes reads it: `path` when given, else the default file when
/// it exists (outside a container it does not, and nothing is written).
pub fn write_termination_message(path: Option<&Path>, message: &str) {
    let path = match path {
        Some(path) => path.to_owned(),
        None if Path::new(DEFAULT_TERMINATION_LOG).exists() => {
            PathBuf::from(DEFAULT_TERMINATION_LOG)
        }
        None => return,
    };
    let mut end = message.len().min(TERMINATION_MESSAGE_LIMIT);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    if let Err(e) = std::fs::write(&path, &message[..end]) {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the termination message");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn termination_messages_are_cut_to_what_kubernetes_keeps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("termination-log");
        let long = "é".repeat(3000);
        write_termination_message(Some(&path), &long);
        let written = std::fs::read_to_string(&path).unwrap();
        assert!(
            written.len() <= TERMINATION_MESSAGE_LIMIT
                && written.len() >= TERMINATION_MESSAGE_LIMIT - 1
        );
        write_termination_message(Some(&path), "the pod name is empty");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "the pod name is empty"
        );
    }
}
