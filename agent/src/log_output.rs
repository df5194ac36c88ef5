//! Where the star's log lines go and how they look: plain text on anything but a terminal (no
//! colour codes, which the journal would store as `[N blob data]`), and, when stderr is the
//! journal's stream, each line prefixed with its syslog priority (`<4>` for a warning), which
//! journald reads as the entry's priority, so that `journalctl -p warning` finds the warnings.
//! The journal keeps its own timestamp, so those lines carry none.

use std::io::IsTerminal;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;

/// How stderr is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stderr {
    /// A terminal: colour.
    Terminal,
    /// systemd's journal (`$JOURNAL_STREAM` names this very stream): priority prefixes.
    Journal,
    /// A file, a pipe: plain text.
    Plain,
}

impl Stderr {
    /// What the process's stderr is now. `NO_COLOR` (any value) turns a terminal's colour off.
    pub fn detect() -> Stderr {
        if journal_stream(std::env::var("JOURNAL_STREAM").ok().as_deref()) {
            Stderr::Journal
        } else if std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none() {
            Stderr::Terminal
        } else {
            Stderr::Plain
        }
    }
}

/// Whether `value` (systemd's `$JOURNAL_STREAM`, `DEVICE:INODE` in decimal) is stderr's own
/// device and inode: systemd sets it for the service's stderr, and a child whose stderr was
/// redirected elsewhere inherits it, which is why it is compared.
fn journal_stream(value: Option<&str>) -> bool {
    let Some((dev, ino)) = value.and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    rustix::fs::fstat(std::io::stderr()).is_ok_and(|st| st.st_dev == dev && st.st_ino == ino)
}

/// The syslog priority of a tracing level, as sd-daemon(3) prefixes spell it.
fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// An event format that writes `<N>` (the event's syslog priority) before what `inner` writes.
#[derive(Debug)]
pub struct JournalPriority<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for JournalPriority<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_stderrs_own_device_and_inode_is_the_journal() {
        use std::os::unix::fs::MetadataExt;
        assert!(!journal_stream(None));
        assert!(!journal_stream(Some("not:numbers")));
        assert!(!journal_stream(Some("12")));
        // /dev/null is not stderr here (cargo test pipes or inherits a terminal): no match.
        let null = std::fs::metadata("/dev/null").unwrap();
        if let Ok(st) = rustix::fs::fstat(std::io::stderr()) {
            let other = format!("{}:{}", null.dev(), null.ino());
            assert_eq!(
                journal_stream(Some(&other)),
                st.st_dev == null.dev() && st.st_ino == null.ino()
            );
            let own = format!("{}:{}", st.st_dev, st.st_ino);
            assert!(journal_stream(Some(&own)));
        }
    }

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(priority(&Level::ERROR), 3);
        assert_eq!(priority(&Level::WARN), 4);
        assert_eq!(priority(&Level::INFO), 6);
        assert_eq!(priority(&Level::DEBUG), 7);
    }
}
