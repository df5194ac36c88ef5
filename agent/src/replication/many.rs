//! One file from several sources at once ([`ReplicateMany`]): the sources must agree on the file
//! before any byte is written, then the file is split into pieces and each piece is taken from
//! whichever source is free, so that with several sources whose uplinks are the bottleneck the
//! rates add up.
//!
//! 1. **Agreement.** Every source is asked for its attestation (a relay read of the empty range,
//!    each source its own origin): its version of the file, signed with its SHA-256. Sources that
//!    cannot be reached are left out; sources that disagree on the size or the SHA-256 refuse the
//!    whole transfer (`FailedPrecondition`, naming them) before the temporary file exists.
//! 2. **Pieces.** [`STREAMS_PER_SOURCE`] workers per source take the next piece from one queue,
//!    read it with a ranged relay read, and write it at its offset. A piece that fails goes back
//!    to the queue for any worker; a source that fails [`MAX_FAILURES`] times in a row is dropped,
//!    and the transfer fails only when no source is left. Once a piece is marked written, no
//!    stream writes to it again (an endgame's second copy stops at its next chunk).
//! 3. **Verification.** A blocking thread hashes the file back from the page cache in order, each
//!    piece as soon as it and those before it are written, so that little is left to hash at the
//!    end. The digest must equal the agreed SHA-256 (and the command's, if it gives one); only
//!    then is the file synced and renamed into place. The pieces' own trailers are not hashed:
//!    they come from the same source as the bytes, QUIC's encryption already guards the bytes in
//!    transit, and the whole-file check against the attested digest is what decides.
//!
//! Not journaled: a star stopped in the middle removes the temporary file, and the next command
//! starts over.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tracing::{info, warn};

use orbit_wire::fanout::{ReplicateMany, Upstream, DEFAULT_PIECE};
use orbit_wire::{ByteRange, ControlEvent, DataFrame, ErrorCode, FileVersion, WireError};

use super::driver::{check_attestation, common_mode, open_relay};
use super::error::{Local, PullError};
use super::machine::{backoff, Replicated};
use super::registry::Transfer;
use super::Replicator;
use crate::error::ToWire;
use crate::framed::{self, DataRead};
use crate::jail::{Confined, TargetDir};

/// Ranged reads in flight per source.
pub(super) const STREAMS_PER_SOURCE: usize = 2;
/// Failures in a row after which a source is given up.
pub(super) const MAX_FAILURES: u32 = 3;
/// The smallest piece a command may ask for.
const MIN_PIECE: u64 = 1024 * 1024;

/// What one source holds, as it attested.
#[derive(Clone, Debug)]
struct Held {
    source: Upstream,
    version: FileVersion,
    sha256: [u8; 32],
    /// The file's permission bits, if the source gave them.
    mode: Option<u32>,
}

/// The pieces still to fetch, shared by the workers.
#[derive(Debug)]
struct Pieces {
    state: Mutex<PieceState>,
    moved: Notify,
    /// Wakes the hashing thread when a piece is written or the transfer stops.
    written: Condvar,
}

#[derive(Debug)]
struct PieceState {
    /// Pieces no one is fetching, next first.
    queue: VecDeque<u64>,
    /// Pieces being fetched, oldest first.
    in_flight: VecDeque<u64>,
    /// Which pieces are written.
    done: Vec<bool>,
    /// How many are not.
    left: u64,
    /// The transfer stopped: the hashing thread gives up.
    stopped: bool,
}

