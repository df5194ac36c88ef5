//! How `replicate` and `wait` show a transfer while it runs: a one-line progress bar on a
//! terminal's stderr (bytes, rate, ETA; for a tree also files) that is erased before anything
//! else is printed, NDJSON progress events on stdout for `--json`, or nothing (`--quiet`, or
//! stderr is not a terminal).
//!
//! The bar never wraps: it is cut to the terminal's width, so erasing one line erases all of it.
//! It never writes to stdout, which stays for the result.

use std::io::{IsTerminal as _, Write as _};
use std::time::Instant;

use orbit_wire::tree::TreeProgress;
use orbit_wire::TransferId;
use serde::Serialize;

use crate::human;

/// The width assumed when the terminal does not say.
const DEFAULT_COLUMNS: usize = 80;
/// The fewest cells of bar worth drawing; narrower terminals get the numbers alone.
const MIN_BAR: usize = 10;
/// Widest bar drawn, however wide the terminal.
const MAX_BAR: usize = 40;
/// Erase the whole line and return to its start.
const ERASE_LINE: &str = "\r\x1b[2K";

/// Where progress goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A bar on stderr, which is a terminal.
    Bar,
    /// One JSON object per progress event on stdout.
    Json,
    /// Nowhere.
    Silent,
}

impl Mode {
    /// `--json` wins; then `--quiet`; then a bar if stderr is a terminal.
    pub fn choose(json: bool, quiet: bool) -> Mode {
        if json {
            Mode::Json
        } else if quiet || !std::io::stderr().is_terminal() {
            Mode::Silent
        } else {
            Mode::Bar
        }
    }
}

/// The progress display of one transfer.
#[derive(Debug)]
pub struct Progress {
    mode: Mode,
    transfer_id: String,
    started: Instant,
    /// The first progress seen, as `(when, bytes)`: the rate counts from there, so a `wait`
    /// that joins late does not count bytes moved before it came.
    first: Option<(Instant, u64)>,
    /// The bar on the screen, if one is drawn.
    drawn: Option<String>,
}

#[derive(Serialize)]
struct ProgressJson<'a> {
    event: &'static str,
    transfer_id: &'a str,
    bytes: u64,
    total: u64,
    seconds: f64,
}

#[derive(Serialize)]
struct TreeProgressJson<'a> {
    event: &'static str,
    transfer_id: &'a str,
    files_done: u64,
    files_total: u64,
    bytes_done: u64,
    bytes_total: u64,
    listed: bool,
    seconds: f64,
}

impl Progress {
    /// A display for the transfer `transfer_id` (16 hexadecimal digits).
    pub fn new(mode: Mode, transfer_id: TransferId) -> Progress {
        Progress {
            mode,
            transfer_id: transfer_id.to_string(),
            started: Instant::now(),
            first: None,
            drawn: None,
        }
    }

    /// Shows that `bytes` of `total` have arrived.
    pub fn update(&mut self, bytes: u64, total: u64) {
        let now = Instant::now();
        match self.mode {
            Mode::Silent => {}
            Mode::Json => json_line(&ProgressJson {
                event: "progress",
                transfer_id: &self.transfer_id,
                bytes,
                total,
                seconds: now.duration_since(self.started).as_secs_f64(),
            }),
            Mode::Bar => {
                let rate = self.rate(now, bytes);
                self.draw(bar_line(bytes, total, rate, columns()));
            }
        }
    }

    /// Shows a tree replication's progress: files and bytes done of the totals known so far.
    pub fn update_tree(&mut self, progress: &TreeProgress) {
        let now = Instant::now();
        match self.mode {
            Mode::Silent => {}
            Mode::Json => json_line(&TreeProgressJson {
                event: "progress",
                transfer_id: &self.transfer_id,
                files_done: progress.files_done,
                files_total: progress.files_total,
                bytes_done: progress.bytes_done,
                bytes_total: progress.bytes_total,
                listed: progress.listed,
                seconds: now.duration_since(self.started).as_secs_f64(),
            }),
            Mode::Bar => {
                let rate = self.rate(now, progress.bytes_done);
                self.draw(tree_bar_line(progress, rate, columns()));
            }
        }
    }

