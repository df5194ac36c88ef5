//! What a fan-out prints, for people and for scripts: one line (or JSON object) per
//! destination as it ends, progress events, and the summary; the same for `--detach`.
//!
//! It only formats: it never prints and never contacts a star. The text a star sent is kept to
//! one line, whatever it holds.

use orbit_wire::{ErrorCode, TransferId};
use serde::Serialize;

use super::report::one_line;
use super::{ReplicateError, Replicated};
use crate::human;

/// Why one destination did not verify the file: the code scripts test, and one line for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The wire code that fits.
    pub code: ErrorCode,
    /// What happened, naming the star at fault.
    pub message: String,
}

impl Failure {
    /// The failure a destination's error stands for. A star's own report is given as it wrote it
    /// (it names the star that refused); the controller's errors name the star they concern.
    pub fn of(error: &ReplicateError) -> Failure {
        let message = match error {
            ReplicateError::Failed { error, .. } if !error.message.is_empty() => {
                error.message.clone()
            }
            ReplicateError::Failed { error, .. } => error.code.describe().to_owned(),
            other => other.to_string(),
        };
        Failure {
            code: error.code(),
            message: one_line(&message),
        }
    }
}

/// How one destination ended.
pub type Outcome = Result<Replicated, Failure>;

/// The hexadecimal digits of a digest shown in a destination's line; the summary shows all 64.
const SHORT_DIGEST: usize = 12;

/// The line a person reads when a destination ends, its name padded to `width` so that the
/// lines of a fan-out line up:
/// `star-b:/data/f  verified  1.0 GiB  sha256 ab12cd34ef56…  12.3 s` or
/// `star-c:/data/f  FAILED  Unavailable: star-c unreachable at ...`.
pub fn result_line(name: &str, width: usize, outcome: &Outcome) -> String {
    match outcome {
        Ok(done) => {
            let digest = hex::encode(done.sha256);
            format!(
                "{name:<width$}  verified  {}  sha256 {}…  {:.1} s",
                human::bytes(done.bytes),
                &digest[..SHORT_DIGEST],
                done.seconds
            )
        }
        Err(failure) => format!(
            "{name:<width$}  FAILED  {}: {}",
            failure.code.name(),
            failure.message
        ),
    }
}

#[derive(Serialize)]
struct ResultJson<'a> {
    destination: &'a str,
    path: Option<&'a str>,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resumed_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    controller_bytes_sent: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    controller_bytes_received: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retryable: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
}

/// The `--json` object of one destination's end, on one line:
/// `{"destination":"star-b","path":"/data/f","ok":true,"bytes":..,"sha256":"..","seconds":..,..}`
/// or `{"destination":..,"path":..,"ok":false,"code":"Unavailable","message":".."}`. `path` is
/// null when `wait` never learnt it.
pub fn result_json(star: &str, path: Option<&str>, outcome: &Outcome) -> String {
    let mut json = ResultJson {
        destination: star,
        path,
        ok: outcome.is_ok(),
        bytes: None,
        sha256: None,
        seconds: None,
        resumed_bytes: None,
        controller_bytes_sent: None,
        controller_bytes_received: None,
        code: None,
        retryable: None,
        message: None,
    };
    match outcome {
        Ok(done) => {
            json.bytes = Some(done.bytes);
            json.sha256 = Some(hex::encode(done.sha256));
            json.seconds = Some(done.seconds);
            json.resumed_bytes = Some(done.resumed_bytes);
            json.controller_bytes_sent = Some(done.wire.sent);
            json.controller_bytes_received = Some(done.wire.received);
        }
        Err(failure) => {
            json.code = Some(failure.code.name());
            json.retryable = Some(crate::exit::retryable(failure.code));
            json.message = Some(&failure.message);
        }
    }
    crate::json::line(crate::json::DESTINATION, &json)
}

#[derive(Serialize)]
struct ProgressJson<'a> {
    event: &'static str,
    transfer_id: String,
    destination: &'a str,
    path: Option<&'a str>,
    bytes: u64,
    total: u64,
    seconds: f64,
}

