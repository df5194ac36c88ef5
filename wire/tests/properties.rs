//! Property tests for every decoder in orbit-wire: arbitrary bytes never panic and stay inside
//! the caps (including how much one allocation may take), and every message, frame and token
//! round-trips. They are the fast, always-on companion of the libFuzzer targets in `fuzz/`.
// The one unsafe block is the counting allocator below, which measures what decoding allocates.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use bytes::Bytes;
use orbit_wire::{
    chunk_frame_header, chunk_head, decode_body, decode_data_frame, decode_len, encode_frame, path,
    token::{self, Claims, Expected, MasterKey, TokenError, TokenKey, NONCE_LEN, TOKEN_VERSION},
    ByteRange, ControlEvent, ControlRequest, DataFrame, ErrorCode, FileVersion, FrameError,
    ReadRequest, ReplicateFile, StarStatus, TransferId, TransferStatus, WireError, CHUNK_HEAD_MAX,
    CHUNK_SIZE, LEN_PREFIX, MAX_CONTROL_FRAME, MAX_DATA_FRAME,
};
use proptest::prelude::*;
use serde::{de::DeserializeOwned, Serialize};

/// Counts, per thread, the largest single allocation made while [`largest_allocation`] runs.
struct Counting;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; the bookkeeping touches only
// a const-initialised thread-local `Cell`, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(layout.size())));
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(new_size)));
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns the largest single allocation it made on this thread.
fn largest_allocation(f: impl FnOnce()) -> usize {
    LARGEST.with(|l| l.set(0));
    f();
    LARGEST.with(|l| l.get())
}

/// The most one allocation may take while decoding any frame within its cap. Strings and chunk
/// payloads are bounded by the frame itself; the largest is a sequence (`StarStatus::roots`) of
/// empty strings, one byte each on the wire and a `String` each in memory.
const ALLOCATION_CEILING: usize = MAX_CONTROL_FRAME * std::mem::size_of::<String>();

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---- strategies -------------------------------------------------------------------------------

fn text() -> impl Strategy<Value = String> {
    prop_oneof![".{0,24}", "[a-z/._-]{0,12}"]
}

fn range() -> impl Strategy<Value = ByteRange> {
    prop_oneof![
        Just(ByteRange::FULL),
        (any::<u64>(), any::<u64>()).prop_map(|(start, end)| ByteRange { start, end }),
    ]
}

fn wire_error() -> impl Strategy<Value = WireError> {
    (prop::sample::select(ErrorCode::ALL.to_vec()), text())
        .prop_map(|(code, message)| WireError::new(code, message))
}

/// Any transfer id: every `u64` is one.
fn transfer_id() -> impl Strategy<Value = TransferId> {
    any::<u64>().prop_map(TransferId)
}

fn control_request() -> impl Strategy<Value = ControlRequest> {
    let replicate = (
        transfer_id(),
        (text(), text(), text(), text(), text()),
        (any::<Option<[u8; 32]>>(), any::<u32>()),
    )
        .prop_map(
            |(
                transfer_id,
                (source, source_addr, source_path, target_path, token),
                (digest, timeout_secs),
            )| {
                ControlRequest::Replicate(ReplicateFile {
                    transfer_id,
                    source,
                    source_addr,
                    source_path,
                    target_path,
                    token,
                    expect_sha256: digest,
                    timeout_secs,
                })
            },
        );
    prop_oneof![
        (replicate, any::<bool>()).prop_map(|(request, start)| match request {
            ControlRequest::Replicate(cmd) if start => ControlRequest::Start(cmd),
            other => other,
        }),
        Just(ControlRequest::Status),
        transfer_id().prop_map(|transfer_id| ControlRequest::Wait { transfer_id }),
        transfer_id().prop_map(|transfer_id| ControlRequest::Cancel { transfer_id }),
    ]
}

