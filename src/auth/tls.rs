//! The gRPC server's TLS settings from `[tls]`.

use std::time::Duration;

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::config::{ConfigError, TlsConfig};

/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server's TLS configuration; `None` when `[tls]` is not set (plaintext). With
/// `tls.client_ca`, every client must present a certificate that chains to it (mTLS).
pub fn server_tls(config: &TlsConfig) -> Result<Option<ServerTlsConfig>, ConfigError> {
    let Some(files) = config.load()? else {
        return Ok(None);
    };
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(files.cert, files.key))
        .timeout(HANDSHAKE_TIMEOUT);
    Ok(Some(match files.client_ca {
        Some(ca) => tls
            .client_ca_root(Certificate::from_pem(ca))
            .client_auth_optional(false),
        None => tls,
    }))
}
