//! Path tokens: short-lived, HMAC-SHA256-signed permissions to read one path on one star, held by
//! one other star.
//!
//! A token is `base64url(postcard(Claims) || tag)` with no padding, where `tag` is
//! HMAC-SHA256 over the encoded claims under the *audience* star's token key. Each star's key is
//! derived from the grid's master key and the star's name ([`TokenKey::derive`]), so a star that
//! is broken into holds only its own key and cannot mint tokens for any other star.
//!
//! [`verify`] checks, in this order: the encoding and version, the key id, the tag (in constant
//! time), expiry, issue time (a token issued more than [`MAX_CLOCK_SKEW_SECS`] in the future is
//! refused), audience, holder, path and range. A star also caps a token's whole lifetime, from
//! its issue time to its expiry ([`Claims::lifetime`]), so a token cannot be post-dated to stay
//! usable for longer than the cap. Only it can make a [`VerifiedToken`], which is
//! what the serving code demands before it touches a file.
//!
//! # Formats
//!
//! Three claims formats are signed the same way and told apart by their first byte, the
//! version: [`Claims`] (format [`TOKEN_VERSION`], a plain read of one file), [`TreeClaims`]
//! (format [`TREE_TOKEN_VERSION`], a directory tree) and [`LinkClaims`] (format
//! [`LINK_TOKEN_VERSION`], one link of a fan-out: a file read scoped to one transfer). Each is
//! accepted only by its own verifier ([`verify_with`], [`verify_tree`], [`verify_link`]), so a
//! link token is never a plain read of its path, whatever its lifetime.
//!
//! # Rotation
//!
//! The key id in the claims ([`TokenKey::key_id`]) says which key signed a token. A star holds a
//! [`KeyRing`]: its current key and, during and after a rotation, its previous one.
//! [`verify_with`] picks the key by the token's key id; a token under any other key (one retired
//! two rotations ago, or one this star never had) is refused with [`TokenError::UnknownKey`]
//! before any MAC is computed.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{ByteRange, TransferId};

/// The claims format this crate writes and accepts. Formats 1 (file) and 2 (tree) had no issue
/// time and are refused with [`TokenError::Outdated`].
pub const TOKEN_VERSION: u8 = 3;
/// How far in the future a token's issue time may lie, in seconds, for clocks that disagree a
/// little; a token issued later than that is refused with [`TokenError::NotYetValid`].
pub const MAX_CLOCK_SKEW_SECS: u64 = 60;
/// The claims formats of earlier releases, which carried no issue time.
const OUTDATED_VERSIONS: [u8; 2] = [1, 2];
/// Bytes in a token or master key.
pub const KEY_LEN: usize = 32;
/// Bytes in a token's tag.
pub const TAG_LEN: usize = 32;
/// Bytes in a token's nonce.
pub const NONCE_LEN: usize = 16;
/// The longest token accepted, in characters. A real one is a few hundred.
pub const MAX_TOKEN_LEN: usize = 8192;

const DERIVE_LABEL: &[u8] = b"orbit/1 star token key\0";
const KEY_ID_LABEL: &[u8] = b"orbit/1 key id\0";

type HmacSha256 = Hmac<Sha256>;

/// The grid's master token key, from which every star's key is derived. Only the controller
/// holds it. `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey([u8; KEY_LEN]);

/// One star's token key: it verifies tokens addressed to that star. `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenKey([u8; KEY_LEN]);

/// Why key material could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not 64 hexadecimal digits.
    #[error("a key must be 64 hexadecimal digits, got {0} characters")]
    BadLength(usize),
    /// Not hexadecimal.
    #[error("a key must be hexadecimal digits")]
    NotHex,
}

fn parse_hex_key(text: &str) -> Result<[u8; KEY_LEN], KeyError> {
    let text = text.trim();
    if text.len() != KEY_LEN * 2 {
        return Err(KeyError::BadLength(text.len()));
    }
    let mut key = [0u8; KEY_LEN];
    hex::decode_to_slice(text, &mut key).map_err(|_| KeyError::NotHex)?;
    Ok(key)
}

impl MasterKey {
    /// Wraps 32 random bytes; the caller draws them.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> MasterKey {
        MasterKey(bytes)
    }

    /// Reads a key written by [`MasterKey::to_hex`]; surrounding whitespace is ignored.
    ///
    /// # Errors
    ///
    /// [`KeyError`] when the text is not 64 hexadecimal digits.
    pub fn from_hex(text: &str) -> Result<MasterKey, KeyError> {
        parse_hex_key(text).map(MasterKey)
    }

    /// The key as 64 lowercase hexadecimal digits, for its file.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl TokenKey {
    /// The token key of the star named `star`: HMAC-SHA256 under the master key over a fixed
    /// label and the name.
    pub fn derive(master: &MasterKey, star: &str) -> TokenKey {
        let mut mac = HmacSha256::new_from_slice(&master.0).expect("HMAC takes any key length");
        mac.update(DERIVE_LABEL);
        mac.update(star.as_bytes());
        TokenKey(mac.finalize().into_bytes().into())
    }

    /// Reads a key written by [`TokenKey::to_hex`]; surrounding whitespace is ignored.
    ///
    /// # Errors
    ///
    /// [`KeyError`] when the text is not 64 hexadecimal digits.
    pub fn from_hex(text: &str) -> Result<TokenKey, KeyError> {
        parse_hex_key(text).map(TokenKey)
    }

    /// The key as 64 lowercase hexadecimal digits, for its file.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// A public fingerprint of the key, carried in tokens so a star can tell which of its keys
    /// (or nobody's) signed one.
    pub fn key_id(&self) -> u32 {
        let digest = Sha256::new()
            .chain_update(KEY_ID_LABEL)
            .chain_update(self.0)
            .finalize();
        u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length")
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(***)")
    }
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenKey(id {:08x}, ***)", self.key_id())
    }
}

