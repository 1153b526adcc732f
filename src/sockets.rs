//! TCP settings for both ends of port 3307, so that a peer that vanished (a node lost, a
//! network cut) is noticed instead of holding a backup slot or a clone forever.
//!
//! Keepalive probes an idle connection; TCP_USER_TIMEOUT bounds how long written data may
//! stay unacknowledged. Neither helps against a peer that is there and merely stops reading
//! (its kernel keeps acknowledging window probes): the stall timeouts cover that.

use std::os::fd::AsFd;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::socket::{setsockopt, sockopt};

/// Idle time before the first keepalive probe.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// Time between keepalive probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Probes without an answer before the connection is dropped.
pub const KEEPALIVE_PROBES: u32 = 3;
/// How long written data may stay unacknowledged before the connection is dropped.
pub const USER_TIMEOUT: Duration = Duration::from_secs(60);

/// Applies the settings above to a connected TCP socket.
pub fn tune(socket: &impl AsFd) -> Result<()> {
    let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
    let millis = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
    setsockopt(socket, sockopt::KeepAlive, &true)
        .and_then(|()| setsockopt(socket, sockopt::TcpKeepIdle, &secs(KEEPALIVE_IDLE)))
        .and_then(|()| setsockopt(socket, sockopt::TcpKeepInterval, &secs(KEEPALIVE_INTERVAL)))
        .and_then(|()| setsockopt(socket, sockopt::TcpKeepCount, &KEEPALIVE_PROBES))
        .and_then(|()| setsockopt(socket, sockopt::TcpUserTimeout, &millis(USER_TIMEOUT)))
        .context("setting TCP keepalive and user timeout")
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::getsockopt;

    #[test]
    fn settings_reach_the_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        tune(&client).unwrap();
        assert!(getsockopt(&client, sockopt::KeepAlive).unwrap());
        assert_eq!(getsockopt(&client, sockopt::TcpKeepIdle).unwrap(), 30);
        assert_eq!(
            getsockopt(&client, sockopt::TcpUserTimeout).unwrap(),
            60_000
        );
    }
}
