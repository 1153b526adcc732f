//! What the integration tests share: cluster specs, the agent binary, process and stream probes.
#![allow(dead_code)] // each test binary uses a different part

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mysql_agent_harness::ClusterSpec;

pub const AGENT: &str = env!("CARGO_BIN_EXE_mysql-agent");

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
