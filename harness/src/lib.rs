//! The tutorial's StatefulSet, modelled for real on one machine: the demo, the end-to-end
//! tests and the benchmark all run their clusters through this crate.
//!
//! Pod N of a cluster owns the loopback address 127.0.<subnet>.(10+N), runs a real MariaDB
//! mysqld on :3306 of it and the agent's backup server on :3307, and is named
//! `mysql-N.<service>` through a block of /etc/hosts lines (so replication threads and the
//! agent resolve peers exactly as in Kubernetes). Its volumes are directories: `conf.d/` (the
//! emptyDir), the cluster's shared `config-map/`, and `data/` (the PersistentVolume). Its
//! containers are processes started in the StatefulSet's order: `mysql-agent init-config`,
//! `mysql-agent clone`, mysqld (initialised like the mysql image does on an empty data dir,
//! with `root@'%'` and an empty password), then the `mysql-agent serve-backup` sidecar. A pod
//! counts as Ready when `SELECT 1` answers over TCP, the tutorial's readiness probe, and the
//! next pod starts then (OrderedReady), whatever the sidecar is doing.
//!
//! Clusters that may run at the same time need distinct service names and subnets.

pub mod s3;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, Row};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

pub const STATEFULSET: &str = "mysql";
pub const MYSQL_PORT: u16 = 3306;
pub const BACKUP_PORT: u16 = 3307;
pub const HTTP_PORT: u16 = 8080;
/// Names registered in /etc/hosts per cluster; a cluster may scale up to this many pods.
pub const MAX_PODS: u32 = 8;
/// The ConfigMap of the tutorial, with MariaDB's replica option: mariadbd refuses to start
/// with the tutorial's `super-read-only`.
pub const PRIMARY_CNF: &str = "# Apply this config only on the primary.\n[mysqld]\nlog-bin\n";
pub const REPLICA_CNF: &str = "# Apply this config only on replicas.\n[mysqld]\nread-only\n";
/// How long an init container may run (a clone of a large dataset included).
pub const INIT_CONTAINER_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// How long mysqld may take to answer after starting (crash recovery included).
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a process gets to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// What serve-backup logs once its listener is bound.
pub const SIDECAR_STARTED: &str = "serving backups";
/// The packages every pod needs, installed on first use when missing.
pub const PACKAGES: [&str; 3] = ["mariadb-server", "mariadb-backup", "ncat"];

/// Where and how a cluster runs.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// The headless Service name: pods are `mysql-N.<service>`.
    pub service: String,
    /// Pods get 127.0.<subnet>.(10+N).
    pub subnet: u8,
    /// A directory for every pod's volumes and logs; emptied first.
    pub root: PathBuf,
    /// The mysql-agent binary under test.
    pub agent: PathBuf,
    /// Passwords and a backup secret from files, as a hardened StatefulSet mounts them;
    /// otherwise the tutorial's root without a password and an open port 3307.
    pub secured: bool,
}

/// The secrets of a secured cluster: in files under `<root>/secrets/` (mode 0600), as a
/// Kubernetes Secret is mounted, and in memory for the tests' own checks.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub dir: PathBuf,
    pub root_password: String,
    pub replication_password: String,
    pub backup_password: String,
    pub backup_secret: String,
}

pub const REPLICATION_USER: &str = "repl";
pub const BACKUP_USER: &str = "backup";

impl Credentials {
    fn generate(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir)?;
        let random = || -> Result<String> {
            let mut bytes = [0u8; 12];
            File::open("/dev/urandom")?.read_exact(&mut bytes)?;
            Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
        };
        // Quotes, a backslash and a '#' make every quoting layer (SQL literals, option files)
        // do its job; the random part makes each value findable in a grep.
        let credentials = Self {
            dir: dir.to_owned(),
            root_password: format!("r'o\"o#t-{}", random()?),
            replication_password: format!("re\\pl-{}", random()?),
            backup_password: format!("b a'c#k-{}", random()?),
            backup_secret: format!("secret-{}{}", random()?, random()?),
        };
        for (name, value) in credentials.files() {
            let path = dir.join(name);
            fs::write(&path, value)?;
            fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        }
        Ok(credentials)
    }

    fn files(&self) -> [(&'static str, &str); 4] {
        [
            ("root-password", &self.root_password),
            ("replication-password", &self.replication_password),
            ("backup-password", &self.backup_password),
            ("backup-secret", &self.backup_secret),
        ]
    }

    /// Every secret value, for tests that look for leaks.
    pub fn values(&self) -> [&str; 4] {
        [
            &self.root_password,
            &self.replication_password,
            &self.backup_password,
            &self.backup_secret,
        ]
    }

    pub fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// serve-backup's flags in a hardened StatefulSet: every account from a file, the
    /// accounts created by the primary, the port guarded by the secret.
    fn sidecar_args(&self) -> Vec<String> {
        vec![
            "--mysql-password-file".into(),
            self.file("root-password"),
            "--replication-user".into(),
            REPLICATION_USER.into(),
            "--replication-password-file".into(),
            self.file("replication-password"),
            "--backup-user".into(),
            BACKUP_USER.into(),
            "--backup-password-file".into(),
            self.file("backup-password"),
            "--create-accounts".into(),
            "--backup-secret-file".into(),
            self.file("backup-secret"),
        ]
    }
}

