//! systemd's readiness protocol through the `sd-notify` crate: `READY=1`, `RELOADING=1` with
//! `MONOTONIC_USEC`, `STOPPING=1` and watchdog pings at half of `$WATCHDOG_USEC`, sent to the
//! socket `$NOTIFY_SOCKET` names.
//!
//! A ping is sent only after the star has proved it serves: it completes a QUIC handshake with
//! itself, through its own UDP socket, accept loop and TLS configuration (see
//! [`Star::self_check`]). A star whose runtime is wedged, whose endpoint died or whose accept
//! loop stopped therefore stops pinging, and systemd restarts it after `WatchdogSec`.
//!
//! Without `$NOTIFY_SOCKET` every call here does nothing: the same binary runs under systemd and
//! in a terminal. `sd-notify` 0.5 reaches a socket by its path only; an abstract socket
//! (`@name`, which sd_notify(3) allows and some container managers use) is reached here with the
//! same message.

use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::net::UnixDatagram;

use sd_notify::NotifyState;
use tracing::{debug, warn};

use crate::Star;

const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Tells systemd how the star is doing, if systemd is listening.
#[derive(Debug, Default)]
pub struct Notifier {
    listening: bool,
}

impl Notifier {
    /// The notifier for `$NOTIFY_SOCKET`; one that does nothing when it is unset or empty.
    pub fn from_env() -> Notifier {
        Notifier {
            listening: std::env::var_os(NOTIFY_SOCKET).is_some_and(|s| !s.is_empty()),
        }
    }

    /// The star serves: bound, keys loaded, metrics up; or a reload has ended.
    ///
    /// # Errors
    ///
    /// When the socket cannot be reached.
    pub fn ready(&self) -> io::Result<()> {
        self.send(&[NotifyState::Ready])
    }

    /// The star rereads its configuration and keys. `MONOTONIC_USEC` goes with it, as
    /// `Type=notify-reload` requires.
    ///
    /// # Errors
    ///
    /// When the clock or the socket cannot be read or reached.
    pub fn reloading(&self) -> io::Result<()> {
        if !self.listening {
            return Ok(());
        }
        self.send(&[NotifyState::Reloading, NotifyState::monotonic_usec_now()?])
    }

    /// The star is shutting down.
    ///
    /// # Errors
    ///
    /// When the socket cannot be reached.
    pub fn stopping(&self) -> io::Result<()> {
        self.send(&[NotifyState::Stopping])
    }

    fn send(&self, states: &[NotifyState<'_>]) -> io::Result<()> {
        if !self.listening {
            return Ok(());
        }
        match std::env::var_os(NOTIFY_SOCKET) {
            Some(socket) if socket.as_bytes().starts_with(b"@") => {
                send_abstract(&socket.as_bytes()[1..], states)
            }
            _ => sd_notify::notify(states),
        }
    }
}

/// Sends `states` as one datagram to the abstract socket `name`, formatted as `sd-notify` does:
/// one `KEY=VALUE` line each.
fn send_abstract(name: &[u8], states: &[NotifyState<'_>]) -> io::Result<()> {
    use std::os::linux::net::SocketAddrExt as _;
    let message: String = states.iter().map(|s| format!("{s}\n")).collect();
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    UnixDatagram::unbound()?.send_to_addr(message.as_bytes(), &addr)?;
    Ok(())
}

/// Pings systemd's watchdog at half the interval it asked for (`$WATCHDOG_USEC`, when
/// `$WATCHDOG_PID` is unset or names this process), each time after the star passed its
/// self-check. Never returns; without a watchdog it just waits forever.
///
/// Cancel-safe: it holds nothing between pings.
pub async fn watchdog(star: &Star, notifier: &Notifier) {
    let Some(interval) = sd_notify::watchdog_enabled().filter(|_| notifier.listening) else {
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
                if let Err(e) = notifier.send(&[NotifyState::Watchdog]) {
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
    fn reaches_an_abstract_socket_with_one_line_per_state() {
        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("orbit-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        let states = [NotifyState::Reloading, NotifyState::MonotonicUsec(42)];
        send_abstract(name.as_bytes(), &states).unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"RELOADING=1\nMONOTONIC_USEC=42\n");
    }

    #[test]
    fn without_a_socket_nothing_is_sent_and_nothing_fails() {
        let quiet = Notifier::default();
        assert!(quiet.ready().is_ok());
        assert!(quiet.reloading().is_ok());
        assert!(quiet.stopping().is_ok());
    }
}
