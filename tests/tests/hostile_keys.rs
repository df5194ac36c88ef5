//! Hostile peers and stolen keys (issue 16): what a token, a key, a revocation list or a name
//! can still do in the wrong hands. A token's whole lifetime is capped from its issue time, so a
//! post-dated or long-lived one is refused; finishing a key rotation retires the previous key; a
//! handshake that completes after a reload is checked against the new revocation list; an older
//! list cannot be put back; no key material reaches what the star prints, and the star cannot
//! dump core.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use orbit_certs::Role;
use orbit_tests::process::{orbitctl, Output, StarProcess};
use orbit_tests::*;
use orbit_wire::token::{self, TokenKey};
use orbit_wire::ErrorCode;
use sha2::{Digest, Sha256};
use tokio::net::UdpSocket;
use tokio::sync::watch;

const RELOAD_TIMEOUT: Duration = Duration::from_secs(30);

// ---- token lifetime ----------------------------------------------------------------------------

/// One file served by star-a, a raw client with star-b's certificate, and a way to read it.
struct OneFile {
    grid: Grid,
    _src: tempfile::TempDir,
    path: String,
    star: orbit_agent::Star,
}

impl OneFile {
    async fn new() -> OneFile {
        let grid = Grid::new();
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("f.bin"), b"payload").unwrap();
        let star = grid.spawn_star("star-a", &[src.path()]).await;
        let path = wire(&src.path().join("f.bin"));
        OneFile {
            grid,
            _src: src,
            path,
            star,
        }
    }

    /// Reads the file as star-b with a token issued at `issued_at` and expiring at `not_after`.
    async fn read_with(&self, issued_at: u64, not_after: u64) -> ReadOutcome {
        let mut claims = self.grid.claims("star-a", "star-b", &self.path);
        claims.issued_at = issued_at;
        claims.not_after = not_after;
        let token = token::sign(&claims, &self.grid.key("star-a"));
        self.read_token(token).await
    }

    async fn read_token(&self, token: String) -> ReadOutcome {
        let client = self.grid.star_client("star-b");
        let conn = client
            .connect(self.star.local_addr(), "star-a")
            .await
            .unwrap();
        let outcome = client
            .read(&conn, &read_request(&self.path, token))
            .await
            .unwrap();
        conn.close(0u32.into(), b"done");
        outcome
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_dated_token_is_refused() {
    let f = OneFile::new().await;
    let now = unix_now();
    // Valid for ten minutes, starting in half an hour: refused now, not served early.
    let outcome = f.read_with(now + 1800, now + 2400).await;
    let error = assert_refused(&outcome, ErrorCode::PermissionDenied);
    assert!(error.message.contains("post-dated"), "{error}");
    assert!(outcome.bytes.is_empty());
    // A long-lived token in its last minutes: the whole lifetime counts, not what is left.
    let outcome = f.read_with(now - 7000, now + 200).await;
    let error = assert_refused(&outcome, ErrorCode::PermissionDenied);
    assert!(
        error.message.starts_with("token lifetime 7200 s"),
        "{error}"
    );
    // The control: issued now (or within the clock skew), inside the cap.
    assert_eq!(f.read_with(now, now + 600).await.bytes, b"payload");
    assert_eq!(f.read_with(now + 30, now + 600).await.bytes, b"payload");
    f.star.shutdown().await;
}

/// HMAC-SHA256, to sign a token of the old format as an earlier orbitctl did.
fn hmac_sha256(key: &[u8; 32], message: &[u8]) -> [u8; 32] {
    let pad = |byte: u8| {
        let mut block = [byte; 64];
        block.iter_mut().zip(key).for_each(|(b, k)| *b ^= k);
        block
    };
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// A postcard varint.
fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// A version-1 token, as orbitctl minted them before tokens carried an issue time.
fn old_format_token(key: &TokenKey, path: &str, not_after: u64) -> String {
    use base64::Engine as _;
    let mut claims = vec![1u8];
    varint(u64::from(key.key_id()), &mut claims);
    for text in ["star-a", "star-b", path] {
        varint(text.len() as u64, &mut claims);
        claims.extend_from_slice(text.as_bytes());
    }
    varint(0, &mut claims);
    varint(u64::MAX, &mut claims);
    varint(not_after, &mut claims);
    claims.extend_from_slice(&[7; token::NONCE_LEN]);
    let mut raw = [0u8; 32];
    hex::decode_to_slice(key.to_hex(), &mut raw).unwrap();
    let tag = hmac_sha256(&raw, &claims);
    claims.extend_from_slice(&tag);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_of_the_old_format_is_refused_clearly() {
    let f = OneFile::new().await;
    let old = old_format_token(&f.grid.key("star-a"), &f.path, unix_now() + 60);
    let outcome = f.read_token(old).await;
    let error = assert_refused(&outcome, ErrorCode::PermissionDenied);
    assert!(error.message.contains("outdated format"), "{error}");
    assert!(error.message.contains("mint a new token"), "{error}");
    assert!(outcome.bytes.is_empty());
    // The star is still serving.
    let token = f.grid.token("star-a", "star-b", &f.path);
    assert_eq!(f.read_token(token).await.bytes, b"payload");
    f.star.shutdown().await;
}

// ---- real binaries -----------------------------------------------------------------------------

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn ok(out: Output) -> Output {
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    out
}

fn start_star(grid: &Path, name: &str, root: &Path) -> StarProcess {
    let config = grid.join(format!("stars/{name}/star.toml"));
    StarProcess::start(&["--config", &wire(&config), "--allow", &wire(root)])
}

fn reload(star: &StarProcess) -> String {
    star.hangup();
    star.wait_for_line("reloaded:", RELOAD_TIMEOUT)
}

/// A raw read of `path` from `star` with star-b's certificate in `grid`.
async fn raw_read(grid: &Path, star: &StarProcess, path: &str, token: &str) -> ReadOutcome {
    orbit_tests::ops::raw_read(grid, star.addr, path, token)
        .await
        .unwrap()
}

fn mint(grid: &Path, file: &Path) -> String {
    orbit_tests::ops::mint(grid, file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finishing_a_rotation_retires_the_previous_key() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = orbit_tests::ops::init_grid(tmp.path(), &["star-a", "star-b"]);
    let src = tmp.path().join("src");
    let file = src.join("f.bin");
    random_file(&file, 1000);
    let a = start_star(&grid, "star-a", &src);
    let g = wire(&grid);
    // A token under the key about to become the previous one (think: a stolen master key).
    let old_token = mint(&grid, &file);

    ok(orbitctl(&["--grid", &g, "rotate-keys"]));
    reload(&a);
    let outcome = raw_read(&grid, &a, &wire(&file), &old_token).await;
    assert_eq!(outcome.bytes.len(), 1000, "{:?}", outcome.error);
    let out = ok(orbitctl(&["--grid", &g, "rotate-keys", "--finish"]));
    assert!(
        out.stdout.contains("previous keys are retired"),
        "{}",
        out.stdout
    );
    assert!(!grid.join("stars/star-a/token.previous.key").exists());
    a.hangup();
    let keys = a.wait_for_line("token key id", RELOAD_TIMEOUT);
    assert!(keys.contains("previous none"), "{keys}");
    a.wait_for_line("reloaded:", RELOAD_TIMEOUT);

    let outcome = raw_read(&grid, &a, &wire(&file), &old_token).await;
    let error = assert_refused(&outcome, ErrorCode::PermissionDenied);
    assert!(error.message.contains("retired or unknown"), "{error}");
    assert!(outcome.bytes.is_empty());
    // A token from the finished rotation's key is served.
    let outcome = raw_read(&grid, &a, &wire(&file), &mint(&grid, &file)).await;
    assert_eq!(outcome.bytes.len(), 1000, "{:?}", outcome.error);
    assert!(a.terminate().success());
}

// ---- revocation at reload ----------------------------------------------------------------------

/// A UDP relay in front of a star that forwards the client's first datagram (its Initial, with
/// the ClientHello) and holds every later one until released: the server has begun the handshake
/// under its configuration of that moment, and cannot finish it until the release.
struct HoldingRelay {
    addr: SocketAddr,
    release: watch::Sender<bool>,
}

impl HoldingRelay {
    async fn start(star: SocketAddr) -> HoldingRelay {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        back.connect(star).await.unwrap();
        let addr = front.local_addr().unwrap();
        let (release, mut released) = watch::channel(false);
        let (client_tx, mut client_rx) = watch::channel(None::<SocketAddr>);
        let (f, b) = (front.clone(), back.clone());
        tokio::spawn(async move {
            let mut held: Vec<Vec<u8>> = Vec::new();
            let mut forwarded = 0;
            let mut buf = vec![0u8; 65536];
            loop {
                tokio::select! {
                    got = f.recv_from(&mut buf) => {
                        let Ok((n, from)) = got else { return };
                        client_tx.send_replace(Some(from));
                        if forwarded == 0 || *released.borrow() {
                            forwarded += 1;
                            let _ = b.send(&buf[..n]).await;
                        } else {
                            held.push(buf[..n].to_vec());
                        }
                    }
                    changed = released.changed() => {
                        if changed.is_err() { return }
                        for datagram in held.drain(..) {
                            let _ = b.send(&datagram).await;
                        }
                    }
                }
            }
        });
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = back.recv(&mut buf).await {
                let to = *client_rx.borrow_and_update();
                if let Some(to) = to {
                    let _ = front.send_to(&buf[..n], to).await;
                }
            }
        });
        HoldingRelay { addr, release }
    }

    fn release(&self) {
        self.release.send_replace(true);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_that_completes_after_a_reload_meets_the_new_revocation_list() {
    let grid = Grid::new();
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("f.bin"), b"payload").unwrap();
    let config = grid.star_config("star-a", &[src.path()]);
    let star = orbit_agent::Star::spawn(config.clone()).await.unwrap();
    let path = wire(&src.path().join("f.bin"));
    let cert = grid.ca.issue(Role::Star, "star-b").unwrap();
    let client = Client::new(&grid.ca.cert_pem(), &cert);

    let relay = HoldingRelay::start(star.local_addr()).await;
    // TLS 1.3: the client is done once it has sent its certificate and Finished, which the
    // relay holds; star-a has begun the handshake under the configuration without a list.
    let conn = client.connect(relay.addr, "star-a").await.unwrap();
    let mut revoking = config.clone();
    revoking.crl_pem = Some(
        grid.ca
            .revocation_list(None, &[&cert.cert_pem])
            .unwrap()
            .pem()
            .to_owned(),
    );
    let reloaded = star.reload(&revoking).await.unwrap();
    assert_eq!((reloaded.revoked, reloaded.closed), (1, 0));
    relay.release();

    let read = within(
        "a read on the revoked connection",
        client.read(
            &conn,
            &read_request(&path, grid.token("star-a", "star-b", &path)),
        ),
    )
    .await;
    assert!(read.is_err(), "a revoked certificate was served: {read:?}");
    let reason = within("the connection to close", conn.closed()).await;
    match reason {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.reason.as_ref(), b"certificate revoked");
        }
        other => panic!("closed for another reason: {other}"),
    }
    star.shutdown().await;
}

// ---- an older revocation list ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_revocation_list_is_refused_at_reload_and_at_start() {
    let grid = Grid::new();
    let src = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let revoked = grid.ca.issue(Role::Star, "star-b").unwrap();
    let first = grid.ca.revocation_list(None, &[]).unwrap();
    let second = grid
        .ca
        .revocation_list(Some(&first), &[&revoked.cert_pem])
        .unwrap();
    let mut config = grid.star_config("star-a", &[src.path()]);
    config.state_dir = Some(state.path().to_owned());
    let with = |list: Option<&orbit_certs::RevocationList>| {
        let mut c = config.clone();
        c.crl_pem = list.map(|l| l.pem().to_owned());
        c
    };
    let star = orbit_agent::Star::spawn(with(Some(&second))).await.unwrap();
    // Put back the list from before star-b was revoked, or none at all: refused, and star-b
    // stays revoked.
    let err = star.reload(&with(Some(&first))).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("revocation list #1 is older than list #2"),
        "{err}"
    );
    let err = star.reload(&with(None)).await.unwrap_err();
    assert!(err.to_string().contains("list #2 was"), "{err}");
    let client = Client::new(&grid.ca.cert_pem(), &revoked);
    let path = "/nowhere";
    assert_never_served(&client, star.local_addr(), path).await;
    // The same list again is fine.
    star.reload(&with(Some(&second))).await.unwrap();
    star.shutdown().await;

    // Across a restart, the state directory remembers list #2.
    let err = orbit_agent::Star::spawn(with(Some(&first)))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("revocation list #1 is older than list #2 (recorded in the state directory)"),
        "{err}"
    );
    // `--check-config` says so too, and records nothing.
    let err = orbit_agent::check_config(&with(Some(&first))).unwrap_err();
    assert!(err.to_string().contains("is older than list #2"), "{err}");
    orbit_agent::check_config(&with(Some(&second))).unwrap();
    let fresh = tempfile::tempdir().unwrap();
    let mut checked = with(Some(&second));
    checked.state_dir = Some(fresh.path().to_owned());
    orbit_agent::check_config(&checked).unwrap();
    assert!(std::fs::read_dir(fresh.path()).unwrap().next().is_none());
    let star = orbit_agent::Star::spawn(with(Some(&second))).await.unwrap();
    star.shutdown().await;
}

