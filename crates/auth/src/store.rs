//! What the authorization server keeps, behind one trait so that a PostgreSQL
//! implementation can follow the SQLite one ([`crate::sqlite`]).
//!
//! Bearer secrets (authorization codes, refresh tokens) are stored only as hashes
//! ([`crate::secret::token_hash`]); client secrets and passwords only as argon2 hashes.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(thiserror::Error, Debug)]
pub enum StoreError {
    #[error("the auth store failed: {0}")]
    Backend(String),
    #[error("{0} already exists")]
    Exists(String),
}

/// How a client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientKind {
    /// A public app (browser, native): no secret, PKCE required.
    Public,
    /// A confidential app with a client secret (`client_secret_basic` / `_post`).
    Confidential,
    /// An app or backend service authenticating with `private_key_jwt` (SMART Backend
    /// Services, client-confidential-asymmetric), with an inline JWKS or a `jwks_uri`.
    #[serde(alias = "backend")]
    Asymmetric,
}

impl ClientKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientKind::Public => "public",
            ClientKind::Confidential => "confidential",
            ClientKind::Asymmetric => "asymmetric",
        }
    }

    pub fn parse(s: &str) -> Option<ClientKind> {
        match s {
            "public" => Some(ClientKind::Public),
            "confidential" => Some(ClientKind::Confidential),
            "asymmetric" | "backend" => Some(ClientKind::Asymmetric),
            _ => None,
        }
    }
}

/// A registered client.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Client {
    pub client_id: String,
    pub name: String,
    pub kind: ClientKind,
    /// argon2 hash of the client secret (confidential clients).
    #[serde(skip_serializing)]
    pub secret_hash: Option<String>,
    /// Exact-match redirect URIs.
    pub redirect_uris: Vec<String>,
    /// Allowed scopes, space separated; patterns may use `*` (`patient/*.rs`).
    pub scope: String,
    /// Inline JWKS (asymmetric clients).
    pub jwks: Option<Value>,
    /// Where the client publishes its JWKS (asymmetric clients).
    pub jwks_uri: Option<String>,
    pub created_at: i64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("client_id", &self.client_id)
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field(
                "secret_hash",
                &self.secret_hash.as_ref().map(|_| "<redacted>"),
            )
            .field("redirect_uris", &self.redirect_uris)
            .field("scope", &self.scope)
            .field("jwks_uri", &self.jwks_uri)
            .finish()
    }
}

/// A user who can log in at the login page.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub username: String,
    pub password_hash: String,
    /// `Patient/…` for patients, `Practitioner/…` (or `PractitionerRole/…`, `RelatedPerson/…`)
    /// for staff.
    pub fhir_user: Option<String>,
    pub roles: Vec<String>,
    pub created_at: i64,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("username", &self.username)
            .field("password_hash", &"<redacted>")
            .field("fhir_user", &self.fhir_user)
            .field("roles", &self.roles)
            .finish()
    }
}

impl User {
    /// The Patient id when this user is a patient.
    pub fn patient_id(&self) -> Option<&str> {
        self.fhir_user.as_deref()?.strip_prefix("Patient/")
    }
}

/// What an authorization grants: carried by codes and refresh tokens into access tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grant {
    pub client_id: String,
    pub subject: String,
    pub scope: String,
    pub patient: Option<String>,
    pub encounter: Option<String>,
    pub fhir_user: Option<String>,
    pub roles: Vec<String>,
    /// When the user logged in (OIDC `auth_time`).
    pub auth_time: i64,
    /// Launched from an EHR (`launch`), which shows its own patient banner.
    #[serde(default)]
    pub ehr_launch: bool,
}

/// An issued authorization code (stored under the code's hash).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodeRecord {
    pub grant: Grant,
    pub redirect_uri: String,
    pub code_challenge: Option<String>,
    pub nonce: Option<String>,
    pub expires_at: i64,
}

/// An issued refresh token (stored under the token's hash).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefreshRecord {
    pub grant: Grant,
    pub expires_at: i64,
}

/// An EHR launch context, created before the app is launched (`launch` parameter).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaunchContext {
    pub patient: Option<String>,
    pub encounter: Option<String>,
    /// Who created it.
    pub created_by: String,
    pub expires_at: i64,
}

/// Persistence for the authorization server. Every method is one short unit of work.
#[async_trait]
pub trait AuthStore: Send + Sync {
    /// Inserts a client; `Exists` when the id is taken.
    async fn insert_client(&self, client: &Client) -> Result<(), StoreError>;
    async fn client(&self, client_id: &str) -> Result<Option<Client>, StoreError>;
    async fn clients(&self) -> Result<Vec<Client>, StoreError>;
    /// Whether a client was there to delete.
    async fn delete_client(&self, client_id: &str) -> Result<bool, StoreError>;

    /// Inserts a user; `Exists` when the username is taken.
    async fn insert_user(&self, user: &User) -> Result<(), StoreError>;
    async fn user(&self, username: &str) -> Result<Option<User>, StoreError>;
    async fn users(&self) -> Result<Vec<User>, StoreError>;

    async fn put_code(&self, code_hash: &str, record: &CodeRecord) -> Result<(), StoreError>;
    /// Removes and returns a code: a code is usable once.
    async fn take_code(&self, code_hash: &str) -> Result<Option<CodeRecord>, StoreError>;

    async fn put_refresh(&self, token_hash: &str, record: &RefreshRecord)
        -> Result<(), StoreError>;
    async fn refresh(&self, token_hash: &str) -> Result<Option<RefreshRecord>, StoreError>;
    /// Removes a refresh token; whether it was there (only one caller wins a race).
    async fn delete_refresh(&self, token_hash: &str) -> Result<bool, StoreError>;

    /// Records an access token id as revoked until `expires_at`.
    async fn revoke_jti(&self, jti: &str, expires_at: i64) -> Result<(), StoreError>;
    async fn is_revoked(&self, jti: &str) -> Result<bool, StoreError>;

    /// Records a client assertion's `jti`; false when the client used it before.
    async fn use_assertion_jti(
        &self,
        client_id: &str,
        jti: &str,
        expires_at: i64,
    ) -> Result<bool, StoreError>;

    async fn put_launch(&self, id: &str, ctx: &LaunchContext) -> Result<(), StoreError>;
    async fn launch(&self, id: &str) -> Result<Option<LaunchContext>, StoreError>;

    /// Forgets codes, refresh tokens, revocations, assertion ids and launches that
    /// expired before `now`.
    async fn purge_expired(&self, now: i64) -> Result<(), StoreError>;
}
