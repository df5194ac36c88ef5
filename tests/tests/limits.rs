//! The caps a star puts on its peers (agent/src/limits.rs): a token's lifetime, transfers in
//! flight, connections per peer, and what a peer that opens many streams and goes silent, or
//! reads a data stream at one byte a second, can make a star hold. The two resource tests run
//! the real `orbit-star` binary and read its resident memory (VmRSS) from /proc while a normal
//! replication runs beside the attack.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use orbit_tests::hostile;
use orbit_tests::process::StarProcess;
use orbit_tests::*;
use orbit_wire::token;
use orbit_wire::{ControlRequest, ErrorCode, ReplicateFile, MAX_CONTROL_FRAME};

// ---- token lifetime ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_with_a_lifetime_over_the_cap_is_refused() {
    let grid = Grid::new();
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("f.bin"), b"payload").unwrap();
    let a = grid.spawn_star("star-a", &[src.path()]).await;
    let path = wire(&src.path().join("f.bin"));
    let client = grid.star_client("star-b");
    let conn = client.connect(a.local_addr(), "star-a").await.unwrap();
    let with_lifetime = |secs: u64| {
        let mut claims = grid.claims("star-a", "star-b", &path);
        claims.not_after = unix_now() + secs;
        token::sign(&claims, &grid.key("star-a"))
    };

    let outcome = client
        .read(&conn, &read_request(&path, with_lifetime(7200)))
        .await
        .unwrap();
    let error = assert_refused(&outcome, ErrorCode::PermissionDenied);
    // The clock may tick between minting and checking.
    assert!(
        error.message.starts_with("token lifetime 7200 s")
            || error.message.starts_with("token lifetime 7199 s"),
        "{error}"
    );
    assert!(
        error.message.ends_with("is over this star's cap of 3600 s"),
        "{error}"
    );
    // The control: inside the cap, the same star serves the file.
    let outcome = client
        .read(&conn, &read_request(&path, with_lifetime(3500)))
        .await
        .unwrap();
    assert_eq!(outcome.bytes, b"payload");
    conn.close(0u32.into(), b"done");
    a.shutdown().await;
}

// ---- transfers in flight -----------------------------------------------------------------------

/// A star-a that completes handshakes and then never answers: a replication from it stays in
/// flight at the destination until the connection is closed.
fn silent_source(grid: &Grid) -> quinn::Endpoint {
    let endpoint = star_server(grid, "star-a");
    let ep = endpoint.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(incoming) = ep.accept().await {
            if let Ok(conn) = incoming.await {
                held.push(conn);
            }
        }
    });
    endpoint
}

