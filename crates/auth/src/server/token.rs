//! `/auth/token` (RFC 6749 §4.1.3, §6, §4.4; SMART Backend Services), `/auth/revoke`
//! (RFC 7009) and `/auth/introspect` (RFC 7662), with client authentication
//! (RFC 6749 §2.3: `client_secret_basic`, `client_secret_post`; RFC 7523 `private_key_jwt`).

use super::{AuthServer, Params};
use crate::jws;
use crate::store::{Client, ClientKind, Grant, RefreshRecord};
use crate::{scope, secret, AuthError, Authenticator};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Map, Value};
use std::sync::Arc;

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// SMART Backend Services: a client assertion's `exp` is at most five minutes ahead.
const MAX_ASSERTION_SECS: i64 = 300;

/// An RFC 6749 §5.2 error.
pub(crate) struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
}

fn err(error: &'static str, description: impl Into<String>) -> OAuthError {
    let status = match error {
        "invalid_client" => StatusCode::UNAUTHORIZED,
        "temporarily_unavailable" => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    };
    OAuthError {
        status,
        error,
        description: description.into(),
    }
}

fn unavailable(e: impl std::fmt::Display) -> OAuthError {
    tracing::error!(error = %e, "auth store failure");
    err(
        "temporarily_unavailable",
        "the authorization server is unavailable",
    )
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            Json(json!({"error": self.error, "error_description": self.description})),
        )
            .into_response();
        let h = r.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if self.status == StatusCode::UNAUTHORIZED {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"salus\""),
            );
        }
        r
    }
}

fn no_store_json(v: Value) -> Response {
    let mut r = Json(v).into_response();
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

/// `Authorization: Basic` credentials, form-urlencoded before base64 (RFC 6749 §2.3.1).
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, OAuthError> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || {
        err(
            "invalid_client",
            "the Authorization header is not valid Basic credentials",
        )
    };
    let v = v.to_str().map_err(|_| bad())?;
    let Some((scheme, rest)) = v.split_once(' ') else {
        return Err(bad());
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(bad());
    }
    let raw = STANDARD.decode(rest.trim()).map_err(|_| bad())?;
    let raw = String::from_utf8(raw).map_err(|_| bad())?;
    let (id, secret) = raw.split_once(':').ok_or_else(bad)?;
    let decode = |s: &str| -> String {
        form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Ok(Some((decode(id), decode(secret))))
}

async fn check_secret(client: &Client, given: String) -> Result<(), OAuthError> {
    let Some(hash) = client.secret_hash.clone() else {
        return Err(err("invalid_client", "client authentication failed"));
    };
    let ok = tokio::task::spawn_blocking(move || secret::verify_password(&given, &hash))
        .await
        .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(err("invalid_client", "client authentication failed"))
    }
}

