//! The xbstream archive format written by `xtrabackup --stream` and `mariadb-backup --stream`.
//!
//! A stream is a bare concatenation of chunks with no header or trailer, so a stream cut at a
//! chunk boundary looks complete to `xbstream -x`; the decoder here checks what the format
//! cannot (see [`Decoder`]), and hands files to a [`Sink`]: a directory ([`DirSink`]) or memory
//! ([`MemorySink`]). Layouts and the two incompatible flavors are described in
//! `shared/reference/formats.md` §1.

mod decode;
mod dir;
mod memory;
mod write;

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail, ensure};

pub use decode::{
    Decoder, MAX_ENTRY_LEN, MAX_IGNORED_BYTES, MAX_OPEN_FILES, Payload, Progress, Sink, Summary,
    Trailer,
};
pub use dir::DirSink;
pub use memory::MemorySink;

pub const MAGIC: &[u8; 8] = b"XBSTCK01";
/// magic(8) + flags(1) + type(1) + path length(4).
pub const PREFIX_LEN: usize = 14;
/// Both tools refuse `path_len >= FN_REFLEN` (512).
pub const MAX_PATH_LEN: usize = 511;
/// The writers emit payloads of at most a few tens of MiB; anything far larger is a corrupt or
/// hostile length field, refused before any read is attempted.
pub const MAX_PAYLOAD_LEN: u64 = 1 << 30;
/// The writers buffer this much per file before emitting a payload chunk.
pub const WRITER_CHUNK_SIZE: usize = 10 * 1024 * 1024;

/// An unknown chunk type with this flag may be skipped; without it the stream is unreadable.
pub const FLAG_IGNORABLE: u8 = 0x01;
/// MariaDB only: this payload starts a fresh copy of a file already sent (DDL during backup).
/// In Percona's trunk the same bit is an xbcloud hint with no meaning for extraction.
pub const FLAG_MARIADB_REWRITE: u8 = 0x02;

pub const TYPE_PAYLOAD: u8 = b'P';
pub const TYPE_EOF: u8 = b'E';
/// Percona XtraBackup 8.0: a payload with a hole map. MariaDB: set the write position.
pub const TYPE_SPARSE_OR_SEEK: u8 = b'S';
/// MariaDB only: delete a file already extracted.
pub const TYPE_REMOVE: u8 = b'D';
/// MariaDB only: rename a file already extracted.
pub const TYPE_RENAME: u8 = b'R';

/// Which tool wrote the stream. The formats share magic, `P`, `E` and CRC but give `S` two
/// different layouts, so the extractor is told, never guesses from the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    XtraBackup,
    MariaDb,
}

/// Decodes `reader` with `decoder` into the directory `target`, which must exist.
pub fn extract(decoder: Decoder, target: &Path, reader: impl Read) -> Result<Summary> {
    let mut sink = DirSink::new(target)?;
    decoder.decode(reader, &mut sink)
}

/// Turns a path from the stream into a relative path that cannot leave the target directory.
///
/// Stricter than both extractors: no empty, `.`-prefixed (which covers `.` and `..`) or
/// NUL-containing component, no leading `/`. MariaDB's mbstream already refuses `.`-prefixed
/// names, so no real backup carries one; the agent's own state files rely on that.
pub fn sanitize_path(raw: &[u8]) -> Result<PathBuf> {
    ensure!(!raw.is_empty(), "empty path");
    ensure!(
        raw.len() <= MAX_PATH_LEN,
        "path of {} bytes exceeds the {MAX_PATH_LEN}-byte limit",
        raw.len()
    );
    let shown = String::from_utf8_lossy(raw);
    ensure!(!raw.contains(&0), "path {shown:?} contains a NUL byte");
    ensure!(raw[0] != b'/', "absolute path {shown:?}");
    let mut path = PathBuf::new();
    for component in raw.split(|&b| b == b'/') {
        if component.is_empty() {
            bail!("path {shown:?} has an empty component");
        }
        if component[0] == b'.' {
            bail!("path {shown:?} has a component starting with '.'");
        }
        path.push(OsStr::from_bytes(component));
    }
    Ok(path)
}

/// One chunk, for writing streams: the agent's end-of-stream entry, and test streams.
#[derive(Debug, Clone)]
pub enum Chunk<'a> {
    Payload {
        path: &'a str,
        flags: u8,
        offset: u64,
        data: &'a [u8],
    },
    Eof {
        path: &'a str,
    },
    /// XtraBackup 8.0 sparse payload: `map` is (skip, len) pairs, `data` the concatenated lens.
    Sparse {
        path: &'a str,
        offset: u64,
        map: &'a [(u32, u32)],
        data: &'a [u8],
    },
    /// MariaDB seek.
    Seek {
        path: &'a str,
        offset: u64,
    },
    Remove {
        path: &'a str,
    },
    Rename {
        path: &'a str,
        new_path: &'a str,
    },
    /// Any type byte with the payload layout, as readers assume for unknown ignorable chunks.
    Other {
        path: &'a str,
        kind: u8,
        flags: u8,
        data: &'a [u8],
    },
}

