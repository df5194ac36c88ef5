//! Confinement: every file a star reads or writes is opened relative to a directory handle of one
//! of its allowed roots with `openat2(RESOLVE_BENEATH)`, so that no symlink, `..` or rename race
//! can lead outside the root. Wire paths are validated first (`orbit_wire::path`) and never
//! normalised. This module must never open anything by its absolute path, but a root's own.
//!
//! A root's handle is taken at start, and a file system mounted on the root afterwards (or
//! unmounted from it) would leave it naming the directory the mount hides: files written there
//! vanish from view. So before each use the root's path is looked up again, and when it no longer
//! leads to the directory held (another device or inode), the root is reopened, through no
//! symbolic link, as the directory an operator who mounted something there expects; a root that
//! cannot be reopened so is refused with [`JailError::RootChanged`].

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, CWD};
use tracing::warn;

pub use crate::protected::Protected;

use orbit_wire::path::{self as wire_path, PathError};

/// How a read or write must resolve: beneath the root, and never through /proc magic links.
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_MAGICLINKS);
/// How a name inside a tree must resolve: beneath the tree's top, through no symbolic link at all.
const RESOLVE_TREE: ResolveFlags = RESOLVE.union(ResolveFlags::NO_SYMLINKS);

/// Why a path was refused or could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// The wire path is malformed.
    #[error("{0}")]
    BadPath(#[from] PathError),
    /// The path is not under any allowed root.
    #[error("path is outside this star's allowed roots")]
    OutsideRoots,
    /// Resolution would leave the root (a symlink pointing outside, an absolute symlink).
    #[error("path leaves the allowed root through a symbolic link")]
    Escapes,
    /// Nothing at that path.
    #[error("no such file")]
    NotFound,
    /// A directory, FIFO, socket or device where a regular file was needed.
    #[error("not a regular file ({0})")]
    NotRegular(&'static str),
    /// A component of the target's parent exists and is not a directory.
    #[error("a parent of the target is not a directory")]
    ParentNotDirectory,
    /// The root is the path itself; a file needs a name under the root.
    #[error("path names an allowed root itself, not a file under it")]
    IsRoot,
    /// The operating system refused for another reason.
    #[error("{0}")]
    Io(io::Error),
    /// The target lies only under roots this star serves from but does not store into.
    #[error("path is under a read-only root of this star")]
    ReadOnly,
    /// A regular file with more than one name: its other names may lie outside every root.
    #[error("file has {0} hard links; a file with other names is not served")]
    HardLinked(u64),
    /// One of the star's own files or folders (keys, config, state).
    #[error(
        "path is one of this star's own files (keys, config or state), never served or overwritten"
    )]
    Protected,
    /// The root's path leads to another directory than at start (a mount), and that one cannot
    /// be used as the root.
    #[error("allowed root {} changed since the star started and cannot be reopened: {reason}", root.display())]
    RootChanged {
        /// The root as the operator gave it.
        root: PathBuf,
        /// Why it cannot be reopened.
        reason: String,
    },
}

impl JailError {
    fn from_open(e: io::Error) -> JailError {
        match rustix::io::Errno::from_io_error(&e) {
            Some(rustix::io::Errno::XDEV) | Some(rustix::io::Errno::LOOP) => JailError::Escapes,
            Some(rustix::io::Errno::NOENT) => JailError::NotFound,
            Some(rustix::io::Errno::NOTDIR) => JailError::ParentNotDirectory,
            // What opening a Unix socket (or a device without a driver) returns.
            Some(rustix::io::Errno::NXIO) => JailError::NotRegular("a socket or device"),
            _ => JailError::Io(e),
        }
    }
}

impl From<rustix::io::Errno> for JailError {
    fn from(e: rustix::io::Errno) -> JailError {
        JailError::from_open(e.into())
    }
}

/// One allowed root, opened once at start.
#[derive(Debug)]
struct Root {
    /// The root as the operator wrote it, made absolute.
    given: PathBuf,
    /// The root with symlinks resolved, as the kernel sees it.
    canonical: PathBuf,
    /// The directory, as last opened: replaced when the path leads elsewhere (see the module).
    dir: RwLock<Arc<OwnedFd>>,
    /// Whether files may be stored under it (`--allow`), or only served (`--allow-read`).
    writable: bool,
}

/// The star's allowed roots. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Jail {
    roots: Vec<Root>,
    /// The star's own files and folders, never served or overwritten.
    protected: Arc<Protected>,
}

/// A path that the jail accepted: a root and a relative path of plain components under it. Only
/// [`Jail::confine`] makes one.
#[derive(Debug, Clone)]
pub struct Confined {
    root: usize,
    relative: String,
}

/// A file opened for reading, with what identifies its version.
#[derive(Debug)]
pub struct OpenedFile {
    /// The open file.
    pub file: File,
    /// `fstat` of the open file.
    pub stat: rustix::fs::Stat,
}

