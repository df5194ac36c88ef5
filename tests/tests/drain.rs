//! Graceful stop. While a star drains, new commands are refused with `Unavailable` and the
//! transfers in flight finish; a transfer that cannot finish in time stops in a resumable state
//! (its temporary file and journal entry kept) and completes when the star starts again; SIGTERM
//! with a transfer in flight ends `orbit-star` with exit code 0 after the transfer.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use orbit_agent::Star;
use orbit_tests::process::{bin, StarProcess};
use orbit_tests::*;
use orbit_wire::{ControlRequest, ErrorCode};

const LARGE: usize = 64 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_star_refuses_new_commands_and_finishes_those_in_flight() {
    let grid = Grid::new();
    let src_root = tempfile::tempdir().unwrap();
    let dst_root = tempfile::tempdir().unwrap();
    let src = src_root.path().join("f.bin");
    let dst = dst_root.path().join("f.bin");
    let digest = random_file(&src, LARGE);
    let a = grid.spawn_star("star-a", &[src_root.path()]).await;
    let b = grid.spawn_star("star-b", &[dst_root.path()]).await;
    let client = grid.controller_client();
    let (b_addr, b_name) = (b.local_addr(), b.name().to_owned());
    let first = grid.replicate_request(&a, &src, &dst, 0);
    let replication = client.control_at(b_addr, &b_name, &first);
    tokio::pin!(replication);
    first_bytes(dst_root.path(), replication.as_mut()).await;

    // Poll the shutdown once: it marks the star as draining before it first waits.
    let shutdown = b.shutdown();
    tokio::pin!(shutdown);
    tokio::select! {
        biased;
        _ = &mut shutdown => panic!("the shutdown did not wait for the transfer in flight"),
        _ = async {} => {}
    }
    let other = grid.replicate_request(&a, &src, &dst_root.path().join("other.bin"), 0);
    let (refused, events, ()) = tokio::join!(
        client.control_at(b_addr, &b_name, &other),
        within("the transfer in flight", replication),
        within("the shutdown", shutdown),
    );
    let error = expect_failed(refused.unwrap().pop().unwrap());
    assert_eq!(error.code, ErrorCode::Unavailable, "{error}");
    assert!(error.message.contains("shutting down"), "{error}");
    let (bytes, sha256) = expect_done(events.unwrap().pop().unwrap());
    assert_eq!((bytes, sha256), (LARGE as u64, digest));
    assert_eq!(sha256_file(&dst), digest);
    assert_eq!(list_tree(dst_root.path()), vec![PathBuf::from("f.bin")]);
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_stopped_by_shutdown_resumes_when_the_star_starts_again() {
    let grid = Grid::new();
    let src_root = tempfile::tempdir().unwrap();
    let dst_root = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let src = src_root.path().join("f.bin");
    let dst = dst_root.path().join("f.bin");
    let digest = random_file(&src, LARGE);
    let a = grid.spawn_star("star-a", &[src_root.path()]).await;
    let mut config = grid.star_config("star-b", &[dst_root.path()]);
    config.state_dir = Some(state.path().to_owned());
    let b = Star::spawn(config.clone()).await.unwrap();
    let client = grid.controller_client();
    let (b_addr, b_name) = (b.local_addr(), b.name().to_owned());
    let first = grid.replicate_request(&a, &src, &dst, 0);
    let replication = client.control_at(b_addr, &b_name, &first);
    tokio::pin!(replication);
    first_bytes(dst_root.path(), replication.as_mut()).await;

    let (events, ()) = tokio::join!(
        within("the replication", replication),
        within("the shutdown", b.shutdown_with_drain(Duration::ZERO)),
    );
    let error = expect_failed(events.unwrap().pop().unwrap());
    assert_eq!(error.code, ErrorCode::Unavailable, "{error}");
    assert!(error.message.contains("resumes"), "{error}");
    assert!(!dst.exists(), "a partial file was published");
    let parts = part_files(dst_root.path());
    assert_eq!(parts.len(), 1, "the temporary file must be kept to resume");
    let journal = state.path().join("transfers");
    assert_eq!(std::fs::read_dir(&journal).unwrap().count(), 1);

    // Started again, the star finishes the transfer by itself, as a transfer of its own: `wait`
    // finds it under the same id and gets its result.
    let b = Star::spawn(config).await.unwrap();
    let ControlRequest::Replicate(cmd) = &first else {
        unreachable!("replicate_request builds a Replicate")
    };
    let wait = ControlRequest::Wait {
        transfer_id: cmd.transfer_id,
    };
    let mut events = within("the resumed transfer", client.control(&b, &wait))
        .await
        .unwrap();
    assert!(
        matches!(events.first(), Some(orbit_wire::ControlEvent::Following(_))),
        "{events:?}"
    );
    assert_eq!(expect_done(events.pop().unwrap()), (LARGE as u64, digest));
    assert_eq!(sha256_file(&dst), digest);
    assert_eq!(list_tree(dst_root.path()), vec![PathBuf::from("f.bin")]);
    assert_eq!(std::fs::read_dir(&journal).unwrap().count(), 0);
    a.shutdown().await;
    b.shutdown().await;
}

/// Two transfers stopped by a shutdown, and the star started again with room for one: both are
/// resumed, the second once the first frees its slot, and `wait` finds each by its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_transfers_beyond_max_transfers_wait_for_a_slot() {
    let grid = Grid::new();
    let src_root = tempfile::tempdir().unwrap();
    let dst_root = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let files = ["one.bin", "two.bin"];
    let digests: Vec<[u8; 32]> = files
        .iter()
        .enumerate()
        .map(|(i, name)| random_file(&src_root.path().join(name), LARGE + i))
        .collect();
    let a = grid.spawn_star("star-a", &[src_root.path()]).await;
    let mut config = grid.star_config("star-b", &[dst_root.path()]);
    config.state_dir = Some(state.path().to_owned());
    let b = Star::spawn(config.clone()).await.unwrap();
    let client = grid.controller_client();
    let requests: Vec<ControlRequest> = files
        .iter()
        .map(|name| {
            grid.replicate_request(
                &a,
                &src_root.path().join(name),
                &dst_root.path().join(name),
                0,
            )
        })
        .collect();
    let (b_addr, b_name) = (b.local_addr(), b.name().to_owned());
    let both = futures_join(
        client.control_at(b_addr, &b_name, &requests[0]),
        client.control_at(b_addr, &b_name, &requests[1]),
    );
    tokio::pin!(both);
    within("two temporary files with bytes", async {
        loop {
            tokio::select! {
                ended = &mut both => panic!("ended before both had bytes: {ended:?}"),
                _ = tokio::time::sleep(Duration::from_millis(1)) => {}
            }
            let with_bytes = part_files(dst_root.path())
                .iter()
                .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
                .count();
            if with_bytes == 2 {
                break;
            }
        }
    })
    .await;
    let (_, ()) = tokio::join!(
        within("the replications", both),
        within("the shutdown", b.shutdown_with_drain(Duration::ZERO)),
    );
    let journal = state.path().join("transfers");
    assert_eq!(std::fs::read_dir(&journal).unwrap().count(), 2);

    config.limits.max_transfers = 1;
    let b = Star::spawn(config).await.unwrap();
    for ((request, digest), i) in requests.iter().zip(&digests).zip(0..) {
        let ControlRequest::Replicate(cmd) = request else {
            unreachable!("replicate_request builds a Replicate")
        };
        let wait = ControlRequest::Wait {
            transfer_id: cmd.transfer_id,
        };
        let mut events = within("a resumed transfer", client.control(&b, &wait))
            .await
            .unwrap();
        assert_eq!(
            expect_done(events.pop().unwrap()),
            ((LARGE + i) as u64, *digest)
        );
    }
    for (name, digest) in files.iter().zip(&digests) {
        assert_eq!(sha256_file(&dst_root.path().join(name)), *digest);
    }
    assert_eq!(std::fs::read_dir(&journal).unwrap().count(), 0);
    a.shutdown().await;
    b.shutdown().await;
}

