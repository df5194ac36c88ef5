//! Logs: with `--log-format json` every line a star writes is one JSON object, and the transfer
//! id `orbitctl replicate` prints is on the log lines of both stars for that replication (a
//! `transfer_id` span field on the destination's pull and on the source's serve). The metrics
//! listener of the real binary counts the same replication.

use std::time::Instant;

use orbit_tests::ops::{init_grid, metrics_addr, sample, scrape};
use orbit_tests::process::{orbitctl, StarProcess};
use orbit_tests::{random_file, two_roots, wire, STEP_TIMEOUT};

/// Reads `star`'s log lines (each must be JSON) until one has `message` and a span whose
/// `transfer_id` is `id`; returns every line read.
fn wait_for_transfer(star: &StarProcess, id: &str, message: &str) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = star
            .lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no {message:?} line for transfer {id}; lines: {seen:#?}"));
        let json: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let in_span = json["spans"]
            .as_array()
            .is_some_and(|spans| spans.iter().any(|s| s["transfer_id"] == id));
        let done = in_span && json["fields"]["message"] == message;
        seen.push(json);
        if done {
            return seen;
        }
    }
}

#[test]
fn the_transfer_id_orbitctl_prints_is_in_both_stars_json_logs() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = init_grid(tmp.path(), &["star-a", "star-b"]);
    let (src_root, dst_root) = two_roots(tmp.path());
    let start = |name: &str, root: &std::path::Path| {
        StarProcess::start(&[
            "--config",
            &wire(&grid.join(format!("stars/{name}/star.toml"))),
            "--allow",
            &wire(root),
            "--log-format",
            "json",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
    };
    let a = start("star-a", &src_root);
    let b = start("star-b", &dst_root);
    // The metrics line comes right after the listening line.
    let metrics_line = b
        .lines
        .recv_timeout(STEP_TIMEOUT)
        .expect("the metrics line");
    let metrics = metrics_addr(&metrics_line).expect(&metrics_line);

    let src = src_root.join("f.bin");
    random_file(&src, 123_457);
    let g = wire(&grid);
    let (from, to) = (
        format!("star-a:{}", wire(&src)),
        format!("star-b:{}", wire(&dst_root.join("f.bin"))),
    );
    let out = orbitctl(&["--grid", &g, "replicate", &from, &to, "--json"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let json: serde_json::Value =
        serde_json::from_str(out.stdout.trim().lines().last().unwrap_or_default()).unwrap();
    let id = json["transfer_id"]
        .as_str()
        .expect("a transfer id")
        .to_owned();
    assert_eq!(id.len(), 16, "{id}");

    // The plain summary line names it too.
    let out = orbitctl(&["--grid", &g, "replicate", &from, &to]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let second = out
        .stdout
        .trim()
        .rsplit("transfer ")
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(second.len(), 16, "{}", out.stdout);
    assert_ne!(second, id);

    let dst_lines = wait_for_transfer(&b, &id, "replication completed");
    assert!(
        dst_lines
            .iter()
            .any(|l| l["fields"]["message"] == "replication started"
                && l["spans"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|s| s["transfer_id"] == id.as_str())),
        "{dst_lines:#?}"
    );
    let src_lines = wait_for_transfer(&a, &id, "read completed");
    assert!(
        src_lines
            .iter()
            .any(|l| l["fields"]["message"] == "read authorised"
                && l["spans"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|s| s["transfer_id"] == id.as_str())),
        "{src_lines:#?}"
    );
    wait_for_transfer(&b, &second, "replication completed");
    wait_for_transfer(&a, &second, "read completed");

    let text = scrape(metrics);
    assert_eq!(
        sample(&text, "orbit_p2p_transfers_total{status=\"ok\"}"),
        2.0
    );
    assert_eq!(
        sample(
            &text,
            "orbit_p2p_bytes_transferred_total{direction=\"received\"}"
        ),
        2.0 * 123_457.0
    );
    assert!(a.terminate().success());
    assert!(b.terminate().success());
}

#[test]
fn off_a_terminal_the_log_is_plain_and_in_the_journal_each_line_carries_its_priority() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = init_grid(tmp.path(), &["star-a"]);
    let root = tmp.path().join("a");
    std::fs::create_dir_all(&root).unwrap();
    let config = wire(&grid.join("stars/star-a/star.toml"));
    let args = ["--config", config.as_str(), "--allow", &wire(&root)];
    // stderr a pipe: no colour codes (the journal stores a line holding them as a blob).
    let piped = StarProcess::start(&args);
    assert!(
        piped.started.iter().all(|l| !l.contains('\x1b')),
        "{:?}",
        piped.started
    );
    assert!(piped.terminate().success());
    // stderr the journal's stream, as systemd says with $JOURNAL_STREAM (its device and inode):
    // every line starts with its syslog priority, which journald files it under.
    let journal = StarProcess::start_prefixed(
        &[
            "sh",
            "-c",
            r#"JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) exec "$0" "$@""#,
        ],
        &args,
        &[],
    );
    let listening = journal.started.last().unwrap();
    assert!(listening.starts_with("<6>"), "{listening:?}");
    assert!(
        journal
            .started
            .iter()
            .all(|l| l.starts_with('<') && !l.contains('\x1b')),
        "{:?}",
        journal.started
    );
    assert!(journal.terminate().success());
}