    /// Prints `line` on stdout above the bar: the bar is erased first and drawn again after.
    pub fn println(&mut self, line: &str) {
        let bar = self.drawn.take();
        if bar.is_some() {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "{ERASE_LINE}");
            let _ = err.flush();
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
        if let Some(bar) = bar {
            self.draw(bar);
        }
    }

    /// Erases the bar, if one is drawn. Call it before printing anything else.
    pub fn clear(&mut self) {
        if self.drawn.take().is_some() {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "{ERASE_LINE}");
            let _ = err.flush();
        }
    }

    /// Bytes per second since the first progress seen, once it can be known.
    fn rate(&mut self, now: Instant, bytes: u64) -> Option<f64> {
        let (since, base) = *self.first.get_or_insert((now, bytes));
        let elapsed = now.duration_since(since).as_secs_f64();
        (elapsed > 0.0).then(|| bytes.saturating_sub(base) as f64 / elapsed)
    }

    fn draw(&mut self, line: String) {
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "{ERASE_LINE}{line}");
        let _ = err.flush();
        self.drawn = Some(line);
    }
}

/// Writes `json` as one line on stdout, at once.
fn json_line(json: &impl Serialize) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", crate::json::line(crate::json::PROGRESS, json));
    let _ = out.flush();
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.clear();
    }
}

/// The terminal's width from stderr, or [`DEFAULT_COLUMNS`].
fn columns() -> usize {
    match rustix::termios::tcgetwinsize(std::io::stderr()) {
        Ok(size) if size.ws_col > 0 => usize::from(size.ws_col),
        _ => DEFAULT_COLUMNS,
    }
}

/// `[#######>            ]  42%  108.0 MiB of 256.0 MiB  52.1 MiB/s  ETA 3s`, at most
/// `columns - 1` characters (the last column is left free, so no terminal wraps the line).
/// `rate` is in bytes per second, `None` before it can be known.
pub fn bar_line(bytes: u64, total: u64, rate: Option<f64>, columns: usize) -> String {
    let fraction = if total == 0 {
        0.0
    } else {
        (bytes as f64 / total as f64).clamp(0.0, 1.0)
    };
    let rate_text = match rate {
        Some(r) if r > 0.0 => format!("{}/s", human::bytes(r as u64)),
        _ => "-".to_owned(),
    };
    let eta = match rate {
        Some(r) if r > 0.0 && total >= bytes => {
            human::uptime(((total - bytes) as f64 / r).ceil() as u64)
        }
        _ => "-".to_owned(),
    };
    let numbers = format!(
        "{:>3}%  {} of {}  {rate_text}  ETA {eta}",
        (fraction * 100.0).floor() as u64,
        human::bytes(bytes),
        human::bytes(total)
    );
    fit(fraction, &numbers, columns)
}

/// `[#######>            ]  42%  840/2000 files  13.1 MiB of 31.2 MiB  52.1 MiB/s  ETA 3s`, at
/// most `columns - 1` characters. While the source is still listing, the totals are the ones
/// known so far: they carry a `+` and there is no ETA. The fraction is of the bytes to copy, or
/// of the files when there are no bytes to copy (a tree already up to date).
pub fn tree_bar_line(progress: &TreeProgress, rate: Option<f64>, columns: usize) -> String {
    let TreeProgress {
        files_done,
        files_total,
        bytes_done,
        bytes_total,
        listed,
    } = *progress;
    let fraction = |done: u64, total: u64| (done as f64 / total as f64).clamp(0.0, 1.0);
    let fraction = if bytes_total > 0 {
        fraction(bytes_done, bytes_total)
    } else if files_total > 0 {
        fraction(files_done, files_total)
    } else {
        0.0
    };
    let more = if listed { "" } else { "+" };
    let rate_text = match rate {
        Some(r) if r > 0.0 => format!("{}/s", human::bytes(r as u64)),
        _ => "-".to_owned(),
    };
    let eta = match rate {
        Some(r) if listed && r > 0.0 && bytes_total >= bytes_done => {
            human::uptime(((bytes_total - bytes_done) as f64 / r).ceil() as u64)
        }
        _ => "-".to_owned(),
    };
    let numbers = format!(
        "{:>3}%  {files_done}/{files_total}{more} files  {} of {}{more}  {rate_text}  ETA {eta}",
        (fraction * 100.0).floor() as u64,
        human::bytes(bytes_done),
        human::bytes(bytes_total),
    );
    fit(fraction, &numbers, columns)
}

