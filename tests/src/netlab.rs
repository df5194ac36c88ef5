//! A network lab for tests: hosts as Linux network namespaces joined by veth pairs, loss and
//! partitions from nftables rules inside a namespace, and a UDP relay that delays, reorders and
//! drops datagrams (this machine's kernel has no netem; QUIC runs over UDP, so a relay between two
//! namespaces emulates a long, lossy link).
//!
//! Everything the lab creates lives inside namespaces it made itself, named
//! `orbitlab-PID-N-NAME`: interfaces are created directly in their namespace, nftables rules are
//! added in their namespace, and dropping the [`Lab`] deletes the namespaces (and with them every
//! interface and rule), also when the test panics. It must never touch the machine's own network
//! namespace or any interface it did not create. A lab left behind by a killed test process is
//! removed by the next lab whose process finds the owner gone.
//!
//! It needs root and the `ip` and `nft` commands (Debian: `iproute2`, `nftables`); [`Lab::new`]
//! returns `None` and prints why when they are missing, so tests skip instead of failing.

use std::collections::BinaryHeap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write as _};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsFd as _;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::Rng as _;

/// Every namespace the lab makes starts with this, then the owning process id.
const PREFIX: &str = "orbitlab-";

/// The largest datagram the relay forwards.
const MAX_DATAGRAM: usize = 65_535;

/// Socket buffers of the relay: large enough that the relay itself never drops.
const RELAY_BUFFER: usize = 16 * 1024 * 1024;

/// How often the relay's threads look at the stop flag while idle.
const POLL: Duration = Duration::from_millis(50);

/// Why lab tests cannot run here, or `None` when they can.
pub fn skip_reason() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("network namespaces need root".into());
    }
    for (tool, package) in [("ip", "iproute2"), ("nft", "nftables")] {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!("`{tool}` is missing (apt-get install {package})"));
        }
    }
    None
}

