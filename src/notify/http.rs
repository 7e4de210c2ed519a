//! The HTTP side of a delivery: the webhook's client (timeouts, no redirects, TLS) and one
//! POST of one signed event, read as accepted or as a [`Failure`] (with the BSS's
//! `Retry-After`). It decides nothing about retries; `notify` records the outcome.

use std::time::Duration;

use chrono::Utc;

use super::{NotifyError, Sender, backoff, payload};
use crate::auth::error_chain;
use crate::config::BssConfig;
use crate::store::OutboxEvent;

/// `last_error` is kept to this many characters.
const MAX_ERROR_CHARS: usize = 500;

/// The webhook's HTTP client: its timeouts, no redirects, and the TLS of `config`.
pub(super) fn http_client(config: &BssConfig) -> Result<reqwest::Client, NotifyError> {
    let tls = config.tls_files()?;
    let mut builder = reqwest::Client::builder()
        .timeout(config.timeout())
        .connect_timeout(config.timeout())
        // A redirect is an answer other than 2xx: retried, never followed with the signature.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("ocs-lifecycle/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = &tls.ca {
        // A private CA replaces the public roots: only the BSS's own certificates are trusted.
        builder = builder.tls_built_in_root_certs(false);
        for certificate in reqwest::Certificate::from_pem_bundle(ca)
            .map_err(|e| crate::config::ConfigError(format!("bss.ca_file: {}", error_chain(&e))))?
        {
            builder = builder.add_root_certificate(certificate);
        }
    }
    if let Some(identity) = &tls.identity {
        let identity = reqwest::Identity::from_pem(identity).map_err(|e| {
            crate::config::ConfigError(format!(
                "bss.client_cert / bss.client_key: {}",
                error_chain(&e)
            ))
        })?;
        builder = builder.identity(identity);
    }
    builder.build().map_err(|e| {
        // Where a key that does not fit its certificate shows.
        NotifyError::Config(crate::config::ConfigError(format!(
            "bss TLS settings (ca_file, client_cert, client_key): {}",
            error_chain(&e)
        )))
    })
}

impl Sender {
    /// POSTs one event; `Err` describes why it was not accepted.
    pub(super) async fn post(&self, event: &OutboxEvent) -> Result<(), Failure> {
        let body = payload::body(event).map_err(|e| Failure {
            error: format!("cannot encode the event: {e}"),
            retry_after: None,
        })?;
        // The attempt's own time (real time, also on the manual clock): a receiver compares it
        // with its clock to refuse replays.
        let timestamp = Utc::now().timestamp();
        let response = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &event.event_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                payload::standard_signature(&self.signing_key, &event.event_id, timestamp, &body),
            )
            .header("X-Ocs-Event-Id", &event.event_id)
            .header("X-Ocs-Signature", payload::signature(&self.secret, &body))
            .body(body)
            .send()
            .await
            // Without the URL: it may carry credentials, and the error is stored and listed.
            .map_err(|e| Failure {
                error: truncate(error_chain(&e.without_url())),
                retry_after: None,
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = match status {
            reqwest::StatusCode::TOO_MANY_REQUESTS | reqwest::StatusCode::SERVICE_UNAVAILABLE => {
                response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| backoff::retry_after(v, std::time::SystemTime::now()))
            }
            _ => None,
        };
        let text = response.text().await.unwrap_or_default();
        let text = text.trim();
        Err(Failure {
            error: truncate(if text.is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status}: {text}")
            }),
            retry_after,
        })
    }
}

/// Why an attempt was not accepted, and how long the BSS asked us to wait (`Retry-After` on
/// 429 or 503).
pub(super) struct Failure {
    pub(super) error: String,
    pub(super) retry_after: Option<Duration>,
}

fn truncate(mut text: String) -> String {
    if let Some((index, _)) = text.char_indices().nth(MAX_ERROR_CHARS) {
        text.truncate(index);
        text.push('…');
    }
    text
}
