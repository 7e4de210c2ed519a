//! The `[bss]` section: the webhook that delivers outbox events to the BSS (`crate::notify`).
//!
//! `webhook_url` empty means no webhook (the `Subscribe` stream still works). Every key can be
//! set in the file, as `OCS_BSS__<KEY>`, and the URL and secret also as flags.
//!
//! TLS of the webhook: `ca_file` replaces the public roots with the BSS's own CA; `client_cert`
//! and `client_key` present a client certificate (for a BSS that requires mTLS). The files are
//! read and checked here, at start, with errors that name the key.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;

use super::ConfigError;
use super::security::{read_certificates, read_key_pair};
use crate::lifecycle::EventType;

/// The prefix of a Standard Webhooks secret (`whsec_` and the base64 of the key).
pub const STANDARD_SECRET_PREFIX: &str = "whsec_";

#[derive(Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct BssConfig {
    /// Where events are POSTed; empty = webhook off.
    pub webhook_url: String,
    /// The HMAC-SHA256 key of the signatures; required with a URL. `whsec_<base64>` (a
    /// Standard Webhooks secret): `webhook-signature` uses the decoded bytes.
    pub webhook_secret: String,
    /// Event types sent, by name (`NUMBER_RECYCLED`, `STATE_CHANGED`, `VALIDITY_EXPIRING`).
    pub webhook_events: Vec<String>,
    /// Delay before the first retry; doubles per failed attempt up to `max_backoff_ms`.
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// Per-request timeout (connect and response).
    pub timeout_ms: u64,
    /// Attempts before an event is dead-lettered.
    pub max_attempts: u32,
    /// CA certificates (PEM) the BSS's server certificate must chain to, instead of the
    /// public roots; needs an https:// URL.
    pub ca_file: Option<PathBuf>,
    /// The client certificate chain (PEM) presented to the BSS; with `client_key`.
    pub client_cert: Option<PathBuf>,
    /// The private key (PEM) of `client_cert`.
    pub client_key: Option<PathBuf>,
}

/// The PEM text of the webhook's TLS files, each checked to hold what its key says.
#[derive(Clone, Default)]
pub struct WebhookTlsFiles {
    /// `ca_file`: trusted instead of the public roots.
    pub ca: Option<Vec<u8>>,
    /// `client_cert` then `client_key`, one PEM buffer (as reqwest's `Identity` wants it).
    pub identity: Option<Vec<u8>>,
}

/// Never prints the private key.
impl fmt::Debug for WebhookTlsFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookTlsFiles")
            .field("ca_bytes", &self.ca.as_ref().map(Vec::len))
            .field("identity", &self.identity.is_some())
            .finish()
    }
}

impl Default for BssConfig {
    fn default() -> Self {
        Self {
            webhook_url: String::new(),
            webhook_secret: String::new(),
            webhook_events: vec!["NUMBER_RECYCLED".into()],
            initial_backoff_ms: 500,
            max_backoff_ms: 60_000,
            timeout_ms: 5_000,
            max_attempts: 30,
            ca_file: None,
            client_cert: None,
            client_key: None,
        }
    }
}

/// Never prints the secret.
impl fmt::Debug for BssConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BssConfig")
            .field("webhook_url", &super::redact::url(&self.webhook_url))
            .field(
                "webhook_secret",
                &if self.webhook_secret.is_empty() {
                    ""
                } else {
                    "***"
                },
            )
            .field("webhook_events", &self.webhook_events)
            .field("initial_backoff_ms", &self.initial_backoff_ms)
            .field("max_backoff_ms", &self.max_backoff_ms)
            .field("timeout_ms", &self.timeout_ms)
            .field("max_attempts", &self.max_attempts)
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .finish()
    }
}

impl BssConfig {
    /// Whether a webhook is configured.
    pub fn enabled(&self) -> bool {
        !self.webhook_url.trim().is_empty()
    }

    /// The selected event types, without duplicates.
    pub fn event_types(&self) -> Result<Vec<EventType>, ConfigError> {
        let mut types = Vec::new();
        for name in &self.webhook_events {
            let t = EventType::parse(name).ok_or_else(|| {
                ConfigError(format!(
                    "bss.webhook_events: {name:?} is not an event type \
                     (NUMBER_RECYCLED, STATE_CHANGED, VALIDITY_EXPIRING)"
                ))
            })?;
            if !types.contains(&t) {
                types.push(t);
            }
        }
        Ok(types)
    }

    pub fn initial_backoff(&self) -> Duration {
        Duration::from_millis(self.initial_backoff_ms)
    }

