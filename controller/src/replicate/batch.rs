//! `orbitctl replicate --from-file JOBS`: many single-file replications from one file, at
//! most `--transfers` at once, each retried with backoff while it fails for a reason that may
//! go away by itself ([`crate::exit::Class::Temporary`]), one result per job as it ends and
//! one summary; for cron, Airflow, Kubernetes Jobs and scripts.
//!
//! Every job goes through the one client path of a single replication
//! ([`super::replicate_observed`], [`super::Minting::job`], and on Ctrl-C
//! [`super::interrupt::Cancelling`]); this module only schedules them. The whole file is read
//! and checked ([`jobs`]) before any star is contacted, so a bad line copies nothing.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use orbit_wire::{ControlEvent, ControlRequest, ErrorCode};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::interrupt::{interrupt_signal, Cancelling, Interrupt};
use super::{
    conclude, event_line, replicate_observed, Args, Minting, ReplicateError, ReplicateJob,
};
use crate::connect::StarConnection;
use crate::exit;
use crate::grid::{Grid, GridError};
use crate::human;

pub mod jobs;
mod report;

pub use jobs::Job;
use report::Report;

/// How many replications run at once unless `--transfers` says otherwise.
pub const DEFAULT_TRANSFERS: u32 = 4;
/// How many times a job is tried again unless `--retries` says otherwise.
pub const DEFAULT_RETRIES: u32 = 3;
/// The wait before the first retry; it doubles with each retry.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Why a batch could not start, or how it ended when some of its jobs failed.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// `--transfers` or `--retries` without `--from-file` (clap does not enforce `requires` on
    /// an argument whose target conflicts with one given).
    #[error("{flag} is for a batch: give --from-file JOBS")]
    WithoutJobs {
        /// The flag given.
        flag: &'static str,
    },
    /// The jobs file could not be read.
    #[error("cannot read the jobs file {}: {error}", file.display())]
    Read {
        /// The file given (`-` for stdin).
        file: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// A line of the jobs file was refused; nothing was started.
    #[error("{}, {error}; nothing was started", file.display())]
    Line {
        /// The file given.
        file: PathBuf,
        /// The line and why.
        error: jobs::LineError,
    },
    /// The jobs file lists no replication.
    #[error("{} lists no replication (one SRC DST pair a line)", file.display())]
    Empty {
        /// The file given.
        file: PathBuf,
    },
    /// Some jobs failed; each has been reported.
    #[error("{failed} of {total} replications failed (see the FAILED lines)")]
    Failed {
        /// Jobs that failed.
        failed: usize,
        /// Jobs in all.
        total: usize,
        /// The code of the first job that failed for good, or if none did, of the first
        /// that failed.
        code: ErrorCode,
    },
    /// Ctrl-C: the jobs running were cancelled and no more were started.
    #[error(
        "batch cancelled (interrupted): {verified} of {total} replications had verified their \
         file; those running were cancelled and publish nothing, {not_started} were not started"
    )]
    Interrupted {
        /// Jobs verified before the interruption.
        verified: usize,
        /// Jobs never started.
        not_started: usize,
        /// Jobs in all.
        total: usize,
    },
}

impl BatchError {
    /// The wire code for `--json` output.
    pub fn code(&self) -> ErrorCode {
        match self {
            BatchError::WithoutJobs { .. }
            | BatchError::Read { .. }
            | BatchError::Line { .. }
            | BatchError::Empty { .. } => ErrorCode::InvalidArgument,
            BatchError::Failed { code, .. } => *code,
            BatchError::Interrupted { .. } => ErrorCode::Cancelled,
        }
    }

    /// The exit code (see [`crate::exit`]): 2 when the batch could not start; after it ran,
    /// the worst of its jobs': 130 after Ctrl-C, 1 when one failed for good, else 4.
    pub fn exit_code(&self) -> u8 {
        match self {
            BatchError::WithoutJobs { .. }
            | BatchError::Read { .. }
            | BatchError::Line { .. }
            | BatchError::Empty { .. } => exit::USAGE,
            BatchError::Failed { code, .. } => exit::of_code(*code),
            BatchError::Interrupted { .. } => exit::INTERRUPTED,
        }
    }
}

/// How often and how patiently a job is tried again.
#[derive(Debug, Clone, Copy)]
struct Retry {
    /// Retries after the first attempt.
    retries: u32,
    /// The wait before the first retry.
    first: Duration,
}

