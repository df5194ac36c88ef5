//! The invariants the fuzz targets check, shared so that a frame found inside a stream is held to
//! the same rules as one fuzzed alone. Every function here panics on a broken invariant (that is
//! what libFuzzer reports as a crash) and returns normally on input that is merely refused.

use std::fmt::Debug;

use bytes::Bytes;
use orbit_wire::{
    chunk_frame_header, decode_body, decode_data_frame, decode_len, encode_frame,
    token::{
        self, Claims, Expected, ExpectedLink, KeyRing, LinkClaims, MasterKey, TokenError, TokenKey,
        LINK_TOKEN_VERSION, TOKEN_VERSION,
    },
    ControlEvent, ControlRequest, DataFrame, FrameError, ReadRequest, LEN_PREFIX,
};
use serde::{de::DeserializeOwned, Serialize};

/// Decodes `body` as a `T`; if that succeeds, checks that the message encodes to a frame whose
/// length prefix is right, whose body is no longer than `body` (postcard's canonical encoding is
/// the shortest, so only over-long varints can shrink), and that decoding that frame gives the
/// same message and the same bytes again. `same` compares two decoded messages.
pub fn round_trip<T>(body: &[u8], same: impl Fn(&T, &T) -> bool) -> Result<T, FrameError>
where
    T: Serialize + DeserializeOwned + Debug,
{
    let msg: T = decode_body(body)?;
    let frame = encode_frame(&msg).expect("a decoded message always encodes");
    let reencoded = check_prefix(&frame);
    assert!(
        reencoded.len() <= body.len(),
        "re-encoding grew from {} to {} bytes: {msg:?}",
        body.len(),
        reencoded.len()
    );
    let again: T = decode_body(reencoded).expect("a re-encoded message decodes");
    assert!(
        same(&msg, &again),
        "round trip changed {msg:?} into {again:?}"
    );
    assert_eq!(
        encode_frame(&again).unwrap(),
        frame,
        "encoding is not a fixed point"
    );
    Ok(msg)
}

/// Checks a frame's length prefix against its body and returns the body.
pub fn check_prefix(frame: &[u8]) -> &[u8] {
    let (prefix, body) = frame.split_at(LEN_PREFIX);
    assert_eq!(
        u32::from_be_bytes(prefix.try_into().unwrap()) as usize,
        body.len(),
        "length prefix disagrees with the body"
    );
    body
}

/// [`round_trip`] for a control request.
pub fn check_control_request(body: &[u8]) -> Result<ControlRequest, FrameError> {
    round_trip::<ControlRequest>(body, |a, b| a == b)
}

/// [`round_trip`] for a control event. Events that carry seconds as `f64` (`Done`, and the
/// transfers of `Status` and `Following`) may hold a NaN, which is never equal to itself: those
/// are compared by their bytes.
pub fn check_control_event(body: &[u8]) -> Result<ControlEvent, FrameError> {
    round_trip::<ControlEvent>(body, |a, b| {
        a == b
            || encode_frame(a)
                .ok()
                .is_some_and(|x| encode_frame(b).ok() == Some(x))
    })
}

/// [`round_trip`] for a read request.
pub fn check_read_request(body: &[u8]) -> Result<ReadRequest, FrameError> {
    round_trip::<ReadRequest>(body, |a, b| a == b)
}

