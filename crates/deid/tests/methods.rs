//! Every method and every parameter, on small made-up resources with known answers.

use salus_deid::{decrypt, hash_hex, Anonymizer, Config, DeidError, Ymd};
use serde_json::{json, Value};

const TODAY: Ymd = Ymd {
    year: 2024,
    month: 6,
    day: 15,
};

fn engine(rules: Value, params: Value) -> Anonymizer {
    let cfg = json!({"fhirVersion": "R4", "fhirPathRules": rules, "parameters": params});
    Anonymizer::new(Config::from_value(&cfg).unwrap()).with_today(TODAY)
}

fn run(rules: Value, params: Value, resource: Value) -> Value {
    engine(rules, params).anonymize(resource).unwrap()
}

fn patient() -> Value {
    json!({
        "resourceType": "Patient",
        "id": "p1",
        "identifier": [{"system": "http://ssn", "value": "999-12-3456"}],
        "name": [{"use": "official", "family": "Chalmers", "given": ["Peter", "James"]}],
        "telecom": [{"system": "phone", "value": "555-201-3344", "use": "home"}],
        "gender": "male",
        "birthDate": "1974-12-25",
        "address": [{"line": ["534 Erewhon St"], "city": "PleasantVille", "state": "Vic", "postalCode": "98052", "country": "AU"}],
        "managingOrganization": {"reference": "Organization/1", "display": "Acme"}
    })
}

// ---- keep / redact and rule order ----

#[test]
fn first_matching_rule_wins() {
    let out = run(
        json!([
            {"path": "nodesByType('Address').country", "method": "keep"},
            {"path": "nodesByType('Address')", "method": "redact"},
            {"path": "Patient.name.family", "method": "keep"},
            {"path": "Patient.name", "method": "redact"}
        ]),
        json!({}),
        patient(),
    );
    assert_eq!(out["address"], json!([{"country": "AU"}]));
    assert_eq!(out["name"], json!([{"family": "Chalmers"}]));
    assert_eq!(out["gender"], "male", "nodes no rule selects are kept");
}

#[test]
fn redact_removes_and_prunes() {
    let out = run(
        json!([
            {"path": "Patient.telecom.value", "method": "redact"},
            {"path": "Patient.identifier", "method": "redact"},
            {"path": "Patient.birthDate", "method": "redact"},
            {"path": "nodesByType('Address')", "method": "redact"}
        ]),
        json!({}),
        patient(),
    );
    assert_eq!(out["telecom"], json!([{"system": "phone", "use": "home"}]));
    assert!(out.get("identifier").is_none());
    assert!(
        out.get("birthDate").is_none(),
        "no partial dates unless enabled"
    );
    assert!(
        out.get("address").is_none(),
        "no partial zip codes unless enabled"
    );
    // Key order is kept.
    let keys: Vec<&String> = out.as_object().unwrap().keys().collect();
    assert_eq!(keys[0], "resourceType");
}

#[test]
fn keep_alone_changes_nothing() {
    let out = run(
        json!([{"path": "Patient", "method": "keep"}]),
        json!({}),
        patient(),
    );
    assert_eq!(out, patient());
}

// ---- partial redaction parameters ----

#[test]
fn partial_dates_keep_the_year_unless_over_89() {
    let p = json!({
        "resourceType": "Patient", "id": "p",
        "birthDate": "1974-12-25",
        "deceasedDateTime": "2020-03-04T10:00:00+01:00",
        "extension": [
            {"url": "http://x/old", "valueDate": "1930-01-01"},
            {"url": "http://x/edge", "valueDate": "1934-06-16"},
            {"url": "http://x/when", "valueInstant": "2020-03-04T10:00:00Z"}
        ]
    });
    let out = run(
        json!([
            {"path": "nodesByType('date')", "method": "redact"},
            {"path": "nodesByType('dateTime')", "method": "redact"},
            {"path": "nodesByType('instant')", "method": "redact"}
        ]),
        json!({"enablePartialDatesForRedact": true}),
        p,
    );
    assert_eq!(out["birthDate"], "1974");
    assert_eq!(out["deceasedDateTime"], "2020");
    // 1930 → over 89 on 2024-06-15: gone (the extension goes with its value).
    // 1934-06-16: 89 years old until the next day: the year stays.
    assert_eq!(
        out["extension"],
        json!([{"url": "http://x/edge", "valueDate": "1934"}]),
        "an instant cannot be a year alone: redacted whole"
    );
}

#[test]
fn partial_zip_codes_keep_three_digits_or_000() {
    let p = json!({"resourceType": "Patient", "id": "p", "address": [
        {"postalCode": "98052", "state": "WA"},
        {"postalCode": "03601"},
        {"postalCode": "123456789"},
        {"postalCode": "K1A 0B1"}
    ]});
    let out = run(
        json!([{"path": "nodesByType('Address').postalCode", "method": "redact"}]),
        json!({"enablePartialZipCodesForRedact": true, "restrictedZipCodeTabulationAreas": ["036", "059"]}),
        p.clone(),
    );
    assert_eq!(
        out["address"],
        json!([{"postalCode": "980**", "state": "WA"}, {"postalCode": "000**"}, {"postalCode": "123******"}])
    );
    let out = run(
        json!([{"path": "nodesByType('Address').postalCode", "method": "redact"}]),
        json!({"enablePartialZipCodesForRedact": false}),
        p,
    );
    assert_eq!(out["address"], json!([{"state": "WA"}]));
}

