//! The one namespace of error codes, and the error frame that carries a code and a message.
//! Codes are appended, never renumbered: their numbers are QUIC stream reset codes too.

use serde::{Deserialize, Serialize};

use crate::MAX_MESSAGE_LEN;

/// Why an operation failed, as every participant names it. Each code has a fixed number, used as
/// the QUIC stream reset code when a stream is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The token or the peer's identity does not allow this.
    PermissionDenied,
    /// The peer did not identify itself (no or unusable certificate).
    Unauthenticated,
    /// The file does not exist.
    NotFound,
    /// The request is malformed: a bad path, not a regular file, a bad digest.
    InvalidArgument,
    /// Something is already there or already happening.
    AlreadyExists,
    /// The world is not in the state the request needs (the source changed, say).
    FailedPrecondition,
    /// Out of space, memory or slots.
    ResourceExhausted,
    /// The peer is unreachable or shutting down; trying again later may work.
    Unavailable,
    /// A deadline passed.
    DeadlineExceeded,
    /// Bytes were lost or corrupted: a size or checksum mismatch.
    DataLoss,
    /// Somebody cancelled the operation.
    Cancelled,
    /// A bug or an unexpected failure.
    Internal,
}

impl ErrorCode {
    /// Every code, in wire order.
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::PermissionDenied,
        ErrorCode::Unauthenticated,
        ErrorCode::NotFound,
        ErrorCode::InvalidArgument,
        ErrorCode::AlreadyExists,
        ErrorCode::FailedPrecondition,
        ErrorCode::ResourceExhausted,
        ErrorCode::Unavailable,
        ErrorCode::DeadlineExceeded,
        ErrorCode::DataLoss,
        ErrorCode::Cancelled,
        ErrorCode::Internal,
    ];

    /// The code's number as a QUIC stream reset or application close code: 1 for
    /// `PermissionDenied` up to 12 for `Internal`. 0 is never used, so a plain close is not an error.
    pub fn as_u32(self) -> u32 {
        // The position in ALL is the wire order; the unwrap cannot fail for a member of ALL.
        Self::ALL
            .iter()
            .position(|c| *c == self)
            .map_or(12, |i| i as u32 + 1)
    }

    /// The code for a reset or close number, if it is one of ours.
    pub fn from_u32(n: u32) -> Option<ErrorCode> {
        let index = usize::try_from(n).ok()?.checked_sub(1)?;
        Self::ALL.get(index).copied()
    }

    /// The code's name as printed to users and in JSON, e.g. `"PermissionDenied"`.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::PermissionDenied => "PermissionDenied",
            ErrorCode::Unauthenticated => "Unauthenticated",
            ErrorCode::NotFound => "NotFound",
            ErrorCode::InvalidArgument => "InvalidArgument",
            ErrorCode::AlreadyExists => "AlreadyExists",
            ErrorCode::FailedPrecondition => "FailedPrecondition",
            ErrorCode::ResourceExhausted => "ResourceExhausted",
            ErrorCode::Unavailable => "Unavailable",
            ErrorCode::DeadlineExceeded => "DeadlineExceeded",
            ErrorCode::DataLoss => "DataLoss",
            ErrorCode::Cancelled => "Cancelled",
            ErrorCode::Internal => "Internal",
        }
    }

    /// The code in plain words for a one-line error, e.g. `"permission denied"`.
    pub fn describe(self) -> &'static str {
        match self {
            ErrorCode::PermissionDenied => "permission denied",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::NotFound => "not found",
            ErrorCode::InvalidArgument => "invalid argument",
            ErrorCode::AlreadyExists => "already exists",
            ErrorCode::FailedPrecondition => "failed precondition",
            ErrorCode::ResourceExhausted => "resource exhausted",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::DeadlineExceeded => "deadline exceeded",
            ErrorCode::DataLoss => "data loss",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::Internal => "internal error",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

/// A failure as it crosses the wire: a code and a message for a person. Displays as
/// `permission denied (token expired)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    /// What kind of failure.
    pub code: ErrorCode,
    /// The precise reason, at most [`MAX_MESSAGE_LEN`] bytes.
    pub message: String,
}

impl WireError {
    /// Makes an error frame, cutting the message at [`MAX_MESSAGE_LEN`] bytes on a character
    /// boundary so that it always fits a frame.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> WireError {
        let mut message = message.into();
        if message.len() > MAX_MESSAGE_LEN {
            let mut end = MAX_MESSAGE_LEN;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        WireError { code, message }
    }
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.message.is_empty() {
            write!(f, "{}", self.code)
        } else {
            write!(f, "{} ({})", self.code, self.message)
        }
    }
}

impl std::error::Error for WireError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_numbers() {
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(code.as_u32(), i as u32 + 1);
            assert_eq!(ErrorCode::from_u32(code.as_u32()), Some(*code));
        }
        assert_eq!(ErrorCode::from_u32(0), None);
        assert_eq!(ErrorCode::from_u32(13), None);
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let e = WireError::new(ErrorCode::Internal, "é".repeat(MAX_MESSAGE_LEN));
        assert!(e.message.len() <= MAX_MESSAGE_LEN);
        assert!(e.message.chars().all(|c| c == 'é'));
    }

    #[test]
    fn display_names_code_and_reason() {
        let e = WireError::new(ErrorCode::PermissionDenied, "token expired");
        assert_eq!(e.to_string(), "permission denied (token expired)");
    }
}
