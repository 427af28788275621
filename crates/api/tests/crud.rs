//! Single-resource interactions (R4 http.html): create, read, vread, update, patch,
//! delete, `If-Match`, `Prefer`, `$validate`, the service endpoints and their failures.

mod common;

use axum::body::Body;
use common::{app, app_with, location_parts, patient};
use salus_api::ApiConfig;
use salus_service::Limits;
use serde_json::{json, Value};

/// `Last-Modified` is an RFC 7231 IMF-fixdate.
fn is_http_date(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() == 29 && s.ends_with(" GMT") && b[3] == b',' && b[4] == b' '
}

#[tokio::test]
async fn create_assigns_id_version_and_headers() {
    let app = app();
    let mut body = patient("urn:mrn", "c1");
    // A client id in a create is ignored: the server assigns one.
    body["id"] = json!("client-chosen");
    let r = app.post("/Patient", &body).await.expect(201);
    let id = r.json["id"].as_str().expect("id").to_string();
    assert_ne!(id, "client-chosen");
    assert_eq!(r.json["meta"]["versionId"], "1");
    assert!(r.json["meta"]["lastUpdated"].is_string());
    assert_eq!(r.json["name"], body["name"]);
    assert_eq!(r.header("etag"), Some("W/\"1\""));
    let lm = r.header("last-modified").expect("Last-Modified");
    assert!(is_http_date(lm), "{lm}");
    let loc = r.header("location").expect("Location").to_string();
    assert_eq!(
        location_parts(&loc),
        ("Patient".into(), id.clone(), "1".into())
    );
    assert!(loc.starts_with("http://"), "absolute Location: {loc}");
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/fhir+json"));

    // Read it back: same content, same headers.
    let g = app.get(&format!("/Patient/{id}")).await.expect(200);
    assert_eq!(g.json, r.json);
    assert_eq!(g.header("etag"), Some("W/\"1\""));
    assert_eq!(g.header("last-modified"), Some(lm));
    assert!(app.get("/Patient/client-chosen").await.status == 404);
}

#[tokio::test]
async fn create_uses_the_configured_base_url() {
    let app = app_with(
        Limits::default(),
        ApiConfig {
            base_url: Some("https://fhir.example.org/r4/".into()),
            ..ApiConfig::default()
        },
    );
    let r = app
        .post("/Patient", &patient("urn:mrn", "b"))
        .await
        .expect(201);
    let id = r.json["id"].as_str().unwrap();
    assert_eq!(
        r.header("location"),
        Some(format!("https://fhir.example.org/r4/Patient/{id}/_history/1").as_str())
    );
}

#[tokio::test]
async fn create_with_host_header_builds_location_from_it() {
    let app = app();
    let r = app
        .req(
            "POST",
            "/Patient",
            &[("host", "salus.test:8080")],
            Some(&patient("urn:mrn", "h")),
        )
        .await
        .expect(201);
    assert!(r
        .header("location")
        .unwrap()
        .starts_with("http://salus.test:8080/Patient/"));
}

#[tokio::test]
async fn read_missing_is_404_with_outcome() {
    let app = app();
    let r = app.get("/Patient/nope").await.expect_outcome(404);
    assert_eq!(r.json["issue"][0]["code"], "not-found");
    app.get("/Patient/nope/_history/1")
        .await
        .expect_outcome(404);
}

