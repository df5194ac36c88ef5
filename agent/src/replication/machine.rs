//! The decisions of one replication, without I/O: a state machine that the driver
//! ([`super::driver`]) feeds with what happened ([`Event`]) and the time, and that answers with
//! what to do next ([`Action`]). It imports no tokio, quinn or file system, takes the clock as an
//! argument and the jitter as a function, so that its tests run every decision in microseconds of
//! simulated time.
//!
//! One replication's life, as this file decides it:
//!
//! 1. **Request** the source's file from `offset` (0, or what a journal vouched for after a
//!    restart). The answer is due within [`ANSWER_TIMEOUT`] and before the deadline.
//! 2. The **header** gives the source's file version. A version other than the one the bytes so
//!    far came from means the file changed: start again from zero, and say so. Otherwise a
//!    **segment** begins at `offset`; past byte 0 it is a resume, and the controller is told.
//! 3. **Chunks** must come in order and within the file; each is written, and every
//!    [`CHECKPOINT`] bytes the disk syncs and journals them. A source silent for
//!    [`STALL_TIMEOUT`] is **stalled**: its connection is dropped and the attempt fails.
//! 4. The **trailer** ends the bytes: the disk verifies and **publishes**, and the replication
//!    is done.
//! 5. A **failure** that may go away on its own ([`PullError::is_transient`]) is retried after a
//!    backoff, doubling from [`FIRST_BACKOFF`] to [`MAX_BACKOFF`] with jitter; any other ends the
//!    replication. Retries stop once the command's window passes **without progress** (the
//!    deadline moves with every byte received).
//! 6. **Cancel** ends it and removes everything; **shutdown** ends it and, when the star keeps a
//!    journal, keeps the temporary file to resume at the next start.

use std::time::{Duration, Instant};

use orbit_wire::{FileVersion, CHUNK_SIZE};

use super::error::PullError;

/// How long the source may take to answer a read request, dialling included.
pub(crate) const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a data stream may stay silent before the attempt is given up and retried. QUIC's
/// idle timeout (30 s) would notice a source that vanished only much later.
pub(crate) const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a replication keeps retrying without progress when the command does not say.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// The first retry's delay; each further one doubles, up to [`MAX_BACKOFF`].
pub(crate) const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// The longest delay between two attempts.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How many bytes are written between two checkpoints (an fdatasync and a journal update): what
/// a crash of this star costs at most, in bytes to fetch again.
pub(crate) const CHECKPOINT: u64 = 32 * 1024 * 1024;

/// A verified, durable, published copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Replicated {
    /// The file's size.
    pub(crate) bytes: u64,
    /// Its SHA-256.
    pub(crate) sha256: [u8; 32],
}

/// What the driver saw.
#[derive(Debug)]
pub(crate) enum Event {
    /// The source answered the request: `size` bytes of its file at `version` follow.
    Header {
        /// Bytes that follow.
        size: u64,
        /// The source file's version.
        version: FileVersion,
    },
    /// A chunk of `len` bytes at `offset` arrived (the driver holds the bytes).
    Chunk {
        /// Where the source says it goes.
        offset: u64,
        /// Its length.
        len: u64,
    },
    /// The source's trailer arrived: it has sent everything.
    Trailer,
    /// The disk verified and published the file.
    Published {
        /// The file's SHA-256.
        sha256: [u8; 32],
    },
    /// The request, the stream, the source or the disk failed.
    Failed(PullError),
    /// The time [`Machine::timer`] gave has come.
    Timer,
    /// A controller cancelled the replication.
    Cancel,
    /// The star is shutting down.
    Shutdown,
}

