//! One file from several sources at once ([`ReplicateMany`]): the sources must agree on the file
//! before any byte is written, then the file is split into pieces and each piece is taken from
//! whichever source is free, so that with several sources whose uplinks are the bottleneck the
//! rates add up.
//!
//! 1. **Agreement.** Every source is asked for its attestation (a relay read of the empty range,
//!    each source its own origin): its version of the file, signed with its SHA-256. Sources that
//!    cannot be reached are left out; sources that disagree on the size or the SHA-256 refuse the
//!    whole transfer (`FailedPrecondition`, naming them) before the temporary file exists. One
//!    source alone (several connections to it) has no one to agree with: the fetch starts once
//!    it has named its version, and its SHA-256, which a source that has not hashed this version
//!    yet sends only after hashing it whole, is awaited beside the pieces.
//! 2. **Pieces.** The file is split into pieces, taken from one queue by [`STREAMS_PER_SOURCE`]
//!    workers per *lane*; a lane is one QUIC connection to one source ([`Pool::get_lane`]). A
//!    source gets as many lanes as the command names it (a source repeated among the others is
//!    one more connection to it: `orbitctl replicate --connections N`), or else as many as the
//!    star's `connections` setting gives for the file's size and the host's CPUs
//!    ([`crate::limits::Connections::for_file`]). Each connection is driven by one task, so that
//!    the packet work and crypto of one file spread over cores. A worker reads its piece with a
//!    ranged relay read and writes it at its offset. A piece that fails goes back to the queue
//!    for any worker; a worker that fails [`MAX_FAILURES`] times in a row stops, and the
//!    transfer fails only when no worker is left. One stream fetches a piece at a time (no
//!    endgame, [`Pieces::next`]); its bytes all come from the first source that writes to it
//!    until that source gives it back, and once it is marked written no stream writes to it.
//! 3. **Verification.** A blocking thread hashes the file back from the page cache in order, each
//!    piece as soon as it and those before it are written, so that little is left to hash at the
//!    end. The digest must equal the agreed SHA-256 (and the command's, if it gives one); only
//!    then is the file synced and renamed into place. The pieces are asked for without a digest
//!    of their own ([`orbit_wire::RANGE_UNHASHED`]), so the sources do not hash them: it would
//!    come from the same source as the bytes, QUIC's encryption already guards the bytes in
//!    transit, and the whole-file check against the attested digest is what decides. When it
//!    fails with several sources, [`pinpoint`] finds the source whose pieces explain it: for each
//!    source in turn the file is hashed again with that source's pieces read from another one
//!    instead, and the one for which the digest then adds up is named in the error. Nothing is
//!    published either way.
//! 4. **Journal.** With a state directory, the transfer has an entry in the star's journal
//!    ([`crate::journal`], the same entries as a single file's, with [`PiecesEntry`]) written
//!    before the temporary file exists. Every [`CHECKPOINT`] bytes of whole pieces hashed in
//!    order, the hashing thread syncs the file and records that prefix and its SHA-256. A star
//!    stopped or killed resumes the transfer at its next start: once the sources agree again on
//!    the same size and SHA-256 and the prefix on disk still hashes to the journal's digest, only
//!    the pieces after it are fetched (pieces written beyond the prefix are fetched again: they
//!    were never verified in order). Anything else starts from zero. Nothing is published
//!    before the whole file's SHA-256 is checked.

use std::collections::VecDeque;
use std::fs::File;
use std::future::Future;
use std::os::unix::fs::FileExt as _;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tracing::{info, warn};

use orbit_wire::fanout::{ReplicateMany, Upstream, DEFAULT_PIECE};
use orbit_wire::{
    ByteRange, ControlEvent, DataFrame, ErrorCode, FileVersion, WireError, RANGE_UNHASHED,
    WANTS_MODE,
};

use super::driver::{check_attestation, common_mode, open_relay_on};
use super::error::{Local, PullError};
use super::machine::{backoff, Replicated, CHECKPOINT};
use super::registry::Transfer;
use super::Replicator;
use crate::error::ToWire;
use crate::framed::{self, DataRead};
use crate::jail::{Confined, TargetDir};
use crate::journal::{Entry, Journal, PiecesEntry};
use crate::pool::PeerConn;
#[cfg(doc)]
use crate::pool::Pool;

/// Ranged reads in flight per source.
pub(super) const STREAMS_PER_SOURCE: usize = 2;
/// Failures in a row after which a source is given up.
pub(super) const MAX_FAILURES: u32 = 3;
/// The smallest piece a command may ask for.
const MIN_PIECE: u64 = 1024 * 1024;
/// A piece's relay request asks for the permission bits, and for no digest of the piece: the
/// whole file is checked against the attested SHA-256, so the source need not hash it twice.
const PIECE: u64 = WANTS_MODE | RANGE_UNHASHED;

/// What one source holds, as it attested.
#[derive(Clone, Debug)]
struct Held {
    source: Upstream,
    version: FileVersion,
    sha256: [u8; 32],
    /// The file's permission bits, if the source gave them.
    mode: Option<u32>,
}

