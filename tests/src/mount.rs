//! A small tmpfs mounted for a test (a full disk, a file system mounted on a star's root after it
//! started), unmounted when dropped. Needs root; [`Tmpfs::mount_on`] says why it could not mount,
//! for [`crate::skip_or_fail`].

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted on a directory, lazily unmounted when dropped (or by [`Tmpfs::unmount`]).
#[derive(Debug)]
pub struct Tmpfs {
    dir: PathBuf,
    mounted: bool,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` reads it, e.g. `8m`) on the existing
    /// directory `dir`, hiding what is in it.
    ///
    /// # Errors
    ///
    /// `mount`'s own message, for the skip or the failure to show.
    pub fn mount_on(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            dir: dir.to_owned(),
            mounted: true,
        })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Unmounts it now (lazily: a process holding a handle inside keeps it alive, unseen).
    ///
    /// # Panics
    ///
    /// When `umount` fails.
    pub fn unmount(mut self) {
        self.mounted = false;
        let status = Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status()
            .unwrap();
        assert!(status.success(), "umount {}: {status}", self.dir.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}
