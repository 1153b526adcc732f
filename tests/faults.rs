//! The fault matrix: every interruption Kubernetes can inflict, on real MariaDB pods, must end
//! in a correct replica or a clear error with nothing destroyed. Each `fault_*` test is one
//! row of the README's "What survives what" table (tests/docs.rs keeps the two in step).
//!
//! Built with `--features failpoints`: some faults are kills at exact steps, placed by the
//! agent's failpoints (`FAILPOINTS=<name>=return` makes the agent SIGKILL itself there).
#![cfg(feature = "failpoints")]

mod common;

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use common::{backup_tool_pids, eventually, fill, read, sigkill, sigterm, spec, wait_mid_stream};
use mysql_agent::clone::{DONE_MARKER, IN_PROGRESS_MARKER, STAGING_DIR};
use mysql_agent::fsutil::list_dir;
use mysql_agent::protocol::{LINE_PREFIX, STATUS_ENTRY, StreamStatus};
use mysql_agent::xbstream::{self, Decoder, Flavor};
use mysql_agent_harness::{Cluster, Pod};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Enough data that a clone takes a few seconds and a fault lands inside the stream.
const DATASET_MIB: u64 = 96;
/// How far into the stream faults are injected.
const MID_STREAM: u64 = 24 << 20;
const CATCH_UP: Duration = Duration::from_secs(90);
const PROMPTLY: Duration = Duration::from_secs(10);

fn failpoint(name: &str) -> Vec<(String, String)> {
    vec![("FAILPOINTS".into(), format!("{name}=return"))]
}

/// The primary with a dataset, ready to be cloned.
async fn cluster_with_data(service: &str, subnet: u8, mib: u64) -> Cluster {
    let mut cluster = Cluster::create(spec(service, subnet)).await.unwrap();
    cluster.scale_to(1).await.unwrap();
    fill(cluster.primary(), mib).await;
    cluster
}

/// A primary with `mib` of data and one replica, replication configured (a donor that is not
/// the primary).
async fn cluster_with_replica(service: &str, subnet: u8, mib: u64) -> Cluster {
    let mut cluster = cluster_with_data(service, subnet, mib).await;
    cluster.scale_to(2).await.unwrap();
    cluster.pod(1).wait_replication_configured(1).await.unwrap();
    cluster
}

/// Starts a cloned pod's mysqld and sidecar and checks it replicates everything the primary
/// has, plus one more write: the end state of every fault.
async fn assert_becomes_a_correct_replica(cluster: &mut Cluster, ordinal: u32) {
    let pod = cluster.pod_mut(ordinal);
    pod.start_mysqld().await.unwrap();
    if !pod.sidecar_running() {
        pod.start_sidecar(&[]).await.unwrap();
    }
    assert_replicates(cluster, ordinal).await;
}

async fn assert_replicates(cluster: &Cluster, ordinal: u32) {
    let next: Vec<u64> = cluster
        .primary()
        .query_rows("SELECT COALESCE(MAX(id), 0) + 1 FROM test.big")
        .await
        .unwrap();
    cluster
        .primary()
        .exec(&format!(
            "INSERT INTO test.big VALUES ({}, 'after the fault')",
            next[0]
        ))
        .await
        .unwrap();
    let rows = cluster.primary().row_count("test.big").await.unwrap();
    let pod = cluster.pod(ordinal);
    pod.wait_row_count("test.big", rows, CATCH_UP)
        .await
        .unwrap();
    let field =
        |c: &'static str| async move { pod.replica_field(c).await.unwrap().unwrap_or_default() };
    assert_eq!(field("Slave_IO_Running").await, "Yes", "{}", pod.name);
    assert_eq!(field("Slave_SQL_Running").await, "Yes", "{}", pod.name);
    assert_eq!(field("Last_SQL_Error").await, "", "{}", pod.name);
}

