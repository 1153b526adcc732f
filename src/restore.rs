//! Reading a stored backup back as the stream its donor sent: its objects fetched in order,
//! each checked against the SHA-256 its manifest records, then decrypted and decompressed.
//! The caller decodes the result exactly as a stream from a peer.
//!
//! A damaged object shows up as a decryption or decompression error before its end is
//! reached; the fetcher then still reads that object to its end, so the error names what
//! happened: a checksum that does not match the manifest.

use std::io::{self, Read};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Result, anyhow};
use bytes::Bytes;
use futures_util::StreamExt;
use object_store::ObjectStoreExt;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;

use crate::manifest::Manifest;
use crate::store::Store;

/// Chunks of stored bytes in flight between the fetcher and the reader.
const CHANNEL_CHUNKS: usize = 16;

/// A stored object that does not match its manifest: damaged or altered in the store. No
/// retry helps.
#[derive(Debug)]
pub struct Damaged(pub String);

impl std::fmt::Display for Damaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Damaged {}

/// What the fetcher found wrong, if anything: a checksum that does not match (damaged), or a
/// store that failed.
#[derive(Debug, Clone, Default)]
struct Verdict(Arc<Mutex<Option<(String, bool)>>>);

impl Verdict {
    fn set(&self, problem: String, damaged: bool) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert((problem, damaged));
    }

    /// The problem, and whether it is damage.
    fn found(&self) -> Option<(String, bool)> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The problem as an error: [`Damaged`] when an object did not match.
    fn problem(&self) -> Option<anyhow::Error> {
        self.found().map(|(problem, damaged)| {
            if damaged {
                anyhow::Error::new(Damaged(problem))
            } else {
                anyhow!(problem)
            }
        })
    }
}

/// A stored backup opened for reading.
pub struct Opened {
    /// The stored bytes, checked object by object (blocking reads: use it off the async
    /// threads, through [`crate::packing::unpack`] with the manifest's encryption).
    pub stored: Box<dyn Read + Send>,
    /// The store's side: whether every object matched its manifest.
    pub check: Check,
}

/// The fetcher of an opened backup, and what it found.
pub struct Check {
    verdict: Verdict,
    /// Dropping it stops the fetching.
    fetcher: AbortOnDropHandle<()>,
}

impl Check {
    /// Once the reader is done with (dropped), waits for the fetcher: an error when an
    /// object did not match its manifest or the store failed. A stream that decoded cleanly
    /// is accepted only after this.
    pub async fn finish(self) -> Result<()> {
        let _ = tokio::time::timeout(crate::store::REQUEST_TIMEOUT, self.fetcher).await;
        match self.verdict.problem() {
            Some(problem) => Err(problem),
            None => Ok(()),
        }
    }

    /// The error to report for a restore that failed with `error`: the store's verdict
    /// comes first when there is one (a checksum mismatch explains a decryption error),
    /// once the fetcher has finished judging.
    pub async fn explain(self, error: anyhow::Error) -> anyhow::Error {
        // Bounded: the fetcher reads at most the rest of one object, under the store's
        // timeouts.
        let _ = tokio::time::timeout(crate::store::REQUEST_TIMEOUT, self.fetcher).await;
        // The store's finding leads: the downstream error is its consequence.
        match self.verdict.found() {
            Some((problem, true)) => error.context(Damaged(problem)),
            Some((problem, false)) => error.context(problem),
            None => error,
        }
    }
}

/// Opens backup `manifest` of `store`. With an encrypted backup, `identities` must hold the
/// key it was encrypted to (checked when the stream is unpacked).
pub fn open(store: &Store, manifest: &Manifest, has_identities: bool) -> Result<Opened> {
    if manifest.encryption.is_some() && !has_identities {
        return Err(anyhow!(
            "backup {} is encrypted (age): pass --age-identity-file with its private key",
            manifest.name
        ));
    }
    if manifest.compression.algorithm != "zstd" {
        return Err(anyhow!(
            "backup {} is compressed with {:?}, which this agent does not read",
            manifest.name,
            manifest.compression.algorithm
        ));
    }
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(CHANNEL_CHUNKS);
    let verdict = Verdict::default();
    let fetcher = AbortOnDropHandle::new(tokio::spawn(fetch(
        store.clone(),
        manifest.clone(),
        tx,
        verdict.clone(),
    )));
    let stored = Box::new(ChannelReader {
        rx,
        current: Bytes::new(),
    });
    Ok(Opened {
        stored,
        check: Check { verdict, fetcher },
    })
}

/// Checks, before anything is written, that `identities` open backup `manifest` when it is
/// encrypted: the first object's age header is fetched and its file key unwrapped.
pub async fn check_identities(
    store: &Store,
    manifest: &Manifest,
    identities: Option<&crate::packing::Identities>,
) -> Result<()> {
    if manifest.encryption.is_none() {
        return Ok(());
    }
    let identities = identities.ok_or_else(|| {
        anyhow!(
            "backup {} is encrypted (age): pass --age-identity-file with its private key",
            manifest.name
        )
    })?;
    let first = &manifest.objects[0];
    let path = store.path(&format!("{}/{}", manifest.name, first.name));
    let head = store
        .objects()
        .get_range(&path, 0..first.bytes.min(HEADER_PROBE_BYTES))
        .await
        .map_err(|e| anyhow!("reading {path} from {}: {e}", store.location))?;
    identities.check(&head).map_err(|e| {
        anyhow!(
            "backup {} cannot be decrypted with --age-identity-file: {e:#}",
            manifest.name
        )
    })
}

