//! Control streams: a controller's command arrives on a bidirectional stream; the star answers
//! with progress events and one final event. Only a controller certificate may command a star.
//!
//! A replication runs in a task of its own, registered in [`crate::replication`]: the control
//! stream only follows it. A controller that goes away never stops a transfer; only `Cancel` or
//! the star's shutdown do.

use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::{Connection, RecvStream, SendStream};
use tracing::{info, warn};

use orbit_certs::{PeerIdentity, Role};
use orbit_wire::{
    ControlEvent, ControlRequest, ErrorCode, StarStatus, TransferId, WireError, MAX_CONTROL_FRAME,
};

use crate::error::ToWire;
use crate::framed::{self, bounded, write_frame};
use crate::replication::{Notes, Replicator, Transfer, KEEP_FOR};
use crate::serve::{Reads, Server};
use crate::tree_serve::{self, Sessions, TreeRequest};

/// How often progress is reported while bytes move.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(500);
/// How often a fan-out destination reports it: a controller follows hundreds of them at once,
/// and its traffic should stay a few kilobytes per destination.
const FANOUT_PROGRESS_INTERVAL: Duration = Duration::from_secs(5);
/// How long the final event may wait for the controller to read it.
const FINAL_EVENT_TIMEOUT: Duration = Duration::from_secs(2);

/// What control streams use: the replications, and what `status` reports.
#[derive(Debug)]
pub(crate) struct Commands {
    /// When the star started.
    pub(crate) started: Instant,
    /// How long a controller may take to send its request.
    pub(crate) request_timeout: Duration,
    pub(crate) replicator: Arc<Replicator>,
    pub(crate) reads: Arc<Reads>,
    /// What answers a star's requests for trees.
    pub(crate) server: Arc<Server>,
}

/// Why a control command failed before it reached a replication.
#[derive(Debug, thiserror::Error)]
enum ControlError {
    #[error("no complete request within {0:?}")]
    NoRequest(Duration),
    #[error("star {star} takes commands only from a controller certificate, not from {peer}")]
    NotAController { star: String, peer: PeerIdentity },
    #[error("star {star} has no transfer {id} (results are kept for {} minutes)", KEEP_FOR.as_secs() / 60)]
    UnknownTransfer { star: String, id: TransferId },
}

impl ControlError {
    fn to_wire(&self) -> WireError {
        let code = match self {
            ControlError::NoRequest(_) => ErrorCode::DeadlineExceeded,
            ControlError::NotAController { .. } => ErrorCode::PermissionDenied,
            ControlError::UnknownTransfer { .. } => ErrorCode::NotFound,
        };
        WireError::new(code, self.to_string())
    }
}

