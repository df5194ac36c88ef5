//! `orbitctl replicate SRC DST DST...`: one file to many destinations at once (a fan-out), and
//! following or cancelling one with `orbitctl wait` and `orbitctl cancel` on several stars.
//!
//! The controller plans who pulls from whom ([`super::plan`]), mints for every destination a
//! link token (scoped to the transfer) for the origin and one for each of its upstreams, and sends each destination one
//! `ReplicateFanout` (`orbit_wire::fanout`), all with the same transfer id, on a connection of
//! its own, all at once. It then follows every control stream together: one line per
//! destination as it ends, one summary at the end. One destination failing never stops the
//! others; the command succeeds when at least `--min-success` destinations verified the file,
//! and all of them the same file.
//!
//! Like a single replication, it never carries file data: its traffic is a few kilobytes per
//! destination (a handshake, one command of at most four tokens, a few events).

use std::path::Path;

use orbit_wire::fanout::{ReplicateFanout, Upstream};
use orbit_wire::{ControlRequest, ErrorCode, ReplicateFile, TransferId};

use super::interrupt::interrupt_signal;
use super::plan::{self, Plan, PlanError};
use super::tree::Output;
use super::{new_transfer_id, Args, ReplicateError};
use crate::exit;
use crate::grid::{Grid, GridError};
use crate::spec::{StarAddr, StarPath};
use crate::token;

mod board;
mod detach;
mod legs;

use board::Board;
use detach::detach;
pub use legs::{ask_all, Answer, LegError};
use legs::{targets_of, Legs, Target};

/// Why a fan-out as a whole failed. The destinations' own failures are reported one per line;
/// these say what became of the whole.
#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    /// The command line asks for a fan-out that cannot be run; nothing was contacted.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// Fewer destinations than `--min-success` verified the file.
    #[error(
        "fan-out failed: {verified} of {total} destinations verified the file, {needed} needed"
    )]
    TooFew {
        /// Destinations verified.
        verified: usize,
        /// Destinations in all.
        total: usize,
        /// `--min-success`.
        needed: usize,
        /// The code of the first destination that failed for a reason that will not go away
        /// by itself, or if none did, of the first that failed: so its exit code is 4 only
        /// when every failure may clear by itself.
        code: ErrorCode,
    },
    /// Two destinations reported different digests for the same transfer. Every destination
    /// checks the origin's signed digest, so this must never happen.
    #[error(
        "fan-out failed: the destinations reported different sha256 digests, which should never \
         happen: see the FAILED lines, and please report it"
    )]
    DigestsDiffer,
    /// Ctrl-C: the destinations still running were cancelled.
    #[error(
        "fan-out cancelled (interrupted): {verified} of {total} destinations had verified the \
         file; the others were cancelled and publish nothing"
    )]
    Interrupted {
        /// Destinations verified before the interruption.
        verified: usize,
        /// Destinations in all.
        total: usize,
    },
    /// With `--detach`, some destinations did not start.
    #[error(
        "{failed} of {total} destinations did not start transfer {id}; the others carry on \
         (stop them with orbitctl cancel {id} --star NAME)"
    )]
    NotStarted {
        /// Destinations that refused or could not be reached.
        failed: usize,
        /// Destinations in all.
        total: usize,
        /// The transfer.
        id: TransferId,
    },
}

impl FanoutError {
    /// The wire code for `--json` output.
    pub fn code(&self) -> ErrorCode {
        match self {
            FanoutError::Plan(_) => ErrorCode::InvalidArgument,
            FanoutError::TooFew { code, .. } => *code,
            FanoutError::DigestsDiffer => ErrorCode::DataLoss,
            FanoutError::Interrupted { .. } => ErrorCode::Cancelled,
            FanoutError::NotStarted { .. } => ErrorCode::Unavailable,
        }
    }

