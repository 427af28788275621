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

/// Two `salus serve` processes on one database: a SearchParameter written through one
/// goes live in the other (it re-reads them every few seconds), and retires there when
/// deleted.
#[tokio::test]
async fn custom_search_parameters_reach_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (pa, pb) = (free_port(), free_port());
    let a = start(&data, pa, false);
    let b = start(&data, pb, false);
    let client = reqwest::Client::new();
    let (base_a, base_b) = (
        format!("http://127.0.0.1:{pa}"),
        format!("http://127.0.0.1:{pb}"),
    );
    let sp = serde_json::json!({"resourceType": "SearchParameter",
        "url": "http://example.org/fhir/SearchParameter/patient-nickname",
        "name": "Nickname", "status": "active", "description": "nickname",
        "code": "nickname", "base": ["Patient"], "type": "string",
        "expression": "Patient.name.where(use = 'nickname').given"});
    let r = client
        .post(format!("{base_a}/SearchParameter"))
        .header("content-type", "application/fhir+json")
        .body(sp.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let sp_loc = r.headers()["location"].to_str().unwrap().to_string();
    let sp_id = sp_loc.split('/').rev().nth(2).unwrap().to_string();
    // status of a strict search for it on B, until B knows it (or 20 s pass)
    let strict = |base: String| {
        let client = client.clone();
        async move {
            client
                .get(format!("{base}/Patient?nickname=bob"))
                .header("prefer", "handling=strict")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let wait_for = |want: u16| {
        let base_b = base_b.clone();
        let strict = &strict;
        async move {
            for _ in 0..100 {
                if strict(base_b.clone()).await == want {
                    return true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            false
        }
    };
    assert!(
        wait_for(200).await,
        "the parameter went live in the other process"
    );
    // B indexes its own writes with it
    let r = client
        .post(format!("{base_b}/Patient"))
        .header("content-type", "application/fhir+json")
        .body(r#"{"resourceType":"Patient","name":[{"use":"nickname","given":["Bobby"]}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let found: serde_json::Value = client
        .get(format!("{base_b}/Patient?nickname=bob"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(found["entry"].as_array().map(Vec::len), Some(1));
    let r = client
        .delete(format!("{base_a}/SearchParameter/{sp_id}"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    assert!(wait_for(400).await, "retired in the other process");
    stop(a);
    stop(b);
}
