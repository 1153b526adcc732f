//! The binary log archive: the primary's binary logs kept in the backup store, grouped in
//! timelines, for point-in-time recovery.
//!
//! A timeline is one unbroken history: consecutive files of one server, each one archived
//! from its first byte, with nothing missing in between. Whatever could stitch two histories
//! together starts a new timeline instead: the server's oldest file is not the one after the
//! last archived (a gap: files purged before they were archived), or the server's file of
//! that name is another file (names reused: a restore, a recovered primary, `RESET MASTER`),
//! or is shorter than what was archived. A restore never reads across timelines.
//!
//! Layout, under the store's prefix:
//!
//! ```text
//! binlogs/<timeline>/timeline.json                   how and why it began
//! binlogs/<timeline>/progress.json                   archived up to here, as of checked_at
//! binlogs/<timeline>/<file>/head.json                the file's identity and GTID list
//! binlogs/<timeline>/<file>/<start>-<end>[-final].zst[.age]
//! ```
//!
//! A segment holds the file's bytes `[start, end)`, packed like a backup (zstd, then age when
//! recipients are given), stored with one PUT: it exists whole or not at all. `-final` marks a
//! file's last segment once the server has moved on to the next file. What is archived is
//! read back from the listing itself, so a restarted archiver resumes exactly where the store
//! says it stopped, whatever it remembered.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow, bail, ensure};
use futures_util::StreamExt;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::store::Store;

/// Everything archived lives under this name in the store's prefix (backup names are
/// timestamps, so the two never meet).
pub const ARCHIVE_DIR: &str = "binlogs";
pub const TIMELINE_FILE: &str = "timeline.json";
pub const PROGRESS_FILE: &str = "progress.json";
pub const HEAD_FILE: &str = "head.json";
/// The layout this agent writes; a newer one is refused.
pub const FORMAT: u32 = 1;
/// A segment holds at most this much of a file: memory is one segment packed, and a file of
/// any size is archived piece by piece.
pub const SEGMENT_MAX_BYTES: u64 = 16 << 20;
/// The default of `--binlog-archive-interval`: the open file's new bytes are archived at
/// least this often.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// How often the server is asked whether a file was closed (closed files go at once).
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// How and why a timeline began.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineInfo {
    pub format: u32,
    pub name: String,
    /// When its first file was created (RFC 3339, UTC): no transaction of it is older.
    pub begins_at: String,
    pub first_file: String,
    /// The first file's identity ([`FileHead::digest`]).
    #[serde(default)]
    pub first_digest: Option<String>,
    /// The MariaDB GTID position its first file starts from, when the server has GTIDs.
    pub start_state: Option<String>,
    pub server_id: u32,
    pub server_version: String,
    /// When the archiver started it.
    pub created_at: String,
    /// The timeline archived before it, and why this one could not continue it.
    pub previous: Option<String>,
    pub reason: String,
    pub compression: String,
    /// age recipients when the segments are encrypted.
    pub recipients: Option<Vec<String>>,
}

/// A file's identity: its first events, as the server wrote them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileHead {
    pub file: String,
    /// Unix seconds and RFC 3339 of the file's creation.
    pub created: u32,
    pub created_at: String,
    pub gtid_list: Option<String>,
    pub server_id: u32,
    pub server_version: String,
    /// SHA-256 of the bytes before the first transaction (`header_end`): two files of one
    /// name with other content differ here.
    pub digest: String,
    pub header_end: u64,
}

/// How far a timeline is archived, and when that was last true.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub file: String,
    pub offset: u64,
    /// Everything the server had committed at this moment (RFC 3339) is archived.
    pub checked_at: String,
}

/// A segment's name, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Segment {
    pub start: u64,
    pub end: u64,
    pub last: bool,
    pub encrypted: bool,
}

impl Segment {
    pub fn name(&self) -> String {
        format!(
            "{:012}-{:012}{}.zst{}",
            self.start,
            self.end,
            if self.last { "-final" } else { "" },
            if self.encrypted { ".age" } else { "" }
        )
    }