    /// The exit code: 2 for a usage error, 130 after Ctrl-C, 4 when fewer than --min-success
    /// destinations verified the file and every failure may go away by itself, 1 otherwise
    /// (see [`crate::exit`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            FanoutError::Plan(_) => exit::USAGE,
            FanoutError::Interrupted { .. } => exit::INTERRUPTED,
            FanoutError::TooFew { code, .. } => exit::of_code(*code),
            // Starting it again would start the destinations that did start a second time.
            FanoutError::NotStarted { .. } | FanoutError::DigestsDiffer => exit::FAILED,
        }
    }

    /// Whether the destinations' lines and the summary have been printed already, so that
    /// `--json` must not print a failure object on top.
    pub(super) fn reported(&self) -> bool {
        !matches!(self, FanoutError::Plan(_))
    }
}

/// The destinations `args` name, in order: the DST arguments, then each `--to`, then the lines
/// of `--to-file`. Reads the `--to-file`.
///
/// # Errors
///
/// [`PlanError`]: the file cannot be read or has a bad line, a destination is not a plain
/// `STAR:/abs/path` (a directory with `--recursive`), there is none, or `--also-from` is given
/// more than one.
pub fn destinations(args: &Args) -> Result<Vec<StarPath>, PlanError> {
    let listed = match &args.to_file {
        None => Vec::new(),
        Some(file) => {
            let text =
                std::fs::read_to_string(file).map_err(|error| PlanError::ListUnreadable {
                    file: file.clone(),
                    error,
                })?;
            plan::parse_destination_list(file, &text, args.recursive)?
        }
    };
    let given: Vec<&String> = args.targets.iter().chain(&args.to).collect();
    let count = given.len() + listed.len();
    if !args.also_from.is_empty() && count > 1 {
        return Err(PlanError::AlsoFromFanout(count));
    }
    if args.connections.is_some() && count > 1 {
        return Err(PlanError::ConnectionsFanout(count));
    }
    let mut all = Vec::with_capacity(count);
    for text in given {
        let parsed = if args.recursive {
            StarPath::parse_dir(text)
        } else {
            StarPath::parse(text)
        };
        all.push(parsed.map_err(|error| PlanError::Destination {
            given: text.clone(),
            error,
        })?);
    }
    all.extend(listed);
    match (all.is_empty(), &args.to_file) {
        (true, Some(file)) => Err(PlanError::NoDestinations(file.clone())),
        _ => Ok(all),
    }
}

/// The stars `wait` and `cancel` follow: each `--star`, then the stars of `--to-file`'s lines
/// (its paths are not needed: the stars say), each once, in order.
///
/// # Errors
///
/// [`PlanError`] when the file cannot be read or has a bad line.
pub fn stars_of(stars: &[String], to_file: Option<&Path>) -> Result<Vec<String>, PlanError> {
    let mut all: Vec<String> = stars.to_vec();
    if let Some(file) = to_file {
        let text = std::fs::read_to_string(file).map_err(|error| PlanError::ListUnreadable {
            file: file.to_owned(),
            error,
        })?;
        let listed = plan::parse_destination_list(file, &text, true)?;
        all.extend(listed.into_iter().map(|d| d.star));
        if all.is_empty() {
            return Err(PlanError::NoDestinations(file.to_owned()));
        }
    }
    let mut seen = std::collections::HashSet::new();
    all.retain(|star| seen.insert(star.clone()));
    Ok(all)
}

/// Runs `orbitctl replicate` with more than one destination: prints a line per destination as
/// it ends, then the summary (or JSON).
///
/// # Errors
///
/// [`ReplicateError`]; with `--json` every failure has been printed already.
pub async fn run(
    grid_dir: &Path,
    args: &Args,
    destinations: Vec<StarPath>,
) -> Result<(), ReplicateError> {
    super::json_failure(args.json, execute(grid_dir, args, destinations).await)
}

