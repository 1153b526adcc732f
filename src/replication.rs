//! Pointing a replica at the primary from a clone's coordinates, in the local server's dialect,
//! at most once and without ever crash-looping.
//!
//! The pure half (dialects, statements, the decision of what to do) is separate from the
//! half that talks to mysqld, so every version's SQL is unit-tested without a server.

use std::fmt;
use std::path::Path;
use std::time::SystemTime;

use anyhow::{Context, Result, bail, ensure};
use mysql_async::Value;
use mysql_async::prelude::Queryable;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::coordinates::{Coordinates, Origin, Position};
use crate::errors::{Interrupted, report};
use crate::fsutil;
use crate::mysql::{self, MysqlTarget};
use crate::retry::{self, Failure};
use crate::secrets::Password;
use crate::server_version::{ServerFlavor, ServerVersion};

/// What `MASTER_CONNECT_RETRY` the tutorial used: seconds between the IO thread's reconnects.
pub const SOURCE_CONNECT_RETRY_SECS: u32 = 10;
/// Written in the data dir once replication has been set up from the clone's coordinates, so
/// they are never applied twice (which would replay or skip transactions). A dotfile: the
/// backup tools skip it, so it never travels to another pod.
pub const RECORD_FILE: &str = ".mysql-agent-replication";

/// The primary as the replica's IO thread should reach it.
#[derive(Clone)]
pub struct Source {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Password,
    /// `--tls-dir`: replicate over TLS, verifying the primary's certificate and name, with
    /// the files at this path (mounted at the same path in the mysql container).
    pub tls: Option<std::path::PathBuf>,
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Source")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// The steps of a replication setup, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Stop,
    ResetGtidHistory,
    SetGtidPosition,
    Change,
    Start,
}

/// A statement to run, and the text that may be logged (password masked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub step: Step,
    pub sql: String,
    pub redacted: String,
}

impl Statement {
    fn plain(step: Step, sql: impl Into<String>) -> Self {
        let sql = sql.into();
        Self {
            step,
            redacted: sql.clone(),
            sql,
        }
    }
}

impl fmt::Display for Statement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

/// A string literal, escaped for the session's `NO_BACKSLASH_ESCAPES` setting.
fn literal(s: &str, no_backslash_escapes: bool) -> String {
    Value::from(s).as_sql(no_backslash_escapes)
}

/// The statements that point a freshly cloned server at `source` from `position`, stopping
/// any replication first so a re-run cannot fail with "running slave io thread" (ERROR 3021).
pub fn setup_statements(
    server: &ServerVersion,
    position: &Position,
    source: &Source,
    session: &Session,
) -> Result<Vec<Statement>> {
    let no_backslash_escapes = session.no_backslash_escapes;
    let lit = |s: &str| literal(s, no_backslash_escapes);
    let mariadb = server.flavor == ServerFlavor::MariaDb;
    match (position, mariadb) {
        (Position::MariaDbGtid { .. }, false) => {
            bail!("the clone carries a MariaDB GTID position but the local server is {server}")
        }
        (Position::MysqlGtid { .. }, true) => {
            bail!("the clone carries a MySQL GTID set but the local server is {server}")
        }
        _ => {}
    }
    let mut out = vec![Statement::plain(Step::Stop, server.stop_statement())];
    match position {
        Position::MariaDbGtid { gtid_pos } => out.push(Statement::plain(
            Step::SetGtidPosition,
            format!("SET GLOBAL gtid_slave_pos = {}", lit(gtid_pos)),
        )),
        Position::MysqlGtid { gtid_set } => {
            // gtid_purged can only be set on a server whose GTID history is empty.
            let reset = if server.mysql_at_least(8, 2, 0) {
                "RESET BINARY LOGS AND GTIDS"
            } else {
                "RESET MASTER"
            };
            out.push(Statement::plain(Step::ResetGtidHistory, reset));
            out.push(Statement::plain(
                Step::SetGtidPosition,
                format!("SET GLOBAL gtid_purged = {}", lit(gtid_set)),
            ));
        }
        Position::File { .. } => {}
    }

    let (change, opt) = if server.source_syntax() {
        ("CHANGE REPLICATION SOURCE TO", "SOURCE")
    } else {
        ("CHANGE MASTER TO", "MASTER")
    };
    const PASSWORD_OPTION: usize = 3;
    let mut options = vec![
        format!("{opt}_HOST={}", lit(&source.host)),
        format!("{opt}_PORT={}", source.port),
        format!("{opt}_USER={}", lit(&source.user)),
        format!("{opt}_PASSWORD={}", lit(source.password.expose())),
        format!("{opt}_CONNECT_RETRY={SOURCE_CONNECT_RETRY_SECS}"),
    ];
    match position {
        Position::File { file, pos } => {
            options.push(format!("{opt}_LOG_FILE={}", lit(file)));
            options.push(format!("{opt}_LOG_POS={pos}"));
            if mariadb {
                // 10.10+ would otherwise pick a GTID mode on its own; be explicit.
                options.push("MASTER_USE_GTID=no".into());
            }
        }
        Position::MariaDbGtid { .. } => options.push("MASTER_USE_GTID=slave_pos".into()),
        Position::MysqlGtid { .. } => options.push(format!("{opt}_AUTO_POSITION=1")),
    }
    if let Some(dir) = &source.tls {
        use crate::tls::{CA_FILE, CERT_FILE, KEY_FILE};
        let path = |name: &str| lit(&dir.join(name).display().to_string());
        options.push(format!("{opt}_SSL=1"));
        options.push(format!("{opt}_SSL_CA={}", path(CA_FILE)));
        options.push(format!("{opt}_SSL_CERT={}", path(CERT_FILE)));
        options.push(format!("{opt}_SSL_KEY={}", path(KEY_FILE)));
        options.push(format!("{opt}_SSL_VERIFY_SERVER_CERT=1"));
    }
    // caching_sha2_password (MySQL 8's default) without TLS needs the source's RSA key.
    if session.replication_account_needs_rsa_key && source.tls.is_none() {
        if server.source_syntax() {
            options.push("GET_SOURCE_PUBLIC_KEY=1".into());
        } else if server.mysql_at_least(8, 0, 4) {
            options.push("GET_MASTER_PUBLIC_KEY=1".into());
        }
    }
    let sql = format!("{change} {}", options.join(", "));
    options[PASSWORD_OPTION] = format!("{opt}_PASSWORD=<redacted>");
    let redacted = format!("{change} {}", options.join(", "));
    out.push(Statement {
        step: Step::Change,
        sql,
        redacted,
    });
    out.push(Statement::plain(Step::Start, server.start_statement()));
    Ok(out)
}

