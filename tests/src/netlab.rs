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
//! It needs root and the `ip`, `tc` and `nft` commands (Debian: `iproute2`, `nftables`). Where
//! they are missing, [`Lab::new`] returns `None` after [`crate::skip_or_fail`]: outside CI the test
//! skips, saying why; under CI it fails.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write as _};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsFd as _;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

mod relay;

pub use relay::{Flow, Impairment, Relay, RelayStats};

/// Every namespace the lab makes starts with this, then the owning process id.
const PREFIX: &str = "orbitlab-";

/// Socket buffers of sockets made by [`Host::bind_udp`], for the relay: large enough that the relay itself never drops.
const RELAY_BUFFER: usize = 16 * 1024 * 1024;

/// Why lab tests cannot run here, or `None` when they can.
pub fn skip_reason() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("network namespaces need root".into());
    }
    for (tool, package) in [("ip", "iproute2"), ("tc", "iproute2"), ("nft", "nftables")] {
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
    /// A new, empty lab, or `None` where labs cannot run here and the test may skip (see
    /// [`crate::skip_or_fail`]).
    ///
    /// # Panics
    ///
    /// Under CI, where labs cannot run.
    #[track_caller]
    pub fn new() -> Option<Lab> {
        if let Some(reason) = skip_reason() {
            crate::skip_or_fail(
                "root and the `ip`, `tc` and `nft` commands to create network namespaces",
                reason,
            );
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
