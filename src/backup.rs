//! `backup`: a consistent backup taken from a donor over port 3307, exactly as a clone takes
//! it, kept in object storage (or a mounted directory): packed (zstd, then age when asked),
//! checked as it passes (every chunk's CRC, the end-of-stream entry, the coordinates), and
//! committed by its manifest, written last. Until the manifest exists the backup does not:
//! listing and restoring ignore it, and retention removes what an abandoned attempt left.
//!
//! One blocking thread reads the donor's socket; what it reads goes both to the decoder (which
//! keeps only the metadata files) and into the packer, whose output a task uploads as
//! multipart objects. Memory is the buffers: the decoder's read-ahead, zstd's workers, and
//! the parts in flight.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{Instrument, info, info_span, warn};

use crate::backup_tool::BackupTool;
use crate::catalog;
use crate::clone::receive::{self, DonorStream};
use crate::clone::{self, AttemptError, Donor, Policy, verify};
use crate::errors::{report, usage};
use crate::manifest::{self, Compression, Encryption, MANIFEST_NAME, Manifest, StoredObject};
use crate::metadata::{self, BackupMetadata};
use crate::packing::{Packer, Recipients};
use crate::progress::{self, Sample};
use crate::protocol::{self, StreamInfo, StreamStatus};
use crate::secrets::BackupSecret;
use crate::server_version::{ServerFlavor, ServerVersion};
use crate::store::{Location, S3Settings, Store};
use crate::xbstream::{Decoder, MemorySink, Progress, Summary};

/// Parts of a multipart upload: 8 MiB, so an object of [`MAX_OBJECT_BYTES`] stays within
/// S3's 10,000 parts.
pub const PART_SIZE: usize = 8 << 20;
/// Parts uploading at once: bounds memory (the parts' buffers) and keeps the link busy.
pub const PARTS_IN_FLIGHT: usize = 2;
/// A stored object is cut here and the stream goes on in the next one.
pub const MAX_OBJECT_BYTES: u64 = 64 << 30;
/// Packed bytes handed from the reading thread to the uploader at a time…
const CHUNK_BYTES: usize = 1 << 20;
/// …and how many may wait between them.
const CHANNEL_CHUNKS: usize = 4;

#[derive(Debug, Clone)]
pub struct Config {
    pub location: Location,
    pub s3: S3Settings,
    /// Tried in order, round after round; replicas first by default.
    pub donors: Vec<Donor>,
    pub policy: Policy,
    pub stall_timeout: Duration,
    pub secret: Option<BackupSecret>,
    /// Mutual TLS with the donors (`--tls-dir`).
    pub tls: Option<std::sync::Arc<crate::tls::TlsDir>>,
    /// `--backup-tool`, or `None` to search PATH: it says which xbstream dialect to read.
    pub tool: Option<PathBuf>,
    pub require_end_marker: bool,
    pub level: i32,
    pub recipients: Option<Recipients>,
    /// Keep this many complete backups; `None` keeps all.
    pub keep: Option<usize>,
    pub progress_interval: Duration,
}

/// A stream taken from one donor, stored and checked.
struct Taken {
    summary: Summary,
    meta: BackupMetadata,
    objects: Vec<StoredObject>,
}

