//! The two [`Authenticator`]s: tokens issued here, and tokens from an external provider.

use crate::config::ExternalIdpConfig;
use crate::jws::{self, KeyEntry};
use crate::keys::KeyRing;
use crate::store::AuthStore;
use crate::{AuthError, Authenticator, Caller, Clock};
use async_trait::async_trait;
use serde_json::Value;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Verifies tokens issued by the built-in server: ES256 signature by one of its keys,
/// `exp`/`nbf` with leeway, `iss`, `aud` (the FHIR base URL) and revocation by `jti`.
#[derive(Clone)]
pub struct BuiltinVerifier {
    pub(crate) keys: Arc<RwLock<KeyRing>>,
    pub(crate) store: Arc<dyn AuthStore>,
    pub(crate) issuer: String,
    pub(crate) audience: String,
    pub(crate) leeway: i64,
    pub(crate) clock: Arc<dyn Clock>,
}

impl BuiltinVerifier {
    pub fn new(
        keys: Arc<RwLock<KeyRing>>,
        store: Arc<dyn AuthStore>,
        issuer: String,
        audience: String,
        leeway: i64,
        clock: Arc<dyn Clock>,
    ) -> Self {
        BuiltinVerifier {
            keys,
            store,
            issuer,
            audience,
            leeway,
            clock,
        }
    }

    /// Decodes and checks the signature only (revocation and introspection also look at
    /// expired tokens).
    pub(crate) fn decode_signed(&self, token: &str) -> Result<jws::Decoded, AuthError> {
        let d = jws::decode(token)?;
        if d.alg != jws::Alg::Es256 {
            return Err(AuthError::UnsupportedAlgorithm(d.alg.name().into()));
        }
        let keys = self
            .keys
            .read()
            .map_err(|_| AuthError::Unavailable("the key ring lock is poisoned".into()))?
            .verifying_keys();
        d.verify_with(&keys)?;
        Ok(d)
    }
}

/// The [`Caller`] an access token's claims describe.
fn caller_from(d: &jws::Decoded, exp: i64, map: &ClaimMap<'_>) -> Result<Caller, AuthError> {
    let subject = d
        .str_claim("sub")
        .ok_or_else(|| AuthError::Malformed("the token has no 'sub'".into()))?
        .to_string();
    let scope = match claim_path(&d.claims, map.scope) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    };
    let roles = match claim_path(&d.claims, map.roles) {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        Some(Value::String(s)) => s.split_ascii_whitespace().map(str::to_string).collect(),
        _ => Vec::new(),
    };
    let string = |name: &str| {
        claim_path(&d.claims, name)
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    Ok(Caller {
        subject,
        client_id: string("client_id").or_else(|| string("azp")),
        scope,
        patient: string(map.patient)
            .map(|p| p.strip_prefix("Patient/").map(str::to_string).unwrap_or(p)),
        encounter: string("encounter"),
        fhir_user: string(map.fhir_user),
        roles,
        token_id: string("jti"),
        issuer: string("iss").unwrap_or_default(),
        expires_at: exp,
    })
}

struct ClaimMap<'a> {
    scope: &'a str,
    patient: &'a str,
    fhir_user: &'a str,
    roles: &'a str,
}

const BUILTIN_CLAIMS: ClaimMap<'static> = ClaimMap {
    scope: "scope",
    patient: "patient",
    fhir_user: "fhirUser",
    roles: "roles",
};

/// A claim by name, or by dotted path into nested objects (`realm_access.roles`); a name
/// that exists as is wins over the path.
fn claim_path<'a>(claims: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    let mut parts = name.split('.');
    let mut cur = claims.get(parts.next()?)?;
    for p in parts {
        cur = cur.get(p)?;
    }
    Some(cur)
}

#[async_trait]
impl Authenticator for BuiltinVerifier {
    async fn authenticate(&self, bearer: &str) -> Result<Caller, AuthError> {
        let bearer = bearer.trim();
        if bearer.is_empty() {
            return Err(AuthError::Missing);
        }
        let d = self.decode_signed(bearer)?;
        let exp = d.check_claims(&self.issuer, &self.audience, self.clock.now(), self.leeway)?;
        if let Some(jti) = d.str_claim("jti") {
            if self
                .store
                .is_revoked(jti)
                .await
                .map_err(|e| AuthError::Unavailable(e.to_string()))?
            {
                return Err(AuthError::Revoked);
            }
        }
        caller_from(&d, exp, &BUILTIN_CLAIMS)
    }
}

