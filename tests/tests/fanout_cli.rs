//! Fan-out through the real binaries: `orbitctl replicate SRC DST DST ...` against four
//! `orbit-star` processes. Its usage errors (exit 2, naming the culprit, nothing contacted), one
//! result per destination and a summary in text and JSON, `--min-success` with a destination
//! its star refuses, and a detached fan-out followed with `wait` and `cancel` on several stars.

use std::path::PathBuf;

use orbit_tests::process::{self, orbitctl, StarProcess};
use orbit_tests::{part_files, random_file, sha256_file, wire};

const MIB: usize = 1024 * 1024;

/// The destinations of every test, in order.
const DESTINATIONS: [&str; 3] = ["star-b", "star-c", "star-d"];

/// A grid of star-a (the origin, serving `roots/star-a`) and star-b, star-c and star-d, each
/// storing under `roots/NAME`; the stars run once [`Fan::start`] is called.
struct Fan {
    tmp: tempfile::TempDir,
    grid: PathBuf,
    stars: Vec<StarProcess>,
}

impl Fan {
    fn new() -> Fan {
        let tmp = tempfile::tempdir().unwrap();
        let names = ["star-a", "star-b", "star-c", "star-d"];
        let grid = orbit_tests::ops::init_grid(tmp.path(), &names);
        for name in names {
            std::fs::create_dir_all(tmp.path().join("roots").join(name)).unwrap();
        }
        Fan {
            tmp,
            grid,
            stars: Vec::new(),
        }
    }

    /// Starts the four stars, each allowed its own root only.
    fn start(mut self) -> Fan {
        for name in ["star-a", "star-b", "star-c", "star-d"] {
            let config = wire(&self.grid.join(format!("stars/{name}/star.toml")));
            let root = wire(&self.root(name));
            self.stars
                .push(StarProcess::start(&["--config", &config, "--allow", &root]));
        }
        self
    }

    fn root(&self, star: &str) -> PathBuf {
        self.tmp.path().join("roots").join(star)
    }

    /// `star-a:ROOT/f`, the file every test sends.
    fn source(&self) -> String {
        format!("star-a:{}", wire(&self.root("star-a").join("f")))
    }

    /// `STAR:ROOT/name` for each destination.
    fn targets(&self, name: &str) -> Vec<String> {
        DESTINATIONS
            .iter()
            .map(|star| format!("{star}:{}", wire(&self.root(star).join(name))))
            .collect()
    }

    /// `orbitctl --grid GRID` and `args`.
    fn orbitctl(&self, args: &[&str]) -> process::Output {
        let grid = wire(&self.grid);
        let mut all = vec!["--grid", &grid];
        all.extend_from_slice(args);
        orbitctl(&all)
    }
}

/// Every line of `stdout` as JSON.
fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// The per-destination results among `lines`, by destination star.
fn results(lines: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    let mut results: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l.get("destination").is_some() && l.get("event").is_none())
        .collect();
    results.sort_by_key(|r| r["destination"].as_str().unwrap_or_default().to_owned());
    results
}

