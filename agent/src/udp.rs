//! The star's UDP socket: large kernel buffers, and segmentation offload (GSO) kept within what
//! one `sendmsg` may carry.
//!
//! With GSO, quinn hands the socket up to ten packets of the path's size in one buffer and the
//! kernel cuts them apart. One UDP send carries at most 65,507 bytes, so ten 8,952-byte packets
//! (loopback, jumbo frames) fail with `EMSGSIZE`, and quinn-udp drops such a send without a word
//! (it takes `EMSGSIZE` for a failed MTU probe). The peer sees a burst of losses that no socket
//! counter shows. [`GsoSplit`] sends such a batch in as many system calls as it needs.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Runtime, UdpPoller};

/// UDP socket buffers; quinn's defaults drop packets at high rates.
const SOCKET_BUFFER: usize = 16 * 1024 * 1024;
/// The most UDP payload one `sendmsg` may carry over IPv4 (65,535 less the IP and UDP headers).
const MAX_SEND: usize = 65_535 - 20 - 8;

/// Binds `addr` with large buffers and wraps it for quinn.
pub(crate) fn bind(addr: SocketAddr, runtime: &dyn Runtime) -> io::Result<Arc<dyn AsyncUdpSocket>> {
    let socket = bind_socket(addr)?;
    let inner = runtime.wrap_udp_socket(socket)?;
    Ok(Arc::new(GsoSplit { inner }))
}

fn bind_socket(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // A receiver that falls behind for a few milliseconds overflows a small buffer, and the
    // losses make QUIC shrink its window and its packets. The kernel caps these sizes at
    // net.core.{r,w}mem_max unless the process may exceed them (CAP_NET_ADMIN); try that first.
    if rustix::net::sockopt::set_socket_recv_buffer_size_force(&socket, SOCKET_BUFFER).is_err() {
        let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    }
    if rustix::net::sockopt::set_socket_send_buffer_size_force(&socket, SOCKET_BUFFER).is_err() {
        let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// quinn's own socket, with GSO batches over 64 KiB sent in parts.
struct GsoSplit {
    inner: Arc<dyn AsyncUdpSocket>,
}

impl fmt::Debug for GsoSplit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GsoSplit")
            .field("inner", &self.inner)
            .finish()
    }
}

/// The parts one batch is sent in: whole packets, each part within one send's limit.
fn parts<'a>(transmit: &'a Transmit<'a>) -> impl Iterator<Item = Transmit<'a>> + 'a {
    let per_part = match transmit.segment_size {
        Some(segment) if transmit.contents.len() > MAX_SEND => {
            (MAX_SEND / segment).max(1) * segment
        }
        _ => transmit.contents.len().max(1),
    };
    transmit
        .contents
        .chunks(per_part)
        .map(move |contents| Transmit {
            destination: transmit.destination,
            ecn: transmit.ecn,
            contents,
            segment_size: transmit.segment_size.filter(|&s| s < contents.len()),
            src_ip: transmit.src_ip,
        })
}

impl AsyncUdpSocket for GsoSplit {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        if transmit.contents.len() <= MAX_SEND {
            return self.inner.try_send(transmit);
        }
        // A part that would block fails the whole batch, which quinn then sends again: the
        // parts already sent arrive twice, and the peer discards the copies. Losing the rest
        // instead would read as congestion.
        parts(transmit).try_for_each(|part| self.inner.try_send(&part))
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(contents: &[u8], segment_size: Option<usize>) -> Transmit<'_> {
        Transmit {
            destination: "127.0.0.1:9".parse().unwrap(),
            ecn: None,
            contents,
            segment_size,
            src_ip: None,
        }
    }

    #[test]
    fn a_batch_over_64_kib_is_sent_in_whole_packets_each_within_a_send() {
        let contents: Vec<u8> = (0..10 * 8952).map(|i| i as u8).collect();
        let transmit = batch(&contents, Some(8952));
        let parts: Vec<_> = parts(&transmit).collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].contents.len(), 7 * 8952);
        assert_eq!(parts[1].contents.len(), 3 * 8952);
        assert!(parts.iter().all(|p| p.contents.len() <= MAX_SEND));
        assert!(parts.iter().all(|p| p.segment_size == Some(8952)));
        let joined: Vec<u8> = parts.iter().flat_map(|p| p.contents.to_vec()).collect();
        assert_eq!(joined, contents);
    }

    #[test]
    fn a_short_last_packet_stays_in_the_last_part() {
        let contents = vec![7u8; 9 * 8952 + 100];
        let transmit = batch(&contents, Some(8952));
        let parts: Vec<_> = parts(&transmit).collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1].contents.len(), 2 * 8952 + 100);
        assert_eq!(parts[1].segment_size, Some(8952));
    }

    #[test]
    fn a_part_of_one_packet_is_sent_without_segmentation() {
        let contents = vec![1u8; 8 * 8952];
        let transmit = batch(&contents, Some(8952));
        let parts: Vec<_> = parts(&transmit).collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1].contents.len(), 8952);
        assert_eq!(parts[1].segment_size, None);
    }
}
