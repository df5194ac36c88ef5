//! Certificate revocation lists: the grid CA signs one ([`GridCa::revocation_list`]), stars load
//! it ([`RevocationList::from_pem`]) and hand it to rustls, which then refuses every listed
//! certificate in the handshake. [`RevocationList::is_revoked`] lets a star find the connections
//! already open with a certificate that a newer list revokes.
//!
//! A list is only ever accepted from the grid CA: its issuer must be the CA's subject, and rustls
//! checks its signature on every handshake. Orbit pushes lists to stars rather than having them
//! fetched, so `nextUpdate` is informative and never enforced.

use std::fmt;
use std::time::SystemTime;

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use time::{Duration, OffsetDateTime};

use crate::{load_certs, CertError, GridCa};

/// How far ahead a list's `nextUpdate` lies. Not enforced (see the module docs).
const CRL_VALIDITY: Duration = Duration::days(10 * 365);

/// A revocation list signed by the grid CA, as PEM and DER, with its entries.
#[derive(Clone)]
pub struct RevocationList {
    pem: String,
    der: CertificateRevocationListDer<'static>,
    number: u64,
    /// Raw serial numbers and revocation times.
    entries: Vec<(Vec<u8>, OffsetDateTime)>,
}

impl fmt::Debug for RevocationList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevocationList")
            .field("number", &self.number)
            .field("revoked", &self.entries.len())
            .finish()
    }
}

impl RevocationList {
    /// Reads a list written by [`GridCa::revocation_list`] and checks that the grid CA in
    /// `ca_pem` issued it.
    ///
    /// # Errors
    ///
    /// [`CertError::Pem`] if the PEM holds no list or several, [`CertError::Parse`] if the list
    /// is not well-formed, and [`CertError::Crl`] if another CA issued it.
    pub fn from_pem(pem: &str, ca_pem: &str) -> Result<RevocationList, CertError> {
        let crls = CertificateRevocationListDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| crate::tls::pem_error("revocation list", &e))?;
        let [der] = <[_; 1]>::try_from(crls).map_err(|crls| {
            CertError::Pem(format!(
                "expected one revocation list, found {}",
                crls.len()
            ))
        })?;
        let (_, crl) = x509_parser::parse_x509_crl(der.as_ref())
            .map_err(|e| CertError::Parse(format!("revocation list: {e}")))?;
        let ca = load_certs(ca_pem)?;
        let (_, ca) = x509_parser::parse_x509_certificate(ca[0].as_ref())
            .map_err(|e| CertError::Parse(e.to_string()))?;
        if crl.issuer().as_raw() != ca.subject().as_raw() {
            return Err(CertError::Crl(format!(
                "the revocation list was issued by {:?}, not by this grid's CA {:?}",
                crl.issuer().to_string(),
                ca.subject().to_string()
            )));
        }
        let number = crl.crl_number().map_or(0, |n| {
            n.to_bytes_be()
                .iter()
                .fold(0u64, |acc, b| acc.wrapping_shl(8) | u64::from(*b))
        });
        let entries = crl
            .iter_revoked_certificates()
            .map(|entry| {
                let when = OffsetDateTime::from_unix_timestamp(entry.revocation_date.timestamp())
                    .unwrap_or(OffsetDateTime::UNIX_EPOCH);
                (entry.raw_serial().to_vec(), when)
            })
            .collect();
        Ok(RevocationList {
            pem: pem.to_owned(),
            der,
            number,
            entries,
        })
    }

    /// The list as PEM, for its file.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The list as DER, for rustls.
    pub fn der(&self) -> &CertificateRevocationListDer<'static> {
        &self.der
    }

    /// The list's sequence number; each new list of a grid has a larger one.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// How many certificates the list revokes.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the list revokes nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether the list revokes `cert`, a certificate of this grid (matched by serial number).
    pub fn is_revoked(&self, cert: &CertificateDer<'_>) -> bool {
        serial_of(cert).is_ok_and(|serial| self.entries.iter().any(|(s, _)| *s == serial))
    }
}

/// The raw serial number of a certificate.
///
/// # Errors
///
/// [`CertError::Parse`] if it is not well-formed X.509.
pub fn serial_of(cert: &CertificateDer<'_>) -> Result<Vec<u8>, CertError> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| CertError::Parse(e.to_string()))?;
    Ok(x509.tbs_certificate.raw_serial().to_vec())
}

impl GridCa {
    /// Signs a new revocation list: every certificate `previous` revokes, plus `revoke` (PEM
    /// certificates of this grid), numbered one above `previous`.
    ///
    /// # Errors
    ///
    /// [`CertError::Pem`] or [`CertError::Parse`] if a certificate cannot be read, and
    /// [`CertError::Generate`] if the list cannot be signed.
    pub fn revocation_list(
        &self,
        previous: Option<&RevocationList>,
        revoke: &[&str],
    ) -> Result<RevocationList, CertError> {
        let now = OffsetDateTime::from(SystemTime::now());
        let mut entries: Vec<(Vec<u8>, OffsetDateTime)> =
            previous.map(|p| p.entries.clone()).unwrap_or_default();
        for pem in revoke {
            for cert in load_certs(pem)? {
                let serial = serial_of(&cert)?;
                if !entries.iter().any(|(s, _)| *s == serial) {
                    entries.push((serial, now));
                }
            }
        }
        let number = previous.map_or(1, |p| p.number + 1);
        let params = CertificateRevocationListParams {
            this_update: now,
            next_update: now + CRL_VALIDITY,
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: entries
                .iter()
                .map(|(serial, when)| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(serial),
                    revocation_time: *when,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(self.issuer(), self.key())?;
        RevocationList::from_pem(&crl.pem()?, &self.cert_pem())
    }
}
