//! The controller's side of many control streams at once: one task per star sends the star its
//! command and passes on, in order, what comes back. Used by a fan-out, by `wait` and by
//! `cancel` on several stars. It prints nothing.

use std::net::SocketAddr;
use std::sync::Arc;

use orbit_wire::{ControlEvent, ControlRequest, TransferStatus};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::super::fanout_report::Failure;
use super::super::ReplicateError;
use crate::connect::{self, ConnectError, StarConnection, StreamError, WireBytes};
use crate::grid::{Grid, GridError};
use crate::spec::StarAddr;

/// One star's answer to [`ask_all`].
#[derive(Debug)]
pub struct Answer {
    /// The star.
    pub star: String,
    /// What its `Following` event said, if it sent one.
    pub following: Option<TransferStatus>,
    /// Its final event, or why there is none.
    pub result: Result<ControlEvent, LegError>,
}

/// Sends `request` to every star of `stars` at once and returns their answers, in the order of
/// `stars`. For `orbitctl cancel` on several stars.
///
/// # Errors
///
/// [`GridError`] when the grid cannot be read or does not list a star.
pub async fn ask_all(
    grid: &Grid,
    stars: &[String],
    request: &ControlRequest,
) -> Result<Vec<Answer>, GridError> {
    let tls = grid.client_tls()?;
    let targets = targets_of(grid, stars, request)?;
    let mut answers: Vec<Answer> = stars
        .iter()
        .map(|star| Answer {
            star: star.clone(),
            following: None,
            result: Err(LegError::Lost),
        })
        .collect();
    let mut legs = Legs::spawn(tls, &targets);
    while let Some(report) = legs.next().await {
        match report {
            Report::Event(i, ControlEvent::Following(status)) => {
                answers[i].following = Some(status);
            }
            Report::End(i, result, _) => answers[i].result = result,
            Report::Event(..) | Report::Connected(..) => {}
        }
    }
    Ok(answers)
}

/// What to send to each of `stars`.
pub(super) fn targets_of(
    grid: &Grid,
    stars: &[String],
    request: &ControlRequest,
) -> Result<Vec<Target>, GridError> {
    stars
        .iter()
        .map(|star| {
            Ok(Target {
                star: star.clone(),
                addr: grid.star(star)?.clone(),
                path: None,
                request: request.clone(),
            })
        })
        .collect()
}

/// One star to send a command to, and how to name it in the output.
#[derive(Debug, Clone)]
pub(super) struct Target {
    /// The star's name.
    pub(super) star: String,
    /// Where it listens, from the grid.
    pub(super) addr: StarAddr,
    /// The target path, when known before the star says it.
    pub(super) path: Option<String>,
    /// What to send it.
    pub(super) request: ControlRequest,
}

impl Target {
    /// `star:path`, or the star alone when the path is not known.
    pub(super) fn name(&self) -> String {
        name(&self.star, self.path.as_deref())
    }
}

/// `star:path`, or the star alone without a path.
pub(super) fn name(star: &str, path: Option<&str>) -> String {
    match path {
        Some(path) => format!("{star}:{path}"),
        None => star.to_owned(),
    }
}

/// The width of the destination column: the longest name.
pub(super) fn name_width(targets: &[Target]) -> usize {
    targets
        .iter()
        .map(|t| t.name().chars().count())
        .max()
        .unwrap_or(0)
}

/// Why a star's control stream gave no final event.
#[derive(Debug, thiserror::Error)]
pub enum LegError {
    /// The star could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The stream or the connection failed.
    #[error(transparent)]
    Stream(StreamError),
    /// The task following the star ended without a word, which only a bug in orbitctl does.
    #[error("orbitctl lost track of this star's answer")]
    Lost,
}

impl LegError {
    /// The replication error this stands for, naming `star`.
    pub(super) fn into_replicate(self, star: &str) -> ReplicateError {
        match self {
            LegError::Connect(e) => ReplicateError::Connect(e),
            LegError::Stream(error) => ReplicateError::Stream {
                star: star.to_owned(),
                error,
            },
            LegError::Lost => ReplicateError::Unexpected {
                star: star.to_owned(),
                what: "nothing (orbitctl lost track of the answer)".into(),
            },
        }
    }

