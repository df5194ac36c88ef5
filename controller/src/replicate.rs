//! `orbitctl replicate`: tells the destination star to pull a file from the source star, and
//! reports the verified result.
//!
//! The controller mints a token for the source star naming the destination as holder, sends
//! one `ReplicateFile` on a control stream to the destination, and waits for its final event.
//! File data never passes through the controller; its traffic is a few kilobytes whatever the
//! file's size. [`replicate_file`] is the one client code path, shared with `orbitctl demo`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use orbit_wire::{ControlEvent, ControlRequest, ErrorCode, ReplicateFile, TransferId, WireError};
use rand::RngCore;
use serde::Serialize;

use crate::connect::{self, ConnectError, StarConnection, StreamError, WireBytes};
use crate::grid::{Grid, GridError};
use crate::human;
use crate::progress::{Mode, Progress};
use crate::spec::{parse_sha256, parse_ttl, StarPath};
use crate::token;

/// Copy a file from one star to another, directly between the two stars.
///
/// The destination star pulls the file from the source star over QUIC, checks its size
/// and SHA-256, writes it durably and only then renames it into place; orbitctl prints
/// one line and exits 0 only after that. The file's bytes never pass through orbitctl.
///
/// Example:
///
///   orbitctl --grid /etc/orbit/grid replicate star-a:/srv/data/f.bin star-b:/srv/backup/f.bin
///
/// prints
///
///   star-b: star-a:/srv/data/f.bin -> /srv/backup/f.bin: 268435456 bytes in 1.23 s (208.1 MiB/s), sha256 9f86d0...
///
/// On a terminal, a progress bar (bytes, rate, ETA) shows on stderr until then. On failure it
/// exits 1 and prints one line on stderr naming the star that failed and why. Ctrl-C cancels
/// the transfer: the destination stops and removes its temporary file (exit code 130). If
/// orbitctl dies or loses its connection, the destination carries on; `orbitctl wait ID` finds
/// the result.
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The file to copy: the source star's name and the absolute path on it, e.g.
    /// star-a:/srv/data/f.bin.
    #[arg(value_name = "SRC:/abs/path", value_parser = StarPath::parse)]
    pub source: StarPath,

    /// Where to put it: the destination star's name and the absolute path on it, e.g.
    /// star-b:/srv/backup/f.bin. An existing file there is replaced only by a verified copy.
    #[arg(value_name = "DST:/abs/path", value_parser = StarPath::parse)]
    pub target: StarPath,

    /// Fail unless the file's SHA-256 is this (64 hexadecimal digits); nothing is published
    /// at the target if it differs.
    #[arg(long, value_name = "HEX", value_parser = parse_sha256)]
    pub expect_sha256: Option<[u8; 32]>,

    /// How long the source star accepts the read token, in seconds. Default: defaults.ttl_secs
    /// in grid.toml, or 300.
    #[arg(long, value_name = "SECS", value_parser = parse_ttl)]
    pub ttl: Option<u64>,

    /// Print JSON on stdout instead of the progress bar and the summary line: one progress
    /// event per line ({"event":"progress","transfer_id":..,"bytes":..,"total":..,"seconds":..}),
    /// then one result object ({"ok":true,..} or {"ok":false,"code":..,"message":..}).
    #[arg(long)]
    pub json: bool,

    /// How long the destination keeps retrying (a lost connection, a source restarting)
    /// without making progress before it gives up with DeadlineExceeded, in seconds. Each retry
    /// is shown on stderr; a retry resumes from the bytes already received.
    #[arg(long, value_name = "SECS", default_value_t = 120, value_parser = clap::value_parser!(u32).range(1..))]
    pub timeout: u32,
    /// Print nothing but errors: no progress bar, no summary line. The exit code tells.
    #[arg(long, short, conflicts_with = "json")]
    pub quiet: bool,

    /// Start the replication, print its transfer id and return at once; the destination star
    /// carries on alone. Follow it with `orbitctl wait ID`, stop it with `orbitctl cancel ID`.
    #[arg(long)]
    pub detach: bool,
}

/// A new transfer id, drawn at random. From the operating system's generator: stars refuse an id
/// they already know, and any number of controllers may start transfers on the same star.
pub fn new_transfer_id() -> TransferId {
    TransferId(rand::rngs::OsRng.next_u64())
}

