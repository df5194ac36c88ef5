//! What a tree fan-out prints, for people and for scripts: one line (or JSON object) per
//! destination as its tree ends, in the style of a single tree's summary, and the summary of
//! the whole.
//!
//! It only formats: it never prints and never contacts a star. A star's text is kept to one
//! line, whatever it holds.

use serde::Serialize;

use super::fanout_report::Failure;
use super::tree::TreeJob;

/// The line of a destination whose tree failed as a whole, in the style of its summary line:
/// `star-c: star-b:/srv/data/ -> /srv/copy/: FAILED PermissionDenied: why`, so that `grep
/// FAILED` lists them.
pub fn failed_line(job: &TreeJob, failure: &Failure) -> String {
    let c = &job.command;
    format!(
        "{}: {}:{}/ -> {}/: FAILED {}: {}",
        job.destination,
        c.source,
        c.source_path,
        c.target_path,
        failure.code.name(),
        failure.message
    )
}

#[derive(Serialize)]
struct FailedJson<'a> {
    ok: bool,
    transfer_id: String,
    source: &'a str,
    destination: &'a str,
    source_path: &'a str,
    target_path: &'a str,
    code: &'static str,
    retryable: bool,
    message: &'a str,
}

/// The `--json` object of a destination whose tree failed as a whole, on one line:
/// `{"type":"destination","ok":false,"transfer_id":..,"source":..,"destination":..,
/// "source_path":..,"target_path":..,"code":..,"retryable":..,"message":..}`. `source` is the
/// star that fed it.
pub fn failed_json(job: &TreeJob, failure: &Failure) -> String {
    let c = &job.command;
    let json = FailedJson {
        ok: false,
        transfer_id: c.transfer_id.to_string(),
        source: &c.source,
        destination: &job.destination,
        source_path: &c.source_path,
        target_path: &c.target_path,
        code: failure.code.name(),
        retryable: crate::exit::retryable(failure.code),
        message: &failure.message,
    };
    crate::json::line(crate::json::DESTINATION, &json)
}

/// How a whole tree fan-out ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Destinations in all.
    pub total: usize,
    /// Destinations whose tree ended complete: every entry done, `--delete` run if asked.
    pub replicated: usize,
    /// Destinations whose tree was walked to the end with some files failed, or `--delete`
    /// not run.
    pub partial: usize,
    /// Destinations whose tree failed as a whole.
    pub failed: usize,
    /// How many had to be complete.
    pub min_success: usize,
    /// How many destinations the source itself fed: 1 when every later one was fed by a
    /// destination, more after fallbacks (or every one in a dry run).
    pub source_sends: usize,
    /// A dry run: nothing was changed, every destination was compared with the source.
    pub dry_run: bool,
    /// The controller's wall time from the first command to the last result.
    pub seconds: f64,
}

impl Summary {
    /// Whether the fan-out succeeded: at least `min_success` complete trees.
    pub fn ok(&self) -> bool {
        self.replicated >= self.min_success
    }
}

/// `once`, `twice`, `N times`.
fn times(n: usize) -> String {
    match n {
        1 => "once".to_owned(),
        2 => "twice".to_owned(),
        n => format!("{n} times"),
    }
}

/// The last line of a tree fan-out:
/// `3 of 3 destinations replicated the tree (needed 3) in 4.1 s, the source sent it once`, with
/// `, 1 partly, 1 failed` after the `(needed N)` when some did not end complete. A dry run
/// says `checked` and that nothing was changed.
pub fn summary_line(summary: &Summary) -> String {
    let s = summary;
    let noun = if s.total == 1 {
        "destination"
    } else {
        "destinations"
    };
    let mut others = String::new();
    if s.partial > 0 {
        others.push_str(&format!(", {} partly", s.partial));
    }
    if s.failed > 0 {
        others.push_str(&format!(", {} failed", s.failed));
    }
    let not_started = s.total - s.replicated - s.partial - s.failed;
    if not_started > 0 {
        others.push_str(&format!(", {not_started} not started"));
    }
    if s.dry_run {
        return format!(
            "dry run, nothing was changed: {} of {} {noun} checked against the source (needed \
             {}){others} in {:.1} s",
            s.replicated, s.total, s.min_success, s.seconds
        );
    }
    format!(
        "{} of {} {noun} replicated the tree (needed {}){others} in {:.1} s, the source sent it {}",
        s.replicated,
        s.total,
        s.min_success,
        s.seconds,
        times(s.source_sends)
    )
}

