//! Receiving a backup from a donor over port 3307: connect, the opening exchange (see
//! [`crate::protocol::handshake`]), then the stream decoded into the staging directory on a
//! blocking thread, under the stall rule.

use std::io::{self, Cursor, Read};
use std::net::Shutdown;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use tokio::io::BufReader;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::{AttemptError, Donor};
use crate::protocol::{self, OpenError};
use crate::secrets::BackupSecret;
use crate::sockets;
use crate::tls::TlsDir;
use crate::xbstream::{self, Decoder, DirSink, Progress, Summary};

/// How long connecting to one donor may take before trying the next.
pub const DONOR_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A transfer must move at least this much in every `--stall-timeout`: a donor that sends
/// nothing, or a byte now and then, has stalled.
pub const STALL_MIN_BYTES: u64 = 1 << 20;

/// The stall rule, apart from any clock: at least [`STALL_MIN_BYTES`] in every `window`, or
/// the end of the stream.
#[derive(Debug, Clone, Copy)]
pub struct StallWatch {
    window: Duration,
    mark: Instant,
    since_mark: u64,
}

impl StallWatch {
    pub fn new(window: Duration, now: Instant) -> Self {
        Self {
            window,
            mark: now,
            since_mark: 0,
        }
    }

    /// Records `n` bytes read at `now` (0 is the end of the stream); an error once the
    /// transfer has stalled.
    pub fn observe(&mut self, now: Instant, n: u64) -> io::Result<()> {
        self.since_mark = self.since_mark.saturating_add(n);
        if n == 0 || self.since_mark >= STALL_MIN_BYTES {
            self.mark = now;
            self.since_mark = 0;
            return Ok(());
        }
        if now.saturating_duration_since(self.mark) > self.window {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "less than {} KiB from the donor in {}",
                    STALL_MIN_BYTES / 1024,
                    humantime::format_duration(self.window)
                ),
            ));
        }
        Ok(())
    }
}

/// A reader under the stall rule. Its source must itself time out reads (a socket's
/// `SO_RCVTIMEO`), so that a donor sending nothing ends a read too.
struct Stalling<R> {
    inner: R,
    watch: StallWatch,
}

impl<R: Read> Read for Stalling<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.watch.observe(Instant::now(), n as u64)?;
        Ok(n)
    }
}

/// Bytes read from the socket at once under TLS: rustls alone reads 4 KiB at a time, a
/// system call per 4 KiB of a multi-gigabyte stream.
const TLS_READ_BUFFER: usize = 256 * 1024;

/// A socket read through a buffer and written directly, for rustls' blocking stream (which
/// writes only the odd alert or key update after the handshake).
struct Buffered(io::BufReader<Stalling<std::net::TcpStream>>);

impl Read for Buffered {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl io::Write for Buffered {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.get_mut().inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.get_mut().inner.flush()
    }
}

/// What receiving from one donor needs.
pub struct Transfer {
    pub staging: PathBuf,
    pub flavor: xbstream::Flavor,
    pub stall: Duration,
    pub secret: Option<BackupSecret>,
    /// Mutual TLS with the donor (`--tls-dir`).
    pub tls: Option<Arc<TlsDir>>,
    pub progress: Arc<Progress>,
    pub cancel: CancellationToken,
}

/// A donor's stream after the opening exchange.
pub struct DonorStream {
    /// Everything the donor sends from the first byte of the stream on, under the stall
    /// rule. Blocking reads: use it off the async threads.
    pub input: Box<dyn Read + Send>,
    /// Shuts the socket down on cancellation, which ends a blocked read; stops when dropped.
    pub watcher: AbortOnDropHandle<()>,
}

