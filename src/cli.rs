//! The command-line contract. Every flag also reads an environment variable, so the same
//! image can be configured from a manifest's `env:` or `args:`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use clap::{Args, Parser, Subcommand};

use crate::accounts::Account;
use crate::archiver;
use crate::backup;
use crate::clone::{self, Donor};
use crate::fsutil;
use crate::init_config;
use crate::mysql::MysqlTarget;
use crate::packing::{self, Identities, Recipients};
use crate::pitr;
use crate::pod::PodIdentity;
use crate::protocol;
use crate::replication::Source;
use crate::secrets::{BackupSecret, Password};
use crate::serve;
use crate::store::{Location, S3Settings};
use crate::survey;
use crate::telemetry::LogFormat;
use crate::tls::TlsDir;

/// Where serve-backup listens for backup clients: the tutorial's port on every address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:3307";
/// Where serve-backup answers probes and scrapes.
pub const DEFAULT_HTTP_LISTEN: &str = "0.0.0.0:8080";
/// The backup tool's --parallel unless `--backup-threads` says otherwise.
pub const DEFAULT_BACKUP_THREADS: u32 = 2;

const ABOUT: &str =
    "Replicated MySQL and MariaDB on a Kubernetes StatefulSet, without an operator.";
const LONG_ABOUT: &str = "\
Replicated MySQL and MariaDB on a Kubernetes StatefulSet, without an operator.

One binary replaces the three bash scripts of the Kubernetes tutorial \"Run a Replicated \
Stateful Application\", in the same places of the same StatefulSet:

  init-config   first initContainer: server-id and the role's config into conf.d
  clone         second initContainer: an empty replica data dir becomes a peer's copy
  serve-backup  sidecar: replication from the primary, then backups for peers on 3307

Pod <statefulset>-0 is the primary; the others are replicas. Peers are reached as \
<statefulset>-<n>.<service>. Logs go to stderr; RUST_LOG sets the level (default info).";

#[derive(Debug, Parser)]
#[command(name = "mysql-agent", version, about = ABOUT, long_about = LONG_ABOUT)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// How the agent reports: logs on stderr, and why it failed for `kubectl describe pod`.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log lines as human-readable text or as one JSON object each (the level comes from RUST_LOG)
    #[arg(long, env = "MYSQL_AGENT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// Where a fatal error is also written, for the pod's status [default: /dev/termination-log
    /// when it exists, as in a Kubernetes container]
    #[arg(
        long,
        env = "MYSQL_AGENT_TERMINATION_LOG",
        value_name = "PATH",
        global = true
    )]
    pub termination_log: Option<PathBuf>,
}

// Parsed once at start-up: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write server-id.cnf and the role's config into conf.d (first initContainer).
    #[command(
        long_about = "Write server-id.cnf (server-id = offset + ordinal) and copy master.cnf (ordinal 0) or \
slave.cnf (other ordinals) from the ConfigMap mount into mysqld's conf.d; primary.cnf and replica.cnf are \
accepted too. Files are written atomically and a rerun gives the same result."
    )]
    InitConfig(InitConfigArgs),
    /// Clone a peer's data into an empty replica data dir (second initContainer).
    #[command(
        long_about = "Clone a peer's data into this replica's empty data dir: receive the backup stream \
from a donor's serve-backup on port 3307, extract it natively (every chunk's CRC checked, paths confined), \
check that it is complete, prepare it with the backup tool, move it into place and record completion durably. \
Ordinal 0 does nothing; a data dir holding a completed clone or a server's data is left alone; an interrupted \
clone is removed and redone. Donors are tried in order with back-off until one serves."
    )]
    Clone(CloneArgs),
    /// Point replication at the primary, then serve backups to peers (sidecar).
    #[command(
        long_about = "On a replica, point replication at the primary from the coordinates the clone left \
(xtrabackup_slave_info or xtrabackup_binlog_info), once, in the server's own dialect, waiting for mysqld with \
back-off. Then serve backups on --listen: each client gets the backup tool's xbstream followed by an \
end-of-stream entry (mysql_agent_stream_status); `ncat --recv-only <pod> 3307 | xbstream -x` keeps working. \
A replica refuses backups until its replication is configured. SIGTERM stops it cleanly with exit code 0."
    )]
    ServeBackup(ServeBackupArgs),
    /// Take a backup from a pod over port 3307 and store it (a CronJob).
    #[command(
        long_about = "Take a consistent backup from a donor's serve-backup over port 3307, exactly as a clone \
does (same handshake, secret and donor order, replicas first by default), and store it at --to: compressed \
with zstd, optionally encrypted with age, checked as it passes (every chunk's CRC, the end-of-stream entry, \
the replication coordinates), and committed by a manifest written last. Exit 0 only once the manifest is \
written. S3 settings come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION and \
AWS_ENDPOINT_URL."
    )]
    Backup(BackupArgs),
    /// List the complete backups in a store, newest first.
    #[command(
        long_about = "List the complete backups (those with a manifest) at a location, newest first: name, \
end time, stored size, replication coordinates. Attempts that never finished are reported apart. S3 settings \
come from the AWS_* environment variables, as for backup."
    )]
    ListBackups(ListBackupsArgs),
}

