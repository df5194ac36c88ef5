//! The destination's disk side of one replication, blocking: the temporary file beside the
//! target, the SHA-256 of the whole file and of the current attempt's bytes (computed on a
//! thread of their own, [`crate::hashing`]), the journal's checkpoints, and at the end verification and the atomic, durable publish. It owns only what it
//! uses: the jail and the journal.
//!
//! It never writes at the target path itself, and [`Disk::abandon`] removes the temporary file
//! and its journal entry unless told to keep them for a resume. Every call blocks: the async
//! handle in [`super::writer`] runs it on a thread of its own.

use std::fs::File;
use std::io::{IoSlice, Read, Seek, SeekFrom, Write};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use orbit_wire::{ErrorCode, FileVersion, ReplicateFile, WireError};

use super::error::{Local, PullError};
use super::registry::Feed;
use crate::digests::FileKey;
use crate::error::ToWire;
use crate::framed::Payload;
use crate::hashing::{Digests, Hashing, Stopped};
use crate::jail::{Confined, Jail, TargetDir};
use crate::journal::{Entry, Journal};

/// How far ahead of the writes the file's blocks are reserved. Step by step rather than the whole
/// file at once: on tmpfs a reservation allocates the memory pages, about 0.4 s per GiB here, and
/// the whole file's at the start would stall the transfer for that long with the window full
/// (bench/RESULTS.md). The free space for the whole file is checked at the start all the same.
pub(super) const RESERVE_AHEAD: u64 = 64 * 1024 * 1024;

/// What the disk needs from the star: where it may write, where it journals, and the digests
/// of whole files it serves.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    /// The roots.
    pub(crate) jail: Arc<Jail>,
    /// The journal, when the star keeps one.
    pub(crate) journal: Option<Arc<Journal>>,
    /// The star's digest cache ([`crate::digests`]), which its reads look up.
    pub(crate) digests: Arc<crate::digests::Digests>,
}

/// The end of the transfer: what the bytes must add up to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Commit {
    /// The file's size.
    pub(crate) size: u64,
    /// The SHA-256 the source's trailer gave for this attempt's bytes.
    pub(crate) trailer: [u8; 32],
    /// The SHA-256 the command expects of the whole file, if it says.
    pub(crate) expect: Option<[u8; 32]>,
    /// The source's permission bits, if it gave them.
    pub(crate) mode: Option<u32>,
}

/// One replication's temporary file and what is known of it.
#[derive(Debug)]
pub(crate) struct Disk {
    store: Store,
    dir: TargetDir,
    part: String,
    file: File,
    /// The journal entry, when the star keeps a journal.
    entry: Option<Entry>,
    written: u64,
    /// The digests of the whole file so far and, when the attempt resumed past byte 0, of this
    /// attempt's bytes, which the source's trailer covers (from byte 0 it equals the whole
    /// file's, and hashing twice would cost a third of the transfer's CPU).
    hashing: Hashing,
    /// The file's blocks are reserved up to this offset (see [`RESERVE_AHEAD`]).
    reserved: u64,
    /// Its size, when this attempt's header has said it.
    size: u64,
    /// The checkpoint being synced on its own thread while this one goes on writing.
    pending: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    /// Where a fan-out destination tells its relay reads what is written.
    feed: Option<tokio::sync::watch::Sender<Feed>>,
}

fn disk_error(what: &str) -> impl Fn(std::io::Error) -> PullError + '_ {
    move |e| {
        let e = e.to_wire();
        PullError::Disk(Local(WireError::new(
            e.code,
            format!("{what}: {}", e.message),
        )))
    }
}

impl From<Stopped> for PullError {
    fn from(stopped: Stopped) -> PullError {
        PullError::Internal(stopped.to_string())
    }
}

fn target_error(cmd_target: &str) -> impl Fn(WireError) -> PullError + '_ {
    move |cause| PullError::Target {
        path: cmd_target.to_owned(),
        cause: Local(cause),
    }
}