impl Chunk<'_> {
    pub fn encode(&self, out: &mut Vec<u8>) {
        let prefix = |out: &mut Vec<u8>, flags: u8, kind: u8, path: &str| {
            out.extend_from_slice(MAGIC);
            out.push(flags);
            out.push(kind);
            out.extend_from_slice(&(path.len() as u32).to_le_bytes());
            out.extend_from_slice(path.as_bytes());
        };
        let payload = |out: &mut Vec<u8>, offset: u64, data: &[u8]| {
            out.extend_from_slice(&(data.len() as u64).to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            out.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
            out.extend_from_slice(data);
        };
        match *self {
            Chunk::Payload {
                path,
                flags,
                offset,
                data,
            } => {
                prefix(out, flags, TYPE_PAYLOAD, path);
                payload(out, offset, data);
            }
            Chunk::Eof { path } => prefix(out, 0, TYPE_EOF, path),
            Chunk::Sparse {
                path,
                offset,
                map,
                data,
            } => {
                prefix(out, 0, TYPE_SPARSE_OR_SEEK, path);
                let map_bytes: Vec<u8> = map
                    .iter()
                    .flat_map(|&(skip, len)| {
                        skip.to_le_bytes().into_iter().chain(len.to_le_bytes())
                    })
                    .collect();
                let mut crc = crc32fast::Hasher::new();
                crc.update(&map_bytes);
                crc.update(data);
                out.extend_from_slice(&(map.len() as u32).to_le_bytes());
                out.extend_from_slice(&(data.len() as u64).to_le_bytes());
                out.extend_from_slice(&offset.to_le_bytes());
                out.extend_from_slice(&crc.finalize().to_le_bytes());
                out.extend_from_slice(&map_bytes);
                out.extend_from_slice(data);
            }
            Chunk::Seek { path, offset } => {
                prefix(out, 0, TYPE_SPARSE_OR_SEEK, path);
                out.extend_from_slice(&offset.to_le_bytes());
            }
            Chunk::Remove { path } => prefix(out, 0, TYPE_REMOVE, path),
            Chunk::Rename { path, new_path } => {
                prefix(out, 0, TYPE_RENAME, path);
                out.extend_from_slice(&(new_path.len() as u32).to_le_bytes());
                out.extend_from_slice(new_path.as_bytes());
            }
            Chunk::Other {
                path,
                kind,
                flags,
                data,
            } => {
                prefix(out, flags, kind, path);
                payload(out, 0, data);
            }
        }
    }
}

/// Encodes a whole file as the writers do: payload chunks of at most [`WRITER_CHUNK_SIZE`],
/// then its EOF chunk (an empty file is an EOF chunk alone).
pub fn encode_file(path: &str, data: &[u8], out: &mut Vec<u8>) {
    for (i, piece) in data.chunks(WRITER_CHUNK_SIZE).enumerate() {
        Chunk::Payload {
            path,
            flags: 0,
            offset: (i * WRITER_CHUNK_SIZE) as u64,
            data: piece,
        }
        .encode(out);
    }
    Chunk::Eof { path }.encode(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_documented_hexdump() {
        // formats.md §1.6: `mbstream -c a.txt sub/b.txt empty.txt`, 161 bytes.
        let mut out = Vec::new();
        encode_file("a.txt", b"hello\n", &mut out);
        encode_file("sub/b.txt", b"world!!\n", &mut out);
        encode_file("empty.txt", b"", &mut out);
        assert_eq!(out.len(), 161);
        assert_eq!(&out[0x23..0x27], &[0x20, 0x30, 0x3a, 0x36]);
        assert_eq!(&out[0x27..0x2d], b"hello\n");
        assert_eq!(&out[0x2d..0x40], b"XBSTCK01\x00E\x05\x00\x00\x00a.txt");
    }

    #[test]
    fn sanitizes_paths() {
        for good in [
            "ibdata1",
            "db/t.ibd",
            "#innodb_redo/#ib_redo10",
            "sys/x@0024y.frm",
            "a/b/c/d",
        ] {
            assert_eq!(sanitize_path(good.as_bytes()).unwrap(), PathBuf::from(good));
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "./x",
            "a/./b",
            "..hidden",
            "a//b",
            "a/",
            "a\0b",
        ] {
            assert!(sanitize_path(bad.as_bytes()).is_err(), "{bad:?} accepted");
        }
        assert!(sanitize_path(&[b'a'; 512]).is_err());
        assert!(sanitize_path(&[b'a'; 511]).is_ok());
    }
}
