//! Connections to the local mysqld: waiting for it, identifying it, reading rows panic-free.

use std::fmt;
use std::time::Duration;

use anyhow::{Context, Result};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, Row, Value};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::replication::ServerVersion;
use crate::retry;
use crate::secrets::Password;

/// How long one connection attempt may take before it counts as failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A MySQL account on a server reached over TCP.
#[derive(Clone)]
pub struct MysqlTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Password,
}

impl fmt::Debug for MysqlTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}:{}", self.user, self.host, self.port)
    }
}

impl fmt::Display for MysqlTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl MysqlTarget {
    fn opts(&self) -> OptsBuilder {
        OptsBuilder::default()
            .ip_or_hostname(self.host.clone())
            .tcp_port(self.port)
            .user(Some(self.user.clone()))
            .pass(Some(self.password.expose().to_owned()))
            // The driver would otherwise switch to the unix socket it finds via @@socket,
            // which is not shared with the sidecar's container.
            .prefer_socket(false)
    }
}

pub async fn connect(target: &MysqlTarget) -> Result<Conn> {
    tokio::time::timeout(CONNECT_TIMEOUT, Conn::new(target.opts()))
        .await
        .map_err(anyhow::Error::from)
        .and_then(|r| r.map_err(anyhow::Error::from))
        .with_context(|| format!("connecting to mysqld as {target}"))
}

/// Connects, waiting with back-off while mysqld is not up yet; only cancellation stops it.
pub async fn connect_with_retry(target: &MysqlTarget, cancel: &CancellationToken) -> Result<Conn> {
    let mut delays = retry::backoff();
    for attempt in 1.. {
        match connect(target).await {
            Ok(conn) => return Ok(conn),
            Err(e) => {
                let delay = delays.next().unwrap_or(retry::MAX_DELAY);
                info!(%target, attempt, error = %format_args!("{e:#}"), retry_in = ?delay, "waiting for mysqld");
                retry::sleep(delay, cancel).await?;
            }
        }
    }
    unreachable!("the attempt counter is unbounded")
}

/// Connects and identifies the server, waiting with back-off through any failure; only
/// cancellation stops it.
pub async fn identify_with_retry(
    target: &MysqlTarget,
    cancel: &CancellationToken,
) -> Result<ServerInfo> {
    let mut delays = retry::backoff();
    loop {
        let mut conn = connect_with_retry(target, cancel).await?;
        match server_info(&mut conn).await {
            Ok(info) => {
                let _ = conn.disconnect().await;
                return Ok(info);
            }
            Err(e) => {
                let delay = delays.next().unwrap_or(retry::MAX_DELAY);
                info!(%target, error = %format_args!("{e:#}"), retry_in = ?delay, "identifying mysqld failed");
                retry::sleep(delay, cancel).await?;
            }
        }
    }
}

/// What the agent needs to know about a server before talking replication to it.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub version: ServerVersion,
    /// Whether string literals must be escaped without backslashes in this session.
    pub no_backslash_escapes: bool,
}

pub async fn server_info(conn: &mut Conn) -> Result<ServerInfo> {
    let row: Option<(String, String)> = conn
        .query_first("SELECT VERSION(), @@SESSION.sql_mode")
        .await
        .context("reading the server version")?;
    let (version, sql_mode) = row.context("SELECT VERSION() returned no row")?;
    Ok(ServerInfo {
        version: ServerVersion::parse(&version)?,
        no_backslash_escapes: sql_mode
            .split(',')
            .any(|m| m.eq_ignore_ascii_case("NO_BACKSLASH_ESCAPES")),
    })
}

/// A column's value as text; `None` when the column is absent or NULL. Never panics, unlike
/// `Row::get` on a failed conversion.
pub fn column_text(row: &Row, name: &str) -> Option<String> {
    let index = row
        .columns_ref()
        .iter()
        .position(|c| c.name_str() == name)?;
    match row.as_ref(index)? {
        Value::NULL => None,
        Value::Bytes(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        other => Some(other.as_sql(false).trim_matches('\'').to_owned()),
    }
}
