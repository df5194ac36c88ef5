//! The source side of a tree: a destination star opens a bidirectional stream and asks to list
//! a directory or to send some of its files (`ControlRequest::List` and `Fetch`, see
//! `orbit_wire::tree`).
//!
//! The tree token is checked when a stream opens: the first time on a connection in full (MAC,
//! expiry, audience, holder, directory, lifetime cap), after that by its digest in the
//! connection's [`Sessions`], so a tree that takes longer than its token's lifetime finishes on
//! the connection it started on. Every name beneath the tree's top is resolved from the top's
//! handle through no symbolic link (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`);
//! the token's filter is applied here, to the listing and to every file asked for, so a
//! destination cannot widen it. Only regular files with one name are sent, as for single files.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};

use quinn::SendStream;
use rustix::fs::OFlags;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tracing::{info, warn};

use orbit_certs::{PeerIdentity, Role};
use orbit_wire::token::{self, TreeClaims};
use orbit_wire::tree::{
    self, Entry, FetchRequest, ListFrame, ListRequest, PrefixFrame, PrefixRequest, MAX_FETCH_FILES,
    WHOLE_REQUEST,
};
use orbit_wire::{ByteRange, DataFrame, ErrorCode, TransferId, WireError};

use crate::digests::FileKey;
use crate::error::ToWire;
use crate::framed::{bounded, write_chunk, write_frame, FramedError};
use crate::jail::{open_in_tree, open_tree_file, OpenedFile, Protected};
use crate::logged::Logged;
use crate::serve::{lost_task, refuse, stream_file, version_of, ServeError, Server};

mod walk;

use self::walk::walk;

/// Tree tokens a connection remembers as verified.
const MAX_SESSIONS: usize = 64;

/// The tree tokens verified on one connection, by the SHA-256 of the token. Dropped with the
/// connection, so a revoked peer (whose connections are closed) loses them.
#[derive(Debug, Default)]
pub(crate) struct Sessions(Mutex<HashMap<[u8; 32], Arc<TreeClaims>>>);