#[test]
fn partial_ages_keep_89_and_under() {
    let obs = |v: Value| {
        json!({"resourceType": "Condition", "id": "c", "subject": {"reference": "Patient/p"},
            "onsetAge": v})
    };
    let rules = json!([{"path": "nodesByType('Age')", "method": "redact"}]);
    let on = json!({"enablePartialAgesForRedact": true});
    let age = |v: f64, code: &str| json!({"value": v, "unit": code, "system": "http://unitsofmeasure.org", "code": code});
    let out = run(rules.clone(), on.clone(), obs(age(89.0, "a")));
    assert_eq!(out["onsetAge"], age(89.0, "a"));
    let out = run(rules.clone(), on.clone(), obs(age(90.0, "a")));
    assert!(out.get("onsetAge").is_none());
    let out = run(rules.clone(), on.clone(), obs(age(1000.0, "mo")));
    assert_eq!(
        out["onsetAge"]["value"],
        json!(1000.0),
        "1000 months is 83 years"
    );
    let out = run(rules.clone(), on, obs(age(1100.0, "mo")));
    assert!(out.get("onsetAge").is_none());
    let out = run(rules, json!({}), obs(age(30.0, "a")));
    assert!(
        out.get("onsetAge").is_none(),
        "without the parameter every age goes"
    );
    // Directly on the value.
    let out = run(
        json!([{"path": "Condition.onset.value", "method": "redact"}]),
        json!({"enablePartialAgesForRedact": true}),
        obs(age(95.0, "a")),
    );
    assert_eq!(out["onsetAge"].get("value"), None);
}

// ---- dateShift ----

#[test]
fn date_shift_with_fixed_offset() {
    let p = json!({"resourceType": "Encounter", "id": "e", "status": "finished",
        "period": {"start": "2020-12-25T10:00:00-05:00", "end": "2021-01-01"},
        "meta": {"lastUpdated": "2021-02-28T23:59:59.123Z"},
        "extension": [{"url": "http://x/y", "valueDate": "2019"},
                      {"url": "http://x/ym", "valueDateTime": "2019-07"},
                      {"url": "http://x/old", "valueDate": "1920"}]});
    let out = run(
        json!([
            {"path": "nodesByType('date')", "method": "dateShift"},
            {"path": "nodesByType('dateTime')", "method": "dateShift"},
            {"path": "nodesByType('instant')", "method": "dateShift"}
        ]),
        json!({"dateShiftKey": "k", "dateShiftFixedOffsetInDays": 10}),
        p.clone(),
    );
    assert_eq!(out["period"]["start"], "2021-01-04T10:00:00-05:00");
    assert_eq!(out["period"]["end"], "2021-01-11");
    assert_eq!(out["meta"]["lastUpdated"], "2021-03-10T23:59:59.123Z");
    assert_eq!(
        out["extension"],
        json!([{"url": "http://x/y", "valueDate": "2019"}, {"url": "http://x/ym", "valueDateTime": "2019"}]),
        "year-only values stay (year-month becomes the year); a year over 89 years ago goes"
    );
    let out = run(
        json!([{"path": "Encounter.period", "method": "dateShift"}]),
        json!({"dateShiftFixedOffsetInDays": -366}),
        p,
    );
    assert_eq!(out["period"]["start"], "2019-12-25T10:00:00-05:00");
}

fn shift_of(out: &Value, field: &str, original: &str) -> i64 {
    let days = |s: &str| {
        let y: i64 = s[0..4].parse().unwrap();
        let m: i64 = s[5..7].parse().unwrap();
        let d: i64 = s[8..10].parse().unwrap();
        // Days from civil (valid for these test dates).
        let (y, m) = if m <= 2 { (y - 1, m + 12) } else { (y, m) };
        365 * y + y / 4 - y / 100 + y / 400 + (153 * (m - 3) + 2) / 5 + d
    };
    days(out[field].as_str().unwrap()) - days(original)
}