/// Writes all of `pieces`, in order, with as few system calls as the file takes.
pub(super) fn write_all_pieces(file: &mut File, pieces: &[bytes::Bytes]) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = pieces.iter().map(|p| IoSlice::new(p)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match file.write_vectored(rest) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Hashes the first `len` bytes of `file` and compares them with the journal's digest: their
/// digest so far when they match.
fn check_prefix(mut file: &File, len: u64, expect: &str) -> std::io::Result<Option<Sha256>> {
    if file.metadata()?.len() < len {
        return Ok(None);
    }
    file.seek(SeekFrom::Start(0))?;
    let mut prefix = Sha256::new();
    let mut left = len;
    let mut buf = vec![0u8; crate::hashing::HASH_READ];
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        file.read_exact(&mut buf[..want])?;
        prefix.update(&buf[..want]);
        left -= want as u64;
    }
    Ok((hex::encode(prefix.clone().finalize()) == expect).then_some(prefix))
}

impl Store {
    /// Remembers `sha256` as the digest of the file just published from `file`: this star
    /// checked every byte of it, so sending it on later (a fan-out's next round, a source among
    /// several) need not hash it again. Taken from the open file after the rename, which moved
    /// its change time; a writer that changed the file in between would have it cached under the
    /// key of its change, and a destination that then gets the file refuses it, since every
    /// destination checks what it receives: a failed copy, never a wrong file. Files of a tree
    /// are not remembered: a large tree would push every other digest out of the cache.
    /// Returns the key it was remembered under, if the file could be looked at.
    pub(crate) fn remember(&self, file: &File, sha256: [u8; 32]) -> Option<FileKey> {
        let key = FileKey::of(&rustix::fs::fstat(file).ok()?);
        self.digests.insert(key, sha256);
        Some(key)
    }
    /// Removes a journaled transfer that cannot be resumed: its temporary file and its entry.
    /// Creates nothing, and touches nothing under a root this star may not write to now.
    pub(crate) fn discard(&self, entry: &Entry) {
        if let Ok(target) = self.jail.confine_target(&entry.command.target_path) {
            if let Ok(Some(dir)) = self.jail.existing_target(&target) {
                dir.remove_part(&entry.part);
            }
        }
        if let Some(journal) = &self.journal {
            journal.remove(entry.command.transfer_id);
        }
    }
}

impl Disk {
    /// Creates the temporary file beside `target` (its parents too), after its journal entry.
    ///
    /// # Errors
    ///
    /// [`PullError::Target`] when the target's directory or temporary file cannot be made.
    pub(crate) fn create(
        store: Store,
        target: &Confined,
        cmd: ReplicateFile,
        upstreams: Option<Vec<orbit_wire::fanout::Upstream>>,
    ) -> Result<Disk, PullError> {
        let target_path = cmd.target_path.clone();
        let dir = store
            .jail
            .prepare_target(target)
            .map_err(|e| target_error(&target_path)(e.to_wire()))?;
        let random = rand::random::<u32>();
        let tag = format!("{}-{random:08x}", cmd.transfer_id);
        let part = crate::journal::part_name(cmd.transfer_id, random);
        let entry = store.journal.as_ref().and_then(|journal| {
            let entry = Entry {
                command: cmd,
                part: part.clone(),
                version: None,
                verified: 0,
                prefix_sha256: hex::encode(Sha256::digest(b"")),
                upstreams,
                pieces: None,
            };
            // Written before the file exists, so that every temporary file has an entry.
            match journal.write(&entry) {
                Ok(()) => Some(entry),
                Err(e) => {
                    tracing::warn!(
                        "cannot journal the transfer, it will not survive a restart: {e}"
                    );
                    None
                }
            }
        });
        let (file, part) = match dir.create_part(&tag) {
            Ok(ok) => ok,
            Err(e) => {
                if let (Some(journal), Some(entry)) = (&store.journal, &entry) {
                    journal.remove(entry.command.transfer_id);
                }
                let e = e.to_wire();
                return Err(target_error(&target_path)(WireError::new(
                    e.code,
                    format!(
                        "cannot create a temporary file beside the target: {}",
                        e.message
                    ),
                )));
            }
        };
        Disk::new(store, dir, part, file, entry, Sha256::new())
    }

