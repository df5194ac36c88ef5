//! `orbitctl rotate-keys`: replaces the grid's master token key, and so every star's token key,
//! in two steps so that no replication fails half-way through.
//!
//! 1. `rotate-keys` draws a new master key and writes it beside the current one as
//!    `token-master.next.key`; `orbitctl` keeps signing with the current key. For every star it
//!    writes the new star key as `token.key` and the current one as `token.previous.key`, and
//!    makes `star.toml` name the previous key. The operator deploys those files and reloads each
//!    star (SIGHUP): a star then accepts tokens under both keys.
//! 2. `rotate-keys --finish` makes the new master key the current one: `orbitctl` signs with the
//!    new keys, which every star already holds. It also retires the previous key: every star's
//!    `token.previous.key` is deleted and its `star.toml` no longer names one, so once the
//!    operator deploys `star.toml` and reloads a star, that star refuses any token under the
//!    previous (perhaps stolen) key. Until then, tokens minted just before stay valid.
//!
//! Running step 1 again before step 2 writes the same files again (it is idempotent), so an
//! interrupted run is finished by running it once more; step 2 switches the master key last, so
//! it too is finished by running it again.

use std::path::{Path, PathBuf};

use orbit_wire::token::{MasterKey, TokenKey, KEY_LEN};
use rand::RngCore;

use crate::grid::{Grid, GridError};
use crate::layout::{
    self, ensure_setting, remove_setting, replace_file, sync_dir, Access, WriteError,
    NEXT_MASTER_KEY, STAR_PREVIOUS_TOKEN_KEY,
};

/// Rotate the grid's token keys: a new master key and new star keys, in two steps.
///
/// Step 1 (no flag) writes the new keys for every star and prints which files to deploy where;
/// orbitctl keeps signing with the current key, and stars accept both. Step 2 (--finish), once
/// every star runs with its new files, makes orbitctl sign with the new key and retires the
/// previous one: each star refuses it once given its new star.toml and reloaded. See
/// docs/KEYS.md.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Finish a rotation: sign with the new master key from now on, and retire the previous key
    /// from every star's files. Run it only once every star has its new token.key and
    /// token.previous.key and has been reloaded.
    #[arg(long)]
    pub finish: bool,

    /// Print one JSON object instead of the steps: {"type":"keys","ok":true,"step":"start",
    /// "next_master_key":..,"stars":[{"name":..,"addr":..,"folder":..,"key_id":..,
    /// "previous_key_id":..}]}, or with --finish {"type":"keys","ok":true,"step":"finish",
    /// "stars":[{"name":..,"key_id":..}]}; key ids as 8 hexadecimal digits, as stars log them.
    /// A failure prints {"type":"result","ok":false,"code":..,"retryable":..,"message":..}.
    #[arg(long)]
    pub json: bool,
}

#[derive(serde::Serialize)]
struct KeysJson {
    ok: bool,
    step: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_master_key: Option<String>,
    stars: Vec<StarKeysJson>,
}

#[derive(serde::Serialize)]
struct StarKeysJson {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    folder: Option<String>,
    key_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_key_id: Option<String>,
}

/// Why keys could not be rotated.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    /// The grid could not be read.
    #[error(transparent)]
    Grid(#[from] GridError),
    /// `--finish` without a rotation in progress.
    #[error("no rotation in progress ({} does not exist): run `orbitctl rotate-keys` first", .0.display())]
    NotStarted(PathBuf),
    /// A file could not be written.
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// One star's part of a rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StarKeys {
    /// The star.
    pub name: String,
    /// Where it listens, from the inventory.
    pub addr: String,
    /// Its folder in the grid.
    pub dir: PathBuf,
    /// The new key's id.
    pub key_id: u32,
    /// The previous (still current for orbitctl) key's id.
    pub previous_key_id: u32,
}

impl RotateError {
    /// The wire code that fits, for `--json`.
    pub fn code(&self) -> orbit_wire::ErrorCode {
        use orbit_wire::ErrorCode;
        match self {
            RotateError::Grid(e) => e.code(),
            RotateError::NotStarted(_) => ErrorCode::FailedPrecondition,
            RotateError::Write(_) => ErrorCode::Internal,
        }
    }
}

/// Runs `orbitctl rotate-keys [--finish]` and prints what to do next (with `--json`, also
/// what failed).
///
/// # Errors
///
/// [`RotateError`].
pub fn run(grid_dir: &Path, args: Args) -> Result<(), RotateError> {
    let json = args.json;
    let result = run_step(grid_dir, args);
    if let (Err(e), true) = (&result, json) {
        println!("{}", crate::json::failure(e.code(), &e.to_string()));
    }
    result
}

