//! A source star that holds a transfer in the middle until the test lets it go: it answers read
//! requests for one file with the first `hold` bytes, then waits for [`SlowSource::release`]
//! before it sends the rest and the trailer. Tests of what happens *during* a transfer (progress
//! bar, status, detach, cancel, Ctrl-C) use it so the transfer is in flight for certain, however
//! fast the machine, without sleeping.
//!
//! It runs its own runtime on a thread, so the tests of real binaries can stay synchronous. It
//! speaks the real protocol over real QUIC with the star certificate `orbitctl init` wrote.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use orbit_wire::{DataFrame, FileVersion, ReadRequest, CHUNK_SIZE, MAX_CONTROL_FRAME};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

/// A source star that serves one file, held after `hold` bytes until released.
#[derive(Debug)]
pub struct SlowSource {
    /// Where it listens.
    pub addr: SocketAddr,
    release: watch::Sender<bool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SlowSource {
    /// Serves `content` to any read request, on `socket`, with the certificate in `star_dir`
    /// (a `GRID/stars/NAME` folder).
    pub fn start(
        socket: std::net::UdpSocket,
        star_dir: &Path,
        content: Vec<u8>,
        hold: usize,
    ) -> SlowSource {
        let read = |name: &str| std::fs::read_to_string(star_dir.join(name)).unwrap();
        let tls = orbit_certs::server_config(
            &read("ca.pem"),
            &read("cert.pem"),
            &read("key.pem"),
            orbit_wire::ALPN,
        )
        .expect("server TLS config");
        let server = quinn::ServerConfig::with_crypto(Arc::new(
            quinn::crypto::rustls::QuicServerConfig::try_from(tls).expect("QUIC server config"),
        ));
        let addr = socket.local_addr().unwrap();
        let (release, released) = watch::channel(false);
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let content = Bytes::from(content);
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                socket.set_nonblocking(true).unwrap();
                let endpoint = quinn::Endpoint::new(
                    quinn::EndpointConfig::default(),
                    Some(server),
                    socket,
                    Arc::new(quinn::TokioRuntime),
                )
                .unwrap();
                let accept = async {
                    while let Some(incoming) = endpoint.accept().await {
                        let (content, released) = (content.clone(), released.clone());
                        tokio::spawn(async move {
                            let Ok(conn) = incoming.await else { return };
                            loop {
                                tokio::select! {
                                    uni = conn.accept_uni() => {
                                        let Ok(recv) = uni else { break };
                                        let conn = conn.clone();
                                        let (content, released) = (content.clone(), released.clone());
                                        tokio::spawn(async move {
                                            let _ = answer(conn, recv, content, hold, released).await;
                                        });
                                    }
                                    bi = conn.accept_bi() => {
                                        let Ok((send, _)) = bi else { break };
                                        tokio::spawn(refuse_control(send));
                                    }
                                }
                            }
                        });
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stopped => {}
                }
                endpoint.close(0u32.into(), b"test over");
            });
        });
        SlowSource {
            addr,
            release,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Lets every held transfer, and every later one, run to the end.
    pub fn release(&self) {
        self.release.send_replace(true);
    }
}

impl Drop for SlowSource {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Answers any control request as a star that runs no transfer: `NotFound`.
async fn refuse_control(mut send: quinn::SendStream) -> anyhow::Result<()> {
    let event = orbit_wire::ControlEvent::Failed(orbit_wire::WireError::new(
        orbit_wire::ErrorCode::NotFound,
        "the slow source runs no transfers",
    ));
    send.write_all(&orbit_wire::encode_frame(&event)?).await?;
    send.finish()?;
    let _ = send.stopped().await;
    Ok(())
}

async fn answer(
    conn: quinn::Connection,
    mut recv: quinn::RecvStream,
    content: Bytes,
    hold: usize,
    mut released: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix).await?;
    let len = orbit_wire::decode_len(prefix, MAX_CONTROL_FRAME)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await?;
    let request: ReadRequest = orbit_wire::decode_body(&body)?;
    let mut send = conn.open_uni().await?;
    let size = content.len() as u64;
    let header = DataFrame::Header {
        request_id: request.request_id,
        size,
        version: FileVersion {
            size,
            mtime_sec: 0,
            mtime_nsec: 0,
            inode: 1,
        },
    };
    send.write_all(&orbit_wire::encode_frame(&header)?).await?;
    let mut offset = 0usize;
    while offset < content.len() {
        if offset >= hold {
            // Held: wait for the test, or for the destination to stop reading.
            tokio::select! {
                r = released.wait_for(|go| *go) => { r?; }
                _ = send.stopped() => return Ok(()),
            }
        }
        let end = (offset + CHUNK_SIZE).min(content.len());
        let end = if offset < hold { end.min(hold) } else { end };
        let chunk = DataFrame::Chunk {
            offset: offset as u64,
            data: content.slice(offset..end),
        };
        send.write_all(&orbit_wire::encode_frame(&chunk)?).await?;
        offset = end;
    }
    let sha256: [u8; 32] = Sha256::digest(&content).into();
    send.write_all(&orbit_wire::encode_frame(&DataFrame::Trailer { sha256 })?)
        .await?;
    send.finish()?;
    let _ = send.stopped().await;
    Ok(())
}

