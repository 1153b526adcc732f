//! Point-in-time recovery (`clone --restore-from URL --restore-until TARGET`): the latest
//! complete backup before the target, then the archived binary logs ([`crate::archive`])
//! replayed up to it, in the staging directory, before the data is committed and mysqld
//! starts.
//!
//! The boundary: the binary log is replayed in its own (commit) order up to, not including,
//! the first transaction stamped after the target (a time), or through the transaction with
//! the target GTID. The server stamps a transaction's events with the time its statement
//! began, in whole seconds: a transaction is present when it, and everything before it in the
//! log, is stamped at or before the target.
//!
//! What is refused, before anything is written: a target past what the archive is known to
//! hold (its last check), a target in a gap between timelines, a backup that would have to be
//! rolled forward across a gap or from another history, a GTID the archive does not hold.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow, bail, ensure};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::archive::{self, ArchivedFile, Timeline};
use crate::binlog::{self, Gtid, GtidPos};
use crate::coordinates::Position;
use crate::manifest::Manifest;
use crate::packing::Identities;
use crate::process::Supervised;
use crate::store::Store;

/// Where the archived binary logs are unpacked for the replay: inside the data dir, so the
/// clone's in-progress marker covers them (an interrupted restore's wipe removes them).
pub const BINLOG_DIR: &str = ".mysql-agent-binlogs";
/// How long the replay server may take to start (crash recovery of the prepared data).
pub const SERVER_START_TIMEOUT: Duration = Duration::from_secs(300);
/// How long it may take to shut down cleanly.
pub const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(300);
/// How long one statement to the replay server may take (its set-up, its shutdown).
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the replay itself may take: long, since a replayed statement may run for as long
/// as it ran on the primary (an ALTER TABLE), but not forever.
pub const REPLAY_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// What to restore to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A moment: transactions stamped at or before it (whole seconds, UTC).
    Time { at: SystemTime, text: String },
    /// A MariaDB GTID: through that transaction.
    Gtid(Gtid),
}

impl FromStr for Target {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.contains('T') || s.contains(':') {
            let at = humantime::parse_rfc3339(s).map_err(|e| {
                anyhow!("{s:?} is not an RFC 3339 time in UTC, e.g. 2026-12-02T14:02:00Z ({e})")
            })?;
            return Ok(Target::Time {
                at,
                text: s.to_owned(),
            });
        }
        s.parse::<Gtid>().map(Target::Gtid).map_err(|e| {
            anyhow!("{s:?} is neither an RFC 3339 time (2026-12-02T14:02:00Z) nor a GTID: {e:#}")
        })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Time { text, .. } => f.write_str(text),
            Target::Gtid(g) => write!(f, "GTID {g}"),
        }
    }
}

/// Whole seconds since the epoch: the binary log's clock.
fn unix(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn parse_time(text: &str, what: &str) -> Result<SystemTime> {
    humantime::parse_rfc3339_weak(text).with_context(|| format!("{what} {text:?} is not a time"))
}

/// The backup holds a transaction stamped after the target: an older backup may serve.
#[derive(Debug)]
pub struct HeldAfterTarget(pub String);

impl std::fmt::Display for HeldAfterTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HeldAfterTarget {}

/// Where the replay starts: after the backup's own position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum From {
    /// The first transaction the GTID position does not hold.
    Gtid(GtidPos),
    /// A file and offset of this timeline (a backup without GTIDs, from the primary).
    File { file: String, pos: u64 },
}

/// The restore chosen for a target: which timeline, which backup, and from which file on.
#[derive(Debug, Clone)]
pub struct Plan {
    pub target: Target,
    pub timeline: Timeline,
    pub backup: Manifest,
    pub from: From,
    /// The index in `timeline.files` of the first file to read.
    pub first_file: usize,
    /// What to add when the target is not found: a later timeline begins past it.
    pub gap: Option<String>,
}

/// Chooses the timeline and the backup for `target`. `timelines` oldest first, `backups`
/// newest first (complete ones).
pub fn plan(target: &Target, timelines: &[Timeline], backups: &[Manifest]) -> Result<Plan> {
    Ok(candidates(target, timelines, backups)?.remove(0))
}

