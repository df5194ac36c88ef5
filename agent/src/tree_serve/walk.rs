//! The walk of a tree at its source: depth first from the top's handle, parents before their
//! contents, the entries the token's filter admits sent in batches as they are found. Blocking.
//!
//! It never follows a symbolic link, never lists what the filter leaves out, and reads a file's
//! bytes only to hash it when the destination compares checksums.

use std::os::fd::AsFd;

use rustix::fs::{AtFlags, FileType, OFlags};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use orbit_wire::tree::{self, Entry, EntryKind, LIST_BATCH, LIST_BATCH_BYTES};
use orbit_wire::{ErrorCode, WireError};

use super::Authorized;
use crate::digests::FileKey;
use crate::error::ToWire;
use crate::jail::{is_temporary, open_in_tree, open_tree_file, JailError};
use crate::serve::ServeError;

/// How deep a tree may nest below its top: each level holds a directory open while it is
/// walked.
const MAX_DEPTH: usize = 256;

/// One directory being walked, and the name of its entries' parent (`""` at the top, else
/// ending in `/`).
struct Level {
    dir: rustix::fs::Dir,
    prefix: Vec<u8>,
}

/// Walks the tree depth first, parents before their contents, and sends the entries the filter
/// admits in batches. Blocking.
pub(super) fn walk(
    authorized: &Authorized,
    checksums: bool,
    known: &dyn Fn(&FileKey) -> Option<[u8; 32]>,
    remember: &dyn Fn(FileKey, [u8; 32]),
    tx: &mpsc::Sender<Vec<Entry>>,
) -> Result<(), ServeError> {
    let filter = &authorized.claims.filter;
    let top = open_in_tree(
        authorized.top.as_fd(),
        b".",
        OFlags::DIRECTORY | OFlags::RDONLY,
    )?;
    let mut stack = vec![Level {
        dir: rustix::fs::Dir::new(top)?,
        prefix: Vec::new(),
    }];
    let mut batch = Vec::with_capacity(LIST_BATCH);
    let mut batch_bytes = 0;
    loop {
        let depth = stack.len();
        let Some(level) = stack.last_mut() else { break };
        let Some(next) = level.dir.next() else {
            stack.pop();
            continue;
        };
        let dirent = next?;
        let file_name = dirent.file_name();
        let bytes = file_name.to_bytes();
        // Orbit's own temporary files (an interrupted replication's) are never part of a tree:
        // sent on, one could collide with the destination's temporary for a sibling.
        if bytes == b"." || bytes == b".." || is_temporary(bytes) {
            continue;
        }
        let name = [level.prefix.as_slice(), bytes].concat();
        let dir = level.dir.fd()?;
        let stat = match rustix::fs::statat(dir, file_name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            // Removed since it was read: not part of the tree any more.
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => {
                let error = JailError::from(e).to_wire();
                batch.push(Entry {
                    name,
                    kind: EntryKind::Unreadable(error),
                });
                continue;
            }
        };
        let kind = FileType::from_raw_mode(stat.st_mode);
        if !filter.admits(&name, kind == FileType::Directory) {
            continue;
        }
        // The star's own key, config or state, moved or mounted into the tree: named, never
        // sent, never walked into.
        if authorized.protected.holds(&stat) {
            batch.push(Entry {
                name,
                kind: EntryKind::Unsupported(JailError::Protected.to_wire()),
            });
            continue;
        }
        let mut descend = None;
        let entry_kind = match kind {
            FileType::Directory if depth > MAX_DEPTH => EntryKind::Unreadable(WireError::new(
                ErrorCode::ResourceExhausted,
                format!("deeper than {MAX_DEPTH} levels below the tree's top"),
            )),
            FileType::Directory => {
                match open_in_tree(dir, bytes, OFlags::DIRECTORY | OFlags::RDONLY)
                    .and_then(|fd| Ok(rustix::fs::Dir::new(fd)?))
                {
                    Ok(opened) => {
                        let mut prefix = name.clone();
                        prefix.push(b'/');
                        descend = Some(Level {
                            dir: opened,
                            prefix,
                        });
                        EntryKind::Dir {
                            mode: stat.st_mode & 0o7777,
                            mtime_sec: stat.st_mtime,
                            mtime_nsec: u32::try_from(stat.st_mtime_nsec).unwrap_or(0),
                        }
                    }
                    // Swapped for a link since it was read: a link is not followed.
                    Err(e @ JailError::Escapes) => EntryKind::Unsupported(e.to_wire()),
                    Err(e) => EntryKind::Unreadable(e.to_wire()),
                }
            }
            FileType::RegularFile if stat.st_nlink > 1 => {
                EntryKind::Unsupported(JailError::HardLinked(stat.st_nlink as u64).to_wire())
            }
            FileType::RegularFile => {
                let sha256 = if checksums {
                    match digest(dir, bytes, &authorized.protected, known, remember) {
                        Ok(sha) => Some(sha),
                        Err(e) => {
                            batch.push(Entry {
                                name,
                                kind: EntryKind::Unreadable(e.to_wire()),
                            });
                            continue;
                        }
                    }
                } else {
                    None
                };
                EntryKind::File {
                    version: orbit_wire::FileVersion {
                        size: u64::try_from(stat.st_size).unwrap_or(0),
                        mtime_sec: stat.st_mtime,
                        mtime_nsec: u32::try_from(stat.st_mtime_nsec).unwrap_or(0),
                        inode: stat.st_ino,
                    },
                    mode: stat.st_mode & 0o7777,
                    sha256,
                }
            }
            FileType::Symlink if filter.links => {
                match rustix::fs::readlinkat(dir, file_name, Vec::new()) {
                    Ok(target) if tree::link_stays_inside(&name, target.as_bytes()) => {
                        EntryKind::Symlink {
                            target: target.into_bytes(),
                        }
                    }
                    Ok(_) => skipped(
                        ErrorCode::PermissionDenied,
                        "a symbolic link that leaves the tree".into(),
                    ),
                    Err(e) => EntryKind::Unreadable(JailError::from(e).to_wire()),
                }
            }
            FileType::Symlink => skipped(
                ErrorCode::InvalidArgument,
                "a symbolic link (sent only with --links copy)".into(),
            ),
            other => skipped(
                ErrorCode::InvalidArgument,
                format!("not a regular file ({})", describe(other)),
            ),
        };
        batch_bytes += name.len()
            + match &entry_kind {
                EntryKind::Symlink { target } => target.len(),
                EntryKind::Unsupported(e) | EntryKind::Unreadable(e) => e.message.len(),
                _ => 0,
            }
            + ENTRY_OVERHEAD;
        batch.push(Entry {
            name,
            kind: entry_kind,
        });
        if let Some(level) = descend {
            stack.push(level);
        }
        if batch.len() >= LIST_BATCH || batch_bytes >= LIST_BATCH_BYTES {
            batch_bytes = 0;
            let full = std::mem::replace(&mut batch, Vec::with_capacity(LIST_BATCH));
            if tx.blocking_send(full).is_err() {
                return Err(ServeError::Abandoned);
            }
        }
    }
    if !batch.is_empty() && tx.blocking_send(batch).is_err() {
        return Err(ServeError::Abandoned);
    }
    Ok(())
}

