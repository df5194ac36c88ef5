//! How a tree replication reads, for people and for scripts: the summary line, one stderr line
//! per failed file, `--itemize` lines, and the JSON of items, results and detached starts.
//!
//! Names inside a tree are bytes and may be anything a file system allows, newlines and
//! invalid UTF-8 included. Text output shows them through [`display_name`], so that one entry
//! is always one line; JSON gives the name as it is when it is UTF-8, and adds `name_hex`, the
//! exact bytes, when it is not. Nothing here reads or writes anything but stdout and stderr.

use orbit_wire::tree::{display_name, Item, ItemAction, TreeSummary};
use orbit_wire::{TransferId, WireError};
use serde::Serialize;

use super::tree::{Output, TreeDone, TreeJob};
use super::ReplicateError;
use crate::human;

/// Prints the result of `job`: the summary line on stdout (or the JSON object with `--json`,
/// nothing with `--quiet`), then on stderr one line per named failure, how many more failed,
/// and why `--delete` did not run.
pub fn print(job: &TreeJob, done: &TreeDone, output: Output) {
    if output.json {
        println!("{}", result_json(job, done));
    } else if !output.quiet {
        println!("{}", summary_line(job, &done.summary));
    }
    for line in failure_lines(&job.destination, &done.summary) {
        eprintln!("{line}");
    }
}

/// Whether the tree is fully replicated: no file failed and `--delete`, if asked for, ran.
///
/// # Errors
///
/// [`ReplicateError::Incomplete`] otherwise.
pub fn outcome(destination: &str, summary: &TreeSummary) -> Result<(), ReplicateError> {
    if summary.failed == 0 && summary.delete_skipped.is_none() {
        return Ok(());
    }
    Err(ReplicateError::Incomplete {
        star: destination.to_owned(),
        failed: summary.failed,
        delete_skipped: summary.delete_skipped.clone(),
    })
}

/// The one-line summary of a tree replication:
/// `star-b: star-a:/srv/data/ -> /srv/backup/: 2000 copied, 0 skipped, 0 deleted, 0 failed, 31.2 MiB in 0.21 s (148.6 MiB/s), transfer <id>`.
/// A dry run says that nothing was changed and what would have been. Entries the source does
/// not send (FIFOs, sockets, devices, links leaving the tree) are counted when there are any.
pub fn summary_line(job: &TreeJob, summary: &TreeSummary) -> String {
    let c = &job.command;
    let s = summary;
    let unsupported = match s.unsupported {
        0 => String::new(),
        n => format!(", {n} not supported"),
    };
    let resumed = match s.resumed {
        0 => String::new(),
        n => format!(", {} resumed", human::bytes(n)),
    };
    let counts = if s.dry_run {
        format!(
            "dry run, nothing was changed: would copy {} ({}), skip {}, delete {}; {} failed{unsupported}",
            s.copied,
            human::bytes(s.bytes),
            s.skipped,
            s.deleted,
            s.failed,
        )
    } else {
        format!(
            "{} copied, {} skipped, {} deleted, {} failed{unsupported}, {} in {:.2} s ({}){resumed}",
            s.copied,
            s.skipped,
            s.deleted,
            s.failed,
            human::bytes(s.bytes),
            s.seconds,
            human::rate(s.bytes, s.seconds),
        )
    };
    format!(
        "{}: {}:{}/ -> {}/: {counts}, transfer {}",
        job.destination, c.source, c.source_path, c.target_path, c.transfer_id
    )
}

/// The stderr lines after a summary: `star-b: NAME: CODE: why` for each named failure, a line
/// for the failures not named, and one for a `--delete` that did not run.
pub fn failure_lines(destination: &str, summary: &TreeSummary) -> Vec<String> {
    let mut lines: Vec<String> = summary
        .failures
        .iter()
        .map(|f| {
            format!(
                "{destination}: {}: {}",
                display_name(&f.name),
                error_text(&f.error)
            )
        })
        .collect();
    let unnamed = summary.failed.saturating_sub(summary.failures.len() as u64);
    if unnamed > 0 {
        lines.push(format!(
            "{destination}: and {unnamed} more failed (only the first {} are named)",
            summary.failures.len()
        ));
    }
    if let Some(error) = &summary.delete_skipped {
        lines.push(format!(
            "{destination}: --delete did not run: {}",
            error_text(error)
        ));
    }
    lines
}

