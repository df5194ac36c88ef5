//! What a star trusts and proves, as far as a reload can change it: the token keys it accepts,
//! the client configuration it dials other stars with (its certificate, the CA, the
//! revocation list), the revocation list now in force, and who a connection's peer proved to
//! be. The server side lives in the endpoint itself.
//!
//! A handshake verifies the peer's certificate against the list of the configuration it began
//! under; one that began before a reload and completes after it would miss the new list. So
//! every completed handshake, incoming or outgoing, is checked again with [`Trust::revokes`]
//! once it is registered where a reload's scan would find it.

use std::sync::{Arc, RwLock};

use orbit_certs::{Attester, PeerIdentity, RevocationList};
use quinn::Connection;

use orbit_wire::token::KeyRing;

/// The star's name, token keys and client configuration; the last two are replaced on reload.
#[derive(Debug)]
pub(crate) struct Trust {
    /// The star's name, as its certificate carries it.
    pub(crate) name: String,
    keys: RwLock<KeyRing>,
    client_config: RwLock<quinn::ClientConfig>,
    /// Signs this star's attestations and checks other stars' against the grid's CA.
    attester: RwLock<Arc<Attester>>,
    /// The revocation list in force, if any.
    crl: RwLock<Option<Arc<RevocationList>>>,
}

impl Trust {
    pub(crate) fn new(
        name: String,
        keys: KeyRing,
        client_config: quinn::ClientConfig,
        attester: Attester,
        crl: Option<RevocationList>,
    ) -> Trust {
        Trust {
            name,
            keys: RwLock::new(keys),
            client_config: RwLock::new(client_config),
            attester: RwLock::new(Arc::new(attester)),
            crl: RwLock::new(crl.map(Arc::new)),
        }
    }

    /// The number of the revocation list in force, if there is one.
    pub(crate) fn crl_number(&self) -> Option<u64> {
        self.crl
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|crl| crl.number())
    }

    /// Whether the revocation list in force now revokes `conn`'s peer certificate.
    pub(crate) fn revokes(&self, conn: &Connection) -> bool {
        let crl = self.crl.read().unwrap_or_else(|e| e.into_inner()).clone();
        crl.is_some_and(|crl| peer_certificate_revoked(conn, &crl))
    }

    /// What signs and checks attestations now.
    pub(crate) fn attester(&self) -> Arc<Attester> {
        self.attester
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The token keys accepted now.
    pub(crate) fn keys(&self) -> std::sync::RwLockReadGuard<'_, KeyRing> {
        self.keys.read().unwrap_or_else(|e| e.into_inner())
    }

    /// How to dial another star now.
    pub(crate) fn client_config(&self) -> quinn::ClientConfig {
        self.client_config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Swaps in new keys, a new client configuration, a new attester and a new revocation
    /// list.
    pub(crate) fn replace(
        &self,
        keys: KeyRing,
        client_config: quinn::ClientConfig,
        attester: Attester,
        crl: Option<Arc<RevocationList>>,
    ) {
        *self.crl.write().unwrap_or_else(|e| e.into_inner()) = crl;
        *self.attester.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(attester);
        *self
            .client_config
            .write()
            .unwrap_or_else(|e| e.into_inner()) = client_config;
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = keys;
    }
}

/// Why a peer's certificate could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PeerError {
    /// The peer sent no certificate.
    #[error("no client certificate")]
    NoCertificate,
    /// quinn gave an identity of another type.
    #[error("unexpected peer identity type")]
    UnexpectedIdentity,
    /// The chain is empty.
    #[error("empty certificate chain")]
    EmptyChain,
    /// The certificate names no Orbit star or controller.
    #[error(transparent)]
    Certificate(#[from] orbit_certs::CertError),
}

/// The verified identity of a connection's peer.
///
/// # Errors
///
/// [`PeerError`] when the peer's certificate names no one.
pub(crate) fn peer_of(conn: &Connection) -> Result<PeerIdentity, PeerError> {
    let any = conn.peer_identity().ok_or(PeerError::NoCertificate)?;
    let certs = any
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .map_err(|_| PeerError::UnexpectedIdentity)?;
    let leaf = certs.first().ok_or(PeerError::EmptyChain)?;
    Ok(orbit_certs::peer_identity(leaf)?)
}

/// Whether `crl` revokes the leaf certificate `conn`'s peer presented.
pub(crate) fn peer_certificate_revoked(conn: &Connection, crl: &RevocationList) -> bool {
    let Some(any) = conn.peer_identity() else {
        return false;
    };
    let Ok(certs) = any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>() else {
        return false;
    };
    certs.first().is_some_and(|leaf| crl.is_revoked(leaf))
}
