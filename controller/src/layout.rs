//! The files of a grid directory: their names, their modes, and how a star's directory is
//! written.
//!
//! ```text
//! GRID/grid.toml                 inventory: stars, addresses, defaults
//! GRID/ca.pem, GRID/ca.key       the grid's CA
//! GRID/controller.pem, .key      orbitctl's certificate
//! GRID/token-master.key          the master token key
//! GRID/token-master.next.key     the next master token key, during `orbitctl rotate-keys`
//! GRID/crl.pem                   the revocation list, from the first `orbitctl revoke` on
//! GRID/renewing/NAME.pem         the certificate `orbitctl renew` replaced, until
//!                                `renew --finish` revokes it (NAME `orbitctl`: the controller's)
//! GRID/stars/NAME/star.toml      a ready config for that star
//! GRID/stars/NAME/{cert.pem,key.pem,ca.pem,token.key}
//! GRID/stars/NAME/token.previous.key   from the first `orbitctl rotate-keys` on
//! GRID/stars/NAME/crl.pem              from the first `orbitctl revoke` on
//! ```
//!
//! Secret files are created with mode 0600 from the first byte, never loosened and then
//! tightened. A new file is written with `create_new`, so nothing is overwritten by mistake;
//! the files later commands change (`grid.toml`, token keys, `crl.pem`, certificates and keys,
//! a setting in `star.toml`) are replaced whole by [`replace_file`], so a reader, or a crash, never leaves
//! half of one.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use orbit_certs::{GridCa, IssuedCert, Role};
use orbit_wire::token::{MasterKey, TokenKey};

use crate::spec::StarAddr;

/// The inventory.
pub const GRID_TOML: &str = "grid.toml";
/// The grid CA's certificate.
pub const CA_CERT: &str = "ca.pem";
/// The grid CA's private key (secret).
pub const CA_KEY: &str = "ca.key";
/// The controller's certificate.
pub const CONTROLLER_CERT: &str = "controller.pem";
/// The controller's private key (secret).
pub const CONTROLLER_KEY: &str = "controller.key";
/// The master token key, 64 hex digits (secret).
pub const MASTER_KEY: &str = "token-master.key";
/// The next master token key, during a rotation (secret).
pub const NEXT_MASTER_KEY: &str = "token-master.next.key";
/// The grid's revocation list, in the grid's folder and in every star's folder.
pub const CRL_FILE: &str = "crl.pem";
/// The folder holding, during `orbitctl renew`, the certificate each renewal replaced, as
/// `NAME.pem`, until `renew --finish` revokes it.
pub const RENEWING_DIR: &str = "renewing";
/// The folder holding one folder per star.
pub const STARS_DIR: &str = "stars";
/// A star's config, inside its folder.
pub const STAR_TOML: &str = "star.toml";
/// A star's certificate, inside its folder.
pub const STAR_CERT: &str = "cert.pem";
/// A star's private key (secret), inside its folder.
pub const STAR_KEY: &str = "key.pem";
/// The grid CA's certificate, copied into a star's folder.
pub const STAR_CA: &str = "ca.pem";
/// A star's token key, 64 hex digits (secret), inside its folder.
pub const STAR_TOKEN_KEY: &str = "token.key";
/// A star's token key before the last rotation (secret), inside its folder.
pub const STAR_PREVIOUS_TOKEN_KEY: &str = "token.previous.key";
/// The state directory a star's config names, relative to its folder.
pub const STAR_STATE_DIR: &str = "state";
/// The name in the controller's certificate.
pub const CONTROLLER_NAME: &str = "orbitctl";

/// Where a star's files go on its host under `dist/systemd/orbit-star.service`.
pub const HOST_DIR: &str = "/etc/orbit";
/// The group the star runs as under the unit (`dist/sysusers.d/orbit.conf`).
pub const HOST_GROUP: &str = "orbit";

