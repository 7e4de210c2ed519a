//! What `config check` prints for a valid configuration: a summary of what `serve` would do,
//! without secrets or passwords.

use std::io::Write;
use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;

use super::Config;
use crate::store::PgTargets;

impl Config {
    /// What `config check` prints for a valid configuration: no secrets, no passwords.
    pub(super) fn write_summary(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(out, "configuration OK")?;
        // SQLite has its one writer whatever `group_commit_writers` says.
        let writers = if self.database_url.starts_with("postgres") {
            format!(", group commit writers {}", self.group_commit_writers())
        } else {
            String::new()
        };
        writeln!(
            out,
            "database: {} (pool {}{writers})",
            database_summary(&self.database_url),
            self.db_pool_size
        )?;
        let tls = match (&self.tls.cert, &self.tls.client_ca) {
            (None, _) => "plaintext",
            (Some(_), None) => "TLS",
            (Some(_), Some(_)) => "mTLS",
        };
        writeln!(out, "listen: {} ({tls})", self.listen)?;
        match self.http_addr {
            Some(addr) => writeln!(out, "http_addr: {addr}")?,
            None => writeln!(out, "http_addr: off")?,
        }
        writeln!(
            out,
            "grpc: at most {} calls at once (more are shed), default deadline {} ms, messages up \
             to {} bytes, keepalive {}; drain {} s at shutdown",
            self.grpc.max_concurrent_requests,
            self.grpc.default_deadline_ms,
            self.grpc.max_message_bytes,
            match self.grpc.keepalive_interval_secs {
                0 => "off".to_owned(),
                secs => format!("every {secs} s"),
            },
            self.drain_secs
        )?;
        writeln!(out, "timezone: {}", self.timezone)?;
        writeln!(
            out,
            "clock: {}",
            match self.clock {
                super::ClockMode::System => "system",
                super::ClockMode::Manual => "manual (TestClock service on)",
            }
        )?;
        if self.auth.enabled() {
            writeln!(out, "auth: on ({} tokens)", self.auth.tokens.len())?;
        } else {
            writeln!(out, "auth: off (no tokens)")?;
        }
        if self.bss.enabled() {
            let events: Vec<&str> = self.bss.webhook_events.iter().map(String::as_str).collect();
            let mut tls = String::new();
            if self.bss.ca_file.is_some() {
                tls.push_str("; trusts bss.ca_file only");
            }
            if self.bss.client_cert.is_some() {
                tls.push_str("; client certificate");
            }
            writeln!(
                out,
                "webhook: on ({}; events {}{tls})",
                url_origin(&self.bss.webhook_url),
                events.join(", ")
            )?;
        } else {
            writeln!(out, "webhook: off")?;
        }
        writeln!(
            out,
            "sweep: cron {:?} ({}), batch_size {}",
            self.sweep.cron,
            if self.sweep.scheduler {
                "scheduler on"
            } else {
                "scheduler off"
            },
            self.sweep.batch_size
        )
    }
}

/// The backend and where it is, without user or password.
fn database_summary(url: &str) -> String {
    let url = url.trim();
    if url.starts_with("sqlite:") {
        return match SqliteConnectOptions::from_str(url) {
            Ok(options) => format!("sqlite {}", options.get_filename().display()),
            Err(_) => "sqlite".into(),
        };
    }
    if let Ok(targets) = PgTargets::parse(url)
        && targets.follows_primary()
    {
        let database = url
            .split_once("://")
            .and_then(|(_, rest)| rest.split_once('/'))
            .map(|(_, path)| path.split(['?', '#']).next().unwrap_or_default())
            .unwrap_or_default();
        return format!(
            "postgresql {}/{database} (the host that is {}; followed across a failover)",
            targets.host_list(),
            targets.target().as_str()
        );
    }
    match PgConnectOptions::from_str(url) {
        Ok(options) => format!(
            "postgresql {}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or("")
        ),
        Err(_) => "unknown".into(),
    }
}

/// `scheme://host[:port]` of a URL, without user information or path.
pub(super) fn url_origin(url: &str) -> String {
    let url = url.trim();
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    format!("{scheme}://{host}")
}
