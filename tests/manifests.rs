//! The rendered manifests against the binary they run: every overlay (`kubectl kustomize`, no
//! cluster needed) wires the three modes into the right containers, uses only flags and
//! environment variables that exist, opens the ports the agent listens on, probes the
//! endpoints it serves, and keeps the security settings a cluster admin expects.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use common::AGENT;
use mysql_agent::cli::{DEFAULT_HTTP_LISTEN, DEFAULT_LISTEN};
use mysql_agent::protocol::DEFAULT_PORT;
use yaml_rust2::{Yaml, YamlLoader};

const MODES: [&str; 4] = ["init-config", "clone", "serve-backup", "backup"];

fn overlays() -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/overlays");
    let mut overlays: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    overlays.sort();
    assert!(overlays.len() >= 4, "{overlays:?}");
    overlays
}

fn render(overlay: &Path) -> Vec<Yaml> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(overlay)
        .output()
        .expect(
            "kubectl is needed to render the manifests (scripts/check-packaging.sh installs it)",
        );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    YamlLoader::load_from_str(&String::from_utf8(out.stdout).unwrap()).unwrap()
}

fn help(mode: &str) -> String {
    let out = Command::new(AGENT).args([mode, "--help"]).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

fn find<'a>(docs: &'a [Yaml], kind: &str, name: &str) -> &'a Yaml {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn list(y: &Yaml) -> &[Yaml] {
    y.as_vec().map(Vec::as_slice).unwrap_or_default()
}

fn strings(y: &Yaml) -> Vec<&str> {
    list(y).iter().filter_map(Yaml::as_str).collect()
}

fn is_agent(container: &Yaml) -> bool {
    container["image"]
        .as_str()
        .is_some_and(|i| i.starts_with("mysql-agent"))
}

fn env_names(container: &Yaml) -> Vec<&str> {
    list(&container["env"])
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect()
}

fn port_of(addr: &str) -> i64 {
    i64::from(addr.parse::<SocketAddr>().unwrap().port())
}

