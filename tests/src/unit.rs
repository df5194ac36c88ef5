//! The systemd unit in `dist/` without systemd (booting an init here would take over the
//! machine): a host folder laid out as `orbitctl` and docs/OPERATIONS.md say (the `install`
//! commands `orbitctl` prints, run as root), credentials copied the way `LoadCredential=` copies
//! them when the service starts, the unit's own `ExecStart=` run as an unprivileged user standing
//! in for `orbit`, and its own `ExecReload=`.
//!
//! It needs root (to give files away and to change user); [`UnitHost::new`] says why it cannot
//! run, for [`crate::skip_or_fail`].

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::StarProcess;
use crate::wire;

/// The unit file.
pub const UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../dist/systemd/orbit-star.service"
);

/// Where the unit installs the star's files, and the binary.
const HOST_DIR: &str = "/etc/orbit";
const INSTALLED: &str = "/usr/local/bin/orbit-star";

/// The unit file's settings.
#[derive(Debug)]
pub struct Unit {
    text: String,
}

impl Unit {
    /// Reads `dist/systemd/orbit-star.service`.
    pub fn load() -> Unit {
        Unit {
            text: std::fs::read_to_string(UNIT).expect("the unit file"),
        }
    }

    /// Every value of `key=` in the unit, in order (comments left out).
    pub fn values(&self, key: &str) -> Vec<&str> {
        self.text
            .lines()
            .filter_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .collect()
    }

    /// The one value of `key=`.
    ///
    /// # Panics
    ///
    /// When the unit sets it other than once.
    pub fn value(&self, key: &str) -> &str {
        match self.values(key)[..] {
            [one] => one,
            ref other => panic!("the unit sets {key}= {} times", other.len()),
        }
    }
}

/// A host for one star as the unit runs it, inside a temporary folder: `etc` stands for
/// `/etc/orbit`, `uid`/`gid` for the `orbit` user and group.
#[derive(Debug)]
pub struct UnitHost {
    /// Stands for `/etc/orbit`.
    pub etc: PathBuf,
    /// `$CREDENTIALS_DIRECTORY`.
    pub credentials: PathBuf,
    /// The state directory (`%S/orbit`).
    pub state: PathBuf,
    /// A store root, owned by the star's user.
    pub store: PathBuf,
    /// The star's user and group.
    pub uid: u32,
    /// The star's group.
    pub gid: u32,
}

