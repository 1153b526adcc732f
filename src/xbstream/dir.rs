//! A [`Sink`] that writes files under a target directory: the clone's staging directory.
//!
//! Paths arrive sanitised (relative, no `.`-prefixed component); the writer still refuses to
//! follow a symlink or to create a file through anything that is not a real directory, and
//! creates files exclusively, so a file sent twice is an error unless it is a MariaDB fresh
//! copy. Payloads go through [`super::write`]'s writer threads and buffer pool.

use std::collections::{HashMap, HashSet};
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};

use super::decode::{Payload, Sink};
use super::write::{OutFile, PIECE_LEN, Writers};

const FILE_MODE: u32 = 0o640;
const DIR_MODE: u32 = 0o750;
/// Directories known to exist, remembered so each is created once. Past this many the memory
/// is cleared and directories are checked again: memory stays flat however many databases.
const KNOWN_DIRS_LIMIT: usize = 4096;

pub struct DirSink {
    target: PathBuf,
    direct_io: bool,
    writers: Writers,
    open: HashMap<PathBuf, Arc<OutFile>>,
    dirs: HashSet<PathBuf>,
}

impl DirSink {
    /// `target` must exist; it is expected to be empty.
    pub fn new(target: impl Into<PathBuf>) -> Result<Self> {
        Ok(Self {
            target: target.into(),
            direct_io: true,
            writers: Writers::new()?,
            open: HashMap::new(),
            dirs: HashSet::new(),
        })
    }

    /// Whether aligned payloads may bypass the page cache (the default; see
    /// [`super::write`]). Off, every write goes through the page cache.
    pub fn with_direct_io(mut self, direct_io: bool) -> Self {
        self.direct_io = direct_io;
        self
    }

    /// Creates the parent directories of `path` under the target, refusing anything in the
    /// way that is not a real directory (a symlink included).
    fn make_parents(&mut self, path: &Path) -> Result<()> {
        let Some(parent) = path.parent() else {
            return Ok(());
        };
        if self.dirs.len() >= KNOWN_DIRS_LIMIT {
            self.dirs.clear();
        }
        let mut dir = PathBuf::new();
        for component in parent.components() {
            dir.push(component);
            if self.dirs.contains(&dir) {
                continue;
            }
            let full = self.target.join(&dir);
            match DirBuilder::new().mode(DIR_MODE).create(&full) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    let meta = fs::symlink_metadata(&full)
                        .with_context(|| format!("inspecting {}", dir.display()))?;
                    ensure!(
                        meta.file_type().is_dir(),
                        "{} exists and is not a directory",
                        dir.display()
                    );
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("creating directory {}", dir.display()));
                }
            }
            self.dirs.insert(dir.clone());
        }
        Ok(())
    }
}

