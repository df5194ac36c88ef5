//! Who a peer is: the [`Role`] and name carried in an Orbit certificate's `orbit:<role>:<name>`
//! URI, the naming rule for stars and controllers, and the reading of an identity from a
//! certificate that rustls has already verified.
//!
//! This module never verifies a chain or a signature; that is rustls's job, done before
//! [`peer_identity`] is called.

use std::fmt;

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

use crate::CertError;

/// The scheme of the SAN URI that carries an Orbit identity.
const URI_PREFIX: &str = "orbit:";

/// The longest name: a DNS label.
const MAX_NAME_LEN: usize = 63;

/// What a certificate's holder is allowed to be in a grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A daemon: serves reads to other stars and takes commands from the controller. Its
    /// certificate is good for both server and client authentication.
    Star,
    /// The command-line controller: only ever a client.
    Controller,
}

impl Role {
    /// The role word used in Display and in the identity URI.
    fn as_str(self) -> &'static str {
        match self {
            Role::Star => "star",
            Role::Controller => "controller",
        }
    }

    fn from_word(word: &str) -> Option<Role> {
        match word {
            "star" => Some(Role::Star),
            "controller" => Some(Role::Controller),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The identity a verified peer certificate proves: its role and its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// Star or controller.
    pub role: Role,
    /// The star or controller name; always passes [`validate_name`].
    pub name: String,
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.role, self.name)
    }
}

/// The SAN URI that names `role` `name`, e.g. `orbit:star:star-a`.
pub(crate) fn identity_uri(role: Role, name: &str) -> String {
    format!("{URI_PREFIX}{role}:{name}")
}

/// Names no star may take: the controller's name, which `orbitctl revoke orbitctl` and the logs
/// use for the controller, and the names of the roles. A star called `orbitctl` would read as
/// the controller in every log line and report.
pub const RESERVED_STAR_NAMES: [&str; 3] = ["orbitctl", "controller", "star"];

/// Checks that `name` is a valid star name: a valid name ([`validate_name`]) that is not one of
/// the [`RESERVED_STAR_NAMES`].
///
/// # Errors
///
/// [`CertError::InvalidName`], whose reason names the rule broken.
pub fn validate_star_name(name: &str) -> Result<(), CertError> {
    validate_name(name)?;
    if RESERVED_STAR_NAMES.contains(&name) {
        return Err(CertError::InvalidName {
            name: name.to_owned(),
            reason: "is reserved (the controller's name or a role); choose another name".into(),
        });
    }
    Ok(())
}