/// One replication, fully specified: the destination to dial and the command it receives.
#[derive(Debug, Clone)]
pub struct ReplicateJob {
    /// The destination star's name, which its certificate must carry.
    pub destination: String,
    /// Where to dial the destination.
    pub destination_addr: SocketAddr,
    /// The command, exactly as it goes on the wire.
    pub command: ReplicateFile,
}

/// A verified, durable copy, as the destination reported it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Replicated {
    /// The file's size.
    pub bytes: u64,
    /// The file's SHA-256.
    pub sha256: [u8; 32],
    /// The destination's wall time from the command to the published file.
    pub seconds: f64,
    /// The controller's own traffic for the whole exchange.
    pub wire: WireBytes,
    /// Bytes the destination already held when it resumed, summed over resumes: not sent again.
    pub resumed_bytes: u64,
}

/// Why a replication failed. Every message names the star concerned.
#[derive(Debug, thiserror::Error)]
pub enum ReplicateError {
    /// The grid could not be read or does not list a star.
    #[error(transparent)]
    Grid(#[from] GridError),
    /// The destination star could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The destination star reported a failure; nothing was published. The star's message says
    /// what failed in full (it names the source when the source refused), so the code's words are
    /// printed only when there is no message.
    #[error("{star}: replication failed: {}", if error.message.is_empty() { error.code.describe() } else { &error.message })]
    Failed {
        /// The destination star.
        star: String,
        /// Its report; names the source star when the source refused.
        error: WireError,
    },
    /// The control stream or connection to the destination failed.
    #[error("{star}: replication failed: {error}")]
    Stream {
        /// The destination star.
        star: String,
        /// What happened.
        error: StreamError,
    },
    /// The destination answered with something that is not a replication result.
    #[error("{star}: unexpected answer to a replication command: {what}")]
    Unexpected {
        /// The destination star.
        star: String,
        /// The answer.
        what: String,
    },
    /// The replication was cancelled with Ctrl-C; nothing was published.
    #[error("{star}: replication cancelled (interrupted); nothing was published at {target}")]
    Interrupted {
        /// The destination star.
        star: String,
        /// The target path.
        target: String,
    },
    /// The destination reported another digest than the one expected.
    #[error(
        "{star}: reported sha256 {} but {} was expected",
        hex::encode(got),
        hex::encode(want)
    )]
    DigestMismatch {
        /// The destination star.
        star: String,
        /// Its digest.
        got: [u8; 32],
        /// The expected one.
        want: [u8; 32],
    },
}

impl ReplicateError {
    /// The wire code for `--json` output.
    pub fn code(&self) -> ErrorCode {
        match self {
            ReplicateError::Grid(e) => e.code(),
            ReplicateError::Connect(e) => e.code(),
            ReplicateError::Failed { error, .. } => error.code,
            ReplicateError::Stream { error, .. } => error.code(),
            ReplicateError::Unexpected { .. } => ErrorCode::Internal,
            ReplicateError::DigestMismatch { .. } => ErrorCode::DataLoss,
            ReplicateError::Interrupted { .. } => ErrorCode::Cancelled,
        }
    }
}

/// Runs `orbitctl replicate` on the grid at `grid_dir`: prints the summary line or JSON.
///
/// # Errors
///
/// [`ReplicateError`]; with `--json` the failure object has been printed already.
pub async fn run(grid_dir: &Path, args: Args) -> Result<(), ReplicateError> {
    match execute(grid_dir, &args).await {
        Ok((job, Some(done))) => {
            if args.json {
                println!("{}", success_json(&job, &done));
            } else if !args.quiet {
                println!("{}", summary_line(&job, &done));
            }
            Ok(())
        }
        Ok((job, None)) => {
            if args.json {
                println!("{}", detached_json(&job));
            } else if !args.quiet {
                println!("{}", job.command.transfer_id);
            }
            Ok(())
        }
        Err(e) => {
            if args.json {
                println!("{}", failure_json(e.code(), &e.to_string()));
            }
            Err(e)
        }
    }
}

