//! Trees: the messages that replicate a directory, the names inside it, and the filter its token
//! carries.
//!
//! A tree replication is one control command ([`ReplicateTree`]) and, between the stars, any
//! number of bidirectional streams that the destination opens to the source, each carrying one
//! request (a `ControlRequest` variant only a star may send):
//!
//! | request | answer on the same stream |
//! |---|---|
//! | `ControlRequest::List` ([`ListRequest`]) | [`ListFrame::Entries`] batches as the source walks, then [`ListFrame::End`]; or [`ListFrame::Error`] |
//! | `ControlRequest::Prefix` ([`PrefixRequest`]) | one [`PrefixFrame`] |
//! | `ControlRequest::Fetch` ([`FetchRequest`]) | for each file asked for, in order: `DataFrame::Header` (its `request_id` is the file's index in the request), `Chunk`s, `Trailer`; or `DataFrame::Error` for that index, then the next file. An `Error` with `request_id` [`WHOLE_REQUEST`] refuses the whole request |
//!
//! Both carry the tree's token, which the source checks when the stream opens. Names inside a
//! tree are bytes ([`check_name`]), relative to the tree's top, so that every name a file
//! system allows arrives as it was. Neither side trusts a name it receives: each checks it.

use serde::{Deserialize, Serialize};

use crate::{FileVersion, TransferId, WireError, MAX_COMPONENT_LEN, MAX_PATH_LEN};

/// How many entries a source puts in one [`ListFrame::Entries`] at most.
pub const LIST_BATCH: usize = 256;
/// How many bytes of names and link texts a source puts in one [`ListFrame::Entries`] at most,
/// so that a batch stays well inside a control frame whatever the names' length.
pub const LIST_BATCH_BYTES: usize = 32 * 1024;
/// How many files one [`FetchRequest`] may ask for.
pub const MAX_FETCH_FILES: usize = 1024;
/// The `request_id` of a `DataFrame::Error` that refuses a whole fetch, not one file of it.
pub const WHOLE_REQUEST: u64 = u64::MAX;
/// How many failed files a [`TreeSummary`] names; the count covers the rest.
pub const MAX_FAILED_NAMED: usize = 100;

/// Why a name inside a tree was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty, or longer than [`MAX_PATH_LEN`].
    #[error("the name is empty or longer than {MAX_PATH_LEN} bytes")]
    Length,
    /// A NUL byte.
    #[error("the name contains a NUL byte")]
    Nul,
    /// A leading or trailing `/`, or `//`.
    #[error("the name is absolute or has an empty component")]
    EmptyComponent,
    /// A `.` or `..` component.
    #[error("the name has a `.` or `..` component")]
    Dots,
    /// A component over [`MAX_COMPONENT_LEN`].
    #[error("a component of the name is longer than {MAX_COMPONENT_LEN} bytes")]
    ComponentTooLong,
}

/// Checks a name relative to a tree's top: plain components separated by `/`, none empty, `.`
/// or `..`, no NUL, within the path and component limits. Any other byte is allowed.
///
/// # Errors
///
/// The first rule broken.
pub fn check_name(name: &[u8]) -> Result<(), NameError> {
    if name.is_empty() || name.len() > MAX_PATH_LEN {
        return Err(NameError::Length);
    }
    if name.contains(&0) {
        return Err(NameError::Nul);
    }
    for component in name.split(|&b| b == b'/') {
        match component {
            b"" => return Err(NameError::EmptyComponent),
            b"." | b".." => return Err(NameError::Dots),
            c if c.len() > MAX_COMPONENT_LEN => return Err(NameError::ComponentTooLong),
            _ => {}
        }
    }
    Ok(())
}

