//! Why a replication, or one attempt of it, failed: [`PullError`], typed by what happened, with
//! the one mapping to the wire code a controller sees ([`PullError::code`]) and the one rule for
//! whether another attempt may help ([`PullError::is_transient`]).
//!
//! It never decides anything on a wire code of its own making: a code is read only where a peer
//! sent it (a source's refusal, a close or reset code), because then it is the peer's word.

use std::fmt;

use orbit_wire::{ErrorCode, WireError};

pub(crate) use crate::pool::DialError;

/// Why a replication failed. Every variant names who failed and why, in words for a person;
/// [`PullError::code`] is the code the controller gets with it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum PullError {
    /// The command's source path is not a valid wire path.
    #[error("source path: {0}")]
    BadSourcePath(String),
    /// The target cannot be written: outside the roots, under a read-only root, its parent not a
    /// directory, or its temporary file could not be made. The local cause, as the jail or the
    /// file system gave it.
    #[error("target {path}: {cause}")]
    Target {
        /// The target path as the command gave it.
        path: String,
        /// The local cause.
        cause: Local,
    },
    /// The destination's disk failed while writing, verifying or publishing.
    #[error("{0}")]
    Disk(Local),
    /// The bytes received do not hash to what the source or the command said.
    #[error("checksum mismatch: {0}")]
    Mismatch(String),
    /// The source star could not be dialled, or is not who it should be.
    #[error(transparent)]
    Dial(#[from] DialError),
    /// The connection to the source was lost or closed, or a stream on it reset, before an
    /// answer; `code` is the one the source closed with, or `Unavailable`.
    #[error("{source_star}: {what}: {message}")]
    Lost {
        /// The source's name.
        source_star: String,
        /// What was being done.
        what: &'static str,
        /// The peer's code, or `Unavailable` when the network failed.
        code: ErrorCode,
        /// What quinn or the peer said.
        message: String,
    },
    /// The source did not answer the read request in time.
    #[error("{0} did not answer in time")]
    NoAnswer(String),
    /// The source refused the read with this error (bad token, not found, busy, ...).
    #[error("{source_star} refused the read: {error}")]
    Refused {
        /// The source's name.
        source_star: String,
        /// What the source said.
        error: WireError,
    },
    /// The source failed part way, and said so.
    #[error("{source_star} failed while sending: {error}")]
    SourceFailed {
        /// The source's name.
        source_star: String,
        /// What the source said.
        error: WireError,
    },
    /// The data stream broke part way (reset, or the connection lost).
    #[error("{source_star} stopped sending after {offset} of {total} bytes: {message}")]
    Broken {
        /// The source's name.
        source_star: String,
        /// Bytes received so far.
        offset: u64,
        /// The file's size.
        total: u64,
        /// The peer's reset or close code, or `Unavailable`.
        code: ErrorCode,
        /// What happened.
        message: String,
    },
    /// The data stream stayed silent for too long.
    #[error("{source_star} sent nothing for {seconds} s after {offset} of {total} bytes")]
    Stalled {
        /// The source's name.
        source_star: String,
        /// Bytes received so far.
        offset: u64,
        /// The file's size.
        total: u64,
        /// How long it was silent.
        seconds: f64,
    },
    /// The source broke the protocol: a frame out of place, a chunk out of order or too long.
    #[error("{source_star} broke the protocol: {what}")]
    Protocol {
        /// The source's name.
        source_star: String,
        /// What it did.
        what: String,
    },
    /// A fan-out upstream other than the origin failed; the next upstream is asked.
    #[error("relay {star}: {cause}")]
    Upstream {
        /// The upstream star.
        star: String,
        /// What went wrong with it.
        cause: Box<PullError>,
    },
    /// A fan-out upstream passed along an attestation that does not vouch for this file.
    #[error("{star} passed along an attestation that does not hold: {why}")]
    BadAttestation {
        /// The upstream star.
        star: String,
        /// What does not hold.
        why: String,
    },
    /// The sources of a file from several sources do not hold the same file.
    #[error("the sources disagree: {0}")]
    Disagree(String),
    /// A controller cancelled the replication.
    #[error("the replication was cancelled")]
    Cancelled,
    /// The star is shutting down; with `resumes`, the transfer is journaled and resumes when it
    /// starts again.
    #[error("star {star} is shutting down{}", if *.resumes { "; the transfer resumes when the star starts again" } else { "" })]
    ShuttingDown {
        /// This star's name.
        star: String,
        /// Whether the transfer was kept to resume.
        resumes: bool,
    },
    /// Retries went on for the command's whole timeout without progress.
    #[error(
        "gave up after {attempts} attempts in {seconds:.1} s, {window} s without progress: {last}"
    )]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// Since the replication began.
        seconds: f64,
        /// The timeout without progress, in seconds.
        window: u64,
        /// The last attempt's failure.
        last: Box<PullError>,
    },
    /// A bug or a lost task.
    #[error("{0}")]
    Internal(String),
}

