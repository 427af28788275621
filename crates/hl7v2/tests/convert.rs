//! Conversion behaviour on made-up messages: identities and conditional entries, value
//! types, merges, appointments, immunizations, documents, errors. Every Bundle is checked
//! with the Salus validator.

mod common;
use common::SEEDS;
use salus_hl7v2::{
    convert, convert_for_template, convert_text, parse, ConvertError, ConvertOptions, FollowUp,
};
use serde_json::Value;

fn valid(bundle: &Value) {
    let errors: Vec<String> = salus_fhir::validate::validate_resource(bundle)
        .into_iter()
        .filter(|i| i.is_error())
        .map(|i| format!("{:?}: {}", i.expression, i.diagnostics))
        .collect();
    assert!(errors.is_empty(), "invalid bundle: {errors:#?}\n{bundle:#}");
}

fn entries<'a>(b: &'a Value, rtype: &str) -> Vec<&'a Value> {
    b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["resource"]["resourceType"] == rtype)
        .collect()
}

#[test]
fn every_seed_converts_to_a_valid_transaction() {
    for s in SEEDS {
        let c = convert_text(s).unwrap_or_else(|e| panic!("{e}\n{s}"));
        assert_eq!(c.bundle["type"], "transaction");
        valid(&c.bundle);
        for e in c.bundle["entry"].as_array().unwrap() {
            assert!(e["fullUrl"].as_str().unwrap().starts_with("urn:uuid:"));
        }
    }
}

#[test]
fn adt_a01_patient_and_encounter_are_conditional_updates() {
    let c = convert_text(SEEDS[0]).unwrap();
    assert_eq!(c.control_id, "C1");
    assert_eq!(c.message_type.to_string(), "ADT^A01^ADT_A01");
    let p = entries(&c.bundle, "Patient");
    assert_eq!(p.len(), 1);
    assert_eq!(p[0]["request"]["method"], "PUT");
    assert_eq!(
        p[0]["request"]["url"],
        "Patient?identifier=urn:oid:1.2.3|MRN1"
    );
    let pat = &p[0]["resource"];
    assert_eq!(pat["gender"], "female");
    assert_eq!(pat["birthDate"], "1980-02-29");
    assert_eq!(pat["name"][0]["family"], "DOE");
    assert_eq!(pat["name"][0]["use"], "official");
    assert_eq!(pat["name"][1]["use"], "usual");
    assert_eq!(pat["identifier"][1]["value"], "999");
    assert_eq!(pat["telecom"][1]["system"], "email");
    assert_eq!(pat["maritalStatus"]["coding"][0]["code"], "M");
    assert_eq!(pat["contact"][0]["name"]["family"], "DOE");
    let e = entries(&c.bundle, "Encounter");
    assert_eq!(
        e[0]["request"]["url"],
        "Encounter?identifier=urn:salus:hl7v2:id:HOSP|V100"
    );
    let enc = &e[0]["resource"];
    assert_eq!(enc["class"]["code"], "IMP");
    assert_eq!(enc["status"], "in-progress");
    // PV1-44 has no zone: MSH-7's (+01:00) applies.
    assert_eq!(enc["period"]["start"], "2024-01-02T03:00:00+01:00");
    assert_eq!(enc["subject"]["reference"], p[0]["fullUrl"]);
    assert_eq!(
        enc["participant"][0]["type"][0]["coding"][0]["code"],
        "ATND"
    );
    // Practitioners are conditional too, and shared by reference.
    let pr = entries(&c.bundle, "Practitioner");
    assert_eq!(pr.len(), 2);
    assert!(pr[0]["request"]["url"]
        .as_str()
        .unwrap()
        .starts_with("Practitioner?identifier="));
    let a = entries(&c.bundle, "AllergyIntolerance");
    assert_eq!(a[0]["resource"]["criticality"], "high");
    assert_eq!(a[0]["resource"]["reaction"].as_array().unwrap().len(), 2);
    assert_eq!(a[0]["request"]["method"], "POST");
    let cond = entries(&c.bundle, "Condition");
    assert_eq!(
        cond[0]["resource"]["code"]["coding"][0]["system"],
        "http://hl7.org/fhir/sid/icd-10"
    );
    let obs = entries(&c.bundle, "Observation");
    assert_eq!(obs[0]["resource"]["valueQuantity"]["code"], "/min");
    let prov = entries(&c.bundle, "Provenance");
    assert_eq!(prov.len(), 1);
    assert_eq!(
        prov[0]["resource"]["target"].as_array().unwrap().len(),
        c.bundle["entry"].as_array().unwrap().len() - 1
    );
    assert_eq!(prov[0]["resource"]["recorded"], "2024-01-02T03:04:05+01:00");
}

