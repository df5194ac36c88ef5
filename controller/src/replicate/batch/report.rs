//! What a batch prints, for people and for scripts: one line (or `job` object) per replication
//! as it ends, and the summary (or `summary` object); and the batch's result from its jobs'
//! ends. It never contacts a star.

use std::time::Instant;

use serde::Serialize;

use super::super::fanout_report::{result_line, Failure, Outcome};
use super::{BatchError, Ended, Job};
use crate::exit;
use crate::human;
use crate::replicate::ReplicateError;

/// Where and how the batch reports.
pub(super) struct Report {
    pub(super) json: bool,
    pub(super) quiet: bool,
    pub(super) started: Instant,
}

#[derive(Serialize)]
struct JobJson<'a> {
    line: usize,
    source: String,
    destination: String,
    ok: bool,
    attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    transfer_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retryable: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
}

#[derive(Serialize)]
struct SummaryJson {
    ok: bool,
    jobs: usize,
    verified: usize,
    failed: usize,
    not_started: usize,
    retries: u32,
    bytes: u64,
    seconds: f64,
    exit_code: u8,
}

impl Report {
    /// Prints how `job` ended: its line (stdout; a failure even with --quiet), or its JSON
    /// object.
    pub(super) fn job(&self, job: &Job, ended: &Ended) {
        let outcome: Outcome = match &ended.result {
            Ok((_, done)) => Ok(*done),
            Err(e) => Err(Failure::of(e)),
        };
        if self.json {
            println!("{}", job_json(job, ended, &outcome));
            return;
        }
        if self.quiet && outcome.is_ok() {
            return;
        }
        let name = format!("line {}  {} -> {}", job.line, job.source, job.target);
        let mut text = result_line(&human::printable(&name), 0, &outcome);
        if ended.attempts > 1 {
            text.push_str(&format!(" (after {} attempts)", ended.attempts));
        }
        println!("{text}");
    }

    /// Prints the summary and turns the jobs' ends into the batch's result; `started` jobs
    /// were started, in the file's order.
    pub(super) fn summarize(
        &self,
        jobs: &[Job],
        ended: &[Option<Ended>],
        started: usize,
    ) -> Result<(), ReplicateError> {
        let finished: Vec<&Ended> = ended.iter().flatten().collect();
        let verified = finished.iter().filter(|e| e.result.is_ok()).count();
        let failures: Vec<&ReplicateError> = finished
            .iter()
            .filter_map(|e| e.result.as_ref().err())
            .collect();
        let not_started = jobs.len() - started;
        // Only a second Ctrl-C leaves a started job without an end.
        let interrupted = not_started > 0
            || started > finished.len()
            || failures.iter().any(|e| e.exit_code() == exit::INTERRUPTED);
        let bytes: u64 = finished
            .iter()
            .filter_map(|e| e.result.as_ref().ok())
            .map(|(_, done)| done.bytes)
            .sum();
        let retries: u32 = finished.iter().map(|e| e.attempts - 1).sum();
        let seconds = self.started.elapsed().as_secs_f64();
        let error = if interrupted {
            Some(BatchError::Interrupted {
                verified,
                not_started,
                total: jobs.len(),
            })
        } else if failures.is_empty() {
            None
        } else {
            let code = failures
                .iter()
                .map(|e| e.code())
                .find(|code| !exit::retryable(*code))
                .unwrap_or_else(|| failures[0].code());
            Some(BatchError::Failed {
                failed: failures.len(),
                total: jobs.len(),
                code,
            })
        };
        let exit_code = error.as_ref().map_or(exit::OK, BatchError::exit_code);
        if self.json {
            let json = SummaryJson {
                ok: error.is_none(),
                jobs: jobs.len(),
                verified,
                failed: failures.len(),
                not_started,
                retries,
                bytes,
                seconds,
                exit_code,
            };
            println!("{}", crate::json::line(crate::json::SUMMARY, &json));
        } else if !self.quiet {
            println!(
                "{} of {} verified, {} failed{}, {retries} {}, {} in {seconds:.1} s",
                verified,
                replications(jobs.len()),
                failures.len(),
                match not_started {
                    0 => String::new(),
                    n => format!(", {n} not started"),
                },
                if retries == 1 { "retry" } else { "retries" },
                human::bytes(bytes),
            );
        }
        match error {
            None => Ok(()),
            Some(e) => Err(e.into()),
        }
    }
}

/// `N replication(s)`.
fn replications(n: usize) -> String {
    if n == 1 {
        "1 replication".to_owned()
    } else {
        format!("{n} replications")
    }
}

/// The `--json` object of one job, on one line: `{"type":"job","line":3,"source":..,
/// "destination":..,"ok":true,"attempts":1,"transfer_id":..,"bytes":..,"sha256":..,
/// "seconds":..}` or `{..,"ok":false,"attempts":..,"code":..,"retryable":..,"message":..}`.
fn job_json(job: &Job, ended: &Ended, outcome: &Outcome) -> String {
    let mut json = JobJson {
        line: job.line,
        source: job.source.to_string(),
        destination: job.target.to_string(),
        ok: outcome.is_ok(),
        attempts: ended.attempts,
        transfer_id: None,
        bytes: None,
        sha256: None,
        seconds: None,
        code: None,
        retryable: None,
        message: None,
    };
    match (&ended.result, outcome) {
        (Ok((replication, _)), Ok(done)) => {
            json.transfer_id = Some(replication.command.transfer_id.to_string());
            json.bytes = Some(done.bytes);
            json.sha256 = Some(hex::encode(done.sha256));
            json.seconds = Some(done.seconds);
        }
        (_, Err(failure)) => {
            json.code = Some(failure.code.name());
            json.retryable = Some(exit::retryable(failure.code));
            json.message = Some(&failure.message);
        }
        (Err(_), Ok(_)) => {}
    }
    crate::json::line(crate::json::JOB, &json)
}