/// Who is calling the token, revocation or introspection endpoint.
pub(crate) async fn authenticate_client(
    s: &AuthServer,
    headers: &HeaderMap,
    p: &Params,
) -> Result<Client, OAuthError> {
    let basic = basic_credentials(headers)?;
    let post_secret = p.get("client_secret");
    let assertion = p.get("client_assertion");
    let methods = [basic.is_some(), post_secret.is_some(), assertion.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if methods > 1 {
        return Err(err(
            "invalid_request",
            "use exactly one client authentication method",
        ));
    }
    let lookup = |id: String| async move {
        match s.store.client(&id).await {
            Ok(Some(c)) => Ok(c),
            Ok(None) => Err(err("invalid_client", "client authentication failed")),
            Err(e) => Err(unavailable(e)),
        }
    };
    let client = if let Some((id, sec)) = basic {
        let c = lookup(id).await?;
        // Some client libraries identify a public client as `Basic base64(client_id:)`.
        if !(c.kind == ClientKind::Public && sec.is_empty()) {
            check_secret(&c, sec).await?;
        }
        c
    } else if let Some(sec) = post_secret {
        let id = p
            .get("client_id")
            .ok_or_else(|| err("invalid_client", "client_secret without client_id"))?;
        let c = lookup(id.to_string()).await?;
        check_secret(&c, sec.to_string()).await?;
        c
    } else if let Some(a) = assertion {
        if p.get("client_assertion_type") != Some(JWT_BEARER) {
            return Err(err(
                "invalid_client",
                format!("client_assertion_type must be {JWT_BEARER}"),
            ));
        }
        verify_assertion(s, a).await?
    } else {
        let id = p
            .get("client_id")
            .ok_or_else(|| err("invalid_client", "the request does not identify the client"))?;
        let c = lookup(id.to_string()).await?;
        if c.kind != ClientKind::Public {
            return Err(err("invalid_client", "this client must authenticate"));
        }
        c
    };
    if let Some(id) = p.get("client_id") {
        if id != client.client_id {
            return Err(err(
                "invalid_client",
                "client_id does not match the authenticated client",
            ));
        }
    }
    Ok(client)
}

/// A `private_key_jwt` client assertion (RFC 7523 §3; SMART Backend Services
/// client-authentication.html): signed by a key of the client, `iss` = `sub` = client id,
/// `aud` = our token endpoint, `exp` at most five minutes ahead, `jti` never seen before.
async fn verify_assertion(s: &AuthServer, assertion: &str) -> Result<Client, OAuthError> {
    let bad = |m: String| err("invalid_client", m);
    let d = jws::decode(assertion).map_err(|e| bad(format!("the client assertion: {e}")))?;
    let (Some(iss), Some(sub)) = (d.str_claim("iss"), d.str_claim("sub")) else {
        return Err(bad("the client assertion needs 'iss' and 'sub'".into()));
    };
    if iss != sub {
        return Err(bad(
            "the client assertion's 'iss' and 'sub' must both be the client id".into(),
        ));
    }
    let client = match s.store.client(iss).await {
        Ok(Some(c)) if c.kind == ClientKind::Asymmetric => c,
        Ok(_) => return Err(bad("client authentication failed".into())),
        Err(e) => return Err(unavailable(e)),
    };
    let keys = match (&client.jwks, &client.jwks_uri) {
        (Some(j), _) => {
            jws::parse_jwks(j).map_err(|e| bad(format!("the client's registered JWKS: {e}")))?
        }
        (None, Some(uri)) => s
            .client_jwks_cache(uri)
            .keys_for(d.kid.as_deref())
            .await
            .map_err(|e| bad(e.to_string()))?,
        (None, None) => return Err(bad("the client has no keys registered".into())),
    };
    d.verify_with(&keys).map_err(|e| match e {
        AuthError::UnknownKey => {
            bad("the client assertion is signed with a key the client has not registered".into())
        }
        _ => bad("the client assertion's signature does not verify".into()),
    })?;
    if !d.audience_contains(&s.token_endpoint()) {
        return Err(bad(
            "the client assertion's 'aud' must be this token endpoint's URL".into(),
        ));
    }
    let now = s.now();
    let leeway = s.config.leeway_secs;
    let Some(exp) = d.int_claim("exp") else {
        return Err(bad("the client assertion needs 'exp'".into()));
    };
    if now > exp + leeway {
        return Err(bad("the client assertion has expired".into()));
    }
    if exp > now + MAX_ASSERTION_SECS + leeway {
        return Err(bad(
            "the client assertion's 'exp' is more than five minutes ahead".into(),
        ));
    }
    let Some(jti) = d.str_claim("jti") else {
        return Err(bad("the client assertion needs 'jti'".into()));
    };
    match s
        .store
        .use_assertion_jti(&client.client_id, jti, exp + leeway)
        .await
    {
        Ok(true) => Ok(client),
        Ok(false) => Err(bad("the client assertion's 'jti' was used before".into())),
        Err(e) => Err(unavailable(e)),
    }
}

/// `POST /auth/token`.
pub(crate) async fn token(
    State(s): State<Arc<AuthServer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    s.purge_now_and_then().await;
    let p = Params::parse(&body);
    match token_inner(&s, &headers, &p).await {
        Ok(v) => no_store_json(v),
        Err(e) => e.into_response(),
    }
}

async fn token_inner(s: &AuthServer, headers: &HeaderMap, p: &Params) -> Result<Value, OAuthError> {
    if let Some(n) = p.repeated(&[
        "grant_type",
        "code",
        "redirect_uri",
        "code_verifier",
        "refresh_token",
        "scope",
        "client_id",
        "client_assertion",
    ]) {
        return Err(err(
            "invalid_request",
            format!("the parameter '{n}' is given more than once"),
        ));
    }
    let grant_type = p
        .get("grant_type")
        .ok_or_else(|| err("invalid_request", "grant_type is required"))?;
    if !matches!(
        grant_type,
        "authorization_code" | "refresh_token" | "client_credentials"
    ) {
        return Err(err(
            "unsupported_grant_type",
            format!("grant_type '{grant_type}' is not supported"),
        ));
    }
    let client = authenticate_client(s, headers, p).await?;
    match grant_type {
        "authorization_code" => authorization_code(s, &client, p).await,
        "refresh_token" => refresh(s, &client, p).await,
        _ => client_credentials(s, &client, p).await,
    }
}

async fn authorization_code(
    s: &AuthServer,
    client: &Client,
    p: &Params,
) -> Result<Value, OAuthError> {
    let code = p
        .get("code")
        .ok_or_else(|| err("invalid_request", "code is required"))?;
    let invalid = || {
        err(
            "invalid_grant",
            "the authorization code is invalid, expired, or was already used",
        )
    };
    // Taking the code spends it: a second exchange, even a failed first one, finds nothing.
    let rec = s
        .store
        .take_code(&secret::token_hash(code))
        .await
        .map_err(unavailable)?
        .ok_or_else(invalid)?;
    if s.now() > rec.expires_at || rec.grant.client_id != client.client_id {
        return Err(invalid());
    }
    if p.get("redirect_uri") != Some(rec.redirect_uri.as_str()) {
        return Err(err(
            "invalid_grant",
            "redirect_uri does not match the one the code was issued for",
        ));
    }
    if let Some(challenge) = &rec.code_challenge {
        let verifier = p
            .get("code_verifier")
            .ok_or_else(|| err("invalid_grant", "code_verifier is required (PKCE)"))?;
        if !secret::is_valid_pkce_verifier(verifier)
            || !secret::pkce_s256_matches(verifier, challenge)
        {
            return Err(err(
                "invalid_grant",
                "the code_verifier does not match the code_challenge",
            ));
        }
    }
    let offline = scope::has(&rec.grant.scope, "offline_access")
        || scope::has(&rec.grant.scope, "online_access");
    issue(
        s,
        &rec.grant,
        offline.then_some(&rec.grant),
        rec.nonce.as_deref(),
    )
    .await
}

async fn refresh(s: &AuthServer, client: &Client, p: &Params) -> Result<Value, OAuthError> {
    let token = p
        .get("refresh_token")
        .ok_or_else(|| err("invalid_request", "refresh_token is required"))?;
    let hash = secret::token_hash(token);
    let invalid = || {
        err(
            "invalid_grant",
            "the refresh token is invalid, expired, or was already used",
        )
    };
    let rec = s
        .store
        .refresh(&hash)
        .await
        .map_err(unavailable)?
        .ok_or_else(invalid)?;
    if rec.grant.client_id != client.client_id {
        return Err(invalid());
    }
    // Rotation: the presented token is spent; whoever loses a race with it gets nothing.
    if !s.store.delete_refresh(&hash).await.map_err(unavailable)? || s.now() > rec.expires_at {
        return Err(invalid());
    }
    let mut access = rec.grant.clone();
    if let Some(narrower) = p.get("scope") {
        if !scope::is_subset(narrower, &rec.grant.scope) {
            return Err(err(
                "invalid_scope",
                "a refresh may only narrow the granted scopes",
            ));
        }
        access.scope = narrower
            .split_ascii_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
    }
    // RFC 6749 §6: the new refresh token carries the original grant's scope.
    issue(s, &access, Some(&rec.grant), None).await
}

async fn client_credentials(
    s: &AuthServer,
    client: &Client,
    p: &Params,
) -> Result<Value, OAuthError> {
    if client.kind == ClientKind::Public {
        return Err(err(
            "unauthorized_client",
            "public clients cannot use client_credentials",
        ));
    }
    let requested = p
        .get("scope")
        .ok_or_else(|| err("invalid_scope", "scope is required"))?;
    let granted = scope::intersect(requested, &client.scope);
    if granted.is_empty() {
        return Err(err(
            "invalid_scope",
            "none of the requested scopes is allowed for this client",
        ));
    }
    let grant = Grant {
        client_id: client.client_id.clone(),
        subject: client.client_id.clone(),
        scope: granted.join(" "),
        patient: None,
        encounter: None,
        fhir_user: None,
        roles: Vec::new(),
        auth_time: s.now(),
        ehr_launch: false,
    };
    let mut v = issue(s, &grant, None, None).await?;
    if let Some(o) = v.as_object_mut() {
        o.remove("id_token");
    }
    Ok(v)
}

/// The token response: an ES256 access token, and a refresh token (storing `refresh`'s
/// grant) and an id token when granted (SMART App Launch 2.x app-launch.html#response-5).
async fn issue(
    s: &AuthServer,
    grant: &Grant,
    refresh: Option<&Grant>,
    nonce: Option<&str>,
) -> Result<Value, OAuthError> {
    let now = s.now();
    let lifetime = s.config.access_token_secs;
    let mut claims = Map::new();
    claims.insert("iss".into(), json!(s.issuer));
    claims.insert("sub".into(), json!(grant.subject));
    claims.insert("aud".into(), json!(s.audience));
    claims.insert("exp".into(), json!(now + lifetime));
    claims.insert("iat".into(), json!(now));
    claims.insert("jti".into(), json!(secret::random_token(18)));
    claims.insert("scope".into(), json!(grant.scope));
    claims.insert("client_id".into(), json!(grant.client_id));
    if let Some(p) = &grant.patient {
        claims.insert("patient".into(), json!(p));
    }
    if let Some(e) = &grant.encounter {
        claims.insert("encounter".into(), json!(e));
    }
    if let Some(f) = &grant.fhir_user {
        claims.insert("fhirUser".into(), json!(f));
    }
    if !grant.roles.is_empty() {
        claims.insert("roles".into(), json!(grant.roles));
    }
    let (access_token, id_token) = {
        let keys = s.keys.read().map_err(|_| {
            err(
                "temporarily_unavailable",
                "the signing keys are unavailable",
            )
        })?;
        let signer = keys.signer();
        let access = signer.sign(&Value::Object(claims));
        let id = scope::has(&grant.scope, "openid").then(|| {
            // OpenID Connect Core §2; SMART: fhirUser claim with the fhirUser scope.
            let mut c = json!({
                "iss": s.issuer,
                "sub": grant.subject,
                "aud": grant.client_id,
                "exp": now + lifetime,
                "iat": now,
                "auth_time": grant.auth_time,
            });
            if let Some(n) = nonce {
                c["nonce"] = json!(n);
            }
            if let (true, Some(f)) = (scope::has(&grant.scope, "fhirUser"), &grant.fhir_user) {
                c["fhirUser"] = json!(f);
            }
            signer.sign(&c)
        });
        (access, id)
    };
    tracing::info!(client_id = %grant.client_id, sub = %grant.subject, scope = %grant.scope, "access token issued");
    let mut v = json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": lifetime,
        "scope": grant.scope,
    });
    if let Some(id) = id_token {
        v["id_token"] = json!(id);
    }
    if let Some(p) = &grant.patient {
        v["patient"] = json!(p);
        v["need_patient_banner"] = json!(!grant.ehr_launch);
    }
    if let Some(e) = &grant.encounter {
        v["encounter"] = json!(e);
    }
    if let Some(u) = &s.config.smart_style_url {
        v["smart_style_url"] = json!(u);
    }
    if let Some(rg) = refresh {
        let token = secret::random_token(32);
        let rec = RefreshRecord {
            grant: rg.clone(),
            expires_at: now + s.config.refresh_token_secs,
        };
        s.store
            .put_refresh(&secret::token_hash(&token), &rec)
            .await
            .map_err(unavailable)?;
        v["refresh_token"] = json!(token);
    }
    Ok(v)
}

