//! Layered configuration: defaults < `ocs-lifecycle.toml` (or `--config`) < `OCS_*` environment
//! < command-line flags. Validated once at start, with errors that name the key.
//!
//! Environment variables name a key in upper case, a section with a double underscore:
//! `OCS_DATABASE_URL`, `OCS_LIFECYCLE__GRACE_DAYS`. A string setting (or a path) takes the
//! value as it is (`OCS_LIFECYCLE__RECHARGE_HOTLINE=10086` is the string `"10086"`); a list of
//! strings is a TOML array (`["110", "112"]`) or a comma-separated list (`110,112`); every other
//! value (numbers, booleans, `[[auth.tokens]]`, `[[tariff]]`) is read as TOML.//!
//! Where each part lives: the sections in [`sections`], [`bss`], [`security`] and [`grpc`];
//! reading the layers in `layering` (the file), `env` (the environment) and [`overrides`] (the
//! flags); the checks of the values and `config check` in [`check`], its summary in `summary`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::lifecycle::Rules;

mod addr;
pub mod bss;
pub mod check;
mod env;
pub mod grpc;
mod layering;
pub mod overrides;
pub mod redact;
pub mod sections;
pub mod security;
mod summary;
pub use addr::HttpAddr;
use addr::deserialize_http_addr;
pub use bss::BssConfig;
pub use check::ConfigCommand;
use check::check_lifecycle;
pub use grpc::GrpcConfig;
pub use overrides::Overrides;
pub use sections::{LifecycleConfig, NotifyConfig, SweepConfig, TariffTierConfig};
pub use security::{AuthConfig, TlsConfig, TokenEntry};

pub const DEFAULT_CONFIG_FILE: &str = "ocs-lifecycle.toml";

/// Where `serve` answers `/metrics`, `/healthz` and `/readyz` unless told otherwise (9464 is
/// the port Prometheus exporters commonly use for an application's own metrics).
pub const DEFAULT_HTTP_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9464);

/// The top-level keys and sections of the configuration.
pub(crate) const KEYS: [&str; 24] = [
    "listen",
    "http_addr",
    "database_url",
    "db_pool_size",
    "db_acquire_timeout_ms",
    "clock",
    "timezone",
    "log_format",
    "log_full_msisdn",
    "shutdown_timeout_secs",
    "drain_secs",
    "authorize_cache_ms",
    "group_commit_max",
    "group_commit_wait_us",
    "group_commit_writers",
    "insecure",
    "lifecycle",
    "tariff",
    "sweep",
    "notify",
    "bss",
    "auth",
    "tls",
    "grpc",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(rename_all = "lowercase")]
