//! Replication over bad networks, for real: the two stars are real `orbit-star` processes in
//! their own network namespaces, and the path between them runs through a third namespace where a
//! UDP relay holds, reorders (and can drop) datagrams; loss and partitions are nftables rules on
//! the source host's link. `orbitctl` runs in the destination's namespace and reaches its star
//! over that namespace's loopback, so the control stream is never impaired, only the data path.
//!
//! ```text
//!   host "a" (star-a, source)  veth1a ==== veth1b  host "m" (relay)  veth2a ==== veth2b  host "b" (star-b, orbitctl)
//!        10.77.1.1:STAR_PORT                10.77.1.2   10.77.2.1:relay         10.77.2.2:STAR_PORT
//! ```
//!
//! Needs root and the `ip`, `tc` and `nft` commands: without them each test prints why and skips,
//! except under CI, where it fails instead (`orbit_tests::skip_or_fail`).

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use orbit_tests::netlab::{Impairment, Lab, Link, LinkOptions, Rate, Relay};
use orbit_tests::process::{orbitctl, orbitctl_prefixed, Output, StarProcess};
use orbit_tests::{part_files, random_file, wire};

/// The port each star listens on inside its own namespace. A fixed port is safe here: nothing
/// else lives in a namespace made for one test, and the grid must know the address before the
/// star starts.
const STAR_PORT: u16 = 7401;

/// Longest a whole replication may take before the test fails; never reached when things work.
const REPLICATION_TIMEOUT: Duration = Duration::from_secs(100);

const MIB: usize = 1024 * 1024;

/// Two star processes in two namespaces, with a relay in a third between them.
///
/// Fields drop in order: the stars stop before the relay, and the namespaces go last but one.
struct Net {
    a: StarProcess,
    b: StarProcess,
    relay: Relay,
    /// The source host's link to the relay: loss and partitions go here.
    a_link: Link,
    b_prefix: Vec<String>,
    _lab: Lab,
    grid: PathBuf,
    src_root: PathBuf,
    dst_root: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Net {
    /// The lab, or `None` where it cannot run here and the test may skip (the reason is printed;
    /// under CI this panics instead, see `Lab::new`).
    fn new(impairment: Impairment, options: &LinkOptions) -> Option<Net> {
        let mut lab = Lab::new()?;
        let host_a = lab.host("a");
        let host_m = lab.host("m");
        let host_b = lab.host("b");
        let am = lab.link(&host_a, &host_m, options);
        let mb = lab.link(&host_m, &host_b, options);

        let star_a_addr = am.a.socket_addr(STAR_PORT);
        let relay_upstream = am.b.socket_addr(0);
        let relay = Relay::start(
            host_m.bind_udp(mb.a.socket_addr(0)).unwrap(),
            host_m.bind_udp(relay_upstream).unwrap(),
            star_a_addr,
            impairment,
        )
        .unwrap();

        let tmp = tempfile::tempdir().unwrap();
        let grid = tmp.path().join("grid");
        let src_root = tmp.path().join("src");
        let dst_root = tmp.path().join("dst");
        std::fs::create_dir_all(&src_root).unwrap();
        std::fs::create_dir_all(&dst_root).unwrap();
        // The grid knows star-a by the relay's address: that is where star-b dials it.
        let init = orbitctl(&[
            "init",
            &wire(&grid),
            "--star",
            &format!("star-a={}", relay.addr()),
            "--star",
            &format!("star-b={}", mb.b.socket_addr(STAR_PORT)),
        ]);
        assert_eq!(init.code, Some(0), "{}{}", init.stdout, init.stderr);

        let start = |host: &orbit_tests::netlab::Host, name: &str, root: &Path, listen| {
            let config = grid.join(format!("stars/{name}/star.toml"));
            let listen = format!("{listen}");
            StarProcess::start_prefixed(
                &host.prefix(),
                &[
                    "--config",
                    &wire(&config),
                    "--allow",
                    &wire(root),
                    "--listen",
                    &listen,
                ],
                &[],
            )
        };
        let a = start(&host_a, "star-a", &src_root, star_a_addr);
        let b = start(&host_b, "star-b", &dst_root, mb.b.socket_addr(STAR_PORT));
        Some(Net {
            a,
            b,
            relay,
            a_link: am,
            b_prefix: host_b.prefix(),
            _lab: lab,
            grid,
            src_root,
            dst_root,
            _tmp: tmp,
        })
    }

    /// `orbitctl --grid G replicate star-a:SRC star-b:DST --json EXTRA...`, run in star-b's
    /// host on a thread; the result arrives on the returned channel.
    fn replicate(&self, src: &Path, dst: &Path, extra: &[&str]) -> mpsc::Receiver<Output> {
        let mut args: Vec<String> = vec![
            "--grid".into(),
            wire(&self.grid),
            "replicate".into(),
            format!("star-a:{}", wire(src)),
            format!("star-b:{}", wire(dst)),
            "--json".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let prefix = self.b_prefix.clone();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let _ = tx.send(orbitctl_prefixed(&prefix, &args));
        });
        rx
    }

