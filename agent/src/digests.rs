//! The source's SHA-256 of whole files, remembered by (device, inode, size, modification time,
//! change time), so that sending the same unchanged file again does not hash it again; with a
//! state directory, kept in its file `digests` so that a restart does not forget them either.
//!
//! The change time is part of the key because no user can set it: a file rewritten and given its
//! old modification time back (`touch -d`) still misses. A stale entry cannot publish wrong
//! bytes anyway: the destination hashes what it receives and refuses a file whose digest differs
//! from the one the source announces.
//!
//! The file on disk is read back as untrusted input: bounded before it is read, checked whole
//! (length, count, a SHA-256 of its contents) and entry by entry; anything wrong and the star
//! starts with an empty cache and a warning. It must never make the star fail to start.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use rustix::fs::Stat;
use sha2::{Digest as _, Sha256};
use tokio::sync::Notify;
use tracing::{debug, warn};

/// How many digests a star remembers; at about 100 bytes each, 400 KiB at most.
const CAPACITY: usize = 4096;
/// The cache's file in the state directory, and the temporary name it is written under.
const FILE: &str = "digests";
const TMP: &str = "digests.tmp";
/// The first bytes of the file: its format and version.
const MAGIC: &[u8; 8] = b"ORBTDG01";
/// One entry on disk: seven little-endian 64-bit fields of the key, then the SHA-256.
const ENTRY: usize = 7 * 8 + 32;
/// Magic, a 32-bit count, the entries, the SHA-256 of everything before it.
const MAX_FILE: usize = MAGIC.len() + 4 + CAPACITY * ENTRY + 32;

/// What identifies one version of a file's contents without reading them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct FileKey {
    dev: u64,
    inode: u64,
    size: i64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileKey {
    pub(crate) fn of(stat: &Stat) -> FileKey {
        FileKey {
            dev: stat.st_dev,
            inode: stat.st_ino,
            size: stat.st_size,
            mtime: (
                stat.st_mtime,
                i64::try_from(stat.st_mtime_nsec).unwrap_or(-1),
            ),
            ctime: (
                stat.st_ctime,
                i64::try_from(stat.st_ctime_nsec).unwrap_or(-1),
            ),
        }
    }

    /// Whether a key read from disk could have come from [`FileKey::of`]: a size that is not
    /// negative, nanoseconds below a second (or the -1 that stands for "unknown").
    fn is_plausible(&self) -> bool {
        let nanos = |n: i64| (-1..1_000_000_000).contains(&n);
        self.size >= 0 && nanos(self.mtime.1) && nanos(self.ctime.1)
    }
}

/// A bounded map from file versions to their SHA-256, optionally kept in a file.
#[derive(Debug, Default)]
pub(crate) struct Digests {
    map: Mutex<HashMap<FileKey, [u8; 32]>>,
    /// The file it is kept in, once [`Digests::load`] named one.
    file: OnceLock<PathBuf>,
    /// Told of every new digest, for [`Digests::changed`].
    changed: Notify,
}

impl Digests {
    pub(crate) fn get(&self, key: &FileKey) -> Option<[u8; 32]> {
        let found = self
            .map
            .lock()
            .expect("digest cache lock")
            .get(key)
            .copied();
        if found.is_some() {
            debug!(inode = key.inode, size = key.size, "digest from cache");
        }
        found
    }

    /// Remembers `digest` for `key`. When full, forgets an arbitrary half first: simpler than
    /// an LRU, and a miss costs one hash of the file.
    pub(crate) fn insert(&self, key: FileKey, digest: [u8; 32]) {
        let mut map = self.map.lock().expect("digest cache lock");
        if map.len() >= CAPACITY && !map.contains_key(&key) {
            let drop: Vec<FileKey> = map.keys().take(CAPACITY / 2).copied().collect();
            for key in drop {
                map.remove(&key);
            }
        }
        map.insert(key, digest);
        drop(map);
        self.changed.notify_one();
    }

