//! The Orbit star: one QUIC endpoint that serves files under its allowed roots to other stars and
//! pulls files from them into its allowed roots, on a controller's command.
//!
//! [`Star::spawn`] starts one; the same handle runs in `orbit-star`, in `orbitctl demo` and in the
//! tests. A star never serves or writes outside its roots, whatever the path, symlink or race.
//!
//! | module | holds |
//! |---|---|
//! | `star` | the handle: spawn, reload, shutdown, self-check, metrics; builds the services |
//! | `startup` | `StarConfig`, `SpawnError`, and the checks spawn, reload and `check` share |
//! | `endpoint` | the QUIC and TLS configuration of the one endpoint |
//! | `connection` | the accept loop, the handshake's checks, open connections per peer, routing |
//! | `control` | commands from the controller: replicate, start, wait, cancel, status |
//! | `replication` | the destination side: the register, the sans-IO core, its driver, the disk |
//! | `serve` | the source side: authorise, read, send; the read slots and digests |
//! | `pool` | one outgoing connection per source star, dialled outside the lock |
//! | `trust` | the token keys and the client TLS configuration a reload replaces |
//! | `lifecycle` | the shutdown and draining tokens and the task tracker |
//! | `jail` | confined opens under the allowed roots |
//! | `journal` | replications in flight, kept in the state directory to resume them |
//! | `protected` | the star's own keys, config and state: in no root, never served or overwritten |
//! | `reload` | new keys, certificates and revocation list on SIGHUP |
//! | `limits` | the caps on connections, streams, transfers, token lifetime and timeouts |
//! | `log_output` | plain log text off a terminal, syslog priorities for the journal |
//! | `config` | `star.toml`, `ORBIT_*` variables and flags, one precedence |
//! | `metrics` | the Prometheus series (`prometheus-client`), the process's own, the `/metrics` server |
//! | `notify` | systemd readiness and watchdog (`sd-notify`) |
//! | `check` | `--check-config`: everything spawning would check, without binding |
//! | `error` | the wire codes of local errors (jail, I/O, token, framing) |
//! | `framed` | frames on QUIC streams |
//! | `digests` | SHA-256 of whole files served, by file version |
//! | `buffers` | the buffers chunks are read into for sending, used again once acknowledged |
//! | `udp` | the UDP socket, with GSO batches kept within one send |

mod buffers;
mod check;
pub mod config;
mod connection;
mod control;
mod digests;
pub mod endpoint;
mod error;
mod expiry;
mod framed;
mod hashing;
mod jail;
mod journal;
mod lifecycle;
pub mod limits;
pub mod log_output;
mod logged;
pub mod metrics;
pub mod notify;
mod pool;
mod protected;
mod relay;
mod reload;
mod replication;
mod serve;
mod star;
mod startup;
mod tree_serve;
mod trust;
mod udp;

/// For the fuzz targets in fuzz/ only: the decoders of what a star reads back from disk.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::journal::fuzz_entry as journal_entry;
}

pub use check::check_config;
pub use limits::{CongestionControl, Limits};
pub use reload::Reloaded;
pub use star::{SelfCheckError, Star, TRANSFER_DRAIN};
pub use startup::{SpawnError, StarConfig};

/// The version `--version` reports: the crate's, and the wire protocol's ALPN.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (wire protocol orbit/1)");

#[cfg(test)]
mod tests {
    #[test]
    fn the_version_names_the_wire_protocol_in_use() {
        let alpn = std::str::from_utf8(orbit_wire::ALPN).unwrap();
        assert!(super::VERSION.ends_with(&format!("(wire protocol {alpn})")));
    }
}
