//! The destination side of a replication: ask the source star for the file, receive its chunks,
//! write them into a temporary file beside the target while hashing, and publish the file only
//! after its size and SHA-256 match: fsync, rename over the target, fsync the directory.
//!
//! A transfer survives a lost connection or a source restart: the destination retries with
//! exponential backoff and jitter, asking for the bytes from where it stopped, for as long as it
//! keeps making progress within the command's timeout. With a state directory, the temporary
//! file and a journal entry ([`crate::journal`]) also survive a stop or a crash of this star, and
//! the transfer resumes when it starts again. The source's file version must not change between
//! attempts, or the transfer starts again from zero and says so.
//!
//! Writing and hashing run on a blocking thread fed through a bounded channel. The target path
//! never holds a partial file, and the temporary file is removed on every failure that cannot
//! be resumed.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use orbit_wire::{
    ByteRange, ControlEvent, DataFrame, ErrorCode, FileVersion, ReadRequest, ReplicateFile,
    WireError, CHUNK_SIZE,
};

use crate::error::{connection_lost, varint, ToWire};
use crate::framed::{self, write_frame, DataRead};
use crate::jail::Confined;
use crate::journal::Entry;
use crate::pool::PeerConn;
use crate::star::Shared;

mod writer;

use writer::{WriteMsg, Writer};

/// How long the source may take to start answering a read request.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a data stream may stay silent before the attempt is given up and retried. QUIC's
/// idle timeout (30 s) would notice a source that vanished only much later.
const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a transfer keeps retrying without progress when the command does not say.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// The first retry's delay; each further one doubles, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// The longest delay between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A verified, durable, published copy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Replicated {
    pub(crate) bytes: u64,
    pub(crate) sha256: [u8; 32],
}

/// Where a replication reports what happens: progress as `(bytes, total)`, and the rare events
/// (`Retrying`, `Resumed`) for the controller.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) progress: watch::Sender<(u64, u64)>,
    pub(crate) events: mpsc::UnboundedSender<ControlEvent>,
}

/// Why one attempt ended without a published file.
enum Attempt {
    /// Worth another attempt.
    Retry(WireError),
    /// The source's file changed since the earlier attempts: start again from zero.
    Restart(String),
    /// The end.
    Fatal(WireError),
}

/// What lives across attempts.
struct Transfer {
    writer: Option<Writer>,
    /// The source's version the bytes so far came from.
    version: Option<FileVersion>,
    /// Bytes handed to the writer, which it writes in order: where the next attempt starts.
    offset: u64,
    total: u64,
}