    pub fn parse(name: &str) -> Option<Self> {
        let (rest, encrypted) = match name.strip_suffix(".age") {
            Some(rest) => (rest, true),
            None => (name, false),
        };
        let rest = rest.strip_suffix(".zst")?;
        let (rest, last) = match rest.strip_suffix("-final") {
            Some(rest) => (rest, true),
            None => (rest, false),
        };
        let (start, end) = rest.split_once('-')?;
        let digits = |s: &str| s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(start) || !digits(end) {
            return None;
        }
        let (start, end) = (start.parse().ok()?, end.parse().ok()?);
        (start <= end).then_some(Segment {
            start,
            end,
            last,
            encrypted,
        })
    }
}

/// A binary log file name: `<base>.<number>`.
pub fn split_file(name: &str) -> Option<(&str, u64)> {
    let (base, number) = name.rsplit_once('.')?;
    if base.is_empty()
        || number.len() < 6
        || !number.bytes().all(|b| b.is_ascii_digit())
        || name.contains('/')
        || name.starts_with('.')
    {
        return None;
    }
    Some((base, number.parse().ok()?))
}

/// Whether `next` is the file the server opens after `file`.
pub fn is_successor(file: &str, next: &str) -> bool {
    match (split_file(file), split_file(next)) {
        (Some((a, n)), Some((b, m))) => a == b && m == n + 1,
        _ => false,
    }
}

/// Whether the server's sequence `oldest` starts at or before the archive's `last` file: the
/// same names again, for other files.
fn starts_over(last: &str, oldest: &str) -> bool {
    match (split_file(last), split_file(oldest)) {
        (Some((a, n)), Some((b, m))) => a == b && m <= n,
        _ => false,
    }
}

/// A timeline's name: when the archive began it (so names sort in the order timelines
/// began), and its first file's identity.
pub fn timeline_name(created: u32, digest: &str) -> String {
    let time = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(created));
    let stamp: String = humantime::format_rfc3339_seconds(time)
        .to_string()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    format!("{stamp}-{}", &digest[..digest.len().min(8)])
}

/// Whether `name` is one [`timeline_name`] gives.
pub fn is_timeline_name(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() == 25
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'Z'
        && b[16] == b'-'
        && b[17..].iter().all(|c| c.is_ascii_hexdigit())
}

/// One archived file of a timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedFile {
    pub name: String,
    pub head: Option<FileHead>,
    /// Sorted by start.
    pub segments: Vec<Segment>,
}

impl ArchivedFile {
    /// The segments that make up the file, in order: where two share a start (a PUT the
    /// client saw fail but the store kept, then written again longer), the longest, a final
    /// one first; an error names the first hole.
    pub fn chain(&self) -> Result<Vec<Segment>> {
        let mut chain: Vec<Segment> = Vec::new();
        for segment in &self.segments {
            if let Some(prev) = chain.last_mut()
                && prev.start == segment.start
            {
                if (segment.end, segment.last) > (prev.end, prev.last) {
                    *prev = *segment;
                }
                continue;
            }
            chain.push(*segment);
        }
        let mut end = 0;
        let mut last = false;
        for segment in &chain {
            ensure!(
                !last,
                "{}: a segment after its final one ({})",
                self.name,
                segment.name()
            );
            ensure!(
                segment.start == end,
                "{}: bytes {end}..{} are missing from the archive",
                self.name,
                segment.start
            );
            end = segment.end;
            last = segment.last;
        }
        Ok(chain)
    }

    /// The end of the bytes archived without a hole from offset 0, and whether that end is the
    /// file's end; an error names the first hole.
    pub fn archived_end(&self) -> Result<(u64, bool)> {
        Ok(self.chain()?.last().map_or((0, false), |s| (s.end, s.last)))
    }
}

/// A timeline as the store holds it.
#[derive(Debug, Clone)]
pub struct Timeline {
    pub info: TimelineInfo,
    pub progress: Option<Progress>,
    /// In the order the server wrote them.
    pub files: Vec<ArchivedFile>,
}

impl Timeline {
    /// The last file archived, how far, and whether it is complete; an error when its
    /// segments do not follow one another (nothing is appended to such a file).
    pub fn last(&self) -> Result<Option<(&ArchivedFile, u64, bool)>> {
        let Some(file) = self.files.last() else {
            return Ok(None);
        };
        let (end, last) = file
            .archived_end()
            .with_context(|| format!("timeline {}", self.info.name))?;
        Ok(Some((file, end, last)))
    }
}

/// A file as the server lists it (`SHOW BINARY LOGS`; the open one's size is its committed
/// position).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLog {
    pub name: String,
    pub size: u64,
}

