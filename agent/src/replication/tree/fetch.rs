//! The network side of fetching a tree's files: one stream per batch of files, what arrives
//! checked to come in order and within each file's size, then handed to the blocking writer
//! ([`super::write`]); files lost to the network are asked for again, a large file's leftover
//! bytes are checked with the source before a resume keeps them.
//!
//! It never writes to the target or hashes on an async worker: the writer and the hashing of a
//! leftover temporary file run on blocking threads.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use orbit_wire::tree::{
    self, FetchFile, FetchRequest, ItemAction, PrefixFrame, PrefixRequest, ReplicateTree,
    TreeProgress, WHOLE_REQUEST,
};
use orbit_wire::{ControlRequest, DataFrame, ErrorCode, FileVersion, WireError};

use super::plan::left_behind;
use super::write::{part_name, write_batch, WriteMsg};
use super::{open_dir, split_name, Shared, Want, RESUME_MIN, STALL};
use crate::error::ToWire;
use crate::framed::{self, write_frame, DataRead};
use crate::pool::{PeerConn, Pool};
use crate::replication::error::PullError;
use crate::replication::machine::{backoff, DEFAULT_TIMEOUT};

/// What one fetch did to each of its files.
type Fetched = Vec<(Want, Result<(), WireError>)>;

/// The fetches of one attempt in flight, with the files each carries, so that a task lost to a
/// panic still counts its files as failed.
#[derive(Default)]
pub(super) struct Fetches {
    set: JoinSet<Fetched>,
    files: HashMap<tokio::task::Id, Vec<Want>>,
}

impl Fetches {
    /// Starts a fetch of `batch` once one of `slots` is free.
    pub(super) async fn spawn(
        &mut self,
        shared: &Shared<'_>,
        peer: &Arc<PeerConn>,
        slots: &Arc<Semaphore>,
        batch: Vec<Want>,
        stop: &CancellationToken,
    ) {
        let slot = tokio::select! {
            _ = stop.cancelled() => return,
            slot = slots.clone().acquire_owned() => slot,
        };
        let (Ok(slot), Some(top)) = (slot, shared.top.clone()) else {
            return;
        };
        let task = Task {
            cmd: shared.cmd.clone(),
            pool: shared.pool.clone(),
            peer: peer.clone(),
            top,
            protected: shared.protected.clone(),
            progress: shared.transfer.tree.clone(),
            cancelled: shared.transfer.cancel.clone(),
            stop: stop.clone(),
        };
        let files = batch.clone();
        let handle = self.set.spawn(async move {
            let done = task.run(batch).await;
            drop(slot);
            done
        });
        self.files.insert(handle.id(), files);
    }

    /// Records the fetches that have ended, without waiting.
    pub(super) fn reap(&mut self, shared: &Shared<'_>) {
        while let Some(done) = self.set.try_join_next_with_id() {
            self.record(shared, done);
        }
    }

    /// Waits for every fetch, and records each.
    pub(super) async fn drain(&mut self, shared: &Shared<'_>) {
        while let Some(done) = self.set.join_next_with_id().await {
            self.record(shared, done);
        }
    }

    fn record(
        &mut self,
        shared: &Shared<'_>,
        done: Result<(tokio::task::Id, Fetched), tokio::task::JoinError>,
    ) {
        let results = match done {
            Ok((id, results)) => {
                self.files.remove(&id);
                results
            }
            Err(e) => {
                warn!("a fetch task was lost: {e}");
                let lost = WireError::new(ErrorCode::Internal, format!("the fetch was lost: {e}"));
                let files = self.files.remove(&e.id()).unwrap_or_default();
                files.into_iter().map(|w| (w, Err(lost.clone()))).collect()
            }
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
                Err(error) => {
                    shared.item(ItemAction::Failed, &want.name, 'f', want.size, Some(error))
                }
            }
        }
    }
}

/// What one fetch task needs.
struct Task {
    cmd: ReplicateTree,
    pool: Arc<Pool>,
    peer: Arc<PeerConn>,
    top: Arc<OwnedFd>,
    protected: Arc<crate::jail::Protected>,
    progress: tokio::sync::watch::Sender<Option<TreeProgress>>,
    /// A controller's cancel: a cut-short large file keeps no temporary file.
    cancelled: CancellationToken,
    /// The attempt's stop.
    stop: CancellationToken,
}

