//! `orbitctl demo`: one verified replication between two stars on this machine, with no set-up.
//!
//! It makes a grid in memory, starts two stars in-process on loopback through the agent's public
//! handle ([`orbit_agent::Star`]; the only place the controller uses the agent), writes a file
//! of random bytes, replicates it with the same client code as `orbitctl replicate`, checks the
//! copy, and removes everything it made, also when interrupted with Ctrl-C.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context as _};
use orbit_agent::{Star, StarConfig};
use orbit_certs::{GridCa, IssuedCert, Role};
use orbit_wire::token::{MasterKey, TokenKey, KEY_LEN};
use rand::rngs::{OsRng, StdRng};
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

use crate::human;
use crate::layout::CONTROLLER_NAME;
use crate::replicate::{replicate_file, summary_line, ReplicateJob};
use crate::spec::parse_size;
use crate::token;
use orbit_wire::ReplicateFile;

/// The demo file's name, in the source star's root and at the target.
const FILE_NAME: &str = "orbit-demo.bin";
/// Bytes generated, hashed and written at a time.
const BLOCK: usize = 1 << 20;
/// How long the demo's token is valid: plenty for the read to start.
const TOKEN_TTL_SECS: u64 = 300;

/// Try Orbit on this machine: two stars, one verified replication, nothing to set up.
///
/// Makes a temporary grid, starts two stars (star-a and star-b) on 127.0.0.1, writes a file of
/// random bytes under star-a, has star-b pull it, checks the copy and prints the rate. Everything
/// is removed afterwards. It needs about twice --size of free space in the temporary folder
/// ($TMPDIR, or /tmp).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Size of the file to replicate: bytes, or with a unit such as 64MiB or 1GiB.
    #[arg(long, value_name = "BYTES", default_value = "256MiB", value_parser = parse_size)]
    pub size: u64,
}

/// Runs the demo, printing what happens, and removes its temporary folder before returning.
///
/// # Errors
///
/// Any step that failed, in words.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("orbit-demo-")
        .tempdir()
        .context("cannot make a temporary folder")?;
    let cancel = Arc::new(AtomicBool::new(false));
    let result = tokio::select! {
        result = demo(dir.path(), args.size, cancel.clone()) => result,
        _ = tokio::signal::ctrl_c() => {
            cancel.store(true, Ordering::Relaxed);
            Err(anyhow!("interrupted"))
        }
    };
    let shown = dir.path().display().to_string();
    match dir.close() {
        Ok(()) if result.is_ok() => {
            println!("Stopped both stars and removed {shown}.");
            println!();
            println!("To make a grid of your own machines:");
            println!("  orbitctl init GRID --star NAME=HOST:PORT [--star NAME=HOST:PORT ...]");
        }
        Ok(()) => {}
        Err(e) => eprintln!("orbitctl: could not remove {shown}: {e}"),
    }
    result
}

/// Everything the demo's grid holds, in memory.
struct DemoGrid {
    ca: GridCa,
    master: MasterKey,
    controller: IssuedCert,
}

impl DemoGrid {
    fn generate() -> anyhow::Result<DemoGrid> {
        let ca = GridCa::generate("demo")?;
        let controller = ca.issue(Role::Controller, CONTROLLER_NAME)?;
        let mut master = [0u8; KEY_LEN];
        OsRng.fill_bytes(&mut master);
        Ok(DemoGrid {
            ca,
            master: MasterKey::from_bytes(master),
            controller,
        })
    }

    fn star_config(&self, name: &str, root: &Path, state: &Path) -> anyhow::Result<StarConfig> {
        let issued = self.ca.issue(Role::Star, name)?;
        Ok(StarConfig {
            name: name.to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ca_pem: self.ca.cert_pem(),
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
            token_key: TokenKey::derive(&self.master, name),
            roots: vec![root.to_owned()],
            state_dir: Some(state.to_owned()),
            previous_token_key: None,
            crl_pem: None,
            read_only_roots: Vec::new(),
            limits: orbit_agent::Limits::default(),
            protected: Vec::new(),
        })
    }

    fn client_tls(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let tls = orbit_certs::client_config(
            &self.ca.cert_pem(),
            &self.controller.cert_pem,
            &self.controller.key_pem,
            orbit_wire::ALPN,
        )?;
        Ok(Arc::new(tls))
    }
}