#[tokio::test]
async fn update_increments_version_and_vread_keeps_old_versions() {
    let app = app();
    let id = app.create(&patient("urn:mrn", "u1")).await;
    let mut body = app.get(&format!("/Patient/{id}")).await.json;
    body["gender"] = json!("male");
    let r = app.put(&format!("/Patient/{id}"), &body).await.expect(200);
    assert_eq!(r.json["meta"]["versionId"], "2");
    assert_eq!(r.json["gender"], "male");
    assert_eq!(r.header("etag"), Some("W/\"2\""));
    let (_, lid, v) = location_parts(r.header("location").unwrap());
    assert_eq!((lid.as_str(), v.as_str()), (id.as_str(), "2"));
    let first = &body["meta"]["lastUpdated"];
    assert!(
        r.json["meta"]["lastUpdated"].as_str() > first.as_str(),
        "lastUpdated must advance"
    );

    body["gender"] = json!("other");
    let r3 = app.put(&format!("/Patient/{id}"), &body).await.expect(200);
    assert_eq!(r3.json["meta"]["versionId"], "3");

    let v1 = app
        .get(&format!("/Patient/{id}/_history/1"))
        .await
        .expect(200);
    assert_eq!(v1.json["gender"], "female");
    assert_eq!(v1.json["meta"]["versionId"], "1");
    assert_eq!(v1.header("etag"), Some("W/\"1\""));
    let v2 = app
        .get(&format!("/Patient/{id}/_history/2"))
        .await
        .expect(200);
    assert_eq!(v2.json["gender"], "male");
    app.get(&format!("/Patient/{id}/_history/4"))
        .await
        .expect_outcome(404);
    app.get(&format!("/Patient/{id}/_history/abc"))
        .await
        .expect_outcome(404);
    let cur = app.get(&format!("/Patient/{id}")).await.expect(200);
    assert_eq!(cur.json["gender"], "other");
}

#[tokio::test]
async fn put_with_new_client_id_creates() {
    let app = app();
    let mut body = patient("urn:mrn", "p1");
    body["id"] = json!("client-id-1");
    let r = app.put("/Patient/client-id-1", &body).await.expect(201);
    assert_eq!(r.json["id"], "client-id-1");
    assert_eq!(r.json["meta"]["versionId"], "1");
    assert_eq!(r.header("etag"), Some("W/\"1\""));
    assert!(r
        .header("location")
        .unwrap()
        .ends_with("/Patient/client-id-1/_history/1"));
    // The second PUT updates.
    app.put("/Patient/client-id-1", &body).await.expect(200);
}

#[tokio::test]
async fn update_failures() {
    let app = app();
    let mut body = patient("urn:mrn", "f");
    body["id"] = json!("a");
    // URL id and body id differ.
    app.put("/Patient/b", &body).await.expect_outcome(400);
    // No id in the body.
    app.put("/Patient/a", &patient("urn:mrn", "f"))
        .await
        .expect_outcome(400);
    // resourceType differs from the URL.
    let mut obs = body.clone();
    obs["resourceType"] = json!("Observation");
    app.put("/Patient/a", &obs).await.expect_outcome(400);
    // Invalid id.
    let mut bad = body.clone();
    bad["id"] = json!("a_b");
    app.put("/Patient/a_b", &bad).await.expect_outcome(400);
    // An invalid resource (unknown element).
    let mut invalid = body.clone();
    invalid["notAnElement"] = json!(1);
    let r = app.put("/Patient/a", &invalid).await.expect_outcome(400);
    assert!(r.text.contains("notAnElement"), "{}", r.text);
    // Nothing of it was stored.
    app.get("/Patient/a").await.expect(404);
    app.get("/Patient/b").await.expect(404);
}

