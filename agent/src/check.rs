//! `orbit-star --check-config`: every check [`Star::spawn`](crate::Star::spawn) makes before it
//! binds (name, certificate, key, CA, roots, state directory), without binding anything or
//! writing anywhere.

use crate::jail::Jail;
use crate::startup::{
    check_certificate_names, check_crl_sequence, revocation_list, SpawnError, StarConfig,
};

/// Checks that a star could start with `config`.
///
/// # Errors
///
/// The [`SpawnError`] that [`Star::spawn`](crate::Star::spawn) would return.
pub fn check_config(config: &StarConfig) -> Result<(), SpawnError> {
    orbit_certs::validate_star_name(&config.name).map_err(SpawnError::Name)?;
    check_certificate_names(config)?;
    if config.roots.is_empty() && config.read_only_roots.is_empty() {
        return Err(SpawnError::NoRoots);
    }
    crate::protected::check_roots(config)?;
    Jail::open(&config.roots, &config.read_only_roots).map_err(SpawnError::Root)?;
    let crl = revocation_list(config)?;
    // An older list than the one recorded is refused at start: said here too, recording nothing.
    check_crl_sequence(config.state_dir.as_deref(), None, crl.as_ref(), false)?;
    crate::endpoint::quic_configs(config, crl.as_ref())?;
    if let Some(path) = &config.state_dir {
        if path.exists() && !path.is_dir() {
            return Err(SpawnError::StateDir {
                path: path.clone(),
                error: std::io::Error::other("not a directory"),
            });
        }
    }
    Ok(())
}
