//! Binary log files as MariaDB and MySQL write them (format v4), read for what point-in-time
//! recovery needs: where a file's history starts (its GTID list), which transactions it
//! holds (event groups, each with its GTID and commit time), and where each one ends. Pure:
//! bytes in, values out; the server's own `mariadb-binlog`/`mysqlbinlog` turns the chosen
//! range into SQL.
//!
//! Every event starts with a 19-byte header: timestamp (4), type (1), server id (4), length
//! (4), the next event's position (4), flags (2), all little-endian. With checksums on (the
//! format description event says so) each event ends with a CRC-32 of the rest, checked here.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;

use anyhow::{Context, Result, anyhow, bail, ensure};

/// The four bytes every binary log file starts with.
pub const MAGIC: [u8; 4] = [0xfe, b'b', b'i', b'n'];
pub const HEADER_LEN: usize = 19;
/// An event longer than this is not one (the servers cap events at max_allowed_packet, 1 GiB).
pub const MAX_EVENT_LEN: u32 = 1 << 30;

/// Event types this reader looks into.
pub mod kind {
    pub const QUERY: u8 = 2;
    pub const STOP: u8 = 3;
    pub const ROTATE: u8 = 4;
    pub const FORMAT_DESCRIPTION: u8 = 15;
    pub const INTVAR: u8 = 5;
    pub const RAND: u8 = 13;
    pub const USER_VAR: u8 = 14;
    pub const XID: u8 = 16;
    pub const XA_PREPARE: u8 = 38;
    pub const MARIADB_ANNOTATE_ROWS: u8 = 160;
    pub const MYSQL_GTID: u8 = 33;
    pub const MYSQL_ANONYMOUS_GTID: u8 = 34;
    pub const MYSQL_PREVIOUS_GTIDS: u8 = 35;
    pub const MARIADB_GTID: u8 = 162;
    pub const MARIADB_GTID_LIST: u8 = 163;
}

/// MariaDB's GTID event flag: a statement outside any transaction (DDL), one event long.
const FL_STANDALONE: u8 = 1;

/// The file ends inside an event: written no further (a crash of mysqld mid-write leaves
/// such a tail in the file it was writing; the transaction was never committed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Torn {
    pub at: u64,
}

impl fmt::Display for Torn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the binary log ends inside the event at offset {}",
            self.at
        )
    }
}

impl std::error::Error for Torn {}

/// One MariaDB GTID: domain, the server that wrote it, sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Gtid {
    pub domain: u32,
    pub server: u32,
    pub seq: u64,
}

impl fmt::Display for Gtid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.domain, self.server, self.seq)
    }
}

impl FromStr for Gtid {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.trim().split('-').collect();
        let [domain, server, seq] = parts.as_slice() else {
            bail!("{s:?} is not a MariaDB GTID (domain-server-sequence, e.g. 0-100-57)");
        };
        let number = |what: &str, v: &str| -> Result<u64> {
            v.parse::<u64>()
                .map_err(|_| anyhow!("{s:?}: the {what} {v:?} is not a number"))
        };
        Ok(Gtid {
            domain: u32::try_from(number("domain", domain)?)
                .map_err(|_| anyhow!("{s:?}: domain out of range"))?,
            server: u32::try_from(number("server id", server)?)
                .map_err(|_| anyhow!("{s:?}: server id out of range"))?,
            seq: number("sequence number", seq)?,
        })
    }
}

/// A MariaDB GTID position: the last GTID of each replication domain (`gtid_slave_pos`,
/// `gtid_binlog_pos`, a Gtid_list event).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GtidPos(BTreeMap<u32, Gtid>);

