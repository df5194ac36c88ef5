//! Helpers for Orbit's integration tests: a per-test grid (CA, master key, controller
//! certificate), stars spawned on 127.0.0.1:0, and raw QUIC clients that speak the wire protocol
//! as a controller or as a star, so tests can send exactly what a hostile peer would.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};
use std::time::Duration;

use anyhow::Context as _;
use bytes::{Bytes, BytesMut};
use quinn::crypto::rustls::QuicClientConfig;
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use sha2::{Digest, Sha256};

pub mod hostile;
pub mod mount;
pub mod netlab;
pub mod ops;
pub mod process;
pub mod slow_source;
pub mod star_grid;
pub mod unit;

use orbit_agent::{Star, StarConfig};
use orbit_certs::{GridCa, IssuedCert, Role};
use orbit_wire::fanout::RelayRequest;
use orbit_wire::token::{
    self, Claims, LinkClaims, MasterKey, TokenKey, LINK_TOKEN_VERSION, TOKEN_VERSION,
};
use orbit_wire::{
    ByteRange, ControlEvent, ControlRequest, DataFrame, ReadRequest, ReplicateFile, TransferId,
    WireError, MAX_CONTROL_FRAME,
};

/// Sizes around the chunk edges, as every replication test should cover.
pub const INTERESTING_SIZES: [usize; 7] = [
    0,
    1,
    65535,
    65536,
    65537,
    5 * 1024 * 1024 + 3,
    64 * 1024 * 1024,
];

/// How long any single step of a test may take before the test fails. Only fires on failure.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// Logs to the test's output once per process; `RUST_LOG` sets the level (default: warn).
pub fn tracing_guard() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// For a test that cannot get something it needs from the machine (root, a command): outside CI
/// it prints `skipped: this test needs NEEDS: WHY` to stderr and returns, and the caller then
/// returns (or leaves out the check that needed it); under CI it fails the test, so that CI never
/// passes without having run it. CI runs as root with every tool installed (`.ci/run`), so there
/// a missing need is a broken set-up, not a reason to skip.
///
/// `needs` says what the test needs, for what ("root to mount a tmpfs"); `why` is the underlying
/// error. CI is on when the variable `CI` is set, as CI services and `.ci/run`'s callers set it;
/// see [`is_ci`].
///
/// # Panics
///
/// Under CI, always, with a message saying what is missing.
#[track_caller]
pub fn skip_or_fail(needs: &str, why: impl std::fmt::Display) {
    let ci = std::env::var_os("CI");
    eprintln!("{}", skip_notice_or_fail(ci.as_deref(), needs, &why));
}

/// The decision behind [`skip_or_fail`], given the value of `CI` rather than reading it, so that
/// it can be tested without touching the process's environment: returns the line to print when
/// the test may skip, and panics when `ci` says CI is on.
///
/// # Panics
///
/// When [`is_ci`]`(ci)`.
#[track_caller]
pub fn skip_notice_or_fail(
    ci: Option<&std::ffi::OsStr>,
    needs: &str,
    why: &dyn std::fmt::Display,
) -> String {
    match ci {
        Some(value) if is_ci(ci) => panic!(
            "this test needs {needs} (CI={}, so it may not skip): {why}",
            value.to_string_lossy()
        ),
        _ => format!("skipped: this test needs {needs}: {why}"),
    }
}

/// Whether a value of the variable `CI` means CI: set and not empty, `0` or `false` (in any case),
/// which is how a developer turns a CI setting off.
pub fn is_ci(ci: Option<&std::ffi::OsStr>) -> bool {
    ci.is_some_and(|v| !(v.is_empty() || v == "0" || v.eq_ignore_ascii_case("false")))
}

/// Runs `fut`, failing the test if it takes longer than [`STEP_TIMEOUT`].
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(STEP_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {STEP_TIMEOUT:?}"))
}

