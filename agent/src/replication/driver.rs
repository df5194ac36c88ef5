//! The network side of one replication, and nothing else: it performs what the core
//! ([`super::machine`]) decides (a read request on a pooled connection, chunks handed to the
//! disk, a commit) and feeds the core what happened, with the time. Every decision (retry or
//! give up, resume from where, restart on a changed source, stall and deadline, checkpoints) is
//! the core's.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use std::collections::BTreeSet;

use quinn::RecvStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use orbit_certs::{Attester, Signed};
use orbit_wire::fanout::{Attestation, RelayRequest, Upstream};
use orbit_wire::{
    ByteRange, ControlEvent, ControlRequest, DataFrame, ErrorCode, FileVersion, ReadRequest,
    ReplicateFile, WANTS_MODE,
};

use super::disk::{Commit, Store};
use super::error::PullError;
use super::machine::{Action, Event, Machine, Note, Replicated};
use super::registry::Transfer;
use super::writer::{WriteMsg, Writer};
use super::Fanout;
use crate::error::{connection_lost, varint, ToWire};
use crate::framed::{self, write_frame, DataRead, FramedError, Payload};
use crate::jail::Confined;
use crate::pool::{PeerConn, Pool};

pub(super) type Answer = (DataFrame, RecvStream, Arc<PeerConn>);

/// What the network is doing for the replication now.
enum Io {
    /// Nothing: backing off, committing, or ended.
    Idle,
    /// A read request is out.
    Requesting(Pin<Box<dyn Future<Output = Result<Answer, PullError>> + Send>>),
    /// A data stream is being read.
    Receiving {
        recv: RecvStream,
        peer: Arc<PeerConn>,
    },
}

/// One replication's network side.
pub(super) struct Driver<'a> {
    pub(super) pool: &'a Arc<Pool>,
    pub(super) store: &'a Store,
    pub(super) cmd: &'a ReplicateFile,
    pub(super) target: &'a Confined,
    /// Where progress and notes go.
    pub(super) transfer: &'a Transfer,
    pub(super) writer: Option<Writer>,
    io: Io,
    /// The chunk the core is deciding about.
    payload: Option<Payload>,
    /// The source's digest of this attempt's bytes, once its trailer came.
    trailer: Option<[u8; 32]>,
    /// A fan-out destination's upstreams and what it checks.
    relayed: Option<Relayed<'a>>,
    /// The attestation that came after this attempt's trailer, not yet checked.
    attested: Option<Attestation>,
    /// The permission bits the sources gave, all of them in common; `None` while no source
    /// said (one of an earlier release).
    mode: Option<u32>,
}

/// What a fan-out destination adds to a replication: where else the file may come from, and
/// the origin's attestation it must have before it publishes.
pub(super) struct Relayed<'a> {
    fanout: &'a Fanout,
    attester: Arc<Attester>,
    /// The upstreams still trusted, parent first, then the origin: the order to ask them in.
    sources: Vec<Upstream>,
    /// Which is asked now.
    current: usize,
    /// The attestation of the bytes received, checked.
    attestation: Option<Attestation>,
    /// The origin's version of the bytes being written.
    version: Option<FileVersion>,
    /// The relays (not the origin) that sent bytes of the file being written.
    contributors: BTreeSet<String>,
}