    /// Reopens a journaled temporary file and checks its synced prefix against the journal: the
    /// disk then holds those bytes ([`Disk::written`]), or none when they do not check out.
    ///
    /// # Errors
    ///
    /// [`PullError::Target`] when the target's directory cannot be opened; I/O errors.
    pub(crate) fn reopen(store: Store, target: &Confined, entry: Entry) -> Result<Disk, PullError> {
        let dir = store
            .jail
            .prepare_target(target)
            .map_err(|e| target_error(&entry.command.target_path)(e.to_wire()))?;
        let Ok(file) = dir.open_part(&entry.part) else {
            dir.remove_part(&entry.part);
            return Disk::create(store, target, entry.command, entry.upstreams);
        };
        let (verified, part) = (entry.verified, entry.part.clone());
        let (written, prefix) = match check_prefix(&file, verified, &entry.prefix_sha256) {
            Ok(Some(prefix)) => (verified, prefix),
            Ok(None) | Err(_) => {
                tracing::warn!(%part, "the temporary file does not match its journal; starting from zero");
                (0, Sha256::new())
            }
        };
        let mut disk = Disk::new(store, dir, part, file, Some(entry), prefix)?;
        disk.written = written;
        let io = disk_error("resuming into the temporary file");
        disk.file.set_len(disk.written).map_err(&io)?;
        disk.file.seek(SeekFrom::Start(disk.written)).map_err(&io)?;
        Ok(disk)
    }

    /// The disk of `file`, its bytes so far hashing to `prefix`.
    fn new(
        store: Store,
        dir: TargetDir,
        part: String,
        file: File,
        entry: Option<Entry>,
        prefix: Sha256,
    ) -> Result<Disk, PullError> {
        let hashing = Hashing::start(prefix).map_err(disk_error("cannot start hashing"))?;
        Ok(Disk {
            store,
            dir,
            part,
            file,
            entry,
            written: 0,
            hashing,
            reserved: 0,
            size: 0,
            pending: None,
            feed: None,
        })
    }

    /// From now on, tells `feed` what is written, for relay reads: the file to read, how much
    /// of it is written and from which version.
    pub(crate) fn attach_feed(&mut self, feed: tokio::sync::watch::Sender<Feed>) {
        let file = self.file.try_clone().ok().map(Arc::new);
        let written = self.written;
        let version = self.entry.as_ref().and_then(|e| e.version);
        feed.send_modify(|f| {
            f.epoch += 1;
            f.file = file;
            f.written = written;
            f.version = version.filter(|_| written > 0);
        });
        self.feed = Some(feed);
    }

    /// Bytes written so far, in order from byte 0.
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    /// An attempt's bytes begin at `start` of the source's file at `version`: from 0, what the
    /// file holds is dropped. Checks the free space for the rest, reserves ahead and records the
    /// version in the journal before any byte of it is written.
    ///
    /// # Errors
    ///
    /// When `start` is not where the file ends; I/O errors, no space among them.
    pub(crate) fn segment(&mut self, start: u64, version: FileVersion) -> Result<(), PullError> {
        let io = disk_error("writing the temporary file");
        if let Some(feed) = &self.feed {
            // Relay reads learn that the bytes are going before they go.
            let restart = start == 0 && self.written > 0;
            feed.send_modify(|f| {
                if restart || f.version.is_some_and(|v| v != version) {
                    f.epoch += 1;
                }
                f.version = Some(version);
                f.written = start;
            });
        }
        let restart = start == 0 && self.written > 0;
        if restart {
            self.file.set_len(0).map_err(&io)?;
            self.file.seek(SeekFrom::Start(0)).map_err(&io)?;
            self.written = 0;
        }
        if start != self.written {
            return Err(PullError::Internal(format!(
                "an attempt starts at {start}, but {} bytes are written",
                self.written
            )));
        }
        self.hashing.attempt(restart, self.written > 0)?;
        self.dir
            .check_space(&self.file, version.size.saturating_sub(self.written))
            .map_err(&io)?;
        self.size = version.size;
        self.reserved = self.written;
        self.reserve_ahead().map_err(&io)?;
        if let Some(entry) = &mut self.entry {
            entry.version = Some(version);
        }
        self.checkpoint().map_err(&io)
    }

