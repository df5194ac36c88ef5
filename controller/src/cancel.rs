//! `orbitctl cancel ID`: stops a transfer, of a file or a tree. The destination stops pulling,
//! removes its temporary files and records the transfer as cancelled; this command returns once
//! it has. Files of a tree published before the cancellation stay. With several stars (a
//! fan-out's destinations), each is told at once and reports on its own line.

use std::path::{Path, PathBuf};

use orbit_wire::{ControlEvent, ControlRequest, ErrorCode, TransferId, TransferStatus, WireError};
use serde::Serialize;

use crate::connect::StreamError;
use crate::grid::Grid;
use crate::locate::{self, LocateError};
use crate::replicate::fanout::{self, FanoutError, LegError};

/// Cancel a transfer; nothing is published at its target (a tree keeps the files published
/// before).
///
/// ID is the transfer id that `replicate --detach` printed. Every star of the grid is asked
/// unless --star names the destination. Exits 0 once the destination has stopped and removed
/// its temporary files (also if the transfer was cancelled already); 1 if the transfer had
/// already ended otherwise, or no star knows it; 4 if a star that may hold it did not answer.
///
/// For a fan-out, name every destination: --star once per star, or --to-file with the file
/// given to `replicate --to-file`. Each is told at once and gets its own line (stdout when it
/// cancelled, stderr when not); exits 0 only if every one of them cancelled.
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

    /// Cancel on every star FILE lists: one STAR:/abs/path per line, as `replicate --to-file`
    /// reads it.
    #[arg(long, value_name = "FILE")]
    pub to_file: Option<PathBuf>,

    /// Print one JSON object instead of a line ({"type":"result","ok":true,"cancelled":true,..}
    /// or a failure {"type":"result","ok":false,"code":..,"retryable":..,"message":..}); with
    /// several stars, one {"type":"destination",..} per star, then {"type":"summary",
    /// "fanout":true,"ok":..,"cancelled":..,"failed":..,"transfer_id":..}.
    #[arg(long)]
    pub json: bool,
}

/// Why `orbitctl cancel` failed.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    /// No star could tell.
    #[error(transparent)]
    Locate(#[from] LocateError),
    /// The transfer had ended before the cancellation reached it.
    #[error("{star}: transfer {id} had already {how}; nothing to cancel")]
    Ended {
        /// The destination star.
        star: String,
        /// The transfer.
        id: TransferId,
        /// How it ended, in words.
        how: String,
        /// The code for `--json`.
        code: ErrorCode,
    },
    /// With several stars, some did not cancel; each has been reported.
    #[error("transfer {id} was not cancelled on {failed} of {total} stars")]
    Some {
        /// The transfer.
        id: TransferId,
        /// Stars that did not cancel it.
        failed: usize,
        /// Stars asked.
        total: usize,
    },
    /// The stars to ask could not be read from `--to-file`.
    #[error(transparent)]
    Usage(#[from] FanoutError),
}

impl CancelError {
    /// The wire code that fits.
    pub fn code(&self) -> ErrorCode {
        match self {
            CancelError::Locate(e) => e.code(),
            CancelError::Ended { code, .. } => *code,
            CancelError::Some { .. } => ErrorCode::FailedPrecondition,
            CancelError::Usage(e) => e.code(),
        }
    }

    /// The exit code (see [`crate::exit`]): 2 for an unusable `--to-file`; 4 when no star
    /// could tell because one was unreachable; 1 otherwise (the transfer had ended, no star
    /// knows it, or some of several stars did not cancel it).
    pub fn exit_code(&self) -> u8 {
        match self {
            CancelError::Usage(e) => e.exit_code(),
            CancelError::Locate(e) => crate::exit::of_code(e.code()),
            CancelError::Ended { .. } | CancelError::Some { .. } => crate::exit::FAILED,
        }
    }
}

#[derive(Serialize)]
struct CancelledJson<'a> {
    ok: bool,
    cancelled: bool,
    transfer_id: String,
    destination: &'a str,
    target_path: Option<&'a str>,
}

/// Runs `orbitctl cancel` on the grid at `grid_dir`.
///
/// # Errors
///
/// [`CancelError`]; with `--json` the failure object has been printed already.
pub async fn run(grid_dir: &Path, args: Args) -> Result<(), CancelError> {
    let stars = match fanout::stars_of(&args.star, args.to_file.as_deref()) {
        Ok(stars) => stars,
        Err(e) => {
            let e = CancelError::Usage(e.into());
            if args.json {
                println!("{}", crate::json::failure(e.code(), &e.to_string()));
            }
            return Err(e);
        }
    };
    if stars.len() > 1 {
        return cancel_many(grid_dir, &args, &stars).await;
    }
    let result = cancel(grid_dir, &args, stars.first().map(String::as_str)).await;
    show(&args, crate::json::RESULT, view(&result));
    result.map(drop)
}