/// What about the local server's session shapes the statements.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Session {
    /// String literals must be escaped without backslashes.
    pub no_backslash_escapes: bool,
    /// The replication account authenticates with caching_sha2_password or sha256_password,
    /// which over a connection without TLS needs the source's RSA public key.
    pub replication_account_needs_rsa_key: bool,
}

/// Authentication plugins that send the password RSA-encrypted when there is no TLS.
pub const RSA_KEY_PLUGINS: [&str; 2] = ["caching_sha2_password", "sha256_password"];

/// Whether `account`'s plugin needs the RSA key, from `mysql.user` on the local server (a
/// clone of the primary, so the same accounts). Unknown means yes on MySQL 8, whose default
/// plugin needs it; MariaDB and MySQL 5.7 never do.
pub async fn account_needs_rsa_key(
    conn: &mut mysql_async::Conn,
    server: &ServerVersion,
    account: &str,
    no_backslash_escapes: bool,
) -> bool {
    if !server.mysql_at_least(8, 0, 0) {
        return false;
    }
    let query = format!(
        "SELECT plugin FROM mysql.user WHERE user = {}",
        literal(account, no_backslash_escapes)
    );
    match conn.query::<mysql_async::Row, _>(&query).await {
        Ok(rows) if !rows.is_empty() => rows.iter().any(|row| {
            // A NULL or missing plugin is unknown: assume the default, which needs the key.
            mysql::column_text(row, "plugin").is_none_or(|p| RSA_KEY_PLUGINS.contains(&p.as_str()))
        }),
        Ok(_) => true,
        Err(e) => {
            warn!(account, error = %e, "cannot read the replication account's plugin; asking for the source's RSA key");
            true
        }
    }
}

/// The columns of SHOW SLAVE/REPLICA STATUS the agent reads, under either spelling.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub source_host: String,
    pub io_running: String,
    pub sql_running: String,
    pub last_io_error: String,
    pub last_sql_error: String,
    pub seconds_behind: Option<u64>,
    /// What this replica has applied of the primary's history, in the replication's own
    /// terms: the GTID state when replication uses GTIDs, else the primary's binary log file
    /// and position of the last applied event. `None` before anything was applied.
    pub executed: Option<Position>,
    /// The primary's binary log file the replica last applied from, which names the
    /// primary's binary logs (a recovered primary continues under the same name).
    pub source_log_file: String,
}

