//! The destination side of a replication: ask the source star for the file, receive its chunks,
//! write them into a temporary file beside the target while hashing, and publish the file only
//! after its size and SHA-256 match: fsync, rename over the target, fsync the directory.
//!
//! Writing and hashing run on a blocking thread fed through a bounded channel. The target path
//! never holds a partial file, and the temporary file is removed on every failure.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use orbit_wire::{
    ByteRange, DataFrame, ErrorCode, ReadRequest, ReplicateFile, WireError, CHUNK_SIZE,
};

use crate::error::{connection_lost, ToWire};
use crate::framed::{self, write_frame};
use crate::jail::TargetDir;
use crate::star::Shared;

/// How long the source may take to start answering a read request.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Chunks buffered between the network and the disk: 16 × 64 KiB = 1 MiB per transfer.
const WRITE_BEHIND: usize = 16;

/// A verified, durable, published copy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Replicated {
    pub(crate) bytes: u64,
    pub(crate) sha256: [u8; 32],
}

/// What the writer thread is told.
enum WriteMsg {
    Data(Bytes),
    /// Every byte has arrived: verify and publish.
    Commit {
        size: u64,
        trailer: [u8; 32],
        expect: Option<[u8; 32]>,
    },
}

/// Runs one replication as the destination star. `progress` receives `(bytes, total)`;
/// `cancel` stops it (a child of the star's own token, which stops it on shutdown).
///
/// # Errors
///
/// The [`WireError`] to report to the controller; nothing was published and no temporary file
/// remains.
pub(crate) async fn replicate(
    shared: &Arc<Shared>,
    cmd: &ReplicateFile,
    progress: &watch::Sender<(u64, u64)>,
    cancel: &CancellationToken,
) -> Result<Replicated, WireError> {
    orbit_wire::path::validate(&cmd.source_path)
        .map_err(|e| WireError::new(ErrorCode::InvalidArgument, format!("source path: {e}")))?;
    let target = shared
        .jail
        .confine(&cmd.target_path)
        .map_err(|e| e.to_wire())?;
    let source = &cmd.source;
    let peer = shared.pool.get(shared, source, &cmd.source_addr).await?;
    let (request_id, answer) = peer.expect_stream();
    let request = ReadRequest {
        request_id,
        transfer_id: cmd.transfer_id,
        path: cmd.source_path.clone(),
        token: cmd.token.clone(),
        range: ByteRange::FULL,
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
        return Err(from_source(source, "could not send the read request", e));
    }
    let (first, mut recv) = tokio::select! {
        answer = answer => answer.map_err(|_| WireError::new(ErrorCode::Unavailable, format!("{source} dropped the read request")))?,
        e = peer.conn.closed() => return Err(from_source(source, "lost the connection", connection_lost(&e))),
        _ = cancel.cancelled() => {
            peer.forget(request_id);
            return Err(shutting_down(shared));
        }
        _ = tokio::time::sleep(ANSWER_TIMEOUT) => {
            peer.forget(request_id);
            return Err(WireError::new(ErrorCode::DeadlineExceeded, format!("{source} did not answer within {ANSWER_TIMEOUT:?}")));
        }
    };
    let size = match first {
        DataFrame::Header { size, .. } => size,
        DataFrame::Error { error, .. } => {
            return Err(WireError::new(
                error.code,
                format!("{source} refused the read: {error}"),
            ))
        }
        _ => {
            return Err(WireError::new(
                ErrorCode::Internal,
                format!("a data stream from {source} did not begin with a header"),
            ))
        }
    };
    let _ = progress.send((0, size));

    // Only now, with the source's answer in hand, touch the destination's disk: a refused read
    // leaves not even an empty parent directory behind.
    let jail_owner = shared.clone();
    let prepared = tokio::task::spawn_blocking(move || jail_owner.jail.prepare_target(&target))
        .await
        .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))?;
    let dir = match prepared {
        Ok(dir) => dir,
        Err(e) => {
            let e = e.to_wire();
            let _ = recv.stop(crate::error::varint(e.code));
            return Err(WireError::new(
                e.code,
                format!("target {}: {}", cmd.target_path, e.message),
            ));
        }
    };

    let tag = format!("{:016x}-{:08x}", cmd.transfer_id, rand::random::<u32>());
    let (tx, rx) = mpsc::channel(WRITE_BEHIND);
    let writer = tokio::task::spawn_blocking(move || write_file(dir, &tag, rx));

    let received = tokio::select! {
        r = receive(source, size, &mut recv, &tx, progress) => r,
        _ = cancel.cancelled() => Err(shutting_down(shared)),
    };
    let outcome = match received {
        Ok(trailer) => {
            let commit = WriteMsg::Commit {
                size,
                trailer,
                expect: cmd.expect_sha256,
            };
            let _ = tx.send(commit).await;
            drop(tx);
            writer
                .await
                .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))?
        }
        Err(e) => {
            // Closing the channel without a commit makes the writer remove the temporary file;
            // wait for that before reporting, so the failure leaves nothing behind.
            drop(tx);
            let written = writer.await;
            let _ = recv.stop(crate::error::varint(e.code));
            // If the writer failed first (a full disk, say), its error is the cause; it reports
            // Cancelled only when it was stopped because of `e`.
            return match written {
                Ok(Err(cause)) if cause.code != ErrorCode::Cancelled => Err(cause),
                _ => Err(e),
            };
        }
    };
    outcome.map(|sha256| Replicated {
        bytes: size,
        sha256,
    })
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

