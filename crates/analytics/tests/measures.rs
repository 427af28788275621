//! Each measure on a small hand-built population whose right answer is known.
//! Measurement period: 2024-01-01 to 2024-12-31. Ages are at 2024-12-31.

use salus_analytics::measures::{self, MeasurePeriod, MeasureResult, ReportType};
use salus_analytics::{Analytics, Materializer};
use serde_json::{json, Value};

fn period() -> MeasurePeriod {
    MeasurePeriod::year(2024).unwrap()
}

fn patient(id: &str, birth: &str) -> Value {
    json!({"resourceType": "Patient", "id": id, "birthDate": birth})
}

fn condition(id: &str, pat: &str, system: &str, code: &str) -> Value {
    json!({"resourceType": "Condition", "id": id,
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
        "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
        "code": {"coding": [{"system": system, "code": code}]},
        "subject": {"reference": format!("Patient/{pat}")},
        "onsetDateTime": "2015-01-01"})
}

const SCT: &str = "http://snomed.info/sct";
const ICD: &str = "http://hl7.org/fhir/sid/icd-10-cm";

fn hba1c(id: &str, pat: &str, when: &str, value: f64, unit: &str) -> Value {
    json!({"resourceType": "Observation", "id": id, "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
        "subject": {"reference": format!("Patient/{pat}")},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}})
}

fn bp(id: &str, pat: &str, when: &str, sys: Option<f64>, dia: Option<f64>) -> Value {
    let mut components = Vec::new();
    if let Some(s) = sys {
        components.push(
            json!({"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
            "valueQuantity": {"value": s, "unit": "mm[Hg]"}}),
        );
    }
    if let Some(d) = dia {
        components.push(
            json!({"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
            "valueQuantity": {"value": d, "unit": "mm[Hg]"}}),
        );
    }
    json!({"resourceType": "Observation", "id": id, "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "subject": {"reference": format!("Patient/{pat}")},
        "effectiveDateTime": when, "component": components})
}

fn encounter(
    id: &str,
    pat: &str,
    class: &str,
    status: &str,
    start: &str,
    end: Option<&str>,
) -> Value {
    let mut e = json!({"resourceType": "Encounter", "id": id, "status": status,
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": class},
        "subject": {"reference": format!("Patient/{pat}")},
        "period": {"start": start}});
    if let Some(end) = end {
        e["period"]["end"] = json!(end);
    }
    e
}

fn procedure(id: &str, pat: &str, code: &str, status: &str, when: &str) -> Value {
    json!({"resourceType": "Procedure", "id": id, "status": status,
        "code": {"coding": [{"system": SCT, "code": code}]},
        "subject": {"reference": format!("Patient/{pat}")},
        "performedDateTime": when})
}

fn lab(id: &str, pat: &str, loinc: &str, when: &str) -> Value {
    json!({"resourceType": "Observation", "id": id, "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
        "subject": {"reference": format!("Patient/{pat}")},
        "effectiveDateTime": when, "valueString": "negative"})
}

async fn run(resources: &[Value], id: &str) -> MeasureResult {
    let mut sql = Analytics::in_memory();
    measures::register_in_memory(&mut sql, resources).unwrap();
    measures::evaluate(&sql, id, &period()).await.unwrap()
}

fn members(r: &MeasureResult, code: &str) -> Vec<String> {
    r.population(code).unwrap().subjects.clone()
}

fn refs(kind: &str, ids: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ids.iter().map(|i| format!("{kind}/{i}")).collect();
    v.sort();
    v
}

