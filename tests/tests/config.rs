//! The star's configuration through the real binary: star.toml is strict, every flag has an
//! `ORBIT_*` variable and a star.toml key, flag beats environment beats file beats default, and
//! `--check-config` prints the effective settings without a byte of any key.

use std::collections::BTreeSet;

use orbit_tests::ops::{init_grid, orbit_star};
use orbit_tests::wire;

/// A folder to serve under `tmp`, beside the grid `orbitctl init` writes there.
fn data_root(tmp: &std::path::Path) -> std::path::PathBuf {
    let root = tmp.join("data");
    std::fs::create_dir_all(&root).unwrap();
    root
}

/// The `key = value  # from ORIGIN` line of `key` in `--check-config`'s output.
fn setting<'a>(stdout: &'a str, key: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.starts_with(&format!("{key} = ")) || l.starts_with(&format!("# {key}: ")))
        .unwrap_or_else(|| panic!("no {key} in:\n{stdout}"))
}

#[test]
fn an_unknown_key_is_an_error_naming_it_and_its_line() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("star.toml");
    std::fs::write(
        &config,
        "name = \"star-a\"\nlisten = \"127.0.0.1:7401\"\nalow = [\"/srv\"]\n",
    )
    .unwrap();
    for extra in [&[][..], &["--check-config"][..]] {
        let mut args = vec!["--config", config.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = orbit_star(&args, &[]);
        assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
        assert!(out.stderr.contains("alow"), "{}", out.stderr);
        assert!(out.stderr.contains("line 3"), "{}", out.stderr);
        assert!(!out.stderr.contains("listening on"), "{}", out.stderr);
    }
}

#[test]
fn a_flag_beats_the_environment_which_beats_the_file_which_beats_the_default() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = init_grid(tmp.path(), &["star-a"]);
    let config = wire(&grid.join("stars/star-a/star.toml"));
    let file_listen = orbit_tests::ops::listen_of(&grid.join("stars/star-a/star.toml"));
    // A root beside the grid: one holding the star's keys is refused.
    let root = wire(&data_root(tmp.path()));
    let base = [
        "--config",
        config.as_str(),
        "--allow",
        root.as_str(),
        "--check-config",
    ];

    let env = [
        ("ORBIT_LISTEN", "127.0.0.1:2002"),
        ("ORBIT_LOG_FORMAT", "json"),
    ];
    let mut with_flag = base.to_vec();
    with_flag.extend(["--listen", "127.0.0.1:1001"]);
    let out = orbit_star(&with_flag, &env);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let line = setting(&out.stdout, "listen");
    assert!(
        line.starts_with("listen = \"127.0.0.1:1001\"") && line.ends_with("# from --listen"),
        "{line}"
    );

    let out = orbit_star(&base, &env);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let line = setting(&out.stdout, "listen");
    assert!(
        line.starts_with("listen = \"127.0.0.1:2002\"") && line.ends_with("# from ORBIT_LISTEN"),
        "{line}"
    );
    let line = setting(&out.stdout, "log_format");
    assert!(
        line.starts_with("log_format = \"json\"") && line.ends_with("# from ORBIT_LOG_FORMAT"),
        "{line}"
    );

    let out = orbit_star(&base, &[]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let line = setting(&out.stdout, "listen");
    assert!(
        line.starts_with(&format!("listen = \"{file_listen}\""))
            && line.ends_with("# from star.toml"),
        "{line}"
    );
    let line = setting(&out.stdout, "metrics_listen");
    assert!(line.ends_with("# from default"), "{line}");
    assert!(line.starts_with("# metrics_listen: none"), "{line}");
    // A setting left unset shows the value it takes, not "(unset)".
    for (key, value) in [
        ("max_transfers", "64"),
        ("max_token_lifetime_secs", "3600"),
        ("write_timeout_secs", "30"),
        ("stream_window_mib", "16"),
        ("congestion_control", "\"bbr\""),
        ("log_format", "\"human\""),
    ] {
        let line = setting(&out.stdout, key);
        assert!(
            line.starts_with(&format!("{key} = {value} ")) && line.ends_with("# from default"),
            "{line}"
        );
    }
    let line = setting(&out.stdout, "worker_threads");
    assert!(line.starts_with("worker_threads = "), "{line}");
    let line = setting(&out.stdout, "allow_read");
    assert!(line.starts_with("# allow_read: none"), "{line}");
    assert!(!out.stdout.contains("(unset)"), "{}", out.stdout);
    assert!(
        out.stdout.ends_with("# configuration OK\n"),
        "{}",
        out.stdout
    );

    // A list in the environment: ORBIT_ALLOW separates directories with ':'.
    let (a, b) = (tmp.path().join("x"), tmp.path().join("y"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let both = format!("{}:{}", wire(&a), wire(&b));
    let out = orbit_star(
        &["--config", &config, "--check-config"],
        &[("ORBIT_ALLOW", &both)],
    );
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let line = setting(&out.stdout, "allow");
    assert!(
        line.starts_with(&format!("allow = [\"{}\", \"{}\"]", wire(&a), wire(&b))),
        "{line}"
    );
}

#[test]
fn check_config_masks_every_secret_and_fails_on_a_bad_setting() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = init_grid(tmp.path(), &["star-a", "star-b"]);
    let star = grid.join("stars/star-a");
    let config = wire(&star.join("star.toml"));
    // A root beside the grid: one holding the star's keys is refused.
    let root = wire(&data_root(tmp.path()));
    let secret = std::fs::read_to_string(grid.join("stars/star-a/token.key")).unwrap();
    let private_key = std::fs::read_to_string(star.join("key.pem")).unwrap();
    let out = orbit_star(
        &["--config", &config, "--allow", &root, "--check-config"],
        &[("ORBIT_AUTH_SECRET", secret.trim())],
    );
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("# token key: *** (from ORBIT_AUTH_SECRET)"),
        "{}",
        out.stdout
    );
    let everything = format!("{}{}", out.stdout, out.stderr);
    assert!(
        !everything.contains(secret.trim()),
        "the token key was printed"
    );
    let key_body = private_key.lines().nth(1).unwrap();
    assert!(
        !everything.contains(key_body),
        "the private key was printed"
    );
    // Key files are shown by path, never by content.
    assert!(
        setting(&out.stdout, "key").contains("key.pem"),
        "{}",
        out.stdout
    );

    // A missing file, and a certificate for another star: non-zero, and the reason.
    let missing = wire(&tmp.path().join("nope.pem"));
    let out = orbit_star(
        &[
            "--config",
            &config,
            "--allow",
            &root,
            "--cert",
            &missing,
            "--check-config",
        ],
        &[],
    );
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains(&missing), "{}", out.stderr);
    assert!(!out.stdout.contains("configuration OK"), "{}", out.stdout);
    let other = wire(&grid.join("stars/star-b/cert.pem"));
    let out = orbit_star(
        &[
            "--config",
            &config,
            "--allow",
            &root,
            "--cert",
            &other,
            "--check-config",
        ],
        &[],
    );
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("star-b"), "{}", out.stderr);
    // No roots at all.
    let out = orbit_star(&["--config", &config, "--check-config"], &[]);
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("--allow"), "{}", out.stderr);
}

