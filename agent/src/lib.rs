//! The Orbit star: one QUIC endpoint that serves files under its allowed roots to other stars and
//! pulls files from them into its allowed roots, on a controller's command.
//!
//! [`Star::spawn`] starts one; the same handle runs in `orbit-star`, in `orbitctl demo` and in the
//! tests. A star never serves or writes outside its roots, whatever the path, symlink or race.
//!
//! | module | holds |
//! |---|---|
//! | `star` | the handle, the endpoint, the accept loop, shutdown |
//! | `control` | commands from the controller |
//! | `pull` | the destination side: request, receive, verify, publish |
//! | `serve` | the source side: authorise, read, send |
//! | `pool` | one outgoing connection per source star |
//! | `jail` | confined opens under the allowed roots |
//! | `reload` | new keys, certificates and revocation list on SIGHUP |
//! | `limits` | the caps on connections, streams, transfers, token lifetime and timeouts |
//! | `config` | `star.toml`, `ORBIT_*` variables and flags, one precedence |
//! | `metrics` | counters and the Prometheus `/metrics` server |
//! | `notify` | systemd readiness and watchdog |
//! | `check` | `--check-config`: everything spawning would check, without binding |
//! | `journal` | replications in flight, kept in the state directory to resume them |
//! | `transfers` | the replications in flight and recent results, by id |

mod check;
pub mod config;
mod control;
mod digests;
mod error;
mod framed;
mod jail;
mod journal;
pub mod limits;
pub mod metrics;
pub mod notify;
mod pool;
mod pull;
mod reload;
mod serve;
mod star;
mod transfers;
mod udp;

pub use check::check_config;
pub use limits::{CongestionControl, Limits};
pub use reload::Reloaded;
pub use star::{SpawnError, Star, StarConfig, TRANSFER_DRAIN};

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