#[derive(Debug, Clone, Args)]
pub struct PodArgs {
    /// This pod's name, <statefulset>-<ordinal> [default: the hostname, which Kubernetes sets to the pod name]
    #[arg(long, env = "POD_NAME", value_name = "NAME")]
    pub pod_name: Option<String>,

    /// The headless Service giving each pod its DNS name, <pod>.<service>
    #[arg(
        long,
        env = "MYSQL_AGENT_SERVICE",
        value_name = "NAME",
        default_value = "mysql"
    )]
    pub service: String,
}

impl PodArgs {
    pub fn identity(&self) -> Result<PodIdentity> {
        let name = match &self.pod_name {
            Some(name) => name.clone(),
            None => nix::unistd::gethostname()
                .context("reading the hostname (pass --pod-name)")?
                .into_string()
                .map_err(|h| {
                    anyhow::anyhow!("the hostname {h:?} is not UTF-8 (pass --pod-name)")
                })?,
        };
        PodIdentity::parse(&name, &self.service)
    }
}

#[derive(Debug, Clone, Args)]
pub struct DataDirArgs {
    /// mysqld's data dir (the PersistentVolume), where clones land and leave their coordinates
    #[arg(
        long,
        env = "MYSQL_AGENT_DATA_DIR",
        value_name = "DIR",
        default_value = "/var/lib/mysql"
    )]
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct SecretArgs {
    /// A file holding the secret every pod shares (a mounted Kubernetes Secret): backups are
    /// served only to clients that prove they know it, and clones accept only donors that do.
    /// Without it port 3307 is as open as the tutorial's
    #[arg(long, env = "MYSQL_AGENT_BACKUP_SECRET_FILE", value_name = "PATH")]
    pub backup_secret_file: Option<PathBuf>,

    /// A mounted kubernetes.io/tls Secret with its CA (tls.crt, tls.key, ca.crt): port 3307
    /// speaks mutual TLS 1.3, each end accepting only certificates of ca.crt, the client also
    /// checking the donor's name; renewed files are used from the next connection
    #[arg(long, env = "MYSQL_AGENT_TLS_DIR", value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
}

impl SecretArgs {
    fn load(&self) -> Result<Option<BackupSecret>> {
        self.backup_secret_file
            .as_deref()
            .map(|path| {
                BackupSecret::from_file(path)
                    .with_context(|| format!("--backup-secret-file {}", path.display()))
            })
            .transpose()
    }

    fn tls(&self) -> Result<Option<Arc<TlsDir>>> {
        self.tls_dir
            .as_deref()
            .map(|dir| {
                fsutil::check_dir(dir, "--tls-dir", false)?;
                TlsDir::open(dir)
                    .map(Arc::new)
                    .with_context(|| format!("--tls-dir {}", dir.display()))
            })
            .transpose()
    }
}

/// The password in `file` (given by `flag`), or none.
fn read_password(file: Option<&Path>, flag: &str) -> Result<Password> {
    file.map(|path| Password::from_file(path).with_context(|| format!("{flag} {}", path.display())))
        .transpose()
        .map(Option::unwrap_or_default)
}

