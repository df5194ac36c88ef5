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

/// Issue 16.5: a copy has its source's permission bits (never setuid, setgid or sticky), and
/// replacing a file never makes that name more open than it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_keeps_the_sources_permission_bits_but_never_setuid_nor_opens_up_its_target() {
    use std::os::unix::fs::PermissionsExt;
    let grid = Grid::new();
    let src_root = tempfile::tempdir().unwrap();
    let dst_root = tempfile::tempdir().unwrap();
    let a = grid.spawn_star("star-a", &[src_root.path()]).await;
    let b = grid.spawn_star("star-b", &[dst_root.path()]).await;
    let client = grid.controller_client();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let copy = |name: &'static str, bits: u32| {
        let (src, dst) = (src_root.path().join(name), dst_root.path().join(name));
        let (a, b, client, grid) = (&a, &b, &client, &grid);
        async move {
            let digest = random_file(&src, 100_000);
            std::fs::set_permissions(&src, std::fs::Permissions::from_mode(bits)).unwrap();
            let token = grid.token("star-a", "star-b", &wire(&src));
            let event = client
                .replicate(a, &wire(&src), b, &wire(&dst), token, None)
                .await
                .unwrap();
            assert_eq!(expect_done(event).1, digest, "{name}");
            mode(&dst)
        }
    };
    assert_eq!(copy("private", 0o600).await, 0o600);
    assert_eq!(copy("tool", 0o750).await, 0o750);
    assert_eq!(copy("setuid", 0o4755).await, 0o755, "never setuid");
    assert_eq!(copy("shared", 0o2775).await, 0o775, "never setgid");
    // A target that was 0640 stays at most that, whatever the source says.
    let kept = dst_root.path().join("kept");
    std::fs::write(&kept, b"old").unwrap();
    std::fs::set_permissions(&kept, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(copy("kept", 0o755).await, 0o640 & 0o755);
    a.shutdown().await;
    b.shutdown().await;
}

/// A read asks for the permission bits with a bit of its request id; a requester that does not
/// set it (a star of an earlier release) gets the stream it always got, without them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_sends_the_permission_bits_only_to_a_reader_that_asks() {
    use std::os::unix::fs::PermissionsExt;
    let grid = Grid::new();
    let src_root = tempfile::tempdir().unwrap();
    let src = src_root.path().join("f");
    let digest = random_file(&src, 200_000);
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o4640)).unwrap();
    let a = grid.spawn_star("star-a", &[src_root.path()]).await;
    let client = grid.star_client("star-b");
    let conn = client.connect(a.local_addr(), "star-a").await.unwrap();
    let path = wire(&src);
    for (asks, expect) in [(false, None), (true, Some(0o640))] {
        let mut request = read_request(&path, grid.token("star-a", "star-b", &path));
        if asks {
            request.request_id |= orbit_wire::WANTS_MODE;
        }
        let outcome = client.read(&conn, &request).await.unwrap();
        assert_eq!(outcome.error, None);
        assert_eq!(outcome.sha256, Some(digest));
        assert_eq!(outcome.bytes.len(), 200_000);
        assert_eq!(outcome.mode, expect, "asks: {asks}");
    }
    a.shutdown().await;
}
