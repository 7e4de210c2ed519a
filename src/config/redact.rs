//! URLs as logs and messages may show them: no password, no secret in a query string.
//!
//! A database URL can carry its password as user information (`postgres://u:pw@host/db`) or as a
//! query parameter (`?password=pw`); a webhook URL can carry user information or a key in its
//! query (`?code=…`, `?token=…`). What is left identifies the place: scheme, user, host, port,
//! path and the names of the parameters.

/// Query parameters whose values are shown: connection settings that are never secret.
const SHOWN_PARAMETERS: [&str; 9] = [
    "sslmode",
    "sslrootcert",
    "application_name",
    "host",
    "port",
    "dbname",
    "mode",
    "cache",
    "statement-cache-capacity",
];

/// `url` with the password of its user information and every query value but the harmless
/// connection settings replaced by `***`, and without a fragment. Text that is not a URL is
/// shown as `***` unless it holds neither `@` nor `?`.
pub fn url(url: &str) -> String {
    let url = url.trim();
    let Some((scheme, rest)) = url.split_once("://") else {
        return if url.contains(['@', '?']) {
            "***".into()
        } else {
            url.to_owned()
        };
    };
    let rest = rest.split('#').next().unwrap_or_default();
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    // Everything before the last '@' is user information, even a password holding '/' that
    // was not percent-encoded (at worst a path holding '@' is hidden too).
    let place = match before_query.rsplit_once('@') {
        Some((userinfo, place)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{place}"),
            None => format!("{userinfo}@{place}"),
        },
        None => before_query.to_owned(),
    };
    let mut shown = format!("{scheme}://{place}");
    if let Some(query) = query {
        let parameters: Vec<String> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|parameter| match parameter.split_once('=') {
                Some((name, value))
                    if SHOWN_PARAMETERS.contains(&name.to_ascii_lowercase().as_str()) =>
                {
                    format!("{name}={value}")
                }
                Some((name, _)) => format!("{name}=***"),
                None => parameter.to_owned(),
            })
            .collect();
        shown.push('?');
        shown.push_str(&parameters.join("&"));
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_query_secrets_are_hidden_places_are_kept() {
        let cases = [
            (
                "postgres://ocs:hunter2@db.internal:5433/ocs",
                "postgres://ocs:***@db.internal:5433/ocs",
            ),
            (
                "postgres://ocs@db/ocs?password=hunter2&sslmode=require",
                "postgres://ocs@db/ocs?password=***&sslmode=require",
            ),
            (
                "postgresql://db/ocs?user=ocs&PassWord=hunter2",
                "postgresql://db/ocs?user=***&PassWord=***",
            ),
            (
                "https://hook:hunter2@bss.example:8443/events?code=hunter2#frag",
                "https://hook:***@bss.example:8443/events?code=***",
            ),
            // A password holding '@' or ':' is still hidden whole.
            ("postgres://u:p@ss:w@rd@db/ocs", "postgres://u:***@db/ocs"),
            ("postgres://u:pa/ss@db/ocs", "postgres://u:***@db/ocs"),
            ("sqlite://ocs-lifecycle.db", "sqlite://ocs-lifecycle.db"),
            ("sqlite:/var/lib/ocs.db", "sqlite:/var/lib/ocs.db"),
            ("not a url with @ secret", "***"),
        ];
        for (given, shown) in cases {
            assert_eq!(url(given), shown, "{given}");
            assert!(!url(given).contains("hunter2"));
        }
    }
}
