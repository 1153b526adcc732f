//! The replication coordinates a backup carries, parsed from the backup tool's metadata files.
//!
//! The tutorial fed these files to a regex and a `sed`, which breaks on a GTID column and on
//! multi-statement slave info. Here they are parsed into values and never executed: the SQL
//! is built afresh for the local server's dialect (see [`crate::replication`]).

use std::sync::LazyLock;

use anyhow::{Context, Result, bail, ensure};
use regex::Regex;

/// Where a replica of this data starts reading from the primary.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Position {
    /// A binary log file and offset on the primary.
    File { file: String, pos: u64 },
    /// The MySQL GTID set the data contains (`gtid_purged` then auto-positioning).
    MysqlGtid { gtid_set: String },
    /// The MariaDB GTID position the data contains (`gtid_slave_pos`).
    #[serde(rename = "mariadb-gtid")]
    MariaDbGtid { gtid_pos: String },
}

/// Whether the backup came from the primary or from a replica of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    Primary,
    Replica,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Coordinates {
    pub origin: Origin,
    pub position: Position,
}

/// The content of `xtrabackup_binlog_info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinlogInfo {
    pub file: String,
    pub pos: u64,
    /// `gtid_executed` (MySQL) or `gtid_current_pos` (MariaDB); absent or empty without GTIDs.
    pub gtid: Option<String>,
}

/// Parses `<file>\t<pos>[\t<gtid>]`. A MySQL GTID set written by XtraBackup 2.4 may continue
/// on further lines, so the third column is the rest of the file, whitespace removed.
pub fn parse_binlog_info(text: &str) -> Result<BinlogInfo> {
    ensure!(!text.trim().is_empty(), "the file is empty");
    let (first, rest) = text.split_once('\n').unwrap_or((text, ""));
    let first = first.strip_suffix('\r').unwrap_or(first);
    // The tools write tabs; a hand-written file may use spaces (then names cannot hold one).
    let fields: Vec<&str> = if first.contains('\t') {
        first.splitn(3, '\t').collect()
    } else {
        // file, position, then the rest of the line as the third field.
        let mut fields = Vec::new();
        let mut line = first.trim_start();
        while !line.is_empty() && fields.len() < 2 {
            let (word, after) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            fields.push(word);
            line = after.trim_start();
        }
        if !line.is_empty() {
            fields.push(line);
        }
        fields
    };
    let file = fields.first().copied().unwrap_or_default();
    ensure!(
        !file.trim().is_empty() && !file.contains('\0'),
        "no binary log file name in {first:?}"
    );
    let Some(pos) = fields.get(1) else {
        bail!("{first:?} has a file name but no position (truncated?)");
    };
    let pos: u64 = pos
        .trim()
        .parse()
        .with_context(|| format!("position {pos:?} is not a number"))?;
    let gtid = match fields.get(2) {
        Some(third) => {
            let set: String = third
                .chars()
                .chain(rest.chars())
                .filter(|c| !c.is_whitespace())
                .collect();
            (!set.is_empty()).then_some(set)
        }
        None => {
            ensure!(
                rest.trim().is_empty(),
                "unexpected content after the first line: {rest:?}"
            );
            None
        }
    };
    Ok(BinlogInfo {
        file: file.to_owned(),
        pos,
        gtid,
    })
}

static CHANGE_STATEMENT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)\bCHANGE\s+(MASTER|REPLICATION\s+SOURCE)\s+TO\b").unwrap());
static LOG_FILE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)\b(?:MASTER|SOURCE)_LOG_FILE\s*=\s*'([^'\n]*)'").unwrap());
static LOG_POS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)\b(?:MASTER|SOURCE)_LOG_POS\s*=\s*(\d+)").unwrap());
static AUTO_POSITION: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)\b(?:MASTER|SOURCE)_AUTO_POSITION\s*=\s*1\b").unwrap());
static GTID_PURGED: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)\bgtid_purged\s*=\s*'([^']*)'").unwrap());
static GTID_SLAVE_POS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)\bgtid_slave_pos\s*=\s*'([^']*)'").unwrap());
static CHANNEL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)\bFOR\s+CHANNEL\s+'([^']*)'").unwrap());

