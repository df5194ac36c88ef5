//! `orbitctl cancel ID`: stops a transfer, of a file or a tree. The destination stops pulling,
//! removes its temporary files and records the transfer as cancelled; this command returns once
//! it has. Files of a tree published before the cancellation stay.

use std::path::Path;

use orbit_wire::{ControlEvent, ControlRequest, ErrorCode, TransferId, TransferStatus, WireError};
use serde::Serialize;

use crate::grid::Grid;
use crate::locate::{self, LocateError};

/// Cancel a transfer; nothing is published at its target (a tree keeps the files published
/// before).
///
/// ID is the transfer id that `replicate --detach` printed. Every star of the grid is asked
/// unless --star names the destination. Exits 0 once the destination has stopped and removed
/// its temporary files (also if the transfer was cancelled already); 1 if the transfer had
/// already ended otherwise, or no star knows it.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The transfer id (16 hexadecimal digits).
    // Parsed by `TransferId::from_str`: up to 16 hexadecimal digits, as a person may type them.
    #[arg(value_name = "ID")]
    pub id: TransferId,

    /// The destination star that runs the transfer. Default: ask every star.
    #[arg(long, value_name = "NAME")]
    pub star: Option<String>,

    /// Print one JSON object instead of a line.
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
}

impl CancelError {
    /// The wire code that fits.
    pub fn code(&self) -> ErrorCode {
        match self {
            CancelError::Locate(e) => e.code(),
            CancelError::Ended { code, .. } => *code,
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
    let result = cancel(grid_dir, &args).await;
    match &result {
        Ok((star, status)) => {
            let target = status.as_ref().map(|s| s.target_path.as_str());
            if args.json {
                let json = CancelledJson {
                    ok: true,
                    cancelled: true,
                    transfer_id: args.id.to_string(),
                    destination: star,
                    target_path: target,
                };
                println!("{}", serde_json::to_string(&json).unwrap_or_default());
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
            crate::replicate::failure_json(e.code(), &e.to_string())
        ),
        Err(_) => {}
    }
    result.map(drop)
}

async fn cancel(
    grid_dir: &Path,
    args: &Args,
) -> Result<(String, Option<TransferStatus>), CancelError> {
    let grid = Grid::open(grid_dir).map_err(LocateError::from)?;
    let mut status = None;
    let request = ControlRequest::Cancel {
        transfer_id: args.id,
    };
    let located = locate::ask(&grid, args.star.as_deref(), request, |event| {
        if let ControlEvent::Following(s) = event {
            status = Some(s.clone());
        }
    })
    .await?;
    let ended = |how: String, code| CancelError::Ended {
        star: located.star.clone(),
        id: args.id,
        how,
        code,
    };
    match located.event {
        ControlEvent::Failed(WireError {
            code: ErrorCode::Cancelled,
            ..
        }) => Ok((located.star.clone(), status)),
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
