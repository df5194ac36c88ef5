//! The one error type of this crate: everything that can go wrong while making certificates,
//! loading them, building TLS configurations or reading a peer's identity.

/// An error from making, loading or reading Orbit certificates.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// A star or controller name breaks the naming rule; `reason` names the rule.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// Which rule it breaks.
        reason: String,
    },
    /// PEM text could not be read, or did not hold what was expected.
    #[error("bad pem: {0}")]
    Pem(String),
    /// rcgen failed to build or sign a certificate or key.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// The CA private key does not belong to the CA certificate.
    #[error("the ca key does not match the ca certificate")]
    KeyMismatch,
    /// The certificate given as the grid CA is not a CA certificate.
    #[error("not a ca certificate: {0}")]
    NotCa(String),
    /// rustls refused a certificate, key or protocol setting.
    #[error("tls configuration failed: {0}")]
    Tls(#[from] rustls::Error),
    /// rustls could not build the client certificate verifier.
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// A certificate is not well-formed X.509.
    #[error("malformed certificate: {0}")]
    Parse(String),
    /// A certificate does not carry exactly one well-formed Orbit identity.
    #[error("no orbit identity in certificate: {0}")]
    NoIdentity(String),
    /// A revocation list is not this grid's.
    #[error("revocation list: {0}")]
    Crl(String),
}
