//! The destination side of a replication, as one module: a controller's `ReplicateFile` is
//! admitted to the register, runs in a task of its own, pulls the file from the source star and
//! publishes it only after its size and SHA-256 match: fsync, rename over the target, fsync the
//! directory.
//!
//! | part | holds |
//! |---|---|
//! | [`machine`] | the decisions, sans I/O: retry, backoff, resume, restart, stall, deadline, checkpoints |
//! | [`driver`] | the network side: the read request, the data stream, events for the core |
//! | [`writer`] / [`disk`] | the temporary file, hashing, journal checkpoints, the publish (blocking) |
//! | [`registry`] | slots, claims on targets, progress, cancellation, recent results |
//! | [`error`] | why a replication failed, and its wire code |
//!
//! One replication's path: [`Replicator::start`] confines the target and admits the command
//! (a slot, the target claimed, the id unique); [`run`] validates the source path, resumes the
//! journal's temporary file if any, and hands a [`driver::Driver`] the core; the driver requests,
//! receives and writes until the core says it is done; the outcome goes to the register, where
//! `wait` finds it. A transfer survives a lost connection or a source restart (the core retries
//! from where it stopped) and, with a state directory, a stop or a crash of this star too.

mod disk;
mod driver;
mod error;
mod machine;
mod many;
mod registry;
mod tree;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn, Instrument as _};

use orbit_wire::fanout::{ReplicateFanout, ReplicateMany, Upstream, MAX_UPSTREAMS};
use orbit_wire::tree::ReplicateTree;
use orbit_wire::{ControlEvent, ErrorCode, ReplicateFile, WireError};

pub(crate) use disk::Store;
pub(crate) use error::PullError;
pub(crate) use registry::{Feed, Replications, Transfer, KEEP_FOR};

use crate::error::ToWire;
use crate::jail::{Confined, JailError};
use crate::journal::Entry;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::pool::Pool;
use machine::{Machine, Replicated, Settings, Start, DEFAULT_TIMEOUT};
use registry::{AdmitError, Admitted, Slot, What};

/// What a fan-out destination adds to a replication: the stars to pull from before the origin,
/// and the feed it tells the stars relaying from it what it has.
#[derive(Debug, Clone)]
pub(crate) struct Fanout {
    /// Parent first; the origin is the command's source.
    pub(crate) upstreams: Vec<Upstream>,
    /// The transfer's own feed.
    pub(crate) feed: tokio::sync::watch::Sender<Feed>,
}

/// A transfer's events beside progress, as one follower receives them.
pub(crate) type Notes = tokio::sync::broadcast::Receiver<ControlEvent>;

/// Why a replication was not started.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    /// The star is shutting down.
    #[error("star {0} is shutting down")]
    ShuttingDown(String),
    /// The target may not be written.
    #[error("target {path}: {error}")]
    Target {
        /// The target as the command gave it.
        path: String,
        /// Why the jail refused it.
        error: JailError,
    },
    /// The register refused it.
    #[error(transparent)]
    Admit(#[from] AdmitError),
    /// The source is this star itself: it would dial itself and retry until the deadline.
    #[error("star {0} cannot replicate from itself: name another source star")]
    FromItself(String),
    /// A fan-out command names more upstreams than a star takes.
    #[error("{0} upstreams, more than the {MAX_UPSTREAMS} a star takes")]
    TooManyUpstreams(usize),
}

impl StartError {
    /// The error as the controller gets it.
    pub(crate) fn to_wire(&self) -> WireError {
        match self {
            StartError::ShuttingDown(_) => WireError::new(ErrorCode::Unavailable, self.to_string()),
            StartError::Target { path, error } => {
                let e = error.to_wire();
                WireError::new(e.code, format!("target {path}: {}", e.message))
            }
            StartError::Admit(e) => e.to_wire(),
            StartError::TooManyUpstreams(_) | StartError::FromItself(_) => {
                WireError::new(ErrorCode::InvalidArgument, self.to_string())
            }
        }
    }
}

/// The destination side of this star's replications: what each needs, and the register.
#[derive(Debug)]
pub(crate) struct Replicator {
    /// This star's name.
    pub(crate) star: String,
    /// Where replications write, and journal.
    pub(crate) store: Store,
    /// Connections to source stars.
    pub(crate) pool: Arc<Pool>,
    /// What checks a fan-out origin's attestation.
    pub(crate) trust: Arc<crate::trust::Trust>,
    /// The replications, running and recent.
    pub(crate) register: Arc<Replications>,
    /// Connections to each source of a file taken in pieces, unless the command says.
    pub(crate) connections: crate::limits::Connections,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) life: Lifecycle,
}

