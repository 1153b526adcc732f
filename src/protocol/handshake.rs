//! Both sides of the opening exchange on port 3307, over any byte stream (TCP, TLS, or an
//! in-memory pipe in tests): the optional challenge-response, then a refusal line or the start
//! of the stream. See [`Message`] for the lines.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{LINE_PREFIX, MAX_LINE_LEN, Message, client_proof, nonce, server_proof};
use crate::secrets::BackupSecret;

/// How long a client has to answer the challenge.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a line to the peer may take to send before the peer is given up.
pub const LINE_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes that tell an agent line from the start of an xbstream (whose magic is 8 bytes).
const HEAD_LEN: usize = 8;

/// Why the server sent no stream.
#[derive(Debug)]
pub enum Rejection {
    /// The client did not prove it knows the backup secret; why, for the log. The client was
    /// told only `DENIED`.
    Denied(anyhow::Error),
    /// The server cannot serve now (busy, not ready); the client was told why.
    Refused(Message),
}

/// The server's side: challenges the client when there is a `secret`, then lets `admit`
/// decide (readiness, a free slot). `Ok` carries what `admit` returned; the stream follows.
pub async fn server_open<S, T>(
    stream: &mut S,
    secret: Option<&BackupSecret>,
    admit: impl FnOnce() -> Result<T, Message>,
) -> Result<T, Rejection>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if let Some(secret) = secret
        && let Err(e) = authenticate(stream, secret).await
    {
        let denied = Message::Denied("authentication failed".into());
        let _ = send_line(stream, &denied).await;
        return Err(Rejection::Denied(e));
    }
    match admit() {
        Ok(admitted) => Ok(admitted),
        Err(refusal) => {
            let _ = send_line(stream, &refusal).await;
            Err(Rejection::Refused(refusal))
        }
    }
}

/// Challenges the client and checks its proof; `Err` says why it failed.
async fn authenticate<S>(stream: &mut S, secret: &BackupSecret) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let server_nonce = nonce()?;
    send_line(stream, &Message::Challenge(server_nonce))
        .await
        .context("sending the challenge")?;
    let line = tokio::time::timeout(AUTH_TIMEOUT, read_line(stream, b""))
        .await
        .map_err(|_| anyhow!("no answer to the challenge within {AUTH_TIMEOUT:?}"))?
        .context("reading the client's answer")?;
    let Message::Auth { nonce, mac } = Message::parse(&line).context("a garbled answer")? else {
        bail!("an answer that is not an authentication");
    };
    if !super::client_proof_is_valid(secret, &server_nonce, &nonce, &mac) {
        bail!("a proof that does not match the secret (a wrong secret, or a replay)");
    }
    let proof = Message::Proof(server_proof(secret, &server_nonce, &nonce));
    send_line(stream, &proof).await.context("sending the proof")
}

/// Why a client got no stream.
#[derive(Debug)]
pub enum OpenError {
    /// The donor cannot serve now (busy, not ready, or it closed before sending anything):
    /// waiting and retrying may help.
    Unavailable(String),
    /// The donor refused our proof: the pods do not share the same backup secret.
    Denied(String),
    /// The donor asks for a backup secret and this side has none.
    SecretRequired,
    /// The exchange broke: a garbled line, a proof that does not match, a read that failed.
    Failed(anyhow::Error),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Unavailable(reason) => write!(f, "the donor cannot serve now: {reason}"),
            OpenError::Denied(reason) => write!(
                f,
                "the donor refused our backup secret ({reason}): the pods do not share the same secret"
            ),
            OpenError::SecretRequired => f.write_str(
                "the donor requires a backup secret: pass --backup-secret-file with the StatefulSet's secret",
            ),
            OpenError::Failed(e) => write!(f, "{e:#}"),
        }
    }
}

