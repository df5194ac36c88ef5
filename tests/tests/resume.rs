//! Interrupted replications that finish anyway: the source star killed (`kill -9`) and started
//! again in the middle of a large file, with the same `orbitctl replicate` command completing
//! and most of the file not sent again; a source that stays away, ending in `DeadlineExceeded`
//! with nothing left behind; and two replications to one target at once, the second refused.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use orbit_tests::process::{bin, StarProcess};
use orbit_tests::*;
use orbit_wire::{ControlEvent, ErrorCode};

/// `orbitctl init` for star-a and star-b under `root`.
fn init_grid(root: &Path) -> PathBuf {
    orbit_tests::ops::init_grid(root, &["star-a", "star-b"])
}

fn start_star(grid: &Path, name: &str, root: &Path) -> StarProcess {
    let config = grid.join(format!("stars/{name}/star.toml"));
    StarProcess::start(&["--config", &wire(&config), "--allow", &wire(root)])
}

/// The size of the largest temporary file in `dir`, or of the target once it is there.
fn bytes_at(dir: &Path, target: &Path) -> (u64, bool) {
    if target.exists() {
        return (std::fs::metadata(target).map_or(0, |m| m.len()), true);
    }
    let most = part_files(dir)
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .max()
        .unwrap_or(0);
    (most, false)
}

const LARGE: usize = 256 * 1024 * 1024;

#[test]
fn killing_the_source_mid_transfer_resumes_where_it_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = init_grid(tmp.path());
    let (src_root, dst_root) = (tmp.path().join("src"), tmp.path().join("dst"));
    std::fs::create_dir_all(&dst_root).unwrap();
    let src = src_root.join("big.bin");
    let dst = dst_root.join("big.bin");
    let digest = random_file(&src, LARGE);
    let a = start_star(&grid, "star-a", &src_root);
    let _b = start_star(&grid, "star-b", &dst_root);

    let child = Command::new(bin("orbitctl"))
        .args([
            "--grid",
            &wire(&grid),
            "replicate",
            "--json",
            "--timeout",
            "60",
        ])
        .arg(format!("star-a:{}", wire(&src)))
        .arg(format!("star-b:{}", wire(&dst)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Kill the source once a quarter of the file has arrived: the pacing between looks is not
    // what the test waits for; the bound is the deadline.
    let deadline = Instant::now() + STEP_TIMEOUT;
    let killed_at = loop {
        let (bytes, done) = bytes_at(&dst_root, &dst);
        assert!(
            !done,
            "the transfer finished before it could be interrupted"
        );
        if bytes >= (LARGE / 4) as u64 {
            break bytes;
        }
        assert!(Instant::now() < deadline, "no progress at the destination");
        std::thread::sleep(Duration::from_millis(2));
    };
    drop(a); // SIGKILL
    let (after_kill, _) = bytes_at(&dst_root, &dst);
    let _a = start_star(&grid, "star-a", &src_root);

    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let json: serde_json::Value =
        serde_json::from_str(stdout.trim().lines().last().unwrap_or_default()).unwrap();
    assert_eq!(json["ok"], true);
    assert_eq!(json["bytes"], LARGE as u64);
    assert_eq!(json["sha256"], hex::encode(digest));
    assert_eq!(sha256_file(&dst), digest);
    assert!(stderr.contains("star-b: retrying (attempt 1)"), "{stderr}");
    let resumed = json["resumed_bytes"].as_u64().unwrap();
    // Every byte on the destination's disk when the source died is kept; what is sent again is
    // at most what was in flight, far less than half of the file.
    assert!(
        resumed >= killed_at,
        "resumed {resumed}, but {killed_at} bytes had arrived"
    );
    let resent_at_most = after_kill.max(killed_at) + 32 * 1024 * 1024 - resumed;
    assert!(
        resent_at_most < (LARGE / 2) as u64,
        "resumed {resumed} bytes of {LARGE}"
    );
    eprintln!("killed at {killed_at} bytes, resumed {resumed} bytes; stderr:\n{stderr}");
    assert_eq!(list_tree(&dst_root), vec![PathBuf::from("big.bin")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_stays_down_ends_in_deadline_exceeded_and_a_clean_destination() {
    let grid = Grid::new();
    let src_root = tempfile::tempdir().unwrap();
    let dst_root = tempfile::tempdir().unwrap();
    let src = src_root.path().join("f.bin");
    let dst = dst_root.path().join("f.bin");
    random_file(&src, 64 * 1024 * 1024);
    let a = grid.spawn_star("star-a", &[src_root.path()]).await;
    let b = grid.spawn_star("star-b", &[dst_root.path()]).await;
    let request = grid.replicate_request(&a, &src, &dst, 2);
    let client = grid.controller_client();
    let replication = client.control_at(b.local_addr(), "star-b", &request);
    tokio::pin!(replication);
    first_bytes(dst_root.path(), replication.as_mut()).await;
    a.shutdown_with_drain(Duration::ZERO).await;
    let started = Instant::now();
    let mut events = within("the failure", replication).await.unwrap();
    let took = started.elapsed();
    let error = expect_failed(events.pop().unwrap());
    assert_eq!(error.code, ErrorCode::DeadlineExceeded, "{error}");
    assert!(error.message.contains("star-a"), "{error}");
    assert!(took < Duration::from_secs(10), "gave up after {took:?}");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ControlEvent::Retrying { .. })),
        "{events:?}"
    );
    assert_eq!(list_tree(dst_root.path()), Vec::<PathBuf>::new());
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_replication_to_the_same_target_is_refused() {
    let grid = Grid::new();
    let src_root = tempfile::tempdir().unwrap();
    let dst_root = tempfile::tempdir().unwrap();
    let (one, two) = (
        src_root.path().join("one.bin"),
        src_root.path().join("two.bin"),
    );
    let one_digest = random_file(&one, 64 * 1024 * 1024);
    let two_digest = random_file(&two, 64 * 1024 * 1024 + 1);
    let dst = dst_root.path().join("f.bin");
    let a = grid.spawn_star("star-a", &[src_root.path()]).await;
    let b = grid.spawn_star("star-b", &[dst_root.path()]).await;
    let client = grid.controller_client();
    let request = |src: &Path| grid.replicate_request(&a, src, &dst, 0);
    let first_request = request(&one);
    let first = client.control_at(b.local_addr(), "star-b", &first_request);
    tokio::pin!(first);
    within("the first transfer's bytes", async {
        loop {
            tokio::select! {
                ended = &mut first => panic!("ended before any byte arrived: {ended:?}"),
                _ = tokio::time::sleep(Duration::from_millis(2)) => {}
            }
            if !part_files(dst_root.path()).is_empty() {
                break;
            }
        }
    })
    .await;
    let mut second = within(
        "the second replication",
        client.control_at(b.local_addr(), "star-b", &request(&two)),
    )
    .await
    .unwrap();
    let error = expect_failed(second.pop().unwrap());
    assert_eq!(error.code, ErrorCode::AlreadyExists, "{error}");
    assert!(error.message.contains("in progress"), "{error}");
    let mut events = within("the first replication", first).await.unwrap();
    let (_, sha256) = expect_done(events.pop().unwrap());
    assert_eq!(sha256, one_digest);
    assert_eq!(sha256_file(&dst), one_digest);
    assert_ne!(one_digest, two_digest);
    assert_eq!(list_tree(dst_root.path()), vec![PathBuf::from("f.bin")]);
    a.shutdown().await;
    b.shutdown().await;
}
