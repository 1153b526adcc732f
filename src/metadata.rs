//! A backup's own metadata files, as the backup tool wrote them into the stream: read once,
//! into one [`BackupMetadata`], from a directory (a clone's staging, a data dir) or from
//! memory (a backup on its way to object storage).

use std::fs;
use std::io::ErrorKind;
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::coordinates::{self, Coordinates};
use crate::keyvalue;

/// Binary-log coordinates of the backed-up server (it was the primary, or logs binlogs).
pub const BINLOG_INFO_FILES: [&str; 2] = ["xtrabackup_binlog_info", "mariadb_backup_binlog_info"];
/// Coordinates of the backed-up server's own source (written with `--slave-info` on a replica).
pub const SLAVE_INFO_FILES: [&str; 2] = ["xtrabackup_slave_info", "mariadb_backup_slave_info"];
pub const CHECKPOINTS_FILES: [&str; 2] = ["xtrabackup_checkpoints", "mariadb_backup_checkpoints"];
/// Written last by both tools, so its presence says the tool got to the end.
pub const INFO_FILES: [&str; 2] = ["xtrabackup_info", "mariadb_backup_info"];
/// Every metadata file name, under both tools' spellings.
pub const ALL_FILES: [&str; 8] = [
    BINLOG_INFO_FILES[0],
    BINLOG_INFO_FILES[1],
    SLAVE_INFO_FILES[0],
    SLAVE_INFO_FILES[1],
    CHECKPOINTS_FILES[0],
    CHECKPOINTS_FILES[1],
    INFO_FILES[0],
    INFO_FILES[1],
];

/// A complete backup that has not been prepared yet.
pub const BACKUP_TYPE_FULL: &str = "full-backuped";

/// Percona writes `full-prepared` after `--prepare`, MariaDB `log-applied`.
pub fn is_prepared(backup_type: &str) -> bool {
    matches!(backup_type, "full-prepared" | "log-applied")
}

/// One metadata file: the name it was found under and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub name: String,
    pub text: String,
}

/// What a backup says about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackupMetadata {
    pub checkpoints: Option<File>,
    /// The tool's info file, written last: a stream that has it got to the end.
    pub info: Option<File>,
    pub binlog_info: Option<File>,
    pub slave_info: Option<File>,
}

impl BackupMetadata {
    /// Reads the metadata files of the backup in `dir` (those that exist).
    pub fn read(dir: &Path) -> Result<Self> {
        Self::from_lookup(|name| {
            let path = dir.join(name);
            match fs::read(&path) {
                Ok(bytes) => String::from_utf8(bytes)
                    .map(Some)
                    .with_context(|| format!("{} is not UTF-8 text", path.display())),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
            }
        })
    }

    /// Builds the metadata from `lookup`, which returns a file's text by name, if present.
    pub fn from_lookup(mut lookup: impl FnMut(&str) -> Result<Option<String>>) -> Result<Self> {
        let mut first = |names: [&str; 2]| -> Result<Option<File>> {
            for name in names {
                if let Some(text) = lookup(name)? {
                    return Ok(Some(File {
                        name: name.to_owned(),
                        text,
                    }));
                }
            }
            Ok(None)
        };
        Ok(Self {
            checkpoints: first(CHECKPOINTS_FILES)?,
            info: first(INFO_FILES)?,
            binlog_info: first(BINLOG_INFO_FILES)?,
            slave_info: first(SLAVE_INFO_FILES)?,
        })
    }

    /// The checkpoints file's `backup_type` (`full-backuped`, `full-prepared`, `log-applied`…).
    pub fn backup_type(&self) -> Result<Option<String>> {
        self.checkpoints
            .as_ref()
            .map(|f| {
                keyvalue::field(&f.text, "backup_type")
                    .with_context(|| format!("{} has no backup_type line", f.name))
            })
            .transpose()
    }