/// The pieces still to fetch, shared by the workers. `state` is locked by async tasks too, so
/// no disk or journal I/O runs under it.
#[derive(Debug)]
struct Pieces {
    state: Mutex<PieceState>,
    moved: Notify,
    /// Wakes the hashing thread when a piece is written, a write ends, or the transfer stops.
    written: Condvar,
    /// Held by a checkpoint's journal write and by [`Pieces::stop`], so that once the transfer
    /// is stopped (a cancel that removes the entry next) no checkpoint writes the entry back.
    journaling: Mutex<()>,
}

#[derive(Debug)]
struct PieceState {
    /// Pieces no one is fetching, next first.
    queue: VecDeque<u64>,
    /// Which pieces are written.
    done: Vec<bool>,
    /// How many are not.
    left: u64,
    /// The transfer stopped: the hashing thread gives up.
    stopped: bool,
    /// Which source (index in the agreed list) writes or wrote each piece: the first to write
    /// to it, until it gives it back; `u32::MAX` for none yet or one resumed. Only its streams
    /// write to the piece, so that a piece's bytes all come from one source and a bad one can be
    /// named ([`pinpoint`]).
    by: Vec<u32>,
    /// Writes into each piece running now, outside the lock; the piece is hashed only once it is
    /// written and none runs.
    writing: Vec<u32>,
}

