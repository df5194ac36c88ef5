//! How text a peer chose reaches the log: escaped and cut short, so that a path of 60,000
//! characters, or one holding a newline or a terminal escape sequence, can neither flood the log
//! nor forge a line of it. Never used for what the star itself decided.

use std::fmt;

/// The most characters of peer text a log line shows.
pub(crate) const MAX_LOGGED: usize = 256;

/// Peer text as a log shows it: control characters, quotes and backslashes escaped as Rust
/// escapes them (`\n`, `\u{1b}`), at most [`MAX_LOGGED`] characters, then how long it was.
pub(crate) struct Logged<'a>(pub(crate) &'a str);

impl fmt::Display for Logged<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut chars = self.0.chars();
        for c in chars.by_ref().take(MAX_LOGGED) {
            fmt::Display::fmt(&c.escape_debug(), f)?;
        }
        if chars.next().is_some() {
            write!(f, "... ({} bytes in all)", self.0.len())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_long_text_cut() {
        let forged = "/a\n2026-01-01T00:00:00Z  INFO forged\u{1b}[2J";
        assert_eq!(
            Logged(forged).to_string(),
            "/a\\n2026-01-01T00:00:00Z  INFO forged\\u{1b}[2J"
        );
        let long = "x".repeat(60_000);
        let shown = Logged(&long).to_string();
        assert_eq!(
            shown,
            format!("{}... (60000 bytes in all)", "x".repeat(MAX_LOGGED))
        );
        assert_eq!(Logged("/plain/path").to_string(), "/plain/path");
    }
}