impl Sessions {
    fn get(&self, token: &str) -> Option<Arc<TreeClaims>> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.lock().get(&key).cloned()
    }

    fn insert(&self, token: &str, claims: Arc<TreeClaims>) {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut map = self.lock();
        if map.len() >= MAX_SESSIONS {
            map.clear();
        }
        map.insert(key, claims);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Arc<TreeClaims>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How long the listing may go without a batch before an empty one is sent, well inside the
/// destination's 30 s stall timeout.
const KEEP_LISTING: std::time::Duration = std::time::Duration::from_secs(5);

/// A tree request that passed every check: the claims and the top directory, open.
struct Authorized {
    claims: Arc<TreeClaims>,
    top: Arc<OwnedFd>,
    /// The star's own files and folders: never listed as part of a tree, never sent.
    protected: Arc<Protected>,
}

/// A tree request, as `control` read it from a bidirectional stream.
pub(crate) enum TreeRequest {
    List(ListRequest),
    Fetch(FetchRequest),
    Prefix(PrefixRequest),
}

/// Answers one tree request from `peer` on `send`.
pub(crate) async fn handle(
    server: Arc<Server>,
    sessions: Arc<Sessions>,
    peer: PeerIdentity,
    request: TreeRequest,
    mut send: SendStream,
) {
    let (transfer, path, token, what) = match &request {
        TreeRequest::List(r) => (r.transfer_id, &r.path, &r.token, "list"),
        TreeRequest::Fetch(r) => (r.transfer_id, &r.path, &r.token, "fetch"),
        TreeRequest::Prefix(r) => (r.transfer_id, &r.path, &r.token, "prefix"),
    };
    tracing::Span::current().record("transfer_id", transfer.to_string().as_str());
    let authorized = authorize(&server, &sessions, &peer, path, token).await;
    // A slot is taken only once the request is authorised: an unauthorised peer holds none.
    let slot = match authorized {
        Ok(ok) => match server.reads.slots.clone().try_acquire_owned() {
            Ok(slot) => Ok((ok, slot)),
            Err(_) => Err(ServeError::Busy {
                star: server.trust.name.clone(),
                max: server.reads.max,
            }),
        },
        Err(e) => Err(e),
    };
    let (authorized, _slot) = match slot {
        Ok(ok) => ok,
        Err(error) => {
            warn!(%peer, %transfer, path = %Logged(path), "tree {what} refused: {error}");
            let error = error.to_wire();
            server.metrics.read_failed(error.code);
            match request {
                TreeRequest::List(_) => {
                    let _ = bounded(
                        server.write_timeout,
                        write_frame(&mut send, &ListFrame::Error(error)),
                    )
                    .await;
                    let _ = send.finish();
                    let _ = tokio::time::timeout(server.write_timeout, send.stopped()).await;
                }
                TreeRequest::Fetch(_) => refuse(&mut send, WHOLE_REQUEST, error).await,
                TreeRequest::Prefix(_) => {
                    let _ = bounded(
                        server.write_timeout,
                        write_frame(&mut send, &PrefixFrame::Error(error)),
                    )
                    .await;
                    let _ = send.finish();
                    let _ = tokio::time::timeout(server.write_timeout, send.stopped()).await;
                }
            }
            return;
        }
    };
    let _in_flight = server.reads.track();
    match request {
        TreeRequest::List(request) => list(&server, &peer, authorized, request, &mut send).await,
        TreeRequest::Fetch(request) => fetch(&server, &peer, authorized, request, &mut send).await,
        TreeRequest::Prefix(request) => {
            let answer = match prefix(&authorized, request.name, request.len).await {
                Ok((version, sha256)) => PrefixFrame::Digest { version, sha256 },
                Err(error) => {
                    warn!(%peer, %transfer, "tree prefix refused: {error}");
                    PrefixFrame::Error(error.to_wire())
                }
            };
            if bounded(server.write_timeout, write_frame(&mut send, &answer))
                .await
                .is_ok()
                && send.finish().is_ok()
            {
                let _ = tokio::time::timeout(server.write_timeout, send.stopped()).await;
            }
        }
    }
}

/// Checks the peer is a star and the token allows reading the tree at `path`, and opens it.
async fn authorize(
    server: &Server,
    sessions: &Sessions,
    peer: &PeerIdentity,
    path: &str,
    token: &str,
) -> Result<Authorized, ServeError> {
    if peer.role != Role::Star {
        return Err(ServeError::NotAStar(peer.clone()));
    }
    if server.life.draining.is_cancelled() {
        return Err(ServeError::ShuttingDown(server.trust.name.clone()));
    }
    let claims = match sessions
        .get(token)
        .filter(|c| c.path == path && c.holder == peer.name)
    {
        Some(claims) => claims,
        None => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let expected = token::ExpectedTree {
                audience: &server.trust.name,
                holder: &peer.name,
                path,
                now,
            };
            let verified = token::verify_tree(token, &server.trust.keys(), &expected)
                .inspect_err(|_| server.metrics.token_error())?;
            let lifetime = verified.claims().lifetime();
            let cap = server.max_token_lifetime.as_secs();
            if lifetime > cap {
                server.metrics.token_error();
                return Err(ServeError::TokenTooLong { lifetime, cap });
            }
            let claims = Arc::new(verified.claims().clone());
            sessions.insert(token, claims.clone());
            claims
        }
    };
    let jail = server.jail.clone();
    let path = path.to_owned();
    let top = tokio::task::spawn_blocking(move || {
        let dir = jail.confine_dir(&path)?;
        jail.open_dir(&dir)
    })
    .await
    .map_err(lost_task)??;
    Ok(Authorized {
        claims,
        top: Arc::new(top),
        protected: server.jail.protected(),
    })
}

/// Sends the listing: batches of entries as the walk finds them, then `End`.
async fn list(
    server: &Server,
    peer: &PeerIdentity,
    authorized: Authorized,
    request: ListRequest,
    send: &mut SendStream,
) {
    info!(%peer, transfer = %request.transfer_id, path = %Logged(&request.path), "tree listing started");
    let (tx, mut rx) = mpsc::channel::<Vec<Entry>>(4);
    let reads = server.reads.clone();
    let checksums = request.checksums;
    let walker = tokio::task::spawn_blocking(move || {
        let digests = |key: &FileKey| reads.digests.get(key);
        let remember = |key: FileKey, sha: [u8; 32]| reads.digests.insert(key, sha);
        walk(&authorized, checksums, &digests, &remember, &tx)
    });
    let mut entries = 0u64;
    loop {
        let batch = tokio::select! {
            biased;
            _ = server.life.cancel.cancelled() => {
                let error = ServeError::ShuttingDown(server.trust.name.clone()).to_wire();
                let _ = bounded(server.write_timeout, write_frame(send, &ListFrame::Error(error))).await;
                let _ = send.finish();
                return;
            }
            batch = tokio::time::timeout(KEEP_LISTING, rx.recv()) => batch,
        };
        // The walk is slow here (hashing a large file, crossing many excluded entries): an
        // empty batch tells the destination the listing is alive.
        let batch = batch.unwrap_or(Some(Vec::new()));
        let Some(batch) = batch else { break };
        entries += batch.len() as u64;
        if let Err(e) = bounded(
            server.write_timeout,
            write_frame(send, &ListFrame::Entries(batch)),
        )
        .await
        {
            warn!(%peer, transfer = %request.transfer_id, "tree listing abandoned: {e}");
            return;
        }
    }
    drop(rx);
    let end = match walker.await.map_err(lost_task).and_then(|r| r) {
        Ok(()) => {
            info!(%peer, transfer = %request.transfer_id, entries, "tree listing sent");
            ListFrame::End
        }
        Err(error) => {
            warn!(%peer, transfer = %request.transfer_id, "tree listing failed: {error}");
            ListFrame::Error(error.to_wire())
        }
    };
    if bounded(server.write_timeout, write_frame(send, &end))
        .await
        .is_ok()
        && send.finish().is_ok()
    {
        let _ = tokio::time::timeout(server.write_timeout, send.stopped()).await;
    }
}

