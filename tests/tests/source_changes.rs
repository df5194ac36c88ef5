//! A source file that changes while it is being sent: modified in place, truncated, or replaced
//! by another file. The replication fails with `FailedPrecondition`, the message says the source
//! changed, and nothing is published: the old target is intact and no temporary file remains.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use orbit_tests::*;
use orbit_wire::ErrorCode;

const SIZE: usize = 96 * 1024 * 1024;

#[derive(Debug, Clone, Copy)]
enum Change {
    Modify,
    Truncate,
    Replace,
}

fn change(src: &Path, how: Change) {
    match how {
        Change::Modify => {
            let mut file = std::fs::OpenOptions::new().write(true).open(src).unwrap();
            file.seek(SeekFrom::Start((SIZE - 10) as u64)).unwrap();
            file.write_all(b"changed!").unwrap();
        }
        Change::Truncate => {
            let file = std::fs::OpenOptions::new().write(true).open(src).unwrap();
            file.set_len(1024).unwrap();
        }
        Change::Replace => {
            let other = src.with_extension("new");
            std::fs::write(&other, b"another file").unwrap();
            std::fs::rename(&other, src).unwrap();
        }
    }
}

async fn changed_during_the_transfer(how: Change) {
    let grid = Grid::new();
    let src_root = tempfile::tempdir().unwrap();
    let dst_root = tempfile::tempdir().unwrap();
    let src = src_root.path().join("f.bin");
    let dst = dst_root.path().join("f.bin");
    random_file(&src, SIZE);
    std::fs::write(&dst, b"the old contents").unwrap();
    let a = grid.spawn_star("star-a", &[src_root.path()]).await;
    let b = grid.spawn_star("star-b", &[dst_root.path()]).await;
    let request = grid.replicate_request(&a, &src, &dst, 0);
    let client = grid.controller_client();
    let replication = client.control_at(b.local_addr(), "star-b", &request);
    tokio::pin!(replication);
    first_bytes(dst_root.path(), replication.as_mut()).await;
    change(&src, how);
    let mut events = within("the replication", replication).await.unwrap();
    let error = expect_failed(events.pop().unwrap());
    assert_eq!(
        error.code,
        ErrorCode::FailedPrecondition,
        "{how:?}: {error}"
    );
    assert!(
        error.message.contains("source file changed"),
        "{how:?}: {error}"
    );
    assert_eq!(std::fs::read(&dst).unwrap(), b"the old contents");
    assert_eq!(list_tree(dst_root.path()), vec![PathBuf::from("f.bin")]);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_modified_in_place_fails_the_transfer() {
    changed_during_the_transfer(Change::Modify).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_source_fails_the_transfer() {
    changed_during_the_transfer(Change::Truncate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_source_fails_the_transfer() {
    changed_during_the_transfer(Change::Replace).await;
}

/// Between two attempts (the source star restarted), the file changed: the destination does not
/// splice the new file's tail onto the old one's head; it starts again from zero and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_changed_between_attempts_is_sent_again_from_zero() {
    use orbit_wire::ControlEvent;
    let grid = Grid::new();
    let src_root = tempfile::tempdir().unwrap();
    let dst_root = tempfile::tempdir().unwrap();
    let src = src_root.path().join("f.bin");
    let dst = dst_root.path().join("f.bin");
    random_file(&src, SIZE);
    let mut config_a = grid.star_config("star-a", &[src_root.path()]);
    let a = orbit_agent::Star::spawn(config_a.clone()).await.unwrap();
    let b = grid.spawn_star("star-b", &[dst_root.path()]).await;
    let request = grid.replicate_request(&a, &src, &dst, 30);
    let client = grid.controller_client();
    let replication = client.control_at(b.local_addr(), "star-b", &request);
    tokio::pin!(replication);
    first_bytes(dst_root.path(), replication.as_mut()).await;
    config_a.listen = a.local_addr();
    let (mut events, a) = tokio::join!(within("the replication", replication), async {
        a.shutdown_with_drain(Duration::ZERO).await;
        let digest = random_file(&src, SIZE + 7);
        (orbit_agent::Star::spawn(config_a).await.unwrap(), digest)
    });
    let (a, new_digest) = a;
    let events = events.as_mut().unwrap();
    let (bytes, sha256) = expect_done(events.pop().unwrap());
    assert_eq!((bytes, sha256), ((SIZE + 7) as u64, new_digest));
    assert_eq!(sha256_file(&dst), new_digest);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ControlEvent::Retrying { reason, .. }
            if reason.contains("changed since the transfer began; starting again from zero"))),
        "{events:?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, ControlEvent::Resumed { .. })),
        "{events:?}"
    );
    assert_eq!(list_tree(dst_root.path()), vec![PathBuf::from("f.bin")]);
    a.shutdown().await;
    b.shutdown().await;
}

/// The source remembers the SHA-256 of whole files it has sent, by inode, size, modification and
/// change time, and does not hash an unchanged file again. A file rewritten in place with the
/// same size and its old modification time put back has a new change time: it is hashed again,
/// and the replication carries the new bytes with their own digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_rewritten_with_its_old_mtime_is_not_sent_with_a_remembered_digest() {
    let grid = Grid::new();
    let src_root = tempfile::tempdir().unwrap();
    let dst_root = tempfile::tempdir().unwrap();
    let src = src_root.path().join("f.bin");
    let old_digest = random_file(&src, 1024 * 1024);
    let a = grid.spawn_star("star-a", &[src_root.path()]).await;
    let b = grid.spawn_star("star-b", &[dst_root.path()]).await;
    let client = grid.controller_client();
    let replicate = |name: &'static str| {
        let dst = dst_root.path().join(name);
        let token = grid.token("star-a", "star-b", &wire(&src));
        let (client, a, b, src) = (&client, &a, &b, wire(&src));
        async move {
            let event = client
                .replicate(a, &src, b, &wire(&dst), token, None)
                .await
                .unwrap();
            (expect_done(event).1, sha256_file(&dst))
        }
    };
    assert_eq!(replicate("first").await, (old_digest, old_digest));
    // Sent again unchanged: the remembered digest is the right one.
    assert_eq!(replicate("again").await, (old_digest, old_digest));

    let mtime = std::fs::metadata(&src).unwrap().modified().unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
    (&file).write_all(&vec![0x5a; 1024 * 1024]).unwrap();
    file.set_modified(mtime).unwrap();
    drop(file);
    assert_eq!(std::fs::metadata(&src).unwrap().modified().unwrap(), mtime);
    let new_digest = sha256_file(&src);
    assert_ne!(new_digest, old_digest);

    assert_eq!(replicate("rewritten").await, (new_digest, new_digest));
    a.shutdown().await;
    b.shutdown().await;
}