#[derive(Debug, Clone, Args)]
pub struct BackupToolArgs {
    /// The backup tool [default: xtrabackup, else mariadb-backup, else mariabackup, on PATH]
    #[arg(long, env = "MYSQL_AGENT_BACKUP_TOOL", value_name = "PATH")]
    pub backup_tool: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct InitConfigArgs {
    #[command(flatten)]
    pub pod: PodArgs,

    /// Where the ConfigMap with master.cnf and slave.cnf is mounted
    #[arg(
        long,
        env = "MYSQL_AGENT_CONFIG_MAP_DIR",
        value_name = "DIR",
        default_value = "/mnt/config-map"
    )]
    pub config_map_dir: PathBuf,

    /// mysqld's conf.d (an emptyDir shared with the mysql container)
    #[arg(
        long,
        env = "MYSQL_AGENT_CONF_DIR",
        value_name = "DIR",
        default_value = "/mnt/conf.d"
    )]
    pub conf_dir: PathBuf,

    /// Added to the ordinal to make the server-id (0 is reserved)
    #[arg(
        long,
        env = "MYSQL_AGENT_SERVER_ID_OFFSET",
        value_name = "N",
        default_value_t = 100
    )]
    pub server_id_offset: u32,

    /// The mounted TLS Secret (tls.crt, tls.key, ca.crt) mysqld serves with: written into
    /// conf.d as ssl_ca, ssl_cert and ssl_key (the mysql container mounts it at the same path)
    #[arg(long, env = "MYSQL_AGENT_TLS_DIR", value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
}

impl InitConfigArgs {
    pub fn into_config(self) -> Result<init_config::Config> {
        fsutil::check_dir(&self.config_map_dir, "--config-map-dir", false)?;
        fsutil::check_dir(&self.conf_dir, "--conf-dir", true)?;
        Ok(init_config::Config {
            pod: self.pod.identity()?,
            config_map_dir: self.config_map_dir,
            conf_dir: self.conf_dir,
            server_id_offset: self.server_id_offset,
            tls_dir: match self.tls_dir {
                Some(dir) => {
                    // Checked as every mode checks it: a broken Secret fails here, first.
                    TlsDir::open(&dir).with_context(|| format!("--tls-dir {}", dir.display()))?;
                    Some(dir)
                }
                None => None,
            },
        })
    }
}

#[derive(Debug, Clone, Args)]
pub struct CloneArgs {
    #[command(flatten)]
    pub pod: PodArgs,

    #[command(flatten)]
    pub data: DataDirArgs,

