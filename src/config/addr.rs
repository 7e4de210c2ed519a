//! `http_addr`: an address, or `off` for no operations listener (the key and `--http-addr`).

use std::net::SocketAddr;
use std::str::FromStr;

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

pub(super) fn deserialize_http_addr<'de, D>(deserializer: D) -> Result<Option<SocketAddr>, D::Error>
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
