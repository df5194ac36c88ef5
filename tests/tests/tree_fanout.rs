//! A directory tree to many stars through the real binaries: `orbitctl replicate SRC DST DST...
//! --recursive` against five `orbit-star` processes. Every destination's tree equals the
//! source's, byte for byte and mode for mode, while the source sends the tree's bytes about
//! once (read from its own metrics); a destination its star refuses fails alone, under
//! `--min-success`; `--delete` mirrors through the holders; a holder with entries of its own
//! feeds no one; usage errors contact nothing.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use orbit_tests::ops::{metrics_addr, sample, scrape};
use orbit_tests::process::{self, orbitctl, StarProcess};
use orbit_tests::star_grid::typed_json_lines;
use orbit_tests::{list_tree, part_files, random_file, wire, STEP_TIMEOUT};

/// The destinations, in the order given.
const DESTINATIONS: [&str; 4] = ["star-b", "star-c", "star-d", "star-e"];

/// The bytes the source has sent to other stars, by its own count.
const SENT: &str = "orbit_p2p_bytes_transferred_total{direction=\"sent\"}";

/// A grid of star-a (the source, serving `roots/star-a`, with metrics) and four destinations,
/// each allowed `roots/NAME` only.
struct Fan {
    tmp: tempfile::TempDir,
    grid: PathBuf,
    stars: Vec<StarProcess>,
    metrics: Option<std::net::SocketAddr>,
}

impl Fan {
    /// The grid, its roots, and no star running.
    fn new() -> Fan {
        let tmp = tempfile::tempdir().unwrap();
        let names = ["star-a", "star-b", "star-c", "star-d", "star-e"];
        let grid = orbit_tests::ops::init_grid(tmp.path(), &names);
        for name in names {
            std::fs::create_dir_all(tmp.path().join("roots").join(name)).unwrap();
        }
        Fan {
            tmp,
            grid,
            stars: Vec::new(),
            metrics: None,
        }
    }

    /// Starts the five stars.
    fn start(self) -> Fan {
        self.start_with(&[])
    }

    /// Starts the five stars, each with `extra` arguments.
    fn start_with(mut self, extra: &[&str]) -> Fan {
        for name in ["star-a", "star-b", "star-c", "star-d", "star-e"] {
            let config = wire(&self.grid.join(format!("stars/{name}/star.toml")));
            let root = wire(&self.root(name));
            let mut args = vec!["--config", config.as_str(), "--allow", root.as_str()];
            args.extend_from_slice(extra);
            if name == "star-a" {
                args.extend(["--metrics-listen", "127.0.0.1:0"]);
            }
            let star = StarProcess::start(&args);
            if name == "star-a" {
                let line = star.wait_for_line("metrics on http://", STEP_TIMEOUT);
                self.metrics = Some(metrics_addr(&line).expect(&line));
            }
            self.stars.push(star);
        }
        self
    }

    fn root(&self, star: &str) -> PathBuf {
        self.tmp.path().join("roots").join(star)
    }

    /// The source tree, `roots/star-a/data`.
    fn data(&self) -> PathBuf {
        self.root("star-a").join("data")
    }

    /// `STAR:ROOT/copy` for each destination.
    fn targets(&self) -> Vec<String> {
        DESTINATIONS
            .iter()
            .map(|star| format!("{star}:{}", wire(&self.copy(star))))
            .collect()
    }

    /// Where `star`'s copy of the tree goes.
    fn copy(&self, star: &str) -> PathBuf {
        self.root(star).join("copy")
    }

    /// The bytes the source has sent so far.
    fn source_sent(&self) -> f64 {
        sample(&scrape(self.metrics.expect("metrics")), SENT)
    }

    /// `orbitctl --grid GRID replicate star-a:DATA/ TARGETS... --recursive` and `extra`.
    fn fan_out(&self, targets: &[String], extra: &[&str]) -> process::Output {
        let grid = wire(&self.grid);
        let source = format!("star-a:{}/", wire(&self.data()));
        let mut args = vec!["--grid", grid.as_str(), "replicate", source.as_str()];
        args.extend(targets.iter().map(String::as_str));
        args.push("--recursive");
        args.extend_from_slice(extra);
        orbitctl(&args)
    }
}

