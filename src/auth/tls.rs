//! The gRPC server's TLS settings from `[tls]`.

use std::path::Path;
use std::time::Duration;

use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

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

/// `builder` serving TLS as `[tls]` says (unchanged when it is not set), and whether TLS is
/// on. Building the TLS acceptor is where a key that does not fit its certificate shows.
pub fn with_tls(builder: Server, config: &TlsConfig) -> Result<(Server, bool), ConfigError> {
    let Some(tls) = server_tls(config)? else {
        return Ok((builder, false));
    };
    let shown = |p: &Option<std::path::PathBuf>| {
        p.as_deref()
            .map(Path::display)
            .map(|p| p.to_string())
            .unwrap_or_default()
    };
    let builder = builder.tls_config(tls).map_err(|e| {
        ConfigError(format!(
            "tls.key: {} does not fit tls.cert {}{}: {}",
            shown(&config.key),
            shown(&config.cert),
            match &config.client_ca {
                Some(ca) => format!(" (or tls.client_ca {} is unusable)", ca.display()),
                None => String::new(),
            },
            error_chain(&e)
        ))
    })?;
    Ok((builder, true))
}

/// An error and its sources, `a: b: c`: tonic's transport errors and reqwest's ("error sending
/// request") say little by themselves. Also the webhook client's (`crate::notify`).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