/// `CODE: why`, on one line whatever the star wrote.
fn error_text(error: &WireError) -> String {
    let message = if error.message.is_empty() {
        error.code.describe()
    } else {
        &error.message
    };
    format!("{}: {}", error.code.name(), one_line(message))
}

/// `text` with its control characters escaped, so that it stays on one line, and the
/// bidirectional controls too, so that it shows as sent ([`crate::human::printable`]).
pub(super) fn one_line(text: &str) -> String {
    crate::human::printable(text).into_owned()
}

/// The word `--itemize` prints for `action`.
fn action_word(action: ItemAction) -> &'static str {
    match action {
        ItemAction::Copied => "copy",
        ItemAction::Skipped => "skip",
        ItemAction::Deleted => "delete",
        ItemAction::Failed => "fail",
        ItemAction::Unsupported => "unsupported",
    }
}

/// The name `--json` gives `action`.
fn action_json(action: ItemAction) -> &'static str {
    match action {
        ItemAction::Copied => "copied",
        ItemAction::Skipped => "skipped",
        ItemAction::Deleted => "deleted",
        ItemAction::Failed => "failed",
        ItemAction::Unsupported => "unsupported",
    }
}

/// One `--itemize` line: `ACTION KIND NAME`, e.g. `copy f a/b.txt`, and for an entry with an
/// error the code before the name, `fail f PermissionDenied a/b.txt`. The name comes last and
/// the fields before it never hold a space, so `cut -d' ' -f3-` (or `-f4-`) gives it back.
pub fn item_line(item: &Item) -> String {
    let name = display_name(&item.name);
    let kind = kind_text(item.kind);
    match &item.error {
        Some(error) => format!(
            "{} {kind} {} {name}",
            action_word(item.action),
            error.code.name()
        ),
        None => format!("{} {kind} {name}", action_word(item.action)),
    }
}

/// The kind letter, or `?` for anything a star should not have sent.
fn kind_text(kind: char) -> char {
    if matches!(kind, 'f' | 'd' | 'l') {
        kind
    } else {
        '?'
    }
}

/// A name in JSON: as it is when it is UTF-8; otherwise escaped as for people, with the exact
/// bytes in hexadecimal beside it.
#[derive(Serialize)]
struct NameJson {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    name_hex: Option<String>,
}

impl NameJson {
    fn new(name: &[u8]) -> NameJson {
        match std::str::from_utf8(name) {
            Ok(text) => NameJson {
                name: text.to_owned(),
                name_hex: None,
            },
            Err(_) => NameJson {
                name: display_name(name),
                name_hex: Some(hex::encode(name)),
            },
        }
    }
}

#[derive(Serialize)]
struct ItemJson<'a> {
    event: &'static str,
    transfer_id: String,
    action: &'static str,
    kind: String,
    #[serde(flatten)]
    name: NameJson,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retryable: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
}

/// One `--itemize --json` event, on one line:
/// `{"event":"item","transfer_id":..,"action":"copied","kind":"f","name":"a/b.txt","size":5}`,
/// with `code` and `message` for an entry that failed or is not supported.
pub fn item_json(transfer: TransferId, item: &Item) -> String {
    let json = ItemJson {
        event: "item",
        transfer_id: transfer.to_string(),
        action: action_json(item.action),
        kind: kind_text(item.kind).to_string(),
        name: NameJson::new(&item.name),
        size: item.size,
        code: item.error.as_ref().map(|e| e.code.name()),
        retryable: item.error.as_ref().map(|e| crate::exit::retryable(e.code)),
        message: item.error.as_ref().map(|e| e.message.as_str()),
    };
    crate::json::line(crate::json::ITEM, &json)
}

#[derive(Serialize)]
struct ErrorJson<'a> {
    code: &'static str,
    retryable: bool,
    message: &'a str,
}

