//! Replications that should succeed: every interesting size, replacing an existing file only
//! after verification, and creating missing parent directories.

use orbit_tests::*;
use orbit_wire::ErrorCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_interesting_size_arrives_intact() {
    let grid = Grid::new();
    let src_root = tempfile::tempdir().unwrap();
    let dst_root = tempfile::tempdir().unwrap();
    let a = grid.spawn_star("star-a", &[src_root.path()]).await;
    let b = grid.spawn_star("star-b", &[dst_root.path()]).await;
    let client = grid.controller_client();
    for size in INTERESTING_SIZES {
        let src = src_root.path().join(format!("f-{size}.bin"));
        let dst = dst_root.path().join(format!("copies/f-{size}.bin"));
        let digest = random_file(&src, size);
        let token = grid.token("star-a", "star-b", &wire(&src));
        let event = client
            .replicate(&a, &wire(&src), &b, &wire(&dst), token, None)
            .await
            .unwrap();
        let (bytes, sha256) = expect_done(event);
        assert_eq!(bytes, size as u64, "size {size}");
        assert_eq!(sha256, digest, "size {size}: reported digest");
        assert_eq!(
            std::fs::read(&dst).unwrap(),
            std::fs::read(&src).unwrap(),
            "size {size}: bytes"
        );
    }
    // Nothing but the copies: no temporary files left.
    let tree = list_tree(dst_root.path());
    assert_eq!(tree.len(), 1 + INTERESTING_SIZES.len(), "{tree:?}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_expected_digest_keeps_the_old_file() {
    let grid = Grid::new();
    let src_root = tempfile::tempdir().unwrap();
    let dst_root = tempfile::tempdir().unwrap();
    let a = grid.spawn_star("star-a", &[src_root.path()]).await;
    let b = grid.spawn_star("star-b", &[dst_root.path()]).await;
    let client = grid.controller_client();
    let src = src_root.path().join("new.bin");
    let dst = dst_root.path().join("target.bin");
    let new_digest = random_file(&src, 300_000);
    std::fs::write(&dst, b"the old contents").unwrap();

    let token = grid.token("star-a", "star-b", &wire(&src));
    let event = client
        .replicate(&a, &wire(&src), &b, &wire(&dst), token, Some([0x11; 32]))
        .await
        .unwrap();
    let error = expect_failed(event);
    assert_eq!(error.code, ErrorCode::DataLoss, "{error}");
    assert!(error.message.contains("checksum mismatch"), "{error}");
    assert_eq!(std::fs::read(&dst).unwrap(), b"the old contents");
    assert_eq!(
        list_tree(dst_root.path()),
        vec![std::path::PathBuf::from("target.bin")]
    );

    // With the right digest, the old file is replaced.
    let token = grid.token("star-a", "star-b", &wire(&src));
    let event = client
        .replicate(&a, &wire(&src), &b, &wire(&dst), token, Some(new_digest))
        .await
        .unwrap();
    expect_done(event);
    assert_eq!(sha256_file(&dst), new_digest);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_read_creates_nothing_at_the_destination() {
    let grid = Grid::new();
    let src_root = tempfile::tempdir().unwrap();
    let dst_root = tempfile::tempdir().unwrap();
    let a = grid.spawn_star("star-a", &[src_root.path()]).await;
    let b = grid.spawn_star("star-b", &[dst_root.path()]).await;
    let missing = src_root.path().join("missing.bin");
    let dst = dst_root.path().join("new/parents/f.bin");
    let token = grid.token("star-a", "star-b", &wire(&missing));
    let event = grid
        .controller_client()
        .replicate(&a, &wire(&missing), &b, &wire(&dst), token, None)
        .await
        .unwrap();
    let error = expect_failed(event);
    assert_eq!(error.code, ErrorCode::NotFound, "{error}");
    // Not even the parent directories: the destination touches its disk only once the source
    // has agreed to send.
    assert_eq!(list_tree(dst_root.path()), Vec::<std::path::PathBuf>::new());
    a.shutdown().await;
    b.shutdown().await;
}