#[tokio::test]
async fn delete_then_read_is_gone_and_history_is_kept() {
    let app = app();
    let id = app.create(&patient("urn:mrn", "d1")).await;
    let r = app.delete(&format!("/Patient/{id}")).await.expect(204);
    assert!(r.text.is_empty());
    let g = app.get(&format!("/Patient/{id}")).await.expect_outcome(410);
    assert_eq!(g.json["issue"][0]["code"], "deleted");
    // The old version is still readable, the deletion version is gone.
    app.get(&format!("/Patient/{id}/_history/1"))
        .await
        .expect(200);
    app.get(&format!("/Patient/{id}/_history/2"))
        .await
        .expect_outcome(410);
    let h = app
        .get(&format!("/Patient/{id}/_history"))
        .await
        .expect(200);
    assert_eq!(h.json["total"], 2);
    assert_eq!(h.json["entry"][0]["request"]["method"], "DELETE");
    assert!(h.json["entry"][0].get("resource").is_none());
    assert_eq!(h.json["entry"][1]["request"]["method"], "POST");
    // Deleting again, or deleting something that never existed, is fine.
    app.delete(&format!("/Patient/{id}")).await.expect(204);
    app.delete("/Patient/never-was").await.expect(204);
    // Not counted by search.
    assert_eq!(app.count("Patient").await, 0);
    // A PUT brings it back as a new version (created again).
    let mut body = patient("urn:mrn", "d1");
    body["id"] = json!(id);
    let r = app.put(&format!("/Patient/{id}"), &body).await.expect(201);
    assert_eq!(r.json["meta"]["versionId"], "3");
    assert_eq!(app.count("Patient").await, 1);
}

#[tokio::test]
async fn delete_unknown_type_is_404() {
    let app = app();
    app.delete("/NotAType/1").await.expect_outcome(404);
}

#[tokio::test]
async fn if_match_guards_updates() {
    let app = app();
    let id = app.create(&patient("urn:mrn", "m1")).await;
    let url = format!("/Patient/{id}");
    let body = app.get(&url).await.json;
    // Correct version → 200.
    app.req("PUT", &url, &[("if-match", "W/\"1\"")], Some(&body))
        .await
        .expect(200);
    // Stale version → 412, nothing written.
    let r = app
        .req("PUT", &url, &[("if-match", "W/\"1\"")], Some(&body))
        .await
        .expect_outcome(412);
    assert_eq!(r.json["issue"][0]["code"], "conflict");
    assert_eq!(app.get(&url).await.json["meta"]["versionId"], "2");
    // Strong ETag form also accepted.
    app.req("PUT", &url, &[("if-match", "\"2\"")], Some(&body))
        .await
        .expect(200);
    // Malformed → 400.
    app.req("PUT", &url, &[("if-match", "yesterday")], Some(&body))
        .await
        .expect_outcome(400);
    // If-Match on a resource that does not exist → 412.
    let mut other = patient("urn:mrn", "m2");
    other["id"] = json!("m2");
    app.req(
        "PUT",
        "/Patient/m2",
        &[("if-match", "W/\"1\"")],
        Some(&other),
    )
    .await
    .expect_outcome(412);
    app.get("/Patient/m2").await.expect(404);
}

#[tokio::test]
async fn if_match_guards_deletes() {
    let app = app();
    let id = app.create(&patient("urn:mrn", "dm")).await;
    let url = format!("/Patient/{id}");
    let body = app.get(&url).await.json;
    app.put(&url, &body).await.expect(200);
    // Stale → 412, still there.
    app.req("DELETE", &url, &[("if-match", "W/\"1\"")], None)
        .await
        .expect_outcome(412);
    app.get(&url).await.expect(200);
    // Current → deleted.
    app.req("DELETE", &url, &[("if-match", "W/\"2\"")], None)
        .await
        .expect(204);
    app.get(&url).await.expect(410);
    // Nothing left to match.
    app.req("DELETE", &url, &[("if-match", "W/\"2\"")], None)
        .await
        .expect_outcome(412);
    app.req("DELETE", &url, &[("if-match", "soon")], None)
        .await
        .expect_outcome(400);
}

#[tokio::test]
async fn if_none_match_on_read_gives_304() {
    let app = app();
    let id = app.create(&patient("urn:mrn", "n")).await;
    let url = format!("/Patient/{id}");
    let r = app
        .req("GET", &url, &[("if-none-match", "W/\"1\"")], None)
        .await;
    assert_eq!(r.status, 304);
    assert!(r.text.is_empty());
    app.req("GET", &url, &[("if-none-match", "W/\"7\"")], None)
        .await
        .expect(200);
}

