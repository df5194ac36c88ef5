//! What scripts rely on, through the real binaries: `orbitctl`'s exit code tells success (0), a
//! failure that retrying will not fix (1), a usage error (2) and a failure that may go away by
//! itself (4) apart; and with `--json`, every command that prints a result prints NDJSON whose
//! every line carries a `type`.

use orbit_tests::star_grid::{typed_json_lines, StarGrid};
use orbit_tests::{random_file, sha256_file, wire};

/// The `type` of each line.
fn types(lines: &[serde_json::Value]) -> Vec<&str> {
    lines.iter().map(|l| l["type"].as_str().unwrap()).collect()
}

#[test]
fn each_class_of_failure_has_its_exit_code() {
    // star-c is in the grid but does not run: dialling it is refused at once.
    let g = StarGrid::start(&["star-a", "star-b", "star-c"], &["star-a", "star-b"]);
    let digest = random_file(&g.file("star-a", "f.bin"), 70_000);
    let src = g.path("star-a", "f.bin");

    // 0: done, and the copy is the file.
    let out = g.orbitctl(&["replicate", &src, &g.path("star-b", "f.bin"), "--json"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert_eq!(sha256_file(&g.file("star-b", "f.bin")), digest);
    let lines = typed_json_lines(&out.stdout);
    let result = lines.last().unwrap();
    assert_eq!(
        (result["type"].as_str(), result["ok"].as_bool()),
        (Some("result"), Some(true))
    );

    // 1: the source file does not exist; retrying will not make it appear.
    let missing = g.path("star-a", "missing.bin");
    let out = g.orbitctl(&["replicate", &missing, &g.path("star-b", "m.bin"), "--json"]);
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    let result = typed_json_lines(&out.stdout).pop().unwrap();
    assert_eq!(result["type"], "result", "{result}");
    assert_eq!(result["code"], "NotFound", "{result}");
    assert_eq!(result["retryable"], false, "{result}");
    assert!(!g.file("star-b", "m.bin").exists());

    // 1: a destination outside star-b's roots.
    let outside = format!("star-b:{}", wire(&g.scratch().join("outside.bin")));
    let out = g.orbitctl(&["replicate", &src, &outside]);
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);

    // 2: a usage error; nothing is contacted.
    let out = g.orbitctl(&["replicate", &src, "star-b:relative/f.bin"]);
    assert_eq!(out.code, Some(2), "{}{}", out.stdout, out.stderr);
    let out = g.orbitctl(&[
        "replicate",
        &src,
        &g.path("star-b", "g.bin"),
        "--transfers",
        "2",
    ]);
    assert_eq!(
        out.code,
        Some(2),
        "--transfers without --from-file: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("--transfers is for a batch"),
        "{}",
        out.stderr
    );
    assert!(!g.file("star-b", "g.bin").exists());

    // 4: the destination star is down; the same command may work later.
    let out = g.orbitctl(&["replicate", &src, &g.path("star-c", "f.bin"), "--json"]);
    assert_eq!(out.code, Some(4), "{}{}", out.stdout, out.stderr);
    let result = typed_json_lines(&out.stdout).pop().unwrap();
    assert_eq!(result["code"], "Unavailable", "{result}");
    assert_eq!(result["retryable"], true, "{result}");
    assert!(out.stderr.contains("star-c"), "{}", out.stderr);

    // `wait` and `cancel` for a transfer no star knows: 4 while a star that may hold it is
    // down, 1 once every star asked answered.
    let unknown = "00000000deadbeef";
    let out = g.orbitctl(&["wait", unknown]);
    assert_eq!(out.code, Some(4), "{}{}", out.stdout, out.stderr);
    let out = g.orbitctl(&["wait", unknown, "--star", "star-b", "--json"]);
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    assert_eq!(
        typed_json_lines(&out.stdout).pop().unwrap()["code"],
        "NotFound"
    );
    let out = g.orbitctl(&["cancel", unknown, "--star", "star-c", "--json"]);
    assert_eq!(out.code, Some(4), "{}{}", out.stdout, out.stderr);
    assert_eq!(
        typed_json_lines(&out.stdout).pop().unwrap()["retryable"],
        true
    );

    // `status` keeps its meaning: 1 when a star asked did not answer.
    let out = g.orbitctl(&["status", "--json"]);
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
}

#[test]
fn every_command_that_prints_a_result_prints_typed_json() {
    let g = StarGrid::start(
        &["star-a", "star-b", "star-c"],
        &["star-a", "star-b", "star-c"],
    );
    random_file(&g.file("star-a", "f.bin"), 3 * 65536 + 1);
    std::fs::create_dir_all(g.file("star-a", "tree/sub")).unwrap();
    random_file(&g.file("star-a", "tree/a"), 10);
    random_file(&g.file("star-a", "tree/sub/b"), 0);
    let src = g.path("star-a", "f.bin");

    let out = g.orbitctl(&["status", "--json"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert_eq!(types(&typed_json_lines(&out.stdout)), ["status"]);

    // A file, then `wait` for it after it ended, then `cancel` too late.
    let out = g.orbitctl(&["replicate", &src, &g.path("star-b", "f.bin"), "--json"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let lines = typed_json_lines(&out.stdout);
    assert!(lines
        .iter()
        .all(|l| l["type"] == "progress" || l["type"] == "result"));
    for progress in lines.iter().filter(|l| l["type"] == "progress") {
        // Kept for scripts written before `type`.
        assert_eq!(progress["event"], "progress", "{progress}");
    }
    let id = lines.last().unwrap()["transfer_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = g.orbitctl(&["wait", &id, "--star", "star-b", "--json"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert_eq!(
        typed_json_lines(&out.stdout).last().unwrap()["type"],
        "result"
    );
    let out = g.orbitctl(&["cancel", &id, "--star", "star-b", "--json"]);
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    assert_eq!(types(&typed_json_lines(&out.stdout)), ["result"]);

    // A detached start.
    let out = g.orbitctl(&[
        "replicate",
        &src,
        &g.path("star-b", "d.bin"),
        "--json",
        "--detach",
    ]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert_eq!(types(&typed_json_lines(&out.stdout)), ["result"]);

    // A tree, entry by entry.
    let tree = ["replicate", "--recursive", "--itemize", "--json"];
    let (from, to) = (g.path("star-a", "tree"), g.path("star-b", "tree"));
    let out = g.orbitctl(&[&tree[..], &[from.as_str(), to.as_str()]].concat());
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let lines = typed_json_lines(&out.stdout);
    assert!(lines
        .iter()
        .any(|l| l["type"] == "item" && l["event"] == "item"));
    assert_eq!(lines.last().unwrap()["type"], "result");

    // A fan-out: its plan, one line per destination, a summary.
    let fan = [
        "replicate",
        &src,
        &g.path("star-b", "fan.bin"),
        &g.path("star-c", "fan.bin"),
        "--json",
    ];
    let out = g.orbitctl(&fan);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let lines = typed_json_lines(&out.stdout);
    let kinds = types(&lines);
    assert_eq!(kinds.first(), Some(&"plan"), "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "destination").count(), 2);
    assert_eq!(kinds.last(), Some(&"summary"), "{kinds:?}");

    // The grid's own commands.
    let out = g.orbitctl(&["token", &src, "--holder", "star-b", "--json"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let token = typed_json_lines(&out.stdout).pop().unwrap();
    assert_eq!(token["type"], "token");
    assert!(token["not_after"].as_u64() > token["issued_at"].as_u64());
    let out = g.orbitctl(&["add-star", "star-d=127.0.0.1:9", "--json"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let added = typed_json_lines(&out.stdout).pop().unwrap();
    assert_eq!(
        (added["type"].as_str(), added["name"].as_str()),
        (Some("star"), Some("star-d"))
    );
    assert!(std::path::Path::new(added["config"].as_str().unwrap()).is_file());
    for (args, kind) in [
        (&["rotate-keys", "--json"][..], "keys"),
        (&["rotate-keys", "--finish", "--json"][..], "keys"),
        (&["renew", "star-d", "--json"][..], "renew"),
        (&["revoke", "star-d", "--json"][..], "revoked"),
    ] {
        let out = g.orbitctl(args);
        assert_eq!(out.code, Some(0), "{args:?}: {}{}", out.stdout, out.stderr);
        assert_eq!(types(&typed_json_lines(&out.stdout)), [kind], "{args:?}");
    }
    let new_grid = g.scratch().join("other");
    let out = orbit_tests::process::orbitctl(&[
        "init",
        &wire(&new_grid),
        "--star",
        "star-x=127.0.0.1:9",
        "--json",
    ]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let made = typed_json_lines(&out.stdout).pop().unwrap();
    assert_eq!(made["type"], "grid");
    assert_eq!(made["stars"][0]["name"], "star-x");
    // A failure is typed JSON too, with the same exit code as without --json.
    let out = orbit_tests::process::orbitctl(&[
        "init",
        &wire(&new_grid),
        "--star",
        "star-x=127.0.0.1:9",
        "--json",
    ]);
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    let failed = typed_json_lines(&out.stdout).pop().unwrap();
    assert_eq!(
        (
            failed["type"].as_str(),
            failed["ok"].as_bool(),
            failed["code"].as_str()
        ),
        (Some("result"), Some(false), Some("AlreadyExists")),
        "{failed}"
    );
}
