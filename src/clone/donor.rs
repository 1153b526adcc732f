//! A peer to take a backup from: `HOST[:PORT]`, parsed strictly so that a typo is a usage
//! error at start-up, not thirty minutes of retrying a name that can never resolve.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use anyhow::{Context, Result, bail, ensure};

use crate::protocol;

/// A peer's backup server: `HOST[:PORT]`, port 3307 by default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Donor {
    pub host: String,
    pub port: u16,
}

/// Longest DNS name (RFC 1035) and label.
const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// A DNS name as Kubernetes makes them (RFC 1123 labels; `_` tolerated), or an IPv4 address.
fn check_hostname(host: &str) -> Result<()> {
    if host.parse::<Ipv4Addr>().is_ok() {
        return Ok(());
    }
    ensure!(!host.is_empty(), "no host");
    ensure!(
        host.len() <= MAX_NAME_LEN,
        "a host name of {} characters (at most {MAX_NAME_LEN})",
        host.len()
    );
    for label in host.trim_end_matches('.').split('.') {
        ensure!(!label.is_empty(), "host {host:?} has an empty label");
        ensure!(
            label.len() <= MAX_LABEL_LEN,
            "host {host:?} has a label longer than {MAX_LABEL_LEN} characters"
        );
        ensure!(
            label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "host {host:?} has a character that no host name has"
        );
        ensure!(
            !label.starts_with('-') && !label.ends_with('-'),
            "host {host:?} has a label starting or ending with '-'"
        );
    }
    Ok(())
}

impl FromStr for Donor {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let parsed = (|| -> Result<Self> {
            let (host, port) = if let Some(rest) = s.strip_prefix('[') {
                let (host, after) = rest.split_once(']').context("unclosed '['")?;
                host.parse::<Ipv6Addr>()
                    .with_context(|| format!("{host:?} is not an IPv6 address"))?;
                match after.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None if after.is_empty() => (host, None),
                    None => bail!("unexpected text after ']'"),
                }
            } else if s.parse::<Ipv6Addr>().is_ok() {
                // A bare IPv6 address: its colons are not a port separator.
                (s, None)
            } else {
                match s.split_once(':') {
                    Some((host, port)) => {
                        ensure!(
                            !port.contains(':'),
                            "more than one ':' (an IPv6 address goes in brackets: [ADDR]:PORT)"
                        );
                        check_hostname(host)?;
                        (host, Some(port))
                    }
                    None => {
                        check_hostname(s)?;
                        (s, None)
                    }
                }
            };
            let port = match port {
                Some(p) => p
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .with_context(|| format!("port {p:?} is not a port number (1-65535)"))?,
                None => protocol::DEFAULT_PORT,
            };
            Ok(Self {
                host: host.to_owned(),
                port,
            })
        })();
        // One flat message: clap shows an error's outermost text only.
        parsed.map_err(|e| anyhow::anyhow!("donor {s:?}: {e:#} (expected HOST[:PORT])"))
    }
}

impl fmt::Display for Donor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_donors() {
        let d = |s: &str| s.parse::<Donor>().unwrap();
        assert_eq!(
            d("mysql-1.mysql"),
            Donor {
                host: "mysql-1.mysql".into(),
                port: 3307
            }
        );
        assert_eq!(
            d("10.0.0.5:4000"),
            Donor {
                host: "10.0.0.5".into(),
                port: 4000
            }
        );
        assert_eq!(
            d("[::1]:4000"),
            Donor {
                host: "::1".into(),
                port: 4000
            }
        );
        assert_eq!(d("[::1]").port, 3307);
        assert_eq!(d("fe80::1").host, "fe80::1");
        assert_eq!(d("[::1]:4000").to_string(), "[::1]:4000");
        assert_eq!(
            d("mysql-2.mysql.db.svc.cluster.local.").host,
            "mysql-2.mysql.db.svc.cluster.local."
        );
    }

    #[test]
    fn refuses_what_cannot_be_a_donor() {
        for (bad, needle) in [
            ("", "no host"),
            (":3307", "no host"),
            ("host:port", "not a port number"),
            ("host:70000", "not a port number"),
            ("host:0", "not a port number"),
            ("[::1", "unclosed"),
            ("[::1]x", "after ']'"),
            ("[mysql-1]:3307", "not an IPv6"),
            ("bad host:port:x", "more than one ':'"),
            ("bad host", "character"),
            ("a..b", "empty label"),
            ("-a.b", "starting or ending"),
            ("a/b:3307", "character"),
        ] {
            let err = bad.parse::<Donor>().unwrap_err();
            let msg = format!("{err:#}");
            assert!(msg.contains(needle), "{bad:?}: {msg}");
            assert!(msg.starts_with(&format!("donor {bad:?}")), "{bad:?}: {msg}");
        }
        assert!(format!("{}.x", "a".repeat(64)).parse::<Donor>().is_err());
    }
}
