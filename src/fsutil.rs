//! Durable file-system operations: atomic replacement, directory fsync, whole-fs sync.

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::Path;

use anyhow::{Context, Result};

/// Replaces `path` with `contents` so a reader (or a crash) sees the old file or the new one,
/// never a mix: write a temporary sibling, fsync it, rename it over, fsync the directory.
///
/// The temporary name starts with a dot and ends in `.tmp`, so neither mysqld's `!includedir`
/// (which reads `*.cnf`) nor a backup tool walking the data dir picks up a leftover.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = parent(path);
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = dir.join(temporary_name(&name.to_string_lossy()));
    let write = || -> std::io::Result<()> {
        let mut file = File::create(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()
    };
    write().with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    fsync_dir(dir)
}

/// The temporary sibling [`write_atomic`] writes `name` through.
pub fn temporary_name(name: &str) -> String {
    format!(".{name}.tmp")
}

/// Whether `name` is a temporary [`write_atomic`] left behind (a kill mid-write).
pub fn is_temporary(name: &str) -> bool {
    name.len() > 5 && name.starts_with('.') && name.ends_with(".tmp")
}

/// Checks that `dir` (given by `flag`) is an existing directory, and writable when `writable`.
pub fn check_dir(dir: &Path, flag: &str, writable: bool) -> Result<()> {
    let meta =
        fs::metadata(dir).with_context(|| format!("{flag} {}: cannot use it", dir.display()))?;
    anyhow::ensure!(meta.is_dir(), "{flag} {}: not a directory", dir.display());
    if writable {
        nix::unistd::access(
            dir,
            nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
        )
        .with_context(|| format!("{flag} {}: not writable", dir.display()))?;
    }
    Ok(())
}

/// Checks that the file a flag names exists and can be read.
pub fn check_file(path: &Path, flag: &str) -> Result<()> {
    let meta =
        fs::metadata(path).with_context(|| format!("{flag} {}: cannot use it", path.display()))?;
    anyhow::ensure!(meta.is_file(), "{flag} {}: not a file", path.display());
    File::open(path).with_context(|| format!("{flag} {}: cannot read it", path.display()))?;
    Ok(())
}

/// Makes the directory's entries (creations, renames, removals) durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsyncing directory {}", dir.display()))
}

/// Flushes every dirty page of the file system holding `path`: one sync after writing many
/// files instead of an fsync per file.
pub fn sync_filesystem(path: &Path) -> Result<()> {
    let dir = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    nix::unistd::syncfs(&dir)
        .with_context(|| format!("syncing the file system of {}", path.display()))
}

/// Whether anything (even a dangling symlink) is at `path`; other errors are reported.
pub fn exists(path: &Path) -> Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("inspecting {}", path.display())),
    }
}

/// Removes a file or a whole directory tree; a missing path is not an error.
pub fn remove_all(path: &Path) -> Result<()> {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
    };
    result.with_context(|| format!("removing {}", path.display()))
}

/// Bytes in the regular files under `dir`, for estimates: unreadable entries count as 0.
pub fn tree_size(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(t) if t.is_dir() => tree_size(&entry.path()),
            Ok(t) if t.is_file() => entry.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// About what a physical backup of `data_dir` streams: its tree without the binary and
/// relay logs kept there (the tutorial's `log-bin` puts them in the data dir, and on a
/// loaded primary they outweigh the tables), which the backup tool does not copy. A log set
/// is recognised by its index: `NAME.index` beside numbered files `NAME.000001`, ...
pub fn backup_size_estimate(data_dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(data_dir) else {
        return 0;
    };
    let mut names = Vec::new();
    let mut files = Vec::new();
    let mut size = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        match entry.file_type() {
            Ok(t) if t.is_dir() => size += tree_size(&entry.path()),
            Ok(t) if t.is_file() => {
                files.push((names.len(), entry.metadata().map_or(0, |m| m.len())))
            }
            _ => {}
        }
        names.push(name);
    }
    let index: std::collections::HashSet<&str> = names.iter().map(String::as_str).collect();
    size + files
        .iter()
        .filter(|(at, _)| !is_numbered_log(&names[*at], &index))
        .map(|(_, len)| len)
        .sum::<u64>()
}

