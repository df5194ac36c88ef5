//! `orbitctl replicate`: tells the destination star to pull a file, or with `--recursive` a
//! directory tree ([`tree`]), from the source star, and reports the verified result. With
//! several destinations, the file goes to all of them at once ([`fanout`], planned by
//! [`plan`]).
//!
//! The controller mints a token for the source star naming the destination as holder, sends
//! one `ReplicateFile` (or `ReplicateTree`) on a control stream to the destination, and waits
//! for its final event. File data never passes through the controller; its traffic is a few
//! kilobytes whatever the file's size or the number of files. [`replicate_file`] is the one
//! client code path for a file, shared with `orbitctl demo`; what a file's replication prints
//! is in `file_report` (re-exported here), a tree's in [`report`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use orbit_wire::{ControlEvent, ControlRequest, ErrorCode, ReplicateFile, TransferId, WireError};
use rand::RngCore;

use crate::connect::{self, ConnectError, StarConnection, StreamError, WireBytes};
use crate::exit;
use crate::grid::{Grid, GridError};
use crate::progress::{Mode, Progress};
use crate::spec::{parse_glob, parse_sha256, parse_ttl, star_path_text, SpecError, StarPath};
use crate::token;

pub mod batch;
pub mod fanout;
mod fanout_report;
mod file_report;
mod interrupt;
pub mod plan;
pub mod report;
pub mod tree;

pub use file_report::{detached_json, event_line, success_json, summary_line};
use interrupt::{interrupt_signal, Cancelling};
use plan::Topology;

