//! Key rotation and revocation under the shipped systemd unit, end to end, as an operator runs
//! them: the files laid out by the `install` commands `orbitctl` prints (owners and modes as the
//! unit needs them), the TLS files handed over as `LoadCredential=` does, the unit's own
//! `ExecStart=` run as an unprivileged user standing in for `orbit`, and its own `ExecReload=`
//! after `orbitctl rotate-keys`, `rotate-keys --finish` and `revoke`, and a restart after
//! `orbitctl renew`, whose new certificate is a credential. No systemd runs (see
//! `orbit_tests::unit`). Needs root; elsewhere it says so and passes, under CI it fails.

use std::path::{Path, PathBuf};
use std::time::Duration;

use orbit_tests::ops::{self, init_grid_printing, mint, ok, raw_read};
use orbit_tests::process::{orbitctl, StarProcess};
use orbit_tests::unit::{Unit, UnitHost};
use orbit_tests::*;
use orbit_wire::ErrorCode;

const RELOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// `orbitctl replicate star-a:SRC star-b:DST`, which must succeed with the bytes in place.
fn replicate(grid: &Path, src: &Path, dst: &Path) {
    ok(ops::replicate(grid, src, dst));
    assert_eq!(sha256_file(dst), sha256_file(src));
}

/// The unit's reload, then the star's report of the keys it now holds.
fn reload(host: &UnitHost, unit: &Unit, star: &StarProcess) -> String {
    host.reload(unit, star);
    // "token key id NEW, previous OLD; ...", not a refusal that names a key id.
    let keys = star.wait_for_line(", previous ", RELOAD_TIMEOUT);
    star.wait_for_line("reloaded:", RELOAD_TIMEOUT);
    keys
}

