//! The star's QUIC endpoint as configured: TLS on both sides from the star's certificate, key,
//! CA and revocation list, and the transport settings (windows, MTU, congestion control,
//! keep-alives, idle timeout, stream caps), and the endpoint bound on the star's UDP socket. Used
//! by spawning, reloading and `--check-config`; public so that bench/'s QUIC floor
//! (agent/examples/quic_floor.rs) measures QUIC exactly as a star runs it, not a copy of it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::TransportConfig;

use crate::limits::{CongestionControl, Limits};
use crate::startup::{SpawnError, StarConfig};

/// Keep-alive interval, well inside the idle timeout (a third of it, when that is shorter).
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// The largest UDP payload path MTU discovery may reach: a 9,000-byte jumbo frame less IPv6 and
/// UDP headers. Paths that carry only 1,500 bytes stay at quinn's 1,452 after failed probes;
/// loopback and jumbo-frame networks get fewer, larger packets.
pub const MAX_UDP_PAYLOAD: u16 = 9000 - 48;

/// The QUIC server and client configurations for `config`'s certificates and `crl`.
pub(crate) fn quic_configs(
    config: &StarConfig,
    crl: Option<&orbit_certs::RevocationList>,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), SpawnError> {
    let transport = Arc::new(transport_config(&config.limits));
    let tls_server = orbit_certs::server_config_with_crl(
        &config.ca_pem,
        &config.cert_pem,
        &config.key_pem,
        orbit_wire::ALPN,
        crl,
    )?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(
        QuicServerConfig::try_from(tls_server).map_err(|e| SpawnError::Quic(e.to_string()))?,
    ));
    server.transport_config(transport.clone());
    let tls_client = orbit_certs::client_config_with_crl(
        &config.ca_pem,
        &config.cert_pem,
        &config.key_pem,
        orbit_wire::ALPN,
        crl,
    )?;
    let mut client = quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(tls_client).map_err(|e| SpawnError::Quic(e.to_string()))?,
    ));
    client.transport_config(transport);
    Ok((server, client))
}

/// What signs this star's attestations and checks other stars' against the grid's CA and
/// revocation list.
pub(crate) fn attester(
    config: &StarConfig,
    crl: Option<&orbit_certs::RevocationList>,
) -> Result<orbit_certs::Attester, SpawnError> {
    Ok(orbit_certs::Attester::new(
        &config.ca_pem,
        &config.cert_pem,
        &config.key_pem,
        crl,
    )?)
}

/// A flow-control window as QUIC carries it; `Limits::validate` keeps it far below the cap.
fn window(bytes: u64) -> quinn::VarInt {
    quinn::VarInt::from_u64(bytes).unwrap_or(quinn::VarInt::MAX)
}

/// BBR by default rather than quinn's CUBIC: on a lossy long link (0.5% loss, 50 ms RTT)
/// loss-based control keeps the window near what Mathis' formula allows, a few Mbit/s.
fn congestion_controller(
    choice: CongestionControl,
) -> Arc<dyn quinn::congestion::ControllerFactory + Send + Sync> {
    match choice {
        CongestionControl::Bbr => Arc::new(quinn::congestion::BbrConfig::default()),
        CongestionControl::Cubic => Arc::new(quinn::congestion::CubicConfig::default()),
    }
}

/// Windows sized for a fast link rather than quinn's defaults, keep-alives, an idle timeout, and
/// the cap on concurrent streams a peer may open.
pub fn transport_config(limits: &Limits) -> TransportConfig {
    let mut transport = TransportConfig::default();
    let streams = quinn::VarInt::from_u32(limits.max_streams_per_connection);
    transport
        .max_concurrent_bidi_streams(streams)
        .max_concurrent_uni_streams(streams)
        .stream_receive_window(window(limits.stream_window()))
        .receive_window(window(2 * limits.stream_window()))
        .send_window(2 * limits.stream_window())
        .mtu_discovery_config(Some({
            let mut mtu = quinn::MtuDiscoveryConfig::default();
            mtu.upper_bound(MAX_UDP_PAYLOAD);
            mtu
        }))
        // Several packets per system call; crate::udp keeps a batch within one send's limit.
        .enable_segmentation_offload(true)
        .congestion_controller_factory(congestion_controller(limits.congestion_control))
        .keep_alive_interval(Some(KEEP_ALIVE.min(limits.idle_timeout / 3)))
        .max_idle_timeout(Some(
            limits
                .idle_timeout
                .try_into()
                .expect("Limits::validate checked the idle timeout"),
        ));
    transport
}

/// A QUIC endpoint on `listen` as a star binds it: the star's UDP socket (crate::udp, GSO
/// batches within one send), UDP payloads up to [`MAX_UDP_PAYLOAD`], serving with `server` (if
/// any) and dialling with `client`.
///
/// # Errors
///
/// When the socket cannot be bound or set up.
pub fn bind_endpoint(
    listen: SocketAddr,
    server: Option<quinn::ServerConfig>,
    client: quinn::ClientConfig,
) -> std::io::Result<quinn::Endpoint> {
    let runtime = Arc::new(quinn::TokioRuntime);
    let socket = crate::udp::bind(listen, &*runtime)?;
    let mut endpoint_config = quinn::EndpointConfig::default();
    endpoint_config
        .max_udp_payload_size(MAX_UDP_PAYLOAD)
        .expect("9 KB is a valid UDP payload size");
    let mut endpoint =
        quinn::Endpoint::new_with_abstract_socket(endpoint_config, server, socket, runtime)?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_congestion_setting_picks_the_controller() {
        let build = |choice| congestion_controller(choice).build(std::time::Instant::now(), 1200);
        let bbr = build(CongestionControl::Bbr).into_any();
        assert!(bbr.downcast::<quinn::congestion::Bbr>().is_ok());
        let cubic = build(CongestionControl::Cubic).into_any();
        assert!(cubic.downcast::<quinn::congestion::Cubic>().is_ok());
        assert_eq!(Limits::default().congestion_control, CongestionControl::Bbr);
    }
}
