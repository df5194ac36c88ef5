//! `orbitctl add-star`: adds a star to an existing grid: its folder under `stars/` (certificate,
//! key, CA, token key, star.toml) and its line in `grid.toml`.
//!
//! It never replaces a star: an existing name or folder is refused. The folder is written in a
//! staging folder and renamed into place, then `grid.toml` is replaced atomically; if that
//! fails, the new folder is removed again.

use std::io;
use std::path::{Path, PathBuf};

use crate::grid::{Grid, GridError, StarEntry};
use crate::layout::{self, StarKit, WriteError};
use crate::spec::{StarAddr, StarSpec};

/// Add a star to the grid: issue its certificate and token key and list it in grid.toml.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The new star's name and the address it will listen on, e.g. star-c=10.0.0.3:7400.
    #[arg(value_name = "NAME=HOST:PORT", value_parser = StarSpec::parse)]
    pub star: StarSpec,

    /// Print one JSON object instead of the summary and next step:
    /// {"type":"star","ok":true,"name":..,"addr":..,"folder":..,"config":..}.
    /// A failure prints {"type":"result","ok":false,"code":..,"retryable":..,"message":..}.
    #[arg(long)]
    pub json: bool,
}

#[derive(serde::Serialize)]
struct AddedJson<'a> {
    ok: bool,
    name: &'a str,
    addr: String,
    folder: String,
    config: String,
}