/// Copy a file, or a directory tree with --recursive, from one star to another, directly
/// between the two stars.
///
/// The destination star pulls the file from the source star over QUIC, checks its size
/// and SHA-256, writes it durably and only then renames it into place; orbitctl prints
/// one line and exits 0 only after that. The file's bytes never pass through orbitctl.
///
/// Example:
///
///   orbitctl --grid /etc/orbit/grid replicate star-a:/srv/data/f.bin star-b:/srv/backup/f.bin
///
/// prints
///
///   star-b: star-a:/srv/data/f.bin -> /srv/backup/f.bin: 268435456 bytes in 1.23 s (208.1 MiB/s), sha256 9f86d0...
///
/// On a terminal, a progress bar (bytes, rate, ETA) shows on stderr until then. On failure it
/// prints one line on stderr naming the star that failed and why. Ctrl-C cancels the
/// transfer: the destination stops and removes its temporary file. If orbitctl dies or loses
/// its connection, the destination carries on; `orbitctl wait ID` finds the result.
///
/// With --recursive, SRC and DST are directories and the contents of SRC go into DST (created
/// if missing), whether or not either ends with a slash, as with Globus and rclone (unlike
/// rsync and cp, where a trailing slash changes the meaning):
///
///   orbitctl --grid /etc/orbit/grid replicate star-a:/srv/data star-b:/srv/backup --recursive
///
/// prints
///
///   star-b: star-a:/srv/data/ -> /srv/backup/: 2000 copied, 0 skipped, 0 deleted, 0 failed, 31.2 MiB in 0.21 s (148.6 MiB/s), transfer 3f9c...
///
/// and then, on stderr, one line per file that failed (`star-b: NAME: CODE: why`). Regular
/// files, directories and (with --links copy) symbolic links are replicated with their
/// permission bits and modification times; other entries are reported and skipped. Each file
/// is published whole and verified, or not at all; a file that fails does not stop the others.
/// Ctrl-C cancels the rest of the tree; files already published stay.
///
/// With several destinations, the file goes to all of them at once (a fan-out):
///
///   orbitctl --grid /etc/orbit/grid replicate star-a:/srv/data/f.bin star-b:/srv/f.bin star-c:/srv/f.bin star-d:/srv/f.bin
///   orbitctl --grid /etc/orbit/grid replicate star-a:/srv/data/f.bin --to-file hosts.txt
///
/// Each destination pulls the file from destinations that are still receiving it (see
/// --topology), from the source last, and checks the source's signed SHA-256 before it
/// publishes. orbitctl prints on stdout one line per destination as it ends, then a summary:
///
///   star-b:/srv/f.bin  verified  1.0 GiB  sha256 9f86d081884c…  12.3 s
///   star-c:/srv/f.bin  FAILED  PermissionDenied: /srv/f.bin is outside the allowed roots
///   star-d:/srv/f.bin  verified  1.0 GiB  sha256 9f86d081884c…  12.9 s
///   2 of 3 destinations verified (needed 3) in 13.0 s, sha256 9f86d0..., transfer 3f9c...
///
/// so `grep FAILED` lists the failures. On a terminal, one progress bar on stderr counts every
/// destination's bytes together. Retries go to stderr, naming the star that failed to send
/// (`star-c: retrying (attempt 1) in 0.2 s: ...`). One destination failing never stops
/// the others; the command succeeds when at least --min-success of them (default: all)
/// verified the file. Ctrl-C cancels every destination still running. With --detach it prints
/// the transfer id, then one line per destination (`started`, or FAILED); `orbitctl wait ID
/// --star star-b --star star-c ...` (or --to-file) follows them all and reports as above, and
/// `orbitctl cancel` takes the same stars. A fan-out copies one file: --recursive takes one
/// destination.
///
/// With --from-file JOBS, it runs every replication JOBS lists (one `SRC DST` pair a line), at
/// most --transfers at once, retrying those that failed for a temporary reason (exit code 4's),
/// and prints one line per replication as it ends, then a summary:
///
///   orbitctl --grid /etc/orbit/grid replicate --from-file nightly.jobs --transfers 8
///
/// Exit codes (`orbitctl --help` has the table for every command):
///
///   0    done: the file, or every entry of the tree, is replicated (or, with --dry-run,
///        was checked); for a fan-out, at least --min-success destinations verified it;
///        for a batch, every replication
///   1    failed, and running it again will not fix it: for a file, nothing was published;
///        a tree stopped as a whole (files published before that stay); a fan-out verified
///        fewer than --min-success destinations (those verified keep the file), or two
///        reported different digests; a batch had a replication that failed so
///   2    usage: a bad option, path, pattern or batch line; nothing was contacted
///   3    partly done (trees only): the tree was walked to the end but some files failed,
///        or --delete did not run
///   4    failed for a temporary reason, as 1 otherwise: a star unreachable or shutting
///        down, a deadline passed, a connection lost, a star out of slots or space (for a
///        fan-out or a batch: every failure was such); the same command may succeed later
///   130  interrupted with Ctrl-C: the transfer was cancelled
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// What to copy: the source star's name and the absolute path on it, e.g.
    /// star-a:/srv/data/f.bin, or with --recursive a directory, e.g. star-a:/srv/data.
    #[arg(
        value_name = "SRC:/abs/path",
        value_parser = star_path_text,
        required_unless_present = "from_file"
    )]
    pub source: Option<String>,

    /// Where to put it: the destination star's name and the absolute path on it, e.g.
    /// star-b:/srv/backup/f.bin, or with --recursive a directory, e.g. star-b:/srv/backup. An
    /// existing file there is replaced only by a verified copy. Give several to copy the file
    /// to all of them at once.
    #[arg(
        value_name = "DST:/abs/path",
        value_parser = star_path_text,
        required_unless_present_any = ["to", "to_file", "from_file"]
    )]
    pub targets: Vec<String>,

    /// Copy a directory tree: the contents of SRC go into DST, with or without a trailing
    /// slash on either.
    #[arg(long, short)]
    pub recursive: bool,

    /// Which files already at the target are left as they are (with --recursive).
    #[arg(
        long,
        value_enum,
        value_name = "LEVEL",
        default_value_t,
        requires = "recursive"
    )]
    pub sync: tree::SyncArg,

    /// Remove entries under DST that SRC does not have (with --recursive). It runs only after
    /// every copy succeeded: after any error, nothing is deleted (exit code 3).
    #[arg(long, requires = "recursive")]
    pub delete: bool,

    /// With --delete: if more than N entries would be removed, remove none and say so
    /// (exit code 3).
    #[arg(long, value_name = "N", requires = "delete")]
    pub max_delete: Option<u64>,

    /// Leave out entries whose name matches GLOB (with --recursive; repeatable). Names are
    /// relative to SRC. A pattern without a `/` matches the last component at any depth
    /// (`*.tmp`); one with a `/` matches the whole name from the top (`build/out`, or
    /// `/build/out`: a leading `/` means the same). A trailing `/` matches directories only
    /// (`cache/`). `*` matches within a component, `**` across components, `?` one byte,
    /// `[a-z]` and `[!a-z]` a class; `\` escapes the next character. An excluded directory is
    /// not walked at all. The source applies the filter: it is part of the token.
    #[arg(long, value_name = "GLOB", requires = "recursive", value_parser = parse_glob)]
    pub exclude: Vec<String>,

    /// Keep entries whose name matches GLOB even when an --exclude matches them (with
    /// --recursive; repeatable; the same pattern rules). An entry is left out only when an
    /// --exclude matches it and no --include does; nothing under an excluded directory is
    /// seen, so an --include cannot bring it back.
    #[arg(long, value_name = "GLOB", requires = "recursive", value_parser = parse_glob)]
    pub include: Vec<String>,

    /// What to do with symbolic links (with --recursive). Links are never followed.
    #[arg(
        long,
        value_enum,
        value_name = "HOW",
        default_value_t,
        requires = "recursive"
    )]
    pub links: tree::LinksArg,

    /// Change nothing; report what would be copied, skipped and deleted (with --recursive).
    #[arg(long, requires = "recursive")]
    pub dry_run: bool,

    /// Print one line per entry on stdout (with --recursive): ACTION KIND NAME, where ACTION is
    /// copy, skip, delete, fail or unsupported; KIND is f (file), d (directory), l (link) or ?
    /// (other); and fail and unsupported put the error code before the name, e.g.
    /// `fail f PermissionDenied a/b.txt`. NAME is relative to DST; `\`, control characters
    /// and bytes that are not UTF-8 are escaped (`\\`, `\n`, `\xff`). With --json, one
    /// item event per entry instead.
    #[arg(long, requires = "recursive", conflicts_with = "quiet")]
    pub itemize: bool,

    /// Fail unless the file's SHA-256 is this (64 hexadecimal digits); nothing is published
    /// at the target if it differs.
    #[arg(long, value_name = "HEX", value_parser = parse_sha256, conflicts_with = "recursive")]
    pub expect_sha256: Option<[u8; 32]>,

    /// How long the source star accepts the read token, in seconds. Default: defaults.ttl_secs
    /// in grid.toml, or 300.
    #[arg(long, value_name = "SECS", value_parser = parse_ttl)]
    pub ttl: Option<u64>,

    /// Print JSON on stdout instead of the progress bar and the summary line, one object per
    /// line, each with a "type" first: "progress", "item", "plan", "result", "destination",
    /// "job" or "summary" (progress, item and plan lines also keep their older "event" field,
    /// with the same value). One progress event per line ({"type":"progress",
    /// "event":"progress","transfer_id":..,"bytes":..,"total":..,"seconds":..}), then one
    /// result object ({"type":"result","ok":true,..} or {"type":"result","ok":false,
    /// "code":..,"retryable":..,"message":..}). For a tree, progress counts files and bytes
    /// (..,"files_done":..,"files_total":..,"bytes_done":..,"bytes_total":..,"listed":..),
    /// --itemize adds {"type":"item",..,"action":..,"kind":..,"name":..,..} events, and the
    /// result object counts what was copied, skipped, deleted and failed, naming each failure.
    /// For a fan-out, a "plan" line comes first and progress events add "destination" and
    /// "path"; each destination ends with {"type":"destination","destination":..,"path":..,
    /// "ok":true,"bytes":..,"sha256":..,"seconds":..} or {..,"ok":false,"code":..,
    /// "retryable":..,"message":..}; and the last line is {"type":"summary","fanout":true,
    /// "ok":..,"verified":..,"failed":..,"min_success":..,"transfer_id":..,"sha256":..,
    /// "digests_differ":..,"seconds":..}. For a batch (--from-file), one {"type":"job",
    /// "line":..,"source":..,"destination":..,"ok":..,"attempts":..,..} per replication (no
    /// progress), then {"type":"summary","ok":..,"jobs":..,"verified":..,"failed":..,
    /// "not_started":..,"retries":..,"bytes":..,"seconds":..,"exit_code":..}.
    #[arg(long)]
    pub json: bool,

    /// How long the destination keeps retrying (a lost connection, a source restarting)
    /// without making progress before it gives up with DeadlineExceeded, in seconds. Each retry
    /// is shown on stderr; a retry resumes from the bytes already received.
    #[arg(long, value_name = "SECS", default_value_t = 120, value_parser = clap::value_parser!(u32).range(1..))]
    pub timeout: u32,
    /// Print nothing but errors: no progress bar, no summary line (for a fan-out, only the
    /// FAILED lines). The exit code tells.
    #[arg(long, short, conflicts_with = "json")]
    pub quiet: bool,

    /// Start the replication, print its transfer id and return at once; the destination star
    /// carries on alone. Follow it with `orbitctl wait ID`, stop it with `orbitctl cancel ID`.
    #[arg(long)]
    pub detach: bool,

    /// Another destination, as DST (repeatable). Destinations are taken in this order: the
    /// DST arguments, then each --to, then the lines of --to-file.
    #[arg(long = "to", value_name = "DST:/abs/path", value_parser = star_path_text)]
    pub to: Vec<String>,

    /// Read destinations from FILE: one STAR:/abs/path per line. Blank lines and lines
    /// starting with # are ignored; anything else on a line is part of its path.
    #[arg(long, value_name = "FILE")]
    pub to_file: Option<PathBuf>,

    /// With several destinations, who pulls from whom besides the source: chain (each
    /// destination from the one before it, then the two before that), tree:K (the source
    /// feeds the first K destinations, the first destination the next K, and so on; each
    /// pulls from its parent, then the parent's parent, up to three), or auto (chain up to
    /// 32 destinations, tree:2 beyond). One whose upstream fails goes on from the next one,
    /// and from the source last. Each star takes one copy of a fan-out. Stars given a `zone`
    /// in grid.toml are planned next to their zone's other stars, the source's zone first.
    #[arg(long, value_name = "SHAPE", default_value = "auto", value_parser = Topology::parse)]
    pub topology: Topology,

    /// With several destinations, succeed (exit 0) when at least N of them verified the file.
    /// Default: all of them.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub min_success: Option<u32>,

    /// Another star holding the same file (repeatable). The destination first checks that
    /// every source has the same size and SHA-256 (each signs its own) and refuses to start
    /// otherwise; then it takes the file in 8 MiB pieces from whichever source is free, so
    /// that several sources add up their uplinks, and checks the whole file before it
    /// publishes it. A source that fails is left to the others. One destination only; not
    /// with --recursive. A destination stopped or killed midway resumes from the pieces it
    /// had verified in order when it starts again (with a state directory).
    #[arg(
        long = "also-from",
        value_name = "STAR:/abs/path",
        value_parser = star_path_text,
        conflicts_with = "recursive"
    )]
    pub also_from: Vec<String>,

    /// QUIC connections from the destination to each source, 1 to 8, or auto: the file is
    /// then taken in 8 MiB pieces over that many connections at once, so that its packet work
    /// and encryption spread over the cores of both stars (one connection is driven by one
    /// thread), and checked whole against the source's signed SHA-256 before it is published.
    /// auto leaves the count to the destination's `connections` setting (by default 1 for a
    /// file under 256 MiB or a host with fewer than 4 CPUs, else half its CPUs, at most 4).
    /// Without this option (or with 1 and no --also-from) the file comes over one connection
    /// as one stream. Taken in pieces, a destination stopped or killed midway resumes from the
    /// pieces it had verified in order when it starts again. One destination only; not with
    /// --recursive.
    #[arg(
        long,
        value_name = "N|auto",
        value_parser = parse_connections,
        conflicts_with = "recursive"
    )]
    pub connections: Option<ConnectionCount>,

    /// Run the replications JOBS lists, one `SRC DST` pair a line, instead of one (a batch).
    ///
    /// At most --transfers run at once, each retried (--retries) when it failed for a reason
    /// that may go away by itself. SRC and DST are separated by spaces or tabs:
    ///
    ///   # nightly copies
    ///   star-a:/srv/data/a.bin  star-b:/srv/backup/a.bin
    ///   star-a:/srv/data/b.bin  star-c:/srv/backup/b.bin
    ///
    /// Blank lines and lines starting with # are ignored; a path cannot hold spaces here.
    /// `-` reads JOBS from stdin. Every line is checked before anything starts: a bad line, an
    /// unknown star or a destination named twice is a usage error naming the line (exit 2),
    /// and nothing is copied. Each replication prints one line on stdout as it ends
    /// (`line 3  star-a:/srv/data/a.bin -> star-b:/srv/backup/a.bin  verified ...`, or FAILED
    /// with the code and why), then a summary; with --json, one {"type":"job",..} object per
    /// line and a {"type":"summary",..} object. One that fails does not stop the others. The
    /// exit code is the worst: 130 after Ctrl-C (which cancels the replications running and
    /// starts no more), else 1 if any failed for good, else 4 if any still failed after its
    /// retries, else 0.
    #[arg(
        long,
        value_name = "JOBS",
        verbatim_doc_comment,
        conflicts_with_all = [
            "source", "targets", "to", "to_file", "recursive", "detach", "also_from",
            "min_success", "expect_sha256", "connections",
        ]
    )]
    pub from_file: Option<PathBuf>,

    /// With --from-file: how many replications run at once, 1 to 256. Default: 4.
    #[arg(
        long,
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..=256)
    )]
    pub transfers: Option<u32>,

    /// With --from-file: how many times a replication that failed for a reason that may go
    /// away by itself (exit code 4's reasons: a star unreachable, a deadline, a lost
    /// connection, a star out of slots) is tried again, after 1 s, 2 s, 4 s... (at most 30 s,
    /// less a random part). 0 never retries; at most 100. Default: 3.
    #[arg(
        long,
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(0..=100)
    )]
    pub retries: Option<u32>,
}

