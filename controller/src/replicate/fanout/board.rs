//! Following every destination of a fan-out at once: progress (one bar for all, or a JSON
//! event per destination), one line per destination as it ends, the check that every
//! destination reports the same digest, Ctrl-C, and the summary.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use orbit_wire::{ControlEvent, ErrorCode, ReplicateFile, TransferId};
use tokio::task::JoinSet;

use super::super::fanout_report::{self as show, Failure, Outcome, Summary};
use super::super::interrupt::{Cancelling, Interrupt};
use super::super::tree::Output;
use super::super::{conclude, event_line, ReplicateError, ReplicateJob};
use super::legs::{name, name_width, LegError, Legs, Report, Target};
use super::FanoutError;
use crate::progress::{Mode, Progress};

/// Where every destination of a fan-out stands, and what has been shown of it.
#[derive(Debug)]
pub(super) struct Board {
    transfer: TransferId,
    /// One job per destination, for [`super::conclude`]: its name, address and expected digest.
    jobs: Vec<ReplicateJob>,
    /// The target paths, once known.
    paths: Vec<Option<String>>,
    /// The address of each destination, once connected.
    addrs: Vec<Option<SocketAddr>>,
    /// Bytes and total of each, from its last progress.
    progress: Vec<(u64, u64)>,
    /// Bytes not sent again after resumes, per destination.
    resumed: Vec<u64>,
    outcomes: Vec<Option<Outcome>>,
    /// The first verified destination and its digest.
    first_digest: Option<(usize, [u8; 32])>,
    digests_differ: bool,
    min_success: usize,
    output: Output,
    width: usize,
    bar: Progress,
    started: Instant,
}

impl Board {
    /// A board for `targets`, each sent a command for `file`'s transfer (the target path is
    /// each target's own).
    pub(super) fn new(
        file: &ReplicateFile,
        targets: &[Target],
        min_success: usize,
        output: Output,
    ) -> Board {
        let n = targets.len();
        let unknown: SocketAddr = ([0, 0, 0, 0], 0).into();
        let jobs = targets
            .iter()
            .map(|t| ReplicateJob {
                destination: t.star.clone(),
                destination_addr: unknown,
                command: ReplicateFile {
                    target_path: t.path.clone().unwrap_or_default(),
                    ..file.clone()
                },
                also: Vec::new(),
                in_pieces: false,
            })
            .collect();
        // The bar, if any, shows every destination's bytes together; --json prints per
        // destination instead.
        let mode = Mode::choose(false, output.quiet || output.json);
        Board {
            transfer: file.transfer_id,
            jobs,
            paths: targets.iter().map(|t| t.path.clone()).collect(),
            addrs: vec![None; n],
            progress: vec![(0, 0); n],
            resumed: vec![0; n],
            outcomes: (0..n).map(|_| None).collect(),
            first_digest: None,
            digests_differ: false,
            min_success,
            output,
            width: name_width(targets),
            bar: Progress::new(mode, file.transfer_id),
            started: Instant::now(),
        }
    }

