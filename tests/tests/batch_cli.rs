//! `orbitctl replicate --from-file JOBS` through the real binaries: every file of a batch
//! arrives whole, `--transfers 1` runs one replication at a time (read from the destination
//! star's log, not from timing), `--transfers 2` runs two and no more (against a source that
//! holds every transfer) and Ctrl-C cancels them, a bad line is refused before anything is
//! copied, and a job
//! that fails does not stop the others but sets the exit code: 1 for a failure retrying will
//! not fix, 4 for one that may go away by itself once its retries are spent.

use std::process::Stdio;

use orbit_tests::slow_source::HeldGrid;
use orbit_tests::star_grid::{typed_json_lines, StarGrid};
use orbit_tests::{part_files, random_file, sha256_file, wire, STEP_TIMEOUT};

/// Writes `lines` as the jobs file and returns its path.
fn jobs_file(g: &StarGrid, lines: &[String]) -> String {
    let path = g.scratch().join("jobs");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    wire(&path)
}

/// `SRC DST` for copying `name` from star-a to star-b under the same name.
fn copy(g: &StarGrid, name: &str) -> String {
    format!("{}  {}", g.path("star-a", name), g.path("star-b", name))
}

/// The source files of star-a, of sizes around the chunk edges, with their digests.
fn sources(g: &StarGrid, sizes: &[usize]) -> Vec<(String, [u8; 32])> {
    sizes
        .iter()
        .map(|size| {
            let name = format!("f{size}.bin");
            (name.clone(), random_file(&g.file("star-a", &name), *size))
        })
        .collect()
}

#[test]
fn a_batch_copies_every_file_and_exits_0() {
    let g = StarGrid::start(&["star-a", "star-b"], &["star-a", "star-b"]);
    let files = sources(&g, &[0, 1, 65535, 65536, 65537, 3 * 65536 + 7]);
    let mut lines = vec!["# nightly".to_owned(), String::new()];
    lines.extend(
        files
            .iter()
            .map(|(name, _)| format!("  {}\t", copy(&g, name))),
    );
    let jobs = jobs_file(&g, &lines);

    let out = g.orbitctl(&["replicate", "--from-file", &jobs, "--transfers", "3"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    for (name, digest) in &files {
        assert_eq!(sha256_file(&g.file("star-b", name)), *digest, "{name}");
    }
    let verified = out
        .stdout
        .lines()
        .filter(|l| l.contains("  verified  "))
        .count();
    assert_eq!(verified, files.len(), "{}", out.stdout);
    // Each result names its line of the file (comments and blank lines count).
    assert!(out.stdout.contains("line 3  star-a:"), "{}", out.stdout);
    assert!(
        out.stdout
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("6 of 6 replications verified, 0 failed")),
        "{}",
        out.stdout
    );

    // Again with --json, from stdin: one job object per line, then the summary.
    for (name, _) in &files {
        std::fs::remove_file(g.file("star-b", name)).unwrap();
    }
    let out = std::process::Command::new(orbit_tests::process::bin("orbitctl"))
        .args([
            "--grid",
            &wire(&g.grid),
            "replicate",
            "--from-file",
            "-",
            "--json",
        ])
        .stdin(std::fs::File::open(g.scratch().join("jobs")).unwrap())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let json = typed_json_lines(&stdout);
    let (summary, jobs) = json.split_last().unwrap();
    assert_eq!(jobs.len(), files.len(), "{stdout}");
    for job in jobs {
        assert_eq!(job["type"], "job", "{job}");
        assert_eq!(job["ok"], true, "{job}");
        assert_eq!(job["attempts"], 1, "{job}");
        let name = job["source"].as_str().unwrap().rsplit('/').next().unwrap();
        let (_, digest) = files.iter().find(|(n, _)| n == name).unwrap();
        assert_eq!(job["sha256"], hex::encode(digest), "{job}");
    }
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["verified"], files.len());
    assert_eq!(summary["exit_code"], 0);
    for (name, digest) in &files {
        assert_eq!(sha256_file(&g.file("star-b", name)), *digest, "{name}");
    }
}