fn diabetes_population() -> Vec<Value> {
    let mut r = vec![
        patient("d1", "1960-05-01"),
        patient("d2", "1970-01-01"),
        patient("d3", "1950-12-31"),
        patient("d4", "1960-01-01"),
        patient("d5", "1944-01-01"),
        patient("d6", "1980-07-07"),
        patient("d7", "1990-03-03"),
        patient("d8", "1975-01-01"),
        json!({"resourceType": "Patient", "id": "d9", "birthDate": "1960-01-01", "deceasedDateTime": "2024-06-01"}),
        patient("d10", "1960-01-01"),
        patient("n1", "1960-01-01"),
    ];
    for p in ["d1", "d3", "d4", "d5", "d6", "d7", "d8", "d9", "d10"] {
        r.push(condition(&format!("c-{p}"), p, SCT, "44054006"));
    }
    r.push(condition("c-d2", "d2", ICD, "E11.9"));
    r.iter_mut().for_each(|x| {
        if x["id"] == "c-d4" {
            x["verificationStatus"]["coding"][0]["code"] = json!("refuted");
        }
        if x["id"] == "c-d8" {
            x["clinicalStatus"]["coding"][0]["code"] = json!("resolved");
        }
        if x["id"] == "c-d10" {
            x["onsetDateTime"] = json!("2025-02-01");
        }
    });
    r.extend([
        hba1c("a1", "d1", "2024-02-01", 10.1, "%"),
        hba1c("a2", "d1", "2024-11-15T09:00:00Z", 7.0, "%"),
        hba1c("a3", "d2", "2024-06-01", 9.5, "%"),
        hba1c("a4", "d2", "2023-12-01", 6.0, "%"),
        hba1c("a5", "d3", "2024-03-01", 86.0, "mmol/mol"),
        hba1c("a6", "d6", "2024-04-01", 9.0, "%"),
        hba1c("a8", "d4", "2024-04-01", 12.0, "%"),
        hba1c("a9", "n1", "2024-04-01", 12.0, "%"),
    ]);
    let mut wrong = hba1c("a7", "d6", "2024-10-01", 12.0, "%");
    wrong["status"] = json!("entered-in-error");
    r.push(wrong);
    r
}

#[tokio::test]
async fn diabetes_hba1c_poor_control() {
    let r = run(&diabetes_population(), "diabetes-hba1c-poor-control").await;
    assert_eq!(
        members(&r, "initial-population"),
        refs("Patient", &["d1", "d2", "d3", "d6", "d7"])
    );
    assert_eq!(r.count("denominator"), 5);
    assert_eq!(members(&r, "numerator"), refs("Patient", &["d2", "d3"]));
    assert_eq!(r.score, Some(0.4));
}

#[tokio::test]
async fn hypertension_bp_control() {
    let mut res = vec![
        patient("h1", "1964-01-01"),
        patient("h2", "1964-01-01"),
        patient("h3", "1964-01-01"),
        patient("h4", "1964-01-01"),
        patient("h5", "1964-01-01"),
        patient("h6", "1930-01-01"),
        patient("h7", "1964-01-01"),
        patient("h8", "1964-01-01"),
    ];
    for p in ["h1", "h3", "h4", "h5", "h6", "h7"] {
        res.push(condition(&format!("c-{p}"), p, SCT, "59621000"));
    }
    res.push(condition("c-h2", "h2", ICD, "I10"));
    res.extend([
        bp("b1", "h1", "2024-03-01", Some(130.0), Some(85.0)),
        bp("b2", "h1", "2024-10-01", Some(150.0), Some(85.0)),
        bp("b3", "h2", "2024-05-01", Some(145.0), Some(95.0)),
        bp("b4", "h2", "2024-09-01", Some(120.0), Some(80.0)),
        bp("b5", "h3", "2024-07-01", Some(139.0), Some(89.0)),
        bp("b6", "h4", "2024-07-01", Some(140.0), Some(80.0)),
        bp("b7", "h5", "2024-07-01", Some(120.0), None),
        bp("b8", "h6", "2024-07-01", Some(120.0), Some(80.0)),
        bp("b9", "h7", "2023-07-01", Some(120.0), Some(80.0)),
        bp("b10", "h8", "2024-07-01", Some(120.0), Some(80.0)),
    ]);
    let r = run(&res, "hypertension-bp-control").await;
    assert_eq!(
        members(&r, "initial-population"),
        refs("Patient", &["h1", "h2", "h3", "h4", "h5", "h7"])
    );
    assert_eq!(members(&r, "numerator"), refs("Patient", &["h2", "h3"]));
    assert_eq!(r.score, Some(0.333333));
}

