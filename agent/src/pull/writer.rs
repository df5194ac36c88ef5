//! The destination's disk side of one replication, on a blocking thread: the temporary file
//! beside the target, the SHA-256 of the whole file and of the current attempt's bytes, the
//! journal's checkpoints, and at the end verification and the atomic publish.
//!
//! It never writes at the target path itself, and it removes the temporary file and its journal
//! entry on every failure, unless told to keep them for a resume.

use std::fs::File;
use std::io::{IoSlice, Read, Seek, SeekFrom, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use orbit_wire::{ErrorCode, FileVersion, ReplicateFile, WireError};

use crate::error::ToWire;
use crate::framed::Payload;
use crate::jail::{Confined, TargetDir};
use crate::journal::Entry;
use crate::star::Shared;

/// Chunks buffered between the network and the disk: 16 × 64 KiB = 1 MiB per transfer.
const WRITE_BEHIND: usize = 16;
/// How many bytes are written between two journal checkpoints (an fdatasync and a journal
/// update): what a crash of this star costs at most, in bytes to fetch again.
const CHECKPOINT: u64 = 32 * 1024 * 1024;
/// How far ahead of the writes the file's blocks are reserved. Step by step rather than the whole
/// file at once: on tmpfs a reservation allocates the memory pages, about 0.4 s per GiB here, and
/// the whole file's at the start would stall the transfer for that long with the window full
/// (bench/RESULTS.md). The free space for the whole file is checked at the start all the same.
const RESERVE_AHEAD: u64 = 64 * 1024 * 1024;

/// What the writer thread is told.
pub(super) enum WriteMsg {
    /// An attempt begins at `start` (the bytes written so far, or 0 to start again) with the
    /// source's file at `version`.
    Segment { start: u64, version: FileVersion },
    /// The next bytes, in the pieces they arrived in.
    Data(Payload),
}

/// The end of the transfer, sent apart from the data so it cannot be confused with it.
struct Commit {
    size: u64,
    trailer: [u8; 32],
    expect: Option<[u8; 32]>,
}

enum Msg {
    Write(WriteMsg),
    Commit(Commit),
}

/// The handle on the writer thread.
pub(super) struct Writer {
    tx: Option<mpsc::Sender<Msg>>,
    handle: Option<JoinHandle<Result<[u8; 32], WireError>>>,
    keep: Arc<AtomicBool>,
    failed: Option<WireError>,
}

impl Writer {
    /// Creates the temporary file beside the target (its parents too), after its journal entry.
    ///
    /// # Errors
    ///
    /// Why the target cannot be written.
    pub(super) async fn create(
        shared: &Arc<Shared>,
        target: &Confined,
        cmd: &ReplicateFile,
    ) -> Result<Writer, WireError> {
        let owner = shared.clone();
        let target = target.clone();
        let cmd = cmd.clone();
        let disk = tokio::task::spawn_blocking(move || Disk::create(owner, &target, cmd))
            .await
            .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))??;
        Ok(Writer::start(disk))
    }

    /// Reopens a journaled temporary file and checks its synced prefix against the journal.
    /// Returns the writer and the offset to resume from (0 when the prefix does not check out).
    ///
    /// # Errors
    ///
    /// Why the target cannot be written.
    pub(super) async fn resume(
        shared: &Arc<Shared>,
        target: &Confined,
        entry: Entry,
    ) -> Result<(Writer, u64), WireError> {
        let owner = shared.clone();
        let target = target.clone();
        let disk = tokio::task::spawn_blocking(move || Disk::reopen(owner, &target, entry))
            .await
            .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))??;
        let offset = disk.written;
        Ok((Writer::start(disk), offset))
    }

    fn start(disk: Disk) -> Writer {
        let (tx, rx) = mpsc::channel(WRITE_BEHIND);
        let keep = Arc::new(AtomicBool::new(false));
        let keep2 = keep.clone();
        let handle = tokio::task::spawn_blocking(move || disk.run(rx, &keep2));
        Writer {
            tx: Some(tx),
            handle: Some(handle),
            keep,
            failed: None,
        }
    }

    /// Hands `msg` to the writer; `false` when the writer has failed (see [`Writer::failure`]).
    pub(super) async fn send(&mut self, msg: WriteMsg) -> bool {
        match &self.tx {
            Some(tx) => tx.send(Msg::Write(msg)).await.is_ok(),
            None => false,
        }
    }

    /// The writer's own error, once [`Writer::send`] has returned `false`.
    pub(super) async fn failure(&mut self) -> WireError {
        self.tx = None;
        if let Some(handle) = self.handle.take() {
            self.failed = Some(match handle.await {
                Ok(Err(e)) => e,
                Ok(Ok(_)) => WireError::new(ErrorCode::Internal, "the writer stopped"),
                Err(e) => WireError::new(ErrorCode::Internal, e.to_string()),
            });
        }
        self.failed
            .clone()
            .unwrap_or_else(|| WireError::new(ErrorCode::Internal, "the writer stopped"))
    }

    /// Every byte has arrived: verify, sync, publish. Returns the file's SHA-256.
    ///
    /// # Errors
    ///
    /// `DataLoss` when the size or a digest differs; I/O errors.
    pub(super) async fn commit(
        mut self,
        size: u64,
        trailer: [u8; 32],
        expect: Option<[u8; 32]>,
    ) -> Result<[u8; 32], WireError> {
        let commit = Commit {
            size,
            trailer,
            expect,
        };
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Msg::Commit(commit)).await;
        }
        match self.handle.take() {
            Some(handle) => handle
                .await
                .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))?,
            None => Err(self
                .failed
                .unwrap_or_else(|| WireError::new(ErrorCode::Internal, "the writer stopped"))),
        }
    }

    /// Stops the writer without publishing. With `keep`, the temporary file and its journal
    /// entry stay for a resume; otherwise both are removed. Returns the writer's own error if it
    /// had failed on its own (a full disk, say), which is then the cause to report.
    pub(super) async fn abandon(mut self, keep: bool) -> Option<WireError> {
        self.keep.store(keep, Ordering::Relaxed);
        self.tx = None;
        let own = match self.handle.take() {
            Some(handle) => match handle.await {
                Ok(Err(e)) => Some(e),
                _ => None,
            },
            None => self.failed.take(),
        };
        own.filter(|e| e.code != ErrorCode::Cancelled)
    }
}

