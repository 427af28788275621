//! Scheduling benchmark through the real router (no socket) on the embedded SQLite
//! store: P providers (PractitionerRole + Schedule, 10 specialties) each publish
//! weekday availability (09:00–12:00 Europe/Berlin, 30-minute video visits) for D days;
//! then
//! 1. slot generation rate (`Schedule/[id]/$set-availability`),
//! 2. `Appointment/$find` latency (p50/p99) for one specialty and a one-day window,
//! 3. `Appointment/$book` under contention: C clients race through the same list of
//!    slots; every slot must end up booked exactly once.
//!
//! ```text
//! cargo run --release -p salus-api --example scheduling_bench -- 500 90 32
//! ```

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use salus_api::{router, ApiConfig, AppState};
use salus_service::scheduling::OpContext;
use salus_service::{FhirService, Limits};
use salus_store::sqlite::{SqliteOptions, SqliteStore};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceExt;

async fn call(app: &axum::Router, method: &str, uri: &str, body: Option<&Value>) -> (u16, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if body.is_some() {
        req = req.header("content-type", "application/fhir+json");
    }
    let req = req
        .body(body.map_or(Body::empty(), |b| {
            Body::from(serde_json::to_vec(b).unwrap())
        }))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)].as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let providers: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(500);
    let days: u32 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(90);
    let clients: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(32);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open_dir(dir.path(), SqliteOptions::default()).unwrap());
    let service = FhirService::new(store, Limits::default());
    let state = AppState::new(service.clone(), ApiConfig::default());
    let app = router(state.clone());

    // providers
    let t = Instant::now();
    let mut schedules = Vec::new();
    for i in 0..providers {
        let pr = service
            .create("Practitioner", json!({"resourceType": "Practitioner", "name": [{"family": format!("Doc{i}")}],
                "communication": [{"coding": [{"system": "urn:ietf:bcp:47", "code": if i % 2 == 0 { "de" } else { "en" }}]}]}), None)
            .await
            .unwrap()
            .record
            .id;
        let role = service
            .create("PractitionerRole", json!({"resourceType": "PractitionerRole",
                "practitioner": {"reference": format!("Practitioner/{pr}")},
                "specialty": [{"coding": [{"system": "http://snomed.info/sct", "code": format!("spec-{}", i % 10)}]}]}), None)
            .await
            .unwrap()
            .record
            .id;
        let sched = service
            .create(
                "Schedule",
                json!({"resourceType": "Schedule", "active": true,
                "actor": [{"reference": format!("PractitionerRole/{role}")}]}),
                None,
            )
            .await
            .unwrap()
            .record
            .id;
        schedules.push(sched);
    }
    println!(
        "{providers} providers created in {:.1}s",
        t.elapsed().as_secs_f64()
    );

    // 1. slot generation
    let rules = json!({
        "timeZone": "Europe/Berlin",
        "horizonDays": days,
        "visitTypes": [{"code": "video-30", "minutes": 30, "virtual": true}],
        "weekly": [{"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "12:00", "visitType": "video-30"}]
    });
    let t = Instant::now();
    let mut slots = 0;
    let ctx = OpContext::now("http://bench");
    for s in &schedules {
        let (r, _) = service
            .set_availability(&state.scheduling, s, &rules, &ctx)
            .await
            .unwrap();
        slots += r.created;
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "slot generation: {slots} slots for {providers} providers x {days} days in {secs:.1}s ({:.0} slots/s)",
        slots as f64 / secs
    );

    // 2. $find latency: one specialty (providers/10 schedules), one-day window
    let now = salus_scheduling::jiff::Timestamp::now();
    let mut lat = Vec::new();
    let mut found = 0usize;
    let n_find: usize = std::env::var("BENCH_FINDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let t = Instant::now();
    for i in 0..n_find {
        let day = now
            .checked_add(salus_scheduling::jiff::SignedDuration::from_hours(
                24 * (1 + (i as i64 * 7) % (days as i64 - 2)),
            ))
            .unwrap();
        let start = day.strftime("%Y-%m-%dT00:00:00Z").to_string();
        let end = day.strftime("%Y-%m-%dT23:59:59Z").to_string();
        let uri = format!(
            "/Appointment/$find?specialty=spec-{}&visit-type=video-30&start={start}&end={end}&_count=20",
            i % 10
        );
        let q = Instant::now();
        let (status, body) = call(&app, "GET", &uri, None).await;
        lat.push(q.elapsed());
        assert_eq!(status, 200, "{body}");
        found += body["entry"].as_array().map_or(0, |e| e.len());
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "$find (specialty = {} providers, 1-day window, _count=20): {n_find} queries, p50 {:.2} ms, p99 {:.2} ms, {:.0} q/s sequential, {:.1} slots/answer",
        providers / 10,
        pct(&mut lat, 0.50),
        pct(&mut lat, 0.99),
        n_find as f64 / secs,
        found as f64 / n_find as f64
    );

    // 3. $book under contention
    let (_, body) = call(
        &app,
        "GET",
        "/Appointment/$find?specialty=spec-3&_count=1000",
        None,
    )
    .await;
    let targets: Vec<String> = body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("Slot/{}", e["resource"]["id"].as_str().unwrap()))
        .collect();
    let mut patients = Vec::new();
    for i in 0..clients {
        let id = service
            .create(
                "Patient",
                json!({"resourceType": "Patient", "name": [{"family": format!("P{i}")}]}),
                None,
            )
            .await
            .unwrap()
            .record
            .id;
        patients.push(format!("Patient/{id}"));
    }
    let targets = Arc::new(targets);
    let t = Instant::now();
    let tasks: Vec<_> = patients
        .into_iter()
        .enumerate()
        .map(|(c, p)| {
            let (app, targets) = (app.clone(), targets.clone());
            tokio::spawn(async move {
                let (mut won, mut lost, mut lat) = (0usize, 0usize, Vec::new());
                // every client walks the same list from a nearby start: heavy overlap
                let n = targets.len();
                for k in 0..n {
                    let slot = &targets[(k + c % 4) % n];
                    let body = json!({"resourceType": "Parameters", "parameter": [
                        {"name": "slot", "valueReference": {"reference": slot}},
                        {"name": "patient", "valueReference": {"reference": p}}]});
                    let q = Instant::now();
                    let (status, b) = call(&app, "POST", "/Appointment/$book", Some(&body)).await;
                    lat.push(q.elapsed());
                    match status {
                        201 => won += 1,
                        409 => lost += 1,
                        other => panic!("{other}: {b}"),
                    }
                }
                (won, lost, lat)
            })
        })
        .collect();
    let (mut won, mut lost, mut lat) = (0, 0, Vec::new());
    for t in tasks {
        let (w, l, v) = t.await.unwrap();
        won += w;
        lost += l;
        lat.extend(v);
    }
    let secs = t.elapsed().as_secs_f64();
    let (_, count) = call(&app, "GET", "/Appointment?_summary=count", None).await;
    assert_eq!(won, targets.len(), "every slot booked exactly once");
    assert_eq!(count["total"].as_u64().unwrap() as usize, targets.len());
    println!(
        "$book, {clients} clients racing over {} slots: {} requests in {secs:.1}s = {:.0} req/s ({:.0} bookings/s, {lost} clean 409s), p50 {:.1} ms, p99 {:.1} ms; no slot double-booked",
        targets.len(),
        won + lost,
        (won + lost) as f64 / secs,
        won as f64 / secs,
        pct(&mut lat, 0.50),
        pct(&mut lat, 0.99)
    );
}