#[test]
fn conversion_is_deterministic_and_repeats_update() {
    let a = convert_text(SEEDS[0]).unwrap();
    let b = convert_text(SEEDS[0]).unwrap();
    assert_eq!(a.bundle, b.bundle);
    // An A08 for the same patient targets the same conditional URL.
    let a08 = SEEDS[0]
        .replace("ADT^A01^ADT_A01|C1", "ADT^A08^ADT_A01|C1b")
        .replace("EVN|A01", "EVN|A08");
    let c = convert_text(&a08).unwrap();
    assert_eq!(
        entries(&c.bundle, "Patient")[0]["request"]["url"],
        entries(&a.bundle, "Patient")[0]["request"]["url"]
    );
    assert_eq!(
        entries(&c.bundle, "Encounter")[0]["resource"]["status"],
        "in-progress"
    );
}

#[test]
fn encounter_status_follows_the_event() {
    for (event, status) in [
        ("A02", "in-progress"),
        ("A03", "in-progress"), // no PV1-45 in the seed: still the A03 status below
        ("A05", "planned"),
        ("A11", "cancelled"),
        ("A12", "in-progress"),
        ("A13", "in-progress"),
    ] {
        let msg = SEEDS[0].replace("ADT^A01^ADT_A01", &format!("ADT^{event}^ADT_A01"));
        let c = convert_text(&msg).unwrap();
        let got = entries(&c.bundle, "Encounter")[0]["resource"]["status"].clone();
        let want = if event == "A03" { "finished" } else { status };
        assert_eq!(got, want, "{event}");
        valid(&c.bundle);
    }
    // A28/A31 (person information) with a visit-less PV1: no Encounter.
    let msg =
        "MSH|^~\\&|A|B|C|D|20240101||ADT^A28^ADT_A05|X|P|2.5\rPID|1||1^^^H^MR||A^B\rPV1|1|N\r";
    let c = convert_text(msg).unwrap();
    assert!(entries(&c.bundle, "Encounter").is_empty());
    valid(&c.bundle);
}

#[test]
fn oru_values_and_report() {
    let c = convert_text(SEEDS[1]).unwrap();
    valid(&c.bundle);
    let obs: Vec<&Value> = entries(&c.bundle, "Observation")
        .into_iter()
        .map(|e| &e["resource"])
        .collect();
    assert_eq!(obs.len(), 8);
    let q = &obs[0]["valueQuantity"];
    assert_eq!(q["value"].to_string(), "187");
    assert_eq!(q["system"], "http://unitsofmeasure.org");
    assert_eq!(q["code"], "mg/dL");
    assert_eq!(
        obs[0]["referenceRange"][0]["high"]["value"].to_string(),
        "200"
    );
    assert_eq!(obs[0]["interpretation"][0]["coding"][0]["code"], "N");
    assert_eq!(obs[0]["note"][0]["text"], "fasting");
    assert_eq!(obs[0]["status"], "final");
    assert_eq!(obs[0]["effectiveDateTime"], "2024-01-02");
    assert_eq!(obs[1]["valueQuantity"]["comparator"], "<");
    assert_eq!(
        obs[2]["valueRatio"]["denominator"]["value"].to_string(),
        "128"
    );
    assert_eq!(obs[3]["valueString"], "see & note\nline two");
    assert_eq!(obs[3]["status"], "preliminary");
    assert_eq!(
        obs[4]["valueCodeableConcept"]["coding"][0]["system"],
        "http://snomed.info/sct"
    );
    assert_eq!(obs[4]["status"], "corrected");
    assert_eq!(obs[5]["valueDateTime"], "2024-01-01");
    assert_eq!(obs[6]["valueDateTime"], "2024-01-02T03:04:00Z");
    assert_eq!(obs[7]["valueTime"], "12:30:00");
    // Results of an order get an identity derived from the filler number and OBX-1/3/4:
    // a resent or corrected result updates its Observation.
    let first = &entries(&c.bundle, "Observation")[0];
    assert_eq!(
        first["request"]["url"],
        "Observation?identifier=urn:salus:hl7v2:id:LAB|F1/1/2093-3/"
    );
    assert_eq!(first["request"]["method"], "PUT");
    let dr = entries(&c.bundle, "DiagnosticReport");
    assert_eq!(dr.len(), 1);
    let r = &dr[0]["resource"];
    assert_eq!(r["status"], "final");
    assert_eq!(r["result"].as_array().unwrap().len(), 8);
    assert_eq!(
        dr[0]["request"]["url"],
        "DiagnosticReport?identifier=urn:salus:hl7v2:id:LAB|F1"
    );
    let sr = entries(&c.bundle, "ServiceRequest");
    assert_eq!(r["basedOn"][0]["reference"], sr[0]["fullUrl"]);
    assert_eq!(sr[0]["resource"]["status"], "completed");
}

