//! The caps a star puts on what its peers may make it hold: connections per peer identity, streams
//! per connection, transfers in flight, the lifetime of a token it accepts, and how long a
//! handshake, a silent connection, an unsent request or a stalled write to a peer may take. Each has a default that suits a
//! grid of a few dozen stars on a LAN, a top-level `star.toml` key and a flag of the same name
//! with dashes (`max_transfers` / `--max-transfers`).
//!
//! Going over a cap is refused at once with `ResourceExhausted` (or `PermissionDenied` for a
//! token's lifetime); nothing here ever queues work that waits for room.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The congestion controller of a star's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CongestionControl {
    /// BBR: paces to the path's measured rate and round trip, and keeps a long lossy link busy.
    #[default]
    Bbr,
    /// CUBIC: backs off on every loss, as Linux TCP does, and so shares a link more evenly with
    /// TCP flows; on a long lossy link it keeps a small fraction of the rate.
    Cubic,
}

/// The most QUIC connections a star opens to one source for one file.
pub const MAX_CONNECTIONS: u32 = 8;
/// Files smaller than this take one connection under [`Connections::Auto`].
pub const AUTO_MIN_SIZE: u64 = 256 * 1024 * 1024;

/// How many QUIC connections a destination opens to each source of a file it pulls in pieces
/// (`orbitctl replicate --connections`, `--also-from`): in `star.toml` `"auto"` or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Connections {
    /// One for a file under 256 MiB or on a host with fewer than 4 CPUs; otherwise half the
    /// CPUs, at most 4.
    #[default]
    Auto,
    /// That many, 1 to [`MAX_CONNECTIONS`].
    Fixed(u32),
}

impl Connections {
    /// The connections to open to one source for a file of `size` bytes on a host with `cpus`
    /// CPUs. More connections than cores only add work: each is driven by one task, and the
    /// file's SHA-256 runs on a thread of its own beside them.
    pub fn for_file(self, size: u64, cpus: usize) -> usize {
        match self {
            Connections::Fixed(n) => n.clamp(1, MAX_CONNECTIONS) as usize,
            Connections::Auto if size < AUTO_MIN_SIZE || cpus < 4 => 1,
            Connections::Auto => (cpus / 2).min(4),
        }
    }
}

impl std::fmt::Display for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Connections::Auto => f.write_str("auto"),
            Connections::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// What a `connections` value must be.
const CONNECTIONS_RULE: &str = "\"auto\" or a number from 1 to 8";

impl std::str::FromStr for Connections {
    type Err = String;

    fn from_str(text: &str) -> Result<Connections, String> {
        match text.trim() {
            "auto" => Ok(Connections::Auto),
            n => n
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_CONNECTIONS).contains(n))
                .map(Connections::Fixed)
                .ok_or_else(|| format!("must be {CONNECTIONS_RULE}")),
        }
    }
}

impl Serialize for Connections {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Connections::Auto => s.serialize_str("auto"),
            Connections::Fixed(n) => s.serialize_u32(*n),
        }
    }
}

impl<'de> Deserialize<'de> for Connections {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Connections, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(i64),
            Text(String),
            Other(serde::de::IgnoredAny),
        }
        let bad = || serde::de::Error::custom(format!("connections must be {CONNECTIONS_RULE}"));
        match Raw::deserialize(d)? {
            Raw::Text(text) if text == "auto" => Ok(Connections::Auto),
            Raw::Number(n) => u32::try_from(n)
                .ok()
                .filter(|n| (1..=MAX_CONNECTIONS).contains(n))
                .map(Connections::Fixed)
                .ok_or_else(bad),
            Raw::Text(_) | Raw::Other(_) => Err(bad()),
        }
    }
}

