//! Only regular files are served. A directory, a FIFO, a socket, a device or a missing file on the
//! source is refused with its code, through a raw read request and through a full replication,
//! and nothing appears in the destination. A FIFO must be refused at once, never waited on. On
//! the destination, a FIFO, socket or device at the target is refused and left as it was, never
//! opened or written through. Hard links: a source file with more than one name is not served; a
//! target that is a hard link is replaced by a new file, and its other name keeps its bytes
//! (docs/SECURITY.md says why).

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

/// Makes a character device with the numbers of /dev/null (1, 3), or returns false where this
/// process may not (no CAP_MKNOD) and the test may skip the device: see [`skip_or_fail`], which
/// fails the test instead under CI.
#[track_caller]
fn mknod_null(path: &Path) -> bool {
    let why = match std::process::Command::new("mknod")
        .arg(path)
        .args(["c", "1", "3"])
        .output()
    {
        Ok(out) if out.status.success() => return true,
        Ok(out) => format!(
            "mknod failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => format!("mknod: {e}"),
    };
    skip_or_fail("root (CAP_MKNOD) to make a character device", why);
    false
}

/// The file type of `path` itself, not following a link.
fn kind(path: &Path) -> std::fs::FileType {
    std::fs::symlink_metadata(path).unwrap().file_type()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_is_refused() {
    let g = Grids::new().await;
    if !mknod_null(&g.src.path().join("a-device")) {
        return g.shutdown().await;
    }
    g.assert_refused_both_ways("a-device", ErrorCode::InvalidArgument)
        .await;
    g.shutdown().await;
}

/// The destination's side: a FIFO, a socket or a device where the target should go is refused at
/// once (a FIFO opened for writing would block), stays what it was, and no temporary file
/// remains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_special_file_at_the_target_is_refused_and_left_alone() {
    use std::os::unix::fs::FileTypeExt;
    let g = Grids::new().await;
    let dst = g.dst.path();
    mkfifo(&dst.join("a-fifo"));
    let _listener = UnixListener::bind(dst.join("a-socket")).unwrap();
    let mut targets = vec!["a-fifo", "a-socket"];
    if mknod_null(&dst.join("a-device")) {
        targets.push("a-device");
    }
    let source = g.source("regular.bin");
    let client = g.grid.controller_client();
    for name in targets {
        let token = g.grid.token("star-a", "star-b", &source);
        let target = wire(&dst.join(name));
        let replication = client.replicate(&g.a, &source, &g.b, &target, token, None);
        let event = tokio::time::timeout(PROMPT, replication)
            .await
            .unwrap_or_else(|_| panic!("{name}: not refused within {PROMPT:?}"))
            .unwrap();
        let error = expect_failed(event);
        assert_eq!(error.code, ErrorCode::InvalidArgument, "{name}: {error}");
        assert!(error.message.contains("not a regular file"), "{error}");
        assert_eq!(part_files(dst), Vec::<PathBuf>::new(), "{name}");
    }
    assert!(kind(&dst.join("a-fifo")).is_fifo());
    assert!(kind(&dst.join("a-socket")).is_socket());
    if dst.join("a-device").exists() {
        assert!(kind(&dst.join("a-device")).is_char_device());
    }
    g.shutdown().await;
}

/// A file inside the root that is a hard link to a file outside it is indistinguishable from
/// that file, so a file with more than one name is never served (PermissionDenied).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_linked_source_file_is_not_served() {
    let g = Grids::new().await;
    let outside = tempfile::tempdir_in(g.src.path().parent().unwrap()).unwrap();
    let secret = outside.path().join("secret.bin");
    std::fs::write(&secret, b"outside every root").unwrap();
    std::fs::hard_link(&secret, g.src.path().join("linked.bin")).unwrap();
    let outcome = g.read("linked.bin").await;
    let error = assert_refused(&outcome, ErrorCode::PermissionDenied);
    assert!(error.message.contains("hard links"), "{error}");
    let error = expect_failed(g.replicate("linked.bin").await);
    assert_eq!(error.code, ErrorCode::PermissionDenied, "{error}");
    assert_eq!(list_tree(g.dst.path()), Vec::<PathBuf>::new());
    g.shutdown().await;
}

/// A target that is a hard link to a file outside the root is replaced by a new file: the
/// outside name keeps its bytes, because the star never writes into an existing file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_linked_target_is_replaced_and_its_other_name_kept() {
    let g = Grids::new().await;
    let outside = tempfile::tempdir_in(g.dst.path().parent().unwrap()).unwrap();
    let secret = outside.path().join("secret.bin");
    std::fs::write(&secret, b"outside every root").unwrap();
    std::fs::hard_link(&secret, g.dst.path().join("copy.bin")).unwrap();
    let (bytes, sha256) = expect_done(g.replicate("regular.bin").await);
    assert_eq!(bytes, 70_000);
    assert_eq!(sha256, sha256_file(&g.dst.path().join("copy.bin")));
    assert_eq!(std::fs::read(&secret).unwrap(), b"outside every root");
    assert_eq!(std::fs::metadata(&secret).unwrap().len(), 18);
    g.shutdown().await;
}