fn replicate_from(addr: SocketAddr, grid: &Grid, source: &str, target: &Path) -> ControlRequest {
    ControlRequest::Replicate(ReplicateFile {
        transfer_id: orbit_wire::TransferId(rand::random()),
        source: "star-a".into(),
        source_addr: addr.to_string(),
        source_path: source.into(),
        target_path: wire(target),
        token: grid.token("star-a", "star-b", source),
        expect_sha256: None,
        // Once its source goes away, the destination retries for this long without progress.
        timeout_secs: 10,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replication_beyond_max_transfers_is_refused_at_once() {
    let grid = Grid::new();
    let dst = tempfile::tempdir().unwrap();
    let mut config = grid.star_config("star-b", &[dst.path()]);
    config.limits.max_transfers = 1;
    let b = orbit_agent::Star::spawn(config).await.unwrap();
    let silent = silent_source(&grid);
    let client = grid.controller_client();
    let stuck = replicate_from(
        silent.local_addr().unwrap(),
        &grid,
        "/srv/f.bin",
        &dst.path().join("first.bin"),
    );
    let (b_addr, b_name) = (b.local_addr(), b.name().to_owned());
    let first = tokio::spawn({
        let client = grid.controller_client();
        async move { client.control_at(b_addr, &b_name, &stuck).await }
    });
    // Wait until star-b reports the replication in flight.
    within("the first replication to be in flight", async {
        loop {
            let events = client.control(&b, &ControlRequest::Status).await.unwrap();
            if let Some(orbit_wire::ControlEvent::Status(s)) = events.last() {
                if s.transfers_in_flight == 1 {
                    return;
                }
            }
            tokio::task::yield_now().await;
        }
    })
    .await;

    let second = replicate_from(
        silent.local_addr().unwrap(),
        &grid,
        "/srv/f.bin",
        &dst.path().join("second.bin"),
    );
    let started = Instant::now();
    let mut events = within("the second replication", client.control(&b, &second))
        .await
        .unwrap();
    let error = expect_failed(events.pop().unwrap());
    assert_eq!(error.code, ErrorCode::ResourceExhausted, "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the refusal was not immediate"
    );

    // The first ends when its source goes away; its slot is free again.
    silent.close(0u32.into(), b"gone");
    let events = within("the first replication", first)
        .await
        .unwrap()
        .unwrap();
    expect_failed(events.last().unwrap().clone());
    let src = tempfile::tempdir().unwrap();
    random_file(&src.path().join("f.bin"), 1000);
    let a = grid.spawn_star("star-a", &[src.path()]).await;
    let source = wire(&src.path().join("f.bin"));
    let token = grid.token("star-a", "star-b", &source);
    let target = wire(&dst.path().join("third.bin"));
    // star-b's pool still holds the closed connection to the silent star-a; it redials.
    expect_done(
        client
            .replicate(&a, &source, &b, &target, token, None)
            .await
            .unwrap(),
    );
    assert_eq!(
        list_tree(dst.path()),
        vec![std::path::PathBuf::from("third.bin")]
    );
    a.shutdown().await;
    b.shutdown().await;
}

// ---- connections per peer ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_over_its_connection_cap_is_closed_with_resource_exhausted() {
    let grid = Grid::new();
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("f.bin"), b"payload").unwrap();
    let mut config = grid.star_config("star-a", &[src.path()]);
    config.limits.max_connections_per_peer = 2;
    let a = orbit_agent::Star::spawn(config).await.unwrap();
    let path = wire(&src.path().join("f.bin"));
    let client = grid.star_client("star-b");
    let read = |conn: quinn::Connection| {
        let request = read_request(&path, grid.token("star-a", "star-b", &path));
        let client = &client;
        async move { client.read(&conn, &request).await }
    };

    let first = client.connect(a.local_addr(), "star-a").await.unwrap();
    let second = client.connect(a.local_addr(), "star-a").await.unwrap();
    // Both are in service before the third arrives.
    assert_eq!(read(first.clone()).await.unwrap().bytes, b"payload");
    assert_eq!(read(second.clone()).await.unwrap().bytes, b"payload");
    let third = client.connect(a.local_addr(), "star-a").await.unwrap();
    let reason = within("the third connection to be closed", third.closed()).await;
    match reason {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(
                close.error_code,
                quinn::VarInt::from_u32(ErrorCode::ResourceExhausted.as_u32())
            );
        }
        other => panic!("closed for another reason: {other}"),
    }
    // Another star is not affected, and a closed connection frees its place.
    let other = grid.star_client("star-c");
    let conn = other.connect(a.local_addr(), "star-a").await.unwrap();
    let request = read_request(&path, grid.token("star-a", "star-c", &path));
    assert_eq!(other.read(&conn, &request).await.unwrap().bytes, b"payload");
    first.close(0u32.into(), b"done");
    within("star-a to see the close", async {
        loop {
            let again = client.connect(a.local_addr(), "star-a").await.unwrap();
            if let Ok(outcome) = read(again.clone()).await {
                assert_eq!(outcome.bytes, b"payload");
                return;
            }
        }
    })
    .await;
    a.shutdown().await;
}

