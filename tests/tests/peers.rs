//! Who may talk to a star, and for what. A certificate from another CA never completes a
//! handshake; a star certificate cannot command a replication; a controller certificate cannot
//! read; a star dialled under another name is not trusted. Each refusal leaves nothing written
//! and serves no byte.

use std::path::PathBuf;

use orbit_agent::Star;
use orbit_certs::{GridCa, Role};
use orbit_tests::*;
use orbit_wire::{ControlEvent, ControlRequest, ErrorCode, ReplicateFile};
use tempfile::TempDir;

struct Pair {
    grid: Grid,
    src: TempDir,
    dst: TempDir,
    a: Star,
    b: Star,
    /// star-a's file, as a wire path.
    file: String,
}

impl Pair {
    async fn new() -> Pair {
        let grid = Grid::new();
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let file = src.path().join("payload.bin");
        random_file(&file, 100_000);
        let a = grid.spawn_star("star-a", &[src.path()]).await;
        let b = grid.spawn_star("star-b", &[dst.path()]).await;
        Pair {
            grid,
            file: wire(&file),
            src,
            dst,
            a,
            b,
        }
    }

    fn target(&self) -> String {
        wire(&self.dst.path().join("copy.bin"))
    }

    fn payload(&self) -> Vec<u8> {
        std::fs::read(self.src.path().join("payload.bin")).unwrap()
    }

    /// Replicates star-a's file to star-b, commanded by `client`, with a valid token.
    async fn replicate_with(&self, client: &Client) -> anyhow::Result<ControlEvent> {
        let token = self.grid.token("star-a", "star-b", &self.file);
        client
            .replicate(&self.a, &self.file, &self.b, &self.target(), token, None)
            .await
    }

    fn assert_nothing_written(&self) {
        assert_eq!(list_tree(self.dst.path()), Vec::<PathBuf>::new());
    }

