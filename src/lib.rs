//! mysql-agent replaces the three bash scripts of the Kubernetes "replicated MySQL"
//! StatefulSet tutorial with one binary, run in the same places:
//!
//! - `init-config` (first initContainer): server-id from the pod's ordinal, and the primary's
//!   or the replica's config, into mysqld's conf.d ([`init_config`]);
//! - `clone` (second initContainer): an empty replica's data dir becomes a prepared copy of a
//!   peer's data, received over TCP 3307 and extracted natively ([`clone`], [`xbstream`]);
//! - `serve-backup` (sidecar): replication is pointed at the primary from the clone's
//!   coordinates, then backups are served to new peers on 3307 ([`serve`], [`replication`]).

pub mod accounts;
pub mod backup_tool;
pub mod cli;
pub mod clone;
pub mod coordinates;
pub mod failpoint;
pub mod fsutil;
pub mod handoff;
pub mod http;
pub mod init_config;
pub mod metrics;
pub mod monitor;
pub mod mysql;
pub mod pod;
pub mod process;
pub mod progress;
pub mod protocol;
pub mod replication;
pub mod retry;
pub mod secrets;
pub mod serve;
pub mod shutdown;
pub mod telemetry;
pub mod xbstream;

use anyhow::Result;
use tokio_util::sync::CancellationToken;

use crate::cli::{Cli, Command};

/// Runs one mode to completion; `cancel` is the shutdown signal.
pub async fn run(cli: Cli, cancel: CancellationToken) -> Result<()> {
    match cli.command {
        Command::InitConfig(args) => init_config::run(&args.into_config()?),
        Command::Clone(args) => clone::run(&args.into_config().await?, &cancel).await,
        Command::ServeBackup(args) => serve::run(args.into_config().await?, cancel).await,
    }
}
