//! The blocking writer of a fetch: each file written to a temporary file beside its target as
//! its bytes arrive, verified against the source's SHA-256, then the batch made durable and
//! published; and the names of those temporary files.
//!
//! It runs on a blocking thread only, and never publishes a file whose size and digest did not
//! match: a target path holds its old file or the verified new one, never a partial one.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use bytes::Bytes;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use orbit_wire::{ErrorCode, FileVersion, WireError};

use super::{split_name, Parents, Want, RESUME_MIN};
use crate::error::ToWire;
use crate::jail::{JailError, Protected};
use crate::replication::disk::{write_all_pieces, RESERVE_AHEAD};

/// What the network side tells the blocking writer.
pub(super) enum WriteMsg {
    /// File `index` begins: this many bytes, this version, from this offset (the bytes before
    /// it are in its temporary file, checked).
    Begin(usize, u64, FileVersion, u64),
    /// Its next bytes.
    Data(Vec<Bytes>),
    /// Its end, with the source's SHA-256.
    End([u8; 32]),
    /// File `index` failed at the source.
    Failed(usize, WireError),
    /// The stream failed: the file in progress is lost.
    Abort(WireError),
}

/// A file written and verified, waiting for its batch to be made durable and published.
struct Ready {
    index: usize,
    parent: Arc<OwnedFd>,
    parent_name: Vec<u8>,
    part: String,
    name: Vec<u8>,
    file: std::fs::File,
}

/// The file being written.
struct Writing {
    index: usize,
    parent: Arc<OwnedFd>,
    parent_name: Vec<u8>,
    part: String,
    file: std::fs::File,
    hasher: Sha256,
    version: FileVersion,
    /// The offset the next bytes go to, and how far the file's blocks are reserved.
    at: u64,
    reserved: u64,
    /// Where the file ends.
    end: u64,
}

impl Writing {
    /// Reserves the file's blocks a window ahead of the writes, as a single file's writer does
    /// (`RESERVE_AHEAD`): the whole of a large file at once would stall on tmpfs.
    fn reserve_ahead(&mut self) {
        let until = (self.at + RESERVE_AHEAD).min(self.end);
        if until > self.reserved {
            let flags = rustix::fs::FallocateFlags::KEEP_SIZE;
            let _ = rustix::fs::fallocate(&self.file, flags, self.reserved, until - self.reserved);
            self.reserved = until;
        }
    }
}

