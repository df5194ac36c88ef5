//! The syntax of `orbitctl`'s command-line values: `NAME=HOST:PORT`, `STAR:/abs/path`, sizes,
//! SHA-256 digests, token lifetimes and the glob patterns of a tree's filter.
//!
//! Every parser here is a pure function from text to a value, used by clap as a `value_parser`
//! so that a malformed value is a usage error (exit code 2) before anything is read or written.
//! Nothing here touches the grid, the network or the disk.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// Why a command-line value was refused. Each message names the value and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// `NAME=HOST:PORT` without the `=`.
    #[error("expected NAME=HOST:PORT, e.g. star-a=10.0.0.1:7400, got {0:?}")]
    NoEquals(String),
    /// A star name that is not a DNS label.
    #[error("{0}")]
    Name(String),
    /// An address that is not `HOST:PORT`.
    #[error("bad address {addr:?}: {reason}")]
    Addr {
        /// The address as given.
        addr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `STAR:/abs/path` without the `:`.
    #[error("expected STAR:/abs/path, e.g. star-a:/srv/data/f.bin, got {0:?}")]
    NoColon(String),
    /// The path half of `STAR:/abs/path` is not a plain absolute path.
    #[error("bad path {path:?}: {reason}")]
    Path {
        /// The path as given.
        path: String,
        /// Which rule it breaks.
        reason: String,
    },
    /// A size that is not a number with an optional unit.
    #[error("bad size {0:?}: expected bytes, optionally with a unit such as 64MiB, 1GiB or 500MB")]
    Size(String),
    /// A digest that is not 64 hexadecimal digits.
    #[error("bad sha256 {0:?}: expected 64 hexadecimal digits")]
    Sha256(String),
    /// A token lifetime that is not a positive number of seconds.
    #[error("bad ttl {0:?}: expected a whole number of seconds, at least 1")]
    Ttl(String),
    /// A glob pattern the filter cannot apply.
    #[error("bad pattern: {0}")]
    Glob(String),
}

/// Where a star listens, as written in `grid.toml`: `HOST:PORT`, where `HOST` is an IPv4
/// address, a bracketed IPv6 address or a DNS host name. In TOML it is that string.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StarAddr {
    host: Host,
    port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Ip(IpAddr),
    Name(String),
}

impl StarAddr {
    /// Parses `HOST:PORT`.
    ///
    /// # Errors
    ///
    /// [`SpecError::Addr`] naming the problem: no port, a port that is not 1 to 65535, an
    /// IPv6 address without brackets, or a host that is neither an IP address nor a host name.
    pub fn parse(text: &str) -> Result<StarAddr, SpecError> {
        let bad = |reason: &str| SpecError::Addr {
            addr: text.to_owned(),
            reason: reason.to_owned(),
        };
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (ip, port) = rest
                .split_once("]:")
                .ok_or_else(|| bad("expected [IPv6]:PORT"))?;
            let ip: Ipv6Addr = ip.parse().map_err(|_| bad("not an IPv6 address"))?;
            (Host::Ip(IpAddr::V6(ip)), port)
        } else {
            let (host, port) = text
                .rsplit_once(':')
                .ok_or_else(|| bad("expected HOST:PORT, e.g. 10.0.0.1:7400"))?;
            if host.contains(':') {
                return Err(bad("put an IPv6 address in brackets, e.g. [::1]:7400"));
            }
            let host = match host.parse::<IpAddr>() {
                Ok(ip) => Host::Ip(ip),
                Err(_) => {
                    check_host_name(host).map_err(bad)?;
                    Host::Name(host.to_owned())
                }
            };
            (host, port)
        };
        let port = match port.parse::<u16>() {
            Ok(0) | Err(_) => return Err(bad("the port must be a number from 1 to 65535")),
            Ok(port) => port,
        };
        Ok(StarAddr { host, port })
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// What the star itself should listen on: the same address when the host is an IP
    /// literal, otherwise every IPv4 interface on the port.
    pub fn listen_addr(&self) -> SocketAddr {
        match self.host {
            Host::Ip(ip) => SocketAddr::new(ip, self.port),
            Host::Name(_) => SocketAddr::from(([0, 0, 0, 0], self.port)),
        }
    }
}

impl fmt::Display for StarAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(ip) => SocketAddr::new(*ip, self.port).fmt(f),
            Host::Name(name) => write!(f, "{name}:{}", self.port),
        }
    }
}

impl TryFrom<String> for StarAddr {
    type Error = SpecError;

    fn try_from(text: String) -> Result<StarAddr, SpecError> {
        StarAddr::parse(&text)
    }
}

impl From<StarAddr> for String {
    fn from(addr: StarAddr) -> String {
        addr.to_string()
    }
}

/// A DNS host name: dot-separated labels of letters, digits and `-`, at most 253 bytes.
fn check_host_name(host: &str) -> Result<(), &'static str> {
    if host.is_empty() {
        return Err("the host is empty");
    }
    if host.len() > 253 {
        return Err("the host name is longer than 253 bytes");
    }
    for label in host.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok {
            return Err("the host is neither an IP address nor a valid host name");
        }
    }
    Ok(())
}

