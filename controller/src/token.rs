//! Minting path tokens, and `orbitctl token`, which prints one for scripts.
//!
//! A token lets one star (the holder) read one path on another star (the audience, the source)
//! until it expires; a tree token ([`mint_tree`]) lets it list and read the entries beneath one
//! directory that its filter admits; a link token ([`mint_link`]) lets it make the relay reads
//! of one path in one fan-out transfer, and no plain read. It is signed with the source star's
//! token key, derived here from the master key; the master key itself never leaves the
//! controller.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use orbit_wire::token::{
    self, Claims, LinkClaims, MasterKey, TokenKey, TreeClaims, LINK_TOKEN_VERSION, NONCE_LEN,
    TOKEN_VERSION, TREE_TOKEN_VERSION,
};
use orbit_wire::tree::Filter;
use orbit_wire::{ByteRange, TransferId};
use rand::RngCore;

use crate::grid::{Grid, GridError};
use crate::spec::{parse_ttl, StarPath};

/// Print a token that lets star HOLDER read a file on star SRC, for scripts.
///
/// The token alone is printed on stdout. Anyone holding it, and a certificate naming HOLDER,
/// can read that one file until it expires.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The file the token allows reading: the source star and the absolute path on it, e.g.
    /// star-a:/srv/data/f.bin.
    #[arg(value_name = "SRC:/abs/path", value_parser = StarPath::parse)]
    pub file: StarPath,

    /// The star that may present the token (the destination of a replication).
    #[arg(long, value_name = "DST")]
    pub holder: String,

    /// How long the token stays valid, in seconds. Default: defaults.ttl_secs in grid.toml,
    /// or 300.
    #[arg(long, value_name = "SECS", value_parser = parse_ttl)]
    pub ttl: Option<u64>,

    /// Print one JSON object instead of the bare token:
    /// {"type":"token","token":..,"source":..,"path":..,"holder":..,"issued_at":..,
    /// "not_after":..}, times in seconds since the Unix epoch.
    /// A failure prints {"type":"result","ok":false,"code":..,"retryable":..,"message":..}.
    #[arg(long)]
    pub json: bool,
}

#[derive(serde::Serialize)]
struct TokenJson<'a> {
    token: &'a str,
    source: &'a str,
    path: &'a str,
    holder: &'a str,
    issued_at: u64,
    not_after: u64,
}

/// What a token grants.
#[derive(Debug, Clone, Copy)]
pub struct Grant<'a> {
    /// The star that serves the file.
    pub source: &'a str,
    /// The star allowed to present the token.
    pub holder: &'a str,
    /// The absolute path on the source star.
    pub path: &'a str,
    /// Issue time, seconds since the Unix epoch: stars cap the lifetime from it to expiry.
    pub issued_at: u64,
    /// Expiry, seconds since the Unix epoch.
    pub not_after: u64,
}

/// Signs a token for `grant` under the source star's key derived from `master`, with the given
/// nonce. The whole file may be read.
pub fn mint_with(master: &MasterKey, grant: &Grant<'_>, nonce: [u8; NONCE_LEN]) -> String {
    let key = TokenKey::derive(master, grant.source);
    token::sign(&grant.claims(TOKEN_VERSION, &key, nonce), &key)
}

/// Signs a token for `holder` to read `path` on `source`, valid for `ttl_secs` from now, with a
/// random nonce.
pub fn mint(master: &MasterKey, source: &str, holder: &str, path: &str, ttl_secs: u64) -> String {
    mint_with(
        master,
        &Grant::from_now(source, holder, path, ttl_secs),
        random_nonce(),
    )
}

/// Signs a link token for `grant` in fan-out transfer `transfer` under the source star's key
/// derived from `master`, with the given nonce: the relay reads of that transfer may read the
/// whole file; a plain read may not.
pub fn mint_link_with(
    master: &MasterKey,
    grant: &Grant<'_>,
    transfer: TransferId,
    nonce: [u8; NONCE_LEN],
) -> String {
    let key = TokenKey::derive(master, grant.source);
    let claims = LinkClaims {
        read: grant.claims(LINK_TOKEN_VERSION, &key, nonce),
        transfer_id: transfer,
    };
    token::sign_link(&claims, &key)
}

/// Signs a link token for `holder` to pull `path` from `source` in transfer `transfer`, valid
/// for `ttl_secs` from now, with a random nonce.
pub fn mint_link(
    master: &MasterKey,
    source: &str,
    holder: &str,
    path: &str,
    transfer: TransferId,
    ttl_secs: u64,
) -> String {
    let grant = Grant::from_now(source, holder, path, ttl_secs);
    mint_link_with(master, &grant, transfer, random_nonce())
}

