//! Validation of a layered [`Config`], and `ocs-lifecycle config check`.
//!
//! [`Config::problems`] runs every check and returns every problem, each naming its key;
//! [`Config::validate`] (called by [`Config::load`], so by `serve`, `migrate` and `sweep`)
//! fails on the first. `config check` prints all of them, or `configuration OK` and a summary.

use std::io::Write;
use std::str::FromStr;

use chrono_tz::Tz;
use sqlx::sqlite::SqliteConnectOptions;

use super::{Config, ConfigError, Overrides};
use crate::lifecycle::{Rules, Tariff, TariffTier};
use crate::store::PgTargets;

/// The longest period any key may name (100 years), so date arithmetic cannot overflow.
const MAX_DAYS: u32 = 36_500;

/// `ocs-lifecycle config …`: the configuration itself.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Load the configuration (file, OCS_* environment, flags), run every check, and print
    /// `configuration OK` with a summary, or every problem naming its key (exit code 2).
    Check,
}

impl ConfigCommand {
    /// Runs the command; the summary goes to `out`, warnings to `warn`. The error holds every
    /// problem found.
    pub fn run(
        &self,
        overrides: &Overrides,
        env: impl IntoIterator<Item = (String, String)>,
        out: &mut impl Write,
        warn: &mut impl Write,
    ) -> Result<(), Vec<ConfigError>> {
        match self {
            ConfigCommand::Check => {
                // Every problem at once: the keys whose values do not fit, then the values.
                let (config, mut problems) = Config::layered_all(overrides, env)?;
                problems.extend(config.problems());
                if !problems.is_empty() {
                    return Err(problems);
                }
                for name in &config.ignored_env {
                    // Only a warning: serve ignores these variables too.
                    let _ = writeln!(
                        warn,
                        "warning: environment variable {name} names no configuration key; ignored"
                    );
                }
                config
                    .write_summary(out)
                    .map_err(|e| vec![ConfigError(format!("cannot write the summary: {e}"))])
            }
        }
    }
}

