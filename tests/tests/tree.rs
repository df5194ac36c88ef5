//! Whole trees: a directory replicated in one command, with every guarantee a single file has.
//! Real stars on 127.0.0.1:0, real trees in temp dirs; the command goes to star-b as
//! `ControlRequest::ReplicateTree`, as orbitctl sends it.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use orbit_agent::Star;
use orbit_tests::*;
use orbit_wire::token::{self, TreeClaims, TREE_TOKEN_VERSION};
use orbit_wire::tree::{
    EntryKind, FetchFile, FetchRequest, Filter, ItemAction, ListFrame, ListRequest, ReplicateTree,
    SyncLevel, TreeSummary,
};
use orbit_wire::{ControlEvent, ControlRequest, DataFrame, ErrorCode, TransferId, WireError};

/// Two stars: star-a serves `src`, star-b stores under `dst`.
struct Pair {
    grid: Grid,
    src: tempfile::TempDir,
    dst: tempfile::TempDir,
    a: Star,
    b: Star,
}

impl Pair {
    async fn new() -> Pair {
        let grid = Grid::new();
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let a = grid.spawn_star("star-a", &[src.path()]).await;
        let b = grid.spawn_star("star-b", &[dst.path()]).await;
        Pair {
            grid,
            src,
            dst,
            a,
            b,
        }
    }

    fn source(&self) -> PathBuf {
        self.src.path().join("data")
    }

    fn target(&self) -> PathBuf {
        self.dst.path().join("backup")
    }

    fn token(&self, path: &str, filter: Filter) -> String {
        tree_token(&self.grid, "star-a", "star-b", path, filter)
    }

    /// The command to replicate `data` into `backup`, with `filter` and the defaults.
    fn command(&self, filter: Filter) -> ReplicateTree {
        let source = wire(&self.source());
        ReplicateTree {
            transfer_id: TransferId(rand::random()),
            source: "star-a".into(),
            source_addr: self.a.local_addr().to_string(),
            token: self.token(&source, filter),
            source_path: source,
            target_path: wire(&self.target()),
            sync: SyncLevel::Mtime,
            delete: false,
            max_delete: None,
            dry_run: false,
            itemize: false,
            timeout_secs: 0,
        }
    }

    async fn run(&self, cmd: ReplicateTree) -> (TreeSummary, Vec<ControlEvent>) {
        let request = ControlRequest::ReplicateTree(cmd);
        let client = self.grid.controller_client();
        let mut events = within("tree replication", client.control(&self.b, &request))
            .await
            .unwrap();
        match events.pop().unwrap() {
            ControlEvent::TreeDone(summary) => (summary, events),
            other => panic!("expected TreeDone, got {other:?}"),
        }
    }

    async fn run_failed(&self, cmd: ReplicateTree) -> WireError {
        let request = ControlRequest::ReplicateTree(cmd);
        let client = self.grid.controller_client();
        let mut events = within("tree replication", client.control(&self.b, &request))
            .await
            .unwrap();
        expect_failed(events.pop().unwrap())
    }

    async fn shutdown(self) {
        self.a.shutdown().await;
        self.b.shutdown().await;
    }
}

fn tree_token(grid: &Grid, audience: &str, holder: &str, path: &str, filter: Filter) -> String {
    let key = grid.key(audience);
    let claims = TreeClaims {
        version: TREE_TOKEN_VERSION,
        key_id: key.key_id(),
        audience: audience.into(),
        holder: holder.into(),
        path: path.into(),
        filter,
        issued_at: unix_now(),
        not_after: unix_now() + 60,
        nonce: rand::random(),
    };
    token::sign_tree(&claims, &key)
}

fn name(bytes: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(bytes))
}

fn write(path: &Path, bytes: &[u8], mode: u32, mtime: i64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    set_mtime(path, mtime, 123_456_789);
}