    pub fn max_backoff(&self) -> Duration {
        Duration::from_millis(self.max_backoff_ms)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.event_types()?;
        if self.initial_backoff_ms == 0 || self.max_backoff_ms < self.initial_backoff_ms {
            return Err(ConfigError(
                "bss.initial_backoff_ms must be at least 1 and bss.max_backoff_ms at least as \
                 large"
                    .into(),
            ));
        }
        if self.timeout_ms == 0 {
            return Err(ConfigError("bss.timeout_ms must be at least 1".into()));
        }
        if self.max_attempts == 0 {
            return Err(ConfigError("bss.max_attempts must be at least 1".into()));
        }
        if !self.enabled() {
            return Ok(());
        }
        let url = self.webhook_url.trim();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ConfigError(format!(
                "bss.webhook_url: {url:?} is not an http:// or https:// URL"
            )));
        }
        if self.webhook_secret.is_empty() {
            return Err(ConfigError(
                "bss.webhook_secret is required with bss.webhook_url (the BSS verifies \
                 the signatures with it)"
                    .into(),
            ));
        }
        self.standard_signing_key()?;
        let tls_files = self.ca_file.is_some() || self.client_cert.is_some();
        if tls_files && !url.starts_with("https://") {
            return Err(ConfigError(format!(
                "bss.{}: needs an https:// bss.webhook_url (the URL is {})",
                if self.ca_file.is_some() {
                    "ca_file"
                } else {
                    "client_cert"
                },
                super::redact::url(url)
            )));
        }
        self.tls_files()?;
        Ok(())
    }

    /// The HMAC key of `webhook-signature` (Standard Webhooks): the base64-decoded part of a
    /// `whsec_…` secret, otherwise the secret's bytes as they are. (`X-Ocs-Signature` always
    /// uses the secret's bytes as they are.)
    pub fn standard_signing_key(&self) -> Result<Vec<u8>, ConfigError> {
        match self.webhook_secret.strip_prefix(STANDARD_SECRET_PREFIX) {
            Some(encoded) => base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .ok()
                .filter(|key| !key.is_empty())
                .ok_or_else(|| {
                    ConfigError(
                        "bss.webhook_secret: starts with whsec_ but the rest is not base64 \
                         (a Standard Webhooks secret is whsec_ and the base64 of the key)"
                            .into(),
                    )
                }),
            None => Ok(self.webhook_secret.as_bytes().to_vec()),
        }
    }

    /// Reads and checks `ca_file`, `client_cert` and `client_key` (nothing set: no files).
    pub fn tls_files(&self) -> Result<WebhookTlsFiles, ConfigError> {
        let ca = match &self.ca_file {
            Some(path) => Some(read_certificates("bss.ca_file", path)?),
            None => None,
        };
        let pair = read_key_pair(
            ("bss.client_cert", self.client_cert.as_deref()),
            ("bss.client_key", self.client_key.as_deref()),
        )?;
        let identity = pair.map(|(mut pem, key)| {
            if !pem.ends_with(b"\n") {
                pem.push(b'\n');
            }
            pem.extend_from_slice(&key);
            pem
        });
        Ok(WebhookTlsFiles { ca, identity })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_spec() {
        let bss = BssConfig::default();
        assert!(!bss.enabled());
        assert_eq!(bss.event_types().unwrap(), vec![EventType::NumberRecycled]);
        assert_eq!(
            (bss.initial_backoff_ms, bss.max_backoff_ms, bss.max_attempts),
            (500, 60_000, 30)
        );
        assert_eq!(bss.timeout_ms, 5_000);
        assert!(bss.validate().is_ok());
    }

    #[test]
    fn event_names_are_checked_and_the_secret_is_required() {
        let mut bss = BssConfig {
            webhook_events: vec!["state_changed".into(), "EVENT_TYPE_NUMBER_RECYCLED".into()],
            ..BssConfig::default()
        };
        assert_eq!(
            bss.event_types().unwrap(),
            vec![EventType::StateChanged, EventType::NumberRecycled]
        );
        bss.webhook_events.push("RECHARGED".into());
        assert!(bss.validate().unwrap_err().0.contains("RECHARGED"));
        bss.webhook_events.pop();
        bss.webhook_url = "http://127.0.0.1:9/hook".into();
        assert!(bss.validate().unwrap_err().0.contains("webhook_secret"));
        bss.webhook_secret = "s3cret".into();
        assert!(bss.validate().is_ok());
        assert!(!format!("{bss:?}").contains("s3cret"));
        bss.webhook_url = "ftp://x".into();
        assert!(bss.validate().is_err());
    }

    #[test]
    fn env_and_flags_set_the_webhook() {
        use crate::config::test_support::{env, load_env};
        use crate::config::{Config, Overrides};
        let config = load_env(&[
            ("OCS_BSS__WEBHOOK_URL", "http://127.0.0.1:9/env"),
            ("OCS_BSS__WEBHOOK_SECRET", "from-env"),
            ("OCS_BSS__MAX_ATTEMPTS", "5"),
            (
                "OCS_BSS__WEBHOOK_EVENTS",
                "[\"NUMBER_RECYCLED\", \"STATE_CHANGED\"]",
            ),
        ])
        .unwrap();
        assert_eq!(config.bss.webhook_url, "http://127.0.0.1:9/env");
        assert_eq!(config.bss.max_attempts, 5);
        assert_eq!(config.bss.event_types().unwrap().len(), 2);
        let flags = Overrides {
            bss_webhook_url: Some("https://bss.example/hook".into()),
            bss_webhook_secret: Some("from-flag".into()),
            ..Overrides::default()
        };
        let config = Config::load(
            &flags,
            env(&[("OCS_BSS__WEBHOOK_URL", "http://127.0.0.1:9/env")]),
        )
        .unwrap();
        assert_eq!(config.bss.webhook_url, "https://bss.example/hook");
        assert_eq!(config.bss.webhook_secret, "from-flag");
        let missing_secret = load_env(&[("OCS_BSS__WEBHOOK_URL", "http://127.0.0.1:9/env")]);
        assert!(missing_secret.is_err());
    }
}