/// The directory a target will be published in, opened beneath its root.
#[derive(Debug)]
pub struct TargetDir {
    dir: OwnedFd,
    name: String,
    /// The root it lies under, and its path from there, to check before publishing that it
    /// was not moved out of the root meanwhile.
    root: OwnedFd,
    /// The root's path, to check before publishing that it still leads to `root`.
    root_path: PathBuf,
    parents: String,
    protected: Arc<Protected>,
}

impl Jail {
    /// Opens every root: `roots` to serve from and store into, `read_only` to serve from only. A
    /// directory in both lists is writable. Roots must be existing directories.
    ///
    /// # Errors
    ///
    /// An I/O error naming the root that could not be opened.
    pub fn open(roots: &[PathBuf], read_only: &[PathBuf]) -> io::Result<Jail> {
        let mut opened = Vec::with_capacity(roots.len() + read_only.len());
        let all = roots.iter().map(|r| (r, true));
        for (given, writable) in all.chain(read_only.iter().map(|r| (r, false))) {
            let with_context = |e: io::Error| {
                io::Error::new(e.kind(), format!("allowed root {}: {e}", given.display()))
            };
            let absolute = std::path::absolute(given).map_err(with_context)?;
            let canonical = std::fs::canonicalize(given).map_err(with_context)?;
            let dir = rustix::fs::open(
                &canonical,
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| with_context(e.into()))?;
            opened.push(Root {
                given: clean(&absolute),
                canonical,
                dir: RwLock::new(Arc::new(dir)),
                writable,
            });
        }
        Ok(Jail {
            roots: opened,
            protected: Arc::default(),
        })
    }

    /// The jail, never serving or overwriting `protected` (nor writing into a protected folder).
    pub fn with_protected(self, protected: Protected) -> Jail {
        Jail {
            protected: Arc::new(protected),
            ..self
        }
    }

    /// The star's own files and folders, which it never serves or overwrites.
    pub(crate) fn protected(&self) -> Arc<Protected> {
        self.protected.clone()
    }

    /// The roots, as the operator gave them, each with whether it is writable.
    pub fn roots(&self) -> impl Iterator<Item = (&Path, bool)> {
        self.roots.iter().map(|r| (r.given.as_path(), r.writable))
    }