impl GtidPos {
    pub fn parse(text: &str) -> Result<Self> {
        let mut pos = GtidPos::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let gtid: Gtid = part.parse()?;
            ensure!(
                pos.0.insert(gtid.domain, gtid).is_none(),
                "{text:?} names domain {} twice",
                gtid.domain
            );
        }
        Ok(pos)
    }

    /// Whether the transaction `gtid` is part of the history up to this position.
    pub fn contains(&self, gtid: &Gtid) -> bool {
        self.0
            .get(&gtid.domain)
            .is_some_and(|last| last.seq >= gtid.seq)
    }

    /// Whether this position is at or before `other` in every domain: a history at `other`
    /// contains everything up to this one (sequence numbers grow within a domain).
    pub fn is_within(&self, other: &GtidPos) -> bool {
        self.0.values().all(|g| other.contains(g))
    }

    /// The position after `gtid` was applied.
    pub fn advance(&mut self, gtid: Gtid) {
        self.0.insert(gtid.domain, gtid);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The last GTID of `domain`, if any.
    pub fn get(&self, domain: u32) -> Option<&Gtid> {
        self.0.get(&domain)
    }
}

impl fmt::Display for GtidPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.values().map(ToString::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

/// An event's common header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventHeader {
    pub timestamp: u32,
    pub kind: u8,
    pub server_id: u32,
    pub len: u32,
    pub next_pos: u32,
    pub flags: u16,
}

impl EventHeader {
    pub fn parse(b: &[u8; HEADER_LEN]) -> Self {
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        EventHeader {
            timestamp: u32_at(0),
            kind: b[4],
            server_id: u32_at(5),
            len: u32_at(9),
            next_pos: u32_at(13),
            flags: u16::from_le_bytes([b[17], b[18]]),
        }
    }
}

/// What a file's first events say about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStart {
    /// When the server created the file (the format description event's time), Unix seconds.
    pub created: u32,
    pub server_id: u32,
    pub server_version: String,
    /// Events end with a CRC-32.
    pub checksum: bool,
    /// MariaDB: the GTID position at the file's start (its Gtid_list event).
    pub gtid_list: Option<GtidPos>,
    /// Where the file's first transaction may start: after the format description and the
    /// GTID list. The bytes before it identify the file.
    pub header_end: u64,
}

/// One transaction (event group) in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The offset of its first event (its GTID event) and the offset after its last.
    pub start: u64,
    pub end: u64,
    /// MariaDB's GTID; `None` on MySQL, or a server without GTIDs.
    pub gtid: Option<Gtid>,
    /// The time of the event that completes it (its commit), Unix seconds.
    pub commit_time: u32,
}

/// Reads a file's events one by one from its first byte, checking each one's length,
/// position and checksum.
pub struct EventReader<R> {
    input: R,
    offset: u64,
    checksum: bool,
    body: Vec<u8>,
    body_len: usize,
}

impl<R: Read> EventReader<R> {
    /// Starts reading a whole file: checks the magic bytes.
    pub fn new(mut input: R) -> Result<Self> {
        let mut magic = [0u8; 4];
        input
            .read_exact(&mut magic)
            .context("reading the binary log's first bytes")?;
        ensure!(magic == MAGIC, "not a binary log file (no \\xfebin magic)");
        Ok(Self {
            input,
            offset: MAGIC.len() as u64,
            checksum: false,
            body: Vec::new(),
            body_len: 0,
        })
    }

    /// The offset of the next event.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The body of the event [`EventReader::next_event`] returned last, checksum removed.
    pub fn body(&self) -> &[u8] {
        &self.body[..self.body_len]
    }

    /// Whether the file's events carry checksums (known once its format description is read).
    pub fn checksum(&self) -> bool {
        self.checksum
    }