async fn execute(
    grid_dir: &Path,
    args: &Args,
    destinations: Vec<StarPath>,
) -> Result<(), ReplicateError> {
    // From here on Ctrl-C cancels the fan-out rather than killing orbitctl.
    let mut interrupt = interrupt_signal();
    let source = StarPath::parse(args.source.as_deref().unwrap_or(""))?;
    let grid = Grid::open(grid_dir)?;
    // Checked as given (the first of two duplicates is the one named), planned by zone.
    plan::check_destinations(&source, &destinations).map_err(FanoutError::from)?;
    let destinations = plan::grouped_by_zone(&source, destinations, |star| grid.zone(star));
    let plan = Plan::new(source, destinations, args.topology, args.min_success)
        .map_err(FanoutError::from)?;
    let source_addr = grid.star(&plan.source.star)?.to_string();
    let addrs = plan
        .destinations
        .iter()
        .map(|d| grid.star(&d.star).cloned())
        .collect::<Result<Vec<StarAddr>, GridError>>()?;
    let master = grid.master_key()?;
    let tls = grid.client_tls()?;
    let ttl = args.ttl.unwrap_or(grid.ttl_secs());
    let file = ReplicateFile {
        transfer_id: new_transfer_id(),
        source: plan.source.star.clone(),
        source_addr,
        source_path: plan.source.path.clone(),
        target_path: String::new(),
        token: String::new(),
        expect_sha256: args.expect_sha256,
        timeout_secs: args.timeout,
    };
    let addr_texts: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    let commands = commands(
        &plan,
        &addr_texts,
        &file,
        |audience, holder, path, transfer| {
            token::mint_link(&master, audience, holder, path, transfer, ttl)
        },
    );
    tracing::info!(
        transfer = %file.transfer_id,
        source = %plan.source,
        destinations = plan.destinations.len(),
        topology = %plan.topology,
        "fan-out started"
    );
    for (destination, upstreams) in plan.destinations.iter().zip(&plan.upstreams) {
        let upstreams: Vec<&str> = upstreams
            .iter()
            .map(|&j| plan.destinations[j].star.as_str())
            .collect();
        tracing::info!(
            destination = %destination.star,
            zone = grid.zone(&destination.star).unwrap_or("-"),
            "planned to pull from {upstreams:?}, then the origin"
        );
    }
    let output = Output {
        json: args.json,
        quiet: args.quiet,
    };
    if args.json && !args.detach {
        let zone_of = |star: &str| grid.zone(star);
        println!(
            "{}",
            super::fanout_report::plan_json(file.transfer_id, &plan, zone_of)
        );
    }
    let request = |command: ReplicateFanout| match args.detach {
        true => ControlRequest::StartFanout(command),
        false => ControlRequest::ReplicateFanout(command),
    };
    let targets: Vec<Target> = plan
        .destinations
        .iter()
        .zip(addrs)
        .zip(commands)
        .map(|((destination, addr), command)| Target {
            star: destination.star.clone(),
            addr,
            path: Some(destination.path.clone()),
            request: request(command),
        })
        .collect();
    if args.detach {
        return Ok(detach(tls, file.transfer_id, targets, output).await?);
    }
    let mut board = Board::new(&file, &targets, plan.min_success, output);
    let legs = Legs::spawn(tls.clone(), &targets);
    let interrupted = board.follow(legs, Some(&mut interrupt)).await;
    if interrupted {
        board.cancel_unfinished(tls, &mut interrupt).await;
    }
    Ok(board.summarize(interrupted)?)
}