/// One `--json` progress event of one destination, as a single replication's with its
/// destination added: `{"event":"progress","transfer_id":..,"destination":"star-b",
/// "path":"/data/f","bytes":..,"total":..,"seconds":..}`.
pub fn progress_json(
    transfer: TransferId,
    star: &str,
    path: Option<&str>,
    (bytes, total): (u64, u64),
    seconds: f64,
) -> String {
    let json = ProgressJson {
        event: "progress",
        transfer_id: transfer.to_string(),
        destination: star,
        path,
        bytes,
        total,
        seconds,
    };
    crate::json::line(crate::json::PROGRESS, &json)
}

/// How a whole fan-out ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// The one transfer id every destination shares.
    pub transfer_id: TransferId,
    /// Destinations that published a verified copy.
    pub verified: usize,
    /// Destinations that did not.
    pub failed: usize,
    /// How many had to be verified.
    pub min_success: usize,
    /// The digest the verified destinations reported, if any did.
    pub sha256: Option<[u8; 32]>,
    /// Whether two destinations reported different digests, which must never happen.
    pub digests_differ: bool,
    /// The controller's wall time from the first command to the last result.
    pub seconds: f64,
}

impl Summary {
    /// Whether the fan-out succeeded: enough verified copies, all of the same file.
    pub fn ok(&self) -> bool {
        self.verified >= self.min_success && !self.digests_differ
    }
}

/// `N destination(s)`.
fn destinations(n: usize) -> String {
    if n == 1 {
        "1 destination".to_owned()
    } else {
        format!("{n} destinations")
    }
}

/// The last line of a fan-out:
/// `3 of 3 destinations verified (needed 3) in 12.4 s, sha256 <hex>, transfer <id>`.
pub fn summary_line(summary: &Summary) -> String {
    let total = summary.verified + summary.failed;
    let digest = match (summary.sha256, summary.digests_differ) {
        (_, true) => ", DIFFERENT sha256 digests".to_owned(),
        (Some(sha256), false) => format!(", sha256 {}", hex::encode(sha256)),
        (None, false) => String::new(),
    };
    format!(
        "{} of {} verified (needed {}) in {:.1} s{digest}, transfer {}",
        summary.verified,
        destinations(total),
        summary.min_success,
        summary.seconds,
        summary.transfer_id
    )
}

#[derive(Serialize)]
struct SummaryJson {
    fanout: bool,
    ok: bool,
    verified: usize,
    failed: usize,
    min_success: usize,
    transfer_id: String,
    sha256: Option<String>,
    digests_differ: bool,
    seconds: f64,
}

/// The `--json` summary, on one line: `{"fanout":true,"ok":..,"verified":..,"failed":..,
/// "min_success":..,"transfer_id":..,"sha256":..,"digests_differ":..,"seconds":..}`; `sha256`
/// is null when no destination was verified.
pub fn summary_json(summary: &Summary) -> String {
    let json = SummaryJson {
        fanout: true,
        ok: summary.ok(),
        verified: summary.verified,
        failed: summary.failed,
        min_success: summary.min_success,
        transfer_id: summary.transfer_id.to_string(),
        sha256: summary.sha256.map(hex::encode),
        digests_differ: summary.digests_differ,
        seconds: summary.seconds,
    };
    crate::json::line(crate::json::SUMMARY, &json)
}

#[derive(Serialize)]
struct PlanJson<'a> {
    event: &'static str,
    transfer_id: String,
    topology: String,
    destinations: Vec<PlannedJson<'a>>,
}

#[derive(Serialize)]
struct PlannedJson<'a> {
    destination: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    zone: Option<&'a str>,
    upstreams: Vec<&'a str>,
}

