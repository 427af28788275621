//! Conditional create (`If-None-Exist`), conditional update (`PUT [type]?criteria`) and
//! conditional delete (`DELETE [type]?criteria`) with 0, 1 and 2 matches.

mod common;

use common::{app, location_parts, patient};
use serde_json::json;

#[tokio::test]
async fn conditional_create() {
    let app = app();
    let body = patient("urn:mrn", "cc1");
    let ine = [("if-none-exist", "identifier=urn:mrn|cc1")];
    // 0 matches → created.
    let r = app
        .req("POST", "/Patient", &ine, Some(&body))
        .await
        .expect(201);
    let id = r.json["id"].as_str().unwrap().to_string();
    // 1 match → 200 with the existing resource, nothing written.
    let r = app
        .req("POST", "/Patient", &ine, Some(&body))
        .await
        .expect(200);
    assert_eq!(r.json["id"], id.as_str());
    assert_eq!(r.json["meta"]["versionId"], "1");
    assert_eq!(r.header("etag"), Some("W/\"1\""));
    assert_eq!(location_parts(r.header("location").unwrap()).1, id);
    assert_eq!(app.count("Patient").await, 1);
    // A leading '?' and percent-encoding are accepted.
    app.req(
        "POST",
        "/Patient",
        &[("if-none-exist", "?identifier=urn%3Amrn%7Ccc1")],
        Some(&body),
    )
    .await
    .expect(200);
    // |value and value forms.
    app.create(&json!({"resourceType": "Patient", "identifier": [{"value": "nosys"}]}))
        .await;
    app.req(
        "POST",
        "/Patient",
        &[("if-none-exist", "identifier=|nosys")],
        Some(&body),
    )
    .await
    .expect(200);
    // 2 matches → 412, nothing written.
    app.create(&patient("urn:other", "cc1")).await;
    let before = app.count("Patient").await;
    app.req(
        "POST",
        "/Patient",
        &[("if-none-exist", "identifier=cc1")],
        Some(&body),
    )
    .await
    .expect_outcome(412);
    assert_eq!(app.count("Patient").await, before);
    // Criteria the server cannot evaluate are refused, never ignored.
    app.req(
        "POST",
        "/Patient",
        &[("if-none-exist", "nonsense=x")],
        Some(&body),
    )
    .await
    .expect_outcome(400);
    assert_eq!(app.count("Patient").await, before);
    // A deleted match does not count.
    app.delete(&format!("/Patient/{id}")).await.expect(204);
    app.req("POST", "/Patient", &ine, Some(&body))
        .await
        .expect(201);
}

#[tokio::test]
async fn conditional_update() {
    let app = app();
    // 0 matches, no id in the body → created with a server id.
    let body = patient("urn:mrn", "cu1");
    let r = app
        .put("/Patient?identifier=urn:mrn|cu1", &body)
        .await
        .expect(201);
    let id = r.json["id"].as_str().unwrap().to_string();
    assert_eq!(r.json["meta"]["versionId"], "1");
    // 1 match → that resource is updated.
    let mut upd = patient("urn:mrn", "cu1");
    upd["gender"] = json!("male");
    let r = app
        .put("/Patient?identifier=urn:mrn|cu1", &upd)
        .await
        .expect(200);
    assert_eq!(r.json["id"], id.as_str());
    assert_eq!(r.json["meta"]["versionId"], "2");
    assert_eq!(
        app.get(&format!("/Patient/{id}")).await.json["gender"],
        "male"
    );
    // 1 match with the same id in the body → fine; a different id → 400.
    upd["id"] = json!(id);
    app.put("/Patient?identifier=urn:mrn|cu1", &upd)
        .await
        .expect(200);
    upd["id"] = json!("someone-else");
    app.put("/Patient?identifier=urn:mrn|cu1", &upd)
        .await
        .expect_outcome(400);
    // 0 matches with a client id → created with that id.
    let mut fresh = patient("urn:mrn", "cu2");
    fresh["id"] = json!("cu2-id");
    let r = app
        .put("/Patient?identifier=urn:mrn|cu2", &fresh)
        .await
        .expect(201);
    assert_eq!(r.json["id"], "cu2-id");
    // 2 matches → 412, nothing changed.
    app.create(&patient("urn:dup", "d")).await;
    app.create(&patient("urn:dup", "d")).await;
    app.put("/Patient?identifier=urn:dup|d", &patient("urn:dup", "d"))
        .await
        .expect_outcome(412);
    let h = app.get("/Patient/_history").await.expect(200);
    assert_eq!(h.json["total"], 6);
    // If-Match together with a conditional update.
    app.req(
        "PUT",
        "/Patient?identifier=urn:mrn|cu1",
        &[("if-match", "W/\"1\"")],
        Some(&patient("urn:mrn", "cu1")),
    )
    .await
    .expect_outcome(412);
    // Criteria are required, and must be understood.
    app.put("/Patient", &body).await.expect_outcome(405);
    app.put("/Patient?_format=json", &body)
        .await
        .expect_outcome(405);
    app.put("/Patient?nonsense=x", &body)
        .await
        .expect_outcome(400);
    app.put("/NotAType?identifier=a", &body)
        .await
        .expect_outcome(404);
}

#[tokio::test]
async fn conditional_delete() {
    let app = app();
    // 0 matches → fine.
    app.delete("/Patient?identifier=urn:mrn|none")
        .await
        .expect(204);
    // 1 match → deleted.
    let id = app.create(&patient("urn:mrn", "cd1")).await;
    let keep = app.create(&patient("urn:mrn", "cd-keep")).await;
    app.delete("/Patient?identifier=urn:mrn|cd1")
        .await
        .expect(204);
    app.get(&format!("/Patient/{id}")).await.expect_outcome(410);
    app.get(&format!("/Patient/{keep}")).await.expect(200);
    // 2 matches → 412, nothing deleted.
    let a = app.create(&patient("urn:dup", "x")).await;
    let b = app.create(&patient("urn:dup", "x")).await;
    app.delete("/Patient?identifier=urn:dup|x")
        .await
        .expect_outcome(412);
    app.get(&format!("/Patient/{a}")).await.expect(200);
    app.get(&format!("/Patient/{b}")).await.expect(200);
    // By _id.
    app.delete(&format!("/Patient?_id={a}")).await.expect(204);
    app.get(&format!("/Patient/{a}")).await.expect(410);
    // An unknown criterion must not delete everything.
    app.delete("/Patient?nonsense=x").await.expect_outcome(400);
    app.delete("/Patient").await.expect_outcome(405);
    app.get(&format!("/Patient/{b}")).await.expect(200);
    app.get(&format!("/Patient/{keep}")).await.expect(200);
}