/// Every way to reach `target`, best first: in the timeline that holds it, each usable
/// backup from the newest. The archive is read ([`Scanner`]) to pick among them.
pub fn candidates(
    target: &Target,
    timelines: &[Timeline],
    backups: &[Manifest],
) -> Result<Vec<Plan>> {
    ensure!(
        !timelines.is_empty(),
        "the store holds no binary log archive (serve-backup --archive-binlogs-to on the primary writes one)"
    );
    let begins = |t: &Timeline| parse_time(&t.info.begins_at, "a timeline's begins_at");
    match target {
        Target::Time { at, .. } => {
            // The newest timeline begun by then, preferring one archived past the target
            // (timelines may overlap in time when one began again from the same file).
            let mut begun = None;
            let mut covering = None;
            for (i, t) in timelines.iter().enumerate() {
                if unix(begins(t)?) <= unix(*at) {
                    begun = Some(i);
                    if covers(t, *at)? {
                        covering = Some(i);
                    }
                }
            }
            let index = covering.or(begun).ok_or_else(|| {
                anyhow!(
                    "the archive begins at {} (timeline {}), after the target {target}",
                    timelines[0].info.begins_at,
                    timelines[0].info.name
                )
            })?;
            plan_in(target, timelines, index, backups, None)
        }
        // A transaction may be in several timelines (a restored primary's first file holds
        // the transactions it replayed, under their own GTIDs): the newest that can serve it.
        Target::Gtid(g) => {
            let mut found = Vec::new();
            let mut first_error = None;
            let mut gap = None;
            for index in (0..timelines.len()).rev() {
                let timeline = &timelines[index];
                let starts_after = timeline
                    .info
                    .start_state
                    .as_deref()
                    .and_then(|s| GtidPos::parse(s).ok())
                    .is_some_and(|start| start.contains(g));
                if starts_after {
                    gap = Some(format!(
                        "timeline {} begins past it (at {}, GTID position {}) because {}: the target may fall in that gap",
                        timeline.info.name,
                        timeline.info.begins_at,
                        timeline.info.start_state.as_deref().unwrap_or(""),
                        timeline.info.reason
                    ));
                    continue;
                }
                match plan_in(target, timelines, index, backups, gap.clone()) {
                    Ok(plans) => found.extend(plans),
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            if found.is_empty() {
                Err(first_error
                    .unwrap_or_else(|| anyhow!("every archived timeline begins after {target}")))
            } else {
                Ok(found)
            }
        }
    }
}

/// Whether `timeline` is known archived past the end of `at`'s second.
fn covers(timeline: &Timeline, at: SystemTime) -> Result<bool> {
    let Some(progress) = &timeline.progress else {
        return Ok(false);
    };
    let checked = parse_time(&progress.checked_at, "progress.checked_at")?;
    Ok(checked >= SystemTime::UNIX_EPOCH + Duration::from_secs(unix(at) + 1))
}

/// The plans for `target` in timeline `index`, one per usable backup, newest first.
fn plan_in(
    target: &Target,
    timelines: &[Timeline],
    index: usize,
    backups: &[Manifest],
    gap: Option<String>,
) -> Result<Vec<Plan>> {
    let begins = |t: &Timeline| parse_time(&t.info.begins_at, "a timeline's begins_at");
    let timeline = &timelines[index];
    let next = timelines.get(index + 1);
    if let Target::Time { at, .. } = target {
        ensure!(
            timeline.progress.is_some(),
            "timeline {} of the archive holds no progress record: nothing of it is known to be archived",
            timeline.info.name
        );
        // A target second covers commits up to its end: the archive must have been checked
        // after that end.
        if !covers(timeline, *at)? {
            match next {
                Some(next) => bail!(
                    "the target {target} falls in a gap of the archive: timeline {} is archived up to {} (in {}), \
                     and the next one, {}, begins at {} because {}; choose a target at or before {} or at or after {}",
                    timeline.info.name,
                    timeline
                        .progress
                        .as_ref()
                        .map_or("", |p| p.checked_at.as_str()),
                    timeline.progress.as_ref().map_or("", |p| p.file.as_str()),
                    next.info.name,
                    next.info.begins_at,
                    next.info.reason,
                    timeline
                        .progress
                        .as_ref()
                        .map_or("", |p| p.checked_at.as_str()),
                    next.info.begins_at
                ),
                None => bail!(
                    "the archive is known complete only up to {} (its last check, in {}); the target {target} is later: \
                     wait for the archiver (is serve-backup --archive-binlogs-to running on the primary?) or choose an earlier target",
                    timeline
                        .progress
                        .as_ref()
                        .map_or("", |p| p.checked_at.as_str()),
                    timeline.progress.as_ref().map_or("", |p| p.file.as_str())
                ),
            }
        }
    }
    let start_state = match &timeline.info.start_state {
        Some(s) => Some(GtidPos::parse(s).context("the timeline's start_state")?),
        None => None,
    };
    let timeline_begins = begins(timeline)?;
    let mut rejected = Vec::new();
    let mut found = Vec::new();
    for backup in backups {
        let finished = parse_time(&backup.finished_at, "a backup's finished_at")?;
        let after_target = match target {
            Target::Time { at, .. } => unix(finished) > unix(*at),
            Target::Gtid(g) => match &backup.coordinates.position {
                Position::MariaDbGtid { gtid_pos } => GtidPos::parse(gtid_pos)
                    .ok()
                    .and_then(|p| p.get(g.domain).copied())
                    .is_some_and(|last| last.seq > g.seq),
                _ => false,
            },
        };
        if after_target {
            continue;
        }
        if unix(finished) < unix(timeline_begins) {
            rejected.push(format!(
                "{} (finished {}) is older than timeline {}, which begins at {} because {}: rolling it forward would cross that",
                backup.name, backup.finished_at, timeline.info.name, timeline.info.begins_at, timeline.info.reason
            ));
            break;
        }
        let from = match &backup.coordinates.position {
            Position::MariaDbGtid { gtid_pos } => {
                let pos = GtidPos::parse(gtid_pos)
                    .with_context(|| format!("backup {}'s GTID position", backup.name))?;
                if let Some(start) = &start_state
                    && !start.is_within(&pos)
                {
                    rejected.push(format!(
                        "{} stands at {pos}, before timeline {} begins ({start}): the transactions in between are not archived",
                        backup.name, timeline.info.name
                    ));
                    continue;
                }
                From::Gtid(pos)
            }
            Position::File { file, pos } => From::File {
                file: file.clone(),
                pos: *pos,
            },
            Position::MysqlGtid { .. } => {
                rejected.push(format!(
                    "{} holds a MySQL GTID set, which point-in-time recovery does not read yet",
                    backup.name
                ));
                continue;
            }
        };
        // A backup this timeline cannot serve is passed over, not the whole plan.
        let first_file = match first_file(timeline, &from)
            .and_then(|i| archive::check_continuous(timeline, i).map(|()| i))
        {
            Ok(i) => i,
            Err(e) => {
                rejected.push(format!("{}: {e:#}", backup.name));
                continue;
            }
        };
        found.push(Plan {
            target: target.clone(),
            timeline: timeline.clone(),
            backup: backup.clone(),
            from,
            first_file,
            gap: gap.clone(),
        });
    }
    if !found.is_empty() {
        return Ok(found);
    }
    bail!(
        "no complete backup to start from before {target} on timeline {} (begins at {}){}",
        timeline.info.name,
        timeline.info.begins_at,
        if rejected.is_empty() {
            String::new()
        } else {
            format!(": {}", rejected.join("; "))
        }
    )
}

/// The first file to read from `from` on.
fn first_file(timeline: &Timeline, from: &From) -> Result<usize> {
    match from {
        From::File { file, .. } => timeline
            .files
            .iter()
            .position(|f| &f.name == file)
            .ok_or_else(|| {
                anyhow!(
                    "its position is in {file}, which timeline {} does not hold",
                    timeline.info.name
                )
            }),
        From::Gtid(pos) => {
            let mut chosen = None;
            for (i, file) in timeline.files.iter().enumerate() {
                let head = file.head.as_ref().ok_or_else(|| {
                    anyhow!("{} has no {} in the archive", file.name, archive::HEAD_FILE)
                })?;
                let list = GtidPos::parse(head.gtid_list.as_deref().unwrap_or(""))?;
                if list.is_within(pos) {
                    chosen = Some(i);
                }
            }
            chosen.ok_or_else(|| {
                anyhow!(
                    "its position {pos} is older than every file of timeline {}",
                    timeline.info.name
                )
            })
        }
    }
}

/// Where to start and stop in the unpacked files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// Indexes into the files read, and offsets.
    pub start: (usize, u64),
    pub stop: (usize, u64),
    pub transactions: u64,
    /// The last transaction replayed, for the log.
    pub last_gtid: Option<Gtid>,
    pub last_time: Option<u32>,
    /// Files torn inside an event (a crash of mysqld mid-write): read only to the offset.
    pub cut: Vec<(usize, u64)>,
}

/// Finds the range to replay while files are scanned in order: [`Scanner::file`] for each,
/// until it says the stop is found.
#[derive(Debug)]
pub struct Scanner {
    target: Target,
    from: From,
    start: Option<(usize, u64)>,
    stop: Option<(usize, u64)>,
    transactions: u64,
    last_gtid: Option<Gtid>,
    last_time: Option<u32>,
    /// The end of the complete transactions of the last file scanned.
    end: (usize, u64),
    /// The backup itself stands at the GTID target: nothing to read.
    at_target: bool,
    /// Files torn inside an event, and where their whole transactions end.
    cut: Vec<(usize, u64)>,
}

impl Scanner {
    pub fn new(target: Target, from: From) -> Self {
        let at_target =
            matches!((&target, &from), (Target::Gtid(g), From::Gtid(pos)) if pos.contains(g));
        Self {
            at_target,
            cut: Vec::new(),
            target,
            from,
            start: None,
            stop: None,
            transactions: 0,
            last_gtid: None,
            last_time: None,
            end: (0, 0),
        }
    }

    /// Scans file number `index` (its name `name`): returns whether the stop was found.
    pub fn file(&mut self, index: usize, name: &str, input: impl std::io::Read) -> Result<bool> {
        if self.at_target {
            return Ok(true);
        }
        let mut failure = None;
        let scanned = binlog::scan_groups(input, |g| match self.group(index, name, g) {
            Ok(go_on) => go_on,
            Err(e) => {
                failure = Some(e);
                false
            }
        })
        .with_context(|| format!("reading {name}"))?;
        if let Some(e) = failure {
            return Err(e);
        }
        let (start_info, complete_end) = (scanned.start, scanned.complete_end);
        // A file torn by a crash of mysqld ends with its last whole transaction: the replay
        // reads it only that far.
        if scanned.torn_at.is_some() {
            self.cut.push((index, complete_end));
        }
        if self.stop.is_none() {
            self.end = (index, complete_end);
            // A file position inside the header or past the transactions is where they end.
            if self.start.is_none()
                && let From::File { file, pos } = &self.from
                && file == name
                && *pos >= complete_end
            {
                self.start = Some((index, complete_end.max(start_info.header_end)));
            }
        }
        Ok(self.stop.is_some())
    }

    fn group(&mut self, index: usize, name: &str, g: &binlog::Group) -> Result<bool> {
        // Before the start: the backup holds these.
        if self.start.is_none() {
            let held = match &self.from {
                From::Gtid(pos) => g.gtid.is_some_and(|gtid| pos.contains(&gtid)),
                From::File { file, pos } => file != name || g.start < *pos,
            };
            if held {
                if let Target::Time { at, .. } = &self.target
                    && u64::from(g.commit_time) > unix(*at)
                {
                    return Err(anyhow::Error::new(HeldAfterTarget(format!(
                        "the backup holds a transaction stamped {} ({name} at {}), after the target {}",
                        archive::rfc3339(g.commit_time),
                        g.start,
                        self.target
                    ))));
                }
                return Ok(true);
            }
            self.start = Some((index, g.start));
        } else if let (From::Gtid(pos), Some(gtid)) = (&self.from, g.gtid)
            && pos.contains(&gtid)
        {
            bail!(
                "{gtid} ({name} at {}) is held by the backup but follows transactions it does not hold: \
                 several replication domains interleave, which this replay cannot split",
                g.start
            );
        }
        match &self.target {
            Target::Time { at, .. } => {
                if u64::from(g.commit_time) > unix(*at) {
                    self.stop = Some((index, g.start));
                    return Ok(false);
                }
            }
            Target::Gtid(target) => {
                if let Some(gtid) = g.gtid
                    && gtid.domain == target.domain
                    && (gtid.seq > target.seq || (gtid.seq == target.seq && gtid != *target))
                {
                    bail!(
                        "GTID {target} is not in the archive: domain {} goes on with {gtid} ({name} at {}) without it",
                        target.domain,
                        g.start
                    );
                }
            }
        }
        self.transactions += 1;
        self.last_gtid = g.gtid.or(self.last_gtid);
        self.last_time = Some(g.commit_time);
        if let Target::Gtid(target) = &self.target
            && g.gtid == Some(*target)
        {
            self.stop = Some((index, g.end));
            return Ok(false);
        }
        Ok(true)
    }

    /// The range, once every file was scanned (`complete`: the archive's end was reached).
    pub fn finish(self) -> Result<Range> {
        if self.at_target {
            return Ok(Range {
                start: (0, 0),
                stop: (0, 0),
                transactions: 0,
                last_gtid: None,
                last_time: None,
                cut: Vec::new(),
            });
        }
        let stop = match (self.stop, &self.target) {
            (Some(stop), _) => stop,
            (None, Target::Time { .. }) => self.end,
            (None, Target::Gtid(g)) => bail!(
                "GTID {g} is not in the archive yet (it ends after {} transactions past the backup)",
                self.transactions
            ),
        };
        let start = self.start.unwrap_or(stop);
        Ok(Range {
            start,
            stop,
            transactions: self.transactions,
            last_gtid: self.last_gtid,
            last_time: self.last_time,
            cut: self.cut,
        })
    }
}

/// The server's programs the replay runs, found on PATH (MariaDB's names first).
#[derive(Debug, Clone)]
pub struct Programs {
    pub server: PathBuf,
    pub binlog: PathBuf,
    pub client: PathBuf,
}

impl Programs {
    pub fn locate() -> Result<Self> {
        let find = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| which::which(n).ok())
                .ok_or_else(|| {
                    anyhow!(
                        "none of {} is on PATH: the replay of binary logs runs the server's own programs, \
                         so the clone container needs the server's image (the MariaDB overlay's agent image has them)",
                        names.join(", ")
                    )
                })
        };
        Ok(Self {
            server: find(&["mariadbd", "mysqld"])?,
            binlog: find(&["mariadb-binlog", "mysqlbinlog"])?,
            client: find(&["mariadb", "mysql"])?,
        })
    }
}

