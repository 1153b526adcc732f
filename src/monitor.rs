//! The sidecar's watch on its mysqld: polled every [`MONITOR_INTERVAL`] over one kept
//! connection, so readiness probes and scrapes read the last snapshot instead of each
//! opening a connection.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::mysql::{self, MysqlTarget};
use crate::replication::{self, ReplicaStatus};
use crate::server_version::ServerVersion;

/// How often the local mysqld is checked.
pub const MONITOR_INTERVAL: Duration = Duration::from_secs(2);
/// A check that takes longer counts as a failure.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether set-up has finished: backups may be served and the pod may be ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    NotReady(String),
}

/// What the last check saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Why mysqld did not answer, when it did not.
    pub mysqld_error: Option<String>,
    /// SHOW SLAVE/REPLICA STATUS, on a replica that has a row.
    pub replica: Option<ReplicaStatus>,
}

/// Why a pod is not ready, as a class: what `/readyz` tells anyone who can reach it. The
/// details (mysqld's and replication's error texts, which can name hosts, accounts and
/// statements) go to the logs only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReadyClass {
    SettingUp,
    NotChecked,
    MysqldDown,
    ReplicationMissing,
    ReplicationStopped,
    LagUnknown,
    Lagging,
}

impl NotReadyClass {
    pub fn as_str(self) -> &'static str {
        match self {
            NotReadyClass::SettingUp => "setting-up",
            NotReadyClass::NotChecked => "not-checked-yet",
            NotReadyClass::MysqldDown => "mysqld-down",
            NotReadyClass::ReplicationMissing => "replication-not-configured",
            NotReadyClass::ReplicationStopped => "replication-stopped",
            NotReadyClass::LagUnknown => "replication-lag-unknown",
            NotReadyClass::Lagging => "replication-lagging",
        }
    }
}

/// A pod that should not receive reads: the class for the network, the detail for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotReady {
    pub class: NotReadyClass,
    pub detail: String,
}

fn not_ready(class: NotReadyClass, detail: impl Into<String>) -> NotReady {
    NotReady {
        class,
        detail: detail.into(),
    }
}

/// Whether the pod should receive reads.
///
/// Not ready while set-up has not finished (or cannot), while mysqld does not answer, and on
/// a replica while replication is missing, a thread is stopped, or lag is unknown or above
/// `max_lag`: reads through `mysql-read` would be stale or fail.
pub fn readiness(
    setup: &Readiness,
    health: Option<&Health>,
    replica: bool,
    max_lag: Duration,
) -> Result<(), NotReady> {
    use NotReadyClass::*;
    if let Readiness::NotReady(reason) = setup {
        return Err(not_ready(SettingUp, format!("setting up: {reason}")));
    }
    let health = health.ok_or_else(|| not_ready(NotChecked, "mysqld has not been checked yet"))?;
    if let Some(error) = &health.mysqld_error {
        return Err(not_ready(
            MysqldDown,
            format!("mysqld does not answer: {error}"),
        ));
    }
    if !replica {
        return Ok(());
    }
    let status = health.replica.as_ref().ok_or_else(|| {
        not_ready(
            ReplicationMissing,
            "replication is not configured (SHOW SLAVE STATUS is empty)",
        )
    })?;
    let thread = |name: &str, state: &str, error: &str| {
        if state == "Yes" {
            Ok(())
        } else if error.is_empty() {
            Err(not_ready(
                ReplicationStopped,
                format!("the replication {name} thread is {state}"),
            ))
        } else {
            Err(not_ready(
                ReplicationStopped,
                format!("the replication {name} thread is {state}: {error}"),
            ))
        }
    };
    thread("IO", &status.io_running, &status.last_io_error)?;
    thread("SQL", &status.sql_running, &status.last_sql_error)?;
    match status.seconds_behind {
        None => Err(not_ready(LagUnknown, "the replication lag is unknown")),
        Some(lag) if lag > max_lag.as_secs() => Err(not_ready(
            Lagging,
            format!(
                "replication lags {lag} s behind the primary (the limit is {} s)",
                max_lag.as_secs()
            ),
        )),
        Some(_) => Ok(()),
    }
}

/// What the monitor needs to judge readiness, besides the checks.
#[derive(Debug, Clone)]
pub struct Judge {
    pub setup: watch::Receiver<Readiness>,
    pub replica: bool,
    pub max_lag: Duration,
}

impl Judge {
    pub fn verdict(&self, health: Option<&Health>) -> Result<(), NotReady> {
        readiness(&self.setup.borrow(), health, self.replica, self.max_lag)
    }
}

/// A request for a check now rather than the last snapshot: `/status` answers a primary
/// deciding where to recover from, which must not act on a position two seconds old.
pub type Refresh = oneshot::Sender<Health>;
/// Refresh requests waiting at once; more are answered "busy" by the caller.
pub const MAX_PENDING_REFRESHES: usize = 4;

/// Where the monitor publishes its checks, and where it is asked for one now.
pub struct Channels {
    pub health: watch::Sender<Option<Health>>,
    pub refresh: mpsc::Receiver<Refresh>,
}