/// The group and mode of a star's file in [`HOST_DIR`] (its owner is root), as the unit needs
/// them: the TLS files are credentials systemd reads as root and copies for the star at start;
/// the token keys are read by the star itself at start and on every reload, so root shares them
/// with its group, read only; the rest holds no secret.
pub fn host_access(file: &str) -> (&'static str, u32) {
    match file {
        STAR_TOKEN_KEY | STAR_PREVIOUS_TOKEN_KEY => (HOST_GROUP, 0o640),
        STAR_KEY | STAR_CERT | STAR_CA => ("root", 0o600),
        _ => ("root", 0o644),
    }
}

/// The commands that make [`HOST_DIR`] and install `files` (names in a star's folder) into it
/// with their owner, group and mode, run as root in a copy of the star's folder on its host:
/// one `install` per group and mode, in the order the files are given.
pub fn install_commands(files: &[&str], make_dir: bool) -> Vec<String> {
    let mut commands = Vec::new();
    if make_dir {
        commands.push(format!(
            "install -d -o root -g {HOST_GROUP} -m 0750 {HOST_DIR}"
        ));
    }
    let mut groups: Vec<((&str, u32), Vec<&str>)> = Vec::new();
    for file in files {
        let access = host_access(file);
        match groups.iter_mut().find(|(a, _)| *a == access) {
            Some((_, names)) => names.push(file),
            None => groups.push((access, vec![file])),
        }
    }
    for ((group, mode), names) in groups {
        commands.push(format!(
            "install -o root -g {group} -m {mode:04o} {} {HOST_DIR}/",
            names.join(" ")
        ));
    }
    commands
}

/// Who may read a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Mode 0644: certificates and configs.
    Public,
    /// Mode 0600: private keys and token keys.
    Secret,
}

impl Access {
    /// The file mode for this access.
    fn mode(self) -> u32 {
        match self {
            Access::Public => 0o644,
            Access::Secret => 0o600,
        }
    }
}

/// A file or folder could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {}: {error}", path.display())]
pub struct WriteError {
    /// What was being written.
    pub path: PathBuf,
    /// Why it failed.
    pub error: io::Error,
}

impl WriteError {
    /// Wraps an I/O error with the path it concerns.
    pub fn new(path: &Path, error: io::Error) -> WriteError {
        WriteError {
            path: path.to_owned(),
            error,
        }
    }
}

/// Creates `path`, which must not exist, with the mode for `access`, writes `contents` and
/// syncs it to disk.
///
/// # Errors
///
/// [`WriteError`] naming the path; `AlreadyExists` if it exists.
pub fn write_new(path: &Path, contents: &[u8], access: Access) -> Result<(), WriteError> {
    let write = || -> io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(access.mode())
            .open(path)?;
        file.write_all(contents)?;
        file.sync_all()
    };
    write().map_err(|e| WriteError::new(path, e))
}

/// Creates the folder `path`, which must not exist.
///
/// # Errors
///
/// [`WriteError`] naming the path.
pub fn create_dir(path: &Path) -> Result<(), WriteError> {
    std::fs::create_dir(path).map_err(|e| WriteError::new(path, e))
}

/// Replaces `path` whole: a temporary file beside it with the mode for `access` from the first
/// byte, synced, renamed over it, and the folder synced. A reader sees the old file or the new
/// one, never half of one, and after a crash the rename is either on disk or not done.
///
/// # Errors
///
/// [`WriteError`] naming the path, or the folder if it cannot be synced.
pub(crate) fn replace_file(path: &Path, contents: &[u8], access: Access) -> Result<(), WriteError> {
    // A bare file name has the empty path as its parent: that is the current folder.
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let write = || -> io::Result<()> {
        // The temporary file is in the same folder, so the rename stays on one file system
        // and is atomic.
        let mut tmp = tempfile::Builder::new()
            .prefix(".orbit-")
            .suffix(".tmp")
            .permissions(std::fs::Permissions::from_mode(access.mode()))
            .tempfile_in(dir)?;
        tmp.write_all(contents)?;
        tmp.as_file().sync_all()?;
        tmp.persist(path)?;
        Ok(())
    };
    write().map_err(|e| WriteError::new(path, e))?;
    sync_dir(dir)
}

/// Syncs the folder `dir`, so that a rename into it survives a crash: syncing a file does not
/// record its name.
///
/// # Errors
///
/// [`WriteError`] naming the folder.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), WriteError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| WriteError::new(dir, e))
}