/// The command each destination of `plan` receives: `file` with its own target path and a
/// token for the origin, and its upstreams with a token each. `addrs` are the destinations'
/// `HOST:PORT`s; `mint(audience, holder, path, transfer)` signs a link token. Every token names
/// the destination as holder and `file`'s transfer; the origin's is for the source path, an
/// upstream's for the path that upstream is writing.
pub fn commands(
    plan: &Plan,
    addrs: &[String],
    file: &ReplicateFile,
    mint: impl Fn(&str, &str, &str, TransferId) -> String,
) -> Vec<ReplicateFanout> {
    let transfer = file.transfer_id;
    plan.destinations
        .iter()
        .zip(&plan.upstreams)
        .map(|(destination, upstreams)| ReplicateFanout {
            file: ReplicateFile {
                target_path: destination.path.clone(),
                token: mint(&file.source, &destination.star, &file.source_path, transfer),
                ..file.clone()
            },
            upstreams: upstreams
                .iter()
                .map(|&j| {
                    let upstream = &plan.destinations[j];
                    Upstream {
                        star: upstream.star.clone(),
                        addr: addrs[j].clone(),
                        path: upstream.path.clone(),
                        token: mint(&upstream.star, &destination.star, &upstream.path, transfer),
                    }
                })
                .collect(),
        })
        .collect()
}

