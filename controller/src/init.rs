//! `orbitctl init`: makes a new grid: its CA, the controller's certificate, the master token
//! key, and a ready folder for every star.
//!
//! Everything is checked and generated before anything is written, and everything is written
//! into a hidden staging folder beside GRID that is renamed into place at the end, so a failed
//! init leaves nothing behind. It never writes into a GRID that exists and is not empty.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use orbit_certs::{GridCa, Role};
use orbit_wire::token::{MasterKey, KEY_LEN};
use rand::RngCore;

use crate::grid::{Defaults, Inventory, StarEntry};
use crate::layout::{self, Access, StarKit, WriteError};
use crate::spec::StarSpec;

/// Make a new grid: a CA, certificates and keys for the controller and for every star.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The folder to create the grid in. It must not exist, or be empty.
    #[arg(value_name = "GRID")]
    pub dir: PathBuf,

    /// A star of the grid and the address it will listen on (repeat for more stars), e.g.
    /// --star star-a=10.0.0.1:7400. HOST may be an IP address or a host name.
    #[arg(
        long = "star",
        value_name = "NAME=HOST:PORT",
        required = true,
        value_parser = StarSpec::parse
    )]
    pub stars: Vec<StarSpec>,

    /// Print one JSON object instead of the summary and next steps:
    /// {"type":"grid","ok":true,"grid":..,"name":..,"stars":[{"name":..,"addr":..,
    /// "config":..}]}, where config is the star's star.toml in the grid.
    /// A failure prints {"type":"result","ok":false,"code":..,"retryable":..,"message":..}.
    #[arg(long)]
    pub json: bool,
}

#[derive(serde::Serialize)]
struct GridJson {
    ok: bool,
    grid: String,
    name: String,
    stars: Vec<StarJson>,
}

#[derive(serde::Serialize)]
struct StarJson {
    name: String,
    addr: String,
    config: String,
}

/// Why a grid could not be made.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The same star name was given twice.
    #[error("star {0:?} is given more than once")]
    DuplicateStar(String),
    /// GRID exists and holds something.
    #[error("{} already exists and is not empty; refusing to write a grid into it", .0.display())]
    NotEmpty(PathBuf),
    /// GRID exists and is a file.
    #[error("{} exists and is not a folder", .0.display())]
    NotADirectory(PathBuf),
    /// Making the CA or a certificate failed.
    #[error("cannot make certificates: {0}")]
    Cert(String),
    /// A file could not be written.
    #[error(transparent)]
    Write(#[from] WriteError),
}

impl InitError {
    /// The wire code that fits, for `--json`.
    pub fn code(&self) -> orbit_wire::ErrorCode {
        use orbit_wire::ErrorCode;
        match self {
            InitError::DuplicateStar(_) => ErrorCode::InvalidArgument,
            InitError::NotEmpty(_) => ErrorCode::AlreadyExists,
            InitError::NotADirectory(_) => ErrorCode::FailedPrecondition,
            InitError::Cert(_) | InitError::Write(_) => ErrorCode::Internal,
        }
    }
}

/// Runs `orbitctl init` and prints what it wrote (with `--json`, also what failed).
///
/// # Errors
///
/// [`InitError`].
pub fn run(args: Args) -> Result<(), InitError> {
    if let Err(e) = create_grid(&args.dir, &args.stars) {
        if args.json {
            println!("{}", crate::json::failure(e.code(), &e.to_string()));
        }
        return Err(e);
    }
    if args.json {
        let json = GridJson {
            ok: true,
            grid: args.dir.display().to_string(),
            name: layout::grid_name(&args.dir),
            stars: args
                .stars
                .iter()
                .map(|star| StarJson {
                    name: star.name.clone(),
                    addr: star.addr.to_string(),
                    config: star_toml(&args.dir, &star.name).display().to_string(),
                })
                .collect(),
        };
        println!("{}", crate::json::line(crate::json::GRID, &json));
        return Ok(());
    }
    let grid = args.dir.display();
    let line = |label: &str, text: &str| println!("  {label:<26}{text}");
    println!("Created grid {:?} in {grid}:", layout::grid_name(&args.dir));
    line("grid.toml", "the inventory: stars, addresses, defaults");
    line(
        "ca.pem, ca.key",
        "the grid's certificate authority (keep ca.key secret)",
    );
    line("controller.pem, .key", "orbitctl's certificate");
    line("token-master.key", "the master token key (keep it secret)");
    for star in &args.stars {
        line(
            &format!("stars/{}/", star.name),
            &format!(
                "star.toml, certificate, keys and CA for {} at {}",
                star.name, star.addr
            ),
        );
    }
    println!();
    println!("Next, copy each stars/NAME/ folder to its host and start the star there:");
    for star in &args.stars {
        println!(
            "  orbit-star --config {grid}/stars/{}/star.toml --allow DIR",
            star.name
        );
    }
    crate::add_star::print_unit_install();
    println!("then check that they answer:");
    println!("  orbitctl --grid {grid} status");
    Ok(())
}