/// A connection with a revoked certificate fails, or is closed before a stream is answered.
async fn assert_never_served(client: &Client, addr: SocketAddr, path: &str) {
    if let Ok(conn) = client.connect(addr, "star-a").await {
        let read = client.read(&conn, &read_request(path, "x".into())).await;
        assert!(read.is_err(), "a revoked certificate was served: {read:?}");
    }
}

// ---- secrets in a crash ------------------------------------------------------------------------

fn chown_tree(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).unwrap();
    if path.is_dir() && !path.is_symlink() {
        for entry in std::fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path(), uid);
        }
    }
}

/// The value of `field` in /proc/PID/status or /proc/PID/limits text.
fn proc_line<'a>(text: &'a str, field: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field:?} in {text}"))
}

#[test]
fn the_star_cannot_dump_core_nor_be_read_by_its_own_user() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let grid = orbit_tests::ops::init_grid(tmp.path(), &["star-a", "star-b"]);
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let config = wire(&grid.join("stars/star-a/star.toml"));
    let args = ["--config", config.as_str(), "--allow", &wire(&src)];
    // The kernel hands /proc/PID of a non-dumpable process to root. So that this shows, the
    // star runs as a user other than root: nobody, when the test runs as root.
    let nobody = 65534;
    let star = if rustix::process::geteuid().is_root() {
        chown_tree(tmp.path(), nobody);
        let ids = [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ];
        StarProcess::start_prefixed(&ids, &args, &[])
    } else {
        StarProcess::start(&args)
    };
    let proc_dir = PathBuf::from(format!("/proc/{}", star.pid()));
    let status = std::fs::read_to_string(proc_dir.join("status")).unwrap();
    let uid = proc_line(&status, "Uid:");
    assert!(
        uid.split_whitespace().nth(1).is_some_and(|u| u != "0"),
        "{uid}"
    );
    // Non-dumpable: /proc/PID/{mem,environ,...} belong to root, not to the star's user.
    let owner = std::fs::metadata(proc_dir.join("environ")).unwrap().uid();
    assert_eq!(owner, 0, "the star is dumpable: {uid}");
    let limits = std::fs::read_to_string(proc_dir.join("limits")).unwrap();
    let core = proc_line(&limits, "Max core file size");
    assert_eq!(
        core.split_whitespace().skip(4).take(2).collect::<Vec<_>>(),
        ["0", "0"],
        "{core}"
    );
    assert!(star.terminate().success());
}

