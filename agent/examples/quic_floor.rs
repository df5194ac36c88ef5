//! The floor bench/run measures Orbit against: what one replication's bytes cost with nothing
//! of Orbit's own work, so that Orbit's CPU-seconds can be read as a ratio to it in the same run.
//!
//! - `quic_floor certs DIR`: a throwaway CA and two star certificates (star-a, star-b) in DIR.
//! - `quic_floor send --listen ADDR --bytes N --certs DIR`: as star-a, a source: accepts one
//!   connection and sends N bytes on one unidirectional stream, in 64 KiB chunks of one buffer
//!   made before (no disk, no hashing), then waits for the peer to close.
//! - `quic_floor recv --connect ADDR --certs DIR`: as star-b, a destination: connects, reads the
//!   stream to its end and throws the bytes away, then closes.
//! - `quic_floor sha256 FILE`: SHA-256 of FILE with the crate and read size the stars use.
//!
//! The endpoint, its UDP socket and its transport settings are the stars' own
//! (`orbit_agent::endpoint`), with the default limits, and TLS is the stars' mutual TLS with the
//! orbit ALPN. Each command prints one line when done:
//! `bytes=N wall_s=S cpu_s=C busiest_thread_s=T`, the last two from /proc/self (user + system,
//! the whole process and its busiest thread), so that the figures exclude nothing that ran.
//! Not a tool for users: it never touches a file other than the ones named.

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use sha2::{Digest as _, Sha256};

use orbit_agent::endpoint::{bind_endpoint, transport_config};
use orbit_agent::Limits;
use orbit_certs::{GridCa, Role};

/// The stars' chunk: what a source reads and sends at a time.
const CHUNK: usize = orbit_wire::CHUNK_SIZE;
/// How much is read per call: 128 KiB, as a star reads a file it only hashes (`HASH_READ` in
/// agent/src/hashing.rs; 1 MiB cost four times the system time, the buffer leaving the cache).
const READ: usize = 2 * CHUNK;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("quic_floor: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &[String]) -> anyhow::Result<()> {
    let flag = |name: &str| -> anyhow::Result<&str> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(String::as_str)
            .with_context(|| format!("{name} is required"))
    };
    let started = Instant::now();
    let bytes = match args.first().map(String::as_str) {
        Some("certs") => {
            certs(Path::new(args.get(1).context("certs DIR")?))?;
            return Ok(());
        }
        Some("send") => {
            let listen: SocketAddr = flag("--listen")?.parse()?;
            let bytes: u64 = flag("--bytes")?.parse()?;
            send(listen, bytes, Path::new(flag("--certs")?)).await?
        }
        Some("recv") => {
            let peer: SocketAddr = flag("--connect")?.parse()?;
            recv(peer, Path::new(flag("--certs")?)).await?
        }
        Some("sha256") => {
            let file = PathBuf::from(args.get(1).context("sha256 FILE")?);
            tokio::task::spawn_blocking(move || sha256(&file)).await??
        }
        _ => bail!("usage: quic_floor certs DIR | send --listen ADDR --bytes N --certs DIR | recv --connect ADDR --certs DIR | sha256 FILE"),
    };
    let (cpu, busiest) = cpu_seconds()?;
    println!(
        "bytes={bytes} wall_s={:.4} cpu_s={cpu:.3} busiest_thread_s={busiest:.3}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn certs(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let ca = GridCa::generate("floor")?;
    std::fs::write(dir.join("ca.pem"), ca.cert_pem())?;
    for name in ["star-a", "star-b"] {
        let cert = ca.issue(Role::Star, name)?;
        std::fs::write(dir.join(format!("{name}.pem")), cert.cert_pem)?;
        std::fs::write(dir.join(format!("{name}.key")), cert.key_pem)?;
    }
    Ok(())
}

/// The server and client configurations of star `name`, as a star makes them.
fn configs(dir: &Path, name: &str) -> anyhow::Result<(quinn::ServerConfig, quinn::ClientConfig)> {
    let read = |file: String| std::fs::read_to_string(dir.join(&file)).context(file);
    let (ca, cert, key) = (
        read("ca.pem".into())?,
        read(format!("{name}.pem"))?,
        read(format!("{name}.key"))?,
    );
    let transport = Arc::new(transport_config(&Limits::default()));
    let tls = orbit_certs::server_config_with_crl(&ca, &cert, &key, orbit_wire::ALPN, None)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    server.transport_config(transport.clone());
    let tls = orbit_certs::client_config_with_crl(&ca, &cert, &key, orbit_wire::ALPN, None)?;
    let mut client = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    client.transport_config(transport);
    Ok((server, client))
}

async fn send(listen: SocketAddr, bytes: u64, dir: &Path) -> anyhow::Result<u64> {
    let (server, client) = configs(dir, "star-a")?;
    let endpoint = bind_endpoint(listen, Some(server), client)?;
    let buffer: Vec<u8> = (0..16 * CHUNK).map(|_| rand::random::<u8>()).collect();
    let buffer = Bytes::from(buffer);
    let conn = endpoint
        .accept()
        .await
        .context("the endpoint closed")?
        .await?;
    let mut stream = conn.open_uni().await?;
    let mut sent = 0u64;
    while sent < bytes {
        let at = (sent as usize) % buffer.len();
        let len = (bytes - sent).min(CHUNK as u64) as usize;
        let len = len.min(buffer.len() - at);
        stream.write_chunk(buffer.slice(at..at + len)).await?;
        sent += len as u64;
    }
    stream.finish()?;
    // The receiver closes once it has every byte.
    let _ = conn.closed().await;
    endpoint.wait_idle().await;
    Ok(sent)
}

async fn recv(peer: SocketAddr, dir: &Path) -> anyhow::Result<u64> {
    let (_, client) = configs(dir, "star-b")?;
    let listen: SocketAddr = match peer {
        SocketAddr::V4(_) => "0.0.0.0:0".parse()?,
        SocketAddr::V6(_) => "[::]:0".parse()?,
    };
    let endpoint = bind_endpoint(listen, None, client)?;
    let conn = endpoint.connect(peer, "star-a")?.await?;
    let mut stream = conn.accept_uni().await?;
    let mut received = 0u64;
    while let Some(chunk) = stream.read_chunk(usize::MAX, true).await? {
        received += chunk.bytes.len() as u64;
    }
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    Ok(received)
}

fn sha256(file: &Path) -> anyhow::Result<u64> {
    let mut file = std::fs::File::open(file)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; READ];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        total += n as u64;
    }
    eprintln!("sha256 {}", hex::encode(hasher.finalize()));
    Ok(total)
}

/// User + system seconds of this process, and of its busiest thread, from /proc/self.
fn cpu_seconds() -> anyhow::Result<(f64, f64)> {
    let hz = rustix::param::clock_ticks_per_second() as f64;
    let ticks = |stat: &str| -> Option<f64> {
        // The fields after the command name, which may itself hold spaces and parentheses.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        Some((fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?) / hz)
    };
    let whole = ticks(&std::fs::read_to_string("/proc/self/stat")?).context("/proc/self/stat")?;
    let mut busiest = 0f64;
    for task in std::fs::read_dir("/proc/self/task")? {
        if let Ok(stat) = std::fs::read_to_string(task?.path().join("stat")) {
            busiest = busiest.max(ticks(&stat).unwrap_or(0.0));
        }
    }
    Ok((whole, busiest))
}