#[test]
fn with_one_transfer_the_replications_never_overlap() {
    let g = StarGrid::start(&["star-a", "star-b"], &["star-a", "star-b"]);
    let files = sources(&g, &[65537, 200_000, 1, 70_000]);
    let lines: Vec<String> = files.iter().map(|(name, _)| copy(&g, name)).collect();
    let jobs = jobs_file(&g, &lines);
    let out = g.orbitctl(&["replicate", "--from-file", &jobs, "--transfers", "1"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);

    // star-b logs "replication started" and, before it answers, "replication completed": with
    // one transfer at a time, each start follows the previous transfer's completion.
    let star = g.star("star-b");
    let mut events: Vec<(bool, String)> = Vec::new();
    let deadline = std::time::Instant::now() + STEP_TIMEOUT;
    while events.iter().filter(|(started, _)| !started).count() < files.len() {
        assert!(std::time::Instant::now() < deadline, "{events:?}");
        let line = star.wait_for_line("replication ", STEP_TIMEOUT);
        let started = line.contains("replication started");
        if !started && !line.contains("replication completed") {
            continue;
        }
        let id = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("transfer="))
            .unwrap_or_else(|| panic!("no transfer id: {line}"))
            .to_owned();
        events.push((started, id));
    }
    assert_eq!(events.len(), 2 * files.len(), "{events:?}");
    for pair in events.chunks(2) {
        assert!(
            pair[0].0 && !pair[1].0 && pair[0].1 == pair[1].1,
            "transfers overlapped: {events:?}"
        );
    }
    for (name, digest) in &files {
        assert_eq!(sha256_file(&g.file("star-b", name)), *digest, "{name}");
    }
}

