//! The destination's journal of replications in flight, one small JSON file per transfer in
//! `STATE_DIR/transfers/`. An entry is written before its temporary file is created and updated
//! at every checkpoint (after the temporary file's data is synced), so that after a crash or a
//! stop the star knows every `.orbit-*.part` file it made and how much of it is good: it resumes
//! those transfers on start, or removes them.
//!
//! Entries hold the read token (short-lived, but a credential): the files are 0600 and the
//! directory 0700. The journal never holds file data.
//!
//! What is read back is trusted no more than what a peer sends: an entry is opened without
//! following a link, read only up to [`MAX_ENTRY`] bytes, and kept only if every field passes
//! [`Entry::check`] (the temporary file's name is exactly the one this star makes for that
//! transfer, the paths and names are valid wire paths and star names, the counts add up). Anything
//! else is removed with a warning naming the reason; its temporary file is left alone.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use orbit_wire::{FileVersion, ReplicateFile, TransferId};

/// The journal's folder inside the state directory.
const DIR: &str = "transfers";

/// The largest entry read back: a command with its token and the fan-out's upstreams with
/// theirs fit many times over.
pub(crate) const MAX_ENTRY: u64 = 1024 * 1024;

/// The temporary file's name this star makes for transfer `id`, with a random `tag` of 32 bits.
pub(crate) fn part_name(id: TransferId, tag: u32) -> String {
    format!(".orbit-{id}-{tag:08x}.part")
}

/// Whether `part` is a name [`part_name`] makes for transfer `id`: a plain name in the target's
/// directory, never a path.
pub(crate) fn is_part_name(id: TransferId, part: &str) -> bool {
    let Some(tag) = part
        .strip_prefix(&format!(".orbit-{id}-"))
        .and_then(|rest| rest.strip_suffix(".part"))
    else {
        return false;
    };
    tag.len() == 8 && tag.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

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
    /// For a file taken in pieces (from several sources, or over several connections): what
    /// else the command said. `verified` and `prefix_sha256` are then the prefix of whole
    /// pieces hashed in order and synced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) pieces: Option<PiecesEntry>,
}

/// What a journal entry adds for a file taken in pieces.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PiecesEntry {
    /// The other sources (a source repeated is one more connection to it).
    pub(crate) also: Vec<orbit_wire::fanout::Upstream>,
    /// The command's piece size (0: the default).
    pub(crate) piece_size: u64,
    /// The size of the pieces written, which `verified` is a multiple of (or the file's size).
    pub(crate) piece: u64,
    /// The SHA-256 the sources agreed on, hex: a resume keeps the bytes only if they agree on
    /// it again.
    pub(crate) sha256: String,
}

