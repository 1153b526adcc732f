//! A primary that lost its volume recovers from its replicas: before mysqld may initialise an
//! empty data dir on ordinal 0, `clone` asks every replica's sidecar how far it has applied
//! the primary's history (`GET /status` on the HTTP port), and clones from the most advanced.
//!
//! - [`PeerStatus`]: what a sidecar reports, read from its monitor's last snapshot;
//! - [`compare`] and [`choose`]: the pure decision, which refuses to pick between replicas
//!   whose histories have diverged (each has transactions the other lacks);
//! - [`survey`]: the bounded wait for the replicas' answers.
//!
//! The reports only steer the choice: the clone itself goes over port 3307, authenticated as
//! any clone, and the recovered primary's coordinates come from the backup's own metadata.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::coordinates::Position;

/// Where a sidecar reports its replication state.
pub const STATUS_PATH: &str = "/status";
/// The sidecar's HTTP port in the StatefulSet (see `serve-backup --http-listen`).
pub const DEFAULT_HTTP_PORT: u16 = 8080;
/// One request to one sidecar, connection included: longer than the sidecar may take to
/// answer one (its check's bound and queue, see `http::STATUS_TIMEOUT`).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a replica that exists (it resolves and something listens) but gives no status
/// (busy, setting up, mysqld down) is waited for, past `--peer-wait`: it may hold the most
/// advanced data, so the primary neither starts empty nor chooses without it.
pub const PRESENT_PEER_WAIT: Duration = Duration::from_secs(120);
/// Pause between rounds of asking the replicas that have not answered yet.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// A status larger than this is not one.
pub const MAX_STATUS_BYTES: usize = 64 * 1024;

/// What a sidecar says about its pod on `/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub pod: String,
    /// SHOW SLAVE/REPLICA STATUS as last seen; `None` on a server that is not a replica, or
    /// before the first check.
    pub replication: Option<ReplicationState>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationState {
    pub source_host: String,
    pub io_running: String,
    pub sql_running: String,
    /// How far it has applied the primary's history (see
    /// [`crate::replication::ReplicaStatus::executed`]).
    pub executed: Option<Position>,
    /// The primary's binary log file it last applied from (names the primary's logs).
    pub source_log_file: String,
}

/// How two replicas' applied positions relate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relation {
    /// Ordered: one has applied a prefix of the other's history.
    Ordered(Ordering),
    /// Each has transactions the other lacks; why, for a human.
    Diverged(String),
}

/// Compares two applied positions of the same primary's history.
pub fn compare(a: &Position, b: &Position) -> Result<Relation> {
    match (a, b) {
        (Position::MariaDbGtid { gtid_pos: a }, Position::MariaDbGtid { gtid_pos: b }) => {
            Ok(compare_mariadb(&parse_mariadb(a)?, &parse_mariadb(b)?))
        }
        (Position::MysqlGtid { gtid_set: a }, Position::MysqlGtid { gtid_set: b }) => {
            Ok(compare_mysql(&parse_mysql(a)?, &parse_mysql(b)?))
        }
        (Position::File { file: fa, pos: pa }, Position::File { file: fb, pos: pb }) => {
            let (base_a, seq_a) = split_log_file(fa)?;
            let (base_b, seq_b) = split_log_file(fb)?;
            if base_a != base_b {
                return Ok(Relation::Diverged(format!(
                    "they applied from different binary logs ({fa} and {fb})"
                )));
            }
            Ok(Relation::Ordered((seq_a, pa).cmp(&(seq_b, pb))))
        }
        _ => bail!("one replicates with GTIDs and the other by file and position"),
    }
}

/// `domain → (server_id, seq_no)`, the last GTID of each replication domain.
type MariaDbState = BTreeMap<u32, (u32, u64)>;

