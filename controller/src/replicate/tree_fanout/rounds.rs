//! The rounds of a tree fan-out: who feeds whom, started as holders free up, each destination's
//! end reported as it comes, and Ctrl-C cancelling every tree running. The model is in the
//! parent module's documentation; this file only runs it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use orbit_wire::token::MasterKey;
use orbit_wire::tree::{Filter, ReplicateTree, SyncLevel};
use orbit_wire::{ControlEvent, ErrorCode};
use tokio::task::JoinSet;

use super::super::fanout_report::Failure;
use super::super::interrupt::{Cancelling, Interrupt};
use super::super::tree::{self, Output, TreeDone, TreeJob};
use super::super::tree_fanout_report::{self as say, Summary};
use super::super::{event_line, new_transfer_id, report, Args, ReplicateError};
use super::TreeFanoutError;
use crate::exit;
use crate::spec::StarPath;
use crate::token;

/// The index of the source among the nodes; destinations follow, in the order given.
pub(super) const SOURCE: usize = 0;

/// The source or a destination: where its tree is and how to reach it.
pub(super) struct Node {
    /// The star and the directory.
    pub(super) path: StarPath,
    /// Its `HOST:PORT` as grid.toml gives it, for a star it feeds.
    pub(super) addr: String,
    /// Where orbitctl dials it.
    pub(super) dial: SocketAddr,
}

/// One tree replication of the fan-out: `to` pulls the tree from `from`; or, for a check,
/// `to` lists the source's tree to learn whether it holds anything more.
#[derive(Debug, Clone, Copy)]
struct Leg {
    from: usize,
    to: usize,
    check: bool,
}

/// What has ended so far.
#[derive(Debug, Default)]
struct Tally {
    replicated: usize,
    partial: usize,
    failed: usize,
    source_sends: usize,
    /// The first code of a destination that failed as a whole, and the first permanent one.
    first_code: Option<ErrorCode>,
    first_permanent: Option<ErrorCode>,
}

/// A tree replication that ended: its leg, its job, and how.
type Ended = (Leg, TreeJob, Result<TreeDone, ReplicateError>);

/// The fan-out running: who holds the tree, who waits for it, what runs.
pub(super) struct Rounds<'a> {
    args: &'a Args,
    output: Output,
    master: MasterKey,
    tls: Arc<rustls::ClientConfig>,
    ttl: u64,
    filter: Filter,
    /// The source, then the destinations.
    nodes: Vec<Node>,
    min_success: usize,
    started: Instant,
    tally: Tally,
}

