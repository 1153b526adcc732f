//! MySQL 5.7, 8.0 and 8.4 cannot run on this project's machines, so the real agent binary is
//! pointed at a FAKE MySQL server (tests/common/fake_mysql.rs) that speaks the real protocol,
//! announces each version, records what it receives and rejects what that version would not
//! parse. Percona XtraBackup is not packaged for Debian 12 either: a FAKE `xtrabackup`
//! script answers `--version` only, which is all replication setup asks of it.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::fake_mysql::{FakeMysql, Quirk};
use common::{AGENT, sigterm};
use tokio::process::Command;

const GTID_SET: &str = "c777888a-b6df-11e2-a604-080027635ef5:1-4";
const NATIVE: &str = "mysql_native_password";
const SHA2: &str = "caching_sha2_password";

fn binlog_file() -> (&'static str, String) {
    ("xtrabackup_binlog_info", "mysql-bin.000002\t1232\n".into())
}
fn binlog_gtid() -> (&'static str, String) {
    (
        "xtrabackup_binlog_info",
        format!("mysql-bin.000002\t1232\t{GTID_SET}\n"),
    )
}
fn slave_file() -> (&'static str, String) {
    (
        "xtrabackup_slave_info",
        "CHANGE MASTER TO MASTER_LOG_FILE='mysql-bin.000001', MASTER_LOG_POS=2024;\n".into(),
    )
}
fn slave_gtid() -> (&'static str, String) {
    (
        "xtrabackup_slave_info",
        format!("SET GLOBAL gtid_purged='{GTID_SET}';\nCHANGE MASTER TO MASTER_AUTO_POSITION=1;\n"),
    )
}

