//! Crash safety: the destination star is killed with SIGKILL at random moments of a replication,
//! twenty times. After every kill the target holds the old file or the complete new one, never
//! a partial one; once the star has started again it resumes the journaled transfer or removes
//! its temporary file, so that no `.orbit-*.part` file and no journal entry is left.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use orbit_tests::process::{bin, StarProcess};
use orbit_tests::*;
use rand::Rng;
use sha2::Digest;

/// Small enough that twenty rounds stay quick, large enough to span several checkpoints' worth
/// of chunks and a visible transfer time.
const SIZE: usize = 24 * 1024 * 1024;
const ROUNDS: usize = 20;
const OLD: &[u8] = b"the old contents";

/// `orbitctl init` for star-a and star-b under `root`.
fn init_grid(root: &Path) -> PathBuf {
    orbit_tests::ops::init_grid(root, &["star-a", "star-b"])
}

fn replicate(grid: &Path, src: &Path, dst: &Path) -> Child {
    Command::new(bin("orbitctl"))
        .args(["--grid", &wire(grid), "replicate"])
        .arg(format!("star-a:{}", wire(src)))
        .arg(format!("star-b:{}", wire(dst)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The target is the old file, the complete new one, or absent: never anything else.
#[track_caller]
fn assert_whole(dst: &Path, new: &[u8; 32], round: usize, when: &str) {
    match std::fs::read(dst) {
        Ok(bytes) if bytes == OLD => {}
        Ok(bytes) => assert_eq!(
            sha2::Sha256::digest(&bytes).as_slice(),
            new,
            "round {round}, {when}: the target holds {} bytes that are neither file",
            bytes.len()
        ),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}"),
    }
}

/// Waits until the restarted star has resumed or removed every journaled transfer.
fn settled(dst_root: &Path, journal: &Path, round: usize) {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let entries = std::fs::read_dir(journal).map_or(0, |d| d.count());
        if part_files(dst_root).is_empty() && entries == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "round {round}: temporary files or journal entries remain: {:?}",
            list_tree(dst_root)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn killing_the_destination_at_random_moments_never_leaves_a_partial_file() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = init_grid(tmp.path());
    let (src_root, dst_root) = (tmp.path().join("src"), tmp.path().join("dst"));
    std::fs::create_dir_all(&dst_root).unwrap();
    let src = src_root.join("f.bin");
    let dst = dst_root.join("f.bin");
    let digest = random_file(&src, SIZE);
    let journal = grid.join("stars/star-b/state/transfers");
    let config = |name: &str| wire(&grid.join(format!("stars/{name}/star.toml")));
    let _a = StarProcess::start(&["--config", &config("star-a"), "--allow", &wire(&src_root)]);
    let start_b =
        || StarProcess::start(&["--config", &config("star-b"), "--allow", &wire(&dst_root)]);

    // One full replication, to know how long one takes here.
    let b = start_b();
    let started = Instant::now();
    let status = replicate(&grid, &src, &dst).wait().unwrap();
    assert!(status.success());
    let took = started.elapsed();
    assert_eq!(sha256_file(&dst), digest);
    drop(b);

    let test_started = Instant::now();
    let mut rng = rand::thread_rng();
    let mut kills_before_the_end = 0;
    for round in 1..=ROUNDS {
        let b = start_b();
        settled(&dst_root, &journal, round);
        assert_whole(&dst, &digest, round, "after the restart");
        std::fs::write(&dst, OLD).unwrap();
        let mut controller = replicate(&grid, &src, &dst);
        // A random moment from the command to a little past the usual end.
        let moment = took.mul_f64(rng.gen_range(0.0..1.3));
        std::thread::sleep(moment);
        drop(b); // SIGKILL
        if std::fs::read(&dst).is_ok_and(|b| b == OLD) {
            kills_before_the_end += 1;
        }
        assert_whole(&dst, &digest, round, "after the kill");
        let _ = controller.kill();
        let _ = controller.wait();
    }
    let b = start_b();
    settled(&dst_root, &journal, ROUNDS + 1);
    assert_whole(&dst, &digest, ROUNDS + 1, "at the end");
    assert_eq!(list_tree(&dst_root), vec![PathBuf::from("f.bin")]);
    drop(b);
    eprintln!(
        "{ROUNDS} kills in {:.1} s ({kills_before_the_end} before the new file was published); \
         one replication takes {took:?}",
        test_started.elapsed().as_secs_f64()
    );
    assert!(kills_before_the_end > 0, "no kill landed inside a transfer");
}
