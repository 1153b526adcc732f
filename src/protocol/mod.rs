//! What travels on port 3307 between `serve-backup` and `clone`.
//!
//! Compatible with the tutorial in both directions: the server speaks first and sends the
//! backup tool's xbstream as is, so `ncat --recv-only host 3307 | xbstream -x` still works; the
//! agent adds only things such a client either never sees or extracts as one small file:
//!
//! - a refusal line instead of a stream when the server cannot serve now
//!   (`MYSQL-AGENT/1 BUSY …` or `MYSQL-AGENT/1 NOT-READY …`), which `xbstream -x` rejects as
//!   a bad magic and the agent's clone retries;
//! - with a backup secret, a challenge-response before anything else (see [`Message`] and
//!   [`handshake`]): then an ncat client gets a challenge line and no byte of backup;
//! - before the tool's stream, one small xbstream file, [`INFO_ENTRY`], with the size to
//!   expect (see [`entries`]);
//! - after the tool's stream, one more xbstream file, [`STATUS_ENTRY`], saying whether the tool
//!   completed and how many bytes preceded the entry. The format has no trailer of its own,
//!   so without this a stream cut at a chunk boundary would look complete.

pub mod entries;
pub mod handshake;

use std::fmt;

use anyhow::{Context, Result, bail};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::keyvalue::one_line;
use crate::secrets::BackupSecret;

pub use entries::{StreamInfo, StreamStatus, stream_limit};
pub use handshake::{OpenError, Rejection, client_open, server_open};

/// The tutorial's backup port.
pub const DEFAULT_PORT: u16 = 3307;
/// Name of the end-of-stream entry; a plain name both `xbstream` and `mbstream` extract.
pub const STATUS_ENTRY: &str = "mysql_agent_stream_status";
/// Name of the entry that opens the stream with what the donor can tell in advance (the
/// size to expect). mbstream writes even chunks marked ignorable to disk, so this is a plain
/// small file too, which the agent's extractor keeps in memory.
pub const INFO_ENTRY: &str = "mysql_agent_stream_info";
/// Starts every line the server sends instead of a stream; 8 bytes differ from xbstream's magic.
pub const LINE_PREFIX: &str = "MYSQL-AGENT/1 ";
/// A refusal line longer than this is not one.
pub const MAX_LINE_LEN: usize = 4096;

/// Bytes of each side's nonce in the handshake.
pub const NONCE_LEN: usize = 32;
/// Domain labels keep a MAC computed for one side from being replayed as the other's.
const CLIENT_LABEL: &[u8] = b"mysql-agent/1 client proof";
const SERVER_LABEL: &[u8] = b"mysql-agent/1 server proof";

pub type Nonce = [u8; NONCE_LEN];

/// A line sent instead of (or before) a backup stream.
///
/// With a backup secret the server opens with `CHALLENGE <nonce>`; the client answers
/// `AUTH <its nonce> <HMAC(secret, client label, both nonces)>`; the server checks it in
/// constant time and answers `PROOF <HMAC(secret, server label, both nonces)>` (so the client
/// knows the donor holds the secret too) or `DENIED`. The secret never crosses the wire, and
/// fresh nonces on both sides make a recorded exchange worthless. Then, as without a secret,
/// the stream follows, or `BUSY`/`NOT-READY`, which a client retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Challenge(Nonce),
    Auth {
        nonce: Nonce,
        mac: Vec<u8>,
    },
    Proof(Vec<u8>),
    Denied(String),
    /// The server is already streaming as many backups as it allows.
    Busy(String),
    /// The server is not in a state to produce a usable backup yet (a replica whose
    /// replication is not configured would hand out data without coordinates).
    NotReady(String),
}

impl Message {
    pub fn to_line(&self) -> String {
        let body = match self {
            Message::Challenge(nonce) => format!("CHALLENGE {}", hex::encode(nonce)),
            Message::Auth { nonce, mac } => {
                format!("AUTH {} {}", hex::encode(nonce), hex::encode(mac))
            }
            Message::Proof(mac) => format!("PROOF {}", hex::encode(mac)),
            Message::Denied(reason) => format!("DENIED {}", one_line(reason)),
            Message::Busy(reason) => format!("BUSY {}", one_line(reason)),
            Message::NotReady(reason) => format!("NOT-READY {}", one_line(reason)),
        };
        format!("{LINE_PREFIX}{body}\n")
    }

