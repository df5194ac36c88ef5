//! Signatures by a star's own key over data it vouches for, and their check against the grid's
//! CA. A fan-out's origin signs its digest of the file; every destination checks the signature
//! before it publishes, so that the stars relaying the bytes need not be trusted.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::SigningKey;
use rustls::SignatureScheme;

use crate::{load_certs, load_key, peer_identity, CertError, PeerIdentity, RevocationList, Role};

/// Schemes a star signs with, in order of preference; the key's type decides which applies.
const SCHEMES: &[SignatureScheme] = &[
    SignatureScheme::ED25519,
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::RSA_PSS_SHA256,
];

/// A signature with what is needed to check it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed {
    /// The TLS `SignatureScheme` number.
    pub scheme: u16,
    /// The signature.
    pub signature: Vec<u8>,
    /// The signer's certificate, DER.
    pub certificate: Vec<u8>,
}

/// Why a signature could not be made or does not hold.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// The key cannot sign with any scheme Orbit uses.
    #[error("the star's key cannot sign with any scheme orbit uses")]
    NoScheme,
    /// The signing itself failed.
    #[error("signing failed: {0}")]
    Sign(rustls::Error),
    /// The certificate is not from this grid's CA, has expired or is revoked.
    #[error("the signer's certificate is not valid in this grid: {0}")]
    Certificate(rustls::Error),
    /// The certificate carries no Orbit star identity.
    #[error(transparent)]
    Identity(#[from] CertError),
    /// The certificate is not a star's.
    #[error("the signer {0} is not a star")]
    NotAStar(PeerIdentity),
    /// The signature does not match the data and the certificate.
    #[error("the signature does not match")]
    BadSignature,
}

/// A star's signing key and certificate, and the grid's CA to check other stars' signatures.
#[derive(Debug)]
pub struct Attester {
    key: Arc<dyn SigningKey>,
    certificate: CertificateDer<'static>,
    verifier: Arc<dyn ClientCertVerifier>,
    provider: Arc<CryptoProvider>,
}

impl Attester {
    /// Signs with `key_pem` as the holder of `cert_pem` (leaf first), and checks signatures
    /// against the grid CA `ca_pem`, refusing certificates that `crl` revokes.
    ///
    /// # Errors
    ///
    /// [`CertError`] for unreadable PEM, a key rustls cannot use, or a verifier that cannot be
    /// built.
    pub fn new(
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
        crl: Option<&RevocationList>,
    ) -> Result<Attester, CertError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = provider.key_provider.load_private_key(load_key(key_pem)?)?;
        let certificate = load_certs(cert_pem)?
            .into_iter()
            .next()
            .ok_or_else(|| CertError::Pem("no certificate".into()))?;
        let verifier = WebPkiClientVerifier::builder_with_provider(
            crate::tls::grid_roots(ca_pem)?,
            provider.clone(),
        )
        .with_crls(crl.map(|c| c.der().clone()))
        .build()?;
        Ok(Attester {
            key,
            certificate,
            verifier,
            provider,
        })
    }

    /// Signs `message`.
    ///
    /// # Errors
    ///
    /// [`SignatureError::NoScheme`] or [`SignatureError::Sign`].
    pub fn sign(&self, message: &[u8]) -> Result<Signed, SignatureError> {
        let signer = self
            .key
            .choose_scheme(SCHEMES)
            .ok_or(SignatureError::NoScheme)?;
        let signature = signer.sign(message).map_err(SignatureError::Sign)?;
        Ok(Signed {
            scheme: u16::from(signer.scheme()),
            signature,
            certificate: self.certificate.to_vec(),
        })
    }

    /// Checks that `signed` is a valid signature of `message` by a star of this grid whose
    /// certificate is valid now and not revoked, and returns who signed.
    ///
    /// # Errors
    ///
    /// [`SignatureError`] naming what does not hold.
    pub fn verify(&self, message: &[u8], signed: &Signed) -> Result<PeerIdentity, SignatureError> {
        let certificate = CertificateDer::from(signed.certificate.as_slice());
        self.verifier
            .verify_client_cert(&certificate, &[], UnixTime::now())
            .map_err(SignatureError::Certificate)?;
        let signer = peer_identity(&certificate)?;
        if signer.role != Role::Star {
            return Err(SignatureError::NotAStar(signer));
        }
        let scheme = SignatureScheme::from(signed.scheme);
        let algorithms = &self.provider.signature_verification_algorithms;
        let candidates = algorithms
            .mapping
            .iter()
            .find(|(s, _)| *s == scheme)
            .map(|(_, algs)| *algs)
            .ok_or(SignatureError::BadSignature)?;
        let end_entity = webpki::EndEntityCert::try_from(&certificate)
            .map_err(|e| SignatureError::Certificate(rustls::Error::General(e.to_string())))?;
        let valid = candidates.iter().any(|alg| {
            end_entity
                .verify_signature(*alg, message, &signed.signature)
                .is_ok()
        });
        match valid {
            true => Ok(signer),
            false => Err(SignatureError::BadSignature),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GridCa;

    fn attester(ca: &GridCa, role: Role, name: &str) -> Attester {
        let issued = ca.issue(role, name).unwrap();
        Attester::new(&ca.cert_pem(), &issued.cert_pem, &issued.key_pem, None).unwrap()
    }

    #[test]
    fn a_stars_signature_checks_out_and_names_it() {
        let ca = GridCa::generate("g").unwrap();
        let origin = attester(&ca, Role::Star, "star-a");
        let relay = attester(&ca, Role::Star, "star-b");
        let signed = origin.sign(b"size 3, sha256 abc").unwrap();
        let signer = relay.verify(b"size 3, sha256 abc", &signed).unwrap();
        assert_eq!(signer.name, "star-a");
        assert!(matches!(
            relay.verify(b"size 3, sha256 abd", &signed),
            Err(SignatureError::BadSignature)
        ));
        let mut flipped = signed.clone();
        flipped.signature[10] ^= 1;
        assert!(relay.verify(b"size 3, sha256 abc", &flipped).is_err());
    }

    #[test]
    fn another_grids_star_or_a_controller_is_refused() {
        let ca = GridCa::generate("g").unwrap();
        let other = GridCa::generate("other").unwrap();
        let checker = attester(&ca, Role::Star, "star-b");
        let stranger = attester(&other, Role::Star, "star-a").sign(b"m").unwrap();
        assert!(matches!(
            checker.verify(b"m", &stranger),
            Err(SignatureError::Certificate(_))
        ));
        let controller = attester(&ca, Role::Controller, "ctl").sign(b"m").unwrap();
        assert!(matches!(
            checker.verify(b"m", &controller),
            Err(SignatureError::NotAStar(_))
        ));
        // A valid signature with another star's certificate swapped in does not hold.
        let mut swapped = attester(&ca, Role::Star, "star-a").sign(b"m").unwrap();
        swapped.certificate = attester(&ca, Role::Star, "star-c")
            .sign(b"m")
            .unwrap()
            .certificate;
        assert!(matches!(
            checker.verify(b"m", &swapped),
            Err(SignatureError::BadSignature)
        ));
    }
}
