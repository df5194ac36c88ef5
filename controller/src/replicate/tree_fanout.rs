//! `orbitctl replicate SRC DST DST... --recursive`: one directory tree to many destinations,
//! store and forward by rounds, so that the source's uplink carries the tree about once.
//!
//! The source replicates the tree to the first destination: an ordinary tree replication
//! ([`super::tree`]), every file verified. A destination whose tree ended complete (every entry
//! done, no file failed, `--delete` run if it was asked for) becomes a *holder*: a plain source
//! for the next pending destination, through another ordinary tree replication with the same
//! options and a tree token minted for that holder (audience) and that destination (holder of
//! the token). A holder that is free takes the next destination, so the holders double each
//! round and N destinations take about ceil(log2 N) + 1 tree copies of time. The source feeds
//! a destination again only when no destination holds the complete tree and none is running
//! that could (said on stderr). A holder whose leg ended with files failed, or failed for a
//! reason that may pass (it died mid-tree), feeds no one more, and its destination is fed again,
//! once, by another holder or the source. A dry run changes nothing, so every destination is compared with the source
//! itself, all at once.
//!
//! A holder must hold the source's tree and nothing else, or it would hand the others entries
//! the source never had. With `--delete`, a complete tree is a mirror of the source. Without,
//! the entries that were in a holder's directory before stay there, so a destination whose
//! tree ends while others wait is first checked with a dry run of `--delete` from the source
//! (a listing, no file bytes): only one that would delete nothing feeds the others.
//!
//! It builds no wire message of its own and never carries file data: it sends the same
//! `ReplicateTree` commands as a single tree, one per destination (and one per check).

use std::path::Path;

use orbit_wire::ErrorCode;

use super::interrupt::interrupt_signal;
use super::plan::{self, PlanError};
use super::tree;
use super::{Args, ReplicateError};
use crate::connect;
use crate::exit;
use crate::grid::Grid;
use crate::spec::StarPath;

mod rounds;

use rounds::{Node, Rounds, SOURCE};

/// Why a tree fan-out as a whole failed, or could not start. Each destination's own end is
/// reported on its line; these say what became of the whole.
#[derive(Debug, thiserror::Error)]
pub enum TreeFanoutError {
    /// A destination that is the source, one given twice, or a bad `--min-success`; nothing
    /// was contacted.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// `--detach`: the rounds need orbitctl to start each destination once another holds the
    /// tree.
    #[error(
        "--detach does not go with a fan-out of a tree: each destination is started once \
         another holds the tree, which needs orbitctl to stay; run it without --detach"
    )]
    Detach,
    /// Two destinations on one star, one directory inside the other (or the same).
    #[error(
        "destinations {first} and {second} nest on star {star}: one tree would be written \
         inside the other"
    )]
    Nested {
        /// The star.
        star: String,
        /// The first destination given, as `STAR:/path`.
        first: String,
        /// The second.
        second: String,
    },
    /// A destination on the source's star, inside the source's directory or around it.
    #[error(
        "destination {destination} nests with the source {origin}: the tree would be copied \
         into itself"
    )]
    NestsWithSource {
        /// The destination, as `STAR:/path`.
        destination: String,
        /// The source.
        origin: String,
    },
    /// Fewer than `--min-success` destinations ended with the complete tree.
    #[error(
        "tree fan-out failed: {replicated} of {total} destinations replicated the tree, {needed} \
         needed"
    )]
    TooFew {
        /// Destinations with the complete tree.
        replicated: usize,
        /// Destinations whose tree was walked to the end with failures.
        partial: usize,
        /// Destinations in all.
        total: usize,
        /// `--min-success`.
        needed: usize,
        /// The code of the first destination that failed as a whole for a reason that will
        /// not go away by itself, or if none did, of the first that failed as a whole.
        code: Option<ErrorCode>,
    },
    /// Ctrl-C: the trees still running were cancelled, the destinations not started never
    /// were.
    #[error(
        "tree fan-out cancelled (interrupted): {replicated} of {total} destinations had \
         replicated the tree; files already published stay, no partial file is left"
    )]
    Interrupted {
        /// Destinations with the complete tree before the interruption.
        replicated: usize,
        /// Destinations in all.
        total: usize,
    },
}