/// The replay's settings.
#[derive(Debug, Clone)]
pub struct Replay {
    pub programs: Programs,
    /// The pod's server configuration (`--defaults-file`), so the replay server runs with the
    /// same InnoDB settings and binary log; `None`: the server's own default files.
    pub defaults_file: Option<PathBuf>,
}

/// The largest packed segment read from the store: a 16 MiB segment that zstd could not
/// shrink, with room for its framing and encryption.
const MAX_PACKED_SEGMENT: u64 = 2 * archive::SEGMENT_MAX_BYTES + (1 << 20);

/// One archived file read back as the server wrote it: its segments fetched in order (a
/// blocking reader: use it off the async threads, inside a runtime), each unpacked and held
/// to its length.
pub struct ArchivedFileReader {
    handle: tokio::runtime::Handle,
    store: Store,
    timeline: String,
    file: ArchivedFile,
    /// The file's segments in order ([`ArchivedFile::chain`]).
    segments: Vec<archive::Segment>,
    identities: Option<Arc<Identities>>,
    next: usize,
    current: Option<(Box<dyn Read + Send>, u64)>,
}

impl ArchivedFileReader {
    pub fn new(
        store: &Store,
        timeline: &str,
        file: &ArchivedFile,
        identities: Option<Arc<Identities>>,
    ) -> Result<Self> {
        let segments = file
            .chain()
            .with_context(|| format!("timeline {timeline}"))?;
        Ok(Self {
            handle: tokio::runtime::Handle::current(),
            store: store.clone(),
            timeline: timeline.to_owned(),
            file: file.clone(),
            segments,
            identities,
            next: 0,
            current: None,
        })
    }

