//! The authorization-code flow end to end: authorize → login → consent → code → token →
//! refresh → revoke → introspect, and the ways each step refuses bad input.

mod common;

use axum::http::StatusCode;
use common::*;
use salus_auth::store::ClientKind;
use salus_auth::AuthError;
use serde_json::json;

const APP_SCOPE: &str = "openid fhirUser launch/patient patient/*.rs offline_access";

async fn exchange(env: &Env, client: &str, code: &str, verifier: &str) -> Resp {
    env.post_form(
        "/auth/token",
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("client_id", client),
            ("code_verifier", verifier),
        ],
        &[],
    )
    .await
}

#[tokio::test]
async fn authorization_code_flow_with_pkce_refresh_revoke_and_introspect() {
    let env = env();
    env.add_user("pat", Some("Patient/p1"), &[]).await;
    let (client, _) = env.add_client(ClientKind::Public, APP_SCOPE).await;
    let (rs, rs_secret) = env
        .add_client(ClientKind::Confidential, "system/*.rs")
        .await;
    let rs_auth = basic(&rs, rs_secret.as_deref().unwrap());
    let (verifier, challenge) = pkce();

    let s = start(
        &env,
        &authorize_url(
            &client,
            "openid fhirUser launch/patient patient/Observation.rs offline_access user/*.cruds",
            Some(&challenge),
            &[("nonce", "n-1")],
        ),
    )
    .await;
    let page = login(&env, &s, "pat", &password("pat")).await;
    assert_eq!(page.status, StatusCode::OK);
    let html = page.text();
    // The consent page lists what was asked for and allowed, escapes the client's name,
    // and drops what the client may not have.
    assert!(
        html.contains("patient/Observation.rs") && html.contains("offline_access"),
        "{html}"
    );
    assert!(html.contains("Test &lt;App&gt;") && !html.contains("Test <App>"));
    assert!(!html.contains("user/*.cruds"));
    assert!(page
        .header("content-security-policy")
        .contains("https://app.test"));
    let r = consent(
        &env,
        &s,
        &[
            "openid",
            "fhirUser",
            "launch/patient",
            "patient/Observation.rs",
            "offline_access",
        ],
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.location_param("state").as_deref(), Some("st-123"));
    let code = r.location_param("code").unwrap();

    let t = exchange(&env, &client, &code, &verifier).await;
    assert_eq!(t.status, StatusCode::OK, "{}", t.text());
    assert_eq!(t.header("cache-control"), "no-store");
    let t = t.json();
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["expires_in"], 3600);
    assert_eq!(
        t["scope"],
        "openid fhirUser launch/patient patient/Observation.rs offline_access"
    );
    assert_eq!(t["patient"], "p1");
    assert_eq!(t["need_patient_banner"], true);
    let access = t["access_token"].as_str().unwrap();
    let refresh = t["refresh_token"].as_str().unwrap().to_string();

    // The id token: for the client, with the nonce and fhirUser.
    let id = salus_auth::jws::decode(t["id_token"].as_str().unwrap()).unwrap();
    id.verify_with(&env.keys.verifying_keys()).unwrap();
    assert_eq!(id.str_claim("aud"), Some(client.as_str()));
    assert_eq!(id.str_claim("nonce"), Some("n-1"));
    assert_eq!(id.str_claim("fhirUser"), Some("Patient/p1"));
    assert_eq!(id.str_claim("iss"), Some(BASE));

    // The access token verifies and says who is calling.
    let auth = env.server.authenticator();
    let caller = auth.authenticate(access).await.unwrap();
    assert_eq!(caller.subject, "pat");
    assert_eq!(caller.client_id.as_deref(), Some(client.as_str()));
    assert_eq!(caller.patient.as_deref(), Some("p1"));
    assert_eq!(caller.fhir_user.as_deref(), Some("Patient/p1"));
    assert_eq!(caller.issuer, BASE);
    assert!(caller.token_id.is_some());

    // Refresh, narrowing the scope; the old refresh token is spent.
    let r = env
        .post_form(
            "/auth/token",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &refresh),
                ("client_id", &client),
                ("scope", "patient/Observation.rs offline_access"),
            ],
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let t2 = r.json();
    assert_eq!(t2["scope"], "patient/Observation.rs offline_access");
    assert_eq!(t2["patient"], "p1");
    let refresh2 = t2["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(refresh2, refresh);
    let again = env
        .post_form(
            "/auth/token",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &refresh),
                ("client_id", &client),
            ],
            &[],
        )
        .await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST);
    assert_eq!(again.json()["error"], "invalid_grant");
    // The rotated refresh token keeps the original grant: it may ask for openid again.
    let r = env
        .post_form(
            "/auth/token",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &refresh2),
                ("client_id", &client),
            ],
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let t3 = r.json();
    assert!(t3["scope"].as_str().unwrap().contains("openid"));
    let access3 = t3["access_token"].as_str().unwrap().to_string();
    let refresh3 = t3["refresh_token"].as_str().unwrap().to_string();

    // Introspection (an authenticated resource server) before and after revocation.
    let i = env
        .post_form(
            "/auth/introspect",
            &[("token", &access3)],
            &[("authorization", &rs_auth)],
        )
        .await;
    assert_eq!(i.status, StatusCode::OK);
    let i = i.json();
    assert_eq!(i["active"], true);
    assert_eq!(i["sub"], "pat");
    assert_eq!(i["patient"], "p1");
    assert_eq!(i["fhirUser"], "Patient/p1");
    assert_eq!(i["client_id"], client.as_str());
    let i = env
        .post_form(
            "/auth/introspect",
            &[("token", &refresh3)],
            &[("authorization", &rs_auth)],
        )
        .await
        .json();
    assert_eq!(i["active"], true);

    let r = env
        .post_form(
            "/auth/revoke",
            &[("token", &access3), ("client_id", &client)],
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = env
        .post_form(
            "/auth/revoke",
            &[
                ("token", &refresh3),
                ("client_id", &client),
                ("token_type_hint", "refresh_token"),
            ],
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(auth.authenticate(&access3).await, Err(AuthError::Revoked));
    for tok in [&access3, &refresh3] {
        let i = env
            .post_form(
                "/auth/introspect",
                &[("token", tok)],
                &[("authorization", &rs_auth)],
            )
            .await
            .json();
        assert_eq!(i, json!({"active": false}));
    }
    let r = env
        .post_form(
            "/auth/token",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &refresh3),
                ("client_id", &client),
            ],
            &[],
        )
        .await;
    assert_eq!(r.json()["error"], "invalid_grant");
    // Revoking an unknown token is not an error (RFC 7009 §2.2).
    let r = env
        .post_form(
            "/auth/revoke",
            &[("token", "nonsense"), ("client_id", &client)],
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // Introspection needs client authentication.
    let r = env
        .post_form(
            "/auth/introspect",
            &[("token", &access3), ("client_id", &client)],
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn bad_pkce_verifier_wrong_redirect_and_code_reuse_are_rejected() {
    let env = env();
    env.add_user("pat", Some("Patient/p1"), &[]).await;
    let (client, _) = env.add_client(ClientKind::Public, APP_SCOPE).await;
    let (verifier, challenge) = pkce();

    let code = code_for(
        &env,
        &client,
        "pat",
        "openid patient/*.rs",
        Some(&challenge),
    )
    .await;
    let (other_verifier, _) = pkce();
    let r = exchange(&env, &client, &code, &other_verifier).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"], "invalid_grant");
    // A failed exchange spends the code too.
    assert_eq!(
        exchange(&env, &client, &code, &verifier).await.json()["error"],
        "invalid_grant"
    );

    let code = code_for(
        &env,
        &client,
        "pat",
        "openid patient/*.rs",
        Some(&challenge),
    )
    .await;
    let r = env
        .post_form(
            "/auth/token",
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", "https://app.test/other"),
                ("client_id", &client),
                ("code_verifier", &verifier),
            ],
            &[],
        )
        .await;
    assert_eq!(r.json()["error"], "invalid_grant");
    assert!(r.json()["error_description"]
        .as_str()
        .unwrap()
        .contains("redirect_uri"));

    let code = code_for(
        &env,
        &client,
        "pat",
        "openid patient/*.rs",
        Some(&challenge),
    )
    .await;
    let r = env
        .post_form(
            "/auth/token",
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("client_id", &client),
            ],
            &[],
        )
        .await;
    assert!(r.json()["error_description"]
        .as_str()
        .unwrap()
        .contains("code_verifier"));

    let code = code_for(
        &env,
        &client,
        "pat",
        "openid patient/*.rs",
        Some(&challenge),
    )
    .await;
    assert_eq!(
        exchange(&env, &client, &code, &verifier).await.status,
        StatusCode::OK
    );
    let reuse = exchange(&env, &client, &code, &verifier).await;
    assert_eq!(reuse.status, StatusCode::BAD_REQUEST);
    assert_eq!(reuse.json()["error"], "invalid_grant");

    // Another client cannot use the code.
    let (other, _) = env.add_client(ClientKind::Public, APP_SCOPE).await;
    let code = code_for(
        &env,
        &client,
        "pat",
        "openid patient/*.rs",
        Some(&challenge),
    )
    .await;
    assert_eq!(
        exchange(&env, &other, &code, &verifier).await.json()["error"],
        "invalid_grant"
    );
}

