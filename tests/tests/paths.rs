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
        for sub in ["src/sub", "dst/sub", "outside", "srcx"] {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_refuses_a_symlink_at_the_target() {
    let w = World::new().await;
    let dangling = w.path("dst/dangling");
    let points_to = std::fs::read_link(&dangling).unwrap();
    for rel in ["dst/dangling", "dst/link-file"] {
        w.assert_target_refused(&w.wire(rel), ErrorCode::InvalidArgument)
            .await;
    }
    // The links are still links, to where they pointed; nothing was written through them.
    assert_eq!(std::fs::read_link(&dangling).unwrap(), points_to);
    assert!(
        !points_to.exists(),
        "a file appeared at the dangling target"
    );
    assert_eq!(
        std::fs::read_link(w.path("dst/link-file")).unwrap(),
        w.path("outside/secret.bin")
    );
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
