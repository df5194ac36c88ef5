//! The star's UDP socket: large kernel buffers, and segmentation offload (GSO) kept within what
//! one `sendmsg` may carry.
//!
//! With GSO, quinn hands the socket up to ten packets of the path's size in one buffer and the
//! kernel cuts them apart. One UDP send carries at most 65,507 bytes, so ten 8,952-byte packets
//! (loopback, jumbo frames) fail with `EMSGSIZE`, and quinn-udp drops such a send without a word
//! (it takes `EMSGSIZE` for a failed MTU probe). The peer sees a burst of losses that no socket
//! counter shows. [`GsoCapped`] tells quinn to batch no more packets than fit.

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

/// Binds `addr` with large buffers and wraps it for quinn, batching at most as many packets of
/// `max_packet` bytes as one send can carry.
pub(crate) fn bind(
    addr: SocketAddr,
    max_packet: u16,
    runtime: &dyn Runtime,
) -> io::Result<Arc<dyn AsyncUdpSocket>> {
    let socket = bind_socket(addr)?;
    let inner = runtime.wrap_udp_socket(socket)?;
    let max_segments = (MAX_SEND / usize::from(max_packet)).max(1);
    Ok(Arc::new(GsoCapped {
        inner,
        max_segments,
    }))
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

/// quinn's own socket, with GSO batches capped at `max_segments` packets.
struct GsoCapped {
    inner: Arc<dyn AsyncUdpSocket>,
    max_segments: usize,
}

impl fmt::Debug for GsoCapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GsoCapped")
            .field("inner", &self.inner)
            .field("max_segments", &self.max_segments)
            .finish()
    }
}

impl AsyncUdpSocket for GsoCapped {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        self.inner.try_send(transmit)
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
        self.inner.max_transmit_segments().min(self.max_segments)
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

    #[test]
    fn a_full_batch_of_the_largest_packets_fits_one_send() {
        let socket = bind(
            "127.0.0.1:0".parse().unwrap(),
            crate::star::MAX_UDP_PAYLOAD,
            &quinn::TokioRuntime,
        );
        // wrap_udp_socket needs a runtime only for its poller, not to be built.
        let socket = socket.unwrap();
        let segments = socket.max_transmit_segments();
        assert!(segments >= 1);
        assert!(segments * usize::from(crate::star::MAX_UDP_PAYLOAD) <= MAX_SEND);
    }
}
