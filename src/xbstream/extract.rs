//! Native extraction of an xbstream into a directory, with the checks `xbstream -x` and
//! `mbstream -x` skip: every chunk's CRC, every file closed by its EOF chunk, paths confined to
//! the target, and an optional end-of-stream entry that must come last.
//!
//! It is synchronous on purpose: it runs on a blocking thread fed by a socket with a read
//! timeout, and hands payloads to writer threads through a fixed pool of buffers
//! ([`super::write`]), so memory does not grow with the stream.

use std::collections::{HashMap, HashSet};
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, BufReader, ErrorKind, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result, anyhow, bail, ensure};
use tokio_util::sync::CancellationToken;

use super::write::{OutFile, PIECE_LEN, Writers};
use super::{
    FLAG_IGNORABLE, FLAG_MARIADB_REWRITE, Flavor, MAGIC, MAX_PATH_LEN, MAX_PAYLOAD_LEN, PREFIX_LEN,
    TYPE_EOF, TYPE_PAYLOAD, TYPE_REMOVE, TYPE_RENAME, TYPE_SPARSE_OR_SEEK, sanitize_path,
};

/// Read-ahead for chunk headers; payload reads larger than this bypass it.
const READ_AHEAD_LEN: usize = 256 * 1024;
/// A sparse chunk of 10 MiB has at most a few thousand holes; a larger map is corrupt.
const MAX_SPARSE_ENTRIES: u32 = 1 << 20;
/// The end-of-stream entry is a few lines of text.
const MAX_TRAILER_LEN: usize = 64 * 1024;
const FILE_MODE: u32 = 0o640;
const DIR_MODE: u32 = 0o750;

/// Counters another thread can read while extraction runs (for progress lines).
#[derive(Debug, Default)]
pub struct Progress {
    bytes: AtomicU64,
    files: AtomicU64,
    header: OnceLock<Vec<u8>>,
}

impl Progress {
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn files(&self) -> u64 {
        self.files.load(Ordering::Relaxed)
    }

    /// The stream's opening entry, once it has arrived.
    pub fn header(&self) -> Option<&[u8]> {
        self.header.get().map(Vec::as_slice)
    }
}

/// The end-of-stream entry, held in memory rather than extracted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trailer {
    /// Bytes of stream that preceded the entry's first chunk.
    pub stream_offset: u64,
    pub contents: Vec<u8>,
}

#[derive(Debug)]
pub struct Summary {
    /// Every byte read, the trailer included.
    pub bytes: u64,
    /// Files closed by an EOF chunk.
    pub files: u64,
    pub header: Option<Vec<u8>>,
    pub trailer: Option<Trailer>,
}

pub struct Extractor {
    target: PathBuf,
    flavor: Flavor,
    header_path: Option<PathBuf>,
    trailer_path: Option<PathBuf>,
    progress: Arc<Progress>,
    cancel: CancellationToken,
    direct_io: bool,
}

impl Extractor {
    /// `target` must exist; it is expected to be empty (files are created exclusively).
    pub fn new(target: impl Into<PathBuf>, flavor: Flavor) -> Self {
        Self {
            target: target.into(),
            flavor,
            header_path: None,
            trailer_path: None,
            progress: Arc::default(),
            cancel: CancellationToken::new(),
            direct_io: true,
        }
    }

    /// Whether aligned payloads may bypass the page cache (the default; see
    /// [`super::write`]). Off, every write goes through the page cache.
    pub fn with_direct_io(mut self, direct_io: bool) -> Self {
        self.direct_io = direct_io;
        self
    }

    /// Holds the top-level file `name` in memory as the stream's opening entry, when it is the
    /// first one (it is optional: streams from other donors have none).
    pub fn with_header(mut self, name: &str) -> Self {
        self.header_path = Some(PathBuf::from(name));
        self
    }

    /// Holds the top-level file `name` in memory as the end-of-stream entry; once it is closed
    /// nothing may follow it.
    pub fn with_trailer(mut self, name: &str) -> Self {
        self.trailer_path = Some(PathBuf::from(name));
        self
    }

    pub fn with_progress(mut self, progress: Arc<Progress>) -> Self {
        self.progress = progress;
        self
    }

    /// Checked between chunks; a blocked read is the caller's to interrupt (shut the socket).
    pub fn with_cancel(mut self, cancel: CancellationToken) -> Self {
        self.cancel = cancel;
        self
    }

