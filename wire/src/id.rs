//! The transfer id: the one number that names a replication in every message, log line and
//! command that concerns it, and the one way it is written down.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A transfer's id: 64 bits the controller draws at random when it starts a replication. Both
/// stars log it and `orbitctl wait` and `orbitctl cancel` take it, always written as
/// [`Display`](fmt::Display) writes it: 16 lowercase hexadecimal digits.
///
/// On the wire it is exactly the `u64` it wraps (`serde(transparent)`), so messages encode as
/// they did when the field was a bare `u64`. The crate draws no randomness: the controller makes
/// new ids, as `TransferId(rand::random())`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TransferId(pub u64);

impl fmt::Display for TransferId {
    /// 16 lowercase hexadecimal digits, zero-padded, so that every id has the same width in
    /// logs and tables and reads back with [`FromStr`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl FromStr for TransferId {
    type Err = ParseTransferIdError;

    /// Parses 1 to 16 hexadecimal digits, in either case. Shorter forms are accepted because a
    /// person may drop the leading zeros; signs, prefixes and spaces are not.
    fn from_str(text: &str) -> Result<TransferId, ParseTransferIdError> {
        let error = || ParseTransferIdError {
            text: text.to_owned(),
        };
        // `from_str_radix` alone would also take a leading `+`: check the digits first.
        if text.is_empty() || text.len() > 16 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(error());
        }
        u64::from_str_radix(text, 16)
            .map(TransferId)
            .map_err(|_| error())
    }
}

/// Text that is not a transfer id. Its message tells a person what an id looks like.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{text:?} is not a transfer id: expected up to 16 hexadecimal digits, as \
     `orbitctl replicate --detach` prints"
)]
pub struct ParseTransferIdError {
    /// The text as given.
    text: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_16_lowercase_hex_digits_and_parses_back() {
        for id in [0, 0xabc, 0x0123_4567_89ab_cdef, u64::MAX] {
            let id = TransferId(id);
            let text = id.to_string();
            assert_eq!(text.len(), 16, "{text}");
            assert!(!text.bytes().any(|b| b.is_ascii_uppercase()), "{text}");
            assert_eq!(text.parse::<TransferId>(), Ok(id));
        }
        assert_eq!(TransferId(0xabc).to_string(), "0000000000000abc");
        assert_eq!(TransferId(u64::MAX).to_string(), "ffffffffffffffff");
    }

    #[test]
    fn parsing_takes_up_to_16_hex_digits_in_either_case() {
        assert_eq!("00000000000000ff".parse(), Ok(TransferId(255)));
        assert_eq!("ABC".parse(), Ok(TransferId(0xabc)));
        for bad in [
            "",
            "0123456789abcdef0",
            "star-b",
            "+1",
            "-1",
            "0x1",
            " 1",
            "1 ",
        ] {
            assert!(bad.parse::<TransferId>().is_err(), "{bad:?}");
        }
        assert_eq!(
            "star-b".parse::<TransferId>().unwrap_err().to_string(),
            "\"star-b\" is not a transfer id: expected up to 16 hexadecimal digits, as \
             `orbitctl replicate --detach` prints"
        );
    }
}