#[test]
fn date_shift_resource_scope_is_per_resource_and_key() {
    let rules = json!([{"path": "nodesByType('date')", "method": "dateShift"}, {"path": "nodesByType('dateTime')", "method": "dateShift"}]);
    let e = engine(
        rules.clone(),
        json!({"dateShiftKey": "key-1", "dateShiftScope": "resource"}),
    );
    let mut offsets = std::collections::HashSet::new();
    for i in 0..40 {
        let p = json!({"resourceType": "Patient", "id": format!("p{i}"), "birthDate": "2000-06-15", "deceasedDateTime": "2010-06-15T00:00:00Z"});
        let out = e.anonymize(p.clone()).unwrap();
        let a = shift_of(&out, "birthDate", "2000-06-15");
        let b = shift_of(&out, "deceasedDateTime", "2010-06-15");
        assert_eq!(a, b, "one offset per resource");
        assert!((-50..=50).contains(&a) && a != 0, "offset {a}");
        assert_eq!(
            e.anonymize(p).unwrap()["birthDate"],
            out["birthDate"],
            "deterministic"
        );
        offsets.insert(a);
    }
    assert!(offsets.len() > 10, "offsets vary with the resource id");
    // Another key, other offsets.
    let e2 = engine(rules, json!({"dateShiftKey": "key-2"}));
    let differs = (0..20).any(|i| {
        let p =
            json!({"resourceType": "Patient", "id": format!("p{i}"), "birthDate": "2000-06-15"});
        e.anonymize(p.clone()).unwrap()["birthDate"] != e2.anonymize(p).unwrap()["birthDate"]
    });
    assert!(differs);
}