/// A grid made for one test: its own CA, master key and controller certificate.
#[derive(Debug)]
pub struct Grid {
    /// The grid CA.
    pub ca: GridCa,
    /// The master token key.
    pub master: MasterKey,
    /// The controller's certificate.
    pub controller: IssuedCert,
}

impl Default for Grid {
    fn default() -> Self {
        Self::new()
    }
}

impl Grid {
    /// A fresh grid.
    pub fn new() -> Grid {
        tracing_guard();
        let ca = GridCa::generate("test").expect("CA");
        let controller = ca
            .issue(Role::Controller, "orbitctl")
            .expect("controller cert");
        Grid {
            ca,
            master: MasterKey::from_bytes(rand::random()),
            controller,
        }
    }

    /// The token key of star `name`.
    pub fn key(&self, name: &str) -> TokenKey {
        TokenKey::derive(&self.master, name)
    }

    /// A star's configuration on 127.0.0.1:0 with the given roots.
    pub fn star_config(&self, name: &str, roots: &[&Path]) -> StarConfig {
        let cert = self.ca.issue(Role::Star, name).expect("star cert");
        StarConfig {
            name: name.to_owned(),
            listen: "127.0.0.1:0".parse().unwrap(),
            ca_pem: self.ca.cert_pem(),
            cert_pem: cert.cert_pem,
            key_pem: cert.key_pem,
            token_key: self.key(name),
            roots: roots.iter().map(|p| p.to_path_buf()).collect(),
            state_dir: None,
            previous_token_key: None,
            crl_pem: None,
            read_only_roots: Vec::new(),
            limits: orbit_agent::Limits::default(),
            protected: Vec::new(),
        }
    }

    /// Spawns star `name` on 127.0.0.1:0 serving and storing under `roots`.
    pub async fn spawn_star(&self, name: &str, roots: &[&Path]) -> Star {
        Star::spawn(self.star_config(name, roots))
            .await
            .expect("star spawns")
    }

    /// Claims for a full-file read of `path` on `audience`, held by `holder`, valid for a minute.
    pub fn claims(&self, audience: &str, holder: &str, path: &str) -> Claims {
        Claims {
            version: TOKEN_VERSION,
            key_id: self.key(audience).key_id(),
            audience: audience.to_owned(),
            holder: holder.to_owned(),
            path: path.to_owned(),
            range: ByteRange::FULL,
            issued_at: unix_now(),
            not_after: unix_now() + 60,
            nonce: rand::random(),
        }
    }

    /// A valid token, signed with `audience`'s key.
    pub fn token(&self, audience: &str, holder: &str, path: &str) -> String {
        token::sign(&self.claims(audience, holder, path), &self.key(audience))
    }

    /// A valid link token of fan-out `transfer`, signed with `audience`'s key: what the
    /// controller mints for the link from `audience` to `holder`.
    pub fn link_token(
        &self,
        audience: &str,
        holder: &str,
        path: &str,
        transfer: TransferId,
    ) -> String {
        let claims = LinkClaims {
            read: Claims {
                version: LINK_TOKEN_VERSION,
                ..self.claims(audience, holder, path)
            },
            transfer_id: transfer,
        };
        token::sign_link(&claims, &self.key(audience))
    }

    /// A `Replicate` command telling star-b to pull `src` from `source` into `dst`, with a fresh
    /// transfer id and a token for the path; `timeout_secs` 0 is the default.
    pub fn replicate_request(
        &self,
        source: &Star,
        src: &Path,
        dst: &Path,
        timeout_secs: u32,
    ) -> ControlRequest {
        ControlRequest::Replicate(ReplicateFile {
            transfer_id: orbit_wire::TransferId(rand::random()),
            source: source.name().to_owned(),
            source_addr: source.local_addr().to_string(),
            source_path: wire(src),
            target_path: wire(dst),
            token: self.token(source.name(), "star-b", &wire(src)),
            expect_sha256: None,
            timeout_secs,
        })
    }

