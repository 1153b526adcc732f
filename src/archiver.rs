//! `serve-backup --archive-binlogs-to URL` on the primary: its binary logs copied into the
//! archive ([`crate::archive`]) as they are written. Closed files go at once (the server is
//! asked every [`archive::POLL_INTERVAL`]), the open file's new committed bytes at least every
//! `--binlog-archive-interval`. The files are read from the data volume the sidecar shares
//! with mysqld, up to the position the server reports as committed.
//!
//! Crash-safe without local state: each segment is one PUT, and a restarted archiver reads
//! from the store's listing where it stopped, checks that the server's file of that name is
//! still the same file, and goes on, or begins a new timeline saying why.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::archive::{
    self, FileHead, LastArchived, Progress, Resume, Segment, ServerLog, Timeline, TimelineInfo,
};
use crate::binlog;
use crate::errors::report;
use crate::metrics::Metrics;
use crate::mysql::{self, MysqlTarget};
use crate::packing::{Packer, Recipients};
use crate::retry::Backoff;
use crate::store::{Location, S3Settings, Store};

#[derive(Debug, Clone)]
pub struct Config {
    pub location: Location,
    pub s3: S3Settings,
    pub recipients: Option<Recipients>,
    pub compression_level: i32,
    /// The open file's new bytes are archived at least this often.
    pub interval: Duration,
}

/// Where the archive stands: the timeline being written and the next byte to archive.
#[derive(Debug, Clone)]
struct Cursor {
    timeline: String,
    file: String,
    offset: u64,
    /// The file's last segment is stored (it was closed and archived to its end).
    complete: bool,
    /// The file's identity: the server's file of that name is checked against it each
    /// round, so a `RESET MASTER` under a running archiver is never appended to the old file.
    digest: String,
}

/// Runs until `cancel`: every failure (the store, mysqld) is logged, counted and retried with
/// back-off; nothing here stops the sidecar from serving.
pub async fn run(
    config: Config,
    target: MysqlTarget,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let store = match Store::open(&config.location, &config.s3, true) {
        Ok(store) => store,
        Err(e) => {
            warn!(error = %report(&e), "the binary log archive cannot be opened; not archiving");
            return;
        }
    };
    info!(archive = %config.location, interval = ?config.interval, "archiving the binary logs");
    let mut archiver = Archiver {
        config,
        store,
        metrics,
        cursor: None,
        dir: None,
        last_open_upload: None,
        progress_written: None,
        last_progress_write: None,
    };
    let mut backoff = Backoff::new();
    let mut conn: Option<Conn> = None;
    loop {
        let round = async {
            if conn.is_none() {
                conn = Some(mysql::connect(&target).await?);
            }
            archiver
                .round(conn.as_mut().expect("connected above"), &cancel)
                .await
        };
        let delay = match round.await {
            Ok(()) => {
                backoff = Backoff::new();
                archive::POLL_INTERVAL
            }
            Err(e) => {
                archiver.metrics.binlog_archive_errors.inc();
                warn!(error = %report(&e), "archiving the binary logs failed; retrying");
                // Start again from what the store and the server say.
                archiver.cursor = None;
                conn = None;
                backoff.next_delay()
            }
        };
        if crate::retry::sleep(delay, &cancel).await.is_err() {
            return;
        }
    }
}

struct Archiver {
    config: Config,
    store: Store,
    metrics: Arc<Metrics>,
    cursor: Option<Cursor>,
    /// Where the server keeps its binary logs.
    dir: Option<PathBuf>,
    last_open_upload: Option<Instant>,
    /// What progress.json says, and when it was written: it is rewritten when the archive
    /// moved, or every interval as a heartbeat (the restore trusts targets up to it).
    progress_written: Option<(String, u64)>,
    last_progress_write: Option<Instant>,
}

