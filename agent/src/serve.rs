//! The source side of a replication: a read request arrives on a unidirectional stream from
//! another star, is authorised (peer role, token, path under a root), and the file is sent on a
//! new unidirectional stream as a header, 64 KiB chunks and a trailer with its SHA-256.
//!
//! Reading and hashing run on a blocking thread; chunks reach the stream through a bounded
//! channel, so memory per read is bounded by the channel depth and QUIC's windows.

use std::fs::File;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::{Connection, RecvStream, SendStream};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::{info, warn};

use orbit_certs::{PeerIdentity, Role};
use orbit_wire::token::{self, TokenError, VerifiedLink, VerifiedToken};
use orbit_wire::{
    ByteRange, DataFrame, ErrorCode, FileVersion, ReadRequest, WireError, CHUNK_SIZE,
    MAX_CONTROL_FRAME, RANGE_UNHASHED, WANTS_MODE,
};

use crate::buffers::Buffers;
use crate::digests::{Digests, FileKey};
use crate::error::{varint, ToWire};
use crate::framed::{self, bounded, write_chunk, write_frame, FramedError};
use crate::hashing::{Hashing, HASH_READ};
use crate::jail::{Confined, Jail, JailError, OpenedFile};
use crate::lifecycle::Lifecycle;
use crate::logged::Logged;
use crate::metrics::Metrics;
use crate::trust::Trust;

/// Chunks read ahead of the network: 16 × 64 KiB = 1 MiB per read in flight.
const READ_AHEAD: usize = 16;
/// How long a refusal waits for the peer to acknowledge the error frame.
const ERROR_DELIVERY_TIMEOUT: Duration = Duration::from_secs(2);

/// The reads a star serves: the `max_transfers` slots, how many are in flight, and the digests
/// of whole files already hashed.
#[derive(Debug)]
pub(crate) struct Reads {
    pub(crate) max: u32,
    pub(crate) slots: Arc<Semaphore>,
    in_flight: watch::Sender<u32>,
    pub(crate) digests: Arc<Digests>,
    /// The buffers chunks are read into.
    pub(crate) buffers: Arc<Buffers>,
}

/// One read counted in flight while it lives.
pub(crate) struct InFlight<'a>(&'a Reads);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.send_modify(|n| *n -= 1);
    }
}

impl Reads {
    /// Room for `max` reads at once.
    pub(crate) fn new(max: u32) -> Reads {
        Reads {
            max,
            slots: Arc::new(Semaphore::new(max as usize)),
            in_flight: watch::channel(0).0,
            digests: Arc::default(),
            buffers: Arc::default(),
        }
    }

    /// Reads being sent now.
    pub(crate) fn in_flight(&self) -> u32 {
        *self.in_flight.borrow()
    }

    /// Counts a read in flight until the guard is dropped.
    pub(crate) fn track(&self) -> InFlight<'_> {
        self.in_flight.send_modify(|n| *n += 1);
        InFlight(self)
    }

    /// Waits until no read is being sent. Cancel-safe.
    pub(crate) async fn idle(&self) {
        let _ = self.in_flight.subscribe().wait_for(|n| *n == 0).await;
    }
}

/// What serving reads uses.
#[derive(Debug)]
pub(crate) struct Server {
    pub(crate) trust: Arc<Trust>,
    pub(crate) jail: Arc<Jail>,
    pub(crate) reads: Arc<Reads>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) life: Lifecycle,
    /// How long a peer may take to send its request.
    pub(crate) request_timeout: Duration,
    /// The longest lifetime a token may have.
    pub(crate) max_token_lifetime: Duration,
    /// How long one write to a peer may wait for its credit.
    pub(crate) write_timeout: Duration,
}