/// The star `name`'s `star.toml` in the grid at `dir`.
fn star_toml(dir: &Path, name: &str) -> PathBuf {
    dir.join(layout::STARS_DIR)
        .join(name)
        .join(layout::STAR_TOML)
}

/// Makes the grid at `dir` with `stars`: checks, generates, writes into a staging folder and
/// renames it into place.
///
/// # Errors
///
/// [`InitError`]; on error nothing is left at `dir` that was not there before.
pub fn create_grid(dir: &Path, stars: &[StarSpec]) -> Result<(), InitError> {
    let mut inventory = Inventory {
        stars: BTreeMap::new(),
        defaults: Defaults::default(),
    };
    for star in stars {
        let entry = StarEntry {
            addr: star.addr.clone(),
            zone: None,
        };
        if inventory.stars.insert(star.name.clone(), entry).is_some() {
            return Err(InitError::DuplicateStar(star.name.clone()));
        }
    }
    check_empty(dir)?;

    let name = layout::grid_name(dir);
    let cert_error = |e: orbit_certs::CertError| InitError::Cert(e.to_string());
    let ca = GridCa::generate(&name).map_err(cert_error)?;
    let controller = ca
        .issue(Role::Controller, layout::CONTROLLER_NAME)
        .map_err(cert_error)?;
    let mut master = [0u8; KEY_LEN];
    rand::rngs::OsRng.fill_bytes(&mut master);
    let master = MasterKey::from_bytes(master);
    let kits = stars
        .iter()
        .map(|s| StarKit::issue(&ca, &master, &s.name, &s.addr))
        .collect::<Result<Vec<_>, _>>()
        .map_err(cert_error)?;

    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| WriteError::new(&parent, e))?;
    // Mode 0700: the folder holds the CA key.
    let staging = tempfile::Builder::new()
        .prefix(".orbit-init-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(&parent)
        .map_err(|e| WriteError::new(&parent, e))?;
    let root = staging.path();
    let files = [
        (layout::GRID_TOML, inventory.render(&name), Access::Public),
        (layout::CA_CERT, ca.cert_pem(), Access::Public),
        (layout::CA_KEY, ca.key_pem(), Access::Secret),
        (layout::CONTROLLER_CERT, controller.cert_pem, Access::Public),
        (layout::CONTROLLER_KEY, controller.key_pem, Access::Secret),
        (
            layout::MASTER_KEY,
            format!("{}\n", master.to_hex()),
            Access::Secret,
        ),
    ];
    for (file, contents, access) in files {
        layout::write_new(&root.join(file), contents.as_bytes(), access)?;
    }
    layout::create_dir(&root.join(layout::STARS_DIR))?;
    for kit in &kits {
        let star_dir = root.join(layout::STARS_DIR).join(&kit.name);
        layout::create_dir(&star_dir)?;
        kit.write_into(&star_dir, &name, "init")?;
    }

    // rename(2) replaces an empty folder and refuses a non-empty one, so a GRID that gained
    // files since the check above is still not overwritten.
    match std::fs::rename(root, dir) {
        Ok(()) => {
            let _ = staging.keep();
            Ok(())
        }
        Err(e) if matches!(e.kind(), io::ErrorKind::DirectoryNotEmpty) => {
            Err(InitError::NotEmpty(dir.to_owned()))
        }
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
            Err(InitError::NotADirectory(dir.to_owned()))
        }
        Err(e) => Err(WriteError::new(dir, e).into()),
    }
}

