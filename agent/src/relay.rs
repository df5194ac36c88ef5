//! The serving side of fan-out: a star answers a [`RelayRequest`] from another star.
//!
//! - If this star is receiving the path asked for in the same transfer (it is a destination of
//!   the fan-out), it **follows** its own copy: it sends the origin's version in the header, then
//!   the bytes of its temporary file as far as they are written, waiting for more, and once it
//!   has verified and published the file itself, the origin's attestation. A slow reader holds
//!   up no one: the bytes come from the file, not from the stream this star receives on.
//! - Otherwise, if the request names this star as the origin, it **originates**: it sends its
//!   file as for a read request, then signs an attestation of the file's version and SHA-256.
//!
//! Either way the request passes the checks of a read request first (a star's certificate, the
//! token for this path and range, the path under a root) and takes one read slot. Its token must
//! be a link token minted for the transfer the request names: a plain read token, or a link token
//! of another transfer, is refused, and a link token opens no plain read (`serve`).

use std::fs::File;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::SendStream;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tracing::{info, warn};

use orbit_certs::PeerIdentity;
use orbit_wire::fanout::{AttestClaims, Attestation, RelayRequest};
use orbit_wire::{
    ByteRange, DataFrame, FileVersion, ReadRequest, CHUNK_SIZE, RANGE_UNHASHED, WANTS_MODE,
};

use crate::buffers::Buffers;
use crate::digests::FileKey;
use crate::error::ToWire;
use crate::framed::{bounded, write_chunk, write_frame, FramedError};
use crate::jail::Confined;
use crate::logged::Logged;
use crate::replication::{Feed, Replications, Transfer};
use crate::serve::{
    authorize, hash_prefix, lost_task, refuse, stream_file, version_of, Scope, ServeError, Server,
    VerifiedRead,
};

/// How long a relay request waits for its transfer's command to reach this star.
const RELAY_PATIENCE: Duration = Duration::from_secs(10);

/// Bytes read from the file per trip to a blocking thread: 16 chunks.
const BATCH: u64 = 16 * CHUNK_SIZE as u64;

/// Handles one relay request from `peer`, answering on `send`.
pub(crate) async fn handle(
    server: Arc<Server>,
    register: Arc<Replications>,
    peer: PeerIdentity,
    request: RelayRequest,
    mut send: SendStream,
) {
    let id = request.request_id;
    let transfer = request.transfer_id.to_string();
    let read = ReadRequest {
        request_id: id,
        transfer_id: request.transfer_id,
        path: request.path.clone(),
        token: request.token.clone(),
        range: request.range,
    };
    let star = &server.trust.name;
    let authorized = if server.life.draining.is_cancelled() {
        Err(ServeError::ShuttingDown(star.clone()))
    } else {
        authorize(&server, &peer, &read, Scope::Link(request.transfer_id))
    };
    let verified = match authorized {
        Ok(verified) => verified,
        Err(error) => {
            warn!(%peer, transfer, path = %Logged(&request.path), "relay read refused: {error}");
            let error = error.to_wire();
            server.metrics.read_failed(error.code);
            return refuse(&mut send, id, error).await;
        }
    };
    // Taken only once the peer has shown it may read, so that no one else can fill the slots.
    let Ok(_slot) = server.reads.slots.clone().try_acquire_owned() else {
        let max = server.reads.max;
        warn!(%peer, transfer, path = %Logged(&request.path), "relay read refused: {max} already in flight (max_transfers)");
        let error = ServeError::Busy {
            star: star.clone(),
            max,
        }
        .to_wire();
        server.metrics.read_failed(error.code);
        return refuse(&mut send, id, error).await;
    };
    // A star not the origin is a destination whose own command may be a moment behind.
    let patience = match request.origin == *star {
        true => Duration::ZERO,
        false => RELAY_PATIENCE,
    };
    let following = register
        .get_soon(request.transfer_id, patience)
        .await
        .filter(|t| {
            t.target_path == request.path
                && t.feed.borrow().origin.as_deref() == Some(request.origin.as_str())
        });
    let in_flight = server.reads.track();
    let result = match following {
        Some(transfer) => {
            info!(%peer, transfer = %request.transfer_id, path = %Logged(&request.path), "relaying the file this star receives");
            follow(
                &server,
                &mut send,
                id,
                &transfer,
                &verified.path,
                request.range,
            )
            .await
        }
        None if request.origin == *star => {
            info!(%peer, transfer = %request.transfer_id, path = %Logged(&request.path), "sending the file as the fan-out's origin");
            originate(&server, &mut send, &request, verified).await
        }
        None => Err(ServeError::NotRelaying {
            star: star.clone(),
            path: request.path.clone(),
            transfer: request.transfer_id,
        }),
    };
    drop(in_flight);
    match result {
        Ok(bytes) => {
            // Counted once everything is written, before the peer acknowledges it: a peer that
            // has the last frame and says so (its transfer done) finds it counted.
            server.metrics.reads_ok(1);
            let _ = tokio::time::timeout(server.write_timeout, send.stopped()).await;
            info!(%peer, transfer, path = %Logged(&request.path), bytes, "relay read completed");
        }
        Err(error) => {
            let error = error.to_wire();
            server.metrics.read_failed(error.code);
            warn!(%peer, transfer, path = %Logged(&request.path), "relay read failed: {error}");
            refuse(&mut send, id, error).await;
        }
    }
}

