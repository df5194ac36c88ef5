//! The destination's journal of replications in flight, one small JSON file per transfer in
//! `STATE_DIR/transfers/`. An entry is written before its temporary file is created and updated
//! at every checkpoint (after the temporary file's data is synced), so that after a crash or a
//! stop the star knows every `.orbit-*.part` file it made and how much of it is good: it resumes
//! those transfers on start, or removes them.
//!
//! Entries hold the read token (short-lived, but a credential): the files are 0600 and the
//! directory 0700. The journal never holds file data.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use orbit_wire::{FileVersion, ReplicateFile, TransferId};

/// The journal's folder inside the state directory.
const DIR: &str = "transfers";

/// One replication in flight.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Entry {
    /// The command as the controller sent it (transfer id, source, paths, token).
    pub(crate) command: ReplicateFile,
    /// The temporary file's name, in the target's directory.
    pub(crate) part: String,
    /// The source file's version the bytes so far came from; `None` before the first header.
    pub(crate) version: Option<FileVersion>,
    /// Bytes at the start of the temporary file that were synced to disk.
    pub(crate) verified: u64,
    /// SHA-256 of those bytes, hex, to check the temporary file before resuming from it.
    pub(crate) prefix_sha256: String,
    /// For a fan-out destination, the stars it pulls from before the origin; it publishes
    /// only under the origin's attestation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) upstreams: Option<Vec<orbit_wire::fanout::Upstream>>,
}

/// The journal of one star.
#[derive(Debug)]
pub(crate) struct Journal {
    dir: PathBuf,
}

impl Journal {
    /// Opens (creating) the journal under `state_dir`.
    ///
    /// # Errors
    ///
    /// I/O creating the folder.
    pub(crate) fn open(state_dir: &Path) -> io::Result<Journal> {
        let dir = state_dir.join(DIR);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        Ok(Journal { dir })
    }

    fn path(&self, transfer_id: TransferId) -> PathBuf {
        self.dir.join(format!("{transfer_id}.json"))
    }

    /// Writes `entry` durably and atomically: a temporary file, fsync, rename, fsync the folder.
    /// Blocking.
    ///
    /// # Errors
    ///
    /// I/O.
    pub(crate) fn write(&self, entry: &Entry) -> io::Result<()> {
        let id = entry.command.transfer_id;
        let tmp = self.dir.join(format!("{id}.json.tmp"));
        let body = serde_json::to_vec(entry).map_err(io::Error::other)?;
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(&body)?;
        file.sync_data()?;
        fs::rename(&tmp, self.path(id))?;
        File::open(&self.dir)?.sync_all()
    }

    /// Removes the entry of `transfer_id`, if any. Blocking; errors are ignored because this runs
    /// when the transfer is over either way.
    pub(crate) fn remove(&self, transfer_id: TransferId) {
        let _ = fs::remove_file(self.path(transfer_id));
        let _ = fs::remove_file(self.dir.join(format!("{transfer_id}.json.tmp")));
        if let Ok(dir) = File::open(&self.dir) {
            let _ = dir.sync_all();
        }
    }

    /// Every readable entry. Unreadable files (a torn write cannot happen, but a hand edit can)
    /// and leftover temporary files are removed. Blocking.
    pub(crate) fn entries(&self) -> Vec<Entry> {
        let Ok(read) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut entries = Vec::new();
        for item in read.flatten() {
            let path = item.path();
            let parsed = (path.extension().is_some_and(|e| e == "json"))
                .then(|| fs::read(&path).ok())
                .flatten()
                .and_then(|body| serde_json::from_slice::<Entry>(&body).ok());
            match parsed {
                Some(entry) => entries.push(entry),
                None => {
                    tracing::warn!(path = %path.display(), "removing an unreadable journal entry");
                    let _ = fs::remove_file(&path);
                }
            }
        }
        entries.sort_by_key(|e| e.command.transfer_id);
        entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64) -> Entry {
        Entry {
            command: ReplicateFile {
                transfer_id: TransferId(id),
                source: "a".into(),
                source_addr: "127.0.0.1:1".into(),
                source_path: "/s".into(),
                target_path: "/t".into(),
                token: "T".into(),
                expect_sha256: Some([1; 32]),
                timeout_secs: 5,
            },
            upstreams: None,
            part: ".orbit-x.part".into(),
            version: None,
            verified: 7,
            prefix_sha256: "ab".into(),
        }
    }

    #[test]
    fn entries_round_trip_and_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let journal = Journal::open(tmp.path()).unwrap();
        journal.write(&entry(2)).unwrap();
        journal.write(&entry(1)).unwrap();
        let mut updated = entry(1);
        updated.verified = 9;
        journal.write(&updated).unwrap();
        fs::write(tmp.path().join(DIR).join("junk.json"), b"{").unwrap();
        let entries = journal.entries();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].verified, 9);
        assert_eq!(entries[1].command.expect_sha256, Some([1; 32]));
        let mode = fs::metadata(journal.path(TransferId(1)))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        journal.remove(TransferId(1));
        journal.remove(TransferId(2));
        assert!(journal.entries().is_empty());
        assert_eq!(fs::read_dir(tmp.path().join(DIR)).unwrap().count(), 0);
    }
}
