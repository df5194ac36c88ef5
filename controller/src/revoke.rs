//! `orbitctl revoke NAME`: revokes the certificate of a star or of the controller. It signs a
//! new certificate revocation list with the grid CA (every certificate revoked before, plus this
//! one), writes it as `GRID/crl.pem` and into every star's folder, and makes every `star.toml`
//! name it. Stars load it at start and on SIGHUP; from then on the certificate never completes a
//! handshake with them, and connections already open with it are closed.
//!
//! `--reissue` also gives NAME a fresh certificate and key in the grid, to deploy in place of
//! the revoked ones.

use std::path::{Path, PathBuf};

use orbit_certs::{GridCa, RevocationList, Role};

use crate::grid::{Grid, GridError};
use crate::layout::{self, ensure_setting, replace_file, Access, WriteError, CRL_FILE};

/// Revoke the certificate of a star or of the controller, for good.
///
/// Writes the grid's revocation list (crl.pem) into the grid and every star's folder. Deploy it
/// to every star and reload them (SIGHUP): the certificate then never completes a handshake
/// again, and connections open with it are closed. See docs/KEYS.md.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The star whose certificate to revoke, or `orbitctl` for the controller's.
    #[arg(value_name = "NAME")]
    pub name: String,

    /// Also issue NAME a new certificate and key in the grid, to deploy in place of the revoked
    /// ones.
    #[arg(long)]
    pub reissue: bool,

    /// Print one JSON object instead of the summary and next steps: {"type":"revoked",
    /// "ok":true,"name":..,"already":..,"crl_number":..,"revoked":..,"written":[..],
    /// "reissued":{"cert":..,"key":..} or null}.
    /// A failure prints {"type":"result","ok":false,"code":..,"retryable":..,"message":..}.
    #[arg(long)]
    pub json: bool,
}

#[derive(serde::Serialize)]
struct RevokedJson<'a> {
    ok: bool,
    name: &'a str,
    already: bool,
    crl_number: u64,
    revoked: usize,
    written: Vec<String>,
    reissued: Option<ReissuedJson>,
}

#[derive(serde::Serialize)]
struct ReissuedJson {
    cert: String,
    key: String,
}