/// A tree of nested directories with 40 small files of varied sizes and permission bits, and
/// one of a few MiB; returns its bytes in all.
fn make_tree(root: &Path) -> u64 {
    let modes = [0o644, 0o600, 0o755, 0o640, 0o700, 0o444];
    let mut total = 0;
    for i in 0..40 {
        let dir = match i % 4 {
            0 => root.to_owned(),
            1 => root.join("a"),
            2 => root.join("a/b"),
            _ => root.join(format!("c{}/d", i % 3)),
        };
        let size = [0, 1, 100, 4096, 65_535, 65_536, 65_537][i % 7] + i;
        let path = dir.join(format!("f{i}.dat"));
        random_file(&path, size);
        std::fs::set_permissions(
            &path,
            std::fs::Permissions::from_mode(modes[i % modes.len()]),
        )
        .unwrap();
        total += size as u64;
    }
    let big = 3 * 1024 * 1024 + 7;
    random_file(&root.join("a/big.bin"), big);
    std::fs::set_permissions(root.join("a/b"), std::fs::Permissions::from_mode(0o750)).unwrap();
    total + big as u64
}

/// Every entry beneath `root`: its kind and permission bits, and a file's bytes.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (bool, u32, Vec<u8>)> {
    list_tree(root)
        .into_iter()
        .map(|rel| {
            let path = root.join(&rel);
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let bytes = match meta.is_file() {
                true => std::fs::read(&path).unwrap(),
                false => Vec::new(),
            };
            (
                rel,
                (meta.is_dir(), meta.permissions().mode() & 0o7777, bytes),
            )
        })
        .collect()
}

/// `orbitctl ARGS`, running, its output piped.
fn spawn_orbitctl(args: &[&str]) -> std::process::Child {
    std::process::Command::new(process::bin("orbitctl"))
        .args(args)
        .env_remove("ORBIT_GRID")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Asserts that `star`'s copy equals the source's tree, and that no partial file is left.
fn assert_same_tree(fan: &Fan, star: &str) {
    let (want, got) = (snapshot(&fan.data()), snapshot(&fan.copy(star)));
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>(),
        "{star}"
    );
    for (name, entry) in &want {
        assert!(got[name] == *entry, "{star}: {} differs", name.display());
    }
    assert!(part_files(&fan.copy(star)).is_empty(), "{star}");
}

