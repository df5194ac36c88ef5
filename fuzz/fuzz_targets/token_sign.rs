//! Arbitrary claims under an arbitrary key: `sign` then `verify` accepts exactly the request the
//! claims allow and refuses any other for the right reason; another key, claims spliced onto the
//! old tag, and any edit of the token text are all refused.
#![no_main]

use arbitrary::Arbitrary;
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use libfuzzer_sys::fuzz_target;
use orbit_fuzz::{check_verify, expected_for};
use orbit_wire::{
    token::{
        self, Claims, Expected, MasterKey, TokenError, TokenKey, KEY_LEN, NONCE_LEN, TAG_LEN,
        TOKEN_VERSION,
    },
    ByteRange,
};

#[derive(Arbitrary, Debug)]
struct Input {
    master: [u8; KEY_LEN],
    star: String,
    audience: String,
    holder: String,
    path: String,
    range: (u64, u64),
    not_after: u64,
    nonce: [u8; NONCE_LEN],
    /// A request the verifier sees: each field either the token's or another.
    request: Request,
    /// An edit to the token text.
    edit: Edit,
    /// A change to the claims, spliced in front of the original tag.
    splice: Splice,
}

#[derive(Arbitrary, Debug)]
struct Request {
    audience: Option<String>,
    holder: Option<String>,
    path: Option<String>,
    range: Option<(u64, u64)>,
    now: u64,
}

#[derive(Arbitrary, Debug)]
enum Edit {
    Replace { at: usize, byte: u8 },
    Insert { at: usize, byte: u8 },
    Delete { at: usize },
    Truncate { len: usize },
    Append { text: String },
    Swap { a: usize, b: usize },
}

#[derive(Arbitrary, Debug)]
enum Splice {
    Version(u8),
    KeyId(u32),
    Audience(String),
    Holder(String),
    Path(String),
    Range(u64, u64),
    NotAfter(u64),
    Nonce([u8; NONCE_LEN]),
}

