//! Any byte string through the xbstream decoder alone (no file system, no threads), in both
//! flavors, with the agent's opening and end-of-stream entries: no panic, no allocation the
//! input chose, and a sink that only ever sees well-ordered, confined operations.
#![no_main]

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use anyhow::{Result, ensure};
use libfuzzer_sys::fuzz_target;
use mysql_agent::protocol::{INFO_ENTRY, STATUS_ENTRY, stream_limit};
use mysql_agent::xbstream::{Decoder, Flavor, MAX_OPEN_FILES, Payload, Sink};

/// Checks every operation against the sink contract, keeping only names, never contents.
#[derive(Default)]
struct Checking {
    open: BTreeSet<PathBuf>,
}

fn confined(path: &Path) -> bool {
    !path.as_os_str().is_empty()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(n) if !n.to_string_lossy().starts_with('.')))
}

impl Sink for Checking {
    fn create(&mut self, path: &Path, _rewrite: bool) -> Result<()> {
        assert!(confined(path), "unconfined path {path:?}");
        assert!(self.open.insert(path.to_owned()), "{path:?} created while open");
        assert!(self.open.len() <= MAX_OPEN_FILES);
        Ok(())
    }

    fn write(&mut self, path: &Path, offset: u64, data: &mut Payload<'_>) -> Result<()> {
        assert!(self.open.contains(path), "write to {path:?}, not open");
        assert!(offset.checked_add(data.remaining()).is_some_and(|e| e <= i64::MAX as u64));
        // Read some of it; the decoder must drain and check the rest.
        let mut buf = [0u8; 512];
        let n = (data.remaining() as usize).min(buf.len());
        data.read_exact(&mut buf[..n])?;
        Ok(())
    }

    fn seek(&mut self, path: &Path) -> Result<()> {
        assert!(self.open.contains(path), "seek on {path:?}, not open");
        Ok(())
    }

    fn close(&mut self, path: &Path, extend_to: Option<u64>) -> Result<()> {
        assert!(self.open.remove(path), "close of {path:?}, not open");
        assert!(extend_to.is_none_or(|l| l <= i64::MAX as u64));
        Ok(())
    }

    fn remove(&mut self, path: &Path) -> Result<()> {
        assert!(confined(path) && !self.open.contains(path));
        Ok(())
    }

    fn rename(&mut self, from: &Path, to: &Path) -> Result<()> {
        assert!(confined(from) && confined(to));
        ensure!(!self.open.contains(from) && !self.open.contains(to), "rename of an open file");
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        assert!(self.open.is_empty(), "finished with {:?} open", self.open);
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the flavor, so both dialects of chunk 'S' are explored.
    let Some((&selector, stream)) = data.split_first() else {
        return;
    };
    let flavor = if selector & 1 == 0 { Flavor::MariaDb } else { Flavor::XtraBackup };
    let _ = Decoder::new(flavor)
        .with_header(INFO_ENTRY)
        .with_trailer(STATUS_ENTRY)
        .with_limit_from_header(stream_limit)
        .decode(stream, &mut Checking::default());
});
