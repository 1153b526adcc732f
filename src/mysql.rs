//! Connections to the local mysqld: waiting for it, identifying it, reading rows panic-free.

use std::fmt;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, Row, Value};
use tokio_util::sync::CancellationToken;

use crate::retry::{self, Failure};
use crate::secrets::Password;
use crate::server_version::ServerVersion;

/// How long one connection attempt may take before it counts as failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest packet the driver accepts: the agent's queries and answers are small.
const MAX_ALLOWED_PACKET: usize = 64 << 20;
/// The server's default idle timeout, which the driver would otherwise query.
const WAIT_TIMEOUT_SECS: usize = 28_800;

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
            // Given here, the driver asks the server for neither: its own conversion of an
            // odd answer to those would panic.
            .max_allowed_packet(Some(MAX_ALLOWED_PACKET))
            .wait_timeout(Some(WAIT_TIMEOUT_SECS))
    }
}

pub async fn connect(target: &MysqlTarget) -> Result<Conn> {
    tokio::time::timeout(CONNECT_TIMEOUT, Conn::new(target.opts()))
        .await
        .map_err(|_| anyhow!("no answer within {CONNECT_TIMEOUT:?}"))
        .and_then(|r| r.map_err(anyhow::Error::from))
        .with_context(|| format!("connecting to mysqld as {target}"))
}

/// Connects, waiting with back-off while mysqld is not up yet; only cancellation stops it.
pub async fn connect_with_retry(target: &MysqlTarget, cancel: &CancellationToken) -> Result<Conn> {
    retry::until_ok("waiting for mysqld", cancel, || async {
        connect(target).await.map_err(Failure::Transient)
    })
    .await
}

/// Connects and identifies the server, waiting with back-off through any failure to connect
/// or to read; a server whose answers make no sense (NULL, an unknown version) is a permanent
/// failure. Only cancellation or such an answer stops it.
pub async fn identify_with_retry(
    target: &MysqlTarget,
    cancel: &CancellationToken,
) -> Result<ServerInfo> {
    retry::until_ok("waiting for mysqld", cancel, || async {
        let mut conn = connect(target).await?;
        let info = server_info(&mut conn).await;
        let _ = conn.disconnect().await;
        info.map_err(|f| f.context(format!("identifying mysqld at {target}")))
    })
    .await
}

/// What the agent needs to know about a server before talking replication to it.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub version: ServerVersion,
    /// Whether string literals must be escaped without backslashes in this session.
    pub no_backslash_escapes: bool,
}

const SERVER_INFO_QUERY: &str = "SELECT VERSION(), @@SESSION.sql_mode";

/// Reads the version and session mode. A transport error is transient; a server that answers
/// nonsense (no row, NULL, a version the agent does not know) is a permanent failure.
pub async fn server_info(conn: &mut Conn) -> Result<ServerInfo, Failure> {
    let row: Option<Row> = conn
        .query_first(SERVER_INFO_QUERY)
        .await
        .with_context(|| format!("running {SERVER_INFO_QUERY}"))?;
    let permanent =
        |e: anyhow::Error| Failure::Permanent(e.context(format!("running {SERVER_INFO_QUERY}")));
    let row = row.ok_or_else(|| permanent(anyhow!("the server returned no row")))?;
    let version = text_at(&row, 0).map_err(permanent)?;
    let sql_mode = text_at(&row, 1).map_err(permanent)?;
    Ok(ServerInfo {
        version: ServerVersion::parse(&version).map_err(permanent)?,
        no_backslash_escapes: sql_mode
            .split(',')
            .any(|m| m.eq_ignore_ascii_case("NO_BACKSLASH_ESCAPES")),
    })
}

/// The text of column `index`; an error naming the column when it is missing or NULL.
pub fn text_at(row: &Row, index: usize) -> Result<String> {
    let name = row
        .columns_ref()
        .get(index)
        .map(|c| c.name_str().into_owned())
        .unwrap_or_else(|| format!("column {}", index + 1));
    match row.as_ref(index) {
        None => bail!("the answer has no {name}"),
        Some(Value::NULL) => bail!("the server answered NULL for {name}"),
        Some(Value::Bytes(bytes)) => Ok(String::from_utf8_lossy(bytes).into_owned()),
        Some(other) => Ok(other.as_sql(false).trim_matches('\'').to_owned()),
    }
}

/// A column's value as text; `None` when the column is absent or NULL. Never panics, unlike
/// `Row::get` on a failed conversion.
pub fn column_text(row: &Row, name: &str) -> Option<String> {
    let index = row
        .columns_ref()
        .iter()
        .position(|c| c.name_str() == name)?;
    text_at(row, index).ok()
}

/// Server errors that the same statement meets again however long one waits: its syntax, a
/// variable or value the server does not know, a privilege the account lacks.
pub const PERMANENT_ERRORS: [u16; 9] = [
    1044, // ER_DBACCESS_DENIED_ERROR
    1064, // ER_PARSE_ERROR
    1142, // ER_TABLEACCESS_DENIED_ERROR
    1149, // ER_SYNTAX_ERROR
    1193, // ER_UNKNOWN_SYSTEM_VARIABLE
    1210, // ER_WRONG_ARGUMENTS
    1227, // ER_SPECIFIC_ACCESS_DENIED_ERROR
    1231, // ER_WRONG_VALUE_FOR_VAR
    1232, // ER_WRONG_TYPE_FOR_VAR
];

/// Sorts a failed statement's error: permanent for [`PERMANENT_ERRORS`], transient for the
/// rest (the connection broke, the server is starting or read-only for a moment…).
pub fn classify(error: mysql_async::Error, context: &str) -> Failure {
    let permanent =
        matches!(&error, mysql_async::Error::Server(e) if PERMANENT_ERRORS.contains(&e.code));
    let error = anyhow::Error::from(error).context(context.to_owned());
    if permanent {
        Failure::Permanent(error)
    } else {
        Failure::Transient(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(code: u16) -> mysql_async::Error {
        mysql_async::Error::Server(mysql_async::ServerError {
            code,
            message: "You have an error in your SQL syntax".into(),
            state: "42000".into(),
        })
    }

    #[test]
    fn syntax_errors_are_permanent_and_the_rest_transient() {
        assert!(matches!(
            classify(server_error(1064), "running X"),
            Failure::Permanent(_)
        ));
        // ER_OPTION_PREVENTS_STATEMENT (read-only for a moment), lost connections: retry.
        assert!(matches!(
            classify(server_error(1290), "running X"),
            Failure::Transient(_)
        ));
        let Failure::Permanent(e) = classify(
            server_error(1227),
            "running CHANGE MASTER TO … on root@x:3306",
        ) else {
            panic!()
        };
        assert!(format!("{e:#}").starts_with("running CHANGE MASTER TO … on root@x:3306: "));
    }
}