impl<'a> Relayed<'a> {
    /// Asks `fanout`'s upstreams but those `excluded`, then the origin `cmd` names.
    pub(super) fn new(
        fanout: &'a Fanout,
        attester: Arc<Attester>,
        cmd: &ReplicateFile,
        excluded: &BTreeSet<String>,
    ) -> Relayed<'a> {
        let mut sources: Vec<Upstream> = fanout
            .upstreams
            .iter()
            .filter(|u| !excluded.contains(&u.star) && u.star != cmd.source)
            .cloned()
            .collect();
        sources.push(Upstream {
            star: cmd.source.clone(),
            addr: cmd.source_addr.clone(),
            path: cmd.source_path.clone(),
            token: cmd.token.clone(),
        });
        Relayed {
            fanout,
            attester,
            sources,
            current: 0,
            attestation: None,
            version: None,
            contributors: BTreeSet::new(),
        }
    }

    fn asked(&self) -> &Upstream {
        &self.sources[self.current]
    }

    fn asking_the_origin(&self) -> bool {
        self.current + 1 == self.sources.len()
    }

    /// Moves on to the next source, round the list.
    fn next(&mut self) {
        self.current = (self.current + 1) % self.sources.len();
    }

    /// Checks that `attestation` vouches for this transfer's file, in the version received,
    /// signed by the origin with a certificate of this grid.
    fn check(&self, attestation: &Attestation, cmd: &ReplicateFile) -> Result<(), String> {
        let origin = Upstream {
            star: cmd.source.clone(),
            addr: String::new(),
            path: cmd.source_path.clone(),
            token: String::new(),
        };
        check_attestation(&self.attester, attestation, cmd.transfer_id, &origin)?;
        if Some(attestation.claims.version) != self.version {
            return Err("it is for another version of the file".into());
        }
        Ok(())
    }
}