impl Archiver {
    async fn round(&mut self, conn: &mut Conn, cancel: &CancellationToken) -> Result<()> {
        let dir = match &self.dir {
            Some(dir) => dir.clone(),
            None => {
                let dir = tokio::time::timeout(QUERY_TIMEOUT, log_dir(conn))
                    .await
                    .map_err(|_| anyhow!("mysqld did not answer within {QUERY_TIMEOUT:?}"))??;
                self.dir = Some(dir.clone());
                dir
            }
        };
        // The moment the archive is complete up to, once this round's bytes are stored.
        let checked_at = SystemTime::now();
        let (logs, current) = server_logs(conn).await?;
        let known = match self.cursor.take() {
            Some(cursor) if logs.iter().any(|l| l.name == cursor.file) => {
                let head = read_head(&dir, &cursor.file).await?;
                (head.digest == cursor.digest).then_some(cursor)
            }
            _ => None,
        };
        let cursor = match known {
            Some(cursor) => cursor,
            // The file the cursor is in is gone from the server or is another file now (or
            // nothing is known yet): what the store says decides.
            None => self.establish(&dir, &logs).await?,
        };
        let open_due = self
            .last_open_upload
            .is_none_or(|at| at.elapsed() >= self.config.interval);
        let mut cursor = cursor;
        let start = logs
            .iter()
            .position(|l| l.name == cursor.file)
            .ok_or_else(|| anyhow!("{} vanished from the server's binary logs", cursor.file))?;
        for (i, log) in logs.iter().enumerate().skip(start) {
            if cancel.is_cancelled() {
                return Ok(());
            }
            if log.name != cursor.file {
                // The next file: it must follow the one before, and that one be complete.
                if !cursor.complete || !archive::is_successor(&cursor.file, &log.name) {
                    bail!(
                        "the server's binary logs jump from {} to {}",
                        cursor.file,
                        log.name
                    );
                }
                let head = self.begin_file(&cursor.timeline, &dir, &log.name).await?;
                cursor = Cursor {
                    timeline: cursor.timeline.clone(),
                    file: log.name.clone(),
                    offset: 0,
                    complete: false,
                    digest: head.digest,
                };
            }
            let closed = log.name != current.name;
            let limit = if closed { log.size } else { current.size };
            if limit < cursor.offset {
                bail!(
                    "the server's {} holds {limit} bytes, fewer than the {} archived",
                    log.name,
                    cursor.offset
                );
            }
            if !closed && !open_due && i + 1 == logs.len() {
                // The open file waits for its interval; a closed one never does.
                if cursor.offset < limit {
                    self.cursor = Some(cursor);
                    return Ok(());
                }
            }
            while cursor.offset < limit || (closed && !cursor.complete) {
                let end = limit.min(cursor.offset + archive::SEGMENT_MAX_BYTES);
                let segment = Segment {
                    start: cursor.offset,
                    end,
                    last: closed && end == limit,
                    encrypted: self.config.recipients.is_some(),
                };
                self.store_segment(&cursor.timeline, &dir, &log.name, segment)
                    .await?;
                cursor.offset = end;
                cursor.complete = segment.last;
            }
            if !closed {
                self.last_open_upload = Some(Instant::now());
            }
        }
        let moved = self.progress_written.as_ref() != Some(&(cursor.file.clone(), cursor.offset));
        let heartbeat_due = self
            .last_progress_write
            .is_none_or(|at| at.elapsed() >= self.config.interval);
        if !moved && !heartbeat_due {
            self.metrics.binlog_archive_checked(checked_at);
            self.cursor = Some(cursor);
            return Ok(());
        }
        archive::write_progress(
            &self.store,
            &cursor.timeline,
            &Progress {
                file: cursor.file.clone(),
                offset: cursor.offset,
                checked_at: humantime::format_rfc3339_millis(checked_at).to_string(),
            },
        )
        .await?;
        self.progress_written = Some((cursor.file.clone(), cursor.offset));
        self.last_progress_write = Some(Instant::now());
        self.metrics.binlog_archive_checked(checked_at);
        self.metrics
            .binlog_archived_offset
            .set(cursor.offset as i64);
        if let Some((_, number)) = archive::split_file(&cursor.file) {
            self.metrics.binlog_archived_file.set(number as i64);
        }
        self.cursor = Some(cursor);
        Ok(())
    }