impl<'a> Grant<'a> {
    /// The whole file's read this grant allows, in claims format `version`, signed by `key`.
    fn claims(&self, version: u8, key: &TokenKey, nonce: [u8; NONCE_LEN]) -> Claims {
        Claims {
            version,
            key_id: key.key_id(),
            audience: self.source.to_owned(),
            holder: self.holder.to_owned(),
            path: self.path.to_owned(),
            range: ByteRange::FULL,
            issued_at: self.issued_at,
            not_after: self.not_after,
            nonce,
        }
    }

    /// A grant issued now and valid for `ttl_secs`.
    fn from_now(source: &'a str, holder: &'a str, path: &'a str, ttl_secs: u64) -> Grant<'a> {
        let now = unix_now();
        Grant {
            source,
            holder,
            path,
            issued_at: now,
            not_after: now.saturating_add(ttl_secs),
        }
    }
}

fn random_nonce() -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    nonce
}

/// Signs a tree token for `grant`, whose path is the tree's top directory, under the source
/// star's key derived from `master`, with the given nonce. Only the entries `filter` admits may
/// be listed and read.
pub fn mint_tree_with(
    master: &MasterKey,
    grant: &Grant<'_>,
    filter: &Filter,
    nonce: [u8; NONCE_LEN],
) -> String {
    let key = TokenKey::derive(master, grant.source);
    let claims = TreeClaims {
        version: TREE_TOKEN_VERSION,
        key_id: key.key_id(),
        audience: grant.source.to_owned(),
        holder: grant.holder.to_owned(),
        path: grant.path.to_owned(),
        filter: filter.clone(),
        issued_at: grant.issued_at,
        not_after: grant.not_after,
        nonce,
    };
    token::sign_tree(&claims, &key)
}

/// Signs a tree token for `holder` to list and read the directory `path` on `source` through
/// `filter`, valid for `ttl_secs` from now, with a random nonce.
pub fn mint_tree(
    master: &MasterKey,
    source: &str,
    holder: &str,
    path: &str,
    filter: &Filter,
    ttl_secs: u64,
) -> String {
    let grant = Grant::from_now(source, holder, path, ttl_secs);
    mint_tree_with(master, &grant, filter, random_nonce())
}

