//! A tree replication, destination side: the source's listing streams in, each entry is
//! compared with what the target holds, and the files to copy are fetched many to a stream,
//! several streams at once, while the listing goes on.
//!
//! | step | where |
//! |---|---|
//! | the listing, one stream | [`replicate`] reads `ListFrame`s; [`plan`] decides each entry (blocking) |
//! | directories and links | made by [`plan`] at once, one level at a time beneath the target's handle |
//! | files | batched by [`Batcher`], fetched by [`fetch`] on [`FETCH_STREAMS`] streams; written, verified and published by [`Batch`] (blocking) |
//! | after the last file | directory modes and times ([`finish_dirs`]), then `--delete` ([`delete`]) |
//!
//! Every name is checked (`orbit_wire::tree::check_name`) before it is used, and everything is
//! opened beneath the target directory's handle through no symbolic link
//! ([`crate::jail::open_in_tree`]). A file is published only after its size and SHA-256 match
//! the source's trailer: written to a temporary file beside it, fsynced with the rest of its
//! batch, renamed over the target, and each directory touched is fsynced once per batch. A
//! target path holds its old file or the verified new one, never a partial one.

use std::collections::HashMap;
use std::io::Write as _;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use orbit_wire::token;
use orbit_wire::tree::{
    self, Entry, EntryKind, FailedFile, FetchFile, FetchRequest, Filter, Item, ItemAction,
    ListFrame, ListRequest, PrefixFrame, PrefixRequest, ReplicateTree, SyncLevel, TreeProgress,
    TreeSummary, MAX_FAILED_NAMED, WHOLE_REQUEST,
};
use orbit_wire::{ControlEvent, ControlRequest, DataFrame, ErrorCode, FileVersion, WireError};

use super::error::PullError;
use super::machine::{backoff, DEFAULT_TIMEOUT};
use super::registry::Transfer;
use super::Replicator;
use crate::error::ToWire;
use crate::framed::{self, write_frame, DataRead};
use crate::jail::{open_in_tree, Confined, JailError};
use crate::pool::{PeerConn, Pool};

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
/// How many times files lost to the network are asked for again.
const FETCH_RETRIES: u32 = 4;
/// The wait before the first retry; it doubles with each.
const RETRY_BACKOFF: Duration = Duration::from_millis(500);
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
}