fn apply(edit: &Edit, token: &str) -> String {
    let mut bytes = token.as_bytes().to_vec();
    let n = bytes.len().max(1);
    match edit {
        Edit::Replace { at, byte } => {
            if let Some(b) = bytes.get_mut(at % n) {
                *b = *byte;
            }
        }
        Edit::Insert { at, byte } => bytes.insert(at % (bytes.len() + 1), *byte),
        Edit::Delete { at } => {
            if !bytes.is_empty() {
                bytes.remove(at % n);
            }
        }
        Edit::Truncate { len } => bytes.truncate(len % n),
        Edit::Append { text } => bytes.extend_from_slice(text.as_bytes()),
        Edit::Swap { a, b } => {
            if !bytes.is_empty() {
                bytes.swap(a % n, b % n);
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fuzz_target!(|input: Input| {
    let key = TokenKey::derive(&MasterKey::from_bytes(input.master), &input.star);
    let claims = Claims {
        version: TOKEN_VERSION,
        key_id: key.key_id(),
        audience: input.audience,
        holder: input.holder,
        path: input.path,
        range: ByteRange {
            start: input.range.0,
            end: input.range.1,
        },
        issued_at: input.not_after / 2,
        not_after: input.not_after,
        nonce: input.nonce,
    };
    let signed = token::sign(&claims, &key);
    if signed.len() > token::MAX_TOKEN_LEN {
        assert_eq!(
            token::verify(&signed, &key, &expected_for(&claims)).unwrap_err(),
            TokenError::Malformed
        );
        return;
    }
    assert_eq!(token::decode_unverified(&signed).unwrap(), claims);

    // The request the claims allow, just before expiry.
    let exact = expected_for(&claims);
    let verdict = check_verify(&signed, &key, &exact);
    if claims.not_after == 0 {
        assert_eq!(verdict, Err(TokenError::Expired(0)));
    } else if claims.range.start > claims.range.end {
        assert!(
            matches!(verdict, Err(TokenError::RangeOutside { .. })),
            "{verdict:?}"
        );
    } else {
        assert_eq!(
            verdict.expect("the request the claims allow verifies"),
            claims
        );
    }

    // Any request: the first check that fails, in the documented order, or success.
    let r = &input.request;
    let range = r
        .range
        .map_or(claims.range, |(start, end)| ByteRange { start, end });
    let request = Expected {
        audience: r.audience.as_deref().unwrap_or(&claims.audience),
        holder: r.holder.as_deref().unwrap_or(&claims.holder),
        path: r.path.as_deref().unwrap_or(&claims.path),
        range,
        now: r.now,
    };
    let want = if request.now >= claims.not_after {
        Err(TokenError::Expired(request.now - claims.not_after))
    } else if claims.issued_at > request.now.saturating_add(token::MAX_CLOCK_SKEW_SECS) {
        Err(TokenError::NotYetValid(claims.issued_at - request.now))
    } else if request.audience != claims.audience {
        Err(TokenError::WrongAudience {
            expected: request.audience.to_owned(),
            got: claims.audience.clone(),
        })
    } else if request.holder != claims.holder {
        Err(TokenError::WrongHolder {
            holder: claims.holder.clone(),
            peer: request.holder.to_owned(),
        })
    } else if request.path != claims.path {
        Err(TokenError::WrongPath)
    } else if !range.is_within(&claims.range) {
        Err(TokenError::RangeOutside {
            start: range.start,
            end: range.end,
        })
    } else {
        Ok(claims.clone())
    };
    assert_eq!(check_verify(&signed, &key, &request), want);

    // Another star's key: its id is not ours (or, were it ever to collide, the tag is wrong).
    let other = TokenKey::derive(
        &MasterKey::from_bytes(input.master),
        &format!("{}-", input.star),
    );
    let refused = token::verify(&signed, &other, &exact).unwrap_err();
    assert!(
        matches!(
            refused,
            TokenError::UnknownKey(_) | TokenError::BadSignature
        ),
        "{refused:?}"
    );

    // Any edit of the text that changes it is refused, for every request.
    let edited = apply(&input.edit, &signed);
    if edited != signed {
        assert!(
            check_verify(&edited, &key, &exact).is_err(),
            "an edited token verified"
        );
        if let Ok(edited_claims) = token::decode_unverified(&edited) {
            assert!(
                check_verify(&edited, &key, &expected_for(&edited_claims)).is_err(),
                "an edited token verified for its own claims"
            );
        }
    }

    // Changed claims in front of the original tag are refused.
    let mut changed = claims.clone();
    match &input.splice {
        Splice::Version(v) => changed.version = *v,
        Splice::KeyId(k) => changed.key_id = *k,
        Splice::Audience(s) => changed.audience = s.clone(),
        Splice::Holder(s) => changed.holder = s.clone(),
        Splice::Path(s) => changed.path = s.clone(),
        Splice::Range(start, end) => {
            changed.range = ByteRange {
                start: *start,
                end: *end,
            }
        }
        Splice::NotAfter(t) => changed.not_after = *t,
        Splice::Nonce(n) => changed.nonce = *n,
    }
    if changed != claims {
        let raw = URL_SAFE_NO_PAD.decode(&signed).unwrap();
        let mut forged = token::sign(&changed, &key);
        let mut forged_raw = URL_SAFE_NO_PAD.decode(&forged).unwrap();
        let tag_at = forged_raw.len() - TAG_LEN;
        forged_raw[tag_at..].copy_from_slice(&raw[raw.len() - TAG_LEN..]);
        forged = URL_SAFE_NO_PAD.encode(forged_raw);
        let refused = check_verify(&forged, &key, &expected_for(&changed)).unwrap_err();
        assert!(
            matches!(
                refused,
                TokenError::BadSignature
                    | TokenError::UnsupportedVersion(_)
                    | TokenError::Outdated(_)
                    | TokenError::NotYetValid(_)
                    | TokenError::UnknownKey(_)
                    | TokenError::Malformed
            ),
            "spliced claims refused for {refused:?}"
        );
    }
});
