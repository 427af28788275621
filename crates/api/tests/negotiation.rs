//! Content negotiation (R4 http.html#mime-type): `_format`, `Accept`, `Content-Type`,
//! `_pretty`, and result shaping on reads (`_summary`, `_elements`).

mod common;

use common::{app, patient};
use serde_json::json;

#[tokio::test]
async fn xml_is_not_acceptable() {
    let app = app();
    let id = app.create(&patient("urn:n", "1")).await;
    let url = format!("/Patient/{id}");
    for q in [
        "_format=xml",
        "_format=application/fhir%2Bxml",
        "_format=text/xml",
    ] {
        let r = app.get(&format!("{url}?{q}")).await.expect_outcome(406);
        assert_eq!(r.json["issue"][0]["code"], "not-supported");
    }
    for accept in ["application/xml", "application/fhir+xml", "text/html"] {
        app.req("GET", &url, &[("accept", accept)], None)
            .await
            .expect_outcome(406);
    }
    // Searches, history, metadata and writes negotiate the same way.
    app.get("/Patient?_format=xml").await.expect_outcome(406);
    app.get(&format!("{url}/_history?_format=xml"))
        .await
        .expect_outcome(406);
    app.get("/metadata?_format=xml").await.expect_outcome(406);
    app.req(
        "POST",
        "/Patient",
        &[("accept", "application/fhir+xml")],
        Some(&patient("urn:n", "2")),
    )
    .await
    .expect_outcome(406);
    // Nothing was created by the refused POST.
    assert_eq!(app.count("Patient").await, 1);
}

#[tokio::test]
async fn json_formats_are_fine() {
    let app = app();
    let id = app.create(&patient("urn:n", "1")).await;
    let url = format!("/Patient/{id}");
    for q in [
        "_format=json",
        "_format=application/json",
        "_format=application/fhir%2Bjson",
    ] {
        let r = app.get(&format!("{url}?{q}")).await.expect(200);
        assert_eq!(r.json["id"], id.as_str());
    }
    for accept in [
        "application/fhir+json",
        "application/json",
        "*/*",
        "application/fhir+json; fhirVersion=4.0",
        "text/html, application/fhir+json;q=0.9",
    ] {
        let r = app
            .req("GET", &url, &[("accept", accept)], None)
            .await
            .expect(200);
        assert!(r
            .header("content-type")
            .unwrap()
            .starts_with("application/fhir+json"));
    }
    // `_format` wins over `Accept`.
    app.req(
        "GET",
        &format!("{url}?_format=json"),
        &[("accept", "application/fhir+xml")],
        None,
    )
    .await
    .expect(200);
}

#[tokio::test]
async fn unsupported_content_type_is_415() {
    let app = app();
    let body = serde_json::to_vec(&patient("urn:n", "1")).unwrap();
    for ct in ["text/plain", "application/fhir+xml", "application/xml"] {
        let r = app
            .raw("POST", "/Patient", &[("content-type", ct)], body.clone())
            .await
            .expect_outcome(415);
        assert_eq!(r.json["issue"][0]["code"], "not-supported");
    }
    app.raw(
        "PUT",
        "/Patient/x",
        &[("content-type", "text/plain")],
        body.clone(),
    )
    .await
    .expect_outcome(415);
    app.raw("POST", "/", &[("content-type", "text/plain")], body.clone())
        .await
        .expect_outcome(415);
    assert_eq!(app.count("Patient").await, 0);
    // JSON media types (with parameters) are accepted.
    for ct in [
        "application/fhir+json",
        "application/fhir+json; charset=utf-8",
        "application/json",
        "application/fhir+json;fhirVersion=4.0",
    ] {
        app.raw("POST", "/Patient", &[("content-type", ct)], body.clone())
            .await
            .expect(201);
    }
}

