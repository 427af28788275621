//! The leak-test matrix: every data path × every kind of caller. Patient A's token never
//! sees patient B's data, on any path; forbidden calls get 403 and missing or invalid
//! credentials 401, each with an OperationOutcome.
//!
//! Tokens here come from a fixed table (`StaticTokens`): this suite tests the access
//! decision and its enforcement on every path. Token verification (expiry, audience,
//! signature) is tested with real signed tokens in `crates/salus/tests/smart.rs`.

mod common;

use common::*;
use salus_api::{ApiConfig, AppState};
use salus_service::salus_access::{Principal, StaticTokens};
use salus_service::Limits;
use serde_json::{json, Value};
use std::sync::Arc;

/// Words that appear only in patient B's resources.
const B_MARKS: &[&str] = &["Zebediah", "B-SECRET", "b-encounter-secret"];
/// Words only in patient A's.
const A_MARKS: &[&str] = &["Abigail", "A-RESULT"];

fn tokens() -> StaticTokens {
    StaticTokens::new()
        .with(
            "tok-a",
            Principal::new("user-a", "launch/patient patient/*.cruds openid")
                .unwrap()
                .with_patient("pat-a"),
        )
        .with(
            "tok-b",
            Principal::new("user-b", "patient/*.rs")
                .unwrap()
                .with_patient("pat-b"),
        )
        .with(
            "tok-user",
            Principal::new("dr", "user/*.cruds")
                .unwrap()
                .with_fhir_user("Practitioner/dr1")
                .with_roles(&["clinician"]),
        )
        .with("tok-system", Principal::new("svc", "system/*.rs").unwrap())
        .with(
            "tok-admin",
            Principal::new("root", "user/*.cruds")
                .unwrap()
                .with_roles(&["admin"]),
        )
        .with(
            "tok-analyst",
            Principal::new("ann", "user/*.rs")
                .unwrap()
                .with_roles(&["analyst"]),
        )
        .with(
            "tok-lab",
            Principal::new("user-a", "patient/Observation.rs?category=laboratory")
                .unwrap()
                .with_patient("pat-a"),
        )
}

fn secured() -> App {
    app_wired(Limits::default(), ApiConfig::default(), |s: AppState| {
        s.with_auth(Arc::new(tokens()))
    })
}

fn auth(token: &str) -> String {
    format!("Bearer {token}")
}

async fn as_(
    app: &App,
    token: Option<&str>,
    method: &str,
    uri: &str,
    body: Option<&Value>,
) -> Resp {
    let h = token.map(auth);
    let headers: Vec<(&str, &str)> = match &h {
        Some(v) => vec![("authorization", v.as_str())],
        None => vec![],
    };
    app.req(method, uri, &headers, body).await
}

async fn seed(app: &App) {
    let sys = Some("tok-admin");
    let put = |rt: &str, id: &str, body: Value| {
        let uri = format!("/{rt}/{id}");
        async move {
            as_(app, sys, "PUT", &uri, Some(&body)).await.expect(201);
        }
    };
    put(
        "Practitioner",
        "dr1",
        json!({"resourceType": "Practitioner", "id": "dr1", "name": [{"family": "Doctor"}]}),
    )
    .await;
    put("Patient", "pat-a", json!({"resourceType": "Patient", "id": "pat-a", "name": [{"family": "Abigail"}], "generalPractitioner": [{"reference": "Practitioner/dr1"}]})).await;
    put(
        "Patient",
        "pat-b",
        json!({"resourceType": "Patient", "id": "pat-b", "name": [{"family": "Zebediah"}]}),
    )
    .await;
    let obs = |id: &str, pat: &str, value: &str, cat: &str| {
        json!({"resourceType": "Observation", "id": id, "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": cat}]}],
            "code": {"text": "test"}, "subject": {"reference": format!("Patient/{pat}")},
            "performer": [{"reference": "Practitioner/dr1"}], "valueString": value})
    };
    put(
        "Observation",
        "obs-a",
        obs("obs-a", "pat-a", "A-RESULT", "laboratory"),
    )
    .await;
    put(
        "Observation",
        "obs-a-vital",
        obs("obs-a-vital", "pat-a", "A-RESULT vital", "vital-signs"),
    )
    .await;
    put(
        "Observation",
        "obs-b",
        obs("obs-b", "pat-b", "B-SECRET", "laboratory"),
    )
    .await;
    put(
        "Encounter",
        "enc-b",
        json!({"resourceType": "Encounter", "id": "enc-b", "status": "finished",
        "class": {"code": "AMB"}, "subject": {"reference": "Patient/pat-b"},
        "reasonCode": [{"text": "b-encounter-secret"}]}),
    )
    .await;
    put(
        "Provenance",
        "prov-b",
        json!({"resourceType": "Provenance", "id": "prov-b",
        "target": [{"reference": "Observation/obs-b"}], "recorded": "2024-01-01T00:00:00Z",
        "agent": [{"who": {"reference": "Practitioner/dr1", "display": "Zebediah's doctor"}}]}),
    )
    .await;
    put(
        "Binary",
        "bin-b",
        json!({"resourceType": "Binary", "id": "bin-b", "contentType": "text/plain",
        "data": "WmViZWRpYWg="}),
    )
    .await;
}

