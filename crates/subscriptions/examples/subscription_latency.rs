//! Notification latency: change committed → rest-hook received, p50/p99, against a
//! baseline run side by side (a bare HTTP POST to the same receiver, the floor).
//!
//! `cargo run --release -p salus-subscriptions --example subscription_latency -- [N]`
//! (SQLite in a temporary directory, the commit hook on, one subscription, N writes
//! one after the other, default 300).

use salus_service::FhirService;
use salus_subscriptions::{backport, Engine, EngineConfig, NotifyingStore, Topics};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(300);
    // receiver: records when each Observation's notification arrived
    let arrived: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let a = arrived.clone();
    let hook = axum::Router::new().fallback(axum::routing::post(move |body: String| {
        let a = a.clone();
        async move {
            let t = Instant::now();
            if let Ok(v) = serde_json::from_str::<Value>(&body) {
                for e in v["entry"].as_array().into_iter().flatten().skip(1) {
                    if let Some(u) = e["fullUrl"].as_str() {
                        a.lock()
                            .unwrap()
                            .insert(u.rsplit('/').next().unwrap().to_string(), t);
                    }
                }
            }
            axum::http::StatusCode::OK
        }
    }));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, hook).await.unwrap() });

    // baseline: a bare POST of a similar body, round trip
    let http = reqwest::Client::new();
    let mut base = vec![];
    for _ in 0..n {
        let t = Instant::now();
        http.post(&url).body("{}").send().await.unwrap();
        base.push(t.elapsed().as_secs_f64() * 1e3);
    }

    let dir = tempfile::tempdir().unwrap();
    let sqlite =
        salus_store::sqlite::SqliteStore::open_dir(dir.path(), Default::default()).unwrap();
    let changed = Arc::new(tokio::sync::Notify::new());
    let store = Arc::new(NotifyingStore::new(Arc::new(sqlite), changed.clone()));
    let svc = FhirService::new(store, Default::default());
    let engine = Engine::new(
        svc.clone(),
        Topics::builtin(),
        EngineConfig {
            base_url: "http://bench".into(),
            ..Default::default()
        },
        changed,
    );
    tokio::spawn(engine.run(std::future::pending()));
    let sub = json!({"resourceType": "Subscription", "status": "requested", "reason": "bench",
        "criteria": "https://salus.dev/fhir/SubscriptionTopic/patient-observation",
        "_criteria": {"extension": [{"url": backport::FILTER_CRITERIA, "valueString": "Observation?code=8867-4"}]},
        "channel": {"type": "rest-hook", "endpoint": url, "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": backport::PAYLOAD_CONTENT, "valueCode": "id-only"}]}}});
    svc.create("Subscription", sub, None).await.unwrap();
    for _ in 0..200 {
        let s = svc
            .search("Subscription", &[("status".into(), "active".into())], false)
            .await
            .unwrap();
        if !s.page.entries.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut lat = vec![];
    for i in 0..n {
        let obs = json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "valueQuantity": {"value": 60 + (i % 80), "unit": "/min"}});
        let out = svc.create("Observation", obs, None).await.unwrap();
        let committed = Instant::now();
        let id = out.record.id.clone();
        let deadline = committed + Duration::from_secs(10);
        loop {
            if let Some(t) = arrived.lock().unwrap().get(&id) {
                lat.push(t.saturating_duration_since(committed).as_secs_f64() * 1e3);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "notification for {id} never came"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    let (b50, b99) = (pct(&mut base, 0.5), pct(&mut base, 0.99));
    let (l50, l99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));
    println!("writes: {n}");
    println!("baseline bare POST round trip: p50 {b50:.2} ms, p99 {b99:.2} ms");
    println!("commit → rest-hook received:   p50 {l50:.2} ms, p99 {l99:.2} ms");
    println!(
        "ratio to baseline: p50 {:.1}x, p99 {:.1}x",
        l50 / b50,
        l99 / b99
    );
}
