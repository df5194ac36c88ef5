//! `orbitctl replicate SRC DST DST... --recursive`: one directory tree to many destinations,
//! store and forward by rounds, so that the source's uplink carries the tree about once.
//!
//! The source replicates the tree to the first destination: an ordinary tree replication
//! ([`super::tree`]), every file verified. A destination whose tree ended complete (every entry
//! done, no file failed, `--delete` run if it was asked for) becomes a *holder*: a plain source
//! for the next pending destination, through another ordinary tree replication with the same
//! options and a tree token minted for that holder (audience) and that destination (holder of
//! the token). A holder that is free takes the next destination, so the holders double each
//! round and N destinations take about ceil(log2 N) + 1 tree copies of time. The source feeds
//! a destination again only when no destination holds the complete tree and none is running
//! that could (said on stderr). A dry run changes nothing, so every destination is compared
//! with the source itself, all at once.
//!
//! A holder must hold the source's tree and nothing else, or it would hand the others entries
//! the source never had. With `--delete`, a complete tree is a mirror of the source. Without,
//! the entries that were in a holder's directory before stay there, so a destination whose
//! tree ends while others wait is first checked with a dry run of `--delete` from the source
//! (a listing, no file bytes): only one that would delete nothing feeds the others.
//!
//! It builds no wire message of its own and never carries file data: it sends the same
//! `ReplicateTree` commands as a single tree, one per destination (and one per check).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use orbit_wire::token::MasterKey;
use orbit_wire::tree::{Filter, ReplicateTree, SyncLevel};
use orbit_wire::{ControlEvent, ErrorCode};
use tokio::task::JoinSet;

use super::fanout_report::Failure;
use super::interrupt::{interrupt_signal, Cancelling, Interrupt};
use super::plan::{self, PlanError};
use super::tree::{self, Output, TreeDone, TreeJob};
use super::tree_fanout_report::{self as say, Summary};
use super::{event_line, new_transfer_id, report, Args, ReplicateError};
use crate::connect;
use crate::exit;
use crate::grid::Grid;
use crate::spec::StarPath;
use crate::token;

/// The index of the source among the nodes; destinations follow, in the order given.
const SOURCE: usize = 0;

/// Why a tree fan-out as a whole failed, or could not start. Each destination's own end is
/// reported on its line; these say what became of the whole.
#[derive(Debug, thiserror::Error)]
pub enum TreeFanoutError {
    /// A destination that is the source, one given twice, or a bad `--min-success`; nothing
    /// was contacted.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// `--detach`: the rounds need orbitctl to start each destination once another holds the
    /// tree.
    #[error(
        "--detach does not go with a fan-out of a tree: each destination is started once \
         another holds the tree, which needs orbitctl to stay; run it without --detach"
    )]
    Detach,
    /// Two destinations on one star, one directory inside the other (or the same).
    #[error(
        "destinations {first} and {second} nest on star {star}: one tree would be written \
         inside the other"
    )]
    Nested {
        /// The star.
        star: String,
        /// The first destination given, as `STAR:/path`.
        first: String,
        /// The second.
        second: String,
    },
    /// A destination on the source's star, inside the source's directory or around it.
    #[error(
        "destination {destination} nests with the source {origin}: the tree would be copied \
         into itself"
    )]
    NestsWithSource {
        /// The destination, as `STAR:/path`.
        destination: String,
        /// The source.
        origin: String,
    },
    /// Fewer than `--min-success` destinations ended with the complete tree.
    #[error(
        "tree fan-out failed: {replicated} of {total} destinations replicated the tree, {needed} \
         needed"
    )]
    TooFew {
        /// Destinations with the complete tree.
        replicated: usize,
        /// Destinations whose tree was walked to the end with failures.
        partial: usize,
        /// Destinations in all.
        total: usize,
        /// `--min-success`.
        needed: usize,
        /// The code of the first destination that failed as a whole for a reason that will
        /// not go away by itself, or if none did, of the first that failed as a whole.
        code: Option<ErrorCode>,
    },
    /// Ctrl-C: the trees still running were cancelled, the destinations not started never
    /// were.
    #[error(
        "tree fan-out cancelled (interrupted): {replicated} of {total} destinations had \
         replicated the tree; files already published stay, no partial file is left"
    )]
    Interrupted {
        /// Destinations with the complete tree before the interruption.
        replicated: usize,
        /// Destinations in all.
        total: usize,
    },
}

