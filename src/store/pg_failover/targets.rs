//! A PostgreSQL `database_url` taken apart: libpq's multi-host form
//! (`postgres://user@host1:5432,host2:5432/db?target_session_attrs=read-write`), which sqlx
//! does not parse (its issue 2290), into the hosts in order, the single-host URL sqlx parses
//! for each, and what the service needs of the host it writes to ([`TargetSessionAttrs`]).
//!
//! Pure parsing: no connection is opened here; `super` (the follower) does that.

use std::fmt;
use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;

/// libpq's `target_session_attrs`, restricted to what a service that writes can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetSessionAttrs {
    /// A host where `SHOW transaction_read_only` is `off` (the default with several hosts).
    ReadWrite,
    /// A host not in recovery (`pg_is_in_recovery()` is false).
    Primary,
    /// The first host that accepts a connection, as libpq does.
    Any,
}

impl TargetSessionAttrs {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetSessionAttrs::ReadWrite => "read-write",
            TargetSessionAttrs::Primary => "primary",
            TargetSessionAttrs::Any => "any",
        }
    }
}

/// One host of the list, as written (`host:port`, the port defaulted to 5432).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgHost {
    /// A name or an IPv4 address, or an IPv6 address in brackets.
    pub host: String,
    pub port: u16,
}

impl fmt::Display for PgHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// A PostgreSQL `database_url` taken apart: the hosts in order and, per host, the URL sqlx
/// parses (user, password, database and every other parameter as written).
#[derive(Clone, Debug)]
pub struct PgTargets {
    pub hosts: Vec<PgHost>,
    /// `None`: not in the URL.
    pub target_session_attrs: Option<TargetSessionAttrs>,
    /// `postgres://user:password@` (the scheme and user information as written).
    prefix: String,
    /// `/db?params` without `target_session_attrs`.
    suffix: String,
}

impl PgTargets {
    /// Parses `postgres://[user[:password]@]host[:port][,host[:port]…][/db][?params]`. The
    /// error never repeats the URL (it may hold a password).
    pub fn parse(url: &str) -> Result<PgTargets, String> {
        let url = url.trim();
        let scheme_end = url
            .find("://")
            .filter(|&i| matches!(&url[..i], "postgres" | "postgresql"))
            .ok_or("a PostgreSQL URL starts with postgres:// or postgresql://")?
            + 3;
        let rest = &url[scheme_end..];
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        let (credentials, host_list) = match authority.rfind('@') {
            Some(at) => (&authority[..=at], &authority[at + 1..]),
            None => ("", authority),
        };
        let (path, query) = match rest[authority_end..].split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (&rest[authority_end..], None),
        };
        let mut target_session_attrs = None;
        let mut kept = Vec::new();
        for pair in query.unwrap_or_default().split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "target_session_attrs" => {
                    target_session_attrs = Some(parse_target_session_attrs(value)?);
                }
                "host" | "hostaddr" | "port" if value.contains(',') => {
                    return Err(format!(
                        "a list in ?{key}= is not supported: write the hosts in the authority, \
                         e.g. postgres://user@host1:5432,host2:5432/db"
                    ));
                }
                _ => kept.push(pair),
            }
        }
        let hosts = if host_list.is_empty() {
            // A Unix socket directory in `?host=`, or sqlx's default host.
            Vec::new()
        } else {
            host_list
                .split(',')
                .enumerate()
                .map(|(i, entry)| parse_host(entry).map_err(|e| format!("host {}: {e}", i + 1)))
                .collect::<Result<Vec<_>, _>>()?
        };
        if hosts.is_empty() && target_session_attrs.is_some() {
            return Err("target_session_attrs needs the hosts in the URL \
                 (postgres://user@host1:5432,host2:5432/db)"
                .into());
        }
        let kept: Vec<&str> = kept.into_iter().filter(|p| !p.is_empty()).collect();
        let suffix = if kept.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{}", kept.join("&"))
        };
        let targets = PgTargets {
            hosts,
            target_session_attrs,
            prefix: format!("{}{credentials}", &url[..scheme_end]),
            suffix,
        };
        // Every other parameter as sqlx reads it.
        for url in targets.host_urls() {
            PgConnectOptions::from_str(&url).map_err(|e| format!("not a valid URL: {e}"))?;
        }
        Ok(targets)
    }

    /// Several hosts, or a `target_session_attrs`: the service follows the primary. One host
    /// without it is one server, connected to as before.
    pub fn follows_primary(&self) -> bool {
        self.hosts.len() > 1 || self.target_session_attrs.is_some()
    }

    /// What a host must be to be written to: `read-write` unless the URL says otherwise.
    pub fn target(&self) -> TargetSessionAttrs {
        self.target_session_attrs
            .unwrap_or(TargetSessionAttrs::ReadWrite)
    }

    /// The single-host URL of each host, in order (the URL as written when it names none).
    pub(super) fn host_urls(&self) -> Vec<String> {
        if self.hosts.is_empty() {
            return vec![format!("{}{}", self.prefix, self.suffix)];
        }
        self.hosts
            .iter()
            .map(|h| format!("{}{h}{}", self.prefix, self.suffix))
            .collect()
    }

    /// `host1:5432, host2:5432` (no credentials), for logs and messages.
    pub fn host_list(&self) -> String {
        let hosts: Vec<String> = self.hosts.iter().map(ToString::to_string).collect();
        hosts.join(", ")
    }
}