fn transfer_status() -> impl Strategy<Value = TransferStatus> {
    (
        transfer_id(),
        (text(), text(), text()),
        (any::<u64>(), any::<u64>()),
        any::<f64>().prop_filter("NaN", |s| !s.is_nan()),
    )
        .prop_map(
            |(transfer_id, (source, source_path, target_path), (bytes, total), seconds)| {
                TransferStatus {
                    transfer_id,
                    source,
                    source_path,
                    target_path,
                    bytes,
                    total,
                    seconds,
                }
            },
        )
}

fn control_event() -> impl Strategy<Value = ControlEvent> {
    let status = (
        (text(), text(), any::<u32>(), any::<u64>()),
        prop::collection::vec(text(), 0..4),
        (any::<u32>(), any::<u32>()),
        prop::collection::vec(transfer_status(), 0..3),
    )
        .prop_map(
            |((name, version, protocol, uptime_seconds), roots, (t, r), transfers)| {
                ControlEvent::Status(StarStatus {
                    name,
                    version,
                    protocol,
                    uptime_seconds,
                    roots,
                    transfers_in_flight: t,
                    reads_in_flight: r,
                    transfers,
                })
            },
        );
    prop_oneof![
        (any::<u64>(), any::<u64>())
            .prop_map(|(bytes, total)| ControlEvent::Progress { bytes, total }),
        // NaN is never equal to itself; every other f64, infinities included, must round-trip.
        (
            any::<u64>(),
            any::<[u8; 32]>(),
            any::<f64>().prop_filter("NaN", |s| !s.is_nan())
        )
            .prop_map(|(bytes, sha256, seconds)| ControlEvent::Done {
                bytes,
                sha256,
                seconds
            }),
        wire_error().prop_map(ControlEvent::Failed),
        status,
        (any::<u32>(), any::<u64>(), text()).prop_map(|(attempt, after_ms, reason)| {
            ControlEvent::Retrying {
                attempt,
                after_ms,
                reason,
            }
        }),
        (any::<u64>(), any::<u64>())
            .prop_map(|(offset, total)| ControlEvent::Resumed { offset, total }),
        transfer_id().prop_map(|transfer_id| ControlEvent::Started { transfer_id }),
        transfer_status().prop_map(ControlEvent::Following),
    ]
}

fn read_request() -> impl Strategy<Value = ReadRequest> {
    (any::<u64>(), transfer_id(), text(), text(), range()).prop_map(
        |(request_id, transfer_id, path, token, range)| ReadRequest {
            request_id,
            transfer_id,
            path,
            token,
            range,
        },
    )
}

/// Payload sizes around the chunk edges, plus anything smaller.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        prop::sample::select(vec![0usize, 1, CHUNK_SIZE - 1, CHUNK_SIZE])
            .prop_map(|n| vec![0xa5; n]),
    ]
}

fn data_frame() -> impl Strategy<Value = DataFrame> {
    prop_oneof![
        (any::<u64>(), any::<u64>(), any::<(u64, i64, u32, u64)>()).prop_map(
            |(request_id, size, (vsize, mtime_sec, mtime_nsec, inode))| DataFrame::Header {
                request_id,
                size,
                version: FileVersion {
                    size: vsize,
                    mtime_sec,
                    mtime_nsec,
                    inode
                },
            }
        ),
        (any::<u64>(), payload()).prop_map(|(offset, data)| DataFrame::Chunk {
            offset,
            data: Bytes::from(data)
        }),
        any::<[u8; 32]>().prop_map(|sha256| DataFrame::Trailer { sha256 }),
        (any::<u64>(), wire_error())
            .prop_map(|(request_id, error)| DataFrame::Error { request_id, error }),
    ]
}