/// The token keys a star accepts: its current key and, after a rotation, its previous one.
/// `Debug` prints key ids only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRing {
    current: TokenKey,
    previous: Option<TokenKey>,
}

impl KeyRing {
    /// A ring of `current` and, if given, `previous`. A previous key equal to the current one
    /// is dropped.
    pub fn new(current: TokenKey, previous: Option<TokenKey>) -> KeyRing {
        let previous = previous.filter(|p| p.key_id() != current.key_id());
        KeyRing { current, previous }
    }

    /// The current key.
    pub fn current(&self) -> &TokenKey {
        &self.current
    }

    /// The previous key, if any.
    pub fn previous(&self) -> Option<&TokenKey> {
        self.previous.as_ref()
    }

    /// The key whose id is `key_id`, if this ring holds it.
    pub fn by_id(&self, key_id: u32) -> Option<&TokenKey> {
        std::iter::once(&self.current)
            .chain(self.previous.as_ref())
            .find(|k| k.key_id() == key_id)
    }
}

impl From<TokenKey> for KeyRing {
    fn from(current: TokenKey) -> KeyRing {
        KeyRing::new(current, None)
    }
}

/// What a token allows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// [`TOKEN_VERSION`] (or [`LINK_TOKEN_VERSION`] inside a [`LinkClaims`]).
    pub version: u8,
    /// [`TokenKey::key_id`] of the key that signed it.
    pub key_id: u32,
    /// The star that will serve the file (the source).
    pub audience: String,
    /// The star allowed to present it (the destination), as named by its certificate.
    pub holder: String,
    /// The absolute path on the audience star.
    pub path: String,
    /// The bytes that may be read.
    pub range: ByteRange,
    /// Issue time, seconds since the Unix epoch: the token is refused before it (less
    /// [`MAX_CLOCK_SKEW_SECS`]), and its lifetime counts from it.
    pub issued_at: u64,
    /// Expiry, seconds since the Unix epoch; the token is refused from this second on.
    pub not_after: u64,
    /// Random, so that two tokens for the same read differ.
    pub nonce: [u8; NONCE_LEN],
}

impl Claims {
    /// The whole lifetime the token was minted with: expiry minus issue time, in seconds.
    pub fn lifetime(&self) -> u64 {
        self.not_after.saturating_sub(self.issued_at)
    }
}

/// Signs `claims` with `key` into the printable token string.
pub fn sign(claims: &Claims, key: &TokenKey) -> String {
    sign_any(claims, key)
}

/// `base64url(postcard(claims) || HMAC(key, postcard(claims)))`, for any format.
fn sign_any<C: Serialize>(claims: &C, key: &TokenKey) -> String {
    let mut bytes = postcard::to_allocvec(claims).expect("claims always serialize");
    let tag = key.mac().chain_update(&bytes).finalize().into_bytes();
    bytes.extend_from_slice(&tag);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// What the verifier knows independently of the token.
#[derive(Clone, Copy, Debug)]
pub struct Expected<'a> {
    /// This star's name.
    pub audience: &'a str,
    /// The name in the presenting peer's verified certificate.
    pub holder: &'a str,
    /// The path requested.
    pub path: &'a str,
    /// The range requested.
    pub range: ByteRange,
    /// The current time, seconds since the Unix epoch.
    pub now: u64,
}

/// Proof that a token was verified against a request. Only [`verify`] makes one.
#[derive(Debug)]
pub struct VerifiedToken {
    claims: Claims,
}

impl VerifiedToken {
    /// The verified claims.
    pub fn claims(&self) -> &Claims {
        &self.claims
    }
}

/// The precise reason a token was refused. Every one of these is `PermissionDenied` on the
/// wire; the reason goes to the serving star's log.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not base64url, too long, too short, or the claims do not decode.
    #[error("token is malformed")]
    Malformed,
    /// A claims format this star does not know.
    #[error("token version {0} is not supported")]
    UnsupportedVersion(u8),
    /// A claims format of an earlier release, without an issue time.
    #[error("token version {0} is an outdated format without an issue time; mint a new token with this release's orbitctl")]
    Outdated(u8),
    /// Issued more than [`MAX_CLOCK_SKEW_SECS`] in the future (post-dated).
    #[error("token is issued {0} seconds in the future (post-dated)")]
    NotYetValid(u64),
    /// Signed by a key this star does not hold: neither its current nor its previous key.
    #[error(
        "token key id {0:08x} is not this star's current or previous key (retired or unknown)"
    )]
    UnknownKey(u32),
    /// The tag does not match the claims.
    #[error("token signature is invalid")]
    BadSignature,
    /// Past its `not_after`.
    #[error("token expired {0} seconds ago")]
    Expired(u64),
    /// Minted for another source star.
    #[error("token is for star {got:?}, not {expected:?}")]
    WrongAudience {
        /// Our name.
        expected: String,
        /// The token's audience.
        got: String,
    },
    /// Presented by a star that is not its holder.
    #[error("token is held by {holder:?} but was presented by {peer:?}")]
    WrongHolder {
        /// The token's holder.
        holder: String,
        /// The presenting peer.
        peer: String,
    },
    /// Minted for another path.
    #[error("token is for another path")]
    WrongPath,
    /// The requested range is not inside the token's.
    #[error("requested range {start}..{end} is outside the token's range")]
    RangeOutside {
        /// Requested start.
        start: u64,
        /// Requested end.
        end: u64,
    },
    /// A link token (format [`LINK_TOKEN_VERSION`]) presented for a plain read: it allows only
    /// the relay reads of the one fan-out transfer it was minted for.
    #[error(
        "token is a fan-out link token, scoped to one transfer: it allows that transfer's relay \
         reads only, not a plain read"
    )]
    LinkOnly,
    /// A plain read token presented for a relay read, which needs a link token of its transfer.
    #[error("token is a plain read token: a relay read needs a link token scoped to its transfer")]
    NotALink,
    /// A link token minted for another transfer.
    #[error("token is for transfer {got}, not {expected}")]
    WrongTransfer {
        /// The transfer of the relay request.
        expected: TransferId,
        /// The token's transfer.
        got: TransferId,
    },
}

