//! What the agent shows of itself, on real pods: readiness that follows replication, metrics
//! that move with the backups served, progress lines during a clone, JSON logs, and the
//! termination message of a mode that fails.

mod common;

use std::time::{Duration, Instant};

use common::{AGENT, fill, http_get, read, spec};
use mysql_agent_harness::{Cluster, Pod};

const SOON: Duration = Duration::from_secs(60);

/// Polls `/readyz` of `pod` until its status is `status` and its body holds `needle`.
async fn wait_readyz(pod: &Pod, status: u16, needle: &str) -> String {
    let body = wait_readyz_body(pod, status, needle).await;
    // The network learns the class of a failure, never mysqld's or replication's text.
    let class_only = body == "ready\n"
        || body
            .strip_prefix("not ready: ")
            .and_then(|class| class.strip_suffix('\n'))
            .is_some_and(|class| !class.is_empty() && !class.contains(' '));
    assert!(
        class_only,
        "{}: /readyz says more than a class: {body:?}",
        pod.name
    );
    body
}

/// Waits until the sidecar of `pod` has logged `needle`.
async fn wait_sidecar_log(pod: &Pod, needle: &str) {
    let log = pod.log("serve-backup");
    common::eventually(SOON, needle, || read(&log).contains(needle)).await;
}

