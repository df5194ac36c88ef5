//! The destination star's one register of its replications: which run, which wait for a slot,
//! which targets they claim, their progress and cancellation, and the results of those that
//! ended recently, so that a controller that went away (or never stayed: `replicate --detach`)
//! can still wait for the outcome. `status`, `wait`, `cancel`, the `max_transfers` slots, the
//! claims on targets and the in-flight gauge all read this one structure under one lock, so they
//! cannot disagree.
//!
//! It is bounded: at most [`KEEP_FINISHED`] results, none older than [`KEEP_FOR`]. It never
//! touches the disk or the network.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use orbit_wire::tree::TreeProgress;
use orbit_wire::{ControlEvent, ErrorCode, ReplicateFile, TransferId, TransferStatus, WireError};

/// How many finished transfers' results a star remembers.
pub(crate) const KEEP_FINISHED: usize = 1000;
/// How long a star remembers a finished transfer's result.
pub(crate) const KEEP_FOR: Duration = Duration::from_secs(3600);

/// One replication, waiting, running or finished.
#[derive(Debug)]
pub(crate) struct Transfer {
    pub(crate) id: TransferId,
    pub(crate) source: String,
    pub(crate) source_path: String,
    pub(crate) target_path: String,
    pub(crate) started: Instant,
    /// `(bytes received, total)`, written by the replication.
    pub(crate) progress: watch::Sender<(u64, u64)>,
    /// A tree replication's progress; `None` for a file.
    pub(crate) tree: watch::Sender<Option<TreeProgress>>,
    /// Events beside progress (retries, resumes), for whoever follows the transfer now.
    pub(crate) notes: tokio::sync::broadcast::Sender<ControlEvent>,
    /// The final event once the transfer has ended and cleaned up.
    outcome: watch::Sender<Option<ControlEvent>>,
    /// Cancelled by a controller's `Cancel` only: a transfer stopped by the star's shutdown keeps
    /// its temporary file to resume, and a cancelled one does not.
    pub(crate) cancel: CancellationToken,
    /// What a fan-out destination has received, for the stars that relay from it.
    pub(crate) feed: watch::Sender<Feed>,
}

/// A fan-out destination's file as it arrives, for relay reads: where it is, how much of it is
/// written, and, once verified and published, the origin's attestation. Written by the disk
/// thread and the replication; read by the relay reads of `relay.rs`.
#[derive(Clone, Debug, Default)]
pub(crate) struct Feed {
    /// The fan-out's origin; `None` for a replication that is not part of a fan-out, which is
    /// never relayed.
    pub(crate) origin: Option<String>,
    /// Bumped whenever the temporary file starts over (a new file, or the origin's file changed):
    /// bytes read under an older epoch may be gone.
    pub(crate) epoch: u64,
    /// The origin's version of the file being received, once its header came.
    pub(crate) version: Option<orbit_wire::FileVersion>,
    /// Bytes from 0 written to the file.
    pub(crate) written: u64,
    /// A read handle on the temporary file (after the publish, the published file), until the
    /// transfer ends. Not kept beyond: a star remembers an ended transfer for up to
    /// [`KEEP_FOR`], and a handle kept that long would keep a file deleted or replaced since
    /// taking its space, and one descriptor for each of up to [`KEEP_FINISHED`] transfers.
    pub(crate) file: Option<Arc<std::fs::File>>,
    /// What the published file was when this star published it. A relay read that comes after
    /// the transfer ended opens the file again by its path, and relays it only if it is still
    /// that file.
    pub(crate) published: Option<crate::digests::FileKey>,
    /// The transfer has ended: `file` is gone, and a relay read has `published` or nothing.
    pub(crate) ended: bool,
    /// The origin's attestation, once this star has verified the whole file against it and
    /// published it.
    pub(crate) attestation: Option<Arc<orbit_wire::fanout::Attestation>>,
    /// Why this star's own replication failed, once it has.
    pub(crate) failed: Option<WireError>,
    /// The origin's permission bits, once a source gave them.
    pub(crate) mode: Option<u32>,
}

