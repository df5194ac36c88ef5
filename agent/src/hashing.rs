//! The SHA-256 of one transfer's bytes, computed on a thread of its own beside the thread that
//! reads them (the source's read loop in serve.rs) or writes them (the destination's disk thread).
//!
//! Writing and hashing on one thread made that thread the busiest of the whole star: 1.45
//! CPU-seconds per GiB at loopback, about half of it SHA-256 and half the copy into the page
//! cache (`bench/profile`, bench/RESULTS.md); reading and hashing at the source, the same. That
//! thread bounds the rate one replication can reach however many cores a host has; apart, each
//! does half. The bytes are handed over as the
//! network's reference-counted buffers, not copied, and the channel holds at most
//! [`HASH_BEHIND`] payloads, so memory per transfer stays bounded: a hasher that falls behind
//! makes the writer wait.

use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

use crate::framed::Payload;

/// The buffer to read a file into for hashing it: small enough to stay in a core's L2 cache
/// between the kernel's copy into it and SHA-256's read of it. With 1 MiB, reading 1 GiB from
/// tmpfs and hashing it cost 0.66-0.73 CPU-s of system time; with 128 KiB, 0.14-0.16, the same
/// as the read alone (Python's hashlib, `readinto` of a reused buffer, on this 2-core EPYC).
pub(crate) const HASH_READ: usize = 128 * 1024;

/// Payloads queued between the disk thread and the hashing thread (each at most a chunk or a
/// few): about 1 MiB.
const HASH_BEHIND: usize = 16;

/// What the hashing thread is told, in the order of the bytes.
enum Job {
    /// The next bytes.
    Bytes(Payload),
    /// An attempt begins: with `whole`, the file starts again from byte 0; with `segment`, a
    /// digest of this attempt's own bytes is kept too (its trailer covers only them).
    Attempt { whole: bool, segment: bool },
    /// Report the digests of every byte sent so far.
    Digests(SyncSender<Digests>),
}

/// The digests of the bytes hashed so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Digests {
    /// Of the whole file from byte 0.
    pub(crate) whole: [u8; 32],
    /// Of this attempt's bytes, when it began past byte 0.
    pub(crate) segment: Option<[u8; 32]>,
}

/// The hashing thread went away: it panicked, which nothing in it should.
#[derive(Debug, thiserror::Error)]
#[error("the hashing thread stopped")]
pub(crate) struct Stopped;

/// The handle on one replication's hashing thread. Dropping it ends the thread.
#[derive(Debug)]
pub(crate) struct Hashing {
    tx: Option<SyncSender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Hashing {
    /// Starts the thread, its whole-file digest carrying on from `whole` (the bytes a resumed
    /// file already holds).
    ///
    /// # Errors
    ///
    /// When no thread can be started.
    pub(crate) fn start(whole: Sha256) -> std::io::Result<Hashing> {
        let (tx, rx) = mpsc::sync_channel(HASH_BEHIND);
        let thread = std::thread::Builder::new()
            .name("orbit-hash".into())
            .spawn(move || run(whole, &rx))?;
        Ok(Hashing {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    fn send(&self, job: Job) -> Result<(), Stopped> {
        self.tx
            .as_ref()
            .ok_or(Stopped)?
            .send(job)
            .map_err(|_| Stopped)
    }

    /// Hashes `data` after what came before; waits while [`HASH_BEHIND`] payloads are queued.
    pub(crate) fn update(&self, data: Payload) -> Result<(), Stopped> {
        self.send(Job::Bytes(data))
    }

    /// [`Hashing::update`] with one buffer.
    pub(crate) fn update_one(&self, piece: bytes::Bytes) -> Result<(), Stopped> {
        let mut data = Payload::default();
        data.push(piece);
        self.update(data)
    }

    /// An attempt begins: see [`Job::Attempt`].
    pub(crate) fn attempt(&self, whole: bool, segment: bool) -> Result<(), Stopped> {
        self.send(Job::Attempt { whole, segment })
    }

    /// The digests of every byte given so far, to be received once they are hashed: a
    /// checkpoint's thread waits for them, not the writer.
    pub(crate) fn digests_later(&self) -> Result<Receiver<Digests>, Stopped> {
        let (reply, digests) = mpsc::sync_channel(1);
        self.send(Job::Digests(reply))?;
        Ok(digests)
    }

    /// The digests of every byte given so far, once they are hashed.
    pub(crate) fn digests(&self) -> Result<Digests, Stopped> {
        self.digests_later()?.recv().map_err(|_| Stopped)
    }
}

impl Drop for Hashing {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(mut whole: Sha256, jobs: &Receiver<Job>) {
    let mut segment: Option<Sha256> = None;
    while let Ok(job) = jobs.recv() {
        match job {
            Job::Bytes(data) => {
                for piece in data.pieces() {
                    whole.update(piece);
                    if let Some(segment) = &mut segment {
                        segment.update(piece);
                    }
                }
            }
            Job::Attempt {
                whole: restart,
                segment: own,
            } => {
                if restart {
                    whole = Sha256::new();
                }
                segment = own.then(Sha256::new);
            }
            Job::Digests(reply) => {
                let _ = reply.send(Digests {
                    whole: whole.clone().finalize().into(),
                    segment: segment.clone().map(|s| s.finalize().into()),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(bytes: &[u8]) -> Payload {
        let mut p = Payload::default();
        p.push(bytes::Bytes::copy_from_slice(bytes));
        p
    }

    fn sha(bytes: &[u8]) -> [u8; 32] {
        Sha256::digest(bytes).into()
    }

    #[test]
    fn the_digests_cover_the_bytes_in_order_and_each_attempt_its_own() {
        let h = Hashing::start(Sha256::new()).unwrap();
        h.attempt(false, false).unwrap();
        h.update(payload(b"hello, ")).unwrap();
        let at_checkpoint = h.digests_later().unwrap();
        h.update(payload(b"orbit")).unwrap();
        assert_eq!(at_checkpoint.recv().unwrap().whole, sha(b"hello, "));
        // A resumed attempt: the whole file goes on, the attempt's digest starts afresh.
        h.attempt(false, true).unwrap();
        h.update(payload(b"!")).unwrap();
        assert_eq!(
            h.digests().unwrap(),
            Digests {
                whole: sha(b"hello, orbit!"),
                segment: Some(sha(b"!")),
            }
        );
        // From byte 0 again: nothing of before counts.
        h.attempt(true, false).unwrap();
        h.update(payload(b"new")).unwrap();
        assert_eq!(
            h.digests().unwrap(),
            Digests {
                whole: sha(b"new"),
                segment: None,
            }
        );
    }

    #[test]
    fn a_resumed_file_carries_on_from_its_prefix() {
        let mut prefix = Sha256::new();
        prefix.update(b"abc");
        let h = Hashing::start(prefix).unwrap();
        h.update(payload(b"def")).unwrap();
        assert_eq!(h.digests().unwrap().whole, sha(b"abcdef"));
    }
}
