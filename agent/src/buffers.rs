//! The buffers a star reads the chunks it sends into, used again once the peer has them.
//!
//! A chunk read from a file becomes a [`Bytes`] that quinn keeps until the peer acknowledges it,
//! then drops on the runtime's thread. Allocated fresh each time, those 64 KiB buffers came from
//! the arena of whichever blocking thread read them; with several ranged reads at once (the
//! pieces of `--connections`, several sources) each arena emptied as its range was acknowledged,
//! glibc gave the pages back to the kernel, and the next read faulted them in again: 175,000
//! page faults per GiB sent, 0.35 CPU-s, a sixth of the source's CPU (bench/RESULTS.md). Here a
//! buffer goes back to a shared free list when quinn drops it, and the next read takes it from
//! there. The list keeps at most [`KEPT`] buffers; more in flight at once are allocated and freed
//! as before.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

use orbit_wire::CHUNK_SIZE;

/// Free buffers kept at most: 256 × 64 KiB = 16 MiB.
const KEPT: usize = 256;

/// The free list, shared by every read of a star.
#[derive(Debug, Default)]
pub(crate) struct Buffers {
    free: Mutex<Vec<Vec<u8>>>,
}

impl Buffers {
    /// An empty buffer with room for a chunk: a used one if there is one. Its contents are not
    /// zeroed; a read fills its spare capacity.
    pub(crate) fn take(&self) -> Vec<u8> {
        let used = self.lock().pop();
        used.unwrap_or_else(|| Vec::with_capacity(CHUNK_SIZE))
    }

    /// `buf` as `Bytes` that give it back to the free list when the last of them is dropped.
    pub(crate) fn share(self: &Arc<Self>, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Lent {
            buf,
            home: self.clone(),
        })
    }

    fn give_back(&self, mut buf: Vec<u8>) {
        // Only chunk-sized buffers: a larger one would keep more than its share.
        if !(CHUNK_SIZE..2 * CHUNK_SIZE).contains(&buf.capacity()) {
            return;
        }
        buf.clear();
        let mut free = self.lock();
        if free.len() < KEPT {
            free.push(buf);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A buffer lent out as `Bytes`.
struct Lent {
    buf: Vec<u8>,
    home: Arc<Buffers>,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        self.home.give_back(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_once_its_last_bytes_are_dropped() {
        let buffers = Arc::new(Buffers::default());
        let mut buf = buffers.take();
        buf.extend_from_slice(b"chunk");
        let at = buf.as_ptr();
        let bytes = buffers.share(buf);
        let part = bytes.slice(1..3);
        drop(bytes);
        assert_eq!(&part[..], b"hu");
        assert!(buffers.lock().is_empty(), "given back while still in use");
        drop(part);
        let again = buffers.take();
        assert_eq!(again.as_ptr(), at, "not used again");
        assert!(again.is_empty());
        assert!(again.capacity() >= CHUNK_SIZE);
    }

    #[test]
    fn at_most_kept_buffers_wait_on_the_list() {
        let buffers = Arc::new(Buffers::default());
        let lent: Vec<Bytes> = (0..KEPT + 10)
            .map(|_| buffers.share(buffers.take()))
            .collect();
        drop(lent);
        assert_eq!(buffers.lock().len(), KEPT);
    }
}
