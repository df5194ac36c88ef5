//! The star's handle: [`Star::spawn`] opens the roots and the journal, binds the one QUIC
//! endpoint and builds the star's services, each owning its part (see docs/DESIGN.md, "Inside
//! the star"); [`Star::shutdown`] stops it in order: stop accepting new work, let transfers in
//! flight finish for a while, cancel every task, close the endpoint with a code, wait for the
//! peers to see it. Everything a star offers to code that embeds it is here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::Endpoint;
use tracing::{info, warn, Instrument};

use orbit_wire::token::KeyRing;
use orbit_wire::ErrorCode;

use crate::connection::{Acceptor, Connections};
use crate::control::Commands;
use crate::endpoint::quic_configs;
use crate::error::varint;
use crate::jail::Jail;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::replication::{Replications, Replicator, Store};
use crate::serve::{Reads, Server};
use crate::startup::{check_certificate_names, revocation_list, SpawnError, StarConfig};
use crate::trust::Trust;

/// How long shutdown waits for tasks to wind down before closing the endpoint regardless.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`Star::shutdown`] lets transfers in flight finish before it stops them (in a
/// resumable state when the star keeps a journal).
pub const TRANSFER_DRAIN: Duration = Duration::from_secs(10);

/// At most how often the digest cache is written to the state directory while digests come in.
const DIGEST_SAVE_INTERVAL: Duration = Duration::from_secs(1);

/// A running star.
#[derive(Debug)]
pub struct Star {
    addr: SocketAddr,
    endpoint: Endpoint,
    trust: Arc<Trust>,
    connections: Arc<Connections>,
    pool: Arc<Pool>,
    register: Arc<Replications>,
    reads: Arc<Reads>,
    metrics: Arc<Metrics>,
    expiry: Arc<crate::expiry::Expiry>,
    life: Lifecycle,
}

