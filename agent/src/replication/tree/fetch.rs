//! The network side of fetching a tree's files: one stream per batch of files, what arrives
//! checked to come in order and within each file's size, then handed to the blocking writer
//! ([`super::write`]); files lost to the network are asked for again, a large file's leftover
//! bytes are checked with the source before a resume keeps them.
//!
//! It never writes to the target or hashes on an async worker: the writer and the hashing of a
//! leftover temporary file run on blocking threads.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

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

use super::write::{part_name, write_batch, WriteMsg};
use super::{split_name, Shared, Want, STALL};
use crate::error::ToWire;
use crate::framed::{self, write_frame, DataRead};
use crate::jail::open_in_tree;
use crate::pool::PeerConn;
use crate::replication::error::PullError;

/// How many times files lost to the network are asked for again.
const FETCH_RETRIES: u32 = 4;
/// The wait before the first retry; it doubles with each.
const RETRY_BACKOFF: Duration = Duration::from_millis(500);

/// What one fetch did to each of its files.
type Fetched = Vec<(Want, Result<(), WireError>)>;

/// Starts a fetch once a stream slot is free.
pub(super) async fn spawn_fetch(
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
pub(super) fn reap(shared: &Shared<'_>, fetches: &mut JoinSet<Fetched>) {
    while let Some(done) = fetches.try_join_next() {
        record(shared, done);
    }
}

pub(super) fn record(shared: &Shared<'_>, done: Result<Fetched, tokio::task::JoinError>) {
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