#[derive(Serialize)]
struct SummaryJson {
    fanout: bool,
    recursive: bool,
    ok: bool,
    destinations: usize,
    replicated: usize,
    partial: usize,
    failed: usize,
    not_started: usize,
    min_success: usize,
    source_sends: usize,
    dry_run: bool,
    seconds: f64,
}

/// The `--json` summary, on one line: `{"type":"summary","fanout":true,"recursive":true,
/// "ok":..,"destinations":..,"replicated":..,"partial":..,"failed":..,"not_started":..,
/// "min_success":..,"source_sends":..,"dry_run":..,"seconds":..}`.
pub fn summary_json(summary: &Summary) -> String {
    let s = summary;
    let json = SummaryJson {
        fanout: true,
        recursive: true,
        ok: s.ok(),
        destinations: s.total,
        replicated: s.replicated,
        partial: s.partial,
        failed: s.failed,
        not_started: s.total - s.replicated - s.partial - s.failed,
        min_success: s.min_success,
        source_sends: s.source_sends,
        dry_run: s.dry_run,
        seconds: s.seconds,
    };
    crate::json::line(crate::json::SUMMARY, &json)
}

#[cfg(test)]
mod tests {
    use orbit_wire::tree::{ReplicateTree, SyncLevel};
    use orbit_wire::{ErrorCode, TransferId};

    use super::*;

    fn job() -> TreeJob {
        TreeJob {
            destination: "star-c".into(),
            destination_addr: "127.0.0.1:7403".parse().unwrap(),
            command: ReplicateTree {
                transfer_id: TransferId(0xabc),
                source: "star-b".into(),
                source_addr: "127.0.0.1:7402".into(),
                source_path: "/srv/copy".into(),
                target_path: "/srv/other".into(),
                token: "T".into(),
                sync: SyncLevel::Mtime,
                delete: false,
                max_delete: None,
                dry_run: false,
                itemize: false,
                timeout_secs: 0,
            },
        }
    }

    #[test]
    fn a_destination_that_failed_says_so_on_one_line_naming_its_feeder() {
        let failure = Failure {
            code: ErrorCode::PermissionDenied,
            message: "star-c: /srv/other is outside\\nthe allowed roots".into(),
        };
        assert_eq!(
            failed_line(&job(), &failure),
            "star-c: star-b:/srv/copy/ -> /srv/other/: FAILED PermissionDenied: star-c: \
             /srv/other is outside\\nthe allowed roots"
        );
        let json: serde_json::Value = serde_json::from_str(&failed_json(&job(), &failure)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "type": "destination", "ok": false, "transfer_id": "0000000000000abc",
                "source": "star-b", "destination": "star-c", "source_path": "/srv/copy",
                "target_path": "/srv/other", "code": "PermissionDenied", "retryable": false,
                "message": "star-c: /srv/other is outside\\nthe allowed roots",
            })
        );
    }

    #[test]
    fn the_summary_counts_and_says_how_often_the_source_sent_the_tree() {
        let mut summary = Summary {
            total: 3,
            replicated: 3,
            partial: 0,
            failed: 0,
            min_success: 3,
            source_sends: 1,
            dry_run: false,
            seconds: 4.12,
        };
        assert!(summary.ok());
        assert_eq!(
            summary_line(&summary),
            "3 of 3 destinations replicated the tree (needed 3) in 4.1 s, the source sent it once"
        );
        summary.replicated = 1;
        summary.partial = 1;
        summary.failed = 1;
        summary.source_sends = 2;
        assert!(!summary.ok());
        assert_eq!(
            summary_line(&summary),
            "1 of 3 destinations replicated the tree (needed 3), 1 partly, 1 failed in 4.1 s, \
             the source sent it twice"
        );
        summary.min_success = 1;
        assert!(summary.ok());
        let json: serde_json::Value = serde_json::from_str(&summary_json(&summary)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "type": "summary", "fanout": true, "recursive": true, "ok": true,
                "destinations": 3, "replicated": 1, "partial": 1, "failed": 1,
                "not_started": 0, "min_success": 1, "source_sends": 2, "dry_run": false,
                "seconds": 4.12,
            })
        );
        // Interrupted: those never started are counted too.
        summary.partial = 0;
        summary.failed = 0;
        assert!(summary_line(&summary).contains(", 2 not started in "));
        let dry = Summary {
            total: 1,
            replicated: 1,
            min_success: 1,
            source_sends: 1,
            dry_run: true,
            ..summary
        };
        assert_eq!(
            summary_line(&dry),
            "dry run, nothing was changed: 1 of 1 destination checked against the source \
             (needed 1) in 4.1 s"
        );
    }
}