/// Seconds since the Unix epoch; 0 if the clock is set before it.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Runs `orbitctl token`: prints the token alone on stdout, or with `--json` an object.
///
/// # Errors
///
/// [`GridError`] if the grid cannot be read or either star is unknown.
pub fn run(grid_dir: &Path, args: Args) -> Result<(), GridError> {
    let opened = Grid::open(grid_dir).and_then(|grid| {
        grid.star(&args.file.star)?;
        grid.star(&args.holder)?;
        let master = grid.master_key()?;
        Ok((grid, master))
    });
    let (grid, master) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            if args.json {
                println!("{}", crate::json::failure(e.code(), &e.to_string()));
            }
            return Err(e);
        }
    };
    let ttl = args.ttl.unwrap_or(grid.ttl_secs());
    let grant = Grant::from_now(&args.file.star, &args.holder, &args.file.path, ttl);
    let token = mint_with(&master, &grant, random_nonce());
    if args.json {
        let json = TokenJson {
            token: &token,
            source: grant.source,
            path: grant.path,
            holder: grant.holder,
            issued_at: grant.issued_at,
            not_after: grant.not_after,
        };
        println!("{}", crate::json::line(crate::json::TOKEN, &json));
    } else {
        println!("{token}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use orbit_wire::token::{verify, verify_tree, Expected, ExpectedTree, KeyRing, TokenError};

    use super::*;

    #[test]
    fn minted_tokens_verify_under_the_source_key_only() {
        let master = MasterKey::from_bytes([3; 32]);
        let now = unix_now();
        let token = mint(&master, "star-a", "star-b", "/srv/data/f.bin", 60);
        let expected = Expected {
            audience: "star-a",
            holder: "star-b",
            path: "/srv/data/f.bin",
            range: ByteRange::FULL,
            now,
        };
        let verified = verify(&token, &TokenKey::derive(&master, "star-a"), &expected).unwrap();
        let claims = verified.claims();
        assert_eq!(claims.version, TOKEN_VERSION);
        assert!((now + 59..=now + 61).contains(&claims.not_after));
        assert_eq!(claims.range, ByteRange::FULL);

        // Another star's key does not verify it, and it expires.
        let other = TokenKey::derive(&master, "star-b");
        assert!(matches!(
            verify(&token, &other, &expected),
            Err(TokenError::UnknownKey(_))
        ));
        let late = Expected {
            now: now + 120,
            ..expected
        };
        let key = TokenKey::derive(&master, "star-a");
        assert!(matches!(
            verify(&token, &key, &late),
            Err(TokenError::Expired(_))
        ));
        // Two tokens for the same read differ by their nonce.
        assert_ne!(
            token,
            mint(&master, "star-a", "star-b", "/srv/data/f.bin", 60)
        );
    }

    #[test]
    fn mint_with_is_deterministic() {
        let master = MasterKey::from_bytes([3; 32]);
        let grant = Grant {
            source: "a",
            holder: "b",
            path: "/p",
            issued_at: 1_799_999_000,
            not_after: 1_800_000_000,
        };
        assert_eq!(
            mint_with(&master, &grant, [1; NONCE_LEN]),
            mint_with(&master, &grant, [1; NONCE_LEN])
        );
        let claims = token::decode_unverified(&mint_with(&master, &grant, [1; NONCE_LEN])).unwrap();
        assert_eq!(claims.audience, "a");
        assert_eq!(claims.holder, "b");
        assert_eq!(claims.not_after, 1_800_000_000);
        assert_eq!(claims.lifetime(), 1000);
    }

    #[test]
    fn link_tokens_bind_the_transfer_and_are_no_plain_read() {
        use orbit_wire::token::{verify_link, verify_with, ExpectedLink};
        let master = MasterKey::from_bytes([3; 32]);
        let now = unix_now();
        let link = mint_link(&master, "star-a", "star-b", "/srv/f", TransferId(7), 60);
        let ring = KeyRing::from(TokenKey::derive(&master, "star-a"));
        let read = Expected {
            audience: "star-a",
            holder: "star-b",
            path: "/srv/f",
            range: ByteRange::FULL,
            now,
        };
        let expected = ExpectedLink {
            read,
            transfer_id: TransferId(7),
        };
        let verified = verify_link(&link, &ring, &expected).unwrap();
        let claims = verified.claims();
        assert_eq!(claims.read.version, LINK_TOKEN_VERSION);
        assert_eq!(claims.transfer_id, TransferId(7));
        assert!((now + 59..=now + 61).contains(&claims.read.not_after));
        assert_eq!(
            verify_with(&link, &ring, &read).unwrap_err(),
            TokenError::LinkOnly
        );
        let elsewhere = ExpectedLink {
            transfer_id: TransferId(8),
            ..expected
        };
        assert!(matches!(
            verify_link(&link, &ring, &elsewhere),
            Err(TokenError::WrongTransfer { .. })
        ));
    }

    #[test]
    fn tree_tokens_bind_the_directory_and_the_filter() {
        let master = MasterKey::from_bytes([3; 32]);
        let now = unix_now();
        let filter = Filter {
            exclude: vec!["*.tmp".into()],
            include: vec!["keep.tmp".into()],
            links: true,
        };
        let tree = mint_tree(&master, "star-a", "star-b", "/srv/data", &filter, 60);
        let ring = KeyRing::new(TokenKey::derive(&master, "star-a"), None);
        let expected = ExpectedTree {
            audience: "star-a",
            holder: "star-b",
            path: "/srv/data",
            now,
        };
        let verified = verify_tree(&tree, &ring, &expected).unwrap();
        let claims = verified.claims();
        assert_eq!(claims.version, TREE_TOKEN_VERSION);
        assert_eq!(claims.filter, filter);
        assert!((now + 59..=now + 61).contains(&claims.not_after));

        // Not for another directory, and not as a single-file token.
        let elsewhere = ExpectedTree {
            path: "/srv",
            ..expected
        };
        assert!(matches!(
            verify_tree(&tree, &ring, &elsewhere),
            Err(TokenError::WrongPath)
        ));
        let as_file = Expected {
            audience: "star-a",
            holder: "star-b",
            path: "/srv/data",
            range: ByteRange::FULL,
            now,
        };
        assert!(verify(&tree, ring.current(), &as_file).is_err());
        assert_ne!(
            tree,
            mint_tree(&master, "star-a", "star-b", "/srv/data", &filter, 60)
        );
    }
}