impl Args {
    /// The source and the target: files, or directories with `--recursive` (one trailing `/`
    /// dropped).
    ///
    /// # Errors
    ///
    /// [`SpecError`] for a path that is not a plain absolute path, such as a file path ending
    /// in `/` without `--recursive`.
    pub fn endpoints(&self) -> Result<(StarPath, StarPath), SpecError> {
        let parse = |text: &str| {
            if self.recursive {
                return StarPath::parse_dir(text);
            }
            StarPath::parse(text).map_err(|e| match e {
                SpecError::Path { path, reason } if path.ends_with('/') => SpecError::Path {
                    path,
                    reason: format!("{reason}; for a directory, add --recursive"),
                },
                e => e,
            })
        };
        let source = self.source.as_deref().unwrap_or("");
        let target = self.targets.first().map_or("", String::as_str);
        Ok((parse(source)?, parse(target)?))
    }
}

/// A new transfer id, drawn at random. From the operating system's generator: stars refuse an id
/// they already know, and any number of controllers may start transfers on the same star.
pub fn new_transfer_id() -> TransferId {
    TransferId(rand::rngs::OsRng.next_u64())
}

/// One replication, fully specified: the destination to dial and the command it receives.
#[derive(Debug, Clone)]
pub struct ReplicateJob {
    /// The destination star's name, which its certificate must carry.
    pub destination: String,
    /// Where to dial the destination.
    pub destination_addr: SocketAddr,
    /// The command, exactly as it goes on the wire.
    pub command: ReplicateFile,
    /// Other sources of the same file (`--also-from`), each with a token; none for a
    /// replication from one source. A source repeated is one more connection to it
    /// (`--connections`).
    pub also: Vec<orbit_wire::fanout::Upstream>,
    /// Sent as `ReplicateMany` even with no other source (`--connections`): the destination
    /// takes the file in pieces, over as many connections as the command or its setting says.
    pub in_pieces: bool,
}

