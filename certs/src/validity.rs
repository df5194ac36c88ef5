//! When a certificate stops being valid, read from the certificate itself: what a star reports
//! in its metrics so that an operator sees the expiry coming. This module only reads; whether a
//! certificate is accepted is always rustls's decision (see the crate docs).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::CertificateDer;

use crate::CertError;

/// The end of a certificate's validity period (its `notAfter`).
///
/// # Errors
///
/// [`CertError::Parse`] if it is not well-formed X.509 or its `notAfter` lies before 1970.
pub fn not_after_of(cert: &CertificateDer<'_>) -> Result<SystemTime, CertError> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| CertError::Parse(e.to_string()))?;
    let seconds = u64::try_from(x509.validity().not_after.timestamp())
        .map_err(|_| CertError::Parse("notAfter lies before 1970".into()))?;
    Ok(UNIX_EPOCH + Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{load_certs, GridCa, IssueOptions, Role};

    fn unix(t: SystemTime) -> u64 {
        t.duration_since(UNIX_EPOCH).unwrap().as_secs()
    }

    #[test]
    fn reads_the_not_after_the_certificate_was_issued_with() {
        let ca = GridCa::generate("validity").unwrap();
        let not_after = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let options = IssueOptions {
            not_after,
            ..IssueOptions::default()
        };
        let issued = ca.issue_with(Role::Star, "star-a", &options).unwrap();
        let cert = &load_certs(&issued.cert_pem).unwrap()[0];
        assert_eq!(unix(not_after_of(cert).unwrap()), 2_000_000_000);
        // The CA's own: about ten years from now.
        let ca_cert = &load_certs(&ca.cert_pem()).unwrap()[0];
        let days = (unix(not_after_of(ca_cert).unwrap()) - unix(SystemTime::now())) / 86_400;
        assert!((3650..=3654).contains(&days), "{days} days");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let junk = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01]);
        assert!(matches!(not_after_of(&junk), Err(CertError::Parse(_))));
    }
}