    /// The backup is a whole, unprepared full backup: what a clone or a restore must receive.
    pub fn check_full_backup(&self) -> Result<()> {
        let Some(backup_type) = self.backup_type()? else {
            bail!(
                "the stream holds no {}: it is not a complete backup",
                CHECKPOINTS_FILES[0]
            );
        };
        if backup_type != BACKUP_TYPE_FULL {
            bail!("the backup's type is {backup_type:?}, not a full backup ({BACKUP_TYPE_FULL})");
        }
        Ok(())
    }

    /// A field of the info file, such as `server_version` or `tool_version`.
    pub fn info_field(&self, key: &str) -> Option<String> {
        self.info
            .as_ref()
            .and_then(|f| keyvalue::field(&f.text, key))
    }

    /// Where a replica of this data starts replicating, if the backup says.
    pub fn coordinates(&self) -> Result<Option<Coordinates>> {
        fn text(f: &Option<File>) -> Option<&str> {
            f.as_ref().map(|f| f.text.as_str())
        }
        coordinates::choose(text(&self.binlog_info), text(&self.slave_info)).with_context(|| {
            let names: Vec<&str> = [&self.slave_info, &self.binlog_info]
                .into_iter()
                .flatten()
                .map(|f| f.name.as_str())
                .collect();
            format!(
                "reading replication coordinates from {}",
                names.join(" and ")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinates::Position;

    #[test]
    fn reads_either_file_name_set() {
        let dir = tempfile::tempdir().unwrap();
        let read = || BackupMetadata::read(dir.path()).unwrap();
        assert_eq!(read(), BackupMetadata::default());
        assert_eq!(read().coordinates().unwrap(), None);
        fs::write(
            dir.path().join("mariadb_backup_binlog_info"),
            "b.000002\t8\t\n",
        )
        .unwrap();
        let coords = read().coordinates().unwrap().unwrap();
        assert_eq!(
            coords.position,
            Position::File {
                file: "b.000002".into(),
                pos: 8
            }
        );
        fs::write(dir.path().join("xtrabackup_slave_info"), "nonsense").unwrap();
        let msg = format!("{:#}", read().coordinates().unwrap_err());
        assert!(msg.contains("xtrabackup_slave_info"), "{msg}");
        fs::write(dir.path().join("xtrabackup_info"), [0xff, 0xfe]).unwrap();
        let msg = format!("{:#}", BackupMetadata::read(dir.path()).unwrap_err());
        assert!(msg.contains("xtrabackup_info is not UTF-8"), "{msg}");
    }

    #[test]
    fn checkpoints_and_info() {
        let with = |checkpoints: &str| BackupMetadata {
            checkpoints: Some(File {
                name: CHECKPOINTS_FILES[0].into(),
                text: checkpoints.into(),
            }),
            info: Some(File {
                name: INFO_FILES[1].into(),
                text: "tool_name = mariabackup\nserver_version = 10.11.19-MariaDB\n".into(),
            }),
            ..Default::default()
        };
        let full = with("backup_type = full-backuped\nfrom_lsn = 0\nto_lsn = 44404\n");
        assert_eq!(
            full.backup_type().unwrap().as_deref(),
            Some(BACKUP_TYPE_FULL)
        );
        full.check_full_backup().unwrap();
        assert_eq!(
            full.info_field("server_version").as_deref(),
            Some("10.11.19-MariaDB")
        );
        assert!(!is_prepared(BACKUP_TYPE_FULL));
        assert!(is_prepared("log-applied") && is_prepared("full-prepared"));
        let incremental = with("backup_type = incremental\n");
        let msg = format!("{:#}", incremental.check_full_backup().unwrap_err());
        assert!(msg.contains("not a full backup"), "{msg}");
        assert!(with("from_lsn = 0\n").backup_type().is_err());
        let none = BackupMetadata::default();
        let msg = format!("{:#}", none.check_full_backup().unwrap_err());
        assert!(msg.contains("not a complete backup"), "{msg}");
    }
}