    /// A client with the controller's certificate.
    pub fn controller_client(&self) -> Client {
        Client::new(&self.ca.cert_pem(), &self.controller)
    }

    /// A client with a star certificate named `name`, to act as that star.
    pub fn star_client(&self, name: &str) -> Client {
        let cert = self.ca.issue(Role::Star, name).expect("star cert");
        Client::new(&self.ca.cert_pem(), &cert)
    }
}

/// Swaps two paths (one a directory, the other a symlink) atomically with
/// `renameat2(RENAME_EXCHANGE)`, over and over on a thread of its own, until it is stopped or
/// dropped (also when an assertion fails).
#[derive(Debug)]
pub struct Swapper {
    stop: Arc<std::sync::atomic::AtomicBool>,
    swaps: Arc<std::sync::atomic::AtomicU64>,
}

impl Swapper {
    /// Starts swapping `a` and `b`.
    pub fn start(a: PathBuf, b: PathBuf) -> Swapper {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let swaps = Arc::new(AtomicU64::new(0));
        let (s, n) = (stop.clone(), swaps.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                rustix::fs::renameat_with(
                    rustix::fs::CWD,
                    &a,
                    rustix::fs::CWD,
                    &b,
                    rustix::fs::RenameFlags::EXCHANGE,
                )
                .expect("renameat2(RENAME_EXCHANGE)");
                n.fetch_add(1, Ordering::Relaxed);
            }
        });
        Swapper { stop, swaps }
    }

    /// Stops swapping.
    pub fn stop(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many swaps so far.
    pub fn swaps(&self) -> u64 {
        self.swaps.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for Swapper {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A QUIC server endpoint on 127.0.0.1:0 with a real certificate of the grid for star `name`:
/// for tests that play a star themselves.
pub fn star_server(grid: &Grid, name: &str) -> Endpoint {
    let cert = grid.ca.issue(Role::Star, name).expect("star cert");
    let tls = orbit_certs::server_config(
        &grid.ca.cert_pem(),
        &cert.cert_pem,
        &cert.key_pem,
        orbit_wire::ALPN,
    )
    .expect("server TLS config");
    let server = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(tls).expect("QUIC server config"),
    ));
    Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).expect("server endpoint")
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A QUIC client endpoint on 127.0.0.1:0 with some certificate of some CA.
#[derive(Debug)]
pub struct Client {
    /// The endpoint.
    pub endpoint: Endpoint,
}

impl Client {
    /// A client presenting `cert` and trusting `ca_pem`.
    pub fn new(ca_pem: &str, cert: &IssuedCert) -> Client {
        let tls =
            orbit_certs::client_config(ca_pem, &cert.cert_pem, &cert.key_pem, orbit_wire::ALPN)
                .expect("client TLS config");
        let mut endpoint =
            Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("client endpoint");
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(
            QuicClientConfig::try_from(tls).expect("QUIC client config"),
        )));
        Client { endpoint }
    }

    /// Connects to the star `name` at `addr`.
    ///
    /// # Errors
    ///
    /// When the handshake fails.
    pub async fn connect(&self, addr: SocketAddr, name: &str) -> anyhow::Result<Connection> {
        let conn = within("connect", self.endpoint.connect(addr, name)?).await?;
        Ok(conn)
    }

    /// Sends one control request and collects every event until the final one.
    ///
    /// # Errors
    ///
    /// When the connection or the stream fails.
    pub async fn control(
        &self,
        star: &Star,
        request: &ControlRequest,
    ) -> anyhow::Result<Vec<ControlEvent>> {
        self.control_at(star.local_addr(), star.name(), request)
            .await
    }

    /// Tells `dst` to replicate `src_path` from `src` to `dst_path` with `token`, and returns the
    /// final event.
    ///
    /// # Errors
    ///
    /// When the control stream fails.
    pub async fn replicate(
        &self,
        src: &Star,
        src_path: &str,
        dst: &Star,
        dst_path: &str,
        token: String,
        expect: Option<[u8; 32]>,
    ) -> anyhow::Result<ControlEvent> {
        let request = ControlRequest::Replicate(ReplicateFile {
            transfer_id: orbit_wire::TransferId(rand::random()),
            source: src.name().to_owned(),
            source_addr: src.local_addr().to_string(),
            source_path: src_path.to_owned(),
            target_path: dst_path.to_owned(),
            token,
            expect_sha256: expect,
            timeout_secs: 0,
        });
        let mut events = within("replication", self.control(dst, &request)).await?;
        Ok(events.pop().expect("at least one event"))
    }

    /// Sends a read request on `conn` as a star would and collects the answer.
    ///
    /// # Errors
    ///
    /// When the connection or the stream fails.
    pub async fn read(
        &self,
        conn: &Connection,
        request: &ReadRequest,
    ) -> anyhow::Result<ReadOutcome> {
        let mut send = conn.open_uni().await?;
        write_frame(&mut send, request).await?;
        send.finish()?;
        let recv = within("data stream", conn.accept_uni()).await?;
        collect(recv).await
    }

    /// Sends a relay request on `conn` as a fan-out destination would and collects the answer
    /// up to its trailer (the origin's attestation after it is not read).
    ///
    /// # Errors
    ///
    /// When the connection or the stream fails.
    pub async fn relay(
        &self,
        conn: &Connection,
        request: RelayRequest,
    ) -> anyhow::Result<ReadOutcome> {
        let (mut send, recv) = conn.open_bi().await?;
        write_frame(&mut send, &ControlRequest::Relay(request)).await?;
        send.finish()?;
        collect(recv).await
    }
}