impl Shared<'_> {
    fn tally(&self, f: impl FnOnce(&mut Tally)) {
        let mut tally = self.tally.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut tally);
        let progress = tally.progress;
        drop(tally);
        self.transfer.tree.send_replace(Some(progress));
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
    };
    let cancelled = async {
        tokio::select! {
            _ = transfer.cancel.cancelled() => PullError::Cancelled,
            _ = replicator.life.cancel.cancelled() => PullError::ShuttingDown {
                star: replicator.star.clone(),
                resumes: false,
            },
        }
    };
    let seen = tokio::select! {
        biased;
        e = cancelled => return Err(e),
        seen = attempts(&shared) => seen?,
    };
    let top = shared.top.clone();
    if let Some(top) = top.clone().filter(|_| !cmd.dry_run) {
        let dirs = seen.dirs;
        tokio::task::spawn_blocking(move || finish_dirs(&top, &dirs))
            .await
            .map_err(|e| PullError::Internal(e.to_string()))?;
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
    let mut attempt = 0;
    loop {
        // Each attempt counts afresh; the bytes already copied stay counted.
        shared.tally(|t| {
            let bytes = t.summary.bytes;
            *t = Tally::default();
            t.summary.bytes = bytes;
            t.summary.dry_run = cmd.dry_run;
        });
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
        if listed > 0 {
            progress_at = std::time::Instant::now();
        }
        if progress_at.elapsed() >= window {
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
        tokio::time::sleep(after).await;
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

/// Reads the listing and plans each batch, fetching files as the batches fill.
async fn walk(shared: &Shared<'_>, peer: &Arc<PeerConn>) -> Result<Seen, PullError> {
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
    let mut fetches = JoinSet::new();
    let mut batcher = Batcher::default();
    loop {
        let frame = tokio::time::timeout(
            STALL,
            framed::read_frame::<ListFrame>(&mut recv, orbit_wire::MAX_CONTROL_FRAME),
        )
        .await
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
        let top = shared.top.clone();
        let (sync, dry_run) = (cmd.sync, cmd.dry_run);
        let planned =
            tokio::task::spawn_blocking(move || plan(top.as_deref(), entries, sync, dry_run))
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
                        spawn_fetch(shared, peer, &slots, &mut fetches, batch).await;
                        reap(shared, &mut fetches);
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
        spawn_fetch(shared, peer, &slots, &mut fetches, batch).await;
    }
    while let Some(done) = fetches.join_next().await {
        record(shared, done);
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

/// What one fetch did to each of its files.
type Fetched = Vec<(Want, Result<(), WireError>)>;

/// Starts a fetch once a stream slot is free.
async fn spawn_fetch(
    shared: &Shared<'_>,
    peer: &Arc<PeerConn>,
    slots: &Arc<Semaphore>,
    fetches: &mut JoinSet<Fetched>,
    batch: Vec<Want>,
) {
    let Ok(slot) = slots.clone().acquire_owned().await else {
        return;
    };
    let Some(top) = shared.top.clone() else {
        return;
    };
    let cmd = shared.cmd.clone();
    let (pool, mut peer) = (shared.pool.clone(), peer.clone());
    let progress = shared.transfer.tree.clone();
    let cancelled = shared.transfer.cancel.clone();
    fetches.spawn(async move {
        let mut done = Vec::with_capacity(batch.len());
        let mut batch = batch;
        // Files lost to the network (a connection lost, the source restarting) are asked for
        // again, on a connection dialled anew if need be; any other failure is final.
        for attempt in 0..=FETCH_RETRIES {
            let results = fetch(&peer, &cmd, top.clone(), batch, &progress, &cancelled).await;
            let (again, over): (Fetched, Fetched) = results.into_iter().partition(|(_, r)| {
                attempt < FETCH_RETRIES
                    && r.as_ref().is_err_and(|e| {
                        matches!(e.code, ErrorCode::Unavailable | ErrorCode::DeadlineExceeded)
                    })
            });
            done.extend(over);
            if again.is_empty() {
                break;
            }
            tokio::time::sleep(RETRY_BACKOFF * 2u32.pow(attempt)).await;
            match pool.get(&cmd.source, &cmd.source_addr).await {
                Ok(fresh) => peer = fresh,
                Err(e) => {
                    let error = PullError::from(e).to_wire();
                    done.extend(again.into_iter().map(|(w, _)| (w, Err(error.clone()))));
                    break;
                }
            }
            batch = again.into_iter().map(|(w, _)| w).collect();
        }
        drop(slot);
        done
    });
}

/// Records the fetches that have ended, without waiting.
fn reap(shared: &Shared<'_>, fetches: &mut JoinSet<Fetched>) {
    while let Some(done) = fetches.try_join_next() {
        record(shared, done);
    }
}

fn record(shared: &Shared<'_>, done: Result<Fetched, tokio::task::JoinError>) {
    let Ok(results) = done else {
        return warn!("a fetch task was lost");
    };
    for (want, result) in results {
        match result {
            Ok(()) => {
                let (sent, resumed) = (want.size - want.offset, want.offset);
                shared.tally(|t| {
                    t.summary.bytes += sent;
                    t.summary.resumed += resumed;
                });
                shared.item(ItemAction::Copied, &want.name, 'f', want.size, None);
            }
            Err(error) => shared.item(ItemAction::Failed, &want.name, 'f', want.size, Some(error)),
        }
    }
}

/// Fetches `batch` on one stream and publishes each file that arrives intact.
async fn fetch(
    peer: &PeerConn,
    cmd: &ReplicateTree,
    top: Arc<OwnedFd>,
    batch: Vec<Want>,
    progress: &tokio::sync::watch::Sender<Option<TreeProgress>>,
    cancelled: &CancellationToken,
) -> Fetched {
    let mut batch = batch;
    // A resumed file travels alone; its bytes on disk must match the source's before any is kept.
    let mut expect = None;
    if let [want] = batch.as_mut_slice() {
        if want.offset > 0 {
            expect = check_resume(peer, cmd, &top, want).await;
            if expect.is_none() {
                want.offset = 0;
            } else {
                let resumed = want.offset;
                progress.send_modify(|p| {
                    if let Some(p) = p {
                        p.bytes_done += resumed;
                    }
                });
            }
        }
    }
    let (tx, rx) = mpsc::channel::<WriteMsg>(16);
    let wants = batch.clone();
    let cancelled = cancelled.clone();
    let writer = tokio::task::spawn_blocking(move || write_batch(&top, &wants, &cancelled, rx));
    let stream_error = receive(peer, cmd, &batch, expect, &tx, progress).await;
    if let Some(error) = &stream_error {
        let _ = tx.send(WriteMsg::Abort(error.clone())).await;
    }
    drop(tx);
    let mut results: Vec<Option<Result<(), WireError>>> = match writer.await {
        Ok(results) => results,
        Err(e) => vec![Some(Err(WireError::new(ErrorCode::Internal, e.to_string()))); batch.len()],
    };
    results.resize(batch.len(), None);
    let unanswered = stream_error.unwrap_or_else(|| {
        WireError::new(ErrorCode::DataLoss, "the source did not send this file")
    });
    batch
        .into_iter()
        .zip(results)
        .map(|(want, result)| (want, result.unwrap_or_else(|| Err(unanswered.clone()))))
        .collect()
}

/// What the network side tells the blocking writer.
enum WriteMsg {
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

/// Sends the fetch request and passes what arrives to the writer. Returns the stream's error,
/// if it failed, for the files it did not deliver.
async fn receive(
    peer: &PeerConn,
    cmd: &ReplicateTree,
    batch: &[Want],
    expect: Option<FileVersion>,
    tx: &mpsc::Sender<WriteMsg>,
    progress: &tokio::sync::watch::Sender<Option<TreeProgress>>,
) -> Option<WireError> {
    let unavailable = |e: String| Some(WireError::new(ErrorCode::Unavailable, e));
    let (mut send, mut recv) = match peer.conn.open_bi().await {
        Ok(pair) => pair,
        Err(e) => return unavailable(format!("{}: {e}", cmd.source)),
    };
    let request = ControlRequest::Fetch(FetchRequest {
        transfer_id: cmd.transfer_id,
        path: cmd.source_path.clone(),
        token: cmd.token.clone(),
        files: batch
            .iter()
            .map(|w| FetchFile {
                name: w.name.clone(),
                offset: w.offset,
            })
            .collect(),
    });
    if let Err(e) = write_frame(&mut send, &request).await {
        return Some(e.to_wire());
    }
    let _ = send.finish();
    let protocol = |what: String| {
        Some(WireError::new(
            ErrorCode::DataLoss,
            format!("{} broke the protocol: {what}", cmd.source),
        ))
    };
    // The file being received: its index, the bytes the stream carries, the bytes so far and the
    // offset they start at.
    let mut current: Option<(usize, u64, u64, u64)> = None;
    let mut next = 0usize;
    loop {
        let read = match tokio::time::timeout(STALL, framed::read_data_frame(&mut recv)).await {
            Ok(read) => read,
            Err(_) => {
                return Some(WireError::new(
                    ErrorCode::Unavailable,
                    format!("{} sent nothing for {} s", cmd.source, STALL.as_secs()),
                ))
            }
        };
        let msg = match read {
            Err(crate::framed::FramedError::Ended) if current.is_none() && next == batch.len() => {
                return None
            }
            Err(e) => return Some(e.to_wire()),
            Ok(DataRead::Chunk { offset, payload }) => {
                let Some((_, size, got, base)) = &mut current else {
                    return protocol("a chunk outside a file".into());
                };
                let len = payload.len() as u64;
                if offset != *base + *got || *got + len > *size {
                    return protocol("a chunk out of order or past the file's end".into());
                }
                *got += len;
                progress.send_modify(|p| {
                    if let Some(p) = p {
                        p.bytes_done += len;
                    }
                });
                WriteMsg::Data(payload.pieces().to_vec())
            }
            Ok(DataRead::Frame(DataFrame::Header {
                request_id,
                size,
                version,
            })) => {
                if current.is_some() || request_id != next as u64 {
                    return protocol(format!("a header for file {request_id} out of turn"));
                }
                let base = batch[next].offset;
                if base > 0 && Some(version) != expect {
                    return Some(WireError::new(
                        ErrorCode::FailedPrecondition,
                        format!(
                            "the source file changed on {} since the resume was checked",
                            cmd.source
                        ),
                    ));
                }
                if base + size != batch[next].size && base > 0 {
                    return protocol(format!("a resumed file of {size} bytes from {base}"));
                }
                current = Some((next, size, 0, base));
                WriteMsg::Begin(next, size, version, base)
            }
            Ok(DataRead::Frame(DataFrame::Trailer { sha256 })) => {
                let Some((_, size, got, _)) = current.take() else {
                    return protocol("a trailer outside a file".into());
                };
                if got != size {
                    return protocol(format!("a file ended after {got} of {size} bytes"));
                }
                next += 1;
                WriteMsg::End(sha256)
            }
            Ok(DataRead::Frame(DataFrame::Chunk { .. })) => {
                return protocol("a chunk that is not one".into())
            }
            Ok(DataRead::Frame(DataFrame::Error { request_id, error })) => {
                if request_id == WHOLE_REQUEST {
                    return Some(error);
                }
                match current.take() {
                    Some((index, ..)) if index as u64 == request_id => {}
                    None if request_id == next as u64 => {}
                    _ => return protocol(format!("an error for file {request_id} out of turn")),
                }
                next += 1;
                WriteMsg::Failed(request_id as usize, error)
            }
        };
        if next > batch.len() {
            return protocol("more files than were asked for".into());
        }
        if tx.send(msg).await.is_err() {
            return Some(WireError::new(ErrorCode::Internal, "the writer stopped"));
        }
    }
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
}

/// Writes the files of one fetch as they arrive, verifies each, and publishes the batch: fsync
/// every file, rename each over its target, fsync each directory touched once. Blocking.
/// Returns each file's result by index; `None` for files never begun.
fn write_batch(
    top: &OwnedFd,
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
    let mut parents = Parents::default();
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
                    if size > 0 {
                        let _ = rustix::fs::fallocate(
                            &file,
                            rustix::fs::FallocateFlags::KEEP_SIZE,
                            from,
                            size,
                        );
                    }
                    Ok(Writing {
                        index,
                        parent,
                        parent_name: parent_name.to_vec(),
                        part,
                        file,
                        hasher: Sha256::new(),
                        version,
                    })
                });
                match begun {
                    Ok(w) => writing = Some(w),
                    Err(e) => results[index] = Some(Err(e)),
                }
            }
            WriteMsg::Data(pieces) => {
                let Some(w) = &mut writing else { continue };
                let mut failed = None;
                for piece in &pieces {
                    w.hasher.update(piece);
                    if let Err(e) = w.file.write_all(piece) {
                        failed = Some(local(e));
                        break;
                    }
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
    publish(ready, &mut results);
    results
}

/// Makes the verified files durable and publishes them: fsync each, rename each over its
/// target, fsync each directory once.
fn publish(ready: Vec<Ready>, results: &mut [Option<Result<(), WireError>>]) {
    let mut synced = Vec::with_capacity(ready.len());
    for r in ready {
        match r.file.sync_all() {
            Ok(()) => synced.push(r),
            Err(e) => {
                remove_part(&r.parent, &r.part);
                results[r.index] = Some(Err(e.to_wire()));
            }
        }
    }
    let mut dirs: HashMap<Vec<u8>, Arc<OwnedFd>> = HashMap::new();
    let mut published = Vec::with_capacity(synced.len());
    for r in synced {
        drop(r.file);
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
    // Each directory touched is synced once; a file is done only when its directory is.
    let synced_dirs: HashMap<Vec<u8>, Result<(), WireError>> = dirs
        .into_iter()
        .map(|(name, dir)| {
            let result = rustix::fs::fsync(&*dir).map_err(|e| std::io::Error::from(e).to_wire());
            (name, result)
        })
        .collect();
    for (index, dir) in published {
        results[index] = Some(synced_dirs[&dir].clone());
    }
}

fn remove_part(dir: &OwnedFd, part: &str) {
    let _ = rustix::fs::unlinkat(dir, part, AtFlags::empty());
}

/// `(parent, last component)` of a name; the parent is empty at the top.
fn split_name(name: &[u8]) -> (&[u8], &[u8]) {
    match name.iter().rposition(|&b| b == b'/') {
        Some(i) => (&name[..i], &name[i + 1..]),
        None => (&[], name),
    }
}

/// The last parent directory opened, since entries come grouped by directory.
#[derive(Default)]
struct Parents {
    last: Option<(Vec<u8>, Arc<OwnedFd>)>,
}

impl Parents {
    /// Opens directory `name` beneath `top` (the top itself if empty), through no link.
    fn open(&mut self, top: &OwnedFd, name: &[u8]) -> Result<Arc<OwnedFd>, WireError> {
        if let Some((last, fd)) = &self.last {
            if last == name {
                return Ok(fd.clone());
            }
        }
        let path: &[u8] = if name.is_empty() { b"." } else { name };
        let fd =
            open_in_tree(top, path, OFlags::DIRECTORY | OFlags::RDONLY).map_err(|e| match e {
                JailError::Escapes => WireError::new(
                    ErrorCode::PermissionDenied,
                    "a directory on the way at the target is a symbolic link",
                ),
                e => e.to_wire(),
            })?;
        let fd = Arc::new(fd);
        self.last = Some((name.to_vec(), fd.clone()));
        Ok(fd)
    }
}

/// What to do with one listed entry.
enum Decision {
    /// Fetch this file.
    Copy(Want),
    /// A directory made (`true`) or present, for its mode and time at the end.
    Dir(Vec<u8>, u32, Timespec, bool),
    /// Done with: report it.
    Item(ItemAction, Vec<u8>, char, u64, Option<WireError>),
}

/// Decides each entry of a batch against the target, making directories and links on the way.
/// `top` is `None` in a dry run whose target does not exist. Blocking.
fn plan(
    top: Option<&OwnedFd>,
    entries: Vec<Entry>,
    sync: SyncLevel,
    dry_run: bool,
) -> Vec<Decision> {
    let mut parents = Parents::default();
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
        EntryKind::Skipped(_) => '?',
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
    if let EntryKind::Skipped(error) = kind {
        // What the source does not send by design (a kind of file it never sends, a link that
        // leaves the tree, a file with other names) is reported; what it could not read is a
        // failure, and stops --delete.
        let action = match error.code {
            ErrorCode::InvalidArgument | ErrorCode::PermissionDenied => ItemAction::Unsupported,
            _ => ItemAction::Failed,
        };
        return Decision::Item(action, name, letter, 0, Some(error));
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
        EntryKind::Skipped(error) => {
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

/// Sets each directory's mode and modification time, deepest first, now that its contents are
/// in, and makes the new directories durable. Blocking.
fn finish_dirs(top: &OwnedFd, dirs: &[(Vec<u8>, u32, Timespec)]) {
    for (name, mode, mtime) in dirs.iter().rev() {
        let Ok(dir) = open_in_tree(top, name, OFlags::DIRECTORY | OFlags::RDONLY) else {
            continue;
        };
        let _ = rustix::fs::fsync(&dir);
        let _ = rustix::fs::fchmod(&dir, Mode::from_raw_mode(mode & 0o777));
        let _ = rustix::fs::futimens(
            &dir,
            &Timestamps {
                last_access: *mtime,
                last_modification: *mtime,
            },
        );
    }
    let _ = rustix::fs::fsync(top);
}

/// Removes what the target holds beneath its top and the source did not list, within the
/// filter's scope; first counts it, and removes nothing when it is more than `--max-delete`.
async fn delete(
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
    let removed = tokio::task::spawn_blocking(move || {
        found
            .into_iter()
            .map(|(name, is_dir)| {
                let (parent, last) = split_name(&name);
                let path: &[u8] = if parent.is_empty() { b"." } else { parent };
                let result = open_in_tree(&*top, path, OFlags::DIRECTORY | OFlags::RDONLY)
                    .map_err(|e| e.to_wire())
                    .and_then(|dir| {
                        let flags = if is_dir {
                            AtFlags::REMOVEDIR
                        } else {
                            AtFlags::empty()
                        };
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
        let path: &[u8] = if dir_name.is_empty() { b"." } else { &dir_name };
        let dir =
            open_in_tree(top, path, OFlags::DIRECTORY | OFlags::RDONLY).map_err(|e| e.to_wire())?;
        let entries = rustix::fs::Dir::read_from(&dir).map_err(|e| JailError::from(e).to_wire())?;
        for dirent in entries {
            let dirent = dirent.map_err(|e| JailError::from(e).to_wire())?;
            let file_name = dirent.file_name().to_bytes();
            if sweep && is_tree_part(file_name) {
                let _ = rustix::fs::unlinkat(&dir, file_name, AtFlags::empty());
                continue;
            }
            if file_name == b"." || file_name == b".." || is_part(file_name) {
                continue;
            }
            let name = if dir_name.is_empty() {
                file_name.to_vec()
            } else {
                [dir_name.as_slice(), b"/", file_name].concat()
            };
            let is_dir = dirent.file_type() == FileType::Directory;
            if !filter.admits(&name, is_dir) {
                continue;
            }
            match names.get(&name) {
                Some(true) if is_dir => pending.push(name),
                Some(_) => {}
                None if is_dir => {
                    // The whole subtree goes, contents first.
                    let mut inner = Vec::new();
                    subtree(top, &name, &mut inner)?;
                    found.extend(inner);
                    found.push((name, true));
                }
                None => found.push((name, false)),
            }
        }
    }
    Ok(found)
}

/// Every entry beneath directory `name`, contents before their directory. Blocking.
fn subtree(top: &OwnedFd, name: &[u8], out: &mut Vec<(Vec<u8>, bool)>) -> Result<(), WireError> {
    let dir =
        open_in_tree(top, name, OFlags::DIRECTORY | OFlags::RDONLY).map_err(|e| e.to_wire())?;
    let entries = rustix::fs::Dir::new(dir).map_err(|e| JailError::from(e).to_wire())?;
    for dirent in entries {
        let dirent = dirent.map_err(|e| JailError::from(e).to_wire())?;
        let file_name = dirent.file_name().to_bytes();
        if file_name == b"." || file_name == b".." {
            continue;
        }
        let child = [name, b"/", file_name].concat();
        if dirent.file_type() == FileType::Directory {
            subtree(top, &child, out)?;
            out.push((child, true));
        } else {
            out.push((child, false));
        }
    }
    Ok(())
}

/// Whether a name is one of Orbit's temporary files.
fn is_part(name: &[u8]) -> bool {
    name.starts_with(b".orbit-") && name.ends_with(b".part")
}

/// Whether a name is a tree's temporary file: a crash leaves these behind, and the next run
/// that writes the same file, or deletes with `--delete`, removes them.
fn is_tree_part(name: &[u8]) -> bool {
    name.starts_with(TREE_PART) && name.ends_with(b".part")
}

/// The start of every tree temporary file's name.
const TREE_PART: &[u8] = b".orbit-tree-";

/// The temporary file beside the file `last`: one name per target name, so that a run after a
/// crash replaces the one the crash left.
fn part_name(last: &[u8]) -> String {
    let digest = Sha256::digest(last);
    format!(".orbit-tree-{}.part", hex::encode(&digest[..8]))
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
    if FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode) != FileType::RegularFile {
        return Err(rustix::io::Errno::INVAL);
    }
    rustix::fs::ftruncate(&fd, from)?;
    rustix::fs::seek(&fd, rustix::fs::SeekFrom::Start(from))?;
    Ok(fd)
}

/// How many bytes of `last`'s temporary file in `dir` may be reused: what it holds, in whole
/// chunks, up to the file's `size`; 0 when there is none. Blocking.
fn left_behind(dir: &OwnedFd, last: &[u8], size: u64) -> u64 {
    let part = part_name(last);
    match rustix::fs::statat(dir, part.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile => {
            let chunk = orbit_wire::CHUNK_SIZE as u64;
            (stat.st_size as u64).min(size) / chunk * chunk
        }
        _ => 0,
    }
}

/// Whether the first `want.offset` bytes of `want`'s temporary file are the source's: hashes
/// them here, asks the source for the digest of the same bytes, and returns the source file's
/// version when they match.
async fn check_resume(
    peer: &PeerConn,
    cmd: &ReplicateTree,
    top: &Arc<OwnedFd>,
    want: &Want,
) -> Option<FileVersion> {
    let (top, name, len) = (top.clone(), want.name.clone(), want.offset);
    let local = tokio::task::spawn_blocking(move || {
        let (parent, last) = split_name(&name);
        let path: &[u8] = if parent.is_empty() { b"." } else { parent };
        let dir = open_in_tree(&*top, path, OFlags::DIRECTORY | OFlags::RDONLY).ok()?;
        let fd = rustix::fs::openat(
            &dir,
            part_name(last).as_str(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        let mut file = std::io::Read::take(std::fs::File::from(fd), len);
        let mut hasher = Sha256::new();
        let copied = std::io::copy(&mut file, &mut hasher).ok()?;
        (copied == len).then(|| <[u8; 32]>::from(hasher.finalize()))
    });
    let request = ControlRequest::Prefix(PrefixRequest {
        transfer_id: cmd.transfer_id,
        path: cmd.source_path.clone(),
        token: cmd.token.clone(),
        name: want.name.clone(),
        len: want.offset,
    });
    let remote = async {
        let (mut send, mut recv) = peer.conn.open_bi().await.ok()?;
        write_frame(&mut send, &request).await.ok()?;
        let _ = send.finish();
        let read = framed::read_frame::<PrefixFrame>(&mut recv, orbit_wire::MAX_CONTROL_FRAME);
        tokio::time::timeout(STALL, read).await.ok()?.ok()
    };
    let (local, remote) = tokio::join!(local, remote);
    match (local.ok().flatten(), remote) {
        (Some(here), Some(PrefixFrame::Digest { version, sha256 })) if here == sha256 => {
            info!(
                transfer = %cmd.transfer_id, file = %tree::display_name(&want.name),
                offset = want.offset, "resuming a large file from what an interrupted run left"
            );
            Some(version)
        }
        _ => None,
    }
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

/// When this tree replication began, for logs.
pub(crate) fn log_start(cmd: &ReplicateTree) {
    info!(
        transfer = %cmd.transfer_id, source = %cmd.source, source_path = %cmd.source_path,
        target = %cmd.target_path, sync = ?cmd.sync, delete = cmd.delete, dry_run = cmd.dry_run,
        "tree replication started"
    );
}