    /// The handle of root `index`, reopened first when its path no longer leads to the directory
    /// held: a file system was mounted on the root, or unmounted from it, since the handle was
    /// taken. The new directory is opened through no symbolic link and must not be one of the
    /// star's own folders. Costs one `stat` of the root's path. Blocking.
    ///
    /// # Errors
    ///
    /// [`JailError::RootChanged`] when the path leads nowhere usable: gone, not a directory,
    /// through a symbolic link, or one of the star's own folders.
    fn root_dir(&self, index: usize) -> Result<Arc<OwnedFd>, JailError> {
        let root = &self.roots[index];
        let held = root
            .dir
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let changed = |reason: String| JailError::RootChanged {
            root: root.given.clone(),
            reason,
        };
        let was = rustix::fs::fstat(&*held)?;
        match rustix::fs::stat(&root.canonical) {
            Ok(now) if (now.st_dev, now.st_ino) == (was.st_dev, was.st_ino) => return Ok(held),
            Ok(_) => {}
            Err(e) => return Err(changed(format!("{}: {e}", root.canonical.display()))),
        }
        // The path was resolved at start: a symbolic link on it now is not the operator's.
        let fresh = rustix::fs::openat2(
            CWD,
            &root.canonical,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(|e| changed(format!("{}: {e}", root.canonical.display())))?;
        let now = rustix::fs::fstat(&fresh)?;
        if self.protected.holds(&now) {
            return Err(changed("it is now one of this star's own folders".into()));
        }
        warn!(
            root = %root.given.display(),
            "allowed root {} leads to another directory than before (a file system was mounted \
             on it or unmounted from it): reopened, files now go to the new one",
            root.given.display()
        );
        let fresh = Arc::new(fresh);
        *root.dir.write().unwrap_or_else(PoisonError::into_inner) = fresh.clone();
        Ok(fresh)
    }

    /// Validates a wire path to read and finds the root it lies under, read-only or not.
    ///
    /// # Errors
    ///
    /// [`JailError::BadPath`], [`JailError::OutsideRoots`] or [`JailError::IsRoot`].
    pub fn confine(&self, path: &str) -> Result<Confined, JailError> {
        self.confine_in(path, |_| true, false)
    }

    /// As [`Jail::confine`], for a directory to read as a tree: a root itself is accepted.
    ///
    /// # Errors
    ///
    /// [`JailError::BadPath`] or [`JailError::OutsideRoots`].
    pub fn confine_dir(&self, path: &str) -> Result<Confined, JailError> {
        self.confine_in(path, |_| true, true)
    }

    /// As [`Jail::confine_target`], for a directory to write a tree into: a writable root itself
    /// is accepted.
    ///
    /// # Errors
    ///
    /// As [`Jail::confine_dir`], and [`JailError::ReadOnly`].
    pub fn confine_target_dir(&self, path: &str) -> Result<Confined, JailError> {
        match self.confine_in(path, |root| root.writable, true) {
            Err(JailError::OutsideRoots) if self.confine_dir(path).is_ok() => {
                Err(JailError::ReadOnly)
            }
            other => other,
        }
    }

    /// Validates a wire path to write and finds the writable root it lies under. A path under a
    /// read-only root and under no writable one is refused.
    ///
    /// # Errors
    ///
    /// As [`Jail::confine`], and [`JailError::ReadOnly`].
    pub fn confine_target(&self, path: &str) -> Result<Confined, JailError> {
        match self.confine_in(path, |root| root.writable, false) {
            Err(JailError::OutsideRoots) if self.confine(path).is_ok() => Err(JailError::ReadOnly),
            other => other,
        }
    }

    fn confine_in(
        &self,
        path: &str,
        eligible: impl Fn(&Root) -> bool,
        allow_root: bool,
    ) -> Result<Confined, JailError> {
        wire_path::validate(path)?;
        let wanted = Path::new(path);
        // The longest matching root wins, so nested roots behave as expected.
        let mut best: Option<(usize, &Path)> = None;
        for (i, root) in self.roots.iter().enumerate().filter(|(_, r)| eligible(r)) {
            for base in [&root.given, &root.canonical] {
                if let Ok(rest) = wanted.strip_prefix(base) {
                    if best.is_none_or(|(_, b)| rest.as_os_str().len() < b.as_os_str().len()) {
                        best = Some((i, rest));
                    }
                }
            }
        }
        let (root, rest) = best.ok_or(JailError::OutsideRoots)?;
        let relative = rest.to_str().ok_or(JailError::OutsideRoots)?.to_owned();
        if relative.is_empty() && !allow_root {
            return Err(JailError::IsRoot);
        }
        Ok(Confined { root, relative })
    }

    /// Opens a confined path for reading. Only regular files are opened: a FIFO, socket or device
    /// is refused before it is opened at all, and so is a file with more than one hard link.
    /// Blocking: call from a blocking thread.
    ///
    /// # Errors
    ///
    /// [`JailError::Escapes`], [`JailError::NotFound`], [`JailError::NotRegular`] or I/O.
    pub fn open_read(&self, path: &Confined) -> Result<OpenedFile, JailError> {
        let root = self.root_dir(path.root)?;
        // First a handle that names the inode without opening it (O_PATH): opening a device can
        // do things (rewind a tape, arm a watchdog), and opening a FIFO can block. Only once the
        // inode is known to be a regular file is it opened for reading.
        let handle = rustix::fs::openat2(
            root.as_fd(),
            path.relative.as_str(),
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )?;
        let stat = rustix::fs::fstat(&handle)?;
        check_regular(&stat)?;
        not_protected(&self.protected, &stat)?;
        self.check_parent(&root, &path.relative)?;
        // Another name of this inode may lie outside every root (a link made by someone who can
        // write inside a root), and nothing can tell where: see docs/SECURITY.md.
        if stat.st_nlink > 1 {
            return Err(JailError::HardLinked(stat.st_nlink as u64));
        }
        let fd = reopen_for_reading(&root, path, &handle)?;
        let stat = rustix::fs::fstat(&fd)?;
        Ok(OpenedFile {
            file: File::from(fd),
            stat,
        })
    }

    /// Refuses a file whose directory is one of the star's own folders (the state directory, the
    /// grid's folder), reached through a mount or a move after start.
    fn check_parent(&self, root: &OwnedFd, relative: &str) -> Result<(), JailError> {
        let parent = relative.rsplit_once('/').map_or(".", |(parent, _)| parent);
        let dir = rustix::fs::openat2(
            root.as_fd(),
            parent,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )?;
        not_protected(&self.protected, &rustix::fs::fstat(&dir)?)
    }

    /// Opens (creating where missing) the parent directories of a target beneath its root and
    /// checks what is at the target now. Each directory is created with `mkdirat` in a directory
    /// that was itself opened beneath the root, so a symlink swapped in at any moment cannot
    /// redirect the walk. Blocking: call from a blocking thread.
    ///
    /// # Errors
    ///
    /// [`JailError::Escapes`], [`JailError::ParentNotDirectory`], [`JailError::NotRegular`] or
    /// I/O. A symbolic link at the target is accepted: [`TargetDir::publish`] replaces the link
    /// itself and never writes through it.
    pub fn prepare_target(&self, path: &Confined) -> Result<TargetDir, JailError> {
        self.target_dir(path, true)?.ok_or(JailError::NotFound)
    }

    /// As [`Jail::prepare_target`], but creates nothing: `None` when a parent is missing.
    ///
    /// # Errors
    ///
    /// As [`Jail::prepare_target`].
    pub fn existing_target(&self, path: &Confined) -> Result<Option<TargetDir>, JailError> {
        self.target_dir(path, false)
    }

    fn target_dir(&self, path: &Confined, create: bool) -> Result<Option<TargetDir>, JailError> {
        let components: Vec<&str> = wire_path::components(&path.relative).collect();
        let (name, parents) = components.split_last().ok_or(JailError::IsRoot)?;
        let root = self.root_dir(path.root)?;
        let Some(dir) = self.open_dirs(&root, parents, create)? else {
            return Ok(None);
        };
        not_protected(&self.protected, &rustix::fs::fstat(&dir)?)?;
        match rustix::fs::statat(&dir, *name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) if self.protected.holds(&stat) => return Err(JailError::Protected),
            Ok(stat) => match FileType::from_raw_mode(stat.st_mode) {
                // A link is replaced, never followed; a regular file (even one with other hard
                // links) is replaced by a new inode, so its other names keep the old bytes.
                FileType::RegularFile | FileType::Symlink => {}
                other => return Err(JailError::NotRegular(describe(other))),
            },
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(Some(TargetDir {
            dir,
            name: (*name).to_owned(),
            root: root.try_clone().map_err(JailError::Io)?,
            root_path: self.roots[path.root].canonical.clone(),
            parents: parents.join("/"),
            protected: self.protected.clone(),
        }))
    }

    /// Opens an existing directory to read as a tree, beneath its root (the root itself if the
    /// path names it). Blocking.
    ///
    /// # Errors
    ///
    /// [`JailError::Escapes`], [`JailError::NotFound`], [`JailError::NotRegular`] for anything
    /// but a directory, or I/O.
    pub fn open_dir(&self, path: &Confined) -> Result<OwnedFd, JailError> {
        let root = self.root_dir(path.root)?;
        let relative = if path.relative.is_empty() {
            "."
        } else {
            path.relative.as_str()
        };
        let handle = rustix::fs::openat2(
            root.as_fd(),
            relative,
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )?;
        let stat = rustix::fs::fstat(&handle)?;
        not_protected(&self.protected, &stat)?;
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::Directory => {}
            FileType::RegularFile => {
                return Err(JailError::NotRegular("a regular file, not a directory"))
            }
            other => return Err(JailError::NotRegular(describe(other))),
        }
        Ok(rustix::fs::openat2(
            root.as_fd(),
            relative,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )?)
    }

