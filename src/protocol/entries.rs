//! The small xbstream files the server adds around the backup tool's stream: what to expect
//! ([`StreamInfo`], first) and the verdict ([`StreamStatus`], last). Plain `key = value` text,
//! like the tools' own metadata files.

use anyhow::{Context, Result, bail, ensure};

use super::{INFO_ENTRY, STATUS_ENTRY};
use crate::keyvalue::{self, one_line};
use crate::xbstream;

/// A stream may carry this many times the size its opening entry announced…
pub const STREAM_LIMIT_FACTOR: u64 = 2;
/// …plus this much, for the redo log a busy server writes while it is being copied.
pub const STREAM_LIMIT_SLACK: u64 = 16 << 30;

/// What the server announces before the backup tool's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// The donor's data dir size: what the stream will roughly carry.
    pub estimated_bytes: u64,
}

impl StreamInfo {
    /// The most a stream announced with this entry may carry: the data dir's size covers
    /// what the tool copies, and redo written during a long backup adds to it.
    pub fn stream_limit(&self) -> u64 {
        self.estimated_bytes
            .saturating_mul(STREAM_LIMIT_FACTOR)
            .saturating_add(STREAM_LIMIT_SLACK)
    }

    pub fn to_text(&self) -> String {
        format!("estimated_bytes = {}\n", self.estimated_bytes)
    }

    /// The entry as xbstream chunks, to send before the tool's stream.
    pub fn to_chunks(&self) -> Vec<u8> {
        let mut out = Vec::new();
        xbstream::encode_file(INFO_ENTRY, self.to_text().as_bytes(), &mut out);
        out
    }

    pub fn parse(text: &[u8]) -> Result<Self> {
        let text = std::str::from_utf8(text).context("the stream info entry is not text")?;
        let estimated_bytes = keyvalue::field(text, "estimated_bytes")
            .context("the stream info entry has no estimated_bytes")?
            .parse()
            .context("estimated_bytes is not a number")?;
        Ok(Self { estimated_bytes })
    }
}

/// The bound on a whole stream, from its opening entry (see [`StreamInfo::stream_limit`]);
/// `None` when the entry does not parse (the stream then has no bound but the volume).
pub fn stream_limit(header: &[u8]) -> Option<u64> {
    StreamInfo::parse(header)
        .ok()
        .map(|info| info.stream_limit())
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
        let field = |key: &str| keyvalue::field(text, key);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xbstream::{Decoder, Flavor, MemorySink};

    #[test]
    fn status_entry_round_trips_through_an_extraction() {
        let status = StreamStatus {
            failure: None,
            stream_bytes: 12345,
            tool: "mariadb-backup 10.11.19-MariaDB".into(),
        };
        let summary = Decoder::new(Flavor::MariaDb)
            .with_trailer(STATUS_ENTRY)
            .decode(&status.to_chunks()[..], &mut MemorySink::all(1024))
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

    #[test]
    fn info_bounds_the_stream() {
        let info = StreamInfo {
            estimated_bytes: 10 << 30,
        };
        assert_eq!(StreamInfo::parse(info.to_text().as_bytes()).unwrap(), info);
        assert_eq!(stream_limit(info.to_text().as_bytes()), Some(36 << 30));
        let huge = StreamInfo {
            estimated_bytes: u64::MAX,
        };
        assert_eq!(huge.stream_limit(), u64::MAX);
        assert_eq!(stream_limit(b"garbage"), None);
    }
}