fn claims_and_key() -> impl Strategy<Value = (Claims, TokenKey)> {
    (
        any::<[u8; 32]>(),
        (text(), text(), text()),
        range(),
        1..u64::MAX,
        any::<[u8; NONCE_LEN]>(),
    )
        .prop_map(
            |(master, (audience, holder, path), range, not_after, nonce)| {
                let key = TokenKey::derive(&MasterKey::from_bytes(master), &audience);
                let claims = Claims {
                    version: TOKEN_VERSION,
                    key_id: key.key_id(),
                    audience,
                    holder,
                    path,
                    range,
                    issued_at: not_after / 2,
                    not_after,
                    nonce,
                };
                (claims, key)
            },
        )
}

/// Exactly the request `claims` allow, one second before expiry.
fn expected_for(claims: &Claims) -> Expected<'_> {
    Expected {
        audience: &claims.audience,
        holder: &claims.holder,
        path: &claims.path,
        range: claims.range,
        now: claims.not_after - 1,
    }
}

// ---- helpers ------------------------------------------------------------------------------------

/// Encodes `msg`, checks the length prefix, decodes the body and returns it with the body.
fn round_trip<T: Serialize + DeserializeOwned>(msg: &T) -> (T, Vec<u8>) {
    let frame = encode_frame(msg).unwrap();
    let (prefix, body) = frame.split_at(LEN_PREFIX);
    assert_eq!(
        decode_len(prefix.try_into().unwrap(), u32::MAX as usize).unwrap(),
        body.len()
    );
    (decode_body(body).unwrap(), body.to_vec())
}

/// Decodes `body` as a `T` and, if it decodes, checks that it re-encodes no longer than it came
/// (postcard's own encoding is the shortest) and to a fixed point.
fn decode_reencode<T: Serialize + DeserializeOwned>(body: &[u8]) {
    if let Ok(msg) = decode_body::<T>(body) {
        let frame = encode_frame(&msg).unwrap();
        assert!(frame.len() - LEN_PREFIX <= body.len());
        let again: T = decode_body(&frame[LEN_PREFIX..]).unwrap();
        assert_eq!(encode_frame(&again).unwrap(), frame);
    }
}

/// Every decoder on the same bytes.
fn every_decoder(body: &[u8]) {
    decode_reencode::<ControlRequest>(body);
    decode_reencode::<ControlEvent>(body);
    decode_reencode::<ReadRequest>(body);
    decode_reencode::<DataFrame>(body);
    let zero_copy = decode_data_frame(Bytes::copy_from_slice(body));
    let owned = decode_body::<DataFrame>(body);
    match (&zero_copy, &owned) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(FrameError::TrailingBytes(a)), Err(FrameError::TrailingBytes(b))) => assert_eq!(a, b),
        (Err(FrameError::Malformed(_)), Err(FrameError::Malformed(_))) => {}
        _ => panic!("zero-copy {zero_copy:?} and owned {owned:?} disagree"),
    }
    // The shortcut for a chunk left in pieces agrees with the whole decoder wherever it answers,
    // and misses no chunk.
    let head = &body[..body.len().min(CHUNK_HEAD_MAX)];
    match (chunk_head(head, body.len()), &zero_copy) {
        (Some((offset, start)), Ok(DataFrame::Chunk { offset: o, data })) => {
            assert_eq!((offset, &body[start..]), (*o, &data[..]));
        }
        (Some(found), other) => panic!("chunk_head {found:?}, decode_data_frame {other:?}"),
        (None, Ok(DataFrame::Chunk { .. })) => panic!("chunk_head missed {zero_copy:?}"),
        (None, _) => {}
    }
    let text = String::from_utf8_lossy(body);
    let _ = token::decode_unverified(&text);
    let _ = path::validate(&text);
}