#[test]
fn worker_threads_out_of_range_stop_the_star_before_it_listens() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = init_grid(tmp.path(), &["star-a"]);
    let config = wire(&grid.join("stars/star-a/star.toml"));
    // A root beside the grid: one holding the star's keys is refused.
    let root = wire(&data_root(tmp.path()));
    for extra in [&[][..], &["--check-config"][..]] {
        for (flag, env) in [(Some("0"), None), (None, Some("1025"))] {
            let mut args = vec!["--config", config.as_str(), "--allow", root.as_str()];
            args.extend_from_slice(extra);
            if let Some(n) = flag {
                args.extend(["--worker-threads", n]);
            }
            let env: Vec<_> = env
                .map(|n| ("ORBIT_WORKER_THREADS", n))
                .into_iter()
                .collect();
            let out = orbit_star(&args, &env);
            assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
            assert!(
                out.stderr
                    .contains("setting `worker_threads` must be 1 to 1024"),
                "{}",
                out.stderr
            );
            assert!(!out.stderr.contains("listening on"), "{}", out.stderr);
            assert!(!out.stdout.contains("configuration OK"), "{}", out.stdout);
        }
    }
    // In range, it is shown with where it came from.
    let out = orbit_star(
        &["--config", &config, "--allow", &root, "--check-config"],
        &[("ORBIT_WORKER_THREADS", "3")],
    );
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let line = setting(&out.stdout, "worker_threads");
    assert!(
        line.starts_with("worker_threads = 3") && line.ends_with("# from ORBIT_WORKER_THREADS"),
        "{line}"
    );
}

#[test]
fn every_flag_has_an_environment_variable_and_a_config_key() {
    let help = orbit_star(&["--help"], &[]);
    assert_eq!(help.code, Some(0));
    // Flags and the variable named in their help block.
    let mut flags = BTreeSet::new();
    let mut current: Option<String> = None;
    for line in help.stdout.lines() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("--") {
            let flag = rest.split([' ', '<']).next().unwrap().to_owned();
            if ["help", "version", "check-config"].contains(&flag.as_str()) {
                current = None;
            } else {
                assert!(
                    current.is_none(),
                    "--{} has no [env: ...]",
                    current.unwrap()
                );
                current = Some(flag);
            }
        } else if let Some(flag) = current.take_if(|_| trimmed.starts_with("[env: ")) {
            let var = format!("[env: ORBIT_{}=", flag.replace('-', "_").to_uppercase());
            assert!(trimmed.starts_with(&var), "--{flag}: {trimmed}");
            flags.insert(flag.replace('-', "_"));
        }
    }
    assert!(
        current.is_none(),
        "--{} has no [env: ...]",
        current.unwrap()
    );
    flags.remove("config");
    assert!(flags.len() >= 10, "{flags:?}");

    // The keys star.toml accepts, from the error an unknown key gets.
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("star.toml");
    std::fs::write(&config, "no_such_key = 1\n").unwrap();
    let out = orbit_star(&["--config", &wire(&config)], &[]);
    let expected = out
        .stderr
        .split("expected one of ")
        .nth(1)
        .expect(&out.stderr);
    let keys: BTreeSet<String> = expected
        .split(", ")
        .map(|k| k.trim().trim_matches('`').to_owned())
        .collect();
    assert_eq!(flags, keys, "flags and star.toml keys differ");
}