pub async fn run(config: &Config, cancel: &CancellationToken) -> Result<()> {
    let tool = BackupTool::locate(config.tool.as_deref())
        .await
        .map_err(usage)?;
    let store = Store::open(&config.location, &config.s3, true).map_err(usage)?;
    // Reach the store before loading any donor: wrong credentials or a missing bucket fail
    // here, with nothing taken and nothing written.
    let before = catalog::list(&store)
        .await
        .with_context(|| format!("reaching the backup store {}", config.location))?;
    info!(
        store = %config.location,
        complete = before.complete.len(),
        "the backup store answers"
    );
    if config.recipients.is_none() {
        warn!("no --age-recipient-file: the backup is stored unencrypted");
    }
    let started = SystemTime::now();
    let name = manifest::new_name(started)?;
    let taken = clone::from_donors(&config.donors, config.policy, cancel, |donor| {
        let span = info_span!("backup", %donor, backup = %name);
        let (store, name, tool) = (&store, &name, &tool);
        async move {
            let taken = take(config, store, name, tool, &donor, cancel).await;
            if taken.is_err() {
                // What this attempt uploaded goes at once; what a kill leaves, retention
                // removes a day later.
                if let Err(e) = catalog::delete(store, name).await {
                    warn!(error = %report(&e), "could not remove the failed attempt's objects");
                }
            }
            taken
        }
        .instrument(span)
    })
    .await;
    let (donor, taken) = match taken {
        Ok(taken) => taken,
        Err(e) => return Err(e.context(format!("backing up to {}", config.location))),
    };
    crate::crash_point!("backup-before-manifest");
    let manifest = manifest_of(config, &name, started, &donor, &taken)?;
    let path = store.path(&format!("{name}/{MANIFEST_NAME}"));
    store
        .objects()
        .put(&path, PutPayload::from(manifest.to_json()))
        .await
        .with_context(|| format!("writing {path} to {}", config.location))?;
    info!(
        backup = %name,
        donor = %donor,
        stream_bytes = manifest.stream_bytes,
        stored_bytes = manifest.stored_bytes,
        objects = manifest.objects.len(),
        ratio = format!("{:.2}", manifest.stream_bytes as f64 / manifest.stored_bytes.max(1) as f64),
        "backup complete: {}",
        manifest.summary_line()
    );
    if let Some(keep) = config.keep {
        catalog::apply_retention(&store, keep, &name).await;
    }
    Ok(())
}