/// Handles one control stream from `peer`.
pub(crate) async fn handle(
    commands: Arc<Commands>,
    sessions: Arc<Sessions>,
    peer: PeerIdentity,
    conn: Connection,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let replicator = &commands.replicator;
    let star = &replicator.star;
    let read = framed::read_frame(&mut recv, MAX_CONTROL_FRAME);
    let request: ControlRequest = match tokio::time::timeout(commands.request_timeout, read).await {
        Ok(Ok(request)) => request,
        Ok(Err(e)) => {
            warn!(%peer, "unreadable control request: {e}");
            let failed = ControlEvent::Failed(e.to_wire());
            let _ = bounded(FINAL_EVENT_TIMEOUT, write_frame(&mut send, &failed)).await;
            let _ = send.finish();
            return;
        }
        Err(_) => {
            let after = commands.request_timeout;
            warn!(%peer, "no control request within {after:?} (request_timeout_secs)");
            let error = ControlError::NoRequest(after).to_wire();
            let failed = ControlEvent::Failed(error);
            let _ = bounded(FINAL_EVENT_TIMEOUT, write_frame(&mut send, &failed)).await;
            let _ = send.finish();
            let _ = recv.stop(crate::error::varint(ErrorCode::DeadlineExceeded));
            return;
        }
    };
    let find = |id: TransferId| {
        replicator.register.get(id).ok_or_else(|| {
            ControlError::UnknownTransfer {
                star: star.clone(),
                id,
            }
            .to_wire()
        })
    };
    let server = commands.server.clone();
    let last = match request {
        // A star's requests for a tree are answered in the tree's own frames.
        ControlRequest::List(list) => {
            let request = TreeRequest::List(list);
            return tree_serve::handle(server, sessions, peer, request, send).await;
        }
        ControlRequest::Fetch(fetch) => {
            let request = TreeRequest::Fetch(fetch);
            return tree_serve::handle(server, sessions, peer, request, send).await;
        }
        ControlRequest::Prefix(prefix) => {
            let request = TreeRequest::Prefix(prefix);
            return tree_serve::handle(server, sessions, peer, request, send).await;
        }
        ControlRequest::Relay(relay) => {
            let register = replicator.register.clone();
            return crate::relay::handle(server, register, peer, relay, send).await;
        }
        _ if peer.role != Role::Controller => {
            warn!(%peer, "control command refused: the peer is not a controller");
            let error = ControlError::NotAController {
                star: star.clone(),
                peer: peer.clone(),
            };
            Some(ControlEvent::Failed(error.to_wire()))
        }
        ControlRequest::Status => Some(ControlEvent::Status(status(&commands))),
        ControlRequest::Replicate(cmd) => match replicator.start(cmd) {
            Ok(transfer) => follow(&transfer, &mut send, false, None).await,
            Err(e) => Some(ControlEvent::Failed(e.to_wire())),
        },
        ControlRequest::Start(cmd) => Some(match replicator.start(cmd) {
            Ok(transfer) => ControlEvent::Started {
                transfer_id: transfer.id,
            },
            Err(e) => ControlEvent::Failed(e.to_wire()),
        }),
        ControlRequest::ReplicateFanout(cmd) => match replicator.start_fanout(cmd) {
            Ok(transfer) => follow(&transfer, &mut send, false, None).await,
            Err(e) => Some(ControlEvent::Failed(e.to_wire())),
        },
        ControlRequest::StartFanout(cmd) => Some(match replicator.start_fanout(cmd) {
            Ok(transfer) => ControlEvent::Started {
                transfer_id: transfer.id,
            },
            Err(e) => ControlEvent::Failed(e.to_wire()),
        }),
        ControlRequest::ReplicateMany(cmd) => match replicator.start_many(cmd) {
            Ok(transfer) => follow(&transfer, &mut send, false, None).await,
            Err(e) => Some(ControlEvent::Failed(e.to_wire())),
        },
        ControlRequest::StartMany(cmd) => Some(match replicator.start_many(cmd) {
            Ok(transfer) => ControlEvent::Started {
                transfer_id: transfer.id,
            },
            Err(e) => ControlEvent::Failed(e.to_wire()),
        }),
        ControlRequest::ReplicateTree(cmd) => match replicator.start_tree(cmd) {
            Ok((transfer, notes)) => follow(&transfer, &mut send, false, Some(notes)).await,
            Err(e) => Some(ControlEvent::Failed(e.to_wire())),
        },
        ControlRequest::StartTree(cmd) => Some(match replicator.start_tree(cmd) {
            Ok((transfer, _)) => ControlEvent::Started {
                transfer_id: transfer.id,
            },
            Err(e) => ControlEvent::Failed(e.to_wire()),
        }),
        ControlRequest::Wait { transfer_id } => match find(transfer_id) {
            Ok(transfer) => follow(&transfer, &mut send, true, None).await,
            Err(e) => Some(ControlEvent::Failed(e)),
        },
        ControlRequest::Cancel { transfer_id } => Some(match find(transfer_id) {
            Ok(transfer) => {
                // Says which transfer it is, as `Wait` does; the cancellation stands even
                // if the controller is gone.
                let _ = write_frame(&mut send, &ControlEvent::Following(transfer.status())).await;
                if !transfer.is_finished() {
                    info!(transfer = %transfer_id, %peer, "cancelling the replication");
                }
                transfer.cancel.cancel();
                transfer.outcome().await
            }
            Err(e) => ControlEvent::Failed(e),
        }),
    };
    // The controller went away while following a transfer; the transfer carries on.
    let Some(last) = last else { return };
    // The controller may have gone; the outcome is logged either way. Wait (boundedly) for it to
    // read the final event, so that closing the connection does not cut it off; a peer that
    // grants no credit for it (any peer may be refused here) holds this task no longer.
    let _ = bounded(FINAL_EVENT_TIMEOUT, write_frame(&mut send, &last)).await;
    let _ = send.finish();
    let _ = tokio::time::timeout(FINAL_EVENT_TIMEOUT, send.stopped()).await;
    if replicator.life.cancel.is_cancelled() {
        // Shutting down: the endpoint closes once this task ends. Give the controller the moment
        // it needs to read the event and close the connection itself.
        let _ = tokio::time::timeout(FINAL_EVENT_TIMEOUT, conn.closed()).await;
    }
}