pub struct Cluster {
    spec: ClusterSpec,
    config_map: PathBuf,
    credentials: Option<Credentials>,
    pods: Vec<Pod>,
    /// Environment every pod created from now on gives its agent processes (see
    /// [`Cluster::enable_tls`]).
    pod_env: Vec<(String, String)>,
    _hosts: HostsBlock,
}

impl Cluster {
    /// Prepares an empty cluster (no pod yet): directories, ConfigMap, /etc/hosts names.
    pub async fn create(spec: ClusterSpec) -> Result<Self> {
        ensure!(
            nix::unistd::geteuid().is_root(),
            "the cluster harness runs mysqld as root and names pods in /etc/hosts: run it as root"
        );
        ensure_packages()?;
        ensure!(
            spec.agent.is_file(),
            "the agent binary {} does not exist (build it first)",
            spec.agent.display()
        );
        if spec.root.exists() {
            fs::remove_dir_all(&spec.root)
                .with_context(|| format!("emptying {}", spec.root.display()))?;
        }
        let config_map = spec.root.join("config-map");
        fs::create_dir_all(&config_map)?;
        fs::write(config_map.join("master.cnf"), PRIMARY_CNF)?;
        fs::write(config_map.join("slave.cnf"), REPLICA_CNF)?;
        let names: Vec<(Ipv4Addr, String)> = (0..MAX_PODS)
            .map(|n| (pod_addr(spec.subnet, n), pod_host(&spec.service, n)))
            .collect();
        let hosts = HostsBlock::install(&spec.service, &names)?;
        let credentials = spec
            .secured
            .then(|| Credentials::generate(&spec.root.join("secrets")))
            .transpose()?;
        Ok(Self {
            spec,
            config_map,
            credentials,
            pods: Vec::new(),
            pod_env: Vec::new(),
            _hosts: hosts,
        })
    }

    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    /// The secrets of a secured cluster.
    pub fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    pub fn pod(&self, ordinal: u32) -> &Pod {
        &self.pods[ordinal as usize]
    }

    pub fn pod_mut(&mut self, ordinal: u32) -> &mut Pod {
        &mut self.pods[ordinal as usize]
    }

    pub fn primary(&self) -> &Pod {
        self.pod(0)
    }

    pub fn replicas(&self) -> &[Pod] {
        &self.pods[1..]
    }

    /// Adds pods one by one, each through its init containers to Ready, as the StatefulSet
    /// controller does with `kubectl scale`.
    pub async fn scale_to(&mut self, replicas: u32) -> Result<()> {
        ensure!(replicas <= MAX_PODS, "at most {MAX_PODS} pods");
        while (self.pods.len() as u32) < replicas {
            self.add_pod().await?;
        }
        Ok(())
    }

    /// Creates the next pod's directories without running anything, for tests that drive
    /// its containers one by one.
    pub fn new_pod(&mut self) -> Result<u32> {
        let ordinal = self.pods.len() as u32;
        ensure!(ordinal < MAX_PODS, "at most {MAX_PODS} pods");
        let mut pod = Pod::new(
            &self.spec,
            &self.config_map,
            self.credentials.clone(),
            ordinal,
        )?;
        pod.agent_env.extend(self.pod_env.iter().cloned());
        self.pods.push(pod);
        Ok(ordinal)
    }

    /// TLS for every pod created from now on, as the TLS component gives it: the
    /// StatefulSet's certificate (every pod's name, from `scripts/make-certs.sh`) in
    /// `<root>/tls`, and `MYSQL_AGENT_TLS_DIR` for every agent process. Returns the directory.
    pub fn enable_tls(&mut self) -> Result<PathBuf> {
        let root = &self.spec.root;
        let tls = root.join("tls");
        let names: Vec<String> = (0..MAX_PODS)
            .map(|n| pod_host(&self.spec.service, n))
            .collect();
        make_certs(&root.join("ca"), &tls, CERT_DAYS, &names)?;
        self.pod_env
            .push(("MYSQL_AGENT_TLS_DIR".into(), tls.display().to_string()));
        Ok(tls)
    }