impl<'a> Rounds<'a> {
    /// The fan-out of the tree at `nodes[SOURCE]` to the other nodes, with the options of
    /// `args`, tokens minted under `master` for `ttl` seconds with `filter`, and stars dialled
    /// with `tls`. The clock starts now.
    pub(super) fn new(
        args: &'a Args,
        master: MasterKey,
        tls: Arc<rustls::ClientConfig>,
        ttl: u64,
        filter: Filter,
        nodes: Vec<Node>,
        min_success: usize,
    ) -> Rounds<'a> {
        Rounds {
            args,
            output: Output {
                json: args.json,
                quiet: args.quiet,
            },
            master,
            tls,
            ttl,
            filter,
            nodes,
            min_success,
            started: Instant::now(),
            tally: Tally::default(),
        }
    }

    /// Runs the rounds to the last destination's end and prints the summary; Ctrl-C on
    /// `interrupt` cancels every tree running.
    ///
    /// # Errors
    ///
    /// [`TreeFanoutError::TooFew`] or [`TreeFanoutError::Interrupted`], reported already.
    pub(super) async fn run(mut self, interrupt: &mut Interrupt) -> Result<(), ReplicateError> {
        let mut pending: VecDeque<usize> = (1..self.nodes.len()).collect();
        // Destinations with the complete tree, and nothing else, that feed no one right now.
        let mut free: VecDeque<usize> = VecDeque::new();
        let mut running: JoinSet<Ended> = JoinSet::new();
        let mut jobs: Vec<TreeJob> = Vec::new();
        // Destinations fed again after a holder's leg to them ended incomplete.
        let mut fed_again = vec![false; self.nodes.len()];
        loop {
            while let Some(&to) = pending.front() {
                let from = match free.pop_front() {
                    Some(holder) => holder,
                    None if self.args.dry_run || running.is_empty() => SOURCE,
                    None => break,
                };
                pending.pop_front();
                if from == SOURCE {
                    if self.tally.source_sends > 0 && !self.args.dry_run {
                        self.note(format!(
                            "{}: no destination holds the complete tree: the source sends it \
                             again, to {}",
                            self.nodes[SOURCE].path.star, self.nodes[to].path
                        ));
                    }
                    self.tally.source_sends += 1;
                }
                let leg = Leg {
                    from,
                    to,
                    check: false,
                };
                self.spawn(leg, &mut running, &mut jobs);
            }
            let ended = tokio::select! {
                ended = running.join_next() => ended,
                () = interrupt.recv() => {
                    return self.interrupted(running, jobs, interrupt).await;
                }
            };
            let Some(ended) = ended else { break };
            let (leg, job, result) = ended.map_err(|e| ReplicateError::Unexpected {
                star: "orbitctl".into(),
                what: format!("a tree replication's task ended abnormally: {e}"),
            })?;
            jobs.retain(|j| j.command.transfer_id != job.command.transfer_id);
            if leg.check {
                self.checked(leg, result, &mut free);
                continue;
            }
            if leg.from != SOURCE {
                let (from, to) = (&self.nodes[leg.from].path, &self.nodes[leg.to].path);
                match incomplete(&job, &result) {
                    // The holder feeds the next one; so it does after a refusal that is the
                    // destination's own (a path outside its roots, say).
                    None => free.push_back(leg.from),
                    Some(_) if result.as_ref().is_err_and(|e| !exit::retryable(e.code())) => {
                        free.push_back(leg.from);
                    }
                    // It may have died mid-tree, or lost its copy: it feeds no one more, and
                    // the destination is fed again, once, by another holder or the source,
                    // from what it already holds; its failed attempt is not its result.
                    Some(why) if !fed_again[leg.to] && !self.args.dry_run => {
                        self.note(format!(
                            "{to}: its tree from {} did not complete ({why}); {} feeds no one \
                             more, and {} is fed again",
                            from.star, from.star, to.star
                        ));
                        fed_again[leg.to] = true;
                        pending.push_front(leg.to);
                        continue;
                    }
                    Some(why) => self.note(format!(
                        "{}: no longer feeds other destinations after: {why}",
                        from.star
                    )),
                }
            }
            // A tree that ends when no one waits feeds no one: no need to check it.
            if self.ended(&job, result) && !self.args.dry_run && !pending.is_empty() {
                if self.args.delete {
                    free.push_back(leg.to);
                } else {
                    let check = Leg {
                        from: SOURCE,
                        to: leg.to,
                        check: true,
                    };
                    self.spawn(check, &mut running, &mut jobs);
                }
            }
        }
        self.summarize()
    }

    /// The job of `leg`, with a fresh transfer id and a tree token for its source star (the
    /// audience) naming its destination star as holder.
    fn job(&self, leg: Leg) -> TreeJob {
        let (from, to) = (&self.nodes[leg.from], &self.nodes[leg.to]);
        let args = self.args;
        let token = token::mint_tree(
            &self.master,
            &from.path.star,
            &to.path.star,
            &from.path.path,
            &self.filter,
            self.ttl,
        );
        TreeJob {
            destination: to.path.star.clone(),
            destination_addr: to.dial,
            command: ReplicateTree {
                transfer_id: new_transfer_id(),
                source: from.path.star.clone(),
                source_addr: from.addr.clone(),
                source_path: from.path.path.clone(),
                target_path: to.path.path.clone(),
                token,
                // A check compares names only: what --delete would remove.
                sync: match leg.check {
                    true => SyncLevel::Exists,
                    false => args.sync.into(),
                },
                delete: leg.check || args.delete,
                max_delete: args.max_delete.filter(|_| !leg.check),
                dry_run: leg.check || args.dry_run,
                itemize: args.itemize && !leg.check,
                timeout_secs: args.timeout,
            },
        }
    }

    /// Starts `leg`, remembered in `jobs` until it ends so that Ctrl-C can cancel it.
    fn spawn(&self, leg: Leg, running: &mut JoinSet<Ended>, jobs: &mut Vec<TreeJob>) {
        let job = self.job(leg);
        tracing::info!(
            transfer = %job.command.transfer_id,
            from = %job.command.source,
            to = %job.destination,
            check = leg.check,
            "tree fan-out leg started"
        );
        jobs.push(job.clone());
        let (tls, output) = (self.tls.clone(), self.output);
        running.spawn(async move {
            let result = tree::replicate_tree_observed(tls, &job, |event| {
                if !leg.check {
                    show(&job, event, output);
                }
            })
            .await;
            (leg, job, result)
        });
    }

    /// Reports a destination's tree that ended; true when it is complete.
    fn ended(&mut self, job: &TreeJob, result: Result<TreeDone, ReplicateError>) -> bool {
        let output = self.output;
        match result {
            Ok(done) => {
                if output.json {
                    println!(
                        "{}",
                        report::result_json_as(crate::json::DESTINATION, job, &done)
                    );
                } else if !output.quiet {
                    println!("{}", report::summary_line(job, &done.summary));
                }
                for line in report::failure_lines(&job.destination, &done.summary) {
                    eprintln!("{line}");
                }
                let complete = report::outcome(&job.destination, &done.summary).is_ok();
                match complete {
                    true => self.tally.replicated += 1,
                    false => self.tally.partial += 1,
                }
                complete
            }
            Err(e) => {
                let failure = Failure::of(&e);
                match output.json {
                    true => println!("{}", say::failed_json(job, &failure)),
                    false => println!("{}", say::failed_line(job, &failure)),
                }
                self.tally.failed += 1;
                self.tally.first_code.get_or_insert(failure.code);
                if !exit::retryable(failure.code) {
                    self.tally.first_permanent.get_or_insert(failure.code);
                }
                false
            }
        }
    }

    /// A check of destination `leg.to` ended: it feeds the others only if it holds nothing the
    /// source does not.
    fn checked(
        &self,
        leg: Leg,
        result: Result<TreeDone, ReplicateError>,
        free: &mut VecDeque<usize>,
    ) {
        let (star, source) = (&self.nodes[leg.to].path, &self.nodes[SOURCE].path);
        match result {
            Ok(done) if done.summary.deleted == 0 && done.summary.failed == 0 => {
                free.push_back(leg.to);
            }
            Ok(done) => self.note(format!(
                "{star}: holds {} entries that {source} does not have, so it feeds no other \
                 destination (with --delete it would)",
                done.summary.deleted
            )),
            Err(e) => self.note(format!(
                "{star}: could not be compared with {source}, so it feeds no other destination: \
                 {}",
                report::one_line(&e.to_string())
            )),
        }
    }

    /// A line on stderr about the plan, unless `--quiet`.
    fn note(&self, line: String) {
        if !self.output.quiet {
            eprintln!("{line}");
        }
    }

    /// Prints the summary; the fan-out's error when fewer than `--min-success` trees are
    /// complete.
    fn summarize(&self) -> Result<(), ReplicateError> {
        let summary = self.summary();
        if self.output.json {
            println!("{}", say::summary_json(&summary));
        } else if !self.output.quiet {
            println!("{}", say::summary_line(&summary));
        }
        if summary.ok() {
            return Ok(());
        }
        Err(TreeFanoutError::TooFew {
            replicated: summary.replicated,
            partial: summary.partial,
            total: summary.total,
            needed: summary.min_success,
            code: self.tally.first_permanent.or(self.tally.first_code),
        }
        .into())
    }

    fn summary(&self) -> Summary {
        Summary {
            total: self.nodes.len() - 1,
            replicated: self.tally.replicated,
            partial: self.tally.partial,
            failed: self.tally.failed,
            min_success: self.min_success,
            source_sends: self.tally.source_sends,
            dry_run: self.args.dry_run,
            seconds: self.started.elapsed().as_secs_f64(),
        }
    }

    /// Ctrl-C: cancels every tree running (checks included) and waits for each destination to
    /// confirm, boundedly; a second Ctrl-C stops waiting. Destinations not started are never
    /// contacted.
    async fn interrupted(
        mut self,
        mut running: JoinSet<Ended>,
        jobs: Vec<TreeJob>,
        interrupt: &mut Interrupt,
    ) -> Result<(), ReplicateError> {
        running.abort_all();
        let mut cancels = JoinSet::new();
        for job in jobs {
            let tls = self.tls.clone();
            cancels.spawn(async move {
                let cancelling = Cancelling {
                    tls,
                    destination: &job.destination,
                    addr: job.destination_addr,
                    transfer: job.command.transfer_id,
                };
                let interrupted = || ReplicateError::TreeInterrupted {
                    star: job.destination.clone(),
                    target: job.command.target_path.clone(),
                };
                let result = cancelling
                    .run(&mut Interrupt::never(), interrupted, |result, wire| {
                        tree::conclude(&job.destination, result, wire)
                    })
                    .await;
                (job, result)
            });
        }
        loop {
            let next = tokio::select! {
                next = cancels.join_next() => next,
                () = interrupt.recv() => break,
            };
            let Some(Ok((job, result))) = next else { break };
            // Checks are not destinations' results.
            if !job.command.dry_run || self.args.dry_run {
                self.ended(&job, result);
            }
        }
        let summary = self.summary();
        if self.output.json {
            println!("{}", say::summary_json(&summary));
        } else if !self.output.quiet {
            println!("{}", say::summary_line(&summary));
        }
        Err(TreeFanoutError::Interrupted {
            replicated: summary.replicated,
            total: summary.total,
        }
        .into())
    }
}

/// Why the tree of `job` did not end complete, in one line; `None` when it did. A tree that
/// ended with files failed, or failed as a whole for a reason that may pass (the feeder gone
/// away mid-tree), may be its feeder's doing.
fn incomplete(job: &TreeJob, result: &Result<TreeDone, ReplicateError>) -> Option<String> {
    match result {
        Ok(done) => report::outcome(&job.destination, &done.summary)
            .err()
            .map(|e| report::one_line(&e.to_string())),
        Err(e) => Some(report::one_line(&e.to_string())),
    }
}

/// Shows an event of a destination's tree: `--itemize` lines (prefixed with the destination,
/// as several trees run at once; with `--json`, item objects, whose transfer id names the
/// tree), and retries on stderr. Progress is not shown: several trees run at once.
fn show(job: &TreeJob, event: &ControlEvent, output: Output) {
    match event {
        ControlEvent::Item(item) if output.json => {
            println!("{}", report::item_json(job.command.transfer_id, item));
        }
        ControlEvent::Item(item) if !output.quiet => {
            println!("{}: {}", job.destination, report::item_line(item));
        }
        _ => {
            if let Some(line) = event_line(&job.destination, event).filter(|_| !output.quiet) {
                eprintln!("{line}");
            }
        }
    }
}
