//! The backup server's contract on real pods: compatibility with the tutorial's
//! `ncat | xbstream` clients, cloning from the tutorial's own ncat sidecar, and readiness.
//! Busy answers, disconnecting clients and SIGTERM are rows of the fault matrix (faults.rs).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{eventually, read, spec};
use mysql_agent::protocol::{INFO_ENTRY, LINE_PREFIX, STATUS_ENTRY};
use mysql_agent::xbstream::{self, Decoder, Flavor};
use mysql_agent_harness::{BACKUP_PORT, Cluster, run_to_end};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::process::Command;

/// A primary with enough rows that a backup outlasts the socket buffers.
async fn primary_with_data(service: &str, subnet: u8) -> Cluster {
    let mut cluster = Cluster::create(spec(service, subnet)).await.unwrap();
    cluster.scale_to(1).await.unwrap();
    cluster
        .primary()
        .exec(
            "CREATE DATABASE test; USE test; CREATE TABLE t (id INT PRIMARY KEY, pad CHAR(200)); \
             INSERT INTO t SELECT seq, REPEAT('x', 200) FROM seq_1_to_20000",
        )
        .await
        .unwrap();
    cluster
}

async fn read_all(mut socket: TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    socket.read_to_end(&mut out).await.unwrap();
    out
}

