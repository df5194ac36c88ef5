//! When a certificate stops being valid, read from the certificate itself: what a star reports
//! in its metrics and its log, and `orbitctl status` shows, so that an operator sees the expiry
//! coming. This module only reads; whether a certificate is accepted is always rustls's
//! decision (see the crate docs).

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

/// How long before a certificate expires the star's log and `orbitctl status` start warning:
/// long enough to renew every star of a grid in an ordinary maintenance window.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);

/// Whether a certificate valid until `not_after` is, at `now`, within [`EXPIRY_WARNING`] of
/// expiring (or has expired).
pub fn expires_soon(not_after: SystemTime, now: SystemTime) -> bool {
    not_after <= now + EXPIRY_WARNING
}

/// `not_after` as a UTC date and time for people, `2029-12-04 15:02 UTC`.
pub fn expiry_text(not_after: SystemTime) -> String {
    let t = time::OffsetDateTime::from(not_after);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute()
    )
}

/// Whole days from `now` until `not_after`, rounded down; negative once it has passed.
pub fn days_left(not_after: SystemTime, now: SystemTime) -> i64 {
    match not_after.duration_since(now) {
        Ok(left) => (left.as_secs() / 86_400) as i64,
        Err(past) => -((past.duration().as_secs() / 86_400) as i64) - 1,
    }
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
    fn soon_means_within_thirty_days() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let day = Duration::from_secs(86_400);
        assert!(expires_soon(now + 29 * day, now));
        assert!(expires_soon(now + 30 * day, now));
        assert!(!expires_soon(now + 31 * day, now));
        assert!(expires_soon(now - day, now));
        assert_eq!(days_left(now + 29 * day + day / 2, now), 29);
        assert_eq!(days_left(now - day / 2, now), -1);
        assert_eq!(
            expiry_text(UNIX_EPOCH + Duration::from_secs(2_000_000_000)),
            "2033-05-18 03:33 UTC"
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let junk = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01]);
        assert!(matches!(not_after_of(&junk), Err(CertError::Parse(_))));
    }
}