    /// Starts the next pod: init-config, clone, mysqld, Ready, serve-backup.
    pub async fn add_pod(&mut self) -> Result<()> {
        let ordinal = self.new_pod()?;
        self.start_pod(ordinal).await
    }

    /// Runs pod `ordinal`'s containers the StatefulSet's way, with the same flags as every
    /// pod: init-config, clone, mysqld, serve-backup. Also how a deleted pod comes back.
    pub async fn start_pod(&mut self, ordinal: u32) -> Result<()> {
        let pod = self.pod_mut(ordinal);
        pod.init_config().await?;
        pod.clone_data(&[]).await?;
        pod.start_mysqld().await?;
        pod.start_sidecar(&[]).await?;
        Ok(())
    }

    /// Stops every pod: sidecars by SIGTERM (an error if one exits non-zero), then mysqld.
    /// A clean stop then releases the pods' volumes (data and tmp dirs) as deleting the
    /// StatefulSet and its claims would; logs and config stay for reading. Twenty-odd test
    /// clusters left whole hold gigabytes, which a CI machine's disk may not have. A cluster
    /// whose stop fails, or whose test panics before it, keeps everything for inspection.
    pub async fn stop(self) -> Result<()> {
        self.stop_releasing(true).await
    }

    /// [`Cluster::stop`], keeping the volumes (the demo's, for a look afterwards).
    pub async fn stop_keeping_volumes(self) -> Result<()> {
        self.stop_releasing(false).await
    }

    async fn stop_releasing(mut self, release: bool) -> Result<()> {
        let mut failures = Vec::new();
        for pod in self.pods.iter_mut().rev() {
            if pod.sidecar_running() {
                match pod.stop_sidecar().await {
                    Ok(status) if status.success() => {}
                    Ok(status) => {
                        failures.push(format!("{} serve-backup exited with {status}", pod.name))
                    }
                    Err(e) => failures.push(format!("{}: {e:#}", pod.name)),
                }
            }
            if let Err(e) = pod.stop_mysqld().await {
                failures.push(format!("{}: {e:#}", pod.name));
            }
        }
        ensure!(
            failures.is_empty(),
            "stopping the cluster: {}",
            failures.join("; ")
        );
        if release {
            for pod in &self.pods {
                remove_dir_if_present(&pod.data_dir())?;
                remove_dir_if_present(&pod.dir.join("tmp"))?;
            }
        }
        Ok(())
    }

    /// Waits until every replica has `rows` rows in `table`.
    pub async fn wait_replicated(&self, table: &str, rows: u64, timeout: Duration) -> Result<()> {
        for pod in self.replicas() {
            pod.wait_row_count(table, rows, timeout).await?;
        }
        Ok(())
    }
}

/// Days a test certificate is valid.
const CERT_DAYS: u32 = 30;

/// Runs the project's openssl recipe (`scripts/make-certs.sh`): a certificate for `names`,
/// valid `days` (0: already expired), signed by the CA in `ca` (created if missing), into
/// `out` as tls.crt, tls.key and ca.crt.
pub fn make_certs(ca: &Path, out: &Path, days: u32, names: &[String]) -> Result<()> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/make-certs.sh");
    let status = std::process::Command::new(&script)
        .arg("--ca")
        .arg(ca)
        .arg("--out")
        .arg(out)
        .args(["--days", &days.to_string()])
        .args(names)
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    ensure!(
        status.success(),
        "{} exited with {status}",
        script.display()
    );
    Ok(())
}

pub fn pod_addr(subnet: u8, ordinal: u32) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, subnet, 10 + ordinal as u8)
}

pub fn pod_name(ordinal: u32) -> String {
    format!("{STATEFULSET}-{ordinal}")
}

pub fn pod_host(service: &str, ordinal: u32) -> String {
    format!("{}.{service}", pod_name(ordinal))
}

