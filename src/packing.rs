//! How a backup stream is packed for storage: compressed with zstd (multi-threaded), then,
//! when recipients are given, encrypted with age to their x25519 public keys. Unpacking is
//! the mirror. Both are streaming wrappers: memory is their buffers, never the backup.

use std::io::{self, Read, Write};
use std::path::Path;
use std::str::FromStr;

use anyhow::{Context, Result, anyhow, ensure};

/// The default zstd level: the fastest of the standard levels. A backup runs beside the
/// donor's backup tool and the upload on few cores; level 1 keeps zstd from being the
/// bottleneck (as Vitess found with `zstd -1`), and `--compression-level` trades speed for size.
pub const DEFAULT_LEVEL: i32 = 1;
/// zstd worker threads: the backup host's two cores are shared with the upload.
pub const COMPRESSION_THREADS: u32 = 2;
/// The input each zstd worker compresses at a time. It bounds memory (a few jobs' input and
/// output per worker) whatever the level; zstd's default grows with the level's window.
pub const COMPRESSION_JOB_BYTES: u32 = 2 << 20;

/// Public keys a backup is encrypted to.
#[derive(Clone)]
pub struct Recipients(Vec<age::x25519::Recipient>);

impl Recipients {
    /// Reads an age recipients file: one `age1…` public key a line; blank lines and `#`
    /// comments are skipped.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("reading {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self> {
        let mut recipients = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let recipient = age::x25519::Recipient::from_str(line).map_err(|e| {
                anyhow!("line {}: not an age x25519 public key (age1…): {e}", i + 1)
            })?;
            recipients.push(recipient);
        }
        ensure!(!recipients.is_empty(), "no age public key in it");
        Ok(Self(recipients))
    }

    /// The public keys, as the manifest records them.
    pub fn keys(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }
}

impl std::fmt::Debug for Recipients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.keys()).finish()
    }
}

/// Private keys a backup can be decrypted with.
pub struct Identities(Vec<Box<dyn age::Identity + Send + Sync>>);

impl Identities {
    /// Reads an age identity file (`age-keygen`'s output: `AGE-SECRET-KEY-…` lines).
    pub fn from_file(path: &Path) -> Result<Self> {
        let identities = age::IdentityFile::from_file(path.display().to_string())
            .with_context(|| format!("reading {}", path.display()))?
            .into_identities()
            .map_err(|e| anyhow!("reading {}: {e}", path.display()))?;
        ensure!(
            !identities.is_empty(),
            "{} holds no age identity",
            path.display()
        );
        Ok(Self(
            identities
                .into_iter()
                .map(|i| {
                    let boxed: Box<dyn age::Identity + Send + Sync> = i;
                    boxed
                })
                .collect(),
        ))
    }
}

/// The writer chain: bytes in, packed bytes out to `W`.
pub enum Packer<W: Write> {
    Plain(zstd::stream::write::Encoder<'static, W>),
    Encrypted(zstd::stream::write::Encoder<'static, age::stream::StreamWriter<W>>),
}

impl Identities {
    /// Whether these keys open an age stream that starts with `head`.
    pub fn check(&self, head: &[u8]) -> Result<()> {
        let decryptor = age::Decryptor::new(head).map_err(|e| anyhow!("not an age stream: {e}"))?;
        decryptor
            .decrypt(self.0.iter().map(|i| i.as_ref() as &dyn age::Identity))
            .map(|_| ())
            .map_err(|e| anyhow!("{e}"))
    }
}

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identities({} key(s), <redacted>)", self.0.len())
    }
}

impl<W: Write> Packer<W> {
    pub fn new(out: W, level: i32, recipients: Option<&Recipients>) -> Result<Self> {
        fn compressor<X: Write>(
            w: X,
            level: i32,
        ) -> io::Result<zstd::stream::write::Encoder<'static, X>> {
            let mut encoder = zstd::stream::write::Encoder::new(w, level)?;
            encoder.multithread(COMPRESSION_THREADS)?;
            encoder.set_parameter(zstd::stream::raw::CParameter::JobSize(
                COMPRESSION_JOB_BYTES,
            ))?;
            // A frame checksum: a stored stream damaged after compression is caught by
            // zstd itself, not only by the SHA-256 of its objects.
            encoder.include_checksum(true)?;
            Ok(encoder)
        }
        Ok(match recipients {
            None => Packer::Plain(compressor(out, level).context("starting the zstd compressor")?),
            Some(recipients) => {
                let encryptor = age::Encryptor::with_recipients(
                    recipients.0.iter().map(|r| r as &dyn age::Recipient),
                )
                .map_err(|e| anyhow!("starting the age encryption: {e}"))?;
                let sealed = encryptor
                    .wrap_output(out)
                    .context("starting the age encryption")?;
                Packer::Encrypted(
                    compressor(sealed, level).context("starting the zstd compressor")?,
                )
            }
        })
    }

    /// Ends the zstd frame and the age stream; returns the inner writer, flushed.
    pub fn finish(self) -> io::Result<W> {
        let mut out = match self {
            Packer::Plain(encoder) => encoder.finish()?,
            Packer::Encrypted(encoder) => encoder.finish()?.finish()?,
        };
        out.flush()?;
        Ok(out)
    }
}

