//! Fan-out: one file to many stars, each pulling from a star still receiving it (relay reads),
//! under the origin's signed digest. Real stars on 127.0.0.1:0; the commands go to each
//! destination as `ControlRequest::ReplicateFanout`, as orbitctl sends them.

use std::net::SocketAddr;
use std::path::PathBuf;

use orbit_agent::Star;
use orbit_tests::*;
use orbit_wire::fanout::{AttestClaims, Attestation, RelayRequest, ReplicateFanout, Upstream};
use orbit_wire::{
    ByteRange, ControlEvent, ControlRequest, DataFrame, ErrorCode, FileVersion, ReplicateFile,
    TransferId, MAX_CONTROL_FRAME,
};

const MIB: usize = 1024 * 1024;

/// An origin star-a holding `src/f`, and destinations star-1.. each with a root of its own.
struct Fan {
    grid: Grid,
    src: tempfile::TempDir,
    origin: Star,
    /// The destinations, `None` once a test has taken one away to stop it.
    stars: Vec<Option<Star>>,
    dirs: Vec<tempfile::TempDir>,
    names: Vec<String>,
    addrs: Vec<SocketAddr>,
    transfer: TransferId,
}

impl Fan {
    async fn new(destinations: usize, size: usize) -> (Fan, [u8; 32]) {
        let grid = Grid::new();
        let src = tempfile::tempdir().unwrap();
        let sha = random_file(&src.path().join("f"), size);
        let origin = grid.spawn_star("star-a", &[src.path()]).await;
        let (mut stars, mut dirs, mut names, mut addrs) = (vec![], vec![], vec![], vec![]);
        for i in 1..=destinations {
            let dir = tempfile::tempdir().unwrap();
            let star = grid.spawn_star(&format!("star-{i}"), &[dir.path()]).await;
            names.push(star.name().to_owned());
            addrs.push(star.local_addr());
            stars.push(Some(star));
            dirs.push(dir);
        }
        let fan = Fan {
            grid,
            src,
            origin,
            stars,
            dirs,
            names,
            addrs,
            transfer: TransferId(rand::random()),
        };
        (fan, sha)
    }

    fn source(&self) -> String {
        wire(&self.src.path().join("f"))
    }

    fn target(&self, i: usize) -> PathBuf {
        self.dirs[i].path().join("f")
    }

    fn name(&self, i: usize) -> String {
        self.names[i].clone()
    }

    fn addr(&self, i: usize) -> SocketAddr {
        self.addrs[i]
    }

    fn star(&self, i: usize) -> &Star {
        self.stars[i].as_ref().expect("the star runs")
    }

    fn sent(&self, i: usize) -> u64 {
        self.star(i).metrics().bytes_sent()
    }

    /// The command for destination `i`, pulling from destinations `upstreams` (parent first)
    /// before the origin.
    fn command(&self, i: usize, upstreams: &[usize]) -> ReplicateFanout {
        let holder = self.name(i);
        let upstreams = upstreams
            .iter()
            .map(|&u| Upstream {
                star: self.name(u),
                addr: self.addr(u).to_string(),
                path: wire(&self.target(u)),
                token: self.grid.link_token(
                    &self.name(u),
                    &holder,
                    &wire(&self.target(u)),
                    self.transfer,
                ),
            })
            .collect();
        ReplicateFanout {
            file: ReplicateFile {
                transfer_id: self.transfer,
                source: "star-a".into(),
                source_addr: self.origin.local_addr().to_string(),
                source_path: self.source(),
                target_path: wire(&self.target(i)),
                token: self
                    .grid
                    .link_token("star-a", &holder, &self.source(), self.transfer),
                expect_sha256: None,
                timeout_secs: 20,
            },
            upstreams,
        }
    }

    /// Sends every destination its command at once, and returns each one's events.
    async fn run(&self, plan: &[Vec<usize>]) -> Vec<Vec<ControlEvent>> {
        let mut runs = tokio::task::JoinSet::new();
        for (i, upstreams) in plan.iter().enumerate() {
            let request = ControlRequest::ReplicateFanout(self.command(i, upstreams));
            let client = self.grid.controller_client();
            let (addr, name) = (self.addr(i), self.name(i));
            runs.spawn(async move {
                let events = client.control_at(addr, &name, &request).await.unwrap();
                (i, events)
            });
        }
        let mut all = vec![Vec::new(); plan.len()];
        within("the fan-out", async {
            while let Some(done) = runs.join_next().await {
                let (i, events) = done.unwrap();
                all[i] = events;
            }
        })
        .await;
        all
    }
}