/// Prints one star's answer: the line (or JSON object, of type `kind`) of a cancelled transfer
/// on stdout, or with `--json` the failure object. Without `--json` a failure is left to the
/// caller.
fn show(
    args: &Args,
    kind: &'static str,
    result: Result<(&str, Option<&TransferStatus>), &CancelError>,
) {
    match result {
        Ok((star, status)) => {
            let target = status.map(|s| s.target_path.as_str());
            if args.json {
                let json = CancelledJson {
                    ok: true,
                    cancelled: true,
                    transfer_id: args.id.to_string(),
                    destination: star,
                    target_path: target,
                };
                println!("{}", crate::json::line(kind, &json));
            } else {
                println!(
                    // True of a file (nothing published) and of a tree (the files published
                    // before the cancel stay, each whole).
                    "{star}: transfer {} cancelled; no partial file was left{}",
                    args.id,
                    target.map(|t| format!(" at {t}")).unwrap_or_default()
                );
            }
        }
        Err(e) if args.json => println!(
            "{}",
            crate::json::failure_as(kind, e.code(), &e.to_string())
        ),
        Err(_) => {}
    }
}

/// A star's answer, borrowed for [`show`].
fn view(
    result: &Result<(String, Option<TransferStatus>), CancelError>,
) -> Result<(&str, Option<&TransferStatus>), &CancelError> {
    result
        .as_ref()
        .map(|(star, status)| (star.as_str(), status.as_ref()))
}

#[derive(Serialize)]
struct ManyJson {
    fanout: bool,
    ok: bool,
    cancelled: usize,
    failed: usize,
    transfer_id: String,
}

/// Cancels the transfer on every star of `stars` at once; one line (or object) per star.
async fn cancel_many(grid_dir: &Path, args: &Args, stars: &[String]) -> Result<(), CancelError> {
    let asked = async {
        let grid = Grid::open(grid_dir)?;
        let request = ControlRequest::Cancel {
            transfer_id: args.id,
        };
        fanout::ask_all(&grid, stars, &request).await
    };
    let answers = match asked.await {
        Ok(answers) => answers,
        Err(e) => {
            let e = CancelError::Locate(e.into());
            show(args, crate::json::RESULT, Err(&e));
            return Err(e);
        }
    };
    let mut failed = 0;
    for answer in answers {
        let star = answer.star;
        let result = match answer.result {
            Ok(ControlEvent::Failed(e)) if e.code == ErrorCode::NotFound => {
                Err(CancelError::Locate(LocateError::NotFound {
                    id: args.id,
                    asked: vec![star],
                    unreachable: Vec::new(),
                }))
            }
            Ok(event) => judge(&star, args.id, event, answer.following),
            Err(LegError::Connect(e)) => Err(CancelError::Locate(e.into())),
            Err(LegError::Stream(error)) => {
                Err(CancelError::Locate(LocateError::Stream { star, error }))
            }
            Err(LegError::Lost) => Err(CancelError::Locate(LocateError::Stream {
                star,
                error: StreamError::NoResult,
            })),
        };
        show(args, crate::json::DESTINATION, view(&result));
        if let Err(e) = &result {
            failed += 1;
            if !args.json {
                eprintln!("{e}");
            }
        }
    }
    if args.json {
        let json = ManyJson {
            fanout: true,
            ok: failed == 0,
            cancelled: stars.len() - failed,
            failed,
            transfer_id: args.id.to_string(),
        };
        println!("{}", crate::json::line(crate::json::SUMMARY, &json));
    }
    match failed {
        0 => Ok(()),
        failed => Err(CancelError::Some {
            id: args.id,
            failed,
            total: stars.len(),
        }),
    }
}

async fn cancel(
    grid_dir: &Path,
    args: &Args,
    star: Option<&str>,
) -> Result<(String, Option<TransferStatus>), CancelError> {
    let grid = Grid::open(grid_dir).map_err(LocateError::from)?;
    let mut status = None;
    let request = ControlRequest::Cancel {
        transfer_id: args.id,
    };
    let located = locate::ask(&grid, star, request, |event| {
        if let ControlEvent::Following(s) = event {
            status = Some(s.clone());
        }
    })
    .await?;
    judge(&located.star, args.id, located.event, status)
}

/// What the final event `event` of `star` says about cancelling transfer `id`.
fn judge(
    star: &str,
    id: TransferId,
    event: ControlEvent,
    status: Option<TransferStatus>,
) -> Result<(String, Option<TransferStatus>), CancelError> {
    let ended = |how: String, code| CancelError::Ended {
        star: star.to_owned(),
        id,
        how,
        code,
    };
    match event {
        ControlEvent::Failed(WireError {
            code: ErrorCode::Cancelled,
            ..
        }) => Ok((star.to_owned(), status)),
        ControlEvent::Done { bytes, .. } => Err(ended(
            format!("completed ({bytes} bytes published)"),
            ErrorCode::FailedPrecondition,
        )),
        ControlEvent::TreeDone(s) => Err(ended(
            format!(
                "completed ({} copied, {} skipped, {} deleted, {} failed)",
                s.copied, s.skipped, s.deleted, s.failed
            ),
            ErrorCode::FailedPrecondition,
        )),
        ControlEvent::Failed(error) => Err(ended(
            format!("failed: {error}"),
            ErrorCode::FailedPrecondition,
        )),
        other => Err(ended(format!("answered {other:?}"), ErrorCode::Internal)),
    }
}