impl Star {
    /// Opens the roots, binds the endpoint and starts accepting. Logs `listening on ADDR` once
    /// the endpoint is bound, then resumes the replications its journal holds.
    ///
    /// # Errors
    ///
    /// [`SpawnError`] naming what could not be used.
    pub async fn spawn(config: StarConfig) -> Result<Star, SpawnError> {
        orbit_certs::validate_star_name(&config.name).map_err(SpawnError::Name)?;
        check_certificate_names(&config)?;
        if config.roots.is_empty() && config.read_only_roots.is_empty() {
            return Err(SpawnError::NoRoots);
        }
        config.limits.validate()?;
        crate::protected::check_roots(&config)?;
        let jail = Jail::open(&config.roots, &config.read_only_roots).map_err(SpawnError::Root)?;
        let journal = match &config.state_dir {
            Some(path) => {
                let state_dir = |error| SpawnError::StateDir {
                    path: path.clone(),
                    error,
                };
                std::fs::create_dir_all(path).map_err(state_dir)?;
                Some(Arc::new(
                    crate::journal::Journal::open(path).map_err(state_dir)?,
                ))
            }
            None => None,
        };
        // Taken once the state directory exists, so that it is known by identity too.
        let jail = jail.with_protected(crate::protected::Protected::of(&config));

        let crl = revocation_list(&config)?;
        crate::startup::check_crl_sequence(config.state_dir.as_deref(), None, crl.as_ref(), true)?;
        let (server_config, client_config) = quic_configs(&config, crl.as_ref())?;
        let attester = crate::endpoint::attester(&config, crl.as_ref())?;
        let endpoint = bind(config.listen, server_config, client_config.clone())?;
        let addr = endpoint.local_addr().map_err(|error| SpawnError::Bind {
            addr: config.listen,
            error,
        })?;

        let limits = config.limits;
        let name = config.name;
        let life = Lifecycle::default();
        let metrics = Arc::new(Metrics::new());
        metrics.set_certificates(&config.cert_pem, &config.ca_pem);
        let expiry = Arc::new(crate::expiry::Expiry::new(&name));
        let jail = Arc::new(jail);
        let keys = KeyRing::new(config.token_key, config.previous_token_key);
        let trust = Arc::new(Trust::new(
            name.clone(),
            keys,
            client_config,
            attester,
            crl.clone(),
        ));
        let pool = Arc::new(Pool::new(
            endpoint.clone(),
            trust.clone(),
            metrics.clone(),
            life.clone(),
        ));
        let register = Arc::new(Replications::new(&name, limits.max_transfers));
        let reads = Arc::new(Reads::new(limits.max_transfers));
        if let Some(dir) = &config.state_dir {
            reads.digests.load(dir);
        }
        let replicator = Arc::new(Replicator {
            star: name.clone(),
            store: Store {
                jail: jail.clone(),
                journal,
                digests: reads.digests.clone(),
            },
            pool: pool.clone(),
            trust: trust.clone(),
            register: register.clone(),
            connections: limits.connections,
            metrics: metrics.clone(),
            life: life.clone(),
        });
        let server = Arc::new(Server {
            trust: trust.clone(),
            jail,
            reads: reads.clone(),
            metrics: metrics.clone(),
            life: life.clone(),
            request_timeout: limits.request_timeout,
            max_token_lifetime: limits.max_token_lifetime,
            write_timeout: limits.write_timeout,
        });
        let commands = Arc::new(Commands {
            started: Instant::now(),
            request_timeout: limits.request_timeout,
            replicator: replicator.clone(),
            reads: reads.clone(),
            server: server.clone(),
        });
        let connections = Arc::new(Connections::default());
        let acceptor = Arc::new(Acceptor {
            name: name.clone(),
            endpoint: endpoint.clone(),
            limits,
            connections: connections.clone(),
            metrics: metrics.clone(),
            life: life.clone(),
            commands,
            server,
            handshakes: Default::default(),
        });

        let span = tracing::info_span!("star", star = %name);
        life.tracker
            .spawn(crate::connection::accept_loop(acceptor).instrument(span.clone()));
        if config.state_dir.is_some() {
            let task = keep_digests(reads.clone(), life.cancel.clone());
            life.tracker.spawn(task.instrument(span.clone()));
        }
        span.in_scope(|| {
            crate::reload::log_keys(&trust, crl.as_ref());
            expiry.set(&config.cert_pem, &config.ca_pem);
            info!("listening on {addr}");
            replicator.resume_journaled();
        });
        life.tracker.spawn(
            crate::expiry::repeat(expiry.clone(), life.cancel.clone()).instrument(span.clone()),
        );
        Ok(Star {
            addr,
            endpoint,
            trust,
            connections,
            pool,
            register,
            reads,
            metrics,
            expiry,
            life,
        })
    }

    /// The address the endpoint is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The star's name.
    pub fn name(&self) -> &str {
        &self.trust.name
    }

    /// Applies the token keys, certificates and revocation list of `config` to the running
    /// star, then closes every open connection whose peer certificate the new list revokes.
    /// Name, address and roots cannot change this way. On error nothing changes.
    ///
    /// # Errors
    ///
    /// [`SpawnError`] if the new certificates, key or list cannot be used.
    pub async fn reload(&self, config: &StarConfig) -> Result<crate::Reloaded, SpawnError> {
        let parts = crate::reload::Parts {
            endpoint: &self.endpoint,
            trust: &self.trust,
            connections: &self.connections,
            pool: &self.pool,
        };
        let reloaded = crate::reload::reload(parts, config)?;
        self.metrics
            .set_certificates(&config.cert_pem, &config.ca_pem);
        self.expiry.set(&config.cert_pem, &config.ca_pem);
        Ok(reloaded)
    }

    /// Stops gracefully: new commands and reads are refused with `Unavailable`, transfers in
    /// flight get [`TRANSFER_DRAIN`] to finish; then as [`Star::shutdown_with_drain`].
    pub async fn shutdown(self) {
        self.shutdown_with_drain(TRANSFER_DRAIN).await;
    }

