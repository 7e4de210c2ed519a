//! Bearer tokens: how they are made, hashed, and `ocs-lifecycle token generate`.

use std::io::Write;

use sha2::{Digest, Sha256};

use super::Role;
use crate::config::security::{MAX_TOKEN_NAME_LEN, valid_token_name};

/// Every token starts with this, so secret scanners and people recognise one.
pub const TOKEN_PREFIX: &str = "ocs_";

/// A new token: the prefix and 256 bits from the operating system's CSPRNG, in hex.
pub fn generate_token() -> Result<String, getrandom::Error> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret)?;
    Ok(format!("{TOKEN_PREFIX}{}", hex::encode(secret)))
}

/// The hex SHA-256 of `token`, as configured in `auth.tokens[].sha256`.
pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// `ocs-lifecycle token …`
#[derive(Clone, Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Print a new random token (once: only its hash is kept) and the [[auth.tokens]] entry
    /// to add to the configuration.
    Generate {
        /// Who will hold the token; recorded in history as the actor of its changes
        /// (1-64 of A-Z a-z 0-9 . _ -).
        #[arg(long)]
        name: String,
        /// What the token may do.
        #[arg(long, value_enum)]
        role: Role,
    },
}

impl TokenCommand {
    /// Runs the command, writing to `out`; needs no configuration and no database.
    pub fn run(&self, out: &mut impl Write) -> Result<(), String> {
        match self {
            TokenCommand::Generate { name, role } => {
                if !valid_token_name(name) {
                    return Err(format!(
                        "--name {name:?}: must be 1-{MAX_TOKEN_NAME_LEN} characters of \
                         A-Z a-z 0-9 . _ -"
                    ));
                }
                let token = generate_token()
                    .map_err(|e| format!("cannot read random bytes from the OS: {e}"))?;
                let entry = format!(
                    "[[auth.tokens]]\nname = \"{name}\"\nrole = \"{role}\"\nsha256 = \"{}\"\n",
                    token_sha256(&token)
                );
                write!(
                    out,
                    "# The token for {name:?} (shown only now; the server keeps only its hash).\n\
                     # Clients send it as the gRPC metadata `authorization: Bearer <token>`.\n\
                     {token}\n\n\
                     # Add this to ocs-lifecycle.toml (or OCS_AUTH__TOKENS) and restart the server:\n\
                     {entry}"
                )
                .map_err(|e| format!("cannot write the token: {e}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_prefixed_and_hashed_as_configured() {
        let a = generate_token().unwrap();
        let b = generate_token().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 64);
        // sha256("abc"), the FIPS 180-2 test vector.
        assert_eq!(
            token_sha256("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn generate_prints_the_token_once_and_an_entry_that_parses_as_configuration() {
        let mut out = Vec::new();
        TokenCommand::Generate {
            name: "hall-7".into(),
            role: Role::BusinessHall,
        }
        .run(&mut out)
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let token = text
            .lines()
            .find(|l| l.starts_with(TOKEN_PREFIX))
            .expect("a token line");
        assert_eq!(text.matches(token).count(), 1, "{text}");
        let entry = &text[text.find("[[auth.tokens]]").expect("entry")..];
        let parsed: toml::Table = entry.parse().expect("TOML");
        let auth: crate::config::AuthConfig = parsed["auth"].clone().try_into().expect("[auth]");
        let hashes = auth.hashes().unwrap();
        assert_eq!(hashes.len(), 1);
        assert_eq!(hashes[0].1.name, "hall-7");
        assert_eq!(hashes[0].1.role, Role::BusinessHall);
        assert_eq!(hex::encode(hashes[0].0), token_sha256(token));
    }

    #[test]
    fn generate_refuses_a_name_that_cannot_be_configured() {
        let mut out = Vec::new();
        let err = TokenCommand::Generate {
            name: "two words".into(),
            role: Role::Admin,
        }
        .run(&mut out)
        .unwrap_err();
        assert!(err.contains("--name"), "{err}");
        assert!(out.is_empty());
    }
}
