//! The JSON lines orbitctl prints with `--json`: every line is one object, and its first field,
//! `type`, says what the line is, so that a script reading NDJSON can dispatch on it (as
//! restic's `message_type`). Lines that had an `event` field before keep it, with the same
//! value as `type`.
//!
//! It only formats; it never prints.

use serde::Serialize;

/// A progress event of a transfer.
pub const PROGRESS: &str = "progress";
/// One entry of a tree (`--itemize`).
pub const ITEM: &str = "item";
/// A fan-out's plan, before it starts.
pub const PLAN: &str = "plan";
/// The outcome of the command: a replication's result (`"ok"` true or false), a detached
/// start, a cancellation, or a failure before anything ran.
pub const RESULT: &str = "result";
/// One destination of a fan-out (or one star of a `cancel` of several), as it ends.
pub const DESTINATION: &str = "destination";
/// One line of a batch (`replicate --from-file`), as it ends.
pub const JOB: &str = "job";
/// The last line of a fan-out, of a `cancel` of several stars, or of a batch.
pub const SUMMARY: &str = "summary";
/// `orbitctl status`'s report.
pub const STATUS: &str = "status";
/// `orbitctl init`'s new grid.
pub const GRID: &str = "grid";
/// `orbitctl add-star`'s new star.
pub const STAR: &str = "star";
/// `orbitctl rotate-keys`'s step.
pub const KEYS: &str = "keys";
/// `orbitctl renew`'s step.
pub const RENEW: &str = "renew";
/// `orbitctl revoke`'s revocation.
pub const REVOKED: &str = "revoked";
/// `orbitctl token`'s token.
pub const TOKEN: &str = "token";

#[derive(Serialize)]
struct Failure<'a> {
    ok: bool,
    code: &'static str,
    retryable: bool,
    message: &'a str,
}

/// The `--json` object of a failure, on one line:
/// `{"type":"result","ok":false,"code":"NotFound","retryable":false,"message":".."}`.
pub fn failure(code: orbit_wire::ErrorCode, message: &str) -> String {
    failure_as(RESULT, code, message)
}

/// As [`failure`], with another `type`.
pub fn failure_as(kind: &'static str, code: orbit_wire::ErrorCode, message: &str) -> String {
    let json = Failure {
        ok: false,
        code: code.name(),
        retryable: crate::exit::retryable(code),
        message,
    };
    line(kind, &json)
}

#[derive(Serialize)]
struct Typed<'a, T> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    body: &'a T,
}

/// `body`, a struct, as one line of JSON with `"type": kind` first.
pub fn line<T: Serialize>(kind: &'static str, body: &T) -> String {
    serde_json::to_string(&Typed { kind, body }).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_type_comes_first_and_the_fields_follow() {
        #[derive(serde::Serialize)]
        struct Body {
            ok: bool,
            n: u32,
        }
        assert_eq!(
            super::line(super::RESULT, &Body { ok: true, n: 3 }),
            r#"{"type":"result","ok":true,"n":3}"#
        );
    }
}
