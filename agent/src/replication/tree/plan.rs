//! Each listed entry decided against what the target holds: a file to fetch, one already there
//! to skip, a directory or link made at once, or a failure to report. Blocking.
//!
//! It never writes a file's contents (that is [`super::fetch`] and [`super::write`]), and
//! opens nothing but beneath the target's handle, through no symbolic link.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec};
use sha2::{Digest, Sha256};

use orbit_wire::tree::{self, Entry, EntryKind, ItemAction, SyncLevel};
use orbit_wire::{ErrorCode, WireError};

use super::write::part_name;
use super::{split_name, Parents, Want, RESUME_MIN};
use crate::error::ToWire;
use crate::jail::{is_temporary, open_in_tree, JailError, Protected};

/// What to do with one listed entry.
pub(super) enum Decision {
    /// Fetch this file.
    Copy(Want),
    /// A directory made (`true`) or present, for its mode and time at the end.
    Dir(Vec<u8>, u32, Timespec, bool),
    /// Done with: report it.
    Item(ItemAction, Vec<u8>, char, u64, Option<WireError>),
}

/// Decides each entry of a batch against the target, making directories and links on the way.
/// `top` is `None` in a dry run whose target does not exist. Blocking.
pub(super) fn plan(
    top: Option<&OwnedFd>,
    protected: &Arc<Protected>,
    entries: Vec<Entry>,
    sync: SyncLevel,
    dry_run: bool,
) -> Vec<Decision> {
    let mut parents = Parents::new(protected.clone());
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        out.push(decide(top, &mut parents, entry, sync, dry_run));
    }
    out
}