pub enum ClockMode {
    System,
    Manual,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The service's configuration after layering.
#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// The operations HTTP listener (`/metrics`, `/healthz`, `/readyz`); `None` = off.
    #[serde(deserialize_with = "deserialize_http_addr")]
    pub http_addr: Option<SocketAddr>,
    /// `sqlite://PATH` (created if missing) or `postgres://…`.
    pub database_url: String,
    /// Connections to the database (SQLite: readers; writes always use one connection).
    pub db_pool_size: u32,
    /// PostgreSQL: how long a request waits for a connection (pooled, or a new one while the
    /// database is unreachable) before it is answered UNAVAILABLE.
    pub db_acquire_timeout_ms: u64,
    pub clock: ClockMode,
    /// The operator's time zone (IANA name); lifecycle dates are local dates there.
    pub timezone: String,
    pub log_format: LogFormat,
    /// Log MSISDNs whole in the per-call log lines; by default their middle digits are masked
    /// (personal data).
    pub log_full_msisdn: bool,
    /// How long a graceful shutdown waits for in-flight requests.
    pub shutdown_timeout_secs: u64,
    /// At shutdown (SIGTERM), how long health says NOT_SERVING and `/readyz` 503 while both
    /// listeners still serve, so load balancers stop sending before they close (0 = no drain).
    pub drain_secs: u64,
    /// How long Authorize may reuse an account's facts (0 = never). Mutations through this
    /// server replace them at their commit, mutations through another server on the same
    /// PostgreSQL database evict them (LISTEN/NOTIFY); the bound matters only for writes no
    /// server announces (`api::facts`).
    pub authorize_cache_ms: u64,
    /// Group commit: mutations committed together at most (`store::GroupCommit`).
    pub group_commit_max: usize,
    /// Group commit: how long a writer waits for more mutations (µs; 0: none).
    pub group_commit_wait_us: u64,
    /// PostgreSQL group commit: writer tasks (0: every mutation in its own transaction; unset:
    /// [`Config::group_commit_writers`] chooses). SQLite always has one.
    pub group_commit_writers: Option<usize>,
    /// Allow non-loopback `listen` and `http_addr` addresses although no tokens are configured
    /// (`[auth]`).
    pub insecure: bool,
    /// `OCS_*` environment variables that name no key (logged as a warning at start).
    #[serde(skip)]
    pub ignored_env: Vec<String>,
    pub lifecycle: LifecycleConfig,
    /// Recharge amount (fen) → validity days; the highest tier whose minimum ≤ amount applies.
    pub tariff: Vec<TariffTierConfig>,
    pub sweep: SweepConfig,
    pub notify: NotifyConfig,
    /// The BSS webhook (`src/notify`).
    pub bss: BssConfig,
    /// Bearer tokens and their roles; none = authentication off, loopback only.
    pub auth: AuthConfig,
    /// TLS (and mTLS) of the gRPC server; unset = plaintext.
    pub tls: TlsConfig,
    /// Overload and connection limits of the gRPC server.
    pub grpc: GrpcConfig,
}

impl Default for Config {
    fn default() -> Self {
        let rules = Rules::default();
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            http_addr: Some(DEFAULT_HTTP_ADDR),
            database_url: "sqlite://ocs-lifecycle.db".into(),
            db_pool_size: 16,
            db_acquire_timeout_ms: crate::store::DEFAULT_ACQUIRE_TIMEOUT.as_millis() as u64,
            clock: ClockMode::System,
            timezone: rules.timezone.name().into(),
            log_format: LogFormat::Text,
            log_full_msisdn: false,
            shutdown_timeout_secs: 30,
            drain_secs: 0,
            authorize_cache_ms: 60_000,
            group_commit_max: crate::store::GroupCommit::default().max,
            group_commit_wait_us: 0,
            group_commit_writers: None,
            insecure: false,
            ignored_env: Vec::new(),
            lifecycle: LifecycleConfig::default(),
            sweep: SweepConfig::default(),
            notify: NotifyConfig::default(),
            tariff: rules
                .tariff
                .tiers()
                .iter()
                .map(|t| TariffTierConfig {
                    min_amount: t.min_amount,
                    days: t.days,
                })
                .collect(),
            bss: BssConfig::default(),
            auth: AuthConfig::default(),
            tls: TlsConfig::default(),
            grpc: GrpcConfig::default(),
        }
    }
}

/// The configuration file [`Config::layered`] reads: `--config`, else `OCS_CONFIG` in `env`, else
/// `ocs-lifecycle.toml` in the working directory when it exists; `None`: no file (defaults,
/// environment and flags only).
pub fn config_file(overrides: &Overrides, env: &[(String, String)]) -> Option<PathBuf> {
    let explicit = overrides.config.clone().or_else(|| {
        env.iter()
            .find(|(k, _)| k == "OCS_CONFIG")
            .map(|(_, v)| PathBuf::from(v))
    });
    explicit.or_else(|| {
        Path::new(DEFAULT_CONFIG_FILE)
            .exists()
            .then(|| PathBuf::from(DEFAULT_CONFIG_FILE))
    })
}

#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

/// The most group commit writers [`Config::group_commit_writers`] chooses by itself.
const AUTO_GROUP_COMMIT_WRITERS: usize = 4;

