//! Framing: a 4-byte big-endian length, then a postcard body. Decoding checks the length against
//! a cap before anything is allocated and refuses bodies with trailing bytes.

use bytes::Bytes;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::msg::{DataFrame, FileVersion};
use crate::WireError;

/// Bytes in a frame's length prefix.
pub const LEN_PREFIX: usize = 4;

/// The most bytes [`chunk_frame_header`] produces: the length prefix, the variant tag and two
/// varints of at most 10 bytes each.
pub const CHUNK_FRAME_HEADER_MAX: usize = LEN_PREFIX + 1 + 10 + 10;

/// Why a frame could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than the stream allows; nothing was allocated.
    #[error("frame of {len} bytes exceeds the limit of {cap} bytes")]
    TooLong {
        /// The announced length.
        len: usize,
        /// The stream's cap.
        cap: usize,
    },
    /// The body is not a valid message (truncated, an unknown variant, bad UTF-8, ...).
    #[error("malformed frame: {0}")]
    Malformed(#[from] postcard::Error),
    /// The body holds a whole message and then more bytes.
    #[error("malformed frame: {0} trailing bytes after the message")]
    TrailingBytes(usize),
}

/// Encodes `msg` as one frame: length prefix and body.
///
/// # Errors
///
/// Fails only if the message cannot be serialized, which does not happen for this crate's types.
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = postcard::to_extend(msg, vec![0u8; LEN_PREFIX])?;
    let len = u32::try_from(out.len() - LEN_PREFIX).map_err(|_| FrameError::TooLong {
        len: out.len() - LEN_PREFIX,
        cap: u32::MAX as usize,
    })?;
    out[..LEN_PREFIX].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

/// Reads a length prefix and checks it against `cap`. Call this before allocating the body.
///
/// # Errors
///
/// [`FrameError::TooLong`] when the length exceeds `cap`.
pub fn decode_len(prefix: [u8; LEN_PREFIX], cap: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > cap {
        return Err(FrameError::TooLong { len, cap });
    }
    Ok(len)
}

/// Decodes a frame body that must hold exactly one message.
///
/// # Errors
///
/// [`FrameError::Malformed`] or [`FrameError::TrailingBytes`].
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (msg, rest) = postcard::take_from_bytes(body)?;
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes(rest.len()));
    }
    Ok(msg)
}

/// The most bytes a chunk frame's body takes before its payload: the variant tag (a varint of at
/// most 5 bytes), then the offset and the payload's length (varints of at most 10 bytes each).
pub const CHUNK_HEAD_MAX: usize = 5 + 10 + 10;

/// `DataFrame::Chunk`'s variant tag.
const CHUNK_VARIANT: u32 = 1;

/// For a receiver that keeps a chunk's payload in the pieces it arrived in: given the first
/// `min(body_len, CHUNK_HEAD_MAX)` bytes of a data frame body of `body_len` bytes, returns the
/// chunk's offset and where its payload starts, when the body is a well-formed
/// `DataFrame::Chunk` exactly as [`decode_data_frame`] decodes it. Any other body, valid or not,
/// gives `None`: decode it whole with [`decode_data_frame`], which says what it is.
pub fn chunk_head(head: &[u8], body_len: usize) -> Option<(u64, usize)> {
    let (variant, rest) = postcard::take_from_bytes::<u32>(head).ok()?;
    if variant != CHUNK_VARIANT {
        return None;
    }
    let (offset, rest) = postcard::take_from_bytes::<u64>(rest).ok()?;
    let (len, rest) = postcard::take_from_bytes::<usize>(rest).ok()?;
    let start = head.len() - rest.len();
    (start.checked_add(len)? == body_len).then_some((offset, start))
}

/// The same shape as [`DataFrame`], borrowing a chunk's payload from the frame instead of
/// copying it.
#[derive(Deserialize)]
enum DataFrameRef<'a> {
    Header {
        request_id: u64,
        size: u64,
        version: FileVersion,
    },
    Chunk {
        offset: u64,
        #[serde(borrow)]
        data: &'a [u8],
    },
    Trailer {
        sha256: [u8; 32],
    },
    Error {
        request_id: u64,
        error: WireError,
    },
    Attested(crate::fanout::Attestation),
    Mode(u32),
}