    /// Opens the directory a tree is written into, beneath its root, creating it and its
    /// missing parents one level at a time when `create`; `None` when it does not exist and
    /// `create` is off. Blocking.
    ///
    /// # Errors
    ///
    /// [`JailError::Escapes`], [`JailError::ParentNotDirectory`] or I/O.
    pub fn prepare_dir(&self, path: &Confined, create: bool) -> Result<Option<OwnedFd>, JailError> {
        let components: Vec<&str> = if path.relative.is_empty() {
            Vec::new()
        } else {
            wire_path::components(&path.relative).collect()
        };
        self.open_dirs(&*self.root_dir(path.root)?, &components, create)
    }

    /// Opens the directory `components` names beneath `root`, creating missing levels with
    /// `mkdirat` in a directory that was itself opened beneath the root when `create`, so a
    /// symlink swapped in at any moment cannot redirect the walk. `None` when a level is
    /// missing and `create` is off.
    fn open_dirs(
        &self,
        root: &OwnedFd,
        components: &[&str],
        create: bool,
    ) -> Result<Option<OwnedFd>, JailError> {
        let parents = components;
        let dir_flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC;
        let mut dir = rustix::fs::openat2(root.as_fd(), ".", dir_flags, Mode::empty(), RESOLVE)?;
        for (depth, component) in parents.iter().enumerate() {
            let prefix = parents[..=depth].join("/");
            match rustix::fs::openat2(
                root.as_fd(),
                prefix.as_str(),
                dir_flags,
                Mode::empty(),
                RESOLVE,
            ) {
                Ok(next) => dir = next,
                Err(rustix::io::Errno::NOENT) if !create => return Ok(None),
                Err(rustix::io::Errno::NOENT) => {
                    match rustix::fs::mkdirat(&dir, *component, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                    dir = rustix::fs::openat2(
                        root.as_fd(),
                        prefix.as_str(),
                        dir_flags,
                        Mode::empty(),
                        RESOLVE,
                    )?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Some(dir))
    }
}

/// The permission bits of a published file whose source did not give its own (a star of an
/// earlier release): `rw-r--r--`. See [`TargetDir::publish`].
pub const PUBLISHED_MODE: u32 = 0o644;

/// Whether a file name is an Orbit temporary file (`.orbit-*.part`): a replication in progress,
/// or one interrupted. Never served as part of a tree, never taken from one.
pub fn is_temporary(name: &[u8]) -> bool {
    name.starts_with(b".orbit-") && name.ends_with(b".part")
}

/// Opens `name` beneath a tree's top directory `top` with `flags`, through no symbolic link,
/// `..` or magic link: a component swapped for a link at any moment fails the open.
///
/// # Errors
///
/// [`JailError::Escapes`] for a link on the way, [`JailError::NotFound`], or I/O.
pub fn open_in_tree(top: impl AsFd, name: &[u8], flags: OFlags) -> Result<OwnedFd, JailError> {
    Ok(rustix::fs::openat2(
        top,
        name,
        flags | OFlags::CLOEXEC,
        Mode::empty(),
        RESOLVE_TREE,
    )?)
}

/// Opens the regular file `name` beneath a tree's top for reading, as [`Jail::open_read`] opens
/// a single file: never a FIFO, socket or device, never a file with other hard links, and
/// through no symbolic link. Blocking.
///
/// # Errors
///
/// As [`open_in_tree`], and [`JailError::NotRegular`], [`JailError::HardLinked`],
/// [`JailError::Protected`] for one of the star's own files.
pub fn open_tree_file(
    top: impl AsFd,
    name: &[u8],
    protected: &Protected,
) -> Result<OpenedFile, JailError> {
    let top = top.as_fd();
    let handle = open_in_tree(top, name, OFlags::PATH)?;
    let stat = rustix::fs::fstat(&handle)?;
    check_regular(&stat)?;
    not_protected(protected, &stat)?;
    if stat.st_nlink > 1 {
        return Err(JailError::HardLinked(stat.st_nlink as u64));
    }
    let fd = reopen(&handle, || {
        open_in_tree(
            top,
            name,
            OFlags::RDONLY | OFlags::NOCTTY | OFlags::NONBLOCK,
        )
    })?;
    let stat = rustix::fs::fstat(&fd)?;
    Ok(OpenedFile {
        file: File::from(fd),
        stat,
    })
}

impl TargetDir {
    /// Creates a new temporary file beside the target, `.orbit-<tag>.part`, never following
    /// anything. Returns the file and its name.
    ///
    /// # Errors
    ///
    /// I/O, including `AlreadyExists` if the name is taken.
    pub fn create_part(&self, tag: &str) -> io::Result<(File, String)> {
        let part = format!(".orbit-{tag}.part");
        let fd = rustix::fs::openat(
            &self.dir,
            part.as_str(),
            // Readable too: a fan-out destination serves it to the stars that relay from it,
            // from this handle. Private until published: its bytes are not checked yet.
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        Ok((File::from(fd), part))
    }

    /// Atomically replaces the target with the temporary file `part`, which must still be
    /// `file`, and makes the rename durable. The caller has fsynced the file. A symlink that
    /// appeared at the target meanwhile is replaced, not followed: rename never follows.
    ///
    /// The published file keeps the source's permission bits `mode` ([`PUBLISHED_MODE`] when
    /// the source did not say), never setuid, setgid or sticky, and never a bit the regular file
    /// it replaces did not have: a copy is never more open than its source, nor than the file
    /// that held its name.
    ///
    /// Refused when the name `part` no longer holds `file` (replaced by a link or another file:
    /// only the bytes written and checked are published), when the directory was moved out of
    /// its root since it was opened (the rename would land outside the root), or when the root's
    /// path leads elsewhere since (a mount would hide the file).
    ///
    /// # Errors
    ///
    /// `InvalidData` or `PermissionDenied` for the refusals; I/O from `renameat` or the
    /// directory's `fsync`.
    pub fn publish(&self, part: &str, file: &File, mode: Option<u32>) -> io::Result<()> {
        let ours = rustix::fs::fstat(file)?;
        let named = rustix::fs::statat(&self.dir, part, AtFlags::SYMLINK_NOFOLLOW)?;
        if (named.st_dev, named.st_ino) != (ours.st_dev, ours.st_ino) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the temporary file was replaced by another file or a link before it was published",
            ));
        }
        self.check_beneath_root()?;
        let mode = mode.unwrap_or(PUBLISHED_MODE) & 0o777;
        let mode =
            match rustix::fs::statat(&self.dir, self.name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(target) if self.protected.holds(&target) => {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        JailError::Protected.to_string(),
                    ))
                }
                // Never more readable (or writable, or executable) than the file it replaces.
                Ok(target) if FileType::from_raw_mode(target.st_mode) == FileType::RegularFile => {
                    mode & target.st_mode
                }
                _ => mode,
            };
        rustix::fs::fchmod(file, Mode::from_raw_mode(mode))?;
        rustix::fs::renameat(&self.dir, part, &self.dir, self.name.as_str())?;
        rustix::fs::fsync(&self.dir)?;
        Ok(())
    }

    /// Checks that the directory is still where it was opened, beneath its root (a parent
    /// renamed out of the root since then would take the rename with it), and that the root's
    /// path still leads to that root (a mount since then would hide the file).
    fn check_beneath_root(&self) -> io::Result<()> {
        let parents = if self.parents.is_empty() {
            "."
        } else {
            self.parents.as_str()
        };
        let moved = || {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the target's directory was moved out of the allowed root during the transfer",
            )
        };
        let now = rustix::fs::openat2(
            &self.root,
            parents,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )
        .map_err(|_| moved())?;
        let (now, ours) = (rustix::fs::fstat(&now)?, rustix::fs::fstat(&self.dir)?);
        if (now.st_dev, now.st_ino) != (ours.st_dev, ours.st_ino) {
            return Err(moved());
        }
        // A file system mounted on the root (or unmounted from it) during the transfer would
        // hide the file published through the handle taken before.
        let hidden = || {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the allowed root's path leads to another directory since the transfer began (a \
                 file system mounted on it or unmounted from it): nothing published where it \
                 would be hidden; replicate again",
            )
        };
        let at_path = rustix::fs::stat(&self.root_path).map_err(|_| hidden())?;
        let root = rustix::fs::fstat(&self.root)?;
        if (at_path.st_dev, at_path.st_ino) != (root.st_dev, root.st_ino) {
            return Err(hidden());
        }
        Ok(())
    }

    /// Removes the temporary file `part`; errors are ignored because this runs on failure paths.
    /// Only a plain `.orbit-*.part` name is ever removed, whoever gave it.
    pub fn remove_part(&self, part: &str) {
        if is_temporary(part.as_bytes()) && !part.contains('/') {
            let _ = rustix::fs::unlinkat(&self.dir, part, AtFlags::empty());
        }
    }

    /// Opens an existing temporary file `part` for reading and writing, to resume into it. Only a
    /// regular file with no other name is opened, never through a symlink: one replaced by a
    /// hard link to a file elsewhere would be written (and cut) through that link.
    ///
    /// # Errors
    ///
    /// I/O, `NotFound` when it is gone, `InvalidInput` when it is not a regular file or has
    /// other names.
    pub fn open_part(&self, part: &str) -> io::Result<File> {
        if !(part.starts_with(".orbit-") && part.ends_with(".part") && !part.contains('/')) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a temporary file name",
            ));
        }
        let fd = rustix::fs::openat(
            &self.dir,
            part,
            OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
        )?;
        let stat = rustix::fs::fstat(&fd)?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the temporary file is not a regular file",
            ));
        }
        if stat.st_nlink != 1 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the temporary file has other names (hard links)",
            ));
        }
        Ok(File::from(fd))
    }

    /// Refuses at once, with `StorageFull` naming the bytes needed and free, when the file system
    /// holding `file` has less than `len` bytes free.
    ///
    /// # Errors
    ///
    /// `StorageFull`; other I/O.
    pub fn check_space(&self, file: &File, len: u64) -> io::Result<()> {
        let vfs = rustix::fs::fstatvfs(file)?;
        let free = vfs.f_bavail.saturating_mul(vfs.f_frsize);
        if free < len {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "No space left on device: the file needs {len} more bytes, {free} are free"
                ),
            ));
        }
        Ok(())
    }

    /// Reserves the blocks for `len` bytes of `file` from `offset` (`fallocate`, keeping the
    /// file's size) where the file system supports it, so that the file is laid out in one
    /// piece and a disk filled meanwhile by someone else shows here rather than in a write.
    ///
    /// # Errors
    ///
    /// `StorageFull`; other I/O.
    pub fn reserve(&self, file: &File, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::KEEP_SIZE, offset, len) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::OPNOTSUPP) | Err(rustix::io::Errno::NOSYS) => Ok(()),
            Err(rustix::io::Errno::NOSPC) => Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!("No space left on device: cannot reserve {len} bytes for the file"),
            )),
            Err(e) => Err(e.into()),
        }
    }
}