/// Makes the star config at `path` set `key = "value"`: appended if the key is absent, left
/// alone if it is there.
///
/// # Errors
///
/// [`WriteError`] naming the path.
pub(crate) fn ensure_setting(path: &Path, key: &str, value: &str) -> Result<(), WriteError> {
    let text = std::fs::read_to_string(path).map_err(|e| WriteError::new(path, e))?;
    let present = text
        .parse::<toml::Table>()
        .map(|t| t.contains_key(key))
        .unwrap_or(false);
    if present {
        return Ok(());
    }
    let mut text = text;
    if !text.ends_with('\n') && !text.is_empty() {
        text.push('\n');
    }
    text.push_str(&format!("{key} = {}\n", toml_string(value)));
    replace_file(path, text.as_bytes(), Access::Public)
}

/// Makes the star config at `path` no longer set `key`: every top-level line `key = ...` is
/// dropped; the file is left alone if it has none.
///
/// # Errors
///
/// [`WriteError`] naming the path.
pub(crate) fn remove_setting(path: &Path, key: &str) -> Result<(), WriteError> {
    let text = std::fs::read_to_string(path).map_err(|e| WriteError::new(path, e))?;
    let sets_key = |line: &str| {
        line.trim_start()
            .strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
    };
    if !text.lines().any(sets_key) {
        return Ok(());
    }
    let kept: String = text
        .lines()
        .filter(|line| !sets_key(line))
        .flat_map(|line| [line, "\n"])
        .collect();
    replace_file(path, kept.as_bytes(), Access::Public)
}

/// Everything that goes into one star's folder.
#[derive(Debug, Clone)]
pub struct StarKit {
    /// The star's name.
    pub name: String,
    /// Where it listens, as the inventory says.
    pub addr: StarAddr,
    /// The grid CA's certificate, PEM.
    pub ca_pem: String,
    /// Its certificate and key.
    pub cert: IssuedCert,
    /// Its token key, derived from the master key and its name.
    pub token_key: TokenKey,
}

impl StarKit {
    /// Issues a star certificate for `name` and derives its token key.
    ///
    /// # Errors
    ///
    /// [`orbit_certs::CertError`] if the name is invalid or the certificate cannot be made.
    pub fn issue(
        ca: &GridCa,
        master: &MasterKey,
        name: &str,
        addr: &StarAddr,
    ) -> Result<StarKit, orbit_certs::CertError> {
        Ok(StarKit {
            name: name.to_owned(),
            addr: addr.clone(),
            ca_pem: ca.cert_pem(),
            cert: ca.issue(Role::Star, name)?,
            token_key: TokenKey::derive(master, name),
        })
    }

    /// Writes `star.toml`, `cert.pem`, `key.pem`, `ca.pem` and `token.key` into `dir`, which
    /// must exist and hold none of them. `command` is the `orbitctl` subcommand writing them.
    ///
    /// # Errors
    ///
    /// [`WriteError`] naming the file that could not be written.
    pub fn write_into(&self, dir: &Path, grid_name: &str, command: &str) -> Result<(), WriteError> {
        let files: [(&str, String, Access); 5] = [
            (STAR_CERT, self.cert.cert_pem.clone(), Access::Public),
            (STAR_KEY, self.cert.key_pem.clone(), Access::Secret),
            (STAR_CA, self.ca_pem.clone(), Access::Public),
            (
                STAR_TOKEN_KEY,
                format!("{}\n", self.token_key.to_hex()),
                Access::Secret,
            ),
            (
                STAR_TOML,
                self.star_toml(grid_name, command),
                Access::Public,
            ),
        ];
        for (name, contents, access) in files {
            write_new(&dir.join(name), contents.as_bytes(), access)?;
        }
        Ok(())
    }