/// Runs the replication `args` describe; `None` when detached.
async fn execute(
    grid_dir: &Path,
    args: &Args,
) -> Result<(ReplicateJob, Option<Replicated>), ReplicateError> {
    // From here on Ctrl-C cancels the transfer rather than killing orbitctl.
    let mut interrupt = interrupt_signal();
    let grid = Grid::open(grid_dir)?;
    let (source, target) = (&args.source, &args.target);
    let source_addr = grid.star(&source.star)?;
    let target_addr = grid.star(&target.star)?;
    let master = grid.master_key()?;
    let tls = grid.client_tls()?;
    let ttl = args.ttl.unwrap_or(grid.ttl_secs());
    let token = token::mint(&master, &source.star, &target.star, &source.path, ttl);
    let destination_addr = connect::resolve(&target.star, target_addr).await?;
    let job = ReplicateJob {
        destination: target.star.clone(),
        destination_addr,
        command: ReplicateFile {
            transfer_id: new_transfer_id(),
            source: source.star.clone(),
            source_addr: source_addr.to_string(),
            source_path: source.path.clone(),
            target_path: target.path.clone(),
            token,
            expect_sha256: args.expect_sha256,
            timeout_secs: args.timeout,
        },
    };
    if args.detach {
        start_detached(tls, &job).await?;
        return Ok((job, None));
    }
    let mut progress = Progress::new(Mode::choose(args.json, args.quiet), job.command.transfer_id);
    let finished = {
        let quiet = args.quiet;
        let work = replicate_observed(tls.clone(), &job, |event| match event {
            ControlEvent::Progress { bytes, total } => progress.update(*bytes, *total),
            other => {
                if let Some(line) = event_line(&job.destination, other).filter(|_| !quiet) {
                    progress.clear();
                    eprintln!("{line}");
                }
            }
        });
        tokio::select! {
            result = work => Some(result),
            _ = interrupt.recv() => None,
        }
    };
    progress.clear();
    let done = match finished {
        Some(result) => result?,
        None => cancel_interrupted(tls, &job, &mut interrupt).await?,
    };
    Ok((job, Some(done)))
}

/// SIGINT as a stream; if it cannot be installed, Ctrl-C keeps its default (it kills orbitctl,
/// and the transfer carries on: `orbitctl cancel` still stops it).
fn interrupt_signal() -> Interrupt {
    use tokio::signal::unix::{signal, SignalKind};
    Interrupt(signal(SignalKind::interrupt()).ok())
}

/// SIGINT, or nothing if it could not be caught.
#[derive(Debug)]
struct Interrupt(Option<tokio::signal::unix::Signal>);

impl Interrupt {
    async fn recv(&mut self) {
        match &mut self.0 {
            Some(signal) => {
                signal.recv().await;
            }
            None => std::future::pending().await,
        }
    }
}

/// How long cancelling an interrupted transfer may take before orbitctl gives up on it.
const CANCEL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// After Ctrl-C: tells the destination to cancel the transfer and waits until it has cleaned up.
/// A second Ctrl-C stops waiting.
async fn cancel_interrupted(
    tls: Arc<rustls::ClientConfig>,
    job: &ReplicateJob,
    interrupt: &mut Interrupt,
) -> Result<Replicated, ReplicateError> {
    let star = job.destination.clone();
    let interrupted = || ReplicateError::Interrupted {
        star: job.destination.clone(),
        target: job.command.target_path.clone(),
    };
    let cancel = async {
        let conn = StarConnection::connect(tls, &job.destination, job.destination_addr).await?;
        let request = ControlRequest::Cancel {
            transfer_id: job.command.transfer_id,
        };
        let result = conn.control(&request, |_, _| {}).await;
        let wire = conn.wire_bytes();
        conn.close().await;
        match result {
            // Nothing to cancel: the command never reached the star, or the transfer was
            // cancelled already.
            Ok(ControlEvent::Failed(error))
                if matches!(error.code, ErrorCode::Cancelled | ErrorCode::NotFound) =>
            {
                Err(interrupted())
            }
            // Too late: the copy is complete and verified.
            other => conclude(job, other, wire, 0),
        }
    };
    tokio::select! {
        result = tokio::time::timeout(CANCEL_TIMEOUT, cancel) => match result {
            Ok(result) => result,
            Err(_) => Err(ReplicateError::Failed {
                star,
                error: WireError::new(ErrorCode::DeadlineExceeded, format!(
                    "interrupted, but the star did not confirm the cancellation within {} s: \
                     check with orbitctl wait {}", CANCEL_TIMEOUT.as_secs(), job.command.transfer_id)),
            }),
        },
        _ = interrupt.recv() => Err(interrupted()),
    }
}

