//! Control streams: a controller's command arrives on a bidirectional stream; the star answers
//! with progress events and one final event. Only a controller certificate may command a star.

use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::{Connection, RecvStream, SendStream};
use tokio::sync::watch;
use tracing::{info, warn, Instrument as _};

use orbit_certs::{PeerIdentity, Role};
use orbit_wire::{
    ControlEvent, ControlRequest, ErrorCode, ReplicateFile, StarStatus, WireError,
    MAX_CONTROL_FRAME,
};

use crate::error::ToWire;
use crate::framed::{self, write_frame};
use crate::pull::{self, InFlight};
use crate::star::Shared;

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
        ControlEvent::Failed(WireError::new(
            ErrorCode::PermissionDenied,
            format!(
                "star {} takes commands only from a controller certificate, not from {peer}",
                shared.name
            ),
        ))
    } else {
        match request {
            ControlRequest::Status => ControlEvent::Status(status(&shared)),
            ControlRequest::Replicate(_) if shared.draining.is_cancelled() => {
                ControlEvent::Failed(WireError::new(
                    ErrorCode::Unavailable,
                    format!("star {} is shutting down", shared.name),
                ))
            }
            ControlRequest::Replicate(cmd) => {
                let span = tracing::info_span!("transfer", transfer_id = %format!("{:016x}", cmd.transfer_id));
                replicate(&shared, &cmd, &mut send).instrument(span).await
            }
        }
    };
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
    }
}

/// Runs a replication, reporting progress on `send`, and returns the final event.
async fn replicate(
    shared: &Arc<Shared>,
    cmd: &ReplicateFile,
    send: &mut SendStream,
) -> ControlEvent {
    let transfer = format!("{:016x}", cmd.transfer_id);
    info!(
        transfer, source = %cmd.source, source_path = %cmd.source_path, target = %cmd.target_path,
        "replication started"
    );
    // Checked here rather than in `pull`, before anything else: a target under a read-only root
    // is refused whatever the source says.
    if let Err(e) = shared.jail.confine_target(&cmd.target_path) {
        let e = e.to_wire();
        warn!(
            transfer,
            code = e.code.name(),
            "replication refused: {}",
            e.message
        );
        return ControlEvent::Failed(WireError::new(
            e.code,
            format!("target {}: {}", cmd.target_path, e.message),
        ));
    }
    let Ok(_slot) = shared.transfer_slots.clone().try_acquire_owned() else {
        let max = shared.limits.max_transfers;
        warn!(
            transfer,
            "replication refused: {max} already in flight (max_transfers)"
        );
        return ControlEvent::Failed(WireError::new(
            ErrorCode::ResourceExhausted,
            format!(
                "star {} already runs {max} replications, its limit",
                shared.name
            ),
        ));
    };
    let _in_flight = InFlight::new(shared);
    let started = Instant::now();
    let (progress, mut progress_rx) = watch::channel((0u64, 0u64));
    let (events, mut events_rx) = tokio::sync::mpsc::unbounded_channel();
    let report = pull::Report { progress, events };
    let cancel = tokio_util::sync::CancellationToken::new();
    let work = pull::replicate(shared, cmd, &report, &cancel);
    tokio::pin!(work);
    let mut ticker = tokio::time::interval(PROGRESS_INTERVAL);
    let mut controller_gone = false;
    let result = loop {
        tokio::select! {
            result = &mut work => break result,
            _ = ticker.tick(), if !controller_gone => {
                if progress_rx.has_changed().unwrap_or(false) {
                    let (bytes, total) = *progress_rx.borrow_and_update();
                    // A controller that went away does not stop the transfer.
                    controller_gone = write_frame(send, &ControlEvent::Progress { bytes, total }).await.is_err();
                }
            }
            Some(event) = events_rx.recv() => {
                if !controller_gone {
                    controller_gone = write_frame(send, &event).await.is_err();
                }
            }
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let bytes = result.as_ref().map_or(0, |done| done.bytes);
    shared
        .metrics
        .transfer_done(result.is_ok(), bytes, started.elapsed());
    match result {
        Ok(done) => {
            info!(
                transfer, bytes = done.bytes, sha256 = %hex::encode(done.sha256), seconds,
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
                transfer,
                code = error.code.name(),
                "replication failed: {}",
                error.message
            );
            ControlEvent::Failed(error)
        }
    }
}