// ---- properties ---------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn arbitrary_bytes_never_panic_any_decoder(body in prop::collection::vec(any::<u8>(), 0..512)) {
        every_decoder(&body);
    }

    #[test]
    fn arbitrary_bytes_after_a_valid_tag_never_panic(
        tag in 0u8..5,
        body in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        // Most random bytes fail at the variant tag; put a real one first to reach the fields.
        let mut tagged = vec![tag];
        tagged.extend_from_slice(&body);
        every_decoder(&tagged);
    }

    #[test]
    fn length_prefix_respects_the_cap(len in any::<u32>(), cap in prop_oneof![
        Just(MAX_CONTROL_FRAME), Just(MAX_DATA_FRAME), any::<u32>().prop_map(|c| c as usize),
    ]) {
        match decode_len(len.to_be_bytes(), cap) {
            Ok(n) => prop_assert!(n == len as usize && n <= cap),
            Err(FrameError::TooLong { len: l, cap: c }) => {
                prop_assert!(l == len as usize && c == cap && l > cap)
            }
            Err(e) => prop_assert!(false, "unexpected {e:?}"),
        }
    }

    #[test]
    fn tokens_over_the_cap_are_refused_unread(extra in 1usize..64) {
        let key = TokenKey::derive(&MasterKey::from_bytes([1; 32]), "a");
        let long = "A".repeat(token::MAX_TOKEN_LEN + extra);
        let e = Expected { audience: "a", holder: "b", path: "/p", range: ByteRange::FULL, now: 0 };
        prop_assert_eq!(token::verify(&long, &key, &e).unwrap_err(), TokenError::Malformed);
        prop_assert_eq!(token::decode_unverified(&long).unwrap_err(), TokenError::Malformed);
    }
}

