//! Secrets read from files (Kubernetes Secret mounts): MySQL passwords and the backup secret.
//!
//! They never reach a log line, a command line or a disk: `Debug` prints `<redacted>`, and the
//! backup tool receives its password through an options file in memory (see
//! [`ClientOptions`]).

use std::fmt;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::stat::{Mode, fchmod};

/// A backup secret shorter than this is refused: it must resist guessing.
pub const MIN_SECRET_LEN: usize = 16;

/// Reads a secret file. Kubernetes Secrets made with `--from-file` usually end in a newline
/// the user never meant as part of the value; one is dropped.
fn read_value(path: &Path) -> Result<Vec<u8>> {
    let mut bytes = std::fs::read(path)
        .with_context(|| format!("reading the secret file {}", path.display()))?;
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    Ok(bytes)
}

/// A MySQL account's password (empty is allowed: the tutorial's root has none).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = read_value(path)?;
        let text = String::from_utf8(bytes)
            .with_context(|| format!("the password in {} is not UTF-8", path.display()))?;
        Ok(Self(text))
    }

    pub fn new(password: impl Into<String>) -> Self {
        Self(password.into())
    }

    /// The password itself, for a connection or an options file; never for a log.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// The secret shared by every pod of the StatefulSet that guards port 3307.
#[derive(Clone, PartialEq, Eq)]
pub struct BackupSecret(Vec<u8>);

impl BackupSecret {
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = read_value(path)?;
        Self::new(bytes).with_context(|| format!("the backup secret in {}", path.display()))
    }

    pub fn new(bytes: Vec<u8>) -> Result<Self> {
        ensure!(
            bytes.len() >= MIN_SECRET_LEN,
            "is {} bytes long; use at least {MIN_SECRET_LEN} random bytes (for example `openssl rand -hex 32`)",
            bytes.len()
        );
        Ok(Self(bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for BackupSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BackupSecret(<redacted>)")
    }
}

/// A value for a MySQL options file that reads back as exactly `value`: quoted with the quote
/// character it does not contain, backslashes and control characters escaped.
pub fn option_value(value: &str) -> String {
    let quote = if value.contains('"') && !value.contains('\'') {
        '\''
    } else {
        '"'
    };
    let mut out = String::with_capacity(value.len() + 2);
    out.push(quote);
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Client credentials for a child process in an options file that exists only in memory: a
/// memfd, which the child inherits and opens as `/dev/fd/N`. Nothing reaches a disk, and no
/// signal can leave the file behind: it goes when the last process holding it does.
///
/// The descriptor is inherited by every child spawned while this value lives (close-on-exec
/// is off, so no `pre_exec` hook is needed); the agent spawns only backup tools meanwhile,
/// which get the same credentials.
pub struct ClientOptions {
    fd: OwnedFd,
}

impl ClientOptions {
    /// Both tools read `[client]`; XtraBackup also `[xtrabackup]`, so both groups carry them.
    pub fn new(user: &str, password: &Password) -> Result<Self> {
        let fd = memfd_create(c"mysql-agent-client-options", MFdFlags::empty())
            .context("creating the backup tool's in-memory options file")?;
        // MySQL's option-file reader ignores a world-writable file; a memfd starts at 0777.
        fchmod(&fd, Mode::S_IRUSR | Mode::S_IWUSR)
            .context("restricting the backup tool's options file")?;
        let (user, password) = (option_value(user), option_value(password.expose()));
        let body = format!(
            "[client]\nuser={user}\npassword={password}\n[xtrabackup]\nuser={user}\npassword={password}\n"
        );
        let mut file = std::fs::File::from(fd);
        file.write_all(body.as_bytes())
            .context("writing the backup tool's options file")?;
        Ok(Self { fd: file.into() })
    }

    /// The path a child process opens it by.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/dev/fd/{}", self.fd.as_raw_fd()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn files_lose_one_trailing_newline_only() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        assert_eq!(
            Password::from_file(&write("a", b"pw\n")).unwrap().expose(),
            "pw"
        );
        assert_eq!(
            Password::from_file(&write("b", b"pw\r\n"))
                .unwrap()
                .expose(),
            "pw"
        );
        assert_eq!(
            Password::from_file(&write("c", b" pw \n\n"))
                .unwrap()
                .expose(),
            " pw \n"
        );
        assert_eq!(Password::from_file(&write("d", b"")).unwrap().expose(), "");
        let missing = Password::from_file(&dir.path().join("missing")).unwrap_err();
        assert!(format!("{missing:#}").contains("missing"));
    }

    #[test]
    fn backup_secrets_must_be_long_enough() {
        assert!(BackupSecret::new(b"short".to_vec()).is_err());
        assert!(BackupSecret::new(vec![7; MIN_SECRET_LEN]).is_ok());
    }

    #[test]
    fn nothing_secret_in_debug_output() {
        let password = Password::new("hunter2hunter2");
        let secret = BackupSecret::new(b"0123456789abcdef-secret".to_vec()).unwrap();
        let shown = format!("{password:?} {secret:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("secret\""),
            "{shown}"
        );
    }

    #[test]
    fn option_values_survive_any_character() {
        assert_eq!(option_value("plain"), "\"plain\"");
        assert_eq!(option_value("a#b c"), "\"a#b c\"");
        assert_eq!(option_value("say \"hi\""), "'say \"hi\"'");
        assert_eq!(option_value("it's"), "\"it's\"");
        // Both quotes: the double quote is escaped (verified against mariadb-backup).
        assert_eq!(option_value("p\"w q'x\\y#z"), "\"p\\\"w q'x\\\\y#z\"");
        assert_eq!(option_value("a\nb\tc"), "\"a\\nb\\tc\"");
    }

    #[test]
    fn options_live_in_memory_only_and_read_back() {
        let options = ClientOptions::new("backup", &Password::new("s3cret")).unwrap();
        let path = options.path();
        assert!(path.starts_with("/dev/fd"), "{}", path.display());
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // Opened by path twice, as the tools do: each open reads from the start.
        for _ in 0..2 {
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                text.starts_with("[client]\nuser=\"backup\"\npassword=\"s3cret\"\n"),
                "{text}"
            );
        }
        let target = std::fs::read_link(&path).unwrap();
        assert!(
            target.to_string_lossy().starts_with("/memfd:"),
            "{}",
            target.display()
        );
    }
}
