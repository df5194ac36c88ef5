//! The plan of a fan-out, one file to many destinations: which destinations there are, in
//! which order, and which of them each one pulls the file from before it falls back on the
//! origin (the star that holds the file).
//!
//! A destination that pulls from another destination reads the bytes that star is itself still
//! receiving, so a fan-out is a pipeline: the origin sends the file roughly once per star at the
//! top of the plan instead of once per destination. The plan only chooses who asks whom first;
//! every destination still checks the origin's signed digest before it publishes
//! (`orbit_wire::fanout`), so a bad plan can slow a fan-out down but never publish a wrong file.
//!
//! Everything here is a pure function of the command line: nothing reads the grid, a file or the
//! network (the caller reads `--to-file` and hands over its text), so it is all unit-tested.

use std::fmt;
use std::num::NonZeroU32;
use std::path::PathBuf;

use crate::spec::{SpecError, StarPath};

/// The most upstreams a destination is given, besides the origin. Each costs a token (about 150
/// bytes) in the command, and a destination that has failed over three times is better off
/// asking the origin.
pub const MAX_PLANNED_UPSTREAMS: usize = 3;

/// `auto` chains this many destinations at most; beyond, it builds a binary tree, so that a
/// destination is never more than a few hops from the origin.
pub const AUTO_CHAIN_LIMIT: usize = 32;

/// How destinations pull from one another.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Topology {
    /// [`Topology::Chain`] up to [`AUTO_CHAIN_LIMIT`] destinations, `tree:2` beyond.
    #[default]
    Auto,
    /// Each destination pulls from the one before it (then the two before that).
    Chain,
    /// A tree in which each star feeds `K` others: the origin the first `K` destinations, the
    /// first destination the next `K`, and so on, breadth first.
    Tree(NonZeroU32),
}

impl Topology {
    /// Parses `auto`, `chain` or `tree:K` with K at least 1, for `--topology`.
    ///
    /// # Errors
    ///
    /// [`PlanError::Topology`] naming the value and what is accepted.
    pub fn parse(text: &str) -> Result<Topology, PlanError> {
        let bad = |why: &str| PlanError::Topology {
            given: text.to_owned(),
            why: why.to_owned(),
        };
        match text {
            "auto" => Ok(Topology::Auto),
            "chain" => Ok(Topology::Chain),
            _ => {
                let fanout = text
                    .strip_prefix("tree:")
                    .ok_or_else(|| bad("expected auto, chain or tree:K"))?;
                let fanout: u32 = fanout
                    .parse()
                    .map_err(|_| bad("K in tree:K must be a whole number, at least 1"))?;
                NonZeroU32::new(fanout)
                    .map(Topology::Tree)
                    .ok_or_else(|| bad("K in tree:K must be at least 1"))
            }
        }
    }

    /// What `auto` stands for with `count` destinations; any other topology is itself.
    pub fn resolve(self, count: usize) -> Topology {
        match self {
            Topology::Auto if count <= AUTO_CHAIN_LIMIT => Topology::Chain,
            Topology::Auto => Topology::Tree(NonZeroU32::MIN.saturating_add(1)),
            other => other,
        }
    }
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topology::Auto => f.write_str("auto"),
            Topology::Chain => f.write_str("chain"),
            Topology::Tree(k) => write!(f, "tree:{k}"),
        }
    }
}

