//! The real binaries, as a person or a script uses them: `orbitctl init`, two `orbit-star`
//! processes, `orbitctl replicate` (plain and `--json`), `orbitctl status`, `orbitctl token`, and
//! `orbitctl demo`; SIGTERM or SIGINT stops a star with exit code 0.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use orbit_tests::process::{orbitctl, StarProcess};
use orbit_tests::{random_file, wire};

/// `orbitctl init` for two stars on loopback ports that are free right now.
fn init_grid(root: &Path) -> PathBuf {
    let grid = root.join("grid");
    let ports: Vec<u16> = (0..2)
        .map(|_| {
            std::net::UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .collect();
    let a = format!("star-a=127.0.0.1:{}", ports[0]);
    let b = format!("star-b=127.0.0.1:{}", ports[1]);
    let out = orbitctl(&["init", &wire(&grid), "--star", &a, "--star", &b]);
    assert_eq!(
        out.code,
        Some(0),
        "init failed: {}{}",
        out.stdout,
        out.stderr
    );
    grid
}

/// A temporary directory (removed when the first value drops) holding a grid for star-a and
/// star-b and their roots, `src` and `dst`.
fn grid_and_roots() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let grid = init_grid(tmp.path());
    let src_root = tmp.path().join("src");
    let dst_root = tmp.path().join("dst");
    std::fs::create_dir_all(&src_root).unwrap();
    std::fs::create_dir_all(&dst_root).unwrap();
    (tmp, grid, src_root, dst_root)
}

fn start_star(grid: &Path, name: &str, root: &Path) -> StarProcess {
    let config = grid.join(format!("stars/{name}/star.toml"));
    StarProcess::start(&["--config", &wire(&config), "--allow", &wire(root)])
}

#[test]
fn init_writes_the_grid_with_private_keys_and_refuses_to_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = init_grid(tmp.path());
    for file in [
        "grid.toml",
        "ca.pem",
        "ca.key",
        "controller.pem",
        "controller.key",
        "token-master.key",
        "stars/star-a/star.toml",
        "stars/star-a/cert.pem",
        "stars/star-a/key.pem",
        "stars/star-a/ca.pem",
        "stars/star-a/token.key",
        "stars/star-b/star.toml",
    ] {
        assert!(grid.join(file).is_file(), "{file} missing");
    }
    for key in [
        "ca.key",
        "controller.key",
        "token-master.key",
        "stars/star-a/key.pem",
        "stars/star-a/token.key",
    ] {
        let mode = std::fs::metadata(grid.join(key))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{key} has mode {mode:o}");
    }
    let before = std::fs::read(grid.join("ca.key")).unwrap();
    let again = orbitctl(&["init", &wire(&grid), "--star", "star-c=127.0.0.1:1"]);
    assert_ne!(again.code, Some(0));
    assert!(again.stderr.contains("not empty"), "{}", again.stderr);
    assert_eq!(
        std::fs::read(grid.join("ca.key")).unwrap(),
        before,
        "the CA key was touched"
    );
}