impl Transfer {
    /// What the transfer is and how far it got.
    pub(crate) fn status(&self) -> TransferStatus {
        let (bytes, total) = *self.progress.borrow();
        TransferStatus {
            transfer_id: self.id,
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

/// Why a replication was not admitted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AdmitError {
    /// Every `max_transfers` slot is taken.
    #[error("star {star} already runs {max} replications, its limit")]
    Full {
        /// This star.
        star: String,
        /// The limit.
        max: u32,
    },
    /// The id is in use, by a transfer running or remembered.
    #[error("a transfer with id {0} already exists")]
    Duplicate(TransferId),
    /// Another replication writes the same target.
    #[error("another replication to {0} is in progress on this star")]
    Busy(String),
}

impl AdmitError {
    /// The error as the controller gets it.
    pub(crate) fn to_wire(&self) -> WireError {
        let code = match self {
            AdmitError::Full { .. } => ErrorCode::ResourceExhausted,
            AdmitError::Duplicate(_) | AdmitError::Busy(_) => ErrorCode::AlreadyExists,
        };
        WireError::new(code, self.to_string())
    }
}

/// Every replication a star runs, waits to run, or ran recently.
#[derive(Debug)]
pub(crate) struct Replications {
    star: String,
    max: u32,
    inner: Mutex<Inner>,
    /// How many hold a slot; waiters for a slot and the shutdown's drain watch it.
    running: watch::Sender<u32>,
    /// How many transfers were ever admitted; a relay read waiting for its transfer to arrive
    /// watches it.
    admitted: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct Inner {
    by_id: HashMap<TransferId, Arc<Transfer>>,
    /// Finished transfers, oldest first, with when they finished.
    finished: VecDeque<(TransferId, Instant)>,
    /// Targets claimed by unfinished transfers (by [`crate::jail::Confined::key`]).
    claims: HashMap<String, TransferId>,
    /// Transfers holding a slot.
    running: u32,
}

/// A slot, held by a running replication; given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot(Arc<Replications>);

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self.0.lock();
        inner.running -= 1;
        self.0.running.send_replace(inner.running);
    }
}

/// How many events beside progress a follower may fall behind by before it misses some.
const NOTES: usize = 16;

/// What the register records of a replication it admits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct What<'a> {
    pub(crate) id: TransferId,
    pub(crate) source: &'a str,
    pub(crate) source_path: &'a str,
    pub(crate) target_path: &'a str,
    /// How many notes a follower may fall behind by.
    pub(crate) notes: usize,
}

/// A replication admitted to the register: its record, the slot it runs in (or `None` while it
/// waits for one), and its claim on the target, released when the replication finishes.
#[derive(Debug)]
pub(crate) struct Admitted {
    pub(crate) transfer: Arc<Transfer>,
    pub(crate) slot: Option<Slot>,
}

impl Replications {
    /// The register of star `star`, which runs at most `max` replications at once.
    pub(crate) fn new(star: &str, max: u32) -> Replications {
        Replications {
            star: star.to_owned(),
            max,
            inner: Mutex::default(),
            running: watch::channel(0).0,
            admitted: watch::channel(0).0,
        }
    }

    /// The transfer `id`, waiting up to `patience` for it to be admitted: the stars of a fan-out
    /// get their commands at about the same time, and a star may be asked to relay a transfer
    /// a moment before its own command arrives.
    pub(crate) async fn get_soon(
        &self,
        id: TransferId,
        patience: Duration,
    ) -> Option<Arc<Transfer>> {
        let mut admitted = self.admitted.subscribe();
        let wait = async {
            loop {
                if let Some(transfer) = self.get(id) {
                    return transfer;
                }
                if admitted.changed().await.is_err() {
                    return std::future::pending().await;
                }
            }
        };
        tokio::time::timeout(patience, wait).await.ok()
    }