impl Replicator {
    /// Admits `cmd` and runs it in a task of its own, which outlives the control stream: only
    /// `Cancel` or the star's shutdown stop it.
    ///
    /// # Errors
    ///
    /// [`StartError`]: shutting down, a target that may not be written, no free slot, an id in
    /// use, a target another replication writes.
    pub(crate) fn start(self: &Arc<Self>, cmd: ReplicateFile) -> Result<Arc<Transfer>, StartError> {
        let span = tracing::info_span!("transfer", transfer_id = %cmd.transfer_id);
        let admitted = span.in_scope(|| {
            let admitted = self.admit(&cmd, false);
            if let Err(e) = &admitted {
                let code = e.to_wire().code.name();
                warn!(transfer = %cmd.transfer_id, code, "replication refused: {e}");
            }
            admitted
        })?;
        let (target, admitted) = admitted;
        Ok(self.launch(cmd, None, target, None, admitted, span))
    }

    /// Admits a file from several sources and runs it in a task of its own, as
    /// [`Replicator::start`] does a file.
    ///
    /// # Errors
    ///
    /// As [`Replicator::start`], and `InvalidArgument` for more than [`MAX_UPSTREAMS`] other
    /// sources.
    pub(crate) fn start_many(
        self: &Arc<Self>,
        cmd: ReplicateMany,
    ) -> Result<Arc<Transfer>, StartError> {
        if cmd.also.len() > MAX_UPSTREAMS {
            return Err(StartError::TooManyUpstreams(cmd.also.len()));
        }
        // One source and `--connections auto` on a star whose setting gives one connection
        // whatever the size (a host of fewer than 4 CPUs, or `connections = 1`): the file comes
        // as one stream, as from a fan-out's origin, which costs less than pieces over one
        // connection (bench/RESULTS.md).
        if cmd.also.is_empty() && self.connections.for_file(u64::MAX, many::cpus()) == 1 {
            info!(transfer = %cmd.file.transfer_id, "one connection for this file: taking it as one stream");
            let fanout = ReplicateFanout {
                file: cmd.file,
                upstreams: Vec::new(),
            };
            return self.start_fanout(fanout);
        }
        let span = tracing::info_span!("transfer", transfer_id = %cmd.file.transfer_id);
        let admitted = span.in_scope(|| {
            let admitted = self.admit(&cmd.file, false);
            if let Err(e) = &admitted {
                let code = e.to_wire().code.name();
                warn!(transfer = %cmd.file.transfer_id, code, "replication from several sources refused: {e}");
            }
            admitted
        })?;
        let (target, admitted) = admitted;
        let transfer = admitted.transfer.clone();
        let task = run_many(self.clone(), cmd, target, None, admitted);
        self.life.tracker.spawn(task.instrument(span));
        Ok(transfer)
    }

    /// Admits one destination of a fan-out and runs it as [`Replicator::start`] does a file:
    /// pulled from the upstreams, parent first, then the origin, and published only under the
    /// origin's attestation. Stars relaying from this one read its feed.
    ///
    /// # Errors
    ///
    /// As [`Replicator::start`], and `InvalidArgument` for more than
    /// [`MAX_UPSTREAMS`] upstreams.
    pub(crate) fn start_fanout(
        self: &Arc<Self>,
        cmd: ReplicateFanout,
    ) -> Result<Arc<Transfer>, StartError> {
        let ReplicateFanout { file, upstreams } = cmd;
        if upstreams.len() > MAX_UPSTREAMS {
            return Err(StartError::TooManyUpstreams(upstreams.len()));
        }
        let span = tracing::info_span!("transfer", transfer_id = %file.transfer_id);
        let admitted = span.in_scope(|| {
            let admitted = self.admit(&file, false);
            if let Err(e) = &admitted {
                let code = e.to_wire().code.name();
                warn!(transfer = %file.transfer_id, code, "fan-out replication refused: {e}");
            }
            admitted
        })?;
        let (target, admitted) = admitted;
        Ok(self.launch(file, Some(upstreams), target, None, admitted, span))
    }