async fn patch(app: &common::App, url: &str, headers: &[(&str, &str)], ops: Value) -> common::Resp {
    let mut h = vec![("content-type", "application/json-patch+json")];
    h.extend_from_slice(headers);
    app.raw("PATCH", url, &h, serde_json::to_vec(&ops).unwrap())
        .await
}

#[tokio::test]
async fn json_patch() {
    let app = app();
    let id = app.create(&patient("urn:mrn", "jp")).await;
    let url = format!("/Patient/{id}");
    let r = patch(
        &app,
        &url,
        &[],
        json!([
            {"op": "replace", "path": "/gender", "value": "male"},
            {"op": "add", "path": "/birthDate", "value": "1970-01-02"}
        ]),
    )
    .await
    .expect(200);
    assert_eq!(r.json["gender"], "male");
    assert_eq!(r.json["birthDate"], "1970-01-02");
    assert_eq!(r.json["meta"]["versionId"], "2");
    assert_eq!(r.header("etag"), Some("W/\"2\""));
    let h = app.get(&format!("{url}/_history")).await.expect(200);
    assert_eq!(h.json["entry"][0]["request"]["method"], "PATCH");

    // Changing the id → 400, nothing written.
    patch(
        &app,
        &url,
        &[],
        json!([{"op": "replace", "path": "/id", "value": "other"}]),
    )
    .await
    .expect_outcome(400);
    // Changing resourceType → 400.
    patch(
        &app,
        &url,
        &[],
        json!([{"op": "replace", "path": "/resourceType", "value": "Group"}]),
    )
    .await
    .expect_outcome(400);
    // A patch making the resource invalid → 400.
    patch(
        &app,
        &url,
        &[],
        json!([{"op": "add", "path": "/notAnElement", "value": true}]),
    )
    .await
    .expect_outcome(400);
    // A failing `test` op → 400 (nothing applied).
    patch(
        &app,
        &url,
        &[],
        json!([
            {"op": "replace", "path": "/gender", "value": "other"},
            {"op": "test", "path": "/gender", "value": "female"}
        ]),
    )
    .await
    .expect_outcome(400);
    // Not a JSON Patch document.
    patch(&app, &url, &[], json!({"op": "replace"}))
        .await
        .expect_outcome(400);
    // Stale If-Match → 412; current If-Match → 200.
    patch(
        &app,
        &url,
        &[("if-match", "W/\"1\"")],
        json!([{"op": "replace", "path": "/gender", "value": "other"}]),
    )
    .await
    .expect_outcome(412);
    let cur = app.get(&url).await.expect(200);
    assert_eq!(cur.json["meta"]["versionId"], "2");
    assert_eq!(cur.json["gender"], "male");
    patch(
        &app,
        &url,
        &[("if-match", "W/\"2\"")],
        json!([{"op": "replace", "path": "/gender", "value": "other"}]),
    )
    .await
    .expect(200);
    // FHIR JSON is not a patch format.
    app.raw(
        "PATCH",
        &url,
        &[("content-type", "application/fhir+json")],
        serde_json::to_vec(&json!([])).unwrap(),
    )
    .await
    .expect_outcome(415);
    // Missing / deleted resources.
    patch(&app, "/Patient/none", &[], json!([]))
        .await
        .expect_outcome(404);
    app.delete(&url).await.expect(204);
    patch(
        &app,
        &url,
        &[],
        json!([{"op": "replace", "path": "/gender", "value": "male"}]),
    )
    .await
    .expect_outcome(410);
}