/// Why a fan-out cannot be planned: a usage error, found before any star is contacted. Each
/// message names the value at fault.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A `--topology` that is not `auto`, `chain` or `tree:K` with K at least 1.
    #[error("bad topology {given:?}: {why}")]
    Topology {
        /// The value given.
        given: String,
        /// What is wrong with it.
        why: String,
    },
    /// A destination that is the source itself: same star, same path.
    #[error("destination {0} is the source itself")]
    SameAsSource(StarPath),
    /// The same destination (star and path) given twice.
    #[error("destination {0} is given twice")]
    Duplicate(StarPath),
    /// Two destinations on one star: a fan-out is one transfer, which a star runs once.
    #[error(
        "star {star} is given twice ({first} and {second}): a fan-out puts one copy on each star"
    )]
    SameStar {
        /// The star.
        star: String,
        /// Its first destination.
        first: StarPath,
        /// Its second.
        second: StarPath,
    },
    /// `--also-from` with more than one destination.
    #[error(
        "--also-from takes one destination, not {0}: a fan-out from several sources is not \
         supported yet"
    )]
    AlsoFromFanout(usize),
    /// `--connections` with more than one destination.
    #[error(
        "--connections takes one destination, not {0}: a fan-out takes one connection per hop"
    )]
    ConnectionsFanout(usize),
    /// `--connections N` with so many sources that the command cannot name them all.
    #[error(
        "--connections {connections} with {sources} source(s) needs {needed} source connections; \
         one command carries at most {most}"
    )]
    TooManyConnections {
        /// The value given.
        connections: u32,
        /// The sources: the source and each --also-from.
        sources: usize,
        /// `connections * sources`.
        needed: usize,
        /// What fits.
        most: usize,
    },
    /// `--min-success` above the number of destinations.
    #[error("--min-success {min} is more than the {count} destination(s) given")]
    MinSuccess {
        /// The value given.
        min: u32,
        /// How many destinations there are.
        count: usize,
    },
    /// No destination at all (a `--to-file` with only comments, and nothing else).
    #[error("no destination given: {0} lists none")]
    NoDestinations(PathBuf),
    /// The `--to-file` could not be read.
    #[error("cannot read the destination list {}: {error}", file.display())]
    ListUnreadable {
        /// The file.
        file: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// A line of the `--to-file` that is not `STAR:/abs/path`.
    #[error("{}, line {line}: {error}", file.display())]
    ListLine {
        /// The file.
        file: PathBuf,
        /// The line's number, from 1.
        line: usize,
        /// What is wrong with it.
        error: SpecError,
    },
    /// A destination given on the command line that is not a plain `STAR:/abs/path` (without
    /// `--recursive`, a file path cannot end with `/`).
    #[error("destination {given:?}: {error}")]
    Destination {
        /// The text given.
        given: String,
        /// What is wrong with it.
        error: SpecError,
    },
}

/// The destinations listed in a `--to-file`'s `text`: one `STAR:/abs/path` per line, read as a
/// directory (one trailing `/` allowed) when `dirs`. Blank lines and lines whose first
/// non-blank character is `#` are skipped; spaces around an entry are ignored. A `#` after an
/// entry belongs to its path, as paths may hold one.
///
/// # Errors
///
/// [`PlanError::ListLine`] for the first line that is not a destination, naming `file` and the
/// line's number.
pub fn parse_destination_list(
    file: &std::path::Path,
    text: &str,
    dirs: bool,
) -> Result<Vec<StarPath>, PlanError> {
    let mut destinations = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let entry = line.trim();
        if entry.is_empty() || entry.starts_with('#') {
            continue;
        }
        let parsed = if dirs {
            StarPath::parse_dir(entry)
        } else {
            StarPath::parse(entry)
        };
        destinations.push(parsed.map_err(|error| PlanError::ListLine {
            file: file.to_owned(),
            line: index + 1,
            error,
        })?);
    }
    Ok(destinations)
}

/// A fan-out ready to run: the source, the destinations in the order given, and the upstreams
/// of each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The origin: the star holding the file, and its path there.
    pub source: StarPath,
    /// Where the file goes, in the order given.
    pub destinations: Vec<StarPath>,
    /// For each destination (same index), the destinations it pulls from before the origin,
    /// nearest first, as indices into `destinations`.
    pub upstreams: Vec<Vec<usize>>,
    /// The topology the upstreams follow (`auto` resolved).
    pub topology: Topology,
    /// How many destinations must be verified for the fan-out to succeed.
    pub min_success: usize,
}

impl Plan {
    /// Checks the destinations and plans who pulls from whom. `min_success` defaults to every
    /// destination.
    ///
    /// # Errors
    ///
    /// [`PlanError::SameAsSource`], [`PlanError::Duplicate`] or [`PlanError::MinSuccess`].
    pub fn new(
        source: StarPath,
        destinations: Vec<StarPath>,
        topology: Topology,
        min_success: Option<u32>,
    ) -> Result<Plan, PlanError> {
        check_destinations(&source, &destinations)?;
        let min_success = check_min_success(min_success, destinations.len())?;
        let topology = topology.resolve(destinations.len());
        let upstreams = upstreams(topology, &destinations);
        Ok(Plan {
            source,
            destinations,
            upstreams,
            topology,
            min_success,
        })
    }
}

