//! Reading and writing `orbit_wire` frames on QUIC streams. The length prefix is checked against
//! the stream's cap before the body is allocated.

use bytes::{Buf, Bytes, BytesMut};
use quinn::{ReadExactError, RecvStream, SendStream};
use serde::{de::DeserializeOwned, Serialize};

use orbit_wire::{
    chunk_head, decode_body, decode_data_frame, decode_len, encode_frame, DataFrame, FrameError,
    CHUNK_HEAD_MAX, LEN_PREFIX,
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
    /// The peer granted no room for a write (flow-control credit, or a stream to answer on) for
    /// this long.
    #[error("the peer took nothing for {} s (write_timeout_secs)", .0.as_secs_f64())]
    Stalled(std::time::Duration),
}

/// Runs `write`, a write to a peer that may grant no credit, for at most `limit`.
///
/// # Errors
///
/// [`FramedError::Stalled`] when `limit` passes first, else what `write` returns. The stream is
/// left as it is; the caller resets it.
pub async fn bounded<T>(
    limit: std::time::Duration,
    write: impl std::future::Future<Output = Result<T, FramedError>>,
) -> Result<T, FramedError> {
    tokio::time::timeout(limit, write)
        .await
        .map_err(|_| FramedError::Stalled(limit))?
}

/// Reads a frame's length prefix and checks it against `cap`.
async fn read_len(recv: &mut RecvStream, cap: usize) -> Result<usize, FramedError> {
    let mut prefix = [0u8; LEN_PREFIX];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(ReadExactError::FinishedEarly(0)) => return Err(FramedError::Ended),
        Err(ReadExactError::FinishedEarly(_)) => return Err(FramedError::Truncated),
        Err(ReadExactError::ReadError(e)) => return Err(e.into()),
    }
    Ok(decode_len(prefix, cap)?)
}

/// Pieces shorter than this are copied rather than kept. A piece keeps the whole buffer its
/// packet arrived in alive, so a peer that sends one byte per packet (before any authorisation:
/// a read request is a frame like any other) would pin a packet buffer and a piece's bookkeeping
/// per byte, about 100 times the bytes (tests/hostile.rs measures it). Full packets carry
/// 1,150 bytes and more, so the pieces of an honest peer are kept as they are.
const SMALL_PIECE: usize = 1024;

/// Reads the next `len` bytes as quinn received them, without copying the large pieces: one
/// piece per packet, small ones copied together.
async fn read_pieces(recv: &mut RecvStream, len: usize) -> Result<Payload, FramedError> {
    let mut payload = Payload::default();
    while payload.len < len {
        match recv.read_chunk(len - payload.len, true).await? {
            Some(chunk) => payload.take(chunk.bytes),
            None => return Err(FramedError::Truncated),
        }
    }
    payload.seal();
    Ok(payload)
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
    let len = read_len(recv, cap).await?;
    let body = read_pieces(recv, len).await?.join();
    Ok(decode_body(&body)?)
}

/// Bytes as they arrived: the pieces quinn received them in, in order, not copied.
#[derive(Debug, Default)]
pub struct Payload {
    pieces: Vec<Bytes>,
    len: usize,
    /// Small pieces copied together, not yet a piece: see [`Payload::take`].
    small: BytesMut,
}

impl Payload {
    pub(crate) fn push(&mut self, piece: Bytes) {
        self.len += piece.len();
        self.pieces.push(piece);
    }

    /// Adds a piece as the network gave it: kept when it has [`SMALL_PIECE`] bytes or more,
    /// copied beside the small ones before it otherwise. [`Payload::seal`] follows the last.
    fn take(&mut self, piece: Bytes) {
        if piece.len() >= SMALL_PIECE {
            self.seal();
            self.push(piece);
        } else {
            self.len += piece.len();
            self.small.extend_from_slice(&piece);
        }
    }

    /// Makes the small pieces copied so far one piece.
    fn seal(&mut self) {
        if !self.small.is_empty() {
            let small = self.small.split().freeze();
            self.len -= small.len();
            self.push(small);
        }
    }

    /// How many bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The pieces, in order.
    pub fn pieces(&self) -> &[Bytes] {
        &self.pieces
    }

    /// Copies the first `out.len()` (at most [`Payload::len`]) bytes into `out`.
    fn copy_prefix(&self, out: &mut [u8]) {
        let mut at = 0;
        for piece in &self.pieces {
            if at == out.len() {
                break;
            }
            let n = piece.len().min(out.len() - at);
            out[at..at + n].copy_from_slice(&piece[..n]);
            at += n;
        }
    }