impl<'a> From<&'a WireError> for ErrorJson<'a> {
    fn from(error: &'a WireError) -> ErrorJson<'a> {
        ErrorJson {
            code: error.code.name(),
            retryable: crate::exit::retryable(error.code),
            message: &error.message,
        }
    }
}

#[derive(Serialize)]
struct FailureJson<'a> {
    #[serde(flatten)]
    name: NameJson,
    #[serde(flatten)]
    error: ErrorJson<'a>,
}

#[derive(Serialize)]
struct ResultJson<'a> {
    ok: bool,
    transfer_id: String,
    source: &'a str,
    destination: &'a str,
    source_path: &'a str,
    target_path: &'a str,
    copied: u64,
    skipped: u64,
    deleted: u64,
    failed: u64,
    dirs: u64,
    links: u64,
    unsupported: u64,
    bytes: u64,
    resumed: u64,
    seconds: f64,
    dry_run: bool,
    failures: Vec<FailureJson<'a>>,
    delete_skipped: Option<ErrorJson<'a>>,
    controller_bytes_sent: u64,
    controller_bytes_received: u64,
}

/// The `--json` result of a tree that ran to its end, on one line. `ok` is true only when no
/// file failed and `--delete`, if asked for, ran; `failures` names the first failures (up to
/// `orbit_wire::tree::MAX_FAILED_NAMED`), `failed` counts them all.
pub fn result_json(job: &TreeJob, done: &TreeDone) -> String {
    result_json_as(crate::json::RESULT, job, done)
}

/// As [`result_json`], with another `type`: a tree fan-out gives each destination's tree as a
/// `destination` object.
pub fn result_json_as(kind: &'static str, job: &TreeJob, done: &TreeDone) -> String {
    let s = &done.summary;
    let c = &job.command;
    let json = ResultJson {
        ok: outcome(&job.destination, s).is_ok(),
        transfer_id: c.transfer_id.to_string(),
        source: &c.source,
        destination: &job.destination,
        source_path: &c.source_path,
        target_path: &c.target_path,
        copied: s.copied,
        skipped: s.skipped,
        deleted: s.deleted,
        failed: s.failed,
        dirs: s.dirs,
        links: s.links,
        unsupported: s.unsupported,
        bytes: s.bytes,
        resumed: s.resumed,
        seconds: s.seconds,
        dry_run: s.dry_run,
        failures: s
            .failures
            .iter()
            .map(|f| FailureJson {
                name: NameJson::new(&f.name),
                error: (&f.error).into(),
            })
            .collect(),
        delete_skipped: s.delete_skipped.as_ref().map(ErrorJson::from),
        controller_bytes_sent: done.wire.sent,
        controller_bytes_received: done.wire.received,
    };
    crate::json::line(kind, &json)
}

#[derive(Serialize)]
struct DetachedJson<'a> {
    ok: bool,
    detached: bool,
    recursive: bool,
    transfer_id: String,
    source: &'a str,
    destination: &'a str,
    source_path: &'a str,
    target_path: &'a str,
}

/// The `--json` object of a detached tree, on one line.
pub fn detached_json(job: &TreeJob) -> String {
    let json = DetachedJson {
        ok: true,
        detached: true,
        recursive: true,
        transfer_id: job.command.transfer_id.to_string(),
        source: &job.command.source,
        destination: &job.destination,
        source_path: &job.command.source_path,
        target_path: &job.command.target_path,
    };
    crate::json::line(crate::json::RESULT, &json)
}

#[cfg(test)]
mod tests {
    use orbit_wire::tree::{FailedFile, ReplicateTree, SyncLevel};
    use orbit_wire::ErrorCode;

    use super::*;
    use crate::connect::WireBytes;

    #[test]
    fn a_stars_message_is_shown_inert_on_one_line() {
        let error = WireError::new(
            ErrorCode::PermissionDenied,
            "no\n\u{1b}[2Jforged \u{202e}txt.exe",
        );
        assert_eq!(
            error_text(&error),
            "PermissionDenied: no\\n\\u{1b}[2Jforged \\u{202e}txt.exe"
        );
    }