#[test]
fn orders_become_service_requests() {
    let c = convert_text(SEEDS[2]).unwrap();
    valid(&c.bundle);
    let sr = entries(&c.bundle, "ServiceRequest");
    assert_eq!(sr.len(), 2);
    let s = &sr[0]["resource"];
    assert_eq!(s["status"], "active");
    assert_eq!(s["intent"], "order");
    assert_eq!(s["priority"], "stat");
    assert_eq!(s["code"]["coding"][0]["code"], "57698-3");
    assert_eq!(s["note"][0]["text"], "urgent");
    assert_eq!(s["authoredOn"], "2024-01-02T03:04:05Z");
    assert_eq!(
        sr[0]["request"]["url"],
        "ServiceRequest?identifier=urn:salus:hl7v2:id:EHR|PL1"
    );
    // The pharmacy order: the code comes from RXO-1.
    assert_eq!(sr[1]["resource"]["code"]["coding"][0]["code"], "RX1");
    let c = convert_text(SEEDS[3]).unwrap();
    valid(&c.bundle);
    assert_eq!(entries(&c.bundle, "ServiceRequest").len(), 1);
}

#[test]
fn appointments() {
    let c = convert_text(SEEDS[4]).unwrap();
    valid(&c.bundle);
    let a = entries(&c.bundle, "Appointment");
    assert_eq!(
        a[0]["request"]["url"],
        "Appointment?identifier=urn:salus:hl7v2:id:SCH|A1F"
    );
    let ap = &a[0]["resource"];
    assert_eq!(ap["status"], "booked");
    assert_eq!(ap["start"], "2024-01-10T09:00:00Z");
    assert_eq!(ap["end"], "2024-01-10T09:30:00Z");
    assert_eq!(ap["minutesDuration"], 30);
    assert_eq!(ap["comment"], "bring records");
    assert_eq!(ap["participant"].as_array().unwrap().len(), 3);
    let c = convert_text(SEEDS[5]).unwrap();
    valid(&c.bundle);
    assert_eq!(
        entries(&c.bundle, "Appointment")[0]["resource"]["status"],
        "cancelled"
    );
}

#[test]
fn immunization() {
    let c = convert_text(SEEDS[6]).unwrap();
    valid(&c.bundle);
    let im = entries(&c.bundle, "Immunization");
    assert_eq!(
        im[0]["request"]["url"],
        "Immunization?identifier=urn:salus:hl7v2:id:IIS|IMM1"
    );
    let i = &im[0]["resource"];
    assert_eq!(i["status"], "completed");
    assert_eq!(
        i["vaccineCode"]["coding"][0]["system"],
        "http://hl7.org/fhir/sid/cvx"
    );
    assert_eq!(i["occurrenceDateTime"], "2024-01-02");
    assert_eq!(i["primarySource"], true);
    assert_eq!(i["lotNumber"], "LOT1");
    assert_eq!(i["doseQuantity"]["code"], "mL");
    assert_eq!(i["route"]["coding"][0]["code"], "C28161");
    assert_eq!(i["programEligibility"][0]["coding"][0]["code"], "V02");
    assert_eq!(i["fundingSource"]["coding"][0]["code"], "VXC1");
    assert!(entries(&c.bundle, "Observation").is_empty());
}

