//! Decoding an xbstream: bytes in, file operations out (to a [`Sink`]), with the checks
//! `xbstream -x` and `mbstream -x` skip: every chunk's CRC, every file closed by its EOF
//! chunk, paths confined, sizes and offsets bounded, and optional opening and end-of-stream
//! entries held in memory.
//!
//! The decoder touches no file system: the sink decides what a file is (a directory writer
//! for a clone, memory for metadata and tests), so the same checks guard a peer's stream and
//! a stored backup, and the decoder can be fuzzed alone.
//!
//! Every size and offset read from the stream is checked before it is used: arithmetic here
//! never overflows, and a hostile stream ends in an error, never a panic or an allocation it
//! chose.
#![deny(clippy::arithmetic_side_effects)]

use std::collections::HashMap;
use std::io::{self, BufReader, ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result, anyhow, bail, ensure};
use tokio_util::sync::CancellationToken;

use super::{
    FLAG_IGNORABLE, FLAG_MARIADB_REWRITE, Flavor, MAGIC, MAX_PATH_LEN, MAX_PAYLOAD_LEN, PREFIX_LEN,
    TYPE_EOF, TYPE_PAYLOAD, TYPE_REMOVE, TYPE_RENAME, TYPE_SPARSE_OR_SEEK, sanitize_path,
};

/// Read-ahead for chunk headers; payload reads larger than this bypass it.
const READ_AHEAD_LEN: usize = 256 * 1024;
/// A sparse chunk of 10 MiB has at most a few thousand holes; a larger map is corrupt.
const MAX_SPARSE_ENTRIES: u32 = 1 << 20;
/// The opening and end-of-stream entries are a few lines of text.
pub const MAX_ENTRY_LEN: usize = 64 * 1024;
/// Files open at once. The tools interleave as many files as they copy in parallel (a few,
/// at most dozens); more is a hostile stream holding descriptors and memory.
pub const MAX_OPEN_FILES: usize = 1024;
/// Payload of unknown chunk types marked ignorable, over the whole stream. Real backups
/// carry none; without a bound a donor could stream them forever and write nothing.
pub const MAX_IGNORED_BYTES: u64 = 64 << 20;
/// The largest file offset a write may reach (what `pwrite` takes).
const MAX_FILE_OFFSET: u64 = i64::MAX as u64;

/// Counters another thread can read while decoding runs (for progress lines).
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

/// The end-of-stream entry, held in memory rather than handed to the sink.
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

/// Where decoded files go. Calls for one file come in order: `create`, then `write`s (with
/// `seek` before any that may overlap earlier bytes), then `close`; `remove` and `rename` only
/// name closed files.
pub trait Sink {
    /// A file's first chunk arrived: create it empty. Without `rewrite`, a file that already
    /// exists is an error (sent twice); with it (MariaDB's fresh copy after concurrent DDL),
    /// it is truncated.
    fn create(&mut self, path: &Path, rewrite: bool) -> Result<()>;
    /// `data.remaining()` bytes of `path` starting at `offset`. The sink reads them from
    /// `data`; whatever it leaves is read and checked by the decoder.
    fn write(&mut self, path: &Path, offset: u64, data: &mut Payload<'_>) -> Result<()>;
    /// The writes that follow may overwrite earlier bytes of `path`.
    fn seek(&mut self, path: &Path) -> Result<()>;
    /// `path` is complete; with `extend_to`, its last bytes are a hole up to that length.
    fn close(&mut self, path: &Path, extend_to: Option<u64>) -> Result<()>;
    fn remove(&mut self, path: &Path) -> Result<()>;
    fn rename(&mut self, from: &Path, to: &Path) -> Result<()>;
    /// The stream ended: everything must be durable or reported.
    fn finish(&mut self) -> Result<()>;
}

/// One chunk's payload bytes, read from the stream as the sink asks for them; every byte
/// passes through the chunk's checksum.
pub struct Payload<'a> {
    input: &'a mut dyn Read,
    remaining: u64,
    crc: &'a mut crc32fast::Hasher,
}

impl Payload<'_> {
    /// Bytes of this payload not read yet.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Reads (and checks) the rest without keeping it.
    pub fn skip(&mut self) -> io::Result<()> {
        let mut scratch = [0u8; 64 * 1024];
        while self.remaining > 0 {
            let want = usize::try_from(self.remaining)
                .unwrap_or(usize::MAX)
                .min(scratch.len());
            self.read_exact(&mut scratch[..want])?;
        }
        Ok(())
    }
}

