//! Layered configuration: defaults < `ocs-lifecycle.toml` (or `--config`) < `OCS_*` environment
//! < command-line flags. Validated once at start, with errors that name the key.
//!
//! Environment variables name a key in upper case, a section with a double underscore:
//! `OCS_DATABASE_URL`, `OCS_LIFECYCLE__GRACE_DAYS`. A string setting (or a path) takes the
//! value as it is (`OCS_LIFECYCLE__RECHARGE_HOTLINE=10086` is the string `"10086"`); a list of
//! strings is a TOML array (`["110", "112"]`) or a comma-separated list (`110,112`); every other
//! value (numbers, booleans, `[[auth.tokens]]`, `[[tariff]]`) is read as TOML.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

use crate::lifecycle::Rules;

pub mod bss;
pub mod check;
pub mod redact;
pub mod security;
pub use bss::BssConfig;
pub use check::ConfigCommand;
use check::check_lifecycle;
pub use security::{AuthConfig, TlsConfig, TokenEntry};

pub const DEFAULT_CONFIG_FILE: &str = "ocs-lifecycle.toml";

/// `OCS_*` variables of the command-line client (`--server`, `--token`, `--ca-cert`,
/// `--client-cert`, `--client-key`): not configuration keys, and not warned about when `serve`
/// finds them in its environment.
const CLIENT_ENV: [&str; 5] = ["SERVER", "TOKEN", "CA_CERT", "CLIENT_CERT", "CLIENT_KEY"];

/// Where `serve` answers `/metrics`, `/healthz` and `/readyz` unless told otherwise (9464 is
/// the port Prometheus exporters commonly use for an application's own metrics).
pub const DEFAULT_HTTP_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9464);

/// The value of `http_addr` / `--http-addr`: an address, or `off` (or empty) for no listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpAddr(pub Option<SocketAddr>);

impl FromStr for HttpAddr {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.eq_ignore_ascii_case("off") {
            return Ok(HttpAddr(None));
        }
        trimmed
            .parse()
            .map(|addr| HttpAddr(Some(addr)))
            .map_err(|_| format!("{raw:?} is not an address (e.g. 127.0.0.1:9464) or \"off\""))
    }
}

fn deserialize_http_addr<'de, D>(deserializer: D) -> Result<Option<SocketAddr>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Visitor;

    impl serde::de::Visitor<'_> for Visitor {
        type Value = Option<SocketAddr>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an address such as \"127.0.0.1:9464\", or \"off\"")
        }

        fn visit_str<E: serde::de::Error>(self, raw: &str) -> Result<Self::Value, E> {
            raw.parse::<HttpAddr>()
                .map(|addr| addr.0)
                .map_err(|e| E::custom(format!("http_addr: {e}")))
        }

        fn visit_i64<E: serde::de::Error>(self, raw: i64) -> Result<Self::Value, E> {
            Err(E::custom(format!(
                "http_addr: {raw} is not an address (e.g. 127.0.0.1:{raw}) or \"off\""
            )))
        }

        fn visit_u64<E: serde::de::Error>(self, raw: u64) -> Result<Self::Value, E> {
            self.visit_i64(i64::try_from(raw).unwrap_or(i64::MAX))
        }
    }

    deserializer.deserialize_any(Visitor)
}

/// The top-level keys and sections of the configuration.
pub(crate) const KEYS: [&str; 21] = [
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
    "authorize_cache_ms",
    "group_commit_max",
    "group_commit_wait_us",
    "insecure",
    "lifecycle",
    "tariff",
    "sweep",
    "notify",
    "bss",
    "auth",
    "tls",
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
    /// How long Authorize may reuse an account's facts (0 = never). Mutations through this
    /// server replace them at their commit, mutations through another server on the same
    /// PostgreSQL database evict them (LISTEN/NOTIFY); the bound matters only for writes no
    /// server announces (`api::facts`).
    pub authorize_cache_ms: u64,
    /// SQLite group commit: mutations committed together at most (`store::GroupCommit`).
    pub group_commit_max: usize,
    /// SQLite group commit: how long the writer waits for more mutations (µs; 0: none).
    pub group_commit_wait_us: u64,
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
}