/// Refuses a `dir` that exists and is not an empty folder.
fn check_empty(dir: &Path) -> Result<(), InitError> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(WriteError::new(dir, e).into()),
        Ok(meta) if !meta.is_dir() => Err(InitError::NotADirectory(dir.to_owned())),
        Ok(_) => {
            let mut entries = std::fs::read_dir(dir).map_err(|e| WriteError::new(dir, e))?;
            match entries.next() {
                None => Ok(()),
                Some(_) => Err(InitError::NotEmpty(dir.to_owned())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use orbit_wire::token::TokenKey;

    use super::*;
    use crate::grid::Grid;

    fn specs(list: &[&str]) -> Vec<StarSpec> {
        list.iter().map(|s| StarSpec::parse(s).unwrap()).collect()
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn init_writes_every_file_with_secret_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("prod");
        create_grid(
            &dir,
            &specs(&["star-a=127.0.0.1:7401", "star-b=host-b:7402"]),
        )
        .unwrap();

        for secret in [layout::CA_KEY, layout::CONTROLLER_KEY, layout::MASTER_KEY] {
            assert_eq!(mode(&dir.join(secret)), 0o600, "{secret}");
        }
        for public in [layout::GRID_TOML, layout::CA_CERT, layout::CONTROLLER_CERT] {
            assert!(dir.join(public).is_file(), "{public}");
        }
        let master_text = std::fs::read_to_string(dir.join(layout::MASTER_KEY)).unwrap();
        assert_eq!(master_text.len(), 65);
        assert!(master_text.ends_with('\n'));
        let master = MasterKey::from_hex(&master_text).unwrap();

        for name in ["star-a", "star-b"] {
            let star = dir.join("stars").join(name);
            for secret in [layout::STAR_KEY, layout::STAR_TOKEN_KEY] {
                assert_eq!(mode(&star.join(secret)), 0o600, "{name}/{secret}");
            }
            let key = std::fs::read_to_string(star.join(layout::STAR_TOKEN_KEY)).unwrap();
            assert_eq!(
                key,
                format!("{}\n", TokenKey::derive(&master, name).to_hex())
            );
            let ca = std::fs::read_to_string(star.join(layout::STAR_CA)).unwrap();
            assert_eq!(
                ca,
                std::fs::read_to_string(dir.join(layout::CA_CERT)).unwrap()
            );
            assert!(star.join(layout::STAR_CERT).is_file());
            let toml = std::fs::read_to_string(star.join(layout::STAR_TOML)).unwrap();
            assert!(toml.contains(&format!("name = \"{name}\"")), "{toml}");
        }
        let a = std::fs::read_to_string(dir.join("stars/star-a/star.toml")).unwrap();
        assert!(a.contains("listen = \"127.0.0.1:7401\""), "{a}");
        let b = std::fs::read_to_string(dir.join("stars/star-b/star.toml")).unwrap();
        assert!(b.contains("listen = \"0.0.0.0:7402\""), "{b}");

        // What was written can be read back as a grid, with working secrets.
        let grid = Grid::open(&dir).unwrap();
        assert_eq!(grid.star("star-b").unwrap().to_string(), "host-b:7402");
        assert_eq!(grid.ttl_secs(), 300);
        grid.ca().unwrap();
        grid.client_tls().unwrap();
        assert_eq!(grid.master_key().unwrap(), master);
        // No staging folder is left beside it.
        let leftovers: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1);
    }

    #[test]
    fn init_accepts_an_empty_folder_and_refuses_a_full_one() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("g");
        std::fs::create_dir(&dir).unwrap();
        create_grid(&dir, &specs(&["a=h:1"])).unwrap();
        assert!(dir.join(layout::GRID_TOML).is_file());

        let before = std::fs::read(dir.join(layout::CA_KEY)).unwrap();
        let err = create_grid(&dir, &specs(&["a=h:1"])).unwrap_err();
        assert!(matches!(err, InitError::NotEmpty(_)), "{err}");
        assert!(err.to_string().contains(&*dir.to_string_lossy()), "{err}");
        assert_eq!(std::fs::read(dir.join(layout::CA_KEY)).unwrap(), before);

        let file = tmp.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let err = create_grid(&file, &specs(&["a=h:1"])).unwrap_err();
        assert!(matches!(err, InitError::NotADirectory(_)), "{err}");
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 2);
    }

    #[test]
    fn duplicate_stars_are_refused_before_writing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("g");
        let err = create_grid(&dir, &specs(&["a=h:1", "b=h:2", "a=h:3"])).unwrap_err();
        assert!(
            matches!(err, InitError::DuplicateStar(ref n) if n == "a"),
            "{err}"
        );
        assert!(!dir.exists());
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }
}