/// Checks mysqld until `cancel`, every [`MONITOR_INTERVAL`] and whenever a refresh is asked
/// for, publishing each result to the health channel and `metrics`.
pub async fn run(
    target: MysqlTarget,
    server: ServerVersion,
    judge: Judge,
    metrics: Arc<Metrics>,
    channels: Channels,
    cancel: CancellationToken,
) {
    let Channels {
        health,
        mut refresh,
    } = channels;
    let replica = judge.replica;
    let mut conn: Option<Conn> = None;
    let mut ticks = tokio::time::interval(MONITOR_INTERVAL);
    let mut was_up = None;
    let mut last_verdict: Option<Result<(), NotReady>> = None;
    loop {
        let mut replies = Vec::new();
        tokio::select! {
            _ = ticks.tick() => {}
            Some(reply) = refresh.recv() => {
                // Every request waiting now shares this one check: asking often cannot
                // drive mysqld harder than one query at a time.
                replies.push(reply);
                while let Ok(more) = refresh.try_recv() {
                    replies.push(more);
                }
            }
            () = cancel.cancelled() => break,
        }
        let observed =
            tokio::time::timeout(CHECK_TIMEOUT, check(&mut conn, &target, &server, replica))
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {CHECK_TIMEOUT:?}")));
        let snapshot = match observed {
            Ok(status) => Health {
                mysqld_error: None,
                replica: status,
            },
            Err(e) => {
                conn = None;
                metrics.mysql_connection_errors.inc();
                Health {
                    mysqld_error: Some(format!("{e:#}")),
                    replica: None,
                }
            }
        };
        let up = snapshot.mysqld_error.is_none();
        if was_up != Some(up) {
            info!(
                up,
                error = snapshot.mysqld_error.as_deref().unwrap_or(""),
                "mysqld state changed"
            );
            was_up = Some(up);
        }
        debug!(?snapshot, "checked mysqld");
        metrics.observe_replica(up, snapshot.replica.as_ref());
        let verdict = judge.verdict(Some(&snapshot));
        if last_verdict.as_ref() != Some(&verdict) {
            match &verdict {
                Ok(()) => info!("ready"),
                Err(e) => warn!(class = e.class.as_str(), reason = %e.detail, "not ready"),
            }
            last_verdict = Some(verdict);
        }
        for reply in replies {
            // The asker may have given up; nothing to do then.
            let _ = reply.send(snapshot.clone());
        }
        health.send_replace(Some(snapshot));
    }
    if let Some(conn) = conn {
        let _ = conn.disconnect().await;
    }
}

async fn check(
    conn: &mut Option<Conn>,
    target: &MysqlTarget,
    server: &ServerVersion,
    replica: bool,
) -> Result<Option<ReplicaStatus>> {
    let conn = match conn {
        Some(conn) => conn,
        None => conn.insert(mysql::connect(target).await?),
    };
    if replica {
        replication::read_status(conn, server).await
    } else {
        conn.query_drop("SELECT 1").await?;
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(60);

    fn replica(io: &str, sql: &str, lag: Option<u64>) -> Health {
        Health {
            mysqld_error: None,
            replica: Some(ReplicaStatus {
                source_host: "mysql-0.mysql".into(),
                io_running: io.into(),
                sql_running: sql.into(),
                last_sql_error: if sql == "No" {
                    "Duplicate entry".into()
                } else {
                    String::new()
                },
                seconds_behind: lag,
                ..Default::default()
            }),
        }
    }

    #[test]
    fn ready_only_when_everything_holds() {
        let ok = replica("Yes", "Yes", Some(3));
        assert_eq!(readiness(&Readiness::Ready, Some(&ok), true, LIMIT), Ok(()));
        let primary = Health {
            mysqld_error: None,
            replica: None,
        };
        assert_eq!(
            readiness(&Readiness::Ready, Some(&primary), false, LIMIT),
            Ok(())
        );

        for (setup, health, replica_pod, needle) in [
            (
                Readiness::NotReady("waiting for the local mysqld".into()),
                Some(ok.clone()),
                true,
                "setting up: waiting",
            ),
            (Readiness::Ready, None, true, "not been checked"),
            (
                Readiness::Ready,
                Some(Health {
                    mysqld_error: Some("refused".into()),
                    replica: None,
                }),
                false,
                "does not answer: refused",
            ),
            (
                Readiness::Ready,
                Some(primary.clone()),
                true,
                "not configured",
            ),
            (
                Readiness::Ready,
                Some(replica("Connecting", "Yes", None)),
                true,
                "IO thread is Connecting",
            ),
            (
                Readiness::Ready,
                Some(replica("Yes", "No", None)),
                true,
                "SQL thread is No: Duplicate entry",
            ),
            (
                Readiness::Ready,
                Some(replica("Yes", "Yes", None)),
                true,
                "lag is unknown",
            ),
            (
                Readiness::Ready,
                Some(replica("Yes", "Yes", Some(61))),
                true,
                "lags 61 s behind the primary (the limit is 60 s)",
            ),
        ] {
            let reason = readiness(&setup, health.as_ref(), replica_pod, LIMIT)
                .unwrap_err()
                .detail;
            assert!(reason.contains(needle), "{reason} lacks {needle}");
        }
        assert_eq!(
            readiness(
                &Readiness::Ready,
                Some(&replica("Yes", "Yes", Some(60))),
                true,
                LIMIT
            ),
            Ok(())
        );
    }
}
