//! Trees through the real binaries: `orbitctl replicate --recursive` against two `orbit-star`
//! processes, its output and exit codes, and either star killed at random moments of a tree.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use orbit_tests::process::{orbitctl, StarProcess};
use orbit_tests::*;
use rand::Rng;

/// A grid folder with star-a serving `src` and star-b storing under `dst`, both running.
struct Cli {
    _tmp: tempfile::TempDir,
    grid: PathBuf,
    src: PathBuf,
    dst: PathBuf,
    a: Option<StarProcess>,
    b: Option<StarProcess>,
}

impl Cli {
    fn start() -> Cli {
        let tmp = tempfile::tempdir().unwrap();
        let grid = orbit_tests::ops::init_grid(tmp.path(), &["star-a", "star-b"]);
        let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
        std::fs::create_dir_all(src.join("data")).unwrap();
        std::fs::create_dir_all(&dst).unwrap();
        let mut cli = Cli {
            _tmp: tmp,
            grid,
            src,
            dst,
            a: None,
            b: None,
        };
        cli.a = Some(cli.star("star-a"));
        cli.b = Some(cli.star("star-b"));
        cli
    }

    fn star(&self, name: &str) -> StarProcess {
        let config = wire(&self.grid.join(format!("stars/{name}/star.toml")));
        let root = if name == "star-a" {
            &self.src
        } else {
            &self.dst
        };
        // A killed source is noticed when its connection goes idle: quickly here.
        StarProcess::start(&[
            "--config",
            &config,
            "--allow",
            &wire(root),
            "--idle-timeout-secs",
            "3",
        ])
    }

    fn data(&self) -> PathBuf {
        self.src.join("data")
    }

    fn backup(&self) -> PathBuf {
        self.dst.join("backup")
    }

    /// `orbitctl replicate star-a:DATA/ star-b:BACKUP --recursive` and `extra`.
    fn tree(&self, extra: &[&str]) -> process::Output {
        let src = format!("star-a:{}/", wire(&self.data()));
        let dst = format!("star-b:{}", wire(&self.backup()));
        let grid = wire(&self.grid);
        let mut args = vec!["--grid", &grid, "replicate", &src, &dst, "--recursive"];
        args.extend_from_slice(extra);
        orbitctl(&args)
    }
}