    /// The next event's header (its body: [`EventReader::body`]), or `None` at a clean end.
    pub fn next_event(&mut self) -> Result<Option<EventHeader>> {
        let mut head = [0u8; HEADER_LEN];
        let mut filled = 0;
        while filled < HEADER_LEN {
            match self.input.read(&mut head[filled..]) {
                Ok(0) if filled == 0 => return Ok(None),
                Ok(0) => return Err(anyhow::Error::new(Torn { at: self.offset })),
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(e).context(format!("reading the event at offset {}", self.offset));
                }
            }
        }
        let header = EventHeader::parse(&head);
        let at = self.offset;
        ensure!(
            header.len as usize >= HEADER_LEN && header.len <= MAX_EVENT_LEN,
            "the event at offset {at} claims a length of {} bytes",
            header.len
        );
        let end = at + u64::from(header.len);
        // next_pos is 32 bits: past 4 GiB it wraps, and 0 marks events not from a log.
        ensure!(
            header.next_pos == 0 || u64::from(header.next_pos) == end & 0xffff_ffff,
            "the event at offset {at} says the next one is at {}, not {end}",
            header.next_pos
        );
        // Read as it arrives, not allocated from the length field up front: a damaged
        // length costs what the file holds, not a gigabyte.
        let want = u64::from(header.len) - HEADER_LEN as u64;
        self.body.clear();
        let got = (&mut self.input)
            .take(want)
            .read_to_end(&mut self.body)
            .with_context(|| format!("reading the event at offset {at}"))?;
        if got as u64 != want {
            return Err(anyhow::Error::new(Torn { at }));
        }
        self.offset = end;
        if header.kind == kind::FORMAT_DESCRIPTION {
            // Its own checksum is present when the algorithm byte says so (it sits before
            // the 4 checksum bytes; a server without checksums writes no such byte at all
            // when older than 5.6, and then the body is too short to hold both).
            self.checksum = self.body.len() >= 5 + 57 && self.body[self.body.len() - 5] == 1;
        }
        let mut body_len = self.body.len();
        if self.checksum {
            ensure!(
                body_len >= 4,
                "the event at offset {at} is too short for its checksum"
            );
            body_len -= 4;
            let stored = u32::from_le_bytes(
                self.body[body_len..]
                    .try_into()
                    .expect("four bytes checked above"),
            );
            // The server sets the format description's "in use" flag (0x1) while the file is
            // open and clears it on close without redoing the checksum, which it computed
            // with the flag clear.
            let mut summed = head;
            if header.kind == kind::FORMAT_DESCRIPTION {
                summed[17] &= !1;
            }
            let mut crc = crc32fast::Hasher::new();
            crc.update(&summed);
            crc.update(&self.body[..body_len]);
            ensure!(
                crc.finalize() == stored,
                "the event at offset {at} fails its CRC-32 checksum (the file is damaged)"
            );
        }
        self.body_len = body_len;
        Ok(Some(header))
    }
}

/// Reads what a file's first events say: its creation, server, checksums and GTID list.
pub fn file_start(input: impl Read) -> Result<FileStart> {
    let mut reader = EventReader::new(input)?;
    let Some(fde) = reader.next_event()? else {
        bail!("the binary log holds no event");
    };
    let body = reader.body();
    ensure!(
        fde.kind == kind::FORMAT_DESCRIPTION,
        "the binary log's first event is of type {}, not a format description",
        fde.kind
    );
    ensure!(
        body.len() >= 2 + 50 + 4,
        "the format description is too short"
    );
    let version = &body[2..52];
    let server_version =
        String::from_utf8_lossy(&version[..version.iter().position(|&b| b == 0).unwrap_or(50)])
            .into_owned();
    let mut start = FileStart {
        created: fde.timestamp,
        server_id: fde.server_id,
        server_version,
        checksum: reader.checksum(),
        gtid_list: None,
        header_end: reader.offset(),
    };
    // The GTID list (MariaDB) or previous GTIDs (MySQL) follows; anything else ends the header.
    // Read from a probe of the file's first bytes, the next event may not fit in it: then
    // it is not a GTID list (those are short), and the header ends with the description.
    let next = match reader.next_event() {
        Ok(next) => next,
        Err(e) if e.downcast_ref::<Torn>().is_some() => None,
        Err(e) => return Err(e),
    };
    if let Some(header) = next {
        match header.kind {
            kind::MARIADB_GTID_LIST => {
                start.gtid_list = Some(parse_gtid_list(reader.body())?);
                start.header_end = reader.offset();
            }
            kind::MYSQL_PREVIOUS_GTIDS => start.header_end = reader.offset(),
            _ => {}
        }
    }
    Ok(start)
}

/// A Gtid_list event's body: a count (28 bits), then domain, server, sequence for each.
fn parse_gtid_list(body: &[u8]) -> Result<GtidPos> {
    ensure!(body.len() >= 4, "a GTID list event too short for its count");
    let count = (u32::from_le_bytes(body[..4].try_into().expect("4 bytes")) & 0x0fff_ffff) as usize;
    ensure!(
        body.len() >= 4 + count * 16,
        "a GTID list event announces {count} GTIDs in {} bytes",
        body.len()
    );
    let mut pos = GtidPos::default();
    for i in 0..count {
        let b = &body[4 + i * 16..4 + (i + 1) * 16];
        pos.advance(Gtid {
            domain: u32::from_le_bytes(b[..4].try_into().expect("4 bytes")),
            server: u32::from_le_bytes(b[4..8].try_into().expect("4 bytes")),
            seq: u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
        });
    }
    Ok(pos)
}