/// Why a read was refused or failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServeError {
    /// Only stars may read.
    #[error("read requests are accepted only from stars, not from {0}")]
    NotAStar(PeerIdentity),
    /// The token does not allow this read.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The token was minted for longer than this star accepts.
    #[error("token lifetime {lifetime} s is over this star's cap of {cap} s")]
    TokenTooLong {
        /// What is left of it.
        lifetime: u64,
        /// The cap.
        cap: u64,
    },
    /// The path is refused or cannot be opened.
    #[error(transparent)]
    Path(#[from] JailError),
    /// Every read slot is taken.
    #[error("star {star} already serves {max} reads, its limit")]
    Busy {
        /// This star.
        star: String,
        /// The limit.
        max: u32,
    },
    /// The star is shutting down.
    #[error("star {0} is shutting down")]
    ShuttingDown(String),
    /// The file changed while it was read.
    #[error("the source file changed during the transfer ({0})")]
    Changed(&'static str),
    /// Reading the file failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The stream to the peer failed.
    #[error(transparent)]
    Stream(#[from] FramedError),
    /// The sending side stopped; its error is reported there.
    #[error("the transfer was abandoned")]
    Abandoned,
    /// A lost task.
    #[error("{0}")]
    Internal(String),
    /// A name inside a tree that is not a plain relative name.
    #[error("bad name in the tree: {0}")]
    BadName(#[from] orbit_wire::tree::NameError),
    /// A file of a tree that the token's filter leaves out.
    #[error("the file is outside the tree token's filter")]
    OutsideFilter,
    /// A relay request for a transfer this star does not receive (any more), and it is not
    /// the origin.
    #[error("star {star} is not receiving {path} in transfer {transfer}, and is not its origin")]
    NotRelaying {
        /// This star.
        star: String,
        /// The path asked for.
        path: String,
        /// The transfer.
        transfer: orbit_wire::TransferId,
    },
    /// This star's own copy of a relayed file failed.
    #[error("star {star}'s own copy failed: {error}")]
    RelayFailed {
        /// This star.
        star: String,
        /// Why.
        error: WireError,
    },
}

impl ToWire for ServeError {
    fn to_wire(&self) -> WireError {
        let code = match self {
            ServeError::NotAStar(_) | ServeError::TokenTooLong { .. } => {
                ErrorCode::PermissionDenied
            }
            ServeError::Token(e) => return e.to_wire(),
            ServeError::Path(e) => return e.to_wire(),
            ServeError::Io(e) => return e.to_wire(),
            ServeError::Stream(e) => return e.to_wire(),
            ServeError::Busy { .. } => ErrorCode::ResourceExhausted,
            ServeError::ShuttingDown(_) => ErrorCode::Unavailable,
            ServeError::Changed(_) => ErrorCode::FailedPrecondition,
            ServeError::Abandoned => ErrorCode::Cancelled,
            ServeError::Internal(_) => ErrorCode::Internal,
            ServeError::BadName(_) => ErrorCode::InvalidArgument,
            ServeError::OutsideFilter => ErrorCode::PermissionDenied,
            ServeError::NotRelaying { .. } => ErrorCode::FailedPrecondition,
            ServeError::RelayFailed { .. } => ErrorCode::Unavailable,
        };
        WireError::new(code, self.to_string())
    }
}

impl From<rustix::io::Errno> for ServeError {
    fn from(e: rustix::io::Errno) -> ServeError {
        ServeError::Io(e.into())
    }
}

pub(crate) fn lost_task(e: tokio::task::JoinError) -> ServeError {
    ServeError::Internal(e.to_string())
}

/// A read that passed every check. Only [`authorize`] makes one, and only it reaches the disk.
#[derive(Debug)]
pub(crate) struct VerifiedRead {
    token: Proof,
    pub(crate) path: Confined,
    pub(crate) range: ByteRange,
}

/// Which token a read needs.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Scope {
    /// A read request: a plain read token. A fan-out's link token is refused.
    Plain,
    /// A relay request of this transfer: a link token minted for it.
    Link(orbit_wire::TransferId),
}

/// The verified token of a read, of the kind its [`Scope`] asked for.
#[derive(Debug)]
enum Proof {
    Plain(VerifiedToken),
    Link(VerifiedLink),
}

impl Proof {
    fn key_id(&self) -> u32 {
        match self {
            Proof::Plain(token) => token.claims().key_id,
            Proof::Link(token) => token.claims().read.key_id,
        }
    }

    fn lifetime(&self) -> u64 {
        match self {
            Proof::Plain(token) => token.claims().lifetime(),
            Proof::Link(token) => token.claims().read.lifetime(),
        }
    }
}

/// Handles one read request stream from `peer`.
pub(crate) async fn handle(
    server: Arc<Server>,
    peer: PeerIdentity,
    conn: Connection,
    mut recv: RecvStream,
) {
    let read = framed::read_frame(&mut recv, MAX_CONTROL_FRAME);
    let request: ReadRequest = match tokio::time::timeout(server.request_timeout, read).await {
        Ok(Ok(request)) => request,
        Ok(Err(e)) => {
            warn!(%peer, "unreadable read request: {e}");
            let _ = recv.stop(varint(ErrorCode::InvalidArgument));
            return;
        }
        Err(_) => {
            let after = server.request_timeout;
            warn!(%peer, "no read request within {after:?} (request_timeout_secs)");
            let _ = recv.stop(varint(ErrorCode::DeadlineExceeded));
            return;
        }
    };
    let transfer = request.transfer_id.to_string();
    tracing::Span::current().record("transfer_id", transfer.as_str());
    info!(%peer, transfer, path = %Logged(&request.path), "read request received");
    let id = request.request_id;
    let star = &server.trust.name;
    // Authorised first, and only then given a slot: a peer without a valid token holds none.
    let authorized = if server.life.draining.is_cancelled() {
        Err(ServeError::ShuttingDown(star.clone()))
    } else {
        authorize(&server, &peer, &request, Scope::Plain)
    };
    let slot = match authorized {
        Ok(verified) => match server.reads.slots.clone().try_acquire_owned() {
            Ok(slot) => Ok((verified, slot)),
            Err(_) => {
                let max = server.reads.max;
                warn!(%peer, transfer, path = %Logged(&request.path), "read refused: {max} already in flight (max_transfers)");
                Err(ServeError::Busy {
                    star: star.clone(),
                    max,
                })
            }
        },
        Err(error) => {
            warn!(%peer, transfer, path = %Logged(&request.path), "read refused: {error}");
            Err(error)
        }
    };
    if let Err(error) = &slot {
        server.metrics.read_failed(error.to_wire().code);
    }
    // A peer may grant no stream to answer on: bounded like every other write to it.
    let open = bounded(server.write_timeout, async {
        conn.open_uni()
            .await
            .map_err(|e| FramedError::Write(quinn::WriteError::ConnectionLost(e)))
    });
    let mut send = match open.await {
        Ok(send) => send,
        Err(e) => return warn!(%peer, transfer, "cannot answer the read request: {e}"),
    };
    let (verified, slot) = match slot {
        Ok(ok) => ok,
        Err(error) => return refuse(&mut send, id, error.to_wire()).await,
    };
    info!(%peer, transfer, path = %Logged(&request.path), "read authorised");
    let in_flight = server.reads.track();
    let started = Instant::now();
    let result = send_file(&server, &mut send, id, verified).await;
    drop(in_flight);
    // Whatever the peer does with the refusal that may follow, it holds no slot meanwhile.
    drop(slot);
    let path = conn.stats().path;
    tracing::debug!(
        mtu = path.current_mtu,
        cwnd = path.cwnd,
        rtt = ?path.rtt,
        lost_packets = path.lost_packets,
        congestion_events = path.congestion_events,
        black_holes = path.black_holes_detected,
        probes = path.sent_plpmtud_probes,
        lost_probes = path.lost_plpmtud_probes,
        "path to {peer} after the read"
    );
    match result {
        Ok(bytes) => {
            server.metrics.reads_ok(1);
            info!(
                %peer, transfer, path = %Logged(&request.path), bytes,
                seconds = started.elapsed().as_secs_f64(),
                "read completed"
            )
        }
        Err(error) => {
            let stalled = matches!(error, ServeError::Stream(FramedError::Stalled(_)));
            let error = error.to_wire();
            server.metrics.read_failed(error.code);
            warn!(%peer, transfer, path = %Logged(&request.path), "read failed: {error}");
            if stalled {
                // A peer that took nothing would take no Error frame either.
                let _ = send.reset(varint(error.code));
            } else {
                refuse(&mut send, id, error).await;
            }
        }
    }
}

/// Checks, in order: the peer is a star; the token (its format, which `scope` names: a plain
/// read token, or a link token of the relay request's transfer; MAC, expiry, audience, holder,
/// path, range, and for a link its transfer); the path lies under a root.
pub(crate) fn authorize(
    server: &Server,
    peer: &PeerIdentity,
    request: &ReadRequest,
    scope: Scope,
) -> Result<VerifiedRead, ServeError> {
    if peer.role != Role::Star {
        return Err(ServeError::NotAStar(peer.clone()));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let expected = token::Expected {
        audience: &server.trust.name,
        holder: &peer.name,
        path: &request.path,
        range: request.range,
        now,
    };
    let keys = server.trust.keys();
    let token = match scope {
        Scope::Plain => token::verify_with(&request.token, &keys, &expected).map(Proof::Plain),
        Scope::Link(transfer_id) => {
            let expected = token::ExpectedLink {
                read: expected,
                transfer_id,
            };
            token::verify_link(&request.token, &keys, &expected).map(Proof::Link)
        }
    }
    .inspect_err(|_| server.metrics.token_error())?;
    // The whole lifetime, from issue to expiry: a post-dated token cannot hide a long one
    // (verify refused one issued in the future already).
    let lifetime = token.lifetime();
    let cap = server.max_token_lifetime.as_secs();
    if lifetime > cap {
        server.metrics.token_error();
        return Err(ServeError::TokenTooLong { lifetime, cap });
    }
    let path = server.jail.confine(&request.path)?;
    Ok(VerifiedRead {
        token,
        path,
        range: request.range,
    })
}

/// Sends an `Error` frame and finishes the stream, then waits (boundedly) until the peer has it,
/// so that a connection closed right after, as at shutdown, does not swallow it. If the frame
/// cannot be written within [`ERROR_DELIVERY_TIMEOUT`], as when the peer grants no credit,
/// resets the stream with the code instead.
pub(crate) async fn refuse(send: &mut SendStream, request_id: u64, error: WireError) {
    let code = error.code;
    let frame = DataFrame::Error { request_id, error };
    let written = bounded(ERROR_DELIVERY_TIMEOUT, write_frame(send, &frame)).await;
    if written.is_err() || send.finish().is_err() {
        let _ = send.reset(varint(code));
        return;
    }
    let _ = tokio::time::timeout(ERROR_DELIVERY_TIMEOUT, send.stopped()).await;
}

/// Opens the file, sends header, chunks and trailer, and waits until the peer has them all.
/// Returns the bytes sent.
async fn send_file(
    server: &Server,
    send: &mut SendStream,
    request_id: u64,
    read: VerifiedRead,
) -> Result<u64, ServeError> {
    let jail = server.jail.clone();
    let path = read.path.clone();
    let opened = tokio::task::spawn_blocking(move || jail.open_read(&path))
        .await
        .map_err(lost_task)??;
    tracing::debug!(key_id = read.token.key_id(), "sending");
    let jail = server.jail.clone();
    let reopen = move || jail.open_read(&read.path);
    let size = stream_file(server, send, request_id, opened, read.range, reopen).await?;
    send.finish().map_err(FramedError::from)?;
    // Wait until the peer has everything, so a failure after this point is not silent.
    let _ = tokio::time::timeout(server.write_timeout, send.stopped()).await;
    Ok(size)
}

/// Sends the bytes of `range` of the file `opened` on `send` as the answer to `request_id`:
/// header, chunks and trailer. `reopen` opens the same name again at the end, to check that it
/// still names the version sent. Returns the bytes sent; the stream stays open.
pub(crate) async fn stream_file(
    server: &Server,
    send: &mut SendStream,
    request_id: u64,
    opened: OpenedFile,
    range: ByteRange,
    reopen: impl FnOnce() -> Result<OpenedFile, JailError> + Send + 'static,
) -> Result<u64, ServeError> {
    let version = version_of(&opened);
    let start = range.start.min(version.size);
    let end = range.end.min(version.size);
    let size = end - start;
    let limit = server.write_timeout;
    let header = DataFrame::Header {
        request_id,
        size,
        version,
    };
    bounded(limit, write_frame(send, &header)).await?;
    if request_id & WANTS_MODE != 0 {
        // The permission bits only: never setuid, setgid or sticky.
        let mode = DataFrame::Mode(opened.stat.st_mode & 0o777);
        bounded(limit, write_frame(send, &mode)).await?;
    }

    // A whole file already hashed in this version is not hashed again, and a range whose
    // requester checks the whole file itself (`RANGE_UNHASHED`) is not hashed at all: its
    // trailer's digest is all zeros.
    let key = FileKey::of(&opened.stat);
    let whole = start == 0 && size == version.size;
    let unhashed = request_id & RANGE_UNHASHED != 0;
    let known = if unhashed {
        Some([0; 32])
    } else if whole {
        server.reads.digests.get(&key)
    } else {
        None
    };
    let (tx, mut rx) = mpsc::channel::<Bytes>(READ_AHEAD);
    let buffers = server.reads.buffers.clone();
    let reader = tokio::task::spawn_blocking(move || {
        read_file(opened, version, start, size, known, &buffers, tx)
    });
    let mut offset = start;
    loop {
        // Shutdown is checked between chunks, never inside one, so the stream stays well-framed
        // and the Error frame that follows is read as such.
        let chunk = tokio::select! {
            biased;
            _ = server.life.cancel.cancelled() => {
                return Err(ServeError::ShuttingDown(server.trust.name.clone()))
            }
            chunk = rx.recv() => chunk,
        };
        let Some(chunk) = chunk else { break };
        let len = chunk.len() as u64;
        bounded(limit, write_chunk(send, offset, chunk)).await?;
        server.metrics.sent(len);
        offset += len;
    }
    let (sha256, after) = reader.await.map_err(lost_task)??;
    tracing::debug!(start, size, hashed = known.is_none(), "range read");
    // A file replaced (renamed over) while it was read leaves the open one intact; the path now
    // names another file, so what was sent is not what the path holds.
    let now = tokio::task::spawn_blocking(reopen)
        .await
        .map_err(lost_task)?;
    if !now.is_ok_and(|opened| version_of(&opened) == version) {
        return Err(ServeError::Changed("it was replaced or removed"));
    }
    if whole && known.is_none() && after == key {
        server.reads.digests.insert(key, sha256);
    }
    bounded(limit, write_frame(send, &DataFrame::Trailer { sha256 })).await?;
    Ok(size)
}

/// The SHA-256 of the first `len` bytes of `file`, read [`HASH_READ`] at a time. Blocking.
///
/// # Errors
///
/// `Changed` when the file ends before `len`; I/O errors.
pub(crate) fn hash_prefix(file: &File, len: u64) -> Result<[u8; 32], ServeError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_READ];
    let mut at = 0u64;
    while at < len {
        let want = (len - at).min(HASH_READ as u64) as usize;
        match rustix::io::pread(file, &mut buf[..want], at) {
            Ok(0) => return Err(ServeError::Changed("it became shorter")),
            Ok(n) => {
                hasher.update(&buf[..n]);
                at += n as u64;
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(hasher.finalize().into())
}

/// What identifies the version of an open file.
pub(crate) fn version_of(opened: &OpenedFile) -> FileVersion {
    FileVersion {
        size: u64::try_from(opened.stat.st_size).unwrap_or(0),
        mtime_sec: opened.stat.st_mtime,
        mtime_nsec: u32::try_from(opened.stat.st_mtime_nsec).unwrap_or(0),
        inode: opened.stat.st_ino,
    }
}

/// Reads `size` bytes from `start` in chunks, hashing them unless their digest is `known`, and
/// checks at the end that the file did not change underneath. Returns the digest and the file's
/// key at the end. Runs on a blocking thread.
fn read_file(
    opened: OpenedFile,
    version: FileVersion,
    start: u64,
    size: u64,
    known: Option<[u8; 32]>,
    buffers: &Arc<Buffers>,
    tx: mpsc::Sender<Bytes>,
) -> Result<([u8; 32], FileKey), ServeError> {
    let changed = ServeError::Changed;
    let file = opened.file;
    let opened_size = opened.stat.st_size;
    // Hashed on a thread of its own: reading and hashing on this one made it the star's busiest.
    let hashing = match known {
        Some(_) => None,
        None => Some(Hashing::start(Sha256::new())?),
    };
    let mut offset = start;
    let mut left = size;
    while left > 0 {
        let want = left.min(CHUNK_SIZE as u64) as usize;
        // Read into uninitialised memory (zeroing 64 KiB first cost 4% of the CPU), a buffer
        // used before if there is one ([`Buffers`]).
        let mut buf = buffers.take();
        while buf.len() < want {
            let at = offset + buf.len() as u64;
            match rustix::io::pread(&file, rustix::buffer::spare_capacity(&mut buf), at) {
                Ok(0) => return Err(changed("it became shorter")),
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        // The buffer has room for a whole chunk, and the read may have filled it.
        buf.truncate(want);
        // Checked at every chunk, so a file modified in place fails the transfer at once.
        let now = rustix::fs::fstat(&file)?;
        if now.st_size != opened_size
            || now.st_mtime != version.mtime_sec
            || u32::try_from(now.st_mtime_nsec).unwrap_or(0) != version.mtime_nsec
        {
            return Err(changed("it was modified"));
        }
        let buf = buffers.share(buf);
        if let Some(hashing) = &hashing {
            hashing
                .update_one(buf.clone())
                .map_err(std::io::Error::other)?;
        }
        left -= want as u64;
        offset += want as u64;
        if tx.blocking_send(buf).is_err() {
            // The sender stopped: the stream failed and that error is reported there.
            return Err(ServeError::Abandoned);
        }
    }
    let now = rustix::fs::fstat(&file)?;
    let key = FileKey::of(&now);
    let after = version_of(&OpenedFile { file, stat: now });
    if after != version {
        return Err(changed("its size or modification time moved"));
    }
    let sha256 = match hashing {
        Some(hashing) => hashing.digests().map_err(std::io::Error::other)?.whole,
        None => known.unwrap_or_default(),
    };
    Ok((sha256, key))
}
