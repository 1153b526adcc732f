//! What a stored backup says about itself: `manifest.json`, written last. A backup exists
//! when, and only when, its manifest does: listing and restoring ignore a prefix without one.

use std::time::SystemTime;

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};

use crate::coordinates::{Coordinates, Origin, Position};

/// The manifest's file name in a backup's prefix.
pub const MANIFEST_NAME: &str = "manifest.json";
/// The layout this agent writes and reads; a newer one is refused, not guessed at.
pub const FORMAT: u32 = 1;

/// One stored object of a backup's stream, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredObject {
    /// Relative to the backup's prefix.
    pub name: String,
    pub bytes: u64,
    /// Hex SHA-256 of the stored bytes.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compression {
    pub algorithm: String,
    pub level: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encryption {
    pub scheme: String,
    /// The recipients' public keys: who can read it.
    pub recipients: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Server {
    /// As the backup's info file gives it, e.g. `10.11.19-MariaDB-0+deb12u1-log`.
    pub version: String,
    /// `mysql` or `mariadb`.
    pub flavor: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tool {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub name: String,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub finished_at: String,
    /// The pod the backup was taken from, HOST:PORT.
    pub donor: String,
    pub agent_version: String,
    pub server: Server,
    pub tool: Tool,
    pub coordinates: Coordinates,
    /// The stream as the donor sent it (the agent's entries and the tool's xbstream).
    pub stream_bytes: u64,
    /// What is stored, after compression and encryption.
    pub stored_bytes: u64,
    pub compression: Compression,
    pub encryption: Option<Encryption>,
    pub objects: Vec<StoredObject>,
}

impl Manifest {
    pub fn to_json(&self) -> Vec<u8> {
        let mut text = serde_json::to_vec_pretty(self).unwrap_or_default();
        text.push(b'\n');
        text
    }

    /// Parses and checks a manifest read as the one of backup `name`.
    pub fn parse(bytes: &[u8], name: &str) -> Result<Self> {
        let manifest: Manifest = serde_json::from_slice(bytes)
            .with_context(|| format!("the manifest of backup {name} is not valid"))?;
        ensure!(
            manifest.format <= FORMAT,
            "backup {name} has manifest format {}, newer than this agent reads ({FORMAT})",
            manifest.format
        );
        ensure!(
            manifest.name == name,
            "the manifest under {name} names another backup, {:?}",
            manifest.name
        );
        ensure!(
            !manifest.objects.is_empty(),
            "the manifest of backup {name} lists no object"
        );
        let stored: u64 = manifest.objects.iter().map(|o| o.bytes).sum();
        ensure!(
            stored == manifest.stored_bytes,
            "the manifest of backup {name} adds up to {stored} stored bytes, not {}",
            manifest.stored_bytes
        );
        for object in &manifest.objects {
            if object.name.is_empty()
                || object
                    .name
                    .split('/')
                    .any(|p| p.is_empty() || p.starts_with('.'))
                || object.name == MANIFEST_NAME
            {
                bail!(
                    "the manifest of backup {name} lists an odd object {:?}",
                    object.name
                );
            }
            ensure!(
                object.sha256.len() == 64 && object.sha256.bytes().all(|b| b.is_ascii_hexdigit()),
                "the manifest of backup {name} has no SHA-256 for {}",
                object.name
            );
        }
        Ok(manifest)
    }

    /// One line for `list-backups`: name, end time, stored size, coordinates.
    pub fn summary_line(&self) -> String {
        format!(
            "{}  {}  {}  {}",
            self.name,
            self.finished_at,
            human_bytes(self.stored_bytes),
            describe(&self.coordinates)
        )
    }
}

/// Coordinates as a person reads them.
pub fn describe(coordinates: &Coordinates) -> String {
    let origin = match coordinates.origin {
        Origin::Primary => "from the primary",
        Origin::Replica => "from a replica",
    };
    let position = match &coordinates.position {
        Position::File { file, pos } => format!("{file}:{pos}"),
        Position::MysqlGtid { gtid_set } => format!("gtid {gtid_set}"),
        Position::MariaDbGtid { gtid_pos } => format!("gtid {gtid_pos}"),
    };
    format!("{position} ({origin})")
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A time as the manifest writes it.
pub fn timestamp(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

/// A new backup's name: its start time, sortable, and a random suffix so two backups started
/// in the same second do not collide.
pub fn new_name(started: SystemTime) -> Result<String> {
    let stamp: String = timestamp(started)
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    let mut suffix = [0u8; 3];
    getrandom::fill(&mut suffix).map_err(|e| anyhow::anyhow!("drawing a random name: {e}"))?;
    Ok(format!("{stamp}-{}", hex::encode(suffix)))
}

/// Whether `name` is one this agent gives backups (and so may list and delete).
pub fn is_backup_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    bytes.len() == 23
        && bytes[..8].iter().all(u8::is_ascii_digit)
        && bytes[8] == b'T'
        && bytes[9..15].iter().all(u8::is_ascii_digit)
        && bytes[15] == b'Z'
        && bytes[16] == b'-'
        && bytes[17..]
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    pub(crate) fn sample(name: &str) -> Manifest {
        Manifest {
            format: FORMAT,
            name: name.into(),
            started_at: "2026-12-02T07:00:00Z".into(),
            finished_at: "2026-12-02T07:01:00Z".into(),
            donor: "mysql-2.mysql:3307".into(),
            agent_version: "0.1.0".into(),
            server: Server {
                version: "10.11.19-MariaDB".into(),
                flavor: "mariadb".into(),
            },
            tool: Tool {
                name: "mariabackup".into(),
                version: "10.11.19-MariaDB".into(),
            },
            coordinates: Coordinates {
                origin: Origin::Replica,
                position: Position::MariaDbGtid {
                    gtid_pos: "0-100-42".into(),
                },
            },
            stream_bytes: 1000,
            stored_bytes: 300,
            compression: Compression {
                algorithm: "zstd".into(),
                level: 3,
            },
            encryption: None,
            objects: vec![StoredObject {
                name: "data-000000.xbs.zst".into(),
                bytes: 300,
                sha256: "ab".repeat(32),
            }],
        }
    }

    #[test]
    fn manifests_round_trip_and_are_checked() {
        let name = "20261202T070000Z-a1b2c3";
        let manifest = sample(name);
        let parsed = Manifest::parse(&manifest.to_json(), name).unwrap();
        assert_eq!(parsed, manifest);
        let text = String::from_utf8(manifest.to_json()).unwrap();
        assert!(text.contains("\"kind\": \"mariadb-gtid\""), "{text}");
        assert!(Manifest::parse(&manifest.to_json(), "20261202T070000Z-ffffff").is_err());
        let mut newer = manifest.clone();
        newer.format = FORMAT + 1;
        assert!(
            format!("{:#}", Manifest::parse(&newer.to_json(), name).unwrap_err())
                .contains("newer than this agent")
        );
        let mut short = manifest.clone();
        short.stored_bytes = 299;
        assert!(Manifest::parse(&short.to_json(), name).is_err());
        let mut odd = manifest.clone();
        odd.objects[0].name = "../escape".into();
        assert!(Manifest::parse(&odd.to_json(), name).is_err());
        assert!(Manifest::parse(b"{not json", name).is_err());
        assert_eq!(
            manifest.summary_line(),
            "20261202T070000Z-a1b2c3  2026-12-02T07:01:00Z  300 B  gtid 0-100-42 (from a replica)"
        );
    }

    #[test]
    fn names_sort_by_time_and_are_recognised() {
        let t = UNIX_EPOCH + Duration::from_secs(1_796_000_000);
        let a = new_name(t).unwrap();
        let b = new_name(t + Duration::from_secs(1)).unwrap();
        assert!(is_backup_name(&a) && is_backup_name(&b), "{a} {b}");
        assert!(a < b);
        assert!(a.starts_with("2026"), "{a}");
        for other in [
            "",
            "manifest.json",
            "20261202T070000Z",
            "20261202T070000Z-GGGGGG",
            "x0261202T070000Z-a1b2c3",
        ] {
            assert!(!is_backup_name(other), "{other}");
        }
    }
}
