//! The sidecar's Prometheus metrics, served on `/metrics` (see [`crate::http`]).
//!
//! Names follow Prometheus conventions: one `mysql_agent_` prefix, base units as suffixes,
//! `_total` on counters, `_info` for build metadata.

use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::fmt::{self, Write};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::replication::ReplicaStatus;

/// How a backup that was started ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum BackupResult {
    /// The tool completed and the client got the whole stream and its status.
    Completed,
    /// The tool failed; the client was told.
    Failed,
    /// The client went away, or the agent shut down, mid-stream.
    Aborted,
    /// The client stopped reading for `--stall-timeout`: it was dropped and the tool killed.
    Stalled,
}

/// Why a client got no backup.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Refusal {
    Busy,
    NotReady,
    Denied,
    /// Too many clients were still in the opening exchange: the oldest was dropped.
    Overload,
}

/// Label values in Prometheus's lower_snake_case.
impl EncodeLabelValue for BackupResult {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        encoder.write_str(match self {
            BackupResult::Completed => "completed",
            BackupResult::Failed => "failed",
            BackupResult::Aborted => "aborted",
            BackupResult::Stalled => "stalled",
        })
    }
}

impl EncodeLabelValue for Refusal {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        encoder.write_str(match self {
            Refusal::Busy => "busy",
            Refusal::NotReady => "not_ready",
            Refusal::Denied => "denied",
            Refusal::Overload => "overload",
        })
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: BackupResult,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub reason: Refusal,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Every metric of a serve-backup process.
pub struct Metrics {
    registry: Registry,
    pub backups: Family<ResultLabels, Counter>,
    pub refusals: Family<RefusalLabels, Counter>,
    pub stream_bytes: Counter,
    pub backup_duration: Histogram,
    pub backups_in_progress: Gauge,
    pub last_backup_success: FloatGauge,
    pub replication_configured: Gauge,
    pub replication_lag: FloatGauge,
    pub io_thread_running: Gauge,
    pub sql_thread_running: Gauge,
    pub mysql_up: Gauge,
    pub mysql_connection_errors: Counter,
    pub binlog_archived_bytes: Counter,
    pub binlog_archive_errors: Counter,
    pub binlog_archived_file: Gauge,
    pub binlog_archived_offset: Gauge,
    pub binlog_archive_lag: FloatGauge,
    /// When everything committed was last known archived (Unix seconds; 0 before): the lag
    /// is computed from it at each scrape, so an archiver that hangs shows a growing lag.
    binlog_archive_checked: FloatGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mysql_agent");
        let m = Self {
            registry: Registry::default(),
            backups: Family::default(),
            refusals: Family::default(),
            stream_bytes: Counter::default(),
            // From one second to about four hours: clones of any size.
            backup_duration: Histogram::new(exponential_buckets(1.0, 2.0, 15)),
            backups_in_progress: Gauge::default(),
            last_backup_success: FloatGauge::default(),
            replication_configured: Gauge::default(),
            replication_lag: FloatGauge::default(),
            io_thread_running: Gauge::default(),
            sql_thread_running: Gauge::default(),
            mysql_up: Gauge::default(),
            mysql_connection_errors: Counter::default(),
            binlog_archived_bytes: Counter::default(),
            binlog_archive_errors: Counter::default(),
            binlog_archived_file: Gauge::default(),
            binlog_archived_offset: Gauge::default(),
            binlog_archive_lag: FloatGauge::default(),
            binlog_archive_checked: FloatGauge::default(),
        };
        registry.register(
            "build",
            "The agent's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        registry.register(
            "backups",
            "Backups served, by how they ended",
            m.backups.clone(),
        );
        registry.register(
            "backup_refusals",
            "Clients that got no backup, by reason",
            m.refusals.clone(),
        );
        registry.register_with_unit(
            "backup_stream",
            "Bytes of backup streams sent to clients",
            Unit::Bytes,
            m.stream_bytes.clone(),
        );
        registry.register_with_unit(
            "backup_duration",
            "How long backups took to serve",
            Unit::Seconds,
            m.backup_duration.clone(),
        );
        registry.register(
            "backups_in_progress",
            "Backups being served now",
            m.backups_in_progress.clone(),
        );
        registry.register_with_unit(
            "last_backup_success_timestamp",
            "When the last backup completed (Unix time; 0 before the first)",
            Unit::Seconds,
            m.last_backup_success.clone(),
        );
        registry.register(
            "replication_configured",
            "1 once this replica's replication points at the primary (always 0 on the primary)",
            m.replication_configured.clone(),
        );
        registry.register_with_unit(
            "replication_lag",
            "Seconds_Behind_Master of this replica (NaN when unknown or not a replica)",
            Unit::Seconds,
            m.replication_lag.clone(),
        );
        registry.register(
            "replication_io_thread_running",
            "1 when the replication IO thread runs",
            m.io_thread_running.clone(),
        );
        registry.register(
            "replication_sql_thread_running",
            "1 when the replication SQL thread runs",
            m.sql_thread_running.clone(),
        );
        registry.register(
            "mysql_up",
            "1 when the local mysqld answers",
            m.mysql_up.clone(),
        );
        registry.register(
            "mysql_connection_errors",
            "Failed connections or queries to the local mysqld",
            m.mysql_connection_errors.clone(),
        );
        registry.register_with_unit(
            "binlog_archived",
            "Bytes of binary logs copied into the archive (--archive-binlogs-to)",
            Unit::Bytes,
            m.binlog_archived_bytes.clone(),
        );
        registry.register(
            "binlog_archive_errors",
            "Archiving rounds that failed (the store or mysqld), each retried",
            m.binlog_archive_errors.clone(),
        );
        registry.register(
            "binlog_archived_file",
            "The number of the binary log file archived last (the .NNNNNN of its name)",
            m.binlog_archived_file.clone(),
        );
        registry.register(
            "binlog_archived_position",
            "How far into that file the archive reaches (bytes)",
            m.binlog_archived_offset.clone(),
        );
        registry.register_with_unit(
            "binlog_archive_lag",
            "Seconds since everything the server had committed was last known archived (NaN before the first time)",
            Unit::Seconds,
            m.binlog_archive_lag.clone(),
        );
        m.replication_lag.set(f64::NAN);
        registry.register_with_unit(
            "binlog_archive_checked_timestamp",
            "When everything the server had committed was last known archived (Unix time; 0 before the first time)",
            Unit::Seconds,
            m.binlog_archive_checked.clone(),
        );
        m.binlog_archive_lag.set(f64::NAN);
        // Every series exists from the start, at zero, so rate() and alerts see the first event.
        for result in [
            BackupResult::Completed,
            BackupResult::Failed,
            BackupResult::Aborted,
            BackupResult::Stalled,
        ] {
            m.backups.get_or_create(&ResultLabels { result }).inc_by(0);
        }
        for reason in [
            Refusal::Busy,
            Refusal::NotReady,
            Refusal::Denied,
            Refusal::Overload,
        ] {
            m.refusals
                .get_or_create(&RefusalLabels { reason })
                .inc_by(0);
        }
        Self { registry, ..m }
    }

