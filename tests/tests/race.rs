//! Symlink races. While requests run, another thread keeps swapping a directory inside the root
//! with a symlink that points outside, atomically (`renameat2(RENAME_EXCHANGE)`), so the name is
//! at every instant either the real directory or the link. Not one byte from outside may be
//! served, and nothing may ever be written outside, however the swaps and the opens interleave.
//!
//! The source side runs [`ROUNDS`] reads over one connection (about 8 s here); the destination
//! side [`DEST_ROUNDS`] replications over one control connection, each a read, a write, two
//! fsyncs and a rename (about 24 s here, the two sides running in parallel). The run time is
//! printed (run with `--nocapture` to see it).

use std::path::{Path, PathBuf};
use std::time::Instant;

use orbit_tests::*;
use orbit_wire::{ControlEvent, ControlRequest, ErrorCode, ReplicateFile, MAX_CONTROL_FRAME};

/// Reads on the source side.
const ROUNDS: usize = 10_000;
/// Replications on the destination side.
const DEST_ROUNDS: usize = 10_000;

/// Every file under `dir`, with its contents.
fn contents(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    list_tree(dir)
        .into_iter()
        .map(|rel| {
            let full = dir.join(&rel);
            let bytes = if full.is_file() {
                std::fs::read(&full).unwrap()
            } else {
                Vec::new()
            };
            (rel, bytes)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_swapped_for_an_outside_symlink_never_serves_outside_bytes() {
    let grid = Grid::new();
    let world = tempfile::tempdir().unwrap();
    let (root, outside) = (world.path().join("root"), world.path().join("outside"));
    std::fs::create_dir_all(root.join("dir")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    let inside = vec![b'I'; 1000];
    std::fs::write(root.join("dir/file.bin"), &inside).unwrap();
    std::fs::write(outside.join("file.bin"), vec![b'O'; 1000]).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("alt")).unwrap();

    let a = grid.spawn_star("star-a", &[&root]).await;
    let client = grid.star_client("star-b");
    let conn = client.connect(a.local_addr(), "star-a").await.unwrap();
    let path = wire(&root.join("dir/file.bin"));
    let token = grid.token("star-a", "star-b", &path);
    let request = read_request(&path, token);

    let swapper = Swapper::start(root.join("dir"), root.join("alt"));
    let started = Instant::now();
    let (mut served, mut refused) = (0, 0);
    for i in 0..ROUNDS {
        let outcome = client.read(&conn, &request).await.unwrap();
        match &outcome.error {
            None => {
                assert!(
                    outcome.bytes == inside,
                    "request {i}: {} bytes served that are not the inside file's",
                    outcome.bytes.len()
                );
                served += 1;
            }
            Some(e) if e.code == ErrorCode::FailedPrecondition => {
                // The name was swapped while the file opened inside was read: what was sent
                // came from that file, and the source says the path changed.
                assert!(
                    inside.starts_with(&outcome.bytes),
                    "request {i}: bytes sent that are not the inside file's: {e}"
                );
                assert!(e.message.contains("changed"), "request {i}: {e}");
                refused += 1;
            }
            Some(e) => {
                // The link's target is refused (it leaves the root).
                assert_refused(&outcome, ErrorCode::PermissionDenied);
                assert!(e.message.contains("leaves"), "request {i}: {e}");
                refused += 1;
            }
        }
    }
    swapper.stop();
    let took = started.elapsed();
    println!(
        "source: {ROUNDS} reads in {took:?} ({served} served, {refused} refused, {} swaps)",
        swapper.swaps()
    );
    // Both states were hit, or the test proved nothing.
    assert!(
        served > 0 && refused > 0,
        "served {served}, refused {refused}"
    );
    conn.close(0u32.into(), b"done");
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_parent_swapped_for_an_outside_symlink_never_writes_outside() {
    let grid = Grid::new();
    let world = tempfile::tempdir().unwrap();
    let (src, dst, outside) = (
        world.path().join("src"),
        world.path().join("dst"),
        world.path().join("outside"),
    );
    for dir in [&src, &dst.join("dir"), &outside] {
        std::fs::create_dir_all(dir).unwrap();
    }
    random_file(&src.join("file.bin"), 1000);
    std::fs::write(outside.join("kept.bin"), b"outside").unwrap();
    std::os::unix::fs::symlink(&outside, dst.join("alt")).unwrap();
    let before = contents(&outside);

    let a = grid.spawn_star("star-a", &[&src]).await;
    let b = grid.spawn_star("star-b", &[&dst]).await;
    let controller = grid.controller_client();
    let conn = controller.connect(b.local_addr(), "star-b").await.unwrap();
    let source = wire(&src.join("file.bin"));
    let target = wire(&dst.join("dir/copy.bin"));

    let swapper = Swapper::start(dst.join("dir"), dst.join("alt"));
    let started = Instant::now();
    let (mut done, mut refused) = (0, 0);
    for i in 0..DEST_ROUNDS {
        let request = ControlRequest::Replicate(ReplicateFile {
            transfer_id: orbit_wire::TransferId(i as u64),
            source: "star-a".into(),
            source_addr: a.local_addr().to_string(),
            source_path: source.clone(),
            target_path: target.clone(),
            token: grid.token("star-a", "star-b", &source),
            expect_sha256: None,
            timeout_secs: 0,
        });
        match within("replication", control(&conn, &request)).await {
            ControlEvent::Done { .. } => done += 1,
            ControlEvent::Failed(e) => {
                // The parent was the link when it was opened, or when the file was published.
                assert!(
                    matches!(e.code, ErrorCode::PermissionDenied | ErrorCode::NotFound),
                    "replication {i}: {e}"
                );
                refused += 1;
            }
            other => panic!("replication {i}: {other:?}"),
        }
    }
    swapper.stop();
    let took = started.elapsed();
    println!(
        "destination: {DEST_ROUNDS} replications in {took:?} ({done} done, {refused} refused, {} swaps)",
        swapper.swaps()
    );
    assert_eq!(contents(&outside), before, "something was written outside");
    assert!(done > 0 && refused > 0, "done {done}, refused {refused}");
    conn.close(0u32.into(), b"done");
    a.shutdown().await;
    b.shutdown().await;
}

/// Sends one control request on `conn` and returns the final event.
async fn control(conn: &quinn::Connection, request: &ControlRequest) -> ControlEvent {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&orbit_wire::encode_frame(request).unwrap())
        .await
        .unwrap();
    send.finish().unwrap();
    loop {
        let mut prefix = [0u8; 4];
        recv.read_exact(&mut prefix).await.unwrap();
        let len = orbit_wire::decode_len(prefix, MAX_CONTROL_FRAME).unwrap();
        let mut body = vec![0u8; len];
        recv.read_exact(&mut body).await.unwrap();
        let event: ControlEvent = orbit_wire::decode_body(&body).unwrap();
        if event.is_final() {
            return event;
        }
    }
}
