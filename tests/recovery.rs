//! mysql-0 never comes back empty: a primary that lost its volume is brought back the
//! StatefulSet's way (init-config, clone, mysqld, serve-backup, no extra flag) on real MariaDB
//! pods, and recovers every row from the most advanced replica, which then replicate from it.

mod common;

use std::time::{Duration, Instant};

use common::{http_get, read, spec};
use mysql_agent::clone::DONE_MARKER;
use mysql_agent_harness::{Cluster, Pod};

const CATCH_UP: Duration = Duration::from_secs(90);

async fn count(pod: &Pod) -> u64 {
    pod.row_count("app.rows").await.unwrap()
}

/// A cluster whose mysql-0 booted first, alone: returns it with how long its clone took.
async fn first_boot(service: &str, subnet: u8) -> (Cluster, Duration) {
    let mut cluster = Cluster::create(spec(service, subnet)).await.unwrap();
    let ordinal = cluster.new_pod().unwrap();
    let pod = cluster.pod_mut(ordinal);
    pod.init_config().await.unwrap();
    let started = Instant::now();
    pod.clone_data(&[]).await.unwrap();
    let clone_took = started.elapsed();
    pod.start_mysqld().await.unwrap();
    pod.start_sidecar(&[]).await.unwrap();
    cluster.scale_to(3).await.unwrap();
    cluster
        .primary()
        .exec("CREATE DATABASE app; CREATE TABLE app.rows (id INT PRIMARY KEY, note VARCHAR(64))")
        .await
        .unwrap();
    (cluster, clone_took)
}

async fn insert(pod: &Pod, from: u32, to: u32) {
    let values: Vec<String> = (from..to).map(|i| format!("({i}, 'row {i}')")).collect();
    pod.exec(&format!("INSERT INTO app.rows VALUES {}", values.join(",")))
        .await
        .unwrap();
}