async fn wait_readyz_body(pod: &Pod, status: u16, needle: &str) -> String {
    let deadline = Instant::now() + SOON;
    loop {
        let (got, body) = http_get(&pod.http_addr(), "/readyz").await;
        if got == status && body.contains(needle) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{}: /readyz is {got} {body:?}, wanted {status} with {needle:?}",
            pod.name
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The value of a metric line in a scrape (0 when absent).
fn metric(scrape: &str, name: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_follows_replication() {
    let mut cluster = Cluster::create(spec("obs1", 31)).await.unwrap();
    cluster.scale_to(2).await.unwrap();
    cluster
        .primary()
        .exec("CREATE DATABASE test; CREATE TABLE test.t (i INT PRIMARY KEY)")
        .await
        .unwrap();
    let (primary, replica) = (cluster.pod(0), cluster.pod(1));
    assert_eq!(
        http_get(&primary.http_addr(), "/healthz").await,
        (200, "ok\n".into())
    );
    wait_readyz(primary, 200, "ready").await;
    wait_readyz(replica, 200, "ready").await;

    // A stopped SQL thread: reads would go stale, so the replica leaves mysql-read.
    replica.exec("STOP SLAVE SQL_THREAD").await.unwrap();
    wait_readyz(replica, 503, "not ready: replication-stopped").await;
    wait_sidecar_log(replica, "the replication SQL thread is No").await;
    replica.exec("START SLAVE SQL_THREAD").await.unwrap();
    wait_readyz(replica, 200, "ready").await;

    // A replica that falls behind more than --max-replication-lag.
    let replica = cluster.pod_mut(1);
    assert!(replica.stop_sidecar().await.unwrap().success());
    replica
        .start_sidecar(&["--max-replication-lag", "2s"])
        .await
        .unwrap();
    replica
        .exec("STOP SLAVE; CHANGE MASTER TO MASTER_DELAY = 12; START SLAVE")
        .await
        .unwrap();
    wait_readyz(cluster.pod(1), 200, "ready").await;
    cluster
        .primary()
        .exec("INSERT INTO test.t VALUES (1)")
        .await
        .unwrap();
    let body = wait_readyz(cluster.pod(1), 503, "replication-lagging").await;
    assert_eq!(body, "not ready: replication-lagging\n");
    wait_sidecar_log(cluster.pod(1), "behind the primary (the limit is 2 s)").await;
    let replica = cluster.pod(1);
    replica
        .exec("STOP SLAVE; CHANGE MASTER TO MASTER_DELAY = 0; START SLAVE")
        .await
        .unwrap();
    wait_readyz(replica, 200, "ready").await;
    replica.wait_row_count("test.t", 1, SOON).await.unwrap();

    // mysqld gone: not ready, and the sidecar itself stays alive.
    let replica = cluster.pod_mut(1);
    replica.stop_mysqld().await.unwrap();
    wait_readyz(cluster.pod(1), 503, "not ready: mysqld-down").await;
    wait_sidecar_log(cluster.pod(1), "mysqld does not answer").await;
    assert_eq!(
        http_get(&cluster.pod(1).http_addr(), "/healthz").await.0,
        200
    );
    cluster.pod_mut(1).start_mysqld().await.unwrap();
    wait_readyz(cluster.pod(1), 200, "ready").await;
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_and_progress_move_with_a_clone() {
    let mut cluster = Cluster::create(spec("obs2", 32)).await.unwrap();
    cluster.scale_to(1).await.unwrap();
    fill(cluster.primary(), 48).await;
    let primary = cluster.pod_mut(0);
    assert!(primary.stop_sidecar().await.unwrap().success());
    primary
        .start_sidecar(&["--progress-interval", "200ms"])
        .await
        .unwrap();
    let before = http_get(&cluster.primary().http_addr(), "/metrics").await.1;
    assert_eq!(
        metric(&before, "mysql_agent_backups_total{result=\"completed\"}"),
        0.0
    );
    assert_eq!(
        metric(&before, "mysql_agent_build_info{version=\"0.1.0\"}"),
        1.0
    );

    let n = cluster.new_pod().unwrap();
    let pod = cluster.pod_mut(n);
    pod.init_config().await.unwrap();
    pod.clone_data(&["--progress-interval", "200ms"])
        .await
        .unwrap();
    pod.start_mysqld().await.unwrap();
    pod.start_sidecar(&[]).await.unwrap();
    pod.wait_replication_configured(1).await.unwrap();

    // Progress lines on both sides, with the donor's estimate.
    let clone_log = read(&cluster.pod(n).log("clone"));
    let receiving: Vec<&str> = clone_log
        .lines()
        .filter(|l| l.contains(" receiving: "))
        .collect();
    assert!(!receiving.is_empty(), "{clone_log}");
    assert!(
        receiving
            .iter()
            .any(|l| l.contains(" MiB of about ") && l.contains(" files, ")),
        "{receiving:?}"
    );
    let donor_log = read(&cluster.primary().log("serve-backup"));
    assert!(
        donor_log
            .lines()
            .any(|l| l.contains(" streaming: ") && l.contains(" MiB of about ")),
        "{donor_log}"
    );

    let after = http_get(&cluster.primary().http_addr(), "/metrics").await.1;
    assert_eq!(
        metric(&after, "mysql_agent_backups_total{result=\"completed\"}"),
        1.0,
        "{after}"
    );
    assert!(
        metric(&after, "mysql_agent_backup_stream_bytes_total") > 48.0 * 1024.0 * 1024.0,
        "{after}"
    );
    assert_eq!(
        metric(&after, "mysql_agent_backup_duration_seconds_count"),
        1.0
    );
    assert_eq!(metric(&after, "mysql_agent_backups_in_progress"), 0.0);
    assert!(metric(&after, "mysql_agent_last_backup_success_timestamp_seconds") > 1.7e9);
    assert_eq!(metric(&after, "mysql_agent_mysql_up"), 1.0);

    // The replica's own view of its replication.
    let deadline = Instant::now() + SOON;
    loop {
        let replica = http_get(&cluster.pod(n).http_addr(), "/metrics").await.1;
        let ok = metric(&replica, "mysql_agent_replication_configured") == 1.0
            && metric(&replica, "mysql_agent_replication_io_thread_running") == 1.0
            && metric(&replica, "mysql_agent_replication_sql_thread_running") == 1.0
            && metric(&replica, "mysql_agent_replication_lag_seconds") == 0.0;
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "{replica}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    cluster.stop().await.unwrap();
}

#[test]
fn a_failing_mode_writes_its_termination_message_and_json_logs() {
    let dir = tempfile::tempdir().unwrap();
    let termination = dir.path().join("termination-log");
    let out = std::process::Command::new(AGENT)
        .args([
            "--log-format",
            "json",
            "clone",
            "--pod-name",
            "mysql",
            "--data-dir",
        ])
        .arg(dir.path())
        .arg("--termination-log")
        .arg(&termination)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let message = std::fs::read_to_string(&termination).unwrap();
    assert_eq!(
        message,
        "invalid configuration: pod name \"mysql\" has no ordinal suffix (expected <statefulset>-<ordinal>, for example mysql-2)"
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = lines.last().unwrap();
    assert_eq!(last["level"], "ERROR");
    assert_eq!(last["fields"]["message"], "mysql-agent failed");
    assert_eq!(last["fields"]["error"], message.as_str());
}
