//! Why `orbitctl replicate` failed, in every form (a file, a tree, a fan-out, a batch), with
//! the wire code `--json` prints and the exit code each failure gives. Every message names the
//! star concerned; nothing here prints or contacts anything.

use orbit_wire::{ErrorCode, WireError};

use super::{batch, fanout, tree_fanout};
use crate::connect::{ConnectError, StreamError};
use crate::exit;
use crate::grid::GridError;
use crate::spec::SpecError;

/// Why a replication failed. Every message names the star concerned.
#[derive(Debug, thiserror::Error)]
pub enum ReplicateError {
    /// The grid could not be read or does not list a star.
    #[error(transparent)]
    Grid(#[from] GridError),
    /// The destination star could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The destination star reported a failure; nothing was published. The star's message says
    /// what failed in full (it names the source when the source refused), so the code's words are
    /// printed only when there is no message.
    #[error("{star}: replication failed: {}", if error.message.is_empty() { error.code.describe() } else { &error.message })]
    Failed {
        /// The destination star.
        star: String,
        /// Its report; names the source star when the source refused.
        error: WireError,
    },
    /// The control stream or connection to the destination failed.
    #[error("{star}: replication failed: {error}")]
    Stream {
        /// The destination star.
        star: String,
        /// What happened.
        error: StreamError,
    },
    /// The destination answered with something that is not a replication result.
    #[error("{star}: unexpected answer to a replication command: {what}")]
    Unexpected {
        /// The destination star.
        star: String,
        /// The answer.
        what: String,
    },
    /// The replication was cancelled with Ctrl-C; nothing was published.
    #[error("{star}: replication cancelled (interrupted); nothing was published at {target}")]
    Interrupted {
        /// The destination star.
        star: String,
        /// The target path.
        target: String,
    },
    /// A tree replication was cancelled with Ctrl-C; the files published before stay.
    #[error(
        "{star}: tree replication cancelled (interrupted); files already published under \
         {target} stay, no partial file is left"
    )]
    TreeInterrupted {
        /// The destination star.
        star: String,
        /// The target directory.
        target: String,
    },
    /// A tree was walked to the end, but some files failed or `--delete` did not run. The
    /// summary and the failures have been printed.
    #[error("{star}: {}", incomplete(*failed, delete_skipped))]
    Incomplete {
        /// The destination star.
        star: String,
        /// How many files failed.
        failed: u64,
        /// Why `--delete` did not run, if it did not.
        delete_skipped: Option<WireError>,
    },
    /// A command-line value was refused before anything was contacted.
    #[error(transparent)]
    Usage(#[from] SpecError),
    /// A fan-out could not be planned, or failed as a whole.
    #[error(transparent)]
    Fanout(#[from] fanout::FanoutError),
    /// A batch (`--from-file`) could not start, or some of its replications failed.
    #[error(transparent)]
    Batch(#[from] batch::BatchError),
    /// A tree fan-out could not start, or fewer trees than needed were replicated.
    #[error(transparent)]
    TreeFanout(#[from] tree_fanout::TreeFanoutError),
    /// The destination reported another digest than the one expected.
    #[error(
        "{star}: reported sha256 {} but {} was expected",
        hex::encode(got),
        hex::encode(want)
    )]
    DigestMismatch {
        /// The destination star.
        star: String,
        /// Its digest.
        got: [u8; 32],
        /// The expected one.
        want: [u8; 32],
    },
}

/// `tree replicated, but 3 files failed and --delete did not run`.
fn incomplete(failed: u64, delete_skipped: &Option<WireError>) -> String {
    let files = if failed == 1 {
        "1 file".to_owned()
    } else {
        format!("{failed} files")
    };
    match (failed, delete_skipped) {
        (0, _) => "tree replicated, but --delete did not run".to_owned(),
        (_, None) => format!("tree replicated, but {files} failed"),
        (_, Some(_)) => format!("tree replicated, but {files} failed and --delete did not run"),
    }
}

impl ReplicateError {
    /// The wire code for `--json` output.
    pub fn code(&self) -> ErrorCode {
        match self {
            ReplicateError::Grid(e) => e.code(),
            ReplicateError::Connect(e) => e.code(),
            ReplicateError::Failed { error, .. } => error.code,
            ReplicateError::Stream { error, .. } => error.code(),
            ReplicateError::Unexpected { .. } => ErrorCode::Internal,
            ReplicateError::DigestMismatch { .. } => ErrorCode::DataLoss,
            ReplicateError::Interrupted { .. } | ReplicateError::TreeInterrupted { .. } => {
                ErrorCode::Cancelled
            }
            ReplicateError::Incomplete { delete_skipped, .. } => delete_skipped
                .as_ref()
                .map_or(ErrorCode::FailedPrecondition, |e| e.code),
            ReplicateError::Usage(_) => ErrorCode::InvalidArgument,
            ReplicateError::Fanout(e) => e.code(),
            ReplicateError::Batch(e) => e.code(),
            ReplicateError::TreeFanout(e) => e.code(),
        }
    }

    /// Whether what it reports has been printed already (a fan-out's lines and summary), so that
    /// `--json` must not print a failure object on top.
    pub(super) fn reported(&self) -> bool {
        match self {
            ReplicateError::Fanout(e) => e.reported(),
            ReplicateError::TreeFanout(e) => e.reported(),
            _ => false,
        }
    }

    /// The process exit code that reports this failure (see [`crate::exit`]):
    /// [`exit::INCOMPLETE`], [`exit::INTERRUPTED`], [`exit::USAGE`], or by the class of its
    /// wire code [`exit::TEMPORARY`] or [`exit::FAILED`].
    pub fn exit_code(&self) -> u8 {
        match self {
            ReplicateError::Incomplete { .. } => exit::INCOMPLETE,
            ReplicateError::Interrupted { .. } | ReplicateError::TreeInterrupted { .. } => {
                exit::INTERRUPTED
            }
            ReplicateError::Usage(_) => exit::USAGE,
            ReplicateError::Fanout(e) => e.exit_code(),
            ReplicateError::Batch(e) => e.exit_code(),
            ReplicateError::TreeFanout(e) => e.exit_code(),
            ReplicateError::Grid(_)
            | ReplicateError::Connect(_)
            | ReplicateError::Failed { .. }
            | ReplicateError::Stream { .. }
            | ReplicateError::Unexpected { .. }
            | ReplicateError::DigestMismatch { .. } => exit::of_code(self.code()),
        }
    }
}
