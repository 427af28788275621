//! The built-in authorization server on its own, for trying standard OAuth/SMART client
//! libraries against it (`tests/auth/smart_client.py` does):
//!
//! `cargo run -p salus-auth --example auth_demo -- DATA_DIR PORT [BACKEND_JWKS_FILE]`
//!
//! Seeds a public, a confidential and (given a JWKS file) an asymmetric client, and the
//! users `alice` (Patient/p1) and `drbob` (Practitioner/d1, clinician), then prints one JSON
//! line with the client ids, the secret and the passwords, and serves until killed.

use salus_auth::admin::{self, NewClient};
use salus_auth::store::ClientKind;
use salus_auth::{AuthConfig, AuthServer, Clock, SystemClock};
use serde_json::json;
use std::net::SocketAddr;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        return Err("usage: auth_demo DATA_DIR PORT [BACKEND_JWKS_FILE]".into());
    }
    let dir = std::path::PathBuf::from(&args[1]);
    let port: u16 = args[2].parse()?;
    let base = format!("http://127.0.0.1:{port}");
    let server = AuthServer::open(AuthConfig::default(), &base, &dir)?;
    let store = server.store().as_ref();
    let now = SystemClock.now();
    let redirect = format!("{base}/callback");
    let scope = "openid fhirUser launch launch/patient patient/*.rs user/*.rs offline_access";
    let client = |kind, jwks: Option<serde_json::Value>| NewClient {
        name: "Demo app".into(),
        kind,
        redirect_uris: if jwks.is_some() {
            vec![]
        } else {
            vec![redirect.clone()]
        },
        scope: if jwks.is_some() {
            "system/*.rs".into()
        } else {
            scope.into()
        },
        jwks,
        jwks_uri: None,
    };
    let public = admin::register_client(store, client(ClientKind::Public, None), now).await?;
    let confidential =
        admin::register_client(store, client(ClientKind::Confidential, None), now).await?;
    let backend = match args.get(3) {
        Some(path) => {
            let jwks: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
            Some(
                admin::register_client(store, client(ClientKind::Asymmetric, Some(jwks)), now)
                    .await?,
            )
        }
        None => None,
    };
    admin::add_user(
        store,
        "alice",
        "alice-password",
        Some("Patient/p1"),
        &[],
        now,
    )
    .await?;
    admin::add_user(
        store,
        "drbob",
        "drbob-password",
        Some("Practitioner/d1"),
        &["clinician".into()],
        now,
    )
    .await?;
    println!(
        "{}",
        json!({
            "base": base,
            "redirect_uri": redirect,
            "public_client_id": public.client.client_id,
            "confidential_client_id": confidential.client.client_id,
            "confidential_client_secret": confidential.secret,
            "backend_client_id": backend.map(|b| b.client.client_id),
            "users": {"alice": "alice-password", "drbob": "drbob-password"},
        })
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let app = salus_auth::router(server).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app).await?;
    Ok(())
}
