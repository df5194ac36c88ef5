//! systemd's readiness protocol, without libsystemd: datagrams such as `READY=1` sent to the
//! socket named by `$NOTIFY_SOCKET` (a path, or an abstract name written with a leading `@`), and
//! watchdog pings at half of `$WATCHDOG_USEC`.
//!
//! A ping is sent only after the star has proved it serves: it completes a QUIC handshake with
//! itself, through its own UDP socket, accept loop and TLS configuration (see
//! [`Star::self_check`]). A star whose runtime is wedged, whose endpoint died or whose accept
//! loop stopped therefore stops pinging, and systemd restarts it after `WatchdogSec`.
//!
//! Without `$NOTIFY_SOCKET` every call here does nothing: the same binary runs under systemd and
//! in a terminal.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use tracing::{debug, warn};

use crate::Star;

/// Sends notifications to systemd's socket, if there is one.
#[derive(Debug, Default)]
pub struct Notifier {
    socket: Option<String>,
}

impl Notifier {
    /// The notifier for `$NOTIFY_SOCKET`; one that does nothing when it is unset or empty.
    pub fn from_env() -> Notifier {
        Notifier {
            socket: std::env::var("NOTIFY_SOCKET")
                .ok()
                .filter(|s| !s.is_empty()),
        }
    }

    /// Sends `state` (for example `READY=1`) as one datagram.
    ///
    /// # Errors
    ///
    /// When the socket cannot be reached.
    pub fn notify(&self, state: &str) -> io::Result<()> {
        let Some(socket) = &self.socket else {
            return Ok(());
        };
        let sock = UnixDatagram::unbound()?;
        match socket.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt as _;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
                sock.send_to_addr(state.as_bytes(), &addr)?;
            }
            None => {
                sock.send_to(state.as_bytes(), socket)?;
            }
        }
        Ok(())
    }
}

/// The watchdog interval systemd asked for, if it asked this process: `$WATCHDOG_USEC`, when
/// `$WATCHDOG_PID` is unset or names this process.
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Pings systemd's watchdog at half the interval it asked for, each time after the star passed
/// its self-check. Never returns; without a watchdog it just waits forever.
///
/// Cancel-safe: it holds nothing between pings.
pub async fn watchdog(star: &Star, notifier: &Notifier) {
    let Some(interval) = watchdog_interval().filter(|_| notifier.socket.is_some()) else {
        return std::future::pending().await;
    };
    let every = interval / 2;
    debug!("watchdog: pinging every {every:?} after a self-check");
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match tokio::time::timeout(every, star.self_check()).await {
            Ok(Ok(())) => {
                if let Err(e) = notifier.notify("WATCHDOG=1") {
                    warn!("cannot ping systemd's watchdog: {e}");
                }
            }
            Ok(Err(e)) => warn!("self-check failed, not pinging the watchdog: {e}"),
            Err(_) => warn!("self-check took longer than {every:?}, not pinging the watchdog"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reaches_a_path_socket_and_an_abstract_one() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier {
            socket: Some(path.display().to_string()),
        };
        notifier.notify("READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("orbit-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        let notifier = Notifier {
            socket: Some(format!("@{name}")),
        };
        notifier.notify("STOPPING=1").unwrap();
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn without_a_socket_nothing_is_sent_and_nothing_fails() {
        assert!(Notifier::default().notify("READY=1").is_ok());
    }
}