fn run_step(grid_dir: &Path, args: Args) -> Result<(), RotateError> {
    if args.finish {
        let ids = finish(grid_dir)?;
        if args.json {
            let json = KeysJson {
                ok: true,
                step: "finish",
                next_master_key: None,
                stars: ids
                    .into_iter()
                    .map(|(name, id)| StarKeysJson {
                        name,
                        addr: None,
                        folder: None,
                        key_id: format!("{id:08x}"),
                        previous_key_id: None,
                    })
                    .collect(),
            };
            println!("{}", crate::json::line(crate::json::KEYS, &json));
            return Ok(());
        }
        println!("orbitctl now signs tokens with the new master key.");
        for (name, id) in ids {
            println!("  {name:<20} token key id {id:08x}");
        }
        println!();
        println!("The previous keys are retired: deploy each star's star.toml (it no longer names");
        println!("token.previous.key; delete that file from the star's host or credentials) and");
        println!("reload the star. From then on it refuses every token under the previous key,");
        println!("including tokens minted before this step: reload once replications under them");
        println!("have finished (at most the token lifetime). Under the systemd unit, as root in");
        println!("the copy of the star's folder on its host:");
        for command in layout::install_commands(&[layout::STAR_TOML], false) {
            println!("  {command}");
        }
        println!("  rm -f {}/{STAR_PREVIOUS_TOKEN_KEY}", layout::HOST_DIR);
        println!("  systemctl reload orbit-star");
        return Ok(());
    }
    let stars = start(grid_dir)?;
    if args.json {
        let json = KeysJson {
            ok: true,
            step: "start",
            next_master_key: Some(grid_dir.join(NEXT_MASTER_KEY).display().to_string()),
            stars: stars
                .into_iter()
                .map(|star| StarKeysJson {
                    name: star.name,
                    addr: Some(star.addr),
                    folder: Some(star.dir.display().to_string()),
                    key_id: format!("{:08x}", star.key_id),
                    previous_key_id: Some(format!("{:08x}", star.previous_key_id)),
                })
                .collect(),
        };
        println!("{}", crate::json::line(crate::json::KEYS, &json));
        return Ok(());
    }
    println!(
        "Rotation started: the new master key is {} (orbitctl still signs with the current one).",
        grid_dir.join(NEXT_MASTER_KEY).display()
    );
    println!();
    println!("1. Deploy to every star, into its config folder, then reload it (SIGHUP:");
    println!(
        "   `systemctl reload orbit-star` or `kill -HUP PID`). Order among stars does not matter:"
    );
    for star in &stars {
        println!(
            "   {} ({}): {}/{{{}, {}, {}}}",
            star.name,
            star.addr,
            star.dir.display(),
            layout::STAR_TOKEN_KEY,
            STAR_PREVIOUS_TOKEN_KEY,
            layout::STAR_TOML
        );
        println!(
            "       its log then says: token key id {:08x}, previous {:08x}",
            star.key_id, star.previous_key_id
        );
    }
    println!("   Under the systemd unit, as root in the copy of the star's folder on its host:");
    let files = [
        layout::STAR_TOKEN_KEY,
        STAR_PREVIOUS_TOKEN_KEY,
        layout::STAR_TOML,
    ];
    for command in layout::install_commands(&files, false) {
        println!("     {command}");
    }
    println!("     systemctl reload orbit-star");
    println!("2. Once every star runs with its new keys:");
    println!(
        "   orbitctl --grid {} rotate-keys --finish",
        grid_dir.display()
    );
    Ok(())
}

/// Step 1: writes the next master key (once) and every star's new and previous token keys.
///
/// # Errors
///
/// [`RotateError`]; files already written stay, and running it again completes them.
pub fn start(grid_dir: &Path) -> Result<Vec<StarKeys>, RotateError> {
    let grid = Grid::open(grid_dir)?;
    let current = grid.master_key()?;
    let next_path = grid_dir.join(NEXT_MASTER_KEY);
    let next = if next_path.exists() {
        grid.read_master_key(NEXT_MASTER_KEY)?
    } else {
        let mut bytes = [0u8; KEY_LEN];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let next = MasterKey::from_bytes(bytes);
        layout::write_new(
            &next_path,
            format!("{}\n", next.to_hex()).as_bytes(),
            Access::Secret,
        )?;
        next
    };
    let mut stars = Vec::new();
    for (name, entry) in &grid.inventory().stars {
        let dir = grid_dir.join(layout::STARS_DIR).join(name);
        let old = TokenKey::derive(&current, name);
        let new = TokenKey::derive(&next, name);
        // The previous key first: a star reloaded between the two writes still holds its
        // current key as one of the two.
        replace_file(
            &dir.join(STAR_PREVIOUS_TOKEN_KEY),
            format!("{}\n", old.to_hex()).as_bytes(),
            Access::Secret,
        )?;
        replace_file(
            &dir.join(layout::STAR_TOKEN_KEY),
            format!("{}\n", new.to_hex()).as_bytes(),
            Access::Secret,
        )?;
        ensure_setting(
            &dir.join(layout::STAR_TOML),
            "previous_token_key_file",
            STAR_PREVIOUS_TOKEN_KEY,
        )?;
        stars.push(StarKeys {
            name: name.clone(),
            addr: entry.addr.to_string(),
            dir,
            key_id: new.key_id(),
            previous_key_id: old.key_id(),
        });
    }
    Ok(stars)
}