fn decide(
    top: Option<&OwnedFd>,
    parents: &mut Parents,
    entry: Entry,
    sync: SyncLevel,
    dry_run: bool,
) -> Decision {
    let Entry { name, kind } = entry;
    let letter = match &kind {
        EntryKind::File { .. } => 'f',
        EntryKind::Dir { .. } => 'd',
        EntryKind::Symlink { .. } => 'l',
        EntryKind::Unsupported(_) | EntryKind::Unreadable(_) => '?',
    };
    let size = match &kind {
        EntryKind::File { version, .. } => version.size,
        _ => 0,
    };
    let fail = |name: Vec<u8>, error: WireError| {
        Decision::Item(ItemAction::Failed, name, letter, size, Some(error))
    };
    if let Err(e) = tree::check_name(&name) {
        let error = WireError::new(
            ErrorCode::InvalidArgument,
            format!("the source sent a name that is not a plain relative name: {e}"),
        );
        return fail(name, error);
    }
    // What the source does not send by design is reported; what it could not read is a failure,
    // and stops --delete. An Orbit temporary file is never taken from a source: it could collide
    // with this star's own temporary for a sibling.
    match kind {
        EntryKind::Unsupported(error) => {
            return Decision::Item(ItemAction::Unsupported, name, letter, 0, Some(error))
        }
        EntryKind::Unreadable(error) => {
            return Decision::Item(ItemAction::Failed, name, letter, 0, Some(error))
        }
        _ if is_temporary(split_name(&name).1) => {
            let error = WireError::new(
                ErrorCode::InvalidArgument,
                "the source sent an Orbit temporary file's name",
            );
            return fail(name, error);
        }
        _ => {}
    }
    let (parent_name, last) = split_name(&name);
    let (parent_name, last) = (parent_name.to_vec(), last.to_vec());
    let (parent_name, last) = (parent_name.as_slice(), last.as_slice());
    // What is at the target now; `None` if nothing (or, in a dry run, its parent is missing).
    let (parent, now) = match top {
        None => (None, None),
        Some(top) => match parents.open(top, parent_name) {
            Ok(parent) => match rustix::fs::statat(&*parent, last, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => (Some(parent), Some(stat)),
                Err(rustix::io::Errno::NOENT) => (Some(parent), None),
                Err(e) => return fail(name, JailError::from(e).to_wire()),
            },
            Err(_) if dry_run => (None, None),
            Err(e) => return fail(name, e),
        },
    };
    // The star's own key, config or state, moved or mounted into the target tree: kept.
    if now.as_ref().is_some_and(|s| parents.protected.holds(s)) {
        return fail(name, JailError::Protected.to_wire());
    }
    let now_kind = now.as_ref().map(|s| FileType::from_raw_mode(s.st_mode));
    match kind {
        EntryKind::Dir {
            mode,
            mtime_sec,
            mtime_nsec,
        } => {
            let mtime = Timespec {
                tv_sec: mtime_sec,
                tv_nsec: mtime_nsec.into(),
            };
            match now_kind {
                Some(FileType::Directory) => Decision::Dir(name, mode, mtime, false),
                Some(_) => fail(
                    name,
                    WireError::new(
                        ErrorCode::FailedPrecondition,
                        "something that is not a directory is in the way at the target",
                    ),
                ),
                None if dry_run => Decision::Item(ItemAction::Copied, name, 'd', 0, None),
                None => {
                    let parent = parent.expect("a parent outside a dry run");
                    match rustix::fs::mkdirat(&*parent, last, Mode::from_raw_mode(0o700)) {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {
                            // Reported now; its mode and time are set once its contents are in.
                            Decision::Dir(name, mode, mtime, true)
                        }
                        Err(e) => fail(name, JailError::from(e).to_wire()),
                    }
                }
            }
        }
        EntryKind::File {
            version,
            mode,
            sha256,
        } => {
            let offset = match (&parent, version.size >= RESUME_MIN) {
                (Some(parent), true) => left_behind(parent, last, version.size),
                _ => 0,
            };
            let want = Want {
                name,
                size: version.size,
                mode,
                offset,
            };
            let same = match (now_kind, &now) {
                (Some(FileType::RegularFile), Some(stat)) => match sync {
                    SyncLevel::Exists => true,
                    SyncLevel::Size => stat.st_size as u64 == version.size,
                    SyncLevel::Mtime => {
                        stat.st_size as u64 == version.size
                            && stat.st_mtime == version.mtime_sec
                            && stat.st_mtime_nsec as u32 == version.mtime_nsec
                    }
                    SyncLevel::Checksum => {
                        stat.st_size as u64 == version.size
                            && sha256.is_some()
                            && parent.as_ref().and_then(|p| hash_at(p, last).ok()) == sha256
                    }
                },
                (Some(FileType::Directory), _) => {
                    return fail(
                        want.name,
                        WireError::new(
                            ErrorCode::FailedPrecondition,
                            "a directory is in the way at the target",
                        ),
                    )
                }
                (Some(FileType::RegularFile | FileType::Symlink) | None, _) => false,
                (Some(other), _) => {
                    return fail(
                        want.name,
                        WireError::new(
                            ErrorCode::FailedPrecondition,
                            format!(
                                "the target is not a regular file ({other:?}) and is left alone"
                            ),
                        ),
                    )
                }
            };
            if same {
                Decision::Item(ItemAction::Skipped, want.name, 'f', want.size, None)
            } else {
                Decision::Copy(want)
            }
        }
        EntryKind::Symlink { target } => {
            if !tree::link_stays_inside(&name, &target) {
                return fail(
                    name,
                    WireError::new(
                        ErrorCode::PermissionDenied,
                        "the source sent a symbolic link that leaves the tree",
                    ),
                );
            }
            match now_kind {
                Some(FileType::Symlink) => {
                    let parent = parent.as_ref().expect("a parent when the target exists");
                    if rustix::fs::readlinkat(&**parent, last, Vec::new())
                        .is_ok_and(|text| text.as_bytes() == target.as_slice())
                    {
                        return Decision::Item(ItemAction::Skipped, name, 'l', 0, None);
                    }
                }
                Some(FileType::Directory) => {
                    return fail(
                        name,
                        WireError::new(
                            ErrorCode::FailedPrecondition,
                            "a directory is in the way at the target",
                        ),
                    )
                }
                _ => {}
            }
            if dry_run {
                return Decision::Item(ItemAction::Copied, name, 'l', 0, None);
            }
            let Some(parent) = parent else {
                return fail(
                    name,
                    WireError::new(ErrorCode::NotFound, "the link's directory is missing"),
                );
            };
            let tmp = format!(".orbit-link-{}.part", rand::random::<u64>());
            let made = rustix::fs::symlinkat(target.as_slice(), &*parent, tmp.as_str())
                .and_then(|()| rustix::fs::renameat(&*parent, tmp.as_str(), &*parent, last));
            match made {
                Ok(()) => Decision::Item(ItemAction::Copied, name, 'l', 0, None),
                Err(e) => {
                    let _ = rustix::fs::unlinkat(&*parent, tmp.as_str(), AtFlags::empty());
                    fail(name, JailError::from(e).to_wire())
                }
            }
        }
        // Answered before the target is looked at.
        EntryKind::Unsupported(error) | EntryKind::Unreadable(error) => {
            Decision::Item(ItemAction::Unsupported, name, '?', 0, Some(error))
        }
    }
}

/// The SHA-256 of the regular file `name` in `dir`, never through a link. Blocking.
fn hash_at(dir: &OwnedFd, name: &[u8]) -> std::io::Result<[u8; 32]> {
    let fd = open_in_tree(dir, name, OFlags::RDONLY | OFlags::NONBLOCK)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut file = std::fs::File::from(fd);
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hasher.finalize().into())
}

/// How many bytes of `last`'s temporary file in `dir` may be reused: what it holds, in whole
/// chunks, up to the file's `size`; 0 when there is none. Blocking.
pub(super) fn left_behind(dir: &OwnedFd, last: &[u8], size: u64) -> u64 {
    let part = part_name(last);
    match rustix::fs::statat(dir, part.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat)
            if FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile
                && stat.st_nlink == 1 =>
        {
            let chunk = orbit_wire::CHUNK_SIZE as u64;
            (stat.st_size as u64).min(size) / chunk * chunk
        }
        _ => 0,
    }
}
