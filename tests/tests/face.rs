//! The controller's face, through the real binaries: the progress bar on a terminal (a real
//! pseudo-terminal, read back through a terminal emulator), NDJSON progress with `--json`,
//! `--quiet`, the status table with transfers in flight, shell completions, man pages, and
//! errors as one line that names the star, with a hint.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::Instant;

use orbit_tests::process::orbitctl;
use orbit_tests::slow_source::HeldGrid;
use orbit_tests::{skip_or_fail, wire, STEP_TIMEOUT};

const SIZE: usize = 4 * 1024 * 1024 + 5;
const HOLD: usize = 1024 * 1024;
const ROWS: u16 = 24;
const COLUMNS: u16 = 100;

/// What a terminal showed while `cmd` ran in it.
struct Terminal {
    /// Whether `seen` matched some screen while the command ran.
    saw: bool,
    /// The last screen, rows trimmed.
    last: String,
    code: Option<i32>,
}

/// Runs `cmd` with stdout and stderr on a fresh pseudo-terminal of [`ROWS`] × [`COLUMNS`],
/// feeds everything it writes to a terminal emulator, and calls `then` once the first time the
/// screen satisfies `seen`.
fn run_in_terminal(mut cmd: Command, seen: impl Fn(&str) -> bool, then: impl FnOnce()) -> Terminal {
    use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).unwrap();
    grantpt(&master).unwrap();
    unlockpt(&master).unwrap();
    let name = ptsname(&master, Vec::new()).unwrap();
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(name.to_str().unwrap())
        .unwrap();
    rustix::termios::tcsetwinsize(
        &slave,
        rustix::termios::Winsize {
            ws_row: ROWS,
            ws_col: COLUMNS,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )
    .unwrap();
    cmd.stdin(Stdio::null())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave);
    let mut child = cmd.spawn().unwrap();
    // The child holds the only copies of the terminal's slave side now, so reading the master
    // ends (EIO) when it exits.
    drop(cmd);
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut master = std::fs::File::from(master);
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = master.read(&mut buf) {
            if tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut parser = vt100::Parser::new(ROWS, COLUMNS, 0);
    let mut then = Some(then);
    let mut saw = false;
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(bytes) => {
                parser.process(&bytes);
                if !saw && seen(&parser.screen().contents()) {
                    saw = true;
                    if let Some(then) = then.take() {
                        then();
                    }
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                panic!(
                    "the command did not finish; its screen:\n{}",
                    parser.screen().contents()
                );
            }
        }
    }
    let code = child.wait().unwrap().code();
    Terminal {
        saw,
        last: parser.screen().contents().trim_end().to_owned(),
        code,
    }
}

#[test]
fn a_terminal_shows_a_progress_bar_that_gives_way_to_the_summary() {
    let g = HeldGrid::start(SIZE, HOLD);
    let cmd = g.command(&["replicate", &g.src(), &g.dst("f.bin")]);
    // The bar, with bytes, size and ETA, while the source holds the transfer at 1 MiB.
    let bar = |screen: &str| screen.contains("1.0 MiB of 4.0 MiB") && screen.contains("ETA");
    let terminal = run_in_terminal(cmd, bar, || g.source.release());
    assert!(
        terminal.saw,
        "no progress bar; last screen:\n{}",
        terminal.last
    );
    assert_eq!(terminal.code, Some(0), "{}", terminal.last);
    let summary = format!(
        "star-b: star-a:/srv/data/f.bin -> {}: {SIZE} bytes in ",
        wire(&g.target("f.bin"))
    );
    // The final screen holds the summary on the first line and nothing of the bar.
    let lines: Vec<&str> = terminal.last.lines().collect();
    assert_eq!(lines.len(), 1, "{}", terminal.last);
    assert!(lines[0].starts_with(&summary), "{}", terminal.last);
    for leftover in ["ETA", "MiB of", "[#", "%"] {
        assert!(
            !terminal.last.contains(leftover),
            "{leftover:?} left on screen:\n{}",
            terminal.last
        );
    }
    assert_eq!(std::fs::read(g.target("f.bin")).unwrap(), g.content);
}

#[test]
fn json_prints_progress_events_then_the_result() {
    let g = HeldGrid::start(SIZE, HOLD);
    let mut child = g
        .command(&["replicate", &g.src(), &g.dst("f.bin"), "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    let mut held_seen = false;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        // Events may start at 0 bytes, once the size is known. The one that shows the held
        // bytes came while the transfer was held: let it finish.
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        if !held_seen && event["bytes"] == HOLD {
            held_seen = true;
            g.source.release();
        }
        lines.push(line);
    }
    assert!(held_seen, "no event showed the held bytes: {lines:?}");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{lines:?}");
    assert!(lines.len() >= 2, "{lines:?}");
    let result: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(result["ok"], true);
    assert_eq!(result["bytes"], SIZE);
    assert_eq!(
        result["sha256"],
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&g.content)).as_str()
    );
    let id = result["transfer_id"].as_str().unwrap();
    let mut last = 0;
    for line in &lines[..lines.len() - 1] {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(event["event"], "progress", "{line}");
        assert_eq!(event["transfer_id"], id, "{line}");
        assert_eq!(event["total"], SIZE, "{line}");
        let bytes = event["bytes"].as_u64().unwrap();
        assert!(bytes >= last && bytes <= SIZE as u64, "{line}");
        last = bytes;
    }
}

