//! The least-privilege accounts the primary creates when asked (`--create-accounts`): one
//! for replication, one for the backup tool.
//!
//! An account is created only when missing, so its CREATE USER and GRANT reach the binary log
//! (and the replicas) once; an existing account is left as it is, password included.

use anyhow::{Context, Result};
use mysql_async::Value;
use mysql_async::prelude::Queryable;
use tracing::info;

use crate::mysql;
use crate::retry::Failure;
use crate::secrets::Password;
use crate::server_version::{ServerFlavor, ServerVersion};

/// Where the accounts may connect from: replicas and the sidecar reach mysqld over the pod
/// network or loopback, under addresses that change with every pod.
pub const ACCOUNT_HOST: &str = "%";

/// A MySQL account the agent uses or creates.
#[derive(Debug, Clone)]
pub struct Account {
    pub user: String,
    pub password: Password,
}

/// What an account is for, and so the privileges it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Replication,
    Backup,
}

/// The GRANT statements' privilege lists for `role` on `server`, as the backup tools document
/// them (mariadb-backup; Percona XtraBackup 2.4 and 8.x), `--slave-info` included.
pub fn privileges(role: Role, server: &ServerVersion) -> Vec<String> {
    let at_least =
        |major, minor, patch| (server.major, server.minor, server.patch) >= (major, minor, patch);
    match (role, server.flavor) {
        (Role::Replication, _) => vec!["REPLICATION SLAVE ON *.*".into()],
        (Role::Backup, ServerFlavor::MariaDb) if at_least(10, 5, 9) => {
            vec!["RELOAD, PROCESS, LOCK TABLES, BINLOG MONITOR, SLAVE MONITOR ON *.*".into()]
        }
        (Role::Backup, ServerFlavor::MariaDb) => {
            vec!["RELOAD, PROCESS, LOCK TABLES, REPLICATION CLIENT ON *.*".into()]
        }
        (Role::Backup, ServerFlavor::MySql) if at_least(8, 0, 0) => {
            let mut grants = vec![
                "BACKUP_ADMIN, PROCESS, RELOAD, LOCK TABLES, REPLICATION CLIENT ON *.*".into(),
                "SELECT ON performance_schema.log_status".into(),
            ];
            if at_least(8, 0, 24) {
                grants.push("SELECT ON performance_schema.keyring_component_status".into());
            }
            grants
        }
        (Role::Backup, ServerFlavor::MySql) => {
            vec!["RELOAD, LOCK TABLES, PROCESS, REPLICATION CLIENT ON *.*".into()]
        }
    }
}

/// A statement with the text that may be logged (password masked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub sql: String,
    pub shown: String,
}

/// CREATE USER then the grants, for an account known to be missing.
pub fn create_statements(
    account: &Account,
    role: Role,
    server: &ServerVersion,
    no_backslash_escapes: bool,
) -> Vec<Statement> {
    let lit = |s: &str| Value::from(s).as_sql(no_backslash_escapes);
    let who = format!("{}@{}", lit(&account.user), lit(ACCOUNT_HOST));
    let create = format!("CREATE USER {who} IDENTIFIED BY ");
    let mut statements = vec![Statement {
        sql: format!("{create}{}", lit(account.password.expose())),
        shown: format!("{create}<redacted>"),
    }];
    for privileges in privileges(role, server) {
        let grant = format!("GRANT {privileges} TO {who}");
        statements.push(Statement {
            sql: grant.clone(),
            shown: grant,
        });
    }
    statements
}

/// Creates `account` for `role` unless an account of that name already exists. A failure
/// is permanent when retrying cannot fix it (a refused privilege, a nonsensical answer).
pub async fn ensure(
    conn: &mut mysql_async::Conn,
    server: &ServerVersion,
    no_backslash_escapes: bool,
    account: &Account,
    role: Role,
) -> Result<(), Failure> {
    let lit = |s: &str| Value::from(s).as_sql(no_backslash_escapes);
    let query = format!(
        "SELECT COUNT(*) FROM mysql.user WHERE User = {} AND Host = {}",
        lit(&account.user),
        lit(ACCOUNT_HOST)
    );
    let looking_up = || format!("looking up the {role:?} account {:?}", account.user);
    let row: Option<mysql_async::Row> = conn.query_first(&query).await.with_context(looking_up)?;
    let count = match row {
        Some(row) => mysql::text_at(&row, 0)
            .and_then(|n| {
                n.parse::<u64>()
                    .with_context(|| format!("a count of {n:?}"))
            })
            .with_context(|| format!("{}: {query}", looking_up()))?,
        None => 0,
    };
    if count > 0 {
        info!(user = %account.user, ?role, "account exists; left as it is");
        return Ok(());
    }
    for statement in create_statements(account, role, server, no_backslash_escapes) {
        info!(statement = %statement.shown, "creating an account");
        conn.query_drop(&statement.sql)
            .await
            .map_err(|e| mysql::classify(e, &format!("running {}", statement.shown)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> ServerVersion {
        ServerVersion::parse(s).unwrap()
    }

    #[test]
    fn backup_privileges_follow_the_tools_documentation() {
        assert_eq!(
            privileges(Role::Backup, &v("10.11.19-MariaDB")),
            ["RELOAD, PROCESS, LOCK TABLES, BINLOG MONITOR, SLAVE MONITOR ON *.*"]
        );
        assert_eq!(
            privileges(Role::Backup, &v("10.4.32-MariaDB")),
            ["RELOAD, PROCESS, LOCK TABLES, REPLICATION CLIENT ON *.*"]
        );
        assert_eq!(
            privileges(Role::Backup, &v("5.7.44")),
            ["RELOAD, LOCK TABLES, PROCESS, REPLICATION CLIENT ON *.*"]
        );
        let mysql84 = privileges(Role::Backup, &v("8.4.3"));
        assert_eq!(mysql84.len(), 3);
        assert!(mysql84[0].starts_with("BACKUP_ADMIN"));
        assert_eq!(privileges(Role::Backup, &v("8.0.20")).len(), 2);
        assert_eq!(
            privileges(Role::Replication, &v("8.4.3")),
            ["REPLICATION SLAVE ON *.*"]
        );
    }

    #[test]
    fn creation_masks_the_password() {
        let account = Account {
            user: "repl".into(),
            password: Password::new("pa'ss"),
        };
        let statements =
            create_statements(&account, Role::Replication, &v("10.11.19-MariaDB"), false);
        assert_eq!(statements.len(), 2);
        assert_eq!(
            statements[0].sql,
            "CREATE USER 'repl'@'%' IDENTIFIED BY 'pa\\'ss'"
        );
        assert_eq!(
            statements[0].shown,
            "CREATE USER 'repl'@'%' IDENTIFIED BY <redacted>"
        );
        assert_eq!(
            statements[1].sql,
            "GRANT REPLICATION SLAVE ON *.* TO 'repl'@'%'"
        );
    }
}
