//! `POST /$convert-data` through the router: an HL7 v2 message in Azure-style
//! Parameters → 200 with a transaction Bundle (nothing stored), or 400 with an
//! OperationOutcome saying what is wrong.

mod common;

use common::*;
use serde_json::{json, Value};

const ADT: &str =
    "MSH|^~\\&|ADT|HOSP|SALUS|HOSP|20240102030405+0100||ADT^A04^ADT_A01|CD-1|P|2.5.1\r\
EVN|A04|20240102030405+0100\r\
PID|1||MRN-7^^^HOSP^MR||ROE^RITA^^^^^L||19700203|F\r\
PV1|1|O|CLINIC^1^1||||||||||||||||VN-7^^^HOSP^VN\r";

fn params(parts: &[(&str, &str)]) -> Value {
    json!({
        "resourceType": "Parameters",
        "parameter": parts
            .iter()
            .map(|(n, v)| json!({"name": n, "valueString": v}))
            .collect::<Vec<_>>(),
    })
}

fn request(input: &str, root: &str) -> Value {
    params(&[
        ("inputData", input),
        ("inputDataType", "Hl7v2"),
        (
            "templateCollectionReference",
            "microsofthealth/fhirconverter:default",
        ),
        ("rootTemplate", root),
    ])
}

fn diagnostics(r: &Resp) -> String {
    r.json["issue"][0]["diagnostics"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn converts_without_storing() {
    let app = app();
    let r = app
        .req(
            "POST",
            "/$convert-data",
            &[],
            Some(&request(ADT, "ADT_A01")),
        )
        .await
        .expect(200);
    assert_eq!(r.json["resourceType"], "Bundle");
    assert_eq!(r.json["type"], "transaction");
    let entries = r.json["entry"].as_array().unwrap();
    let patient = entries
        .iter()
        .find(|e| e["resource"]["resourceType"] == "Patient")
        .expect("a Patient entry");
    assert_eq!(patient["resource"]["name"][0]["family"], "ROE");
    assert!(entries
        .iter()
        .any(|e| e["resource"]["resourceType"] == "Encounter"));
    // the trigger event names the template too (ADT_A04 has structure ADT_A01)
    app.req(
        "POST",
        "/$convert-data",
        &[],
        Some(&request(ADT, "adt_a04")),
    )
    .await
    .expect(200);
    // nothing was stored
    let s = app
        .req("GET", "/Patient?_total=accurate", &[], None)
        .await
        .expect(200);
    assert_eq!(s.json["total"], 0);
}

#[tokio::test]
async fn wrong_input_type_names_the_supported_ones() {
    let app = app();
    let body = params(&[("inputData", ADT), ("inputDataType", "Ccda")]);
    let r = app
        .req("POST", "/$convert-data", &[], Some(&body))
        .await
        .expect_outcome(400);
    let d = diagnostics(&r);
    assert!(
        d.contains("'Ccda' is not supported") && d.contains("Hl7v2"),
        "{d}"
    );
    assert_eq!(r.json["issue"][0]["code"], "not-supported");
    let body = params(&[("inputData", ADT)]);
    let r = app
        .req("POST", "/$convert-data", &[], Some(&body))
        .await
        .expect_outcome(400);
    assert!(diagnostics(&r).contains("inputDataType is missing"));
}

#[tokio::test]
async fn root_template_must_match_the_message() {
    let app = app();
    let r = app
        .req(
            "POST",
            "/$convert-data",
            &[],
            Some(&request(ADT, "ORU_R01")),
        )
        .await
        .expect_outcome(400);
    let d = diagnostics(&r);
    assert!(d.contains("ORU_R01") && d.contains("ADT^A04"), "{d}");
    assert_eq!(r.json["issue"][0]["code"], "not-supported");
}

#[tokio::test]
async fn malformed_messages_name_segment_and_field() {
    let app = app();
    let bad = ADT.replace("19700203", "1970-02-03");
    let r = app
        .req(
            "POST",
            "/$convert-data",
            &[],
            Some(&request(&bad, "ADT_A01")),
        )
        .await
        .expect_outcome(400);
    let d = diagnostics(&r);
    assert!(d.contains("PID-7"), "{d}");
    assert_eq!(r.json["issue"][0]["code"], "invalid");
    // not a message at all
    let r = app
        .req(
            "POST",
            "/$convert-data",
            &[],
            Some(&request("hello", "ADT_A01")),
        )
        .await
        .expect_outcome(400);
    assert!(diagnostics(&r).contains("inputData"), "{}", r.text);
    // missing PID
    let no_pid = "MSH|^~\\&|ADT|HOSP|SALUS|HOSP|20240102030405+0100||ADT^A01^ADT_A01|CD-2|P|2.5.1\rEVN|A01\r";
    let r = app
        .req(
            "POST",
            "/$convert-data",
            &[],
            Some(&request(no_pid, "ADT_A01")),
        )
        .await
        .expect_outcome(400);
    assert!(diagnostics(&r).contains("PID"), "{}", r.text);
}

#[tokio::test]
async fn input_data_is_required() {
    let app = app();
    let body = params(&[("inputDataType", "Hl7v2"), ("rootTemplate", "ADT_A01")]);
    let r = app
        .req("POST", "/$convert-data", &[], Some(&body))
        .await
        .expect_outcome(400);
    assert!(diagnostics(&r).contains("inputData"), "{}", r.text);
    assert_eq!(r.json["issue"][0]["code"], "required");
    // not Parameters
    let r = app
        .req(
            "POST",
            "/$convert-data",
            &[],
            Some(&json!({"resourceType": "Patient"})),
        )
        .await
        .expect_outcome(400);
    assert!(diagnostics(&r).contains("Parameters"), "{}", r.text);
}
