//! The star's configuration: `star.toml` (as `orbitctl init` writes it), overridden by flags.
//! Relative paths in the file resolve against the file's directory. The file is strict: an
//! unknown key is an error that names it.
//!
//! The token key comes from, in order: `--token-key-file`, the `ORBIT_AUTH_SECRET` environment
//! variable (64 hexadecimal digits), the file's `token_key_file`, or `token.key` in systemd's
//! `$CREDENTIALS_DIRECTORY`. The previous token key (accepted until the next rotation) comes from
//! `--previous-token-key-file`, the file's `previous_token_key_file`, or `token.previous.key` in
//! `$CREDENTIALS_DIRECTORY` when it exists.
//!
//! Key files (the TLS private key, the token keys) must be readable by their owner only; a key
//! file that its group or others may read is refused with the `chmod` that fixes it, as ssh
//! does. Key material is only ever read from files or the environment, never from a flag.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use orbit_wire::token::TokenKey;

use crate::limits::{LimitError, LimitsFile};
use crate::StarConfig;

/// The environment variable that may carry the star's token key, as 64 hexadecimal digits.
pub const AUTH_SECRET_ENV: &str = "ORBIT_AUTH_SECRET";

/// The file in `$CREDENTIALS_DIRECTORY` that holds the previous token key.
pub const CREDENTIAL_PREVIOUS_TOKEN_KEY: &str = "token.previous.key";

/// `star.toml`. Every key is optional here; what is missing must come from flags.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StarFile {
    /// The star's name; its certificate must carry it.
    pub name: Option<String>,
    /// UDP address to listen on, e.g. `0.0.0.0:7401`.
    pub listen: Option<SocketAddr>,
    /// This star's certificate (PEM).
    pub cert: Option<PathBuf>,
    /// This star's private key (PEM).
    pub key: Option<PathBuf>,
    /// The grid CA certificate (PEM).
    pub ca: Option<PathBuf>,
    /// File holding this star's token key (64 hexadecimal digits).
    pub token_key_file: Option<PathBuf>,
    /// Directory for the star's state.
    pub state_dir: Option<PathBuf>,
    /// Roots to serve from and store into.
    #[serde(default)]
    pub allow: Vec<PathBuf>,
    /// File holding the token key before the last rotation (64 hexadecimal digits), accepted
    /// beside the current one. Default: none.
    pub previous_token_key_file: Option<PathBuf>,
    /// The grid's certificate revocation list (PEM), written by `orbitctl revoke`; reread on
    /// SIGHUP. Default: none, nothing is revoked.
    pub crl_file: Option<PathBuf>,
    /// Roots to serve from only: a replication that would write under one of these (and under
    /// no `allow` root) is refused with `PermissionDenied`. Default: none.
    #[serde(default)]
    pub allow_read: Vec<PathBuf>,
    /// The `[limits]` table: caps on connections, streams, transfers, token lifetime and
    /// timeouts. Every key has a default; see [`crate::limits::LimitsFile`].
    #[serde(default)]
    pub limits: LimitsFile,
}

