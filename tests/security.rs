//! Port 3307 with a backup secret, and credentials that never leak: on real pods whose
//! passwords and secret come from files, as a hardened StatefulSet mounts them.

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{AGENT, eventually, read, secured_spec};
use mysql_agent::protocol::{self, LINE_PREFIX, Message};
use mysql_agent::secrets::BackupSecret;
use mysql_agent::xbstream::MAGIC;
use mysql_agent_harness::{BACKUP_USER, Cluster, REPLICATION_USER};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const REFUSED: &str = "refused a client that did not prove it knows the backup secret";

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Everything a client receives until the server closes (or `limit` bytes).
async fn drain(reader: &mut (impl AsyncReadExt + Unpin), limit: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while out.len() < limit {
        match tokio::time::timeout(Duration::from_secs(30), reader.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

/// A client that plays the handshake by hand: the server's challenge, an AUTH line (computed
/// with `secret`, or replayed), then everything the server sends.
/// An honest client's answer to the challenge, proving knowledge of `secret`.
fn proof_with(secret: &BackupSecret) -> impl FnOnce(&protocol::Nonce) -> String + '_ {
    |nonce| {
        let mine = protocol::nonce().unwrap();
        Message::Auth {
            nonce: mine,
            mac: protocol::client_proof(secret, nonce, &mine),
        }
        .to_line()
    }
}

async fn handshake(
    addr: &str,
    answer: impl FnOnce(&protocol::Nonce) -> String,
) -> (String, Vec<u8>) {
    let socket = TcpStream::connect(addr).await.unwrap();
    let mut reader = BufReader::new(socket);
    let mut challenge = String::new();
    reader.read_line(&mut challenge).await.unwrap();
    let Message::Challenge(nonce) = Message::parse(challenge.trim_end()).unwrap() else {
        panic!("no challenge: {challenge:?}");
    };
    let auth = answer(&nonce);
    reader.get_mut().write_all(auth.as_bytes()).await.unwrap();
    let received = drain(&mut reader, 8 << 20).await;
    (auth, received)
}

#[tokio::test(flavor = "multi_thread")]
async fn only_clients_that_know_the_secret_get_a_backup() {
    let mut cluster = Cluster::create(secured_spec("sec1", 21)).await.unwrap();
    cluster.scale_to(1).await.unwrap();
    let credentials = cluster.credentials().unwrap().clone();
    let secret = BackupSecret::new(credentials.backup_secret.clone().into_bytes()).unwrap();
    let addr = cluster.primary().backup_addr();
    let log = cluster.primary().log("serve-backup");
    let refusals = || read(&log).matches(REFUSED).count();

    // A tutorial client (ncat --recv-only) gets a challenge line and, in time, a denial.
    let mut raw = TcpStream::connect(&addr).await.unwrap();
    let got = drain(&mut raw, 1 << 20).await;
    assert!(
        got.starts_with(format!("{LINE_PREFIX}CHALLENGE ").as_bytes()),
        "{got:?}"
    );
    assert!(
        !contains(&got, MAGIC),
        "backup bytes to a client without the secret"
    );
    assert_eq!(refusals(), 1);

    // A client with the wrong secret.
    let wrong = BackupSecret::new(b"not the StatefulSet's secret".to_vec()).unwrap();
    let (_, got) = handshake(&addr, proof_with(&wrong)).await;
    assert!(!contains(&got, MAGIC));
    assert!(String::from_utf8_lossy(&got).contains("DENIED"), "{got:?}");
    assert_eq!(refusals(), 2);

    // A client with the right secret gets the backup; its exchange, replayed, gets nothing.
    let (recorded, got) = handshake(&addr, proof_with(&secret)).await;
    assert!(contains(&got, MAGIC), "the right secret got no backup");
    let secret_hex = hex::encode(credentials.backup_secret.as_bytes());
    for wire in [recorded.as_bytes(), &got[..200]] {
        assert!(
            !contains(wire, credentials.backup_secret.as_bytes())
                && !contains(wire, secret_hex.as_bytes())
        );
    }
    let (_, got) = handshake(&addr, |_| recorded.clone()).await;
    assert!(!contains(&got, MAGIC), "a replayed exchange got a backup");
    assert_eq!(refusals(), 3);

    // The agent's own clone: without a secret, or with another one, it stops at once and
    // says why; with the StatefulSet's secret it clones (and the replica replicates).
    let dir = tempfile::tempdir().unwrap();
    let wrong_file = dir.path().join("wrong-secret");
    fs::write(&wrong_file, "not the StatefulSet's secret").unwrap();
    for (extra, needle) in [
        (vec![], "the donor requires a backup secret"),
        (
            vec!["--backup-secret-file", wrong_file.to_str().unwrap()],
            "the pods do not share the same secret",
        ),
    ] {
        let data = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(AGENT)
            .args([
                "clone",
                "--pod-name",
                "mysql-1",
                "--data-dir",
                data.path().to_str().unwrap(),
            ])
            .args(["--donor", &addr])
            .args(extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(needle), "{stderr}");
    }
    cluster.scale_to(2).await.unwrap();
    cluster
        .primary()
        .exec("CREATE DATABASE s; CREATE TABLE s.t (i INT PRIMARY KEY); INSERT INTO s.t VALUES (1)")
        .await
        .unwrap();
    cluster
        .pod(1)
        .wait_row_count("s.t", 1, Duration::from_secs(60))
        .await
        .unwrap();
    cluster.stop().await.unwrap();
}

/// Every process's command line, for leak checks.
fn all_command_lines() -> Vec<(i32, Vec<u8>)> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse().ok()?;
            Some((pid, fs::read(e.path().join("cmdline")).ok()?))
        })
        .collect()
}