#[test]
fn document_reference() {
    let c = convert_text(SEEDS[7]).unwrap();
    valid(&c.bundle);
    let d = entries(&c.bundle, "DocumentReference");
    let doc = &d[0]["resource"];
    assert_eq!(doc["status"], "current");
    assert_eq!(doc["docStatus"], "final");
    assert_eq!(doc["type"]["coding"][0]["code"], "DS");
    assert_eq!(doc["date"], "2024-01-02T03:04:05Z");
    let content = doc["content"].as_array().unwrap();
    assert_eq!(content.len(), 2);
    assert_eq!(content[0]["attachment"]["contentType"], "text/plain");
    assert_eq!(
        content[0]["attachment"]["data"],
        "UGF0aWVudCBkaXNjaGFyZ2VkIGluIGdvb2QgY29uZGl0aW9uLgpGb2xsb3cgdXAgaW4gMiB3ZWVrcy4="
    );
    assert_eq!(content[1]["attachment"]["contentType"], "application/pdf");
    assert_eq!(content[1]["attachment"]["data"], "SGVsbG8=");
    assert_eq!(
        d[0]["request"]["url"],
        "DocumentReference?identifier=urn:salus:hl7v2:id:EHR|DOC1"
    );
}

#[test]
fn merge_a40() {
    let c = convert_text(SEEDS[8]).unwrap();
    valid(&c.bundle);
    let p = entries(&c.bundle, "Patient");
    assert_eq!(p.len(), 2);
    let survivor = &p[0];
    let old = &p[1];
    assert_eq!(
        survivor["request"]["url"],
        "Patient?identifier=urn:salus:hl7v2:id:HOSP|NEW1"
    );
    // The merged record: the old identifier without the survivor's (a resent A40 still
    // finds one record once the survivor carries the old identifier too).
    assert_eq!(
        old["request"]["url"],
        "Patient?identifier=urn:salus:hl7v2:id:HOSP|OLD1&identifier:not=urn:salus:hl7v2:id:HOSP|NEW1"
    );
    assert_eq!(survivor["resource"]["active"], true);
    let ids: Vec<&str> = survivor["resource"]["identifier"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["value"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["NEW1", "OLD1"]);
    assert_eq!(old["resource"]["active"], false);
    assert_eq!(old["resource"]["link"][0]["type"], "replaced-by");
    assert_eq!(
        old["resource"]["link"][0]["other"]["reference"],
        survivor["fullUrl"]
    );
    assert_eq!(old["resource"]["name"][0]["family"], "DOE");
    assert_eq!(
        c.follow_up,
        vec![FollowUp::RelinkPatient {
            from: "Patient?identifier=urn:salus:hl7v2:id:HOSP|OLD1&identifier:not=urn:salus:hl7v2:id:HOSP|NEW1".into(),
            to: "Patient?identifier=urn:salus:hl7v2:id:HOSP|NEW1".into(),
            resource_types: salus_hl7v2::RELINK_TYPES,
        }]
    );
    let no_mrg = SEEDS[8].replace("MRG|OLD1^^^HOSP^MR||||||DOE^J\r", "");
    assert!(matches!(
        convert_text(&no_mrg),
        Err(ConvertError::MissingSegment { segment: "MRG", .. })
    ));
}

#[test]
fn errors_name_segment_and_field() {
    let bad = SEEDS[0].replace("19800229", "2024-13-01");
    assert_eq!(
        convert_text(&bad).unwrap_err().to_string(),
        "PID-7: \"2024-13-01\" is not a valid TS"
    );
    let bad = SEEDS[1].replace("||187|", "||1x7|");
    assert_eq!(
        convert_text(&bad).unwrap_err().to_string(),
        "OBX-5 (segment 6): \"1x7\" is not a valid NM"
    );
    let bad = SEEDS[6].replace("|20240102|20240102|08^HepB", "|||08^HepB");
    assert_eq!(
        convert_text(&bad).unwrap_err().to_string(),
        "RXA-3 (segment 4): the date/time of administration is required"
    );
    let qry = "MSH|^~\\&|A|B|C|D|20240101||QRY^A19|X|P|2.5\rQRD|1\r";
    let e = convert_text(qry).unwrap_err();
    assert!(matches!(e, ConvertError::Unsupported { .. }));
    assert!(e
        .to_string()
        .starts_with("unsupported message type QRY^A19: supported are ADT_A01"));
    let no_pid = "MSH|^~\\&|A|B|C|D|20240101||ADT^A01|X|P|2.5\rEVN|A01\r";
    assert_eq!(
        convert_text(no_pid).unwrap_err().to_string(),
        "PID: segment required by ADT^A01 is missing"
    );
}

#[test]
fn root_template_is_checked_against_msh9() {
    let opts = ConvertOptions::default();
    assert!(convert_for_template(SEEDS[0], "ADT_A01", &opts).is_ok());
    assert!(convert_for_template(SEEDS[0], "adt_a01", &opts).is_ok());
    // SIU^S15 with structure SIU_S12: either name is accepted.
    assert!(convert_for_template(SEEDS[5], "SIU_S15", &opts).is_ok());
    assert!(convert_for_template(SEEDS[5], "SIU_S12", &opts).is_ok());
    let e = convert_for_template(SEEDS[0], "ORU_R01", &opts).unwrap_err();
    assert_eq!(
        e.to_string(),
        "rootTemplate \"ORU_R01\" does not match the message type ADT^A01^ADT_A01 (MSH-9)"
    );
}

#[test]
fn options_change_systems_and_zones() {
    let mut opts = ConvertOptions::default();
    opts.namespace_systems
        .insert("HOSP".into(), "http://hospital.example/mrn".into());
    opts.default_offset = Some("-05:00".into());
    opts.provenance = false;
    let msg = "MSH|^~\\&|A|B|C|D|20240101||ADT^A01|X|P|2.5\rPID|1||7^^^HOSP^MR||A^B\rPV1|1|E|||||||||||||||||V1^^^HOSP|||||||||||||||||||||||||202401011200\r";
    let c = salus_hl7v2::convert_with(&parse(msg).unwrap(), &opts).unwrap();
    valid(&c.bundle);
    assert_eq!(
        entries(&c.bundle, "Patient")[0]["request"]["url"],
        "Patient?identifier=http://hospital.example/mrn|7"
    );
    let e = &entries(&c.bundle, "Encounter")[0]["resource"];
    assert_eq!(e["class"]["code"], "EMER");
    assert_eq!(e["period"]["start"], "2024-01-01T12:00:00-05:00");
    assert!(entries(&c.bundle, "Provenance").is_empty());
    // Without any zone the time is dropped rather than invented.
    let c = convert(&parse(msg).unwrap()).unwrap();
    assert_eq!(
        entries(&c.bundle, "Encounter")[0]["resource"]["period"]["start"],
        "2024-01-01"
    );
}

#[test]
fn one_report_split_over_two_obr_keeps_all_results() {
    let msg = "MSH|^~\\&|LAB|H|EHR|H|20240102030405+0000||ORU^R01|X|P|2.5.1\rPID|1||1^^^H^MR\rOBR|1||F9^LAB|1^Panel^LN|||20240102\rOBX|1|NM|2^A^LN||1||||||F\rOBR|2||F9^LAB|1^Panel^LN|||20240102\rOBX|1|NM|3^B^LN||2||||||F\r";
    let c = convert_text(msg).unwrap();
    valid(&c.bundle);
    let dr = entries(&c.bundle, "DiagnosticReport");
    assert_eq!(dr.len(), 1);
    assert_eq!(dr[0]["resource"]["result"].as_array().unwrap().len(), 2);
    assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings); // ServiceRequest and report merged
}