fn parse_mariadb(list: &str) -> Result<MariaDbState> {
    let mut state = MariaDbState::new();
    for gtid in list.split(',').map(str::trim).filter(|g| !g.is_empty()) {
        let parts: Vec<&str> = gtid.split('-').collect();
        let [domain, server, seq] = parts[..] else {
            bail!("{gtid:?} is not a MariaDB GTID (domain-server-sequence)");
        };
        let number = |s: &str| -> Result<u64> {
            s.parse()
                .with_context(|| format!("{gtid:?} is not a MariaDB GTID"))
        };
        let domain = u32::try_from(number(domain)?).context("domain out of range")?;
        let server = u32::try_from(number(server)?).context("server id out of range")?;
        ensure!(
            state.insert(domain, (server, number(seq)?)).is_none(),
            "{list:?} names domain {domain} twice"
        );
    }
    Ok(state)
}

/// Per domain, the higher sequence number is further on; the same number from two different
/// servers, or one replica ahead in a domain and behind in another, is a fork.
fn compare_mariadb(a: &MariaDbState, b: &MariaDbState) -> Relation {
    let mut ahead = Vec::new();
    let mut behind = Vec::new();
    for domain in a
        .keys()
        .chain(b.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        let (sa, na) = a.get(domain).copied().unwrap_or((0, 0));
        let (sb, nb) = b.get(domain).copied().unwrap_or((0, 0));
        match na.cmp(&nb) {
            Ordering::Equal if na != 0 && sa != sb => {
                return Relation::Diverged(format!(
                    "in domain {domain} both are at sequence {na}, written by server {sa} on one and {sb} on the other"
                ));
            }
            Ordering::Equal => {}
            Ordering::Greater => ahead.push(*domain),
            Ordering::Less => behind.push(*domain),
        }
    }
    match (ahead.is_empty(), behind.is_empty()) {
        (true, true) => Relation::Ordered(Ordering::Equal),
        (false, true) => Relation::Ordered(Ordering::Greater),
        (true, false) => Relation::Ordered(Ordering::Less),
        (false, false) => Relation::Diverged(format!(
            "one is ahead in domain(s) {ahead:?} and behind in {behind:?}"
        )),
    }
}

/// `source uuid[:tag] → sorted, merged intervals` of a MySQL GTID set.
type MysqlSet = BTreeMap<String, Vec<(u64, u64)>>;

fn parse_mysql(set: &str) -> Result<MysqlSet> {
    let mut out = MysqlSet::new();
    for member in set.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        let mut parts = member.split(':');
        let uuid = parts
            .next()
            .filter(|u| u.len() == 36)
            .with_context(|| format!("{member:?} does not start with a server uuid"))?
            .to_ascii_lowercase();
        let mut tag = String::new();
        for part in parts {
            if part.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
                tag = part.to_ascii_lowercase();
                continue;
            }
            let (start, end) = part.split_once('-').unwrap_or((part, part));
            let number = |s: &str| -> Result<u64> {
                s.parse()
                    .with_context(|| format!("{member:?}: {part:?} is not an interval"))
            };
            let (start, end) = (number(start)?, number(end)?);
            ensure!(
                start >= 1 && start <= end,
                "{member:?}: empty interval {part:?}"
            );
            out.entry(format!("{uuid}:{tag}"))
                .or_default()
                .push((start, end));
        }
    }
    for intervals in out.values_mut() {
        intervals.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(intervals.len());
        for &(start, end) in intervals.iter() {
            match merged.last_mut() {
                Some(last) if start <= last.1.saturating_add(1) => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        *intervals = merged;
    }
    Ok(out)
}

/// Whether every transaction of `small` is in `big`.
fn contains(big: &MysqlSet, small: &MysqlSet) -> bool {
    small.iter().all(|(source, intervals)| {
        let Some(outer) = big.get(source) else {
            return false;
        };
        intervals
            .iter()
            .all(|&(start, end)| outer.iter().any(|&(s, e)| s <= start && end <= e))
    })
}

fn compare_mysql(a: &MysqlSet, b: &MysqlSet) -> Relation {
    match (contains(a, b), contains(b, a)) {
        (true, true) => Relation::Ordered(Ordering::Equal),
        (true, false) => Relation::Ordered(Ordering::Greater),
        (false, true) => Relation::Ordered(Ordering::Less),
        (false, false) => Relation::Diverged("each has transactions the other lacks".into()),
    }
}

/// `mysql-0-bin.000012` → (`mysql-0-bin`, 12).
pub fn split_log_file(file: &str) -> Result<(&str, u64)> {
    let (base, seq) = file
        .rsplit_once('.')
        .with_context(|| format!("binary log file {file:?} has no sequence number"))?;
    let seq = seq
        .parse()
        .with_context(|| format!("binary log file {file:?} has no sequence number"))?;
    Ok((base, seq))
}

/// A replica that answered, under the name it was asked by.
#[derive(Debug, Clone)]
pub struct Answer {
    pub peer: String,
    pub status: PeerStatus,
}

/// What to clone the primary from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// The most advanced replicas (all at the same position), in the order asked.
    pub peers: Vec<String>,
    pub position: Position,
    /// The primary's binary log name, as the chosen replicas read it.
    pub source_log_file: String,
    /// The replicas that are behind, with their positions, for the log.
    pub behind: Vec<(String, Position)>,
}