impl ReplicateJob {
    /// The request that starts the job: `Replicate`, or `ReplicateMany` with other sources;
    /// with `detach`, their `Start` forms.
    pub fn request(&self, detach: bool) -> ControlRequest {
        if self.also.is_empty() && !self.in_pieces {
            return match detach {
                true => ControlRequest::Start(self.command.clone()),
                false => ControlRequest::Replicate(self.command.clone()),
            };
        }
        let many = orbit_wire::fanout::ReplicateMany {
            file: self.command.clone(),
            also: self.also.clone(),
            piece_size: 0,
        };
        match detach {
            true => ControlRequest::StartMany(many),
            false => ControlRequest::ReplicateMany(many),
        }
    }
}

/// A verified, durable copy, as the destination reported it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Replicated {
    /// The file's size.
    pub bytes: u64,
    /// The file's SHA-256.
    pub sha256: [u8; 32],
    /// The destination's wall time from the command to the published file.
    pub seconds: f64,
    /// The controller's own traffic for the whole exchange.
    pub wire: WireBytes,
    /// Bytes the destination already held when it resumed, summed over resumes: not sent again.
    pub resumed_bytes: u64,
}

/// Why a replication failed. Every message names the star concerned.
#[derive(Debug, thiserror::Error)]
pub enum ReplicateError {
    /// The grid could not be read or does not list a star.
    #[error(transparent)]
    Grid(#[from] GridError),
    /// The destination star could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The destination star reported a failure; nothing was published. The star's message says
    /// what failed in full (it names the source when the source refused), so the code's words are
    /// printed only when there is no message.
    #[error("{star}: replication failed: {}", if error.message.is_empty() { error.code.describe() } else { &error.message })]
    Failed {
        /// The destination star.
        star: String,
        /// Its report; names the source star when the source refused.
        error: WireError,
    },
    /// The control stream or connection to the destination failed.
    #[error("{star}: replication failed: {error}")]
    Stream {
        /// The destination star.
        star: String,
        /// What happened.
        error: StreamError,
    },
    /// The destination answered with something that is not a replication result.
    #[error("{star}: unexpected answer to a replication command: {what}")]
    Unexpected {
        /// The destination star.
        star: String,
        /// The answer.
        what: String,
    },
    /// The replication was cancelled with Ctrl-C; nothing was published.
    #[error("{star}: replication cancelled (interrupted); nothing was published at {target}")]
    Interrupted {
        /// The destination star.
        star: String,
        /// The target path.
        target: String,
    },
    /// A tree replication was cancelled with Ctrl-C; the files published before stay.
    #[error(
        "{star}: tree replication cancelled (interrupted); files already published under \
         {target} stay, no partial file is left"
    )]
    TreeInterrupted {
        /// The destination star.
        star: String,
        /// The target directory.
        target: String,
    },
    /// A tree was walked to the end, but some files failed or `--delete` did not run. The
    /// summary and the failures have been printed.
    #[error("{star}: {}", incomplete(*failed, delete_skipped))]
    Incomplete {
        /// The destination star.
        star: String,
        /// How many files failed.
        failed: u64,
        /// Why `--delete` did not run, if it did not.
        delete_skipped: Option<WireError>,
    },
    /// A command-line value was refused before anything was contacted.
    #[error(transparent)]
    Usage(#[from] SpecError),
    /// A fan-out could not be planned, or failed as a whole.
    #[error(transparent)]
    Fanout(#[from] fanout::FanoutError),
    /// A batch (`--from-file`) could not start, or some of its replications failed.
    #[error(transparent)]
    Batch(#[from] batch::BatchError),
    /// The destination reported another digest than the one expected.
    #[error(
        "{star}: reported sha256 {} but {} was expected",
        hex::encode(got),
        hex::encode(want)
    )]
    DigestMismatch {
        /// The destination star.
        star: String,
        /// Its digest.
        got: [u8; 32],
        /// The expected one.
        want: [u8; 32],
    },
}

