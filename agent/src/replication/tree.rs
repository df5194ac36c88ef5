//! A tree replication, destination side: the source's listing streams in, each entry is
//! compared with what the target holds, and the files to copy are fetched many to a stream,
//! several streams at once, while the listing goes on.
//!
//! | step | file | where |
//! |---|---|---|
//! | the listing, one stream | `tree.rs` | [`replicate`] and [`walk`] read `ListFrame`s; [`plan::plan`] decides each entry (blocking) |
//! | directories and links | `tree/plan.rs` | made by [`plan::plan`] at once, one level at a time beneath the target's handle |
//! | files | `tree.rs`, `tree/fetch.rs`, `tree/write.rs` | batched by [`Batcher`], fetched by [`fetch::Fetches`] on [`FETCH_STREAMS`] streams; written, verified and published by [`write::write_batch`] (blocking) |
//! | after the last file | `tree/delete.rs` | directory modes and times ([`delete::finish_dirs`]), then `--delete` ([`delete::delete`]) |
//!
//! Every name is checked (`orbit_wire::tree::check_name`) before it is used, and everything is
//! opened beneath the target directory's handle through no symbolic link
//! ([`crate::jail::open_in_tree`]). A file is published only after its size and SHA-256 match
//! the source's trailer: written to a temporary file beside it, fsynced with the rest of its
//! batch, renamed over the target, and each directory touched is fsynced once per batch. A
//! target path holds its old file or the verified new one, never a partial one.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::fs::{OFlags, Timespec};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use orbit_wire::token;
use orbit_wire::tree::{
    self, EntryKind, FailedFile, Item, ItemAction, ListFrame, ListRequest, ReplicateTree,
    SyncLevel, TreeProgress, TreeSummary, MAX_FAILED_NAMED,
};
use orbit_wire::{ControlEvent, ControlRequest, ErrorCode, WireError};

use super::error::PullError;
use super::machine::{backoff, DEFAULT_TIMEOUT};
use super::registry::Transfer;
use super::Replicator;
use crate::error::ToWire;
use crate::framed::{self, write_frame};
use crate::jail::{not_protected, open_in_tree, Confined, JailError, Protected};
use crate::pool::{PeerConn, Pool};

mod delete;
mod fetch;
mod plan;
mod write;

use self::delete::{delete, finish_dirs};
use self::fetch::Fetches;
use self::plan::{plan, Decision};

/// Fetch streams in flight at once.
const FETCH_STREAMS: usize = 4;
/// A fetch of small files holds at most this many.
const BATCH_FILES: usize = 128;
/// A fetch of small files holds at most this many bytes.
const BATCH_BYTES: u64 = 4 * 1024 * 1024;
/// A file this large travels on a stream of its own.
const LARGE_FILE: u64 = 1024 * 1024;
/// A file this large resumes from the temporary file an interrupted run left, once the bytes in
/// it are checked against the source; smaller ones are sent again whole.
const RESUME_MIN: u64 = 8 * 1024 * 1024;
/// How long a fetch or listing stream may stay silent.
const STALL: Duration = Duration::from_secs(30);
/// Bytes of names a fetch request carries at most, to stay well inside a control frame.
const BATCH_NAME_BYTES: usize = 32 * 1024;

/// One file to copy.
#[derive(Debug, Clone)]
struct Want {
    name: Vec<u8>,
    size: u64,
    mode: u32,
    /// Where to resume from: the bytes a temporary file an interrupted run left may hold, a
    /// whole number of chunks; 0 to start afresh. Checked against the source before use.
    offset: u64,
}

/// The counts of a tree replication, shared by its tasks.
#[derive(Debug, Default)]
struct Tally {
    summary: TreeSummary,
    progress: TreeProgress,
}

/// What the tasks of one tree replication share.
struct Shared<'a> {
    cmd: &'a ReplicateTree,
    pool: Arc<Pool>,
    transfer: &'a Transfer,
    tally: Mutex<Tally>,
    top: Option<Arc<OwnedFd>>,
    /// The star's own files and folders: never written over, into or deleted, whatever the
    /// tree's names.
    protected: Arc<Protected>,
    /// Cancelled when a controller cancels the tree or the star shuts down: every task of the
    /// tree stops, and is waited for, before the tree reports its end.
    stop: CancellationToken,
}

