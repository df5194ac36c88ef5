//! Running as a systemd service: the unit in dist/ passes `systemd-analyze verify` (reload and
//! rotation under its layout are in unit_layout.rs); the star tells `$NOTIFY_SOCKET` READY=1
//! once it serves, pings the watchdog, says RELOADING=1 and READY=1 around a reload, and
//! STOPPING=1; it runs with its keys only in `$CREDENTIALS_DIRECTORY`; both binaries report
//! their version and the wire protocol.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;

use orbit_tests::ops::{init_grid, listen_of, metrics_addr, orbit_star, sample, scrape};
use orbit_tests::process::{bin, orbitctl, StarProcess};
use orbit_tests::unit::{Unit, UNIT};
use orbit_tests::{random_file, sha256_file, two_roots, wire, STEP_TIMEOUT};

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(UNIT).unwrap();
    for directive in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "User=orbit",
        "ProtectSystem=strict",
        "ReadWritePaths=",
        "StateDirectory=orbit",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "ProtectHome=yes",
        "SystemCallFilter=@system-service",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "RequiresMountsFor=/srv/orbit",
        "LoadCredential=key.pem:",
    ] {
        assert!(unit.contains(directive), "the unit lacks {directive:?}");
    }
    // What changes at run time is not a credential, which systemd copies only at start: the
    // token keys and the revocation list are read from /etc/orbit on every reload.
    let credentials = Unit::load();
    let credentials = credentials.values("LoadCredential");
    assert_eq!(
        credentials,
        [
            "cert.pem:/etc/orbit/cert.pem",
            "key.pem:/etc/orbit/key.pem",
            "ca.pem:/etc/orbit/ca.pem"
        ]
    );
    assert!(!unit.contains("--token-key-file"), "{unit}");
    // verify checks that ExecStart's binary exists: point it at the one just built.
    let installed = "/usr/local/bin/orbit-star";
    assert!(unit.contains(&format!("ExecStart={installed} ")));
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("orbit-star.service");
    std::fs::write(&copy, unit.replace(installed, &wire(&bin("orbit-star")))).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", &wire(&copy)])
        .output()
        .expect("systemd-analyze runs (Debian package `systemd`)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    assert!(
        !stderr.contains("orbit-star.service"),
        "warnings:\n{stderr}"
    );
}

/// Receives the next datagram on `socket` as text: its `KEY=VALUE` lines, each ended by a
/// newline as sd_notify(3) writes them, joined by newlines without the last.
fn next(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = socket
        .recv(&mut buf)
        .expect("a notification within the step timeout");
    datagram(&buf[..n])
}

fn datagram(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    assert!(
        text.ends_with('\n'),
        "a notification not ended by a newline: {text:?}"
    );
    text.trim_end_matches('\n').to_owned()
}

fn replicate(grid: &Path, src: &Path, dst: &Path) -> orbit_tests::process::Output {
    orbitctl(&[
        "--grid",
        &wire(grid),
        "replicate",
        &format!("star-a:{}", wire(src)),
        &format!("star-b:{}", wire(dst)),
    ])
}