/// One pod: its identity, its volumes, and its running containers.
pub struct Pod {
    pub ordinal: u32,
    pub name: String,
    /// The pod's DNS name, `mysql-N.<service>`.
    pub host: String,
    pub addr: Ipv4Addr,
    pub dir: PathBuf,
    service: String,
    agent: PathBuf,
    config_map: PathBuf,
    mysqld: Option<Child>,
    sidecar: Option<Child>,
    credentials: Option<Credentials>,
    /// Extra environment for every agent process of this pod (failpoints, say).
    pub agent_env: Vec<(String, String)>,
    /// A hard limit on the open files of every agent process of this pod (`prlimit`), as a
    /// container runtime may set one.
    pub agent_nofile: Option<u64>,
}

impl Pod {
    fn new(
        spec: &ClusterSpec,
        config_map: &Path,
        credentials: Option<Credentials>,
        ordinal: u32,
    ) -> Result<Self> {
        let name = pod_name(ordinal);
        let dir = spec.root.join(&name);
        // Each pod has its own /tmp, as in Kubernetes: a starting mysqld deletes every `#sql*`
        // file in its tmpdir, including another pod's tables being installed.
        for sub in ["conf.d", "data", "run", "logs", "tmp"] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let addr = pod_addr(spec.subnet, ordinal);
        let pod = Self {
            ordinal,
            host: pod_host(&spec.service, ordinal),
            name,
            addr,
            dir,
            service: spec.service.clone(),
            agent: spec.agent.clone(),
            config_map: config_map.to_owned(),
            mysqld: None,
            sidecar: None,
            credentials,
            agent_env: Vec::new(),
            agent_nofile: None,
        };
        fs::write(pod.defaults_file(), pod.my_cnf())?;
        Ok(pod)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn conf_dir(&self) -> PathBuf {
        self.dir.join("conf.d")
    }

    pub fn defaults_file(&self) -> PathBuf {
        self.dir.join("my.cnf")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("run/mysqld.sock")
    }

    /// The log of one container: `init-config`, `clone`, `serve-backup` or `mysqld`.
    pub fn log(&self, container: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{container}.log"))
    }

    pub fn backup_addr(&self) -> String {
        format!("{}:{BACKUP_PORT}", self.addr)
    }

    /// The sidecar's HTTP endpoint (/healthz, /readyz, /metrics).
    pub fn http_addr(&self) -> String {
        format!("{}:{HTTP_PORT}", self.addr)
    }

    fn my_cnf(&self) -> String {
        let d = self.dir.display();
        format!(
            "[mysqld]\nuser=root\ndatadir={d}/data\nsocket={d}/run/mysqld.sock\npid-file={d}/run/mysqld.pid\ntmpdir={d}/tmp\n\
             port={MYSQL_PORT}\nbind-address={addr}\nlog-error={d}/logs/mysqld.log\nskip-name-resolve\n\
             innodb_buffer_pool_size=64M\ninnodb_log_file_size=48M\n!includedir {d}/conf.d\n",
            addr = self.addr
        )
    }

    /// The agent in one of its modes, as the StatefulSet runs it, logging to its container log.
    pub fn agent_command(&self, mode: &str, extra: &[&str]) -> Result<Command> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(mode))
            .with_context(|| format!("opening {}", self.log(mode).display()))?;
        let mut cmd = match self.agent_nofile {
            // prlimit sets the limit and then execs the agent: the pid stays the agent's.
            Some(n) => {
                let mut cmd = Command::new("prlimit");
                cmd.arg(format!("--nofile={n}:{n}"))
                    .arg("--")
                    .arg(&self.agent);
                cmd
            }
            None => Command::new(&self.agent),
        };
        cmd.arg(mode)
            .args(["--pod-name", &self.name, "--service", &self.service])
            .args(extra)
            .env("RUST_LOG", "info")
            .envs(self.agent_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        Ok(cmd)
    }

    async fn run_init_container(&self, mode: &str, extra: &[&str]) -> Result<()> {
        let status = run_to_end(self.agent_command(mode, extra)?, INIT_CONTAINER_TIMEOUT)
            .await
            .with_context(|| format!("{} {mode}", self.name))?;
        ensure!(
            status.success(),
            "{} {mode} exited with {status}; its log {} ends with:\n{}",
            self.name,
            self.log(mode).display(),
            tail(&self.log(mode), 15)
        );
        Ok(())
    }

    pub async fn init_config(&self) -> Result<()> {
        let (cm, conf) = (
            self.config_map.display().to_string(),
            self.conf_dir().display().to_string(),
        );
        self.run_init_container(
            "init-config",
            &["--config-map-dir", &cm, "--conf-dir", &conf],
        )
        .await
    }

