//! A tiny HTTP/1.1 server for `GET /metrics`: one request per connection, then close.
//!
//! It reads at most [`MAX_REQUEST`] bytes within [`REQUEST_TIMEOUT`], answers within
//! [`ANSWER_TIMEOUT`], holds at most [`MAX_CONNECTIONS`] connections at once (more wait in the
//! kernel's backlog), pauses [`ACCEPT_BACKOFF`] when accepting fails (out of file descriptors,
//! say) rather than retrying at once, and never serves anything but the metrics. It looks only at
//! the request line, so what a client may send it is a small surface; the text is rendered on a
//! blocking thread, as it reads `/proc`.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::lifecycle::Lifecycle;

/// The largest request head the metrics server reads.
const MAX_REQUEST: usize = 8 * 1024;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a whole exchange may take, the answer included, whatever the client reads.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once: a scraper needs one; what is over waits in the listen backlog
/// and costs the star no file descriptor.
pub(crate) const MAX_CONNECTIONS: usize = 16;
/// The pause after a failed accept: when file descriptors run out, accept fails at once and for
/// as long as none is freed, and retrying at once would spin a core.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What renders the metrics text; it may block.
pub(crate) type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves `GET /metrics` on `listener`, with what `render` gives, until the star stops.
pub(crate) async fn serve(listener: TcpListener, render: Render, life: Lifecycle) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    // Said once per run of failures, not every pause.
    let mut failing = false;
    loop {
        // A slot first, then the connection: over the cap, clients wait in the backlog.
        let slot = tokio::select! {
            _ = life.cancel.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            _ = life.cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    failing = false;
                    stream
                }
                Err(e) => {
                    if !std::mem::replace(&mut failing, true) {
                        warn!("metrics listener cannot accept: {e}; retrying every {ACCEPT_BACKOFF:?}");
                    }
                    tokio::select! {
                        _ = life.cancel.cancelled() => break,
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    }
                }
            },
        };
        let (render, cancel) = (render.clone(), life.cancel.clone());
        life.tracker.spawn(async move {
            let _slot = slot;
            tokio::select! {
                _ = cancel.cancelled() => {}
                r = tokio::time::timeout(ANSWER_TIMEOUT, answer(render, stream)) => match r {
                    Ok(Err(e)) => debug!("metrics request: {e}"),
                    Err(_) => debug!("metrics request: no answer taken within {ANSWER_TIMEOUT:?}"),
                    Ok(Ok(())) => {}
                },
            }
        });
    }
}

async fn answer(render: Render, mut stream: TcpStream) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let read_head = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
            let n = stream.read(&mut buf).await?;
            if n == 0 || head.len() + n > MAX_REQUEST {
                return Err(std::io::Error::other("incomplete or oversized request"));
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok(())
    };
    tokio::time::timeout(REQUEST_TIMEOUT, read_head)
        .await
        .map_err(|_| std::io::Error::other("request timed out"))??;
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (status, body) = match (parts.next(), parts.next()) {
        (Some("GET"), Some("/metrics")) => {
            let body = tokio::task::spawn_blocking(move || render())
                .await
                .map_err(std::io::Error::other)?;
            ("200 OK", body)
        }
        (Some("GET"), _) => ("404 Not Found", "not found: try /metrics\n".to_owned()),
        _ => ("405 Method Not Allowed", "only GET\n".to_owned()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {CONTENT_TYPE}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
