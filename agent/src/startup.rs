//! What a star starts from: its [`StarConfig`], already read from files and flags, and why it
//! could not start ([`SpawnError`]), with the checks that spawning, reloading and
//! `--check-config` share.

use std::net::SocketAddr;
use std::path::PathBuf;

use orbit_certs::Role;
use orbit_wire::token::TokenKey;

use crate::limits::LimitError;
use crate::Limits;

/// Everything a star needs to run, already read from files and flags. `Debug` never prints the
/// private key or the token keys.
#[derive(Clone)]
pub struct StarConfig {
    /// The star's name, as its certificate carries it.
    pub name: String,
    /// The UDP address to listen on; port 0 picks one.
    pub listen: SocketAddr,
    /// The grid CA certificate, PEM.
    pub ca_pem: String,
    /// This star's certificate, PEM.
    pub cert_pem: String,
    /// This star's private key, PEM.
    pub key_pem: String,
    /// This star's token key.
    pub token_key: TokenKey,
    /// Directories it serves from and stores into.
    pub roots: Vec<PathBuf>,
    /// Where it keeps its state; `None` keeps none.
    pub state_dir: Option<PathBuf>,
    /// The token key before the last rotation, still accepted until the next one.
    pub previous_token_key: Option<TokenKey>,
    /// The grid's certificate revocation list, PEM: certificates it lists never complete a
    /// handshake with this star.
    pub crl_pem: Option<String>,
    /// Directories it serves from but never stores into (`--allow-read`).
    pub read_only_roots: Vec<PathBuf>,
    /// Caps on what peers may make it hold.
    pub limits: Limits,
    /// The star's own files and folders (its key, token keys, certificate, CA, revocation
    /// list, config file): no root may hold one, and none is ever served or overwritten. The
    /// state directory, and the grid's folder found beside these, are added to them at start.
    /// [`StarFile::into_config`](crate::config::StarFile::into_config) fills it.
    pub protected: Vec<PathBuf>,
}

impl std::fmt::Debug for StarConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StarConfig")
            .field("name", &self.name)
            .field("listen", &self.listen)
            .field("key_pem", &"***")
            .field("token_key", &self.token_key)
            .field("previous_token_key", &self.previous_token_key)
            .field("roots", &self.roots)
            .field("state_dir", &self.state_dir)
            .field("crl", &self.crl_pem.is_some())
            .field("read_only_roots", &self.read_only_roots)
            .field("limits", &self.limits)
            .field("protected", &self.protected)
            .finish_non_exhaustive()
    }
}

/// Why a star could not start.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The name is not a valid star name.
    #[error("invalid star name: {0}")]
    Name(orbit_certs::CertError),
    /// The certificate does not name this star.
    #[error("the certificate is for {found}, not star {expected:?}")]
    WrongCertificate {
        /// The configured name.
        expected: String,
        /// What the certificate names.
        found: String,
    },
    /// No root to serve or store under.
    #[error("no allowed roots: give at least one directory with --allow DIR or --allow-read DIR")]
    NoRoots,
    /// A root could not be opened.
    #[error("{0}")]
    Root(std::io::Error),
    /// A root holds one of the star's own files or folders, or lies inside one.
    #[error(
        "allowed root {} holds or lies inside this star's own {}: a root must not contain the \
         star's keys, config or state, which would let a peer read them or a controller \
         overwrite them",
        root.display(),
        path.display()
    )]
    ProtectedInRoot {
        /// The root as given.
        root: PathBuf,
        /// The star's file or folder.
        path: PathBuf,
    },
    /// The certificates or key could not be used.
    #[error("TLS configuration: {0}")]
    Tls(#[from] orbit_certs::CertError),
    /// The revocation list is older than one this star already had (put back by mistake or
    /// by an attacker to unrevoke a certificate), or missing when it had one.
    #[error("{0}")]
    OlderRevocationList(String),
    /// The TLS configuration is not usable for QUIC.
    #[error("QUIC TLS configuration: {0}")]
    Quic(String),
    /// The state directory could not be created.
    #[error("state directory {path}: {error}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The UDP socket could not be bound.
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        error: std::io::Error,
    },
    /// A limit is out of range.
    #[error(transparent)]
    Limit(#[from] LimitError),
}