#[test]
fn a_tree_fans_out_to_four_stars_and_the_source_sends_it_once() {
    let fan = Fan::new().start();
    let size = make_tree(&fan.data());
    let before = fan.source_sent();
    let out = fan.fan_out(&fan.targets(), &[]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    for star in DESTINATIONS {
        assert_same_tree(&fan, star);
    }

    // One line per destination in the tree's summary style, naming the star that fed it: the
    // source for the first, a destination for the others; then the summary.
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{}", out.stdout);
    for star in DESTINATIONS {
        let line = lines
            .iter()
            .find(|l| l.starts_with(&format!("{star}: ")))
            .unwrap_or_else(|| panic!("no line for {star}:\n{}", out.stdout));
        assert!(line.contains(" 0 failed"), "{line}");
        let fed_by = line.split(':').nth(1).unwrap().trim();
        match star {
            "star-b" => assert_eq!(fed_by, "star-a", "{line}"),
            _ => assert!(DESTINATIONS.contains(&fed_by), "{line}"),
        }
    }
    assert!(
        lines[4].starts_with("4 of 4 destinations replicated the tree (needed 4) in ")
            && lines[4].ends_with(", the source sent it once"),
        "{}",
        lines[4]
    );

    // The source's uplink carried the tree about once, not four times.
    let sent = fan.source_sent() - before;
    assert!(sent >= size as f64, "sent {sent} of {size}");
    assert!(sent < 1.5 * size as f64, "sent {sent} for a tree of {size}");
}

#[test]
fn a_destination_its_star_refuses_fails_alone_and_min_success_decides() {
    let fan = Fan::new().start();
    make_tree(&fan.data());
    // star-c may write only under its root.
    let mut targets = fan.targets();
    let outside = fan.tmp.path().join("outside");
    targets[1] = format!("star-c:{}", wire(&outside));

    // All four are needed by default: exit 1, PermissionDenied being permanent.
    let out = fan.fan_out(&targets, &[]);
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    let failed: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.contains("FAILED"))
        .collect();
    assert_eq!(failed.len(), 1, "{}", out.stdout);
    assert!(
        failed[0].starts_with("star-c: ") && failed[0].contains("FAILED PermissionDenied: "),
        "{}",
        failed[0]
    );
    assert!(
        out.stdout
            .contains("3 of 4 destinations replicated the tree (needed 4), 1 failed in "),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr
            .contains("3 of 4 destinations replicated the tree, 4 needed"),
        "{}",
        out.stderr
    );
    for star in ["star-b", "star-d", "star-e"] {
        assert_same_tree(&fan, star);
    }
    assert!(!outside.exists());

    // Three are enough with --min-success 3: exit 0. In JSON, one typed object per
    // destination, then the summary.
    let out = fan.fan_out(&targets, &["--min-success", "3", "--json"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let lines = typed_json_lines(&out.stdout);
    let mut ends: Vec<(&str, bool)> = lines
        .iter()
        .filter(|l| l["type"] == "destination")
        .map(|l| (l["destination"].as_str().unwrap(), l["ok"] == true))
        .collect();
    ends.sort_unstable();
    assert_eq!(
        ends,
        [
            ("star-b", true),
            ("star-c", false),
            ("star-d", true),
            ("star-e", true)
        ],
        "{}",
        out.stdout
    );
    let refused = lines.iter().find(|l| l["destination"] == "star-c").unwrap();
    assert_eq!(refused["code"], "PermissionDenied", "{refused}");
    let summary = lines.last().unwrap();
    assert_eq!(summary["type"], "summary", "{summary}");
    assert_eq!(
        (
            &summary["ok"],
            &summary["replicated"],
            &summary["failed"],
            &summary["min_success"]
        ),
        (
            &serde_json::json!(true),
            &serde_json::json!(3),
            &serde_json::json!(1),
            &serde_json::json!(3)
        ),
        "{summary}"
    );
}

#[test]
fn delete_through_a_fan_out_mirrors_the_source_and_loses_nothing_else() {
    let fan = Fan::new().start();
    make_tree(&fan.data());
    // The third destination holds an entry the source lacks, and its star a file beside.
    let extra = fan.copy("star-d").join("a/extra.txt");
    std::fs::create_dir_all(extra.parent().unwrap()).unwrap();
    std::fs::write(&extra, b"not at the source").unwrap();
    let beside = fan.root("star-d").join("beside.txt");
    std::fs::write(&beside, b"keep").unwrap();

    let out = fan.fan_out(&fan.targets(), &["--delete"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(!extra.exists(), "{}", out.stdout);
    for star in DESTINATIONS {
        assert_same_tree(&fan, star);
    }
    assert_eq!(std::fs::read(&beside).unwrap(), b"keep");
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("star-d: "))
        .unwrap();
    assert!(line.contains(" 1 deleted"), "{line}");
    assert!(
        out.stdout.contains("the source sent it once"),
        "{}",
        out.stdout
    );
}

#[test]
fn a_holder_with_entries_of_its_own_feeds_no_one_and_the_source_steps_in() {
    let fan = Fan::new().start();
    make_tree(&fan.data());
    // The first destination already holds a file of its own: without --delete it keeps it,
    // and must not hand it to the others.
    let own = fan.copy("star-b").join("mine.txt");
    std::fs::create_dir_all(own.parent().unwrap()).unwrap();
    std::fs::write(&own, b"star-b's own").unwrap();

    let out = fan.fan_out(&fan.targets(), &[]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(own.exists());
    for star in ["star-c", "star-d", "star-e"] {
        assert_same_tree(&fan, star);
    }
    assert!(
        out.stderr.contains("star-b:") && out.stderr.contains("feeds no other destination"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("star-a: no destination holds the complete tree"),
        "{}",
        out.stderr
    );
    assert!(
        out.stdout.contains("the source sent it twice"),
        "{}",
        out.stdout
    );
}

#[test]
fn ctrl_c_cancels_the_tree_running_and_starts_no_other() {
    let fan = Fan::new().start();
    make_tree(&fan.data());
    // Large enough that the first tree is still running when Ctrl-C comes.
    random_file(&fan.data().join("a/huge.bin"), 96 * 1024 * 1024);
    let grid = wire(&fan.grid);
    let source = format!("star-a:{}", wire(&fan.data()));
    let mut args = vec!["--grid", grid.as_str(), "replicate", source.as_str(), "-r"];
    let targets = fan.targets();
    args.extend(targets.iter().map(String::as_str));
    let child = spawn_orbitctl(&args);
    // The first tree has started once star-b made its directory.
    let deadline = std::time::Instant::now() + STEP_TIMEOUT;
    while !fan.copy("star-b").exists() {
        assert!(std::time::Instant::now() < deadline, "star-b never started");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let signal = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(signal.success());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stdout}{stderr}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("star-b: ") && l.contains("FAILED Cancelled: ")),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "0 of 4 destinations replicated the tree (needed 4), 1 failed, 3 not started"
        ),
        "{stdout}"
    );
    assert!(
        stderr.contains("tree fan-out cancelled (interrupted)"),
        "{stderr}"
    );
    // orbitctl returned once star-b had cleaned up; the others were never contacted.
    assert!(part_files(&fan.copy("star-b")).is_empty());
    assert!(!fan.copy("star-b").join("a/huge.bin").exists());
    for star in ["star-c", "star-d", "star-e"] {
        assert!(!fan.copy(star).exists(), "{star}");
    }
}

#[test]
fn a_destination_whose_feeder_dies_mid_tree_is_fed_again_by_the_source() {
    // A star killed says nothing: its peers learn it from silence, here after 2 s, not 30.
    let quick = ["--idle-timeout-secs", "2", "--handshake-timeout-secs", "2"];
    let mut fan = Fan::new().start_with(&quick);
    make_tree(&fan.data());
    // Large enough that star-c's tree from star-b is still running when star-b is killed.
    random_file(&fan.data().join("a/huge.bin"), 96 * 1024 * 1024);
    let grid = wire(&fan.grid);
    let source = format!("star-a:{}/", wire(&fan.data()));
    let targets = fan.targets();
    // With --delete a complete tree feeds the next at once (no check first).
    let args = [
        "--grid",
        grid.as_str(),
        "replicate",
        source.as_str(),
        targets[0].as_str(),
        targets[1].as_str(),
        "-r",
        "--delete",
        // star-c gives up on the dead star-b after 3 s without progress, not the default's
        // minutes (a feeder that restarts would be waited for that long).
        "--timeout",
        "3",
    ];
    let child = spawn_orbitctl(&args);
    // star-c's tree has started, from star-b (the source feeds star-b only), once star-c made
    // its directory: then star-b dies (SIGKILL).
    let deadline = std::time::Instant::now() + STEP_TIMEOUT;
    while !fan.copy("star-c").exists() {
        assert!(std::time::Instant::now() < deadline, "star-c never started");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    drop(fan.stars.remove(1));
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stderr.contains("star-b feeds no one more, and star-c is fed again"),
        "{stderr}"
    );
    assert!(
        stdout.contains("2 of 2 destinations replicated the tree"),
        "{stdout}"
    );
    assert!(
        !stdout.lines().any(|l| l.contains("FAILED")),
        "the failed attempt is not star-c's result: {stdout}"
    );
    assert_same_tree(&fan, "star-b");
    assert_same_tree(&fan, "star-c");
}

#[test]
fn usage_errors_exit_2_and_contact_nothing() {
    // No star runs: a usage error is found before anything is contacted.
    let fan = Fan::new();
    let targets = fan.targets();
    let cases: [(Vec<String>, &[&str], &str); 4] = [
        (
            targets.clone(),
            &["--detach"],
            "orbitctl: --detach does not go with a fan-out of a tree",
        ),
        (
            vec![targets[0].clone(), targets[1].clone(), targets[0].clone()],
            &[],
            &format!("orbitctl: destination {} is given twice", targets[0]),
        ),
        (
            vec![targets[0].clone(), format!("{}/inner", targets[0])],
            &[],
            "orbitctl: destinations star-b:",
        ),
        (
            vec![
                targets[0].clone(),
                format!("star-a:{}", wire(&fan.data().join("sub"))),
            ],
            &[],
            "orbitctl: destination star-a:",
        ),
    ];
    for (targets, extra, message) in cases {
        let out = fan.fan_out(&targets, extra);
        assert_eq!(
            out.code,
            Some(2),
            "{targets:?}: {}{}",
            out.stdout,
            out.stderr
        );
        assert!(out.stderr.starts_with(message), "{}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
        assert!(out.stdout.is_empty(), "{}", out.stdout);
    }
    // With --json the usage error is also an object on stdout.
    let out = fan.fan_out(&targets, &["--detach", "--json"]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    let json: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(
        (&json["type"], &json["code"]),
        (
            &serde_json::json!("result"),
            &serde_json::json!("InvalidArgument")
        )
    );
    // Nothing was written anywhere.
    for star in DESTINATIONS {
        assert!(!fan.copy(star).exists(), "{star}");
    }
}