impl Pieces {
    fn new(count: u64) -> Pieces {
        Pieces {
            state: Mutex::new(PieceState {
                queue: (0..count).collect(),
                in_flight: VecDeque::new(),
                done: vec![false; count as usize],
                left: count,
                stopped: false,
            }),
            moved: Notify::new(),
            written: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PieceState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next piece to fetch; `None` once every piece is written. When none is left to
    /// start, a piece another worker is still fetching (BitTorrent's endgame): a source that
    /// went away mid-piece then holds no one up.
    async fn next(&self) -> Option<u64> {
        loop {
            let moved = self.moved.notified();
            {
                let mut state = self.lock();
                if state.left == 0 {
                    return None;
                }
                if let Some(piece) = state.queue.pop_front() {
                    state.in_flight.push_back(piece);
                    return Some(piece);
                }
                if let Some(piece) = state.in_flight.pop_front() {
                    state.in_flight.push_back(piece);
                    return Some(piece);
                }
            }
            moved.await;
        }
    }

    /// Waits until every piece is written.
    async fn finished(&self) {
        loop {
            let moved = self.moved.notified();
            if self.lock().left == 0 {
                return;
            }
            moved.await;
        }
    }

    /// Marks `piece` written; whether it was news (an endgame copy may finish second).
    fn done(&self, piece: u64) -> bool {
        let news = {
            let mut state = self.lock();
            state.in_flight.retain(|p| *p != piece);
            let news = !std::mem::replace(&mut state.done[piece as usize], true);
            if news {
                state.left -= 1;
            }
            news
        };
        self.moved.notify_waiters();
        self.written.notify_all();
        news
    }

    /// Writes `data` at `at` inside `piece`, unless the piece is already written: the lock makes
    /// sure no byte of a piece changes once it is marked written (and may have been hashed).
    /// Returns whether it wrote. Blocking.
    fn write_unless_done(
        &self,
        out: &File,
        piece: u64,
        data: &[bytes::Bytes],
        mut at: u64,
    ) -> std::io::Result<bool> {
        let state = self.lock();
        if state.done[piece as usize] {
            return Ok(false);
        }
        for part in data {
            out.write_all_at(part, at)?;
            at += part.len() as u64;
        }
        Ok(true)
    }

    /// Tells the hashing thread to give up.
    fn stop(&self) {
        self.lock().stopped = true;
        self.written.notify_all();
    }

    /// Blocks until `piece` is written; false if the transfer stopped first.
    fn wait_written(&self, piece: u64) -> bool {
        let mut state = self.lock();
        loop {
            if state.done[piece as usize] {
                return true;
            }
            if state.stopped {
                return false;
            }
            state = self.written.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Gives `piece` back for any worker, unless it was written meanwhile.
    fn put_back(&self, piece: u64) {
        {
            let mut state = self.lock();
            state.in_flight.retain(|p| *p != piece);
            if !state.done[piece as usize] && !state.queue.contains(&piece) {
                state.queue.push_front(piece);
            }
        }
        self.moved.notify_waiters();
    }
}

/// The whole transfer: agreement, pieces, verification, publish.
pub(super) async fn replicate(
    replicator: &Replicator,
    cmd: &ReplicateMany,
    target: &Confined,
    transfer: &Transfer,
) -> Result<Replicated, PullError> {
    let file = &cmd.file;
    orbit_wire::path::validate(&file.source_path)
        .map_err(|e| PullError::BadSourcePath(e.to_string()))?;
    let mut sources = vec![Upstream {
        star: file.source.clone(),
        addr: file.source_addr.clone(),
        path: file.source_path.clone(),
        token: file.token.clone(),
    }];
    sources.extend(cmd.also.iter().cloned());
    let held = tokio::select! {
        held = agree(replicator, transfer, file.transfer_id, &sources) => held?,
        _ = transfer.cancel.cancelled() => return Err(PullError::Cancelled),
        _ = replicator.life.cancel.cancelled() => return Err(PullError::ShuttingDown {
            star: replicator.star.clone(),
            resumes: false,
        }),
    };
    let (size, sha256) = (held[0].version.size, held[0].sha256);
    // A copy no more open than any source's file; the default when none said.
    let mode = held
        .iter()
        .filter_map(|h| h.mode)
        .reduce(|known, bits| common_mode(Some(known), bits));
    if let Some(expect) = file.expect_sha256.filter(|e| *e != sha256) {
        return Err(PullError::Mismatch(format!(
            "the sources' SHA-256 is {}, the command expects {}",
            hex::encode(sha256),
            hex::encode(expect)
        )));
    }
    let piece = match cmd.piece_size {
        0 => DEFAULT_PIECE,
        n => n.max(MIN_PIECE),
    };
    info!(
        transfer = %file.transfer_id, sources = held.len(), size, piece,
        "the sources agree; fetching the pieces"
    );
    transfer.progress.send_replace((0, size));

    let store = replicator.store.clone();
    let (target_dir, part, out) = {
        let target = target.clone();
        let tag = format!("{}-{:08x}", file.transfer_id, rand::random::<u32>());
        let target_path = file.target_path.clone();
        blocking(move || {
            let dir = store
                .jail
                .prepare_target(&target)
                .map_err(|e| target_error(&target_path, e.to_wire()))?;
            let (out, part) = dir
                .create_part(&tag)
                .map_err(|e| target_error(&target_path, e.to_wire()))?;
            out.set_len(size).map_err(disk_error)?;
            Ok((Arc::new(dir), part, Arc::new(out)))
        })
        .await?
    };
    let fetched = tokio::select! {
        fetched = fetch_all(replicator, transfer, file.transfer_id, &held, &out, size, piece) => fetched,
        _ = transfer.cancel.cancelled() => Err(PullError::Cancelled),
        _ = replicator.life.cancel.cancelled() => Err(PullError::ShuttingDown {
            star: replicator.star.clone(),
            resumes: false,
        }),
    };
    let published = match fetched {
        Ok(got) => {
            let (dir, part) = (target_dir.clone(), part.clone());
            blocking(move || verify_and_publish(&out, got, sha256, &dir, &part, mode)).await
        }
        Err(e) => Err(e),
    };
    if published.is_err() {
        blocking(move || {
            target_dir.remove_part(&part);
            Ok(())
        })
        .await?;
    }
    published.map(|()| Replicated {
        bytes: size,
        sha256,
    })
}

/// Asks every source for its attestation; keeps those that answer, and fails if they disagree.
async fn agree(
    replicator: &Replicator,
    transfer: &Transfer,
    id: orbit_wire::TransferId,
    sources: &[Upstream],
) -> Result<Vec<Held>, PullError> {
    let mut asked = tokio::task::JoinSet::new();
    for (i, source) in sources.iter().enumerate() {
        let pool = replicator.pool.clone();
        let attester = replicator.trust.attester();
        let source = source.clone();
        asked.spawn(async move {
            let held = attested(&pool, &attester, id, &source).await;
            (i, source, held)
        });
    }
    let mut answers = Vec::new();
    while let Some(answer) = asked.join_next().await {
        answers.push(answer.map_err(|e| PullError::Internal(e.to_string()))?);
    }
    answers.sort_by_key(|(i, ..)| *i);
    let mut held = Vec::new();
    let mut first_error = None;
    for (_, source, answer) in answers {
        match answer {
            Ok(h) => held.push(h),
            Err(e) => {
                warn!(transfer = %id, source = %source.star, "leaving out a source: {e}");
                let _ = transfer.notes.send(ControlEvent::Retrying {
                    attempt: 0,
                    after_ms: 0,
                    reason: format!("leaving out {}: {e}", source.star),
                });
                first_error.get_or_insert(e);
            }
        }
    }
    let Some(first) = held.first() else {
        return Err(first_error.unwrap_or_else(|| PullError::Internal("no source".into())));
    };
    let disagree: Vec<String> = held
        .iter()
        .filter(|h| h.version.size != first.version.size || h.sha256 != first.sha256)
        .map(describe)
        .collect();
    if !disagree.is_empty() {
        return Err(PullError::Disagree(format!(
            "{}; but {}",
            describe(first),
            disagree.join(", ")
        )));
    }
    Ok(held)
}

fn describe(held: &Held) -> String {
    format!(
        "{} has {} bytes with SHA-256 {}",
        held.source.star,
        held.version.size,
        hex::encode(held.sha256)
    )
}

/// One source's signed word on its file.
async fn attested(
    pool: &Arc<crate::pool::Pool>,
    attester: &orbit_certs::Attester,
    id: orbit_wire::TransferId,
    source: &Upstream,
) -> Result<Held, PullError> {
    let star = &source.star;
    let empty = ByteRange { start: 0, end: 0 };
    let (first, mut recv, _peer) = open_relay(pool, id, star, source, empty).await?;
    let version = match first {
        DataFrame::Header { version, .. } => version,
        DataFrame::Error { error, .. } => {
            return Err(PullError::Refused {
                source_star: star.clone(),
                error,
            })
        }
        _ => return Err(protocol(star, "no header")),
    };
    let mut mode = None;
    loop {
        match framed::read_data_frame(&mut recv).await {
            Ok(DataRead::Frame(DataFrame::Trailer { .. })) => {}
            Ok(DataRead::Frame(DataFrame::Mode(bits))) => mode = Some(common_mode(mode, bits)),
            Ok(DataRead::Frame(DataFrame::Attested(attestation))) => {
                check_attestation(attester, &attestation, id, source)
                    .and_then(|()| match attestation.claims.version == version {
                        true => Ok(()),
                        false => Err("it is for another version of the file".into()),
                    })
                    .map_err(|why| PullError::BadAttestation {
                        star: star.clone(),
                        why,
                    })?;
                return Ok(Held {
                    source: source.clone(),
                    version,
                    sha256: attestation.claims.sha256,
                    mode,
                });
            }
            Ok(DataRead::Frame(DataFrame::Error { error, .. })) => {
                return Err(PullError::SourceFailed {
                    source_star: star.clone(),
                    error,
                })
            }
            Ok(_) => return Err(protocol(star, "a frame out of place")),
            Err(e) => {
                let e = e.to_wire();
                return Err(PullError::Lost {
                    source_star: star.clone(),
                    what: "the attestation",
                    code: e.code,
                    message: e.message,
                });
            }
        }
    }
}

/// Stops the hashing thread when the fetch ends, however it ends (an error, a cancel that drops
/// the future).
struct StopHashing(Arc<Pieces>);

impl Drop for StopHashing {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// Hashes the file in order, each piece once it is written. `None` if the transfer stopped.
fn hash_in_order(
    pieces: &Pieces,
    out: &File,
    size: u64,
    piece: u64,
) -> std::io::Result<Option<[u8; 32]>> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1024 * 1024];
    for index in 0..size.div_ceil(piece) {
        if !pieces.wait_written(index) {
            return Ok(None);
        }
        let (mut offset, end) = (index * piece, ((index + 1) * piece).min(size));
        while offset < end {
            let want = (end - offset).min(buf.len() as u64) as usize;
            out.read_exact_at(&mut buf[..want], offset)?;
            hasher.update(&buf[..want]);
            offset += want as u64;
        }
    }
    Ok(Some(hasher.finalize().into()))
}

/// Runs the workers until every piece is written, or every source has failed; returns the
/// SHA-256 of what was written.
async fn fetch_all(
    replicator: &Replicator,
    transfer: &Transfer,
    id: orbit_wire::TransferId,
    held: &[Held],
    out: &Arc<File>,
    size: u64,
    piece: u64,
) -> Result<[u8; 32], PullError> {
    let pieces = Arc::new(Pieces::new(size.div_ceil(piece)));
    let stop_hashing = StopHashing(pieces.clone());
    let hashing = {
        let (pieces, out) = (pieces.clone(), out.clone());
        tokio::task::spawn_blocking(move || hash_in_order(&pieces, &out, size, piece))
    };
    let written = Arc::new(Mutex::new(0u64));
    let mut workers = tokio::task::JoinSet::new();
    for source in held {
        for _ in 0..STREAMS_PER_SOURCE {
            let worker = Worker {
                pool: replicator.pool.clone(),
                id,
                source: source.clone(),
                out: out.clone(),
                pieces: pieces.clone(),
                size,
                piece,
                written: written.clone(),
                progress: transfer.progress.clone(),
            };
            workers.spawn(worker.run());
        }
    }
    let mut last = None;
    loop {
        // Once every piece is written, a worker still waiting on a source that went away (a
        // dial, a stalled stream) is not waited for: dropping the set stops it.
        let ended = tokio::select! {
            ended = workers.join_next() => ended,
            () = pieces.finished() => break,
        };
        let Some(ended) = ended else { break };
        match ended {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = transfer.notes.send(ControlEvent::Retrying {
                    attempt: 0,
                    after_ms: 0,
                    reason: format!("giving up one stream from a source: {e}"),
                });
                last = Some(e);
            }
            Err(e) => last = Some(PullError::Internal(e.to_string())),
        }
    }
    if pieces.lock().left != 0 {
        return Err(last.unwrap_or_else(|| PullError::Internal("the workers stopped".into())));
    }
    drop(stop_hashing);
    match hashing.await {
        Ok(Ok(Some(sha256))) => Ok(sha256),
        Ok(Ok(None)) => Err(PullError::Internal("the hashing stopped early".into())),
        Ok(Err(e)) => Err(disk_error(e)),
        Err(e) => Err(PullError::Internal(format!("the hashing task failed: {e}"))),
    }
}

/// One ranged stream from one source.
struct Worker {
    pool: Arc<crate::pool::Pool>,
    id: orbit_wire::TransferId,
    source: Held,
    out: Arc<File>,
    pieces: Arc<Pieces>,
    size: u64,
    piece: u64,
    written: Arc<Mutex<u64>>,
    progress: tokio::sync::watch::Sender<(u64, u64)>,
}

impl Worker {
    async fn run(self) -> Result<(), PullError> {
        let mut failures = 0;
        while let Some(index) = self.pieces.next().await {
            let start = index * self.piece;
            let end = (start + self.piece).min(self.size);
            match self.fetch(index, start, end).await {
                Ok(()) => {
                    failures = 0;
                    if self.pieces.done(index) {
                        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
                        *written += end - start;
                        self.progress.send_replace((*written, self.size));
                    }
                }
                Err(e) => {
                    self.pieces.put_back(index);
                    failures += 1;
                    let star = &self.source.source.star;
                    warn!(transfer = %self.id, source = %star, start, end, "a piece failed: {e}");
                    if failures >= MAX_FAILURES || !e.is_transient() {
                        return Err(e);
                    }
                    tokio::time::sleep(backoff(failures, rand::random())).await;
                }
            }
        }
        Ok(())
    }

    /// Reads `[start, end)`, piece `index`, from the source and writes it at its offset; stops
    /// early, successfully, when another stream has written the piece first.
    async fn fetch(&self, index: u64, start: u64, end: u64) -> Result<(), PullError> {
        let source = &self.source.source;
        let star = &source.star;
        let range = ByteRange { start, end };
        let (first, mut recv, peer) = open_relay(&self.pool, self.id, star, source, range).await?;
        match first {
            DataFrame::Header { size, version, .. }
                if size == end - start && version == self.source.version => {}
            DataFrame::Header { .. } => {
                return Err(PullError::SourceFailed {
                    source_star: star.clone(),
                    error: WireError::new(
                        ErrorCode::FailedPrecondition,
                        "the source's file changed since it attested it",
                    ),
                })
            }
            DataFrame::Error { error, .. } => {
                return Err(PullError::Refused {
                    source_star: star.clone(),
                    error,
                })
            }
            _ => return Err(protocol(star, "no header")),
        }
        let mut offset = start;
        loop {
            let read = tokio::time::timeout(STALL, framed::read_data_frame(&mut recv)).await;
            let read = read.map_err(|_| PullError::Stalled {
                source_star: star.clone(),
                offset,
                total: self.size,
                seconds: STALL.as_secs_f64(),
            })?;
            match read {
                Ok(DataRead::Chunk {
                    offset: at,
                    payload,
                }) => {
                    let len = payload.len() as u64;
                    peer.received(len);
                    if at != offset || offset + len > end {
                        return Err(protocol(star, "a chunk out of order or past its range"));
                    }
                    let (out, pieces) = (self.out.clone(), self.pieces.clone());
                    let data = payload.pieces().to_vec();
                    let wrote = tokio::task::spawn_blocking(move || {
                        pieces.write_unless_done(&out, index, &data, at)
                    })
                    .await
                    .map_err(|e| PullError::Internal(e.to_string()))?
                    .map_err(disk_error)?;
                    if !wrote {
                        // Another stream finished this piece (the endgame): dropping the
                        // stream tells the source to stop.
                        return Ok(());
                    }
                    offset += len;
                }
                Ok(DataRead::Frame(DataFrame::Trailer { .. })) => {
                    if offset != end {
                        return Err(protocol(star, "the piece ended short of its range"));
                    }
                    // The attestation that follows was checked at the start; read to the end
                    // so that the source's stream ends as it should.
                    let _ = framed::read_data_frame(&mut recv).await;
                    return Ok(());
                }
                Ok(DataRead::Frame(DataFrame::Error { error, .. })) => {
                    return Err(PullError::SourceFailed {
                        source_star: star.clone(),
                        error,
                    })
                }
                // Taken at the agreement, from every source.
                Ok(DataRead::Frame(DataFrame::Mode(_))) => {}
                Ok(DataRead::Frame(_)) => return Err(protocol(star, "a frame out of place")),
                Err(e) => {
                    let e = e.to_wire();
                    return Err(PullError::Broken {
                        source_star: star.clone(),
                        offset,
                        total: self.size,
                        code: e.code,
                        message: e.message,
                    });
                }
            }
        }
    }
}

/// How long a ranged read may stay silent.
const STALL: Duration = super::machine::STALL_TIMEOUT;

/// Checks the SHA-256 of what was written (`got`) against the agreed one, syncs the file and
/// renames it into place.
fn verify_and_publish(
    out: &File,
    got: [u8; 32],
    sha256: [u8; 32],
    dir: &TargetDir,
    part: &str,
    mode: Option<u32>,
) -> Result<(), PullError> {
    if got != sha256 {
        return Err(PullError::Mismatch(format!(
            "the pieces add up to SHA-256 {}, the sources attested {}",
            hex::encode(got),
            hex::encode(sha256)
        )));
    }
    out.sync_all().map_err(disk_error)?;
    dir.publish(part, out, mode).map_err(|e| {
        PullError::Disk(Local(WireError::new(
            e.to_wire().code,
            format!("cannot publish the file: {e}"),
        )))
    })
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, PullError> + Send + 'static,
) -> Result<T, PullError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| PullError::Internal(format!("the disk task failed: {e}")))?
}

fn protocol(star: &str, what: &str) -> PullError {
    PullError::Protocol {
        source_star: star.to_owned(),
        what: what.to_owned(),
    }
}

fn disk_error(e: std::io::Error) -> PullError {
    let e = e.to_wire();
    PullError::Disk(Local(WireError::new(
        e.code,
        format!("writing the temporary file: {}", e.message),
    )))
}

fn target_error(path: &str, cause: WireError) -> PullError {
    PullError::Target {
        path: path.to_owned(),
        cause: Local(cause),
    }
}