/// The destinations reordered so that the stars of one zone (`zone` in grid.toml, through
/// `zone_of`) follow each other: the source's zone first, then each other zone in the order its
/// first star was listed; stars without a zone count as one zone of their own. The order within a
/// zone is the order given, and with no zones at all nothing moves. A chain then crosses from one
/// zone to the next once, and a tree keeps most parents in their children's zone.
pub fn grouped_by_zone<'a>(
    source: &StarPath,
    destinations: Vec<StarPath>,
    zone_of: impl Fn(&str) -> Option<&'a str>,
) -> Vec<StarPath> {
    let mut zones: Vec<Option<&str>> = vec![zone_of(&source.star)];
    let mut keyed: Vec<(usize, StarPath)> = destinations
        .into_iter()
        .map(|destination| {
            let zone = zone_of(&destination.star);
            let rank = match zones.iter().position(|z| *z == zone) {
                Some(rank) => rank,
                None => {
                    zones.push(zone);
                    zones.len() - 1
                }
            };
            (rank, destination)
        })
        .collect();
    keyed.sort_by_key(|(rank, _)| *rank);
    keyed
        .into_iter()
        .map(|(_, destination)| destination)
        .collect()
}

/// Checks that no destination is the source and no star is given twice: the same star and
/// path, or two paths on one star (a fan-out is one transfer id, which a star runs once).
///
/// # Errors
///
/// [`PlanError::SameAsSource`], [`PlanError::Duplicate`] or [`PlanError::SameStar`] for the
/// first culprit.
pub fn check_destinations(source: &StarPath, destinations: &[StarPath]) -> Result<(), PlanError> {
    let mut seen: std::collections::HashMap<&str, &StarPath> = std::collections::HashMap::new();
    for destination in destinations {
        if destination == source {
            return Err(PlanError::SameAsSource(destination.clone()));
        }
        if let Some(first) = seen.insert(&destination.star, destination) {
            if first == destination {
                return Err(PlanError::Duplicate(destination.clone()));
            }
            return Err(PlanError::SameStar {
                star: destination.star.clone(),
                first: first.clone(),
                second: destination.clone(),
            });
        }
    }
    Ok(())
}

/// `--min-success`, checked against the number of destinations; all of them by default.
///
/// # Errors
///
/// [`PlanError::MinSuccess`] when it is more than `count` (clap already refuses 0).
pub fn check_min_success(min_success: Option<u32>, count: usize) -> Result<usize, PlanError> {
    match min_success {
        None => Ok(count),
        Some(min) if usize::try_from(min).is_ok_and(|m| m >= 1 && m <= count) => Ok(min as usize),
        Some(min) => Err(PlanError::MinSuccess { min, count }),
    }
}

/// The upstreams of each destination under `topology` (`auto` resolved by the number of
/// destinations): indices into `destinations`, nearest first, at most
/// [`MAX_PLANNED_UPSTREAMS`] (and never more than the wire allows). The origin is never listed:
/// it is every destination's last resort. A destination never pulls from another on its own
/// star: it would only read its own disk through the network.
///
/// - `chain`: destination `i` pulls from `i-1`, `i-2`, `i-3`, those that exist.
/// - `tree:K`: numbering the origin 0 and the destinations 1 to N in order, node `n`'s parent
///   is `(n-1)/K`; a destination pulls from its ancestors below the origin, parent first.
pub fn upstreams(topology: Topology, destinations: &[StarPath]) -> Vec<Vec<usize>> {
    let limit = MAX_PLANNED_UPSTREAMS.min(orbit_wire::fanout::MAX_UPSTREAMS);
    let topology = topology.resolve(destinations.len());
    (0..destinations.len())
        .map(|i| {
            let candidates: Vec<usize> = match topology {
                Topology::Tree(k) => ancestors(i, k),
                Topology::Chain | Topology::Auto => (1..=MAX_PLANNED_UPSTREAMS)
                    .filter_map(|d| i.checked_sub(d))
                    .collect(),
            };
            candidates
                .into_iter()
                .filter(|&j| destinations[j].star != destinations[i].star)
                .take(limit)
                .collect()
        })
        .collect()
}

