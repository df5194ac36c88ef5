//! `orbitctl renew`: gives stars (and the controller) new certificates before the old ones
//! expire, in two steps so that no connection fails while hosts are updated.
//!
//! 1. `renew STAR... | --all [--controller]` records each certificate it replaces as
//!    `GRID/renewing/NAME.pem`, then writes a new key and certificate (same CA, same name) into
//!    the star's folder. The old certificate stays valid: a star still running with it keeps
//!    working with every other star and with `orbitctl`. The operator installs the new
//!    `cert.pem` and `key.pem` on each host and restarts the star there (the systemd unit hands
//!    TLS files to the star as credentials when it starts, so a reload does not see them).
//!    The controller's certificate is used from the next `orbitctl` command on.
//! 2. `renew --finish` dials every star being renewed and reads, from the TLS handshake, the
//!    certificate it presents. Only for a star that presents its new certificate is the old
//!    one revoked (a new `crl.pem`, as `orbitctl revoke` writes it, for every star to reload);
//!    a star still presenting the old one, or that cannot be reached, is named and keeps its
//!    old certificate valid, so finishing early never cuts a star off. The controller's old
//!    certificate is revoked at once: orbitctl already uses the new one.
//!
//! Both steps are idempotent. Step 1 issues a certificate only while the star's `cert.pem` is
//! still the one recorded, so running it again (or after a crash between the key and the
//! certificate) never replaces a certificate already installed on a host. Step 2 deletes a
//! record only after the list that revokes it is written, so running it again completes it.
//!
//! It never revokes a certificate that a running star may still need, and never writes a file
//! but whole (see [`layout::replace_file`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use orbit_certs::{GridCa, Role};
use orbit_wire::ErrorCode;
use rustls::pki_types::CertificateDer;
use tokio::task::JoinSet;

use crate::connect::{self, StarConnection};
use crate::grid::{Grid, GridError};
use crate::layout::{self, replace_file, sync_dir, Access, WriteError, RENEWING_DIR};
use crate::revoke::{self, RevokeError};

/// Renew certificates before they expire: new ones first, the old ones revoked only once each
/// star runs with its new one.
///
/// Step 1 (STAR..., --all, --controller) writes a new certificate and key for each star named
/// into its folder in the grid and prints what to install on each host; the old certificates
/// stay valid meanwhile. Step 2 (--finish), once the stars have been restarted with their new
/// files, checks over the network that each presents its new certificate and only then
/// revokes the old one. See docs/KEYS.md.
#[derive(Debug, clap::Args)]
#[command(group(
    clap::ArgGroup::new("what")
        .required(true)
        .multiple(true)
        .args(["stars", "all", "controller", "finish"])
))]
pub struct Args {
    /// The stars whose certificates to renew.
    #[arg(value_name = "STAR", conflicts_with = "all")]
    pub stars: Vec<String>,

    /// Renew every star in grid.toml.
    #[arg(long)]
    pub all: bool,

    /// Also renew the controller's own certificate (controller.pem); orbitctl uses the new one
    /// from its next command on.
    #[arg(long)]
    pub controller: bool,

    /// Finish the renewals in progress: check that each renewed star now presents its new
    /// certificate, then revoke its old one. A star still presenting the old one is named and
    /// keeps it valid; run --finish again once it has been restarted.
    #[arg(long, conflicts_with_all = ["stars", "all", "controller"])]
    pub finish: bool,

    /// Print one JSON object instead of the steps: {"type":"renew","ok":true,"step":"start",
    /// "renewed":[{"name":..,"addr":..,"folder":..,"serial":..,"previous_serial":..,
    /// "not_after":..}]} (the controller as name "orbitctl"; serials in hexadecimal,
    /// not_after in Unix seconds), or with --finish {"type":"renew","ok":..,"step":"finish",
    /// "revoked":[names],"waiting":[{"name":..,"code":..,"retryable":..,"reason":..}],
    /// "crl_number":.. or null}, "ok" false while some star is waiting.
    /// A failure prints {"type":"result","ok":false,"code":..,"retryable":..,"message":..}.
    #[arg(long)]
    pub json: bool,
}