impl Read for Payload<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        if want == 0 {
            return Ok(0);
        }
        let n = self.input.read(&mut buf[..want])?;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        self.crc.update(&buf[..n]);
        self.remaining = self.remaining.saturating_sub(n as u64);
        Ok(n)
    }
}

/// Derives, from the opening entry's contents, the most bytes a whole stream may carry.
pub type LimitFromHeader = fn(&[u8]) -> Option<u64>;

/// Decodes one stream. Build it, then call [`Decoder::decode`].
pub struct Decoder {
    flavor: Flavor,
    header_path: Option<PathBuf>,
    trailer_path: Option<PathBuf>,
    limit_from_header: Option<LimitFromHeader>,
    progress: Arc<Progress>,
    cancel: CancellationToken,
}

impl Decoder {
    pub fn new(flavor: Flavor) -> Self {
        Self {
            flavor,
            header_path: None,
            trailer_path: None,
            limit_from_header: None,
            progress: Arc::default(),
            cancel: CancellationToken::new(),
        }
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

    /// Once the opening entry has arrived, `limit` may derive from it the most bytes the
    /// whole stream may carry: a sender cannot stream far beyond what it announced.
    pub fn with_limit_from_header(mut self, limit: LimitFromHeader) -> Self {
        self.limit_from_header = Some(limit);
        self
    }

    pub fn with_progress(mut self, progress: Arc<Progress>) -> Self {
        self.progress = progress;
        self
    }

    /// Checked between chunks; a blocked read is the caller's to interrupt.
    pub fn with_cancel(mut self, cancel: CancellationToken) -> Self {
        self.cancel = cancel;
        self
    }

    /// Reads `reader` to its end, handing every file operation to `sink`, then finishes the
    /// sink. Any error ends decoding; what the sink did so far is the caller's to discard.
    pub fn decode<R: Read, S: Sink>(self, reader: R, sink: &mut S) -> Result<Summary> {
        let mut run = Run {
            input: Input {
                inner: BufReader::with_capacity(READ_AHEAD_LEN, reader),
                pos: 0,
                limit: u64::MAX,
                progress: Arc::clone(&self.progress),
            },
            de: &self,
            sink,
            open: HashMap::new(),
            files: 0,
            ignored: 0,
            header: HeaderState::Expected,
            trailer: TrailerState::Absent,
        };
        run.all_chunks()?;
        run.finish()
    }
}

struct Input<R> {
    inner: BufReader<R>,
    pos: u64,
    /// Reading past this many bytes is an error.
    limit: u64,
    progress: Arc<Progress>,
}

impl<R: Read> Read for Input<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos = self.pos.saturating_add(n as u64);
        if self.pos > self.limit {
            return Err(io::Error::other(format!(
                "the stream exceeds {} bytes, far more than its sender announced",
                self.limit
            )));
        }
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
                Ok(n) => filled = filled.saturating_add(n),
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

/// Where a file being decoded stands.
struct OpenFile {
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

struct Run<'a, R, S> {
    input: Input<R>,
    de: &'a Decoder,
    sink: &'a mut S,
    open: HashMap<PathBuf, OpenFile>,
    files: u64,
    ignored: u64,
    header: HeaderState,
    trailer: TrailerState,
}

/// `offset + len` when the result is a valid file offset.
fn file_end(offset: u64, len: u64) -> Result<u64> {
    offset
        .checked_add(len)
        .filter(|end| *end <= MAX_FILE_OFFSET)
        .with_context(|| {
            format!("offset {offset} plus {len} bytes runs past the largest file offset")
        })
}

impl<R: Read, S: Sink> Run<'_, R, S> {
    fn all_chunks(&mut self) -> Result<()> {
        loop {
            if self.de.cancel.is_cancelled() {
                bail!("decoding cancelled");
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
            let (magic, rest) = prefix.split_at(MAGIC.len());
            if magic != MAGIC {
                if start == 0 {
                    bail!(
                        "not an xbstream: it starts with {:?} instead of {:?}",
                        String::from_utf8_lossy(&prefix),
                        String::from_utf8_lossy(MAGIC)
                    );
                }
                bail!("bad chunk magic at stream offset {start}: the stream is corrupt");
            }
            let (flags, kind) = (rest[0], rest[1]);
            let path_len = u32::from_le_bytes([rest[2], rest[3], rest[4], rest[5]]);
            let path_len = usize::try_from(path_len).unwrap_or(usize::MAX);
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
        let is_header = self.de.header_path.as_deref() == Some(path);
        match std::mem::replace(&mut self.header, HeaderState::Done) {
            HeaderState::Expected | HeaderState::Open(_) if !is_header => {}
            HeaderState::Expected => return self.header_chunk(kind, Vec::new()),
            HeaderState::Open(contents) => return self.header_chunk(kind, contents),
            HeaderState::Done if is_header => bail!("the stream's opening entry comes late"),
            HeaderState::Done => {}
        }
        let is_trailer = self.de.trailer_path.as_deref() == Some(path);
        let mariadb = self.de.flavor == Flavor::MariaDb;
        let rewrite = mariadb && flags & FLAG_MARIADB_REWRITE != 0;
        match kind {
            TYPE_PAYLOAD | TYPE_EOF if is_trailer => self.trailer_chunk(start, kind),
            _ if is_trailer => bail!("unexpected chunk type for the end-of-stream entry"),
            TYPE_PAYLOAD => self.payload(path, rewrite),
            TYPE_EOF => self.eof(path, rewrite),
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

    /// Hands `len` payload bytes of `path` at `offset` to the sink, hashing them into `crc`.
    fn write(
        &mut self,
        path: &Path,
        offset: u64,
        len: u64,
        crc: &mut crc32fast::Hasher,
    ) -> Result<()> {
        let mut payload = Payload {
            input: &mut self.input,
            remaining: len,
            crc,
        };
        self.sink.write(path, offset, &mut payload).map_err(|e| {
            match e.downcast_ref::<io::Error>() {
                // The sink read past the stream's end: the chunk was cut.
                Some(io) if io.kind() == ErrorKind::UnexpectedEof => {
                    truncated(ErrorKind::UnexpectedEof.into())
                }
                _ => e,
            }
        })?;
        payload.skip().map_err(truncated)
    }

    fn payload(&mut self, path: &Path, rewrite: bool) -> Result<()> {
        let (len, offset, crc) = self.payload_header()?;
        let end = file_end(offset, len)?;
        let mut file = self.take_file(path, rewrite, offset)?;
        let mut hasher = crc32fast::Hasher::new();
        self.write(path, offset, len, &mut hasher)?;
        check_crc(crc, hasher)?;
        file.next = end;
        file.end = file.end.max(end);
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
        let mut map = vec![0u8; usize::try_from(entries).unwrap_or(0).saturating_mul(8)];
        self.input.read_exact(&mut map).map_err(truncated)?;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&map);
        let holes: Vec<(u64, u64)> = map
            .chunks_exact(8)
            .map(|e| {
                let skip = u32::from_le_bytes([e[0], e[1], e[2], e[3]]);
                let len = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
                (u64::from(skip), u64::from(len))
            })
            .collect();
        // At most 2^20 entries of at most 2^32 bytes each: the sum fits in a u64.
        let mapped = holes
            .iter()
            .fold(0u64, |sum, &(_, l)| sum.saturating_add(l));
        ensure!(
            mapped == len,
            "sparse map covers {mapped} bytes but the chunk carries {len}"
        );
        let mut file = self.take_file(path, false, offset)?;
        let mut pos = offset;
        for (skip, piece) in holes {
            pos = file_end(pos, skip).context("a sparse hole")?;
            let piece_end = file_end(pos, piece)?;
            self.write(path, pos, piece, &mut hasher)?;
            pos = piece_end;
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
        ensure!(
            offset <= MAX_FILE_OFFSET,
            "seek to {offset}, past the largest file offset"
        );
        let file = self
            .open
            .get_mut(path)
            .context("seek on a file that is not open")?;
        file.next = offset;
        self.sink.seek(path)
    }

    fn eof(&mut self, path: &Path, rewrite: bool) -> Result<()> {
        // A file with no payload chunk (an empty file) is announced by its EOF chunk alone.
        self.open_file(path, rewrite)?;
        let file = self.open.remove(path).context("the file vanished")?;
        let extend_to = (file.end < file.next).then_some(file.next);
        self.sink.close(path, extend_to)?;
        self.files = self.files.saturating_add(1);
        self.input.progress.files.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn remove(&mut self, path: &Path) -> Result<()> {
        ensure!(
            !self.open.contains_key(path),
            "remove of a file that is still open"
        );
        self.sink.remove(path)
    }

    fn rename(&mut self, path: &Path) -> Result<()> {
        let len = self.input.read_u32().map_err(truncated)?;
        let len = usize::try_from(len).unwrap_or(usize::MAX);
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
        self.sink.rename(path, &new_path)
    }

    fn skip(&mut self) -> Result<()> {
        let (len, _, _) = self.payload_header()?;
        self.ignored = self.ignored.saturating_add(len);
        ensure!(
            self.ignored <= MAX_IGNORED_BYTES,
            "more than {MAX_IGNORED_BYTES} bytes of ignorable chunks: not a backup"
        );
        let mut crc = crc32fast::Hasher::new();
        Payload {
            input: &mut self.input,
            remaining: len,
            crc: &mut crc,
        }
        .skip()
        .map_err(truncated)
    }

    fn trailer_chunk(&mut self, start: u64, kind: u8) -> Result<()> {
        let (stream_offset, mut contents) =
            match std::mem::replace(&mut self.trailer, TrailerState::Absent) {
                TrailerState::Absent => (start, Vec::new()),
                TrailerState::Open {
                    stream_offset,
                    contents,
                } => (stream_offset, contents),
                TrailerState::Closed(_) => bail!("data follows the end-of-stream entry"),
            };
        if kind == TYPE_EOF {
            self.trailer = TrailerState::Closed(Trailer {
                stream_offset,
                contents,
            });
            return Ok(());
        }
        read_small_payload(&mut self.input, &mut contents, "end-of-stream entry")?;
        self.trailer = TrailerState::Open {
            stream_offset,
            contents,
        };
        Ok(())
    }

    /// One chunk of the opening entry, whose content so far is `contents`.
    fn header_chunk(&mut self, kind: u8, mut contents: Vec<u8>) -> Result<()> {
        match kind {
            TYPE_EOF => {
                if let Some(limit) = self.de.limit_from_header.and_then(|f| f(&contents)) {
                    self.input.limit = limit.max(self.input.pos);
                }
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
        let file = self.open.remove(path).context("the file vanished")?;
        ensure!(
            offset == file.next,
            "out-of-order chunk: offset {offset}, expected {}",
            file.next
        );
        Ok(file)
    }

    /// Opens `path` for its first chunk; the sink refuses a file sent twice unless MariaDB's
    /// rewrite flag says this is a fresh copy.
    fn open_file(&mut self, path: &Path, rewrite: bool) -> Result<()> {
        if self.open.contains_key(path) {
            return Ok(());
        }
        ensure!(
            self.open.len() < MAX_OPEN_FILES,
            "more than {MAX_OPEN_FILES} files open at once: not a backup tool's stream"
        );
        self.sink.create(path, rewrite)?;
        self.open
            .insert(path.to_owned(), OpenFile { next: 0, end: 0 });
        Ok(())
    }

    fn finish(self) -> Result<Summary> {
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
        self.sink.finish()?;
        Ok(Summary {
            bytes: self.input.pos,
            files: self.files,
            header: self.input.progress.header.get().cloned(),
            trailer,
        })
    }
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
    let old = contents.len();
    let new_len = usize::try_from(len)
        .ok()
        .and_then(|len| old.checked_add(len))
        .filter(|n| *n <= MAX_ENTRY_LEN)
        .with_context(|| format!("{what} larger than {MAX_ENTRY_LEN} bytes"))?;
    ensure!(offset == old as u64, "out-of-order chunk in the {what}");
    contents.resize(new_len, 0);
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
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::super::{Chunk, MemorySink, encode_file};
    use super::*;

    fn decode(flavor: Flavor, stream: &[u8]) -> (MemorySink, Result<Summary>) {
        let mut sink = MemorySink::all(1 << 30);
        let result = Decoder::new(flavor)
            .with_trailer("END")
            .decode(stream, &mut sink);
        (sink, result)
    }

    fn err(flavor: Flavor, stream: &[u8]) -> String {
        let (_sink, result) = decode(flavor, stream);
        format!("{:#}", result.expect_err("stream accepted"))
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
    fn decodes_files_directories_and_empty_files() {
        let big: Vec<u8> = (0..25 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let mut s = Vec::new();
        encode_file("ibdata1", &big, &mut s);
        encode_file("db/t.ibd", b"table", &mut s);
        encode_file("empty", b"", &mut s);
        let (sink, summary) = decode(Flavor::MariaDb, &s);
        let summary = summary.unwrap();
        assert_eq!(summary.files, 3);
        assert_eq!(summary.bytes, s.len() as u64);
        assert!(summary.trailer.is_none());
        assert!(sink.file("ibdata1").unwrap() == big);
        assert_eq!(sink.file("db/t.ibd").unwrap(), b"table");
        assert_eq!(sink.file("empty").unwrap(), b"");
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
        let (sink, summary) = decode(Flavor::XtraBackup, &s);
        assert_eq!(summary.unwrap().files, 2);
        assert_eq!(sink.file("x").unwrap(), b"x1x2x3");
        assert_eq!(sink.file("y").unwrap(), b"y1");
    }

    #[test]
    fn empty_stream_is_an_empty_decoding() {
        let (_sink, summary) = decode(Flavor::MariaDb, b"");
        let summary = summary.unwrap();
        assert_eq!((summary.files, summary.bytes), (0, 0));
    }

    #[test]
    fn trailer_is_held_in_memory_and_must_be_last() {
        let mut s = Vec::new();
        encode_file("data", b"abc", &mut s);
        let offset = s.len() as u64;
        encode_file("END", b"status = ok\n", &mut s);
        let (sink, summary) = decode(Flavor::MariaDb, &s);
        let trailer = summary.unwrap().trailer.unwrap();
        assert_eq!(trailer.stream_offset, offset);
        assert_eq!(trailer.contents, b"status = ok\n");
        assert!(sink.file("END").is_none());

        encode_file("late", b"x", &mut s);
        assert!(err(Flavor::MariaDb, &s).contains("follows the end-of-stream entry"));

        let mut open = Vec::new();
        payload("END", 0, b"partial").encode(&mut open);
        assert!(err(Flavor::MariaDb, &open).contains("inside the end-of-stream entry"));
    }

    fn with_header(stream: &[u8]) -> (MemorySink, Arc<Progress>, Result<Summary>) {
        let mut sink = MemorySink::all(1 << 20);
        let progress = Arc::new(Progress::default());
        let result = Decoder::new(Flavor::MariaDb)
            .with_header("INFO")
            .with_trailer("END")
            .with_limit_from_header(|h| std::str::from_utf8(h).ok()?.trim().parse().ok())
            .with_progress(Arc::clone(&progress))
            .decode(stream, &mut sink);
        (sink, progress, result)
    }

    #[test]
    fn header_is_held_in_memory_only_as_the_first_entry() {
        let mut s = Vec::new();
        encode_file("INFO", b"1000\n", &mut s);
        encode_file("data", b"abc", &mut s);
        let (sink, progress, result) = with_header(&s);
        assert_eq!(result.unwrap().header.as_deref(), Some(&b"1000\n"[..]));
        assert_eq!(progress.header(), Some(&b"1000\n"[..]));
        assert!(sink.file("INFO").is_none());

        // Optional: a stream from another donor has none.
        let mut plain = Vec::new();
        encode_file("data", b"abc", &mut plain);
        assert_eq!(with_header(&plain).2.unwrap().header, None);

        // Anywhere else it is refused.
        let mut late = plain.clone();
        encode_file("INFO", b"x", &mut late);
        assert!(format!("{:#}", with_header(&late).2.unwrap_err()).contains("comes late"));
        let mut cut = Vec::new();
        payload("INFO", 0, b"partial").encode(&mut cut);
        assert!(format!("{:#}", with_header(&cut).2.unwrap_err()).contains("opening entry"));
    }

    /// The sender's announcement bounds the stream: past it, decoding stops.
    #[test]
    fn a_stream_beyond_what_its_header_announced_is_refused() {
        let mut s = Vec::new();
        encode_file("INFO", b"300\n", &mut s);
        encode_file("small", &[1u8; 100], &mut s);
        assert!(with_header(&s).2.is_ok());
        encode_file("more", &[2u8; 400], &mut s);
        let msg = format!("{:#}", with_header(&s).2.unwrap_err());
        assert!(msg.contains("exceeds 300 bytes"), "{msg}");
    }

    /// The opening and closing entries' small-payload path: a length near 2^64 after a
    /// first chunk must be refused, not overflow.
    #[test]
    fn entry_lengths_near_the_top_of_u64_are_refused() {
        for name in ["INFO", "END"] {
            let mut s = Vec::new();
            if name == "END" {
                encode_file("data", b"abc", &mut s);
            }
            payload(name, 0, b"x").encode(&mut s);
            let mut evil = Vec::new();
            payload(name, 1, b"").encode(&mut evil);
            let len_at = 14 + name.len();
            evil[len_at..len_at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
            s.extend_from_slice(&evil);
            let msg = format!("{:#}", with_header(&s).2.unwrap_err());
            assert!(msg.contains("larger than"), "{name}: {msg}");
        }
    }

    /// Offsets and lengths whose sum passes 2^64 (a MariaDB seek near the top, then a
    /// payload; a payload offset near the top; a sparse hole) are refused.
    #[test]
    fn offsets_that_would_overflow_are_refused() {
        let seek = stream(&[
            payload("f", 0, b"ab"),
            Chunk::Seek {
                path: "f",
                offset: u64::MAX - 1,
            },
            payload("f", u64::MAX - 1, b"cdef"),
        ]);
        assert!(err(Flavor::MariaDb, &seek).contains("largest file offset"));
        let high = stream(&[payload("f", u64::MAX - 1, b"cdef")]);
        let msg = err(Flavor::XtraBackup, &high);
        assert!(msg.contains("largest file offset"), "{msg}");
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
            let (_sink, result) = decode(Flavor::MariaDb, &s[..cut]);
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
            let (sink, result) = decode(Flavor::MariaDb, &s);
            let msg = format!("{:#}", result.unwrap_err());
            assert!(msg.contains("unsafe path"), "{path}: {msg}");
            assert!(sink.files().is_empty());
        }
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
    fn unknown_types_are_skipped_only_when_ignorable_and_bounded() {
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
        let (sink, summary) = decode(Flavor::MariaDb, &ignorable);
        assert_eq!(summary.unwrap().files, 1);
        assert!(sink.file("meta").is_none());

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

        // Endless ignorable chunks write nothing and would never end: they are bounded.
        let piece = vec![0u8; 1 << 20];
        let flood: Vec<Chunk> = (0..(MAX_IGNORED_BYTES >> 20) + 1)
            .map(|_| Chunk::Other {
                path: "meta",
                kind: b'X',
                flags: FLAG_IGNORABLE,
                data: &piece,
            })
            .collect();
        assert!(err(Flavor::MariaDb, &stream(&flood)).contains("ignorable"));
    }

    #[test]
    fn refuses_a_file_sent_twice_out_of_order_chunks_and_too_many_open_files() {
        let mut twice = Vec::new();
        encode_file("f", b"one", &mut twice);
        encode_file("f", b"two", &mut twice);
        assert!(err(Flavor::MariaDb, &twice).contains("sent twice"));

        let gap = stream(&[payload("f", 0, b"ab"), payload("f", 5, b"cd")]);
        assert!(err(Flavor::MariaDb, &gap).contains("out-of-order"));

        let names: Vec<String> = (0..=MAX_OPEN_FILES).map(|i| format!("f{i}")).collect();
        let opened: Vec<Chunk> = names.iter().map(|n| payload(n, 0, b"x")).collect();
        assert!(err(Flavor::MariaDb, &stream(&opened)).contains("files open at once"));
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
        let (sink, summary) = decode(Flavor::MariaDb, &s);
        summary.unwrap();
        assert_eq!(sink.file("db/t.frm").unwrap(), b"new");
        assert_eq!(sink.file("aria_log").unwrap(), b"hEYlo");
        assert!(sink.file("db/gone").is_none());
        assert!(sink.file("db/t.new").is_none());
        assert_eq!(sink.file("db2/t.ibd").unwrap(), b"");
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
        let (sink, summary) = decode(Flavor::XtraBackup, &s);
        summary.unwrap();
        assert_eq!(
            sink.file("t.ibd").unwrap(),
            b"head\0\0abc\0\0\0\0Z\0\0\0\0\0\0"
        );

        let mut bad_crc = s.clone();
        let last_data = bad_crc.len() - (14 + 5) - 1;
        bad_crc[last_data] ^= 1;
        assert!(err(Flavor::XtraBackup, &bad_crc).contains("checksum mismatch"));
    }

    #[test]
    fn cancellation_stops_between_chunks() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        let mut s = Vec::new();
        encode_file("f", b"x", &mut s);
        let result = Decoder::new(Flavor::MariaDb)
            .with_cancel(cancel)
            .decode(&s[..], &mut MemorySink::all(1024));
        assert!(format!("{:#}", result.unwrap_err()).contains("cancelled"));
    }
}
