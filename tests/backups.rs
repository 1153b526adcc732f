//! Backups that leave the cluster, on real MariaDB pods and a real S3 server (Garage, built
//! by scripts/setup-s3.sh), through the real binary in each mode: `backup` as the CronJob
//! runs it, `list-backups`, and `clone --restore-from` in a new cluster's init containers.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use age::secrecy::ExposeSecret;
use common::{AGENT, garage, read, spec};
use mysql_agent_harness::s3::S3Server;
use mysql_agent_harness::{Cluster, Pod, pod_addr};
use object_store::ObjectStoreExt;
use tokio::process::Command;

const CATCH_UP: Duration = Duration::from_secs(90);

/// An S3 client of the test's own, to look at and damage what the agent stored.
fn client(s3: &S3Server) -> impl object_store::ObjectStore {
    let _ = rustls::crypto::ring::default_provider().install_default();
    object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(&s3.bucket)
        .with_endpoint(&s3.endpoint)
        .with_allow_http(true)
        .with_region(mysql_agent_harness::s3::REGION)
        .with_access_key_id(mysql_agent_harness::s3::ACCESS_KEY)
        .with_secret_access_key(mysql_agent_harness::s3::SECRET_KEY)
        .build()
        .unwrap()
}

/// Whether any file is under `dir`.
fn has_files(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let path = e.path();
            if path.is_dir() {
                has_files(&path)
            } else {
                true
            }
        })
    })
}

