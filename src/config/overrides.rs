//! The command-line flags of the commands that read the configuration: the top layer.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::{ClockMode, Config, HttpAddr, LogFormat};

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

impl Overrides {
    /// Sets what the flags give over `config` (the layers below).
    pub(super) fn apply(&self, config: &mut Config) {
        if let Some(v) = self.listen {
            config.listen = v;
        }
        if let Some(v) = self.http_addr {
            config.http_addr = v.0;
        }
        if let Some(v) = &self.database_url {
            config.database_url = v.clone();
        }
        if let Some(v) = self.clock {
            config.clock = v;
        }
        if let Some(v) = &self.timezone {
            config.timezone = v.clone();
        }
        if let Some(v) = self.log_format {
            config.log_format = v;
        }
        config.insecure |= self.insecure;
        if let Some(v) = &self.bss_webhook_url {
            config.bss.webhook_url = v.clone();
        }
        if let Some(v) = &self.bss_webhook_secret {
            config.bss.webhook_secret = v.clone();
        }
    }
}