/// The data dir holds nothing a later run or mysqld could take for data.
fn assert_nothing_mistakable(pod: &Pod) {
    let left = list_dir(&pod.data_dir()).unwrap();
    assert!(
        left.is_empty() || left == [IN_PROGRESS_MARKER],
        "{}: {left:?} left behind",
        pod.name
    );
}

async fn new_initialised_pod(cluster: &mut Cluster) -> u32 {
    let n = cluster.new_pod().unwrap();
    cluster.pod(n).init_config().await.unwrap();
    n
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_1_clone_killed_mid_stream_or_later_is_redone() {
    let mut cluster = cluster_with_data("fault1", 11, DATASET_MIB).await;
    let n = new_initialised_pod(&mut cluster).await;
    let pod = cluster.pod(n);

    // SIGKILL in the middle of the stream.
    let mut clone = pod.spawn_clone(&[]).unwrap();
    wait_mid_stream(pod, MID_STREAM).await;
    clone.kill().await.unwrap();
    let left = list_dir(&pod.data_dir()).unwrap();
    assert!(
        left.contains(&IN_PROGRESS_MARKER.to_string()) && !left.contains(&DONE_MARKER.to_string()),
        "{left:?}"
    );

    // Killed after the stream was checked, after prepare, between two renames into place,
    // and while removing what an earlier run left.
    for step in [
        "clone-after-extract",
        "clone-after-prepare",
        "clone-mid-commit",
        "clone-mid-wipe",
    ] {
        let pod = cluster.pod_mut(n);
        pod.agent_env = failpoint(step);
        let mut clone = pod.spawn_clone(&[]).unwrap();
        let status = tokio::time::timeout(CATCH_UP, clone.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            status.signal(),
            Some(9),
            "{step}: the failpoint did not fire"
        );
        assert!(!pod.data_dir().join(DONE_MARKER).exists(), "{step}");
        pod.agent_env.clear();
    }

    // The next run finds an interrupted clone, removes it and clones afresh.
    cluster.pod(n).clone_data(&[]).await.unwrap();
    let log = read(&cluster.pod(n).log("clone"));
    assert_eq!(
        log.matches("an earlier clone did not finish").count(),
        5,
        "{log}"
    );
    assert_eq!(log.matches("clone complete").count(), 1);
    assert_becomes_a_correct_replica(&mut cluster, n).await;
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_2_donor_killed_mid_stream() {
    let mut cluster = cluster_with_replica("fault2", 12, DATASET_MIB).await;
    let donor_data = cluster.pod(1).data_dir();
    let n = new_initialised_pod(&mut cluster).await;

    // With mysql-1 as its only donor and one attempt, the clone refuses the cut stream and
    // exits non-zero, leaving nothing that looks like data.
    let donor_host = cluster.pod(1).host.clone();
    let mut clone = cluster
        .pod(n)
        .spawn_clone(&["--donor", &donor_host, "--max-attempts", "1"])
        .unwrap();
    wait_mid_stream(cluster.pod(n), MID_STREAM).await;
    let donor = cluster.pod_mut(1);
    let tools = backup_tool_pids(&donor_data);
    donor.kill_sidecar().await.unwrap();
    tools.into_iter().for_each(|pid| sigkill(pid as u32));
    let status = tokio::time::timeout(CATCH_UP, clone.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(1));
    let log = read(&cluster.pod(n).log("clone"));
    assert!(log.contains("giving up after 1 failed attempts"), "{log}");
    assert_nothing_mistakable(cluster.pod(n));

    // With the default donors it moves on: mysql-1 is down, the primary serves.
    cluster.pod(n).clone_data(&[]).await.unwrap();
    let log = read(&cluster.pod(n).log("clone"));
    assert!(
        log.contains(&format!(
            "clone complete source=donor {}",
            cluster.primary().host
        )),
        "{log}"
    );
    assert_becomes_a_correct_replica(&mut cluster, n).await;

    // And the killed donor comes back as a sidecar restart, serving again.
    cluster.pod_mut(1).start_sidecar(&[]).await.unwrap();
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_3_two_clones_from_one_donor_at_once() {
    let mut cluster = cluster_with_replica("fault3", 13, DATASET_MIB).await;
    let donor = cluster.pod(1).host.clone();
    let (a, b) = (
        new_initialised_pod(&mut cluster).await,
        new_initialised_pod(&mut cluster).await,
    );
    let mut first = cluster.pod(a).spawn_clone(&["--donor", &donor]).unwrap();
    let mut second = cluster.pod(b).spawn_clone(&["--donor", &donor]).unwrap();
    for clone in [&mut first, &mut second] {
        let status = tokio::time::timeout(CATCH_UP, clone.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success());
    }
    // One of them was told the donor was busy, said so, waited and retried.
    let logs = [
        read(&cluster.pod(a).log("clone")),
        read(&cluster.pod(b).log("clone")),
    ];
    let waited: Vec<&String> = logs.iter().filter(|l| l.contains("reason=busy")).collect();
    assert_eq!(waited.len(), 1, "{logs:?}");
    assert!(
        waited[0].contains("no backup yet; retrying the donors"),
        "{}",
        waited[0]
    );
    for n in [a, b] {
        assert_becomes_a_correct_replica(&mut cluster, n).await;
    }
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_4_sidecar_killed_at_every_step_of_replication_setup() {
    let mut cluster = cluster_with_data("fault4", 14, 1).await;
    for step in [
        "replication-before-change",
        "replication-before-start",
        "replication-before-record",
        "replication-after-record",
    ] {
        let n = new_initialised_pod(&mut cluster).await;
        let pod = cluster.pod_mut(n);
        pod.clone_data(&[]).await.unwrap();
        pod.start_mysqld().await.unwrap();
        pod.agent_env = failpoint(step);
        pod.start_sidecar(&[]).await.unwrap();
        let status = pod.wait_sidecar_exit(CATCH_UP).await.unwrap();
        assert_eq!(
            status.signal(),
            Some(9),
            "{step}: the failpoint did not fire"
        );
        // Writes land on the primary while the replica's sidecar is dead.
        fill(cluster.primary(), 1).await;

        let pod = cluster.pod_mut(n);
        pod.agent_env.clear();
        pod.start_sidecar(&[]).await.unwrap();
        pod.wait_replication_configured(1).await.unwrap();
        let log = read(&pod.log("serve-backup"));
        // CHANGE MASTER runs once at most: a second one would rewind or skip the position.
        assert!(log.matches("step=Change").count() <= 1, "{step}: {log}");
        assert_replicates(&cluster, n).await;
    }
    // No sidecar exits non-zero on SIGTERM, whatever it went through.
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_5_primary_unreachable_when_the_sidecar_starts() {
    let mut cluster = cluster_with_data("fault5", 15, 1).await;
    let n = new_initialised_pod(&mut cluster).await;
    cluster.pod(n).clone_data(&[]).await.unwrap();
    cluster.pod_mut(0).stop_mysqld().await.unwrap();

    let pod = cluster.pod_mut(n);
    pod.start_mysqld().await.unwrap();
    pod.start_sidecar(&[]).await.unwrap();
    pod.wait_replication_configured(1).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let io: Option<String> = pod.replica_field("Slave_IO_Running").await.unwrap();
    assert_eq!(io.as_deref(), Some("Connecting"));
    assert!(pod.sidecar_running());

    cluster.pod_mut(0).start_mysqld().await.unwrap();
    assert_replicates(&cluster, n).await;
    cluster.stop().await.unwrap();
}

async fn read_all(mut socket: TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    socket.read_to_end(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_6_client_disconnects_mid_backup() {
    let cluster = cluster_with_data("fault6", 16, DATASET_MIB).await;
    let pod = cluster.primary();
    let data_dir = pod.data_dir();

    let mut first = TcpStream::connect(pod.backup_addr()).await.unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0;
    while got < 4 << 20 {
        got += first.read(&mut buf).await.unwrap();
    }
    assert_eq!(backup_tool_pids(&data_dir).len(), 1);
    // While it streams, another client is told the server is busy, at once.
    let started = Instant::now();
    let busy =
        String::from_utf8(read_all(TcpStream::connect(pod.backup_addr()).await.unwrap()).await)
            .unwrap();
    assert!(busy.starts_with(&format!("{LINE_PREFIX}BUSY ")), "{busy:?}");
    assert!(started.elapsed() < PROMPTLY);

    drop(first);
    let log = pod.log("serve-backup");
    eventually(PROMPTLY, "the backup tool to be killed", || {
        backup_tool_pids(&data_dir).is_empty() && read(&log).contains("backup aborted")
    })
    .await;

    let stream = read_all(TcpStream::connect(pod.backup_addr()).await.unwrap()).await;
    let dir = tempfile::tempdir().unwrap();
    let summary = xbstream::extract(
        Decoder::new(Flavor::MariaDb).with_trailer(STATUS_ENTRY),
        dir.path(),
        &stream[..],
    )
    .unwrap();
    let trailer = summary.trailer.unwrap();
    StreamStatus::parse(&trailer.contents)
        .unwrap()
        .verify(trailer.stream_offset)
        .unwrap();
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_7_sigterm_during_a_stream() {
    let mut cluster = cluster_with_data("fault7", 17, DATASET_MIB).await;
    let donor_data = cluster.primary().data_dir();
    let n = new_initialised_pod(&mut cluster).await;

    // SIGTERM to the serving agent: it exits 0 within seconds, its tool gone, and the
    // receiving clone refuses what it got.
    let primary = cluster.primary().host.clone();
    let mut clone = cluster
        .pod(n)
        .spawn_clone(&[
            "--donor",
            &primary,
            "--max-attempts",
            "1",
            "--donor-wait",
            "1s",
        ])
        .unwrap();
    wait_mid_stream(cluster.pod(n), MID_STREAM).await;
    let started = Instant::now();
    let status = cluster.pod_mut(0).stop_sidecar().await.unwrap();
    assert!(status.success(), "serve-backup exited with {status}");
    assert!(started.elapsed() < PROMPTLY, "took {:?}", started.elapsed());
    assert!(backup_tool_pids(&donor_data).is_empty());
    let status = tokio::time::timeout(CATCH_UP, clone.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(1));
    let log = read(&cluster.pod(n).log("clone"));
    assert!(log.contains("attempt failed"), "{log}");
    assert_nothing_mistakable(cluster.pod(n));
    cluster.pod_mut(0).start_sidecar(&[]).await.unwrap();

    // SIGTERM to the receiving clone: it stops within seconds with the documented exit code
    // for an interruption (143), its staging gone.
    let mut clone = cluster.pod(n).spawn_clone(&[]).unwrap();
    wait_mid_stream(cluster.pod(n), MID_STREAM).await;
    let started = Instant::now();
    sigterm(clone.id().unwrap());
    let status = tokio::time::timeout(PROMPTLY, clone.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        status.code(),
        Some(i32::from(mysql_agent::errors::EXIT_INTERRUPTED))
    );
    assert!(started.elapsed() < PROMPTLY);
    assert!(!cluster.pod(n).data_dir().join(STAGING_DIR).exists());
    assert_nothing_mistakable(cluster.pod(n));
    // The primary's backup server noticed and serves the next clone, which completes.
    cluster.pod(n).clone_data(&[]).await.unwrap();
    assert_becomes_a_correct_replica(&mut cluster, n).await;
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_8_replica_mysqld_restarts() {
    let mut cluster = cluster_with_replica("fault8", 18, 1).await;
    assert_replicates(&cluster, 1).await;

    // A clean restart, then a crash: replication resumes, the sidecar is untouched.
    let pod = cluster.pod_mut(1);
    pod.stop_mysqld().await.unwrap();
    pod.start_mysqld().await.unwrap();
    assert_replicates(&cluster, 1).await;
    let pod = cluster.pod_mut(1);
    pod.kill_mysqld().await.unwrap();
    pod.start_mysqld().await.unwrap();
    assert_replicates(&cluster, 1).await;

    // The whole pod restarts: the init containers run again and do not re-clone.
    let pod = cluster.pod_mut(1);
    assert!(pod.stop_sidecar().await.unwrap().success());
    pod.stop_mysqld().await.unwrap();
    pod.init_config().await.unwrap();
    pod.clone_data(&[]).await.unwrap();
    assert!(read(&pod.log("clone")).contains("already holds a completed clone"));
    assert_becomes_a_correct_replica(&mut cluster, 1).await;
    assert_eq!(
        read(&cluster.pod(1).log("serve-backup"))
            .matches("step=Change")
            .count(),
        1
    );
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_9_volume_full_during_extraction() {
    let mut cluster = cluster_with_data("fault9", 19, 4).await;
    let n = new_initialised_pod(&mut cluster).await;
    let data = cluster.pod(n).data_dir();
    // A 12 MiB volume: the clone is larger.
    let mount = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=12m", "tmpfs"])
        .arg(&data)
        .status()
        .unwrap();
    assert!(mount.success(), "mounting a small tmpfs needs root");
    let started = Instant::now();
    let result = cluster.pod(n).clone_data(&[]).await;
    let log = read(&cluster.pod(n).log("clone"));
    let left = list_dir(&data).unwrap();
    let _ = std::process::Command::new("umount").arg(&data).status();

    assert!(result.is_err());
    assert!(log.contains("No space left on device"), "{log}");
    assert!(
        log.contains("retrying would not help: the data volume cannot take the clone"),
        "{log}"
    );
    // One attempt, not five: a full volume does not empty itself.
    assert_eq!(log.matches("clone attempt failed").count(), 0, "{log}");
    assert!(started.elapsed() < CATCH_UP);
    assert_eq!(left, [IN_PROGRESS_MARKER], "staging left behind");
    cluster.stop().await.unwrap();
}

/// Sends a hostile stream through the real clone binary: exit 1, an error naming the
/// problem, nothing written outside the data dir, nothing but the in-progress marker in it.
fn clone_from(stream: Vec<u8>, extra: &[&str]) -> (i32, String, Vec<String>) {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let outside = root.path().join("outside");
    std::fs::create_dir(&data).unwrap();
    std::fs::create_dir(&outside).unwrap();
    let donor = common::fake_donor(common::Donation::Bytes(stream)).to_string();
    let mut args = vec![
        "clone",
        "--pod-name",
        "mysql-1",
        "--data-dir",
        data.to_str().unwrap(),
        "--donor",
        &donor,
        "--max-attempts",
        "1",
        "--donor-wait",
        "1s",
    ];
    args.extend_from_slice(extra);
    let out = std::process::Command::new(common::AGENT)
        .args(&args)
        .output()
        .unwrap();
    assert!(
        list_dir(&outside).unwrap().is_empty(),
        "something was written outside the data dir"
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        list_dir(&data).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_hostile_streams_are_refused() {
    use xbstream::{Chunk, FLAG_IGNORABLE, encode_file};
    let file = |path: &str, data: &[u8]| {
        let mut s = Vec::new();
        encode_file(path, data, &mut s);
        s
    };
    let chunks = |list: &[Chunk]| {
        let mut s = Vec::new();
        list.iter().for_each(|c| c.encode(&mut s));
        s
    };
    let mut crc = file("ibdata1", b"pages");
    crc[40] ^= 0xff;
    let mut oversized = file("ibdata1", b"x");
    oversized[21..29].copy_from_slice(&(1u64 << 62).to_le_bytes());
    let whole = [
        file("ibdata1", &[7u8; 4096]),
        file("xtrabackup_checkpoints", b"backup_type = full-backuped\n"),
    ]
    .concat();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "absolute path",
            file("/etc/cron.d/evil", b"x"),
            "absolute path",
        ),
        (
            "parent component",
            file("../outside/evil", b"x"),
            "component starting with '.'",
        ),
        (
            "through a file",
            [file("db", b"x"), file("db/t.ibd", b"x")].concat(),
            "not a directory",
        ),
        ("crc mismatch", crc, "checksum mismatch"),
        (
            "truncated inside a chunk",
            whole[..whole.len() - 100].to_vec(),
            "truncated",
        ),
        (
            "truncated at a chunk boundary",
            whole[..4096 + 41].to_vec(),
            "never closed",
        ),
        ("oversized length", oversized, "exceeds"),
        (
            "unknown type",
            chunks(&[Chunk::Other {
                path: "x",
                kind: b'Z',
                flags: 0,
                data: b"",
            }]),
            "unknown chunk type",
        ),
        (
            "a file sent twice",
            [file("ibdata1", b"a"), file("ibdata1", b"b")].concat(),
            "sent twice",
        ),
        (
            "plain text",
            b"Ncat: Connection refused.\n".to_vec(),
            "not an xbstream",
        ),
        // Well-formed, even with an ignorable unknown chunk, but not a whole backup.
        (
            "ignorable chunk, no backup",
            [
                chunks(&[Chunk::Other {
                    path: "x",
                    kind: b'Z',
                    flags: FLAG_IGNORABLE,
                    data: b"meta",
                }]),
                whole.clone(),
            ]
            .concat(),
            "cut short",
        ),
    ];
    for (what, stream, needle) in cases {
        let (code, stderr, left) = clone_from(stream, &[]);
        assert_eq!(code, 1, "{what}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{what}: expected {needle:?} in {stderr}"
        );
        assert_eq!(left, [IN_PROGRESS_MARKER], "{what}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_a_silent_donor_trips_the_stall_timeout() {
    for donation in [
        common::Donation::BytesThenSilence(Vec::new()),
        common::Donation::BytesThenSilence(xbstream::MAGIC.to_vec()),
    ] {
        let root = tempfile::tempdir().unwrap();
        let donor = common::fake_donor(donation).to_string();
        let started = Instant::now();
        let out = std::process::Command::new(common::AGENT)
            .args([
                "clone",
                "--pod-name",
                "mysql-1",
                "--data-dir",
                root.path().to_str().unwrap(),
            ])
            .args([
                "--donor",
                &donor,
                "--max-attempts",
                "1",
                "--stall-timeout",
                "2s",
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("the donor said nothing for 2s")
                || stderr.contains("the donor stalled (see --stall-timeout, 2s)"),
            "{stderr}"
        );
        assert!(started.elapsed() < Duration::from_secs(20));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_garbage_coordinates_keep_the_sidecar_up_and_refusing() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(
        root.path().join("xtrabackup_binlog_info"),
        "garbage\twithout a position\n",
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut sidecar = tokio::process::Command::new(common::AGENT)
        .args([
            "serve-backup",
            "--pod-name",
            "mysql-1",
            "--data-dir",
            root.path().to_str().unwrap(),
        ])
        .args(["--listen", &listen, "--http-listen", "127.0.0.1:0"])
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let answer = loop {
        match TcpStream::connect(&listen).await {
            Ok(socket) => break String::from_utf8(read_all(socket).await).unwrap(),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    assert!(
        answer.starts_with(&format!("{LINE_PREFIX}NOT-READY ")),
        "{answer:?}"
    );
    assert!(
        answer.contains("xtrabackup_binlog_info") && answer.contains("not a number"),
        "{answer:?}"
    );
    sigterm(sidecar.id().unwrap());
    let status = tokio::time::timeout(PROMPTLY, sidecar.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}
