//! The grid CA: generating it, reloading it from PEM, and issuing star and controller
//! certificates.
//!
//! Private keys leave this module only as PEM for the caller to store; they are never printed,
//! and `Debug` shows subjects only.

use std::fmt;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::identity::identity_uri;
use crate::{load_certs, validate_name, validate_star_name, CertError, Role};

/// Certificates are valid from this long ago, so that a peer whose clock is a little behind
/// still accepts a certificate made a moment ago.
const BACKDATE: Duration = Duration::hours(1);

/// How long a grid CA is valid.
const CA_VALIDITY: Duration = Duration::days(10 * 365 + 3);

/// How long a star or controller certificate is valid.
const LEAF_VALIDITY: Duration = Duration::days(3 * 365 + 1);

/// A grid's certificate authority: its certificate and private key.
///
/// Every star and controller of the grid trusts exactly this certificate.
pub struct GridCa {
    /// The certificate as generated or loaded: what stars trust, byte for byte.
    cert_pem: String,
    /// The CA as an rcgen issuer. When loaded from PEM this is a re-signed copy with the same
    /// subject and key, so leaves it signs chain to the original certificate.
    issuer: Certificate,
    key: KeyPair,
    subject: String,
}

impl fmt::Debug for GridCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GridCa")
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

/// How to issue a certificate other than the standard one, for tests of hostile cases: another
/// validity period, or the CA flag on a certificate that is then presented as a leaf.
#[derive(Debug, Clone)]
pub struct IssueOptions {
    /// Valid from.
    pub not_before: std::time::SystemTime,
    /// Valid until.
    pub not_after: std::time::SystemTime,
    /// Mark it as a CA certificate (basic constraints cA = true).
    pub ca: bool,
}

impl Default for IssueOptions {
    /// What [`GridCa::issue`] uses: valid from an hour ago for three years, not a CA.
    fn default() -> IssueOptions {
        let now = OffsetDateTime::now_utc();
        IssueOptions {
            not_before: (now - BACKDATE).into(),
            not_after: (now + LEAF_VALIDITY).into(),
            ca: false,
        }
    }
}

/// A freshly issued leaf certificate and its private key, both PEM.
#[derive(Clone)]
pub struct IssuedCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key (PKCS#8), PEM. Keep it secret: write it with mode 0600.
    pub key_pem: String,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"***")
            .finish()
    }
}

impl GridCa {
    /// Generates a new self-signed grid CA named `Orbit grid CA (<grid>)`: ECDSA P-256, allowed
    /// to sign leaf certificates only (path length 0), valid for ten years.
    ///
    /// # Errors
    ///
    /// [`CertError::Generate`] if the key or certificate cannot be made.
    pub fn generate(grid: &str) -> Result<GridCa, CertError> {
        let subject = format!("Orbit grid CA ({grid})");
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(&subject);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        let key = KeyPair::generate()?;
        let issuer = params.self_signed(&key)?;
        Ok(GridCa {
            cert_pem: issuer.pem(),
            issuer,
            key,
            subject,
        })
    }