/// Runs the agent with `args` and the S3 server's environment.
async fn agent(s3: &S3Server, args: &[&str], extra_env: &[(&str, &str)]) -> Output {
    Command::new(AGENT)
        .args(args)
        .envs(s3.env())
        .envs(extra_env.iter().copied())
        .env("RUST_LOG", "info")
        .output()
        .await
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A primary with rows, and a replica replicating them.
async fn source_cluster(service: &str, subnet: u8) -> Cluster {
    let mut cluster = Cluster::create(spec(service, subnet)).await.unwrap();
    cluster.scale_to(2).await.unwrap();
    cluster
        .primary()
        .exec("CREATE DATABASE shop; CREATE TABLE shop.orders (id INT PRIMARY KEY, item VARCHAR(40)); INSERT INTO shop.orders VALUES (1, 'apple'), (2, 'pear'), (3, 'plum')")
        .await
        .unwrap();
    common::fill(cluster.primary(), 24).await;
    cluster
        .wait_replicated("shop.orders", 3, CATCH_UP)
        .await
        .unwrap();
    cluster.pod(1).wait_replication_configured(1).await.unwrap();
    cluster
}

/// The donors of `cluster` as `backup --donor` takes them, replicas first.
fn donors(cluster: &Cluster) -> Vec<String> {
    let mut donors: Vec<String> = cluster.replicas().iter().map(|p| p.backup_addr()).collect();
    donors.push(cluster.primary().backup_addr());
    donors
}

async fn backup(s3: &S3Server, cluster: &Cluster, url: &str, extra: &[&str]) -> Output {
    let donors = donors(cluster).join(",");
    let mut args = vec!["backup", "--to", url, "--donor", &donors];
    args.extend_from_slice(extra);
    agent(s3, &args, &[]).await
}

/// Brings up `cluster`'s first pod from the store, the StatefulSet's way plus the restore
/// flags, then scales it to `pods` with ordinary clones.
async fn restore_cluster(cluster: &mut Cluster, s3: &S3Server, clone_extra: &[&str], pods: u32) {
    let n = cluster.new_pod().unwrap();
    let pod: &mut Pod = cluster.pod_mut(n);
    pod.agent_env.extend(s3.env());
    pod.init_config().await.unwrap();
    pod.clone_data(clone_extra).await.unwrap();
    pod.start_mysqld().await.unwrap();
    pod.start_sidecar(&[]).await.unwrap();
    cluster.scale_to(pods).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_from_a_replica_restores_a_whole_new_cluster() {
    let s3 = garage("bk1", 51).await;
    let url = s3.url("prod/mysql");
    let source = source_cluster("bk1a", 51).await;
    let out = backup(&s3, &source, &url, &["--compression-level", "1"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let log = text(&out);
    // Replicas first: the primary is not loaded.
    let replica = source.pod(1).backup_addr();
    assert!(log.contains(&format!("donor={replica}")), "{log}");
    assert!(log.contains("backup complete"), "{log}");

    let listed = agent(&s3, &["list-backups", &url], &[]).await;
    assert!(listed.status.success(), "{}", text(&listed));
    let lines = String::from_utf8(listed.stdout.clone()).unwrap();
    assert_eq!(lines.lines().count(), 1, "{lines}");
    assert!(lines.contains("(from a replica)"), "{lines}");
    let json = agent(&s3, &["list-backups", "--json", &url], &[]).await;
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let manifest = &doc["backups"][0];
    assert_eq!(manifest["server"]["flavor"], "mariadb");
    assert_eq!(manifest["compression"]["algorithm"], "zstd");
    assert_eq!(manifest["donor"], replica.as_str());
    assert!(
        manifest["stored_bytes"].as_u64().unwrap() < manifest["stream_bytes"].as_u64().unwrap()
    );
    assert_eq!(manifest["objects"][0]["sha256"].as_str().unwrap().len(), 64);
    source.stop().await.unwrap();

    // Every volume gone: a new cluster's mysql-0 restores the backup, a replica clones it.
    let mut rebuilt = Cluster::create(spec("bk1b", 52)).await.unwrap();
    restore_cluster(&mut rebuilt, &s3, &["--restore-from", &url], 2).await;
    let log = read(&rebuilt.pod(0).log("clone"));
    assert!(log.contains("restoring from the backup store"), "{log}");
    for pod in rebuilt.pods() {
        assert_eq!(
            pod.row_count("shop.orders").await.unwrap(),
            3,
            "{}",
            pod.name
        );
    }
    // The rebuilt cluster replicates its own writes.
    rebuilt
        .primary()
        .exec("INSERT INTO shop.orders VALUES (4, 'fig')")
        .await
        .unwrap();
    rebuilt
        .wait_replicated("shop.orders", 4, CATCH_UP)
        .await
        .unwrap();
    rebuilt.stop().await.unwrap();
    s3.stop().await.unwrap();
}

fn age_keys(dir: &Path) -> (PathBuf, PathBuf) {
    let identity = age::x25519::Identity::generate();
    let secret = dir.join("backup-key.txt");
    std::fs::write(
        &secret,
        format!("{}\n", identity.to_string().expose_secret()),
    )
    .unwrap();
    let public = dir.join("backup-key.pub");
    std::fs::write(&public, format!("{}\n", identity.to_public())).unwrap();
    (secret, public)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_encrypted_backup_opens_only_with_its_identity() {
    let s3 = garage("bk2", 53).await;
    let url = s3.url("enc");
    let source = source_cluster("bk2a", 53).await;
    let keys = tempfile::tempdir().unwrap();
    let (secret, public) = age_keys(keys.path());
    let out = backup(
        &s3,
        &source,
        &url,
        &["--age-recipient-file", public.to_str().unwrap()],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    source.stop().await.unwrap();

    // The stored bytes are age's, not xbstream's or zstd's.
    let store = client(&s3);
    let doc: serde_json::Value = serde_json::from_slice(
        &agent(&s3, &["list-backups", "--json", &url], &[])
            .await
            .stdout,
    )
    .unwrap();
    let name = doc["backups"][0]["name"].as_str().unwrap().to_owned();
    let object = doc["backups"][0]["objects"][0]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let stored = store
        .get(&object_store::path::Path::from(format!(
            "enc/{name}/{object}"
        )))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(stored.starts_with(b"age-encryption.org/v1"));
    assert_eq!(
        doc["backups"][0]["encryption"]["recipients"][0],
        std::fs::read_to_string(&public).unwrap().trim()
    );

    // Without the identity, and with another: refused up front, the data dir untouched.
    let other = tempfile::tempdir().unwrap();
    let (wrong, _) = age_keys(other.path());
    let mut cluster = Cluster::create(spec("bk2b", 54)).await.unwrap();
    let n = cluster.new_pod().unwrap();
    let pod = cluster.pod_mut(n);
    pod.agent_env.extend(s3.env());
    pod.init_config().await.unwrap();
    for (extra, needle) in [
        (vec!["--restore-from", &url], "pass --age-identity-file"),
        (
            vec![
                "--restore-from",
                &url,
                "--age-identity-file",
                wrong.to_str().unwrap(),
            ],
            "cannot be decrypted with --age-identity-file",
        ),
    ] {
        let err = pod.clone_data(&extra).await.unwrap_err();
        let log = read(&pod.log("clone"));
        assert!(log.contains(needle), "{err:#}\n{log}");
        assert!(
            std::fs::read_dir(pod.data_dir()).unwrap().next().is_none(),
            "the data dir was written"
        );
    }
    let secret_arg = secret.to_str().unwrap();
    pod.clone_data(&["--restore-from", &url, "--age-identity-file", secret_arg])
        .await
        .unwrap();
    pod.start_mysqld().await.unwrap();
    assert_eq!(pod.row_count("shop.orders").await.unwrap(), 3);
    cluster.stop().await.unwrap();
    s3.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_keeps_the_newest_and_clears_old_leftovers() {
    let s3 = garage("bk3", 55).await;
    let source = source_cluster("bk3a", 55).await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    // A leftover of an attempt that never finished, two days old.
    let leftover = dir.path().join("20260101T000000Z-abcdef");
    std::fs::create_dir_all(&leftover).unwrap();
    std::fs::write(leftover.join("data-000000.xbs.zst"), b"partial").unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(2 * 24 * 3600);
    std::fs::File::options()
        .write(true)
        .open(leftover.join("data-000000.xbs.zst"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    // Something that is not a backup: never touched.
    std::fs::write(dir.path().join("README"), b"not a backup").unwrap();
    let mut names = Vec::new();
    for _ in 0..3 {
        let out = backup(&s3, &source, &url, &["--keep", "2"]).await;
        assert!(out.status.success(), "{}", text(&out));
        let listed = agent(&s3, &["list-backups", &url], &[]).await;
        let first = String::from_utf8(listed.stdout).unwrap();
        names.push(
            first
                .lines()
                .next()
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .to_owned(),
        );
    }
    let listed = String::from_utf8(agent(&s3, &["list-backups", &url], &[]).await.stdout).unwrap();
    let listed: Vec<&str> = listed
        .lines()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(listed, [names[2].as_str(), names[1].as_str()], "{listed:?}");
    assert!(!has_files(&dir.path().join(&names[0])));
    assert!(!has_files(&leftover), "the old leftover is still there");
    assert!(dir.path().join("README").exists());
    source.stop().await.unwrap();
    s3.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_stores_and_damaged_objects_are_refused_clearly() {
    let s3 = garage("bk4", 56).await;
    let source = source_cluster("bk4a", 56).await;
    // Wrong credentials, a missing bucket: a clear error, non-zero, nothing taken.
    let donors = donors(&source).join(",");
    let out = agent(
        &s3,
        &["backup", "--to", &s3.url("x"), "--donor", &donors],
        &[("AWS_SECRET_ACCESS_KEY", "wrong-wrong-wrong-wrong")],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("reaching the backup store s3://backups/x"),
        "{}",
        text(&out)
    );
    let out = agent(
        &s3,
        &[
            "backup",
            "--to",
            "s3://no-such-bucket/x",
            "--donor",
            &donors,
        ],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("s3://no-such-bucket/x"),
        "{}",
        text(&out)
    );
    assert!(common::backup_tool_pids(&source.primary().data_dir()).is_empty());

    // A flipped byte in a stored object: the restore names the checksum, and writes nothing
    // that could be started on.
    let url = s3.url("flip");
    let out = backup(&s3, &source, &url, &[]).await;
    assert!(out.status.success(), "{}", text(&out));
    source.stop().await.unwrap();
    let doc: serde_json::Value = serde_json::from_slice(
        &agent(&s3, &["list-backups", "--json", &url], &[])
            .await
            .stdout,
    )
    .unwrap();
    let name = doc["backups"][0]["name"].as_str().unwrap();
    let object = doc["backups"][0]["objects"][0]["name"].as_str().unwrap();
    let store = client(&s3);
    let path = object_store::path::Path::from(format!("flip/{name}/{object}"));
    let mut bytes = store
        .get(&path)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    store.put(&path, bytes.into()).await.unwrap();
    let mut cluster = Cluster::create(spec("bk4b", 57)).await.unwrap();
    let n = cluster.new_pod().unwrap();
    let pod = cluster.pod_mut(n);
    pod.agent_env.extend(s3.env());
    pod.init_config().await.unwrap();
    let err = pod.clone_data(&["--restore-from", &url]).await.unwrap_err();
    let log = read(&pod.log("clone"));
    assert!(
        log.contains("does not match the manifest"),
        "{err:#}\n{log}"
    );
    let left: Vec<String> = std::fs::read_dir(pod.data_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, [mysql_agent::clone::IN_PROGRESS_MARKER], "{left:?}");
    cluster.stop().await.unwrap();
    s3.stop().await.unwrap();
}

#[test]
fn pod_addresses_do_not_collide_with_the_s3_servers() {
    // The servers take host .250 of the tests' subnets; pods stop well below.
    assert!(pod_addr(51, mysql_agent_harness::MAX_PODS).octets()[3] < 250);
}

/// Kills `backup` when its log first shows progress: the stream is flowing into the store.
async fn backup_killed_mid_stream(s3: &S3Server, cluster: &Cluster, url: &str) -> String {
    let donors = donors(cluster).join(",");
    let log_path = tempfile::NamedTempFile::new().unwrap().into_temp_path();
    let mut child = Command::new(AGENT)
        .args([
            "backup",
            "--to",
            url,
            "--donor",
            &donors,
            "--progress-interval",
            "100ms",
        ])
        .envs(s3.env())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    common::eventually(
        Duration::from_secs(60),
        "the backup to be mid-stream",
        || read(&log_path).contains("backing up:"),
    )
    .await;
    child.kill().await.unwrap();
    read(&log_path)
}

/// Lists `url`: the complete backups' names.
async fn listed(s3: &S3Server, url: &str) -> Vec<String> {
    let out = agent(s3, &["list-backups", url], &[]).await;
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect()
}

/// A backup or a restore killed at any stage leaves nothing half done: no half backup is
/// ever listed, and a restore's next run starts afresh and completes.
#[tokio::test(flavor = "multi_thread")]
async fn backups_and_restores_killed_at_every_stage_leave_nothing_half_done() {
    let s3 = garage("bk5", 58).await;
    let url = s3.url("kills");
    let source = source_cluster("bk5a", 58).await;
    common::fill(source.primary(), 96).await;
    source
        .wait_replicated("test.big", 120 * 1024, CATCH_UP)
        .await
        .unwrap();

    // Killed mid-stream, and killed after every object is stored but before the manifest.
    let log = backup_killed_mid_stream(&s3, &source, &url).await;
    assert!(!log.contains("backup complete"), "{log}");
    assert!(listed(&s3, &url).await.is_empty());
    let donors = donors(&source).join(",");
    let out = agent(
        &s3,
        &["backup", "--to", &url, "--donor", &donors],
        &[("FAILPOINTS", "backup-before-manifest=return")],
    )
    .await;
    assert_eq!(out.status.signal(), Some(9), "{}", text(&out));
    assert!(listed(&s3, &url).await.is_empty());
    // The leftovers of both are there, unlisted, for retention to remove a day later.
    let json = agent(&s3, &["list-backups", "--json", &url], &[]).await;
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert!(!doc["incomplete"].as_array().unwrap().is_empty(), "{doc}");
    // The next run is whole, and the only one listed.
    let out = backup(&s3, &source, &url, &[]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(listed(&s3, &url).await.len(), 1);
    source.stop().await.unwrap();

    // A restore killed mid-stream, after the stream was checked, after prepare, and in the
    // middle of moving files into place: each next run removes what it left and completes.
    let mut cluster = Cluster::create(spec("bk5b", 59)).await.unwrap();
    let n = cluster.new_pod().unwrap();
    let pod = cluster.pod_mut(n);
    pod.agent_env.extend(s3.env());
    pod.init_config().await.unwrap();
    let restore = ["--restore-from", url.as_str()];
    let mut clone = pod.spawn_clone(&restore).unwrap();
    common::wait_mid_stream(pod, 8 << 20).await;
    clone.kill().await.unwrap();
    for failpoint in [
        "clone-after-extract",
        "clone-after-prepare",
        "clone-mid-commit",
    ] {
        let pod = cluster.pod_mut(n);
        pod.agent_env
            .push(("FAILPOINTS".into(), format!("{failpoint}=return")));
        let err = pod.clone_data(&restore).await.unwrap_err();
        assert!(
            format!("{err:#}").contains("signal: 9"),
            "{failpoint}: {err:#}"
        );
        pod.agent_env.pop();
        let left: Vec<String> = std::fs::read_dir(pod.data_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            left.iter()
                .any(|n| n == mysql_agent::clone::IN_PROGRESS_MARKER)
                && !left.iter().any(|n| n == mysql_agent::clone::DONE_MARKER),
            "{failpoint}: {left:?}"
        );
    }
    let pod = cluster.pod_mut(n);
    pod.clone_data(&restore).await.unwrap();
    let log = read(&pod.log("clone"));
    assert!(log.contains("an earlier clone did not finish"), "{log}");
    pod.start_mysqld().await.unwrap();
    assert_eq!(pod.row_count("shop.orders").await.unwrap(), 3);
    assert_eq!(pod.row_count("test.big").await.unwrap(), 120 * 1024);
    cluster.stop().await.unwrap();
    s3.stop().await.unwrap();
}

/// A donor whose stream is not a whole backup (cut short, or corrupt) gives no backup: the
/// error names the stream's problem, not the upload it abandoned, and nothing is listed.
#[tokio::test(flavor = "multi_thread")]
async fn a_broken_stream_is_never_stored_as_a_backup() {
    use mysql_agent::xbstream::{Chunk, encode_file};
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let mut cut = Vec::new();
    encode_file("ibdata1", &[7u8; 4096], &mut cut);
    Chunk::Payload {
        path: "db/t.ibd",
        flags: 0,
        offset: 0,
        data: b"half",
    }
    .encode(&mut cut);
    let mut corrupt = Vec::new();
    encode_file("ibdata1", &[7u8; 4096], &mut corrupt);
    corrupt[40] ^= 0xff;
    for (stream, needle) in [(cut, "never closed"), (corrupt, "checksum mismatch")] {
        let donor = common::fake_donor(common::Donation::Bytes(stream)).to_string();
        let out = Command::new(AGENT)
            .args([
                "backup",
                "--to",
                &url,
                "--donor",
                &donor,
                "--max-attempts",
                "1",
            ])
            .output()
            .await
            .unwrap();
        let log = text(&out);
        assert_eq!(out.status.code(), Some(1), "{log}");
        assert!(log.contains(needle), "{log}");
        assert!(!log.contains("abandoned"), "{log}");
        let listed = Command::new(AGENT)
            .args(["list-backups", &url])
            .output()
            .await
            .unwrap();
        assert!(
            listed.status.success() && listed.stdout.is_empty(),
            "{}",
            text(&listed)
        );
        assert!(!has_files(dir.path()), "the failed attempt left objects");
    }
}

/// The same backup, listing and restore against a second S3 implementation (SeaweedFS),
/// which, unlike Garage, enforces S3's minimum part size and conditional writes: nothing the
/// agent does is Garage-specific.
#[tokio::test(flavor = "multi_thread")]
async fn backups_work_against_a_second_s3_implementation() {
    let s3 = common::s3_server(common::S3Kind::SeaweedFs, "bk6", 60).await;
    let url = s3.url("second");
    let source = source_cluster("bk6a", 60).await;
    // Random text, which zstd cannot shrink much: the backup takes several parts.
    source
        .primary()
        .exec("CREATE TABLE shop.noise (id INT PRIMARY KEY, v TEXT); INSERT INTO shop.noise SELECT seq, CONCAT(SHA2(RAND(), 512), SHA2(RAND(), 512), SHA2(RAND(), 512), SHA2(RAND(), 512)) FROM shop.seq_1_to_100000")
        .await
        .unwrap();
    source
        .wait_replicated("shop.noise", 100_000, CATCH_UP)
        .await
        .unwrap();
    let out = backup(&s3, &source, &url, &["--keep", "1"]).await;
    assert!(out.status.success(), "{}", text(&out));
    // More than one part: the minimum part size is enforced here.
    let doc: serde_json::Value = serde_json::from_slice(
        &agent(&s3, &["list-backups", "--json", &url], &[])
            .await
            .stdout,
    )
    .unwrap();
    assert!(
        doc["backups"][0]["stored_bytes"].as_u64().unwrap() > 8 << 20,
        "{doc}"
    );
    source.stop().await.unwrap();
    let mut rebuilt = Cluster::create(spec("bk6b", 61)).await.unwrap();
    restore_cluster(&mut rebuilt, &s3, &["--restore-from", &url], 1).await;
    assert_eq!(rebuilt.primary().row_count("shop.orders").await.unwrap(), 3);
    assert_eq!(
        rebuilt.primary().row_count("shop.noise").await.unwrap(),
        100_000
    );
    rebuilt.stop().await.unwrap();
    s3.stop().await.unwrap();
}