/// The sweep that materialises boundary transitions (spec section 6).
#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct SweepConfig {
    /// Accounts per transaction.
    pub batch_size: u32,
    /// When `serve` runs the sweep: 6 fields `sec min hour dom month dow`, operator time zone.
    pub cron: String,
    /// Run the sweep on `cron` inside `serve` (false: only AdvanceStates and the `sweep`
    /// command sweep).
    pub scheduler: bool,
}

impl Default for SweepConfig {
    fn default() -> Self {
        Self {
            batch_size: 1000,
            cron: "0 5 0 * * *".into(),
            scheduler: true,
        }
    }
}

impl SweepConfig {
    /// The parsed `cron` expression.
    pub fn schedule(&self) -> Result<cron::Schedule, ConfigError> {
        cron::Schedule::from_str(&self.cron).map_err(|e| {
            // The cron crate's message spans lines (the expression, a caret, the reason):
            // keep the reason, so the error stays one line.
            let text = e.to_string();
            let reason = text
                .lines()
                .map(str::trim)
                .rfind(|l| !l.is_empty() && !l.chars().all(|c| c == '^' || c == ' '))
                .unwrap_or("invalid")
                .to_owned();
            // The crate says "Hours must be less than 23" of an hour 25, meaning at most 23.
            let reason = reason.replace(" must be less than ", " must be at most ");
            ConfigError(format!(
                "sweep.cron: {:?} is not a cron expression (sec min hour dom month dow): {reason}",
                self.cron
            ))
        })
    }
}

/// Notices sent to the BSS ahead of a boundary.
#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// VALIDITY_EXPIRING goes out from 00:00 local of `valid_until − expiring_days`.
    pub expiring_days: u32,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            expiring_days: Rules::default().expiring_days,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct LifecycleConfig {
    pub initial_validity_days: u32,
    pub grace_days: u32,
    pub lock_days: u32,
    pub max_validity_days: u32,
    pub card_life_days: u32,
    pub unlock_grace_days: u32,
    pub special_numbers: Vec<String>,
    pub recharge_hotline: String,
}

#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct TariffTierConfig {
    pub min_amount: i64,
    pub days: u32,
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
            authorize_cache_ms: 60_000,
            group_commit_max: crate::store::GroupCommit::default().max,
            group_commit_wait_us: 0,
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
        }
    }
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        let rules = Rules::default();
        Self {
            initial_validity_days: rules.initial_validity_days,
            grace_days: rules.grace_days,
            lock_days: rules.lock_days,
            max_validity_days: rules.max_validity_days,
            card_life_days: rules.card_life_days,
            unlock_grace_days: rules.unlock_grace_days,
            special_numbers: rules.special_numbers,
            recharge_hotline: rules.recharge_hotline,
        }
    }
}

/// Overrides given on the command line (the top layer).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Overrides {
    /// Configuration file [default: ocs-lifecycle.toml when present].
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:50051].
    #[arg(long, global = true)]
    pub listen: Option<SocketAddr>,
    /// HTTP address of /metrics, /healthz and /readyz, or "off" [default: 127.0.0.1:9464].
    #[arg(long, global = true)]
    pub http_addr: Option<HttpAddr>,
    /// sqlite://PATH or postgres://… [default: sqlite://ocs-lifecycle.db].
    #[arg(long, global = true)]
    pub database_url: Option<String>,
    /// system, or manual (adds the TestClock service).
    #[arg(long, global = true, value_enum)]
    pub clock: Option<ClockMode>,
    /// The operator's IANA time zone [default: Asia/Shanghai].
    #[arg(long, global = true)]
    pub timezone: Option<String>,
    /// text or json.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Serve on non-loopback addresses (listen, http_addr) although no tokens are configured
    /// ([auth]).
    #[arg(long, global = true)]
    pub insecure: bool,
    /// The BSS webhook URL (http:// or https://); unset = no webhook delivery.
    #[arg(long, global = true)]
    pub bss_webhook_url: Option<String>,
    /// The webhook's HMAC key (prefer OCS_BSS__WEBHOOK_SECRET: flags show in `ps`).
    #[arg(long, global = true)]
    pub bss_webhook_secret: Option<String>,
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