#[test]
fn two_star_processes_replicate_and_stop_cleanly() {
    let (_tmp, grid, src_root, dst_root) = grid_and_roots();
    let a = start_star(&grid, "star-a", &src_root);
    let b = start_star(&grid, "star-b", &dst_root);

    let src = src_root.join("data/f.bin");
    let dst = dst_root.join("backup/f.bin");
    let digest = hex::encode(random_file(&src, 3 * 1024 * 1024 + 17));
    let g = wire(&grid);
    let out = orbitctl(&[
        "--grid",
        &g,
        "replicate",
        &format!("star-a:{}", wire(&src)),
        &format!("star-b:{}", wire(&dst)),
        "--json",
    ]);
    assert_eq!(
        out.code,
        Some(0),
        "replicate failed: {}{}",
        out.stdout,
        out.stderr
    );
    let json: serde_json::Value =
        serde_json::from_str(out.stdout.trim().lines().last().unwrap_or_default())
            .expect("one JSON object");
    assert_eq!(json["ok"], true);
    assert_eq!(json["bytes"], 3 * 1024 * 1024 + 17);
    assert_eq!(json["sha256"], digest.as_str());
    assert!(json["seconds"].as_f64().is_some(), "{json}");
    assert_eq!(std::fs::read(&dst).unwrap(), std::fs::read(&src).unwrap());
    // The controller never carries file data: its whole conversation, handshake included, fits
    // in 8 KiB on the wire for a 3 MiB file.
    let wire_bytes = json["controller_bytes_sent"].as_u64().unwrap()
        + json["controller_bytes_received"].as_u64().unwrap();
    assert!(
        wire_bytes <= 8 * 1024,
        "controller bytes on the wire: {json}"
    );

    // The plain form: one summary line with the size and checksum.
    let dst2 = dst_root.join("backup/g.bin");
    let out = orbitctl(&[
        "--grid",
        &g,
        "replicate",
        &format!("star-a:{}", wire(&src)),
        &format!("star-b:{}", wire(&dst2)),
        "--expect-sha256",
        &digest,
    ]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert_eq!(out.stdout.lines().count(), 1, "{}", out.stdout);
    assert!(
        out.stdout.contains(&digest) && out.stdout.contains("3145745"),
        "{}",
        out.stdout
    );

    // A refused read: non-zero exit, one line on stderr naming the star and the reason, and
    // --json says which code.
    let out = orbitctl(&[
        "--grid",
        &g,
        "replicate",
        &format!("star-a:{}/missing.bin", wire(&src_root)),
        &format!("star-b:{}", wire(&dst_root.join("x.bin"))),
        "--json",
    ]);
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    let json: serde_json::Value =
        serde_json::from_str(out.stdout.trim().lines().last().unwrap_or_default())
            .expect("one JSON object");
    assert_eq!(json["ok"], false);
    assert_eq!(json["code"], "NotFound");
    assert!(
        json["message"].as_str().unwrap().contains("star-a"),
        "{json}"
    );
    let out = orbitctl(&[
        "--grid",
        &g,
        "replicate",
        &format!("star-a:{}/missing.bin", wire(&src_root)),
        &format!("star-b:{}", wire(&dst_root.join("x.bin"))),
    ]);
    assert_eq!(out.code, Some(1));
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("star-b") && out.stderr.contains("not found"),
        "{}",
        out.stderr
    );
    assert!(!dst_root.join("x.bin").exists());

    // Status sees both stars up.
    let out = orbitctl(&["--grid", &g, "status", "--json"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let json: serde_json::Value =
        serde_json::from_str(out.stdout.trim().lines().last().unwrap_or_default())
            .expect("one JSON object");
    let stars = json["stars"].as_array().expect("stars");
    assert_eq!(stars.len(), 2);
    assert!(stars.iter().all(|s| s["up"] == true), "{json}");
    let out = orbitctl(&["--grid", &g, "status"]);
    assert_eq!(out.code, Some(0));
    assert!(
        out.stdout.contains("star-a") && out.stdout.contains("star-b"),
        "{}",
        out.stdout
    );

    // A token for scripts: one line, nothing else.
    let out = orbitctl(&[
        "--grid",
        &g,
        "token",
        &format!("star-a:{}", wire(&src)),
        "--holder",
        "star-b",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout.trim().lines().count(), 1);

    let logs_a: Vec<String> = a.drain_lines();
    assert!(
        logs_a.iter().any(|l| l.contains("read completed")),
        "{logs_a:#?}"
    );
    assert_eq!(a.terminate().code(), Some(0), "SIGTERM");
    assert_eq!(b.interrupt().code(), Some(0), "SIGINT");

    // With the stars gone, status says so and exits non-zero, quickly.
    let out = orbitctl(&["--grid", &g, "status"]);
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
}

/// `orbitctl` returns as soon as its close is on the wire, without waiting out QUIC's draining
/// period; the close must still reach the star, or each command's connection would hold one of
/// the controller's places there until the idle timeout (30 s).
#[test]
fn commands_in_a_row_each_free_their_place_at_the_star() {
    let (_tmp, grid, src_root, dst_root) = grid_and_roots();
    let _a = start_star(&grid, "star-a", &src_root);
    // The controller may hold max_transfers + max_connections_per_peer = 2 connections.
    let config = wire(&grid.join("stars/star-b/star.toml"));
    let root = wire(&dst_root);
    let _b = StarProcess::start(&[
        "--config",
        &config,
        "--allow",
        &root,
        "--max-transfers",
        "1",
        "--max-connections-per-peer",
        "1",
    ]);
    let src = src_root.join("f.bin");
    let data = random_file(&src, 16 * 1024);
    let g = wire(&grid);
    for i in 0..5 {
        let dst = dst_root.join(format!("f{i}.bin"));
        let out = orbitctl(&[
            "--grid",
            &g,
            "replicate",
            &format!("star-a:{}", wire(&src)),
            &format!("star-b:{}", wire(&dst)),
        ]);
        assert_eq!(
            out.code,
            Some(0),
            "command {i}: {}{}",
            out.stdout,
            out.stderr
        );
        assert_eq!(orbit_tests::sha256_file(&dst), data, "command {i}");
        let out = orbitctl(&["--grid", &g, "status"]);
        assert_eq!(
            out.code,
            Some(0),
            "status {i}: {}{}",
            out.stdout,
            out.stderr
        );
    }
}

#[test]
fn the_demo_runs_with_no_setup_and_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(orbit_tests::process::bin("orbitctl"))
        .args(["demo", "--size", "4194304"])
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("4194304"), "{stdout}");
    assert!(stdout.to_lowercase().contains("sha256"), "{stdout}");
    assert!(stdout.contains("/s"), "no rate in: {stdout}");
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "the demo left files behind"
    );
}

