//! Every message of protocol version 1. Variants are only appended and fields never change; the
//! golden-bytes tests at the bottom pin the encoding.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::fanout::{Attestation, RelayRequest, ReplicateFanout, ReplicateMany};
use crate::tree::{
    FetchRequest, Item, ListRequest, PrefixRequest, ReplicateTree, TreeProgress, TreeSummary,
};
use crate::{TransferId, WireError};

/// A half-open range of byte offsets `[start, end)` in a file. `end == u64::MAX` means "to the end
/// of the file, whatever its size".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByteRange {
    /// First byte offset included.
    pub start: u64,
    /// First byte offset not included.
    pub end: u64,
}

impl ByteRange {
    /// The whole file.
    pub const FULL: ByteRange = ByteRange {
        start: 0,
        end: u64::MAX,
    };

    /// Whether `self` lies entirely inside `outer`. An empty or inverted range lies nowhere.
    pub fn is_within(&self, outer: &ByteRange) -> bool {
        self.start <= self.end && outer.start <= self.start && self.end <= outer.end
    }
}

/// The controller's command to a destination star, on a new control stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlRequest {
    /// Pull a file from another star and publish it here.
    Replicate(ReplicateFile),
    /// Report this star's status.
    Status,
    /// Start a replication and answer at once with [`ControlEvent::Started`]. The transfer runs
    /// on whatever happens to the control stream; follow it with `Wait`, stop it with `Cancel`.
    Start(ReplicateFile),
    /// Follow a transfer: [`ControlEvent::Following`], `Progress` events, then the transfer's
    /// final event. A destination keeps finished transfers' results for a while, so this also
    /// answers after the end. `NotFound` if the star never ran it or has forgotten it.
    Wait {
        /// The transfer, as [`ReplicateFile::transfer_id`] named it.
        transfer_id: TransferId,
    },
    /// Cancel a transfer: the destination stops pulling and removes its temporary file. Answered
    /// with [`ControlEvent::Following`], then the transfer's final event once it has stopped (`Failed` with `Cancelled`, or the
    /// result it had already reached). `NotFound` as for `Wait`.
    Cancel {
        /// The transfer.
        transfer_id: TransferId,
    },
    /// Replicate a directory tree: [`ControlEvent::TreeProgress`] (and, with `itemize`,
    /// [`ControlEvent::Item`]) events, then [`ControlEvent::TreeDone`] or `Failed`.
    ReplicateTree(ReplicateTree),
    /// As `ReplicateTree`, answered at once with `Started`.
    StartTree(ReplicateTree),
    /// From a destination star to a source star: list a tree, answered with
    /// [`crate::tree::ListFrame`]s. Only a star may send it.
    List(ListRequest),
    /// From a destination star to a source star: send files of a tree, answered with
    /// [`DataFrame`]s. Only a star may send it.
    Fetch(FetchRequest),
    /// From a destination star to a source star: the digest of the start of one file of a
    /// tree, answered with one [`crate::tree::PrefixFrame`]. Only a star may send it.
    Prefix(PrefixRequest),
    /// Replicate one file as a destination of a fan-out: pull it from the upstreams, in order,
    /// then the origin, and publish it only under the origin's attestation. Events as for
    /// `Replicate`. See [`crate::fanout`].
    ReplicateFanout(ReplicateFanout),
    /// As `ReplicateFanout`, answered at once with `Started`.
    StartFanout(ReplicateFanout),
    /// From a destination star to an upstream or the origin: send the file and the origin's
    /// attestation, answered with [`DataFrame`]s. Only a star may send it.
    Relay(RelayRequest),
    /// Replicate one file from several sources at once, piece by piece. Events as for
    /// `Replicate`. See [`crate::fanout::ReplicateMany`].
    ReplicateMany(ReplicateMany),
    /// As `ReplicateMany`, answered at once with `Started`.
    StartMany(ReplicateMany),
}

/// Pull `source_path` from the star `source` at `source_addr` into `target_path` here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicateFile {
    /// Chosen by the controller; appears in both stars' logs.
    pub transfer_id: TransferId,
    /// The source star's name, which its certificate must carry.
    pub source: String,
    /// Where the source star listens, `host:port`.
    pub source_addr: String,
    /// The absolute path of the file on the source star.
    pub source_path: String,
    /// The absolute path to publish the file at on this star.
    pub target_path: String,
    /// A token for the source star, minted for this star as holder.
    pub token: String,
    /// The SHA-256 the controller expects, checked in addition to the source's trailer.
    pub expect_sha256: Option<[u8; 32]>,
    /// How long the destination keeps retrying without making progress before it gives up with
    /// `DeadlineExceeded`, in seconds; 0 means the star's default.
    pub timeout_secs: u32,
}