/// Runs one replication as the destination star. `cancel` stops it for good (the temporary
/// file is removed); the star's shutdown stops it in a resumable state when the star keeps a
/// journal. With `resume`, a journal entry from before this star stopped, it continues from the
/// bytes that entry vouches for.
///
/// # Errors
///
/// The [`WireError`] to report to the controller; nothing was published.
pub(crate) async fn replicate(
    shared: &Arc<Shared>,
    cmd: &ReplicateFile,
    resume: Option<Entry>,
    report: &Report,
    cancel: &CancellationToken,
) -> Result<Replicated, WireError> {
    let checked = orbit_wire::path::validate(&cmd.source_path)
        .map_err(|e| WireError::new(ErrorCode::InvalidArgument, format!("source path: {e}")))
        .and_then(|()| {
            shared
                .jail
                .confine(&cmd.target_path)
                .map_err(|e| e.to_wire())
        })
        .and_then(|target| Ok((Claim::take(&shared.targets, &target, cmd)?, target)));
    let (_claim, target) = match checked {
        Ok(ok) => ok,
        Err(e) => {
            if let Some(entry) = resume {
                discard(shared, entry).await;
            }
            return Err(e);
        }
    };
    let mut transfer = Transfer {
        writer: None,
        version: None,
        offset: 0,
        total: 0,
    };
    if let Some(entry) = resume {
        let (writer, offset) = match Writer::resume(shared, &target, entry.clone()).await {
            Ok(resumed) => resumed,
            Err(e) => {
                discard(shared, entry).await;
                return Err(e);
            }
        };
        transfer.version = entry.version.filter(|_| offset > 0);
        transfer.total = transfer.version.map_or(0, |v| v.size);
        transfer.offset = offset;
        transfer.writer = Some(writer);
    }

    let window = match cmd.timeout_secs {
        0 => DEFAULT_TIMEOUT,
        secs => Duration::from_secs(secs.into()),
    };
    let started = Instant::now();
    let mut attempt = 0u32;
    let mut last_progress = Instant::now();
    let mut shutdown = false;
    let result = loop {
        let before = transfer.offset;
        let deadline = tokio::time::Instant::from_std(last_progress + window);
        let outcome = tokio::select! {
            outcome = attempt_once(shared, cmd, &target, &mut transfer, report, deadline) => outcome,
            _ = cancel.cancelled() => break Err(WireError::new(ErrorCode::Cancelled, "the replication was cancelled")),
            _ = shared.cancel.cancelled() => { shutdown = true; break Err(shutting_down(shared)) }
        };
        if transfer.offset > before {
            last_progress = Instant::now();
        }
        let error = match outcome {
            Ok(done) => break Ok(done),
            Err(Attempt::Fatal(e)) => break Err(e),
            Err(Attempt::Restart(why)) => {
                warn!(transfer = %cmd.transfer_id, "{why}");
                transfer.offset = 0;
                transfer.version = None;
                attempt += 1;
                let _ = report.events.send(ControlEvent::Retrying {
                    attempt,
                    after_ms: 0,
                    reason: why,
                });
                continue;
            }
            Err(Attempt::Retry(e)) => e,
        };
        attempt += 1;
        let delay = backoff(attempt);
        if Instant::now() + delay >= last_progress + window {
            break Err(WireError::new(
                ErrorCode::DeadlineExceeded,
                format!(
                    "gave up after {attempt} attempts in {:.1} s, {} s without progress: {}",
                    started.elapsed().as_secs_f64(),
                    window.as_secs(),
                    error.message
                ),
            ));
        }
        warn!(
            transfer = %cmd.transfer_id, attempt,
            after_ms = delay.as_millis() as u64, "retrying: {}", error.message
        );
        let _ = report.events.send(ControlEvent::Retrying {
            attempt,
            after_ms: delay.as_millis() as u64,
            reason: error.message,
        });
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancel.cancelled() => break Err(WireError::new(ErrorCode::Cancelled, "the replication was cancelled")),
            _ = shared.cancel.cancelled() => { shutdown = true; break Err(shutting_down(shared)) }
        }
    };
    match (result, transfer.writer) {
        (Ok(done), _) => Ok(done),
        (Err(e), None) => Err(e),
        (Err(e), Some(writer)) => {
            let keep = shutdown && shared.journal.is_some();
            // If the writer failed first (a full disk, say), its error is the cause.
            match writer.abandon(keep).await {
                Some(cause) => Err(cause),
                None if keep => Err(WireError::new(
                    e.code,
                    format!(
                        "{}; the transfer resumes when the star starts again",
                        e.message
                    ),
                )),
                None => Err(e),
            }
        }
    }
}

/// The delay before retry `attempt` (from 1): doubling from [`FIRST_BACKOFF`] up to
/// [`MAX_BACKOFF`], then scaled by a random factor in [0.5, 1) so that many destinations do not
/// retry in step.
fn backoff(attempt: u32) -> Duration {
    let exp = FIRST_BACKOFF.saturating_mul(1 << attempt.saturating_sub(1).min(16));
    exp.min(MAX_BACKOFF)
        .mul_f64(0.5 + rand::random::<f64>() / 2.0)
}

/// Whether an error from the source or the network may go away on its own.
fn transient(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::Unavailable | ErrorCode::DeadlineExceeded)
}

fn classify(e: WireError) -> Attempt {
    if transient(e.code) {
        Attempt::Retry(e)
    } else {
        Attempt::Fatal(e)
    }
}

