//! A FAKE MySQL server, speaking the real wire protocol (opensrv-mysql), for the MySQL
//! versions that cannot run on this project's machines. It announces a version, records every
//! statement it receives, keeps just enough replication state to answer SHOW SLAVE/REPLICA
//! STATUS, and rejects with ERROR 1064 what the real server of that version would not parse
//! (the REPLICA verbs before 8.0.22, SOURCE syntax before 8.0.23, RESET BINARY LOGS AND GTIDS
//! before 8.2, every MASTER/SLAVE form from 8.4 on).

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opensrv_mysql::{
    AsyncMysqlIntermediary, AsyncMysqlShim, Column, ColumnFlags, ColumnType, ErrorKind, OkResponse,
    ParamParser, QueryResultWriter, StatementMetaWriter,
};
use tokio::io::AsyncWrite;
use tokio::net::TcpListener;

#[derive(Debug, Default)]
struct Replication {
    source_host: Option<String>,
    running: bool,
}

/// How the fake misbehaves, for the tests of what a broken or hostile server may answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Quirk {
    #[default]
    None,
    /// Every column of every answer is NULL.
    Nulls,
    /// VERSION() and sql_mode answer; every other column is NULL.
    NullsButVersion,
    /// CHANGE statements fail with ERROR 1064, as a syntax error would.
    RejectChange,
}

#[derive(Debug)]
struct State {
    quirk: Quirk,
    version: String,
    triple: (u16, u16, u16),
    /// `mysql.user.plugin` of every account.
    plugin: String,
    statements: Vec<String>,
    rejected: Vec<String>,
    replication: Replication,
}

/// A running fake server; it lives as long as the test process.
#[derive(Clone)]
pub struct FakeMysql {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl FakeMysql {
    /// Starts a fake announcing `version`, whose accounts use `plugin`.
    pub async fn start(version: &str, plugin: &str) -> Self {
        Self::start_with(version, plugin, Quirk::None).await
    }

    /// Starts a fake that misbehaves as `quirk` says.
    pub async fn start_with(version: &str, plugin: &str, quirk: Quirk) -> Self {
        let numbers: Vec<u16> = version
            .split(['-', '.'])
            .take(3)
            .map(|n| n.parse().unwrap())
            .collect();
        let state = Arc::new(Mutex::new(State {
            quirk,
            version: version.to_owned(),
            triple: (numbers[0], numbers[1], numbers[2]),
            plugin: plugin.to_owned(),
            statements: Vec::new(),
            rejected: Vec::new(),
            replication: Replication::default(),
        }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                let (socket, _) = listener.accept().await.unwrap();
                let (r, w) = socket.into_split();
                let shim = Shim {
                    state: Arc::clone(&shared),
                };
                tokio::spawn(AsyncMysqlIntermediary::run_on(shim, r, w));
            }
        });
        Self { addr, state }
    }

    /// Every statement received, in order.
    pub fn statements(&self) -> Vec<String> {
        self.state.lock().unwrap().statements.clone()
    }

    /// The statements that change something (not SELECT or SHOW).
    pub fn changes(&self) -> Vec<String> {
        self.statements()
            .into_iter()
            .filter(|s| {
                let upper = s.to_uppercase();
                !upper.starts_with("SELECT") && !upper.starts_with("SHOW")
            })
            .collect()
    }

    /// Statements answered with ERROR 1064 because this version would not parse them.
    pub fn rejected(&self) -> Vec<String> {
        self.state.lock().unwrap().rejected.clone()
    }

    pub fn replication_running(&self) -> bool {
        self.state.lock().unwrap().replication.running
    }
}

