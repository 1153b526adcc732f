//! Where backups are kept: a URL naming an object store and a prefix in it.
//!
//! - `s3://BUCKET/PREFIX`: AWS S3 or any S3-compatible server, configured the way every S3
//!   tool is: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`
//!   (or `AWS_DEFAULT_REGION`), `AWS_ENDPOINT_URL` for another server (then path-style
//!   requests, and plain http only when the endpoint says http);
//! - `file:///DIR` (or an absolute path): a mounted volume, no object store needed.
//!
//! Only the S3 API's standard operations are used (put, multipart upload, get, list, delete),
//! so any implementation of it works.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Once};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use object_store::aws::AmazonS3Builder;
use object_store::chunked::ChunkedStore;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

/// How long one request may take before it is retried (a part of a multipart upload, say).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// How long connecting to the store may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Retries of a failed request, with back-off from 100 ms to 15 s, within 3 minutes.
pub const MAX_RETRIES: usize = 10;
const RETRY_TIMEOUT: Duration = Duration::from_secs(180);

/// The pieces a `file://` store's object is read in. On its own the local store reads a file
/// 8 KiB at a time, each read a blocking task of its own: a restore of a 2 GiB stream from a
/// mounted volume took 7 to 9.5 s, 6 to 8.5 s of it in the kernel, and 2.1 to 2.3 s in
/// pieces of this size.
pub const LOCAL_READ_BYTES: usize = 256 << 10;

/// Where backups go, as the user wrote it: `s3://BUCKET/PREFIX` or `file:///DIR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    S3 { bucket: String, prefix: String },
    File { dir: PathBuf },
}

impl std::str::FromStr for Location {
    type Err = anyhow::Error;

    fn from_str(url: &str) -> Result<Self> {
        let parsed = (|| -> Result<Self> {
            if let Some(rest) = url.strip_prefix("s3://") {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                ensure!(!bucket.is_empty(), "no bucket");
                ensure!(
                    bucket.len() >= 3
                        && bucket.len() <= 63
                        && bucket.bytes().all(|b| b.is_ascii_lowercase()
                            || b.is_ascii_digit()
                            || b == b'-'
                            || b == b'.'),
                    "{bucket:?} is not a bucket name (3-63 lowercase letters, digits, '-' and '.')"
                );
                let prefix = prefix.trim_matches('/').to_owned();
                ensure!(
                    !prefix
                        .split('/')
                        .any(|p| p.is_empty() && !prefix.is_empty()),
                    "an empty component in prefix {prefix:?}"
                );
                return Ok(Location::S3 {
                    bucket: bucket.to_owned(),
                    prefix,
                });
            }
            let dir = match url.strip_prefix("file://") {
                Some(path) => path,
                None if url.starts_with('/') => url,
                None => bail!("not s3://BUCKET/PREFIX, file:///DIR or an absolute path"),
            };
            ensure!(
                dir.starts_with('/'),
                "a file URL needs an absolute path (file:///DIR)"
            );
            Ok(Location::File {
                dir: PathBuf::from(dir),
            })
        })();
        parsed.map_err(|e| anyhow::anyhow!("backup location {url:?}: {e:#}"))
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Location::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            Location::File { dir } => write!(f, "file://{}", dir.display()),
        }
    }
}

/// The S3 settings read from the environment, as every S3 tool reads them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct S3Settings {
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    pub region: Option<String>,
    pub endpoint: Option<String>,
}

impl fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Settings")
            .field("access_key_id", &self.access_key_id)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl S3Settings {
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Self {
            access_key_id: var("AWS_ACCESS_KEY_ID"),
            secret_access_key: var("AWS_SECRET_ACCESS_KEY"),
            session_token: var("AWS_SESSION_TOKEN"),
            region: var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")),
            endpoint: var("AWS_ENDPOINT_URL").or_else(|| var("AWS_ENDPOINT_URL_S3")),
        }
    }
}

/// An opened store and the prefix every backup name is under.
#[derive(Clone)]
pub struct Store {
    pub location: Location,
    inner: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Store({})", self.location)
    }
}

/// Whether a request's body is hashed into its signature (SigV4's `x-amz-content-sha256`).
/// Over https TLS already guards the body on the wire, and hashing it costs the agent a
/// SHA-256 pass over every byte stored (and the server another): a backup of a 2 GiB stream
/// took 0.6-0.7 s less and the agent 0.7 s less CPU without it. Over plain http the hash is
/// the only check on the body between here and the server, so it stays, as AWS's own SDKs do
/// it. No endpoint means AWS itself, over https.
fn sign_payload(endpoint: Option<&str>) -> bool {
    endpoint.is_some_and(|e| !e.starts_with("https://"))
}

