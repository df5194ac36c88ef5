//! A hostile source star. The test plays star-a itself, with a real star-a certificate of the
//! grid, and answers star-b's read requests with broken data streams: a length prefix over the
//! cap, a truncated frame, trailing bytes, an unknown variant, a chunk at the wrong offset, a
//! chunk over 64 KiB, a trailer before every byte, a header that lies about the size, a wrong
//! digest, a second header, a stream that ends without a trailer. Each replication fails with the
//! code the destination reports for it, names the source, and leaves nothing in star-b's root:
//! no target and no temporary file.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use quinn::Endpoint;
use sha2::{Digest, Sha256};

use orbit_tests::*;
use orbit_wire::{
    ControlRequest, DataFrame, ErrorCode, FileVersion, ReadRequest, ReplicateFile, CHUNK_SIZE,
    MAX_CONTROL_FRAME, MAX_DATA_FRAME,
};

/// What the fake source sends on the data stream for one read, given the request's id.
type Script = Box<dyn Fn(u64) -> Vec<u8> + Send + Sync>;

fn frame<T: serde::Serialize>(msg: &T) -> Vec<u8> {
    orbit_wire::encode_frame(msg).unwrap()
}

fn header(request_id: u64, size: u64) -> Vec<u8> {
    frame(&DataFrame::Header {
        request_id,
        size,
        version: FileVersion {
            size,
            mtime_sec: 0,
            mtime_nsec: 0,
            inode: 1,
        },
    })
}

fn chunk(offset: u64, data: &[u8]) -> Vec<u8> {
    frame(&DataFrame::Chunk {
        offset,
        data: Bytes::copy_from_slice(data),
    })
}

fn trailer(data: &[u8]) -> Vec<u8> {
    frame(&DataFrame::Trailer {
        sha256: Sha256::digest(data).into(),
    })
}

