//! Outgoing connections to source stars, one per peer, reused while they live. Each connection
//! has a dispatcher that matches incoming data streams to the read requests waiting for them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::{Connection, RecvStream};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{debug, Instrument};

use orbit_certs::Role;
use orbit_wire::{DataFrame, ErrorCode, WireError};

use crate::error::varint;
use crate::framed::{self, DataRead};
use crate::star::{peer_of, Shared};

/// How long dialling a source star may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a data stream may take to say which request it answers.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(30);

/// A data stream and its first frame, which is a `Header` or an `Error`.
pub(crate) type DataStream = (DataFrame, RecvStream);

type Waiters = Mutex<HashMap<u64, oneshot::Sender<DataStream>>>;

/// One live connection to a source star.
#[derive(Debug)]
pub(crate) struct PeerConn {
    pub(crate) conn: Connection,
    waiters: Arc<Waiters>,
    next_id: AtomicU64,
}

impl PeerConn {
    /// A fresh request id and a receiver for the data stream that will answer it.
    pub(crate) fn expect_stream(&self) -> (u64, oneshot::Receiver<DataStream>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().expect("waiters lock").insert(id, tx);
        (id, rx)
    }

    /// Forgets a request that will not be waited for any more.
    pub(crate) fn forget(&self, id: u64) {
        self.waiters.lock().expect("waiters lock").remove(&id);
    }
}

/// The star's outgoing connections, by peer name.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    conns: tokio::sync::Mutex<HashMap<String, Arc<PeerConn>>>,
}

impl Pool {
    /// The live connection to star `name`, dialling `addr` if there is none.
    ///
    /// # Errors
    ///
    /// `Unavailable` when the star cannot be reached, `PermissionDenied` when the peer there is
    /// not that star.
    pub(crate) async fn get(
        &self,
        shared: &Arc<Shared>,
        name: &str,
        addr: &str,
    ) -> Result<Arc<PeerConn>, WireError> {
        let mut conns = self.conns.lock().await;
        if let Some(peer) = conns.get(name) {
            if peer.conn.close_reason().is_none() {
                return Ok(peer.clone());
            }
        }
        let dialled = dial(shared, name, addr).await;
        let metrics = &shared.metrics;
        let peer = Arc::new(dialled.inspect_err(|_| metrics.outbound_handshakes_failed.inc())?);
        metrics.outbound_handshakes_ok.inc();
        let open = metrics.outbound_connections.track();
        let dispatcher = dispatch(
            peer.conn.clone(),
            peer.waiters.clone(),
            shared.cancel.child_token(),
        );
        // The dispatcher lives as long as the connection; so does its count.
        let dispatcher = async move {
            dispatcher.await;
            drop(open);
        };
        shared
            .tracker
            .spawn(dispatcher.instrument(tracing::debug_span!("dispatch", peer = name)));
        conns.insert(name.to_owned(), peer.clone());
        Ok(peer)
    }
}

async fn dial(shared: &Shared, name: &str, addr: &str) -> Result<PeerConn, WireError> {
    let unavailable = |why: String| {
        WireError::new(
            ErrorCode::Unavailable,
            format!("cannot reach star {name} at {addr}: {why}"),
        )
    };
    let target = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| unavailable(e.to_string()))?
        .next()
        .ok_or_else(|| unavailable("the address resolves to nothing".into()))?;
    let client_config = shared
        .client_config
        .read()
        .expect("client config lock")
        .clone();
    let connecting = shared
        .endpoint
        .connect_with(client_config, target, name)
        .map_err(|e| unavailable(e.to_string()))?;
    let conn = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) if is_tls_failure(&e) => {
            return Err(WireError::new(
                ErrorCode::PermissionDenied,
                format!("the peer at {addr} did not prove it is star {name}: {e}"),
            ))
        }
        Ok(Err(e)) => return Err(unavailable(e.to_string())),
        Err(_) => return Err(unavailable(format!("no answer within {CONNECT_TIMEOUT:?}"))),
    };
    // The TLS verifier checked the name against the certificate's DNS name; check the role too.
    match peer_of(&conn) {
        Ok(peer) if peer.role == Role::Star && peer.name == name => {}
        Ok(peer) => {
            conn.close(
                varint(ErrorCode::PermissionDenied),
                b"not the star that was dialled",
            );
            return Err(WireError::new(
                ErrorCode::PermissionDenied,
                format!("the peer at {addr} is {peer}, not star {name}"),
            ));
        }
        Err(why) => return Err(unavailable(why)),
    }
    debug!(peer = name, %target, "connected to source");
    Ok(PeerConn {
        conn,
        waiters: Arc::default(),
        next_id: AtomicU64::new(1),
    })
}

/// Whether a handshake failed on identity (a TLS alert, ours or the peer's) rather than on the
/// network. QUIC carries TLS alerts as transport error codes 0x100 to 0x1ff.
fn is_tls_failure(e: &quinn::ConnectionError) -> bool {
    let code = match e {
        quinn::ConnectionError::TransportError(t) => t.code,
        quinn::ConnectionError::ConnectionClosed(c) => c.error_code,
        _ => return false,
    };
    (0x100..0x200).contains(&u64::from(code))
}

impl Pool {
    /// Closes every pooled connection whose peer certificate `revoked` says is revoked, and
    /// returns how many it closed.
    pub(crate) async fn close_where(&self, revoked: impl Fn(&Connection) -> bool) -> usize {
        let mut conns = self.conns.lock().await;
        let before = conns.len();
        conns.retain(|_, peer| {
            if revoked(&peer.conn) {
                peer.conn
                    .close(varint(ErrorCode::PermissionDenied), b"certificate revoked");
                false
            } else {
                true
            }
        });
        before - conns.len()
    }
}

/// Accepts data streams on an outgoing connection and hands each to the request it answers,
/// until the connection ends or the star shuts down.
async fn dispatch(conn: Connection, waiters: Arc<Waiters>, cancel: CancellationToken) {
    loop {
        let mut recv = tokio::select! {
            _ = cancel.cancelled() => break,
            stream = conn.accept_uni() => match stream {
                Ok(recv) => recv,
                Err(_) => break,
            },
        };
        let waiters = waiters.clone();
        tokio::spawn(async move {
            let first =
                tokio::time::timeout(FIRST_FRAME_TIMEOUT, framed::read_data_frame(&mut recv)).await;
            let id = match &first {
                Ok(Ok(DataRead::Frame(DataFrame::Header { request_id, .. })))
                | Ok(Ok(DataRead::Frame(DataFrame::Error { request_id, .. }))) => *request_id,
                _ => {
                    let _ = recv.stop(varint(ErrorCode::InvalidArgument));
                    return;
                }
            };
            let waiter = waiters.lock().expect("waiters lock").remove(&id);
            match (waiter, first) {
                (Some(tx), Ok(Ok(DataRead::Frame(frame)))) => {
                    let _ = tx.send((frame, recv));
                }
                _ => {
                    let _ = recv.stop(varint(ErrorCode::Cancelled));
                }
            }
        });
    }
}
