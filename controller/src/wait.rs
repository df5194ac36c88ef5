//! `orbitctl wait ID`: follows a transfer that runs without its controller (`replicate
//! --detach`, or a controller that went away) and reports it exactly as `replicate` would: the
//! same progress display, summary line, JSON and exit code, for a file or a tree; with several
//! stars, a fan-out as `replicate` reports one. Ctrl-C stops waiting, not the transfer.

use std::path::{Path, PathBuf};

use orbit_wire::{
    ControlEvent, ControlRequest, ErrorCode, ReplicateFile, TransferId, TransferStatus,
};

use crate::grid::Grid;
use crate::locate::{self, LocateError};
use crate::progress::{Mode, Progress};
use crate::replicate::fanout::{self, FanoutError};
use crate::replicate::plan::check_min_success;
use crate::replicate::tree::{self, Output, TreeDone, TreeJob};
use crate::replicate::{self, report, ReplicateError, ReplicateJob};

/// Wait for a transfer to end and report it as `replicate` does.
///
/// ID is the transfer id that `replicate --detach` printed (also in `replicate --json`'s
/// events and in both stars' logs). Every star of the grid is asked unless --star names the
/// destination. Works while the transfer runs and for an hour after it ended. Exits 0 only if
/// the transfer produced a verified copy (for a tree: of every file), 3 if a tree ended with
/// some files failed or its --delete not run, 4 if it failed for a temporary reason or a star
/// that may hold it did not answer, 1 otherwise. Ctrl-C stops waiting; the transfer carries
/// on.
///
/// For a fan-out, name every destination: --star once per star, or --to-file with the file
/// given to `replicate --to-file`. All are followed at once and reported as `replicate` reports
/// a fan-out: one line per destination on stdout as it ends (`verified`, or FAILED with the
/// code and why), then the summary; exits 0 when at least --min-success of them (default: all)
/// verified the file, else 4 when every failure was temporary, 1 otherwise.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The transfer id (16 hexadecimal digits).
    // Parsed by `TransferId::from_str`: up to 16 hexadecimal digits, as a person may type them.
    #[arg(value_name = "ID")]
    pub id: TransferId,

    /// The destination star that runs the transfer (repeatable: every destination of a
    /// fan-out). Default: ask every star.
    #[arg(long, value_name = "NAME")]
    pub star: Vec<String>,

    /// Follow the transfer on every star FILE lists: one STAR:/abs/path per line, as
    /// `replicate --to-file` reads it.
    #[arg(long, value_name = "FILE")]
    pub to_file: Option<PathBuf>,

    /// With several stars, succeed (exit 0) when at least N of them verified the file.
    /// Default: all of them.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub min_success: Option<u32>,

    /// Print NDJSON progress events (and a tree's item events, if it was started with
    /// --itemize), then the result object, as `replicate --json` does.
    #[arg(long)]
    pub json: bool,

    /// Print nothing but errors.
    #[arg(long, short, conflicts_with = "json")]
    pub quiet: bool,
}