#[test]
fn quiet_prints_nothing_but_errors() {
    let g = HeldGrid::start(SIZE, HOLD);
    g.source.release();
    let out = g.orbitctl(&["replicate", &g.src(), &g.dst("f.bin"), "--quiet"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert_eq!((out.stdout.as_str(), out.stderr.as_str()), ("", ""));
    assert_eq!(std::fs::read(g.target("f.bin")).unwrap(), g.content);

    // Outside star-b's roots: one line on stderr naming the star, nothing on stdout.
    let out = g.orbitctl(&["replicate", &g.src(), "star-b:/etc/f.bin", "-q"]);
    assert_eq!(out.code, Some(1));
    assert_eq!(out.stdout, "");
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr
            .starts_with("orbitctl: star-b: replication failed: "),
        "{}",
        out.stderr
    );
}

#[test]
fn status_shows_version_uptime_and_transfers_in_flight() {
    let g = HeldGrid::start(SIZE, HOLD);
    let out = g.orbitctl(&["replicate", &g.src(), &g.dst("f.bin"), "--detach"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let id = out.stdout.trim().to_owned();
    g.wait_for_part(HOLD as u64);

    let out = g.orbitctl(&["status", "star-b"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("NAME    ADDR"), "{}", out.stdout);
    assert!(
        lines[0].contains("VERSION  UPTIME  IN FLIGHT"),
        "{}",
        out.stdout
    );
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        lines[1].starts_with("star-b  ") && lines[1].contains(&format!("  up     {version}  ")),
        "{}",
        out.stdout
    );
    // The grid CA's expiry follows the table of stars.
    assert!(lines[2].starts_with("grid CA expires "), "{}", out.stdout);
    assert_eq!(lines[3], "", "{}", out.stdout);
    assert!(lines[4].starts_with("TRANSFER  "), "{}", out.stdout);
    assert!(
        lines[5].starts_with(&format!(
            "{id}  star-b  star-a:/srv/data/f.bin  {}  1.0 MiB of 4.0 MiB (24%), ",
            wire(&g.target("f.bin"))
        )),
        "{}",
        out.stdout
    );
    g.source.release();
    let wait = g.orbitctl(&["wait", &id, "--star", "star-b", "--quiet"]);
    assert_eq!(wait.code, Some(0), "{}", wait.stderr);
    assert_eq!(wait.stdout, "");
}

#[test]
fn completions_and_man_pages_come_from_the_command_line_definitions() {
    for shell in ["bash", "zsh", "fish"] {
        let out = orbitctl(&["completions", shell]);
        assert_eq!(out.code, Some(0), "{shell}: {}", out.stderr);
        for word in ["replicate", "wait", "cancel", "detach"] {
            assert!(out.stdout.contains(word), "{shell} lacks {word}");
        }
    }
    let out = orbitctl(&["completions", "tcsh"]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("man1");
    let out = orbitctl(&["man", &wire(&dir)]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    for page in [
        "orbitctl",
        "orbitctl-replicate",
        "orbitctl-wait",
        "orbitctl-cancel",
        "orbitctl-status",
    ] {
        let text = std::fs::read_to_string(dir.join(format!("{page}.1")))
            .unwrap_or_else(|e| panic!("{page}.1: {e}"));
        assert!(
            text.starts_with(".ie \\n(.g") || text.contains(".TH"),
            "{page}"
        );
    }
    let replicate = std::fs::read_to_string(dir.join("orbitctl-replicate.1")).unwrap();
    assert!(replicate.contains("\\-\\-detach"), "{replicate}");
    // `man` renders it. A machine without `man` skips this check, saying so; CI may not.
    match Command::new("man")
        .arg("-l")
        .arg(dir.join("orbitctl-replicate.1"))
        .env("MANPAGER", "cat")
        .output()
    {
        Ok(rendered) => {
            assert!(
                rendered.status.success(),
                "man -l orbitctl-replicate.1 failed ({}): {}",
                rendered.status,
                String::from_utf8_lossy(&rendered.stderr)
            );
            let text = String::from_utf8_lossy(&rendered.stdout);
            assert!(text.contains("detach"), "{text}");
        }
        Err(e) => skip_or_fail(
            "`man` (Debian: man-db) to render a manual page",
            format!("running man: {e}"),
        ),
    }
}

#[test]
fn errors_are_one_line_naming_the_star_with_a_hint() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = tmp.path().join("grid");
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let b = format!("star-b=127.0.0.1:{port}");
    let out = orbitctl(&[
        "init",
        &wire(&grid),
        "--star",
        "star-a=127.0.0.1:1",
        "--star",
        &b,
    ]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let g = wire(&grid);

    // A star that is down may be up later: exit code 4, "temporary".
    let out = orbitctl(&["--grid", &g, "replicate", "star-a:/a/f", "star-b:/b/f"]);
    assert_eq!(out.code, Some(4));
    assert_eq!(
        out.stderr,
        format!(
            "orbitctl: star-b unreachable at 127.0.0.1:{port}: nothing listens on udp port \
             {port} (connection refused): is orbit-star running there?\n"
        )
    );

    let out = orbitctl(&["--grid", &g, "wait", "abc", "--star", "star-b"]);
    assert_eq!(out.code, Some(4));
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr
            .starts_with(&format!("orbitctl: star-b unreachable at 127.0.0.1:{port}")),
        "{}",
        out.stderr
    );

    let out = orbitctl(&["--grid", &g, "cancel", "not-an-id"]);
    assert_eq!(out.code, Some(2));
    assert!(
        out.stderr.contains("is not a transfer id"),
        "{}",
        out.stderr
    );

    // A star the grid does not list: a failure retrying will not fix.
    let out = orbitctl(&["--grid", &g, "replicate", "star-c:/a/f", "star-b:/b/f"]);
    assert_eq!(out.code, Some(1));
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("star-c"), "{}", out.stderr);
}
