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
pub use server::{router, AuthServer, PatientDirectory, SetupError};
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

impl AuthError {
    /// The infrastructure failed (answer 503), as opposed to a bad token (answer 401).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, AuthError::Unavailable(_))
    }

    /// A `WWW-Authenticate` value for a 401 (RFC 6750 §3): `error="invalid_token"` with this
    /// message, or no error code when no token was given.
    pub fn www_authenticate(&self, realm: &str) -> String {
        let realm = realm.replace(['"', '\\'], "");
        match self {
            AuthError::Missing => format!("Bearer realm=\"{realm}\""),
            e => format!(
                "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{}\"",
                e.to_string().replace(['"', '\\'], "'")
            ),
        }
    }
}

/// Verifies a bearer token and says who is calling.
#[async_trait]
pub trait Authenticator: Send + Sync {
    /// `bearer` is the token alone, without the `Bearer ` prefix.
    async fn authenticate(&self, bearer: &str) -> Result<Caller, AuthError>;
}

/// What `[auth]` sets up: the built-in server (with its routes) or an external provider's
/// verifier, and in both cases the [`Authenticator`] the API layer asks.
pub struct Auth {
    /// The built-in authorization server; None in external mode (no `/auth` routes).
    pub server: Option<std::sync::Arc<AuthServer>>,
    pub authenticator: std::sync::Arc<dyn Authenticator>,
}

impl Auth {
    /// Opens what `config` asks for: in built-in mode the auth store and signing keys in
    /// `data_dir` (created on first start); `base_url` is the server's public base URL.
    pub fn open(
        config: &AuthConfig,
        base_url: &str,
        data_dir: &std::path::Path,
    ) -> Result<Auth, server::SetupError> {
        Self::open_with_key(config, base_url, data_dir, None)
    }

    /// [`Auth::open`] with the auth store encrypted under `db_key` when one is given.
    pub fn open_with_key(
        config: &AuthConfig,
        base_url: &str,
        data_dir: &std::path::Path,
        db_key: Option<&salus_keys::DataKey>,
    ) -> Result<Auth, server::SetupError> {
        config.validate().map_err(server::SetupError::Config)?;
        match (config.mode, &config.external) {
            (AuthMode::External, Some(ext)) => Ok(Auth {
                server: None,
                authenticator: std::sync::Arc::new(ExternalIdp::new(
                    ext.clone(),
                    std::sync::Arc::new(SystemClock),
                )),
            }),
            _ => {
                let server = AuthServer::open_with_key(config.clone(), base_url, data_dir, db_key)?;
                Ok(Auth {
                    authenticator: server.authenticator(),
                    server: Some(server),
                })
            }
        }
    }

    /// The built-in server's routes (to mount at the server root), or none.
    pub fn router(&self) -> Option<axum::Router> {
        self.server.clone().map(router)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_builtin_or_external() {
        let dir = tempfile::tempdir().unwrap();
        let auth =
            Auth::open(&AuthConfig::default(), "http://localhost:8080/", dir.path()).unwrap();
        let server = auth.server.as_ref().unwrap();
        assert_eq!(server.issuer(), "http://localhost:8080");
        assert_eq!(server.audience(), "http://localhost:8080");
        assert!(auth.router().is_some());
        assert!(
            dir.path().join(keys::KEY_FILE).exists() && dir.path().join(sqlite::DB_FILE).exists()
        );

        let ext = AuthConfig {
            mode: AuthMode::External,
            external: Some(ExternalIdpConfig {
                issuer: "https://idp".into(),
                jwks_uri: "https://idp/jwks".into(),
                audience: "https://fhir".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let other = tempfile::tempdir().unwrap();
        let auth = Auth::open(&ext, "http://localhost:8080", other.path()).unwrap();
        assert!(auth.server.is_none() && auth.router().is_none());
        assert!(!other.path().join(keys::KEY_FILE).exists());
        let bad = AuthConfig {
            mode: AuthMode::External,
            ..Default::default()
        };
        assert!(matches!(
            Auth::open(&bad, "http://x", other.path()),
            Err(SetupError::Config(_))
        ));
    }

    #[test]
    fn www_authenticate_values() {
        assert_eq!(
            AuthError::Missing.www_authenticate("salus"),
            "Bearer realm=\"salus\""
        );
        let v = AuthError::Malformed("bad \"x\"".into()).www_authenticate("salus");
        assert!(
            v.starts_with("Bearer realm=\"salus\", error=\"invalid_token\", error_description=\"")
        );
        assert!(
            !v["Bearer realm=\"salus\", error=\"invalid_token\", error_description=\"".len()
                ..v.len() - 1]
                .contains('"')
        );
        assert!(
            AuthError::Unavailable("x".into()).is_unavailable()
                && !AuthError::Expired.is_unavailable()
        );
    }
}