/// Sends this star's own file, then its attestation. Returns the bytes sent.
async fn originate(
    server: &Server,
    send: &mut SendStream,
    request: &RelayRequest,
    read: VerifiedRead,
) -> Result<u64, ServeError> {
    let jail = server.jail.clone();
    let path = read.path.clone();
    let opened = tokio::task::spawn_blocking(move || jail.open_read(&path))
        .await
        .map_err(lost_task)??;
    let version = version_of(&opened);
    let key = FileKey::of(&opened.stat);
    let jail = server.jail.clone();
    let again = read.path.clone();
    let reopen = move || jail.open_read(&again);
    let bytes = stream_file(server, send, request.request_id, opened, read.range, reopen).await?;
    // A piece of a file its requester checks whole asks for no attestation: it has one from
    // the empty read, and signing here would mean hashing the whole file for each first piece.
    if request.request_id & RANGE_UNHASHED != 0 && request.range.end > request.range.start {
        send.finish().map_err(FramedError::from)?;
        return Ok(bytes);
    }
    // A whole read has just put the digest in the cache. A ranged one (a resume, the empty read
    // that asks for the attestation alone, a piece asked for by a star of an earlier release)
    // hashes the whole file once and caches it too: every later read of the same version finds
    // it there.
    let sha256 = match server.reads.digests.get(&key) {
        Some(sha256) => sha256,
        None => {
            let jail = server.jail.clone();
            let path = read.path.clone();
            let (sha256, unchanged) = tokio::task::spawn_blocking(move || {
                let opened = jail.open_read(&path)?;
                if FileKey::of(&opened.stat) != key {
                    return Err(ServeError::Changed("it was replaced"));
                }
                let sha256 = hash_prefix(&opened.file, version.size)?;
                let after = rustix::fs::fstat(&opened.file)?;
                Ok((sha256, FileKey::of(&after) == key))
            })
            .await
            .map_err(lost_task)??;
            if !unchanged {
                return Err(ServeError::Changed("it was modified while it was hashed"));
            }
            server.reads.digests.insert(key, sha256);
            sha256
        }
    };
    let claims = AttestClaims {
        transfer_id: request.transfer_id,
        origin: server.trust.name.clone(),
        path: request.path.clone(),
        version,
        sha256,
    };
    let signed = server
        .trust
        .attester()
        .sign(&claims.signed_bytes())
        .map_err(|e| ServeError::Internal(e.to_string()))?;
    let attestation = Attestation {
        claims,
        scheme: signed.scheme,
        signature: signed.signature.into(),
        certificate: signed.certificate.into(),
    };
    bounded(
        server.write_timeout,
        write_frame(send, &DataFrame::Attested(attestation)),
    )
    .await?;
    send.finish().map_err(FramedError::from)?;
    Ok(bytes)
}

