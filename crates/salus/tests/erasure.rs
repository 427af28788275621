//! Erasure end to end: after `Patient/[id]/$purge`, no byte of the patient's name or
//! identifier remains in the database files (searched raw, case-insensitively, after the
//! server stopped), nor in history; other patients are untouched; the audit trail still
//! verifies.

use salus::config::Config;
use salus_service::salus_access::{Principal, StaticTokens};
use salus_service::AuditTrail;
use serde_json::{json, Value};
use std::sync::Arc;

const SECRETS: &[&str] = &["Quintessa", "Marlowe-Xyv", "Marlowe-Xyz", "MRN-77881234"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_leaves_no_trace_of_the_patient() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    let store = salus::serve::open_store(&config).unwrap();
    let svc = salus::serve::service(&config, store.clone());
    let trail = AuditTrail::start(svc.clone());
    let tokens = StaticTokens::new()
        .with(
            "admin",
            Principal::new("root", "user/*.cruds")
                .unwrap()
                .with_roles(&["admin"]),
        )
        .with(
            "clin",
            Principal::new("dr", "user/*.cruds")
                .unwrap()
                .with_roles(&["clinician"]),
        );
    let state = salus::serve::app_state(&config, svc)
        .with_auth(Arc::new(tokens))
        .with_audit(trail.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(salus::serve::run(state, listener, async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();
    let send = |method: reqwest::Method, path: &str, token: &str, body: Option<Value>| {
        let mut r = http
            .request(method, format!("{base}{path}"))
            .bearer_auth(token);
        if let Some(b) = body {
            r = r
                .header("content-type", "application/fhir+json")
                .body(b.to_string());
        }
        r.send()
    };
    let patient = |family: &str| {
        json!({"resourceType": "Patient", "id": "p1",
            "identifier": [{"system": "urn:mrn", "value": "MRN-77881234"}],
            "name": [{"family": family, "given": ["Quintessa"]}],
            "text": {"status": "generated", "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">Quintessa {family}</div>")}})
    };
    let put = reqwest::Method::PUT;
    assert_eq!(
        send(
            put.clone(),
            "/Patient/p1",
            "clin",
            Some(patient("Marlowe-Xyv"))
        )
        .await
        .unwrap()
        .status(),
        201
    );
    assert_eq!(
        send(
            put.clone(),
            "/Patient/p1",
            "clin",
            Some(patient("Marlowe-Xyz"))
        )
        .await
        .unwrap()
        .status(),
        200
    );
    let obs = json!({"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "note"},
        "subject": {"reference": "Patient/p1"}, "note": [{"text": "Quintessa reports dizziness"}],
        "valueString": "MRN-77881234"});
    assert_eq!(
        send(put.clone(), "/Observation/o1", "clin", Some(obs))
            .await
            .unwrap()
            .status(),
        201
    );
    let keep = json!({"resourceType": "Patient", "id": "p2", "name": [{"family": "Keepme"}]});
    assert_eq!(
        send(put.clone(), "/Patient/p2", "clin", Some(keep))
            .await
            .unwrap()
            .status(),
        201
    );
    // a clinician may not erase; the admin may
    let post = reqwest::Method::POST;
    assert_eq!(
        send(post.clone(), "/Patient/p1/$purge", "clin", None)
            .await
            .unwrap()
            .status(),
        403
    );
    let r = send(post.clone(), "/Patient/p1/$purge", "admin", None)
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let out: Value = r.json().await.unwrap();
    assert_eq!(out["parameter"][0]["valueInteger"], 2, "{out}");
    assert_eq!(
        send(post.clone(), "/Patient/p1/$purge", "admin", None)
            .await
            .unwrap()
            .status(),
        404
    );
    let get = reqwest::Method::GET;
    assert_eq!(
        send(get.clone(), "/Patient/p1", "admin", None)
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        send(get.clone(), "/Observation/o1", "admin", None)
            .await
            .unwrap()
            .status(),
        404
    );
    let hist: Value = send(get.clone(), "/Patient/_history", "admin", None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!hist.to_string().contains("Quintessa"), "{hist}");
    assert_eq!(
        send(get.clone(), "/Patient/p2", "admin", None)
            .await
            .unwrap()
            .status(),
        200
    );
    trail.flush().await;
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    store.checkpoint().await.unwrap();
    drop(store);

    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if !path.is_file() {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap().to_ascii_lowercase();
        for s in SECRETS {
            let needle = s.to_ascii_lowercase();
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "'{s}' still in {}",
                path.display()
            );
        }
        assert!(
            path.file_name().unwrap() != "salus.db" || bytes.windows(6).any(|w| w == b"keepme"),
            "the other patient must still be stored"
        );
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_salus"))
        .args(["audit", "verify", "--quiet", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