/// The statement of a Query event (after its fixed part, status variables and database).
fn query_text(body: &[u8]) -> Option<&[u8]> {
    const FIXED: usize = 13;
    let db_len = *body.get(8)? as usize;
    let status_len = u16::from_le_bytes([*body.get(11)?, *body.get(12)?]) as usize;
    body.get(FIXED + status_len + db_len + 1..)
}

/// A group being read.
struct Open {
    start: u64,
    gtid: Option<Gtid>,
    standalone: bool,
    /// MySQL: the group's first statement decides whether it is a transaction.
    events: u32,
    transaction: bool,
}

/// What [`scan_groups`] found in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scanned {
    pub start: FileStart,
    /// The offset after the last complete group (or the header's end): bytes past it belong
    /// to a transaction the file does not finish.
    pub complete_end: u64,
    /// Where the file ends inside an event, if it does ([`Torn`]).
    pub torn_at: Option<u64>,
}

/// Reads a whole file and calls `each` with every complete transaction, in order, until it
/// returns `false`. A file that ends inside an event ends there ([`Scanned::torn_at`]);
/// anything else wrong with it is an error.
pub fn scan_groups(input: impl Read, mut each: impl FnMut(&Group) -> bool) -> Result<Scanned> {
    let mut reader = EventReader::new(input)?;
    let mut start: Option<FileStart> = None;
    let mut complete_end = 0u64;
    let mut open: Option<Open> = None;
    let mut torn_at = None;
    loop {
        let at = reader.offset();
        let header = match reader.next_event() {
            Ok(Some(header)) => header,
            Ok(None) => break,
            Err(e) => match e.downcast_ref::<Torn>() {
                Some(torn) if start.is_some() => {
                    torn_at = Some(torn.at);
                    break;
                }
                _ => return Err(e),
            },
        };
        let end = reader.offset();
        let checksum = reader.checksum();
        let body = reader.body();
        match header.kind {
            kind::FORMAT_DESCRIPTION if start.is_none() => {
                ensure!(body.len() >= 52, "the format description is too short");
                let version = &body[2..52];
                start = Some(FileStart {
                    created: header.timestamp,
                    server_id: header.server_id,
                    server_version: String::from_utf8_lossy(
                        &version[..version.iter().position(|&b| b == 0).unwrap_or(50)],
                    )
                    .into_owned(),
                    checksum,
                    gtid_list: None,
                    header_end: end,
                });
                complete_end = end;
                continue;
            }
            kind::MARIADB_GTID_LIST => {
                if let Some(s) = start.as_mut().filter(|s| s.header_end == at) {
                    s.gtid_list = Some(parse_gtid_list(body)?);
                    s.header_end = end;
                    complete_end = end;
                }
                continue;
            }
            kind::MYSQL_PREVIOUS_GTIDS => {
                if let Some(s) = start.as_mut().filter(|s| s.header_end == at) {
                    s.header_end = end;
                    complete_end = end;
                }
                continue;
            }
            _ => {}
        }
        ensure!(
            start.is_some(),
            "the binary log's first event is not a format description"
        );
        match header.kind {
            kind::MARIADB_GTID => {
                ensure!(body.len() >= 13, "a GTID event at offset {at} is too short");
                let seq = u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
                let domain = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes"));
                open = Some(Open {
                    start: at,
                    gtid: Some(Gtid {
                        domain,
                        server: header.server_id,
                        seq,
                    }),
                    standalone: body[12] & FL_STANDALONE != 0,
                    events: 0,
                    transaction: true,
                });
            }
            kind::MYSQL_GTID | kind::MYSQL_ANONYMOUS_GTID => {
                open = Some(Open {
                    start: at,
                    gtid: None,
                    standalone: false,
                    events: 0,
                    transaction: false,
                });
            }
            kind::ROTATE | kind::STOP => {
                // A group cut by the end of a file never completed.
                open = None;
            }
            _ => {
                let Some(group) = open.as_mut() else {
                    continue;
                };
                group.events += 1;
                let text = (header.kind == kind::QUERY)
                    .then(|| query_text(body))
                    .flatten()
                    .map(|t| String::from_utf8_lossy(t).trim().to_ascii_uppercase());
                if group.gtid.is_none() && group.events == 1 {
                    // MySQL: BEGIN opens a transaction; any other first statement is one.
                    group.transaction = text.as_deref() == Some("BEGIN");
                }
                // A standalone statement's context events (auto-increment, RAND, user
                // variables, the annotation) come before the statement itself.
                let context = matches!(
                    header.kind,
                    kind::INTVAR | kind::RAND | kind::USER_VAR | kind::MARIADB_ANNOTATE_ROWS
                );
                let completes = header.kind == kind::XID
                    || header.kind == kind::XA_PREPARE
                    || matches!(text.as_deref(), Some("COMMIT") | Some("ROLLBACK"))
                    || (group.standalone && !context)
                    || (group.gtid.is_none() && !group.transaction && !context);
                if completes {
                    let group = open.take().expect("matched above");
                    complete_end = end;
                    let done = Group {
                        start: group.start,
                        end,
                        gtid: group.gtid,
                        commit_time: header.timestamp,
                    };
                    if !each(&done) {
                        break;
                    }
                }
            }
        }
    }
    let start = start.context("the binary log holds no format description")?;
    Ok(Scanned {
        start,
        complete_end,
        torn_at,
    })
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// Builds a MariaDB-style binary log, event by event, with checksums.
    pub struct LogBuilder {
        pub bytes: Vec<u8>,
        server_id: u32,
    }

    impl LogBuilder {
        pub fn new(created: u32, server_id: u32, gtid_list: &[Gtid]) -> Self {
            let mut log = Self {
                bytes: MAGIC.to_vec(),
                server_id,
            };
            let mut fde = vec![4, 0];
            let mut version = b"10.11.19-MariaDB-log".to_vec();
            version.resize(50, 0);
            fde.extend(version);
            fde.extend(created.to_le_bytes());
            fde.push(19);
            fde.extend([0u8; 40]);
            fde.push(1); // CRC32
            log.event(created, kind::FORMAT_DESCRIPTION, &fde);
            let mut list = (gtid_list.len() as u32).to_le_bytes().to_vec();
            for g in gtid_list {
                list.extend(g.domain.to_le_bytes());
                list.extend(g.server.to_le_bytes());
                list.extend(g.seq.to_le_bytes());
            }
            log.event(created, kind::MARIADB_GTID_LIST, &list);
            log
        }

        pub fn event(&mut self, time: u32, kind: u8, body: &[u8]) -> &mut Self {
            let len = (HEADER_LEN + body.len() + 4) as u32;
            let next = self.bytes.len() as u32 + len;
            let mut head = Vec::new();
            head.extend(time.to_le_bytes());
            head.push(kind);
            head.extend(self.server_id.to_le_bytes());
            head.extend(len.to_le_bytes());
            head.extend(next.to_le_bytes());
            head.extend(0u16.to_le_bytes());
            let mut crc = crc32fast::Hasher::new();
            crc.update(&head);
            crc.update(body);
            self.bytes.extend(head);
            self.bytes.extend(body);
            self.bytes.extend(crc.finalize().to_le_bytes());
            self
        }

        fn query(&mut self, time: u32, sql: &str) -> &mut Self {
            let mut body = vec![0u8; 13];
            body[8] = 1; // db "t"
            body.extend(b"t\0");
            body.extend(sql.as_bytes());
            self.event(time, kind::QUERY, &body)
        }

        /// A row transaction: GTID, BEGIN, a row event, XID committed at `commit`.
        pub fn transaction(&mut self, start: u32, commit: u32, domain: u32, seq: u64) -> &mut Self {
            let mut gtid = seq.to_le_bytes().to_vec();
            gtid.extend(domain.to_le_bytes());
            gtid.push(0);
            self.event(start, kind::MARIADB_GTID, &gtid);
            self.query(start, "BEGIN");
            self.event(start, 23, &[1, 2, 3, 4]);
            self.event(commit, kind::XID, &7u64.to_le_bytes())
        }

        pub fn ddl(&mut self, time: u32, domain: u32, seq: u64) -> &mut Self {
            let mut gtid = seq.to_le_bytes().to_vec();
            gtid.extend(domain.to_le_bytes());
            gtid.push(FL_STANDALONE);
            self.event(time, kind::MARIADB_GTID, &gtid);
            self.query(time, "CREATE TABLE t.a (id INT)")
        }
    }

    fn g(s: &str) -> Gtid {
        s.parse().unwrap()
    }

    #[test]
    fn gtids_and_positions_parse_and_compare() {
        assert_eq!(
            g("0-100-57"),
            Gtid {
                domain: 0,
                server: 100,
                seq: 57
            }
        );
        for bad in ["", "0-100", "a-1-2", "0-1-2-3", "0-1-x", "99999999999-1-1"] {
            assert!(bad.parse::<Gtid>().is_err(), "{bad}");
        }
        let pos = GtidPos::parse("0-100-57, 1-101-3").unwrap();
        assert_eq!(pos.to_string(), "0-100-57,1-101-3");
        assert!(pos.contains(&g("0-100-57")) && pos.contains(&g("0-7-12")));
        assert!(!pos.contains(&g("0-100-58")) && !pos.contains(&g("2-100-1")));
        assert!(GtidPos::parse("0-100-50").unwrap().is_within(&pos));
        assert!(!GtidPos::parse("0-100-50,2-1-1").unwrap().is_within(&pos));
        assert!(GtidPos::default().is_within(&pos));
        assert!(GtidPos::parse("0-1-1,0-1-2").is_err());
        assert!(GtidPos::parse("").unwrap().is_empty());
    }

    #[test]
    fn groups_are_found_with_their_commit_times() {
        let mut log = LogBuilder::new(1000, 100, &[g("0-100-2")]);
        log.transaction(1001, 1003, 0, 3)
            .ddl(1004, 0, 4)
            .transaction(1005, 1005, 0, 5);
        let start = file_start(&log.bytes[..]).unwrap();
        assert_eq!(start.created, 1000);
        assert_eq!(start.server_id, 100);
        assert!(start.checksum);
        assert_eq!(start.gtid_list, Some(GtidPos::parse("0-100-2").unwrap()));
        assert_eq!(start.server_version, "10.11.19-MariaDB-log");
        let mut groups = Vec::new();
        let Scanned {
            start: again,
            complete_end: end,
            torn_at,
        } = scan_groups(&log.bytes[..], |g| {
            groups.push(g.clone());
            true
        })
        .unwrap();
        assert_eq!(again, start);
        assert_eq!(end, log.bytes.len() as u64);
        assert_eq!(torn_at, None);
        let seen: Vec<(String, u32)> = groups
            .iter()
            .map(|g| (g.gtid.unwrap().to_string(), g.commit_time))
            .collect();
        assert_eq!(
            seen,
            [
                ("0-100-3".into(), 1003),
                ("0-100-4".into(), 1004),
                ("0-100-5".into(), 1005)
            ]
        );
        assert_eq!(groups[0].start, start.header_end);
        assert_eq!(groups[0].end, groups[1].start);
        assert_eq!(groups[2].end, log.bytes.len() as u64);

        // A transaction cut short (the open file's tail) is not a group.
        let whole = log.bytes.len();
        log.transaction(1006, 1007, 0, 6);
        // A file torn inside an event (mysqld killed mid-write) ends where it was torn.
        let cut = &log.bytes[..log.bytes.len() - 10];
        let torn = scan_groups(cut, |_| true).unwrap();
        assert_eq!(torn.complete_end, whole as u64);
        let xid_at = (log.bytes.len() - (HEADER_LEN + 8 + 4)) as u64;
        assert_eq!(torn.torn_at, Some(xid_at));
        // Torn inside a header, too.
        let torn = scan_groups(&log.bytes[..xid_at as usize + 5], |_| true).unwrap();
        assert_eq!(torn.torn_at, Some(xid_at));
        let mut n = 0;
        let last_event_start = whole + (log.bytes.len() - whole) - (HEADER_LEN + 8 + 4);
        let Scanned {
            complete_end: end, ..
        } = scan_groups(&log.bytes[..last_event_start], |_| {
            n += 1;
            true
        })
        .unwrap();
        assert_eq!((n, end), (3, whole as u64));
    }

    /// A file MariaDB 10.11 wrote: DDL, row-less transactions, account statements, and a GTID
    /// list seeded by `SET GLOBAL gtid_binlog_state`.
    #[test]
    fn a_real_mariadb_log_reads() {
        let bytes = include_bytes!("../tests/fixtures/mariadb-10.11-bin.000001");
        let mut groups = Vec::new();
        let Scanned {
            start,
            complete_end: end,
            torn_at,
        } = scan_groups(&bytes[..], |g| {
            groups.push(g.clone());
            true
        })
        .unwrap();
        assert_eq!(torn_at, None);
        assert_eq!(start.server_id, 100);
        assert!(start.checksum);
        assert!(start.server_version.starts_with("10.11."), "{start:?}");
        assert_eq!(start.gtid_list, Some(GtidPos::parse("0-100-0").unwrap()));
        assert_eq!(start.header_end, 299);
        assert_eq!(end, bytes.len() as u64);
        let gtids: Vec<String> = groups.iter().map(|g| g.gtid.unwrap().to_string()).collect();
        assert_eq!(
            gtids,
            [
                "0-100-1", "0-100-2", "0-100-3", "0-100-4", "0-100-5", "0-100-6", "0-100-7"
            ]
        );
        // SHOW BINLOG EVENTS: the third transaction's GTID at 632, its XID ending at 806.
        assert_eq!((groups[2].start, groups[2].end), (632, 806));
        assert_eq!(groups[6].end, 1418);
    }

    /// An XA transaction's first half ends at its XA_PREPARE event; a standalone statement
    /// with an auto-increment context event ends at the statement, not at the context.
    #[test]
    fn xa_prepare_and_context_events_end_groups_where_they_should() {
        let mut log = LogBuilder::new(1000, 100, &[]);
        let mut gtid = 1u64.to_le_bytes().to_vec();
        gtid.extend(0u32.to_le_bytes());
        gtid.push(0);
        log.event(1001, kind::MARIADB_GTID, &gtid);
        log.query(1001, "XA START 'x'");
        log.event(1001, 23, &[1, 2, 3]);
        log.query(1001, "XA END 'x'");
        log.event(1002, kind::XA_PREPARE, &[0; 12]);
        let mut gtid = 2u64.to_le_bytes().to_vec();
        gtid.extend(0u32.to_le_bytes());
        gtid.push(FL_STANDALONE);
        log.event(1003, kind::MARIADB_GTID, &gtid);
        log.event(1003, kind::INTVAR, &[2, 1, 0, 0, 0, 0, 0, 0, 0]);
        log.query(1003, "INSERT INTO t.a VALUES (NULL)");
        log.transaction(1004, 1004, 0, 3);
        let mut groups = Vec::new();
        scan_groups(&log.bytes[..], |g| {
            groups.push((g.gtid.unwrap().seq, g.commit_time));
            true
        })
        .unwrap();
        assert_eq!(groups, [(1, 1002), (2, 1003), (3, 1004)]);
    }

    #[test]
    fn damage_is_refused() {
        let mut log = LogBuilder::new(1000, 100, &[]);
        log.transaction(1001, 1001, 0, 1);
        let mut bad = log.bytes.clone();
        let at = bad.len() - 12;
        bad[at] ^= 0x40;
        let msg = format!("{:#}", scan_groups(&bad[..], |_| true).unwrap_err());
        assert!(msg.contains("CRC-32"), "{msg}");
        let msg = format!("{:#}", file_start(&b"not a log"[..]).unwrap_err());
        assert!(msg.contains("magic"), "{msg}");
        let mut huge = log.bytes.clone();
        let fde_len_at = 4 + 9;
        huge[fde_len_at..fde_len_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(file_start(&huge[..]).is_err());
    }
}
