//! Fan-out: one file to many stars, each pulling it from a star that is still receiving it.
//!
//! The controller sends every destination a [`ReplicateFanout`]: the usual [`ReplicateFile`]
//! (whose `source` is the *origin*, the star that holds the file) and the destination's
//! *upstreams*, the stars it should pull from first (its parent in the plan, then those above
//! it). The destination asks its first upstream with a [`RelayRequest`] on a bidirectional
//! stream; on failure it goes on from the bytes it holds with the next one, and the origin last.
//!
//! | request | answer |
//! |---|---|
//! | `ControlRequest::Relay` ([`RelayRequest`]) | `DataFrame::Header` (the *origin's* `FileVersion`), `Chunk`s, `DataFrame::Attested` ([`Attestation`]), `Trailer` (the origin's SHA-256 of the whole file); or `DataFrame::Error` |
//!
//! A star answers a `RelayRequest` for a path it is itself receiving in the same transfer from
//! its temporary file, as far as it has written, waiting for more; for any other path it is the
//! origin and reads the file under its roots. Either way the stream ends with the origin's
//! [`Attestation`]: the origin signs the transfer, the path, the version, the size and the
//! SHA-256 with its star key, and every destination checks the signature against the grid's CA
//! and its own digest of the whole file against the attested one before it publishes. A relay
//! can slow a transfer down or break it; it cannot get a wrong file published.
//!
//! Every token of a fan-out, the origin's too, and of a file from several sources is a link
//! token ([`crate::token::verify_link`]): it names the transfer, opens only that transfer's relay
//! requests, and is never a plain `ReadRequest`.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{ByteRange, FileVersion, ReplicateFile, TransferId};

/// Upstreams a destination may be given, besides the origin.
pub const MAX_UPSTREAMS: usize = 8;

/// Domain separation for the origin's signature.
pub const ATTESTATION_CONTEXT: &[u8] = b"orbit attestation v1\0";

/// A star a fan-out destination may pull the file from before the origin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upstream {
    /// The star's name, which its certificate must carry.
    pub star: String,
    /// Where it listens, `host:port`.
    pub addr: String,
    /// The file's path on that star: its target path in the same fan-out.
    pub path: String,
    /// A link token ([`crate::token::LinkClaims`]) for that star, holder this destination, path
    /// `path`, for the transfer of the command it comes in.
    pub token: String,
}

/// The controller's command to one destination of a fan-out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicateFanout {
    /// The transfer, its origin (`source`), the target here, and a token for the origin.
    pub file: ReplicateFile,
    /// Stars to pull from before the origin, parent first; at most [`MAX_UPSTREAMS`].
    pub upstreams: Vec<Upstream>,
}

/// The controller's command to a destination that takes one file from several sources at once.
/// The destination first asks every source for its attestation of the file (a `Relay` request
/// for the empty range at byte 0, each source its own origin) and refuses to start unless they
/// all have the same size and SHA-256; then it splits the file into pieces of `piece_size` and
/// takes each piece from whichever source is free, and publishes the file once its SHA-256 is
/// the sources' one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicateMany {
    /// The transfer, the first source, the target here, and a link token for the first source.
    pub file: ReplicateFile,
    /// The other sources, each with a link token for its path.
    pub also: Vec<Upstream>,
    /// Bytes per piece; 0 means [`DEFAULT_PIECE`].
    pub piece_size: u64,
}

/// The size of the pieces a file from several sources is split into.
pub const DEFAULT_PIECE: u64 = 8 * 1024 * 1024;

/// From a destination star to one of its upstreams (or the origin): send the file, with the
/// origin's attestation at the end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayRequest {
    /// Chosen by the requester; echoed in the `Header` and any `Error`.
    pub request_id: u64,
    /// The fan-out's transfer id, the same on every star of it.
    pub transfer_id: TransferId,
    /// The origin star's name.
    pub origin: String,
    /// The path on the star asked: the origin's file, or the upstream's target.
    pub path: String,
    /// A link token ([`crate::token::LinkClaims`]) for the star asked, holder the requester,
    /// path `path`, transfer `transfer_id`; a plain read token is refused.
    pub token: String,
    /// Which bytes; must lie inside the token's range.
    pub range: ByteRange,
}