/// Decodes a data frame body both ways (zero-copy and owned) and checks that they agree, that a
/// chunk's payload is a slice of the body and not a copy, that the frame round-trips, and that
/// [`chunk_frame_header`] plus the payload is exactly the chunk's full encoding.
pub fn check_data_frame(body: &[u8]) -> Result<DataFrame, FrameError> {
    let shared = Bytes::copy_from_slice(body);
    let zero_copy = decode_data_frame(shared.clone());
    let owned = round_trip::<DataFrame>(body, |a, b| a == b);
    let frame = match (zero_copy, owned) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b, "zero-copy and owned decoding disagree");
            a
        }
        (Err(FrameError::TrailingBytes(x)), Err(FrameError::TrailingBytes(y))) => {
            assert_eq!(x, y, "the two decoders count trailing bytes differently");
            return Err(FrameError::TrailingBytes(x));
        }
        (Err(e @ FrameError::Malformed(_)), Err(FrameError::Malformed(_))) => return Err(e),
        (a, b) => panic!("zero-copy decoding gave {a:?}, owned decoding gave {b:?}"),
    };
    if let DataFrame::Chunk { offset, data } = &frame {
        if !data.is_empty() {
            let inside = shared.as_ptr() as usize..=shared.as_ptr() as usize + shared.len();
            assert!(
                inside.contains(&(data.as_ptr() as usize))
                    && inside.contains(&(data.as_ptr() as usize + data.len())),
                "a chunk's payload was copied out of the frame"
            );
        }
        let (head, n) = chunk_frame_header(*offset, data.len());
        let mut split = head[..n].to_vec();
        split.extend_from_slice(data);
        assert_eq!(
            split,
            encode_frame(&frame).unwrap(),
            "chunk_frame_header disagrees with encode_frame"
        );
    }
    Ok(frame)
}

/// How a stream of frames ended.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// At a frame boundary (possibly with 1 to 3 bytes of a prefix left over).
    Clean,
    /// A length prefix over the cap.
    TooLong,
    /// A body shorter than its prefix announced.
    Truncated,
    /// A body that does not decode.
    Malformed,
}

/// Reads frames from `stream` the way a star does: a prefix checked against `cap` before
/// anything else, then exactly that many bytes, decoded by `decode`. Returns the re-encoded
/// frames of the messages read and how the stream ended.
pub fn read_stream<T: Serialize>(
    mut stream: &[u8],
    cap: usize,
    decode: impl Fn(&[u8]) -> Result<T, FrameError>,
) -> (Vec<u8>, usize, StreamEnd) {
    let mut reencoded = Vec::new();
    let mut count = 0;
    while stream.len() >= LEN_PREFIX {
        let (prefix, rest) = stream.split_at(LEN_PREFIX);
        let prefix: [u8; LEN_PREFIX] = prefix.try_into().unwrap();
        let announced = u32::from_be_bytes(prefix) as usize;
        let len = match decode_len(prefix, cap) {
            Ok(len) => {
                assert!(
                    len == announced && len <= cap,
                    "decode_len let {announced} through a cap of {cap}"
                );
                len
            }
            Err(FrameError::TooLong { len, cap: c }) => {
                assert!(
                    len == announced && c == cap && len > cap,
                    "decode_len refused {announced} under a cap of {cap}"
                );
                return (reencoded, count, StreamEnd::TooLong);
            }
            Err(e) => panic!("decode_len failed with {e:?}"),
        };
        if rest.len() < len {
            return (reencoded, count, StreamEnd::Truncated);
        }
        let (body, rest) = rest.split_at(len);
        match decode(body) {
            Ok(msg) => reencoded.extend(encode_frame(&msg).unwrap()),
            Err(_) => return (reencoded, count, StreamEnd::Malformed),
        }
        count += 1;
        stream = rest;
    }
    (reencoded, count, StreamEnd::Clean)
}

/// Reads a stream, then reads the re-encoded frames of what it read: they must all decode, end
/// cleanly, and re-encode to the same bytes.
pub fn check_stream<T: Serialize>(
    stream: &[u8],
    cap: usize,
    decode: impl Fn(&[u8]) -> Result<T, FrameError> + Copy,
) {
    let (reencoded, count, _) = read_stream(stream, cap, decode);
    let (again, count_again, end) = read_stream(&reencoded, cap, decode);
    assert_eq!(
        end,
        StreamEnd::Clean,
        "re-encoded frames did not read back cleanly"
    );
    assert_eq!(
        count, count_again,
        "re-encoded frames read back as another number of messages"
    );
    assert_eq!(reencoded, again, "re-encoded stream is not a fixed point");
}

/// The fixed master key the token targets sign and verify with.
pub fn fixed_key() -> TokenKey {
    TokenKey::derive(&MasterKey::from_bytes([7; token::KEY_LEN]), "star-a")
}