/// The group commit writers chosen for a pool of `pool_size` on a machine of `cores`: a
/// quarter of the pool, at most 4 and at most half the cores (at least one where the pool has
/// four connections or more; none under four). On two cores shared with PostgreSQL one writer,
/// whose groups are the largest, measured best on three machines ("Group commit" sections of
/// BENCHMARKS.md): 1.1-1.3 × the per-transaction SQL against 0.8-1.0 × with four.
pub(crate) fn auto_group_commit_writers(pool_size: u32, cores: usize) -> usize {
    let by_pool = pool_size as usize / 4;
    by_pool
        .min(AUTO_GROUP_COMMIT_WRITERS)
        .min((cores / 2).max(1))
}

impl Config {
    /// The PostgreSQL group commit writers to run: `group_commit_writers` if set, else
    /// [`auto_group_commit_writers`] of `db_pool_size` and this machine's cores (4 with the
    /// default pool of 16 on eight cores or more, 1 on two; none with a pool under 4, where
    /// every mutation commits alone). Each writer holds a pool connection while it commits;
    /// the rest serve reads and mutations of the other paths.
    pub fn group_commit_writers(&self) -> usize {
        self.group_commit_writers.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            auto_group_commit_writers(self.db_pool_size, cores)
        })
    }

    /// `db_acquire_timeout_ms` as a duration.
    pub fn db_acquire_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.db_acquire_timeout_ms)
    }

    /// Layers the file, the `OCS_*` variables of `env` and the flags over the defaults, and
    /// validates the result ([`Config::validate`]): the first problem is the error.
    pub fn load(
        overrides: &Overrides,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let config = Self::layered(overrides, env)?;
        config.validate()?;
        Ok(config)
    }

    /// Layers the file, the `OCS_*` variables of `env` and the flags over the defaults; checks
    /// only the syntax and the types (unknown keys, wrong types), not the values. The first
    /// problem of [`Config::layered_all`] is the error.
    pub fn layered(
        overrides: &Overrides,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        match Self::layered_all(overrides, env) {
            Ok((config, problems)) => match problems.into_iter().next() {
                Some(problem) => Err(problem),
                None => Ok(config),
            },
            Err(mut problems) => Err(problems.swap_remove(0)),
        }
    }

    /// The lifecycle rules this configuration describes, validated (with the sweep and pool
    /// keys the engine needs; [`Config::validate`] checks everything).
    pub fn rules(&self) -> Result<Rules, ConfigError> {
        let rules = Rules {
            timezone: self.parsed_timezone()?,
            tariff: self.parsed_tariff()?,
            ..self.lifecycle_rules()
        };
        check_lifecycle(&rules)?;
        self.check_sweep()?;
        self.check_pool_size()?;
        Ok(rules)
    }
}

/// Shared by the tests of the configuration's modules.
#[cfg(test)]
pub(crate) mod test_support {
    use super::{Config, ConfigError, Overrides};

    /// The `(name, value)` pairs as an environment.
    pub fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// [`Config::load`] with no file and no flags, over the environment `pairs`.
    pub fn load_env(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::load(&Overrides::default(), env(pairs))
    }

