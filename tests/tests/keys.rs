//! Token key rotation and key secrecy. A star accepts tokens under its current and its previous
//! key, chosen by the token's key id, and refuses any other key id (retired two rotations ago, or
//! never its own) with `PermissionDenied`. `orbitctl rotate-keys` rotates a running grid of real
//! `orbit-star` processes without one failed replication. Key files readable by others stop a
//! star before it starts, and no key material ever reaches its logs, even at debug level.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use orbit_certs::IssuedCert;
use orbit_tests::ops::{ok, reload, start_star, RELOAD_TIMEOUT};
use orbit_tests::process::{bin, orbitctl, StarProcess};
use orbit_tests::*;
use orbit_wire::token::{self, MasterKey, TokenKey};
use orbit_wire::ErrorCode;

/// A token for star-a's `path`, held by star-b, signed with `key`.
fn token_under(grid: &Grid, key: &TokenKey, path: &str) -> String {
    let mut claims = grid.claims("star-a", "star-b", path);
    claims.key_id = key.key_id();
    token::sign(&claims, key)
}

/// Reads `path` from `star` as star-b with `token`.
async fn read_as_b(
    grid: &Grid,
    star: &orbit_agent::Star,
    path: &str,
    token: String,
) -> ReadOutcome {
    let client = grid.star_client("star-b");
    let conn = client.connect(star.local_addr(), "star-a").await.unwrap();
    let outcome = client
        .read(&conn, &read_request(path, token))
        .await
        .unwrap();
    conn.close(0u32.into(), b"done");
    outcome
}