/// Why a renewal could not be started or finished.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    /// The grid could not be read, or names no such star.
    #[error(transparent)]
    Grid(#[from] GridError),
    /// Issuing a certificate failed.
    #[error("cannot issue a certificate for {name}: {message}")]
    Cert {
        /// Whose.
        name: String,
        /// Why.
        message: String,
    },
    /// A file could not be written.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// The revocation list could not be written.
    #[error(transparent)]
    Revoke(#[from] RevokeError),
    /// `--finish` without a renewal in progress.
    #[error("no renewal in progress ({} holds none): run `orbitctl renew STAR...` first", .0.display())]
    NotStarted(PathBuf),
    /// `--finish` left some renewals in progress; the report has been printed.
    #[error("renewal not finished for {}: an old certificate stays valid until its star presents the new one", names(waiting))]
    Waiting {
        /// Each star left waiting, and why.
        waiting: Vec<Waiting>,
    },
}

fn names(waiting: &[Waiting]) -> String {
    waiting
        .iter()
        .map(|w| w.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl RenewError {
    /// The wire code that fits, for `--json`.
    pub fn code(&self) -> ErrorCode {
        match self {
            RenewError::Grid(e) => e.code(),
            RenewError::Revoke(e) => e.code(),
            RenewError::Cert { .. } | RenewError::Write(_) => ErrorCode::Internal,
            RenewError::NotStarted(_) => ErrorCode::FailedPrecondition,
            // Temporary only if every star waits for the network alone.
            RenewError::Waiting { waiting } => {
                if waiting.iter().all(|w| crate::exit::retryable(w.code)) {
                    ErrorCode::Unavailable
                } else {
                    ErrorCode::FailedPrecondition
                }
            }
        }
    }

    /// The exit code (see [`crate::exit`]): 4 when every star left waiting was only
    /// unreachable, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        crate::exit::of_code(self.code())
    }
}

/// One certificate renewed by step 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewed {
    /// The star, or [`layout::CONTROLLER_NAME`].
    pub name: String,
    /// Where the star listens (empty for the controller).
    pub addr: String,
    /// The folder holding the new files.
    pub dir: PathBuf,
    /// The new certificate's serial.
    pub serial: Vec<u8>,
    /// The serial of the certificate it replaces.
    pub previous_serial: Vec<u8>,
    /// When the new certificate expires.
    pub not_after: SystemTime,
}

/// A renewed star that `--finish` could not finish.
#[derive(Debug, Clone)]
pub struct Waiting {
    /// The star.
    pub name: String,
    /// Why: the wire code of the failure (`FailedPrecondition` for a star presenting its old
    /// certificate).
    pub code: ErrorCode,
    /// Why, for a person.
    pub reason: String,
}

/// What step 2 did.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Whose old certificates are now revoked.
    pub revoked: Vec<String>,
    /// The stars still renewing.
    pub waiting: Vec<Waiting>,
    /// The revocation list written, if any was.
    pub crl: Option<(u64, Vec<PathBuf>)>,
}

#[derive(serde::Serialize)]
struct StartJson {
    ok: bool,
    step: &'static str,
    renewed: Vec<RenewedJson>,
}

#[derive(serde::Serialize)]
struct RenewedJson {
    name: String,
    addr: String,
    folder: String,
    serial: String,
    previous_serial: String,
    not_after: u64,
}

#[derive(serde::Serialize)]
struct FinishJson {
    ok: bool,
    step: &'static str,
    revoked: Vec<String>,
    waiting: Vec<WaitingJson>,
    crl_number: Option<u64>,
}

#[derive(serde::Serialize)]
struct WaitingJson {
    name: String,
    code: &'static str,
    retryable: bool,
    reason: String,
}

/// Runs `orbitctl renew` and prints what to do next (with `--json`, also what failed).
///
/// # Errors
///
/// [`RenewError`]; [`RenewError::Waiting`] after printing the report when `--finish` left a
/// star waiting.
pub async fn run(grid_dir: &Path, args: Args) -> Result<(), RenewError> {
    let json = args.json;
    let result = run_step(grid_dir, args).await;
    if let (Err(e), true) = (&result, json) {
        // A finish that left stars waiting has printed its report already.
        if !matches!(e, RenewError::Waiting { .. }) {
            println!("{}", crate::json::failure(e.code(), &e.to_string()));
        }
    }
    result
}