#[tokio::test]
async fn expired_code_is_rejected() {
    let env = env();
    env.add_user("pat", Some("Patient/p1"), &[]).await;
    let (client, _) = env.add_client(ClientKind::Public, APP_SCOPE).await;
    let (verifier, challenge) = pkce();
    let code = code_for(
        &env,
        &client,
        "pat",
        "openid patient/*.rs",
        Some(&challenge),
    )
    .await;
    env.clock.advance(61);
    let r = exchange(&env, &client, &code, &verifier).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"], "invalid_grant");
}

#[tokio::test]
async fn public_client_may_identify_itself_with_an_empty_basic_secret() {
    let env = env();
    env.add_user("pat", Some("Patient/p1"), &[]).await;
    let (client, _) = env.add_client(ClientKind::Public, APP_SCOPE).await;
    let (verifier, challenge) = pkce();
    let code = code_for(&env, &client, "pat", "openid", Some(&challenge)).await;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", verifier.as_str()),
    ];
    let wrong = env
        .post_form(
            "/auth/token",
            &form,
            &[("authorization", &basic(&client, "guess"))],
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let code = code_for(&env, &client, "pat", "openid", Some(&challenge)).await;
    let mut form = form;
    form[1].1 = code.as_str();
    let r = env
        .post_form(
            "/auth/token",
            &form,
            &[("authorization", &basic(&client, ""))],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

#[tokio::test]
async fn bad_client_or_redirect_shows_an_error_page_and_never_redirects() {
    let env = env();
    let (client, _) = env.add_client(ClientKind::Public, APP_SCOPE).await;
    let (_, challenge) = pkce();
    let url = authorize_url(&client, "openid", Some(&challenge), &[])
        .replace("app.test%2Fcallback", "evil.test%2Fcallback");
    let r = env.get(&url).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.header("location").is_empty());
    assert!(r.text().contains("redirect_uri is not registered"));
    let url = authorize_url(&client, "openid", Some(&challenge), &[])
        .replace("redirect_uri=https%3A%2F%2Fapp.test%2Fcallback", "");
    let r = env.get(&url).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.header("location").is_empty());
    assert!(r.text().contains("no redirect_uri"));
    let r = env
        .get(&authorize_url(
            "no-such-client",
            "openid",
            Some(&challenge),
            &[],
        ))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.header("location").is_empty());
    assert_eq!(r.header("x-frame-options"), "DENY");
    // An attacker's markup in the client id is not echoed.
    let r = env
        .get("/auth/authorize?client_id=%3Cscript%3E&response_type=code")
        .await;
    assert!(!r.text().contains("<script>"));
}