/// Each `orbitctl` command opens its own connection, and scripts run many at once: the controller
/// may hold `max_transfers + max_connections_per_peer` connections, not only the per-peer cap
/// meant for stars, which pool theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_may_open_a_connection_per_transfer_and_more() {
    let grid = Grid::new();
    let dir = tempfile::tempdir().unwrap();
    let mut config = grid.star_config("star-a", &[dir.path()]);
    config.limits.max_connections_per_peer = 2;
    config.limits.max_transfers = 4;
    let a = orbit_agent::Star::spawn(config).await.unwrap();
    let client = grid.controller_client();
    let mut conns = Vec::new();
    for _ in 0..6 {
        conns.push(client.connect(a.local_addr(), "star-a").await.unwrap());
    }
    // All six are served at once, beyond max_connections_per_peer.
    for conn in &conns {
        let events = within("status", Client::control_on(conn, &ControlRequest::Status))
            .await
            .unwrap();
        assert!(
            matches!(events.last(), Some(orbit_wire::ControlEvent::Status(_))),
            "{events:?}"
        );
    }
    let seventh = client.connect(a.local_addr(), "star-a").await.unwrap();
    match within("the seventh connection to be closed", seventh.closed()).await {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(
                close.error_code,
                quinn::VarInt::from_u32(ErrorCode::ResourceExhausted.as_u32())
            );
            let reason = String::from_utf8_lossy(&close.reason);
            assert!(reason.contains("already has 6 connections"), "{reason}");
        }
        other => panic!("closed for another reason: {other}"),
    }
    a.shutdown().await;
}

// ---- memory under attack, with the real binary ---------------------------------------------------

fn vm_rss(pid: u32) -> u64 {
    hostile::vm_rss(pid).expect("the star's VmRSS")
}

