//! One file over several QUIC connections (`orbitctl replicate --connections`, the star's
//! `connections` setting), through the real binaries: the bytes arrive whole and the source
//! really saw that many connections (its own handshake counter); a destination killed with
//! `kill -9` midway resumes from its journal after a restart, without fetching again what it
//! had verified, and never shows a partial file at the target; the setting's bad values are
//! refused and its effective value shown by `--check-config`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use orbit_tests::ops::{init_grid, metrics_addr, orbit_star, sample, scrape};
use orbit_tests::process::{bin, StarProcess};
use orbit_tests::{list_tree, part_files, random_file, sha256_file, wire, STEP_TIMEOUT};

const MIB: usize = 1024 * 1024;
const HANDSHAKES_IN: &str = "orbit_p2p_handshakes_total{direction=\"inbound\",status=\"ok\"}";
const SENT: &str = "orbit_p2p_bytes_transferred_total{direction=\"sent\"}";

/// A grid of star-a (the source) and star-b under `root`, with their roots.
struct Pair {
    grid: PathBuf,
    src_root: PathBuf,
    dst_root: PathBuf,
}

impl Pair {
    fn new(root: &Path) -> Pair {
        let grid = init_grid(root, &["star-a", "star-b"]);
        let (src_root, dst_root) = (root.join("src"), root.join("dst"));
        std::fs::create_dir_all(&src_root).unwrap();
        std::fs::create_dir_all(&dst_root).unwrap();
        Pair {
            grid,
            src_root,
            dst_root,
        }
    }

    fn config(&self, name: &str) -> String {
        wire(&self.grid.join(format!("stars/{name}/star.toml")))
    }

    /// star-a, serving metrics; with the address of its metrics.
    fn start_source(&self) -> (StarProcess, std::net::SocketAddr) {
        let a = StarProcess::start(&[
            "--config",
            &self.config("star-a"),
            "--allow",
            &wire(&self.src_root),
            "--metrics-listen",
            "127.0.0.1:0",
        ]);
        let line = a.wait_for_line("metrics on http://", STEP_TIMEOUT);
        let addr = metrics_addr(&line).expect(&line);
        (a, addr)
    }

    fn start_destination(&self, env: &[(&str, &str)]) -> StarProcess {
        StarProcess::start_with_env(
            &[
                "--config",
                &self.config("star-b"),
                "--allow",
                &wire(&self.dst_root),
            ],
            env,
        )
    }

    /// `orbitctl replicate star-a:SRC star-b:DST EXTRA...`, running.
    fn replicate(&self, src: &Path, dst: &Path, extra: &[&str]) -> Child {
        Command::new(bin("orbitctl"))
            .args(["--grid", &wire(&self.grid), "replicate"])
            .arg(format!("star-a:{}", wire(src)))
            .arg(format!("star-b:{}", wire(dst)))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

#[track_caller]
fn succeeded(child: Child) {
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn one_file_over_three_connections_arrives_whole_and_the_source_sees_three() {
    let tmp = tempfile::tempdir().unwrap();
    let pair = Pair::new(tmp.path());
    let src = pair.src_root.join("f.bin");
    let digest = random_file(&src, 24 * MIB);
    let (_a, metrics) = pair.start_source();
    let handshakes = || sample(&scrape(metrics), HANDSHAKES_IN);

    // The default, auto: one connection for a file this small (and on a host this size).
    let b = pair.start_destination(&[]);
    let dst = pair.dst_root.join("auto.bin");
    succeeded(pair.replicate(&src, &dst, &["--connections", "auto"]));
    assert_eq!(sha256_file(&dst), digest);
    assert_eq!(handshakes(), 1.0, "auto took more than one connection");
    // Done, the star holds no handle on the file (deleted or replaced, it would keep its space).
    let held = std::fs::read_dir(format!("/proc/{}/fd", b.pid()))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.unwrap().path()).ok())
        .any(|to| to == dst);
    assert!(!held, "star-b holds the file it received open");
    drop(b);

    // The destination's setting forces three.
    let b = pair.start_destination(&[("ORBIT_CONNECTIONS", "3")]);
    let dst = pair.dst_root.join("setting.bin");
    succeeded(pair.replicate(&src, &dst, &["--connections", "auto"]));
    assert_eq!(sha256_file(&dst), digest);
    assert_eq!(handshakes(), 4.0, "the setting's three connections");
    drop(b);

    // The command's count wins over the destination's default.
    let b = pair.start_destination(&[]);
    let dst = pair.dst_root.join("command.bin");
    succeeded(pair.replicate(&src, &dst, &["--connections", "3"]));
    assert_eq!(sha256_file(&dst), digest);
    assert_eq!(handshakes(), 7.0, "the command's three connections");
    drop(b);

    let mut files = list_tree(&pair.dst_root);
    files.sort();
    let names = ["auto.bin", "command.bin", "setting.bin"];
    assert_eq!(files, names.map(PathBuf::from).to_vec());
}

#[test]
fn the_source_does_not_hash_the_pieces_of_a_file_checked_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let pair = Pair::new(tmp.path());
    let src = pair.src_root.join("f.bin");
    // Three pieces of 8 MiB and one of 5 bytes.
    let digest = random_file(&src, 24 * MIB + 5);
    let a = StarProcess::start_with_env(
        &[
            "--config",
            &pair.config("star-a"),
            "--allow",
            &wire(&pair.src_root),
        ],
        &[("RUST_LOG", "info,orbit_agent::serve=debug")],
    );
    let _b = pair.start_destination(&[]);

