//! `orbitctl replicate --recursive`: tells the destination star to replicate a directory tree
//! from the source star, shows its progress, and reports what was copied, skipped, deleted and
//! failed.
//!
//! One tree token covers the whole tree (its directory and its filter), and one
//! `ReplicateTree` goes to the destination, which lists, fetches and publishes by itself (the
//! protocol between the stars is in `orbit_wire::tree`). The controller's traffic is a few
//! kilobytes per tree whatever the number of files; it never sees a file's bytes. A tree that
//! ends with some files failed is not a failure of the command as a whole: its summary is
//! printed, then [`ReplicateError::Incomplete`] gives the exit code.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use orbit_wire::tree::{Filter, ReplicateTree, SyncLevel, TreeSummary};
use orbit_wire::{ControlEvent, ControlRequest, TransferId, TransferStatus};

use super::{
    event_line, interrupt_signal, new_transfer_id, report, start, Args, Cancelling, ReplicateError,
};
use crate::connect::{self, StarConnection, StreamError, WireBytes};
use crate::grid::Grid;
use crate::progress::{Mode, Progress};
use crate::spec::SpecError;
use crate::token;

/// Which files already at the target are left as they are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncArg {
    /// Skip any file that exists at the target, whatever it holds.
    Exists,
    /// Skip a file of the same size.
    Size,
    /// Skip a file of the same size and modification time (rsync's rule).
    #[default]
    Mtime,
    /// Skip a file with the same SHA-256 (both stars read every file to know).
    Checksum,
}

impl From<SyncArg> for SyncLevel {
    fn from(arg: SyncArg) -> SyncLevel {
        match arg {
            SyncArg::Exists => SyncLevel::Exists,
            SyncArg::Size => SyncLevel::Size,
            SyncArg::Mtime => SyncLevel::Mtime,
            SyncArg::Checksum => SyncLevel::Checksum,
        }
    }
}

/// What happens to symbolic links in the tree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LinksArg {
    /// Leave them out.
    #[default]
    Skip,
    /// Recreate, as links, those whose text stays inside the tree; the others are reported and
    /// skipped.
    Copy,
}

/// One tree replication, fully specified: the destination to dial and the command it receives.
#[derive(Debug, Clone)]
pub struct TreeJob {
    /// The destination star's name, which its certificate must carry.
    pub destination: String,
    /// Where to dial the destination.
    pub destination_addr: SocketAddr,
    /// The command, exactly as it goes on the wire.
    pub command: ReplicateTree,
}

/// A tree replication that ran to its end, as the destination reported it. Some files may have
/// failed: see [`report::outcome`].
#[derive(Debug, Clone, PartialEq)]
pub struct TreeDone {
    /// What was copied, skipped, deleted and failed.
    pub summary: TreeSummary,
    /// The controller's own traffic for the whole exchange.
    pub wire: WireBytes,
}

/// How the events and the result are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Output {
    /// JSON lines on stdout.
    pub json: bool,
    /// Nothing but errors.
    pub quiet: bool,
}