/// Whether `name` is `STEM.DIGITS` with a `STEM.index` among `names`.
fn is_numbered_log(name: &str, names: &std::collections::HashSet<&str>) -> bool {
    name.rsplit_once('.').is_some_and(|(stem, number)| {
        !number.is_empty()
            && number.bytes().all(|b| b.is_ascii_digit())
            && names.contains(format!("{stem}.index").as_str())
    })
}

/// The names in a directory, sorted.
pub fn list_dir(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server-id.cnf");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(list_dir(dir.path()).unwrap(), vec!["server-id.cnf"]);
    }

    #[test]
    fn temporaries_are_recognised() {
        assert!(is_temporary(&temporary_name("server-id.cnf")));
        assert!(is_temporary("..mysql-agent-clone-in-progress.tmp"));
        assert!(!is_temporary("ibdata1") && !is_temporary(".tmp"));
    }

    #[test]
    fn directories_are_checked_and_named() {
        let dir = tempfile::tempdir().unwrap();
        check_dir(dir.path(), "--data-dir", true).unwrap();
        let file = dir.path().join("f");
        fs::write(&file, "x").unwrap();
        let msg = format!("{:#}", check_dir(&file, "--data-dir", false).unwrap_err());
        assert!(
            msg.starts_with("--data-dir ") && msg.contains("not a directory"),
            "{msg}"
        );
        let missing = dir.path().join("missing");
        let msg = format!(
            "{:#}",
            check_dir(&missing, "--data-dir", false).unwrap_err()
        );
        assert!(
            msg.contains("missing") && msg.contains("No such file"),
            "{msg}"
        );
    }

    #[test]
    fn atomic_write_names_the_unwritable_path() {
        let err = write_atomic(Path::new("/nonexistent-dir/x.cnf"), b"x").unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent-dir/.x.cnf.tmp"));
    }

    #[test]
    fn the_backup_estimate_leaves_out_indexed_log_sets() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, len: usize| fs::write(dir.path().join(name), vec![0u8; len]);
        write("ibdata1", 1000).unwrap();
        write("aria_log.00000001", 10).unwrap();
        write("mysqld-bin.000001", 5000).unwrap();
        write("mysqld-bin.000002", 7000).unwrap();
        write("mysqld-bin.index", 40).unwrap();
        write("mysql-1-relay-bin.000003", 3000).unwrap();
        write("mysql-1-relay-bin.index", 30).unwrap();
        fs::create_dir(dir.path().join("test")).unwrap();
        fs::write(dir.path().join("test/t.ibd"), vec![0u8; 200]).unwrap();
        // No index beside aria's log: it stays (the backup tool copies it).
        assert_eq!(backup_size_estimate(dir.path()), 1000 + 10 + 40 + 30 + 200);
        assert_eq!(tree_size(dir.path()), 1000 + 10 + 40 + 30 + 200 + 15000);
    }

    #[test]
    fn tree_size_adds_up_files_and_skips_links() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("a/b")).unwrap();
        fs::write(dir.path().join("a/b/f"), [0u8; 100]).unwrap();
        fs::write(dir.path().join("g"), [0u8; 23]).unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("link")).unwrap();
        assert_eq!(tree_size(dir.path()), 123);
        assert_eq!(tree_size(&dir.path().join("missing")), 0);
    }

    #[test]
    fn remove_all_handles_files_trees_and_absence() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("a/b")).unwrap();
        fs::write(dir.path().join("a/b/f"), b"x").unwrap();
        fs::write(dir.path().join("g"), b"x").unwrap();
        remove_all(&dir.path().join("a")).unwrap();
        remove_all(&dir.path().join("g")).unwrap();
        remove_all(&dir.path().join("missing")).unwrap();
        assert!(list_dir(dir.path()).unwrap().is_empty());
        assert!(!exists(&dir.path().join("a")).unwrap());
    }
}
