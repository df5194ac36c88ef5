//! A hostile peer: a QUIC client with a real certificate of the grid that speaks the wire as it
//! likes: any bytes on any stream, as much flow-control credit as it chooses (none at all, if it
//! wants), and its own timing, down to one byte per packet. Each attack is then a short test.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;
use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt};

use orbit_certs::Role;

use crate::{within, Grid};

/// How a hostile peer configures its side of the connection.
#[derive(Debug, Clone, Copy)]
pub struct Credit {
    /// The flow-control window it grants each stream the star opens; 0 takes no byte at all.
    pub stream_window: u32,
    /// How many unidirectional streams the star may open to it at once; 0 leaves the star no
    /// stream to answer on.
    pub uni_streams: u32,
}

impl Default for Credit {
    /// A well-behaved peer's credit: 1 MiB per stream, 100 streams at once.
    fn default() -> Credit {
        Credit {
            stream_window: 1024 * 1024,
            uni_streams: 100,
        }
    }
}

impl Credit {
    /// One byte of credit per stream the star opens, never more: the star's stream shows up,
    /// and then nothing more gets through.
    pub fn one_byte() -> Credit {
        Credit {
            stream_window: 1,
            ..Credit::default()
        }
    }
}

/// A peer that holds a certificate of the grid and behaves as it likes.
#[derive(Debug)]
pub struct Hostile {
    /// Its endpoint, on 127.0.0.1:0.
    pub endpoint: Endpoint,
}

impl Hostile {
    /// A peer presenting a star certificate named `name` of `grid`, granting `credit`.
    pub fn star(grid: &Grid, name: &str, credit: Credit) -> Hostile {
        let cert = grid.ca.issue(Role::Star, name).expect("star cert");
        let tls = orbit_certs::client_config(
            &grid.ca.cert_pem(),
            &cert.cert_pem,
            &cert.key_pem,
            orbit_wire::ALPN,
        )
        .expect("client TLS config");
        let mut transport = quinn::TransportConfig::default();
        transport
            .stream_receive_window(VarInt::from_u32(credit.stream_window))
            .max_concurrent_uni_streams(VarInt::from_u32(credit.uni_streams))
            .keep_alive_interval(Some(Duration::from_secs(1)));
        let mut config = quinn::ClientConfig::new(Arc::new(
            QuicClientConfig::try_from(tls).expect("QUIC client config"),
        ));
        config.transport_config(Arc::new(transport));
        let mut endpoint =
            Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("client endpoint");
        endpoint.set_default_client_config(config);
        Hostile { endpoint }
    }

    /// Connects to star `name` at `addr`.
    ///
    /// # Errors
    ///
    /// When the handshake fails.
    pub async fn connect(&self, addr: SocketAddr, name: &str) -> anyhow::Result<Connection> {
        Ok(within("hostile connect", self.endpoint.connect(addr, name)?).await?)
    }
}

/// Opens a unidirectional stream on `conn` and writes `bytes` on it, all at once, leaving it
/// open: the peer may go on, finish, or fall silent.
///
/// # Errors
///
/// When the stream cannot be opened or written.
pub async fn send_raw(conn: &Connection, bytes: &[u8]) -> anyhow::Result<SendStream> {
    let mut send = conn.open_uni().await?;
    send.write_all(bytes).await?;
    Ok(send)
}

/// A frame of `msg` as the wire puts it: length prefix and body.
pub fn frame<T: serde::Serialize>(msg: &T) -> Vec<u8> {
    orbit_wire::encode_frame(msg).expect("encodes")
}

/// Writes `bytes` on `send` one byte per QUIC packet: each byte is written only once the one
/// before has left in a packet of its own. Returns how many packets it took.
///
/// # Errors
///
/// When the stream fails.
pub async fn dribble(
    conn: &Connection,
    send: &mut SendStream,
    bytes: &[u8],
) -> anyhow::Result<u64> {
    let before = conn.stats().frame_tx.stream;
    for byte in bytes {
        let sent = conn.stats().frame_tx.stream;
        send.write_all(std::slice::from_ref(byte)).await?;
        // A packet has no event to wait for; yield to the connection's driver until it went.
        while conn.stats().frame_tx.stream == sent {
            tokio::task::yield_now().await;
        }
    }
    Ok(conn.stats().frame_tx.stream - before)
}

/// Waits for the next stream the star opens on `conn`.
///
/// # Errors
///
/// When the connection ends first.
pub async fn answer(conn: &Connection) -> anyhow::Result<RecvStream> {
    Ok(within("the star's answer stream", conn.accept_uni()).await?)
}

/// A process's resident memory in bytes, from /proc/PID/status; `None` once it has exited.
pub fn vm_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Writes star `name`'s files (certificate, key, CA, token key) into `dir` and returns the flags
/// that start `orbit-star` with them on 127.0.0.1:0.
pub fn star_args(grid: &Grid, name: &str, dir: &std::path::Path) -> Vec<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let cert = grid.ca.issue(Role::Star, name).expect("star cert");
    let write = |file: &str, text: &str| {
        let path = dir.join(file);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .expect("a new file");
        std::io::Write::write_all(&mut f, text.as_bytes()).expect("written");
        path.display().to_string()
    };
    vec![
        "--name".into(),
        name.into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--cert".into(),
        write("cert.pem", &cert.cert_pem),
        "--key".into(),
        write("key.pem", &cert.key_pem),
        "--ca".into(),
        write("ca.pem", &grid.ca.cert_pem()),
        "--token-key-file".into(),
        write("token.key", &grid.key(name).to_hex()),
    ]
}

/// CPU time a process has used (user and system), in clock ticks, from /proc/PID/stat.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // The command name may hold spaces; the fields are counted after its closing parenthesis.
    let after = &stat[stat.rfind(')').expect("a command name") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

/// How many file descriptors a process holds.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .count()
}