/// The response without what merely echoes the request (a searchset's links).
fn data_of(r: &Resp) -> String {
    let mut v = r.json.clone();
    if let Some(o) = v.as_object_mut() {
        o.shift_remove("link");
    }
    if v.is_null() {
        r.text.clone()
    } else {
        v.to_string()
    }
}

#[track_caller]
fn no_b(r: &Resp, what: &str) {
    let data = data_of(r);
    for m in B_MARKS {
        assert!(
            !data.contains(m),
            "{what}: patient B's data ({m}) leaked to A: {}",
            r.text
        );
    }
}

fn ids(r: &Resp) -> Vec<String> {
    r.json["entry"]
        .as_array()
        .map(|es| {
            es.iter()
                .map(|e| {
                    format!(
                        "{}/{}",
                        e["resource"]["resourceType"].as_str().unwrap_or(""),
                        e["resource"]["id"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Every read path, as patient A: B's data never appears.
const READ_PATHS: &[&str] = &[
    "/Patient/pat-b",
    "/Observation/obs-b",
    "/Observation/obs-b/_history/1",
    "/Patient/pat-b/_history",
    "/Observation",
    "/Observation?_include=Observation:subject",
    "/Observation?_include=Observation:performer",
    "/Patient?_revinclude=Observation:subject",
    "/Observation?_revinclude=Provenance:target",
    "/Observation?subject.name=Zebediah",
    "/Observation?subject:Patient.name=Zebediah",
    "/Patient?_has:Observation:subject:value-string=B-SECRET",
    "/Patient?name=Zebediah",
    "/Encounter",
    "/Provenance",
    "/Observation/_history",
    "/_history",
    "/?_type=Patient,Observation,Encounter",
    "/Patient/pat-b/Observation",
    "/Patient/pat-b/Encounter",
    "/Binary/bin-b",
    "/Observation?_contained=true",
    "/AuditEvent",
];

#[tokio::test]
async fn patient_a_never_sees_patient_b_on_any_read_path() {
    let app = secured();
    seed(&app).await;
    for path in READ_PATHS {
        let r = as_(&app, Some("tok-a"), "GET", path, None).await;
        no_b(&r, path);
        assert!(
            matches!(r.status.as_u16(), 200 | 403),
            "{path}: status {} {}",
            r.status,
            r.text
        );
        if r.status.as_u16() == 403 {
            assert_outcome(&r.json);
        }
    }
    // and A does see A's own data
    let r = as_(&app, Some("tok-a"), "GET", "/Observation", None)
        .await
        .expect(200);
    let mut got = ids(&r);
    got.sort();
    assert_eq!(got, vec!["Observation/obs-a", "Observation/obs-a-vital"]);
    let r = as_(&app, Some("tok-a"), "GET", "/Patient/pat-a", None)
        .await
        .expect(200);
    assert!(r.text.contains("Abigail"));
    // included reference data (the practitioner) is readable; B's patient is not included
    let r = as_(
        &app,
        Some("tok-a"),
        "GET",
        "/Observation?_include=Observation:performer&_include=Observation:subject",
        None,
    )
    .await
    .expect(200);
    let got = ids(&r);
    assert!(got.contains(&"Practitioner/dr1".to_string()), "{got:?}");
    assert!(got.contains(&"Patient/pat-a".to_string()), "{got:?}");
    // forbidden reads say so
    for path in [
        "/Patient/pat-b",
        "/Observation/obs-b",
        "/Observation/obs-b/_history/1",
        "/Patient/pat-b/_history",
        "/Binary/bin-b",
        "/AuditEvent",
    ] {
        as_(&app, Some("tok-a"), "GET", path, None)
            .await
            .expect_outcome(403);
    }
    // B sees B's and only B's
    let r = as_(&app, Some("tok-b"), "GET", "/Observation", None)
        .await
        .expect(200);
    assert_eq!(ids(&r), vec!["Observation/obs-b"]);
    for m in A_MARKS {
        assert!(!r.text.contains(m));
    }
}

#[tokio::test]
async fn staff_and_system_tokens_see_everyone() {
    let app = secured();
    seed(&app).await;
    for tok in ["tok-user", "tok-system", "tok-admin"] {
        let r = as_(&app, Some(tok), "GET", "/Observation", None)
            .await
            .expect(200);
        assert_eq!(ids(&r).len(), 3, "{tok}: {}", r.text);
        as_(&app, Some(tok), "GET", "/Patient/pat-b", None)
            .await
            .expect(200);
        as_(&app, Some(tok), "GET", "/Binary/bin-b", None)
            .await
            .expect(200);
    }
    // a read-only system token cannot write
    as_(
        &app,
        Some("tok-system"),
        "POST",
        "/Patient",
        Some(&patient("urn:x", "1")),
    )
    .await
    .expect_outcome(403);
    // the audit trail is the admin's
    as_(&app, Some("tok-user"), "GET", "/AuditEvent", None)
        .await
        .expect_outcome(403);
    as_(&app, Some("tok-admin"), "GET", "/AuditEvent", None)
        .await
        .expect(200);
}

#[tokio::test]
async fn missing_and_invalid_credentials_get_401() {
    let app = secured();
    seed(&app).await;
    for path in READ_PATHS.iter().chain(["/Observation/obs-a"].iter()) {
        for token in [None, Some("expired-or-unknown"), Some("")] {
            let r = match token {
                Some(t) => {
                    let h = format!("Bearer {t}");
                    app.req("GET", path, &[("authorization", h.as_str())], None)
                        .await
                }
                None => app.req("GET", path, &[], None).await,
            };
            let r = r.expect_outcome(401);
            assert!(r
                .header("www-authenticate")
                .is_some_and(|h| h.starts_with("Bearer")));
            for m in B_MARKS.iter().chain(A_MARKS) {
                assert!(!r.text.contains(m));
            }
        }
    }
    // a malformed header
    app.req("GET", "/Patient", &[("authorization", "Basic abc")], None)
        .await
        .expect_outcome(401);
    // discovery stays public
    app.get("/metadata").await.expect(200);
}

#[tokio::test]
async fn writes_stay_inside_the_patients_compartment() {
    let app = secured();
    seed(&app).await;
    let a = Some("tok-a");
    let mine = json!({"resourceType": "Observation", "status": "final", "code": {"text": "self-reported"},
        "subject": {"reference": "Patient/pat-a"}, "valueString": "mine"});
    as_(&app, a, "POST", "/Observation", Some(&mine))
        .await
        .expect(201);
    // into B's compartment: refused, nothing stored
    let theirs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
        "subject": {"reference": "Patient/pat-b"}, "valueString": "planted"});
    as_(&app, a, "POST", "/Observation", Some(&theirs))
        .await
        .expect_outcome(403);
    let mut moved = theirs.clone();
    moved["id"] = json!("obs-a");
    as_(&app, a, "PUT", "/Observation/obs-a", Some(&moved))
        .await
        .expect_outcome(403);
    let mut over = theirs.clone();
    over["id"] = json!("obs-b");
    as_(&app, a, "PUT", "/Observation/obs-b", Some(&over))
        .await
        .expect_outcome(403);
    as_(&app, a, "DELETE", "/Observation/obs-b", None)
        .await
        .expect_outcome(403);
    let patch = json!([{"op": "replace", "path": "/valueString", "value": "changed"}]);
    let r = app
        .raw(
            "PATCH",
            "/Observation/obs-b",
            &[
                ("authorization", "Bearer tok-a"),
                ("content-type", "application/json-patch+json"),
            ],
            serde_json::to_vec(&patch).unwrap(),
        )
        .await;
    assert_eq!(r.status.as_u16(), 403, "{}", r.text);
    // conditional create matching B's data does not see it
    let cond = app
        .req(
            "POST",
            "/Observation",
            &[
                ("authorization", "Bearer tok-a"),
                ("if-none-exist", "value-string=B-SECRET"),
            ],
            Some(&theirs),
        )
        .await;
    assert_eq!(cond.status.as_u16(), 403, "{}", cond.text);
    no_b(&cond, "conditional create");
    // nothing of A's attempts reached B's data
    let r = as_(
        &app,
        Some("tok-admin"),
        "GET",
        "/Observation?subject=Patient/pat-b",
        None,
    )
    .await
    .expect(200);
    assert_eq!(ids(&r), vec!["Observation/obs-b"]);
    assert!(
        r.text.contains("B-SECRET") && !r.text.contains("planted") && !r.text.contains("changed")
    );
    // a read-only patient token cannot write at all
    as_(&app, Some("tok-b"), "POST", "/Observation", Some(&theirs))
        .await
        .expect_outcome(403);
    // the audit trail cannot be written by anyone
    let ae = json!({"resourceType": "AuditEvent", "type": {"code": "rest"}, "recorded": "2024-01-01T00:00:00Z",
        "agent": [{"requestor": true}], "source": {"observer": {"display": "x"}}});
    as_(&app, Some("tok-admin"), "POST", "/AuditEvent", Some(&ae))
        .await
        .expect_outcome(403);
}

#[tokio::test]
async fn batch_and_transaction_entries_are_checked_one_by_one() {
    let app = secured();
    seed(&app).await;
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Patient/pat-b"}},
        {"request": {"method": "GET", "url": "Patient/pat-a"}},
        {"request": {"method": "GET", "url": "Observation?subject=Patient/pat-b"}},
        {"request": {"method": "GET", "url": "Observation/obs-b/_history/1"}}
    ]});
    let r = as_(&app, Some("tok-a"), "POST", "/", Some(&batch))
        .await
        .expect(200);
    no_b(&r, "batch");
    let statuses: Vec<&str> = r.json["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap())
        .collect();
    assert!(statuses[0].starts_with("403"), "{statuses:?}");
    assert!(statuses[1].starts_with("200"), "{statuses:?}");
    assert!(statuses[3].starts_with("403"), "{statuses:?}");
    assert!(r.text.contains("Abigail"));
    // a transaction with one entry outside A's compartment fails as a whole
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:11111111-1111-1111-1111-111111111111",
         "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "ok"},
            "subject": {"reference": "Patient/pat-a"}, "valueString": "tx-mine"},
         "request": {"method": "POST", "url": "Observation"}},
        {"resource": {"resourceType": "Observation", "id": "obs-b", "status": "final", "code": {"text": "x"},
            "subject": {"reference": "Patient/pat-b"}, "valueString": "tx-overwrite"},
         "request": {"method": "PUT", "url": "Observation/obs-b"}}
    ]});
    let r = as_(&app, Some("tok-a"), "POST", "/", Some(&tx)).await;
    assert_eq!(r.status.as_u16(), 403, "{}", r.text);
    let all = as_(
        &app,
        Some("tok-admin"),
        "GET",
        "/Observation?value-string=tx-mine",
        None,
    )
    .await
    .expect(200);
    assert_eq!(
        ids(&all).len(),
        0,
        "a refused transaction must leave nothing behind"
    );
}