async fn run_step(grid_dir: &Path, args: Args) -> Result<(), RenewError> {
    if args.finish {
        let done = finish(grid_dir).await?;
        print_finish(grid_dir, &done, args.json);
        if done.waiting.is_empty() {
            return Ok(());
        }
        return Err(RenewError::Waiting {
            waiting: done.waiting,
        });
    }
    let grid = Grid::open(grid_dir)?;
    let mut names = if args.all {
        grid.inventory().stars.keys().cloned().collect()
    } else {
        args.stars
    };
    names.sort();
    names.dedup();
    if args.controller {
        names.push(layout::CONTROLLER_NAME.to_owned());
    }
    let renewed = start(grid_dir, &names)?;
    print_start(grid_dir, &renewed, args.json);
    Ok(())
}

fn hex_serial(serial: &[u8]) -> String {
    hex::encode(serial)
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn print_start(grid_dir: &Path, renewed: &[Renewed], json: bool) {
    if json {
        let json = StartJson {
            ok: true,
            step: "start",
            renewed: renewed
                .iter()
                .map(|r| RenewedJson {
                    name: r.name.clone(),
                    addr: r.addr.clone(),
                    folder: r.dir.display().to_string(),
                    serial: hex_serial(&r.serial),
                    previous_serial: hex_serial(&r.previous_serial),
                    not_after: unix(r.not_after),
                })
                .collect(),
        };
        println!("{}", crate::json::line(crate::json::RENEW, &json));
        return;
    }
    println!("Renewal started: new certificates are in the grid; the old ones stay valid until");
    println!("`renew --finish` has seen each star present its new one.");
    let (controller, stars): (Vec<&Renewed>, Vec<&Renewed>) = renewed
        .iter()
        .partition(|r| r.name == layout::CONTROLLER_NAME);
    if let Some(c) = controller.first() {
        println!();
        println!("orbitctl's own certificate is renewed, and used from now on:");
        println!(
            "   serial {}, valid until {}",
            hex_serial(&c.serial),
            orbit_certs::expiry_text(c.not_after)
        );
    }
    if !stars.is_empty() {
        println!();
        println!("1. Install each star's new certificate and key on its host and restart the star");
        println!("   there (the unit hands the star its certificate when it starts; a reload does");
        println!("   not change it). Order among stars does not matter:");
        for star in &stars {
            println!(
                "   {} ({}): {}/{{{}, {}}}",
                star.name,
                star.addr,
                star.dir.display(),
                layout::STAR_CERT,
                layout::STAR_KEY
            );
            println!(
                "       serial {} (replaces {}), valid until {}",
                hex_serial(&star.serial),
                hex_serial(&star.previous_serial),
                orbit_certs::expiry_text(star.not_after)
            );
        }
        println!(
            "   Under the systemd unit, as root in the copy of the star's folder on its host:"
        );
        for command in layout::install_commands(&[layout::STAR_CERT, layout::STAR_KEY], false) {
            println!("     {command}");
        }
        println!("     systemctl restart orbit-star");
    }
    println!(
        "{}. Once every renewed star runs with its new certificate:",
        if stars.is_empty() { 1 } else { 2 }
    );
    println!("   orbitctl --grid {} renew --finish", grid_dir.display());
    println!(
        "   It checks that each star presents its new certificate, then revokes the old ones."
    );
}

fn print_finish(grid_dir: &Path, done: &Finished, json: bool) {
    if json {
        let json = FinishJson {
            ok: done.waiting.is_empty(),
            step: "finish",
            revoked: done.revoked.clone(),
            waiting: done
                .waiting
                .iter()
                .map(|w| WaitingJson {
                    name: w.name.clone(),
                    code: w.code.name(),
                    retryable: crate::exit::retryable(w.code),
                    reason: w.reason.clone(),
                })
                .collect(),
            crl_number: done.crl.as_ref().map(|(n, _)| *n),
        };
        println!("{}", crate::json::line(crate::json::RENEW, &json));
        return;
    }
    for name in &done.revoked {
        if name == layout::CONTROLLER_NAME {
            println!("{name}: the controller's old certificate is revoked.");
        } else {
            println!("{name}: presents its new certificate; the old one is revoked.");
        }
    }
    for w in &done.waiting {
        println!(
            "{}: not finished, its old certificate stays valid: {}",
            w.name, w.reason
        );
    }
    if let Some((number, written)) = &done.crl {
        println!();
        println!("Revocation list #{number} written to:");
        for path in written {
            println!("  {}", path.display());
        }
        println!("Deploy each star's crl.pem (and star.toml, which names it) to its host and");
        println!("reload the star. Under the systemd unit, as root in the copy of the star's");
        println!("folder on its host:");
        for command in layout::install_commands(&[layout::CRL_FILE, layout::STAR_TOML], false) {
            println!("  {command}");
        }
        println!("  systemctl reload orbit-star");
    }
    if !done.waiting.is_empty() {
        println!();
        println!("Install and restart the stars named above, then run again:");
        println!("  orbitctl --grid {} renew --finish", grid_dir.display());
    }
}

/// Where `name`'s certificate and key live in the grid, and its role.
fn files_of(grid: &Grid, name: &str) -> Result<(PathBuf, PathBuf, PathBuf, Role), GridError> {
    let grid_dir = grid.dir();
    if name == layout::CONTROLLER_NAME {
        return Ok((
            grid_dir.to_owned(),
            grid_dir.join(layout::CONTROLLER_CERT),
            grid_dir.join(layout::CONTROLLER_KEY),
            Role::Controller,
        ));
    }
    grid.star(name)?;
    let dir = grid_dir.join(layout::STARS_DIR).join(name);
    let cert = dir.join(layout::STAR_CERT);
    let key = dir.join(layout::STAR_KEY);
    Ok((dir, cert, key, Role::Star))
}

fn read_text(path: &Path) -> Result<String, GridError> {
    std::fs::read_to_string(path).map_err(|error| GridError::Read {
        path: path.to_owned(),
        error,
    })
}

/// The first certificate of the PEM file at `path`.
fn first_cert(path: &Path) -> Result<CertificateDer<'static>, GridError> {
    let invalid = |message: String| GridError::Invalid {
        path: path.to_owned(),
        message,
    };
    orbit_certs::load_certs(&read_text(path)?)
        .map_err(|e| invalid(e.to_string()))?
        .into_iter()
        .next()
        .ok_or_else(|| invalid("holds no certificate".into()))
}

