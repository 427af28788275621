//! SMART Backend Services (client_credentials with a `private_key_jwt` assertion), the
//! built-in verifier's refusals, and an external IdP's tokens verified against a JWKS served
//! by a local HTTP server, through a key rotation.

mod common;

use axum::http::StatusCode;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use rand_core::OsRng;
use rsa::traits::PublicKeyParts;
use salus_auth::store::ClientKind;
use salus_auth::{AuthError, Authenticator, Clock, ExternalIdp, ExternalIdpConfig, SystemClock};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex, OnceLock};

/// A test signing key of one of the algorithms clients and IdPs use.
enum TestKey {
    Es384(p384::ecdsa::SigningKey),
    Es256(p256::ecdsa::SigningKey),
    Rs(Box<rsa::RsaPrivateKey>, &'static str),
}

fn rsa_key() -> rsa::RsaPrivateKey {
    // Generated once per test binary: RSA key generation is slow.
    static KEY: OnceLock<rsa::RsaPrivateKey> = OnceLock::new();
    KEY.get_or_init(|| rsa::RsaPrivateKey::new(&mut OsRng, 2048).unwrap())
        .clone()
}

impl TestKey {
    fn alg(&self) -> &'static str {
        match self {
            TestKey::Es384(_) => "ES384",
            TestKey::Es256(_) => "ES256",
            TestKey::Rs(_, alg) => alg,
        }
    }

    fn jwk(&self, kid: &str) -> Value {
        let b = |x: &[u8]| URL_SAFE_NO_PAD.encode(x);
        match self {
            TestKey::Es384(k) => {
                let p = k.verifying_key().to_encoded_point(false);
                json!({"kty": "EC", "crv": "P-384", "x": b(p.x().unwrap()), "y": b(p.y().unwrap()), "kid": kid})
            }
            TestKey::Es256(k) => {
                let p = k.verifying_key().to_encoded_point(false);
                json!({"kty": "EC", "crv": "P-256", "x": b(p.x().unwrap()), "y": b(p.y().unwrap()), "kid": kid})
            }
            TestKey::Rs(k, alg) => {
                json!({"kty": "RSA", "n": b(&k.n().to_bytes_be()), "e": b(&k.e().to_bytes_be()), "kid": kid, "alg": alg})
            }
        }
    }

    fn sign(&self, kid: &str, claims: &Value) -> String {
        use rsa::signature::{SignatureEncoding, Signer};
        let header = json!({"alg": self.alg(), "typ": "JWT", "kid": kid});
        jwt(&header, claims, |input| match self {
            TestKey::Es384(k) => {
                let s: p384::ecdsa::Signature = k.sign(input);
                s.to_bytes().to_vec()
            }
            TestKey::Es256(k) => {
                let s: p256::ecdsa::Signature = k.sign(input);
                s.to_bytes().to_vec()
            }
            TestKey::Rs(k, "RS256") => {
                rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new((**k).clone())
                    .sign(input)
                    .to_vec()
            }
            TestKey::Rs(k, _) => rsa::pkcs1v15::SigningKey::<sha2::Sha384>::new((**k).clone())
                .sign(input)
                .to_vec(),
        })
    }
}

fn es384() -> TestKey {
    TestKey::Es384(p384::ecdsa::SigningKey::random(&mut OsRng))
}

fn assertion(key: &TestKey, client: &str, aud: &str, exp_in: i64, jti: &str) -> String {
    let now = SystemClock.now();
    key.sign(
        "k1",
        &json!({"iss": client, "sub": client, "aud": aud, "exp": now + exp_in, "jti": jti}),
    )
}

async fn client_credentials(env: &Env, assertion: &str, scope: &str) -> Resp {
    env.post_form(
        "/auth/token",
        &[
            ("grant_type", "client_credentials"),
            ("scope", scope),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion),
        ],
        &[],
    )
    .await
}

const TOKEN_URL: &str = "http://fhir.test/auth/token";