/// The caps a running star enforces. [`Limits::default`] gives the documented defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections one star (certificate name) may hold open to this star at once; one more is
    /// closed with `ResourceExhausted`. The controller, which opens one per `orbitctl` command,
    /// may hold `max_transfers` more. Default 8.
    pub max_connections_per_peer: u32,
    /// Bidirectional and unidirectional streams a peer may have open at once on one connection
    /// (QUIC `max_concurrent_{bidi,uni}_streams`); further opens wait in the peer, costing this
    /// star nothing. Default 64.
    pub max_streams_per_connection: u32,
    /// Replications this star runs as a destination at once, and, separately, reads it serves as
    /// a source at once; one more is refused with `ResourceExhausted`. Default 64.
    pub max_transfers: u32,
    /// The longest lifetime a token may have been minted with (its expiry minus its issue
    /// time); a longer one is refused with `PermissionDenied`. Default 3,600 s.
    pub max_token_lifetime: Duration,
    /// How long a peer may take to complete its TLS handshake. Default 10 s.
    pub handshake_timeout: Duration,
    /// How long a connection may stay silent before it is dropped; live peers send keep-alives.
    /// Default 30 s.
    pub idle_timeout: Duration,
    /// How long a peer may take to send the one request that opens a stream (a read request or
    /// a control command) once it has opened the stream. Default 10 s.
    pub request_timeout: Duration,
    /// How long one write to a peer star (opening the answer stream, a frame, a chunk, the
    /// wait for the last acknowledgement) may wait for the peer's flow-control credit before
    /// the stream is reset with `DeadlineExceeded` and its read slot freed: a peer that grants
    /// no credit holds nothing for longer. A refusal gets at most 2 s whatever this says.
    /// Default 30 s.
    pub write_timeout: Duration,
    /// The QUIC flow-control window of one stream, in MiB: how far a sender may run ahead of
    /// what the receiver has taken, and so the most one transfer buffers out of order. A
    /// connection's window, and a star's send window, are twice it. One stream moves at most
    /// about this much per round trip, and a lost packet holds the window for about two round
    /// trips, so a long lossy link wants several bandwidth-delay products. Default 16 MiB.
    pub stream_window_mib: u32,
    /// The congestion controller of the star's connections, for what it sends. Default BBR:
    /// at 0.5% loss and 50 ms RTT, CUBIC moved 4 Mbit/s where BBR moved 86-375 (16 MiB,
    /// docs/OPERATIONS.md).
    pub congestion_control: CongestionControl,
    /// QUIC connections to each source of a file pulled in pieces. Default auto.
    pub connections: Connections,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections_per_peer: 8,
            max_streams_per_connection: 64,
            max_transfers: 64,
            max_token_lifetime: Duration::from_secs(3600),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            stream_window_mib: 16,
            congestion_control: CongestionControl::Bbr,
            connections: Connections::Auto,
        }
    }
}

/// The limit settings of `star.toml` and the matching flags, as `config` collects them. Every key is optional; what is
/// missing keeps its default (see [`Limits`]).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Connections per peer identity. Default 8.
    pub max_connections_per_peer: Option<u32>,
    /// Concurrent streams per connection, each direction. Default 64.
    pub max_streams_per_connection: Option<u32>,
    /// Replications as destination, and reads as source, in flight at once. Default 64.
    pub max_transfers: Option<u32>,
    /// Longest remaining token lifetime accepted, in seconds. Default 3600.
    pub max_token_lifetime_secs: Option<u64>,
    /// Handshake timeout, in seconds. Default 10.
    pub handshake_timeout_secs: Option<u64>,
    /// Idle timeout, in seconds. Default 30.
    pub idle_timeout_secs: Option<u64>,
    /// Time allowed to send a stream's request, in seconds. Default 10.
    pub request_timeout_secs: Option<u64>,
    /// Time one write to a peer may wait for its credit, in seconds. Default 30.
    pub write_timeout_secs: Option<u64>,
    /// Flow-control window of one stream, in MiB (1 to 1024). Default 16.
    pub stream_window_mib: Option<u32>,
    /// Congestion controller. Default BBR.
    pub congestion_control: Option<CongestionControl>,
    /// Connections per source of a file pulled in pieces. Default auto.
    pub connections: Option<Connections>,
}

/// Why a limit cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("limit `{key}` must be {rule}")]
pub struct LimitError {
    /// The key, as in `star.toml`.
    pub key: &'static str,
    /// What it must be.
    pub rule: &'static str,
}

impl LimitsFile {
    /// The limits, defaults filled in.
    ///
    /// # Errors
    ///
    /// [`LimitError`] for a zero count or timeout, or an idle timeout QUIC cannot carry.
    pub fn into_limits(self) -> Result<Limits, LimitError> {
        let d = Limits::default();
        let count = |v: Option<u32>, default: u32, key| match v {
            Some(0) => Err(LimitError {
                key,
                rule: "at least 1",
            }),
            v => Ok(v.unwrap_or(default)),
        };
        let secs = |v: Option<u64>, default: Duration, key| match v {
            Some(0) => Err(LimitError {
                key,
                rule: "at least 1 second",
            }),
            Some(s) => Ok(Duration::from_secs(s)),
            None => Ok(default),
        };
        let limits = Limits {
            max_connections_per_peer: count(
                self.max_connections_per_peer,
                d.max_connections_per_peer,
                "max_connections_per_peer",
            )?,
            max_streams_per_connection: count(
                self.max_streams_per_connection,
                d.max_streams_per_connection,
                "max_streams_per_connection",
            )?,
            max_transfers: count(self.max_transfers, d.max_transfers, "max_transfers")?,
            max_token_lifetime: secs(
                self.max_token_lifetime_secs,
                d.max_token_lifetime,
                "max_token_lifetime_secs",
            )?,
            handshake_timeout: secs(
                self.handshake_timeout_secs,
                d.handshake_timeout,
                "handshake_timeout_secs",
            )?,
            idle_timeout: secs(self.idle_timeout_secs, d.idle_timeout, "idle_timeout_secs")?,
            request_timeout: secs(
                self.request_timeout_secs,
                d.request_timeout,
                "request_timeout_secs",
            )?,
            write_timeout: secs(
                self.write_timeout_secs,
                d.write_timeout,
                "write_timeout_secs",
            )?,
            stream_window_mib: count(
                self.stream_window_mib,
                d.stream_window_mib,
                "stream_window_mib",
            )?,
            congestion_control: self.congestion_control.unwrap_or(d.congestion_control),
            connections: self.connections.unwrap_or(d.connections),
        };
        limits.validate()?;
        Ok(limits)
    }
}

