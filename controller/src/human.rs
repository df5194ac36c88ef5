//! Numbers written for people: sizes, rates and durations in the units a reader expects.
//!
//! Only for text meant to be read; `--json` output always carries the raw numbers.

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