/// A name for people: UTF-8 as it is, any other byte as `\xNN`, and `\` and control characters
/// escaped, so a name with a newline stays on one line.
pub fn display_name(name: &[u8]) -> String {
    let mut out = String::with_capacity(name.len());
    for chunk in name.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => out.extend(c.escape_default()),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Whether the text of a symbolic link at `name` stays inside the tree when resolved where the
/// link is, whatever the other links in the tree point at: relative, with every `..` before the
/// first name (`../../a/b`, never `a/../b`, since `a` may itself be a link) and no more of them
/// than the link's depth below the top.
pub fn link_stays_inside(name: &[u8], target: &[u8]) -> bool {
    if target.is_empty() || target.starts_with(b"/") || target.contains(&0) {
        return false;
    }
    // The depth of the directory holding the link.
    let depth = name.split(|&b| b == b'/').count() - 1;
    let mut ups = 0;
    let mut named = false;
    for component in target.split(|&b| b == b'/') {
        match component {
            b"" | b"." => {}
            b".." if named => return false,
            b".." => ups += 1,
            _ => named = true,
        }
    }
    ups <= depth
}

/// Which files of a tree a token allows: glob patterns, and whether symbolic links are sent.
///
/// A pattern without a `/` matches the last component of a name at any depth; one with a `/`
/// matches the whole name from the tree's top (a leading `/` is allowed and means the same). A
/// trailing `/` matches directories only. `*` matches within a component, `**` across them, `?`
/// one byte, `[a-z]` and `[!a-z]` a class; `\` escapes the next character. A name is left out
/// when an `exclude` matches it and no `include` does; a directory left out is not walked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// Patterns of names to leave out.
    pub exclude: Vec<String>,
    /// Patterns of names to keep even when an exclude matches.
    pub include: Vec<String>,
    /// Whether symbolic links whose text stays inside the tree are sent (as links, never
    /// followed). Otherwise they are skipped.
    pub links: bool,
}

impl Filter {
    /// Whether the entry `name` (a directory if `is_dir`) is part of the tree.
    pub fn admits(&self, name: &[u8], is_dir: bool) -> bool {
        let hit = |patterns: &[String]| patterns.iter().any(|p| pattern_matches(p, name, is_dir));
        !hit(&self.exclude) || hit(&self.include)
    }

    /// Whether every pattern is one this filter can apply: no empty pattern, no NUL.
    pub fn check(&self) -> Result<(), String> {
        for p in self.exclude.iter().chain(&self.include) {
            if p.is_empty() || p == "/" || p.contains('\0') {
                return Err(format!("pattern {p:?} is empty or contains a NUL byte"));
            }
        }
        Ok(())
    }
}

fn pattern_matches(pattern: &str, name: &[u8], is_dir: bool) -> bool {
    let mut pattern = pattern.as_bytes();
    if let Some(dirs_only) = pattern.strip_suffix(b"/") {
        if !is_dir {
            return false;
        }
        pattern = dirs_only;
    }
    if pattern.contains(&b'/') {
        glob(pattern.strip_prefix(b"/").unwrap_or(pattern), name)
    } else {
        let last = name.rsplit(|&b| b == b'/').next().unwrap_or(name);
        glob(pattern, last)
    }
}