/// Reads a data stream's frames into a [`ReadOutcome`], up to the trailer or an error.
async fn collect(mut recv: RecvStream) -> anyhow::Result<ReadOutcome> {
    let mut outcome = ReadOutcome::default();
    loop {
        let frame = match within("data frame", read_data(&mut recv)).await {
            Ok(frame) => frame,
            Err(e) if outcome.error.is_some() => return Err(e),
            Err(e) => return Err(e.context("reading the data stream")),
        };
        match frame {
            DataFrame::Header { size, .. } => outcome.size = Some(size),
            DataFrame::Chunk { data, .. } => outcome.bytes.extend_from_slice(&data),
            DataFrame::Trailer { sha256 } => {
                outcome.sha256 = Some(sha256);
                return Ok(outcome);
            }
            DataFrame::Error { error, .. } => {
                outcome.error = Some(error);
                return Ok(outcome);
            }
            DataFrame::Attested(_) => anyhow::bail!("an attestation before the trailer"),
            DataFrame::Mode(bits) => {
                anyhow::ensure!(outcome.mode.is_none(), "permission bits twice");
                outcome.mode = Some(bits);
            }
        }
    }
}

/// What a raw read request got back.
#[derive(Debug, Default)]
pub struct ReadOutcome {
    /// The header's size, if a header came.
    pub size: Option<u64>,
    /// The permission bits, if the request asked ([`orbit_wire::WANTS_MODE`]) and they came.
    pub mode: Option<u32>,
    /// Every byte of every chunk.
    pub bytes: Vec<u8>,
    /// The trailer's digest, if the read completed.
    pub sha256: Option<[u8; 32]>,
    /// The error frame, if the read was refused or failed.
    pub error: Option<WireError>,
}

/// A read request for the whole file.
pub fn read_request(path: &str, token: String) -> ReadRequest {
    ReadRequest {
        request_id: 1,
        transfer_id: orbit_wire::TransferId(1),
        path: path.to_owned(),
        token,
        range: ByteRange::FULL,
    }
}