#[tokio::test]
async fn errors_after_a_good_redirect_go_back_to_the_app() {
    let env = env();
    let (client, _) = env.add_client(ClientKind::Public, APP_SCOPE).await;
    let (_, challenge) = pkce();
    let cases = [
        (
            authorize_url(&client, "openid", None, &[]),
            "invalid_request",
            "PKCE",
        ),
        (
            authorize_url(&client, "openid", Some(&challenge), &[])
                .replace("aud=http%3A%2F%2Ffhir.test", "aud=https%3A%2F%2Fother.test"),
            "invalid_request",
            "aud",
        ),
        (
            authorize_url(&client, "system/*.rs", Some(&challenge), &[]),
            "invalid_scope",
            "scope",
        ),
        (
            authorize_url(&client, "openid", Some(&challenge), &[])
                .replace("response_type=code", "response_type=token"),
            "unsupported_response_type",
            "code",
        ),
        (
            authorize_url(
                &client,
                "openid launch",
                Some(&challenge),
                &[("launch", "nope")],
            ),
            "invalid_request",
            "launch",
        ),
        (
            format!(
                "{}&code_challenge_method=plain",
                authorize_url(&client, "openid", None, &[("code_challenge", &challenge)])
            ),
            "invalid_request",
            "S256",
        ),
    ];
    for (url, error, words) in cases {
        let r = env.get(&url).await;
        assert_eq!(r.status, StatusCode::FOUND, "{url}: {}", r.text());
        assert!(r.header("location").starts_with(REDIRECT), "{url}");
        assert_eq!(r.location_param("error").as_deref(), Some(error), "{url}");
        assert_eq!(r.location_param("state").as_deref(), Some("st-123"));
        assert!(
            r.location_param("error_description")
                .unwrap()
                .contains(words),
            "{url}"
        );
    }
}