fn readmission_population() -> Vec<Value> {
    let mut res: Vec<Value> = ["r1", "r2", "r3", "r4", "r5", "r6"]
        .iter()
        .map(|p| patient(p, "1960-01-01"))
        .collect();
    res.extend([
        encounter(
            "E1",
            "r1",
            "IMP",
            "finished",
            "2024-01-10",
            Some("2024-01-15"),
        ),
        encounter(
            "E2",
            "r1",
            "IMP",
            "finished",
            "2024-02-01",
            Some("2024-02-05"),
        ),
        encounter(
            "E3",
            "r1",
            "IMP",
            "finished",
            "2024-04-01",
            Some("2024-04-03"),
        ),
        encounter(
            "E4",
            "r2",
            "IMP",
            "finished",
            "2024-12-20",
            Some("2024-12-25T18:00:00+01:00"),
        ),
        encounter(
            "E5",
            "r2",
            "IMP",
            "finished",
            "2025-01-20",
            Some("2025-01-22"),
        ),
        encounter(
            "E7",
            "r4",
            "IMP",
            "finished",
            "2024-06-01",
            Some("2024-06-10"),
        ),
        encounter(
            "E8",
            "r4",
            "AMB",
            "finished",
            "2024-06-12",
            Some("2024-06-12"),
        ),
        encounter(
            "E9",
            "r4",
            "IMP",
            "finished",
            "2024-07-11",
            Some("2024-07-15"),
        ),
        encounter(
            "E10",
            "r4",
            "EMER",
            "finished",
            "2024-07-20",
            Some("2024-07-20"),
        ),
        encounter(
            "E11",
            "r4",
            "IMP",
            "finished",
            "2024-08-14",
            Some("2024-08-16"),
        ),
        encounter("E12", "r5", "IMP", "in-progress", "2024-10-01", None),
        encounter(
            "E13",
            "r6",
            "IMP",
            "finished",
            "2024-09-01",
            Some("2024-09-05"),
        ),
        encounter(
            "E14",
            "r6",
            "IMP",
            "finished",
            "2024-09-05",
            Some("2024-09-07"),
        ),
        encounter(
            "E15",
            "r6",
            "IMP",
            "cancelled",
            "2024-09-10",
            Some("2024-09-11"),
        ),
    ]);
    let mut died = encounter(
        "E6",
        "r3",
        "IMP",
        "finished",
        "2024-04-20",
        Some("2024-05-01"),
    );
    died["hospitalization"] = json!({"dischargeDisposition": {"coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/discharge-disposition", "code": "exp"}]}});
    res.push(died);
    res
}

#[tokio::test]
async fn readmission_30_day() {
    let r = run(&readmission_population(), "readmission-30-day").await;
    assert_eq!(
        members(&r, "initial-population"),
        refs(
            "Encounter",
            &["E1", "E2", "E3", "E4", "E6", "E7", "E9", "E11", "E13", "E14"]
        )
    );
    assert_eq!(r.count("denominator"), 10);
    assert_eq!(
        members(&r, "denominator-exclusion"),
        refs("Encounter", &["E6"])
    );
    assert_eq!(
        members(&r, "numerator"),
        refs("Encounter", &["E1", "E4", "E9"])
    );
    assert_eq!(r.score, Some(0.333333));
    // The cohort of patients readmitted.
    let g = r.group("numerator").unwrap();
    assert_eq!(g["resourceType"], "Group");
    assert_eq!(g["quantity"], 3, "r1, r2 and r4");
    assert_eq!(g["member"][0]["entity"]["reference"], "Patient/r1");
}