    /// The star's config file, written by `orbitctl <command>`. The agent reads it; paths in it
    /// are relative to its folder.
    pub fn star_toml(&self, grid_name: &str, command: &str) -> String {
        let q = toml_string;
        format!(
            "# Orbit star {name} of grid {grid}, written by orbitctl {command}.\n\
             name = {name}\n\
             listen = {listen}\n\
             cert = {cert}\n\
             key = {key}\n\
             ca = {ca}\n\
             token_key_file = {token}\n\
             state_dir = {state}\n\
             # allow = [\"/srv/data\"]        # roots to serve and store under; or pass --allow DIR\n",
            name = q(&self.name),
            grid = grid_name,
            listen = q(&self.addr.listen_addr().to_string()),
            cert = q(STAR_CERT),
            key = q(STAR_KEY),
            ca = q(STAR_CA),
            token = q(STAR_TOKEN_KEY),
            state = q(STAR_STATE_DIR),
        )
    }
}

/// `value` as a quoted, escaped TOML string.
pub fn toml_string(value: &str) -> String {
    toml::Value::String(value.to_owned()).to_string()
}

/// A grid's name for people and for its CA: the last component of its folder.
pub fn grid_name(dir: &Path) -> String {
    let named = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    named(dir)
        .or_else(|| dir.canonicalize().ok().as_deref().and_then(named))
        .unwrap_or_else(|| "grid".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_files_are_0600_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        write_new(&path, b"secret", Access::Secret).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let err = write_new(&path, b"other", Access::Secret).unwrap_err();
        assert_eq!(err.error.kind(), io::ErrorKind::AlreadyExists);
        assert!(err.to_string().contains(&*path.to_string_lossy()));
        assert_eq!(std::fs::read(&path).unwrap(), b"secret");
    }

    #[test]
    fn replacing_a_file_sets_its_mode_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        write_new(&path, b"old", Access::Public).unwrap();
        replace_file(&path, b"new", Access::Secret).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["k"]);
    }

    #[test]
    fn star_toml_has_exactly_the_agreed_keys() {
        let ca = GridCa::generate("t").unwrap();
        let master = MasterKey::from_bytes([1; 32]);
        let addr = StarAddr::parse("host.example:7401").unwrap();
        let kit = StarKit::issue(&ca, &master, "star-a", &addr).unwrap();
        let text = kit.star_toml("prod", "init");
        assert!(
            text.starts_with("# Orbit star \"star-a\" of grid prod, written by orbitctl init.\n")
        );
        let table: toml::Table = text.parse().unwrap();
        let keys: Vec<&str> = table.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "ca",
                "cert",
                "key",
                "listen",
                "name",
                "state_dir",
                "token_key_file"
            ]
        );
        assert_eq!(table["name"].as_str(), Some("star-a"));
        assert_eq!(table["listen"].as_str(), Some("0.0.0.0:7401"));
        assert!(text.contains("\n# allow = [\"/srv/data\"]"));

        let ip = StarAddr::parse("10.1.2.3:7401").unwrap();
        let kit = StarKit::issue(&ca, &master, "star-b", &ip).unwrap();
        let table: toml::Table = kit.star_toml("prod", "init").parse().unwrap();
        assert_eq!(table["listen"].as_str(), Some("10.1.2.3:7401"));
    }

    #[test]
    fn install_commands_give_each_file_the_units_owner_and_mode() {
        let all = [STAR_TOML, STAR_CERT, STAR_KEY, STAR_CA, STAR_TOKEN_KEY];
        assert_eq!(
            install_commands(&all, true),
            [
                "install -d -o root -g orbit -m 0750 /etc/orbit",
                "install -o root -g root -m 0644 star.toml /etc/orbit/",
                "install -o root -g root -m 0600 cert.pem key.pem ca.pem /etc/orbit/",
                "install -o root -g orbit -m 0640 token.key /etc/orbit/",
            ]
        );
        assert_eq!(
            install_commands(&[STAR_TOKEN_KEY, STAR_PREVIOUS_TOKEN_KEY, STAR_TOML], false),
            [
                "install -o root -g orbit -m 0640 token.key token.previous.key /etc/orbit/",
                "install -o root -g root -m 0644 star.toml /etc/orbit/",
            ]
        );
    }

    #[test]
    fn grid_names_come_from_the_folder() {
        assert_eq!(grid_name(Path::new("/etc/orbit/prod")), "prod");
        assert_eq!(grid_name(Path::new("prod/")), "prod");
        assert!(!grid_name(Path::new(".")).is_empty());
    }
}
