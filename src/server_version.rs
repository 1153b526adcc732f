//! Which server the agent talks to: MySQL or MariaDB, and which version, from
//! `SELECT VERSION()`. Dialects (statements, privileges, backup tools) branch on it.

use std::fmt;

use anyhow::{Context, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerFlavor {
    MySql,
    MariaDb,
}

/// A server's flavor and version, from `SELECT VERSION()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerVersion {
    pub flavor: ServerFlavor,
    pub major: u16,
    pub minor: u16,
    pub patch: u16,
}

impl ServerVersion {
    /// Parses `8.0.36`, `8.4.3-log`, `5.7.44-48-log` (Percona), `10.11.19-MariaDB-0+deb12u1-log`
    /// and the `5.5.5-` prefix MariaDB shows old clients.
    pub fn parse(version: &str) -> Result<Self> {
        let flavor = if version.contains("MariaDB") {
            ServerFlavor::MariaDb
        } else {
            ServerFlavor::MySql
        };
        let bare = match flavor {
            ServerFlavor::MariaDb => version.strip_prefix("5.5.5-").unwrap_or(version),
            ServerFlavor::MySql => version,
        };
        let (major, minor, patch) = version_triple(bare)
            .with_context(|| format!("unrecognised server version {version:?}"))?;
        Ok(Self {
            flavor,
            major,
            minor,
            patch,
        })
    }

    pub fn at_least(&self, major: u16, minor: u16, patch: u16) -> bool {
        (self.major, self.minor, self.patch) >= (major, minor, patch)
    }

    pub fn mysql_at_least(&self, major: u16, minor: u16, patch: u16) -> bool {
        self.flavor == ServerFlavor::MySql && self.at_least(major, minor, patch)
    }

    /// MySQL 8.0.22 added the REPLICA verbs; 8.4 removed the SLAVE ones. MariaDB keeps SLAVE.
    pub fn replica_verbs(&self) -> bool {
        self.mysql_at_least(8, 0, 22)
    }

    /// MySQL 8.0.23 added CHANGE REPLICATION SOURCE TO and SOURCE_* options.
    pub fn source_syntax(&self) -> bool {
        self.mysql_at_least(8, 0, 23)
    }

    pub fn status_statement(&self) -> &'static str {
        if self.replica_verbs() {
            "SHOW REPLICA STATUS"
        } else {
            "SHOW SLAVE STATUS"
        }
    }

    pub fn start_statement(&self) -> &'static str {
        if self.replica_verbs() {
            "START REPLICA"
        } else {
            "START SLAVE"
        }
    }

    pub fn stop_statement(&self) -> &'static str {
        if self.replica_verbs() {
            "STOP REPLICA"
        } else {
            "STOP SLAVE"
        }
    }
}

/// The leading `major.minor.patch` of a version string such as `8.0.35-30` or
/// `10.11.19-MariaDB-log`.
pub fn version_triple(version: &str) -> Result<(u16, u16, u16)> {
    let numbers = version.split(['-', '+', ' ']).next().unwrap_or_default();
    let mut parts = numbers.split('.').map(str::parse::<u16>);
    let mut next = || -> Result<u16> {
        parts
            .next()
            .context("too few components")?
            .context("not a number")
    };
    Ok((next()?, next()?, next()?))
}

impl fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.flavor {
            ServerFlavor::MySql => "MySQL",
            ServerFlavor::MariaDb => "MariaDB",
        };
        write!(f, "{name} {}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> ServerVersion {
        ServerVersion::parse(s).unwrap()
    }

    #[test]
    fn parses_versions() {
        assert_eq!(
            v("10.11.19-MariaDB-0+deb12u1-log"),
            ServerVersion {
                flavor: ServerFlavor::MariaDb,
                major: 10,
                minor: 11,
                patch: 19
            }
        );
        assert_eq!(v("5.5.5-10.6.12-MariaDB").major, 10);
        let percona = v("5.7.44-48-log");
        assert_eq!((percona.flavor, percona.minor), (ServerFlavor::MySql, 7));
        assert_eq!(v("8.4.3").to_string(), "MySQL 8.4.3");
        assert!(ServerVersion::parse("banana").is_err());
        assert!(ServerVersion::parse("8.0").is_err());
    }

    #[test]
    fn verbs_follow_the_version() {
        assert_eq!(v("8.0.21").start_statement(), "START SLAVE");
        assert_eq!(v("8.0.22").start_statement(), "START REPLICA");
        assert_eq!(
            v("10.11.19-MariaDB").status_statement(),
            "SHOW SLAVE STATUS"
        );
        assert!(!v("8.0.22").source_syntax() && v("8.0.23").source_syntax());
    }
}
