//! The physical backup tool (Percona XtraBackup or MariaDB's mariadb-backup): finding it,
//! identifying it, and the command lines the agent runs.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use tokio::process::Command;

use crate::mysql::MysqlTarget;
use crate::process::Finished;
use crate::server_version::{ServerFlavor, ServerVersion, version_triple};
use crate::xbstream::Flavor;

/// Searched on PATH in this order when `--backup-tool` is not given.
pub const SEARCH_ORDER: [&str; 3] = ["xtrabackup", "mariadb-backup", "mariabackup"];
/// How long `<tool> --version` may take.
const VERSION_TIMEOUT: Duration = Duration::from_secs(30);
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
        let output = tokio::time::timeout(
            VERSION_TIMEOUT,
            Command::new(&path)
                .arg("--version")
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .map_err(|_| anyhow!("no answer within {VERSION_TIMEOUT:?}"))
        .and_then(|r| r.map_err(anyhow::Error::from))
        .with_context(|| format!("running {} --version (see --backup-tool)", path.display()))?;
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
    /// The credentials come from `options` (an in-memory file, see
    /// [`crate::secrets::ClientOptions`]), which the tools require as the first argument.
    /// `threads` copy files in parallel, so reading the data dir overlaps sending the stream.
    pub fn backup_command(
        &self,
        data_dir: &Path,
        server: &MysqlTarget,
        options: &Path,
        threads: u32,
    ) -> Command {
        let mut cmd = Command::new(&self.path);
        cmd.arg(format!("--defaults-extra-file={}", options.display()))
            .arg("--backup")
            .arg("--slave-info")
            .arg("--stream=xbstream")
            .arg(format!("--datadir={}", data_dir.display()))
            .arg(format!("--host={}", server.host))
            .arg(format!("--port={}", server.port))
            .arg(format!("--parallel={threads}"));
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

/// The backup tools' success contract: exit status 0 and `completed OK!` on the last
/// non-empty stderr line (an exit status alone has been known to lie).
pub fn completed_ok(finished: &Finished) -> bool {
    finished.status.success()
        && finished
            .last_line()
            .is_some_and(|l| l.contains(COMPLETED_OK))
}

impl std::fmt::Display for BackupTool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.path.display(), self.version)
    }
}

/// Refuses a tool that cannot back up (or prepare a backup of) `server`, naming both.
///
/// Percona XtraBackup 2.4 serves MySQL 5.6 and 5.7; 8.0.N serves MySQL 8.0.M for M <= N
/// (an older 8.0 refuses newer redo formats); from 8.1 on, the same major.minor only.
/// mariadb-backup serves the MariaDB release series it was built with. Neither serves the
/// other family.
pub fn check_compatible(tool: &BackupTool, server: &ServerVersion) -> Result<()> {
    let (major, minor, patch) = version_triple(&tool.version)
        .with_context(|| format!("reading the version of {}", tool.path.display()))?;
    let (s_major, s_minor, s_patch) = (server.major, server.minor, server.patch);
    let (fits, wanted) = match (tool.kind, server.flavor) {
        (ToolKind::MariaBackup, ServerFlavor::MariaDb) => (
            (major, minor) == (s_major, s_minor),
            format!("mariadb-backup {s_major}.{s_minor}"),
        ),
        (ToolKind::XtraBackup, ServerFlavor::MySql) => match (s_major, s_minor) {
            (5, 6 | 7) => ((major, minor) == (2, 4), "Percona XtraBackup 2.4".into()),
            (8, 0) => (
                (major, minor) == (8, 0) && patch >= s_patch,
                format!("Percona XtraBackup 8.0.{s_patch} or a later 8.0"),
            ),
            _ => (
                (major, minor) == (s_major, s_minor),
                format!("Percona XtraBackup {s_major}.{s_minor}"),
            ),
        },
        (ToolKind::MariaBackup, ServerFlavor::MySql) => {
            (false, "Percona XtraBackup for that MySQL version".into())
        }
        (ToolKind::XtraBackup, ServerFlavor::MariaDb) => {
            (false, format!("mariadb-backup {s_major}.{s_minor}"))
        }
    };
    ensure!(
        fits,
        "the backup tool {tool} cannot back up {server}: it needs {wanted} (use the agent image built for this server)"
    );
    Ok(())
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
    fn tools_must_match_their_servers() {
        let tool = |kind, version: &str| BackupTool {
            path: PathBuf::from(match kind {
                ToolKind::XtraBackup => "/usr/bin/xtrabackup",
                ToolKind::MariaBackup => "/usr/bin/mariadb-backup",
            }),
            kind,
            version: version.into(),
        };
        let server = |v: &str| ServerVersion::parse(v).unwrap();
        use ToolKind::*;
        for (kind, tool_version, server_version, fits) in [
            (XtraBackup, "2.4.29", "5.7.44-log", true),
            (XtraBackup, "2.4.29", "5.7.44-48-log", true),
            (XtraBackup, "2.4.29", "8.0.36", false),
            (XtraBackup, "8.0.35-30", "8.0.35", true),
            (XtraBackup, "8.0.35-30", "8.0.21", true),
            (XtraBackup, "8.0.35-30", "8.0.36", false),
            (XtraBackup, "8.0.35-30", "5.7.44", false),
            (XtraBackup, "8.0.35-30", "8.4.3", false),
            (XtraBackup, "8.4.0-1", "8.4.3", true),
            (XtraBackup, "8.4.0-1", "8.0.36", false),
            (XtraBackup, "8.0.35-30", "10.11.19-MariaDB", false),
            (
                MariaBackup,
                "10.11.19-MariaDB",
                "10.11.19-MariaDB-0+deb12u1-log",
                true,
            ),
            (MariaBackup, "10.11.19-MariaDB", "10.11.6-MariaDB", true),
            (MariaBackup, "10.11.19-MariaDB", "11.4.2-MariaDB", false),
            (MariaBackup, "10.11.19-MariaDB", "8.0.36", false),
        ] {
            let result = check_compatible(&tool(kind, tool_version), &server(server_version));
            assert_eq!(
                result.is_ok(),
                fits,
                "{kind:?} {tool_version} vs {server_version}: {result:?}"
            );
            if let Err(e) = result {
                let msg = e.to_string();
                assert!(
                    msg.contains(tool_version) && msg.contains("cannot back up"),
                    "{msg}"
                );
            }
        }
        let e = check_compatible(&tool(XtraBackup, "8.0.35-30"), &server("8.0.36")).unwrap_err();
        assert!(
            e.to_string()
                .contains("needs Percona XtraBackup 8.0.36 or a later 8.0"),
            "{e}"
        );
    }

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