/// Decodes a token without checking anything: only for display and tests. Never act on it.
///
/// # Errors
///
/// [`TokenError::Malformed`], or [`TokenError::Outdated`] / [`TokenError::UnsupportedVersion`]
/// for claims of another format, as [`verify`] would say.
pub fn decode_unverified(token: &str) -> Result<Claims, TokenError> {
    split(token).map(|(claims, _, _)| claims)
}

fn split(token: &str) -> Result<(Claims, Vec<u8>, usize), TokenError> {
    split_as(token, TOKEN_VERSION)
}

/// Decodes a token whose claims must be of format `version` (the first byte of the claims, as
/// postcard writes a `u8`): a token of another format is refused before it is decoded.
fn split_as<C: serde::de::DeserializeOwned>(
    token: &str,
    version: u8,
) -> Result<(C, Vec<u8>, usize), TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed);
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| TokenError::Malformed)?;
    let body_len = bytes
        .len()
        .checked_sub(TAG_LEN)
        .ok_or(TokenError::Malformed)?;
    match bytes.first() {
        None => return Err(TokenError::Malformed),
        Some(&v) if OUTDATED_VERSIONS.contains(&v) && body_len > 0 => {
            return Err(TokenError::Outdated(v))
        }
        Some(&v) if v != version && body_len > 0 => return Err(TokenError::UnsupportedVersion(v)),
        Some(_) => {}
    }
    let (claims, rest) =
        postcard::take_from_bytes::<C>(&bytes[..body_len]).map_err(|_| TokenError::Malformed)?;
    if !rest.is_empty() {
        return Err(TokenError::Malformed);
    }
    Ok((claims, bytes, body_len))
}

/// What every claims format binds a token to, checked in this order: expiry, issue time,
/// audience, holder, path.
struct Bound<'a> {
    issued_at: u64,
    not_after: u64,
    audience: &'a str,
    holder: &'a str,
    path: &'a str,
}

impl Bound<'_> {
    fn check(&self, now: u64, audience: &str, holder: &str, path: &str) -> Result<(), TokenError> {
        if now >= self.not_after {
            return Err(TokenError::Expired(now - self.not_after));
        }
        if self.issued_at > now.saturating_add(MAX_CLOCK_SKEW_SECS) {
            return Err(TokenError::NotYetValid(self.issued_at - now));
        }
        if self.audience != audience {
            return Err(TokenError::WrongAudience {
                expected: audience.to_owned(),
                got: self.audience.to_owned(),
            });
        }
        if self.holder != holder {
            return Err(TokenError::WrongHolder {
                holder: self.holder.to_owned(),
                peer: holder.to_owned(),
            });
        }
        if self.path != path {
            return Err(TokenError::WrongPath);
        }
        Ok(())
    }
}

/// Each claims format's [`Bound`] fields.
macro_rules! bound_of {
    ($($claims:ty),*) => {$(
        impl $claims {
            fn bound(&self) -> Bound<'_> {
                Bound {
                    issued_at: self.issued_at,
                    not_after: self.not_after,
                    audience: &self.audience,
                    holder: &self.holder,
                    path: &self.path,
                }
            }
        }
    )*};
}

bound_of!(Claims, TreeClaims);

/// Checks the tag under the key the token names.
fn check_tag(keys: &KeyRing, key_id: u32, bytes: &[u8], body_len: usize) -> Result<(), TokenError> {
    let key = keys.by_id(key_id).ok_or(TokenError::UnknownKey(key_id))?;
    // verify_slice compares in constant time.
    key.mac()
        .chain_update(&bytes[..body_len])
        .verify_slice(&bytes[body_len..])
        .map_err(|_| TokenError::BadSignature)
}

/// The claims format of tree tokens.
pub const TREE_TOKEN_VERSION: u8 = 4;

/// What a tree token allows: reading the files beneath one directory that its filter admits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeClaims {
    /// [`TREE_TOKEN_VERSION`].
    pub version: u8,
    /// [`TokenKey::key_id`] of the key that signed it.
    pub key_id: u32,
    /// The star that will serve the tree (the source).
    pub audience: String,
    /// The star allowed to present it (the destination).
    pub holder: String,
    /// The tree's top directory on the audience star, absolute.
    pub path: String,
    /// Which entries beneath it may be listed and read.
    pub filter: crate::tree::Filter,
    /// Issue time, seconds since the Unix epoch, as in [`Claims::issued_at`].
    pub issued_at: u64,
    /// Expiry, seconds since the Unix epoch.
    pub not_after: u64,
    /// Random, so that two tokens for the same tree differ.
    pub nonce: [u8; NONCE_LEN],
}

