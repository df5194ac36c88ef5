//! Control streams: a controller's command arrives on a bidirectional stream; the star answers
//! with progress events and one final event. Only a controller certificate may command a star.
//!
//! A replication runs in a task of its own, registered in [`crate::transfers`]: the control
//! stream only follows it. A controller that goes away never stops a transfer; only `Cancel` or
//! the star's shutdown do.

use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, RecvStream, SendStream};
use tokio::sync::OwnedSemaphorePermit;
use tracing::{info, warn, Instrument as _};

use orbit_certs::{PeerIdentity, Role};
use orbit_wire::{
    ControlEvent, ControlRequest, ErrorCode, ReplicateFile, StarStatus, TransferId, WireError,
    MAX_CONTROL_FRAME,
};

use crate::error::ToWire;
use crate::framed::{self, write_frame};
use crate::journal::Entry;
use crate::pull::{self, InFlight};
use crate::star::Shared;
use crate::transfers::{Transfer, KEEP_FOR};

/// How often progress is reported while bytes move.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(500);
/// How long the final event may wait for the controller to read it.
const FINAL_EVENT_TIMEOUT: Duration = Duration::from_secs(2);

/// Handles one control stream from `peer`.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    peer: PeerIdentity,
    conn: Connection,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let read = framed::read_frame(&mut recv, MAX_CONTROL_FRAME);
    let request: ControlRequest =
        match tokio::time::timeout(shared.limits.request_timeout, read).await {
            Ok(Ok(request)) => request,
            Ok(Err(e)) => {
                warn!(%peer, "unreadable control request: {e}");
                let _ = write_frame(&mut send, &ControlEvent::Failed(e.to_wire())).await;
                let _ = send.finish();
                return;
            }
            Err(_) => {
                let after = shared.limits.request_timeout;
                warn!(%peer, "no control request within {after:?} (request_timeout_secs)");
                let error = WireError::new(
                    ErrorCode::DeadlineExceeded,
                    format!("no complete request within {after:?}"),
                );
                let _ = write_frame(&mut send, &ControlEvent::Failed(error)).await;
                let _ = send.finish();
                let _ = recv.stop(crate::error::varint(ErrorCode::DeadlineExceeded));
                return;
            }
        };
    let last = if peer.role != Role::Controller {
        warn!(%peer, "control command refused: the peer is not a controller");
        Some(ControlEvent::Failed(WireError::new(
            ErrorCode::PermissionDenied,
            format!(
                "star {} takes commands only from a controller certificate, not from {peer}",
                shared.name
            ),
        )))
    } else {
        match request {
            ControlRequest::Status => Some(ControlEvent::Status(status(&shared))),
            ControlRequest::Replicate(cmd) => match start(&shared, cmd) {
                Ok(transfer) => follow(&transfer, &mut send, false).await,
                Err(e) => Some(ControlEvent::Failed(e)),
            },
            ControlRequest::Start(cmd) => Some(match start(&shared, cmd) {
                Ok(transfer) => ControlEvent::Started {
                    transfer_id: TransferId(transfer.id),
                },
                Err(e) => ControlEvent::Failed(e),
            }),
            ControlRequest::Wait { transfer_id } => match find(&shared, transfer_id) {
                Ok(transfer) => follow(&transfer, &mut send, true).await,
                Err(e) => Some(ControlEvent::Failed(e)),
            },
            ControlRequest::Cancel { transfer_id } => Some(match find(&shared, transfer_id) {
                Ok(transfer) => {
                    // Says which transfer it is, as `Wait` does; the cancellation stands even
                    // if the controller is gone.
                    let _ =
                        write_frame(&mut send, &ControlEvent::Following(transfer.status())).await;
                    if !transfer.is_finished() {
                        info!(transfer = %hex_id(transfer_id), %peer, "cancelling the replication");
                    }
                    transfer.cancel.cancel();
                    transfer.outcome().await
                }
                Err(e) => ControlEvent::Failed(e),
            }),
        }
    };
    // The controller went away while following a transfer; the transfer carries on.
    let Some(last) = last else { return };
    // The controller may have gone; the outcome is logged either way. Wait (boundedly) for it to
    // read the final event, so that closing the connection does not cut it off.
    let _ = write_frame(&mut send, &last).await;
    let _ = send.finish();
    let _ = tokio::time::timeout(FINAL_EVENT_TIMEOUT, send.stopped()).await;
    if shared.cancel.is_cancelled() {
        // Shutting down: the endpoint closes once this task ends. Give the controller the moment
        // it needs to read the event and close the connection itself.
        let _ = tokio::time::timeout(FINAL_EVENT_TIMEOUT, conn.closed()).await;
    }
}