/// The client's side: answers a challenge when there is one (with `secret`), and returns the
/// first bytes of the stream, which the caller puts back before the rest of `stream`. With a
/// `secret`, a donor that streams without proving it knows the secret is refused.
pub async fn client_open<S>(
    stream: &mut S,
    secret: Option<&BackupSecret>,
) -> Result<Vec<u8>, OpenError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let failed = OpenError::Failed;
    let mut authenticated = false;
    loop {
        let head = read_head(stream)
            .await
            .context("reading from the donor")
            .map_err(failed)?;
        if head.is_empty() {
            return Err(OpenError::Unavailable(
                "it closed the connection without sending anything".into(),
            ));
        }
        if head != LINE_PREFIX.as_bytes()[..HEAD_LEN] {
            if secret.is_some() && !authenticated {
                return Err(failed(anyhow!(
                    "the donor sent a backup without proving it knows the backup secret (it runs without one); refused"
                )));
            }
            return Ok(head);
        }
        let line = read_line(stream, &head)
            .await
            .context("reading a line from the donor")
            .map_err(failed)?;
        match Message::parse(&line).map_err(failed)? {
            Message::Challenge(server_nonce) => {
                let secret = secret.ok_or(OpenError::SecretRequired)?;
                answer_challenge(stream, secret, &server_nonce).await?;
                authenticated = true;
            }
            refusal @ (Message::Busy(_) | Message::NotReady(_)) => {
                return Err(OpenError::Unavailable(refusal.to_string()));
            }
            Message::Denied(reason) => return Err(OpenError::Denied(reason)),
            other => {
                return Err(failed(anyhow!("unexpected {other} from the donor")));
            }
        }
    }
}

/// Proves we know the secret, and checks the donor's proof that it does too.
async fn answer_challenge<S>(
    stream: &mut S,
    secret: &BackupSecret,
    server_nonce: &super::Nonce,
) -> Result<(), OpenError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let failed = OpenError::Failed;
    let client_nonce = nonce().map_err(failed)?;
    let auth = Message::Auth {
        nonce: client_nonce,
        mac: client_proof(secret, server_nonce, &client_nonce),
    };
    send_line(stream, &auth)
        .await
        .context("answering the donor's challenge")
        .map_err(failed)?;
    let head = read_head(stream)
        .await
        .context("reading the donor's proof")
        .map_err(failed)?;
    let line = read_line(stream, &head)
        .await
        .context("reading the donor's proof")
        .map_err(failed)?;
    match Message::parse(&line).map_err(failed)? {
        Message::Proof(mac)
            if super::server_proof_is_valid(secret, server_nonce, &client_nonce, &mac) =>
        {
            Ok(())
        }
        Message::Proof(_) => Err(failed(anyhow!(
            "the donor's proof does not match: it does not know the backup secret"
        ))),
        Message::Denied(reason) => Err(OpenError::Denied(reason)),
        other => Err(failed(anyhow!("unexpected {other} after our proof"))),
    }
}

/// Sends one line, within [`LINE_WRITE_TIMEOUT`].
pub async fn send_line<S: AsyncWrite + Unpin>(stream: &mut S, message: &Message) -> Result<()> {
    let line = message.to_line();
    tokio::time::timeout(LINE_WRITE_TIMEOUT, async {
        stream.write_all(line.as_bytes()).await?;
        stream.flush().await
    })
    .await
    .map_err(|_| anyhow!("the peer took no line for {LINE_WRITE_TIMEOUT:?}"))?
    .context("sending a line")
}

/// The next [`HEAD_LEN`] bytes (fewer when the stream ends first).
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Vec<u8>> {
    let mut head = Vec::with_capacity(HEAD_LEN);
    (&mut *stream)
        .take(HEAD_LEN as u64)
        .read_to_end(&mut head)
        .await?;
    Ok(head)
}

