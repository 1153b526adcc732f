//! Point-in-time recovery on real MariaDB pods and a real S3 server (Garage, built by
//! scripts/setup-s3.sh), through the real binary: the primary's `serve-backup
//! --archive-binlogs-to` archives its binary logs, `backup` takes a backup as the CronJob
//! does, and a new cluster's mysql-0 runs `clone --restore-from --restore-until` in its init
//! container.

mod common;

use std::process::Output;
use std::time::{Duration, SystemTime};

use common::{AGENT, garage, read, spec};
use mysql_agent::archive;
use mysql_agent::store::Store;
use mysql_agent_harness::s3::S3Server;
use mysql_agent_harness::{Cluster, Pod};
use tokio::process::Command;

const CATCH_UP: Duration = Duration::from_secs(90);
/// The archiver's interval in these tests: the open file's bytes go every 2 s.
const INTERVAL: &str = "2s";

async fn agent(s3: &S3Server, args: &[&str]) -> Output {
    Command::new(AGENT)
        .args(args)
        .envs(s3.env())
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

/// A cluster whose mysql-0 archives its binary logs to `url`, with one replica.
async fn archiving_cluster(service: &str, subnet: u8, s3: &S3Server, url: &str) -> Cluster {
    archiving_cluster_with(service, subnet, s3, url, &[]).await
}

async fn archiving_cluster_with(
    service: &str,
    subnet: u8,
    s3: &S3Server,
    url: &str,
    sidecar_extra: &[&str],
) -> Cluster {
    let mut cluster = Cluster::create(spec(service, subnet)).await.unwrap();
    let n = cluster.new_pod().unwrap();
    let pod = cluster.pod_mut(n);
    pod.agent_env.extend(s3.env());
    pod.init_config().await.unwrap();
    pod.clone_data(&[]).await.unwrap();
    pod.start_mysqld().await.unwrap();
    let mut args = vec![
        "--archive-binlogs-to",
        url,
        "--binlog-archive-interval",
        INTERVAL,
    ];
    args.extend_from_slice(sidecar_extra);
    pod.start_sidecar(&args).await.unwrap();
    cluster.scale_to(2).await.unwrap();
    cluster
        .primary()
        .exec(
            "CREATE DATABASE shop; CREATE TABLE shop.orders (id INT PRIMARY KEY, item VARCHAR(40))",
        )
        .await
        .unwrap();
    cluster
}

async fn start_archiver(pod: &mut Pod, url: &str) {
    pod.start_sidecar(&[
        "--archive-binlogs-to",
        url,
        "--binlog-archive-interval",
        INTERVAL,
    ])
    .await
    .unwrap();
}

/// Inserts rows `from..=to`, one transaction each.
async fn insert(pod: &Pod, from: u32, to: u32) {
    for id in from..=to {
        pod.exec(&format!(
            "INSERT INTO shop.orders VALUES ({id}, 'item {id}')"
        ))
        .await
        .unwrap();
    }
}

async fn ids(pod: &Pod) -> Vec<u32> {
    pod.query_rows::<u32>("SELECT id FROM shop.orders ORDER BY id")
        .await
        .unwrap()
}

/// Waits for the next whole second and returns the one before it as an RFC 3339 target: every
/// transaction committed so far is stamped at or before it, every later one after it.
async fn target_now() -> String {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap();
    let second = now.as_secs();
    let next = Duration::from_secs(second + 1) - now + Duration::from_millis(50);
    tokio::time::sleep(next).await;
    humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(second))
        .to_string()
}

fn store(s3: &S3Server, url: &str) -> Store {
    Store::open(&url.parse().unwrap(), &s3.settings(), false).unwrap()
}