/// The `--json` line of the plan, before anything starts: `{"event":"plan","transfer_id":..,
/// "topology":..,"destinations":[{"destination":..,"zone":..,"upstreams":[..]}]}`, destinations
/// in the planned order (grouped by zone), each with the stars it pulls from before the origin,
/// nearest first.
pub fn plan_json<'a>(
    transfer: TransferId,
    plan: &'a super::plan::Plan,
    zone_of: impl Fn(&str) -> Option<&'a str>,
) -> String {
    let json = PlanJson {
        event: "plan",
        transfer_id: transfer.to_string(),
        topology: plan.topology.to_string(),
        destinations: plan
            .destinations
            .iter()
            .zip(&plan.upstreams)
            .map(|(destination, upstreams)| PlannedJson {
                destination: &destination.star,
                zone: zone_of(&destination.star),
                upstreams: upstreams
                    .iter()
                    .map(|&j| plan.destinations[j].star.as_str())
                    .collect(),
            })
            .collect(),
    };
    crate::json::line(crate::json::PLAN, &json)
}

/// The line of one destination of a detached fan-out: `star-b:/data/f  started`, or
/// `star-c:/data/f  FAILED  CODE: why`.
pub fn started_line(name: &str, width: usize, started: &Result<(), Failure>) -> String {
    match started {
        Ok(()) => format!("{name:<width$}  started"),
        Err(failure) => format!(
            "{name:<width$}  FAILED  {}: {}",
            failure.code.name(),
            failure.message
        ),
    }
}

#[derive(Serialize)]
struct StartedJson<'a> {
    destination: &'a str,
    path: &'a str,
    ok: bool,
    detached: bool,
    transfer_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retryable: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
}

/// The `--json` object of one destination of a detached fan-out, on one line.
pub fn started_json(
    transfer: TransferId,
    star: &str,
    path: &str,
    started: &Result<(), Failure>,
) -> String {
    let json = StartedJson {
        destination: star,
        path,
        ok: started.is_ok(),
        detached: true,
        transfer_id: transfer.to_string(),
        code: started.as_ref().err().map(|f| f.code.name()),
        retryable: started
            .as_ref()
            .err()
            .map(|f| crate::exit::retryable(f.code)),
        message: started.as_ref().err().map(|f| f.message.as_str()),
    };
    crate::json::line(crate::json::DESTINATION, &json)
}

#[derive(Serialize)]
struct DetachedJson {
    fanout: bool,
    detached: bool,
    ok: bool,
    started: usize,
    failed: usize,
    transfer_id: String,
}

/// The `--json` summary of a detached fan-out, on one line.
pub fn detached_json(transfer: TransferId, started: usize, failed: usize) -> String {
    let json = DetachedJson {
        fanout: true,
        detached: true,
        ok: failed == 0,
        started,
        failed,
        transfer_id: transfer.to_string(),
    };
    crate::json::line(crate::json::SUMMARY, &json)
}

#[cfg(test)]
mod tests {
    use orbit_wire::WireError;

    use super::*;
    use crate::connect::WireBytes;

    fn done() -> Replicated {
        Replicated {
            bytes: 1 << 30,
            sha256: [0xab; 32],
            seconds: 12.34,
            wire: WireBytes {
                sent: 3000,
                received: 2000,
            },
            resumed_bytes: 0,
        }
    }

    fn denied() -> Failure {
        Failure::of(&ReplicateError::Failed {
            star: "star-c".into(),
            error: WireError::new(
                ErrorCode::PermissionDenied,
                "star-c: /data/f is outside\nthe allowed roots",
            ),
        })
    }

    #[test]
    fn a_destination_ends_in_one_line_that_lines_up() {
        assert_eq!(
            result_line("star-b:/data/f", 16, &Ok(done())),
            format!(
                "star-b:/data/f    verified  1.0 GiB  sha256 {}…  12.3 s",
                "ab".repeat(6)
            )
        );
        assert_eq!(
            result_line("star-c:/data/f", 14, &Err(denied())),
            "star-c:/data/f  FAILED  PermissionDenied: star-c: /data/f is outside\\nthe allowed \
             roots"
        );
        // Without a message from the star, the code says it.
        let bare = Failure::of(&ReplicateError::Failed {
            star: "star-c".into(),
            error: WireError::new(ErrorCode::NotFound, ""),
        });
        assert_eq!(bare.message, ErrorCode::NotFound.describe());
        // The controller's own errors name the star.
        let interrupted = Failure::of(&ReplicateError::Interrupted {
            star: "star-d".into(),
            target: "/data/f".into(),
        });
        assert_eq!(interrupted.code, ErrorCode::Cancelled);
        assert!(
            interrupted.message.starts_with("star-d: "),
            "{interrupted:?}"
        );
    }