impl Confined {
    /// A key naming the file this path designates, the same for every spelling of it (the root
    /// as given or canonical), to tell two transfers to one target apart.
    pub fn key(&self) -> String {
        format!("{}:{}", self.root, self.relative)
    }
}

/// Opens for reading the very inode `handle` (an `O_PATH` handle of a regular file) names,
/// through `/proc/self/fd`, which cannot be raced. Without `/proc`, opens the path again beneath
/// the root (non-blocking, so a FIFO swapped in meanwhile cannot hang it) and refuses anything
/// that is not the same inode.
fn reopen_for_reading(
    root: &OwnedFd,
    path: &Confined,
    handle: &OwnedFd,
) -> Result<OwnedFd, JailError> {
    reopen(handle, || {
        Ok(rustix::fs::openat2(
            root.as_fd(),
            path.relative.as_str(),
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
            Mode::empty(),
            RESOLVE,
        )?)
    })
}

/// Opens for reading the inode `handle` names through `/proc/self/fd`, or with `again` (which
/// must not block) without `/proc`, refusing anything that is not the same regular file.
fn reopen(
    handle: &OwnedFd,
    again: impl FnOnce() -> Result<OwnedFd, JailError>,
) -> Result<OwnedFd, JailError> {
    use std::os::fd::AsRawFd;
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY;
    let magic = format!("/proc/self/fd/{}", handle.as_raw_fd());
    let fd = match rustix::fs::open(magic.as_str(), flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => again()?,
        Err(e) => return Err(e.into()),
    };
    let (was, now) = (rustix::fs::fstat(handle)?, rustix::fs::fstat(&fd)?);
    if (was.st_dev, was.st_ino) != (now.st_dev, now.st_ino) {
        return Err(JailError::Io(io::Error::other(
            "the file was replaced while it was being opened",
        )));
    }
    check_regular(&now)?;
    Ok(fd)
}

