//! A transfer outlives its controller: `replicate --detach` returns at once with the transfer
//! id, `wait ID` reports it as `replicate` would (also after it ended), `status` lists it while
//! it runs, `cancel ID` stops it and the destination keeps nothing, Ctrl-C on a foreground
//! `replicate` does the same, and a controller killed mid-transfer does not stop it.
//!
//! The source is a [`SlowSource`] that holds every transfer after its first bytes until the test
//! releases it, so each case runs while the transfer is certainly in flight.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Stdio;

use orbit_tests::slow_source::HeldGrid;
use orbit_tests::wire;

const SIZE: usize = 4 * 1024 * 1024 + 5;
const HOLD: usize = 1024 * 1024;

fn backup_dir() -> PathBuf {
    PathBuf::from("backup")
}

#[test]
fn a_detached_transfer_is_listed_waited_for_and_remembered() {
    let g = HeldGrid::start(SIZE, HOLD);
    let out = g.orbitctl(&["replicate", &g.src(), &g.dst("f.bin"), "--detach"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let id = out.stdout.trim().to_owned();
    assert_eq!(id.len(), 16, "{}", out.stdout);
    g.wait_for_part(HOLD as u64);

    // In flight, with its progress.
    let status = g.orbitctl(&["status", "star-b", "--json"]);
    assert_eq!(status.code, Some(0), "{}{}", status.stdout, status.stderr);
    let json: serde_json::Value = serde_json::from_str(status.stdout.trim()).unwrap();
    let t = &json["stars"][0]["transfers"][0];
    assert_eq!(t["transfer_id"], id.as_str(), "{json}");
    assert_eq!(t["total"], SIZE, "{json}");
    assert_eq!(t["source"], "star-a", "{json}");

    // `wait` asks every star, finds star-b, and reports what `replicate` would.
    let waiting = g
        .command(&["wait", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    g.source.release();
    let done = waiting.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&done.stdout);
    assert_eq!(
        done.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(
        stdout.starts_with(&format!(
            "star-b: star-a:/srv/data/f.bin -> {}: {SIZE} bytes in ",
            wire(&g.target("f.bin"))
        )),
        "{stdout}"
    );
    assert_eq!(std::fs::read(g.target("f.bin")).unwrap(), g.content);

    // After the end, the result is still there, also as JSON and from the named star.
    let again = g.orbitctl(&["wait", &id, "--star", "star-b", "--json"]);
    assert_eq!(again.code, Some(0), "{}{}", again.stdout, again.stderr);
    let json: serde_json::Value =
        serde_json::from_str(again.stdout.lines().last().unwrap()).unwrap();
    assert_eq!(json["ok"], true);
    assert_eq!(json["transfer_id"], id.as_str());
    assert_eq!(json["bytes"], SIZE);

    // No longer in flight.
    let status = g.orbitctl(&["status", "star-b", "--json"]);
    let json: serde_json::Value = serde_json::from_str(status.stdout.trim()).unwrap();
    assert_eq!(
        json["stars"][0]["transfers"],
        serde_json::json!([]),
        "{json}"
    );
}

#[test]
fn cancel_stops_a_detached_transfer_and_the_destination_keeps_nothing() {
    let g = HeldGrid::start(SIZE, HOLD);
    let out = g.orbitctl(&["replicate", &g.src(), &g.dst("f.bin"), "--detach"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let id = out.stdout.trim().to_owned();
    g.wait_for_part(HOLD as u64);

    let cancel = g.orbitctl(&["cancel", &id]);
    assert_eq!(cancel.code, Some(0), "{}{}", cancel.stdout, cancel.stderr);
    assert!(
        cancel
            .stdout
            .starts_with(&format!("star-b: transfer {id} cancelled")),
        "{}",
        cancel.stdout
    );
    // `cancel` returns once the destination has cleaned up.
    assert_eq!(g.leftovers(), [backup_dir()]);

    // Waiting for it reports the cancellation, as one line naming the star, exit 1.
    let wait = g.orbitctl(&["wait", &id, "--json"]);
    assert_eq!(wait.code, Some(1), "{}{}", wait.stdout, wait.stderr);
    // NDJSON: where the transfer stood, then the result.
    let json: serde_json::Value =
        serde_json::from_str(wait.stdout.lines().last().unwrap()).unwrap();
    assert_eq!(json["ok"], false);
    assert_eq!(json["code"], "Cancelled");
    assert_eq!(wait.stderr.lines().count(), 1, "{}", wait.stderr);
    assert!(
        wait.stderr.starts_with("orbitctl: star-b: "),
        "{}",
        wait.stderr
    );

    // The source is let go only now: nothing reaches the target.
    g.source.release();
    let status = g.orbitctl(&["status", "star-b", "--json"]);
    let json: serde_json::Value = serde_json::from_str(status.stdout.trim()).unwrap();
    assert_eq!(
        json["stars"][0]["transfers"],
        serde_json::json!([]),
        "{json}"
    );
    assert_eq!(g.leftovers(), [backup_dir()]);

    // An id no star knows is one clear line, exit 1.
    let unknown = g.orbitctl(&["cancel", "00000000000000ff"]);
    assert_eq!(unknown.code, Some(1));
    assert_eq!(unknown.stderr.lines().count(), 1, "{}", unknown.stderr);
    assert!(
        unknown
            .stderr
            .contains("no star knows transfer 00000000000000ff"),
        "{}",
        unknown.stderr
    );
}

#[test]
fn ctrl_c_cancels_a_foreground_replication_and_cleans_up() {
    let g = HeldGrid::start(SIZE, HOLD);
    let child = g
        .command(&["replicate", &g.src(), &g.dst("f.bin")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    g.wait_for_part(HOLD as u64);
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("orbitctl: star-b: replication cancelled"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    // orbitctl returned only after the destination had removed its temporary file.
    assert_eq!(g.leftovers(), [backup_dir()]);
    g.source.release();
    assert!(!g.target("f.bin").exists());
}

#[test]
fn a_transfer_outlives_a_controller_that_is_killed() {
    let g = HeldGrid::start(SIZE, HOLD);
    let mut child = g
        .command(&["replicate", &g.src(), &g.dst("f.bin"), "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The first progress event names the transfer.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("a progress event").unwrap();
    let event: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(event["event"], "progress", "{first}");
    let id = event["transfer_id"].as_str().unwrap().to_owned();

    child.kill().unwrap();
    child.wait().unwrap();
    g.source.release();

    let wait = g.orbitctl(&["wait", &id]);
    assert_eq!(wait.code, Some(0), "{}{}", wait.stdout, wait.stderr);
    assert_eq!(std::fs::read(g.target("f.bin")).unwrap(), g.content);
    assert_eq!(g.leftovers(), [backup_dir(), backup_dir().join("f.bin")]);
}