/// Why no replica can be chosen: a human must decide.
#[derive(Debug)]
pub struct NoChoice(pub String);

impl fmt::Display for NoChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NoChoice {}

/// The most advanced replicas among those that answered. `Ok(None)` when none answered (a
/// first boot); an error when one answered without a position, or when their histories
/// diverged: then nothing is chosen silently.
pub fn choose(answers: &[Answer]) -> Result<Option<Choice>, NoChoice> {
    if answers.is_empty() {
        return Ok(None);
    }
    let positioned: Vec<(&Answer, &Position)> = answers
        .iter()
        .filter_map(|a| {
            a.status
                .replication
                .as_ref()
                .and_then(|r| r.executed.as_ref())
                .map(|p| (a, p))
        })
        .collect();
    let unknown: Vec<&str> = answers
        .iter()
        .filter(|a| {
            a.status
                .replication
                .as_ref()
                .and_then(|r| r.executed.as_ref())
                .is_none()
        })
        .map(|a| a.peer.as_str())
        .collect();
    if !unknown.is_empty() {
        return Err(NoChoice(format!(
            "{} answered without a position in the primary's history (replication not configured, or not by \
             this agent): refusing both to start an empty primary beside it and to choose without knowing \
             what it holds; decide, then clone the primary from one replica with --donor",
            unknown.join(", ")
        )));
    }
    let mut diverged = Vec::new();
    for (i, (a, pa)) in positioned.iter().enumerate() {
        for (b, pb) in &positioned[i + 1..] {
            match compare(pa, pb) {
                Ok(Relation::Ordered(_)) => {}
                Ok(Relation::Diverged(why)) => diverged.push(format!(
                    "{} ({pa:?}) and {} ({pb:?}): {why}",
                    a.peer, b.peer
                )),
                Err(e) => diverged.push(format!(
                    "{} ({pa:?}) and {} ({pb:?}) cannot be compared: {e:#}",
                    a.peer, b.peer
                )),
            }
        }
    }
    if !diverged.is_empty() {
        return Err(NoChoice(format!(
            "the replicas' histories have diverged, so none can be chosen as the primary's data without losing \
             transactions: {}; decide which pod's data to keep, then clone the primary from it with --donor",
            diverged.join("; ")
        )));
    }
    // Pairwise ordered positions form a chain: the greatest is ahead of or equal to all.
    let greater = |a: &Position, b: &Position| {
        matches!(compare(a, b), Ok(Relation::Ordered(Ordering::Greater)))
    };
    let best = positioned
        .iter()
        .map(|(_, p)| *p)
        .fold(
            positioned[0].1,
            |best, p| if greater(p, best) { p } else { best },
        );
    let equal = |p: &Position| matches!(compare(p, best), Ok(Relation::Ordered(Ordering::Equal)));
    let chosen: Vec<&Answer> = positioned
        .iter()
        .filter(|(_, p)| equal(p))
        .map(|(a, _)| *a)
        .collect();
    Ok(Some(Choice {
        peers: chosen.iter().map(|a| a.peer.clone()).collect(),
        position: best.clone(),
        source_log_file: chosen
            .iter()
            .filter_map(|a| a.status.replication.as_ref())
            .map(|r| r.source_log_file.clone())
            .find(|f| !f.is_empty())
            .unwrap_or_default(),
        behind: positioned
            .iter()
            .filter(|(_, p)| !equal(p))
            .map(|(a, p)| (a.peer.clone(), (*p).clone()))
            .collect(),
    }))
}