/// Checks that `name` is a valid star or controller name: a DNS label of 1 to 63 bytes of
/// `a-z`, `0-9` and `-`, neither starting nor ending with `-`.
///
/// # Errors
///
/// [`CertError::InvalidName`], whose reason names the rule broken.
pub fn validate_name(name: &str) -> Result<(), CertError> {
    let invalid = |reason: String| CertError::InvalidName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("must not be empty".into()));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid(format!(
            "is {} bytes long, at most {MAX_NAME_LEN} are allowed",
            name.len()
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-'))
    {
        return Err(invalid(format!(
            "contains {bad:?}; only lowercase letters a-z, digits 0-9 and '-' are allowed"
        )));
    }
    if name.starts_with('-') {
        return Err(invalid("must not start with '-'".into()));
    }
    if name.ends_with('-') {
        return Err(invalid("must not end with '-'".into()));
    }
    Ok(())
}

/// Reads the Orbit identity of a peer certificate that rustls has already verified.
///
/// The certificate must carry exactly one SAN URI starting with `orbit:`, of the form
/// `orbit:star:<name>` or `orbit:controller:<name>`, with a valid name. A star identity also
/// requires the extended key usages serverAuth and clientAuth, a controller identity clientAuth.
/// This does not verify the chain: call it only on a certificate rustls accepted, such as
/// `peer_certificates()[0]` of an established connection.
///
/// # Errors
///
/// [`CertError::Parse`] if the certificate is not well-formed X.509, and
/// [`CertError::NoIdentity`] if there is no Orbit URI, more than one, an unknown role word, an
/// invalid name, or the key usages do not fit the role.
pub fn peer_identity(cert: &CertificateDer<'_>) -> Result<PeerIdentity, CertError> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| CertError::Parse(e.to_string()))?;
    let no_identity = CertError::NoIdentity;

    let san = x509
        .subject_alternative_name()
        .map_err(|e| CertError::Parse(format!("subject alternative names: {e}")))?
        .ok_or_else(|| no_identity("no subject alternative names".into()))?;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(uri) if uri.starts_with(URI_PREFIX) => Some(*uri),
        _ => None,
    });
    let uri = uris
        .next()
        .ok_or_else(|| no_identity("no orbit: uri".into()))?;
    if let Some(other) = uris.next() {
        return Err(no_identity(format!(
            "more than one orbit: uri ({uri:?}, {other:?})"
        )));
    }

    let rest = &uri[URI_PREFIX.len()..];
    let (word, name) = rest
        .split_once(':')
        .ok_or_else(|| no_identity(format!("{uri:?} is not orbit:<role>:<name>")))?;
    let role = Role::from_word(word)
        .ok_or_else(|| no_identity(format!("unknown role {word:?} in {uri:?}")))?;
    validate_name(name).map_err(|e| no_identity(e.to_string()))?;

    let eku = x509
        .extended_key_usage()
        .map_err(|e| CertError::Parse(format!("extended key usage: {e}")))?
        .map(|ext| ext.value);
    let (server_auth, client_auth) = eku.map_or((false, false), |e| (e.server_auth, e.client_auth));
    let fits = match role {
        Role::Star => server_auth && client_auth,
        Role::Controller => client_auth,
    };
    if !fits {
        let needs = match role {
            Role::Star => "serverAuth and clientAuth",
            Role::Controller => "clientAuth",
        };
        return Err(no_identity(format!(
            "a {role} certificate needs the extended key usages {needs}"
        )));
    }

    Ok(PeerIdentity {
        role,
        name: name.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, ExtendedKeyUsagePurpose as Eku, KeyPair, SanType};

    use super::*;

    #[test]
    fn a_star_may_not_take_a_reserved_name() {
        for name in RESERVED_STAR_NAMES {
            assert!(validate_name(name).is_ok());
            let err = validate_star_name(name).unwrap_err().to_string();
            assert!(err.contains("is reserved"), "{err}");
        }
        assert!(validate_star_name("star-a").is_ok());
        assert!(validate_star_name("orbitctl2").is_ok());
    }
    use crate::GridCa;

    #[test]
    fn validate_name_accepts_dns_labels() {
        for name in ["star-a", "a", "0", "a-b-c9", &"a".repeat(63)] {
            assert!(validate_name(name).is_ok(), "{name:?} should be valid");
        }
    }

    #[test]
    fn validate_name_rejects_everything_else() {
        let cases = [
            ("", "empty"),
            ("-a", "start with '-'"),
            ("a-", "end with '-'"),
            ("A", "'A'"),
            ("a.b", "'.'"),
            ("a_b", "'_'"),
            ("a b", "' '"),
            ("é", "'é'"),
            (&"a".repeat(64), "64 bytes"),
        ];
        for (name, rule) in cases {
            let err = validate_name(name).expect_err(name).to_string();
            assert!(
                err.contains(rule),
                "{name:?}: {err:?} should mention {rule:?}"
            );
        }
    }

    #[test]
    fn display() {
        let star = PeerIdentity {
            role: Role::Star,
            name: "star-a".into(),
        };
        let ctl = PeerIdentity {
            role: Role::Controller,
            name: "orbitctl".into(),
        };
        assert_eq!(star.to_string(), "star star-a");
        assert_eq!(ctl.to_string(), "controller orbitctl");
    }

    #[test]
    fn issued_certificates_carry_their_identity() {
        let ca = GridCa::generate("test").unwrap();
        for (role, name) in [(Role::Star, "star-a"), (Role::Controller, "orbitctl")] {
            let issued = ca.issue(role, name).unwrap();
            let der = crate::load_certs(&issued.cert_pem).unwrap().remove(0);
            let id = peer_identity(&der).unwrap();
            assert_eq!(
                id,
                PeerIdentity {
                    role,
                    name: name.into()
                }
            );
        }
    }

    /// A self-signed certificate with the given URIs and EKUs; `peer_identity` does not look at
    /// the chain, so this is enough to reach every refusal.
    fn cert_with(uris: &[&str], ekus: &[Eku]) -> CertificateDer<'static> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().unwrap()))
            .collect();
        params.extended_key_usages = ekus.to_vec();
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn peer_identity_refuses_ambiguity() {
        let both = [Eku::ServerAuth, Eku::ClientAuth];
        let cases: [(&[&str], &[Eku], &str); 8] = [
            (&[], &both, "no subject alternative names"),
            (&["https://example.com/"], &both, "no orbit: uri"),
            (&["orbit:star:a", "orbit:star:b"], &both, "more than one"),
            (
                &["orbit:star:a", "orbit:controller:a"],
                &both,
                "more than one",
            ),
            (&["orbit:admin:a"], &both, "unknown role"),
            (&["orbit:star"], &both, "not orbit:<role>:<name>"),
            (&["orbit:star:Star_A"], &both, "invalid name"),
            (
                &["orbit:star:a"],
                &[Eku::ClientAuth],
                "serverAuth and clientAuth",
            ),
        ];
        for (uris, ekus, expected) in cases {
            let err = peer_identity(&cert_with(uris, ekus)).unwrap_err();
            assert!(
                matches!(err, CertError::NoIdentity(_)) && err.to_string().contains(expected),
                "{uris:?}: {err} should mention {expected:?}"
            );
        }
        let err = peer_identity(&cert_with(&["orbit:controller:a"], &[Eku::ServerAuth]));
        assert!(matches!(err, Err(CertError::NoIdentity(_))));
    }

    #[test]
    fn peer_identity_ignores_foreign_uris() {
        let cert = cert_with(
            &["https://example.com/", "orbit:controller:ops"],
            &[Eku::ClientAuth],
        );
        let id = peer_identity(&cert).unwrap();
        assert_eq!(id.role, Role::Controller);
        assert_eq!(id.name, "ops");
    }

    #[test]
    fn peer_identity_refuses_garbage() {
        let err = peer_identity(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])).unwrap_err();
        assert!(matches!(err, CertError::Parse(_)), "{err}");
    }
}