/// The rest of a line whose first bytes were `start`, without its newline, at most
/// [`MAX_LINE_LEN`] bytes. Byte by byte: nothing past the line may be consumed, since what
/// follows belongs to the stream (or, on the server, the socket goes to the backup tool).
pub async fn read_line<S: AsyncRead + Unpin>(stream: &mut S, start: &[u8]) -> Result<String> {
    let mut line = start.to_vec();
    if let Some(end) = line.iter().position(|&b| b == b'\n') {
        // Only a short line fits in the head; nothing beyond it was read.
        ensure!(end + 1 == line.len(), "bytes after a line's end");
        line.truncate(end);
        return String::from_utf8(line).context("a line that is not text");
    }
    loop {
        let byte = stream.read_u8().await?;
        if byte == b'\n' {
            return String::from_utf8(line).context("a line that is not text");
        }
        ensure!(line.len() < MAX_LINE_LEN, "a line too long to be one");
        line.push(byte);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xbstream::MAGIC;
    use tokio::io::{DuplexStream, duplex};

    fn secret(s: &str) -> BackupSecret {
        BackupSecret::new(s.as_bytes().to_vec()).unwrap()
    }

    /// A pipe with little capacity, so every write waits for the other side's reads.
    fn pipe() -> (DuplexStream, DuplexStream) {
        duplex(16)
    }

    /// Runs the server (with `admit`) and the client over one pipe; on admission the server
    /// sends the start of a stream.
    async fn exchange(
        server_secret: Option<BackupSecret>,
        client_secret: Option<BackupSecret>,
        admit: Result<(), Message>,
    ) -> (Result<(), Rejection>, Result<Vec<u8>, OpenError>) {
        let (mut server_end, mut client_end) = pipe();
        let server = tokio::spawn(async move {
            let opened = server_open(&mut server_end, server_secret.as_ref(), || admit).await;
            if opened.is_ok() {
                server_end.write_all(MAGIC).await.unwrap();
                server_end.write_all(b"rest").await.unwrap();
            }
            opened
        });
        let client = client_open(&mut client_end, client_secret.as_ref()).await;
        (server.await.unwrap(), client)
    }

    #[tokio::test]
    async fn the_right_secret_opens_the_stream() {
        let s = secret("0123456789abcdef-shared");
        let (server, client) = exchange(Some(s.clone()), Some(s), Ok(())).await;
        server.unwrap();
        assert_eq!(client.unwrap(), MAGIC);
        // Raw mode on both sides: the stream starts at once.
        let (server, client) = exchange(None, None, Ok(())).await;
        server.unwrap();
        assert_eq!(client.unwrap(), MAGIC);
    }

    #[tokio::test]
    async fn a_wrong_secret_is_denied_on_both_sides() {
        let (server, client) = exchange(
            Some(secret("0123456789abcdef-shared")),
            Some(secret("0123456789abcdef-other!")),
            Ok(()),
        )
        .await;
        let Err(Rejection::Denied(why)) = server else {
            panic!("{server:?}")
        };
        assert!(format!("{why:#}").contains("does not match"), "{why:#}");
        assert!(matches!(client, Err(OpenError::Denied(_))), "{client:?}");
    }

    #[tokio::test]
    async fn a_client_without_the_secret_learns_nothing() {
        let (server, client) =
            exchange(Some(secret("0123456789abcdef-shared")), None, Ok(())).await;
        assert!(
            matches!(client, Err(OpenError::SecretRequired)),
            "{client:?}"
        );
        // The client hung up after the challenge: the server saw no answer.
        assert!(matches!(server, Err(Rejection::Denied(_))), "{server:?}");
    }

    #[tokio::test]
    async fn a_donor_without_the_secret_is_refused_by_a_client_with_one() {
        let (_server, client) =
            exchange(None, Some(secret("0123456789abcdef-shared")), Ok(())).await;
        let Err(OpenError::Failed(why)) = client else {
            panic!("{client:?}")
        };
        assert!(format!("{why:#}").contains("without proving"), "{why:#}");
    }

    #[tokio::test]
    async fn busy_and_not_ready_come_after_authentication() {
        let s = secret("0123456789abcdef-shared");
        for refusal in [
            Message::Busy("serving 1 backup(s)".into()),
            Message::NotReady("replication is not configured".into()),
        ] {
            let (server, client) =
                exchange(Some(s.clone()), Some(s.clone()), Err(refusal.clone())).await;
            assert!(matches!(server, Err(Rejection::Refused(ref m)) if *m == refusal));
            let Err(OpenError::Unavailable(reason)) = client else {
                panic!("{client:?}")
            };
            assert_eq!(reason, refusal.to_string());
        }
    }

    /// A recorded answer is worthless against a new challenge.
    #[tokio::test]
    async fn a_replayed_answer_is_denied() {
        let s = secret("0123456789abcdef-shared");
        // Record a legitimate client's answer.
        let (mut server_end, mut client_end) = duplex(4096);
        let server = {
            let s = s.clone();
            tokio::spawn(async move { server_open(&mut server_end, Some(&s), || Ok(())).await })
        };
        let challenge = read_line(&mut client_end, b"").await.unwrap();
        let Message::Challenge(server_nonce) = Message::parse(&challenge).unwrap() else {
            panic!()
        };
        let client_nonce = nonce().unwrap();
        let recorded = Message::Auth {
            nonce: client_nonce,
            mac: client_proof(&s, &server_nonce, &client_nonce),
        };
        send_line(&mut client_end, &recorded).await.unwrap();
        server.await.unwrap().unwrap();

        // Replay it to a new connection.
        let (mut server_end, mut attacker) = duplex(4096);
        let server =
            tokio::spawn(async move { server_open(&mut server_end, Some(&s), || Ok(())).await });
        read_line(&mut attacker, b"").await.unwrap();
        send_line(&mut attacker, &recorded).await.unwrap();
        let answer = read_line(&mut attacker, b"").await.unwrap();
        assert!(answer.starts_with("MYSQL-AGENT/1 DENIED"), "{answer}");
        let Err(Rejection::Denied(why)) = server.await.unwrap() else {
            panic!()
        };
        assert!(format!("{why:#}").contains("replay"), "{why:#}");
    }

    #[tokio::test]
    async fn a_peer_that_hangs_up_mid_handshake() {
        let s = secret("0123456789abcdef-shared");
        // The client leaves after the challenge.
        let (mut server_end, mut client_end) = pipe();
        let server = {
            let s = s.clone();
            tokio::spawn(async move { server_open(&mut server_end, Some(&s), || Ok(())).await })
        };
        read_line(&mut client_end, b"").await.unwrap();
        drop(client_end);
        assert!(matches!(server.await.unwrap(), Err(Rejection::Denied(_))));

        // The donor leaves after the client's answer: no proof, no stream.
        let (mut server_end, mut client_end) = pipe();
        let donor = tokio::spawn(async move {
            send_line(&mut server_end, &Message::Challenge(nonce().unwrap()))
                .await
                .unwrap();
            let _ = read_line(&mut server_end, b"").await;
        });
        let client = client_open(&mut client_end, Some(&s)).await;
        donor.await.unwrap();
        assert!(matches!(client, Err(OpenError::Failed(_))), "{client:?}");

        // A donor that closes before saying anything is merely unavailable.
        let (server_end, mut client_end) = pipe();
        drop(server_end);
        let client = client_open(&mut client_end, None).await;
        assert!(
            matches!(client, Err(OpenError::Unavailable(_))),
            "{client:?}"
        );
    }

    /// A client that never answers is dropped after [`AUTH_TIMEOUT`], not held forever.
    #[tokio::test(start_paused = true)]
    async fn a_silent_client_times_out() {
        let s = secret("0123456789abcdef-shared");
        let (mut server_end, mut client_end) = duplex(4096);
        let started = tokio::time::Instant::now();
        let server =
            tokio::spawn(async move { server_open(&mut server_end, Some(&s), || Ok(())).await });
        read_line(&mut client_end, b"").await.unwrap();
        let Err(Rejection::Denied(why)) = server.await.unwrap() else {
            panic!()
        };
        assert!(format!("{why:#}").contains("no answer"), "{why:#}");
        assert_eq!(started.elapsed(), AUTH_TIMEOUT);
        drop(client_end);
    }

    #[tokio::test]
    async fn garbage_lines_are_failures_not_panics() {
        for bytes in [
            &b"MYSQL-AGENT/1 DANCE\n"[..],
            b"MYSQL-AGENT/1 CHALLENGE zz\n",
            b"MYSQL-AGENT/1 \xff\xfe\n",
            b"MYSQL-AGENT/1 no end of line",
        ] {
            let (mut server_end, mut client_end) = pipe();
            let donor = tokio::spawn(async move {
                let _ = server_end.write_all(bytes).await;
            });
            let client = client_open(&mut client_end, None).await;
            donor.await.unwrap();
            assert!(matches!(client, Err(OpenError::Failed(_))), "{client:?}");
        }
        let long = format!("{LINE_PREFIX}BUSY {}\n", "x".repeat(MAX_LINE_LEN));
        let (mut server_end, mut client_end) = duplex(1 << 16);
        server_end.write_all(long.as_bytes()).await.unwrap();
        let client = client_open(&mut client_end, None).await;
        assert!(matches!(client, Err(OpenError::Failed(_))), "{client:?}");
    }
}