/// A chain: destination i pulls from i-1, i-2, i-3, then the origin.
fn chain(n: usize) -> Vec<Vec<usize>> {
    (0..n)
        .map(|i| (1..=3).filter(|d| *d <= i).map(|d| i - d).collect())
        .collect()
}

/// Every copy is the origin's file, and no temporary file is left anywhere.
fn assert_all_verified(fan: &Fan, events: &[Vec<ControlEvent>], sha: [u8; 32], size: usize) {
    for (i, events) in events.iter().enumerate() {
        let (bytes, digest) = expect_done(events.last().unwrap().clone());
        assert_eq!((bytes, digest), (size as u64, sha), "{}", fan.name(i));
        assert_eq!(sha256_file(&fan.target(i)), sha, "{}", fan.name(i));
        assert!(part_files(fan.dirs[i].path()).is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chain_of_five_gets_the_file_with_the_origin_sending_it_once() {
    let size = 24 * MIB;
    let (fan, sha) = Fan::new(5, size).await;
    let events = fan.run(&chain(5)).await;
    assert_all_verified(&fan, &events, sha, size);
    // The origin sent the file's bytes once, to the head of the chain; every other star got
    // them from the one before it.
    assert_eq!(fan.origin.metrics().bytes_sent(), size as u64);
    for i in 0..4 {
        assert_eq!(
            fan.sent(i),
            size as u64,
            "{} relayed the file once",
            fan.name(i)
        );
    }
    assert_eq!(fan.sent(4), 0);
}

/// Issue 16.5 across hops: every copy of a chain has the origin's permission bits, the stars
/// that got the file from a relay too, and never setuid.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_hop_of_a_chain_keeps_the_origins_permission_bits() {
    use std::os::unix::fs::PermissionsExt;
    let size = 4 * MIB;
    let (fan, sha) = Fan::new(4, size).await;
    std::fs::set_permissions(
        fan.src.path().join("f"),
        std::fs::Permissions::from_mode(0o4750),
    )
    .unwrap();
    let events = fan.run(&chain(4)).await;
    assert_all_verified(&fan, &events, sha, size);
    for i in 0..4 {
        let mode = std::fs::metadata(fan.target(i))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777;
        assert_eq!(mode, 0o750, "{}", fan.name(i));
    }
    assert!(fan.sent(2) > 0, "the last star got its bytes from a relay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tree_of_fan_out_two_sends_from_the_origin_twice() {
    let size = 8 * MIB;
    let (fan, sha) = Fan::new(5, size).await;
    // Origin -> 1, 2; 1 -> 3, 4; 2 -> 5 (indices from 0 here).
    let plan = vec![vec![], vec![], vec![0], vec![0], vec![1]];
    let events = fan.run(&plan).await;
    assert_all_verified(&fan, &events, sha, size);
    assert_eq!(fan.origin.metrics().bytes_sent(), 2 * size as u64);
    assert_eq!(fan.sent(0), 2 * size as u64);
    assert_eq!(fan.sent(1), size as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_that_stops_midway_leaves_its_children_to_the_next_upstream() {
    let size = 16 * MIB;
    let (mut fan, sha) = Fan::new(3, size).await;
    // The middle star stops once the last one has bytes from it; the last goes on from the
    // next upstream on its list.
    let middle = fan.stars[1].take().unwrap();
    let plan = chain(3);
    let run = fan.run(&plan);
    tokio::pin!(run);
    first_bytes(fan.dirs[2].path(), run.as_mut()).await;
    middle.shutdown_with_drain(std::time::Duration::ZERO).await;
    let events = run.await;
    for i in [0, 2] {
        let (bytes, digest) = expect_done(events[i].last().unwrap().clone());
        assert_eq!((bytes, digest), (size as u64, sha));
        assert_eq!(sha256_file(&fan.target(i)), sha);
    }
    // The stopped star either finished first or published nothing.
    let middle = fan.target(1);
    assert!(!middle.exists() || sha256_file(&middle) == sha);
}

/// Whether any file descriptor of this process (where every star of these tests runs) is open
/// on `path`, or on the file that was at `path` and has been deleted since.
fn held_open(path: &std::path::Path) -> bool {
    let deleted = format!("{} (deleted)", path.display());
    std::fs::read_dir("/proc/self/fd").unwrap().any(|fd| {
        std::fs::read_link(fd.unwrap().path())
            .is_ok_and(|to| to == path || to.as_os_str() == deleted.as_str())
    })
}

/// A destination remembers an ended transfer for an hour, for `wait` and for the stars that
/// relay from it later. It keeps no handle on its copy meanwhile (a file deleted or replaced
/// since would keep its space, and each transfer a descriptor): a star asking later gets the
/// copy opened again by its path, and one that changed since is not relayed at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_destination_done_with_its_copy_holds_no_handle_but_still_relays_it() {
    let size = 8 * MIB;
    let (fan, sha) = Fan::new(3, size).await;
    let client = &fan.grid.controller_client();
    let ask = |i: usize, upstreams: &[usize]| {
        let request = ControlRequest::ReplicateFanout(fan.command(i, upstreams));
        let (addr, name) = (fan.addr(i), fan.name(i));
        async move {
            let events = within(
                "a destination's copy",
                client.control_at(addr, &name, &request),
            )
            .await
            .unwrap();
            expect_done(events.last().unwrap().clone())
        }
    };
    // star-1 alone first, from the origin.
    assert_eq!(ask(0, &[]).await, (size as u64, sha));
    assert!(!held_open(&fan.target(0)), "star-1 still holds its copy");
    // star-2, asked once star-1 has ended, pulls from star-1: the origin sends nothing more.
    assert_eq!(ask(1, &[0]).await, (size as u64, sha));
    assert_eq!(sha256_file(&fan.target(1)), sha);
    assert_eq!(fan.origin.metrics().bytes_sent(), size as u64);
    assert_eq!(fan.sent(0), size as u64, "star-1 relayed its copy");
    assert!(!held_open(&fan.target(1)), "star-2 still holds its copy");
    // One byte of star-1's copy is changed in place. star-3 does not get that copy from
    // star-1: it goes on to the origin, and its copy is the origin's file.
    let mut changed = std::fs::read(fan.target(0)).unwrap();
    changed[size / 2] ^= 1;
    std::fs::write(fan.target(0), changed).unwrap();
    assert_eq!(ask(2, &[0]).await, (size as u64, sha));
    assert_eq!(sha256_file(&fan.target(2)), sha);
    assert_eq!(fan.sent(0), size as u64, "star-1 relayed a changed copy");
    assert_eq!(fan.origin.metrics().bytes_sent(), 2 * size as u64);
    assert!(part_files(fan.dirs[2].path()).is_empty());
}

/// A star that answers relay requests with bytes of its own: what a broken-into relay does.
async fn lying_relay(
    grid: &Grid,
    name: &str,
    origin_attestation: Option<Attestation>,
) -> SocketAddr {
    let endpoint = star_server(grid, name);
    let addr = endpoint.local_addr().unwrap();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let attestation = origin_attestation.clone();
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let Ok(ControlRequest::Relay(request)) =
                        read_frame::<ControlRequest>(&mut recv, MAX_CONTROL_FRAME).await
                    else {
                        continue;
                    };
                    let size = 2 * MIB as u64;
                    let version = attestation.as_ref().map_or(
                        FileVersion {
                            size,
                            mtime_sec: 1,
                            mtime_nsec: 0,
                            inode: 1,
                        },
                        |a| a.claims.version,
                    );
                    let size = version.size;
                    let start = request.range.start.min(size);
                    let end = request.range.end.min(size);
                    let header = DataFrame::Header {
                        request_id: request.request_id,
                        size: end - start,
                        version,
                    };
                    let _ = write_frame(&mut send, &header).await;
                    let mut offset = start;
                    let data = bytes::Bytes::from(vec![0x5a; 64 * 1024]);
                    while offset < end {
                        let len = (end - offset).min(data.len() as u64) as usize;
                        let chunk = DataFrame::Chunk {
                            offset,
                            data: data.slice(..len),
                        };
                        let _ = write_frame(&mut send, &chunk).await;
                        offset += len as u64;
                    }
                    let trailer = DataFrame::Trailer { sha256: [0; 32] };
                    let _ = write_frame(&mut send, &trailer).await;
                    let forged = attestation.clone().unwrap_or_else(|| Attestation {
                        claims: AttestClaims {
                            transfer_id: request.transfer_id,
                            origin: request.origin.clone(),
                            path: String::new(),
                            version,
                            sha256: [0; 32],
                        },
                        scheme: 0x0403,
                        signature: bytes::Bytes::from_static(b"not a signature"),
                        certificate: bytes::Bytes::new(),
                    });
                    let _ = write_frame(&mut send, &DataFrame::Attested(forged)).await;
                    let _ = send.finish();
                    let _ = send.stopped().await;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_that_sends_wrong_bytes_is_named_and_nothing_wrong_is_published() {
    let size = 2 * MIB;
    let (fan, sha) = Fan::new(1, size).await;
    // The origin's real attestation of its file, taken with a relay request as a star would.
    let attestation = {
        let client = fan.grid.star_client("star-1");
        let conn = client
            .connect(fan.origin.local_addr(), "star-a")
            .await
            .unwrap();
        let request = ControlRequest::Relay(RelayRequest {
            request_id: 0,
            transfer_id: fan.transfer,
            origin: "star-a".into(),
            path: fan.source(),
            token: fan
                .grid
                .link_token("star-a", "star-1", &fan.source(), fan.transfer),
            range: ByteRange::FULL,
        });
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        write_frame(&mut send, &request).await.unwrap();
        send.finish().unwrap();
        let mut attested = None;
        while let Ok(frame) = read_frame::<DataFrame>(&mut recv, 1 << 20).await {
            if let DataFrame::Attested(a) = frame {
                attested = Some(a);
                break;
            }
        }
        attested.expect("the origin attests its file")
    };
    assert_eq!(attestation.claims.sha256, sha);
    // The liar passes the origin's true attestation along with bytes of its own, then a forged
    // one: both are caught.
    for genuine in [true, false] {
        let liar = lying_relay(&fan.grid, "star-x", genuine.then(|| attestation.clone())).await;
        let mut cmd = fan.command(0, &[]);
        if !genuine {
            cmd.file.transfer_id = TransferId(rand::random());
            cmd.file.token =
                fan.grid
                    .link_token("star-a", "star-1", &fan.source(), cmd.file.transfer_id);
        }
        cmd.upstreams.push(Upstream {
            star: "star-x".into(),
            addr: liar.to_string(),
            path: "/anything".into(),
            token: "unused".into(),
        });
        let _ = std::fs::remove_file(fan.target(0));
        let events = within(
            "a fan-out through a liar",
            fan.grid
                .controller_client()
                .control(fan.star(0), &ControlRequest::ReplicateFanout(cmd)),
        )
        .await
        .unwrap();
        let (bytes, digest) = expect_done(events.last().unwrap().clone());
        assert_eq!((bytes, digest), (size as u64, sha));
        assert_eq!(sha256_file(&fan.target(0)), sha);
        let named = events.iter().any(
            |e| matches!(e, ControlEvent::Retrying { reason, .. } if reason.contains("star-x")),
        );
        assert!(named, "no event names the lying relay: {events:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_destination_listed_twice_or_the_origin_as_its_own_target_is_refused_cleanly() {
    let size = MIB;
    let (fan, sha) = Fan::new(1, size).await;
    let cmd = fan.command(0, &[]);
    let request = ControlRequest::ReplicateFanout(cmd.clone());
    let client = fan.grid.controller_client();
    let (first, second) = tokio::join!(
        client.control(fan.star(0), &request),
        client.control(fan.star(0), &request)
    );
    let (first, second) = (first.unwrap(), second.unwrap());
    let ends = [
        first.last().unwrap().clone(),
        second.last().unwrap().clone(),
    ];
    let done = ends
        .iter()
        .filter(|e| matches!(e, ControlEvent::Done { .. }))
        .count();
    let refused = ends
        .iter()
        .filter(|e| matches!(e, ControlEvent::Failed(w) if w.code == ErrorCode::AlreadyExists))
        .count();
    assert_eq!((done, refused), (1, 1), "{ends:?}");
    assert_eq!(sha256_file(&fan.target(0)), sha);
    // Too many upstreams: refused before anything is touched.
    let mut crowded = fan.command(0, &[]);
    crowded.file.transfer_id = TransferId(rand::random());
    crowded.upstreams = vec![crowded_upstream(); orbit_wire::fanout::MAX_UPSTREAMS + 1];
    let events = client
        .control(fan.star(0), &ControlRequest::ReplicateFanout(crowded))
        .await
        .unwrap();
    assert_eq!(
        expect_failed(events.last().unwrap().clone()).code,
        ErrorCode::InvalidArgument
    );
}

fn crowded_upstream() -> Upstream {
    Upstream {
        star: "star-z".into(),
        addr: "127.0.0.1:9".into(),
        path: "/x".into(),
        token: "t".into(),
    }
}

/// Stars star-a, star-b, ... each holding `f` with the same bytes (or not), and star-d, the
/// destination.
struct Many {
    grid: Grid,
    sources: Vec<Option<Star>>,
    addrs: Vec<SocketAddr>,
    src_dirs: Vec<tempfile::TempDir>,
    dest: Star,
    dst: tempfile::TempDir,
}

impl Many {
    async fn new(sources: usize, bytes: &[u8]) -> Many {
        let grid = Grid::new();
        let (mut stars, mut addrs, mut src_dirs) = (vec![], vec![], vec![]);
        for i in 0..sources {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("f"), bytes).unwrap();
            let star = grid.spawn_star(&format!("src-{i}"), &[dir.path()]).await;
            addrs.push(star.local_addr());
            stars.push(Some(star));
            src_dirs.push(dir);
        }
        let dst = tempfile::tempdir().unwrap();
        let dest = grid.spawn_star("star-b", &[dst.path()]).await;
        Many {
            grid,
            sources: stars,
            addrs,
            src_dirs,
            dest,
            dst,
        }
    }

    /// The command for pieces of 1 MiB from src-0 and src-1, where src-1 has been replaced by a
    /// relay that serves bytes of its own under src-1's genuine attestation for the transfer.
    async fn command_with_a_liar(&mut self) -> orbit_wire::fanout::ReplicateMany {
        let ControlRequest::ReplicateMany(mut cmd) = self.command(MIB as u64) else {
            unreachable!()
        };
        let attestation = self.attestation(1, cmd.file.transfer_id).await;
        self.sources[1].take().unwrap().shutdown().await;
        let liar = lying_relay(&self.grid, "src-1", Some(attestation)).await;
        cmd.also[0].addr = liar.to_string();
        cmd
    }

    /// Source `i`'s own attestation of its file for `transfer`, as star-b would ask for it.
    async fn attestation(&self, i: usize, transfer: TransferId) -> Attestation {
        let origin = format!("src-{i}");
        let client = self.grid.star_client("star-b");
        let conn = client.connect(self.addrs[i], &origin).await.unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let relay = ControlRequest::Relay(RelayRequest {
            request_id: 0,
            transfer_id: transfer,
            origin: origin.clone(),
            path: self.path(i),
            token: self
                .grid
                .link_token(&origin, "star-b", &self.path(i), transfer),
            range: ByteRange { start: 0, end: 0 },
        });
        write_frame(&mut send, &relay).await.unwrap();
        send.finish().unwrap();
        while let Ok(frame) = read_frame::<DataFrame>(&mut recv, 1 << 20).await {
            if let DataFrame::Attested(a) = frame {
                return a;
            }
        }
        panic!("{origin} did not attest its file");
    }

    fn path(&self, i: usize) -> String {
        wire(&self.src_dirs[i].path().join("f"))
    }

    fn command(&self, piece_size: u64) -> ControlRequest {
        let transfer = TransferId(rand::random());
        let also = (1..self.addrs.len())
            .map(|i| Upstream {
                star: format!("src-{i}"),
                addr: self.addrs[i].to_string(),
                path: self.path(i),
                token: self
                    .grid
                    .link_token(&format!("src-{i}"), "star-b", &self.path(i), transfer),
            })
            .collect();
        ControlRequest::ReplicateMany(orbit_wire::fanout::ReplicateMany {
            file: ReplicateFile {
                transfer_id: transfer,
                source: "src-0".into(),
                source_addr: self.addrs[0].to_string(),
                source_path: self.path(0),
                target_path: wire(&self.target()),
                token: self
                    .grid
                    .link_token("src-0", "star-b", &self.path(0), transfer),
                expect_sha256: None,
                timeout_secs: 20,
            },
            also,
            piece_size,
        })
    }

    fn target(&self) -> PathBuf {
        self.dst.path().join("f")
    }

    fn sent(&self, i: usize) -> u64 {
        self.sources[i].as_ref().unwrap().metrics().bytes_sent()
    }
}

fn random_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|_| rand::random::<u8>()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_from_three_sources_takes_pieces_from_each_and_is_verified_whole() {
    let bytes = random_bytes(48 * MIB);
    let sha: [u8; 32] =
        sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&bytes)).into();
    let many = Many::new(3, &bytes).await;
    let events = within(
        "a file from three sources",
        many.grid
            .controller_client()
            .control(&many.dest, &many.command(MIB as u64)),
    )
    .await
    .unwrap();
    let (size, digest) = expect_done(events.last().unwrap().clone());
    assert_eq!((size, digest), (bytes.len() as u64, sha));
    assert_eq!(sha256_file(&many.target()), sha);
    let sent: Vec<u64> = (0..3).map(|i| many.sent(i)).collect();
    // Every byte once, but for the last pieces, which the endgame may take more than once: when
    // no piece is left to start, each of the 6 streams (2 a source) may take any of the at most 6
    // pieces still in flight, so at most 6 × 5 pieces twice; far from a whole copy per source.
    let total: u64 = sent.iter().sum();
    let endgame = (6 * 5 * MIB) as u64;
    assert!(
        total >= bytes.len() as u64 && total <= bytes.len() as u64 + endgame,
        "{sent:?}"
    );
    assert!(
        sent.iter().all(|s| *s > 0),
        "every source sent pieces: {sent:?}"
    );
    assert!(part_files(many.dst.path()).is_empty());
}

/// Many sources: the copy is no more open than any of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_from_two_sources_has_the_permission_bits_they_share() {
    use std::os::unix::fs::PermissionsExt;
    let bytes = random_bytes(4 * MIB);
    let many = Many::new(2, &bytes).await;
    for (i, bits) in [(0, 0o640), (1, 0o604)] {
        let path = many.src_dirs[i].path().join("f");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(bits)).unwrap();
    }
    let events = within(
        "a file from two sources",
        many.grid
            .controller_client()
            .control(&many.dest, &many.command(MIB as u64)),
    )
    .await
    .unwrap();
    expect_done(events.last().unwrap().clone());
    assert_eq!(std::fs::read(many.target()).unwrap(), bytes);
    let mode = std::fs::metadata(many.target())
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sources_that_disagree_are_refused_before_any_byte_is_written() {
    let bytes = random_bytes(2 * MIB);
    let many = Many::new(2, &bytes).await;
    let mut other = bytes.clone();
    other[MIB] ^= 1;
    std::fs::write(many.src_dirs[1].path().join("f"), &other).unwrap();
    let events = within(
        "sources that disagree",
        many.grid
            .controller_client()
            .control(&many.dest, &many.command(0)),
    )
    .await
    .unwrap();
    let error = expect_failed(events.last().unwrap().clone());
    assert_eq!(error.code, ErrorCode::FailedPrecondition, "{error}");
    assert!(
        error.message.contains("src-0") && error.message.contains("src-1"),
        "{error}"
    );
    assert!(!many.target().exists());
    assert!(part_files(many.dst.path()).is_empty());
    assert_eq!(many.sent(0) + many.sent(1), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_source_that_disappears_mid_file_leaves_the_others_to_finish_it() {
    let bytes = random_bytes(48 * MIB);
    let sha: [u8; 32] =
        sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&bytes)).into();
    let mut many = Many::new(2, &bytes).await;
    let request = many.command(MIB as u64);
    let client = many.grid.controller_client();
    let (addr, dest_dir) = (many.dest.local_addr(), many.dst.path().to_owned());
    let leaving = many.sources[1].take().unwrap();
    let run = client.control_at(addr, "star-b", &request);
    tokio::pin!(run);
    first_bytes(&dest_dir, run.as_mut()).await;
    let gone = tokio::spawn(leaving.shutdown_with_drain(std::time::Duration::ZERO));
    let events = within("the rest of the file", run).await.unwrap();
    gone.await.unwrap();
    let (size, digest) = expect_done(events.last().unwrap().clone());
    assert_eq!((size, digest), (bytes.len() as u64, sha));
    assert_eq!(sha256_file(&many.target()), sha);
    assert!(part_files(&dest_dir).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_middle_star_resumes_its_copy_from_its_journal_after_a_restart() {
    let size = 48 * MIB;
    let (mut fan, sha) = Fan::new(3, size).await;
    // star-2 keeps a journal: stopped in the middle, it keeps what it has for its next start.
    let state = tempfile::tempdir().unwrap();
    let mut config = fan.grid.star_config("star-2", &[fan.dirs[1].path()]);
    config.state_dir = Some(state.path().to_owned());
    let journaled = Star::spawn(config.clone()).await.unwrap();
    fan.addrs[1] = journaled.local_addr();
    drop(fan.stars[1].replace(journaled));
    let middle = fan.stars[1].take().unwrap();
    let plan = chain(3);
    let run = fan.run(&plan);
    tokio::pin!(run);
    first_bytes(fan.dirs[1].path(), run.as_mut()).await;
    let stopped = tokio::spawn(middle.shutdown_with_drain(std::time::Duration::ZERO));
    let events = run.await;
    stopped.await.unwrap();
    for i in [0, 2] {
        let (bytes, digest) = expect_done(events[i].last().unwrap().clone());
        assert_eq!((bytes, digest), (size as u64, sha));
    }
    let middle = fan.target(1);
    assert!(!middle.exists(), "star-2 finished before it was stopped");
    assert_eq!(part_files(fan.dirs[1].path()).len(), 1, "kept to resume");
    // Back again, it finishes the copy it journaled, still under the origin's attestation.
    let back = Star::spawn(config).await.unwrap();
    let wait = ControlRequest::Wait {
        transfer_id: fan.transfer,
    };
    let events = within(
        "the resumed copy",
        fan.grid.controller_client().control(&back, &wait),
    )
    .await
    .unwrap();
    let (bytes, digest) = expect_done(events.last().unwrap().clone());
    assert_eq!((bytes, digest), (size as u64, sha));
    assert_eq!(sha256_file(&middle), sha);
    assert!(part_files(fan.dirs[1].path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_star_can_be_the_origin_of_one_fan_out_and_a_relay_of_another_at_once() {
    let size = 8 * MIB;
    let (fan, sha) = Fan::new(2, size).await;
    // Fan-out one: star-a's f to star-1 then star-2. Fan-out two, at the same time: star-1's g
    // to star-2 then star-a, so star-1 is the origin of one and a relay of the other.
    let g_sha = random_file(&fan.dirs[0].path().join("g"), size);
    let second = TransferId(rand::random());
    let g_source = wire(&fan.dirs[0].path().join("g"));
    let g_at = |dir: &std::path::Path| wire(&dir.join("g"));
    let second_for = |holder: &str, target: String, upstreams: Vec<Upstream>| ReplicateFanout {
        file: ReplicateFile {
            transfer_id: second,
            source: "star-1".into(),
            source_addr: fan.addr(0).to_string(),
            source_path: g_source.clone(),
            target_path: target,
            token: fan.grid.link_token("star-1", holder, &g_source, second),
            expect_sha256: None,
            timeout_secs: 20,
        },
        upstreams,
    };
    let to_star2 = second_for("star-2", g_at(fan.dirs[1].path()), vec![]);
    let to_a = second_for(
        "star-a",
        g_at(fan.src.path()),
        vec![Upstream {
            star: "star-2".into(),
            addr: fan.addr(1).to_string(),
            path: g_at(fan.dirs[1].path()),
            token: fan
                .grid
                .link_token("star-2", "star-a", &g_at(fan.dirs[1].path()), second),
        }],
    );
    let client = fan.grid.controller_client();
    let origin_addr = fan.origin.local_addr();
    let plan = chain(2);
    let (to_star2, to_a) = (
        ControlRequest::ReplicateFanout(to_star2),
        ControlRequest::ReplicateFanout(to_a),
    );
    let (first, to_star2, to_a) = tokio::join!(
        fan.run(&plan),
        client.control_at(fan.addr(1), "star-2", &to_star2),
        client.control_at(origin_addr, "star-a", &to_a),
    );
    assert_all_verified(&fan, &first, sha, size);
    for events in [to_star2.unwrap(), to_a.unwrap()] {
        let (bytes, digest) = expect_done(events.last().unwrap().clone());
        assert_eq!((bytes, digest), (size as u64, g_sha));
    }
    assert_eq!(sha256_file(&fan.dirs[1].path().join("g")), g_sha);
    assert_eq!(sha256_file(&fan.src.path().join("g")), g_sha);
    // star-1 sent g once (to star-2) and relayed f once (to star-2).
    assert_eq!(fan.sent(0), 2 * size as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_source_that_lies_under_its_own_signature_gets_nothing_wrong_published() {
    let bytes = random_bytes(32 * MIB);
    let sha: [u8; 32] =
        sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&bytes)).into();
    let mut many = Many::new(2, &bytes).await;
    // src-1 is broken into: it keeps its word (its genuine attestation) and serves bytes of its
    // own.
    let cmd = many.command_with_a_liar().await;
    // Once the pieces flow, the honest source goes away: the liar serves what is left.
    let client = many.grid.controller_client();
    let (addr, dest_dir) = (many.dest.local_addr(), many.dst.path().to_owned());
    let request = ControlRequest::ReplicateMany(cmd);
    let run = client.control_at(addr, "star-b", &request);
    tokio::pin!(run);
    first_bytes(&dest_dir, run.as_mut()).await;
    let honest = many.sources[0].take().unwrap();
    let gone = tokio::spawn(honest.shutdown_with_drain(std::time::Duration::ZERO));
    let events = within("a file from an honest source and a liar", run)
        .await
        .unwrap();
    gone.await.unwrap();
    match events.last().unwrap().clone() {
        ControlEvent::Done { sha256, .. } => {
            // Only if the honest source wrote every piece before it went (every lying copy
            // arrived second): then the file is the true one.
            assert_eq!(sha256, sha);
            assert_eq!(
                sha256_file(&many.target()),
                sha,
                "a wrong file was published"
            );
        }
        event => {
            let error = expect_failed(event);
            assert_eq!(error.code, ErrorCode::DataLoss, "{error}");
            assert!(error.message.contains("SHA-256"), "{error}");
            assert!(!many.target().exists(), "a wrong file was published");
        }
    }
    assert!(part_files(&dest_dir).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_sends_wrong_pieces_under_a_true_attestation_is_named() {
    let bytes = random_bytes(32 * MIB);
    let mut many = Many::new(2, &bytes).await;
    // src-1 serves bytes of its own under its genuine attestation, beside an honest src-0.
    let cmd = many.command_with_a_liar().await;
    let client = many.grid.controller_client();
    let request = ControlRequest::ReplicateMany(cmd);
    let events = within(
        "a file from an honest source and a liar",
        client.control_at(many.dest.local_addr(), "star-b", &request),
    )
    .await
    .unwrap();
    let error = expect_failed(events.last().unwrap().clone());
    assert_eq!(error.code, ErrorCode::DataLoss, "{error}");
    assert!(
        error.message.contains("src-1 sent ") && error.message.contains("differ from src-0's"),
        "{error}"
    );
    assert!(!many.target().exists(), "a wrong file was published");
    assert!(part_files(many.dst.path()).is_empty());
}