    // One stream: the source hashes what it sends, for the trailer the destination checks.
    let one = pair.dst_root.join("one.bin");
    succeeded(pair.replicate(&src, &one, &[]));
    assert_eq!(sha256_file(&one), digest);
    let line = a.wait_for_line("range read", STEP_TIMEOUT);
    assert!(line.contains("hashed=true"), "{line}");

    // In pieces: the agreement's empty read, then the four pieces, none of them hashed (the
    // whole file's digest is the one the source remembers from the first send).
    let pieces = pair.dst_root.join("pieces.bin");
    succeeded(pair.replicate(&src, &pieces, &["--connections", "2"]));
    assert_eq!(sha256_file(&pieces), digest);
    let lines: Vec<String> = (0..5)
        .map(|_| a.wait_for_line("range read", STEP_TIMEOUT))
        .collect();
    assert!(
        lines.iter().all(|l| l.contains("hashed=false")),
        "{lines:#?}"
    );
    let sizes = ["size=0", "size=8388608", "size=5"];
    for size in sizes {
        assert!(
            lines.iter().any(|l| l.contains(&format!("{size} "))),
            "{size}: {lines:#?}"
        );
    }
    drop(_b);

    // `auto` on a destination whose setting is one connection: one stream, the whole file in
    // one read, hashed as it is sent (cheaper than pieces over one connection).
    let _b = pair.start_destination(&[("ORBIT_CONNECTIONS", "1")]);
    let auto = pair.dst_root.join("auto.bin");
    succeeded(pair.replicate(&src, &auto, &["--connections", "auto"]));
    assert_eq!(sha256_file(&auto), digest);
    let line = a.wait_for_line("range read", STEP_TIMEOUT);
    let whole = format!("start=0 size={} hashed=", 24 * MIB + 5);
    assert!(line.contains(&whole), "{line}");
}

#[test]
fn over_several_connections_a_file_the_command_does_not_expect_is_not_published() {
    let tmp = tempfile::tempdir().unwrap();
    let pair = Pair::new(tmp.path());
    let src = pair.src_root.join("f.bin");
    let digest = random_file(&src, 20 * MIB);
    let (_a, _) = pair.start_source();
    let _b = pair.start_destination(&[]);
    let dst = pair.dst_root.join("f.bin");

    // One source's pieces are fetched while it attests; its digest still decides.
    let wrong = "ab".repeat(32);
    let child = pair.replicate(
        &src,
        &dst,
        &["--connections", "2", "--expect-sha256", &wrong, "--json"],
    );
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let json: serde_json::Value =
        serde_json::from_str(stdout.trim().lines().last().unwrap_or_default()).expect(&stdout);
    assert_eq!(json["code"], "DataLoss", "{json}");
    assert!(
        json["message"]
            .as_str()
            .unwrap_or_default()
            .contains(&wrong),
        "{json}"
    );
    assert!(
        list_tree(&pair.dst_root).is_empty(),
        "{:?}",
        list_tree(&pair.dst_root)
    );

    // The right digest: the file arrives.
    let right = hex::encode(digest);
    succeeded(pair.replicate(
        &src,
        &dst,
        &["--connections", "2", "--expect-sha256", &right],
    ));
    assert_eq!(sha256_file(&dst), digest);
}