/// What the driver does next, in order.
#[derive(Debug, PartialEq)]
pub(crate) enum Action {
    /// Abandon the data stream, if any, and ask the source for its file from `offset`.
    Request {
        /// The first byte wanted.
        offset: u64,
    },
    /// An attempt's bytes begin at `start` of the source file at `version`: make the temporary
    /// file if there is none yet, and tell the disk (from 0, it drops what it holds).
    Segment {
        /// Where the bytes begin.
        start: u64,
        /// The source file's version.
        version: FileVersion,
    },
    /// Write the chunk just received.
    Write,
    /// Sync what is written and record it in the journal.
    Checkpoint,
    /// Verify `size` bytes against the trailer (and the command's expected digest), then
    /// publish.
    Commit {
        /// The file's size.
        size: u64,
    },
    /// Close the connection to the source: a source that vanished without a word leaves the
    /// pooled connection looking alive, and the next attempt must dial anew.
    DropConnection,
    /// Tell whoever follows the replication.
    Report(Note),
    /// The end. With `keep`, the temporary file and its journal entry stay for a resume;
    /// otherwise both go.
    Finish {
        /// The published copy, or why there is none.
        result: Result<Replicated, PullError>,
        /// Whether to keep the temporary file.
        keep: bool,
    },
}

/// The rare events a controller is told beside progress.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Note {
    /// Attempt `attempt` failed; the next begins after `after`.
    Retrying {
        /// The attempt that failed, from 1.
        attempt: u32,
        /// The delay before the next.
        after: Duration,
        /// Why it failed.
        reason: String,
    },
    /// An attempt resumes from `offset` rather than from zero.
    Resumed {
        /// Where it resumes.
        offset: u64,
        /// The file's size.
        total: u64,
    },
}

/// Where the replication stands.
#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// A read request is out; its answer is due at `by`.
    Requesting { by: Instant },
    /// Chunks arrive; the last thing heard from the source was at `heard`.
    Receiving { heard: Instant },
    /// The trailer arrived; the disk verifies and publishes.
    Committing,
    /// Waiting out a backoff.
    BackingOff { until: Instant },
    /// Ended.
    Done,
}

/// What a replication starts from.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Start {
    /// Bytes already in the temporary file and vouched for (a journal's, after a restart).
    pub(crate) offset: u64,
    /// The source version those bytes came from.
    pub(crate) version: Option<FileVersion>,
}

/// The settings of one replication.
pub(crate) struct Settings {
    /// The source star's name, for messages.
    pub(crate) source: String,
    /// This star's name, for messages.
    pub(crate) star: String,
    /// How long retries go on without progress.
    pub(crate) window: Duration,
    /// Whether the star keeps a journal, so that a shutdown can keep the transfer to resume.
    pub(crate) journaled: bool,
    /// A random factor in [0, 1) for the backoff's jitter.
    pub(crate) jitter: Box<dyn FnMut() -> f64 + Send + Sync>,
}

/// The state machine of one replication.
pub(crate) struct Machine {
    settings: Settings,
    state: State,
    started: Instant,
    /// When bytes last arrived (or the replication began): the deadline is this plus the window.
    progressed: Instant,
    /// Attempts that failed so far.
    attempt: u32,
    /// Bytes handed to the disk, which writes them in order: where the next attempt starts.
    offset: u64,
    /// The source version the bytes so far came from.
    version: Option<FileVersion>,
    /// The file's size, once a header said it.
    total: u64,
    since_checkpoint: u64,
}

impl Machine {
    /// A replication that begins at `now` from `start`.
    pub(crate) fn new(settings: Settings, start: Start, now: Instant) -> Machine {
        let version = start.version.filter(|_| start.offset > 0);
        Machine {
            settings,
            state: State::Done,
            started: now,
            progressed: now,
            attempt: 0,
            offset: if version.is_some() { start.offset } else { 0 },
            version,
            total: version.map_or(0, |v| v.size),
            since_checkpoint: 0,
        }
    }

    /// The first action: the first request.
    pub(crate) fn start(&mut self, now: Instant) -> Vec<Action> {
        self.request(now)
    }