/// Why the real server of `version` would not parse `sql`, if it would not.
fn syntax_error(version: (u16, u16, u16), sql: &str) -> Option<&'static str> {
    let upper = sql.to_uppercase();
    let any = |words: &[&str]| words.iter().any(|w| upper.contains(w));
    if version < (8, 0, 22)
        && any(&[
            "START REPLICA",
            "STOP REPLICA",
            "SHOW REPLICA",
            "RESET REPLICA",
        ])
    {
        return Some("REPLICA statements arrived in 8.0.22");
    }
    if version < (8, 0, 23) && any(&["CHANGE REPLICATION SOURCE", "SOURCE_"]) {
        return Some("CHANGE REPLICATION SOURCE arrived in 8.0.23");
    }
    if version < (8, 2, 0) && any(&["RESET BINARY LOGS AND GTIDS", "SHOW BINARY LOG STATUS"]) {
        return Some("RESET BINARY LOGS AND GTIDS arrived in 8.2.0");
    }
    if version < (8, 0, 4) && any(&["PUBLIC_KEY"]) {
        return Some("GET_MASTER_PUBLIC_KEY arrived in 8.0.4");
    }
    if version >= (8, 4, 0)
        && any(&[
            "CHANGE MASTER",
            "START SLAVE",
            "STOP SLAVE",
            "SHOW SLAVE",
            "RESET SLAVE",
            "RESET MASTER",
            "SHOW MASTER",
            "MASTER_",
        ])
    {
        return Some("MASTER and SLAVE statements were removed in 8.4");
    }
    None
}

/// The quoted value of `option='…'` in a CHANGE statement.
fn option_value(sql: &str, option: &str) -> Option<String> {
    let start = sql.find(&format!("{option}='"))? + option.len() + 2;
    let end = sql[start..].find('\'')? + start;
    Some(sql[start..end].to_owned())
}

fn text_column(name: &str) -> Column {
    Column {
        table: String::new(),
        column: name.to_owned(),
        coltype: ColumnType::MYSQL_TYPE_VAR_STRING,
        colflags: ColumnFlags::empty(),
    }
}

struct Shim {
    state: Arc<Mutex<State>>,
}

/// Column names and rows of a result set.
type ResultSet = (Vec<String>, Vec<Vec<Option<String>>>);