impl UnitHost {
    /// Makes the host's folders under `dir` (which the star's user must be able to traverse).
    /// The user is a uid and gid no account uses, so nothing is added to the system.
    ///
    /// # Errors
    ///
    /// Why it cannot run here: not root, or no `setpriv`.
    pub fn new(dir: &Path) -> Result<UnitHost, String> {
        if !rustix::process::geteuid().is_root() {
            return Err("not running as root".into());
        }
        let setpriv = Command::new("setpriv").arg("--version").output();
        if !setpriv.is_ok_and(|o| o.status.success()) {
            return Err("setpriv (util-linux) is missing".into());
        }
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
        let taken = |id: u32| {
            let field = format!(":{id}:");
            passwd.contains(&field) || group.contains(&field)
        };
        let uid = (64_000 + std::process::id() % 900..65_000)
            .find(|id| !taken(*id))
            .ok_or("no free uid")?;
        let host = UnitHost {
            etc: dir.join("etc/orbit"),
            credentials: dir.join("run/credentials/orbit-star.service"),
            state: dir.join("var/lib/orbit"),
            store: dir.join("srv/orbit"),
            uid,
            gid: uid,
        };
        for d in [dir, &dir.join("etc"), &dir.join("run/credentials")] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        // StateDirectory=orbit with StateDirectoryMode=0700, and a root the user owns.
        for (d, mode) in [(&host.state, 0o700), (&host.store, 0o755)] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode)).unwrap();
            std::os::unix::fs::chown(d, Some(uid), Some(uid)).unwrap();
        }
        Ok(host)
    }

    /// Runs, as root in `folder` (a copy of a star's folder), every `install` and `rm` command
    /// in `printed` (what `orbitctl` printed), with `/etc/orbit` standing for [`UnitHost::etc`]
    /// and the group `orbit` for [`UnitHost::gid`]. Returns the commands run.
    ///
    /// # Panics
    ///
    /// When one fails.
    pub fn run_printed(&self, printed: &str, folder: &Path) -> Vec<String> {
        let mut ran = Vec::new();
        for line in printed.lines().map(str::trim) {
            if !(line.starts_with("install ") || line.starts_with("rm ")) {
                continue;
            }
            let command = line
                .replace(HOST_DIR, &wire(&self.etc))
                .replace(" -g orbit ", &format!(" -g {} ", self.gid));
            let out = Command::new("sh")
                .args(["-c", &command])
                .current_dir(folder)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{command}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            ran.push(line.to_owned());
        }
        ran
    }

    /// What `LoadCredential=ID:PATH` does when the service starts: each file copied by root
    /// into a folder of the service's own, read-only (folder 0500, files 0400, the user's).
    pub fn load_credentials(&self, unit: &Unit) {
        let dir = &self.credentials;
        if dir.exists() {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
            std::fs::remove_dir_all(dir).unwrap();
        }
        std::fs::create_dir(dir).unwrap();
        for credential in unit.values("LoadCredential") {
            let (id, path) = credential.split_once(':').expect("ID:PATH");
            let from = PathBuf::from(path.replace(HOST_DIR, &wire(&self.etc)));
            let to = dir.join(id);
            std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o400)).unwrap();
            std::os::unix::fs::chown(&to, Some(self.uid), Some(self.gid)).unwrap();
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o500)).unwrap();
        std::os::unix::fs::chown(dir, Some(self.uid), Some(self.gid)).unwrap();
    }

    /// The unit's `ExecStart=` with its specifiers filled in, run as the star's user with the
    /// unit's environment for credentials: the started star.
    pub fn start(&self, unit: &Unit) -> StarProcess {
        let exec = unit.value("ExecStart");
        let mut words = exec.split_whitespace();
        assert_eq!(words.next(), Some(INSTALLED), "{exec}");
        let args: Vec<String> = words
            .map(|w| {
                w.replace("%S/orbit", &wire(&self.state))
                    .replace("%d", &wire(&self.credentials))
                    .replace(HOST_DIR, &wire(&self.etc))
            })
            .collect();
        assert!(
            args.iter().all(|a| !a.contains('%')),
            "a specifier the test does not fill: {exec}"
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        StarProcess::start_prefixed(
            &self.as_user_prefix(),
            &args,
            &[("CREDENTIALS_DIRECTORY", &wire(&self.credentials))],
        )
    }

    /// The unit's `ExecReload=`, with `$MAINPID` the star's process id.
    ///
    /// # Panics
    ///
    /// When it fails.
    pub fn reload(&self, unit: &Unit, star: &StarProcess) {
        let exec = unit.value("ExecReload");
        let words: Vec<String> = exec
            .split_whitespace()
            .map(|w| w.replace("$MAINPID", &star.pid().to_string()))
            .collect();
        let status = Command::new(&words[0]).args(&words[1..]).status().unwrap();
        assert!(status.success(), "{exec}: {status}");
    }

    /// `setpriv` and its options, to run a program as the star's user (no other groups).
    pub fn as_user_prefix(&self) -> Vec<String> {
        vec![
            "setpriv".into(),
            format!("--reuid={}", self.uid),
            format!("--regid={}", self.gid),
            "--clear-groups".into(),
        ]
    }

    /// Whether the star's user may read `path`.
    pub fn user_can_read(&self, path: &Path) -> bool {
        let prefix = self.as_user_prefix();
        Command::new(&prefix[0])
            .args(&prefix[1..])
            .arg("cat")
            .arg(path)
            .output()
            .unwrap()
            .status
            .success()
    }

    /// Owner, group and permission bits of `file` in [`UnitHost::etc`].
    pub fn access(&self, file: &str) -> (u32, u32, u32) {
        let meta = std::fs::metadata(self.etc.join(file)).unwrap();
        (meta.uid(), meta.gid(), meta.mode() & 0o7777)
    }
}