impl ReplicaStatus {
    /// `column` returns a column's text, `None` when absent or NULL. MySQL 8.0.22+ spells them
    /// Replica_*/Source_*; MariaDB and older MySQL Slave_*/Master_*.
    pub fn from_columns(column: impl Fn(&str) -> Option<String>) -> Self {
        let either = |new: &str, old: &str| column(new).or_else(|| column(old)).unwrap_or_default();
        Self {
            source_host: either("Source_Host", "Master_Host"),
            io_running: either("Replica_IO_Running", "Slave_IO_Running"),
            sql_running: either("Replica_SQL_Running", "Slave_SQL_Running"),
            last_io_error: either("Last_IO_Error", "Last_IO_Error"),
            last_sql_error: either("Last_SQL_Error", "Last_SQL_Error"),
            seconds_behind: column("Seconds_Behind_Source")
                .or_else(|| column("Seconds_Behind_Master"))
                .and_then(|s| s.parse().ok()),
            executed: executed_position(&column),
            source_log_file: either("Relay_Source_Log_File", "Relay_Master_Log_File"),
        }
    }

    pub fn both_threads_running(&self) -> bool {
        self.io_running == "Yes" && self.sql_running == "Yes"
    }

    fn has_error(&self) -> bool {
        !self.last_io_error.is_empty() || !self.last_sql_error.is_empty()
    }
}

/// Where a replica of `coordinates` starts, on `server`, whose restored `@@gtid_slave_pos`
/// (MariaDB) is `restored_gtid_pos`.
///
/// MariaDB gives every transaction a GTID and keeps a replica's applied GTIDs in its data
/// (mysql.gtid_slave_pos), whether it connects by GTID or by file: so a replica's backup at a
/// file position carries the GTID position of the same place, and a primary's backup without
/// a GTID was taken before the first transaction (the empty position). Replicating by GTID
/// lets the replicas follow a primary rebuilt from one of them (see [`crate::survey`]), which
/// a file and position in the old primary's binary logs cannot.
pub fn preferred_position(
    server: &ServerVersion,
    coordinates: &Coordinates,
    restored_gtid_pos: Option<&str>,
) -> Position {
    use crate::coordinates::is_mariadb_gtid_list;
    if server.flavor != ServerFlavor::MariaDb {
        return coordinates.position.clone();
    }
    match (&coordinates.position, coordinates.origin, restored_gtid_pos) {
        (Position::File { .. }, Origin::Primary, _) => Position::MariaDbGtid {
            gtid_pos: String::new(),
        },
        (Position::File { .. }, Origin::Replica, Some(gtid_pos))
            if gtid_pos.is_empty() || is_mariadb_gtid_list(gtid_pos) =>
        {
            Position::MariaDbGtid {
                gtid_pos: gtid_pos.to_owned(),
            }
        }
        (position, _, _) => position.clone(),
    }
}

/// The applied position from SHOW SLAVE/REPLICA STATUS: MariaDB's `Gtid_Slave_Pos` when
/// `Using_Gtid` is on, MySQL's `Executed_Gtid_Set` with auto-positioning, else the primary's
/// file and `Exec_Master_Log_Pos`. Values that do not parse count as unknown.
fn executed_position(column: &impl Fn(&str) -> Option<String>) -> Option<Position> {
    use crate::coordinates::{is_mariadb_gtid_list, is_mysql_gtid_set};
    let using_gtid = column("Using_Gtid").unwrap_or_default();
    if !using_gtid.is_empty() && !using_gtid.eq_ignore_ascii_case("No") {
        // Empty is a position too: nothing applied yet, in a history that has none either.
        let gtid_pos = column("Gtid_Slave_Pos")?.trim().to_owned();
        return (gtid_pos.is_empty() || is_mariadb_gtid_list(&gtid_pos))
            .then_some(Position::MariaDbGtid { gtid_pos });
    }
    // A MariaDB replica by file and position still keeps the GTIDs it applied: reported as
    // such, it compares with the GTID replicas of a cluster set up before this version.
    if let Some(gtid_pos) = column("Gtid_Slave_Pos").map(|p| p.trim().to_owned())
        && is_mariadb_gtid_list(&gtid_pos)
    {
        return Some(Position::MariaDbGtid { gtid_pos });
    }
    if column("Auto_Position").as_deref() == Some("1") {
        let gtid_set: String = column("Executed_Gtid_Set")?
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        return (gtid_set.is_empty() || is_mysql_gtid_set(&gtid_set))
            .then_some(Position::MysqlGtid { gtid_set });
    }
    let file = column("Relay_Source_Log_File").or_else(|| column("Relay_Master_Log_File"))?;
    let pos = column("Exec_Source_Log_Pos")
        .or_else(|| column("Exec_Master_Log_Pos"))?
        .parse()
        .ok()?;
    (!file.is_empty()).then_some(Position::File { file, pos })
}