/// A grid of star-a and star-b in `dir`; star-a's folder installed on `host` as `orbitctl init`
/// printed, its layout checked, and its credentials loaded as the unit's start does. Returns
/// the grid and star-a's folder in it.
fn install_star_a(host: &UnitHost, unit: &Unit, dir: &Path) -> (PathBuf, PathBuf) {
    let (grid, init) = init_grid_printing(dir, &["star-a", "star-b"]);
    let star_a = grid.join("stars/star-a");

    // The operator sets the roots in the grid's star.toml, then installs the folder as printed.
    let toml = star_a.join("star.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    let allow = format!("allow = [\"{}\"]\n", wire(&host.store));
    std::fs::write(&toml, text + &allow).unwrap();
    let ran = host.run_printed(&init.stdout, &star_a);
    assert!(ran.len() >= 4, "{ran:?}\n{}", init.stdout);
    // The layout the unit expects: the token key shared with the star's group, read only; the
    // TLS key root's alone, which the star's user cannot read (systemd hands it over).
    let (root, orbit) = (0, host.gid);
    let etc = std::fs::metadata(&host.etc).unwrap();
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!(
        (etc.uid(), etc.gid(), etc.mode() & 0o7777),
        (root, orbit, 0o750)
    );
    assert_eq!(host.access("token.key"), (root, orbit, 0o640));
    assert_eq!(host.access("key.pem"), (root, root, 0o600));
    assert_eq!(host.access("star.toml"), (root, root, 0o644));
    assert!(host.user_can_read(&host.etc.join("token.key")));
    assert!(!host.user_can_read(&host.etc.join("key.pem")));
    host.load_credentials(unit);
    (grid, star_a)
}

/// star-a under the unit (installed by [`install_star_a`]) and star-b as a plain process
/// with its root `dst`, after one replication of `file` from star-a's store to `dst/1.bin`.
struct Stage {
    host: UnitHost,
    unit: Unit,
    grid: PathBuf,
    star_a: PathBuf,
    a: StarProcess,
    b: StarProcess,
    dst: PathBuf,
    file: PathBuf,
}

impl Stage {
    /// `None` (after saying so, or failing under CI) when this is not root.
    fn new(dir: &Path) -> Option<Stage> {
        let host = match UnitHost::new(&dir.join("host")) {
            Ok(host) => host,
            Err(why) => {
                skip_or_fail("root, to run the star as another user", why);
                return None;
            }
        };
        let unit = Unit::load();
        let (grid, star_a) = install_star_a(&host, &unit, dir);
        let a = host.start(&unit);
        let dst = dir.join("dst");
        std::fs::create_dir(&dst).unwrap();
        let b = StarProcess::start(&[
            "--config",
            &wire(&grid.join("stars/star-b/star.toml")),
            "--allow",
            &wire(&dst),
        ]);
        let file = host.store.join("f.bin");
        random_file(&file, 100_000);
        replicate(&grid, &file, &dst.join("1.bin"));
        Some(Stage {
            host,
            unit,
            grid,
            star_a,
            a,
            b,
            dst,
            file,
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_and_revocation_work_with_the_units_layout_and_reload() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(Stage {
        host,
        unit,
        grid,
        star_a,
        a,
        b,
        dst,
        file,
    }) = Stage::new(tmp.path())
    else {
        return;
    };
    let g = wire(&grid);
    let (root, orbit) = (0, host.gid);
    // A token under the key about to be rotated out (think: a stolen master key).
    let old_token = mint(&grid, &file);

    // Step 1: new keys deployed as printed, then `systemctl reload`.
    let out = ok(orbitctl(&["--grid", &g, "rotate-keys"]));
    let expected = out
        .stdout
        .lines()
        .find_map(|l| l.split_once("its log then says: ").map(|(_, ids)| ids))
        .expect("the key ids star-a logs")
        .to_owned();
    let ran = host.run_printed(&out.stdout, &star_a);
    assert!(
        ran.iter().any(|c| c.contains("token.previous.key")),
        "{ran:?}"
    );
    assert_eq!(host.access("token.previous.key"), (root, orbit, 0o640));
    let keys = reload(&host, &unit, &a);
    assert!(keys.contains(&expected), "{keys} (expected {expected})");
    // Both keys are accepted: the old token, and orbitctl still signing with the old key.
    let outcome = raw_read(&grid, a.addr, &wire(&file), &old_token)
        .await
        .unwrap();
    assert_eq!(outcome.bytes.len(), 100_000, "{:?}", outcome.error);
    replicate(&grid, &file, &dst.join("2.bin"));

    // Step 2: orbitctl signs with the new key; the previous one retired as printed, reload.
    let out = ok(orbitctl(&["--grid", &g, "rotate-keys", "--finish"]));
    host.run_printed(&out.stdout, &star_a);
    assert!(!host.etc.join("token.previous.key").exists());
    let keys = reload(&host, &unit, &a);
    assert!(keys.contains("previous none"), "{keys}");
    replicate(&grid, &file, &dst.join("3.bin"));
    let outcome = raw_read(&grid, a.addr, &wire(&file), &old_token)
        .await
        .unwrap();
    let error = assert_refused(&outcome, ErrorCode::PermissionDenied);
    assert!(error.message.contains("retired or unknown"), "{error}");
    assert!(outcome.bytes.is_empty());

    // Revoking star-b: the list deployed as printed, reload; star-b's certificate is refused.
    let new_token = mint(&grid, &file);
    let outcome = raw_read(&grid, a.addr, &wire(&file), &new_token)
        .await
        .unwrap();
    assert_eq!(outcome.bytes.len(), 100_000, "{:?}", outcome.error);
    let out = ok(orbitctl(&["--grid", &g, "revoke", "star-b"]));
    host.run_printed(&out.stdout, &star_a);
    assert_eq!(host.access("crl.pem"), (root, root, 0o644));
    let keys = reload(&host, &unit, &a);
    assert!(keys.contains("revocation list #1 revoking 1"), "{keys}");
    let refused = raw_read(&grid, a.addr, &wire(&file), &new_token).await;
    assert!(
        refused.is_err(),
        "a revoked certificate was served: {refused:?}"
    );

    assert!(a.terminate().success());
    assert!(b.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_works_with_the_units_layout_and_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(Stage {
        host,
        unit,
        grid,
        star_a,
        mut a,
        b,
        dst,
        file,
    }) = Stage::new(tmp.path())
    else {
        return;
    };
    let g = wire(&grid);

    // Step 1: the new certificate and key installed as printed; the unit's restart copies the
    // credentials again.
    let out = ok(orbitctl(&["--grid", &g, "renew", "--all"]));
    let ran = host.run_printed(&out.stdout, &star_a);
    assert!(
        ran.iter().any(|c| c.contains("cert.pem key.pem")),
        "{ran:?}"
    );
    assert_eq!(host.access("cert.pem"), (0, 0, 0o600));
    assert_eq!(host.access("key.pem"), (0, 0, 0o600));
    assert!(a.terminate().success());
    host.load_credentials(&unit);
    a = host.start(&unit);
    replicate(&grid, &file, &dst.join("2.bin"));

    // Step 2: star-b was not restarted, so only star-a's old certificate is revoked; the list
    // installed as printed and the unit's reload.
    let out = orbitctl(&["--grid", &g, "renew", "--finish"]);
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("star-a: presents its new certificate")
            && out.stdout.contains("star-b: not finished"),
        "{}",
        out.stdout
    );
    host.run_printed(&out.stdout, &star_a);
    assert_eq!(host.access("crl.pem"), (0, 0, 0o644));
    let keys = reload(&host, &unit, &a);
    assert!(keys.contains("revocation list #1 revoking 1"), "{keys}");
    replicate(&grid, &file, &dst.join("3.bin"));
    assert!(a.terminate().success());
    assert!(b.terminate().success());
}