/// A star and its address, from `NAME=HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StarSpec {
    /// The star's name, a valid DNS label.
    pub name: String,
    /// Where it listens.
    pub addr: StarAddr,
}

impl StarSpec {
    /// Parses `NAME=HOST:PORT`.
    ///
    /// # Errors
    ///
    /// [`SpecError`] naming what is wrong with the name or the address.
    pub fn parse(text: &str) -> Result<StarSpec, SpecError> {
        let (name, addr) = text
            .split_once('=')
            .ok_or_else(|| SpecError::NoEquals(text.to_owned()))?;
        orbit_certs::validate_star_name(name).map_err(|e| SpecError::Name(e.to_string()))?;
        Ok(StarSpec {
            name: name.to_owned(),
            addr: StarAddr::parse(addr)?,
        })
    }
}

/// A file on a star, from `STAR:/abs/path`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StarPath {
    /// The star's name.
    pub star: String,
    /// The absolute path on that star, checked with [`orbit_wire::path::validate`].
    pub path: String,
}

impl StarPath {
    /// Parses `STAR:/abs/path`, splitting at the first `:`.
    ///
    /// # Errors
    ///
    /// [`SpecError`] when there is no `:`, the star name is not valid, or the path is not a
    /// plain absolute path (no `.`, `..`, `//`, trailing `/` or NUL).
    pub fn parse(text: &str) -> Result<StarPath, SpecError> {
        let (star, path) = text
            .split_once(':')
            .ok_or_else(|| SpecError::NoColon(text.to_owned()))?;
        orbit_certs::validate_name(star).map_err(|e| SpecError::Name(e.to_string()))?;
        orbit_wire::path::validate(path).map_err(|e| SpecError::Path {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(StarPath {
            star: star.to_owned(),
            path: path.to_owned(),
        })
    }
}

impl StarPath {
    /// Parses `STAR:/abs/dir`, a directory: one trailing `/` is dropped before the checks of
    /// [`parse`](Self::parse), so `star-a:/srv/data/` and `star-a:/srv/data` are the same.
    ///
    /// # Errors
    ///
    /// As [`parse`](Self::parse).
    pub fn parse_dir(text: &str) -> Result<StarPath, SpecError> {
        StarPath::parse(text.strip_suffix('/').unwrap_or(text))
    }
}

/// Checks `STAR:/abs/path` for clap as a file or a directory (one trailing `/` allowed) and
/// keeps the text: whether it must name a file depends on `--recursive`, which clap's value
/// parsers cannot see.
///
/// # Errors
///
/// As [`StarPath::parse_dir`].
pub fn star_path_text(text: &str) -> Result<String, SpecError> {
    StarPath::parse_dir(text)?;
    Ok(text.to_owned())
}

impl fmt::Display for StarPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.star, self.path)
    }
}

/// Parses a size in bytes: a whole number, optionally followed by a unit. Binary units (`KiB`,
/// `MiB`, `GiB`, `TiB`, and the short `K`, `M`, `G`, `T`) count in 1024s, decimal ones (`kB`,
/// `MB`, `GB`, `TB`) in 1000s; `B` is bytes. Units are case-insensitive.
///
/// # Errors
///
/// [`SpecError::Size`] for anything else, or a size beyond `u64`.
pub fn parse_size(text: &str) -> Result<u64, SpecError> {
    let bad = || SpecError::Size(text.to_owned());
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    let number: u64 = digits.parse().map_err(|_| bad())?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(bad()),
    };
    number.checked_mul(multiplier).ok_or_else(bad)
}

/// Parses a SHA-256 digest written as 64 hexadecimal digits (either case).
///
/// # Errors
///
/// [`SpecError::Sha256`] for anything else.
pub fn parse_sha256(text: &str) -> Result<[u8; 32], SpecError> {
    let mut digest = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut digest)
        .map_err(|_| SpecError::Sha256(text.to_owned()))?;
    Ok(digest)
}

/// Parses a token lifetime: a whole number of seconds, at least 1.
///
/// # Errors
///
/// [`SpecError::Ttl`] for anything else.
pub fn parse_ttl(text: &str) -> Result<u64, SpecError> {
    match text.trim().parse::<u64>() {
        Ok(secs) if secs > 0 => Ok(secs),
        _ => Err(SpecError::Ttl(text.to_owned())),
    }
}