impl Config {
    /// Fails with the first of [`Config::problems`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.problems().into_iter().next() {
            Some(problem) => Err(problem),
            None => Ok(()),
        }
    }

    /// Every problem of this configuration, each naming its key; empty = valid. Reads the TLS
    /// files; connects to nothing.
    pub fn problems(&self) -> Vec<ConfigError> {
        let mut problems = Vec::new();
        let mut note = |result: Result<(), ConfigError>| {
            if let Err(e) = result {
                problems.push(e);
            }
        };
        note(self.check_listen());
        note(self.check_http_addr());
        note(self.check_database_url());
        note(self.check_pool_size());
        note(self.parsed_timezone().map(drop));
        if self.shutdown_timeout_secs == 0 {
            note(Err(ConfigError(
                "shutdown_timeout_secs must be at least 1 (seconds a graceful shutdown waits \
                 for in-flight requests)"
                    .into(),
            )));
        }
        note(super::grpc::check_range(
            "drain_secs",
            self.drain_secs,
            0..=3_600,
            "seconds health says NOT_SERVING before the listeners close at shutdown",
        ));
        note(check_lifecycle(&self.lifecycle_rules()));
        note(self.parsed_tariff().map(drop));
        note(self.check_sweep());
        note(self.bss.validate());
        note(self.auth.hashes().map(drop));
        note(self.tls.load().map(drop));
        problems.extend(self.grpc.problems());
        problems
    }

    pub(super) fn parsed_timezone(&self) -> Result<Tz, ConfigError> {
        self.timezone.parse().map_err(|_| {
            ConfigError(format!(
                "timezone: {:?} is not an IANA time zone name (e.g. Asia/Shanghai)",
                self.timezone
            ))
        })
    }

    /// The tariff: minimums ≥ 1 and distinct; ordered by minimum, each tier grants more days
    /// than the one below it (a larger recharge never buys less validity).
    pub(super) fn parsed_tariff(&self) -> Result<Tariff, ConfigError> {
        let tiers = self
            .tariff
            .iter()
            .map(|t| TariffTier {
                min_amount: t.min_amount,
                days: t.days,
            })
            .collect();
        let tariff = Tariff::new(tiers).map_err(|e| ConfigError(format!("tariff: {e}")))?;
        for tier in tariff.tiers() {
            if tier.days == 0 || tier.days > MAX_DAYS {
                return Err(ConfigError(format!(
                    "tariff: the tier from {} grants {} days; days must be between 1 and \
                     {MAX_DAYS}",
                    tier.min_amount, tier.days
                )));
            }
        }
        if let Some(pair) = tariff.tiers().windows(2).find(|w| w[1].days <= w[0].days) {
            return Err(ConfigError(format!(
                "tariff: tiers must grant strictly more days as the amount increases; the tier \
                 from {} grants {} days, the tier from {} grants {}",
                pair[1].min_amount, pair[1].days, pair[0].min_amount, pair[0].days
            )));
        }
        Ok(tariff)
    }

    /// The `[lifecycle]` and `[notify]` values as rules, with the default zone and tariff
    /// (those two are checked on their own).
    pub(super) fn lifecycle_rules(&self) -> Rules {
        let l = &self.lifecycle;
        Rules {
            initial_validity_days: l.initial_validity_days,
            grace_days: l.grace_days,
            lock_days: l.lock_days,
            max_validity_days: l.max_validity_days,
            card_life_days: l.card_life_days,
            unlock_grace_days: l.unlock_grace_days,
            expiring_days: self.notify.expiring_days,
            special_numbers: l.special_numbers.clone(),
            recharge_hotline: l.recharge_hotline.clone(),
            ..Rules::default()
        }
    }

    pub(super) fn check_sweep(&self) -> Result<(), ConfigError> {
        if self.sweep.batch_size == 0 || self.sweep.batch_size > 100_000 {
            return Err(ConfigError(format!(
                "sweep.batch_size must be between 1 and 100000, got {}",
                self.sweep.batch_size
            )));
        }
        self.sweep.schedule().map(drop)
    }

    pub(super) fn check_pool_size(&self) -> Result<(), ConfigError> {
        if self.db_pool_size == 0 || self.db_pool_size > 1_000 {
            return Err(ConfigError(format!(
                "db_pool_size must be between 1 and 1000, got {}",
                self.db_pool_size
            )));
        }
        if let Some(writers) = self.group_commit_writers
            && writers >= self.db_pool_size as usize
        {
            return Err(ConfigError(format!(
                "group_commit_writers ({writers}) must be below db_pool_size ({}): each writer \
                 holds a connection while it commits, and reads need the others",
                self.db_pool_size
            )));
        }
        if !(1..=600_000).contains(&self.db_acquire_timeout_ms) {
            return Err(ConfigError(format!(
                "db_acquire_timeout_ms must be between 1 and 600000, got {}",
                self.db_acquire_timeout_ms
            )));
        }
        Ok(())
    }

    /// The URL is parsed, not connected to; the message never repeats it (it may hold a
    /// password).
    fn check_database_url(&self) -> Result<(), ConfigError> {
        let url = self.database_url.trim();
        let parsed = if url.starts_with("sqlite:") {
            SqliteConnectOptions::from_str(url).map(drop)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            // libpq's multi-host form too: postgres://user@h1:5432,h2:5432/db?target_session_attrs=…
            return PgTargets::parse(url)
                .map(drop)
                .map_err(|e| ConfigError(format!("database_url: {e}")));
        } else {
            return Err(ConfigError(
                "database_url must start with sqlite: (sqlite://PATH) or postgres:// \
                 (postgres://USER@HOST:PORT/DB)"
                    .into(),
            ));
        };
        parsed.map_err(|e| ConfigError(format!("database_url: not a valid URL: {e}")))
    }

    /// Without tokens every caller is trusted: loopback only unless `insecure`.
    fn check_listen(&self) -> Result<(), ConfigError> {
        if !self.auth.enabled() && !self.listen.ip().is_loopback() && !self.insecure {
            return Err(ConfigError(format!(
                "listen: {} is not a loopback address and no [[auth.tokens]] are configured \
                 (configure tokens, or set insecure = true / --insecure to serve without \
                 authentication)",
                self.listen
            )));
        }
        Ok(())
    }

    /// The operations endpoint likewise: without tokens its dashboard data has no
    /// authentication, so loopback only unless `insecure`.
    fn check_http_addr(&self) -> Result<(), ConfigError> {
        match self.http_addr {
            Some(addr) if !self.auth.enabled() && !addr.ip().is_loopback() && !self.insecure => {
                Err(ConfigError(format!(
                    "http_addr: {addr} is not a loopback address and no [[auth.tokens]] are \
                     configured, so the dashboard's data would be served without \
                     authentication (configure tokens, set insecure = true / --insecure, or \
                     http_addr = \"off\")"
                )))
            }
            _ => Ok(()),
        }
    }
}

