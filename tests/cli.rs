//! The command-line contract, run as the real binary: help texts, exit codes and messages
//! for bad input, and nothing written when the input is bad.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::AGENT;

fn agent(args: &[&str]) -> Output {
    Command::new(AGENT)
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn help_documents_every_flag_and_its_environment_variable() {
    let top = String::from_utf8(agent(&["--help"]).stdout).unwrap();
    for mode in [
        "init-config",
        "clone",
        "serve-backup",
        "backup",
        "list-backups",
    ] {
        assert!(top.contains(mode), "{top}");
    }
    let contract: &[(&str, &[(&str, &str)])] = &[
        (
            "init-config",
            &[
                ("--pod-name", "POD_NAME"),
                ("--service", "MYSQL_AGENT_SERVICE"),
                ("--config-map-dir", "MYSQL_AGENT_CONFIG_MAP_DIR"),
                ("--conf-dir", "MYSQL_AGENT_CONF_DIR"),
                ("--server-id-offset", "MYSQL_AGENT_SERVER_ID_OFFSET"),
            ],
        ),
        (
            "clone",
            &[
                ("--pod-name", "POD_NAME"),
                ("--service", "MYSQL_AGENT_SERVICE"),
                ("--data-dir", "MYSQL_AGENT_DATA_DIR"),
                ("--donor", "MYSQL_AGENT_DONORS"),
                ("--backup-tool", "MYSQL_AGENT_BACKUP_TOOL"),
                ("--max-attempts", "MYSQL_AGENT_MAX_ATTEMPTS"),
                ("--donor-wait", "MYSQL_AGENT_DONOR_WAIT"),
                ("--stall-timeout", "MYSQL_AGENT_STALL_TIMEOUT"),
                ("--require-end-marker", "MYSQL_AGENT_REQUIRE_END_MARKER"),
                ("--backup-secret-file", "MYSQL_AGENT_BACKUP_SECRET_FILE"),
                ("--progress-interval", "MYSQL_AGENT_PROGRESS_INTERVAL"),
                ("--log-format", "MYSQL_AGENT_LOG_FORMAT"),
                ("--termination-log", "MYSQL_AGENT_TERMINATION_LOG"),
                ("--restore-from", "MYSQL_AGENT_RESTORE_FROM"),
                ("--backup", "MYSQL_AGENT_RESTORE_BACKUP"),
                ("--age-identity-file", "MYSQL_AGENT_AGE_IDENTITY_FILE"),
            ],
        ),
        (
            "backup",
            &[
                ("--to", "MYSQL_AGENT_BACKUP_TO"),
                ("--donor", "MYSQL_AGENT_DONORS"),
                ("--statefulset", "MYSQL_AGENT_STATEFULSET"),
                ("--service", "MYSQL_AGENT_SERVICE"),
                ("--replicas", "MYSQL_AGENT_REPLICAS"),
                ("--backup-tool", "MYSQL_AGENT_BACKUP_TOOL"),
                ("--max-attempts", "MYSQL_AGENT_MAX_ATTEMPTS"),
                ("--donor-wait", "MYSQL_AGENT_DONOR_WAIT"),
                ("--stall-timeout", "MYSQL_AGENT_STALL_TIMEOUT"),
                ("--backup-secret-file", "MYSQL_AGENT_BACKUP_SECRET_FILE"),
                ("--compression-level", "MYSQL_AGENT_COMPRESSION_LEVEL"),
                ("--age-recipient-file", "MYSQL_AGENT_AGE_RECIPIENT_FILE"),
                ("--keep", "MYSQL_AGENT_KEEP"),
                ("--progress-interval", "MYSQL_AGENT_PROGRESS_INTERVAL"),
            ],
        ),
        ("list-backups", &[("--json", "MYSQL_AGENT_LIST_JSON")]),
        (
            "serve-backup",
            &[
                ("--pod-name", "POD_NAME"),
                ("--service", "MYSQL_AGENT_SERVICE"),
                ("--data-dir", "MYSQL_AGENT_DATA_DIR"),
                ("--listen", "MYSQL_AGENT_LISTEN"),
                ("--mysql-host", "MYSQL_AGENT_MYSQL_HOST"),
                ("--mysql-port", "MYSQL_AGENT_MYSQL_PORT"),
                ("--mysql-user", "MYSQL_AGENT_MYSQL_USER"),
                ("--primary-host", "MYSQL_AGENT_PRIMARY_HOST"),
                ("--primary-port", "MYSQL_AGENT_PRIMARY_PORT"),
                ("--backup-tool", "MYSQL_AGENT_BACKUP_TOOL"),
                ("--max-backups", "MYSQL_AGENT_MAX_BACKUPS"),
                ("--mysql-password-file", "MYSQL_AGENT_MYSQL_PASSWORD_FILE"),
                ("--replication-user", "MYSQL_AGENT_REPLICATION_USER"),
                (
                    "--replication-password-file",
                    "MYSQL_AGENT_REPLICATION_PASSWORD_FILE",
                ),
                ("--backup-user", "MYSQL_AGENT_BACKUP_USER"),
                ("--backup-password-file", "MYSQL_AGENT_BACKUP_PASSWORD_FILE"),
                ("--create-accounts", "MYSQL_AGENT_CREATE_ACCOUNTS"),
                ("--backup-secret-file", "MYSQL_AGENT_BACKUP_SECRET_FILE"),
                ("--http-listen", "MYSQL_AGENT_HTTP_LISTEN"),
                ("--max-replication-lag", "MYSQL_AGENT_MAX_REPLICATION_LAG"),
                ("--progress-interval", "MYSQL_AGENT_PROGRESS_INTERVAL"),
                ("--stall-timeout", "MYSQL_AGENT_STALL_TIMEOUT"),
            ],
        ),
    ];
    for (mode, flags) in contract {
        let out = agent(&[mode, "--help"]);
        assert!(out.status.success());
        let help = String::from_utf8(out.stdout).unwrap();
        for (flag, env) in *flags {
            assert!(help.contains(flag), "{mode} --help lacks {flag}:\n{help}");
            assert!(
                help.contains(&format!("[env: {env}")),
                "{mode} --help lacks {env}:\n{help}"
            );
        }
    }
    let defaults = String::from_utf8(agent(&["serve-backup", "--help"]).stdout).unwrap();
    for default in [
        "0.0.0.0:3307",
        "127.0.0.1",
        "3306",
        "/var/lib/mysql",
        "<statefulset>-0.<service>",
    ] {
        assert!(defaults.contains(default), "{default} missing:\n{defaults}");
    }
}

fn config_dirs() -> (tempfile::TempDir, String, String) {
    let root = tempfile::tempdir().unwrap();
    let cm = root.path().join("config-map");
    let conf = root.path().join("conf.d");
    fs::create_dir(&cm).unwrap();
    fs::create_dir(&conf).unwrap();
    fs::write(cm.join("master.cnf"), "[mysqld]\nlog-bin\n").unwrap();
    fs::write(cm.join("slave.cnf"), "[mysqld]\nsuper-read-only\n").unwrap();
    let (cm, conf) = (cm.display().to_string(), conf.display().to_string());
    (root, cm, conf)
}

#[test]
fn init_config_writes_the_role_files() {
    let (_root, cm, conf) = config_dirs();
    let out = agent(&[
        "init-config",
        "--pod-name",
        "mysql-2",
        "--config-map-dir",
        &cm,
        "--conf-dir",
        &conf,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let conf = Path::new(&conf);
    assert_eq!(
        fs::read_to_string(conf.join("server-id.cnf")).unwrap(),
        "[mysqld]\nserver-id=102\n"
    );
    assert_eq!(
        fs::read_to_string(conf.join("slave.cnf")).unwrap(),
        "[mysqld]\nsuper-read-only\n"
    );
    assert!(!conf.join("master.cnf").exists());

    // The environment works as well as flags; POD_NAME is what the downward API sets.
    let out = Command::new(AGENT)
        .arg("init-config")
        .env("POD_NAME", "db-0")
        .env("MYSQL_AGENT_CONFIG_MAP_DIR", &cm)
        .env("MYSQL_AGENT_CONF_DIR", conf)
        .env("MYSQL_AGENT_SERVER_ID_OFFSET", "1000")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        fs::read_to_string(conf.join("server-id.cnf"))
            .unwrap()
            .contains("server-id=1000")
    );
    assert!(conf.join("master.cnf").exists() && !conf.join("slave.cnf").exists());
}

#[test]
fn bad_pod_names_fail_clearly_and_write_nothing() {
    let (_root, cm, conf) = config_dirs();
    for (name, needle) in [
        ("mysql", "no ordinal suffix"),
        ("mysql-x", "numeric ordinal"),
        ("mysql-99999999999", "out of range"),
        ("", "empty"),
    ] {
        let out = agent(&[
            "init-config",
            "--pod-name",
            name,
            "--config-map-dir",
            &cm,
            "--conf-dir",
            &conf,
        ]);
        assert_eq!(out.status.code(), Some(2), "{name:?}");
        let err = stderr(&out);
        assert!(err.contains(needle), "{name:?}: {err}");
        assert!(
            name.is_empty() || err.contains(&format!("{name:?}")),
            "{name:?} not named: {err}"
        );
        assert!(
            fs::read_dir(&conf).unwrap().next().is_none(),
            "{name:?} wrote into conf.d"
        );
    }
}

#[test]
fn init_config_names_a_missing_config_map_file() {
    let (root, _cm, conf) = config_dirs();
    let empty = root.path().join("empty-config-map");
    fs::create_dir(&empty).unwrap();
    let out = agent(&[
        "init-config",
        "--pod-name",
        "mysql-0",
        "--config-map-dir",
        empty.to_str().unwrap(),
        "--conf-dir",
        &conf,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("none of master.cnf, primary.cnf found in"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn clone_leaves_unknown_or_unprepared_data_alone() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    fs::write(dir.path().join("notes.txt"), "precious").unwrap();
    let out = agent(&["clone", "--pod-name", "mysql-1", "--data-dir", &data]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("refusing to clone over it"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        fs::read_to_string(dir.path().join("notes.txt")).unwrap(),
        "precious"
    );

    // The tutorial's partial clone: data extracted, never prepared.
    fs::remove_file(dir.path().join("notes.txt")).unwrap();
    fs::create_dir(dir.path().join("mysql")).unwrap();
    fs::write(
        dir.path().join("xtrabackup_checkpoints"),
        "backup_type = full-backuped\n",
    )
    .unwrap();
    let out = agent(&["clone", "--pod-name", "mysql-1", "--data-dir", &data]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("never prepared"), "{}", stderr(&out));
    assert!(dir.path().join("mysql").is_dir());

    // A server's data (a pod cloned by the tutorial before migrating) is left as it is.
    fs::write(
        dir.path().join("xtrabackup_checkpoints"),
        "backup_type = full-prepared\n",
    )
    .unwrap();
    let out = agent(&["clone", "--pod-name", "mysql-1", "--data-dir", &data]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("leaving it alone"));
}

#[test]
fn clone_on_the_primary_or_into_a_missing_dir() {
    let dir = tempfile::tempdir().unwrap();
    let out = agent(&[
        "clone",
        "--pod-name",
        "mysql-0",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(out.status.success());
    assert!(fs::read_dir(dir.path()).unwrap().next().is_none());

    let missing = dir.path().join("missing");
    let out = agent(&[
        "clone",
        "--pod-name",
        "mysql-1",
        "--data-dir",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("--data-dir {}", missing.display())) && err.contains("No such file"),
        "{err}"
    );
}

#[test]
fn clone_waits_for_donors_then_gives_up_with_the_reasons() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on these: a refused connection and an unresolvable name.
    let started = Instant::now();
    let out = agent(&[
        "clone",
        "--pod-name",
        "mysql-1",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--donor",
        "127.0.0.1:1",
        "--donor",
        "no-such-host.invalid",
        "--donor-wait",
        "3s",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("no donor could serve a backup for 3s"),
        "{err}"
    );
    assert!(
        err.contains("127.0.0.1:1") && err.contains("no-such-host.invalid:3307"),
        "{err}"
    );
    assert!(
        err.contains("retrying the donors"),
        "it never waited: {err}"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    // Only the in-progress marker is left, which the next run cleans up.
    let left: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, [mysql_agent::clone::IN_PROGRESS_MARKER]);
}

/// A child that a failing test does not leave running.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the agent with `args` and expects a usage error (exit 2) mentioning every needle,
/// promptly (nothing waited for), with nothing written into `dir`.
fn refused(args: &[String], needles: &[&str], dir: &Path) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = Instant::now();
    let before: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let out = agent(&args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    for needle in needles {
        assert!(err.contains(needle), "{args:?} lacks {needle:?}: {err}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{args:?} waited"
    );
    let after: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(before, after, "{args:?} wrote something");
}

/// Bad input is refused before any work, with an error naming the flag and the culprit, exit
/// code 2, and nothing written.
#[test]
fn bad_input_is_refused_before_any_work() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    fs::create_dir(&data).unwrap();
    let path = |name: &str| root.path().join(name).display().to_string();
    fs::write(path("a-file"), "x").unwrap();
    fs::write(path("short-secret"), "tooshort").unwrap();
    let data_s = data.display().to_string();
    let args = |base: &[&str], extra: &[&str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let clone = |extra: &[&str]| {
        args(
            &["clone", "--pod-name", "mysql-1", "--data-dir", &data_s],
            extra,
        )
    };
    let sidecar = |extra: &[&str]| {
        args(
            &[
                "serve-backup",
                "--pod-name",
                "mysql-1",
                "--listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
                "--mysql-port",
                "1",
            ],
            extra,
        )
    };
    // A malformed donor is a usage error, not thirty minutes of retries.
    refused(
        &clone(&["--donor", "bad host:port:x"]),
        &["donor \"bad host:port:x\"", "more than one ':'"],
        &data,
    );
    refused(
        &clone(&["--donor", "mysql-1.mysql:0"]),
        &["not a port number"],
        &data,
    );
    refused(
        &clone(&["--backup-secret-file", &path("missing")]),
        &["--backup-secret-file", "missing", "No such file"],
        &data,
    );
    // serve-backup checks its data dir before waiting for mysqld (port 1 never answers).
    refused(
        &sidecar(&["--data-dir", &path("a-file")]),
        &["--data-dir", "a-file", "not a directory"],
        &data,
    );
    refused(
        &sidecar(&["--data-dir", &path("missing")]),
        &["--data-dir", "missing"],
        &data,
    );
    refused(
        &sidecar(&[
            "--data-dir",
            &data_s,
            "--mysql-password-file",
            &path("missing"),
        ]),
        &["--mysql-password-file", "missing", "No such file"],
        &data,
    );
    refused(
        &sidecar(&[
            "--data-dir",
            &data_s,
            "--backup-tool",
            "/nonexistent/xtrabackup",
        ]),
        &["/nonexistent/xtrabackup", "--backup-tool"],
        &data,
    );
    refused(
        &sidecar(&[
            "--data-dir",
            &data_s,
            "--backup-secret-file",
            &path("short-secret"),
        ]),
        &["--backup-secret-file", "at least 16"],
        &data,
    );
    refused(
        &args(
            &[
                "init-config",
                "--pod-name",
                "mysql-0",
                "--config-map-dir",
                &data_s,
            ],
            &["--conf-dir", &path("missing")],
        ),
        &["--conf-dir", "missing"],
        &data,
    );
    // The backup and restore flags.
    refused(
        &args(&["backup", "--to", "gs://bucket/x"], &[]),
        &["backup location \"gs://bucket/x\""],
        &data,
    );
    refused(
        &args(
            &["backup", "--to", &format!("file://{data_s}")],
            &["--age-recipient-file", &path("a-file")],
        ),
        &["--age-recipient-file", "a-file", "age1"],
        &data,
    );
    refused(
        &clone(&["--restore-from", "s3://Bad_Bucket/x"]),
        &["not a bucket name"],
        &data,
    );
    refused(
        &clone(&[
            "--restore-from",
            "s3://backups/x",
            "--age-identity-file",
            &path("missing"),
        ]),
        &["--age-identity-file", "missing"],
        &data,
    );
    // Point-in-time recovery's flags.
    refused(
        &clone(&[
            "--restore-from",
            "s3://backups/x",
            "--restore-until",
            "yesterday",
        ]),
        &["--restore-until", "yesterday", "RFC 3339"],
        &data,
    );
    refused(
        &clone(&["--restore-until", "2026-12-02T14:02:00Z"]),
        &["--restore-from"],
        &data,
    );
    refused(
        &args(
            &[
                "clone",
                "--pod-name",
                "mysql-0",
                "--data-dir",
                &data_s,
                "--restore-from",
                "s3://backups/x",
                "--restore-until",
                "0-100-57",
            ],
            &["--mysqld-defaults-file", &path("missing")],
        ),
        &["--mysqld-defaults-file", "missing"],
        &data,
    );
    refused(
        &sidecar(&[
            "--data-dir",
            &data_s,
            "--archive-binlogs-to",
            "gs://bucket/x",
        ]),
        &["--archive-binlogs-to", "gs://bucket/x"],
        &data,
    );
    refused(
        &sidecar(&[
            "--data-dir",
            &data_s,
            "--archive-binlogs-to",
            "s3://backups/x",
            "--age-recipient-file",
            &path("a-file"),
        ]),
        &["--age-recipient-file", "a-file", "age1"],
        &data,
    );
}

/// An error chain reads once: the driver's "Input/output error: Input/output error: …" is
/// not repeated; and a sidecar waiting for mysqld still exits 0 on SIGTERM.
#[test]
fn errors_are_reported_once_and_sigterm_stops_the_sidecar() {
    let root = tempfile::tempdir().unwrap();
    let log_path = root.path().join("sidecar.log");
    let mut child = KillOnDrop(
        Command::new(AGENT)
            .args([
                "serve-backup",
                "--pod-name",
                "mysql-0",
                "--listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
                "--mysql-port",
                "1",
                "--backup-tool",
                "mariadb-backup",
                "--data-dir",
            ])
            .arg(root.path())
            .stdout(std::process::Stdio::null())
            .stderr(fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let log = loop {
        let log = fs::read_to_string(&log_path).unwrap_or_default();
        if log.contains("waiting for mysqld") {
            break log;
        }
        assert!(Instant::now() < deadline, "never waited for mysqld: {log}");
        std::thread::yield_now();
    };
    common::sigterm(child.0.id());
    let status = child.0.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{log}");
    let line = log
        .lines()
        .find(|l| l.contains("waiting for mysqld"))
        .unwrap();
    assert!(line.contains("Connection refused"), "{line}");
    for repeated in [
        "Input/output error: Input/output error",
        "Connection refused (os error 111): Connection refused",
    ] {
        assert!(!line.contains(repeated), "{line}");
    }
}

/// SIGTERM stops a clone that is waiting for donors: exit 143, as documented, with only its
/// in-progress marker left for the next run to clean up.
#[test]
fn sigterm_interrupts_a_clone_with_exit_143() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("clone.log");
    let data = dir.path().join("data");
    fs::create_dir(&data).unwrap();
    let mut child = KillOnDrop(
        Command::new(AGENT)
            .args([
                "clone",
                "--pod-name",
                "mysql-1",
                "--donor",
                "127.0.0.1:1",
                "--data-dir",
            ])
            .arg(&data)
            .stdout(std::process::Stdio::null())
            .stderr(fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fs::read_to_string(&log_path)
        .unwrap_or_default()
        .contains("retrying the donors")
    {
        assert!(Instant::now() < deadline, "the clone never waited");
        std::thread::yield_now();
    }
    common::sigterm(child.0.id());
    let status = child.0.wait().unwrap();
    let log = fs::read_to_string(&log_path).unwrap();
    assert_eq!(status.code(), Some(143), "{log}");
    assert!(log.contains("interrupted by a shutdown signal"), "{log}");
    let left: Vec<_> = fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, [mysql_agent::clone::IN_PROGRESS_MARKER]);
}
