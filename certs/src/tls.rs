//! rustls configurations for Orbit's mutual TLS, and PEM loading for them.
//!
//! Every configuration is TLS 1.3 only, uses the ring provider explicitly, trusts only the grid
//! CA, and authenticates both ends. Nothing here may ever loosen that: no optional client auth,
//! no extra roots, no custom verifier that skips the chain or the server name.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::{CertError, RevocationList};

const TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A root store holding exactly the one grid CA certificate in `ca_pem`.
pub(crate) fn grid_roots(ca_pem: &str) -> Result<Arc<RootCertStore>, CertError> {
    let certs = load_certs(ca_pem)?;
    let [ca] = <[_; 1]>::try_from(certs).map_err(|certs| {
        CertError::Pem(format!(
            "expected one ca certificate, found {}",
            certs.len()
        ))
    })?;
    let mut roots = RootCertStore::empty();
    roots.add(ca)?;
    Ok(Arc::new(roots))
}

/// Builds the configuration of a star's server side: it presents `cert_pem` (the certificate
/// chain, leaf first) with `key_pem`, speaks only `alpn`, and requires every client to present a
/// certificate from the grid CA `ca_pem`.
///
/// Which role the client has is not decided here; read it with
/// [`peer_identity`](crate::peer_identity) once the handshake is done.
///
/// # Errors
///
/// [`CertError::Pem`] if a PEM cannot be read or `ca_pem` does not hold exactly one
/// certificate, [`CertError::Verifier`] if the client verifier cannot be built, and
/// [`CertError::Tls`] if rustls refuses the certificate or key (for example a key that does not
/// match the certificate).
pub fn server_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    alpn: &[u8],
) -> Result<ServerConfig, CertError> {
    server_config_with_crl(ca_pem, cert_pem, key_pem, alpn, None)
}

/// As [`server_config`], and a client certificate that `crl` revokes never completes a
/// handshake.
///
/// # Errors
///
/// As [`server_config`].
pub fn server_config_with_crl(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    alpn: &[u8],
    crl: Option<&RevocationList>,
) -> Result<ServerConfig, CertError> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(grid_roots(ca_pem)?, provider.clone())
            .with_crls(crl.map(|c| c.der().clone()))
            .build()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(TLS13_ONLY)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(cert_pem)?, load_key(key_pem)?)?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// Builds the configuration of a client (a star dialling a star, or the controller): it trusts
/// only the grid CA `ca_pem`, authenticates with `cert_pem` and `key_pem`, and speaks only
/// `alpn`.
///
/// Dial a star with its star name as the server name: the verifier then checks that the peer is
/// that star.
///
/// # Errors
///
/// [`CertError::Pem`] if a PEM cannot be read or `ca_pem` does not hold exactly one
/// certificate, and [`CertError::Tls`] if rustls refuses the certificate or key.
pub fn client_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    alpn: &[u8],
) -> Result<ClientConfig, CertError> {
    client_config_with_crl(ca_pem, cert_pem, key_pem, alpn, None)
}

/// As [`client_config`], and a server certificate that `crl` revokes never completes a
/// handshake.
///
/// # Errors
///
/// As [`client_config`], and [`CertError::Crl`] if rustls cannot use the list.
pub fn client_config_with_crl(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    alpn: &[u8],
    crl: Option<&RevocationList>,
) -> Result<ClientConfig, CertError> {
    let provider = provider();
    let verifier =
        WebPkiServerVerifier::builder_with_provider(grid_roots(ca_pem)?, provider.clone())
            .with_crls(crl.map(|c| c.der().clone()))
            .build()
            .map_err(|e| CertError::Crl(e.to_string()))?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(TLS13_ONLY)?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(load_certs(cert_pem)?, load_key(key_pem)?)?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// Reads every certificate in `pem`, in order; other PEM sections are skipped.
///
/// # Errors
///
/// [`CertError::Pem`] if the PEM is malformed or holds no certificate.
pub fn load_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error("certificates", &e))?;
    if certs.is_empty() {
        return Err(CertError::Pem("no certificate found".into()));
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) in `pem`.
///
/// # Errors
///
/// [`CertError::Pem`] if the PEM is malformed or holds no private key.
pub fn load_key(pem: &str) -> Result<PrivateKeyDer<'static>, CertError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| match e {
        pem::Error::NoItemsFound => CertError::Pem("no private key found".into()),
        e => pem_error("private key", &e),
    })
}

