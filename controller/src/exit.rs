//! orbitctl's exit codes: one table for every command, so that a script, cron or a scheduler can
//! tell "try again later" from "this will not work until someone fixes something" without
//! reading the message. The class of a failure comes from its wire [`ErrorCode`] alone, in
//! [`class`]; the message text never decides an exit code.
//!
//! Codes are only ever added: 0, 1, 2, 3 and 130 mean what they meant before 4 came.

use orbit_wire::ErrorCode;

/// Done: everything asked for was done (and, for a replication, verified).
pub const OK: u8 = 0;
/// Failed for a reason that running the same command again will not fix: permission denied,
/// not found, outside the roots, a bad token, a digest mismatch (data loss), a cancellation
/// someone asked for, an internal error.
pub const FAILED: u8 = 1;
/// A usage error: a bad option, path, pattern or batch line. Nothing was contacted (clap's
/// own code for a bad command line, too).
pub const USAGE: u8 = 2;
/// Partly done: a tree was walked to the end, but some files failed or `--delete` did not
/// run.
pub const INCOMPLETE: u8 = 3;
/// Failed for a reason that may go away by itself: a star unreachable or shutting down, a
/// deadline passed, a connection lost, a star out of slots or space. The same command may
/// succeed later.
pub const TEMPORARY: u8 = 4;
/// Interrupted with Ctrl-C: the transfer was cancelled (as shells report a process ended by
/// SIGINT).
pub const INTERRUPTED: u8 = 130;

/// The table as `orbitctl --help` shows it.
pub const TABLE: &str = "\
Exit codes (every command; scripts can rely on them):
  0    done
  1    failed, and running the same command again will not fix it: permission denied, not
       found, outside the roots, a bad token or certificate, a digest mismatch, cancelled by
       someone, an internal error
  2    usage: a bad option, path, pattern or batch line; nothing was contacted
  3    partly done (replicate --recursive, wait): the tree was walked to the end but some
       files failed, or --delete did not run
  4    temporary: a star was unreachable or shutting down, a deadline passed, a connection
       was lost, or a star was out of slots or space; the same command may succeed later
  130  interrupted with Ctrl-C; the transfer was cancelled
With --json, a failure's object carries its wire code (\"code\") and \"retryable\", which is
true exactly when the code alone would give exit code 4.";

/// Whether retrying can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The same request will fail the same way until something is changed by a person.
    Permanent,
    /// The same request may succeed later, with nothing changed.
    Temporary,
}

/// The class of a failure with wire code `code`. Every code is named: a new code must be
/// classified before orbitctl compiles.
pub fn class(code: ErrorCode) -> Class {
    match code {
        // The peer is down, restarting or unreachable; a deadline passed; a star had no free
        // transfer slot or no space (slots free up as transfers end, and an operator may
        // clear space: a bounded retry costs little).
        ErrorCode::Unavailable | ErrorCode::DeadlineExceeded | ErrorCode::ResourceExhausted => {
            Class::Temporary
        }
        // Refusals: the token, the certificate, the path, the file or the grid must change
        // first.
        ErrorCode::PermissionDenied
        | ErrorCode::Unauthenticated
        | ErrorCode::NotFound
        | ErrorCode::InvalidArgument
        | ErrorCode::FailedPrecondition => Class::Permanent,
        // Another replication writes the same target: retrying races with it.
        ErrorCode::AlreadyExists => Class::Permanent,
        // The bytes did not match: a retry would hide corruption that someone must look at.
        ErrorCode::DataLoss => Class::Permanent,
        // Someone cancelled the transfer (`orbitctl cancel`); a retry would undo their
        // decision. A star that is shutting down says Unavailable, not Cancelled.
        ErrorCode::Cancelled => Class::Permanent,
        // A bug or an unexpected failure: retrying blindly hides it.
        ErrorCode::Internal => Class::Permanent,
    }
}

/// Whether a failure with wire code `code` may go away by itself.
pub fn retryable(code: ErrorCode) -> bool {
    class(code) == Class::Temporary
}

/// The exit code of a failure with wire code `code`: [`TEMPORARY`] or [`FAILED`].
pub fn of_code(code: ErrorCode) -> u8 {
    match class(code) {
        Class::Permanent => FAILED,
        Class::Temporary => TEMPORARY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_codes_that_can_clear_by_themselves_are_temporary() {
        let temporary: Vec<ErrorCode> = ErrorCode::ALL
            .into_iter()
            .filter(|code| retryable(*code))
            .collect();
        assert_eq!(
            temporary,
            [
                ErrorCode::ResourceExhausted,
                ErrorCode::Unavailable,
                ErrorCode::DeadlineExceeded
            ]
        );
        assert_eq!(of_code(ErrorCode::Unavailable), TEMPORARY);
        assert_eq!(of_code(ErrorCode::NotFound), FAILED);
        assert_eq!(of_code(ErrorCode::DataLoss), FAILED);
    }

    #[test]
    fn the_table_names_every_code() {
        for code in [OK, FAILED, USAGE, INCOMPLETE, TEMPORARY, INTERRUPTED] {
            assert!(
                TABLE
                    .lines()
                    .any(|l| l.trim_start().starts_with(&format!("{code} "))),
                "{code}"
            );
        }
    }
}
