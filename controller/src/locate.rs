//! Finding the star that holds a transfer, for `orbitctl wait` and `orbitctl cancel`.
//!
//! A transfer id ([`TransferId`]) is the controller's random 64-bit number, printed as 16
//! hexadecimal digits (as in both stars' logs), and only the destination star knows it. With `--star NAME` only that
//! star is asked; otherwise every star of the grid is asked at once, and the one that knows the
//! id answers while the others say `NotFound` at once. A star that is down delays the search by
//! at most [`crate::connect::CONNECT_TIMEOUT`], and only when no other star has the transfer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use orbit_wire::{ControlEvent, ControlRequest, ErrorCode, TransferId};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::connect::{self, ConnectError, StarConnection, StreamError, WireBytes};
use crate::grid::{Grid, GridError};

/// How long a connected star has to answer whether it holds the transfer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The answer of the star that holds the transfer.
#[derive(Debug)]
pub struct Located {
    /// The star's name.
    pub star: String,
    /// Where it was dialled.
    pub addr: SocketAddr,
    /// Its final event.
    pub event: ControlEvent,
    /// The controller's traffic with it.
    pub wire: WireBytes,
}

/// Why no star answered for the transfer.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    /// The grid could not be read or does not list the star.
    #[error(transparent)]
    Grid(#[from] GridError),
    /// The one star asked could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// No star knows the transfer.
    #[error("{}", not_found(*id, asked, unreachable))]
    NotFound {
        /// The transfer.
        id: TransferId,
        /// The stars that answered that they do not know it.
        asked: Vec<String>,
        /// The stars that could not be asked, with why.
        unreachable: Vec<String>,
    },
    /// The exchange with a star failed.
    #[error("{star}: {error}")]
    Stream {
        /// The star.
        star: String,
        /// What happened.
        error: StreamError,
    },
}

fn not_found(id: TransferId, asked: &[String], unreachable: &[String]) -> String {
    let mut text = format!("no star knows transfer {id}");
    if !asked.is_empty() {
        text.push_str(&format!(" (asked {})", asked.join(", ")));
    }
    if !unreachable.is_empty() {
        text.push_str(&format!("; and {}", unreachable.join("; ")));
    } else {
        text.push_str(": stars keep a result for an hour, and forget it when they restart");
    }
    text
}

impl LocateError {
    /// The wire code that fits.
    pub fn code(&self) -> ErrorCode {
        match self {
            LocateError::Grid(e) => e.code(),
            LocateError::Connect(e) => e.code(),
            LocateError::NotFound { unreachable, .. } if !unreachable.is_empty() => {
                ErrorCode::Unavailable
            }
            LocateError::NotFound { .. } => ErrorCode::NotFound,
            LocateError::Stream { error, .. } => error.code(),
        }
    }
}

/// What one star said.
struct Answer {
    star: String,
    addr: Option<SocketAddr>,
    /// Whether it sent a non-final event, which only the holder does.
    holds: bool,
    result: Result<(ControlEvent, WireBytes), Failure>,
}

enum Failure {
    Connect(ConnectError),
    Stream(StreamError),
}

/// Sends `request` (a `Wait` or a `Cancel` for transfer `id`) to `only`, or to every star of the
/// grid, and returns the final event of the star that holds the transfer. `on_event(event)` sees
/// the holder's events that are not final, as they come.
///
/// # Errors
///
/// [`LocateError`]: no star knows the transfer, or the one that does failed.
pub async fn ask(
    grid: &Grid,
    only: Option<&str>,
    request: ControlRequest,
    mut on_event: impl FnMut(&ControlEvent),
) -> Result<Located, LocateError> {
    let id = match request {
        ControlRequest::Wait { transfer_id } | ControlRequest::Cancel { transfer_id } => {
            transfer_id
        }
        _ => TransferId(0),
    };
    let names: Vec<String> = match only {
        Some(name) => vec![name.to_owned()],
        None => grid.inventory().stars.keys().cloned().collect(),
    };
    let tls = grid.client_tls()?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut tasks = JoinSet::new();
    for name in &names {
        let addr = grid.star(name)?.clone();
        let (tls, tx, request, star) = (tls.clone(), tx.clone(), request.clone(), name.clone());
        tasks.spawn(async move { ask_one(tls, star, addr, request, tx).await });
    }
    drop(tx);
    let (mut asked, mut unreachable) = (Vec::new(), Vec::new());
    loop {
        tokio::select! {
            Some(event) = rx.recv() => on_event(&event),
            joined = tasks.join_next() => {
                let Some(joined) = joined else { break };
                let answer = match joined {
                    Ok(answer) => answer,
                    Err(e) => std::panic::resume_unwind(e.into_panic()),
                };
                match answer.result {
                    Ok((ControlEvent::Failed(e), _)) if e.code == ErrorCode::NotFound && !answer.holds => {
                        asked.push(answer.star);
                    }
                    Ok((event, wire)) => {
                        // Events sent before the final one are still in the channel.
                        while let Ok(event) = rx.try_recv() {
                            on_event(&event);
                        }
                        let addr = answer.addr.unwrap_or_else(|| ([0, 0, 0, 0], 0).into());
                        return Ok(Located { star: answer.star, addr, event, wire });
                    }
                    Err(Failure::Connect(e)) if only.is_some() => return Err(e.into()),
                    Err(Failure::Connect(e)) => unreachable.push(e.to_string()),
                    Err(Failure::Stream(error)) if answer.holds || only.is_some() => {
                        return Err(LocateError::Stream { star: answer.star, error });
                    }
                    Err(Failure::Stream(error)) => unreachable.push(format!("{}: {error}", answer.star)),
                }
            }
        }
    }
    Err(LocateError::NotFound {
        id,
        asked,
        unreachable,
    })
}

async fn ask_one(
    tls: Arc<rustls::ClientConfig>,
    star: String,
    addr: crate::spec::StarAddr,
    request: ControlRequest,
    tx: mpsc::UnboundedSender<ControlEvent>,
) -> Answer {
    let mut answer = Answer {
        star: star.clone(),
        addr: None,
        holds: false,
        result: Err(Failure::Stream(StreamError::NoResult)),
    };
    let conn = match connect::resolve(&star, &addr).await {
        Ok(addr) => {
            answer.addr = Some(addr);
            StarConnection::connect(tls, &star, addr).await
        }
        Err(e) => Err(e),
    };
    let conn = match conn {
        Ok(conn) => conn,
        Err(e) => {
            answer.result = Err(Failure::Connect(e));
            return answer;
        }
    };
    let holds = AtomicBool::new(false);
    let result = {
        let work = conn.control_events(&request, |event| {
            holds.store(true, Ordering::Relaxed);
            let _ = tx.send(event.clone());
        });
        tokio::pin!(work);
        // A star answers at once, whether it holds the transfer or not; only the holder's final
        // event may take long.
        tokio::select! {
            result = &mut work => result,
            _ = tokio::time::sleep(ANSWER_TIMEOUT) => {
                if holds.load(Ordering::Relaxed) {
                    work.await
                } else {
                    Err(StreamError::ConnectionLost {
                        code: ErrorCode::DeadlineExceeded,
                        reason: format!("no answer within {} s", ANSWER_TIMEOUT.as_secs()),
                    })
                }
            }
        }
    };
    let wire = conn.wire_bytes();
    conn.close().await;
    answer.holds = holds.load(Ordering::Relaxed);
    answer.result = result.map(|event| (event, wire)).map_err(Failure::Stream);
    answer
}
