//! Tokens the source star must refuse. Each test acts as a star against a real star-a serving a
//! real file, and sends a read request whose token is wrong in exactly one way, so that one check
//! alone stands between the request and the file. Every refusal is `PermissionDenied` with no
//! header and no byte served.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use orbit_agent::Star;
use orbit_tests::*;
use orbit_wire::fanout::RelayRequest;
use orbit_wire::token::{self, Claims};
use orbit_wire::{ByteRange, ErrorCode, ReadRequest, TransferId};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

/// The file star-a serves; the name is searched for inside tokens, so it must not occur in the
/// temporary directory's name.
const FILE_NAME: &str = "payload.bin";
const FILE_SIZE: usize = 200_000;

/// A grid with star-a serving one real file.
struct Source {
    grid: Grid,
    root: TempDir,
    a: Star,
    /// The served file's wire path.
    path: String,
    /// Its contents.
    bytes: Vec<u8>,
}

async fn source() -> Source {
    let grid = Grid::new();
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join(FILE_NAME);
    random_file(&file, FILE_SIZE);
    let bytes = std::fs::read(&file).unwrap();
    let a = grid.spawn_star("star-a", &[root.path()]).await;
    Source {
        grid,
        root,
        path: wire(&file),
        a,
        bytes,
    }
}

impl Source {
    /// Sends `request` to star-a with a star certificate named `as_star`.
    async fn read_as(&self, as_star: &str, request: &ReadRequest) -> ReadOutcome {
        let client = self.grid.star_client(as_star);
        let conn = client.connect(self.a.local_addr(), "star-a").await.unwrap();
        let outcome = within("read", client.read(&conn, request)).await.unwrap();
        conn.close(0u32.into(), b"done");
        outcome
    }

    /// Reads the served file as star-b with `token`.
    async fn read(&self, token: String) -> ReadOutcome {
        self.read_as("star-b", &read_request(&self.path, token))
            .await
    }

    /// Claims for the served file on star-a, held by star-b.
    fn claims(&self) -> Claims {
        self.grid.claims("star-a", "star-b", &self.path)
    }

    /// Asserts that `token` for the served file, presented by star-b, is refused.
    async fn assert_token_refused(&self, token: String) {
        let outcome = self.read(token).await;
        assert_refused(&outcome, ErrorCode::PermissionDenied);
    }

    /// Asks star-a, as star-b, for the served file with a relay request of fan-out `transfer`
    /// whose origin is star-a, as a fan-out destination asks its origin.
    async fn relay(&self, transfer: TransferId, token: String) -> ReadOutcome {
        let client = self.grid.star_client("star-b");
        let conn = client.connect(self.a.local_addr(), "star-a").await.unwrap();
        let request = RelayRequest {
            request_id: 1,
            transfer_id: transfer,
            origin: "star-a".into(),
            path: self.path.clone(),
            token,
            range: ByteRange::FULL,
        };
        let outcome = within("relay read", client.relay(&conn, request))
            .await
            .unwrap();
        conn.close(0u32.into(), b"done");
        outcome
    }

    async fn shutdown(self) {
        self.a.shutdown().await;
        drop(self.root);
    }
}