    /// A peer to clone from, HOST[:PORT] (port 3307 by default); repeat for fallbacks, tried in order
    /// [default: <statefulset>-<ordinal-1>.<service>, then the lower ordinals down to 0]
    #[arg(
        long = "donor",
        env = "MYSQL_AGENT_DONORS",
        value_name = "HOST[:PORT]",
        value_delimiter = ','
    )]
    pub donors: Vec<Donor>,

    #[command(flatten)]
    pub tool: BackupToolArgs,

    /// Give up after this many transfers that started and failed (truncated, corrupt, failed prepare)
    #[arg(long, env = "MYSQL_AGENT_MAX_ATTEMPTS", value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,

    /// Give up when no donor could serve at all (down, busy, not ready) for this long
    #[arg(long, env = "MYSQL_AGENT_DONOR_WAIT", value_name = "DURATION", default_value = "30m",
          value_parser = humantime::parse_duration)]
    pub donor_wait: Duration,

    /// A transfer that receives less than 1 MiB in this long has stalled and is retried
    #[arg(long, env = "MYSQL_AGENT_STALL_TIMEOUT", value_name = "DURATION", default_value = "5m",
          value_parser = humantime::parse_duration)]
    pub stall_timeout: Duration,

    /// Refuse streams without the agent's end-of-stream entry, i.e. from the tutorial's ncat sidecar
    /// (by default they are accepted when the backup's own completion files are present)
    #[arg(long, env = "MYSQL_AGENT_REQUIRE_END_MARKER")]
    pub require_end_marker: bool,

    #[command(flatten)]
    pub secret: SecretArgs,

    #[command(flatten)]
    pub progress: ProgressArgs,

    /// A backup store (s3://BUCKET/PREFIX or file:///DIR) to restore from: on ordinal 0
    /// when the data dir is empty, on a replica when no donor could serve for --donor-wait
    #[arg(long, env = "MYSQL_AGENT_RESTORE_FROM", value_name = "URL")]
    pub restore_from: Option<Location>,

    /// The backup to restore (see list-backups) [default: the newest complete one]
    #[arg(
        long,
        env = "MYSQL_AGENT_RESTORE_BACKUP",
        value_name = "NAME",
        requires = "restore_from"
    )]
    pub backup: Option<String>,

    /// The age private key(s) an encrypted backup is restored with (age-keygen's file); read
    /// only when --restore-from is given, so a manifest can set it once
    #[arg(long, env = "MYSQL_AGENT_AGE_IDENTITY_FILE", value_name = "PATH")]
    pub age_identity_file: Option<PathBuf>,

    /// Point-in-time recovery on ordinal 0: restore the latest backup before TARGET, then
    /// replay the archived binary logs up to it. TARGET is an RFC 3339 time in UTC
    /// (2026-12-02T14:02:00Z: transactions stamped at or before it) or a MariaDB GTID
    /// (0-100-57: through that transaction). Replicas then clone from ordinal 0, never from
    /// the store
    #[arg(
        long,
        env = "MYSQL_AGENT_RESTORE_UNTIL",
        value_name = "TARGET",
        requires = "restore_from",
        conflicts_with = "backup"
    )]
    pub restore_until: Option<pitr::Target>,

    /// The server configuration the replay of --restore-until runs mysqld with
    /// (--defaults-file), so it matches the pod's [default: the server's own default files]
    #[arg(long, env = "MYSQL_AGENT_MYSQLD_DEFAULTS_FILE", value_name = "PATH")]
    pub mysqld_defaults_file: Option<PathBuf>,

    /// The StatefulSet's replica count: ordinal 0 with an empty data dir asks
    /// <statefulset>-1.<service> … <statefulset>-N-1.<service> how far they have replicated
    /// (or the --donor hosts, when given)
    #[arg(long, env = "MYSQL_AGENT_REPLICAS", value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub replicas: u32,

    /// How long ordinal 0 with an empty data dir waits for its replicas to answer before it
    /// concludes that this is a first boot and lets mysqld start empty
    #[arg(long, env = "MYSQL_AGENT_PEER_WAIT", value_name = "DURATION", default_value = "5s",
          value_parser = humantime::parse_duration)]
    pub peer_wait: Duration,

    /// The replicas' serve-backup HTTP port, where ordinal 0 asks for their /status
    #[arg(long, env = "MYSQL_AGENT_PEER_HTTP_PORT", value_name = "PORT",
          default_value_t = survey::DEFAULT_HTTP_PORT)]
    pub peer_http_port: u16,
}

#[derive(Debug, Clone, Args)]
pub struct ProgressArgs {
    /// How often a running transfer logs a progress line
    #[arg(long, env = "MYSQL_AGENT_PROGRESS_INTERVAL", value_name = "DURATION", default_value = "5s",
          value_parser = humantime::parse_duration)]
    pub progress_interval: Duration,
}

/// How what is stored (backups, archived binary logs) is packed.
#[derive(Debug, Clone, Args)]
pub struct PackingArgs {
    /// zstd compression level of what is stored: 1 (fast) to 19 (small); negative levels
    /// (down to -7) are zstd's faster, larger ones, for a host short of CPU
    #[arg(long, env = "MYSQL_AGENT_COMPRESSION_LEVEL", value_name = "N", default_value_t = packing::DEFAULT_LEVEL,
          value_parser = clap::value_parser!(i32).range(-7..=19), allow_negative_numbers = true)]
    pub compression_level: i32,

    /// Encrypt what is stored with age to the public key(s) in this file (age1… lines):
    /// whoever holds only this file cannot read it
    #[arg(long, env = "MYSQL_AGENT_AGE_RECIPIENT_FILE", value_name = "PATH")]
    pub age_recipient_file: Option<PathBuf>,
}