fn set_mtime(path: &Path, sec: i64, nsec: i64) {
    let t = rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// A tree of every interesting shape: empty files, sizes around the 64 KiB chunk, a file large
/// enough for a stream of its own, empty directories, deep nesting, names with spaces, a
/// newline and bytes that are not UTF-8, and a spread of modes. Returns how many files.
fn mixed_tree(root: &Path) -> usize {
    let mut files = 0;
    let mut add = |rel: &[u8], size: usize, mode: u32| {
        let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        write(
            &root.join(name(rel)),
            &data,
            mode,
            1_600_000_000 + size as i64,
        );
        files += 1;
    };
    add(b"empty", 0, 0o644);
    add(b"one", 1, 0o600);
    for size in [65_535, 65_536, 65_537, 131_072] {
        add(format!("sizes/{size}.bin").as_bytes(), size, 0o640);
    }
    add(b"large/big.bin", 3 * 1024 * 1024 + 7, 0o644);
    add(b"with space/a file.txt", 100, 0o755);
    add(b"odd/new\nline", 10, 0o644);
    add(b"odd/not-utf8-\xff\xfe", 11, 0o644);
    add(b"odd/\xc3\xa9t\xc3\xa9", 12, 0o644);
    let deep: Vec<String> = (0..20).map(|i| format!("d{i}")).collect();
    add(format!("{}/leaf", deep.join("/")).as_bytes(), 5, 0o444);
    for i in 0..50 {
        add(format!("many/f{i:03}").as_bytes(), 1000 + i, 0o644);
    }
    std::fs::create_dir_all(root.join("empty-dir/inner-empty")).unwrap();
    std::fs::set_permissions(
        root.join("empty-dir"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    for dir in ["empty-dir/inner-empty", "empty-dir", "sizes", "odd"] {
        set_mtime(&root.join(dir), 1_500_000_000, 5);
    }
    files
}

/// What a tree holds, by name: kind, bytes, permission bits and modification time (directories'
/// times too, files' in nanoseconds).
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (char, Vec<u8>, u32, i64, i64)> {
    let mut out = BTreeMap::new();
    for path in list_all(root) {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let rel = path.strip_prefix(root).unwrap().to_path_buf();
        let (kind, bytes) = if meta.file_type().is_symlink() {
            (
                'l',
                std::fs::read_link(&path)
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec(),
            )
        } else if meta.is_dir() {
            ('d', Vec::new())
        } else {
            ('f', std::fs::read(&path).unwrap())
        };
        let mode = if kind == 'l' { 0 } else { meta.mode() & 0o7777 };
        let mtime = if kind == 'l' {
            (0, 0)
        } else {
            (meta.mtime(), meta.mtime_nsec())
        };
        out.insert(rel, (kind, bytes, mode, mtime.0, mtime.1));
    }
    out
}

/// The names beneath `root`, with each file's bytes.
fn contents(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    snapshot(root)
        .into_iter()
        .map(|(name, (_, bytes, ..))| (name, bytes))
        .collect()
}

/// Every path beneath `root`, directories included, never following links.
fn list_all(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if std::fs::symlink_metadata(&path).unwrap().is_dir() {
                pending.push(path.clone());
            }
            out.push(path);
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_tree_arrives_identical_and_a_second_run_copies_nothing() {
    let p = Pair::new().await;
    let files = mixed_tree(&p.source());
    let (summary, _) = p.run(p.command(Filter::default())).await;
    assert_eq!(summary.failed, 0, "{:?}", summary.failures);
    assert_eq!(summary.copied, files as u64);
    // sizes, large, with space, odd, 20 nested, many, empty-dir and the one inside it.
    assert_eq!(summary.dirs, 27);
    assert_eq!(snapshot(&p.target()), snapshot(&p.source()));
    assert_eq!(part_files(&p.target()), Vec::<PathBuf>::new());

    // Nothing changed: nothing is sent again.
    let (again, _) = p.run(p.command(Filter::default())).await;
    assert_eq!(
        (again.copied, again.skipped, again.failed),
        (0, files as u64, 0)
    );
    assert_eq!(again.bytes, 0);
    assert_eq!(snapshot(&p.target()), snapshot(&p.source()));
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_bits_arrive_but_never_setuid_setgid_or_sticky() {
    let p = Pair::new().await;
    let src = p.source();
    write(&src.join("suid"), b"s", 0o4755, 1_600_000_000);
    write(&src.join("sgid"), b"g", 0o2750, 1_600_000_000);
    write(&src.join("plain"), b"p", 0o640, 1_600_000_000);
    std::fs::create_dir_all(src.join("sticky")).unwrap();
    std::fs::set_permissions(src.join("sticky"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let (s, _) = p.run(p.command(Filter::default())).await;
    assert_eq!(s.failed, 0, "{:?}", s.failures);
    let mode = |n: &str| std::fs::metadata(p.target().join(n)).unwrap().mode() & 0o7777;
    assert_eq!(
        (mode("suid"), mode("sgid"), mode("plain"), mode("sticky")),
        (0o755, 0o750, 0o640, 0o777)
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sync_level_copies_a_changed_file_as_defined() {
    let p = Pair::new().await;
    let src = p.source();
    write(&src.join("same-size"), b"aaaa", 0o644, 1_600_000_000);
    write(&src.join("other-size"), b"bbbb", 0o644, 1_600_000_000);
    write(&src.join("touched"), b"cccc", 0o644, 1_600_000_000);
    let (first, _) = p.run(p.command(Filter::default())).await;
    assert_eq!(first.copied, 3);
    // At the source: same size and mtime but other bytes; another size; same bytes, new mtime.
    write(&src.join("same-size"), b"AAAA", 0o644, 1_600_000_000);
    write(&src.join("other-size"), b"bbbbb", 0o644, 1_600_000_000);
    write(&src.join("touched"), b"cccc", 0o644, 1_700_000_000);
    let dst = p.target();
    let read = |n: &str| std::fs::read(dst.join(n)).unwrap();
    let at = |level| {
        let mut cmd = p.command(Filter::default());
        cmd.sync = level;
        cmd
    };
    // exists: nothing is copied.
    let (s, _) = p.run(at(SyncLevel::Exists)).await;
    assert_eq!((s.copied, s.skipped), (0, 3));
    // size: only the file whose size changed.
    let (s, _) = p.run(at(SyncLevel::Size)).await;
    assert_eq!((s.copied, s.skipped), (1, 2));
    assert_eq!(read("other-size"), b"bbbbb");
    // mtime: the touched file, not the one rewritten with its old size and time.
    let (s, _) = p.run(at(SyncLevel::Mtime)).await;
    assert_eq!((s.copied, s.skipped), (1, 2));
    assert_eq!(read("same-size"), b"aaaa");
    // checksum: the file whose bytes differ.
    let (s, _) = p.run(at(SyncLevel::Checksum)).await;
    assert_eq!((s.copied, s.skipped), (1, 2));
    assert_eq!(read("same-size"), b"AAAA");
    assert_eq!(snapshot(&dst), snapshot(&src));
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_removes_exactly_what_is_absent_and_never_after_an_error() {
    let p = Pair::new().await;
    let src = p.source();
    write(&src.join("keep"), b"k", 0o644, 1_600_000_000);
    write(&src.join("dir/keep"), b"k", 0o644, 1_600_000_000);
    p.run(p.command(Filter::default())).await;
    let dst = p.target();
    write(&dst.join("extra"), b"x", 0o644, 1_600_000_000);
    write(&dst.join("dir/extra"), b"x", 0o644, 1_600_000_000);
    write(&dst.join("gone/deep/file"), b"x", 0o644, 1_600_000_000);
    write(
        &dst.join("skip.tmp"),
        b"excluded, so out of scope",
        0o644,
        1_600_000_000,
    );
    let filter = Filter {
        exclude: vec!["*.tmp".into()],
        ..Filter::default()
    };
    let deleting = |max| {
        let mut cmd = p.command(filter.clone());
        cmd.delete = true;
        cmd.max_delete = max;
        cmd
    };
    // Five entries are absent (extra, dir/extra, gone, gone/deep, gone/deep/file): over the
    // limit, nothing goes.
    let before = contents(&dst);
    let (s, _) = p.run(deleting(Some(4))).await;
    assert_eq!(s.deleted, 0);
    let why = s.delete_skipped.expect("delete refused");
    assert!(why.message.contains("--max-delete 4"), "{why}");
    assert_eq!(contents(&dst), before);

    // An error anywhere: nothing goes. A directory in the way of a new source file fails it.
    write(&src.join("blocked"), b"b", 0o644, 1_600_000_000);
    std::fs::create_dir(dst.join("blocked")).unwrap();
    let (s, _) = p.run(deleting(None)).await;
    assert_eq!((s.failed, s.deleted), (1, 0));
    assert!(s.delete_skipped.is_some());
    assert!(dst.join("extra").exists());
    std::fs::remove_dir(dst.join("blocked")).unwrap();

    // Dry run: reports, removes nothing.
    let mut dry = deleting(None);
    dry.dry_run = true;
    dry.itemize = true;
    let (s, events) = p.run(dry).await;
    assert_eq!(s.deleted, 5);
    assert!(dst.join("extra").exists());
    let deleted_items = events
        .iter()
        .filter(|e| matches!(e, ControlEvent::Item(i) if i.action == ItemAction::Deleted))
        .count();
    assert_eq!(deleted_items, 5);

    // A temporary file a crashed tree left goes too, without counting as a deletion.
    write(
        &dst.join("dir/.orbit-tree-0123456789abcdef.part"),
        b"half",
        0o600,
        1_600_000_000,
    );
    let (s, _) = p.run(deleting(Some(5))).await;
    assert_eq!((s.failed, s.deleted), (0, 5), "{:?}", s.failures);
    let mut left: Vec<PathBuf> = snapshot(&dst).into_keys().collect();
    left.sort();
    let want: Vec<PathBuf> = ["blocked", "dir", "dir/keep", "keep", "skip.tmp"]
        .iter()
        .map(PathBuf::from)
        .collect();
    assert_eq!(left, want);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_are_skipped_or_recreated_but_never_followed_out_of_the_tree() {
    let p = Pair::new().await;
    let src = p.source();
    let outside = p.src.path().join("outside-secret");
    write(&outside, b"secret", 0o644, 1_600_000_000);
    write(&src.join("real"), b"real", 0o644, 1_600_000_000);
    symlink("real", src.join("inside-link")).unwrap();
    symlink(&outside, src.join("absolute-out")).unwrap();
    symlink("../outside-secret", src.join("relative-out")).unwrap();
    std::fs::create_dir_all(p.src.path().join("outside-dir")).unwrap();
    write(
        &p.src.path().join("outside-dir/f"),
        b"secret",
        0o644,
        1_600_000_000,
    );
    symlink("../outside-dir", src.join("dir-out")).unwrap();
    // `a/up` points at the top, inside; through it, `x` would climb out, though its `..` are
    // no more than the names before them.
    std::fs::create_dir_all(src.join("a")).unwrap();
    symlink("..", src.join("a/up")).unwrap();
    symlink("a/up/a/up/../../../../etc/hostname", src.join("x")).unwrap();
    // A FIFO and a socket are reported and skipped, never opened.
    rustix::fs::mknodat(
        rustix::fs::CWD,
        src.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(src.join("socket")).unwrap();

    // Skipped by default: only the regular file arrives.
    let (s, _) = p.run(p.command(Filter::default())).await;
    assert_eq!((s.copied, s.unsupported, s.failed), (1, 8, 0));
    let names: Vec<PathBuf> = snapshot(&p.target()).into_keys().collect();
    assert_eq!(names, vec![PathBuf::from("a"), PathBuf::from("real")]);

    // With links: the one inside is recreated as a link; those leaving are not.
    let links = Filter {
        links: true,
        ..Filter::default()
    };
    let (s, _) = p.run(p.command(links)).await;
    assert_eq!((s.links, s.unsupported, s.failed), (2, 6, 0));
    let dst = p.target();
    assert_eq!(
        std::fs::read_link(dst.join("inside-link")).unwrap(),
        Path::new("real")
    );
    assert_eq!(
        std::fs::read_link(dst.join("a/up")).unwrap(),
        Path::new("..")
    );
    for gone in ["absolute-out", "relative-out", "dir-out", "x"] {
        assert!(std::fs::symlink_metadata(dst.join(gone)).is_err(), "{gone}");
    }
    assert!(!list_tree(p.dst.path())
        .iter()
        .any(|f| std::fs::read(f).is_ok_and(|b| b == b"secret")));
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_subdirectory_that_links_out_of_the_root_is_never_written_through() {
    let p = Pair::new().await;
    write(&p.source().join("sub/f"), b"data", 0o644, 1_600_000_000);
    write(&p.source().join("top"), b"top", 0o644, 1_600_000_000);
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(p.target()).unwrap();
    symlink(elsewhere.path(), p.target().join("sub")).unwrap();
    let (s, _) = p.run(p.command(Filter::default())).await;
    assert_eq!(s.copied, 1, "{:?}", s.failures);
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
    // The directory (a link is in its way) and the file in it both fail, by name.
    let failed: Vec<(&[u8], ErrorCode)> = s
        .failures
        .iter()
        .map(|f| (f.name.as_slice(), f.error.code))
        .collect();
    assert_eq!(
        failed,
        [
            (&b"sub"[..], ErrorCode::FailedPrecondition),
            (&b"sub/f"[..], ErrorCode::PermissionDenied)
        ]
    );
    assert_eq!(
        std::fs::read_link(p.target().join("sub")).unwrap(),
        elsewhere.path()
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_filter_is_the_tokens_and_the_source_enforces_it() {
    let p = Pair::new().await;
    let src = p.source();
    write(&src.join("a.txt"), b"a", 0o644, 1_600_000_000);
    write(&src.join("b.tmp"), b"b", 0o644, 1_600_000_000);
    write(&src.join("cache/c.txt"), b"c", 0o644, 1_600_000_000);
    write(&src.join("keep.tmp"), b"k", 0o644, 1_600_000_000);
    let filter = Filter {
        exclude: vec!["*.tmp".into(), "cache/".into()],
        include: vec!["keep.tmp".into()],
        links: false,
    };
    let (s, _) = p.run(p.command(filter.clone())).await;
    assert_eq!(s.copied, 2);
    let names: Vec<PathBuf> = snapshot(&p.target()).into_keys().collect();
    assert_eq!(
        names,
        vec![PathBuf::from("a.txt"), PathBuf::from("keep.tmp")]
    );

    // A destination asking the source itself cannot widen it: the listing leaves the excluded
    // out, and a fetch of an excluded file is refused.
    let path = wire(&src);
    let token = p.token(&path, filter);
    let client = p.grid.star_client("star-b");
    let conn = client.connect(p.a.local_addr(), "star-a").await.unwrap();
    let list = ControlRequest::List(ListRequest {
        transfer_id: TransferId(1),
        path: path.clone(),
        token: token.clone(),
        checksums: false,
    });
    let frames: Vec<ListFrame> = raw_stream(&conn, &list).await;
    let listed: Vec<Vec<u8>> = frames
        .iter()
        .flat_map(|f| match f {
            ListFrame::Entries(e) => e.iter().map(|e| e.name.clone()).collect(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(matches!(frames.last(), Some(ListFrame::End)));
    for excluded in [&b"b.tmp"[..], b"cache/c.txt"] {
        let fetch = ControlRequest::Fetch(FetchRequest {
            transfer_id: TransferId(2),
            path: path.clone(),
            token: token.clone(),
            files: vec![FetchFile {
                name: excluded.to_vec(),
                offset: 0,
            }],
        });
        let frames: Vec<DataFrame> = raw_stream(&conn, &fetch).await;
        match frames.as_slice() {
            [DataFrame::Error {
                request_id: 0,
                error,
            }] => {
                assert_eq!(error.code, ErrorCode::PermissionDenied, "{error}")
            }
            other => panic!("{excluded:?} was not refused: {other:?}"),
        }
    }
    // A tree token for another directory, or a file token, opens nothing.
    for bad in [
        p.token(&wire(p.src.path()), Filter::default()),
        p.grid.token("star-a", "star-b", &path),
    ] {
        let list = ControlRequest::List(ListRequest {
            transfer_id: TransferId(3),
            path: path.clone(),
            token: bad,
            checksums: false,
        });
        let frames: Vec<ListFrame> = raw_stream(&conn, &list).await;
        match frames.as_slice() {
            [ListFrame::Error(e)] => assert_eq!(e.code, ErrorCode::PermissionDenied, "{e}"),
            other => panic!("a bad token was not refused: {other:?}"),
        }
    }
    conn.close(0u32.into(), b"done");
    p.shutdown().await;
}

/// Sends `request` on a new bidirectional stream and reads every frame of the answer.
async fn raw_stream<T: serde::de::DeserializeOwned>(
    conn: &quinn::Connection,
    request: &ControlRequest,
) -> Vec<T> {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&orbit_wire::encode_frame(request).unwrap())
        .await
        .unwrap();
    send.finish().unwrap();
    let bytes = within("answer", recv.read_to_end(64 * 1024 * 1024))
        .await
        .unwrap();
    let mut frames = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        frames.push(orbit_wire::decode_body(&bytes[at + 4..at + 4 + len]).unwrap());
        at += 4 + len;
    }
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_changes_nothing_and_lists_what_it_would_do() {
    let p = Pair::new().await;
    let files = mixed_tree(&p.source());
    let mut cmd = p.command(Filter::default());
    cmd.dry_run = true;
    cmd.itemize = true;
    let (s, events) = p.run(cmd).await;
    assert!(s.dry_run);
    assert_eq!(s.copied, files as u64);
    assert!(!p.target().exists(), "a dry run created the target");
    let items = events
        .iter()
        .filter(|e| matches!(e, ControlEvent::Item(i) if i.action == ItemAction::Copied && i.kind == 'f'))
        .count();
    assert_eq!(items, files);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_outside_the_roots_or_a_file_is_refused_whole() {
    let p = Pair::new().await;
    write(&p.source().join("f"), b"f", 0o644, 1_600_000_000);
    let mut outside = p.command(Filter::default());
    outside.target_path = "/etc/orbit-tree-test".into();
    let e = p.run_failed(outside).await;
    assert_eq!(e.code, ErrorCode::PermissionDenied, "{e}");
    assert!(!Path::new("/etc/orbit-tree-test").exists());

    // A file where the tree should be: the source says what it is.
    let file = wire(&p.source().join("f"));
    let mut not_a_dir = p.command(Filter::default());
    not_a_dir.token = p.token(&file, Filter::default());
    not_a_dir.source_path = file;
    let e = p.run_failed(not_a_dir).await;
    assert_eq!(e.code, ErrorCode::InvalidArgument, "{e}");
    assert!(e.message.contains("star-a"), "{e}");
    assert!(!p.target().exists() || list_tree(&p.target()).is_empty());
    p.shutdown().await;
}

/// The listing a hostile source sends: names that climb out, are absolute, or hold `//`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_listing_writes_nothing_outside_and_names_each_bad_file() {
    let grid = Grid::new();
    let dst = tempfile::tempdir().unwrap();
    let target = dst.path().join("in");
    let b = grid.spawn_star("star-b", &[dst.path()]).await;
    // A fake star-a with a real certificate: lists bad names, then lies about a file's size.
    let endpoint = star_server(&grid, "star-a");
    let bad_names: Vec<&[u8]> = vec![b"../escape", b"/etc/evil", b"a//b", b"ok/../../x", b".."];
    // And one good name, whose data stream then claims a petabyte where 4 bytes were listed.
    let mut names: Vec<Vec<u8>> = bad_names.iter().map(|n| n.to_vec()).collect();
    names.push(b"good".to_vec());
    let ep = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            let names = names.clone();
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let names = names.clone();
                    tokio::spawn(async move {
                        let bytes = recv.read_to_end(1 << 20).await.unwrap();
                        let request: ControlRequest = orbit_wire::decode_body(&bytes[4..]).unwrap();
                        let out = match request {
                            ControlRequest::List(_) => {
                                let entries = names
                                    .iter()
                                    .map(|n| orbit_wire::tree::Entry {
                                        name: n.clone(),
                                        kind: EntryKind::File {
                                            version: orbit_wire::FileVersion {
                                                size: 4,
                                                mtime_sec: 0,
                                                mtime_nsec: 0,
                                                inode: 1,
                                            },
                                            mode: 0o644,
                                            sha256: None,
                                        },
                                    })
                                    .collect();
                                [
                                    orbit_wire::encode_frame(&ListFrame::Entries(entries)).unwrap(),
                                    orbit_wire::encode_frame(&ListFrame::End).unwrap(),
                                ]
                                .concat()
                            }
                            ControlRequest::Fetch(_) => [
                                orbit_wire::encode_frame(&DataFrame::Header {
                                    request_id: 0,
                                    size: 1 << 50,
                                    version: orbit_wire::FileVersion {
                                        size: 1 << 50,
                                        mtime_sec: 0,
                                        mtime_nsec: 0,
                                        inode: 1,
                                    },
                                })
                                .unwrap(),
                                orbit_wire::encode_frame(&DataFrame::Chunk {
                                    offset: 0,
                                    data: bytes::Bytes::from_static(&[0u8; 1024]),
                                })
                                .unwrap(),
                            ]
                            .concat(),
                            _ => Vec::new(),
                        };
                        let _ = send.write_all(&out).await;
                        let _ = send.finish();
                        let _ = send.stopped().await;
                    });
                }
            });
        }
    });
    let cmd = ReplicateTree {
        transfer_id: TransferId(rand::random()),
        source: "star-a".into(),
        source_addr: endpoint.local_addr().unwrap().to_string(),
        token: tree_token(&grid, "star-a", "star-b", "/srv/fake", Filter::default()),
        source_path: "/srv/fake".into(),
        target_path: wire(&target),
        sync: SyncLevel::Mtime,
        delete: true,
        max_delete: None,
        dry_run: false,
        itemize: false,
        timeout_secs: 0,
    };
    let client = grid.controller_client();
    let mut events = within(
        "tree replication",
        client.control(&b, &ControlRequest::ReplicateTree(cmd)),
    )
    .await
    .unwrap();
    let ControlEvent::TreeDone(s) = events.pop().unwrap() else {
        panic!("expected TreeDone")
    };
    assert_eq!((s.copied, s.failed), (0, bad_names.len() as u64 + 1));
    let failed: Vec<(&[u8], ErrorCode)> = s
        .failures
        .iter()
        .map(|f| (f.name.as_slice(), f.error.code))
        .collect();
    let mut want: Vec<(&[u8], ErrorCode)> = bad_names
        .iter()
        .map(|n| (*n, ErrorCode::InvalidArgument))
        .collect();
    // The size the listing gave bounds what is written.
    want.push((b"good", ErrorCode::FailedPrecondition));
    assert_eq!(failed, want);
    assert!(s.delete_skipped.is_some(), "delete ran after failures");
    assert_eq!(list_tree(&target), Vec::<PathBuf>::new());
    assert_eq!(list_all(dst.path()), vec![target.clone()]);
    assert!(!dst.path().join("escape").exists() && !Path::new("/etc/evil").exists());
    b.shutdown().await;
    endpoint.close(0u32.into(), b"done");
}

/// While trees are walked and written, a directory on each side keeps being swapped for a link
/// that leads out of the root. Not one byte from outside is read, and nothing is written outside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directories_swapped_for_outside_links_mid_walk_never_leak_or_write_outside() {
    const ROUNDS: usize = 150;
    let p = Pair::new().await;
    let src = p.source();
    for i in 0..8 {
        write(
            &src.join(format!("sub/f{i}")),
            b"inside",
            0o644,
            1_600_000_000,
        );
    }
    write(&src.join("top"), b"inside", 0o644, 1_600_000_000);
    // Outside both roots: files of the same names, holding a secret, and an empty directory.
    let outside = tempfile::tempdir().unwrap();
    for i in 0..8 {
        write(
            &outside.path().join(format!("secret/f{i}")),
            b"secret",
            0o644,
            1_600_000_000,
        );
    }
    std::fs::create_dir(outside.path().join("sink")).unwrap();
    symlink(outside.path().join("secret"), src.join("sub-link")).unwrap();
    std::fs::create_dir_all(p.target().join("sub")).unwrap();
    symlink(outside.path().join("sink"), p.target().join("sub-link")).unwrap();
    let source_swaps = Swapper::start(src.join("sub"), src.join("sub-link"));
    let target_swaps = Swapper::start(p.target().join("sub"), p.target().join("sub-link"));
    let mut copied = 0;
    for round in 0..ROUNDS {
        let mut cmd = p.command(Filter::default());
        // Compared by content, so a file the swaps hid from an earlier round is sent now.
        cmd.sync = SyncLevel::Checksum;
        let (s, _) = p.run(cmd).await;
        copied += s.copied;
        for file in list_tree(p.dst.path()) {
            let path = p.dst.path().join(&file);
            if let Ok(bytes) = std::fs::read(&path) {
                assert_ne!(
                    bytes, b"secret",
                    "round {round}: {file:?} holds outside bytes"
                );
            }
        }
        assert_eq!(
            std::fs::read_dir(outside.path().join("sink"))
                .unwrap()
                .count(),
            0,
            "round {round}: something was written outside the root"
        );
    }
    let swaps = (source_swaps.swaps(), target_swaps.swaps());
    drop((source_swaps, target_swaps));
    assert!(
        swaps.0 > ROUNDS as u64 && swaps.1 > ROUNDS as u64,
        "{swaps:?}"
    );
    // The control: files did get through between swaps.
    assert!(copied > 0);
    p.shutdown().await;
}

/// Names long enough that 256 entries would overflow a frame still list, in smaller batches;
/// Orbit's own temporary files at the source are not part of the tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_names_list_in_batches_and_temporaries_are_not_sent() {
    let p = Pair::new().await;
    let src = p.source();
    for i in 0..300 {
        let name = format!("{i:03}-{}", "n".repeat(240));
        write(&src.join("long").join(name), b"x", 0o644, 1_600_000_000);
    }
    write(
        &src.join(".orbit-tree-0123.part"),
        b"half",
        0o600,
        1_600_000_000,
    );
    write(
        &src.join("d/.orbit-abc.part"),
        b"half",
        0o600,
        1_600_000_000,
    );
    let (s, _) = p.run(p.command(Filter::default())).await;
    assert_eq!((s.copied, s.failed), (300, 0), "{:?}", s.failures);
    assert!(!p.target().join(".orbit-tree-0123.part").exists());
    assert!(!p.target().join("d/.orbit-abc.part").exists());
    p.shutdown().await;
}

/// `--delete` of a directory the source no longer has keeps what the filter leaves out of
/// scope inside it, and the directories holding that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_keeps_excluded_files_inside_a_directory_gone_at_the_source() {
    let p = Pair::new().await;
    write(&p.source().join("keep"), b"k", 0o644, 1_600_000_000);
    let dst = p.target();
    write(&dst.join("old/host.keep"), b"mine", 0o644, 1_600_000_000);
    write(&dst.join("old/stale"), b"stale", 0o644, 1_600_000_000);
    write(&dst.join("old/sub/stale"), b"stale", 0o644, 1_600_000_000);
    write(&dst.join("gone/stale"), b"stale", 0o644, 1_600_000_000);
    let mut cmd = p.command(Filter {
        exclude: vec!["*.keep".into()],
        ..Filter::default()
    });
    cmd.delete = true;
    let (s, _) = p.run(cmd).await;
    assert_eq!((s.failed, s.deleted), (0, 5), "{:?}", s.failures);
    let left: Vec<PathBuf> = contents(&dst).into_keys().collect();
    let want: Vec<PathBuf> = ["keep", "old", "old/host.keep"]
        .iter()
        .map(PathBuf::from)
        .collect();
    assert_eq!(left, want);
    p.shutdown().await;
}

/// Issue 16.3 within trees: a star's own key moved into a tree after it started is named and
/// never sent by the source; at the destination, one in the target tree is neither overwritten
/// nor deleted by `--delete`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stars_own_files_inside_a_tree_are_never_sent_overwritten_or_deleted() {
    let grid = Grid::new();
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let keys = tempfile::tempdir().unwrap();
    let key = |name: &str| {
        let path = keys.path().join(name);
        std::fs::write(&path, format!("secret of {name}")).unwrap();
        path
    };
    let (a_key, b_key, b_crl) = (key("a-key.pem"), key("b-key.pem"), key("b-crl.pem"));
    let mut config = grid.star_config("star-a", &[src.path()]);
    config.protected = vec![a_key.clone()];
    let a = within("spawn", Star::spawn(config)).await.unwrap();
    let mut config = grid.star_config("star-b", &[dst.path()]);
    config.protected = vec![b_key.clone(), b_crl.clone()];
    let b = within("spawn", Star::spawn(config)).await.unwrap();
    let p = Pair {
        grid,
        src,
        dst,
        a,
        b,
    };
    let data = p.source();
    write(&data.join("plain"), b"p", 0o644, 1_600_000_000);
    write(&data.join("sub/x"), b"x", 0o644, 1_600_000_000);
    // Moved in after the stars started: the same files, under other names.
    std::fs::rename(&a_key, data.join("sub/key.pem")).unwrap();
    std::fs::create_dir_all(p.target()).unwrap();
    let gone = p.target().join("gone.pem");
    std::fs::rename(&b_crl, &gone).unwrap();

    let mut cmd = p.command(Filter::default());
    cmd.delete = true;
    let (s, _) = p.run(cmd).await;
    assert_eq!((s.copied, s.failed, s.unsupported), (2, 1, 1), "{s:?}");
    assert_eq!(std::fs::read(p.target().join("plain")).unwrap(), b"p");
    assert!(!p.target().join("sub/key.pem").exists(), "the key was sent");
    assert_eq!(s.failures[0].name, b"gone.pem");
    assert_eq!(s.failures[0].error.code, ErrorCode::PermissionDenied);
    assert_eq!(std::fs::read(&gone).unwrap(), b"secret of b-crl.pem");

    // A source file of the same name as the destination's key does not replace it.
    let own = p.target().join("own.pem");
    std::fs::rename(&b_key, &own).unwrap();
    write(&data.join("own.pem"), b"attacker", 0o644, 1_600_000_000);
    let (s, _) = p.run(p.command(Filter::default())).await;
    assert_eq!(s.failed, 1, "{s:?}");
    assert_eq!(s.failures[0].name, b"own.pem");
    assert_eq!(s.failures[0].error.code, ErrorCode::PermissionDenied);
    assert_eq!(std::fs::read(&own).unwrap(), b"secret of b-key.pem");
    assert!(part_files(p.target().as_path()).is_empty());
    p.shutdown().await;
}