fn parse_target_session_attrs(value: &str) -> Result<TargetSessionAttrs, String> {
    match value {
        "read-write" => Ok(TargetSessionAttrs::ReadWrite),
        "primary" => Ok(TargetSessionAttrs::Primary),
        "any" => Ok(TargetSessionAttrs::Any),
        "read-only" | "standby" | "prefer-standby" => Err(format!(
            "target_session_attrs={value} selects a read-only server, but the service writes: \
             use read-write, primary or any"
        )),
        other => Err(format!(
            "target_session_attrs={other:?} is not one of read-write, primary, any"
        )),
    }
}

fn parse_host(entry: &str) -> Result<PgHost, String> {
    let (host, port) = if let Some(v6) = entry.strip_prefix('[') {
        let (address, after) = v6
            .split_once(']')
            .ok_or("an IPv6 address needs its closing bracket: [::1]:5432")?;
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or("only :PORT may follow an IPv6 address")?,
            ),
        };
        (format!("[{address}]"), port)
    } else {
        match entry.split_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (entry.to_owned(), None),
        }
    };
    if host.is_empty() || host == "[]" {
        return Err("empty host name (two commas in a row, or a port without a host?)".into());
    }
    if let Some(bad) = host
        .chars()
        .find(|c| c.is_whitespace() || matches!(c, '/' | '?' | '#' | '@'))
    {
        return Err(format!("{host:?} is not a host name (it holds {bad:?})"));
    }
    let port = match port {
        None => 5432,
        Some(port) => match port.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => return Err(format!("port {port:?} is not a number from 1 to 65535")),
        },
    };
    Ok(PgHost { host, port })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(targets: &PgTargets) -> Vec<String> {
        targets.hosts.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_host_list_is_split_with_default_ports_and_every_other_parameter_kept() {
        let t = PgTargets::parse(
            "postgres://ocs:s3cret@db1:5433,db2,[::1]:6000/ocs?sslmode=disable&\
             target_session_attrs=read-write&application_name=ocs",
        )
        .unwrap();
        assert_eq!(hosts(&t), ["db1:5433", "db2:5432", "[::1]:6000"]);
        assert_eq!(t.target_session_attrs, Some(TargetSessionAttrs::ReadWrite));
        assert!(t.follows_primary());
        assert_eq!(
            t.host_urls(),
            [
                "postgres://ocs:s3cret@db1:5433/ocs?sslmode=disable&application_name=ocs",
                "postgres://ocs:s3cret@db2:5432/ocs?sslmode=disable&application_name=ocs",
                "postgres://ocs:s3cret@[::1]:6000/ocs?sslmode=disable&application_name=ocs",
            ]
        );
        assert_eq!(t.host_list(), "db1:5433, db2:5432, [::1]:6000");
        let options: PgConnectOptions = t.host_urls()[2].parse().unwrap();
        assert_eq!(options.get_port(), 6000);
        assert_eq!(options.get_database(), Some("ocs"));
    }

    #[test]
    fn several_hosts_default_to_read_write_and_one_plain_host_is_not_followed() {
        let t = PgTargets::parse("postgresql://u@a:1,b:2/db").unwrap();
        assert_eq!(t.target_session_attrs, None);
        assert_eq!(t.target(), TargetSessionAttrs::ReadWrite);
        assert!(t.follows_primary());
        let t = PgTargets::parse("postgres://u@a:1/db").unwrap();
        assert!(!t.follows_primary());
        let t = PgTargets::parse("postgres://u@a/db?target_session_attrs=primary").unwrap();
        assert!(t.follows_primary());
        assert_eq!(t.target(), TargetSessionAttrs::Primary);
        let t = PgTargets::parse("postgres://a,b?target_session_attrs=any").unwrap();
        assert_eq!(hosts(&t), ["a:5432", "b:5432"]);
        assert_eq!(t.target(), TargetSessionAttrs::Any);
        // A Unix socket directory in ?host= is one server, as before.
        let t = PgTargets::parse("postgres:///db?host=/var/run/postgresql").unwrap();
        assert!(t.hosts.is_empty());
        assert!(!t.follows_primary());
    }

    #[test]
    fn malformed_host_lists_are_refused_with_a_reason_and_never_the_password() {
        for (url, expected) in [
            ("postgres://u:pw@a:5432,,b/db", "host 2: empty host name"),
            ("postgres://u:pw@a:5432,:5433/db", "host 2: empty host name"),
            ("postgres://u:pw@a:99999,b/db", "host 1: port \"99999\""),
            ("postgres://u:pw@a:0,b/db", "host 1: port \"0\""),
            ("postgres://u:pw@a,b:x/db", "host 2: port \"x\""),
            ("postgres://u:pw@a,b:/db", "host 2: port \"\""),
            ("postgres://u:pw@a,[::1/db", "host 2: an IPv6 address"),
            ("postgres://u:pw@a,[::1]x/db", "host 2: only :PORT"),
            (
                "postgres://u:pw@a,b/db?target_session_attrs=standby",
                "selects a read-only server",
            ),
            (
                "postgres://u:pw@a,b/db?target_session_attrs=read-only",
                "selects a read-only server",
            ),
            (
                "postgres://u:pw@a,b/db?target_session_attrs=rw",
                "is not one of read-write, primary, any",
            ),
            (
                "postgres://u:pw@/db?host=a,b",
                "a list in ?host= is not supported",
            ),
            (
                "postgres://u:pw@a/db?port=5432,5433",
                "a list in ?port= is not supported",
            ),
            (
                "postgres://u:pw@/db?target_session_attrs=read-write",
                "needs the hosts",
            ),
            ("mysql://u:pw@a,b/db", "starts with postgres://"),
            (
                "postgres://u:pw@a,b/db?sslmode=sometimes",
                "not a valid URL",
            ),
        ] {
            let err = PgTargets::parse(url).expect_err(url);
            assert!(err.contains(expected), "{url}: {err}");
            assert!(!err.contains("pw"), "{url}: {err}");
        }
    }
}