#[test]
fn ready_once_serving_then_watchdog_pings_then_stopping() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = init_grid(tmp.path(), &["star-a", "star-b"]);
    let (src_root, dst_root) = two_roots(tmp.path());
    let socket_path = tmp.path().join("notify");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();

    let a = StarProcess::start_with_env(
        &[
            "--config",
            &wire(&grid.join("stars/star-a/star.toml")),
            "--allow",
            &wire(&src_root),
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        &[
            ("NOTIFY_SOCKET", &wire(&socket_path)),
            ("WATCHDOG_USEC", "300000"),
        ],
    );
    assert_eq!(next(&socket), "READY=1");
    let metrics_line = a
        .lines
        .recv_timeout(STEP_TIMEOUT)
        .expect("the metrics line");
    let metrics = metrics_addr(&metrics_line).expect(&metrics_line);
    // Ready means reachable: a real replication from it succeeds right away.
    let b = StarProcess::start(&[
        "--config",
        &wire(&grid.join("stars/star-b/star.toml")),
        "--allow",
        &wire(&dst_root),
    ]);
    let src = src_root.join("f.bin");
    let digest = random_file(&src, 100_000);
    let out = replicate(&grid, &src, &dst_root.join("f.bin"));
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert_eq!(sha256_file(&dst_root.join("f.bin")), digest);

    // Pings at half of WATCHDOG_USEC, each after a successful self-check.
    for _ in 0..3 {
        assert_eq!(next(&socket), "WATCHDOG=1");
    }
    // Each ping followed a handshake with itself, which the metrics leave out: the one inbound
    // handshake is star-b's.
    let text = scrape(metrics);
    let inbound = "orbit_p2p_handshakes_total{direction=\"inbound\",status=\"ok\"}";
    assert_eq!(sample(&text, inbound), 1.0, "{text}");

    // A reload (what the unit's ExecReload= sends) is bracketed as Type=notify-reload needs:
    // RELOADING=1 with the time it began on CLOCK_MONOTONIC, then READY=1 once it is done.
    let sent = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    a.hangup();
    let mut not_pings = std::iter::repeat_with(|| next(&socket)).filter(|m| m != "WATCHDOG=1");
    let reloading = not_pings.next().unwrap();
    let usec: u64 = reloading
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a reload notification: {reloading:?}"));
    let sent = sent.tv_sec.unsigned_abs() * 1_000_000 + sent.tv_nsec.unsigned_abs() / 1_000;
    assert!(usec >= sent, "{usec} < {sent}: not CLOCK_MONOTONIC");
    assert_eq!(not_pings.next().unwrap(), "READY=1");
    a.wait_for_line("reloaded:", STEP_TIMEOUT);

    let status = a.terminate();
    assert!(status.success(), "{status:?}");
    let rest: Vec<String> = std::iter::from_fn(|| {
        let mut buf = [0u8; 4096];
        socket.recv(&mut buf).ok().map(|n| datagram(&buf[..n]))
    })
    .take_while(|m| m != "STOPPING=1")
    .collect();
    assert!(
        rest.iter().all(|m| m == "WATCHDOG=1"),
        "unexpected notifications before STOPPING=1: {rest:?}"
    );
    drop(b);
}

#[test]
fn keys_only_in_a_credentials_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = init_grid(tmp.path(), &["star-a", "star-b"]);
    let (src_root, dst_root) = two_roots(tmp.path());
    // star-b as systemd runs it: a config with no key paths, the keys in a credentials folder.
    let creds = tmp.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    for file in ["cert.pem", "key.pem", "ca.pem", "token.key"] {
        std::fs::copy(grid.join("stars/star-b").join(file), creds.join(file)).unwrap();
    }
    let config = tmp.path().join("star.toml");
    let listen = listen_of(&grid.join("stars/star-b/star.toml"));
    std::fs::write(
        &config,
        format!(
            "name = \"star-b\"\nlisten = \"{listen}\"\nallow = [\"{}\"]\n",
            wire(&dst_root)
        ),
    )
    .unwrap();
    let env = [("CREDENTIALS_DIRECTORY", wire(&creds))];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let check = orbit_star(&["--config", &wire(&config), "--check-config"], &env);
    assert_eq!(check.code, Some(0), "{}{}", check.stdout, check.stderr);
    // The key files come from the credentials directory, as the settings say.
    let cert = format!("cert = \"{}\"", wire(&creds.join("cert.pem")));
    assert!(check.stdout.contains(&cert), "{}", check.stdout);
    assert!(
        check
            .stdout
            .contains(&format!("from {}", wire(&creds.join("token.key")))),
        "{}",
        check.stdout
    );
    // Without the credentials the same config cannot start.
    let without = orbit_star(&["--config", &wire(&config), "--check-config"], &[]);
    assert_eq!(without.code, Some(1));
    assert!(
        without.stderr.contains("token_key_file"),
        "{}",
        without.stderr
    );

    let a = StarProcess::start(&[
        "--config",
        &wire(&grid.join("stars/star-a/star.toml")),
        "--allow",
        &wire(&src_root),
    ]);
    let b = StarProcess::start_with_env(&["--config", &wire(&config)], &env);
    let src = src_root.join("f.bin");
    let digest = random_file(&src, 200_000);
    let out = replicate(&grid, &src, &dst_root.join("f.bin"));
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert_eq!(sha256_file(&dst_root.join("f.bin")), digest);
    assert!(b.terminate().success());
    assert!(a.terminate().success());
}

#[test]
fn both_binaries_report_their_version_and_the_wire_protocol() {
    let star = orbit_star(&["--version"], &[]);
    assert_eq!(star.code, Some(0));
    assert_eq!(
        star.stdout.trim(),
        format!(
            "orbit-star {} (wire protocol orbit/1)",
            env!("CARGO_PKG_VERSION")
        )
    );
    let ctl = orbitctl(&["--version"]);
    assert_eq!(ctl.code, Some(0));
    assert_eq!(
        ctl.stdout.trim(),
        format!(
            "orbitctl {} (wire protocol orbit/1)",
            env!("CARGO_PKG_VERSION")
        )
    );
}