/// Glob matching over bytes, by backtracking on the last star. `*` stops at `/`, `**` does not.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where to resume after the last star: (pattern after it, text position, crosses '/').
    let mut star: Option<(usize, usize, bool)> = None;
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    let double = pattern.get(p + 1) == Some(&b'*');
                    p += if double { 2 } else { 1 };
                    star = Some((p, t, double));
                    continue;
                }
                b'?' if text[t] != b'/' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, len)) = class(&pattern[p..], text[t]) {
                        if matched {
                            p += len;
                            t += 1;
                            continue;
                        }
                    } else if text[t] == b'[' {
                        p += 1;
                        t += 1;
                        continue;
                    }
                }
                b'\\' if pattern.get(p + 1) == Some(&text[t]) => {
                    p += 2;
                    t += 1;
                    continue;
                }
                c if c != b'\\' && c == text[t] => {
                    p += 1;
                    t += 1;
                    continue;
                }
                _ => {}
            }
        }
        // Mismatch: let the last star swallow one more byte, if it may.
        match star {
            Some((sp, st, crosses)) if crosses || text[st] != b'/' => {
                star = Some((sp, st + 1, crosses));
                p = sp;
                t = st + 1;
            }
            _ => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the class at the start of `pattern` (`[...]`). Returns whether it matched
/// and the class's length, or `None` if the class is not closed.
fn class(pattern: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(pattern.get(i), Some(b'!') | Some(b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < pattern.len() {
        let lo = pattern[i];
        if lo == b']' && !first {
            return Some((matched != negate && c != b'/', i + 1));
        }
        first = false;
        if pattern.get(i + 1) == Some(&b'-') && pattern.get(i + 2).is_some_and(|&b| b != b']') {
            let hi = pattern[i + 2];
            matched |= lo <= c && c <= hi;
            i += 3;
        } else {
            matched |= lo == c;
            i += 1;
        }
    }
    None
}

/// Which files a tree replication skips because the target already has them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncLevel {
    /// Skip a file that exists at the target, whatever it holds.
    Exists,
    /// Skip a file of the same size.
    Size,
    /// Skip a file of the same size and modification time (rsync's rule).
    #[default]
    Mtime,
    /// Skip a file whose SHA-256 is the same.
    Checksum,
}

/// The controller's command to replicate the directory `source_path` on `source` into the
/// directory `target_path` here: the contents of the one go into the other.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicateTree {
    /// Chosen by the controller; appears in both stars' logs.
    pub transfer_id: TransferId,
    /// The source star's name.
    pub source: String,
    /// Where the source star listens, `host:port`.
    pub source_addr: String,
    /// The absolute path of the directory on the source star.
    pub source_path: String,
    /// The absolute path of the directory here; created if missing.
    pub target_path: String,
    /// A tree token for the source star, minted for this star as holder. Its filter is the one
    /// applied.
    pub token: String,
    /// Which files to skip.
    pub sync: SyncLevel,
    /// Remove files and directories under the target that the source does not have, once every
    /// copy has succeeded.
    pub delete: bool,
    /// With `delete`: fail rather than remove more than this many entries.
    pub max_delete: Option<u64>,
    /// Change nothing; report what would be done.
    pub dry_run: bool,
    /// Report every entry as an [`ControlEvent::Item`](crate::ControlEvent::Item).
    pub itemize: bool,
    /// How long the destination keeps retrying without progress, in seconds; 0 means the
    /// star's default.
    pub timeout_secs: u32,
}

/// List the tree at `path`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRequest {
    /// The controller's transfer id, for the source's logs.
    pub transfer_id: TransferId,
    /// The tree's top directory on the source, as the token names it.
    pub path: String,
    /// The tree token.
    pub token: String,
    /// Whether each file's SHA-256 is wanted in the listing (for [`SyncLevel::Checksum`]).
    pub checksums: bool,
}

/// Send these files of the tree at `path`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchRequest {
    /// The controller's transfer id, for the source's logs.
    pub transfer_id: TransferId,
    /// The tree's top directory on the source, as the token names it.
    pub path: String,
    /// The tree token.
    pub token: String,
    /// The files, at most [`MAX_FETCH_FILES`].
    pub files: Vec<FetchFile>,
}

/// Ask for the SHA-256 of the first `len` bytes of one file of the tree, to resume a large file
/// from a temporary file an interrupted run left: answered with one [`PrefixFrame`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefixRequest {
    /// The controller's transfer id, for the source's logs.
    pub transfer_id: TransferId,
    /// The tree's top directory on the source, as the token names it.
    pub path: String,
    /// The tree token.
    pub token: String,
    /// The file's name under the tree's top.
    pub name: Vec<u8>,
    /// How many bytes from the start; at most the file's size.
    pub len: u64,
}

/// The answer to a [`PrefixRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PrefixFrame {
    /// The digest of the first `len` bytes of the file at `version`, which did not change while
    /// they were read.
    Digest {
        /// The file's version.
        version: FileVersion,
        /// SHA-256 of its first `len` bytes.
        sha256: [u8; 32],
    },
    /// Refused or failed.
    Error(WireError),
}

/// One file asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchFile {
    /// Its name under the tree's top.
    pub name: Vec<u8>,
    /// The first byte wanted.
    pub offset: u64,
}

/// One frame of a listing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ListFrame {
    /// The next entries, parents before their contents.
    Entries(Vec<Entry>),
    /// The listing is complete.
    End,
    /// The listing failed; nothing more follows.
    Error(WireError),
}