    /// The error [`load_env`] fails with.
    #[track_caller]
    pub fn error_of(pairs: &[(&str, &str)]) -> String {
        match load_env(pairs) {
            Ok(_) => panic!("{pairs:?} was accepted"),
            Err(e) => e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{env, error_of, load_env};
    use super::*;

    #[test]
    fn defaults_match_the_spec() {
        let config = load_env(&[]).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(config.database_url, "sqlite://ocs-lifecycle.db");
        assert_eq!(config.clock, ClockMode::System);
        let rules = config.rules().unwrap();
        assert_eq!(rules.timezone, chrono_tz::Asia::Shanghai);
        assert_eq!(
            (rules.grace_days, rules.lock_days, rules.max_validity_days),
            (90, 30, 540)
        );
    }

    #[test]
    fn file_then_env_then_flags_win_in_that_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "timezone = \"Europe/Paris\"\nlisten = \"127.0.0.1:1\"\n[lifecycle]\ngrace_days = 10\n",
        )
        .unwrap();
        let flags = Overrides {
            config: Some(path),
            listen: Some("127.0.0.1:3".parse().unwrap()),
            ..Overrides::default()
        };
        let config = Config::load(
            &flags,
            env(&[
                ("OCS_LISTEN", "127.0.0.1:2"),
                ("OCS_LIFECYCLE__LOCK_DAYS", "5"),
                ("OCS_TIMEZONE", "America/New_York"),
            ]),
        )
        .unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:3");
        assert_eq!(config.timezone, "America/New_York");
        assert_eq!(config.lifecycle.grace_days, 10);
        assert_eq!(config.lifecycle.lock_days, 5);
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = error_of(&[("OCS_TIMEZONE", "Mars/Base")]);
        assert!(err.contains("timezone"), "{err}");
        let err = error_of(&[("OCS_LIFECYCLE__GRACE_DAYS", "0")]);
        assert!(err.contains("grace_days"), "{err}");
        let err = error_of(&[("OCS_LIFECYCLE__GRACE_DAYZ", "1")]);
        assert!(err.contains("grace_dayz"), "{err}");
        let file_dir = tempfile::tempdir().unwrap();
        let path = file_dir.path().join("c.toml");
        std::fs::write(&path, "no_such_key = 1\n").unwrap();
        let flags = Overrides {
            config: Some(path),
            ..Overrides::default()
        };
        let err = Config::load(&flags, env(&[])).unwrap_err();
        assert!(err.to_string().contains("no_such_key"), "{err}");
    }

    #[test]
    fn tokens_and_tls_come_from_the_environment_and_are_checked() {
        let hash = "ab".repeat(32);
        let config = load_env(&[(
            "OCS_AUTH__TOKENS",
            &format!(r#"[{{name = "gw", role = "business_hall", sha256 = "{hash}"}}]"#),
        )])
        .unwrap();
        assert!(config.auth.enabled());
        assert_eq!(
            config.auth.tokens[0].role,
            super::security::Role::BusinessHall
        );
        let err = error_of(&[(
            "OCS_AUTH__TOKENS",
            &format!(r#"[{{name = "gw", role = "root", sha256 = "{hash}"}}]"#),
        )]);
        assert!(err.contains("root"), "{err}");
        let err = error_of(&[("OCS_TLS__CERT", "/nonexistent/server.pem")]);
        assert!(err.contains("tls.key"), "{err}");
        let err = error_of(&[
            ("OCS_TLS__CERT", "/nonexistent/server.pem"),
            ("OCS_TLS__KEY", "/nonexistent/server.key"),
        ]);
        assert!(err.contains("tls.cert: cannot read"), "{err}");
    }

    #[test]
    fn http_addr_defaults_to_9464_on_loopback_and_off_disables_it() {
        let config = load_env(&[]).unwrap();
        assert_eq!(config.http_addr, Some("127.0.0.1:9464".parse().unwrap()));
        for off in ["off", "OFF", ""] {
            let config = load_env(&[("OCS_HTTP_ADDR", off)]).unwrap();
            assert_eq!(config.http_addr, None, "{off:?}");
        }
        let config =
            load_env(&[("OCS_HTTP_ADDR", "0.0.0.0:9100"), ("OCS_INSECURE", "true")]).unwrap();
        assert_eq!(config.http_addr, Some("0.0.0.0:9100".parse().unwrap()));
        // Without tokens, beyond loopback only with `insecure` (as `listen`).
        let err = error_of(&[("OCS_HTTP_ADDR", "0.0.0.0:9100")]);
        assert!(err.contains("http_addr: 0.0.0.0:9100"), "{err}");
        let flags = Overrides {
            http_addr: Some("off".parse().unwrap()),
            ..Overrides::default()
        };
        let config = Config::load(&flags, env(&[("OCS_HTTP_ADDR", "127.0.0.1:1")])).unwrap();
        assert_eq!(config.http_addr, None, "the flag wins over the environment");
        let err = error_of(&[("OCS_HTTP_ADDR", "nowhere")]);
        assert!(err.contains("http_addr"), "{err}");
        assert!(err.contains("nowhere"), "{err}");
        let err = error_of(&[("OCS_HTTP_ADDR", "9464")]);
        assert!(err.contains("http_addr"), "{err}");
    }
}
