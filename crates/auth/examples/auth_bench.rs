//! Throughput of the token side, in process (the router driven with `oneshot`, one thread):
//!
//! `cargo run --release -p salus-auth --example auth_bench`
//!
//! - sign: an ES256 access token;
//! - verify: the built-in verifier (signature, claims, revocation lookup in SQLite);
//! - client_credentials: `/auth/token` with an ES384 client assertion (assertion check,
//!   `jti` insert, signing);
//! - refresh: `/auth/token` refresh grant (read, delete, insert of the rotated token, signing);
//! - password check: one argon2id verification (what each sign-in costs).

use axum::body::Body;
use axum::http::Request;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use salus_auth::admin::{self, NewClient};
use salus_auth::keys::KeyRing;
use salus_auth::sqlite::SqliteAuthStore;
use salus_auth::store::{AuthStore, ClientKind, Grant, RefreshRecord};
use salus_auth::{secret, AuthConfig, AuthServer, Clock, SystemClock};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Instant;
use tower::ServiceExt;

const BASE: &str = "http://bench.test";

fn report(name: &str, n: usize, start: Instant) {
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{name:<22} {n:>6} ops  {:>9.0} ops/s  {:>8.1} µs/op",
        n as f64 / secs,
        secs * 1e6 / n as f64
    );
}

async fn post(router: &axum::Router, body: String) -> Value {
    let req = Request::post("/auth/token")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(body))
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemClock.now();
    let store = Arc::new(SqliteAuthStore::open_in(dir.path()).unwrap());
    let keys = KeyRing::load_or_create(dir.path(), now).unwrap();
    let server = AuthServer::new(
        AuthConfig::default(),
        BASE,
        store.clone(),
        keys.clone(),
        Arc::new(SystemClock),
    );
    let router = salus_auth::router(server.clone());
    let auth = server.authenticator();

    let claims = json!({"iss": BASE, "sub": "u", "aud": BASE, "exp": now + 3600, "iat": now, "jti": "j", "scope": "patient/*.rs", "client_id": "c", "patient": "p1"});
    let n = 5000;
    let start = Instant::now();
    let mut token = String::new();
    for _ in 0..n {
        token = keys.signer().sign(&claims);
    }
    report("sign (ES256)", n, start);
    let start = Instant::now();
    for _ in 0..n {
        auth.authenticate(&token).await.unwrap();
    }
    report("verify (built-in)", n, start);

    // A backend client with an ES384 key.
    let sk = p384::ecdsa::SigningKey::random(&mut rand_core::OsRng);
    let pt = sk.verifying_key().to_encoded_point(false);
    let jwk = json!({"kty": "EC", "crv": "P-384", "kid": "k", "x": URL_SAFE_NO_PAD.encode(pt.x().unwrap()), "y": URL_SAFE_NO_PAD.encode(pt.y().unwrap())});
    let new = NewClient {
        name: "bench".into(),
        kind: ClientKind::Asymmetric,
        redirect_uris: vec![],
        scope: "system/*.rs".into(),
        jwks: Some(json!({"keys": [jwk]})),
        jwks_uri: None,
    };
    let client = admin::register_client(store.as_ref(), new, now)
        .await
        .unwrap()
        .client
        .client_id;
    let n = 2000;
    let assertions: Vec<String> = (0..n)
        .map(|i| {
            use p384::ecdsa::signature::Signer;
            let header = URL_SAFE_NO_PAD.encode(json!({"alg": "ES384", "kid": "k"}).to_string());
            let body = URL_SAFE_NO_PAD.encode(json!({"iss": client, "sub": client, "aud": format!("{BASE}/auth/token"), "exp": now + 240, "jti": format!("bench-{i}")}).to_string());
            let input = format!("{header}.{body}");
            let sig: p384::ecdsa::Signature = sk.sign(input.as_bytes());
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
        })
        .collect();
    let start = Instant::now();
    for a in &assertions {
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair("scope", "system/Patient.rs")
            .append_pair(
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            )
            .append_pair("client_assertion", a)
            .finish();
        post(&router, body).await;
    }
    report("client_credentials", n, start);

    // A public client's refresh token, rotated n times.
    let new = NewClient {
        name: "app".into(),
        kind: ClientKind::Public,
        redirect_uris: vec!["https://app/cb".into()],
        scope: "openid patient/*.rs offline_access".into(),
        jwks: None,
        jwks_uri: None,
    };
    let app = admin::register_client(store.as_ref(), new, now)
        .await
        .unwrap()
        .client
        .client_id;
    let mut refresh = secret::random_token(32);
    let grant = Grant {
        client_id: app.clone(),
        subject: "alice".into(),
        scope: "patient/*.rs offline_access".into(),
        patient: Some("p1".into()),
        encounter: None,
        fhir_user: Some("Patient/p1".into()),
        roles: vec![],
        auth_time: now,
        ehr_launch: false,
    };
    store
        .put_refresh(
            &secret::token_hash(&refresh),
            &RefreshRecord {
                grant,
                expires_at: now + 3600,
            },
        )
        .await
        .unwrap();
    let start = Instant::now();
    for _ in 0..n {
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "refresh_token")
            .append_pair("refresh_token", &refresh)
            .append_pair("client_id", &app)
            .finish();
        refresh = post(&router, body).await["refresh_token"]
            .as_str()
            .unwrap()
            .to_string();
    }
    report("refresh (rotation)", n, start);

    let hash = secret::hash_password("correct horse battery").unwrap();
    let n = 20;
    let start = Instant::now();
    for _ in 0..n {
        assert!(secret::verify_password("correct horse battery", &hash));
    }
    report("password check", n, start);
}