/// The manifest of a backup `taken` from `donor`.
fn manifest_of(
    config: &Config,
    name: &str,
    started: SystemTime,
    donor: &Donor,
    taken: &Taken,
) -> Result<Manifest> {
    let server_version = taken
        .meta
        .info_field("server_version")
        .context("the backup's info file names no server_version")?;
    let flavor = match ServerVersion::parse(&server_version)?.flavor {
        ServerFlavor::MySql => "mysql",
        ServerFlavor::MariaDb => "mariadb",
    };
    let tool_status = taken
        .summary
        .trailer
        .as_ref()
        .and_then(|t| StreamStatus::parse(&t.contents).ok())
        .map(|s| s.tool);
    let tool = manifest::Tool {
        name: taken
            .meta
            .info_field("tool_name")
            .unwrap_or_else(|| "unknown".into()),
        version: taken
            .meta
            .info_field("tool_version")
            .or(tool_status)
            .unwrap_or_else(|| "unknown".into()),
    };
    let stored_bytes = taken.objects.iter().map(|o| o.bytes).sum();
    Ok(Manifest {
        format: manifest::FORMAT,
        name: name.to_owned(),
        started_at: manifest::timestamp(started),
        finished_at: manifest::timestamp(SystemTime::now()),
        donor: donor.to_string(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        server: manifest::Server {
            version: server_version,
            flavor: flavor.to_owned(),
        },
        tool,
        coordinates: verify::coordinates(&taken.meta)?,
        stream_bytes: taken.summary.bytes,
        stored_bytes,
        compression: Compression {
            algorithm: "zstd".into(),
            level: config.level,
        },
        encryption: config.recipients.as_ref().map(|r| Encryption {
            scheme: "age".into(),
            recipients: r.keys(),
        }),
        objects: taken.objects.clone(),
    })
}

/// One attempt at one donor: the stream read, checked, packed and uploaded.
async fn take(
    config: &Config,
    store: &Store,
    name: &str,
    tool: &BackupTool,
    donor: &Donor,
    cancel: &CancellationToken,
) -> Result<Taken, AttemptError> {
    let stall = config.stall_timeout;
    let DonorStream { input, watcher } = receive::open(
        donor,
        config.secret.as_ref(),
        config.tls.as_deref(),
        stall,
        cancel,
    )
    .await?;
    let started = Instant::now();
    let progress = Arc::new(Progress::default());
    let _reporter = AbortOnDropHandle::new(tokio::spawn({
        let progress = Arc::clone(&progress);
        progress::report("backing up", config.progress_interval, started, move || {
            Sample {
                bytes: progress.bytes(),
                files: Some(progress.files()),
                estimated_bytes: progress
                    .header()
                    .and_then(|h| StreamInfo::parse(h).ok())
                    .map(|i| i.estimated_bytes),
            }
        })
    }));
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    let suffix = if config.recipients.is_some() {
        ".xbs.zst.age"
    } else {
        ".xbs.zst"
    };
    let upload = AbortOnDropHandle::new(tokio::spawn(
        upload(store.clone(), name.to_owned(), suffix, rx).in_current_span(),
    ));
    let (flavor, level, recipients) = (tool.flavor(), config.level, config.recipients.clone());
    let cancel_decoding = cancel.clone();
    let decoded = tokio::task::spawn_blocking(move || -> Result<(Summary, MemorySink)> {
        let mut packer = Packer::new(ChannelWriter::new(tx), level, recipients.as_ref())?;
        let mut sink = MemorySink::only(&metadata::ALL_FILES);
        let summary = Decoder::new(flavor)
            .with_header(protocol::INFO_ENTRY)
            .with_trailer(protocol::STATUS_ENTRY)
            .with_limit_from_header(protocol::stream_limit)
            .with_progress(progress)
            .with_cancel(cancel_decoding)
            .decode(
                Tee {
                    inner: input,
                    out: &mut packer,
                },
                &mut sink,
            )
            .context("receiving the backup stream")?;
        packer
            .finish()
            .and_then(ChannelWriter::end)
            .context("packing the backup")?;
        Ok((summary, sink))
    })
    .await
    .map_err(|e| AttemptError::Failed(anyhow!("the receiving thread failed: {e}")))?;
    drop(watcher);
    let uploaded = upload
        .await
        .map_err(|e| AttemptError::Failed(anyhow!("the upload task failed: {e}")))?;
    // When both sides failed, one caused the other: a reading side that stopped (a bad
    // stream) abandons the upload, and an upload that stopped breaks the reading side's pipe.
    let objects = match (decoded, uploaded) {
        (Ok(decoded), Ok(objects)) => (decoded, objects),
        (Ok(_), Err(upload)) => return Err(AttemptError::Failed(upload)),
        (Err(read), Err(upload)) if broke_on_upload(&read) => {
            return Err(AttemptError::Failed(upload));
        }
        (Err(read), _) => {
            return Err(AttemptError::from_transfer(receive::explain_stall(
                read, stall,
            )));
        }
    };
    let ((summary, sink), objects) = objects;
    let meta =
        BackupMetadata::from_lookup(|name| Ok(sink.text(&[name]))).map_err(AttemptError::Failed)?;
    verify::complete(&summary, &meta, config.require_end_marker).map_err(AttemptError::Failed)?;
    verify::coordinates(&meta).map_err(AttemptError::Failed)?;
    info!(
        bytes = summary.bytes,
        files = summary.files,
        elapsed = ?started.elapsed(),
        "stream received, complete and stored"
    );
    Ok(Taken {
        summary,
        meta,
        objects,
    })
}

/// Uploads `input` as the objects of `name` exactly as a backup's packed stream is uploaded
/// (same parts, same concurrency, same client), with nothing before it: what the store alone
/// takes, for the benchmark's baseline.
pub async fn store_stream(
    store: &Store,
    name: &str,
    input: impl Read + Send + 'static,
) -> Result<Vec<StoredObject>> {
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    let upload = AbortOnDropHandle::new(tokio::spawn(upload(
        store.clone(),
        name.to_owned(),
        ".bin",
        rx,
    )));
    let fed = tokio::task::spawn_blocking(move || -> io::Result<()> {
        let mut input = input;
        let mut out = ChannelWriter::new(tx);
        io::copy(&mut input, &mut out)?;
        out.end()
    })
    .await
    .context("the feeding thread failed")?;
    let objects = upload.await.context("the upload task failed")??;
    fed.context("feeding the upload")?;
    Ok(objects)
}

/// Whether the reading side failed because the upload stopped taking its output.
fn broke_on_upload(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// Everything read from `inner` is also written to `out`.
struct Tee<'a, R, W> {
    inner: R,
    out: &'a mut W,
}

impl<R: Read, W: Write> Read for Tee<'_, R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.out.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// What the reading thread hands the uploader.
enum Piece {
    Data(Bytes),
    /// The stream is whole; without it a closed channel means an abandoned upload.
    End,
}

/// A blocking writer that hands [`CHUNK_BYTES`] at a time to the uploader.
struct ChannelWriter {
    tx: mpsc::Sender<Piece>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn new(tx: mpsc::Sender<Piece>) -> Self {
        Self {
            tx,
            buf: Vec::with_capacity(CHUNK_BYTES),
        }
    }

    fn send(&mut self, piece: Piece) -> io::Result<()> {
        self.tx
            .blocking_send(piece)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
    }

    /// Sends what is left and says the stream is whole.
    fn end(mut self) -> io::Result<()> {
        self.flush()?;
        self.send(Piece::End)
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK_BYTES - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK_BYTES {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let full = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES));
            self.send(Piece::Data(Bytes::from(full)))?;
        }
        Ok(())
    }
}

