//! One file from one source (or with `--also-from`, from several), the command's plainest
//! form: the job minted from the command line, sent to the destination star, followed to its
//! verified result, and cancelled on Ctrl-C. Also the client code every other form shares:
//! [`replicate_observed`] for batches, [`start`] for detached trees, [`conclude`] for `wait`.
//!
//! It never carries file data: the destination pulls the file from the source itself.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use orbit_wire::{ControlEvent, ControlRequest, ReplicateFile, TransferId};

use super::interrupt::{interrupt_signal, Cancelling};
use super::{
    event_line, new_transfer_id, Args, ConnectionCount, ReplicateError, ReplicateJob, Replicated,
};
use crate::connect::{self, StarConnection, StreamError, WireBytes};
use crate::grid::Grid;
use crate::progress::{Mode, Progress};
use crate::spec::StarPath;
use crate::token;

/// Runs the replication `args` describe; `None` when detached.
pub(super) async fn execute(
    grid_dir: &Path,
    args: &Args,
) -> Result<(ReplicateJob, Option<Replicated>), ReplicateError> {
    // From here on Ctrl-C cancels the transfer rather than killing orbitctl.
    let mut interrupt = interrupt_signal();
    let (source, target) = args.endpoints()?;
    let grid = Grid::open(grid_dir)?;
    let master = grid.master_key()?;
    let tls = grid.client_tls()?;
    let minting = Minting {
        grid: &grid,
        master: &master,
        ttl: args.ttl.unwrap_or(grid.ttl_secs()),
        expect_sha256: args.expect_sha256,
        timeout_secs: args.timeout,
    };
    let mut job = minting.job(&source, &target).await?;
    // From several sources every read is a relay read of this transfer: link tokens all.
    let transfer = job.command.transfer_id;
    let link = |from: &StarPath| {
        token::mint_link(
            &master,
            &from.star,
            &target.star,
            &from.path,
            transfer,
            minting.ttl,
        )
    };
    for text in &args.also_from {
        let other = StarPath::parse(text)?;
        job.also.push(orbit_wire::fanout::Upstream {
            addr: grid.star(&other.star)?.to_string(),
            token: link(&other),
            star: other.star,
            path: other.path,
        });
    }
    // `--connections N`: every source named N times, each name one more connection to it.
    if let Some(ConnectionCount::Fixed(n)) = args.connections {
        let named: Vec<_> = std::iter::once(orbit_wire::fanout::Upstream {
            star: source.star.clone(),
            addr: job.command.source_addr.clone(),
            path: source.path.clone(),
            token: link(&source),
        })
        .chain(job.also.iter().cloned())
        .collect();
        for _ in 1..n {
            job.also.extend(named.iter().cloned());
        }
    }
    job.in_pieces = !job.also.is_empty() || matches!(args.connections, Some(ConnectionCount::Auto));
    if job.in_pieces {
        job.command.token = link(&source);
    }
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
        None => {
            let interrupted = || ReplicateError::Interrupted {
                star: job.destination.clone(),
                target: job.command.target_path.clone(),
            };
            let cancelling = Cancelling {
                tls,
                destination: &job.destination,
                addr: job.destination_addr,
                transfer: job.command.transfer_id,
            };
            cancelling
                .run(&mut interrupt, interrupted, |result, wire| {
                    conclude(&job, result, wire, 0)
                })
                .await?
        }
    };
    Ok((job, Some(done)))
}

/// What every single-file replication of one command shares: the grid, the key its tokens are
/// minted under, and the options of the command line.
pub(crate) struct Minting<'a> {
    /// The grid, for the stars' addresses.
    pub(crate) grid: &'a Grid,
    /// The master token key.
    pub(crate) master: &'a orbit_wire::token::MasterKey,
    /// How long a token lives, in seconds.
    pub(crate) ttl: u64,
    /// `--expect-sha256`.
    pub(crate) expect_sha256: Option<[u8; 32]>,
    /// `--timeout`: how long the destination retries without progress.
    pub(crate) timeout_secs: u32,
}

impl Minting<'_> {
    /// A new job that copies `source` to `target` from one source: a fresh transfer id and
    /// token, and the destination's address resolved now.
    ///
    /// # Errors
    ///
    /// [`ReplicateError::Grid`] for a star the grid does not list;
    /// [`ReplicateError::Connect`] when the destination's host name does not resolve.
    pub(crate) async fn job(
        &self,
        source: &StarPath,
        target: &StarPath,
    ) -> Result<ReplicateJob, ReplicateError> {
        let source_addr = self.grid.star(&source.star)?;
        let target_addr = self.grid.star(&target.star)?;
        let token = token::mint(
            self.master,
            &source.star,
            &target.star,
            &source.path,
            self.ttl,
        );
        let destination_addr = connect::resolve(&target.star, target_addr).await?;
        Ok(ReplicateJob {
            destination: target.star.clone(),
            destination_addr,
            command: ReplicateFile {
                transfer_id: new_transfer_id(),
                source: source.star.clone(),
                source_addr: source_addr.to_string(),
                source_path: source.path.clone(),
                target_path: target.path.clone(),
                token,
                expect_sha256: self.expect_sha256,
                timeout_secs: self.timeout_secs,
            },
            also: Vec::new(),
            in_pieces: false,
        })
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
    let request = job.request(true);
    let transfer = job.command.transfer_id;
    start(
        tls,
        &job.destination,
        job.destination_addr,
        &request,
        transfer,
    )
    .await
}

/// Sends `request` (`Start` or `StartTree` of `transfer`) to `destination`, which answers at
/// once with `Started`.
pub(super) async fn start(
    tls: Arc<rustls::ClientConfig>,
    destination: &str,
    addr: SocketAddr,
    request: &ControlRequest,
    transfer: TransferId,
) -> Result<(), ReplicateError> {
    let conn = StarConnection::connect(tls, destination, addr).await?;
    let result = conn.control(request, |_, _| {}).await;
    conn.close().await;
    let star = destination.to_owned();
    match result {
        Ok(ControlEvent::Started { transfer_id }) if transfer_id == transfer => Ok(()),
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
    let request = job.request(false);
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

#[cfg(test)]
mod tests {
    use orbit_wire::{ErrorCode, WireError};

    use super::*;
    use crate::fake_star::FakeStar;
    use crate::replicate::{success_json, summary_line};

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
            also: Vec::new(),
            in_pieces: false,
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
            serde_json::from_str(&crate::json::failure(err.code(), &err.to_string())).unwrap();
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