    /// Admits a tree replication and runs it in a task of its own, as [`Replicator::start`]
    /// does a file. It takes one slot; its claim is on the target directory.
    ///
    /// # Errors
    ///
    /// As [`Replicator::start`].
    pub(crate) fn start_tree(
        self: &Arc<Self>,
        cmd: ReplicateTree,
    ) -> Result<(Arc<Transfer>, Notes), StartError> {
        let span = tracing::info_span!("transfer", transfer_id = %cmd.transfer_id);
        let _entered = span.enter();
        if self.life.draining.is_cancelled() {
            return Err(StartError::ShuttingDown(self.star.clone()));
        }
        let target = self
            .store
            .jail
            .confine_target_dir(&cmd.target_path)
            .map_err(|error| StartError::Target {
                path: cmd.target_path.clone(),
                error,
            })?;
        let what = What {
            id: cmd.transfer_id,
            source: &cmd.source,
            source_path: &cmd.source_path,
            target_path: &cmd.target_path,
            // Every entry's item, with --itemize: a follower reading slowly still gets them all
            // unless it falls this far behind.
            notes: if cmd.itemize { 1 << 16 } else { 16 },
        };
        let admitted = self
            .register
            .admit_as(what, format!("tree:{}", target.key()), false)
            .inspect_err(|e| {
                let code = e.to_wire().code.name();
                warn!(transfer = %cmd.transfer_id, code, "tree replication refused: {e}");
            })?;
        let transfer = admitted.transfer.clone();
        // Subscribed before the tree starts, so that its first items reach the controller.
        let notes = transfer.notes.subscribe();
        drop(_entered);
        let task = run_tree(self.clone(), cmd, target, admitted);
        self.life.tracker.spawn(task.instrument(span));
        Ok((transfer, notes))
    }

    fn admit(&self, cmd: &ReplicateFile, queue: bool) -> Result<(Confined, Admitted), StartError> {
        if self.life.draining.is_cancelled() {
            return Err(StartError::ShuttingDown(self.star.clone()));
        }
        if cmd.source == self.star {
            return Err(StartError::FromItself(self.star.clone()));
        }
        // Checked before anything else: a target under a read-only root is refused whatever the
        // source says.
        let target = self
            .store
            .jail
            .confine_target(&cmd.target_path)
            .map_err(|error| StartError::Target {
                path: cmd.target_path.clone(),
                error,
            })?;
        let admitted = self.register.admit(cmd, target.key(), queue)?;
        Ok((target, admitted))
    }

    fn launch(
        self: &Arc<Self>,
        cmd: ReplicateFile,
        upstreams: Option<Vec<Upstream>>,
        target: Confined,
        resume: Option<Entry>,
        admitted: Admitted,
        span: tracing::Span,
    ) -> Arc<Transfer> {
        let transfer = admitted.transfer.clone();
        let fanout = upstreams.map(|upstreams| {
            let origin = cmd.source.clone();
            transfer.feed.send_modify(|f| f.origin = Some(origin));
            Fanout {
                upstreams,
                feed: transfer.feed.clone(),
            }
        });
        let task = run(self.clone(), cmd, fanout, target, resume, admitted);
        self.life.tracker.spawn(task.instrument(span));
        transfer
    }

    /// Resumes the replications this star's journal holds from before it stopped, each as if a
    /// controller had just started it: registered at once, so that `status` lists them and
    /// `wait` and `cancel` find them. Entries beyond `max_transfers` (the setting was lowered)
    /// wait for a slot. Called once at start.
    pub(crate) fn resume_journaled(self: &Arc<Self>) {
        let Some(journal) = &self.store.journal else {
            return;
        };
        for entry in journal.entries() {
            let cmd = entry.command.clone();
            let span = tracing::info_span!("transfer", transfer_id = %cmd.transfer_id);
            let _entered = span.enter();
            info!(target = %cmd.target_path, verified = entry.verified, "resuming a journaled replication");
            match self.admit(&cmd, true) {
                Ok((target, admitted)) => {
                    drop(_entered);
                    if let Some(pieces) = &entry.pieces {
                        let many = ReplicateMany {
                            file: cmd,
                            also: pieces.also.clone(),
                            piece_size: pieces.piece_size,
                        };
                        let task = run_many(self.clone(), many, target, Some(entry), admitted);
                        self.life.tracker.spawn(task.instrument(span.clone()));
                        continue;
                    }
                    let upstreams = entry.upstreams.clone();
                    self.launch(cmd, upstreams, target, Some(entry), admitted, span.clone());
                }
                Err(e) => {
                    let code = e.to_wire().code.name();
                    warn!(code, "cannot resume: {e}");
                    self.store.discard(&entry);
                }
            }
        }
    }
}

