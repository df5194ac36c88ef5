//! Certificate revocation with the real binaries: `orbitctl revoke NAME` writes the grid's
//! revocation list, a star loads it at start and on SIGHUP, a revoked certificate never completes
//! a handshake again, and connections already open with it are closed on reload, on the serving
//! side and in the destination's pool alike. Nothing is served or written for a revoked peer.

use std::path::{Path, PathBuf};
use std::time::Duration;

use orbit_certs::IssuedCert;
use orbit_tests::process::{orbitctl, Output, StarProcess};
use orbit_tests::*;

const RELOAD_TIMEOUT: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Setup {
    _tmp: tempfile::TempDir,
    grid: PathBuf,
    file: PathBuf,
    dst: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let grid = tmp.path().join("grid");
        let a = format!("star-a=127.0.0.1:{}", free_port());
        let b = format!("star-b=127.0.0.1:{}", free_port());
        ok(orbitctl(&[
            "init",
            &wire(&grid),
            "--star",
            &a,
            "--star",
            &b,
        ]));
        let file = tmp.path().join("src/f.bin");
        random_file(&file, 150_000);
        let dst = tmp.path().join("dst");
        std::fs::create_dir_all(&dst).unwrap();
        Setup {
            grid,
            file,
            dst,
            _tmp: tmp,
        }
    }

    fn start(&self, name: &str) -> StarProcess {
        let config = self.grid.join(format!("stars/{name}/star.toml"));
        let root = if name == "star-a" {
            self.file.parent().unwrap()
        } else {
            &self.dst
        };
        StarProcess::start(&["--config", &wire(&config), "--allow", &wire(root)])
    }

    fn orbitctl(&self, args: &[&str]) -> Output {
        let g = wire(&self.grid);
        orbitctl(&[&["--grid", g.as_str()], args].concat())
    }

    fn replicate(&self, target: &str) -> Output {
        self.orbitctl(&[
            "replicate",
            &format!("star-a:{}", wire(&self.file)),
            &format!("star-b:{}", wire(&self.dst.join(target))),
        ])
    }

    fn token(&self) -> String {
        let file = format!("star-a:{}", wire(&self.file));
        ok(self.orbitctl(&["token", &file, "--holder", "star-b"]))
            .stdout
            .trim()
            .to_owned()
    }

    /// A raw client with star-b's certificate as it is in the grid now.
    fn star_b_client(&self) -> Client {
        let read = |f: &str| std::fs::read_to_string(self.grid.join(f)).unwrap();
        Client::new(
            &read("ca.pem"),
            &IssuedCert {
                cert_pem: read("stars/star-b/cert.pem"),
                key_pem: read("stars/star-b/key.pem"),
            },
        )
    }
}

fn ok(out: Output) -> Output {
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    out
}

fn reload(star: &StarProcess) -> String {
    star.hangup();
    star.wait_for_line("reloaded:", RELOAD_TIMEOUT)
}

/// A connection attempt with a revoked certificate fails, or is closed before any stream is
/// answered (TLS 1.3 lets the client finish before the server has judged its certificate).
async fn assert_never_served(
    client: &Client,
    addr: std::net::SocketAddr,
    path: &str,
    token: String,
) {
    match client.connect(addr, "star-a").await {
        Err(_) => {}
        Ok(conn) => {
            let read = client.read(&conn, &read_request(path, token)).await;
            assert!(read.is_err(), "a revoked certificate was served: {read:?}");
        }
    }
}

fn assert_empty(dir: &Path) {
    assert_eq!(list_tree(dir), Vec::<PathBuf>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_star_is_cut_off_on_reload_and_never_handshakes_again() {
    let s = Setup::new();
    let a = s.start("star-a");
    let b = s.start("star-b");
    let client = s.star_b_client();
    let conn = client.connect(a.addr, "star-a").await.unwrap();
    let outcome = client
        .read(&conn, &read_request(&wire(&s.file), s.token()))
        .await
        .unwrap();
    assert_eq!(outcome.bytes.len(), 150_000);

    let out = ok(s.orbitctl(&["revoke", "star-b"]));
    assert!(
        out.stdout.contains("Revoked star star-b's certificate"),
        "{}",
        out.stdout
    );
    let line = reload(&a);
    assert!(line.contains("reloaded: 1 connections"), "{line}");
    // The connection open with the revoked certificate is closed by star-a.
    let reason = within("the open connection to close", conn.closed()).await;
    assert!(
        matches!(reason, quinn::ConnectionError::ApplicationClosed(_)),
        "{reason}"
    );
    // A new one never gets served.
    assert_never_served(&client, a.addr, &wire(&s.file), s.token()).await;
    // orbitctl holds the grid's list too: it will not even command the revoked star-b.
    let out = s.replicate("copy.bin");
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("star-b"), "{}", out.stderr);
    assert!(out.stderr.contains("Revoked"), "{}", out.stderr);
    assert_empty(&s.dst);
    assert!(a.terminate().success());
    assert!(b.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_star_started_with_the_list_refuses_a_revoked_controller_until_it_is_reissued() {
    let s = Setup::new();
    ok(s.orbitctl(&["revoke", "orbitctl"]));
    // Started after the revocation: star.toml now names crl.pem, and the star loads it.
    let a = s.start("star-a");
    let b = s.start("star-b");
    let out = s.replicate("copy.bin");
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    assert_empty(&s.dst);

    // A new controller certificate works without touching the stars.
    let out = ok(s.orbitctl(&["revoke", "orbitctl", "--reissue"]));
    assert!(out.stdout.contains("already revoked"), "{}", out.stdout);
    ok(s.replicate("copy.bin"));
    assert_eq!(sha256_file(&s.dst.join("copy.bin")), sha256_file(&s.file));
    assert!(a.terminate().success());
    assert!(b.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_drops_its_pooled_connection_to_a_revoked_source_on_reload() {
    let s = Setup::new();
    let a = s.start("star-a");
    let b = s.start("star-b");
    ok(s.replicate("first.bin"));
    // Revoke the source; only the destination reloads, so star-a itself still serves.
    ok(s.orbitctl(&["revoke", "star-a"]));
    let line = reload(&b);
    assert!(line.contains("reloaded: 1 connections"), "{line}");
    let out = s.replicate("second.bin");
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("star-a"), "{}", out.stderr);
    assert!(!s.dst.join("second.bin").exists());
    assert!(part_files(&s.dst).is_empty());
    assert!(a.terminate().success());
    assert!(b.terminate().success());
}