fn looks_like_jwt(t: &str) -> bool {
    t.bytes().filter(|b| *b == b'.').count() == 2
}

/// `POST /auth/revoke` (RFC 7009 §2): refresh tokens, and access tokens by `jti`. Unknown
/// tokens and other clients' tokens are answered 200 and left alone (§2.2).
pub(crate) async fn revoke(
    State(s): State<Arc<AuthServer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let p = Params::parse(&body);
    let client = match authenticate_client(&s, &headers, &p).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let Some(token) = p.get("token") else {
        return err("invalid_request", "token is required").into_response();
    };
    if looks_like_jwt(token) {
        if let Ok(d) = s.verifier.decode_signed(token) {
            if let (Some(jti), Some(exp)) = (d.str_claim("jti"), d.int_claim("exp")) {
                if d.str_claim("client_id") == Some(client.client_id.as_str()) {
                    if let Err(e) = s.store.revoke_jti(jti, exp + s.config.leeway_secs).await {
                        return unavailable(e).into_response();
                    }
                }
            }
        }
    } else {
        let hash = secret::token_hash(token);
        match s.store.refresh(&hash).await {
            Ok(Some(rec)) if rec.grant.client_id == client.client_id => {
                if let Err(e) = s.store.delete_refresh(&hash).await {
                    return unavailable(e).into_response();
                }
            }
            Ok(_) => {}
            Err(e) => return unavailable(e).into_response(),
        }
    }
    let mut r = Response::new(Body::empty());
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `POST /auth/introspect` (RFC 7662 §2): for authenticated confidential clients (resource
/// servers among them).
pub(crate) async fn introspect(
    State(s): State<Arc<AuthServer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let p = Params::parse(&body);
    let client = match authenticate_client(&s, &headers, &p).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    if client.kind == ClientKind::Public {
        return err(
            "invalid_client",
            "introspection needs client authentication",
        )
        .into_response();
    }
    let Some(token) = p.get("token") else {
        return err("invalid_request", "token is required").into_response();
    };
    let inactive = || no_store_json(json!({"active": false}));
    if looks_like_jwt(token) {
        return match s.verifier.authenticate(token).await {
            Ok(c) => {
                let mut v = json!({
                    "active": true,
                    "scope": c.scope,
                    "client_id": c.client_id,
                    "sub": c.subject,
                    "exp": c.expires_at,
                    "iss": c.issuer,
                    "aud": s.audience,
                    "token_type": "Bearer",
                    "jti": c.token_id,
                });
                if let Some(p) = c.patient {
                    v["patient"] = json!(p);
                }
                if let Some(e) = c.encounter {
                    v["encounter"] = json!(e);
                }
                if let Some(f) = c.fhir_user {
                    v["fhirUser"] = json!(f);
                }
                if !c.roles.is_empty() {
                    v["roles"] = json!(c.roles);
                }
                no_store_json(v)
            }
            Err(AuthError::Unavailable(e)) => unavailable(e).into_response(),
            Err(_) => inactive(),
        };
    }
    match s.store.refresh(&secret::token_hash(token)).await {
        Ok(Some(rec)) if rec.expires_at >= s.now() => no_store_json(json!({
            "active": true,
            "scope": rec.grant.scope,
            "client_id": rec.grant.client_id,
            "sub": rec.grant.subject,
            "exp": rec.expires_at,
            "iss": s.issuer,
            "token_type": "refresh_token",
        })),
        Ok(_) => inactive(),
        Err(e) => unavailable(e).into_response(),
    }
}