impl TreeFanoutError {
    /// The wire code for `--json` output.
    pub fn code(&self) -> ErrorCode {
        match self {
            TreeFanoutError::Plan(_)
            | TreeFanoutError::Detach
            | TreeFanoutError::Nested { .. }
            | TreeFanoutError::NestsWithSource { .. } => ErrorCode::InvalidArgument,
            TreeFanoutError::TooFew { code, .. } => code.unwrap_or(ErrorCode::FailedPrecondition),
            TreeFanoutError::Interrupted { .. } => ErrorCode::Cancelled,
        }
    }

    /// The exit code: 2 for a usage error, 130 after Ctrl-C; when too few trees are complete,
    /// 3 if enough were at least walked to the end, else 4 when every destination that failed
    /// as a whole failed for a temporary reason, 1 otherwise (see [`crate::exit`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            TreeFanoutError::Plan(_)
            | TreeFanoutError::Detach
            | TreeFanoutError::Nested { .. }
            | TreeFanoutError::NestsWithSource { .. } => exit::USAGE,
            TreeFanoutError::Interrupted { .. } => exit::INTERRUPTED,
            TreeFanoutError::TooFew {
                replicated,
                partial,
                needed,
                ..
            } if replicated + partial >= *needed => exit::INCOMPLETE,
            TreeFanoutError::TooFew { code, .. } => code.map_or(exit::FAILED, exit::of_code),
        }
    }

    /// Whether the destinations' lines and the summary have been printed already, so that
    /// `--json` must not print a failure object on top.
    fn reported(&self) -> bool {
        matches!(
            self,
            TreeFanoutError::TooFew { .. } | TreeFanoutError::Interrupted { .. }
        )
    }
}