impl Entry {
    /// Checks every field as if a peer had sent it; the journal keeps only entries that pass.
    /// `file_name` is the entry's file name, which must be the transfer's.
    ///
    /// # Errors
    ///
    /// Why the entry cannot be trusted, for the log.
    pub(crate) fn check(&self, file_name: &str) -> Result<(), String> {
        let cmd = &self.command;
        let id = cmd.transfer_id;
        if file_name != format!("{id}.json") {
            return Err(format!(
                "the file is named {file_name:?}, not after transfer {id}"
            ));
        }
        if !is_part_name(id, &self.part) {
            return Err(format!(
                "temporary file name {:?} is not one this star makes",
                self.part
            ));
        }
        for path in [&cmd.source_path, &cmd.target_path] {
            orbit_wire::path::validate(path).map_err(|e| format!("path {path:?}: {e}"))?;
        }
        let names =
            std::iter::once(&cmd.source).chain(self.upstreams.iter().flatten().map(|u| &u.star));
        for name in names {
            orbit_certs::validate_name(name).map_err(|e| e.to_string())?;
        }
        let also = self
            .pieces
            .as_ref()
            .map(|p| &p.also[..])
            .unwrap_or_default();
        let upstreams = self.upstreams.as_deref().unwrap_or_default();
        for list in [upstreams, also] {
            if list.len() > orbit_wire::fanout::MAX_UPSTREAMS {
                return Err(format!("{} upstreams", list.len()));
            }
        }
        for upstream in upstreams.iter().chain(also) {
            orbit_certs::validate_name(&upstream.star).map_err(|e| e.to_string())?;
            orbit_wire::path::validate(&upstream.path)
                .map_err(|e| format!("upstream path {:?}: {e}", upstream.path))?;
        }
        let size = self.version.map_or(0, |v| v.size);
        if self.verified > size {
            return Err(format!(
                "{} bytes verified of a {size}-byte file",
                self.verified
            ));
        }
        let is_sha256 = |hex: &str| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit());
        if !is_sha256(&self.prefix_sha256) {
            return Err("the prefix digest is not a SHA-256".into());
        }
        if let Some(pieces) = &self.pieces {
            if pieces.piece == 0
                || (!self.verified.is_multiple_of(pieces.piece) && self.verified != size)
            {
                return Err(format!(
                    "{} bytes verified is not a whole number of {}-byte pieces",
                    self.verified, pieces.piece
                ));
            }
            if !is_sha256(&pieces.sha256) {
                return Err("the agreed digest is not a SHA-256".into());
            }
        }
        Ok(())
    }
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
            .custom_flags(no_follow())
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

    /// Every entry that reads back whole and passes [`Entry::check`]. The others (a torn write
    /// cannot happen, but a hand edit or an attacker with the state directory can), and leftover
    /// temporary files, are removed; their temporary files are left where they are. Blocking.
    pub(crate) fn entries(&self) -> Vec<Entry> {
        let Ok(read) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut entries = Vec::new();
        for item in read.flatten() {
            let path = item.path();
            let name = item.file_name().to_string_lossy().into_owned();
            match read_entry(&path).and_then(|entry| entry.check(&name).map(|()| entry)) {
                Ok(entry) => entries.push(entry),
                Err(why) => {
                    tracing::warn!(path = %path.display(), "removing a journal entry that cannot be trusted: {why}");
                    let _ = fs::remove_file(&path);
                }
            }
        }
        entries.sort_by_key(|e| e.command.transfer_id);
        entries
    }
}

/// Reads and parses one entry: a regular file, opened without following a link, of at most
/// [`MAX_ENTRY`] bytes.
fn read_entry(path: &Path) -> Result<Entry, String> {
    if path.extension().is_none_or(|e| e != "json") {
        return Err("not an entry".into());
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(no_follow())
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let mut body = Vec::new();
    file.take(MAX_ENTRY + 1)
        .read_to_end(&mut body)
        .map_err(|e| e.to_string())?;
    if body.len() as u64 > MAX_ENTRY {
        return Err(format!("longer than {MAX_ENTRY} bytes"));
    }
    parse(&body)
}

/// An entry's bytes, parsed: JSON of at most [`MAX_ENTRY`] bytes.
fn parse(body: &[u8]) -> Result<Entry, String> {
    if body.len() as u64 > MAX_ENTRY {
        return Err(format!("longer than {MAX_ENTRY} bytes"));
    }
    serde_json::from_slice::<Entry>(body).map_err(|e| e.to_string())
}

/// What the fuzz target `journal_entry` (fuzz/) reaches: an entry's bytes read back from disk
/// under `file_name`, parsed and checked as a restart does. For an entry a restart keeps: its
/// transfer id, temporary file name, target path and the entry written out again. `file_name`
/// `None` stands for the name the entry's own transfer id gives.
#[doc(hidden)]
pub fn fuzz_entry(
    body: &[u8],
    file_name: Option<&str>,
) -> Result<(TransferId, String, String, Vec<u8>), String> {
    let entry = parse(body)?;
    let own = format!("{}.json", entry.command.transfer_id);
    entry.check(file_name.unwrap_or(&own))?;
    let again = serde_json::to_vec(&entry).map_err(|e| e.to_string())?;
    Ok((
        entry.command.transfer_id,
        entry.part,
        entry.command.target_path,
        again,
    ))
}

/// `O_NOFOLLOW | O_NONBLOCK`: an entry replaced by a link is not followed, and one replaced by a
/// FIFO does not block.
fn no_follow() -> i32 {
    (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32
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
            pieces: None,
            part: part_name(TransferId(id), 0xab),
            version: Some(FileVersion {
                size: 10,
                mtime_sec: 0,
                mtime_nsec: 0,
                inode: 1,
            }),
            verified: 7,
            prefix_sha256: "ab".repeat(32),
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