    /// The failure this stands for, naming `star`.
    pub(super) fn failure(self, star: &str) -> Failure {
        Failure::of(&self.into_replicate(star))
    }
}

/// What a star's task reports, in the order it happened.
#[derive(Debug)]
pub(super) enum Report {
    /// The star `i` is connected, at this address.
    Connected(usize, SocketAddr),
    /// The star `i` sent an event that is not final.
    Event(usize, ControlEvent),
    /// The star `i`'s final event, or why there is none, and the controller's traffic with it.
    End(usize, Result<ControlEvent, LegError>, WireBytes),
}

/// One task per star, each sending its command and passing on what comes back. Dropping it
/// stops them all and closes their connections.
#[derive(Debug)]
pub(super) struct Legs {
    _tasks: JoinSet<()>,
    reports: mpsc::UnboundedReceiver<Report>,
}

impl Legs {
    /// Starts one task per target; `Report`s name a target by its index in `targets`.
    pub(super) fn spawn(tls: Arc<rustls::ClientConfig>, targets: &[Target]) -> Legs {
        let (tx, reports) = mpsc::unbounded_channel();
        let mut tasks = JoinSet::new();
        for (i, target) in targets.iter().enumerate() {
            let (tls, tx, target) = (tls.clone(), tx.clone(), target.clone());
            tasks.spawn(async move {
                let (result, wire) = leg(tls, i, &target, &tx).await;
                let _ = tx.send(Report::End(i, result, wire));
            });
        }
        Legs {
            _tasks: tasks,
            reports,
        }
    }

    /// The next report; `None` once every star's task has ended. Cancel-safe.
    pub(super) async fn next(&mut self) -> Option<Report> {
        self.reports.recv().await
    }
}

/// Dials `target`, sends its request and passes on its events until the final one.
async fn leg(
    tls: Arc<rustls::ClientConfig>,
    i: usize,
    target: &Target,
    tx: &mpsc::UnboundedSender<Report>,
) -> (Result<ControlEvent, LegError>, WireBytes) {
    let connected = async {
        let addr = connect::resolve(&target.star, &target.addr).await?;
        StarConnection::connect(tls, &target.star, addr).await
    };
    let conn = match connected.await {
        Ok(conn) => conn,
        Err(e) => return (Err(e.into()), WireBytes::default()),
    };
    let _ = tx.send(Report::Connected(i, conn.addr()));
    let result = conn
        .control_events(&target.request, |event| {
            let _ = tx.send(Report::Event(i, event.clone()));
        })
        .await;
    let wire = conn.wire_bytes();
    conn.close().await;
    (result.map_err(LegError::Stream), wire)
}

/// Stand-in stars and targets for the tests of the fan-out's modules.
#[cfg(test)]
pub(super) mod testing {
    use orbit_certs::GridCa;

    use super::*;
    use crate::fake_star::FakeStar;
    use crate::replicate::tree::Output;

    /// A stand-in star of grid `ca` that answers a fan-out with `events`.
    pub(crate) async fn star(ca: &GridCa, name: &str, events: Vec<ControlEvent>) -> FakeStar {
        let ca = GridCa::from_pem(&ca.cert_pem(), &ca.key_pem()).unwrap();
        FakeStar::spawn_in(ca, name, move |_| events.clone()).await
    }

    pub(crate) fn done(sha256: u8) -> ControlEvent {
        ControlEvent::Done {
            bytes: 10,
            sha256: [sha256; 32],
            seconds: 0.1,
        }
    }

    pub(crate) fn target(star: &FakeStar, name: &str) -> Target {
        Target {
            star: name.into(),
            addr: StarAddr::parse(&star.addr.to_string()).unwrap(),
            path: Some("/t".into()),
            request: ControlRequest::Status,
        }
    }

    pub(crate) const QUIET: Output = Output {
        json: false,
        quiet: true,
    };
}
