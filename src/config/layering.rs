//! Reading the layers: the file (every syntax error with its line and column), the `OCS_*`
//! environment over it, the flags on top; a key whose value does not fit is named with where
//! it was set (the file's line and column, or the variable) and left at its default, so that
//! every problem is found at once.

use std::path::Path;

use super::env::{dotted, overlay_env, select_env};
use super::{Config, ConfigError, Overrides, config_file};

impl Config {
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
        let (applied, ignored_env) = select_env(&env);
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
        overrides.apply(&mut config);
        config.ignored_env = ignored_env;
        Ok((config, problems))
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

fn deserialize(table: toml::Table) -> Result<Config, toml::de::Error> {
    toml::Value::Table(table).try_into()
}