/// What the origin vouches for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestClaims {
    /// The fan-out.
    pub transfer_id: TransferId,
    /// The origin star, as its certificate names it.
    pub origin: String,
    /// The file's path on the origin.
    pub path: String,
    /// The version read.
    pub version: FileVersion,
    /// SHA-256 of the whole file in that version.
    pub sha256: [u8; 32],
}

impl AttestClaims {
    /// The bytes the origin signs: [`ATTESTATION_CONTEXT`], then the claims' postcard.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = ATTESTATION_CONTEXT.to_vec();
        // Encoding plain structs into a Vec cannot fail.
        out.extend(postcard::to_allocvec(self).unwrap_or_default());
        out
    }
}

/// The origin's signed digest of the file, passed along by every relay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attestation {
    /// What is signed.
    pub claims: AttestClaims,
    /// The TLS `SignatureScheme` number of the signature.
    pub scheme: u16,
    /// The signature over [`AttestClaims::signed_bytes`].
    pub signature: Bytes,
    /// The origin's certificate (DER), to be checked against the grid's CA.
    pub certificate: Bytes,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{encode_frame, ControlRequest, DataFrame};

    fn golden<T: Serialize>(msg: &T) -> String {
        hex::encode(&encode_frame(msg).unwrap()[4..])
    }

    fn version() -> FileVersion {
        FileVersion {
            size: 3,
            mtime_sec: 1,
            mtime_nsec: 2,
            inode: 4,
        }
    }

    fn fanout_file() -> ReplicateFile {
        ReplicateFile {
            transfer_id: TransferId(1),
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
    fn golden_fanout_messages() {
        let file = ReplicateFile {
            transfer_id: TransferId(1),
            source: "a".into(),
            source_addr: "h:1".into(),
            source_path: "/s".into(),
            target_path: "/t".into(),
            token: "T".into(),
            expect_sha256: None,
            timeout_secs: 0,
        };
        let upstream = Upstream {
            star: "b".into(),
            addr: "h:2".into(),
            path: "/t".into(),
            token: "U".into(),
        };
        let fanout = ReplicateFanout {
            file,
            upstreams: vec![upstream],
        };
        let body = "01016103683a31022f73022f740154000001016203683a32022f740155";
        assert_eq!(
            golden(&ControlRequest::ReplicateFanout(fanout.clone())),
            format!("0a{body}")
        );
        assert_eq!(
            golden(&ControlRequest::StartFanout(fanout)),
            format!("0b{body}")
        );
        let relay = RelayRequest {
            request_id: 7,
            transfer_id: TransferId(1),
            origin: "a".into(),
            path: "/t".into(),
            token: "U".into(),
            range: ByteRange { start: 0, end: 3 },
        };
        assert_eq!(
            golden(&ControlRequest::Relay(relay)),
            "0c07010161022f7401550003"
        );
        let many = ReplicateMany {
            file: fanout_file(),
            also: vec![],
            piece_size: 0,
        };
        let body = "01016103683a31022f73022f7401540000";
        assert_eq!(
            golden(&ControlRequest::ReplicateMany(many.clone())),
            format!("0d{body}0000")
        );
        assert_eq!(
            golden(&ControlRequest::StartMany(many)),
            format!("0e{body}0000")
        );
        let attested = Attestation {
            claims: AttestClaims {
                transfer_id: TransferId(1),
                origin: "a".into(),
                path: "/s".into(),
                version: version(),
                sha256: [0xab; 32],
            },
            scheme: 0x0403,
            signature: Bytes::from_static(b"S"),
            certificate: Bytes::from_static(b"C"),
        };
        assert_eq!(
            golden(&DataFrame::Attested(attested.clone())),
            format!("04010161022f7303020204{}830801530143", "ab".repeat(32))
        );
        // The signed bytes start with the context, so they can mean nothing else.
        let signed = attested.claims.signed_bytes();
        assert!(signed.starts_with(ATTESTATION_CONTEXT));
        assert_eq!(
            &signed[ATTESTATION_CONTEXT.len()..],
            &postcard::to_allocvec(&attested.claims).unwrap()[..]
        );
    }
}