    /// Finds where to go on from: the latest timeline's end when the server's logs continue
    /// it, or a new timeline from the server's oldest file.
    async fn establish(&mut self, dir: &Path, logs: &[ServerLog]) -> Result<Cursor> {
        let timelines = archive::timelines(&self.store).await?;
        let latest = match timelines.last() {
            Some(name) => Some(archive::load(&self.store, name).await?),
            None => None,
        };
        let oldest = logs
            .first()
            .ok_or_else(|| anyhow!("the server lists no binary log"))?;
        // A timeline begun and left before its first file's head was stored (a crash, a
        // failed write) is taken up again when that file is still the server's oldest.
        if let Some(timeline) = latest.as_ref().filter(|t| t.files.is_empty()) {
            let head = read_head(dir, &oldest.name).await?;
            if timeline.info.first_file == oldest.name
                && timeline.info.first_digest.as_deref() == Some(head.digest.as_str())
            {
                let name = timeline.info.name.clone();
                archive::write_head(&self.store, &name, &head).await?;
                info!(timeline = %name, file = %oldest.name, "the archive takes up the timeline it had begun");
                return Ok(Cursor {
                    timeline: name,
                    file: oldest.name.clone(),
                    offset: 0,
                    complete: false,
                    digest: head.digest,
                });
            }
        }
        // A last file whose segments do not follow one another is never appended to: a new
        // timeline begins, saying why.
        let broken = match latest.as_ref().map(Timeline::last) {
            Some(Err(e)) => Some(format!("{e:#}")),
            _ => None,
        };
        let last = match latest.as_ref().map(Timeline::last) {
            Some(Ok(Some((file, end, complete)))) => Some(LastArchived {
                file: file.name.clone(),
                end,
                complete,
                digest: file.head.as_ref().map(|h| h.digest.clone()),
            }),
            _ => None,
        };
        let server_head = match &last {
            Some(last) if logs.iter().any(|l| l.name == last.file) => {
                Some(read_head(dir, &last.file).await?)
            }
            _ => None,
        };
        let server_digest = server_head.as_ref().map(|h| h.digest.as_str());
        let decided = match broken {
            Some(why) => Resume::NewTimeline {
                reason: format!("the archive's last file cannot be continued: {why}"),
            },
            None => archive::decide(last.as_ref(), logs, server_digest),
        };
        let reason = match decided {
            Resume::At { file, offset } => {
                let timeline = latest.expect("decide continues only a timeline").info.name;
                let continuing = last.as_ref().filter(|l| l.file == file);
                let head = match (continuing, server_head) {
                    (Some(_), Some(head)) => head,
                    // The next file, from its first byte.
                    _ => self.begin_file(&timeline, dir, &file).await?,
                };
                info!(%timeline, %file, offset, "the archive goes on where it stopped");
                return Ok(Cursor {
                    timeline,
                    file,
                    offset,
                    complete: continuing.is_some_and(|l| l.complete),
                    digest: head.digest,
                });
            }
            Resume::NewTimeline { reason } => reason,
        };
        let head = read_head(dir, &oldest.name).await?;
        // Named for when it begins here: unique however often a history starts again from
        // the same first file (a shorter file after a crash, say).
        let name = archive::timeline_name(unix_now(), &head.digest);
        if latest.as_ref().is_some_and(|t| t.info.name >= name) {
            bail!(
                "timeline {name} would not sort after the latest one; retrying in the next second"
            );
        }
        let info = TimelineInfo {
            format: archive::FORMAT,
            name: name.clone(),
            begins_at: head.created_at.clone(),
            first_file: oldest.name.clone(),
            first_digest: Some(head.digest.clone()),
            start_state: head.gtid_list.clone(),
            server_id: head.server_id,
            server_version: head.server_version.clone(),
            created_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            previous: latest.as_ref().map(|t| t.info.name.clone()),
            reason: reason.clone(),
            compression: format!("zstd level {}", self.config.compression_level),
            recipients: self.config.recipients.as_ref().map(Recipients::keys),
        };
        if latest.is_some() {
            warn!(timeline = %name, %reason, "a new timeline begins in the binary log archive");
        } else {
            info!(timeline = %name, "the binary log archive begins");
        }
        archive::write_info(&self.store, &info).await?;
        crate::crash_point!("archive-after-timeline");
        archive::write_head(&self.store, &name, &head).await?;
        Ok(Cursor {
            timeline: name,
            file: oldest.name.clone(),
            offset: 0,
            complete: false,
            digest: head.digest,
        })
    }

    async fn begin_file(&self, timeline: &str, dir: &Path, file: &str) -> Result<FileHead> {
        let head = read_head(dir, file).await?;
        archive::write_head(&self.store, timeline, &head).await?;
        Ok(head)
    }

