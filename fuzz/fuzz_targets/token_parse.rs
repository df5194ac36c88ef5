//! Any text as a token, verified under a fixed key: no panic, over-long tokens are refused before
//! decoding, and the only text that verifies is exactly what `sign` makes of its claims. The
//! claims of anything that decodes, signed afresh, verify. The same holds of link tokens.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orbit_fuzz::{check_verify, check_verify_link, expected_for, expected_link_for, fixed_key};
use orbit_wire::{
    token::{self, TOKEN_VERSION},
    ByteRange,
};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let key = fixed_key();
    let fallback = token::Expected {
        audience: "star-a",
        holder: "star-b",
        path: "/srv/data/f.bin",
        range: ByteRange::FULL,
        now: 1_800_000_000,
    };
    match token::decode_link_unverified(&text) {
        Ok(link) => {
            let _ = check_verify_link(&text, &key, &expected_link_for(&link));
        }
        Err(_) => {
            let relay = token::ExpectedLink {
                read: fallback,
                transfer_id: orbit_wire::TransferId(1),
            };
            let _ = check_verify_link(&text, &key, &relay);
        }
    }
    let Ok(claims) = token::decode_unverified(&text) else {
        let _ = check_verify(&text, &key, &fallback);
        return;
    };
    // Expect exactly what the token claims, so that verification runs every check up to the tag.
    let _ = check_verify(&text, &key, &expected_for(&claims));

    let mut honest = claims;
    honest.version = TOKEN_VERSION;
    honest.key_id = key.key_id();
    honest.not_after = honest.not_after.max(1);
    // Issued no later than the second before its expiry, so that one moment verifies it.
    honest.issued_at = honest.issued_at.min(honest.not_after - 1);
    if honest.range.start > honest.range.end {
        honest.range = ByteRange {
            start: honest.range.end,
            end: honest.range.start,
        };
    }
    let fresh = token::sign(&honest, &key);
    if fresh.len() <= token::MAX_TOKEN_LEN {
        let verified = check_verify(&fresh, &key, &expected_for(&honest))
            .expect("claims signed afresh verify");
        assert_eq!(verified, honest);
    }
});
