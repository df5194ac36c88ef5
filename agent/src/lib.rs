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
//! | `transfers` | the replications in flight and recent results, by id |
//! | `config` | `star.toml` and how flags override it |

pub mod config;
mod control;
mod error;
mod framed;
mod jail;
mod pool;
mod pull;
mod serve;
mod star;
mod transfers;

pub use star::{SpawnError, Star, StarConfig};