/// Parses `xtrabackup_slave_info`: one CHANGE MASTER / CHANGE REPLICATION SOURCE statement,
/// possibly preceded by `SET GLOBAL gtid_purged=…` (MySQL) or `gtid_slave_pos=…` (MariaDB).
/// Empty means the backed-up server was not a replica.
pub fn parse_slave_info(text: &str) -> Result<Option<Position>> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let statements = CHANGE_STATEMENT.find_iter(text).count();
    ensure!(
        statements > 0,
        "no CHANGE MASTER or CHANGE REPLICATION SOURCE statement in {text:?}"
    );
    if let Some(channel) = CHANNEL.captures(text).map(|c| c[1].to_owned())
        && !channel.is_empty()
    {
        bail!("replication channel {channel:?} is not supported (only the default channel is)");
    }
    ensure!(
        statements == 1,
        "{statements} CHANGE statements: multi-source replication is not supported"
    );
    if let Some(c) = GTID_SLAVE_POS.captures(text) {
        let gtid_pos = c[1].trim().to_owned();
        // Empty: a GTID replica that had applied nothing yet, in an empty history.
        ensure!(
            gtid_pos.is_empty() || is_mariadb_gtid_list(&gtid_pos),
            "gtid_slave_pos {gtid_pos:?} is not a MariaDB GTID list"
        );
        return Ok(Some(Position::MariaDbGtid { gtid_pos }));
    }
    if AUTO_POSITION.is_match(text) {
        let Some(c) = GTID_PURGED.captures(text) else {
            bail!("auto-positioning without a gtid_purged value");
        };
        let gtid_set: String = c[1].chars().filter(|c| !c.is_whitespace()).collect();
        ensure!(
            is_mysql_gtid_set(&gtid_set),
            "gtid_purged {gtid_set:?} is not a MySQL GTID set"
        );
        return Ok(Some(Position::MysqlGtid { gtid_set }));
    }
    match (LOG_FILE.captures(text), LOG_POS.captures(text)) {
        (Some(file), Some(pos)) => {
            let file = file[1].to_owned();
            ensure!(!file.is_empty(), "empty binary log file name");
            let pos = pos[1]
                .parse()
                .with_context(|| format!("log position {:?} is out of range", &pos[1]))?;
            Ok(Some(Position::File { file, pos }))
        }
        _ => bail!("neither a GTID position nor a log file and position in {text:?}"),
    }
}

/// Chooses the coordinates a clone starts from, as the tutorial's sidecar did: the replica's
/// own coordinates when the backup came from a replica, else the binlog position of the
/// primary (its GTID column when there is one).
pub fn choose(binlog_info: Option<&str>, slave_info: Option<&str>) -> Result<Option<Coordinates>> {
    if let Some(text) = slave_info
        && let Some(position) = parse_slave_info(text).context("parsing the slave info")?
    {
        return Ok(Some(Coordinates {
            origin: Origin::Replica,
            position,
        }));
    }
    let Some(text) = binlog_info else {
        return Ok(None);
    };
    let info = parse_binlog_info(text).context("parsing the binlog info")?;
    let position = match info.gtid {
        None => Position::File {
            file: info.file,
            pos: info.pos,
        },
        Some(gtid) if is_mariadb_gtid_list(&gtid) => Position::MariaDbGtid { gtid_pos: gtid },
        Some(gtid) if is_mysql_gtid_set(&gtid) => Position::MysqlGtid { gtid_set: gtid },
        Some(gtid) => bail!("the binlog info's GTID column {gtid:?} is neither MySQL nor MariaDB"),
    };
    Ok(Some(Coordinates {
        origin: Origin::Primary,
        position,
    }))
}

/// `domain-server-seq` triples separated by commas, e.g. `0-1-10,1-2-5`.
pub fn is_mariadb_gtid_list(s: &str) -> bool {
    static RE: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"^\d+-\d+-\d+(,\d+-\d+-\d+)*$").unwrap());
    RE.is_match(s)
}