/// `numbers` behind a bar filled to `fraction` when there is room for one, cut to
/// `columns - 1` characters (the last column is left free, so no terminal wraps the line).
fn fit(fraction: f64, numbers: &str, columns: usize) -> String {
    let room = columns.saturating_sub(1);
    let cells = room
        .saturating_sub(numbers.chars().count() + 3)
        .min(MAX_BAR);
    let line = if cells >= MIN_BAR {
        let full = ((fraction * cells as f64).floor() as usize).min(cells);
        let head = if full < cells { ">" } else { "" };
        let rest = cells - full - head.len();
        format!("[{}{head}{}] {numbers}", "#".repeat(full), " ".repeat(rest))
    } else {
        numbers.to_owned()
    };
    line.chars().take(room).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_shows_bytes_rate_and_eta_within_the_width() {
        let line = bar_line(128 << 20, 256 << 20, Some(64.0 * 1048576.0), 80);
        assert!(line.starts_with("[####"), "{line}");
        assert!(
            line.ends_with(" 50%  128.0 MiB of 256.0 MiB  64.0 MiB/s  ETA 2s"),
            "{line}"
        );
        assert!(line.chars().count() < 80);
        let bar = &line[1..line.find(']').unwrap()];
        assert_eq!(bar.chars().filter(|c| *c == '#').count(), bar.len() / 2);

        // Before a rate is known; a narrow terminal gets the numbers alone, cut to fit.
        let line = bar_line(0, 10, None, 30);
        assert!(!line.contains('['), "{line}");
        assert!(line.chars().count() <= 29, "{line}");
        assert!(line.starts_with("  0%  0 B of 10 B  -"), "{line}");

        let line = bar_line(10, 10, Some(1.0), 200);
        assert!(
            line.starts_with(&format!("[{}]", "#".repeat(MAX_BAR))),
            "{line}"
        );
        assert!(line.contains("100%") && line.ends_with("ETA 0s"), "{line}");
    }

    #[test]
    fn the_tree_bar_shows_files_and_bytes_and_says_when_totals_may_grow() {
        let mut progress = TreeProgress {
            files_done: 840,
            files_total: 2000,
            bytes_done: 16 << 20,
            bytes_total: 32 << 20,
            listed: true,
        };
        let line = tree_bar_line(&progress, Some(8.0 * 1048576.0), 100);
        assert!(line.starts_with("[####"), "{line}");
        assert!(
            line.ends_with(" 50%  840/2000 files  16.0 MiB of 32.0 MiB  8.0 MiB/s  ETA 2s"),
            "{line}"
        );
        assert!(line.chars().count() < 100);

        // Still listing: the totals may grow, so they say so and there is no ETA.
        progress.listed = false;
        let line = tree_bar_line(&progress, Some(8.0 * 1048576.0), 100);
        assert!(
            line.ends_with("840/2000+ files  16.0 MiB of 32.0 MiB+  8.0 MiB/s  ETA -"),
            "{line}"
        );

        // Nothing to copy: the files tell how far it is.
        let line = tree_bar_line(
            &TreeProgress {
                files_done: 5,
                files_total: 10,
                bytes_done: 0,
                bytes_total: 0,
                listed: true,
            },
            None,
            30,
        );
        assert!(line.starts_with(" 50%  5/10 files"), "{line}");
        assert!(line.chars().count() <= 29, "{line}");
    }
}