impl Shared<'_> {
    /// Updates the counts and publishes the progress. The bytes done are counted by the fetches
    /// themselves, on the progress watch, and kept.
    fn tally(&self, f: impl FnOnce(&mut Tally)) {
        let mut tally = self.tally.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut tally);
        let mut progress = tally.progress;
        drop(tally);
        self.transfer.tree.send_modify(|now| {
            progress.bytes_done = now.map_or(0, |p| p.bytes_done);
            *now = Some(progress);
        });
    }

    /// Records what happened to one entry, and reports it with `itemize`.
    fn item(
        &self,
        action: ItemAction,
        name: &[u8],
        kind: char,
        size: u64,
        error: Option<WireError>,
    ) {
        self.tally(|t| {
            let s = &mut t.summary;
            match (action, kind) {
                (ItemAction::Copied, 'f') => {
                    s.copied += 1;
                    t.progress.files_done += 1;
                }
                (ItemAction::Copied, 'd') => s.dirs += 1,
                (ItemAction::Copied, _) => s.links += 1,
                (ItemAction::Skipped, 'f') => {
                    s.skipped += 1;
                    t.progress.files_done += 1;
                    t.progress.bytes_total = t.progress.bytes_total.saturating_sub(size);
                }
                (ItemAction::Skipped, _) => {}
                (ItemAction::Deleted, _) => s.deleted += 1,
                (ItemAction::Failed, _) => {
                    s.failed += 1;
                    if kind == 'f' {
                        t.progress.files_done += 1;
                    }
                    if s.failures.len() < MAX_FAILED_NAMED {
                        s.failures.push(FailedFile {
                            name: name.to_vec(),
                            error: error
                                .clone()
                                .unwrap_or_else(|| WireError::new(ErrorCode::Internal, "failed")),
                        });
                    }
                }
                (ItemAction::Unsupported, _) => s.unsupported += 1,
            }
        });
        if let Some(error) = &error {
            if action == ItemAction::Failed {
                warn!(file = %tree::display_name(name), code = error.code.name(), "tree entry failed: {}", error.message);
            }
        }
        if self.cmd.itemize {
            let _ = self.transfer.notes.send(ControlEvent::Item(Item {
                action,
                name: name.to_vec(),
                kind,
                size,
                error,
            }));
        }
    }
}