/// Where the archiver goes on from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// The latest timeline continues: archive `file` from `offset`.
    At { file: String, offset: u64 },
    /// A new timeline begins with the server's oldest file, for this reason.
    NewTimeline { reason: String },
}

/// What the archive's last file is, as [`decide`] needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastArchived {
    pub file: String,
    pub end: u64,
    pub complete: bool,
    pub digest: Option<String>,
}

/// Decides whether the server's binary logs continue the latest timeline. `server_digest` is
/// the identity of the server's file named like the last archived one, when it has one.
pub fn decide(
    last: Option<&LastArchived>,
    server: &[ServerLog],
    server_digest: Option<&str>,
) -> Resume {
    let Some(last) = last else {
        return Resume::NewTimeline {
            reason: "the first archived history of this store".into(),
        };
    };
    let Some(oldest) = server.first() else {
        return Resume::NewTimeline {
            reason: "the server lists no binary log".into(),
        };
    };
    match server.iter().find(|l| l.name == last.file) {
        Some(log) => {
            if last.digest.is_some()
                && server_digest.is_some()
                && last.digest.as_deref() != server_digest
            {
                Resume::NewTimeline {
                    reason: format!(
                        "the server's {} is another file than the archived one (binary log names reused: a restore, a recovered primary or RESET MASTER)",
                        last.file
                    ),
                }
            } else if last.digest.is_none() || server_digest.is_none() {
                Resume::NewTimeline {
                    reason: format!("the identity of {} cannot be compared", last.file),
                }
            } else if log.size < last.end {
                Resume::NewTimeline {
                    reason: format!(
                        "the server's {} holds {} bytes, fewer than the {} archived",
                        last.file, log.size, last.end
                    ),
                }
            } else {
                Resume::At {
                    file: last.file.clone(),
                    offset: last.end,
                }
            }
        }
        None if last.complete && is_successor(&last.file, &oldest.name) => Resume::At {
            file: oldest.name.clone(),
            offset: 0,
        },
        None if starts_over(&last.file, &oldest.name) => Resume::NewTimeline {
            reason: format!(
                "the server's binary logs start over at {} while the archive reached {} (binary log names reused: a restore, a recovered primary or RESET MASTER)",
                oldest.name, last.file
            ),
        },
        None => Resume::NewTimeline {
            reason: format!(
                "a gap: the archive ends in {} at byte {}{}, and the server's oldest binary log is {}",
                last.file,
                last.end,
                if last.complete {
                    " (its end)"
                } else {
                    " (not its end)"
                },
                oldest.name
            ),
        },
    }
}

/// RFC 3339 (seconds, UTC) of Unix seconds.
pub fn rfc3339(secs: u32) -> String {
    humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(secs)))
        .to_string()
}

/// The path of `name` inside timeline `timeline`.
fn timeline_path(timeline: &str, name: &str) -> String {
    format!("{ARCHIVE_DIR}/{timeline}/{name}")
}

/// The largest JSON record read from the store: they are a few hundred bytes.
const MAX_JSON_BYTES: u64 = 1 << 20;