/// The largest stream window: twice it (the connection window) still fits QUIC's counters and a
/// `u32` of bytes, whatever the setting.
const MAX_STREAM_WINDOW_MIB: u32 = 1024;

impl Limits {
    /// The stream window in bytes.
    pub fn stream_window(&self) -> u64 {
        u64::from(self.stream_window_mib) * 1024 * 1024
    }

    /// Checks the rules between limits and what QUIC can carry.
    ///
    /// # Errors
    ///
    /// [`LimitError`] naming the key.
    pub fn validate(&self) -> Result<(), LimitError> {
        if quinn::IdleTimeout::try_from(self.idle_timeout).is_err() {
            return Err(LimitError {
                key: "idle_timeout_secs",
                rule: "less than 2^62 milliseconds",
            });
        }
        let nonzero = [
            (self.max_connections_per_peer, "max_connections_per_peer"),
            (
                self.max_streams_per_connection,
                "max_streams_per_connection",
            ),
            (self.max_transfers, "max_transfers"),
        ];
        for (value, key) in nonzero {
            if value == 0 {
                return Err(LimitError {
                    key,
                    rule: "at least 1",
                });
            }
        }
        if !(1..=MAX_STREAM_WINDOW_MIB).contains(&self.stream_window_mib) {
            return Err(LimitError {
                key: "stream_window_mib",
                rule: "between 1 and 1024",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_connections_follow_the_size_and_the_cpus() {
        const MIB: u64 = 1024 * 1024;
        let auto = Connections::Auto;
        assert_eq!(auto.for_file(255 * MIB, 64), 1);
        assert_eq!(auto.for_file(256 * MIB, 2), 1);
        assert_eq!(auto.for_file(256 * MIB, 3), 1);
        assert_eq!(auto.for_file(256 * MIB, 4), 2);
        assert_eq!(auto.for_file(1 << 40, 6), 3);
        assert_eq!(auto.for_file(1 << 40, 64), 4);
        assert_eq!(Connections::Fixed(3).for_file(0, 1), 3);
        for (text, parsed) in [("auto", Some(auto)), ("8", Some(Connections::Fixed(8)))] {
            assert_eq!(text.parse().ok(), parsed);
        }
        for bad in ["0", "9", "", "two", "-1"] {
            assert!(bad.parse::<Connections>().is_err(), "{bad:?}");
        }
        #[derive(Deserialize, Serialize)]
        struct File {
            connections: Connections,
        }
        for value in ["\"auto\"", "1", "8"] {
            let text = format!("connections = {value}\n");
            let file: File = toml::from_str(&text).unwrap();
            assert_eq!(toml::to_string(&file).unwrap(), text);
        }
        for bad in ["0", "9", "\"3\"", "true", "[1]"] {
            let err = toml::from_str::<File>(&format!("connections = {bad}"));
            assert!(err.is_err(), "{bad}");
        }
    }

    #[test]
    fn missing_keys_keep_their_defaults() {
        let file = LimitsFile {
            max_transfers: Some(5),
            idle_timeout_secs: Some(60),
            ..LimitsFile::default()
        };
        let limits = file.into_limits().unwrap();
        assert_eq!(limits.max_transfers, 5);
        assert_eq!(limits.idle_timeout, Duration::from_secs(60));
        assert_eq!(limits.max_token_lifetime, Duration::from_secs(3600));
    }

    #[test]
    fn zero_and_impossible_values_name_their_key() {
        let zero = LimitsFile {
            max_streams_per_connection: Some(0),
            ..LimitsFile::default()
        };
        let err = zero.into_limits().unwrap_err().to_string();
        assert_eq!(err, "limit `max_streams_per_connection` must be at least 1");
        let zero = LimitsFile {
            idle_timeout_secs: Some(0),
            ..LimitsFile::default()
        };
        let err = zero.into_limits().unwrap_err().to_string();
        assert_eq!(err, "limit `idle_timeout_secs` must be at least 1 second");
    }

    #[test]
    fn the_stream_window_is_bounded_and_gives_bytes() {
        for bad in [0, 1025] {
            let file = LimitsFile {
                stream_window_mib: Some(bad),
                ..LimitsFile::default()
            };
            let err = file.into_limits().unwrap_err().to_string();
            assert!(
                err.starts_with("limit `stream_window_mib` must be"),
                "{err}"
            );
        }
        let file = LimitsFile {
            stream_window_mib: Some(32),
            ..LimitsFile::default()
        };
        assert_eq!(file.into_limits().unwrap().stream_window(), 32 << 20);
        assert_eq!(Limits::default().stream_window(), 16 << 20);
    }
}