/// One entry of a listing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Its name under the tree's top.
    pub name: Vec<u8>,
    /// What it is.
    pub kind: EntryKind,
}

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum EntryKind {
    /// A regular file.
    File {
        /// Its version when listed.
        version: FileVersion,
        /// Its permission bits.
        mode: u32,
        /// Its SHA-256, when the listing was asked for checksums.
        sha256: Option<[u8; 32]>,
    },
    /// A directory.
    Dir {
        /// Its permission bits.
        mode: u32,
        /// Its modification time, seconds.
        mtime_sec: i64,
        /// Its modification time, nanoseconds.
        mtime_nsec: u32,
    },
    /// A symbolic link whose text stays inside the tree.
    Symlink {
        /// The link's text.
        target: Vec<u8>,
    },
    /// Something the source does not send by design (a FIFO, socket or device, a file with
    /// other hard links, a link leaving the tree or not asked for), and why.
    Unsupported(WireError),
    /// Something the source could not read (no permission, an I/O error, too deep): a failure,
    /// which stops `--delete`.
    Unreadable(WireError),
}

/// A tree replication's progress: what is done of what is known so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TreeProgress {
    /// Files copied, skipped or failed.
    pub files_done: u64,
    /// Files listed so far.
    pub files_total: u64,
    /// Bytes of files copied so far.
    pub bytes_done: u64,
    /// Bytes of the files to copy listed so far.
    pub bytes_total: u64,
    /// Whether the listing is complete, so the totals are final.
    pub listed: bool,
}

/// What happened, or would happen with `dry_run`, to one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ItemAction {
    /// Copied (a file), created (a directory) or made (a link).
    Copied,
    /// Already up to date at the target.
    Skipped,
    /// Removed from the target (`delete`).
    Deleted,
    /// Failed; the event's error says why.
    Failed,
    /// Not sent: the source does not replicate this kind of entry.
    Unsupported,
}

/// One entry's fate, reported with `itemize`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// What happened.
    pub action: ItemAction,
    /// The entry's name under the tree's top.
    pub name: Vec<u8>,
    /// `'f'` file, `'d'` directory, `'l'` link, `'?'` other.
    pub kind: char,
    /// The file's size, 0 for others.
    pub size: u64,
    /// Why, for `Failed` and `Unsupported`.
    pub error: Option<WireError>,
}

/// One file that failed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FailedFile {
    /// Its name under the tree's top.
    pub name: Vec<u8>,
    /// Why.
    pub error: WireError,
}