    async fn store_segment(
        &self,
        timeline: &str,
        dir: &Path,
        file: &str,
        segment: Segment,
    ) -> Result<()> {
        let path = dir.join(file);
        let level = self.config.compression_level;
        let recipients = self.config.recipients.clone();
        let packed = tokio::task::spawn_blocking(move || -> Result<Vec<u8>> {
            let mut input = std::fs::File::open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            input
                .seek(SeekFrom::Start(segment.start))
                .with_context(|| format!("reading {}", path.display()))?;
            let mut packer = Packer::new(Vec::new(), level, recipients.as_ref())?;
            let copied = std::io::copy(&mut input.take(segment.end - segment.start), &mut packer)
                .with_context(|| format!("reading {}", path.display()))?;
            if copied != segment.end - segment.start {
                bail!(
                    "{} ends at {} bytes, before {}",
                    path.display(),
                    segment.start + copied,
                    segment.end
                );
            }
            packer.flush()?;
            Ok(packer.finish()?)
        })
        .await
        .context("the packing task failed")??;
        archive::put_segment(&self.store, timeline, file, &segment, packed).await?;
        crate::crash_point!("archive-after-segment");
        self.metrics
            .binlog_archived_bytes
            .inc_by(segment.end - segment.start);
        tracing::debug!(%timeline, %file, start = segment.start, end = segment.end, last = segment.last, "archived");
        if segment.last {
            info!(%timeline, %file, bytes = segment.end, "binary log archived to its end");
        }
        Ok(())
    }
}

fn unix_now() -> u32 {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    u32::try_from(secs).unwrap_or(u32::MAX)
}

/// Where the server writes its binary logs: the directory of `@@log_bin_basename`.
async fn log_dir(conn: &mut Conn) -> Result<PathBuf> {
    // Read as text (mysql::column_text): a typed conversion of an odd answer would panic.
    let row: Option<mysql_async::Row> = conn
        .query_first("SELECT @@log_bin AS log_bin, @@log_bin_basename AS base")
        .await
        .context("asking mysqld where its binary logs are")?;
    let on = row.as_ref().and_then(|r| mysql::column_text(r, "log_bin"));
    let base = row.as_ref().and_then(|r| mysql::column_text(r, "base"));
    match (on.as_deref(), base) {
        (Some("1"), Some(base)) if !base.is_empty() => {
            let base = PathBuf::from(base);
            base.parent()
                .map(Path::to_owned)
                .ok_or_else(|| anyhow!("@@log_bin_basename {} has no directory", base.display()))
        }
        _ => bail!("the binary log is off on this server (log-bin is not set): nothing to archive"),
    }
}

/// How long one statement to mysqld may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// The server's binary logs and the open one with its committed size, read in that order so
/// the open one is always listed: a rotation in between is read again.
async fn server_logs(conn: &mut Conn) -> Result<(Vec<ServerLog>, ServerLog)> {
    let mut tries = 0;
    loop {
        let read = tokio::time::timeout(QUERY_TIMEOUT, read_server_logs(conn))
            .await
            .map_err(|_| {
                anyhow!("mysqld did not list its binary logs within {QUERY_TIMEOUT:?}")
            })??;
        match read {
            Some(logs) => return Ok(logs),
            None if tries < 3 => tries += 1,
            None => bail!("the server's open binary log is never in SHOW BINARY LOGS"),
        }
    }
}

/// `SHOW BINARY LOGS`, then `SHOW MASTER STATUS`; `None` when a rotation came in between.
async fn read_server_logs(conn: &mut Conn) -> Result<Option<(Vec<ServerLog>, ServerLog)>> {
    let rows: Vec<mysql_async::Row> = conn
        .query("SHOW BINARY LOGS")
        .await
        .context("listing the server's binary logs")?;
    let mut logs = Vec::new();
    for row in &rows {
        let name = mysql::text_at(row, 0)?;
        let size: u64 = mysql::text_at(row, 1)?
            .parse()
            .context("SHOW BINARY LOGS: a size that is not a number")?;
        logs.push(ServerLog { name, size });
    }
    // MySQL 8.4 renamed the statement; the columns are the same.
    let status: Option<mysql_async::Row> = match conn.query_first("SHOW MASTER STATUS").await {
        Ok(row) => row,
        Err(_) => conn
            .query_first("SHOW BINARY LOG STATUS")
            .await
            .context("asking mysqld for its binary log position")?,
    };
    let status = status.ok_or_else(|| anyhow!("the server reports no binary log position"))?;
    let current = ServerLog {
        name: mysql::text_at(&status, 0)?,
        size: mysql::text_at(&status, 1)?
            .parse()
            .context("SHOW MASTER STATUS: a position that is not a number")?,
    };
    if !logs.iter().any(|l| l.name == current.name) {
        return Ok(None);
    }
    Ok(Some((logs, current)))
}