/// Writes one frame: length prefix and postcard body.
pub async fn write_frame<T: serde::Serialize>(
    send: &mut SendStream,
    msg: &T,
) -> anyhow::Result<()> {
    send.write_all(&orbit_wire::encode_frame(msg)?).await?;
    Ok(())
}

async fn read_body(recv: &mut RecvStream, cap: usize) -> anyhow::Result<BytesMut> {
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix).await.context("frame length")?;
    let len = orbit_wire::decode_len(prefix, cap)?;
    let mut body = BytesMut::zeroed(len);
    recv.read_exact(&mut body).await.context("frame body")?;
    Ok(body)
}

/// Reads one frame of at most `max` bytes.
pub async fn read_frame<T: serde::de::DeserializeOwned>(
    recv: &mut RecvStream,
    cap: usize,
) -> anyhow::Result<T> {
    Ok(orbit_wire::decode_body(&read_body(recv, cap).await?)?)
}

async fn read_data(recv: &mut RecvStream) -> anyhow::Result<DataFrame> {
    let body: Bytes = read_body(recv, orbit_wire::MAX_DATA_FRAME).await?.freeze();
    Ok(orbit_wire::decode_data_frame(body)?)
}

/// Writes `size` pseudo-random bytes to `path` and returns their SHA-256.
/// Makes `DIR/a` and `DIR/b`, the roots of a source star and a destination star.
pub fn two_roots(dir: &Path) -> (PathBuf, PathBuf) {
    let roots = (dir.join("a"), dir.join("b"));
    std::fs::create_dir_all(&roots.0).unwrap();
    std::fs::create_dir_all(&roots.1).unwrap();
    roots
}

pub fn random_file(path: &Path, size: usize) -> [u8; 32] {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(size as u64);
    let mut data = vec![0u8; size];
    rng.fill_bytes(&mut data);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, &data).unwrap();
    Sha256::digest(&data).into()
}

/// SHA-256 of a file's contents.
pub fn sha256_file(path: &Path) -> [u8; 32] {
    Sha256::digest(std::fs::read(path).unwrap()).into()
}