/// One request to the source and the bytes it sends, from `transfer.offset` on.
async fn attempt_once(
    shared: &Arc<Shared>,
    cmd: &ReplicateFile,
    target: &Confined,
    transfer: &mut Transfer,
    report: &Report,
    deadline: tokio::time::Instant,
) -> Result<Replicated, Attempt> {
    let source = &cmd.source;
    let start = transfer.offset;
    let asked = tokio::time::timeout_at(deadline, request(shared, cmd, start)).await;
    let (first, mut recv, peer) = match asked {
        Ok(answer) => answer?,
        Err(_) => {
            return Err(Attempt::Retry(WireError::new(
                ErrorCode::DeadlineExceeded,
                format!("{source} did not answer in time"),
            )))
        }
    };
    let (size, version) = match first {
        DataFrame::Header { size, version, .. } => (size, version),
        DataFrame::Error { error, .. } => {
            return Err(classify(WireError::new(
                error.code,
                format!("{source} refused the read: {error}"),
            )))
        }
        _ => {
            return Err(Attempt::Fatal(WireError::new(
                ErrorCode::Internal,
                format!("a data stream from {source} did not begin with a header"),
            )))
        }
    };
    if transfer.version.is_some_and(|known| known != version) {
        let _ = recv.stop(varint(ErrorCode::Cancelled));
        return Err(Attempt::Restart(format!(
            "the source file {}:{} changed since the transfer began; starting again from zero",
            source, cmd.source_path
        )));
    }
    if size != version.size.saturating_sub(start) {
        let _ = recv.stop(varint(ErrorCode::DataLoss));
        return Err(Attempt::Fatal(WireError::new(
            ErrorCode::DataLoss,
            format!(
                "{source} broke the protocol: {size} bytes from offset {start} of a file of {}",
                version.size
            ),
        )));
    }
    transfer.version = Some(version);
    transfer.total = version.size;
    let total = version.size;
    let _ = report.progress.send((start, total));

    if transfer.writer.is_none() {
        // Only now, with the source's answer in hand, touch the destination's disk: a refused
        // read leaves not even an empty parent directory behind.
        match Writer::create(shared, target, cmd).await {
            Ok(writer) => transfer.writer = Some(writer),
            Err(e) => {
                let _ = recv.stop(varint(e.code));
                return Err(Attempt::Fatal(WireError::new(
                    e.code,
                    format!("target {}: {}", cmd.target_path, e.message),
                )));
            }
        }
    }
    let writer = transfer.writer.as_mut().expect("created above");
    if !writer.send(WriteMsg::Segment { start, version }).await {
        return Err(Attempt::Fatal(writer.failure().await));
    }
    if start > 0 {
        info!(transfer = %cmd.transfer_id, offset = start, total, "resuming");
        let _ = report.events.send(ControlEvent::Resumed {
            offset: start,
            total,
        });
    }

    let violation = |what: String| {
        Attempt::Fatal(WireError::new(
            ErrorCode::DataLoss,
            format!("{source} broke the protocol: {what}"),
        ))
    };
    let stall = STALL_TIMEOUT.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
    loop {
        let offset = transfer.offset;
        let frame = match tokio::time::timeout(stall, framed::read_data_frame(&mut recv)).await {
            Ok(Ok(frame)) => frame,
            Ok(Err(e)) => {
                let e = e.to_wire();
                return Err(classify(WireError::new(
                    e.code,
                    format!(
                        "{source} stopped sending after {offset} of {total} bytes: {}",
                        e.message
                    ),
                )));
            }
            Err(_) => {
                // A source that vanished without a word (killed, or the network gone) leaves
                // the pooled connection looking alive; close it so the next attempt dials anew.
                peer.conn
                    .close(varint(ErrorCode::Unavailable), b"no data from the source");
                return Err(Attempt::Retry(WireError::new(
                    ErrorCode::Unavailable,
                    format!(
                        "{source} sent nothing for {} s after {offset} of {total} bytes",
                        stall.as_secs_f64()
                    ),
                )));
            }
        };
        match frame {
            DataRead::Chunk {
                offset: at,
                payload: data,
            } => {
                if at != offset {
                    return Err(violation(format!(
                        "chunk at offset {at}, expected {offset}"
                    )));
                }
                if data.len() > CHUNK_SIZE || offset + data.len() as u64 > total {
                    return Err(violation(format!(
                        "chunk of {} bytes at {at} overruns the file",
                        data.len()
                    )));
                }
                let len = data.len() as u64;
                if !writer.send(WriteMsg::Data(data)).await {
                    return Err(Attempt::Fatal(writer.failure().await));
                }
                transfer.offset += len;
                report.progress.send_replace((transfer.offset, total));
            }
            DataRead::Frame(DataFrame::Trailer { sha256 }) => {
                if offset != total {
                    return Err(Attempt::Fatal(WireError::new(
                        ErrorCode::DataLoss,
                        format!("{source} sent {offset} of {total} bytes"),
                    )));
                }
                let writer = transfer.writer.take().expect("created above");
                return writer
                    .commit(total, sha256, cmd.expect_sha256)
                    .await
                    .map(|sha256| Replicated {
                        bytes: total,
                        sha256,
                    })
                    .map_err(Attempt::Fatal);
            }
            DataRead::Frame(DataFrame::Error { error, .. }) => {
                return Err(classify(WireError::new(
                    error.code,
                    format!("{source} failed while sending: {error}"),
                )));
            }
            // read_data_frame gives every chunk as DataRead::Chunk.
            DataRead::Frame(DataFrame::Header { .. } | DataFrame::Chunk { .. }) => {
                return Err(violation("a second header".into()))
            }
        }
    }
}