    /// Parses a line (without its newline) that starts with [`LINE_PREFIX`].
    pub fn parse(line: &str) -> Result<Self> {
        let rest = line
            .strip_prefix(LINE_PREFIX)
            .with_context(|| format!("not an agent line: {line:?}"))?;
        let (word, args) = rest.split_once(' ').unwrap_or((rest, ""));
        let nonce = |hex: &str| -> Result<Nonce> {
            let bytes = hex::decode(hex).context("a nonce that is not hex")?;
            bytes
                .try_into()
                .map_err(|_| anyhow::anyhow!("a nonce of the wrong length"))
        };
        Ok(match word {
            "CHALLENGE" => Message::Challenge(nonce(args)?),
            "AUTH" => {
                let (n, mac) = args.split_once(' ').context("AUTH without a MAC")?;
                Message::Auth {
                    nonce: nonce(n)?,
                    mac: hex::decode(mac).context("a MAC that is not hex")?,
                }
            }
            "PROOF" => Message::Proof(hex::decode(args).context("a MAC that is not hex")?),
            "DENIED" => Message::Denied(args.to_owned()),
            "BUSY" => Message::Busy(args.to_owned()),
            "NOT-READY" => Message::NotReady(args.to_owned()),
            _ => bail!("unknown answer {word:?} from the backup server"),
        })
    }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Message::Busy(r) => write!(f, "busy: {r}"),
            Message::NotReady(r) => write!(f, "not ready: {r}"),
            Message::Denied(r) => write!(f, "denied: {r}"),
            Message::Challenge(_) => f.write_str("a challenge"),
            Message::Auth { .. } => f.write_str("an authentication"),
            Message::Proof(_) => f.write_str("a proof"),
        }
    }
}

/// A fresh nonce from the operating system's generator.
pub fn nonce() -> Result<Nonce> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| anyhow::anyhow!("drawing a random nonce: {e}"))?;
    Ok(nonce)
}

fn keyed(secret: &BackupSecret, label: &[u8], server: &Nonce, client: &Nonce) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes any key length");
    mac.update(label);
    mac.update(server);
    mac.update(client);
    mac
}

/// The client's proof that it knows the secret, bound to both nonces.
pub fn client_proof(secret: &BackupSecret, server: &Nonce, client: &Nonce) -> Vec<u8> {
    keyed(secret, CLIENT_LABEL, server, client)
        .finalize()
        .into_bytes()
        .to_vec()
}

/// The server's proof, bound to both nonces and distinct from the client's.
pub fn server_proof(secret: &BackupSecret, server: &Nonce, client: &Nonce) -> Vec<u8> {
    keyed(secret, SERVER_LABEL, server, client)
        .finalize()
        .into_bytes()
        .to_vec()
}

/// Checks a client's proof in constant time.
pub fn client_proof_is_valid(
    secret: &BackupSecret,
    server: &Nonce,
    client: &Nonce,
    mac: &[u8],
) -> bool {
    keyed(secret, CLIENT_LABEL, server, client)
        .verify_slice(mac)
        .is_ok()
}

/// Checks a server's proof in constant time.
pub fn server_proof_is_valid(
    secret: &BackupSecret,
    server: &Nonce,
    client: &Nonce,
    mac: &[u8],
) -> bool {
    keyed(secret, SERVER_LABEL, server, client)
        .verify_slice(mac)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xbstream;

    #[test]
    fn lines_round_trip_and_are_not_xbstream() {
        for message in [
            Message::Challenge([7; NONCE_LEN]),
            Message::Auth {
                nonce: [9; NONCE_LEN],
                mac: vec![1, 2, 3],
            },
            Message::Proof(vec![4, 5]),
            Message::Denied("authentication failed".into()),
            Message::Busy("serving 1 backup(s)".into()),
            Message::NotReady("replication not configured".into()),
        ] {
            let line = message.to_line();
            assert!(line.ends_with('\n'));
            assert_ne!(&line.as_bytes()[..8], xbstream::MAGIC);
            assert_eq!(Message::parse(line.trim_end()).unwrap(), message);
        }
        assert_eq!(
            Message::NotReady("a\nb".into()).to_line(),
            format!("{LINE_PREFIX}NOT-READY a b\n")
        );
        for bad in [
            "MYSQL-AGENT/1 DANCE now",
            "hello",
            "MYSQL-AGENT/1 CHALLENGE zz",
            "MYSQL-AGENT/1 CHALLENGE 0102",
            "MYSQL-AGENT/1 AUTH 00",
        ] {
            assert!(Message::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn proofs_need_the_secret_and_both_fresh_nonces() {
        let secret = BackupSecret::new(b"the shared backup secret".to_vec()).unwrap();
        let other = BackupSecret::new(b"a different backup secret".to_vec()).unwrap();
        let (server, client) = (nonce().unwrap(), nonce().unwrap());
        assert_ne!(server, client, "nonces repeat");
        let proof = client_proof(&secret, &server, &client);
        assert!(client_proof_is_valid(&secret, &server, &client, &proof));
        assert!(!client_proof_is_valid(&other, &server, &client, &proof));
        // A recorded proof is worthless against a new challenge.
        let next = nonce().unwrap();
        assert!(!client_proof_is_valid(&secret, &next, &client, &proof));
        // A client's proof is not a server's, and truncation does not pass.
        assert!(!server_proof_is_valid(&secret, &server, &client, &proof));
        assert!(!client_proof_is_valid(
            &secret,
            &server,
            &client,
            &proof[..16]
        ));
        let server_side = server_proof(&secret, &server, &client);
        assert!(server_proof_is_valid(
            &secret,
            &server,
            &client,
            &server_side
        ));
        assert_eq!(proof.len(), 32);
    }
}