async fn demo(dir: &Path, size: u64, cancel: Arc<AtomicBool>) -> anyhow::Result<()> {
    let src = dir.join("src");
    let dst = dir.join("dst");
    for d in [&src, &dst, &dir.join("state-a"), &dir.join("state-b")] {
        std::fs::create_dir(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    // Canonical paths: the stars are asked for exactly these.
    let src = src.canonicalize()?;
    let dst = dst.canonicalize()?;

    println!("Orbit demo: two stars on this machine, one verified replication.");
    let grid = DemoGrid::generate().context("cannot make the demo grid")?;
    println!(
        "  grid      a temporary grid in {}: a CA, certificates for star-a, star-b and orbitctl, token keys",
        dir.display()
    );
    let config_a = grid.star_config("star-a", &src, &dir.join("state-a"))?;
    let config_b = grid.star_config("star-b", &dst, &dir.join("state-b"))?;
    let star_a = Star::spawn(config_a)
        .await
        .context("could not start star-a")?;
    let star_b = match Star::spawn(config_b).await {
        Ok(star) => star,
        Err(e) => {
            star_a.shutdown().await;
            return Err(anyhow::Error::new(e).context("could not start star-b"));
        }
    };
    println!(
        "  star-a    listening on {}, serving {}",
        star_a.local_addr(),
        src.display()
    );
    println!(
        "  star-b    listening on {}, storing into {}",
        star_b.local_addr(),
        dst.display()
    );

    let result = replicate_between(&grid, &star_a, &star_b, &src, &dst, size, cancel).await;
    star_a.shutdown().await;
    star_b.shutdown().await;
    result
}

async fn replicate_between(
    grid: &DemoGrid,
    star_a: &Star,
    star_b: &Star,
    src: &Path,
    dst: &Path,
    size: u64,
    cancel: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let source_path = src.join(FILE_NAME);
    let target_path = dst.join(FILE_NAME);
    let started = Instant::now();
    let written = {
        let (path, cancel) = (source_path.clone(), cancel.clone());
        let seed = OsRng.next_u64();
        tokio::task::spawn_blocking(move || write_random_file(&path, size, seed, &cancel))
            .await?
            .with_context(|| format!("cannot write {}", source_path.display()))?
    };
    println!(
        "  file      {} of random bytes written to {} in {:.2} s, sha256 {}",
        human::bytes(size),
        source_path.display(),
        started.elapsed().as_secs_f64(),
        hex::encode(written)
    );

    let source_path = utf8(&source_path)?;
    let target_path = utf8(&target_path)?;
    let job = ReplicateJob {
        destination: "star-b".to_owned(),
        destination_addr: star_b.local_addr(),
        command: ReplicateFile {
            transfer_id: crate::replicate::new_transfer_id(),
            source: "star-a".to_owned(),
            source_addr: star_a.local_addr().to_string(),
            source_path: source_path.clone(),
            target_path: target_path.clone(),
            token: token::mint(
                &grid.master,
                "star-a",
                "star-b",
                &source_path,
                TOKEN_TTL_SECS,
            ),
            expect_sha256: Some(written),
            timeout_secs: 0,
        },
        also: Vec::new(),
        in_pieces: false,
    };
    println!("  replicate asking star-b to pull the file from star-a...");
    let done = replicate_file(grid.client_tls()?, &job).await?;
    println!();
    println!("{}", summary_line(&job, &done));
    println!();
    println!(
        "  wire      orbitctl sent {} and received {}; the file's bytes went from star-a to star-b directly",
        human::bytes(done.wire.sent),
        human::bytes(done.wire.received)
    );

    if done.sha256 != written || done.bytes != size {
        bail!(
            "star-b reported {} bytes with sha256 {}, but {} bytes with sha256 {} were written",
            done.bytes,
            hex::encode(done.sha256),
            size,
            hex::encode(written)
        );
    }
    let copy = PathBuf::from(&target_path);
    let on_disk = tokio::task::spawn_blocking(move || hash_file(&copy, &cancel))
        .await?
        .with_context(|| format!("cannot read the copy at {target_path}"))?;
    if on_disk != written {
        bail!(
            "the copy at {target_path} has sha256 {}, but the original has {}",
            hex::encode(on_disk),
            hex::encode(written)
        );
    }
    println!("  verified  the copy at {target_path} has the original's sha256");
    Ok(())
}

fn utf8(path: &Path) -> anyhow::Result<String> {
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("the temporary path {} is not UTF-8", path.display()))
}

fn cancelled() -> io::Error {
    io::Error::new(io::ErrorKind::Interrupted, "interrupted")
}

/// Writes `size` pseudo-random bytes from `seed` to a new file at `path`, 1 MiB at a time, and
/// returns their SHA-256. Stops early when `cancel` is set. Blocking: run it off the async workers.
fn write_random_file(
    path: &Path,
    size: u64,
    seed: u64,
    cancel: &AtomicBool,
) -> io::Result<[u8; 32]> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut file = File::create_new(path)?;
    let mut hasher = Sha256::new();
    let mut block = vec![0u8; BLOCK];
    let mut left = size;
    while left > 0 {
        if cancel.load(Ordering::Relaxed) {
            return Err(cancelled());
        }
        let n = usize::try_from(left).map_or(BLOCK, |left| left.min(BLOCK));
        rng.fill_bytes(&mut block[..n]);
        hasher.update(&block[..n]);
        file.write_all(&block[..n])?;
        left -= n as u64;
    }
    Ok(hasher.finalize().into())
}

/// The SHA-256 of the file at `path`. Blocking: run it off the async workers.
fn hash_file(path: &Path, cancel: &AtomicBool) -> io::Result<[u8; 32]> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut block = vec![0u8; BLOCK];
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(cancelled());
        }
        match file.read(&mut block)? {
            0 => return Ok(hasher.finalize().into()),
            n => hasher.update(&block[..n]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_written_file_hashes_as_reported() {
        let dir = tempfile::tempdir().unwrap();
        let no = AtomicBool::new(false);
        for size in [0u64, 1, BLOCK as u64 - 1, BLOCK as u64, BLOCK as u64 + 1] {
            let path = dir.path().join(format!("f{size}"));
            let digest = write_random_file(&path, size, 7, &no).unwrap();
            assert_eq!(std::fs::metadata(&path).unwrap().len(), size);
            assert_eq!(hash_file(&path, &no).unwrap(), digest);
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(<[u8; 32]>::from(Sha256::digest(&bytes)), digest);
        }
        let yes = AtomicBool::new(true);
        let err = write_random_file(&dir.path().join("c"), 10, 7, &yes).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Interrupted);
    }
}