#[test]
fn every_overlay_matches_the_binary() {
    let helps: Vec<(&str, String)> = MODES.iter().map(|m| (*m, help(m))).collect();
    let help_of = |mode: &str| &helps.iter().find(|(m, _)| *m == mode).unwrap().1;
    let http_port = port_of(DEFAULT_HTTP_LISTEN);
    assert_eq!(port_of(DEFAULT_LISTEN), i64::from(DEFAULT_PORT));

    for overlay in overlays() {
        let name = overlay.file_name().unwrap().to_string_lossy().into_owned();
        let docs = render(&overlay);
        let spec = &find(&docs, "StatefulSet", "mysql")["spec"]["template"]["spec"];
        let (inits, containers) = (list(&spec["initContainers"]), list(&spec["containers"]));

        // The three modes, in the StatefulSet's order and places.
        let modes = |list: &[Yaml]| -> Vec<String> {
            list.iter()
                .filter(|c| is_agent(c))
                .map(|c| strings(&c["args"]).join(" "))
                .collect()
        };
        assert_eq!(modes(inits), ["init-config", "clone"], "{name}");
        assert_eq!(modes(containers), ["serve-backup"], "{name}");
        let mysql = containers
            .iter()
            .find(|c| c["name"].as_str() == Some("mysql"))
            .unwrap();
        let sidecar = containers.iter().find(|c| is_agent(c)).unwrap();

        // Every flag and variable the manifests give the agent exists in that mode.
        for container in inits.iter().chain(containers).filter(|c| is_agent(c)) {
            let args = strings(&container["args"]);
            let help = help_of(args[0]);
            for flag in args.iter().filter(|a| a.starts_with("--")) {
                let flag = flag.split('=').next().unwrap();
                assert!(help.contains(flag), "{name}: {} has no {flag}", args[0]);
            }
            for var in env_names(container) {
                assert!(
                    help.contains(&format!("[env: {var}=")),
                    "{name}: {} reads no {var}",
                    args[0]
                );
            }
        }

        // TLS on by default: every agent on 3307 and mysqld read the same mounted Secret;
        // only the migration overlay, whose tutorial pods cannot speak TLS, stays raw.
        let tls_dir = |c: &Yaml| -> Option<String> {
            list(&c["env"])
                .iter()
                .find(|e| e["name"].as_str() == Some("MYSQL_AGENT_TLS_DIR"))
                .and_then(|e| e["value"].as_str().map(str::to_owned))
        };
        let mounts = |c: &Yaml| -> Vec<String> {
            list(&c["volumeMounts"])
                .iter()
                .filter_map(|m| m["mountPath"].as_str().map(str::to_owned))
                .collect()
        };
        let agents: Vec<&Yaml> = inits
            .iter()
            .chain(containers)
            .filter(|c| is_agent(c))
            .collect();
        if name == "tutorial-migration" {
            assert!(agents.iter().all(|c| tls_dir(c).is_none()), "{name}");
        } else {
            let dir = tls_dir(sidecar).unwrap_or_else(|| panic!("{name}: no TLS"));
            for container in agents.iter().copied().chain([mysql]) {
                assert!(
                    mounts(container).contains(&dir),
                    "{name}: {:?} does not mount {dir}",
                    container["name"]
                );
            }
            assert!(
                agents
                    .iter()
                    .all(|c| tls_dir(c).as_deref() == Some(dir.as_str())),
                "{name}"
            );
            let job = find(&docs, "CronJob", "mysql-backup");
            let backup =
                &list(&job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"])[0];
            assert_eq!(tls_dir(backup).as_deref(), Some(dir.as_str()), "{name}");
            assert!(mounts(backup).contains(&dir), "{name}");
            // Point-in-time recovery: the primary archives into the CronJob's store.
            let value = |c: &Yaml, var: &str| -> Option<String> {
                list(&c["env"])
                    .iter()
                    .find(|e| e["name"].as_str() == Some(var))
                    .and_then(|e| e["value"].as_str().map(str::to_owned))
            };
            if name.ends_with("-pitr") {
                assert_eq!(
                    value(sidecar, "MYSQL_AGENT_ARCHIVE_BINLOGS_TO"),
                    value(backup, "MYSQL_AGENT_BACKUP_TO"),
                    "{name}"
                );
                assert_eq!(
                    value(sidecar, "MYSQL_AGENT_AGE_RECIPIENT_FILE"),
                    value(backup, "MYSQL_AGENT_AGE_RECIPIENT_FILE"),
                    "{name}"
                );
            }
        }

        // Ports and probes match what the agent listens on and serves.
        let ports = |c: &Yaml| -> Vec<i64> {
            list(&c["ports"])
                .iter()
                .filter_map(|p| p["containerPort"].as_i64())
                .collect()
        };
        assert_eq!(
            ports(sidecar),
            [i64::from(DEFAULT_PORT), http_port],
            "{name}"
        );
        assert_eq!(ports(mysql), [3306], "{name}");
        let readiness = &mysql["readinessProbe"]["httpGet"];
        assert_eq!(readiness["path"].as_str(), Some("/readyz"), "{name}");
        assert_eq!(readiness["port"].as_i64(), Some(http_port), "{name}");
        assert_eq!(
            sidecar["livenessProbe"]["httpGet"]["path"].as_str(),
            Some("/healthz"),
            "{name}"
        );
        assert!(
            !mysql["startupProbe"].is_badvalue(),
            "{name}: mysql has no startupProbe"
        );

        // Security a cluster admin expects (the restricted Pod Security Standard).
        let pod = &spec["securityContext"];
        assert_eq!(pod["runAsNonRoot"].as_bool(), Some(true), "{name}");
        assert_eq!(pod["runAsUser"].as_i64(), Some(999), "{name}");
        assert_eq!(
            pod["seccompProfile"]["type"].as_str(),
            Some("RuntimeDefault"),
            "{name}"
        );
        assert_eq!(
            pod["fsGroupChangePolicy"].as_str(),
            Some("OnRootMismatch"),
            "{name}"
        );
        assert_eq!(
            spec["automountServiceAccountToken"].as_bool(),
            Some(false),
            "{name}"
        );
        for c in inits.iter().chain(containers) {
            let who = format!("{name}: {}", c["name"].as_str().unwrap());
            let security = &c["securityContext"];
            assert_eq!(
                security["allowPrivilegeEscalation"].as_bool(),
                Some(false),
                "{who}"
            );
            assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"], "{who}");
            assert_eq!(
                c["terminationMessagePolicy"].as_str(),
                Some("FallbackToLogsOnError"),
                "{who}"
            );
            assert!(
                !c["resources"]["requests"]["memory"].is_badvalue(),
                "{who}: no memory request"
            );
            assert!(
                !c["resources"]["limits"]["memory"].is_badvalue(),
                "{who}: no memory limit"
            );
            if is_agent(c) {
                assert_eq!(
                    security["readOnlyRootFilesystem"].as_bool(),
                    Some(true),
                    "{who}"
                );
            }
            // Every mount has a volume.
            let volumes: BTreeSet<&str> = list(&spec["volumes"])
                .iter()
                .filter_map(|v| v["name"].as_str())
                .chain(["data"])
                .collect();
            for mount in list(&c["volumeMounts"]) {
                let volume = mount["name"].as_str().unwrap();
                assert!(
                    volumes.contains(volume),
                    "{who} mounts the missing volume {volume}"
                );
            }
        }

        // The tutorial's objects, and the disruption and network policies.
        let headless = find(&docs, "Service", "mysql");
        assert_eq!(
            headless["spec"]["clusterIP"].as_str(),
            Some("None"),
            "{name}"
        );
        // Replicas whose primary is gone are not Ready, and mysql-0 coming back without its
        // volume must still resolve them to ask how far they are (see survey).
        assert_eq!(
            headless["spec"]["publishNotReadyAddresses"].as_bool(),
            Some(true),
            "{name}: the headless Service must publish replicas that are not Ready"
        );
        find(&docs, "Service", "mysql-read");
        let pdb = &find(&docs, "PodDisruptionBudget", "mysql")["spec"];
        assert_eq!(pdb["maxUnavailable"].as_i64(), Some(1), "{name}");
        let policy = &find(&docs, "NetworkPolicy", "mysql")["spec"];
        let backup_rule = list(&policy["ingress"])
            .iter()
            .find(|rule| {
                list(&rule["ports"])
                    .iter()
                    .any(|p| p["port"].as_i64() == Some(i64::from(DEFAULT_PORT)))
            })
            .unwrap_or_else(|| panic!("{name}: no ingress rule for the backup port"));
        // 3307 only for the StatefulSet's pods, and the backup job's when there is one.
        let allowed: Vec<&str> = list(&backup_rule["from"])
            .iter()
            .map(|from| {
                from["podSelector"]["matchLabels"]["app"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{name}: 3307 open beyond a pod selector"))
            })
            .collect();
        let cronjob = docs.iter().find(|d| d["kind"].as_str() == Some("CronJob"));
        let expected: &[&str] = if cronjob.is_some() {
            &["mysql", "mysql-backup"]
        } else {
            &["mysql"]
        };
        assert_eq!(allowed, expected, "{name}");
        if let Some(cronjob) = cronjob {
            check_backup_job(&name, cronjob, help_of("backup"));
        }

        // Replicas read-only in the server's own words: MariaDB refuses super-read-only.
        let slave_cnf = find(&docs, "ConfigMap", "mysql")["data"]["slave.cnf"]
            .as_str()
            .unwrap()
            .to_owned();
        let options: Vec<&str> = slave_cnf
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        let mariadb = mysql["image"].as_str().unwrap().starts_with("mariadb");
        let wanted = if mariadb {
            "read-only"
        } else {
            "super-read-only"
        };
        assert_eq!(options, ["[mysqld]", wanted], "{name}");

        // Secure by default, but for the migration from the tutorial.
        let secured = name != "tutorial-migration";
        assert_eq!(
            env_names(mysql).contains(&"MYSQL_ROOT_PASSWORD_FILE"),
            secured,
            "{name}"
        );
        assert_eq!(
            env_names(mysql).contains(&"MYSQL_ALLOW_EMPTY_PASSWORD"),
            !secured,
            "{name}"
        );
        for container in inits
            .iter()
            .chain(containers)
            .filter(|c| is_agent(c) && strings(&c["args"])[0] != "init-config")
        {
            assert_eq!(
                env_names(container).contains(&"MYSQL_AGENT_BACKUP_SECRET_FILE"),
                secured,
                "{name}"
            );
        }
    }
}

/// The backup CronJob: the agent's `backup` mode with flags and variables it has, no more
/// access than it needs, the restricted settings, one job at a time.
fn check_backup_job(name: &str, cronjob: &Yaml, help: &str) {
    let spec = &cronjob["spec"];
    assert_eq!(spec["concurrencyPolicy"].as_str(), Some("Forbid"), "{name}");
    let pod = &spec["jobTemplate"]["spec"]["template"];
    assert_eq!(
        pod["metadata"]["labels"]["app"].as_str(),
        Some("mysql-backup"),
        "{name}: the job's pods must not match the StatefulSet's selector"
    );
    let pod = &pod["spec"];
    assert_eq!(
        pod["securityContext"]["runAsNonRoot"].as_bool(),
        Some(true),
        "{name}"
    );
    assert_eq!(
        pod["automountServiceAccountToken"].as_bool(),
        Some(false),
        "{name}"
    );
    let containers = list(&pod["containers"]);
    assert_eq!(containers.len(), 1, "{name}");
    let job = &containers[0];
    assert!(is_agent(job), "{name}");
    let args = strings(&job["args"]);
    assert_eq!(args, ["backup"], "{name}");
    for var in env_names(job) {
        assert!(
            help.contains(&format!("[env: {var}=")),
            "{name}: backup reads no {var}"
        );
    }
    let security = &job["securityContext"];
    assert_eq!(
        security["readOnlyRootFilesystem"].as_bool(),
        Some(true),
        "{name}"
    );
    assert_eq!(
        security["allowPrivilegeEscalation"].as_bool(),
        Some(false),
        "{name}"
    );
    assert_eq!(
        strings(&security["capabilities"]["drop"]),
        ["ALL"],
        "{name}"
    );
    assert!(
        !job["resources"]["limits"]["memory"].is_badvalue(),
        "{name}"
    );
    // Of the StatefulSet's Secret, the job sees the backup secret only: no password.
    let credentials = list(&pod["volumes"])
        .iter()
        .find(|v| v["secret"]["secretName"].as_str() == Some("mysql-credentials"))
        .unwrap_or_else(|| panic!("{name}: the job has no backup secret"));
    let keys: Vec<&str> = list(&credentials["secret"]["items"])
        .iter()
        .filter_map(|i| i["key"].as_str())
        .collect();
    assert_eq!(keys, ["backup-secret"], "{name}");
}

/// The cert-manager component issues what the TLS component mounts: the Secret's name,
/// both usages (every pod serves and is a client), every pod's short name.
#[test]
fn the_cert_manager_certificate_fits_the_tls_component() {
    let text = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("manifests/components/cert-manager/certificate.yaml"),
    )
    .unwrap();
    let docs = YamlLoader::load_from_str(&text).unwrap();
    let cert = docs
        .iter()
        .find(|d| {
            d["kind"].as_str() == Some("Certificate")
                && d["metadata"]["name"].as_str() == Some("mysql-tls")
        })
        .expect("a Certificate mysql-tls");
    assert_eq!(cert["spec"]["secretName"].as_str(), Some("mysql-tls"));
    assert_eq!(
        strings(&cert["spec"]["usages"]),
        ["server auth", "client auth"]
    );
    let names = strings(&cert["spec"]["dnsNames"]);
    for n in 0..3 {
        assert!(
            names.contains(&format!("mysql-{n}.mysql").as_str()),
            "{names:?}"
        );
    }
    let tls = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/components/tls/statefulset.yaml"),
    )
    .unwrap();
    assert!(tls.contains("secretName: mysql-tls"));
}