impl TreeClaims {
    /// The whole lifetime the token was minted with: expiry minus issue time, in seconds.
    pub fn lifetime(&self) -> u64 {
        self.not_after.saturating_sub(self.issued_at)
    }
}

/// Signs tree `claims` with `key` into the printable token string.
pub fn sign_tree(claims: &TreeClaims, key: &TokenKey) -> String {
    sign_any(claims, key)
}

/// What a source knows independently of a tree token.
#[derive(Clone, Copy, Debug)]
pub struct ExpectedTree<'a> {
    /// This star's name.
    pub audience: &'a str,
    /// The name in the presenting peer's verified certificate.
    pub holder: &'a str,
    /// The tree's top directory requested.
    pub path: &'a str,
    /// The current time, seconds since the Unix epoch.
    pub now: u64,
}

/// Proof that a tree token was verified against a request. Only [`verify_tree`] makes one.
#[derive(Debug)]
pub struct VerifiedTree {
    claims: TreeClaims,
}

impl VerifiedTree {
    /// The verified claims.
    pub fn claims(&self) -> &TreeClaims {
        &self.claims
    }
}

/// Decodes a tree token without checking anything: for the holder, which reads the filter it
/// was given. Never act on it as a permission.
///
/// # Errors
///
/// [`TokenError::Malformed`], or `UnsupportedVersion` for a token that is not a tree token.
pub fn decode_tree_unverified(token: &str) -> Result<TreeClaims, TokenError> {
    split_as::<TreeClaims>(token, TREE_TOKEN_VERSION).map(|(claims, _, _)| claims)
}

/// Verifies a tree token under whichever key of `keys` its key id names. A single-file token
/// is refused here (`UnsupportedVersion(3)`), and a tree token by [`verify_with`].
///
/// # Errors
///
/// The first check that fails, in the order of [`verify_with`]; the path must equal the
/// token's directory exactly.
pub fn verify_tree(
    token: &str,
    keys: &KeyRing,
    expected: &ExpectedTree<'_>,
) -> Result<VerifiedTree, TokenError> {
    let (claims, bytes, body_len) = split_as::<TreeClaims>(token, TREE_TOKEN_VERSION)?;
    if claims.version != TREE_TOKEN_VERSION {
        return Err(TokenError::UnsupportedVersion(claims.version));
    }
    check_tag(keys, claims.key_id, &bytes, body_len)?;
    claims.bound().check(
        expected.now,
        expected.audience,
        expected.holder,
        expected.path,
    )?;
    Ok(VerifiedTree { claims })
}

/// Verifies `token` under `key` against what the serving star knows.
///
/// # Errors
///
/// The first check that fails, as a [`TokenError`].
pub fn verify(
    token: &str,
    key: &TokenKey,
    expected: &Expected<'_>,
) -> Result<VerifiedToken, TokenError> {
    verify_with(token, &KeyRing::from(key.clone()), expected)
}

/// Verifies `token` under whichever key of `keys` its key id names, against what the serving
/// star knows.
///
/// # Errors
///
/// The first check that fails, as a [`TokenError`]; [`TokenError::UnknownKey`] when the key id
/// is neither the ring's current nor its previous key.
pub fn verify_with(
    token: &str,
    keys: &KeyRing,
    expected: &Expected<'_>,
) -> Result<VerifiedToken, TokenError> {
    let (claims, bytes, body_len) = split(token).map_err(|e| match e {
        TokenError::UnsupportedVersion(LINK_TOKEN_VERSION) => TokenError::LinkOnly,
        e => e,
    })?;
    if claims.version != TOKEN_VERSION {
        return Err(TokenError::UnsupportedVersion(claims.version));
    }
    check_tag(keys, claims.key_id, &bytes, body_len)?;
    check_read(&claims.bound(), claims.range, expected)?;
    Ok(VerifiedToken { claims })
}

/// The checks a file read makes after the tag, in this order: expiry, issue time, audience,
/// holder, path, then the range requested inside the token's.
fn check_read(
    bound: &Bound<'_>,
    range: ByteRange,
    expected: &Expected<'_>,
) -> Result<(), TokenError> {
    bound.check(
        expected.now,
        expected.audience,
        expected.holder,
        expected.path,
    )?;
    if !expected.range.is_within(&range) {
        return Err(TokenError::RangeOutside {
            start: expected.range.start,
            end: expected.range.end,
        });
    }
    Ok(())
}

/// The claims format of link tokens: a file token scoped to one fan-out transfer.
pub const LINK_TOKEN_VERSION: u8 = 5;

/// What a link token allows: the relay reads of one path on one star, by one holder, in one
/// fan-out transfer (or one transfer from several sources). The controller mints one per link
/// of a plan. It is never a plain read: [`verify_with`] refuses it ([`TokenError::LinkOnly`]).
///
/// It is a read's [`Claims`] (its `version` [`LINK_TOKEN_VERSION`]; audience an upstream or
/// the origin, holder the destination that pulls from it) followed by the transfer. postcard
/// encodes a nested struct as its fields in order, so the bytes are format 3's fields, then
/// the transfer id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkClaims {
    /// The read it allows, as a plain token would name it.
    pub read: Claims,
    /// The transfer whose relay requests it allows.
    pub transfer_id: TransferId,
}

