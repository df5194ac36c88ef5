//! Ctrl-C during `orbitctl replicate`: it cancels the transfer, of a file or a tree, rather
//! than killing orbitctl, and waits (boundedly) for the destination to confirm. Only
//! `replicate` listens to SIGINT this way; `wait` leaves it to kill the process.

use std::net::SocketAddr;
use std::sync::Arc;

use orbit_wire::{ControlEvent, ControlRequest, ErrorCode, TransferId, WireError};

use super::ReplicateError;
use crate::connect::{StarConnection, StreamError, WireBytes};

/// SIGINT as a stream; if it cannot be installed, Ctrl-C keeps its default (it kills orbitctl,
/// and the transfer carries on: `orbitctl cancel` still stops it).
pub(super) fn interrupt_signal() -> Interrupt {
    use tokio::signal::unix::{signal, SignalKind};
    Interrupt(signal(SignalKind::interrupt()).ok())
}

/// SIGINT, or nothing if it could not be caught.
#[derive(Debug)]
pub(super) struct Interrupt(Option<tokio::signal::unix::Signal>);

impl Interrupt {
    /// An interrupt that never comes, for work whose Ctrl-C another task watches.
    pub(super) fn never() -> Interrupt {
        Interrupt(None)
    }

    /// Completes when Ctrl-C is pressed; never, if it could not be caught. Cancel-safe.
    pub(super) async fn recv(&mut self) {
        match &mut self.0 {
            Some(signal) => {
                signal.recv().await;
            }
            None => std::future::pending().await,
        }
    }
}

/// How long cancelling an interrupted transfer may take before orbitctl gives up on it.
const CANCEL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// The transfer to cancel after Ctrl-C, and where.
pub(super) struct Cancelling<'a> {
    pub(super) tls: Arc<rustls::ClientConfig>,
    pub(super) destination: &'a str,
    pub(super) addr: SocketAddr,
    pub(super) transfer: TransferId,
}

impl Cancelling<'_> {
    /// Tells the destination to cancel the transfer and waits until it has cleaned up: then
    /// `interrupted()` is the error. If the transfer had already ended, `conclude` reads its
    /// final event. A second Ctrl-C stops waiting.
    pub(super) async fn run<T>(
        self,
        interrupt: &mut Interrupt,
        interrupted: impl Fn() -> ReplicateError,
        conclude: impl FnOnce(Result<ControlEvent, StreamError>, WireBytes) -> Result<T, ReplicateError>,
    ) -> Result<T, ReplicateError> {
        let cancel = async {
            let conn = StarConnection::connect(self.tls, self.destination, self.addr).await?;
            let request = ControlRequest::Cancel {
                transfer_id: self.transfer,
            };
            let result = conn.control(&request, |_, _| {}).await;
            let wire = conn.wire_bytes();
            conn.close().await;
            match result {
                // Nothing to cancel: the command never reached the star, or the transfer was
                // cancelled already.
                Ok(ControlEvent::Failed(error))
                    if matches!(error.code, ErrorCode::Cancelled | ErrorCode::NotFound) =>
                {
                    Err(interrupted())
                }
                // Too late: the transfer had ended.
                other => conclude(other, wire),
            }
        };
        tokio::select! {
            result = tokio::time::timeout(CANCEL_TIMEOUT, cancel) => match result {
                Ok(result) => result,
                Err(_) => Err(ReplicateError::Failed {
                    star: self.destination.to_owned(),
                    error: WireError::new(ErrorCode::DeadlineExceeded, format!(
                        "interrupted, but the star did not confirm the cancellation within {} s: \
                         check with orbitctl wait {}", CANCEL_TIMEOUT.as_secs(), self.transfer)),
                }),
            },
            _ = interrupt.recv() => Err(interrupted()),
        }
    }
}