fn status(shared: &Shared) -> StarStatus {
    use std::sync::atomic::Ordering;
    StarStatus {
        name: shared.name.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        protocol: orbit_wire::PROTOCOL_VERSION,
        uptime_seconds: shared.started.elapsed().as_secs(),
        roots: shared
            .jail
            .roots()
            .map(|(p, writable)| match writable {
                true => p.display().to_string(),
                false => format!("{} (read-only)", p.display()),
            })
            .collect(),
        transfers_in_flight: shared.transfers_in_flight.load(Ordering::Relaxed),
        reads_in_flight: shared.reads_in_flight.load(Ordering::Relaxed),
        transfers: shared.transfers.running(),
    }
}

fn hex_id(id: TransferId) -> String {
    id.to_string()
}

/// The transfer `id`, running or remembered.
fn find(shared: &Shared, id: TransferId) -> Result<Arc<Transfer>, WireError> {
    shared.transfers.get(id.0).ok_or_else(|| {
        WireError::new(
            ErrorCode::NotFound,
            format!(
                "star {} has no transfer {} (results are kept for {} minutes)",
                shared.name,
                hex_id(id),
                KEEP_FOR.as_secs() / 60
            ),
        )
    })
}

/// Registers the replication `cmd` and runs it in a task of its own, which outlives the control
/// stream: only `Cancel` or the star's shutdown stop it.
fn start(shared: &Arc<Shared>, cmd: ReplicateFile) -> Result<Arc<Transfer>, WireError> {
    let transfer_id = hex_id(cmd.transfer_id);
    let span = tracing::info_span!("transfer", transfer_id = %transfer_id);
    let _entered = span.enter();
    if shared.draining.is_cancelled() {
        return Err(WireError::new(
            ErrorCode::Unavailable,
            format!("star {} is shutting down", shared.name),
        ));
    }
    // Checked before anything else: a target under a read-only root is refused whatever the
    // source says.
    if let Err(e) = shared.jail.confine_target(&cmd.target_path) {
        let e = e.to_wire();
        warn!(
            transfer = transfer_id,
            code = e.code.name(),
            "replication refused: {}",
            e.message
        );
        return Err(WireError::new(
            e.code,
            format!("target {}: {}", cmd.target_path, e.message),
        ));
    }
    let Ok(slot) = shared.transfer_slots.clone().try_acquire_owned() else {
        let max = shared.limits.max_transfers;
        warn!(
            transfer = transfer_id,
            "replication refused: {max} already in flight (max_transfers)"
        );
        return Err(WireError::new(
            ErrorCode::ResourceExhausted,
            format!(
                "star {} already runs {max} replications, its limit",
                shared.name
            ),
        ));
    };
    drop(_entered);
    launch(shared, cmd, None, Some(slot), span)
}

/// Registers `cmd` and spawns its task, which holds `slot` (or waits for one) until it ends.
fn launch(
    shared: &Arc<Shared>,
    cmd: ReplicateFile,
    resume: Option<Entry>,
    slot: Option<OwnedSemaphorePermit>,
    span: tracing::Span,
) -> Result<Arc<Transfer>, WireError> {
    let transfer = shared.transfers.register(&cmd)?;
    let task = run(shared.clone(), cmd, resume, transfer.clone(), slot);
    shared.tracker.spawn(task.instrument(span));
    Ok(transfer)
}