#[tokio::test]
async fn pretty_printing() {
    let app = app();
    let id = app.create(&patient("urn:n", "1")).await;
    let url = format!("/Patient/{id}");
    let plain = app.get(&url).await.expect(200);
    assert!(!plain.text.contains('\n'));
    let pretty = app.get(&format!("{url}?_pretty=true")).await.expect(200);
    assert!(pretty.text.contains("\n  \"id\""), "{}", pretty.text);
    assert_eq!(pretty.json, plain.json);
    let off = app.get(&format!("{url}?_pretty=false")).await.expect(200);
    assert!(!off.text.contains('\n'));
    let s = app.get("/Patient?_pretty=true").await.expect(200);
    assert!(s.text.contains('\n'));
    let e = app
        .get("/Patient?_pretty=true&birthdate=notadate")
        .await
        .expect_outcome(400);
    assert!(e.text.contains("birthdate"));
}

#[tokio::test]
async fn summary_and_elements_on_read() {
    let app = app();
    let mut p = patient("urn:n", "1");
    p["text"] = json!({"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Ann</div>"});
    p["birthDate"] = json!("1980-01-01");
    p["_birthDate"] = json!({"extension": [{"url": "http://example.org/x", "valueString": "y"}]});
    p["photo"] = json!([{"contentType": "image/png", "data": "AAAA"}]);
    let id = app.create(&p).await;
    let url = format!("/Patient/{id}");
    let subsetted = |v: &serde_json::Value| {
        v["meta"]["tag"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["code"] == "SUBSETTED"))
    };

    let r = app.get(&format!("{url}?_summary=text")).await.expect(200);
    assert!(r.json.get("text").is_some());
    assert!(r.json.get("gender").is_none() && r.json.get("name").is_none());
    assert_eq!(r.json["id"], id.as_str());
    assert!(subsetted(&r.json));
    assert_eq!(r.header("etag"), Some("W/\"1\""));
    let full = app.get(&url).await;
    assert!(full.header("last-modified").is_some());
    assert_eq!(r.header("last-modified"), full.header("last-modified"));

    let r = app.get(&format!("{url}?_summary=data")).await.expect(200);
    assert!(r.json.get("text").is_none());
    assert_eq!(r.json["gender"], "female");
    assert!(subsetted(&r.json));

    let r = app.get(&format!("{url}?_summary=true")).await.expect(200);
    assert!(
        r.json.get("photo").is_none(),
        "photo is not a summary element"
    );
    assert!(r.json.get("text").is_none());
    assert_eq!(r.json["birthDate"], "1980-01-01");
    assert!(
        r.json.get("_birthDate").is_some(),
        "a primitive's extension follows it"
    );
    assert!(subsetted(&r.json));

    let r = app.get(&format!("{url}?_summary=false")).await.expect(200);
    assert!(r.json.get("photo").is_some() && !subsetted(&r.json));

    let r = app
        .get(&format!("{url}?_elements=birthDate,identifier"))
        .await
        .expect(200);
    assert_eq!(r.json["birthDate"], "1980-01-01");
    assert!(r.json.get("_birthDate").is_some());
    assert!(r.json.get("identifier").is_some());
    assert!(r.json.get("name").is_none() && r.json.get("gender").is_none());
    assert_eq!(r.json["resourceType"], "Patient");
    assert!(subsetted(&r.json));

    // vread shapes too.
    let r = app
        .get(&format!("{url}/_history/1?_elements=gender"))
        .await
        .expect(200);
    assert!(r.json.get("name").is_none() && r.json.get("gender").is_some());

    // `count` is for searches only; unknown values are refused.
    app.get(&format!("{url}?_summary=count"))
        .await
        .expect_outcome(400);
    app.get(&format!("{url}?_summary=maybe"))
        .await
        .expect_outcome(400);
    // The stored resource is untouched by shaping.
    let full = app.get(&url).await.expect(200);
    assert!(full.json.get("photo").is_some() && !subsetted(&full.json));
}
