//! Helpers for the operations tests (service, config, metrics, logs): a grid folder made by the
//! real `orbitctl init`, scraping `/metrics` over plain HTTP, and reading one sample from the
//! Prometheus text.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};

use std::time::Duration;

use crate::process::{orbitctl, Output, StarProcess};
use crate::{sha256_file, wire, STEP_TIMEOUT};

/// How long a star has to log `reloaded:` after SIGHUP.
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// `orbitctl init ROOT/grid` for stars `names` on loopback ports that are free right now.
pub fn init_grid(root: &Path, names: &[&str]) -> PathBuf {
    init_grid_printing(root, names).0
}

/// As [`init_grid`], with what `orbitctl init` printed.
pub fn init_grid_printing(root: &Path, names: &[&str]) -> (PathBuf, crate::process::Output) {
    let grid = root.join("grid");
    let mut args = vec!["init".to_owned(), wire(&grid)];
    for name in names {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        args.push("--star".into());
        args.push(format!("{name}=127.0.0.1:{port}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = orbitctl(&args);
    assert_eq!(
        out.code,
        Some(0),
        "init failed: {}{}",
        out.stdout,
        out.stderr
    );
    (grid, out)
}

/// Starts the real `orbit-star` for `name` with the config `orbitctl` wrote for it in the grid
/// at `grid`, allowed `root`, with extra environment `env`.
pub fn start_star(grid: &Path, name: &str, root: &Path, env: &[(&str, &str)]) -> StarProcess {
    let config = grid.join(format!("stars/{name}/star.toml"));
    StarProcess::start_with_env(&["--config", &wire(&config), "--allow", &wire(root)], env)
}

/// `out`, once checked that the command exited 0 (else a panic showing its output).
pub fn ok(out: Output) -> Output {
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    out
}

/// `orbitctl replicate star-a:SRC star-b:DST` in the grid at `grid`.
pub fn replicate(grid: &Path, src: &Path, dst: &Path) -> Output {
    orbitctl(&[
        "--grid",
        &wire(grid),
        "replicate",
        &format!("star-a:{}", wire(src)),
        &format!("star-b:{}", wire(dst)),
    ])
}

/// `orbitctl replicate` of one file from star-a to a new name in star-b's folder each time,
/// which must succeed with the bytes in place: a grid's health check across a key change.
#[derive(Debug)]
pub struct Copies<'a> {
    grid: &'a Path,
    file: &'a Path,
    dir: &'a Path,
    made: u32,
}

impl<'a> Copies<'a> {
    pub fn new(grid: &'a Path, file: &'a Path, dir: &'a Path) -> Copies<'a> {
        Copies {
            grid,
            file,
            dir,
            made: 0,
        }
    }

    /// One more copy, `DIR/copy-N.bin`; `when` names the moment in a failure.
    pub fn check(&mut self, when: &str) {
        self.made += 1;
        let target = self.dir.join(format!("copy-{}.bin", self.made));
        let out = replicate(self.grid, self.file, &target);
        assert_eq!(out.code, Some(0), "{when}: {}{}", out.stdout, out.stderr);
        assert_eq!(sha256_file(&target), sha256_file(self.file), "{when}");
    }
}

/// Reloads `stars` (SIGHUP) and waits until each has logged `reloaded:`.
pub fn reload(stars: &[&StarProcess]) {
    for star in stars {
        star.hangup();
    }
    for star in stars {
        star.wait_for_line("reloaded:", RELOAD_TIMEOUT);
    }
}

/// `orbitctl token star-a:FILE --holder star-b` in the grid at `grid`: a read token as the
/// controller mints it now, under its current master key.
pub fn mint(grid: &Path, file: &Path) -> String {
    let out = orbitctl(&[
        "--grid",
        &wire(grid),
        "token",
        &format!("star-a:{}", wire(file)),
        "--holder",
        "star-b",
        "--ttl",
        "600",
    ]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    out.stdout.trim().to_owned()
}

/// Reads `path` from star-a at `addr` with `token`, as star-b does, with star-b's certificate
/// and key as they are in the grid at `grid` now.
///
/// # Errors
///
/// When the connection fails or is closed before the read's answer (a revoked certificate).
pub async fn raw_read(
    grid: &Path,
    addr: SocketAddr,
    path: &str,
    token: &str,
) -> anyhow::Result<crate::ReadOutcome> {
    let read = |f: &str| std::fs::read_to_string(grid.join(f)).unwrap();
    let star_b = orbit_certs::IssuedCert {
        cert_pem: read("stars/star-b/cert.pem"),
        key_pem: read("stars/star-b/key.pem"),
    };
    raw_read_as(grid, &star_b, addr, path, token).await
}

/// As [`raw_read`], as star-b with the certificate and key `star_b` (one it held before, say).
///
/// # Errors
///
/// As [`raw_read`].
pub async fn raw_read_as(
    grid: &Path,
    star_b: &orbit_certs::IssuedCert,
    addr: SocketAddr,
    path: &str,
    token: &str,
) -> anyhow::Result<crate::ReadOutcome> {
    let ca = std::fs::read_to_string(grid.join("ca.pem")).unwrap();
    let client = crate::Client::new(&ca, star_b);
    let conn = client.connect(addr, "star-a").await?;
    let outcome = client
        .read(&conn, &crate::read_request(path, token.to_owned()))
        .await?;
    conn.close(0u32.into(), b"done");
    Ok(outcome)
}

/// `GET /metrics` from `addr`: the body of a 200 answer.
///
/// # Panics
///
/// On any other answer.
pub fn scrape(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect_timeout(&addr, STEP_TIMEOUT).expect("metrics connect");
    stream.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("metrics answer");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    body.to_owned()
}

/// The value of the sample `series` (name and labels, exactly as printed) in Prometheus text.
///
/// # Panics
///
/// When the series is absent.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
        .parse()
        .expect("a number")
}

/// The address in a `metrics on http://ADDR/metrics` log line.
pub fn metrics_addr(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("metrics on http://")? + "metrics on http://".len()..];
    rest.split('/').next()?.parse().ok()
}

/// Runs `orbit-star` with `args` and extra environment (no inherited `ORBIT_*` or systemd
/// variables) to completion, for `--check-config`, `--version` and start-up failures.
pub fn orbit_star(args: &[&str], env: &[(&str, &str)]) -> crate::process::Output {
    let mut cmd = std::process::Command::new(crate::process::bin("orbit-star"));
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("ORBIT_") || key == "CREDENTIALS_DIRECTORY" || key == "NOTIFY_SOCKET" {
            cmd.env_remove(&*key);
        }
    }
    let out = cmd
        .args(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("orbit-star runs");
    crate::process::Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The `listen = "ADDR"` value of a star.toml written by `orbitctl init`.
pub fn listen_of(star_toml: &Path) -> String {
    let text = std::fs::read_to_string(star_toml).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("listen = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .expect("a listen line")
        .to_owned()
}