#[tokio::test]
async fn client_credentials_with_es384_and_rs384_assertions() {
    let env = env();
    for key in [es384(), TestKey::Rs(Box::new(rsa_key()), "RS384")] {
        let (client, _) = env
            .add_client_with(
                ClientKind::Asymmetric,
                "system/*.rs",
                Some(json!({"keys": [key.jwk("k1")]})),
            )
            .await;
        let a = assertion(&key, &client, TOKEN_URL, 240, &format!("jti-{}", key.alg()));
        let r = client_credentials(
            &env,
            &a,
            "system/Observation.rs system/Patient.rs user/*.rs",
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}: {}", key.alg(), r.text());
        assert_eq!(r.header("cache-control"), "no-store");
        let t = r.json();
        assert_eq!(t["scope"], "system/Observation.rs system/Patient.rs");
        assert!(t.get("refresh_token").is_none() && t.get("id_token").is_none());
        let caller = env
            .server
            .authenticator()
            .authenticate(t["access_token"].as_str().unwrap())
            .await
            .unwrap();
        assert_eq!(caller.subject, client);
        assert_eq!(caller.client_id.as_deref(), Some(client.as_str()));
        assert!(caller.patient.is_none() && caller.roles.is_empty());

        // The same jti again: refused.
        let r = client_credentials(&env, &a, "system/Observation.rs").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.json()["error"], "invalid_client");
        assert!(r.json()["error_description"]
            .as_str()
            .unwrap()
            .contains("jti"));
    }
}

