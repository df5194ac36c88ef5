//! Dialling source stars: a source that never answers its handshake costs only its own
//! replications, and pulls from one unconnected source share one dial.

use orbit_agent::metrics::Direction;
use orbit_tests::*;
use orbit_wire::{ControlEvent, ControlRequest, ReplicateFile, TransferId};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_never_answers_does_not_hold_up_a_pull_from_a_healthy_one() {
    tracing_guard();
    let grid = Grid::new();
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("payload.bin");
    let sha = random_file(&file, 100_000);
    let a = grid.spawn_star("star-a", &[src.path()]).await;
    let b = grid.spawn_star("star-b", &[dst.path()]).await;
    let client = grid.controller_client();

    // "star-x" is a UDP socket that takes every packet and answers none: star-b's dial to it
    // can only end by its own timeout (10 s).
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let stuck = ControlRequest::Start(ReplicateFile {
        transfer_id: TransferId(rand::random()),
        source: "star-x".into(),
        source_addr: silent.local_addr().unwrap().to_string(),
        source_path: wire(&file),
        target_path: wire(&dst.path().join("stuck.bin")),
        token: String::new(),
        expect_sha256: None,
        timeout_secs: 0,
    });
    let started = client.control(&b, &stuck).await.unwrap();
    assert!(
        matches!(started.last(), Some(ControlEvent::Started { .. })),
        "{started:?}"
    );
    // The dial is under way once its first packet arrives.
    let mut packet = [0u8; 2048];
    within("star-b's dial to star-x", silent.recv_from(&mut packet))
        .await
        .unwrap();

    let token = grid.token("star-a", "star-b", &wire(&file));
    let copy = dst.path().join("copy.bin");
    let done = client
        .replicate(&a, &wire(&file), &b, &wire(&copy), token, None)
        .await
        .unwrap();
    assert_eq!(expect_done(done), (100_000, sha));
    assert_eq!(sha256_file(&copy), sha);
    // It finished while the dial to star-x was still waiting: with the pool locked during a
    // dial, it could only have started once that dial had failed.
    assert_eq!(b.metrics().handshakes(Direction::Outbound, false), 0);
    assert!(!dst.path().join("stuck.bin").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_from_one_unconnected_source_share_one_dial() {
    tracing_guard();
    let grid = Grid::new();
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = grid.spawn_star("star-a", &[src.path()]).await;
    let b = grid.spawn_star("star-b", &[dst.path()]).await;
    let client = grid.controller_client();
    let pull = |n: usize| {
        let file = src.path().join(format!("f{n}"));
        let sha = random_file(&file, 70_000 + n);
        let token = grid.token("star-a", "star-b", &wire(&file));
        let (client, a, b) = (&client, &a, &b);
        let target = dst.path().join(format!("f{n}"));
        async move {
            let done = client
                .replicate(a, &wire(&file), b, &wire(&target), token, None)
                .await
                .unwrap();
            assert_eq!(expect_done(done).1, sha);
        }
    };
    tokio::join!(pull(1), pull(2), pull(3), pull(4));
    assert_eq!(b.metrics().handshakes(Direction::Outbound, true), 1);
    assert_eq!(b.metrics().handshakes(Direction::Outbound, false), 0);
}