    /// Admits `cmd`, whose target is `target_key`: registers it, claims its target and takes a
    /// slot. With `queue`, a replication finding every slot taken is admitted without one and
    /// waits for it ([`Replications::slot`]); otherwise it is refused.
    ///
    /// # Errors
    ///
    /// [`AdmitError`]: no slot, the id in use, or the target claimed.
    pub(crate) fn admit(
        self: &Arc<Self>,
        cmd: &ReplicateFile,
        target_key: String,
        queue: bool,
    ) -> Result<Admitted, AdmitError> {
        let what = What {
            id: cmd.transfer_id,
            source: &cmd.source,
            source_path: &cmd.source_path,
            target_path: &cmd.target_path,
            notes: NOTES,
        };
        self.admit_as(what, target_key, queue)
    }

    /// As [`Replications::admit`], for any replication described by `what`.
    ///
    /// # Errors
    ///
    /// As [`Replications::admit`].
    pub(crate) fn admit_as(
        self: &Arc<Self>,
        what: What<'_>,
        target_key: String,
        queue: bool,
    ) -> Result<Admitted, AdmitError> {
        let mut inner = self.lock();
        inner.prune(Instant::now());
        let free = inner.running < self.max;
        if !free && !queue {
            return Err(AdmitError::Full {
                star: self.star.clone(),
                max: self.max,
            });
        }
        if inner.by_id.contains_key(&what.id) {
            return Err(AdmitError::Duplicate(what.id));
        }
        if inner.claims.contains_key(&target_key) {
            return Err(AdmitError::Busy(what.target_path.to_owned()));
        }
        let transfer = Arc::new(Transfer {
            id: what.id,
            source: what.source.to_owned(),
            source_path: what.source_path.to_owned(),
            target_path: what.target_path.to_owned(),
            started: Instant::now(),
            progress: watch::channel((0, 0)).0,
            tree: watch::channel(None).0,
            notes: tokio::sync::broadcast::channel(what.notes).0,
            outcome: watch::channel(None).0,
            cancel: CancellationToken::new(),
            feed: watch::channel(Feed::default()).0,
        });
        inner.by_id.insert(transfer.id, transfer.clone());
        self.admitted.send_modify(|n| *n += 1);
        inner.claims.insert(target_key, transfer.id);
        let slot = free.then(|| self.take_slot(&mut inner));
        Ok(Admitted { transfer, slot })
    }

    fn take_slot(self: &Arc<Self>, inner: &mut Inner) -> Slot {
        inner.running += 1;
        self.running.send_replace(inner.running);
        Slot(self.clone())
    }

    /// Waits for a free slot and takes it. Cancel-safe: a slot is taken only when this returns.
    pub(crate) async fn slot(self: &Arc<Self>) -> Slot {
        let mut running = self.running.subscribe();
        loop {
            {
                let mut inner = self.lock();
                if inner.running < self.max {
                    return self.take_slot(&mut inner);
                }
            }
            // The sender lives in `self`, which outlives this call.
            let _ = running.changed().await;
        }
    }

    /// Records the final event of `transfer` and releases its claim; waiters see it at once.
    pub(crate) fn finish(&self, transfer: &Transfer, event: ControlEvent) {
        let mut inner = self.lock();
        inner.claims.retain(|_, id| *id != transfer.id);
        transfer.outcome.send_replace(Some(event));
        let now = Instant::now();
        inner.finished.push_back((transfer.id, now));
        inner.prune(now);
    }

    /// The transfer with this id, running or remembered.
    pub(crate) fn get(&self, id: TransferId) -> Option<Arc<Transfer>> {
        let mut inner = self.lock();
        inner.prune(Instant::now());
        inner.by_id.get(&id).cloned()
    }

    /// The transfers in flight (running or waiting for a slot), oldest first.
    pub(crate) fn in_flight(&self) -> Vec<TransferStatus> {
        let inner = self.lock();
        let mut running: Vec<&Arc<Transfer>> =
            inner.by_id.values().filter(|t| !t.is_finished()).collect();
        running.sort_by_key(|t| t.started);
        running.iter().map(|t| t.status()).collect()
    }

    /// How many transfers are in flight, running or waiting for a slot.
    pub(crate) fn count(&self) -> u32 {
        let inner = self.lock();
        inner.by_id.values().filter(|t| !t.is_finished()).count() as u32
    }

