//! A [`Sink`] that keeps files in memory: all of them up to a total (tests, fuzzing), or only
//! a few named ones, such as a backup's metadata files while the stream itself goes elsewhere.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};

use super::decode::{Payload, Sink};

/// The most a kept file may hold when only named files are kept: metadata files are a few KiB.
pub const MAX_KEPT_FILE: usize = 1 << 20;

enum Keep {
    All { max_total: usize },
    Only(Vec<PathBuf>),
}

pub struct MemorySink {
    keep: Keep,
    files: BTreeMap<PathBuf, Vec<u8>>,
    total: usize,
}

impl MemorySink {
    /// Keeps every file, failing once they hold more than `max_total` bytes in all.
    pub fn all(max_total: usize) -> Self {
        Self {
            keep: Keep::All { max_total },
            files: BTreeMap::new(),
            total: 0,
        }
    }

    /// Keeps only the files named (paths within the stream); the others are checked and
    /// dropped.
    pub fn only(names: &[&str]) -> Self {
        Self {
            keep: Keep::Only(names.iter().map(PathBuf::from).collect()),
            files: BTreeMap::new(),
            total: 0,
        }
    }

    pub fn file(&self, path: &str) -> Option<&[u8]> {
        self.files.get(Path::new(path)).map(Vec::as_slice)
    }

    /// The first of `names` that was kept, as text (lossy).
    pub fn text(&self, names: &[&str]) -> Option<String> {
        names
            .iter()
            .find_map(|n| self.file(n))
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }

    pub fn files(&self) -> &BTreeMap<PathBuf, Vec<u8>> {
        &self.files
    }

    fn kept(&self, path: &Path) -> bool {
        match &self.keep {
            Keep::All { .. } => true,
            Keep::Only(names) => names.iter().any(|n| n == path),
        }
    }

    fn cap(&self) -> usize {
        match self.keep {
            Keep::All { max_total } => max_total,
            Keep::Only(_) => MAX_KEPT_FILE,
        }
    }
}

impl Sink for MemorySink {
    fn create(&mut self, path: &Path, rewrite: bool) -> Result<()> {
        if !self.kept(path) {
            return Ok(());
        }
        match self.files.get_mut(path) {
            Some(_) if !rewrite => bail!("file sent twice without the rewrite flag"),
            Some(old) => {
                self.total = self.total.saturating_sub(old.len());
                old.clear();
            }
            None => {
                self.files.insert(path.to_owned(), Vec::new());
            }
        }
        Ok(())
    }

    fn write(&mut self, path: &Path, offset: u64, data: &mut Payload<'_>) -> Result<()> {
        if !self.kept(path) {
            return Ok(());
        }
        let cap = self.cap();
        let end = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(data.remaining()).ok())
            .and_then(|(o, n)| o.checked_add(n))
            .filter(|end| *end <= cap)
            .with_context(|| {
                format!("{} grows past the {cap}-byte memory limit", path.display())
            })?;
        let file = self
            .files
            .get_mut(path)
            .context("write to a file never created")?;
        let grown = end.saturating_sub(file.len());
        let limit_total = matches!(self.keep, Keep::All { .. });
        ensure!(
            !limit_total || self.total.saturating_add(grown) <= cap,
            "the files grow past the {cap}-byte memory limit"
        );
        if file.len() < end {
            file.resize(end, 0);
        }
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        data.read_exact(&mut file[start..end])
            .context("reading the payload")?;
        self.total = self.total.saturating_add(grown);
        Ok(())
    }

    fn seek(&mut self, _path: &Path) -> Result<()> {
        Ok(())
    }

    fn close(&mut self, path: &Path, extend_to: Option<u64>) -> Result<()> {
        let cap = self.cap();
        if let (Some(len), Some(file)) = (extend_to, self.files.get_mut(path)) {
            let len = usize::try_from(len)
                .ok()
                .filter(|l| *l <= cap)
                .with_context(|| format!("{} ends past the memory limit", path.display()))?;
            let grown = len.saturating_sub(file.len());
            file.resize(len.max(file.len()), 0);
            self.total = self.total.saturating_add(grown);
        }
        Ok(())
    }

    fn remove(&mut self, path: &Path) -> Result<()> {
        if let Some(old) = self.files.remove(path) {
            self.total = self.total.saturating_sub(old.len());
        }
        Ok(())
    }

    fn rename(&mut self, from: &Path, to: &Path) -> Result<()> {
        let moved = self.files.remove(from);
        if let Some(old) = self.files.remove(to) {
            self.total = self.total.saturating_sub(old.len());
        }
        if let Some(contents) = moved {
            if self.kept(to) {
                self.files.insert(to.to_owned(), contents);
            } else {
                self.total = self.total.saturating_sub(contents.len());
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}
