//! Only regular files are served. A directory, a FIFO, a socket or a missing file on the source is
//! refused with its code, through a raw read request and through a full replication, and nothing
//! appears in the destination. A FIFO must be refused at once, never waited on.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use orbit_agent::Star;
use orbit_tests::*;
use orbit_wire::ErrorCode;
use tempfile::TempDir;

/// How long a refusal may take. Far more than a refusal needs, far less than a hang.
const PROMPT: Duration = Duration::from_secs(5);

struct Grids {
    grid: Grid,
    src: TempDir,
    dst: TempDir,
    a: Star,
    b: Star,
}

impl Grids {
    async fn new() -> Grids {
        let grid = Grid::new();
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        std::fs::create_dir(src.path().join("a-directory")).unwrap();
        std::fs::write(src.path().join("a-directory/inside.bin"), b"inside").unwrap();
        mkfifo(&src.path().join("a-fifo"));
        random_file(&src.path().join("regular.bin"), 70_000);
        let a = grid.spawn_star("star-a", &[src.path()]).await;
        let b = grid.spawn_star("star-b", &[dst.path()]).await;
        Grids {
            grid,
            src,
            dst,
            a,
            b,
        }
    }

    fn source(&self, name: &str) -> String {
        wire(&self.src.path().join(name))
    }

    /// Reads `name` from star-a as star-b, with a valid token for it; fails if that takes longer
    /// than [`PROMPT`].
    async fn read(&self, name: &str) -> ReadOutcome {
        let path = self.source(name);
        let client = self.grid.star_client("star-b");
        let conn = client.connect(self.a.local_addr(), "star-a").await.unwrap();
        let token = self.grid.token("star-a", "star-b", &path);
        let outcome = tokio::time::timeout(PROMPT, client.read(&conn, &read_request(&path, token)))
            .await
            .unwrap_or_else(|_| panic!("reading {name} did not finish within {PROMPT:?}"))
            .unwrap();
        conn.close(0u32.into(), b"done");
        outcome
    }

    /// Replicates `name` from star-a into star-b's root, with a valid token.
    async fn replicate(&self, name: &str) -> orbit_wire::ControlEvent {
        let path = self.source(name);
        let token = self.grid.token("star-a", "star-b", &path);
        let target = wire(&self.dst.path().join("copy.bin"));
        let client = self.grid.controller_client();
        let replication = client.replicate(&self.a, &path, &self.b, &target, token, None);
        tokio::time::timeout(PROMPT, replication)
            .await
            .unwrap_or_else(|_| panic!("replicating {name} did not finish within {PROMPT:?}"))
            .unwrap()
    }

    /// Asserts that `name` is refused with `code` both ways and nothing reaches star-b's root.
    async fn assert_refused_both_ways(&self, name: &str, code: ErrorCode) {
        let outcome = self.read(name).await;
        assert_eq!(
            outcome.error.as_ref().map(|e| e.code),
            Some(code),
            "{name}: {outcome:?}"
        );
        assert_refused(&outcome, code);

        let error = expect_failed(self.replicate(name).await);
        assert_eq!(error.code, code, "{name}: {error}");
        assert!(
            error.message.contains("star-a refused the read"),
            "{name}: the message must name the source: {error}"
        );
        assert_eq!(list_tree(self.dst.path()), Vec::<PathBuf>::new(), "{name}");
    }

    async fn shutdown(self) {
        self.a.shutdown().await;
        self.b.shutdown().await;
    }
}

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo runs");
    assert!(status.success(), "mkfifo {}", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_is_refused() {
    let g = Grids::new().await;
    g.assert_refused_both_ways("a-directory", ErrorCode::InvalidArgument)
        .await;
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_is_refused_without_waiting_for_a_writer() {
    let g = Grids::new().await;
    g.assert_refused_both_ways("a-fifo", ErrorCode::InvalidArgument)
        .await;
    // The star is not wedged: it still serves a regular file at once.
    let outcome = g.read("regular.bin").await;
    assert_eq!(outcome.error, None);
    assert_eq!(outcome.bytes.len(), 70_000);
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_is_refused() {
    let g = Grids::new().await;
    let _listener = UnixListener::bind(g.src.path().join("a-socket")).unwrap();
    g.assert_refused_both_ways("a-socket", ErrorCode::InvalidArgument)
        .await;
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_file_is_not_found() {
    let g = Grids::new().await;
    g.assert_refused_both_ways("missing.bin", ErrorCode::NotFound)
        .await;
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regular_file_is_served() {
    // The control for the refusals above: same stars, same helpers, a regular file.
    let g = Grids::new().await;
    let outcome = g.read("regular.bin").await;
    assert_eq!(outcome.error, None);
    assert!(outcome.bytes == std::fs::read(g.src.path().join("regular.bin")).unwrap());
    let (bytes, _) = expect_done(g.replicate("regular.bin").await);
    assert_eq!(bytes, 70_000);
    assert_eq!(
        sha256_file(&g.dst.path().join("copy.bin")),
        sha256_file(&g.src.path().join("regular.bin"))
    );
    g.shutdown().await;
}