/// The writer thread's state.
struct Disk {
    shared: Arc<Shared>,
    dir: TargetDir,
    part: String,
    file: File,
    /// The journal entry, when the star keeps a journal.
    entry: Option<Entry>,
    written: u64,
    /// The digest of the whole file so far.
    whole: Sha256,
    /// The digest of this attempt's bytes, which the source's trailer covers, when the attempt
    /// resumed past byte 0; from byte 0 it equals `whole`, and hashing twice would cost a third
    /// of the transfer's CPU.
    segment: Option<Sha256>,
    since_checkpoint: u64,
    /// The file's blocks are reserved up to this offset (see [`RESERVE_AHEAD`]).
    reserved: u64,
    /// Its size, when this attempt's header has said it.
    size: u64,
    /// The checkpoint being synced on its own thread while this one goes on writing.
    pending: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

/// Writes all of `pieces`, in order, with as few system calls as the file takes.
fn write_all_pieces(file: &mut File, pieces: &[bytes::Bytes]) -> std::io::Result<()> {
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

fn io_error(what: &str) -> impl Fn(std::io::Error) -> WireError + '_ {
    move |e| {
        let e = e.to_wire();
        WireError::new(e.code, format!("{what}: {}", e.message))
    }
}

impl Disk {
    fn create(
        shared: Arc<Shared>,
        target: &Confined,
        cmd: ReplicateFile,
    ) -> Result<Disk, WireError> {
        let dir = shared
            .jail
            .prepare_target(target)
            .map_err(|e| e.to_wire())?;
        let tag = format!("{}-{:08x}", cmd.transfer_id, rand::random::<u32>());
        let part = format!(".orbit-{tag}.part");
        let entry = shared.journal.as_ref().and_then(|journal| {
            let entry = Entry {
                command: cmd,
                part: part.clone(),
                version: None,
                verified: 0,
                prefix_sha256: hex::encode(Sha256::digest(b"")),
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
        let created = dir.create_part(&tag);
        let (file, part) = match created {
            Ok(ok) => ok,
            Err(e) => {
                if let (Some(journal), Some(entry)) = (&shared.journal, &entry) {
                    journal.remove(entry.command.transfer_id);
                }
                return Err(io_error("cannot create a temporary file beside the target")(e));
            }
        };
        Ok(Disk {
            shared,
            dir,
            part,
            file,
            entry,
            written: 0,
            whole: Sha256::new(),
            segment: None,
            since_checkpoint: 0,
            reserved: 0,
            size: 0,
            pending: None,
        })
    }

    fn reopen(shared: Arc<Shared>, target: &Confined, entry: Entry) -> Result<Disk, WireError> {
        let dir = shared
            .jail
            .prepare_target(target)
            .map_err(|e| e.to_wire())?;
        let Ok(file) = dir.open_part(&entry.part) else {
            dir.remove_part(&entry.part);
            return Disk::create(shared, target, entry.command);
        };
        let mut disk = Disk {
            shared,
            dir,
            part: entry.part.clone(),
            file,
            entry: Some(entry.clone()),
            written: 0,
            whole: Sha256::new(),
            segment: None,
            since_checkpoint: 0,
            reserved: 0,
            size: 0,
            pending: None,
        };
        let good = disk.check_prefix(entry.verified, &entry.prefix_sha256);
        let io = io_error("resuming into the temporary file");
        match good {
            Ok(true) => disk.written = entry.verified,
            Ok(false) | Err(_) => {
                tracing::warn!(part = %entry.part, "the temporary file does not match its journal; starting from zero");
                disk.whole = Sha256::new();
            }
        }
        disk.file.set_len(disk.written).map_err(&io)?;
        disk.file.seek(SeekFrom::Start(disk.written)).map_err(&io)?;
        Ok(disk)
    }

    /// Hashes the first `len` bytes into `self.whole` and compares them with the journal's digest.
    fn check_prefix(&mut self, len: u64, expect: &str) -> std::io::Result<bool> {
        if self.file.metadata()?.len() < len {
            return Ok(false);
        }
        self.file.seek(SeekFrom::Start(0))?;
        let mut left = len;
        let mut buf = vec![0u8; 1024 * 1024];
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            self.file.read_exact(&mut buf[..want])?;
            self.whole.update(&buf[..want]);
            left -= want as u64;
        }
        Ok(hex::encode(self.whole.clone().finalize()) == expect)
    }

    fn run(
        mut self,
        mut rx: mpsc::Receiver<Msg>,
        keep: &AtomicBool,
    ) -> Result<[u8; 32], WireError> {
        let result = self.receive(&mut rx);
        match &result {
            Ok(_) => {}
            Err(e)
                if e.code == ErrorCode::Cancelled
                    && keep.load(Ordering::Relaxed)
                    && self.entry.is_some() =>
            {
                if let Err(e) = self.checkpoint() {
                    tracing::warn!("cannot checkpoint the transfer for a resume: {e}");
                    self.remove();
                }
            }
            Err(_) => self.remove(),
        }
        result
    }

    fn remove(&mut self) {
        // A checkpoint still in flight would write the journal entry after its removal.
        let _ = self.settle();
        self.dir.remove_part(&self.part);
        if let (Some(journal), Some(entry)) = (&self.shared.journal, &self.entry) {
            journal.remove(entry.command.transfer_id);
        }
    }

    /// Syncs the bytes written so far and records them in the journal, now.
    fn checkpoint(&mut self) -> std::io::Result<()> {
        self.checkpoint_behind()?;
        self.settle()
    }

    /// Starts a checkpoint of the bytes written so far on another thread: the data is synced
    /// and the journal records it there, while this thread goes on writing what follows. A
    /// checkpoint waited for inline stopped the transfer for the length of each fdatasync.
    /// At most one is in flight; a disk slower than the network makes the next one wait.
    fn checkpoint_behind(&mut self) -> std::io::Result<()> {
        self.since_checkpoint = 0;
        self.settle()?;
        if self.shared.journal.is_none() {
            return Ok(());
        }
        let Some(entry) = &mut self.entry else {
            return Ok(());
        };
        entry.verified = self.written;
        entry.prefix_sha256 = hex::encode(self.whole.clone().finalize());
        let entry = entry.clone();
        let file = self.file.try_clone()?;
        let shared = self.shared.clone();
        let sync = move || {
            // Everything up to `entry.verified` was written before this call.
            file.sync_data()?;
            match &shared.journal {
                Some(journal) => journal.write(&entry),
                None => Ok(()),
            }
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

    fn receive(&mut self, rx: &mut mpsc::Receiver<Msg>) -> Result<[u8; 32], WireError> {
        let io = io_error("writing the temporary file");
        while let Some(msg) = rx.blocking_recv() {
            match msg {
                Msg::Write(WriteMsg::Segment { start, version }) => {
                    if start == 0 && self.written > 0 {
                        self.file.set_len(0).map_err(&io)?;
                        self.file.seek(SeekFrom::Start(0)).map_err(&io)?;
                        self.whole = Sha256::new();
                        self.written = 0;
                    }
                    if start != self.written {
                        return Err(WireError::new(
                            ErrorCode::Internal,
                            format!(
                                "an attempt starts at {start}, but {} bytes are written",
                                self.written
                            ),
                        ));
                    }
                    self.segment = (self.written > 0).then(Sha256::new);
                    self.dir
                        .check_space(&self.file, version.size.saturating_sub(self.written))
                        .map_err(&io)?;
                    self.size = version.size;
                    self.reserved = self.written;
                    self.reserve_ahead().map_err(&io)?;
                    if let Some(entry) = &mut self.entry {
                        entry.version = Some(version);
                    }
                    self.checkpoint().map_err(&io)?;
                }
                Msg::Write(WriteMsg::Data(data)) => {
                    for piece in data.pieces() {
                        self.whole.update(piece);
                        if let Some(segment) = &mut self.segment {
                            segment.update(piece);
                        }
                    }
                    write_all_pieces(&mut self.file, data.pieces()).map_err(&io)?;
                    self.written += data.len() as u64;
                    if self.written + RESERVE_AHEAD / 2 > self.reserved {
                        self.reserve_ahead().map_err(&io)?;
                    }
                    self.since_checkpoint += data.len() as u64;
                    if self.since_checkpoint >= CHECKPOINT {
                        self.checkpoint_behind().map_err(&io)?;
                    }
                }
                Msg::Commit(commit) => return self.commit(commit),
            }
        }
        Err(WireError::new(
            ErrorCode::Cancelled,
            "the transfer stopped before the end",
        ))
    }

    fn commit(&mut self, commit: Commit) -> Result<[u8; 32], WireError> {
        let Commit {
            size,
            trailer,
            expect,
        } = commit;
        if self.written != size {
            return Err(WireError::new(
                ErrorCode::DataLoss,
                format!("wrote {} of {size} bytes", self.written),
            ));
        }
        let segment: [u8; 32] = match self.segment.take() {
            Some(segment) => segment.finalize().into(),
            None => self.whole.clone().finalize().into(),
        };
        if segment != trailer {
            return Err(WireError::new(
                ErrorCode::DataLoss,
                format!(
                    "checksum mismatch: received data hashes to {}, the source sent {}",
                    hex::encode(segment),
                    hex::encode(trailer)
                ),
            ));
        }
        let sha256: [u8; 32] = self.whole.clone().finalize().into();
        if let Some(expect) = expect.filter(|e| *e != sha256) {
            return Err(WireError::new(
                ErrorCode::DataLoss,
                format!(
                    "checksum mismatch: the file's SHA-256 is {}, expected {}",
                    hex::encode(sha256),
                    hex::encode(expect)
                ),
            ));
        }
        self.settle()
            .map_err(io_error("writing the temporary file"))?;
        self.file
            .sync_all()
            .map_err(io_error("writing the temporary file"))?;
        self.dir
            .publish(&self.part)
            .map_err(io_error("cannot publish the file"))?;
        if let (Some(journal), Some(entry)) = (&self.shared.journal, &self.entry) {
            journal.remove(entry.command.transfer_id);
        }
        Ok(sha256)
    }
}
