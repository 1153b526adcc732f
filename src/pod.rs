//! A pod's identity in the StatefulSet: its ordinal, its peers' names and its server-id.

use std::fmt;

use anyhow::{Context, Result, bail, ensure};

/// The highest server-id MySQL and MariaDB accept (a 32-bit unsigned value).
const MAX_SERVER_ID: u64 = u32::MAX as u64;

/// Who this pod is: `<statefulset>-<ordinal>`, published through the headless `service`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIdentity {
    pub name: String,
    pub statefulset: String,
    pub ordinal: u32,
    pub service: String,
}

impl PodIdentity {
    /// Splits a StatefulSet pod name at its last `-`.
    ///
    /// Kubernetes never writes leading zeros or signs, so `mysql-01` or `mysql-+1` is refused
    /// rather than guessed at (bash's `$((..))` would even read `010` as octal).
    pub fn parse(pod_name: &str, service: &str) -> Result<Self> {
        let expected = "expected <statefulset>-<ordinal>, for example mysql-2";
        ensure!(!pod_name.is_empty(), "the pod name is empty ({expected})");
        let Some((statefulset, ordinal)) = pod_name.rsplit_once('-') else {
            bail!("pod name {pod_name:?} has no ordinal suffix ({expected})");
        };
        ensure!(
            !statefulset.is_empty(),
            "pod name {pod_name:?} has no StatefulSet name before its ordinal ({expected})"
        );
        ensure!(
            !ordinal.is_empty() && ordinal.bytes().all(|b| b.is_ascii_digit()),
            "pod name {pod_name:?} does not end in a numeric ordinal ({expected})"
        );
        ensure!(
            ordinal == "0" || !ordinal.starts_with('0'),
            "pod name {pod_name:?} has an ordinal with leading zeros ({expected})"
        );
        let ordinal: u32 = ordinal
            .parse()
            .with_context(|| format!("the ordinal of pod name {pod_name:?} is out of range"))?;
        ensure!(
            !service.is_empty(),
            "the headless Service name is empty (see --service)"
        );
        Ok(Self {
            name: pod_name.to_owned(),
            statefulset: statefulset.to_owned(),
            ordinal,
            service: service.to_owned(),
        })
    }

    /// Ordinal 0 is the primary, as in the tutorial.
    pub fn is_primary(&self) -> bool {
        self.ordinal == 0
    }

    /// The stable DNS name of pod `ordinal` of the same StatefulSet.
    pub fn peer_host(&self, ordinal: u32) -> String {
        format!("{}-{}.{}", self.statefulset, ordinal, self.service)
    }

    pub fn primary_host(&self) -> String {
        self.peer_host(0)
    }

    /// Peers to clone from, nearest first: ordinal-1 is the tutorial's choice and the most
    /// likely to be up (pods start in order); the lower ones, down to the primary, are fallbacks.
    pub fn default_donor_hosts(&self) -> Vec<String> {
        (0..self.ordinal).rev().map(|n| self.peer_host(n)).collect()
    }
}

impl fmt::Display for PodIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name)
    }
}

/// server-id = offset + ordinal; 0 is reserved (a server with server-id 0 refuses to replicate).
pub fn server_id(offset: u32, ordinal: u32) -> Result<u32> {
    let id = u64::from(offset) + u64::from(ordinal);
    ensure!(
        id != 0,
        "server-id would be 0 (offset {offset} + ordinal {ordinal}), which MySQL reserves; use a positive --server-id-offset"
    );
    ensure!(
        id <= MAX_SERVER_ID,
        "server-id {id} (offset {offset} + ordinal {ordinal}) exceeds the maximum {MAX_SERVER_ID}"
    );
    Ok(id as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_statefulset_names() {
        let pod = PodIdentity::parse("mysql-2", "mysql").unwrap();
        assert_eq!(pod.statefulset, "mysql");
        assert_eq!(pod.ordinal, 2);
        assert!(!pod.is_primary());
        assert_eq!(pod.primary_host(), "mysql-0.mysql");
        assert_eq!(
            pod.default_donor_hosts(),
            vec!["mysql-1.mysql", "mysql-0.mysql"]
        );

        let pod = PodIdentity::parse("my-db-cluster-10", "db").unwrap();
        assert_eq!(pod.statefulset, "my-db-cluster");
        assert_eq!(pod.ordinal, 10);
        assert_eq!(pod.peer_host(9), "my-db-cluster-9.db");

        let primary = PodIdentity::parse("mysql-0", "mysql").unwrap();
        assert!(primary.is_primary());
        assert!(primary.default_donor_hosts().is_empty());
    }

    #[test]
    fn rejects_names_without_a_clean_ordinal() {
        for (name, needle) in [
            ("", "empty"),
            ("mysql", "no ordinal suffix"),
            ("mysql-", "numeric ordinal"),
            ("mysql-a", "numeric ordinal"),
            ("mysql-1a", "numeric ordinal"),
            ("mysql-+1", "numeric ordinal"),
            ("mysql- 1", "numeric ordinal"),
            ("-3", "no StatefulSet name"),
            ("mysql-01", "leading zeros"),
            ("mysql-4294967296", "out of range"),
            ("mysql-99999999999999999999999", "out of range"),
        ] {
            let err = PodIdentity::parse(name, "mysql").unwrap_err();
            let msg = format!("{err:#}");
            assert!(msg.contains(needle), "{name:?}: {msg}");
        }
        assert!(PodIdentity::parse("mysql-1", "").is_err());
    }

    #[test]
    fn largest_ordinal_is_accepted() {
        let pod = PodIdentity::parse("mysql-4294967295", "mysql").unwrap();
        assert_eq!(pod.ordinal, u32::MAX);
    }

    #[test]
    fn server_id_is_offset_plus_ordinal() {
        assert_eq!(server_id(100, 0).unwrap(), 100);
        assert_eq!(server_id(100, 3).unwrap(), 103);
        assert_eq!(server_id(0, 1).unwrap(), 1);
        assert_eq!(server_id(u32::MAX - 1, 1).unwrap(), u32::MAX);
        assert!(format!("{:#}", server_id(0, 0).unwrap_err()).contains("reserves"));
        assert!(format!("{:#}", server_id(u32::MAX, 1).unwrap_err()).contains("exceeds"));
    }
}
