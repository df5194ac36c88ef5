//! Hostile peers, round 2 (issue 16): a peer with a real certificate of the grid that grants no
//! credit, sends one byte per packet, writes escape sequences into its paths, floods the star
//! with handshakes or its metrics listener with connections. Each case checks that an honest
//! peer is still served and that the star holds only bounded resources meanwhile.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use orbit_tests::hostile::{self, Credit, Hostile};
use orbit_tests::process::StarProcess;
use orbit_tests::*;
use orbit_wire::{ErrorCode, MAX_CONTROL_FRAME};

/// A fault here shows as a hang: every wait is bounded well under [`STEP_TIMEOUT`].
const BOUND: Duration = Duration::from_secs(20);

async fn bounded<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {BOUND:?}"))
}

/// A star-a with one read slot serving `size` random bytes as f.bin; returns it, its root and
/// the file's wire path.
async fn one_slot_star(
    grid: &Grid,
    size: usize,
    write_timeout: Duration,
) -> (orbit_agent::Star, tempfile::TempDir, String) {
    let src = tempfile::tempdir().unwrap();
    random_file(&src.path().join("f.bin"), size);
    let mut config = grid.star_config("star-a", &[src.path()]);
    config.limits.max_transfers = 1;
    config.limits.write_timeout = write_timeout;
    let a = orbit_agent::Star::spawn(config).await.unwrap();
    let path = wire(&src.path().join("f.bin"));
    (a, src, path)
}

/// Star-b reads f.bin from star-a with a valid token and gets every byte.
async fn honest_read(grid: &Grid, a: &orbit_agent::Star, path: &str) -> ReadOutcome {
    let client = grid.star_client("star-b");
    let conn = client.connect(a.local_addr(), "star-a").await.unwrap();
    let request = read_request(path, grid.token("star-a", "star-b", path));
    bounded("the honest read", client.read(&conn, &request))
        .await
        .unwrap()
}

/// Issue 16.1: read requests without a valid token, from a peer that takes one byte of each
/// refusal and no more, must not take the read slots: the refusal comes before any slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_valid_token_take_no_read_slot() {
    let grid = Grid::new();
    let (a, src, path) = one_slot_star(&grid, 100_000, Duration::from_secs(30)).await;
    let x = Hostile::star(&grid, "star-x", Credit::one_byte());
    let conn = x.connect(a.local_addr(), "star-a").await.unwrap();
    let mut held = Vec::new();
    for _ in 0..4 {
        let request = read_request(&path, "not-a-token".into());
        let mut send = hostile::send_raw(&conn, &hostile::frame(&request))
            .await
            .unwrap();
        send.finish().unwrap();
        // The star answers (one byte of its refusal gets through): the request was handled.
        held.push((send, hostile::answer(&conn).await.unwrap()));
    }
    let outcome = honest_read(&grid, &a, &path).await;
    assert_eq!(outcome.error, None, "the honest read was refused");
    assert_eq!(
        outcome.bytes,
        std::fs::read(src.path().join("f.bin")).unwrap()
    );
    assert!(outcome.sha256.is_some());
    drop(held);
    a.shutdown().await;
}

/// Issue 16.1: a peer with a valid token that grants no credit holds its slot only for the write
/// timeout: then its stream is reset with DeadlineExceeded and the slot serves the next read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_grants_no_credit_loses_its_slot_after_the_write_timeout() {
    let grid = Grid::new();
    let (a, src, path) = one_slot_star(&grid, 1 << 20, Duration::from_secs(1)).await;
    let x = Hostile::star(&grid, "star-x", Credit::one_byte());
    let conn = x.connect(a.local_addr(), "star-a").await.unwrap();
    let request = read_request(&path, grid.token("star-a", "star-x", &path));
    let mut send = hostile::send_raw(&conn, &hostile::frame(&request))
        .await
        .unwrap();
    send.finish().unwrap();
    let mut stalled = hostile::answer(&conn).await.unwrap();
    // The slot is taken: the honest read is refused at once while the stalled one holds it.
    let busy = honest_read(&grid, &a, &path).await;
    assert_refused(&busy, ErrorCode::ResourceExhausted);
    let started = Instant::now();
    let reset = bounded("the stalled stream's reset", stalled.received_reset()).await;
    let code = reset
        .expect("a reset, not a finished stream")
        .expect("a code");
    assert_eq!(
        code,
        quinn::VarInt::from_u32(ErrorCode::DeadlineExceeded.as_u32())
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let outcome = honest_read(&grid, &a, &path).await;
    assert_eq!(outcome.error, None, "the slot was not given back");
    assert_eq!(
        outcome.bytes,
        std::fs::read(src.path().join("f.bin")).unwrap()
    );
    a.shutdown().await;
}