#[tokio::test]
async fn scope_parameters_narrow_what_is_seen() {
    let app = secured();
    seed(&app).await;
    let r = as_(&app, Some("tok-lab"), "GET", "/Observation", None)
        .await
        .expect(200);
    assert_eq!(ids(&r), vec!["Observation/obs-a"]);
    as_(
        &app,
        Some("tok-lab"),
        "GET",
        "/Observation/obs-a-vital",
        None,
    )
    .await
    .expect_outcome(403);
    as_(&app, Some("tok-lab"), "GET", "/Patient/pat-a", None)
        .await
        .expect_outcome(403);
}

#[tokio::test]
async fn operations_read_through_the_same_guard() {
    let app = secured();
    seed(&app).await;
    let view = json!({"resourceType": "Parameters", "parameter": [{"name": "viewResource", "resource":
        {"resourceType": "ViewDefinition", "status": "active", "resource": "Patient",
         "select": [{"column": [{"name": "id", "path": "getResourceKey()"}, {"name": "family", "path": "name.family.first()"}]}]}}]});
    let r = as_(
        &app,
        Some("tok-a"),
        "POST",
        "/ViewDefinition/$run?_format=ndjson",
        Some(&view),
    )
    .await
    .expect(200);
    no_b(&r, "ViewDefinition/$run");
    assert!(r.text.contains("Abigail"));
    // reindexing is for admins
    as_(&app, Some("tok-user"), "POST", "/$reindex", None)
        .await
        .expect_outcome(403);
}