/// Checks one glob pattern of `--exclude` or `--include` with the filter's own rules
/// ([`orbit_wire::tree::Filter::check`]).
///
/// # Errors
///
/// [`SpecError::Glob`] for a pattern the filter refuses (empty, `/` alone, or with a NUL).
pub fn parse_glob(text: &str) -> Result<String, SpecError> {
    let filter = orbit_wire::tree::Filter {
        exclude: vec![text.to_owned()],
        ..Default::default()
    };
    filter.check().map_err(SpecError::Glob)?;
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_paths_split_at_the_first_colon() {
        let p = StarPath::parse("star-a:/srv/data/f.bin").unwrap();
        assert_eq!(p.star, "star-a");
        assert_eq!(p.path, "/srv/data/f.bin");
        assert_eq!(p.to_string(), "star-a:/srv/data/f.bin");
        // A colon inside the path belongs to the path.
        let p = StarPath::parse("b:/x:y").unwrap();
        assert_eq!((p.star.as_str(), p.path.as_str()), ("b", "/x:y"));
    }

    #[test]
    fn bad_star_paths_are_refused() {
        assert!(matches!(
            StarPath::parse("/srv/f"),
            Err(SpecError::NoColon(_))
        ));
        assert!(matches!(
            StarPath::parse("star-a:srv/f"),
            Err(SpecError::Path { .. })
        ));
        assert!(matches!(
            StarPath::parse("star-a:/srv/../f"),
            Err(SpecError::Path { .. })
        ));
        assert!(matches!(
            StarPath::parse("star-a:/"),
            Err(SpecError::Path { .. })
        ));
        assert!(matches!(
            StarPath::parse("Star_A:/f"),
            Err(SpecError::Name(_))
        ));
        assert!(matches!(StarPath::parse(":/f"), Err(SpecError::Name(_))));
    }

    #[test]
    fn a_directory_may_end_with_one_slash() {
        for text in ["star-a:/srv/data", "star-a:/srv/data/"] {
            let p = StarPath::parse_dir(text).unwrap();
            assert_eq!((p.star.as_str(), p.path.as_str()), ("star-a", "/srv/data"));
            assert_eq!(star_path_text(text).unwrap(), text);
        }
        assert!(StarPath::parse("star-a:/srv/data/").is_err());
        for bad in [
            "star-a:/srv/data//",
            "star-a:/",
            "star-a:srv/",
            "star-a:/a/../b/",
        ] {
            assert!(StarPath::parse_dir(bad).is_err(), "{bad}");
            assert!(star_path_text(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn globs_are_checked_by_the_filter_rules() {
        assert_eq!(parse_glob("*.tmp").unwrap(), "*.tmp");
        assert_eq!(parse_glob("/build/**").unwrap(), "/build/**");
        for bad in ["", "/", "a\0b"] {
            let err = parse_glob(bad).unwrap_err();
            assert!(err.to_string().starts_with("bad pattern: "), "{err}");
        }
    }

    #[test]
    fn star_specs_and_addresses() {
        let s = StarSpec::parse("star-a=10.0.0.1:7400").unwrap();
        assert_eq!(s.name, "star-a");
        assert_eq!(s.addr.to_string(), "10.0.0.1:7400");
        assert_eq!(s.addr.listen_addr().to_string(), "10.0.0.1:7400");

        let s = StarSpec::parse("b=host-1.example.org:9").unwrap();
        assert_eq!(s.addr.to_string(), "host-1.example.org:9");
        assert_eq!(s.addr.listen_addr().to_string(), "0.0.0.0:9");
        assert_eq!(s.addr.port(), 9);

        let s = StarSpec::parse("c=[::1]:7400").unwrap();
        assert_eq!(s.addr.to_string(), "[::1]:7400");
        assert_eq!(s.addr.listen_addr().to_string(), "[::1]:7400");

        for bad in [
            "star-a",
            "star-a=host",
            "star-a=host:0",
            "star-a=host:65536",
            "star-a=host:x",
            "star-a=::1:7400",
            "star-a=[::1]7400",
            "star-a=:7400",
            "star-a=bad_host:7400",
            "star-a=-bad:7400",
            "star-a=a..b:7400",
            "Star=host:1",
            "=host:1",
        ] {
            assert!(StarSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_take_plain_bytes_and_units() {
        assert_eq!(parse_size("0").unwrap(), 0);
        assert_eq!(parse_size("268435456").unwrap(), 268_435_456);
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("64mib").unwrap(), 64 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("4 KiB").unwrap(), 4096);
        assert_eq!(parse_size("500MB").unwrap(), 500_000_000);
        assert_eq!(parse_size("7B").unwrap(), 7);
        for bad in ["", "MiB", "1.5GiB", "-1", "12 parsecs", "99999999999TiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn digests_and_ttls() {
        let hex = "ab".repeat(32);
        assert_eq!(parse_sha256(&hex).unwrap(), [0xab; 32]);
        assert_eq!(parse_sha256(&hex.to_uppercase()).unwrap(), [0xab; 32]);
        assert!(parse_sha256("ab").is_err());
        assert!(parse_sha256(&"zz".repeat(32)).is_err());
        assert!(parse_sha256(&"ab".repeat(33)).is_err());
        assert_eq!(parse_ttl("60").unwrap(), 60);
        assert!(parse_ttl("0").is_err());
        assert!(parse_ttl("-5").is_err());
        assert!(parse_ttl("1m").is_err());
    }
}