/// A raw frame: a length prefix for `body`, then `body`.
fn raw(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// The broken streams, each with the code star-b must report. Framing errors are protocol
/// violations (`InvalidArgument`); frames that decode but contradict the transfer are `DataLoss`.
fn cases() -> Vec<(&'static str, ErrorCode, Script)> {
    let data = vec![0x5au8; 100];
    let d = move || data.clone();
    vec![
        (
            "a length prefix over the cap",
            ErrorCode::InvalidArgument,
            Box::new(|id| {
                let mut out = header(id, 100);
                out.extend_from_slice(&(MAX_DATA_FRAME as u32 + 1).to_be_bytes());
                out.extend_from_slice(&[0u8; 64]);
                out
            }),
        ),
        (
            "a length prefix of 4 GiB",
            ErrorCode::InvalidArgument,
            Box::new(|id| cat(&[header(id, 100), u32::MAX.to_be_bytes().to_vec()])),
        ),
        (
            "a truncated frame",
            ErrorCode::InvalidArgument,
            Box::new({
                let d = d.clone();
                move |id| {
                    let c = chunk(0, &d());
                    cat(&[header(id, 100), c[..c.len() / 2].to_vec()])
                }
            }),
        ),
        (
            "trailing bytes after a message",
            ErrorCode::InvalidArgument,
            Box::new({
                let d = d.clone();
                move |id| {
                    let mut body = chunk(0, &d())[4..].to_vec();
                    body.push(0);
                    cat(&[header(id, 100), raw(&body)])
                }
            }),
        ),
        (
            "an unknown variant",
            ErrorCode::InvalidArgument,
            Box::new(|id| cat(&[header(id, 100), raw(&[9, 0, 0])])),
        ),
        (
            "a chunk whose offset is not the next expected",
            ErrorCode::DataLoss,
            Box::new({
                let d = d.clone();
                move |id| cat(&[header(id, 200), chunk(100, &d()), chunk(0, &d())])
            }),
        ),
        (
            "a chunk larger than 64 KiB",
            ErrorCode::DataLoss,
            Box::new(|id| {
                let big = vec![1u8; CHUNK_SIZE + 1];
                cat(&[header(id, 2 * CHUNK_SIZE as u64), chunk(0, &big)])
            }),
        ),
        (
            "a trailer before all bytes arrived",
            ErrorCode::DataLoss,
            Box::new({
                let d = d.clone();
                move |id| cat(&[header(id, 200), chunk(0, &d()), trailer(&d())])
            }),
        ),
        (
            "a header that announces fewer bytes than are sent",
            ErrorCode::DataLoss,
            Box::new(|id| {
                let more = vec![3u8; 200];
                cat(&[header(id, 100), chunk(0, &more), trailer(&more)])
            }),
        ),
        (
            // The destination checks free space against the announced size before it writes.
            "a header that announces a petabyte",
            ErrorCode::ResourceExhausted,
            Box::new({
                let d = d.clone();
                move |id| cat(&[header(id, 1 << 50), chunk(0, &d()), trailer(&d())])
            }),
        ),
        (
            "a trailer whose digest does not match",
            ErrorCode::DataLoss,
            Box::new({
                let d = d.clone();
                move |id| cat(&[header(id, 100), chunk(0, &d()), trailer(b"other bytes")])
            }),
        ),
        (
            "a second header",
            ErrorCode::DataLoss,
            Box::new(|id| cat(&[header(id, 100), header(id, 100)])),
        ),
        (
            "a stream that ends without a trailer",
            ErrorCode::InvalidArgument,
            Box::new(move |id| cat(&[header(id, 100), chunk(0, &d())])),
        ),
    ]
}

/// A fake star-a: answers each read request with the script registered for its transfer id.
struct FakeSource {
    endpoint: Endpoint,
    scripts: Arc<Mutex<HashMap<u64, Script>>>,
}

impl FakeSource {
    fn spawn(grid: &Grid) -> FakeSource {
        let endpoint = star_server(grid, "star-a");
        let scripts: Arc<Mutex<HashMap<u64, Script>>> = Arc::default();
        let (ep, table) = (endpoint.clone(), scripts.clone());
        tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let table = table.clone();
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    while let Ok(mut recv) = conn.accept_uni().await {
                        let (conn, table) = (conn.clone(), table.clone());
                        tokio::spawn(async move {
                            let bytes = recv.read_to_end(MAX_CONTROL_FRAME + 4).await.unwrap();
                            let request: ReadRequest =
                                orbit_wire::decode_body(&bytes[4..]).unwrap();
                            let script = table
                                .lock()
                                .unwrap()
                                .remove(&request.transfer_id.0)
                                .expect("a script for the transfer");
                            let mut send = conn.open_uni().await.unwrap();
                            // The destination may stop reading at the first bad byte.
                            let _ = send.write_all(&script(request.request_id)).await;
                            let _ = send.finish();
                            let _ = send.stopped().await;
                        });
                    }
                });
            }
        });
        FakeSource { endpoint, scripts }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_source_writes_nothing_at_the_destination() {
    let grid = Grid::new();
    let dst = tempfile::tempdir().unwrap();
    let b = grid.spawn_star("star-b", &[dst.path()]).await;
    let fake = FakeSource::spawn(&grid);
    let addr = fake.endpoint.local_addr().unwrap();
    let client = grid.controller_client();
    let source = "/srv/fake/payload.bin";

    let mut all = cases();
    // The control: a well-formed stream from the same fake star is published.
    let good = vec![7u8; 100];
    let good_copy = good.clone();
    all.push((
        "the control: a well-formed stream",
        ErrorCode::Internal,
        Box::new(move |id| cat(&[header(id, 100), chunk(0, &good_copy), trailer(&good_copy)])),
    ));
    let last = all.len() - 1;
    for (i, (what, code, script)) in all.into_iter().enumerate() {
        let transfer_id = i as u64 + 1;
        fake.scripts.lock().unwrap().insert(transfer_id, script);
        let target = dst.path().join(format!("copy-{i}.bin"));
        let request = ControlRequest::Replicate(ReplicateFile {
            transfer_id: orbit_wire::TransferId(transfer_id),
            source: "star-a".into(),
            source_addr: addr.to_string(),
            source_path: source.into(),
            target_path: wire(&target),
            token: grid.token("star-a", "star-b", source),
            expect_sha256: None,
            timeout_secs: 0,
        });
        let mut events = within(what, client.control(&b, &request)).await.unwrap();
        let event = events.pop().unwrap();
        if i == last {
            let (bytes, _) = expect_done(event);
            assert_eq!(bytes, 100);
            assert!(std::fs::read(&target).unwrap() == good);
            continue;
        }
        let error = expect_failed(event);
        assert_eq!(error.code, code, "{what}: {error}");
        // The checksum is compared by the writer, whose message says what differed but not who
        // sent it; a size the disk cannot hold is the destination's own refusal.
        let local = error.message.contains("checksum mismatch")
            || error.message.contains("No space left on device");
        assert!(
            error.message.contains("star-a") || local,
            "{what}: the message must name the source: {error}"
        );
        assert_eq!(
            list_tree(dst.path()),
            Vec::<PathBuf>::new(),
            "{what}: something was left in the destination"
        );
    }
    b.shutdown().await;
    fake.endpoint.close(0u32.into(), b"done");
}
