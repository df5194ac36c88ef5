//! Reloading a running star (SIGHUP in `orbit-star`): new token keys, new certificates and a new
//! revocation list take effect without a restart, and every open connection whose peer
//! certificate the new list revokes is closed at once, incoming or pooled.
//!
//! A reload is all or nothing: everything is read and built first, and only then swapped in.
//! It never changes the star's name, address or roots.

use std::sync::Arc;

use quinn::Connection;
use tracing::{info, warn};

use orbit_certs::RevocationList;
use orbit_wire::token::KeyRing;
use orbit_wire::ErrorCode;

use crate::error::varint;
use crate::star::{check_certificate_names, quic_configs, revocation_list, Shared};
use crate::{SpawnError, StarConfig};

/// What a reload changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// The current token key's id.
    pub key_id: u32,
    /// The previous token key's id, if there is one.
    pub previous_key_id: Option<u32>,
    /// How many certificates the revocation list revokes (0 without one).
    pub revoked: usize,
    /// Open connections closed because their peer's certificate is now revoked.
    pub closed: usize,
}

/// Removes a connection from [`Shared::conns`] when its handler ends.
pub(crate) struct Registered<'a> {
    pub(crate) shared: &'a Shared,
    pub(crate) id: usize,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.shared
            .conns
            .lock()
            .expect("conns lock")
            .remove(&self.id);
    }
}

/// Logs which keys and list a star runs with: key ids and counts, never key material.
pub(crate) fn log_keys(shared: &Shared, crl: Option<&RevocationList>) {
    let keys = shared.keys.read().expect("keys lock");
    let previous = keys
        .previous()
        .map_or_else(|| "none".to_owned(), |k| format!("{:08x}", k.key_id()));
    let crl = crl.map_or_else(
        || "no revocation list".to_owned(),
        |c| format!("revocation list #{} revoking {}", c.number(), c.len()),
    );
    info!(
        "token key id {:08x}, previous {previous}; {crl}",
        keys.current().key_id()
    );
}

pub(crate) async fn reload(
    shared: &Arc<Shared>,
    config: &StarConfig,
) -> Result<Reloaded, SpawnError> {
    if config.name != shared.name {
        return Err(SpawnError::WrongCertificate {
            expected: shared.name.clone(),
            found: format!("a configuration for star {:?}", config.name),
        });
    }
    check_certificate_names(config)?;
    let crl = revocation_list(config)?;
    let (server, client) = quic_configs(config, crl.as_ref())?;

    // Everything is built: swap it in. New handshakes see the new list from here on.
    shared.endpoint.set_server_config(Some(server));
    *shared.client_config.write().expect("client config lock") = client;
    *shared.keys.write().expect("keys lock") =
        KeyRing::new(config.token_key.clone(), config.previous_token_key.clone());

    let mut closed = 0;
    if let Some(crl) = &crl {
        let revoked = |conn: &Connection| peer_certificate_revoked(conn, crl);
        let incoming: Vec<Connection> = shared
            .conns
            .lock()
            .expect("conns lock")
            .values()
            .filter(|conn| revoked(conn))
            .cloned()
            .collect();
        for conn in &incoming {
            warn!(
                remote = %conn.remote_address(),
                "closing a connection: its peer's certificate is now revoked"
            );
            conn.close(varint(ErrorCode::PermissionDenied), b"certificate revoked");
        }
        closed = incoming.len() + shared.pool.close_where(revoked).await;
    }
    let keys = shared.keys.read().expect("keys lock").clone();
    let reloaded = Reloaded {
        key_id: keys.current().key_id(),
        previous_key_id: keys.previous().map(|k| k.key_id()),
        revoked: crl.as_ref().map_or(0, RevocationList::len),
        closed,
    };
    log_keys(shared, crl.as_ref());
    info!(
        closed,
        "reloaded: {closed} connections with revoked certificates closed"
    );
    Ok(reloaded)
}

fn peer_certificate_revoked(conn: &Connection, crl: &RevocationList) -> bool {
    let Some(any) = conn.peer_identity() else {
        return false;
    };
    let Ok(certs) = any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>() else {
        return false;
    };
    certs.first().is_some_and(|leaf| crl.is_revoked(leaf))
}