/// `tree replicated, but 3 files failed and --delete did not run`.
fn incomplete(failed: u64, delete_skipped: &Option<WireError>) -> String {
    let files = if failed == 1 {
        "1 file".to_owned()
    } else {
        format!("{failed} files")
    };
    match (failed, delete_skipped) {
        (0, _) => "tree replicated, but --delete did not run".to_owned(),
        (_, None) => format!("tree replicated, but {files} failed"),
        (_, Some(_)) => format!("tree replicated, but {files} failed and --delete did not run"),
    }
}

impl ReplicateError {
    /// The wire code for `--json` output.
    pub fn code(&self) -> ErrorCode {
        match self {
            ReplicateError::Grid(e) => e.code(),
            ReplicateError::Connect(e) => e.code(),
            ReplicateError::Failed { error, .. } => error.code,
            ReplicateError::Stream { error, .. } => error.code(),
            ReplicateError::Unexpected { .. } => ErrorCode::Internal,
            ReplicateError::DigestMismatch { .. } => ErrorCode::DataLoss,
            ReplicateError::Interrupted { .. } | ReplicateError::TreeInterrupted { .. } => {
                ErrorCode::Cancelled
            }
            ReplicateError::Incomplete { delete_skipped, .. } => delete_skipped
                .as_ref()
                .map_or(ErrorCode::FailedPrecondition, |e| e.code),
            ReplicateError::Usage(_) => ErrorCode::InvalidArgument,
            ReplicateError::Fanout(e) => e.code(),
            ReplicateError::Batch(e) => e.code(),
        }
    }

    /// The process exit code that reports this failure (see [`crate::exit`]):
    /// [`exit::INCOMPLETE`], [`exit::INTERRUPTED`], [`exit::USAGE`], or by the class of its
    /// wire code [`exit::TEMPORARY`] or [`exit::FAILED`].
    pub fn exit_code(&self) -> u8 {
        match self {
            ReplicateError::Incomplete { .. } => exit::INCOMPLETE,
            ReplicateError::Interrupted { .. } | ReplicateError::TreeInterrupted { .. } => {
                exit::INTERRUPTED
            }
            ReplicateError::Usage(_) => exit::USAGE,
            ReplicateError::Fanout(e) => e.exit_code(),
            ReplicateError::Batch(e) => e.exit_code(),
            ReplicateError::Grid(_)
            | ReplicateError::Connect(_)
            | ReplicateError::Failed { .. }
            | ReplicateError::Stream { .. }
            | ReplicateError::Unexpected { .. }
            | ReplicateError::DigestMismatch { .. } => exit::of_code(self.code()),
        }
    }
}

/// Runs `orbitctl replicate` on the grid at `grid_dir`: prints the summary line or JSON.
///
/// # Errors
///
/// [`ReplicateError`]; with `--json` the failure object has been printed already.
pub async fn run(grid_dir: &Path, mut args: Args) -> Result<(), ReplicateError> {
    if let Some(jobs) = args.from_file.clone() {
        return batch::run(grid_dir, &args, &jobs).await;
    }
    if let Err(e) = batch::check_unbatched(&args) {
        let e = ReplicateError::from(e);
        if args.json {
            println!("{}", crate::json::failure(e.code(), &e.to_string()));
        }
        return Err(e);
    }
    match fanout_destinations(&mut args) {
        Ok(Some(destinations)) => return fanout::run(grid_dir, &args, destinations).await,
        Ok(None) => {}
        Err(e) => {
            let e = ReplicateError::from(fanout::FanoutError::from(e));
            if args.json {
                println!("{}", crate::json::failure(e.code(), &e.to_string()));
            }
            return Err(e);
        }
    }
    if args.recursive {
        return tree::run(grid_dir, &args).await;
    }
    match execute(grid_dir, &args).await {
        Ok((job, Some(done))) => {
            if args.json {
                println!("{}", success_json(&job, &done));
            } else if !args.quiet {
                println!("{}", summary_line(&job, &done));
            }
            Ok(())
        }
        Ok((job, None)) => {
            if args.json {
                println!("{}", detached_json(&job));
            } else if !args.quiet {
                println!("{}", job.command.transfer_id);
            }
            Ok(())
        }
        Err(e) => {
            if args.json {
                println!("{}", crate::json::failure(e.code(), &e.to_string()));
            }
            Err(e)
        }
    }
}

