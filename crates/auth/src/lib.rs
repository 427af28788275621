//! `salus-auth`: the *token* side of Salus security.
//!
//! It owns
//! - the built-in OAuth 2.0 / OpenID Connect authorization server for SMART on FHIR v2
//!   ([`server::router`]): well-known documents, JWKS, `/auth/authorize` with server-rendered
//!   login and consent pages, `/auth/token` (authorization code + PKCE, refresh with rotation,
//!   client credentials with `private_key_jwt` per SMART Backend Services), revocation
//!   (RFC 7009), introspection (RFC 7662), EHR launch contexts and an admin-only client
//!   registration API;
//! - its signing keys ([`keys::KeyRing`], ES256, a key file in the data directory, rotation);
//! - its persistence behind the [`store::AuthStore`] trait (SQLite: [`sqlite::SqliteAuthStore`]);
//! - verification of bearer tokens, issued here ([`verify::BuiltinVerifier`]) or by an external
//!   identity provider ([`verify::ExternalIdp`]), both behind one [`Authenticator`] trait that
//!   answers a [`Caller`].
//!
//! It must not touch FHIR data: it knows nothing of `salus-service` or `salus-api`. Deciding
//! what a caller may do with its scopes is the enforcement side's job (`salus-access`).

pub mod admin;
pub mod config;
pub mod contract;
mod html;
pub mod jws;
pub mod keys;
mod ratelimit;
pub mod scope;
pub mod secret;
pub mod server;
pub mod sqlite;
pub mod store;
pub mod verify;

pub use config::{AuthConfig, AuthMode, ExternalIdpConfig};
pub use server::{router, AuthServer};
pub use verify::{BuiltinVerifier, ExternalIdp};

use async_trait::async_trait;

/// What a verified bearer token says about its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// `sub`: the user's name for user tokens, the client id for client-credentials tokens.
    pub subject: String,
    pub client_id: Option<String>,
    /// Space-separated granted scopes, as in the token.
    pub scope: String,
    /// Launch context: a Patient id (not `Patient/…`).
    pub patient: Option<String>,
    pub encounter: Option<String>,
    /// e.g. `Practitioner/123` or `Patient/p1`.
    pub fhir_user: Option<String>,
    /// Staff roles (admin, clinician, analyst, …) from the user record or the IdP's claim.
    pub roles: Vec<String>,
    /// `jti`.
    pub token_id: Option<String>,
    pub issuer: String,
    /// Unix seconds.
    pub expires_at: i64,
}

impl Caller {
    /// The granted scopes one by one.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope.split_ascii_whitespace()
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// Why a bearer token was not accepted. Every message is safe to show the caller.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    #[error("no bearer token was given")]
    Missing,
    #[error("the bearer token is malformed: {0}")]
    Malformed(String),
    #[error("the bearer token's signature does not verify")]
    BadSignature,
    #[error("the bearer token has expired")]
    Expired,
    #[error("the bearer token is not valid yet")]
    NotYetValid,
    #[error("the bearer token was issued for another audience")]
    WrongAudience,
    #[error("the bearer token was issued by an unexpected issuer")]
    WrongIssuer,
    #[error("the bearer token has been revoked")]
    Revoked,
    #[error("the bearer token is signed with an unknown key")]
    UnknownKey,
    #[error("the bearer token uses an unsupported algorithm: {0}")]
    UnsupportedAlgorithm(String),
    #[error("token verification is unavailable: {0}")]
    Unavailable(String),
}

/// Verifies a bearer token and says who is calling.
#[async_trait]
pub trait Authenticator: Send + Sync {
    /// `bearer` is the token alone, without the `Bearer ` prefix.
    async fn authenticate(&self, bearer: &str) -> Result<Caller, AuthError>;
}

/// The time source: unix seconds. Tests move it forward instead of sleeping.
pub trait Clock: Send + Sync {
    fn now(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    }
}

/// A clock that runs `offset` seconds ahead of the system clock (for tests of expiry).
#[derive(Debug, Default)]
pub struct OffsetClock(pub std::sync::atomic::AtomicI64);

impl OffsetClock {
    pub fn advance(&self, secs: i64) {
        self.0.fetch_add(secs, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for OffsetClock {
    fn now(&self) -> i64 {
        SystemClock.now() + self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}
