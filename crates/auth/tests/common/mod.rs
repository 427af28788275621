//! Shared test harness: the real auth router over a SQLite auth store and a key file in a
//! temporary directory, driven with `tower::ServiceExt::oneshot` (no socket), with a clock
//! the tests move forward instead of sleeping.
#![allow(dead_code)]

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use http_body_util::BodyExt;
use salus_auth::admin::{self, NewClient};
use salus_auth::keys::KeyRing;
use salus_auth::sqlite::SqliteAuthStore;
use salus_auth::store::ClientKind;
use salus_auth::{AuthConfig, AuthServer, Clock, OffsetClock, SystemClock};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tower::ServiceExt;

/// The server's public base URL: the issuer and (by default) the FHIR base URL.
pub const BASE: &str = "http://fhir.test";
pub const REDIRECT: &str = "https://app.test/callback";

pub struct Env {
    pub server: Arc<AuthServer>,
    pub router: Router,
    pub clock: Arc<OffsetClock>,
    /// The server's keys (a copy), to mint tokens the server did not issue.
    pub keys: KeyRing,
    pub dir: tempfile::TempDir,
}

pub fn env() -> Env {
    env_with(AuthConfig::default())
}

pub fn env_with(config: AuthConfig) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteAuthStore::open_in(dir.path()).unwrap();
    let keys = KeyRing::load_or_create(dir.path(), SystemClock.now()).unwrap();
    let clock = Arc::new(OffsetClock::default());
    let server = AuthServer::new(config, BASE, Arc::new(store), keys.clone(), clock.clone());
    Env {
        router: salus_auth::router(server.clone()),
        server,
        clock,
        keys,
        dir,
    }
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    /// The query parameters of the `Location` header.
    pub fn location_params(&self) -> Vec<(String, String)> {
        let loc = self.header("location");
        let q = loc.split_once('?').map(|(_, q)| q).unwrap_or("");
        form_urlencoded::parse(q.as_bytes()).into_owned().collect()
    }
    pub fn location_param(&self, name: &str) -> Option<String> {
        self.location_params()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

impl Env {
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    pub async fn send(&self, req: Request<Body>) -> Resp {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        Resp {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, uri: &str) -> Resp {
        self.send(Request::get(uri).body(Body::empty()).unwrap())
            .await
    }

    /// A form-encoded POST with extra headers.
    pub async fn post_form(
        &self,
        uri: &str,
        pairs: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut ser = form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs {
            ser.append_pair(k, v);
        }
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req.body(Body::from(ser.finish())).unwrap()).await
    }

    pub async fn post_json(&self, uri: &str, body: &Value, bearer: Option<&str>) -> Resp {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(t) = bearer {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        self.send(req.body(Body::from(body.to_string())).unwrap())
            .await
    }

    pub async fn add_client(&self, kind: ClientKind, scope: &str) -> (String, Option<String>) {
        self.add_client_with(kind, scope, None).await
    }

    pub async fn add_client_with(
        &self,
        kind: ClientKind,
        scope: &str,
        jwks: Option<Value>,
    ) -> (String, Option<String>) {
        let new = NewClient {
            name: "Test <App>".into(),
            kind,
            redirect_uris: if kind == ClientKind::Asymmetric {
                vec![]
            } else {
                vec![REDIRECT.into(), "https://app.test/other".into()]
            },
            scope: scope.into(),
            jwks,
            jwks_uri: None,
        };
        let r = admin::register_client(self.server.store().as_ref(), new, self.now())
            .await
            .unwrap();
        (r.client.client_id, r.secret)
    }

    pub async fn add_user(&self, name: &str, fhir_user: Option<&str>, roles: &[&str]) {
        let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
        admin::add_user(
            self.server.store().as_ref(),
            name,
            &password(name),
            fhir_user,
            &roles,
            self.now(),
        )
        .await
        .unwrap();
    }
}

pub fn password(user: &str) -> String {
    format!("{user}-secret-pw")
}

pub fn basic(id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
}

/// A PKCE verifier and its S256 challenge.
pub fn pkce() -> (String, String) {
    let verifier = salus_auth::secret::random_token(32);
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// The value of the hidden input `name` in a page.
pub fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {html}"))
        + marker.len();
    let end = html[start..].find('"').unwrap() + start;
    html[start..end].to_string()
}

/// The `salus_auth_session` cookie a response set, as a `Cookie` header value.
pub fn cookie(r: &Resp) -> String {
    r.header("set-cookie")
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

pub fn authorize_url(
    client_id: &str,
    scope: &str,
    challenge: Option<&str>,
    extra: &[(&str, &str)],
) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", REDIRECT)
        .append_pair("scope", scope)
        .append_pair("state", "st-123")
        .append_pair("aud", BASE);
    if let Some(c) = challenge {
        q.append_pair("code_challenge", c)
            .append_pair("code_challenge_method", "S256");
    }
    for (k, v) in extra {
        q.append_pair(k, v);
    }
    format!("/auth/authorize?{}", q.finish())
}

/// A sign-in in progress: the login page's form fields and cookie.
pub struct SignIn {
    pub request_id: String,
    pub csrf: String,
    pub cookie: String,
}

pub async fn start(env: &Env, url: &str) -> SignIn {
    let r = env.get(url).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.header("x-frame-options"), "DENY");
    assert!(r
        .header("content-security-policy")
        .contains("frame-ancestors 'none'"));
    let html = r.text();
    SignIn {
        request_id: hidden(&html, "request_id"),
        csrf: hidden(&html, "csrf"),
        cookie: cookie(&r),
    }
}

pub async fn login(env: &Env, s: &SignIn, user: &str, pw: &str) -> Resp {
    env.post_form(
        "/auth/login",
        &[
            ("request_id", &s.request_id),
            ("csrf", &s.csrf),
            ("username", user),
            ("password", pw),
        ],
        &[("cookie", &s.cookie)],
    )
    .await
}

pub async fn consent(env: &Env, s: &SignIn, scopes: &[&str], more: &[(&str, &str)]) -> Resp {
    let mut pairs: Vec<(&str, &str)> = vec![
        ("request_id", &s.request_id),
        ("csrf", &s.csrf),
        ("decision", "approve"),
    ];
    for sc in scopes {
        pairs.push(("scope", sc));
    }
    pairs.extend_from_slice(more);
    env.post_form("/auth/consent", &pairs, &[("cookie", &s.cookie)])
        .await
}

/// The whole browser part: authorize, log in as `user`, approve `scope` (all of it), and
/// return the code from the redirect.
pub async fn code_for(
    env: &Env,
    client_id: &str,
    user: &str,
    scope: &str,
    challenge: Option<&str>,
) -> String {
    let s = start(env, &authorize_url(client_id, scope, challenge, &[])).await;
    let r = login(env, &s, user, &password(user)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let scopes: Vec<&str> = scope.split(' ').collect();
    let r = consent(env, &s, &scopes, &[]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    assert!(r.header("location").starts_with(REDIRECT));
    assert_eq!(r.location_param("state").as_deref(), Some("st-123"));
    r.location_param("code").expect("a code")
}

/// An access token for `user` through a public client allowed `scope`.
pub async fn user_token(env: &Env, user: &str, scope: &str) -> Value {
    let (client, _) = env.add_client(ClientKind::Public, scope).await;
    let (verifier, challenge) = pkce();
    let code = code_for(env, &client, user, scope, Some(&challenge)).await;
    let r = env
        .post_form(
            "/auth/token",
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("client_id", &client),
                ("code_verifier", &verifier),
            ],
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()
}

/// A compact JWS over `header` and `claims`, signed by `sign`.
pub fn jwt(header: &Value, claims: &Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}