/// Decodes a data stream frame body; a chunk's payload is a slice of `body`, not a copy.
///
/// # Errors
///
/// [`FrameError::Malformed`] or [`FrameError::TrailingBytes`].
pub fn decode_data_frame(body: Bytes) -> Result<DataFrame, FrameError> {
    let (msg, rest) = postcard::take_from_bytes::<DataFrameRef<'_>>(&body)?;
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes(rest.len()));
    }
    Ok(match msg {
        DataFrameRef::Header {
            request_id,
            size,
            version,
        } => DataFrame::Header {
            request_id,
            size,
            version,
        },
        DataFrameRef::Chunk { offset, data } => DataFrame::Chunk {
            offset,
            data: body.slice_ref(data),
        },
        DataFrameRef::Trailer { sha256 } => DataFrame::Trailer { sha256 },
        DataFrameRef::Error { request_id, error } => DataFrame::Error { request_id, error },
        DataFrameRef::Attested(attestation) => DataFrame::Attested(attestation),
        DataFrameRef::Mode(mode) => DataFrame::Mode(mode),
    })
}

/// The bytes that precede a chunk's payload in its frame: length prefix, variant and offset.
/// Sending these and then the payload itself is exactly `encode_frame(&DataFrame::Chunk{..})`,
/// without copying the payload. Returns the buffer and how many of its bytes are used.
pub fn chunk_frame_header(
    offset: u64,
    payload_len: usize,
) -> ([u8; CHUNK_FRAME_HEADER_MAX], usize) {
    let mut buf = [0u8; CHUNK_FRAME_HEADER_MAX];
    let mut n = LEN_PREFIX;
    n += put_varint(&mut buf[n..], CHUNK_VARIANT.into());
    n += put_varint(&mut buf[n..], offset);
    n += put_varint(&mut buf[n..], payload_len as u64);
    let body_len = (n - LEN_PREFIX + payload_len) as u32;
    buf[..LEN_PREFIX].copy_from_slice(&body_len.to_be_bytes());
    (buf, n)
}

/// postcard's unsigned varint: seven bits a byte, least significant first.
fn put_varint(out: &mut [u8], mut value: u64) -> usize {
    let mut i = 0;
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out[i] = byte;
            return i + 1;
        }
        out[i] = byte | 0x80;
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ControlRequest, MAX_CONTROL_FRAME};

    #[test]
    fn oversized_length_is_refused_before_allocation() {
        let prefix = (MAX_CONTROL_FRAME as u32 + 1).to_be_bytes();
        match decode_len(prefix, MAX_CONTROL_FRAME) {
            Err(FrameError::TooLong { len, cap }) => {
                assert_eq!(len, MAX_CONTROL_FRAME + 1);
                assert_eq!(cap, MAX_CONTROL_FRAME);
            }
            other => panic!("expected TooLong, got {other:?}"),
        }
        assert!(decode_len(u32::MAX.to_be_bytes(), MAX_CONTROL_FRAME).is_err());
        assert_eq!(
            decode_len(5u32.to_be_bytes(), MAX_CONTROL_FRAME).unwrap(),
            5
        );
    }

    #[test]
    fn trailing_bytes_and_truncation_are_refused() {
        let mut frame = encode_frame(&ControlRequest::Status).unwrap();
        frame.push(0);
        assert!(matches!(
            decode_body::<ControlRequest>(&frame[LEN_PREFIX..]),
            Err(FrameError::TrailingBytes(1))
        ));
        assert!(matches!(
            decode_body::<ControlRequest>(&[]),
            Err(FrameError::Malformed(_))
        ));
        // An unknown variant.
        assert!(decode_body::<ControlRequest>(&[9]).is_err());
        assert!(decode_data_frame(Bytes::from_static(&[7])).is_err());
    }

    #[test]
    fn chunk_header_matches_full_encoding() {
        for (offset, len) in [(0u64, 0usize), (1, 1), (65536, 65536), (u64::MAX, 65535)] {
            let data = Bytes::from(vec![0x5a; len]);
            let full = encode_frame(&DataFrame::Chunk {
                offset,
                data: data.clone(),
            })
            .unwrap();
            let (head, n) = chunk_frame_header(offset, len);
            let mut split = head[..n].to_vec();
            split.extend_from_slice(&data);
            assert_eq!(split, full, "offset {offset} len {len}");
        }
    }
}
