//! Metrics: `GET /metrics` serves Prometheus text whose counters move by exactly what happened
//! (one replication, one refused token), and 20 replications between the same two stars share
//! one QUIC connection: one outbound handshake on the destination.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use orbit_agent::Star;
use orbit_tests::ops::{sample, scrape};
use orbit_tests::{expect_done, expect_failed, random_file, wire, Grid, STEP_TIMEOUT};
use orbit_wire::ErrorCode;

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
    let (src_root, dst_root) = (tmp.path().join("a"), tmp.path().join("b"));
    std::fs::create_dir_all(&src_root).unwrap();
    std::fs::create_dir_all(&dst_root).unwrap();
    let a = grid.spawn_star("star-a", &[&src_root]).await;
    let b = grid.spawn_star("star-b", &[&dst_root]).await;
    let (ma, mb) = (metrics_of(&a).await, metrics_of(&b).await);

    let before = tokio::task::spawn_blocking(move || scrape(mb))
        .await
        .unwrap();
    for series in [
        "orbit_p2p_transfers_total{status=\"ok\"}",
        "orbit_p2p_transfers_total{status=\"failed\"}",
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
    assert_eq!(n("orbit_p2p_transfers_total{status=\"failed\"}"), 1.0);
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
    assert_eq!(n("orbit_p2p_reads_total{status=\"failed\"}"), 1.0);
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
    assert_eq!(a.metrics().token_errors.get(), 1);

    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_replications_between_two_stars_make_one_handshake() {
    let grid = Grid::new();
    let tmp = tempfile::tempdir().unwrap();
    let (src_root, dst_root) = (tmp.path().join("a"), tmp.path().join("b"));
    std::fs::create_dir_all(&src_root).unwrap();
    std::fs::create_dir_all(&dst_root).unwrap();
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