    fn open_next(&mut self) -> Result<bool> {
        let Some(segment) = self.segments.get(self.next).copied() else {
            return Ok(false);
        };
        self.next += 1;
        ensure!(
            !segment.encrypted || self.identities.is_some(),
            "the binary log archive is encrypted (age): pass --age-identity-file with its private key"
        );
        let what = format!(
            "{}/{} of timeline {}",
            self.file.name,
            segment.name(),
            self.timeline
        );
        let packed = self.handle.block_on(archive::get_segment(
            &self.store,
            &self.timeline,
            &self.file.name,
            &segment,
            MAX_PACKED_SEGMENT,
        ))?;
        let unpacked = crate::packing::unpack(
            std::io::Cursor::new(packed),
            self.identities.as_deref().filter(|_| segment.encrypted),
        )
        .with_context(|| format!("unpacking {what}"))?;
        let length = segment.end - segment.start;
        // One byte more than it should hold, to see that it holds no more.
        self.current = Some((Box::new(unpacked.take(length + 1)), length));
        Ok(true)
    }
}

impl Read for ArchivedFileReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if let Some((reader, left)) = &mut self.current {
                let n = reader.read(buf).map_err(|e| {
                    std::io::Error::other(format!(
                        "unpacking {} of timeline {} (damaged, or another key?): {e}",
                        self.file.name, self.timeline
                    ))
                })?;
                if n > 0 {
                    if n as u64 > *left {
                        return Err(std::io::Error::other(format!(
                            "a segment of {} in timeline {} unpacks to more bytes than its name says",
                            self.file.name, self.timeline
                        )));
                    }
                    *left -= n as u64;
                    return Ok(n);
                }
                if *left > 0 {
                    return Err(std::io::Error::other(format!(
                        "a segment of {} in timeline {} unpacks to {left} bytes fewer than its name says",
                        self.file.name, self.timeline
                    )));
                }
                self.current = None;
            }
            match self.open_next() {
                Ok(true) => {}
                Ok(false) => return Ok(0),
                Err(e) => return Err(std::io::Error::other(format!("{e:#}"))),
            }
        }
    }
}

/// A restore to a point in time, decided: the backup, and the range of the archive to replay
/// after it.
#[derive(Debug, Clone)]
pub struct Decided {
    pub plan: Plan,
    pub range: Range,
}

