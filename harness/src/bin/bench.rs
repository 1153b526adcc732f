//! Clone speed on the loopback cluster, the agent against the tutorial's pipeline and the
//! floor, interleaved, with medians over several runs and ratios measured in the same run.
//!
//! Variants, each starting from a synced file system:
//! - agent: `mysql-agent clone` from the primary's sidecar, from connect to prepared data in
//!   place (durably synced); `--compare-agent` adds a second build, cloning from a second
//!   sidecar of that build on the same primary (and read by the serve client too), for
//!   before/after numbers of both sides in one run;
//! - tutorial: the tutorial's own pipeline: its sender (`ncat --listen --send-only -c
//!   "mariadb-backup --backup ..."`) on the primary, `ncat --recv-only | mbstream -x`, then
//!   `mariadb-backup --prepare`;
//! - floor: `mariadb-backup --backup --stream` into /dev/null on the donor, plus the same
//!   prepare (the tutorial run's);
//! - serve: a client reading the agent's backup server to the end, against the same client
//!   reading the backup tool straight from a socket (no server between them), and against the
//!   tool into /dev/null; and the agent's peak RSS on both sides;
//! - backup: `mysql-agent backup` from the primary into a real S3 server (Garage, on loopback),
//!   against the tool into /dev/null and the server alone ingesting the same stored bytes
//!   through the agent's upload path; restore: `clone --restore-from` into an empty data dir,
//!   against the agent's clone from the primary; peak RSS of both;
//! - what the machine allows them: the backup's compression alone (the tool through the
//!   agent's zstd into nothing), a restore from a local `file://` copy of the backup, and
//!   the S3 server alone serving the stored bytes through the agent's download path. With
//!   the CPU each used, these bound what two cores shared by the donor, the agent and the S3
//!   server can do, whatever the agent does.

use std::fmt::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use mysql_agent::store::Store;
use mysql_agent_harness::s3::S3Server;
use mysql_agent_harness::{
    Cluster, ClusterSpec, MAX_PODS, MYSQL_PORT, Pod, SIDECAR_STARTED, dir_size, pod_host,
};

/// Benchmark clones on a loopback cluster with a sysbench dataset.
#[derive(Parser)]
struct Args {
    /// The mysql-agent binary (a release build)
    #[arg(long, default_value = "target/release/mysql-agent")]
    agent: PathBuf,
    /// Dataset size (sysbench oltp tables), e.g. 1GiB, 256MiB
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    size: u64,
    /// Runs of every variant; the table shows medians
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Where the cluster lives (emptied first)
    #[arg(long, default_value = "target/bench")]
    root: PathBuf,
    /// Where the clones are written. `separate`: a volume of their own, as the new replica
    /// has its own PersistentVolume in the StatefulSet: ext4 on a memory-backed loop device
    /// whose writes are capped at the rate this machine's disk writes (measured first; needs
    /// root). `shared`: under --root, on the donor's disk, where a clone's writes and the
    /// donor's reads share one device's bandwidth, which the floor's never do
    #[arg(long, value_enum, default_value_t = Placement::Separate)]
    clone_volume: Placement,
    /// Write the clones into this directory instead (a second disk you mounted yourself)
    #[arg(long, conflicts_with = "clone_volume")]
    targets: Option<PathBuf>,
    /// Where the results table is written (outside --root, which every run empties)
    #[arg(long, default_value = "target/bench-results.md")]
    out: PathBuf,
    /// A second agent build (say, the previous commit's): it also runs a sidecar on the primary
    /// (port 3309), which its clones and a second serve client read
    #[arg(long)]
    compare_agent: Option<PathBuf>,
    /// The backup tool's --parallel for the floor and the direct-socket rate: the sidecar's
    /// (the agent's --backup-threads default)
    #[arg(long, default_value_t = 2)]
    tool_threads: u32,
    /// Load the dataset, then keep the primary, its backup server and Garage (when installed)
    /// up until Ctrl-C instead of benchmarking (for profiling by hand)
    #[arg(long)]
    hold: bool,
    /// Skip the backup and restore variants (they run when Garage is installed)
    #[arg(long)]
    no_backups: bool,
    /// The backups' zstd level (the agent's default unless given)
    #[arg(long, allow_negative_numbers = true)]
    compression_level: Option<i32>,
    /// Measure the binary log archive's lag under this long a sysbench write load (a sidecar
    /// with --archive-binlogs-to into Garage); 0 skips it
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    archive_load: Duration,
    /// That sidecar's --binlog-archive-interval
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    archive_interval: Duration,
    /// An idle pause before every timed variant. On this project's VM a variant run right
    /// after a CPU-heavy one was slower with the machine idle in between (a 4 GiB restore
    /// 6.3-7.2 s right after a backup, 5.2-5.6 s after 15 s of rest; no steal time shown),
    /// and the interleaving keeps each variant after the same neighbour in every run
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    settle: Duration,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let (number, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or((s, ""), |i| s.split_at(i));
    let number: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("not a size: {s}"))?;
    let scale = match unit {
        "" | "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(format!("unknown unit {unit:?} (B, KiB, MiB, GiB)")),
    };
    Ok((number * scale) as u64)
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Placement {
    Separate,
    Shared,
}

/// The new replica's own volume, on a machine with one disk: ext4 on a loop device over a
/// file in memory, its writes capped (cgroup v1 blkio throttle) at the rate the real disk
/// writes, so it behaves like a second disk of the same kind rather than like memory.
/// Unmounted and freed on drop.
///
/// The file is written in full before use and the file system is mounted without `discard`,
/// so a deleted clone's blocks stay in memory for the next one: on this VM the first touch
/// of fresh memory runs at about 600 MB/s against 3.3 GB/s for a rewrite (dd of 4 GiB into
/// tmpfs), and a 4 GiB clone onto fresh pages spent 40% of both cores in the loop device's
/// copies, a cost no real disk has.
struct CloneVolume {
    dir: PathBuf,
    image: PathBuf,
    write_cap: u64,
}

/// Where the volume's backing file lives: tmpfs, so none of its I/O touches the real disk.
const MEMORY_DIR: &str = "/dev/shm";
/// The blkio throttle the cap is written to (cgroup v1; every process here is in the root).
const WRITE_CAP_FILE: &str = "/sys/fs/cgroup/blkio/blkio.throttle.write_bps_device";
/// Bytes written (O_DIRECT, 1 MiB at a time) to measure the real disk's write rate.
const PROBE_BYTES: u64 = 1 << 30;

impl CloneVolume {
    /// Undoes what an interrupted run (Ctrl-C skips the drop) left: the mount under `root`,
    /// which would stop the cluster from emptying `root`, its write cap and memory.
    fn clean_up_after_interrupted_run(root: &Path) {
        release(&Self::dir(root));
        if let Ok(entries) = std::fs::read_dir(MEMORY_DIR) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with("mysql-agent-bench-") && name.ends_with(".img") {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }

    /// Where the volume is mounted.
    fn dir(root: &Path) -> PathBuf {
        root.join("clone-volume")
    }

    fn create(root: &Path, capacity: u64) -> Result<Self> {
        let write_cap = disk_write_rate(root)?;
        let dir = Self::dir(root);
        std::fs::create_dir_all(&dir)?;
        let image =
            Path::new(MEMORY_DIR).join(format!("mysql-agent-bench-{}.img", std::process::id()));
        // From here on, dropping it undoes whatever was done.
        let volume = Self {
            dir,
            image,
            write_cap,
        };
        run(Command::new("dd")
            .args(["if=/dev/zero", "bs=1M"])
            .arg(format!("of={}", volume.image.display()))
            .arg(format!("count={}", capacity.div_ceil(1 << 20))))
        .with_context(|| format!("filling {}", volume.image.display()))?;
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&volume.image))?;
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&volume.image)
            .arg(&volume.dir))
        .context("mounting the clone volume (needs root and a loop device)")?;
        let numbers = mounted_device(&volume.dir)
            .with_context(|| format!("no loop device mounted on {}", volume.dir.display()))?;
        std::fs::write(WRITE_CAP_FILE, format!("{numbers} {write_cap}")).with_context(|| {
            format!("capping writes to device {numbers} in {WRITE_CAP_FILE} (cgroup v1 blkio)")
        })?;
        Ok(volume)
    }

    fn describe(&self) -> String {
        format!(
            "a separate ext4 volume (loop device on pre-written memory, writes capped at {:.0} MiB/s, the O_DIRECT write rate measured on this machine's disk), standing in for the new replica's own volume",
            self.write_cap as f64 / MIB
        )
    }
}

