//! Who may call what. Bearer tokens (configured as SHA-256 hashes, `[auth]`) name a caller and
//! a role; a tower layer in front of every gRPC service checks the token and the role's grant
//! for the method before the request reaches a handler, so a refused request changes nothing.
//! It puts the [`Caller`] into the request's extensions, where handlers read the actor to
//! record. Also the server's TLS settings (`[tls]`) and `ocs-lifecycle token generate`.
//!
//! This module decides nothing about accounts and touches no storage.

mod grants;
mod layer;
mod tls;
mod token;

use serde::Deserialize;

pub use grants::{GRANTS, is_open, permits};
pub use layer::{AuthLayer, AuthService, Authenticator, TokenRefusal};
pub use tls::{server_tls, with_tls};
pub use token::{TOKEN_PREFIX, TokenCommand, generate_token, token_sha256};

/// What a token may do (see [`GRANTS`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, clap::ValueEnum)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Role {
    /// The billing / charging side: provisioning, activation, recharge, charge, reads.
    Billing,
    /// A business hall: unlocks and recharges at the counter, reads.
    BusinessHall,
    /// The BSS: the event stream, dead letters, account reads.
    Bss,
    /// Everything, including the sweep (`AdvanceStates`) and the test clock.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Billing, Role::BusinessHall, Role::Bss, Role::Admin];

    /// The name in configuration and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Billing => "billing",
            Role::BusinessHall => "business_hall",
            Role::Bss => "bss",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The authenticated caller of a request (in its extensions when authentication is on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The token's configured name; recorded as the actor of what the request changes.
    pub name: String,
    pub role: Role,
}
