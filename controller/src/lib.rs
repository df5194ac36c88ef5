//! `orbitctl`, the Orbit controller: it makes a grid (CA, certificates, token keys), signs
//! short-lived path tokens, and tells stars to replicate files between themselves. It never
//! carries file data: one replication costs it a few kilobytes whatever the file's size.
//!
//! Each subcommand is one module owning its clap `Args` and its `run`: [`init`], [`add_star`],
//! [`replicate`], [`wait`], [`cancel`], [`status`], [`token`], [`demo`], [`manual`]
//! (completions and man pages), and for keys [`rotate_keys`] and [`revoke`]. Around them:
//! [`grid`] reads a grid, [`layout`] writes its files, [`connect`] dials stars and speaks the
//! control stream, [`locate`] finds the star that holds a transfer, [`progress`] shows a transfer
//! as it runs, [`spec`] parses command-line values and [`human`] formats numbers for people.
//!
//! The controller speaks to stars only through `orbit-wire` messages over QUIC; the one use of
//! `orbit-agent` is [`demo`], which starts stars in-process through their public handle.

pub mod add_star;
pub mod cancel;
pub mod connect;
pub mod demo;
pub mod exit;
pub mod grid;
pub mod human;
pub mod init;
pub mod json;
pub mod layout;
pub mod locate;
pub mod manual;
pub mod progress;
pub mod renew;
pub mod replicate;
pub mod revoke;
pub mod rotate_keys;
pub mod spec;
pub mod status;
pub mod token;
pub mod wait;

#[cfg(test)]
mod fake_star;

/// What `orbitctl --version` prints after the program name.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (wire protocol orbit/1)");

#[cfg(test)]
mod tests {
    #[test]
    fn version_names_the_wire_protocol() {
        let alpn = std::str::from_utf8(orbit_wire::ALPN).unwrap();
        assert!(super::VERSION.ends_with(&format!("(wire protocol {alpn})")));
        assert_eq!(alpn, format!("orbit/{}", orbit_wire::PROTOCOL_VERSION));
    }
}