/// Replicates the tree `cmd` names into `target`, to the end: every entry copied, skipped or
/// failed, then `--delete` if asked and nothing failed.
pub(crate) async fn replicate(
    replicator: &Replicator,
    cmd: &ReplicateTree,
    target: &Confined,
    transfer: &Transfer,
) -> Result<TreeSummary, PullError> {
    orbit_wire::path::validate(&cmd.source_path)
        .map_err(|e| PullError::BadSourcePath(e.to_string()))?;
    let filter = token::decode_tree_unverified(&cmd.token)
        .map(|claims| claims.filter)
        .map_err(|e| PullError::Target {
            path: cmd.target_path.clone(),
            cause: super::error::Local(WireError::new(
                ErrorCode::InvalidArgument,
                format!("the command's token is not a tree token: {e}"),
            )),
        })?;
    let jail = replicator.store.jail.clone();
    let (confined, create) = (target.clone(), !cmd.dry_run);
    let top = tokio::task::spawn_blocking(move || jail.prepare_dir(&confined, create))
        .await
        .map_err(|e| PullError::Internal(e.to_string()))?
        .map_err(|e| PullError::Target {
            path: cmd.target_path.clone(),
            cause: super::error::Local(e.to_wire()),
        })?;
    let shared = Shared {
        cmd,
        pool: replicator.pool.clone(),
        transfer,
        tally: Mutex::default(),
        top: top.map(Arc::new),
        protected: replicator.store.jail.protected(),
        stop: CancellationToken::new(),
    };
    // A cancel or a shutdown stops the tree's tasks; the tree still waits for them all (their
    // writers included) before it reports, so nothing writes after its end.
    let watch = async {
        tokio::select! {
            _ = transfer.cancel.cancelled() => {}
            _ = replicator.life.cancel.cancelled() => {}
        }
        shared.stop.cancel();
        std::future::pending::<()>().await
    };
    let result = tokio::select! {
        result = attempts(&shared) => result,
        () = watch => Err(PullError::Internal("the tree's watch ended".into())),
    };
    if shared.stop.is_cancelled() {
        return Err(if transfer.cancel.is_cancelled() {
            PullError::Cancelled
        } else {
            PullError::ShuttingDown {
                star: replicator.star.clone(),
                resumes: false,
            }
        });
    }
    let seen = result?;
    let top = shared.top.clone();
    if let Some(top) = top.clone().filter(|_| !cmd.dry_run) {
        let dirs = seen.dirs;
        let failed = tokio::task::spawn_blocking(move || finish_dirs(&top, &dirs))
            .await
            .map_err(|e| PullError::Internal(e.to_string()))?;
        for (name, error) in failed {
            // The top itself when the name is empty: its file system could not be synced.
            let name = if name.is_empty() { b".".to_vec() } else { name };
            shared.item(ItemAction::Failed, &name, 'd', 0, Some(error));
        }
    }
    if cmd.delete {
        let failed = shared
            .tally
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .summary
            .failed;
        if failed > 0 {
            let why = WireError::new(
                ErrorCode::FailedPrecondition,
                format!("nothing was deleted: {failed} entries failed"),
            );
            shared.tally(|t| t.summary.delete_skipped = Some(why));
        } else if let Some(top) = top {
            delete(&shared, top, seen.names, filter).await?;
        }
    }
    let mut tally = shared.tally.lock().unwrap_or_else(|e| e.into_inner());
    tally.summary.seconds = transfer.started.elapsed().as_secs_f64();
    Ok(std::mem::take(&mut tally.summary))
}

/// Lists and copies the tree, starting over when the listing is lost to the network (a
/// connection lost, the source restarting): a new attempt is a re-sync, which skips what the
/// earlier ones copied. Gives up once the command's timeout passes without an attempt that
/// listed anything.
async fn attempts(shared: &Shared<'_>) -> Result<Seen, PullError> {
    let cmd = shared.cmd;
    let window = match cmd.timeout_secs {
        0 => DEFAULT_TIMEOUT,
        secs => Duration::from_secs(secs.into()),
    };
    let mut progress_at = std::time::Instant::now();
    let mut furthest = 0;
    let mut attempt = 0;
    loop {
        // Each attempt counts afresh; the bytes already copied stay counted.
        shared.tally(|t| {
            let (bytes, resumed) = (t.summary.bytes, t.summary.resumed);
            *t = Tally::default();
            t.summary.bytes = bytes;
            t.summary.resumed = resumed;
            t.summary.dry_run = cmd.dry_run;
        });
        shared
            .transfer
            .tree
            .send_replace(Some(TreeProgress::default()));
        let result = match shared.pool.get(&cmd.source, &cmd.source_addr).await {
            Ok(peer) => walk(shared, &peer).await,
            Err(e) => Err(e.into()),
        };
        let error = match result {
            Ok(seen) => return Ok(seen),
            Err(e) if e.is_transient() => e,
            Err(e) => return Err(e),
        };
        let listed = shared
            .tally
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .progress
            .files_total;
        // Progress is listing further than any attempt before: a listing that breaks at the
        // same place each time gives up once the timeout passes.
        if listed > furthest {
            furthest = listed;
            progress_at = std::time::Instant::now();
        }
        if progress_at.elapsed() >= window || shared.stop.is_cancelled() {
            return Err(error);
        }
        attempt += 1;
        let after = backoff(attempt, rand::random::<f64>());
        warn!(transfer = %cmd.transfer_id, attempt, "tree listing lost, starting over in {after:?}: {error}");
        let _ = shared.transfer.notes.send(ControlEvent::Retrying {
            attempt,
            after_ms: after.as_millis() as u64,
            reason: format!("{error}; the tree starts over and skips what was copied"),
        });
        tokio::select! {
            _ = shared.stop.cancelled() => return Err(error),
            _ = tokio::time::sleep(after) => {}
        }
    }
}