    pub fn extract<R: Read>(self, reader: R) -> Result<Summary> {
        let mut run = Run {
            input: Input {
                inner: BufReader::with_capacity(READ_AHEAD_LEN, reader),
                pos: 0,
                progress: Arc::clone(&self.progress),
            },
            ex: &self,
            open: HashMap::new(),
            closed: HashSet::new(),
            dirs: HashSet::new(),
            files: 0,
            header: HeaderState::Expected,
            trailer: TrailerState::Absent,
            writers: Writers::new()?,
        };
        run.all_chunks()?;
        run.finish()
    }
}

struct Input<R> {
    inner: BufReader<R>,
    pos: u64,
    progress: Arc<Progress>,
}

impl<R: Read> Read for Input<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        self.progress.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl<R: Read> Input<R> {
    /// Fills `buf`, or returns false if the stream ended cleanly before its first byte.
    fn read_prefix(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.read(&mut buf[filled..]) {
                Ok(0) if filled == 0 => return Ok(false),
                Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
                Ok(n) => filled += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    fn read_u32(&mut self) -> io::Result<u32> {
        let mut b = [0; 4];
        self.read_exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn read_u64(&mut self) -> io::Result<u64> {
        let mut b = [0; 8];
        self.read_exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
}

/// Names the usual reason a read failed: the stream stopped inside a chunk.
fn truncated(e: io::Error) -> anyhow::Error {
    if e.kind() == ErrorKind::UnexpectedEof {
        anyhow!("the stream ends inside this chunk (truncated)")
    } else {
        anyhow::Error::new(e).context("reading the stream")
    }
}

struct OpenFile {
    file: Arc<OutFile>,
    /// Where the next chunk for this file must start.
    next: u64,
    /// One past the last byte written; less than `next` after a trailing hole.
    end: u64,
}

enum TrailerState {
    Absent,
    Open {
        stream_offset: u64,
        contents: Vec<u8>,
    },
    Closed(Trailer),
}

/// The opening entry: only the stream's first chunks may carry it.
enum HeaderState {
    Expected,
    Open(Vec<u8>),
    Done,
}

struct Run<'a, R> {
    input: Input<R>,
    ex: &'a Extractor,
    open: HashMap<PathBuf, OpenFile>,
    closed: HashSet<PathBuf>,
    dirs: HashSet<PathBuf>,
    files: u64,
    header: HeaderState,
    trailer: TrailerState,
    writers: Writers,
}

impl<R: Read> Run<'_, R> {
    fn all_chunks(&mut self) -> Result<()> {
        loop {
            if self.ex.cancel.is_cancelled() {
                bail!("extraction cancelled");
            }
            let start = self.input.pos;
            let mut prefix = [0u8; PREFIX_LEN];
            let more = self
                .input
                .read_prefix(&mut prefix)
                .map_err(truncated)
                .with_context(|| format!("chunk header at stream offset {start}"))?;
            if !more {
                return Ok(());
            }
            if &prefix[..MAGIC.len()] != MAGIC {
                if start == 0 {
                    bail!(
                        "not an xbstream: it starts with {:?} instead of {:?}",
                        String::from_utf8_lossy(&prefix),
                        String::from_utf8_lossy(MAGIC)
                    );
                }
                bail!("bad chunk magic at stream offset {start}: the stream is corrupt");
            }
            let (flags, kind) = (prefix[8], prefix[9]);
            let path_len = u32::from_le_bytes(prefix[10..14].try_into().unwrap()) as usize;
            ensure!(
                (1..=MAX_PATH_LEN).contains(&path_len),
                "chunk at stream offset {start} declares a path of {path_len} bytes (limit {MAX_PATH_LEN})"
            );
            let mut raw = vec![0u8; path_len];
            self.input
                .read_exact(&mut raw)
                .map_err(truncated)
                .with_context(|| format!("chunk at stream offset {start}"))?;
            let path = sanitize_path(&raw)
                .with_context(|| format!("unsafe path in the chunk at stream offset {start}"))?;
            self.chunk(start, flags, kind, &path).with_context(|| {
                format!(
                    "chunk '{}' for {} at stream offset {start}",
                    kind.escape_ascii(),
                    path.display()
                )
            })?;
        }
    }

    fn chunk(&mut self, start: u64, flags: u8, kind: u8, path: &Path) -> Result<()> {
        if let TrailerState::Closed(_) = self.trailer {
            bail!("data follows the end-of-stream entry");
        }
        let is_header = self.ex.header_path.as_deref() == Some(path);
        match std::mem::replace(&mut self.header, HeaderState::Done) {
            HeaderState::Expected | HeaderState::Open(_) if !is_header => {}
            HeaderState::Expected => return self.header_chunk(kind, Vec::new()),
            HeaderState::Open(contents) => return self.header_chunk(kind, contents),
            HeaderState::Done if is_header => bail!("the stream's opening entry comes late"),
            HeaderState::Done => {}
        }
        let is_trailer = self.ex.trailer_path.as_deref() == Some(path);
        let mariadb = self.ex.flavor == Flavor::MariaDb;
        match kind {
            TYPE_PAYLOAD | TYPE_EOF if is_trailer => self.trailer_chunk(start, kind),
            _ if is_trailer => bail!("unexpected chunk type for the end-of-stream entry"),
            TYPE_PAYLOAD => self.payload(path, mariadb && flags & FLAG_MARIADB_REWRITE != 0),
            TYPE_EOF => self.eof(path, mariadb && flags & FLAG_MARIADB_REWRITE != 0),
            TYPE_SPARSE_OR_SEEK if mariadb => self.seek(path),
            TYPE_SPARSE_OR_SEEK => self.sparse(path),
            TYPE_REMOVE if mariadb => self.remove(path),
            TYPE_RENAME if mariadb => self.rename(path),
            _ if flags & FLAG_IGNORABLE != 0 => self.skip(),
            _ => bail!(
                "unknown chunk type {:?} without the ignorable flag",
                kind.escape_ascii().to_string()
            ),
        }
    }

    /// Reads the length, offset and CRC fields every payload-layout chunk starts with.
    fn payload_header(&mut self) -> Result<(u64, u64, u32)> {
        let len = self.input.read_u64().map_err(truncated)?;
        let offset = self.input.read_u64().map_err(truncated)?;
        let crc = self.input.read_u32().map_err(truncated)?;
        ensure!(
            len <= MAX_PAYLOAD_LEN,
            "payload length {len} exceeds the {MAX_PAYLOAD_LEN}-byte limit (corrupt length field)"
        );
        Ok((len, offset, crc))
    }

    fn payload(&mut self, path: &Path, rewrite: bool) -> Result<()> {
        let (len, offset, crc) = self.payload_header()?;
        let mut file = self.take_file(path, rewrite, offset)?;
        let mut hasher = crc32fast::Hasher::new();
        copy_payload(
            &mut self.input,
            &self.writers,
            &mut hasher,
            &file.file,
            offset,
            len,
        )?;
        check_crc(crc, hasher)?;
        file.next = offset + len;
        file.end = file.end.max(file.next);
        self.open.insert(path.to_owned(), file);
        Ok(())
    }

    /// XtraBackup 8.0 sparse chunk: data interleaved with holes, CRC over map and data.
    fn sparse(&mut self, path: &Path) -> Result<()> {
        let entries = self.input.read_u32().map_err(truncated)?;
        let (len, offset, crc) = self.payload_header()?;
        ensure!(
            entries <= MAX_SPARSE_ENTRIES,
            "sparse map of {entries} entries exceeds the limit of {MAX_SPARSE_ENTRIES}"
        );
        let mut map = vec![0u8; entries as usize * 8];
        self.input.read_exact(&mut map).map_err(truncated)?;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&map);
        let holes: Vec<(u64, u64)> = map
            .chunks_exact(8)
            .map(|e| {
                let skip = u32::from_le_bytes(e[..4].try_into().unwrap());
                let len = u32::from_le_bytes(e[4..].try_into().unwrap());
                (u64::from(skip), u64::from(len))
            })
            .collect();
        let mapped: u64 = holes.iter().map(|&(_, l)| l).sum();
        ensure!(
            mapped == len,
            "sparse map covers {mapped} bytes but the chunk carries {len}"
        );
        let mut file = self.take_file(path, false, offset)?;
        let mut pos = offset;
        for (skip, piece) in holes {
            pos = pos
                .checked_add(skip)
                .filter(|p| *p <= i64::MAX as u64)
                .context("sparse hole runs past the largest file offset")?;
            copy_payload(
                &mut self.input,
                &self.writers,
                &mut hasher,
                &file.file,
                pos,
                piece,
            )?;
            pos += piece;
            if piece > 0 {
                file.end = file.end.max(pos);
            }
        }
        check_crc(crc, hasher)?;
        file.next = pos;
        self.open.insert(path.to_owned(), file);
        Ok(())
    }

    /// MariaDB seek: the next payload for this (open) file starts at the given offset.
    fn seek(&mut self, path: &Path) -> Result<()> {
        let offset = self.input.read_u64().map_err(truncated)?;
        // What follows may overwrite bytes still being written.
        self.writers.barrier()?;
        let file = self
            .open
            .get_mut(path)
            .context("seek on a file that is not open")?;
        file.next = offset;
        Ok(())
    }

    fn eof(&mut self, path: &Path, rewrite: bool) -> Result<()> {
        // A file with no payload chunk (an empty file) is announced by its EOF chunk alone.
        self.open_file(path, rewrite)?;
        let file = self.open.remove(path).expect("opened above");
        if file.end < file.next {
            self.writers.barrier()?;
            file.file.set_len(file.next)?;
        }
        self.closed.insert(path.to_owned());
        self.files += 1;
        self.input.progress.files.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn remove(&mut self, path: &Path) -> Result<()> {
        ensure!(
            !self.open.contains_key(path),
            "remove of a file that is still open"
        );
        self.writers.barrier()?;
        match fs::remove_file(self.ex.target.join(path)) {
            Ok(()) => {}
            // The tool deletes what a concurrent DDL dropped; it may never have been sent.
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e).context("removing the file"),
        }
        self.closed.remove(path);
        Ok(())
    }

    fn rename(&mut self, path: &Path) -> Result<()> {
        let len = self.input.read_u32().map_err(truncated)? as usize;
        ensure!(
            (1..=MAX_PATH_LEN).contains(&len),
            "rename target of {len} bytes (limit {MAX_PATH_LEN})"
        );
        let mut raw = vec![0u8; len];
        self.input.read_exact(&mut raw).map_err(truncated)?;
        let new_path = sanitize_path(&raw).context("unsafe rename target")?;
        ensure!(
            !self.open.contains_key(path) && !self.open.contains_key(&new_path),
            "rename involving a file that is still open"
        );
        self.writers.barrier()?;
        self.make_parents(&new_path)?;
        fs::rename(self.ex.target.join(path), self.ex.target.join(&new_path))
            .with_context(|| format!("renaming to {}", new_path.display()))?;
        self.closed.remove(path);
        self.closed.insert(new_path);
        Ok(())
    }

    fn skip(&mut self) -> Result<()> {
        let (mut len, _, _) = self.payload_header()?;
        let mut buf = self.writers.buffer()?;
        let mut skipped = Ok(());
        while len > 0 && skipped.is_ok() {
            let n = len.min(PIECE_LEN as u64) as usize;
            skipped = self.input.read_exact(&mut buf.as_mut_slice()[..n]);
            len -= n as u64;
        }
        self.writers.release(buf);
        skipped.map_err(truncated)
    }

    fn trailer_chunk(&mut self, start: u64, kind: u8) -> Result<()> {
        if let TrailerState::Absent = self.trailer {
            self.trailer = TrailerState::Open {
                stream_offset: start,
                contents: Vec::new(),
            };
        }
        let TrailerState::Open {
            stream_offset,
            contents,
        } = &mut self.trailer
        else {
            unreachable!("closed trailers are refused before dispatch");
        };
        let (stream_offset, mut contents) = (*stream_offset, std::mem::take(contents));
        if kind == TYPE_EOF {
            self.trailer = TrailerState::Closed(Trailer {
                stream_offset,
                contents,
            });
            return Ok(());
        }
        let read = read_small_payload(&mut self.input, &mut contents, "end-of-stream entry");
        self.trailer = TrailerState::Open {
            stream_offset,
            contents,
        };
        read
    }

    /// One chunk of the opening entry, whose content so far is `contents`.
    fn header_chunk(&mut self, kind: u8, mut contents: Vec<u8>) -> Result<()> {
        match kind {
            TYPE_EOF => {
                let _ = self.input.progress.header.set(contents);
                self.header = HeaderState::Done;
                Ok(())
            }
            TYPE_PAYLOAD => {
                read_small_payload(&mut self.input, &mut contents, "opening entry")?;
                self.header = HeaderState::Open(contents);
                Ok(())
            }
            _ => bail!("unexpected chunk type for the stream's opening entry"),
        }
    }

    /// Takes out the open file a data chunk at `offset` continues (opening it on its first
    /// chunk); the caller puts it back. Chunks of one file arrive in order: a gap or an
    /// overlap means a corrupt stream.
    fn take_file(&mut self, path: &Path, rewrite: bool, offset: u64) -> Result<OpenFile> {
        self.open_file(path, rewrite)?;
        let file = self.open.remove(path).expect("opened above");
        ensure!(
            offset == file.next,
            "out-of-order chunk: offset {offset}, expected {}",
            file.next
        );
        Ok(file)
    }

    /// Opens `path` for its first chunk, creating it exclusively (a file sent twice is an
    /// error) unless MariaDB's rewrite flag says this is a fresh copy.
    fn open_file(&mut self, path: &Path, rewrite: bool) -> Result<()> {
        if self.open.contains_key(path) {
            return Ok(());
        }
        ensure!(
            rewrite || !self.closed.contains(path),
            "file sent twice without the rewrite flag"
        );
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
        let full = self.ex.target.join(path);
        let file = options
            .open(&full)
            .with_context(|| format!("creating {}", path.display()))?;
        let file = Arc::new(OutFile::new(path, &full, file, self.ex.direct_io));
        self.closed.remove(path);
        self.open.insert(
            path.to_owned(),
            OpenFile {
                file,
                next: 0,
                end: 0,
            },
        );
        Ok(())
    }

    /// Creates the parent directories of `path` under the target, refusing anything in the
    /// way that is not a real directory (a symlink included).
    fn make_parents(&mut self, path: &Path) -> Result<()> {
        let Some(parent) = path.parent() else {
            return Ok(());
        };
        let mut dir = PathBuf::new();
        for component in parent.components() {
            dir.push(component);
            if self.dirs.contains(&dir) {
                continue;
            }
            let full = self.ex.target.join(&dir);
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

    fn finish(self) -> Result<Summary> {
        self.writers.finish()?;
        if !self.open.is_empty() {
            let mut names: Vec<_> = self.open.keys().map(|p| p.display().to_string()).collect();
            names.sort();
            names.truncate(5);
            bail!(
                "the stream ended with {} file(s) never closed ({}): the sender stopped mid-backup",
                self.open.len(),
                names.join(", ")
            );
        }
        let trailer = match self.trailer {
            TrailerState::Absent => None,
            TrailerState::Open { .. } => {
                bail!("the stream ended inside the end-of-stream entry")
            }
            TrailerState::Closed(t) => Some(t),
        };
        ensure!(
            !matches!(self.header, HeaderState::Open(_)),
            "the stream ended inside its opening entry"
        );
        Ok(Summary {
            bytes: self.input.pos,
            files: self.files,
            header: self.input.progress.header.get().cloned(),
            trailer,
        })
    }
}

/// Reads `len` payload bytes into pool buffers, hashing them, and submits each piece for
/// writing at `pos` onwards. The CRC is checked by the caller once the chunk is read: a
/// mismatch fails the whole extraction, so pieces already written do not matter.
fn copy_payload<R: Read>(
    input: &mut Input<R>,
    writers: &Writers,
    hasher: &mut crc32fast::Hasher,
    file: &Arc<OutFile>,
    mut pos: u64,
    mut len: u64,
) -> Result<()> {
    while len > 0 {
        let n = len.min(PIECE_LEN as u64) as usize;
        let mut buf = writers.buffer()?;
        let data = &mut buf.as_mut_slice()[..n];
        if let Err(e) = input.read_exact(data) {
            writers.release(buf);
            return Err(truncated(e));
        }
        hasher.update(data);
        writers.submit(file, pos, buf, n);
        pos += n as u64;
        len -= n as u64;
    }
    Ok(())
}

/// Appends one payload chunk of a small in-memory entry (opening or end-of-stream).
fn read_small_payload<R: Read>(
    input: &mut Input<R>,
    contents: &mut Vec<u8>,
    what: &str,
) -> Result<()> {
    let len = input.read_u64().map_err(truncated)?;
    let offset = input.read_u64().map_err(truncated)?;
    let crc = input.read_u32().map_err(truncated)?;
    ensure!(
        contents.len() as u64 + len <= MAX_TRAILER_LEN as u64,
        "{what} larger than {MAX_TRAILER_LEN} bytes"
    );
    ensure!(
        offset == contents.len() as u64,
        "out-of-order chunk in the {what}"
    );
    let old = contents.len();
    contents.resize(old + len as usize, 0);
    input.read_exact(&mut contents[old..]).map_err(truncated)?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&contents[old..]);
    check_crc(crc, hasher)
}

fn check_crc(expected: u32, hasher: crc32fast::Hasher) -> Result<()> {
    let computed = hasher.finalize();
    ensure!(
        computed == expected,
        "checksum mismatch: the chunk says {expected:#010x}, its payload hashes to {computed:#010x}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{Chunk, encode_file};
    use super::*;

    fn extract(flavor: Flavor, stream: &[u8]) -> (tempfile::TempDir, Result<Summary>) {
        let dir = tempfile::tempdir().unwrap();
        let result = Extractor::new(dir.path(), flavor)
            .with_trailer("END")
            .extract(stream);
        (dir, result)
    }

    fn err(flavor: Flavor, stream: &[u8]) -> String {
        let (_dir, result) = extract(flavor, stream);
        format!("{:#}", result.expect_err("stream accepted"))
    }

    fn read(dir: &tempfile::TempDir, path: &str) -> Vec<u8> {
        fs::read(dir.path().join(path)).unwrap()
    }

    fn payload<'a>(path: &'a str, offset: u64, data: &'a [u8]) -> Chunk<'a> {
        Chunk::Payload {
            path,
            flags: 0,
            offset,
            data,
        }
    }

    fn stream(chunks: &[Chunk]) -> Vec<u8> {
        let mut out = Vec::new();
        for c in chunks {
            c.encode(&mut out);
        }
        out
    }

    #[test]
    fn extracts_files_directories_and_empty_files() {
        let big: Vec<u8> = (0..25 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let mut s = Vec::new();
        encode_file("ibdata1", &big, &mut s);
        encode_file("db/t.ibd", b"table", &mut s);
        encode_file("a/b/c/deep", b"deep", &mut s);
        encode_file("empty", b"", &mut s);
        let (dir, summary) = extract(Flavor::MariaDb, &s);
        let summary = summary.unwrap();
        assert_eq!(summary.files, 4);
        assert_eq!(summary.bytes, s.len() as u64);
        assert!(summary.trailer.is_none());
        assert_eq!(read(&dir, "ibdata1"), big);
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
        let s = stream(&[
            payload("f", 0, head),
            payload("f", head.len() as u64, odd),
            payload("f", (head.len() + odd.len()) as u64, tail),
            Chunk::Eof { path: "f" },
        ]);
        for direct in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let summary = Extractor::new(dir.path(), Flavor::MariaDb)
                .with_direct_io(direct)
                .extract(&s[..])
                .unwrap();
            assert_eq!(summary.files, 1);
            assert!(read(&dir, "f") == data, "direct={direct}");
        }
    }

    #[test]
    fn interleaved_files_are_reassembled() {
        let s = stream(&[
            payload("x", 0, b"x1"),
            payload("y", 0, b"y1"),
            payload("x", 2, b"x2"),
            Chunk::Eof { path: "y" },
            payload("x", 4, b"x3"),
            Chunk::Eof { path: "x" },
        ]);
        let (dir, summary) = extract(Flavor::XtraBackup, &s);
        assert_eq!(summary.unwrap().files, 2);
        assert_eq!(read(&dir, "x"), b"x1x2x3");
        assert_eq!(read(&dir, "y"), b"y1");
    }

    #[test]
    fn empty_stream_is_an_empty_extraction() {
        let (_dir, summary) = extract(Flavor::MariaDb, b"");
        let summary = summary.unwrap();
        assert_eq!((summary.files, summary.bytes), (0, 0));
    }

    #[test]
    fn trailer_is_held_in_memory_and_must_be_last() {
        let mut s = Vec::new();
        encode_file("data", b"abc", &mut s);
        let offset = s.len() as u64;
        encode_file("END", b"status = ok\n", &mut s);
        let (dir, summary) = extract(Flavor::MariaDb, &s);
        let trailer = summary.unwrap().trailer.unwrap();
        assert_eq!(trailer.stream_offset, offset);
        assert_eq!(trailer.contents, b"status = ok\n");
        assert!(!dir.path().join("END").exists());

        encode_file("late", b"x", &mut s);
        assert!(err(Flavor::MariaDb, &s).contains("follows the end-of-stream entry"));

        let mut open = Vec::new();
        payload("END", 0, b"partial").encode(&mut open);
        assert!(err(Flavor::MariaDb, &open).contains("inside the end-of-stream entry"));
    }

    #[test]
    fn header_is_held_in_memory_only_as_the_first_entry() {
        let extract = |stream: &[u8]| {
            let dir = tempfile::tempdir().unwrap();
            let progress = Arc::new(Progress::default());
            let result = Extractor::new(dir.path(), Flavor::MariaDb)
                .with_header("INFO")
                .with_progress(Arc::clone(&progress))
                .extract(stream);
            (dir, progress, result)
        };
        let mut s = Vec::new();
        encode_file("INFO", b"estimated_bytes = 3\n", &mut s);
        encode_file("data", b"abc", &mut s);
        let (dir, progress, result) = extract(&s);
        assert_eq!(
            result.unwrap().header.as_deref(),
            Some(&b"estimated_bytes = 3\n"[..])
        );
        assert_eq!(progress.header(), Some(&b"estimated_bytes = 3\n"[..]));
        assert!(!dir.path().join("INFO").exists());

        // Optional: a stream from another donor has none.
        let mut plain = Vec::new();
        encode_file("data", b"abc", &mut plain);
        assert_eq!(extract(&plain).2.unwrap().header, None);

        // Anywhere else it is refused.
        let mut late = plain.clone();
        encode_file("INFO", b"x", &mut late);
        assert!(format!("{:#}", extract(&late).2.unwrap_err()).contains("comes late"));
        let mut cut = Vec::new();
        payload("INFO", 0, b"partial").encode(&mut cut);
        assert!(format!("{:#}", extract(&cut).2.unwrap_err()).contains("opening entry"));
    }

    #[test]
    fn refuses_truncation_anywhere() {
        let mut s = Vec::new();
        encode_file("f", &[7u8; 1000], &mut s);
        encode_file("g", b"second", &mut s);
        // A cut at every byte: inside a header, inside a payload, or at a chunk boundary
        // (which leaves a file unclosed). Only the full stream, or a cut exactly after the
        // first file's EOF chunk, is complete.
        let first_complete = s.len() - (14 + 1 + 20 + 6) - (14 + 1);
        for cut in 1..s.len() {
            let (_dir, result) = extract(Flavor::MariaDb, &s[..cut]);
            assert_eq!(result.is_ok(), cut == first_complete, "cut at {cut}");
        }
        let mid_payload = err(Flavor::MariaDb, &s[..500]);
        assert!(mid_payload.contains("truncated"), "{mid_payload}");
        let at_boundary = err(Flavor::MariaDb, &s[..first_complete + 14 + 1 + 20 + 6]);
        assert!(at_boundary.contains("never closed (g)"), "{at_boundary}");
    }

    #[test]
    fn refuses_crc_mismatch() {
        let mut s = Vec::new();
        encode_file("a.txt", b"hello\n", &mut s);
        s[0x27] ^= 0xff;
        let msg = err(Flavor::MariaDb, &s);
        assert!(msg.contains("checksum mismatch"), "{msg}");
        assert!(msg.contains("a.txt"), "{msg}");
    }

    #[test]
    fn refuses_hostile_paths() {
        for path in [
            "/etc/passwd",
            "../escape",
            "a/../../escape",
            ".hidden",
            "a//b",
        ] {
            let mut s = Vec::new();
            encode_file(path, b"x", &mut s);
            let (dir, result) = extract(Flavor::MariaDb, &s);
            let msg = format!("{:#}", result.unwrap_err());
            assert!(msg.contains("unsafe path"), "{path}: {msg}");
            assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        }
    }

    #[test]
    fn refuses_a_symlinked_parent() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        let mut s = Vec::new();
        encode_file("link/owned", b"x", &mut s);
        let result = Extractor::new(dir.path(), Flavor::MariaDb).extract(&s[..]);
        assert!(format!("{:#}", result.unwrap_err()).contains("not a directory"));
        assert!(!outside.path().join("owned").exists());
    }

    #[test]
    fn refuses_plain_text_and_oversized_fields() {
        let msg = err(Flavor::MariaDb, b"ERROR 1045 (28000): Access denied\n");
        assert!(msg.contains("not an xbstream"), "{msg}");

        let mut s = Vec::new();
        encode_file("ok", b"x", &mut s);
        s.extend_from_slice(b"garbage!garbage!");
        assert!(err(Flavor::MariaDb, &s).contains("bad chunk magic"));

        let mut huge_path = MAGIC.to_vec();
        huge_path.extend_from_slice(&[0, b'P']);
        huge_path.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(err(Flavor::MariaDb, &huge_path).contains("declares a path of"));

        // A 2^63-byte payload must be refused from its header, not allocated or awaited.
        let mut huge_len = Vec::new();
        payload("f", 0, b"").encode(&mut huge_len);
        huge_len[15..23].copy_from_slice(&(1u64 << 63).to_le_bytes());
        assert!(err(Flavor::MariaDb, &huge_len).contains("exceeds"));

        let mut huge_map = Vec::new();
        Chunk::Sparse {
            path: "f",
            offset: 0,
            map: &[],
            data: b"",
        }
        .encode(&mut huge_map);
        huge_map[15..19].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(err(Flavor::XtraBackup, &huge_map).contains("sparse map"));
    }

    #[test]
    fn unknown_types_are_skipped_only_when_ignorable() {
        let ignorable = stream(&[
            Chunk::Other {
                path: "meta",
                kind: b'X',
                flags: FLAG_IGNORABLE,
                data: b"skip me",
            },
            payload("f", 0, b"kept"),
            Chunk::Eof { path: "f" },
        ]);
        let (dir, summary) = extract(Flavor::MariaDb, &ignorable);
        assert_eq!(summary.unwrap().files, 1);
        assert!(!dir.path().join("meta").exists());

        let fatal = stream(&[Chunk::Other {
            path: "meta",
            kind: b'X',
            flags: 0,
            data: b"",
        }]);
        assert!(err(Flavor::MariaDb, &fatal).contains("unknown chunk type"));
        // MariaDB's remove and rename types mean nothing in an XtraBackup stream.
        let remove = stream(&[Chunk::Remove { path: "f" }]);
        assert!(err(Flavor::XtraBackup, &remove).contains("unknown chunk type"));
    }

    #[test]
    fn refuses_a_file_sent_twice_and_out_of_order_chunks() {
        let mut twice = Vec::new();
        encode_file("f", b"one", &mut twice);
        encode_file("f", b"two", &mut twice);
        assert!(err(Flavor::MariaDb, &twice).contains("sent twice"));

        let gap = stream(&[payload("f", 0, b"ab"), payload("f", 5, b"cd")]);
        assert!(err(Flavor::MariaDb, &gap).contains("out-of-order"));
    }

    #[test]
    fn mariadb_rewrite_seek_remove_and_rename() {
        let s = stream(&[
            // A table copied, then copied again after concurrent DDL (flag 0x02).
            payload("db/t.frm", 0, b"old-definition"),
            Chunk::Eof { path: "db/t.frm" },
            Chunk::Payload {
                path: "db/t.frm",
                flags: FLAG_MARIADB_REWRITE,
                offset: 0,
                data: b"new",
            },
            Chunk::Eof { path: "db/t.frm" },
            // Aria log header patched through a seek.
            payload("aria_log", 0, b"hello"),
            Chunk::Seek {
                path: "aria_log",
                offset: 1,
            },
            payload("aria_log", 1, b"EY"),
            Chunk::Eof { path: "aria_log" },
            Chunk::Eof { path: "db/gone" },
            Chunk::Remove { path: "db/gone" },
            Chunk::Eof { path: "db/t.new" },
            Chunk::Rename {
                path: "db/t.new",
                new_path: "db2/t.ibd",
            },
        ]);
        let (dir, summary) = extract(Flavor::MariaDb, &s);
        summary.unwrap();
        assert_eq!(read(&dir, "db/t.frm"), b"new");
        assert_eq!(read(&dir, "aria_log"), b"hEYlo");
        assert!(!dir.path().join("db/gone").exists());
        assert!(!dir.path().join("db/t.new").exists());
        assert_eq!(read(&dir, "db2/t.ibd"), b"");
    }

    #[test]
    fn xtrabackup_sparse_chunks_with_a_trailing_hole() {
        let s = stream(&[
            payload("t.ibd", 0, b"head"),
            Chunk::Sparse {
                path: "t.ibd",
                offset: 4,
                map: &[(2, 3), (4, 1), (6, 0)],
                data: b"abcZ",
            },
            Chunk::Eof { path: "t.ibd" },
        ]);
        let (dir, summary) = extract(Flavor::XtraBackup, &s);
        summary.unwrap();
        assert_eq!(read(&dir, "t.ibd"), b"head\0\0abc\0\0\0\0Z\0\0\0\0\0\0");

        let mut bad_crc = s.clone();
        let last_data = bad_crc.len() - (14 + 5) - 1;
        bad_crc[last_data] ^= 1;
        assert!(err(Flavor::XtraBackup, &bad_crc).contains("checksum mismatch"));
    }

    #[test]
    fn cancellation_stops_between_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let cancel = CancellationToken::new();
        cancel.cancel();
        let mut s = Vec::new();
        encode_file("f", b"x", &mut s);
        let result = Extractor::new(dir.path(), Flavor::MariaDb)
            .with_cancel(cancel)
            .extract(&s[..]);
        assert!(format!("{:#}", result.unwrap_err()).contains("cancelled"));
    }
}
