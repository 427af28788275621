//! The authorization server's HTTP side: one [`router`] over a shared [`AuthServer`],
//! mounted by the binary at the server root.

mod authorize;
mod token;

use crate::config::AuthConfig;
use crate::keys::{KeyError, KeyRing};
use crate::ratelimit::RateLimiter;
use crate::sqlite::SqliteAuthStore;
use crate::store::{AuthStore, LaunchContext, StoreError};
use crate::verify::{BuiltinVerifier, JwksCache};
use crate::{admin, secret, AuthError, Authenticator, Caller, Clock, SystemClock};
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

pub(crate) use authorize::Pending;

#[derive(thiserror::Error, Debug)]
pub enum SetupError {
    #[error("invalid [auth] configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How long an EHR launch context stays usable, seconds.
const LAUNCH_SECS: i64 = 3600;
/// How long a login/consent page stays usable, seconds.
const PENDING_SECS: i64 = 600;
/// At most this many sign-ins in progress (pages served, not yet finished).
const MAX_PENDING: usize = 10_000;

/// Where patient ids typed by staff (consent page) or given to `/auth/launch` are checked.
/// The binary backs it with a FHIR read; without one, any well-formed id is accepted.
#[async_trait::async_trait]
pub trait PatientDirectory: Send + Sync {
    async fn exists(&self, patient_id: &str) -> bool;
}

/// The authorization server's shared state.
pub struct AuthServer {
    pub(crate) config: AuthConfig,
    pub(crate) issuer: String,
    pub(crate) audience: String,
    pub(crate) store: Arc<dyn AuthStore>,
    pub(crate) keys: Arc<RwLock<KeyRing>>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) verifier: BuiltinVerifier,
    pub(crate) pending: Mutex<HashMap<String, Pending>>,
    pub(crate) limiter: RateLimiter,
    pub(crate) http: reqwest::Client,
    pub(crate) client_jwks: Mutex<HashMap<String, Arc<JwksCache>>>,
    pub(crate) patients: std::sync::OnceLock<Arc<dyn PatientDirectory>>,
    last_purge: AtomicI64,
}

impl std::fmt::Debug for AuthServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthServer")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl AuthServer {
    /// The server over `data_dir/auth.sqlite` and `data_dir/auth-keys.json` (both created
    /// on first start). `base_url` is the server's public base URL, the issuer unless
    /// `config.issuer` says otherwise.
    pub fn open(
        config: AuthConfig,
        base_url: &str,
        data_dir: &Path,
    ) -> Result<Arc<AuthServer>, SetupError> {
        Self::open_with_key(config, base_url, data_dir, None)
    }

    /// [`AuthServer::open`] with `auth.sqlite` encrypted under `db_key` (encryption at
    /// rest) when one is given.
    pub fn open_with_key(
        config: AuthConfig,
        base_url: &str,
        data_dir: &Path,
        db_key: Option<&salus_keys::DataKey>,
    ) -> Result<Arc<AuthServer>, SetupError> {
        config.validate().map_err(SetupError::Config)?;
        let store = Arc::new(SqliteAuthStore::open_in_with_key(data_dir, db_key)?);
        let keys = KeyRing::load_or_create(data_dir, SystemClock.now())?;
        Ok(Self::new(
            config,
            base_url,
            store,
            keys,
            Arc::new(SystemClock),
        ))
    }

    /// The server over a given store, keys and clock (tests, other backends).
    pub fn new(
        config: AuthConfig,
        base_url: &str,
        store: Arc<dyn AuthStore>,
        keys: KeyRing,
        clock: Arc<dyn Clock>,
    ) -> Arc<AuthServer> {
        let issuer = config.issuer_or(base_url);
        let audience = config
            .audience
            .as_deref()
            .unwrap_or(&issuer)
            .trim_end_matches('/')
            .to_string();
        let keys = Arc::new(RwLock::new(keys));
        let verifier = BuiltinVerifier::new(
            keys.clone(),
            store.clone(),
            issuer.clone(),
            audience.clone(),
            config.leeway_secs,
            clock.clone(),
        );
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        Arc::new(AuthServer {
            limiter: RateLimiter::new(config.login_window_secs),
            config,
            issuer,
            audience,
            store,
            keys,
            clock,
            verifier,
            pending: Mutex::new(HashMap::new()),
            http,
            client_jwks: Mutex::new(HashMap::new()),
            patients: std::sync::OnceLock::new(),
            last_purge: AtomicI64::new(0),
        })
    }

    /// Check patient ids against `directory` from now on (once; later calls are ignored).
    pub fn set_patient_directory(&self, directory: Arc<dyn PatientDirectory>) {
        let _ = self.patients.set(directory);
    }

    /// The verifier of this server's access tokens, for the API layer.
    pub fn authenticator(&self) -> Arc<dyn Authenticator> {
        Arc::new(self.verifier.clone())
    }

    pub fn store(&self) -> &Arc<dyn AuthStore> {
        &self.store
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The FHIR base URL tokens are issued for (`aud`).
    pub fn audience(&self) -> &str {
        &self.audience
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    pub fn token_endpoint(&self) -> String {
        self.url("/auth/token")
    }

    pub(crate) fn now(&self) -> i64 {
        self.clock.now()
    }

    /// Forgets expired records, at most once a minute.
    pub(crate) async fn purge_now_and_then(&self) {
        let now = self.now();
        let last = self.last_purge.load(Ordering::Relaxed);
        if now - last >= 60
            && self
                .last_purge
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            if let Err(e) = self.store.purge_expired(now).await {
                tracing::warn!(error = %e, "cannot purge expired auth records");
            }
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.retain(|_, p| p.expires_at > now);
        }
    }

    /// The key set of an asymmetric client registered with a `jwks_uri`.
    pub(crate) fn client_jwks_cache(&self, uri: &str) -> Arc<JwksCache> {
        let mut map = self.client_jwks.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(uri.to_string())
            .or_insert_with(|| {
                Arc::new(JwksCache::new(
                    uri.to_string(),
                    self.http.clone(),
                    std::time::Duration::from_secs(3600),
                    std::time::Duration::from_secs(10),
                ))
            })
            .clone()
    }
}