/// The `verified` count of the one journal entry in `journal`, if there is one.
fn journaled(journal: &Path) -> Option<u64> {
    let entry = std::fs::read_dir(journal)
        .ok()?
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "json"))?;
    let body = std::fs::read(entry.path()).ok()?;
    let json: serde_json::Value = serde_json::from_slice(&body).ok()?;
    json["pieces"].as_object()?;
    json["verified"].as_u64()
}

#[test]
fn a_destination_killed_midway_resumes_from_its_verified_pieces() {
    const SIZE: usize = 256 * MIB;
    let tmp = tempfile::tempdir().unwrap();
    let pair = Pair::new(tmp.path());
    let src = pair.src_root.join("big.bin");
    let dst = pair.dst_root.join("big.bin");
    let digest = random_file(&src, SIZE);
    let journal = pair.grid.join("stars/star-b/state/transfers");
    let (_a, metrics) = pair.start_source();

    let b = pair.start_destination(&[]);
    let mut controller = pair.replicate(&src, &dst, &["--connections", "2"]);
    // Killed once the journal vouches for a quarter of the file; the pacing between looks is
    // not what the test waits for, the bound is the deadline.
    let deadline = Instant::now() + STEP_TIMEOUT;
    let at_kill = loop {
        assert!(
            !dst.exists(),
            "the transfer ended before it could be killed"
        );
        if let Some(verified) = journaled(&journal).filter(|v| *v >= (SIZE / 4) as u64) {
            break verified;
        }
        assert!(
            Instant::now() < deadline,
            "no journaled progress: {:?}",
            list_tree(&pair.dst_root)
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    drop(b); // SIGKILL
    let _ = controller.kill();
    let _ = controller.wait();
    assert!(!dst.exists(), "a file at the target after the kill");

    // Restarted, the star resumes the transfer on its own.
    let b = pair.start_destination(&[]);
    b.wait_for_line("resuming from the journaled pieces", STEP_TIMEOUT);
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let entries = std::fs::read_dir(&journal).map_or(0, |d| d.count());
        if dst.exists() && entries == 0 && part_files(&pair.dst_root).is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never finished: {:?}",
            list_tree(&pair.dst_root)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(sha256_file(&dst), digest);
    assert_eq!(list_tree(&pair.dst_root), vec![PathBuf::from("big.bin")]);
    let sent = sample(&scrape(metrics), SENT);
    eprintln!(
        "killed with {at_kill} of {SIZE} bytes journaled; the source sent {sent} bytes ({:.2}x)",
        sent / SIZE as f64
    );
    // Starting over would send the journaled quarter again and all that was in flight: the
    // source sends the file about once, plus what was past the verified prefix at the kill.
    assert!(sent >= SIZE as f64, "{sent}");
    assert!(sent < 1.75 * SIZE as f64, "the source sent {sent} bytes");
}

/// The line of `--check-config`'s output for `key`.
fn setting<'a>(stdout: &'a str, key: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.starts_with(&format!("{key} =")) || l.starts_with(&format!("# {key}:")))
        .unwrap_or_else(|| panic!("no line for {key}:\n{stdout}"))
}