/// A JWKS fetched from a URL and cached; fetched again when it grows old, or when a token
/// names a `kid` it lacks (at most once per `min_refetch`, so forged `kid`s cannot make us
/// hammer the provider).
pub struct JwksCache {
    uri: String,
    http: reqwest::Client,
    ttl: Duration,
    min_refetch: Duration,
    state: tokio::sync::Mutex<Option<(Vec<KeyEntry>, Instant)>>,
}

impl JwksCache {
    pub fn new(uri: String, http: reqwest::Client, ttl: Duration, min_refetch: Duration) -> Self {
        JwksCache {
            uri,
            http,
            ttl,
            min_refetch,
            state: tokio::sync::Mutex::new(None),
        }
    }

    async fn fetch(&self) -> Result<Vec<KeyEntry>, AuthError> {
        let unavailable = |e: String| {
            AuthError::Unavailable(format!("cannot fetch the JWKS at {}: {e}", self.uri))
        };
        let resp = self
            .http
            .get(&self.uri)
            .send()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(unavailable(format!("status {}", resp.status())));
        }
        let doc: Value = resp.json().await.map_err(|e| unavailable(e.to_string()))?;
        jws::parse_jwks(&doc).map_err(unavailable)
    }

    /// The keys to verify `d` with: the cached set, refreshed when stale or when it lacks
    /// the token's `kid`.
    pub async fn keys_for(&self, kid: Option<&str>) -> Result<Vec<KeyEntry>, AuthError> {
        let mut state = self.state.lock().await;
        let has_kid = |keys: &[KeyEntry]| match kid {
            Some(kid) => keys.iter().any(|k| k.kid.as_deref() == Some(kid)),
            None => true,
        };
        let refetch = match &*state {
            None => true,
            Some((keys, at)) => {
                at.elapsed() >= self.ttl || (!has_kid(keys) && at.elapsed() >= self.min_refetch)
            }
        };
        if refetch {
            match self.fetch().await {
                Ok(keys) => *state = Some((keys, Instant::now())),
                // A stale set still serves when the provider is briefly unreachable.
                Err(e) if state.is_none() => return Err(e),
                Err(e) => tracing::warn!(error = %e, "keeping the cached JWKS"),
            }
        }
        Ok(state.as_ref().map(|(k, _)| k.clone()).unwrap_or_default())
    }
}

/// Accepts access tokens from an external OpenID Connect provider: RS256/RS384/ES256/ES384
/// signatures by its published keys, `exp`/`nbf` with leeway, `iss`, `aud`, and maps its
/// claims onto a [`Caller`] by the configured claim names.
pub struct ExternalIdp {
    config: ExternalIdpConfig,
    jwks: JwksCache,
    clock: Arc<dyn Clock>,
}

impl ExternalIdp {
    pub fn new(config: ExternalIdpConfig, clock: Arc<dyn Clock>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        let jwks = JwksCache::new(
            config.jwks_uri.clone(),
            http,
            Duration::from_secs(config.jwks_cache_secs),
            Duration::from_secs(config.jwks_min_refetch_secs),
        );
        ExternalIdp {
            config,
            jwks,
            clock,
        }
    }
}

#[async_trait]
impl Authenticator for ExternalIdp {
    async fn authenticate(&self, bearer: &str) -> Result<Caller, AuthError> {
        let bearer = bearer.trim();
        if bearer.is_empty() {
            return Err(AuthError::Missing);
        }
        let d = jws::decode(bearer)?;
        let keys = self.jwks.keys_for(d.kid.as_deref()).await?;
        d.verify_with(&keys)?;
        let c = &self.config;
        let exp = d.check_claims(&c.issuer, &c.audience, self.clock.now(), c.leeway_secs)?;
        caller_from(
            &d,
            exp,
            &ClaimMap {
                scope: &c.scope_claim,
                patient: &c.patient_claim,
                fhir_user: &c.fhir_user_claim,
                roles: &c.roles_claim,
            },
        )
    }
}
