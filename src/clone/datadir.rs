//! The data dir's state machine: what a data dir holds when `clone` starts ([`classify`], pure),
//! and the durable steps that move it from empty to a completed clone.
//!
//! The data dir is a volume that outlives the container, and the container can be killed at
//! any instant, so the state lives on disk:
//!
//! 1. [`IN_PROGRESS_MARKER`] is written (durably) before anything else, only into an empty dir
//!    ([`begin`]);
//! 2. the stream is extracted into [`STAGING_DIR`] inside the data dir (same file system),
//!    checked for completeness and prepared there;
//! 3. the prepared files are renamed into place, the file system is synced once, and
//!    [`DONE_MARKER`] is written atomically before the in-progress marker is removed
//!    ([`commit`]).
//!
//! A run that finds the in-progress marker without the done marker knows the data dir holds
//! nothing but its own leftovers, [`wipe`]s them and starts over. mysqld never sees
//! unprepared data, and a partial clone is never mistaken for a finished one.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result, ensure};

use crate::fsutil;
use crate::metadata::{self, BackupMetadata};

/// Where a clone is extracted and prepared before being moved into place. It exists only
/// while this init container runs: a backup tool would take any directory in the data dir
/// for a database, dotted or not.
pub const STAGING_DIR: &str = ".mysql-agent-staging";
/// Present from the first byte written until the clone is complete.
pub const IN_PROGRESS_MARKER: &str = ".mysql-agent-clone-in-progress";
/// Written last: the data dir holds a complete, prepared clone.
pub const DONE_MARKER: &str = ".mysql-agent-clone-done";
/// Entries a fresh volume may hold that say nothing about MySQL data.
const IGNORED_ENTRIES: [&str; 1] = ["lost+found"];

/// Entries that say nothing about the data: a fresh volume's, and the temporary files of the
/// agent's own atomic writes (a kill while writing the first marker leaves one).
fn is_ignored(name: &str) -> bool {
    IGNORED_ENTRIES.contains(&name) || fsutil::is_temporary(name)
}

/// What the data dir holds when `clone` starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataDirState {
    Empty,
    /// A clone by this agent finished.
    CloneDone,
    /// A clone by this agent started and did not finish: only its own leftovers are here.
    CloneInterrupted,
    /// A server's data the agent did not clone (initialised by mysqld, or cloned by the
    /// tutorial's scripts before a migration).
    Initialized,
    /// A backup nobody prepared: the tutorial's partial-clone failure. Never started on.
    Unprepared {
        backup_type: String,
    },
    /// Something else; nothing is touched.
    Unknown {
        entries: Vec<String>,
    },
}

/// Classifies a data dir from its top-level names and its checkpoints file's backup_type.
pub fn classify(entries: &[String], backup_type: Option<&str>) -> DataDirState {
    let entries: Vec<&String> = entries.iter().filter(|e| !is_ignored(e)).collect();
    let has = |name: &str| entries.iter().any(|e| *e == name);
    if has(DONE_MARKER) {
        DataDirState::CloneDone
    } else if has(IN_PROGRESS_MARKER) || (entries.len() == 1 && has(STAGING_DIR)) {
        DataDirState::CloneInterrupted
    } else if let Some(bt) = backup_type.filter(|bt| !metadata::is_prepared(bt)) {
        DataDirState::Unprepared {
            backup_type: bt.to_owned(),
        }
    } else if has("mysql") || has("ibdata1") {
        DataDirState::Initialized
    } else if entries.is_empty() {
        DataDirState::Empty
    } else {
        DataDirState::Unknown {
            entries: entries.into_iter().cloned().collect(),
        }
    }
}

/// Reads what [`classify`] needs from `data_dir`.
pub fn inspect(data_dir: &Path) -> Result<DataDirState> {
    let entries = fsutil::list_dir(data_dir)?;
    let backup_type = BackupMetadata::read(data_dir)?
        .backup_type()
        .with_context(|| format!("reading the checkpoints file in {}", data_dir.display()))?;
    Ok(classify(&entries, backup_type.as_deref()))
}

/// Marks the (empty) data dir as holding a clone in progress, durably, before anything else
/// is written into it.
pub fn begin(data_dir: &Path, record: &str) -> Result<()> {
    fsutil::write_atomic(&data_dir.join(IN_PROGRESS_MARKER), record.as_bytes())
}

/// Moves the prepared clone from staging into place and records it durably: after this the
/// data dir is [`DataDirState::CloneDone`], and before it [`DataDirState::CloneInterrupted`].
pub fn commit(data_dir: &Path, record: &str) -> Result<()> {
    let staging = data_dir.join(STAGING_DIR);
    for (i, name) in fsutil::list_dir(&staging)?.into_iter().enumerate() {
        let to = data_dir.join(&name);
        ensure!(!fsutil::exists(&to)?, "{} already exists", to.display());
        fs::rename(staging.join(&name), &to)
            .with_context(|| format!("moving {name} into {}", data_dir.display()))?;
        if i == 0 {
            crate::crash_point!("clone-mid-commit");
        }
    }
    fsutil::sync_filesystem(data_dir)?;
    fs::remove_dir(&staging).with_context(|| format!("removing {}", staging.display()))?;
    fsutil::write_atomic(&data_dir.join(DONE_MARKER), record.as_bytes())?;
    fsutil::remove_all(&data_dir.join(IN_PROGRESS_MARKER))?;
    fsutil::fsync_dir(data_dir)
}

/// A completed clone found again: the in-progress marker (left if a run died between writing
/// the done marker and removing it) goes.
pub fn tidy_done(data_dir: &Path) -> Result<()> {
    fsutil::remove_all(&data_dir.join(IN_PROGRESS_MARKER))
}

