//! Batch and transaction Bundles (R4 http.html#transaction): atomicity, `urn:uuid:`
//! and conditional reference resolution, processing order, `ifNoneExist`, `ifMatch`,
//! PATCH entries, and per-entry results of a batch.

mod common;

use base64::Engine;
use common::{app, app_with, patient, App};
use salus_api::ApiConfig;
use salus_service::Limits;
use serde_json::{json, Value};

fn bundle(kind: &str, entries: Vec<Value>) -> Value {
    json!({"resourceType": "Bundle", "type": kind, "entry": entries})
}

fn post(full_url: &str, resource: Value) -> Value {
    let rtype = resource["resourceType"].as_str().unwrap().to_string();
    json!({"fullUrl": full_url, "resource": resource, "request": {"method": "POST", "url": rtype}})
}

fn put(url: &str, resource: Value) -> Value {
    json!({"resource": resource, "request": {"method": "PUT", "url": url}})
}

fn req(method: &str, url: &str) -> Value {
    json!({"request": {"method": method, "url": url}})
}

fn observation(subject: &str) -> Value {
    json!({"resourceType": "Observation", "status": "final", "code": {"text": "t"},
           "subject": {"reference": subject}})
}

/// Everything stored so far, counted by system history.
async fn versions_stored(app: &App) -> u64 {
    app.get("/_history").await.expect(200).json["total"]
        .as_u64()
        .unwrap()
}

fn status(entry: &Value) -> u16 {
    entry["response"]["status"].as_str().unwrap()[..3]
        .parse()
        .unwrap()
}

/// `Type/id` from a response entry's `location` (`Type/id/_history/v`).
fn location_ref(entry: &Value) -> String {
    let loc = entry["response"]["location"].as_str().unwrap();
    let parts: Vec<&str> = loc.split('/').collect();
    let n = parts.len();
    assert_eq!(parts[n - 2], "_history", "{loc}");
    format!("{}/{}", parts[n - 4], parts[n - 3])
}

#[tokio::test]
async fn urn_uuid_references_are_rewritten() {
    let app = app();
    let b = bundle(
        "transaction",
        vec![
            post(
                "urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0",
                observation("urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"),
            ),
            post(
                "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
                patient("urn:mrn", "t1"),
            ),
            post(
                "urn:uuid:5a2b7f0e-8e1c-4b8e-9a55-0a4d2c0c1a11",
                json!({"resourceType": "Encounter", "status": "finished",
                       "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                       "subject": {"reference": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"},
                       "extension": [{"url": "http://example.org/obs",
                                      "valueReference": {"reference": "urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0"}}]}),
            ),
        ],
    );
    let r = app.post("/", &b).await.expect(200);
    assert_eq!(r.json["resourceType"], "Bundle");
    assert_eq!(r.json["type"], "transaction-response");
    let entries = r.json["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    for e in entries {
        assert_eq!(status(e), 201);
        assert_eq!(e["response"]["etag"], "W/\"1\"");
        assert!(e["response"]["lastModified"].is_string());
    }
    // Entries answer in request order.
    let obs_ref = location_ref(&entries[0]);
    let pat_ref = location_ref(&entries[1]);
    let enc_ref = location_ref(&entries[2]);
    assert!(obs_ref.starts_with("Observation/"));
    assert!(pat_ref.starts_with("Patient/"));
    assert!(enc_ref.starts_with("Encounter/"));
    let obs = app.get(&format!("/{obs_ref}")).await.expect(200);
    assert_eq!(obs.json["subject"]["reference"], pat_ref.as_str());
    let enc = app.get(&format!("/{enc_ref}")).await.expect(200);
    assert_eq!(enc.json["subject"]["reference"], pat_ref.as_str());
    assert_eq!(
        enc.json["extension"][0]["valueReference"]["reference"],
        obs_ref.as_str()
    );
    // The response carries the stored resources with the rewritten references.
    assert_eq!(
        entries[0]["resource"]["subject"]["reference"],
        pat_ref.as_str()
    );
    assert!(entries[0]["fullUrl"].as_str().unwrap().ends_with(&obs_ref));
}

