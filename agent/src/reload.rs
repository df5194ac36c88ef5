//! Reloading a running star (SIGHUP in `orbit-star`): new token keys, new certificates and a new
//! revocation list take effect without a restart, and every open connection whose peer
//! certificate the new list revokes is closed at once, incoming or pooled.
//!
//! A reload is all or nothing: everything is read and built first, and only then swapped in.
//! It never changes the star's name, address or roots. A revocation list numbered below the one
//! in force (or below the one recorded in the state directory), or none where one was, is
//! refused: a list's number only goes up, so an older list cannot be put back to unrevoke a
//! certificate.

use quinn::{Connection, Endpoint};
use tracing::info;

use orbit_certs::RevocationList;
use orbit_wire::token::KeyRing;

use crate::connection::Connections;
use crate::endpoint::quic_configs;
use crate::pool::Pool;
use crate::startup::{check_certificate_names, revocation_list, SpawnError, StarConfig};
use crate::trust::{peer_certificate_revoked, Trust};

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

/// The parts of a star a reload changes.
pub(crate) struct Parts<'a> {
    pub(crate) endpoint: &'a Endpoint,
    pub(crate) trust: &'a Trust,
    pub(crate) connections: &'a Connections,
    pub(crate) pool: &'a Pool,
}

/// Logs which keys and list a star runs with: key ids and counts, never key material.
pub(crate) fn log_keys(trust: &Trust, crl: Option<&RevocationList>) {
    let keys = trust.keys();
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

/// Builds everything `config` asks for, then swaps it in and closes the connections it revokes.
///
/// # Errors
///
/// [`SpawnError`] if anything cannot be built; then nothing changed.
pub(crate) fn reload(parts: Parts<'_>, config: &StarConfig) -> Result<Reloaded, SpawnError> {
    let trust = parts.trust;
    if config.name != trust.name {
        return Err(SpawnError::WrongCertificate {
            expected: trust.name.clone(),
            found: format!("a configuration for star {:?}", config.name),
        });
    }
    check_certificate_names(config)?;
    let crl = revocation_list(config)?;
    let (server, client) = quic_configs(config, crl.as_ref())?;
    let attester = crate::endpoint::attester(config, crl.as_ref())?;
    // Last of the checks, as it records the list's number once it passes.
    crate::startup::check_crl_sequence(
        config.state_dir.as_deref(),
        trust.crl_number(),
        crl.as_ref(),
        true,
    )?;

    // Everything is built: swap it in. New handshakes see the new list from here on.
    // The list goes into `trust` before the scan below: a handshake that completes after the
    // scan is checked against it when it registers (see trust.rs).
    parts.endpoint.set_server_config(Some(server));
    let crl = crl.map(std::sync::Arc::new);
    trust.replace(
        KeyRing::new(config.token_key.clone(), config.previous_token_key.clone()),
        client,
        attester,
        crl.clone(),
    );

    let mut closed = 0;
    if let Some(crl) = &crl {
        let revoked = |conn: &Connection| peer_certificate_revoked(conn, crl);
        closed = parts.connections.close_where(revoked) + parts.pool.close_where(revoked);
    }
    let reloaded = {
        let keys = trust.keys();
        Reloaded {
            key_id: keys.current().key_id(),
            previous_key_id: keys.previous().map(|k| k.key_id()),
            revoked: crl.as_deref().map_or(0, RevocationList::len),
            closed,
        }
    };
    log_keys(trust, crl.as_deref());
    info!(
        closed,
        "reloaded: {closed} connections with revoked certificates closed"
    );
    Ok(reloaded)
}