/// The destinations of a fan-out, or `None` for a single replication; then `args.targets`
/// holds its one destination, however it was given. A single DST argument is left exactly as
/// it always was.
fn fanout_destinations(args: &mut Args) -> Result<Option<Vec<StarPath>>, plan::PlanError> {
    let plain = args.targets.len() == 1 && args.to.is_empty() && args.to_file.is_none();
    if !plain {
        let destinations = fanout::destinations(args)?;
        if destinations.len() > 1 {
            return Ok(Some(destinations));
        }
        args.targets = destinations.iter().map(ToString::to_string).collect();
        args.to.clear();
        args.to_file = None;
    }
    plan::check_min_success(args.min_success, 1)?;
    if let Some(ConnectionCount::Fixed(n)) = args.connections {
        let sources = 1 + args.also_from.len();
        let needed = n as usize * sources;
        let most = orbit_wire::fanout::MAX_UPSTREAMS + 1;
        if needed > most {
            return Err(plan::PlanError::TooManyConnections {
                connections: n,
                sources,
                needed,
                most,
            });
        }
    }
    Ok(None)
}

/// What `--connections` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionCount {
    /// The destination's `connections` setting decides.
    Auto,
    /// That many connections to each source, 1 to 8.
    Fixed(u32),
}

fn parse_connections(text: &str) -> Result<ConnectionCount, String> {
    match text {
        "auto" => Ok(ConnectionCount::Auto),
        n => n
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=8).contains(n))
            .map(ConnectionCount::Fixed)
            .ok_or_else(|| "must be auto or a number from 1 to 8".into()),
    }
}

/// Runs the replication `args` describe; `None` when detached.
async fn execute(
    grid_dir: &Path,
    args: &Args,
) -> Result<(ReplicateJob, Option<Replicated>), ReplicateError> {
    // From here on Ctrl-C cancels the transfer rather than killing orbitctl.
    let mut interrupt = interrupt_signal();
    let (source, target) = args.endpoints()?;
    let grid = Grid::open(grid_dir)?;
    let master = grid.master_key()?;
    let tls = grid.client_tls()?;
    let minting = Minting {
        grid: &grid,
        master: &master,
        ttl: args.ttl.unwrap_or(grid.ttl_secs()),
        expect_sha256: args.expect_sha256,
        timeout_secs: args.timeout,
    };
    let mut job = minting.job(&source, &target).await?;
    // From several sources every read is a relay read of this transfer: link tokens all.
    let transfer = job.command.transfer_id;
    let link = |from: &StarPath| {
        token::mint_link(
            &master,
            &from.star,
            &target.star,
            &from.path,
            transfer,
            minting.ttl,
        )
    };
    for text in &args.also_from {
        let other = StarPath::parse(text)?;
        job.also.push(orbit_wire::fanout::Upstream {
            addr: grid.star(&other.star)?.to_string(),
            token: link(&other),
            star: other.star,
            path: other.path,
        });
    }
    // `--connections N`: every source named N times, each name one more connection to it.
    if let Some(ConnectionCount::Fixed(n)) = args.connections {
        let named: Vec<_> = std::iter::once(orbit_wire::fanout::Upstream {
            star: source.star.clone(),
            addr: job.command.source_addr.clone(),
            path: source.path.clone(),
            token: link(&source),
        })
        .chain(job.also.iter().cloned())
        .collect();
        for _ in 1..n {
            job.also.extend(named.iter().cloned());
        }
    }
    job.in_pieces = !job.also.is_empty() || matches!(args.connections, Some(ConnectionCount::Auto));
    if job.in_pieces {
        job.command.token = link(&source);
    }
    if args.detach {
        start_detached(tls, &job).await?;
        return Ok((job, None));
    }
    let mut progress = Progress::new(Mode::choose(args.json, args.quiet), job.command.transfer_id);
    let finished = {
        let quiet = args.quiet;
        let work = replicate_observed(tls.clone(), &job, |event| match event {
            ControlEvent::Progress { bytes, total } => progress.update(*bytes, *total),
            other => {
                if let Some(line) = event_line(&job.destination, other).filter(|_| !quiet) {
                    progress.clear();
                    eprintln!("{line}");
                }
            }
        });
        tokio::select! {
            result = work => Some(result),
            _ = interrupt.recv() => None,
        }
    };
    progress.clear();
    let done = match finished {
        Some(result) => result?,
        None => {
            let interrupted = || ReplicateError::Interrupted {
                star: job.destination.clone(),
                target: job.command.target_path.clone(),
            };
            let cancelling = Cancelling {
                tls,
                destination: &job.destination,
                addr: job.destination_addr,
                transfer: job.command.transfer_id,
            };
            cancelling
                .run(&mut interrupt, interrupted, |result, wire| {
                    conclude(&job, result, wire, 0)
                })
                .await?
        }
    };
    Ok((job, Some(done)))
}

/// What every single-file replication of one command shares: the grid, the key its tokens are
/// minted under, and the options of the command line.
pub(crate) struct Minting<'a> {
    /// The grid, for the stars' addresses.
    pub(crate) grid: &'a Grid,
    /// The master token key.
    pub(crate) master: &'a orbit_wire::token::MasterKey,
    /// How long a token lives, in seconds.
    pub(crate) ttl: u64,
    /// `--expect-sha256`.
    pub(crate) expect_sha256: Option<[u8; 32]>,
    /// `--timeout`: how long the destination retries without progress.
    pub(crate) timeout_secs: u32,
}

