//! The backups in a store: which are complete (a manifest), which are leftovers of attempts
//! that never finished, and which retention removes. Only names this agent gives backups are
//! ever listed or deleted: anything else under the prefix is left alone.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use tracing::{info, warn};

use crate::manifest::{MANIFEST_NAME, Manifest, is_backup_name};
use crate::store::Store;

/// A leftover younger than this may be a backup still being written; older, it is removed.
pub const LEFTOVER_AGE: Duration = Duration::from_secs(24 * 3600);

/// A prefix with objects and no manifest: an attempt that never finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    pub name: String,
    pub newest: SystemTime,
    pub objects: Vec<String>,
}

/// What is in a store.
#[derive(Debug, Default)]
pub struct Listing {
    /// Complete backups, newest first.
    pub complete: Vec<Manifest>,
    /// Backups whose manifest does not read (listed to say so, never restored or deleted).
    pub unreadable: Vec<(String, String)>,
    pub leftovers: Vec<Leftover>,
}

/// Every object of `store` under its prefix, grouped by backup name.
async fn objects_by_backup(store: &Store) -> Result<BTreeMap<String, Vec<(String, SystemTime)>>> {
    let mut groups: BTreeMap<String, Vec<(String, SystemTime)>> = BTreeMap::new();
    let mut listed = store.objects().list(Some(store.root()));
    while let Some(meta) = listed.next().await {
        let meta = meta.with_context(|| format!("listing {}", store.location))?;
        let relative = store.relative(&meta.location);
        let Some((name, object)) = relative.split_once('/') else {
            continue;
        };
        if !is_backup_name(name) {
            continue;
        }
        groups
            .entry(name.to_owned())
            .or_default()
            .push((object.to_owned(), meta.last_modified.into()));
    }
    Ok(groups)
}

/// Lists `store`: complete backups (their manifests read), unreadable ones, leftovers.
pub async fn list(store: &Store) -> Result<Listing> {
    let mut listing = Listing::default();
    for (name, objects) in objects_by_backup(store).await? {
        if objects.iter().any(|(o, _)| o == MANIFEST_NAME) {
            match read_manifest(store, &name).await {
                Ok(manifest) => listing.complete.push(manifest),
                Err(e) => listing.unreadable.push((name, format!("{e:#}"))),
            }
        } else {
            let newest = objects
                .iter()
                .map(|(_, t)| *t)
                .max()
                .unwrap_or(SystemTime::UNIX_EPOCH);
            listing.leftovers.push(Leftover {
                name,
                newest,
                objects: objects.into_iter().map(|(o, _)| o).collect(),
            });
        }
    }
    listing
        .complete
        .sort_by(|a, b| (&b.finished_at, &b.name).cmp(&(&a.finished_at, &a.name)));
    Ok(listing)
}

/// Reads the manifest of backup `name`.
pub async fn read_manifest(store: &Store, name: &str) -> Result<Manifest> {
    let path = store.path(&format!("{name}/{MANIFEST_NAME}"));
    let bytes = store
        .objects()
        .get(&path)
        .await
        .with_context(|| format!("reading {path} from {}", store.location))?
        .bytes()
        .await
        .with_context(|| format!("reading {path} from {}", store.location))?;
    Manifest::parse(&bytes, name)
}

/// The backup to restore: `name`, or the newest complete one.
pub async fn choose(store: &Store, name: Option<&str>) -> Result<Manifest> {
    match name {
        Some(name) => {
            if !is_backup_name(name) {
                bail!("{name:?} is not a backup name (see list-backups)");
            }
            read_manifest(store, name).await.with_context(|| {
                format!(
                    "backup {name} is not a complete backup in {}",
                    store.location
                )
            })
        }
        None => list(store)
            .await?
            .complete
            .into_iter()
            .next()
            .with_context(|| format!("no complete backup in {}", store.location)),
    }
}

/// What retention removes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub backups: Vec<String>,
    pub leftovers: Vec<String>,
}

/// Keeps the newest `keep` complete backups (newest first in `complete`) and removes the
/// rest, with leftovers older than [`LEFTOVER_AGE`]. Never removes `current`.
pub fn plan(
    complete: &[Manifest],
    leftovers: &[Leftover],
    keep: usize,
    now: SystemTime,
    current: &str,
) -> Plan {
    Plan {
        backups: complete
            .iter()
            .skip(keep.max(1))
            .map(|m| m.name.clone())
            .filter(|n| n != current)
            .collect(),
        leftovers: leftovers
            .iter()
            .filter(|l| l.name != current)
            .filter(|l| now.duration_since(l.newest).unwrap_or_default() >= LEFTOVER_AGE)
            .map(|l| l.name.clone())
            .collect(),
    }
}

/// Removes backup `name`: its manifest first, so that from the first deletion on it is no
/// longer complete, then its objects.
pub async fn delete(store: &Store, name: &str) -> Result<()> {
    let manifest = store.path(&format!("{name}/{MANIFEST_NAME}"));
    match store.objects().delete(&manifest).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(e).with_context(|| format!("deleting {manifest}")),
    }
    let prefix = store.path(name);
    let mut listed = store.objects().list(Some(&prefix));
    let mut paths: Vec<ObjectPath> = Vec::new();
    while let Some(meta) = listed.next().await {
        paths.push(meta.with_context(|| format!("listing {prefix}"))?.location);
    }
    for path in paths {
        match store.objects().delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e).with_context(|| format!("deleting {path}")),
        }
    }
    Ok(())
}

/// Applies retention after backup `current` was committed; failures are logged, not fatal:
/// the backup itself is done.
pub async fn apply_retention(store: &Store, keep: usize, current: &str) {
    let listing = match list(store).await {
        Ok(listing) => listing,
        Err(e) => {
            warn!(error = %format!("{e:#}"), "retention skipped: listing the store failed");
            return;
        }
    };
    let plan = plan(
        &listing.complete,
        &listing.leftovers,
        keep,
        SystemTime::now(),
        current,
    );
    for name in plan.backups.iter().chain(&plan.leftovers) {
        match delete(store, name).await {
            Ok(()) => info!(backup = %name, "removed by retention"),
            Err(e) => {
                warn!(backup = %name, error = %format!("{e:#}"), "retention could not remove it")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::tests::sample;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn retention_keeps_the_newest_and_old_leftovers_go() {
        let names = [
            "20261203T000000Z-000003",
            "20261202T000000Z-000002",
            "20261201T000000Z-000001",
        ];
        let complete: Vec<Manifest> = names.iter().map(|n| sample(n)).collect();
        let now = at(10 * 24 * 3600);
        let leftovers = vec![
            Leftover {
                name: "20261130T000000Z-0000aa".into(),
                newest: now - Duration::from_secs(2 * 24 * 3600),
                objects: vec!["data-000000.xbs.zst".into()],
            },
            Leftover {
                name: "20261203T010000Z-0000bb".into(),
                newest: now - Duration::from_secs(3600),
                objects: vec!["data-000000.xbs.zst".into()],
            },
        ];
        let p = plan(&complete, &leftovers, 2, now, names[0]);
        assert_eq!(p.backups, [names[2]]);
        assert_eq!(p.leftovers, ["20261130T000000Z-0000aa"]);
        // keep 0 still keeps the one just taken.
        let p = plan(&complete, &[], 0, now, names[0]);
        assert_eq!(p.backups, [names[1], names[2]]);
        assert_eq!(plan(&complete, &[], 5, now, names[0]), Plan::default());
    }
}
