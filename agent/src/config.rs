//! The star's configuration: `star.toml` (as `orbitctl init` writes it), `ORBIT_*` environment
//! variables and flags, in one precedence order: **flag, then environment, then file, then
//! default**. Relative paths in the file resolve against the file's directory. The file is
//! strict: an unknown key is an error that names it and its line.
//!
//! Every setting is declared once, in the [`settings!`] list below: its doc comment is the
//! `--help` text, its `#[arg]` gives the flag and the `ORBIT_*` variable, and its field name is
//! the key in `star.toml`. Adding a setting there gives it all three; [`StarFile::into_config`]
//! then decides what it means.
//!
//! The token key comes from, in order: `--token-key-file` on the command line, the
//! `ORBIT_AUTH_SECRET` environment variable (64 hexadecimal digits), `ORBIT_TOKEN_KEY_FILE`, the
//! file's `token_key_file`, or `token.key` in systemd's `$CREDENTIALS_DIRECTORY`. The certificate,
//! key and CA likewise default to `cert.pem`, `key.pem` and `ca.pem` in `$CREDENTIALS_DIRECTORY`.
//!
//! Key bytes never reach a log or `--check-config`'s output: only the paths they came from.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use orbit_wire::token::TokenKey;

use crate::limits::{CongestionControl, Connections, LimitError, LimitsFile};
use crate::StarConfig;

/// The environment variable that may carry the star's token key, as 64 hexadecimal digits.
pub const AUTH_SECRET_ENV: &str = "ORBIT_AUTH_SECRET";
/// The file in `$CREDENTIALS_DIRECTORY` that holds the previous token key.
pub const CREDENTIAL_PREVIOUS_TOKEN_KEY: &str = "token.previous.key";
/// The directory systemd passes `LoadCredential=` files in.
pub const CREDENTIALS_ENV: &str = "CREDENTIALS_DIRECTORY";
/// What `--check-config` and the docs say about precedence.
pub const PRECEDENCE: &str =
    "flag, then ORBIT_* environment variable, then star.toml, then default";