/// Sends the read request for the bytes from `start` and waits for the data stream's first frame.
async fn request(
    shared: &Arc<Shared>,
    cmd: &ReplicateFile,
    start: u64,
) -> Result<(DataFrame, quinn::RecvStream, Arc<PeerConn>), Attempt> {
    let source = &cmd.source;
    let peer = shared
        .pool
        .get(shared, source, &cmd.source_addr)
        .await
        .map_err(classify)?;
    let (request_id, answer) = peer.expect_stream();
    let request = ReadRequest {
        request_id,
        transfer_id: cmd.transfer_id,
        path: cmd.source_path.clone(),
        token: cmd.token.clone(),
        range: ByteRange {
            start,
            end: u64::MAX,
        },
    };
    let sent = async {
        let mut send = peer
            .conn
            .open_uni()
            .await
            .map_err(|e| connection_lost(&e))?;
        write_frame(&mut send, &request)
            .await
            .map_err(|e| e.to_wire())?;
        send.finish()
            .map_err(|e| WireError::new(ErrorCode::Unavailable, e.to_string()))
    };
    if let Err(e) = sent.await {
        peer.forget(request_id);
        return Err(classify(from_source(
            source,
            "could not send the read request",
            e,
        )));
    }
    let answer = tokio::select! {
        answer = answer => answer.map_err(|_| WireError::new(ErrorCode::Unavailable, format!("{source} dropped the read request"))),
        e = peer.conn.closed() => Err(from_source(source, "lost the connection", connection_lost(&e))),
        _ = tokio::time::sleep(ANSWER_TIMEOUT) => {
            Err(WireError::new(ErrorCode::DeadlineExceeded, format!("{source} did not answer within {ANSWER_TIMEOUT:?}")))
        }
    };
    match answer {
        Ok((first, recv)) => Ok((first, recv, peer)),
        Err(e) => {
            peer.forget(request_id);
            Err(classify(e))
        }
    }
}

/// Why `cancel` fired: the star's shutdown, or a controller's `Cancel`.
fn shutting_down(shared: &Shared) -> WireError {
    if !shared.cancel.is_cancelled() {
        return WireError::new(ErrorCode::Cancelled, "cancelled by the controller");
    }
    WireError::new(
        ErrorCode::Unavailable,
        format!("star {} is shutting down", shared.name),
    )
}

fn from_source(source: &str, what: &str, e: WireError) -> WireError {
    WireError::new(e.code, format!("{source}: {what}: {}", e.message))
}

/// Removes a journaled transfer that cannot be resumed: its temporary file and its entry.
async fn discard(shared: &Arc<Shared>, entry: Entry) {
    let owner = shared.clone();
    let _ = tokio::task::spawn_blocking(move || {
        if let Ok(target) = owner.jail.confine(&entry.command.target_path) {
            if let Ok(dir) = owner.jail.prepare_target(&target) {
                dir.remove_part(&entry.part);
            }
        }
        if let Some(journal) = &owner.journal {
            journal.remove(entry.command.transfer_id);
        }
    })
    .await;
}

/// The targets being written now, so that a second replication to one of them is refused rather
/// than interleaved. Held for the whole transfer; released on drop.
struct Claim<'a> {
    targets: &'a Mutex<HashSet<String>>,
    key: String,
}

impl<'a> Claim<'a> {
    fn take(
        targets: &'a Mutex<HashSet<String>>,
        target: &Confined,
        cmd: &ReplicateFile,
    ) -> Result<Claim<'a>, WireError> {
        let key = target.key();
        if !targets.lock().expect("targets lock").insert(key.clone()) {
            return Err(WireError::new(
                ErrorCode::AlreadyExists,
                format!(
                    "another replication to {} is in progress on this star",
                    cmd.target_path
                ),
            ));
        }
        Ok(Claim { targets, key })
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.targets.lock().expect("targets lock").remove(&self.key);
    }
}

/// Counts a replication in flight for as long as it lives.
pub(crate) struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    pub(crate) fn new(shared: &'a Shared) -> InFlight<'a> {
        shared.transfers_in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.transfers_in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