/// Runs `program args`, returning its stderr as the error when it fails.
fn run<S: AsRef<OsStr>>(program: &str, args: &[S]) -> io::Result<()> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        let args: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
        Err(io::Error::other(format!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Runs `program args` and panics with its stderr when it fails: lab set-up failing is a broken
/// machine, not a finding.
#[track_caller]
fn must<S: AsRef<OsStr>>(program: &str, args: &[S]) {
    if let Err(e) = run(program, args) {
        panic!("{e}");
    }
}

/// A set of hosts and links, removed when dropped.
#[derive(Debug)]
pub struct Lab {
    id: String,
    namespaces: Vec<String>,
    links: u8,
}

impl Lab {
    /// A new, empty lab, or `None` (with the reason printed) where labs cannot run.
    pub fn new() -> Option<Lab> {
        if let Some(reason) = skip_reason() {
            eprintln!("skipped: {reason}");
            return None;
        }
        static NEXT: AtomicU32 = AtomicU32::new(0);
        remove_orphans();
        Some(Lab {
            id: format!(
                "{PREFIX}{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ),
            namespaces: Vec::new(),
            links: 0,
        })
    }

    /// A new host: a network namespace with its loopback up.
    ///
    /// # Panics
    ///
    /// When `ip` fails.
    pub fn host(&mut self, name: &str) -> Host {
        let ns = format!("{}-{name}", self.id);
        must("ip", &["netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        must("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        Host { ns }
    }

    /// Joins `a` and `b` with a veth pair. Link number `k` (from 1) gets 10.77.k.1/24 on `a`'s
    /// side and 10.77.k.2/24 on `b`'s; the addresses are private to the two namespaces.
    ///
    /// # Panics
    ///
    /// When `ip` or `tc` fails, or after 250 links.
    pub fn link(&mut self, a: &Host, b: &Host, options: &LinkOptions) -> Link {
        self.links += 1;
        let k = self.links;
        assert!(k <= 250, "too many links");
        let ends = [
            Iface {
                host: a.clone(),
                name: format!("veth{k}a"),
                addr: Ipv4Addr::new(10, 77, k, 1),
            },
            Iface {
                host: b.clone(),
                name: format!("veth{k}b"),
                addr: Ipv4Addr::new(10, 77, k, 2),
            },
        ];
        // Created inside `a`'s namespace with its peer straight in `b`'s: the interfaces never
        // appear in the machine's own namespace.
        must(
            "ip",
            &[
                "-n",
                &a.ns,
                "link",
                "add",
                &ends[0].name,
                "type",
                "veth",
                "peer",
                "name",
                &ends[1].name,
                "netns",
                &b.ns,
            ],
        );
        let mtu = options.mtu.to_string();
        for end in &ends {
            let ns = &end.host.ns;
            let cidr = format!("{}/24", end.addr);
            must("ip", &["-n", ns, "addr", "add", &cidr, "dev", &end.name]);
            must(
                "ip",
                &["-n", ns, "link", "set", &end.name, "mtu", &mtu, "up"],
            );
            if let Some(rate) = &options.rate {
                let args = rate.tbf_args(&end.name);
                let mut full = vec!["-n".to_owned(), ns.clone()];
                full.extend(args);
                must("tc", &full);
            }
        }
        let [a, b] = ends;
        Link { a, b }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth ends (and so their peers) and its nftables rules.
        for ns in self.namespaces.drain(..).rev() {
            if let Err(e) = run("ip", &["netns", "del", &ns]) {
                eprintln!("netlab: {e}");
            }
        }
    }
}

/// Deletes namespaces of labs whose process no longer exists (a test killed before its drop).
fn remove_orphans() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run("ip", &["netns", "del", &name]);
        }
    }
}

/// How a link is built.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    /// The MTU of both ends. Default 1500, as on most real networks.
    pub mtu: u32,
    /// Shape each end's egress to this rate with a token bucket filter (`tc qdisc ... tbf`).
    pub rate: Option<Rate>,
}

impl Default for LinkOptions {
    fn default() -> Self {
        LinkOptions {
            mtu: 1500,
            rate: None,
        }
    }
}

/// A token bucket: sustained rate, burst and queueing limit.
#[derive(Debug, Clone)]
pub struct Rate {
    /// Bits per second.
    pub bits_per_sec: u64,
    /// Bucket size in bytes; at least the MTU.
    pub burst_bytes: u32,
    /// The longest a packet may wait in the queue before it is dropped.
    pub latency: Duration,
}

impl Rate {
    /// `mbit` megabits per second, a 64 KiB burst and 50 ms of queue.
    pub fn mbit(mbit: u64) -> Rate {
        Rate {
            bits_per_sec: mbit * 1_000_000,
            burst_bytes: 64 * 1024,
            latency: Duration::from_millis(50),
        }
    }

    fn tbf_args(&self, dev: &str) -> Vec<String> {
        [
            "qdisc",
            "add",
            "dev",
            dev,
            "root",
            "tbf",
            "rate",
            &format!("{}bit", self.bits_per_sec),
            "burst",
            &self.burst_bytes.to_string(),
            "latency",
            &format!("{}us", self.latency.as_micros()),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
}

/// Two ends of a veth pair.
#[derive(Debug, Clone)]
pub struct Link {
    /// The end in the first host given to [`Lab::link`].
    pub a: Iface,
    /// The end in the second host.
    pub b: Iface,
}

/// One end of a link.
#[derive(Debug, Clone)]
pub struct Iface {
    /// The host it is in.
    pub host: Host,
    /// Its interface name inside that host.
    pub name: String,
    /// Its IPv4 address.
    pub addr: Ipv4Addr,
}

impl Link {
    /// Drops `percent` % of the packets at random in each direction (nftables
    /// `numgen random mod 100 < N drop` on arrival at either end), until the returned rules are
    /// dropped or healed.
    ///
    /// # Panics
    ///
    /// When `nft` fails.
    pub fn loss(&self, percent: u8) -> LinkRules {
        LinkRules([self.a.drop_incoming(percent), self.b.drop_incoming(percent)])
    }

    /// Drops every packet in both directions: a partition, until the returned rules are dropped
    /// or [`LinkRules::heal`]ed. Packets vanish on arrival, as on a cut cable: senders see no
    /// error. Traffic on either host's loopback is unaffected.
    ///
    /// # Panics
    ///
    /// When `nft` fails.
    pub fn partition(&self) -> LinkRules {
        self.loss(100)
    }
}

/// The rules that impair both ends of a link; removed on drop.
#[derive(Debug)]
pub struct LinkRules([NftRule; 2]);

impl LinkRules {
    /// Removes the rules now: the link carries everything again.
    ///
    /// # Panics
    ///
    /// When `nft` fails.
    pub fn heal(self) {
        let [a, b] = self.0;
        a.heal();
        b.heal();
    }
}

impl Iface {
    /// Drops `percent` % of the packets arriving on this interface, at random; all of them at
    /// 100. Dropping on arrival rather than on departure keeps the sender's `sendmsg` from
    /// failing, which a real lossy network never does.
    ///
    /// # Panics
    ///
    /// When `nft` fails.
    pub fn drop_incoming(&self, percent: u8) -> NftRule {
        let dev = &self.name;
        let test = if percent >= 100 {
            String::new()
        } else {
            format!("numgen random mod 100 < {percent} ")
        };
        self.host.nft(&format!(
            "chain i {{ type filter hook input priority 0; policy accept; \
               iifname \"{dev}\" {test}drop; }}"
        ))
    }

    /// This end's address with `port`.
    pub fn socket_addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.addr, port))
    }
}