#[tokio::test]
async fn bad_client_assertions_are_refused() {
    let env = env();
    let key = es384();
    let (client, _) = env
        .add_client_with(
            ClientKind::Asymmetric,
            "system/*.rs",
            Some(json!({"keys": [key.jwk("k1")]})),
        )
        .await;
    let now = SystemClock.now();
    let cases: Vec<(String, &str)> = vec![
        (assertion(&key, &client, "https://elsewhere.test/token", 240, "a1"), "aud"),
        (assertion(&key, &client, TOKEN_URL, 3600, "a2"), "five minutes"),
        (assertion(&key, &client, TOKEN_URL, -120, "a3"), "expired"),
        (assertion(&es384(), &client, TOKEN_URL, 240, "a4"), "signature"),
        (key.sign("k1", &json!({"iss": client, "sub": "someone-else", "aud": TOKEN_URL, "exp": now + 60, "jti": "a5"})), "sub"),
        (key.sign("k1", &json!({"iss": client, "sub": client, "aud": TOKEN_URL, "exp": now + 60})), "jti"),
        (key.sign("k2", &json!({"iss": client, "sub": client, "aud": TOKEN_URL, "exp": now + 60, "jti": "a6"})), "key"),
        ("not.a.jwt".to_string(), "client assertion"),
    ];
    for (a, words) in cases {
        let r = client_credentials(&env, &a, "system/*.rs").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{words}: {}", r.text());
        let e = r.json();
        assert_eq!(e["error"], "invalid_client");
        assert!(
            e["error_description"].as_str().unwrap().contains(words),
            "{words}: {e}"
        );
    }
    // A good assertion asking only for scopes the client may not have.
    let r = client_credentials(
        &env,
        &assertion(&key, &client, TOKEN_URL, 60, "a7"),
        "user/*.rs",
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"], "invalid_scope");
    // A public client cannot use client_credentials.
    let (public, _) = env.add_client(ClientKind::Public, "system/*.rs").await;
    let r = env
        .post_form(
            "/auth/token",
            &[
                ("grant_type", "client_credentials"),
                ("scope", "system/*.rs"),
                ("client_id", &public),
            ],
            &[],
        )
        .await;
    assert_eq!(r.json()["error"], "unauthorized_client");
    // Registration refuses keys that are not keys.
    let bad = salus_auth::admin::register_client(
        env.server.store().as_ref(),
        salus_auth::admin::NewClient {
            name: "x".into(),
            kind: ClientKind::Asymmetric,
            redirect_uris: vec![],
            scope: "system/*.rs".into(),
            jwks: Some(json!({"keys": [{"kty": "oct", "k": "AA"}]})),
            jwks_uri: None,
        },
        now,
    )
    .await;
    assert!(bad.is_err());
}

#[tokio::test]
async fn confidential_client_credentials_with_a_secret() {
    let env = env();
    let (client, secret) = env
        .add_client(ClientKind::Confidential, "system/*.rs")
        .await;
    let r = env
        .post_form(
            "/auth/token",
            &[
                ("grant_type", "client_credentials"),
                ("scope", "system/Patient.rs"),
            ],
            &[("authorization", &basic(&client, &secret.unwrap()))],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["scope"], "system/Patient.rs");
}

#[tokio::test]
async fn builtin_verifier_refuses_expired_foreign_forged_and_revoked_tokens() {
    let env = env();
    let auth = env.server.authenticator();
    let now = env.now();
    let signer = env.keys.signer();
    let claims = |f: &dyn Fn(&mut Value)| {
        let mut c = json!({"iss": BASE, "sub": "u", "aud": BASE, "exp": now + 600, "iat": now, "jti": "j1", "scope": "patient/*.rs", "client_id": "c", "patient": "p1", "fhirUser": "Patient/p1", "roles": ["analyst"]});
        f(&mut c);
        c
    };
    let good = signer.sign(&claims(&|_| {}));
    let c = auth.authenticate(&good).await.unwrap();
    assert_eq!(c.roles, vec!["analyst".to_string()]);
    assert_eq!(c.expires_at, now + 600);
    assert_eq!(c.scope, "patient/*.rs");

    assert_eq!(
        auth.authenticate(&signer.sign(&claims(&|c| c["exp"] = json!(now - 120))))
            .await,
        Err(AuthError::Expired)
    );
    // Within the leeway an expired token still passes.
    assert!(auth
        .authenticate(&signer.sign(&claims(&|c| c["exp"] = json!(now - 5))))
        .await
        .is_ok());
    assert_eq!(
        auth.authenticate(&signer.sign(&claims(&|c| c["nbf"] = json!(now + 600))))
            .await,
        Err(AuthError::NotYetValid)
    );
    assert_eq!(
        auth.authenticate(&signer.sign(&claims(&|c| c["aud"] = json!("https://other.test/fhir"))))
            .await,
        Err(AuthError::WrongAudience)
    );
    assert_eq!(
        auth.authenticate(&signer.sign(&claims(&|c| c["iss"] = json!("https://evil.test"))))
            .await,
        Err(AuthError::WrongIssuer)
    );
    assert!(matches!(
        auth.authenticate(&signer.sign(&claims(&|c| {
            c.as_object_mut().unwrap().remove("exp");
        })))
        .await,
        Err(AuthError::Malformed(_))
    ));
    // Signed by another key that claims our kid.
    let other = salus_auth::keys::KeyRing::ephemeral(now);
    let forged = salus_auth::jws::sign_es256(
        &p256::ecdsa::SigningKey::random(&mut OsRng),
        &signer.kid,
        &claims(&|_| {}),
    );
    assert_eq!(
        auth.authenticate(&forged).await,
        Err(AuthError::BadSignature)
    );
    assert_eq!(
        auth.authenticate(&other.signer().sign(&claims(&|_| {})))
            .await,
        Err(AuthError::UnknownKey)
    );
    assert_eq!(auth.authenticate("").await, Err(AuthError::Missing));
    assert!(matches!(
        auth.authenticate("garbage").await,
        Err(AuthError::Malformed(_))
    ));
    // Revoked by jti.
    env.server
        .store()
        .revoke_jti("j1", now + 600)
        .await
        .unwrap();
    assert_eq!(auth.authenticate(&good).await, Err(AuthError::Revoked));
    // Time passes: tokens expire.
    let fresh = signer.sign(&claims(&|c| c["jti"] = json!("j2")));
    env.clock.advance(3600);
    assert_eq!(auth.authenticate(&fresh).await, Err(AuthError::Expired));
}

/// A local IdP: its JWKS at `/jwks`, swappable, counting fetches.
struct Idp {
    url: String,
    jwks: Arc<Mutex<Value>>,
    fetches: Arc<Mutex<u32>>,
}

async fn idp(jwks: Value) -> Idp {
    let jwks = Arc::new(Mutex::new(jwks));
    let fetches = Arc::new(Mutex::new(0u32));
    let (j, f) = (jwks.clone(), fetches.clone());
    let app = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            let (j, f) = (j.clone(), f.clone());
            async move {
                *f.lock().unwrap() += 1;
                axum::Json(j.lock().unwrap().clone())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Idp {
        url: format!("http://{addr}/jwks"),
        jwks,
        fetches,
    }
}

fn idp_claims(f: &dyn Fn(&mut Value)) -> Value {
    let now = SystemClock.now();
    let mut c = json!({
        "iss": "https://idp.test/realms/salus", "sub": "user-77", "aud": ["account", "https://fhir.test/fhir"],
        "exp": now + 300, "iat": now, "azp": "portal", "scp": ["patient/*.rs", "openid"],
        "fhir_patient": "Patient/p9", "profile_ref": "Patient/p9", "realm_access": {"roles": ["clinician", "analyst"]}
    });
    f(&mut c);
    c
}

#[tokio::test]
async fn external_idp_verifies_maps_claims_and_follows_key_rotation() {
    let rs = TestKey::Rs(Box::new(rsa_key()), "RS256");
    let es = TestKey::Es256(p256::ecdsa::SigningKey::random(&mut OsRng));
    let idp =
        idp(json!({"keys": [rs.jwk("old"), {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}]})).await;
    let config = ExternalIdpConfig {
        issuer: "https://idp.test/realms/salus".into(),
        jwks_uri: idp.url.clone(),
        audience: "https://fhir.test/fhir".into(),
        scope_claim: "scp".into(),
        patient_claim: "fhir_patient".into(),
        fhir_user_claim: "profile_ref".into(),
        roles_claim: "realm_access.roles".into(),
        jwks_min_refetch_secs: 0,
        ..Default::default()
    };
    let ext = ExternalIdp::new(config, Arc::new(SystemClock));

    let c = ext
        .authenticate(&rs.sign("old", &idp_claims(&|_| {})))
        .await
        .unwrap();
    assert_eq!(c.subject, "user-77");
    assert_eq!(c.scope, "patient/*.rs openid");
    assert_eq!(c.patient.as_deref(), Some("p9"));
    assert_eq!(c.fhir_user.as_deref(), Some("Patient/p9"));
    assert_eq!(
        c.roles,
        vec!["clinician".to_string(), "analyst".to_string()]
    );
    assert_eq!(c.client_id.as_deref(), Some("portal"));
    assert_eq!(c.issuer, "https://idp.test/realms/salus");
    // Cached: a second token does not fetch again.
    ext.authenticate(&rs.sign("old", &idp_claims(&|_| {})))
        .await
        .unwrap();
    assert_eq!(*idp.fetches.lock().unwrap(), 1);

    for (f, want) in [
        (
            &(|c: &mut Value| c["aud"] = json!("https://other.test")) as &dyn Fn(&mut Value),
            AuthError::WrongAudience,
        ),
        (
            &|c: &mut Value| c["iss"] = json!("https://evil.test"),
            AuthError::WrongIssuer,
        ),
        (
            &|c: &mut Value| c["exp"] = json!(SystemClock.now() - 600),
            AuthError::Expired,
        ),
    ] {
        assert_eq!(
            ext.authenticate(&rs.sign("old", &idp_claims(f))).await,
            Err(want)
        );
    }
    // A forged token under the known kid.
    let forged = TestKey::Es256(p256::ecdsa::SigningKey::random(&mut OsRng));
    assert_eq!(
        ext.authenticate(&forged.sign("old", &idp_claims(&|_| {})))
            .await,
        Err(AuthError::BadSignature)
    );

    // The IdP rotates to a new ES256 key: the unknown kid makes us fetch again.
    *idp.jwks.lock().unwrap() = json!({"keys": [es.jwk("new"), rs.jwk("old")]});
    let c = ext
        .authenticate(&es.sign("new", &idp_claims(&|_| {})))
        .await
        .unwrap();
    assert_eq!(c.subject, "user-77");
    let fetched = *idp.fetches.lock().unwrap();
    assert_eq!(fetched, 2);
    // Then the old key is dropped at the IdP: once refetched, its tokens are refused.
    *idp.jwks.lock().unwrap() = json!({"keys": [es.jwk("new")]});
    assert_eq!(
        ext.authenticate(&rs.sign("gone", &idp_claims(&|_| {})))
            .await,
        Err(AuthError::UnknownKey)
    );
    assert_eq!(
        ext.authenticate(&rs.sign("old", &idp_claims(&|_| {})))
            .await,
        Err(AuthError::UnknownKey)
    );
}

#[tokio::test]
async fn external_idp_bounds_refetches_and_reports_an_unreachable_idp() {
    let es = TestKey::Es256(p256::ecdsa::SigningKey::random(&mut OsRng));
    let idp = idp(json!({"keys": [es.jwk("k")]})).await;
    let config = ExternalIdpConfig {
        issuer: "https://idp.test/realms/salus".into(),
        jwks_uri: idp.url.clone(),
        audience: "https://fhir.test/fhir".into(),
        scope_claim: "scp".into(),
        ..Default::default()
    };
    let ext = ExternalIdp::new(config, Arc::new(SystemClock));
    ext.authenticate(&es.sign("k", &idp_claims(&|_| {})))
        .await
        .unwrap();
    // A stream of unknown kids fetches at most once per jwks_min_refetch_secs (30 s).
    for i in 0..5 {
        let r = ext
            .authenticate(&es.sign(&format!("bogus-{i}"), &idp_claims(&|_| {})))
            .await;
        assert_eq!(r, Err(AuthError::UnknownKey));
    }
    assert_eq!(*idp.fetches.lock().unwrap(), 1);

    let down = ExternalIdp::new(
        ExternalIdpConfig {
            issuer: "x".into(),
            jwks_uri: "http://127.0.0.1:9/jwks".into(),
            audience: "y".into(),
            ..Default::default()
        },
        Arc::new(SystemClock),
    );
    assert!(matches!(
        down.authenticate(&es.sign("k", &idp_claims(&|_| {}))).await,
        Err(AuthError::Unavailable(_))
    ));
}

#[tokio::test]
async fn backend_client_registered_by_jwks_uri() {
    let env = env();
    let key = es384();
    let server = idp(json!({"keys": [key.jwk("k1")]})).await;
    let new = salus_auth::admin::NewClient {
        name: "Exporter".into(),
        kind: ClientKind::Asymmetric,
        redirect_uris: vec![],
        scope: "system/*.rs".into(),
        jwks: None,
        jwks_uri: Some(server.url.clone()),
    };
    let client = salus_auth::admin::register_client(env.server.store().as_ref(), new, env.now())
        .await
        .unwrap()
        .client
        .client_id;
    let r = client_credentials(
        &env,
        &assertion(&key, &client, TOKEN_URL, 240, "u1"),
        "system/Patient.rs",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = client_credentials(
        &env,
        &assertion(&key, &client, TOKEN_URL, 240, "u2"),
        "system/Patient.rs",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        *server.fetches.lock().unwrap(),
        1,
        "the client's JWKS is cached"
    );
    // Signed by a key the client never published.
    let r = client_credentials(
        &env,
        &assertion(&es384(), &client, TOKEN_URL, 240, "u3"),
        "system/Patient.rs",
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}