impl Drop for CloneVolume {
    fn drop(&mut self) {
        release(&self.dir);
        let _ = std::fs::remove_file(&self.image);
    }
}

/// Lifts the write cap of the device mounted on `dir` and unmounts it, if one is mounted.
fn release(dir: &Path) {
    if let Some(numbers) = mounted_device(dir) {
        let _ = std::fs::write(WRITE_CAP_FILE, format!("{numbers} 0"));
        let _ = Command::new("umount").arg(dir).status();
    }
}

/// The `major:minor` of the device mounted on `dir`, if one is.
fn mounted_device(dir: &Path) -> Option<String> {
    let source = Command::new("findmnt")
        .args(["-n", "-o", "SOURCE", "--mountpoint"])
        .arg(dir)
        .output()
        .ok()?;
    let device = String::from_utf8_lossy(&source.stdout).trim().to_owned();
    let name = device.strip_prefix("/dev/")?;
    let numbers = std::fs::read_to_string(format!("/sys/block/{name}/dev")).ok()?;
    Some(numbers.trim().to_owned())
}

/// The disk's sequential O_DIRECT write rate in bytes per second: the fastest of three
/// [`PROBE_BYTES`] writes by dd into `dir`. The fastest, because the cap stands for the disk
/// and holds for the whole run: a probe that lands in a moment when other machines load the
/// host (seen here: 558 MiB/s against 1000-1400 usually) would throttle every clone.
fn disk_write_rate(dir: &Path) -> Result<u64> {
    let probe = dir.join("write-probe");
    let mut rates = Vec::new();
    for _ in 0..3 {
        sync();
        let t = Instant::now();
        run(Command::new("dd")
            .args(["if=/dev/zero", "bs=1M", "oflag=direct", "conv=fsync"])
            .arg(format!("of={}", probe.display()))
            .arg(format!("count={}", PROBE_BYTES >> 20)))?;
        rates.push(PROBE_BYTES as f64 / t.elapsed().as_secs_f64());
        std::fs::remove_file(&probe)?;
        sync();
    }
    Ok(rates.into_iter().fold(0.0, f64::max) as u64)
}

/// Bytes per sysbench row on disk, measured: 4 tables of 1.1M rows make 1 GiB of tables.
const ROW_BYTES: u64 = 245;
/// Where the tutorial's own sender listens on the primary.
const TUTORIAL_PORT: u16 = 3308;
const TABLES: u64 = 4;
const MIB: f64 = 1024.0 * 1024.0;

#[derive(Default)]
struct Samples {
    /// Where the CPU went during each variant that has a row for it.
    cpu: std::collections::BTreeMap<Variant, Vec<CpuUse>>,
    backup: Vec<f64>,
    backup_rss_kib: Vec<u64>,
    ingest: Vec<f64>,
    restore: Vec<f64>,
    restore_rss_kib: Vec<u64>,
    /// The donor's tool through the agent's compressor into nothing.
    compress: Vec<f64>,
    /// The S3 server serving the stored bytes to the agent's download path.
    egress: Vec<f64>,
    /// `clone --restore-from` a `file://` copy of the backup.
    local_restore: Vec<f64>,
    /// Stream bytes and stored bytes of the backups taken.
    backup_sizes: Option<(u64, u64)>,
    agent: Vec<f64>,
    agent_rss_kib: Vec<u64>,
    compare: Vec<f64>,
    compare_serve: Vec<f64>,
    tls: Vec<f64>,
    tls_rss_kib: Vec<u64>,
    tls_serve: Vec<f64>,
    /// Peak RSS of the TLS sidecar, read at the end.
    tls_server_rss_kib: u64,
    tutorial: Vec<f64>,
    tutorial_prepare: Vec<f64>,
    floor_stream: Vec<f64>,
    serve: Vec<f64>,
    serve_bytes: Vec<u64>,
    direct: Vec<f64>,
    archive: Option<ArchiveLag>,
}

impl Samples {
    /// Adds what a meter started before one run of `variant` saw.
    fn record_cpu(&mut self, variant: Variant, cpu: CpuMeter) {
        self.cpu.entry(variant).or_default().push(cpu.stop());
    }
}

/// The binary log archive under a write load.
struct ArchiveLag {
    load: Duration,
    interval: Duration,
    /// Binary log bytes the server wrote during the load, and what the archiver stored.
    written: u64,
    archived: u64,
    /// The sidecar's lag metric, sampled every [`LAG_SAMPLE`].
    lags: Vec<f64>,
    /// From the load's end until the archive held everything.
    drained: f64,
    peak_rss_kib: u64,
}

/// Where the archiving sidecar listens on the primary.
const ARCHIVE_PORT: u16 = 3311;
const ARCHIVE_HTTP_PORT: u16 = 8083;
const LAG_SAMPLE: Duration = Duration::from_millis(250);

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let spec = ClusterSpec {
        service: "bench".into(),
        subnet: 40,
        root: std::path::absolute(&args.root)?,
        agent: std::path::absolute(&args.agent)?,
        secured: false,
    };
    ensure!(
        which("sysbench"),
        "sysbench is missing (apt-get install sysbench)"
    );
    CloneVolume::clean_up_after_interrupted_run(&spec.root);
    let mut cluster = Cluster::create(spec.clone()).await?;
    let result = bench(&mut cluster, &args).await;
    let stopped = cluster.stop().await;
    let Some(report) = result? else {
        return stopped;
    };
    stopped?;
    println!("{report}");
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, &report)?;
    println!("written to {}", args.out.display());
    Ok(())
}

