//! Metrics: `GET /metrics` serves Prometheus text whose counters move by exactly what happened
//! (one replication, one refused token, counted with its code), and 20 replications between the
//! same two stars share one QUIC connection: one outbound handshake on the destination. Bytes
//! are counted while a transfer is in flight, on both sides, and the certificates' expiry
//! follows a reload.

use std::net::SocketAddr;
use std::time::{Duration, Instant, UNIX_EPOCH};

use orbit_agent::Star;
use orbit_tests::ops::{sample, scrape};
use orbit_tests::slow_source::SlowSource;
use orbit_tests::{
    expect_done, expect_failed, part_files, random_file, read_frame, read_request, two_roots,
    unix_now, wire, within, write_frame, Grid, STEP_TIMEOUT,
};
use orbit_wire::{ControlRequest, DataFrame, ErrorCode, ReplicateFile, TransferId, MAX_DATA_FRAME};
use sha2::Digest as _;

async fn metrics_of(star: &Star) -> SocketAddr {
    star.serve_metrics("127.0.0.1:0".parse().unwrap())
        .await
        .expect("metrics listener")
}

/// Scrapes until `ready` holds: the source counts a read once the destination has acknowledged
/// every byte, which may be a moment after the destination reported Done.
async fn scrape_when(addr: SocketAddr, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let text = tokio::task::spawn_blocking(move || scrape(addr))
            .await
            .unwrap();
        if ready(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never got there:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_by_exactly_one_replication_and_one_refused_token() {
    let grid = Grid::new();
    let tmp = tempfile::tempdir().unwrap();
    let (src_root, dst_root) = two_roots(tmp.path());
    let a = grid.spawn_star("star-a", &[&src_root]).await;
    let b = grid.spawn_star("star-b", &[&dst_root]).await;
    let (ma, mb) = (metrics_of(&a).await, metrics_of(&b).await);

    let before = tokio::task::spawn_blocking(move || scrape(mb))
        .await
        .unwrap();
    for series in [
        "orbit_p2p_transfers_total{status=\"ok\"}",
        "orbit_p2p_transfers_total{status=\"failed\",code=\"PermissionDenied\"}",
        "orbit_p2p_transfers_total{status=\"failed\",code=\"Unavailable\"}",
        "orbit_p2p_bytes_transferred_total{direction=\"received\"}",
        "orbit_p2p_transfer_duration_seconds_count",
        "orbit_p2p_token_verification_errors_total",
        "orbit_p2p_transfers_in_flight",
        "orbit_p2p_handshakes_total{direction=\"outbound\",status=\"ok\"}",
        "orbit_p2p_connections_open{direction=\"outbound\"}",
    ] {
        assert_eq!(sample(&before, series), 0.0, "{series}");
    }

    let size = 300_001;
    let src = src_root.join("f.bin");
    let digest = random_file(&src, size);
    let controller = grid.controller_client();
    let path = wire(&src);
    let done = controller
        .replicate(
            &a,
            &path,
            &b,
            &wire(&dst_root.join("f.bin")),
            grid.token("star-a", "star-b", &path),
            None,
        )
        .await
        .unwrap();
    assert_eq!(expect_done(done), (size as u64, digest));
    // A token for another holder: star-a refuses it before reading a byte.
    let refused = controller
        .replicate(
            &a,
            &path,
            &b,
            &wire(&dst_root.join("g.bin")),
            grid.token("star-a", "star-c", &path),
            None,
        )
        .await
        .unwrap();
    assert_eq!(expect_failed(refused).code, ErrorCode::PermissionDenied);

    let dst = tokio::task::spawn_blocking(move || scrape(mb))
        .await
        .unwrap();
    let n = |series: &str| sample(&dst, series);
    assert_eq!(n("orbit_p2p_transfers_total{status=\"ok\"}"), 1.0);
    // The refusal is counted with its code, and under no other.
    assert_eq!(
        n("orbit_p2p_transfers_total{status=\"failed\",code=\"PermissionDenied\"}"),
        1.0
    );
    let failed: f64 = dst
        .lines()
        .filter(|l| l.starts_with("orbit_p2p_transfers_total{status=\"failed\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(failed, 1.0, "{dst}");
    assert_eq!(
        n("orbit_p2p_bytes_transferred_total{direction=\"received\"}"),
        size as f64
    );
    assert_eq!(
        n("orbit_p2p_bytes_transferred_total{direction=\"sent\"}"),
        0.0
    );
    assert_eq!(n("orbit_p2p_transfer_duration_seconds_count"), 2.0);
    assert_eq!(
        n("orbit_p2p_transfer_duration_seconds_bucket{le=\"+Inf\"}"),
        2.0
    );
    assert!(n("orbit_p2p_transfer_duration_seconds_sum") > 0.0);
    assert_eq!(n("orbit_p2p_token_verification_errors_total"), 0.0);
    assert_eq!(n("orbit_p2p_transfers_in_flight"), 0.0);
    assert_eq!(
        n("orbit_p2p_handshakes_total{direction=\"outbound\",status=\"ok\"}"),
        1.0
    );
    assert_eq!(
        n("orbit_p2p_handshakes_total{direction=\"outbound\",status=\"failed\"}"),
        0.0
    );
    // One controller connection per command.
    assert_eq!(
        n("orbit_p2p_handshakes_total{direction=\"inbound\",status=\"ok\"}"),
        2.0
    );
    assert_eq!(n("orbit_p2p_connections_open{direction=\"outbound\"}"), 1.0);

    let reads_ok = "orbit_p2p_reads_total{status=\"ok\"}";
    let src = scrape_when(ma, |text| sample(text, reads_ok) == 1.0).await;
    let n = |series: &str| sample(&src, series);
    assert_eq!(n("orbit_p2p_token_verification_errors_total"), 1.0);
    assert_eq!(
        n("orbit_p2p_reads_total{status=\"failed\",code=\"PermissionDenied\"}"),
        1.0
    );
    assert_eq!(
        n("orbit_p2p_bytes_transferred_total{direction=\"sent\"}"),
        size as f64
    );
    assert_eq!(n("orbit_p2p_transfers_total{status=\"ok\"}"), 0.0);
    assert_eq!(
        n("orbit_p2p_handshakes_total{direction=\"inbound\",status=\"ok\"}"),
        1.0
    );
    assert_eq!(
        n("orbit_p2p_handshakes_total{direction=\"outbound\",status=\"ok\"}"),
        0.0
    );
    assert_eq!(n("orbit_p2p_connections_open{direction=\"inbound\"}"), 1.0);
    // The library handle reads the same counters.
    assert_eq!(a.metrics().token_errors(), 1);

    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_replications_between_two_stars_make_one_handshake() {
    let grid = Grid::new();
    let tmp = tempfile::tempdir().unwrap();
    let (src_root, dst_root) = two_roots(tmp.path());
    let a = grid.spawn_star("star-a", &[&src_root]).await;
    let b = grid.spawn_star("star-b", &[&dst_root]).await;
    let src = src_root.join("f.bin");
    let digest = random_file(&src, 70_000);
    let path = wire(&src);
    let controller = grid.controller_client();
    for i in 0..20 {
        let target = dst_root.join(format!("f{i}.bin"));
        let token = grid.token("star-a", "star-b", &path);
        let done = controller
            .replicate(&a, &path, &b, &wire(&target), token, None)
            .await
            .unwrap();
        assert_eq!(expect_done(done), (70_000, digest), "replication {i}");
    }
    let text = b.render_metrics();
    assert_eq!(
        sample(&text, "orbit_p2p_transfers_total{status=\"ok\"}"),
        20.0
    );
    assert_eq!(
        sample(
            &text,
            "orbit_p2p_handshakes_total{direction=\"outbound\",status=\"ok\"}"
        ),
        1.0,
        "the destination dialled the source more than once:\n{text}"
    );
    let text = a.render_metrics();
    assert_eq!(
        sample(
            &text,
            "orbit_p2p_handshakes_total{direction=\"inbound\",status=\"ok\"}"
        ),
        1.0,
        "the source accepted more than one connection:\n{text}"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// The value of the only sample of `name` with `labels` among its labels, if there is one.
fn sample_with(text: &str, name: &str, labels: &str) -> Option<f64> {
    let mut found = text.lines().filter(|l| {
        l.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with('{') && rest.contains(labels))
    });
    let line = found.next()?;
    assert!(
        found.next().is_none(),
        "more than one {name}{{{labels}}}:\n{text}"
    );
    line.rsplit(' ').next()?.parse().ok()
}

/// Issue 17.5: the destination counts bytes as they arrive, not when the file is published: held
/// mid-file by its source, it has counted exactly the bytes it holds, and the rest once released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_destination_counts_bytes_while_the_transfer_is_in_flight() {
    let grid = Grid::new();
    let tmp = tempfile::tempdir().unwrap();
    // star-a is a source held after `hold` bytes until released, with a certificate of the grid.
    let star_a = tmp.path().join("star-a");
    std::fs::create_dir_all(&star_a).unwrap();
    let cert = grid.ca.issue(orbit_certs::Role::Star, "star-a").unwrap();
    std::fs::write(star_a.join("ca.pem"), grid.ca.cert_pem()).unwrap();
    std::fs::write(star_a.join("cert.pem"), &cert.cert_pem).unwrap();
    std::fs::write(star_a.join("key.pem"), &cert.key_pem).unwrap();
    let (size, hold) = (3 * 1024 * 1024 + 5, 1024 * 1024 + 3);
    let content: Vec<u8> = (0..size).map(|_| rand::random::<u8>()).collect();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let source = SlowSource::start(socket, &star_a, content.clone(), hold);

    let dst_root = tmp.path().join("b");
    std::fs::create_dir_all(&dst_root).unwrap();
    let b = grid.spawn_star("star-b", &[&dst_root]).await;
    let mb = metrics_of(&b).await;
    let path = "/srv/data/f.bin".to_owned();
    let request = ControlRequest::Replicate(ReplicateFile {
        transfer_id: TransferId(rand::random()),
        source: "star-a".into(),
        source_addr: source.addr.to_string(),
        source_path: path.clone(),
        target_path: wire(&dst_root.join("f.bin")),
        token: grid.token("star-a", "star-b", &path),
        expect_sha256: None,
        timeout_secs: 0,
    });
    let controller = grid.controller_client();
    let replication = controller.control_at(b.local_addr(), "star-b", &request);
    tokio::pin!(replication);

    // The temporary file holds what the source sent before it stopped: a file's size has no
    // event to wait for, so it is polled, while the replication runs.
    within("the held bytes on disk", async {
        loop {
            tokio::select! {
                ended = &mut replication => panic!("ended while held: {ended:?}"),
                _ = tokio::time::sleep(Duration::from_millis(2)) => {}
            }
            let held = part_files(&dst_root)
                .iter()
                .any(|p| std::fs::metadata(p).is_ok_and(|m| m.len() == hold as u64));
            if held {
                break;
            }
        }
    })
    .await;
    let during = tokio::task::spawn_blocking(move || scrape(mb))
        .await
        .unwrap();
    let received = "orbit_p2p_bytes_transferred_total{direction=\"received\"}";
    assert_eq!(sample(&during, received), hold as f64, "{during}");
    assert_eq!(sample(&during, "orbit_p2p_transfers_in_flight"), 1.0);
    assert_eq!(
        sample(&during, "orbit_p2p_transfers_total{status=\"ok\"}"),
        0.0
    );

    source.release();
    let events = within("the released replication", replication)
        .await
        .unwrap();
    let digest: [u8; 32] = sha2::Sha256::digest(&content).into();
    assert_eq!(
        expect_done(events.last().unwrap().clone()),
        (size as u64, digest)
    );
    let after = tokio::task::spawn_blocking(move || scrape(mb))
        .await
        .unwrap();
    assert_eq!(sample(&after, received), size as f64, "{after}");
    assert_eq!(
        sample(&after, "orbit_p2p_transfers_total{status=\"ok\"}"),
        1.0
    );
    b.shutdown().await;
}

/// Issue 17.5: the source counts bytes as it sends them: a reader that takes the first chunk and
/// then nothing more holds the source within QUIC's flow-control window, and what the source has
/// counted lies between what the reader took and the file's size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_counts_bytes_while_a_read_is_in_flight() {
    let grid = Grid::new();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("f.bin");
    let size = 8 * 1024 * 1024;
    random_file(&src, size);
    let a = grid.spawn_star("star-a", &[tmp.path()]).await;
    let ma = metrics_of(&a).await;

    let reader = grid.star_client("star-b");
    let conn = reader.connect(a.local_addr(), "star-a").await.unwrap();
    let path = wire(&src);
    let mut send = conn.open_uni().await.unwrap();
    let request = read_request(&path, grid.token("star-a", "star-b", &path));
    write_frame(&mut send, &request).await.unwrap();
    send.finish().unwrap();
    let mut recv = within("the data stream", conn.accept_uni()).await.unwrap();
    let mut took = 0u64;
    while took == 0 {
        let frame: DataFrame = within("a frame", read_frame(&mut recv, MAX_DATA_FRAME))
            .await
            .unwrap();
        match frame {
            DataFrame::Header { size: s, .. } => assert_eq!(s, size as u64),
            DataFrame::Chunk { data, .. } => took += data.len() as u64,
            other => panic!("{other:?}"),
        }
    }
    // The source counts a chunk once QUIC took it, which may be a moment after the reader got it.
    let sent = "orbit_p2p_bytes_transferred_total{direction=\"sent\"}";
    let text = scrape_when(ma, |text| sample(text, sent) >= took as f64).await;
    let counted = sample(&text, sent);
    println!("the reader took {took} bytes; the source, held, counted {counted} of {size}");
    assert!(counted < size as f64, "{text}");
    assert_eq!(sample(&text, "orbit_p2p_reads_in_flight"), 1.0);
    assert_eq!(sample(&text, "orbit_p2p_reads_total{status=\"ok\"}"), 0.0);
    conn.close(0u32.into(), b"enough");
    a.shutdown().await;
}

/// Issue 17.5: each certificate the star holds has its expiry as a series, and a reload that
/// brings a renewed certificate replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_expiry_is_served_and_follows_a_reload() {
    let grid = Grid::new();
    let tmp = tempfile::tempdir().unwrap();
    let issue = |not_after: u64| {
        let options = orbit_certs::IssueOptions {
            not_after: UNIX_EPOCH + Duration::from_secs(not_after),
            ..Default::default()
        };
        grid.ca
            .issue_with(orbit_certs::Role::Star, "star-a", &options)
            .unwrap()
    };
    let config_with = |cert: &orbit_certs::IssuedCert| {
        let mut config = grid.star_config("star-a", &[tmp.path()]);
        config.cert_pem = cert.cert_pem.clone();
        config.key_pem = cert.key_pem.clone();
        config
    };
    let (first, renewed) = (unix_now() + 20 * 86_400, unix_now() + 1000 * 86_400);
    let a = Star::spawn(config_with(&issue(first))).await.unwrap();
    let name = "orbit_p2p_certificate_expiry_timestamp_seconds";
    let ca_ends = grid.ca.cert_pem();
    let ca_ends = orbit_certs::not_after_of(&orbit_certs::load_certs(&ca_ends).unwrap()[0])
        .unwrap()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();

    let text = a.render_metrics();
    assert_eq!(
        sample_with(&text, name, "certificate=\"star\""),
        Some(first as f64)
    );
    assert_eq!(
        sample_with(&text, name, "certificate=\"ca\""),
        Some(ca_ends as f64)
    );

    a.reload(&config_with(&issue(renewed))).await.unwrap();
    let text = a.render_metrics();
    assert_eq!(
        sample_with(&text, name, "certificate=\"star\""),
        Some(renewed as f64),
        "{text}"
    );
    assert_eq!(
        sample_with(&text, name, "certificate=\"ca\""),
        Some(ca_ends as f64)
    );
    a.shutdown().await;
}