fn serial(path: &Path, cert: &CertificateDer<'_>) -> Result<Vec<u8>, GridError> {
    orbit_certs::serial_of(cert).map_err(|e| GridError::Invalid {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// Step 1: for each of `names` (stars, or [`layout::CONTROLLER_NAME`]), records the current
/// certificate in `GRID/renewing/` unless a renewal is already in progress, and writes a new
/// key and certificate while the current one is still the recorded one.
///
/// # Errors
///
/// [`RenewError`]; an unknown name is [`GridError::UnknownStar`] and nothing is written for
/// it. What was written stays, and running it again completes it.
pub fn start(grid_dir: &Path, names: &[String]) -> Result<Vec<Renewed>, RenewError> {
    let grid = Grid::open(grid_dir)?;
    // Check every name before writing anything.
    let files = names
        .iter()
        .map(|name| files_of(&grid, name))
        .collect::<Result<Vec<_>, _>>()?;
    let ca = grid.ca()?;
    let renewing = grid_dir.join(RENEWING_DIR);
    match std::fs::create_dir(&renewing) {
        Ok(()) => sync_dir(grid_dir)?,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(WriteError::new(&renewing, e).into()),
    }
    let mut renewed = Vec::new();
    for (name, (dir, cert_path, key_path, role)) in names.iter().zip(files) {
        let record = renewing.join(format!("{name}.pem"));
        if !record.exists() {
            replace_file(&record, read_text(&cert_path)?.as_bytes(), Access::Public)?;
        }
        let old = first_cert(&record)?;
        if first_cert(&cert_path)? == old {
            renew_one(&ca, role, name, &cert_path, &key_path)?;
        }
        let new = first_cert(&cert_path)?;
        let not_after = orbit_certs::not_after_of(&new).map_err(|e| GridError::Invalid {
            path: cert_path.clone(),
            message: e.to_string(),
        })?;
        renewed.push(Renewed {
            name: name.clone(),
            addr: grid.star(name).map(ToString::to_string).unwrap_or_default(),
            dir,
            serial: serial(&cert_path, &new)?,
            previous_serial: serial(&record, &old)?,
            not_after,
        });
    }
    Ok(renewed)
}

/// Writes a new key, then a new certificate: until the certificate is written, the folder
/// still holds the old one, which step 1 then renews again.
fn renew_one(
    ca: &GridCa,
    role: Role,
    name: &str,
    cert_path: &Path,
    key_path: &Path,
) -> Result<(), RenewError> {
    let issued = ca.issue(role, name).map_err(|e| RenewError::Cert {
        name: name.to_owned(),
        message: e.to_string(),
    })?;
    replace_file(key_path, issued.key_pem.as_bytes(), Access::Secret)?;
    replace_file(cert_path, issued.cert_pem.as_bytes(), Access::Public)?;
    Ok(())
}

/// The names with a renewal in progress, sorted: the `NAME.pem` files of `GRID/renewing/`.
fn in_progress(renewing: &Path) -> Result<Vec<String>, GridError> {
    let entries = match std::fs::read_dir(renewing) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => {
            return Err(GridError::Read {
                path: renewing.to_owned(),
                error,
            })
        }
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|error| GridError::Read {
            path: renewing.to_owned(),
            error,
        })?;
        let file = entry.file_name();
        let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".pem")) else {
            continue;
        };
        if orbit_certs::validate_name(name).is_ok() {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// What a star presents, compared with its old and new certificates.
async fn check_star(
    tls: Arc<rustls::ClientConfig>,
    name: String,
    addr: crate::spec::StarAddr,
    old: CertificateDer<'static>,
    new: CertificateDer<'static>,
) -> Result<(), Waiting> {
    let waiting = |code: ErrorCode, reason: String| Waiting {
        name: name.clone(),
        code,
        reason,
    };
    let connected = async {
        let addr = connect::resolve(&name, &addr).await?;
        StarConnection::connect(tls, &name, addr).await
    };
    let conn = match connected.await {
        Ok(conn) => conn,
        Err(e) => return Err(waiting(e.code(), e.to_string())),
    };
    let presented = conn.peer_certificate();
    conn.close().await;
    let serial_text = |c: &CertificateDer<'_>| {
        orbit_certs::serial_of(c).map_or_else(|_| "?".to_owned(), |s| hex_serial(&s))
    };
    match presented {
        Some(cert) if cert == new => Ok(()),
        Some(cert) if cert == old => Err(waiting(
            ErrorCode::FailedPrecondition,
            format!(
                "still presents its old certificate (serial {}): install the new one and restart it",
                serial_text(&cert)
            ),
        )),
        Some(cert) => Err(waiting(
            ErrorCode::FailedPrecondition,
            format!(
                "presents a certificate that is neither its old nor its new one (serial {}, new {})",
                serial_text(&cert),
                serial_text(&new)
            ),
        )),
        None => Err(waiting(
            ErrorCode::Internal,
            "presented no certificate".to_owned(),
        )),
    }
}

/// Step 2: checks every renewed star, revokes the old certificates of those that present
/// their new one (and the controller's), and ends their renewal.
///
/// # Errors
///
/// [`RenewError::NotStarted`] without a renewal in progress; a star left waiting is not an
/// error here but in [`Finished::waiting`].
pub async fn finish(grid_dir: &Path) -> Result<Finished, RenewError> {
    let grid = Grid::open(grid_dir)?;
    let renewing = grid_dir.join(RENEWING_DIR);
    let names = in_progress(&renewing)?;
    if names.is_empty() {
        return Err(RenewError::NotStarted(renewing));
    }
    let tls = grid.client_tls()?;
    let mut ready = Vec::new();
    let mut waiting = Vec::new();
    let mut checks = JoinSet::new();
    for name in names {
        let record = renewing.join(format!("{name}.pem"));
        if name == layout::CONTROLLER_NAME {
            ready.push(name);
            continue;
        }
        let addr = match grid.star(&name) {
            Ok(addr) => addr.clone(),
            // A star removed from the inventory since: nothing can present its certificate.
            Err(_) => {
                ready.push(name);
                continue;
            }
        };
        let (_, cert_path, _, _) = files_of(&grid, &name)?;
        let old = first_cert(&record)?;
        let new = first_cert(&cert_path)?;
        let tls = tls.clone();
        checks.spawn(async move {
            let checked = check_star(tls, name.clone(), addr, old, new).await;
            (name, checked)
        });
    }
    while let Some(joined) = checks.join_next().await {
        match joined {
            Ok((name, Ok(()))) => ready.push(name),
            Ok((_, Err(w))) => waiting.push(w),
            // A check only ends by returning; a panic is a bug worth seeing.
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    ready.sort();
    waiting.sort_by(|a, b| a.name.cmp(&b.name));

    let mut crl = None;
    if !ready.is_empty() {
        let pems = ready
            .iter()
            .map(|name| read_text(&renewing.join(format!("{name}.pem"))))
            .collect::<Result<Vec<_>, _>>()?;
        let pems: Vec<&str> = pems.iter().map(String::as_str).collect();
        let ca = grid.ca()?;
        let previous = revoke::read_list(grid_dir, &ca)?;
        let (list, written) = revoke::write_list(&grid, &ca, previous.as_ref(), &pems)?;
        // Only now that the list revoking them is on disk.
        for name in &ready {
            let record = renewing.join(format!("{name}.pem"));
            std::fs::remove_file(&record).map_err(|e| WriteError::new(&record, e))?;
        }
        sync_dir(&renewing)?;
        crl = Some((list.number(), written));
    }
    Ok(Finished {
        revoked: ready,
        waiting,
        crl,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::create_grid;
    use crate::spec::StarSpec;

    #[test]
    fn step_one_renews_once_and_keeps_the_old_certificate() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("g");
        let specs =
            ["star-a=127.0.0.1:7401", "star-b=127.0.0.1:7402"].map(|s| StarSpec::parse(s).unwrap());
        create_grid(&dir, &specs).unwrap();
        let a_cert = dir.join("stars/star-a/cert.pem");
        let b_cert = dir.join("stars/star-b/cert.pem");
        let (a0, b0) = (first_cert(&a_cert).unwrap(), first_cert(&b_cert).unwrap());

        let names = ["star-a".to_owned(), layout::CONTROLLER_NAME.to_owned()];
        let renewed = start(&dir, &names).unwrap();
        let a1 = first_cert(&a_cert).unwrap();
        assert_ne!(a1, a0);
        assert_eq!(first_cert(&b_cert).unwrap(), b0, "star-b was not named");
        assert_eq!(first_cert(&dir.join("renewing/star-a.pem")).unwrap(), a0);
        assert_eq!(
            renewed[0].previous_serial,
            orbit_certs::serial_of(&a0).unwrap()
        );
        assert_eq!(renewed[0].serial, orbit_certs::serial_of(&a1).unwrap());
        // The new key is the new certificate's, and secret.
        let key = std::fs::read_to_string(dir.join("stars/star-a/key.pem")).unwrap();
        let ca = std::fs::read_to_string(dir.join("ca.pem")).unwrap();
        let issued = orbit_certs::IssuedCert {
            cert_pem: std::fs::read_to_string(&a_cert).unwrap(),
            key_pem: key,
        };
        orbit_certs::server_config(&ca, &issued.cert_pem, &issued.key_pem, b"orbit").unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("stars/star-a/key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // The controller uses its new certificate at once.
        Grid::open(&dir).unwrap().client_tls().unwrap();

        // Again: nothing changes.
        assert_eq!(start(&dir, &names).unwrap(), renewed);
        assert_eq!(first_cert(&a_cert).unwrap(), a1);

        // An unknown star: nothing written for anyone.
        let err = start(&dir, &["star-b".into(), "star-x".into()]).unwrap_err();
        assert!(err.to_string().contains("unknown star"), "{err}");
        assert_eq!(first_cert(&b_cert).unwrap(), b0);
        assert!(!dir.join("renewing/star-b.pem").exists());
    }

    #[tokio::test]
    async fn finish_without_a_renewal_says_so() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("g");
        create_grid(&dir, &[StarSpec::parse("star-a=127.0.0.1:7401").unwrap()]).unwrap();
        let err = finish(&dir).await.unwrap_err();
        assert!(matches!(err, RenewError::NotStarted(_)), "{err}");
        assert!(err.to_string().contains("no renewal in progress"), "{err}");
    }

    #[tokio::test]
    async fn finish_revokes_the_controllers_old_certificate_without_a_star() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("g");
        create_grid(&dir, &[StarSpec::parse("star-a=127.0.0.1:7401").unwrap()]).unwrap();
        let old = first_cert(&dir.join(layout::CONTROLLER_CERT)).unwrap();
        start(&dir, &[layout::CONTROLLER_NAME.to_owned()]).unwrap();
        let done = finish(&dir).await.unwrap();
        assert_eq!(done.revoked, [layout::CONTROLLER_NAME]);
        assert!(done.waiting.is_empty());
        let ca = std::fs::read_to_string(dir.join("ca.pem")).unwrap();
        let crl = std::fs::read_to_string(dir.join("crl.pem")).unwrap();
        let list = orbit_certs::RevocationList::from_pem(&crl, &ca).unwrap();
        assert!(list.is_revoked(&old));
        let new = first_cert(&dir.join(layout::CONTROLLER_CERT)).unwrap();
        assert!(!list.is_revoked(&new));
        assert!(!dir.join("renewing/orbitctl.pem").exists());
    }
}