/// The authorization server's routes, to be mounted at the server root.
pub fn router(state: Arc<AuthServer>) -> Router {
    let browser_app_routes = Router::new()
        .route("/auth/token", post(token::token).options(preflight))
        .route("/auth/revoke", post(token::revoke).options(preflight))
        .layer(axum::middleware::map_response(allow_any_origin));
    Router::new()
        .route("/.well-known/smart-configuration", get(smart_configuration))
        .route(
            "/.well-known/openid-configuration",
            get(openid_configuration),
        )
        .route("/auth/jwks", get(jwks))
        .route(
            "/auth/authorize",
            get(authorize::authorize_get).post(authorize::authorize_post),
        )
        .route("/auth/login", post(authorize::login))
        .route("/auth/consent", post(authorize::consent))
        .route("/auth/introspect", post(token::introspect))
        .route("/auth/launch", post(launch))
        .route("/auth/clients", post(create_client).get(list_clients))
        .route("/auth/clients/{client_id}", delete(delete_client))
        .merge(browser_app_routes)
        .with_state(state)
}

/// Browser apps (public SMART clients) call these from another origin: their answers are
/// readable from any origin. They never rely on cookies, so this exposes nothing.
async fn allow_any_origin(mut r: Response) -> Response {
    r.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    r
}

async fn preflight() -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Content-Type"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    r
}

/// Scopes advertised in the well-known documents.
const SCOPES_SUPPORTED: &[&str] = &[
    "openid",
    "fhirUser",
    "profile",
    "launch",
    "launch/patient",
    "launch/encounter",
    "offline_access",
    "online_access",
    "patient/*.cruds",
    "user/*.cruds",
    "system/*.cruds",
    "patient/*.read",
    "user/*.read",
    "system/*.read",
];

// SMART App Launch 2.x conformance.html#metadata
async fn smart_configuration(State(s): State<Arc<AuthServer>>) -> Response {
    let doc = json!({
        "issuer": s.issuer,
        "jwks_uri": s.url("/auth/jwks"),
        "authorization_endpoint": s.url("/auth/authorize"),
        "token_endpoint": s.token_endpoint(),
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384", "RS256", "ES256"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "registration_endpoint": s.url("/auth/clients"),
        "scopes_supported": SCOPES_SUPPORTED,
        "response_types_supported": ["code"],
        "introspection_endpoint": s.url("/auth/introspect"),
        "revocation_endpoint": s.url("/auth/revoke"),
        "code_challenge_methods_supported": ["S256"],
        "capabilities": [
            "launch-ehr", "launch-standalone", "authorize-post",
            "client-public", "client-confidential-symmetric", "client-confidential-asymmetric",
            "context-ehr-patient", "context-ehr-encounter", "context-standalone-patient",
            "permission-offline", "permission-online", "permission-patient", "permission-user",
            "permission-v1", "permission-v2", "sso-openid-connect"
        ],
    });
    public_json(doc)
}

