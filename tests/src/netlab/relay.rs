//! A UDP relay that emulates a long, lossy link: each datagram is held for a delay, some are held
//! longer so that later ones overtake them, some are dropped. It forwards between one client
//! endpoint and one target, on sockets it is given (bound in a lab host, or on loopback); it
//! never opens a socket of its own choosing.

use std::collections::BinaryHeap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::Rng as _;

/// The largest datagram the relay forwards.
const MAX_DATAGRAM: usize = 65_535;

/// How often the relay's threads look at the stop flag while idle.
const POLL: Duration = Duration::from_millis(50);

/// What the relay does to each datagram, in each direction.
#[derive(Debug, Clone, Default)]
pub struct Impairment {
    /// How long each datagram is held (one way).
    pub delay: Duration,
    /// A random extra hold between zero and this, per datagram.
    pub jitter: Duration,
    /// Percentage of datagrams held back an extra [`Impairment::reorder_gap`], so that later
    /// ones overtake them.
    pub reorder_percent: f64,
    /// The extra hold of a reordered datagram.
    pub reorder_gap: Duration,
    /// Percentage of datagrams dropped.
    pub loss_percent: f64,
}

/// Counts for one direction of the relay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flow {
    /// Datagrams received.
    pub received: u64,
    /// Datagrams sent on after their hold.
    pub forwarded: u64,
    /// Bytes sent on.
    pub bytes: u64,
    /// Datagrams dropped on purpose.
    pub dropped: u64,
    /// Datagrams held back to be overtaken.
    pub reordered: u64,
}

/// The relay's counts so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// From the client (whoever sent to the relay's address) to the target.
    pub to_target: Flow,
    /// From the target back to the client.
    pub to_client: Flow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToTarget,
    ToClient,
}

