//! Paths a star must refuse, on both sides of a replication, and the guarantee that nothing is read
//! or written outside its roots. On the source, each read request carries a valid token minted
//! for the exact bad path, so that only the path check refuses. On the destination, each
//! ReplicateFile names a good source file with a valid token and a bad target.
//!
//! Every test runs in one temporary "world":
//!
//! ```text
//! world/src/       star-a's root: payload.bin, sub/, symlinks out
//! world/dst/       star-b's root: sub/, symlinks out
//! world/outside/   secret.bin, which no star may serve or touch
//! world/srcx/      a sibling whose name starts with the root's
//! world/hop/       symlinks that lead back into the roots (for chains that leave and re-enter)
//! ```

use std::os::unix::fs::symlink;
use std::path::PathBuf;

use orbit_agent::Star;
use orbit_tests::*;
use orbit_wire::ErrorCode;
use tempfile::TempDir;

const SECRET: &[u8] = b"outside every root: never served, never overwritten";

struct World {
    grid: Grid,
    dir: TempDir,
    a: Star,
    b: Star,
}

impl World {
    async fn new() -> World {
        let grid = Grid::new();
        let dir = tempfile::tempdir().unwrap();
        let w = dir.path();
        for sub in ["src/sub", "dst/sub", "outside", "srcx", "hop"] {
            std::fs::create_dir_all(w.join(sub)).unwrap();
        }
        random_file(&w.join("src/payload.bin"), 100_000);
        std::fs::write(w.join("outside/secret.bin"), SECRET).unwrap();
        std::fs::write(w.join("srcx/secret.bin"), SECRET).unwrap();
        // Symlinks out of the source root: absolute and relative, to a file and to a directory.
        symlink(w.join("outside/secret.bin"), w.join("src/link-file")).unwrap();
        symlink("../outside/secret.bin", w.join("src/rel-link-file")).unwrap();
        symlink(w.join("outside"), w.join("src/link-dir")).unwrap();
        symlink("../outside", w.join("src/rel-link-dir")).unwrap();
        // And out of the destination root.
        symlink(w.join("outside"), w.join("dst/link-dir")).unwrap();
        symlink("../outside", w.join("dst/rel-link-dir")).unwrap();
        symlink(w.join("outside/secret.bin"), w.join("dst/link-file")).unwrap();
        symlink(w.join("outside/made-by-orbit.bin"), w.join("dst/dangling")).unwrap();
        // Chains that leave the root and come back into it: absolute and relative.
        symlink(w.join("src"), w.join("hop/to-src")).unwrap();
        symlink(w.join("hop/to-src"), w.join("src/chain")).unwrap();
        symlink("../src", w.join("hop/rel-to-src")).unwrap();
        symlink("../hop/rel-to-src", w.join("src/rel-chain")).unwrap();
        symlink(w.join("dst"), w.join("hop/to-dst")).unwrap();
        symlink(w.join("hop/to-dst"), w.join("dst/chain")).unwrap();
        symlink("../dst", w.join("hop/rel-to-dst")).unwrap();
        symlink("../hop/rel-to-dst", w.join("dst/rel-chain")).unwrap();

        let a = grid.spawn_star("star-a", &[&w.join("src")]).await;
        let b = grid.spawn_star("star-b", &[&w.join("dst")]).await;
        World { grid, dir, a, b }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The wire form of `world/<rel>`, without any normalisation.
    fn wire(&self, rel: &str) -> String {
        format!("{}/{rel}", wire(self.dir.path()))
    }

    /// Reads `path` from star-a as star-b with a valid token minted for exactly that path.
    async fn read(&self, path: &str) -> ReadOutcome {
        let client = self.grid.star_client("star-b");
        let conn = client.connect(self.a.local_addr(), "star-a").await.unwrap();
        let token = self.grid.token("star-a", "star-b", path);
        let outcome = within("read", client.read(&conn, &read_request(path, token)))
            .await
            .unwrap();
        conn.close(0u32.into(), b"done");
        outcome
    }

    /// Asserts that reading `path` from star-a is refused with `code` and serves nothing.
    async fn assert_read_refused(&self, path: &str, code: ErrorCode) {
        let outcome = self.read(path).await;
        let error = outcome
            .error
            .as_ref()
            .unwrap_or_else(|| panic!("{path}: expected {code:?}, got {outcome:?}"));
        assert_eq!(error.code, code, "{path}: {error}");
        assert_refused(&outcome, code);
    }

    /// Replicates star-a's payload.bin to `target` on star-b, with a valid token.
    async fn replicate_to(&self, target: &str) -> orbit_wire::ControlEvent {
        let source = self.wire("src/payload.bin");
        let token = self.grid.token("star-a", "star-b", &source);
        self.grid
            .controller_client()
            .replicate(&self.a, &source, &self.b, target, token, None)
            .await
            .unwrap()
    }

    /// Asserts that replicating to `target` fails with `code` and changes nothing in the world.
    async fn assert_target_refused(&self, target: &str, code: ErrorCode) {
        let before = list_tree(self.dir.path());
        let error = expect_failed(self.replicate_to(target).await);
        assert_eq!(error.code, code, "{target}: {error}");
        assert_eq!(
            list_tree(self.dir.path()),
            before,
            "{target}: something was created or removed"
        );
        assert_eq!(
            std::fs::read(self.path("outside/secret.bin")).unwrap(),
            SECRET
        );
    }

    async fn shutdown(self) {
        self.a.shutdown().await;
        self.b.shutdown().await;
    }
}

/// The paths that break one validation rule each, built under `root` (a wire path): NUL, a
/// trailing `/`, `//` at the end, an over-long component and an over-long path.
fn malformed_under(root: &str) -> Vec<(&'static str, String)> {
    vec![
        ("NUL", format!("{root}/pay\0load.bin")),
        ("NUL at the end", format!("{root}/payload.bin\0")),
        ("trailing /", format!("{root}/sub/")),
        ("trailing //", format!("{root}/sub//")),
        (
            "component over 255 bytes",
            format!("{root}/{}", "c".repeat(orbit_wire::MAX_COMPONENT_LEN + 1)),
        ),
        (
            "path over 4096 bytes",
            format!(
                "{root}/{}",
                vec!["d"; orbit_wire::MAX_PATH_LEN / 2].join("/")
            ),
        ),
    ]
}

/// The marker [`with_invalid_utf8`] replaces.
const MARKER: &str = "NOT-UTF8";

/// A frame carrying `msg` with the first two bytes of [`MARKER`] in its encoding replaced by
/// bytes that are not UTF-8: what a peer that does not use these types could send.
fn with_invalid_utf8<T: serde::Serialize>(msg: &T) -> Vec<u8> {
    let mut frame = orbit_wire::encode_frame(msg).unwrap();
    let at = frame
        .windows(MARKER.len())
        .position(|w| w == MARKER.as_bytes())
        .expect("the marker is in the frame");
    frame[at] = 0xff;
    frame[at + 1] = 0xfe;
    frame
}

/// `path` without its leading `/`: relative, and naming the same file if the star's working
/// directory were `/`.
fn relative(path: &str) -> String {
    path.trim_start_matches('/').to_owned()
}

// ---- source ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_refuses_dot_dot_components() {
    let w = World::new().await;
    // Would resolve to a real file inside the root, and to one outside it.
    for rel in [
        "src/sub/../payload.bin",
        "src/../outside/secret.bin",
        "src/sub/../../outside/secret.bin",
    ] {
        w.assert_read_refused(&w.wire(rel), ErrorCode::InvalidArgument)
            .await;
    }
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_refuses_paths_that_need_normalising() {
    let w = World::new().await;
    for rel in ["src/./payload.bin", "src//payload.bin"] {
        w.assert_read_refused(&w.wire(rel), ErrorCode::InvalidArgument)
            .await;
    }
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_refuses_a_relative_path() {
    let w = World::new().await;
    for path in [
        relative(&w.wire("src/payload.bin")),
        "payload.bin".to_owned(),
    ] {
        w.assert_read_refused(&path, ErrorCode::InvalidArgument)
            .await;
    }
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_refuses_a_path_outside_every_root() {
    let w = World::new().await;
    // Including a sibling whose name merely starts with the root's name.
    for rel in ["outside/secret.bin", "srcx/secret.bin"] {
        w.assert_read_refused(&w.wire(rel), ErrorCode::PermissionDenied)
            .await;
    }
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_refuses_a_symlink_to_an_outside_file() {
    let w = World::new().await;
    for rel in ["src/link-file", "src/rel-link-file"] {
        w.assert_read_refused(&w.wire(rel), ErrorCode::PermissionDenied)
            .await;
    }
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_refuses_a_symlinked_directory_that_leaves_the_root() {
    let w = World::new().await;
    for rel in ["src/link-dir/secret.bin", "src/rel-link-dir/secret.bin"] {
        w.assert_read_refused(&w.wire(rel), ErrorCode::PermissionDenied)
            .await;
    }
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_serves_the_plain_path() {
    // The control for the refusals above: the same star, token and client serve a plain path.
    let w = World::new().await;
    let outcome = w.read(&w.wire("src/payload.bin")).await;
    assert_eq!(outcome.error, None);
    assert!(outcome.bytes == std::fs::read(w.path("src/payload.bin")).unwrap());
    w.shutdown().await;
}

// ---- destination -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_refuses_dot_dot_components() {
    let w = World::new().await;
    for rel in [
        "dst/sub/../copy.bin",
        "dst/../outside/copy.bin",
        "dst/sub/../../outside/secret.bin",
    ] {
        w.assert_target_refused(&w.wire(rel), ErrorCode::InvalidArgument)
            .await;
    }
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_refuses_a_relative_path() {
    let w = World::new().await;
    for path in [relative(&w.wire("dst/copy.bin")), "copy.bin".to_owned()] {
        w.assert_target_refused(&path, ErrorCode::InvalidArgument)
            .await;
    }
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_refuses_a_path_outside_every_root() {
    let w = World::new().await;
    for rel in [
        "outside/copy.bin",
        "outside/secret.bin",
        "srcx/copy.bin",
        "dstx/copy.bin",
    ] {
        w.assert_target_refused(&w.wire(rel), ErrorCode::PermissionDenied)
            .await;
    }
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_refuses_a_symlinked_directory_that_leaves_the_root() {
    let w = World::new().await;
    for rel in [
        "dst/link-dir/copy.bin",
        "dst/link-dir/secret.bin",
        "dst/link-dir/deeper/copy.bin",
        "dst/rel-link-dir/copy.bin",
        "dst/rel-link-dir/deeper/copy.bin",
    ] {
        w.assert_target_refused(&w.wire(rel), ErrorCode::PermissionDenied)
            .await;
    }
    assert_eq!(
        list_tree(&w.path("outside")),
        vec![PathBuf::from("secret.bin")]
    );
    w.shutdown().await;
}

/// A symlink at the target is replaced by the new file, never followed: whatever it pointed at
/// (a file outside, a dangling name outside) is left exactly as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_replaces_a_symlink_at_the_target() {
    let w = World::new().await;
    let payload = std::fs::read(w.path("src/payload.bin")).unwrap();
    for rel in ["dst/dangling", "dst/link-file"] {
        let (bytes, _) = expect_done(w.replicate_to(&w.wire(rel)).await);
        assert_eq!(bytes, payload.len() as u64);
        let target = w.path(rel);
        assert!(!target.is_symlink(), "{rel} is still a link");
        assert!(std::fs::read(&target).unwrap() == payload, "{rel}");
    }
    // Nothing was written through the links: the outside file is intact, and the dangling
    // link's target was never created.
    assert_eq!(std::fs::read(w.path("outside/secret.bin")).unwrap(), SECRET);
    assert_eq!(
        list_tree(&w.path("outside")),
        vec![PathBuf::from("secret.bin")]
    );
    assert_eq!(part_files(&w.path("dst")), Vec::<PathBuf>::new());
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_creates_missing_parent_directories() {
    let w = World::new().await;
    let target = "dst/new/deeper/still/copy.bin";
    let (bytes, sha256) = expect_done(w.replicate_to(&w.wire(target)).await);
    assert_eq!(bytes, 100_000);
    assert_eq!(sha256, sha256_file(&w.path("src/payload.bin")));
    assert!(
        std::fs::read(w.path(target)).unwrap() == std::fs::read(w.path("src/payload.bin")).unwrap()
    );
    assert!(w.path("dst/new/deeper/still").is_dir());
    assert_eq!(
        part_files(&w.path("dst/new/deeper/still")),
        Vec::<PathBuf>::new()
    );
    assert_eq!(
        list_tree(&w.path("outside")),
        vec![PathBuf::from("secret.bin")]
    );
    w.shutdown().await;
}

// ---- hostile paths of issue 3 ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_refuses_nul_trailing_slash_and_over_long_paths() {
    let w = World::new().await;
    for (what, path) in malformed_under(&w.wire("src")) {
        let outcome = w.read(&path).await;
        let error = assert_refused(&outcome, ErrorCode::InvalidArgument);
        assert!(!error.message.is_empty(), "{what}");
    }
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_refuses_nul_trailing_slash_and_over_long_paths() {
    let w = World::new().await;
    for (what, path) in malformed_under(&w.wire("dst")) {
        let before = list_tree(w.dir.path());
        let error = expect_failed(w.replicate_to(&path).await);
        assert_eq!(error.code, ErrorCode::InvalidArgument, "{what}: {error}");
        assert_eq!(
            list_tree(w.dir.path()),
            before,
            "{what}: something was created"
        );
    }
    w.shutdown().await;
}

/// A path is a Rust `String` on the wire: bytes that are not UTF-8 make the frame undecodable, so
/// the request is refused as a whole before any path check or file system call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_utf8_paths_are_refused_on_both_sides() {
    let w = World::new().await;
    // Source: the read request stream is stopped with InvalidArgument and no data stream opens.
    let path = w.wire(&format!("src/{MARKER}"));
    let request = read_request(&path, w.grid.token("star-a", "star-b", &path));
    let client = w.grid.star_client("star-b");
    let conn = client.connect(w.a.local_addr(), "star-a").await.unwrap();
    let mut send = conn.open_uni().await.unwrap();
    send.write_all(&with_invalid_utf8(&request)).await.unwrap();
    send.finish().unwrap();
    // Stopped with InvalidArgument, or (when the whole stream had already arrived) simply
    // acknowledged: the proof that nothing was answered is the next data stream, below.
    let stopped = within("the star to end the stream", send.stopped()).await;
    let invalid = quinn::VarInt::from_u32(ErrorCode::InvalidArgument.as_u32());
    assert!(
        matches!(stopped, Ok(None)) || matches!(stopped, Ok(Some(code)) if code == invalid),
        "{stopped:?}"
    );
    // The connection is still good for a proper request, and the first data stream the star
    // opens is that request's answer: the bad one got none.
    let good = w.wire("src/payload.bin");
    let outcome = client
        .read(
            &conn,
            &read_request(&good, w.grid.token("star-a", "star-b", &good)),
        )
        .await
        .unwrap();
    assert_eq!(outcome.error, None);
    conn.close(0u32.into(), b"done");

    // Destination: the control command fails with InvalidArgument and nothing is created.
    let before = list_tree(w.dir.path());
    let source = w.wire("src/payload.bin");
    let command = orbit_wire::ControlRequest::Replicate(orbit_wire::ReplicateFile {
        transfer_id: orbit_wire::TransferId(1),
        source: "star-a".into(),
        source_addr: w.a.local_addr().to_string(),
        source_path: source.clone(),
        target_path: w.wire(&format!("dst/{MARKER}")),
        token: w.grid.token("star-a", "star-b", &source),
        expect_sha256: None,
        timeout_secs: 0,
    });
    let controller = w.grid.controller_client();
    let conn = controller
        .connect(w.b.local_addr(), "star-b")
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&with_invalid_utf8(&command)).await.unwrap();
    send.finish().unwrap();
    let answer = within("the answer", recv.read_to_end(64 * 1024))
        .await
        .unwrap();
    let event: orbit_wire::ControlEvent = orbit_wire::decode_body(&answer[4..]).unwrap();
    assert_eq!(expect_failed(event).code, ErrorCode::InvalidArgument);
    assert_eq!(list_tree(w.dir.path()), before);
    conn.close(0u32.into(), b"done");
    w.shutdown().await;
}

/// A symlink chain that leaves the root and comes back into it is refused although its end is
/// inside the root: resolution must stay beneath the root at every step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_chain_that_leaves_and_re_enters_the_root_is_refused() {
    let w = World::new().await;
    for rel in ["src/chain/payload.bin", "src/rel-chain/payload.bin"] {
        w.assert_read_refused(&w.wire(rel), ErrorCode::PermissionDenied)
            .await;
    }
    for rel in ["dst/chain/copy.bin", "dst/rel-chain/copy.bin"] {
        w.assert_target_refused(&w.wire(rel), ErrorCode::PermissionDenied)
            .await;
    }
    w.shutdown().await;
}

/// A root given through a symlink is served under both its names, and is pinned when the star
/// starts: pointing the link elsewhere afterwards does not move the root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_reached_through_a_symlink_is_pinned_at_start() {
    let grid = Grid::new();
    let world = tempfile::tempdir().unwrap();
    let w = world.path();
    std::fs::create_dir_all(w.join("real")).unwrap();
    std::fs::create_dir_all(w.join("outside")).unwrap();
    std::fs::write(w.join("real/inside.bin"), b"inside").unwrap();
    std::fs::write(w.join("outside/inside.bin"), SECRET).unwrap();
    std::fs::write(w.join("outside/secret.bin"), SECRET).unwrap();
    symlink(w.join("real"), w.join("root-link")).unwrap();
    let a = grid.spawn_star("star-a", &[&w.join("root-link")]).await;
    let client = grid.star_client("star-b");
    let conn = client.connect(a.local_addr(), "star-a").await.unwrap();
    let read = |rel: &str| {
        let path = format!("{}/{rel}", wire(w));
        let request = read_request(&path, grid.token("star-a", "star-b", &path));
        let (client, conn) = (&client, &conn);
        async move { within("read", client.read(conn, &request)).await.unwrap() }
    };
    for rel in ["root-link/inside.bin", "real/inside.bin"] {
        let outcome = read(rel).await;
        assert_eq!(outcome.error, None, "{rel}");
        assert_eq!(outcome.bytes, b"inside", "{rel}");
    }
    // The operator's link now points outside; the star still serves its original root.
    std::fs::remove_file(w.join("root-link")).unwrap();
    symlink(w.join("outside"), w.join("root-link")).unwrap();
    let outcome = read("root-link/inside.bin").await;
    assert_eq!(outcome.bytes, b"inside");
    assert_refused(&read("root-link/secret.bin").await, ErrorCode::NotFound);
    conn.close(0u32.into(), b"done");
    a.shutdown().await;
}

/// `--allow-read`: a root served but never stored into. A replication into it is refused with
/// PermissionDenied and creates nothing; the same star still serves from it and stores under its
/// `--allow` root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_under_a_read_only_root_is_refused() {
    let grid = Grid::new();
    let world = tempfile::tempdir().unwrap();
    let w = world.path();
    for sub in ["src", "store", "public"] {
        std::fs::create_dir_all(w.join(sub)).unwrap();
    }
    random_file(&w.join("src/payload.bin"), 70_000);
    std::fs::write(w.join("public/served.bin"), b"served, never overwritten").unwrap();
    let a = grid.spawn_star("star-a", &[&w.join("src")]).await;
    let mut config = grid.star_config("star-b", &[&w.join("store")]);
    config.read_only_roots = vec![w.join("public")];
    let b = orbit_agent::Star::spawn(config).await.unwrap();
    let client = grid.controller_client();
    let source = wire(&w.join("src/payload.bin"));

    for target in [
        "public/new.bin",
        "public/deeper/new.bin",
        "public/served.bin",
    ] {
        let before = list_tree(w);
        let token = grid.token("star-a", "star-b", &source);
        let event = client
            .replicate(&a, &source, &b, &wire(&w.join(target)), token, None)
            .await
            .unwrap();
        let error = expect_failed(event);
        assert_eq!(error.code, ErrorCode::PermissionDenied, "{target}: {error}");
        assert!(error.message.contains("read-only"), "{error}");
        assert_eq!(list_tree(w), before, "{target}: something was created");
    }
    assert_eq!(
        std::fs::read(w.join("public/served.bin")).unwrap(),
        b"served, never overwritten"
    );
    // The controls: star-b serves from the read-only root, and stores under --allow.
    let path = wire(&w.join("public/served.bin"));
    let reader = grid.star_client("star-a");
    let conn = reader.connect(b.local_addr(), "star-b").await.unwrap();
    let outcome = reader
        .read(
            &conn,
            &read_request(&path, grid.token("star-b", "star-a", &path)),
        )
        .await
        .unwrap();
    assert_eq!(outcome.bytes, b"served, never overwritten");
    conn.close(0u32.into(), b"done");
    let token = grid.token("star-a", "star-b", &source);
    let target = wire(&w.join("store/copy.bin"));
    expect_done(
        client
            .replicate(&a, &source, &b, &target, token, None)
            .await
            .unwrap(),
    );
    a.shutdown().await;
    b.shutdown().await;
}
