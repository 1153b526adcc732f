//! `init-config`: the server-id and the role's configuration into mysqld's conf.d.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use tracing::info;

use crate::fsutil;
use crate::pod::{self, PodIdentity};

pub const SERVER_ID_FILE: &str = "server-id.cnf";
/// mysqld's TLS settings, written with `--tls-dir` and removed without it.
pub const TLS_FILE: &str = "tls.cnf";
/// The primary's config in the ConfigMap: the tutorial's name first, then the newer one.
pub const PRIMARY_FILES: [&str; 2] = ["master.cnf", "primary.cnf"];
pub const REPLICA_FILES: [&str; 2] = ["slave.cnf", "replica.cnf"];

#[derive(Debug, Clone)]
pub struct Config {
    pub pod: PodIdentity,
    pub config_map_dir: PathBuf,
    pub conf_dir: PathBuf,
    pub server_id_offset: u32,
    /// `--tls-dir`: mysqld serves TLS (replication included) with the same files, which
    /// must be mounted at the same path in the mysql container.
    pub tls_dir: Option<PathBuf>,
}

/// mysqld's TLS settings from a kubernetes.io/tls Secret with its CA (same names in MySQL
/// and MariaDB, 5.7 on).
pub fn render_tls(dir: &Path) -> String {
    use crate::tls::{CA_FILE, CERT_FILE, KEY_FILE};
    format!(
        "[mysqld]\nssl_ca={}\nssl_cert={}\nssl_key={}\n",
        dir.join(CA_FILE).display(),
        dir.join(CERT_FILE).display(),
        dir.join(KEY_FILE).display()
    )
}

pub fn render_server_id(server_id: u32) -> String {
    format!("[mysqld]\nserver-id={server_id}\n")
}

/// Writes `server-id.cnf` and copies the role's file. Both writes are atomic and a rerun
/// produces the same files; the other role's files are removed from conf.d so a stale copy
/// cannot make a replica writable or a primary read-only.
pub fn run(config: &Config) -> Result<()> {
    let server_id = pod::server_id(config.server_id_offset, config.pod.ordinal)?;
    let (role, wanted, other) = if config.pod.is_primary() {
        ("primary", PRIMARY_FILES, REPLICA_FILES)
    } else {
        ("replica", REPLICA_FILES, PRIMARY_FILES)
    };
    let (role_file, contents) = find_role_file(&config.config_map_dir, &wanted)?;
    let conf_dir = &config.conf_dir;
    ensure!(
        fs::metadata(conf_dir).map(|m| m.is_dir()).unwrap_or(false),
        "the conf dir {} does not exist or is not a directory (see --conf-dir)",
        conf_dir.display()
    );
    fsutil::write_atomic(
        &conf_dir.join(SERVER_ID_FILE),
        render_server_id(server_id).as_bytes(),
    )?;
    fsutil::write_atomic(&conf_dir.join(role_file), &contents)?;
    for stale in other {
        fsutil::remove_all(&conf_dir.join(stale))?;
    }
    match &config.tls_dir {
        Some(dir) => fsutil::write_atomic(&conf_dir.join(TLS_FILE), render_tls(dir).as_bytes())?,
        None => fsutil::remove_all(&conf_dir.join(TLS_FILE))?,
    }
    info!(
        pod = %config.pod,
        role,
        server_id,
        role_file,
        conf_dir = %conf_dir.display(),
        "wrote the server's configuration"
    );
    Ok(())
}

fn find_role_file<'a>(dir: &Path, names: &[&'a str]) -> Result<(&'a str, Vec<u8>)> {
    for name in names {
        let path = dir.join(name);
        match fs::read(&path) {
            Ok(contents) => return Ok((name, contents)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
    bail!(
        "none of {} found in {} (the ConfigMap mount, see --config-map-dir)",
        names.join(", "),
        dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(files: &[(&str, &str)]) -> (tempfile::TempDir, Config) {
        let root = tempfile::tempdir().unwrap();
        let cm = root.path().join("config-map");
        let conf = root.path().join("conf.d");
        fs::create_dir(&cm).unwrap();
        fs::create_dir(&conf).unwrap();
        for (name, text) in files {
            fs::write(cm.join(name), text).unwrap();
        }
        let config = Config {
            pod: PodIdentity::parse("mysql-0", "mysql").unwrap(),
            config_map_dir: cm,
            conf_dir: conf,
            server_id_offset: 100,
            tls_dir: None,
        };
        (root, config)
    }

    #[test]
    fn tls_settings_follow_the_flag() {
        let (_root, mut config) = setup(&[("master.cnf", "[mysqld]\nlog-bin\n")]);
        config.tls_dir = Some("/etc/mysql-agent/tls".into());
        run(&config).unwrap();
        let written = fs::read_to_string(config.conf_dir.join(TLS_FILE)).unwrap();
        assert_eq!(
            written,
            "[mysqld]\nssl_ca=/etc/mysql-agent/tls/ca.crt\nssl_cert=/etc/mysql-agent/tls/tls.crt\nssl_key=/etc/mysql-agent/tls/tls.key\n"
        );
        // Turned off again: the settings go, so mysqld does not look for files no longer mounted.
        config.tls_dir = None;
        run(&config).unwrap();
        assert!(!config.conf_dir.join(TLS_FILE).exists());
    }

    #[test]
    fn primary_and_replica_get_their_files() {
        let (_root, mut config) = setup(&[
            ("master.cnf", "[mysqld]\nlog-bin\n"),
            ("slave.cnf", "[mysqld]\nread-only\n"),
        ]);
        run(&config).unwrap();
        let conf = config.conf_dir.clone();
        assert_eq!(
            fsutil::list_dir(&conf).unwrap(),
            ["master.cnf", "server-id.cnf"]
        );
        assert_eq!(
            fs::read_to_string(conf.join("server-id.cnf")).unwrap(),
            "[mysqld]\nserver-id=100\n"
        );
        // The same conf dir reused for a replica (a rerun after a rename, say) drops master.cnf.
        config.pod = PodIdentity::parse("mysql-3", "mysql").unwrap();
        run(&config).unwrap();
        run(&config).unwrap();
        assert_eq!(
            fsutil::list_dir(&conf).unwrap(),
            ["server-id.cnf", "slave.cnf"]
        );
        assert_eq!(
            fs::read_to_string(conf.join("slave.cnf")).unwrap(),
            "[mysqld]\nread-only\n"
        );
        assert!(
            fs::read_to_string(conf.join("server-id.cnf"))
                .unwrap()
                .contains("server-id=103")
        );
    }

    #[test]
    fn newer_tutorial_names_are_accepted() {
        let (_root, config) = setup(&[("primary.cnf", "[mysqld]\nlog-bin\n")]);
        run(&config).unwrap();
        assert!(config.conf_dir.join("primary.cnf").exists());
    }

    #[test]
    fn errors_name_the_culprit() {
        let (_root, config) = setup(&[("slave.cnf", "x")]);
        let msg = format!("{:#}", run(&config).unwrap_err());
        assert!(
            msg.contains("master.cnf, primary.cnf") && msg.contains("config-map"),
            "{msg}"
        );

        let (_root, mut config) = setup(&[("master.cnf", "x")]);
        config.conf_dir = config.conf_dir.join("missing");
        let msg = format!("{:#}", run(&config).unwrap_err());
        assert!(msg.contains("conf.d/missing"), "{msg}");
    }
}
