//! The tutorial, end to end, on a loopback cluster: three pods, a write on the primary read
//! back from every replica, then a scale to four where mysql-3 clones from mysql-2.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use mysql_agent_harness::{Cluster, ClusterSpec};

/// Run the Kubernetes tutorial's replicated MySQL on loopback pods driven by mysql-agent.
#[derive(Parser)]
struct Args {
    /// The mysql-agent binary
    #[arg(long, default_value = "target/release/mysql-agent")]
    agent: PathBuf,
    /// Where the pods' volumes and logs go (emptied first, kept afterwards)
    #[arg(long, default_value = "target/demo")]
    root: PathBuf,
    /// Run as a hardened StatefulSet would: passwords and a backup secret from files, the
    /// replication and backup accounts created by the primary's agent
    #[arg(long)]
    secure: bool,
}

const REPLICATION_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let spec = ClusterSpec {
        service: "mysql".into(),
        subnet: 0,
        root: std::path::absolute(&args.root)?,
        agent: std::path::absolute(&args.agent)?,
        secured: args.secure,
    };
    println!(
        "== mysql-agent demo: the tutorial's StatefulSet on loopback (pods in {})",
        spec.root.display()
    );
    let mut cluster = Cluster::create(spec).await?;
    let result = run(&mut cluster).await;
    println!("== stopping the pods (SIGTERM)");
    let stopped = cluster.stop_keeping_volumes().await;
    result?;
    stopped?;
    println!("== demo passed in {:.0?}", started.elapsed());
    Ok(())
}

async fn run(cluster: &mut Cluster) -> Result<()> {
    for _ in 0..3 {
        let t = Instant::now();
        cluster.scale_to(cluster.pods().len() as u32 + 1).await?;
        let pod = cluster.pods().last().unwrap();
        println!(
            "   {} ({}) ready in {:.1?}: init-config, clone, mysqld, serve-backup",
            pod.host,
            pod.addr,
            t.elapsed()
        );
    }

    println!("== writing on the primary (mysql -h mysql-0.mysql)");
    cluster
        .primary()
        .exec("CREATE DATABASE test; CREATE TABLE test.messages (message VARCHAR(250)); INSERT INTO test.messages VALUES ('hello')")
        .await?;
    check_replicas(cluster, 1).await?;

    println!("== kubectl scale --replicas=4: mysql-3 clones from mysql-2, a replica");
    let t = Instant::now();
    cluster.scale_to(4).await?;
    println!(
        "   mysql-3 ready in {:.1?}; its clone log: {}",
        t.elapsed(),
        cluster.pod(3).log("clone").display()
    );
    cluster
        .primary()
        .exec("INSERT INTO test.messages VALUES ('hello again')")
        .await?;
    check_replicas(cluster, 2).await
}

/// The tutorial's read check, on every replica (what `mysql -h mysql-read` reaches).
async fn check_replicas(cluster: &Cluster, rows: u64) -> Result<()> {
    cluster
        .wait_replicated("test.messages", rows, REPLICATION_TIMEOUT)
        .await?;
    for pod in cluster.replicas() {
        let messages: Vec<String> = pod
            .query_rows("SELECT message FROM test.messages ORDER BY message")
            .await?;
        let io = pod
            .replica_field("Slave_IO_Running")
            .await?
            .context("not a replica")?;
        let sql = pod
            .replica_field("Slave_SQL_Running")
            .await?
            .context("not a replica")?;
        let gtid = pod.replica_field("Using_Gtid").await?.unwrap_or_default();
        println!(
            "   {}: SELECT * FROM test.messages -> {:?} (IO {io}, SQL {sql}, Using_Gtid {gtid})",
            pod.host, messages
        );
    }
    Ok(())
}