/// Sends `job` as `Start`: the destination begins the transfer and answers at once.
///
/// # Errors
///
/// [`ReplicateError`] naming the destination star.
pub async fn start_detached(
    tls: Arc<rustls::ClientConfig>,
    job: &ReplicateJob,
) -> Result<(), ReplicateError> {
    let conn = StarConnection::connect(tls, &job.destination, job.destination_addr).await?;
    let result = conn
        .control(&ControlRequest::Start(job.command.clone()), |_, _| {})
        .await;
    conn.close().await;
    let star = job.destination.clone();
    match result {
        Ok(ControlEvent::Started { transfer_id }) if transfer_id == job.command.transfer_id => {
            Ok(())
        }
        Ok(ControlEvent::Failed(error)) => Err(ReplicateError::Failed { star, error }),
        Ok(other) => Err(ReplicateError::Unexpected {
            star,
            what: format!("{other:?}"),
        }),
        Err(error) => Err(ReplicateError::Stream { star, error }),
    }
}

/// Sends `job` to its destination star with the controller's TLS configuration `tls` and
/// waits for the verified result. The connection is closed cleanly either way.
///
/// Connecting is bounded by [`connect::CONNECT_TIMEOUT`]; the transfer itself is not, but a
/// destination that stops answering ends it within [`connect::MAX_IDLE_TIMEOUT`].
///
/// # Errors
///
/// [`ReplicateError`] naming the destination star.
pub async fn replicate_file(
    tls: Arc<rustls::ClientConfig>,
    job: &ReplicateJob,
) -> Result<Replicated, ReplicateError> {
    let transfer = job.command.transfer_id;
    replicate_observed(tls, job, |event| match event {
        ControlEvent::Progress { bytes, total } => {
            tracing::debug!(%transfer, bytes, total, "progress");
        }
        other => {
            if let Some(line) = event_line(&job.destination, other) {
                eprintln!("{line}");
            }
        }
    })
    .await
}

/// The line a person sees for an event that is neither progress nor final: a retry, or a
/// resume (`star-b: retrying (attempt 1) in 0.2 s: ...`).
pub fn event_line(destination: &str, event: &ControlEvent) -> Option<String> {
    match event {
        ControlEvent::Retrying {
            attempt,
            after_ms,
            reason,
        } => Some(format!(
            "{destination}: retrying (attempt {attempt}) in {:.1} s: {reason}",
            *after_ms as f64 / 1000.0
        )),
        ControlEvent::Resumed { offset, total } => Some(format!(
            "{destination}: resuming at byte {offset} of {total}"
        )),
        _ => None,
    }
}

/// As [`replicate_file`], with `on_event` called on every event that is not final (progress,
/// retries, resumes).
///
/// # Errors
///
/// As [`replicate_file`].
pub async fn replicate_observed(
    tls: Arc<rustls::ClientConfig>,
    job: &ReplicateJob,
    mut on_event: impl FnMut(&ControlEvent),
) -> Result<Replicated, ReplicateError> {
    let conn = StarConnection::connect(tls, &job.destination, job.destination_addr).await?;
    let transfer = job.command.transfer_id;
    tracing::info!(
        %transfer,
        destination = %job.destination,
        source = %job.command.source,
        source_path = %job.command.source_path,
        target_path = %job.command.target_path,
        "replication started"
    );
    let request = ControlRequest::Replicate(job.command.clone());
    let mut resumed_bytes = 0u64;
    let result = conn
        .control_events(&request, |event| {
            if let ControlEvent::Resumed { offset, .. } = event {
                resumed_bytes += offset;
            }
            on_event(event);
        })
        .await;
    let wire = conn.wire_bytes();
    conn.close().await;
    conclude(job, result, wire, resumed_bytes)
}

/// The verified result of `job` from the destination's final event `result`, or why not.
///
/// # Errors
///
/// [`ReplicateError`] naming the destination star.
pub fn conclude(
    job: &ReplicateJob,
    result: Result<ControlEvent, StreamError>,
    wire: WireBytes,
    resumed_bytes: u64,
) -> Result<Replicated, ReplicateError> {
    let transfer = job.command.transfer_id;
    let star = job.destination.clone();
    match result {
        Ok(ControlEvent::Done {
            bytes,
            sha256,
            seconds,
        }) => {
            if let Some(want) = job.command.expect_sha256.filter(|want| *want != sha256) {
                return Err(ReplicateError::DigestMismatch {
                    star,
                    got: sha256,
                    want,
                });
            }
            tracing::info!(%transfer, bytes, sha256 = %hex::encode(sha256), seconds, "replication completed");
            Ok(Replicated {
                bytes,
                sha256,
                seconds,
                wire,
                resumed_bytes,
            })
        }
        Ok(ControlEvent::Failed(error)) => Err(ReplicateError::Failed { star, error }),
        Ok(other) => Err(ReplicateError::Unexpected {
            star,
            what: format!("{other:?}"),
        }),
        Err(error) => Err(ReplicateError::Stream { star, error }),
    }
}

