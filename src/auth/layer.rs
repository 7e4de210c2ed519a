//! The tower layer that authenticates and authorises every request before it is routed.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};
use tonic::{Code, Status};
use tower::{Layer, Service};

use super::{Caller, grants};
use crate::config::{AuthConfig, ConfigError};
use crate::logging::CallNote;
use crate::wire::error_status_with;

/// The configured tokens, by the SHA-256 of the token.
pub struct Authenticator {
    tokens: Vec<([u8; 32], Caller)>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.tokens.iter().map(|(_, c)| c.name.as_str()).collect();
        f.debug_struct("Authenticator")
            .field("tokens", &names)
            .finish()
    }
}

fn refusal(code: Code, reason: &str, message: String, metadata: Vec<(&str, &str)>) -> Status {
    let metadata: HashMap<String, String> = metadata
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    error_status_with(code, reason, message, metadata)
}

fn unauthenticated(reason: &str, message: &str) -> Status {
    refusal(
        Code::Unauthenticated,
        reason,
        message.to_owned(),
        Vec::new(),
    )
}

impl Authenticator {
    /// The tokens of `config`; `None` when none are configured (authentication off).
    pub fn from_config(config: &AuthConfig) -> Result<Option<Self>, ConfigError> {
        let tokens: Vec<_> = config
            .hashes()?
            .into_iter()
            .map(|(hash, entry)| {
                let caller = Caller {
                    name: entry.name.clone(),
                    role: entry.role,
                };
                (hash, caller)
            })
            .collect();
        Ok((!tokens.is_empty()).then_some(Self { tokens }))
    }

    /// The caller that `authorization` (the header's value) names, or why there is none.
    /// Shared by the gRPC layer and the operations endpoint (`crate::ops`).
    pub fn identify(&self, authorization: Option<&[u8]>) -> Result<&Caller, TokenRefusal> {
        let value = authorization.ok_or(TokenRefusal::Missing)?;
        let token = value
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
            .map(|_| value[7..].trim_ascii())
            .filter(|token| !token.is_empty())
            .ok_or(TokenRefusal::Malformed)?;
        let presented: [u8; 32] = Sha256::digest(token).into();
        // Every configured hash is compared, in constant time, whatever matches.
        let mut found = subtle::Choice::from(0);
        let mut index = 0u64;
        for (i, (hash, _)) in self.tokens.iter().enumerate() {
            let equal = hash.ct_eq(&presented);
            index.conditional_assign(&(i as u64), equal);
            found |= equal;
        }
        if bool::from(found) {
            Ok(&self.tokens[index as usize].1)
        } else {
            Err(TokenRefusal::Invalid)
        }
    }

    /// The caller that `authorization` (the gRPC metadata's value) names; UNAUTHENTICATED
    /// with the refusal's reason otherwise.
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Result<&Caller, Status> {
        self.identify(authorization).map_err(|refusal| {
            let message = match refusal {
                TokenRefusal::Missing => {
                    "this method needs a bearer token: send the metadata `authorization: Bearer <token>`"
                }
                TokenRefusal::Malformed => "the authorization metadata must be `Bearer <token>`",
                TokenRefusal::Invalid => "the bearer token is not valid (unknown or revoked)",
            };
            unauthenticated(refusal.reason(), message)
        })
    }

    /// Who may proceed to the method at `path`: `Ok(None)` for an open service (health,
    /// reflection), the caller when its role is granted the method, a refusal otherwise.
    pub fn check(
        &self,
        path: &str,
        authorization: Option<&[u8]>,
    ) -> Result<Option<Caller>, Status> {
        if grants::is_open(path) {
            return Ok(None);
        }
        let caller = self.authenticate(authorization)?;
        if grants::permits(caller.role, path) {
            return Ok(Some(caller.clone()));
        }
        let method = path.trim_start_matches('/');
        tracing::info!(caller = %caller.name, role = %caller.role, method, "permission denied");
        Err(refusal(
            Code::PermissionDenied,
            "ROLE_NOT_ALLOWED",
            format!(
                "token {:?} has role {}, which may not call {method}",
                caller.name, caller.role
            ),
            vec![("role", caller.role.as_str()), ("method", method)],
        ))
    }
}

/// Why a request's `authorization` names no caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenRefusal {
    /// No `authorization` at all.
    Missing,
    /// Not `Bearer <token>`.
    Malformed,
    /// A token no configured hash matches (unknown or revoked).
    Invalid,
}