/// Issue 16.7: a peer that opens read streams and sends each request one byte per packet,
/// before any authorisation, pins only about the bytes it sent in the real `orbit-star`, not a
/// packet buffer per byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_byte_packets_pin_about_the_bytes_sent() {
    const STREAMS: usize = 8;
    const BYTES: usize = 8 * 1024;
    let grid = Grid::new();
    let files = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let mut args = hostile::star_args(&grid, "star-a", files.path());
    args.extend(["--allow".into(), wire(root.path())]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let a = StarProcess::start(&args);
    let x = Hostile::star(&grid, "star-x", Credit::default());
    let conn = x.connect(a.addr, "star-a").await.unwrap();
    let resting = hostile::vm_rss(a.pid()).unwrap();
    let started = Instant::now();
    let mut streams = Vec::new();
    let mut packets = 0;
    for _ in 0..STREAMS {
        // The largest request frame's length, then a part of its body a byte at a time.
        let prefix = (MAX_CONTROL_FRAME as u32).to_be_bytes();
        let mut send = hostile::send_raw(&conn, &prefix).await.unwrap();
        packets += bounded(
            "dribbling",
            hostile::dribble(&conn, &mut send, &[b'a'; BYTES]),
        )
        .await
        .unwrap();
        streams.push(send);
    }
    let pinned = hostile::vm_rss(a.pid()).unwrap().saturating_sub(resting);
    let sent = (STREAMS * BYTES) as u64;
    println!(
        "one-byte packets: {packets} stream frames, {sent} bytes held in {STREAMS} unfinished \
         requests; VmRSS +{} KiB ({:.1} bytes per byte sent), in {:?}",
        pinned / 1024,
        pinned as f64 / sent as f64,
        started.elapsed()
    );
    assert!(
        packets >= sent,
        "the bytes were coalesced: {packets} frames"
    );
    assert!(
        pinned < 16 * sent,
        "{sent} bytes in one-byte packets pinned {pinned} bytes of the star's memory"
    );
    drop(streams);
    drop(a);
}

