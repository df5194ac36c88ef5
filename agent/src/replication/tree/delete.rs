//! After a tree's last file: each directory's mode and time, then `--delete`, which removes
//! what the target holds and the source did not list.
//!
//! It removes nothing outside the target's top, nothing the token's filter leaves out, and
//! nothing at all when there is more to remove than `--max-delete`; whether anything failed
//! (which also stops `--delete`) is the caller's check. Blocking work runs on blocking threads.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};

use orbit_wire::tree::{Filter, ItemAction};
use orbit_wire::{ErrorCode, WireError};

use super::write::{is_tree_part, sync_each_fs};
use super::{open_dir, split_name, Shared};
use crate::error::ToWire;
use crate::jail::{is_temporary, open_in_tree, JailError};
use crate::replication::error::PullError;

/// Sets each directory's mode and modification time, deepest first, now that its contents are
/// in, and makes the new directories durable: one `syncfs` per file system. Returns the
/// directories that could not be finished, with why. Blocking.
pub(super) fn finish_dirs(
    top: &OwnedFd,
    dirs: &[(Vec<u8>, u32, Timespec)],
) -> Vec<(Vec<u8>, WireError)> {
    let mut failed = Vec::new();
    let mut opened = Vec::new();
    for (name, mode, mtime) in dirs.iter().rev() {
        let finished = open_in_tree(top, name, OFlags::DIRECTORY | OFlags::RDONLY)
            .map_err(|e| e.to_wire())
            .and_then(|dir| {
                rustix::fs::fchmod(&dir, Mode::from_raw_mode(mode & 0o777))
                    .and_then(|()| {
                        let times = Timestamps {
                            last_access: *mtime,
                            last_modification: *mtime,
                        };
                        rustix::fs::futimens(&dir, &times)
                    })
                    .map_err(|e| JailError::from(e).to_wire())?;
                Ok(dir)
            });
        match finished {
            Ok(dir) => opened.push(dir),
            Err(e) => failed.push((name.clone(), e)),
        }
    }
    let synced = sync_each_fs(
        opened
            .iter()
            .map(|d| d.as_fd())
            .chain(std::iter::once(top.as_fd())),
    );
    if let Some(Err(e)) = synced.into_values().find(Result::is_err) {
        failed.push((Vec::new(), e));
    }
    failed
}