    /// Bytes received and handed to the disk.
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    /// The file's size, once the source said it (0 before).
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// When the driver must send [`Event::Timer`] if nothing else happened first: an answer or a
    /// chunk overdue, or a backoff over. `None` while the disk commits or after the end.
    pub(crate) fn timer(&self) -> Option<Instant> {
        match self.state {
            State::Requesting { by } => Some(by),
            State::Receiving { heard } => Some((heard + STALL_TIMEOUT).min(self.deadline())),
            State::BackingOff { until } => Some(until),
            State::Committing | State::Done => None,
        }
    }

    /// Whether the network has something to deliver: an answer to a request, or chunks. While
    /// backing off or committing, the last attempt's stream is to be abandoned, unread.
    pub(crate) fn awaits_network(&self) -> bool {
        matches!(
            self.state,
            State::Requesting { .. } | State::Receiving { .. }
        )
    }

    /// Takes in one event at `now` and says what to do.
    pub(crate) fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        if self.state == State::Done {
            return Vec::new();
        }
        match (event, self.state) {
            (Event::Cancel, _) => self.finish(Err(PullError::Cancelled), false),
            (Event::Shutdown, _) => {
                let resumes = self.settings.journaled;
                let star = self.settings.star.clone();
                self.finish(Err(PullError::ShuttingDown { star, resumes }), resumes)
            }
            (Event::Failed(error), _) => self.failed(error, now),
            (Event::Header { size, version }, State::Requesting { .. }) => {
                self.header(size, version, now)
            }
            (Event::Chunk { offset, len }, State::Receiving { .. }) => self.chunk(offset, len, now),
            (Event::Trailer, State::Receiving { .. }) => {
                if self.offset != self.total {
                    let error = PullError::Protocol {
                        source_star: self.settings.source.clone(),
                        what: format!("sent {} of {} bytes", self.offset, self.total),
                    };
                    return self.finish(Err(error), false);
                }
                self.state = State::Committing;
                vec![Action::Commit { size: self.total }]
            }
            (Event::Published { sha256 }, State::Committing) => {
                let done = Replicated {
                    bytes: self.total,
                    sha256,
                };
                self.finish(Ok(done), false)
            }
            (Event::Timer, State::Requesting { by }) if now >= by => {
                self.failed(PullError::NoAnswer(self.settings.source.clone()), now)
            }
            (Event::Timer, State::Receiving { heard }) if now >= self.timer().unwrap_or(now) => {
                let stalled = PullError::Stalled {
                    source_star: self.settings.source.clone(),
                    offset: self.offset,
                    total: self.total,
                    seconds: now.duration_since(heard).as_secs_f64(),
                };
                let mut actions = vec![Action::DropConnection];
                actions.extend(self.failed(stalled, now));
                actions
            }
            (Event::Timer, State::BackingOff { until }) if now >= until => self.request(now),
            // An early timer, or a frame that does not belong here.
            (Event::Timer, _) => Vec::new(),
            (event, _) => {
                let what = match event {
                    Event::Header { .. } => "a second header".to_owned(),
                    Event::Chunk { offset, .. } => format!("a chunk at {offset} before a header"),
                    Event::Trailer => "a trailer before a header".to_owned(),
                    _ => format!("{event:?} out of place"),
                };
                let error = PullError::Protocol {
                    source_star: self.settings.source.clone(),
                    what,
                };
                self.finish(Err(error), false)
            }
        }
    }

    fn deadline(&self) -> Instant {
        self.progressed + self.settings.window
    }

    fn request(&mut self, now: Instant) -> Vec<Action> {
        self.state = State::Requesting {
            by: (now + ANSWER_TIMEOUT).min(self.deadline()),
        };
        vec![Action::Request {
            offset: self.offset,
        }]
    }

    fn header(&mut self, size: u64, version: FileVersion, now: Instant) -> Vec<Action> {
        let source = &self.settings.source;
        if self.version.is_some_and(|known| known != version) {
            self.attempt += 1;
            self.offset = 0;
            self.version = None;
            let reason = format!(
                "the source file on {source} changed since the transfer began; starting again from zero"
            );
            let mut actions = vec![Action::Report(Note::Retrying {
                attempt: self.attempt,
                after: Duration::ZERO,
                reason,
            })];
            actions.extend(self.request(now));
            return actions;
        }
        let start = self.offset;
        if size != version.size.saturating_sub(start) {
            let error = PullError::Protocol {
                source_star: source.clone(),
                what: format!(
                    "{size} bytes from offset {start} of a file of {}",
                    version.size
                ),
            };
            return self.finish(Err(error), false);
        }
        self.version = Some(version);
        self.total = version.size;
        self.since_checkpoint = 0;
        self.state = State::Receiving { heard: now };
        let mut actions = vec![Action::Segment { start, version }];
        if start > 0 {
            actions.push(Action::Report(Note::Resumed {
                offset: start,
                total: self.total,
            }));
        }
        actions
    }

    fn chunk(&mut self, at: u64, len: u64, now: Instant) -> Vec<Action> {
        let source = &self.settings.source;
        let violation = if at != self.offset {
            Some(format!("chunk at offset {at}, expected {}", self.offset))
        } else if len > CHUNK_SIZE as u64 || at + len > self.total {
            Some(format!("chunk of {len} bytes at {at} overruns the file"))
        } else {
            None
        };
        if let Some(what) = violation {
            let error = PullError::Protocol {
                source_star: source.clone(),
                what,
            };
            return self.finish(Err(error), false);
        }
        self.offset += len;
        self.since_checkpoint += len;
        self.state = State::Receiving { heard: now };
        if len > 0 {
            self.progressed = now;
        }
        if self.since_checkpoint >= CHECKPOINT {
            self.since_checkpoint = 0;
            return vec![Action::Write, Action::Checkpoint];
        }
        vec![Action::Write]
    }

    fn failed(&mut self, error: PullError, now: Instant) -> Vec<Action> {
        if !error.is_transient() {
            return self.finish(Err(error), false);
        }
        self.attempt += 1;
        let delay = backoff(self.attempt, (self.settings.jitter)());
        if now + delay >= self.deadline() {
            let error = PullError::GaveUp {
                attempts: self.attempt,
                seconds: now.duration_since(self.started).as_secs_f64(),
                window: self.settings.window.as_secs(),
                last: Box::new(error),
            };
            return self.finish(Err(error), false);
        }
        self.state = State::BackingOff { until: now + delay };
        vec![Action::Report(Note::Retrying {
            attempt: self.attempt,
            after: delay,
            reason: error.to_string(),
        })]
    }

    fn finish(&mut self, result: Result<Replicated, PullError>, keep: bool) -> Vec<Action> {
        self.state = State::Done;
        vec![Action::Finish { result, keep }]
    }
}

