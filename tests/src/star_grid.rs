//! A grid for command-line tests through the real binaries: `orbitctl init` with some stars on
//! free loopback ports, the chosen ones running as `orbit-star` processes (each allowed only its
//! own root), the others listed but down. And a check that `--json` output is NDJSON whose every
//! line says what it is.

use std::path::PathBuf;

use crate::process::{self, StarProcess};
use crate::wire;

/// A grid whose stars store under `ROOT/roots/NAME`.
#[derive(Debug)]
pub struct StarGrid {
    /// The grid folder.
    pub grid: PathBuf,
    /// The stars running, by name.
    pub stars: Vec<(String, StarProcess)>,
    // Last, so the folder outlives the stars using it.
    tmp: tempfile::TempDir,
}

impl StarGrid {
    /// Makes a grid of `names` and starts those of them in `running`.
    pub fn start(names: &[&str], running: &[&str]) -> StarGrid {
        let tmp = tempfile::tempdir().unwrap();
        let grid = crate::ops::init_grid(tmp.path(), names);
        let mut stars = Vec::new();
        for name in names {
            let root = tmp.path().join("roots").join(name);
            std::fs::create_dir_all(&root).unwrap();
            if running.contains(name) {
                let config = wire(&grid.join(format!("stars/{name}/star.toml")));
                let star = StarProcess::start(&["--config", &config, "--allow", &wire(&root)]);
                stars.push(((*name).to_owned(), star));
            }
        }
        StarGrid { grid, stars, tmp }
    }

    /// A scratch folder of the test, outside every root.
    pub fn scratch(&self) -> PathBuf {
        self.tmp.path().to_owned()
    }

    /// The root of `star`.
    pub fn root(&self, star: &str) -> PathBuf {
        self.tmp.path().join("roots").join(star)
    }

    /// The file `name` under `star`'s root.
    pub fn file(&self, star: &str, name: &str) -> PathBuf {
        self.root(star).join(name)
    }

    /// `STAR:ROOT/name`, as `replicate` takes it.
    pub fn path(&self, star: &str, name: &str) -> String {
        format!("{star}:{}", wire(&self.file(star, name)))
    }

    /// The running star `name`.
    ///
    /// # Panics
    ///
    /// If it does not run.
    pub fn star(&self, name: &str) -> &StarProcess {
        self.stars
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, star)| star)
            .unwrap_or_else(|| panic!("{name} does not run"))
    }

    /// Runs `orbitctl --grid GRID args...` to completion.
    pub fn orbitctl(&self, args: &[&str]) -> process::Output {
        let grid = wire(&self.grid);
        let mut all = vec!["--grid", grid.as_str()];
        all.extend_from_slice(args);
        process::orbitctl(&all)
    }
}

/// Every line of `stdout` as a JSON object, each checked to carry a string `type`.
///
/// # Panics
///
/// On a line that is not a JSON object with a `type`, naming it.
pub fn typed_json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {line}\nin:\n{stdout}"));
            assert!(
                value.get("type").is_some_and(serde_json::Value::is_string),
                "no \"type\": {line}\nin:\n{stdout}"
            );
            value
        })
        .collect()
}