/// A file's identity, read from its first events.
pub async fn read_head(dir: &Path, file: &str) -> Result<FileHead> {
    let path = dir.join(file);
    let file = file.to_owned();
    tokio::task::spawn_blocking(move || -> Result<FileHead> {
        // One read: the first events are a few hundred bytes (a GTID list of 16 bytes a
        // domain), far within the probe.
        let mut probe = Vec::new();
        std::fs::File::open(&path)
            .and_then(|f| f.take(HEAD_PROBE_BYTES).read_to_end(&mut probe))
            .with_context(|| format!("reading {}", path.display()))?;
        let start = binlog::file_start(&probe[..])
            .with_context(|| format!("reading {}", path.display()))?;
        let head = probe.get(..start.header_end as usize).with_context(|| {
            format!(
                "{}: its first events end past {HEAD_PROBE_BYTES} bytes",
                path.display()
            )
        })?;
        Ok(FileHead {
            file,
            created: start.created,
            created_at: archive::rfc3339(start.created),
            gtid_list: start.gtid_list.map(|g| g.to_string()),
            server_id: start.server_id,
            server_version: start.server_version,
            digest: head_digest(head),
            header_end: start.header_end,
        })
    })
    .await
    .context("the reading task failed")?
}

/// How much of a file's start [`read_head`] reads.
const HEAD_PROBE_BYTES: u64 = 64 << 10;

/// SHA-256 of a file's first events, with the format description's "in use" flag cleared:
/// the server clears it when it closes the file, which does not make it another file.
pub fn head_digest(head: &[u8]) -> String {
    let mut bytes = head.to_vec();
    // The flags of the first event: after the magic (4) and 17 bytes of its header.
    if let Some(flags) = bytes.get_mut(binlog::MAGIC.len() + 17) {
        *flags &= !1;
    }
    hex::encode(Sha256::digest(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closing_a_file_does_not_change_its_identity() {
        let mut log = binlog::tests::LogBuilder::new(1000, 100, &[]);
        log.transaction(1001, 1001, 0, 1);
        let open = log.bytes.clone();
        let mut closed = log.bytes.clone();
        closed[4 + 17] |= 1;
        assert_eq!(head_digest(&open[..60]), head_digest(&closed[..60]));
        let mut other = log.bytes.clone();
        other[4] ^= 1;
        assert_ne!(head_digest(&open[..60]), head_digest(&other[..60]));
    }

    #[tokio::test]
    async fn a_files_head_is_read_from_its_first_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = binlog::tests::LogBuilder::new(1000, 100, &["0-100-7".parse().unwrap()]);
        log.transaction(1001, 1001, 0, 8);
        std::fs::write(dir.path().join("b.000001"), &log.bytes).unwrap();
        let head = read_head(dir.path(), "b.000001").await.unwrap();
        let start = binlog::file_start(&log.bytes[..]).unwrap();
        assert_eq!(head.header_end, start.header_end);
        assert_eq!(head.gtid_list.as_deref(), Some("0-100-7"));
        assert_eq!(
            head.digest,
            head_digest(&log.bytes[..start.header_end as usize])
        );
        assert_eq!((head.created, head.server_id), (1000, 100));

        // No GTID list, and a first event larger than the probe: the header is the
        // description alone.
        let fde_len = u32::from_le_bytes(log.bytes[4 + 9..4 + 13].try_into().unwrap()) as usize;
        log.bytes.truncate(4 + fde_len);
        log.event(1001, binlog::kind::QUERY, &vec![0u8; 100 << 10]);
        std::fs::write(dir.path().join("b.000002"), &log.bytes).unwrap();
        let head = read_head(dir.path(), "b.000002").await.unwrap();
        assert_eq!(head.header_end, 4 + fde_len as u64);
        assert_eq!(head.gtid_list, None);
        assert!(read_head(dir.path(), "b.000003").await.is_err());
    }
}