/// Sends the files asked for, in order, each as header, chunks and trailer, or an `Error` frame
/// with its index; then finishes the stream.
async fn fetch(
    server: &Server,
    peer: &PeerIdentity,
    authorized: Authorized,
    request: FetchRequest,
    send: &mut SendStream,
) {
    let transfer: TransferId = request.transfer_id;
    if request.files.len() > MAX_FETCH_FILES {
        let error = WireError::new(
            ErrorCode::InvalidArgument,
            format!("a fetch asks for at most {MAX_FETCH_FILES} files"),
        );
        return refuse(send, WHOLE_REQUEST, error).await;
    }
    let (mut sent, mut bytes) = (0u64, 0u64);
    for (index, file) in request.files.into_iter().enumerate() {
        let index = index as u64;
        let result = send_one(server, &authorized, index, &file.name, file.offset, send).await;
        match result {
            Ok(n) => {
                sent += 1;
                bytes += n;
            }
            Err(ServeError::Stream(e)) => {
                warn!(%peer, %transfer, "tree fetch abandoned: {e}");
                server.metrics.reads_ok(sent);
                server.metrics.read_failed(e.to_wire().code);
                return;
            }
            Err(ServeError::ShuttingDown(star)) => {
                let error = ServeError::ShuttingDown(star).to_wire();
                return refuse(send, WHOLE_REQUEST, error).await;
            }
            Err(error) => {
                let name = tree::display_name(&file.name);
                warn!(%peer, %transfer, file = %name, "tree file refused: {error}");
                let error = error.to_wire();
                server.metrics.read_failed(error.code);
                let frame = DataFrame::Error {
                    request_id: index,
                    error,
                };
                if bounded(server.write_timeout, write_frame(send, &frame))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
    server.metrics.reads_ok(sent);
    tracing::debug!(%peer, %transfer, files = sent, bytes, "tree fetch sent");
    if send.finish().map_err(FramedError::from).is_ok() {
        let _ = tokio::time::timeout(server.write_timeout, send.stopped()).await;
    }
}

/// Sends one file of a fetch. Refuses names that are malformed or outside the token's filter.
async fn send_one(
    server: &Server,
    authorized: &Authorized,
    index: u64,
    name: &[u8],
    offset: u64,
    send: &mut SendStream,
) -> Result<u64, ServeError> {
    tree::check_name(name)?;
    let (top, claims) = (authorized.top.clone(), authorized.claims.clone());
    let (owned, protected) = (name.to_vec(), authorized.protected.clone());
    // The filter's globs run here too, off the async workers: a name may have many parents.
    let read = tokio::task::spawn_blocking(move || {
        if !within_filter(&claims.filter, &owned) {
            return Err(ServeError::OutsideFilter);
        }
        read_small(top.as_fd(), &owned, offset, &protected)
    })
    .await
    .map_err(lost_task)??;
    let opened = match read {
        Read::Whole {
            version,
            data,
            sha256,
        } => {
            let size = version.size;
            let header = DataFrame::Header {
                request_id: index,
                size,
                version,
            };
            bounded(server.write_timeout, write_frame(send, &header)).await?;
            let mut at = 0;
            while at < data.len() {
                let end = (at + orbit_wire::CHUNK_SIZE).min(data.len());
                bounded(
                    server.write_timeout,
                    write_chunk(send, at as u64, data.slice(at..end)),
                )
                .await?;
                server.metrics.sent((end - at) as u64);
                at = end;
            }
            bounded(
                server.write_timeout,
                write_frame(send, &DataFrame::Trailer { sha256 }),
            )
            .await?;
            return Ok(size);
        }
        Read::Open(opened) => opened,
    };
    let (top, owned) = (authorized.top.clone(), name.to_vec());
    let protected = authorized.protected.clone();
    let reopen = move || open_tree_file(top.as_fd(), &owned, &protected);
    let range = ByteRange {
        start: offset,
        end: u64::MAX,
    };
    stream_file(server, send, index, opened, range, reopen).await
}

/// Files up to this size are read whole in one blocking call, checks included; larger ones are
/// streamed chunk by chunk. Three hand-offs to blocking threads per file (open, read, reopen)
/// were most of the source's time for a tree of small files.
const SMALL_FILE: u64 = 256 * 1024;

/// A file of a tree opened to send.
enum Read {
    /// A small file, read and checked whole.
    Whole {
        version: orbit_wire::FileVersion,
        data: bytes::Bytes,
        sha256: [u8; 32],
    },
    /// A larger file (or one asked for from an offset), open.
    Open(OpenedFile),
}

/// Opens the file `name` beneath `top` and, when it is small and wanted whole, reads it, hashes
/// it and checks that it did not change and that its name still names it, as a streamed read
/// does over its chunks. Blocking.
fn read_small(
    top: BorrowedFd<'_>,
    name: &[u8],
    offset: u64,
    protected: &Protected,
) -> Result<Read, ServeError> {
    let opened = open_tree_file(top, name, protected)?;
    let version = version_of(&opened);
    if offset != 0 || version.size > SMALL_FILE {
        return Ok(Read::Open(opened));
    }
    let size = version.size as usize;
    let mut data = vec![0u8; size];
    let mut at = 0;
    while at < size {
        match rustix::io::pread(&opened.file, &mut data[at..], at as u64) {
            Ok(0) => return Err(ServeError::Changed("it became shorter")),
            Ok(n) => at += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let after = rustix::fs::fstat(&opened.file)?;
    let still = version_of(&OpenedFile {
        file: opened.file,
        stat: after,
    });
    if still != version {
        return Err(ServeError::Changed("it was modified"));
    }
    // A file replaced (renamed over) while it was read leaves the open one intact; the name
    // must still name the version sent.
    let now = open_in_tree(top, name, OFlags::PATH)
        .and_then(|fd| Ok(rustix::fs::fstat(&fd)?))
        .ok();
    if !now.is_some_and(|stat| stat.st_ino == after.st_ino && stat.st_dev == after.st_dev) {
        return Err(ServeError::Changed("it was replaced or removed"));
    }
    let sha256 = Sha256::digest(&data).into();
    Ok(Read::Whole {
        version,
        data: bytes::Bytes::from(data),
        sha256,
    })
}

/// The version of the file `name` of the tree and the SHA-256 of its first `len` bytes, read
/// while the file did not change. Refuses what a fetch would refuse.
async fn prefix(
    authorized: &Authorized,
    name: Vec<u8>,
    len: u64,
) -> Result<(orbit_wire::FileVersion, [u8; 32]), ServeError> {
    tree::check_name(&name)?;
    if !within_filter(&authorized.claims.filter, &name) {
        return Err(ServeError::OutsideFilter);
    }
    let (top, protected) = (authorized.top.clone(), authorized.protected.clone());
    tokio::task::spawn_blocking(move || {
        let opened = open_tree_file(top.as_fd(), &name, &protected)?;
        let version = crate::serve::version_of(&opened);
        if len > version.size {
            return Err(ServeError::Changed(
                "it is shorter than the bytes asked for",
            ));
        }
        let sha256 = crate::serve::hash_prefix(&opened.file, len)?;
        let after = rustix::fs::fstat(&opened.file)?;
        let now = crate::serve::version_of(&crate::jail::OpenedFile {
            file: opened.file,
            stat: after,
        });
        if now != version {
            return Err(ServeError::Changed("it was modified"));
        }
        Ok((version, sha256))
    })
    .await
    .map_err(lost_task)?
}

/// Whether the filter admits `name` as a file and each of its parents as a directory: a file
/// the listing would not show is not sent either.
fn within_filter(filter: &tree::Filter, name: &[u8]) -> bool {
    let parents = name
        .iter()
        .enumerate()
        .filter(|(_, &b)| b == b'/')
        .map(|(i, _)| &name[..i]);
    parents.into_iter().all(|dir| filter.admits(dir, true)) && filter.admits(name, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_covers_every_parent() {
        let filter = tree::Filter {
            exclude: vec!["cache/".into(), "*.tmp".into()],
            include: vec![],
            links: false,
        };
        assert!(within_filter(&filter, b"a/b/c"));
        assert!(!within_filter(&filter, b"a/cache/c"));
        assert!(!within_filter(&filter, b"cache/c"));
        assert!(within_filter(&filter, b"a/cache"));
        assert!(!within_filter(&filter, b"a/x.tmp"));
    }
}