fn key_of(master: &MasterKey) -> TokenKey {
    TokenKey::derive(master, "star-a")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_and_previous_token_keys_are_both_accepted() {
    let grid = Grid::new();
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("f.bin");
    random_file(&file, 70_000);
    let previous = MasterKey::from_bytes(rand::random());
    let mut config = grid.star_config("star-a", &[src.path()]);
    config.previous_token_key = Some(key_of(&previous));
    let a = orbit_agent::Star::spawn(config).await.unwrap();
    let path = wire(&file);
    for key in [grid.key("star-a"), key_of(&previous)] {
        let outcome = read_as_b(&grid, &a, &path, token_under(&grid, &key, &path)).await;
        assert!(outcome.error.is_none(), "{:?}", outcome.error);
        assert!(outcome.bytes == std::fs::read(&file).unwrap());
    }
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_under_a_retired_or_unknown_key_are_refused() {
    let grid = Grid::new();
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("f.bin");
    random_file(&file, 1000);
    // Three generations: m0 retired, m1 previous, the grid's master current.
    let m0 = MasterKey::from_bytes(rand::random());
    let m1 = MasterKey::from_bytes(rand::random());
    let mut config = grid.star_config("star-a", &[src.path()]);
    config.previous_token_key = Some(key_of(&m1));
    let a = orbit_agent::Star::spawn(config).await.unwrap();
    let path = wire(&file);
    let unknown = TokenKey::from_hex(&hex::encode(rand::random::<[u8; 32]>())).unwrap();
    for (what, key) in [("retired", key_of(&m0)), ("unknown", unknown)] {
        let outcome = read_as_b(&grid, &a, &path, token_under(&grid, &key, &path)).await;
        let error = assert_refused(&outcome, ErrorCode::PermissionDenied);
        assert_eq!(
            error.message,
            format!(
                "token key id {:08x} is not this star's current or previous key (retired or unknown)",
                key.key_id()
            ),
            "{what}"
        );
    }
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_the_token_keys_of_a_running_star() {
    let grid = Grid::new();
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("f.bin");
    random_file(&file, 1000);
    let path = wire(&file);
    let config = grid.star_config("star-a", &[src.path()]);
    let a = orbit_agent::Star::spawn(config.clone()).await.unwrap();
    let next = MasterKey::from_bytes(rand::random());
    let outcome = read_as_b(&grid, &a, &path, token_under(&grid, &key_of(&next), &path)).await;
    assert_refused(&outcome, ErrorCode::PermissionDenied);

    let mut rotated = config;
    rotated.previous_token_key = Some(rotated.token_key.clone());
    rotated.token_key = key_of(&next);
    let reloaded = a.reload(&rotated).await.unwrap();
    assert_eq!(reloaded.key_id, key_of(&next).key_id());
    assert_eq!(reloaded.previous_key_id, Some(grid.key("star-a").key_id()));
    for key in [key_of(&next), grid.key("star-a")] {
        let outcome = read_as_b(&grid, &a, &path, token_under(&grid, &key, &path)).await;
        assert!(outcome.error.is_none(), "{:?}", outcome.error);
        assert_eq!(outcome.bytes.len(), 1000);
    }
    a.shutdown().await;
}

// ---- real binaries ------------------------------------------------------------------------------

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn init_grid(root: &Path) -> PathBuf {
    let grid = root.join("grid");
    let a = format!("star-a=127.0.0.1:{}", free_port());
    let b = format!("star-b=127.0.0.1:{}", free_port());
    let out = orbitctl(&["init", &wire(&grid), "--star", &a, "--star", &b]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    grid
}

/// star-b's certificate from the grid, to act as star-b in raw reads.
fn star_b_client(grid: &Path) -> Client {
    let read = |f: &str| std::fs::read_to_string(grid.join(f)).unwrap();
    Client::new(
        &read("ca.pem"),
        &IssuedCert {
            cert_pem: read("stars/star-b/cert.pem"),
            key_pem: read("stars/star-b/key.pem"),
        },
    )
}

async fn raw_read(grid: &Path, star: &StarProcess, path: &str, token: &str) -> ReadOutcome {
    let client = star_b_client(grid);
    let conn = client.connect(star.addr, "star-a").await.unwrap();
    let outcome = client
        .read(&conn, &read_request(path, token.to_owned()))
        .await
        .unwrap();
    conn.close(0u32.into(), b"done");
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_keys_rotates_a_running_grid_without_a_failed_replication() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = init_grid(tmp.path());
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    std::fs::create_dir_all(&dst).unwrap();
    let file = src.join("f.bin");
    random_file(&file, 200_000);
    let a = start_star(&grid, "star-a", &src, &[]);
    let b = start_star(&grid, "star-b", &dst, &[]);
    let g = wire(&grid);
    // A token minted before any rotation, for a read two rotations later.
    let old_token = ok(orbitctl(&[
        "--grid",
        &g,
        "token",
        &format!("star-a:{}", wire(&file)),
        "--holder",
        "star-b",
        "--ttl",
        "3600",
    ]))
    .stdout
    .trim()
    .to_owned();
    let mut copies = ops::Copies::new(&grid, &file, &dst);
    let mut replicate_ok = |when: &str| copies.check(when);
    replicate_ok("before the rotation");

    let out = ok(orbitctl(&["--grid", &g, "rotate-keys"]));
    assert!(
        out.stdout.contains("rotate-keys --finish"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("token.previous.key"), "{}", out.stdout);
    replicate_ok("rotation started, stars not reloaded yet");
    reload(&[&a, &b]);
    replicate_ok("stars reloaded, orbitctl still on the old master key");
    ok(orbitctl(&["--grid", &g, "rotate-keys", "--finish"]));
    replicate_ok("orbitctl on the new master key");
    // The token under the old key is star-a's previous key now: still good.
    let outcome = raw_read(&grid, &a, &wire(&file), &old_token).await;
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    assert_eq!(outcome.bytes.len(), 200_000);

    // A second rotation retires the first key.
    ok(orbitctl(&["--grid", &g, "rotate-keys"]));
    reload(&[&a, &b]);
    ok(orbitctl(&["--grid", &g, "rotate-keys", "--finish"]));
    replicate_ok("after the second rotation");
    let outcome = raw_read(&grid, &a, &wire(&file), &old_token).await;
    let error = assert_refused(&outcome, ErrorCode::PermissionDenied);
    assert!(error.message.contains("retired or unknown"), "{error}");
    let refusal = a.wait_for_line("retired or unknown", RELOAD_TIMEOUT);
    assert!(refusal.contains("read refused"), "{refusal}");

    let finish = orbitctl(&["--grid", &g, "rotate-keys", "--finish"]);
    assert_eq!(finish.code, Some(1));
    assert!(
        finish.stderr.contains("no rotation in progress"),
        "{}",
        finish.stderr
    );
    assert!(a.terminate().success());
    assert!(b.terminate().success());
}

/// Runs `orbit-star` expecting it to exit on its own; the output and exit code.
fn star_exits(args: &[&str]) -> (Option<i32>, String) {
    let child = Command::new(bin("orbit-star"))
        .args(args)
        .env_remove("ORBIT_AUTH_SECRET")
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => {
            let out = out.unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
        Err(_) => {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
            panic!("orbit-star kept running with a key file readable by others");
        }
    }
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn key_files_readable_by_others_stop_the_star_and_orbitctl() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = init_grid(tmp.path());
    let star = grid.join("stars/star-a");
    let config = wire(&star.join("star.toml"));
    let args = ["--config", config.as_str(), "--allow", "/tmp"];
    // A star's key file may be root's and readable by its group (root:orbit 0640, how the
    // systemd unit's layout shares the token keys); the fix offered keeps that.
    let root = rustix::process::geteuid().is_root();
    let shared_fix = if root { 640 } else { 600 };
    for (file, mode, what, who, fix) in [
        (
            "token.key",
            0o644,
            "token key file",
            "readable by others",
            shared_fix,
        ),
        (
            "key.pem",
            0o640,
            "private key file",
            "readable by its group",
            600,
        ),
    ] {
        let path = star.join(file);
        chmod(&path, mode);
        if root && mode == 0o640 {
            // Group-readable is refused for any owner but root.
            std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
        }
        let (code, stderr) = star_exits(&args);
        assert_eq!(code, Some(1), "{stderr}");
        let p = path.display();
        assert!(
            stderr.contains(&format!(
                "{what} {p} is {who} (mode {mode:04o}); run: chmod {fix} {p}"
            )),
            "{stderr}"
        );
        assert!(!stderr.contains("listening on"), "{stderr}");
        chmod(&path, 0o600);
    }
    // The previous token key, given as a flag.
    let previous = star.join("token.previous.key");
    std::fs::copy(star.join("token.key"), &previous).unwrap();
    chmod(&previous, 0o604);
    let prev = wire(&previous);
    let (code, stderr) = star_exits(&[&args[..], &["--previous-token-key-file", &prev]].concat());
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("previous token key file"), "{stderr}");
    assert!(
        stderr.contains(&format!("run: chmod {shared_fix} {prev}")),
        "{stderr}"
    );

    // orbitctl refuses the grid's CA key and master key the same way.
    let g = wire(&grid);
    chmod(&grid.join("ca.key"), 0o644);
    let out = orbitctl(&["--grid", &g, "add-star", "star-c=127.0.0.1:1"]);
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("ca key file"), "{}", out.stderr);
    assert!(out.stderr.contains("run: chmod 600"), "{}", out.stderr);
    assert!(!grid.join("stars/star-c").exists());
    chmod(&grid.join("token-master.key"), 0o640);
    let out = orbitctl(&["--grid", &g, "token", "star-a:/tmp/x", "--holder", "star-b"]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("readable by its group"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty(), "{}", out.stdout);
}

/// Every way a key's bytes could be written out: hex (either case), and the base64 lines of a
/// PEM private key.
fn secret_forms(grid: &Path) -> Vec<String> {
    let mut forms = Vec::new();
    for file in [
        "token-master.key",
        "stars/star-a/token.key",
        "stars/star-b/token.key",
    ] {
        let hex = std::fs::read_to_string(grid.join(file))
            .unwrap()
            .trim()
            .to_owned();
        forms.push(hex.to_uppercase());
        forms.push(hex);
    }
    for file in [
        "stars/star-a/key.pem",
        "stars/star-b/key.pem",
        "ca.key",
        "controller.key",
    ] {
        let pem = std::fs::read_to_string(grid.join(file)).unwrap();
        forms.extend(
            pem.lines()
                .filter(|l| !l.starts_with("-----"))
                .map(|l| l[..l.len().min(24)].to_owned()),
        );
    }
    forms
}

#[test]
fn debug_logs_never_show_key_material() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = init_grid(tmp.path());
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    std::fs::create_dir_all(&dst).unwrap();
    let file = src.join("f.bin");
    random_file(&file, 300_000);
    let debug = [("RUST_LOG", "debug")];
    let mut a = start_star(&grid, "star-a", &src, &debug);
    let mut b = start_star(&grid, "star-b", &dst, &debug);
    let g = wire(&grid);
    let out = orbitctl(&[
        "-vvv",
        "--grid",
        &g,
        "replicate",
        &format!("star-a:{}", wire(&file)),
        &format!("star-b:{}", wire(&dst.join("copy.bin"))),
    ]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    // A reload logs the keys it now uses.
    a.hangup();
    let keys_line = a.wait_for_line("token key id", RELOAD_TIMEOUT);
    let mut logs = vec![out.stdout, out.stderr, keys_line];
    // Keep each star's receiver (its reader thread must not lose its pipe), stop the stars, and
    // read everything they logged, shutdown included.
    let receivers: Vec<_> = [&mut a, &mut b]
        .into_iter()
        .map(|star| std::mem::replace(&mut star.lines, std::sync::mpsc::channel().1))
        .collect();
    assert!(a.terminate().success());
    assert!(b.terminate().success());
    for lines in receivers {
        logs.extend(lines.iter());
    }
    let logs = logs.join("\n");
    // The run did log at debug level, and named the key ids.
    assert!(logs.contains("DEBUG"), "no debug lines: {logs}");
    assert!(logs.contains("token key id"), "{logs}");
    for secret in secret_forms(&grid) {
        assert!(
            !logs.contains(&secret),
            "key material in the logs: {secret}"
        );
    }
}
