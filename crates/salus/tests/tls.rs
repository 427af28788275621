//! TLS for `salus serve`: a client that trusts the server's certificate gets FHIR over
//! HTTPS with HSTS; plain HTTP on the TLS port gets nothing; bad certificate or key
//! files are refused with a readable message.

use salus_api::{router, ApiConfig, AppState};
use std::sync::Arc;

fn self_signed(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let pem = cert.cert.pem();
    let c = dir.join("cert.pem");
    let k = dir.join("key.pem");
    std::fs::write(&c, &pem).unwrap();
    std::fs::write(&k, cert.key_pair.serialize_pem()).unwrap();
    (c, k, pem)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_https_with_hsts() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, pem) = self_signed(dir.path());
    let tls = salus::tls::server_config(&cert, &key).unwrap();
    let store = salus_store::sqlite::SqliteStore::open_dir(dir.path(), Default::default()).unwrap();
    let svc = salus_service::FhirService::new(Arc::new(store), Default::default());
    let state = AppState::new(
        svc,
        ApiConfig {
            hsts: true,
            ..Default::default()
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(salus::tls::serve(
        router(state),
        listener,
        tls,
        async move {
            let _ = stopped.await;
        },
    ));
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
        .resolve("localhost", ([127, 0, 0, 1], port).into())
        .build()
        .unwrap();
    let r = client
        .get(format!("https://localhost:{port}/metadata"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r
        .headers()
        .get("strict-transport-security")
        .is_some_and(|h| h.to_str().unwrap().contains("max-age=")));
    assert_eq!(
        r.headers().get("x-content-type-options").unwrap(),
        "nosniff"
    );
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["resourceType"], "CapabilityStatement");
    // a client that does not trust the certificate is refused
    let untrusting = reqwest::Client::builder()
        .resolve("localhost", ([127, 0, 0, 1], port).into())
        .build()
        .unwrap();
    assert!(untrusting
        .get(format!("https://localhost:{port}/metadata"))
        .send()
        .await
        .is_err());
    // plain HTTP on the TLS port gets no FHIR answer
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/metadata"))
        .send()
        .await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

#[test]
fn bad_files_are_refused_readably() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = self_signed(dir.path());
    let missing = dir.path().join("nope.pem");
    let e = salus::tls::server_config(&missing, &key).unwrap_err();
    assert!(
        format!("{e:#}").contains("cannot read the TLS certificate"),
        "{e:#}"
    );
    let e = salus::tls::server_config(&cert, &cert).unwrap_err();
    assert!(format!("{e:#}").contains("private key"), "{e:#}");
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let (_, other_key, _) = self_signed(&other);
    let e = salus::tls::server_config(&cert, &other_key).unwrap_err();
    assert!(format!("{e:#}").contains("do not belong together"), "{e:#}");
}