/// The report, or `None` when only holding.
async fn bench(cluster: &mut Cluster, args: &Args) -> Result<Option<String>> {
    cluster.scale_to(1).await?;
    let primary = cluster.primary();
    let started = Instant::now();
    load(primary, args.size).await?;
    let tables = dir_size(&primary.data_dir().join("test"));
    println!(
        "== dataset: {:.0} MiB of sysbench tables ({:.0?} to load)",
        tables as f64 / MIB,
        started.elapsed()
    );
    if args.hold {
        println!(
            "== holding: mysqld at {}:{MYSQL_PORT}, backup server at {}; Ctrl-C stops",
            primary.addr,
            primary.backup_addr()
        );
        // Garage too, when installed, so that backups and restores can be profiled by hand.
        let s3 = if mysql_agent_harness::s3::garage_binary().is_file() {
            let server = start_garage(cluster).await?;
            let env: Vec<String> = server
                .env()
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            println!("== Garage: {} {}", env.join(" "), server.url(BACKUP_PREFIX));
            Some(server)
        } else {
            None
        };
        tokio::signal::ctrl_c().await?;
        if let Some(server) = s3 {
            server.stop().await?;
        }
        return Ok(None);
    }
    let root = cluster.spec().root.clone();
    let volume;
    let (work, targets) = match (&args.targets, args.clone_volume) {
        (Some(dir), _) => {
            let dir = std::path::absolute(dir)?;
            let described = format!("{} ({})", dir.display(), fs_type(&dir));
            (dir, described)
        }
        (None, Placement::Shared) => {
            let dir = root.join("targets");
            std::fs::create_dir_all(&dir)?;
            let described = format!(
                "{} ({}), on the donor's disk: the clone's writes share its bandwidth with the donor's reads",
                dir.display(),
                fs_type(&dir)
            );
            (dir, described)
        }
        (None, Placement::Separate) => {
            // Enough for one clone at a time (each is deleted once timed), with room to spare.
            let capacity = tables * 3 / 2 + (1 << 30);
            volume = CloneVolume::create(&root, capacity)?;
            let described = volume.describe();
            (volume.dir.clone(), described)
        }
    };
    let _sender = TutorialSender::start(primary)?;
    let compared = match &args.compare_agent {
        Some(agent) => Some(ComparedSidecar::start(primary, agent, &root)?),
        None => None,
    };
    let compared_donor = format!("{}:{COMPARED_PORT}", primary.addr);
    // This build's sidecar again, with TLS: the StatefulSet's certificate from the README's
    // openssl recipe, read by a clone and by a TLS client that only drains.
    let tls_dir = root.join("tls");
    let names: Vec<String> = (0..MAX_PODS)
        .map(|n| pod_host(&cluster.spec().service, n))
        .collect();
    mysql_agent_harness::make_certs(&root.join("ca"), &tls_dir, 30, &names)?;
    let tls_sidecar = ComparedSidecar::start_on(
        primary,
        &cluster.spec().agent,
        &root.join("tls-sidecar.log"),
        (TLS_PORT, TLS_HTTP_PORT),
        &["--tls-dir".as_ref(), tls_dir.as_os_str()],
    )?;
    let tls_donor = format!("{}:{TLS_PORT}", primary.host);
    let mut variants = vec![
        Variant::Agent,
        Variant::Tutorial,
        Variant::Floor,
        Variant::Serve,
        Variant::Direct,
        Variant::Tls,
        Variant::TlsServe,
    ];
    let mut samples = Samples::default();
    // Backups to a real S3 server, when one is installed (scripts/setup-s3.sh).
    let s3 = if args.no_backups || !mysql_agent_harness::s3::garage_binary().is_file() {
        println!("== backups: not measured (no Garage; run scripts/setup-s3.sh)");
        None
    } else {
        let server = start_garage(cluster).await?;
        let stored = root.join("stored.bin");
        let (stream, stored_bytes) = first_backup(
            &server,
            &cluster.spec().agent,
            primary,
            &stored,
            args.compression_level,
        )
        .await?;
        samples.backup_sizes = Some((stream, stored_bytes));
        let local_store = format!("file://{}", root.join("file-store").display());
        let status = backup_command(&cluster.spec().agent, primary, args.compression_level)
            .args(["--to", &local_store])
            .status()?;
        ensure!(
            status.success(),
            "the backup into {local_store} failed: {status}"
        );
        println!(
            "== backups: {:.0} MiB stream stored as {:.0} MiB ({:.2}x) in Garage at {}",
            stream as f64 / MIB,
            stored_bytes as f64 / MIB,
            stream as f64 / stored_bytes as f64,
            server.endpoint
        );
        variants.extend([
            Variant::Backup,
            Variant::Ingest,
            Variant::Restore,
            Variant::Compress,
            Variant::Egress,
            Variant::LocalRestore,
        ]);
        Some((server, stored, local_store))
    };
    if args.compare_agent.is_some() {
        variants.push(Variant::Compare);
        variants.push(Variant::CompareServe);
    }
    for run in 0..args.runs {
        // Interleaved, in a rotating order, so drift in the machine hits every variant alike.
        for i in 0..variants.len() {
            let variant = variants[(run + i) % variants.len()];
            sync();
            std::thread::sleep(args.settle);
            let t = Instant::now();
            match variant {
                Variant::Agent => {
                    let agent = &cluster.spec().agent;
                    let cpu = CpuMeter::start(None);
                    let (secs, rss) = agent_clone(&primary.backup_addr(), agent, &work)?;
                    samples.record_cpu(Variant::Agent, cpu);
                    samples.agent.push(secs);
                    samples.agent_rss_kib.push(rss);
                }
                Variant::Compare => {
                    let agent = args
                        .compare_agent
                        .as_deref()
                        .expect("only with --compare-agent");
                    samples
                        .compare
                        .push(agent_clone(&compared_donor, agent, &work)?.0);
                }
                Variant::Tutorial => tutorial(primary, &work, &mut samples)?,
                Variant::Floor => samples
                    .floor_stream
                    .push(floor(primary, args.tool_threads)?),
                Variant::Serve => {
                    let (secs, bytes) = serve_side(&primary.backup_addr())?;
                    samples.serve.push(secs);
                    samples.serve_bytes.push(bytes);
                }
                Variant::CompareServe => samples.compare_serve.push(serve_side(&compared_donor)?.0),
                Variant::Tls => {
                    let agent = &cluster.spec().agent;
                    let tls = ["--tls-dir".as_ref(), tls_dir.as_os_str()];
                    let (secs, rss) = agent_clone_with(&tls_donor, agent, &work, &tls)?;
                    samples.tls.push(secs);
                    samples.tls_rss_kib.push(rss);
                }
                Variant::TlsServe => samples
                    .tls_serve
                    .push(serve_side_tls(&tls_donor, &tls_dir)?.0),
                Variant::Direct => samples.direct.push(direct(primary, args.tool_threads)?),
                Variant::Backup => {
                    let (server, ..) = s3.as_ref().expect("only with a server");
                    let cpu = CpuMeter::start(server.pid());
                    let (secs, rss) = backup(
                        server,
                        &cluster.spec().agent,
                        primary,
                        args.compression_level,
                    )?;
                    samples.record_cpu(Variant::Backup, cpu);
                    samples.backup.push(secs);
                    samples.backup_rss_kib.push(rss);
                }
                Variant::Ingest => {
                    let (server, stored, _) = s3.as_ref().expect("only with a server");
                    let cpu = CpuMeter::start(server.pid());
                    samples.ingest.push(ingest(server, stored, run).await?);
                    samples.record_cpu(Variant::Ingest, cpu);
                }
                Variant::Restore => {
                    let (server, ..) = s3.as_ref().expect("only with a server");
                    let cpu = CpuMeter::start(server.pid());
                    let (secs, rss) = restore(
                        &server.url(BACKUP_PREFIX),
                        &server.env(),
                        &cluster.spec().agent,
                        &work,
                    )?;
                    samples.record_cpu(Variant::Restore, cpu);
                    samples.restore.push(secs);
                    samples.restore_rss_kib.push(rss);
                }
                Variant::Compress => {
                    let cpu = CpuMeter::start(None);
                    let level = args
                        .compression_level
                        .unwrap_or(mysql_agent::packing::DEFAULT_LEVEL);
                    samples
                        .compress
                        .push(compress(primary, args.tool_threads, level)?);
                    samples.record_cpu(Variant::Compress, cpu);
                }
                Variant::Egress => {
                    let (server, ..) = s3.as_ref().expect("only with a server");
                    let store = Store::open(
                        &server.url(BACKUP_PREFIX).parse()?,
                        &server.settings(),
                        false,
                    )?;
                    let manifest = mysql_agent::catalog::choose(&store, None).await?;
                    let cpu = CpuMeter::start(server.pid());
                    samples.egress.push(egress(&store, &manifest).await?);
                    samples.record_cpu(Variant::Egress, cpu);
                }
                Variant::LocalRestore => {
                    let (.., local_store) = s3.as_ref().expect("only with a server");
                    let cpu = CpuMeter::start(None);
                    let (secs, _) = restore(local_store, &[], &cluster.spec().agent, &work)?;
                    samples.record_cpu(Variant::LocalRestore, cpu);
                    samples.local_restore.push(secs);
                }
            }
            println!("   run {} {variant:?}: {:.2?}", run + 1, t.elapsed());
        }
    }
    if let Some((server, ..)) = &s3
        && !args.archive_load.is_zero()
    {
        samples.archive =
            Some(archive_lag(primary, server, &cluster.spec().agent, &root, args).await?);
    }
    let server_rss_kib = peak_rss_kib(primary.sidecar_pid().context("no sidecar")?)?;
    samples.tls_server_rss_kib = peak_rss_kib(tls_sidecar.0.id())?;
    drop(tls_sidecar);
    drop(compared);
    if let Some((server, stored, _)) = s3 {
        let _ = std::fs::remove_file(stored);
        let _ = std::fs::remove_dir_all(root.join("file-store"));
        server.stop().await?;
    }
    for name in ["agent", "tutorial", "restore"] {
        let _ = std::fs::remove_dir_all(work.join(name));
    }
    Ok(Some(report(
        &samples,
        tables,
        &targets,
        server_rss_kib,
        args,
    )))
}