/// The TLS stack for https endpoints: rustls with ring, installed once for the process.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Fails only if another provider was installed first, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl Store {
    /// Opens `location`; S3 settings come from `s3`. Nothing is contacted yet. A directory is
    /// created only when `create` (a backup writes into it; a listing or a restore reads).
    pub fn open(location: &Location, s3: &S3Settings, create: bool) -> Result<Self> {
        let (inner, prefix): (Arc<dyn ObjectStore>, String) = match location {
            Location::File { dir } => {
                if create {
                    std::fs::create_dir_all(dir).with_context(|| {
                        format!("creating the backup directory {}", dir.display())
                    })?;
                }
                let fs = LocalFileSystem::new_with_prefix(dir)
                    .with_context(|| format!("opening the backup directory {}", dir.display()))?;
                let pieces = ChunkedStore::new(Arc::new(fs), LOCAL_READ_BYTES);
                (Arc::new(pieces), String::new())
            }
            Location::S3 { bucket, prefix } => {
                install_crypto_provider();
                let mut builder = AmazonS3Builder::new()
                    .with_bucket_name(bucket)
                    .with_client_options(
                        ClientOptions::new()
                            .with_timeout(REQUEST_TIMEOUT)
                            .with_connect_timeout(CONNECT_TIMEOUT),
                    )
                    .with_retry(RetryConfig {
                        backoff: BackoffConfig {
                            init_backoff: Duration::from_millis(100),
                            max_backoff: Duration::from_secs(15),
                            base: 2.0,
                        },
                        max_retries: MAX_RETRIES,
                        retry_timeout: RETRY_TIMEOUT,
                    });
                if let Some(key) = &s3.access_key_id {
                    builder = builder.with_access_key_id(key);
                }
                if let Some(secret) = &s3.secret_access_key {
                    builder = builder.with_secret_access_key(secret);
                }
                if let Some(token) = &s3.session_token {
                    builder = builder.with_token(token);
                }
                builder = builder.with_region(s3.region.as_deref().unwrap_or("us-east-1"));
                if let Some(endpoint) = &s3.endpoint {
                    ensure!(
                        endpoint.starts_with("http://") || endpoint.starts_with("https://"),
                        "AWS_ENDPOINT_URL {endpoint:?} is not an http:// or https:// URL"
                    );
                    // Another server: path-style requests; plain http only when asked for.
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_virtual_hosted_style_request(false)
                        .with_allow_http(endpoint.starts_with("http://"));
                }
                builder = builder.with_unsigned_payload(!sign_payload(s3.endpoint.as_deref()));
                let store = builder
                    .build()
                    .with_context(|| format!("configuring the S3 client for {location}"))?;
                (Arc::new(store), prefix.clone())
            }
        };
        Ok(Self {
            location: location.clone(),
            inner,
            prefix: ObjectPath::from(prefix),
        })
    }

    /// The object store itself.
    pub fn objects(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    /// The path of `name` under the prefix (`name` may hold `/`).
    pub fn path(&self, name: &str) -> ObjectPath {
        let mut path = self.prefix.clone();
        for part in name.split('/').filter(|p| !p.is_empty()) {
            path = path.clone().join(part);
        }
        path
    }

    /// `path` relative to the prefix, as [`Store::path`] takes it.
    pub fn relative(&self, path: &ObjectPath) -> String {
        match path.prefix_match(&self.prefix) {
            Some(parts) => parts
                .map(|p| p.as_ref().to_owned())
                .collect::<Vec<_>>()
                .join("/"),
            None => path.to_string(),
        }
    }

    /// The prefix itself, for listing.
    pub fn root(&self) -> &ObjectPath {
        &self.prefix
    }

    /// A `file://` store in `dir`, for unit tests.
    #[cfg(test)]
    pub(crate) fn in_dir(dir: &std::path::Path) -> Self {
        Store::open(
            &Location::File {
                dir: dir.to_owned(),
            },
            &S3Settings::default(),
            true,
        )
        .expect("a directory store opens")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_locations() {
        let l = |s: &str| s.parse::<Location>().unwrap();
        assert_eq!(
            l("s3://backups/prod/mysql"),
            Location::S3 {
                bucket: "backups".into(),
                prefix: "prod/mysql".into()
            }
        );
        assert_eq!(
            l("s3://backups"),
            Location::S3 {
                bucket: "backups".into(),
                prefix: String::new()
            }
        );
        assert_eq!(
            l("file:///mnt/backups"),
            Location::File {
                dir: "/mnt/backups".into()
            }
        );
        assert_eq!(l("/mnt/backups").to_string(), "file:///mnt/backups");
        assert_eq!(l("s3://backups/a/b/").to_string(), "s3://backups/a/b");
        for (bad, needle) in [
            ("s3://", "no bucket"),
            ("s3://Backups/x", "not a bucket name"),
            ("s3://b/x", "not a bucket name"),
            ("s3://bucket/a//b", "empty component"),
            ("gs://bucket/x", "not s3://"),
            ("backups", "not s3://"),
            ("file://relative/dir", "absolute path"),
        ] {
            let msg = format!("{:#}", bad.parse::<Location>().unwrap_err());
            assert!(msg.contains(needle), "{bad}: {msg}");
            assert!(
                msg.starts_with(&format!("backup location {bad:?}")),
                "{msg}"
            );
        }
    }

    #[test]
    fn bodies_are_hashed_into_the_signature_only_without_tls() {
        assert!(sign_payload(Some("http://minio.backups:9000")));
        assert!(!sign_payload(Some("https://minio.backups:9000")));
        assert!(!sign_payload(None));
    }

    /// Over http the server is sent the body's SHA-256 (checked against the body it gets),
    /// not `UNSIGNED-PAYLOAD`: seen by a server that records the header.
    #[tokio::test]
    async fn a_plain_http_upload_carries_its_bodys_hash() {
        use object_store::ObjectStoreExt;
        use sha2::{Digest, Sha256};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // A request that never ends fails the test instead of hanging it.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while !request.ends_with(b"payload") {
                let n = tokio::time::timeout_at(deadline, socket.read(&mut buf))
                    .await
                    .expect("the whole request within 10 s")
                    .unwrap();
                assert!(n > 0, "the request ended early");
                request.extend_from_slice(&buf[..n]);
            }
            socket
                .write_all(b"HTTP/1.1 200 OK\r\nETag: \"e\"\r\nContent-Length: 0\r\n\r\n")
                .await
                .unwrap();
            String::from_utf8_lossy(&request).to_lowercase()
        });
        let settings = S3Settings {
            access_key_id: Some("key".into()),
            secret_access_key: Some("secret".into()),
            region: Some("r".into()),
            endpoint: Some(format!("http://{addr}")),
            session_token: None,
        };
        let store = Store::open(&"s3://bucket/p".parse().unwrap(), &settings, false).unwrap();
        store
            .objects()
            .put(&store.path("o"), b"the payload".to_vec().into())
            .await
            .unwrap();
        let request = server.await.unwrap();
        let hash = hex::encode(Sha256::digest(b"the payload"));
        assert!(
            request.contains(&format!("x-amz-content-sha256: {hash}")),
            "{request}"
        );
    }

    #[tokio::test]
    async fn local_objects_are_read_in_pieces_of_the_named_size() {
        use futures_util::StreamExt;
        use object_store::ObjectStoreExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::in_dir(dir.path());
        let object: Vec<u8> = (0..LOCAL_READ_BYTES * 2 + 1000)
            .map(|i| (i % 251) as u8)
            .collect();
        let path = store.path("b1/stream.zst");
        store
            .objects()
            .put(&path, object.clone().into())
            .await
            .unwrap();
        let mut pieces = store.objects().get(&path).await.unwrap().into_stream();
        let mut sizes = Vec::new();
        let mut read = Vec::new();
        while let Some(piece) = pieces.next().await {
            let piece = piece.unwrap();
            sizes.push(piece.len());
            read.extend_from_slice(&piece);
        }
        assert_eq!(read, object);
        assert_eq!(sizes, [LOCAL_READ_BYTES, LOCAL_READ_BYTES, 1000]);
    }

    #[test]
    fn names_live_under_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &Location::File {
                dir: dir.path().to_owned(),
            },
            &S3Settings::default(),
            false,
        )
        .unwrap();
        assert_eq!(
            store.path("b1/manifest.json").to_string(),
            "b1/manifest.json"
        );
        let s3 = Store::open(
            &"s3://backups/prod".parse().unwrap(),
            &S3Settings {
                endpoint: Some("http://127.0.0.1:1".into()),
                ..S3Settings::default()
            },
            false,
        )
        .unwrap();
        let path = s3.path("b1/manifest.json");
        assert_eq!(path.to_string(), "prod/b1/manifest.json");
        assert_eq!(s3.relative(&path), "b1/manifest.json");
        let bad = Store::open(
            &"s3://backups/prod".parse().unwrap(),
            &S3Settings {
                endpoint: Some("127.0.0.1:3900".into()),
                ..S3Settings::default()
            },
            false,
        );
        assert!(format!("{:#}", bad.unwrap_err()).contains("AWS_ENDPOINT_URL"));
    }
}
