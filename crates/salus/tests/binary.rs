//! The real `salus` binary: start, serve, shut down gracefully, keep every
//! acknowledged write.

mod process;

use process::{free_port, start, stop};
use std::process::Command;

#[tokio::test]
async fn serve_demo_then_restart_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let child = start(&data, port, true);
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let bundle: serde_json::Value = client
        .get(format!("{base}/Patient?_total=accurate"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(bundle["total"], 25, "demo patients loaded");
    let mut ids = vec![];
    for i in 0..50 {
        let r = client
            .post(format!("{base}/Patient"))
            .header("content-type", "application/fhir+json")
            .body(format!(
                r#"{{"resourceType":"Patient","name":[{{"family":"Ack{i}"}}]}}"#
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let loc = r.headers()["location"].to_str().unwrap().to_string();
        ids.push(loc.split('/').rev().nth(2).unwrap().to_string());
    }
    stop(child);
    let child = start(&data, port, true);
    // a fresh client: the old one's pooled connections died with the first process
    let client = reqwest::Client::new();
    for id in &ids {
        let r = client
            .get(format!("{base}/Patient/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "acknowledged write {id} survived the restart"
        );
    }
    let bundle: serde_json::Value = client
        .get(format!("{base}/Patient?_total=accurate&_count=0"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(bundle["total"], 75, "demo data is not loaded twice");
    stop(child);
}

#[test]
fn bad_configuration_is_a_readable_error() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("salus.toml");
    std::fs::write(&f, "listen = \"not an address\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_salus"))
        .args(["serve", "--config"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid configuration file"), "{err}");
}