fn assert_no_secret_on_a_command_line(values: &[&str], when: &str) {
    for (pid, cmdline) in all_command_lines() {
        for value in values {
            assert!(
                !contains(&cmdline, value.as_bytes()),
                "{when}: pid {pid} has a secret on its command line: {:?}",
                String::from_utf8_lossy(&cmdline)
            );
        }
    }
}

/// Every file under `dir`, recursively, but the secrets themselves.
fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            if !path.ends_with("secrets") {
                files_under(&path, out);
            }
        } else {
            out.push(path);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_password_on_a_command_line_or_in_a_log() {
    let mut cluster = Cluster::create(secured_spec("sec2", 22)).await.unwrap();
    let credentials = cluster.credentials().unwrap().clone();
    let values = credentials.values();
    cluster.scale_to(2).await.unwrap();
    assert_no_secret_on_a_command_line(&values, "after start-up");

    // During replication setup: start a replica's sidecar again and look while it configures.
    cluster.pod(1).wait_replication_configured(1).await.unwrap();
    let pod = cluster.pod_mut(1);
    assert!(pod.stop_sidecar().await.unwrap().success());
    std::fs::remove_file(pod.data_dir().join(mysql_agent::replication::RECORD_FILE)).unwrap();
    pod.exec("STOP SLAVE; RESET SLAVE ALL").await.unwrap();
    pod.start_sidecar(&[]).await.unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        assert_no_secret_on_a_command_line(&values, "during replication setup");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pod.wait_replication_configured(2).await.unwrap();

    // During a backup: a client that proves the secret and reads slowly keeps the tool running.
    let secret = BackupSecret::new(credentials.backup_secret.clone().into_bytes()).unwrap();
    let socket = TcpStream::connect(cluster.primary().backup_addr())
        .await
        .unwrap();
    let mut reader = BufReader::new(socket);
    let mut challenge = String::new();
    reader.read_line(&mut challenge).await.unwrap();
    let Message::Challenge(server_nonce) = Message::parse(challenge.trim_end()).unwrap() else {
        panic!("{challenge}")
    };
    let mine = protocol::nonce().unwrap();
    let auth = Message::Auth {
        nonce: mine,
        mac: protocol::client_proof(&secret, &server_nonce, &mine),
    };
    reader
        .get_mut()
        .write_all(auth.to_line().as_bytes())
        .await
        .unwrap();
    let mut first = vec![0u8; 4096];
    reader.read_exact(&mut first).await.unwrap();
    let data_dir = cluster.primary().data_dir();
    eventually(Duration::from_secs(10), "the backup tool to run", || {
        !common::backup_tool_pids(&data_dir).is_empty()
    })
    .await;
    let tool = common::backup_tool_pids(&data_dir)[0];
    let cmdline = fs::read(format!("/proc/{tool}/cmdline")).unwrap();
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let options_file = args[1]
        .strip_prefix("--defaults-extra-file=")
        .unwrap_or_else(|| panic!("the credentials are not in an options file: {args:?}"))
        .to_owned();
    assert_no_secret_on_a_command_line(&values, "during a backup");
    // The tools overwrite a --password argument in their own argv soon after starting, so
    // a scan can miss one: check that none is passed at all, masked or not.
    assert!(
        !args
            .iter()
            .any(|a| a.starts_with("--password") || (a.starts_with("-p") && a.len() > 2)),
        "the backup tool was given a password argument: {args:?}"
    );
    // The options file is the tool's own descriptor onto memory: nothing on a disk.
    let fd = options_file
        .strip_prefix("/dev/fd/")
        .unwrap_or_else(|| panic!("the options file is not a descriptor: {options_file}"));
    let through = format!("/proc/{tool}/fd/{fd}");
    let target = fs::read_link(&through).unwrap();
    assert!(
        target.to_string_lossy().starts_with("/memfd:"),
        "the options file is {}",
        target.display()
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&through).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(read(Path::new(&through)).contains(&format!("user=\"{BACKUP_USER}\"")));
    drain(&mut reader, usize::MAX).await;
    eventually(
        Duration::from_secs(10),
        "the options file to be removed",
        || !Path::new(&through).exists(),
    )
    .await;

    // The whole tutorial, then: accounts least-privileged, replication through its own account.
    cluster.scale_to(3).await.unwrap();
    cluster
        .primary()
        .exec("CREATE DATABASE s; CREATE TABLE s.t (i INT PRIMARY KEY); INSERT INTO s.t VALUES (1)")
        .await
        .unwrap();
    cluster
        .wait_replicated("s.t", 1, Duration::from_secs(60))
        .await
        .unwrap();
    for pod in cluster.replicas() {
        assert_eq!(
            pod.replica_field("Master_User").await.unwrap().as_deref(),
            Some(REPLICATION_USER)
        );
    }
    let grants: Vec<String> = cluster
        .primary()
        .query_rows(&format!("SHOW GRANTS FOR '{REPLICATION_USER}'@'%'"))
        .await
        .unwrap();
    assert!(
        grants[0].starts_with("GRANT REPLICATION SLAVE ON *.*"),
        "{grants:?}"
    );
    let grants: Vec<String> = cluster
        .primary()
        .query_rows(&format!("SHOW GRANTS FOR '{BACKUP_USER}'@'%'"))
        .await
        .unwrap();
    assert!(
        !grants
            .iter()
            .any(|g| g.contains("ALL PRIVILEGES") || g.contains("SUPER")),
        "{grants:?}"
    );
    // The accounts reached the binary log once each, a restarted primary sidecar included.
    let primary = cluster.pod_mut(0);
    assert!(primary.stop_sidecar().await.unwrap().success());
    primary.start_sidecar(&[]).await.unwrap();
    primary
        .wait_for_log(
            "serve-backup",
            "account exists; left as it is",
            2,
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let events: Vec<mysql_async::Row> = cluster
        .primary()
        .query_rows("SHOW BINLOG EVENTS")
        .await
        .unwrap();
    let creates = events
        .iter()
        .filter(|e| {
            e.get::<String, _>("Info")
                .is_some_and(|i| i.contains("CREATE USER"))
        })
        .count();
    assert_eq!(creates, 2);
    let root = cluster.spec().root.clone();
    cluster.stop().await.unwrap();

    // Not a single log line, of the agent or of mysqld, holds a password or the secret.
    let mut files = Vec::new();
    files_under(&root, &mut files);
    let logs: Vec<_> = files
        .into_iter()
        .filter(|f| f.to_string_lossy().contains("/logs/"))
        .collect();
    assert!(logs.len() >= 12, "{logs:?}");
    for log in logs {
        let text = fs::read(&log).unwrap();
        for value in values {
            assert!(
                !contains(&text, value.as_bytes()),
                "{} holds a secret",
                log.display()
            );
        }
    }
}

/// A sidecar SIGKILLed while its backup tool runs leaves no file holding a password in its
/// TMPDIR: the tool's credentials live in memory only.
#[tokio::test(flavor = "multi_thread")]
async fn a_sidecar_killed_mid_backup_leaves_no_password_behind() {
    let mut cluster = Cluster::create(secured_spec("sec3", 23)).await.unwrap();
    let credentials = cluster.credentials().unwrap().clone();
    cluster.scale_to(1).await.unwrap();
    common::fill(cluster.primary(), 64).await;
    let tmpdir = cluster.spec().root.join("sidecar-tmp");
    fs::create_dir_all(&tmpdir).unwrap();
    let primary = cluster.pod_mut(0);
    assert!(primary.stop_sidecar().await.unwrap().success());
    primary
        .agent_env
        .push(("TMPDIR".into(), tmpdir.display().to_string()));
    primary.start_sidecar(&[]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while common::http_get(&cluster.primary().http_addr(), "/readyz")
        .await
        .0
        != 200
    {
        assert!(Instant::now() < deadline, "the primary never became ready");
        tokio::task::yield_now().await;
    }

    // A client that proves the secret, takes a little of the stream and then holds it.
    let secret = BackupSecret::new(credentials.backup_secret.clone().into_bytes()).unwrap();
    let socket = TcpStream::connect(cluster.primary().backup_addr())
        .await
        .unwrap();
    let mut reader = BufReader::new(socket);
    let mut challenge = String::new();
    reader.read_line(&mut challenge).await.unwrap();
    let Message::Challenge(nonce) = Message::parse(challenge.trim_end()).unwrap() else {
        panic!("{challenge}")
    };
    let auth = proof_with(&secret)(&nonce);
    reader.get_mut().write_all(auth.as_bytes()).await.unwrap();
    let mut first = vec![0u8; 4096];
    reader.read_exact(&mut first).await.unwrap();
    let data_dir = cluster.primary().data_dir();
    eventually(Duration::from_secs(10), "the backup tool to run", || {
        !common::backup_tool_pids(&data_dir).is_empty()
    })
    .await;
    let tools = common::backup_tool_pids(&data_dir);
    cluster.pod_mut(0).kill_sidecar().await.unwrap();
    drop(reader);
    for pid in tools {
        common::sigkill(pid as u32);
    }

    let mut files = Vec::new();
    files_under(&tmpdir, &mut files);
    for file in &files {
        let bytes = fs::read(file).unwrap_or_default();
        for value in credentials.values() {
            assert!(
                !contains(&bytes, value.as_bytes()),
                "{} holds a secret after the sidecar was killed",
                file.display()
            );
        }
    }
    cluster.stop().await.unwrap();
}