/// The delay before retry `attempt` (from 1): doubling from [`FIRST_BACKOFF`] up to
/// [`MAX_BACKOFF`], then scaled by a factor in [0.5, 1) from `jitter` in [0, 1), so that many
/// destinations do not retry in step.
pub(crate) fn backoff(attempt: u32, jitter: f64) -> Duration {
    let exp = FIRST_BACKOFF.saturating_mul(1 << attempt.saturating_sub(1).min(16));
    exp.min(MAX_BACKOFF)
        .mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use orbit_wire::{ErrorCode, WireError};

    const MIB: u64 = 1024 * 1024;

    fn version(size: u64, mtime_sec: i64) -> FileVersion {
        FileVersion {
            size,
            mtime_sec,
            mtime_nsec: 0,
            inode: 7,
        }
    }

    /// A replication under test, with its own simulated clock.
    struct Run {
        machine: Machine,
        now: Instant,
    }

    impl Run {
        fn new(window: Duration, journaled: bool, start: Start) -> (Run, Vec<Action>) {
            let now = Instant::now();
            let settings = Settings {
                source: "star-a".into(),
                star: "star-b".into(),
                window,
                journaled,
                jitter: Box::new(|| 0.0),
            };
            let mut machine = Machine::new(settings, start, now);
            let first = machine.start(now);
            (Run { machine, now }, first)
        }

        fn fresh() -> (Run, Vec<Action>) {
            Run::new(DEFAULT_TIMEOUT, true, Start::default())
        }

        fn at(&mut self, later: Duration, event: Event) -> Vec<Action> {
            self.now += later;
            self.machine.handle(event, self.now)
        }

        fn on(&mut self, event: Event) -> Vec<Action> {
            self.at(Duration::ZERO, event)
        }

        /// Advances the clock to the machine's timer and fires it.
        fn fire(&mut self) -> Vec<Action> {
            let timer = self.machine.timer().expect("a timer is set");
            self.now = self.now.max(timer);
            self.machine.handle(Event::Timer, self.now)
        }

        /// The source's whole file of `size` bytes, version 1, as the answer to a request.
        fn header(&mut self, size: u64) -> Vec<Action> {
            self.on(Event::Header {
                size,
                version: version(size, 1),
            })
        }

        fn chunks(&mut self, from: u64, to: u64) {
            let mut at = from;
            while at < to {
                let len = (to - at).min(CHUNK_SIZE as u64);
                let actions = self.on(Event::Chunk { offset: at, len });
                assert_eq!(actions[0], Action::Write, "{actions:?}");
                at += len;
            }
        }
    }

    fn unavailable() -> PullError {
        PullError::Lost {
            source_star: "star-a".into(),
            what: "lost the connection",
            code: ErrorCode::Unavailable,
            message: "connection timed out".into(),
        }
    }

    fn finished(mut actions: Vec<Action>) -> (Result<Replicated, PullError>, bool) {
        match actions.pop() {
            Some(Action::Finish { result, keep }) => (result, keep),
            other => panic!("expected the end, got {other:?}"),
        }
    }

    #[test]
    fn a_clean_run_requests_receives_commits_and_publishes() {
        let (mut run, first) = Run::fresh();
        assert_eq!(first, vec![Action::Request { offset: 0 }]);
        let v = version(100_000, 1);
        let actions = run.on(Event::Header {
            size: 100_000,
            version: v,
        });
        assert_eq!(
            actions,
            vec![Action::Segment {
                start: 0,
                version: v
            }]
        );
        run.chunks(0, 100_000);
        assert_eq!(run.machine.offset(), 100_000);
        assert_eq!(
            run.on(Event::Trailer),
            vec![Action::Commit { size: 100_000 }]
        );
        assert_eq!(
            run.machine.timer(),
            None,
            "the disk commits at its own pace"
        );
        let actions = run.on(Event::Published { sha256: [9; 32] });
        let (result, keep) = finished(actions);
        assert_eq!(
            result,
            Ok(Replicated {
                bytes: 100_000,
                sha256: [9; 32]
            })
        );
        assert!(!keep);
        assert_eq!(run.machine.timer(), None);
        assert!(
            run.on(Event::Cancel).is_empty(),
            "nothing happens after the end"
        );
    }

    #[test]
    fn an_empty_file_is_a_header_and_a_trailer() {
        let (mut run, _) = Run::fresh();
        run.header(0);
        assert_eq!(run.on(Event::Trailer), vec![Action::Commit { size: 0 }]);
    }

    #[test]
    fn a_transient_failure_backs_off_then_resumes_from_the_bytes_received() {
        let (mut run, _) = Run::fresh();
        let v = version(4 * MIB, 1);
        run.on(Event::Header {
            size: 4 * MIB,
            version: v,
        });
        run.chunks(0, MIB);
        let actions = run.on(Event::Failed(unavailable()));
        let Action::Report(Note::Retrying {
            attempt,
            after,
            reason,
        }) = &actions[0]
        else {
            panic!("{actions:?}")
        };
        assert_eq!(*attempt, 1);
        assert_eq!(*after, FIRST_BACKOFF / 2, "jitter 0 halves the delay");
        assert!(reason.contains("connection timed out"), "{reason}");
        assert!(
            !run.machine.awaits_network(),
            "the failed attempt's stream is abandoned"
        );
        assert!(
            run.on(Event::Timer).is_empty(),
            "the backoff is not over yet"
        );
        assert_eq!(run.fire(), vec![Action::Request { offset: MIB }]);
        let actions = run.on(Event::Header {
            size: 3 * MIB,
            version: v,
        });
        assert_eq!(
            actions,
            vec![
                Action::Segment {
                    start: MIB,
                    version: v
                },
                Action::Report(Note::Resumed {
                    offset: MIB,
                    total: 4 * MIB
                })
            ]
        );
        run.chunks(MIB, 4 * MIB);
        assert_eq!(
            run.on(Event::Trailer),
            vec![Action::Commit { size: 4 * MIB }]
        );
    }

    #[test]
    fn a_permanent_failure_ends_at_once_and_removes_the_temporary_file() {
        for error in [
            PullError::Refused {
                source_star: "star-a".into(),
                error: WireError::new(ErrorCode::PermissionDenied, "token expired"),
            },
            PullError::Mismatch("no".into()),
            PullError::Dial(crate::pool::DialError::NotThatStar {
                addr: "h:1".into(),
                why: "is star-c".into(),
            }),
        ] {
            let (mut run, _) = Run::fresh();
            let actions = run.on(Event::Failed(error.clone()));
            let (result, keep) = finished(actions);
            assert_eq!(result, Err(error));
            assert!(!keep);
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter_between_half_and_all() {
        assert_eq!(backoff(1, 0.999_999).as_millis(), 199);
        assert_eq!(backoff(2, 0.0), Duration::from_millis(200));
        assert_eq!(backoff(3, 0.0), Duration::from_millis(400));
        assert_eq!(backoff(10, 0.0), MAX_BACKOFF / 2);
        assert_eq!(backoff(u32::MAX, 1.0), MAX_BACKOFF);
        assert_eq!(
            backoff(1, -3.0),
            FIRST_BACKOFF / 2,
            "a bad jitter is clamped"
        );
    }

    #[test]
    fn retries_stop_once_the_window_passes_without_progress() {
        let window = Duration::from_secs(3);
        let (mut run, _) = Run::new(window, true, Start::default());
        let mut attempts = 0;
        let (error, elapsed) = loop {
            let actions = run.on(Event::Failed(unavailable()));
            if let Some(Action::Finish { result, .. }) = actions.last() {
                break (result.clone().unwrap_err(), run.now);
            }
            attempts += 1;
            assert_eq!(run.fire(), vec![Action::Request { offset: 0 }]);
        };
        let PullError::GaveUp {
            attempts: made,
            window: secs,
            last,
            ..
        } = &error
        else {
            panic!("{error:?}")
        };
        assert_eq!(*made, attempts + 1);
        assert_eq!(*secs, 3);
        assert_eq!(**last, unavailable());
        assert_eq!(error.code(), ErrorCode::DeadlineExceeded);
        assert!(elapsed.duration_since(run.machine.started) < window);
        assert!(attempts >= 3, "{attempts} retries in 3 s of simulated time");
    }

    #[test]
    fn progress_moves_the_deadline() {
        let window = Duration::from_secs(3);
        let (mut run, _) = Run::new(window, true, Start::default());
        run.header(10 * CHUNK_SIZE as u64);
        // A chunk every two seconds for 18 s: slow, but never 3 s without progress.
        for i in 0..9 {
            let actions = run.at(
                Duration::from_secs(2),
                Event::Chunk {
                    offset: i * CHUNK_SIZE as u64,
                    len: CHUNK_SIZE as u64,
                },
            );
            assert_eq!(actions, vec![Action::Write]);
        }
        // The connection drops; the retry is within the window counted from the last chunk.
        let actions = run.at(Duration::from_secs(1), Event::Failed(unavailable()));
        assert!(matches!(actions[0], Action::Report(Note::Retrying { .. })));
    }

    #[test]
    fn a_silent_source_is_a_stall_and_its_connection_is_dropped() {
        let (mut run, _) = Run::fresh();
        run.header(4 * MIB);
        run.chunks(0, MIB);
        let heard = run.now;
        assert_eq!(run.machine.timer(), Some(heard + STALL_TIMEOUT));
        let actions = run.fire();
        assert_eq!(actions[0], Action::DropConnection);
        let Action::Report(Note::Retrying { reason, .. }) = &actions[1] else {
            panic!("{actions:?}")
        };
        assert_eq!(
            reason,
            &format!(
                "star-a sent nothing for 10 s after {MIB} of {} bytes",
                4 * MIB
            )
        );
        assert_eq!(run.fire(), vec![Action::Request { offset: MIB }]);
    }

    #[test]
    fn a_source_that_never_answers_is_retried_then_given_up() {
        let window = Duration::from_secs(40);
        let (mut run, _) = Run::new(window, false, Start::default());
        assert_eq!(run.machine.timer(), Some(run.now + ANSWER_TIMEOUT));
        let actions = run.fire();
        let Action::Report(Note::Retrying { reason, .. }) = &actions[0] else {
            panic!("{actions:?}")
        };
        assert_eq!(reason, "star-a did not answer in time");
        assert_eq!(run.fire(), vec![Action::Request { offset: 0 }]);
        // The second request's answer is due at the deadline, not 30 s later.
        assert_eq!(run.machine.timer(), Some(run.machine.started + window));
        let actions = run.fire();
        let (result, _) = finished(actions);
        assert!(
            matches!(result, Err(PullError::GaveUp { attempts: 2, .. })),
            "{result:?}"
        );
    }

    #[test]
    fn a_changed_source_version_starts_again_from_zero_and_says_so() {
        let (mut run, _) = Run::fresh();
        let old = version(4 * MIB, 1);
        run.on(Event::Header {
            size: 4 * MIB,
            version: old,
        });
        run.chunks(0, 2 * MIB);
        run.on(Event::Failed(unavailable()));
        run.fire();
        let new = version(5 * MIB, 2);
        let actions = run.on(Event::Header {
            size: 3 * MIB,
            version: new,
        });
        let Action::Report(Note::Retrying {
            attempt,
            after,
            reason,
        }) = &actions[0]
        else {
            panic!("{actions:?}")
        };
        assert_eq!((*attempt, *after), (2, Duration::ZERO));
        assert!(reason.contains("changed since the transfer began; starting again from zero"));
        assert_eq!(actions[1], Action::Request { offset: 0 });
        assert_eq!(run.machine.offset(), 0);
        let actions = run.on(Event::Header {
            size: 5 * MIB,
            version: new,
        });
        assert_eq!(
            actions,
            vec![Action::Segment {
                start: 0,
                version: new
            }],
            "from zero, with no resume announced"
        );
    }

    #[test]
    fn a_resume_after_restart_asks_for_the_journaled_offset() {
        let v = version(8 * MIB, 1);
        let start = Start {
            offset: 3 * MIB,
            version: Some(v),
        };
        let (mut run, first) = Run::new(DEFAULT_TIMEOUT, true, start);
        assert_eq!(first, vec![Action::Request { offset: 3 * MIB }]);
        assert_eq!(run.machine.total(), 8 * MIB);
        let actions = run.on(Event::Header {
            size: 5 * MIB,
            version: v,
        });
        assert_eq!(
            actions[1],
            Action::Report(Note::Resumed {
                offset: 3 * MIB,
                total: 8 * MIB
            })
        );
        // An entry that vouches for nothing starts from zero.
        let (_, first) = Run::new(
            DEFAULT_TIMEOUT,
            true,
            Start {
                offset: 0,
                version: Some(v),
            },
        );
        assert_eq!(first, vec![Action::Request { offset: 0 }]);
    }

    #[test]
    fn every_checkpoint_interval_the_disk_checkpoints() {
        let (mut run, _) = Run::fresh();
        let size = CHECKPOINT * 2 + 5;
        run.on(Event::Header {
            size,
            version: version(size, 1),
        });
        let mut checkpoints = 0;
        let mut at = 0;
        while at < size {
            let len = (size - at).min(CHUNK_SIZE as u64);
            let actions = run.on(Event::Chunk { offset: at, len });
            checkpoints += actions.iter().filter(|a| **a == Action::Checkpoint).count();
            at += len;
        }
        assert_eq!(checkpoints, 2);
    }

    #[test]
    fn protocol_violations_end_the_replication_with_data_loss() {
        let header = |run: &mut Run| run.header(3 * CHUNK_SIZE as u64);
        type Case = Box<dyn Fn(&mut Run) -> Vec<Action>>;
        let cases: Vec<(Case, &str)> = vec![
            (
                Box::new(|run| {
                    run.on(Event::Header {
                        size: 5,
                        version: version(10, 1),
                    })
                }),
                "5 bytes from offset 0 of a file of 10",
            ),
            (
                Box::new(move |run| {
                    header(run);
                    run.on(Event::Chunk { offset: 7, len: 1 })
                }),
                "chunk at offset 7, expected 0",
            ),
            (
                Box::new(move |run| {
                    header(run);
                    run.on(Event::Chunk {
                        offset: 0,
                        len: CHUNK_SIZE as u64 + 1,
                    })
                }),
                "overruns the file",
            ),
            (
                Box::new(move |run| {
                    header(run);
                    run.on(Event::Trailer)
                }),
                "sent 0 of 196608 bytes",
            ),
            (
                Box::new(move |run| {
                    header(run);
                    run.header(1)
                }),
                "a second header",
            ),
            (
                Box::new(|run| run.on(Event::Chunk { offset: 0, len: 1 })),
                "before a header",
            ),
        ];
        for (act, expected) in cases {
            let (mut run, _) = Run::fresh();
            let actions = act(&mut run);
            let (result, keep) = finished(actions);
            let error = result.clone().unwrap_err();
            assert_eq!(error.code(), ErrorCode::DataLoss, "{error}");
            assert!(error.to_string().contains(expected), "{error}");
            assert!(!keep);
        }
    }

    #[test]
    fn cancel_removes_and_shutdown_keeps_when_journaled() {
        let (mut run, _) = Run::fresh();
        run.header(MIB);
        let actions = run.on(Event::Cancel);
        let (result, keep) = finished(actions);
        assert_eq!(result, Err(PullError::Cancelled));
        assert!(!keep);

        // Shutdown mid-transfer, with a journal: kept to resume, and the controller is told.
        let (mut run, _) = Run::fresh();
        run.header(MIB);
        run.chunks(0, MIB / 2);
        let actions = run.on(Event::Shutdown);
        let (result, keep) = finished(actions);
        assert!(keep);
        assert!(result
            .as_ref()
            .unwrap_err()
            .to_string()
            .ends_with("the transfer resumes when the star starts again"));

        // Without a journal there is nothing to resume from.
        let (mut run, _) = Run::new(DEFAULT_TIMEOUT, false, Start::default());
        let (result, keep) = finished(run.on(Event::Shutdown));
        assert!(!keep);
        assert_eq!(result.as_ref().unwrap_err().code(), ErrorCode::Unavailable);

        // Cancel while backing off.
        let (mut run, _) = Run::fresh();
        run.on(Event::Failed(unavailable()));
        let (result, _) = finished(run.on(Event::Cancel));
        assert_eq!(result, Err(PullError::Cancelled));
    }

    #[test]
    fn a_disk_failure_is_the_end_whatever_the_code() {
        let (mut run, _) = Run::fresh();
        run.header(MIB);
        let full = PullError::Disk(crate::replication::error::Local(WireError::new(
            ErrorCode::Unavailable,
            "odd, but local",
        )));
        let (result, _) = finished(run.on(Event::Failed(full.clone())));
        assert_eq!(result, Err(full));
    }
}