fn status(commands: &Commands) -> StarStatus {
    let replicator = &commands.replicator;
    // One snapshot of the register: the count and the list cannot disagree.
    let transfers = replicator.register.in_flight();
    StarStatus {
        name: replicator.star.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        protocol: orbit_wire::PROTOCOL_VERSION,
        uptime_seconds: commands.started.elapsed().as_secs(),
        roots: replicator
            .store
            .jail
            .roots()
            .map(|(p, writable)| match writable {
                true => p.display().to_string(),
                false => format!("{} (read-only)", p.display()),
            })
            .collect(),
        transfers_in_flight: transfers.len() as u32,
        reads_in_flight: commands.reads.in_flight(),
        transfers,
    }
}

/// Reports `transfer`'s progress on `send` until it ends, and returns its final event; `None`
/// if the controller went away first (the transfer carries on). With `announce`, first says
/// which transfer this is and where it stands. `notes` is a subscription taken when the
/// transfer started, if any; otherwise the notes from now on are followed.
async fn follow(
    transfer: &Transfer,
    send: &mut SendStream,
    announce: bool,
    notes: Option<Notes>,
) -> Option<ControlEvent> {
    let mut progress = transfer.progress.subscribe();
    let mut tree = transfer.tree.subscribe();
    let mut notes = notes.unwrap_or_else(|| transfer.notes.subscribe());
    if announce
        && write_frame(send, &ControlEvent::Following(transfer.status()))
            .await
            .is_err()
    {
        return None;
    }
    let outcome = transfer.outcome();
    tokio::pin!(outcome);
    let every = match transfer.feed.borrow().origin.is_some() {
        true => FANOUT_PROGRESS_INTERVAL,
        false => PROGRESS_INTERVAL,
    };
    let mut ticker = tokio::time::interval(every);
    loop {
        tokio::select! {
            event = &mut outcome => {
                // What the transfer said before it ended comes first, then where it stood.
                while let Ok(note) = notes.try_recv() {
                    if write_frame(send, &note).await.is_err() {
                        return None;
                    }
                }
                let last = *tree.borrow();
                if let Some(now) = last {
                    if write_frame(send, &ControlEvent::TreeProgress(now)).await.is_err() {
                        return None;
                    }
                }
                return Some(event);
            }
            Ok(note) = notes.recv() => {
                if write_frame(send, &note).await.is_err() {
                    return None;
                }
            }
            _ = ticker.tick() => {
                if tree.has_changed().unwrap_or(false) {
                    let now = *tree.borrow_and_update();
                    if let Some(now) = now {
                        if write_frame(send, &ControlEvent::TreeProgress(now)).await.is_err() {
                            return None;
                        }
                    }
                }
                if progress.has_changed().unwrap_or(false) {
                    let (bytes, total) = *progress.borrow_and_update();
                    if write_frame(send, &ControlEvent::Progress { bytes, total }).await.is_err() {
                        return None;
                    }
                }
            }
        }
    }
}