// OpenID Connect Discovery 1.0 §3
async fn openid_configuration(State(s): State<Arc<AuthServer>>) -> Response {
    let doc = json!({
        "issuer": s.issuer,
        "authorization_endpoint": s.url("/auth/authorize"),
        "token_endpoint": s.token_endpoint(),
        "jwks_uri": s.url("/auth/jwks"),
        "registration_endpoint": s.url("/auth/clients"),
        "introspection_endpoint": s.url("/auth/introspect"),
        "revocation_endpoint": s.url("/auth/revoke"),
        "scopes_supported": SCOPES_SUPPORTED,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384", "RS256", "ES256"],
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "fhirUser"],
        "request_parameter_supported": false,
    });
    public_json(doc)
}

async fn jwks(State(s): State<Arc<AuthServer>>) -> Response {
    let doc = match s.keys.read() {
        Ok(k) => k.jwks(),
        Err(_) => {
            return oauth_json(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the key ring is unavailable",
            )
        }
    };
    let mut r = public_json(doc);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/jwk-set+json"),
    );
    r
}

fn public_json(doc: Value) -> Response {
    let mut r = Json(doc).into_response();
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    r.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    r
}

/// `{"error", "error_description"}` with `status`, never cached.
pub(crate) fn oauth_json(status: StatusCode, error: &str, description: &str) -> Response {
    let mut r = (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"salus\""),
        );
    }
    r
}

/// The bearer token of `Authorization: Bearer …`.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

async fn caller(s: &AuthServer, headers: &HeaderMap) -> Result<Caller, Response> {
    let Some(token) = bearer(headers) else {
        return Err(oauth_json(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            &AuthError::Missing.to_string(),
        ));
    };
    s.verifier.authenticate(token).await.map_err(|e| match e {
        AuthError::Unavailable(_) => {
            tracing::error!(error = %e, "token verification failed");
            oauth_json(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "token verification is unavailable",
            )
        }
        e => oauth_json(StatusCode::UNAUTHORIZED, "invalid_token", &e.to_string()),
    })
}

async fn require_admin(s: &AuthServer, headers: &HeaderMap) -> Result<Caller, Response> {
    let c = caller(s, headers).await?;
    if c.has_role("admin") {
        Ok(c)
    } else {
        Err(oauth_json(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            "this needs a token of a user with the admin role",
        ))
    }
}

fn store_failure(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "auth store failure");
    oauth_json(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        "the authorization store is unavailable",
    )
}

/// A registration request: our own fields (`name`, `type`) or their RFC 7591 §2
/// counterparts (`client_name`, `token_endpoint_auth_method`); other RFC 7591 metadata
/// (`grant_types`, `response_types`, …) is accepted and ignored.
#[derive(serde::Deserialize)]
struct Registration {
    #[serde(alias = "client_name")]
    name: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    token_endpoint_auth_method: Option<String>,
    #[serde(default)]
    redirect_uris: Vec<String>,
    scope: Option<String>,
    jwks: Option<Value>,
    jwks_uri: Option<String>,
}

impl Registration {
    fn into_new_client(self) -> Result<admin::NewClient, String> {
        use crate::store::ClientKind;
        let kind = match (
            self.kind.as_deref(),
            self.token_endpoint_auth_method.as_deref(),
        ) {
            (Some(k), _) => ClientKind::parse(k)
                .ok_or_else(|| format!("type '{k}' is not public, confidential or asymmetric"))?,
            (None, Some("none")) => ClientKind::Public,
            (None, Some("client_secret_basic" | "client_secret_post")) => ClientKind::Confidential,
            (None, Some("private_key_jwt")) => ClientKind::Asymmetric,
            (None, Some(m)) => {
                return Err(format!("token_endpoint_auth_method '{m}' is not supported"))
            }
            (None, None) => {
                return Err("give the client's type (or token_endpoint_auth_method)".into())
            }
        };
        Ok(admin::NewClient {
            name: self
                .name
                .ok_or("a client needs a name (name or client_name)")?,
            kind,
            redirect_uris: self.redirect_uris,
            scope: self
                .scope
                .ok_or("a client needs its allowed scopes (scope)")?,
            jwks: self.jwks,
            jwks_uri: self.jwks_uri,
        })
    }
}