impl PackingArgs {
    fn recipients(&self) -> Result<Option<Recipients>> {
        self.age_recipient_file
            .as_deref()
            .map(|path| {
                Recipients::from_file(path)
                    .with_context(|| format!("--age-recipient-file {}", path.display()))
            })
            .transpose()
    }
}

impl ProgressArgs {
    fn interval(&self) -> Duration {
        self.progress_interval.max(Duration::from_millis(100))
    }
}

impl CloneArgs {
    /// Checks everything the flags name before any work: a bad value is a usage error.
    pub fn into_config(self) -> Result<clone::Config> {
        let pod = self.pod.identity()?;
        fsutil::check_dir(&self.data.data_dir, "--data-dir", true)?;
        let explicit_donors = !self.donors.is_empty();
        let primary = pod.is_primary();
        let donors = if self.donors.is_empty() {
            // Ordinal 0 asks every replica; a replica clones from the pods before it.
            let hosts = if pod.is_primary() {
                (1..self.replicas).map(|n| pod.peer_host(n)).collect()
            } else {
                pod.default_donor_hosts()
            };
            hosts
                .into_iter()
                .map(|host| Donor {
                    host,
                    port: protocol::DEFAULT_PORT,
                })
                .collect()
        } else {
            self.donors
        };
        Ok(clone::Config {
            survey: clone::Survey {
                http_port: self.peer_http_port,
                wait: self.peer_wait,
                explicit_donors,
            },
            pod,
            data_dir: self.data.data_dir,
            donors,
            tool: self.tool.backup_tool,
            policy: clone::Policy {
                max_attempts: self.max_attempts,
                donor_wait: self.donor_wait,
            },
            stall_timeout: self.stall_timeout.max(Duration::from_secs(1)),
            require_end_marker: self.require_end_marker,
            secret: self.secret.load()?,
            tls: self.secret.tls()?,
            progress_interval: self.progress.interval(),
            restore: match self.restore_from {
                None => None,
                Some(location) => Some(clone::Restore {
                    location,
                    s3: S3Settings::from_env(),
                    backup: self.backup,
                    until: self.restore_until,
                    replay: match (&self.mysqld_defaults_file, primary) {
                        (Some(path), true) => {
                            fsutil::check_file(path, "--mysqld-defaults-file")?;
                            Some(path.clone())
                        }
                        _ => None,
                    },
                    identities: self
                        .age_identity_file
                        .as_deref()
                        .map(|path| {
                            Identities::from_file(path)
                                .with_context(|| format!("--age-identity-file {}", path.display()))
                        })
                        .transpose()?
                        .map(Arc::new),
                }),
            },
        })
    }
}

#[derive(Debug, Clone, Args)]
pub struct BackupArgs {
    /// Where to store the backup: s3://BUCKET/PREFIX, or file:///DIR for a mounted volume
    #[arg(long, env = "MYSQL_AGENT_BACKUP_TO", value_name = "URL")]
    pub to: Location,