impl Shim {
    /// The answer to one query, as the quirk twists it.
    fn answer(&self, sql: &str) -> Result<Option<ResultSet>, &'static str> {
        let quirk = self.state.lock().unwrap().quirk;
        let upper = sql.to_uppercase();
        if quirk == Quirk::RejectChange && upper.starts_with("CHANGE") {
            let mut state = self.state.lock().unwrap();
            state.statements.push(sql.to_owned());
            state.rejected.push(sql.to_owned());
            return Err("the fake rejects every CHANGE statement");
        }
        let answer = self.honest_answer(sql)?;
        let nulls = match quirk {
            Quirk::Nulls => true,
            Quirk::NullsButVersion => !upper.starts_with("SELECT VERSION()"),
            _ => false,
        };
        Ok(match answer {
            Some((names, rows)) if nulls => {
                let width = names.len();
                Some((names, vec![vec![None; width]; rows.len()]))
            }
            other => other,
        })
    }

    /// The answer to one query: rows (column names, values) or OK.
    fn honest_answer(&self, sql: &str) -> Result<Option<ResultSet>, &'static str> {
        let mut state = self.state.lock().unwrap();
        state.statements.push(sql.to_owned());
        if let Some(why) = syntax_error(state.triple, sql) {
            state.rejected.push(sql.to_owned());
            return Err(why);
        }
        let upper = sql.to_uppercase();
        let row = |columns: &[&str], values: Vec<Option<String>>| {
            Ok(Some((
                columns.iter().map(|c| c.to_string()).collect(),
                vec![values],
            )))
        };
        if upper.starts_with("SELECT VERSION()") {
            return row(
                &["VERSION()", "@@SESSION.sql_mode"],
                vec![Some(state.version.clone()), Some(String::new())],
            );
        }
        if upper.starts_with("SELECT PLUGIN FROM MYSQL.USER") {
            return row(&["plugin"], vec![Some(state.plugin.clone())]);
        }
        if upper.starts_with("SELECT COUNT(*) FROM MYSQL.USER") {
            return row(&["COUNT(*)"], vec![Some("0".into())]);
        }
        if upper.starts_with("SELECT @@") {
            // The driver's own settings probe: answer each variable with a plausible value.
            let names: Vec<String> = sql[7..].split(',').map(|c| c.trim().to_owned()).collect();
            let values = names
                .iter()
                .map(|n| match n.as_str() {
                    "@@max_allowed_packet" => Some("67108864".into()),
                    "@@wait_timeout" => Some("28800".into()),
                    _ => None,
                })
                .collect();
            return Ok(Some((names, vec![values])));
        }
        if upper == "SHOW SLAVE STATUS" || upper == "SHOW REPLICA STATUS" {
            let new = upper.contains("REPLICA");
            let columns: Vec<String> = if new {
                [
                    "Source_Host",
                    "Replica_IO_Running",
                    "Replica_SQL_Running",
                    "Last_IO_Error",
                    "Last_SQL_Error",
                    "Seconds_Behind_Source",
                ]
            } else {
                [
                    "Master_Host",
                    "Slave_IO_Running",
                    "Slave_SQL_Running",
                    "Last_IO_Error",
                    "Last_SQL_Error",
                    "Seconds_Behind_Master",
                ]
            }
            .iter()
            .map(|c| c.to_string())
            .collect();
            let rows = match &state.replication.source_host {
                None => vec![],
                Some(host) => {
                    let yes = if state.replication.running {
                        "Yes"
                    } else {
                        "No"
                    };
                    vec![vec![
                        Some(host.clone()),
                        Some(yes.into()),
                        Some(yes.into()),
                        Some(String::new()),
                        Some(String::new()),
                        state.replication.running.then(|| "0".to_owned()),
                    ]]
                }
            };
            return Ok(Some((columns, rows)));
        }
        if upper.starts_with("CHANGE MASTER") || upper.starts_with("CHANGE REPLICATION SOURCE") {
            state.replication.source_host =
                option_value(sql, "MASTER_HOST").or_else(|| option_value(sql, "SOURCE_HOST"));
            state.replication.running = false;
        } else if upper.starts_with("START") {
            state.replication.running = state.replication.source_host.is_some();
        } else if upper.starts_with("STOP") {
            state.replication.running = false;
        }
        Ok(None)
    }
}

#[async_trait::async_trait]
impl<W: AsyncWrite + Send + Unpin> AsyncMysqlShim<W> for Shim {
    type Error = io::Error;

    fn version(&self) -> String {
        self.state.lock().unwrap().version.clone()
    }

    async fn on_prepare<'a>(
        &'a mut self,
        _: &'a str,
        info: StatementMetaWriter<'a, W>,
    ) -> io::Result<()> {
        info.error(
            ErrorKind::ER_UNKNOWN_ERROR,
            b"the fake server takes no prepared statements",
        )
        .await
    }

    async fn on_execute<'a>(
        &'a mut self,
        _: u32,
        _: ParamParser<'a>,
        results: QueryResultWriter<'a, W>,
    ) -> io::Result<()> {
        results
            .error(ErrorKind::ER_UNKNOWN_ERROR, b"no prepared statements")
            .await
    }

    async fn on_close(&mut self, _: u32) {}

    async fn on_query<'a>(
        &'a mut self,
        sql: &'a str,
        results: QueryResultWriter<'a, W>,
    ) -> io::Result<()> {
        let sql = sql.trim().trim_end_matches(';').trim();
        match self.answer(sql) {
            Err(why) => {
                let msg = format!("You have an error in your SQL syntax ({why}) near '{sql}'");
                results
                    .error(ErrorKind::ER_PARSE_ERROR, msg.as_bytes())
                    .await
            }
            Ok(None) => results.completed(OkResponse::default()).await,
            Ok(Some((names, rows))) => {
                let columns: Vec<Column> = names.iter().map(|n| text_column(n)).collect();
                let mut writer = results.start(&columns).await?;
                for row in rows {
                    for value in row {
                        writer.write_col(value)?;
                    }
                    writer.end_row().await?;
                }
                writer.finish().await
            }
        }
    }
}