/// What the sidecar must do about replication on start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing is configured and the clone left coordinates: apply them.
    Configure,
    /// An earlier run configured the source but stopped before starting the threads.
    Start,
    /// Replication points at the primary; record that if not yet recorded.
    AlreadyConfigured,
    /// Replication points at another host: someone else manages it.
    Foreign { host: String },
    /// It was configured once and has since been removed: re-applying the clone's old
    /// coordinates would replay transactions, so a human must decide.
    Removed,
    /// Neither replication nor coordinates: this replica cannot be set up by the agent.
    NoCoordinates,
}

pub fn decide(
    status: Option<&ReplicaStatus>,
    recorded: bool,
    has_coordinates: bool,
    primary_host: &str,
) -> Action {
    match status {
        None if recorded => Action::Removed,
        None if has_coordinates => Action::Configure,
        None => Action::NoCoordinates,
        Some(s) if !s.source_host.eq_ignore_ascii_case(primary_host) => Action::Foreign {
            host: s.source_host.clone(),
        },
        Some(s) if !recorded && s.io_running == "No" && s.sql_running == "No" && !s.has_error() => {
            Action::Start
        }
        Some(_) => Action::AlreadyConfigured,
    }
}

/// How replication setup ended, for the backup server's readiness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Replication points at the primary.
    Configured,
    /// Left alone; the reason says why.
    NotConfigured(String),
}

/// Reads SHOW SLAVE/REPLICA STATUS; `None` when the server is not a replica.
pub async fn read_status(
    conn: &mut mysql_async::Conn,
    server: &ServerVersion,
) -> Result<Option<ReplicaStatus>> {
    let rows: Vec<mysql_async::Row> = conn
        .query(server.status_statement())
        .await
        .with_context(|| format!("running {}", server.status_statement()))?;
    ensure!(
        rows.len() <= 1,
        "{} returned {} rows: multi-source replication is not supported",
        server.status_statement(),
        rows.len()
    );
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    // MariaDB shows its applied GTID position only in a variable, not in this row.
    let gtid_slave_pos = if server.flavor == ServerFlavor::MariaDb {
        Some(mariadb_gtid_slave_pos(conn).await?)
    } else {
        None
    };
    Ok(Some(ReplicaStatus::from_columns(|name| {
        mysql::column_text(row, name).or_else(|| {
            (name == "Gtid_Slave_Pos")
                .then(|| gtid_slave_pos.clone())
                .flatten()
        })
    })))
}

/// `@@GLOBAL.gtid_slave_pos`: what a MariaDB replica has applied (kept in
/// mysql.gtid_slave_pos whether it connects by GTID or not, and restored with a clone).
async fn mariadb_gtid_slave_pos(conn: &mut mysql_async::Conn) -> Result<String> {
    const QUERY: &str = "SELECT @@GLOBAL.gtid_slave_pos";
    let row: Option<mysql_async::Row> = conn
        .query_first(QUERY)
        .await
        .with_context(|| format!("running {QUERY}"))?;
    match row {
        Some(row) => Ok(mysql::text_at(&row, 0).unwrap_or_default()),
        None => Ok(String::new()),
    }
}

/// Brings replication of the local server in line with the clone's `coordinates` (read from
/// `data_dir` by the caller): waits for mysqld, decides (see [`decide`]), acts, records.
/// Transient failures are retried with back-off until `cancel`; only cancellation ends it
/// with an error.
pub async fn ensure_configured(
    target: &MysqlTarget,
    source: &Source,
    data_dir: &Path,
    coordinates: Option<&Coordinates>,
    cancel: &CancellationToken,
) -> Result<Outcome> {
    let record = data_dir.join(RECORD_FILE);
    let configured = retry::until_ok("configuring replication", cancel, || {
        configure_once(target, source, coordinates, &record)
    })
    .await;
    match configured {
        Ok(outcome) => Ok(outcome),
        Err(e) if e.downcast_ref::<Interrupted>().is_some() => Err(e),
        // Only a permanent failure ends the retries: say so, and leave replication alone.
        Err(e) => Ok(Outcome::NotConfigured(format!(
            "replication setup failed and retrying cannot fix it: {}",
            report(&e)
        ))),
    }
}

async fn configure_once(
    target: &MysqlTarget,
    source: &Source,
    coordinates: Option<&Coordinates>,
    record: &Path,
) -> Result<Outcome, Failure> {
    let mut conn = mysql::connect(target).await?;
    let result = configure_on(&mut conn, target, source, coordinates, record).await;
    // Closing politely spares the server an "aborted connection" note; failure is harmless.
    let _ = conn.disconnect().await;
    result
}