/// The benchmark's S3 server: Garage on its own loopback address, data under the root.
async fn start_garage(cluster: &Cluster) -> Result<S3Server> {
    S3Server::garage(
        &cluster.spec().root.join("s3"),
        std::net::Ipv4Addr::new(127, 0, 40, 250),
        "bench",
        &cluster.spec().agent,
    )
    .await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Variant {
    Backup,
    Ingest,
    Restore,
    Compress,
    Egress,
    LocalRestore,
    Agent,
    Compare,
    CompareServe,
    Tutorial,
    Floor,
    Serve,
    Direct,
    Tls,
    TlsServe,
}

/// Where the compared build's sidecar listens on the primary (3308 is the tutorial's).
const COMPARED_PORT: u16 = 3309;
const COMPARED_HTTP_PORT: u16 = 8081;

/// Where the TLS sidecar listens on the primary, beside the cluster's own (plain) one.
const TLS_PORT: u16 = 3310;
const TLS_HTTP_PORT: u16 = 8082;

/// A second serve-backup on the primary, beside the cluster's own: the `--compare-agent`
/// build's, or this build's with `--tls-dir`.
struct ComparedSidecar(std::process::Child);

impl ComparedSidecar {
    fn start(primary: &Pod, agent: &Path, root: &Path) -> Result<Self> {
        Self::start_on(
            primary,
            agent,
            &root.join("compared-sidecar.log"),
            (COMPARED_PORT, COMPARED_HTTP_PORT),
            &[],
        )
    }

    fn start_on(
        primary: &Pod,
        agent: &Path,
        log_path: &Path,
        (port, http_port): (u16, u16),
        extra: &[&std::ffi::OsStr],
    ) -> Result<Self> {
        Self::start_with(primary, agent, log_path, (port, http_port), extra, &[])
    }

    fn start_with(
        primary: &Pod,
        agent: &Path,
        log_path: &Path,
        (port, http_port): (u16, u16),
        extra: &[&std::ffi::OsStr],
        envs: &[(String, String)],
    ) -> Result<Self> {
        let log = std::fs::File::create(log_path)?;
        let child = Command::new(agent)
            .args([
                "serve-backup",
                "--pod-name",
                "mysql-0",
                "--service",
                "bench",
            ])
            .arg("--data-dir")
            .arg(primary.data_dir())
            .arg("--listen")
            .arg(format!("{}:{port}", primary.addr))
            .arg("--http-listen")
            .arg(format!("{}:{http_port}", primary.addr))
            .arg("--mysql-host")
            .arg(primary.addr.to_string())
            .args(extra)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {} serve-backup", agent.display()))?;
        let sidecar = Self(child);
        // A primary serves as soon as it says so.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(log_path)?.contains(SIDECAR_STARTED) {
            ensure!(
                Instant::now() < deadline,
                "the compared sidecar never became ready; see {}",
                log_path.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(sidecar)
    }
}

impl Drop for ComparedSidecar {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

/// A sidecar archiving the primary's binary logs into `server` while sysbench writes for
/// `args.archive_load`: its lag metric sampled throughout, then the time until it holds
/// everything written.
async fn archive_lag(
    primary: &Pod,
    server: &S3Server,
    agent: &Path,
    root: &Path,
    args: &Args,
) -> Result<ArchiveLag> {
    let url = server.url("binlog-bench");
    let interval = humantime::format_duration(args.archive_interval).to_string();
    let sidecar = ComparedSidecar::start_with(
        primary,
        agent,
        &root.join("archive-sidecar.log"),
        (ARCHIVE_PORT, ARCHIVE_HTTP_PORT),
        &[
            "--archive-binlogs-to".as_ref(),
            url.as_ref(),
            "--binlog-archive-interval".as_ref(),
            interval.as_ref(),
        ],
        &server.env(),
    )?;
    let metrics = format!("{}:{ARCHIVE_HTTP_PORT}", primary.addr);
    let metric = |name: &str| -> Result<f64> {
        let text = http_get(&metrics, "/metrics")?;
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .with_context(|| format!("no {name} in /metrics"))
    };
    // The archive caught up with the dataset's load first.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        // NaN until the first round: not caught up.
        let lag = metric("mysql_agent_binlog_archive_lag_seconds ")?;
        if lag.is_finite() && lag < args.archive_interval.as_secs_f64() + 5.0 {
            break;
        }
        ensure!(Instant::now() < deadline, "the archive never caught up");
        std::thread::sleep(Duration::from_millis(500));
    }
    let binlog_bytes = async || -> Result<u64> {
        let logs = primary
            .query_rows::<(String, u64)>("SHOW BINARY LOGS")
            .await?;
        Ok(logs.iter().map(|(_, size)| size).sum())
    };
    let written_before = binlog_bytes().await?;
    let archived_before = metric("mysql_agent_binlog_archived_bytes_total ")?;
    let mut load = Command::new("sysbench")
        .arg("oltp_write_only")
        .args(["--db-driver=mysql", "--mysql-user=root", "--mysql-db=test"])
        .arg(format!("--mysql-host={}", primary.addr))
        .arg(format!("--mysql-port={MYSQL_PORT}"))
        .arg(format!("--tables={TABLES}"))
        .arg(format!("--time={}", args.archive_load.as_secs().max(1)))
        .args(["--threads=2", "run"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting sysbench oltp_write_only")?;
    let mut lags = Vec::new();
    while load.try_wait()?.is_none() {
        lags.push(metric("mysql_agent_binlog_archive_lag_seconds ")?);
        std::thread::sleep(LAG_SAMPLE);
    }
    let ended = Instant::now();
    let written = binlog_bytes().await? - written_before;
    let deadline = ended + args.archive_interval * 2 + Duration::from_secs(120);
    let archived = loop {
        let archived = metric("mysql_agent_binlog_archived_bytes_total ")? - archived_before;
        if archived as u64 >= written {
            break archived as u64;
        }
        ensure!(
            Instant::now() < deadline,
            "the archive never held the load's binary logs"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let drained = ended.elapsed().as_secs_f64();
    let peak_rss_kib = peak_rss_kib(sidecar.0.id())?;
    drop(sidecar);
    Ok(ArchiveLag {
        load: args.archive_load,
        interval: args.archive_interval,
        written,
        archived,
        lags,
        drained,
        peak_rss_kib,
    })
}

/// A plain HTTP/1.0 GET's body.
fn http_get(addr: &str, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default())
}

/// The tutorial's sidecar, as it runs there: ncat serving one backup per connection.
struct TutorialSender(std::process::Child);

impl TutorialSender {
    fn start(primary: &Pod) -> Result<Self> {
        let backup = format!(
            "mariadb-backup --backup --slave-info --stream=xbstream --host={} --port={MYSQL_PORT} --user=root --datadir={}",
            primary.addr,
            primary.data_dir().display()
        );
        let child = Command::new("ncat")
            .args(["--listen", "--keep-open", "--send-only", "--max-conns=1"])
            .arg(primary.addr.to_string())
            .arg(TUTORIAL_PORT.to_string())
            .args(["-c", &backup])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("starting the tutorial's ncat sender")?;
        let sender = Self(child);
        // Listening once the port cannot be bound (a connection would start a backup).
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpListener::bind((primary.addr, TUTORIAL_PORT)).is_ok() {
            ensure!(
                Instant::now() < deadline,
                "the tutorial's sender never listened"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(sender)
    }
}

impl Drop for TutorialSender {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(-(self.0.id() as i32));
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

/// sysbench's oltp tables up to about `size` bytes.
async fn load(primary: &Pod, size: u64) -> Result<()> {
    primary.exec("CREATE DATABASE IF NOT EXISTS test").await?;
    let rows = (size / ROW_BYTES / TABLES).max(1000);
    let status = Command::new("sysbench")
        .args([
            "oltp_read_write",
            "--db-driver=mysql",
            "--mysql-user=root",
            "--mysql-db=test",
        ])
        .arg(format!("--mysql-host={}", primary.addr))
        .arg(format!("--mysql-port={MYSQL_PORT}"))
        .arg(format!("--tables={TABLES}"))
        .arg(format!("--table-size={rows}"))
        .args(["--threads=2", "prepare"])
        .stdout(Stdio::null())
        .status()
        .context("running sysbench")?;
    ensure!(status.success(), "sysbench prepare failed");
    Ok(())
}

/// Clones with `agent`; the seconds it took and its peak RSS (KiB).
/// Where the benchmark's backups go in the S3 server.
const BACKUP_PREFIX: &str = "bench";

/// `mysql-agent backup` from the primary, keeping only the newest backup; `--to` is the
/// caller's.
fn backup_command(agent: &Path, primary: &Pod, level: Option<i32>) -> Command {
    let mut cmd = Command::new(agent);
    cmd.args(["backup", "--donor"])
        .arg(primary.backup_addr())
        .args(["--keep", "1"]);
    if let Some(level) = level {
        cmd.arg(format!("--compression-level={level}"));
    }
    cmd.env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// [`backup_command`] into `server`.
fn s3_backup_command(
    server: &S3Server,
    agent: &Path,
    primary: &Pod,
    level: Option<i32>,
) -> Command {
    let mut cmd = backup_command(agent, primary, level);
    cmd.args(["--to", &server.url(BACKUP_PREFIX)])
        .envs(server.env());
    cmd
}

/// An untimed backup, so that every variant has one to restore; its stored bytes are kept
/// in `stored` for the ingest baseline. Returns the stream and stored sizes.
async fn first_backup(
    server: &S3Server,
    agent: &Path,
    primary: &Pod,
    stored: &Path,
    level: Option<i32>,
) -> Result<(u64, u64)> {
    let status = s3_backup_command(server, agent, primary, level).status()?;
    ensure!(status.success(), "the first backup failed: {status}");
    let store = Store::open(
        &server.url(BACKUP_PREFIX).parse()?,
        &server.settings(),
        false,
    )?;
    let manifest = mysql_agent::catalog::choose(&store, None).await?;
    let mut out = std::fs::File::create(stored)?;
    for object in &manifest.objects {
        let path = store.path(&format!("{}/{}", manifest.name, object.name));
        use object_store::ObjectStoreExt;
        let bytes = store.objects().get(&path).await?.bytes().await?;
        std::io::Write::write_all(&mut out, &bytes)?;
    }
    Ok((manifest.stream_bytes, manifest.stored_bytes))
}

/// One timed backup: seconds and the agent's peak RSS.
fn backup(
    server: &S3Server,
    agent: &Path,
    primary: &Pod,
    level: Option<i32>,
) -> Result<(f64, u64)> {
    let t = Instant::now();
    let (status, rss) = run_with_peak_rss(&mut s3_backup_command(server, agent, primary, level))?;
    ensure!(status == 0, "backup exited with {status}");
    Ok((t.elapsed().as_secs_f64(), rss))
}

/// The S3 server alone ingesting the stored bytes of a backup, through the agent's own
/// upload path (same client, parts and concurrency). Seconds.
async fn ingest(server: &S3Server, stored: &Path, run: usize) -> Result<f64> {
    let store = Store::open(&server.url("ingest").parse()?, &server.settings(), false)?;
    let name = format!("run-{run}");
    let input = std::fs::File::open(stored)?;
    let t = Instant::now();
    mysql_agent::backup::store_stream(&store, &name, input).await?;
    let secs = t.elapsed().as_secs_f64();
    let mut listed = Vec::new();
    {
        use futures_util::StreamExt;
        let mut stream = store.objects().list(Some(&store.path(&name)));
        while let Some(meta) = stream.next().await {
            listed.push(meta?.location);
        }
    }
    for path in listed {
        use object_store::ObjectStoreExt;
        store.objects().delete(&path).await?;
    }
    Ok(secs)
}

/// The donor's tool through the agent's own compressor (same level and threads) into
/// nothing: what a backup costs before anything is uploaded. Seconds.
fn compress(primary: &Pod, threads: u32, level: i32) -> Result<f64> {
    use std::io::{Read, Write};
    let t = Instant::now();
    let mut tool = backup_tool(primary, threads)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the backup tool")?;
    let mut stdout = tool.stdout.take().context("the tool's stdout")?;
    let mut packer = mysql_agent::packing::Packer::new(std::io::sink(), level, None)?;
    // The agent hands the compressor whole chunks of this size, not a pipe's 64 KiB reads.
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match stdout.read(&mut buf[filled..])? {
                0 => break,
                n => filled += n,
            }
        }
        if filled == 0 {
            break;
        }
        packer.write_all(&buf[..filled])?;
        bytes += filled as u64;
    }
    packer.finish()?;
    ensure!(tool.wait()?.success(), "the backup tool failed");
    ensure!(bytes > 1 << 20, "the backup tool sent only {bytes} bytes");
    Ok(t.elapsed().as_secs_f64())
}

/// The S3 server alone serving a backup's stored objects through the agent's download path
/// (the same client's GETs), drained. Seconds.
async fn egress(store: &Store, manifest: &mysql_agent::manifest::Manifest) -> Result<f64> {
    use futures_util::StreamExt;
    use object_store::ObjectStoreExt;
    let t = Instant::now();
    let mut bytes = 0u64;
    for object in &manifest.objects {
        let path = store.path(&format!("{}/{}", manifest.name, object.name));
        let mut stream = store.objects().get(&path).await?.into_stream();
        while let Some(chunk) = stream.next().await {
            bytes += chunk?.len() as u64;
        }
    }
    ensure!(
        bytes == manifest.stored_bytes,
        "served {bytes} bytes of {}",
        manifest.stored_bytes
    );
    Ok(t.elapsed().as_secs_f64())
}

/// `clone --restore-from url` as ordinal 0 into a fresh data dir: from the store to prepared
/// data in place. Seconds and peak RSS.
fn restore(url: &str, env: &[(String, String)], agent: &Path, work: &Path) -> Result<(f64, u64)> {
    let target = fresh(work, "restore")?;
    let t = Instant::now();
    let mut cmd = Command::new(agent);
    // A cluster of one: no replica to ask first, so the time is the restore's alone.
    cmd.args([
        "clone",
        "--pod-name",
        "mysql-0",
        "--service",
        "bench",
        "--replicas",
        "1",
    ])
    .arg("--restore-from")
    .arg(url)
    .arg("--data-dir")
    .arg(&target)
    .envs(env.iter().map(|(k, v)| (k, v)))
    .env("RUST_LOG", "warn")
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let (status, rss) = run_with_peak_rss(&mut cmd)?;
    ensure!(status == 0, "the restore exited with {status}");
    let secs = t.elapsed().as_secs_f64();
    discard(&target);
    Ok((secs, rss))
}

fn agent_clone(donor: &str, agent: &Path, work: &Path) -> Result<(f64, u64)> {
    agent_clone_with(donor, agent, work, &[])
}

fn agent_clone_with(
    donor: &str,
    agent: &Path,
    work: &Path,
    extra: &[&std::ffi::OsStr],
) -> Result<(f64, u64)> {
    let target = fresh(work, "agent")?;
    let t = Instant::now();
    let mut cmd = Command::new(agent);
    cmd.args([
        "clone",
        "--pod-name",
        "mysql-1",
        "--service",
        "bench",
        "--donor",
        donor,
    ])
    .arg("--data-dir")
    .arg(&target)
    .args(extra)
    .env("RUST_LOG", "warn")
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let (status, rss_kib) = run_with_peak_rss(&mut cmd)?;
    ensure!(
        status == 0,
        "{} clone exited with {status}",
        agent.display()
    );
    let secs = t.elapsed().as_secs_f64();
    discard(&target);
    Ok((secs, rss_kib))
}

fn tutorial(primary: &Pod, work: &Path, samples: &mut Samples) -> Result<()> {
    let target = fresh(work, "tutorial")?;
    let t = Instant::now();
    let pipeline = format!(
        "set -o pipefail; ncat --recv-only {} {TUTORIAL_PORT} | mbstream -x -C {}",
        primary.addr,
        target.display()
    );
    run(Command::new("bash").args(["-c", &pipeline]))?;
    let transfer = t.elapsed();
    prepare(&target)?;
    samples.tutorial.push(t.elapsed().as_secs_f64());
    samples
        .tutorial_prepare
        .push((t.elapsed() - transfer).as_secs_f64());
    discard(&target);
    Ok(())
}

/// The backup command both the floor and the direct-socket rate run.
fn backup_tool(primary: &Pod, threads: u32) -> Command {
    let mut cmd = Command::new("mariadb-backup");
    cmd.args([
        "--backup",
        "--slave-info",
        "--stream=xbstream",
        "--user=root",
    ])
    .arg(format!("--parallel={threads}"))
    .arg(format!("--datadir={}", primary.data_dir().display()))
    .arg(format!("--host={}", primary.addr))
    .arg(format!("--port={MYSQL_PORT}"));
    cmd
}

/// The backup tool into /dev/null; seconds.
fn floor(primary: &Pod, threads: u32) -> Result<f64> {
    let t = Instant::now();
    run(backup_tool(primary, threads).stdout(Stdio::null()))?;
    Ok(t.elapsed().as_secs_f64())
}

/// The backup tool writing straight into a loopback socket that this process reads to the
/// end, as the agent's server is read: the rate of a server that costs nothing. Seconds.
fn direct(primary: &Pod, threads: u32) -> Result<f64> {
    let listener = std::net::TcpListener::bind((primary.addr, 0))?;
    let tool_end = std::net::TcpStream::connect(listener.local_addr()?)?;
    let (reader, _) = listener.accept()?;
    let t = Instant::now();
    let mut tool = backup_tool(primary, threads)
        .stdout(std::os::fd::OwnedFd::from(tool_end))
        .stderr(Stdio::null())
        .spawn()
        .context("starting the backup tool")?;
    let bytes = drain(reader)?;
    ensure!(tool.wait()?.success(), "the backup tool failed");
    ensure!(bytes > 1 << 20, "the backup tool sent only {bytes} bytes");
    Ok(t.elapsed().as_secs_f64())
}

/// A client reading an agent's backup server to the end, as [`direct`] reads the tool;
/// seconds and bytes.
fn serve_side(server: &str) -> Result<(f64, u64)> {
    let t = Instant::now();
    let socket = std::net::TcpStream::connect(server)?;
    let bytes = drain(socket)?;
    ensure!(bytes > 1 << 20, "the backup server sent only {bytes} bytes");
    Ok((t.elapsed().as_secs_f64(), bytes))
}

/// [`serve_side`] through TLS with the StatefulSet's certificate: what the TLS relay serves.
fn serve_side_tls(server: &str, tls_dir: &Path) -> Result<(f64, u64)> {
    let tls = mysql_agent::tls::TlsDir::open(tls_dir)?;
    let host = server.rsplit_once(':').map_or(server, |(h, _)| h);
    let t = Instant::now();
    let socket = std::net::TcpStream::connect(server)?;
    let session = rustls::ClientConnection::new(
        tls.client_config(),
        mysql_agent::tls::TlsDir::server_name(host)?,
    )?;
    let mut stream = rustls::StreamOwned::new(session, socket);
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        match std::io::Read::read(&mut stream, &mut buf)? {
            0 => break,
            n => bytes += n as u64,
        }
    }
    ensure!(
        bytes > 1 << 20,
        "the TLS backup server sent only {bytes} bytes"
    );
    Ok((t.elapsed().as_secs_f64(), bytes))
}

/// Reads a socket to its end; the byte count.
fn drain(mut socket: std::net::TcpStream) -> Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        match std::io::Read::read(&mut socket, &mut buf)? {
            0 => return Ok(bytes),
            n => bytes += n as u64,
        }
    }
}

fn prepare(target: &Path) -> Result<()> {
    run(Command::new("mariadb-backup")
        .arg("--prepare")
        .arg(format!("--target-dir={}", target.display())))
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stderr(Stdio::piped())
        .output()
        .context("starting a variant")?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// How often the receiving agent's peak RSS is read while it runs.
const RSS_POLL: Duration = Duration::from_millis(10);

/// Runs `cmd` and returns its exit code and the peak RSS of that very process (KiB).
/// wait4's rusage would fold in the largest reaped descendant (the prepare step of the backup
/// tool), so the kernel's own high-water mark (VmHWM, monotonic) is polled until exit instead.
fn run_with_peak_rss(cmd: &mut Command) -> Result<(i32, u64)> {
    let mut child = cmd.spawn().context("starting the agent")?;
    let mut peak = 0;
    loop {
        if let Ok(kib) = peak_rss_kib(child.id()) {
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait()? {
            return Ok((status.code().unwrap_or(-1), peak));
        }
        std::thread::sleep(RSS_POLL);
    }
}

/// The peak RSS a live process has reached so far (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("no value")?
        .parse()?)
}

fn fresh(work: &Path, name: &str) -> Result<PathBuf> {
    let dir = work.join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Every variant starts without the previous one's dirty pages to flush (or, on a file system
/// mounted with `discard`, its deleted files' blocks to discard).
fn sync() {
    nix::unistd::sync();
}

/// Removes a clone once it is timed, so deleting it is never part of the next variant's time.
fn discard(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    sync();
}

/// The file system type of `dir`, as `stat -f` names it.
fn fs_type(dir: &Path) -> String {
    Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(dir)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn which(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Where the machine's CPU went during one variant: how many cores were busy on average
/// (all processes: the agent, the donor, the S3 server, the kernel's work for them), and how
/// many of those the S3 server kept busy. It tells a ratio limited by the machine's CPU,
/// which every party shares here, from one limited by the agent's own design.
#[derive(Debug, Clone, Copy)]
struct CpuUse {
    cores_busy: f64,
    /// All processes' busy CPU time, in seconds of one core.
    core_seconds: f64,
    /// `None` when no S3 server took part.
    server_cores: Option<f64>,
}

/// Counters read at a variant's start.
struct CpuMeter {
    started: Instant,
    busy: u64,
    total: u64,
    server: Option<(u32, u64)>,
}

impl CpuMeter {
    fn start(server: Option<u32>) -> Self {
        let (busy, total, _) = machine_ticks();
        Self {
            started: Instant::now(),
            busy,
            total,
            server: server.map(|pid| (pid, process_ticks(pid))),
        }
    }

    fn stop(self) -> CpuUse {
        let (busy, total, cpus) = machine_ticks();
        // Ticks of all CPUs together: a share of them times the CPUs is cores.
        let cores = |ticks: u64| {
            cpus as f64 * ticks as f64 / total.saturating_sub(self.total).max(1) as f64
        };
        let cores_busy = cores(busy.saturating_sub(self.busy));
        CpuUse {
            cores_busy,
            core_seconds: cores_busy * self.started.elapsed().as_secs_f64(),
            server_cores: self
                .server
                .map(|(pid, before)| cores(process_ticks(pid).saturating_sub(before))),
        }
    }
}

/// Busy and total clock ticks of all CPUs since boot, and how many CPUs there are, from
/// /proc/stat. Its first line counts user, nice, system, idle, iowait, irq, softirq and
/// steal ticks: idle, iowait and steal (another guest of the host running) are not busy.
fn machine_ticks() -> (u64, u64, usize) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let field = |i: usize| fields.get(i).copied().unwrap_or(0);
    let total: u64 = fields.iter().sum();
    let cpus = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count();
    (total - field(3) - field(4) - field(7), total, cpus)
}

/// User and system clock ticks a process has used (its threads included).
fn process_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name, in parentheses, may hold spaces: count fields after its end.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    after
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|f| f.parse::<u64>().unwrap_or(0))
        .sum()
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cpu}, {cores} cores, {memory_gib:.0} GiB, Linux {}",
        kernel.trim()
    )
}

/// Below this dataset size the ratios say more about start-up than about throughput.
const ASSESSED_FROM: u64 = 1 << 30;

fn report(s: &Samples, tables: u64, targets: &str, server_rss_kib: u64, args: &Args) -> String {
    let agent = median(&s.agent);
    let tutorial = median(&s.tutorial);
    let prepare = median(&s.tutorial_prepare);
    let floor = median(&s.floor_stream) + prepare;
    let bytes = median(&s.serve_bytes.iter().map(|&b| b as f64).collect::<Vec<_>>());
    let rate = |secs: &[f64]| bytes / MIB / median(secs);
    let (serve, direct, null) = (rate(&s.serve), rate(&s.direct), rate(&s.floor_stream));
    let agent_rss = s.agent_rss_kib.iter().max().copied().unwrap_or(0) as f64 / 1024.0;
    let server_rss = server_rss_kib as f64 / 1024.0;
    let mut rows = vec![
        format!("| agent clone (connect to prepared data in place, synced) | {agent:.2} s | |"),
        format!(
            "| tutorial pipeline (its ncat sender, ncat \\| mbstream -x, prepare) | {tutorial:.2} s (prepare {prepare:.2} s) | |"
        ),
        format!("| floor (backup tool into /dev/null, plus prepare) | {floor:.2} s | |"),
        format!(
            "| tutorial / agent | {:.2}x | at least 2.5x |",
            tutorial / agent
        ),
        format!("| agent / floor | {:.2}x | at most 1.3x |", agent / floor),
        format!(
            "| serve side: agent's server / tool straight into the socket | {serve:.0} / {direct:.0} MiB/s = {:.0}% | at least 95% |",
            100.0 * serve / direct
        ),
        format!(
            "| serve side: agent's server / tool into /dev/null | {serve:.0} / {null:.0} MiB/s = {:.0}% | |",
            100.0 * serve / null
        ),
        format!("| peak RSS, receiving agent | {agent_rss:.1} MiB | under 32 MiB |"),
        format!("| peak RSS, serving agent | {server_rss:.1} MiB | under 32 MiB |"),
    ];
    if !s.tls.is_empty() {
        let tls = median(&s.tls);
        let tls_serve = rate(&s.tls_serve);
        let tls_rss = s.tls_rss_kib.iter().max().copied().unwrap_or(0) as f64 / 1024.0;
        let tls_server_rss = s.tls_server_rss_kib as f64 / 1024.0;
        rows.extend([
            format!(
                "| TLS clone (mutual TLS 1.3, relayed by the sidecar) / agent clone | {tls:.2} s = {:.2}x | at most 1.15x |",
                tls / agent
            ),
            format!(
                "| TLS server / tool straight into the socket | {tls_serve:.0} / {direct:.0} MiB/s = {:.0}% | at least 85% |",
                100.0 * tls_serve / direct
            ),
            format!("| peak RSS, TLS clone / TLS server | {tls_rss:.1} / {tls_server_rss:.1} MiB | at most 32 MiB each |"),
        ]);
    }
    if let Some((stream, stored)) = s.backup_sizes {
        let backup = median(&s.backup);
        let ingest = median(&s.ingest);
        let restore = median(&s.restore);
        let tool = median(&s.floor_stream);
        let slower = tool.max(ingest);
        let backup_rss = s.backup_rss_kib.iter().max().copied().unwrap_or(0) as f64 / 1024.0;
        let level = args
            .compression_level
            .unwrap_or(mysql_agent::packing::DEFAULT_LEVEL);
        let restore_rss = s.restore_rss_kib.iter().max().copied().unwrap_or(0) as f64 / 1024.0;
        rows.extend([
            format!(
                "| backup to S3 (donor's stream, zstd, Garage; manifest, retention) | {backup:.2} s ({:.0} MiB/s of stream) | |",
                stream as f64 / MIB / backup
            ),
            format!(
                "| Garage ingesting the stored bytes alone (the agent's upload path) | {ingest:.2} s ({:.0} MiB/s stored) | |",
                stored as f64 / MIB / ingest
            ),
            format!(
                "| backup / slower of (tool into /dev/null, ingest of the stored bytes alone) | {:.2} of {slower:.2} s: throughput {:.2} | at least 0.9 |",
                backup,
                slower / backup
            ),
            format!(
                "| restore (store to prepared data in place) / agent clone | {restore:.2} s = {:.2}x | at most 1.3x |",
                restore / agent
            ),
        ]);
        // What the machine allows: the work a backup cannot avoid (the tool's stream through
        // zstd; the S3 server and client taking in the stored bytes) and a restore's (its
        // local part, read from a file; the S3 server and client sending the stored bytes),
        // each measured alone as all processes' CPU, then spread over every core without
        // loss. No schedule of that work is faster, so these bound the ratios from below
        // (the local restore also reads its file, a small overcount) whatever the agent does.
        let cpus = machine_ticks().2;
        let core_seconds = |variant: Variant| {
            let runs = s.cpu.get(&variant).map_or(&[][..], Vec::as_slice);
            median(&runs.iter().map(|c| c.core_seconds).collect::<Vec<_>>())
        };
        if !s.compress.is_empty() {
            let compress = median(&s.compress);
            let (packing, taking) = (
                core_seconds(Variant::Compress),
                core_seconds(Variant::Ingest),
            );
            let least = ((packing + taking) / cpus as f64).max(slower);
            rows.extend([
                format!(
                    "| the backup's compression alone (tool through the agent's zstd into nothing) | {compress:.2} s | |"
                ),
                format!(
                    "| what {cpus} cores allow a backup: CPU of the compression alone {packing:.1} s + of the ingest alone {taking:.1} s, over {cpus} cores | at least {least:.2} s: throughput at most {:.2} | |",
                    slower / least
                ),
            ]);
        }
        if !s.local_restore.is_empty() {
            let local = median(&s.local_restore);
            let egress = median(&s.egress);
            let (unpacking, serving) = (
                core_seconds(Variant::LocalRestore),
                core_seconds(Variant::Egress),
            );
            let least = (unpacking + serving) / cpus as f64;
            rows.extend([
                format!(
                    "| restore from a local copy (file:// store) / agent clone | {local:.2} s = {:.2}x | |",
                    local / agent
                ),
                format!(
                    "| Garage serving the stored bytes alone (the agent's download path) | {egress:.2} s ({:.0} MiB/s stored) | |",
                    stored as f64 / MIB / egress
                ),
                format!(
                    "| what {cpus} cores allow a restore: CPU of the local restore {unpacking:.1} s + of the serving alone {serving:.1} s, over {cpus} cores | at least {least:.2} s = {:.2}x the agent clone | |",
                    least / agent
                ),
            ]);
        }
        rows.extend([
            {
                let used = |variant: Variant| {
                    let runs = s.cpu.get(&variant).map_or(&[][..], Vec::as_slice);
                    let busy = median(&runs.iter().map(|c| c.cores_busy).collect::<Vec<_>>());
                    let server: Vec<f64> = runs.iter().filter_map(|c| c.server_cores).collect();
                    if server.is_empty() {
                        format!("{busy:.2}")
                    } else {
                        format!("{busy:.2} (Garage {:.2})", median(&server))
                    }
                };
                format!(
                    "| cores busy of {cpus} (all processes; the S3 server's part): backup / compression alone / ingest alone / restore / local restore / serving alone / agent clone | {} / {} / {} / {} / {} / {} / {} | |",
                    used(Variant::Backup),
                    used(Variant::Compress),
                    used(Variant::Ingest),
                    used(Variant::Restore),
                    used(Variant::LocalRestore),
                    used(Variant::Egress),
                    used(Variant::Agent)
                )
            },
            format!(
                "| compression on this dataset (zstd level {level}) | {:.0} MiB stream, {:.0} MiB stored = {:.2}x | |",
                stream as f64 / MIB,
                stored as f64 / MIB,
                stream as f64 / stored as f64
            ),
            format!("| peak RSS, backup | {backup_rss:.1} MiB | at most 64 MiB |"),
            format!("| peak RSS, restore | {restore_rss:.1} MiB | at most 64 MiB |"),
        ]);
    }
    if let Some(a) = &s.archive {
        let mut lags: Vec<f64> = a.lags.iter().copied().filter(|l| l.is_finite()).collect();
        lags.sort_by(f64::total_cmp);
        let max = lags.last().copied().unwrap_or(f64::NAN);
        rows.extend([
            format!(
                "| binary log archive under sysbench oltp_write_only (2 threads, {}), --binlog-archive-interval {} | {:.1} MiB of binary log written ({:.2} MiB/s), {:.1} MiB archived | |",
                humantime::format_duration(a.load),
                humantime::format_duration(a.interval),
                a.written as f64 / MIB,
                a.written as f64 / MIB / a.load.as_secs_f64(),
                a.archived as f64 / MIB
            ),
            format!(
                "| archive lag during the load (the sidecar's metric, every {} ms) | median {:.1} s, max {max:.1} s; all archived {:.1} s after the load | at most the interval plus a round |",
                LAG_SAMPLE.as_millis(),
                median(&lags),
                a.drained
            ),
            format!("| peak RSS, archiving sidecar | {:.1} MiB | |", a.peak_rss_kib as f64 / 1024.0),
        ]);
    }
    if !s.compare.is_empty() {
        let compare = median(&s.compare);
        let compared = args
            .compare_agent
            .as_deref()
            .unwrap_or(Path::new(""))
            .display();
        rows.insert(
            1,
            format!(
                "| compared build's clone, from its own sidecar ({compared}) | {compare:.2} s ({:.2}x this one) | |",
                compare / agent
            ),
        );
        let compare_serve = rate(&s.compare_serve);
        rows.insert(
            7,
            format!(
                "| compared build's server / tool straight into the socket | {compare_serve:.0} / {direct:.0} MiB/s = {:.0}% | |",
                100.0 * compare_serve / direct
            ),
        );
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Clone benchmark: {:.0} MiB of sysbench tables on MariaDB 10.11 ({:.0} MiB streamed), medians of {} interleaved runs, {:?} idle before each variant",
        tables as f64 / MIB,
        bytes / MIB,
        args.runs,
        args.settle
    );
    let _ = writeln!(out, "Machine: {}", machine());
    let _ = writeln!(out, "Clones written to: {targets}\n");
    if args.size < ASSESSED_FROM {
        let _ = writeln!(
            out,
            "Targets NOT assessed: at {:.0} MiB start-up costs (connections, the tools' own start, prepare) dominate every variant; the targets apply from {:.0} MiB up. This run only checks that the benchmark works.\n",
            args.size as f64 / MIB,
            ASSESSED_FROM as f64 / MIB
        );
    }
    let _ = writeln!(out, "| measure | median | target |\n|---|---|---|");
    for row in rows {
        let _ = writeln!(out, "{row}");
    }
    let _ = writeln!(
        out,
        "\nRaw seconds: agent {:?}, tutorial {:?}, floor stream {:?}, serve {:?}, direct {:?}, compared {:?}, compared serve {:?}, backup {:?}, ingest {:?}, restore {:?}, compression alone {:?}, serving alone {:?}, local restore {:?}, tls {:?}, tls serve {:?}",
        rounded(&s.agent),
        rounded(&s.tutorial),
        rounded(&s.floor_stream),
        rounded(&s.serve),
        rounded(&s.direct),
        rounded(&s.compare),
        rounded(&s.compare_serve),
        rounded(&s.backup),
        rounded(&s.ingest),
        rounded(&s.restore),
        rounded(&s.compress),
        rounded(&s.egress),
        rounded(&s.local_restore),
        rounded(&s.tls),
        rounded(&s.tls_serve)
    );
    out
}

fn rounded(values: &[f64]) -> Vec<f64> {
    values.iter().map(|v| (v * 100.0).round() / 100.0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("0.5GiB"), Ok(1 << 29));
        assert!(parse_size("1GB").is_err());
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
