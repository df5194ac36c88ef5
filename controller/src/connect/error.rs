//! The errors of a control connection, and their translation from quinn's into words that name
//! the star and say why, each with the wire [`ErrorCode`] that fits.
//!
//! Nothing here does I/O; it only reads quinn's errors.

use std::net::SocketAddr;
use std::time::Duration;

use orbit_wire::{ErrorCode, FrameError};
use quinn::{ConnectionError, TransportErrorCode, VarInt};

use super::MAX_IDLE_TIMEOUT;

/// Why a connection to a star could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The star's host name does not resolve.
    #[error("{star}: cannot resolve {addr}: {reason}")]
    Resolve {
        /// The star's name.
        star: String,
        /// Its address as the inventory gives it.
        addr: String,
        /// Why.
        reason: String,
    },
    /// Nothing answered at the address in time, or the path failed.
    #[error("{star} unreachable at {addr}: {reason}: is orbit-star running there?")]
    Unreachable {
        /// The star's name.
        star: String,
        /// The address dialled.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// Something answered, but the TLS handshake failed: another grid's certificate, another
    /// star's name, or the star refused the controller's certificate.
    #[error("{star} at {addr}: tls handshake failed: {reason}")]
    Handshake {
        /// The star's name.
        star: String,
        /// The address dialled.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The star closed the connection with an error code.
    #[error("{star} at {addr} closed the connection: {reason}")]
    Closed {
        /// The star's name.
        star: String,
        /// The address dialled.
        addr: SocketAddr,
        /// The star's code.
        code: ErrorCode,
        /// Its reason, in words.
        reason: String,
    },
    /// The controller's own TLS configuration or socket is unusable.
    #[error("cannot dial {star}: {reason}")]
    Local {
        /// The star's name.
        star: String,
        /// Why.
        reason: String,
    },
}

impl ConnectError {
    /// The wire code that fits this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            ConnectError::Resolve { .. } | ConnectError::Unreachable { .. } => {
                ErrorCode::Unavailable
            }
            ConnectError::Handshake { .. } => ErrorCode::PermissionDenied,
            ConnectError::Closed { code, .. } => *code,
            ConnectError::Local { .. } => ErrorCode::Internal,
        }
    }
}

/// Why a control exchange on an established connection failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The connection went away.
    #[error("connection lost: {reason}")]
    ConnectionLost {
        /// The code that fits.
        code: ErrorCode,
        /// Why, in words.
        reason: String,
    },
    /// The star reset the control stream.
    #[error("the star reset the control stream ({})", reset_reason(*.0))]
    Reset(u64),
    /// The star stopped reading the control stream before the request was sent.
    #[error("the star stopped reading the control stream ({})", reset_reason(*.0))]
    Stopped(u64),
    /// The stream ended in the middle of a frame.
    #[error("the control stream ended in the middle of a frame")]
    Truncated,
    /// The stream ended without a final event.
    #[error("the star ended the control stream without a result")]
    NoResult,
    /// A frame could not be decoded (or, in theory, encoded).
    #[error("bad frame on the control stream: {0}")]
    Frame(FrameError),
}

impl StreamError {
    /// The wire code that fits this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            StreamError::ConnectionLost { code, .. } => *code,
            StreamError::Reset(n) | StreamError::Stopped(n) => u32::try_from(*n)
                .ok()
                .and_then(ErrorCode::from_u32)
                .unwrap_or(ErrorCode::Internal),
            StreamError::Truncated | StreamError::NoResult => ErrorCode::Unavailable,
            StreamError::Frame(_) => ErrorCode::Internal,
        }
    }
}

fn reset_reason(n: u64) -> String {
    match u32::try_from(n).ok().and_then(ErrorCode::from_u32) {
        Some(code) => code.describe().to_owned(),
        None => format!("code {n}"),
    }
}

