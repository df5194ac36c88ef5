//! Arbitrary claims under an arbitrary key, as a plain read token and as a link token of a
//! transfer: `sign` then `verify` (`sign_link` then `verify_link`) accepts exactly the request
//! the claims allow and refuses any other for the right reason; neither format stands in for the
//! other; another key, claims spliced onto the old tag, and any edit of the token text are all
//! refused.
#![no_main]

use arbitrary::Arbitrary;
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use libfuzzer_sys::fuzz_target;
use orbit_fuzz::{check_verify, check_verify_link, expected_for, expected_link_for};
use orbit_wire::{
    token::{
        self, Claims, Expected, ExpectedLink, KeyRing, LinkClaims, MasterKey, TokenError, TokenKey,
        KEY_LEN, LINK_TOKEN_VERSION, NONCE_LEN, TAG_LEN, TOKEN_VERSION,
    },
    ByteRange, TransferId,
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
    /// The transfer of the link token made of the same claims.
    transfer: u64,
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
    /// The relay request's transfer, for the link token.
    transfer: Option<u64>,
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
    /// Another transfer: the link token only.
    Transfer(u64),
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
        Splice::Transfer(_) => {}
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
                    | TokenError::LinkOnly
                    | TokenError::Outdated(_)
                    | TokenError::NotYetValid(_)
                    | TokenError::UnknownKey(_)
                    | TokenError::Malformed
            ),
            "spliced claims refused for {refused:?}"
        );
    }

    let link = Link {
        transfer: input.transfer,
        asked: input.request.transfer,
        edit: &input.edit,
        splice: &input.splice,
    };
    check_link(&link, &key, &claims, &request, want, &signed, &changed);
});

/// What of the input the link token's checks use besides the claims.
struct Link<'a> {
    transfer: u64,
    asked: Option<u64>,
    edit: &'a Edit,
    splice: &'a Splice,
}

/// The same claims as a link token of `input.transfer`: everything above holds for it, the
/// transfer is checked last, and it is never a plain read, nor a plain token a link.
fn check_link(
    input: &Link<'_>,
    key: &TokenKey,
    claims: &Claims,
    request: &Expected<'_>,
    plain_verdict: Result<Claims, TokenError>,
    plain: &str,
    changed: &Claims,
) {
    let link_of = |c: &Claims, transfer: u64| LinkClaims {
        read: Claims {
            version: LINK_TOKEN_VERSION,
            ..c.clone()
        },
        transfer_id: TransferId(transfer),
    };
    let link = link_of(claims, input.transfer);
    let signed = token::sign_link(&link, key);
    if signed.len() > token::MAX_TOKEN_LEN {
        assert_eq!(
            check_verify_link(&signed, key, &expected_link_for(&link)).unwrap_err(),
            TokenError::Malformed
        );
        return;
    }
    assert_eq!(token::decode_link_unverified(&signed).unwrap(), link);

    // Any request, with its transfer: the plain token's verdict, then the transfer.
    let transfer_id = TransferId(input.asked.unwrap_or(input.transfer));
    let relay = ExpectedLink {
        read: *request,
        transfer_id,
    };
    let want = match plain_verdict {
        Ok(_) if transfer_id != link.transfer_id => Err(TokenError::WrongTransfer {
            expected: transfer_id,
            got: link.transfer_id,
        }),
        Ok(_) => Ok(link.clone()),
        Err(e) => Err(e),
    };
    assert_eq!(check_verify_link(&signed, key, &relay), want);

    // Neither format stands in for the other, whatever the request.
    assert_eq!(
        check_verify(&signed, key, request).unwrap_err(),
        TokenError::LinkOnly
    );
    assert_eq!(
        token::verify_link(plain, &KeyRing::from(key.clone()), &relay).unwrap_err(),
        TokenError::NotALink
    );

    // Any edit of the text that changes it is refused.
    let exact = expected_link_for(&link);
    let edited = apply(input.edit, &signed);
    if edited != signed {
        assert!(
            check_verify_link(&edited, key, &exact).is_err(),
            "an edited link token verified"
        );
        if let Ok(edited_claims) = token::decode_link_unverified(&edited) {
            assert!(
                check_verify_link(&edited, key, &expected_link_for(&edited_claims)).is_err(),
                "an edited link token verified for its own claims"
            );
        }
    }

    // Changed claims, or another transfer, in front of the original tag are refused.
    let mut forged_claims = link_of(changed, input.transfer);
    forged_claims.read.version = match *input.splice {
        Splice::Version(v) => v,
        _ => LINK_TOKEN_VERSION,
    };
    if let Splice::Transfer(t) = *input.splice {
        forged_claims.transfer_id = TransferId(t);
    }
    if forged_claims != link {
        let raw = URL_SAFE_NO_PAD.decode(&signed).unwrap();
        let mut forged_raw = URL_SAFE_NO_PAD
            .decode(token::sign_link(&forged_claims, key))
            .unwrap();
        let tag_at = forged_raw.len() - TAG_LEN;
        forged_raw[tag_at..].copy_from_slice(&raw[raw.len() - TAG_LEN..]);
        let forged = URL_SAFE_NO_PAD.encode(forged_raw);
        let refused =
            check_verify_link(&forged, key, &expected_link_for(&forged_claims)).unwrap_err();
        assert!(
            matches!(
                refused,
                TokenError::BadSignature
                    | TokenError::UnsupportedVersion(_)
                    | TokenError::NotALink
                    | TokenError::Outdated(_)
                    | TokenError::NotYetValid(_)
                    | TokenError::UnknownKey(_)
                    | TokenError::Malformed
            ),
            "spliced link claims refused for {refused:?}"
        );
    }
}