/// A host: one network namespace.
#[derive(Debug, Clone)]
pub struct Host {
    ns: String,
}

impl Host {
    /// The namespace's name.
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// The command prefix that runs a program inside this host: `ip netns exec NS`. `ip` execs
    /// the program in place, so the child's pid is the program's and signals reach it.
    pub fn prefix(&self) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), self.ns.clone()]
    }

    /// `program` as a command run inside this host.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns]).arg(program);
        cmd
    }

    /// A UDP socket bound to `addr` inside this host. A socket belongs to the namespace it was
    /// made in, whichever thread uses it later; it is made on a short-lived thread that enters
    /// the namespace, so no other thread of the test moves.
    ///
    /// # Errors
    ///
    /// When the namespace cannot be entered or the bind fails.
    pub fn bind_udp(&self, addr: SocketAddr) -> io::Result<UdpSocket> {
        let path = format!("/run/netns/{}", self.ns);
        std::thread::spawn(move || {
            let ns = File::open(&path)?;
            rustix::thread::move_into_link_name_space(
                ns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )?;
            let socket = UdpSocket::bind(addr)?;
            // As root the relay may exceed net.core.rmem_max; it must not be the one dropping.
            let _ = rustix::net::sockopt::set_socket_recv_buffer_size_force(&socket, RELAY_BUFFER);
            let _ = rustix::net::sockopt::set_socket_send_buffer_size_force(&socket, RELAY_BUFFER);
            Ok(socket)
        })
        .join()
        .expect("the namespace thread does not panic")
    }

    /// Adds a table of `chains` (nftables syntax) in this host, removed when the rule drops.
    fn nft(&self, chains: &str) -> NftRule {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let table = format!("orbitlab{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let script = format!("table inet {table} {{\n{chains}\n}}\n");
        let mut child = self
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nft runs");
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(script.as_bytes())
            .expect("nft reads its script");
        let out = child.wait_with_output().expect("nft finishes");
        assert!(
            out.status.success(),
            "nft in {} failed on\n{script}{}",
            self.ns,
            String::from_utf8_lossy(&out.stderr)
        );
        NftRule {
            host: self.clone(),
            table,
            healed: false,
        }
    }
}

/// An nftables table inside a host; deleted on drop.
#[derive(Debug)]
pub struct NftRule {
    host: Host,
    table: String,
    healed: bool,
}

impl NftRule {
    /// Deletes the rule now: the link carries traffic again.
    ///
    /// # Panics
    ///
    /// When `nft` fails.
    pub fn heal(mut self) {
        self.healed = true;
        must(
            "ip",
            &[
                "netns",
                "exec",
                &self.host.ns,
                "nft",
                "delete",
                "table",
                "inet",
                &self.table,
            ],
        );
    }
}

impl Drop for NftRule {
    fn drop(&mut self) {
        if !self.healed {
            // The namespace may be gone already; then so is the table.
            let _ = run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &self.host.ns,
                    "nft",
                    "delete",
                    "table",
                    "inet",
                    &self.table,
                ],
            );
        }
    }
}

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
