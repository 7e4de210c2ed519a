//! The `[auth]` and `[tls]` sections: who may call the gRPC service, and how it is encrypted.
//!
//! `[auth]` lists bearer tokens by the hex SHA-256 of the token (the token itself is never
//! stored); no tokens means authentication is off and the server keeps to loopback. `[tls]`
//! names PEM files; `client_ca` additionally requires client certificates (mTLS). The files are
//! read and checked here, at start, with errors that name the key; `crate::auth` turns them into
//! the running server's settings.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

use super::ConfigError;

/// Longest token name (it is recorded in history as the actor).
pub const MAX_TOKEN_NAME_LEN: usize = 64;

#[derive(Clone, Debug, Default, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `[[auth.tokens]]`; empty = authentication off (loopback only).
    pub tokens: Vec<TokenEntry>,
}

/// One accepted bearer token.
#[derive(Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// Who holds the token; recorded as the actor of the changes it makes.
    pub name: String,
    pub role: Role,
    /// Hex SHA-256 of the token (`ocs-lifecycle token generate` prints it).
    pub sha256: String,
}

/// Shows only the start of the hash: enough to tell entries apart in a log.
impl fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenEntry")
            .field("name", &self.name)
            .field("role", &self.role)
            .field(
                "sha256",
                &format!("{}…", self.sha256.get(..8).unwrap_or("")),
            )
            .finish()
    }
}

/// Whether `name` may name a token: 1–64 of `A-Z a-z 0-9 . _ -`.
pub fn valid_token_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TOKEN_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl AuthConfig {
    /// Whether any token is configured (authentication on).
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// The tokens with their hashes decoded, checked: valid names, 64 hex digits, no name or
    /// hash twice.
    pub fn hashes(&self) -> Result<Vec<([u8; 32], &TokenEntry)>, ConfigError> {
        let mut names = HashSet::new();
        let mut hashes = HashSet::new();
        let mut decoded = Vec::with_capacity(self.tokens.len());
        for (i, token) in self.tokens.iter().enumerate() {
            if !valid_token_name(&token.name) {
                return Err(ConfigError(format!(
                    "auth.tokens[{i}].name: {:?} must be 1-{MAX_TOKEN_NAME_LEN} characters of \
                     A-Z a-z 0-9 . _ -",
                    token.name
                )));
            }
            let mut hash = [0u8; 32];
            hex::decode_to_slice(token.sha256.trim(), &mut hash).map_err(|_| {
                ConfigError(format!(
                    "auth.tokens[{i}].sha256 (token {:?}): must be the 64 hex digits of the \
                     token's SHA-256 (`ocs-lifecycle token generate` prints it)",
                    token.name
                ))
            })?;
            if !names.insert(token.name.as_str()) {
                return Err(ConfigError(format!(
                    "auth.tokens[{i}].name: {:?} is configured twice",
                    token.name
                )));
            }
            if !hashes.insert(hash) {
                return Err(ConfigError(format!(
                    "auth.tokens[{i}].sha256 (token {:?}): the same token is configured twice",
                    token.name
                )));
            }
            decoded.push((hash, token));
        }
        Ok(decoded)
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The server's certificate chain (PEM); with `key`, turns TLS on.
    pub cert: Option<PathBuf>,
    /// The server's private key (PEM, PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// CA certificates (PEM) client certificates must chain to; set = mTLS, a client without a
    /// certificate is refused.
    pub client_ca: Option<PathBuf>,
}

/// The PEM text of the TLS files, each checked to hold what its key says.
#[derive(Clone)]
pub struct TlsFiles {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    pub client_ca: Option<Vec<u8>>,
}

/// Never prints the private key.
impl fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsFiles")
            .field("cert_bytes", &self.cert.len())
            .field("client_ca_bytes", &self.client_ca.as_ref().map(Vec::len))
            .finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// Reads and checks the files; `None` when TLS is off.
    pub fn load(&self) -> Result<Option<TlsFiles>, ConfigError> {
        let pair = read_key_pair(
            ("tls.cert", self.cert.as_deref()),
            ("tls.key", self.key.as_deref()),
        )?;
        let Some((cert, key)) = pair else {
            if self.client_ca.is_some() {
                return Err(ConfigError(
                    "tls.client_ca needs tls.cert and tls.key (mTLS is a part of TLS)".into(),
                ));
            }
            return Ok(None);
        };
        let client_ca = match &self.client_ca {
            Some(path) => Some(read_certificates("tls.client_ca", path)?),
            None => None,
        };
        Ok(Some(TlsFiles {
            cert,
            key,
            client_ca,
        }))
    }
}

/// PEM certificate chain and PEM private key.
pub(crate) type KeyPair = (Vec<u8>, Vec<u8>);