#[test]
fn date_shift_file_and_folder_scopes() {
    let rules = json!([{"path": "Patient.birthDate", "method": "dateShift"}]);
    let lines = (0..20)
        .map(|i| {
            json!({"resourceType": "Patient", "id": format!("p{i}"), "birthDate": "2000-06-15"})
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n");
    let shifts = |e: &Anonymizer, file: &str| {
        let mut out = Vec::new();
        let stats = e
            .anonymize_ndjson_file(lines.as_bytes(), &mut out, file)
            .unwrap();
        assert_eq!(stats.written, 20);
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["birthDate"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect::<std::collections::HashSet<_>>()
    };
    let file = engine(
        rules.clone(),
        json!({"dateShiftKey": "k", "dateShiftScope": "file"}),
    );
    let a = shifts(&file, "Patient.000.ndjson");
    assert_eq!(a.len(), 1, "one offset for the whole file");
    let other = (0..10).any(|i| shifts(&file, &format!("other-{i}.ndjson")) != a);
    assert!(other, "another file, another offset");
    let folder = engine(
        rules,
        json!({"dateShiftKey": "k", "dateShiftScope": "folder"}),
    );
    let b = shifts(&folder, "a.ndjson");
    assert_eq!(b.len(), 1);
    assert_eq!(shifts(&folder, "b.ndjson"), b, "one offset for everything");
}

#[test]
fn date_shift_error_is_raised_or_skipped() {
    let bad = json!({"resourceType": "Patient", "id": "p", "birthDate": "not-a-date"});
    let e = engine(
        json!([{"path": "Patient.birthDate", "method": "dateShift"}]),
        json!({}),
    );
    match e.anonymize(bad.clone()) {
        Err(DeidError::Processing { rule: 0, .. }) => {}
        other => panic!("expected a processing error, got {other:?}"),
    }
    let cfg = json!({"processingError": "skip", "fhirPathRules": [{"path": "Patient.birthDate", "method": "dateShift"}]});
    let e = Anonymizer::new(Config::from_value(&cfg).unwrap());
    let input = format!(
        "{}\n\nnot json\n{}\n",
        bad,
        json!({"resourceType": "Patient", "id": "q", "birthDate": "2000-01-01"})
    );
    let mut out = Vec::new();
    let stats = e.anonymize_ndjson(input.as_bytes(), &mut out).unwrap();
    assert_eq!((stats.lines, stats.written, stats.skipped), (4, 1, 2));
    // Raise mode reports the line.
    let e = engine(
        json!([{"path": "Patient.birthDate", "method": "dateShift"}]),
        json!({}),
    );
    let err = e
        .anonymize_ndjson(input.as_bytes(), Vec::new())
        .unwrap_err();
    assert!(err.to_string().starts_with("line 1:"), "{err}");
}

// ---- cryptoHash ----

#[test]
fn crypto_hash_matches_precomputed_hmac() {
    // python3: hmac.new(b"secret", b"123", hashlib.sha256).hexdigest()
    assert_eq!(
        hash_hex(b"secret", "123"),
        "77de38e4b50e618a0ebb95db61e2f42697391659d82c064a5f81b9f48d85ccd5"
    );
    let p = json!({"resourceType": "Patient", "id": "p1",
    "identifier": [{"value": "999-12-3456"}],
    "managingOrganization": {"reference": "Organization/123"},
    "generalPractitioner": [
        {"reference": "http://example.org/fhir/Practitioner/123/_history/4"},
        {"reference": "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|123"},
        {"reference": "urn:uuid:123"}
    ]});
    let out = run(
        json!([
            {"path": "Resource.id", "method": "cryptoHash"},
            {"path": "nodesByType('Reference').reference", "method": "cryptoHash"},
            {"path": "nodesByType('Identifier').value", "method": "cryptoHash"}
        ]),
        json!({"cryptoHashKey": "secret"}),
        p,
    );
    let h123 = "77de38e4b50e618a0ebb95db61e2f42697391659d82c064a5f81b9f48d85ccd5";
    assert_eq!(
        out["id"],
        "6826ef283b750a8985a15d4d7772ca8b9654ea1c2e7fb3568d4e7822b9cce529"
    );
    assert_eq!(
        out["identifier"][0]["value"],
        "79b620a91cb30dc58c4ef93c85d7f32aabecc136caafd35b16d78656d6b20b4e"
    );
    assert_eq!(
        out["managingOrganization"]["reference"],
        format!("Organization/{h123}")
    );
    let gp = &out["generalPractitioner"];
    assert_eq!(
        gp[0]["reference"],
        format!("http://example.org/fhir/Practitioner/{h123}/_history/4")
    );
    assert_eq!(
        gp[1]["reference"],
        format!("Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|{h123}")
    );
    assert_eq!(
        gp[2]["reference"],
        format!(
            "urn:uuid:{}-{}-{}-{}-{}",
            &h123[0..8],
            &h123[8..12],
            &h123[12..16],
            &h123[16..20],
            &h123[20..32]
        )
    );
}

#[test]
fn empty_crypto_hash_key_is_random_per_engine() {
    let rules = json!([{"path": "Resource.id", "method": "cryptoHash"}]);
    let a = run(rules.clone(), json!({}), patient());
    let b = run(rules, json!({"cryptoHashKey": ""}), patient());
    assert_ne!(a["id"], b["id"]);
    assert_eq!(a["id"].as_str().unwrap().len(), 64);
}

#[test]
fn contained_references_stay_consistent() {
    let p = json!({"resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "x"},
        "contained": [{"resourceType": "Patient", "id": "pat", "name": [{"family": "Doe"}]}],
        "subject": {"reference": "#pat"}});
    let out = run(
        json!([
            {"path": "Resource.id", "method": "cryptoHash"},
            {"path": "nodesByType('Reference').reference", "method": "cryptoHash"},
            {"path": "nodesByType('HumanName')", "method": "redact"}
        ]),
        json!({"cryptoHashKey": "secret"}),
        p,
    );
    let id = out["contained"][0]["id"].as_str().unwrap();
    assert_eq!(out["subject"]["reference"], format!("#{id}"));
    assert!(
        out["contained"][0].get("name").is_none(),
        "rules apply inside contained resources"
    );
}

// ---- encrypt ----

#[test]
fn encrypt_round_trips_with_a_random_iv() {
    let key = "0123456789abcdef0123456789abcdef";
    let rules = json!([{"path": "Patient.name.family", "method": "encrypt"}, {"path": "Patient.identifier.value", "method": "encrypt"}]);
    let e = engine(rules, json!({"encryptKey": key}));
    let a = e.anonymize(patient()).unwrap();
    let b = e.anonymize(patient()).unwrap();
    let fa = a["name"][0]["family"].as_str().unwrap();
    assert_ne!(
        fa,
        b["name"][0]["family"].as_str().unwrap(),
        "a fresh IV each time"
    );
    assert_eq!(decrypt(key.as_bytes(), fa).unwrap(), "Chalmers");
    assert_eq!(
        decrypt(
            key.as_bytes(),
            a["identifier"][0]["value"].as_str().unwrap()
        )
        .unwrap(),
        "999-12-3456"
    );
    assert!(
        decrypt(b"fedcba9876543210fedcba9876543210", fa).is_err()
            || decrypt(b"fedcba9876543210fedcba9876543210", fa).unwrap() != "Chalmers"
    );
}

// ---- substitute ----

#[test]
fn substitute_values_and_fragments() {
    let out = run(
        json!([
            {"path": "Patient.name.family", "method": "substitute", "replaceWith": "Doe"},
            {"path": "Patient.address", "method": "substitute", "replaceWith": {"country": "AU", "line": ["[redacted]"]}},
            {"path": "Patient.telecom", "method": "substitute", "replaceWith": "{\"system\": \"phone\", \"value\": \"000\"}"},
            {"path": "Patient.name.given", "method": "redact"},
            {"path": "Patient.active", "method": "substitute", "replaceWith": "true"},
            {"path": "Patient.multipleBirth", "method": "substitute", "replaceWith": "2"}
        ]),
        json!({}),
        {
            let mut p = patient();
            p["active"] = json!(false);
            p["multipleBirthInteger"] = json!(1);
            p
        },
    );
    assert_eq!(out["name"], json!([{"use": "official", "family": "Doe"}]));
    assert_eq!(
        out["address"],
        json!([{"country": "AU", "line": ["[redacted]"]}])
    );
    assert_eq!(out["telecom"], json!([{"system": "phone", "value": "000"}]));
    assert_eq!(out["active"], json!(true));
    assert_eq!(out["multipleBirthInteger"], json!(2));
}

#[test]
fn substituted_nodes_are_not_processed_again() {
    let out = run(
        json!([
            {"path": "Patient.address", "method": "substitute", "replaceWith": {"city": "Nowhere"}},
            {"path": "nodesByType('Address')", "method": "redact"}
        ]),
        json!({}),
        patient(),
    );
    assert_eq!(out["address"], json!([{"city": "Nowhere"}]));
}

// ---- perturb ----

#[test]
fn perturb_fixed_stays_in_range_and_rounds() {
    let obs = json!({"resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "w"},
        "valueQuantity": {"value": 70.0, "unit": "kg"},
        "component": [{"code": {"text": "n"}, "valueInteger": 10}]});
    let e = engine(
        json!([{"path": "Observation.value", "method": "perturb", "span": 4, "rangeType": "fixed", "roundTo": 1},
               {"path": "Observation.component.value", "method": "perturb", "span": 6}]),
        json!({}),
    );
    let mut distinct = std::collections::HashSet::new();
    for _ in 0..200 {
        let out = e.anonymize(obs.clone()).unwrap();
        let v = &out["valueQuantity"]["value"];
        let x = v.as_f64().unwrap();
        assert!((68.0..=72.0).contains(&x), "{x}");
        let text = v.to_string();
        assert!(
            text.split('.').nth(1).is_none_or(|d| d.len() <= 1),
            "rounded to 1 place: {text}"
        );
        assert_eq!(out["valueQuantity"]["unit"], "kg");
        let n = &out["component"][0]["valueInteger"];
        assert!(n.is_i64(), "integers stay integers: {n}");
        assert!((7..=13).contains(&n.as_i64().unwrap()));
        distinct.insert(text);
    }
    assert!(distinct.len() > 5);
}

#[test]
fn perturb_proportional_and_zero_span() {
    let obs = json!({"resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "w"},
        "valueQuantity": {"value": 200, "unit": "mg"}});
    let e = engine(
        json!([{"path": "nodesByType('Quantity').value", "method": "perturb", "span": 0.1, "rangeType": "proportional", "roundTo": 0}]),
        json!({}),
    );
    for _ in 0..100 {
        let x = e.anonymize(obs.clone()).unwrap()["valueQuantity"]["value"]
            .as_f64()
            .unwrap();
        assert!((190.0..=210.0).contains(&x), "{x}");
        assert_eq!(x.fract(), 0.0);
    }
    let out = run(
        json!([{"path": "nodesByType('Quantity')", "method": "perturb", "span": 0, "roundTo": 2}]),
        json!({}),
        obs,
    );
    assert_eq!(out["valueQuantity"]["value"].to_string(), "200.00");
}

// ---- generalize ----

#[test]
fn generalize_cases_and_other_values() {
    let p = json!({"resourceType": "Patient", "id": "p", "birthDate": "1974-12-25",
        "multipleBirthInteger": 3, "communication": [{"language": {"coding": [{"code": "es-AR"}]}}, {"language": {"coding": [{"code": "fr"}]}}]});
    let out = run(
        json!([
            {"path": "Patient.multipleBirth", "method": "generalize",
             "cases": {"$this < 2": "1", "$this >= 2 and $this < 5": "$this - ($this mod 2)"}, "otherValues": "redact"},
            {"path": "Patient.birthDate", "method": "generalize",
             "cases": {"$this >= @1970-01-01 and $this < @1980-01-01": "@1970"}},
            {"path": "Patient.communication.language.coding.code", "method": "generalize",
             "cases": {"$this in ('es-AR' | 'es-ES')": "'es'"}, "otherValues": "keep"}
        ]),
        json!({}),
        p.clone(),
    );
    assert_eq!(out["multipleBirthInteger"], json!(2));
    assert_eq!(out["birthDate"], "1970");
    assert_eq!(
        out["communication"][0]["language"]["coding"][0]["code"],
        "es"
    );
    assert_eq!(
        out["communication"][1]["language"]["coding"][0]["code"],
        "fr"
    );
    let out = run(
        json!([{"path": "Patient.communication.language.coding.code", "method": "generalize",
                "cases": {"$this = 'es-AR'": "'es'"}}]),
        json!({}),
        p,
    );
    assert_eq!(
        out["communication"],
        json!([{"language": {"coding": [{"code": "es"}]}}]),
        "otherValues defaults to redact"
    );
}

// ---- paths ----

#[test]
fn nodes_by_name_and_type_reach_extensions() {
    let p = json!({"resourceType": "Patient", "id": "p",
        "birthDate": "1974-12-25",
        "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime", "valueDateTime": "1974-12-25T14:35:45-05:00"}]},
        "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace", "valueAddress": {"city": "Townsville", "state": "Vic"}},
                      {"url": "http://x/nick", "valueHumanName": {"given": ["Pete"]}}],
        "contact": [{"name": {"family": "Roe"}, "telecom": [{"value": "555-000-1111"}]}]});
    let out = run(
        json!([
            {"path": "nodesByType('Address').state", "method": "keep"},
            {"path": "nodesByType('Address')", "method": "redact"},
            {"path": "Patient.nodesByType('HumanName')", "method": "redact"},
            {"path": "nodesByName('telecom')", "method": "redact"},
            {"path": "nodesByType('dateTime')", "method": "dateShift"}
        ]),
        json!({"dateShiftFixedOffsetInDays": 1}),
        p,
    );
    assert_eq!(
        out["extension"],
        json!([{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace", "valueAddress": {"state": "Vic"}}])
    );
    assert!(out.get("contact").is_none());
    assert_eq!(
        out["_birthDate"]["extension"][0]["valueDateTime"], "1974-12-26T14:35:45-05:00",
        "primitive extensions are reached"
    );
    assert_eq!(out["birthDate"], "1974-12-25", "a date is not a dateTime");
}

#[test]
fn rules_for_other_resource_types_do_not_apply() {
    let out = run(
        json!([{"path": "Observation.id", "method": "redact"}]),
        json!({}),
        patient(),
    );
    assert_eq!(out["id"], "p1");
}

// ---- scrubber ----

#[test]
fn scrub_narrative_notes_and_attachments() {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let e = engine(json!([]), json!({}));
    // The patient is learnt first, so resources about them are scrubbed of their names.
    e.anonymize(patient()).unwrap();
    let doc = json!({"resourceType": "DocumentReference", "id": "d", "status": "current",
    "subject": {"reference": "Patient/p1"},
    "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Peter Chalmers, born 1974-12-25, phone 555-201-3344</p></div>"},
    "description": "Letter for Mr Chalmers of 534 Erewhon St",
    "content": [
        {"attachment": {"contentType": "text/plain; charset=utf-8", "data": b64("Seen on 3/14/2020. Peter is a 93 year old; SSN 999-12-3456."), "size": 60, "hash": "x"}},
        {"attachment": {"contentType": "image/png", "data": b64("\u{1}PNG")}}
    ]});
    let out = e.anonymize(doc).unwrap();
    assert_eq!(
        out["text"]["div"],
        "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>[NAME] [NAME], born [DATE], phone [PHONE]</p></div>"
    );
    assert_eq!(out["description"], "Letter for Mr [NAME] of [ADDRESS]");
    let a = &out["content"][0]["attachment"];
    let text = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(a["data"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(text, "Seen on [DATE]. [NAME] is a [AGE]; SSN [ID].");
    assert_eq!(a["size"], json!(text.len()));
    assert!(a.get("hash").is_none());
    assert_eq!(
        out["content"][1]["attachment"],
        json!({"contentType": "image/png"}),
        "binary data cannot be scrubbed: removed"
    );
}

#[test]
fn scrub_method_and_switching_free_text_off() {
    let obs = json!({"resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "x"},
        "note": [{"text": "Called Mrs Smith on 2020-01-02 at jo@example.org"}],
        "extension": [{"url": "http://x/remark", "valueString": "Smith said hello"}],
        "performer": [{"reference": "Patient/zz", "display": "Jane Smith"}]});
    let out = run(
        json!([{"path": "nodesByType('Extension').value", "method": "scrub"}]),
        json!({}),
        obs.clone(),
    );
    assert_eq!(
        out["note"][0]["text"],
        "Called Mrs [NAME] on [DATE] at [EMAIL]"
    );
    assert_eq!(out["extension"][0]["valueString"], "[NAME] said hello");
    let out = run(
        json!([]),
        json!({"enableFreeTextScrubbing": false}),
        obs.clone(),
    );
    assert_eq!(out, obs);
}

// ---- Bundles and NDJSON ----

#[test]
fn bundles_keep_full_urls_and_references_consistent() {
    let bundle = json!({"resourceType": "Bundle", "id": "b", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:11111111-1111-1111-1111-111111111111",
         "resource": {"resourceType": "Patient", "id": "11111111-1111-1111-1111-111111111111", "name": [{"family": "Doe"}]},
         "request": {"method": "PUT", "url": "Patient/11111111-1111-1111-1111-111111111111"}},
        {"fullUrl": "http://example.org/fhir/Observation/o1",
         "resource": {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"},
                      "subject": {"reference": "urn:uuid:11111111-1111-1111-1111-111111111111"}},
         "request": {"method": "POST", "url": "Observation"}},
        {"resource": {"resourceType": "Patient", "id": "bad", "birthDate": "garbage"}}
    ]});
    let rules = json!([
        {"path": "Resource.id", "method": "cryptoHash"},
        {"path": "nodesByType('Reference').reference", "method": "cryptoHash"},
        {"path": "nodesByType('HumanName')", "method": "redact"},
        {"path": "nodesByType('date')", "method": "dateShift"}
    ]);
    let cfg = json!({"processingError": "skip", "fhirPathRules": rules, "parameters": {"cryptoHashKey": "secret"}});
    let e = Anonymizer::new(Config::from_value(&cfg).unwrap());
    let (out, stats) = e.anonymize_bundle(bundle).unwrap();
    assert_eq!((stats.entries, stats.skipped), (2, 1));
    let entries = out["entry"].as_array().unwrap();
    let full0 = entries[0]["fullUrl"].as_str().unwrap();
    assert_eq!(
        entries[1]["resource"]["subject"]["reference"], full0,
        "urn:uuid references follow the fullUrl"
    );
    let pid = entries[0]["resource"]["id"].as_str().unwrap();
    assert_eq!(entries[0]["request"]["url"], format!("Patient/{pid}"));
    let oid = entries[1]["resource"]["id"].as_str().unwrap();
    assert_eq!(
        entries[1]["fullUrl"],
        format!("http://example.org/fhir/Observation/{oid}")
    );
    assert_eq!(entries[1]["request"]["url"], "Observation");
    assert!(entries[0]["resource"].get("name").is_none());
    assert!(!out.to_string().contains("11111111"));
}

#[test]
fn ndjson_is_processed_line_by_line() {
    let e = Anonymizer::safe_harbor();
    let input = format!(
        "{}\n{}\n",
        patient(),
        json!({"resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/p1"}})
    );
    let mut out = Vec::new();
    let stats = e.anonymize_ndjson(input.as_bytes(), &mut out).unwrap();
    assert_eq!((stats.lines, stats.written, stats.skipped), (2, 2, 0));
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines[1]["subject"]["reference"],
        format!("Patient/{}", lines[0]["id"].as_str().unwrap())
    );
    for secret in [
        "Chalmers",
        "Peter",
        "555-201-3344",
        "999-12-3456",
        "Erewhon",
        "1974-12-25",
        "p1\"",
    ] {
        assert!(!text.contains(secret), "{secret} survived");
    }
    // Not a resource.
    assert!(matches!(
        e.anonymize(json!([1, 2])),
        Err(DeidError::InvalidResource(_))
    ));
    assert!(matches!(
        e.anonymize(json!({"id": "x"})),
        Err(DeidError::InvalidResource(_))
    ));
}