impl Config {
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

    /// [`Config::layered`], finding every problem at once. `Err`: the file cannot be read, or
    /// each of its syntax errors with its line and column (nothing else is read then). `Ok`:
    /// the configuration with every key whose value does not fit left at its default, and one
    /// problem per such key (the key, the file's line and column or the environment variable
    /// that set it, and the value), so that the values can be checked too.
    pub fn layered_all(
        overrides: &Overrides,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(Self, Vec<ConfigError>), Vec<ConfigError>> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        let file = config_file(overrides, &env);
        let (mut table, text) = match &file {
            Some(path) => read_file(path)?,
            None => (toml::Table::new(), String::new()),
        };
        let mut ignored_env = Vec::new();
        let mut applied: Vec<(&str, &str, &str)> = Vec::new();
        for (name, value) in &env {
            let Some(key) = name.strip_prefix("OCS_") else {
                continue;
            };
            if key == "CONFIG" || CLIENT_ENV.contains(&key) {
                continue;
            }
            // Other tools share the OCS_ prefix (e.g. OCS_TEST_DATABASE_URL); only variables
            // that name one of our keys or sections are configuration. Typos inside a section
            // are still refused by name.
            let top = key
                .split("__")
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            if !KEYS.contains(&top.as_str()) {
                ignored_env.push(name.clone());
                continue;
            }
            applied.push((name.as_str(), key, value.as_str()));
        }
        for (name, key, value) in &applied {
            overlay_env(&mut table, name, key, value).map_err(|e| vec![e])?;
        }
        // With where the file says it, to list them in the file's order.
        let mut problems: Vec<(Option<(usize, usize)>, ConfigError)> = Vec::new();
        let mut config = loop {
            let error = match deserialize(table.clone()) {
                Ok(config) => break config,
                Err(error) => error,
            };
            let path = error_path(&error);
            let mut at = None;
            let problem = match applied.iter().rev().find(|(_, key, _)| {
                let set = dotted(key);
                path == set || path.starts_with(&format!("{set}."))
            }) {
                Some((name, _, _)) => format!("{name} ({path}): {}", error.message()),
                None => {
                    let message = error.message();
                    let message = message
                        .strip_prefix(&format!("{path}: "))
                        .unwrap_or(message);
                    at = locate(&text, &path);
                    match (&file, at) {
                        (Some(file), Some((line, column))) => {
                            format!("{}:{line}:{column}: {path}: {message}", file.display())
                        }
                        _ => format!("{path}: {message}"),
                    }
                }
            };
            problems.push((at, ConfigError(problem)));
            // Left at its default, so the rest is checked too.
            if path.is_empty() || !remove_path(&mut table, &path) || problems.len() > 100 {
                return Err(in_file_order(problems));
            }
        };
        let problems = in_file_order(problems);
        if let Some(v) = overrides.listen {
            config.listen = v;
        }
        if let Some(v) = overrides.http_addr {
            config.http_addr = v.0;
        }
        if let Some(v) = &overrides.database_url {
            config.database_url = v.clone();
        }
        if let Some(v) = overrides.clock {
            config.clock = v;
        }
        if let Some(v) = &overrides.timezone {
            config.timezone = v.clone();
        }
        if let Some(v) = overrides.log_format {
            config.log_format = v;
        }
        config.insecure |= overrides.insecure;
        config.ignored_env = ignored_env;
        if let Some(v) = &overrides.bss_webhook_url {
            config.bss.webhook_url = v.clone();
        }
        if let Some(v) = &overrides.bss_webhook_secret {
            config.bss.webhook_secret = v.clone();
        }
        Ok((config, problems))
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

/// The file's table and its text; every syntax error with its line and column.
fn read_file(path: &Path) -> Result<(toml::Table, String), Vec<ConfigError>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![ConfigError(format!("cannot read {}: {e}", path.display()))])?;
    match text.parse::<toml::Table>() {
        Ok(table) => Ok((table, text)),
        Err(first) => {
            let (_, mut errors) = toml::de::DeTable::parse_recoverable(&text);
            if errors.is_empty() {
                errors.push(first);
            }
            Err(errors
                .iter()
                .map(|e| {
                    let at = e
                        .span()
                        .map(|span| line_column(&text, span.start))
                        .map(|(line, column)| format!(":{line}:{column}"))
                        .unwrap_or_default();
                    ConfigError(format!(
                        "{}{at}: not TOML: {}",
                        path.display(),
                        e.message().replace('\n', "; ")
                    ))
                })
                .collect())
        }
    }
}