    #[test]
    fn results_and_progress_in_json() {
        let json: serde_json::Value =
            serde_json::from_str(&result_json("star-b", Some("/data/f"), &Ok(done()))).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "type": "destination",
                "destination": "star-b", "path": "/data/f", "ok": true, "bytes": 1u64 << 30,
                "sha256": "ab".repeat(32), "seconds": 12.34, "resumed_bytes": 0,
                "controller_bytes_sent": 3000, "controller_bytes_received": 2000,
            })
        );
        let json: serde_json::Value =
            serde_json::from_str(&result_json("star-c", None, &Err(denied()))).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "type": "destination",
                "destination": "star-c", "path": null, "ok": false, "code": "PermissionDenied",
                "retryable": false, "message": "star-c: /data/f is outside\\nthe allowed roots",
            })
        );
        let json: serde_json::Value = serde_json::from_str(&progress_json(
            TransferId(0xabc),
            "star-b",
            Some("/f"),
            (5, 10),
            0.5,
        ))
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "type": "progress",
                "event": "progress", "transfer_id": "0000000000000abc", "destination": "star-b",
                "path": "/f", "bytes": 5, "total": 10, "seconds": 0.5,
            })
        );
    }

    #[test]
    fn the_summary_counts_and_tells_ok_from_not() {
        let mut summary = Summary {
            transfer_id: TransferId(0xabc),
            verified: 3,
            failed: 0,
            min_success: 3,
            sha256: Some([0xab; 32]),
            digests_differ: false,
            seconds: 12.44,
        };
        assert!(summary.ok());
        assert_eq!(
            summary_line(&summary),
            format!(
                "3 of 3 destinations verified (needed 3) in 12.4 s, sha256 {}, transfer \
                 0000000000000abc",
                "ab".repeat(32)
            )
        );
        summary.verified = 2;
        summary.failed = 1;
        assert!(!summary.ok());
        summary.min_success = 2;
        assert!(summary.ok());
        let json: serde_json::Value = serde_json::from_str(&summary_json(&summary)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "type": "summary",
                "fanout": true, "ok": true, "verified": 2, "failed": 1, "min_success": 2,
                "transfer_id": "0000000000000abc", "sha256": "ab".repeat(32),
                "digests_differ": false, "seconds": 12.44,
            })
        );
        // Two digests: never ok, and said out loud.
        summary.digests_differ = true;
        assert!(!summary.ok());
        assert!(summary_line(&summary).contains("DIFFERENT sha256 digests"));
        summary.verified = 0;
        summary.failed = 3;
        summary.sha256 = None;
        summary.digests_differ = false;
        let json: serde_json::Value = serde_json::from_str(&summary_json(&summary)).unwrap();
        assert_eq!(json["sha256"], serde_json::Value::Null);
        assert_eq!(json["ok"], false);
    }

    #[test]
    fn a_detached_fanout_lists_its_destinations() {
        assert_eq!(started_line("b:/f", 6, &Ok(())), "b:/f    started");
        assert_eq!(
            started_line("c:/f", 4, &Err(denied())),
            "c:/f  FAILED  PermissionDenied: star-c: /data/f is outside\\nthe allowed roots"
        );
        let json: serde_json::Value =
            serde_json::from_str(&started_json(TransferId(1), "b", "/f", &Ok(()))).unwrap();
        assert_eq!(json["ok"], true);
        assert_eq!(json["detached"], true);
        assert!(json.get("code").is_none());
        let json: serde_json::Value =
            serde_json::from_str(&detached_json(TransferId(1), 2, 1)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "type": "summary",
                "fanout": true, "detached": true, "ok": false, "started": 2, "failed": 1,
                "transfer_id": "0000000000000001",
            })
        );
    }
}