/// Removes the staging directory of a failed attempt.
pub fn discard_staging(data_dir: &Path) -> Result<()> {
    fsutil::remove_all(&data_dir.join(STAGING_DIR))
}

/// Removes everything an interrupted clone left in the data dir but its in-progress marker,
/// which must outlive the rest: a kill mid-wipe would otherwise leave partial data with no
/// marker, for the next run to take for a server's data. The new run rewrites the marker.
pub fn wipe(data_dir: &Path) -> Result<()> {
    for name in fsutil::list_dir(data_dir)? {
        if name != IN_PROGRESS_MARKER && !IGNORED_ENTRIES.contains(&name.as_str()) {
            fsutil::remove_all(&data_dir.join(name))?;
            crate::crash_point!("clone-mid-wipe");
        }
    }
    fsutil::fsync_dir(data_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn classifies_data_dirs() {
        use DataDirState::*;
        assert_eq!(classify(&[], None), Empty);
        assert_eq!(classify(&names(&["lost+found"]), None), Empty);
        // Killed while writing the first marker.
        assert_eq!(
            classify(&names(&[&fsutil::temporary_name(IN_PROGRESS_MARKER)]), None),
            Empty
        );
        assert_eq!(
            classify(
                &names(&[DONE_MARKER, IN_PROGRESS_MARKER, "mysql", "ibdata1"]),
                Some("log-applied")
            ),
            CloneDone
        );
        // Interrupted at any point: staging only, or files half moved into place.
        assert_eq!(
            classify(&names(&[IN_PROGRESS_MARKER]), None),
            CloneInterrupted
        );
        assert_eq!(
            classify(
                &names(&[IN_PROGRESS_MARKER, STAGING_DIR, "mysql"]),
                Some("full-backuped")
            ),
            CloneInterrupted
        );
        assert_eq!(classify(&names(&[STAGING_DIR]), None), CloneInterrupted);
        // A tutorial pod cloned and prepared before migrating to the agent.
        assert_eq!(
            classify(&names(&["mysql", "ibdata1"]), Some("full-prepared")),
            Initialized
        );
        assert_eq!(
            classify(&names(&["mysql", "ibdata1", "lost+found"]), None),
            Initialized
        );
        // The tutorial's partial clone: xbstream got as far as the checkpoints.
        assert_eq!(
            classify(
                &names(&["mysql", "xtrabackup_checkpoints"]),
                Some("full-backuped")
            ),
            Unprepared {
                backup_type: "full-backuped".into()
            }
        );
        assert_eq!(
            classify(&names(&["notes.txt", STAGING_DIR]), None),
            Unknown {
                entries: names(&["notes.txt", STAGING_DIR])
            }
        );
    }

    #[test]
    fn inspect_reads_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("mysql")).unwrap();
        fs::write(
            dir.path().join("xtrabackup_checkpoints"),
            "backup_type = full-backuped\n",
        )
        .unwrap();
        assert!(matches!(
            inspect(dir.path()).unwrap(),
            DataDirState::Unprepared { .. }
        ));
        fs::write(
            dir.path().join("xtrabackup_checkpoints"),
            "backup_type = log-applied\n",
        )
        .unwrap();
        assert_eq!(inspect(dir.path()).unwrap(), DataDirState::Initialized);
        fs::write(dir.path().join("xtrabackup_checkpoints"), "garbage\n").unwrap();
        let msg = format!("{:#}", inspect(dir.path()).unwrap_err());
        assert!(
            msg.contains("xtrabackup_checkpoints has no backup_type"),
            "{msg}"
        );
    }

    /// The whole life of a clone on disk: begin, a kill, wipe, begin again, commit.
    #[test]
    fn the_states_follow_the_steps() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir(d.join("lost+found")).unwrap();
        assert_eq!(inspect(d).unwrap(), DataDirState::Empty);
        begin(d, "pod = mysql-1\n").unwrap();
        assert_eq!(inspect(d).unwrap(), DataDirState::CloneInterrupted);
        fs::create_dir_all(d.join(STAGING_DIR).join("mysql")).unwrap();
        fs::write(d.join(STAGING_DIR).join("ibdata1"), "data").unwrap();
        assert_eq!(inspect(d).unwrap(), DataDirState::CloneInterrupted);
        // A restart: everything but the marker goes, and the state still says interrupted.
        wipe(d).unwrap();
        assert_eq!(
            fsutil::list_dir(d).unwrap(),
            names(&[IN_PROGRESS_MARKER, "lost+found"])
        );
        assert_eq!(inspect(d).unwrap(), DataDirState::CloneInterrupted);
        fs::create_dir_all(d.join(STAGING_DIR).join("mysql")).unwrap();
        fs::write(d.join(STAGING_DIR).join("ibdata1"), "data").unwrap();
        commit(d, "completed_at = now\n").unwrap();
        assert_eq!(
            fsutil::list_dir(d).unwrap(),
            names(&[DONE_MARKER, "ibdata1", "lost+found", "mysql"])
        );
        assert_eq!(inspect(d).unwrap(), DataDirState::CloneDone);
    }

    #[test]
    fn commit_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        begin(d, "x").unwrap();
        fs::create_dir_all(d.join(STAGING_DIR)).unwrap();
        fs::write(d.join(STAGING_DIR).join("ibdata1"), "new").unwrap();
        fs::write(d.join("ibdata1"), "old").unwrap();
        let msg = format!("{:#}", commit(d, "x").unwrap_err());
        assert!(msg.contains("already exists"), "{msg}");
        assert_eq!(fs::read_to_string(d.join("ibdata1")).unwrap(), "old");
        assert_eq!(inspect(d).unwrap(), DataDirState::CloneInterrupted);
    }
}