/// A star-a process (its files in `files`, serving `root`) with its metrics on a port of its
/// own; returns it and the metrics address it logged.
fn metrics_star(grid: &Grid, files: &Path, root: &Path) -> (StarProcess, SocketAddr) {
    let mut args = hostile::star_args(grid, "star-a", files);
    args.extend(["--allow".into(), wire(root)]);
    args.extend(["--metrics-listen".into(), "127.0.0.1:0".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let a = StarProcess::start(&args);
    let line = a.wait_for_line("metrics on http://", BOUND);
    let metrics = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    (a, metrics)
}

/// Issue 16.8: the metrics listener holds at most 16 connections; more wait in the kernel's
/// backlog and cost the star no file descriptor, and a scrape is served once one is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_listener_holds_at_most_sixteen_connections() {
    const CAP: usize = 16;
    let grid = Grid::new();
    let (files, root) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, metrics) = metrics_star(&grid, files.path(), root.path());
    let before = hostile::open_fds(a.pid());
    // Connections that never send a request: each one the star accepts, it holds for up to
    // the request timeout (5 s).
    let idle: Vec<_> = (0..3 * CAP)
        .map(|_| std::net::TcpStream::connect(metrics).unwrap())
        .collect();
    bounded("the star to take its 16 connections", async {
        while hostile::open_fds(a.pid()) < before + CAP {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // A measurement over a fixed time, not a wait for an event: without the cap, the other 32
    // are accepted within milliseconds.
    let mut most = 0;
    for _ in 0..50 {
        most = most.max(hostile::open_fds(a.pid()).saturating_sub(before));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(most, CAP, "descriptors held beyond the star's own");
    drop(idle);
    let scrape = bounded("a scrape once the connections are gone", async {
        tokio::task::spawn_blocking(move || orbit_tests::ops::scrape(metrics))
            .await
            .unwrap()
    })
    .await;
    assert!(scrape.contains("orbit_p2p_"), "{scrape}");
}

/// Issue 16.8: with its file descriptors gone, the metrics listener pauses between failed
/// accepts instead of spinning, and serves a scrape again once they are back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_listener_does_not_spin_without_file_descriptors() {
    let grid = Grid::new();
    let (files, root) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, metrics) = metrics_star(&grid, files.path(), root.path());
    // Room for four more descriptors, then accept fails with EMFILE.
    let limit = hostile::open_fds(a.pid()) + 4;
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &a.pid().to_string(), &format!("--nofile={limit}:")])
        .status()
        .expect("prlimit runs");
    assert!(status.success(), "prlimit failed");
    let mut idle = Vec::new();
    for _ in 0..32 {
        idle.push(std::net::TcpStream::connect(metrics).unwrap());
    }
    // Until the star has filled its descriptors (no event says so; poll).
    bounded("the star to run out of file descriptors", async {
        while hostile::open_fds(a.pid()) < limit {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let before = hostile::cpu_ticks(a.pid());
    // A measurement over a fixed time, not a wait for an event.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = hostile::cpu_ticks(a.pid()) - before;
    println!("metrics listener out of descriptors: {used} ticks of CPU in 1 s");
    assert!(
        used < 30,
        "the star used {used}/100 s of CPU in one second: spinning"
    );
    drop(idle);
    let scrape = bounded("a scrape after the attack", async {
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(metrics).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: star\r\n\r\n")
                .unwrap();
            let mut text = String::new();
            s.read_to_string(&mut text).unwrap();
            text
        })
        .await
        .unwrap()
    })
    .await;
    assert!(scrape.starts_with("HTTP/1.1 200 OK"), "{scrape}");
    assert!(scrape.contains("orbit_p2p_"), "{scrape}");
}

/// Issue 16.10a: a path a peer sends is logged escaped and cut short before any authorisation:
/// a newline cannot forge a log line, an escape sequence reaches no terminal, 60,000 characters
/// make no 60,000-character line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_path_is_logged_escaped_and_cut_short() {
    let grid = Grid::new();
    let files = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let mut args = hostile::star_args(&grid, "star-a", files.path());
    args.extend(["--allow".into(), wire(root.path())]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let a = StarProcess::start(&args);
    let forged = "2026-01-01T00:00:00.000000Z  INFO star: FORGED";
    let path = format!("/x\n{forged}\u{1b}[2J{}", "y".repeat(60_000));
    let x = Hostile::star(&grid, "star-x", Credit::default());
    let conn = x.connect(a.addr, "star-a").await.unwrap();
    let request = read_request(&path, "not-a-token".into());
    let mut send = hostile::send_raw(&conn, &hostile::frame(&request))
        .await
        .unwrap();
    send.finish().unwrap();
    let mut answer = hostile::answer(&conn).await.unwrap();
    let _ = bounded("the refusal", answer.read_to_end(MAX_CONTROL_FRAME)).await;
    let refused = a.wait_for_line("read refused", BOUND);
    let mut lines = a.drain_lines();
    lines.push(refused);
    for line in &lines {
        assert!(!line.starts_with(forged), "a forged line: {line}");
        // The star colours its own output; the peer's sequence (clear the screen) is not there.
        assert!(
            !line.contains("\u{1b}[2J"),
            "the peer's escape sequence: {line:?}"
        );
        assert!(line.len() < 2048, "a line of {} bytes", line.len());
    }
    let escaped = lines.iter().find(|l| l.contains("read refused")).unwrap();
    assert!(escaped.contains(r"/x\n2026-01-01"), "{escaped}");
    assert!(escaped.contains(r"\u{1b}[2J"), "{escaped}");
    assert!(escaped.contains("bytes in all"), "{escaped}");
}

/// Issue 16.10e: under a flood of handshakes that never finish, a client whose address is not
/// validated gets a QUIC Retry instead of a handshake, and an honest client (which answers the
/// Retry) is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_flood_gets_retries_and_an_honest_client_is_served() {
    const FLOOD: usize = 40;
    let grid = Grid::new();
    let src = tempfile::tempdir().unwrap();
    random_file(&src.path().join("f.bin"), 70_000);
    let a = grid.spawn_star("star-a", &[src.path()]).await;
    let path = wire(&src.path().join("f.bin"));
    // Each flooding client sends its Initial to a socket of the test, which passes it on to the
    // star from a socket of its own and never passes anything back: a handshake half-open.
    let capture = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let capture_addr = capture.local_addr().unwrap();
    let mut kinds = Vec::new();
    let mut held = Vec::new();
    for _ in 0..FLOOD {
        let client = grid.star_client("star-x");
        let connecting = client.endpoint.connect(capture_addr, "star-a").unwrap();
        let mut buf = vec![0u8; 65536];
        let (n, from) = bounded("a flood Initial", capture.recv_from(&mut buf))
            .await
            .unwrap();
        let relay = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        relay.send_to(&buf[..n], a.local_addr()).await.unwrap();
        let (n, _) = bounded("the star's reply", relay.recv_from(&mut buf))
            .await
            .unwrap();
        assert!(n > 0 && buf[0] & 0x80 != 0, "not a long-header packet");
        // QUIC v1 long header: the packet type is in bits 4 and 5; 0 Initial, 3 Retry.
        kinds.push((buf[0] >> 4) & 0x3);
        held.push((client, connecting, relay, from));
    }
    let retries = kinds.iter().filter(|k| **k == 3).count();
    println!("handshake flood: packet types {kinds:?}");
    assert!(
        kinds[..30].iter().all(|k| *k == 0),
        "a Retry before the flood: {kinds:?}"
    );
    assert!(
        retries >= FLOOD - 33,
        "only {retries} of {FLOOD} got a Retry: {kinds:?}"
    );
    let outcome = honest_read(&grid, &a, &path).await;
    assert_eq!(outcome.error, None);
    assert_eq!(
        outcome.bytes,
        std::fs::read(src.path().join("f.bin")).unwrap()
    );
    drop(held);
    a.shutdown().await;
}