fn check_regular(stat: &rustix::fs::Stat) -> Result<(), JailError> {
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => Ok(()),
        other => Err(JailError::NotRegular(describe(other))),
    }
}

/// Refuses the file or folder `stat` describes when it is one of the star's own.
pub(crate) fn not_protected(
    protected: &Protected,
    stat: &rustix::fs::Stat,
) -> Result<(), JailError> {
    match protected.holds(stat) {
        true => Err(JailError::Protected),
        false => Ok(()),
    }
}

fn describe(kind: FileType) -> &'static str {
    match kind {
        FileType::Directory => "a directory",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Symlink => "a symbolic link",
        _ => "not a regular file",
    }
}

/// Removes `.` components and trailing slashes from an operator-given absolute root, lexically.
fn clean(path: &Path) -> PathBuf {
    path.components().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn jail(root: &Path) -> Jail {
        Jail::open(&[root.to_path_buf()], &[]).unwrap()
    }

    #[test]
    fn reads_a_file_under_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("d")).unwrap();
        std::fs::write(tmp.path().join("d/f"), b"hello").unwrap();
        let jail = jail(tmp.path());
        let path = format!("{}/d/f", tmp.path().display());
        let opened = jail.open_read(&jail.confine(&path).unwrap()).unwrap();
        assert_eq!(opened.stat.st_size, 5);
    }

    #[test]
    fn paths_outside_or_malformed_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let jail = jail(&tmp.path().join("."));
        let root = tmp.path().display().to_string();
        assert!(matches!(
            jail.confine("/etc/passwd"),
            Err(JailError::OutsideRoots)
        ));
        assert!(matches!(
            jail.confine(&format!("{root}/../x")),
            Err(JailError::BadPath(_))
        ));
        assert!(matches!(
            jail.confine("relative/x"),
            Err(JailError::BadPath(_))
        ));
        assert!(matches!(jail.confine(&root), Err(JailError::IsRoot)));
        // A sibling whose name starts with the root's name is not under it.
        assert!(matches!(
            jail.confine(&format!("{root}x/f")),
            Err(JailError::OutsideRoots)
        ));
    }

    #[test]
    fn symlinks_out_of_the_root_are_refused() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"secret").unwrap();
        let tmp = tempfile::tempdir().unwrap();
        symlink(outside.path().join("secret"), tmp.path().join("file-link")).unwrap();
        symlink(outside.path(), tmp.path().join("dir-link")).unwrap();
        symlink("../../../../../../..", tmp.path().join("up")).unwrap();
        let jail = jail(tmp.path());
        for rel in ["file-link", "dir-link/secret", "up/etc/passwd"] {
            let path = format!("{}/{rel}", tmp.path().display());
            let err = jail.open_read(&jail.confine(&path).unwrap()).unwrap_err();
            assert!(matches!(err, JailError::Escapes), "{rel}: {err:?}");
        }
        // Writing through the directory link is refused as well, and nothing appears outside.
        let path = format!("{}/dir-link/new", tmp.path().display());
        assert!(matches!(
            jail.prepare_target(&jail.confine(&path).unwrap()),
            Err(JailError::Escapes)
        ));
        assert!(!outside.path().join("new").exists());
    }

    #[test]
    fn read_only_roots_serve_but_do_not_store() {
        let store = tempfile::tempdir().unwrap();
        let serve = tempfile::tempdir().unwrap();
        std::fs::create_dir(serve.path().join("nested")).unwrap();
        let jail = Jail::open(
            &[store.path().to_path_buf(), serve.path().join("nested")],
            &[serve.path().to_path_buf(), store.path().to_path_buf()],
        )
        .unwrap();
        let under = |root: &Path, rel: &str| format!("{}/{rel}", root.display());
        assert!(jail.confine(&under(serve.path(), "f")).is_ok());
        assert!(matches!(
            jail.confine_target(&under(serve.path(), "f")),
            Err(JailError::ReadOnly)
        ));
        // Under a store root too (nested, or the same directory given twice): writable.
        assert!(jail
            .confine_target(&under(serve.path(), "nested/f"))
            .is_ok());
        assert!(jail.confine_target(&under(store.path(), "f")).is_ok());
        assert!(matches!(
            jail.confine_target("/elsewhere/f"),
            Err(JailError::OutsideRoots)
        ));
    }

    #[test]
    fn hard_linked_files_are_not_served() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("f"), b"x").unwrap();
        std::fs::hard_link(tmp.path().join("f"), tmp.path().join("g")).unwrap();
        let jail = jail(tmp.path());
        let path = format!("{}/f", tmp.path().display());
        assert!(matches!(
            jail.open_read(&jail.confine(&path).unwrap()),
            Err(JailError::HardLinked(2))
        ));
    }

    #[test]
    fn special_files_are_never_opened() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("dir")).unwrap();
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            tmp.path().join("fifo"),
            Mode::from_raw_mode(0o644),
        )
        .unwrap();
        let jail = jail(tmp.path());
        for (rel, kind) in [("dir", "a directory"), ("fifo", "a FIFO")] {
            let path = format!("{}/{rel}", tmp.path().display());
            match jail.open_read(&jail.confine(&path).unwrap()) {
                Err(JailError::NotRegular(k)) => assert_eq!(k, kind),
                other => panic!("{rel}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_published_file_keeps_the_sources_bits_but_never_opens_up_the_file_it_replaces() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let jail = jail(tmp.path());
        let mode = |name: &str| {
            std::fs::metadata(tmp.path().join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        let publish = |name: &str, bits: Option<u32>| {
            let path = format!("{}/{name}", tmp.path().display());
            let dir = jail.prepare_target(&jail.confine(&path).unwrap()).unwrap();
            let (file, part) = dir.create_part(name).unwrap();
            dir.publish(&part, &file, bits).unwrap();
            mode(name)
        };
        assert_eq!(publish("private", Some(0o600)), 0o600);
        assert_eq!(publish("tool", Some(0o755)), 0o755);
        assert_eq!(publish("setuid", Some(0o4755)), 0o755, "never setuid");
        assert_eq!(
            publish("sticky", Some(0o3777)),
            0o777,
            "never setgid or sticky"
        );
        assert_eq!(publish("unsaid", None), PUBLISHED_MODE);
        std::fs::write(tmp.path().join("kept-private"), b"old").unwrap();
        std::fs::set_permissions(
            tmp.path().join("kept-private"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        assert_eq!(publish("kept-private", Some(0o755)), 0o640 & 0o755);
        assert_eq!(
            publish("kept-private", Some(0o600)),
            0o600,
            "closing is fine"
        );
    }

    #[test]
    fn targets_get_their_parents_and_replace_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let jail = jail(tmp.path());
        let path = format!("{}/a/b/c/file", tmp.path().display());
        let dir = jail.prepare_target(&jail.confine(&path).unwrap()).unwrap();
        assert!(tmp.path().join("a/b/c").is_dir());
        let (mut file, part) = dir.create_part("t1").unwrap();
        std::io::Write::write_all(&mut file, b"data").unwrap();
        dir.publish(&part, &file, None).unwrap();
        assert_eq!(
            std::fs::read(tmp.path().join("a/b/c/file")).unwrap(),
            b"data"
        );

        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("kept"), b"outside").unwrap();
        symlink(outside.path().join("kept"), tmp.path().join("link")).unwrap();
        let path = format!("{}/link", tmp.path().display());
        let dir = jail.prepare_target(&jail.confine(&path).unwrap()).unwrap();
        let (mut file, part) = dir.create_part("t2").unwrap();
        std::io::Write::write_all(&mut file, b"new").unwrap();
        dir.publish(&part, &file, None).unwrap();
        assert!(!tmp.path().join("link").is_symlink());
        assert_eq!(std::fs::read(tmp.path().join("link")).unwrap(), b"new");
        assert_eq!(
            std::fs::read(outside.path().join("kept")).unwrap(),
            b"outside"
        );
        std::fs::write(tmp.path().join("plain"), b"").unwrap();
        let path = format!("{}/plain/under", tmp.path().display());
        assert!(matches!(
            jail.prepare_target(&jail.confine(&path).unwrap()),
            Err(JailError::ParentNotDirectory)
        ));
    }
}