/// The problems in the order the file has them (the environment's last).
fn in_file_order(mut problems: Vec<(Option<(usize, usize)>, ConfigError)>) -> Vec<ConfigError> {
    problems.sort_by_key(|(at, _)| at.unwrap_or((usize::MAX, 0)));
    problems.into_iter().map(|(_, problem)| problem).collect()
}

/// 1-based line and column (in characters) of byte `offset` of `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

/// `SWEEP__BATCH_SIZE` → `sweep.batch_size`.
fn dotted(env_key: &str) -> String {
    env_key
        .split("__")
        .map(str::to_ascii_lowercase)
        .collect::<Vec<_>>()
        .join(".")
}

/// The dotted key a deserialization error is about: the keys it went through, and the field
/// an unknown-field error names.
fn error_path(error: &toml::de::Error) -> String {
    // A table's errors carry the keys they passed; without a span (a `toml::Value` has none)
    // the error's text ends with them: "…\nin `sweep.batch_size`".
    let text = error.to_string();
    let mut path: Vec<String> = text
        .rfind("\nin `")
        .and_then(|at| text[at + 5..].split('`').next())
        .filter(|keys| !keys.is_empty())
        .map(|keys| keys.split('.').map(str::to_owned).collect())
        .unwrap_or_default();
    if let Some(field) = error
        .message()
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
    {
        path.push(field.to_owned());
    }
    path.join(".")
}

/// Line and column where the file writes `path` (the value, or the nearest enclosing key it
/// writes; in an array of tables, the first table that has the key).
fn locate(text: &str, path: &str) -> Option<(usize, usize)> {
    let document = toml::de::DeTable::parse(text).ok()?;
    let mut table = document.get_ref();
    let mut found = None;
    for key in path.split('.') {
        let Some((name, value)) = table.iter().find(|(name, _)| name.get_ref() == key) else {
            break;
        };
        found = Some(name.span().start);
        match value.get_ref() {
            toml::de::DeValue::Table(inner) => table = inner,
            toml::de::DeValue::Array(items) => {
                let next = path.split('.').skip_while(|k| *k != key).nth(1);
                let inner = items.iter().find_map(|item| match item.get_ref() {
                    toml::de::DeValue::Table(t)
                        if next.is_some_and(|n| t.iter().any(|(k, _)| k.get_ref() == n)) =>
                    {
                        Some(t)
                    }
                    _ => None,
                });
                match inner {
                    Some(inner) => table = inner,
                    None => break,
                }
            }
            _ => break,
        }
    }
    found.map(|offset| line_column(text, offset))
}

/// Removes the key at the dotted `path` (in an array of tables, the whole array): the default
/// applies. False when nothing was removed.
fn remove_path(table: &mut toml::Table, path: &str) -> bool {
    let keys: Vec<&str> = path.split('.').collect();
    let mut target = table;
    for (i, key) in keys.iter().enumerate() {
        let last = i + 1 == keys.len();
        let descend = match target.get(*key) {
            None => return false,
            Some(toml::Value::Table(_)) => !last,
            Some(_) => false,
        };
        if !descend {
            return target.remove(*key).is_some();
        }
        match target.get_mut(*key) {
            Some(toml::Value::Table(inner)) => target = inner,
            _ => return false,
        }
    }
    false
}