/// Why a star could not be added.
#[derive(Debug, thiserror::Error)]
pub enum AddStarError {
    /// The grid could not be read or written.
    #[error(transparent)]
    Grid(#[from] GridError),
    /// The inventory already lists the name.
    #[error("star {name:?} already exists in {} (at {addr})", grid_toml.display())]
    Exists {
        /// The name.
        name: String,
        /// Its address in the inventory.
        addr: StarAddr,
        /// The inventory.
        grid_toml: PathBuf,
    },
    /// The star's folder exists although the inventory does not list it.
    #[error("{} already exists; remove it or choose another name", .0.display())]
    FolderExists(PathBuf),
    /// The certificate could not be made.
    #[error("cannot make the star's certificate: {0}")]
    Cert(String),
    /// A file could not be written.
    #[error(transparent)]
    Write(#[from] WriteError),
}

impl AddStarError {
    /// The wire code that fits, for `--json`.
    pub fn code(&self) -> orbit_wire::ErrorCode {
        use orbit_wire::ErrorCode;
        match self {
            AddStarError::Grid(e) => e.code(),
            AddStarError::Exists { .. } | AddStarError::FolderExists(_) => ErrorCode::AlreadyExists,
            AddStarError::Cert(_) | AddStarError::Write(_) => ErrorCode::Internal,
        }
    }
}

/// Runs `orbitctl add-star` on the grid at `grid_dir` and prints what it wrote (with
/// `--json`, also what failed).
///
/// # Errors
///
/// [`AddStarError`].
pub fn run(grid_dir: &Path, args: Args) -> Result<(), AddStarError> {
    let star_dir = match add_star(grid_dir, &args.star) {
        Ok(dir) => dir,
        Err(e) => {
            if args.json {
                println!("{}", crate::json::failure(e.code(), &e.to_string()));
            }
            return Err(e);
        }
    };
    let StarSpec { name, addr } = &args.star;
    if args.json {
        let json = AddedJson {
            ok: true,
            name,
            addr: addr.to_string(),
            folder: star_dir.display().to_string(),
            config: star_dir.join(layout::STAR_TOML).display().to_string(),
        };
        println!("{}", crate::json::line(crate::json::STAR, &json));
        return Ok(());
    }
    println!(
        "Added star {name:?} at {addr} to {}.",
        grid_dir.join(layout::GRID_TOML).display()
    );
    println!(
        "  {}/  star.toml, certificate, keys and CA for {name}",
        star_dir.display()
    );
    println!();
    println!("Next, copy that folder to the star's host and start the star there:");
    println!(
        "  orbit-star --config {}/star.toml --allow DIR",
        star_dir.display()
    );
    print_unit_install();
    Ok(())
}

/// How to install a star's folder for `dist/systemd/orbit-star.service` (docs/OPERATIONS.md).
pub(crate) fn print_unit_install() {
    println!("or, under the systemd unit: set `allow` in the grid's star.toml first (deploying");
    println!("it again after rotate-keys or revoke then keeps it), then as root in the copy:");
    let files = [
        layout::STAR_TOML,
        layout::STAR_CERT,
        layout::STAR_KEY,
        layout::STAR_CA,
        layout::STAR_TOKEN_KEY,
    ];
    for command in layout::install_commands(&files, true) {
        println!("  {command}");
    }
    println!("  systemctl enable --now orbit-star");
}

/// Adds `spec` to the grid at `grid_dir` and returns the star's new folder.
///
/// # Errors
///
/// [`AddStarError`]; on error the grid is as it was.
pub fn add_star(grid_dir: &Path, spec: &StarSpec) -> Result<PathBuf, AddStarError> {
    let mut grid = Grid::open(grid_dir)?;
    if let Some(existing) = grid.inventory().stars.get(&spec.name) {
        return Err(AddStarError::Exists {
            name: spec.name.clone(),
            addr: existing.addr.clone(),
            grid_toml: grid_dir.join(layout::GRID_TOML),
        });
    }
    let stars_dir = grid_dir.join(layout::STARS_DIR);
    let star_dir = stars_dir.join(&spec.name);
    if star_dir.exists() {
        return Err(AddStarError::FolderExists(star_dir));
    }
    let ca = grid.ca()?;
    let master = grid.master_key()?;
    let kit = StarKit::issue(&ca, &master, &spec.name, &spec.addr)
        .map_err(|e| AddStarError::Cert(e.to_string()))?;

    std::fs::create_dir_all(&stars_dir).map_err(|e| WriteError::new(&stars_dir, e))?;
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{}.", spec.name))
        .tempdir_in(&stars_dir)
        .map_err(|e| WriteError::new(&stars_dir, e))?;
    kit.write_into(staging.path(), &grid.name(), "add-star")?;
    match std::fs::rename(staging.path(), &star_dir) {
        Ok(()) => {
            let _ = staging.keep();
        }
        Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => {
            return Err(AddStarError::FolderExists(star_dir));
        }
        Err(e) => return Err(WriteError::new(&star_dir, e).into()),
    }

    let mut inventory = grid.inventory().clone();
    inventory.stars.insert(
        spec.name.clone(),
        StarEntry {
            addr: spec.addr.clone(),
            zone: None,
        },
    );
    if let Err(e) = grid.save(inventory) {
        // The grid does not list the star, so its folder must not stay either.
        let _ = std::fs::remove_dir_all(&star_dir);
        return Err(e.into());
    }
    Ok(star_dir)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use orbit_wire::token::TokenKey;

    use super::*;
    use crate::init::create_grid;

    fn spec(text: &str) -> StarSpec {
        StarSpec::parse(text).unwrap()
    }

    #[test]
    fn add_star_writes_its_folder_and_lists_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("g");
        create_grid(&dir, &[spec("star-a=127.0.0.1:7401")]).unwrap();

        let star_dir = add_star(&dir, &spec("star-c=10.0.0.3:7403")).unwrap();
        assert_eq!(star_dir, dir.join("stars/star-c"));
        let grid = Grid::open(&dir).unwrap();
        assert_eq!(grid.star("star-c").unwrap().to_string(), "10.0.0.3:7403");
        assert_eq!(grid.star("star-a").unwrap().to_string(), "127.0.0.1:7401");
        let mode = |f: &str| {
            std::fs::metadata(star_dir.join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(layout::STAR_KEY), 0o600);
        assert_eq!(mode(layout::STAR_TOKEN_KEY), 0o600);
        let key = std::fs::read_to_string(star_dir.join(layout::STAR_TOKEN_KEY)).unwrap();
        let want = TokenKey::derive(&grid.master_key().unwrap(), "star-c");
        assert_eq!(key.trim(), want.to_hex());
        let toml = std::fs::read_to_string(star_dir.join(layout::STAR_TOML)).unwrap();
        assert!(toml.contains("written by orbitctl add-star"), "{toml}");
        assert!(toml.contains("listen = \"10.0.0.3:7403\""), "{toml}");
        let text = std::fs::read_to_string(dir.join(layout::GRID_TOML)).unwrap();
        assert!(text.starts_with("# Orbit grid g"), "{text}");
        // Only the two star folders: no staging folder left behind.
        assert_eq!(std::fs::read_dir(dir.join("stars")).unwrap().count(), 2);
        // No temporary inventory left behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 7);
    }

    #[test]
    fn add_star_refuses_an_existing_star() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("g");
        create_grid(&dir, &[spec("star-a=127.0.0.1:7401")]).unwrap();
        let before = std::fs::read(dir.join("stars/star-a/key.pem")).unwrap();
        let err = add_star(&dir, &spec("star-a=10.0.0.9:1")).unwrap_err();
        assert!(matches!(err, AddStarError::Exists { .. }), "{err}");
        assert!(err.to_string().contains("127.0.0.1:7401"), "{err}");
        assert_eq!(
            std::fs::read(dir.join("stars/star-a/key.pem")).unwrap(),
            before
        );

        std::fs::create_dir(dir.join("stars/star-x")).unwrap();
        let err = add_star(&dir, &spec("star-x=h:1")).unwrap_err();
        assert!(matches!(err, AddStarError::FolderExists(_)), "{err}");
        assert!(Grid::open(&dir).unwrap().star("star-x").is_err());

        let err = add_star(&tmp.path().join("none"), &spec("b=h:1")).unwrap_err();
        assert!(matches!(err, AddStarError::Grid(_)), "{err}");
    }
}