/// What asking the replicas found.
#[derive(Debug, Default)]
pub struct Survey {
    pub answers: Vec<Answer>,
    /// Replicas that exist but gave no status in time, with the last reason.
    pub silent: Vec<(String, String)>,
}

/// One probe's outcome.
enum Probe {
    Answered(PeerStatus),
    /// No such host, or nothing listens: no pod there (a first boot, a smaller StatefulSet).
    Absent(String),
    /// Something is there but gave no status (busy, setting up, mysqld down, too slow).
    Silent(String),
}

/// Asks `peers` (host names) for their status on `port`. Peers that are absent (their name
/// does not resolve, or nothing listens) are asked again until `wait` has passed; peers that
/// are there but give no status, until [`PRESENT_PEER_WAIT`]. Ends early once every peer
/// has answered or is absent past `wait`.
pub async fn survey(
    peers: &[String],
    port: u16,
    wait: Duration,
    cancel: &CancellationToken,
) -> Result<Survey> {
    let client = client()?;
    let started = Instant::now();
    let mut answers: Vec<Option<PeerStatus>> = vec![None; peers.len()];
    let mut silent: Vec<Option<String>> = vec![None; peers.len()];
    loop {
        let round = peers
            .iter()
            .zip(&answers)
            .enumerate()
            .filter(|(_, (_, answer))| answer.is_none())
            .map(|(i, (peer, _))| {
                let client = client.clone();
                async move { (i, probe(&client, peer, port).await) }
            });
        let results = tokio::select! {
            () = cancel.cancelled() => {
                return Err(anyhow!(crate::errors::Interrupted).context("asking the replicas"));
            }
            results = futures_util::future::join_all(round) => results,
        };
        for (i, result) in results {
            match result {
                Probe::Answered(status) => {
                    info!(peer = %peers[i], ?status.replication, "a replica answered");
                    answers[i] = Some(status);
                    silent[i] = None;
                }
                Probe::Absent(why) => {
                    debug!(peer = %peers[i], %why, "no replica there (yet)");
                    silent[i] = None;
                }
                Probe::Silent(why) => {
                    info!(peer = %peers[i], %why, "a replica is there but gave no status yet");
                    silent[i] = Some(why);
                }
            }
        }
        let elapsed = started.elapsed();
        let waiting_for_silent = silent.iter().any(Option::is_some);
        if answers.iter().all(Option::is_some)
            || (elapsed >= wait && !waiting_for_silent)
            || elapsed >= wait.max(PRESENT_PEER_WAIT)
        {
            break;
        }
        crate::retry::sleep(PROBE_INTERVAL, cancel)
            .await
            .context("waiting for the replicas to answer")?;
    }
    let mut survey = Survey::default();
    for ((peer, status), why) in peers.iter().zip(answers).zip(silent) {
        match (status, why) {
            (Some(status), _) => survey.answers.push(Answer {
                peer: peer.clone(),
                status,
            }),
            (None, Some(why)) => survey.silent.push((peer.clone(), why)),
            (None, None) => {}
        }
    }
    Ok(survey)
}

/// One question to one peer, its failure sorted: absent, or there and silent.
async fn probe(client: &reqwest::Client, host: &str, port: u16) -> Probe {
    let resolved = tokio::time::timeout(PROBE_TIMEOUT, tokio::net::lookup_host((host, port))).await;
    match resolved {
        Ok(Ok(addrs)) => {
            if addrs.count() == 0 {
                return Probe::Absent(format!("{host} has no address"));
            }
        }
        Ok(Err(e)) => return Probe::Absent(format!("{host} does not resolve: {e}")),
        Err(_) => return Probe::Silent(format!("resolving {host} took over {PROBE_TIMEOUT:?}")),
    }
    match fetch(client, host, port).await {
        Ok(status) => Probe::Answered(status),
        Err(e) if refused(&e) => Probe::Absent(format!("nothing listens on {host}:{port}")),
        Err(e) => Probe::Silent(format!("{e:#}")),
    }
}

