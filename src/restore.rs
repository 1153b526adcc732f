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

/// What the fetcher found wrong, if anything: a checksum that does not match, or a store
/// that failed.
#[derive(Debug, Clone, Default)]
struct Verdict(Arc<Mutex<Option<String>>>);

impl Verdict {
    fn set(&self, problem: String) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(problem);
    }

    fn problem(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
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
            Some(problem) => Err(anyhow!(problem)),
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
        match self.verdict.problem() {
            Some(problem) => error.context(problem),
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
                verdict.set(problem.clone());
                let _ = tx.send(Err(io::Error::other(problem))).await;
                return;
            }
        };
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    let problem = format!("reading {path} from {}: {e}", store.location);
                    verdict.set(problem.clone());
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
            verdict.set(problem.clone());
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