    /// A pod to take the backup from, HOST[:PORT]; repeat for fallbacks, tried in order
    /// [default: the replicas <statefulset>-1.<service> … <statefulset>-N-1.<service>, then
    /// <statefulset>-0.<service>: the primary is loaded only when no replica can serve]
    #[arg(
        long = "donor",
        env = "MYSQL_AGENT_DONORS",
        value_name = "HOST[:PORT]",
        value_delimiter = ','
    )]
    pub donors: Vec<Donor>,

    /// The StatefulSet's name, for the default donors
    #[arg(
        long,
        env = "MYSQL_AGENT_STATEFULSET",
        value_name = "NAME",
        default_value = "mysql"
    )]
    pub statefulset: String,

    /// The headless Service, for the default donors
    #[arg(
        long,
        env = "MYSQL_AGENT_SERVICE",
        value_name = "NAME",
        default_value = "mysql"
    )]
    pub service: String,

    /// The StatefulSet's replica count, for the default donors
    #[arg(long, env = "MYSQL_AGENT_REPLICAS", value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub replicas: u32,

    #[command(flatten)]
    pub tool: BackupToolArgs,

    /// Give up after this many transfers that started and failed
    #[arg(long, env = "MYSQL_AGENT_MAX_ATTEMPTS", value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,

    /// Give up when no donor could serve at all (down, busy, not ready) for this long
    #[arg(long, env = "MYSQL_AGENT_DONOR_WAIT", value_name = "DURATION", default_value = "30m",
          value_parser = humantime::parse_duration)]
    pub donor_wait: Duration,

    /// A transfer that receives less than 1 MiB in this long has stalled and is retried
    #[arg(long, env = "MYSQL_AGENT_STALL_TIMEOUT", value_name = "DURATION", default_value = "5m",
          value_parser = humantime::parse_duration)]
    pub stall_timeout: Duration,

    /// Refuse streams without the agent's end-of-stream entry (tutorial donors)
    #[arg(long, env = "MYSQL_AGENT_REQUIRE_END_MARKER")]
    pub require_end_marker: bool,

    #[command(flatten)]
    pub secret: SecretArgs,

    #[command(flatten)]
    pub packing: PackingArgs,

    /// After a backup, keep this many complete backups and remove older ones (and leftovers
    /// of attempts that never finished, once a day old) [default: keep everything]
    #[arg(long, env = "MYSQL_AGENT_KEEP", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub keep: Option<u32>,

    #[command(flatten)]
    pub progress: ProgressArgs,
}

impl BackupArgs {
    /// Checks everything the flags name before any work: a bad value is a usage error.
    pub fn into_config(self) -> Result<backup::Config> {
        let donors = if self.donors.is_empty() {
            ensure!(
                !self.statefulset.is_empty() && !self.service.is_empty(),
                "--statefulset and --service name the default donors; neither may be empty"
            );
            let host = |n: u32| Donor {
                host: format!("{}-{n}.{}", self.statefulset, self.service),
                port: protocol::DEFAULT_PORT,
            };
            (1..self.replicas).map(host).chain([host(0)]).collect()
        } else {
            self.donors
        };
        Ok(backup::Config {
            location: self.to,
            s3: S3Settings::from_env(),
            donors,
            policy: clone::Policy {
                max_attempts: self.max_attempts,
                donor_wait: self.donor_wait,
            },
            stall_timeout: self.stall_timeout.max(Duration::from_secs(1)),
            secret: self.secret.load()?,
            tls: self.secret.tls()?,
            tool: self.tool.backup_tool,
            require_end_marker: self.require_end_marker,
            level: self.packing.compression_level,
            recipients: self.packing.recipients()?,
            keep: self.keep.map(|k| k as usize),
            progress_interval: self.progress.interval(),
        })
    }
}

#[derive(Debug, Clone, Args)]
pub struct ListBackupsArgs {
    /// The store: s3://BUCKET/PREFIX or file:///DIR
    #[arg(value_name = "URL", env = "MYSQL_AGENT_BACKUP_TO")]
    pub location: Location,

    /// One JSON document: the complete backups' manifests, newest first, and the leftovers
    #[arg(long, env = "MYSQL_AGENT_LIST_JSON")]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ServeBackupArgs {
    #[command(flatten)]
    pub pod: PodArgs,

    #[command(flatten)]
    pub data: DataDirArgs,