/// What the listing showed, for after the copies.
#[derive(Default)]
struct Seen {
    /// Every name listed, and whether it is a directory at the source.
    names: HashMap<Vec<u8>, bool>,
    /// The directories, with their mode and modification time, parents first.
    dirs: Vec<(Vec<u8>, u32, Timespec)>,
}

/// Reads the listing and plans each batch, fetching files as the batches fill; then waits for
/// every fetch, also when the listing failed (whose fetches are stopped first), so that no
/// writer outlives the attempt.
async fn walk(shared: &Shared<'_>, peer: &Arc<PeerConn>) -> Result<Seen, PullError> {
    let stop = shared.stop.child_token();
    let mut fetches = Fetches::default();
    let result = list(shared, peer, &mut fetches, &stop).await;
    if result.is_err() {
        stop.cancel();
    }
    fetches.drain(shared).await;
    result
}

/// The listing itself, for [`walk`].
async fn list(
    shared: &Shared<'_>,
    peer: &Arc<PeerConn>,
    fetches: &mut Fetches,
    stop: &CancellationToken,
) -> Result<Seen, PullError> {
    let cmd = shared.cmd;
    let source = &cmd.source;
    let lost = |what: &'static str, e: WireError| PullError::Lost {
        source_star: source.clone(),
        what,
        code: e.code,
        message: e.message,
    };
    let (mut send, mut recv) = peer.conn.open_bi().await.map_err(|e| {
        lost(
            "opening the listing",
            WireError::new(ErrorCode::Unavailable, e.to_string()),
        )
    })?;
    let request = ControlRequest::List(ListRequest {
        transfer_id: cmd.transfer_id,
        path: cmd.source_path.clone(),
        token: cmd.token.clone(),
        checksums: cmd.sync == SyncLevel::Checksum,
    });
    write_frame(&mut send, &request)
        .await
        .map_err(|e| lost("asking for the listing", e.to_wire()))?;
    let _ = send.finish();
    let mut seen = Seen::default();
    let slots = Arc::new(Semaphore::new(FETCH_STREAMS));
    let mut batcher = Batcher::default();
    loop {
        let read = tokio::time::timeout(
            STALL,
            framed::read_frame::<ListFrame>(&mut recv, orbit_wire::MAX_CONTROL_FRAME),
        );
        let frame = tokio::select! {
            _ = stop.cancelled() => return Err(PullError::Cancelled),
            frame = read => frame,
        };
        let frame = frame
            .map_err(|_| PullError::Stalled {
                source_star: source.clone(),
                offset: 0,
                total: 0,
                seconds: STALL.as_secs_f64(),
            })?
            .map_err(|e| lost("listing", e.to_wire()))?;
        let entries = match frame {
            ListFrame::Entries(entries) => entries,
            ListFrame::End => break,
            ListFrame::Error(error) => {
                return Err(PullError::Refused {
                    source_star: source.clone(),
                    error,
                })
            }
        };
        for entry in &entries {
            let is_dir = matches!(entry.kind, EntryKind::Dir { .. });
            if cmd.delete && tree::check_name(&entry.name).is_ok() {
                seen.names.insert(entry.name.clone(), is_dir);
            }
            if let EntryKind::File { version, .. } = &entry.kind {
                let size = version.size;
                shared.tally(|t| {
                    t.progress.files_total += 1;
                    t.progress.bytes_total += size;
                });
            }
        }
        let (top, protected) = (shared.top.clone(), shared.protected.clone());
        let (sync, dry_run) = (cmd.sync, cmd.dry_run);
        let planned = tokio::task::spawn_blocking(move || {
            plan(top.as_deref(), &protected, entries, sync, dry_run)
        })
        .await
        .map_err(|e| PullError::Internal(e.to_string()))?;
        for decision in planned {
            match decision {
                Decision::Copy(want) if cmd.dry_run => {
                    let size = want.size;
                    shared.tally(|t| t.summary.bytes += size);
                    shared.item(ItemAction::Copied, &want.name, 'f', want.size, None);
                }
                Decision::Copy(want) => {
                    for batch in batcher.push(want) {
                        fetches.spawn(shared, peer, &slots, batch, stop).await;
                        fetches.reap(shared);
                    }
                }
                Decision::Dir(name, mode, mtime, made) => {
                    let action = if made {
                        ItemAction::Copied
                    } else {
                        ItemAction::Skipped
                    };
                    shared.item(action, &name, 'd', 0, None);
                    seen.dirs.push((name, mode, mtime));
                }
                Decision::Item(action, name, kind, size, error) => {
                    shared.item(action, &name, kind, size, error);
                }
            }
        }
    }
    shared.tally(|t| t.progress.listed = true);
    if let Some(batch) = batcher.flush() {
        fetches.spawn(shared, peer, &slots, batch, stop).await;
    }
    Ok(seen)
}

