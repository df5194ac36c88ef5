//! The source's SHA-256 of whole files, remembered by (device, inode, size, modification time,
//! change time), so that sending the same unchanged file again does not hash it again.
//!
//! The change time is part of the key because no user can set it: a file rewritten and given its
//! old modification time back (`touch -d`) still misses. A stale entry cannot publish wrong
//! bytes anyway: the destination hashes what it receives and refuses a file whose digest differs
//! from the one the source announces.

use std::collections::HashMap;
use std::sync::Mutex;

use rustix::fs::Stat;

/// How many digests a star remembers; at about 100 bytes each, 400 KiB at most.
const CAPACITY: usize = 4096;

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
}

/// A bounded map from file versions to their SHA-256.
#[derive(Debug, Default)]
pub(crate) struct Digests {
    map: Mutex<HashMap<FileKey, [u8; 32]>>,
}

impl Digests {
    pub(crate) fn get(&self, key: &FileKey) -> Option<[u8; 32]> {
        self.map
            .lock()
            .expect("digest cache lock")
            .get(key)
            .copied()
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
    }
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
}