    /// Both stars' logs so far, for a failure message.
    fn logs(&self) -> String {
        format!(
            "star-a:\n{}\nstar-b:\n{}",
            self.a.drain_lines().join("\n"),
            self.b.drain_lines().join("\n")
        )
    }
}

/// Waits for `orbitctl`'s result, failing the test after [`REPLICATION_TIMEOUT`].
fn finish(net: &Net, rx: &mpsc::Receiver<Output>) -> (Output, serde_json::Value) {
    let out = rx
        .recv_timeout(REPLICATION_TIMEOUT)
        .unwrap_or_else(|_| panic!("orbitctl did not finish\n{}", net.logs()));
    // NDJSON: progress events, then the result on the last line.
    let last = out.stdout.trim().lines().last().unwrap_or_default();
    let json = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("no JSON result ({e}): {out:?}\n{}", net.logs()));
    (out, json)
}

/// Asserts a successful, verified replication and returns its rate in MiB/s as orbitctl
/// measured it.
#[track_caller]
fn assert_replicated(
    net: &Net,
    out: &Output,
    json: &serde_json::Value,
    src: &Path,
    dst: &Path,
) -> f64 {
    assert_eq!(out.code, Some(0), "{out:?}\n{}", net.logs());
    assert_eq!(json["ok"], true, "{json}");
    let size = std::fs::metadata(src).unwrap().len();
    assert_eq!(json["bytes"], size, "{json}");
    assert!(
        std::fs::read(dst).unwrap() == std::fs::read(src).unwrap(),
        "the bytes at the destination differ from the source"
    );
    assert!(part_files(dst.parent().unwrap()).is_empty());
    size as f64 / MIB as f64 / json["seconds"].as_f64().expect("seconds")
}

#[test]
fn a_long_lossy_reordering_link_still_delivers_64_mib_intact() {
    // 20 ms each way through the relay (a 40 ms round trip), 2% of datagrams held 5 ms so that
    // later ones overtake them, and 2% random loss each way on the link between the source and the relay (nftables).
    // Ordinary 1,500-byte packets. With quinn's default congestion control (Cubic) this link gave
    // 0.21 MiB/s and 64 MiB would have taken five minutes (measured); the stars use BBR, which
    // does not read random loss as congestion.
    let impairment = Impairment {
        delay: Duration::from_millis(20),
        reorder_percent: 2.0,
        reorder_gap: Duration::from_millis(5),
        ..Impairment::default()
    };
    let options = LinkOptions {
        mtu: 1500,
        ..LinkOptions::default()
    };
    let Some(net) = Net::new(impairment, &options) else {
        return;
    };
    let _loss = net.a_link.loss(2);
    let src = net.src_root.join("big.bin");
    let dst = net.dst_root.join("copy/big.bin");
    random_file(&src, 64 * MIB);

    let started = Instant::now();
    let rx = net.replicate(&src, &dst, &[]);
    let (out, json) = finish(&net, &rx);
    let rate = assert_replicated(&net, &out, &json, &src, &dst);
    let stats = net.relay.stats();
    eprintln!(
        "64 MiB, 40 ms RTT, 2% loss each way, 2% reordered: {:.1} s, {rate:.2} MiB/s; {stats:?}",
        started.elapsed().as_secs_f64()
    );
    // The impairment really happened: datagrams were overtaken in both directions, and the
    // losses cost retransmissions (the source sent more through the relay than the file holds).
    assert!(
        stats.to_client.reordered > 0 && stats.to_target.reordered > 0,
        "{stats:?}"
    );
    assert!(
        stats.to_client.bytes > 64 * MIB as u64 * 101 / 100,
        "under 1% overhead over a 2% lossy link: was the loss rule in place? {stats:?}"
    );
}