async fn configure_on(
    conn: &mut mysql_async::Conn,
    target: &MysqlTarget,
    source: &Source,
    coordinates: Option<&Coordinates>,
    record: &Path,
) -> Result<Outcome, Failure> {
    let server = mysql::server_info(conn)
        .await
        .map_err(|f| f.context(format!("identifying mysqld at {target}")))?;
    let status = read_status(conn, &server.version).await?;
    let recorded = fsutil::exists(record)?;
    let action = decide(
        status.as_ref(),
        recorded,
        coordinates.is_some(),
        &source.host,
    );
    info!(server = %server.version, ?action, recorded, "replication state read");
    Ok(match action {
        Action::Configure => {
            let Some(coordinates) = coordinates else {
                return Err(Failure::Permanent(anyhow::anyhow!(
                    "no coordinates to configure replication from"
                )));
            };
            let session = Session {
                no_backslash_escapes: server.no_backslash_escapes,
                replication_account_needs_rsa_key: account_needs_rsa_key(
                    conn,
                    &server.version,
                    &source.user,
                    server.no_backslash_escapes,
                )
                .await,
            };
            let restored = if server.version.flavor == ServerFlavor::MariaDb {
                Some(
                    mariadb_gtid_slave_pos(conn)
                        .await
                        .map_err(Failure::Transient)?,
                )
            } else {
                None
            };
            let position = preferred_position(&server.version, coordinates, restored.as_deref());
            let statements = setup_statements(&server.version, &position, source, &session)
                .map_err(Failure::Permanent)?;
            for statement in &statements {
                match statement.step {
                    Step::Change => crate::crash_point!("replication-before-change"),
                    Step::Start => crate::crash_point!("replication-before-start"),
                    _ => {}
                }
                info!(step = ?statement.step, %statement, "configuring replication");
                conn.query_drop(&statement.sql)
                    .await
                    .map_err(|e| mysql::classify(e, &format!("running {statement} on {target}")))?;
            }
            crate::crash_point!("replication-before-record");
            write_record(
                record,
                &format!("{position:?} from {:?}", coordinates.origin),
            )?;
            crate::crash_point!("replication-after-record");
            Outcome::Configured
        }
        Action::Start => {
            let start = server.version.start_statement();
            info!(
                statement = start,
                "completing an interrupted setup: starting replication"
            );
            conn.query_drop(start)
                .await
                .map_err(|e| mysql::classify(e, &format!("running {start} on {target}")))?;
            write_record(record, "threads started after an interrupted setup")?;
            Outcome::Configured
        }
        Action::AlreadyConfigured => {
            if !recorded {
                write_record(record, "found configured")?;
            }
            Outcome::Configured
        }
        Action::Foreign { host } => Outcome::NotConfigured(format!(
            "replication points at {host:?}, not the primary {:?}; leaving it alone",
            source.host
        )),
        Action::Removed => Outcome::NotConfigured(format!(
            "replication was configured (see {}) but is no longer; not re-applying the clone's old coordinates, which would replay transactions",
            record.display()
        )),
        Action::NoCoordinates => Outcome::NotConfigured(
            "the data dir holds no clone coordinates and the server is not a replica".into(),
        ),
    })
}