#[test]
fn usage_errors_name_the_culprit_and_exit_2() {
    // No star runs: a usage error is found before anything is contacted.
    let fan = Fan::new();
    let src = "star-a:/srv/f";
    let bad_list = fan.tmp.path().join("hosts");
    std::fs::write(&bad_list, "# backups\nstar-b:/d/f\n\nstar-c:d/f\n").unwrap();
    let bad_list = wire(&bad_list);
    let missing = wire(&fan.tmp.path().join("no-such-list"));
    let cases: [(&[&str], &str); 8] = [
        (
            &[src, "star-b:/d/f", "star-b:/e/f"],
            "orbitctl: star star-b is given twice (star-b:/d/f and star-b:/e/f): a fan-out puts \
             one copy on each star",
        ),
        (
            &[
                src,
                "star-b:/d/f",
                "star-c:/d/f",
                "--also-from",
                "star-d:/f",
            ],
            "orbitctl: --also-from takes one destination, not 2: a fan-out from several sources \
             is not supported yet",
        ),
        (
            &[src, "star-b:/d/f", "star-c:/d/f", "star-b:/d/f"],
            "orbitctl: destination star-b:/d/f is given twice",
        ),
        (
            &[src, "star-b:/d/f", "--to", "star-a:/srv/f"],
            "orbitctl: destination star-a:/srv/f is the source itself",
        ),
        (
            &[src, "star-b:/d", "star-b:/d/e", "--recursive"],
            "orbitctl: destinations star-b:/d and star-b:/d/e nest on star star-b: one tree \
             would be written inside the other",
        ),
        (
            &[src, "star-b:/d/f", "star-c:/d/f", "--min-success", "3"],
            "orbitctl: --min-success 3 is more than the 2 destination(s) given",
        ),
        (
            &[src, "star-b:/d/f", "--to-file", &bad_list],
            &format!("orbitctl: {bad_list}, line 4: bad path \"d/f\""),
        ),
        (
            &[src, "--to-file", &missing],
            &format!("orbitctl: cannot read the destination list {missing}: "),
        ),
    ];
    for (args, message) in cases {
        let mut all = vec!["replicate"];
        all.extend_from_slice(args);
        let out = fan.orbitctl(&all);
        assert_eq!(out.code, Some(2), "{args:?}: {}{}", out.stdout, out.stderr);
        assert!(out.stderr.starts_with(message), "{args:?}: {}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
        assert!(out.stdout.is_empty(), "{}", out.stdout);
    }

    // Values clap checks: also exit 2, naming the option and the value.
    for (option, value) in [("--min-success", "0"), ("--topology", "tree:0")] {
        let out = fan.orbitctl(&[
            "replicate",
            src,
            "star-b:/d/f",
            "star-c:/d/f",
            option,
            value,
        ]);
        assert_eq!(out.code, Some(2), "{}", out.stderr);
        assert!(
            out.stderr.contains(option) && out.stderr.contains(value),
            "{}",
            out.stderr
        );
    }

    // With --json the usage error is also an object on stdout.
    let out = fan.orbitctl(&["replicate", src, "star-b:/d/f", "star-b:/d/f", "--json"]);
    assert_eq!(out.code, Some(2));
    let json: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(json["ok"], false);
    assert_eq!(json["code"], "InvalidArgument");

    // `wait` and `cancel` read the same list, with the same errors.
    for command in ["wait", "cancel"] {
        let id = "0123456789abcdef";
        let out = fan.orbitctl(&[command, id, "--to-file", &bad_list]);
        assert_eq!(out.code, Some(2), "{command}: {}", out.stderr);
        assert!(out.stderr.contains("line 4"), "{command}: {}", out.stderr);
    }

    // A star the grid does not list is refused as for a single replication: exit 1.
    let out = fan.orbitctl(&["replicate", src, "star-b:/d/f", "star-x:/d/f"]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("unknown star \"star-x\""),
        "{}",
        out.stderr
    );
}

#[test]
fn a_file_fans_out_to_three_stars_in_a_chain() {
    let fan = Fan::new().start();
    let size = 3 * MIB + 12_345;
    let sha = random_file(&fan.root("star-a").join("f"), size);
    let source = fan.source();
    let targets = fan.targets("copy");
    let mut args = vec!["replicate", &source];
    args.extend(targets.iter().map(String::as_str));
    args.extend(["--topology", "chain", "--json"]);
    let out = fan.orbitctl(&args);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);

    let lines = json_lines(&out.stdout);
    let results = results(&lines);
    assert_eq!(results.len(), 3, "{}", out.stdout);
    for (result, star) in results.iter().zip(DESTINATIONS) {
        assert_eq!(result["destination"], star, "{result}");
        assert_eq!(
            result["path"],
            wire(&fan.root(star).join("copy")),
            "{result}"
        );
        assert_eq!(result["ok"], true, "{result}");
        assert_eq!(result["bytes"], size as u64, "{result}");
        assert_eq!(result["sha256"], hex::encode(sha), "{result}");
        // The controller's traffic per destination stays small whatever the file's size.
        let traffic = result["controller_bytes_sent"].as_u64().unwrap()
            + result["controller_bytes_received"].as_u64().unwrap();
        assert!(traffic < 8 * 1024, "{result}");
        // The bytes arrived, whole, and nothing was left behind.
        assert_eq!(sha256_file(&fan.root(star).join("copy")), sha);
        assert!(part_files(&fan.root(star)).is_empty());
    }
    for progress in lines.iter().filter(|l| l["event"] == "progress") {
        assert!(
            DESTINATIONS.iter().any(|d| progress["destination"] == *d),
            "{progress}"
        );
    }
    let summary = lines.last().unwrap();
    assert_eq!(summary["fanout"], true, "{summary}");
    assert_eq!(summary["ok"], true, "{summary}");
    assert_eq!(summary["verified"], 3, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    assert_eq!(summary["min_success"], 3, "{summary}");
    assert_eq!(summary["sha256"], hex::encode(sha), "{summary}");
    assert_eq!(
        summary["transfer_id"].as_str().unwrap().len(),
        16,
        "{summary}"
    );
}

#[test]
fn zones_in_grid_toml_order_the_plan_the_sources_zone_first() {
    let fan = Fan::new();
    // star-a and star-c in rack-1, star-b and star-d in rack-2.
    let toml = fan.grid.join("grid.toml");
    let mut text = std::fs::read_to_string(&toml).unwrap();
    for (star, zone) in [
        ("star-a", "rack-1"),
        ("star-b", "rack-2"),
        ("star-c", "rack-1"),
        ("star-d", "rack-2"),
    ] {
        let table = format!("[stars.{star}]\n");
        assert!(text.contains(&table), "{text}");
        text = text.replace(&table, &format!("{table}zone = \"{zone}\"\n"));
    }
    std::fs::write(&toml, text).unwrap();
    let fan = fan.start();
    let sha = random_file(&fan.root("star-a").join("f"), MIB);
    let source = fan.source();
    let targets = fan.targets("copy");
    let mut args = vec!["replicate", &source];
    args.extend(targets.iter().map(String::as_str));
    args.extend(["--topology", "chain", "--json"]);
    let out = fan.orbitctl(&args);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let lines = json_lines(&out.stdout);
    // Given star-b, star-c, star-d: star-c (the origin's rack) first, then rack-2 in the order
    // given, so the chain crosses between the racks once.
    let plan = &lines[0];
    assert_eq!(plan["event"], "plan", "{plan}");
    assert_eq!(plan["topology"], "chain", "{plan}");
    assert_eq!(
        plan["destinations"],
        serde_json::json!([
            {"destination": "star-c", "zone": "rack-1", "upstreams": []},
            {"destination": "star-b", "zone": "rack-2", "upstreams": ["star-c"]},
            {"destination": "star-d", "zone": "rack-2", "upstreams": ["star-b", "star-c"]},
        ]),
        "{plan}"
    );
    assert_eq!(results(&lines).len(), 3, "{}", out.stdout);
    for star in DESTINATIONS {
        assert_eq!(sha256_file(&fan.root(star).join("copy")), sha);
    }
    // A zone that is not printable text is refused with the key named, before anything starts.
    let text = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(&toml, text.replace("\"rack-2\"", "\"rack\\u001b[2J\"")).unwrap();
    let out = fan.orbitctl(&args);
    assert_ne!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("zone") || out.stderr.contains("zone"),
        "{}{}",
        out.stdout,
        out.stderr
    );
}

