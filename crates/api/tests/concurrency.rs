//! Optimistic locking under contention: no update is lost.

mod common;

use common::{app, patient};
use serde_json::json;
use std::sync::Arc;

const TASKS: usize = 32;
const UPDATES_PER_TASK: usize = 5;

/// 32 tasks each read the resource and PUT it back with `If-Match`, retrying on 412,
/// until each has made its updates. Every successful update must produce exactly one
/// version: the final versionId is 1 + the number of successful updates.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn if_match_loses_no_update() {
    let app = Arc::new(app());
    app.put(
        "/Patient/contended",
        &json!({"resourceType": "Patient", "id": "contended"}),
    )
    .await
    .expect(201);

    let mut handles = vec![];
    for task in 0..TASKS {
        let app = app.clone();
        handles.push(tokio::spawn(async move {
            let (mut done, mut conflicts) = (0usize, 0usize);
            while done < UPDATES_PER_TASK {
                let cur = app.get("/Patient/contended").await.expect(200);
                let etag = cur.header("etag").expect("ETag").to_string();
                let mut next = cur.json.clone();
                // Each successful update appends a marker: a lost update would drop one.
                let mut markers = next["identifier"].as_array().cloned().unwrap_or_default();
                markers.push(json!({"system": "urn:task", "value": format!("{task}-{done}")}));
                next["identifier"] = json!(markers);
                let r = app
                    .req(
                        "PUT",
                        "/Patient/contended",
                        &[("if-match", etag.as_str())],
                        Some(&next),
                    )
                    .await;
                match r.status.as_u16() {
                    200 => done += 1,
                    412 => conflicts += 1,
                    other => panic!("task {task}: unexpected {other}: {}", r.text),
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for h in handles {
        conflicts += h.await.expect("task");
    }
    let total = TASKS * UPDATES_PER_TASK;
    let fin = app.get("/Patient/contended").await.expect(200);
    println!("{total} updates by {TASKS} tasks, {conflicts} retried after 412");
    assert_eq!(fin.json["meta"]["versionId"], (1 + total).to_string());
    assert_eq!(
        fin.header("etag"),
        Some(format!("W/\"{}\"", 1 + total).as_str())
    );
    let markers = fin.json["identifier"].as_array().expect("identifiers");
    assert_eq!(markers.len(), total, "every update's change survives");
    let mut values: Vec<&str> = markers
        .iter()
        .map(|m| m["value"].as_str().unwrap())
        .collect();
    values.sort();
    values.dedup();
    assert_eq!(values.len(), total);
    let h = app
        .get(&format!(
            "/Patient/contended/_history?_count={}",
            total + 10
        ))
        .await
        .expect(200);
    assert_eq!(h.json["total"], 1 + total);
}

/// Writes without `If-Match` racing on one resource all succeed (the service retries
/// internal conflicts) and each produces one version.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blind_updates_all_land() {
    let app = Arc::new(app());
    let mut handles = vec![];
    for task in 0..16 {
        let app = app.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..4 {
                let mut p = patient("urn:blind", &format!("{task}-{i}"));
                p["id"] = json!("blind");
                let r = app.put("/Patient/blind", &p).await;
                assert!(
                    r.status == 200 || r.status == 201,
                    "task {task}: {} {}",
                    r.status,
                    r.text
                );
            }
        }));
    }
    for h in handles {
        h.await.expect("task");
    }
    let fin = app.get("/Patient/blind").await.expect(200);
    assert_eq!(fin.json["meta"]["versionId"], "64");
}

/// Concurrent conditional creates with the same criteria create exactly one resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_conditional_creates_make_one_resource() {
    let app = Arc::new(app());
    let mut handles = vec![];
    for _ in 0..16 {
        let app = app.clone();
        handles.push(tokio::spawn(async move {
            let r = app
                .req(
                    "POST",
                    "/Patient",
                    &[("if-none-exist", "identifier=urn:once|1")],
                    Some(&patient("urn:once", "1")),
                )
                .await;
            assert!(
                r.status == 200 || r.status == 201,
                "{} {}",
                r.status,
                r.text
            );
            r.json["id"].as_str().unwrap().to_string()
        }));
    }
    let mut ids = vec![];
    for h in handles {
        ids.push(h.await.expect("task"));
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 1, "one resource: {ids:?}");
    assert_eq!(app.count("Patient").await, 1);
}