#[tokio::test]
async fn ed_visits_per_1000() {
    let mut res: Vec<Value> = ["e1", "e2", "e3", "e4"]
        .iter()
        .map(|p| patient(p, "1990-01-01"))
        .collect();
    res.push(json!({"resourceType": "Patient", "id": "x5", "active": false}));
    res.push(json!({"resourceType": "Patient", "id": "x6", "deceasedDateTime": "2023-05-01"}));
    res.push(json!({"resourceType": "Patient", "id": "x7", "deceasedDateTime": "2024-06-01"}));
    res.extend([
        encounter(
            "v1",
            "e1",
            "EMER",
            "finished",
            "2024-02-01",
            Some("2024-02-01"),
        ),
        encounter(
            "v2",
            "e1",
            "EMER",
            "finished",
            "2024-05-01",
            Some("2024-05-01"),
        ),
        encounter(
            "v3",
            "e1",
            "EMER",
            "finished",
            "2023-05-01",
            Some("2023-05-01"),
        ),
        encounter("v4", "e2", "EMER", "entered-in-error", "2024-03-01", None),
        encounter(
            "v5",
            "e2",
            "EMER",
            "finished",
            "2024-12-31T23:30:00-05:00",
            None,
        ),
        encounter("v6", "e3", "AMB", "finished", "2024-03-01", None),
        encounter("v7", "x5", "EMER", "finished", "2024-03-01", None),
        encounter("v8", "x7", "EMER", "finished", "2024-03-01", None),
    ]);
    let r = run(&res, "ed-visits-per-1000").await;
    assert_eq!(
        members(&r, "denominator"),
        refs("Patient", &["e1", "e2", "e3", "e4", "x7"])
    );
    assert_eq!(
        members(&r, "numerator"),
        refs("Encounter", &["v1", "v2", "v5", "v8"])
    );
    assert_eq!(r.score, Some(800.0));
    let report = r.measure_report(ReportType::Summary, Some("2025-01-02"));
    assert_eq!(report["group"][0]["measureScore"]["value"], json!(800.0));
    assert_eq!(
        report["group"][0]["measureScore"]["unit"],
        "visits per 1000 patients"
    );
    // The numerator cohort is the patients with a visit.
    let g = r.group("numerator").unwrap();
    assert_eq!(g["quantity"], 3);
}

fn colorectal_population() -> Vec<Value> {
    let mut res = vec![
        patient("c1", "1964-01-01"),
        patient("c2", "1969-01-01"),
        patient("c3", "1959-01-01"),
        patient("c4", "1954-01-01"),
        patient("c5", "1972-01-01"),
        patient("c6", "1966-01-01"),
        patient("c7", "1962-01-01"),
        patient("c8", "1979-01-01"),
        patient("c9", "1948-06-01"),
        patient("c10", "1974-12-31"),
        patient("c11", "1973-01-01"),
        patient("c12", "1964-01-01"),
    ];
    res.extend([
        procedure("s1", "c1", "73761001", "completed", "2016-06-01"),
        procedure("s2", "c2", "73761001", "completed", "2014-12-31"),
        lab("s3", "c3", "2335-8", "2024-03-01"),
        lab("s4", "c4", "2335-8", "2023-06-01"),
        procedure("s5", "c5", "44441009", "completed", "2021-01-01"),
        condition("s6", "c6", ICD, "C18.9"),
        procedure("s7", "c7", "26390003", "completed", "2010-05-05"),
        procedure("s11", "c11", "73761001", "not-done", "2022-01-01"),
        lab("s12", "c12", "77353-1", "2022-02-01"),
    ]);
    res
}

