//! How failures reach people: one line per error chain without repetition, and the exit
//! codes the README documents.
//!
//! Errors are anyhow chains with context naming the operation, the path or the host. Two
//! markers change the exit code: [`Usage`] (the command line, the environment or the files
//! they name are wrong, and nothing was done) and [`Interrupted`] (SIGTERM or SIGINT ended a
//! mode that had not finished).

use std::fmt;
use std::process::ExitCode;

/// The configuration is wrong: a flag, an environment variable, or a file or directory one
/// of them names. Nothing was done. Exit code 2, as for clap's own usage errors.
#[derive(Debug, Clone, Copy)]
pub struct Usage;

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid configuration")
    }
}

impl std::error::Error for Usage {}

/// A shutdown signal stopped a mode before it finished; what it had started was undone or
/// is left for the next run to redo. Exit code 143 (128 + SIGTERM), as for a process the
/// signal killed.
#[derive(Debug, Clone, Copy)]
pub struct Interrupted;

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("interrupted by a shutdown signal")
    }
}

impl std::error::Error for Interrupted {}

pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_INTERRUPTED: u8 = 143;

/// The exit code for a mode that ended with `error`.
pub fn exit_code(error: &anyhow::Error) -> ExitCode {
    if error.downcast_ref::<Usage>().is_some() {
        ExitCode::from(EXIT_USAGE)
    } else if error.downcast_ref::<Interrupted>().is_some() {
        ExitCode::from(EXIT_INTERRUPTED)
    } else {
        ExitCode::from(EXIT_FAILURE)
    }
}

/// Marks a configuration error (see [`Usage`]).
pub fn usage(error: anyhow::Error) -> anyhow::Error {
    error.context(Usage)
}

/// The chain as one line, outermost first, each cause once: libraries often repeat their
/// source in their own message ("Input/output error: Connection refused", then "Connection
/// refused"), and anyhow's `{:#}` would print both.
pub fn report(error: &anyhow::Error) -> String {
    let messages: Vec<String> = error.chain().map(ToString::to_string).collect();
    let mut parts: Vec<String> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let mut own = message.as_str();
        if let Some(next) = messages.get(i + 1)
            && !next.is_empty()
            && let Some(prefix) = own.strip_suffix(next.as_str())
        {
            own = prefix.trim_end_matches([':', ' ']);
        }
        if own.is_empty() || parts.last().is_some_and(|last| last == own) {
            continue;
        }
        parts.push(own.to_owned());
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[derive(Debug)]
    struct Wrapping(std::io::Error);

    impl fmt::Display for Wrapping {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "Input/output error: {}", self.0)
        }
    }

    impl std::error::Error for Wrapping {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn chains_read_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let inner = Wrapping(io);
        let e = anyhow::Error::new(Wrapping(std::io::Error::other(inner)))
            .context("connecting to mysqld as root@127.0.0.1:3306");
        assert_eq!(
            report(&e),
            "connecting to mysqld as root@127.0.0.1:3306: Input/output error: Connection refused"
        );
        let plain = anyhow::anyhow!("disk full").context("writing ibdata1");
        assert_eq!(report(&plain), "writing ibdata1: disk full");
    }

    #[test]
    fn markers_choose_the_exit_code() {
        let failed = anyhow::anyhow!("boom");
        assert_eq!(exit_code(&failed), ExitCode::from(EXIT_FAILURE));
        let bad = usage(anyhow::anyhow!("--donor: no host"));
        assert_eq!(exit_code(&bad), ExitCode::from(EXIT_USAGE));
        assert!(report(&bad).starts_with("invalid configuration: --donor"));
        let stopped = Err::<(), _>(anyhow::anyhow!("cancelled"))
            .context(Interrupted)
            .context("cloning")
            .unwrap_err();
        assert_eq!(exit_code(&stopped), ExitCode::from(EXIT_INTERRUPTED));
    }
}