/// A failure on this star's own disk or jail, as the code and words a peer would be given; it
/// keeps the code of the local cause (no space is `ResourceExhausted`, a refused path
/// `PermissionDenied`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Local(pub(crate) WireError);

impl fmt::Display for Local {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.message)
    }
}

impl PullError {
    /// The wire code the controller gets.
    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            PullError::BadSourcePath(_) => ErrorCode::InvalidArgument,
            PullError::Target { cause, .. } | PullError::Disk(cause) => cause.0.code,
            PullError::Mismatch(_)
            | PullError::Protocol { .. }
            | PullError::BadAttestation { .. } => ErrorCode::DataLoss,
            PullError::Upstream { .. } => ErrorCode::Unavailable,
            PullError::Disagree(_) => ErrorCode::FailedPrecondition,
            PullError::Dial(DialError::Unreachable { .. }) | PullError::Stalled { .. } => {
                ErrorCode::Unavailable
            }
            PullError::Dial(DialError::NotThatStar { .. }) => ErrorCode::PermissionDenied,
            PullError::Lost { code, .. } | PullError::Broken { code, .. } => *code,
            PullError::NoAnswer(_) | PullError::GaveUp { .. } => ErrorCode::DeadlineExceeded,
            PullError::Refused { error, .. } | PullError::SourceFailed { error, .. } => error.code,
            PullError::Cancelled => ErrorCode::Cancelled,
            PullError::ShuttingDown { .. } => ErrorCode::Unavailable,
            PullError::Internal(_) => ErrorCode::Internal,
        }
    }

    /// Whether another attempt may succeed: the network or the source failed in a way that goes
    /// away on its own. Local failures, protocol violations, refusals and verification failures
    /// never do. Where the source gave a code (a refusal, a close), its word decides: it says
    /// `Unavailable` when it is shutting down and `DeadlineExceeded` when it gave up waiting.
    pub(crate) fn is_transient(&self) -> bool {
        let peer_says_transient =
            |code: ErrorCode| matches!(code, ErrorCode::Unavailable | ErrorCode::DeadlineExceeded);
        match self {
            PullError::Dial(DialError::Unreachable { .. })
            | PullError::NoAnswer(_)
            | PullError::Stalled { .. }
            | PullError::Upstream { .. } => true,
            PullError::Lost { code, .. } | PullError::Broken { code, .. } => {
                peer_says_transient(*code)
            }
            PullError::Refused { error, .. } | PullError::SourceFailed { error, .. } => {
                peer_says_transient(error.code)
            }
            PullError::BadSourcePath(_)
            | PullError::Target { .. }
            | PullError::Disk(_)
            | PullError::Mismatch(_)
            | PullError::Dial(DialError::NotThatStar { .. })
            | PullError::Protocol { .. }
            | PullError::BadAttestation { .. }
            | PullError::Disagree(_)
            | PullError::Cancelled
            | PullError::ShuttingDown { .. }
            | PullError::GaveUp { .. }
            | PullError::Internal(_) => false,
        }
    }

    /// The error as the controller gets it.
    pub(crate) fn to_wire(&self) -> WireError {
        WireError::new(self.code(), self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(code: ErrorCode) -> PullError {
        PullError::Refused {
            source_star: "star-a".into(),
            error: WireError::new(code, "why"),
        }
    }

    #[test]
    fn the_network_is_retried_and_refusals_are_not() {
        let unreachable = PullError::Dial(DialError::Unreachable {
            name: "star-a".into(),
            addr: "h:1".into(),
            why: "timed out".into(),
        });
        assert!(unreachable.is_transient());
        assert_eq!(unreachable.code(), ErrorCode::Unavailable);
        assert!(PullError::NoAnswer("star-a".into()).is_transient());
        assert!(refused(ErrorCode::Unavailable).is_transient());
        assert!(!refused(ErrorCode::PermissionDenied).is_transient());
        assert!(!refused(ErrorCode::NotFound).is_transient());
        assert!(!refused(ErrorCode::ResourceExhausted).is_transient());
        let disk_full = PullError::Disk(Local(WireError::new(
            ErrorCode::ResourceExhausted,
            "No space left on device",
        )));
        assert!(!disk_full.is_transient());
        assert_eq!(disk_full.code(), ErrorCode::ResourceExhausted);
        assert!(!PullError::Mismatch("x".into()).is_transient());
    }

    #[test]
    fn messages_name_who_failed() {
        assert_eq!(
            refused(ErrorCode::PermissionDenied).to_wire().message,
            format!(
                "star-a refused the read: {}",
                WireError::new(ErrorCode::PermissionDenied, "why")
            )
        );
        let stopping = PullError::ShuttingDown {
            star: "star-b".into(),
            resumes: true,
        };
        assert_eq!(
            stopping.to_string(),
            "star star-b is shutting down; the transfer resumes when the star starts again"
        );
        assert_eq!(stopping.code(), ErrorCode::Unavailable);
    }
}
