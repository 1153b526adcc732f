//! Moves the backup tool's output to a client inside the kernel: splice(2) from the tool's
//! stdout pipe into the socket, so the stream never passes through the agent's memory.
//!
//! Measured on the loopback bench (1 GiB sysbench, MariaDB 10.11): a read/write relay through
//! a 1 MiB buffer cost the sidecar 0.57 s of CPU per GiB and its 64 KiB pipe made the tool and
//! the agent take turns; see the commit that introduced this module for the numbers.

use std::os::fd::BorrowedFd;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, SpliceFFlags, fcntl, splice};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use tokio_util::sync::CancellationToken;

/// The pipe's capacity, and the most one splice call moves. 1 MiB is the largest an
/// unprivileged process may ask for (`/proc/sys/fs/pipe-max-size`); the tool writes that much
/// before it has to wait for the agent.
pub const PIPE_LEN: usize = 1 << 20;
/// How long a wait for the pipe or the socket lasts before cancellation is checked again.
const POLL_TICK: Duration = Duration::from_millis(100);

/// Grows a pipe to [`PIPE_LEN`]. Best effort: a smaller pipe is only slower, so a refusal
/// (a lowered pipe-max-size, a user over its pipe quota) is logged, not fatal.
pub fn enlarge_pipe(pipe: BorrowedFd<'_>) {
    if let Err(e) = fcntl(pipe, FcntlArg::F_SETPIPE_SZ(PIPE_LEN as i32)) {
        tracing::debug!(error = %e, "the backup tool's pipe keeps its default size");
    }
}

/// Splices everything from `pipe` to `socket` until the pipe's writer closes it, calling
/// `on_bytes` after every move. Blocking: run it on a blocking thread. Either descriptor may
/// be non-blocking; a socket error (the client is gone) ends it with an error.
pub fn splice_to_end(
    pipe: BorrowedFd<'_>,
    socket: BorrowedFd<'_>,
    cancel: &CancellationToken,
    mut on_bytes: impl FnMut(u64),
) -> Result<()> {
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    loop {
        if cancel.is_cancelled() {
            bail!("the agent is shutting down");
        }
        match splice(pipe, None, socket, None, PIPE_LEN, flags) {
            Ok(0) => return Ok(()),
            Ok(n) => on_bytes(n as u64),
            Err(Errno::EINTR) => {}
            // Either side may be the one not ready: wait for both, in turn. poll is
            // level-triggered, so a side that is already ready returns at once.
            Err(Errno::EAGAIN) => {
                wait_for(pipe, PollFlags::POLLIN, cancel)?;
                wait_for(socket, PollFlags::POLLOUT, cancel)?;
            }
            Err(e) => return Err(e).context("sending to the client"),
        }
    }
}

/// Returns once `fd` reports `events`, or a hang-up or error (which the next splice reports).
fn wait_for(fd: BorrowedFd<'_>, events: PollFlags, cancel: &CancellationToken) -> Result<()> {
    let tick = PollTimeout::try_from(POLL_TICK).expect("the tick fits a poll timeout");
    loop {
        if cancel.is_cancelled() {
            bail!("the agent is shutting down");
        }
        let mut fds = [PollFd::new(fd, events)];
        match poll(&mut fds, tick) {
            Ok(0) | Err(Errno::EINTR) => {}
            Ok(_) => return Ok(()),
            Err(e) => return Err(e).context("waiting for the backup stream"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;

    use super::*;

    /// Splices a pipe into a real loopback socket whose reader is slower than the writer, so
    /// both sides run dry and fill up along the way.
    #[test]
    fn splices_everything_in_order_through_back_pressure() {
        let data: Vec<u8> = (0..5 * PIPE_LEN + 12345).map(|i| (i % 253) as u8).collect();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let (reader, mut writer) = std::io::pipe().unwrap();
        enlarge_pipe(reader.as_fd());

        let expected = data.clone();
        let producer = std::thread::spawn(move || {
            for piece in data.chunks(100_000) {
                writer.write_all(piece).unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        let consumer = std::thread::spawn(move || {
            let mut client = client;
            let mut got = Vec::new();
            let mut buf = [0u8; 64 * 1024];
            loop {
                let n = client.read(&mut buf).unwrap();
                if n == 0 {
                    return got;
                }
                got.extend_from_slice(&buf[..n]);
                std::thread::sleep(Duration::from_micros(200));
            }
        });
        let mut moved = 0;
        splice_to_end(
            reader.as_fd(),
            server.as_fd(),
            &CancellationToken::new(),
            |n| moved += n,
        )
        .unwrap();
        producer.join().unwrap();
        drop(server);
        let got = consumer.join().unwrap();
        assert_eq!(moved, expected.len() as u64);
        assert!(got == expected, "the spliced bytes differ");
    }

    #[test]
    fn a_departed_client_is_an_error_and_cancellation_ends_a_wait() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        drop(client);
        let (reader, mut writer) = std::io::pipe().unwrap();
        let feeder = std::thread::spawn(move || {
            let chunk = vec![7u8; 64 * 1024];
            // Ends when the reader side is closed below.
            while writer.write_all(&chunk).is_ok() {}
        });
        let err = splice_to_end(
            reader.as_fd(),
            server.as_fd(),
            &CancellationToken::new(),
            |_| {},
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("sending to the client"),
            "{err:#}"
        );
        drop(reader);
        feeder.join().unwrap();

        // Nothing ever arrives in the pipe: only cancellation ends the wait.
        let (idle, _writer) = std::io::pipe().unwrap();
        let cancel = CancellationToken::new();
        let canceller = {
            let cancel = cancel.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(150));
                cancel.cancel();
            })
        };
        let err = splice_to_end(idle.as_fd(), server.as_fd(), &cancel, |_| {}).unwrap_err();
        assert!(format!("{err:#}").contains("shutting down"), "{err:#}");
        canceller.join().unwrap();
    }
}
