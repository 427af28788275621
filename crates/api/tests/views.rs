//! SQL-on-FHIR v2 `$run` through the router: `POST /ViewDefinition/$run` and
//! `POST /$viewdefinition-run` over stored or inline resources, as CSV, NDJSON or JSON.

mod common;

use common::*;
use serde_json::{json, Value};

fn view() -> Value {
    json!({"resourceType": "ViewDefinition", "name": "patient_demographics", "status": "active",
    "resource": "Patient",
    "select": [
        {"column": [{"name": "id", "path": "getResourceKey()"},
                    {"name": "gender", "path": "gender"}]},
        {"forEachOrNull": "name.where(use = 'official')",
         "column": [{"name": "family", "path": "family"}]}
    ]})
}

fn params(view: Value, extra: Vec<Value>) -> Value {
    let mut parameter = vec![json!({"name": "viewResource", "resource": view})];
    parameter.extend(extra);
    json!({"resourceType": "Parameters", "parameter": parameter})
}

async fn patients(app: &App) -> (String, String) {
    let a = app
        .create(&json!({"resourceType": "Patient", "gender": "female",
            "name": [{"use": "official", "family": "Chalmers, \"Jr\""}]}))
        .await;
    let b = app
        .create(&json!({"resourceType": "Patient", "gender": "male"}))
        .await;
    app.create(&json!({"resourceType": "Observation", "status": "final",
        "code": {"text": "not a patient"}}))
        .await;
    (a, b)
}

#[tokio::test]
async fn runs_over_stored_resources_in_each_format() {
    let app = app();
    let (a, b) = patients(&app).await;
    // CSV (RFC 4180: quotes doubled, the field quoted)
    let r = app
        .req(
            "POST",
            "/ViewDefinition/$run?_format=csv",
            &[],
            Some(&params(view(), vec![])),
        )
        .await
        .expect(200);
    assert!(r.header("content-type").unwrap().starts_with("text/csv"));
    let mut lines: Vec<&str> = r.text.lines().collect();
    assert_eq!(lines.remove(0), "id,gender,family");
    lines.sort();
    let mut want = vec![
        format!("{a},female,\"Chalmers, \"\"Jr\"\"\""),
        format!("{b},male,"),
    ];
    want.sort();
    assert_eq!(lines, want);
    // NDJSON through a _format parameter, only one patient's compartment
    let r = app
        .req(
            "POST",
            "/ViewDefinition/$run",
            &[],
            Some(&params(
                view(),
                vec![
                    json!({"name": "_format", "valueCode": "ndjson"}),
                    json!({"name": "patient", "valueReference": {"reference": format!("Patient/{a}")}}),
                ],
            )),
        )
        .await
        .expect(200);
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    let rows: Vec<Value> = r
        .text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        rows,
        vec![json!({"id": a, "gender": "female", "family": "Chalmers, \"Jr\""})]
    );
    // JSON (the default), with a limit
    let r = app
        .req(
            "POST",
            "/ViewDefinition/$run",
            &[],
            Some(&params(
                view(),
                vec![json!({"name": "_limit", "valueInteger": 1})],
            )),
        )
        .await
        .expect(200);
    assert_eq!(r.json.as_array().map(Vec::len), Some(1));
    // _since after every write: nothing
    let r = app
        .req(
            "POST",
            "/ViewDefinition/$run?_since=2999-01-01T00:00:00Z",
            &[],
            Some(&params(view(), vec![])),
        )
        .await
        .expect(200);
    assert_eq!(r.json, json!([]));
}

#[tokio::test]
async fn runs_over_inline_resources_and_a_bare_view() {
    let app = app();
    patients(&app).await; // stored ones are not used when resources are sent
    let inline = vec![
        json!({"name": "resource", "resource": {"resourceType": "Patient", "id": "x1", "gender": "other"}}),
        json!({"name": "resource", "resource": {"resourceType": "Observation", "id": "o1"}}),
    ];
    let r = app
        .req(
            "POST",
            "/$viewdefinition-run",
            &[("accept", "application/x-ndjson")],
            Some(&params(view(), inline)),
        )
        .await
        .expect(200);
    assert_eq!(
        r.text.trim(),
        json!({"id": "x1", "gender": "other", "family": null}).to_string()
    );
    // the ViewDefinition itself as the body
    let r = app
        .req(
            "POST",
            "/ViewDefinition/$run?_format=json",
            &[],
            Some(&view()),
        )
        .await
        .expect(200);
    assert_eq!(r.json.as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn bad_requests_are_refused_with_a_reason() {
    let app = app();
    let mut bad = view();
    bad["select"][0]["column"][0]["path"] = json!("name.given1");
    let r = app
        .req(
            "POST",
            "/ViewDefinition/$run",
            &[],
            Some(&params(bad, vec![])),
        )
        .await
        .expect_outcome(400);
    assert!(r.text.contains("given1"), "{}", r.text);
    let r = app
        .req(
            "POST",
            "/ViewDefinition/$run",
            &[],
            Some(&json!({"resourceType": "Parameters", "parameter": []})),
        )
        .await
        .expect_outcome(400);
    assert!(r.text.contains("viewResource"), "{}", r.text);
    app.req(
        "POST",
        "/ViewDefinition/$run?_format=xlsx",
        &[],
        Some(&params(view(), vec![])),
    )
    .await
    .expect_outcome(406);
    app.req(
        "POST",
        "/ViewDefinition/$run?_limit=lots",
        &[],
        Some(&params(view(), vec![])),
    )
    .await
    .expect_outcome(400);
    // a column that is not a collection but gets several values fails the run
    let mut many = view();
    many["select"][1] = json!({"column": [{"name": "given", "path": "name.given"}]});
    app.create(&json!({"resourceType": "Patient", "name": [{"given": ["A", "B"]}]}))
        .await;
    app.req(
        "POST",
        "/ViewDefinition/$run",
        &[],
        Some(&params(many, vec![])),
    )
    .await
    .expect_outcome(400);
}