    /// Refuses new commands and reads with `Unavailable`, waits at most `drain` for transfers in
    /// flight to finish, then cancels the rest (a replication with a journal keeps its temporary
    /// file to resume on the next start; without one the file is removed, and controllers are
    /// told `Unavailable`), closes the endpoint and waits until peers have been told.
    pub async fn shutdown_with_drain(self, drain: Duration) {
        let name = &self.trust.name;
        info!(%name, "shutting down");
        self.life.draining.cancel();
        if self.register.running() > 0 || self.reads.in_flight() > 0 {
            if !drain.is_zero() {
                info!(%name, "letting transfers in flight finish, for at most {drain:?}");
            }
            let idle = async { tokio::join!(self.register.idle(), self.reads.idle()) };
            if tokio::time::timeout(drain, idle).await.is_err() {
                warn!(%name, "stopping the transfers still in flight");
            }
        }
        self.life.cancel.cancel();
        self.life.tracker.close();
        if tokio::time::timeout(DRAIN_TIMEOUT, self.life.tracker.wait())
            .await
            .is_err()
        {
            warn!(%name, "tasks did not stop within {DRAIN_TIMEOUT:?}; closing anyway");
        }
        self.endpoint
            .close(varint(ErrorCode::Unavailable), b"star shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        info!(%name, "stopped");
    }

    /// Proves the star serves: completes a QUIC handshake with its own endpoint, as a peer star
    /// would (UDP socket, accept loop, TLS with its certificate and CA), then closes it. The
    /// accepting side recognises itself and counts nothing.
    ///
    /// # Errors
    ///
    /// Why the handshake failed.
    pub async fn self_check(&self) -> Result<(), SelfCheckError> {
        let mut target = self.addr;
        if target.ip().is_unspecified() {
            target.set_ip(match target {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let conn = self.endpoint.connect(target, &self.trust.name)?.await?;
        conn.close(0u32.into(), b"self-check done");
        Ok(())
    }

    /// The star's counters, for code that embeds a star.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The counters as Prometheus text, exactly as `GET /metrics` serves them.
    ///
    /// Blocking, briefly: it reads `/proc/self` for the process's series.
    pub fn render_metrics(&self) -> String {
        self.metrics
            .render(self.register.count(), self.reads.in_flight())
    }

    /// Serves `GET /metrics` on TCP `addr` until the star shuts down, and returns the bound
    /// address (port 0 picks one). Logs `metrics on http://ADDR/metrics`.
    ///
    /// # Errors
    ///
    /// When the address cannot be bound.
    pub async fn serve_metrics(&self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let span = tracing::info_span!("metrics", star = %self.trust.name);
        span.in_scope(|| info!("metrics on http://{bound}/metrics"));
        let (metrics, register, reads) = (
            self.metrics.clone(),
            self.register.clone(),
            self.reads.clone(),
        );
        let render = Arc::new(move || metrics.render(register.count(), reads.in_flight()));
        let task = crate::metrics::http::serve(listener, render, self.life.clone());
        self.life.tracker.spawn(task.instrument(span));
        Ok(bound)
    }
}

/// Why a self-check failed.
#[derive(Debug, thiserror::Error)]
pub enum SelfCheckError {
    /// The handshake could not begin.
    #[error(transparent)]
    Connect(#[from] quinn::ConnectError),
    /// The handshake failed.
    #[error(transparent)]
    Connection(#[from] quinn::ConnectionError),
}

/// Writes the digest cache to the state directory after new digests come in, at most once every
/// [`DIGEST_SAVE_INTERVAL`], and once more when the star stops. A failed write is logged: the
/// cache is an optimisation, and the file keeps its previous contents.
async fn keep_digests(reads: Arc<Reads>, cancel: tokio_util::sync::CancellationToken) {
    loop {
        let stop = tokio::select! {
            _ = cancel.cancelled() => true,
            _ = reads.digests.changed() => false,
        };
        let saving = reads.clone();
        if let Ok(Err(error)) = tokio::task::spawn_blocking(move || saving.digests.save()).await {
            warn!("digest cache not saved: {error}");
        }
        if stop {
            return;
        }
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = tokio::time::sleep(DIGEST_SAVE_INTERVAL) => {}
        }
    }
}

/// Binds the endpoint on `listen`, serving with `server` and dialling with `client`.
fn bind(
    listen: SocketAddr,
    server: quinn::ServerConfig,
    client: quinn::ClientConfig,
) -> Result<Endpoint, SpawnError> {
    crate::endpoint::bind_endpoint(listen, Some(server), client).map_err(|error| SpawnError::Bind {
        addr: listen,
        error,
    })
}
