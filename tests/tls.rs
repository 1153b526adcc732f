//! Port 3307 under mutual TLS (`--tls-dir`) on real MariaDB pods: a clone is unreadable on
//! the wire, a raw client gets nothing, certificates of another CA, expired or for another
//! name are refused with nothing extracted, and renewed files are used without a restart.
//! Certificates come from `scripts/make-certs.sh`, the recipe the README gives.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{AGENT, eventually, read, secured_spec};
use mysql_agent_harness::{Cluster, MAX_PODS, REPLICATION_USER, pod_host};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CATCH_UP: Duration = Duration::from_secs(60);
/// A string in a row of the primary: it travels inside the InnoDB pages of any backup.
const MARKER: &str = "tls-wire-marker-7f3a9c";

fn make_certs(ca: &Path, out: &Path, days: u32, names: &[String]) {
    mysql_agent_harness::make_certs(ca, out, days, names).unwrap();
}

/// Every pod's short name: a wildcard right under a one-label domain (`*.mysql`) matches
/// nothing for rustls, as for browsers, so the StatefulSet's certificate lists them.
fn pod_names(service: &str) -> Vec<String> {
    (0..MAX_PODS).map(|n| pod_host(service, n)).collect()
}

/// A secured cluster of `pods` pods, every agent with `--tls-dir` (through its environment,
/// as a StatefulSet would set it), the primary holding a row with [`MARKER`].
async fn tls_cluster(service: &str, subnet: u8, pods: u32) -> (Cluster, PathBuf) {
    let mut cluster = Cluster::create(secured_spec(service, subnet))
        .await
        .unwrap();
    let tls = cluster.enable_tls().unwrap();
    cluster.add_pod().await.unwrap();
    cluster
        .primary()
        .exec(&format!(
            "CREATE DATABASE app; CREATE TABLE app.t (v VARCHAR(64)); INSERT INTO app.t VALUES ('{MARKER}')"
        ))
        .await
        .unwrap();
    cluster.scale_to(pods).await.unwrap();
    (cluster, tls)
}