    fn job() -> TreeJob {
        TreeJob {
            destination: "star-b".into(),
            destination_addr: "127.0.0.1:7402".parse().unwrap(),
            command: ReplicateTree {
                transfer_id: TransferId(0xabc),
                source: "star-a".into(),
                source_addr: "127.0.0.1:7401".into(),
                source_path: "/srv/data".into(),
                target_path: "/srv/backup".into(),
                token: "T".into(),
                sync: SyncLevel::Mtime,
                delete: true,
                max_delete: None,
                dry_run: false,
                itemize: false,
                timeout_secs: 0,
            },
        }
    }

    /// 2000 copied, 3 failed of which 2 named (one not UTF-8, one with a newline), delete
    /// skipped because of them.
    fn partial() -> TreeSummary {
        TreeSummary {
            copied: 2000,
            skipped: 5,
            deleted: 0,
            failed: 3,
            dirs: 12,
            links: 1,
            unsupported: 0,
            bytes: 32 << 20,
            resumed: 0,
            seconds: 0.25,
            failures: vec![
                FailedFile {
                    name: b"a/caf\xe9.txt".to_vec(),
                    error: WireError::new(ErrorCode::PermissionDenied, "permission denied"),
                },
                FailedFile {
                    name: b"two\nlines".to_vec(),
                    error: WireError::new(ErrorCode::DataLoss, ""),
                },
            ],
            delete_skipped: Some(WireError::new(
                ErrorCode::FailedPrecondition,
                "3 files failed",
            )),
            dry_run: false,
        }
    }

    #[test]
    fn the_summary_names_the_stars_counts_and_rate() {
        let summary = TreeSummary {
            copied: 2000,
            bytes: 32 << 20,
            seconds: 0.25,
            ..TreeSummary::default()
        };
        assert_eq!(
            summary_line(&job(), &summary),
            "star-b: star-a:/srv/data/ -> /srv/backup/: 2000 copied, 0 skipped, 0 deleted, \
             0 failed, 32.0 MiB in 0.25 s (128.0 MiB/s), transfer 0000000000000abc"
        );
        assert!(failure_lines("star-b", &summary).is_empty());
        assert!(outcome("star-b", &summary).is_ok());

        let dry = TreeSummary {
            copied: 7,
            skipped: 2,
            deleted: 1,
            unsupported: 1,
            bytes: 1536,
            dry_run: true,
            ..TreeSummary::default()
        };
        assert_eq!(
            summary_line(&job(), &dry),
            "star-b: star-a:/srv/data/ -> /srv/backup/: dry run, nothing was changed: would \
             copy 7 (1.5 KiB), skip 2, delete 1; 0 failed, 1 not supported, transfer \
             0000000000000abc"
        );
    }

    #[test]
    fn failures_are_one_line_each_whatever_the_name() {
        let summary = partial();
        assert_eq!(
            failure_lines("star-b", &summary),
            [
                "star-b: a/caf\\xe9.txt: PermissionDenied: permission denied",
                "star-b: two\\nlines: DataLoss: data loss",
                "star-b: and 1 more failed (only the first 2 are named)",
                "star-b: --delete did not run: FailedPrecondition: 3 files failed",
            ]
        );
        let err = outcome("star-b", &summary).unwrap_err();
        assert_eq!(err.exit_code(), crate::exit::INCOMPLETE);
        assert_eq!(
            err.to_string(),
            "star-b: tree replicated, but 3 files failed and --delete did not run"
        );

        // A message from a star cannot break the line either.
        let odd = TreeSummary {
            delete_skipped: Some(WireError::new(ErrorCode::Internal, "a\nb")),
            ..TreeSummary::default()
        };
        assert_eq!(
            failure_lines("star-b", &odd),
            ["star-b: --delete did not run: Internal: a\\nb"]
        );
        assert_eq!(
            outcome("star-b", &odd).unwrap_err().to_string(),
            "star-b: tree replicated, but --delete did not run"
        );
    }