/// A FAKE xtrabackup: `--version` only.
fn fake_xtrabackup(dir: &Path, version: &str, server: &str) -> PathBuf {
    let path = dir.join("xtrabackup");
    fs::write(
        &path,
        format!("#!/bin/sh\necho 'xtrabackup version {version} based on MySQL server {server} Linux (x86_64) (revision id: fake)' >&2\n"),
    )
    .unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

struct Sidecar {
    status: ExitStatus,
    log: String,
}

/// Runs a replica's serve-backup against `fake` until replication is configured (or the
/// agent exits), then SIGTERMs it.
async fn run_sidecar(fake: &FakeMysql, data: &Path, tool: &Path) -> Sidecar {
    run_sidecar_with(fake, data, tool, &[]).await
}

async fn run_sidecar_with(fake: &FakeMysql, data: &Path, tool: &Path, extra: &[&str]) -> Sidecar {
    run_sidecar_until_with(
        fake,
        data,
        tool,
        &["replication is configured", "replication is not configured"],
        extra,
    )
    .await
}

/// Runs a replica's serve-backup against `fake` until its log holds one of `needles` (or the
/// agent exits), then SIGTERMs it.
async fn run_sidecar_until(
    fake: &FakeMysql,
    data: &Path,
    tool: &Path,
    needles: &[&str],
) -> Sidecar {
    run_sidecar_until_with(fake, data, tool, needles, &[]).await
}

async fn run_sidecar_until_with(
    fake: &FakeMysql,
    data: &Path,
    tool: &Path,
    needles: &[&str],
    extra: &[&str],
) -> Sidecar {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, Ordering::Relaxed);
    let log_path = data.parent().unwrap().join(format!("sidecar-{run}.log"));
    let log = fs::File::create(&log_path).unwrap();
    let mut child = Command::new(AGENT)
        .args([
            "serve-backup",
            "--pod-name",
            "mysql-1",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data)
        .args([
            "--mysql-host",
            "127.0.0.1",
            "--mysql-port",
            &fake.addr.port().to_string(),
        ])
        .arg("--backup-tool")
        .arg(tool)
        .args(extra)
        .stdin(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        let text = fs::read_to_string(&log_path).unwrap_or_default();
        if needles.iter().any(|n| text.contains(n)) {
            sigterm(child.id().unwrap());
            break tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .unwrap()
                .unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "the sidecar did nothing in 30s:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    Sidecar {
        status,
        log: fs::read_to_string(&log_path).unwrap(),
    }
}

/// One replica set up from `files` against a fake `server`, with a fake tool of `tool`.
async fn configure(
    server: &str,
    tool: &str,
    plugin: &str,
    files: &[(&str, String)],
) -> (FakeMysql, Sidecar) {
    configure_with(server, tool, plugin, files, &[]).await
}

async fn configure_with(
    server: &str,
    tool: &str,
    plugin: &str,
    files: &[(&str, String)],
    extra: &[&str],
) -> (FakeMysql, Sidecar) {
    let fake = FakeMysql::start(server, plugin).await;
    let dir = tempfile::tempdir().unwrap().keep();
    let data = dir.join("data");
    fs::create_dir(&data).unwrap();
    for (name, text) in files {
        fs::write(data.join(name), text).unwrap();
    }
    let sidecar = run_sidecar_with(&fake, &data, &fake_xtrabackup(&dir, tool, server), extra).await;
    assert!(
        sidecar.status.success(),
        "exit {}: {}",
        sidecar.status,
        sidecar.log
    );
    assert!(
        sidecar.log.contains("replication is configured"),
        "{}",
        sidecar.log
    );
    assert!(
        fake.rejected().is_empty(),
        "{server} would reject {:?}",
        fake.rejected()
    );
    assert!(
        fake.replication_running(),
        "{server}: replication not started"
    );
    (fake, sidecar)
}

/// Server version, account plugin, the clone's coordinates file, the exact changes expected.
type Case = (
    &'static str,
    &'static str,
    (&'static str, String),
    Vec<String>,
);

const TOOLS: [(&str, &str); 4] = [
    ("5.7.44-log", "2.4.29"),
    ("8.0.21", "8.0.35-30"),
    ("8.0.36", "8.0.36-28"),
    ("8.4.3", "8.4.0-1"),
];

#[tokio::test(flavor = "multi_thread")]
async fn exact_statements_per_version_and_clone_kind() {
    let host = "HOST='mysql-0.mysql', ";
    let m = |tail: &str| {
        format!(
            "CHANGE MASTER TO MASTER_{host}MASTER_PORT=3306, MASTER_USER='root', MASTER_PASSWORD='', MASTER_CONNECT_RETRY=10, {tail}"
        )
    };
    let s = |tail: &str| {
        format!(
            "CHANGE REPLICATION SOURCE TO SOURCE_{host}SOURCE_PORT=3306, SOURCE_USER='root', SOURCE_PASSWORD='', SOURCE_CONNECT_RETRY=10, {tail}"
        )
    };
    let purged = format!("SET GLOBAL gtid_purged = '{GTID_SET}'");
    let expected: Vec<Case> = vec![
        // MySQL 5.7: the tutorial's server. SLAVE verbs, MASTER options, no RSA key option.
        (
            "5.7.44-log",
            NATIVE,
            binlog_file(),
            vec![
                "STOP SLAVE".into(),
                m("MASTER_LOG_FILE='mysql-bin.000002', MASTER_LOG_POS=1232"),
                "START SLAVE".into(),
            ],
        ),
        (
            "5.7.44-log",
            NATIVE,
            binlog_gtid(),
            vec![
                "STOP SLAVE".into(),
                "RESET MASTER".into(),
                purged.clone(),
                m("MASTER_AUTO_POSITION=1"),
                "START SLAVE".into(),
            ],
        ),
        (
            "5.7.44-log",
            NATIVE,
            slave_file(),
            vec![
                "STOP SLAVE".into(),
                m("MASTER_LOG_FILE='mysql-bin.000001', MASTER_LOG_POS=2024"),
                "START SLAVE".into(),
            ],
        ),
        (
            "5.7.44-log",
            NATIVE,
            slave_gtid(),
            vec![
                "STOP SLAVE".into(),
                "RESET MASTER".into(),
                purged.clone(),
                m("MASTER_AUTO_POSITION=1"),
                "START SLAVE".into(),
            ],
        ),
        // MySQL 8.0.21: still SLAVE and MASTER, plus the RSA key for caching_sha2_password.
        (
            "8.0.21",
            SHA2,
            binlog_file(),
            vec![
                "STOP SLAVE".into(),
                m(
                    "MASTER_LOG_FILE='mysql-bin.000002', MASTER_LOG_POS=1232, GET_MASTER_PUBLIC_KEY=1",
                ),
                "START SLAVE".into(),
            ],
        ),
        (
            "8.0.21",
            SHA2,
            binlog_gtid(),
            vec![
                "STOP SLAVE".into(),
                "RESET MASTER".into(),
                purged.clone(),
                m("MASTER_AUTO_POSITION=1, GET_MASTER_PUBLIC_KEY=1"),
                "START SLAVE".into(),
            ],
        ),
        (
            "8.0.21",
            SHA2,
            slave_file(),
            vec![
                "STOP SLAVE".into(),
                m(
                    "MASTER_LOG_FILE='mysql-bin.000001', MASTER_LOG_POS=2024, GET_MASTER_PUBLIC_KEY=1",
                ),
                "START SLAVE".into(),
            ],
        ),
        (
            "8.0.21",
            SHA2,
            slave_gtid(),
            vec![
                "STOP SLAVE".into(),
                "RESET MASTER".into(),
                purged.clone(),
                m("MASTER_AUTO_POSITION=1, GET_MASTER_PUBLIC_KEY=1"),
                "START SLAVE".into(),
            ],
        ),
        // MySQL 8.0.36: REPLICA verbs and SOURCE options; RESET MASTER still exists.
        (
            "8.0.36",
            SHA2,
            binlog_file(),
            vec![
                "STOP REPLICA".into(),
                s(
                    "SOURCE_LOG_FILE='mysql-bin.000002', SOURCE_LOG_POS=1232, GET_SOURCE_PUBLIC_KEY=1",
                ),
                "START REPLICA".into(),
            ],
        ),
        (
            "8.0.36",
            SHA2,
            binlog_gtid(),
            vec![
                "STOP REPLICA".into(),
                "RESET MASTER".into(),
                purged.clone(),
                s("SOURCE_AUTO_POSITION=1, GET_SOURCE_PUBLIC_KEY=1"),
                "START REPLICA".into(),
            ],
        ),
        (
            "8.0.36",
            SHA2,
            slave_file(),
            vec![
                "STOP REPLICA".into(),
                s(
                    "SOURCE_LOG_FILE='mysql-bin.000001', SOURCE_LOG_POS=2024, GET_SOURCE_PUBLIC_KEY=1",
                ),
                "START REPLICA".into(),
            ],
        ),
        (
            "8.0.36",
            SHA2,
            slave_gtid(),
            vec![
                "STOP REPLICA".into(),
                "RESET MASTER".into(),
                purged.clone(),
                s("SOURCE_AUTO_POSITION=1, GET_SOURCE_PUBLIC_KEY=1"),
                "START REPLICA".into(),
            ],
        ),
        // MySQL 8.4: nothing named MASTER or SLAVE exists any more.
        (
            "8.4.3",
            SHA2,
            binlog_file(),
            vec![
                "STOP REPLICA".into(),
                s(
                    "SOURCE_LOG_FILE='mysql-bin.000002', SOURCE_LOG_POS=1232, GET_SOURCE_PUBLIC_KEY=1",
                ),
                "START REPLICA".into(),
            ],
        ),
        (
            "8.4.3",
            SHA2,
            binlog_gtid(),
            vec![
                "STOP REPLICA".into(),
                "RESET BINARY LOGS AND GTIDS".into(),
                purged.clone(),
                s("SOURCE_AUTO_POSITION=1, GET_SOURCE_PUBLIC_KEY=1"),
                "START REPLICA".into(),
            ],
        ),
        (
            "8.4.3",
            SHA2,
            slave_file(),
            vec![
                "STOP REPLICA".into(),
                s(
                    "SOURCE_LOG_FILE='mysql-bin.000001', SOURCE_LOG_POS=2024, GET_SOURCE_PUBLIC_KEY=1",
                ),
                "START REPLICA".into(),
            ],
        ),
        (
            "8.4.3",
            SHA2,
            slave_gtid(),
            vec![
                "STOP REPLICA".into(),
                "RESET BINARY LOGS AND GTIDS".into(),
                purged.clone(),
                s("SOURCE_AUTO_POSITION=1, GET_SOURCE_PUBLIC_KEY=1"),
                "START REPLICA".into(),
            ],
        ),
    ];
    for (server, plugin, file, changes) in expected {
        let tool = TOOLS.iter().find(|(s, _)| *s == server).unwrap().1;
        let (fake, _) = configure(server, tool, plugin, std::slice::from_ref(&file)).await;
        assert_eq!(fake.changes(), changes, "{server} from {}", file.0);
        let status = if server.starts_with("8.0.36") || server.starts_with("8.4") {
            "SHOW REPLICA STATUS"
        } else {
            "SHOW SLAVE STATUS"
        };
        assert!(
            fake.statements().iter().any(|s| s == status),
            "{server}: {:?}",
            fake.statements()
        );
        if server.starts_with("8.4") {
            for statement in fake.statements() {
                let upper = statement.to_uppercase();
                assert!(
                    !upper.contains("MASTER") && !upper.contains("SLAVE"),
                    "8.4 was sent {statement}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn accounts_without_caching_sha2_get_no_rsa_key_option() {
    let (fake, _) = configure("8.0.36", "8.0.36-28", NATIVE, &[binlog_file()]).await;
    let change = fake
        .changes()
        .into_iter()
        .find(|s| s.starts_with("CHANGE"))
        .unwrap();
    assert!(!change.contains("PUBLIC_KEY"), "{change}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_reads_the_new_status_columns_and_changes_nothing() {
    // 8.4 answers SHOW REPLICA STATUS with Source_Host and Replica_*_Running only.
    let fake = FakeMysql::start("8.4.3", SHA2).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    fs::create_dir(&data).unwrap();
    let (name, text) = binlog_gtid();
    fs::write(data.join(name), text).unwrap();
    let tool = fake_xtrabackup(dir.path(), "8.4.0-1", "8.4.3");
    run_sidecar(&fake, &data, &tool).await;
    let before = fake.changes().len();
    let second = run_sidecar(&fake, &data, &tool).await;
    assert!(second.status.success());
    assert!(
        second
            .log
            .contains("action=AlreadyConfigured recorded=true"),
        "{}",
        second.log
    );
    assert_eq!(fake.changes().len(), before, "{:?}", fake.changes());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_tool_that_cannot_handle_the_server_is_refused_at_start_up() {
    for (server, tool, wanted) in [
        (
            "8.0.36",
            Some("8.0.35-30"),
            "Percona XtraBackup 8.0.36 or a later 8.0",
        ),
        ("8.4.3", Some("8.0.36-28"), "Percona XtraBackup 8.4"),
        ("5.7.44", Some("8.0.36-28"), "Percona XtraBackup 2.4"),
        // The real mariadb-backup against a MySQL server.
        ("8.4.3", None, "Percona XtraBackup for that MySQL version"),
    ] {
        let fake = FakeMysql::start(server, SHA2).await;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        fs::create_dir(&data).unwrap();
        let tool_path = match tool {
            Some(version) => fake_xtrabackup(dir.path(), version, server),
            None => PathBuf::from("mariadb-backup"),
        };
        let sidecar = run_sidecar(&fake, &data, &tool_path).await;
        assert_eq!(sidecar.status.code(), Some(1), "{server}: {}", sidecar.log);
        let tool_version = tool.unwrap_or("10.11");
        assert!(
            sidecar.log.contains(tool_version)
                && sidecar.log.contains(&format!("MySQL {}", &server[..5])),
            "{}",
            sidecar.log
        );
        assert!(sidecar.log.contains(wanted), "{}", sidecar.log);
        assert!(
            fake.changes().is_empty(),
            "{server}: configured anyway: {:?}",
            fake.changes()
        );
    }
}

/// A server that answers NULL where text is expected: a clear error in the log, never a
/// panic (the driver's row conversion would abort the sidecar), and SIGTERM still exits 0.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_answering_null_is_reported_not_panicked_on() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    fs::create_dir(&data).unwrap();
    let (name, text) = binlog_file();
    fs::write(data.join(name), text).unwrap();
    let tool = fake_xtrabackup(dir.path(), "8.0.36-28", "8.0.36");

    let fake = FakeMysql::start_with("8.0.36", SHA2, Quirk::Nulls).await;
    let sidecar =
        run_sidecar_until(&fake, &data, &tool, &["cannot identify the local mysqld"]).await;
    assert!(
        sidecar.status.success(),
        "exit {}: {}",
        sidecar.status,
        sidecar.log
    );
    assert!(
        sidecar
            .log
            .contains("running SELECT VERSION(), @@SESSION.sql_mode")
            && sidecar.log.contains("answered NULL for VERSION()"),
        "{}",
        sidecar.log
    );
    assert!(!sidecar.log.contains("panicked"), "{}", sidecar.log);

    // The version answers, every other column is NULL (the account's plugin, the status
    // row once replication runs): replication is still set up, assuming the default plugin.
    let fake = FakeMysql::start_with("8.0.36", SHA2, Quirk::NullsButVersion).await;
    let data = dir.path().join("data2");
    fs::create_dir(&data).unwrap();
    let (name, text) = binlog_file();
    fs::write(data.join(name), text).unwrap();
    let sidecar = run_sidecar_until(
        &fake,
        &data,
        &tool,
        &["replication is configured", "replication is not configured"],
    )
    .await;
    assert!(
        sidecar.status.success(),
        "exit {}: {}",
        sidecar.status,
        sidecar.log
    );
    assert!(!sidecar.log.contains("panicked"), "{}", sidecar.log);
    let change = fake
        .changes()
        .into_iter()
        .find(|s| s.starts_with("CHANGE"))
        .unwrap();
    assert!(change.contains("GET_SOURCE_PUBLIC_KEY=1"), "{change}");
}

/// A statement the server will never accept (a syntax error) is not retried forever: one
/// attempt, a clear message, and the pod stays up refusing backups.
#[tokio::test(flavor = "multi_thread")]
async fn a_statement_the_server_will_never_parse_is_tried_once() {
    let fake = FakeMysql::start_with("8.0.36", SHA2, Quirk::RejectChange).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    fs::create_dir(&data).unwrap();
    let (name, text) = binlog_gtid();
    fs::write(data.join(name), text).unwrap();
    let tool = fake_xtrabackup(dir.path(), "8.0.36-28", "8.0.36");
    let sidecar = run_sidecar(&fake, &data, &tool).await;
    assert!(
        sidecar.status.success(),
        "exit {}: {}",
        sidecar.status,
        sidecar.log
    );
    assert!(
        sidecar.log.contains("retrying cannot fix it") && sidecar.log.contains("1064"),
        "{}",
        sidecar.log
    );
    assert_eq!(fake.rejected().len(), 1, "{:?}", fake.rejected());
}

/// With --tls-dir, replication is set up over TLS with the primary's certificate verified,
/// in each MySQL version's words, and no RSA key is asked for (TLS carries the password).
#[tokio::test]
async fn tls_replication_statements_for_every_mysql_version() {
    let certs = tempfile::tempdir().unwrap();
    mysql_agent_harness::make_certs(
        &certs.path().join("ca"),
        &certs.path().join("tls"),
        30,
        &["mysql-0.mysql".into()],
    )
    .unwrap();
    let dir = certs.path().join("tls").display().to_string();
    let tls = |prefix: &str| {
        format!(
            "{prefix}_SSL=1, {prefix}_SSL_CA='{dir}/ca.crt', {prefix}_SSL_CERT='{dir}/tls.crt', {prefix}_SSL_KEY='{dir}/tls.key', {prefix}_SSL_VERIFY_SERVER_CERT=1"
        )
    };
    for (server, plugin, prefix) in [
        ("5.7.44-log", NATIVE, "MASTER"),
        ("8.0.36", SHA2, "SOURCE"),
        ("8.4.3", SHA2, "SOURCE"),
    ] {
        let tool = TOOLS.iter().find(|(s, _)| *s == server).unwrap().1;
        let (fake, _) =
            configure_with(server, tool, plugin, &[binlog_file()], &["--tls-dir", &dir]).await;
        let change = fake
            .changes()
            .into_iter()
            .find(|c| c.starts_with("CHANGE"))
            .unwrap();
        assert!(change.ends_with(&tls(prefix)), "{server}: {change}");
        assert!(!change.contains("PUBLIC_KEY"), "{server}: {change}");
    }
}