/// Writes the files of one fetch as they arrive, verifies each, and publishes the batch: fsync
/// every file, rename each over its target, fsync each directory touched once. Blocking.
/// Returns each file's result by index; `None` for files never begun.
pub(super) fn write_batch(
    top: &OwnedFd,
    protected: &Arc<Protected>,
    wants: &[Want],
    cancelled: &CancellationToken,
    mut rx: mpsc::Receiver<WriteMsg>,
) -> Vec<Option<Result<(), WireError>>> {
    // A large file cut short keeps its temporary file for the next attempt or run to resume
    // from, unless a controller cancelled the tree.
    let stop = |w: Writing| {
        if wants[w.index].size >= RESUME_MIN && !cancelled.is_cancelled() {
            drop(w.file);
        } else {
            remove_part(&w.parent, &w.part);
        }
    };
    let mut results: Vec<Option<Result<(), WireError>>> = vec![None; wants.len()];
    let mut parents = Parents::new(protected.clone());
    let mut ready: Vec<Ready> = Vec::new();
    let mut writing: Option<Writing> = None;
    let local = |e: std::io::Error| e.to_wire();
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            WriteMsg::Begin(index, size, version, from) => {
                let want = &wants[index];
                let (parent_name, _) = split_name(&want.name);
                let begun = parents.open(top, parent_name).and_then(|parent| {
                    let part = part_name(split_name(&want.name).1);
                    let opened = if from > 0 {
                        reopen_part(&parent, &part, from)
                    } else {
                        create_part(&parent, &part)
                    };
                    let file =
                        std::fs::File::from(opened.map_err(|e| JailError::from(e).to_wire())?);
                    let mut w = Writing {
                        index,
                        parent,
                        parent_name: parent_name.to_vec(),
                        part,
                        file,
                        hasher: Sha256::new(),
                        version,
                        at: from,
                        reserved: from,
                        end: from + size,
                    };
                    w.reserve_ahead();
                    Ok(w)
                });
                match begun {
                    Ok(w) => writing = Some(w),
                    Err(e) => results[index] = Some(Err(e)),
                }
            }
            WriteMsg::Data(pieces) => {
                let Some(w) = &mut writing else { continue };
                for piece in &pieces {
                    w.hasher.update(piece);
                }
                let failed = write_all_pieces(&mut w.file, &pieces).err().map(local);
                w.at += pieces.iter().map(|p| p.len() as u64).sum::<u64>();
                if w.at + RESERVE_AHEAD / 2 > w.reserved {
                    w.reserve_ahead();
                }
                if let Some(e) = failed {
                    let w = writing.take().expect("writing");
                    remove_part(&w.parent, &w.part);
                    results[w.index] = Some(Err(e));
                }
            }
            WriteMsg::End(sha256) => {
                let Some(w) = writing.take() else { continue };
                let got: [u8; 32] = w.hasher.finalize().into();
                if got != sha256 {
                    remove_part(&w.parent, &w.part);
                    results[w.index] = Some(Err(WireError::new(
                        ErrorCode::DataLoss,
                        "checksum mismatch: the bytes received do not hash to the source's SHA-256",
                    )));
                    continue;
                }
                let mode = wants[w.index].mode & 0o777;
                let mtime = Timespec {
                    tv_sec: w.version.mtime_sec,
                    tv_nsec: w.version.mtime_nsec.into(),
                };
                let set = rustix::fs::fchmod(&w.file, Mode::from_raw_mode(mode)).and_then(|()| {
                    rustix::fs::futimens(
                        &w.file,
                        &Timestamps {
                            last_access: mtime,
                            last_modification: mtime,
                        },
                    )
                });
                if let Err(e) = set {
                    remove_part(&w.parent, &w.part);
                    results[w.index] = Some(Err(local(e.into())));
                    continue;
                }
                ready.push(Ready {
                    index: w.index,
                    parent: w.parent,
                    parent_name: w.parent_name,
                    part: w.part,
                    name: split_name(&wants[w.index].name).1.to_vec(),
                    file: w.file,
                });
            }
            WriteMsg::Failed(index, error) => {
                if let Some(w) = writing.take() {
                    remove_part(&w.parent, &w.part);
                }
                results[index] = Some(Err(error));
            }
            WriteMsg::Abort(error) => {
                if let Some(w) = writing.take() {
                    results[w.index] = Some(Err(error));
                    stop(w);
                }
            }
        }
    }
    if let Some(w) = writing.take() {
        stop(w);
    }
    publish(ready, protected, &mut results);
    results
}

/// Makes the verified files durable and publishes them: syncs their data, renames each over
/// its target, and syncs the directories touched. A batch of several files is synced with one
/// `syncfs` of their file system each time, not an fsync per file: on ext4 each fsync waited for
/// a journal commit of its own, 0.4 ms apiece, most of a tree's time (bench/RESULTS.md).
fn publish(
    ready: Vec<Ready>,
    protected: &Protected,
    results: &mut [Option<Result<(), WireError>>],
) {
    let mut synced = Vec::with_capacity(ready.len());
    let whole_fs = ready.len() > 1;
    // One syncfs per file system the batch wrote to: a target tree may hold a mount point.
    let batch_synced = if whole_fs {
        sync_each_fs(ready.iter().map(|r| r.file.as_fd()))
    } else {
        HashMap::new()
    };
    for r in ready {
        let result = if whole_fs {
            device(r.file.as_fd()).and_then(|dev| batch_synced.get(&dev).cloned().unwrap_or(Ok(())))
        } else {
            r.file.sync_all().map_err(|e| e.to_wire())
        };
        match result {
            Ok(()) => synced.push(r),
            Err(e) => {
                remove_part(&r.parent, &r.part);
                results[r.index] = Some(Err(e));
            }
        }
    }
    let mut dirs: HashMap<Vec<u8>, Arc<OwnedFd>> = HashMap::new();
    let mut published = Vec::with_capacity(synced.len());
    for r in synced {
        drop(r.file);
        // One of the star's own files, moved in since the plan: kept.
        let target = rustix::fs::statat(&*r.parent, r.name.as_slice(), AtFlags::SYMLINK_NOFOLLOW);
        if target.is_ok_and(|s| protected.holds(&s)) {
            remove_part(&r.parent, &r.part);
            results[r.index] = Some(Err(JailError::Protected.to_wire()));
            continue;
        }
        // rename never follows a link at the target; a directory there refuses it.
        match rustix::fs::renameat(&*r.parent, r.part.as_str(), &*r.parent, r.name.as_slice()) {
            Ok(()) => {
                published.push((r.index, r.parent_name.clone()));
                dirs.entry(r.parent_name).or_insert(r.parent);
            }
            Err(e) => {
                remove_part(&r.parent, &r.part);
                let e = match e {
                    rustix::io::Errno::ISDIR
                    | rustix::io::Errno::NOTEMPTY
                    | rustix::io::Errno::EXIST => WireError::new(
                        ErrorCode::FailedPrecondition,
                        "a directory is in the way at the target",
                    ),
                    e => JailError::from(e).to_wire(),
                };
                results[r.index] = Some(Err(e));
            }
        }
    }
    // Each directory touched is synced once (all at once with syncfs when there are several); a
    // file is done only when its directory is.
    let whole = dirs.len() > 1;
    let fs_synced = if whole {
        sync_each_fs(dirs.values().map(|d| d.as_fd()))
    } else {
        HashMap::new()
    };
    let synced_dirs: HashMap<Vec<u8>, Result<(), WireError>> = dirs
        .into_iter()
        .map(|(name, dir)| {
            let result = if whole {
                device(dir.as_fd()).and_then(|dev| fs_synced.get(&dev).cloned().unwrap_or(Ok(())))
            } else {
                rustix::fs::fsync(&*dir).map_err(|e| std::io::Error::from(e).to_wire())
            };
            (name, result)
        })
        .collect();
    for (index, dir) in published {
        results[index] = Some(synced_dirs[&dir].clone());
    }
}