impl<W: Write> Write for Packer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Packer::Plain(e) => e.write(buf),
            Packer::Encrypted(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Packer::Plain(e) => e.flush(),
            Packer::Encrypted(e) => e.flush(),
        }
    }
}

/// The reader chain: packed bytes in, the original stream out.
pub fn unpack<R: Read + Send + 'static>(
    input: R,
    identities: Option<&Identities>,
) -> Result<Box<dyn Read + Send>> {
    let plain: Box<dyn Read + Send> = match identities {
        None => Box::new(input),
        Some(identities) => {
            let decryptor = age::Decryptor::new(input)
                .map_err(|e| anyhow!("reading the backup's age header: {e}"))?;
            let reader = decryptor
                .decrypt(identities.0.iter().map(|i| i.as_ref() as &dyn age::Identity))
                .map_err(|e| {
                    anyhow!("decrypting the backup: {e} (is --age-identity-file the key it was encrypted to?)")
                })?;
            Box::new(reader)
        }
    };
    let decoder = zstd::stream::read::Decoder::new(plain).context("starting zstd decompression")?;
    Ok(Box::new(decoder))
}

#[cfg(test)]
mod tests {
    use super::*;
    use age::secrecy::ExposeSecret;

    fn keypair(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
        let identity = age::x25519::Identity::generate();
        let secret = dir.join("identity.txt");
        std::fs::write(
            &secret,
            format!(
                "# created for a test\n{}\n",
                identity.to_string().expose_secret()
            ),
        )
        .unwrap();
        let public = dir.join("recipients.txt");
        std::fs::write(
            &public,
            format!("# who may read\n{}\n", identity.to_public()),
        )
        .unwrap();
        (secret, public)
    }

    fn sample() -> Vec<u8> {
        (0..3_000_000u32)
            .flat_map(|i| (i % 1000).to_le_bytes())
            .collect()
    }

    #[test]
    fn compressed_streams_round_trip() {
        let data = sample();
        let mut packer = Packer::new(Vec::new(), DEFAULT_LEVEL, None).unwrap();
        packer.write_all(&data).unwrap();
        let packed = packer.finish().unwrap();
        assert!(packed.len() < data.len() / 4, "{} bytes", packed.len());
        let mut out = Vec::new();
        unpack(std::io::Cursor::new(packed), None)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert!(out == data);
    }

    #[test]
    fn encrypted_streams_need_the_identity() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, public) = keypair(dir.path());
        let recipients = Recipients::from_file(&public).unwrap();
        let data = sample();
        let mut packer = Packer::new(Vec::new(), 1, Some(&recipients)).unwrap();
        packer.write_all(&data).unwrap();
        let packed = packer.finish().unwrap();
        assert!(packed.starts_with(b"age-encryption.org/v1"));

        let identities = Identities::from_file(&secret).unwrap();
        let mut out = Vec::new();
        unpack(std::io::Cursor::new(packed.clone()), Some(&identities))
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert!(out == data);

        // Another key cannot open it; plain reading cannot either.
        let other = tempfile::tempdir().unwrap();
        let (other_secret, _) = keypair(other.path());
        let wrong = Identities::from_file(&other_secret).unwrap();
        let err = unpack(std::io::Cursor::new(packed.clone()), Some(&wrong))
            .err()
            .expect("a wrong identity decrypted the backup");
        assert!(
            format!("{err:#}").contains("--age-identity-file"),
            "{err:#}"
        );
        let mut garbage = Vec::new();
        assert!(
            unpack(std::io::Cursor::new(packed), None)
                .unwrap()
                .read_to_end(&mut garbage)
                .is_err()
        );
    }

    #[test]
    fn key_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "# nothing\n\nage1notakey\n").unwrap();
        let msg = format!("{:#}", Recipients::from_file(&bad).err().unwrap());
        assert!(msg.contains("line 3") && msg.contains("age1"), "{msg}");
        std::fs::write(&bad, "# only a comment\n").unwrap();
        assert!(Recipients::from_file(&bad).is_err());
        assert!(Identities::from_file(&bad).is_err());
        assert!(Recipients::from_file(&dir.path().join("missing")).is_err());
    }
}
