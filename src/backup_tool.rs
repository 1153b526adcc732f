//! The physical backup tool (Percona XtraBackup or MariaDB's mariadb-backup): finding it,
//! identifying it, and the command lines the agent runs.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result, bail};
use tokio::process::Command;

use crate::mysql::MysqlTarget;
use crate::xbstream::Flavor;

/// Searched on PATH in this order when `--backup-tool` is not given.
pub const SEARCH_ORDER: [&str; 3] = ["xtrabackup", "mariadb-backup", "mariabackup"];
/// What both tools print on the last line of stderr when they succeed.
pub const COMPLETED_OK: &str = "completed OK!";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolKind {
    XtraBackup,
    MariaBackup,
}

#[derive(Debug, Clone)]
pub struct BackupTool {
    pub path: PathBuf,
    pub kind: ToolKind,
    /// The tool's own version, e.g. `8.0.35-30` or `10.11.19-MariaDB`.
    pub version: String,
}

impl BackupTool {
    /// Finds the tool (`explicit`, else the first of [`SEARCH_ORDER`] on PATH) and identifies
    /// it from its `--version` output.
    pub async fn locate(explicit: Option<&Path>) -> Result<Self> {
        let path = match explicit {
            Some(path) => path.to_owned(),
            None => SEARCH_ORDER
                .iter()
                .find_map(|name| which::which(name).ok())
                .with_context(|| {
                    format!(
                        "no backup tool on PATH (looked for {}); install one or pass --backup-tool",
                        SEARCH_ORDER.join(", ")
                    )
                })?,
        };
        let output = Command::new(&path)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("running {} --version", path.display()))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let (kind, version) =
            identify(&text).with_context(|| format!("identifying {}", path.display()))?;
        Ok(Self {
            path,
            kind,
            version,
        })
    }

    /// The stream dialect this tool writes.
    pub fn flavor(&self) -> Flavor {
        match self.kind {
            ToolKind::XtraBackup => Flavor::XtraBackup,
            ToolKind::MariaBackup => Flavor::MariaDb,
        }
    }

    /// `--backup` to stdout as xbstream, with the replica's coordinates when run on a replica.
    pub fn backup_command(&self, data_dir: &Path, server: &MysqlTarget) -> Command {
        let mut cmd = Command::new(&self.path);
        cmd.arg("--backup")
            .arg("--slave-info")
            .arg("--stream=xbstream")
            .arg(format!("--datadir={}", data_dir.display()))
            .arg(format!("--host={}", server.host))
            .arg(format!("--port={}", server.port))
            .arg(format!("--user={}", server.user));
        cmd
    }

    /// `--prepare` in place: applies the redo log so mysqld can start on the files.
    pub fn prepare_command(&self, target_dir: &Path) -> Command {
        let mut cmd = Command::new(&self.path);
        cmd.arg("--prepare")
            .arg(format!("--target-dir={}", target_dir.display()));
        cmd
    }
}

impl std::fmt::Display for BackupTool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.path.display(), self.version)
    }
}

/// Recognises `xtrabackup version 8.0.35-30 based on MySQL server 8.0.35 …` and
/// `mariadb-backup based on MariaDB server 10.11.19-MariaDB …` (or `mariabackup …`).
pub fn identify(version_output: &str) -> Result<(ToolKind, String)> {
    for line in version_output.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["xtrabackup", "version", version, ..] => {
                return Ok((ToolKind::XtraBackup, (*version).to_owned()));
            }
            [name, "based", "on", "MariaDB", "server", version, ..]
                if name.ends_with("mariadb-backup") || name.ends_with("mariabackup") =>
            {
                return Ok((ToolKind::MariaBackup, (*version).to_owned()));
            }
            _ => {}
        }
    }
    let first = version_output.lines().next().unwrap_or("").trim();
    bail!("not xtrabackup or mariadb-backup: --version printed {first:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifies_both_tools() {
        assert_eq!(
            identify("mariadb-backup based on MariaDB server 10.11.19-MariaDB debian-linux-gnu (x86_64)\n").unwrap(),
            (ToolKind::MariaBackup, "10.11.19-MariaDB".into())
        );
        assert_eq!(
            identify("/usr/bin/mariabackup based on MariaDB server 10.4.32-MariaDB Linux (x86_64)")
                .unwrap()
                .0,
            ToolKind::MariaBackup
        );
        let pxb8 = "xtrabackup: recognized server arguments: --datadir=/var/lib/mysql\nxtrabackup version 8.0.35-30 based on MySQL server 8.0.35 Linux (x86_64) (revision id: 6beb4b49)\n";
        assert_eq!(
            identify(pxb8).unwrap(),
            (ToolKind::XtraBackup, "8.0.35-30".into())
        );
        assert_eq!(
            identify("xtrabackup version 2.4.29 based on MySQL server 5.7.44 Linux (x86_64)")
                .unwrap()
                .1,
            "2.4.29"
        );
        let err = identify("GNU bash, version 5.2.15\n").unwrap_err();
        assert!(err.to_string().contains("GNU bash"));
    }
}