/// `token` with one bit flipped in its decoded byte `index`.
fn flip_bit(token: &str, index: usize) -> String {
    let mut raw = URL_SAFE_NO_PAD.decode(token).unwrap();
    raw[index] ^= 0x01;
    URL_SAFE_NO_PAD.encode(raw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_serves_exactly_the_file() {
    let s = source().await;
    let token = s.grid.token("star-a", "star-b", &s.path);
    let outcome = s.read(token).await;
    assert_eq!(outcome.error, None);
    assert_eq!(outcome.size, Some(FILE_SIZE as u64));
    assert!(outcome.bytes == s.bytes, "the bytes served differ");
    let digest: [u8; 32] = Sha256::digest(&s.bytes).into();
    assert_eq!(outcome.sha256, Some(digest), "trailer digest");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_tokens_are_refused() {
    let s = source().await;
    let valid = s.grid.token("star-a", "star-b", &s.path);
    let garbage = [
        "garbage!".to_owned(),
        String::new(),
        "AAAA".to_owned(),
        // Well-formed base64url of the right length, but random bytes.
        URL_SAFE_NO_PAD.encode(
            (0..URL_SAFE_NO_PAD.decode(&valid).unwrap().len())
                .map(|_| rand::random::<u8>())
                .collect::<Vec<u8>>(),
        ),
        // A valid token cut short by one character.
        valid[..valid.len() - 1].to_owned(),
        "A".repeat(token::MAX_TOKEN_LEN + 1),
    ];
    for token in garbage {
        s.assert_token_refused(token).await;
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bit_flipped_in_the_tag_is_refused() {
    let s = source().await;
    let valid = s.grid.token("star-a", "star-b", &s.path);
    let len = URL_SAFE_NO_PAD.decode(&valid).unwrap().len();
    // The first and the last byte of the tag: a verifier that compares a prefix is caught too.
    for index in [len - token::TAG_LEN, len - 1] {
        let tampered = flip_bit(&valid, index);
        assert_eq!(
            token::decode_unverified(&tampered).unwrap(),
            token::decode_unverified(&valid).unwrap(),
            "only the tag may differ"
        );
        s.assert_token_refused(tampered).await;
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bit_flipped_in_the_claimed_path_is_refused() {
    let s = source().await;
    let valid = s.grid.token("star-a", "star-b", &s.path);
    let raw = URL_SAFE_NO_PAD.decode(&valid).unwrap();
    let at = raw
        .windows(FILE_NAME.len())
        .position(|w| w == FILE_NAME.as_bytes())
        .expect("the path is inside the claims");
    // 'p' ^ 1 == 'q': the tampered token claims another real file, and the request asks for that
    // file, so only the tag stands between the request and its bytes.
    let tampered = flip_bit(&valid, at);
    let other = s.root.path().join("qayload.bin");
    std::fs::write(&other, b"the file the tampered token points at").unwrap();
    assert_eq!(
        token::decode_unverified(&tampered).unwrap().path,
        wire(&other)
    );

    let outcome = s
        .read_as("star-b", &read_request(&wire(&other), tampered))
        .await;
    assert_refused(&outcome, ErrorCode::PermissionDenied);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refused() {
    let s = source().await;
    let mut claims = s.claims();
    claims.not_after = unix_now() - 5;
    let expired = token::sign(&claims, &s.grid.key("star-a"));
    s.assert_token_refused(expired).await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_another_path_is_refused() {
    let s = source().await;
    let other = s.root.path().join("other.bin");
    std::fs::write(&other, b"another file star-b may read").unwrap();
    let for_other = s.grid.token("star-a", "star-b", &wire(&other));
    s.assert_token_refused(for_other.clone()).await;

    // The same token does open the file it names: the refusal above was the path check.
    let outcome = s
        .read_as("star-b", &read_request(&wire(&other), for_other))
        .await;
    assert_eq!(outcome.bytes, b"another file star-b may read");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_another_source_star_is_refused() {
    let s = source().await;
    // Minted honestly for star-c.
    let for_c = s.grid.token("star-c", "star-b", &s.path);
    s.assert_token_refused(for_c).await;

    // Addressed to star-c but signed with star-a's own key: only the audience check refuses.
    let mut claims = s.claims();
    claims.audience = "star-c".into();
    let misaddressed = token::sign(&claims, &s.grid.key("star-a"));
    s.assert_token_refused(misaddressed).await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_presented_by_a_star_that_is_not_its_holder_is_refused() {
    let s = source().await;
    let for_b = s.grid.token("star-a", "star-b", &s.path);
    let outcome = s
        .read_as("star-x", &read_request(&s.path, for_b.clone()))
        .await;
    assert_refused(&outcome, ErrorCode::PermissionDenied);

    // Its holder gets the file with the same token.
    let outcome = s.read(for_b).await;
    assert!(outcome.bytes == s.bytes, "the holder was not served");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_signed_with_another_stars_key_is_refused() {
    let s = source().await;
    let key_b = s.grid.key("star-b");

    // Claims star-a's key id, signed with star-b's key.
    let lying = token::sign(&s.claims(), &key_b);
    s.assert_token_refused(lying).await;

    // Honest about being star-b's key.
    let mut claims = s.claims();
    claims.key_id = key_b.key_id();
    let honest = token::sign(&claims, &key_b);
    s.assert_token_refused(honest).await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_outside_the_tokens_is_refused() {
    let s = source().await;
    let mut claims = s.claims();
    claims.range = ByteRange { start: 0, end: 100 };
    let first_100 = token::sign(&claims, &s.grid.key("star-a"));

    // The whole file is more than the token allows.
    s.assert_token_refused(first_100.clone()).await;

    // The range the token names is served, and only that.
    let mut request = read_request(&s.path, first_100);
    request.range = ByteRange { start: 0, end: 100 };
    let outcome = s.read_as("star-b", &request).await;
    assert_eq!(outcome.error, None);
    assert_eq!(outcome.bytes, s.bytes[..100]);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_fails_the_replication_and_names_the_source() {
    let s = source().await;
    let dst_root = tempfile::tempdir().unwrap();
    let b = s.grid.spawn_star("star-b", &[dst_root.path()]).await;
    let mut claims = s.claims();
    claims.not_after = unix_now() - 5;
    let expired = token::sign(&claims, &s.grid.key("star-a"));
    let target = dst_root.path().join("copy.bin");

    let event = s
        .grid
        .controller_client()
        .replicate(&s.a, &s.path, &b, &wire(&target), expired, None)
        .await
        .unwrap();
    let error = expect_failed(event);
    assert_eq!(error.code, ErrorCode::PermissionDenied, "{error}");
    assert!(
        error.message.contains("star-a refused the read"),
        "the message must name the source: {error}"
    );
    assert!(error.message.contains("expired"), "and the reason: {error}");
    assert_eq!(list_tree(dst_root.path()), Vec::<std::path::PathBuf>::new());
    s.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_link_token_is_refused_as_a_plain_read() {
    let s = source().await;
    let transfer = TransferId(rand::random());
    let link = s.grid.link_token("star-a", "star-b", &s.path, transfer);
    // The link it was minted for is served...
    let relayed = s.relay(transfer, link.clone()).await;
    assert_eq!(relayed.error, None);
    assert!(relayed.bytes == s.bytes, "the bytes relayed differ");
    // ...but no plain read of the same path, not even one naming the same transfer.
    let mut request = read_request(&s.path, link);
    request.transfer_id = transfer;
    let outcome = s.read_as("star-b", &request).await;
    let error = assert_refused(&outcome, ErrorCode::PermissionDenied);
    assert!(
        error.message.contains("link token") && error.message.contains("not a plain read"),
        "{error}"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_token_for_one_transfer_opens_no_relay_read_of_another() {
    let s = source().await;
    let minted = TransferId(rand::random());
    let other = TransferId(minted.0 ^ 1);
    let link = s.grid.link_token("star-a", "star-b", &s.path, minted);
    let outcome = s.relay(other, link).await;
    let error = assert_refused(&outcome, ErrorCode::PermissionDenied);
    assert!(
        error
            .message
            .contains(&format!("token is for transfer {minted}, not {other}")),
        "{error}"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_token_still_reads_but_opens_no_relay_read() {
    let s = source().await;
    let plain = s.grid.token("star-a", "star-b", &s.path);
    let outcome = s.read(plain.clone()).await;
    assert_eq!(outcome.error, None);
    assert!(outcome.bytes == s.bytes, "the bytes served differ");
    // A relay read, and the origin's signature at its end, need a link token of the transfer.
    let outcome = s.relay(TransferId(rand::random()), plain).await;
    let error = assert_refused(&outcome, ErrorCode::PermissionDenied);
    assert!(error.message.contains("needs a link token"), "{error}");
    s.shutdown().await;
}
