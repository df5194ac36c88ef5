//! Frames on quinn streams: a length prefix checked against [`MAX_CONTROL_FRAME`] before the
//! body is allocated, then a postcard body, as `orbit-wire` defines them.

use orbit_wire::{decode_body, decode_len, encode_frame, ErrorCode, LEN_PREFIX, MAX_CONTROL_FRAME};
use quinn::{ReadError, ReadExactError, RecvStream, SendStream, WriteError};
use serde::{de::DeserializeOwned, Serialize};

use super::error::lost;
use super::StreamError;

/// Writes `msg` as one frame.
///
/// # Errors
///
/// [`StreamError`] if the stream or connection fails.
pub async fn write_frame<T: Serialize>(send: &mut SendStream, msg: &T) -> Result<(), StreamError> {
    let frame = encode_frame(msg).map_err(StreamError::Frame)?;
    send.write_all(&frame).await.map_err(|e| match e {
        WriteError::Stopped(code) => StreamError::Stopped(code.into_inner()),
        WriteError::ConnectionLost(e) => lost(&e),
        WriteError::ClosedStream | WriteError::ZeroRttRejected => StreamError::ConnectionLost {
            code: ErrorCode::Internal,
            reason: e.to_string(),
        },
    })
}

/// Reads one frame of at most [`MAX_CONTROL_FRAME`] bytes; `None` if the stream ended cleanly
/// before it. The length is checked before the body is allocated.
///
/// # Errors
///
/// [`StreamError`] if the stream is reset, the connection fails, the stream ends inside a
/// frame, or the frame is too long or malformed.
pub async fn read_frame<T: DeserializeOwned>(
    recv: &mut RecvStream,
) -> Result<Option<T>, StreamError> {
    let mut prefix = [0u8; LEN_PREFIX];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(read_error(e)),
    }
    let len = decode_len(prefix, MAX_CONTROL_FRAME).map_err(StreamError::Frame)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(read_error)?;
    decode_body(&body).map(Some).map_err(StreamError::Frame)
}

fn read_error(e: ReadExactError) -> StreamError {
    match e {
        ReadExactError::FinishedEarly(_) => StreamError::Truncated,
        ReadExactError::ReadError(ReadError::Reset(code)) => StreamError::Reset(code.into_inner()),
        ReadExactError::ReadError(ReadError::ConnectionLost(e)) => lost(&e),
        ReadExactError::ReadError(e) => StreamError::ConnectionLost {
            code: ErrorCode::Internal,
            reason: e.to_string(),
        },
    }
}