/// Both futures to their ends, concurrently.
async fn futures_join<A: std::future::Future, B: std::future::Future>(
    a: A,
    b: B,
) -> (A::Output, B::Output) {
    tokio::join!(a, b)
}

/// `orbitctl init` for star-a and star-b under `root`.
fn init_grid(root: &Path) -> PathBuf {
    orbit_tests::ops::init_grid(root, &["star-a", "star-b"])
}

#[test]
fn sigterm_with_a_transfer_in_flight_finishes_it_and_exits_0() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = init_grid(tmp.path());
    let (src_root, dst_root) = (tmp.path().join("src"), tmp.path().join("dst"));
    std::fs::create_dir_all(&dst_root).unwrap();
    let src = src_root.join("f.bin");
    let dst = dst_root.join("f.bin");
    let digest = random_file(&src, LARGE);
    let config = |name: &str| wire(&grid.join(format!("stars/{name}/star.toml")));
    let _a = StarProcess::start(&["--config", &config("star-a"), "--allow", &wire(&src_root)]);
    let b = StarProcess::start(&["--config", &config("star-b"), "--allow", &wire(&dst_root)]);
    let child = Command::new(bin("orbitctl"))
        .args(["--grid", &wire(&grid), "replicate", "--json"])
        .arg(format!("star-a:{}", wire(&src)))
        .arg(format!("star-b:{}", wire(&dst)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + STEP_TIMEOUT;
    while !part_files(&dst_root)
        .iter()
        .any(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
    {
        assert!(!dst.exists(), "finished before it could be interrupted");
        assert!(std::time::Instant::now() < deadline, "no bytes arrived");
        std::thread::sleep(Duration::from_millis(1));
    }
    let status = b.terminate();
    assert_eq!(status.code(), Some(0), "{status:?}");
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sha256_file(&dst), digest);
    assert_eq!(list_tree(&dst_root), vec![PathBuf::from("f.bin")]);
}
