//! What a single file's replication prints, for people and for scripts: the summary line,
//! the retry and resume lines, and the JSON of a result, a detached start and a failure (the
//! failure object is shared with trees, `wait` and `cancel`).
//!
//! It only formats: it never prints, and never contacts a star. A tree's output is in
//! [`super::report`].

use orbit_wire::ControlEvent;
use serde::Serialize;

use super::{ReplicateJob, Replicated};
use crate::human;

/// The line a person sees for an event that is neither progress nor final: a retry, or a
/// resume (`star-b: retrying (attempt 1) in 0.2 s: ...`).
pub fn event_line(destination: &str, event: &ControlEvent) -> Option<String> {
    match event {
        ControlEvent::Retrying {
            attempt,
            after_ms,
            reason,
        } => Some(format!(
            "{destination}: retrying (attempt {attempt}) in {:.1} s: {reason}",
            *after_ms as f64 / 1000.0
        )),
        ControlEvent::Resumed { offset, total } => Some(format!(
            "{destination}: resuming at byte {offset} of {total}"
        )),
        _ => None,
    }
}

/// The one-line summary of a successful replication:
/// `star-b: star-a:/srv/data/f.bin -> /srv/backup/f.bin: 268435456 bytes in 1.23 s (208.1 MiB/s), sha256 <hex>, transfer <id>`.
/// The transfer id is the one both stars' log lines for this replication carry.
pub fn summary_line(job: &ReplicateJob, done: &Replicated) -> String {
    format!(
        "{}: {}:{} -> {}: {} bytes in {:.2} s ({}), sha256 {}, transfer {}",
        job.destination,
        job.command.source,
        job.command.source_path,
        job.command.target_path,
        done.bytes,
        done.seconds,
        human::rate(done.bytes, done.seconds),
        hex::encode(done.sha256),
        job.command.transfer_id
    )
}

#[derive(Serialize)]
struct SuccessJson<'a> {
    ok: bool,
    transfer_id: String,
    source: &'a str,
    destination: &'a str,
    source_path: &'a str,
    target_path: &'a str,
    bytes: u64,
    sha256: String,
    seconds: f64,
    rate_bytes_per_sec: f64,
    controller_bytes_sent: u64,
    controller_bytes_received: u64,
    resumed_bytes: u64,
}

/// The `--json` object of a successful replication, on one line.
pub fn success_json(job: &ReplicateJob, done: &Replicated) -> String {
    let rate = if done.seconds > 0.0 {
        done.bytes as f64 / done.seconds
    } else {
        0.0
    };
    let json = SuccessJson {
        ok: true,
        transfer_id: job.command.transfer_id.to_string(),
        source: &job.command.source,
        destination: &job.destination,
        source_path: &job.command.source_path,
        target_path: &job.command.target_path,
        bytes: done.bytes,
        sha256: hex::encode(done.sha256),
        seconds: done.seconds,
        rate_bytes_per_sec: rate,
        controller_bytes_sent: done.wire.sent,
        controller_bytes_received: done.wire.received,
        resumed_bytes: done.resumed_bytes,
    };
    crate::json::line(crate::json::RESULT, &json)
}

#[derive(Serialize)]
struct DetachedJson<'a> {
    ok: bool,
    detached: bool,
    transfer_id: String,
    source: &'a str,
    destination: &'a str,
    source_path: &'a str,
    target_path: &'a str,
}

/// The `--json` object of a detached start, on one line.
pub fn detached_json(job: &ReplicateJob) -> String {
    let json = DetachedJson {
        ok: true,
        detached: true,
        transfer_id: job.command.transfer_id.to_string(),
        source: &job.command.source,
        destination: &job.destination,
        source_path: &job.command.source_path,
        target_path: &job.command.target_path,
    };
    crate::json::line(crate::json::RESULT, &json)
}