#[tokio::test]
async fn unresolvable_urn_reference_fails_the_transaction() {
    let app = app();
    let b = bundle(
        "transaction",
        vec![
            post(
                "urn:uuid:aaaaaaaa-0000-0000-0000-000000000001",
                patient("urn:mrn", "x"),
            ),
            post(
                "urn:uuid:aaaaaaaa-0000-0000-0000-000000000002",
                observation("urn:uuid:aaaaaaaa-0000-0000-0000-0000000000ff"),
            ),
        ],
    );
    app.post("/", &b).await.expect_outcome(400);
    assert_eq!(versions_stored(&app).await, 0);
}

#[tokio::test]
async fn a_failing_last_entry_rolls_everything_back() {
    let app = app();
    let existing = app.create(&patient("urn:mrn", "keep")).await;
    let to_update = app.create(&patient("urn:mrn", "upd")).await;
    app.create(&patient("urn:dup", "d")).await;
    app.create(&patient("urn:dup", "d")).await;
    let before = versions_stored(&app).await;
    let mut updated = patient("urn:mrn", "upd");
    updated["id"] = json!(to_update);
    updated["gender"] = json!("male");
    let good = || {
        vec![
            post(
                "urn:uuid:11111111-0000-0000-0000-000000000001",
                patient("urn:mrn", "new1"),
            ),
            post(
                "urn:uuid:11111111-0000-0000-0000-000000000002",
                observation("urn:uuid:11111111-0000-0000-0000-000000000001"),
            ),
            req("DELETE", &format!("Patient/{existing}")),
            put(&format!("Patient/{to_update}"), updated.clone()),
        ]
    };
    // Last entry: an invalid resource.
    let mut entries = good();
    entries.push(post(
        "urn:uuid:11111111-0000-0000-0000-000000000003",
        json!({"resourceType": "Patient", "notAnElement": 1}),
    ));
    let r = app
        .post("/", &bundle("transaction", entries))
        .await
        .expect_outcome(400);
    assert!(
        r.text.contains("Bundle.entry[4]"),
        "the entry is named: {}",
        r.text
    );
    // Last entry: a conditional create matching two resources.
    let mut entries = good();
    let mut cc = post(
        "urn:uuid:11111111-0000-0000-0000-000000000004",
        patient("urn:dup", "d"),
    );
    cc["request"]["ifNoneExist"] = json!("identifier=urn:dup|d");
    entries.push(cc);
    app.post("/", &bundle("transaction", entries))
        .await
        .expect_outcome(412);
    // Last entry: an update with a stale ifMatch.
    let mut entries = good();
    let mut stale = put(&format!("Patient/{existing}"), {
        let mut p = patient("urn:mrn", "keep");
        p["id"] = json!(existing);
        p
    });
    stale["request"]["ifMatch"] = json!("W/\"9\"");
    // (a DELETE and a PUT of the same resource would be refused before running; use
    // another resource for the stale update)
    entries.remove(2);
    entries.push(stale);
    app.post("/", &bundle("transaction", entries))
        .await
        .expect_outcome(412);
    // Last entry: a GET of something that does not exist.
    let mut entries = good();
    entries.push(req("GET", "Patient/does-not-exist"));
    app.post("/", &bundle("transaction", entries))
        .await
        .expect_outcome(404);
    // Last entry: a PATCH of something that does not exist.
    let mut entries = good();
    entries.push(json!({"resource": [], "request": {"method": "PATCH", "url": "Patient/nope"}}));
    app.post("/", &bundle("transaction", entries))
        .await
        .expect_outcome(404);

    // Nothing of any of them was stored.
    assert_eq!(versions_stored(&app).await, before);
    app.get(&format!("/Patient/{existing}")).await.expect(200);
    let u = app.get(&format!("/Patient/{to_update}")).await.expect(200);
    assert_eq!(u.json["meta"]["versionId"], "1");
    assert_eq!(u.json["gender"], "female");
    assert_eq!(app.count("Observation").await, 0);
    let found = app
        .get("/Patient?identifier=urn:mrn|new1")
        .await
        .expect(200);
    assert!(found.json["entry"].as_array().unwrap().is_empty());

    // The same transaction without the bad entry commits every entry.
    let r = app
        .post("/", &bundle("transaction", good()))
        .await
        .expect(200);
    let statuses: Vec<u16> = r.json["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(status)
        .collect();
    assert_eq!(statuses, [201, 201, 204, 200]);
    assert_eq!(versions_stored(&app).await, before + 4);
    app.get(&format!("/Patient/{existing}")).await.expect(410);
}

#[tokio::test]
async fn conditional_references_are_resolved() {
    let app = app();
    let pid = app.create(&patient("http://hospital/mrn", "777")).await;
    app.create(&patient("urn:dup", "d")).await;
    app.create(&patient("urn:dup", "d")).await;
    let b = bundle(
        "transaction",
        vec![
            post(
                "urn:uuid:22222222-0000-0000-0000-000000000001",
                observation("Patient?identifier=http://hospital/mrn|777"),
            ),
            post(
                "urn:uuid:22222222-0000-0000-0000-000000000002",
                observation("Patient?identifier=http%3A%2F%2Fhospital%2Fmrn%7C777"),
            ),
        ],
    );
    let r = app.post("/", &b).await.expect(200);
    for e in r.json["entry"].as_array().unwrap() {
        let obs = app.get(&format!("/{}", location_ref(e))).await.expect(200);
        assert_eq!(obs.json["subject"]["reference"], format!("Patient/{pid}"));
    }
    let before = versions_stored(&app).await;
    // No match and several matches both fail the whole transaction.
    for bad in [
        "Patient?identifier=http://hospital/mrn|000",
        "Patient?identifier=urn:dup|d",
    ] {
        let b = bundle(
            "transaction",
            vec![
                post(
                    "urn:uuid:22222222-0000-0000-0000-000000000003",
                    patient("urn:mrn", "n"),
                ),
                post(
                    "urn:uuid:22222222-0000-0000-0000-000000000004",
                    observation(bad),
                ),
            ],
        );
        app.post("/", &b).await.expect_outcome(412);
    }
    // Criteria the server cannot evaluate are refused.
    let b = bundle(
        "transaction",
        vec![post(
            "urn:uuid:22222222-0000-0000-0000-000000000005",
            observation("Patient?nonsense=x"),
        )],
    );
    app.post("/", &b).await.expect_outcome(400);
    assert_eq!(versions_stored(&app).await, before);
}

#[tokio::test]
async fn processing_order_is_delete_post_put_get() {
    let app = app();
    let old = app.create(&patient("urn:order", "old")).await;
    let upd = app.create(&patient("urn:order", "upd")).await;
    let mut updated = patient("urn:order", "upd");
    updated["id"] = json!(upd);
    updated["gender"] = json!("male");
    // Written in the reverse of the processing order.
    let b = bundle(
        "transaction",
        vec![
            req(
                "GET",
                "Patient?identifier=urn:order|old,urn:order|upd,urn:order|new",
            ),
            req("GET", &format!("Patient/{upd}")),
            put(&format!("Patient/{upd}"), updated),
            post(
                "urn:uuid:33333333-0000-0000-0000-000000000001",
                patient("urn:order", "new"),
            ),
            req("DELETE", &format!("Patient/{old}")),
        ],
    );
    let r = app.post("/", &b).await.expect(200);
    let e = r.json["entry"].as_array().unwrap();
    let statuses: Vec<u16> = e.iter().map(status).collect();
    assert_eq!(statuses, [200, 200, 200, 201, 204]);
    // The search ran last: it sees the new and the updated patient, not the deleted one.
    let found = &e[0]["resource"];
    assert_eq!(found["type"], "searchset");
    let ids: Vec<&str> = found["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["resource"]["id"].as_str().unwrap())
        .collect();
    let new_id = location_ref(&e[3]).split('/').nth(1).unwrap().to_string();
    assert_eq!(ids.len(), 2, "{found}");
    assert!(ids.contains(&upd.as_str()) && ids.contains(&new_id.as_str()));
    // The read ran after the update.
    assert_eq!(e[1]["resource"]["gender"], "male");
    assert_eq!(e[1]["resource"]["meta"]["versionId"], "2");

    // DELETE runs before POST: a conditional create whose only match is deleted in the
    // same transaction creates a new resource.
    let gone = app.create(&patient("urn:order", "recreate")).await;
    let mut cc = post(
        "urn:uuid:33333333-0000-0000-0000-000000000002",
        patient("urn:order", "recreate"),
    );
    cc["request"]["ifNoneExist"] = json!("identifier=urn:order|recreate");
    let b = bundle(
        "transaction",
        vec![cc, req("DELETE", &format!("Patient/{gone}"))],
    );
    let r = app.post("/", &b).await.expect(200);
    let e = r.json["entry"].as_array().unwrap();
    assert_eq!(status(&e[0]), 201, "{}", r.text);
    assert_eq!(status(&e[1]), 204);
    assert_ne!(location_ref(&e[0]), format!("Patient/{gone}"));
    app.get(&format!("/Patient/{gone}")).await.expect(410);
    assert_eq!(
        app.get("/Patient?identifier=urn:order|recreate&_total=accurate")
            .await
            .json["total"],
        1
    );
    // … and before PUT: a conditional update whose only match is deleted creates.
    let gone = app.create(&patient("urn:order", "cu")).await;
    let b = bundle(
        "transaction",
        vec![
            put(
                "Patient?identifier=urn:order|cu",
                patient("urn:order", "cu"),
            ),
            req("DELETE", &format!("Patient/{gone}")),
        ],
    );
    let r = app.post("/", &b).await.expect(200);
    let e = r.json["entry"].as_array().unwrap();
    assert_eq!(status(&e[0]), 201, "{}", r.text);
    assert_ne!(location_ref(&e[0]), format!("Patient/{gone}"));
}

#[tokio::test]
async fn if_none_exist_inside_a_transaction() {
    let app = app();
    let existing = app.create(&patient("urn:ine", "1")).await;
    let mut cc = post(
        "urn:uuid:44444444-0000-0000-0000-000000000001",
        patient("urn:ine", "1"),
    );
    cc["request"]["ifNoneExist"] = json!("identifier=urn:ine|1");
    let mut fresh = post(
        "urn:uuid:44444444-0000-0000-0000-000000000002",
        patient("urn:ine", "2"),
    );
    fresh["request"]["ifNoneExist"] = json!("identifier=urn:ine|2");
    let b = bundle(
        "transaction",
        vec![
            cc,
            fresh,
            post(
                "urn:uuid:44444444-0000-0000-0000-000000000003",
                observation("urn:uuid:44444444-0000-0000-0000-000000000001"),
            ),
        ],
    );
    let before = versions_stored(&app).await;
    let r = app.post("/", &b).await.expect(200);
    let e = r.json["entry"].as_array().unwrap();
    assert_eq!(status(&e[0]), 200);
    assert_eq!(location_ref(&e[0]), format!("Patient/{existing}"));
    assert_eq!(e[0]["response"]["etag"], "W/\"1\"");
    assert_eq!(status(&e[1]), 201);
    // The reference to the matched entry points at the existing resource.
    let obs = app
        .get(&format!("/{}", location_ref(&e[2])))
        .await
        .expect(200);
    assert_eq!(
        obs.json["subject"]["reference"],
        format!("Patient/{existing}")
    );
    // The existing one was not written again.
    assert_eq!(versions_stored(&app).await, before + 2);
    assert_eq!(
        app.get(&format!("/Patient/{existing}")).await.json["meta"]["versionId"],
        "1"
    );
}

#[tokio::test]
async fn changing_one_resource_twice_is_refused() {
    let app = app();
    let id = app.create(&patient("urn:tw", "1")).await;
    let mut body = patient("urn:tw", "1");
    body["id"] = json!(id);
    let url = format!("Patient/{id}");
    let patch = json!({"resourceType": "Binary", "contentType": "application/json-patch+json",
        "data": base64::engine::general_purpose::STANDARD.encode(br#"[{"op":"replace","path":"/gender","value":"male"}]"#)});
    for pair in [
        vec![put(&url, body.clone()), put(&url, body.clone())],
        vec![put(&url, body.clone()), req("DELETE", &url)],
        vec![
            put(&url, body.clone()),
            json!({"resource": patch, "request": {"method": "PATCH", "url": url}}),
        ],
        vec![req("DELETE", &url), req("DELETE", &url)],
    ] {
        let r = app
            .post("/", &bundle("transaction", pair))
            .await
            .expect_outcome(400);
        assert!(r.text.contains("more than one entry"), "{}", r.text);
    }
    assert_eq!(
        app.get(&format!("/{url}")).await.expect(200).json["meta"]["versionId"],
        "1"
    );
}

#[tokio::test]
async fn if_match_on_delete_entries() {
    let app = app();
    let id = app.create(&patient("urn:dm", "1")).await;
    let mut stale = req("DELETE", &format!("Patient/{id}"));
    stale["request"]["ifMatch"] = json!("W/\"2\"");
    app.post("/", &bundle("transaction", vec![stale.clone()]))
        .await
        .expect_outcome(412);
    let r = app
        .post("/", &bundle("batch", vec![stale]))
        .await
        .expect(200);
    assert_eq!(status(&r.json["entry"][0]), 412);
    app.get(&format!("/Patient/{id}")).await.expect(200);
    let mut current = req("DELETE", &format!("Patient/{id}"));
    current["request"]["ifMatch"] = json!("W/\"1\"");
    let r = app
        .post("/", &bundle("transaction", vec![current]))
        .await
        .expect(200);
    assert_eq!(status(&r.json["entry"][0]), 204);
    app.get(&format!("/Patient/{id}")).await.expect(410);
}

#[tokio::test]
async fn patch_entry_with_binary_json_patch() {
    let app = app();
    let id = app.create(&patient("urn:pt", "1")).await;
    let url = format!("Patient/{id}");
    let ops = br#"[{"op":"replace","path":"/gender","value":"male"},{"op":"add","path":"/active","value":true}]"#;
    let binary = json!({"resourceType": "Binary", "contentType": "application/json-patch+json",
        "data": base64::engine::general_purpose::STANDARD.encode(ops)});
    let mut entry = json!({"fullUrl": format!("http://localhost/{url}"), "resource": binary,
        "request": {"method": "PATCH", "url": url}});
    entry["request"]["ifMatch"] = json!("W/\"1\"");
    let r = app
        .post("/", &bundle("transaction", vec![entry.clone()]))
        .await
        .expect(200);
    let e = &r.json["entry"][0];
    assert_eq!(status(e), 200);
    assert_eq!(e["response"]["etag"], "W/\"2\"");
    let cur = app.get(&format!("/{url}")).await.expect(200);
    assert_eq!(cur.json["gender"], "male");
    assert_eq!(cur.json["active"], true);
    let h = app.get(&format!("/{url}/_history")).await.json;
    assert_eq!(h["entry"][0]["request"]["method"], "PATCH");
    // The same entry again: ifMatch is stale now → 412.
    app.post("/", &bundle("transaction", vec![entry.clone()]))
        .await
        .expect_outcome(412);
    // Changing the id through a patch is refused.
    let bad = json!({"resourceType": "Binary", "contentType": "application/json-patch+json",
        "data": base64::engine::general_purpose::STANDARD.encode(br#"[{"op":"replace","path":"/id","value":"x"}]"#)});
    app.post(
        "/",
        &bundle(
            "transaction",
            vec![json!({"resource": bad, "request": {"method": "PATCH", "url": url}})],
        ),
    )
    .await
    .expect_outcome(400);
    // Not base64.
    let bad = json!({"resourceType": "Binary", "contentType": "application/json-patch+json", "data": "%%%"});
    app.post(
        "/",
        &bundle(
            "transaction",
            vec![json!({"resource": bad, "request": {"method": "PATCH", "url": url}})],
        ),
    )
    .await
    .expect_outcome(400);
    // In a batch too.
    let binary = json!({"resourceType": "Binary", "contentType": "application/json-patch+json",
        "data": base64::engine::general_purpose::STANDARD.encode(br#"[{"op":"replace","path":"/gender","value":"other"}]"#)});
    let r = app
        .post(
            "/",
            &bundle(
                "batch",
                vec![json!({"resource": binary, "request": {"method": "PATCH", "url": url}})],
            ),
        )
        .await
        .expect(200);
    assert_eq!(status(&r.json["entry"][0]), 200);
    assert_eq!(app.get(&format!("/{url}")).await.json["gender"], "other");
    assert_eq!(
        app.get(&format!("/{url}")).await.json["meta"]["versionId"],
        "3"
    );
}

#[tokio::test]
async fn conditional_update_and_delete_entries() {
    let app = app();
    let a = app.create(&patient("urn:cx", "a")).await;
    let gone = app.create(&patient("urn:cx", "gone")).await;
    let mut upd = patient("urn:cx", "a");
    upd["gender"] = json!("male");
    let b = bundle(
        "transaction",
        vec![
            put("Patient?identifier=urn:cx|a", upd),
            put("Patient?identifier=urn:cx|new", patient("urn:cx", "new")),
            req("DELETE", "Patient?identifier=urn:cx|gone"),
            req("DELETE", "Patient?identifier=urn:cx|never"),
        ],
    );
    let r = app.post("/", &b).await.expect(200);
    let e = r.json["entry"].as_array().unwrap();
    let statuses: Vec<u16> = e.iter().map(status).collect();
    assert_eq!(statuses, [200, 201, 204, 204]);
    assert_eq!(location_ref(&e[0]), format!("Patient/{a}"));
    assert_eq!(
        app.get(&format!("/Patient/{a}")).await.json["gender"],
        "male"
    );
    app.get(&format!("/Patient/{gone}")).await.expect(410);
}

#[tokio::test]
async fn prefer_minimal_in_a_transaction() {
    let app = app();
    let b = bundle(
        "transaction",
        vec![post(
            "urn:uuid:55555555-0000-0000-0000-000000000001",
            patient("urn:pm", "1"),
        )],
    );
    let r = app
        .req("POST", "/", &[("prefer", "return=minimal")], Some(&b))
        .await
        .expect(200);
    let e = &r.json["entry"][0];
    assert!(e.get("resource").is_none());
    assert_eq!(status(e), 201);
    assert!(e["response"]["location"].is_string());
}

#[tokio::test]
async fn batch_reports_each_entry() {
    let app = app();
    let existing = app.create(&patient("urn:b", "e")).await;
    let mut upd = patient("urn:b", "e");
    upd["id"] = json!(existing);
    upd["gender"] = json!("male");
    let mut client = patient("urn:b", "c");
    client["id"] = json!("client-b");
    let b = bundle(
        "batch",
        vec![
            post(
                "urn:uuid:66666666-0000-0000-0000-000000000001",
                patient("urn:b", "1"),
            ),
            post(
                "urn:uuid:66666666-0000-0000-0000-000000000002",
                json!({"resourceType": "Patient", "bad": 1}),
            ),
            req("GET", "Patient/does-not-exist"),
            put(&format!("Patient/{existing}"), upd),
            put("Patient/client-b", client),
            req("GET", &format!("Patient/{existing}")),
            req("DELETE", "Patient/client-b"),
            req("GET", "Patient?identifier=urn:b|1"),
            json!({"request": {"method": "GET", "url": "NotAType/1"}}),
            json!({"request": {"method": "TRACE", "url": "Patient"}}),
            json!({"resource": patient("urn:b", "x")}),
        ],
    );
    let r = app.post("/", &b).await.expect(200);
    assert_eq!(r.json["type"], "batch-response");
    let e = r.json["entry"].as_array().unwrap();
    let statuses: Vec<u16> = e.iter().map(status).collect();
    // Batch entries run in order, each on its own.
    assert_eq!(
        statuses,
        [201, 400, 404, 200, 201, 200, 204, 200, 400, 400, 400]
    );
    for i in [1, 2, 8, 9, 10] {
        common::assert_outcome(&e[i]["response"]["outcome"]);
    }
    assert_eq!(e[5]["resource"]["gender"], "male");
    assert_eq!(e[7]["resource"]["type"], "searchset");
    assert_eq!(e[7]["resource"]["entry"].as_array().unwrap().len(), 1);
    // The good entries were stored despite the bad ones.
    app.get(&format!("/{}", location_ref(&e[0])))
        .await
        .expect(200);
    app.get("/Patient/client-b").await.expect(410);
    assert_eq!(
        app.get(&format!("/Patient/{existing}")).await.json["meta"]["versionId"],
        "2"
    );
    // A failed entry of a batch does not roll back the others.
    assert_eq!(app.count("Patient").await, 2);
}

#[tokio::test]
async fn malformed_bundles() {
    let app = app();
    app.post("/", &patient("urn:x", "1"))
        .await
        .expect_outcome(400);
    app.post(
        "/",
        &json!({"resourceType": "Bundle", "type": "collection", "entry": []}),
    )
    .await
    .expect_outcome(400);
    app.post("/", &json!({"resourceType": "Bundle", "entry": []}))
        .await
        .expect_outcome(400);
    app.post(
        "/",
        &json!({"resourceType": "Bundle", "type": "transaction", "entry": {}}),
    )
    .await
    .expect_outcome(400);
    // Entries without request, unknown methods and types: all reported at once.
    let r = app
        .post(
            "/",
            &bundle(
                "transaction",
                vec![
                    json!({"resource": patient("urn:x", "1")}),
                    json!({"request": {"method": "TRACE", "url": "Patient"}}),
                    json!({"request": {"method": "GET", "url": "NotAType/1"}}),
                ],
            ),
        )
        .await
        .expect_outcome(400);
    assert!(r.json["issue"].as_array().unwrap().len() >= 3, "{}", r.text);
    // An empty transaction is fine.
    let r = app
        .post("/", &bundle("transaction", vec![]))
        .await
        .expect(200);
    assert_eq!(r.json["type"], "transaction-response");
    assert_eq!(versions_stored(&app).await, 0);
}

#[tokio::test]
async fn entry_limit() {
    let app = app_with(
        Limits {
            max_bundle_entries: 2,
            ..Limits::default()
        },
        ApiConfig::default(),
    );
    let entries: Vec<Value> = (0..3)
        .map(|i| {
            post(
                &format!("urn:uuid:77777777-0000-0000-0000-00000000000{i}"),
                patient("urn:l", &i.to_string()),
            )
        })
        .collect();
    app.post("/", &bundle("transaction", entries.clone()))
        .await
        .expect_outcome(400);
    app.post("/", &bundle("batch", entries))
        .await
        .expect_outcome(400);
    assert_eq!(versions_stored(&app).await, 0);
}

#[tokio::test]
async fn put_entries_with_full_urls_reads_and_outcomes() {
    let app = app();
    let mut p = patient("urn:pe", "1");
    p["id"] = json!("pe-1");
    let mut entry = put("Patient/pe-1", p);
    entry["fullUrl"] = json!("urn:uuid:88888888-0000-0000-0000-000000000001");
    let b = bundle(
        "transaction",
        vec![
            post(
                "urn:uuid:88888888-0000-0000-0000-000000000002",
                observation("urn:uuid:88888888-0000-0000-0000-000000000001"),
            ),
            entry,
        ],
    );
    let r = app
        .req(
            "POST",
            "/",
            &[("prefer", "return=OperationOutcome")],
            Some(&b),
        )
        .await
        .expect(200);
    let e = r.json["entry"].as_array().unwrap();
    assert_eq!(status(&e[1]), 201);
    for x in e {
        common::assert_outcome(&x["response"]["outcome"]);
        assert!(x.get("resource").is_none());
    }
    let obs = app
        .get(&format!("/{}", location_ref(&e[0])))
        .await
        .expect(200);
    assert_eq!(obs.json["subject"]["reference"], "Patient/pe-1");
    // Reads inside a transaction: read, vread, and a missing version.
    let b = bundle(
        "transaction",
        vec![
            req("GET", "Patient/pe-1/_history/1"),
            req("GET", "Patient/pe-1"),
        ],
    );
    let r = app.post("/", &b).await.expect(200);
    assert_eq!(r.json["entry"][0]["resource"]["meta"]["versionId"], "1");
    assert_eq!(r.json["entry"][1]["resource"]["id"], "pe-1");
    app.post(
        "/",
        &bundle("transaction", vec![req("GET", "Patient/pe-1/_history/9")]),
    )
    .await
    .expect_outcome(404);
    // An entry whose resource type differs from its URL.
    let before = versions_stored(&app).await;
    app.post(
        "/",
        &bundle(
            "transaction",
            vec![json!({"resource": patient("urn:pe", "2"), "request": {"method": "POST", "url": "Observation"}})],
        ),
    )
    .await
    .expect_outcome(400);
    // An entry id that differs from its URL id.
    let mut other = patient("urn:pe", "3");
    other["id"] = json!("pe-3");
    app.post(
        "/",
        &bundle("transaction", vec![put("Patient/pe-4", other)]),
    )
    .await
    .expect_outcome(400);
    assert_eq!(versions_stored(&app).await, before);
}
