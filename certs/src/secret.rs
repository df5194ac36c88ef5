//! Reading secret files (private keys, token keys) the way ssh does: a file that its group or
//! other users may read or write is refused, with the command that fixes it. The contents never
//! appear in an error.
//!
//! A service's secret may also be shared by root with the service's group, as PostgreSQL allows
//! for its TLS key ([`read_service_secret_file`]): owned by root, readable by its group, nothing
//! more (mode 0640 at most). The service can read it but neither change it nor loosen it, and
//! root can replace it at run time (a rotated token key) without handing the file to the
//! service's user.

use std::io;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt};
use std::path::{Path, PathBuf};

/// A secret file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    /// The file could not be read.
    #[error("cannot read {what} {}: {error}", path.display())]
    Read {
        /// What the file holds, e.g. "token key file".
        what: String,
        /// The file.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// Group or others have access to it.
    #[error("{what} {} is {who} (mode {mode:04o}); run: chmod {fix:o} {}", path.display(), path.display())]
    TooOpen {
        /// What the file holds.
        what: String,
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// "readable by others", "readable by its group", ...
        who: &'static str,
        /// The mode that fixes it: 600, or 640 for a root-owned service secret.
        fix: u32,
    },
}

/// Checks that only the owner may access `path` (mode 0600 or 0400), then reads it.
///
/// # Errors
///
/// [`SecretFileError::TooOpen`] if group or others have any access, and
/// [`SecretFileError::Read`] if it cannot be read.
pub fn read_secret_file(path: &Path, what: &str) -> Result<String, SecretFileError> {
    read_checked(path, what, false)
}

/// As [`read_secret_file`], but a file owned by root may also be readable (only readable) by its
/// group: mode 0640, 0440 or less. That is how root shares a secret with a service running as
/// another user, e.g. `/etc/orbit/token.key` as `root:orbit 0640`.
///
/// # Errors
///
/// [`SecretFileError::TooOpen`] if others have any access, or the group has any access but read,
/// or the group may read a file root does not own; [`SecretFileError::Read`] if it cannot be
/// read.
pub fn read_service_secret_file(path: &Path, what: &str) -> Result<String, SecretFileError> {
    read_checked(path, what, true)
}

fn read_checked(path: &Path, what: &str, group_read: bool) -> Result<String, SecretFileError> {
    let read_error = |error| SecretFileError::Read {
        what: what.to_owned(),
        path: path.to_owned(),
        error,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    // The mode of the file opened, not of whatever the path names a moment later.
    let meta = file.metadata().map_err(read_error)?;
    let mode = meta.permissions().mode() & 0o7777;
    // Root's file may be shared with its group, read only; anyone else's stays theirs alone.
    let shared = group_read && meta.uid() == 0;
    let checked = if shared { mode & !0o040 } else { mode };
    if let Some(who) = too_open(checked) {
        return Err(SecretFileError::TooOpen {
            what: what.to_owned(),
            path: path.to_owned(),
            mode,
            who,
            fix: if shared { 0o640 } else { 0o600 },
        });
    }
    io::read_to_string(file).map_err(read_error)
}

fn too_open(mode: u32) -> Option<&'static str> {
    if mode & 0o004 != 0 {
        Some("readable by others")
    } else if mode & 0o040 != 0 {
        Some("readable by its group")
    } else if mode & 0o002 != 0 {
        Some("writable by others")
    } else if mode & 0o020 != 0 {
        Some("writable by its group")
    } else if mode & 0o011 != 0 {
        Some("accessible by group or others")
    } else {
        None
    }
}

/// Marks this process non-dumpable (no core dump; `/proc/PID/mem`, `environ` and ptrace closed
/// to other processes of the same user) and sets its core size limit to 0: what a process that
/// holds private keys or token keys does first, so that a crash leaves none of them on disk.
///
/// # Errors
///
/// From `prctl(PR_SET_DUMPABLE)` or `setrlimit(RLIMIT_CORE)`, naming which.
pub fn forbid_core_dumps() -> io::Result<()> {
    use rustix::process::{set_dumpable_behavior, setrlimit, DumpableBehavior, Resource, Rlimit};
    let failed = |what: &str, e: rustix::io::Errno| io::Error::other(format!("{what}: {e}"));
    set_dumpable_behavior(DumpableBehavior::NotDumpable).map_err(|e| {
        failed(
            "cannot mark the process non-dumpable (prctl PR_SET_DUMPABLE)",
            e,
        )
    })?;
    let none = Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    setrlimit(Resource::Core, none).map_err(|e| failed("cannot set the core size limit to 0", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_owner_only_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.key");
        std::fs::write(&path, "secret\n").unwrap();
        for (mode, who) in [
            (0o644, "readable by others"),
            (0o640, "readable by its group"),
            (0o602, "writable by others"),
            (0o620, "writable by its group"),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = read_secret_file(&path, "token key file").unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "token key file {p} is {who} (mode {mode:04o}); run: chmod 600 {p}",
                    p = path.display()
                )
            );
            assert!(!err.to_string().contains("secret\n"));
        }
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(read_secret_file(&path, "key").unwrap(), "secret\n");
        }
        let err = read_secret_file(&dir.path().join("none"), "key").unwrap_err();
        assert!(matches!(err, SecretFileError::Read { .. }), "{err}");
    }

    #[test]
    fn a_service_secret_may_be_readable_by_its_group_only_when_root_owns_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.key");
        std::fs::write(&path, "secret\n").unwrap();
        let root_owns = std::fs::metadata(&path).unwrap().uid() == 0;
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(read_service_secret_file(&path, "key").unwrap(), "secret\n");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let result = read_service_secret_file(&path, "token key file");
        match root_owns {
            true => assert_eq!(result.unwrap(), "secret\n"),
            false => {
                let err = result.unwrap_err().to_string();
                assert!(
                    err.ends_with(&format!("run: chmod 600 {}", path.display())),
                    "{err}"
                );
            }
        }
        // Never writable by the group, never anything for others, whoever owns it.
        let fix = if root_owns { 640 } else { 600 };
        for (mode, who) in [
            (0o644, "readable by others"),
            (0o660, "writable by its group"),
            (0o650, "accessible by group or others"),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = read_service_secret_file(&path, "token key file").unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "token key file {p} is {who} (mode {mode:04o}); run: chmod {fix} {p}",
                    p = path.display()
                )
            );
        }
        // orbitctl's own secrets stay owner-only.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(read_secret_file(&path, "key").is_err());
    }
}