/// Removes what the target holds beneath its top and the source did not list, within the
/// filter's scope; first counts it, and removes nothing when it is more than `--max-delete`.
pub(super) async fn delete(
    shared: &Shared<'_>,
    top: Arc<OwnedFd>,
    names: HashMap<Vec<u8>, bool>,
    filter: Filter,
) -> Result<(), PullError> {
    let dry_run = shared.cmd.dry_run;
    let found = tokio::task::spawn_blocking(move || {
        absent(&top, &names, &filter, !dry_run).map(|f| (f, top))
    })
    .await
    .map_err(|e| PullError::Internal(e.to_string()))?;
    let (found, top) = match found {
        Ok(found) => found,
        Err(e) => {
            let why = WireError::new(e.code, format!("nothing was deleted: {}", e.message));
            shared.tally(|t| t.summary.delete_skipped = Some(why));
            return Ok(());
        }
    };
    if let Some(max) = shared.cmd.max_delete {
        if found.len() as u64 > max {
            let why = WireError::new(
                ErrorCode::FailedPrecondition,
                format!(
                    "nothing was deleted: {} entries are absent at the source, over --max-delete {max}",
                    found.len()
                ),
            );
            shared.tally(|t| t.summary.delete_skipped = Some(why));
            return Ok(());
        }
    }
    if shared.cmd.dry_run {
        for (name, is_dir) in &found {
            shared.item(
                ItemAction::Deleted,
                name,
                if *is_dir { 'd' } else { 'f' },
                0,
                None,
            );
        }
        return Ok(());
    }
    let protected = shared.protected.clone();
    let removed = tokio::task::spawn_blocking(move || {
        found
            .into_iter()
            .map(|(name, is_dir)| {
                let (parent, last) = split_name(&name);
                let result = open_dir(&top, parent)
                    .map_err(|e| e.to_wire())
                    .and_then(|dir| {
                        let flags = if is_dir {
                            AtFlags::REMOVEDIR
                        } else {
                            AtFlags::empty()
                        };
                        // The star's own files and folders stay, whatever the tree lacks.
                        let now = rustix::fs::statat(&dir, last, AtFlags::SYMLINK_NOFOLLOW);
                        if now.is_ok_and(|s| protected.holds(&s)) {
                            return Err(JailError::Protected.to_wire());
                        }
                        rustix::fs::unlinkat(&dir, last, flags)
                            .map_err(|e| JailError::from(e).to_wire())?;
                        rustix::fs::fsync(&dir).map_err(|e| JailError::from(e).to_wire())
                    });
                (name, is_dir, result)
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| PullError::Internal(e.to_string()))?;
    for (name, is_dir, result) in removed {
        let kind = if is_dir { 'd' } else { 'f' };
        match result {
            Ok(()) => shared.item(ItemAction::Deleted, &name, kind, 0, None),
            Err(e) => shared.item(ItemAction::Failed, &name, kind, 0, Some(e)),
        }
    }
    Ok(())
}

/// The entries beneath `top` that the source did not list, contents before their directory,
/// each with whether it is a directory. Entries the filter leaves out are out of scope and
/// kept, and so is everything inside a directory the source did not list as one. Blocking.
fn absent(
    top: &OwnedFd,
    names: &HashMap<Vec<u8>, bool>,
    filter: &Filter,
    sweep: bool,
) -> Result<Vec<(Vec<u8>, bool)>, WireError> {
    let mut found = Vec::new();
    let mut pending: Vec<Vec<u8>> = vec![Vec::new()];
    while let Some(dir_name) = pending.pop() {
        let dir = open_dir(top, &dir_name).map_err(|e| e.to_wire())?;
        let entries = rustix::fs::Dir::read_from(&dir).map_err(|e| JailError::from(e).to_wire())?;
        for dirent in entries {
            let dirent = dirent.map_err(|e| JailError::from(e).to_wire())?;
            let file_name = dirent.file_name().to_bytes();
            if sweep && is_tree_part(file_name) {
                let _ = rustix::fs::unlinkat(&dir, file_name, AtFlags::empty());
                continue;
            }
            if file_name == b"." || file_name == b".." || is_temporary(file_name) {
                continue;
            }
            let name = if dir_name.is_empty() {
                file_name.to_vec()
            } else {
                [dir_name.as_slice(), b"/", file_name].concat()
            };
            let is_dir = is_dir(&dir, &dirent);
            if !filter.admits(&name, is_dir) {
                continue;
            }
            match names.get(&name) {
                Some(true) if is_dir => pending.push(name),
                Some(_) => {}
                None if is_dir => {
                    // The whole subtree goes, contents first, but for what the filter keeps
                    // out of scope: a directory holding some of that stays.
                    let mut inner = Vec::new();
                    let all = subtree(top, &name, filter, &mut inner)?;
                    found.extend(inner);
                    if all {
                        found.push((name, true));
                    }
                }
                None => found.push((name, false)),
            }
        }
    }
    Ok(found)
}

/// The entries beneath directory `name` that the filter admits, contents before their
/// directory, in `out`. Returns whether all of the directory goes: false when it holds something
/// the filter keeps out of scope, which stays with the directories above it. Blocking.
fn subtree(
    top: &OwnedFd,
    name: &[u8],
    filter: &Filter,
    out: &mut Vec<(Vec<u8>, bool)>,
) -> Result<bool, WireError> {
    let dir =
        open_in_tree(top, name, OFlags::DIRECTORY | OFlags::RDONLY).map_err(|e| e.to_wire())?;
    let entries = rustix::fs::Dir::read_from(&dir).map_err(|e| JailError::from(e).to_wire())?;
    let mut all = true;
    for dirent in entries {
        let dirent = dirent.map_err(|e| JailError::from(e).to_wire())?;
        let file_name = dirent.file_name().to_bytes();
        if file_name == b"." || file_name == b".." {
            continue;
        }
        let child = [name, b"/", file_name].concat();
        let child_is_dir = is_dir(&dir, &dirent);
        if !filter.admits(&child, child_is_dir) {
            all = false;
            continue;
        }
        if child_is_dir {
            let mut inner = Vec::new();
            if subtree(top, &child, filter, &mut inner)? {
                inner.push((child, true));
            } else {
                all = false;
            }
            out.extend(inner);
        } else {
            out.push((child, false));
        }
    }
    Ok(all)
}

/// Whether a directory entry is a directory, asking the file system when the entry does not say
/// (`DT_UNKNOWN`), never following a link.
fn is_dir(dir: &OwnedFd, dirent: &rustix::fs::DirEntry) -> bool {
    match dirent.file_type() {
        FileType::Unknown => rustix::fs::statat(dir, dirent.file_name(), AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Directory),
        kind => kind == FileType::Directory,
    }
}
