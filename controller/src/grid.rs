//! A grid as the controller sees it: the inventory in `grid.toml` and, on demand, the secrets
//! beside it (the CA, the controller's certificate and key, the master token key).
//!
//! Secrets are read only by the commands that need them and never printed. `grid.toml` is
//! strict (unknown keys are errors) and is only ever replaced whole, through a temporary file
//! and a rename, so a reader never sees half of it.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use orbit_certs::GridCa;
use orbit_wire::token::MasterKey;
use orbit_wire::ErrorCode;
use serde::{Deserialize, Serialize};

use crate::layout::{self, Access, WriteError};
use crate::spec::StarAddr;

/// How long a token stays valid when neither `--ttl` nor `grid.toml` says: five minutes.
pub const DEFAULT_TTL_SECS: u64 = 300;

/// The longest `zone` a star may have in `grid.toml`, in bytes.
pub const MAX_ZONE_LEN: usize = 64;

/// The contents of `grid.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    /// The stars, by name. Names are DNS labels.
    #[serde(default)]
    pub stars: BTreeMap<String, StarEntry>,
    /// Settings for every command.
    #[serde(default)]
    pub defaults: Defaults,
}

/// One star of the inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StarEntry {
    /// Where the star listens: `HOST:PORT`.
    pub addr: StarAddr,
    /// The rack, zone or site the star is in, as the operator names it: a fan-out plans the
    /// stars of one zone next to each other, so that few links cross between zones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

/// The `[defaults]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// Lifetime of minted tokens, in seconds; [`DEFAULT_TTL_SECS`] when absent.
    #[serde(default = "default_ttl")]
    pub ttl_secs: u64,
}

fn default_ttl() -> u64 {
    DEFAULT_TTL_SECS
}

impl Default for Defaults {
    fn default() -> Defaults {
        Defaults {
            ttl_secs: DEFAULT_TTL_SECS,
        }
    }
}

impl Inventory {
    /// Checks what serde cannot: star names are valid and the ttl is positive.
    ///
    /// # Errors
    ///
    /// A message naming the first problem.
    pub fn validate(&self) -> Result<(), String> {
        for (name, star) in &self.stars {
            orbit_certs::validate_name(name).map_err(|e| format!("star {e}"))?;
            if let Some(zone) = &star.zone {
                let printable = zone.chars().all(|c| !c.is_control());
                if zone.is_empty() || zone.len() > MAX_ZONE_LEN || !printable {
                    return Err(format!(
                        "stars.{name}.zone must be 1 to {MAX_ZONE_LEN} bytes of printable text"
                    ));
                }
            }
        }
        if self.defaults.ttl_secs == 0 {
            return Err("defaults.ttl_secs must be at least 1".into());
        }
        Ok(())
    }

    /// The file's text, with a header saying what it is.
    pub fn render(&self, grid_name: &str) -> String {
        let mut out = format!(
            "# Orbit grid {grid_name}: the inventory orbitctl reads. Written by `orbitctl init`;\n\
             # `orbitctl add-star` adds stars. Each star has its files in stars/NAME/ beside this file.\n"
        );
        for (name, star) in &self.stars {
            out.push_str(&format!(
                "\n[stars.{name}]\naddr = {}\n",
                layout::toml_string(&star.addr.to_string())
            ));
            if let Some(zone) = &star.zone {
                out.push_str(&format!("zone = {}\n", layout::toml_string(zone)));
            }
        }
        out.push_str(&format!(
            "\n[defaults]\n# How long a minted token stays valid, in seconds (--ttl overrides it).\n\
             ttl_secs = {}\n",
            self.defaults.ttl_secs
        ));
        out
    }
}

/// Why a grid could not be used.
#[derive(Debug, thiserror::Error)]
pub enum GridError {
    /// There is no readable `grid.toml` in the folder.
    #[error(
        "{} is not an orbit grid ({error}): make one with `orbitctl init`, or point --grid or ORBIT_GRID at one",
        dir.display()
    )]
    NotAGrid {
        /// The folder given.
        dir: PathBuf,
        /// Why `grid.toml` could not be read.
        error: io::Error,
    },
    /// A file of the grid could not be read.
    #[error("cannot read {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// A file of the grid is not what it should be.
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A star name that the inventory does not list.
    #[error("unknown star {name:?}: {} lists {}", grid_toml.display(), known_list(.known))]
    UnknownStar {
        /// The name asked for.
        name: String,
        /// The inventory consulted.
        grid_toml: PathBuf,
        /// The names it lists, sorted.
        known: Vec<String>,
    },
    /// Writing the grid failed.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// A secret file of the grid is readable by others, or cannot be read.
    #[error(transparent)]
    Secret(#[from] orbit_certs::SecretFileError),
}

fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        "no stars".to_owned()
    } else {
        known.join(", ")
    }
}