fn any_message_body() -> impl Strategy<Value = Vec<u8>> {
    fn body<T: Serialize>(msg: &T) -> Vec<u8> {
        encode_frame(msg).unwrap().split_off(LEN_PREFIX)
    }
    prop_oneof![
        control_request().prop_map(|m| body(&m)),
        control_event().prop_map(|m| body(&m)),
        read_request().prop_map(|m| body(&m)),
        data_frame().prop_map(|m| body(&m)),
    ]
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn decoding_a_capped_frame_allocates_at_most_the_ceiling(
        valid in any_message_body(),
        count in prop_oneof![any::<u64>(), Just(u64::from(u32::MAX)), 0u64..64],
        tail in prop_oneof![
            7 => prop::collection::vec(any::<u8>(), 0..64),
            // As many empty strings (or zeros) as a control frame holds.
            1 => Just(vec![0u8; MAX_CONTROL_FRAME - 128]),
        ],
    ) {
        // A real message cut short anywhere, then a varint that the next field may read as a
        // length or a count (a lie, usually), then anything: every length and count field of
        // every message meets a lie.
        let mut lie = Vec::new();
        let mut c = count;
        while c >= 0x80 {
            lie.push(c as u8 | 0x80);
            c >>= 7;
        }
        lie.push(c as u8);
        let cuts = if tail.len() > 64 { 24 } else { 96 };
        for cut in 0..=valid.len().min(cuts) {
            let mut body = valid[..cut].to_vec();
            body.extend_from_slice(&lie);
            body.extend_from_slice(&tail);
            let largest = largest_allocation(|| every_decoder(&body));
            prop_assert!(largest <= ALLOCATION_CEILING, "{} bytes in one allocation", largest);
        }
    }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn control_requests_round_trip(msg in control_request()) {
        prop_assert_eq!(round_trip(&msg).0, msg);
    }

    #[test]
    fn control_events_round_trip(msg in control_event()) {
        prop_assert_eq!(round_trip(&msg).0, msg);
    }

    #[test]
    fn read_requests_round_trip(msg in read_request()) {
        prop_assert_eq!(round_trip(&msg).0, msg);
    }

    #[test]
    fn data_frames_round_trip_with_and_without_copying(msg in data_frame()) {
        let (owned, body) = round_trip(&msg);
        prop_assert_eq!(&owned, &msg);
        prop_assert!(body.len() <= MAX_DATA_FRAME);
        let shared = Bytes::from(body);
        let zero_copy = decode_data_frame(shared.clone()).unwrap();
        prop_assert_eq!(&zero_copy, &msg);
        if let DataFrame::Chunk { offset, data } = &zero_copy {
            if !data.is_empty() {
                let start = shared.as_ptr() as usize;
                let at = data.as_ptr() as usize;
                prop_assert!(at >= start && at + data.len() <= start + shared.len(), "copied");
            }
            let (head, n) = chunk_frame_header(*offset, data.len());
            let mut split = head[..n].to_vec();
            split.extend_from_slice(data);
            prop_assert_eq!(split, encode_frame(&msg).unwrap());
        }
        every_decoder(&shared);
    }

    #[test]
    fn truncated_or_extended_bodies_are_refused(msg in control_request(), cut in any::<prop::sample::Index>(), extra in 1usize..8) {
        let (_, body) = round_trip(&msg);
        let at = cut.index(body.len());
        prop_assert!(decode_body::<ControlRequest>(&body[..at]).is_err());
        let mut longer = body.clone();
        longer.extend(std::iter::repeat_n(0u8, extra));
        prop_assert!(matches!(
            decode_body::<ControlRequest>(&longer),
            Err(FrameError::TrailingBytes(n)) if n == extra
        ));
    }

    #[test]
    fn a_stream_of_frames_reads_back_in_order(events in prop::collection::vec(control_event(), 0..8)) {
        let stream: Vec<u8> = events.iter().flat_map(|e| encode_frame(e).unwrap()).collect();
        let mut rest = &stream[..];
        let mut read = Vec::new();
        while !rest.is_empty() {
            let len = decode_len(rest[..LEN_PREFIX].try_into().unwrap(), MAX_CONTROL_FRAME).unwrap();
            read.push(decode_body::<ControlEvent>(&rest[LEN_PREFIX..LEN_PREFIX + len]).unwrap());
            rest = &rest[LEN_PREFIX + len..];
        }
        prop_assert_eq!(read, events);
    }

    #[test]
    fn tokens_sign_then_verify((claims, key) in claims_and_key()) {
        let signed = token::sign(&claims, &key);
        let verified = token::verify(&signed, &key, &expected_for(&claims));
        if claims.range.start <= claims.range.end {
            let verified = verified.unwrap();
            prop_assert_eq!(verified.claims(), &claims);
        } else {
            // An inverted range allows nothing, not even itself.
            let refused = matches!(verified, Err(TokenError::RangeOutside { .. }));
            prop_assert!(refused);
        }
        prop_assert_eq!(token::decode_unverified(&signed).unwrap(), claims);
    }

    #[test]
    fn any_single_byte_change_to_a_token_is_refused(
        (claims, key) in claims_and_key().prop_filter("valid range", |(c, _)| c.range.start <= c.range.end),
        at in any::<prop::sample::Index>(),
        to in any::<u8>(),
        flip in 1u8..=255,
    ) {
        let signed = token::sign(&claims, &key);
        let expected = expected_for(&claims);

        // One character of the text replaced by any other byte.
        let mut text = signed.clone().into_bytes();
        let i = at.index(text.len());
        if text[i] != to {
            text[i] = to;
            let text = String::from_utf8_lossy(&text);
            prop_assert!(token::verify(&text, &key, &expected).is_err(), "text edit at {}", i);
        }

        // One byte of the decoded token (claims or tag) changed, re-encoded properly.
        let mut raw = URL_SAFE_NO_PAD.decode(&signed).unwrap();
        let j = at.index(raw.len());
        raw[j] ^= flip;
        let forged = URL_SAFE_NO_PAD.encode(&raw);
        prop_assert!(token::verify(&forged, &key, &expected).is_err(), "byte edit at {}", j);
        if let Ok(forged_claims) = token::decode_unverified(&forged) {
            if forged_claims.not_after > 0 {
                prop_assert!(token::verify(&forged, &key, &expected_for(&forged_claims)).is_err());
            }
        }
    }
}