fn write_record(path: &Path, what: &str) -> Result<()> {
    let when = humantime::format_rfc3339_seconds(SystemTime::now());
    fsutil::write_atomic(
        path,
        format!("configured_at = {when}\nhow = {what}\n").as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> ServerVersion {
        ServerVersion::parse(s).unwrap()
    }

    fn source() -> Source {
        Source {
            host: "mysql-0.mysql".into(),
            port: 3306,
            user: "repl".into(),
            password: Password::new("s3cr'et\\"),
            tls: None,
        }
    }

    /// With --tls-dir every dialect replicates over TLS and verifies the primary's
    /// certificate, in its own words; no RSA key is fetched then (TLS carries the password).
    #[test]
    fn tls_options_in_each_dialect() {
        let tls = Source {
            tls: Some("/etc/mysql-agent/tls".into()),
            ..source()
        };
        let gtid = Position::MariaDbGtid {
            gtid_pos: "0-1-5".into(),
        };
        let file = Position::File {
            file: "binlog.000002".into(),
            pos: 4,
        };
        for (server, position, prefix) in [
            ("10.11.19-MariaDB", &gtid, "MASTER"),
            ("5.7.44", &file, "MASTER"),
            ("8.0.36", &file, "SOURCE"),
            ("8.4.3", &file, "SOURCE"),
        ] {
            let statements = setup_statements(&v(server), position, &tls, &rsa_session()).unwrap();
            let change = statements.iter().find(|s| s.step == Step::Change).unwrap();
            for option in [
                format!("{prefix}_SSL=1"),
                format!("{prefix}_SSL_CA='/etc/mysql-agent/tls/ca.crt'"),
                format!("{prefix}_SSL_CERT='/etc/mysql-agent/tls/tls.crt'"),
                format!("{prefix}_SSL_KEY='/etc/mysql-agent/tls/tls.key'"),
                format!("{prefix}_SSL_VERIFY_SERVER_CERT=1"),
            ] {
                assert!(
                    change.sql.contains(&option),
                    "{server}: {} lacks {option}",
                    change.sql
                );
            }
            assert!(
                !change.sql.contains("PUBLIC_KEY"),
                "{server}: {}",
                change.sql
            );
        }
    }

    fn sql(server: &str, position: &Position) -> Vec<String> {
        setup_statements(&v(server), position, &source(), &rsa_session())
            .unwrap()
            .into_iter()
            .map(|s| s.sql)
            .collect()
    }

    /// A MySQL 8 default account (caching_sha2_password), default sql_mode.
    fn rsa_session() -> Session {
        Session {
            no_backslash_escapes: false,
            replication_account_needs_rsa_key: true,
        }
    }

    fn file_pos() -> Position {
        Position::File {
            file: "mysql-bin.000003".into(),
            pos: 1234,
        }
    }

    #[test]
    fn mariadb_statements() {
        assert_eq!(
            sql("10.11.19-MariaDB", &file_pos()),
            vec![
                "STOP SLAVE".to_string(),
                "CHANGE MASTER TO MASTER_HOST='mysql-0.mysql', MASTER_PORT=3306, MASTER_USER='repl', MASTER_PASSWORD='s3cr\\'et\\\\', MASTER_CONNECT_RETRY=10, MASTER_LOG_FILE='mysql-bin.000003', MASTER_LOG_POS=1234, MASTER_USE_GTID=no".into(),
                "START SLAVE".into(),
            ]
        );
        let gtid = Position::MariaDbGtid {
            gtid_pos: "0-100-7".into(),
        };
        let statements = sql("10.11.19-MariaDB", &gtid);
        assert_eq!(statements[1], "SET GLOBAL gtid_slave_pos = '0-100-7'");
        assert!(statements[2].ends_with("MASTER_CONNECT_RETRY=10, MASTER_USE_GTID=slave_pos"));
    }

    #[test]
    fn mysql_statements_per_version() {
        let uuid = "c777888a-b6df-11e2-a604-080027635ef5:1-4";
        let gtid = Position::MysqlGtid {
            gtid_set: uuid.into(),
        };
        let s57 = sql("5.7.44-log", &gtid);
        assert_eq!(
            s57[..3],
            [
                "STOP SLAVE",
                "RESET MASTER",
                &format!("SET GLOBAL gtid_purged = '{uuid}'")
            ]
        );
        assert!(s57[3].starts_with("CHANGE MASTER TO MASTER_HOST="));
        assert!(s57[3].ends_with("MASTER_AUTO_POSITION=1"));
        assert_eq!(s57[4], "START SLAVE");

        let s8021 = sql("8.0.21", &file_pos());
        assert_eq!(s8021[0], "STOP SLAVE");
        assert!(s8021[1].ends_with("MASTER_LOG_POS=1234, GET_MASTER_PUBLIC_KEY=1"));

        let s8022 = sql("8.0.22", &file_pos());
        assert_eq!(
            (s8022[0].as_str(), s8022[2].as_str()),
            ("STOP REPLICA", "START REPLICA")
        );
        assert!(s8022[1].starts_with("CHANGE MASTER TO"));

        let s8036 = sql("8.0.36", &gtid);
        assert_eq!(s8036[1], "RESET MASTER");
        assert!(s8036[3].starts_with(
            "CHANGE REPLICATION SOURCE TO SOURCE_HOST='mysql-0.mysql', SOURCE_PORT=3306"
        ));
        assert!(s8036[3].ends_with("SOURCE_AUTO_POSITION=1, GET_SOURCE_PUBLIC_KEY=1"));

        for statements in [sql("8.4.3", &gtid), sql("8.4.3", &file_pos())] {
            for s in &statements {
                for removed in ["MASTER", "SLAVE"] {
                    assert!(!s.contains(removed), "8.4 rejects {s}");
                }
            }
        }
        assert_eq!(sql("8.4.3", &gtid)[1], "RESET BINARY LOGS AND GTIDS");
    }

    #[test]
    fn rsa_key_only_for_accounts_that_need_it() {
        let native = Session::default();
        for version in ["8.0.21", "8.0.36", "8.4.3"] {
            let change =
                &setup_statements(&v(version), &file_pos(), &source(), &native).unwrap()[1];
            assert!(
                !change.sql.contains("PUBLIC_KEY"),
                "{version}: {}",
                change.sql
            );
        }
        // MySQL 5.7 and MariaDB have no such option, whatever the account.
        for version in ["5.7.44", "10.11.19-MariaDB"] {
            let change =
                &setup_statements(&v(version), &file_pos(), &source(), &rsa_session()).unwrap()[1];
            assert!(
                !change.sql.contains("PUBLIC_KEY"),
                "{version}: {}",
                change.sql
            );
        }
    }

    #[test]
    fn refuses_a_position_of_the_other_flavor() {
        let mariadb = Position::MariaDbGtid {
            gtid_pos: "0-1-1".into(),
        };
        assert!(setup_statements(&v("8.0.36"), &mariadb, &source(), &rsa_session()).is_err());
        let mysql = Position::MysqlGtid {
            gtid_set: "c777888a-b6df-11e2-a604-080027635ef5:1".into(),
        };
        assert!(
            setup_statements(&v("10.11.2-MariaDB"), &mysql, &source(), &rsa_session()).is_err()
        );
    }

    #[test]
    fn passwords_are_redacted_and_escaping_follows_sql_mode() {
        let nbe = Session {
            no_backslash_escapes: true,
            ..rsa_session()
        };
        let statements =
            setup_statements(&v("10.11.19-MariaDB"), &file_pos(), &source(), &nbe).unwrap();
        let change = &statements[1];
        assert!(
            change.sql.contains("MASTER_PASSWORD='s3cr''et\\'"),
            "{}",
            change.sql
        );
        assert!(!change.redacted.contains("s3cr"));
        assert!(change.to_string().contains("MASTER_PASSWORD=<redacted>"));
        let odd_file = Position::File {
            file: "it's\\odd.000001".into(),
            pos: 4,
        };
        let change =
            &setup_statements(&v("10.11.19-MariaDB"), &odd_file, &source(), &rsa_session())
                .unwrap()[1];
        assert!(
            change
                .sql
                .contains("MASTER_LOG_FILE='it\\'s\\\\odd.000001'"),
            "{}",
            change.sql
        );
    }

    #[test]
    fn reads_status_under_both_spellings() {
        let mariadb = ReplicaStatus::from_columns(|c| match c {
            "Master_Host" => Some("mysql-0.mysql".into()),
            "Slave_IO_Running" => Some("Yes".into()),
            "Slave_SQL_Running" => Some("Yes".into()),
            "Last_IO_Error" | "Last_SQL_Error" => Some(String::new()),
            "Seconds_Behind_Master" => Some("3".into()),
            _ => None,
        });
        assert!(mariadb.both_threads_running());
        assert_eq!(mariadb.seconds_behind, Some(3));
        let mysql84 = ReplicaStatus::from_columns(|c| match c {
            "Source_Host" => Some("mysql-0.mysql".into()),
            "Replica_IO_Running" => Some("Connecting".into()),
            "Replica_SQL_Running" => Some("Yes".into()),
            _ => None,
        });
        assert_eq!(mysql84.source_host, "mysql-0.mysql");
        assert!(!mysql84.both_threads_running());
        assert_eq!(mysql84.seconds_behind, None);
    }

    #[test]
    fn mariadb_replicas_use_gtids_wherever_the_data_says_where_they_are() {
        let file = Position::File {
            file: "mysqld-bin.000001".into(),
            pos: 329,
        };
        let from = |origin| Coordinates {
            origin,
            position: file.clone(),
        };
        let mariadb = v("10.11.19-MariaDB");
        let empty = Position::MariaDbGtid {
            gtid_pos: String::new(),
        };
        // A primary's backup without a GTID: before the first transaction.
        assert_eq!(
            preferred_position(&mariadb, &from(Origin::Primary), Some("0-1-5")),
            empty
        );
        let sql = sql("10.11.19-MariaDB", &empty);
        assert!(
            sql.iter().any(|s| s == "SET GLOBAL gtid_slave_pos = ''"),
            "{sql:?}"
        );
        // A replica's backup at a file position: the GTIDs its data says it applied.
        assert_eq!(
            preferred_position(&mariadb, &from(Origin::Replica), Some("0-100-42")),
            Position::MariaDbGtid {
                gtid_pos: "0-100-42".into()
            }
        );
        assert_eq!(
            preferred_position(&mariadb, &from(Origin::Replica), Some("")),
            empty
        );
        // Unknown, unreadable, or MySQL: the file position as it is.
        assert_eq!(
            preferred_position(&mariadb, &from(Origin::Replica), None),
            file
        );
        assert_eq!(
            preferred_position(&mariadb, &from(Origin::Replica), Some("junk")),
            file
        );
        assert_eq!(
            preferred_position(&v("8.0.36"), &from(Origin::Primary), None),
            file
        );
    }

    #[test]
    fn reads_the_applied_position_in_each_replication_mode() {
        let status = |pairs: &[(&str, &str)]| {
            let pairs: Vec<(String, String)> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            ReplicaStatus::from_columns(move |c| {
                pairs.iter().find(|(k, _)| k == c).map(|(_, v)| v.clone())
            })
        };
        let file = [
            ("Relay_Master_Log_File", "mysql-0-bin.000003"),
            ("Exec_Master_Log_Pos", "1234"),
        ];
        let mariadb_gtid = status(&[
            file[0],
            file[1],
            ("Using_Gtid", "Slave_Pos"),
            ("Gtid_Slave_Pos", "0-100-6,1-7-2"),
        ]);
        assert_eq!(
            mariadb_gtid.executed,
            Some(Position::MariaDbGtid {
                gtid_pos: "0-100-6,1-7-2".into()
            })
        );
        assert_eq!(mariadb_gtid.source_log_file, "mysql-0-bin.000003");
        let mariadb_file = status(&[
            file[0],
            file[1],
            ("Using_Gtid", "No"),
            ("Gtid_Slave_Pos", ""),
        ]);
        assert_eq!(
            mariadb_file.executed,
            Some(Position::File {
                file: "mysql-0-bin.000003".into(),
                pos: 1234
            })
        );
        let uuid = "3E11FA47-71CA-11E1-9E33-C80AA9429562";
        let mysql = status(&[
            ("Relay_Source_Log_File", "binlog.000002"),
            ("Exec_Source_Log_Pos", "99"),
            ("Auto_Position", "1"),
            ("Executed_Gtid_Set", &format!("{uuid}:1-5,\n{uuid}:7")),
        ]);
        assert_eq!(
            mysql.executed,
            Some(Position::MysqlGtid {
                gtid_set: format!("{uuid}:1-5,{uuid}:7")
            })
        );
        // Nothing applied yet, or a value that does not parse: unknown, never a guess.
        assert_eq!(
            status(&[("Using_Gtid", "Slave_Pos"), ("Gtid_Slave_Pos", "")]).executed,
            Some(Position::MariaDbGtid {
                gtid_pos: String::new()
            })
        );
        assert_eq!(status(&[("Using_Gtid", "Slave_Pos")]).executed, None);
        // By file, with applied GTIDs: those, comparable with the GTID replicas.
        assert_eq!(
            status(&[
                file[0],
                file[1],
                ("Using_Gtid", "No"),
                ("Gtid_Slave_Pos", "0-100-4")
            ])
            .executed,
            Some(Position::MariaDbGtid {
                gtid_pos: "0-100-4".into()
            })
        );
        assert_eq!(
            status(&[("Relay_Master_Log_File", ""), ("Exec_Master_Log_Pos", "4")]).executed,
            None
        );
        assert_eq!(
            status(&[("Auto_Position", "1"), ("Executed_Gtid_Set", "garbage")]).executed,
            None
        );
    }

    #[test]
    fn decisions() {
        let primary = "mysql-0.mysql";
        let status = |host: &str, io: &str, sql: &str, err: &str| ReplicaStatus {
            source_host: host.into(),
            io_running: io.into(),
            sql_running: sql.into(),
            last_sql_error: err.into(),
            ..Default::default()
        };
        assert_eq!(decide(None, false, true, primary), Action::Configure);
        assert_eq!(decide(None, false, false, primary), Action::NoCoordinates);
        assert_eq!(decide(None, true, true, primary), Action::Removed);
        // Killed between CHANGE MASTER and START SLAVE.
        let stopped = status(primary, "No", "No", "");
        assert_eq!(decide(Some(&stopped), false, true, primary), Action::Start);
        // Once recorded, a stopped replica was stopped on purpose.
        assert_eq!(
            decide(Some(&stopped), true, true, primary),
            Action::AlreadyConfigured
        );
        let broken = status(primary, "Yes", "No", "Duplicate entry");
        assert_eq!(
            decide(Some(&broken), false, true, primary),
            Action::AlreadyConfigured
        );
        let running = status("MYSQL-0.mysql", "Yes", "Yes", "");
        assert_eq!(
            decide(Some(&running), false, true, primary),
            Action::AlreadyConfigured
        );
        let elsewhere = status("other", "Yes", "Yes", "");
        assert_eq!(
            decide(Some(&elsewhere), true, true, primary),
            Action::Foreign {
                host: "other".into()
            }
        );
    }
}
