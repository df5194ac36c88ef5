//! Orbit's wire protocol, version 1: the messages, how they are framed, the path tokens and the
//! error codes. This crate is the specification; it does no I/O, reads no clock and draws no
//! randomness, so that everything in it can be unit-tested and fuzzed without a runtime.
//!
//! # Roles and connections
//!
//! Every participant speaks QUIC with ALPN [`ALPN`] and mutual TLS under the grid's one CA.
//! A *controller* (`orbitctl`) connects to a *destination star*; the destination star connects to
//! a *source star*. One QUIC connection per pair of peers carries any number of streams.
//!
//! # Streams
//!
//! | stream | kind | opened by | carries |
//! |---|---|---|---|
//! | control | bidirectional | controller | one [`ControlRequest`], then [`ControlEvent`]s back until a final one |
//! | read request | unidirectional | destination star | one [`ReadRequest`] |
//! | data | unidirectional | source star | [`DataFrame`]s: `Header`, `Chunk`s in order, `Trailer`; or one `Error` |
//! | tree | bidirectional | destination star | one `ControlRequest::List` or `Fetch`, then [`tree::ListFrame`]s or [`DataFrame`]s back ([`tree`]) |
//! | relay | bidirectional | destination star | one `ControlRequest::Relay`, then [`DataFrame`]s back ([`fanout`]) |
//!
//! A star accepts control streams only from a controller certificate, and read requests and tree
//! requests only from a star certificate. The data stream answering a read request starts with the request's
//! `request_id`, so the destination can match it to the request it sent.
//!
//! # Message order for one replication
//!
//! 1. controller → destination, control stream: `ControlRequest::Replicate(ReplicateFile)`.
//! 2. destination → source, read request stream: `ReadRequest { path, token, range, .. }`.
//! 3. source → destination, data stream: `Header { size, version }`, then `Chunk { offset, data }`
//!    with `data` at most [`CHUNK_SIZE`] bytes and `offset` exactly the bytes sent so far, then
//!    `Trailer { sha256 }` over every byte sent. Or, at any point, `Error { code, message }`.
//!    When the request's id has the bit [`WANTS_MODE`], a `Mode(bits)` frame with the file's
//!    permission bits comes once between the header and the trailer. With the bit
//!    [`RANGE_UNHASHED`] (a piece of a file checked whole), the trailer's digest is all zeros.
//! 4. destination → controller, control stream: `Progress` events, then exactly one final
//!    `Done { bytes, sha256, seconds }` or `Failed(WireError)`.
//!
//! A transfer belongs to the destination star, not to the control stream that started it: if the
//! controller goes away, the destination carries on. Other control requests work on a transfer
//! by its id: `Start` (as `Replicate`, but answered at once with `Started`), `Wait` (answered
//! with `Following`, `Progress` events and the transfer's final event, also after it has ended:
//! a destination keeps recent results) and `Cancel` (answered with the final event once the
//! destination has stopped and removed its temporary file).
//!
//! # Trees
//!
//! `ControlRequest::ReplicateTree` replicates a directory: the destination lists it on one
//! stream and fetches its files many to a stream, under one tree token (claims version
//! [`token::TREE_TOKEN_VERSION`]) that names the directory and a filter. The destination reports
//! `TreeProgress` (and `Item`s on request), then one `TreeDone` summary. See [`tree`].
//!
//! # Retries and resume
//!
//! When an attempt fails with `Unavailable` or `DeadlineExceeded` (a lost connection, a source
//! restarting, a stalled stream), the destination sends `Retrying { attempt, after_ms, reason }`
//! on the control stream, waits with exponential backoff and jitter, and sends a new
//! `ReadRequest` with `range.start` at the bytes it already holds, reusing the token; the range
//! must lie inside the token's. The new `Header`'s `size` counts the bytes from `range.start`,
//! chunk offsets are file offsets, and the `Trailer` covers only the bytes of that stream. If the
//! header's `version` differs from the first attempt's, the destination starts again from zero
//! (and says so in a `Retrying` event); otherwise it sends `Resumed { offset, total }`. It gives
//! up with `DeadlineExceeded` once `ReplicateFile::timeout_secs` pass without progress. Other
//! codes end the transfer: a source file that changes while it is read is `FailedPrecondition`.
//!
//! # Framing
//!
//! Every message is one frame: a 4-byte big-endian length, then that many bytes of postcard. The
//! length is checked against the stream's cap ([`MAX_CONTROL_FRAME`], [`MAX_DATA_FRAME`]) before
//! anything is allocated, and a body must be consumed exactly: trailing bytes are an error.
//!
//! # Errors
//!
//! Failures travel as a [`WireError`] `{ code, message }` frame and, when a stream has to be cut,
//! as the stream's reset code ([`ErrorCode::as_u32`]). There is one namespace of codes,
//! [`ErrorCode`]. Any failure of a token or a peer's identity is [`ErrorCode::PermissionDenied`].
//!
//! # Compatibility
//!
//! Enum variants are only ever appended and struct fields never change; the golden-bytes tests
//! in this crate pin the exact encoding of every message.

mod code;
pub mod fanout;
mod frame;
mod id;
mod msg;
pub mod path;
pub mod token;
pub mod tree;

pub use code::{ErrorCode, WireError};
pub use frame::{
    chunk_frame_header, chunk_head, decode_body, decode_data_frame, decode_len, encode_frame,
    FrameError, CHUNK_FRAME_HEADER_MAX, CHUNK_HEAD_MAX, LEN_PREFIX,
};
pub use id::{ParseTransferIdError, TransferId};
pub use msg::{
    ByteRange, ControlEvent, ControlRequest, DataFrame, FileVersion, ReadRequest, ReplicateFile,
    StarStatus, TransferStatus, RANGE_UNHASHED, WANTS_MODE,
};

/// The ALPN protocol name of Orbit's wire protocol, version 1.
pub const ALPN: &[u8] = b"orbit/1";

/// The protocol version this crate speaks, reported by `--version` and in status.
pub const PROTOCOL_VERSION: u32 = 1;

/// The payload of one data chunk: 64 KiB. The last chunk of a file may be shorter.
pub const CHUNK_SIZE: usize = 64 * 1024;

/// The largest frame on a data stream: one full chunk plus room for its header.
pub const MAX_DATA_FRAME: usize = CHUNK_SIZE + 1024;

/// The largest frame on a control or read request stream. Paths, tokens and messages are small.
pub const MAX_CONTROL_FRAME: usize = 64 * 1024;

/// The longest path accepted on the wire, in bytes (Linux's `PATH_MAX`).
pub const MAX_PATH_LEN: usize = 4096;

/// The longest single path component accepted on the wire, in bytes (Linux's `NAME_MAX`).
pub const MAX_COMPONENT_LEN: usize = 255;

/// The longest human-readable message carried in a [`WireError`], in bytes.
pub const MAX_MESSAGE_LEN: usize = 1024;