/// Reads chunks until the trailer, checking that offsets run on and sizes add up, and feeds them
/// to the writer. Returns the trailer's digest.
async fn receive(
    source: &str,
    size: u64,
    recv: &mut quinn::RecvStream,
    tx: &mpsc::Sender<WriteMsg>,
    progress: &watch::Sender<(u64, u64)>,
) -> Result<[u8; 32], WireError> {
    let violation = |what: String| {
        WireError::new(
            ErrorCode::DataLoss,
            format!("{source} broke the protocol: {what}"),
        )
    };
    let mut received = 0u64;
    loop {
        let frame = framed::read_data_frame(recv).await.map_err(|e| {
            let e = e.to_wire();
            WireError::new(
                e.code,
                format!(
                    "{source} stopped sending after {received} of {size} bytes: {}",
                    e.message
                ),
            )
        })?;
        match frame {
            DataFrame::Chunk { offset, data } => {
                if offset != received {
                    return Err(violation(format!(
                        "chunk at offset {offset}, expected {received}"
                    )));
                }
                if data.len() > CHUNK_SIZE || received + data.len() as u64 > size {
                    return Err(violation(format!(
                        "chunk of {} bytes at {offset} overruns the file",
                        data.len()
                    )));
                }
                received += data.len() as u64;
                if tx.send(WriteMsg::Data(data)).await.is_err() {
                    // The writer failed; its error is the one to report.
                    return Err(WireError::new(ErrorCode::Internal, "the writer stopped"));
                }
                progress.send_replace((received, size));
            }
            DataFrame::Trailer { sha256 } => {
                if received != size {
                    return Err(WireError::new(
                        ErrorCode::DataLoss,
                        format!("{source} sent {received} of {size} bytes"),
                    ));
                }
                return Ok(sha256);
            }
            DataFrame::Error { error, .. } => {
                return Err(WireError::new(
                    error.code,
                    format!("{source} failed while sending: {error}"),
                ));
            }
            DataFrame::Header { .. } => return Err(violation("a second header".into())),
        }
    }
}

/// Writes the temporary file, hashing as it goes; on `Commit` verifies and publishes. Removes the
/// temporary file on any failure, including the channel closing without a commit.
fn write_file(
    dir: TargetDir,
    tag: &str,
    mut rx: mpsc::Receiver<WriteMsg>,
) -> Result<[u8; 32], WireError> {
    let (file, part) = dir.create_part(tag).map_err(|e| {
        let e = e.to_wire();
        WireError::new(
            e.code,
            format!(
                "cannot create a temporary file beside the target: {}",
                e.message
            ),
        )
    })?;
    let result = write_and_verify(file, &mut rx).and_then(|sha256| {
        dir.publish(&part).map_err(|e| {
            let e = e.to_wire();
            WireError::new(e.code, format!("cannot publish the file: {}", e.message))
        })?;
        Ok(sha256)
    });
    if result.is_err() {
        dir.remove_part(&part);
    }
    result
}

fn write_and_verify(
    mut file: File,
    rx: &mut mpsc::Receiver<WriteMsg>,
) -> Result<[u8; 32], WireError> {
    let io = |e: std::io::Error| {
        let e = e.to_wire();
        WireError::new(e.code, format!("writing the temporary file: {}", e.message))
    };
    let mut hasher = Sha256::new();
    let mut written = 0u64;
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            WriteMsg::Data(data) => {
                hasher.update(&data);
                file.write_all(&data).map_err(io)?;
                written += data.len() as u64;
            }
            WriteMsg::Commit {
                size,
                trailer,
                expect,
            } => {
                let sha256: [u8; 32] = hasher.finalize().into();
                if written != size {
                    return Err(WireError::new(
                        ErrorCode::DataLoss,
                        format!("wrote {written} of {size} bytes"),
                    ));
                }
                if sha256 != trailer {
                    return Err(WireError::new(
                        ErrorCode::DataLoss,
                        format!(
                            "checksum mismatch: received data hashes to {}, the source sent {}",
                            hex::encode(sha256),
                            hex::encode(trailer)
                        ),
                    ));
                }
                if let Some(expect) = expect {
                    if sha256 != expect {
                        return Err(WireError::new(
                            ErrorCode::DataLoss,
                            format!(
                                "checksum mismatch: the file's SHA-256 is {}, expected {}",
                                hex::encode(sha256),
                                hex::encode(expect)
                            ),
                        ));
                    }
                }
                file.sync_all().map_err(io)?;
                return Ok(sha256);
            }
        }
    }
    Err(WireError::new(
        ErrorCode::Cancelled,
        "the transfer stopped before the end",
    ))
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