    /// How many replications hold a slot now.
    pub(crate) fn running(&self) -> u32 {
        *self.running.borrow()
    }

    /// Waits until no replication holds a slot. Cancel-safe.
    pub(crate) async fn idle(&self) {
        let mut running = self.running.subscribe();
        let _ = running.wait_for(|n| *n == 0).await;
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

    fn cmd(id: u64, target: &str) -> ReplicateFile {
        ReplicateFile {
            transfer_id: TransferId(id),
            source: "star-a".into(),
            source_addr: "127.0.0.1:1".into(),
            source_path: "/s".into(),
            target_path: target.into(),
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

    fn admit(r: &Arc<Replications>, id: u64, target: &str) -> Result<Admitted, AdmitError> {
        r.admit(&cmd(id, target), target.to_owned(), false)
    }

    #[tokio::test]
    async fn a_finished_transfer_is_remembered_and_ids_are_unique() {
        let r = Arc::new(Replications::new("star-b", 4));
        let a = admit(&r, 7, "/t").unwrap();
        a.transfer.progress.send_replace((5, 10));
        assert_eq!(r.in_flight()[0].bytes, 5);
        let err = admit(&r, 7, "/u").unwrap_err();
        assert_eq!(err.to_wire().code, ErrorCode::AlreadyExists);

        r.finish(&a.transfer, done());
        drop(a.slot);
        assert!(r.in_flight().is_empty());
        assert_eq!(r.count(), 0);
        let again = r.get(TransferId(7)).expect("remembered");
        assert_eq!(again.outcome().await, done());
        assert!(admit(&r, 7, "/t").is_err(), "a remembered id stays taken");
    }

    #[test]
    fn a_target_is_claimed_until_its_replication_finishes() {
        let r = Arc::new(Replications::new("star-b", 4));
        let a = admit(&r, 1, "/t").unwrap();
        let busy = admit(&r, 2, "/t").unwrap_err();
        assert_eq!(
            busy.to_wire().message,
            "another replication to /t is in progress on this star"
        );
        r.finish(&a.transfer, done());
        assert!(admit(&r, 3, "/t").is_ok());
    }

    #[tokio::test]
    async fn slots_status_and_the_gauge_agree() {
        let r = Arc::new(Replications::new("star-b", 2));
        let a = admit(&r, 1, "/a").unwrap();
        let b = admit(&r, 2, "/b").unwrap();
        let full = admit(&r, 3, "/c").unwrap_err();
        assert_eq!(full.to_wire().code, ErrorCode::ResourceExhausted);
        assert!(full.to_string().contains("already runs 2 replications"));
        // A resumed replication queues instead, and counts as in flight while it waits.
        let c = r.admit(&cmd(4, "/d"), "/d".into(), true).unwrap();
        assert!(c.slot.is_none());
        assert_eq!(r.count(), 3);
        assert_eq!(r.in_flight().len(), 3);

        let waiting = {
            let r = r.clone();
            tokio::spawn(async move { r.slot().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        r.finish(&a.transfer, done());
        drop(a.slot);
        let slot = waiting.await.unwrap();
        assert_eq!(*r.running.borrow(), 2);
        assert_eq!(r.count(), 2);

        drop((b.slot, slot));
        tokio::time::timeout(Duration::from_secs(5), r.idle())
            .await
            .expect("no slot is held any more");
    }

    #[test]
    fn only_so_many_results_are_kept() {
        let r = Arc::new(Replications::new("star-b", 4));
        for id in 0..(KEEP_FINISHED as u64 + 5) {
            let a = admit(&r, id, &format!("/t{id}")).unwrap();
            r.finish(&a.transfer, done());
        }
        assert!(r.get(TransferId(4)).is_none());
        assert!(r.get(TransferId(5)).is_some());

        let mut inner = r.lock();
        let later = Instant::now() + KEEP_FOR + Duration::from_secs(1);
        inner.prune(later);
        assert!(inner.by_id.is_empty() && inner.finished.is_empty());
    }
}