/// orbitctl reads the grid's CA key and token master key: it, too, cannot dump core nor be
/// read through /proc by its own user. Caught while it waits on a star that never answers.
#[test]
fn orbitctl_cannot_dump_core_nor_be_read_by_its_own_user() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    // star-a's address is a socket that takes the handshake and never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    silent.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();
    let grid = wire(&tmp.path().join("grid"));
    let star = format!("star-a={}", silent.local_addr().unwrap());
    let out = orbitctl(&["init", &grid, "--star", &star]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let mut command = match rustix::process::geteuid().is_root() {
        true => {
            chown_tree(tmp.path(), 65534);
            let mut c = std::process::Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
            c.arg(orbit_tests::process::bin("orbitctl"));
            c
        }
        false => std::process::Command::new(orbit_tests::process::bin("orbitctl")),
    };
    let mut child = command
        .args(["--grid", &grid, "status"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Its first QUIC packet: by then it has read the grid, and is past its first steps.
    let mut buf = [0u8; 2048];
    silent.recv_from(&mut buf).expect("orbitctl dials star-a");
    let proc_dir = PathBuf::from(format!("/proc/{}", child.id()));
    let status = std::fs::read_to_string(proc_dir.join("status")).unwrap();
    let uid = proc_line(&status, "Uid:").to_owned();
    let owner = std::fs::metadata(proc_dir.join("environ")).unwrap().uid();
    let limits = std::fs::read_to_string(proc_dir.join("limits")).unwrap();
    let core: Vec<String> = proc_line(&limits, "Max core file size")
        .split_whitespace()
        .skip(4)
        .take(2)
        .map(str::to_owned)
        .collect();
    child.kill().unwrap();
    child.wait().unwrap();
    if rustix::process::geteuid().is_root() {
        assert!(
            uid.split_whitespace().nth(1).is_some_and(|u| u != "0"),
            "{uid}"
        );
    }
    // Non-dumpable: /proc/PID/{mem,environ,...} belong to root, not to orbitctl's user (a
    // check that only shows when that user is not root).
    assert_eq!(owner, 0, "orbitctl is dumpable: {uid}");
    assert_eq!(core, ["0", "0"]);
}

#[test]
fn key_files_swapped_by_mistake_are_refused_without_printing_them() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = orbit_tests::ops::init_grid(tmp.path(), &["star-a", "star-b"]);
    let star = grid.join("stars/star-a");
    let token_key = std::fs::read_to_string(star.join("token.key")).unwrap();
    let private_key = std::fs::read_to_string(star.join("key.pem")).unwrap();
    let secrets: Vec<String> = std::iter::once(token_key.trim().to_owned())
        .chain(
            private_key
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .map(|l| l[..l.len().min(24)].to_owned()),
        )
        .collect();
    let config = wire(&star.join("star.toml"));
    let root = wire(tmp.path());
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(orbit_tests::process::bin("orbit-star"))
            .args(["--config", &config, "--allow", &root])
            .args(extra)
            .env_remove("ORBIT_AUTH_SECRET")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let write_secret = |name: &str, contents: &str| {
        let path = tmp.path().join(name);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        wire(&path)
    };
    let cases = [
        // The private key where the token key goes, and the other way round.
        vec![
            "--token-key-file".to_owned(),
            write_secret("a", &private_key),
        ],
        vec!["--key".to_owned(), write_secret("b", &token_key)],
        // A token key one digit short, and one with a stray character.
        vec![
            "--token-key-file".to_owned(),
            write_secret("c", &token_key.trim()[1..]),
        ],
        vec![
            "--token-key-file".to_owned(),
            write_secret("d", &format!("{}g", &token_key.trim()[1..])),
        ],
    ];
    for case in &cases {
        for check in [true, false] {
            let mut args: Vec<&str> = case.iter().map(String::as_str).collect();
            if check {
                args.push("--check-config");
            }
            let (code, text) = run(&args);
            assert_eq!(code, Some(1), "{args:?}: {text}");
            for secret in &secrets {
                assert!(
                    !text.contains(secret.as_str()),
                    "{args:?} printed key material: {text}"
                );
            }
        }
    }
}

// ---- what orbitctl prints from a star ----------------------------------------------------------

#[test]
fn orbitctl_status_shows_a_stars_escape_sequences_inert() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = orbit_tests::ops::init_grid(tmp.path(), &["star-a", "star-b"]);
    // A root whose name retitles the terminal, clears the screen and rewinds the line: what a
    // hostile star could report as easily in any field.
    let root = tmp
        .path()
        .join("data\u{1b}]0;owned\u{7}\u{1b}[2J\rstar-a up \u{202e}");
    std::fs::create_dir_all(&root).unwrap();
    let star = start_star(&grid, "star-a", &root);
    let out = ok(orbitctl(&["--grid", &wire(&grid), "status", "star-a"]));
    for c in ['\u{1b}', '\u{7}', '\r', '\u{202e}'] {
        assert!(
            !out.stdout.contains(c),
            "{c:?} printed raw: {:?}",
            out.stdout
        );
        assert!(
            !out.stderr.contains(c),
            "{c:?} printed raw: {:?}",
            out.stderr
        );
    }
    assert!(
        out.stdout
            .contains("data\\u{1b}]0;owned\\u{7}\\u{1b}[2J\\rstar-a up \\u{202e}"),
        "{}",
        out.stdout
    );
    assert!(star.terminate().success());
}