/// An entry the source does not send by design.
/// What an entry costs in a batch beside its name, link text or error message: its kind,
/// version, mode and digest, rounded up.
const ENTRY_OVERHEAD: usize = 128;

fn skipped(code: ErrorCode, message: String) -> EntryKind {
    EntryKind::Unsupported(WireError::new(code, message))
}

fn describe(kind: FileType) -> &'static str {
    match kind {
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        _ => "an unknown kind of file",
    }
}

/// The SHA-256 of the file `name` in `dir`, from the cache of whole files already hashed when
/// it holds this version. Blocking.
fn digest(
    dir: impl AsFd,
    name: &[u8],
    protected: &crate::jail::Protected,
    known: &dyn Fn(&FileKey) -> Option<[u8; 32]>,
    remember: &dyn Fn(FileKey, [u8; 32]),
) -> Result<[u8; 32], ServeError> {
    let opened = open_tree_file(dir, name, protected)?;
    let key = FileKey::of(&opened.stat);
    if let Some(sha) = known(&key) {
        return Ok(sha);
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; orbit_wire::CHUNK_SIZE];
    let mut file = &opened.file;
    loop {
        match std::io::Read::read(&mut file, &mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let sha: [u8; 32] = hasher.finalize().into();
    let after = rustix::fs::fstat(&opened.file)?;
    if FileKey::of(&after) == key {
        remember(key, sha);
    }
    Ok(sha)
}