/// Why the configuration could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The file is not valid TOML for a star, or has an unknown key.
    #[error("{path}: {error}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why, with the line.
        error: Box<toml::de::Error>,
    },
    /// A required setting is missing from both file and flags.
    #[error("missing setting `{0}`: set it in star.toml or pass --{flag}", flag = .0.replace('_', "-"))]
    Missing(&'static str),
    /// A key file is readable by others, or cannot be read.
    #[error(transparent)]
    Secret(#[from] orbit_certs::SecretFileError),
    /// The token key is not usable.
    #[error("token key from {source_name}: {error}")]
    TokenKey {
        /// Where it came from.
        source_name: String,
        /// Why.
        error: orbit_wire::token::KeyError,
    },
    /// A limit is out of range.
    #[error(transparent)]
    Limit(#[from] LimitError),
}

impl StarFile {
    /// Reads and parses a config file, resolving its relative paths against its directory.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Read`] or [`ConfigError::Parse`].
    pub fn load(path: &Path) -> Result<StarFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        let mut file: StarFile = toml::from_str(&text).map_err(|error| ConfigError::Parse {
            path: path.to_owned(),
            error: Box::new(error),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut file.cert,
            &mut file.key,
            &mut file.ca,
            &mut file.token_key_file,
            &mut file.state_dir,
            &mut file.previous_token_key_file,
            &mut file.crl_file,
        ]
        .into_iter()
        .flatten()
        {
            *p = base.join(&*p);
        }
        for p in file.allow.iter_mut().chain(file.allow_read.iter_mut()) {
            *p = base.join(&*p);
        }
        Ok(file)
    }

    /// Applies `flags` over `self`: every setting given as a flag wins; `--allow` and
    /// `--allow-read` each replace the file's list when given at all.
    pub fn merge(mut self, flags: StarFile) -> StarFile {
        macro_rules! over {
            ($($field:ident),*) => { $( if flags.$field.is_some() { self.$field = flags.$field; } )* };
        }
        over!(name, listen, cert, key, ca, token_key_file, state_dir);
        over!(previous_token_key_file, crl_file);
        if !flags.allow.is_empty() {
            self.allow = flags.allow;
        }
        if !flags.allow_read.is_empty() {
            self.allow_read = flags.allow_read;
        }
        self.limits = self.limits.merge(flags.limits);
        self
    }

    /// Reads the files the settings name and builds the star's configuration.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the missing setting or unreadable file.
    pub fn into_config(self, auth_secret: Option<String>) -> Result<StarConfig, ConfigError> {
        let name = self.name.ok_or(ConfigError::Missing("name"))?;
        let listen = self.listen.ok_or(ConfigError::Missing("listen"))?;
        let read = |path: Option<PathBuf>, setting: &'static str| {
            let path = path.ok_or(ConfigError::Missing(setting))?;
            std::fs::read_to_string(&path).map_err(|error| ConfigError::Read { path, error })
        };
        let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        let (source_name, text) = match (auth_secret, self.token_key_file, credentials.clone()) {
            (Some(secret), _, _) => (AUTH_SECRET_ENV.to_owned(), secret),
            (None, Some(path), _) => {
                let path = if path.is_dir() {
                    path.join("token.key")
                } else {
                    path
                };
                let text = orbit_certs::read_secret_file(&path, "token key file")?;
                (path.display().to_string(), text)
            }
            // systemd makes this folder and its files private to the service itself.
            (None, None, Some(dir)) => {
                let path = dir.join("token.key");
                let text = read(Some(path.clone()), "token_key_file")?;
                (path.display().to_string(), text)
            }
            (None, None, None) => return Err(ConfigError::Missing("token_key_file")),
        };
        let token_key = TokenKey::from_hex(&text)
            .map_err(|error| ConfigError::TokenKey { source_name, error })?;
        let previous = match (self.previous_token_key_file, credentials) {
            (Some(path), _) => Some((
                path.display().to_string(),
                orbit_certs::read_secret_file(&path, "previous token key file")?,
            )),
            (None, Some(dir)) if dir.join(CREDENTIAL_PREVIOUS_TOKEN_KEY).is_file() => {
                let path = dir.join(CREDENTIAL_PREVIOUS_TOKEN_KEY);
                let text = read(Some(path.clone()), "previous_token_key_file")?;
                Some((path.display().to_string(), text))
            }
            (None, _) => None,
        };
        let previous_token_key = previous
            .map(|(source_name, text)| {
                TokenKey::from_hex(&text)
                    .map_err(|error| ConfigError::TokenKey { source_name, error })
            })
            .transpose()?;
        let ca_pem = read(self.ca, "ca")?;
        let cert_pem = read(self.cert, "cert")?;
        let key_path = self.key.ok_or(ConfigError::Missing("key"))?;
        let key_pem = orbit_certs::read_secret_file(&key_path, "private key file")?;
        let crl_pem = self
            .crl_file
            .map(|path| read(Some(path), "crl_file"))
            .transpose()?;
        let limits = self.limits.into_limits()?;
        Ok(StarConfig {
            name,
            listen,
            ca_pem,
            cert_pem,
            key_pem,
            token_key,
            roots: self.allow,
            state_dir: self.state_dir,
            previous_token_key,
            crl_pem,
            read_only_roots: self.allow_read,
            limits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("star.toml");
        std::fs::write(&path, "name = \"a\"\nlisten_addr = \"1.2.3.4:5\"\n").unwrap();
        let err = StarFile::load(&path).unwrap_err().to_string();
        assert!(err.contains("listen_addr"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn relative_paths_resolve_beside_the_file_and_flags_win() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("star.toml");
        std::fs::write(
            &path,
            "name = \"a\"\ncert = \"cert.pem\"\nallow = [\"data\"]\n",
        )
        .unwrap();
        let file = StarFile::load(&path).unwrap();
        assert_eq!(file.cert, Some(tmp.path().join("cert.pem")));
        let merged = file.merge(StarFile {
            name: Some("b".into()),
            allow: vec!["/srv".into()],
            ..StarFile::default()
        });
        assert_eq!(merged.name.as_deref(), Some("b"));
        assert_eq!(merged.allow, vec![PathBuf::from("/srv")]);
        assert_eq!(merged.cert, Some(tmp.path().join("cert.pem")));
    }

    #[test]
    fn read_only_roots_and_limits_come_from_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("star.toml");
        std::fs::write(
            &path,
            "allow_read = [\"pub\"]\n[limits]\nmax_transfers = 2\nmax_token_lifetime_secs = 60\n",
        )
        .unwrap();
        let file = StarFile::load(&path).unwrap();
        assert_eq!(file.allow_read, vec![tmp.path().join("pub")]);
        let limits = file.limits.clone().into_limits().unwrap();
        assert_eq!(limits.max_transfers, 2);
        assert_eq!(
            limits.max_token_lifetime,
            std::time::Duration::from_secs(60)
        );
        std::fs::write(&path, "[limits]\nmax_streams = 2\n").unwrap();
        let err = StarFile::load(&path).unwrap_err().to_string();
        assert!(err.contains("max_streams"), "{err}");
    }

    #[test]
    fn missing_settings_say_which_flag_to_pass() {
        let err = StarFile::default()
            .into_config(None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "missing setting `name`: set it in star.toml or pass --name"
        );
    }
}
