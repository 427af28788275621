//! The [`AuthStore`] contract: behaviour every implementation must show. Written once and
//! run against each backend (`contract::run_all(&store)` from that backend's tests; the
//! SQLite run is below). Expects an empty store; panics name the violated rule.

use crate::store::*;
use serde_json::json;

fn grant(client: &str) -> Grant {
    Grant {
        client_id: client.into(),
        subject: "alice".into(),
        scope: "openid patient/*.rs".into(),
        patient: Some("p1".into()),
        encounter: Some("e1".into()),
        fhir_user: Some("Patient/p1".into()),
        roles: vec!["clinician".into()],
        auth_time: 7,
        ehr_launch: true,
    }
}

fn client(id: &str, created_at: i64) -> Client {
    Client {
        client_id: id.into(),
        name: "App".into(),
        kind: ClientKind::Asymmetric,
        secret_hash: Some("$argon2id$x".into()),
        redirect_uris: vec!["https://app/cb".into(), "https://app/cb2".into()],
        scope: "system/*.rs".into(),
        jwks: Some(json!({"keys": [{"kty": "EC", "crv": "P-384", "x": "a", "y": "b"}]})),
        jwks_uri: Some("https://app/jwks".into()),
        created_at,
    }
}

pub async fn run_all(s: &dyn AuthStore) {
    clients(s).await;
    users(s).await;
    codes_are_single_use(s).await;
    refresh_tokens(s).await;
    revocations_and_assertion_ids(s).await;
    launches(s).await;
    purge(s).await;
}

async fn clients(s: &dyn AuthStore) {
    let a = client("contract-a", 1);
    s.insert_client(&a).await.unwrap();
    assert!(
        matches!(s.insert_client(&a).await, Err(StoreError::Exists(_))),
        "a taken client id is refused with Exists"
    );
    assert_eq!(
        s.client("contract-a").await.unwrap(),
        Some(a.clone()),
        "a client reads back whole"
    );
    assert_eq!(s.client("contract-none").await.unwrap(), None);
    s.insert_client(&client("contract-b", 2)).await.unwrap();
    let ids: Vec<String> = s
        .clients()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.client_id)
        .collect();
    assert_eq!(
        ids,
        vec!["contract-a", "contract-b"],
        "clients list in registration order"
    );
    s.put_refresh(
        "contract-rt-of-b",
        &RefreshRecord {
            grant: grant("contract-b"),
            expires_at: i64::MAX,
        },
    )
    .await
    .unwrap();
    assert!(s.delete_client("contract-b").await.unwrap());
    assert!(
        !s.delete_client("contract-b").await.unwrap(),
        "deleting twice says nothing was there"
    );
    assert_eq!(
        s.refresh("contract-rt-of-b").await.unwrap(),
        None,
        "deleting a client drops its refresh tokens"
    );
}

async fn users(s: &dyn AuthStore) {
    let u = User {
        username: "contract-user".into(),
        password_hash: "$argon2id$y".into(),
        fhir_user: Some("Practitioner/d1".into()),
        roles: vec!["admin".into(), "clinician".into()],
        created_at: 3,
    };
    s.insert_user(&u).await.unwrap();
    assert!(
        matches!(s.insert_user(&u).await, Err(StoreError::Exists(_))),
        "a taken username is refused"
    );
    assert_eq!(s.user("contract-user").await.unwrap(), Some(u.clone()));
    assert_eq!(
        s.user("Contract-User").await.unwrap(),
        None,
        "usernames are case-sensitive"
    );
    assert!(s.users().await.unwrap().contains(&u));
}

async fn codes_are_single_use(s: &dyn AuthStore) {
    let rec = CodeRecord {
        grant: grant("contract-a"),
        redirect_uri: "https://app/cb".into(),
        code_challenge: Some("ch".into()),
        nonce: Some("n".into()),
        expires_at: 100,
    };
    s.put_code("contract-code", &rec).await.unwrap();
    assert_eq!(s.take_code("contract-code").await.unwrap(), Some(rec));
    assert_eq!(
        s.take_code("contract-code").await.unwrap(),
        None,
        "a code is taken once"
    );
}

async fn refresh_tokens(s: &dyn AuthStore) {
    let rec = RefreshRecord {
        grant: grant("contract-a"),
        expires_at: 100,
    };
    s.put_refresh("contract-rt", &rec).await.unwrap();
    assert_eq!(s.refresh("contract-rt").await.unwrap(), Some(rec.clone()));
    assert_eq!(
        s.refresh("contract-rt").await.unwrap(),
        Some(rec),
        "reading does not spend"
    );
    assert!(s.delete_refresh("contract-rt").await.unwrap());
    assert!(
        !s.delete_refresh("contract-rt").await.unwrap(),
        "only one deleter wins"
    );
    assert_eq!(s.refresh("contract-rt").await.unwrap(), None);
}

async fn revocations_and_assertion_ids(s: &dyn AuthStore) {
    assert!(!s.is_revoked("contract-jti").await.unwrap());
    s.revoke_jti("contract-jti", 100).await.unwrap();
    s.revoke_jti("contract-jti", 50).await.unwrap();
    assert!(
        s.is_revoked("contract-jti").await.unwrap(),
        "revoking twice is fine"
    );
    assert!(s.use_assertion_jti("contract-a", "j", 100).await.unwrap());
    assert!(
        !s.use_assertion_jti("contract-a", "j", 100).await.unwrap(),
        "an assertion id is used once"
    );
    assert!(
        s.use_assertion_jti("contract-b", "j", 100).await.unwrap(),
        "assertion ids are per client"
    );
}

async fn launches(s: &dyn AuthStore) {
    let l = LaunchContext {
        patient: Some("p1".into()),
        encounter: None,
        created_by: "doc".into(),
        expires_at: 100,
    };
    s.put_launch("contract-launch", &l).await.unwrap();
    assert_eq!(s.launch("contract-launch").await.unwrap(), Some(l.clone()));
    assert_eq!(
        s.launch("contract-launch").await.unwrap(),
        Some(l),
        "a launch can be used again until it expires"
    );
}

async fn purge(s: &dyn AuthStore) {
    s.put_code(
        "contract-old",
        &CodeRecord {
            grant: grant("contract-a"),
            redirect_uri: "https://app/cb".into(),
            code_challenge: None,
            nonce: None,
            expires_at: 10,
        },
    )
    .await
    .unwrap();
    s.put_refresh(
        "contract-fresh",
        &RefreshRecord {
            grant: grant("contract-a"),
            expires_at: 1000,
        },
    )
    .await
    .unwrap();
    s.purge_expired(200).await.unwrap();
    assert_eq!(
        s.take_code("contract-old").await.unwrap(),
        None,
        "expired codes are purged"
    );
    assert!(
        !s.is_revoked("contract-jti").await.unwrap(),
        "expired revocations are purged"
    );
    assert_eq!(
        s.launch("contract-launch").await.unwrap(),
        None,
        "expired launches are purged"
    );
    assert!(
        s.use_assertion_jti("contract-a", "j", 300).await.unwrap(),
        "expired assertion ids are purged"
    );
    assert!(
        s.refresh("contract-fresh").await.unwrap().is_some(),
        "live refresh tokens stay"
    );
    assert!(
        s.client("contract-a").await.unwrap().is_some(),
        "clients are never purged"
    );
}