#[test]
fn safe_harbor_on_a_patient() {
    let e = Anonymizer::safe_harbor().with_today(TODAY);
    let mut p = patient();
    p["extension"] = json!([
        {"url": "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName", "valueString": "Roe"},
        {"url": "http://example.org/remark", "valueString": "Peter Chalmers moved in 2019-05-01"}
    ]);
    p["contact"] = json!([{"name": {"family": "Roe"}, "telecom": [{"system": "email", "value": "roe@example.org"}]}]);
    let out = e.anonymize(p).unwrap();
    assert_eq!(out["birthDate"], "1974");
    assert_eq!(
        out["address"],
        json!([{"state": "Vic", "postalCode": "980**", "country": "AU"}])
    );
    assert_eq!(out["telecom"], json!([{"system": "phone", "use": "home"}]));
    assert_eq!(out["identifier"], json!([{"system": "http://ssn"}]));
    assert!(out.get("name").is_none());
    assert_eq!(
        out["extension"],
        json!([{"url": "http://example.org/remark", "valueString": "[NAME] [NAME] moved in [DATE]"}]),
        "rules reach inside extensions"
    );
    assert_eq!(out["contact"], json!([{"telecom": [{"system": "email"}]}]));
    assert_eq!(
        out["managingOrganization"]["reference"],
        format!("Organization/{}", e.hash("1"))
    );
    assert!(
        salus_fhir::validate::is_valid(&out),
        "{:?}",
        salus_fhir::validate::validate_resource(&out)
    );
}