/// Sends the file `transfer` is receiving here as it arrives, then the origin's attestation
/// once this star has published it. Returns the bytes sent.
async fn follow(
    server: &Server,
    send: &mut SendStream,
    request_id: u64,
    transfer: &Transfer,
    path: &Confined,
    range: ByteRange,
) -> Result<u64, ServeError> {
    let star = &server.trust.name;
    let mut feed = transfer.feed.subscribe();
    let (epoch, version, file) = loop {
        let held = {
            let now = feed.borrow_and_update();
            still_good(&now, None, star)?;
            match (now.version, &now.file) {
                (Some(version), Some(file)) => Held::Open(now.epoch, version, file.clone()),
                // The transfer has ended and let go of its file: the file as published, or
                // nothing to wait for.
                _ if now.ended => match (now.version, now.published) {
                    (Some(version), Some(key)) if now.attestation.is_some() => {
                        Held::Published(now.epoch, version, key)
                    }
                    _ => {
                        return Err(ServeError::NotRelaying {
                            star: star.clone(),
                            path: transfer.target_path.clone(),
                            transfer: transfer.id,
                        })
                    }
                },
                _ => Held::NotYet,
            }
        };
        match held {
            Held::Open(epoch, version, file) => break (epoch, version, file),
            Held::Published(epoch, version, key) => {
                break (epoch, version, reopen(server, path, key).await?)
            }
            Held::NotYet => changed(server, &mut feed).await?,
        }
    };
    let (start, end) = (range.start.min(version.size), range.end.min(version.size));
    let header = DataFrame::Header {
        request_id,
        size: end - start,
        version,
    };
    bounded(server.write_timeout, write_frame(send, &header)).await?;
    let mut offset = start;
    let mut hasher = Sha256::new();
    while offset < end {
        let written = {
            let now = feed.borrow_and_update();
            still_good(&now, Some((epoch, version)), star)?;
            now.written.min(end)
        };
        if written <= offset {
            changed(server, &mut feed).await?;
            continue;
        }
        let want = (written - offset).min(BATCH);
        let (file, buffers) = (file.clone(), server.reads.buffers.clone());
        let (chunks, kept) = tokio::task::spawn_blocking(move || {
            let chunks = read_chunks(&file, offset, want, &buffers, &mut hasher);
            (chunks, hasher)
        })
        .await
        .map_err(lost_task)?;
        hasher = kept;
        let chunks = chunks?;
        // What was read is good only if the file did not start over meanwhile.
        still_good(&feed.borrow(), Some((epoch, version)), star)?;
        for chunk in chunks {
            let len = chunk.len() as u64;
            tokio::select! {
                biased;
                _ = server.life.cancel.cancelled() => return Err(ServeError::ShuttingDown(star.clone())),
                written = bounded(server.write_timeout, write_chunk(send, offset, chunk)) => written?,
            }
            server.metrics.sent(len);
            offset += len;
        }
    }
    // This star verifies and publishes its own copy before the trailer goes out: then the
    // origin's attestation is at hand, and so are its permission bits, which came before it.
    let attestation = loop {
        {
            let now = feed.borrow_and_update();
            still_good(&now, Some((epoch, version)), star)?;
            if let Some(attestation) = &now.attestation {
                break attestation.clone();
            }
        }
        changed(server, &mut feed).await?;
    };
    let mode = feed.borrow().mode;
    if let Some(bits) = mode.filter(|_| request_id & WANTS_MODE != 0) {
        bounded(
            server.write_timeout,
            write_frame(send, &DataFrame::Mode(bits)),
        )
        .await?;
    }
    let trailer = DataFrame::Trailer {
        sha256: hasher.finalize().into(),
    };
    bounded(server.write_timeout, write_frame(send, &trailer)).await?;
    bounded(
        server.write_timeout,
        write_frame(send, &DataFrame::Attested((*attestation).clone())),
    )
    .await?;
    send.finish().map_err(FramedError::from)?;
    Ok(end - start)
}

/// What a relay read finds in its transfer's feed.
enum Held {
    /// The file being received (or just published), with its epoch and version.
    Open(u64, FileVersion, Arc<File>),
    /// The transfer has ended: what its published file was.
    Published(u64, FileVersion, FileKey),
    /// Nothing to read yet.
    NotYet,
}

/// The file an ended transfer published, opened again by its path, if it is still that file.
async fn reopen(server: &Server, path: &Confined, key: FileKey) -> Result<Arc<File>, ServeError> {
    let (jail, path) = (server.jail.clone(), path.clone());
    let opened = tokio::task::spawn_blocking(move || jail.open_read(&path))
        .await
        .map_err(lost_task)??;
    if FileKey::of(&opened.stat) != key {
        return Err(ServeError::Changed(
            "it was changed or replaced after this star received it",
        ));
    }
    Ok(Arc::new(opened.file))
}

/// Whether the feed still holds the bytes being relayed: this star's own copy has not failed
/// and, once started, the file has not started over.
fn still_good(
    feed: &Feed,
    started: Option<(u64, FileVersion)>,
    star: &str,
) -> Result<(), ServeError> {
    if let Some(error) = &feed.failed {
        return Err(ServeError::RelayFailed {
            star: star.to_owned(),
            error: error.clone(),
        });
    }
    match started {
        Some((epoch, version)) if feed.epoch != epoch || feed.version != Some(version) => Err(
            ServeError::Changed("the relaying star started the file over"),
        ),
        _ => Ok(()),
    }
}

/// Waits for the feed to move, or the star to stop.
async fn changed(server: &Server, feed: &mut watch::Receiver<Feed>) -> Result<(), ServeError> {
    tokio::select! {
        _ = server.life.cancel.cancelled() => Err(ServeError::ShuttingDown(server.trust.name.clone())),
        moved = feed.changed() => moved.map_err(|_| ServeError::Internal("the transfer is gone".into())),
    }
}

/// Reads `len` bytes from `offset` in chunks, hashing them. Runs on a blocking thread.
fn read_chunks(
    file: &File,
    mut offset: u64,
    len: u64,
    buffers: &Arc<Buffers>,
    hasher: &mut Sha256,
) -> Result<Vec<Bytes>, ServeError> {
    let end = offset + len;
    let mut chunks = Vec::new();
    while offset < end {
        let want = (end - offset).min(CHUNK_SIZE as u64) as usize;
        let mut buf = buffers.take();
        while buf.len() < want {
            let at = offset + buf.len() as u64;
            match rustix::io::pread(file, rustix::buffer::spare_capacity(&mut buf), at) {
                Ok(0) => return Err(ServeError::Changed("it became shorter")),
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        buf.truncate(want);
        hasher.update(&buf);
        offset += want as u64;
        chunks.push(buffers.share(buf));
    }
    Ok(chunks)
}
