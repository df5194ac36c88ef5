//! Orbit's trust: one certificate authority per grid, leaf certificates for stars and the
//! controller, and the rustls configurations that make every connection mutual TLS.
//!
//! # Identity scheme
//!
//! A grid has exactly one CA ([`GridCa`], made by `orbitctl init`). It issues two kinds of leaf
//! certificate, each naming its holder and role:
//!
//! | role       | subject CN | SANs                                  | extended key usage     |
//! |------------|------------|---------------------------------------|------------------------|
//! | star       | `<name>`   | DNS `<name>`, URI `orbit:star:<name>` | serverAuth, clientAuth |
//! | controller | `<name>`   | URI `orbit:controller:<name>`         | clientAuth             |
//!
//! Names are DNS labels ([`validate_name`]): 1 to 63 bytes of `a-z`, `0-9` and `-`, not starting
//! or ending with `-`.
//!
//! Trust is decided in two steps, and this crate keeps them apart:
//!
//! 1. **The handshake** ([`server_config`], [`client_config`]): TLS 1.3 only, the grid CA as the
//!    only root, client certificates mandatory. A star is dialled with the server name set to its
//!    star name, so the standard WebPKI server verifier checks both that the peer belongs to the
//!    grid and that it is the star we meant (DNS SAN, serverAuth). A certificate from another CA
//!    never completes a handshake.
//! 2. **The identity** ([`peer_identity`]): once rustls has accepted a certificate, its single
//!    `orbit:<role>:<name>` URI says who the peer is. A star takes control commands only from a
//!    [`Role::Controller`] and read requests only from a [`Role::Star`]; that policy lives with
//!    the caller, this crate only reports the identity.
//!
//! 3. **Revocation** ([`RevocationList`]): the CA signs a list of revoked certificates; a
//!    configuration built with one (`*_with_crl`) makes rustls refuse every listed certificate.
//!
//! Secret files (private keys, token keys) are read with [`read_secret_file`], which refuses a
//! file that its group or others may access, or [`read_service_secret_file`], which also takes a
//! root-owned file its group may only read (how root shares a key with the star's user).
//!
//! This crate must never accept a certificate on its own judgement: chain and name checks are
//! always rustls's, and [`peer_identity`] is only ever applied to a certificate rustls verified.

mod ca;
mod crl;
mod error;
mod identity;
mod secret;
mod sign;
mod tls;
mod validity;

pub use ca::{GridCa, IssueOptions, IssuedCert};
pub use crl::{serial_of, RevocationList};
pub use error::CertError;
pub use identity::{
    peer_identity, validate_name, validate_star_name, PeerIdentity, Role, RESERVED_STAR_NAMES,
};
pub use secret::{forbid_core_dumps, read_secret_file, read_service_secret_file, SecretFileError};
pub use sign::{Attester, SignatureError, Signed};
pub use tls::{
    client_config, client_config_with_crl, load_certs, load_key, server_config,
    server_config_with_crl,
};
pub use validity::{days_left, expires_soon, expiry_text, not_after_of, EXPIRY_WARNING};