/// Deletes mysql-0 with its volume and brings it back as the StatefulSet would.
async fn lose_and_restart_primary(cluster: &mut Cluster) {
    cluster.pod_mut(0).lose_volume().await.unwrap();
    cluster.start_pod(0).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_primary_that_lost_its_volume_recovers_every_row_from_its_replicas() {
    let (mut cluster, first_clone) = first_boot("recovery", 71).await;
    // A first mysql-0 has no replica to ask: it waits only the short --peer-wait.
    let log = read(&cluster.primary().log("clone"));
    assert!(log.contains("a first boot"), "{log}");
    assert!(
        first_clone < Duration::from_secs(15),
        "first boot took {first_clone:?}"
    );

    insert(cluster.primary(), 0, 200).await;
    cluster
        .wait_replicated("app.rows", 200, CATCH_UP)
        .await
        .unwrap();

    // What the primary asks: a replica's applied position on its HTTP port.
    let (code, body) = http_get(&cluster.pod(1).http_addr(), "/status").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""kind":"mariadb-gtid""#), "{body}");

    lose_and_restart_primary(&mut cluster).await;
    let primary = cluster.primary();
    assert_eq!(count(primary).await, 200, "the recovered primary lost rows");
    let log = read(&primary.log("clone"));
    assert!(log.contains("cloning from the most advanced"), "{log}");
    let record = read(&primary.data_dir().join(DONE_MARKER));
    assert!(
        record.contains("recovered_primary_from = donor mysql-"),
        "{record}"
    );
    assert!(record.contains("binlog_state = 0-"), "{record}");
    // The seed took: the new binary log continues the replicas' history.
    let seeded = record
        .lines()
        .find_map(|l| l.strip_prefix("binlog_state = "))
        .unwrap()
        .to_owned();
    let state: Vec<String> = primary
        .query_rows("SELECT @@GLOBAL.gtid_binlog_state")
        .await
        .unwrap();
    assert_eq!(
        state,
        [seeded],
        "the recovered primary's binary log does not continue the history"
    );

    // New writes reach both replicas, nothing skipped or applied twice.
    insert(cluster.primary(), 200, 250).await;
    cluster
        .wait_replicated("app.rows", 250, CATCH_UP)
        .await
        .unwrap();
    for pod in cluster.pods() {
        assert_eq!(count(pod).await, 250, "{}", pod.name);
        let ids: Vec<u32> = pod
            .query_rows("SELECT id FROM app.rows ORDER BY id")
            .await
            .unwrap();
        assert_eq!(ids, (0..250).collect::<Vec<_>>(), "{}", pod.name);
    }
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_most_advanced_replica_is_chosen_and_the_lagging_one_catches_up() {
    let (mut cluster, _) = first_boot("recovery-lag", 72).await;
    insert(cluster.primary(), 0, 10).await;
    cluster
        .wait_replicated("app.rows", 10, CATCH_UP)
        .await
        .unwrap();
    // mysql-1 receives but stops applying: mysql-2 is ahead.
    cluster.pod(1).exec("STOP SLAVE SQL_THREAD").await.unwrap();
    insert(cluster.primary(), 10, 40).await;
    cluster
        .pod(2)
        .wait_row_count("app.rows", 40, CATCH_UP)
        .await
        .unwrap();
    assert_eq!(count(cluster.pod(1)).await, 10);

    lose_and_restart_primary(&mut cluster).await;
    assert_eq!(count(cluster.primary()).await, 40);
    let log = read(&cluster.primary().log("clone"));
    let mysql2 = &cluster.pod(2).host;
    assert!(
        log.contains(&format!("chosen=[\"{mysql2}\"]")),
        "mysql-2 was not the one chosen: {log}"
    );
    assert!(log.contains(&format!("source=donor {mysql2}")), "{log}");

    // The lagging replica applies what it had received, then the new primary's writes.
    cluster.pod(1).exec("START SLAVE SQL_THREAD").await.unwrap();
    insert(cluster.primary(), 40, 45).await;
    cluster
        .wait_replicated("app.rows", 45, CATCH_UP)
        .await
        .unwrap();
    for pod in cluster.pods() {
        assert_eq!(count(pod).await, 45, "{}", pod.name);
    }
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn diverged_replicas_are_named_and_nothing_is_chosen() {
    let (mut cluster, _) = first_boot("recovery-fork", 73).await;
    insert(cluster.primary(), 0, 5).await;
    cluster
        .wait_replicated("app.rows", 5, CATCH_UP)
        .await
        .unwrap();
    // mysql-2's history forks: the same sequence number, written by another server.
    let forked = cluster.pod(2);
    forked.exec("STOP SLAVE").await.unwrap();
    let pos: Vec<String> = forked
        .query_rows("SELECT @@GLOBAL.gtid_slave_pos")
        .await
        .unwrap();
    let (_, seq) = pos[0].rsplit_once('-').unwrap();
    forked
        .exec(&format!("SET GLOBAL gtid_slave_pos = '0-999-{seq}'"))
        .await
        .unwrap();

    let primary = cluster.pod_mut(0);
    primary.lose_volume().await.unwrap();
    primary.init_config().await.unwrap();
    let err = format!("{:#}", primary.clone_data(&[]).await.unwrap_err());
    let log = read(&primary.log("clone"));
    assert!(log.contains("histories have diverged"), "{err}\n{log}");
    for pod in ["mysql-1.recovery-fork", "mysql-2.recovery-fork"] {
        assert!(log.contains(pod), "{pod} not named: {log}");
    }
    // Nothing was written: mysqld would not start on anything the agent guessed.
    let left: Vec<_> = std::fs::read_dir(primary.data_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    cluster.stop().await.unwrap();
}

/// The same recovery in the hardened StatefulSet: passwords and the backup secret from files,
/// TLS on 3307 and for replication (every agent with `--tls-dir`, through its environment).
#[tokio::test(flavor = "multi_thread")]
async fn a_secured_tls_primary_recovers_from_its_replicas() {
    let mut cluster = Cluster::create(common::secured_spec("recovery-tls", 74))
        .await
        .unwrap();
    cluster.enable_tls().unwrap();
    cluster.scale_to(3).await.unwrap();
    cluster
        .primary()
        .exec("CREATE DATABASE app; CREATE TABLE app.rows (id INT PRIMARY KEY, note VARCHAR(64))")
        .await
        .unwrap();
    insert(cluster.primary(), 0, 100).await;
    cluster
        .wait_replicated("app.rows", 100, CATCH_UP)
        .await
        .unwrap();

    lose_and_restart_primary(&mut cluster).await;
    assert_eq!(count(cluster.primary()).await, 100);
    assert!(read(&cluster.primary().log("clone")).contains("cloning from the most advanced"));
    insert(cluster.primary(), 100, 110).await;
    cluster
        .wait_replicated("app.rows", 110, CATCH_UP)
        .await
        .unwrap();
    for pod in cluster.replicas() {
        assert_eq!(
            pod.replica_field("Master_SSL_Verify_Server_Cert")
                .await
                .unwrap()
                .as_deref(),
            Some("Yes"),
            "{}",
            pod.name
        );
    }
    cluster.stop().await.unwrap();
}