impl TreeFanoutError {
    /// The wire code for `--json` output.
    pub fn code(&self) -> ErrorCode {
        match self {
            TreeFanoutError::Plan(_)
            | TreeFanoutError::Detach
            | TreeFanoutError::Nested { .. }
            | TreeFanoutError::NestsWithSource { .. } => ErrorCode::InvalidArgument,
            TreeFanoutError::TooFew { code, .. } => code.unwrap_or(ErrorCode::FailedPrecondition),
            TreeFanoutError::Interrupted { .. } => ErrorCode::Cancelled,
        }
    }

    /// The exit code: 2 for a usage error, 130 after Ctrl-C; when too few trees are complete,
    /// 3 if enough were at least walked to the end, else 4 when every destination that failed
    /// as a whole failed for a temporary reason, 1 otherwise (see [`crate::exit`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            TreeFanoutError::Plan(_)
            | TreeFanoutError::Detach
            | TreeFanoutError::Nested { .. }
            | TreeFanoutError::NestsWithSource { .. } => exit::USAGE,
            TreeFanoutError::Interrupted { .. } => exit::INTERRUPTED,
            TreeFanoutError::TooFew {
                replicated,
                partial,
                needed,
                ..
            } if replicated + partial >= *needed => exit::INCOMPLETE,
            TreeFanoutError::TooFew { code, .. } => code.map_or(exit::FAILED, exit::of_code),
        }
    }

    /// Whether the destinations' lines and the summary have been printed already, so that
    /// `--json` must not print a failure object on top.
    pub(super) fn reported(&self) -> bool {
        matches!(
            self,
            TreeFanoutError::TooFew { .. } | TreeFanoutError::Interrupted { .. }
        )
    }
}