/// Keys whose value is a string or a path: an environment variable gives them its value as it
/// is, never parsed, so a secret, a number or a file name made of digits stays a string.
/// (`tests::every_string_key_is_listed` keeps this list complete.)
pub(crate) const STRING_KEYS: [&str; 16] = [
    "listen",
    "http_addr",
    "database_url",
    "clock",
    "timezone",
    "log_format",
    "lifecycle.recharge_hotline",
    "sweep.cron",
    "bss.webhook_url",
    "bss.webhook_secret",
    "bss.ca_file",
    "bss.client_cert",
    "bss.client_key",
    "tls.cert",
    "tls.key",
    "tls.client_ca",
];

/// Keys holding a list of strings: a TOML array (`["110", "112"]`) or a comma-separated list
/// (`110,112`) whose items are taken as they are (trimmed).
pub(crate) const STRING_LIST_KEYS: [&str; 2] = ["lifecycle.special_numbers", "bss.webhook_events"];

/// The value an environment variable gives the key at `path` (lower case, sections first).
fn env_value(path: &[String], value: &str) -> toml::Value {
    let dotted = path.join(".");
    if STRING_KEYS.contains(&dotted.as_str()) {
        return toml::Value::String(value.to_owned());
    }
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"));
    if STRING_LIST_KEYS.contains(&dotted.as_str()) {
        return match parsed {
            Some(list @ toml::Value::Array(_)) => list,
            _ => toml::Value::Array(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(|item| toml::Value::String(item.to_owned()))
                    .collect(),
            ),
        };
    }
    // Not TOML: kept as a string, so the type error names the key.
    parsed.unwrap_or_else(|| toml::Value::String(value.to_owned()))
}

fn deserialize(table: toml::Table) -> Result<Config, toml::de::Error> {
    toml::Value::Table(table).try_into()
}