// ---- reserved names ----------------------------------------------------------------------------

#[test]
fn a_star_cannot_be_named_like_the_controller_or_a_role() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["orbitctl", "controller", "star"] {
        let spec = format!("{name}=127.0.0.1:{}", free_port());
        let dir = tmp.path().join(format!("g-{name}"));
        let out = orbitctl(&["init", &wire(&dir), "--star", &spec]);
        assert_eq!(out.code, Some(2), "{name}: {}{}", out.stdout, out.stderr);
        assert!(out.stderr.contains("is reserved"), "{}", out.stderr);
        assert!(!dir.exists(), "init wrote {}", dir.display());
    }
    let grid = orbit_tests::ops::init_grid(tmp.path(), &["star-a", "star-b"]);
    let spec = format!("orbitctl=127.0.0.1:{}", free_port());
    let out = orbitctl(&["--grid", &wire(&grid), "add-star", &spec]);
    assert_eq!(out.code, Some(2), "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("is reserved"), "{}", out.stderr);
    assert!(!grid.join("stars/orbitctl").exists());
    // A star told to run as `orbitctl` refuses to start, whatever its certificate.
    let config = wire(&grid.join("stars/star-a/star.toml"));
    let root = wire(tmp.path());
    for check in [&[][..], &["--check-config"][..]] {
        let out = std::process::Command::new(orbit_tests::process::bin("orbit-star"))
            .args(["--config", &config, "--allow", &root, "--name", "orbitctl"])
            .args(check)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("name \"orbitctl\": is reserved"),
            "{stderr}"
        );
    }
}

// ---- a star asked to replicate from itself -----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_star_asked_to_replicate_from_itself_refuses_at_once() {
    let grid = Grid::new();
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("f.bin"), b"payload").unwrap();
    let a = grid.spawn_star("star-a", &[root.path()]).await;
    let request = grid.replicate_request(
        &a,
        &root.path().join("f.bin"),
        &root.path().join("copy.bin"),
        0,
    );
    let client = grid.controller_client();
    let mut events = within("the refusal", client.control(&a, &request))
        .await
        .unwrap();
    let error = expect_failed(events.pop().unwrap());
    assert_eq!(error.code, ErrorCode::InvalidArgument, "{error}");
    assert!(
        error.message.contains("cannot replicate from itself"),
        "{error}"
    );
    assert!(!root.path().join("copy.bin").exists());
    a.shutdown().await;
}