impl Sink for DirSink {
    fn create(&mut self, path: &Path, rewrite: bool) -> Result<()> {
        self.make_parents(path)?;
        let mut options = OpenOptions::new();
        options
            .write(true)
            .mode(FILE_MODE)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC);
        if rewrite {
            // The earlier copy's writes must not land in the fresh one.
            self.writers.barrier()?;
            options.create(true).truncate(true);
        } else {
            options.create_new(true);
        }
        let full = self.target.join(path);
        let file = match options.open(&full) {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                bail!("file sent twice without the rewrite flag")
            }
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        };
        let file = Arc::new(OutFile::new(path, &full, file, self.direct_io));
        self.open.insert(path.to_owned(), file);
        Ok(())
    }

    fn write(&mut self, path: &Path, mut offset: u64, data: &mut Payload<'_>) -> Result<()> {
        let file = self
            .open
            .get(path)
            .context("write to a file that is not open")?;
        while data.remaining() > 0 {
            let n = usize::try_from(data.remaining())
                .unwrap_or(PIECE_LEN)
                .min(PIECE_LEN);
            let mut buf = self.writers.buffer()?;
            if let Err(e) = data.read_exact(&mut buf.as_mut_slice()[..n]) {
                self.writers.release(buf);
                return Err(e).context("reading the payload");
            }
            self.writers.submit(file, offset, buf, n);
            offset = offset.saturating_add(n as u64);
        }
        Ok(())
    }

    fn seek(&mut self, _path: &Path) -> Result<()> {
        // What follows may overwrite bytes still being written.
        self.writers.barrier()
    }

    fn close(&mut self, path: &Path, extend_to: Option<u64>) -> Result<()> {
        let file = self
            .open
            .remove(path)
            .context("close of a file that is not open")?;
        if let Some(len) = extend_to {
            self.writers.barrier()?;
            file.set_len(len)?;
        }
        Ok(())
    }

    fn remove(&mut self, path: &Path) -> Result<()> {
        self.writers.barrier()?;
        match fs::remove_file(self.target.join(path)) {
            Ok(()) => Ok(()),
            // The tool deletes what a concurrent DDL dropped; it may never have been sent.
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).context("removing the file"),
        }
    }

    fn rename(&mut self, from: &Path, to: &Path) -> Result<()> {
        self.writers.barrier()?;
        self.make_parents(to)?;
        fs::rename(self.target.join(from), self.target.join(to))
            .with_context(|| format!("renaming to {}", to.display()))
    }

    fn finish(&mut self) -> Result<()> {
        self.writers.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Chunk, Decoder, Flavor, Summary, encode_file};
    use super::*;

    fn extract(dir: &Path, stream: &[u8], direct: bool) -> Result<Summary> {
        let mut sink = DirSink::new(dir)?.with_direct_io(direct);
        Decoder::new(Flavor::MariaDb).decode(stream, &mut sink)
    }

    fn read(dir: &tempfile::TempDir, path: &str) -> Vec<u8> {
        fs::read(dir.path().join(path)).unwrap()
    }

    #[test]
    fn writes_files_directories_and_empty_files() {
        let big: Vec<u8> = (0..25 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let mut s = Vec::new();
        encode_file("ibdata1", &big, &mut s);
        encode_file("db/t.ibd", b"table", &mut s);
        encode_file("a/b/c/deep", b"deep", &mut s);
        encode_file("empty", b"", &mut s);
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(extract(dir.path(), &s, true).unwrap().files, 4);
        assert!(read(&dir, "ibdata1") == big);
        assert_eq!(read(&dir, "db/t.ibd"), b"table");
        assert_eq!(read(&dir, "a/b/c/deep"), b"deep");
        assert_eq!(read(&dir, "empty"), b"");
    }

    /// The page-cache path, and pieces whose offsets stop being aligned midway (a short
    /// payload chunk followed by large ones), write the same bytes as the direct path.
    #[test]
    fn unaligned_chunks_with_and_without_direct_io() {
        let data: Vec<u8> = (0..3 * 1024 * 1024 + 77).map(|i| (i % 241) as u8).collect();
        let (head, rest) = data.split_at(4096 * 3);
        let (odd, tail) = rest.split_at(1000);
        let mut s = Vec::new();
        for (offset, piece) in [(0, head), (head.len(), odd), (head.len() + odd.len(), tail)] {
            Chunk::Payload {
                path: "f",
                flags: 0,
                offset: offset as u64,
                data: piece,
            }
            .encode(&mut s);
        }
        Chunk::Eof { path: "f" }.encode(&mut s);
        for direct in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            assert_eq!(extract(dir.path(), &s, direct).unwrap().files, 1);
            assert!(read(&dir, "f") == data, "direct={direct}");
        }
    }

    #[test]
    fn refuses_a_symlinked_parent_and_a_file_sent_twice() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        let mut s = Vec::new();
        encode_file("link/owned", b"x", &mut s);
        let err = extract(dir.path(), &s, true).unwrap_err();
        assert!(format!("{err:#}").contains("not a directory"), "{err:#}");
        assert!(!outside.path().join("owned").exists());

        let mut twice = Vec::new();
        encode_file("f", b"one", &mut twice);
        encode_file("f", b"two", &mut twice);
        let dir = tempfile::tempdir().unwrap();
        let err = extract(dir.path(), &twice, true).unwrap_err();
        assert!(format!("{err:#}").contains("sent twice"), "{err:#}");
        assert_eq!(read(&dir, "f"), b"one");
    }

    /// A trailing hole extends the file; a rewrite starts it afresh.
    #[test]
    fn holes_and_rewrites_reach_the_disk() {
        let mut s = Vec::new();
        Chunk::Payload {
            path: "t",
            flags: 0,
            offset: 0,
            data: b"old",
        }
        .encode(&mut s);
        Chunk::Eof { path: "t" }.encode(&mut s);
        Chunk::Payload {
            path: "t",
            flags: super::super::FLAG_MARIADB_REWRITE,
            offset: 0,
            data: b"n",
        }
        .encode(&mut s);
        Chunk::Seek {
            path: "t",
            offset: 5,
        }
        .encode(&mut s);
        Chunk::Eof { path: "t" }.encode(&mut s);
        let dir = tempfile::tempdir().unwrap();
        extract(dir.path(), &s, true).unwrap();
        assert_eq!(read(&dir, "t"), b"n\0\0\0\0");
    }
}