    /// Counts a backup that ended, and its duration.
    pub fn backup_ended(&self, result: BackupResult, elapsed: Duration) {
        self.backups.get_or_create(&ResultLabels { result }).inc();
        self.backup_duration.observe(elapsed.as_secs_f64());
        if result == BackupResult::Completed {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            self.last_backup_success.set(now.as_secs_f64());
        }
    }

    pub fn refused(&self, reason: Refusal) {
        self.refusals.get_or_create(&RefusalLabels { reason }).inc();
    }

    /// Mirrors what the monitor last saw of the local server.
    pub fn observe_replica(&self, up: bool, status: Option<&ReplicaStatus>) {
        self.mysql_up.set(i64::from(up));
        let running = |state: Option<&str>| i64::from(state == Some("Yes"));
        self.io_thread_running
            .set(running(status.map(|s| s.io_running.as_str())));
        self.sql_thread_running
            .set(running(status.map(|s| s.sql_running.as_str())));
        let lag = status
            .and_then(|s| s.seconds_behind)
            .map_or(f64::NAN, |s| s as f64);
        self.replication_lag.set(lag);
    }

    /// The Prometheus text exposition (OpenMetrics flavour).
    /// The archive was complete as of `at`.
    pub fn binlog_archive_checked(&self, at: SystemTime) {
        let secs = at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        self.binlog_archive_checked.set(secs);
    }

    pub fn encode(&self) -> String {
        let checked = self.binlog_archive_checked.get();
        if checked > 0.0 {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64();
            self.binlog_archive_lag.set((now - checked).max(0.0));
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let m = Metrics::new();
        m.backup_ended(BackupResult::Completed, Duration::from_secs(3));
        m.refused(Refusal::Busy);
        m.stream_bytes.inc_by(1234);
        let text = m.encode();
        for line in [
            "mysql_agent_build_info{version=\"",
            "mysql_agent_backups_total{result=\"completed\"} 1",
            "mysql_agent_backups_total{result=\"aborted\"} 0",
            "mysql_agent_backup_refusals_total{reason=\"denied\"} 0",
            "mysql_agent_backup_refusals_total{reason=\"busy\"} 1",
            "mysql_agent_backup_stream_bytes_total 1234",
            "mysql_agent_backup_duration_seconds_count 1",
            "mysql_agent_backups_in_progress 0",
            "mysql_agent_last_backup_success_timestamp_seconds ",
            "mysql_agent_replication_configured 0",
            "mysql_agent_replication_lag_seconds NaN",
            "mysql_agent_replication_io_thread_running 0",
            "mysql_agent_mysql_up 0",
            "mysql_agent_mysql_connection_errors_total 0",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
    }

    #[test]
    fn replica_state_is_mirrored() {
        let m = Metrics::new();
        let status = ReplicaStatus {
            io_running: "Yes".into(),
            sql_running: "No".into(),
            seconds_behind: Some(7),
            ..Default::default()
        };
        m.observe_replica(true, Some(&status));
        let text = m.encode();
        assert!(
            text.contains("mysql_agent_replication_lag_seconds 7.0"),
            "{text}"
        );
        assert!(text.contains("mysql_agent_replication_io_thread_running 1"));
        assert!(text.contains("mysql_agent_replication_sql_thread_running 0"));
        assert!(text.contains("mysql_agent_mysql_up 1"));
    }

    /// The archive's lag grows between the archiver's rounds, as a scrape sees it: a stuck
    /// archiver is not reported as current.
    #[test]
    fn the_archive_lag_is_computed_at_each_scrape() {
        let m = Metrics::new();
        assert!(
            m.encode()
                .contains("mysql_agent_binlog_archive_lag_seconds NaN")
        );
        m.binlog_archive_checked(SystemTime::now() - Duration::from_secs(90));
        let text = m.encode();
        let lag: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("mysql_agent_binlog_archive_lag_seconds "))
            .unwrap()
            .parse()
            .unwrap();
        assert!((90.0..100.0).contains(&lag), "{text}");
    }
}
