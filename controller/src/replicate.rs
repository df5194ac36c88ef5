//! `orbitctl replicate`: tells the destination star to pull a file, or with `--recursive` a
//! directory tree ([`tree`]), from the source star, and reports the verified result. With
//! several destinations, the file goes to all of them at once ([`fanout`], planned by
//! [`plan`]), and a tree by rounds (`tree_fanout`), each destination holding the tree feeding
//! the next.
//!
//! The controller mints a token for the source star naming the destination as holder, sends
//! one `ReplicateFile` (or `ReplicateTree`) on a control stream to the destination, and waits
//! for its final event. File data never passes through the controller; its traffic is a few
//! kilobytes whatever the file's size or the number of files. [`replicate_file`] is the one
//! client code path for a file, shared with `orbitctl demo`; what a file's replication prints
//! is in `file_report` (re-exported here), a tree's in [`report`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use orbit_wire::{ControlRequest, ReplicateFile, TransferId};
use rand::RngCore;

use crate::connect::WireBytes;
use crate::spec::{parse_glob, parse_sha256, parse_ttl, star_path_text, SpecError, StarPath};

pub mod batch;
mod error;
pub mod fanout;
mod fanout_report;
mod file;
mod file_report;
mod interrupt;
pub mod plan;
pub mod report;
pub mod tree;
mod tree_fanout;
mod tree_fanout_report;

pub use error::ReplicateError;
pub(crate) use file::Minting;
pub use file::{conclude, replicate_file, replicate_observed, start_detached};
use file::{execute, start};
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
/// `orbitctl cancel` takes the same stars.
///
/// With --recursive and several destinations, the tree goes to all of them by rounds:
///
///   orbitctl --grid /etc/orbit/grid replicate star-a:/srv/data star-b:/srv/data star-c:/srv/data star-d:/srv/data -r
///
/// The source replicates the tree to the first destination. Then every destination whose
/// tree is complete (no file failed, --delete run if asked) feeds the next one waiting, with
/// the same options, so the stars holding the tree double each round and the source sends it
/// once: N destinations take about log2(N) + 1 tree copies of time. Without --delete, a
/// destination feeds others only if it holds nothing the source lacks (checked with a
/// listing). If no destination holds the complete tree, the source feeds the next one again,
/// and says so on stderr. A file changed at the source during the run reaches the later
/// destinations as the first one copied it. orbitctl prints one summary line per destination
/// as its tree ends, naming the star that fed it (FAILED and the reason for a tree that failed
/// as a whole; failed files on stderr), then:
///
///   3 of 3 destinations replicated the tree (needed 3) in 3.1 s, the source sent it once
///
/// --min-success counts the destinations with the complete tree. No progress bar; --itemize
/// lines start with the destination (`star-c: copy f a/b.txt`). Ctrl-C cancels every tree
/// running. --detach is refused: the rounds need orbitctl to stay. --topology is for a file.
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
///        was checked); for a fan-out, at least --min-success destinations verified it (or,
///        for a tree, hold all of it); for a batch, every replication
///   1    failed, and running it again will not fix it: for a file, nothing was published;
///        a tree stopped as a whole (files published before that stay); a fan-out verified
///        fewer than --min-success destinations (those verified keep the file), or two
///        reported different digests; a batch had a replication that failed so
///   2    usage: a bad option, path, pattern or batch line; nothing was contacted
///   3    partly done (trees only): the tree was walked to the end but some files failed,
///        or --delete did not run (for a fan-out of a tree: too few destinations hold all
///        of it, but enough were walked to the end)
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
    /// (or with --recursive, the tree) to all of them.
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
    /// "not_started":..,"retries":..,"bytes":..,"seconds":..,"exit_code":..}. For a tree to
    /// several destinations, each tree's result object as it ends, with "type":"destination"
    /// (or {"type":"destination","ok":false,"code":..,..} for one that failed as a whole;
    /// "source" names the star that fed it), --itemize's item events, no progress, and last
    /// {"type":"summary","fanout":true,"recursive":true,"ok":..,"destinations":..,
    /// "replicated":..,"partial":..,"failed":..,"not_started":..,"min_success":..,
    /// "source_sends":..,"dry_run":..,"seconds":..}.
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
    /// Not for a tree to several destinations, whose rounds need orbitctl to stay.
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

    /// With several destinations, succeed (exit 0) when at least N of them verified the file
    /// (with --recursive, hold the complete tree). Default: all of them.
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
    /// file under 256 MiB or a host with fewer than 4 CPUs, else half its CPUs, at most 4); a
    /// destination whose setting gives 1 whatever the size takes the file as one stream.
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
        return json_failure(args.json, Err(e.into()));
    }
    match fanout_destinations(&mut args) {
        Ok(Some(destinations)) if args.recursive => {
            return tree_fanout::run(grid_dir, &args, destinations).await
        }
        Ok(Some(destinations)) => return fanout::run(grid_dir, &args, destinations).await,
        Ok(None) => {}
        Err(e) => {
            let e = ReplicateError::from(fanout::FanoutError::from(e));
            // A plan's error is not reported by the fan-out: printed here.
            return json_failure(args.json, Err(e));
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
        Err(e) => json_failure(args.json, Err(e)),
    }
}

/// `result`, its failure printed first as the `--json` failure object when `json` asks for it
/// and nothing has reported it yet.
fn json_failure(json: bool, result: Result<(), ReplicateError>) -> Result<(), ReplicateError> {
    if let Err(e) = &result {
        if json && !e.reported() {
            println!("{}", crate::json::failure(e.code(), &e.to_string()));
        }
    }
    result
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