#[test]
fn min_success_lets_a_fanout_succeed_without_a_destination_its_star_refuses() {
    let fan = Fan::new().start();
    let sha = random_file(&fan.root("star-a").join("f"), 2 * MIB);
    let source = fan.source();
    // star-d may store only under its root: this target lies outside it.
    let outside = fan.tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let mut targets = fan.targets("copy");
    targets[2] = format!("star-d:{}", wire(&outside.join("copy")));
    let mut args = vec!["replicate", &source];
    args.extend(targets.iter().map(String::as_str));

    let mut json = args.clone();
    json.extend(["--min-success", "2", "--json"]);
    let out = fan.orbitctl(&json);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let lines = json_lines(&out.stdout);
    let results = results(&lines);
    assert_eq!(results.len(), 3, "{}", out.stdout);
    assert_eq!(results[0]["ok"], true, "{}", results[0]);
    assert_eq!(results[1]["ok"], true, "{}", results[1]);
    assert_eq!(results[2]["ok"], false, "{}", results[2]);
    assert_eq!(results[2]["code"], "PermissionDenied", "{}", results[2]);
    let summary = lines.last().unwrap();
    assert_eq!(
        (
            &summary["ok"],
            &summary["verified"],
            &summary["failed"],
            &summary["min_success"]
        ),
        (&true.into(), &2.into(), &1.into(), &2.into()),
        "{summary}"
    );
    for star in ["star-b", "star-c"] {
        assert_eq!(sha256_file(&fan.root(star).join("copy")), sha);
    }
    // Nothing at all appeared where star-d may not write.
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);

    // Every destination needed (the default): the same fan-out fails, and says which one.
    let out = fan.orbitctl(&args);
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    let failed: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.contains("FAILED"))
        .collect();
    assert_eq!(failed.len(), 1, "{}", out.stdout);
    assert!(failed[0].starts_with(&targets[2]), "{}", failed[0]);
    assert!(
        failed[0].contains("  FAILED  PermissionDenied: "),
        "{}",
        failed[0]
    );
    let verified = out
        .stdout
        .lines()
        .filter(|l| l.contains("  verified  "))
        .count();
    assert_eq!(verified, 2, "{}", out.stdout);
    let summary = out.stdout.lines().last().unwrap();
    assert!(
        summary.starts_with("2 of 3 destinations verified (needed 3) in "),
        "{summary}"
    );
    assert!(
        out.stderr
            .contains("orbitctl: fan-out failed: 2 of 3 destinations verified the file, 3 needed"),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
}

