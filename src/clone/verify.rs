//! Whether what arrived is a whole backup this pod can prepare and replicate from. Pure: the
//! decoder's summary and the backup's metadata in, a verdict out.

use anyhow::{Context, Result, anyhow, ensure};
use tracing::warn;

use crate::backup_tool::{self, BackupTool};
use crate::coordinates::Coordinates;
use crate::metadata::{self, BackupMetadata};
use crate::protocol::StreamStatus;
use crate::server_version::ServerVersion;
use crate::xbstream::Summary;

/// The stream is a whole backup: the agent's end-of-stream entry vouches for it, or (from a
/// donor without the agent) the tool's own last files are there. xbstream alone cannot tell.
pub fn complete(summary: &Summary, meta: &BackupMetadata, require_end_marker: bool) -> Result<()> {
    match &summary.trailer {
        Some(trailer) => StreamStatus::parse(&trailer.contents)?.verify(trailer.stream_offset)?,
        None => {
            ensure!(
                !require_end_marker,
                "the donor sent no end-of-stream entry (is it the tutorial's ncat sidecar?) and --require-end-marker is set"
            );
            ensure!(
                meta.info.is_some(),
                "the stream ended without the agent's end-of-stream entry and without the backup tool's final {}: it was cut short",
                metadata::INFO_FILES[0]
            );
            warn!(
                "no end-of-stream entry (a donor running the tutorial's ncat sidecar?); accepting the stream because the backup's own completion files are present"
            );
        }
    }
    meta.check_full_backup()
}

/// The coordinates a replica of this backup starts from; a backup without them is useless.
pub fn coordinates(meta: &BackupMetadata) -> Result<Coordinates> {
    meta.coordinates()?.ok_or_else(|| {
        anyhow!(
            "the backup carries no replication coordinates (neither {} nor {}): the donor is not the primary with binary logging on, nor a configured replica",
            metadata::BINLOG_INFO_FILES[0],
            metadata::SLAVE_INFO_FILES[0]
        )
    })
}

/// Prepare needs a tool that knows the donor server's formats; the info file names it.
pub fn tool_fits(tool: &BackupTool, meta: &BackupMetadata) -> Result<()> {
    let Some(version) = meta.info_field("server_version") else {
        return Ok(());
    };
    let server = ServerVersion::parse(&version)
        .context("reading server_version in the backup's info file")?;
    backup_tool::check_compatible(tool, &server)
        .context("the donor's backup cannot be prepared here")
}

/// After `--prepare`, the checkpoints file must say the backup is prepared.
pub fn prepared(meta_after: &BackupMetadata) -> Result<()> {
    let backup_type = meta_after
        .backup_type()?
        .context("the checkpoints file vanished during prepare")?;
    ensure!(
        metadata::is_prepared(&backup_type),
        "after --prepare the backup's type is {backup_type:?}, not a prepared one"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::File;
    use crate::xbstream::Trailer;

    fn meta(checkpoints: &str, info: bool) -> BackupMetadata {
        BackupMetadata {
            checkpoints: Some(File {
                name: metadata::CHECKPOINTS_FILES[0].into(),
                text: checkpoints.into(),
            }),
            info: info.then(|| File {
                name: metadata::INFO_FILES[0].into(),
                text: "tool_name = xtrabackup\n".into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn completeness_needs_the_entry_or_the_tools_last_files() {
        let full = "backup_type = full-backuped\n";
        let status = |bytes| StreamStatus {
            failure: None,
            stream_bytes: bytes,
            tool: "t".into(),
        };
        let with = |s: StreamStatus, offset| Summary {
            bytes: 0,
            files: 0,
            header: None,
            trailer: Some(Trailer {
                stream_offset: offset,
                contents: s.to_text().into_bytes(),
            }),
        };
        complete(&with(status(100), 100), &meta(full, false), true).unwrap();
        assert!(complete(&with(status(100), 90), &meta(full, false), true).is_err());
        let without = Summary {
            bytes: 0,
            files: 0,
            header: None,
            trailer: None,
        };
        let cut = format!(
            "{:#}",
            complete(&without, &meta(full, false), false).unwrap_err()
        );
        assert!(cut.contains("cut short"), "{cut}");
        complete(&without, &meta(full, true), false).unwrap();
        assert!(complete(&without, &meta(full, true), true).is_err());
        assert!(complete(&without, &meta("backup_type = incremental\n", true), false).is_err());
    }

    #[test]
    fn prepared_means_the_tools_prepared_types() {
        prepared(&meta("backup_type = log-applied\n", true)).unwrap();
        prepared(&meta("backup_type = full-prepared\n", true)).unwrap();
        assert!(prepared(&meta("backup_type = full-backuped\n", true)).is_err());
        assert!(prepared(&BackupMetadata::default()).is_err());
    }
}