#[tokio::test]
async fn login_is_csrf_protected_generic_and_rate_limited() {
    let env = env();
    env.add_user("pat", Some("Patient/p1"), &[]).await;
    let (client, _) = env.add_client(ClientKind::Public, APP_SCOPE).await;
    let (_, challenge) = pkce();
    let s = start(
        &env,
        &authorize_url(&client, "openid", Some(&challenge), &[]),
    )
    .await;

    // Without this browser's cookie, or with a wrong CSRF token: refused.
    let r = env
        .post_form(
            "/auth/login",
            &[
                ("request_id", &s.request_id),
                ("csrf", &s.csrf),
                ("username", "pat"),
                ("password", &password("pat")),
            ],
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text().contains("expired"));
    let r = env
        .post_form(
            "/auth/login",
            &[
                ("request_id", &s.request_id),
                ("csrf", "forged"),
                ("username", "pat"),
                ("password", &password("pat")),
            ],
            &[("cookie", &s.cookie)],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    // Wrong password and unknown user read the same.
    let wrong = login(&env, &s, "pat", "nope-nope").await;
    let unknown = login(&env, &s, "nobody", "nope-nope").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.text().contains("Invalid username or password."));
    assert!(unknown.text().contains("Invalid username or password."));
    // Five failures for one username: even the right password is refused for a while.
    for _ in 0..4 {
        login(&env, &s, "pat", "nope-nope").await;
    }
    let r = login(&env, &s, "pat", &password("pat")).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(r.text().contains("Too many"));
    env.clock.advance(301);
    // The page itself has expired by now (10 minutes): start again, and it works.
    env.clock.advance(300);
    let s = start(
        &env,
        &authorize_url(&client, "openid", Some(&challenge), &[]),
    )
    .await;
    assert_eq!(
        login(&env, &s, "pat", &password("pat")).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn user_may_untick_scopes_deny_and_staff_pick_a_patient() {
    let env = env();
    env.add_user("doc", Some("Practitioner/d1"), &["clinician"])
        .await;
    let (client, _) = env.add_client(ClientKind::Public, APP_SCOPE).await;
    let (verifier, challenge) = pkce();

    // Staff user, standalone launch/patient: the consent page asks for a patient id.
    let s = start(
        &env,
        &authorize_url(
            &client,
            "launch/patient patient/*.rs openid",
            Some(&challenge),
            &[],
        ),
    )
    .await;
    let page = login(&env, &s, "doc", &password("doc")).await;
    assert!(page.text().contains("name=\"patient\""));
    let r = consent(
        &env,
        &s,
        &["launch/patient", "patient/*.rs"],
        &[("patient", "<bad>")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text().contains("Enter the id of the patient"));
    let r = consent(
        &env,
        &s,
        &["launch/patient", "patient/*.rs"],
        &[("patient", "p42")],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let t = exchange(&env, &client, &r.location_param("code").unwrap(), &verifier)
        .await
        .json();
    // openid was unticked: no id token, and it is not granted.
    assert_eq!(t["scope"], "launch/patient patient/*.rs");
    assert!(t.get("id_token").is_none() && t.get("refresh_token").is_none());
    assert_eq!(t["patient"], "p42");
    let caller = env
        .server
        .authenticator()
        .authenticate(t["access_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(caller.roles, vec!["clinician".to_string()]);
    assert_eq!(caller.fhir_user.as_deref(), Some("Practitioner/d1"));

    // Denying sends access_denied back.
    let s = start(
        &env,
        &authorize_url(&client, "openid", Some(&challenge), &[]),
    )
    .await;
    login(&env, &s, "doc", &password("doc")).await;
    let r = env
        .post_form(
            "/auth/consent",
            &[
                ("request_id", &s.request_id),
                ("csrf", &s.csrf),
                ("decision", "deny"),
            ],
            &[("cookie", &s.cookie)],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.location_param("error").as_deref(), Some("access_denied"));
    assert_eq!(r.location_param("state").as_deref(), Some("st-123"));
    // Consent before login is refused.
    let s = start(
        &env,
        &authorize_url(&client, "openid", Some(&challenge), &[]),
    )
    .await;
    let r = consent(&env, &s, &["openid"], &[]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn confidential_client_authenticates_with_basic_or_post() {
    let env = env();
    env.add_user("pat", Some("Patient/p1"), &[]).await;
    let (client, secret) = env.add_client(ClientKind::Confidential, APP_SCOPE).await;
    let secret = secret.unwrap();
    // PKCE is optional for confidential clients.
    let code = code_for(&env, &client, "pat", "openid patient/*.rs", None).await;
    let wrong = env
        .post_form(
            "/auth/token",
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
            ],
            &[("authorization", &basic(&client, "wrong"))],
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.json()["error"], "invalid_client");
    assert!(!wrong.header("www-authenticate").is_empty());
    // Without its secret a confidential client is refused.
    let code = code_for(&env, &client, "pat", "openid patient/*.rs", None).await;
    let r = env
        .post_form(
            "/auth/token",
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("client_id", &client),
            ],
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let code = code_for(&env, &client, "pat", "openid patient/*.rs", None).await;
    let r = env
        .post_form(
            "/auth/token",
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
            ],
            &[("authorization", &basic(&client, &secret))],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let code = code_for(&env, &client, "pat", "openid patient/*.rs", None).await;
    let r = env
        .post_form(
            "/auth/token",
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("client_id", &client),
                ("client_secret", &secret),
            ],
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // Refresh may only narrow.
    let code = code_for(
        &env,
        &client,
        "pat",
        "openid patient/*.rs offline_access",
        None,
    )
    .await;
    let t = env
        .post_form(
            "/auth/token",
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
            ],
            &[("authorization", &basic(&client, &secret))],
        )
        .await
        .json();
    let r = env
        .post_form(
            "/auth/token",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", t["refresh_token"].as_str().unwrap()),
                ("scope", "openid user/*.rs"),
            ],
            &[("authorization", &basic(&client, &secret))],
        )
        .await;
    assert_eq!(r.json()["error"], "invalid_scope");
    let r = env
        .post_form("/auth/token", &[("grant_type", "password")], &[])
        .await;
    assert_eq!(r.json()["error"], "unsupported_grant_type");
}

#[tokio::test]
async fn ehr_launch_carries_patient_and_encounter() {
    let env = env();
    env.add_user("doc", Some("Practitioner/d1"), &["clinician"])
        .await;
    env.add_user("pat", Some("Patient/p1"), &[]).await;
    let t = user_token(&env, "doc", "openid fhirUser").await;
    let doc_token = t["access_token"].as_str().unwrap();
    let pat = user_token(&env, "pat", "openid").await;

    // Only staff (or the launch scope) may create a launch.
    let r = env
        .post_json(
            "/auth/launch",
            &json!({"patient": "p1"}),
            pat["access_token"].as_str(),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = env
        .post_json("/auth/launch", &json!({"patient": "p1"}), None)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = env
        .post_json("/auth/launch", &json!({"patient": "a b"}), Some(doc_token))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = env
        .post_json(
            "/auth/launch",
            &json!({"patient": "Patient/p7", "encounter": "e9"}),
            Some(doc_token),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let launch = r.json()["launch"].as_str().unwrap().to_string();

    let (client, _) = env
        .add_client(
            ClientKind::Public,
            "launch openid fhirUser patient/*.rs user/*.rs",
        )
        .await;
    let (verifier, challenge) = pkce();
    let s = start(
        &env,
        &authorize_url(
            &client,
            "launch openid fhirUser patient/*.rs",
            Some(&challenge),
            &[("launch", &launch)],
        ),
    )
    .await;
    let page = login(&env, &s, "doc", &password("doc")).await;
    assert!(!page.text().contains("name=\"patient\""));
    let r = consent(
        &env,
        &s,
        &["launch", "openid", "fhirUser", "patient/*.rs"],
        &[],
    )
    .await;
    let t = exchange(&env, &client, &r.location_param("code").unwrap(), &verifier)
        .await
        .json();
    assert_eq!(t["patient"], "p7");
    assert_eq!(t["encounter"], "e9");
    // The EHR shows its own banner.
    assert_eq!(t["need_patient_banner"], false);
    assert_eq!(t["scope"], "launch openid fhirUser patient/*.rs");
    let caller = env
        .server
        .authenticator()
        .authenticate(t["access_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(caller.patient.as_deref(), Some("p7"));
    assert_eq!(caller.encounter.as_deref(), Some("e9"));

    // A patient user cannot be launched into someone else's record.
    let s = start(
        &env,
        &authorize_url(
            &client,
            "launch openid patient/*.rs",
            Some(&challenge),
            &[("launch", &launch)],
        ),
    )
    .await;
    let r = login(&env, &s, "pat", &password("pat")).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.location_param("error").as_deref(), Some("access_denied"));
}

#[tokio::test]
async fn client_registration_api_requires_admin() {
    let env = env();
    env.add_user("root", Some("Practitioner/a1"), &["admin"])
        .await;
    env.add_user("doc", Some("Practitioner/d1"), &["clinician"])
        .await;
    let admin = user_token(&env, "root", "openid").await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let doc = user_token(&env, "doc", "openid").await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let body = json!({"name": "Chart app", "type": "confidential", "redirect_uris": ["https://chart.test/cb"], "scope": "openid user/*.rs"});

    assert_eq!(
        env.post_json("/auth/clients", &body, None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        env.post_json("/auth/clients", &body, Some("not-a-token"))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        env.post_json("/auth/clients", &body, Some(&doc))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let r = env.post_json("/auth/clients", &body, Some(&admin)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let c = r.json();
    let id = c["client_id"].as_str().unwrap().to_string();
    assert!(c["client_secret"].as_str().unwrap().len() >= 32);
    assert_eq!(c["token_endpoint_auth_method"], "client_secret_basic");

    let bad = env.post_json("/auth/clients", &json!({"name": "x", "type": "public", "redirect_uris": ["not a uri"], "scope": "openid"}), Some(&admin)).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.json()["error_description"]
        .as_str()
        .unwrap()
        .contains("redirect URI"));

    // RFC 7591 field names work too.
    let rfc = json!({"client_name": "Portal", "token_endpoint_auth_method": "none", "redirect_uris": ["https://portal.test/cb"], "scope": "openid", "grant_types": ["authorization_code"]});
    let r = env.post_json("/auth/clients", &rfc, Some(&admin)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(r.json()["type"], "public");
    assert!(r.json().get("client_secret").is_none());
    let r = env
        .post_json(
            "/auth/clients",
            &json!({"client_name": "x", "scope": "openid"}),
            Some(&admin),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json()["error_description"]
        .as_str()
        .unwrap()
        .contains("type"));

    let list = env
        .send(
            axum::http::Request::get("/auth/clients")
                .header("authorization", format!("Bearer {admin}"))
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(list.status, StatusCode::OK);
    let text = list.text();
    assert!(text.contains(&id) && !text.contains("secret_hash") && !text.contains("argon2"));

    let del = |tok: String, id: String| {
        axum::http::Request::delete(format!("/auth/clients/{id}"))
            .header("authorization", format!("Bearer {tok}"))
            .body(axum::body::Body::empty())
            .unwrap()
    };
    assert_eq!(
        env.send(del(doc.clone(), id.clone())).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        env.send(del(admin.clone(), id.clone())).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        env.send(del(admin.clone(), id.clone())).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn well_known_documents_have_the_required_fields() {
    let env = env();
    let r = env.get("/.well-known/smart-configuration").await;
    assert_eq!(r.status, StatusCode::OK);
    let d = r.json();
    for field in [
        "issuer",
        "jwks_uri",
        "authorization_endpoint",
        "token_endpoint",
        "token_endpoint_auth_methods_supported",
        "grant_types_supported",
        "registration_endpoint",
        "scopes_supported",
        "response_types_supported",
        "introspection_endpoint",
        "revocation_endpoint",
        "code_challenge_methods_supported",
        "capabilities",
    ] {
        assert!(d.get(field).is_some(), "smart-configuration lacks {field}");
    }
    assert_eq!(d["issuer"], BASE);
    assert_eq!(d["token_endpoint"], format!("{BASE}/auth/token"));
    assert_eq!(d["code_challenge_methods_supported"], json!(["S256"]));
    let caps: Vec<&str> = d["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    for c in [
        "launch-ehr",
        "launch-standalone",
        "client-public",
        "client-confidential-symmetric",
        "client-confidential-asymmetric",
        "context-ehr-patient",
        "context-standalone-patient",
        "permission-offline",
        "permission-patient",
        "permission-user",
        "permission-v1",
        "permission-v2",
        "sso-openid-connect",
        "authorize-post",
    ] {
        assert!(caps.contains(&c), "capability {c} missing");
    }
    for m in [
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
    ] {
        assert!(d["token_endpoint_auth_methods_supported"]
            .as_array()
            .unwrap()
            .contains(&json!(m)));
    }
    let o = env.get("/.well-known/openid-configuration").await.json();
    for field in [
        "issuer",
        "authorization_endpoint",
        "token_endpoint",
        "jwks_uri",
        "response_types_supported",
        "subject_types_supported",
        "id_token_signing_alg_values_supported",
    ] {
        assert!(o.get(field).is_some(), "openid-configuration lacks {field}");
    }
    let jwks = env.get("/auth/jwks").await.json();
    let key = &jwks["keys"][0];
    assert_eq!(key["kty"], "EC");
    assert_eq!(key["crv"], "P-256");
    assert_eq!(key["kid"], env.keys.signer().kid.as_str());
    assert!(
        key.get("d").is_none(),
        "the private key must not be published"
    );
    // The published JWKS verifies the server's tokens.
    let keys = salus_auth::jws::parse_jwks(&jwks).unwrap();
    let t = env.keys.signer().sign(&json!({"exp": 1}));
    salus_auth::jws::decode(&t)
        .unwrap()
        .verify_with(&keys)
        .unwrap();
}

#[tokio::test]
async fn authorize_by_post_works_like_get() {
    let env = env();
    env.add_user("pat", Some("Patient/p1"), &[]).await;
    let (client, _) = env.add_client(ClientKind::Public, APP_SCOPE).await;
    let (verifier, challenge) = pkce();
    let r = env
        .post_form(
            "/auth/authorize",
            &[
                ("response_type", "code"),
                ("client_id", &client),
                ("redirect_uri", REDIRECT),
                ("scope", "openid patient/*.rs"),
                ("state", "st-123"),
                ("aud", BASE),
                ("code_challenge", &challenge),
                ("code_challenge_method", "S256"),
            ],
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let html = r.text();
    let s = SignIn {
        request_id: hidden(&html, "request_id"),
        csrf: hidden(&html, "csrf"),
        cookie: cookie(&r),
    };
    login(&env, &s, "pat", &password("pat")).await;
    let r = consent(&env, &s, &["openid", "patient/*.rs"], &[]).await;
    let t = exchange(&env, &client, &r.location_param("code").unwrap(), &verifier).await;
    assert_eq!(t.status, StatusCode::OK);
    // Patients get their own record as context even without launch/patient.
    assert_eq!(t.json()["patient"], "p1");
}

#[tokio::test]
async fn failed_logins_from_one_address_are_limited_across_usernames() {
    let env = env();
    env.add_user("pat", Some("Patient/p1"), &[]).await;
    let (client, _) = env.add_client(ClientKind::Public, APP_SCOPE).await;
    let (_, challenge) = pkce();
    let s = start(
        &env,
        &authorize_url(&client, "openid", Some(&challenge), &[]),
    )
    .await;
    let from = |addr: &str, user: &str, pw: &str| {
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("request_id", &s.request_id)
            .append_pair("csrf", &s.csrf)
            .append_pair("username", user)
            .append_pair("password", pw)
            .finish();
        let mut req = axum::http::Request::post("/auth/login")
            .header("content-type", "application/x-www-form-urlencoded")
            .header("cookie", &s.cookie)
            .body(axum::body::Body::from(body))
            .unwrap();
        let addr: std::net::SocketAddr = addr.parse().unwrap();
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(addr));
        req
    };
    // 20 failures (4 × login_attempts) from one address, each for a different username.
    for i in 0..20 {
        let r = env
            .send(from("10.0.0.1:5000", &format!("guess{i}"), "wrong-wrong"))
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    let r = env
        .send(from("10.0.0.1:5001", "pat", &password("pat")))
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    // Another address is not affected.
    let r = env
        .send(from("10.0.0.2:5000", "pat", &password("pat")))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

#[tokio::test]
async fn browser_apps_can_read_token_responses_cross_origin() {
    let env = env();
    let pre = env
        .send(
            axum::http::Request::builder()
                .method("OPTIONS")
                .uri("/auth/token")
                .header("origin", "https://app.test")
                .header("access-control-request-method", "POST")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(pre.status, StatusCode::NO_CONTENT);
    assert_eq!(pre.header("access-control-allow-origin"), "*");
    assert!(pre.header("access-control-allow-methods").contains("POST"));
    let r = env
        .post_form("/auth/token", &[("grant_type", "authorization_code")], &[])
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json()["error"], "invalid_client");
    assert_eq!(r.header("access-control-allow-origin"), "*");
    // The authorization endpoint and the login pages are not for scripts.
    let r = env.get("/auth/authorize").await;
    assert_eq!(r.header("access-control-allow-origin"), "");
}

struct OnlyP42;

#[async_trait::async_trait]
impl salus_auth::PatientDirectory for OnlyP42 {
    async fn exists(&self, id: &str) -> bool {
        id == "p42"
    }
}

#[tokio::test]
async fn typed_and_launched_patients_are_checked_against_the_directory() {
    let env = env();
    env.server
        .set_patient_directory(std::sync::Arc::new(OnlyP42));
    env.add_user("doc", Some("Practitioner/d1"), &["clinician"])
        .await;
    let (client, _) = env.add_client(ClientKind::Public, APP_SCOPE).await;
    let (verifier, challenge) = pkce();
    let s = start(
        &env,
        &authorize_url(
            &client,
            "launch/patient patient/*.rs",
            Some(&challenge),
            &[],
        ),
    )
    .await;
    login(&env, &s, "doc", &password("doc")).await;
    let r = consent(
        &env,
        &s,
        &["launch/patient", "patient/*.rs"],
        &[("patient", "p7")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text().contains("There is no patient with that id."));
    let r = consent(
        &env,
        &s,
        &["launch/patient", "patient/*.rs"],
        &[("patient", "p42")],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let t = exchange(&env, &client, &r.location_param("code").unwrap(), &verifier)
        .await
        .json();
    assert_eq!(t["patient"], "p42");

    let doc = user_token(&env, "doc", "openid").await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = env
        .post_json("/auth/launch", &json!({"patient": "p7"}), Some(&doc))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json()["error_description"]
        .as_str()
        .unwrap()
        .contains("Patient/p7"));
    let r = env
        .post_json("/auth/launch", &json!({"patient": "p42"}), Some(&doc))
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
}