    /// Shows every destination's reports until all have ended, or Ctrl-C comes on `interrupt`;
    /// returns whether it did.
    pub(super) async fn follow(
        &mut self,
        mut legs: Legs,
        mut interrupt: Option<&mut Interrupt>,
    ) -> bool {
        loop {
            let ctrl_c = async {
                match interrupt.as_mut() {
                    Some(interrupt) => interrupt.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                report = legs.next() => match report {
                    Some(report) => self.apply(report),
                    None => return false,
                },
                () = ctrl_c => return true,
            }
        }
    }

    fn apply(&mut self, report: Report) {
        match report {
            Report::Connected(i, addr) => {
                self.addrs[i] = Some(addr);
                self.jobs[i].destination_addr = addr;
            }
            Report::Event(i, event) => self.on_event(i, &event),
            Report::End(i, result, wire) => {
                let star = self.jobs[i].destination.clone();
                let result = match result {
                    Ok(event) => Ok(event),
                    Err(LegError::Stream(e)) => Err(e),
                    Err(other) => return self.finish(i, Err(other.failure(&star))),
                };
                let outcome = conclude(&self.jobs[i], result, wire, self.resumed[i])
                    .map_err(|e| Failure::of(&e));
                self.finish(i, outcome);
            }
        }
    }

    fn on_event(&mut self, i: usize, event: &ControlEvent) {
        match event {
            ControlEvent::Progress { bytes, total } => self.show_progress(i, (*bytes, *total)),
            ControlEvent::Following(status) => {
                if self.paths[i].is_none() {
                    self.paths[i] = Some(status.target_path.clone());
                }
                if status.total > 0 {
                    self.show_progress(i, (status.bytes, status.total));
                }
            }
            other => {
                if let ControlEvent::Resumed { offset, .. } = other {
                    self.resumed[i] += offset;
                }
                let line = event_line(&self.jobs[i].destination, other);
                if let Some(line) = line.filter(|_| !self.output.quiet) {
                    self.bar.clear();
                    eprintln!("{line}");
                }
            }
        }
    }

    fn show_progress(&mut self, i: usize, bytes_total: (u64, u64)) {
        self.progress[i] = bytes_total;
        if self.output.json {
            let seconds = self.started.elapsed().as_secs_f64();
            let star = &self.jobs[i].destination;
            let path = self.paths[i].as_deref();
            let line = show::progress_json(self.transfer, star, path, bytes_total, seconds);
            println!("{line}");
        } else {
            let bytes = self.progress.iter().map(|p| p.0).sum();
            let total = self.progress.iter().map(|p| p.1).sum();
            self.bar.update(bytes, total);
        }
    }

    /// Records and shows how destination `i` ended. A digest other than the first verified one
    /// turns a success into a failure, and the whole fan-out with it.
    fn finish(&mut self, i: usize, mut outcome: Outcome) {
        if self.outcomes[i].is_some() {
            return;
        }
        if let Ok(done) = &outcome {
            match self.first_digest {
                None => self.first_digest = Some((i, done.sha256)),
                Some((j, first)) if first != done.sha256 => {
                    self.digests_differ = true;
                    outcome = Err(Failure {
                        code: ErrorCode::DataLoss,
                        message: format!(
                            "{} reported sha256 {}, but {} reported {}: the destinations \
                             disagree, which should never happen",
                            self.jobs[i].destination,
                            hex::encode(done.sha256),
                            self.jobs[j].destination,
                            hex::encode(first)
                        ),
                    });
                }
                Some(_) => {}
            }
        }
        let star = &self.jobs[i].destination;
        let path = self.paths[i].as_deref();
        if self.output.json {
            println!("{}", show::result_json(star, path, &outcome));
        } else if !self.output.quiet || outcome.is_err() {
            let line = show::result_line(&name(star, path), self.width, &outcome);
            self.bar.println(&line);
        }
        self.outcomes[i] = Some(outcome);
    }

    /// After Ctrl-C: cancels every destination that has not ended, all at once, and waits
    /// (boundedly, and until a second Ctrl-C) for each to confirm.
    pub(super) async fn cancel_unfinished(
        &mut self,
        tls: Arc<rustls::ClientConfig>,
        interrupt: &mut Interrupt,
    ) {
        self.bar.clear();
        let mut cancels = JoinSet::new();
        let unfinished: Vec<usize> = (0..self.jobs.len())
            .filter(|&i| self.outcomes[i].is_none())
            .collect();
        for i in unfinished {
            let job = self.jobs[i].clone();
            let Some(addr) = self.addrs[i] else {
                // Never connected: the command never reached it.
                self.finish(i, Err(Failure::of(&interrupted(&job))));
                continue;
            };
            let tls = tls.clone();
            cancels.spawn(async move {
                let cancelling = Cancelling {
                    tls,
                    destination: &job.destination,
                    addr,
                    transfer: job.command.transfer_id,
                };
                let outcome = cancelling
                    .run(
                        &mut Interrupt::never(),
                        || interrupted(&job),
                        |result, wire| conclude(&job, result, wire, 0),
                    )
                    .await;
                (i, outcome)
            });
        }
        loop {
            tokio::select! {
                joined = cancels.join_next() => match joined {
                    None => break,
                    Some(Ok((i, outcome))) => self.finish(i, outcome.map_err(|e| Failure::of(&e))),
                    Some(Err(_)) => {}
                },
                () = interrupt.recv() => break,
            }
        }
        // A second Ctrl-C: those not confirmed yet are still cancelled, only not waited for.
        for i in 0..self.jobs.len() {
            if self.outcomes[i].is_none() {
                let job = self.jobs[i].clone();
                self.finish(i, Err(Failure::of(&interrupted(&job))));
            }
        }
    }

    /// Prints the summary and says whether the fan-out succeeded.
    pub(super) fn summarize(mut self, interrupted: bool) -> Result<(), FanoutError> {
        for i in 0..self.jobs.len() {
            if self.outcomes[i].is_none() {
                let star = self.jobs[i].destination.clone();
                self.finish(i, Err(LegError::Lost.failure(&star)));
            }
        }
        self.bar.clear();
        let verified = self.outcomes.iter().flatten().filter(|o| o.is_ok()).count();
        let summary = Summary {
            transfer_id: self.transfer,
            verified,
            failed: self.jobs.len() - verified,
            min_success: self.min_success,
            sha256: self.first_digest.map(|(_, sha256)| sha256),
            digests_differ: self.digests_differ,
            seconds: self.started.elapsed().as_secs_f64(),
        };
        if self.output.json {
            println!("{}", show::summary_json(&summary));
        } else if !self.output.quiet {
            println!("{}", show::summary_line(&summary));
        }
        let total = self.jobs.len();
        if interrupted {
            return Err(FanoutError::Interrupted { verified, total });
        }
        if summary.digests_differ {
            return Err(FanoutError::DigestsDiffer);
        }
        if summary.ok() {
            return Ok(());
        }
        let codes: Vec<ErrorCode> = self
            .outcomes
            .iter()
            .flatten()
            .filter_map(|o| o.as_ref().err().map(|f| f.code))
            .collect();
        let code = codes
            .iter()
            .find(|code| !crate::exit::retryable(**code))
            .or(codes.first())
            .copied()
            .unwrap_or(ErrorCode::Internal);
        Err(FanoutError::TooFew {
            verified,
            total,
            needed: self.min_success,
            code,
        })
    }
}

fn interrupted(job: &ReplicateJob) -> ReplicateError {
    ReplicateError::Interrupted {
        star: job.destination.clone(),
        target: job.command.target_path.clone(),
    }
}

#[cfg(test)]
mod tests {
    use orbit_certs::GridCa;
    use orbit_wire::WireError;