/// An age header is a few hundred bytes per recipient.
const HEADER_PROBE_BYTES: u64 = 64 << 10;

/// Sends every object's bytes in order, hashing each; a mismatch or a store error ends the
/// stream with an error, and is recorded in `verdict`.
async fn fetch(
    store: Store,
    manifest: Manifest,
    tx: mpsc::Sender<io::Result<Bytes>>,
    verdict: Verdict,
) {
    for object in &manifest.objects {
        let path = store.path(&format!("{}/{}", manifest.name, object.name));
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        let mut reader_alive = true;
        let got = store.objects().get(&path).await;
        let mut stream = match got {
            Ok(result) => result.into_stream(),
            Err(e) => {
                let problem = format!("reading {path} from {}: {e}", store.location);
                verdict.set(problem.clone(), false);
                let _ = tx.send(Err(io::Error::other(problem))).await;
                return;
            }
        };
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    let problem = format!("reading {path} from {}: {e}", store.location);
                    verdict.set(problem.clone(), false);
                    let _ = tx.send(Err(io::Error::other(problem))).await;
                    return;
                }
            };
            hasher.update(&chunk);
            bytes = bytes.saturating_add(chunk.len() as u64);
            // Once the reader has gone (it failed), the object is still read to its end:
            // its checksum says whether the failure was damage in the store.
            if reader_alive && tx.send(Ok(chunk)).await.is_err() {
                reader_alive = false;
            }
        }
        let sha256 = hex::encode(hasher.finalize());
        if sha256 != object.sha256 || bytes != object.bytes {
            let problem = format!(
                "{path} does not match the manifest: SHA-256 {sha256} over {bytes} bytes, the manifest says {} over {} bytes (the stored object was altered or damaged)",
                object.sha256, object.bytes
            );
            verdict.set(problem.clone(), true);
            let _ = tx.send(Err(io::Error::other(problem))).await;
            return;
        }
        if !reader_alive {
            return;
        }
    }
}

/// A blocking reader over the fetcher's chunks.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Bytes a read-ahead thread hands on at a time, and how many may wait.
const READ_AHEAD_CHUNK: usize = 1 << 20;
const READ_AHEAD_DEPTH: usize = 8;

/// Runs `open` and reads what it returns on a thread of its own, [`READ_AHEAD_CHUNK`] at a
/// time: decryption and decompression then overlap the decoding and the writes, instead of
/// taking turns with them on one thread. Errors arrive in order, as reads.
pub fn read_ahead(
    open: impl FnOnce() -> Result<Box<dyn Read + Send>> + Send + 'static,
) -> io::Result<impl Read + Send> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(READ_AHEAD_DEPTH);
    std::thread::Builder::new()
        .name("restore-unpack".into())
        .spawn(move || {
            let mut input = match open() {
                Ok(input) => input,
                Err(e) => {
                    let _ = tx.send(Err(io::Error::other(format!("{e:#}"))));
                    return;
                }
            };
            loop {
                let mut chunk = vec![0u8; READ_AHEAD_CHUNK];
                let mut filled = 0;
                let result = loop {
                    match input.read(&mut chunk[filled..]) {
                        Ok(0) => break Ok(()),
                        Ok(n) => {
                            filled += n;
                            if filled == chunk.len() {
                                break Ok(());
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => break Err(e),
                    }
                };
                let done = filled < chunk.len();
                chunk.truncate(filled);
                // A closed receiver means the reader is gone: stop.
                if !chunk.is_empty() && tx.send(Ok(chunk)).is_err() {
                    return;
                }
                if let Err(e) = result {
                    let _ = tx.send(Err(e));
                    return;
                }
                if done {
                    return;
                }
            }
        })?;
    Ok(ChunkReader {
        rx,
        current: Vec::new(),
        at: 0,
    })
}

/// The reading end of [`read_ahead`].
struct ChunkReader {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    current: Vec<u8>,
    at: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.current.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.current = chunk;
                    self.at = 0;
                }
                Ok(Err(e)) => return Err(e),
                // The thread ended after its last chunk: the end of the stream.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_ahead_passes_bytes_and_errors_in_order() {
        let data: Vec<u8> = (0..3_500_000u32).map(|i| (i % 253) as u8).collect();
        let source = data.clone();
        let mut reader =
            read_ahead(move || Ok(Box::new(io::Cursor::new(source)) as Box<dyn Read + Send>))
                .unwrap();
        let mut out = Vec::new();
        reader.read_to_end(&mut out).unwrap();
        assert!(out == data);

        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::other("decryption failed"));
                }
                let n = buf.len().min(self.0);
                buf[..n].fill(7);
                self.0 -= n;
                Ok(n)
            }
        }
        let mut reader = read_ahead(|| Ok(Box::new(Failing(10)) as Box<dyn Read + Send>)).unwrap();
        let mut out = Vec::new();
        let err = reader.read_to_end(&mut out).unwrap_err();
        assert_eq!(out, vec![7; 10]);
        assert!(err.to_string().contains("decryption failed"));
        let mut reader = read_ahead(|| Err(anyhow!("no such key"))).unwrap();
        assert!(
            reader
                .read(&mut [0u8; 4])
                .unwrap_err()
                .to_string()
                .contains("no such key")
        );
    }
}
