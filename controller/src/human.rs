//! Numbers written for people: sizes, rates and durations in the units a reader expects; and
//! text from a peer made safe to show on a terminal ([`printable`]).
//!
//! Only for text meant to be read; `--json` output always carries the raw numbers.

/// `text` with every character that could act on a terminal rather than show on it written as
/// a Rust escape (`\u{1b}`, `\n`): control characters (C0, DEL, C1, which start escape
/// sequences) and the bidirectional controls that reorder what is shown. A star's roots, paths
/// and error messages come from the star, which may be hostile; printed raw, an escape sequence
/// in them could retitle the window, hide lines or forge the rest of the report.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    fn acts(c: char) -> bool {
        c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    }
    if !text.chars().any(acts) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if acts(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.into()
}

const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];

/// A byte count in binary units: `512 B`, `1.5 KiB`, `256.0 MiB`.
pub fn bytes(n: u64) -> String {
    scaled(n as f64, "")
}

/// A transfer rate in binary units per second: `208.1 MiB/s`. A zero or negative duration
/// gives `-`.
pub fn rate(bytes: u64, seconds: f64) -> String {
    if seconds > 0.0 && seconds.is_finite() {
        scaled(bytes as f64 / seconds, "/s")
    } else {
        "-".to_owned()
    }
}

fn scaled(mut value: f64, suffix: &str) -> String {
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} {}{suffix}", UNITS[0])
    } else {
        format!("{value:.1} {}{suffix}", UNITS[unit])
    }
}

/// A duration in whole seconds, in its two largest units: `45s`, `3m 12s`, `2h 5m`, `3d 4h`.
pub fn uptime(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds / 3_600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_a_peer_is_made_inert() {
        assert_eq!(printable("/srv/data/é ok"), "/srv/data/é ok");
        assert_eq!(
            printable("/srv/\u{1b}]0;owned\u{7}\u{1b}[2J\r\n\u{9b}x\u{202e}y\u{7f}"),
            "/srv/\\u{1b}]0;owned\\u{7}\\u{1b}[2J\\r\\n\\u{9b}x\\u{202e}y\\u{7f}"
        );
    }

    #[test]
    fn sizes_rates_and_uptimes_read_well() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(256 << 20), "256.0 MiB");
        assert_eq!(bytes(3 << 40), "3.0 TiB");
        assert_eq!(rate(256 << 20, 2.0), "128.0 MiB/s");
        assert_eq!(rate(10, 0.0), "-");
        assert_eq!(uptime(45), "45s");
        assert_eq!(uptime(192), "3m 12s");
        assert_eq!(uptime(2 * 3600 + 5 * 60 + 7), "2h 5m");
        assert_eq!(uptime(3 * 86_400 + 4 * 3600), "3d 4h");
    }
}
