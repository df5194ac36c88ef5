//! Replications cut short. When the source star shuts down in the middle of a large file and does
//! not come back within the command's timeout, or the destination star stops without draining,
//! the controller is told which star went away, and the destination holds neither a partial file
//! at the target nor a temporary `.orbit-*.part` file. And a star's shutdown is prompt even when
//! it holds a pooled connection to another star.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use orbit_tests::*;
use orbit_wire::{ControlEvent, ErrorCode};

/// Large enough that the transfer is still running when the first bytes reach the disk: about a
/// second on loopback in a test build.
const LARGE: usize = 64 * 1024 * 1024;

/// What the destination directory showed first.
#[derive(Debug)]
enum Seen {
    /// A temporary file with this many bytes.
    Part(u64),
    /// The target itself: the transfer finished before it could be interrupted.
    Target,
}

/// Polls `dir` until a temporary file with some bytes, or the target, appears. The poll interval
/// is only a pacing between looks; the bound is the caller's `within`.
async fn first_bytes(dir: &Path, target: &Path) -> Seen {
    loop {
        for part in part_files(dir) {
            if let Ok(meta) = std::fs::metadata(&part) {
                if meta.len() > 0 {
                    return Seen::Part(meta.len());
                }
            }
        }
        if target.exists() {
            return Seen::Target;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// How soon after the source has shut down the controller must hear of it: the 1 s retry
/// timeout and a margin; a star that goes away without telling its peers would be noticed only
/// at the destination's stall timeout (10 s).
const NOTICE: Duration = Duration::from_secs(4);

/// Whether the source's goodbye reaches the destination can depend on where in the transfer the
/// shutdown lands, so the interruption is repeated with fresh stars.
const ROUNDS: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_shut_down_mid_transfer_leaves_nothing_at_the_destination() {
    let grid = Grid::new();
    let src_root = tempfile::tempdir().unwrap();
    let src = src_root.path().join("large.bin");
    random_file(&src, LARGE);
    let client = grid.controller_client();

    for round in 1..=ROUNDS {
        let dst_root = tempfile::tempdir().unwrap();
        let dst = dst_root.path().join("large.bin");
        let a = grid.spawn_star("star-a", &[src_root.path()]).await;
        let b = grid.spawn_star("star-b", &[dst_root.path()]).await;
        // The destination retries a source that went away for 1 s.
        let request = grid.replicate_request(&a, &src, &dst, 1);

        // The controller's stream buffers star-b's events while this test is busy elsewhere, so
        // the replication only needs polling until it has started and again at the end.
        let b_name = b.name().to_owned();
        let replication = client.control_at(b.local_addr(), &b_name, &request);
        tokio::pin!(replication);
        let seen = within("the first bytes at the destination", async {
            tokio::select! {
                seen = first_bytes(dst_root.path(), &dst) => seen,
                ended = &mut replication => {
                    panic!("round {round}: the replication ended before a byte arrived: {ended:?}")
                }
            }
        })
        .await;
        match seen {
            Seen::Part(bytes) => assert!(bytes < LARGE as u64, "{bytes}"),
            Seen::Target => panic!(
                "round {round}: the transfer finished before it could be interrupted: \
                 use a larger file"
            ),
        }
        a.shutdown_with_drain(Duration::ZERO).await;
        let mut events = tokio::time::timeout(NOTICE, &mut replication)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "round {round}: nothing reached the controller {NOTICE:?} after the shutdown"
                )
            })
            .unwrap_or_else(|e| {
                panic!("round {round}: the controller was not told why it stopped: {e:#}")
            });

        let error = expect_failed(events.pop().unwrap());
        assert_eq!(
            error.code,
            ErrorCode::DeadlineExceeded,
            "round {round}: {error}"
        );
        assert!(
            error.message.contains("star-a"),
            "round {round}: the message must name the source: {error}"
        );
        assert!(
            events.iter().all(|e| matches!(
                e,
                ControlEvent::Progress { .. } | ControlEvent::Retrying { .. }
            )),
            "round {round}: {events:?}"
        );
        assert_eq!(
            list_tree(dst_root.path()),
            Vec::<PathBuf>::new(),
            "round {round}: a partial or temporary file remains"
        );
        b.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_shut_down_mid_transfer_leaves_nothing_behind() {
    let grid = Grid::new();
    let src_root = tempfile::tempdir().unwrap();
    let dst_root = tempfile::tempdir().unwrap();
    let src = src_root.path().join("large.bin");
    let dst = dst_root.path().join("large.bin");
    random_file(&src, LARGE);
    let a = grid.spawn_star("star-a", &[src_root.path()]).await;
    let b = grid.spawn_star("star-b", &[dst_root.path()]).await;
    let request = grid.replicate_request(&a, &src, &dst, 1);

    let client = grid.controller_client();
    let (b_addr, b_name) = (b.local_addr(), b.name().to_owned());
    let replication = within(
        "the replication",
        client.control_at(b_addr, &b_name, &request),
    );
    // star-b's shutdown runs on its own task: this test is about what the controller and the
    // disk see.
    let interrupt = async {
        let seen = within(
            "the first bytes at the destination",
            first_bytes(dst_root.path(), &dst),
        )
        .await;
        (seen, tokio::spawn(b.shutdown_with_drain(Duration::ZERO)))
    };
    let (events, (seen, shutdown)) = tokio::join!(replication, interrupt);
    assert!(matches!(seen, Seen::Part(_)), "{seen:?}");
    let mut events = events.unwrap_or_else(|e| {
        panic!("the controller was not told why the replication stopped: {e:#}")
    });

    let error = expect_failed(events.pop().unwrap());
    assert_eq!(error.code, ErrorCode::Unavailable, "{error}");
    assert!(
        error.message.contains("star-b"),
        "the message must name the star: {error}"
    );
    assert_eq!(
        list_tree(dst_root.path()),
        Vec::<PathBuf>::new(),
        "a partial or temporary file remains"
    );
    a.shutdown().await;
    within("star-b's shutdown", shutdown).await.unwrap();
}

/// A destination star keeps its connection to the source in its pool. Shutting it down while
/// that connection is open must not wait out the drain timeout (5 s in agent/src/star.rs): the
/// shutdown order is stop accepting, cancel, close, wait idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_star_with_a_pooled_connection_shuts_down_promptly() {
    let grid = Grid::new();
    let src_root = tempfile::tempdir().unwrap();
    let dst_root = tempfile::tempdir().unwrap();
    let src = src_root.path().join("small.bin");
    let dst = dst_root.path().join("small.bin");
    random_file(&src, 1000);
    let a = grid.spawn_star("star-a", &[src_root.path()]).await;
    let b = grid.spawn_star("star-b", &[dst_root.path()]).await;
    let request = grid.replicate_request(&a, &src, &dst, 1);
    let mut events = within(
        "the replication",
        grid.controller_client().control(&b, &request),
    )
    .await
    .unwrap();
    expect_done(events.pop().unwrap());

    let started = Instant::now();
    within("star-b's shutdown", b.shutdown()).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "star-b took {took:?} to shut down"
    );
    a.shutdown().await;
}