/// What a destination star reports on a control stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ControlEvent {
    /// Bytes verified and written so far, of `total`.
    Progress {
        /// Bytes received so far.
        bytes: u64,
        /// The file's size, as the source announced it.
        total: u64,
    },
    /// The replication is complete: verified, durable and published. Final.
    Done {
        /// The file's size.
        bytes: u64,
        /// The file's SHA-256, checked against the source's trailer.
        sha256: [u8; 32],
        /// Wall time on the destination from the command to the published file.
        seconds: f64,
    },
    /// The command failed; nothing was published. Final.
    Failed(WireError),
    /// The answer to [`ControlRequest::Status`]. Final.
    Status(StarStatus),
    /// An attempt failed with a transient error; the destination tries again after `after_ms`.
    Retrying {
        /// The retry's number, from 1.
        attempt: u32,
        /// How long the destination waits before it, in milliseconds.
        after_ms: u64,
        /// Why the previous attempt failed.
        reason: String,
    },
    /// The transfer continues from `offset`: the bytes before it were received earlier and are
    /// not sent again.
    Resumed {
        /// The first byte requested from the source.
        offset: u64,
        /// The file's size.
        total: u64,
    },
    /// The answer to [`ControlRequest::Start`]: the transfer is running. Final.
    Started {
        /// The transfer.
        transfer_id: TransferId,
    },
    /// The first answer to [`ControlRequest::Wait`] and [`ControlRequest::Cancel`]: which
    /// transfer it is and where it stands. Not final.
    Following(TransferStatus),
    /// A tree replication's progress. Not final.
    TreeProgress(TreeProgress),
    /// One entry of a tree replication, with `itemize`. Not final.
    Item(Item),
    /// A tree replication ended: what was copied, skipped, deleted and failed. Final; some
    /// files may have failed.
    TreeDone(TreeSummary),
}

impl ControlEvent {
    /// Whether this event ends the control stream.
    pub fn is_final(&self) -> bool {
        !matches!(
            self,
            ControlEvent::Progress { .. }
                | ControlEvent::Retrying { .. }
                | ControlEvent::Resumed { .. }
                | ControlEvent::Following(_)
                | ControlEvent::TreeProgress(_)
                | ControlEvent::Item(_)
        )
    }
}

/// One replication a destination star runs or has run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransferStatus {
    /// The controller's transfer id.
    pub transfer_id: TransferId,
    /// The source star's name.
    pub source: String,
    /// The path on the source star.
    pub source_path: String,
    /// The path on this star.
    pub target_path: String,
    /// Bytes received so far.
    pub bytes: u64,
    /// The file's size, once the source has announced it; 0 before.
    pub total: u64,
    /// Seconds since the transfer started.
    pub seconds: f64,
}

/// A star's report on itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StarStatus {
    /// The star's name.
    pub name: String,
    /// The star's software version.
    pub version: String,
    /// The wire protocol version it speaks.
    pub protocol: u32,
    /// Seconds since it started.
    pub uptime_seconds: u64,
    /// Roots it serves and stores under.
    pub roots: Vec<String>,
    /// Replications it is running as a destination.
    pub transfers_in_flight: u32,
    /// Files it is sending as a source.
    pub reads_in_flight: u32,
    /// The replications it is running as a destination, with their progress.
    pub transfers: Vec<TransferStatus>,
}

/// A destination star's request for bytes, on a new unidirectional stream to the source star.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadRequest {
    /// Chosen by the requester, unique on its connection; echoed by the data stream. Its bit
    /// [`WANTS_MODE`] asks for the file's permission bits.
    pub request_id: u64,
    /// The controller's transfer id, for the source's logs.
    pub transfer_id: TransferId,
    /// The absolute path on the source star.
    pub path: String,
    /// The token the controller minted for this read.
    pub token: String,
    /// Which bytes; must lie inside the token's range.
    pub range: ByteRange,
}

/// The bit of a [`ReadRequest::request_id`] (and a relay request's) by which a requester asks
/// for the file's permission bits: a source that knows it answers with a [`DataFrame::Mode`]
/// between the header and the trailer. Sources of earlier releases ignore the bit and echo the
/// id, and the requester then publishes with its own default. A flag rather than a field, because
/// the fields of version 1's messages never change.
pub const WANTS_MODE: u64 = 1 << 62;