/// Reads the archive from each candidate backup's position to the target (streamed from the
/// store, nothing written) and takes the first that reaches it: every refusal comes before
/// anything is restored. A backup holding a transaction stamped after the target gives way to
/// an older one.
pub async fn decide(
    candidates: Vec<Plan>,
    store: &Store,
    identities: Option<Arc<Identities>>,
) -> Result<Decided> {
    let mut passed = Vec::new();
    let mut first_error: Option<anyhow::Error> = None;
    for plan in candidates {
        match scan(&plan, store, identities.clone()).await {
            Ok(range) => return Ok(Decided { plan, range }),
            Err(e) if e.chain().any(|c| c.is::<HeldAfterTarget>()) => {
                warn!(backup = %plan.backup.name, reason = %format!("{e:#}"), "this backup is past the target; trying an older one");
                passed.push(format!("{}: {e:#}", plan.backup.name));
            }
            // Another candidate (an older timeline, for a GTID target) may still serve.
            Err(e) => {
                let e = match &plan.gap {
                    Some(gap) => e.context(gap.clone()),
                    None => e,
                };
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => bail!("no backup stands before the target: {}", passed.join("; ")),
    }
}

/// The range of `plan`'s timeline to replay, found by reading its files from the store.
async fn scan(plan: &Plan, store: &Store, identities: Option<Arc<Identities>>) -> Result<Range> {
    let plan = plan.clone();
    let store = store.clone();
    tokio::task::spawn_blocking(move || -> Result<Range> {
        let mut scanner = Scanner::new(plan.target.clone(), plan.from.clone());
        for (i, file) in plan.timeline.files[plan.first_file..].iter().enumerate() {
            // The newest file may have its head stored and no byte yet (it was just opened):
            // the archive ends before it.
            if file.archived_end()?.0 == 0 {
                break;
            }
            let input = std::io::BufReader::with_capacity(
                1 << 20,
                ArchivedFileReader::new(
                    &store,
                    &plan.timeline.info.name,
                    file,
                    identities.clone(),
                )?,
            );
            if scanner.file(i, &file.name, input)? {
                break;
            }
        }
        scanner.finish()
    })
    .await
    .context("the scanning task failed")?
}

/// Unpacks the decided range's files into `<data dir>/.mysql-agent-binlogs` and replays them
/// into the prepared data in `staging` with a private server (no network, grant tables off).
pub async fn replay(
    decided: &Decided,
    store: &Store,
    identities: Option<Arc<Identities>>,
    replay: &Replay,
    data_dir: &Path,
    staging: &Path,
    cancel: &CancellationToken,
) -> Result<()> {
    let Decided { plan, range } = decided;
    info!(
        backup = %plan.backup.name,
        timeline = %plan.timeline.info.name,
        transactions = range.transactions,
        last_gtid = ?range.last_gtid.map(|g| g.to_string()),
        last_commit = ?range.last_time.map(archive::rfc3339),
        "replaying the archived binary logs up to {}",
        plan.target
    );
    if range.transactions == 0 {
        info!("the backup already stands at the target: nothing to replay");
        return Ok(());
    }
    let dir = data_dir.join(BINLOG_DIR);
    crate::fsutil::remove_all(&dir)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let files =
        &plan.timeline.files[plan.first_file + range.start.0..=plan.first_file + range.stop.0];
    let mut paths = Vec::new();
    for (i, file) in files.iter().enumerate() {
        if cancel.is_cancelled() {
            bail!(crate::errors::Interrupted);
        }
        // The last file only up to the stop: what follows it was never read while planning;
        // a torn file only to its last whole transaction.
        let index = range.start.0 + i;
        let torn = range
            .cut
            .iter()
            .find(|(f, _)| *f == index)
            .map(|(_, end)| *end);
        if let Some(end) = torn {
            warn!(file = %file.name, end, "this binary log was torn inside an event (a crash of mysqld mid-write): read up to its last whole transaction");
        }
        let stop = if i + 1 == files.len() {
            range.stop.1
        } else {
            u64::MAX
        };
        let limit = stop.min(torn.unwrap_or(u64::MAX));
        let path = dir.join(&file.name);
        let (store, timeline, file, identities, to) = (
            store.clone(),
            plan.timeline.info.name.clone(),
            file.clone(),
            identities.clone(),
            path.clone(),
        );
        tokio::task::spawn_blocking(move || -> Result<()> {
            let mut input =
                ArchivedFileReader::new(&store, &timeline, &file, identities)?.take(limit);
            let mut out =
                std::fs::File::create(&to).with_context(|| format!("creating {}", to.display()))?;
            std::io::copy(&mut input, &mut out)
                .with_context(|| format!("unpacking {} into {}", file.name, to.display()))?;
            out.sync_all()
                .with_context(|| format!("writing {}", to.display()))
        })
        .await
        .context("the unpacking task failed")??;
        paths.push(path);
    }
    run_replay(plan, replay, staging, &paths, range, cancel).await?;
    crate::fsutil::remove_all(&dir)
}

/// Starts a private server on the prepared data, seeds its binary log with the backup's GTID
/// position (so the restored primary's history goes on from the backup's), pipes
/// `mariadb-binlog` into the client, and shuts the server down cleanly.
async fn run_replay(
    plan: &Plan,
    replay: &Replay,
    staging: &Path,
    files: &[PathBuf],
    range: &Range,
    cancel: &CancellationToken,
) -> Result<()> {
    // A short path of its own for the socket (unix socket paths are limited to 107 bytes).
    let run_dir = std::env::temp_dir().join(format!("mysql-agent-replay-{}", std::process::id()));
    crate::fsutil::remove_all(&run_dir)?;
    std::fs::create_dir_all(&run_dir).with_context(|| {
        format!(
            "creating {} for the replay server's socket",
            run_dir.display()
        )
    })?;
    let result = replay_in(plan, replay, staging, files, range, &run_dir, cancel).await;
    let _ = crate::fsutil::remove_all(&run_dir);
    result
}

async fn replay_in(
    plan: &Plan,
    replay: &Replay,
    staging: &Path,
    files: &[PathBuf],
    range: &Range,
    run_dir: &Path,
    cancel: &CancellationToken,
) -> Result<()> {
    let socket = run_dir.join("mysqld.sock");
    let log = run_dir.join("mysqld.err");
    let mut server = tokio::process::Command::new(&replay.programs.server);
    if let Some(defaults) = &replay.defaults_file {
        server.arg(format!("--defaults-file={}", defaults.display()));
    }
    server
        .arg(format!("--datadir={}", staging.display()))
        .arg(format!("--socket={}", socket.display()))
        .arg(format!(
            "--pid-file={}",
            run_dir.join("mysqld.pid").display()
        ))
        .arg(format!("--log-error={}", log.display()))
        .args([
            "--skip-networking",
            "--skip-grant-tables",
            "--skip-slave-start",
            "--event-scheduler=DISABLED",
        ])
        .stdout(std::process::Stdio::null());
    let mut server = Supervised::spawn(server, "the replay server")?;
    let result = async {
        let mut conn = wait_for_socket(&socket, &mut server, &log, cancel).await?;
        seed_binlog_state(&mut conn, &plan.from).await?;
        drop(conn);
        pipe_binlogs(replay, files, range, &socket, cancel).await
    }
    .await;
    let stopped = stop_server(&mut server).await;
    if let Err(e) = result {
        return Err(e.context(format!("the replay server's log ends with: {}", tail(&log))));
    }
    stopped
}

async fn wait_for_socket(
    socket: &Path,
    server: &mut Supervised,
    log: &Path,
    cancel: &CancellationToken,
) -> Result<mysql_async::Conn> {
    let opts = mysql_async::OptsBuilder::default()
        .socket(Some(socket.display().to_string()))
        .user(Some("mysql-agent-replay"))
        .prefer_socket(true);
    let deadline = tokio::time::Instant::now() + SERVER_START_TIMEOUT;
    loop {
        if let Ok(Ok(conn)) = tokio::time::timeout(
            crate::mysql::CONNECT_TIMEOUT,
            mysql_async::Conn::new(opts.clone()),
        )
        .await
        {
            return Ok(conn);
        }
        if let Ok(Some(status)) = server.try_status() {
            bail!("the replay server exited with {status}: {}", tail(log));
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "the replay server did not accept connections within {SERVER_START_TIMEOUT:?}: {}",
                tail(log)
            );
        }
        crate::retry::sleep(Duration::from_millis(200), cancel).await?;
    }
}

/// MariaDB: the restored primary's binary log starts at the backup's position, so the
/// replayed transactions and the new ones continue its GTID history.
async fn seed_binlog_state(conn: &mut mysql_async::Conn, from: &From) -> Result<()> {
    use mysql_async::prelude::Queryable;
    let From::Gtid(pos) = from else {
        return Ok(());
    };
    // Read as text (mysql::text_at): a typed conversion of an odd answer would panic.
    let row: Option<mysql_async::Row> =
        tokio::time::timeout(QUERY_TIMEOUT, conn.query_first("SELECT @@log_bin"))
            .await
            .map_err(|_| anyhow!("the replay server did not answer within {QUERY_TIMEOUT:?}"))?
            .context("asking the replay server whether it writes a binary log")?;
    let log_bin = row.and_then(|r| crate::mysql::text_at(&r, 0).ok());
    if pos.is_empty() || log_bin.as_deref() != Some("1") {
        return Ok(());
    }
    tokio::time::timeout(
        QUERY_TIMEOUT,
        conn.query_drop(format!(
            "RESET MASTER; SET GLOBAL gtid_binlog_state = '{pos}'"
        )),
    )
    .await
    .map_err(|_| anyhow!("the replay server did not answer within {QUERY_TIMEOUT:?}"))?
    .with_context(|| format!("seeding the replay server's binary log with {pos}"))
}

/// `mariadb-binlog FILES | mariadb`, the grant tables loaded first in the client's session.
async fn pipe_binlogs(
    replay: &Replay,
    files: &[PathBuf],
    range: &Range,
    socket: &Path,
    cancel: &CancellationToken,
) -> Result<()> {
    let mut decoder = tokio::process::Command::new(&replay.programs.binlog);
    decoder
        .arg(format!("--start-position={}", range.start.1))
        .arg(format!("--stop-position={}", range.stop.1))
        .args(files)
        .stdout(std::process::Stdio::piped());
    let mut decoder = Supervised::spawn(decoder, "mariadb-binlog")?;
    let mut client = tokio::process::Command::new(&replay.programs.client);
    client
        .arg("--binary-mode")
        .arg("--user=mysql-agent-replay")
        .arg(format!("--socket={}", socket.display()));
    let mut client = Supervised::spawn_with_stdin(client, "the replay client")?;
    let mut sql_in = client.take_stdin().context("the client's stdin")?;
    let mut events = decoder.take_stdout().context("mariadb-binlog's stdout")?;
    // Everything from the first byte to both exits, under one deadline and the shutdown
    // signal; dropping it kills both groups.
    let work = async move {
        let copy = async {
            // A session started with the grant tables off may run GRANT once they are
            // loaded; NO_WRITE_TO_BINLOG keeps this out of the restored primary's history.
            sql_in
                .write_all(b"FLUSH NO_WRITE_TO_BINLOG PRIVILEGES;\n")
                .await?;
            tokio::io::copy(&mut events, &mut sql_in).await?;
            sql_in.shutdown().await?;
            drop(sql_in);
            Ok::<_, std::io::Error>(())
        };
        let copied = copy.await;
        // A client that stopped (a statement failed) no longer reads: the decoder is
        // stopped with its group, not left to notice the closed pipe.
        let decoded = match &copied {
            Ok(()) => decoder.wait().await?,
            Err(_) => decoder.kill().await?,
        };
        let applied = client.wait().await?;
        ensure!(
            applied.status.success(),
            "replaying the binary logs failed: {} {}",
            replay.programs.client.display(),
            applied.describe()
        );
        copied.context("feeding the binary logs to the client")?;
        ensure!(
            decoded.status.success(),
            "{} {}",
            replay.programs.binlog.display(),
            decoded.describe()
        );
        Ok(())
    };
    tokio::select! {
        done = work => done,
        () = cancel.cancelled() => bail!(crate::errors::Interrupted),
        () = tokio::time::sleep(REPLAY_TIMEOUT) => bail!(
            "the replay did not finish within {}",
            humantime::format_duration(REPLAY_TIMEOUT)
        ),
    }
}

/// Stops the replay server with SIGTERM, its clean shutdown: once the client's session has
/// loaded the grant tables, no other session could log in to ask it.
async fn stop_server(server: &mut Supervised) -> Result<()> {
    server.terminate();
    match tokio::time::timeout(SERVER_STOP_TIMEOUT, server.wait()).await {
        Ok(finished) => {
            let finished = finished?;
            if !finished.status.success() {
                warn!(how = %finished.describe(), "the replay server's exit");
            }
            Ok(())
        }
        Err(_) => {
            server.kill().await?;
            bail!(
                "the replay server did not shut down within {SERVER_STOP_TIMEOUT:?}; it was killed, so the replayed data is not trusted"
            )
        }
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(8).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binlog::tests::LogBuilder;

    fn g(s: &str) -> Gtid {
        s.parse().unwrap()
    }

    fn at(secs: u64) -> Target {
        Target::Time {
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
            text: secs.to_string(),
        }
    }

    /// Two files: 0-100-3 … 0-100-5 at 1001…1005, then 0-100-6 … 0-100-8 at 1006…1008.
    fn two_files() -> (Vec<u8>, Vec<u8>) {
        let mut a = LogBuilder::new(1000, 100, &[g("0-100-2")]);
        a.transaction(1001, 1001, 0, 3)
            .transaction(1003, 1003, 0, 4)
            .ddl(1005, 0, 5);
        let mut b = LogBuilder::new(1006, 100, &[g("0-100-5")]);
        b.transaction(1006, 1006, 0, 6)
            .transaction(1007, 1007, 0, 7)
            .transaction(1008, 1008, 0, 8);
        (a.bytes, b.bytes)
    }

    fn scan(target: Target, from: From) -> Result<Range> {
        let (a, b) = two_files();
        let mut s = Scanner::new(target, from);
        if !s.file(0, "b.000001", &a[..])? {
            s.file(1, "b.000002", &b[..])?;
        }
        s.finish()
    }

    /// A client that fails mid-stream ends the replay with its own error, while the decoder
    /// still writes: nothing is left waiting.
    #[tokio::test]
    async fn a_failing_client_ends_the_replay() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let client = dir.path().join("client");
        std::fs::write(
            &client,
            "#!/bin/sh\nhead -c 100000 >/dev/null\necho 'ERROR 1062 (23000) at line 9: Duplicate entry' >&2\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&client, std::fs::Permissions::from_mode(0o755)).unwrap();
        let replay = Replay {
            programs: Programs {
                server: "/nonexistent".into(),
                // An endless decoder.
                binlog: which::which("yes").unwrap(),
                client,
            },
            defaults_file: None,
        };
        let range = Range {
            start: (0, 4),
            stop: (0, 100),
            transactions: 1,
            last_gtid: None,
            last_time: None,
            cut: Vec::new(),
        };
        let cancel = CancellationToken::new();
        let err = tokio::time::timeout(
            Duration::from_secs(60),
            pipe_binlogs(
                &replay,
                &[],
                &range,
                Path::new("/nonexistent.sock"),
                &cancel,
            ),
        )
        .await
        .expect("the replay hung")
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("Duplicate entry") && msg.contains("status 1"),
            "{msg}"
        );
    }

    #[test]
    fn targets_parse() {
        assert!(matches!(
            "2026-12-02T14:02:00Z".parse::<Target>().unwrap(),
            Target::Time { .. }
        ));
        assert_eq!(
            "0-100-57".parse::<Target>().unwrap(),
            Target::Gtid(g("0-100-57"))
        );
        for bad in [
            "yesterday",
            "2026-12-02 14:02",
            "2026-13-02T14:02:00Z",
            "0-100",
        ] {
            assert!(bad.parse::<Target>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_range_stops_before_the_first_transaction_after_a_time() {
        let pos = |s: &str| From::Gtid(GtidPos::parse(s).unwrap());
        // From 0-100-3 on, up to 1006: 0-100-4, 0-100-5, 0-100-6.
        let r = scan(at(1006), pos("0-100-3")).unwrap();
        assert_eq!(r.transactions, 3);
        assert_eq!(r.last_gtid, Some(g("0-100-6")));
        assert_eq!((r.start.0, r.stop.0), (0, 1));
        // A target between two commits stops at the later one's start.
        let r2 = scan(at(1002), pos("0-100-3")).unwrap();
        assert_eq!(r2.transactions, 0);
        let r3 = scan(at(1003), pos("0-100-2")).unwrap();
        assert_eq!(r3.transactions, 2);
        assert_eq!(r3.last_gtid, Some(g("0-100-4")));
        // Past the archive's end: everything.
        let all = scan(at(5000), pos("0-100-2")).unwrap();
        assert_eq!(all.transactions, 6);
        assert_eq!(all.stop.0, 1);
        // A backup holding a transaction after the target is refused.
        let msg = format!("{:#}", scan(at(1002), pos("0-100-4")).unwrap_err());
        assert!(msg.contains("after the target"), "{msg}");
    }

    #[test]
    fn a_gtid_target_is_included_and_must_exist() {
        let pos = |s: &str| From::Gtid(GtidPos::parse(s).unwrap());
        let r = scan(Target::Gtid(g("0-100-7")), pos("0-100-4")).unwrap();
        assert_eq!(r.transactions, 3);
        assert_eq!(r.last_gtid, Some(g("0-100-7")));
        // The backup itself at the target: nothing to replay.
        let r = scan(Target::Gtid(g("0-100-4")), pos("0-100-4")).unwrap();
        assert_eq!(r.transactions, 0);
        let msg = format!(
            "{:#}",
            scan(Target::Gtid(g("0-100-99")), pos("0-100-4")).unwrap_err()
        );
        assert!(msg.contains("not in the archive"), "{msg}");
        let msg = format!(
            "{:#}",
            scan(Target::Gtid(g("0-7-6")), pos("0-100-4")).unwrap_err()
        );
        assert!(msg.contains("goes on with 0-100-6"), "{msg}");
    }

    /// A file torn by a crash of mysqld (its last transaction cut inside an event) ends with
    /// its last whole transaction, and the history goes on in the next file.
    #[test]
    fn a_torn_file_ends_at_its_last_whole_transaction() {
        let (a, b) = two_files();
        let whole = a.len() as u64;
        // The first file again, with a transaction begun and cut inside its XID event.
        let mut log = LogBuilder::new(1000, 100, &[g("0-100-2")]);
        log.transaction(1001, 1001, 0, 3)
            .transaction(1003, 1003, 0, 4)
            .ddl(1005, 0, 5)
            .transaction(1005, 1005, 0, 6);
        assert!(log.bytes.starts_with(&a));
        let torn = &log.bytes[..log.bytes.len() - 10];
        let mut s = Scanner::new(at(5000), From::Gtid(GtidPos::parse("0-100-2").unwrap()));
        assert!(!s.file(0, "b.000001", torn).unwrap());
        s.file(1, "b.000002", &b[..]).unwrap();
        let r = s.finish().unwrap();
        assert_eq!(r.transactions, 6);
        assert_eq!(r.cut, [(0, whole)]);
    }

    #[test]
    fn a_file_position_starts_the_range() {
        let (a, _) = two_files();
        let mut s = Scanner::new(
            at(5000),
            From::File {
                file: "b.000001".into(),
                pos: 0,
            },
        );
        s.file(0, "b.000001", &a[..]).unwrap();
        let r = s.finish().unwrap();
        assert_eq!(r.transactions, 3);
    }

    fn timeline(
        name: &str,
        begins: u32,
        checked: u32,
        start_state: &str,
        reason: &str,
    ) -> Timeline {
        Timeline {
            info: archive::TimelineInfo {
                format: 1,
                name: name.into(),
                begins_at: archive::rfc3339(begins),
                first_file: "b.000001".into(),
                first_digest: None,
                start_state: Some(start_state.into()),
                server_id: 100,
                server_version: "10.11.19-MariaDB".into(),
                created_at: archive::rfc3339(begins),
                previous: None,
                reason: reason.into(),
                compression: "zstd".into(),
                recipients: None,
            },
            progress: Some(archive::Progress {
                file: "b.000001".into(),
                offset: 500,
                checked_at: archive::rfc3339(checked),
            }),
            files: vec![ArchivedFile {
                name: "b.000001".into(),
                head: Some(archive::FileHead {
                    file: "b.000001".into(),
                    created: begins,
                    created_at: archive::rfc3339(begins),
                    gtid_list: Some(start_state.into()),
                    server_id: 100,
                    server_version: String::new(),
                    digest: "00".into(),
                    header_end: 299,
                }),
                segments: vec![archive::Segment {
                    start: 0,
                    end: 500,
                    last: false,
                    encrypted: false,
                }],
            }],
        }
    }

    fn backup(name: &str, finished: u32, pos: &str) -> Manifest {
        let mut m = crate::manifest::tests::sample(name);
        m.finished_at = archive::rfc3339(finished);
        m.coordinates.position = Position::MariaDbGtid {
            gtid_pos: pos.into(),
        };
        m
    }

    #[test]
    fn plans_refuse_gaps_and_the_unarchived_future() {
        let a = timeline("20000101T000000Z-aaaaaaaa", 1000, 2000, "0-100-0", "first");
        let b = timeline(
            "20000101T010000Z-bbbbbbbb",
            3000,
            4000,
            "0-100-90",
            "a gap: the archive ends in b.000009",
        );
        let backups = vec![
            backup("b3", 3100, "0-100-95"),
            backup("b1", 1500, "0-100-40"),
            backup("b0", 1100, "0-100-10"),
        ];
        let timelines = vec![a, b];
        // In the first timeline: the newest backup before the target.
        let p = plan(&at(1800), &timelines, &backups).unwrap();
        assert_eq!(
            (p.backup.name.as_str(), p.timeline.info.name.as_str()),
            ("b1", "20000101T000000Z-aaaaaaaa")
        );
        let p = plan(&at(1200), &timelines, &backups).unwrap();
        assert_eq!(p.backup.name, "b0");
        // In the gap between the timelines.
        let msg = format!("{:#}", plan(&at(2500), &timelines, &backups).unwrap_err());
        assert!(
            msg.contains("falls in a gap") && msg.contains("a gap: the archive ends in b.000009"),
            "{msg}"
        );
        // In the second one: only a backup taken during it.
        let p = plan(&at(3500), &timelines, &backups).unwrap();
        assert_eq!(p.backup.name, "b3");
        let msg = format!("{:#}", plan(&at(3050), &timelines, &backups).unwrap_err());
        assert!(msg.contains("would cross"), "{msg}");
        // Past the last check, or in its very second (commits later in it may be missing).
        for target in [4100, 4000] {
            let msg = format!("{:#}", plan(&at(target), &timelines, &backups).unwrap_err());
            assert!(msg.contains("known complete only up to"), "{msg}");
        }
        assert!(plan(&at(3999), &timelines, &backups).is_ok());
        // Before everything.
        assert!(plan(&at(900), &timelines, &backups).is_err());
        // GTID targets: the timeline whose start does not hold it.
        let p = plan(&Target::Gtid(g("0-100-50")), &timelines, &backups).unwrap();
        assert_eq!(p.backup.name, "b1");
        let p = plan(&Target::Gtid(g("0-100-99")), &timelines, &backups).unwrap();
        assert_eq!(p.backup.name, "b3");
        // A restored primary's timeline starts from an old backup's position and holds the
        // replayed transactions again: with no backup of its own, an older timeline serves.
        let mut with_restored = timelines.clone();
        with_restored.push(timeline(
            "20000101T020000Z-cccccccc",
            5000,
            6000,
            "0-100-40",
            "the server's b.000001 is another file than the archived one (binary log names reused)",
        ));
        let p = plan(&Target::Gtid(g("0-100-50")), &with_restored, &backups).unwrap();
        assert_eq!(
            (p.backup.name.as_str(), p.timeline.info.name.as_str()),
            ("b1", "20000101T000000Z-aaaaaaaa")
        );
    }

    /// The whole path through a store: segments packed as the archiver packs them, read back
    /// by [`decide`]; the newest file, opened and not yet written to, ends the archive.
    #[tokio::test(flavor = "multi_thread")]
    async fn decide_reads_the_archive_through_the_store() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::in_dir(dir.path());
        let (a, _) = two_files();
        let mut tl = timeline("20000101T000000Z-aaaaaaaa", 1000, 2000, "0-100-2", "first");
        let name = tl.info.name.clone();
        // b.000001 in two segments, the second final; b.000002 with its head only.
        let cut = 300u64;
        let mut segments = Vec::new();
        for (start, end, last) in [(0, cut, false), (cut, a.len() as u64, true)] {
            let segment = archive::Segment {
                start,
                end,
                last,
                encrypted: false,
            };
            let mut packer = crate::packing::Packer::new(Vec::new(), 1, None).unwrap();
            packer.write_all(&a[start as usize..end as usize]).unwrap();
            archive::put_segment(
                &store,
                &name,
                "b.000001",
                &segment,
                packer.finish().unwrap(),
            )
            .await
            .unwrap();
            segments.push(segment);
        }
        tl.files[0].segments = segments;
        let mut opened = tl.files[0].clone();
        opened.name = "b.000002".into();
        opened.segments.clear();
        if let Some(head) = opened.head.as_mut() {
            head.gtid_list = Some("0-100-5".into());
        }
        tl.files.push(opened);
        let backups = vec![backup("b1", 1001, "0-100-3")];
        let candidates = candidates(&at(1500), &[tl], &backups).unwrap();
        let decided = decide(candidates, &store, None).await.unwrap();
        assert_eq!(decided.range.transactions, 2);
        assert_eq!(decided.range.last_gtid, Some(g("0-100-5")));
        assert_eq!(decided.range.stop, (0, a.len() as u64));
    }
}