/// A link that takes a few seconds for [`PARTITION_FILE`] bytes, so that a partition can start
/// while the transfer is well under way: 100 Mbit/s, 5 ms each way.
fn shaped() -> (Impairment, LinkOptions) {
    (
        Impairment {
            delay: Duration::from_millis(5),
            ..Impairment::default()
        },
        LinkOptions {
            rate: Some(Rate::mbit(100)),
            ..LinkOptions::default()
        },
    )
}

/// The file the partition tests send: about 2.5 s at 100 Mbit/s.
const PARTITION_FILE: usize = 32 * MIB;

/// How much of it has crossed the relay when the partition starts.
const PARTITION_AFTER: u64 = 4 * MIB as u64;

/// Waits until the relay has carried `bytes` of the file towards the destination, failing at
/// once if `orbitctl` finishes first.
fn wait_for_bytes(net: &Net, rx: &mpsc::Receiver<Output>, bytes: u64) {
    let deadline = Instant::now() + REPLICATION_TIMEOUT;
    while Instant::now() < deadline {
        let slice = Duration::from_millis(250);
        if net
            .relay
            .wait_for(slice, |s| s.to_client.bytes >= bytes)
            .is_some()
        {
            return;
        }
        if let Ok(out) = rx.try_recv() {
            panic!("orbitctl finished before {bytes} bytes crossed: {out:?}");
        }
    }
    panic!("the transfer never reached {bytes} bytes\n{}", net.logs());
}

#[test]
fn a_three_second_partition_mid_transfer_heals_and_the_copy_completes() {
    let (impairment, options) = shaped();
    let Some(net) = Net::new(impairment, &options) else {
        return;
    };
    let src = net.src_root.join("f.bin");
    let dst = net.dst_root.join("f.bin");
    random_file(&src, PARTITION_FILE);

    let started = Instant::now();
    let rx = net.replicate(&src, &dst, &[]);
    wait_for_bytes(&net, &rx, PARTITION_AFTER);
    let partition = net.a_link.partition();
    let cut = net.relay.stats();
    assert!(
        cut.to_client.bytes < PARTITION_FILE as u64 && !dst.exists(),
        "the transfer was over before the partition: {cut:?}"
    );
    // The partition is the scenario: it lasts three seconds whatever happens meanwhile.
    std::thread::sleep(Duration::from_secs(1));
    let during = net.relay.stats();
    std::thread::sleep(Duration::from_secs(2));
    let end = net.relay.stats();
    partition.heal();
    assert_eq!(
        during.to_client.received, end.to_client.received,
        "datagrams from the source crossed the partition"
    );
    assert!(
        rx.try_recv().is_err(),
        "orbitctl finished during the partition"
    );

    let (out, json) = finish(&net, &rx);
    let rate = assert_replicated(&net, &out, &json, &src, &dst);
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_secs(3), "{elapsed:?}");
    eprintln!(
        "32 MiB with a 3 s partition after {} MiB: {:.1} s, {rate:.2} MiB/s overall; {json}",
        cut.to_client.bytes / MIB as u64,
        elapsed.as_secs_f64()
    );
}

#[test]
fn a_partition_longer_than_the_deadline_fails_with_deadline_exceeded_and_leaves_nothing() {
    let (impairment, options) = shaped();
    let Some(net) = Net::new(impairment, &options) else {
        return;
    };
    let src = net.src_root.join("f.bin");
    let dst = net.dst_root.join("f.bin");
    random_file(&src, PARTITION_FILE);

    let started = Instant::now();
    let rx = net.replicate(&src, &dst, &["--timeout", "3"]);
    wait_for_bytes(&net, &rx, PARTITION_AFTER);
    // Held until orbitctl has given up, so it outlasts the deadline whatever the deadline is.
    let partition = net.a_link.partition();
    let (out, json) = finish(&net, &rx);
    let elapsed = started.elapsed();
    // A deadline that passed may not pass next time: exit code 4, "try again later".
    assert_eq!(out.code, Some(4), "{out:?}\n{}", net.logs());
    assert_eq!(json["ok"], false, "{json}");
    assert_eq!(json["code"], "DeadlineExceeded", "{json}");
    assert!(
        elapsed < Duration::from_secs(3 + 10),
        "a 3 s deadline took {elapsed:?}"
    );
    // The destination is clean at once: no target, no temporary file.
    assert!(!dst.exists(), "a target was published");
    assert_eq!(part_files(&net.dst_root), Vec::<PathBuf>::new());
    partition.heal();
    eprintln!(
        "deadline 3 s, partition after {} MiB: failed after {:.1} s with {json}",
        PARTITION_AFTER / MIB as u64,
        elapsed.as_secs_f64()
    );
}