impl Retry {
    /// The wait before retry number `retry` (from 1): `first`, doubled each time, at most
    /// [`MAX_BACKOFF`], less up to half of it at random (`jitter` in 0..1) so that jobs that
    /// failed together do not all come back at once.
    fn backoff(&self, retry: u32, jitter: f64) -> Duration {
        let doubled = self
            .first
            .saturating_mul(1u32 << (retry.saturating_sub(1)).min(16));
        doubled
            .min(MAX_BACKOFF)
            .mul_f64(1.0 - jitter.clamp(0.0, 1.0) / 2.0)
    }
}

/// What every job of the batch shares.
struct Shared {
    grid: Grid,
    master: orbit_wire::token::MasterKey,
    tls: Arc<rustls::ClientConfig>,
    ttl: u64,
    timeout_secs: u32,
    retry: Retry,
    /// Whether a person reads stderr (retry lines).
    quiet: bool,
}

/// How one job ended.
#[derive(Debug)]
struct Ended {
    /// Its index in the file's order.
    index: usize,
    /// Attempts made, from 1.
    attempts: u32,
    /// The verified copy and its transfer id, or why not.
    result: Result<(ReplicateJob, super::Replicated), ReplicateError>,
}

/// Refuses the batch options without a batch.
///
/// # Errors
///
/// [`BatchError::WithoutJobs`] naming the flag.
pub fn check_unbatched(args: &Args) -> Result<(), BatchError> {
    let flag = match (args.transfers, args.retries) {
        (Some(_), _) => "--transfers",
        (None, Some(_)) => "--retries",
        (None, None) => return Ok(()),
    };
    Err(BatchError::WithoutJobs { flag })
}

/// Runs the batch `jobs_file` lists with the options of `args`.
///
/// # Errors
///
/// [`ReplicateError::Batch`]: a usage error before anything started, or the jobs that failed
/// (each reported already); [`ReplicateError::Grid`] when the grid cannot be used.
pub async fn run(grid_dir: &Path, args: &Args, jobs_file: &Path) -> Result<(), ReplicateError> {
    let result = execute(grid_dir, args, jobs_file).await;
    if let Err(e) = &result {
        let reported = matches!(
            e,
            ReplicateError::Batch(BatchError::Failed { .. } | BatchError::Interrupted { .. })
        );
        if args.json && !reported {
            println!("{}", crate::json::failure(e.code(), &e.to_string()));
        }
    }
    result
}