    /// Reloads a CA written earlier from its certificate and private key, both PEM.
    ///
    /// [`cert_pem`](Self::cert_pem) then returns `cert_pem` unchanged.
    ///
    /// # Errors
    ///
    /// [`CertError::Pem`] if either PEM cannot be read or `cert_pem` does not hold exactly one
    /// certificate, [`CertError::NotCa`] if it is not a CA certificate, and
    /// [`CertError::KeyMismatch`] if the key is not the certificate's.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<GridCa, CertError> {
        let mut certs = load_certs(cert_pem)?;
        if certs.len() != 1 {
            return Err(CertError::Pem(format!(
                "expected one ca certificate, found {}",
                certs.len()
            )));
        }
        let der = certs.remove(0);
        let key = KeyPair::from_pem(key_pem).map_err(|e| CertError::Pem(format!("ca key: {e}")))?;
        let (_, x509) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| CertError::Parse(e.to_string()))?;
        if x509.public_key().raw != key.public_key_der().as_slice() {
            return Err(CertError::KeyMismatch);
        }
        let subject = x509
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map_or_else(|| x509.subject().to_string(), str::to_owned);

        let params = CertificateParams::from_ca_cert_der(&der)
            .map_err(|e| CertError::Pem(format!("ca certificate: {e}")))?;
        if !matches!(params.is_ca, IsCa::Ca(_)) {
            return Err(CertError::NotCa(subject));
        }
        let issuer = params.self_signed(&key)?;
        Ok(GridCa {
            cert_pem: cert_pem.to_owned(),
            issuer,
            key,
            subject,
        })
    }

    /// The CA certificate, PEM, exactly as generated or loaded.
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The CA private key (PKCS#8), PEM. Keep it secret: write it with mode 0600.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Issues a certificate for the star or controller `name`, with a fresh P-256 key, valid for
    /// three years.
    ///
    /// A star certificate names the star as DNS SAN `<name>` and URI `orbit:star:<name>`, and is
    /// good for server and client authentication. A controller certificate has only the URI
    /// `orbit:controller:<name>` and is good for client authentication only.
    ///
    /// # Errors
    ///
    /// [`CertError::InvalidName`] if `name` breaks [`validate_name`], and
    /// [`CertError::Generate`] if the key or certificate cannot be made.
    pub fn issue(&self, role: Role, name: &str) -> Result<IssuedCert, CertError> {
        self.issue_with(role, name, &IssueOptions::default())
    }

    /// As [`GridCa::issue`], with the validity and CA flag of `options`. Orbit itself only
    /// issues standard certificates; this exists to prove that peers refuse the others.
    ///
    /// # Errors
    ///
    /// As [`GridCa::issue`].
    pub fn issue_with(
        &self,
        role: Role,
        name: &str,
        options: &IssueOptions,
    ) -> Result<IssuedCert, CertError> {
        match role {
            Role::Star => validate_star_name(name)?,
            Role::Controller => validate_name(name)?,
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(name);
        if options.ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyCertSign,
            ];
        } else {
            params.is_ca = IsCa::ExplicitNoCa;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        }
        params.not_before = options.not_before.into();
        params.not_after = options.not_after.into();
        params.use_authority_key_identifier_extension = true;
        let uri = SanType::URI(identity_uri(role, name).try_into()?);
        match role {
            Role::Star => {
                params.extended_key_usages = vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ];
                params.subject_alt_names = vec![SanType::DnsName(name.try_into()?), uri];
            }
            Role::Controller => {
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
                params.subject_alt_names = vec![uri];
            }
        }
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer, &self.key)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

impl GridCa {
    pub(crate) fn issuer(&self) -> &Certificate {
        &self.issuer
    }

    pub(crate) fn key(&self) -> &KeyPair {
        &self.key
    }
}

fn common_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_keys() {
        let ca = GridCa::generate("debug").unwrap();
        let issued = ca.issue(Role::Star, "star-a").unwrap();
        let ca_debug = format!("{ca:?}");
        assert!(ca_debug.contains("Orbit grid CA (debug)"), "{ca_debug}");
        assert!(!ca_debug.contains("PRIVATE KEY"), "{ca_debug}");
        let issued_debug = format!("{issued:?}");
        assert!(issued_debug.contains("***"), "{issued_debug}");
        assert!(!issued_debug.contains("PRIVATE KEY"), "{issued_debug}");
    }

    #[test]
    fn from_pem_keeps_the_original_certificate() {
        let ca = GridCa::generate("reload").unwrap();
        let reloaded = GridCa::from_pem(&ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(reloaded.cert_pem(), ca.cert_pem());
        assert!(format!("{reloaded:?}").contains("Orbit grid CA (reload)"));
    }

    #[test]
    fn from_pem_refuses_a_foreign_key() {
        let ca = GridCa::generate("one").unwrap();
        let other = GridCa::generate("two").unwrap();
        let err = GridCa::from_pem(&ca.cert_pem(), &other.key_pem()).unwrap_err();
        assert!(matches!(err, CertError::KeyMismatch), "{err}");
    }

    #[test]
    fn from_pem_refuses_a_leaf() {
        let ca = GridCa::generate("leaf").unwrap();
        let leaf = ca.issue(Role::Star, "star-a").unwrap();
        let err = GridCa::from_pem(&leaf.cert_pem, &leaf.key_pem).unwrap_err();
        assert!(matches!(err, CertError::NotCa(_)), "{err}");
    }

    #[test]
    fn from_pem_refuses_garbage() {
        let ca = GridCa::generate("garbage").unwrap();
        assert!(matches!(
            GridCa::from_pem("not pem", &ca.key_pem()),
            Err(CertError::Pem(_))
        ));
        assert!(matches!(
            GridCa::from_pem(&ca.cert_pem(), "not pem"),
            Err(CertError::Pem(_))
        ));
        let two = format!("{}{}", ca.cert_pem(), ca.cert_pem());
        assert!(matches!(
            GridCa::from_pem(&two, &ca.key_pem()),
            Err(CertError::Pem(_))
        ));
    }

    #[test]
    fn issue_refuses_bad_names() {
        let ca = GridCa::generate("names").unwrap();
        for name in ["", "Star", "star.a", "-a"] {
            let err = ca.issue(Role::Star, name).unwrap_err();
            assert!(matches!(err, CertError::InvalidName { .. }), "{err}");
        }
    }
}