impl Minting<'_> {
    /// A new job that copies `source` to `target` from one source: a fresh transfer id and
    /// token, and the destination's address resolved now.
    ///
    /// # Errors
    ///
    /// [`ReplicateError::Grid`] for a star the grid does not list;
    /// [`ReplicateError::Connect`] when the destination's host name does not resolve.
    pub(crate) async fn job(
        &self,
        source: &StarPath,
        target: &StarPath,
    ) -> Result<ReplicateJob, ReplicateError> {
        let source_addr = self.grid.star(&source.star)?;
        let target_addr = self.grid.star(&target.star)?;
        let token = token::mint(
            self.master,
            &source.star,
            &target.star,
            &source.path,
            self.ttl,
        );
        let destination_addr = connect::resolve(&target.star, target_addr).await?;
        Ok(ReplicateJob {
            destination: target.star.clone(),
            destination_addr,
            command: ReplicateFile {
                transfer_id: new_transfer_id(),
                source: source.star.clone(),
                source_addr: source_addr.to_string(),
                source_path: source.path.clone(),
                target_path: target.path.clone(),
                token,
                expect_sha256: self.expect_sha256,
                timeout_secs: self.timeout_secs,
            },
            also: Vec::new(),
            in_pieces: false,
        })
    }
}

/// Sends `job` as `Start`: the destination begins the transfer and answers at once.
///
/// # Errors
///
/// [`ReplicateError`] naming the destination star.
pub async fn start_detached(
    tls: Arc<rustls::ClientConfig>,
    job: &ReplicateJob,
) -> Result<(), ReplicateError> {
    let request = job.request(true);
    let transfer = job.command.transfer_id;
    start(
        tls,
        &job.destination,
        job.destination_addr,
        &request,
        transfer,
    )
    .await
}

/// Sends `request` (`Start` or `StartTree` of `transfer`) to `destination`, which answers at
/// once with `Started`.
async fn start(
    tls: Arc<rustls::ClientConfig>,
    destination: &str,
    addr: SocketAddr,
    request: &ControlRequest,
    transfer: TransferId,
) -> Result<(), ReplicateError> {
    let conn = StarConnection::connect(tls, destination, addr).await?;
    let result = conn.control(request, |_, _| {}).await;
    conn.close().await;
    let star = destination.to_owned();
    match result {
        Ok(ControlEvent::Started { transfer_id }) if transfer_id == transfer => Ok(()),
        Ok(ControlEvent::Failed(error)) => Err(ReplicateError::Failed { star, error }),
        Ok(other) => Err(ReplicateError::Unexpected {
            star,
            what: format!("{other:?}"),
        }),
        Err(error) => Err(ReplicateError::Stream { star, error }),
    }
}

/// Sends `job` to its destination star with the controller's TLS configuration `tls` and
/// waits for the verified result. The connection is closed cleanly either way.
///
/// Connecting is bounded by [`connect::CONNECT_TIMEOUT`]; the transfer itself is not, but a
/// destination that stops answering ends it within [`connect::MAX_IDLE_TIMEOUT`].
///
/// # Errors
///
/// [`ReplicateError`] naming the destination star.
pub async fn replicate_file(
    tls: Arc<rustls::ClientConfig>,
    job: &ReplicateJob,
) -> Result<Replicated, ReplicateError> {
    let transfer = job.command.transfer_id;
    replicate_observed(tls, job, |event| match event {
        ControlEvent::Progress { bytes, total } => {
            tracing::debug!(%transfer, bytes, total, "progress");
        }
        other => {
            if let Some(line) = event_line(&job.destination, other) {
                eprintln!("{line}");
            }
        }
    })
    .await
}

/// As [`replicate_file`], with `on_event` called on every event that is not final (progress,
/// retries, resumes).
///
/// # Errors
///
/// As [`replicate_file`].
pub async fn replicate_observed(
    tls: Arc<rustls::ClientConfig>,
    job: &ReplicateJob,
    mut on_event: impl FnMut(&ControlEvent),
) -> Result<Replicated, ReplicateError> {
    let conn = StarConnection::connect(tls, &job.destination, job.destination_addr).await?;
    let transfer = job.command.transfer_id;
    tracing::info!(
        %transfer,
        destination = %job.destination,
        source = %job.command.source,
        source_path = %job.command.source_path,
        target_path = %job.command.target_path,
        "replication started"
    );
    let request = job.request(false);
    let mut resumed_bytes = 0u64;
    let result = conn
        .control_events(&request, |event| {
            if let ControlEvent::Resumed { offset, .. } = event {
                resumed_bytes += offset;
            }
            on_event(event);
        })
        .await;
    let wire = conn.wire_bytes();
    conn.close().await;
    conclude(job, result, wire, resumed_bytes)
}