    async fn shutdown(self) {
        self.a.shutdown().await;
        self.b.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_never_completes_a_handshake() {
    let p = Pair::new().await;
    let other = GridCa::generate("other").unwrap();

    // A star certificate named star-b, from another CA, by a client that trusts the real grid CA
    // (so that only the star's verification of the client can stop it).
    let impostor = Client::new(
        &p.grid.ca.cert_pem(),
        &other.issue(Role::Star, "star-b").unwrap(),
    );
    let token = p.grid.token("star-a", "star-b", &p.file);
    match impostor.connect(p.a.local_addr(), "star-a").await {
        Err(_) => {}
        Ok(conn) => {
            // TLS 1.3 lets the client finish before the server has judged its certificate; the
            // server's verdict then closes the connection before any stream is answered.
            let read = impostor
                .read(&conn, &read_request(&p.file, token.clone()))
                .await;
            assert!(
                read.is_err(),
                "the star answered a foreign certificate: {read:?}"
            );
            let reason = within("the connection to close", conn.closed()).await;
            assert!(
                !matches!(reason, quinn::ConnectionError::LocallyClosed),
                "{reason}"
            );
        }
    }

    // A controller certificate from another CA cannot command star-b either.
    let foreign_controller = Client::new(
        &p.grid.ca.cert_pem(),
        &other.issue(Role::Controller, "orbitctl").unwrap(),
    );
    let result = p.replicate_with(&foreign_controller).await;
    assert!(
        result.is_err(),
        "star-b answered a foreign controller: {result:?}"
    );
    p.assert_nothing_written();

    // The control: the grid's own star-b reads the same file with the same token.
    let client = p.grid.star_client("star-b");
    let conn = client.connect(p.a.local_addr(), "star-a").await.unwrap();
    let outcome = client
        .read(&conn, &read_request(&p.file, token))
        .await
        .unwrap();
    assert!(outcome.bytes == p.payload());
    conn.close(0u32.into(), b"done");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_star_certificate_cannot_command_a_replication() {
    let p = Pair::new().await;
    // star-b's own certificate, and a peer star's.
    for name in ["star-b", "star-a"] {
        let event = p.replicate_with(&p.grid.star_client(name)).await.unwrap();
        let error = expect_failed(event);
        assert_eq!(error.code, ErrorCode::PermissionDenied, "{name}: {error}");
        p.assert_nothing_written();
    }
    // The control: the controller's certificate may.
    expect_done(p.replicate_with(&p.grid.controller_client()).await.unwrap());
    assert!(std::fs::read(p.target()).unwrap() == p.payload());
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_certificate_cannot_read() {
    let p = Pair::new().await;
    let client = p.grid.controller_client();
    let conn = client.connect(p.a.local_addr(), "star-a").await.unwrap();
    // Held by the controller's own name, so that only the role check refuses.
    for holder in ["orbitctl", "star-b"] {
        let token = p.grid.token("star-a", holder, &p.file);
        let outcome = client
            .read(&conn, &read_request(&p.file, token))
            .await
            .unwrap();
        assert_refused(&outcome, ErrorCode::PermissionDenied);
    }
    conn.close(0u32.into(), b"done");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_star_dialled_under_another_name_fails_the_handshake() {
    let p = Pair::new().await;
    let client = p.grid.star_client("star-b");
    let result = client.connect(p.a.local_addr(), "star-x").await;
    assert!(
        result.is_err(),
        "star-a was accepted as star-x: {:?}",
        result.map(|c| c.remote_address())
    );
    // The control: under its own name it is accepted.
    let conn = client.connect(p.a.local_addr(), "star-a").await.unwrap();
    conn.close(0u32.into(), b"done");
    p.shutdown().await;
}

/// The destination side of the same check: the controller names star-a but gives star-c's
/// address. star-b must not take star-c for star-a, and must say so as an identity failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_address_where_another_star_answers_is_refused() {
    let p = Pair::new().await;
    let c_root = tempfile::tempdir().unwrap();
    // star-c serves a file at the very same path, so a mix-up would copy the wrong bytes.
    let c_file = c_root.path().join("payload.bin");
    std::fs::write(&c_file, b"star-c's file, not star-a's").unwrap();
    let c = p.grid.spawn_star("star-c", &[c_root.path()]).await;

    let request = ControlRequest::Replicate(ReplicateFile {
        transfer_id: orbit_wire::TransferId(rand::random()),
        source: "star-a".into(),
        source_addr: c.local_addr().to_string(),
        source_path: wire(&c_file),
        target_path: p.target(),
        token: p.grid.token("star-a", "star-b", &wire(&c_file)),
        expect_sha256: None,
        timeout_secs: 0,
    });
    let client = p.grid.controller_client();
    let mut events = within("replication", client.control(&p.b, &request))
        .await
        .unwrap();
    let error = expect_failed(events.pop().unwrap());
    p.assert_nothing_written();
    assert!(error.message.contains("star-a"), "{error}");
    // An identity failure (DESIGN "Wire": token or identity failures are PermissionDenied; and
    // agent/src/pool.rs `Pool::get` documents PermissionDenied "when the peer there is not that
    // star").
    assert_eq!(error.code, ErrorCode::PermissionDenied, "{error}");
    c.shutdown().await;
    p.shutdown().await;
}

// ---- certificates that are the grid's but must still be refused --------------------------------

fn options(not_before_days: i64, not_after_days: i64, ca: bool) -> orbit_certs::IssueOptions {
    use std::time::{Duration, SystemTime};
    let at = |days: i64| {
        let delta = Duration::from_secs(days.unsigned_abs() * 86_400);
        if days < 0 {
            SystemTime::now() - delta
        } else {
            SystemTime::now() + delta
        }
    };
    orbit_certs::IssueOptions {
        not_before: at(not_before_days),
        not_after: at(not_after_days),
        ca,
    }
}

/// `client` never gets star-a's file: the handshake fails, or the connection is closed by the
/// star's verdict before any stream is answered.
async fn assert_never_served(p: &Pair, client: &Client, what: &str) {
    let token = p.grid.token("star-a", "star-b", &p.file);
    if let Ok(conn) = client.connect(p.a.local_addr(), "star-a").await {
        let read = client.read(&conn, &read_request(&p.file, token)).await;
        assert!(read.is_err(), "{what}: the star served it: {read:?}");
    }
    // Nor may it command a replication.
    let result = p.replicate_with(client).await;
    assert!(
        result.is_err(),
        "{what}: star-b answered a command: {result:?}"
    );
    p.assert_nothing_written();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_not_yet_valid_and_ca_certificates_are_refused() {
    let p = Pair::new().await;
    let ca_pem = p.grid.ca.cert_pem();
    let cases = [
        ("expired", options(-10, -1, false)),
        ("not yet valid", options(1, 10, false)),
        ("a CA certificate as a leaf", options(-1, 10, true)),
    ];
    for (what, options) in cases {
        for role in [Role::Star, Role::Controller] {
            let name = if role == Role::Star {
                "star-b"
            } else {
                "orbitctl"
            };
            let cert = p.grid.ca.issue_with(role, name, &options).unwrap();
            assert_never_served(&p, &Client::new(&ca_pem, &cert), what).await;
        }
    }
    // The grid CA's own certificate and key, presented as a leaf.
    let ca_as_leaf = orbit_certs::IssuedCert {
        cert_pem: p.grid.ca.cert_pem(),
        key_pem: p.grid.ca.key_pem(),
    };
    assert_never_served(&p, &Client::new(&ca_pem, &ca_as_leaf), "the grid CA itself").await;

    // The control: a standard certificate of the same grid is served.
    let client = p.grid.star_client("star-b");
    let conn = client.connect(p.a.local_addr(), "star-a").await.unwrap();
    let token = p.grid.token("star-a", "star-b", &p.file);
    let outcome = client
        .read(&conn, &read_request(&p.file, token))
        .await
        .unwrap();
    assert!(outcome.bytes == p.payload());
    conn.close(0u32.into(), b"done");
    p.shutdown().await;
}

/// The destination side: a source star whose own certificate has expired is not trusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_star_with_an_expired_certificate_is_refused() {
    let p = Pair::new().await;
    let c_root = tempfile::tempdir().unwrap();
    let c_file = c_root.path().join("payload.bin");
    random_file(&c_file, 1000);
    let mut config = p.grid.star_config("star-c", &[c_root.path()]);
    let expired = p
        .grid
        .ca
        .issue_with(Role::Star, "star-c", &options(-10, -1, false))
        .unwrap();
    config.cert_pem = expired.cert_pem;
    config.key_pem = expired.key_pem;
    let c = Star::spawn(config).await.unwrap();
    let request = ControlRequest::Replicate(ReplicateFile {
        transfer_id: orbit_wire::TransferId(rand::random()),
        source: "star-c".into(),
        source_addr: c.local_addr().to_string(),
        source_path: wire(&c_file),
        target_path: p.target(),
        token: p.grid.token("star-c", "star-b", &wire(&c_file)),
        expect_sha256: None,
        timeout_secs: 0,
    });
    let client = p.grid.controller_client();
    let mut events = within("replication", client.control(&p.b, &request))
        .await
        .unwrap();
    let error = expect_failed(events.pop().unwrap());
    assert_eq!(error.code, ErrorCode::PermissionDenied, "{error}");
    assert!(error.message.contains("star-c"), "{error}");
    p.assert_nothing_written();
    c.shutdown().await;
    p.shutdown().await;
}