impl Pieces {
    /// `count` pieces, those before `first` already written (a resume).
    fn new(count: u64, first: u64) -> Pieces {
        let first = first.min(count);
        Pieces {
            state: Mutex::new(PieceState {
                queue: (first..count).collect(),
                done: (0..count).map(|i| i < first).collect(),
                left: count - first,
                stopped: false,
                by: vec![u32::MAX; count as usize],
                writing: vec![0; count as usize],
            }),
            moved: Notify::new(),
            written: Condvar::new(),
            journaling: Mutex::new(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PieceState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next piece to fetch; `None` once every piece is written. No endgame: a piece another
    /// stream is fetching is not fetched twice. Another source's bytes would be refused (a
    /// piece's bytes all come from one source), and a second stream to the same source shares
    /// its uplink; either way the duplicate only took the uplink's time (four sources sent 288
    /// MiB for 256, bench/RESULTS.md). A stream that stops mid-piece fails (at the latest after
    /// [`STALL`] without a byte) and gives the piece back to all.
    async fn next(&self) -> Option<u64> {
        loop {
            let moved = self.moved.notified();
            {
                let mut state = self.lock();
                if state.left == 0 {
                    return None;
                }
                if let Some(piece) = state.queue.pop_front() {
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

    /// Marks `piece` written; whether it was news.
    fn done(&self, piece: u64, by: u32) -> bool {
        let news = {
            let mut state = self.lock();
            let news = !std::mem::replace(&mut state.done[piece as usize], true);
            if news {
                state.left -= 1;
                state.by[piece as usize] = by;
            }
            news
        };
        self.moved.notify_waiters();
        self.written.notify_all();
        news
    }

    /// Writes `data` from source `who` at `at` inside `piece`, unless the piece is already
    /// written or another source writes it. No write starts once the piece is marked written,
    /// and the hashing thread waits for those running ([`Pieces::wait_written`]), so no byte of
    /// a piece changes after it may have been hashed. Returns whether it wrote. Blocking.
    fn write_unless_done(
        &self,
        out: &File,
        piece: u64,
        who: u32,
        data: &[bytes::Bytes],
        mut at: u64,
    ) -> std::io::Result<bool> {
        let p = piece as usize;
        {
            let mut state = self.lock();
            if (state.by[p] != u32::MAX && state.by[p] != who) || state.done[p] {
                return Ok(false);
            }
            state.by[p] = who;
            state.writing[p] += 1;
        }
        let wrote = data.iter().try_for_each(|part| {
            out.write_all_at(part, at)?;
            at += part.len() as u64;
            Ok(())
        });
        self.lock().writing[p] -= 1;
        self.written.notify_all();
        wrote.map(|()| true)
    }

    /// Tells the hashing thread to give up, after the checkpoint it may be journaling.
    fn stop(&self) {
        let _journaling = self.journaling.lock().unwrap_or_else(|e| e.into_inner());
        self.lock().stopped = true;
        self.written.notify_all();
    }

    /// Blocks until `piece` is written and no write into it runs; false if the transfer
    /// stopped first.
    fn wait_written(&self, piece: u64) -> bool {
        let mut state = self.lock();
        loop {
            if state.done[piece as usize] && state.writing[piece as usize] == 0 {
                return true;
            }
            if state.stopped {
                return false;
            }
            state = self.written.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Gives `piece`, which `who` failed to fetch, back for any worker, unless it was written
    /// meanwhile; another source may then write it.
    fn put_back(&self, piece: u64, who: u32) {
        {
            let mut state = self.lock();
            if !state.done[piece as usize] && state.by[piece as usize] == who {
                state.by[piece as usize] = u32::MAX;
            }
            if !state.done[piece as usize] && !state.queue.contains(&piece) {
                state.queue.push_front(piece);
            }
        }
        self.moved.notify_waiters();
    }
}

/// The whole transfer: agreement, pieces, verification, publish. With `resume`, the journal's
/// entry from before this star stopped.
pub(super) async fn replicate(
    replicator: &Replicator,
    cmd: &ReplicateMany,
    target: &Confined,
    transfer: &Transfer,
    resume: Option<Entry>,
) -> Result<Replicated, PullError> {
    let file = &cmd.file;
    orbit_wire::path::validate(&file.source_path)
        .map_err(|e| PullError::BadSourcePath(e.to_string()))?;
    let mut named = vec![Upstream {
        star: file.source.clone(),
        addr: file.source_addr.clone(),
        path: file.source_path.clone(),
        token: file.token.clone(),
    }];
    named.extend(cmd.also.iter().cloned());
    let (sources, counts) = distinct(named);
    let journaled = replicator.store.journal.is_some();
    let shutting_down = || PullError::ShuttingDown {
        star: replicator.star.clone(),
        resumes: journaled,
    };
    // One source (over several connections) has no one to agree with: its pieces are fetched
    // while it attests, which a source that has not hashed this version yet does only after
    // hashing it whole. Several sources agree first, before any byte is written; so does a
    // resume, whose journaled bytes are kept only if the source's SHA-256 is the same.
    let alone = sources.len() == 1 && resume.is_none();
    let (held, attesting) = tokio::select! {
        held = agree(replicator, transfer, file.transfer_id, &sources, alone) => held?,
        _ = transfer.cancel.cancelled() => return Err(PullError::Cancelled),
        _ = replicator.life.cancel.cancelled() => return Err(shutting_down()),
    };
    // Zero until a lone source's attestation arrives.
    let (size, sha256) = (held[0].version.size, held[0].sha256);
    // A copy no more open than any source's file; the default when none said.
    let mode = held
        .iter()
        .filter_map(|h| h.mode)
        .reduce(|known, bits| common_mode(Some(known), bits));
    if attesting.is_none() {
        expected(file, sha256)?;
    }
    let piece = match cmd.piece_size {
        0 => DEFAULT_PIECE,
        n => n.max(MIN_PIECE),
    };
    // The command's count when it names one (a source repeated), else the star's setting.
    let setting = replicator.connections.for_file(size, cpus());
    let lanes: Vec<usize> = match counts.iter().any(|n| *n > 1) {
        true => held
            .iter()
            .map(|h| counts[sources.iter().position(|s| same(s, &h.source)).unwrap_or(0)])
            .collect(),
        false => vec![setting; held.len()],
    };

    let opened = {
        let (store, target) = (replicator.store.clone(), target.clone());
        let part = PiecesEntry {
            also: cmd.also.clone(),
            piece_size: cmd.piece_size,
            piece,
            sha256: hex::encode(sha256),
        };
        let (command, version) = (file.clone(), held[0].version);
        blocking(move || open_part(&store, &target, command, version, part, resume)).await?
    };
    let Opened {
        dir: target_dir,
        part,
        out,
        first,
        hasher,
        entry,
    } = opened;
    let piece = entry
        .as_ref()
        .and_then(|e| e.pieces.as_ref())
        .map_or(piece, |p| p.piece);
    let resumed = (first * piece).min(size);
    let agreed = match attesting {
        Some(_) => "one source, its SHA-256 to come",
        None => "the sources agree",
    };
    info!(
        transfer = %file.transfer_id, sources = held.len(), connections = ?lanes, size, piece, resumed,
        "{agreed}; fetching the pieces"
    );
    transfer.progress.send_replace((resumed, size));
    let kept = entry.is_some();
    let checkpoints = replicator.store.journal.clone().zip(entry);
    let attested = Arc::new(OnceLock::new());
    if attesting.is_none() {
        let _ = attested.set(sha256);
    }
    let start = Start {
        first,
        hasher,
        checkpoints,
        attested: attested.clone(),
    };
    let fetch = async {
        let fetched = fetch_all(
            replicator,
            transfer,
            file.transfer_id,
            &held,
            &lanes,
            &out,
            size,
            piece,
            start,
        );
        let Some(attesting) = attesting else {
            return fetched.await.map(|got| (got, sha256));
        };
        // The lone source's word, checked as soon as it comes: a file the command does not
        // expect stops the fetch.
        let attesting = async {
            let sha256 = attesting.await?;
            expected(file, sha256)?;
            let _ = attested.set(sha256);
            Ok(sha256)
        };
        let (got, sha256) = tokio::try_join!(fetched, attesting)?;
        Ok((got, sha256))
    };
    let fetched = tokio::select! {
        fetched = fetch => fetched,
        _ = transfer.cancel.cancelled() => Err(PullError::Cancelled),
        _ = replicator.life.cancel.cancelled() => Err(shutting_down()),
    };
    let (fetched, sha256) = match fetched {
        Ok((got, sha256)) => (Ok(got), sha256),
        Err(e) => (Err(e), sha256),
    };
    // A file that does not add up from several sources: find the source whose pieces make it so.
    let fetched = match fetched {
        Ok((got, by)) if got != sha256 && held.len() > 1 => {
            let suspect = tokio::select! {
                found = pinpoint(replicator, file.transfer_id, &held, &by, &out, size, piece, sha256) => found,
                _ = transfer.cancel.cancelled() => None,
                _ = replicator.life.cancel.cancelled() => None,
            };
            match suspect {
                Some(named) => Err(PullError::Mismatch(format!(
                    "the pieces add up to SHA-256 {}, the sources attested {}: {named}",
                    hex::encode(got),
                    hex::encode(sha256)
                ))),
                None => Ok(got),
            }
        }
        other => other.map(|(got, _)| got),
    };
    let published = match fetched {
        Ok(got) => {
            let (dir, part, store) = (target_dir.clone(), part.clone(), replicator.store.clone());
            blocking(move || verify_and_publish(&store, &out, got, sha256, &dir, &part, mode)).await
        }
        Err(e) => Err(e),
    };
    // A star stopping keeps what it journaled, to resume at its next start.
    let keep = kept && matches!(published, Err(PullError::ShuttingDown { .. }));
    if !keep {
        let journal = replicator.store.journal.clone();
        let id = file.transfer_id;
        let failed = published.is_err();
        blocking(move || {
            if failed {
                target_dir.remove_part(&part);
            }
            if let Some(journal) = journal {
                journal.remove(id);
            }
            Ok(())
        })
        .await?;
    }
    published.map(|()| Replicated {
        bytes: size,
        sha256,
    })
}

/// The CPUs this star may use, for the `connections` setting.
pub(super) fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// Whether two sources are the same file on the same star.
fn same(a: &Upstream, b: &Upstream) -> bool {
    a.star == b.star && a.path == b.path
}

/// The sources a command names, each once (with the first token given for it), and how many
/// times each is named: a source named `n` times is taken over `n` connections.
fn distinct(named: Vec<Upstream>) -> (Vec<Upstream>, Vec<usize>) {
    let mut sources: Vec<Upstream> = Vec::new();
    let mut counts = Vec::new();
    for source in named {
        match sources.iter().position(|s| same(s, &source)) {
            Some(i) => counts[i] += 1,
            None => {
                sources.push(source);
                counts.push(1);
            }
        }
    }
    (sources, counts)
}

/// The temporary file a transfer writes, and where it starts.
struct Opened {
    dir: Arc<TargetDir>,
    part: String,
    out: Arc<File>,
    /// The first piece to fetch: those before it are on disk and hashed into `hasher`.
    first: u64,
    hasher: Sha256,
    /// The journal's entry, when the star keeps a journal.
    entry: Option<Entry>,
}

/// What the fetch starts from: the pieces already verified, and the journal to checkpoint.
struct Start {
    first: u64,
    hasher: Sha256,
    checkpoints: Option<(Arc<Journal>, Entry)>,
    /// The source's SHA-256 once it is known: a checkpoint waits for it, since a resume keeps
    /// the bytes only if the source still attests the same.
    attested: Arc<OnceLock<[u8; 32]>>,
}

/// Reopens the journaled temporary file of `resume` when the sources still agree on what it
/// was for and its prefix still hashes to the journal's digest; otherwise removes it and makes
/// a new one, journaled first. Blocking.
fn open_part(
    store: &super::disk::Store,
    target: &Confined,
    command: orbit_wire::ReplicateFile,
    version: FileVersion,
    pieces: PiecesEntry,
    resume: Option<Entry>,
) -> Result<Opened, PullError> {
    let target_path = command.target_path.clone();
    let dir = store
        .jail
        .prepare_target(target)
        .map_err(|e| target_error(&target_path, e.to_wire()))?;
    let size = version.size;
    if let Some(entry) = resume {
        let piece = entry.pieces.as_ref().map_or(0, |p| p.piece);
        let agrees = entry
            .pieces
            .as_ref()
            .is_some_and(|p| p.sha256 == pieces.sha256 && p.piece > 0)
            && entry.version.is_some_and(|v| v.size == size);
        let prefix = match agrees {
            true => dir.open_part(&entry.part).ok().and_then(|f| {
                check_prefix(&f, entry.verified, &entry.prefix_sha256).map(|h| (f, h))
            }),
            false => None,
        };
        if let Some((out, hasher)) = prefix {
            out.set_len(size).map_err(disk_error)?;
            let first = entry.verified.div_ceil(piece);
            info!(part = %entry.part, verified = entry.verified, "resuming from the journaled pieces");
            return Ok(Opened {
                dir: Arc::new(dir),
                part: entry.part.clone(),
                out: Arc::new(out),
                first,
                hasher,
                entry: Some(entry),
            });
        }
        warn!(part = %entry.part, "the journaled pieces do not check out; starting from zero");
        dir.remove_part(&entry.part);
    }
    let random = rand::random::<u32>();
    let part_name = crate::journal::part_name(command.transfer_id, random);
    let id = command.transfer_id;
    let entry = store.journal.as_ref().and_then(|journal| {
        let entry = Entry {
            command,
            part: part_name,
            version: Some(version),
            verified: 0,
            prefix_sha256: hex::encode(Sha256::digest(b"")),
            upstreams: None,
            pieces: Some(pieces),
        };
        // Written before the file exists, so that every temporary file has an entry.
        match journal.write(&entry) {
            Ok(()) => Some(entry),
            Err(e) => {
                warn!("cannot journal the transfer, it will not survive a restart: {e}");
                None
            }
        }
    });
    let created = dir
        .create_part(&format!("{id}-{random:08x}"))
        .map_err(|e| target_error(&target_path, e.to_wire()))
        .and_then(|(out, part)| {
            out.set_len(size).map_err(disk_error)?;
            Ok((out, part))
        });
    let (out, part) = match created {
        Ok(made) => made,
        Err(e) => {
            if let (Some(journal), Some(_)) = (&store.journal, &entry) {
                journal.remove(id);
            }
            return Err(e);
        }
    };
    Ok(Opened {
        dir: Arc::new(dir),
        part,
        out: Arc::new(out),
        first: 0,
        hasher: Sha256::new(),
        entry,
    })
}

/// The hash of the first `len` bytes of `file`, if they are there and hash to `expect` (hex).
fn check_prefix(file: &File, len: u64, expect: &str) -> Option<Sha256> {
    if file.metadata().ok()?.len() < len {
        return None;
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; crate::hashing::HASH_READ];
    let mut offset = 0;
    while offset < len {
        let want = (len - offset).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..want], offset).ok()?;
        hasher.update(&buf[..want]);
        offset += want as u64;
    }
    (hex::encode(hasher.clone().finalize()) == expect).then_some(hasher)
}

/// The rest of a lone source's attestation, which the fetch does not wait for.
type Attesting = std::pin::Pin<Box<dyn Future<Output = Result<[u8; 32], PullError>> + Send>>;

/// Asks every source for its attestation; keeps those that answer, and fails if they disagree.
/// `alone` (one source): returns as soon as it has said which version it holds, with the rest
/// of its attestation to come.
async fn agree(
    replicator: &Replicator,
    transfer: &Transfer,
    id: orbit_wire::TransferId,
    sources: &[Upstream],
    alone: bool,
) -> Result<(Vec<Held>, Option<Attesting>), PullError> {
    if let (true, [source]) = (alone, sources) {
        let (held, recv) = first_word(&replicator.pool, id, source).await?;
        let (attester, version) = (replicator.trust.attester(), held.clone());
        let rest = async move { attestation(recv, &attester, id, &version).await };
        return Ok((vec![held], Some(Box::pin(rest))));
    }
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
    Ok((held, None))
}

/// Whether `sha256` is the one the command expects, if it names one.
fn expected(file: &orbit_wire::ReplicateFile, sha256: [u8; 32]) -> Result<(), PullError> {
    match file.expect_sha256.filter(|e| *e != sha256) {
        Some(expect) => Err(PullError::Mismatch(format!(
            "the sources' SHA-256 is {}, the command expects {}",
            hex::encode(sha256),
            hex::encode(expect)
        ))),
        None => Ok(()),
    }
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
    let (mut held, recv) = first_word(pool, id, source).await?;
    held.sha256 = attestation(recv, attester, id, &held).await?;
    Ok(held)
}

/// What a source says at once when asked for its attestation: the version and permission bits
/// of its file (`sha256` left zero), and the stream its attestation will come on.
async fn first_word(
    pool: &Arc<crate::pool::Pool>,
    id: orbit_wire::TransferId,
    source: &Upstream,
) -> Result<(Held, quinn::RecvStream), PullError> {
    let star = &source.star;
    let empty = ByteRange { start: 0, end: 0 };
    let (first, mut recv, _peer) = open_relay_on(pool, id, star, source, empty, 0, PIECE).await?;
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
    // The permission bits come before the (empty) range's trailer, and the attestation after
    // it, once the source has its file's SHA-256.
    let mut mode = None;
    loop {
        match framed::read_data_frame(&mut recv).await {
            Ok(DataRead::Frame(DataFrame::Trailer { .. })) => break,
            Ok(DataRead::Frame(DataFrame::Mode(bits))) => mode = Some(common_mode(mode, bits)),
            other => return Err(unexpected(star, other)),
        }
    }
    let held = Held {
        source: source.clone(),
        version,
        sha256: [0; 32],
        mode,
    };
    Ok((held, recv))
}

/// The rest of [`first_word`]'s stream: the source's attestation, checked.
async fn attestation(
    mut recv: quinn::RecvStream,
    attester: &orbit_certs::Attester,
    id: orbit_wire::TransferId,
    held: &Held,
) -> Result<[u8; 32], PullError> {
    let (source, star) = (&held.source, &held.source.star);
    match framed::read_data_frame(&mut recv).await {
        Ok(DataRead::Frame(DataFrame::Attested(attestation))) => {
            check_attestation(attester, &attestation, id, source)
                .and_then(|()| match attestation.claims.version == held.version {
                    true => Ok(()),
                    false => Err("it is for another version of the file".into()),
                })
                .map_err(|why| PullError::BadAttestation {
                    star: star.clone(),
                    why,
                })?;
            Ok(attestation.claims.sha256)
        }
        other => Err(unexpected(star, other)),
    }
}

/// What a frame other than the one awaited on an attestation's stream means.
fn unexpected(star: &str, read: Result<DataRead, framed::FramedError>) -> PullError {
    match read {
        Ok(DataRead::Frame(DataFrame::Error { error, .. })) => PullError::SourceFailed {
            source_star: star.to_owned(),
            error,
        },
        Ok(_) => protocol(star, "a frame out of place"),
        Err(e) => {
            let e = e.to_wire();
            PullError::Lost {
                source_star: star.to_owned(),
                what: "the attestation",
                code: e.code,
                message: e.message,
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

/// Hashes the file in order from piece `start.first`, each piece once it is written, and every
/// [`CHECKPOINT`] bytes syncs the file and journals the prefix. `None` if the transfer stopped.
fn hash_in_order(
    pieces: &Pieces,
    out: &File,
    size: u64,
    piece: u64,
    start: Start,
) -> std::io::Result<Option<[u8; 32]>> {
    let Start {
        first,
        mut hasher,
        mut checkpoints,
        attested,
    } = start;
    let mut buf = vec![0u8; crate::hashing::HASH_READ];
    let mut since_checkpoint = 0;
    for index in first..size.div_ceil(piece) {
        if !pieces.wait_written(index) {
            return Ok(None);
        }
        let (mut offset, end) = (index * piece, ((index + 1) * piece).min(size));
        since_checkpoint += end - offset;
        while offset < end {
            let want = (end - offset).min(buf.len() as u64) as usize;
            out.read_exact_at(&mut buf[..want], offset)?;
            hasher.update(&buf[..want]);
            offset += want as u64;
        }
        let known = attested.get();
        if since_checkpoint >= CHECKPOINT && end < size && known.is_some() {
            if let (Some((journal, entry)), Some(sha256)) = (&mut checkpoints, known) {
                since_checkpoint = 0;
                if let Some(pieces) = &mut entry.pieces {
                    pieces.sha256 = hex::encode(sha256);
                }
                out.sync_data()?;
                entry.verified = end;
                entry.prefix_sha256 = hex::encode(hasher.clone().finalize());
                // Only while the transfer runs: once it stopped (a cancel that removes the entry
                // next), no checkpoint writes the entry back.
                let journaling = pieces.journaling.lock().unwrap_or_else(|e| e.into_inner());
                if pieces.lock().stopped {
                    return Ok(None);
                }
                if let Err(e) = journal.write(entry) {
                    warn!("cannot journal a checkpoint, the transfer will not resume: {e}");
                    checkpoints = None;
                }
                drop(journaling);
            }
        }
    }
    Ok(Some(hasher.finalize().into()))
}

/// Runs the workers until every piece is written, or every source has failed; returns the
/// SHA-256 of what was written.
#[allow(clippy::too_many_arguments)]
async fn fetch_all(
    replicator: &Replicator,
    transfer: &Transfer,
    id: orbit_wire::TransferId,
    held: &[Held],
    lanes: &[usize],
    out: &Arc<File>,
    size: u64,
    piece: u64,
    start: Start,
) -> Result<([u8; 32], Vec<u32>), PullError> {
    let pieces = Arc::new(Pieces::new(size.div_ceil(piece), start.first));
    let written = Arc::new(Mutex::new((start.first * piece).min(size)));
    let stop_hashing = StopHashing(pieces.clone());
    let hashing = {
        let (pieces, out) = (pieces.clone(), out.clone());
        tokio::task::spawn_blocking(move || hash_in_order(&pieces, &out, size, piece, start))
    };
    let streams = STREAMS_PER_SOURCE * lanes.iter().sum::<usize>();
    let disk = PieceDisk::start(pieces.clone(), out.clone(), streams);
    let mut workers = tokio::task::JoinSet::new();
    for (who, (source, lanes)) in held.iter().zip(lanes).enumerate() {
        for worker in 0..STREAMS_PER_SOURCE * lanes {
            let worker = Worker {
                pool: replicator.pool.clone(),
                id,
                lane: worker % lanes,
                who: who as u32,
                source: source.clone(),
                disk: disk.clone(),
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
    // Every piece is written: the hashing thread ends by itself; if this future is dropped
    // meanwhile, `stop_hashing` stops it (and its checkpoints).
    let hashed = hashing.await;
    drop(stop_hashing);
    match hashed {
        Ok(Ok(Some(sha256))) => Ok((sha256, pieces.lock().by.clone())),
        Ok(Ok(None)) => Err(PullError::Internal("the hashing stopped early".into())),
        Ok(Err(e)) => Err(disk_error(e)),
        Err(e) => Err(PullError::Internal(format!("the hashing task failed: {e}"))),
    }
}

/// After a whole-file mismatch, which source sent wrong pieces: for each source in turn, the
/// file is hashed again in order with that source's pieces taken from another source instead
/// (nothing on disk changes). When that adds up to the attested SHA-256, the source is named,
/// with how many of its pieces differed. `None` when no one source explains the mismatch (or a
/// piece could not be read again).
#[allow(clippy::too_many_arguments)]
async fn pinpoint(
    replicator: &Replicator,
    id: orbit_wire::TransferId,
    held: &[Held],
    by: &[u32],
    out: &Arc<File>,
    size: u64,
    piece: u64,
    sha256: [u8; 32],
) -> Option<String> {
    for (suspect, source) in held.iter().enumerate() {
        let suspect = suspect as u32;
        if !by.contains(&suspect) {
            continue;
        }
        let other = held
            .iter()
            .position(|h| h.source.star != source.source.star)?;
        let mut hasher = Sha256::new();
        let mut differed = 0;
        for (index, writer) in by.iter().enumerate() {
            let (start, end) = (index as u64 * piece, ((index as u64 + 1) * piece).min(size));
            let ours = {
                let out = out.clone();
                tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; (end - start) as usize];
                    out.read_exact_at(&mut buf, start).map(|()| buf)
                })
                .await
                .ok()?
                .ok()?
            };
            if *writer != suspect {
                hasher.update(&ours);
                continue;
            }
            let theirs = read_piece(&replicator.pool, id, &held[other], start, end)
                .await
                .inspect_err(|e| warn!(transfer = %id, "cannot read a piece again: {e}"))
                .ok()?;
            if theirs != ours {
                differed += 1;
            }
            hasher.update(&theirs);
        }
        if <[u8; 32]>::from(hasher.finalize()) == sha256 {
            warn!(transfer = %id, source = %source.source.star, differed, "a source sent wrong pieces");
            return Some(format!(
                "{} sent {differed} piece(s) that differ from {}'s, with which the file has the \
                 attested SHA-256",
                source.source.star, held[other].source.star
            ));
        }
    }
    None
}

/// The bytes `[start, end)` of `held`'s file, read into memory.
async fn read_piece(
    pool: &Arc<crate::pool::Pool>,
    id: orbit_wire::TransferId,
    held: &Held,
    start: u64,
    end: u64,
) -> Result<Vec<u8>, PullError> {
    let source = &held.source;
    let star = &source.star;
    let range = ByteRange { start, end };
    let (first, mut recv, _peer) = open_relay_on(pool, id, star, source, range, 0, PIECE).await?;
    match first {
        DataFrame::Header { size, version, .. }
            if size == end - start && version == held.version => {}
        DataFrame::Error { error, .. } => {
            return Err(PullError::Refused {
                source_star: star.clone(),
                error,
            })
        }
        _ => return Err(protocol(star, "not the header of the piece")),
    }
    let mut data = Vec::with_capacity((end - start) as usize);
    loop {
        let read = tokio::time::timeout(STALL, framed::read_data_frame(&mut recv))
            .await
            .map_err(|_| protocol(star, "silent while a piece was read again"))?;
        match read {
            Ok(DataRead::Chunk { offset, payload }) => {
                if offset != start + data.len() as u64 || offset + payload.len() as u64 > end {
                    return Err(protocol(star, "a chunk out of order or past its range"));
                }
                for part in payload.pieces() {
                    data.extend_from_slice(part);
                }
            }
            Ok(DataRead::Frame(DataFrame::Trailer { .. })) if data.len() as u64 == end - start => {
                return Ok(data)
            }
            Ok(DataRead::Frame(DataFrame::Mode(_))) => {}
            Ok(_) => return Err(protocol(star, "a frame out of place")),
            Err(e) => {
                let e = e.to_wire();
                return Err(PullError::Lost {
                    source_star: star.clone(),
                    what: "a piece read again",
                    code: e.code,
                    message: e.message,
                });
            }
        }
    }
}

/// One ranged stream from one source, on one of its connections.
struct Worker {
    pool: Arc<crate::pool::Pool>,
    id: orbit_wire::TransferId,
    /// Which connection to the source ([`crate::pool::Pool::get_lane`]).
    lane: usize,
    /// The source's index among the agreed ones.
    who: u32,
    source: Held,
    disk: PieceDisk,
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
                Ok(false) => failures = 0,
                Ok(true) => {
                    failures = 0;
                    if self.pieces.done(index, self.who) {
                        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
                        *written += end - start;
                        self.progress.send_replace((*written, self.size));
                    }
                }
                Err(e) => {
                    self.pieces.put_back(index, self.who);
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

    /// Reads `[start, end)`, piece `index`, from the source and writes it at its offset. Whether
    /// this stream wrote all of it: it stops early, successfully, when another stream has
    /// written the piece first or another source is writing it.
    async fn fetch(&self, index: u64, start: u64, end: u64) -> Result<bool, PullError> {
        let source = &self.source.source;
        let star = &source.star;
        let range = ByteRange { start, end };
        let (first, mut recv, peer) =
            open_relay_on(&self.pool, self.id, star, source, range, self.lane, PIECE).await?;
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
        let mut writes = Writes {
            disk: self.disk.clone(),
            index,
            who: self.who,
            gathering: Vec::new(),
            at: start,
            len: 0,
            in_flight: None,
        };
        let received = self
            .receive(&mut recv, &peer, &mut writes, start, end)
            .await;
        // The write in flight ends before the piece is given back or marked written, whatever
        // happened: no byte of it may land after.
        let last = writes.settle().await;
        Ok(received? && last?)
    }

    /// The chunks of `[start, end)` after the header, gathered into `writes`; false when the
    /// piece turned out not to be this stream's to write.
    async fn receive(
        &self,
        recv: &mut quinn::RecvStream,
        peer: &PeerConn,
        writes: &mut Writes,
        start: u64,
        end: u64,
    ) -> Result<bool, PullError> {
        let star = &self.source.source.star;
        let mut offset = start;
        loop {
            let read = tokio::time::timeout(STALL, framed::read_data_frame(recv)).await;
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
                    if !writes.push(payload.pieces()).await? {
                        // Another stream wrote this piece (a guard: one stream fetches a piece at
                        // a time): dropping the stream tells the source to stop.
                        return Ok(false);
                    }
                    offset += len;
                }
                Ok(DataRead::Frame(DataFrame::Trailer { .. })) => {
                    if offset != end {
                        return Err(protocol(star, "the piece ended short of its range"));
                    }
                    let ours = writes.flush().await?;
                    // Read to the end, so that the source's stream ends as it should: there
                    // (from a source of an earlier release) an attestation, which the agreement
                    // has already checked, or nothing (`RANGE_UNHASHED`).
                    let _ = framed::read_data_frame(recv).await;
                    return Ok(ours);
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
    store: &super::disk::Store,
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
    })?;
    store.remember(out, sha256);
    Ok(())
}

/// The bytes of one piece gathered into writes of [`WRITE_BATCH`] bytes, one in flight on the
/// transfer's [`PieceDisk`] while the next gathers. A blocking task for each 64 KiB chunk,
/// awaited before the next chunk was read, made the piece path take 1.8 times as long as one
/// stream (bench/RESULTS.md). Memory per stream: two batches.
struct Writes {
    disk: PieceDisk,
    index: u64,
    /// The source the bytes come from.
    who: u32,
    gathering: Vec<bytes::Bytes>,
    /// Where `gathering` goes in the file.
    at: u64,
    len: usize,
    in_flight: Option<tokio::sync::oneshot::Receiver<std::io::Result<bool>>>,
}

/// Bytes gathered before a write.
const WRITE_BATCH: usize = 512 * 1024;

impl Writes {
    /// Adds the next chunk. False when another stream wrote the piece first.
    async fn push(&mut self, data: &[bytes::Bytes]) -> Result<bool, PullError> {
        self.gathering.extend_from_slice(data);
        self.len += data.iter().map(bytes::Bytes::len).sum::<usize>();
        if self.len < WRITE_BATCH {
            return Ok(true);
        }
        self.flush().await
    }

    /// Waits for the write in flight, then starts writing what is gathered. False when another
    /// stream wrote the piece first.
    async fn flush(&mut self) -> Result<bool, PullError> {
        if !self.settle().await? {
            return Ok(false);
        }
        if self.gathering.is_empty() {
            return Ok(true);
        }
        let data = std::mem::take(&mut self.gathering);
        let at = self.at;
        self.at += self.len as u64;
        self.len = 0;
        let (done, written) = tokio::sync::oneshot::channel();
        let job = WriteJob {
            piece: self.index,
            who: self.who,
            data,
            at,
            done,
        };
        self.disk
            .jobs
            .send(job)
            .await
            .map_err(|_| PullError::Internal("the piece writer stopped".into()))?;
        self.in_flight = Some(written);
        Ok(true)
    }

    /// Waits for the write in flight, if any. False when another stream wrote the piece first.
    async fn settle(&mut self) -> Result<bool, PullError> {
        match self.in_flight.take() {
            Some(write) => write
                .await
                .map_err(|_| PullError::Internal("the piece writer stopped".into()))?
                .map_err(disk_error),
            None => Ok(true),
        }
    }
}

/// One batch of a piece for [`PieceDisk`]'s thread to write; `done` says whether it wrote.
struct WriteJob {
    piece: u64,
    who: u32,
    data: Vec<bytes::Bytes>,
    at: u64,
    done: tokio::sync::oneshot::Sender<std::io::Result<bool>>,
}

/// The one thread that writes a transfer's pieces, whichever stream brought them. Buffered
/// writes into one file take the file's lock in the kernel (tmpfs, ext4 and XFS alike), so
/// writes from several threads at once gain nothing: the waiting ones spin on the lock
/// (`rwsem_spin_on_owner`, 6% of the destination's samples with a blocking task per batch),
/// and each batch took whichever of 15-25 blocking threads was free. One thread: 0.97x the
/// wall time, 0.98x the CPU and 0.91x the peak memory of that (`bench/ab`, 1 GiB,
/// `--connections 2`, medians of 9). Each stream has at most one batch queued or being
/// written, so the queue holds at most one per stream. The thread ends once every handle is
/// dropped and the queue is written.
#[derive(Clone)]
struct PieceDisk {
    jobs: tokio::sync::mpsc::Sender<WriteJob>,
}

impl PieceDisk {
    fn start(pieces: Arc<Pieces>, out: Arc<File>, streams: usize) -> PieceDisk {
        let (jobs, mut queue) = tokio::sync::mpsc::channel::<WriteJob>(streams.max(1));
        tokio::task::spawn_blocking(move || {
            while let Some(job) = queue.blocking_recv() {
                let wrote = pieces.write_unless_done(&out, job.piece, job.who, &job.data, job.at);
                // The stream may have gone (a cancel): the write is done either way.
                let _ = job.done.send(wrote);
            }
        });
        PieceDisk { jobs }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn source(star: &str, path: &str, token: &str) -> Upstream {
        Upstream {
            star: star.into(),
            addr: "127.0.0.1:1".into(),
            path: path.into(),
            token: token.into(),
        }
    }

    #[test]
    fn a_source_named_again_is_one_more_connection_to_it() {
        let named = vec![
            source("a", "/f", "1"),
            source("b", "/f", "2"),
            source("a", "/f", "3"),
            source("a", "/g", "4"),
            source("a", "/f", "5"),
        ];
        let (sources, counts) = distinct(named);
        let names: Vec<_> = sources
            .iter()
            .map(|s| (&*s.star, &*s.path, &*s.token))
            .collect();
        assert_eq!(
            names,
            [("a", "/f", "1"), ("b", "/f", "2"), ("a", "/g", "4")]
        );
        assert_eq!(counts, [3, 1, 1]);
    }

    #[test]
    fn a_resume_starts_after_the_written_pieces() {
        let pieces = Pieces::new(5, 2);
        let state = pieces.lock();
        assert_eq!(state.left, 3);
        assert_eq!(state.queue, [2, 3, 4]);
        assert_eq!(state.done, [true, true, false, false, false]);
        drop(state);
        assert_eq!(Pieces::new(3, 3).lock().left, 0);
    }
}
