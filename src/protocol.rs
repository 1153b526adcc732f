//! What travels on port 3307 between `serve-backup` and `clone`.
//!
//! Compatible with the tutorial in both directions: the server speaks first and sends the
//! backup tool's xbstream as is, so `ncat --recv-only host 3307 | xbstream -x` still works; the
//! agent adds only things such a client either never sees or extracts as one small file:
//!
//! - a refusal line instead of a stream when the server cannot serve now
//!   (`MYSQL-AGENT/1 BUSY …` or `MYSQL-AGENT/1 NOT-READY …`), which `xbstream -x` rejects as
//!   a bad magic and the agent's clone retries;
//! - after the tool's stream, one more xbstream file, [`STATUS_ENTRY`], saying whether the tool
//!   completed and how many bytes preceded the entry. The format has no trailer of its own,
//!   so without this a stream cut at a chunk boundary would look complete.

use std::fmt;

use anyhow::{Context, Result, bail, ensure};

use crate::xbstream;

/// The tutorial's backup port.
pub const DEFAULT_PORT: u16 = 3307;
/// Name of the end-of-stream entry; a plain name both `xbstream` and `mbstream` extract.
pub const STATUS_ENTRY: &str = "mysql_agent_stream_status";
/// Starts every line the server sends instead of a stream; 8 bytes differ from xbstream's magic.
pub const LINE_PREFIX: &str = "MYSQL-AGENT/1 ";
/// A refusal line longer than this is not one.
pub const MAX_LINE_LEN: usize = 4096;

/// Why a server answered with a line instead of a backup. Both are worth retrying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The server is already streaming as many backups as it allows.
    Busy(String),
    /// The server is not in a state to produce a usable backup yet (a replica whose
    /// replication is not configured would hand out data without coordinates).
    NotReady(String),
}

impl Refusal {
    pub fn to_line(&self) -> String {
        let (word, reason) = match self {
            Refusal::Busy(r) => ("BUSY", r),
            Refusal::NotReady(r) => ("NOT-READY", r),
        };
        format!("{LINE_PREFIX}{word} {}\n", one_line(reason))
    }

    /// Parses a line (without its newline) that starts with [`LINE_PREFIX`].
    pub fn parse(line: &str) -> Result<Self> {
        let rest = line
            .strip_prefix(LINE_PREFIX)
            .with_context(|| format!("not an agent line: {line:?}"))?;
        let (word, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        match word {
            "BUSY" => Ok(Refusal::Busy(reason.to_owned())),
            "NOT-READY" => Ok(Refusal::NotReady(reason.to_owned())),
            _ => bail!("unknown answer {word:?} from the backup server"),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Busy(r) => write!(f, "busy: {r}"),
            Refusal::NotReady(r) => write!(f, "not ready: {r}"),
        }
    }
}

/// The verdict the server appends once the backup tool has exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStatus {
    /// `None` when the tool exited 0 and reported `completed OK!`; else why not.
    pub failure: Option<String>,
    /// Bytes of the tool's stream sent before this entry.
    pub stream_bytes: u64,
    /// The tool and version that produced the stream, for the receiver's logs.
    pub tool: String,
}

const COMPLETED: &str = "completed";
const FAILED: &str = "failed";

impl StreamStatus {
    /// The entry's file content: `key = value` lines, like the tools' own metadata files.
    pub fn to_text(&self) -> String {
        let mut text = match &self.failure {
            None => format!("status = {COMPLETED}\n"),
            Some(reason) => format!("status = {FAILED}\nreason = {}\n", one_line(reason)),
        };
        text.push_str(&format!("stream_bytes = {}\n", self.stream_bytes));
        text.push_str(&format!("tool = {}\n", one_line(&self.tool)));
        text
    }

    /// The entry as xbstream chunks, ready to append to the stream.
    pub fn to_chunks(&self) -> Vec<u8> {
        let mut out = Vec::new();
        xbstream::encode_file(STATUS_ENTRY, self.to_text().as_bytes(), &mut out);
        out
    }