fn put(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Every file beneath `root` with its bytes.
fn files(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    list_tree(root)
        .into_iter()
        .filter(|rel| root.join(rel).is_file())
        .map(|rel| {
            let bytes = std::fs::read(root.join(&rel)).unwrap();
            (rel, bytes)
        })
        .collect()
}

#[test]
fn orbitctl_replicates_a_tree_and_its_exit_code_tells_done_from_partly_done() {
    let cli = Cli::start();
    put(&cli.data().join("a.txt"), b"alpha");
    put(&cli.data().join("d/b.txt"), b"beta");
    put(&cli.data().join("d/e/c.txt"), b"gamma");

    // Done: exit 0, one summary line naming the destination.
    let out = cli.tree(&[]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.starts_with("star-b: star-a:") && out.stdout.contains("3 copied, 0 skipped"),
        "{}",
        out.stdout
    );
    assert_eq!(files(&cli.backup()), files(&cli.data()));

    // Itemized and in JSON: one item per entry, then the result.
    put(&cli.data().join("d/new.txt"), b"new");
    let out = cli.tree(&["--itemize", "--json"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let lines: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let result = lines.last().unwrap();
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(
        (result["copied"].as_u64(), result["skipped"].as_u64()),
        (Some(1), Some(3))
    );
    let copied: Vec<&str> = lines
        .iter()
        .filter(|l| l["event"] == "item" && l["action"] == "copied")
        .filter_map(|l| l["name"].as_str())
        .collect();
    assert_eq!(copied, ["d/new.txt"]);
    assert!(
        result["controller_bytes_sent"].as_u64().unwrap() < 16 * 1024,
        "{result}"
    );

    // Partly done: a directory in the way of one file. Exit 3, the summary, and one stderr line
    // naming the file; the other files arrive.
    put(&cli.data().join("blocked"), b"blocked");
    put(&cli.data().join("fine"), b"fine");
    std::fs::create_dir(cli.backup().join("blocked")).unwrap();
    let out = cli.tree(&[]);
    assert_eq!(out.code, Some(3), "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("1 failed"), "{}", out.stdout);
    assert!(
        out.stderr
            .lines()
            .any(|l| l.starts_with("star-b: blocked: FailedPrecondition")),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read(cli.backup().join("fine")).unwrap(), b"fine");

    // A dry run with --delete: lists, changes nothing.
    std::fs::remove_dir(cli.backup().join("blocked")).unwrap();
    put(&cli.backup().join("stale"), b"stale");
    let out = cli.tree(&["--delete", "--dry-run", "--itemize"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.lines().any(|l| l == "copy f blocked"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.lines().any(|l| l == "delete f stale"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("dry run, nothing was changed"),
        "{}",
        out.stdout
    );
    assert!(cli.backup().join("stale").exists());
    assert!(!cli.backup().join("blocked").exists());

    // Usage errors: exit 2, nothing contacted.
    let out = cli.tree(&["--exclude", ""]);
    assert_eq!(out.code, Some(2), "{}{}", out.stdout, out.stderr);
    let grid = wire(&cli.grid);
    let src = format!("star-a:{}/", wire(&cli.data()));
    let dst = format!("star-b:{}", wire(&cli.backup()));
    let out = orbitctl(&["--grid", &grid, "replicate", &src, &dst]);
    assert_eq!(out.code, Some(2), "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("--recursive"), "{}", out.stderr);
}

#[test]
fn a_detached_tree_is_followed_with_wait() {
    let cli = Cli::start();
    for i in 0..20 {
        put(&cli.data().join(format!("f{i}")), &vec![i as u8; 10_000]);
    }
    let out = cli.tree(&["--detach"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let id = out.stdout.trim().to_owned();
    let grid = wire(&cli.grid);
    let out = orbitctl(&["--grid", &grid, "wait", &id, "--star", "star-b"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("20 copied"), "{}", out.stdout);
    assert_eq!(files(&cli.backup()), files(&cli.data()));
}

/// Either star is killed with SIGKILL at a random moment of a tree, ten times. After every kill
/// each target path holds nothing or the complete file, never a partial or wrong one; once the
/// star is back, the tree is run again and completes, identical, and no temporary file is left.
#[test]
fn killing_either_star_at_random_moments_of_a_tree_never_leaves_a_partial_file() {
    const ROUNDS: usize = 10;
    let mut cli = Cli::start();
    let mut rng = rand::thread_rng();
    for i in 0..150 {
        let mut bytes = vec![0u8; 40_000];
        rng.fill(&mut bytes[..]);
        put(&cli.data().join(format!("d{}/f{i}", i % 7)), &bytes);
    }
    for i in 0..3 {
        let mut bytes = vec![0u8; 3_000_000];
        rng.fill(&mut bytes[..]);
        put(&cli.data().join(format!("big{i}")), &bytes);
    }
    let source = files(&cli.data());
    // How long one tree takes here.
    let started = Instant::now();
    let out = cli.tree(&[]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let took = started.elapsed();
    let grid = wire(&cli.grid);

    let mut landed = 0;
    for round in 1..=ROUNDS {
        std::fs::remove_dir_all(cli.backup()).unwrap();
        let out = cli.tree(&["--detach"]);
        assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
        let id = out.stdout.trim().to_owned();
        std::thread::sleep(took.mul_f64(rng.gen_range(0.0..1.0)));
        let victim = if round % 2 == 0 { "star-a" } else { "star-b" };
        if victim == "star-a" {
            drop(cli.a.take()); // SIGKILL
        } else {
            drop(cli.b.take());
        }
        let copied = files(&cli.backup());
        for (name, bytes) in &copied {
            let name_str = name.to_string_lossy();
            if name_str.contains(".orbit-") {
                continue;
            }
            assert!(
                source.get(name) == Some(bytes),
                "round {round} ({victim} killed): {name:?} is partial or wrong"
            );
        }
        if copied.len() < source.len() {
            landed += 1;
        }
        if victim == "star-a" {
            cli.a = Some(cli.star("star-a"));
            // The destination lived through it: the old tree ends (done, or failed once its
            // retries ran out) before the same target can be written again.
            let out = orbitctl(&["--grid", &grid, "wait", &id, "--star", "star-b", "--quiet"]);
            assert!(
                matches!(out.code, Some(0 | 1 | 3)),
                "{}{}",
                out.stdout,
                out.stderr
            );
        } else {
            cli.b = Some(cli.star("star-b"));
        }
        let out = cli.tree(&[]);
        assert_eq!(
            out.code,
            Some(0),
            "round {round}: {}{}",
            out.stdout,
            out.stderr
        );
        assert_eq!(files(&cli.backup()), source, "round {round}");
    }
    assert!(landed > 0, "no kill landed inside a tree");
}

/// The temporary files beneath `dir`, with their sizes.
fn parts(dir: &Path) -> Vec<(PathBuf, u64)> {
    // The target directory may not have been made yet.
    if !dir.exists() {
        return Vec::new();
    }
    list_tree(dir)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".orbit-tree-"))
        .map(|p| {
            let len = std::fs::metadata(dir.join(&p)).map_or(0, |m| m.len());
            (p, len)
        })
        .collect()
}

/// Waits until a temporary file beneath `dir` holds at least `len` bytes.
fn part_reaches(dir: &Path, len: u64) {
    let deadline = Instant::now() + STEP_TIMEOUT;
    while !parts(dir).iter().any(|(_, n)| *n >= len) {
        assert!(
            Instant::now() < deadline,
            "no temporary file reached {len} bytes"
        );
        // A file's size has no event to wait for; poll it.
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// A large file of a tree, cut short by a kill of the destination, resumes from the bytes its
/// temporary file holds once they are checked against the source; bytes that do not match are
/// sent again.
#[test]
fn a_large_file_resumes_from_what_a_killed_destination_left() {
    const SIZE: usize = 48 * 1024 * 1024;
    const MIB: u64 = 1024 * 1024;
    let mut cli = Cli::start();
    let mut rng = rand::thread_rng();
    let mut bytes = vec![0u8; SIZE];
    rng.fill(&mut bytes[..]);
    put(&cli.data().join("big/model.bin"), &bytes);
    put(&cli.data().join("small"), b"small");
    let json = |out: &process::Output| -> serde_json::Value {
        serde_json::from_str(out.stdout.lines().last().unwrap()).unwrap()
    };

    for corrupt in [false, true] {
        let _ = std::fs::remove_dir_all(cli.backup());
        let out = cli.tree(&["--detach"]);
        assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
        part_reaches(&cli.backup(), 8 * MIB);
        // SIGKILL. What it leaves: the large file's temporary, and perhaps the small one's.
        drop(cli.b.take());
        let left: Vec<_> = parts(&cli.backup())
            .into_iter()
            .filter(|(p, _)| p.starts_with("big"))
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
        assert!(!cli.backup().join("big/model.bin").exists());
        if corrupt {
            // The bytes left behind are not the source's: they are not kept.
            let path = cli.backup().join(&left[0].0);
            let mut kept = std::fs::read(&path).unwrap();
            kept[100] ^= 0xff;
            std::fs::write(&path, kept).unwrap();
        }
        cli.b = Some(cli.star("star-b"));
        let out = cli.tree(&["--json"]);
        assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
        let result = json(&out);
        let resumed = result["resumed"].as_u64().unwrap();
        if corrupt {
            assert_eq!(resumed, 0, "{result}");
        } else {
            assert!(resumed >= 8 * MIB && resumed % (64 * 1024) == 0, "{result}");
            // The small file may have been published before the kill.
            let small = if result["copied"] == 2 { 5 } else { 0 };
            assert_eq!(
                result["bytes"].as_u64().unwrap() + resumed,
                SIZE as u64 + small
            );
        }
        assert!(std::fs::read(cli.backup().join("big/model.bin")).unwrap() == bytes);
        assert_eq!(parts(&cli.backup()), Vec::new());
    }
}

/// `orbitctl cancel` stops a tree: the files published before it stay whole, nothing partial is
/// left, and no temporary file either (a cancelled tree does not keep one to resume).
#[test]
fn a_cancelled_tree_leaves_no_partial_or_temporary_file() {
    // Large enough that the cancel lands while the file is in flight.
    const SIZE: usize = 128 * 1024 * 1024;
    let cli = Cli::start();
    let mut bytes = vec![0u8; SIZE];
    rand::thread_rng().fill(&mut bytes[..]);
    put(&cli.data().join("big.bin"), &bytes);
    put(&cli.data().join("small"), b"small");
    let out = cli.tree(&["--detach"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let id = out.stdout.trim().to_owned();
    part_reaches(&cli.backup(), 1024 * 1024);
    let grid = wire(&cli.grid);
    let out = orbitctl(&["--grid", &grid, "cancel", &id, "--star", "star-b"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("cancelled"), "{}", out.stdout);
    let out = orbitctl(&["--grid", &grid, "wait", &id, "--star", "star-b"]);
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("cancelled"), "{}", out.stderr);
    assert_eq!(parts(&cli.backup()), Vec::new());
    for (name, copied) in files(&cli.backup()) {
        assert_eq!(
            Some(&copied),
            files(&cli.data()).get(&name),
            "{name:?} is partial"
        );
    }
}