/// Signs link `claims` with `key` into the printable token string.
pub fn sign_link(claims: &LinkClaims, key: &TokenKey) -> String {
    sign_any(claims, key)
}

/// What a star serving a relay request knows independently of the token.
#[derive(Clone, Copy, Debug)]
pub struct ExpectedLink<'a> {
    /// The read asked for, as for a plain read.
    pub read: Expected<'a>,
    /// The transfer the relay request names.
    pub transfer_id: TransferId,
}

/// Proof that a link token was verified against a relay request. Only [`verify_link`] makes
/// one.
#[derive(Debug)]
pub struct VerifiedLink {
    claims: LinkClaims,
}

impl VerifiedLink {
    /// The verified claims.
    pub fn claims(&self) -> &LinkClaims {
        &self.claims
    }
}

/// Decodes a link token without checking anything: only for display and tests. Never act on
/// it.
///
/// # Errors
///
/// [`TokenError::Malformed`], or `Outdated` / `UnsupportedVersion` for a token of another
/// format.
pub fn decode_link_unverified(token: &str) -> Result<LinkClaims, TokenError> {
    split_as::<LinkClaims>(token, LINK_TOKEN_VERSION).map(|(claims, _, _)| claims)
}

/// Verifies a link token under whichever key of `keys` its key id names, against a relay
/// request. A plain read token is refused here ([`TokenError::NotALink`]), and a link token by
/// [`verify_with`].
///
/// # Errors
///
/// The first check that fails, in the order of [`verify_with`], then
/// [`TokenError::WrongTransfer`] when the token is for another transfer.
pub fn verify_link(
    token: &str,
    keys: &KeyRing,
    expected: &ExpectedLink<'_>,
) -> Result<VerifiedLink, TokenError> {
    let (claims, bytes, body_len) =
        split_as::<LinkClaims>(token, LINK_TOKEN_VERSION).map_err(|e| match e {
            TokenError::UnsupportedVersion(TOKEN_VERSION) => TokenError::NotALink,
            e => e,
        })?;
    let read = &claims.read;
    if read.version != LINK_TOKEN_VERSION {
        return Err(TokenError::UnsupportedVersion(read.version));
    }
    check_tag(keys, read.key_id, &bytes, body_len)?;
    check_read(&read.bound(), read.range, &expected.read)?;
    if claims.transfer_id != expected.transfer_id {
        return Err(TokenError::WrongTransfer {
            expected: expected.transfer_id,
            got: claims.transfer_id,
        });
    }
    Ok(VerifiedLink { claims })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn master() -> MasterKey {
        MasterKey::from_bytes([7; KEY_LEN])
    }

    fn claims(key: &TokenKey) -> Claims {
        Claims {
            version: TOKEN_VERSION,
            key_id: key.key_id(),
            audience: "star-a".into(),
            holder: "star-b".into(),
            path: "/srv/data/f.bin".into(),
            range: ByteRange::FULL,
            issued_at: NOW - 1,
            not_after: NOW + 60,
            nonce: [9; NONCE_LEN],
        }
    }

    fn expected() -> Expected<'static> {
        Expected {
            audience: "star-a",
            holder: "star-b",
            path: "/srv/data/f.bin",
            range: ByteRange::FULL,
            now: NOW,
        }
    }

    fn flip_bit(token: &str, byte: usize) -> String {
        let mut bytes = URL_SAFE_NO_PAD.decode(token).unwrap();
        bytes[byte] ^= 0x01;
        URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn a_good_token_verifies() {
        let key = TokenKey::derive(&master(), "star-a");
        let token = sign(&claims(&key), &key);
        let verified = verify(&token, &key, &expected()).unwrap();
        assert_eq!(verified.claims(), &claims(&key));
        assert_eq!(decode_unverified(&token).unwrap(), claims(&key));
    }

    #[test]
    fn every_bad_token_is_refused_for_its_reason() {
        let key = TokenKey::derive(&master(), "star-a");
        let good = sign(&claims(&key), &key);
        let tag_start = URL_SAFE_NO_PAD.decode(&good).unwrap().len() - TAG_LEN;

        let check = |token: &str, e: Expected<'_>| verify(token, &key, &e).unwrap_err();
        assert_eq!(check("garbage!", expected()), TokenError::Malformed);
        assert_eq!(check("", expected()), TokenError::Malformed);
        assert_eq!(
            check(&"A".repeat(MAX_TOKEN_LEN + 1), expected()),
            TokenError::Malformed
        );
        assert_eq!(
            check(&flip_bit(&good, tag_start + 3), expected()),
            TokenError::BadSignature
        );
        // One bit of the path, inside the signed claims.
        let raw = URL_SAFE_NO_PAD.decode(&good).unwrap();
        let path_byte = raw.windows(5).position(|w| w == b"f.bin").unwrap();
        let flipped = flip_bit(&good, path_byte);
        assert_eq!(check(&flipped, expected()), TokenError::BadSignature);

        let mut c = claims(&key);
        c.not_after = NOW;
        assert_eq!(check(&sign(&c, &key), expected()), TokenError::Expired(0));

        let mut e = expected();
        e.path = "/srv/data/other.bin";
        assert_eq!(check(&good, e), TokenError::WrongPath);

        let mut e = expected();
        e.audience = "star-c";
        assert!(matches!(check(&good, e), TokenError::WrongAudience { .. }));

        let mut e = expected();
        e.holder = "star-c";
        assert!(matches!(check(&good, e), TokenError::WrongHolder { .. }));

        let mut c = claims(&key);
        c.range = ByteRange { start: 0, end: 100 };
        let mut e = expected();
        e.range = ByteRange {
            start: 50,
            end: 101,
        };
        assert!(matches!(
            check(&sign(&c, &key), e),
            TokenError::RangeOutside { .. }
        ));

        let mut c = claims(&key);
        c.version = 6;
        assert_eq!(
            check(&sign(&c, &key), expected()),
            TokenError::UnsupportedVersion(6)
        );

        // Post-dated beyond the allowed clock skew; within it, accepted.
        let mut c = claims(&key);
        c.issued_at = NOW + MAX_CLOCK_SKEW_SECS + 1;
        c.not_after = c.issued_at + 60;
        assert_eq!(
            check(&sign(&c, &key), expected()),
            TokenError::NotYetValid(MAX_CLOCK_SKEW_SECS + 1)
        );
        c.issued_at = NOW + MAX_CLOCK_SKEW_SECS;
        assert!(verify(&sign(&c, &key), &key, &expected()).is_ok());
    }

    /// The claims of the formats before issue times, as earlier releases signed them.
    #[derive(Serialize)]
    struct OldClaims {
        version: u8,
        key_id: u32,
        audience: String,
        holder: String,
        path: String,
        range: ByteRange,
        not_after: u64,
        nonce: [u8; NONCE_LEN],
    }

    #[test]
    fn a_token_of_an_earlier_format_is_refused_as_outdated() {
        let key = TokenKey::derive(&master(), "star-a");
        let old = OldClaims {
            version: 1,
            key_id: key.key_id(),
            audience: "star-a".into(),
            holder: "star-b".into(),
            path: "/srv/data/f.bin".into(),
            range: ByteRange::FULL,
            not_after: NOW + 60,
            nonce: [9; NONCE_LEN],
        };
        let token = sign_any(&old, &key);
        let err = verify(&token, &key, &expected()).unwrap_err();
        assert_eq!(err, TokenError::Outdated(1));
        assert!(err.to_string().contains("mint a new token"), "{err}");
        assert_eq!(decode_unverified(&token), Err(TokenError::Outdated(1)));
        let ring = KeyRing::from(key.clone());
        assert_eq!(
            verify_tree(&token, &ring, &expected_tree()).unwrap_err(),
            TokenError::Outdated(1)
        );
    }

    #[test]
    fn the_lifetime_counts_from_the_issue_time() {
        let key = TokenKey::derive(&master(), "star-a");
        let mut c = claims(&key);
        c.issued_at = NOW - 7000;
        c.not_after = NOW + 200;
        assert_eq!(c.lifetime(), 7200);
        c.issued_at = c.not_after + 5;
        assert_eq!(c.lifetime(), 0);
    }

    #[test]
    fn another_stars_key_cannot_sign_for_this_star() {
        let key_a = TokenKey::derive(&master(), "star-a");
        let key_b = TokenKey::derive(&master(), "star-b");
        assert_ne!(key_a, key_b);
        // Honest about its key id: unknown here.
        let token = sign(&claims(&key_b), &key_b);
        assert_eq!(
            verify(&token, &key_a, &expected()).unwrap_err(),
            TokenError::UnknownKey(key_b.key_id())
        );
        // Lying about its key id: the tag does not match.
        let mut c = claims(&key_b);
        c.key_id = key_a.key_id();
        let token = sign(&c, &key_b);
        assert_eq!(
            verify(&token, &key_a, &expected()).unwrap_err(),
            TokenError::BadSignature
        );
    }

    #[test]
    fn a_ring_accepts_its_current_and_previous_keys_only() {
        let old = TokenKey::derive(&MasterKey::from_bytes([1; KEY_LEN]), "star-a");
        let prev = TokenKey::derive(&MasterKey::from_bytes([2; KEY_LEN]), "star-a");
        let cur = TokenKey::derive(&master(), "star-a");
        let ring = KeyRing::new(cur.clone(), Some(prev.clone()));
        for key in [&cur, &prev] {
            let token = sign(&claims(key), key);
            assert_eq!(
                verify_with(&token, &ring, &expected()).unwrap().claims(),
                &claims(key)
            );
        }
        // Retired two rotations ago.
        let token = sign(&claims(&old), &old);
        let err = verify_with(&token, &ring, &expected()).unwrap_err();
        assert_eq!(err, TokenError::UnknownKey(old.key_id()));
        assert_eq!(
            err.to_string(),
            format!(
                "token key id {:08x} is not this star's current or previous key (retired or unknown)",
                old.key_id()
            )
        );
        // A retired key claiming a current key id fails on the tag.
        let mut c = claims(&old);
        c.key_id = prev.key_id();
        assert_eq!(
            verify_with(&sign(&c, &old), &ring, &expected()).unwrap_err(),
            TokenError::BadSignature
        );
        // Without a previous key, only the current one.
        let token = sign(&claims(&prev), &prev);
        assert!(matches!(
            verify_with(&token, &KeyRing::from(cur.clone()), &expected()),
            Err(TokenError::UnknownKey(_))
        ));
        let debug = format!("{ring:?}");
        assert!(!debug.contains(&cur.to_hex()) && !debug.contains(&prev.to_hex()));
    }

    #[test]
    fn keys_round_trip_as_hex_and_never_print() {
        let key = TokenKey::derive(&master(), "star-a");
        assert_eq!(
            TokenKey::from_hex(&format!(" {}\n", key.to_hex())).unwrap(),
            key
        );
        assert!(TokenKey::from_hex("abc").is_err());
        assert!(TokenKey::from_hex(&"zz".repeat(32)).is_err());
        assert!(!format!("{key:?}").contains(&key.to_hex()));
        assert!(!format!("{:?}", master()).contains(&master().to_hex()));
    }

    #[test]
    fn golden_claims() {
        let c = Claims {
            version: TOKEN_VERSION,
            key_id: 0x0102_0304,
            audience: "a".into(),
            holder: "b".into(),
            path: "/p".into(),
            range: ByteRange { start: 0, end: 5 },
            issued_at: 200,
            not_after: 300,
            nonce: [0xee; NONCE_LEN],
        };
        let bytes = postcard::to_allocvec(&c).unwrap();
        assert_eq!(
            hex::encode(bytes),
            format!(
                "03848688080161016202{}0005c801ac02{}",
                "2f70",
                "ee".repeat(NONCE_LEN)
            )
        );
    }

    #[test]
    fn derivation_is_pinned() {
        // Changing the derivation would invalidate every deployed star key.
        // Computed independently: HMAC-SHA256(key = 32 bytes of 7, "orbit/1 star token key\0star-a").
        let key = TokenKey::derive(&master(), "star-a");
        assert_eq!(
            key.to_hex(),
            "aa6c159da276494aa792151ca7ec4eee7c2054a0a5a158439c3745110291d003"
        );
    }

    fn tree_claims(key: &TokenKey) -> TreeClaims {
        TreeClaims {
            version: TREE_TOKEN_VERSION,
            key_id: key.key_id(),
            audience: "star-a".into(),
            holder: "star-b".into(),
            path: "/srv/data".into(),
            filter: crate::tree::Filter {
                exclude: vec!["*.tmp".into()],
                include: vec![],
                links: true,
            },
            issued_at: NOW - 1,
            not_after: NOW + 60,
            nonce: [9; NONCE_LEN],
        }
    }

    fn expected_tree() -> ExpectedTree<'static> {
        ExpectedTree {
            audience: "star-a",
            holder: "star-b",
            path: "/srv/data",
            now: NOW,
        }
    }

    #[test]
    fn tree_tokens_verify_and_file_tokens_do_not_stand_in_for_them() {
        let key = TokenKey::derive(&master(), "star-a");
        let ring = KeyRing::from(key.clone());
        let tree = sign_tree(&tree_claims(&key), &key);
        let verified = verify_tree(&tree, &ring, &expected_tree()).unwrap();
        assert_eq!(verified.claims(), &tree_claims(&key));
        // Neither kind is accepted where the other is asked for.
        assert_eq!(
            verify_with(&tree, &ring, &expected()).unwrap_err(),
            TokenError::UnsupportedVersion(TREE_TOKEN_VERSION)
        );
        let file = sign(&claims(&key), &key);
        assert_eq!(
            verify_tree(&file, &ring, &expected_tree()).unwrap_err(),
            TokenError::UnsupportedVersion(TOKEN_VERSION)
        );
        // Each claim is bound.
        let mut other_path = expected_tree();
        other_path.path = "/srv";
        assert_eq!(
            verify_tree(&tree, &ring, &other_path).unwrap_err(),
            TokenError::WrongPath
        );
        let mut other_holder = expected_tree();
        other_holder.holder = "star-c";
        assert!(matches!(
            verify_tree(&tree, &ring, &other_holder),
            Err(TokenError::WrongHolder { .. })
        ));
        let mut later = expected_tree();
        later.now = NOW + 60;
        assert_eq!(
            verify_tree(&tree, &ring, &later).unwrap_err(),
            TokenError::Expired(0)
        );
        // A widened filter breaks the tag.
        let mut widened = tree_claims(&key);
        widened.filter.exclude.clear();
        let forged = {
            let good = URL_SAFE_NO_PAD.decode(&tree).unwrap();
            let mut bytes = postcard::to_allocvec(&widened).unwrap();
            bytes.extend_from_slice(&good[good.len() - TAG_LEN..]);
            URL_SAFE_NO_PAD.encode(bytes)
        };
        assert_eq!(
            verify_tree(&forged, &ring, &expected_tree()).unwrap_err(),
            TokenError::BadSignature
        );
        let other = TokenKey::derive(&master(), "star-c");
        assert!(matches!(
            verify_tree(
                &sign_tree(&tree_claims(&other), &other),
                &ring,
                &expected_tree()
            ),
            Err(TokenError::UnknownKey(_))
        ));
    }

    #[test]
    fn golden_tree_claims() {
        let c = TreeClaims {
            version: 4,
            key_id: 1,
            audience: "a".into(),
            holder: "b".into(),
            path: "/p".into(),
            filter: crate::tree::Filter {
                exclude: vec!["x".into()],
                include: vec![],
                links: true,
            },
            issued_at: 200,
            not_after: 300,
            nonce: [0xee; NONCE_LEN],
        };
        let bytes = postcard::to_allocvec(&c).unwrap();
        assert_eq!(
            hex::encode(bytes),
            // version, key id, audience, holder, path, filter (one exclude, no include,
            // links), issued_at, not_after, nonce.
            format!(
                "04 01 0161 0162 022f70 01017800 01 c801 ac02 {}",
                "ee".repeat(NONCE_LEN)
            )
            .replace(' ', "")
        );
    }

    fn link_claims(key: &TokenKey) -> LinkClaims {
        LinkClaims {
            read: Claims {
                version: LINK_TOKEN_VERSION,
                ..claims(key)
            },
            transfer_id: TransferId(0xf0),
        }
    }

    fn expected_link() -> ExpectedLink<'static> {
        ExpectedLink {
            read: expected(),
            transfer_id: TransferId(0xf0),
        }
    }

    #[test]
    fn a_link_token_round_trips_and_verifies_for_its_transfer_only() {
        let key = TokenKey::derive(&master(), "star-a");
        let ring = KeyRing::from(key.clone());
        let link = sign_link(&link_claims(&key), &key);
        assert_eq!(decode_link_unverified(&link).unwrap(), link_claims(&key));
        let verified = verify_link(&link, &ring, &expected_link()).unwrap();
        assert_eq!(verified.claims(), &link_claims(&key));
        assert_eq!(verified.claims().read.lifetime(), 61);

        let mut other = expected_link();
        other.transfer_id = TransferId(0xf1);
        let err = verify_link(&link, &ring, &other).unwrap_err();
        assert_eq!(
            err,
            TokenError::WrongTransfer {
                expected: TransferId(0xf1),
                got: TransferId(0xf0),
            }
        );
        assert_eq!(
            err.to_string(),
            "token is for transfer 00000000000000f0, not 00000000000000f1"
        );
        // The read checks come first, as for a plain token.
        let mut e = expected_link();
        e.read.path = "/srv/data/other.bin";
        assert_eq!(
            verify_link(&link, &ring, &e).unwrap_err(),
            TokenError::WrongPath
        );
        let mut e = expected_link();
        e.read.holder = "star-c";
        assert!(matches!(
            verify_link(&link, &ring, &e),
            Err(TokenError::WrongHolder { .. })
        ));
        let mut c = link_claims(&key);
        c.read.range = ByteRange { start: 0, end: 10 };
        assert!(matches!(
            verify_link(&sign_link(&c, &key), &ring, &expected_link()),
            Err(TokenError::RangeOutside { .. })
        ));
        let mut e = expected_link();
        e.read.now = NOW + 60;
        assert_eq!(
            verify_link(&link, &ring, &e).unwrap_err(),
            TokenError::Expired(0)
        );
        // Another transfer spliced in front of the tag breaks it.
        let mut widened = link_claims(&key);
        widened.transfer_id = TransferId(0xf1);
        let forged = {
            let good = URL_SAFE_NO_PAD.decode(&link).unwrap();
            let mut bytes = postcard::to_allocvec(&widened).unwrap();
            bytes.extend_from_slice(&good[good.len() - TAG_LEN..]);
            URL_SAFE_NO_PAD.encode(bytes)
        };
        assert_eq!(
            verify_link(&forged, &ring, &other).unwrap_err(),
            TokenError::BadSignature
        );
    }

    #[test]
    fn link_and_plain_tokens_do_not_stand_in_for_each_other() {
        let key = TokenKey::derive(&master(), "star-a");
        let ring = KeyRing::from(key.clone());
        let link = sign_link(&link_claims(&key), &key);
        // A link token is no plain read, nor a tree.
        let err = verify_with(&link, &ring, &expected()).unwrap_err();
        assert_eq!(err, TokenError::LinkOnly);
        assert!(err.to_string().contains("not a plain read"), "{err}");
        assert_eq!(
            decode_unverified(&link),
            Err(TokenError::UnsupportedVersion(LINK_TOKEN_VERSION))
        );
        assert_eq!(
            verify_tree(&link, &ring, &expected_tree()).unwrap_err(),
            TokenError::UnsupportedVersion(LINK_TOKEN_VERSION)
        );
        // A plain token is no link, nor is a tree token or one of an outdated format.
        let plain = sign(&claims(&key), &key);
        let err = verify_link(&plain, &ring, &expected_link()).unwrap_err();
        assert_eq!(err, TokenError::NotALink);
        assert!(err.to_string().contains("needs a link token"), "{err}");
        let tree = sign_tree(&tree_claims(&key), &key);
        assert_eq!(
            verify_link(&tree, &ring, &expected_link()).unwrap_err(),
            TokenError::UnsupportedVersion(TREE_TOKEN_VERSION)
        );
        let mut old = claims(&key);
        old.version = 2;
        assert_eq!(
            verify_link(&sign(&old, &key), &ring, &expected_link()).unwrap_err(),
            TokenError::Outdated(2)
        );
        // Signed by a key the ring does not hold.
        let other = TokenKey::derive(&master(), "star-c");
        assert!(matches!(
            verify_link(
                &sign_link(&link_claims(&other), &other),
                &ring,
                &expected_link()
            ),
            Err(TokenError::UnknownKey(_))
        ));
    }

    #[test]
    fn golden_link_claims() {
        let c = LinkClaims {
            read: Claims {
                version: LINK_TOKEN_VERSION,
                key_id: 0x0102_0304,
                audience: "a".into(),
                holder: "b".into(),
                path: "/p".into(),
                range: ByteRange { start: 0, end: 5 },
                issued_at: 200,
                not_after: 300,
                nonce: [0xee; NONCE_LEN],
            },
            transfer_id: TransferId(0x1234),
        };
        let bytes = postcard::to_allocvec(&c).unwrap();
        assert_eq!(
            hex::encode(bytes),
            // version, key id, audience, holder, path, range, issued_at, not_after, nonce,
            // transfer id: the fields of format 3, then the transfer.
            format!(
                "05 84868808 0161 0162 022f70 0005 c801 ac02 {} b424",
                "ee".repeat(NONCE_LEN)
            )
            .replace(' ', "")
        );
    }
}
