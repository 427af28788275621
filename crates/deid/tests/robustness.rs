//! No input makes the engine panic: odd shapes, wrong JSON types, nulls, deep nesting and
//! random mutations of a realistic resource, through the Safe Harbor configuration and a
//! configuration using every method.

use salus_deid::{Anonymizer, Config};
use serde_json::{json, Value};

fn all_methods() -> Anonymizer {
    let cfg = json!({"processingError": "raise", "fhirPathRules": [
        {"path": "nodesByName('family')", "method": "encrypt"},
        {"path": "nodesByType('string')", "method": "scrub"},
        {"path": "nodesByType('date')", "method": "dateShift"},
        {"path": "nodesByType('decimal')", "method": "perturb", "span": 1e300, "rangeType": "proportional"},
        {"path": "nodesByType('integer')", "method": "generalize", "cases": {"$this > 1": "$this div 2"}},
        {"path": "nodesByType('boolean')", "method": "substitute", "replaceWith": "true"},
        {"path": "nodesByType('HumanName')", "method": "substitute", "replaceWith": {"text": "x"}},
        {"path": "Resource.id", "method": "cryptoHash"},
        {"path": "nodesByType('Reference').reference", "method": "cryptoHash"},
        {"path": "nodesByType('Address')", "method": "redact"}
    ], "parameters": {"encryptKey": "0123456789abcdef", "enablePartialDatesForRedact": true,
        "enablePartialZipCodesForRedact": true, "enablePartialAgesForRedact": true}});
    Anonymizer::new(Config::from_value(&cfg).unwrap())
}

fn seed() -> Value {
    json!({"resourceType": "Patient", "id": "p", "active": true,
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Jo &amp; <b>Ann</b> 2020-01-01</div>"},
        "name": [{"family": "Doe", "given": ["Jo", null, "Ann"], "_given": [null, {"id": "g"}, {"extension": [{"url": "u", "valueString": "x"}]}]}],
        "birthDate": "1970-01-01", "_birthDate": {"extension": [{"url": "t", "valueDateTime": "1970-01-01T10:00:00Z"}]},
        "address": [{"line": ["1 Main St"], "postalCode": "12345", "extension": [{"url": "g", "valueDecimal": 1.5}]}],
        "multipleBirthInteger": 3,
        "contact": [{"name": {"family": "Roe"}, "telecom": [{"value": "555-111-2222"}]}],
        "contained": [{"resourceType": "Organization", "id": "o", "name": "Org"}],
        "managingOrganization": {"reference": "#o"},
        "generalPractitioner": [{"reference": "Practitioner/1", "display": "Dr X"}]})
}

/// Deterministic pseudo-random numbers (no extra dependency).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

fn replacements() -> Vec<Value> {
    vec![
        Value::Null,
        json!(""),
        json!("2020-13-45"),
        json!("1850"),
        json!("<div"),
        json!(1e308),
        json!(-5),
        json!(true),
        json!([]),
        json!({}),
        json!([[1, [2]]]),
        json!({"resourceType": "Patient"}),
        json!({"reference": 5}),
        json!("Patient/"),
        json!("urn:uuid:"),
        json!("é日本"),
    ]
}

fn mutate(v: &mut Value, rng: &mut Lcg, reps: &[Value]) {
    match v {
        Value::Object(m) => {
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                if k == "resourceType" && rng.next() % 4 != 0 {
                    continue;
                }
                if rng.next() % 7 == 0 {
                    m.insert(k, reps[(rng.next() % reps.len() as u64) as usize].clone());
                } else if let Some(c) = m.get_mut(&k) {
                    mutate(c, rng, reps);
                }
            }
        }
        Value::Array(a) => {
            for c in a.iter_mut() {
                mutate(c, rng, reps);
            }
        }
        _ => {
            if rng.next() % 5 == 0 {
                *v = reps[(rng.next() % reps.len() as u64) as usize].clone();
            }
        }
    }
}

#[test]
fn random_mutations_never_panic() {
    let engines = [Anonymizer::safe_harbor(), all_methods()];
    let reps = replacements();
    let mut rng = Lcg(42);
    let mut ok = 0;
    for _ in 0..600 {
        let mut v = seed();
        mutate(&mut v, &mut rng, &reps);
        for e in &engines {
            if e.anonymize(v.clone()).is_ok() {
                ok += 1;
            }
            let _ = e.anonymize_bundle(json!({"resourceType": "Bundle", "type": "collection",
                "entry": [{"fullUrl": "urn:uuid:x", "resource": v.clone()}, {"resource": 3}, 7]}));
        }
    }
    assert!(ok > 600, "most mutated resources still anonymize ({ok})");
}

#[test]
fn odd_documents_are_errors_not_panics() {
    let e = Anonymizer::safe_harbor();
    let deep = (0..200).fold(json!("x"), |acc, _| json!({"a": acc}));
    for v in [
        json!(null),
        json!("Patient"),
        json!({"resourceType": 5}),
        json!({"resourceType": "NotAType", "name": [{"family": "Doe"}]}),
        json!({"resourceType": "Patient", "extension": deep}),
        json!({"resourceType": "Bundle", "entry": {"resource": {"resourceType": "Patient"}}}),
    ] {
        let _ = e.anonymize(v);
    }
    let mut out = Vec::new();
    let input = b"{\"resourceType\":\"Patient\"}\n\xff\xfe\n{\"resourceType\":\"Patient\"";
    assert!(e.anonymize_ndjson(&input[..], &mut out).is_err());
}