/// An object being uploaded.
struct Current {
    name: String,
    upload: WriteMultipart,
    hasher: Sha256,
    bytes: u64,
}

impl Current {
    async fn finish(self) -> Result<StoredObject> {
        let name = self.name;
        self.upload
            .finish()
            .await
            .with_context(|| format!("completing the upload of {name}"))?;
        Ok(StoredObject {
            name,
            bytes: self.bytes,
            sha256: hex::encode(self.hasher.finalize()),
        })
    }
}

/// Uploads what arrives on `rx` as objects `data-NNNNNN<suffix>` of backup `name`, cutting
/// at [`MAX_OBJECT_BYTES`]; the objects and their SHA-256, once the stream is whole.
async fn upload(
    store: Store,
    name: String,
    suffix: &'static str,
    mut rx: mpsc::Receiver<Piece>,
) -> Result<Vec<StoredObject>> {
    let mut objects = Vec::new();
    let mut current: Option<Current> = None;
    let result = async {
        while let Some(piece) = rx.recv().await {
            let mut data = match piece {
                Piece::Data(data) => data,
                Piece::End => {
                    if let Some(last) = current.take() {
                        objects.push(last.finish().await?);
                    }
                    if objects.is_empty() {
                        bail!("the backup stream was empty");
                    }
                    return Ok(());
                }
            };
            while !data.is_empty() {
                let object = match &mut current {
                    Some(object) => object,
                    None => {
                        let object_name = format!("data-{:06}{suffix}", objects.len());
                        let path = store.path(&format!("{name}/{object_name}"));
                        let upload = store
                            .objects()
                            .put_multipart(&path)
                            .await
                            .with_context(|| format!("starting the upload of {path}"))?;
                        current.insert(Current {
                            name: object_name,
                            upload: WriteMultipart::new_with_chunk_size(upload, PART_SIZE),
                            hasher: Sha256::new(),
                            bytes: 0,
                        })
                    }
                };
                let room = usize::try_from(MAX_OBJECT_BYTES - object.bytes).unwrap_or(usize::MAX);
                let piece = data.split_to(data.len().min(room));
                object
                    .upload
                    .wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .with_context(|| format!("uploading {}", object.name))?;
                object.hasher.update(&piece);
                object.bytes += piece.len() as u64;
                object.upload.put(piece);
                if object.bytes >= MAX_OBJECT_BYTES
                    && let Some(full) = current.take()
                {
                    objects.push(full.finish().await?);
                }
            }
        }
        bail!("the backup stream was abandoned before its end")
    }
    .await;
    match result {
        Ok(()) => Ok(objects),
        Err(e) => {
            if let Some(object) = current {
                let _ = object.upload.abort().await;
            }
            Err(e.context(format!("storing backup {name} in {}", store.location)))
        }
    }
}
