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

pub use grants::{GRANTS, is_open, permits};
pub use layer::{AuthLayer, AuthService, Authenticator, TokenRefusal};
pub use tls::{error_chain, server_tls, with_tls};
pub use token::{TOKEN_PREFIX, TokenCommand, generate_token, token_sha256};

/// Roles are configuration values (`[[auth.tokens]] role`); what each may do is [`GRANTS`].
pub use crate::config::security::Role;

/// The authenticated caller of a request (in its extensions when authentication is on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The token's configured name; recorded as the actor of what the request changes.
    pub name: String,
    pub role: Role,
}