/// Samples a process's VmRSS every few milliseconds until dropped, keeping the peak.
struct RssPeak {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssPeak {
    fn start(pid: u32) -> RssPeak {
        let (peak, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (p, s) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Some(rss) = hostile::vm_rss(pid) else {
                    break;
                };
                p.fetch_max(rss, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        RssPeak { peak, stop }
    }

    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for RssPeak {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A real star-a process serving `root` with `extra` flags, and an in-process star-b that pulls
/// from it: the normal replication that must go on during an attack.
struct Bench {
    grid: Grid,
    _files: tempfile::TempDir,
    root: tempfile::TempDir,
    dst: tempfile::TempDir,
    a: StarProcess,
    b: orbit_agent::Star,
}

impl Bench {
    async fn new(extra: &[&str]) -> Bench {
        let grid = Grid::new();
        let files = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        random_file(&root.path().join("normal.bin"), NORMAL);
        let mut args = hostile::star_args(&grid, "star-a", files.path());
        args.extend(["--allow".into(), wire(root.path())]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let a = StarProcess::start(&args);
        let b = grid.spawn_star("star-b", &[dst.path()]).await;
        Bench {
            grid,
            _files: files,
            root,
            dst,
            a,
            b,
        }
    }

    /// Replicates normal.bin from the star-a process to star-b and checks the bytes.
    async fn normal_replication(&self, name: &str) {
        let source = wire(&self.root.path().join("normal.bin"));
        let target = self.dst.path().join(name);
        let request = ControlRequest::Replicate(ReplicateFile {
            transfer_id: orbit_wire::TransferId(rand::random()),
            source: "star-a".into(),
            source_addr: self.a.addr.to_string(),
            source_path: source.clone(),
            target_path: wire(&target),
            token: self.grid.token("star-a", "star-b", &source),
            expect_sha256: None,
            timeout_secs: 0,
        });
        let client = self.grid.controller_client();
        let mut events = within("the normal replication", client.control(&self.b, &request))
            .await
            .unwrap();
        let (bytes, sha256) = expect_done(events.pop().unwrap());
        assert_eq!(bytes, NORMAL as u64);
        assert_eq!(sha256, sha256_file(&self.root.path().join("normal.bin")));
        assert_eq!(sha256_file(&target), sha256);
    }
}

/// The normal replication's size: several times the windows, so it cannot slip through in one
/// burst before the attack is under way.
const NORMAL: usize = 32 * 1024 * 1024;
const MIB: u64 = 1024 * 1024;

/// A peer (one certificate) opens 1,000 streams over as many connections as it is allowed, puts
/// on each the 4-byte prefix of the largest request frame and one byte, and goes silent. The
/// star holds at most `connections × streams` of them (here 4 × 64 = 256), each for the request
/// timeout (here 1 s), then stops them with DeadlineExceeded and takes the next ones. Its memory:
/// 256 buffers of 64 KiB (16 MiB) for those requests, plus the normal replication's (1 MiB of
/// read-ahead, up to a 16 MiB send window), plus QUIC state: the peak must stay under 64 MiB above
/// the star's resting size. Without the caps the 1,000 buffers alone would take 62.5 MiB, and
/// without the request timeout they would be held for as long as the peer likes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_streams_pin_bounded_memory_and_stall_no_one() {
    const STREAMS: usize = 1000;
    const CONNECTIONS: usize = 4;
    let bench = Bench::new(&[
        "--max-connections-per-peer",
        "4",
        "--max-streams-per-connection",
        "64",
        "--request-timeout-secs",
        "1",
    ])
    .await;
    bench.normal_replication("warm-up.bin").await;
    let resting = vm_rss(bench.a.pid());
    let peak = RssPeak::start(bench.a.pid());

    let attacker = bench.grid.star_client("star-c");
    let mut conns = Vec::new();
    for _ in 0..CONNECTIONS {
        conns.push(attacker.connect(bench.a.addr, "star-a").await.unwrap());
    }
    let started = Instant::now();
    let mut streams = Vec::new();
    for i in 0..STREAMS {
        let conn = conns[i % CONNECTIONS].clone();
        streams.push(tokio::spawn(async move {
            let mut send = conn.open_uni().await.unwrap();
            let mut partial = (MAX_CONTROL_FRAME as u32).to_be_bytes().to_vec();
            partial.push(0);
            send.write_all(&partial).await.unwrap();
            // Silent from here on: the star must end it.
            send.stopped().await
        }));
    }
    bench.normal_replication("during-attack.bin").await;
    for stream in streams {
        let stopped = within("the star to stop an idle stream", stream)
            .await
            .unwrap();
        assert_eq!(
            stopped.unwrap(),
            Some(quinn::VarInt::from_u32(
                ErrorCode::DeadlineExceeded.as_u32()
            ))
        );
    }
    let took = started.elapsed();
    let grew = peak.peak().saturating_sub(resting);
    println!(
        "idle streams: resting VmRSS {} MiB, peak {} MiB (+{} MiB); {STREAMS} streams ended in {took:?}",
        resting / MIB,
        peak.peak() / MIB,
        grew / MIB
    );
    assert!(grew < 64 * MIB, "the star grew by {} MiB", grew / MIB);
    bench.b.shutdown().await;
    bench.a.terminate();
}

/// A peer with a valid token reads a 1 GiB file at one byte a second. The star reads ahead at
/// most 16 chunks (1 MiB) and QUIC buffers at most its 16 MiB send window, so its memory must
/// grow by less than 64 MiB, not by the file's size, while a normal replication from the same
/// star completes with the right bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_at_one_byte_a_second_pins_bounded_memory_and_stalls_no_one() {
    let bench = Bench::new(&[]).await;
    // Sparse: 1 GiB that costs no disk, and reads as zeros.
    let big = bench.root.path().join("big.bin");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(1024 * MIB)
        .unwrap();
    bench.normal_replication("warm-up.bin").await;
    let resting = vm_rss(bench.a.pid());
    let peak = RssPeak::start(bench.a.pid());

    let reader = bench.grid.star_client("star-c");
    let conn = reader.connect(bench.a.addr, "star-a").await.unwrap();
    let path = wire(&big);
    let request = read_request(&path, bench.grid.token("star-a", "star-c", &path));
    let mut send = conn.open_uni().await.unwrap();
    send.write_all(&orbit_wire::encode_frame(&request).unwrap())
        .await
        .unwrap();
    send.finish().unwrap();
    let mut recv = within("the data stream", conn.accept_uni()).await.unwrap();
    let slow = async {
        let mut byte = [0u8; 1];
        for _ in 0..4 {
            recv.read_exact(&mut byte).await.unwrap();
            // The attacker's pace, not a wait for an event.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    let ((), ()) = tokio::join!(slow, bench.normal_replication("during-attack.bin"));
    let grew = peak.peak().saturating_sub(resting);
    println!(
        "slow reader: resting VmRSS {} MiB, peak {} MiB (+{} MiB)",
        resting / MIB,
        peak.peak() / MIB,
        grew / MIB
    );
    assert!(grew < 64 * MIB, "the star grew by {} MiB", grew / MIB);
    conn.close(0u32.into(), b"done");
    bench.b.shutdown().await;
    bench.a.terminate();
}
