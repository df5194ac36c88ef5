//! Certificate renewal on a running grid of real `orbit-star` processes: `orbitctl renew`
//! writes new certificates while the old ones stay valid, and `renew --finish` revokes a
//! star's old certificate only once that star presents its new one in the handshake. And the
//! warnings before a certificate expires: in `orbitctl status` and in the star's log.

use std::path::Path;
use std::time::{Duration, SystemTime};

use orbit_certs::{GridCa, IssueOptions, IssuedCert, Role};
use orbit_tests::ops::{self, ok, reload, start_star, RELOAD_TIMEOUT};
use orbit_tests::process::orbitctl;
use orbit_tests::*;

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

fn held_by(grid: &Path, star: &str) -> IssuedCert {
    IssuedCert {
        cert_pem: read(&grid.join(format!("stars/{star}/cert.pem"))),
        key_pem: read(&grid.join(format!("stars/{star}/key.pem"))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_then_finish_on_a_running_grid_without_a_failed_replication() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = ops::init_grid(tmp.path(), &["star-a", "star-b"]);
    let g = wire(&grid);
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    std::fs::create_dir_all(&dst).unwrap();
    let file = src.join("f.bin");
    random_file(&file, 100_000);
    let mut a = start_star(&grid, "star-a", &src, &[]);
    let mut b = start_star(&grid, "star-b", &dst, &[]);
    let mut copies = ops::Copies::new(&grid, &file, &dst);
    let mut replicate_ok = |when: &str| copies.check(when);
    replicate_ok("before the renewal");
    let old_b = held_by(&grid, "star-b");
    let token = ops::mint(&grid, &file);

    let out = ok(orbitctl(&["--grid", &g, "renew", "--all"]));
    for text in [
        "install -o root -g root -m 0600 cert.pem key.pem /etc/orbit/",
        "systemctl restart orbit-star",
        "renew --finish",
    ] {
        assert!(out.stdout.contains(text), "{text}: {}", out.stdout);
    }
    assert_ne!(held_by(&grid, "star-b").cert_pem, old_b.cert_pem);
    replicate_ok("renewal started, stars still on their old certificates");

    // Too early: both stars still present their old certificates, so nothing is revoked.
    let out = orbitctl(&["--grid", &g, "renew", "--finish"]);
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    for star in ["star-a", "star-b"] {
        let line = format!("{star}: not finished, its old certificate stays valid: still presents its old certificate");
        assert!(out.stdout.contains(&line), "{}", out.stdout);
    }
    assert!(out.stderr.contains("star-a, star-b"), "{}", out.stderr);
    assert!(!grid.join("crl.pem").exists());

    // star-a restarts with its new certificate; star-b still runs with its old one, which
    // star-a accepts.
    assert!(a.terminate().success());
    a = start_star(&grid, "star-a", &src, &[]);
    replicate_ok("star-a on its new certificate, star-b on its old one");
    let outcome = ops::raw_read_as(&grid, &old_b, a.addr, &wire(&file), &token).await;
    assert!(outcome.unwrap().error.is_none());

    let out = orbitctl(&["--grid", &g, "renew", "--finish", "--json"]);
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    let json: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(json["type"], "renew");
    assert_eq!(json["step"], "finish");
    assert_eq!(json["ok"], false);
    assert_eq!(json["revoked"], serde_json::json!(["star-a"]));
    assert_eq!(json["waiting"][0]["name"], "star-b");
    assert_eq!(json["waiting"][0]["code"], "FailedPrecondition");
    assert_eq!(json["crl_number"], 1);
    reload(&[&a, &b]);
    replicate_ok("star-a's old certificate revoked, star-b's still valid");

    assert!(b.terminate().success());
    b = start_star(&grid, "star-b", &dst, &[]);
    let out = ok(orbitctl(&["--grid", &g, "renew", "--finish"]));
    assert!(
        out.stdout
            .contains("star-b: presents its new certificate; the old one is revoked."),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("systemctl reload orbit-star"),
        "{}",
        out.stdout
    );
    reload(&[&a, &b]);
    replicate_ok("after the renewal");
    // star-b's old certificate no longer completes a read.
    let refused = ops::raw_read_as(&grid, &old_b, a.addr, &wire(&file), &token).await;
    assert!(
        refused.is_err(),
        "a revoked certificate was served: {refused:?}"
    );

    let again = orbitctl(&["--grid", &g, "renew", "--finish"]);
    assert_eq!(again.code, Some(1));
    assert!(
        again.stderr.contains("no renewal in progress"),
        "{}",
        again.stderr
    );
    assert!(a.terminate().success());
    assert!(b.terminate().success());
}

#[test]
fn a_certificate_expiring_within_thirty_days_is_warned_of_by_status_and_the_star() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = ops::init_grid(tmp.path(), &["star-a"]);
    let g = wire(&grid);
    let root = tempfile::tempdir().unwrap();
    // star-a with a certificate of the grid's CA that expires in ten days.
    let ca = GridCa::from_pem(&read(&grid.join("ca.pem")), &read(&grid.join("ca.key"))).unwrap();
    let options = IssueOptions {
        not_after: SystemTime::now() + Duration::from_secs(10 * 86_400 + 3600),
        ..IssueOptions::default()
    };
    let short = ca.issue_with(Role::Star, "star-a", &options).unwrap();
    let dir = grid.join("stars/star-a");
    std::fs::write(dir.join("cert.pem"), &short.cert_pem).unwrap();
    std::fs::write(dir.join("key.pem"), &short.key_pem).unwrap();

    let a = start_star(&grid, "star-a", root.path(), &[]);
    let warning = a
        .started
        .iter()
        .find(|l| l.contains("this star's certificate expires"))
        .unwrap_or_else(|| panic!("no warning at start:\n{}", a.started.join("\n")));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        warning.contains(", in 10 days: renew it with `orbitctl renew star-a`"),
        "{warning}"
    );
    // Again after a reload.
    a.hangup();
    a.wait_for_line("this star's certificate expires", RELOAD_TIMEOUT);

    let out = ok(orbitctl(&["--grid", &g, "status"]));
    assert!(out.stdout.contains("(10 days) RENEW"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("warning: star-a's certificate expires on "),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("grid CA expires "), "{}", out.stdout);
    let out = ok(orbitctl(&["--grid", &g, "status", "--json"]));
    let json: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(json["type"], "status");
    assert_eq!(json["ca_expires_soon"], false);
    let star = &json["stars"][0];
    assert_eq!(star["cert_expires_soon"], true);
    let left = star["cert_not_after"].as_u64().unwrap()
        - SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
    assert!((10 * 86_400..11 * 86_400).contains(&left), "{left}");

    // A standard certificate: no warning anywhere.
    drop(a);
    ok(orbitctl(&["--grid", &g, "renew", "star-a"]));
    let a = start_star(&grid, "star-a", root.path(), &[]);
    assert!(
        !a.started.iter().any(|l| l.contains("expires")),
        "{}",
        a.started.join("\n")
    );
    let out = ok(orbitctl(&["--grid", &g, "status"]));
    assert!(!out.stdout.contains("RENEW"), "{}", out.stdout);
    assert!(!out.stdout.contains("warning"), "{}", out.stdout);
    assert!(a.terminate().success());
}