/// `POST /auth/clients`: register a client (admin only). The secret is shown once.
async fn create_client(
    State(s): State<Arc<AuthServer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = require_admin(&s, &headers).await {
        return r;
    }
    let new = match serde_json::from_slice::<Registration>(&body)
        .map_err(|e| format!("the client description is not valid: {e}"))
        .and_then(Registration::into_new_client)
    {
        Ok(n) => n,
        Err(m) => return oauth_json(StatusCode::BAD_REQUEST, "invalid_client_metadata", &m),
    };
    match admin::register_client(s.store.as_ref(), new, s.now()).await {
        Ok(reg) => {
            let mut v = admin::client_json(&reg.client);
            if let Some(secret) = reg.secret {
                v["client_secret"] = json!(secret);
            }
            let mut r = (StatusCode::CREATED, Json(v)).into_response();
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(admin::AdminError::Invalid(m)) => {
            oauth_json(StatusCode::BAD_REQUEST, "invalid_client_metadata", &m)
        }
        Err(admin::AdminError::Store(e)) => store_failure(e),
    }
}

async fn list_clients(State(s): State<Arc<AuthServer>>, headers: HeaderMap) -> Response {
    if let Err(r) = require_admin(&s, &headers).await {
        return r;
    }
    match s.store.clients().await {
        Ok(cs) => Json(json!({"clients": cs.iter().map(admin::client_json).collect::<Vec<_>>()}))
            .into_response(),
        Err(e) => store_failure(e),
    }
}

async fn delete_client(
    State(s): State<Arc<AuthServer>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    if let Err(r) = require_admin(&s, &headers).await {
        return r;
    }
    match s.store.delete_client(&id).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => oauth_json(
            StatusCode::NOT_FOUND,
            "invalid_request",
            &format!("there is no client '{id}'"),
        ),
        Err(e) => store_failure(e),
    }
}

/// `POST /auth/launch` (`{"patient": "p1", "encounter": "e1"}`): an EHR, or a staff user,
/// creates an EHR launch context and gets the opaque `launch` value to hand to the app
/// (SMART App Launch 2.x app-launch.html#launch-app-ehr-launch).
async fn launch(State(s): State<Arc<AuthServer>>, headers: HeaderMap, body: Bytes) -> Response {
    let c = match caller(&s, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    if !(c.has_role("admin")
        || c.has_role("clinician")
        || c.has_role("ehr")
        || crate::scope::has(&c.scope, "launch"))
    {
        return oauth_json(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            "creating a launch needs the admin, clinician or ehr role, or the 'launch' scope",
        );
    }
    let v: Value = match serde_json::from_slice(&body) {
        Ok(Value::Object(m)) => Value::Object(m),
        _ => {
            return oauth_json(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the body must be a JSON object such as {\"patient\": \"p1\"}",
            )
        }
    };
    let field = |name: &str| -> Result<Option<String>, String> {
        match v.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(id)) => {
                let prefix = if name == "patient" {
                    "Patient/"
                } else {
                    "Encounter/"
                };
                let id = id.strip_prefix(prefix).unwrap_or(id);
                if admin::is_fhir_id(id) {
                    Ok(Some(id.to_string()))
                } else {
                    Err(format!("'{name}' is not a FHIR id"))
                }
            }
            Some(_) => Err(format!("'{name}' must be a string")),
        }
    };
    let (patient, encounter) = match (field("patient"), field("encounter")) {
        (Ok(p), Ok(e)) => (p, e),
        (Err(m), _) | (_, Err(m)) => {
            return oauth_json(StatusCode::BAD_REQUEST, "invalid_request", &m)
        }
    };
    if let (Some(pid), Some(dir)) = (&patient, s.patients.get()) {
        if !dir.exists(pid).await {
            return oauth_json(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!("there is no Patient/{pid}"),
            );
        }
    }
    if patient.is_none() && encounter.is_none() {
        return oauth_json(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "a launch needs a patient or an encounter",
        );
    }
    let id = secret::random_token(24);
    let ctx = LaunchContext {
        patient,
        encounter,
        created_by: c.subject,
        expires_at: s.now() + LAUNCH_SECS,
    };
    if let Err(e) = s.store.put_launch(&id, &ctx).await {
        return store_failure(e);
    }
    (
        StatusCode::CREATED,
        Json(json!({"launch": id, "expires_in": LAUNCH_SECS})),
    )
        .into_response()
}

/// Form or query parameters, in order.
#[derive(Debug, Default)]
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    pub fn parse(bytes: &[u8]) -> Params {
        Params(form_urlencoded::parse(bytes).into_owned().collect())
    }

    /// A parameter's value; an empty one counts as absent (RFC 6749 §3.1).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first of `names` given more than once (RFC 6749 §3.1: parameters MUST NOT be
    /// included more than once).
    pub fn repeated<'a>(&self, names: &[&'a str]) -> Option<&'a str> {
        names
            .iter()
            .find(|n| self.0.iter().filter(|(k, _)| k == *n).count() > 1)
            .copied()
    }
}