/// The verified result of `job` from the destination's final event `result`, or why not.
///
/// # Errors
///
/// [`ReplicateError`] naming the destination star.
pub fn conclude(
    job: &ReplicateJob,
    result: Result<ControlEvent, StreamError>,
    wire: WireBytes,
    resumed_bytes: u64,
) -> Result<Replicated, ReplicateError> {
    let transfer = job.command.transfer_id;
    let star = job.destination.clone();
    match result {
        Ok(ControlEvent::Done {
            bytes,
            sha256,
            seconds,
        }) => {
            if let Some(want) = job.command.expect_sha256.filter(|want| *want != sha256) {
                return Err(ReplicateError::DigestMismatch {
                    star,
                    got: sha256,
                    want,
                });
            }
            tracing::info!(%transfer, bytes, sha256 = %hex::encode(sha256), seconds, "replication completed");
            Ok(Replicated {
                bytes,
                sha256,
                seconds,
                wire,
                resumed_bytes,
            })
        }
        Ok(ControlEvent::Failed(error)) => Err(ReplicateError::Failed { star, error }),
        Ok(other) => Err(ReplicateError::Unexpected {
            star,
            what: format!("{other:?}"),
        }),
        Err(error) => Err(ReplicateError::Stream { star, error }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_star::FakeStar;

    fn job(addr: SocketAddr) -> ReplicateJob {
        ReplicateJob {
            destination: "star-b".into(),
            destination_addr: addr,
            command: ReplicateFile {
                transfer_id: TransferId(0xabc),
                source: "star-a".into(),
                source_addr: "127.0.0.1:7401".into(),
                source_path: "/srv/data/f.bin".into(),
                target_path: "/srv/backup/f.bin".into(),
                token: "T".into(),
                expect_sha256: None,
                timeout_secs: 0,
            },
            also: Vec::new(),
            in_pieces: false,
        }
    }

    #[tokio::test]
    async fn a_replication_sends_the_job_and_reports_done() {
        let mut star = FakeStar::spawn("star-b", |_| {
            vec![
                ControlEvent::Progress {
                    bytes: 1 << 20,
                    total: 256 << 20,
                },
                ControlEvent::Done {
                    bytes: 256 << 20,
                    sha256: [0x5a; 32],
                    seconds: 2.0,
                },
            ]
        })
        .await;
        let job = job(star.addr);
        let done = replicate_file(star.controller_tls(), &job).await.unwrap();
        assert_eq!(done.bytes, 256 << 20);
        assert_eq!(done.sha256, [0x5a; 32]);
        assert!(done.wire.sent > 0 && done.wire.received > 0);
        // A few kilobytes, whatever the file's size.
        assert!(
            done.wire.sent + done.wire.received < 64 * 1024,
            "{:?}",
            done.wire
        );

        let Some(ControlRequest::Replicate(sent)) = star.requests.recv().await else {
            panic!("no replicate request");
        };
        assert_eq!(sent.transfer_id, TransferId(0xabc));
        assert_eq!(sent.source, "star-a");
        assert_eq!(sent.source_addr, "127.0.0.1:7401");
        assert_eq!(sent.source_path, "/srv/data/f.bin");
        assert_eq!(sent.target_path, "/srv/backup/f.bin");
        assert_eq!(sent.token, "T");

        assert_eq!(
            summary_line(&job, &done),
            format!(
                "star-b: star-a:/srv/data/f.bin -> /srv/backup/f.bin: 268435456 bytes in 2.00 s \
                 (128.0 MiB/s), sha256 {}, transfer 0000000000000abc",
                "5a".repeat(32)
            )
        );
        let json: serde_json::Value = serde_json::from_str(&success_json(&job, &done)).unwrap();
        assert_eq!(json["ok"], true);
        assert_eq!(json["transfer_id"], "0000000000000abc");
        assert_eq!(json["bytes"], 256u64 << 20);
        assert_eq!(json["sha256"], "5a".repeat(32));
        assert_eq!(json["seconds"], 2.0);
        assert_eq!(json["rate_bytes_per_sec"], (128u64 << 20) as f64);
        assert!(json["controller_bytes_sent"].as_u64().unwrap() > 0);
    }

    #[tokio::test]
    async fn a_failed_replication_names_the_star_and_reason() {
        let star = FakeStar::spawn("star-b", |_| {
            vec![ControlEvent::Failed(WireError::new(
                ErrorCode::PermissionDenied,
                "star-a refused the read: token expired",
            ))]
        })
        .await;
        let err = replicate_file(star.controller_tls(), &job(star.addr))
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::PermissionDenied);
        assert_eq!(
            err.to_string(),
            "star-b: replication failed: star-a refused the read: token expired"
        );
        let json: serde_json::Value =
            serde_json::from_str(&crate::json::failure(err.code(), &err.to_string())).unwrap();
        assert_eq!(json["ok"], false);
        assert_eq!(json["code"], "PermissionDenied");
    }

    #[tokio::test]
    async fn retries_and_resumes_are_followed_and_resumed_bytes_summed() {
        let star = FakeStar::spawn("star-b", |_| {
            vec![
                ControlEvent::Retrying {
                    attempt: 1,
                    after_ms: 200,
                    reason: "star-a: lost the connection".into(),
                },
                ControlEvent::Resumed {
                    offset: 100,
                    total: 1000,
                },
                ControlEvent::Resumed {
                    offset: 600,
                    total: 1000,
                },
                ControlEvent::Done {
                    bytes: 1000,
                    sha256: [3; 32],
                    seconds: 1.0,
                },
            ]
        })
        .await;
        let job = job(star.addr);
        let done = replicate_file(star.controller_tls(), &job).await.unwrap();
        assert_eq!(done.bytes, 1000);
        assert_eq!(done.resumed_bytes, 700);
        let json: serde_json::Value = serde_json::from_str(&success_json(&job, &done)).unwrap();
        assert_eq!(json["resumed_bytes"], 700);
    }

    #[tokio::test]
    async fn an_unexpected_digest_is_data_loss() {
        let star = FakeStar::spawn("star-b", |_| {
            vec![ControlEvent::Done {
                bytes: 1,
                sha256: [1; 32],
                seconds: 0.1,
            }]
        })
        .await;
        let mut job = job(star.addr);
        job.command.expect_sha256 = Some([2; 32]);
        let err = replicate_file(star.controller_tls(), &job)
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::DataLoss);
    }
}