/// What a star holding `claims`' audience would expect for exactly the claims' request, at the
/// last second before expiry.
pub fn expected_for(claims: &Claims) -> Expected<'_> {
    Expected {
        audience: &claims.audience,
        holder: &claims.holder,
        path: &claims.path,
        range: claims.range,
        now: claims.not_after.saturating_sub(1),
    }
}

/// What a star expects for exactly a link token's request, of its own transfer, at the last
/// second before expiry.
pub fn expected_link_for(claims: &LinkClaims) -> ExpectedLink<'_> {
    ExpectedLink {
        read: expected_for(&claims.read),
        transfer_id: claims.transfer_id,
    }
}

/// Whether `e` is a reason to refuse a token before reading its claims.
fn decode_error(e: &TokenError) -> bool {
    matches!(
        e,
        TokenError::Malformed | TokenError::Outdated(_) | TokenError::UnsupportedVersion(_)
    )
}

/// A verifier's refusal of the other file format as the decoder of its own format words it: a
/// link token refused by the plain verifier, a plain one by the link verifier.
fn as_decoded(e: TokenError) -> TokenError {
    match e {
        TokenError::LinkOnly => TokenError::UnsupportedVersion(LINK_TOKEN_VERSION),
        TokenError::NotALink => TokenError::UnsupportedVersion(TOKEN_VERSION),
        e => e,
    }
}

/// Verifies `token` under `key`, checking that whatever verifies is exactly what [`token::sign`]
/// makes of its claims (so no other spelling of a valid token is accepted) and that
/// [`token::decode_unverified`] fails exactly when verification finds the token malformed.
pub fn check_verify(
    token_text: &str,
    key: &TokenKey,
    expected: &Expected<'_>,
) -> Result<Claims, TokenError> {
    check_format(
        token_text,
        token::decode_unverified(token_text),
        token::verify(token_text, key, expected).map(|v| v.claims().clone()),
        |claims| token::sign(claims, key),
    )
}

/// [`check_verify`] for link tokens: [`token::verify_link`], [`token::decode_link_unverified`]
/// and [`token::sign_link`].
pub fn check_verify_link(
    token_text: &str,
    key: &TokenKey,
    expected: &ExpectedLink<'_>,
) -> Result<LinkClaims, TokenError> {
    let ring = KeyRing::from(key.clone());
    check_format(
        token_text,
        token::decode_link_unverified(token_text),
        token::verify_link(token_text, &ring, expected).map(|v| v.claims().clone()),
        |claims| token::sign_link(claims, key),
    )
}

/// The invariants of [`check_verify`], for one format: its decoder's and its verifier's
/// answers for `token_text`, and its signer.
fn check_format<C: PartialEq + Debug>(
    token_text: &str,
    unverified: Result<C, TokenError>,
    verified: Result<C, TokenError>,
    sign: impl Fn(&C) -> String,
) -> Result<C, TokenError> {
    let seen = verified.as_ref().map_err(|e| as_decoded(e.clone()));
    match (&unverified, &seen) {
        // A token that cannot be decoded (malformed, of an outdated or unknown format) is
        // refused by both for the same reason, before anything else is checked.
        (Err(e), Err(v)) if e == v && decode_error(e) => {}
        (Err(e), _) => panic!("the decoder failed with {e:?} but verify gave {verified:?}"),
        (Ok(_), Err(e)) if decode_error(e) => {
            panic!("verify could not decode ({e:?}) a token that the decoder read")
        }
        (Ok(claims), Ok(v)) => {
            assert_eq!(claims, *v, "verify and the decoder read different claims");
            assert_eq!(
                sign(v),
                token_text,
                "a token verified that is not what sign makes of its claims"
            );
        }
        (Ok(_), Err(_)) => {}
    }
    if token_text.len() > token::MAX_TOKEN_LEN {
        assert!(
            matches!(verified, Err(TokenError::Malformed)),
            "an over-long token was read"
        );
    }
    verified
}