#[tokio::test]
async fn prefer_return() {
    let app = app();
    let body = patient("urn:mrn", "pr");
    let r = app
        .req(
            "POST",
            "/Patient",
            &[("prefer", "return=minimal")],
            Some(&body),
        )
        .await
        .expect(201);
    assert!(r.text.is_empty(), "minimal: {}", r.text);
    assert_eq!(r.header("etag"), Some("W/\"1\""));
    let (_, id, _) = location_parts(r.header("location").expect("Location"));
    app.get(&format!("/Patient/{id}")).await.expect(200);

    let r = app
        .req(
            "POST",
            "/Patient",
            &[("prefer", "return=OperationOutcome")],
            Some(&body),
        )
        .await
        .expect(201);
    assert_eq!(r.json["resourceType"], "OperationOutcome");
    assert!(r.header("location").is_some());

    let r = app
        .req(
            "POST",
            "/Patient",
            &[("prefer", "return=representation")],
            Some(&body),
        )
        .await
        .expect(201);
    assert_eq!(r.json["resourceType"], "Patient");

    // Updates honour it too.
    let mut upd = app.get(&format!("/Patient/{id}")).await.json;
    upd["gender"] = json!("male");
    let r = app
        .req(
            "PUT",
            &format!("/Patient/{id}"),
            &[("prefer", "return=minimal")],
            Some(&upd),
        )
        .await
        .expect(200);
    assert!(r.text.is_empty());
    assert_eq!(r.header("etag"), Some("W/\"2\""));
    // Delete with return=OperationOutcome.
    let r = app
        .req(
            "DELETE",
            &format!("/Patient/{id}"),
            &[("prefer", "return=OperationOutcome")],
            None,
        )
        .await
        .expect(200);
    assert_eq!(r.json["resourceType"], "OperationOutcome");
}

#[tokio::test]
async fn invalid_bodies() {
    let app = app();
    // Not JSON.
    let r = app
        .raw(
            "POST",
            "/Patient",
            &[("content-type", "application/fhir+json")],
            "{\"resourceType\": \"Patient\",",
        )
        .await
        .expect_outcome(400);
    assert_eq!(r.json["issue"][0]["code"], "structure");
    // Empty.
    app.raw(
        "POST",
        "/Patient",
        &[("content-type", "application/fhir+json")],
        Body::empty(),
    )
    .await
    .expect_outcome(400);
    // JSON but not an object.
    app.post("/Patient", &json!([1, 2]))
        .await
        .expect_outcome(400);
    // Type mismatch.
    app.post("/Observation", &patient("urn:mrn", "x"))
        .await
        .expect_outcome(400);
    // Invalid resource: every problem listed.
    let r = app
        .post(
            "/Patient",
            &json!({"resourceType": "Patient", "gender": 12, "birthDate": "not-a-date"}),
        )
        .await
        .expect_outcome(400);
    let issues = r.json["issue"].as_array().unwrap();
    assert!(issues.len() >= 2, "both problems reported: {}", r.text);
    assert_eq!(app.count("Patient").await, 0);
}

