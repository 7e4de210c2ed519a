//! What the configuration leaves open: without tokens the server keeps both listeners on
//! loopback unless `--insecure`, and it warns about clear-text tokens.

use std::net::SocketAddr;

use super::ServeError;
use crate::config::Config;

/// Without tokens every caller is trusted, so the service keeps to loopback unless told
/// otherwise (`--insecure`).
pub(super) fn check_exposure(config: &Config, addr: SocketAddr) -> Result<(), ServeError> {
    refuse_open(
        config,
        addr,
        "authentication is off and the server binds loopback only",
        "configure tokens, or pass --insecure to serve it without authentication",
    )
}

/// The operations endpoint likewise: without tokens the dashboard's data is open to whoever
/// reaches it, so `http_addr` keeps to loopback unless `--insecure`.
pub(super) fn check_http_exposure(config: &Config, addr: SocketAddr) -> Result<(), ServeError> {
    refuse_open(
        config,
        addr,
        "the operations endpoint's dashboard data has no authentication and http_addr binds \
         loopback only",
        "configure tokens, pass --insecure to serve it without authentication, or --http-addr \
         off",
    )
}

/// Refuses a non-loopback `addr` while no tokens are configured, unless `--insecure`.
fn refuse_open(config: &Config, addr: SocketAddr, what: &str, fix: &str) -> Result<(), ServeError> {
    if !config.auth.enabled() && !addr.ip().is_loopback() && !config.insecure {
        return Err(ServeError::Other(format!(
            "no tokens are configured ([[auth.tokens]]), so {what}; {addr} is not a loopback \
             address ({fix})"
        )));
    }
    Ok(())
}

/// Warns about what the configuration leaves open.
pub(super) fn warn_about_exposure(
    authenticated: bool,
    tls_on: bool,
    addr: SocketAddr,
    http_addr: Option<SocketAddr>,
) {
    if !authenticated {
        tracing::warn!(
            "authentication is off (no [[auth.tokens]] configured): every caller is trusted \
             (loopback only unless --insecure)"
        );
    } else if !tls_on && !addr.ip().is_loopback() {
        tracing::warn!(
            "bearer tokens travel in clear text: configure [tls] to serve beyond loopback"
        );
    }
    if let Some(http_addr) = http_addr.filter(|a| authenticated && !a.ip().is_loopback()) {
        tracing::warn!(
            %http_addr,
            "the operations endpoint has no TLS: tokens sent to /api/dashboard travel in clear \
             text; keep http_addr on loopback or put a TLS-terminating proxy in front of it"
        );
    }
}