/// The `[lifecycle]`/`[notify]` checks of the rules, named by key.
pub(super) fn check_lifecycle(rules: &Rules) -> Result<(), ConfigError> {
    if rules.expiring_days > MAX_DAYS {
        return Err(ConfigError(format!(
            "notify.expiring_days must be between 0 and {MAX_DAYS} days, got {}",
            rules.expiring_days
        )));
    }
    rules
        .validate()
        .map_err(|e| ConfigError(format!("lifecycle.{e}")))?;
    let numbers = rules
        .special_numbers
        .iter()
        .map(|n| ("special_numbers", n))
        .chain([("recharge_hotline", &rules.recharge_hotline)]);
    for (key, number) in numbers {
        let digits = number.strip_prefix('+').unwrap_or(number);
        if digits.is_empty() || digits.len() > 20 || !digits.chars().all(|c| c.is_ascii_digit()) {
            return Err(ConfigError(format!(
                "lifecycle.{key}: {number:?} is not a dialled number (digits, optional leading +)"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/ocs-lifecycle.example.toml");

    /// Dotted paths of every key: tables are walked, anything else (arrays too) is a key.
    fn key_paths(value: &serde_json::Value, prefix: &str, paths: &mut BTreeSet<String>) {
        let serde_json::Value::Object(table) = value else {
            paths.insert(prefix.to_owned());
            return;
        };
        for (key, value) in table {
            match prefix {
                "" => key_paths(value, key, paths),
                _ => key_paths(value, &format!("{prefix}.{key}"), paths),
            }
        }
    }

    fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let flags = Overrides {
            config: Some(path.to_path_buf()),
            ..Overrides::default()
        };
        Config::load(&flags, Vec::new())
    }

    #[test]
    fn the_example_file_loads_and_holds_exactly_the_defaults() {
        let config = load(std::path::Path::new(EXAMPLE)).expect("the example loads");
        assert_eq!(
            serde_json::to_value(&config).unwrap(),
            serde_json::to_value(Config::default()).unwrap(),
            "the active values of ocs-lifecycle.example.toml are the defaults"
        );
    }

    /// Commented-out settings are written `#key = value` / `#[section]` (no space after `#`);
    /// prose comments have a space. With those uncommented, the file must name every key the
    /// structs know, with a value of the right type.
    #[test]
    fn the_example_file_names_every_key() {
        let text = std::fs::read_to_string(EXAMPLE).unwrap();
        let uncommented: String = text
            .lines()
            .map(|line| match line.strip_prefix('#') {
                Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase() || c == '[') => {
                    rest
                }
                _ => line,
            })
            .map(|line| format!("{line}\n"))
            .collect();
        let all: Config = toml::from_str(&uncommented)
            .unwrap_or_else(|e| panic!("the example with every setting uncommented: {e}"));
        let mut expected = BTreeSet::new();
        key_paths(
            &serde_json::to_value(Config::default()).unwrap(),
            "",
            &mut expected,
        );
        // Serializing the parsed Config would show every field whatever the file held: look
        // at the file's own keys.
        let table: toml::Table = uncommented.parse().unwrap();
        let mut named = BTreeSet::new();
        key_paths(&serde_json::to_value(&table).unwrap(), "", &mut named);
        let missing: Vec<_> = expected.difference(&named).collect();
        assert!(
            missing.is_empty(),
            "keys missing from the example: {missing:?}"
        );
        assert!(!all.auth.tokens.is_empty(), "an [[auth.tokens]] example");
        let top: BTreeSet<&str> = table.keys().map(String::as_str).collect();
        assert_eq!(top, super::super::KEYS.into_iter().collect());
    }

    fn problems_of(toml_text: &str) -> Vec<String> {
        let config: Config = toml::from_str(toml_text).unwrap();
        config.problems().into_iter().map(|e| e.0).collect()
    }

    #[test]
    fn group_commit_writers_default_by_pool_and_cores_and_a_set_value_is_checked() {
        let writers = |toml_text: &str| toml::from_str::<Config>(toml_text).unwrap();
        let auto = crate::config::auto_group_commit_writers;
        // (pool, cores) → writers: a quarter of the pool, at most 4, at most half the cores.
        for (pool, cores, expected) in [
            (16, 8, 4),
            (64, 32, 4),
            (8, 8, 2),
            (16, 2, 1),
            (16, 1, 1),
            (16, 6, 3),
            (3, 8, 0),
            (4, 1, 1),
        ] {
            assert_eq!(auto(pool, cores), expected, "pool {pool}, {cores} cores");
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(writers("").group_commit_writers(), auto(16, cores));
        assert_eq!(writers("db_pool_size = 3").group_commit_writers(), 0);
        assert!(problems_of("db_pool_size = 3").is_empty());
        assert_eq!(
            writers("group_commit_writers = 0").group_commit_writers(),
            0
        );
        let problems = problems_of("db_pool_size = 4\ngroup_commit_writers = 4\n");
        assert!(
            problems[0].starts_with("group_commit_writers (4)"),
            "{problems:?}"
        );
    }

    #[test]
    fn every_problem_is_reported_and_names_its_key() {
        let problems = problems_of(
            "timezone = \"Mars/Base\"\nshutdown_timeout_secs = 0\n\
             [lifecycle]\ngrace_days = 0\n[sweep]\nbatch_size = 0\n",
        );
        assert_eq!(problems.len(), 4, "{problems:?}");
        for key in [
            "timezone",
            "shutdown_timeout_secs",
            "lifecycle.grace_days",
            "sweep.batch_size",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(key)),
                "{key}: {problems:?}"
            );
        }
    }

    #[test]
    fn a_tariff_must_buy_more_days_for_more_money() {
        let problems = problems_of(
            "[[tariff]]\nmin_amount = 1000\ndays = 30\n[[tariff]]\nmin_amount = 5000\ndays = 30\n",
        );
        assert!(problems[0].starts_with("tariff: "), "{problems:?}");
        let problems = problems_of(
            "[[tariff]]\nmin_amount = 5000\ndays = 180\n[[tariff]]\nmin_amount = 1000\ndays = 30\n",
        );
        assert!(
            problems.is_empty(),
            "file order does not matter: {problems:?}"
        );
    }

    #[test]
    fn database_urls_and_listen_are_checked_without_echoing_passwords() {
        let problems = problems_of("database_url = \"mysql://u:hunter2@db/ocs\"\n");
        assert!(problems[0].starts_with("database_url"), "{problems:?}");
        assert!(!problems[0].contains("hunter2"), "{problems:?}");
        let problems = problems_of("listen = \"0.0.0.0:50051\"\n");
        assert!(problems[0].starts_with("listen"), "{problems:?}");
        assert!(problems_of("listen = \"0.0.0.0:50051\"\ninsecure = true\n").is_empty());
        let problems = problems_of("http_addr = \"0.0.0.0:9464\"\n");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("http_addr"), "{problems:?}");
        assert!(problems_of("http_addr = \"0.0.0.0:9464\"\ninsecure = true\n").is_empty());
        assert!(problems_of("http_addr = \"off\"\nlisten = \"127.0.0.1:1\"\n").is_empty());
        let with_token = format!(
            "http_addr = \"0.0.0.0:9464\"\n[[auth.tokens]]\nname = \"a\"\nrole = \"admin\"\n\
             sha256 = \"{}\"\n",
            "ab".repeat(32)
        );
        assert!(problems_of(&with_token).is_empty());
        let config: Config =
            toml::from_str("database_url = \"postgres://u:hunter2@db:5433/ocs\"\n").unwrap();
        let mut summary = Vec::new();
        config.write_summary(&mut summary).unwrap();
        let summary = String::from_utf8(summary).unwrap();
        assert!(summary.contains("postgresql db:5433/ocs"), "{summary}");
        let writers = config.group_commit_writers();
        assert!(
            summary.contains(&format!("(pool 16, group commit writers {writers})")),
            "{summary}"
        );
        assert!(!summary.contains("hunter2"), "{summary}");
        let config: Config = toml::from_str(
            "database_url = \"postgres://u:hunter2@db1:5433,db2/ocs?target_session_attrs=primary\"\n",
        )
        .unwrap();
        assert!(config.problems().is_empty(), "{:?}", config.problems());
        let mut summary = Vec::new();
        config.write_summary(&mut summary).unwrap();
        let summary = String::from_utf8(summary).unwrap();
        assert!(
            summary.contains("postgresql db1:5433, db2:5432/ocs (the host that is primary"),
            "{summary}"
        );
        assert!(!summary.contains("hunter2"), "{summary}");
        for (url, expected) in [
            (
                "postgres://u:hunter2@db1,,db2/ocs",
                "database_url: host 2: empty host name",
            ),
            (
                "postgres://u:hunter2@db1,db2:70000/ocs",
                "database_url: host 2: port \"70000\" is not a number from 1 to 65535",
            ),
            (
                "postgres://u:hunter2@db1,db2/ocs?target_session_attrs=standby",
                "database_url: target_session_attrs=standby selects a read-only server",
            ),
        ] {
            let problems = problems_of(&format!("database_url = \"{url}\"\n"));
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(problems[0].starts_with(expected), "{problems:?}");
            assert!(!problems[0].contains("hunter2"), "{problems:?}");
        }
        assert_eq!(
            super::super::summary::url_origin("https://u:p@bss.example:8443/hook?x=1"),
            "https://bss.example:8443"
        );
    }
}