    /// Drops the first `n` (at most [`Payload::len`]) bytes.
    fn advance(&mut self, mut n: usize) {
        self.len -= n;
        let mut whole = 0;
        for piece in &mut self.pieces {
            if n < piece.len() {
                piece.advance(n);
                break;
            }
            n -= piece.len();
            whole += 1;
        }
        self.pieces.drain(..whole);
    }

    /// The bytes in one buffer: the piece itself when there is one, else a copy.
    fn join(mut self) -> Bytes {
        if self.pieces.len() == 1 {
            return self.pieces.pop().expect("one piece");
        }
        let mut body = BytesMut::with_capacity(self.len);
        for piece in &self.pieces {
            body.extend_from_slice(piece);
        }
        body.freeze()
    }
}

/// A data stream frame as read.
#[derive(Debug)]
pub enum DataRead {
    /// A chunk; its payload stays in the pieces it arrived in, one per packet.
    Chunk {
        /// Where the payload goes in the file.
        offset: u64,
        /// The payload.
        payload: Payload,
    },
    /// A header, a trailer or an error: never a chunk.
    Frame(DataFrame),
}

/// Reads one data stream frame. A chunk's payload is not copied: at MTU 1500, assembling it into
/// one buffer copied every byte once more (bench/RESULTS.md).
///
/// # Errors
///
/// As [`read_frame`].
pub async fn read_data_frame(recv: &mut RecvStream) -> Result<DataRead, FramedError> {
    let len = read_len(recv, orbit_wire::MAX_DATA_FRAME).await?;
    let mut body = read_pieces(recv, len).await?;
    let mut head = [0u8; CHUNK_HEAD_MAX];
    let head = &mut head[..len.min(CHUNK_HEAD_MAX)];
    body.copy_prefix(head);
    if let Some((offset, start)) = chunk_head(head, len) {
        body.advance(start);
        return Ok(DataRead::Chunk {
            offset,
            payload: body,
        });
    }
    // Anything else, well-formed or not, is decoded whole (chunk_head finds every valid chunk:
    // wire's property tests).
    Ok(match decode_data_frame(body.join())? {
        DataFrame::Chunk { offset, data } => {
            let mut payload = Payload::default();
            payload.push(data);
            DataRead::Chunk { offset, payload }
        }
        frame => DataRead::Frame(frame),
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(pieces: &[&'static [u8]]) -> Payload {
        let mut payload = Payload::default();
        for piece in pieces {
            payload.push(Bytes::from_static(piece));
        }
        payload
    }

    fn bytes(payload: &Payload) -> Vec<u8> {
        payload.pieces().concat()
    }

    #[test]
    fn a_prefix_is_copied_across_pieces() {
        let p = payload(&[b"ab", b"", b"cde", b"f"]);
        let mut out = [0u8; 4];
        p.copy_prefix(&mut out);
        assert_eq!(&out, b"abcd");
        let mut all = [0u8; 6];
        p.copy_prefix(&mut all);
        assert_eq!(&all, b"abcdef");
    }

    #[test]
    fn advancing_drops_whole_pieces_and_splits_the_next() {
        for n in 0..=6 {
            let mut p = payload(&[b"ab", b"", b"cde", b"f"]);
            p.advance(n);
            assert_eq!(bytes(&p), b"abcdef"[n..].to_vec(), "advance {n}");
            assert_eq!(p.len(), 6 - n);
        }
    }

    #[test]
    fn small_pieces_are_copied_together_and_large_ones_kept() {
        let large = Bytes::from(vec![7u8; SMALL_PIECE]);
        let mut p = Payload::default();
        for _ in 0..10_000 {
            // One byte out of a packet-sized buffer, as a one-byte STREAM frame arrives.
            p.take(Bytes::from(vec![1u8; 1500]).slice(..1));
        }
        p.take(large.clone());
        p.take(Bytes::from_static(b"ab"));
        p.seal();
        assert_eq!(p.len(), 10_000 + SMALL_PIECE + 2);
        assert_eq!(p.pieces().len(), 3, "10,000 one-byte pieces kept apart");
        assert_eq!(p.pieces()[0].len(), 10_000);
        assert_eq!(
            p.pieces()[1].as_ptr(),
            large.as_ptr(),
            "a large piece was copied"
        );
        let mut expected = vec![1u8; 10_000];
        expected.extend_from_slice(&large);
        expected.extend_from_slice(b"ab");
        assert_eq!(bytes(&p), expected);
    }

    #[test]
    fn one_piece_is_joined_without_a_copy_and_several_into_one_buffer() {
        let piece = Bytes::from_static(b"whole");
        let mut one = Payload::default();
        one.push(piece.clone());
        assert_eq!(one.join().as_ptr(), piece.as_ptr());
        assert_eq!(&payload(&[b"he", b"ll", b"o"]).join()[..], b"hello");
        assert!(Payload::default().join().is_empty());
    }
}