impl Task {
    /// Fetches `batch`. Files lost to the network, or refused by a busy source, are asked for
    /// again (a large one from what its temporary file holds), on a connection dialled anew if
    /// need be, until the command's timeout passes without a file arriving; any other failure
    /// is final.
    async fn run(self, batch: Vec<Want>) -> Fetched {
        let window = match self.cmd.timeout_secs {
            0 => DEFAULT_TIMEOUT,
            secs => Duration::from_secs(secs.into()),
        };
        let mut progress_at = Instant::now();
        let mut done = Vec::with_capacity(batch.len());
        let mut batch = batch;
        let mut peer = self.peer.clone();
        for attempt in 1.. {
            let results = fetch(&peer, &self, batch).await;
            if results.iter().any(|(_, r)| r.is_ok()) {
                progress_at = Instant::now();
            }
            let retry = !self.stop.is_cancelled() && progress_at.elapsed() < window;
            let (again, over): (Fetched, Fetched) = results.into_iter().partition(|(_, r)| {
                retry
                    && r.as_ref().is_err_and(|e| {
                        matches!(
                            e.code,
                            ErrorCode::Unavailable
                                | ErrorCode::DeadlineExceeded
                                | ErrorCode::ResourceExhausted
                        )
                    })
            });
            done.extend(over);
            if again.is_empty() {
                break;
            }
            tokio::select! {
                _ = self.stop.cancelled() => {}
                _ = tokio::time::sleep(backoff(attempt, rand::random::<f64>())) => {}
            }
            match self.pool.get(&self.cmd.source, &self.cmd.source_addr).await {
                Ok(fresh) if !self.stop.is_cancelled() => peer = fresh,
                Ok(_) => {
                    let stopped = WireError::new(ErrorCode::Cancelled, "the tree stopped");
                    done.extend(again.into_iter().map(|(w, _)| (w, Err(stopped.clone()))));
                    break;
                }
                Err(e) => {
                    let error = PullError::from(e).to_wire();
                    done.extend(again.into_iter().map(|(w, _)| (w, Err(error.clone()))));
                    break;
                }
            }
            // A large file goes on from what its temporary file holds now.
            let top = self.top.clone();
            let wants: Vec<Want> = again.into_iter().map(|(w, _)| w).collect();
            batch = tokio::task::spawn_blocking(move || {
                wants
                    .into_iter()
                    .map(|mut w| {
                        if w.size >= RESUME_MIN {
                            w.offset = leftover(&top, &w);
                        }
                        w
                    })
                    .collect()
            })
            .await
            .unwrap_or_default();
        }
        done
    }
}

/// What the temporary file of `want` holds that a resume may keep (see `left_behind`).
/// Blocking.
fn leftover(top: &OwnedFd, want: &Want) -> u64 {
    let (parent, last) = split_name(&want.name);
    match open_dir(top, parent) {
        Ok(dir) => left_behind(&dir, last, want.size),
        Err(_) => 0,
    }
}

/// Fetches `batch` on one stream and publishes each file that arrives intact.
async fn fetch(peer: &PeerConn, task: &Task, batch: Vec<Want>) -> Fetched {
    let (cmd, top, progress) = (&task.cmd, task.top.clone(), &task.progress);
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
    let cancelled = task.cancelled.clone();
    let protected = task.protected.clone();
    let writer =
        tokio::task::spawn_blocking(move || write_batch(&top, &protected, &wants, &cancelled, rx));
    let stream_error = receive(peer, cmd, &batch, expect, &tx, progress, &task.stop).await;
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

/// Sends the fetch request and passes what arrives to the writer. Returns the stream's error,
/// if it failed, for the files it did not deliver.
async fn receive(
    peer: &PeerConn,
    cmd: &ReplicateTree,
    batch: &[Want],
    expect: Option<FileVersion>,
    tx: &mpsc::Sender<WriteMsg>,
    progress: &tokio::sync::watch::Sender<Option<TreeProgress>>,
    stop: &CancellationToken,
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
        let read = tokio::select! {
            _ = stop.cancelled() => {
                let _ = recv.stop(crate::error::varint(ErrorCode::Cancelled));
                return Some(WireError::new(ErrorCode::Cancelled, "the tree stopped"));
            }
            read = tokio::time::timeout(STALL, framed::read_data_frame(&mut recv)) => read,
        };
        let read = match read {
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
            Ok(DataRead::Frame(DataFrame::Attested(_))) => {
                return protocol("an attestation in a tree's fetch".into())
            }
            // A tree's listing gives each file's bits; its fetch never asks for them.
            Ok(DataRead::Frame(DataFrame::Mode(_))) => {
                return protocol("permission bits in a tree's fetch".into())
            }
            Ok(DataRead::Chunk { offset, payload }) => {
                let Some((_, size, got, base)) = &mut current else {
                    return protocol("a chunk outside a file".into());
                };
                let len = payload.len() as u64;
                peer.received(len);
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
                if current.is_some() || request_id != next as u64 || next >= batch.len() {
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
                // The size listed bounds what is written: a file that changed since (or a
                // source that lies about it) fails alone, and the files after it are asked for
                // again on a new stream.
                if base + size != batch[next].size {
                    let changed = WireError::new(
                        ErrorCode::FailedPrecondition,
                        format!(
                            "the file changed on {} since it was listed ({} bytes, now {})",
                            cmd.source,
                            batch[next].size,
                            base.saturating_add(size)
                        ),
                    );
                    let _ = tx.send(WriteMsg::Failed(next, changed)).await;
                    return Some(WireError::new(
                        ErrorCode::Unavailable,
                        format!("not sent yet: a file before it changed on {}", cmd.source),
                    ));
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
        let dir = open_dir(&top, parent).ok()?;
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