    /// Address the backup server listens on
    #[arg(
        long,
        env = "MYSQL_AGENT_LISTEN",
        value_name = "ADDR",
        default_value = DEFAULT_LISTEN
    )]
    pub listen: SocketAddr,

    /// The local mysqld's address
    #[arg(
        long,
        env = "MYSQL_AGENT_MYSQL_HOST",
        value_name = "HOST",
        default_value = "127.0.0.1"
    )]
    pub mysql_host: String,

    /// The local mysqld's port
    #[arg(
        long,
        env = "MYSQL_AGENT_MYSQL_PORT",
        value_name = "PORT",
        default_value_t = 3306
    )]
    pub mysql_port: u16,

    /// The local mysqld's administrative account, for replication setup (and account creation)
    #[arg(
        long,
        env = "MYSQL_AGENT_MYSQL_USER",
        value_name = "USER",
        default_value = "root"
    )]
    pub mysql_user: String,

    /// A file holding --mysql-user's password [default: no password]
    #[arg(long, env = "MYSQL_AGENT_MYSQL_PASSWORD_FILE", value_name = "PATH")]
    pub mysql_password_file: Option<PathBuf>,

    /// The account replicas use to reach the primary [default: --mysql-user and its password]
    #[arg(long, env = "MYSQL_AGENT_REPLICATION_USER", value_name = "USER")]
    pub replication_user: Option<String>,

    /// A file holding --replication-user's password
    #[arg(
        long,
        env = "MYSQL_AGENT_REPLICATION_PASSWORD_FILE",
        value_name = "PATH",
        requires = "replication_user"
    )]
    pub replication_password_file: Option<PathBuf>,

    /// The account the backup tool connects with [default: --mysql-user and its password]
    #[arg(long, env = "MYSQL_AGENT_BACKUP_USER", value_name = "USER")]
    pub backup_user: Option<String>,

    /// A file holding --backup-user's password
    #[arg(
        long,
        env = "MYSQL_AGENT_BACKUP_PASSWORD_FILE",
        value_name = "PATH",
        requires = "backup_user"
    )]
    pub backup_password_file: Option<PathBuf>,

    /// On the primary, create the replication and backup accounts (least privilege, from
    /// '%') when they do not exist yet; ignored on replicas, which get them by cloning
    #[arg(long, env = "MYSQL_AGENT_CREATE_ACCOUNTS")]
    pub create_accounts: bool,

    #[command(flatten)]
    pub secret: SecretArgs,

    /// The primary, as replicas reach it [default: <statefulset>-0.<service>]
    #[arg(long, env = "MYSQL_AGENT_PRIMARY_HOST", value_name = "HOST")]
    pub primary_host: Option<String>,

    /// The primary's mysqld port
    #[arg(
        long,
        env = "MYSQL_AGENT_PRIMARY_PORT",
        value_name = "PORT",
        default_value_t = 3306
    )]
    pub primary_port: u16,

    #[command(flatten)]
    pub tool: BackupToolArgs,

    /// Backups served at the same time; further clients are told to retry
    #[arg(long, env = "MYSQL_AGENT_MAX_BACKUPS", value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_backups: u32,

    /// A client that accepts no byte of its backup for this long is dropped and its backup
    /// tool killed, freeing the slot
    #[arg(long, env = "MYSQL_AGENT_STALL_TIMEOUT", value_name = "DURATION", default_value = "60s",
          value_parser = humantime::parse_duration)]
    pub stall_timeout: Duration,

    /// Threads the backup tool copies files with (its --parallel): one thread reading while
    /// another waits on the client roughly halves a clone's time on a loopback benchmark
    #[arg(long, env = "MYSQL_AGENT_BACKUP_THREADS", value_name = "N", default_value_t = DEFAULT_BACKUP_THREADS,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub backup_threads: u32,

    /// Address of the HTTP endpoint: /healthz, /readyz and /metrics
    #[arg(
        long,
        env = "MYSQL_AGENT_HTTP_LISTEN",
        value_name = "ADDR",
        default_value = DEFAULT_HTTP_LISTEN
    )]
    pub http_listen: SocketAddr,

    /// A replica lagging more than this behind the primary is not ready (/readyz)
    #[arg(long, env = "MYSQL_AGENT_MAX_REPLICATION_LAG", value_name = "DURATION", default_value = "60s",
          value_parser = humantime::parse_duration)]
    pub max_replication_lag: Duration,

    /// Archive the primary's binary logs to this store (s3://BUCKET/PREFIX or file:///DIR,
    /// credentials as for backups), for point-in-time recovery; replicas ignore it
    #[arg(long, env = "MYSQL_AGENT_ARCHIVE_BINLOGS_TO", value_name = "URL")]
    pub archive_binlogs_to: Option<Location>,

    /// The open binary log's new transactions are archived at least this often (closed
    /// files at once)
    #[arg(long, env = "MYSQL_AGENT_BINLOG_ARCHIVE_INTERVAL", value_name = "DURATION", default_value = "60s",
          value_parser = humantime::parse_duration)]
    pub binlog_archive_interval: Duration,

    #[command(flatten)]
    pub packing: PackingArgs,

    #[command(flatten)]
    pub progress: ProgressArgs,
}