/// A connection error met after the handshake, in words.
pub(super) fn lost(e: &ConnectionError) -> StreamError {
    let (code, reason) = match e {
        ConnectionError::TimedOut => (
            ErrorCode::Unavailable,
            format!("no answer for {}", seconds(MAX_IDLE_TIMEOUT)),
        ),
        ConnectionError::ApplicationClosed(close) => {
            let code = app_code(close.error_code);
            let text = String::from_utf8_lossy(&close.reason).into_owned();
            let reason = if text.is_empty() {
                format!("the star closed the connection ({})", code.describe())
            } else {
                format!("the star closed the connection: {text}")
            };
            (code, reason)
        }
        ConnectionError::Reset => (
            ErrorCode::Unavailable,
            "the connection was reset (did the star restart?)".to_owned(),
        ),
        ConnectionError::LocallyClosed => (ErrorCode::Cancelled, "closed here".to_owned()),
        // TLS 1.3 lets the client finish before the star has judged its certificate, so a
        // refusal of the controller's certificate can arrive after the handshake.
        ConnectionError::ConnectionClosed(close) if tls_alert(close.error_code).is_some() => (
            ErrorCode::PermissionDenied,
            refused_reason(tls_alert(close.error_code).unwrap_or_default()),
        ),
        other => (ErrorCode::Internal, other.to_string()),
    };
    StreamError::ConnectionLost { code, reason }
}

/// The wire code for an application close code; 0 (a plain close) counts as unavailable.
fn app_code(code: VarInt) -> ErrorCode {
    u32::try_from(code.into_inner())
        .ok()
        .and_then(ErrorCode::from_u32)
        .unwrap_or(ErrorCode::Unavailable)
}

/// A connection error met during the handshake, as a [`ConnectError`].
pub(super) fn connect_failure(star: &str, addr: SocketAddr, e: &ConnectionError) -> ConnectError {
    let star = star.to_owned();
    match e {
        ConnectionError::TransportError(t) => match tls_alert(t.code) {
            // We refused the star: its certificate is not from our CA, or not for its name.
            Some(alert) => ConnectError::Handshake {
                star,
                addr,
                reason: if t.reason.is_empty() {
                    alert_name(alert)
                } else {
                    t.reason.clone()
                },
            },
            None => ConnectError::Unreachable {
                star,
                addr,
                reason: t.to_string(),
            },
        },
        ConnectionError::ConnectionClosed(close) => match tls_alert(close.error_code) {
            Some(alert) => ConnectError::Handshake {
                star,
                addr,
                reason: refused_reason(alert),
            },
            None => ConnectError::Unreachable {
                star,
                addr,
                reason: close.to_string(),
            },
        },
        ConnectionError::ApplicationClosed(close) => ConnectError::Closed {
            star,
            addr,
            code: app_code(close.error_code),
            reason: String::from_utf8_lossy(&close.reason).into_owned(),
        },
        ConnectionError::VersionMismatch => ConnectError::Handshake {
            star,
            addr,
            reason: "no QUIC version in common".into(),
        },
        ConnectionError::TimedOut => ConnectError::Unreachable {
            star,
            addr,
            reason: "no answer (the handshake timed out)".into(),
        },
        other => ConnectError::Unreachable {
            star,
            addr,
            reason: other.to_string(),
        },
    }
}

fn refused_reason(alert: u8) -> String {
    format!(
        "the star refused the controller's certificate ({}): is it a star of this grid?",
        alert_name(alert)
    )
}

/// The TLS alert carried by a QUIC crypto error code, if it is one.
fn tls_alert(code: TransportErrorCode) -> Option<u8> {
    let n = u64::from(code);
    (0x100..0x200).contains(&n).then_some((n & 0xff) as u8)
}

fn alert_name(alert: u8) -> String {
    let name = match alert {
        40 => "handshake failure",
        42 => "bad certificate",
        43 => "unsupported certificate",
        44 => "certificate revoked",
        45 => "certificate expired",
        46 => "certificate unknown",
        48 => "unknown certificate authority",
        70 => "protocol version",
        80 => "internal error",
        116 => "certificate required",
        120 => "no common application protocol",
        other => return format!("tls alert {other}"),
    };
    name.to_owned()
}

/// `10 s`, `1.5 s`.
pub(super) fn seconds(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crypto_codes_are_recognised() {
        assert_eq!(tls_alert(TransportErrorCode::crypto(48)), Some(48));
        assert_eq!(tls_alert(TransportErrorCode::PROTOCOL_VIOLATION), None);
        assert_eq!(alert_name(48), "unknown certificate authority");
        assert_eq!(alert_name(99), "tls alert 99");
    }
}
