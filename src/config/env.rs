//! The `OCS_*` environment layer: which variables are configuration, and the value each gives
//! its key (a string setting as it is; a list of strings as a TOML array or comma-separated;
//! anything else as TOML).

use super::{ConfigError, KEYS};

/// `OCS_*` variables of the command-line client (`--server`, `--token`, `--ca-cert`,
/// `--client-cert`, `--client-key`): not configuration keys, and not warned about when `serve`
/// finds them in its environment.
const CLIENT_ENV: [&str; 5] = ["SERVER", "TOKEN", "CA_CERT", "CLIENT_CERT", "CLIENT_KEY"];

/// The variables of `env` that set a key, as (variable, key part after `OCS_`, value), and the
/// `OCS_*` variables that name no key (ignored, and warned about).
pub(super) fn select_env(env: &[(String, String)]) -> (Vec<(&str, &str, &str)>, Vec<String>) {
    let mut ignored = Vec::new();
    let mut applied = Vec::new();
    for (name, value) in env {
        let Some(key) = name.strip_prefix("OCS_") else {
            continue;
        };
        if key == "CONFIG" || CLIENT_ENV.contains(&key) {
            continue;
        }
        // Other tools share the OCS_ prefix (e.g. OCS_TEST_DATABASE_URL); only variables that
        // name one of our keys or sections are configuration. Typos inside a section are still
        // refused by name.
        let top = key
            .split("__")
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if !KEYS.contains(&top.as_str()) {
            ignored.push(name.clone());
            continue;
        }
        applied.push((name.as_str(), key, value.as_str()));
    }
    (applied, ignored)
}

/// `SWEEP__BATCH_SIZE` → `sweep.batch_size`.
pub(super) fn dotted(env_key: &str) -> String {
    env_key
        .split("__")
        .map(str::to_ascii_lowercase)
        .collect::<Vec<_>>()
        .join(".")
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

pub(super) fn overlay_env(
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
    use super::super::Config;
    use super::super::test_support::{error_of, load_env};
    use super::*;

    #[test]
    fn client_variables_are_neither_configuration_nor_warned_about() {
        let config = load_env(&[
            ("OCS_SERVER", "http://10.0.0.1:50051"),
            ("OCS_TOKEN", "secret"),
            ("OCS_CA_CERT", "/etc/ocs/ca.pem"),
            ("OCS_CLIENT_CERT", "/etc/ocs/client.pem"),
            ("OCS_CLIENT_KEY", "/etc/ocs/client.key"),
        ])
        .unwrap();
        assert!(config.ignored_env.is_empty(), "{:?}", config.ignored_env);
    }

    #[test]
    fn string_settings_from_the_environment_are_taken_as_they_are() {
        let config = load_env(&[
            ("OCS_LIFECYCLE__RECHARGE_HOTLINE", "10086"),
            ("OCS_BSS__WEBHOOK_URL", "http://127.0.0.1:9/hook"),
            ("OCS_BSS__WEBHOOK_SECRET", "0123456789"),
            ("OCS_LIFECYCLE__SPECIAL_NUMBERS", "110, 112,10010"),
            ("OCS_BSS__WEBHOOK_EVENTS", "NUMBER_RECYCLED,STATE_CHANGED"),
            ("OCS_LIFECYCLE__GRACE_DAYS", "60"),
            ("OCS_INSECURE", "true"),
        ])
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
            let config = load_env(&[("OCS_BSS__WEBHOOK_SECRET", secret)]).unwrap();
            assert_eq!(config.bss.webhook_secret, secret);
        }
        // A TOML array still works for a list, and a path made of digits is a path.
        let config = load_env(&[
            ("OCS_LIFECYCLE__SPECIAL_NUMBERS", "[\"110\", \"120\"]"),
            ("OCS_TIMEZONE", "UTC"),
        ])
        .unwrap();
        assert_eq!(config.lifecycle.special_numbers, ["110", "120"]);
        let err = error_of(&[("OCS_TLS__CERT", "12345")]);
        assert!(err.contains("tls.key: missing"), "{err}");
        // A number setting given something else names its key.
        let err = error_of(&[("OCS_LIFECYCLE__GRACE_DAYS", "ninety")]);
        assert!(err.contains("grace_days"), "{err}");
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
        // Numbers unset by default (a value of their own chosen at start), parsed as TOML.
        let optional_numbers = ["group_commit_writers"];
        for (path, value) in found {
            let listed = STRING_KEYS.contains(&path.as_str());
            let listed_list = STRING_LIST_KEYS.contains(&path.as_str());
            match value {
                serde_json::Value::Null if optional_numbers.contains(&path.as_str()) => {
                    assert!(!listed && !listed_list, "{path} is not a string")
                }
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
        let config = load_env(&[("OCS_TEST_DATABASE_URL", "x")]).unwrap();
        assert_eq!(
            config.ignored_env,
            vec!["OCS_TEST_DATABASE_URL".to_string()]
        );
    }
}