/// Waits until the archive's latest timeline is known complete past `target`.
async fn wait_archived(s3: &S3Server, url: &str, target: &str) -> archive::Timeline {
    let store = store(s3, url);
    let wanted = humantime::parse_rfc3339(target).unwrap() + Duration::from_secs(1);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(name) = archive::timelines(&store).await.unwrap().last() {
            let timeline = archive::load(&store, name).await.unwrap();
            if let Some(p) = &timeline.progress
                && humantime::parse_rfc3339_weak(&p.checked_at).unwrap() >= wanted
            {
                return timeline;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the archive never reached {target}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn backup(s3: &S3Server, cluster: &Cluster, url: &str) {
    let donors = format!(
        "{},{}",
        cluster.pod(1).backup_addr(),
        cluster.primary().backup_addr()
    );
    let out = agent(s3, &["backup", "--to", url, "--donor", &donors]).await;
    assert!(out.status.success(), "{}", text(&out));
}

/// A new cluster's mysql-0 through its init containers with the restore flags; returns the
/// cluster and whether the clone succeeded (with its log).
async fn restore_primary(
    service: &str,
    subnet: u8,
    s3: &S3Server,
    url: &str,
    until: &str,
) -> (Cluster, Result<(), String>) {
    restore_primary_with(service, subnet, s3, url, until, &[]).await
}

async fn restore_primary_with(
    service: &str,
    subnet: u8,
    s3: &S3Server,
    url: &str,
    until: &str,
    extra: &[&str],
) -> (Cluster, Result<(), String>) {
    let mut cluster = Cluster::create(spec(service, subnet)).await.unwrap();
    let n = cluster.new_pod().unwrap();
    let pod = cluster.pod_mut(n);
    pod.agent_env.extend(s3.env());
    pod.init_config().await.unwrap();
    let defaults = pod.defaults_file().display().to_string();
    let cloned = pod
        .clone_data(
            &[
                "--restore-from",
                url,
                "--restore-until",
                until,
                "--mysqld-defaults-file",
                &defaults,
                "--peer-wait",
                "1s",
            ]
            .into_iter()
            .chain(extra.iter().copied())
            .collect::<Vec<_>>(),
        )
        .await
        .map_err(|e| format!("{e:#}"));
    (cluster, cloned)
}

/// An archiving cluster (see [`archiving_cluster_with`]) holding rows 1-10 on both pods, and
/// a backup of them in the store.
async fn backed_up_cluster(
    (service, subnet): (&str, u8),
    s3: &S3Server,
    url: &str,
    sidecar_extra: &[&str],
) -> Cluster {
    let cluster = archiving_cluster_with(service, subnet, s3, url, sidecar_extra).await;
    insert(cluster.primary(), 1, 10).await;
    cluster
        .wait_replicated("shop.orders", 10, CATCH_UP)
        .await
        .unwrap();
    backup(s3, &cluster, url).await;
    cluster
}

/// A new cluster's mysql-0 restored to `until`, started: the ids it holds. The restore must
/// succeed (its log is shown when not); the cluster is stopped afterwards.
async fn restored_ids(
    (service, subnet): (&str, u8),
    s3: &S3Server,
    url: &str,
    until: &str,
    extra: &[&str],
) -> Vec<u32> {
    let (mut cluster, cloned) = restore_primary_with(service, subnet, s3, url, until, extra).await;
    cloned.unwrap_or_else(|e| panic!("{e}\n{}", read(&cluster.pod(0).log("clone"))));
    cluster.pod_mut(0).start_mysqld().await.unwrap();
    let ids = ids(cluster.primary()).await;
    cluster.stop().await.unwrap();
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_primary_holds_exactly_the_writes_before_the_target() {
    let s3 = garage("pitr1", 81).await;
    let url = s3.url("prod");
    let source = archiving_cluster("pt1a", 81, &s3, &url).await;
    let primary = source.primary();
    insert(primary, 1, 20).await;
    primary.exec("FLUSH BINARY LOGS").await.unwrap();
    source
        .wait_replicated("shop.orders", 20, CATCH_UP)
        .await
        .unwrap();
    backup(&s3, &source, &url).await;
    // After the backup, in a file of their own and the next: the writes to recover.
    insert(primary, 21, 40).await;
    primary.exec("FLUSH BINARY LOGS").await.unwrap();
    insert(primary, 41, 60).await;
    let gtid_at_target: String = primary
        .query_rows::<String>("SELECT @@gtid_binlog_pos")
        .await
        .unwrap()
        .remove(0);
    let target = target_now().await;
    // The mistake after the target, and more writes.
    primary
        .exec("DELETE FROM shop.orders WHERE id <= 50")
        .await
        .unwrap();
    insert(primary, 61, 70).await;
    let timeline = wait_archived(&s3, &url, &target).await;
    assert!(timeline.files.len() >= 3, "{:?}", timeline.files);
    // The sidecar reports the archive in /metrics.
    let (_, metrics) = common::http_get(&primary.http_addr(), "/metrics").await;
    assert!(
        metrics.contains("mysql_agent_binlog_archived_bytes_total"),
        "{metrics}"
    );
    let lag: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("mysql_agent_binlog_archive_lag_seconds "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no lag in {metrics}"));
    assert!((0.0..30.0).contains(&lag), "{metrics}");
    source.stop().await.unwrap();

    // Every volume gone: mysql-0 restored to the target, a replica cloned from it.
    let (mut rebuilt, cloned) = restore_primary("pt1b", 82, &s3, &url, &target).await;
    let log = read(&rebuilt.pod(0).log("clone"));
    cloned.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert!(log.contains("point-in-time recovery"), "{log}");
    assert!(log.contains("transactions=40"), "{log}");
    let pod = rebuilt.pod_mut(0);
    pod.start_mysqld().await.unwrap();
    // It archives into the same store: its binary logs reuse the old names.
    start_archiver(pod, &url).await;
    assert_eq!(ids(rebuilt.primary()).await, (1..=60).collect::<Vec<_>>());
    // The restored primary's history goes on from the replayed one.
    let state: String = rebuilt
        .primary()
        .query_rows::<String>("SELECT @@gtid_binlog_pos")
        .await
        .unwrap()
        .remove(0);
    assert_eq!(state, gtid_at_target);
    rebuilt.scale_to(2).await.unwrap();
    insert(rebuilt.primary(), 100, 100).await;
    rebuilt
        .wait_replicated("shop.orders", 61, CATCH_UP)
        .await
        .unwrap();
    let second = wait_archived(&s3, &url, &target_now().await).await;
    assert_ne!(second.info.name, timeline.info.name);
    assert!(
        second.info.reason.contains("names reused"),
        "{:?}",
        second.info
    );
    assert_eq!(
        second.info.previous.as_deref(),
        Some(timeline.info.name.as_str())
    );
    // Its first file starts where the restored backup stood, and goes on from the target.
    let start = second.info.start_state.clone().unwrap();
    assert!(!start.is_empty() && start != gtid_at_target, "{start}");
    rebuilt.stop().await.unwrap();

    // A GTID target: through that transaction.
    let last: mysql_agent::binlog::Gtid = gtid_at_target.parse().unwrap();
    let through = mysql_agent::binlog::Gtid {
        seq: last.seq - 5,
        ..last
    }
    .to_string();
    assert_eq!(
        restored_ids(("pt1c", 83), &s3, &url, &through, &[]).await,
        (1..=55).collect::<Vec<_>>()
    );
    s3.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_archiver_resumes_with_no_gap() {
    let s3 = garage("pitr2", 84).await;
    let url = s3.url("prod");
    let mut source = backed_up_cluster(("pt2a", 84), &s3, &url, &[]).await;
    let before = wait_archived(&s3, &url, &target_now().await).await;
    // Writes going on while the sidecar is killed, across a file rotation, then it restarts.
    let writer = {
        let pod_conn = source.primary().conn().await.unwrap();
        tokio::spawn(async move {
            use mysql_async::prelude::Queryable;
            let mut conn = pod_conn;
            for id in 11..=400u32 {
                conn.query_drop(format!("INSERT INTO shop.orders VALUES ({id}, 'x')"))
                    .await
                    .unwrap();
                if id == 200 {
                    conn.query_drop("FLUSH BINARY LOGS").await.unwrap();
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    source.pod_mut(0).kill_sidecar().await.unwrap();
    writer.await.unwrap();
    let target = target_now().await;
    start_archiver(source.pod_mut(0), &url).await;
    let after = wait_archived(&s3, &url, &target).await;
    // The same timeline, continued; every file whole.
    assert_eq!(after.info.name, before.info.name);
    assert_eq!(
        archive::timelines(&store(&s3, &url)).await.unwrap().len(),
        1
    );
    archive::check_continuous(&after, 0).unwrap();
    let log = read(&source.primary().log("serve-backup"));
    assert!(
        log.contains("the archive goes on where it stopped"),
        "{log}"
    );
    source.stop().await.unwrap();

    assert_eq!(
        restored_ids(("pt2b", 85), &s3, &url, &target, &[]).await,
        (1..=400).collect::<Vec<_>>()
    );
    s3.stop().await.unwrap();
}

/// `PURGE BINARY LOGS TO` the open file `current`, until only it is left: MariaDB keeps a
/// file a replica is still reading.
async fn purge_to(pod: &Pod, current: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        pod.exec(&format!("PURGE BINARY LOGS TO '{current}'"))
            .await
            .unwrap();
        let logs = pod
            .query_rows::<(String, u64)>("SHOW BINARY LOGS")
            .await
            .unwrap();
        if logs.len() == 1 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server keeps {logs:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gap_starts_a_new_timeline_and_no_restore_crosses_it() {
    let s3 = garage("pitr3", 86).await;
    let url = s3.url("prod");
    let mut source = backed_up_cluster(("pt3a", 86), &s3, &url, &[]).await;
    let before_gap = target_now().await;
    wait_archived(&s3, &url, &before_gap).await;
    // The archiver is away while the server writes and purges what it never archived.
    source.pod_mut(0).stop_sidecar().await.unwrap();
    let primary = source.primary();
    insert(primary, 11, 20).await;
    let in_gap = target_now().await;
    primary
        .exec("FLUSH BINARY LOGS; FLUSH BINARY LOGS")
        .await
        .unwrap();
    source
        .wait_replicated("shop.orders", 20, CATCH_UP)
        .await
        .unwrap();
    let current: String = primary
        .query_rows::<(String, u64, String, String)>("SHOW MASTER STATUS")
        .await
        .unwrap()
        .remove(0)
        .0;
    purge_to(primary, &current).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    start_archiver(source.pod_mut(0), &url).await;
    insert(source.primary(), 21, 30).await;
    let after_gap = target_now().await;
    let timeline = wait_archived(&s3, &url, &after_gap).await;
    assert!(
        timeline.info.reason.contains("a gap"),
        "{:?}",
        timeline.info
    );
    assert_eq!(
        archive::timelines(&store(&s3, &url)).await.unwrap().len(),
        2
    );
    let log = read(&source.primary().log("serve-backup"));
    assert!(log.contains("a new timeline begins"), "{log}");

    // A target in the gap, and one after it with only the older backup: refused up front,
    // saying where the gap is, with nothing written.
    for (service, subnet, until, needle) in [
        ("pt3b", 87, in_gap.as_str(), "falls in a gap"),
        ("pt3c", 88, after_gap.as_str(), "would cross"),
    ] {
        let (cluster, cloned) = restore_primary(service, subnet, &s3, &url, until).await;
        let err = cloned.expect_err("a restore crossed a gap");
        let log = read(&cluster.pod(0).log("clone"));
        assert!(log.contains(needle), "{until}: {log}");
        assert!(log.contains(&current) || needle == "would cross", "{log}");
        assert!(
            std::fs::read_dir(cluster.pod(0).data_dir())
                .unwrap()
                .next()
                .is_none(),
            "{err}: the data dir was written to"
        );
        cluster.stop().await.unwrap();
    }
    // Before the gap the old timeline still restores; after it, a backup of the new one does.
    assert_eq!(
        restored_ids(("pt3d", 89), &s3, &url, &before_gap, &[]).await,
        (1..=10).collect::<Vec<_>>()
    );
    backup(&s3, &source, &url).await;
    insert(source.primary(), 31, 40).await;
    let later = target_now().await;
    wait_archived(&s3, &url, &later).await;
    source.stop().await.unwrap();
    assert_eq!(
        restored_ids(("pt3e", 90), &s3, &url, &later, &[]).await,
        (1..=40).collect::<Vec<_>>()
    );
    s3.stop().await.unwrap();
}

/// The same archive and restore against a second S3 implementation (SeaweedFS), with the
/// archive encrypted: segments are age's bytes, and a restore without the key is refused
/// before anything is written.
#[tokio::test(flavor = "multi_thread")]
async fn an_encrypted_archive_on_a_second_s3_implementation_restores_with_its_key() {
    use age::secrecy::ExposeSecret;
    let s3 = common::s3_server(common::S3Kind::SeaweedFs, "pitr4", 91).await;
    let keys = tempfile::tempdir().unwrap();
    let identity = age::x25519::Identity::generate();
    let secret = keys.path().join("key.txt");
    std::fs::write(
        &secret,
        format!("{}\n", identity.to_string().expose_secret()),
    )
    .unwrap();
    let public = keys.path().join("key.pub");
    std::fs::write(&public, format!("{}\n", identity.to_public())).unwrap();
    let url = s3.url("enc");
    let recipients = ["--age-recipient-file", public.to_str().unwrap()];
    let source = backed_up_cluster(("pt4a", 91), &s3, &url, &recipients).await;
    insert(source.primary(), 11, 30).await;
    let target = target_now().await;
    insert(source.primary(), 31, 40).await;
    let timeline = wait_archived(&s3, &url, &target).await;
    source.stop().await.unwrap();
    // What is stored is age's, not the binary log's.
    let store = store(&s3, &url);
    let file = &timeline.files[0];
    let segment = archive::get_segment(
        &store,
        &timeline.info.name,
        &file.name,
        &file.segments[0],
        u64::MAX,
    )
    .await
    .unwrap();
    assert!(
        segment.starts_with(b"age-encryption.org/v1"),
        "{:?}",
        &segment[..16]
    );
    assert!(file.segments[0].encrypted);
    assert_eq!(timeline.info.recipients.as_ref().map(Vec::len), Some(1));

    // Without the key: refused up front. (The backup itself is plain here: the archive's
    // encryption is what is checked.)
    let (cluster, cloned) = restore_primary("pt4b", 92, &s3, &url, &target).await;
    let err = cloned.expect_err("an encrypted archive was read without its key");
    let log = read(&cluster.pod(0).log("clone"));
    assert!(log.contains("--age-identity-file"), "{err}: {log}");
    assert!(
        std::fs::read_dir(cluster.pod(0).data_dir())
            .unwrap()
            .next()
            .is_none(),
        "the data dir was written to"
    );
    cluster.stop().await.unwrap();
    let key = ["--age-identity-file", secret.to_str().unwrap()];
    assert_eq!(
        restored_ids(("pt4c", 93), &s3, &url, &target, &key).await,
        (1..=30).collect::<Vec<_>>()
    );
    s3.stop().await.unwrap();
}

/// The archiving sidecar killed (a failpoint's SIGKILL) right after it began a timeline and
/// right after it stored a segment, before anything else: each restart takes up where the
/// store says, in the same timeline, and a restore gets every row.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread")]
async fn an_archiver_killed_between_its_writes_takes_up_the_same_timeline() {
    let s3 = garage("pitr5", 94).await;
    let url = s3.url("prod");
    let mut cluster = Cluster::create(spec("pt5a", 94)).await.unwrap();
    let n = cluster.new_pod().unwrap();
    let pod = cluster.pod_mut(n);
    pod.agent_env.extend(s3.env());
    pod.init_config().await.unwrap();
    pod.clone_data(&[]).await.unwrap();
    pod.start_mysqld().await.unwrap();
    pod.exec(
        "CREATE DATABASE shop; CREATE TABLE shop.orders (id INT PRIMARY KEY, item VARCHAR(40))",
    )
    .await
    .unwrap();
    insert(pod, 1, 10).await;
    for (failpoint, step) in [
        ("archive-after-timeline", 1),
        ("archive-after-segment", 2),
        ("archive-after-segment", 3),
    ] {
        let pod = cluster.pod_mut(0);
        pod.agent_env
            .push(("FAILPOINTS".into(), format!("{failpoint}=return")));
        start_archiver(pod, &url).await;
        let status = pod
            .wait_sidecar_exit(Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "{failpoint}"
        );
        pod.agent_env.retain(|(k, _)| k != "FAILPOINTS");
        // Writes meanwhile, and a rotation, for the next start to find.
        insert(pod, 10 * step + 1, 10 * step + 10).await;
        pod.exec("FLUSH BINARY LOGS").await.unwrap();
    }
    start_archiver(cluster.pod_mut(0), &url).await;
    cluster.scale_to(2).await.unwrap();
    cluster
        .wait_replicated("shop.orders", 40, CATCH_UP)
        .await
        .unwrap();
    backup(&s3, &cluster, &url).await;
    insert(cluster.primary(), 41, 50).await;
    let target = target_now().await;
    let timeline = wait_archived(&s3, &url, &target).await;
    assert_eq!(
        archive::timelines(&store(&s3, &url)).await.unwrap().len(),
        1
    );
    archive::check_continuous(&timeline, 0).unwrap();
    for file in &timeline.files {
        file.archived_end().unwrap();
    }
    let log = read(&cluster.primary().log("serve-backup"));
    assert!(
        log.contains("the archive takes up the timeline it had begun"),
        "{log}"
    );
    assert!(
        log.contains("the archive goes on where it stopped"),
        "{log}"
    );
    cluster.stop().await.unwrap();

    assert_eq!(
        restored_ids(("pt5b", 95), &s3, &url, &target, &[]).await,
        (1..=50).collect::<Vec<_>>()
    );
    s3.stop().await.unwrap();
}
