//! The wire codes of the local errors every part of the star meets: the jail's, I/O, tokens and
//! framing. The errors of one operation (`PullError`, `ServeError`, `StartError`, ...) map
//! themselves, each in one function beside its type, and defer to these for what they wrap.

use std::io;

use orbit_wire::token::TokenError;
use orbit_wire::{ErrorCode, WireError};

use crate::framed::FramedError;
use crate::jail::JailError;

/// Maps an internal error to the code and message a peer sees.
pub(crate) trait ToWire {
    /// The wire form of this error.
    fn to_wire(&self) -> WireError;
}

impl ToWire for JailError {
    fn to_wire(&self) -> WireError {
        let code = match self {
            JailError::BadPath(_)
            | JailError::NotRegular(_)
            | JailError::ParentNotDirectory
            | JailError::IsRoot => ErrorCode::InvalidArgument,
            JailError::OutsideRoots
            | JailError::Escapes
            | JailError::ReadOnly
            | JailError::Protected
            | JailError::HardLinked(_) => ErrorCode::PermissionDenied,
            JailError::NotFound => ErrorCode::NotFound,
            JailError::RootChanged { .. } => ErrorCode::FailedPrecondition,
            JailError::Io(e) => return e.to_wire(),
        };
        WireError::new(code, self.to_string())
    }
}

impl ToWire for io::Error {
    fn to_wire(&self) -> WireError {
        let code = match self.kind() {
            io::ErrorKind::NotFound => ErrorCode::NotFound,
            io::ErrorKind::PermissionDenied => ErrorCode::PermissionDenied,
            io::ErrorKind::AlreadyExists => ErrorCode::AlreadyExists,
            io::ErrorKind::StorageFull
            | io::ErrorKind::QuotaExceeded
            | io::ErrorKind::OutOfMemory => ErrorCode::ResourceExhausted,
            io::ErrorKind::InvalidInput => ErrorCode::InvalidArgument,
            _ => ErrorCode::Internal,
        };
        WireError::new(code, self.to_string())
    }
}

impl ToWire for TokenError {
    fn to_wire(&self) -> WireError {
        WireError::new(ErrorCode::PermissionDenied, self.to_string())
    }
}

impl ToWire for FramedError {
    fn to_wire(&self) -> WireError {
        match self {
            FramedError::Ended | FramedError::Truncated | FramedError::Frame(_) => WireError::new(
                ErrorCode::InvalidArgument,
                format!("protocol violation: {self}"),
            ),
            FramedError::Read(quinn::ReadError::Reset(code)) => WireError::new(
                from_varint(*code, ErrorCode::Internal),
                "the stream was reset",
            ),
            FramedError::Read(quinn::ReadError::ConnectionLost(e))
            | FramedError::Write(quinn::WriteError::ConnectionLost(e)) => connection_lost(e),
            FramedError::Write(quinn::WriteError::Stopped(code)) => WireError::new(
                from_varint(*code, ErrorCode::Cancelled),
                "the peer stopped reading",
            ),
            FramedError::Stalled(_) => {
                WireError::new(ErrorCode::DeadlineExceeded, self.to_string())
            }
            _ => WireError::new(ErrorCode::Unavailable, self.to_string()),
        }
    }
}

/// A lost connection: the peer's close code when it closed on purpose, `Unavailable` otherwise.
pub(crate) fn connection_lost(e: &quinn::ConnectionError) -> WireError {
    match e {
        quinn::ConnectionError::ApplicationClosed(close) => {
            let code = from_varint(close.error_code, ErrorCode::Unavailable);
            let reason = String::from_utf8_lossy(&close.reason);
            WireError::new(code, format!("connection closed: {reason}"))
        }
        quinn::ConnectionError::TimedOut => {
            WireError::new(ErrorCode::Unavailable, "connection timed out")
        }
        other => WireError::new(ErrorCode::Unavailable, format!("connection lost: {other}")),
    }
}

/// The code a peer reset, stopped or closed with, or `otherwise` when it is not one of ours.
fn from_varint(code: quinn::VarInt, otherwise: ErrorCode) -> ErrorCode {
    u32::try_from(code.into_inner())
        .ok()
        .and_then(ErrorCode::from_u32)
        .unwrap_or(otherwise)
}

/// A stream reset or close code for `code`.
pub(crate) fn varint(code: ErrorCode) -> quinn::VarInt {
    quinn::VarInt::from_u32(code.as_u32())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_map_to_their_codes() {
        assert_eq!(
            JailError::OutsideRoots.to_wire().code,
            ErrorCode::PermissionDenied
        );
        assert_eq!(
            JailError::Escapes.to_wire().code,
            ErrorCode::PermissionDenied
        );
        assert_eq!(JailError::NotFound.to_wire().code, ErrorCode::NotFound);
        assert_eq!(
            JailError::NotRegular("a FIFO").to_wire().code,
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            TokenError::Expired(3).to_wire().code,
            ErrorCode::PermissionDenied
        );
        let full = io::Error::from(io::ErrorKind::StorageFull);
        assert_eq!(full.to_wire().code, ErrorCode::ResourceExhausted);
    }
}