impl GridError {
    /// The wire code that best describes this failure, for `--json` output.
    pub fn code(&self) -> ErrorCode {
        match self {
            GridError::UnknownStar { .. } => ErrorCode::InvalidArgument,
            GridError::NotAGrid { .. }
            | GridError::Read { .. }
            | GridError::Invalid { .. }
            | GridError::Secret(_) => ErrorCode::FailedPrecondition,
            GridError::Write(_) => ErrorCode::Internal,
        }
    }
}

/// An opened grid: its folder and its inventory.
#[derive(Debug, Clone)]
pub struct Grid {
    dir: PathBuf,
    inventory: Inventory,
}

impl Grid {
    /// Reads and checks `dir/grid.toml`.
    ///
    /// # Errors
    ///
    /// [`GridError::NotAGrid`] if it cannot be read, [`GridError::Invalid`] if it is not a valid
    /// inventory.
    pub fn open(dir: &Path) -> Result<Grid, GridError> {
        let path = dir.join(layout::GRID_TOML);
        let text = std::fs::read_to_string(&path).map_err(|error| GridError::NotAGrid {
            dir: dir.to_owned(),
            error,
        })?;
        let invalid = |message: String| GridError::Invalid {
            path: path.clone(),
            message,
        };
        let inventory: Inventory = toml::from_str(&text).map_err(|e| invalid(one_line(&e)))?;
        inventory.validate().map_err(invalid)?;
        Ok(Grid {
            dir: dir.to_owned(),
            inventory,
        })
    }

    /// The grid's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The grid's name: its folder's.
    pub fn name(&self) -> String {
        layout::grid_name(&self.dir)
    }

    /// The inventory.
    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    /// How long a minted token stays valid unless told otherwise.
    pub fn ttl_secs(&self) -> u64 {
        self.inventory.defaults.ttl_secs
    }

    /// The address of the star `name`.
    ///
    /// # Errors
    ///
    /// [`GridError::UnknownStar`], listing the stars the inventory knows.
    pub fn star(&self, name: &str) -> Result<&StarAddr, GridError> {
        match self.inventory.stars.get(name) {
            Some(entry) => Ok(&entry.addr),
            None => Err(GridError::UnknownStar {
                name: name.to_owned(),
                grid_toml: self.dir.join(layout::GRID_TOML),
                known: self.inventory.stars.keys().cloned().collect(),
            }),
        }
    }

    /// The zone `grid.toml` gives the star, if any (and if the star is known).
    pub fn zone(&self, name: &str) -> Option<&str> {
        self.inventory.stars.get(name)?.zone.as_deref()
    }

    fn read(&self, file: &str) -> Result<(PathBuf, String), GridError> {
        let path = self.dir.join(file);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok((path, text)),
            Err(error) => Err(GridError::Read { path, error }),
        }
    }

    /// Reads a secret file of the grid, refusing one that its group or others may read.
    fn read_secret(&self, file: &str, what: &str) -> Result<(PathBuf, String), GridError> {
        let path = self.dir.join(file);
        let text = orbit_certs::read_secret_file(&path, what)?;
        Ok((path, text))
    }

    /// The grid CA, with its private key.
    ///
    /// # Errors
    ///
    /// [`GridError`] if `ca.pem` or `ca.key` cannot be read or do not make a CA.
    pub fn ca(&self) -> Result<GridCa, GridError> {
        let (cert_path, cert) = self.read(layout::CA_CERT)?;
        let (_, key) = self.read_secret(layout::CA_KEY, "ca key file")?;
        GridCa::from_pem(&cert, &key).map_err(|e| GridError::Invalid {
            path: cert_path,
            message: e.to_string(),
        })
    }

    /// The master token key.
    ///
    /// # Errors
    ///
    /// [`GridError`] if `token-master.key` cannot be read or is not 64 hex digits.
    pub fn master_key(&self) -> Result<MasterKey, GridError> {
        self.read_master_key(layout::MASTER_KEY)
    }

    /// A master token key from `file` in the grid's folder (the current one, or the next one
    /// during a rotation).
    ///
    /// # Errors
    ///
    /// [`GridError`] if the file cannot be read, is readable by others, or is not 64 hex
    /// digits.
    pub fn read_master_key(&self, file: &str) -> Result<MasterKey, GridError> {
        let (path, text) = self.read_secret(file, "master token key file")?;
        MasterKey::from_hex(&text).map_err(|e| GridError::Invalid {
            path,
            message: e.to_string(),
        })
    }

    /// The controller's TLS client configuration: its certificate and key, the grid CA as the
    /// only root, ALPN `orbit/1`.
    ///
    /// # Errors
    ///
    /// [`GridError`] if a file cannot be read or rustls refuses it.
    pub fn client_tls(&self) -> Result<Arc<rustls::ClientConfig>, GridError> {
        let (_, ca) = self.read(layout::CA_CERT)?;
        let (cert_path, cert) = self.read(layout::CONTROLLER_CERT)?;
        let (_, key) = self.read_secret(layout::CONTROLLER_KEY, "controller key file")?;
        // With the grid's revocation list, orbitctl refuses a revoked star as stars do.
        let crl_path = self.dir.join(layout::CRL_FILE);
        let crl = match std::fs::read_to_string(&crl_path) {
            Ok(pem) => Some(
                orbit_certs::RevocationList::from_pem(&pem, &ca).map_err(|e| {
                    GridError::Invalid {
                        path: crl_path.clone(),
                        message: e.to_string(),
                    }
                })?,
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(error) => {
                return Err(GridError::Read {
                    path: crl_path,
                    error,
                })
            }
        };
        let config =
            orbit_certs::client_config_with_crl(&ca, &cert, &key, orbit_wire::ALPN, crl.as_ref())
                .map_err(|e| GridError::Invalid {
                path: cert_path,
                message: format!("cannot use the controller's certificate: {e}"),
            })?;
        Ok(Arc::new(config))
    }

    /// Replaces `grid.toml` with `inventory`, atomically and durably: a temporary file in the
    /// grid's folder, synced, renamed over the old one, and the folder synced so the rename
    /// survives a crash. The file stays mode 0644, as `orbitctl init` writes it.
    ///
    /// # Errors
    ///
    /// [`GridError::Write`] naming the file (or the folder, if it cannot be synced).
    pub fn save(&mut self, inventory: Inventory) -> Result<(), GridError> {
        let path = self.dir.join(layout::GRID_TOML);
        let text = inventory.render(&self.name());
        layout::replace_file(&path, text.as_bytes(), Access::Public)?;
        self.inventory = inventory;
        Ok(())
    }
}