/// Resumes the replications this star's journal holds from before it stopped, each as if a
/// controller had just started it: registered at once, so that `status` lists them and `wait`
/// and `cancel` find them, and each holding a `max_transfers` slot while it runs. Called once at
/// start; entries beyond `max_transfers` (the setting was lowered) wait for a slot.
pub(crate) fn resume_journaled(shared: &Arc<Shared>) {
    let Some(journal) = &shared.journal else {
        return;
    };
    for entry in journal.entries() {
        let cmd = entry.command.clone();
        let span = tracing::info_span!("transfer", transfer_id = %hex_id(cmd.transfer_id));
        span.in_scope(|| {
            info!(target = %cmd.target_path, verified = entry.verified, "resuming a journaled replication");
        });
        let slot = shared.transfer_slots.clone().try_acquire_owned().ok();
        if let Err(e) = launch(shared, cmd, Some(entry), slot, span.clone()) {
            span.in_scope(|| warn!(code = e.code.name(), "cannot resume: {}", e.message));
        }
    }
}

/// Runs a replication to its end and records its final event.
async fn run(
    shared: Arc<Shared>,
    cmd: ReplicateFile,
    resume: Option<Entry>,
    transfer: Arc<Transfer>,
    slot: Option<OwnedSemaphorePermit>,
) {
    let _slot = match slot {
        Some(slot) => Some(slot),
        // Resumed beyond max_transfers: wait for a slot. A star stopping first keeps the journal
        // entry for its next start; a transfer cancelled first goes on at once, only to remove
        // its temporary file and entry.
        None => tokio::select! {
            _ = shared.cancel.cancelled() => return,
            _ = transfer.cancel.cancelled() => None,
            slot = shared.transfer_slots.clone().acquire_owned() => match slot {
                Ok(slot) => Some(slot),
                Err(_) => return,
            },
        },
    };
    let transfer_id = hex_id(cmd.transfer_id);
    info!(
        transfer = transfer_id, source = %cmd.source, source_path = %cmd.source_path, target = %cmd.target_path,
        "replication started"
    );
    let _in_flight = InFlight::new(&shared);
    // Retries and resumes go to whoever follows the transfer now.
    let (events, mut events_rx) = tokio::sync::mpsc::unbounded_channel();
    let report = pull::Report {
        progress: transfer.progress.clone(),
        events,
    };
    let work = pull::replicate(&shared, &cmd, resume, &report, &transfer.cancel);
    tokio::pin!(work);
    let result = loop {
        tokio::select! {
            result = &mut work => break result,
            Some(event) = events_rx.recv() => { let _ = transfer.notes.send(event); }
        }
    };
    let seconds = transfer.started.elapsed().as_secs_f64();
    let bytes = result.as_ref().map_or(0, |done| done.bytes);
    shared
        .metrics
        .transfer_done(result.is_ok(), bytes, transfer.started.elapsed());
    let event = match result {
        Ok(done) => {
            info!(
                transfer = transfer_id, bytes = done.bytes, sha256 = %hex::encode(done.sha256), seconds,
                target = %cmd.target_path, "replication completed"
            );
            ControlEvent::Done {
                bytes: done.bytes,
                sha256: done.sha256,
                seconds,
            }
        }
        Err(error) => {
            warn!(
                transfer = transfer_id,
                code = error.code.name(),
                "replication failed: {}",
                error.message
            );
            ControlEvent::Failed(error)
        }
    };
    shared.transfers.finish(&transfer, event);
}

/// Reports `transfer`'s progress on `send` until it ends, and returns its final event; `None`
/// if the controller went away first (the transfer carries on). With `announce`, first says
/// which transfer this is and where it stands.
async fn follow(
    transfer: &Transfer,
    send: &mut SendStream,
    announce: bool,
) -> Option<ControlEvent> {
    let mut progress = transfer.progress.subscribe();
    let mut notes = transfer.notes.subscribe();
    if announce
        && write_frame(send, &ControlEvent::Following(transfer.status()))
            .await
            .is_err()
    {
        return None;
    }
    let outcome = transfer.outcome();
    tokio::pin!(outcome);
    let mut ticker = tokio::time::interval(PROGRESS_INTERVAL);
    loop {
        tokio::select! {
            event = &mut outcome => return Some(event),
            Ok(note) = notes.recv() => {
                if write_frame(send, &note).await.is_err() {
                    return None;
                }
            }
            _ = ticker.tick() => {
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