/// The device of an open file or directory.
fn device(fd: BorrowedFd<'_>) -> Result<u64, WireError> {
    rustix::fs::fstat(fd)
        .map(|s| s.st_dev)
        .map_err(|e| std::io::Error::from(e).to_wire())
}

/// Syncs each file system the descriptors are on once, by device.
pub(super) fn sync_each_fs<'a>(
    fds: impl Iterator<Item = BorrowedFd<'a>>,
) -> HashMap<u64, Result<(), WireError>> {
    let mut synced = HashMap::new();
    for fd in fds {
        if let Ok(dev) = device(fd) {
            synced.entry(dev).or_insert_with(|| {
                rustix::fs::syncfs(fd).map_err(|e| std::io::Error::from(e).to_wire())
            });
        }
    }
    synced
}

fn remove_part(dir: &OwnedFd, part: &str) {
    let _ = rustix::fs::unlinkat(dir, part, AtFlags::empty());
}

/// Whether a name is a tree's temporary file: a crash leaves these behind, and the next run
/// that writes the same file, or deletes with `--delete`, removes them.
pub(super) fn is_tree_part(name: &[u8]) -> bool {
    name.starts_with(TREE_PART) && name.ends_with(b".part")
}

/// The start of every tree temporary file's name.
const TREE_PART: &[u8] = b".orbit-tree-";

/// The temporary file beside the file `last`: one name per target name, so that a run after a
/// crash replaces the one the crash left.
pub(super) fn part_name(last: &[u8]) -> String {
    // The whole digest: two names of one directory must never share a temporary file.
    format!(".orbit-tree-{}.part", hex::encode(Sha256::digest(last)))
}

/// Opens the temporary file `part` an interrupted run left in `dir` to go on writing at `from`:
/// a regular file, never through a link, cut to `from`.
fn reopen_part(dir: &OwnedFd, part: &str, from: u64) -> rustix::io::Result<OwnedFd> {
    let fd = rustix::fs::openat(
        dir,
        part,
        OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    // Ours only: a regular file with no other name (one planted with a hard link elsewhere
    // would be written through).
    let stat = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile || stat.st_nlink != 1 {
        return Err(rustix::io::Errno::INVAL);
    }
    rustix::fs::ftruncate(&fd, from)?;
    rustix::fs::seek(&fd, rustix::fs::SeekFrom::Start(from))?;
    Ok(fd)
}

/// Creates the temporary file `part` in `dir` afresh, never through a link: one left by an
/// earlier run that crashed is removed first.
fn create_part(dir: &OwnedFd, part: &str) -> rustix::io::Result<OwnedFd> {
    let create = || {
        rustix::fs::openat(
            dir,
            part,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
    };
    match create() {
        Err(rustix::io::Errno::EXIST) => {
            rustix::fs::unlinkat(dir, part, AtFlags::empty())?;
            create()
        }
        other => other,
    }
}