/// Connects to `donor` and plays the opening exchange; the stream follows.
pub async fn open(
    donor: &Donor,
    secret: Option<&BackupSecret>,
    tls: Option<&TlsDir>,
    stall: Duration,
    cancel: &CancellationToken,
) -> Result<DonorStream, AttemptError> {
    let unavailable = |e: anyhow::Error| AttemptError::Unavailable(crate::errors::report(&e));
    let socket = tokio::time::timeout(
        DONOR_CONNECT_TIMEOUT,
        TcpStream::connect((donor.host.as_str(), donor.port)),
    )
    .await
    .map_err(|_| anyhow!("no connection within {DONOR_CONNECT_TIMEOUT:?}"))
    .and_then(|r| r.map_err(anyhow::Error::from))
    .with_context(|| format!("connecting to {donor}"))
    .map_err(unavailable)?;
    sockets::tune(&socket).map_err(AttemptError::Failed)?;
    let socket: Either<TcpStream, Box<TlsStream<TcpStream>>> = match tls {
        None => Either::Left(socket),
        Some(tls) => {
            let name = TlsDir::server_name(&donor.host).map_err(AttemptError::Fatal)?;
            let connect = TlsConnector::from(tls.client_config()).connect(name, socket);
            let connected = tokio::select! {
                connected = tokio::time::timeout(DONOR_CONNECT_TIMEOUT, connect) => connected,
                () = cancel.cancelled() => {
                    return Err(AttemptError::Failed(anyhow!("interrupted by shutdown")));
                }
            };
            match connected {
                Ok(Ok(stream)) => Either::Right(Box::new(stream)),
                // A certificate of another CA, expired, or for another name; or a donor
                // without TLS. Counted as a failed attempt: the next donor may be right.
                Ok(Err(e)) => {
                    return Err(AttemptError::Failed(anyhow!(
                        "TLS with {donor} failed: {e} (checked against the CA and the name {:?}; see --tls-dir)",
                        donor.host
                    )));
                }
                Err(_) => {
                    return Err(AttemptError::Failed(anyhow!(
                        "no TLS handshake with {donor} within {DONOR_CONNECT_TIMEOUT:?} (does it serve TLS? see --tls-dir)"
                    )));
                }
            }
        }
    };
    let mut reader = BufReader::new(socket);
    let opened = tokio::select! {
        opened = tokio::time::timeout(stall, protocol::client_open(&mut reader, secret)) => opened,
        () = cancel.cancelled() => {
            return Err(AttemptError::Failed(anyhow!("interrupted by shutdown")));
        }
    };
    let head = match opened {
        Err(_) => {
            return Err(AttemptError::Failed(anyhow!(
                "the donor said nothing for {} (see --stall-timeout)",
                humantime::format_duration(stall)
            )));
        }
        Ok(Ok(head)) => head,
        Ok(Err(OpenError::Unavailable(reason))) => return Err(AttemptError::Unavailable(reason)),
        Ok(Err(e @ (OpenError::Denied(_) | OpenError::SecretRequired))) => {
            return Err(AttemptError::Fatal(anyhow!("{e}")));
        }
        Ok(Err(OpenError::Failed(e))) => return Err(AttemptError::Failed(e)),
    };
    // From here the stream is read with plain blocking reads: what the handshake buffered
    // comes first, then the socket itself, whose read timeout makes a silent donor an error.
    let buffered = reader.buffer().to_vec();
    // A TLS session goes on with rustls' blocking stream over the same socket and state.
    let (socket, session) = match reader.into_inner() {
        Either::Left(tcp) => (tcp, None),
        Either::Right(tls) => {
            let (tcp, session) = tls.into_inner();
            (tcp, Some(session))
        }
    };
    let socket = socket
        .into_std()
        .and_then(|s| s.set_nonblocking(false).map(|()| s))
        .and_then(|s| s.set_read_timeout(Some(stall)).map(|()| s))
        .context("preparing the donor's socket")
        .map_err(AttemptError::Failed)?;
    let shutter = socket
        .try_clone()
        .context("duplicating the donor's socket")
        .map_err(AttemptError::Failed)?;
    let watcher = AbortOnDropHandle::new(tokio::spawn({
        let cancel = cancel.clone();
        async move {
            cancel.cancelled().await;
            let _ = shutter.shutdown(Shutdown::Both);
        }
    }));
    // The stall rule watches the socket's own reads: under TLS one read of the decrypted
    // stream may take many socket reads (a whole record), each of them bounded.
    let socket = Stalling {
        inner: socket,
        watch: StallWatch::new(stall, Instant::now()),
    };
    let source: Box<dyn Read + Send> = match session {
        None => Box::new(socket),
        Some(session) => Box::new(rustls::StreamOwned::new(
            session,
            Buffered(io::BufReader::with_capacity(TLS_READ_BUFFER, socket)),
        )),
    };
    let input = Cursor::new(head).chain(Cursor::new(buffered)).chain(source);
    Ok(DonorStream {
        input: Box::new(input),
        watcher,
    })
}

/// Connects to `donor` and decodes its backup into the staging directory (which must not
/// exist yet).
pub async fn receive(donor: &Donor, transfer: Transfer) -> Result<Summary, AttemptError> {
    let stall = transfer.stall;
    let stream = open(
        donor,
        transfer.secret.as_ref(),
        transfer.tls.as_deref(),
        stall,
        &transfer.cancel,
    )
    .await?;
    let DonorStream { input, watcher } = stream;
    let decoded = tokio::task::spawn_blocking(move || decode(input, transfer)).await;
    drop(watcher);
    decoded
        .map_err(|e| AttemptError::Failed(anyhow!("the receiving thread failed: {e}")))?
        .map_err(|e| AttemptError::from_transfer(explain_stall(e, stall)))
}

/// Decodes `input` into a new staging directory.
pub fn decode(input: impl Read, transfer: Transfer) -> Result<Summary> {
    std::fs::create_dir(&transfer.staging)
        .with_context(|| format!("creating {}", transfer.staging.display()))?;
    let mut sink = DirSink::new(&transfer.staging)?;
    Decoder::new(transfer.flavor)
        .with_header(protocol::INFO_ENTRY)
        .with_trailer(protocol::STATUS_ENTRY)
        .with_limit_from_header(protocol::stream_limit)
        .with_progress(transfer.progress)
        .with_cancel(transfer.cancel)
        .decode(input, &mut sink)
        .context("receiving the backup stream")
}

/// A read timeout surfaces as EAGAIN; say what it means.
pub fn explain_stall(e: anyhow::Error, stall: Duration) -> anyhow::Error {
    let timed_out = e.chain().any(|cause| {
        cause.downcast_ref::<io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            )
        })
    });
    if timed_out {
        e.context(format!(
            "the donor stalled (see --stall-timeout, {})",
            humantime::format_duration(stall)
        ))
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A donor that sends a MiB now and then keeps the transfer alive; one that sends a
    /// trickle does not, however steady.
    #[test]
    fn the_stall_rule_wants_a_mib_per_window() {
        let t0 = Instant::now();
        let window = Duration::from_secs(300);
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut steady = StallWatch::new(window, t0);
        for minute in 1..=30 {
            steady.observe(at(minute * 60), STALL_MIN_BYTES).unwrap();
        }
        let mut trickle = StallWatch::new(window, t0);
        let mut failed_at = None;
        for second in (2..=1000).step_by(2) {
            if trickle.observe(at(second), 1).is_err() {
                failed_at = Some(second);
                break;
            }
        }
        assert_eq!(failed_at, Some(302));
        // The end of the stream is never a stall.
        let mut ending = StallWatch::new(window, t0);
        ending.observe(at(299), 10).unwrap();
        ending.observe(at(900), 0).unwrap();
    }
}