/// Runs `orbitctl replicate --recursive` on the grid at `grid_dir`: prints the summary (or
/// JSON), then one stderr line per failed file.
///
/// # Errors
///
/// [`ReplicateError`]; [`ReplicateError::Incomplete`] when the tree ran to its end with files
/// failed. With `--json` the result or failure object has been printed already.
pub async fn run(grid_dir: &Path, args: &Args) -> Result<(), ReplicateError> {
    let output = Output {
        json: args.json,
        quiet: args.quiet,
    };
    match execute(grid_dir, args).await {
        Ok((job, Some(done))) => {
            report::print(&job, &done, output);
            report::outcome(&job.destination, &done.summary)
        }
        Ok((job, None)) => {
            if args.json {
                println!("{}", report::detached_json(&job));
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

/// The filter the token carries, from the command line.
///
/// # Errors
///
/// [`SpecError::Glob`] for a pattern the filter cannot apply.
pub fn filter_of(args: &Args) -> Result<Filter, SpecError> {
    let filter = Filter {
        exclude: args.exclude.clone(),
        include: args.include.clone(),
        links: args.links == LinksArg::Copy,
    };
    filter.check().map_err(SpecError::Glob)?;
    Ok(filter)
}

/// Runs the tree replication `args` describe; `None` when detached.
async fn execute(
    grid_dir: &Path,
    args: &Args,
) -> Result<(TreeJob, Option<TreeDone>), ReplicateError> {
    // From here on Ctrl-C cancels the transfer rather than killing orbitctl.
    let mut interrupt = interrupt_signal();
    let (source, target) = args.endpoints()?;
    let filter = filter_of(args)?;
    let grid = Grid::open(grid_dir)?;
    let source_addr = grid.star(&source.star)?;
    let target_addr = grid.star(&target.star)?;
    let master = grid.master_key()?;
    let tls = grid.client_tls()?;
    let ttl = args.ttl.unwrap_or(grid.ttl_secs());
    let token = token::mint_tree(
        &master,
        &source.star,
        &target.star,
        &source.path,
        &filter,
        ttl,
    );
    let destination_addr = connect::resolve(&target.star, target_addr).await?;
    let job = TreeJob {
        destination: target.star,
        destination_addr,
        command: ReplicateTree {
            transfer_id: new_transfer_id(),
            source: source.star,
            source_addr: source_addr.to_string(),
            source_path: source.path,
            target_path: target.path,
            token,
            sync: args.sync.into(),
            delete: args.delete,
            max_delete: args.max_delete,
            dry_run: args.dry_run,
            itemize: args.itemize,
            timeout_secs: args.timeout,
        },
    };
    let transfer = job.command.transfer_id;
    if args.detach {
        let request = ControlRequest::StartTree(job.command.clone());
        start(
            tls,
            &job.destination,
            job.destination_addr,
            &request,
            transfer,
        )
        .await?;
        return Ok((job, None));
    }
    let output = Output {
        json: args.json,
        quiet: args.quiet,
    };
    let mut progress = Progress::new(Mode::choose(args.json, args.quiet), transfer);
    let finished = {
        let work = replicate_tree_observed(tls.clone(), &job, |event| {
            if !show(&mut progress, transfer, event, output) {
                if let Some(line) = event_line(&job.destination, event).filter(|_| !args.quiet) {
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
            let interrupted = || ReplicateError::TreeInterrupted {
                star: job.destination.clone(),
                target: job.command.target_path.clone(),
            };
            let cancelling = Cancelling {
                tls,
                destination: &job.destination,
                addr: job.destination_addr,
                transfer,
            };
            cancelling
                .run(&mut interrupt, interrupted, |result, wire| {
                    conclude(&job.destination, result, wire)
                })
                .await?
        }
    };
    Ok((job, Some(done)))
}

/// Shows a tree's progress or item event; returns false for any other event, left to the
/// caller.
pub fn show(
    progress: &mut Progress,
    transfer: TransferId,
    event: &ControlEvent,
    output: Output,
) -> bool {
    match event {
        ControlEvent::TreeProgress(p) => progress.update_tree(p),
        ControlEvent::Item(item) if output.json => {
            progress.println(&report::item_json(transfer, item));
        }
        ControlEvent::Item(item) if !output.quiet => progress.println(&report::item_line(item)),
        ControlEvent::Item(_) => {}
        _ => return false,
    }
    true
}

/// Sends `job` to its destination star and waits for the tree's end, with `on_event` called
/// on every event that is not final (progress, items, retries). The connection is closed
/// cleanly either way.
///
/// # Errors
///
/// [`ReplicateError`] naming the destination star when the tree failed as a whole. Files that
/// failed are in the summary, not here.
pub async fn replicate_tree_observed(
    tls: Arc<rustls::ClientConfig>,
    job: &TreeJob,
    on_event: impl FnMut(&ControlEvent),
) -> Result<TreeDone, ReplicateError> {
    let conn = StarConnection::connect(tls, &job.destination, job.destination_addr).await?;
    tracing::info!(
        transfer = %job.command.transfer_id,
        destination = %job.destination,
        source = %job.command.source,
        source_path = %job.command.source_path,
        target_path = %job.command.target_path,
        "tree replication started"
    );
    let request = ControlRequest::ReplicateTree(job.command.clone());
    let result = conn.control_events(&request, on_event).await;
    let wire = conn.wire_bytes();
    conn.close().await;
    conclude(&job.destination, result, wire)
}

/// The tree's result from the final event `result` of `destination`, or why it failed as a
/// whole.
///
/// # Errors
///
/// [`ReplicateError`] naming the destination star.
pub fn conclude(
    destination: &str,
    result: Result<ControlEvent, StreamError>,
    wire: WireBytes,
) -> Result<TreeDone, ReplicateError> {
    let star = destination.to_owned();
    match result {
        Ok(ControlEvent::TreeDone(summary)) => {
            tracing::info!(
                copied = summary.copied,
                skipped = summary.skipped,
                deleted = summary.deleted,
                failed = summary.failed,
                bytes = summary.bytes,
                seconds = summary.seconds,
                "tree replication ended"
            );
            Ok(TreeDone { summary, wire })
        }
        Ok(ControlEvent::Failed(error)) => Err(ReplicateError::Failed { star, error }),
        Ok(other) => Err(ReplicateError::Unexpected {
            star,
            what: format!("{other:?}"),
        }),
        Err(error) => Err(ReplicateError::Stream { star, error }),
    }
}

/// The job a tree transfer's status describes, so that `orbitctl wait` reads as `replicate`.
pub fn job_of(
    id: TransferId,
    star: &str,
    addr: SocketAddr,
    status: Option<TransferStatus>,
) -> TreeJob {
    let (source, source_path, target_path) = match status {
        Some(s) => (s.source, s.source_path, s.target_path),
        None => ("?".into(), "?".into(), "?".into()),
    };
    TreeJob {
        destination: star.to_owned(),
        destination_addr: addr,
        command: ReplicateTree {
            transfer_id: id,
            source,
            source_addr: String::new(),
            source_path,
            target_path,
            token: String::new(),
            sync: SyncLevel::default(),
            delete: false,
            max_delete: None,
            dry_run: false,
            itemize: false,
            timeout_secs: 0,
        },
    }
}

#[cfg(test)]
mod tests {
    use orbit_wire::tree::{FailedFile, Item, ItemAction, TreeProgress};
    use orbit_wire::{ErrorCode, WireError};

    use super::*;
    use crate::fake_star::FakeStar;

    fn job(addr: SocketAddr) -> TreeJob {
        TreeJob {
            destination: "star-b".into(),
            destination_addr: addr,
            command: ReplicateTree {
                transfer_id: TransferId(0xabc),
                source: "star-a".into(),
                source_addr: "127.0.0.1:7401".into(),
                source_path: "/srv/data".into(),
                target_path: "/srv/backup".into(),
                token: "T".into(),
                sync: SyncLevel::Mtime,
                delete: true,
                max_delete: Some(10),
                dry_run: false,
                itemize: true,
                timeout_secs: 0,
            },
        }
    }

    /// `orbitctl replicate ARGS...`, parsed as clap does.
    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: Args,
        }
        use clap::Parser as _;
        Cli::try_parse_from(std::iter::once("replicate").chain(args.iter().copied()))
            .map(|cli| cli.args)
    }

    #[test]
    fn a_tree_takes_its_directories_with_or_without_a_trailing_slash() {
        for (src, dst) in [
            ("star-a:/srv/data", "star-b:/srv/backup"),
            ("star-a:/srv/data/", "star-b:/srv/backup/"),
            ("star-a:/srv/data/", "star-b:/srv/backup"),
        ] {
            for flag in ["--recursive", "-r"] {
                let args = parse(&[src, dst, flag]).unwrap();
                let (source, target) = args.endpoints().unwrap();
                assert_eq!(source.to_string(), "star-a:/srv/data");
                assert_eq!(target.to_string(), "star-b:/srv/backup");
            }
        }
        // Without --recursive a path is a file, as it always was: no trailing slash.
        let args = parse(&["star-a:/srv/f.bin", "star-b:/srv/f.bin"]).unwrap();
        assert_eq!(args.endpoints().unwrap().0.path, "/srv/f.bin");
        let args = parse(&["star-a:/srv/data/", "star-b:/srv/backup"]).unwrap();
        let err = ReplicateError::from(args.endpoints().unwrap_err());
        assert!(
            err.to_string()
                .ends_with("for a directory, add --recursive"),
            "{err}"
        );
        assert_eq!(err.exit_code(), crate::exit::USAGE);
        // Two slashes are one too many, and a relative path is never right.
        for bad in ["star-a:/srv/data//", "star-a:srv/data/"] {
            let err = parse(&[bad, "star-b:/b", "-r"]).unwrap_err();
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
        }
    }

    #[test]
    fn tree_options_need_recursive_and_the_digest_does_not_go_with_it() {
        use clap::error::ErrorKind;
        let (src, dst) = ("star-a:/a", "star-b:/b");
        for option in [
            &["--sync", "size"][..],
            &["--delete"],
            &["--exclude", "*.tmp"],
            &["--include", "*.rs"],
            &["--links", "copy"],
            &["--dry-run"],
            &["--itemize"],
        ] {
            let args: Vec<&str> = [src, dst].iter().chain(option).copied().collect();
            let err = parse(&args).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument, "{option:?}");
            let with_r: Vec<&str> = args.iter().copied().chain(["-r"]).collect();
            parse(&with_r).unwrap();
        }
        let err = parse(&[src, dst, "-r", "--max-delete", "5"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
        let digest = "ab".repeat(32);
        let err = parse(&[src, dst, "-r", "--expect-sha256", &digest]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ArgumentConflict);
        let err = parse(&[src, dst, "-r", "--itemize", "--quiet"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ArgumentConflict);
        let err = parse(&[src, dst, "-r", "--sync", "never"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidValue);

        let args = parse(&[
            src,
            dst,
            "-r",
            "--sync",
            "checksum",
            "--delete",
            "--max-delete",
            "5",
            "--exclude",
            "*.tmp",
            "--exclude",
            "cache/",
            "--include",
            "keep.tmp",
            "--links",
            "copy",
        ])
        .unwrap();
        assert_eq!(SyncLevel::from(args.sync), SyncLevel::Checksum);
        assert_eq!((args.delete, args.max_delete), (true, Some(5)));
        assert_eq!(
            filter_of(&args).unwrap(),
            Filter {
                exclude: vec!["*.tmp".into(), "cache/".into()],
                include: vec!["keep.tmp".into()],
                links: true,
            }
        );
        // The defaults: rsync's mtime rule, links skipped, nothing deleted.
        let args = parse(&[src, dst, "-r"]).unwrap();
        assert_eq!(SyncLevel::from(args.sync), SyncLevel::Mtime);
        assert!(!filter_of(&args).unwrap().links && !args.delete);
    }

    #[test]
    fn a_bad_pattern_is_a_usage_error_that_names_it() {
        for bad in ["", "/"] {
            let err = parse(&["star-a:/a", "star-b:/b", "-r", "--exclude", bad]).unwrap_err();
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
            let text = err.to_string();
            assert!(text.contains("bad pattern"), "{text}");
            assert_eq!(
                text.lines().next().map(|l| l.contains("--exclude")),
                Some(true)
            );
        }
    }

    #[test]
    fn exit_codes_tell_partial_from_failed() {
        use crate::exit;
        let star = || "star-b".to_owned();
        let failed = ReplicateError::Failed {
            star: star(),
            error: WireError::new(ErrorCode::NotFound, "no such directory"),
        };
        assert_eq!(failed.exit_code(), exit::FAILED);
        let unreachable = ReplicateError::Failed {
            star: star(),
            error: WireError::new(ErrorCode::Unavailable, "star-a is shutting down"),
        };
        assert_eq!(unreachable.exit_code(), exit::TEMPORARY);
        let interrupted = ReplicateError::TreeInterrupted {
            star: star(),
            target: "/srv/backup".into(),
        };
        assert_eq!(interrupted.exit_code(), exit::INTERRUPTED);
        assert_eq!(interrupted.code(), ErrorCode::Cancelled);
        let file_interrupted = ReplicateError::Interrupted {
            star: star(),
            target: "/f".into(),
        };
        assert_eq!(file_interrupted.exit_code(), exit::INTERRUPTED);
        let incomplete = ReplicateError::Incomplete {
            star: star(),
            failed: 0,
            delete_skipped: Some(WireError::new(ErrorCode::FailedPrecondition, "over 5")),
        };
        assert_eq!(incomplete.exit_code(), exit::INCOMPLETE);
        assert_eq!(incomplete.code(), ErrorCode::FailedPrecondition);
    }

    #[tokio::test]
    async fn a_tree_sends_one_command_and_follows_it_to_the_summary() {
        let summary = TreeSummary {
            copied: 2,
            failed: 1,
            failures: vec![FailedFile {
                name: b"x".to_vec(),
                error: WireError::new(ErrorCode::PermissionDenied, "no"),
            }],
            ..TreeSummary::default()
        };
        let answer = summary.clone();
        let mut star = FakeStar::spawn("star-b", move |_| {
            vec![
                ControlEvent::TreeProgress(TreeProgress {
                    files_done: 1,
                    files_total: 3,
                    bytes_done: 5,
                    bytes_total: 10,
                    listed: false,
                }),
                ControlEvent::Item(Item {
                    action: ItemAction::Copied,
                    name: b"a".to_vec(),
                    kind: 'f',
                    size: 5,
                    error: None,
                }),
                ControlEvent::TreeDone(answer.clone()),
            ]
        })
        .await;
        let job = job(star.addr);
        let mut seen = Vec::new();
        let done = replicate_tree_observed(star.controller_tls(), &job, |e| seen.push(e.clone()))
            .await
            .unwrap();
        assert_eq!(done.summary, summary);
        assert_eq!(seen.len(), 2);
        assert!(done.wire.sent + done.wire.received < 64 * 1024);
        let Some(ControlRequest::ReplicateTree(sent)) = star.requests.recv().await else {
            panic!("no tree request");
        };
        assert_eq!(sent, job.command);

        // The tree ran to its end, but a file failed: exit code 3, not 1.
        let err = report::outcome("star-b", &done.summary).unwrap_err();
        assert_eq!(err.exit_code(), crate::exit::INCOMPLETE);
        assert_eq!(
            err.to_string(),
            "star-b: tree replicated, but 1 file failed"
        );
    }

    #[tokio::test]
    async fn a_tree_that_fails_as_a_whole_names_the_star() {
        let star = FakeStar::spawn("star-b", |_| {
            vec![ControlEvent::Failed(WireError::new(
                ErrorCode::PermissionDenied,
                "star-a refused the listing: token expired",
            ))]
        })
        .await;
        let err = replicate_tree_observed(star.controller_tls(), &job(star.addr), |_| {})
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::PermissionDenied);
        assert_eq!(err.exit_code(), crate::exit::FAILED);
        assert_eq!(
            err.to_string(),
            "star-b: replication failed: star-a refused the listing: token expired"
        );
    }

    #[tokio::test]
    async fn a_detached_tree_is_started() {
        let mut star = FakeStar::spawn("star-b", |_| {
            vec![ControlEvent::Started {
                transfer_id: TransferId(0xabc),
            }]
        })
        .await;
        let job = job(star.addr);
        let request = ControlRequest::StartTree(job.command.clone());
        start(
            star.controller_tls(),
            "star-b",
            star.addr,
            &request,
            TransferId(0xabc),
        )
        .await
        .unwrap();
        assert_eq!(star.requests.recv().await, Some(request));
    }
}