/// `uuid[:tag]:interval[:interval]…` elements separated by commas (tags since MySQL 8.3).
pub fn is_mysql_gtid_set(s: &str) -> bool {
    static RE: LazyLock<Regex> = LazyLock::new(|| {
        let uuid = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}";
        let part = r"(:[A-Za-z_][A-Za-z0-9_]{0,31}|:\d+(-\d+)?)";
        Regex::new(&format!(r"^{uuid}{part}+(,{uuid}{part}+)*$")).unwrap()
    });
    RE.is_match(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID1: &str = "c777888a-b6df-11e2-a604-080027635ef5";
    const UUID2: &str = "d8ad4fc4-b6df-11e2-a604-080027635ef5";

    #[test]
    fn binlog_info_two_and_three_columns() {
        assert_eq!(
            parse_binlog_info("mysql-bin.000002\t1232\n").unwrap(),
            BinlogInfo {
                file: "mysql-bin.000002".into(),
                pos: 1232,
                gtid: None
            }
        );
        // MariaDB always writes a third column, sometimes empty.
        let mariadb = parse_binlog_info("mysqld-bin.000001\t329\t\n").unwrap();
        assert_eq!((mariadb.pos, mariadb.gtid), (329, None));
        let mariadb = parse_binlog_info("mysqld-bin.000001\t1693\t0-1-7\n").unwrap();
        assert_eq!(mariadb.gtid.as_deref(), Some("0-1-7"));
        let mysql = parse_binlog_info(&format!("mysql-bin.000002\t1232\t{UUID1}:1-4\n")).unwrap();
        assert_eq!(mysql.gtid, Some(format!("{UUID1}:1-4")));
    }

    #[test]
    fn binlog_info_multi_line_gtid_set() {
        // XtraBackup 2.4 copies Executed_Gtid_Set verbatim, newlines included.
        let text = format!("mysql-bin.000003\t154\t{UUID1}:1-5,\n{UUID2}:1-3\n");
        let info = parse_binlog_info(&text).unwrap();
        assert_eq!(info.gtid, Some(format!("{UUID1}:1-5,{UUID2}:1-3")));
        let coords = choose(Some(&text), None).unwrap().unwrap();
        assert_eq!(
            coords.position,
            Position::MysqlGtid {
                gtid_set: format!("{UUID1}:1-5,{UUID2}:1-3")
            }
        );
    }

    #[test]
    fn binlog_info_keeps_odd_file_names_verbatim() {
        let info = parse_binlog_info("it's\\odd.000001\t4\n").unwrap();
        assert_eq!(info.file, "it's\\odd.000001");
        let spaced = parse_binlog_info("mysql-bin.000001 120\n").unwrap();
        assert_eq!(
            (spaced.file.as_str(), spaced.pos),
            ("mysql-bin.000001", 120)
        );
        let text = format!("  mysql-bin.000001  120  {UUID1}:1-5, {UUID2}:1-3\n");
        let spaced = parse_binlog_info(&text).unwrap();
        assert_eq!(spaced.gtid, Some(format!("{UUID1}:1-5,{UUID2}:1-3")));
    }

    #[test]
    fn binlog_info_rejects_broken_content() {
        for (text, needle) in [
            ("", "empty"),
            ("\n\n", "empty"),
            ("mysql-bin.0000", "no position"),
            ("mysql-bin.000001\t", "not a number"),
            ("mysql-bin.000001\tabc\n", "not a number"),
            ("mysql-bin.000001\t-4\n", "not a number"),
            (
                "mysql-bin.000001\t99999999999999999999999\n",
                "not a number",
            ),
            ("\t4\n", "no binary log file"),
            // Found by the fuzzer: an empty first line and content below it.
            ("\nCHANGE-3\ns.000001;\nCHANGE-3\n", "no binary log file"),
            ("   \nmysql-bin.000001\t4\n", "no binary log file"),
            ("mysql-bin.000001\t4\ngarbage\n", "unexpected content"),
        ] {
            let msg = format!("{:#}", parse_binlog_info(text).unwrap_err());
            assert!(msg.contains(needle), "{text:?}: {msg}");
        }
        let garbage_gtid = "mysql-bin.000001\t4\tnot;a gtid\n";
        assert!(choose(Some(garbage_gtid), None).is_err());
    }

    #[test]
    fn slave_info_every_documented_variant() {
        let file = Position::File {
            file: "mysql-bin.000001".into(),
            pos: 2024,
        };
        // XtraBackup 2.4 / MariaDB (byte-exact from 10.11), older tools without ';'.
        for text in [
            "CHANGE MASTER TO MASTER_LOG_FILE='mysql-bin.000001', MASTER_LOG_POS=2024;\n",
            "CHANGE MASTER TO MASTER_LOG_FILE='mysql-bin.000001', MASTER_LOG_POS=2024\n",
            "CHANGE REPLICATION SOURCE TO SOURCE_LOG_FILE='mysql-bin.000001', SOURCE_LOG_POS=2024;\n",
        ] {
            assert_eq!(
                parse_slave_info(text).unwrap(),
                Some(file.clone()),
                "{text}"
            );
        }
        let mariadb = "SET GLOBAL gtid_slave_pos = '0-1-10';\nCHANGE MASTER TO master_use_gtid = slave_pos;\n";
        assert_eq!(
            parse_slave_info(mariadb).unwrap(),
            Some(Position::MariaDbGtid {
                gtid_pos: "0-1-10".into()
            })
        );
        // MySQL GTID replicas: two statements; 2.4 turns newlines in the set into spaces.
        for text in [
            format!(
                "SET GLOBAL gtid_purged='{UUID1}:1-5, {UUID2}:1-3';\nCHANGE MASTER TO MASTER_AUTO_POSITION=1;\n"
            ),
            format!(
                "SET GLOBAL gtid_purged='{UUID1}:1-5,{UUID2}:1-3';\nCHANGE REPLICATION SOURCE TO SOURCE_AUTO_POSITION=1;\n"
            ),
        ] {
            assert_eq!(
                parse_slave_info(&text).unwrap(),
                Some(Position::MysqlGtid {
                    gtid_set: format!("{UUID1}:1-5,{UUID2}:1-3")
                }),
                "{text}"
            );
        }
        assert_eq!(parse_slave_info("").unwrap(), None);
        assert_eq!(parse_slave_info(" \n").unwrap(), None);
    }

    #[test]
    fn slave_info_rejects_what_it_cannot_honour() {
        for (text, needle) in [
            ("garbage", "no CHANGE MASTER"),
            (
                "CHANGE MASTER TO MASTER_LOG_FILE='mysql-bin.000001'",
                "neither",
            ),
            ("CHANGE MASTER TO MASTER_LOG_POS=4", "neither"),
            (
                "CHANGE MASTER TO MASTER_AUTO_POSITION=1;",
                "without a gtid_purged",
            ),
            (
                "CHANGE MASTER TO MASTER_LOG_FILE='a.000001', MASTER_LOG_POS=4 FOR CHANNEL 'c1';",
                "channel \"c1\"",
            ),
            (
                "CHANGE MASTER TO MASTER_LOG_FILE='a.1', MASTER_LOG_POS=4;\nCHANGE MASTER TO MASTER_LOG_FILE='b.1', MASTER_LOG_POS=5;",
                "multi-source",
            ),
            (
                "SET GLOBAL gtid_slave_pos = 'x';\nCHANGE MASTER TO master_use_gtid = slave_pos;",
                "not a MariaDB GTID",
            ),
            (
                "SET GLOBAL gtid_purged='nope';\nCHANGE MASTER TO MASTER_AUTO_POSITION=1;",
                "not a MySQL GTID",
            ),
            (
                "CHANGE MASTER TO MASTER_LOG_FILE='a.1', MASTER_LOG_POS=99999999999999999999999;",
                "out of range",
            ),
        ] {
            let msg = format!("{:#}", parse_slave_info(text).unwrap_err());
            assert!(msg.contains(needle), "{text:?}: {msg}");
        }
    }

    #[test]
    fn slave_info_wins_over_binlog_info() {
        let slave = "CHANGE MASTER TO MASTER_LOG_FILE='primary-bin.000007', MASTER_LOG_POS=99;";
        let binlog = "replica-bin.000001\t4\t\n";
        let coords = choose(Some(binlog), Some(slave)).unwrap().unwrap();
        assert_eq!(coords.origin, Origin::Replica);
        assert_eq!(
            coords.position,
            Position::File {
                file: "primary-bin.000007".into(),
                pos: 99
            }
        );
        // An empty slave info (the donor was not a replica) falls back to the binlog info.
        let coords = choose(Some("mysqld-bin.000001\t329\t0-100-5\n"), Some(""))
            .unwrap()
            .unwrap();
        assert_eq!(coords.origin, Origin::Primary);
        assert_eq!(
            coords.position,
            Position::MariaDbGtid {
                gtid_pos: "0-100-5".into()
            }
        );
        assert_eq!(choose(None, None).unwrap(), None);
        assert_eq!(choose(None, Some("")).unwrap(), None);
    }

    #[test]
    fn gtid_syntax() {
        assert!(is_mariadb_gtid_list("0-1-10"));
        assert!(is_mariadb_gtid_list("0-1-10,1-2-5"));
        assert!(!is_mariadb_gtid_list(""));
        assert!(!is_mariadb_gtid_list("0-1"));
        assert!(is_mysql_gtid_set(&format!("{UUID1}:1-5")));
        assert!(is_mysql_gtid_set(&format!("{UUID1}:1-5:7:9-11,{UUID2}:1")));
        assert!(is_mysql_gtid_set(&format!("{UUID1}:1-5:tag_1:1-3")));
        assert!(!is_mysql_gtid_set(UUID1));
        assert!(!is_mysql_gtid_set(&format!(
            "{UUID1}:1-5'; DROP TABLE x; --"
        )));
    }
}
