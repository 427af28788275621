//! The audit trail end to end: requests through a real socket leave AuditEvents in a
//! hash chain; `salus audit verify` passes on the untouched database and, after one
//! record is altered or deleted directly in the SQLite file, fails and names it.

use salus::config::Config;
use salus_service::salus_access::{Principal, StaticTokens};
use salus_service::AuditTrail;
use serde_json::{json, Value};
use std::process::Command;
use std::sync::Arc;

fn tokens() -> StaticTokens {
    StaticTokens::new()
        .with(
            "admin",
            Principal::new("root", "user/*.cruds")
                .unwrap()
                .with_roles(&["admin"]),
        )
        .with(
            "pat",
            Principal::new("p", "patient/*.rs")
                .unwrap()
                .with_patient("p1"),
        )
}

fn verify(dir: &std::path::Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_salus"))
        .args(["audit", "verify", "--quiet", "--data-dir"])
        .arg(dir)
        .output()
        .expect("run salus audit verify");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Serve on a free port, make the requests, flush the trail, stop.
async fn traffic(config: &Config) {
    let store = salus::serve::open_store(config).unwrap();
    let svc = salus::serve::service(config, store.clone());
    let trail = AuditTrail::start(svc.clone());
    let state = salus::serve::app_state(config, svc)
        .with_auth(Arc::new(tokens()))
        .with_audit(trail.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(salus::serve::run(state, listener, async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();
    let base = format!("http://{addr}");
    let put = http
        .put(format!("{base}/Patient/p1"))
        .bearer_auth("admin")
        .header("content-type", "application/fhir+json")
        .body(
            json!({"resourceType": "Patient", "id": "p1", "name": [{"family": "Audited"}]})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(put.status().as_u16(), 201);
    let read = http
        .get(format!("{base}/Patient/p1"))
        .bearer_auth("pat")
        .send()
        .await
        .unwrap();
    assert_eq!(read.status().as_u16(), 200);
    let denied = http
        .get(format!("{base}/Patient/other"))
        .bearer_auth("pat")
        .send()
        .await
        .unwrap();
    assert!(matches!(denied.status().as_u16(), 403 | 404));
    let anonymous = http.get(format!("{base}/Patient")).send().await.unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    trail.flush().await;
    // the admin finds the records, each naming who, what, outcome and address
    let found: Value = http
        .get(format!("{base}/AuditEvent?_count=50"))
        .bearer_auth("admin")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entries = found["entry"].as_array().expect("entries");
    assert_eq!(entries.len(), 4, "{found}");
    let text = found.to_string();
    assert!(
        text.contains("\"Patient/p1\""),
        "the record names the resource"
    );
    assert!(text.contains("127.0.0.1"), "the record names the address");
    assert!(
        text.contains("HTTP 401"),
        "failed authentication is recorded"
    );
    // the patient's own access is in their compartment
    let mine: Value = http
        .get(format!("{base}/AuditEvent?patient=Patient/p1"))
        .bearer_auth("admin")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!mine["entry"].as_array().unwrap().is_empty());
    trail.flush().await;
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    store.checkpoint().await.unwrap();
}

fn records(db: &rusqlite::Connection) -> Vec<(String, u64)> {
    let mut st = db
        .prepare("SELECT v.id, v.body FROM resources r JOIN resource_versions v ON v.seq = r.seq WHERE r.rtype = 'AuditEvent'")
        .unwrap();
    let mut out: Vec<(String, u64)> = st
        .query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })
        .unwrap()
        .map(|r| {
            let (id, body) = r.unwrap();
            let v: Value = serde_json::from_str(&body).unwrap();
            (id, salus_service::chain_fields(&v).expect("chained").0)
        })
        .collect();
    out.sort_by_key(|r| r.1);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_detects_an_edited_and_a_deleted_record() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    traffic(&config).await;
    let (ok, out) = verify(dir.path());
    assert!(ok, "untouched trail must verify: {out}");
    assert!(out.contains("intact"), "{out}");

    // alter one record's outcome in the database file
    let db = rusqlite::Connection::open(dir.path().join("salus.db")).unwrap();
    let recs = records(&db);
    assert!(recs.len() >= 5, "{recs:?}");
    let (victim, _) = recs[1].clone();
    let changed = db
        .execute(
            "UPDATE resource_versions SET body = replace(body, '\"outcome\":\"0\"', '\"outcome\":\"4\"') \
             WHERE rtype = 'AuditEvent' AND id = ?1",
            [&victim],
        )
        .unwrap();
    assert_eq!(changed, 1);
    let (ok, out) = verify(dir.path());
    assert!(!ok, "an altered record must fail verification: {out}");
    assert!(
        out.contains(&format!("AuditEvent/{victim}")),
        "names the record: {out}"
    );
    assert!(out.contains("altered"), "{out}");

    // delete another record outright
    let (gone, gone_seq) = recs[3].clone();
    db.execute(
        "DELETE FROM resource_versions WHERE rtype = 'AuditEvent' AND id = ?1",
        [&gone],
    )
    .unwrap();
    db.execute(
        "DELETE FROM resources WHERE rtype = 'AuditEvent' AND id = ?1",
        [&gone],
    )
    .unwrap();
    drop(db);
    let (ok, out) = verify(dir.path());
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("seq {gone_seq}..{gone_seq} are missing")),
        "names the gap: {out}"
    );
}
