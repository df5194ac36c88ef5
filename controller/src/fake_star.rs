//! A stand-in star for this crate's unit tests: a real QUIC endpoint on 127.0.0.1:0 with a real
//! star certificate, which answers each control request with events the test chooses.
//!
//! It exercises the controller's client code only; the real star is tested in `tests/`.

use std::net::SocketAddr;
use std::sync::Arc;

use orbit_certs::{GridCa, Role};
use orbit_wire::{ControlEvent, ControlRequest};
use quinn::crypto::rustls::QuicServerConfig;
use quinn::Endpoint;
use tokio::sync::mpsc;

use crate::connect::{read_frame, write_frame};

type Respond = dyn Fn(&ControlRequest) -> Vec<ControlEvent> + Send + Sync;

/// A running stand-in star.
#[derive(Debug)]
pub(crate) struct FakeStar {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its grid's CA.
    pub ca: GridCa,
    /// Every control request it received, in order.
    pub requests: mpsc::UnboundedReceiver<ControlRequest>,
    endpoint: Endpoint,
}

/// A controller TLS configuration of the grid `ca`.
pub(crate) fn controller_tls(ca: &GridCa) -> Arc<rustls::ClientConfig> {
    let issued = ca.issue(Role::Controller, "orbitctl").unwrap();
    Arc::new(
        orbit_certs::client_config(
            &ca.cert_pem(),
            &issued.cert_pem,
            &issued.key_pem,
            orbit_wire::ALPN,
        )
        .unwrap(),
    )
}

impl FakeStar {
    /// Starts a star named `name` of a new grid; it answers each request with `respond`'s
    /// events and then finishes the stream.
    pub(crate) async fn spawn(
        name: &str,
        respond: impl Fn(&ControlRequest) -> Vec<ControlEvent> + Send + Sync + 'static,
    ) -> FakeStar {
        FakeStar::spawn_in(GridCa::generate("fake").unwrap(), name, respond).await
    }

    /// As [`FakeStar::spawn`], in the grid of `ca`, so that one controller configuration
    /// reaches several stand-in stars.
    pub(crate) async fn spawn_in(
        ca: GridCa,
        name: &str,
        respond: impl Fn(&ControlRequest) -> Vec<ControlEvent> + Send + Sync + 'static,
    ) -> FakeStar {
        let issued = ca.issue(Role::Star, name).unwrap();
        let tls = orbit_certs::server_config(
            &ca.cert_pem(),
            &issued.cert_pem,
            &issued.key_pem,
            orbit_wire::ALPN,
        )
        .unwrap();
        let config =
            quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls).unwrap()));
        let endpoint = Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
        let (tx, requests) = mpsc::unbounded_channel();
        let respond: Arc<Respond> = Arc::new(respond);
        let accept = endpoint.clone();
        tokio::spawn(async move {
            while let Some(incoming) = accept.accept().await {
                let (tx, respond) = (tx.clone(), respond.clone());
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        let Ok(Some(request)) = read_frame::<ControlRequest>(&mut recv).await
                        else {
                            return;
                        };
                        for event in respond(&request) {
                            if write_frame(&mut send, &event).await.is_err() {
                                return;
                            }
                        }
                        let _ = tx.send(request);
                        let _ = send.finish();
                    }
                });
            }
        });
        FakeStar {
            addr: endpoint.local_addr().unwrap(),
            ca,
            requests,
            endpoint,
        }
    }

    /// A controller TLS configuration of this star's grid.
    pub(crate) fn controller_tls(&self) -> Arc<rustls::ClientConfig> {
        controller_tls(&self.ca)
    }
}

impl Drop for FakeStar {
    fn drop(&mut self) {
        self.endpoint.close(0u32.into(), b"test over");
    }
}