/// A TOML error on one line: the parser's message without its source excerpt.
fn one_line(error: &toml::de::Error) -> String {
    error.message().trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inventory() -> Inventory {
        let mut stars = BTreeMap::new();
        for (name, addr) in [("star-b", "[::1]:7402"), ("star-a", "host.example:7401")] {
            stars.insert(
                name.to_owned(),
                StarEntry {
                    addr: StarAddr::parse(addr).unwrap(),
                    zone: None,
                },
            );
        }
        Inventory {
            stars,
            defaults: Defaults::default(),
        }
    }

    #[test]
    fn inventory_round_trips_through_its_text() {
        let text = inventory().render("prod");
        assert!(text.starts_with("# Orbit grid prod"));
        assert!(text.contains("[stars.star-a]\naddr = \"host.example:7401\"\n"));
        assert!(text.contains("[defaults]\n"));
        assert!(text.contains("ttl_secs = 300\n"));
        let back: Inventory = toml::from_str(&text).unwrap();
        assert_eq!(back, inventory());
    }

    #[test]
    fn strict_parsing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(layout::GRID_TOML);
        let open = |text: &str| {
            std::fs::write(&path, text).unwrap();
            Grid::open(dir.path())
        };
        assert!(open("[stars.a]\naddr = \"h:1\"\n").is_ok());
        let err = open("[stars.a]\naddr = \"h:1\"\nport = 3\n").unwrap_err();
        assert!(err.to_string().contains("port"), "{err}");
        let err = open("[stars.a]\naddr = \"h\"\n").unwrap_err();
        assert!(err.to_string().contains("HOST:PORT"), "{err}");
        let err = open("[stars.A]\naddr = \"h:1\"\n").unwrap_err();
        assert!(err.to_string().contains("invalid name"), "{err}");
        let err = open("[defaults]\nttl_secs = 0\n").unwrap_err();
        assert!(err.to_string().contains("ttl_secs"), "{err}");
        assert_eq!(open("").unwrap().ttl_secs(), DEFAULT_TTL_SECS);
    }

    #[test]
    fn unknown_stars_list_the_known_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(layout::GRID_TOML), inventory().render("x")).unwrap();
        let grid = Grid::open(dir.path()).unwrap();
        assert_eq!(
            grid.star("star-a").unwrap().to_string(),
            "host.example:7401"
        );
        let err = grid.star("star-c").unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidArgument);
        let msg = err.to_string();
        assert!(msg.starts_with("unknown star \"star-c\": "), "{msg}");
        assert!(msg.ends_with("grid.toml lists star-a, star-b"), "{msg}");
    }

    #[test]
    fn saving_replaces_grid_toml_with_mode_0644() {
        use std::os::unix::fs::PermissionsExt;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(layout::GRID_TOML);
        std::fs::write(&path, "").unwrap();
        let mut grid = Grid::open(dir.path()).unwrap();
        grid.save(inventory()).unwrap();
        assert_eq!(grid.inventory(), &inventory());
        assert_eq!(Grid::open(dir.path()).unwrap().inventory(), &inventory());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [layout::GRID_TOML]);
    }

    #[test]
    fn a_missing_grid_says_how_to_make_one() {
        let dir = tempfile::tempdir().unwrap();
        let err = Grid::open(&dir.path().join("nope")).unwrap_err();
        assert!(err.to_string().contains("orbitctl init"), "{err}");
        assert_eq!(err.code(), ErrorCode::FailedPrecondition);
    }
}