#[test]
fn the_engine_is_shareable_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Anonymizer>();
    let e = std::sync::Arc::new(Anonymizer::safe_harbor());
    let handles: Vec<_> = (0..2)
        .map(|i| {
            let e = e.clone();
            std::thread::spawn(move || {
                let mut p = patient();
                p["id"] = json!(format!("t{i}"));
                e.anonymize(p).unwrap()
            })
        })
        .collect();
    for h in handles {
        assert!(h.join().unwrap().get("name").is_none());
    }
}

#[test]
fn scrubber_learns_contacts_and_related_persons() {
    let e = engine(json!([]), json!({}));
    let mut p = patient();
    p["contact"] = json!([{"name": {"given": ["Walburga"], "family": "Quintero"}}]);
    e.learn(&p);
    e.learn(&json!({"resourceType": "RelatedPerson", "id": "rp", "patient": {"reference": "Patient/p1"},
        "name": [{"text": "Ottoline Brackenbury"}], "telecom": [{"value": "ottoline@example.net"}]}));
    assert_eq!(e.phi_index().len(), 1);
    let div = "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Visited by Walburga Quintero &amp; <i>Ottoline</i> Brackenbury (ottoline@example.net); Peter&#39;s <span title=\"Chalmers\">file</span> of 12 March 2021</p></div>";
    let obs = json!({"resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "x"},
        "subject": {"reference": "Patient/p1"},
        "text": {"status": "generated", "div": div}});
    let out = e.anonymize(obs).unwrap();
    let got = out["text"]["div"].as_str().unwrap();
    assert_eq!(
        got,
        "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Visited by [NAME] [NAME] &amp; <i>[NAME]</i> [NAME] ([EMAIL]); [NAME]&#39;s <span title=\"[NAME]\">file</span> of [DATE]</p></div>"
    );
    roxmltree::Document::parse(got).expect("still well-formed XHTML");
    // Resources about other patients are not scrubbed of this patient's names.
    let other = json!({"resourceType": "Observation", "id": "o2", "status": "final", "code": {"text": "x"},
        "subject": {"reference": "Patient/someone-else"}, "note": [{"text": "Walburga"}]});
    assert_eq!(e.anonymize(other).unwrap()["note"][0]["text"], "Walburga");
}