/// The one-line summary of a successful replication:
/// `star-b: star-a:/srv/data/f.bin -> /srv/backup/f.bin: 268435456 bytes in 1.23 s (208.1 MiB/s), sha256 <hex>, transfer <id>`.
/// The transfer id is the one both stars' log lines for this replication carry.
pub fn summary_line(job: &ReplicateJob, done: &Replicated) -> String {
    format!(
        "{}: {}:{} -> {}: {} bytes in {:.2} s ({}), sha256 {}, transfer {}",
        job.destination,
        job.command.source,
        job.command.source_path,
        job.command.target_path,
        done.bytes,
        done.seconds,
        human::rate(done.bytes, done.seconds),
        hex::encode(done.sha256),
        job.command.transfer_id
    )
}

#[derive(Serialize)]
struct SuccessJson<'a> {
    ok: bool,
    transfer_id: String,
    source: &'a str,
    destination: &'a str,
    source_path: &'a str,
    target_path: &'a str,
    bytes: u64,
    sha256: String,
    seconds: f64,
    rate_bytes_per_sec: f64,
    controller_bytes_sent: u64,
    controller_bytes_received: u64,
    resumed_bytes: u64,
}

#[derive(Serialize)]
struct FailureJson<'a> {
    ok: bool,
    code: &'static str,
    message: &'a str,
}

/// The `--json` object of a successful replication, on one line.
pub fn success_json(job: &ReplicateJob, done: &Replicated) -> String {
    let rate = if done.seconds > 0.0 {
        done.bytes as f64 / done.seconds
    } else {
        0.0
    };
    let json = SuccessJson {
        ok: true,
        transfer_id: job.command.transfer_id.to_string(),
        source: &job.command.source,
        destination: &job.destination,
        source_path: &job.command.source_path,
        target_path: &job.command.target_path,
        bytes: done.bytes,
        sha256: hex::encode(done.sha256),
        seconds: done.seconds,
        rate_bytes_per_sec: rate,
        controller_bytes_sent: done.wire.sent,
        controller_bytes_received: done.wire.received,
        resumed_bytes: done.resumed_bytes,
    };
    serde_json::to_string(&json).unwrap_or_default()
}

#[derive(Serialize)]
struct DetachedJson<'a> {
    ok: bool,
    detached: bool,
    transfer_id: String,
    source: &'a str,
    destination: &'a str,
    source_path: &'a str,
    target_path: &'a str,
}

/// The `--json` object of a detached start, on one line.
pub fn detached_json(job: &ReplicateJob) -> String {
    let json = DetachedJson {
        ok: true,
        detached: true,
        transfer_id: job.command.transfer_id.to_string(),
        source: &job.command.source,
        destination: &job.destination,
        source_path: &job.command.source_path,
        target_path: &job.command.target_path,
    };
    serde_json::to_string(&json).unwrap_or_default()
}