/// Whether directory `inner` is `outer` or lies beneath it.
fn inside(inner: &str, outer: &str) -> bool {
    outer == "/"
        || inner == outer
        || inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Checks the destinations of a tree fan-out: none is the source or nests with it on its
/// star, none is given twice, and no two nest on one star. Two disjoint directories on one
/// star are fine: each is its own tree replication.
///
/// # Errors
///
/// [`TreeFanoutError`] naming the first culprit.
pub fn check_destinations(
    source: &StarPath,
    destinations: &[StarPath],
) -> Result<(), TreeFanoutError> {
    for (i, destination) in destinations.iter().enumerate() {
        if destination == source {
            return Err(PlanError::SameAsSource(destination.clone()).into());
        }
        let nests = |a: &StarPath, b: &StarPath| {
            a.star == b.star && (inside(&a.path, &b.path) || inside(&b.path, &a.path))
        };
        if nests(destination, source) {
            return Err(TreeFanoutError::NestsWithSource {
                destination: destination.to_string(),
                origin: source.to_string(),
            });
        }
        if let Some(first) = destinations[..i].iter().find(|d| nests(d, destination)) {
            if first == destination {
                return Err(PlanError::Duplicate(destination.clone()).into());
            }
            return Err(TreeFanoutError::Nested {
                star: destination.star.clone(),
                first: first.to_string(),
                second: destination.to_string(),
            });
        }
    }
    Ok(())
}

/// Runs `orbitctl replicate --recursive` with more than one destination: prints a line per
/// destination as its tree ends, then the summary (or JSON).
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
    if args.detach {
        return Err(TreeFanoutError::Detach.into());
    }
    let source = StarPath::parse_dir(args.source.as_deref().unwrap_or(""))?;
    check_destinations(&source, &destinations)?;
    let min_success = plan::check_min_success(args.min_success, destinations.len())
        .map_err(TreeFanoutError::from)?;
    let filter = tree::filter_of(args)?;
    // From here on Ctrl-C cancels every tree running rather than killing orbitctl.
    let mut interrupt = interrupt_signal();
    let grid = Grid::open(grid_dir)?;
    let mut nodes = Vec::with_capacity(destinations.len() + 1);
    for path in std::iter::once(source).chain(destinations) {
        let addr = grid.star(&path.star)?;
        nodes.push(Node {
            dial: connect::resolve(&path.star, addr).await?,
            addr: addr.to_string(),
            path,
        });
    }
    tracing::info!(
        source = %nodes[SOURCE].path,
        destinations = nodes.len() - 1,
        "tree fan-out started"
    );
    let rounds = Rounds::new(
        args,
        grid.master_key()?,
        grid.client_tls()?,
        args.ttl.unwrap_or(grid.ttl_secs()),
        filter,
        nodes,
        min_success,
    );
    rounds.run(&mut interrupt).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(star: &str, path: &str) -> StarPath {
        StarPath {
            star: star.into(),
            path: path.into(),
        }
    }

    #[test]
    fn destinations_may_not_repeat_or_nest_on_one_star() {
        let source = at("a", "/srv/data");
        let check = |destinations: &[StarPath]| {
            check_destinations(&source, destinations).map_err(|e| (e.to_string(), e.exit_code()))
        };
        // Disjoint directories, on one star or on the source's, are fine.
        check(&[
            at("b", "/x"),
            at("c", "/x"),
            at("b", "/y"),
            at("a", "/srv/copy"),
        ])
        .unwrap();
        check(&[at("b", "/x"), at("b", "/xy")]).unwrap();
        let refused = [
            (
                vec![at("b", "/x"), at("a", "/srv/data")],
                "destination a:/srv/data is the source itself",
            ),
            (
                vec![at("b", "/x"), at("c", "/x"), at("b", "/x")],
                "destination b:/x is given twice",
            ),
            (
                vec![at("b", "/x"), at("b", "/x/y")],
                "destinations b:/x and b:/x/y nest on star b: one tree would be written inside \
                 the other",
            ),
            (
                vec![at("b", "/x/y"), at("b", "/")],
                "destinations b:/x/y and b:/ nest on star b: one tree would be written inside \
                 the other",
            ),
            (
                vec![at("a", "/srv/data/copy")],
                "destination a:/srv/data/copy nests with the source a:/srv/data: the tree would \
                 be copied into itself",
            ),
            (
                vec![at("a", "/srv")],
                "destination a:/srv nests with the source a:/srv/data: the tree would be copied \
                 into itself",
            ),
        ];
        for (destinations, message) in refused {
            assert_eq!(
                check(&destinations).unwrap_err(),
                (message.to_owned(), exit::USAGE)
            );
        }
    }

    #[test]
    fn exit_codes_tell_partly_done_from_failed() {
        let too_few = |replicated, partial, code| TreeFanoutError::TooFew {
            replicated,
            partial,
            total: 4,
            needed: 4,
            code,
        };
        // Every tree walked to the end, some with files failed: partly done.
        assert_eq!(too_few(3, 1, None).exit_code(), exit::INCOMPLETE);
        assert_eq!(too_few(3, 1, None).code(), ErrorCode::FailedPrecondition);
        // One failed as a whole: by its code's class.
        let denied = Some(ErrorCode::PermissionDenied);
        assert_eq!(too_few(3, 0, denied).exit_code(), exit::FAILED);
        let unavailable = Some(ErrorCode::Unavailable);
        assert_eq!(too_few(2, 1, unavailable).exit_code(), exit::TEMPORARY);
        assert_eq!(TreeFanoutError::Detach.exit_code(), exit::USAGE);
        let interrupted = TreeFanoutError::Interrupted {
            replicated: 1,
            total: 4,
        };
        assert_eq!(interrupted.exit_code(), exit::INTERRUPTED);
        assert!(interrupted.reported() && !TreeFanoutError::Detach.reported());
    }
}
