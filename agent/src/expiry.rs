//! Warnings in the star's log before its certificate or the grid CA's expires: at start, after
//! each reload, and once a day while it runs, each naming the certificate and the date, so
//! that `journalctl -p warning` shows them well before the star stops completing handshakes.
//!
//! It only reads and logs: whether a certificate is accepted is always rustls's decision.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::warn;

/// How often a running star repeats its warnings.
pub(crate) const REPEAT_EVERY: Duration = Duration::from_secs(24 * 3600);

/// Which certificate a warning is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Which {
    /// The star's own.
    Star,
    /// The grid CA's (one of them, if the CA file holds several).
    Ca,
}

/// One certificate that expires within [`orbit_certs::EXPIRY_WARNING`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Expiring {
    pub(crate) which: Which,
    pub(crate) not_after: SystemTime,
}

/// When the star's certificate (the first in `cert_pem`) and each CA certificate in `ca_pem`
/// expire; a certificate that cannot be read is left out (the star checked them already).
fn expiries(cert_pem: &str, ca_pem: &str) -> Vec<(Which, SystemTime)> {
    let star = orbit_certs::load_certs(cert_pem)
        .unwrap_or_default()
        .into_iter()
        .take(1);
    let ca = orbit_certs::load_certs(ca_pem).unwrap_or_default();
    star.map(|c| (Which::Star, c))
        .chain(ca.into_iter().map(|c| (Which::Ca, c)))
        .filter_map(|(which, cert)| Some((which, orbit_certs::not_after_of(&cert).ok()?)))
        .collect()
}

/// The certificates of `held` that expire within [`orbit_certs::EXPIRY_WARNING`] of `now`.
pub(crate) fn expiring(held: &[(Which, SystemTime)], now: SystemTime) -> Vec<Expiring> {
    held.iter()
        .filter(|(_, not_after)| orbit_certs::expires_soon(*not_after, now))
        .map(|&(which, not_after)| Expiring { which, not_after })
        .collect()
}

/// The log line for `e`, seen from star `name` at `now`.
pub(crate) fn message(name: &str, e: &Expiring, now: SystemTime) -> String {
    let days = orbit_certs::days_left(e.not_after, now);
    let date = orbit_certs::expiry_text(e.not_after);
    let when = if days < 0 {
        format!("expired on {date}")
    } else {
        format!("expires on {date}, in {days} days")
    };
    match e.which {
        Which::Star => format!(
            "this star's certificate {when}: renew it with `orbitctl renew {name}` and restart \
             the star with the new one"
        ),
        Which::Ca => format!(
            "the grid CA's certificate {when}: every certificate of the grid stops being valid \
             with it (see docs/KEYS.md)"
        ),
    }
}

/// The expiry dates a running star holds, replaced at each reload.
#[derive(Debug)]
pub(crate) struct Expiry {
    name: String,
    held: Mutex<Vec<(Which, SystemTime)>>,
}

impl Expiry {
    pub(crate) fn new(name: &str) -> Expiry {
        Expiry {
            name: name.to_owned(),
            held: Mutex::new(Vec::new()),
        }
    }

    /// Records the certificates the star now uses and warns of those that expire soon.
    pub(crate) fn set(&self, cert_pem: &str, ca_pem: &str) {
        *self.held.lock().unwrap_or_else(|e| e.into_inner()) = expiries(cert_pem, ca_pem);
        self.warn(SystemTime::now());
    }

    /// Logs one warning per certificate that expires within [`orbit_certs::EXPIRY_WARNING`].
    pub(crate) fn warn(&self, now: SystemTime) {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for e in expiring(&held, now) {
            let certificate = match e.which {
                Which::Star => "star",
                Which::Ca => "ca",
            };
            warn!(certificate, "{}", message(&self.name, &e, now));
        }
    }
}

/// Repeats the warnings every [`REPEAT_EVERY`] until `cancel`.
pub(crate) async fn repeat(expiry: Arc<Expiry>, cancel: CancellationToken) {
    let mut every = tokio::time::interval(REPEAT_EVERY);
    // The first tick is immediate, and the star has just warned.
    every.tick().await;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = every.tick() => expiry.warn(SystemTime::now()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn warns_of_the_star_and_the_ca_within_thirty_days_only() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let held = [
            (Which::Star, now + 10 * DAY + DAY / 2),
            (Which::Ca, now + 400 * DAY),
        ];
        let soon = expiring(&held, now);
        assert_eq!(soon.len(), 1);
        assert_eq!(soon[0].which, Which::Star);
        let line = message("star-a", &soon[0], now);
        assert!(
            line.starts_with("this star's certificate expires on "),
            "{line}"
        );
        assert!(
            line.contains(", in 10 days: renew it with `orbitctl renew star-a`"),
            "{line}"
        );

        let ca = expiring(&[(Which::Ca, now - DAY)], now);
        let line = message("star-a", &ca[0], now);
        assert!(
            line.starts_with("the grid CA's certificate expired on "),
            "{line}"
        );
        assert!(expiring(&[(Which::Star, now + 31 * DAY)], now).is_empty());
    }

    #[test]
    fn reads_the_star_certificate_and_every_ca_certificate() {
        let ca = orbit_certs::GridCa::generate("expiry").unwrap();
        let issued = ca.issue(orbit_certs::Role::Star, "star-a").unwrap();
        let held = expiries(&issued.cert_pem, &ca.cert_pem());
        let whiches: Vec<Which> = held.iter().map(|(w, _)| *w).collect();
        assert_eq!(whiches, [Which::Star, Which::Ca]);
        assert!(expiries("garbage", "garbage").is_empty());
    }
}