/// A clone into a fresh directory, as ordinal 5 of the cluster, with `--tls-dir tls` and
/// `args`; its exit status and log.
fn clone_with(cluster: &Cluster, name: &str, tls: &Path, args: &[&str]) -> (bool, String, PathBuf) {
    let dir = cluster.spec().root.join(format!("clone-{name}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("data")).unwrap();
    let out = Command::new(AGENT)
        .args([
            "clone",
            "--pod-name",
            "mysql-5",
            "--service",
            &cluster.spec().service,
        ])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--tls-dir")
        .arg(tls)
        .arg("--backup-secret-file")
        .arg(cluster.credentials().unwrap().file("backup-secret"))
        .args([
            "--max-attempts",
            "1",
            "--donor-wait",
            "2s",
            "--stall-timeout",
            "20s",
        ])
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.success(), log, dir.join("data"))
}

/// Only the clone's own markers: nothing of a backup was extracted.
fn nothing_extracted(data: &Path) {
    let names: Vec<String> = fs::read_dir(data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with(".mysql-agent-clone-in-progress"))
        .collect();
    assert!(names.is_empty(), "extracted: {names:?}");
}

/// A TCP relay from `listen` to `to` that keeps a copy of what flows towards the client.
async fn tap(listen: &str, to: String) -> Arc<Mutex<Vec<u8>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let listener = TcpListener::bind(listen).await.unwrap();
    let copy = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = TcpStream::connect(&to).await.unwrap();
            let (mut cr, mut cw) = client.into_split();
            let (mut ur, mut uw) = upstream.into_split();
            tokio::spawn(async move { tokio::io::copy(&mut cr, &mut uw).await });
            let copy = Arc::clone(&copy);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match ur.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    copy.lock().unwrap().extend_from_slice(&buf[..n]);
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = cw.shutdown().await;
            });
        }
    });
    seen
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tls_clone_replicates_and_is_unreadable_on_the_wire() {
    let (cluster, tls) = tls_cluster("tls", 81, 2).await;
    // The replica cloned over TLS and replicates.
    cluster
        .pod(1)
        .wait_row_count("app.t", 1, CATCH_UP)
        .await
        .unwrap();
    let log = read(&cluster.pod(1).log("clone"));
    assert!(log.contains("clone complete"), "{log}");

    // Replication runs over TLS, verifying the primary's certificate: the replication
    // account is made to require TLS, and rows still flow after the IO thread reconnects.
    let replica = cluster.pod(1);
    cluster
        .primary()
        .exec("INSERT INTO app.t VALUES ('replicated')")
        .await
        .unwrap();
    replica.wait_row_count("app.t", 2, CATCH_UP).await.unwrap();
    for (column, want) in [
        ("Master_SSL_Allowed", "Yes"),
        ("Master_SSL_Verify_Server_Cert", "Yes"),
        ("Slave_IO_Running", "Yes"),
    ] {
        assert_eq!(
            replica.replica_field(column).await.unwrap().as_deref(),
            Some(want),
            "{column}"
        );
    }
    cluster
        .primary()
        .exec(&format!("ALTER USER '{REPLICATION_USER}'@'%' REQUIRE SSL"))
        .await
        .unwrap();
    replica.exec("STOP SLAVE; START SLAVE").await.unwrap();
    cluster
        .primary()
        .exec("INSERT INTO app.t VALUES ('after REQUIRE SSL')")
        .await
        .unwrap();
    replica.wait_row_count("app.t", 3, CATCH_UP).await.unwrap();
    let primary_conf = fs::read_to_string(cluster.primary().conf_dir().join("tls.cnf")).unwrap();
    assert!(primary_conf.contains("ssl_cert="), "{primary_conf}");

    // A tap between a clone and the donor sees ciphertext only.
    let primary = cluster.primary();
    let seen = tap(&format!("{}:4307", primary.addr), primary.backup_addr()).await;
    let donor = format!("{}:4307", primary.host);
    let (ok, log, data) = clone_with(&cluster, "tapped", &tls, &["--donor", &donor]);
    assert!(ok, "{log}");
    assert!(data.join("ibdata1").exists());
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.len() > 1 << 20,
        "the tap saw only {} bytes",
        seen.len()
    );
    assert!(
        !contains(&seen, b"XBSTCK01"),
        "the xbstream magic crossed in clear"
    );
    assert!(
        !contains(&seen, MARKER.as_bytes()),
        "a row crossed in clear"
    );

    // A raw client gets no byte of backup and no agent line.
    let mut raw = TcpStream::connect(primary.backup_addr()).await.unwrap();
    raw.write_all(b"hello\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), raw.read_to_end(&mut got)).await;
    assert!(
        !contains(&got, b"XBSTCK01") && !contains(&got, b"MYSQL-AGENT"),
        "{got:?}"
    );
    let log = primary.log("serve-backup");
    eventually(
        Duration::from_secs(15),
        "the refusal in the donor's log",
        || read(&log).contains("TLS handshake failed"),
    )
    .await;
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_certificates_are_refused_and_renewed_ones_used_without_a_restart() {
    let (cluster, tls) = tls_cluster("tls-bad", 82, 1).await;
    let root = cluster.spec().root.clone();
    let service = cluster.spec().service.clone();
    let names = pod_names(&service);

    // A client certificate of another CA: the donor refuses it.
    let other = root.join("other");
    make_certs(&root.join("other-ca"), &other, 30, &names);
    let (ok, log, data) = clone_with(&cluster, "other-ca", &other, &[]);
    assert!(!ok, "{log}");
    assert!(log.contains("TLS") || log.contains("alert"), "{log}");
    nothing_extracted(&data);

    // An expired client certificate of the right CA: refused too.
    let expired = root.join("expired");
    make_certs(&root.join("ca"), &expired, 0, &names);
    std::thread::sleep(Duration::from_secs(2));
    let (ok, log, data) = clone_with(&cluster, "expired", &expired, &[]);
    assert!(!ok, "{log}");
    nothing_extracted(&data);

    // The donor reached under a name its certificate does not carry (its address).
    let by_address = cluster.primary().backup_addr();
    let (ok, log, data) = clone_with(&cluster, "wrong-name", &tls, &["--donor", &by_address]);
    assert!(!ok, "{log}");
    assert!(
        log.contains("NotValidForName") || log.contains("not valid for"),
        "{log}"
    );
    nothing_extracted(&data);

    // The right files work...
    let (ok, log, _) = clone_with(&cluster, "right", &tls, &[]);
    assert!(ok, "{log}");

    // ...until the Secret is renewed with a new CA: the running donor uses the new files for
    // the next connection, so the old ones are refused and the new ones accepted.
    let renewed = root.join("renewed");
    make_certs(&root.join("new-ca"), &renewed, 30, &names);
    let old = root.join("old");
    fs::create_dir_all(&old).unwrap();
    for f in ["tls.crt", "tls.key", "ca.crt"] {
        fs::copy(tls.join(f), old.join(f)).unwrap();
        fs::copy(renewed.join(f), tls.join(format!("{f}.new"))).unwrap();
        fs::rename(tls.join(format!("{f}.new")), tls.join(f)).unwrap();
    }
    let (ok, log, data) = clone_with(&cluster, "stale", &old, &[]);
    assert!(!ok, "a client with the replaced CA was accepted: {log}");
    nothing_extracted(&data);
    let (ok, log, _) = clone_with(&cluster, "renewed", &renewed, &[]);
    assert!(ok, "the renewed certificate was not used: {log}");
    assert!(
        read(&cluster.primary().log("serve-backup")).contains("the TLS files changed"),
        "no reload logged"
    );

    // The backup CronJob's mode takes its stream over TLS too.
    let store = root.join("store");
    fs::create_dir_all(&store).unwrap();
    let url = format!("file://{}", store.display());
    let donor = format!("{}:3307", cluster.primary().host);
    let out = Command::new(AGENT)
        .args(["backup", "--to", &url, "--donor", &donor])
        .arg("--tls-dir")
        .arg(&renewed)
        .arg("--backup-secret-file")
        .arg(cluster.credentials().unwrap().file("backup-secret"))
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = Command::new(AGENT)
        .args(["list-backups", &url])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&listed.stdout).lines().count(), 1);
    cluster.stop().await.unwrap();
}

#[test]
fn a_tls_dir_missing_a_file_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(AGENT)
        .args(["clone", "--pod-name", "mysql-1", "--data-dir"])
        .arg(data.path())
        .arg("--tls-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--tls-dir") && stderr.contains("tls.crt"),
        "{stderr}"
    );
}
