//! The star's own files and folders: its private key, token keys, certificate, CA, revocation
//! list, config file, state directory and the grid's folder when it sits beside them. No allowed
//! root may hold one or lie inside one: [`check_roots`] refuses such a root at start and in
//! `--check-config`, naming the file. Whatever the roots, the jail never serves or overwrites
//! one: [`Protected`] knows them by identity (device and inode), which also catches a file moved
//! into a root after start or a folder mounted into one.
//!
//! It must never read the files' contents: only their names and `stat`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::startup::{SpawnError, StarConfig};

/// Files whose presence marks a grid's folder (as `orbitctl init` writes it): the whole folder
/// is protected, with the CA key, the master token key and every star's keys in it.
const GRID_MARKERS: [&str; 3] = ["grid.toml", "token-master.key", "ca.key"];

/// How deep, and how many entries, the identities of a protected folder's contents are taken.
const MAX_DEPTH: usize = 4;
const MAX_ENTRIES: usize = 4096;

/// Every protected path of `config`: the ones it names, the state directory, and the grid
/// folder found among their ancestors (up to three levels up).
pub(crate) fn paths(config: &StarConfig) -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = config.protected.clone();
    all.extend(config.state_dir.iter().cloned());
    let grids: Vec<PathBuf> = all
        .iter()
        .flat_map(|p| p.ancestors().skip(1).take(3))
        .filter(|dir| GRID_MARKERS.iter().any(|m| dir.join(m).is_file()))
        .map(Path::to_path_buf)
        .collect();
    all.extend(grids);
    // In order, first what is named: an error names the most telling file.
    let mut seen = HashSet::new();
    all.retain(|p| seen.insert(p.clone()));
    all
}

/// `path` with its symlinks resolved as far as it exists, the rest appended: a state directory
/// not created yet still compares with the roots.
fn resolved(path: &Path) -> PathBuf {
    if let Ok(canonical) = std::fs::canonicalize(path) {
        return canonical;
    }
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) if parent != path => resolved(parent).join(name),
        _ => std::path::absolute(path).unwrap_or_else(|_| path.to_owned()),
    }
}

/// Refuses a root that holds one of the star's own files or folders, or lies inside one.
///
/// # Errors
///
/// [`SpawnError::ProtectedInRoot`] naming the root and the file.
pub(crate) fn check_roots(config: &StarConfig) -> Result<(), SpawnError> {
    let protected: Vec<(PathBuf, PathBuf)> = paths(config)
        .into_iter()
        .map(|p| (resolved(&p), p))
        .collect();
    for root in config.roots.iter().chain(&config.read_only_roots) {
        let canonical = resolved(root);
        for (resolved_path, given) in &protected {
            if resolved_path.starts_with(&canonical) || canonical.starts_with(resolved_path) {
                return Err(SpawnError::ProtectedInRoot {
                    root: root.clone(),
                    path: given.clone(),
                });
            }
        }
    }
    Ok(())
}

/// The identities of the star's own files and folders, taken at start.
#[derive(Debug, Default)]
pub struct Protected {
    files: HashSet<(u64, u64)>,
    dirs: HashSet<(u64, u64)>,
    /// The state directory, protected as a folder only: its files (journal entries, the
    /// digest cache, temporary files) come and go, and an inode number freed by one is soon
    /// another file's, which a snapshot of them would then refuse. What is in it is reached
    /// only through it, and the folder itself is refused.
    state: Option<(u64, u64)>,
}

impl Protected {
    /// Takes the identity of every protected path of `config` that exists, and of what the
    /// protected folders but the state directory hold (bounded). Blocking.
    pub(crate) fn of(config: &StarConfig) -> Protected {
        use std::os::unix::fs::MetadataExt;
        let state = config
            .state_dir
            .as_deref()
            .and_then(|dir| std::fs::metadata(dir).ok())
            .map(|meta| (meta.dev(), meta.ino()));
        let mut protected = Protected {
            state,
            ..Protected::default()
        };
        let mut budget = MAX_ENTRIES;
        for path in paths(config) {
            protected.add(&path, MAX_DEPTH, &mut budget);
        }
        protected
    }

    fn add(&mut self, path: &Path, depth: usize, budget: &mut usize) {
        let Ok(meta) = std::fs::metadata(path) else {
            return;
        };
        use std::os::unix::fs::MetadataExt;
        let id = (meta.dev(), meta.ino());
        if !meta.is_dir() {
            // A file named in the config, or a key, certificate or configuration in a protected
            // folder. Other files there (another star's journal in a grid folder) come and go,
            // and their freed inode numbers would soon be other files'.
            let secret = path
                .extension()
                .is_some_and(|e| e == "key" || e == "pem" || e == "toml");
            if depth == MAX_DEPTH || secret {
                self.files.insert(id);
            }
            return;
        }
        if !self.dirs.insert(id) || depth == 0 || Some(id) == self.state {
            return;
        }
        let Ok(entries) = std::fs::read_dir(path) else {
            return;
        };
        for entry in entries.flatten() {
            if *budget == 0 {
                return;
            }
            *budget -= 1;
            // Links inside are not followed: what they point at is protected only if named.
            if entry.file_type().is_ok_and(|t| !t.is_symlink()) {
                self.add(&entry.path(), depth - 1, budget);
            }
        }
    }

    /// Whether the file or folder `stat` describes is one of the star's own.
    pub(crate) fn holds(&self, stat: &rustix::fs::Stat) -> bool {
        let id = (stat.st_dev, stat.st_ino);
        self.files.contains(&id) || self.dirs.contains(&id)
    }
}