/// What is wrong with a PEM file, in words that never quote it: a key file's lines are secret.
pub(crate) fn pem_error(what: &str, e: &pem::Error) -> CertError {
    let why = match e {
        pem::Error::MissingSectionEnd { .. } => "a section has no END line".to_owned(),
        pem::Error::IllegalSectionStart { .. } => "a BEGIN line is malformed".to_owned(),
        pem::Error::Base64Decode(_) => "a section is not valid base64".to_owned(),
        pem::Error::Io(e) => e.to_string(),
        pem::Error::NoItemsFound => "none found".to_owned(),
        pem::Error::SectionTooLarge => "a section is larger than 256 MB".to_owned(),
        _ => "malformed PEM".to_owned(),
    };
    CertError::Pem(format!("{what}: {why}"))
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::ServerName;
    use rustls::{CertificateError, ClientConnection, Error, ServerConnection};

    use super::*;
    use crate::{peer_identity, GridCa, IssueOptions, PeerIdentity, Role};

    const ALPN: &[u8] = b"orbit/1";

    /// Which end of the handshake refused.
    #[derive(Debug, PartialEq)]
    enum Side {
        Client,
        Server,
    }

    fn server(ca: &GridCa, role: Role, name: &str) -> ServerConfig {
        let cert = ca.issue(role, name).unwrap();
        server_config(&ca.cert_pem(), &cert.cert_pem, &cert.key_pem, ALPN).unwrap()
    }

    fn client(ca: &GridCa, role: Role, name: &str) -> ClientConfig {
        let cert = ca.issue(role, name).unwrap();
        client_config(&ca.cert_pem(), &cert.cert_pem, &cert.key_pem, ALPN).unwrap()
    }

    /// Runs a whole handshake in memory, with the real rustls verifiers on both ends.
    fn handshake(
        client: ClientConfig,
        server: ServerConfig,
        server_name: &str,
    ) -> Result<(ClientConnection, ServerConnection), (Side, Error)> {
        let name = ServerName::try_from(server_name.to_owned()).unwrap();
        let mut client = ClientConnection::new(Arc::new(client), name).unwrap();
        let mut server = ServerConnection::new(Arc::new(server)).unwrap();
        for _ in 0..16 {
            let mut buf = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut buf).unwrap();
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                server.read_tls(&mut rd).unwrap();
                server
                    .process_new_packets()
                    .map_err(|e| (Side::Server, e))?;
            }
            let mut buf = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut buf).unwrap();
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd).unwrap();
                client
                    .process_new_packets()
                    .map_err(|e| (Side::Client, e))?;
            }
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok((client, server));
            }
        }
        panic!("handshake did not finish");
    }

    fn client_identity(server: &ServerConnection) -> PeerIdentity {
        peer_identity(&server.peer_certificates().unwrap()[0]).unwrap()
    }

    fn server_identity(client: &ClientConnection) -> PeerIdentity {
        peer_identity(&client.peer_certificates().unwrap()[0]).unwrap()
    }

    fn star(name: &str) -> PeerIdentity {
        PeerIdentity {
            role: Role::Star,
            name: name.into(),
        }
    }

    #[test]
    fn pem_files_are_read_and_their_faults_named_without_quoting_them() {
        let ca = GridCa::generate("grid").unwrap();
        let issued = ca.issue(Role::Star, "star-a").unwrap();
        // Another section first is skipped, as a chain file or a combined file has.
        let both = format!("{}{}", issued.key_pem, issued.cert_pem);
        assert_eq!(load_certs(&both).unwrap().len(), 1);
        assert!(load_key(&both).is_ok());
        let e = load_key(&issued.cert_pem).unwrap_err().to_string();
        assert!(e.ends_with("no private key found"), "{e}");
        let secret = "c2VjcmV0c2VjcmV0c2VjcmV0!!!";
        let broken = format!("-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n");
        let e = load_key(&broken).unwrap_err().to_string();
        assert!(e.contains("not valid base64") && !e.contains("c2Vj"), "{e}");
        let cut = format!("-----BEGIN PRIVATE KEY-----\n{secret}\n");
        let e = load_key(&cut).unwrap_err().to_string();
        assert!(e.contains("no END line") && !e.contains("c2Vj"), "{e}");
        assert!(load_certs("no PEM here").is_err());
    }

    #[test]
    fn star_to_star_handshake_proves_both_identities() {
        let ca = GridCa::generate("grid").unwrap();
        let (client, server) = handshake(
            client(&ca, Role::Star, "star-b"),
            server(&ca, Role::Star, "star-a"),
            "star-a",
        )
        .unwrap();
        assert_eq!(client_identity(&server), star("star-b"));
        assert_eq!(server_identity(&client), star("star-a"));
        assert_eq!(client.alpn_protocol(), Some(ALPN));
        assert_eq!(
            client.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
    }

    #[test]
    fn controller_client_handshake_is_a_controller() {
        let ca = GridCa::generate("grid").unwrap();
        let (_, server) = handshake(
            client(&ca, Role::Controller, "orbitctl"),
            server(&ca, Role::Star, "star-a"),
            "star-a",
        )
        .unwrap();
        let id = client_identity(&server);
        assert_eq!(id.role, Role::Controller);
        assert_eq!(id.name, "orbitctl");
    }

    #[test]
    fn client_from_another_grid_is_refused_by_the_server() {
        let ca = GridCa::generate("grid").unwrap();
        let other = GridCa::generate("other").unwrap();
        // The client trusts our CA but carries a certificate from another one.
        let cert = other.issue(Role::Star, "star-b").unwrap();
        let client = client_config(&ca.cert_pem(), &cert.cert_pem, &cert.key_pem, ALPN).unwrap();
        let (side, err) = handshake(client, server(&ca, Role::Star, "star-a"), "star-a")
            .map(|_| ())
            .unwrap_err();
        assert_eq!(side, Side::Server);
        assert!(
            matches!(
                err,
                Error::InvalidCertificate(CertificateError::UnknownIssuer)
            ),
            "{err}"
        );
    }

    #[test]
    fn server_from_another_grid_is_refused_by_the_client() {
        let ca = GridCa::generate("grid").unwrap();
        let other = GridCa::generate("other").unwrap();
        let cert = other.issue(Role::Star, "star-a").unwrap();
        let server = server_config(&ca.cert_pem(), &cert.cert_pem, &cert.key_pem, ALPN).unwrap();
        let (side, err) = handshake(client(&ca, Role::Star, "star-b"), server, "star-a")
            .map(|_| ())
            .unwrap_err();
        assert_eq!(side, Side::Client);
        assert!(
            matches!(
                err,
                Error::InvalidCertificate(CertificateError::UnknownIssuer)
            ),
            "{err}"
        );
    }

    #[test]
    fn dialling_the_wrong_star_is_refused() {
        let ca = GridCa::generate("grid").unwrap();
        let (side, err) = handshake(
            client(&ca, Role::Star, "star-b"),
            server(&ca, Role::Star, "star-a"),
            "star-x",
        )
        .map(|_| ())
        .unwrap_err();
        assert_eq!(side, Side::Client);
        assert!(
            matches!(
                err,
                Error::InvalidCertificate(
                    CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. }
                )
            ),
            "{err}"
        );
    }

    #[test]
    fn controller_certificate_cannot_serve() {
        let ca = GridCa::generate("grid").unwrap();
        let (side, err) = handshake(
            client(&ca, Role::Star, "star-b"),
            server(&ca, Role::Controller, "orbitctl"),
            "orbitctl",
        )
        .map(|_| ())
        .unwrap_err();
        assert_eq!(side, Side::Client);
        assert!(
            matches!(
                err,
                Error::InvalidCertificate(
                    CertificateError::InvalidPurpose
                        | CertificateError::InvalidPurposeContext { .. }
                )
            ),
            "{err}"
        );
    }

    #[test]
    fn reloaded_ca_issues_certificates_the_original_trusts() {
        let ca = GridCa::generate("grid").unwrap();
        let reloaded = GridCa::from_pem(&ca.cert_pem(), &ca.key_pem()).unwrap();
        let ca_pem = ca.cert_pem();
        let a = reloaded.issue(Role::Star, "star-a").unwrap();
        let b = reloaded.issue(Role::Star, "star-b").unwrap();
        let server = server_config(&ca_pem, &a.cert_pem, &a.key_pem, ALPN).unwrap();
        let client = client_config(&ca_pem, &b.cert_pem, &b.key_pem, ALPN).unwrap();
        let (client, server) = handshake(client, server, "star-a").unwrap();
        assert_eq!(client_identity(&server), star("star-b"));
        assert_eq!(server_identity(&client), star("star-a"));
    }

    #[test]
    fn configs_refuse_bad_pem() {
        let ca = GridCa::generate("grid").unwrap();
        let other = GridCa::generate("other").unwrap();
        let a = ca.issue(Role::Star, "star-a").unwrap();
        let ca_pem = ca.cert_pem();
        let two_cas = format!("{ca_pem}{}", other.cert_pem());
        assert!(matches!(
            server_config(&two_cas, &a.cert_pem, &a.key_pem, ALPN),
            Err(CertError::Pem(_))
        ));
        assert!(matches!(
            client_config(&ca_pem, &a.cert_pem, &a.cert_pem, ALPN),
            Err(CertError::Pem(_))
        ));
        assert!(matches!(
            client_config(&ca_pem, "", &a.key_pem, ALPN),
            Err(CertError::Pem(_))
        ));
        let b = ca.issue(Role::Star, "star-b").unwrap();
        assert!(matches!(
            server_config(&ca_pem, &a.cert_pem, &b.key_pem, ALPN),
            Err(CertError::Tls(_))
        ));
    }

    fn refused_as(
        result: Result<(ClientConnection, ServerConnection), (Side, Error)>,
    ) -> (Side, Error) {
        result.map(|_| ()).unwrap_err()
    }

    #[test]
    fn revoked_certificates_never_complete_a_handshake() {
        let ca = GridCa::generate("grid").unwrap();
        let a = ca.issue(Role::Star, "star-a").unwrap();
        let b = ca.issue(Role::Star, "star-b").unwrap();
        let ca_pem = ca.cert_pem();
        let crl = ca.revocation_list(None, &[&b.cert_pem]).unwrap();
        assert_eq!((crl.number(), crl.len()), (1, 1));
        let reread = RevocationList::from_pem(crl.pem(), &ca_pem).unwrap();
        assert!(reread.is_revoked(&load_certs(&b.cert_pem).unwrap()[0]));
        assert!(!reread.is_revoked(&load_certs(&a.cert_pem).unwrap()[0]));

        // star-a's server, with the list, refuses star-b as a client.
        let server =
            server_config_with_crl(&ca_pem, &a.cert_pem, &a.key_pem, ALPN, Some(&crl)).unwrap();
        let client = client_config(&ca_pem, &b.cert_pem, &b.key_pem, ALPN).unwrap();
        let (side, err) = refused_as(handshake(client, server, "star-a"));
        assert_eq!(side, Side::Server);
        assert!(
            matches!(err, Error::InvalidCertificate(CertificateError::Revoked)),
            "{err}"
        );
        // star-a's client, with the list, refuses star-b as a server.
        let client =
            client_config_with_crl(&ca_pem, &a.cert_pem, &a.key_pem, ALPN, Some(&crl)).unwrap();
        let server = server_config(&ca_pem, &b.cert_pem, &b.key_pem, ALPN).unwrap();
        let (side, err) = refused_as(handshake(client, server, "star-b"));
        assert_eq!(side, Side::Client);
        assert!(
            matches!(err, Error::InvalidCertificate(CertificateError::Revoked)),
            "{err}"
        );
        // The control: a certificate the list does not name still passes, under the same list.
        let c = ca.issue(Role::Star, "star-c").unwrap();
        let server =
            server_config_with_crl(&ca_pem, &a.cert_pem, &a.key_pem, ALPN, Some(&crl)).unwrap();
        let client = client_config(&ca_pem, &c.cert_pem, &c.key_pem, ALPN).unwrap();
        handshake(client, server, "star-a").unwrap();

        // A later list keeps the earlier entries.
        let next = ca.revocation_list(Some(&crl), &[&c.cert_pem]).unwrap();
        assert_eq!((next.number(), next.len()), (2, 2));
        assert!(next.is_revoked(&load_certs(&b.cert_pem).unwrap()[0]));
    }

    #[test]
    fn a_revocation_list_from_another_ca_is_refused() {
        let ca = GridCa::generate("grid").unwrap();
        let other = GridCa::generate("other").unwrap();
        let crl = other.revocation_list(None, &[]).unwrap();
        let err = RevocationList::from_pem(crl.pem(), &ca.cert_pem()).unwrap_err();
        assert!(matches!(err, CertError::Crl(_)), "{err}");
        assert!(RevocationList::from_pem("garbage", &ca.cert_pem()).is_err());
    }

    fn issued_with(ca: &GridCa, name: &str, options: IssueOptions) -> ClientConfig {
        let cert = ca.issue_with(Role::Star, name, &options).unwrap();
        client_config(&ca.cert_pem(), &cert.cert_pem, &cert.key_pem, ALPN).unwrap()
    }

    #[test]
    fn expired_not_yet_valid_and_ca_certificates_are_refused_as_clients() {
        use std::time::{Duration, SystemTime};
        let ca = GridCa::generate("grid").unwrap();
        let day = Duration::from_secs(86_400);
        let now = SystemTime::now();
        let cases = [
            (
                "expired",
                IssueOptions {
                    not_before: now - 10 * day,
                    not_after: now - day,
                    ca: false,
                },
            ),
            (
                "not yet valid",
                IssueOptions {
                    not_before: now + day,
                    not_after: now + 10 * day,
                    ca: false,
                },
            ),
            (
                "ca as leaf",
                IssueOptions {
                    ca: true,
                    ..IssueOptions::default()
                },
            ),
        ];
        for (what, options) in cases {
            let client = issued_with(&ca, "star-b", options);
            let (side, err) = refused_as(handshake(
                client,
                server(&ca, Role::Star, "star-a"),
                "star-a",
            ));
            assert_eq!(side, Side::Server, "{what}");
            assert!(matches!(err, Error::InvalidCertificate(_)), "{what}: {err}");
        }
        // The grid CA's own certificate and key, presented as a client certificate.
        let client = client_config(&ca.cert_pem(), &ca.cert_pem(), &ca.key_pem(), ALPN).unwrap();
        let (side, err) = refused_as(handshake(
            client,
            server(&ca, Role::Star, "star-a"),
            "star-a",
        ));
        assert_eq!(side, Side::Server);
        assert!(matches!(err, Error::InvalidCertificate(_)), "{err}");
        // The control: default options pass.
        handshake(
            issued_with(&ca, "star-b", IssueOptions::default()),
            server(&ca, Role::Star, "star-a"),
            "star-a",
        )
        .unwrap();
    }
}