/// The ancestors of destination `index` in a tree where each node feeds `k` others, nearest
/// first, without the origin, as destination indices.
fn ancestors(index: usize, k: NonZeroU32) -> Vec<usize> {
    let k = usize::try_from(k.get()).unwrap_or(usize::MAX);
    let parent = |node: usize| (node - 1) / k;
    let mut found = Vec::new();
    // The destination's node is index + 1; the origin is node 0.
    let mut node = parent(index + 1);
    while node != 0 {
        found.push(node - 1);
        node = parent(node);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(star: &str, path: &str) -> StarPath {
        StarPath {
            star: star.into(),
            path: path.into(),
        }
    }

    /// `n` destinations, each on its own star.
    fn stars(n: usize) -> Vec<StarPath> {
        (0..n).map(|i| dest(&format!("s{i}"), "/f")).collect()
    }

    fn tree(k: u32) -> Topology {
        Topology::Tree(NonZeroU32::new(k).unwrap())
    }

    #[test]
    fn topologies_parse_and_print() {
        assert_eq!(Topology::parse("auto").unwrap(), Topology::Auto);
        assert_eq!(Topology::parse("chain").unwrap(), Topology::Chain);
        assert_eq!(Topology::parse("tree:3").unwrap(), tree(3));
        for topology in [Topology::Auto, Topology::Chain, tree(1), tree(16)] {
            assert_eq!(Topology::parse(&topology.to_string()).unwrap(), topology);
        }
        for bad in [
            "tree:0", "tree:", "tree:-1", "tree:x", "tree", "star", "", "Chain",
        ] {
            let err = Topology::parse(bad).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with(&format!("bad topology {bad:?}")),
                "{err}"
            );
        }
        assert!(Topology::parse("tree:0")
            .unwrap_err()
            .to_string()
            .contains("at least 1"));
    }

    #[test]
    fn auto_chains_up_to_32_then_builds_a_binary_tree() {
        assert_eq!(Topology::Auto.resolve(1), Topology::Chain);
        assert_eq!(Topology::Auto.resolve(32), Topology::Chain);
        assert_eq!(Topology::Auto.resolve(33), tree(2));
        assert_eq!(tree(5).resolve(100), tree(5));
        assert_eq!(Topology::Chain.resolve(1000), Topology::Chain);
        assert_eq!(
            upstreams(Topology::Auto, &stars(33)),
            upstreams(tree(2), &stars(33))
        );
        assert_eq!(
            upstreams(Topology::Auto, &stars(5)),
            upstreams(Topology::Chain, &stars(5))
        );
    }

    #[test]
    fn a_chain_pulls_from_the_three_before_nearest_first() {
        let plan = upstreams(Topology::Chain, &stars(6));
        let expected: [&[usize]; 6] = [&[], &[0], &[1, 0], &[2, 1, 0], &[3, 2, 1], &[4, 3, 2]];
        assert_eq!(plan, expected);
        assert!(upstreams(Topology::Chain, &[]).is_empty());
    }

    #[test]
    fn a_tree_pulls_from_its_ancestors_below_the_origin() {
        // tree:2, breadth first: origin 0 feeds nodes 1 and 2, node 1 feeds 3 and 4, node 2
        // feeds 5 and 6, node 3 feeds 7 and 8, node 7 feeds 15. Destination i is node i + 1.
        let plan = upstreams(tree(2), &stars(15));
        assert_eq!(plan[0], [] as [usize; 0]);
        assert_eq!(plan[1], [] as [usize; 0]);
        assert_eq!(plan[2], [0]); // node 3 -> 1
        assert_eq!(plan[3], [0]); // node 4 -> 1
        assert_eq!(plan[4], [1]); // node 5 -> 2
        assert_eq!(plan[6], [2, 0]); // node 7 -> 3 -> 1
        assert_eq!(plan[14], [6, 2, 0]); // node 15 -> 7 -> 3 -> 1
                                         // Deeper than three: the three nearest only.
        let deep = upstreams(tree(2), &stars(40));
        assert_eq!(deep[30], [14, 6, 2]); // node 31 -> 15 -> 7 -> 3 (-> 1)

        // tree:1 is a chain limited to three upstreams, as a chain is.
        assert_eq!(
            upstreams(tree(1), &stars(8)),
            upstreams(Topology::Chain, &stars(8))
        );
        // A star feeding more than all: everyone pulls from the origin.
        assert!(upstreams(tree(100), &stars(50)).iter().all(Vec::is_empty));
        assert!(upstreams(tree(u32::MAX), &stars(3))
            .iter()
            .all(Vec::is_empty));
    }

    #[test]
    fn a_destination_never_pulls_from_its_own_star() {
        let destinations = [
            dest("b", "/one"),
            dest("b", "/two"),
            dest("c", "/f"),
            dest("b", "/three"),
        ];
        let expected: [&[usize]; 4] = [&[], &[], &[1, 0], &[2]];
        assert_eq!(upstreams(Topology::Chain, &destinations), expected);
    }

    #[test]
    fn every_plan_stays_within_the_limits() {
        for topology in [Topology::Auto, Topology::Chain, tree(1), tree(2), tree(3)] {
            for (i, list) in upstreams(topology, &stars(200)).iter().enumerate() {
                assert!(list.len() <= MAX_PLANNED_UPSTREAMS);
                assert!(list.len() <= orbit_wire::fanout::MAX_UPSTREAMS);
                // Upstreams come earlier in the order, so the plan has no cycle.
                assert!(list.iter().all(|&j| j < i), "{topology} {i}: {list:?}");
            }
        }
    }

    #[test]
    fn destinations_are_checked_against_the_source_and_each_other() {
        let source = dest("a", "/data/f");
        let err = check_destinations(&source, &[dest("b", "/f"), dest("a", "/data/f")]);
        assert_eq!(
            err.unwrap_err().to_string(),
            "destination a:/data/f is the source itself"
        );
        let err = check_destinations(
            &source,
            &[dest("b", "/f"), dest("c", "/f"), dest("b", "/f")],
        );
        assert_eq!(
            err.unwrap_err().to_string(),
            "destination b:/f is given twice"
        );
        // One star takes one copy of a fan-out; the source's star may take one too.
        let err = check_destinations(&source, &[dest("b", "/f"), dest("b", "/g")]);
        assert_eq!(
            err.unwrap_err().to_string(),
            "star b is given twice (b:/f and b:/g): a fan-out puts one copy on each star"
        );
        check_destinations(&source, &[dest("b", "/f"), dest("a", "/copy")]).unwrap();
    }

    #[test]
    fn min_success_is_between_one_and_the_destinations() {
        assert_eq!(check_min_success(None, 3).unwrap(), 3);
        assert_eq!(check_min_success(Some(1), 3).unwrap(), 1);
        assert_eq!(check_min_success(Some(3), 3).unwrap(), 3);
        let err = check_min_success(Some(4), 3).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--min-success 4 is more than the 3 destination(s) given"
        );
        assert!(check_min_success(Some(0), 3).is_err());
    }

    #[test]
    fn a_plan_checks_then_plans() {
        let plan = Plan::new(dest("a", "/f"), stars(3), Topology::Auto, Some(2)).unwrap();
        assert_eq!(plan.topology, Topology::Chain);
        assert_eq!(plan.min_success, 2);
        assert_eq!(plan.upstreams, [vec![], vec![0], vec![1, 0]]);
        assert!(matches!(
            Plan::new(dest("a", "/f"), stars(3), Topology::Auto, Some(9)),
            Err(PlanError::MinSuccess { min: 9, count: 3 })
        ));
    }

    #[test]
    fn zones_keep_their_stars_together_the_sources_first() {
        let zone = |star: &str| match star {
            "a" | "c" | "f" => Some("rack-1"),
            "b" | "e" => Some("rack-2"),
            _ => None,
        };
        let given = ["b", "c", "d", "e", "f", "g"]
            .map(|s| dest(s, "/f"))
            .to_vec();
        let order = |source: &str| -> Vec<String> {
            grouped_by_zone(&dest(source, "/f"), given.clone(), zone)
                .into_iter()
                .map(|d| d.star)
                .collect()
        };
        // The source's rack first, then rack-2 (listed first among the rest), then no zone.
        assert_eq!(order("a"), ["c", "f", "b", "e", "d", "g"]);
        // A source without a zone: the stars without one first.
        assert_eq!(order("x"), ["d", "g", "b", "e", "c", "f"]);
        // No zones: the order given.
        let none = grouped_by_zone(&dest("a", "/f"), given.clone(), |_| None);
        assert_eq!(none, given);
    }

    #[test]
    fn a_destination_list_skips_comments_and_names_a_bad_line() {
        let file = std::path::Path::new("hosts.txt");
        let text = "# the backups\n\nstar-b:/data/f\n   star-c:/data/f  \n  # star-d:/data/f\nstar-e:/a#b\n";
        let list = parse_destination_list(file, text, false).unwrap();
        let shown: Vec<String> = list.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["star-b:/data/f", "star-c:/data/f", "star-e:/a#b"]);

        let err =
            parse_destination_list(file, "star-b:/f\n\nstar-c:relative\n", false).unwrap_err();
        assert!(matches!(err, PlanError::ListLine { line: 3, .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with("hosts.txt, line 3: bad path \"relative\""),
            "{err}"
        );
        let err = parse_destination_list(file, "star-b\n", false).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("hosts.txt, line 1: expected STAR:/abs/path"),
            "{err}"
        );
        // A directory may end with a slash; a file may not.
        assert!(parse_destination_list(file, "b:/d/\n", false).is_err());
        assert_eq!(
            parse_destination_list(file, "b:/d/\n", true).unwrap(),
            [dest("b", "/d")]
        );
        assert!(parse_destination_list(file, "# nothing\n\n", false)
            .unwrap()
            .is_empty());
    }
}