/// Step 2: the previous star keys are retired in the grid (each star's `token.previous.key`
/// deleted, its `star.toml` no longer naming it), then the next master key becomes the current
/// one. Returns every star's new key id.
///
/// # Errors
///
/// [`RotateError::NotStarted`] without a rotation in progress. The master key is switched
/// last, so a run interrupted before it is completed by running it again.
pub fn finish(grid_dir: &Path) -> Result<Vec<(String, u32)>, RotateError> {
    let grid = Grid::open(grid_dir)?;
    let next_path = grid_dir.join(NEXT_MASTER_KEY);
    if !next_path.exists() {
        return Err(RotateError::NotStarted(next_path));
    }
    let next = grid.read_master_key(NEXT_MASTER_KEY)?;
    for name in grid.inventory().stars.keys() {
        let dir = grid_dir.join(layout::STARS_DIR).join(name);
        remove_setting(&dir.join(layout::STAR_TOML), "previous_token_key_file")?;
        let previous = dir.join(STAR_PREVIOUS_TOKEN_KEY);
        match std::fs::remove_file(&previous) {
            Ok(()) => sync_dir(&dir)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(WriteError::new(&previous, e).into()),
        }
    }
    let current = grid_dir.join(layout::MASTER_KEY);
    std::fs::rename(&next_path, &current).map_err(|e| WriteError::new(&current, e))?;
    sync_dir(grid_dir)?;
    Ok(grid
        .inventory()
        .stars
        .keys()
        .map(|name| (name.clone(), TokenKey::derive(&next, name).key_id()))
        .collect())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::init::create_grid;
    use crate::spec::StarSpec;

    fn key_file(path: &Path) -> TokenKey {
        TokenKey::from_hex(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_rotation_writes_new_and_previous_keys_then_finishes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("g");
        create_grid(&dir, &[StarSpec::parse("star-a=127.0.0.1:7401").unwrap()]).unwrap();
        let grid = Grid::open(&dir).unwrap();
        let m0 = grid.master_key().unwrap();
        let star = dir.join("stars/star-a");

        let stars = start(&dir).unwrap();
        // orbitctl still signs with the current master key.
        assert_eq!(grid.master_key().unwrap(), m0);
        let m1 = grid.read_master_key(NEXT_MASTER_KEY).unwrap();
        assert_ne!(m1, m0);
        assert_eq!(mode(&dir.join(NEXT_MASTER_KEY)), 0o600);
        assert_eq!(
            key_file(&star.join(STAR_PREVIOUS_TOKEN_KEY)),
            TokenKey::derive(&m0, "star-a")
        );
        assert_eq!(
            key_file(&star.join("token.key")),
            TokenKey::derive(&m1, "star-a")
        );
        assert_eq!(mode(&star.join(STAR_PREVIOUS_TOKEN_KEY)), 0o600);
        assert_eq!(mode(&star.join("token.key")), 0o600);
        assert_eq!(stars[0].key_id, TokenKey::derive(&m1, "star-a").key_id());
        let toml: toml::Table = std::fs::read_to_string(star.join("star.toml"))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            toml["previous_token_key_file"].as_str(),
            Some(STAR_PREVIOUS_TOKEN_KEY)
        );

        // Running step 1 again changes nothing.
        assert_eq!(start(&dir).unwrap(), stars);
        let text = std::fs::read_to_string(star.join("star.toml")).unwrap();
        assert_eq!(text.matches("previous_token_key_file").count(), 1);

        finish(&dir).unwrap();
        assert_eq!(grid.master_key().unwrap(), m1);
        // The previous key is retired from the star's files.
        assert!(!star.join(STAR_PREVIOUS_TOKEN_KEY).exists());
        let text = std::fs::read_to_string(star.join("star.toml")).unwrap();
        assert!(!text.contains("previous_token_key_file"), "{text}");
        assert!(text.parse::<toml::Table>().is_ok(), "{text}");
        assert!(!dir.join(NEXT_MASTER_KEY).exists());
        let err = finish(&dir).unwrap_err();
        assert!(matches!(err, RotateError::NotStarted(_)), "{err}");
        // No temporary files left.
        let names: Vec<String> = std::fs::read_dir(&star)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.starts_with(".orbit-")), "{names:?}");
    }
}