/// Groups the files to copy into fetches: small files many to one, large files alone.
#[derive(Default)]
struct Batcher {
    files: Vec<Want>,
    bytes: u64,
    names: usize,
}

impl Batcher {
    /// Adds a file; returns the fetches that are full.
    fn push(&mut self, want: Want) -> Vec<Vec<Want>> {
        if want.size >= LARGE_FILE {
            return vec![vec![want]];
        }
        self.bytes += want.size;
        self.names += want.name.len();
        self.files.push(want);
        if self.files.len() >= BATCH_FILES
            || self.bytes >= BATCH_BYTES
            || self.names >= BATCH_NAME_BYTES
        {
            return self.flush().into_iter().collect();
        }
        Vec::new()
    }

    fn flush(&mut self) -> Option<Vec<Want>> {
        self.bytes = 0;
        self.names = 0;
        (!self.files.is_empty()).then(|| std::mem::take(&mut self.files))
    }
}

/// Opens the directory `name` beneath the target's `top` (the top itself when `name` is empty),
/// through no link. Blocking.
fn open_dir(top: &OwnedFd, name: &[u8]) -> Result<OwnedFd, JailError> {
    let path: &[u8] = if name.is_empty() { b"." } else { name };
    open_in_tree(top, path, OFlags::DIRECTORY | OFlags::RDONLY)
}

/// `(parent, last component)` of a name; the parent is empty at the top.
fn split_name(name: &[u8]) -> (&[u8], &[u8]) {
    match name.iter().rposition(|&b| b == b'/') {
        Some(i) => (&name[..i], &name[i + 1..]),
        None => (&[], name),
    }
}

/// The last parent directory opened, since entries come grouped by directory.
struct Parents {
    last: Option<(Vec<u8>, Arc<OwnedFd>)>,
    protected: Arc<Protected>,
}

impl Parents {
    fn new(protected: Arc<Protected>) -> Parents {
        Parents {
            last: None,
            protected,
        }
    }

    /// Opens directory `name` beneath `top` (the top itself if empty), through no link; never
    /// one of the star's own folders.
    fn open(&mut self, top: &OwnedFd, name: &[u8]) -> Result<Arc<OwnedFd>, WireError> {
        if let Some((last, fd)) = &self.last {
            if last == name {
                return Ok(fd.clone());
            }
        }
        let fd = open_dir(top, name).map_err(|e| match e {
            JailError::Escapes => WireError::new(
                ErrorCode::PermissionDenied,
                "a directory on the way at the target is a symbolic link",
            ),
            e => e.to_wire(),
        })?;
        let stat = rustix::fs::fstat(&fd).map_err(|e| JailError::from(e).to_wire())?;
        not_protected(&self.protected, &stat).map_err(|e| e.to_wire())?;
        let fd = Arc::new(fd);
        self.last = Some((name.to_vec(), fd.clone()));
        Ok(fd)
    }
}

/// When this tree replication began, for logs.
pub(crate) fn log_start(cmd: &ReplicateTree) {
    info!(
        transfer = %cmd.transfer_id, source = %cmd.source, source_path = %cmd.source_path,
        target = %cmd.target_path, sync = ?cmd.sync, delete = cmd.delete, dry_run = cmd.dry_run,
        "tree replication started"
    );
}