/// Why a certificate could not be revoked.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    /// The grid could not be read.
    #[error(transparent)]
    Grid(#[from] GridError),
    /// Signing the list or issuing a certificate failed.
    #[error("{0}")]
    Cert(String),
    /// A file could not be written.
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// What a revocation wrote.
#[derive(Debug, Clone)]
pub struct Revoked {
    /// The new list.
    pub crl: RevocationList,
    /// Whether the certificate was already on the previous list.
    pub already: bool,
    /// Every copy of the list written, the grid's first.
    pub written: Vec<PathBuf>,
    /// The new certificate and key, with `--reissue`.
    pub reissued: Option<(PathBuf, PathBuf)>,
}

impl RevokeError {
    /// The wire code that fits, for `--json`.
    pub fn code(&self) -> orbit_wire::ErrorCode {
        match self {
            RevokeError::Grid(e) => e.code(),
            RevokeError::Cert(_) | RevokeError::Write(_) => orbit_wire::ErrorCode::Internal,
        }
    }
}

/// Runs `orbitctl revoke` and prints what to deploy (with `--json`, also what failed).
///
/// # Errors
///
/// [`RevokeError`].
pub fn run(grid_dir: &Path, args: Args) -> Result<(), RevokeError> {
    let done = match revoke(grid_dir, &args.name, args.reissue) {
        Ok(done) => done,
        Err(e) => {
            if args.json {
                println!("{}", crate::json::failure(e.code(), &e.to_string()));
            }
            return Err(e);
        }
    };
    if args.json {
        let json = RevokedJson {
            ok: true,
            name: &args.name,
            already: done.already,
            crl_number: done.crl.number(),
            revoked: done.crl.len(),
            written: done
                .written
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
            reissued: done.reissued.as_ref().map(|(cert, key)| ReissuedJson {
                cert: cert.display().to_string(),
                key: key.display().to_string(),
            }),
        };
        println!("{}", crate::json::line(crate::json::REVOKED, &json));
        return Ok(());
    }
    let what = if args.name == layout::CONTROLLER_NAME {
        "the controller's".to_owned()
    } else {
        format!("star {}'s", args.name)
    };
    if done.already {
        println!("{what} certificate was already revoked; the list is written again.");
    } else {
        println!("Revoked {what} certificate.");
    }
    println!(
        "Revocation list #{} ({} certificates revoked) written to:",
        done.crl.number(),
        done.crl.len()
    );
    for path in &done.written {
        println!("  {}", path.display());
    }
    println!();
    println!("Deploy each star's crl.pem (and star.toml, which now names it) to its host, then");
    println!("reload the star (SIGHUP: `systemctl reload orbit-star` or `kill -HUP PID`).");
    println!("Open connections with the revoked certificate are closed at once. Under the");
    println!("systemd unit, as root in the copy of the star's folder on its host:");
    for command in layout::install_commands(&[CRL_FILE, layout::STAR_TOML], false) {
        println!("  {command}");
    }
    println!("  systemctl reload orbit-star");
    if let Some((cert, key)) = &done.reissued {
        println!();
        println!(
            "New certificate and key for {}: {} and {}",
            args.name,
            cert.display(),
            key.display()
        );
        if args.name != layout::CONTROLLER_NAME {
            println!(
                "Deploy them with the list to {}'s host and restart it there: the",
                args.name
            );
            println!("unit hands the star its certificate and key when it starts, so a reload");
            println!("does not change them. As root in the copy of its folder:");
            for command in layout::install_commands(&[layout::STAR_CERT, layout::STAR_KEY], false) {
                println!("  {command}");
            }
            println!("  systemctl restart orbit-star");
        }
    }
    Ok(())
}

/// Revokes `name`'s current certificate in the grid at `grid_dir`; with `reissue`, issues it a
/// new one.
///
/// # Errors
///
/// [`RevokeError`]; an unknown name is [`GridError::UnknownStar`].
pub fn revoke(grid_dir: &Path, name: &str, reissue: bool) -> Result<Revoked, RevokeError> {
    let grid = Grid::open(grid_dir)?;
    let (cert_path, key_path, role) = if name == layout::CONTROLLER_NAME {
        (
            grid_dir.join(layout::CONTROLLER_CERT),
            grid_dir.join(layout::CONTROLLER_KEY),
            Role::Controller,
        )
    } else {
        grid.star(name)?;
        let dir = grid_dir.join(layout::STARS_DIR).join(name);
        (
            dir.join(layout::STAR_CERT),
            dir.join(layout::STAR_KEY),
            Role::Star,
        )
    };
    let cert_pem = std::fs::read_to_string(&cert_path).map_err(|error| GridError::Read {
        path: cert_path.clone(),
        error,
    })?;
    let ca = grid.ca()?;
    let previous = read_list(grid_dir, &ca)?;
    let cert_error = |e: orbit_certs::CertError| RevokeError::Cert(e.to_string());
    let already = previous.as_ref().is_some_and(|crl| {
        orbit_certs::load_certs(&cert_pem)
            .map(|certs| certs.iter().all(|c| crl.is_revoked(c)))
            .unwrap_or(false)
    });
    let (crl, written) = write_list(&grid, &ca, previous.as_ref(), &[&cert_pem])?;

    let reissued = if reissue {
        let issued = ca.issue(role, name).map_err(cert_error)?;
        replace_file(&key_path, issued.key_pem.as_bytes(), Access::Secret)?;
        replace_file(&cert_path, issued.cert_pem.as_bytes(), Access::Public)?;
        Some((cert_path, key_path))
    } else {
        None
    };
    Ok(Revoked {
        crl,
        already,
        written,
        reissued,
    })
}

/// Signs the list `previous` plus the certificates `revoke` (PEM) and writes it into the grid
/// and every star's folder, making every `star.toml` name it; returns the list and every copy
/// written, the grid's first. `orbitctl revoke` and `orbitctl renew --finish` both write their
/// lists here.
///
/// # Errors
///
/// [`RevokeError`]; a copy already written stays, and the next list replaces it.
pub(crate) fn write_list(
    grid: &Grid,
    ca: &GridCa,
    previous: Option<&RevocationList>,
    revoke: &[&str],
) -> Result<(RevocationList, Vec<PathBuf>), RevokeError> {
    let grid_dir = grid.dir();
    let crl = ca
        .revocation_list(previous, revoke)
        .map_err(|e| RevokeError::Cert(e.to_string()))?;
    // The grid's copy first: it is what the next revocation builds on.
    let mut written = vec![grid_dir.join(CRL_FILE)];
    replace_file(&written[0], crl.pem().as_bytes(), Access::Public)?;
    for star in grid.inventory().stars.keys() {
        let dir = grid_dir.join(layout::STARS_DIR).join(star);
        let path = dir.join(CRL_FILE);
        replace_file(&path, crl.pem().as_bytes(), Access::Public)?;
        ensure_setting(&dir.join(layout::STAR_TOML), "crl_file", CRL_FILE)?;
        written.push(path);
    }
    Ok((crl, written))
}

/// The grid's current revocation list, if it has one.
pub(crate) fn read_list(
    grid_dir: &Path,
    ca: &GridCa,
) -> Result<Option<RevocationList>, RevokeError> {
    let path = grid_dir.join(CRL_FILE);
    match std::fs::read_to_string(&path) {
        Ok(pem) => RevocationList::from_pem(&pem, &ca.cert_pem())
            .map(Some)
            .map_err(|e| {
                GridError::Invalid {
                    path,
                    message: e.to_string(),
                }
                .into()
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(GridError::Read { path, error }.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::create_grid;
    use crate::spec::StarSpec;

    fn first_cert(path: &Path) -> rustls::pki_types::CertificateDer<'static> {
        orbit_certs::load_certs(&std::fs::read_to_string(path).unwrap())
            .unwrap()
            .remove(0)
    }

    #[test]
    fn revoking_writes_a_growing_list_everywhere() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("g");
        let specs =
            ["star-a=127.0.0.1:7401", "star-b=127.0.0.1:7402"].map(|s| StarSpec::parse(s).unwrap());
        create_grid(&dir, &specs).unwrap();
        let b_cert = first_cert(&dir.join("stars/star-b/cert.pem"));

        let done = revoke(&dir, "star-b", false).unwrap();
        assert!(!done.already);
        assert_eq!((done.crl.number(), done.crl.len()), (1, 1));
        assert_eq!(done.written.len(), 3);
        for star in ["star-a", "star-b"] {
            let star_dir = dir.join("stars").join(star);
            let copy = std::fs::read_to_string(star_dir.join(CRL_FILE)).unwrap();
            assert_eq!(copy, done.crl.pem());
            let toml: toml::Table = std::fs::read_to_string(star_dir.join("star.toml"))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(toml["crl_file"].as_str(), Some(CRL_FILE));
        }
        assert!(done.crl.is_revoked(&b_cert));

        // The controller, reissued: the list grows and keeps star-b.
        let old_controller = first_cert(&dir.join(layout::CONTROLLER_CERT));
        let done = revoke(&dir, layout::CONTROLLER_NAME, true).unwrap();
        assert_eq!((done.crl.number(), done.crl.len()), (2, 2));
        assert!(done.crl.is_revoked(&b_cert));
        assert!(done.crl.is_revoked(&old_controller));
        let new_controller = first_cert(&dir.join(layout::CONTROLLER_CERT));
        assert!(!done.crl.is_revoked(&new_controller));
        Grid::open(&dir).unwrap().client_tls().unwrap();

        // Again: already revoked, nothing added.
        let done = revoke(&dir, "star-b", false).unwrap();
        assert!(done.already);
        assert_eq!(done.crl.len(), 2);

        let err = revoke(&dir, "star-x", false).unwrap_err();
        assert!(err.to_string().contains("unknown star"), "{err}");
    }
}