/// Runs a shell pipeline, as the tutorial's clients do, and requires it to succeed in time.
async fn sh_ok(script: &str) {
    let mut sh = Command::new("sh");
    sh.args(["-c", script]);
    let status = run_to_end(sh, Duration::from_secs(120)).await.unwrap();
    assert!(status.success(), "{script}: {status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tutorial_clients_still_work_with_ncat_and_mbstream() {
    let cluster = primary_with_data("ncat", 6).await;
    let dir = tempfile::tempdir().unwrap();
    let pipeline = format!(
        "ncat --recv-only {} {BACKUP_PORT} | mbstream -x -C {}",
        cluster.primary().addr,
        dir.path().display()
    );
    sh_ok(&pipeline).await;
    for file in ["xtrabackup_checkpoints", "xtrabackup_info", "test/t.frm"] {
        assert!(dir.path().join(file).is_file(), "{file} missing");
    }
    // The agent's status entry is one more small file to such a client.
    let status_file = read(&dir.path().join(STATUS_ENTRY));
    assert!(status_file.contains("status = completed"), "{status_file}");

    let mut prepare = Command::new("mariadb-backup");
    prepare
        .arg("--prepare")
        .arg(format!("--target-dir={}", dir.path().display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    assert!(
        run_to_end(prepare, Duration::from_secs(120))
            .await
            .unwrap()
            .success()
    );
    // A table created since the last checkpoint travels as t.new; prepare makes it t.ibd.
    assert!(dir.path().join("test/t.ibd").is_file());
    cluster.stop().await.unwrap();
}

/// Relative path and content of every file under `dir`.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let content = std::fs::read(&path).unwrap();
                files.insert(path.strip_prefix(dir).unwrap().to_owned(), content);
            }
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread")]
async fn the_native_extractor_matches_mbstream_on_a_real_stream() {
    let cluster = primary_with_data("mbstream", 9).await;
    let work = tempfile::tempdir().unwrap();
    let stream = work.path().join("backup.xbs");
    sh_ok(&format!(
        "ncat --recv-only {} {BACKUP_PORT} > {}",
        cluster.primary().addr,
        stream.display()
    ))
    .await;
    cluster.stop().await.unwrap();

    let by_mbstream = work.path().join("mbstream");
    std::fs::create_dir(&by_mbstream).unwrap();
    sh_ok(&format!(
        "mbstream -x -C {} < {}",
        by_mbstream.display(),
        stream.display()
    ))
    .await;

    let by_agent = work.path().join("agent");
    std::fs::create_dir(&by_agent).unwrap();
    let bytes = std::fs::read(&stream).unwrap();
    let summary = xbstream::extract(
        Decoder::new(Flavor::MariaDb)
            .with_header(INFO_ENTRY)
            .with_trailer(STATUS_ENTRY),
        &by_agent,
        &bytes[..],
    )
    .unwrap();

    let mut expected = tree(&by_mbstream);
    // mbstream writes the agent's info and status entries as files; the agent keeps them.
    let status = expected.remove(Path::new(STATUS_ENTRY)).unwrap();
    assert_eq!(status, summary.trailer.unwrap().contents);
    let info = expected.remove(Path::new(INFO_ENTRY)).unwrap();
    assert_eq!(Some(info), summary.header);
    let got = tree(&by_agent);
    assert!(expected.len() > 100, "{} files", expected.len());
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (path, content) in &expected {
        assert!(got[path] == *content, "{} differs", path.display());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replica_clones_from_the_tutorials_ncat_sidecar() {
    // mysql-0 runs the tutorial's sidecar (ncat + the backup tool), not the agent: the
    // first step of a pod-by-pod migration.
    let mut cluster = Cluster::create(spec("legacy", 7)).await.unwrap();
    let primary = cluster.new_pod().unwrap();
    let pod = cluster.pod_mut(primary);
    pod.init_config().await.unwrap();
    pod.start_mysqld().await.unwrap();
    pod.exec("CREATE DATABASE test; CREATE TABLE test.t (id INT PRIMARY KEY); INSERT INTO test.t VALUES (1),(2),(3)")
        .await
        .unwrap();
    let tutorial_sidecar = format!(
        "ncat --listen --keep-open --send-only --max-conns=1 {addr} {BACKUP_PORT} -c \
         'mariadb-backup --backup --slave-info --stream=xbstream --datadir={data} --host={addr} --user=root 2>/dev/null'",
        addr = pod.addr,
        data = pod.data_dir().display()
    );
    let mut ncat = Command::new("sh")
        .args(["-c", &format!("exec {tutorial_sidecar}")])
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // A replica whose clone insists on the agent's end-of-stream entry refuses it…
    let replica = cluster.new_pod().unwrap();
    let pod = cluster.pod_mut(replica);
    pod.init_config().await.unwrap();
    let refused = pod
        .clone_data(&["--require-end-marker", "--max-attempts", "1"])
        .await
        .unwrap_err();
    assert!(
        format!("{refused:#}").contains("--require-end-marker"),
        "{refused:#}"
    );
    assert_eq!(
        mysql_agent::fsutil::list_dir(&pod.data_dir()).unwrap(),
        [mysql_agent::clone::IN_PROGRESS_MARKER]
    );

    // …and by default accepts it, because the backup's own completion files are there.
    pod.clone_data(&[]).await.unwrap();
    let log = read(&pod.log("clone"));
    assert!(log.contains("no end-of-stream entry"), "{log}");
    pod.start_mysqld().await.unwrap();
    pod.start_sidecar(&[]).await.unwrap();
    cluster
        .primary()
        .exec("INSERT INTO test.t VALUES (4)")
        .await
        .unwrap();
    cluster
        .pod(1)
        .wait_row_count("test.t", 4, Duration::from_secs(60))
        .await
        .unwrap();

    ncat.kill().await.unwrap();
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_refuses_backups_until_replication_is_configured() {
    let mut cluster = Cluster::create(spec("notready", 8)).await.unwrap();
    cluster.scale_to(2).await.unwrap();
    let replica = cluster.pod_mut(1);
    assert!(replica.stop_sidecar().await.unwrap().success());
    replica.stop_mysqld().await.unwrap();
    // Without its mysqld the sidecar cannot check replication: it waits, up and refusing.
    let log = replica.log("serve-backup");
    let configured = || read(&log).matches("replication is configured").count();
    let configured_before = configured();
    replica.start_sidecar(&[]).await.unwrap();
    let addr = replica.backup_addr();
    let answer = loop {
        match TcpStream::connect(&addr).await {
            Ok(socket) => break String::from_utf8(read_all(socket).await).unwrap(),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    assert!(
        answer.starts_with(&format!("{LINE_PREFIX}NOT-READY ")),
        "{answer:?}"
    );

    replica.start_mysqld().await.unwrap();
    eventually(
        Duration::from_secs(60),
        "replication to be found configured",
        || configured() > configured_before,
    )
    .await;
    let stream = read_all(TcpStream::connect(&addr).await.unwrap()).await;
    assert_eq!(&stream[..8], xbstream::MAGIC);
    cluster.stop().await.unwrap();
}