    #[test]
    fn items_read_as_action_kind_name() {
        let item = |action, kind, name: &[u8], error: Option<WireError>| Item {
            action,
            name: name.to_vec(),
            kind,
            size: 5,
            error,
        };
        let denied = Some(WireError::new(ErrorCode::PermissionDenied, "no"));
        let fifo = Some(WireError::new(ErrorCode::InvalidArgument, "a FIFO"));
        let cases = [
            (
                item(ItemAction::Copied, 'f', b"a/b.txt", None),
                "copy f a/b.txt",
            ),
            (item(ItemAction::Skipped, 'd', b"a", None), "skip d a"),
            (
                item(ItemAction::Deleted, 'l', b"old link", None),
                "delete l old link",
            ),
            (
                item(ItemAction::Failed, 'f', b"x\xff", denied.clone()),
                "fail f PermissionDenied x\\xff",
            ),
            (
                item(ItemAction::Unsupported, '?', b"a/fifo", fifo),
                "unsupported ? InvalidArgument a/fifo",
            ),
            (item(ItemAction::Copied, 'z', b"n\nl", None), "copy ? n\\nl"),
        ];
        for (item, line) in cases {
            assert_eq!(item_line(&item), line);
        }

        let json: serde_json::Value = serde_json::from_str(&item_json(
            TransferId(0xabc),
            &item(ItemAction::Failed, 'f', b"x\xff", denied),
        ))
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "type": "item",
                "event": "item", "transfer_id": "0000000000000abc", "action": "failed",
                "kind": "f", "name": "x\\xff", "name_hex": "78ff", "size": 5,
                "code": "PermissionDenied", "retryable": false, "message": "no",
            })
        );
        let json: serde_json::Value = serde_json::from_str(&item_json(
            TransferId(1),
            &item(ItemAction::Copied, 'f', b"n\nl", None),
        ))
        .unwrap();
        assert_eq!(json["name"], "n\nl");
        assert_eq!(json["action"], "copied");
        assert!(json.get("name_hex").is_none() && json.get("code").is_none());
    }

    #[test]
    fn the_json_result_counts_and_names_failures() {
        let done = TreeDone {
            summary: partial(),
            wire: WireBytes {
                sent: 3000,
                received: 2000,
            },
        };
        let json: serde_json::Value = serde_json::from_str(&result_json(&job(), &done)).unwrap();
        assert_eq!(json["ok"], false);
        assert_eq!(json["transfer_id"], "0000000000000abc");
        assert_eq!(json["copied"], 2000);
        assert_eq!(json["skipped"], 5);
        assert_eq!(json["failed"], 3);
        assert_eq!(json["dirs"], 12);
        assert_eq!(json["links"], 1);
        assert_eq!(json["bytes"], 32u64 << 20);
        assert_eq!(json["seconds"], 0.25);
        assert_eq!(json["dry_run"], false);
        assert_eq!(
            json["failures"],
            serde_json::json!([
                {"name": "a/caf\\xe9.txt", "name_hex": hex::encode(b"a/caf\xe9.txt"),
                 "code": "PermissionDenied", "retryable": false, "message": "permission denied"},
                {"name": "two\nlines", "code": "DataLoss", "retryable": false, "message": ""},
            ])
        );
        assert_eq!(
            json["delete_skipped"],
            serde_json::json!({
                "code": "FailedPrecondition", "retryable": false, "message": "3 files failed"
            })
        );

        let clean = TreeDone {
            summary: TreeSummary {
                copied: 1,
                ..TreeSummary::default()
            },
            wire: WireBytes::default(),
        };
        let json: serde_json::Value = serde_json::from_str(&result_json(&job(), &clean)).unwrap();
        assert_eq!(json["ok"], true);
        assert_eq!(json["failures"], serde_json::json!([]));
        assert_eq!(json["delete_skipped"], serde_json::Value::Null);

        let json: serde_json::Value = serde_json::from_str(&detached_json(&job())).unwrap();
        assert_eq!(json["detached"], true);
        assert_eq!(json["recursive"], true);
        assert_eq!(json["source_path"], "/srv/data");
    }
}