    use super::super::legs::testing::{done, star, target, QUIET};
    use super::*;
    use crate::fake_star::controller_tls;
    use crate::spec::StarAddr;

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

    /// Follows `targets` to the end as a fan-out with `min_success`.
    async fn follow(
        tls: Arc<rustls::ClientConfig>,
        targets: &[Target],
        min_success: usize,
    ) -> (Vec<Option<Outcome>>, Result<(), FanoutError>) {
        let mut board = Board::new(&file(), targets, min_success, QUIET);
        assert!(!board.follow(Legs::spawn(tls, targets), None).await);
        let outcomes = board.outcomes.clone();
        (outcomes, board.summarize(false))
    }

    #[tokio::test]
    async fn one_failure_never_stops_the_others_and_min_success_decides() {
        let ca = GridCa::generate("t").unwrap();
        let refused = ControlEvent::Failed(WireError::new(
            ErrorCode::PermissionDenied,
            "star-d: /elsewhere is outside the allowed roots",
        ));
        let progress = ControlEvent::Progress {
            bytes: 5,
            total: 10,
        };
        let b = star(&ca, "star-b", vec![progress.clone(), done(1)]).await;
        let c = star(&ca, "star-c", vec![done(1)]).await;
        let d = star(&ca, "star-d", vec![progress, refused]).await;
        let targets = [
            target(&b, "star-b"),
            target(&c, "star-c"),
            target(&d, "star-d"),
        ];
        let tls = controller_tls(&ca);

        let (outcomes, result) = follow(tls.clone(), &targets, 2).await;
        result.unwrap();
        let outcomes: Vec<Outcome> = outcomes.into_iter().map(Option::unwrap).collect();
        assert_eq!(outcomes[0].as_ref().unwrap().sha256, [1; 32]);
        assert!(outcomes[1].is_ok());
        let failure = outcomes[2].as_ref().unwrap_err();
        assert_eq!(failure.code, ErrorCode::PermissionDenied);
        assert_eq!(
            failure.message,
            "star-d: /elsewhere is outside the allowed roots"
        );

        // Every destination needed: the same run fails, exit code 1.
        let (_, result) = follow(tls, &targets, 3).await;
        let err = ReplicateError::from(result.unwrap_err());
        assert_eq!(err.exit_code(), crate::exit::FAILED);
        assert_eq!(err.code(), ErrorCode::PermissionDenied);
        assert_eq!(
            err.to_string(),
            "fan-out failed: 2 of 3 destinations verified the file, 3 needed"
        );
    }

    #[tokio::test]
    async fn an_unreachable_destination_is_one_failure_among_others() {
        let ca = GridCa::generate("t").unwrap();
        let b = star(&ca, "star-b", vec![done(1)]).await;
        let closed = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut gone = target(&b, "star-c");
        gone.addr = StarAddr::parse(&closed.to_string()).unwrap();
        let (outcomes, result) =
            follow(controller_tls(&ca), &[target(&b, "star-b"), gone], 1).await;
        result.unwrap();
        assert!(outcomes[0].as_ref().unwrap().is_ok());
        let failure = outcomes[1].as_ref().unwrap().as_ref().unwrap_err();
        assert_eq!(failure.code, ErrorCode::Unavailable);
        assert!(
            failure.message.starts_with("star-c unreachable"),
            "{failure:?}"
        );
    }

    #[tokio::test]
    async fn two_digests_fail_the_fanout_loudly() {
        let ca = GridCa::generate("t").unwrap();
        let b = star(&ca, "star-b", vec![done(1)]).await;
        let c = star(&ca, "star-c", vec![done(2)]).await;
        let targets = [target(&b, "star-b"), target(&c, "star-c")];
        let (outcomes, result) = follow(controller_tls(&ca), &targets, 1).await;
        let failed: Vec<&Failure> = outcomes
            .iter()
            .filter_map(|o| o.as_ref().unwrap().as_ref().err())
            .collect();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].code, ErrorCode::DataLoss);
        assert!(
            failed[0].message.contains("the destinations disagree"),
            "{failed:?}"
        );
        let err = result.unwrap_err();
        assert!(matches!(err, FanoutError::DigestsDiffer), "{err}");
        assert_eq!(err.exit_code(), crate::exit::FAILED);
    }
}