/// Whether the connection was refused (no sidecar there), anywhere in reqwest's error chain.
fn refused(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
    })
}

fn client() -> Result<reqwest::Client> {
    crate::store::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(PROBE_TIMEOUT)
        .connect_timeout(PROBE_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .context("building the HTTP client")
}

async fn fetch(client: &reqwest::Client, host: &str, port: u16) -> Result<PeerStatus> {
    let url = format!("http://{host}:{port}{STATUS_PATH}");
    let mut response = client
        .get(&url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    ensure!(
        response.status().is_success(),
        "GET {url}: {}",
        response.status()
    );
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .with_context(|| format!("reading {url}"))?
    {
        ensure!(
            body.len() + chunk.len() <= MAX_STATUS_BYTES,
            "{url} sent more than {MAX_STATUS_BYTES} bytes"
        );
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).with_context(|| format!("{url} sent no status"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mariadb(pos: &str) -> Position {
        Position::MariaDbGtid {
            gtid_pos: pos.into(),
        }
    }

    fn answer(peer: &str, executed: Option<Position>) -> Answer {
        Answer {
            peer: peer.into(),
            status: PeerStatus {
                pod: peer.into(),
                replication: Some(ReplicationState {
                    source_host: "mysql-0.mysql".into(),
                    io_running: "Connecting".into(),
                    sql_running: "Yes".into(),
                    executed,
                    source_log_file: "mysql-0-bin.000002".into(),
                }),
            },
        }
    }

    #[test]
    fn mariadb_positions_order_by_domain_and_fork_on_conflicts() {
        let rel = |a: &str, b: &str| compare(&mariadb(a), &mariadb(b)).unwrap();
        assert_eq!(
            rel("0-100-6", "0-100-5"),
            Relation::Ordered(Ordering::Greater)
        );
        assert_eq!(
            rel("0-100-6", "0-100-6"),
            Relation::Ordered(Ordering::Equal)
        );
        assert_eq!(rel("", "0-100-1"), Relation::Ordered(Ordering::Less));
        assert_eq!(
            rel("0-100-6,1-5-2", "1-5-2,0-100-6"),
            Relation::Ordered(Ordering::Equal)
        );
        assert_eq!(
            rel("0-100-6,1-5-3", "0-100-6"),
            Relation::Ordered(Ordering::Greater)
        );
        // The same sequence number written by two servers: two histories.
        assert!(
            matches!(rel("0-100-6", "0-101-6"), Relation::Diverged(w) if w.contains("server 100"))
        );
        // Ahead in one domain, behind in another.
        assert!(matches!(
            rel("0-100-7,1-5-1", "0-100-6,1-5-2"),
            Relation::Diverged(_)
        ));
        assert!(compare(&mariadb("0-100"), &mariadb("0-1-1")).is_err());
    }

    #[test]
    fn mysql_sets_compare_by_inclusion() {
        let u1 = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
        let u2 = "4e11fa47-71ca-11e1-9e33-c80aa9429562";
        let set = |s: String| Position::MysqlGtid { gtid_set: s };
        let rel = |a: String, b: String| compare(&set(a), &set(b)).unwrap();
        assert_eq!(
            rel(format!("{u1}:1-10"), format!("{u1}:1-5:6-10")),
            Relation::Ordered(Ordering::Equal)
        );
        assert_eq!(
            rel(
                format!("{u1}:1-10,{u2}:1"),
                format!("{}:1-9", u1.to_uppercase())
            ),
            Relation::Ordered(Ordering::Greater)
        );
        assert_eq!(
            rel(format!("{u1}:1-3"), format!("{u1}:1-3:5")),
            Relation::Ordered(Ordering::Less)
        );
        // Tagged transactions (MySQL 8.3+) are their own members.
        assert_eq!(
            rel(format!("{u1}:1-3:t1:1"), format!("{u1}:1-3")),
            Relation::Ordered(Ordering::Greater)
        );
        // An errant transaction on one replica, from its own uuid.
        assert!(matches!(
            rel(format!("{u1}:1-10,{u2}:1"), format!("{u1}:1-11")),
            Relation::Diverged(_)
        ));
        assert!(compare(&set("nope:1".into()), &set(format!("{u1}:1"))).is_err());
    }

    #[test]
    fn file_positions_compare_within_one_primary_log() {
        let file = |f: &str, pos| Position::File {
            file: f.into(),
            pos,
        };
        let rel = |a, b| compare(&a, &b).unwrap();
        assert_eq!(
            rel(file("bin.000010", 4), file("bin.000009", 900)),
            Relation::Ordered(Ordering::Greater)
        );
        assert_eq!(
            rel(file("bin.000010", 4), file("bin.000010", 900)),
            Relation::Ordered(Ordering::Less)
        );
        assert!(matches!(
            rel(file("a-bin.000010", 4), file("b-bin.000010", 4)),
            Relation::Diverged(_)
        ));
        assert!(compare(&file("bin.000001", 4), &mariadb("0-1-1")).is_err());
    }

    #[test]
    fn the_most_advanced_replicas_are_chosen() {
        assert!(choose(&[]).unwrap().is_none());
        let choice = choose(&[
            answer("mysql-1.mysql", Some(mariadb("0-100-5"))),
            answer("mysql-2.mysql", Some(mariadb("0-100-9"))),
            answer("mysql-3.mysql", Some(mariadb("0-100-9"))),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(choice.peers, ["mysql-2.mysql", "mysql-3.mysql"]);
        assert_eq!(choice.position, mariadb("0-100-9"));
        assert_eq!(choice.source_log_file, "mysql-0-bin.000002");
        assert_eq!(
            choice.behind,
            [("mysql-1.mysql".to_string(), mariadb("0-100-5"))]
        );
    }

    #[test]
    fn diverged_or_empty_replicas_stop_the_recovery() {
        let err = choose(&[
            answer("mysql-1.mysql", Some(mariadb("0-100-9"))),
            answer("mysql-2.mysql", Some(mariadb("0-100-5"))),
            answer("mysql-3.mysql", Some(mariadb("0-101-9"))),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("diverged")
                && err.contains("mysql-1.mysql")
                && err.contains("mysql-3.mysql"),
            "{err}"
        );
        assert!(!err.contains("mysql-2.mysql ("), "{err}");
        // A replica without a position stops the choice even beside one that has one: it
        // may hold more than it can say.
        let err = choose(&[
            answer("mysql-1.mysql", None),
            answer("mysql-2.mysql", Some(mariadb("0-100-9"))),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("mysql-1.mysql answered without a position"),
            "{err}"
        );
    }

    /// A "replica" that sends an endless body, or nothing at all, costs the primary a bounded
    /// read and a bounded wait, never memory or a hang (paused clock: the wait is virtual).
    #[tokio::test(start_paused = true)]
    async fn a_hostile_status_is_bounded() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            // First client: a huge body. Second: reads the request and says nothing.
            let (mut huge, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 1024];
            let _ = huge.read(&mut request).await;
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n";
            let _ = huge.write_all(head.as_bytes()).await;
            let filler = vec![b' '; 64 * 1024];
            for _ in 0..64 {
                if huge.write_all(&filler).await.is_err() {
                    break;
                }
            }
            drop(huge);
            let (mut silent, _) = listener.accept().await.unwrap();
            let _ = silent.read(&mut request).await;
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });
        let client = client().unwrap();
        let err = format!("{:#}", fetch(&client, "127.0.0.1", port).await.unwrap_err());
        assert!(err.contains("more than 65536 bytes"), "{err}");
        let started = Instant::now();
        let err = format!("{:#}", fetch(&client, "127.0.0.1", port).await.unwrap_err());
        assert!(
            started.elapsed() <= PROBE_TIMEOUT + Duration::from_millis(100),
            "{err}"
        );
    }

    #[test]
    fn status_round_trips_as_json() {
        let status = answer("mysql-2", Some(mariadb("0-100-9"))).status;
        let json = serde_json::to_string(&status).unwrap();
        assert!(json.contains(r#""kind":"mariadb-gtid""#), "{json}");
        assert_eq!(serde_json::from_str::<PeerStatus>(&json).unwrap(), status);
    }
}
