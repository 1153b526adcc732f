//! Mutual TLS 1.3 on port 3307 (rustls with ring), from a mounted kubernetes.io/tls Secret
//! in cert-manager's layout (`--tls-dir`): `tls.crt` (this pod's chain), `tls.key`, `ca.crt`.
//!
//! Both ends present the StatefulSet's certificate and accept only certificates of `ca.crt`;
//! the client also checks the donor's name (`mysql-1.mysql` against `*.mysql`). The backup
//! secret, when there is one, still applies inside the tunnel. The files are read again when
//! they change (cert-manager renews them in place), so the next connection uses them: no
//! restart.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use anyhow::{Context, Result, anyhow, ensure};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The files of a kubernetes.io/tls Secret with its CA, as cert-manager writes them.
pub const CERT_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";
pub const CA_FILE: &str = "ca.crt";

/// Each file's modification time and length (`None` when missing): what tells a change.
type Stamp = Vec<Option<(SystemTime, u64)>>;

/// What one read of the directory gave.
struct Loaded {
    stamp: Stamp,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

/// The TLS settings of `--tls-dir`, read again whenever its files change.
pub struct TlsDir {
    dir: PathBuf,
    loaded: Mutex<Arc<Loaded>>,
    /// The files' stamp when they last failed to load: not tried again until they change.
    failed: Mutex<Option<Stamp>>,
}

impl std::fmt::Debug for TlsDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsDir").field("dir", &self.dir).finish()
    }
}

impl TlsDir {
    /// Reads and checks the three files now: a missing or malformed one is an error naming it.
    pub fn open(dir: &Path) -> Result<Self> {
        crate::store::install_crypto_provider();
        let loaded = load(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
            loaded: Mutex::new(Arc::new(loaded)),
            failed: Mutex::new(None),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The current settings: read again if a file changed since the last read. A renewal
    /// caught half-written (a key that does not match its certificate yet) keeps the last
    /// good settings and says so.
    fn current(&self) -> Arc<Loaded> {
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        let now = stamp(&self.dir);
        let mut failed = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
        if now != loaded.stamp && failed.as_ref() != Some(&now) {
            match load(&self.dir) {
                Ok(fresh) => {
                    tracing::info!(dir = %self.dir.display(), "the TLS files changed; using them from the next connection");
                    *loaded = Arc::new(fresh);
                }
                Err(e) => {
                    tracing::warn!(
                        dir = %self.dir.display(),
                        error = %crate::errors::report(&e),
                        "the TLS files changed but do not load; keeping the previous ones"
                    );
                    *failed = Some(now);
                }
            }
        }
        Arc::clone(&loaded)
    }

    pub fn server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.current().server)
    }

    pub fn client_config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.current().client)
    }

    /// The name a donor's certificate must carry: its host.
    pub fn server_name(host: &str) -> Result<ServerName<'static>> {
        ServerName::try_from(host.to_owned())
            .map_err(|e| anyhow!("{host:?} cannot be checked against a certificate: {e}"))
    }
}

/// ring's TLS 1.3 suites with AES-128-GCM first: as strong for this purpose as AES-256 and
/// cheaper per byte, which counts when both ends of a clone share two cores with the backup
/// tool (the server picks, so both ends order them alike).
fn provider() -> rustls::crypto::CryptoProvider {
    use rustls::crypto::ring::cipher_suite::{
        TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    };
    rustls::crypto::CryptoProvider {
        cipher_suites: vec![
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
            TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..rustls::crypto::ring::default_provider()
    }
}

/// Where the kernel lists the upper-layer protocols it offers; "tls" there is kernel TLS.
const AVAILABLE_ULP: &str = "/proc/sys/net/ipv4/tcp_available_ulp";

/// Whether this kernel offers kernel TLS (the tls module loaded). The agent relays in user
/// space either way; this is said at start-up so a benchmark knows which path it measured.
pub fn kernel_tls_available() -> bool {
    fs::read_to_string(AVAILABLE_ULP)
        .map(|ulps| ulps.split_whitespace().any(|u| u == "tls"))
        .unwrap_or(false)
}

fn stamp(dir: &Path) -> Stamp {
    [CERT_FILE, KEY_FILE, CA_FILE]
        .iter()
        .map(|name| {
            // A Secret volume swaps a symlink: metadata() follows it to the new file.
            fs::metadata(dir.join(name))
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

fn read(dir: &Path, name: &str) -> Result<Vec<u8>> {
    let path = dir.join(name);
    fs::read(&path).with_context(|| format!("reading {}", path.display()))
}

fn certificates(dir: &Path, name: &str) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read(dir, name)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("{}: not PEM certificates: {e}", dir.join(name).display()))?;
    ensure!(
        !certs.is_empty(),
        "{}: no certificate in it",
        dir.join(name).display()
    );
    Ok(certs)
}

fn load(dir: &Path) -> Result<Loaded> {
    // The stamp first: a change while reading is seen at the next connection.
    let stamp = stamp(dir);
    let chain = certificates(dir, CERT_FILE)?;
    let key_pem = read(dir, KEY_FILE)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        anyhow!(
            "{}: not a PEM private key: {e}",
            dir.join(KEY_FILE).display()
        )
    })?;
    let mut roots = RootCertStore::empty();
    for ca in certificates(dir, CA_FILE)? {
        roots.add(ca).with_context(|| {
            format!(
                "{}: a CA certificate rustls refuses",
                dir.join(CA_FILE).display()
            )
        })?;
    }
    let roots = Arc::new(roots);
    let provider = Arc::new(provider());
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
            .build()
            .context("building the client certificate verifier")?;
    let server = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with ring")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .with_context(|| {
            format!(
                "{} and {} do not make a usable certificate (does the key match?)",
                dir.join(CERT_FILE).display(),
                dir.join(KEY_FILE).display()
            )
        })?;
    let client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with ring")?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .with_context(|| {
            format!(
                "{} and {} do not make a usable client certificate",
                dir.join(CERT_FILE).display(),
                dir.join(KEY_FILE).display()
            )
        })?;
    Ok(Loaded {
        stamp,
        server: Arc::new(server),
        client: Arc::new(client),
    })
}
