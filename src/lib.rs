//! mysql-agent replaces the three bash scripts of the Kubernetes "replicated MySQL"
//! StatefulSet tutorial with one binary, run in the same places:
//!
//! - `init-config` (first initContainer): server-id from the pod's ordinal, and the primary's
//!   or the replica's config, into mysqld's conf.d ([`init_config`]);
//! - `clone` (second initContainer): an empty replica's data dir becomes a prepared copy of a
//!   peer's data, received over TCP 3307 and decoded natively ([`clone`], [`protocol`],
//!   [`xbstream`]); on ordinal 0, the most advanced replica's when the primary lost its
//!   volume ([`survey`]);
//! - `serve-backup` (sidecar): replication is pointed at the primary from the clone's
//!   coordinates, then backups are served to new peers on 3307 ([`serve`], [`replication`]);
//!   on the primary, its binary logs are archived for point-in-time recovery ([`archiver`]);
//! - `backup` and `list-backups` (a CronJob, a human): backups kept in object storage
//!   ([`backup`], [`catalog`], [`store`]), restored by `clone --restore-from` ([`restore`]),
//!   to a moment with `--restore-until` ([`pitr`]).
//!
//! # Layout
//!
//! Modules import only downwards, never back (`tests/layout.rs` checks it):
//!
//! - the modes: [`cli`] (flags into configs), [`init_config`], [`clone`] with [`survey`] and
//!   [`pitr`], [`serve`] with [`http`], [`monitor`] and [`archiver`], [`backup`];
//! - what they speak: [`protocol`] (port 3307, over any byte stream), [`xbstream`] (a pure
//!   decoder and its sinks), [`replication`], [`accounts`] and [`mysql`] (SQL per server
//!   version, [`server_version`]), [`backup_tool`] and [`process`] (the child they run),
//!   [`handoff`] and [`sockets`] (the client socket);
//! - what they keep: [`store`], [`catalog`] and [`manifest`] (backups), [`archive`] (binary
//!   log timelines), [`packing`] (zstd, age), [`restore`];
//! - what they read: [`metadata`] and [`coordinates`] (the backup's own files), [`binlog`]
//!   (binary log files),
//!   [`keyvalue`], [`pod`], [`secrets`];
//! - plumbing: [`retry`], [`shutdown`], [`errors`], [`telemetry`], [`metrics`], [`progress`],
//!   [`fsutil`], [`failpoint`].
#![deny(unsafe_code)]

pub mod accounts;
pub mod archive;
pub mod archiver;
pub mod backup;
pub mod backup_tool;
pub mod binlog;
pub mod catalog;
pub mod cli;
pub mod clone;
pub mod coordinates;
pub mod errors;
pub mod failpoint;
pub mod fsutil;
pub mod handoff;
pub mod http;
pub mod init_config;
pub mod keyvalue;
pub mod manifest;
pub mod metadata;
pub mod metrics;
pub mod monitor;
pub mod mysql;
pub mod packing;
pub mod pitr;
pub mod pod;
pub mod process;
pub mod progress;
pub mod protocol;
pub mod replication;
pub mod restore;
pub mod retry;
pub mod secrets;
pub mod serve;
pub mod server_version;
pub mod shutdown;
pub mod sockets;
pub mod store;
pub mod survey;
pub mod telemetry;
pub mod tls;
pub mod xbstream;

use anyhow::Result;
use tokio_util::sync::CancellationToken;

use crate::cli::{Cli, Command};
use crate::errors::usage;

/// Runs one mode to completion; `cancel` is the shutdown signal. Every flag, and every file
/// or directory a flag names, is checked before the mode starts: a bad one is a
/// [`errors::Usage`] error and nothing is done.
pub async fn run(cli: Cli, cancel: CancellationToken) -> Result<()> {
    match cli.command {
        Command::InitConfig(args) => init_config::run(&args.into_config().map_err(usage)?),
        Command::Clone(args) => clone::run(&args.into_config().map_err(usage)?, &cancel).await,
        Command::ServeBackup(args) => serve::run(args.into_config().map_err(usage)?, cancel).await,
        Command::Backup(args) => backup::run(&args.into_config().map_err(usage)?, &cancel).await,
        Command::ListBackups(args) => list_backups(args).await,
    }
}

/// `list-backups`: one line per complete backup, newest first, or JSON.
async fn list_backups(args: cli::ListBackupsArgs) -> Result<()> {
    let store =
        store::Store::open(&args.location, &store::S3Settings::from_env(), false).map_err(usage)?;
    let listing = catalog::list(&store)
        .await
        .map_err(|e| e.context(format!("listing {}", args.location)))?;
    let mut out = std::io::stdout().lock();
    use std::io::Write;
    if args.json {
        let leftovers: Vec<_> = listing
            .leftovers
            .iter()
            .map(|l| serde_json::json!({"name": l.name, "objects": l.objects}))
            .collect();
        let doc = serde_json::json!({
            "location": args.location.to_string(),
            "backups": listing.complete,
            "incomplete": leftovers,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
    } else {
        for manifest in &listing.complete {
            writeln!(out, "{}", manifest.summary_line())?;
        }
        for leftover in &listing.leftovers {
            tracing::info!(backup = %leftover.name, "an attempt that never finished (no manifest); not listed");
        }
        for (name, why) in &listing.unreadable {
            tracing::warn!(backup = %name, reason = %why, "a backup whose manifest does not read; not listed");
        }
    }
    Ok(())
}