async fn execute(grid_dir: &Path, args: &Args, jobs_file: &Path) -> Result<(), ReplicateError> {
    let text = read(jobs_file).map_err(|error| BatchError::Read {
        file: jobs_file.to_owned(),
        error,
    })?;
    let refused = |error: jobs::LineError| BatchError::Line {
        file: jobs_file.to_owned(),
        error,
    };
    let jobs = jobs::parse(&text).map_err(refused)?;
    if jobs.is_empty() {
        return Err(BatchError::Empty {
            file: jobs_file.to_owned(),
        }
        .into());
    }
    // From here on Ctrl-C cancels the jobs running rather than killing orbitctl (not before:
    // reading JOBS from a terminal's stdin must stay interruptible).
    let mut interrupt = interrupt_signal();
    let grid = Grid::open(grid_dir)?;
    for job in &jobs {
        for star in [&job.source.star, &job.target.star] {
            match grid.star(star) {
                Ok(_) => {}
                Err(e @ GridError::UnknownStar { .. }) => {
                    return Err(refused(jobs::LineError {
                        line: job.line,
                        reason: e.to_string(),
                    })
                    .into())
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    let shared = Arc::new(Shared {
        master: grid.master_key()?,
        tls: grid.client_tls()?,
        ttl: args.ttl.unwrap_or(grid.ttl_secs()),
        grid,
        timeout_secs: args.timeout,
        retry: Retry {
            retries: args.retries.unwrap_or(DEFAULT_RETRIES),
            first: FIRST_BACKOFF,
        },
        quiet: args.quiet || args.json,
    });
    let report = Report {
        json: args.json,
        quiet: args.quiet,
        started: Instant::now(),
    };
    let transfers = args.transfers.unwrap_or(DEFAULT_TRANSFERS);
    let transfers = usize::try_from(transfers).unwrap_or(usize::MAX).max(1);
    let (ended, started) = drive(&shared, &jobs, transfers, &mut interrupt, &report).await;
    report.summarize(&jobs, &ended, started)
}

/// Reads the whole jobs file, or stdin for `-`.
fn read(path: &Path) -> std::io::Result<String> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        return Ok(text);
    }
    std::fs::read_to_string(path)
}

/// Runs `jobs`, at most `transfers` at once, reporting each as it ends, until all have ended
/// or Ctrl-C: then the jobs running are cancelled (a second Ctrl-C stops waiting for them) and
/// no more start. Returns how each job ended (`None` for one that did not) and how many
/// started, in the file's order.
async fn drive(
    shared: &Arc<Shared>,
    jobs: &[Job],
    transfers: usize,
    interrupt: &mut Interrupt,
    report: &Report,
) -> (Vec<Option<Ended>>, usize) {
    let (stop, stopped) = watch::channel(false);
    let mut ended: Vec<Option<Ended>> = jobs.iter().map(|_| None).collect();
    let mut running = JoinSet::new();
    let mut next = 0;
    let mut interrupts = 0;
    loop {
        while interrupts == 0 && running.len() < transfers && next < jobs.len() {
            let (shared, job, stopped) = (shared.clone(), jobs[next].clone(), stopped.clone());
            let index = next;
            running.spawn(async move { run_job(&shared, index, &job, stopped).await });
            next += 1;
        }
        tokio::select! {
            joined = running.join_next() => match joined {
                None => break,
                Some(Ok(done)) => {
                    report.job(&jobs[done.index], &done);
                    let index = done.index;
                    ended[index] = Some(done);
                }
                Some(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Some(Err(_)) => {}
            },
            () = interrupt.recv() => {
                interrupts += 1;
                if interrupts == 1 {
                    let _ = stop.send(true);
                } else {
                    // A second Ctrl-C: the cancellations were sent; stop waiting for them
                    // (dropping `running` ends its tasks).
                    break;
                }
            }
        }
    }
    (ended, next)
}

/// Runs one job to its end: attempts it, and while it fails for a temporary reason and
/// retries are left, waits and attempts it again with a fresh token and transfer id. When the
/// connection to the destination was lost after the command reached it, the destination carries
/// on alone (as after `replicate` dies), so the next attempt follows that transfer, as `orbitctl
/// wait` does, and starts a new one only if the destination does not know it.
async fn run_job(
    shared: &Shared,
    index: usize,
    job: &Job,
    mut stopped: watch::Receiver<bool>,
) -> Ended {
    let mut attempts = 1;
    let mut lost = None;
    loop {
        let following = lost.is_some();
        let (replication, result) = attempt(shared, job, &mut stopped, lost.take()).await;
        let retry = match &result {
            Err(e) => {
                e.exit_code() == exit::TEMPORARY
                    && attempts <= shared.retry.retries
                    && !*stopped.borrow()
            }
            Ok(_) => false,
        };
        if !retry {
            let result = match (replication, result) {
                (Some(replication), Ok(done)) => Ok((replication, done)),
                (None, Ok(_)) => unreachable!("a verified copy has its replication"),
                (_, Err(e)) => Err(e),
            };
            return Ended {
                index,
                attempts,
                result,
            };
        }
        // Its end is unknown when the connection broke after the command was sent, or when
        // the destination could not be asked about a transfer whose end was unknown already.
        // (A star that answered, even with a refusal, is not asked again: it would repeat it.)
        let unknown = match &result {
            Err(ReplicateError::Stream { .. }) => true,
            Err(ReplicateError::Connect(_)) => following,
            _ => false,
        };
        if unknown {
            lost = replication;
        }
        let wait = shared.retry.backoff(attempts, rand::random::<f64>());
        if !shared.quiet {
            if let Err(e) = &result {
                eprintln!(
                    "line {}: retrying (attempt {}) in {:.1} s: {}",
                    job.line,
                    attempts + 1,
                    wait.as_secs_f64(),
                    human::printable(&e.to_string())
                );
            }
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stopped.wait_for(|stop| *stop) => {
                return Ended {
                    index,
                    attempts,
                    result: Err(interrupted(&job.target.star, &job.target.path)),
                };
            }
        }
        attempts += 1;
    }
}

/// One attempt at `job`, through the single replication's client path: a new replication, or
/// when `lost` names one whose end was not heard, that one followed; cancelled on the
/// destination when `stopped` turns true. Returns the replication it ran (if it got so far) and
/// how it ended.
async fn attempt(
    shared: &Shared,
    job: &Job,
    stopped: &mut watch::Receiver<bool>,
    lost: Option<ReplicateJob>,
) -> (
    Option<ReplicateJob>,
    Result<super::Replicated, ReplicateError>,
) {
    if *stopped.borrow() {
        return (None, Err(interrupted(&job.target.star, &job.target.path)));
    }
    let minting = Minting {
        grid: &shared.grid,
        master: &shared.master,
        ttl: shared.ttl,
        expect_sha256: None,
        timeout_secs: shared.timeout_secs,
    };
    let line = job.line;
    let quiet = shared.quiet;
    let show = |destination: &str, event: &ControlEvent| {
        if let Some(text) = event_line(destination, event).filter(|_| !quiet) {
            eprintln!("line {line}: {text}");
        }
    };
    let mut replication = lost;
    let work = async {
        if let Some(lost) = &replication {
            let on_event = |event: &ControlEvent| show(&lost.destination, event);
            if let Some(result) = follow(shared.tls.clone(), lost, on_event).await {
                return result;
            }
        }
        let fresh = minting.job(&job.source, &job.target).await?;
        let replication = replication.insert(fresh);
        let on_event = |event: &ControlEvent| show(&replication.destination, event);
        replicate_observed(shared.tls.clone(), replication, on_event).await
    };
    let finished = tokio::select! {
        result = work => Some(result),
        _ = stopped.wait_for(|stop| *stop) => None,
    };
    match (finished, replication) {
        (Some(result), replication) => (replication, result),
        (None, None) => (None, Err(interrupted(&job.target.star, &job.target.path))),
        (None, Some(replication)) => {
            let cancelling = Cancelling {
                tls: shared.tls.clone(),
                destination: &replication.destination,
                addr: replication.destination_addr,
                transfer: replication.command.transfer_id,
            };
            let result = cancelling
                .run(
                    &mut Interrupt::never(),
                    || interrupted(&job.target.star, &job.target.path),
                    |result, wire| conclude(&replication, result, wire, 0),
                )
                .await;
            (Some(replication), result)
        }
    }
}

/// Follows `lost`, a replication whose end was not heard, on its destination, as `orbitctl wait`
/// does; `None` when the destination does not know it (the command never arrived, or the star
/// restarted and forgot it).
async fn follow(
    tls: Arc<rustls::ClientConfig>,
    lost: &ReplicateJob,
    mut on_event: impl FnMut(&ControlEvent),
) -> Option<Result<super::Replicated, ReplicateError>> {
    let conn = match StarConnection::connect(tls, &lost.destination, lost.destination_addr).await {
        Ok(conn) => conn,
        Err(e) => return Some(Err(e.into())),
    };
    let request = ControlRequest::Wait {
        transfer_id: lost.command.transfer_id,
    };
    // Only the star that holds the transfer says where it stands before its final event.
    let mut holds = false;
    let result = conn
        .control_events(&request, |event| {
            holds |= matches!(event, ControlEvent::Following(_));
            on_event(event);
        })
        .await;
    let wire = conn.wire_bytes();
    conn.close().await;
    match result {
        Ok(ControlEvent::Failed(e)) if e.code == ErrorCode::NotFound && !holds => None,
        other => Some(conclude(lost, other, wire, 0)),
    }
}

fn interrupted(star: &str, target: &str) -> ReplicateError {
    ReplicateError::Interrupted {
        star: star.to_owned(),
        target: target.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use orbit_wire::WireError;

    use super::*;
    use crate::fake_star::FakeStar;

    #[test]
    fn backoff_doubles_up_to_the_cap_less_a_random_part() {
        let retry = Retry {
            retries: 3,
            first: Duration::from_secs(1),
        };
        assert_eq!(retry.backoff(1, 0.0), Duration::from_secs(1));
        assert_eq!(retry.backoff(2, 0.0), Duration::from_secs(2));
        assert_eq!(retry.backoff(3, 0.0), Duration::from_secs(4));
        assert_eq!(retry.backoff(10, 0.0), MAX_BACKOFF);
        assert_eq!(retry.backoff(3, 1.0), Duration::from_secs(2));
        assert_eq!(retry.backoff(u32::MAX, 0.5), MAX_BACKOFF.mul_f64(0.75));
    }

    #[test]
    fn the_batch_exit_code_is_the_worst_class() {
        let failed = |code| BatchError::Failed {
            failed: 1,
            total: 2,
            code,
        };
        assert_eq!(failed(ErrorCode::Unavailable).exit_code(), exit::TEMPORARY);
        assert_eq!(failed(ErrorCode::NotFound).exit_code(), exit::FAILED);
        let interrupted = BatchError::Interrupted {
            verified: 0,
            not_started: 1,
            total: 2,
        };
        assert_eq!(interrupted.exit_code(), exit::INTERRUPTED);
        let line = BatchError::Line {
            file: "jobs".into(),
            error: jobs::LineError {
                line: 3,
                reason: "bad".into(),
            },
        };
        assert_eq!(line.exit_code(), exit::USAGE);
        assert_eq!(line.to_string(), "jobs, line 3: bad; nothing was started");
    }

    /// A job whose destination answers ResourceExhausted twice, then Done, is retried and
    /// verified; one refused with NotFound is not retried.
    #[tokio::test]
    async fn temporary_failures_are_retried_and_permanent_ones_not() {
        let answers = std::sync::Mutex::new(0u32);
        let star = FakeStar::spawn("star-b", move |_| {
            let mut n = answers.lock().unwrap();
            *n += 1;
            match *n {
                1 | 2 => vec![ControlEvent::Failed(WireError::new(
                    ErrorCode::ResourceExhausted,
                    "star star-b already runs 1 replications, its limit",
                ))],
                _ => vec![ControlEvent::Done {
                    bytes: 5,
                    sha256: [7; 32],
                    seconds: 0.1,
                }],
            }
        })
        .await;
        let shared = shared(&star, 3);
        let ended = run_a_to_b(&shared).await;
        assert_eq!(ended.attempts, 3);
        let (_, done) = ended.result.unwrap();
        assert_eq!(done.sha256, [7; 32]);

        let refused = FakeStar::spawn("star-b", |_| {
            vec![ControlEvent::Failed(WireError::new(
                ErrorCode::NotFound,
                "star-a: /d/f: not found",
            ))]
        })
        .await;
        let ended = run_a_to_b(&self::shared(&refused, 3)).await;
        assert_eq!(ended.attempts, 1);
        let err = ended.result.unwrap_err();
        assert_eq!(err.code(), ErrorCode::NotFound);
        assert_eq!(err.exit_code(), exit::FAILED);
    }

    /// A destination that ends the control stream without a result may carry on: the retry
    /// follows the same transfer (`Wait`) rather than starting a second one on the same target.
    #[tokio::test]
    async fn a_transfer_whose_end_was_not_heard_is_followed_not_started_again() {
        let mut star = FakeStar::spawn("star-b", |request| match request {
            ControlRequest::Replicate(_) => Vec::new(),
            _ => vec![ControlEvent::Done {
                bytes: 5,
                sha256: [9; 32],
                seconds: 0.1,
            }],
        })
        .await;
        let shared = shared(&star, 3);
        let ended = run_a_to_b(&shared).await;
        assert_eq!(ended.attempts, 2);
        let (replication, done) = ended.result.unwrap();
        assert_eq!(done.sha256, [9; 32]);
        let Some(ControlRequest::Replicate(sent)) = star.requests.recv().await else {
            panic!("no replicate request");
        };
        assert_eq!(sent.transfer_id, replication.command.transfer_id);
        let followed = star.requests.recv().await;
        assert!(
            matches!(followed, Some(ControlRequest::Wait { transfer_id }) if transfer_id == sent.transfer_id),
            "{followed:?}"
        );
    }

    /// Runs the one job `star-a:/d/f star-b:/e/f` to its end, never stopped.
    async fn run_a_to_b(shared: &Shared) -> Ended {
        let job = Job {
            line: 1,
            source: crate::spec::StarPath::parse("star-a:/d/f").unwrap(),
            target: crate::spec::StarPath::parse("star-b:/e/f").unwrap(),
        };
        let (_stop, stopped) = watch::channel(false);
        run_job(shared, 0, &job, stopped).await
    }

    /// What the jobs share, with the fake star as star-b and no wait between attempts.
    fn shared(star: &FakeStar, retries: u32) -> Shared {
        let dir = tempfile::tempdir().unwrap();
        let grid_dir = dir.path().join("grid");
        crate::init::create_grid(
            &grid_dir,
            &[
                crate::spec::StarSpec::parse("star-a=127.0.0.1:9").unwrap(),
                crate::spec::StarSpec::parse(&format!("star-b={}", star.addr)).unwrap(),
            ],
        )
        .unwrap();
        let grid = Grid::open(&grid_dir).unwrap();
        Shared {
            master: grid.master_key().unwrap(),
            tls: star.controller_tls(),
            ttl: 60,
            grid,
            timeout_secs: 1,
            retry: Retry {
                retries,
                first: Duration::from_millis(1),
            },
            quiet: true,
        }
    }
}