/// The `--json` object of a failure, on one line.
pub fn failure_json(code: ErrorCode, message: &str) -> String {
    let json = FailureJson {
        ok: false,
        code: code.name(),
        message,
    };
    serde_json::to_string(&json).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_star::FakeStar;

    fn job(addr: SocketAddr) -> ReplicateJob {
        ReplicateJob {
            destination: "star-b".into(),
            destination_addr: addr,
            command: ReplicateFile {
                transfer_id: TransferId(0xabc),
                source: "star-a".into(),
                source_addr: "127.0.0.1:7401".into(),
                source_path: "/srv/data/f.bin".into(),
                target_path: "/srv/backup/f.bin".into(),
                token: "T".into(),
                expect_sha256: None,
                timeout_secs: 0,
            },
        }
    }

    #[tokio::test]
    async fn a_replication_sends_the_job_and_reports_done() {
        let mut star = FakeStar::spawn("star-b", |_| {
            vec![
                ControlEvent::Progress {
                    bytes: 1 << 20,
                    total: 256 << 20,
                },
                ControlEvent::Done {
                    bytes: 256 << 20,
                    sha256: [0x5a; 32],
                    seconds: 2.0,
                },
            ]
        })
        .await;
        let job = job(star.addr);
        let done = replicate_file(star.controller_tls(), &job).await.unwrap();
        assert_eq!(done.bytes, 256 << 20);
        assert_eq!(done.sha256, [0x5a; 32]);
        assert!(done.wire.sent > 0 && done.wire.received > 0);
        // A few kilobytes, whatever the file's size.
        assert!(
            done.wire.sent + done.wire.received < 64 * 1024,
            "{:?}",
            done.wire
        );

        let Some(ControlRequest::Replicate(sent)) = star.requests.recv().await else {
            panic!("no replicate request");
        };
        assert_eq!(sent.transfer_id, TransferId(0xabc));
        assert_eq!(sent.source, "star-a");
        assert_eq!(sent.source_addr, "127.0.0.1:7401");
        assert_eq!(sent.source_path, "/srv/data/f.bin");
        assert_eq!(sent.target_path, "/srv/backup/f.bin");
        assert_eq!(sent.token, "T");

        assert_eq!(
            summary_line(&job, &done),
            format!(
                "star-b: star-a:/srv/data/f.bin -> /srv/backup/f.bin: 268435456 bytes in 2.00 s \
                 (128.0 MiB/s), sha256 {}, transfer 0000000000000abc",
                "5a".repeat(32)
            )
        );
        let json: serde_json::Value = serde_json::from_str(&success_json(&job, &done)).unwrap();
        assert_eq!(json["ok"], true);
        assert_eq!(json["transfer_id"], "0000000000000abc");
        assert_eq!(json["bytes"], 256u64 << 20);
        assert_eq!(json["sha256"], "5a".repeat(32));
        assert_eq!(json["seconds"], 2.0);
        assert_eq!(json["rate_bytes_per_sec"], (128u64 << 20) as f64);
        assert!(json["controller_bytes_sent"].as_u64().unwrap() > 0);
    }

    #[tokio::test]
    async fn a_failed_replication_names_the_star_and_reason() {
        let star = FakeStar::spawn("star-b", |_| {
            vec![ControlEvent::Failed(WireError::new(
                ErrorCode::PermissionDenied,
                "star-a refused the read: token expired",
            ))]
        })
        .await;
        let err = replicate_file(star.controller_tls(), &job(star.addr))
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::PermissionDenied);
        assert_eq!(
            err.to_string(),
            "star-b: replication failed: star-a refused the read: token expired"
        );
        let json: serde_json::Value =
            serde_json::from_str(&failure_json(err.code(), &err.to_string())).unwrap();
        assert_eq!(json["ok"], false);
        assert_eq!(json["code"], "PermissionDenied");
    }

    #[tokio::test]
    async fn retries_and_resumes_are_followed_and_resumed_bytes_summed() {
        let star = FakeStar::spawn("star-b", |_| {
            vec![
                ControlEvent::Retrying {
                    attempt: 1,
                    after_ms: 200,
                    reason: "star-a: lost the connection".into(),
                },
                ControlEvent::Resumed {
                    offset: 100,
                    total: 1000,
                },
                ControlEvent::Resumed {
                    offset: 600,
                    total: 1000,
                },
                ControlEvent::Done {
                    bytes: 1000,
                    sha256: [3; 32],
                    seconds: 1.0,
                },
            ]
        })
        .await;
        let job = job(star.addr);
        let done = replicate_file(star.controller_tls(), &job).await.unwrap();
        assert_eq!(done.bytes, 1000);
        assert_eq!(done.resumed_bytes, 700);
        let json: serde_json::Value = serde_json::from_str(&success_json(&job, &done)).unwrap();
        assert_eq!(json["resumed_bytes"], 700);
    }

    #[tokio::test]
    async fn an_unexpected_digest_is_data_loss() {
        let star = FakeStar::spawn("star-b", |_| {
            vec![ControlEvent::Done {
                bytes: 1,
                sha256: [1; 32],
                seconds: 0.1,
            }]
        })
        .await;
        let mut job = job(star.addr);
        job.command.expect_sha256 = Some([2; 32]);
        let err = replicate_file(star.controller_tls(), &job)
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::DataLoss);
    }
}