/// The bit of a request's id by which a requester that checks the *whole* file against the
/// origin's attestation (a piece of a file taken from several sources or over several
/// connections) says it needs no digest of the range: the source then does not hash the bytes it
/// sends, and the `Trailer`'s `sha256` is all zeros. On a relay request for a non-empty range it
/// also asks for no attestation (the requester has one from its read of the empty range): the
/// stream ends at the trailer. Hashing every piece a second time for a digest nobody reads cost
/// the source about as much CPU as the whole file's SHA-256. Sources of earlier releases ignore
/// the bit and send both, which such a requester ignores.
pub const RANGE_UNHASHED: u64 = 1 << 61;

/// What identifies one version of a file: if any of these change, it is another file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileVersion {
    /// Size in bytes when the read began.
    pub size: u64,
    /// Modification time, seconds since the Unix epoch.
    pub mtime_sec: i64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: u32,
    /// Inode number.
    pub inode: u64,
}

/// One frame on a data stream, from the source star.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataFrame {
    /// First frame: the request answered and what will be sent.
    Header {
        /// The [`ReadRequest::request_id`] this stream answers.
        request_id: u64,
        /// How many bytes follow in chunks.
        size: u64,
        /// The version of the file being read.
        version: FileVersion,
    },
    /// The next bytes of the file. `offset` is the position of `data` in the file: the requested
    /// range's start plus the bytes sent before it.
    Chunk {
        /// Offset of `data` within the file.
        offset: u64,
        /// At most [`crate::CHUNK_SIZE`] bytes.
        data: Bytes,
    },
    /// Last frame: the SHA-256 of every byte sent (all zeros when the request had the bit
    /// [`RANGE_UNHASHED`]).
    Trailer {
        /// SHA-256 of the bytes sent.
        sha256: [u8; 32],
    },
    /// The request failed; nothing more follows.
    Error {
        /// The [`ReadRequest::request_id`] this stream answers.
        request_id: u64,
        /// Why.
        error: WireError,
    },
    /// On a relay stream, before the `Trailer`: the origin's signed digest of the whole file.
    Attested(Attestation),
    /// Between the `Header` and the `Trailer`, at most once, and only when the request asked
    /// ([`WANTS_MODE`]): the file's permission bits (at most `0o777`; never setuid, setgid or
    /// sticky).
    Mode(u32),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode_body, decode_data_frame, encode_frame, ErrorCode, MAX_DATA_FRAME};

    /// The encoded body (without the length prefix) as hex.
    fn golden<T: Serialize>(msg: &T) -> String {
        let frame = encode_frame(msg).unwrap();
        let (prefix, body) = frame.split_at(4);
        assert_eq!(
            u32::from_be_bytes(prefix.try_into().unwrap()) as usize,
            body.len()
        );
        hex::encode(body)
    }

    fn replicate() -> ReplicateFile {
        ReplicateFile {
            transfer_id: TransferId(0x0102),
            source: "a".into(),
            source_addr: "h:1".into(),
            source_path: "/s".into(),
            target_path: "/t".into(),
            token: "T".into(),
            expect_sha256: None,
            timeout_secs: 0,
        }
    }

    #[test]
    fn golden_control_requests() {
        assert_eq!(
            golden(&ControlRequest::Replicate(replicate())),
            "008202016103683a31022f73022f7401540000"
        );
        assert_eq!(golden(&ControlRequest::Status), "01");
        let mut with_digest = replicate();
        with_digest.expect_sha256 = Some([0xab; 32]);
        let hex = golden(&ControlRequest::Replicate(with_digest));
        assert!(
            hex.ends_with(&format!("5401{}00", "ab".repeat(32))),
            "{hex}"
        );
        let mut with_timeout = replicate();
        with_timeout.timeout_secs = 300;
        assert!(golden(&ControlRequest::Replicate(with_timeout)).ends_with("00ac02"));
        assert_eq!(
            golden(&ControlRequest::Start(replicate())),
            "028202016103683a31022f73022f7401540000"
        );
        assert_eq!(
            golden(&ControlRequest::Wait {
                transfer_id: TransferId(300)
            }),
            "03ac02"
        );
        assert_eq!(
            golden(&ControlRequest::Cancel {
                transfer_id: TransferId(1)
            }),
            "0401"
        );
    }

    #[test]
    fn golden_control_events() {
        assert_eq!(
            golden(&ControlEvent::Progress {
                bytes: 1,
                total: 300
            }),
            "0001ac02"
        );
        assert_eq!(
            golden(&ControlEvent::Done {
                bytes: 2,
                sha256: [1; 32],
                seconds: 1.5
            }),
            format!("0102{}000000000000f83f", "01".repeat(32))
        );
        assert_eq!(
            golden(&ControlEvent::Failed(WireError::new(
                ErrorCode::NotFound,
                "x"
            ))),
            "02020178"
        );
        let status = StarStatus {
            name: "a".into(),
            version: "0.1.0".into(),
            protocol: 1,
            uptime_seconds: 5,
            roots: vec!["/r".into()],
            transfers_in_flight: 2,
            reads_in_flight: 3,
            transfers: vec![transfer()],
        };
        assert_eq!(
            golden(&ControlEvent::Status(status)),
            format!("03016105302e312e30010501022f720203{TRANSFER}")
        );
        let retrying = ControlEvent::Retrying {
            attempt: 2,
            after_ms: 400,
            reason: "x".into(),
        };
        assert_eq!(golden(&retrying), "040290030178");
        assert!(!retrying.is_final());
        let resumed = ControlEvent::Resumed {
            offset: 128,
            total: 256,
        };
        assert_eq!(golden(&resumed), "0580018002");
        assert!(!resumed.is_final());
        assert_eq!(
            golden(&ControlEvent::Started {
                transfer_id: TransferId(5)
            }),
            "0605"
        );
        assert_eq!(
            golden(&ControlEvent::Following(transfer())),
            format!("07{}", &TRANSFER[2..])
        );
        assert!(!ControlEvent::Following(transfer()).is_final());
        assert!(ControlEvent::Started {
            transfer_id: TransferId(5)
        }
        .is_final());
    }

    fn transfer() -> TransferStatus {
        TransferStatus {
            transfer_id: TransferId(9),
            source: "a".into(),
            source_path: "/s".into(),
            target_path: "/t".into(),
            bytes: 1,
            total: 2,
            seconds: 0.5,
        }
    }

    /// `transfer()` in a one-element list.
    const TRANSFER: &str = "01090161022f73022f740102000000000000e03f";

    #[test]
    fn golden_read_request() {
        let req = ReadRequest {
            request_id: 7,
            transfer_id: TransferId(8),
            path: "/p".into(),
            token: "t".into(),
            range: ByteRange { start: 0, end: 128 },
        };
        assert_eq!(golden(&req), "0708022f700174008001");
    }

    #[test]
    fn golden_data_frames() {
        let header = DataFrame::Header {
            request_id: 1,
            size: 2,
            version: FileVersion {
                size: 2,
                mtime_sec: -1,
                mtime_nsec: 3,
                inode: 4,
            },
        };
        assert_eq!(golden(&header), "00010202010304");
        let chunk = DataFrame::Chunk {
            offset: 65536,
            data: Bytes::from_static(b"hi"),
        };
        assert_eq!(golden(&chunk), "01808004026869");
        assert_eq!(
            golden(&DataFrame::Trailer { sha256: [2; 32] }),
            format!("02{}", "02".repeat(32))
        );
        let err = DataFrame::Error {
            request_id: 9,
            error: WireError::new(ErrorCode::PermissionDenied, ""),
        };
        assert_eq!(golden(&err), "03090000");
        assert_eq!(golden(&DataFrame::Mode(0o640)), "05a003");
    }

    #[test]
    fn every_message_round_trips() {
        let req = ControlRequest::Replicate(replicate());
        let frame = encode_frame(&req).unwrap();
        assert_eq!(decode_body::<ControlRequest>(&frame[4..]).unwrap(), req);

        let chunk = DataFrame::Chunk {
            offset: 5,
            data: Bytes::from(vec![7u8; crate::CHUNK_SIZE]),
        };
        let frame = encode_frame(&chunk).unwrap();
        assert!(frame.len() - 4 <= MAX_DATA_FRAME);
        let body = Bytes::from(frame).slice(4..);
        assert_eq!(decode_data_frame(body).unwrap(), chunk);
    }

    #[test]
    fn ranges_nest() {
        let token = ByteRange { start: 10, end: 20 };
        assert!(ByteRange { start: 10, end: 20 }.is_within(&token));
        assert!(ByteRange { start: 12, end: 15 }.is_within(&token));
        assert!(!ByteRange { start: 9, end: 15 }.is_within(&token));
        assert!(!ByteRange { start: 12, end: 21 }.is_within(&token));
        assert!(!ByteRange { start: 15, end: 12 }.is_within(&token));
        assert!(ByteRange { start: 0, end: 5 }.is_within(&ByteRange::FULL));
    }
}