impl ServeBackupArgs {
    /// Checks everything the flags name before any work: a bad value is a usage error.
    pub fn into_config(self) -> Result<serve::Config> {
        let pod = self.pod.identity()?;
        fsutil::check_dir(&self.data.data_dir, "--data-dir", true)?;
        let mysql = MysqlTarget {
            host: self.mysql_host,
            port: self.mysql_port,
            user: self.mysql_user,
            password: read_password(self.mysql_password_file.as_deref(), "--mysql-password-file")?,
        };
        // An account not named is the administrative one, password included.
        let account =
            |user: Option<String>, file: Option<PathBuf>, flag: &str| -> Result<Account> {
                Ok(match user {
                    Some(user) => Account {
                        user,
                        password: read_password(file.as_deref(), flag)?,
                    },
                    None => Account {
                        user: mysql.user.clone(),
                        password: mysql.password.clone(),
                    },
                })
            };
        let replication = account(
            self.replication_user,
            self.replication_password_file,
            "--replication-password-file",
        )?;
        let backup_account = account(
            self.backup_user,
            self.backup_password_file,
            "--backup-password-file",
        )?;
        let source = Source {
            host: self.primary_host.unwrap_or_else(|| pod.primary_host()),
            port: self.primary_port,
            user: replication.user,
            password: replication.password,
            tls: self.secret.tls_dir.clone(),
        };
        Ok(serve::Config {
            tool: self.tool.backup_tool,
            stall_timeout: self.stall_timeout.max(Duration::from_secs(1)),
            pod,
            data_dir: self.data.data_dir,
            listen: self.listen,
            mysql,
            source,
            backup_account,
            create_accounts: self.create_accounts,
            secret: self.secret.load()?,
            tls: self.secret.tls()?,
            max_backups: self.max_backups as usize,
            backup_threads: self.backup_threads,
            http_listen: self.http_listen,
            max_replication_lag: self.max_replication_lag,
            progress_interval: self.progress.interval(),
            archive: match self.archive_binlogs_to {
                None => None,
                Some(location) => Some(archiver::Config {
                    location,
                    s3: S3Settings::from_env(),
                    recipients: self.packing.recipients()?,
                    compression_level: self.packing.compression_level,
                    interval: self.binlog_archive_interval.max(Duration::from_secs(1)),
                }),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn default_addresses_use_the_documented_ports() {
        let port = |addr: &str| addr.parse::<SocketAddr>().unwrap().port();
        assert_eq!(port(DEFAULT_LISTEN), protocol::DEFAULT_PORT);
        assert_ne!(port(DEFAULT_HTTP_LISTEN), protocol::DEFAULT_PORT);
    }

    #[test]
    fn flags_parse_with_their_defaults() {
        let cli = Cli::try_parse_from(["mysql-agent", "clone", "--pod-name", "mysql-2"]).unwrap();
        let Command::Clone(args) = cli.command else {
            panic!()
        };
        assert_eq!(args.data.data_dir, PathBuf::from("/var/lib/mysql"));
        assert_eq!(args.stall_timeout, Duration::from_secs(300));
        assert!(args.donors.is_empty());

        let cli = Cli::try_parse_from([
            "mysql-agent",
            "clone",
            "--donor",
            "a:1",
            "--donor",
            "b",
            "--donor-wait",
            "90s",
        ])
        .unwrap();
        let Command::Clone(args) = cli.command else {
            panic!()
        };
        assert_eq!(args.donors.len(), 2);
        assert_eq!(args.donors[1].port, 3307);
        assert_eq!(args.donor_wait, Duration::from_secs(90));

        assert!(Cli::try_parse_from(["mysql-agent", "clone", "--donor", "a:b"]).is_err());
        assert!(Cli::try_parse_from(["mysql-agent", "clone", "--max-attempts", "0"]).is_err());
    }
}