#[test]
fn a_star_takes_its_token_key_from_orbit_auth_secret() {
    let (_tmp, grid, src_root, dst_root) = grid_and_roots();
    // star-a from flags alone, its key only in the environment; the listen address from grid.toml.
    let dir = grid.join("stars/star-a");
    let secret = std::fs::read_to_string(dir.join("token.key")).unwrap();
    std::fs::remove_file(dir.join("token.key")).unwrap();
    let inventory = std::fs::read_to_string(grid.join("grid.toml")).unwrap();
    let addr = inventory
        .lines()
        .skip_while(|l| !l.contains("star-a"))
        .find_map(|l| l.trim().strip_prefix("addr = "))
        .expect("star-a's address")
        .trim_matches('"')
        .to_owned();
    let a = StarProcess::start_with_env(
        &[
            "--name",
            "star-a",
            "--listen",
            &addr,
            "--cert",
            &wire(&dir.join("cert.pem")),
            "--key",
            &wire(&dir.join("key.pem")),
            "--ca",
            &wire(&dir.join("ca.pem")),
            "--allow",
            &wire(&src_root),
        ],
        &[("ORBIT_AUTH_SECRET", secret.trim())],
    );
    let b = start_star(&grid, "star-b", &dst_root);
    let src = src_root.join("f.bin");
    random_file(&src, 70_000);
    let out = orbitctl(&[
        "--grid",
        &wire(&grid),
        "replicate",
        &format!("star-a:{}", wire(&src)),
        &format!("star-b:{}", wire(&dst_root.join("f.bin"))),
    ]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert_eq!(
        std::fs::read(dst_root.join("f.bin")).unwrap(),
        std::fs::read(&src).unwrap()
    );
    assert_eq!(a.terminate().code(), Some(0));
    assert_eq!(b.terminate().code(), Some(0));
}
