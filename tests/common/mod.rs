//! What the integration tests share: cluster specs, the agent binary, process and stream probes.
#![allow(dead_code)] // each test binary uses a different part

pub mod fake_mysql;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mysql_agent_harness::ClusterSpec;
use mysql_agent_harness::s3::S3Server;

pub const AGENT: &str = env!("CARGO_BIN_EXE_mysql-agent");

/// The binary the adversarial tests run: this build, or `MYSQL_AGENT_UNDER_TEST` (an older
/// build, to see a test fail on the code it was written against).
pub fn agent_under_test() -> String {
    std::env::var("MYSQL_AGENT_UNDER_TEST").unwrap_or_else(|_| AGENT.to_owned())
}

/// A cluster of its own for one test: a distinct service name and subnet, so tests may run
/// at the same time.
pub fn spec(service: &str, subnet: u8) -> ClusterSpec {
    ClusterSpec {
        service: service.into(),
        subnet,
        root: Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("clusters")
            .join(service),
        agent: PathBuf::from(AGENT),
        secured: false,
    }
}

/// A cluster with passwords and a backup secret from files, as a hardened StatefulSet runs.
pub fn secured_spec(service: &str, subnet: u8) -> ClusterSpec {
    ClusterSpec {
        secured: true,
        ..spec(service, subnet)
    }
}

/// Pids of backup tools running `--backup` against `data_dir`.
pub fn backup_tool_pids(data_dir: &Path) -> Vec<i32> {
    let wanted = format!("--datadir={}", data_dir.display());
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let has = |s: &str| args.contains(&s.as_bytes());
        if has("--backup") && has(&wanted) {
            pids.push(pid);
        }
    }
    pids
}

/// Polls `check` until it holds or `timeout` passes.
pub async fn eventually(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

/// Adds about `mib` MiB of rows to `test.big` on `pod` (1 KiB a row), so that a backup of it
/// takes long enough for a fault to land mid-stream.
pub async fn fill(pod: &mysql_agent_harness::Pod, mib: u64) {
    pod.exec("CREATE DATABASE IF NOT EXISTS test; CREATE TABLE IF NOT EXISTS test.big (id INT PRIMARY KEY, pad VARCHAR(1100))")
        .await
        .unwrap();
    let start: Vec<u64> = pod
        .query_rows("SELECT COALESCE(MAX(id), 0) FROM test.big")
        .await
        .unwrap();
    let (first, rows) = (start[0] + 1, mib * 1024);
    const BATCH: u64 = 16 * 1024;
    let mut from = first;
    while from < first + rows {
        let to = (from + BATCH - 1).min(first + rows - 1);
        pod.exec(&format!(
            "USE test; INSERT INTO big SELECT seq, REPEAT(MD5(seq), 32) FROM seq_{from}_to_{to}"
        ))
        .await
        .unwrap();
        from = to + 1;
    }
}

pub use mysql_agent_harness::dir_size;

/// Waits until a clone's staging dir holds `bytes`: the stream is flowing, the fault will
/// land mid-stream.
pub async fn wait_mid_stream(pod: &mysql_agent_harness::Pod, bytes: u64) {
    let staging = pod.data_dir().join(mysql_agent::clone::STAGING_DIR);
    eventually(
        Duration::from_secs(120),
        "the clone to be mid-stream",
        || dir_size(&staging) >= bytes,
    )
    .await;
}

pub fn sigkill(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

pub fn sigterm(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
}

/// What a fake donor does with each connection.
#[derive(Clone)]
pub enum Donation {
    /// Sends these bytes and closes.
    Bytes(Vec<u8>),
    /// Sends these bytes, then holds the connection open without sending more.
    BytesThenSilence(Vec<u8>),
    /// Sends these bytes, then `repeat` again and again until the client leaves.
    Endless { head: Vec<u8>, repeat: Vec<u8> },
    /// Sends these bytes, then one byte every `every` until the client leaves.
    Drip { head: Vec<u8>, every: Duration },
}

/// A backup server that is not one: serves the same answer to every connection, on a port of
/// its own on 127.0.0.1. It lives as long as the test process.
pub fn fake_donor(donation: Donation) -> std::net::SocketAddr {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let donation = donation.clone();
            std::thread::spawn(move || match donation {
                Donation::Bytes(bytes) => {
                    let _ = stream.write_all(&bytes);
                }
                Donation::BytesThenSilence(bytes) => {
                    let _ = stream.write_all(&bytes);
                    // Holding the connection open is the point: nothing to wait for.
                    std::thread::sleep(Duration::from_secs(600));
                }
                Donation::Endless { head, repeat } => {
                    let _ = stream.write_all(&head);
                    while stream.write_all(&repeat).is_ok() {}
                }
                Donation::Drip { head, every } => {
                    let _ = stream.write_all(&head);
                    // The pace of the drip is what is being tested.
                    while stream.write_all(b"x").is_ok() {
                        std::thread::sleep(every);
                    }
                }
            });
        }
    });
    addr
}

/// GET `path` from an HTTP endpoint: the status and the body.
pub async fn http_get(addr: &str, path: &str) -> (u16, String) {
    let url = format!("http://{addr}{path}");
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let mut response = agent
            .get(&url)
            .call()
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = response.status().as_u16();
        (status, response.body_mut().read_to_string().unwrap())
    })
    .await
    .unwrap()
}

/// Which S3 implementation a test's store runs.
pub enum S3Kind {
    Garage,
    SeaweedFs,
}

/// An S3 server with a bucket `backups`, on a loopback address of its own (subnet `subnet`,
/// host .250), its files under the tests' tmp dir in `name`.
pub async fn s3_server(kind: S3Kind, name: &str, subnet: u8) -> S3Server {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("s3").join(name);
    let addr = std::net::Ipv4Addr::new(127, 0, subnet, 250);
    let agent = Path::new(AGENT);
    match kind {
        S3Kind::Garage => S3Server::garage(&dir, addr, "backups", agent).await,
        S3Kind::SeaweedFs => S3Server::seaweedfs(&dir, addr, "backups", agent).await,
    }
    .unwrap()
}

/// [`s3_server`] running Garage, the S3 server most tests use.
pub async fn garage(name: &str, subnet: u8) -> S3Server {
    s3_server(S3Kind::Garage, name, subnet).await
}