async fn get_json<T: for<'de> Deserialize<'de>>(store: &Store, name: &str) -> Result<Option<T>> {
    let path = store.path(name);
    match store.objects().get(&path).await {
        Ok(got) => {
            ensure!(
                got.meta.size <= MAX_JSON_BYTES,
                "{path} in {} holds {} bytes, not a record of this agent",
                store.location,
                got.meta.size
            );
            let bytes = got
                .bytes()
                .await
                .with_context(|| format!("reading {path} from {}", store.location))?;
            serde_json::from_slice(&bytes)
                .map(Some)
                .with_context(|| format!("{path} in {} is not valid", store.location))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {path} from {}", store.location)),
    }
}

async fn put_json<T: Serialize>(store: &Store, name: &str, value: &T) -> Result<()> {
    let path = store.path(name);
    let mut text = serde_json::to_vec_pretty(value).context("encoding JSON")?;
    text.push(b'\n');
    store
        .objects()
        .put(&path, PutPayload::from(text))
        .await
        .with_context(|| format!("writing {path} to {}", store.location))?;
    Ok(())
}

/// The names of the store's timelines, oldest first.
pub async fn timelines(store: &Store) -> Result<Vec<String>> {
    let root = store.path(ARCHIVE_DIR);
    let listed = store
        .objects()
        .list_with_delimiter(Some(&root))
        .await
        .with_context(|| format!("listing {root} in {}", store.location))?;
    let mut names: Vec<String> = listed
        .common_prefixes
        .iter()
        .filter_map(|p| p.filename().map(str::to_owned))
        .filter(|n| is_timeline_name(n))
        .collect();
    names.sort();
    Ok(names)
}

/// Reads timeline `name`: its info, progress, files and segments.
pub async fn load(store: &Store, name: &str) -> Result<Timeline> {
    let info: TimelineInfo = get_json(store, &timeline_path(name, TIMELINE_FILE))
        .await?
        .ok_or_else(|| {
            anyhow!(
                "timeline {name} in {} has no {TIMELINE_FILE}",
                store.location
            )
        })?;
    ensure!(
        info.format <= FORMAT,
        "timeline {name} has format {}, newer than this agent reads ({FORMAT})",
        info.format
    );
    let progress: Option<Progress> = get_json(store, &timeline_path(name, PROGRESS_FILE)).await?;
    let prefix = store.path(&format!("{ARCHIVE_DIR}/{name}"));
    let mut files: BTreeMap<(String, u64), ArchivedFile> = BTreeMap::new();
    let mut heads = Vec::new();
    let mut listed = store.objects().list(Some(&prefix));
    while let Some(meta) = listed.next().await {
        let meta = meta.with_context(|| format!("listing {prefix} in {}", store.location))?;
        let relative = store.relative(&meta.location);
        let parts: Vec<&str> = relative.split('/').collect();
        let [_, _, file, object] = parts.as_slice() else {
            continue;
        };
        let Some((base, number)) = split_file(file) else {
            continue;
        };
        let entry = files
            .entry((base.to_owned(), number))
            .or_insert_with(|| ArchivedFile {
                name: (*file).to_owned(),
                head: None,
                segments: Vec::new(),
            });
        if *object == HEAD_FILE {
            heads.push((base.to_owned(), number));
        } else if let Some(segment) = Segment::parse(object) {
            entry.segments.push(segment);
        }
    }
    for key in heads {
        let file = files.get_mut(&key).expect("listed above");
        file.head = get_json(
            store,
            &timeline_path(name, &format!("{}/{HEAD_FILE}", file.name)),
        )
        .await?;
    }
    let mut files: Vec<ArchivedFile> = files.into_values().collect();
    for file in &mut files {
        file.segments.sort();
    }
    Ok(Timeline {
        info,
        progress,
        files,
    })
}

pub async fn write_info(store: &Store, info: &TimelineInfo) -> Result<()> {
    put_json(store, &timeline_path(&info.name, TIMELINE_FILE), info).await
}

pub async fn write_head(store: &Store, timeline: &str, head: &FileHead) -> Result<()> {
    put_json(
        store,
        &timeline_path(timeline, &format!("{}/{HEAD_FILE}", head.file)),
        head,
    )
    .await
}

pub async fn write_progress(store: &Store, timeline: &str, progress: &Progress) -> Result<()> {
    put_json(store, &timeline_path(timeline, PROGRESS_FILE), progress).await
}

/// Stores one packed segment of `file`.
pub async fn put_segment(
    store: &Store,
    timeline: &str,
    file: &str,
    segment: &Segment,
    packed: Vec<u8>,
) -> Result<()> {
    let path = store.path(&timeline_path(
        timeline,
        &format!("{file}/{}", segment.name()),
    ));
    store
        .objects()
        .put(&path, PutPayload::from(packed))
        .await
        .with_context(|| format!("storing {path} in {}", store.location))?;
    Ok(())
}

/// Reads one packed segment of `file`, refusing one larger than `max` bytes.
pub async fn get_segment(
    store: &Store,
    timeline: &str,
    file: &str,
    segment: &Segment,
    max: u64,
) -> Result<bytes::Bytes> {
    let path = store.path(&timeline_path(
        timeline,
        &format!("{file}/{}", segment.name()),
    ));
    let got = store
        .objects()
        .get(&path)
        .await
        .with_context(|| format!("reading {path} from {}", store.location))?;
    ensure!(
        got.meta.size <= max,
        "{path} in {} holds {} bytes, more than a segment can",
        store.location,
        got.meta.size
    );
    got.bytes()
        .await
        .with_context(|| format!("reading {path} from {}", store.location))
}

/// Checks that a timeline's files follow one another with no hole, up to `until` (a file
/// name, inclusive) or to the end.
pub fn check_continuous(timeline: &Timeline, from: usize) -> Result<()> {
    for pair in timeline.files[from..].windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let (_, complete) = a
            .archived_end()
            .with_context(|| format!("timeline {}", timeline.info.name))?;
        if !complete || !is_successor(&a.name, &b.name) {
            bail!(
                "timeline {} has a gap between {} and {}: {}",
                timeline.info.name,
                a.name,
                b.name,
                if complete {
                    "files are missing between them"
                } else {
                    "the first one's end is not archived"
                }
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logs(list: &[(&str, u64)]) -> Vec<ServerLog> {
        list.iter()
            .map(|(n, s)| ServerLog {
                name: n.to_string(),
                size: *s,
            })
            .collect()
    }

    fn last(file: &str, end: u64, complete: bool) -> LastArchived {
        LastArchived {
            file: file.into(),
            end,
            complete,
            digest: Some("aa".into()),
        }
    }

    #[test]
    fn segment_names_round_trip() {
        for s in [
            Segment {
                start: 0,
                end: 4096,
                last: false,
                encrypted: false,
            },
            Segment {
                start: 4096,
                end: 4096,
                last: true,
                encrypted: true,
            },
        ] {
            assert_eq!(Segment::parse(&s.name()), Some(s), "{}", s.name());
        }
        assert_eq!(
            Segment {
                start: 4,
                end: 77,
                last: true,
                encrypted: false
            }
            .name(),
            "000000000004-000000000077-final.zst"
        );
        for bad in [
            "head.json",
            "000000000004-000000000003.zst",
            "4-77.zst",
            "000000000004-000000000077.gz",
        ] {
            assert_eq!(Segment::parse(bad), None, "{bad}");
        }
        assert_eq!(split_file("mysql-0-bin.000012"), Some(("mysql-0-bin", 12)));
        assert_eq!(split_file("bin.12"), None);
        assert!(is_successor("mysql-0-bin.000009", "mysql-0-bin.000010"));
        assert!(!is_successor("mysql-0-bin.000009", "mysql-0-bin.000011"));
        assert!(!is_successor("a-bin.000009", "b-bin.000010"));
        let name = timeline_name(1_764_680_400, "0123456789abcdef");
        assert_eq!(name, "20251202T130000Z-01234567");
        assert!(is_timeline_name(&name));
        assert!(!is_timeline_name("20251202T130000Z-0123456"));
    }

    #[test]
    fn holes_in_a_file_are_named() {
        let seg = |start, end, last| Segment {
            start,
            end,
            last,
            encrypted: false,
        };
        let mut file = ArchivedFile {
            name: "b.000001".into(),
            head: None,
            segments: vec![seg(0, 100, false), seg(100, 250, true)],
        };
        assert_eq!(file.archived_end().unwrap(), (250, true));
        // A segment stored twice from one start: the longer one counts.
        file.segments = vec![
            seg(0, 100, false),
            seg(100, 180, false),
            seg(100, 250, true),
        ];
        assert_eq!(file.archived_end().unwrap(), (250, true));
        assert_eq!(file.chain().unwrap().len(), 2);
        file.segments = vec![seg(0, 100, false), seg(120, 250, false)];
        let msg = format!("{:#}", file.archived_end().unwrap_err());
        assert!(msg.contains("bytes 100..120 are missing"), "{msg}");
    }

    #[test]
    fn the_archive_continues_only_the_same_history() {
        let server = logs(&[("b.000003", 900), ("b.000004", 300)]);
        // The same file, grown: go on from where the archive ends.
        assert_eq!(
            decide(Some(&last("b.000003", 500, false)), &server, Some("aa")),
            Resume::At {
                file: "b.000003".into(),
                offset: 500
            }
        );
        // Names reused: another file of the same name.
        let Resume::NewTimeline { reason } =
            decide(Some(&last("b.000003", 500, false)), &server, Some("bb"))
        else {
            panic!("stitched")
        };
        assert!(reason.contains("names reused"), "{reason}");
        // Shorter than archived.
        assert!(matches!(
            decide(Some(&last("b.000003", 1000, false)), &server, Some("aa")),
            Resume::NewTimeline { .. }
        ));
        // The archived file is gone but was complete, and the server's oldest is the next.
        assert_eq!(
            decide(Some(&last("b.000002", 700, true)), &server, None),
            Resume::At {
                file: "b.000003".into(),
                offset: 0
            }
        );
        // A gap: its end was never archived, or files in between are gone.
        for (file, complete) in [("b.000002", false), ("b.000001", true)] {
            let Resume::NewTimeline { reason } =
                decide(Some(&last(file, 700, complete)), &server, None)
            else {
                panic!("crossed a gap")
            };
            assert!(
                reason.contains("a gap") && reason.contains("b.000003"),
                "{reason}"
            );
        }
        assert!(matches!(
            decide(None, &server, None),
            Resume::NewTimeline { .. }
        ));
        // A restored primary's new sequence, behind the archive's last file.
        let Resume::NewTimeline { reason } = decide(
            Some(&last("b.000007", 700, false)),
            &logs(&[("b.000001", 300), ("b.000002", 100)]),
            None,
        ) else {
            panic!("stitched")
        };
        assert!(reason.contains("start over at b.000001"), "{reason}");
    }

    /// The layout round-trips through a mounted directory (`file://`), the other store kind.
    #[tokio::test]
    async fn a_timeline_round_trips_through_a_directory_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::in_dir(dir.path());
        assert!(timelines(&store).await.unwrap().is_empty());
        let name = timeline_name(1_764_680_400, "0123456789abcdef");
        let info = TimelineInfo {
            format: FORMAT,
            name: name.clone(),
            begins_at: rfc3339(1_764_680_000),
            first_file: "b.000001".into(),
            first_digest: Some("0123456789abcdef".into()),
            start_state: Some("0-100-7".into()),
            server_id: 100,
            server_version: "10.11.19-MariaDB-log".into(),
            created_at: rfc3339(1_764_680_400),
            previous: None,
            reason: "the first archived history of this store".into(),
            compression: "zstd level 1".into(),
            recipients: None,
        };
        write_info(&store, &info).await.unwrap();
        let head = FileHead {
            file: "b.000001".into(),
            created: 1_764_680_000,
            created_at: rfc3339(1_764_680_000),
            gtid_list: Some("0-100-7".into()),
            server_id: 100,
            server_version: "10.11.19-MariaDB-log".into(),
            digest: "0123456789abcdef".into(),
            header_end: 299,
        };
        write_head(&store, &name, &head).await.unwrap();
        for segment in [
            Segment {
                start: 0,
                end: 10,
                last: false,
                encrypted: false,
            },
            Segment {
                start: 10,
                end: 25,
                last: true,
                encrypted: false,
            },
        ] {
            put_segment(&store, &name, "b.000001", &segment, vec![1, 2, 3])
                .await
                .unwrap();
        }
        write_progress(
            &store,
            &name,
            &Progress {
                file: "b.000001".into(),
                offset: 25,
                checked_at: rfc3339(1_764_680_500),
            },
        )
        .await
        .unwrap();
        // Something that is not the archive's, left alone.
        std::fs::create_dir_all(dir.path().join("binlogs/not-a-timeline")).unwrap();
        std::fs::write(dir.path().join("binlogs/not-a-timeline/x"), "x").unwrap();
        assert_eq!(
            timelines(&store).await.unwrap(),
            std::slice::from_ref(&name)
        );
        let timeline = load(&store, &name).await.unwrap();
        assert_eq!(timeline.info, info);
        assert_eq!(timeline.progress.as_ref().unwrap().offset, 25);
        assert_eq!(timeline.files.len(), 1);
        assert_eq!(timeline.files[0].head.as_ref(), Some(&head));
        let (file, end, complete) = timeline.last().unwrap().unwrap();
        assert_eq!((file.name.as_str(), end, complete), ("b.000001", 25, true));
        let segment = timeline.files[0].segments[1];
        let bytes = get_segment(&store, &name, "b.000001", &segment, 3)
            .await
            .unwrap();
        assert_eq!(&bytes[..], [1, 2, 3]);
        assert!(
            get_segment(&store, &name, "b.000001", &segment, 2)
                .await
                .is_err()
        );
    }
}