    /// Writes the next bytes, and hands them to the hashing thread.
    ///
    /// # Errors
    ///
    /// I/O errors, no space among them.
    pub(crate) fn write(&mut self, data: Payload) -> Result<(), PullError> {
        let io = disk_error("writing the temporary file");
        write_all_pieces(&mut self.file, data.pieces()).map_err(&io)?;
        self.written += data.len() as u64;
        self.hashing.update(data)?;
        if let Some(feed) = &self.feed {
            let written = self.written;
            feed.send_modify(|f| f.written = written);
        }
        if self.written + RESERVE_AHEAD / 2 > self.reserved {
            self.reserve_ahead().map_err(&io)?;
        }
        Ok(())
    }

    /// Syncs the bytes written so far and records them in the journal, now.
    pub(crate) fn checkpoint(&mut self) -> std::io::Result<()> {
        self.checkpoint_behind()?;
        self.settle()
    }

    /// Starts a checkpoint of the bytes written so far on another thread: the data is synced
    /// and the journal records it there, while this thread goes on writing what follows. A
    /// checkpoint waited for inline stopped the transfer for the length of each fdatasync.
    /// At most one is in flight; a disk slower than the network makes the next one wait.
    ///
    /// # Errors
    ///
    /// The previous checkpoint's failure, or a thread that cannot start.
    pub(crate) fn checkpoint_behind(&mut self) -> std::io::Result<()> {
        self.settle()?;
        let (Some(journal), Some(entry)) = (self.store.journal.clone(), &mut self.entry) else {
            return Ok(());
        };
        entry.verified = self.written;
        let digests = self
            .hashing
            .digests_later()
            .map_err(std::io::Error::other)?;
        let mut entry = entry.clone();
        let file = self.file.try_clone()?;
        let sync = move || {
            // Everything up to `entry.verified` was written, and given to the hashing thread,
            // before this call.
            let Digests { whole, .. } =
                digests.recv().map_err(|_| std::io::Error::other(Stopped))?;
            entry.prefix_sha256 = hex::encode(whole);
            file.sync_data()?;
            journal.write(&entry)
        };
        self.pending = Some(
            std::thread::Builder::new()
                .name("orbit-checkpoint".into())
                .spawn(sync)?,
        );
        Ok(())
    }

    /// Waits for the checkpoint in flight, if any, and returns its outcome.
    fn settle(&mut self) -> std::io::Result<()> {
        match self.pending.take() {
            Some(handle) => handle
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the checkpoint thread panicked"))),
            None => Ok(()),
        }
    }

    /// Reserves the blocks from what is reserved to [`RESERVE_AHEAD`] past what is written.
    fn reserve_ahead(&mut self) -> std::io::Result<()> {
        let to = self.size.min(self.written + RESERVE_AHEAD);
        if to > self.reserved {
            self.dir
                .reserve(&self.file, self.reserved, to - self.reserved)?;
            self.reserved = to;
        }
        Ok(())
    }

    /// Every byte has arrived: checks the size and the digests, syncs, publishes atomically over
    /// the target, and removes the journal entry. Returns the file's SHA-256.
    ///
    /// # Errors
    ///
    /// [`PullError::Mismatch`] or `DataLoss` when the size or a digest differs; I/O errors.
    /// The temporary file stays until [`Disk::abandon`].
    pub(crate) fn commit(&mut self, commit: Commit) -> Result<[u8; 32], PullError> {
        let Commit {
            size,
            trailer,
            expect,
            mode,
        } = commit;
        if self.written != size {
            return Err(PullError::Disk(Local(WireError::new(
                ErrorCode::DataLoss,
                format!("wrote {} of {size} bytes", self.written),
            ))));
        }
        let Digests {
            whole: sha256,
            segment,
        } = self.hashing.digests()?;
        let segment = segment.unwrap_or(sha256);
        if segment != trailer {
            return Err(PullError::Mismatch(format!(
                "received data hashes to {}, the source sent {}",
                hex::encode(segment),
                hex::encode(trailer)
            )));
        }
        if let Some(expect) = expect.filter(|e| *e != sha256) {
            return Err(PullError::Mismatch(format!(
                "the file's SHA-256 is {}, expected {}",
                hex::encode(sha256),
                hex::encode(expect)
            )));
        }
        let io = disk_error("writing the temporary file");
        self.settle().map_err(&io)?;
        self.file.sync_all().map_err(&io)?;
        self.dir
            .publish(&self.part, &self.file, mode)
            .map_err(disk_error("cannot publish the file"))?;
        let published = self.store.remember(&self.file, sha256);
        if let Some(feed) = &self.feed {
            // What the file is once published, for the relay reads that come after the
            // transfer ends and the feed lets go of its handle.
            feed.send_modify(|f| f.published = published);
        }
        self.forget();
        Ok(sha256)
    }