/// Runs a replication to its end and records its final event.
async fn run(
    replicator: Arc<Replicator>,
    cmd: ReplicateFile,
    fanout: Option<Fanout>,
    target: Confined,
    resume: Option<Entry>,
    admitted: Admitted,
) {
    let Admitted { transfer, slot } = admitted;
    let Some(_slot) = slot_of(&replicator, &transfer, slot).await else {
        return;
    };
    let id = cmd.transfer_id;
    info!(
        transfer = %id, source = %cmd.source, source_path = %cmd.source_path, target = %cmd.target_path,
        "replication started"
    );
    let result = replicate(
        &replicator,
        &cmd,
        fanout.as_ref(),
        &target,
        resume,
        &transfer,
    )
    .await;
    if let Some(fanout) = &fanout {
        let failed = result.as_ref().err().map(PullError::to_wire);
        fanout.feed.send_modify(|f| {
            if failed.is_some() {
                f.failed = failed;
            }
            // Relay reads under way keep their own handle; later ones open the file again.
            f.file = None;
            f.ended = true;
        });
    }
    let took = transfer.started.elapsed();
    let outcome = result.as_ref().map(|_| ()).map_err(|e| e.to_wire().code);
    replicator.metrics.transfer_done(outcome, took);
    let seconds = took.as_secs_f64();
    let event = match result {
        Ok(done) => {
            info!(
                transfer = %id, bytes = done.bytes, sha256 = %hex::encode(done.sha256), seconds,
                target = %cmd.target_path, "replication completed"
            );
            ControlEvent::Done {
                bytes: done.bytes,
                sha256: done.sha256,
                seconds,
            }
        }
        Err(error) => {
            let error = error.to_wire();
            warn!(transfer = %id, code = error.code.name(), "replication failed: {}", error.message);
            ControlEvent::Failed(error)
        }
    };
    replicator.register.finish(&transfer, event);
}

/// The slot `transfer` runs in: the one it was admitted with, or, resumed beyond
/// max_transfers, one it waits for. `None` when the star stops first: the journal entry stays
/// for its next start. A transfer cancelled first goes on at once without a slot (`Some(None)`),
/// only to remove its temporary file and entry.
async fn slot_of(
    replicator: &Replicator,
    transfer: &Transfer,
    slot: Option<Slot>,
) -> Option<Option<Slot>> {
    match slot {
        Some(slot) => Some(Some(slot)),
        None => tokio::select! {
            _ = replicator.life.cancel.cancelled() => None,
            _ = transfer.cancel.cancelled() => Some(None),
            slot = replicator.register.slot() => Some(Some(slot)),
        },
    }
}

/// Runs a replication from several sources to its end and records its final event.
async fn run_many(
    replicator: Arc<Replicator>,
    cmd: ReplicateMany,
    target: Confined,
    resume: Option<Entry>,
    admitted: Admitted,
) {
    let Admitted { transfer, slot } = admitted;
    let Some(_slot) = slot_of(&replicator, &transfer, slot).await else {
        return;
    };
    let id = cmd.file.transfer_id;
    info!(
        transfer = %id, source = %cmd.file.source, also = cmd.also.len(),
        target = %cmd.file.target_path, "replication from several sources started"
    );
    let result = many::replicate(&replicator, &cmd, &target, &transfer, resume).await;
    let took = transfer.started.elapsed();
    let outcome = result.as_ref().map(|_| ()).map_err(|e| e.to_wire().code);
    replicator.metrics.transfer_done(outcome, took);
    let event = match result {
        Ok(done) => {
            info!(
                transfer = %id, bytes = done.bytes, sha256 = %hex::encode(done.sha256),
                target = %cmd.file.target_path, "replication completed"
            );
            ControlEvent::Done {
                bytes: done.bytes,
                sha256: done.sha256,
                seconds: took.as_secs_f64(),
            }
        }
        Err(error) => {
            let error = error.to_wire();
            warn!(transfer = %id, code = error.code.name(), "replication failed: {}", error.message);
            ControlEvent::Failed(error)
        }
    };
    replicator.register.finish(&transfer, event);
}

