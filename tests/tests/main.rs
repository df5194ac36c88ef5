//! Orbit's integration tests: one module per file beside this one, built as one test binary.
//! As 24 binaries, each linking the stars, quinn and rustls again, this crate took 172 s to build
//! here; as one, 47 s. One file's tests: `cargo test -p orbit-tests --test integration paths::`.

mod batch_cli;
mod cli;
mod config;
mod connections;
mod crash;
mod dashboards;
mod detach;
mod dial;
mod digest_cache;
mod disk;
mod drain;
mod exit_codes;
mod face;
mod fanout;
mod fanout_cli;
mod frames;
mod hostile;
mod hostile_disk;
mod hostile_keys;
mod interrupted;
mod keys;
mod limits;
mod logs;
mod metrics;
mod mounts;
mod network;
mod paths;
mod peers;
mod race;
mod renew;
mod replicate;
mod resume;
mod revocation;
mod service;
mod source_changes;
mod special_files;
mod tokens;
mod tree;
mod tree_cli;
mod tree_fanout;
mod unit_layout;