    /// Stops without publishing. With `keep` (and a journal entry), syncs and journals what is
    /// written so that the next start resumes from it; otherwise, or if that fails, removes the
    /// temporary file and its entry.
    pub(crate) fn abandon(mut self, keep: bool) {
        if keep && self.entry.is_some() {
            match self.checkpoint() {
                Ok(()) => return,
                Err(e) => tracing::warn!("cannot checkpoint the transfer for a resume: {e}"),
            }
        }
        // A checkpoint still in flight would write the journal entry after its removal.
        let _ = self.settle();
        self.dir.remove_part(&self.part);
        self.forget();
    }

    /// Removes the journal entry.
    fn forget(&mut self) {
        if let (Some(journal), Some(entry)) = (&self.store.journal, self.entry.take()) {
            journal.remove(entry.command.transfer_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    struct World {
        _tmp: tempfile::TempDir,
        root: std::path::PathBuf,
        store: Store,
        journal: Arc<Journal>,
    }

    fn world() -> World {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let jail = Arc::new(Jail::open(std::slice::from_ref(&root), &[]).unwrap());
        let journal = Arc::new(Journal::open(&tmp.path().join("state")).unwrap());
        let store = Store {
            jail,
            journal: Some(journal.clone()),
            digests: Arc::default(),
        };
        World {
            _tmp: tmp,
            root,
            store,
            journal,
        }
    }

    fn cmd(root: &Path, name: &str) -> ReplicateFile {
        ReplicateFile {
            transfer_id: orbit_wire::TransferId(0x42),
            source: "star-a".into(),
            source_addr: "127.0.0.1:1".into(),
            source_path: "/s".into(),
            target_path: root.join(name).display().to_string(),
            token: String::new(),
            expect_sha256: None,
            timeout_secs: 0,
        }
    }

    fn version(size: u64) -> FileVersion {
        FileVersion {
            size,
            mtime_sec: 1,
            mtime_nsec: 0,
            inode: 2,
        }
    }

    fn payload(bytes: &[u8]) -> Payload {
        let mut p = Payload::default();
        p.push(bytes::Bytes::copy_from_slice(bytes));
        p
    }

    /// The names in `dir` other than `keep`.
    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    fn open(w: &World, name: &str) -> (Disk, ReplicateFile) {
        let cmd = cmd(&w.root, name);
        let target = w.store.jail.confine_target(&cmd.target_path).unwrap();
        (
            Disk::create(w.store.clone(), &target, cmd.clone(), None).unwrap(),
            cmd,
        )
    }

    #[test]
    fn a_commit_verifies_publishes_and_leaves_nothing_behind() {
        let w = world();
        let (mut disk, _) = open(&w, "sub/out");
        let data = b"hello, orbit";
        disk.segment(0, version(data.len() as u64)).unwrap();
        assert_eq!(w.journal.entries().len(), 1, "journaled before a byte");
        disk.write(payload(&data[..5])).unwrap();
        disk.write(payload(&data[5..])).unwrap();
        let sha: [u8; 32] = Sha256::digest(data).into();
        let commit = Commit {
            size: data.len() as u64,
            trailer: sha,
            expect: Some(sha),
            mode: None,
        };
        assert_eq!(disk.commit(commit).unwrap(), sha);
        assert_eq!(std::fs::read(w.root.join("sub/out")).unwrap(), data);
        assert_eq!(leftovers(&w.root.join("sub")), vec!["out"]);
        assert!(w.journal.entries().is_empty());
    }

    #[test]
    fn a_wrong_digest_or_size_publishes_nothing_and_abandon_cleans_up() {
        let w = world();
        let (mut disk, _) = open(&w, "out");
        disk.segment(0, version(3)).unwrap();
        disk.write(payload(b"abc")).unwrap();
        let wrong = Commit {
            size: 3,
            trailer: [0; 32],
            expect: None,
            mode: None,
        };
        let error = disk.commit(wrong).unwrap_err();
        assert_eq!(error.code(), ErrorCode::DataLoss);
        assert!(
            error.to_string().starts_with("checksum mismatch"),
            "{error}"
        );
        let short = Commit {
            size: 4,
            trailer: Sha256::digest(b"abc").into(),
            expect: None,
            mode: None,
        };
        assert_eq!(disk.commit(short).unwrap_err().code(), ErrorCode::DataLoss);
        let expected_other = Commit {
            size: 3,
            trailer: Sha256::digest(b"abc").into(),
            expect: Some([1; 32]),
            mode: None,
        };
        assert!(disk.commit(expected_other).is_err());
        assert!(!w.root.join("out").exists());
        disk.abandon(false);
        assert!(leftovers(&w.root).is_empty(), "{:?}", leftovers(&w.root));
        assert!(w.journal.entries().is_empty());
    }

    #[test]
    fn a_kept_transfer_resumes_from_its_checkpoint_and_a_tampered_one_from_zero() {
        let w = world();
        let (mut disk, _) = open(&w, "out");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        disk.segment(0, version(data.len() as u64)).unwrap();
        disk.write(payload(&data[..120_000])).unwrap();
        disk.abandon(true);
        let entries = w.journal.entries();
        assert_eq!(entries.len(), 1);
        assert_eq!(
            entries[0].verified, 120_000,
            "a kept transfer is checkpointed"
        );

        // Resume: the prefix checks out, and the rest completes the file.
        let entry = entries[0].clone();
        let target = w
            .store
            .jail
            .confine_target(&entry.command.target_path)
            .unwrap();
        let mut disk = Disk::reopen(w.store.clone(), &target, entry.clone()).unwrap();
        assert_eq!(disk.written(), 120_000);
        disk.segment(120_000, version(data.len() as u64)).unwrap();
        disk.write(payload(&data[120_000..])).unwrap();
        let commit = Commit {
            size: data.len() as u64,
            trailer: Sha256::digest(&data[120_000..]).into(),
            expect: Some(Sha256::digest(&data).into()),
            mode: None,
        };
        disk.commit(commit).unwrap();
        assert_eq!(std::fs::read(w.root.join("out")).unwrap(), data);

        // A temporary file changed behind the journal's back is not trusted.
        let (mut disk, _) = open(&w, "again");
        disk.segment(0, version(10)).unwrap();
        disk.write(payload(b"0123456789")).unwrap();
        disk.abandon(true);
        let entry = w.journal.entries().remove(0);
        let part = w.root.join(&entry.part);
        std::fs::write(&part, b"XXXXXXXXXX").unwrap();
        let target = w
            .store
            .jail
            .confine_target(&entry.command.target_path)
            .unwrap();
        let disk = Disk::reopen(w.store.clone(), &target, entry).unwrap();
        assert_eq!(disk.written(), 0);
        assert_eq!(std::fs::metadata(&part).unwrap().len(), 0);
        disk.abandon(false);
        assert!(!part.exists());
        assert!(w.journal.entries().is_empty());
    }

    #[test]
    fn a_segment_from_zero_drops_what_was_written() {
        let w = world();
        let (mut disk, _) = open(&w, "out");
        disk.segment(0, version(6)).unwrap();
        disk.write(payload(b"old")).unwrap();
        assert!(disk.segment(2, version(6)).is_err(), "a gap is refused");
        disk.segment(0, version(3)).unwrap();
        disk.write(payload(b"new")).unwrap();
        let sha: [u8; 32] = Sha256::digest(b"new").into();
        disk.commit(Commit {
            size: 3,
            trailer: sha,
            expect: None,
            mode: None,
        })
        .unwrap();
        assert_eq!(std::fs::read(w.root.join("out")).unwrap(), b"new");
    }

    #[test]
    fn a_discarded_entry_leaves_neither_file_nor_entry() {
        let w = world();
        let (mut disk, _) = open(&w, "out");
        disk.segment(0, version(4)).unwrap();
        disk.write(payload(b"abcd")).unwrap();
        disk.abandon(true);
        let entry = w.journal.entries().remove(0);
        w.store.discard(&entry);
        assert!(leftovers(&w.root).is_empty());
        assert!(w.journal.entries().is_empty());
    }
}