/// Whether directory `inner` is `outer` or lies beneath it.
fn inside(inner: &str, outer: &str) -> bool {
    outer == "/"
        || inner == outer
        || inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Checks the destinations of a tree fan-out: none is the source or nests with it on its
/// star, none is given twice, and no two nest on one star. Two disjoint directories on one
/// star are fine: each is its own tree replication.
///
/// # Errors
///
/// [`TreeFanoutError`] naming the first culprit.
pub fn check_destinations(
    source: &StarPath,
    destinations: &[StarPath],
) -> Result<(), TreeFanoutError> {
    for (i, destination) in destinations.iter().enumerate() {
        if destination == source {
            return Err(PlanError::SameAsSource(destination.clone()).into());
        }
        let nests = |a: &StarPath, b: &StarPath| {
            a.star == b.star && (inside(&a.path, &b.path) || inside(&b.path, &a.path))
        };
        if nests(destination, source) {
            return Err(TreeFanoutError::NestsWithSource {
                destination: destination.to_string(),
                origin: source.to_string(),
            });
        }
        if let Some(first) = destinations[..i].iter().find(|d| nests(d, destination)) {
            if first == destination {
                return Err(PlanError::Duplicate(destination.clone()).into());
            }
            return Err(TreeFanoutError::Nested {
                star: destination.star.clone(),
                first: first.to_string(),
                second: destination.to_string(),
            });
        }
    }
    Ok(())
}

/// Runs `orbitctl replicate --recursive` with more than one destination: prints a line per
/// destination as its tree ends, then the summary (or JSON).
///
/// # Errors
///
/// [`ReplicateError`]; with `--json` every failure has been printed already.
pub async fn run(
    grid_dir: &Path,
    args: &Args,
    destinations: Vec<StarPath>,
) -> Result<(), ReplicateError> {
    let result = execute(grid_dir, args, destinations).await;
    if let Err(e) = &result {
        let reported = matches!(e, ReplicateError::TreeFanout(f) if f.reported());
        if args.json && !reported {
            println!("{}", crate::json::failure(e.code(), &e.to_string()));
        }
    }
    result
}

async fn execute(
    grid_dir: &Path,
    args: &Args,
    destinations: Vec<StarPath>,
) -> Result<(), ReplicateError> {
    if args.detach {
        return Err(TreeFanoutError::Detach.into());
    }
    let source = StarPath::parse_dir(args.source.as_deref().unwrap_or(""))?;
    check_destinations(&source, &destinations)?;
    let min_success = plan::check_min_success(args.min_success, destinations.len())
        .map_err(TreeFanoutError::from)?;
    let filter = tree::filter_of(args)?;
    // From here on Ctrl-C cancels every tree running rather than killing orbitctl.
    let mut interrupt = interrupt_signal();
    let grid = Grid::open(grid_dir)?;
    let mut nodes = Vec::with_capacity(destinations.len() + 1);
    for path in std::iter::once(source).chain(destinations) {
        let addr = grid.star(&path.star)?;
        nodes.push(Node {
            dial: connect::resolve(&path.star, addr).await?,
            addr: addr.to_string(),
            path,
        });
    }
    tracing::info!(
        source = %nodes[SOURCE].path,
        destinations = nodes.len() - 1,
        "tree fan-out started"
    );
    let rounds = Rounds {
        master: grid.master_key()?,
        tls: grid.client_tls()?,
        ttl: args.ttl.unwrap_or(grid.ttl_secs()),
        args,
        output: Output {
            json: args.json,
            quiet: args.quiet,
        },
        filter,
        nodes,
        min_success,
        started: Instant::now(),
        tally: Tally::default(),
    };
    rounds.run(&mut interrupt).await
}

/// The source or a destination: where its tree is and how to reach it.
struct Node {
    /// The star and the directory.
    path: StarPath,
    /// Its `HOST:PORT` as grid.toml gives it, for a star it feeds.
    addr: String,
    /// Where orbitctl dials it.
    dial: SocketAddr,
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
struct Rounds<'a> {
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

impl Rounds<'_> {
    async fn run(mut self, interrupt: &mut Interrupt) -> Result<(), ReplicateError> {
        let mut pending: VecDeque<usize> = (1..self.nodes.len()).collect();
        // Destinations with the complete tree, and nothing else, that feed no one right now.
        let mut free: VecDeque<usize> = VecDeque::new();
        let mut running: JoinSet<Ended> = JoinSet::new();
        let mut jobs: Vec<TreeJob> = Vec::new();
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
                match &result {
                    // A holder that cannot be reached any more is not asked again.
                    Err(e) if exit::retryable(e.code()) => self.note(format!(
                        "{}: no longer feeds other destinations after: {}",
                        self.nodes[leg.from].path.star,
                        super::report::one_line(&e.to_string())
                    )),
                    _ => free.push_back(leg.from),
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
                super::report::one_line(&e.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(star: &str, path: &str) -> StarPath {
        StarPath {
            star: star.into(),
            path: path.into(),
        }
    }

    #[test]
    fn destinations_may_not_repeat_or_nest_on_one_star() {
        let source = at("a", "/srv/data");
        let check = |destinations: &[StarPath]| {
            check_destinations(&source, destinations).map_err(|e| (e.to_string(), e.exit_code()))
        };
        // Disjoint directories, on one star or on the source's, are fine.
        check(&[
            at("b", "/x"),
            at("c", "/x"),
            at("b", "/y"),
            at("a", "/srv/copy"),
        ])
        .unwrap();
        check(&[at("b", "/x"), at("b", "/xy")]).unwrap();
        let refused = [
            (
                vec![at("b", "/x"), at("a", "/srv/data")],
                "destination a:/srv/data is the source itself",
            ),
            (
                vec![at("b", "/x"), at("c", "/x"), at("b", "/x")],
                "destination b:/x is given twice",
            ),
            (
                vec![at("b", "/x"), at("b", "/x/y")],
                "destinations b:/x and b:/x/y nest on star b: one tree would be written inside \
                 the other",
            ),
            (
                vec![at("b", "/x/y"), at("b", "/")],
                "destinations b:/x/y and b:/ nest on star b: one tree would be written inside \
                 the other",
            ),
            (
                vec![at("a", "/srv/data/copy")],
                "destination a:/srv/data/copy nests with the source a:/srv/data: the tree would \
                 be copied into itself",
            ),
            (
                vec![at("a", "/srv")],
                "destination a:/srv nests with the source a:/srv/data: the tree would be copied \
                 into itself",
            ),
        ];
        for (destinations, message) in refused {
            assert_eq!(
                check(&destinations).unwrap_err(),
                (message.to_owned(), exit::USAGE)
            );
        }
    }

    #[test]
    fn exit_codes_tell_partly_done_from_failed() {
        let too_few = |replicated, partial, code| TreeFanoutError::TooFew {
            replicated,
            partial,
            total: 4,
            needed: 4,
            code,
        };
        // Every tree walked to the end, some with files failed: partly done.
        assert_eq!(too_few(3, 1, None).exit_code(), exit::INCOMPLETE);
        assert_eq!(too_few(3, 1, None).code(), ErrorCode::FailedPrecondition);
        // One failed as a whole: by its code's class.
        let denied = Some(ErrorCode::PermissionDenied);
        assert_eq!(too_few(3, 0, denied).exit_code(), exit::FAILED);
        let unavailable = Some(ErrorCode::Unavailable);
        assert_eq!(too_few(2, 1, unavailable).exit_code(), exit::TEMPORARY);
        assert_eq!(TreeFanoutError::Detach.exit_code(), exit::USAGE);
        let interrupted = TreeFanoutError::Interrupted {
            replicated: 1,
            total: 4,
        };
        assert_eq!(interrupted.exit_code(), exit::INTERRUPTED);
        assert!(interrupted.reported() && !TreeFanoutError::Detach.reported());
    }
}