    /// Keeps the cache in `state_dir` from now on, starting from what is there. A file that is
    /// missing starts an empty cache; one that cannot be read or fails a check does too, with a
    /// warning. Blocking.
    pub(crate) fn load(&self, state_dir: &Path) {
        let path = state_dir.join(FILE);
        match read(&path) {
            Ok(entries) => {
                debug!("{} digests loaded from {}", entries.len(), path.display());
                self.map.lock().expect("digest cache lock").extend(entries);
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => warn!(
                "digest cache {} ignored, files will be hashed again: {error}",
                path.display()
            ),
        }
        let _ = self.file.set(path);
    }

    /// Waits until a digest is added after the last call. Cancel-safe.
    pub(crate) async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Writes the cache to its file, if it has one: durably and atomically (a temporary file,
    /// fsync, rename, fsync the folder). Blocking.
    ///
    /// # Errors
    ///
    /// I/O; the file keeps its previous contents.
    pub(crate) fn save(&self) -> io::Result<()> {
        let Some(path) = self.file.get() else {
            return Ok(());
        };
        let entries: Vec<(FileKey, [u8; 32])> = self
            .map
            .lock()
            .expect("digest cache lock")
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect();
        let body = encode(&entries);
        let dir = path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(TMP);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(no_follow())
            .open(&tmp)?;
        file.write_all(&body)?;
        file.sync_data()?;
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()?;
        debug!("{} digests saved", entries.len());
        Ok(())
    }
}

/// The file's bytes for `entries` (at most [`CAPACITY`] of them).
fn encode(entries: &[(FileKey, [u8; 32])]) -> Vec<u8> {
    let entries = &entries[..entries.len().min(CAPACITY)];
    let mut body = Vec::with_capacity(MAGIC.len() + 4 + entries.len() * ENTRY + 32);
    body.extend_from_slice(MAGIC);
    body.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for (key, digest) in entries {
        for field in [
            key.dev,
            key.inode,
            key.size as u64,
            key.mtime.0 as u64,
            key.mtime.1 as u64,
            key.ctime.0 as u64,
            key.ctime.1 as u64,
        ] {
            body.extend_from_slice(&field.to_le_bytes());
        }
        body.extend_from_slice(digest);
    }
    let sum = Sha256::digest(&body);
    body.extend_from_slice(&sum);
    body
}

/// The entries of a file's bytes, or why they are refused.
fn decode(body: &[u8]) -> Result<Vec<(FileKey, [u8; 32])>, String> {
    if body.len() > MAX_FILE {
        return Err(format!("longer than {MAX_FILE} bytes"));
    }
    let head = MAGIC.len() + 4;
    if body.len() < head + 32 || &body[..MAGIC.len()] != MAGIC {
        return Err("not a digest cache of this version".into());
    }
    let count = u32::from_le_bytes(body[MAGIC.len()..head].try_into().expect("4 bytes")) as usize;
    if count > CAPACITY {
        return Err(format!("{count} entries, more than {CAPACITY}"));
    }
    if body.len() != head + count * ENTRY + 32 {
        return Err(format!("{} bytes for {count} entries", body.len()));
    }
    let (content, sum) = body.split_at(body.len() - 32);
    if Sha256::digest(content).as_slice() != sum {
        return Err("its checksum does not match its contents".into());
    }
    let mut entries = Vec::with_capacity(count);
    for raw in content[head..].chunks_exact(ENTRY) {
        let field = |i: usize| u64::from_le_bytes(raw[i * 8..i * 8 + 8].try_into().expect("8"));
        let key = FileKey {
            dev: field(0),
            inode: field(1),
            size: field(2) as i64,
            mtime: (field(3) as i64, field(4) as i64),
            ctime: (field(5) as i64, field(6) as i64),
        };
        if !key.is_plausible() {
            return Err(format!("an impossible entry ({key:?})"));
        }
        entries.push((key, raw[56..].try_into().expect("32 bytes")));
    }
    Ok(entries)
}

/// Reads and decodes the file at `path`: a regular file, opened without following a link, of at
/// most [`MAX_FILE`] bytes.
fn read(path: &Path) -> io::Result<Vec<(FileKey, [u8; 32])>> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(no_follow())
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let mut body = Vec::new();
    file.take(MAX_FILE as u64 + 1).read_to_end(&mut body)?;
    decode(&body).map_err(io::Error::other)
}

/// `O_NOFOLLOW | O_NONBLOCK`: a file replaced by a link is not followed, and one replaced by a
/// FIFO does not block.
fn no_follow() -> i32 {
    (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(inode: u64) -> FileKey {
        FileKey {
            dev: 1,
            inode,
            size: 10,
            mtime: (1, 0),
            ctime: (1, 0),
        }
    }

    #[test]
    fn a_changed_version_misses() {
        let digests = Digests::default();
        digests.insert(key(1), [7; 32]);
        assert_eq!(digests.get(&key(1)), Some([7; 32]));
        let touched = FileKey {
            ctime: (2, 0),
            ..key(1)
        };
        assert_eq!(digests.get(&touched), None);
    }

    #[test]
    fn the_cache_stays_bounded() {
        let digests = Digests::default();
        for inode in 0..(3 * CAPACITY as u64) {
            digests.insert(key(inode), [1; 32]);
        }
        let len = digests.map.lock().unwrap().len();
        assert!(len <= CAPACITY, "{len} entries");
        assert_eq!(digests.get(&key(3 * CAPACITY as u64 - 1)), Some([1; 32]));
    }

    #[test]
    fn saved_digests_come_back_in_a_new_cache() {
        let dir = tempfile::tempdir().unwrap();
        let digests = Digests::default();
        digests.load(dir.path());
        for inode in 0..(CAPACITY as u64 + 10) {
            digests.insert(key(inode), [inode as u8; 32]);
        }
        digests.save().unwrap();
        let body = std::fs::read(dir.path().join(FILE)).unwrap();
        assert!(body.len() <= MAX_FILE, "{} bytes", body.len());
        assert!(!dir.path().join(TMP).exists());

        let again = Digests::default();
        again.load(dir.path());
        let kept = digests.map.lock().unwrap().clone();
        assert_eq!(*again.map.lock().unwrap(), kept);
        let inode = *kept.keys().next().map(|k| &k.inode).unwrap();
        assert_eq!(again.get(&key(inode)), Some([inode as u8; 32]));
    }

    #[test]
    fn a_cache_without_a_state_directory_writes_nothing() {
        let digests = Digests::default();
        digests.insert(key(1), [1; 32]);
        digests.save().unwrap();
    }

    #[test]
    fn any_damaged_byte_or_length_empties_the_cache_rather_than_trusting_it() {
        let entries: Vec<_> = (0..3).map(|i| (key(i), [i as u8; 32])).collect();
        let good = encode(&entries);
        assert_eq!(decode(&good).unwrap(), entries);
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad).is_err(), "byte {i} flipped was accepted");
        }
        for len in 0..good.len() {
            assert!(decode(&good[..len]).is_err(), "{len} bytes accepted");
        }
        assert!(decode(&vec![0; MAX_FILE + 1]).is_err());
    }

    #[test]
    fn a_well_formed_file_with_an_impossible_entry_is_refused() {
        let mut impossible = key(1);
        impossible.mtime.1 = 2_000_000_000;
        let err = decode(&encode(&[(key(0), [0; 32]), (impossible, [1; 32])])).unwrap_err();
        assert!(err.contains("impossible"), "{err}");
        let negative = FileKey { size: -5, ..key(2) };
        assert!(decode(&encode(&[(negative, [0; 32])])).is_err());
    }

    #[test]
    fn a_count_above_the_capacity_is_refused_before_anything_else() {
        let mut body = MAGIC.to_vec();
        body.extend_from_slice(&u32::MAX.to_le_bytes());
        body.extend_from_slice(&[0; 32]);
        let err = decode(&body).unwrap_err();
        assert!(err.contains("more than"), "{err}");
    }

    #[test]
    fn garbage_in_the_state_directory_loads_as_an_empty_cache() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"not a cache at all").unwrap();
        let digests = Digests::default();
        digests.load(dir.path());
        assert!(digests.map.lock().unwrap().is_empty());
        // It still saves, over the garbage.
        digests.insert(key(1), [1; 32]);
        digests.save().unwrap();
        let again = Digests::default();
        again.load(dir.path());
        assert_eq!(again.get(&key(1)), Some([1; 32]));
    }
}