/// Runs a tree replication to its end and records its final event.
async fn run_tree(
    replicator: Arc<Replicator>,
    cmd: ReplicateTree,
    target: Confined,
    admitted: Admitted,
) {
    let Admitted { transfer, slot } = admitted;
    let _slot = slot;
    tree::log_start(&cmd);
    let result = tree::replicate(&replicator, &cmd, &target, &transfer).await;
    let took = transfer.started.elapsed();
    let event = match result {
        Ok(summary) => {
            // A tree with failed files failed, with the code of the first failure.
            let outcome = match summary.failures.first() {
                None if summary.failed == 0 => Ok(()),
                None => Err(ErrorCode::Internal),
                Some(failed) => Err(failed.error.code),
            };
            replicator.metrics.transfer_done(outcome, took);
            info!(
                transfer = %cmd.transfer_id, copied = summary.copied, skipped = summary.skipped,
                deleted = summary.deleted, failed = summary.failed, bytes = summary.bytes,
                seconds = summary.seconds, target = %cmd.target_path, "tree replication completed"
            );
            ControlEvent::TreeDone(summary)
        }
        Err(error) => {
            let error = error.to_wire();
            replicator.metrics.transfer_done(Err(error.code), took);
            warn!(transfer = %cmd.transfer_id, code = error.code.name(), "tree replication failed: {}", error.message);
            ControlEvent::Failed(error)
        }
    };
    replicator.register.finish(&transfer, event);
}

/// Removes a journaled transfer that cannot be resumed, on a blocking thread.
async fn discard(store: &Store, entry: Entry) {
    let store = store.clone();
    let _ = tokio::task::spawn_blocking(move || store.discard(&entry)).await;
}

/// One replication, from the checks the command's source path needs to the published file.
/// With `resume`, a journal entry from before this star stopped, it continues from the bytes
/// that entry vouches for.
async fn replicate(
    replicator: &Replicator,
    cmd: &ReplicateFile,
    fanout: Option<&Fanout>,
    target: &Confined,
    resume: Option<Entry>,
    transfer: &Transfer,
) -> Result<Replicated, PullError> {
    let store = &replicator.store;
    let checked = orbit_wire::path::validate(&cmd.source_path)
        .map_err(|e| PullError::BadSourcePath(e.to_string()));
    if let Err(e) = checked {
        if let Some(entry) = resume {
            discard(store, entry).await;
        }
        return Err(e);
    }
    let mut start = Start::default();
    let mut writer = None;
    if let Some(entry) = resume {
        let version = entry.version;
        match writer::Writer::resume(store, target, entry.clone(), fanout).await {
            Ok((resumed, offset)) => {
                start = Start { offset, version };
                writer = Some(resumed);
            }
            Err(e) => {
                discard(store, entry).await;
                return Err(e);
            }
        }
    }
    // Relays whose bytes did not add up to the origin's digest: the file starts over without
    // them.
    let mut excluded = std::collections::BTreeSet::new();
    loop {
        let settings = Settings {
            source: cmd.source.clone(),
            star: replicator.star.clone(),
            window: match cmd.timeout_secs {
                0 => DEFAULT_TIMEOUT,
                secs => Duration::from_secs(secs.into()),
            },
            journaled: store.journal.is_some(),
            jitter: Box::new(rand::random::<f64>),
        };
        let machine = Machine::new(settings, start, std::time::Instant::now());
        let relayed = fanout.map(|fanout| {
            driver::Relayed::new(fanout, replicator.trust.attester(), cmd, &excluded)
        });
        let driver = driver::Driver::new(
            &replicator.pool,
            store,
            cmd,
            target,
            transfer,
            writer.take(),
            relayed,
        );
        let (result, relays) = driver
            .run(machine, &transfer.cancel, &replicator.life.cancel)
            .await;
        match result {
            Err(PullError::Mismatch(why)) if !relays.is_empty() => {
                let named = relays.iter().cloned().collect::<Vec<_>>().join(", ");
                let reason = format!(
                    "the bytes relayed by {named} do not match the origin's attestation ({why}); \
                     nothing was published, starting again without {named}"
                );
                warn!(transfer = %cmd.transfer_id, "{reason}");
                let _ = transfer.notes.send(ControlEvent::Retrying {
                    attempt: 0,
                    after_ms: 0,
                    reason,
                });
                excluded.extend(relays);
                start = Start::default();
            }
            other => return other,
        }
    }
}