#[tokio::test]
async fn colorectal_screening_overdue() {
    let r = run(&colorectal_population(), "colorectal-screening-overdue").await;
    assert_eq!(
        members(&r, "initial-population"),
        refs(
            "Patient",
            &["c1", "c10", "c11", "c12", "c2", "c3", "c4", "c5", "c6", "c7"]
        )
    );
    assert_eq!(
        members(&r, "denominator-exclusion"),
        refs("Patient", &["c6", "c7"])
    );
    assert_eq!(
        members(&r, "numerator"),
        refs("Patient", &["c10", "c11", "c2", "c4"])
    );
    assert_eq!(r.score, Some(0.5));
}

#[tokio::test]
async fn reports_are_fhir_measure_reports_and_groups() {
    let r = run(&colorectal_population(), "colorectal-screening-overdue").await;
    let summary = r.measure_report(ReportType::Summary, None);
    assert_eq!(summary["resourceType"], "MeasureReport");
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["status"], "complete");
    assert_eq!(
        summary["measure"],
        "urn:salus:measure:colorectal-screening-overdue"
    );
    assert_eq!(
        summary["period"],
        json!({"start": "2024-01-01", "end": "2024-12-31"})
    );
    assert!(summary.get("contained").is_none());
    let pops = summary["group"][0]["population"].as_array().unwrap();
    let counts: Vec<(String, u64)> = pops
        .iter()
        .map(|p| {
            (
                p["code"]["coding"][0]["code"].as_str().unwrap().to_string(),
                p["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        counts,
        vec![
            ("initial-population".to_string(), 10),
            ("denominator".to_string(), 10),
            ("denominator-exclusion".to_string(), 2),
            ("numerator".to_string(), 4)
        ]
    );
    assert_eq!(summary["group"][0]["measureScore"]["value"], json!(0.5));
    let list = r.measure_report(ReportType::SubjectList, None);
    assert_eq!(list["type"], "subject-list");
    let numerator = &list["group"][0]["population"][3];
    assert_eq!(numerator["subjectResults"]["reference"], "#numerator");
    let contained = list["contained"].as_array().unwrap();
    let num_list = contained.iter().find(|c| c["id"] == "numerator").unwrap();
    assert_eq!(num_list["resourceType"], "List");
    assert_eq!(num_list["entry"].as_array().unwrap().len(), 4);
    let g = r.group("denominator-exclusion").unwrap();
    assert_eq!(g["type"], "person");
    assert_eq!(g["actual"], true);
    assert_eq!(g["member"].as_array().unwrap().len(), 2);
    assert!(r.group("no-such-population").is_none());
}

#[tokio::test]
async fn materialized_views_give_the_same_answers() {
    let dir = tempfile::tempdir().unwrap();
    let mut all = diabetes_population();
    all.extend(readmission_population());
    let stats = measures::materialize(&Materializer::new(dir.path()), &all, Some("1")).unwrap();
    assert_eq!(stats.len(), 6);
    let on_disk = Analytics::new(dir.path()).unwrap();
    let mut in_memory = Analytics::in_memory();
    measures::register_in_memory(&mut in_memory, &all).unwrap();
    for id in ["diabetes-hba1c-poor-control", "readmission-30-day"] {
        let a = measures::evaluate(&on_disk, id, &period()).await.unwrap();
        let b = measures::evaluate(&in_memory, id, &period()).await.unwrap();
        assert_eq!(a, b, "{id}");
    }
}

#[tokio::test]
async fn unknown_measures_and_bad_periods_are_user_errors() {
    let sql = Analytics::in_memory();
    let e = measures::evaluate(&sql, "nope", &period())
        .await
        .unwrap_err();
    assert!(e.is_user_error());
    assert!(MeasurePeriod::new("2024-13-01", "2024-12-31")
        .unwrap_err()
        .is_user_error());
    // Without the measure views registered the SQL names unknown tables: a user error.
    let e = measures::evaluate(&sql, "ed-visits-per-1000", &period())
        .await
        .unwrap_err();
    assert!(e.is_user_error(), "{e:?}");
    assert!(measures::sql_for("readmission-30-day", &period())
        .unwrap()
        .contains("mx_encounter"));
}