#[test]
fn scrubbed_narratives_stay_well_formed() {
    let e = Anonymizer::safe_harbor();
    e.learn(&patient());
    for div in [
        "<div xmlns=\"http://www.w3.org/1999/xhtml\">Peter Chalmers</div>",
        "<div xmlns=\"http://www.w3.org/1999/xhtml\"><table><tr><td>Name</td><td>Peter James Chalmers</td></tr><tr><td>DOB</td><td>25 Dec 1974</td></tr></table></div>",
        "<div xmlns=\"http://www.w3.org/1999/xhtml\"><!-- Chalmers --><a href=\"tel:555-201-3344\" title='Peter'>call</a><![CDATA[ Peter ]]>&lt;Chalmers&gt;</div>",
        "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>O&apos;Chalmers, 534 Erewhon St, PleasantVille 98052 — é日本 Peter</p></div>",
    ] {
        roxmltree::Document::parse(div).expect("test input is well-formed");
        let mut p = patient();
        p["text"] = json!({"status": "generated", "div": div});
        let out = e.anonymize(p).unwrap();
        let got = out["text"]["div"].as_str().unwrap();
        roxmltree::Document::parse(got).unwrap_or_else(|err| panic!("{got}: {err}"));
        for secret in ["Peter", "Chalmers", "Erewhon", "1974", "3344", "98052"] {
            assert!(!got.contains(secret), "{secret} in {got}");
        }
    }
}