/// Why `orbitctl wait` failed.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// No star could tell.
    #[error(transparent)]
    Locate(#[from] LocateError),
    /// The transfer failed, as `replicate` would report it.
    #[error(transparent)]
    Replicate(#[from] ReplicateError),
}

impl WaitError {
    /// The wire code that fits.
    pub fn code(&self) -> ErrorCode {
        match self {
            WaitError::Locate(e) => e.code(),
            WaitError::Replicate(e) => e.code(),
        }
    }

    /// The exit code (see [`crate::exit`]): as `replicate`'s for the transfer's own failure;
    /// for a transfer no star could report, by the class of the code (4 when a star was
    /// unreachable, 1 when every star answered and none knows the id).
    pub fn exit_code(&self) -> u8 {
        match self {
            WaitError::Locate(e) => crate::exit::of_code(e.code()),
            WaitError::Replicate(e) => e.exit_code(),
        }
    }
}

/// How a followed transfer ended: a file's verified copy, or a tree that ran to its end.
#[derive(Debug)]
enum Outcome {
    File(ReplicateJob, replicate::Replicated),
    Tree(TreeJob, TreeDone),
}

/// Runs `orbitctl wait` on the grid at `grid_dir`.
///
/// # Errors
///
/// [`WaitError`]; with `--json` the failure object has been printed already.
pub async fn run(grid_dir: &Path, args: Args) -> Result<(), WaitError> {
    let output = Output {
        json: args.json,
        quiet: args.quiet,
    };
    let stars = fanout::stars_of(&args.star, args.to_file.as_deref())
        .and_then(|stars| {
            let count = stars.len().max(1);
            check_min_success(args.min_success, count).map(|_| stars)
        })
        .map_err(|e| ReplicateError::from(FanoutError::from(e)));
    let stars = match stars {
        Ok(stars) => stars,
        Err(e) => {
            if args.json {
                println!("{}", crate::json::failure(e.code(), &e.to_string()));
            }
            return Err(e.into());
        }
    };
    if stars.len() > 1 {
        return Ok(fanout::wait(grid_dir, args.id, &stars, args.min_success, output).await?);
    }
    match follow(grid_dir, &args, stars.first().map(String::as_str), output).await {
        Ok(Outcome::File(job, done)) => {
            if args.json {
                println!("{}", replicate::success_json(&job, &done));
            } else if !args.quiet {
                println!("{}", replicate::summary_line(&job, &done));
            }
            Ok(())
        }
        Ok(Outcome::Tree(job, done)) => {
            report::print(&job, &done, output);
            Ok(report::outcome(&job.destination, &done.summary)?)
        }
        Err(e) => {
            if args.json {
                println!("{}", crate::json::failure(e.code(), &e.to_string()));
            }
            Err(e)
        }
    }
}

async fn follow(
    grid_dir: &Path,
    args: &Args,
    star: Option<&str>,
    output: Output,
) -> Result<Outcome, WaitError> {
    let grid = Grid::open(grid_dir).map_err(LocateError::from)?;
    let mut progress = Progress::new(Mode::choose(args.json, args.quiet), args.id);
    let mut following: Option<TransferStatus> = None;
    let request = ControlRequest::Wait {
        transfer_id: args.id,
    };
    let located = locate::ask(&grid, star, request, |event| match event {
        ControlEvent::Following(status) => {
            if status.total > 0 {
                progress.update(status.bytes, status.total);
            }
            following = Some(status.clone());
        }
        ControlEvent::Progress { bytes, total } => progress.update(*bytes, *total),
        other => {
            tree::show(&mut progress, args.id, other, output);
        }
    })
    .await;
    progress.clear();
    let located = located?;
    if let ControlEvent::TreeDone(summary) = located.event {
        let job = tree::job_of(args.id, &located.star, located.addr, following);
        let done = TreeDone {
            summary,
            wire: located.wire,
        };
        return Ok(Outcome::Tree(job, done));
    }
    let job = job_of(args.id, &located.star, located.addr, following);
    let done = replicate::conclude(&job, Ok(located.event), located.wire, 0)?;
    Ok(Outcome::File(job, done))
}

/// The job a transfer's status describes, so the summary reads as `replicate`'s.
pub fn job_of(
    id: TransferId,
    star: &str,
    addr: std::net::SocketAddr,
    status: Option<TransferStatus>,
) -> ReplicateJob {
    let status = status.unwrap_or(TransferStatus {
        transfer_id: id,
        source: "?".into(),
        source_path: "?".into(),
        target_path: "?".into(),
        bytes: 0,
        total: 0,
        seconds: 0.0,
    });
    ReplicateJob {
        destination: star.to_owned(),
        destination_addr: addr,
        command: ReplicateFile {
            transfer_id: id,
            source: status.source,
            source_addr: String::new(),
            source_path: status.source_path,
            target_path: status.target_path,
            token: String::new(),
            expect_sha256: None,
            timeout_secs: 0,
        },
        also: Vec::new(),
        in_pieces: false,
    }
}