impl<'a> Driver<'a> {
    pub(super) fn new(
        pool: &'a Arc<Pool>,
        store: &'a Store,
        cmd: &'a ReplicateFile,
        target: &'a Confined,
        transfer: &'a Transfer,
        writer: Option<Writer>,
        relayed: Option<Relayed<'a>>,
    ) -> Driver<'a> {
        Driver {
            pool,
            store,
            cmd,
            target,
            transfer,
            writer,
            io: Io::Idle,
            payload: None,
            trailer: None,
            relayed,
            attested: None,
            mode: None,
        }
    }

    /// Runs `machine` to its end: a cancel ends it for good, `shutdown` in a resumable state
    /// when the star keeps a journal.
    ///
    /// # Errors
    ///
    /// Why nothing was published.
    /// With it, the relays that sent bytes of the file it ended with.
    pub(super) async fn run(
        mut self,
        mut machine: Machine,
        cancel: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> (Result<Replicated, PullError>, BTreeSet<String>) {
        let mut actions = machine.start(Instant::now());
        loop {
            let mut event = None;
            for action in actions {
                if let Action::Finish { result, keep } = action {
                    let relays = self
                        .relayed
                        .as_mut()
                        .map(|r| std::mem::take(&mut r.contributors))
                        .unwrap_or_default();
                    return (self.finish(result, keep).await, relays);
                }
                event = self.perform(action, &machine).await;
                if event.is_some() {
                    break;
                }
            }
            let event = match event {
                Some(event) => event,
                None => self.next_event(&machine, cancel, shutdown).await,
            };
            actions = machine.handle(event, Instant::now());
        }
    }

    /// Does `action`; returns an event when doing it failed or finished something at once.
    async fn perform(&mut self, action: Action, machine: &Machine) -> Option<Event> {
        let id = self.cmd.transfer_id;
        match action {
            Action::Request { offset } => {
                self.stop(ErrorCode::Cancelled);
                let (pool, cmd) = (self.pool.clone(), self.cmd.clone());
                self.io = match &self.relayed {
                    Some(relayed) => {
                        let from = relayed.asked().clone();
                        Io::Requesting(Box::pin(async move {
                            relay_request(&pool, &cmd, &from, offset).await
                        }))
                    }
                    None => {
                        Io::Requesting(Box::pin(async move { request(&pool, &cmd, offset).await }))
                    }
                };
                None
            }
            Action::Segment { start, version } => {
                self.transfer.progress.send_replace((start, version.size));
                if let Some(relayed) = &mut self.relayed {
                    relayed.version = Some(version);
                    if start == 0 {
                        relayed.contributors.clear();
                    }
                }
                if self.writer.is_none() {
                    // Only now, with the source's answer in hand, touch the destination's disk:
                    // a refused read leaves not even an empty parent directory behind.
                    let fanout = self.relayed.as_ref().map(|r| r.fanout);
                    match Writer::create(self.store, self.target, self.cmd, fanout).await {
                        Ok(writer) => self.writer = Some(writer),
                        Err(e) => return Some(Event::Failed(e)),
                    }
                }
                self.write(WriteMsg::Segment { start, version }).await
            }
            Action::Write => {
                let payload = self.payload.take()?;
                let failed = self.write(WriteMsg::Data(payload)).await;
                self.transfer
                    .progress
                    .send_replace((machine.offset(), machine.total()));
                failed
            }
            Action::Checkpoint => self.write(WriteMsg::Checkpoint).await,
            Action::Commit { size } => {
                let writer = self.writer.take()?;
                let mut expect = self.cmd.expect_sha256;
                let mut attestation = None;
                if let Some(relayed) = &mut self.relayed {
                    let Some(attested) = relayed.attestation.take() else {
                        return Some(Event::Failed(PullError::Internal(
                            "no attestation came with the trailer".into(),
                        )));
                    };
                    let origin = attested.claims.sha256;
                    if expect.is_some_and(|e| e != origin) {
                        let _ = writer.abandon(false).await;
                        return Some(Event::Failed(PullError::Mismatch(format!(
                            "the origin attests SHA-256 {}, the command expects {}",
                            hex::encode(origin),
                            hex::encode(expect.unwrap_or_default())
                        ))));
                    }
                    expect = Some(origin);
                    attestation = Some(attested);
                }
                let commit = Commit {
                    size,
                    trailer: self.trailer.take().unwrap_or_default(),
                    expect,
                    mode: self.mode,
                };
                Some(match writer.commit(commit).await {
                    Ok(sha256) => {
                        if let (Some(relayed), Some(attested)) = (&self.relayed, attestation) {
                            // Published: the stars relaying from here may finish.
                            let attested = Arc::new(attested);
                            relayed
                                .fanout
                                .feed
                                .send_modify(|f| f.attestation = Some(attested));
                        }
                        Event::Published { sha256 }
                    }
                    Err(e) => Event::Failed(e),
                })
            }
            Action::DropConnection => {
                if let Io::Receiving { peer, .. } = &self.io {
                    peer.conn
                        .close(varint(ErrorCode::Unavailable), b"no data from the source");
                }
                if let Some(relayed) = &mut self.relayed {
                    relayed.next();
                }
                None
            }
            Action::Report(Note::Retrying {
                attempt,
                after,
                reason,
            }) => {
                let after_ms = after.as_millis() as u64;
                warn!(transfer = %id, attempt, after_ms, "retrying: {reason}");
                let _ = self.transfer.notes.send(ControlEvent::Retrying {
                    attempt,
                    after_ms,
                    reason,
                });
                None
            }
            Action::Report(Note::Resumed { offset, total }) => {
                info!(transfer = %id, offset, total, "resuming");
                let _ = self
                    .transfer
                    .notes
                    .send(ControlEvent::Resumed { offset, total });
                None
            }
            // `run` ends with it before asking for anything else.
            Action::Finish { .. } => None,
        }
    }

    async fn write(&mut self, msg: WriteMsg) -> Option<Event> {
        let writer = self.writer.as_mut()?;
        writer.send(msg).await.err().map(Event::Failed)
    }

    /// Waits for what happens next: the network, the core's timer, a cancel or the shutdown.
    async fn next_event(
        &mut self,
        machine: &Machine,
        cancel: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> Event {
        if !machine.awaits_network() {
            // A failed attempt's stream: what is left of it is not read.
            self.stop(ErrorCode::Cancelled);
        }
        let timer = machine.timer();
        let timer = async move {
            match timer {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let source = match &self.relayed {
            Some(relayed) => &relayed.asked().star,
            None => &self.cmd.source,
        };
        let relaying = self.relayed.is_some();
        let (offset, total) = (machine.offset(), machine.total());
        let io = &mut self.io;
        let payload = &mut self.payload;
        let trailer = &mut self.trailer;
        let attested = &mut self.attested;
        let mode = &mut self.mode;
        let feed = self.relayed.as_ref().map(|r| &r.fanout.feed);
        let network = async move {
            match io {
                Io::Idle => std::future::pending().await,
                Io::Requesting(answer) => match answer.await {
                    Ok((first, recv, peer)) => {
                        *io = Io::Receiving { recv, peer };
                        from_frame(source, first, true)
                    }
                    Err(e) => {
                        *io = Io::Idle;
                        Event::Failed(e)
                    }
                },
                Io::Receiving { recv, peer } => match read_past_mode(recv, mode, feed).await {
                    Ok(DataRead::Chunk {
                        offset: at,
                        payload: data,
                    }) => {
                        let len = data.len() as u64;
                        peer.received(len);
                        *payload = Some(data);
                        Event::Chunk { offset: at, len }
                    }
                    Ok(DataRead::Frame(DataFrame::Trailer { sha256 })) => {
                        *trailer = Some(sha256);
                        if !relaying {
                            return Event::Trailer;
                        }
                        // A relay stream ends with the origin's attestation.
                        match framed::read_data_frame(recv).await {
                            Ok(DataRead::Frame(DataFrame::Attested(attestation))) => {
                                *attested = Some(attestation);
                                Event::Trailer
                            }
                            Ok(_) => Event::Failed(PullError::Protocol {
                                source_star: source.clone(),
                                what: "no attestation after the trailer".into(),
                            }),
                            Err(e) => {
                                let e = e.to_wire();
                                Event::Failed(PullError::Broken {
                                    source_star: source.clone(),
                                    offset,
                                    total,
                                    code: e.code,
                                    message: e.message,
                                })
                            }
                        }
                    }
                    Ok(DataRead::Frame(frame)) => from_frame(source, frame, false),
                    Err(e) => {
                        let e = e.to_wire();
                        Event::Failed(PullError::Broken {
                            source_star: source.clone(),
                            offset,
                            total,
                            code: e.code,
                            message: e.message,
                        })
                    }
                },
            }
        };
        // A frame read cut short by another branch is never resumed: every other branch ends
        // the attempt or the replication, and with it this stream.
        let (event, from_network) = tokio::select! {
            _ = cancel.cancelled() => (Event::Cancel, false),
            _ = shutdown.cancelled() => (Event::Shutdown, false),
            _ = timer => (Event::Timer, false),
            event = network => (event, true),
        };
        match from_network {
            true => self.screen(event),
            false => event,
        }
    }

    /// For a fan-out destination, what the network's `event` means: the attestation is checked
    /// at the trailer, bytes are credited to the relay that sent them, and a relay's failure
    /// is one to retry from the next upstream.
    fn screen(&mut self, event: Event) -> Event {
        let Some(relayed) = &mut self.relayed else {
            return event;
        };
        let star = relayed.asked().star.clone();
        let event = match event {
            Event::Trailer => match self.attested.take() {
                Some(attestation) => match relayed.check(&attestation, self.cmd) {
                    Ok(()) => {
                        relayed.attestation = Some(attestation);
                        Event::Trailer
                    }
                    Err(why) => Event::Failed(PullError::BadAttestation {
                        star: star.clone(),
                        why,
                    }),
                },
                None => Event::Trailer,
            },
            Event::Chunk { len, .. } if len > 0 && !relayed.asking_the_origin() => {
                relayed.contributors.insert(star.clone());
                event
            }
            other => other,
        };
        let Event::Failed(error) = event else {
            return event;
        };
        if relayed.asking_the_origin() {
            if error.is_transient() && relayed.sources.len() > 1 {
                relayed.next();
            }
            return Event::Failed(error);
        }
        warn!(transfer = %self.cmd.transfer_id, relay = %star, "relay failed, asking the next upstream: {error}");
        relayed.next();
        Event::Failed(PullError::Upstream {
            star,
            cause: Box::new(error),
        })
    }

    /// Abandons the data stream, if any, telling the source why.
    fn stop(&mut self, code: ErrorCode) {
        if let Io::Receiving { recv, .. } = &mut self.io {
            let _ = recv.stop(varint(code));
        }
        self.io = Io::Idle;
    }

    /// The end: returns the result after the disk has published, or removed or kept the
    /// temporary file.
    async fn finish(
        mut self,
        result: Result<Replicated, PullError>,
        keep: bool,
    ) -> Result<Replicated, PullError> {
        let error = match result {
            Ok(done) => return Ok(done),
            Err(error) => error,
        };
        self.stop(error.code());
        let Some(writer) = self.writer.take() else {
            // No temporary file was made, so there is nothing to resume from.
            return Err(match error {
                PullError::ShuttingDown { star, .. } => PullError::ShuttingDown {
                    star,
                    resumes: false,
                },
                other => other,
            });
        };
        // If the disk failed first (a full disk, say), its error is the cause.
        Err(writer.abandon(keep).await.unwrap_or(error))
    }
}

/// The event a data stream's `first` frame, or a later one, stands for.
fn from_frame(source: &str, frame: DataFrame, first: bool) -> Event {
    let source_star = source.to_owned();
    match frame {
        DataFrame::Header { size, version, .. } => Event::Header { size, version },
        DataFrame::Error { error, .. } if first => {
            Event::Failed(PullError::Refused { source_star, error })
        }
        DataFrame::Error { error, .. } => {
            Event::Failed(PullError::SourceFailed { source_star, error })
        }
        DataFrame::Trailer { .. } => Event::Trailer,
        DataFrame::Chunk { offset, data } => Event::Chunk {
            offset,
            len: data.len() as u64,
        },
        DataFrame::Attested(_) => Event::Failed(PullError::Protocol {
            source_star,
            what: "an attestation out of place".into(),
        }),
        DataFrame::Mode(_) => Event::Failed(PullError::Protocol {
            source_star,
            what: "permission bits before the header".into(),
        }),
    }
}

/// Reads the next frame of a data stream; a `Mode` frame is taken into `mode` (and told to the
/// stars relaying from here through `feed`) and the frame after it returned instead.
async fn read_past_mode(
    recv: &mut quinn::RecvStream,
    mode: &mut Option<u32>,
    feed: Option<&tokio::sync::watch::Sender<super::Feed>>,
) -> Result<DataRead, FramedError> {
    loop {
        match framed::read_data_frame(recv).await? {
            DataRead::Frame(DataFrame::Mode(bits)) => {
                *mode = Some(common_mode(*mode, bits));
                if let Some(feed) = feed {
                    feed.send_modify(|f| f.mode = *mode);
                }
            }
            other => return Ok(other),
        }
    }
}

/// The permission bits that `known` (what earlier sources or attempts gave) and `bits` have in
/// common, without setuid, setgid or sticky: a copy is never more open than any source says.
pub(super) fn common_mode(known: Option<u32>, bits: u32) -> u32 {
    known.unwrap_or(0o777) & bits & 0o777
}

/// Sends the read request for the bytes from `start` and waits for the data stream's first
/// frame. Cancel-safe: a request dropped before its answer is forgotten by the connection.
async fn request(pool: &Arc<Pool>, cmd: &ReplicateFile, start: u64) -> Result<Answer, PullError> {
    let source = &cmd.source;
    let peer = pool.get(source, &cmd.source_addr).await?;
    let answer = peer.expect_stream();
    let request = ReadRequest {
        request_id: answer.id(),
        transfer_id: cmd.transfer_id,
        path: cmd.source_path.clone(),
        token: cmd.token.clone(),
        range: ByteRange {
            start,
            end: u64::MAX,
        },
    };
    let lost = |what: &'static str, e: orbit_wire::WireError| PullError::Lost {
        source_star: source.clone(),
        what,
        code: e.code,
        message: e.message,
    };
    let sent = async {
        let mut send = peer
            .conn
            .open_uni()
            .await
            .map_err(|e| connection_lost(&e))?;
        write_frame(&mut send, &request)
            .await
            .map_err(|e| e.to_wire())?;
        send.finish()
            .map_err(|e| orbit_wire::WireError::new(ErrorCode::Unavailable, e.to_string()))
    };
    sent.await
        .map_err(|e| lost("could not send the read request", e))?;
    tokio::select! {
        answer = answer => match answer {
            Some((first, recv)) => Ok((first, recv, peer)),
            None => Err(PullError::Lost {
                source_star: source.clone(),
                what: "the read request",
                code: ErrorCode::Unavailable,
                message: "dropped without an answer".into(),
            }),
        },
        e = peer.conn.closed() => Err(lost("lost the connection", connection_lost(&e))),
    }
}

/// Checks that `attestation` is `origin`'s, for its path in transfer `id`, signed with a star
/// certificate of this grid that names `origin`.
pub(super) fn check_attestation(
    attester: &Attester,
    attestation: &Attestation,
    id: orbit_wire::TransferId,
    origin: &Upstream,
) -> Result<(), String> {
    let claims = &attestation.claims;
    if claims.transfer_id != id {
        return Err(format!("it is for transfer {}", claims.transfer_id));
    }
    if claims.origin != origin.star || claims.path != origin.path {
        return Err(format!(
            "it is for {}:{}, not {}:{}",
            claims.origin, claims.path, origin.star, origin.path
        ));
    }
    let signed = Signed {
        scheme: attestation.scheme,
        signature: attestation.signature.to_vec(),
        certificate: attestation.certificate.to_vec(),
    };
    let signer = attester
        .verify(&claims.signed_bytes(), &signed)
        .map_err(|e| e.to_string())?;
    if signer.name != origin.star {
        return Err(format!(
            "it is signed by {}, not by {}",
            signer.name, origin.star
        ));
    }
    Ok(())
}

/// Sends a relay request to `from` (an upstream, or the origin) for the bytes from `start` and
/// waits for the stream's first frame. Cancel-safe as [`request`] is.
async fn relay_request(
    pool: &Arc<Pool>,
    cmd: &ReplicateFile,
    from: &Upstream,
    start: u64,
) -> Result<Answer, PullError> {
    let range = ByteRange {
        start,
        end: u64::MAX,
    };
    open_relay(pool, cmd.transfer_id, &cmd.source, from, range).await
}

/// Sends `from` a relay request for `range` of its file in transfer `id` from `origin`, and
/// waits for the stream's first frame.
pub(super) async fn open_relay(
    pool: &Arc<Pool>,
    id: orbit_wire::TransferId,
    origin: &str,
    from: &Upstream,
    range: ByteRange,
) -> Result<Answer, PullError> {
    open_relay_on(pool, id, origin, from, range, 0, WANTS_MODE).await
}

/// As [`open_relay`], on connection `lane` to the star ([`Pool::get_lane`]), the request's id
/// `flags` ([`WANTS_MODE`], [`orbit_wire::RANGE_UNHASHED`]).
pub(super) async fn open_relay_on(
    pool: &Arc<Pool>,
    id: orbit_wire::TransferId,
    origin: &str,
    from: &Upstream,
    range: ByteRange,
    lane: usize,
    flags: u64,
) -> Result<Answer, PullError> {
    let star = &from.star;
    let peer = pool.get_lane(star, &from.addr, lane).await?;
    let lost = |what: &'static str, e: orbit_wire::WireError| PullError::Lost {
        source_star: star.clone(),
        what,
        code: e.code,
        message: e.message,
    };
    let request = ControlRequest::Relay(RelayRequest {
        // One request to a stream: the id only carries the flags.
        request_id: flags,
        transfer_id: id,
        origin: origin.to_owned(),
        path: from.path.clone(),
        token: from.token.clone(),
        range,
    });
    let (mut send, mut recv) = peer
        .conn
        .open_bi()
        .await
        .map_err(|e| lost("could not send the relay request", connection_lost(&e)))?;
    write_frame(&mut send, &request)
        .await
        .map_err(|e| lost("could not send the relay request", e.to_wire()))?;
    let _ = send.finish();
    match framed::read_data_frame(&mut recv).await {
        Ok(DataRead::Frame(first)) => Ok((first, recv, peer)),
        Ok(DataRead::Chunk { .. }) => Err(PullError::Protocol {
            source_star: star.clone(),
            what: "a chunk before the header".into(),
        }),
        Err(e) => Err(lost("no answer to the relay request", e.to_wire())),
    }
}