#[test]
fn safe_harbor_bundle_and_free_text_values() {
    let e = Anonymizer::safe_harbor().with_today(TODAY);
    let bundle = json!({"resourceType": "Bundle", "type": "transaction-response",
    "link": [{"relation": "self", "url": "http://x/fhir/Patient?name=Chalmers"}],
    "entry": [
        {"fullUrl": "http://x/fhir/Patient/p1", "resource": patient(),
         "response": {"status": "201 Created", "location": "Patient/p1/_history/1"}},
        {"resource": {"resourceType": "QuestionnaireResponse", "status": "completed",
            "subject": {"reference": "Patient/p1"},
            "item": [{"linkId": "1", "answer": [{"valueString": "Peter lives at 534 Erewhon St"}],
                      "item": [{"linkId": "1.1", "answer": [{"valueString": "call 555-201-3344"}]}]}]}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "note"},
            "subject": {"reference": "Patient/p1"}, "valueString": "Mr Chalmers is well"}}
    ]});
    let (out, stats) = e.anonymize_bundle(bundle).unwrap();
    assert_eq!(stats.entries, 3);
    let pid = out["entry"][0]["resource"]["id"].as_str().unwrap();
    assert_eq!(
        out["entry"][0]["fullUrl"],
        format!("http://x/fhir/Patient/{pid}")
    );
    assert_eq!(
        out["entry"][0]["response"]["location"],
        format!("Patient/{pid}/_history/1")
    );
    assert!(out.get("link").is_none());
    let qr = &out["entry"][1]["resource"];
    assert_eq!(
        qr["item"][0]["answer"][0]["valueString"],
        "[NAME] lives at [ADDRESS]"
    );
    assert_eq!(
        qr["item"][0]["item"][0]["answer"][0]["valueString"],
        "call [PHONE]"
    );
    assert_eq!(
        out["entry"][2]["resource"]["valueString"],
        "Mr [NAME] is well"
    );
    let text = out.to_string();
    for secret in ["Chalmers", "Peter", "Erewhon", "p1/", "p1\""] {
        assert!(!text.contains(secret), "{secret} survived in {text}");
    }
    assert!(
        salus_fhir::validate::is_valid(&out),
        "{:?}",
        salus_fhir::validate::validate_resource(&out)
    );
}

#[test]
fn folders_of_ndjson_files() {
    let input = tempfile::tempdir().unwrap();
    let output = tempfile::tempdir().unwrap();
    // The Observation file comes first; the pre-pass still knows the patient.
    std::fs::write(
        input.path().join("Observation.ndjson"),
        format!("{}\n", json!({"resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "x"},
            "subject": {"reference": "Patient/p1"}, "note": [{"text": "Peter Chalmers is well"}]})),
    )
    .unwrap();
    std::fs::write(
        input.path().join("Patient.ndjson"),
        format!("{}\n", patient()),
    )
    .unwrap();
    std::fs::write(input.path().join("notes.txt"), "ignored").unwrap();
    let e = Anonymizer::safe_harbor();
    let stats = e.anonymize_ndjson_dir(input.path(), output.path()).unwrap();
    assert_eq!((stats.files, stats.written, stats.skipped), (2, 2, 0));
    let obs = std::fs::read_to_string(output.path().join("Observation.ndjson")).unwrap();
    assert!(obs.contains("[NAME] [NAME] is well"), "{obs}");
    assert!(!output.path().join("notes.txt").exists());
    assert!(matches!(
        e.anonymize_ndjson_dir(input.path(), input.path()),
        Err(DeidError::Usage(_))
    ));
    std::fs::write(input.path().join("Bad.ndjson"), "{not json\n").unwrap();
    let err = e
        .anonymize_ndjson_dir(input.path(), output.path())
        .unwrap_err();
    assert_eq!(err.to_string().split(':').next(), Some("Bad.ndjson"));
}