#[test]
fn the_connections_setting_refuses_bad_values_and_shows_its_effective_one() {
    let tmp = tempfile::tempdir().unwrap();
    let pair = Pair::new(tmp.path());
    let config = pair.config("star-b");
    let root = wire(&pair.dst_root);
    let check = |env: &[(&str, &str)]| {
        orbit_star(
            &["--config", &config, "--allow", &root, "--check-config"],
            env,
        )
    };

    let out = check(&[]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let line = setting(&out.stdout, "connections");
    assert!(
        line.starts_with("connections = \"auto\" ") && line.ends_with("# from default"),
        "{line}"
    );
    let out = check(&[("ORBIT_CONNECTIONS", "3")]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let line = setting(&out.stdout, "connections");
    assert!(
        line.starts_with("connections = 3 ") && line.ends_with("# from ORBIT_CONNECTIONS"),
        "{line}"
    );

    for bad in ["0", "9", "many", "-1", ""] {
        let out = check(&[("ORBIT_CONNECTIONS", bad)]);
        assert_ne!(out.code, Some(0), "{bad:?} accepted: {}", out.stdout);
        assert!(
            out.stderr.contains("connections")
                && out.stderr.contains("\"auto\" or a number from 1 to 8"),
            "{bad:?}: {}",
            out.stderr
        );
        assert!(!out.stdout.contains("configuration OK"), "{}", out.stdout);
    }

    // In star.toml: a number or "auto"; anything else names the key and its line.
    let original = std::fs::read_to_string(&config).unwrap();
    for (value, ok) in [
        ("2", true),
        ("\"auto\"", true),
        ("0", false),
        ("\"4\"", false),
        ("true", false),
    ] {
        std::fs::write(&config, format!("{original}connections = {value}\n")).unwrap();
        let out = check(&[]);
        if ok {
            assert_eq!(out.code, Some(0), "{value}: {}{}", out.stdout, out.stderr);
            let line = setting(&out.stdout, "connections");
            assert!(
                line.starts_with(&format!("connections = {value} "))
                    && line.ends_with("# from star.toml"),
                "{line}"
            );
        } else {
            assert_ne!(out.code, Some(0), "{value} accepted: {}", out.stdout);
            assert!(
                out.stderr
                    .contains("connections must be \"auto\" or a number from 1 to 8"),
                "{value}: {}",
                out.stderr
            );
            assert!(out.stderr.contains("line "), "{value}: {}", out.stderr);
        }
    }
}

#[test]
fn a_cancelled_transfer_over_two_connections_leaves_nothing_to_resume() {
    const SIZE: usize = 256 * MIB;
    let tmp = tempfile::tempdir().unwrap();
    let pair = Pair::new(tmp.path());
    let src = pair.src_root.join("big.bin");
    let dst = pair.dst_root.join("big.bin");
    random_file(&src, SIZE);
    let journal = pair.grid.join("stars/star-b/state/transfers");
    let (_a, _metrics) = pair.start_source();
    let b = pair.start_destination(&[]);
    let grid = wire(&pair.grid);
    let (from, to) = (
        format!("star-a:{}", wire(&src)),
        format!("star-b:{}", wire(&dst)),
    );
    let args = [
        "--grid",
        &grid,
        "replicate",
        &from,
        &to,
        "--connections",
        "2",
        "--detach",
    ];
    let out = orbit_tests::process::orbitctl(&args);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let id = out.stdout.trim().to_owned();
    let deadline = Instant::now() + STEP_TIMEOUT;
    while journaled(&journal).is_none_or(|v| v == 0) {
        assert!(
            !dst.exists(),
            "the transfer ended before it could be cancelled"
        );
        assert!(Instant::now() < deadline, "no journaled progress");
        std::thread::sleep(Duration::from_millis(2));
    }

    let cancel = orbit_tests::process::orbitctl(&["--grid", &grid, "cancel", &id]);
    assert_eq!(cancel.code, Some(0), "{}{}", cancel.stdout, cancel.stderr);
    // `cancel` returns once the destination has cleaned up: no temporary file, no entry.
    let entries = || std::fs::read_dir(&journal).map_or(0, |d| d.count());
    assert_eq!(entries(), 0);
    assert_eq!(list_tree(&pair.dst_root), Vec::<PathBuf>::new());

    // A restart finds nothing to resume.
    drop(b);
    let b = pair.start_destination(&[]);
    let status = orbit_tests::process::orbitctl(&["--grid", &grid, "status", "star-b", "--json"]);
    let json: serde_json::Value = serde_json::from_str(status.stdout.trim()).unwrap();
    assert_eq!(
        json["stars"][0]["transfers"],
        serde_json::json!([]),
        "{json}"
    );
    assert!(
        !b.started.iter().any(|l| l.contains("resuming")),
        "{:?}",
        b.started
    );
    assert_eq!(entries(), 0);
    assert_eq!(list_tree(&pair.dst_root), Vec::<PathBuf>::new());
}
