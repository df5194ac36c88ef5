//! Reading and writing `orbit_wire` frames on QUIC streams. The length prefix is checked against
//! the stream's cap before the body is allocated.

use bytes::{Bytes, BytesMut};
use quinn::{ReadExactError, RecvStream, SendStream};
use serde::{de::DeserializeOwned, Serialize};

use orbit_wire::{
    decode_body, decode_data_frame, decode_len, encode_frame, DataFrame, FrameError, LEN_PREFIX,
};

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FramedError {
    /// The stream ended where a frame was expected.
    #[error("stream ended before the expected message")]
    Ended,
    /// The stream ended inside a frame.
    #[error("stream ended in the middle of a message")]
    Truncated,
    /// The frame is too long or does not decode.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The peer reset the stream or the connection was lost.
    #[error(transparent)]
    Read(#[from] quinn::ReadError),
    /// The stream could not be written.
    #[error(transparent)]
    Write(#[from] quinn::WriteError),
    /// The send side was already closed.
    #[error(transparent)]
    Closed(#[from] quinn::ClosedStream),
}

async fn read_body(recv: &mut RecvStream, cap: usize) -> Result<BytesMut, FramedError> {
    let mut prefix = [0u8; LEN_PREFIX];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(ReadExactError::FinishedEarly(0)) => return Err(FramedError::Ended),
        Err(ReadExactError::FinishedEarly(_)) => return Err(FramedError::Truncated),
        Err(ReadExactError::ReadError(e)) => return Err(e.into()),
    }
    let len = decode_len(prefix, cap)?;
    // Filled from quinn's received pieces: one copy, and no zeroing of memory about to be
    // overwritten.
    let mut body = BytesMut::with_capacity(len);
    while body.len() < len {
        match recv.read_chunk(len - body.len(), true).await? {
            Some(chunk) => body.extend_from_slice(&chunk.bytes),
            None => return Err(FramedError::Truncated),
        }
    }
    Ok(body)
}

/// Reads one frame of at most `cap` bytes and decodes it as `T`.
///
/// # Errors
///
/// [`FramedError`]; `Ended` if the stream finished cleanly before the frame.
///
/// Not cancel-safe: dropping the future mid-frame loses the frame's start.
pub async fn read_frame<T: DeserializeOwned>(
    recv: &mut RecvStream,
    cap: usize,
) -> Result<T, FramedError> {
    let body = read_body(recv, cap).await?;
    Ok(decode_body(&body)?)
}

/// Reads one data stream frame; a chunk's payload is not copied again after the read.
///
/// # Errors
///
/// As [`read_frame`].
pub async fn read_data_frame(recv: &mut RecvStream) -> Result<DataFrame, FramedError> {
    let body = read_body(recv, orbit_wire::MAX_DATA_FRAME).await?;
    Ok(decode_data_frame(body.freeze())?)
}

/// Writes `msg` as one frame.
///
/// # Errors
///
/// [`FramedError::Write`] when the stream or connection is gone.
pub async fn write_frame<T: Serialize>(send: &mut SendStream, msg: &T) -> Result<(), FramedError> {
    let frame = encode_frame(msg)?;
    send.write_chunk(Bytes::from(frame)).await?;
    Ok(())
}

/// Writes one chunk frame without copying the payload.
///
/// # Errors
///
/// [`FramedError::Write`] when the stream or connection is gone.
pub async fn write_chunk(
    send: &mut SendStream,
    offset: u64,
    data: Bytes,
) -> Result<(), FramedError> {
    let (head, n) = orbit_wire::chunk_frame_header(offset, data.len());
    send.write_all_chunks(&mut [Bytes::copy_from_slice(&head[..n]), data])
        .await?;
    Ok(())
}
