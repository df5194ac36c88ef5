//! The real binaries, `orbit-star` and `orbitctl`, for command-line tests: built once per test
//! process with the same profile as the tests, started with piped output, and stopped with
//! SIGTERM.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a star may take to log `listening on`.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The path of a workspace binary, built on first use.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/<test> -> target/<profile>
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target dir")
            .to_path_buf();
        let release = dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        // The whole workspace, as `cargo test --workspace` builds it: the same packages give the
        // same features, so the libraries it compiled are reused and only the two binaries are
        // built (see the proptest dependency in Cargo.toml).
        build.args(["build", "--quiet", "--workspace", "--bins"]);
        if release {
            build.arg("--release");
        }
        // `cargo test` gives this process CARGO_PKG_NAME and friends; passed on, they make the
        // build's fingerprints differ from a plain `cargo build` and everything is rebuilt.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_TARGET_DIR" {
                build.env_remove(&*key);
            }
        }
        let status = build
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo build runs");
        assert!(status.success(), "building the binaries failed");
        dir
    });
    dir.join(name)
}

/// A running `orbit-star`, stopped with SIGTERM when dropped.
#[derive(Debug)]
pub struct StarProcess {
    child: Option<Child>,
    /// Where it listens, from its `listening on` log line.
    pub addr: SocketAddr,
    /// Every stderr line so far is sent here by a reader thread.
    pub lines: mpsc::Receiver<String>,
    /// The lines it wrote up to its `listening on` line, that one included.
    pub started: Vec<String>,
}

impl StarProcess {
    /// Starts `orbit-star` with `args` and waits for `listening on ADDR`.
    ///
    /// # Panics
    ///
    /// When it exits or stays silent before it is ready; the panic shows its output.
    pub fn start(args: &[&str]) -> StarProcess {
        StarProcess::start_with_env(args, &[])
    }

    /// As [`StarProcess::start`], with extra environment variables (and no inherited
    /// `ORBIT_AUTH_SECRET`).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> StarProcess {
        StarProcess::start_prefixed::<&str>(&[], args, env)
    }

    /// As [`StarProcess::start_with_env`], run through `prefix` (e.g. `ip netns exec NS`, which
    /// execs the star in place, so signals still reach it).
    pub fn start_prefixed<S: AsRef<std::ffi::OsStr>>(
        prefix: &[S],
        args: &[&str],
        env: &[(&str, &str)],
    ) -> StarProcess {
        let mut child = prefixed(prefix, "orbit-star")
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("ORBIT_AUTH_SECRET")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("orbit-star starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    let addr = listening_addr(&line);
                    seen.push(line);
                    if let Some(addr) = addr {
                        return StarProcess {
                            child: Some(child),
                            addr,
                            lines,
                            started: seen,
                        };
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait().ok();
                    panic!(
                        "orbit-star did not start ({status:?}); its output:\n{}",
                        seen.join("\n")
                    );
                }
            }
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        signal(&child, "TERM");
        child.wait().expect("orbit-star exits")
    }

    /// Sends SIGINT, as Ctrl-C in a terminal does, and waits for the exit status.
    pub fn interrupt(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        signal(&child, "INT");
        child.wait().expect("orbit-star exits")
    }

    /// The process id, e.g. to read `/proc/PID/status`.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Every line logged so far that has not been read yet.
    pub fn drain_lines(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }
}

impl Drop for StarProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, "KILL");
            let _ = child.wait();
        }
    }
}

impl StarProcess {
    /// Sends SIGHUP: the star rereads its config, keys and revocation list.
    pub fn hangup(&self) {
        signal(self.child.as_ref().expect("running"), "HUP");
    }

    /// Waits for a log line containing `needle` and returns it, panicking with the lines seen
    /// if none comes within `timeout`.
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => seen.push(line),
                Err(_) => panic!(
                    "orbit-star never logged {needle:?}; it logged:\n{}",
                    seen.join("\n")
                ),
            }
        }
    }
}

fn signal(child: &Child, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status();
}

/// The address in a `listening on ADDR` log line.
pub fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    // Human lines end with the address; JSON lines close the message's quote after it.
    rest.split(|c: char| c.is_whitespace() || c == '"')
        .next()?
        .parse()
        .ok()
}

/// The result of running `orbitctl`.
#[derive(Debug)]
pub struct Output {
    /// Exit code, `None` if killed by a signal.
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `orbitctl` with `args` to completion.
pub fn orbitctl(args: &[&str]) -> Output {
    orbitctl_prefixed::<&str>(&[], args)
}

/// As [`orbitctl`], run through `prefix` (e.g. `ip netns exec NS`).
pub fn orbitctl_prefixed<S: AsRef<std::ffi::OsStr>>(prefix: &[S], args: &[&str]) -> Output {
    let out = prefixed(prefix, "orbitctl")
        .args(args)
        .env_remove("ORBIT_GRID")
        .stdin(Stdio::null())
        .output()
        .expect("orbitctl runs");
    Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The workspace binary `name` as a command, run through `prefix` when it is not empty.
fn prefixed<S: AsRef<std::ffi::OsStr>>(prefix: &[S], name: &str) -> Command {
    match prefix.split_first() {
        None => Command::new(bin(name)),
        Some((program, rest)) => {
            let mut cmd = Command::new(program);
            cmd.args(rest).arg(bin(name));
            cmd
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_address_in_a_log_line() {
        let line = "2026-11-27T12:00:00Z  INFO star{name=star-a}: orbit_agent::star: listening on 127.0.0.1:4567";
        assert_eq!(
            listening_addr(line),
            Some("127.0.0.1:4567".parse().unwrap())
        );
        assert_eq!(listening_addr("nothing here"), None);
        let json =
            r#"{"fields":{"message":"listening on 127.0.0.1:4567"},"target":"orbit_agent::star"}"#;
        assert_eq!(
            listening_addr(json),
            Some("127.0.0.1:4567".parse().unwrap())
        );
    }
}