impl TokenRefusal {
    /// The ErrorInfo reason (gRPC) and the `reason` of the operations endpoint's 401.
    pub fn reason(self) -> &'static str {
        match self {
            TokenRefusal::Missing => "TOKEN_MISSING",
            TokenRefusal::Malformed => "TOKEN_MALFORMED",
            TokenRefusal::Invalid => "TOKEN_INVALID",
        }
    }
}

/// Applies an [`Authenticator`] to every request; without one (authentication off) every
/// request passes unchanged.
#[derive(Clone, Debug, Default)]
pub struct AuthLayer {
    authenticator: Option<Arc<Authenticator>>,
}

impl AuthLayer {
    pub fn new(authenticator: Option<Arc<Authenticator>>) -> Self {
        Self { authenticator }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            authenticator: self.authenticator.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct AuthService<S> {
    inner: S,
    authenticator: Option<Arc<Authenticator>>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for AuthService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        if let Some(authenticator) = &self.authenticator {
            let authorization = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes());
            match authenticator.check(request.uri().path(), authorization) {
                Ok(Some(caller)) => {
                    if let Some(note) = request.extensions().get::<Arc<CallNote>>() {
                        note.caller(&caller.name);
                    }
                    request.extensions_mut().insert(caller);
                }
                Ok(None) => {}
                // The request ends here: the handler never sees it.
                Err(status) => return Box::pin(async move { Ok(status.into_http()) }),
            }
        }
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Role, token_sha256};
    use crate::config::TokenEntry;
    use tonic_types::StatusExt;

    fn authenticator() -> Authenticator {
        let tokens = [
            ("bill", Role::Billing, "t-bill"),
            ("ops", Role::Admin, "t-ops"),
        ]
        .into_iter()
        .map(|(name, role, token)| TokenEntry {
            name: name.into(),
            role,
            sha256: token_sha256(token),
        })
        .collect();
        Authenticator::from_config(&AuthConfig { tokens })
            .unwrap()
            .unwrap()
    }

    fn reason(status: &Status) -> String {
        status
            .get_error_details()
            .error_info()
            .map(|i| i.reason.clone())
            .unwrap_or_default()
    }

    const CHARGE: &str = "/ocs.lifecycle.v1.AccountLifecycle/Charge";
    const UNLOCK: &str = "/ocs.lifecycle.v1.AccountLifecycle/Unlock";

    #[test]
    fn no_tokens_means_no_authenticator() {
        assert!(
            Authenticator::from_config(&AuthConfig::default())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn the_token_names_the_caller_and_the_role_decides() {
        let auth = authenticator();
        let bill = auth.check(CHARGE, Some(b"Bearer t-bill")).unwrap().unwrap();
        assert_eq!(bill.name, "bill");
        assert_eq!(
            auth.check(CHARGE, Some(b"bearer  t-ops "))
                .unwrap()
                .unwrap()
                .name,
            "ops"
        );
        let denied = auth.check(UNLOCK, Some(b"Bearer t-bill")).unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied);
        assert_eq!(reason(&denied), "ROLE_NOT_ALLOWED");
        assert!(denied.message().contains("bill"), "{denied:?}");
    }

    #[test]
    fn missing_malformed_and_unknown_tokens_are_unauthenticated() {
        let auth = authenticator();
        for (header, expected) in [
            (None, "TOKEN_MISSING"),
            (Some(&b"t-bill"[..]), "TOKEN_MALFORMED"),
            (Some(&b"Basic dXNlcjpwdw=="[..]), "TOKEN_MALFORMED"),
            (Some(&b"Bearer "[..]), "TOKEN_MALFORMED"),
            (Some(&b"Bearer t-bil"[..]), "TOKEN_INVALID"),
            (Some(&b"Bearer t-bill2"[..]), "TOKEN_INVALID"),
        ] {
            let status = auth.check(CHARGE, header).unwrap_err();
            assert_eq!(status.code(), Code::Unauthenticated, "{header:?}");
            assert_eq!(reason(&status), expected, "{header:?}");
        }
    }

    #[test]
    fn health_needs_no_token() {
        let auth = authenticator();
        assert!(
            auth.check("/grpc.health.v1.Health/Check", None)
                .unwrap()
                .is_none()
        );
    }
}
