//! What a star finds on its own disk, read as if a peer had put it there: a journal entry edited
//! to name a file outside the roots, a journaled transfer whose root became read-only, a
//! temporary file replaced by a hard link or a symbolic link before a resume or before the
//! publish, a target's directory moved out of the root mid-transfer, and roots that hold the
//! star's own keys, config or state. None of them leads outside the roots.

use std::path::PathBuf;
use std::time::Duration;

use orbit_agent::{Star, StarConfig};
use orbit_tests::slow_source::HeldGrid;
use orbit_tests::*;
use orbit_wire::{ControlEvent, ControlRequest, ErrorCode, TransferId};

const MIB: usize = 1024 * 1024;

/// star-a serving a large file and star-b, with a journal, stopped in the middle of pulling it:
/// star-b's temporary file and journal entry are left for its next start.
struct Interrupted {
    grid: Grid,
    a: Star,
    b_config: StarConfig,
    src_root: tempfile::TempDir,
    dst_root: tempfile::TempDir,
    state: tempfile::TempDir,
    /// A folder beside the roots, in no root.
    outside: tempfile::TempDir,
    ids: Vec<TransferId>,
}

impl Interrupted {
    /// A replication of 64 MiB stopped after its first bytes.
    async fn new() -> Interrupted {
        let grid = Grid::new();
        let src_root = tempfile::tempdir().unwrap();
        let dst_root = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let a = grid.spawn_star("star-a", &[src_root.path()]).await;
        let mut b_config = grid.star_config("star-b", &[dst_root.path()]);
        b_config.state_dir = Some(state.path().to_owned());
        let b = Star::spawn(b_config.clone()).await.unwrap();
        let client = grid.controller_client();
        let mut ids = Vec::new();
        {
            let i = 0;
            let src = src_root.path().join(format!("f{i}"));
            random_file(&src, 64 * MIB);
            let target = dst_root.path().join(format!("f{i}"));
            let ControlRequest::Replicate(cmd) = grid.replicate_request(&a, &src, &target, 0)
            else {
                unreachable!()
            };
            ids.push(cmd.transfer_id);
            let events = within("start", client.control(&b, &ControlRequest::Start(cmd)))
                .await
                .unwrap();
            assert!(
                matches!(events.last(), Some(ControlEvent::Started { .. })),
                "{events:?}"
            );
        }
        within("every transfer's first bytes", async {
            // A file's size has no event to wait for; poll it.
            while !part_files(dst_root.path())
                .iter()
                .any(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        b.shutdown_with_drain(Duration::ZERO).await;
        assert_eq!(part_files(dst_root.path()).len(), 1, "kept to resume");
        Interrupted {
            grid,
            a,
            b_config,
            src_root,
            dst_root,
            state,
            outside,
            ids,
        }
    }

    /// A second journaled transfer, as an attacker with the state directory could write one:
    /// the first's entry and temporary file copied under a new transfer id, for the target
    /// `f1` of the file `f1` (a copy of `f0` at the source).
    fn copy_entry(&mut self) -> TransferId {
        let id = TransferId(rand::random());
        let part = format!(".orbit-{id}-0000abcd.part");
        std::fs::copy(self.part(self.ids[0]), self.dst_root.path().join(&part)).unwrap();
        std::fs::copy(
            self.src_root.path().join("f0"),
            self.src_root.path().join("f1"),
        )
        .unwrap();
        let mut entry: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.entry(self.ids[0])).unwrap()).unwrap();
        let command = &mut entry["command"];
        command["transfer_id"] = id.0.into();
        let source_path = wire(&self.src_root.path().join("f1"));
        command["token"] = self.grid.token("star-a", "star-b", &source_path).into();
        command["source_path"] = source_path.into();
        command["target_path"] = wire(&self.dst_root.path().join("f1")).into();
        entry["part"] = part.into();
        std::fs::write(self.entry(id), serde_json::to_vec(&entry).unwrap()).unwrap();
        self.ids.push(id);
        id
    }

    /// The journal entry of transfer `id`.
    fn entry(&self, id: TransferId) -> PathBuf {
        self.state.path().join(format!("transfers/{id}.json"))
    }

    /// Rewrites the journal entry of `id` with `edit`.
    fn edit(&self, id: TransferId, edit: impl FnOnce(&mut serde_json::Value)) {
        let path = self.entry(id);
        let mut entry: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        edit(&mut entry);
        std::fs::write(&path, serde_json::to_vec(&entry).unwrap()).unwrap();
    }

    /// The temporary file transfer `id` wrote, as its journal entry names it.
    fn part(&self, id: TransferId) -> PathBuf {
        let entry: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.entry(id)).unwrap()).unwrap();
        self.dst_root.path().join(entry["part"].as_str().unwrap())
    }

    /// Starts star-b again with `config` and waits for the end of every journaled transfer:
    /// each one's final event, or `None` when the star did not resume it.
    async fn restart(&self, config: StarConfig) -> (Star, Vec<Option<ControlEvent>>) {
        let b = Star::spawn(config).await.expect("star-b starts again");
        let client = self.grid.controller_client();
        let mut ends = Vec::new();
        for &transfer_id in &self.ids {
            let wait = ControlRequest::Wait { transfer_id };
            let mut events = within("the resumed transfer", client.control(&b, &wait))
                .await
                .unwrap();
            ends.push(match events.pop().unwrap() {
                ControlEvent::Failed(e) if e.code == ErrorCode::NotFound => None,
                end => Some(end),
            });
        }
        (b, ends)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_journal_entry_never_removes_a_file_outside_the_roots() {
    let mut run = Interrupted::new().await;
    run.copy_entry();
    // Files outside every root that a tampered entry names as its temporary file: one by a
    // relative path from the target's folder, one by an absolute path.
    let relative_victim = run.outside.path().join("relative");
    let absolute_victim = run.outside.path().join("absolute");
    for victim in [&relative_victim, &absolute_victim] {
        std::fs::write(victim, b"precious").unwrap();
    }
    let up = format!(
        "../{}/relative",
        run.outside.path().file_name().unwrap().to_string_lossy()
    );
    assert!(run.dst_root.path().join(&up).exists(), "{up}");
    run.edit(run.ids[0], |e| e["part"] = up.clone().into());
    run.edit(run.ids[1], |e| e["part"] = wire(&absolute_victim).into());

    let (b, ends) = run.restart(run.b_config.clone()).await;
    for victim in [&relative_victim, &absolute_victim] {
        assert_unchanged(victim);
    }
    // Neither entry is trusted, so neither is resumed; the star runs.
    assert_eq!(ends, [None, None]);
    assert_eq!(
        std::fs::read_dir(run.state.path().join("transfers"))
            .unwrap()
            .count(),
        0,
        "the untrusted entries are removed"
    );
    b.shutdown().await;
    run.a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journaled_transfer_into_a_root_made_read_only_is_neither_resumed_nor_touched() {
    let run = Interrupted::new().await;
    let part = run.part(run.ids[0]);
    let before = std::fs::read(&part).unwrap();
    let mut config = run.b_config.clone();
    config.roots = Vec::new();
    config.read_only_roots = vec![run.dst_root.path().to_owned()];
    let (b, ends) = run.restart(config).await;
    assert_eq!(ends, [None]);
    assert!(!run.dst_root.path().join("f0").exists());
    // What was left in the read-only root stays exactly as it was.
    assert_eq!(std::fs::read(&part).unwrap(), before);
    b.shutdown().await;
    run.a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_file_replaced_by_a_link_is_never_written_through_on_resume() {
    let mut run = Interrupted::new().await;
    run.copy_entry();
    // The temporary files swapped for a hard link and a symbolic link to files outside.
    let hard = run.outside.path().join("hard");
    let soft = run.outside.path().join("soft");
    for (i, victim) in [&hard, &soft].into_iter().enumerate() {
        std::fs::write(victim, b"precious").unwrap();
        let part = run.part(run.ids[i]);
        std::fs::remove_file(&part).unwrap();
        if i == 0 {
            std::fs::hard_link(victim, &part).unwrap();
        } else {
            std::os::unix::fs::symlink(victim, &part).unwrap();
        }
    }
    let (b, ends) = run.restart(run.b_config.clone()).await;
    for victim in [&hard, &soft] {
        assert_unchanged(victim);
    }
    for (i, end) in ends.into_iter().enumerate() {
        let (bytes, sha256) = expect_done(end.expect("resumed"));
        assert_eq!(bytes, 64 * MIB as u64);
        let src = run.src_root.path().join(format!("f{i}"));
        assert_eq!(sha256, sha256_file(&src));
        assert_eq!(
            sha256_file(&run.dst_root.path().join(format!("f{i}"))),
            sha256
        );
    }
    assert!(part_files(run.dst_root.path()).is_empty());
    b.shutdown().await;
    run.a.shutdown().await;
}

/// Fails unless the outside file `victim` still holds exactly `precious`.
fn assert_unchanged(victim: &std::path::Path) {
    let now = std::fs::read(victim);
    assert!(
        now.as_ref().is_ok_and(|b| b == b"precious"),
        "{victim:?} was changed or removed: {:?}",
        now.map(|b| b.len())
    );
}

/// Starts `orbitctl replicate` into `target` on a held grid and waits until the held bytes are
/// in star-b's temporary file.
fn held_replication(held: &HeldGrid, target: &str, hold: usize) -> std::process::Child {
    let child = held
        .command(&[
            "replicate",
            "--timeout",
            "60",
            &held.src(),
            &held.dst(target),
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    held.wait_for_part(hold as u64);
    child
}

#[test]
fn a_part_file_swapped_for_a_link_before_the_publish_is_not_published() {
    let hold = 2 * MIB;
    let held = HeldGrid::start(4 * MIB, hold);
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("secret");
    std::fs::write(&victim, b"outside bytes").unwrap();
    let child = held_replication(&held, "f.bin", hold);
    let dir = held.target("f.bin").parent().unwrap().to_owned();
    let part = part_files(&dir).pop().unwrap();
    // Swap the temporary file's name for a hard link to an outside file; the star keeps
    // writing into its own open file.
    std::fs::rename(&part, outside.path().join("moved-away")).unwrap();
    std::fs::hard_link(&victim, &part).unwrap();
    held.source.release();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("replaced"), "{stderr}");
    assert!(!held.target("f.bin").exists(), "published: {stderr}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"outside bytes");
}

#[test]
fn a_target_directory_moved_out_of_the_root_mid_transfer_gets_nothing_published_outside() {
    let hold = 2 * MIB;
    let held = HeldGrid::start(4 * MIB, hold);
    let child = held_replication(&held, "f.bin", hold);
    // The target's folder moved out of star-b's root while the transfer is held.
    let dir = held.target("f.bin").parent().unwrap().to_owned();
    let outside = held.dst_root.parent().unwrap().join("moved-out");
    std::fs::rename(&dir, &outside).unwrap();
    held.source.release();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("moved out"), "{stderr}");
    assert_eq!(list_tree(&outside), Vec::<PathBuf>::new(), "{stderr}");
}

#[test]
fn roots_holding_the_stars_keys_config_or_state_are_refused_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = orbit_tests::ops::init_grid(tmp.path(), &["star-a"]);
    let star = grid.join("stars/star-a");
    std::fs::create_dir_all(star.join("state/inside")).unwrap();
    let config = wire(&star.join("star.toml"));
    let cases = [
        // A root above everything: the key is named first.
        ("--allow", tmp.path().to_owned(), "key.pem"),
        // Read-only roots too: a peer could read the keys.
        ("--allow-read", star.clone(), "key.pem"),
        // The grid's folder, with the CA key and the master token key.
        ("--allow-read", grid.join("stars"), "key.pem"),
        // Inside the state directory.
        ("--allow", star.join("state/inside"), "state"),
    ];
    for (flag, root, named) in cases {
        let root = wire(&root);
        let out = orbit_tests::ops::orbit_star(
            &["--config", &config, flag, &root, "--check-config"],
            &[],
        );
        assert_eq!(
            out.code,
            Some(1),
            "{flag} {root}: {}{}",
            out.stdout,
            out.stderr
        );
        assert!(
            out.stderr
                .contains(&format!("allowed root {root} holds or lies inside"))
                && out.stderr.contains(named),
            "{flag} {root}: {}",
            out.stderr
        );
    }
    // A root beside the grid is fine.
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let out = orbit_tests::ops::orbit_star(
        &[
            "--config",
            &config,
            "--allow",
            &wire(&data),
            "--check-config",
        ],
        &[],
    );
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stars_own_files_moved_into_a_root_are_never_served_or_overwritten() {
    let grid = Grid::new();
    let src_root = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir_in(src_root.path().parent().unwrap()).unwrap();
    let root = tempfile::tempdir_in(keys.path().parent().unwrap()).unwrap();
    let key = keys.path().join("key.pem");
    std::fs::write(&key, b"precious").unwrap();
    let mut config = grid.star_config("star-b", &[root.path()]);
    config.protected = vec![key.clone()];
    // A root that holds it is refused at start.
    let mut holding = config.clone();
    holding.roots = vec![keys.path().to_owned()];
    let refused = within("spawn", Star::spawn(holding)).await.unwrap_err();
    assert!(refused.to_string().contains("key.pem"), "{refused}");

    let b = within("spawn", Star::spawn(config)).await.unwrap();
    // Moved into the root after start, it is still the star's key.
    let moved = root.path().join("key.pem");
    std::fs::rename(&key, &moved).unwrap();
    let path = wire(&moved);
    let reader = grid.star_client("star-a");
    let conn = reader.connect(b.local_addr(), "star-b").await.unwrap();
    let token = grid.token("star-b", "star-a", &path);
    let outcome = within("read", reader.read(&conn, &read_request(&path, token)))
        .await
        .unwrap();
    assert_refused(&outcome, ErrorCode::PermissionDenied);
    // Nor is it overwritten by a replication.
    let a = grid.spawn_star("star-a", &[src_root.path()]).await;
    let src = src_root.path().join("new-key.pem");
    std::fs::write(&src, b"attacker").unwrap();
    let request = grid.replicate_request(&a, &src, &moved, 0);
    let mut events = within(
        "replication",
        grid.controller_client().control(&b, &request),
    )
    .await
    .unwrap();
    let error = expect_failed(events.pop().unwrap());
    assert_eq!(error.code, ErrorCode::PermissionDenied, "{error}");
    assert_unchanged(&moved);
    a.shutdown().await;
    b.shutdown().await;
}

#[test]
fn a_published_file_is_never_more_readable_than_the_one_it_replaces_and_private_until_then() {
    use std::os::unix::fs::PermissionsExt;
    let hold = 2 * MIB;
    let held = HeldGrid::start(4 * MIB, hold);
    let target = held.target("f.bin");
    std::fs::write(&target, b"old").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
    let child = held_replication(&held, "f.bin", hold);
    let part = part_files(target.parent().unwrap()).pop().unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&part), 0o600, "the temporary file is private");
    held.source.release();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(std::fs::read(&target).unwrap(), held.content);
    assert_eq!(mode(&target), 0o600, "a 0600 target stays 0600");
}