    /// The clone init container's flags, `extra` (donors, timeouts) added by tests.
    fn clone_args(&self, extra: &[&str]) -> Vec<String> {
        let mut args = vec!["--data-dir".into(), self.data_dir().display().to_string()];
        if let Some(credentials) = &self.credentials {
            args.extend([
                "--backup-secret-file".into(),
                credentials.file("backup-secret"),
            ]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// Runs the clone init container.
    pub async fn clone_data(&self, extra: &[&str]) -> Result<()> {
        let args = self.clone_args(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run_init_container("clone", &args).await
    }

    /// Starts the clone init container without waiting for it, for tests that interrupt it.
    pub fn spawn_clone(&self, extra: &[&str]) -> Result<Child> {
        let args = self.clone_args(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.agent_command("clone", &args)?
            .spawn()
            .with_context(|| format!("starting clone for {}", self.name))
    }

    /// Starts mysqld (initialising an empty data dir as the mysql image does) and waits for
    /// the tutorial's readiness probe to pass.
    pub async fn start_mysqld(&mut self) -> Result<()> {
        let fresh = !self.data_dir().join("mysql").exists();
        if fresh {
            self.initialise().await?;
        }
        self.mysqld = Some(self.spawn_mysqld()?);
        if fresh {
            self.create_root_anywhere().await?;
        }
        self.wait_ready(READY_TIMEOUT).await
    }

    fn spawn_mysqld(&self) -> Result<Child> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log("mysqld"))?;
        Command::new(mariadbd())
            .arg(format!(
                "--defaults-file={}",
                self.defaults_file().display()
            ))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting mysqld for {}", self.name))
    }

    async fn initialise(&self) -> Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log("install-db"))?;
        let mut cmd = Command::new("mariadb-install-db");
        cmd.arg(format!(
            "--defaults-file={}",
            self.defaults_file().display()
        ))
        .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
        let status = run_to_end(cmd, READY_TIMEOUT).await?;
        ensure!(
            status.success(),
            "mariadb-install-db for {} exited with {status} ({}): {}\nmysqld log:\n{}",
            self.name,
            free_space(&self.data_dir()),
            tail(&self.log("install-db"), 10),
            tail(&self.log("mysqld"), 20)
        );
        Ok(())
    }

    /// The mysql image's MYSQL_ALLOW_EMPTY_PASSWORD (or MYSQL_ROOT_PASSWORD_FILE when
    /// secured): root from anywhere, kept out of the binary log as the image's entrypoint does.
    async fn create_root_anywhere(&self) -> Result<()> {
        let opts = OptsBuilder::default()
            .socket(Some(self.socket().display().to_string()))
            .user(Some("root"));
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut conn = loop {
            match Conn::new(opts.clone()).await {
                Ok(conn) => break conn,
                Err(e) if Instant::now() > deadline => {
                    return Err(e)
                        .context(format!("{} never accepted a socket connection", self.name));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        // The images drop the other root accounts install-db makes (root@'127.0.0.1' would
        // otherwise match loopback clients first, without a password).
        let others: Vec<String> = conn
            .query("SELECT Host FROM mysql.user WHERE User = 'root' AND Host NOT IN ('localhost', '%')")
            .await?;
        for host in others {
            let host = mysql_async::Value::from(host).as_sql(false);
            conn.query_drop(format!("SET SQL_LOG_BIN=0; DROP USER 'root'@{host}"))
                .await?;
        }
        let password = mysql_async::Value::from(self.root_password()).as_sql(false);
        conn.query_drop(format!(
            "SET SQL_LOG_BIN=0; CREATE USER 'root'@'%' IDENTIFIED BY {password}; \
             GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION; \
             ALTER USER 'root'@'localhost' IDENTIFIED BY {password}"
        ))
        .await?;
        conn.disconnect().await?;
        Ok(())
    }

    /// The tutorial's readiness probe: `SELECT 1` over TCP.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.query_rows::<u8>("SELECT 1").await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(e).context(format!(
                        "{} not ready after {timeout:?}; mysqld log: {}",
                        self.name,
                        tail(&self.log("mysqld"), 10)
                    ));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
            if let Some(status) = self
                .mysqld
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.mysqld = None;
                bail!(
                    "{} mysqld exited with {status} ({}): {}",
                    self.name,
                    free_space(&self.data_dir()),
                    tail(&self.log("mysqld"), 10)
                );
            }
        }
    }

    /// Stops mysqld as Kubernetes does (SIGTERM, then wait).
    pub async fn stop_mysqld(&mut self) -> Result<()> {
        if let Some(child) = self.mysqld.take() {
            stop(child, &format!("{} mysqld", self.name)).await?;
        }
        Ok(())
    }

    /// The pod is deleted with its volume (a lost node with local storage, a deleted claim):
    /// its processes are killed, and its data dir and emptyDirs come back empty.
    pub async fn lose_volume(&mut self) -> Result<()> {
        if self.sidecar_running() {
            self.kill_sidecar().await?;
        }
        self.kill_mysqld().await?;
        for sub in ["conf.d", "data", "run", "tmp"] {
            let dir = self.dir.join(sub);
            fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(())
    }

    /// Kills mysqld without a shutdown (OOM kill, node loss).
    pub async fn kill_mysqld(&mut self) -> Result<()> {
        if let Some(mut child) = self.mysqld.take() {
            child.kill().await?;
        }
        Ok(())
    }

    pub async fn start_sidecar(&mut self, extra: &[&str]) -> Result<()> {
        let data = self.data_dir().display().to_string();
        let listen = self.backup_addr();
        let http_listen = self.http_addr();
        let mysql_host = self.addr.to_string();
        let secured = self
            .credentials
            .as_ref()
            .map(Credentials::sidecar_args)
            .unwrap_or_default();
        let mut args = vec![
            "--data-dir",
            data.as_str(),
            "--listen",
            listen.as_str(),
            "--mysql-host",
            mysql_host.as_str(),
            "--http-listen",
            http_listen.as_str(),
        ];
        args.extend(secured.iter().map(String::as_str));
        args.extend_from_slice(extra);
        let log = self.log("serve-backup");
        let already = fs::read_to_string(&log)
            .unwrap_or_default()
            .matches(SIDECAR_STARTED)
            .count();
        let mut child = self
            .agent_command("serve-backup", &args)?
            .spawn()
            .with_context(|| format!("starting serve-backup for {}", self.name))?;
        // Started means listening, as a startup probe would see it; a signal sent before the
        // process has even reached main() could not be handled.
        let deadline = Instant::now() + READY_TIMEOUT;
        while fs::read_to_string(&log)
            .unwrap_or_default()
            .matches(SIDECAR_STARTED)
            .count()
            == already
        {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{} serve-backup exited with {status} at start-up: {}",
                    self.name,
                    tail(&log, 10)
                );
            }
            ensure!(
                Instant::now() < deadline,
                "{} serve-backup never started listening",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.sidecar = Some(child);
        Ok(())
    }

    pub fn sidecar_running(&self) -> bool {
        self.sidecar.is_some()
    }

    pub fn sidecar_pid(&self) -> Option<u32> {
        self.sidecar.as_ref().and_then(Child::id)
    }

    /// SIGTERM to the sidecar, as the kubelet sends; returns how it exited.
    pub async fn stop_sidecar(&mut self) -> Result<ExitStatus> {
        let child = self.sidecar.take().context("the sidecar is not running")?;
        stop(child, &format!("{} serve-backup", self.name)).await
    }

    /// Waits for the sidecar to exit on its own (a failpoint, a fatal error).
    pub async fn wait_sidecar_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let child = self
            .sidecar
            .as_mut()
            .context("the sidecar is not running")?;
        let status = tokio::time::timeout(timeout, child.wait())
            .await
            .with_context(|| {
                format!("{} serve-backup still running after {timeout:?}", self.name)
            })??;
        self.sidecar = None;
        Ok(status)
    }

    /// SIGKILL to the sidecar (OOM kill, node loss).
    pub async fn kill_sidecar(&mut self) -> Result<()> {
        if let Some(mut child) = self.sidecar.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// Waits until a container's log has `needle` at least `count` times.
    pub async fn wait_for_log(
        &self,
        container: &str,
        needle: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<()> {
        let log = self.log(container);
        let deadline = Instant::now() + timeout;
        while fs::read_to_string(&log)
            .unwrap_or_default()
            .matches(needle)
            .count()
            < count
        {
            ensure!(
                Instant::now() < deadline,
                "{} {container} did not log {needle:?} ({count}x) within {timeout:?}: {}",
                self.name,
                tail(&log, 10)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Waits until this replica's sidecar has configured replication (once per sidecar run).
    pub async fn wait_replication_configured(&self, runs: usize) -> Result<()> {
        self.wait_for_log(
            "serve-backup",
            "replication is configured",
            runs,
            READY_TIMEOUT,
        )
        .await
    }

    /// Root's password: the secured cluster's, or the tutorial's empty one.
    pub fn root_password(&self) -> &str {
        self.credentials
            .as_ref()
            .map_or("", |c| c.root_password.as_str())
    }

    /// A TCP connection as root, the way clients reach the pod.
    pub async fn conn(&self) -> Result<Conn> {
        let opts = OptsBuilder::default()
            .ip_or_hostname(self.addr.to_string())
            .tcp_port(MYSQL_PORT)
            .user(Some("root"))
            .pass(Some(self.root_password().to_owned()))
            .prefer_socket(false);
        Conn::new(opts)
            .await
            .with_context(|| format!("connecting to {} at {}", self.name, self.addr))
    }

    pub async fn exec(&self, sql: &str) -> Result<()> {
        let mut conn = self.conn().await?;
        conn.query_drop(sql)
            .await
            .with_context(|| format!("{} on {}", sql, self.name))?;
        conn.disconnect().await?;
        Ok(())
    }

    pub async fn query_rows<T: mysql_async::prelude::FromRow + Send + 'static>(
        &self,
        sql: &str,
    ) -> Result<Vec<T>> {
        let mut conn = self.conn().await?;
        let rows = conn
            .query(sql)
            .await
            .with_context(|| format!("{} on {}", sql, self.name))?;
        conn.disconnect().await?;
        Ok(rows)
    }

    pub async fn row_count(&self, table: &str) -> Result<u64> {
        let rows: Vec<u64> = self
            .query_rows(&format!("SELECT COUNT(*) FROM {table}"))
            .await?;
        Ok(rows[0])
    }

    /// Waits until `table` has `rows` rows here (replication catching up).
    pub async fn wait_row_count(&self, table: &str, rows: u64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.row_count(table).await;
            match seen {
                Ok(n) if n == rows => return Ok(()),
                _ if Instant::now() > deadline => bail!(
                    "{} has {seen:?} rows in {table} after {timeout:?}, expected {rows}; replication: {:?}",
                    self.name,
                    self.replica_status().await
                ),
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// SHOW SLAVE STATUS as (column, value) pairs; `None` on a non-replica.
    pub async fn replica_status(&self) -> Result<Option<Vec<(String, String)>>> {
        let rows: Vec<Row> = self.query_rows("SHOW SLAVE STATUS").await?;
        Ok(rows.first().map(|row| {
            row.columns_ref()
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let value = match row.as_ref(i) {
                        Some(mysql_async::Value::Bytes(b)) => {
                            String::from_utf8_lossy(b).into_owned()
                        }
                        Some(mysql_async::Value::NULL) | None => String::new(),
                        Some(v) => v.as_sql(false),
                    };
                    (c.name_str().into_owned(), value)
                })
                .collect()
        }))
    }

    /// One column of SHOW SLAVE STATUS.
    pub async fn replica_field(&self, column: &str) -> Result<Option<String>> {
        Ok(self
            .replica_status()
            .await?
            .and_then(|cols| cols.into_iter().find(|(c, _)| c == column).map(|(_, v)| v)))
    }
}

/// Runs a command to its end within `timeout`, killing it past that.
pub async fn run_to_end(mut cmd: Command, timeout: Duration) -> Result<ExitStatus> {
    let mut child = cmd
        .kill_on_drop(true)
        .spawn()
        .context("starting a process")?;
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => Ok(status?),
        Err(_) => {
            child.kill().await?;
            bail!("still running after {timeout:?}; killed")
        }
    }
}

async fn stop(mut child: Child, what: &str) -> Result<ExitStatus> {
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
        Ok(status) => Ok(status?),
        Err(_) => {
            child.kill().await?;
            bail!("{what} did not exit within {STOP_TIMEOUT:?} of SIGTERM; killed")
        }
    }
}

/// The space left where `path` lives, for error messages: a full disk fails mysqld in ways
/// whose own messages may not say so (its log cannot be written either).
pub fn free_space(path: &Path) -> String {
    match nix::sys::statvfs::statvfs(path) {
        Ok(fs) => {
            let free = fs.blocks_available() * fs.fragment_size();
            format!("{} MiB free on {}'s filesystem", free >> 20, path.display())
        }
        Err(e) => format!("free space on {} unknown: {e}", path.display()),
    }
}

/// Removes `dir` and what it holds; one already gone is not an error.
pub(crate) fn remove_dir_if_present(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}

/// The last `lines` lines of a log, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn mariadbd() -> PathBuf {
    // Debian installs it in /usr/sbin, which a non-login PATH may lack.
    find_on_path("mariadbd").unwrap_or_else(|| PathBuf::from("/usr/sbin/mariadbd"))
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Installs MariaDB and mariadb-backup from Debian when they are missing.
pub fn ensure_packages() -> Result<()> {
    static DONE: Mutex<bool> = Mutex::new(false);
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if *done {
        return Ok(());
    }
    let present = [
        "mariadbd",
        "mariadb-install-db",
        "mariadb-backup",
        "mbstream",
        "ncat",
    ]
    .iter()
    .all(|tool| find_on_path(tool).is_some());
    if !present {
        for args in [
            vec!["update", "-qq"],
            [vec!["install", "-y", "-qq"], PACKAGES.to_vec()].concat(),
        ] {
            let status = std::process::Command::new("apt-get")
                .args(&args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .context("running apt-get (is this Debian?)")?;
            ensure!(
                status.success(),
                "apt-get {} failed with {status}",
                args.join(" ")
            );
        }
    }
    *done = true;
    Ok(())
}

/// Lines in /etc/hosts naming one cluster's pods, removed when dropped.
struct HostsBlock {
    path: PathBuf,
    begin: String,
    end: String,
}

const HOSTS: &str = "/etc/hosts";

impl HostsBlock {
    fn install(tag: &str, names: &[(Ipv4Addr, String)]) -> Result<Self> {
        Self::install_in(Path::new(HOSTS), tag, names)
    }

    fn install_in(path: &Path, tag: &str, names: &[(Ipv4Addr, String)]) -> Result<Self> {
        let block = Self {
            path: path.to_path_buf(),
            begin: format!("# mysql-agent-harness {tag} begin"),
            end: format!("# mysql-agent-harness {tag} end"),
        };
        let mut lines = vec![block.begin.clone()];
        lines.extend(names.iter().map(|(addr, name)| format!("{addr}\t{name}")));
        lines.push(block.end.clone());
        block.rewrite(Some(&lines.join("\n")))?;
        Ok(block)
    }

    /// Replaces this block (or removes it) under an exclusive lock, writing in place because
    /// /etc/hosts is often a bind mount that cannot be renamed over. The new text goes over
    /// the old and the file is cut to its length after: truncating first left /etc/hosts
    /// empty for good when the write then failed (a full disk) or the process died between
    /// the two, and every name on the machine stopped resolving.
    fn rewrite(&self, block: Option<&str>) -> Result<()> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        let mut file = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .with_context(|| format!("locking {}", self.path.display()))?;
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        let mut kept = Vec::new();
        let mut inside = false;
        for line in text.lines() {
            if line == self.begin {
                inside = true;
            } else if line == self.end {
                inside = false;
            } else if !inside {
                kept.push(line);
            }
        }
        if let Some(block) = block {
            kept.push(block);
        }
        let mut out = kept.join("\n");
        out.push('\n');
        let f: &mut File = &mut file;
        f.seek(SeekFrom::Start(0))?;
        f.write_all(out.as_bytes())
            .with_context(|| format!("writing {}", self.path.display()))?;
        f.set_len(out.len() as u64)
            .with_context(|| format!("truncating {}", self.path.display()))?;
        Ok(())
    }
}

impl Drop for HostsBlock {
    fn drop(&mut self) {
        let _ = self.rewrite(None);
    }
}

/// Bytes in the files under `dir` (0 if it does not exist).
pub fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_blocks_are_added_replaced_and_removed_leaving_the_rest() {
        let path = std::env::temp_dir().join(format!("harness-hosts-{}", std::process::id()));
        let original = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n";
        fs::write(&path, original).unwrap();
        let names = |n: u8| -> Vec<(Ipv4Addr, String)> {
            (0..n)
                .map(|i| (Ipv4Addr::new(127, 0, 9, i), format!("mysql-{i}.a")))
                .collect()
        };
        let a = HostsBlock::install_in(&path, "a", &names(3)).unwrap();
        let b = HostsBlock::install_in(&path, "b", &names(1)).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(original), "{text}");
        assert!(text.contains("127.0.9.2\tmysql-2.a"), "{text}");
        assert_eq!(text.matches("begin").count(), 2, "{text}");
        // A shorter file after the larger block goes: the old tail is cut, not left behind.
        drop(a);
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains("harness a"), "{text}");
        assert!(!text.contains("mysql-2.a"), "{text}");
        assert!(text.contains("# mysql-agent-harness b begin"), "{text}");
        drop(b);
        assert_eq!(fs::read_to_string(&path).unwrap(), original);
        fs::remove_file(&path).unwrap();
    }
}