/// The result of a tree replication. Final.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TreeSummary {
    /// Files copied (or, with `dry_run`, that would be).
    pub copied: u64,
    /// Files already up to date.
    pub skipped: u64,
    /// Entries removed (or that would be).
    pub deleted: u64,
    /// Files that failed.
    pub failed: u64,
    /// Directories created.
    pub dirs: u64,
    /// Links made.
    pub links: u64,
    /// Entries the source does not send (FIFOs, sockets, devices, links leaving the tree).
    pub unsupported: u64,
    /// Bytes copied.
    pub bytes: u64,
    /// Bytes of large files that an interrupted run had already written and that were checked
    /// against the source and not sent again.
    pub resumed: u64,
    /// Wall time on the destination.
    pub seconds: f64,
    /// The first [`MAX_FAILED_NAMED`] failed files with their errors.
    pub failures: Vec<FailedFile>,
    /// Why `delete` did not run, if it was asked for and did not.
    pub delete_skipped: Option<WireError>,
    /// Whether nothing was changed.
    pub dry_run: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_relative_components() {
        for ok in [
            &b"a"[..],
            b"a/b",
            b"x y/\n/\xff\xfe",
            b".hidden",
            b"a/..b",
            b"...",
        ] {
            assert_eq!(check_name(ok), Ok(()), "{ok:?}");
        }
        let long = vec![b'a'; MAX_COMPONENT_LEN + 1];
        for (bad, why) in [
            (&b""[..], NameError::Length),
            (b"/a", NameError::EmptyComponent),
            (b"a/", NameError::EmptyComponent),
            (b"a//b", NameError::EmptyComponent),
            (b"..", NameError::Dots),
            (b"a/../b", NameError::Dots),
            (b"./a", NameError::Dots),
            (b"a\0b", NameError::Nul),
            (&long, NameError::ComponentTooLong),
        ] {
            assert_eq!(check_name(bad), Err(why), "{bad:?}");
        }
        assert_eq!(
            check_name(&vec![b'a'; MAX_PATH_LEN + 1]),
            Err(NameError::Length)
        );
    }

    #[test]
    fn names_display_on_one_line() {
        assert_eq!(display_name(b"a b/\xffc\n"), "a b/\\xffc\\n");
        assert_eq!(display_name("é\\".as_bytes()), "é\\\\");
    }

    #[test]
    fn links_that_climb_out_are_caught() {
        assert!(link_stays_inside(b"l", b"f"));
        assert!(link_stays_inside(b"a/l", b"../f"));
        assert!(link_stays_inside(b"a/b/l", b"../../f"));
        assert!(!link_stays_inside(b"a/l", b"./b/../c"));
        assert!(link_stays_inside(b"a/l", b"./b/./c"));
        // `up` may be a link to `..`: nothing after a name may climb.
        assert!(!link_stays_inside(
            b"x",
            b"a/up/a/up/../../../../etc/hostname"
        ));
        assert!(!link_stays_inside(b"a/b/l", b"../c/../../x"));
        assert!(!link_stays_inside(b"l", b"../f"));
        assert!(!link_stays_inside(b"a/l", b"../../f"));
        assert!(!link_stays_inside(b"a/l", b"/etc/passwd"));
        assert!(!link_stays_inside(b"l", b""));
        assert!(!link_stays_inside(b"a/l", b"b/../../../x"));
    }

    #[test]
    fn globs_match_as_documented() {
        assert!(glob(b"*.log", b"x.log"));
        assert!(!glob(b"*.log", b"a/x.log"));
        assert!(glob(b"**.log", b"a/x.log"));
        assert!(glob(b"a/**/z", b"a/b/c/z"));
        assert!(glob(b"?x", b"ax"));
        assert!(!glob(b"?x", b"/x"));
        assert!(glob(b"[a-c]1", b"b1"));
        assert!(!glob(b"[!a-c]1", b"b1"));
        assert!(glob(b"[!a-c]1", b"d1"));
        assert!(glob(b"\\*", b"*"));
        assert!(!glob(b"\\*", b"a"));
        assert!(glob(b"[", b"["));
        assert!(glob(b"*", b""));
        assert!(!glob(b"a", b"ab"));
        assert!(glob(b"*a*b", b"xxaxxb"));
    }

    #[test]
    fn filters_exclude_unless_included() {
        let filter = Filter {
            exclude: vec!["*.tmp".into(), "cache/".into(), "/top.txt".into()],
            include: vec!["keep.tmp".into()],
            links: false,
        };
        assert!(!filter.admits(b"a.tmp", false));
        assert!(!filter.admits(b"d/e/a.tmp", false));
        assert!(filter.admits(b"d/keep.tmp", false));
        assert!(!filter.admits(b"x/cache", true));
        assert!(filter.admits(b"x/cache", false));
        assert!(!filter.admits(b"top.txt", false));
        assert!(filter.admits(b"d/top.txt", false));
        assert!(filter.admits(b"f.bin", false));
        assert!(Filter::default().admits(b"anything", false));
        assert!(Filter {
            exclude: vec![String::new()],
            ..Filter::default()
        }
        .check()
        .is_err());
    }

    /// The encoded body (without the length prefix) as hex.
    fn golden<T: Serialize>(msg: &T) -> String {
        hex::encode(&crate::encode_frame(msg).unwrap()[4..])
    }

    #[test]
    fn golden_tree_messages() {
        use crate::{ControlEvent, ControlRequest, ErrorCode};
        let cmd = ReplicateTree {
            transfer_id: TransferId(2),
            source: "a".into(),
            source_addr: "h:1".into(),
            source_path: "/s".into(),
            target_path: "/t".into(),
            token: "T".into(),
            sync: SyncLevel::Checksum,
            delete: true,
            max_delete: Some(5),
            dry_run: false,
            itemize: true,
            timeout_secs: 0,
        };
        let body = "02016103683a31022f73022f74015403010105000100";
        assert_eq!(
            golden(&ControlRequest::ReplicateTree(cmd.clone())),
            format!("05{body}")
        );
        assert_eq!(golden(&ControlRequest::StartTree(cmd)), format!("06{body}"));
        let list = ListRequest {
            transfer_id: TransferId(3),
            path: "/s".into(),
            token: "T".into(),
            checksums: true,
        };
        assert_eq!(golden(&ControlRequest::List(list)), "0703022f73015401");
        let fetch = FetchRequest {
            transfer_id: TransferId(3),
            path: "/s".into(),
            token: "T".into(),
            files: vec![FetchFile {
                name: b"a\xff".to_vec(),
                offset: 128,
            }],
        };
        assert_eq!(
            golden(&ControlRequest::Fetch(fetch)),
            "0803022f7301540102 61ff 8001".replace(' ', "")
        );
        let entries = ListFrame::Entries(vec![
            Entry {
                name: b"d".to_vec(),
                kind: EntryKind::Dir {
                    mode: 0o755,
                    mtime_sec: 1,
                    mtime_nsec: 2,
                },
            },
            Entry {
                name: b"d/f".to_vec(),
                kind: EntryKind::File {
                    version: FileVersion {
                        size: 3,
                        mtime_sec: -1,
                        mtime_nsec: 0,
                        inode: 9,
                    },
                    mode: 0o644,
                    sha256: None,
                },
            },
            Entry {
                name: b"l".to_vec(),
                kind: EntryKind::Symlink {
                    target: b"d".to_vec(),
                },
            },
            Entry {
                name: b"p".to_vec(),
                kind: EntryKind::Unsupported(WireError::new(ErrorCode::InvalidArgument, "x")),
            },
        ]);
        assert_eq!(
            golden(&entries),
            "00 04 0164 01ed030202 03642f66 00 03010009 a40300 016c 02 0164 0170 03 03 0178"
                .replace(' ', "")
        );
        assert_eq!(golden(&ListFrame::End), "01");
        let prefix = PrefixRequest {
            transfer_id: TransferId(3),
            path: "/s".into(),
            token: "T".into(),
            name: b"f".to_vec(),
            len: 128,
        };
        assert_eq!(
            golden(&ControlRequest::Prefix(prefix)),
            "0903022f730154016680 01".replace(' ', "")
        );
        let digest = PrefixFrame::Digest {
            version: FileVersion {
                size: 1,
                mtime_sec: 0,
                mtime_nsec: 0,
                inode: 2,
            },
            sha256: [7; 32],
        };
        assert_eq!(
            golden(&digest),
            format!("00 01000002 {}", "07".repeat(32)).replace(' ', "")
        );
        let progress = TreeProgress {
            files_done: 1,
            files_total: 2,
            bytes_done: 3,
            bytes_total: 4,
            listed: true,
        };
        assert_eq!(
            golden(&ControlEvent::TreeProgress(progress)),
            "080102030401"
        );
        assert!(!ControlEvent::TreeProgress(progress).is_final());
        let item = Item {
            action: ItemAction::Deleted,
            name: b"x".to_vec(),
            kind: 'f',
            size: 0,
            error: None,
        };
        assert_eq!(
            golden(&ControlEvent::Item(item.clone())),
            "0902 0178 0166 00 00".replace(' ', "")
        );
        assert!(!ControlEvent::Item(item).is_final());
        let done = ControlEvent::TreeDone(TreeSummary {
            copied: 1,
            failed: 1,
            failures: vec![FailedFile {
                name: b"f".to_vec(),
                error: WireError::new(ErrorCode::NotFound, ""),
            }],
            ..TreeSummary::default()
        });
        assert_eq!(
            golden(&done),
            format!(
                "0a 01 00 00 01 00 00 00 00 00 {} 01 0166 0200 00 00",
                "0".repeat(16)
            )
            .replace(' ', "")
        );
        assert!(done.is_final());
    }
}