#[tokio::test]
async fn unknown_types_and_paths() {
    let app = app();
    app.get("/NotAType").await.expect_outcome(404);
    app.get("/NotAType/1").await.expect_outcome(404);
    app.post("/NotAType", &json!({"resourceType": "NotAType"}))
        .await
        .expect_outcome(404);
    app.get("/NotAType/_history").await.expect_outcome(404);
    let r = app.get("/a/b/c/d/e/f").await.expect_outcome(404);
    assert_eq!(r.json["issue"][0]["code"], "not-found");
    // A POST to an instance URL is not an interaction.
    let id = app.create(&patient("urn:mrn", "x")).await;
    app.post(&format!("/Patient/{id}"), &patient("urn:mrn", "x"))
        .await
        .expect_outcome(405);
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let app = app_with(
        Limits::default(),
        ApiConfig {
            max_body_bytes: 1024,
            hsts: false,
            smart: None,
            ..ApiConfig::default()
        },
    );
    let mut big = patient("urn:mrn", "big");
    big["name"][0]["family"] = json!("x".repeat(2000));
    let bytes = serde_json::to_vec(&big).unwrap();
    // With Content-Length …
    let len = bytes.len().to_string();
    let r = app
        .raw(
            "POST",
            "/Patient",
            &[
                ("content-type", "application/fhir+json"),
                ("content-length", len.as_str()),
            ],
            bytes.clone(),
        )
        .await
        .expect_outcome(413);
    assert_eq!(r.json["issue"][0]["code"], "too-long");
    // … and without (streamed).
    let stream = futures::stream::iter(
        bytes
            .chunks(100)
            .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    app.raw(
        "POST",
        "/Patient",
        &[("content-type", "application/fhir+json")],
        Body::from_stream(stream),
    )
    .await
    .expect_outcome(413);
    // Transactions and updates are limited too.
    let mut put = big.clone();
    put["id"] = json!("big");
    app.put("/Patient/big", &put).await.expect_outcome(413);
    app.post(
        "/",
        &json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": big, "request": {"method": "POST", "url": "Patient"}}]}),
    )
    .await
    .expect_outcome(413);
    assert_eq!(app.count("Patient").await, 0);
    // A small body is fine.
    app.post("/Patient", &patient("urn:mrn", "small"))
        .await
        .expect(201);
}

#[tokio::test]
async fn validate_operation() {
    let app = app();
    let r = app
        .post("/Patient/$validate", &patient("urn:mrn", "v"))
        .await
        .expect(200);
    assert_eq!(r.json["resourceType"], "OperationOutcome");
    assert!(r.json["issue"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["severity"] != "error" && i["severity"] != "fatal"));

    let r = app
        .post(
            "/Patient/$validate",
            &json!({"resourceType": "Patient", "gender": "x", "foo": 1, "birthDate": "1990-13-01"}),
        )
        .await
        .expect_outcome(400);
    let errors: Vec<&Value> = r.json["issue"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["severity"] == "error")
        .collect();
    assert!(errors.len() >= 2, "every problem listed: {}", r.text);
    assert!(r.text.contains("foo"), "{}", r.text);

    // Parameters wrapper.
    app.post(
        "/Patient/$validate",
        &json!({"resourceType": "Parameters", "parameter": [
            {"name": "resource", "resource": {"resourceType": "Patient", "foo": 1}}]}),
    )
    .await
    .expect_outcome(400);
    app.post(
        "/Patient/$validate",
        &json!({"resourceType": "Parameters", "parameter": [
            {"name": "resource", "resource": patient("urn:mrn", "w")}]}),
    )
    .await
    .expect(200);
    // Type mismatch.
    app.post("/Observation/$validate", &patient("urn:mrn", "v"))
        .await
        .expect_outcome(400);
    // Unknown type.
    app.post("/NotAType/$validate", &patient("urn:mrn", "v"))
        .await
        .expect_outcome(404);
    // Nothing was stored.
    assert_eq!(app.count("Patient").await, 0);
    let h = app.get("/_history").await.expect(200);
    assert_eq!(h.json["total"], 0);
}

#[tokio::test]
async fn metadata_health_metrics() {
    let app = app();
    let r = app.get("/metadata").await.expect(200);
    assert_eq!(r.json["resourceType"], "CapabilityStatement");
    assert_eq!(r.json["fhirVersion"], "4.0.1");
    assert_eq!(r.json["kind"], "instance");
    let resources = r.json["rest"][0]["resource"].as_array().unwrap();
    assert!(resources.iter().any(|x| x["type"] == "Patient"));
    assert!(resources.len() > 140, "every R4 resource type");
    // the search parameters it lists are the ones it indexes
    let obs = resources
        .iter()
        .find(|x| x["type"] == "Observation")
        .unwrap();
    let names: Vec<&str> = obs["searchParam"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for n in [
        "_id",
        "_lastUpdated",
        "code",
        "date",
        "patient",
        "value-quantity",
        "_tag",
        "code-value-quantity",
        "component-code-value-quantity",
    ] {
        assert!(names.contains(&n), "{n} listed");
    }
    assert!(!names.contains(&"_text"), "full text is not claimed");
    assert!(obs["searchInclude"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i == "Observation:patient"));
    assert!(r.json["format"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "application/fhir+json"));
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/fhir+json"));

    let h = app.get("/health").await.expect(200);
    assert_eq!(h.text, "ok");

    app.create(&patient("urn:mrn", "m")).await;
    app.get("/Patient/none").await.expect(404);
    let m = app.get("/metrics").await.expect(200);
    assert!(m.header("content-type").unwrap().starts_with("text/plain"));
    let line = |prefix: &str| -> f64 {
        m.text
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix} in {}", m.text))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(line("salus_http_requests_total{class=\"2xx\"}") >= 3.0);
    assert!(line("salus_http_requests_total{class=\"4xx\"}") >= 1.0);
    assert_eq!(line("salus_resources{type=\"Patient\"}"), 1.0);
    assert!(line("salus_uptime_seconds") >= 0.0);
}

#[tokio::test]
async fn decimals_and_primitive_extensions_round_trip_textually() {
    let app = app();
    let raw = r#"{"resourceType":"Observation","status":"final","code":{"text":"weight"},"valueQuantity":{"value":1.50,"unit":"kg"},"component":[{"code":{"text":"tiny"},"valueQuantity":{"value":0.000100}},{"code":{"text":"big"},"valueQuantity":{"value":12345678901234567890.10}}]}"#;
    let r = app
        .raw(
            "POST",
            "/Observation",
            &[("content-type", "application/fhir+json")],
            raw,
        )
        .await
        .expect(201);
    let id = r.json["id"].as_str().unwrap().to_string();
    for text in [
        &r.text,
        &app.get(&format!("/Observation/{id}"))
            .await
            .expect(200)
            .text,
        &app.get(&format!("/Observation/{id}/_history/1"))
            .await
            .expect(200)
            .text,
        &app.get(&format!("/Observation?_id={id}"))
            .await
            .expect(200)
            .text,
    ] {
        assert!(text.contains(r#""value":1.50"#), "1.50 kept: {text}");
        assert!(
            text.contains(r#""value":0.000100"#),
            "0.000100 kept: {text}"
        );
        assert!(
            text.contains(r#""value":12345678901234567890.10"#),
            "big decimal kept: {text}"
        );
    }
    // Pretty printing keeps the decimals too.
    let pretty = app
        .get(&format!("/Observation/{id}?_pretty=true"))
        .await
        .expect(200);
    assert!(pretty.text.contains("\"value\": 1.50"), "{}", pretty.text);

    let pat = r#"{"resourceType":"Patient","id":"ext1","birthDate":"1970-03-30","_birthDate":{"extension":[{"url":"http://hl7.org/fhir/StructureDefinition/patient-birthTime","valueDateTime":"1970-03-30T14:35:00+01:00"}]},"name":[{"given":["Ann",null],"_given":[null,{"extension":[{"url":"http://hl7.org/fhir/StructureDefinition/data-absent-reason","valueCode":"unknown"}]}]}]}"#;
    app.raw(
        "PUT",
        "/Patient/ext1",
        &[("content-type", "application/fhir+json")],
        pat,
    )
    .await
    .expect(201);
    let back = app.get("/Patient/ext1").await.expect(200);
    let input: Value = serde_json::from_str(pat).unwrap();
    assert_eq!(back.json["_birthDate"], input["_birthDate"]);
    assert_eq!(back.json["name"], input["name"]);
    assert!(back
        .text
        .contains(r#""valueDateTime":"1970-03-30T14:35:00+01:00""#));
}

#[tokio::test]
async fn unsupported_methods_are_405_with_outcome() {
    let app = app();
    for (method, uri) in [
        ("PATCH", "/Patient"),
        ("DELETE", "/metadata"),
        ("PUT", "/"),
        ("DELETE", "/Patient/x/_history/1"),
        ("POST", "/Patient/x/_history"),
    ] {
        let r = app.req(method, uri, &[], None).await;
        assert_eq!(r.status, 405, "{method} {uri}: {}", r.text);
        common::assert_outcome(&r.json);
        assert!(
            r.header("allow").is_some(),
            "{method} {uri} names the allowed methods"
        );
    }
}