/// A grid for command-line tests of transfers in flight: `orbitctl init` with star-a, a
/// [`SlowSource`] holding `content` after `hold` bytes, and star-b, a real `orbit-star` process
/// that stores under `dst_root`.
#[derive(Debug)]
pub struct HeldGrid {
    /// The grid folder.
    pub grid: std::path::PathBuf,
    /// star-b's root.
    pub dst_root: std::path::PathBuf,
    /// The file star-a serves.
    pub content: Vec<u8>,
    /// star-a.
    pub source: SlowSource,
    /// star-b.
    pub star_b: crate::process::StarProcess,
    // Last, so the folder outlives the star using it.
    _tmp: tempfile::TempDir,
}

impl HeldGrid {
    /// Makes the grid and starts both stars; star-a serves `size` random bytes, held after `hold`.
    pub fn start(size: usize, hold: usize) -> HeldGrid {
        let tmp = tempfile::tempdir().unwrap();
        let grid = tmp.path().join("grid");
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b_port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let a = format!("star-a={}", socket.local_addr().unwrap());
        let b = format!("star-b=127.0.0.1:{b_port}");
        let out =
            crate::process::orbitctl(&["init", &crate::wire(&grid), "--star", &a, "--star", &b]);
        assert_eq!(out.code, Some(0), "init: {}{}", out.stdout, out.stderr);
        let mut content = vec![0u8; size];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut content);
        let source = SlowSource::start(socket, &grid.join("stars/star-a"), content.clone(), hold);
        let dst_root = tmp.path().join("dst");
        std::fs::create_dir_all(dst_root.join("backup")).unwrap();
        let config = grid.join("stars/star-b/star.toml");
        let star_b = crate::process::StarProcess::start(&[
            "--config",
            &crate::wire(&config),
            "--allow",
            &crate::wire(&dst_root),
        ]);
        HeldGrid {
            grid,
            dst_root,
            content,
            source,
            star_b,
            _tmp: tmp,
        }
    }

    /// The source argument of `replicate`.
    pub fn src(&self) -> String {
        "star-a:/srv/data/f.bin".to_owned()
    }

    /// The target file `name` under star-b's root.
    pub fn target(&self, name: &str) -> std::path::PathBuf {
        self.dst_root.join("backup").join(name)
    }

    /// The destination argument of `replicate` for the target `name`.
    pub fn dst(&self, name: &str) -> String {
        format!("star-b:{}", crate::wire(&self.target(name)))
    }

    /// Runs `orbitctl --grid GRID args...` to completion.
    pub fn orbitctl(&self, args: &[&str]) -> crate::process::Output {
        let grid = crate::wire(&self.grid);
        let mut all = vec!["--grid", grid.as_str()];
        all.extend_from_slice(args);
        crate::process::orbitctl(&all)
    }

    /// `orbitctl --grid GRID args...`, to be spawned by the caller.
    pub fn command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new(crate::process::bin("orbitctl"));
        cmd.arg("--grid")
            .arg(&self.grid)
            .args(args)
            .env_remove("ORBIT_GRID");
        cmd
    }

    /// Waits until star-b's temporary file holds `bytes` bytes: the transfer is in flight and
    /// held. Polls the folder; the bound is [`crate::STEP_TIMEOUT`].
    pub fn wait_for_part(&self, bytes: u64) {
        let deadline = std::time::Instant::now() + crate::STEP_TIMEOUT;
        let dir = self.dst_root.join("backup");
        loop {
            let sizes: Vec<u64> = crate::part_files(&dir)
                .iter()
                .filter_map(|p| std::fs::metadata(p).ok())
                .map(|m| m.len())
                .collect();
            if sizes.contains(&bytes) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no temporary file of {bytes} bytes appeared (saw {sizes:?})"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Every entry under star-b's root, relative to it.
    pub fn leftovers(&self) -> Vec<std::path::PathBuf> {
        crate::list_tree(&self.dst_root)
    }
}