/// Every entry under `dir`, recursively, as paths relative to it, sorted.
pub fn list_tree(dir: &Path) -> Vec<PathBuf> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            out.push(path.strip_prefix(base).unwrap().to_path_buf());
            if path.is_dir() && !path.is_symlink() {
                walk(base, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The path as a `String`, for the wire.
pub fn wire(path: &Path) -> String {
    path.to_str().expect("test paths are UTF-8").to_owned()
}

/// Unwraps a `Done` event, failing the test with the error otherwise.
pub fn expect_done(event: ControlEvent) -> (u64, [u8; 32]) {
    match event {
        ControlEvent::Done { bytes, sha256, .. } => (bytes, sha256),
        other => panic!("expected Done, got {other:?}"),
    }
}

/// Unwraps a `Failed` event.
pub fn expect_failed(event: ControlEvent) -> WireError {
    match event {
        ControlEvent::Failed(e) => e,
        other => panic!("expected Failed, got {other:?}"),
    }
}

// ------------------------------------------------------------------------------------------------
// Refusal helpers, shared by tokens.rs, paths.rs, special_files.rs, peers.rs and interrupted.rs.
// Appended as one block; nothing above depends on it.
// ------------------------------------------------------------------------------------------------

/// Asserts that a raw read was refused with `code` before anything was served: an error frame,
/// no header, no bytes and no trailer. Returns the error for checks on its message.
#[track_caller]
pub fn assert_refused(outcome: &ReadOutcome, code: orbit_wire::ErrorCode) -> &WireError {
    let error = outcome
        .error
        .as_ref()
        .unwrap_or_else(|| panic!("expected a refusal with {code:?}, got {outcome:?}"));
    assert_eq!(error.code, code, "{error}");
    assert_eq!(outcome.size, None, "a header was sent before the refusal");
    assert!(
        outcome.bytes.is_empty(),
        "{} bytes were served before the refusal",
        outcome.bytes.len()
    );
    assert_eq!(outcome.sha256, None, "a trailer was sent");
    error
}

/// Waits until a temporary file in `dir` holds some bytes, while `replication` runs; panics if
/// the replication ends first.
pub async fn first_bytes<F: std::future::Future>(dir: &Path, replication: std::pin::Pin<&mut F>)
where
    F::Output: std::fmt::Debug,
{
    let mut replication = replication;
    within("the first bytes", async {
        loop {
            tokio::select! {
                ended = &mut replication => panic!("ended before any byte arrived: {ended:?}"),
                // A file's size has no event to wait for; poll it.
                _ = tokio::time::sleep(std::time::Duration::from_millis(1)) => {}
            }
            if part_files(dir)
                .iter()
                .any(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
            {
                break;
            }
        }
    })
    .await;
}

/// The temporary files (`.orbit-*.part`) directly in `dir`.
pub fn part_files(dir: &Path) -> Vec<PathBuf> {
    let mut parts: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            let name = path.file_name().unwrap().to_string_lossy();
            name.starts_with(".orbit-") && name.ends_with(".part")
        })
        .collect();
    parts.sort();
    parts
}

impl Client {
    /// As [`Client::control`], but to the star `name` at `addr`, so that the caller keeps no
    /// borrow of the [`Star`] (and may shut it down while the command runs).
    ///
    /// # Errors
    ///
    /// When the connection or the stream fails.
    pub async fn control_at(
        &self,
        addr: SocketAddr,
        name: &str,
        request: &ControlRequest,
    ) -> anyhow::Result<Vec<ControlEvent>> {
        let conn = self.connect(addr, name).await?;
        let events = Client::control_on(&conn, request).await?;
        conn.close(0u32.into(), b"done");
        Ok(events)
    }

    /// Sends `request` on a new control stream of `conn` and collects the events up to the last.
    ///
    /// # Errors
    ///
    /// When the stream fails.
    pub async fn control_on(
        conn: &Connection,
        request: &ControlRequest,
    ) -> anyhow::Result<Vec<ControlEvent>> {
        let (mut send, mut recv) = conn.open_bi().await?;
        write_frame(&mut send, request).await?;
        send.finish()?;
        let mut events = Vec::new();
        loop {
            let event: ControlEvent = read_frame(&mut recv, MAX_CONTROL_FRAME).await?;
            let last = event.is_final();
            events.push(event);
            if last {
                return Ok(events);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    const NEEDS: &str = "root to mount a tmpfs";
    const WHY: &str = "mount: only root can use \"--types\" option";

    #[test]
    #[should_panic(
        expected = "this test needs root to mount a tmpfs (CI=true, so it may not skip): \
                    mount: only root can use \"--types\" option"
    )]
    fn under_ci_a_missing_need_fails_the_test_and_says_what_is_missing() {
        skip_notice_or_fail(Some(OsStr::new("true")), NEEDS, &WHY);
    }

    #[test]
    fn outside_ci_a_missing_need_skips_and_says_why() {
        // Unset, and the values a developer uses to turn an inherited CI setting off.
        for ci in [None, Some(""), Some("0"), Some("false"), Some("FALSE")] {
            assert_eq!(
                skip_notice_or_fail(ci.map(OsStr::new), NEEDS, &WHY),
                "skipped: this test needs root to mount a tmpfs: \
                 mount: only root can use \"--types\" option",
                "CI={ci:?}"
            );
        }
    }

    #[test]
    fn any_other_value_of_ci_means_ci() {
        // CI services set CI=true, some CI=1; anything else set is taken as CI too, so that a
        // CI run cannot skip by an unexpected spelling.
        for ci in ["true", "1", "yes", "TRUE", "woodpecker"] {
            assert!(is_ci(Some(OsStr::new(ci))), "CI={ci}");
        }
    }
}