#[derive(Debug)]
struct Held {
    due: Instant,
    seq: u64,
    direction: Direction,
    data: Vec<u8>,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    // Earliest first out of a max-heap.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

#[derive(Debug, Default)]
struct State {
    queue: BinaryHeap<Held>,
    seq: u64,
    client: Option<SocketAddr>,
    stats: RelayStats,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the sender when something is queued, and waiters when something is forwarded.
    changed: Condvar,
    stop: AtomicBool,
    impairment: Impairment,
}

/// A UDP relay for one client endpoint: datagrams to its address go to the target after the
/// impairment's hold, and the target's answers go back the same way. Stopped on drop.
///
/// QUIC sees it as a long link: the client dials the relay's address, the target sees the relay's
/// upstream socket as its peer.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Relay {
    /// Starts relaying between clients of `listen` and `target`, sending upstream from
    /// `upstream` (both sockets bound, e.g. with [`Host::bind_udp`] in a middle host).
    ///
    /// # Errors
    ///
    /// When a socket cannot be configured.
    pub fn start(
        listen: UdpSocket,
        upstream: UdpSocket,
        target: SocketAddr,
        impairment: Impairment,
    ) -> io::Result<Relay> {
        let addr = listen.local_addr()?;
        upstream.connect(target)?;
        listen.set_read_timeout(Some(POLL))?;
        upstream.set_read_timeout(Some(POLL))?;
        let listen = Arc::new(listen);
        let upstream = Arc::new(upstream);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            impairment,
        });
        let threads = vec![
            spawn_receiver(shared.clone(), listen.clone(), Direction::ToTarget),
            spawn_receiver(shared.clone(), upstream.clone(), Direction::ToClient),
            std::thread::spawn({
                let shared = shared.clone();
                move || send_loop(&shared, &listen, &upstream)
            }),
        ];
        Ok(Relay {
            addr,
            shared,
            threads,
        })
    }

    /// The address clients dial.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The counts so far.
    pub fn stats(&self) -> RelayStats {
        self.shared.state.lock().unwrap().stats
    }

    /// Waits until `ready(stats)` holds and returns those stats, or `None` after `timeout`.
    pub fn wait_for(
        &self,
        timeout: Duration,
        mut ready: impl FnMut(&RelayStats) -> bool,
    ) -> Option<RelayStats> {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.state.lock().unwrap();
        loop {
            if ready(&state.stats) {
                return Some(state.stats);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            state = self.shared.changed.wait_timeout(state, left).unwrap().0;
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.changed.notify_all();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn spawn_receiver(
    shared: Arc<Shared>,
    socket: Arc<UdpSocket>,
    direction: Direction,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut rng = rand::thread_rng();
        let imp = &shared.impairment;
        while !shared.stop.load(Ordering::Relaxed) {
            let (len, from) = match socket.recv_from(&mut buf) {
                Ok(got) => got,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                // ICMP unreachable from a peer not listening yet, and the like: keep relaying.
                Err(_) => continue,
            };
            let now = Instant::now();
            let mut state = shared.state.lock().unwrap();
            if direction == Direction::ToTarget {
                state.client = Some(from);
            }
            let flow = match direction {
                Direction::ToTarget => &mut state.stats.to_target,
                Direction::ToClient => &mut state.stats.to_client,
            };
            flow.received += 1;
            if imp.loss_percent > 0.0 && rng.gen_bool(imp.loss_percent / 100.0) {
                flow.dropped += 1;
                drop(state);
                shared.changed.notify_all();
                continue;
            }
            let mut due = now + imp.delay;
            if !imp.jitter.is_zero() {
                due += imp.jitter.mul_f64(rng.gen::<f64>());
            }
            if imp.reorder_percent > 0.0 && rng.gen_bool(imp.reorder_percent / 100.0) {
                flow.reordered += 1;
                due += imp.reorder_gap;
            }
            let seq = state.seq;
            state.seq += 1;
            state.queue.push(Held {
                due,
                seq,
                direction,
                data: buf[..len].to_vec(),
            });
            drop(state);
            shared.changed.notify_all();
        }
    })
}

fn send_loop(shared: &Shared, listen: &UdpSocket, upstream: &UdpSocket) {
    let mut state = shared.state.lock().unwrap();
    while !shared.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let wait = match state.queue.peek() {
            Some(head) if head.due <= now => None,
            Some(head) => Some((head.due - now).min(POLL)),
            None => Some(POLL),
        };
        if let Some(wait) = wait {
            state = shared.changed.wait_timeout(state, wait).unwrap().0;
            continue;
        }
        let held = state.queue.pop().expect("peeked");
        let client = state.client;
        drop(state);
        let sent = match held.direction {
            Direction::ToTarget => upstream.send(&held.data).is_ok(),
            Direction::ToClient => client.is_some_and(|c| listen.send_to(&held.data, c).is_ok()),
        };
        state = shared.state.lock().unwrap();
        if sent {
            let flow = match held.direction {
                Direction::ToTarget => &mut state.stats.to_target,
                Direction::ToClient => &mut state.stats.to_client,
            };
            flow.forwarded += 1;
            flow.bytes += held.data.len() as u64;
            shared.changed.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_datagrams_leave_earliest_first() {
        let t = Instant::now();
        let mut heap = BinaryHeap::new();
        for (ms, seq) in [(30, 0), (10, 1), (20, 2), (10, 3)] {
            heap.push(Held {
                due: t + Duration::from_millis(ms),
                seq,
                direction: Direction::ToTarget,
                data: Vec::new(),
            });
        }
        let order: Vec<u64> = std::iter::from_fn(|| heap.pop().map(|h| h.seq)).collect();
        assert_eq!(order, [1, 3, 2, 0]);
    }

    #[test]
    fn the_relay_delays_and_counts_on_loopback() {
        let target = UdpSocket::bind("127.0.0.1:0").unwrap();
        let relay = Relay::start(
            UdpSocket::bind("127.0.0.1:0").unwrap(),
            UdpSocket::bind("127.0.0.1:0").unwrap(),
            target.local_addr().unwrap(),
            Impairment {
                delay: Duration::from_millis(30),
                ..Impairment::default()
            },
        )
        .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        target
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let sent = Instant::now();
        client.send_to(b"ping", relay.addr()).unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = target.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping");
        target.send_to(b"pong", from).unwrap();
        let (n, from) = client.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&b"pong"[..], relay.addr()));
        assert!(
            sent.elapsed() >= Duration::from_millis(60),
            "{:?}",
            sent.elapsed()
        );
        let stats = relay
            .wait_for(Duration::from_secs(10), |s| s.to_client.forwarded == 1)
            .unwrap();
        assert_eq!(stats.to_target.bytes, 4);
        assert_eq!(stats.to_client.bytes, 4);
    }

    #[test]
    fn the_relay_drops_and_reorders_as_told() {
        let target = UdpSocket::bind("127.0.0.1:0").unwrap();
        let relay = Relay::start(
            UdpSocket::bind("127.0.0.1:0").unwrap(),
            UdpSocket::bind("127.0.0.1:0").unwrap(),
            target.local_addr().unwrap(),
            Impairment {
                loss_percent: 100.0,
                ..Impairment::default()
            },
        )
        .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..10 {
            client.send_to(b"lost", relay.addr()).unwrap();
        }
        let stats = relay
            .wait_for(Duration::from_secs(10), |s| s.to_target.received == 10)
            .unwrap();
        assert_eq!(
            (stats.to_target.dropped, stats.to_target.forwarded),
            (10, 0)
        );

        // Half the datagrams held back 20 ms: all arrive, not in the order sent.
        let relay = Relay::start(
            UdpSocket::bind("127.0.0.1:0").unwrap(),
            UdpSocket::bind("127.0.0.1:0").unwrap(),
            target.local_addr().unwrap(),
            Impairment {
                reorder_percent: 50.0,
                reorder_gap: Duration::from_millis(20),
                ..Impairment::default()
            },
        )
        .unwrap();
        for i in 0..200u8 {
            client.send_to(&[i], relay.addr()).unwrap();
        }
        target
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut order = Vec::new();
        let mut buf = [0u8; 16];
        while order.len() < 200 {
            let (n, _) = target.recv_from(&mut buf).unwrap();
            assert_eq!(n, 1);
            order.push(buf[0]);
        }
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..200u8).collect::<Vec<_>>(), "lost or duplicated");
        assert_ne!(order, sorted, "nothing was reordered");
        let reordered = relay.stats().to_target.reordered;
        assert!((50..=150).contains(&reordered), "{reordered} of 200 held");
    }
}