/// Runs `orbitctl wait ID` on several stars: follows transfer `id` on each, and reports it as a
/// fan-out is reported. Ctrl-C stops waiting, not the transfer.
///
/// # Errors
///
/// [`ReplicateError`]; with `--json` every failure has been printed already.
pub async fn wait(
    grid_dir: &Path,
    id: TransferId,
    stars: &[String],
    min_success: Option<u32>,
    output: Output,
) -> Result<(), ReplicateError> {
    let result = async {
        let min_success =
            plan::check_min_success(min_success, stars.len()).map_err(FanoutError::from)?;
        let grid = Grid::open(grid_dir)?;
        let tls = grid.client_tls()?;
        let request = ControlRequest::Wait { transfer_id: id };
        let targets = targets_of(&grid, stars, &request)?;
        let file = ReplicateFile {
            transfer_id: id,
            source: String::new(),
            source_addr: String::new(),
            source_path: String::new(),
            target_path: String::new(),
            token: String::new(),
            expect_sha256: None,
            timeout_secs: 0,
        };
        let mut board = Board::new(&file, &targets, min_success, output);
        board.follow(Legs::spawn(tls, &targets), None).await;
        Ok(board.summarize(false)?)
    }
    .await;
    if let Err(e) = &result {
        let reported = matches!(e, ReplicateError::Fanout(f) if f.reported());
        if output.json && !reported {
            println!("{}", crate::json::failure(e.code(), &e.to_string()));
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use orbit_wire::token::{self as wire_token, MasterKey};

    use super::*;
    use crate::replicate::plan::Topology;

    fn path(star: &str, path: &str) -> StarPath {
        StarPath {
            star: star.into(),
            path: path.into(),
        }
    }

    fn file() -> ReplicateFile {
        ReplicateFile {
            transfer_id: TransferId(0xf0),
            source: "star-a".into(),
            source_addr: "10.0.0.1:7400".into(),
            source_path: "/data/f".into(),
            target_path: String::new(),
            token: String::new(),
            expect_sha256: None,
            timeout_secs: 60,
        }
    }

    #[test]
    fn each_destination_gets_tokens_for_the_origin_and_its_upstreams() {
        let destinations = vec![path("b", "/x/f"), path("c", "/y/f"), path("d", "/z/f")];
        let plan = Plan::new(
            path("star-a", "/data/f"),
            destinations,
            Topology::Chain,
            None,
        )
        .unwrap();
        let addrs = ["h-b:1", "h-c:2", "h-d:3"].map(String::from);
        let master = MasterKey::from_bytes([7; 32]);
        let mint = |audience: &str, holder: &str, path: &str, transfer| {
            token::mint_link(&master, audience, holder, path, transfer, 60)
        };
        let commands = commands(&plan, &addrs, &file(), mint);
        assert_eq!(commands.len(), 3);
        for (command, destination) in commands.iter().zip(&plan.destinations) {
            // One transfer, one origin, each its own target.
            assert_eq!(command.file.transfer_id, TransferId(0xf0));
            assert_eq!(command.file.source, "star-a");
            assert_eq!(command.file.source_path, "/data/f");
            assert_eq!(command.file.timeout_secs, 60);
            assert_eq!(command.file.target_path, destination.path);
            let claims = wire_token::decode_link_unverified(&command.file.token).unwrap();
            assert_eq!(claims.transfer_id, TransferId(0xf0));
            assert_eq!(
                (
                    claims.read.audience.as_str(),
                    claims.read.holder.as_str(),
                    claims.read.path.as_str()
                ),
                ("star-a", destination.star.as_str(), "/data/f")
            );
            assert_eq!(claims.read.range, orbit_wire::ByteRange::FULL);
        }
        assert!(commands[0].upstreams.is_empty());
        let last = &commands[2].upstreams;
        let named: Vec<(&str, &str, &str)> = last
            .iter()
            .map(|u| (u.star.as_str(), u.addr.as_str(), u.path.as_str()))
            .collect();
        assert_eq!(named, [("c", "h-c:2", "/y/f"), ("b", "h-b:1", "/x/f")]);
        for upstream in last {
            let claims = wire_token::decode_link_unverified(&upstream.token).unwrap();
            assert_eq!(claims.transfer_id, TransferId(0xf0));
            assert_eq!(claims.read.audience, upstream.star);
            assert_eq!(claims.read.holder, "d");
            assert_eq!(claims.read.path, upstream.path);
        }
        // Well under the 8 KiB a destination's command may cost.
        for command in &commands {
            let request = ControlRequest::ReplicateFanout(command.clone());
            assert!(orbit_wire::encode_frame(&request).unwrap().len() < 2048);
        }
    }

    #[test]
    fn the_destinations_come_from_arguments_then_to_then_the_file() {
        use clap::Parser as _;
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: Args,
        }
        let parse = |extra: &[&str]| {
            let argv = ["replicate", "a:/f"].iter().chain(extra).copied();
            Cli::try_parse_from(argv).map(|cli| cli.args)
        };
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts");
        std::fs::write(&hosts, "# more\nd:/f\n\ne:/f\n").unwrap();
        let hosts_text = hosts.to_str().unwrap();
        let args = parse(&["b:/f", "--to", "c:/f", "--to-file", hosts_text]).unwrap();
        let shown: Vec<String> = destinations(&args)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(shown, ["b:/f", "c:/f", "d:/f", "e:/f"]);
        // --to alone is enough; nothing at all is not.
        assert_eq!(
            destinations(&parse(&["--to", "c:/f"]).unwrap())
                .unwrap()
                .len(),
            1
        );
        assert!(parse(&[]).is_err());

        // Directories with --recursive, a trailing slash allowed.
        let trees = destinations(&parse(&["b:/d/", "c:/d", "-r"]).unwrap()).unwrap();
        let shown: Vec<String> = trees.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["b:/d", "c:/d"]);
        let err = destinations(&parse(&["b:/f", "c:/d/"]).unwrap()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("destination \"c:/d/\": bad path"),
            "{err}"
        );
        std::fs::write(&hosts, "d:/f\nnot a destination\n").unwrap();
        let err = destinations(&parse(&["--to-file", hosts_text]).unwrap()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("{hosts_text}, line 2: ")),
            "{err}"
        );
        std::fs::write(&hosts, "# nobody\n").unwrap();
        let err = destinations(&parse(&["--to-file", hosts_text]).unwrap()).unwrap_err();
        assert!(matches!(err, PlanError::NoDestinations(_)), "{err}");
        let missing = dir.path().join("missing");
        let err = destinations(&parse(&["--to-file", missing.to_str().unwrap()]).unwrap());
        assert!(matches!(err, Err(PlanError::ListUnreadable { .. })));

        // The stars of wait and cancel: each once, in order.
        std::fs::write(&hosts, "c:/f\nb:/g\nd:/f\n").unwrap();
        let stars = stars_of(&["b".into()], Some(&hosts)).unwrap();
        assert_eq!(stars, ["b", "c", "d"]);
    }
}