#[test]
fn a_detached_fanout_is_followed_with_wait_and_cancel_on_every_destination() {
    let fan = Fan::new().start();
    let sha = random_file(&fan.root("star-a").join("f"), MIB + 1);
    let source = fan.source();
    let targets = fan.targets("detached");
    let mut args = vec!["replicate", &source];
    args.extend(targets.iter().map(String::as_str));
    args.push("--detach");
    let out = fan.orbitctl(&args);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let mut lines = out.stdout.lines();
    let id = lines.next().unwrap().to_owned();
    assert_eq!(id.len(), 16, "{}", out.stdout);
    let started: Vec<&str> = lines.collect();
    assert_eq!(started.len(), 3, "{}", out.stdout);
    // In the order they answered.
    for target in &targets {
        assert!(
            started
                .iter()
                .any(|l| l.starts_with(target.as_str()) && l.ends_with("  started")),
            "{target}: {}",
            out.stdout
        );
    }

    // Every destination, named one by one: one line each as it ends, then the summary.
    let out = fan.orbitctl(&[
        "wait", &id, "--star", "star-b", "--star", "star-c", "--star", "star-d",
    ]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let verified = out
        .stdout
        .lines()
        .filter(|l| l.contains("  verified  "))
        .count();
    assert_eq!(verified, 3, "{}", out.stdout);
    assert!(
        out.stdout
            .lines()
            .last()
            .unwrap()
            .starts_with("3 of 3 destinations verified (needed 3)"),
        "{}",
        out.stdout
    );
    for star in DESTINATIONS {
        assert_eq!(sha256_file(&fan.root(star).join("detached")), sha);
    }

    // The same from the file of destinations, in JSON.
    let hosts = fan.tmp.path().join("hosts");
    std::fs::write(&hosts, format!("# the fan-out\n{}\n", targets.join("\n"))).unwrap();
    let hosts = wire(&hosts);
    let out = fan.orbitctl(&["wait", &id, "--to-file", &hosts, "--json"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let lines = json_lines(&out.stdout);
    assert_eq!(results(&lines).len(), 3, "{}", out.stdout);
    assert_eq!(lines.last().unwrap()["verified"], 3, "{}", out.stdout);

    // A star that never ran the transfer (the origin) fails alone; --min-success decides.
    let out = fan.orbitctl(&["wait", &id, "--star", "star-b", "--star", "star-a"]);
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("star-a") && l.contains("  FAILED  NotFound: ")),
        "{}",
        out.stdout
    );
    let out = fan.orbitctl(&[
        "wait",
        &id,
        "--star",
        "star-b",
        "--star",
        "star-a",
        "--min-success",
        "1",
    ]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);

    // Too late to cancel: every destination says so, and the exit code tells.
    let out = fan.orbitctl(&["cancel", &id, "--to-file", &hosts]);
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    let late = out
        .stderr
        .lines()
        .filter(|l| l.contains("had already completed"))
        .count();
    assert_eq!(late, 3, "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("transfer {id} was not cancelled on 3 of 3 stars")),
        "{}",
        out.stderr
    );
}

/// One file from star-a and star-c at once into star-b: both send pieces, the copy is whole;
/// when star-c's file differs, nothing is written and the exit code says why.
#[test]
fn also_from_takes_pieces_from_every_source_and_refuses_sources_that_differ() {
    let fan = Fan::new().start();
    let sha = random_file(&fan.root("star-a").join("f"), 24 * MIB);
    std::fs::copy(fan.root("star-a").join("f"), fan.root("star-c").join("f")).unwrap();
    let target = fan.root("star-b").join("f");
    let also = format!("star-c:{}", wire(&fan.root("star-c").join("f")));
    let dst = format!("star-b:{}", wire(&target));
    let out = fan.orbitctl(&[
        "replicate",
        &fan.source(),
        &dst,
        "--also-from",
        &also,
        "--json",
    ]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let last = json_lines(&out.stdout).pop().unwrap();
    assert_eq!(last["ok"], true, "{last}");
    assert_eq!(last["sha256"], hex_of(&sha));
    assert_eq!(sha256_file(&target), sha);

    // star-c's copy differs by one byte: refused before anything is written.
    let other = fan.root("star-c").join("f");
    let mut bytes = std::fs::read(&other).unwrap();
    bytes[MIB] ^= 1;
    std::fs::write(&other, bytes).unwrap();
    let fresh = fan.root("star-b").join("g");
    let dst = format!("star-b:{}", wire(&fresh));
    let out = fan.orbitctl(&["replicate", &fan.source(), &dst, "--also-from", &also]);
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("FailedPrecondition") || out.stderr.contains("disagree"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("star-c"), "{}", out.stderr);
    assert!(!fresh.exists());
    assert!(part_files(&fan.root("star-b")).is_empty());
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The middle star of a chain is killed with SIGKILL once the last one has bytes: the first and
/// the last finish (the last from the next upstream on its list); the killed star, started
/// again, finishes its own copy from its journal; no partial file anywhere.
#[test]
fn a_middle_star_killed_mid_chain_leaves_the_others_to_finish_and_finishes_after_restart() {
    let mut fan = Fan::new().start();
    // Large enough that star-c is still receiving when star-d's first bytes are seen, even on a
    // loaded machine. With 64 MiB the test failed once in a full run (its message was lost;
    // star-c finishing before the kill is the likeliest cause) and passed 10 times alone.
    let sha = random_file(&fan.root("star-a").join("f"), 160 * MIB);
    let targets = fan.targets("f");
    let source = fan.source();
    let mut args = vec!["replicate", source.as_str()];
    args.extend(targets.iter().map(String::as_str));
    args.extend(["--topology", "chain", "--detach"]);
    let out = fan.orbitctl(&args);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let id = out.stdout.lines().next().unwrap().trim().to_owned();
    // A file's size has no event to wait for; poll it.
    let last = fan.root("star-d");
    let deadline = std::time::Instant::now() + orbit_tests::STEP_TIMEOUT;
    while !part_files(&last)
        .iter()
        .any(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "star-d never got a byte"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    drop(fan.stars.remove(2)); // star-c, SIGKILL
    let middle = fan.root("star-c").join("f");
    assert!(!middle.exists(), "star-c had finished before it was killed");

    let out = fan.orbitctl(&["wait", &id, "--star", "star-b", "--star", "star-d"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    for star in ["star-b", "star-d"] {
        assert_eq!(sha256_file(&fan.root(star).join("f")), sha, "{star}");
        assert!(part_files(&fan.root(star)).is_empty(), "{star}");
    }
    assert!(!middle.exists() || sha256_file(&middle) == sha);

    let config = wire(&fan.grid.join("stars/star-c/star.toml"));
    let root = wire(&fan.root("star-c"));
    fan.stars.insert(
        2,
        StarProcess::start(&["--config", &config, "--allow", &root]),
    );
    let out = fan.orbitctl(&["wait", &id, "--star", "star-c"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert_eq!(sha256_file(&middle), sha);
    assert!(part_files(&fan.root("star-c")).is_empty());
}