#[tokio::test]
async fn a_denying_consent_blocks_that_actor_or_purpose() {
    let app = secured();
    seed(&app).await;
    let consent = |id: &str, patient: &str, provision: Value| {
        json!({"resourceType": "Consent", "id": id, "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": format!("Patient/{patient}")},
            "provision": provision})
    };
    // B denies Dr. 1
    let deny_dr = consent(
        "c1",
        "pat-b",
        json!({"type": "deny", "actor": [{
        "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "PRCP"}]},
        "reference": {"reference": "Practitioner/dr1"}}]}),
    );
    as_(
        &app,
        Some("tok-admin"),
        "PUT",
        "/Consent/c1",
        Some(&deny_dr),
    )
    .await
    .expect(201);
    as_(&app, Some("tok-user"), "GET", "/Patient/pat-b", None)
        .await
        .expect_outcome(403);
    let r = as_(&app, Some("tok-user"), "GET", "/Observation", None)
        .await
        .expect(200);
    no_b(&r, "consent-denied actor");
    assert_eq!(ids(&r).len(), 2);
    let r = as_(
        &app,
        Some("tok-user"),
        "GET",
        "/Observation?_include=Observation:subject&_revinclude=Provenance:target",
        None,
    )
    .await
    .expect(200);
    no_b(&r, "consent-denied actor, includes");
    // an admin (another actor) still sees B
    as_(&app, Some("tok-admin"), "GET", "/Patient/pat-b", None)
        .await
        .expect(200);
    // A denies research use: a caller declaring that purpose loses A's records
    let deny_research = consent(
        "c2",
        "pat-a",
        json!({"type": "deny", "purpose": [
        {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HRESCH"}]}),
    );
    as_(
        &app,
        Some("tok-admin"),
        "PUT",
        "/Consent/c2",
        Some(&deny_research),
    )
    .await
    .expect(201);
    let r = app
        .req(
            "GET",
            "/Observation",
            &[
                ("authorization", "Bearer tok-system"),
                (
                    "x-purpose-of-use",
                    "http://terminology.hl7.org/CodeSystem/v3-ActReason|HRESCH",
                ),
            ],
            None,
        )
        .await
        .expect(200);
    assert_eq!(ids(&r), vec!["Observation/obs-b"]);
    let r = as_(&app, Some("tok-system"), "GET", "/Observation", None)
        .await
        .expect(200);
    assert_eq!(ids(&r).len(), 3);
    // withdrawn consent: access returns
    let mut withdrawn = deny_dr.clone();
    withdrawn["status"] = json!("inactive");
    as_(
        &app,
        Some("tok-admin"),
        "PUT",
        "/Consent/c1",
        Some(&withdrawn),
    )
    .await
    .expect(200);
    as_(&app, Some("tok-user"), "GET", "/Patient/pat-b", None)
        .await
        .expect(200);
}

fn secured_bulk() -> App {
    bulk_app_wired(|_| {}, |s: AppState| s.with_auth(Arc::new(tokens())))
}

#[tokio::test]
async fn everything_and_bulk_export_stay_inside_the_grant() {
    let app = secured_bulk();
    seed(&app).await;
    // $everything: B's record is refused to A; A's own has no B data
    let r = as_(
        &app,
        Some("tok-a"),
        "GET",
        "/Patient/pat-b/$everything",
        None,
    )
    .await;
    assert!(matches!(r.status.as_u16(), 403 | 404), "{}", r.text);
    no_b(&r, "$everything of B");
    let r = as_(
        &app,
        Some("tok-a"),
        "GET",
        "/Patient/pat-a/$everything",
        None,
    )
    .await
    .expect(200);
    no_b(&r, "$everything of A");
    assert!(r.text.contains("Abigail") && r.text.contains("A-RESULT"));
    // $export as patient A: every file holds A's data only; others cannot fetch it
    for kick in ["/$export", "/Patient/$export"] {
        let r = app
            .req(
                "GET",
                kick,
                &[
                    ("authorization", "Bearer tok-a"),
                    ("prefer", "respond-async"),
                    ("accept", "application/fhir+json"),
                ],
                None,
            )
            .await
            .expect(202);
        let status_url = r.header("content-location").unwrap().to_string();
        let path = status_url
            .trim_start_matches("http://localhost")
            .to_string();
        let mut manifest = Value::Null;
        for _ in 0..200 {
            let s = as_(&app, Some("tok-a"), "GET", &path, None).await;
            if s.status.as_u16() == 200 {
                manifest = s.json;
                break;
            }
            assert_eq!(s.status.as_u16(), 202, "{}", s.text);
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        let outputs = manifest["output"]
            .as_array()
            .expect("manifest output")
            .clone();
        assert!(!outputs.is_empty(), "{manifest}");
        let mut all = String::new();
        for o in &outputs {
            let url = o["url"]
                .as_str()
                .unwrap()
                .trim_start_matches("http://localhost")
                .to_string();
            let f = as_(&app, Some("tok-a"), "GET", &url, None)
                .await
                .expect(200);
            all.push_str(&f.text);
            // another caller, or none, gets nothing
            let other = as_(&app, Some("tok-b"), "GET", &url, None).await;
            assert!(
                matches!(other.status.as_u16(), 403 | 404),
                "{kick}: B fetched A's export: {}",
                other.status
            );
            as_(&app, None, "GET", &url, None).await.expect(401);
        }
        for m in B_MARKS {
            assert!(
                !all.contains(m),
                "{kick}: export for A holds B's data ({m})"
            );
        }
        assert!(all.contains("A-RESULT"), "{kick}: {all}");
        // B cannot read A's job status either
        let s = as_(&app, Some("tok-b"), "GET", &path, None).await;
        assert!(matches!(s.status.as_u16(), 403 | 404));
    }
}

#[tokio::test]
async fn an_analyst_sees_data_only_de_identified() {
    let app = secured_bulk();
    seed(&app).await;
    as_(&app, Some("tok-analyst"), "GET", "/Patient", None)
        .await
        .expect_outcome(403);
    as_(&app, Some("tok-analyst"), "GET", "/Observation/obs-a", None)
        .await
        .expect_outcome(403);
    let r = app
        .req(
            "GET",
            "/$export?_type=Patient,Observation",
            &[
                ("authorization", "Bearer tok-analyst"),
                ("prefer", "respond-async"),
                ("accept", "application/fhir+json"),
            ],
            None,
        )
        .await
        .expect(202);
    let path = r
        .header("content-location")
        .unwrap()
        .trim_start_matches("http://localhost")
        .to_string();
    let mut manifest = Value::Null;
    for _ in 0..200 {
        let s = as_(&app, Some("tok-analyst"), "GET", &path, None).await;
        if s.status.as_u16() == 200 {
            manifest = s.json;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let mut all = String::new();
    for o in manifest["output"].as_array().expect("manifest output") {
        let url = o["url"]
            .as_str()
            .unwrap()
            .trim_start_matches("http://localhost")
            .to_string();
        all.push_str(
            &as_(&app, Some("tok-analyst"), "GET", &url, None)
                .await
                .expect(200)
                .text,
        );
    }
    assert!(
        all.contains("\"Observation\"") && all.contains("\"Patient\""),
        "{all}"
    );
    for name in ["Abigail", "Zebediah", "pat-a", "pat-b"] {
        assert!(
            !all.contains(name),
            "de-identified export holds '{name}': {all}"
        );
    }
}