    pub fn parse(text: &[u8]) -> Result<Self> {
        let text = std::str::from_utf8(text).context("the end-of-stream entry is not text")?;
        let field = |key: &str| {
            text.lines()
                .filter_map(|l| l.split_once('='))
                .find(|(k, _)| k.trim() == key)
                .map(|(_, v)| v.trim().to_owned())
        };
        let status = field("status").context("the end-of-stream entry has no status")?;
        let failure = match status.as_str() {
            COMPLETED => None,
            FAILED => Some(field("reason").unwrap_or_else(|| "no reason given".into())),
            other => bail!("unknown status {other:?} in the end-of-stream entry"),
        };
        let stream_bytes = field("stream_bytes")
            .context("the end-of-stream entry has no stream_bytes")?
            .parse()
            .context("stream_bytes is not a number")?;
        Ok(Self {
            failure,
            stream_bytes,
            tool: field("tool").unwrap_or_default(),
        })
    }

    /// Checks the entry against what arrived: the tool completed and no byte went missing.
    pub fn verify(&self, received_before_entry: u64) -> Result<()> {
        if let Some(reason) = &self.failure {
            bail!("the donor reports that its backup failed: {reason}");
        }
        ensure!(
            self.stream_bytes == received_before_entry,
            "the donor sent {} bytes of backup but {received_before_entry} arrived",
            self.stream_bytes
        );
        Ok(())
    }
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xbstream::{Extractor, Flavor};

    #[test]
    fn refusal_lines_round_trip_and_are_not_xbstream() {
        for refusal in [
            Refusal::Busy("serving 1 backup(s)".into()),
            Refusal::NotReady("replication not\nconfigured".into()),
        ] {
            let line = refusal.to_line();
            assert!(line.ends_with('\n'));
            assert_ne!(&line.as_bytes()[..8], xbstream::MAGIC);
            let parsed = Refusal::parse(line.trim_end()).unwrap();
            assert_eq!(
                parsed.to_string().replace('\n', " "),
                refusal.to_string().replace('\n', " ")
            );
        }
        assert!(Refusal::parse("MYSQL-AGENT/1 DANCE now").is_err());
        assert!(Refusal::parse("hello").is_err());
    }

    #[test]
    fn status_entry_round_trips_through_an_extraction() {
        let status = StreamStatus {
            failure: None,
            stream_bytes: 12345,
            tool: "mariadb-backup 10.11.19-MariaDB".into(),
        };
        let dir = tempfile::tempdir().unwrap();
        let summary = Extractor::new(dir.path(), Flavor::MariaDb)
            .with_trailer(STATUS_ENTRY)
            .extract(&status.to_chunks()[..])
            .unwrap();
        let trailer = summary.trailer.unwrap();
        assert_eq!(StreamStatus::parse(&trailer.contents).unwrap(), status);
        status.verify(12345).unwrap();
        let short = status.verify(12000).unwrap_err().to_string();
        assert!(
            short.contains("12345 bytes") && short.contains("12000 arrived"),
            "{short}"
        );
    }

    #[test]
    fn failed_status_carries_its_reason() {
        let status = StreamStatus {
            failure: Some("mariadb-backup exited with status 1:\nAccess denied".into()),
            stream_bytes: 10,
            tool: "t".into(),
        };
        let parsed = StreamStatus::parse(status.to_text().as_bytes()).unwrap();
        let err = parsed.verify(10).unwrap_err().to_string();
        assert!(
            err.contains("backup failed: mariadb-backup exited with status 1: Access denied"),
            "{err}"
        );
        assert!(StreamStatus::parse(b"status = maybe\nstream_bytes = 1\n").is_err());
        assert!(StreamStatus::parse(b"status = completed\n").is_err());
    }
}
