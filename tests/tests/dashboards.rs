//! Issue 17.7: the Grafana dashboard (dist/grafana/) and the Prometheus alert rules
//! (dist/prometheus/) use only metrics a star serves. Two real stars replicate a file, both are
//! scraped over HTTP, and every `orbit_*` and `process_*` name the files mention must be among the
//! series served. CI checks the rules' syntax and firing with `promtool` (.ci/run).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use orbit_tests::ops::scrape;
use orbit_tests::{expect_done, random_file, two_roots, wire, Grid};

const DIST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../dist");

/// The files in `dir` whose names end with `ext`.
fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    found.sort();
    found
}

/// Every metric name in `text` that Orbit would serve: the identifiers that begin with `orbit_`
/// or `process_` (PromQL's own names, such as `up` or `rate`, are not a star's).
fn names_used(text: &str) -> BTreeSet<String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find(|c: char| is_name(c)) {
        let after = &rest[start..];
        let end = after.find(|c: char| !is_name(c)).unwrap_or(after.len());
        let word = &after[..end];
        // Only whole words: `orbit_` inside `my_orbit_x` is not a name.
        let whole = start == 0 || !rest[..start].ends_with(is_name);
        if whole && (word.starts_with("orbit_") || word.starts_with("process_")) {
            names.insert(word.to_owned());
        }
        rest = &after[end..];
    }
    names
}

/// The names of the samples in Prometheus text.
fn names_served(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect()
}

#[test]
fn names_are_found_as_whole_words() {
    let text = r#"sum(rate(orbit_p2p_x_total{a="b"}[5m])) / process_open_fds and not_orbit_y up"#;
    let found: Vec<String> = names_used(text).into_iter().collect();
    assert_eq!(found, ["orbit_p2p_x_total", "process_open_fds"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_the_alerts_use_is_served() {
    let dist = Path::new(DIST);
    let rules = files(&dist.join("prometheus"), "yml");
    let dashboards = files(&dist.join("grafana"), "json");
    assert!(!rules.is_empty() && !dashboards.is_empty());

    let mut used = BTreeSet::new();
    let mut alerts = String::new();
    for path in rules.iter().chain(&dashboards) {
        let text = std::fs::read_to_string(path).unwrap();
        if path.extension().is_some_and(|e| e == "json") {
            // Grafana reads it: it must be JSON, with a query in every panel that has targets.
            let dashboard: serde_json::Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            for panel in dashboard["panels"].as_array().unwrap() {
                for target in panel["targets"].as_array().into_iter().flatten() {
                    assert!(
                        target["expr"].as_str().is_some_and(|e| !e.is_empty()),
                        "{}: panel {} has an empty query",
                        path.display(),
                        panel["title"]
                    );
                }
            }
        } else {
            alerts.push_str(&text);
        }
        used.extend(names_used(&text));
    }
    for alert in [
        "OrbitStarDown",
        "OrbitCertificateExpiring",
        "OrbitFailuresRising",
        "OrbitTransfersStalled",
    ] {
        assert!(
            alerts.contains(&format!("alert: {alert}\n")),
            "no {alert} rule"
        );
    }

    // Two stars, one replication, so that every series has had something to count.
    let grid = Grid::new();
    let tmp = tempfile::tempdir().unwrap();
    let (src_root, dst_root) = two_roots(tmp.path());
    let a = grid.spawn_star("star-a", &[&src_root]).await;
    let b = grid.spawn_star("star-b", &[&dst_root]).await;
    let src = src_root.join("f.bin");
    let digest = random_file(&src, 200_000);
    let path = wire(&src);
    let done = grid
        .controller_client()
        .replicate(
            &a,
            &path,
            &b,
            &wire(&dst_root.join("f.bin")),
            grid.token("star-a", "star-b", &path),
            None,
        )
        .await
        .unwrap();
    assert_eq!(expect_done(done), (200_000, digest));
    let mut served = BTreeSet::new();
    for star in [&a, &b] {
        let addr = star
            .serve_metrics("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let text = tokio::task::spawn_blocking(move || scrape(addr))
            .await
            .unwrap();
        served.extend(names_served(&text));
    }

    assert!(used.len() >= 15, "too few names found: {used:?}");
    let missing: Vec<&String> = used.difference(&served).collect();
    assert!(
        missing.is_empty(),
        "used in dist/ but not served: {missing:?}\nserved: {served:?}"
    );
    a.shutdown().await;
    b.shutdown().await;
}