/// How the star writes its log lines on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Lines for people.
    #[default]
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Declares the star's settings once: the struct that is both the clap flags (with their
/// `ORBIT_*` variables) and the `star.toml` schema, the list of its keys, and the merge.
macro_rules! settings {
    ($( $(#[$meta:meta])* $field:ident : $ty:ty, )*) => {
        /// The star's settings, as flags, environment variables or `star.toml` keys. Every one is
        /// optional here; [`StarFile::into_config`] says which are required.
        #[derive(Debug, Default, Clone, clap::Args, Deserialize, Serialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct StarFile {
            $( $(#[$meta])* pub $field: $ty, )*
        }

        impl StarFile {
            /// Every key of `star.toml`, which is also every flag's name with `_` for `-`.
            pub const KEYS: &'static [&'static str] = &[$(stringify!($field)),*];

            /// Applies `over` on top of `self`: every setting `over` has wins (a list wins when
            /// it is not empty).
            pub fn merge(mut self, over: StarFile) -> StarFile {
                $( Setting::overlay(&mut self.$field, over.$field); )*
                self
            }

            fn resolve_paths(&mut self, base: &Path) {
                $( Setting::resolve(&mut self.$field, base); )*
            }

            /// Each key with its value as TOML, `None` when unset.
            pub fn entries(&self) -> Vec<(&'static str, Option<String>)> {
                vec![$( (stringify!($field), Setting::show(&self.$field)) ),*]
            }
        }
    };
}

settings! {
    /// The star's name; its certificate must carry the same name.
    #[arg(long, env = "ORBIT_NAME")]
    name: Option<String>,
    /// The UDP address to listen on, e.g. 0.0.0.0:7401; port 0 picks a free port.
    #[arg(long, env = "ORBIT_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// This star's certificate (PEM). Default: cert.pem in $CREDENTIALS_DIRECTORY.
    #[arg(long, env = "ORBIT_CERT", value_name = "FILE")]
    cert: Option<PathBuf>,
    /// This star's private key (PEM). Default: key.pem in $CREDENTIALS_DIRECTORY.
    #[arg(long, env = "ORBIT_KEY", value_name = "FILE")]
    key: Option<PathBuf>,
    /// The grid CA certificate (PEM). Default: ca.pem in $CREDENTIALS_DIRECTORY.
    #[arg(long, env = "ORBIT_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// File holding this star's token key (64 hexadecimal digits). Given as a flag it wins over
    /// ORBIT_AUTH_SECRET, which wins over the variable and the file. Default: token.key in
    /// $CREDENTIALS_DIRECTORY.
    #[arg(long, env = "ORBIT_TOKEN_KEY_FILE", value_name = "FILE")]
    token_key_file: Option<PathBuf>,
    /// Directory for the star's state.
    #[arg(long, env = "ORBIT_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// A directory to serve from and store into; repeat for several (ORBIT_ALLOW separates them
    /// with ':'). Replaces the file's `allow`. No root may hold the star's keys, config or
    /// state, nor lie inside them.
    #[arg(long, env = "ORBIT_ALLOW", value_name = "DIR", value_delimiter = ':')]
    allow: Vec<PathBuf>,
    /// Serve Prometheus metrics over HTTP at ADDR/metrics, e.g. 127.0.0.1:9407. Default: off.
    #[arg(long, env = "ORBIT_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Log format on stderr. The level comes from RUST_LOG (default: info). Default: human.
    #[arg(long, env = "ORBIT_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// A directory to serve from but never store into; repeat for several (ORBIT_ALLOW_READ
    /// separates them with ':'). A replication whose target lies under it (and under no --allow
    /// directory) is refused. Replaces the file's `allow_read`.
    #[arg(long, env = "ORBIT_ALLOW_READ", value_name = "DIR", value_delimiter = ':')]
    allow_read: Vec<PathBuf>,
    /// File holding this star's token key before the last rotation, still accepted until the
    /// next one (see docs/KEYS.md). Default: token.previous.key in $CREDENTIALS_DIRECTORY when
    /// it exists.
    #[arg(long, env = "ORBIT_PREVIOUS_TOKEN_KEY_FILE", value_name = "FILE")]
    previous_token_key_file: Option<PathBuf>,
    /// The grid's certificate revocation list (PEM), written by `orbitctl revoke`; reread on
    /// SIGHUP. Default: none, nothing is revoked.
    #[arg(long, env = "ORBIT_CRL_FILE", value_name = "FILE")]
    crl_file: Option<PathBuf>,
    /// Connections one star may hold open to this star at once; the controller may hold
    /// max_transfers more (one per `orbitctl` command). Default: 8.
    #[arg(long, env = "ORBIT_MAX_CONNECTIONS_PER_PEER", value_name = "N")]
    max_connections_per_peer: Option<u32>,
    /// Streams a peer may have open at once on one connection, each direction. Default: 64.
    #[arg(long, env = "ORBIT_MAX_STREAMS_PER_CONNECTION", value_name = "N")]
    max_streams_per_connection: Option<u32>,
    /// Replications as destination, and reads as source, running at once; one more is refused
    /// with ResourceExhausted. Default: 64.
    #[arg(long, env = "ORBIT_MAX_TRANSFERS", value_name = "N")]
    max_transfers: Option<u32>,
    /// The longest lifetime a token may be minted with (issue to expiry), in seconds; longer
    /// ones are refused. Default: 3600.
    #[arg(long, env = "ORBIT_MAX_TOKEN_LIFETIME_SECS", value_name = "SECS")]
    max_token_lifetime_secs: Option<u64>,
    /// How long a peer may take to complete its handshake, in seconds. Default: 10.
    #[arg(long, env = "ORBIT_HANDSHAKE_TIMEOUT_SECS", value_name = "SECS")]
    handshake_timeout_secs: Option<u64>,
    /// How long a connection may stay silent before it is dropped, in seconds. Default: 30.
    #[arg(long, env = "ORBIT_IDLE_TIMEOUT_SECS", value_name = "SECS")]
    idle_timeout_secs: Option<u64>,
    /// How long a peer may take to send a stream's request once it opened it, in seconds.
    /// Default: 10.
    #[arg(long, env = "ORBIT_REQUEST_TIMEOUT_SECS", value_name = "SECS")]
    request_timeout_secs: Option<u64>,
    /// How long one write to a peer star may wait for the peer's flow-control credit, in
    /// seconds; then the stream is reset with DeadlineExceeded and its read slot freed.
    /// Default: 30.
    #[arg(long, env = "ORBIT_WRITE_TIMEOUT_SECS", value_name = "SECS")]
    write_timeout_secs: Option<u64>,
    /// The flow-control window of one stream, in MiB (1 to 1024): the most one transfer
    /// buffers, and about the most it moves per round trip. A connection's window is twice it.
    /// Raise it for long, lossy links: 32 MiB for 1 Gbit/s at 50 ms RTT. Default: 16.
    #[arg(long, env = "ORBIT_STREAM_WINDOW_MIB", value_name = "MIB")]
    stream_window_mib: Option<u32>,
    /// Congestion control for what this star sends: bbr keeps a long lossy link busy (at 0.5%
    /// loss and 50 ms RTT, cubic falls to a few Mbit/s); cubic backs off on every loss, as TCP
    /// does, and shares a busy link more evenly with TCP flows. Default: bbr.
    #[arg(long, env = "ORBIT_CONGESTION_CONTROL", value_enum)]
    congestion_control: Option<CongestionControl>,
    /// Threads for the network side: QUIC, TLS and the protocol (1 to 1024). Each transfer's
    /// reads, writes and hashing run on threads of their own beside them. Read at start only.
    /// Default: half the CPUs the star may use, at least 1.
    #[arg(long, env = "ORBIT_WORKER_THREADS", value_name = "N")]
    worker_threads: Option<u32>,
    /// QUIC connections this star opens to each source of one file it pulls in pieces
    /// (`orbitctl replicate --connections auto`, or `--also-from`): "auto" or 1 to 8. Each
    /// connection is driven by one task, so several spread one file's packet work and crypto
    /// over cores; the file's SHA-256 still runs on one thread. auto: 1 for a file under 256
    /// MiB or on a host with fewer than 4 CPUs, otherwise half the CPUs, at most 4. A command
    /// that names its own count (`orbitctl replicate --connections N`) wins. Default: auto.
    #[arg(long, env = "ORBIT_CONNECTIONS", value_name = "auto|N")]
    connections: Option<Connections>,
}

/// What every type of setting knows: how it overrides, resolves relative paths and prints.
trait Setting {
    fn overlay(&mut self, over: Self);
    fn resolve(&mut self, _base: &Path) {}
    fn show(&self) -> Option<String>;
}

impl<T: Serialize + Resolve> Setting for Option<T> {
    fn overlay(&mut self, over: Self) {
        if over.is_some() {
            *self = over;
        }
    }
    fn resolve(&mut self, base: &Path) {
        if let Some(value) = self {
            value.resolve(base);
        }
    }
    fn show(&self) -> Option<String> {
        self.as_ref().map(toml_value)
    }
}

impl<T: Serialize + Resolve> Setting for Vec<T> {
    fn overlay(&mut self, over: Self) {
        if !over.is_empty() {
            *self = over;
        }
    }
    fn resolve(&mut self, base: &Path) {
        self.iter_mut().for_each(|v| v.resolve(base));
    }
    fn show(&self) -> Option<String> {
        (!self.is_empty()).then(|| toml_value(self))
    }
}

/// Paths in `star.toml` are relative to its folder; other values stay as they are.
trait Resolve {
    fn resolve(&mut self, _base: &Path) {}
}
impl Resolve for PathBuf {
    fn resolve(&mut self, base: &Path) {
        *self = base.join(&*self);
    }
}
impl Resolve for String {}
impl Resolve for SocketAddr {}
impl Resolve for LogFormat {}
impl Resolve for CongestionControl {}
impl Resolve for Connections {}
impl Resolve for bool {}
impl Resolve for u32 {}
impl Resolve for u64 {}

fn toml_value<T: Serialize + ?Sized>(value: &T) -> String {
    toml::Value::try_from(value).map_or_else(|e| format!("<{e}>"), |v| v.to_string())
}

/// Where a setting's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag.
    Flag,
    /// An `ORBIT_*` environment variable.
    Env,
    /// `star.toml`.
    File,
    /// Not set anywhere.
    Default,
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
    /// A required setting is missing from flags, environment and file.
    #[error("missing setting `{0}`: set it in star.toml, pass --{flag} or set ORBIT_{var}", flag = .0.replace('_', "-"), var = .0.to_uppercase())]
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
    /// Another setting is out of range.
    #[error("setting `{key}` must be {rule}")]
    Range {
        /// The key, as in `star.toml`.
        key: &'static str,
        /// What it must be.
        rule: &'static str,
    },
}

/// The most worker threads a star accepts; far more than a host has cores.
const MAX_WORKER_THREADS: u32 = 1024;

impl StarFile {
    /// Reads and parses a config file, resolving its relative paths against its directory.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Read`] or [`ConfigError::Parse`] (which names an unknown key and its line).
    pub fn load(path: &Path) -> Result<StarFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        let mut file: StarFile = toml::from_str(&text).map_err(|error| ConfigError::Parse {
            path: path.to_owned(),
            error: Box::new(error),
        })?;
        file.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        Ok(file)
    }

    /// The log format, human unless set.
    pub fn log_format(&self) -> LogFormat {
        self.log_format.unwrap_or_default()
    }

    /// How many threads the star's async runtime gets: the setting, or half of `cpus` (the CPUs
    /// the star may use), at least 1. Half, because every transfer also keeps a thread of its
    /// own busy hashing and moving bytes to or from the disk; with one worker on two CPUs, one
    /// replication over a veth at MTU 1500 took 0.95 of the time with two (bench/RESULTS.md).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Range`] for 0 or more than 1024.
    pub fn worker_threads(&self, cpus: usize) -> Result<usize, ConfigError> {
        match self.worker_threads {
            Some(n @ 1..=MAX_WORKER_THREADS) => Ok(n as usize),
            Some(_) => Err(ConfigError::Range {
                key: "worker_threads",
                rule: "1 to 1024",
            }),
            None => Ok((cpus / 2).max(1)),
        }
    }

    /// Reads the files the settings name and builds the star's configuration. `auth_secret` is
    /// the token key from `ORBIT_AUTH_SECRET` when it applies (see the module docs).
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the missing setting or unreadable file.
    pub fn into_config(self, auth_secret: Option<String>) -> Result<StarConfig, ConfigError> {
        let name = self.name.ok_or(ConfigError::Missing("name"))?;
        let listen = self.listen.ok_or(ConfigError::Missing("listen"))?;
        let credentials = std::env::var_os(CREDENTIALS_ENV).map(PathBuf::from);
        // The star's own files, wherever they come from: no root may hold them.
        let mut protected: Vec<PathBuf> = [
            &self.key,
            &self.token_key_file,
            &self.previous_token_key_file,
            &self.cert,
            &self.ca,
            &self.crl_file,
        ]
        .into_iter()
        .flatten()
        .cloned()
        .chain(credentials.clone())
        .collect();
        let read = |path: Option<PathBuf>, setting: &'static str| {
            let path = path.ok_or(ConfigError::Missing(setting))?;
            std::fs::read_to_string(&path).map_err(|error| ConfigError::Read { path, error })
        };
        // A key file named in the settings must be private to its owner, or root's and shared
        // with its group only (root:orbit 0640, as the systemd unit's layout has it); systemd
        // makes the credentials directory and its files private to the service itself.
        let secret = |path: Option<PathBuf>, file: &str, setting: &'static str, what: &str| match (
            path,
            &credentials,
        ) {
            (Some(path), _) => Ok((
                path.display().to_string(),
                orbit_certs::read_service_secret_file(&path, what)?,
            )),
            (None, Some(dir)) => {
                let path = dir.join(file);
                Ok((path.display().to_string(), read(Some(path), setting)?))
            }
            (None, None) => Err(ConfigError::Missing(setting)),
        };
        let (source_name, text) = match auth_secret {
            Some(secret) => (AUTH_SECRET_ENV.to_owned(), secret),
            None => {
                let path = self.token_key_file.map(|path| match path.is_dir() {
                    true => path.join("token.key"),
                    false => path,
                });
                protected.extend(path.clone());
                secret(path, "token.key", "token_key_file", "token key file")?
            }
        };
        let token_key = TokenKey::from_hex(&text)
            .map_err(|error| ConfigError::TokenKey { source_name, error })?;
        let previous_in_credentials = credentials
            .as_ref()
            .is_some_and(|dir| dir.join(CREDENTIAL_PREVIOUS_TOKEN_KEY).is_file());
        let previous_token_key =
            if self.previous_token_key_file.is_some() || previous_in_credentials {
                let (source_name, text) = secret(
                    self.previous_token_key_file,
                    CREDENTIAL_PREVIOUS_TOKEN_KEY,
                    "previous_token_key_file",
                    "previous token key file",
                )?;
                Some(
                    TokenKey::from_hex(&text)
                        .map_err(|error| ConfigError::TokenKey { source_name, error })?,
                )
            } else {
                None
            };
        let from_credentials = |path: Option<PathBuf>, file: &str| {
            path.or_else(|| credentials.as_ref().map(|dir| dir.join(file)))
        };
        let (_, key_pem) = secret(self.key, "key.pem", "key", "private key file")?;
        let crl_pem = self
            .crl_file
            .map(|path| read(Some(path), "crl_file"))
            .transpose()?;
        let limits = LimitsFile {
            max_connections_per_peer: self.max_connections_per_peer,
            max_streams_per_connection: self.max_streams_per_connection,
            max_transfers: self.max_transfers,
            max_token_lifetime_secs: self.max_token_lifetime_secs,
            handshake_timeout_secs: self.handshake_timeout_secs,
            idle_timeout_secs: self.idle_timeout_secs,
            request_timeout_secs: self.request_timeout_secs,
            write_timeout_secs: self.write_timeout_secs,
            stream_window_mib: self.stream_window_mib,
            congestion_control: self.congestion_control,
            connections: self.connections,
        }
        .into_limits()?;
        Ok(StarConfig {
            name,
            listen,
            ca_pem: read(from_credentials(self.ca, "ca.pem"), "ca")?,
            cert_pem: read(from_credentials(self.cert, "cert.pem"), "cert")?,
            key_pem,
            token_key,
            roots: self.allow,
            state_dir: self.state_dir,
            previous_token_key,
            crl_pem,
            read_only_roots: self.allow_read,
            limits,
            protected,
        })
    }

    /// What a setting left unset means, as `star.toml` would say it: `self` with every setting
    /// that has a default filled in (`cpus` for the worker threads, `credentials` for the key
    /// files systemd hands over), and for the others a note of what their absence does.
    fn with_defaults(
        &self,
        cpus: usize,
        credentials: Option<&Path>,
    ) -> (StarFile, Vec<(&'static str, &'static str)>) {
        let limits = crate::Limits::default();
        let defaults = StarFile {
            max_connections_per_peer: Some(limits.max_connections_per_peer),
            max_streams_per_connection: Some(limits.max_streams_per_connection),
            max_transfers: Some(limits.max_transfers),
            max_token_lifetime_secs: Some(limits.max_token_lifetime.as_secs()),
            handshake_timeout_secs: Some(limits.handshake_timeout.as_secs()),
            idle_timeout_secs: Some(limits.idle_timeout.as_secs()),
            request_timeout_secs: Some(limits.request_timeout.as_secs()),
            write_timeout_secs: Some(limits.write_timeout.as_secs()),
            stream_window_mib: Some(limits.stream_window_mib),
            congestion_control: Some(limits.congestion_control),
            log_format: Some(LogFormat::Human),
            worker_threads: Some(u32::try_from((cpus / 2).max(1)).unwrap_or(1)),
            connections: Some(limits.connections),
            ..StarFile::default()
        };
        // The settings given win over these defaults.
        let mut filled = defaults.merge(self.clone());
        if let Some(dir) = credentials {
            filled.cert = filled.cert.or_else(|| Some(dir.join("cert.pem")));
            filled.key = filled.key.or_else(|| Some(dir.join("key.pem")));
            filled.ca = filled.ca.or_else(|| Some(dir.join("ca.pem")));
            let previous = dir.join(CREDENTIAL_PREVIOUS_TOKEN_KEY);
            if filled.previous_token_key_file.is_none() && previous.is_file() {
                filled.previous_token_key_file = Some(previous);
            }
        }
        let notes = vec![
            ("name", "none: required"),
            ("listen", "none: required"),
            (
                "cert",
                "none: required (or $CREDENTIALS_DIRECTORY/cert.pem)",
            ),
            ("key", "none: required (or $CREDENTIALS_DIRECTORY/key.pem)"),
            ("ca", "none: required (or $CREDENTIALS_DIRECTORY/ca.pem)"),
            ("token_key_file", "see the token key line below"),
            (
                "state_dir",
                "none: no journal, a transfer cut by a restart starts over",
            ),
            ("allow", "none: nothing to store into"),
            ("allow_read", "none"),
            ("metrics_listen", "none: no metrics served"),
            (
                "previous_token_key_file",
                "none: only the current token key is accepted",
            ),
            ("crl_file", "none: nothing is revoked"),
        ];
        (filled, notes)
    }

    /// The effective configuration as `star.toml` lines, each with where it came from: a value
    /// given, the default it takes (`cpus` and `credentials` decide some), or what its absence
    /// means. Secrets are never shown, only where they came from.
    pub fn describe(
        &self,
        origin: impl Fn(&str) -> Origin,
        token_key_from: &str,
        cpus: usize,
        credentials: Option<&Path>,
    ) -> String {
        let mut out = format!("# effective configuration ({PRECEDENCE})\n");
        let (filled, notes) = self.with_defaults(cpus, credentials);
        for (key, value) in filled.entries() {
            let note = notes.iter().find(|(k, _)| *k == key).map(|(_, n)| *n);
            let line = match (value, note) {
                (Some(value), _) => format!("{key} = {value}"),
                (None, Some(note)) => format!("# {key}: {note}"),
                (None, None) => format!("# {key}: none"),
            };
            let from = match origin(key) {
                Origin::Flag => format!("--{}", key.replace('_', "-")),
                Origin::Env => format!("ORBIT_{}", key.to_uppercase()),
                Origin::File => "star.toml".to_owned(),
                Origin::Default => "default".to_owned(),
            };
            let _ = writeln!(out, "{line:<60} # from {from}");
        }
        let _ = writeln!(out, "# token key: *** (from {token_key_from})");
        out
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
    fn missing_settings_say_which_flag_and_variable_to_set() {
        let err = StarFile::default()
            .into_config(None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "missing setting `name`: set it in star.toml, pass --name or set ORBIT_NAME"
        );
    }

    #[test]
    fn every_key_round_trips_through_the_file() {
        let file = StarFile {
            name: Some("a".into()),
            log_format: Some(LogFormat::Json),
            allow: vec!["/srv".into()],
            ..StarFile::default()
        };
        let text = toml::to_string(&file).unwrap();
        let back: StarFile = toml::from_str(&text).unwrap();
        assert_eq!(back.log_format, Some(LogFormat::Json));
        assert_eq!(back.allow, vec![PathBuf::from("/srv")]);
        assert_eq!(StarFile::KEYS.len(), file.entries().len());
    }

    #[test]
    fn worker_threads_default_to_half_the_cpus_and_refuse_zero() {
        let unset = StarFile::default();
        assert_eq!(unset.worker_threads(1).unwrap(), 1);
        assert_eq!(unset.worker_threads(2).unwrap(), 1);
        assert_eq!(unset.worker_threads(16).unwrap(), 8);
        let set = |n| StarFile {
            worker_threads: Some(n),
            ..StarFile::default()
        };
        assert_eq!(set(3).worker_threads(2).unwrap(), 3);
        for bad in [0, MAX_WORKER_THREADS + 1] {
            let err = set(bad).worker_threads(2).unwrap_err().to_string();
            assert_eq!(err, "setting `worker_threads` must be 1 to 1024");
        }
    }
}
