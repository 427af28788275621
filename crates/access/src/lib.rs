//! Access control for Salus: who may do what to which resources.
//!
//! Owns: SMART on FHIR v2 scopes ([`Scope`]), the verified caller ([`Principal`]), staff
//! roles and their rules ([`Policy`]), and the one decision ([`Policy::decide`]) every
//! path asks before storage is touched: deny, allow all, or allow only resources in a
//! patient's compartment and/or matching search criteria ([`Grant`]).
//! Must not touch: tokens and signatures (`salus-auth` verifies them and hands over a
//! [`Principal`] through [`Authenticate`]), HTTP, storage, FHIR definitions (callers say
//! how a type relates to the Patient compartment with [`TypeClass`]).

mod policy;
mod scope;

pub use policy::{
    AccessConfig, Capability, Conjunction, Denied, Grant, Policy, PolicyError, Principal,
    RoleConfig, RuleConfig, TypeClass, REFERENCE_TYPES,
};
pub use scope::{parse_scopes, Context, Interaction, Permissions, Scope, ScopeError};

use std::collections::HashMap;
use std::sync::Arc;

/// Why a bearer token was not accepted (the caller gets 401 with this message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AuthFailure(pub String);

/// Turns a bearer token into the verified caller.
#[async_trait::async_trait]
pub trait Authenticate: Send + Sync + 'static {
    async fn authenticate(&self, bearer: &str) -> Result<Principal, AuthFailure>;
}

/// Who is making a request, as the service sees it.
#[derive(Debug, Clone, Default)]
pub enum Access {
    /// No authorization applies: the server runs without auth (loopback only), or the
    /// request comes from inside the server (MLLP intake, devices, jobs).
    #[default]
    Internal,
    /// A verified caller whose every access is decided by the [`Policy`].
    Caller(Arc<Principal>),
}

impl Access {
    pub fn principal(&self) -> Option<&Principal> {
        match self {
            Access::Internal => None,
            Access::Caller(p) => Some(p),
        }
    }
}

/// Fixed tokens mapped to principals: for tests and local tooling, never for production.
#[derive(Default)]
pub struct StaticTokens {
    tokens: HashMap<String, Principal>,
}

impl StaticTokens {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(mut self, token: impl Into<String>, who: Principal) -> Self {
        self.tokens.insert(token.into(), who);
        self
    }
}

#[async_trait::async_trait]
impl Authenticate for StaticTokens {
    async fn authenticate(&self, bearer: &str) -> Result<Principal, AuthFailure> {
        // Constant-time comparison is not needed for a test double's map lookup.
        self.tokens
            .get(bearer)
            .cloned()
            .ok_or_else(|| AuthFailure("the access token is not valid".into()))
    }
}