/// The revocation list of `config`, checked to come from its CA.
pub(crate) fn revocation_list(
    config: &StarConfig,
) -> Result<Option<orbit_certs::RevocationList>, SpawnError> {
    config
        .crl_pem
        .as_deref()
        .map(|pem| orbit_certs::RevocationList::from_pem(pem, &config.ca_pem))
        .transpose()
        .map_err(SpawnError::Tls)
}

/// The file in the state directory that holds the highest revocation list number this star has
/// run with, so that an older list is refused even across a restart.
pub(crate) const CRL_NUMBER_FILE: &str = "crl-number";

/// Refuses `crl` if it is numbered below `in_force` (the list the running star holds) or below
/// the number recorded in `state_dir`, or if it is missing while either is set; a list's number
/// only goes up (`orbitctl revoke` numbers each list one above the last). Then, with `record`,
/// records its number in `state_dir` (`--check-config` writes nothing).
///
/// # Errors
///
/// [`SpawnError::OlderRevocationList`], or [`SpawnError::StateDir`] if the record cannot be read
/// or written.
pub(crate) fn check_crl_sequence(
    state_dir: Option<&std::path::Path>,
    in_force: Option<u64>,
    crl: Option<&orbit_certs::RevocationList>,
    record: bool,
) -> Result<(), SpawnError> {
    let state_error = |path: &std::path::Path, error| SpawnError::StateDir {
        path: path.to_owned(),
        error,
    };
    let recorded = match state_dir {
        Some(dir) => {
            let file = dir.join(CRL_NUMBER_FILE);
            match std::fs::read_to_string(&file) {
                Ok(text) => Some(text.trim().parse::<u64>().map_err(|_| {
                    state_error(
                        &file,
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            "not a revocation list number",
                        ),
                    )
                })?),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(state_error(&file, e)),
            }
        }
        None => None,
    };
    let (highest, whence) = match (in_force, recorded) {
        (Some(a), Some(b)) if b > a => (Some(b), "recorded in the state directory"),
        (Some(a), _) => (Some(a), "in force"),
        (None, Some(b)) => (Some(b), "recorded in the state directory"),
        (None, None) => (None, ""),
    };
    match (highest, crl) {
        (Some(highest), None) => {
            return Err(SpawnError::OlderRevocationList(format!(
                "no revocation list is configured, but list #{highest} was ({whence}): \
                 refusing to run without it"
            )))
        }
        (Some(highest), Some(crl)) if crl.number() < highest => {
            return Err(SpawnError::OlderRevocationList(format!(
                "revocation list #{} is older than list #{highest} ({whence}): refusing to \
                 put an older list back",
                crl.number()
            )))
        }
        _ => {}
    }
    if let (Some(dir), Some(crl), true) = (state_dir, crl, record) {
        if recorded != Some(crl.number()) {
            let file = dir.join(CRL_NUMBER_FILE);
            let tmp = dir.join(format!(".{CRL_NUMBER_FILE}.tmp"));
            std::fs::write(&tmp, format!("{}\n", crl.number()))
                .and_then(|()| std::fs::rename(&tmp, &file))
                .map_err(|e| state_error(&file, e))?;
        }
    }
    Ok(())
}

/// Checks that the certificate names this star, as a star.
///
/// # Errors
///
/// [`SpawnError::WrongCertificate`], or a certificate that cannot be read.
pub(crate) fn check_certificate_names(config: &StarConfig) -> Result<(), SpawnError> {
    let certs = orbit_certs::load_certs(&config.cert_pem)?;
    let identity = orbit_certs::peer_identity(&certs[0])?;
    if identity.role != Role::Star || identity.name != config.name {
        return Err(SpawnError::WrongCertificate {
            expected: config.name.clone(),
            found: identity.to_string(),
        });
    }
    Ok(())
}
