//! The async handle on one replication's [`Disk`]: the disk runs on a blocking thread of its
//! own, fed through a bounded channel, so that the network side never waits on a write, a hash
//! or an fsync, and memory per transfer stays at [`WRITE_BEHIND`] chunks whatever the file size.

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use orbit_wire::ReplicateFile;

use super::disk::{Commit, Disk, Store};
use super::error::{Local, PullError};
use super::Fanout;
use crate::error::ToWire;
use crate::framed::Payload;
use crate::jail::Confined;
use crate::journal::Entry;

/// Chunks buffered between the network and the disk: 16 × 64 KiB = 1 MiB per transfer.
const WRITE_BEHIND: usize = 16;

/// What the disk thread is told, in order.
#[derive(Debug)]
pub(super) enum WriteMsg {
    /// An attempt begins at `start` (the bytes written so far, or 0 to start again) with the
    /// source's file at `version`.
    Segment {
        start: u64,
        version: orbit_wire::FileVersion,
    },
    /// The next bytes, in the pieces they arrived in.
    Data(Payload),
    /// Sync and journal what is written so far, without waiting for it.
    Checkpoint,
}

enum Msg {
    Write(WriteMsg),
    Commit(Commit),
}

/// The handle on the disk thread.
pub(super) struct Writer {
    tx: Option<mpsc::Sender<Msg>>,
    handle: Option<JoinHandle<Result<[u8; 32], PullError>>>,
    keep: std::sync::Arc<std::sync::atomic::AtomicBool>,
    failed: Option<PullError>,
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, PullError> + Send + 'static,
) -> Result<T, PullError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| PullError::Internal(format!("the disk task failed: {e}")))?
}

impl Writer {
    /// Creates the temporary file beside the target (its parents too), after its journal entry.
    ///
    /// # Errors
    ///
    /// Why the target cannot be written.
    pub(super) async fn create(
        store: &Store,
        target: &Confined,
        cmd: &ReplicateFile,
        fanout: Option<&Fanout>,
    ) -> Result<Writer, PullError> {
        let (store, target, cmd) = (store.clone(), target.clone(), cmd.clone());
        let upstreams = fanout.map(|f| f.upstreams.clone());
        let feed = fanout.map(|f| f.feed.clone());
        let disk = blocking(move || {
            let mut disk = Disk::create(store, &target, cmd, upstreams)?;
            if let Some(feed) = feed {
                disk.attach_feed(feed);
            }
            Ok(disk)
        })
        .await?;
        Ok(Writer::start(disk))
    }

    /// Reopens a journaled temporary file and checks its synced prefix against the journal.
    /// Returns the writer and the bytes it holds (0 when the prefix does not check out).
    ///
    /// # Errors
    ///
    /// Why the target cannot be written.
    pub(super) async fn resume(
        store: &Store,
        target: &Confined,
        entry: Entry,
        fanout: Option<&Fanout>,
    ) -> Result<(Writer, u64), PullError> {
        let (store, target) = (store.clone(), target.clone());
        let feed = fanout.map(|f| f.feed.clone());
        let disk = blocking(move || {
            let mut disk = Disk::reopen(store, &target, entry)?;
            if let Some(feed) = feed {
                disk.attach_feed(feed);
            }
            Ok(disk)
        })
        .await?;
        let offset = disk.written();
        Ok((Writer::start(disk), offset))
    }

    fn start(disk: Disk) -> Writer {
        let (tx, rx) = mpsc::channel(WRITE_BEHIND);
        let keep = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let kept = keep.clone();
        let handle = tokio::task::spawn_blocking(move || run(disk, rx, &kept));
        Writer {
            tx: Some(tx),
            handle: Some(handle),
            keep,
            failed: None,
        }
    }

    /// Hands `msg` to the disk. Cancel-safe in the sense that a dropped call sends nothing.
    ///
    /// # Errors
    ///
    /// The disk's own failure, once it has failed (a full disk, say).
    pub(super) async fn send(&mut self, msg: WriteMsg) -> Result<(), PullError> {
        if let Some(tx) = &self.tx {
            if tx.send(Msg::Write(msg)).await.is_ok() {
                return Ok(());
            }
        }
        Err(self.failure().await)
    }

    /// The disk's own error, once a send failed.
    async fn failure(&mut self) -> PullError {
        self.tx = None;
        if let Some(handle) = self.handle.take() {
            self.failed = Some(match handle.await {
                Ok(Err(e)) => e,
                Ok(Ok(_)) => PullError::Internal("the disk stopped".into()),
                Err(e) => PullError::Internal(format!("the disk task failed: {e}")),
            });
        }
        self.failed
            .clone()
            .unwrap_or_else(|| PullError::Internal("the disk stopped".into()))
    }

    /// Every byte has arrived: verify, sync, publish. Returns the file's SHA-256. On failure
    /// the temporary file and its entry are removed.
    ///
    /// # Errors
    ///
    /// [`PullError::Mismatch`] when a digest differs; size and I/O errors.
    pub(super) async fn commit(mut self, commit: Commit) -> Result<[u8; 32], PullError> {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Msg::Commit(commit)).await;
        }
        match self.handle.take() {
            Some(handle) => handle
                .await
                .map_err(|e| PullError::Internal(format!("the disk task failed: {e}")))?,
            None => Err(self
                .failed
                .unwrap_or_else(|| PullError::Internal("the disk stopped".into()))),
        }
    }

    /// Stops the disk without publishing. With `keep`, the temporary file and its journal entry
    /// stay for a resume; otherwise both are removed. Returns the disk's own error if it had
    /// failed on its own (a full disk, say), which is then the cause to report.
    pub(super) async fn abandon(mut self, keep: bool) -> Option<PullError> {
        self.keep.store(keep, std::sync::atomic::Ordering::Relaxed);
        self.tx = None;
        let own = match self.handle.take() {
            Some(handle) => match handle.await {
                Ok(Err(e)) => Some(e),
                _ => None,
            },
            None => self.failed.take(),
        };
        own.filter(|e| *e != PullError::Cancelled)
    }
}

/// The disk thread: applies messages in order until a commit, a failure, or the handle going
/// away (then the disk is abandoned, kept if the handle said so).
fn run(
    mut disk: Disk,
    mut rx: mpsc::Receiver<Msg>,
    keep: &std::sync::atomic::AtomicBool,
) -> Result<[u8; 32], PullError> {
    let result = loop {
        let Some(msg) = rx.blocking_recv() else {
            break Err(PullError::Cancelled);
        };
        let step = match msg {
            Msg::Write(WriteMsg::Segment { start, version }) => disk.segment(start, version),
            Msg::Write(WriteMsg::Data(data)) => disk.write(data),
            Msg::Write(WriteMsg::Checkpoint) => disk
                .checkpoint_behind()
                .map_err(|e| PullError::Disk(Local(e.to_wire()))),
            Msg::Commit(commit) => break disk.commit(commit),
        };
        if let Err(e) = step {
            break Err(e);
        }
    };
    match &result {
        Ok(_) => {}
        Err(PullError::Cancelled) => disk.abandon(keep.load(std::sync::atomic::Ordering::Relaxed)),
        Err(_) => disk.abandon(false),
    }
    result
}
