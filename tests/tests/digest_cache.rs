//! The source's digest cache kept in its state directory: a file sent, the source restarted, the
//! same file sent again is not hashed again; a file a star received is not hashed when it sends
//! it on, unless it changed; a damaged cache file is ignored with a warning and the star serves
//! as before.

use std::path::Path;

use orbit_tests::process::{orbitctl, StarProcess};
use orbit_tests::*;

/// The source's log line when a digest comes from the cache instead of a hash of the file.
const FROM_CACHE: &str = "digest from cache";

fn start_star(grid: &Path, name: &str, root: &Path, state: &Path) -> StarProcess {
    let config = grid.join(format!("stars/{name}/star.toml"));
    StarProcess::start_with_env(
        &[
            "--config",
            &wire(&config),
            "--allow",
            &wire(root),
            "--state-dir",
            &wire(state),
        ],
        &[("RUST_LOG", "info,orbit_agent::digests=debug")],
    )
}

/// One `orbitctl replicate` of `src` on star-a to `dst` on star-b; checks the bytes arrived.
fn replicate(grid: &Path, src: &Path, dst: &Path, digest: [u8; 32]) {
    let _ = std::fs::remove_file(dst);
    send(grid, ("star-a", src), ("star-b", dst));
    assert_eq!(sha256_file(dst), digest);
}

/// One `orbitctl replicate` of a file on one star to another, which must succeed.
fn send(grid: &Path, (from, src): (&str, &Path), (to, dst): (&str, &Path)) {
    let out = orbitctl(&[
        "--grid",
        &wire(grid),
        "replicate",
        &format!("{from}:{}", wire(src)),
        &format!("{to}:{}", wire(dst)),
    ]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
}

/// Every line `star` logs up to its first containing `needle`, that one included.
fn lines_until(star: &StarProcess, needle: &str) -> Vec<String> {
    let deadline = std::time::Instant::now() + STEP_TIMEOUT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match star.lines.recv_timeout(left) {
            Ok(line) => {
                let last = line.contains(needle);
                seen.push(line);
                if last {
                    return seen;
                }
            }
            Err(_) => panic!("never logged {needle:?}; logged:\n{}", seen.join("\n")),
        }
    }
}

#[test]
fn a_file_sent_again_after_the_source_restarts_is_not_hashed_again() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = ops::init_grid(tmp.path(), &["star-a", "star-b"]);
    let (src_root, dst_root) = (tmp.path().join("src"), tmp.path().join("dst"));
    std::fs::create_dir_all(&dst_root).unwrap();
    let src = src_root.join("f.bin");
    let dst = dst_root.join("f.bin");
    let digest = random_file(&src, 5 * 1024 * 1024 + 3);
    let state_a = tmp.path().join("state-a");
    let a = start_star(&grid, "star-a", &src_root, &state_a);
    let _b = start_star(&grid, "star-b", &dst_root, &tmp.path().join("state-b"));

    replicate(&grid, &src, &dst, digest);
    let first = lines_until(&a, "read completed");
    assert!(
        !first.iter().any(|l| l.contains(FROM_CACHE)),
        "a fresh source found the digest cached:\n{}",
        first.join("\n")
    );
    assert!(a.terminate().success());

    let a = start_star(&grid, "star-a", &src_root, &state_a);
    replicate(&grid, &src, &dst, digest);
    // The read is logged once it is done, after the digest was looked up.
    let lines = lines_until(&a, "read completed");
    assert!(
        lines.iter().any(|l| l.contains(FROM_CACHE)),
        "the restarted source hashed the file again:\n{}",
        lines.join("\n")
    );
}

#[test]
fn a_file_a_star_received_is_not_hashed_again_when_it_sends_it_on() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = ops::init_grid(tmp.path(), &["star-a", "star-b"]);
    let (a_root, b_root) = (tmp.path().join("a"), tmp.path().join("b"));
    std::fs::create_dir_all(&b_root).unwrap();
    let src = a_root.join("f.bin");
    let digest = random_file(&src, 3 * 1024 * 1024 + 1);
    let _a = start_star(&grid, "star-a", &a_root, &tmp.path().join("state-a"));
    let b = start_star(&grid, "star-b", &b_root, &tmp.path().join("state-b"));

    // star-b receives the file: it checked every byte, so it knows the digest.
    let received = b_root.join("f.bin");
    replicate(&grid, &src, &received, digest);
    // Sent on (here back to star-a, under another name), it is not hashed again.
    let back = a_root.join("back.bin");
    send(&grid, ("star-b", &received), ("star-a", &back));
    assert_eq!(sha256_file(&back), digest);
    let lines = lines_until(&b, "read completed");
    assert!(
        lines.iter().any(|l| l.contains(FROM_CACHE)),
        "star-b hashed the file it had received:\n{}",
        lines.join("\n")
    );

    // Changed in place after it arrived, the file is hashed again, and the copy is right.
    std::fs::write(&received, b"changed").unwrap();
    let again = a_root.join("again.bin");
    send(&grid, ("star-b", &received), ("star-a", &again));
    assert_eq!(std::fs::read(&again).unwrap(), b"changed");
    let lines = lines_until(&b, "read completed");
    assert!(
        !lines.iter().any(|l| l.contains(FROM_CACHE)),
        "a changed file's digest came from the cache:\n{}",
        lines.join("\n")
    );
}

#[test]
fn a_damaged_digest_cache_is_ignored_with_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = ops::init_grid(tmp.path(), &["star-a", "star-b"]);
    let (src_root, dst_root) = (tmp.path().join("src"), tmp.path().join("dst"));
    std::fs::create_dir_all(&dst_root).unwrap();
    let src = src_root.join("f.bin");
    let dst = dst_root.join("f.bin");
    let digest = random_file(&src, 65537);
    let state_a = tmp.path().join("state-a");
    std::fs::create_dir_all(&state_a).unwrap();
    // The right magic and a count of 2, then garbage: neither the length nor the checksum fit.
    let mut damaged = b"ORBTDG01".to_vec();
    damaged.extend_from_slice(&2u32.to_le_bytes());
    damaged.extend_from_slice(&[0xa5; 150]);
    std::fs::write(state_a.join("digests"), &damaged).unwrap();

    let a = start_star(&grid, "star-a", &src_root, &state_a);
    let warning = a
        .started
        .iter()
        .find(|l| l.contains("digest cache") && l.contains("ignored"))
        .unwrap_or_else(|| panic!("no warning:\n{}", a.started.join("\n")));
    assert!(warning.contains("WARN"), "{warning}");
    let _b = start_star(&grid, "star-b", &dst_root, &tmp.path().join("state-b"));
    replicate(&grid, &src, &dst, digest);
    assert!(a.terminate().success());

    // The damaged file was replaced by a good one: the next start loads it without a warning.
    let a = start_star(&grid, "star-a", &src_root, &state_a);
    assert!(
        !a.started.iter().any(|l| l.contains("ignored")),
        "{}",
        a.started.join("\n")
    );
    replicate(&grid, &src, &dst, digest);
    a.wait_for_line(FROM_CACHE, STEP_TIMEOUT);
}