#[test]
fn a_bad_line_is_refused_before_anything_is_copied() {
    let g = StarGrid::start(&["star-a", "star-b"], &["star-a", "star-b"]);
    let files = sources(&g, &[10]);
    let (name, _) = &files[0];
    let cases: [(String, &str); 4] = [
        (
            format!("{}\n# fine so far\nstar-a:/x\n", copy(&g, name)),
            "line 3: expected SRC DST",
        ),
        (
            format!("{}\nstar-a:/x star-b:relative\n", copy(&g, name)),
            "line 2: bad path \"relative\"",
        ),
        (
            format!("{}\nstar-a:/x star-z:/y\n", copy(&g, name)),
            "line 2: unknown star \"star-z\"",
        ),
        (
            format!("{}\n{}\n", copy(&g, name), copy(&g, name)),
            "line 2: destination star-b:",
        ),
    ];
    let path = g.scratch().join("jobs");
    for (text, reason) in cases {
        std::fs::write(&path, &text).unwrap();
        for json in [false, true] {
            let mut args = vec!["replicate", "--from-file"];
            let jobs = wire(&path);
            args.push(&jobs);
            if json {
                args.push("--json");
            }
            let out = g.orbitctl(&args);
            assert_eq!(out.code, Some(2), "{text}: {}{}", out.stdout, out.stderr);
            let want = format!("orbitctl: {}, {reason}", wire(&path));
            assert!(out.stderr.starts_with(&want), "{want}\n{}", out.stderr);
            assert!(out.stderr.contains("nothing was started"), "{}", out.stderr);
            if json {
                let result = typed_json_lines(&out.stdout).pop().unwrap();
                assert_eq!(result["code"], "InvalidArgument", "{result}");
            }
            assert!(
                !g.file("star-b", name).exists(),
                "line 1 was copied: {text}"
            );
        }
    }
    std::fs::write(&path, "# nothing\n\n").unwrap();
    let out = g.orbitctl(&["replicate", "--from-file", &wire(&path)]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("lists no replication"),
        "{}",
        out.stderr
    );
    let out = g.orbitctl(&["replicate", "--from-file", &wire(&path.join("missing"))]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    // The single-replication arguments do not mix with a batch.
    let src = g.path("star-a", name);
    let out = g.orbitctl(&["replicate", "--from-file", &wire(&path), &src]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
}

#[test]
fn a_failed_job_does_not_stop_the_others_and_sets_the_exit_code() {
    // star-c is in the grid but down: jobs to it fail for a reason that may go away.
    let g = StarGrid::start(&["star-a", "star-b", "star-c"], &["star-a", "star-b"]);
    let files = sources(&g, &[65536, 5]);
    let missing = format!("{}  {}", g.path("star-a", "gone"), g.path("star-b", "gone"));
    let down = format!(
        "{}  {}",
        g.path("star-a", &files[0].0),
        g.path("star-c", "x")
    );
    let jobs = jobs_file(
        &g,
        &[
            copy(&g, &files[0].0),
            missing,
            copy(&g, &files[1].0),
            down.clone(),
        ],
    );

    // A missing source is a failure retrying will not fix: exit 1, and it is tried once.
    let out = g.orbitctl(&[
        "replicate",
        "--from-file",
        &jobs,
        "--transfers",
        "2",
        "--json",
    ]);
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    let json = typed_json_lines(&out.stdout);
    let job = |line: u64| {
        json.iter()
            .find(|j| j["type"] == "job" && j["line"] == line)
            .unwrap_or_else(|| panic!("no job for line {line}: {}", out.stdout))
    };
    assert_eq!(job(1)["ok"], true);
    assert_eq!(job(3)["ok"], true);
    let gone = job(2);
    assert_eq!(
        (
            gone["ok"].as_bool(),
            gone["code"].as_str(),
            gone["retryable"].as_bool()
        ),
        (Some(false), Some("NotFound"), Some(false)),
        "{gone}"
    );
    assert_eq!(gone["attempts"], 1, "{gone}");
    let unreachable = job(4);
    assert_eq!(unreachable["code"], "Unavailable", "{unreachable}");
    assert_eq!(
        unreachable["attempts"], 4,
        "three retries by default: {unreachable}"
    );
    let summary = json.last().unwrap();
    assert_eq!(summary["type"], "summary");
    assert_eq!(
        (summary["verified"].as_u64(), summary["failed"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(summary["exit_code"], 1);
    for (name, digest) in &files {
        assert_eq!(sha256_file(&g.file("star-b", name)), *digest, "{name}");
    }
    assert!(!g.file("star-b", "gone").exists());

    // Only temporary failures left: exit 4, after the retries asked for; the text output
    // names the failed line.
    let jobs = jobs_file(&g, &[copy(&g, &files[1].0), down]);
    let out = g.orbitctl(&["replicate", "--from-file", &jobs, "--retries", "1"]);
    assert_eq!(out.code, Some(4), "{}{}", out.stdout, out.stderr);
    let failed: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.contains("FAILED"))
        .collect();
    assert_eq!(failed.len(), 1, "{}", out.stdout);
    assert!(
        failed[0].starts_with("line 2  ") && failed[0].contains("FAILED  Unavailable: "),
        "{}",
        failed[0]
    );
    assert!(failed[0].ends_with("(after 2 attempts)"), "{}", failed[0]);
    assert!(
        out.stderr.contains("line 2: retrying (attempt 2)"),
        "{}",
        out.stderr
    );
}

#[test]
fn transfers_bounds_the_replications_running_and_ctrl_c_cancels_them() {
    const SIZE: usize = 4 * 1024 * 1024 + 5;
    const HOLD: usize = 1024 * 1024;
    // star-a holds every transfer after its first HOLD bytes, so none can end before Ctrl-C.
    let g = HeldGrid::start(SIZE, HOLD);
    let lines: Vec<String> = (1..=3)
        .map(|i| format!("{} {}", g.src(), g.dst(&format!("{i}.bin"))))
        .collect();
    let jobs = g.grid.with_file_name("jobs");
    std::fs::write(&jobs, lines.join("\n")).unwrap();
    let child = g
        .command(&[
            "replicate",
            "--from-file",
            &wire(&jobs),
            "--transfers",
            "2",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Two replications run, held; the third waits for a free place.
    let dir = g.dst_root.join("backup");
    let deadline = std::time::Instant::now() + STEP_TIMEOUT;
    let held = || {
        part_files(&dir)
            .iter()
            .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() == HOLD as u64))
            .count()
    };
    while held() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            part_files(&dir)
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let status = g.orbitctl(&["status", "star-b", "--json"]);
    let json: serde_json::Value = serde_json::from_str(status.stdout.trim()).unwrap();
    let running = json["stars"][0]["transfers"].as_array().unwrap();
    assert_eq!(running.len(), 2, "{json}");
    assert_eq!(part_files(&dir).len(), 2);

    // Ctrl-C cancels both on star-b and starts no more.
    let signal = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(signal.success());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stdout}{stderr}");
    let json = typed_json_lines(&stdout);
    let (summary, ended) = json.split_last().unwrap();
    assert_eq!(ended.len(), 2, "{stdout}");
    for job in ended {
        assert_eq!(job["code"], "Cancelled", "{job}");
    }
    assert_eq!(summary["not_started"], 1, "{summary}");
    assert_eq!(summary["exit_code"], 130, "{summary}");
    assert!(stderr.contains("batch cancelled (interrupted)"), "{stderr}");
    // orbitctl returned only once star-b had removed its temporary files.
    assert_eq!(g.leftovers(), [std::path::PathBuf::from("backup")]);
    g.source.release();
    let status = g.orbitctl(&["status", "star-b", "--json"]);
    let json: serde_json::Value = serde_json::from_str(status.stdout.trim()).unwrap();
    assert_eq!(
        json["stars"][0]["transfers"],
        serde_json::json!([]),
        "{json}"
    );
}