/// A certificate chain and its private key, each `(key, path)`, set together or not at all:
/// both read and checked; `None` when neither is set.
pub(crate) fn read_key_pair(
    (cert_key, cert): (&str, Option<&Path>),
    (key_key, key): (&str, Option<&Path>),
) -> Result<Option<KeyPair>, ConfigError> {
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(ConfigError(format!(
            "{key_key}: missing; {cert_key} needs its private key"
        ))),
        (None, Some(_)) => Err(ConfigError(format!(
            "{cert_key}: missing; {key_key} needs its certificate"
        ))),
        (Some(cert), Some(key)) => Ok(Some((
            read_certificates(cert_key, cert)?,
            read_private_key(key_key, key)?,
        ))),
    }
}

pub(super) fn read(key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path)
        .map_err(|e| ConfigError(format!("{key}: cannot read {}: {e}", path.display())))
}

/// Reads a PEM file that must hold a private key.
pub(crate) fn read_private_key(key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    let pem = read(key, path)?;
    if PrivateKeyDer::from_pem_slice(&pem).is_err() {
        return Err(ConfigError(format!(
            "{key}: {} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
            path.display()
        )));
    }
    Ok(pem)
}

/// Reads a PEM file that must hold at least one certificate and nothing unreadable.
pub(crate) fn read_certificates(key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    let pem = read(key, path)?;
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        if let Err(e) = cert {
            return Err(ConfigError(format!(
                "{key}: {} is not valid PEM: {e}",
                path.display()
            )));
        }
        count += 1;
    }
    if count == 0 {
        return Err(ConfigError(format!(
            "{key}: {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    Ok(pem)
}

/// What a token may do (`crate::auth::GRANTS` lists the methods of each).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, clap::ValueEnum)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Role {
    /// The billing / charging side: provisioning, activation, recharge, charge, reads.
    Billing,
    /// A business hall: unlocks and recharges at the counter, reads.
    BusinessHall,
    /// The BSS: the event stream, dead letters, account reads.
    Bss,
    /// Everything, including the sweep (`AdvanceStates`) and the test clock.
    Admin,
    /// The lifecycle analytics reports (`LifecycleAnalytics`), read-only; nothing else.
    Analyst,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Billing,
        Role::BusinessHall,
        Role::Bss,
        Role::Admin,
        Role::Analyst,
    ];

    /// The name in configuration and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Billing => "billing",
            Role::BusinessHall => "business_hall",
            Role::Bss => "bss",
            Role::Admin => "admin",
            Role::Analyst => "analyst",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, sha256: &str) -> TokenEntry {
        TokenEntry {
            name: name.into(),
            role: Role::Billing,
            sha256: sha256.into(),
        }
    }

    const HASH_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const HASH_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn token_entries_are_checked_by_key() {
        let ok = AuthConfig {
            tokens: vec![entry("billing-1", HASH_A), entry("hall.7", HASH_B)],
        };
        assert_eq!(ok.hashes().unwrap().len(), 2);
        let cases = [
            (vec![entry("", HASH_A)], "auth.tokens[0].name"),
            (vec![entry("a b", HASH_A)], "auth.tokens[0].name"),
            (vec![entry("a@b", HASH_A)], "auth.tokens[0].name"),
            (vec![entry("a", "abc")], "auth.tokens[0].sha256"),
            (vec![entry("a", &"z".repeat(64))], "auth.tokens[0].sha256"),
            (
                vec![entry("a", HASH_A), entry("a", HASH_B)],
                "auth.tokens[1].name",
            ),
            (
                vec![entry("a", HASH_A), entry("b", HASH_A)],
                "auth.tokens[1].sha256",
            ),
        ];
        for (tokens, key) in cases {
            let err = AuthConfig { tokens }.hashes().unwrap_err();
            assert!(err.to_string().contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn the_debug_form_does_not_show_the_whole_hash() {
        let shown = format!("{:?}", entry("n", HASH_A));
        assert!(!shown.contains(HASH_A), "{shown}");
    }

    #[test]
    fn tls_files_are_checked_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        let missing = dir.path().join("missing.pem");
        let config = |cert: Option<&Path>, key: Option<&Path>, ca: Option<&Path>| TlsConfig {
            cert: cert.map(Path::to_path_buf),
            key: key.map(Path::to_path_buf),
            client_ca: ca.map(Path::to_path_buf),
        };
        assert!(config(None, None, None).load().unwrap().is_none());
        let cases = [
            (config(Some(&garbage), None, None), "tls.key: missing"),
            (config(None, Some(&garbage), None), "tls.cert: missing"),
            (config(None, None, Some(&garbage)), "tls.client_ca"),
            (
                config(Some(&missing), Some(&garbage), None),
                "tls.cert: cannot read",
            ),
            (config(Some(&garbage), Some(&garbage), None), "tls.cert: "),
        ];
        for (config, expected) in cases {
            let err = config.load().unwrap_err().to_string();
            assert!(err.contains(expected), "{expected}: {err}");
        }
    }
}
