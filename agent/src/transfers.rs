//! The destination star's register of its replications: those in flight, with their progress and
//! a cancellation token each, and the results of those that ended recently, so that a controller
//! that went away (or never stayed: `replicate --detach`) can still wait for the outcome.
//!
//! A transfer belongs to the star, not to the control stream that started it. The register is
//! bounded: at most [`KEEP_FINISHED`] results, none older than [`KEEP_FOR`]. It never touches
//! the disk or the network.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use orbit_wire::{ControlEvent, ErrorCode, ReplicateFile, TransferId, TransferStatus, WireError};

/// How many finished transfers' results a star remembers.
pub(crate) const KEEP_FINISHED: usize = 1000;
/// How long a star remembers a finished transfer's result.
pub(crate) const KEEP_FOR: Duration = Duration::from_secs(3600);

/// One replication, running or finished.
#[derive(Debug)]
pub(crate) struct Transfer {
    pub(crate) id: u64,
    pub(crate) source: String,
    pub(crate) source_path: String,
    pub(crate) target_path: String,
    pub(crate) started: Instant,
    /// `(bytes received, total)`, written by the pull.
    pub(crate) progress: watch::Sender<(u64, u64)>,
    /// Events beside progress (retries, resumes), for whoever follows the transfer now.
    pub(crate) notes: tokio::sync::broadcast::Sender<ControlEvent>,
    /// The final event once the transfer has ended and cleaned up.
    outcome: watch::Sender<Option<ControlEvent>>,
    /// Cancelled by `Cancel`, and by the star's shutdown (it is a child of the star's token).
    pub(crate) cancel: CancellationToken,
}

impl Transfer {
    /// What the transfer is and how far it got.
    pub(crate) fn status(&self) -> TransferStatus {
        let (bytes, total) = *self.progress.borrow();
        TransferStatus {
            transfer_id: TransferId(self.id),
            source: self.source.clone(),
            source_path: self.source_path.clone(),
            target_path: self.target_path.clone(),
            bytes,
            total,
            seconds: self.started.elapsed().as_secs_f64(),
        }
    }

    /// The final event, once there is one. Cancel-safe.
    pub(crate) async fn outcome(&self) -> ControlEvent {
        let mut rx = self.outcome.subscribe();
        let event = match rx.wait_for(Option::is_some).await {
            Ok(event) => event.clone(),
            // The sender lives in `self`, so it cannot be gone while we borrow `self`.
            Err(_) => None,
        };
        event.unwrap_or_else(|| {
            ControlEvent::Failed(WireError::new(ErrorCode::Internal, "the transfer vanished"))
        })
    }

    /// Whether the transfer has ended.
    pub(crate) fn is_finished(&self) -> bool {
        self.outcome.borrow().is_some()
    }
}

/// Every transfer a star runs or ran recently, by id.
#[derive(Debug, Default)]
pub(crate) struct Transfers {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_id: HashMap<u64, Arc<Transfer>>,
    /// Finished transfers, oldest first, with when they finished.
    finished: VecDeque<(u64, Instant)>,
}

impl Transfers {
    /// Registers the transfer `cmd` describes. Its token is cancelled only by a controller's
    /// `Cancel`: the star's shutdown is watched separately, because a transfer stopped by a
    /// shutdown keeps its temporary file to resume, and a cancelled one does not.
    ///
    /// # Errors
    ///
    /// `AlreadyExists` if this star runs or remembers a transfer with the same id.
    pub(crate) fn register(&self, cmd: &ReplicateFile) -> Result<Arc<Transfer>, WireError> {
        let mut inner = self.lock();
        inner.prune(Instant::now());
        if inner.by_id.contains_key(&cmd.transfer_id.0) {
            return Err(WireError::new(
                ErrorCode::AlreadyExists,
                format!("a transfer with id {} already exists", cmd.transfer_id),
            ));
        }
        let transfer = Arc::new(Transfer {
            id: cmd.transfer_id.0,
            source: cmd.source.clone(),
            source_path: cmd.source_path.clone(),
            target_path: cmd.target_path.clone(),
            started: Instant::now(),
            progress: watch::channel((0, 0)).0,
            notes: tokio::sync::broadcast::channel(16).0,
            outcome: watch::channel(None).0,
            cancel: CancellationToken::new(),
        });
        inner.by_id.insert(transfer.id, transfer.clone());
        Ok(transfer)
    }

    /// Records the final event of `transfer`; waiters see it at once.
    pub(crate) fn finish(&self, transfer: &Transfer, event: ControlEvent) {
        transfer.outcome.send_replace(Some(event));
        let mut inner = self.lock();
        let now = Instant::now();
        inner.finished.push_back((transfer.id, now));
        inner.prune(now);
    }

    /// The transfer with this id, running or remembered.
    pub(crate) fn get(&self, id: u64) -> Option<Arc<Transfer>> {
        let mut inner = self.lock();
        inner.prune(Instant::now());
        inner.by_id.get(&id).cloned()
    }

    /// The transfers in flight, oldest first.
    pub(crate) fn running(&self) -> Vec<TransferStatus> {
        let inner = self.lock();
        let mut running: Vec<&Arc<Transfer>> =
            inner.by_id.values().filter(|t| !t.is_finished()).collect();
        running.sort_by_key(|t| t.started);
        running.iter().map(|t| t.status()).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves the maps consistent: every update is one call.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    /// Forgets finished transfers beyond [`KEEP_FINISHED`] or older than [`KEEP_FOR`].
    fn prune(&mut self, now: Instant) {
        while let Some(&(id, at)) = self.finished.front() {
            if self.finished.len() > KEEP_FINISHED || now.duration_since(at) > KEEP_FOR {
                self.finished.pop_front();
                self.by_id.remove(&id);
            } else {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(id: u64) -> ReplicateFile {
        ReplicateFile {
            transfer_id: TransferId(id),
            source: "star-a".into(),
            source_addr: "127.0.0.1:1".into(),
            source_path: "/s".into(),
            target_path: "/t".into(),
            token: String::new(),
            expect_sha256: None,
            timeout_secs: 0,
        }
    }

    fn done() -> ControlEvent {
        ControlEvent::Done {
            bytes: 1,
            sha256: [0; 32],
            seconds: 0.1,
        }
    }

    #[tokio::test]
    async fn a_finished_transfer_is_remembered_and_ids_are_unique() {
        let transfers = Transfers::default();
        let t = transfers.register(&cmd(7)).unwrap();
        t.progress.send_replace((5, 10));
        assert_eq!(transfers.running()[0].bytes, 5);
        let err = transfers.register(&cmd(7)).unwrap_err();
        assert_eq!(err.code, ErrorCode::AlreadyExists);

        transfers.finish(&t, done());
        assert!(transfers.running().is_empty());
        let again = transfers.get(7).expect("remembered");
        assert_eq!(again.outcome().await, done());
        assert!(transfers.register(&cmd(7)).is_err());
    }

    #[test]
    fn only_so_many_results_are_kept() {
        let transfers = Transfers::default();
        for id in 0..(KEEP_FINISHED as u64 + 5) {
            let t = transfers.register(&cmd(id)).unwrap();
            transfers.finish(&t, done());
        }
        assert!(transfers.get(4).is_none());
        assert!(transfers.get(5).is_some());

        let mut inner = transfers.lock();
        let later = Instant::now() + KEEP_FOR + Duration::from_secs(1);
        inner.prune(later);
        assert!(inner.by_id.is_empty() && inner.finished.is_empty());
    }
}
