//! Hands the client's socket to the backup tool as its stdout: the tool's writes go straight
//! into the connection, with no pipe and no copy through the agent.
//!
//! The agent still has to say how many bytes the tool sent (the end-of-stream status, see
//! [`crate::protocol`]), and it reads that off the socket: TCP counts the bytes the peer
//! acknowledged, so once everything written is acknowledged, the count before the tool
//! started and the count after it exited differ by exactly the tool's output.
//!
//! Measured on the loopback bench (1 GiB sysbench, MariaDB 10.11): splicing the tool's pipe
//! into the socket served 77% to 91% of the rate the tool reaches writing into a socket
//! itself; see the commit that introduced this module for the numbers after.

// The crate's one exception to `deny(unsafe_code)`: TCP_INFO, which no safe wrapper offers
// (see `send_state`).
#![allow(unsafe_code)]

use std::io;
use std::mem::{MaybeUninit, size_of};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use tokio_util::sync::CancellationToken;

/// How often the delivered count is read while the tool runs (progress lines, metrics) and
/// while waiting for the last bytes to be acknowledged.
pub const POLL_TICK: Duration = Duration::from_millis(250);
/// Poll interval for the short waits before the tool starts and after it ends.
const DRAIN_POLL: Duration = Duration::from_millis(2);
/// How long the client may take to acknowledge what the tool left in the socket's send
/// queue (a few MiB at most) before the backup is given up as abandoned.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// What TCP_INFO tells about the sending side of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendState {
    /// Bytes the peer has acknowledged over the connection's life.
    pub acked: u64,
    /// Nothing written is still queued or in flight.
    pub drained: bool,
    /// The peer has closed or reset the connection.
    pub peer_gone: bool,
}

/// Reads the socket's TCP_INFO.
pub fn send_state(socket: BorrowedFd<'_>) -> io::Result<SendState> {
    let mut info = MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the buffer is a zeroed tcp_info of the length passed; the kernel writes at most
    // that many bytes and leaves newer fields it does not know at zero. nix and socket2 have
    // no TCP_INFO option.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zero is a valid value for every field, and the kernel filled the rest.
    let info = unsafe { info.assume_init() };
    Ok(SendState {
        acked: info.tcpi_bytes_acked,
        drained: info.tcpi_notsent_bytes == 0 && info.tcpi_unacked == 0,
        peer_gone: !matches!(
            info.tcpi_state,
            TCP_ESTABLISHED | TCP_FIN_WAIT1 | TCP_FIN_WAIT2
        ),
    })
}

// From the kernel's include/net/tcp_states.h; libc does not export them.
const TCP_ESTABLISHED: u8 = 1;
const TCP_FIN_WAIT1: u8 = 4;
const TCP_FIN_WAIT2: u8 = 5;

/// Waits until everything written to `socket` is acknowledged; the acknowledged count.
/// Fails when the peer leaves, after `timeout`, or on cancellation.
pub async fn drained(
    socket: BorrowedFd<'_>,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<u64> {
    let started = Instant::now();
    loop {
        let state = send_state(socket).context("reading the client socket's TCP_INFO")?;
        if state.drained {
            return Ok(state.acked);
        }
        if state.peer_gone {
            bail!("the client left with bytes still unacknowledged");
        }
        if started.elapsed() > timeout {
            bail!("the client acknowledged nothing more for {timeout:?}");
        }
        tokio::select! {
            () = tokio::time::sleep(DRAIN_POLL) => {}
            () = cancel.cancelled() => bail!("the agent is shutting down"),
        }
    }
}

/// Makes the socket's file description blocking for as long as it lives: the tool writes
/// with plain blocking writes, and the flag is shared by every descriptor of the connection,
/// the agent's own included. The agent must not touch the socket through tokio meanwhile;
/// dropping the guard makes it non-blocking again.
pub struct BlockingGuard<'a> {
    socket: BorrowedFd<'a>,
    flags: OFlag,
}

impl<'a> BlockingGuard<'a> {
    pub fn new(socket: BorrowedFd<'a>) -> Result<Self> {
        let flags = OFlag::from_bits_retain(
            fcntl(socket, FcntlArg::F_GETFL).context("reading the client socket's flags")?,
        );
        fcntl(socket, FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK))
            .context("making the client socket blocking for the backup tool")?;
        Ok(Self { socket, flags })
    }
}

impl Drop for BlockingGuard<'_> {
    fn drop(&mut self) {
        // The tool may still hold the descriptor if it was killed and not yet reaped; the
        // flag matters only to the agent's own use afterwards.
        if let Err(e) = fcntl(self.socket, FcntlArg::F_SETFL(self.flags)) {
            tracing::warn!(error = %e, "could not make the client socket non-blocking again");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;

    use super::*;

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (server, client)
    }

    /// The count is exact across a write from another descriptor of the same socket, which
    /// is how the tool writes.
    #[tokio::test]
    async fn counts_exactly_what_the_peer_acknowledged() {
        let (server, mut client) = pair();
        let cancel = CancellationToken::new();
        (&server).write_all(b"header").unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            client.read_to_end(&mut got).unwrap();
            got.len()
        });
        let before = drained(server.as_fd(), DRAIN_TIMEOUT, &cancel)
            .await
            .unwrap();
        let mut tool_end = server.try_clone().unwrap();
        let payload = vec![42u8; 3 << 20];
        tool_end.write_all(&payload).unwrap();
        drop(tool_end);
        let after = drained(server.as_fd(), DRAIN_TIMEOUT, &cancel)
            .await
            .unwrap();
        assert_eq!(after - before, payload.len() as u64);
        (&server).write_all(b"trailer").unwrap();
        drop(server);
        assert_eq!(reader.join().unwrap(), 6 + payload.len() + 7);
    }

    #[tokio::test]
    async fn a_peer_that_stops_reading_times_out_and_one_that_leaves_is_noticed() {
        let (server, client) = pair();
        server.set_nonblocking(true).unwrap();
        // Fill the peer's receive window and our send queue; the peer never reads.
        let chunk = vec![0u8; 1 << 20];
        while (&server).write(&chunk).is_ok() {}
        let cancel = CancellationToken::new();
        let err = drained(server.as_fd(), Duration::from_millis(200), &cancel)
            .await
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("acknowledged nothing"),
            "{err:#}"
        );
        assert!(!send_state(server.as_fd()).unwrap().peer_gone);

        drop(client);
        let err = drained(server.as_fd(), DRAIN_TIMEOUT, &cancel)
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("client left"), "{err:#}");
    }

    #[test]
    fn the_guard_restores_non_blocking_mode() {
        let (server, _client) = pair();
        server.set_nonblocking(true).unwrap();
        let flags = || {
            OFlag::from_bits_retain(fcntl(server.as_fd(), FcntlArg::F_GETFL).unwrap())
                .contains(OFlag::O_NONBLOCK)
        };
        {
            let _guard = BlockingGuard::new(server.as_fd()).unwrap();
            assert!(!flags());
        }
        assert!(flags());
    }
}