fn overlay_env(
    table: &mut toml::Table,
    name: &str,
    key: &str,
    value: &str,
) -> Result<(), ConfigError> {
    let path: Vec<String> = key.split("__").map(str::to_ascii_lowercase).collect();
    let parsed = env_value(&path, value);
    let (last, sections) = path.split_last().expect("split yields at least one part");
    let mut target = table;
    for section in sections {
        let entry = target
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        target = entry
            .as_table_mut()
            .ok_or_else(|| ConfigError(format!("{name}: {section} is not a section")))?;
    }
    target.insert(last.clone(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_match_the_spec() {
        let config = Config::load(&Overrides::default(), env(&[])).unwrap();
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
        let err =
            Config::load(&Overrides::default(), env(&[("OCS_TIMEZONE", "Mars/Base")])).unwrap_err();
        assert!(err.to_string().contains("timezone"), "{err}");
        let err = Config::load(
            &Overrides::default(),
            env(&[("OCS_LIFECYCLE__GRACE_DAYS", "0")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("grace_days"), "{err}");
        let err = Config::load(
            &Overrides::default(),
            env(&[("OCS_LIFECYCLE__GRACE_DAYZ", "1")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("grace_dayz"), "{err}");
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
    fn sweep_and_notify_sections_have_defaults_and_are_checked() {
        let config = Config::load(&Overrides::default(), env(&[])).unwrap();
        assert_eq!(config.sweep.batch_size, 1000);
        assert_eq!(config.sweep.cron, "0 5 0 * * *");
        assert_eq!(config.notify.expiring_days, 7);
        assert_eq!(config.rules().unwrap().expiring_days, 7);
        let config = Config::load(
            &Overrides::default(),
            env(&[
                ("OCS_SWEEP__BATCH_SIZE", "10"),
                ("OCS_NOTIFY__EXPIRING_DAYS", "3"),
            ]),
        )
        .unwrap();
        assert_eq!(config.sweep.batch_size, 10);
        assert_eq!(config.rules().unwrap().expiring_days, 3);
        let err =
            Config::load(&Overrides::default(), env(&[("OCS_SWEEP__CRON", "nope")])).unwrap_err();
        assert!(err.to_string().contains("sweep.cron"), "{err}");
        let err = Config::load(
            &Overrides::default(),
            env(&[("OCS_SWEEP__BATCH_SIZE", "0")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("sweep.batch_size"), "{err}");
    }

    #[test]
    fn tokens_and_tls_come_from_the_environment_and_are_checked() {
        let hash = "ab".repeat(32);
        let config = Config::load(
            &Overrides::default(),
            env(&[(
                "OCS_AUTH__TOKENS",
                &format!(r#"[{{name = "gw", role = "business_hall", sha256 = "{hash}"}}]"#),
            )]),
        )
        .unwrap();
        assert!(config.auth.enabled());
        assert_eq!(
            config.auth.tokens[0].role,
            super::security::Role::BusinessHall
        );
        let err = Config::load(
            &Overrides::default(),
            env(&[(
                "OCS_AUTH__TOKENS",
                &format!(r#"[{{name = "gw", role = "root", sha256 = "{hash}"}}]"#),
            )]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("root"), "{err}");
        let err = Config::load(
            &Overrides::default(),
            env(&[("OCS_TLS__CERT", "/nonexistent/server.pem")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("tls.key"), "{err}");
        let err = Config::load(
            &Overrides::default(),
            env(&[
                ("OCS_TLS__CERT", "/nonexistent/server.pem"),
                ("OCS_TLS__KEY", "/nonexistent/server.key"),
            ]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("tls.cert: cannot read"), "{err}");
    }

    #[test]
    fn client_variables_are_neither_configuration_nor_warned_about() {
        let config = Config::load(
            &Overrides::default(),
            env(&[
                ("OCS_SERVER", "http://10.0.0.1:50051"),
                ("OCS_TOKEN", "secret"),
                ("OCS_CA_CERT", "/etc/ocs/ca.pem"),
                ("OCS_CLIENT_CERT", "/etc/ocs/client.pem"),
                ("OCS_CLIENT_KEY", "/etc/ocs/client.key"),
            ]),
        )
        .unwrap();
        assert!(config.ignored_env.is_empty(), "{:?}", config.ignored_env);
    }

    #[test]
    fn http_addr_defaults_to_9464_on_loopback_and_off_disables_it() {
        let config = Config::load(&Overrides::default(), env(&[])).unwrap();
        assert_eq!(config.http_addr, Some("127.0.0.1:9464".parse().unwrap()));
        for off in ["off", "OFF", ""] {
            let config =
                Config::load(&Overrides::default(), env(&[("OCS_HTTP_ADDR", off)])).unwrap();
            assert_eq!(config.http_addr, None, "{off:?}");
        }
        let config = Config::load(
            &Overrides::default(),
            env(&[("OCS_HTTP_ADDR", "0.0.0.0:9100"), ("OCS_INSECURE", "true")]),
        )
        .unwrap();
        assert_eq!(config.http_addr, Some("0.0.0.0:9100".parse().unwrap()));
        // Without tokens, beyond loopback only with `insecure` (as `listen`).
        let err = Config::load(
            &Overrides::default(),
            env(&[("OCS_HTTP_ADDR", "0.0.0.0:9100")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("http_addr: 0.0.0.0:9100"), "{err}");
        let flags = Overrides {
            http_addr: Some("off".parse().unwrap()),
            ..Overrides::default()
        };
        let config = Config::load(&flags, env(&[("OCS_HTTP_ADDR", "127.0.0.1:1")])).unwrap();
        assert_eq!(config.http_addr, None, "the flag wins over the environment");
        let err =
            Config::load(&Overrides::default(), env(&[("OCS_HTTP_ADDR", "nowhere")])).unwrap_err();
        assert!(err.to_string().contains("http_addr"), "{err}");
        assert!(err.to_string().contains("nowhere"), "{err}");
        let err =
            Config::load(&Overrides::default(), env(&[("OCS_HTTP_ADDR", "9464")])).unwrap_err();
        assert!(err.to_string().contains("http_addr"), "{err}");
    }

    #[test]
    fn string_settings_from_the_environment_are_taken_as_they_are() {
        let config = Config::load(
            &Overrides::default(),
            env(&[
                ("OCS_LIFECYCLE__RECHARGE_HOTLINE", "10086"),
                ("OCS_BSS__WEBHOOK_URL", "http://127.0.0.1:9/hook"),
                ("OCS_BSS__WEBHOOK_SECRET", "0123456789"),
                ("OCS_LIFECYCLE__SPECIAL_NUMBERS", "110, 112,10010"),
                ("OCS_BSS__WEBHOOK_EVENTS", "NUMBER_RECYCLED,STATE_CHANGED"),
                ("OCS_LIFECYCLE__GRACE_DAYS", "60"),
                ("OCS_INSECURE", "true"),
            ]),
        )
        .unwrap();
        assert_eq!(config.lifecycle.recharge_hotline, "10086");
        assert_eq!(config.rules().unwrap().recharge_hotline, "10086");
        assert_eq!(config.bss.webhook_secret, "0123456789");
        assert_eq!(config.lifecycle.special_numbers, ["110", "112", "10010"]);
        assert_eq!(config.bss.event_types().unwrap().len(), 2);
        assert_eq!(config.lifecycle.grace_days, 60, "numbers are parsed");
        assert!(config.insecure, "booleans are parsed");
        // Values that read as other TOML types stay strings too, exactly as given.
        for secret in ["true", "1.5", "[1]", "\"quoted\"", "1979-05-27", " spaced "] {
            let config = Config::load(
                &Overrides::default(),
                env(&[("OCS_BSS__WEBHOOK_SECRET", secret)]),
            )
            .unwrap();
            assert_eq!(config.bss.webhook_secret, secret);
        }
        // A TOML array still works for a list, and a path made of digits is a path.
        let config = Config::load(
            &Overrides::default(),
            env(&[
                ("OCS_LIFECYCLE__SPECIAL_NUMBERS", "[\"110\", \"120\"]"),
                ("OCS_TIMEZONE", "UTC"),
            ]),
        )
        .unwrap();
        assert_eq!(config.lifecycle.special_numbers, ["110", "120"]);
        let err =
            Config::load(&Overrides::default(), env(&[("OCS_TLS__CERT", "12345")])).unwrap_err();
        assert!(err.to_string().contains("tls.key: missing"), "{err}");
        // A number setting given something else names its key.
        let err = Config::load(
            &Overrides::default(),
            env(&[("OCS_LIFECYCLE__GRACE_DAYS", "ninety")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("grace_days"), "{err}");
    }

    /// Dotted paths of the leaves of `value` with what they hold.
    fn leaves(value: &serde_json::Value, prefix: &str, out: &mut Vec<(String, serde_json::Value)>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    leaves(value, &path, out);
                }
            }
            other => out.push((prefix.to_owned(), other.clone())),
        }
    }

    #[test]
    fn every_string_key_is_listed() {
        let mut found = Vec::new();
        leaves(
            &serde_json::to_value(Config::default()).unwrap(),
            "",
            &mut found,
        );
        // Lists of tables, parsed as TOML.
        let tables = ["tariff", "auth.tokens"];
        for (path, value) in found {
            let listed = STRING_KEYS.contains(&path.as_str());
            let listed_list = STRING_LIST_KEYS.contains(&path.as_str());
            match value {
                // Strings, and the optional paths (unset by default).
                serde_json::Value::String(_) | serde_json::Value::Null => {
                    assert!(listed, "{path} holds a string: add it to STRING_KEYS")
                }
                serde_json::Value::Array(items) if !tables.contains(&path.as_str()) => {
                    assert!(
                        listed_list && items.iter().all(|i| i.is_string()),
                        "{path} is a list of strings: add it to STRING_LIST_KEYS"
                    )
                }
                _ => assert!(!listed && !listed_list, "{path} is not a string"),
            }
        }
    }

    #[test]
    fn foreign_ocs_variables_are_ignored_and_reported() {
        let config = Config::load(
            &Overrides::default(),
            env(&[("OCS_TEST_DATABASE_URL", "x")]),
        )
        .unwrap();
        assert_eq!(
            config.ignored_env,
            vec!["OCS_TEST_DATABASE_URL".to_string()]
        );
    }
}
