//! Generated demo data: a small, deterministic population so a newcomer sees data at
//! once (`salus serve --demo`). Loaded through the same transaction path as any client.

use anyhow::Result;
use salus_service::{FhirService, Return};
use serde_json::{json, Value};

const GIVEN_F: &[&str] = &[
    "Maria", "Aisha", "Sofia", "Mei", "Olga", "Fatima", "Emma", "Lena", "Ana", "Zoe",
];
const GIVEN_M: &[&str] = &[
    "James", "Omar", "Lukas", "Kenji", "Mateo", "Ivan", "Noah", "Ravi", "Samuel", "Theo",
];
const FAMILY: &[&str] = &[
    "Garcia", "Okafor", "Schmidt", "Tanaka", "Novak", "Haddad", "Silva", "Larsen", "Kowalski",
    "Moreau",
];

/// Deterministic pseudo-random numbers (a small LCG) so demo data is the same on every machine.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

fn coding(system: &str, code: &str, display: &str) -> Value {
    json!({"coding": [{"system": system, "code": code, "display": display}], "text": display})
}

fn vital(
    subject: &str,
    encounter: &str,
    when: &str,
    code: (&str, &str),
    value: Value,
    ident: String,
) -> Value {
    json!({
        "resourceType": "Observation",
        "identifier": [{"system": "urn:salus:demo:observation", "value": ident}],
        "status": "final",
        "category": [coding("http://terminology.hl7.org/CodeSystem/observation-category", "vital-signs", "Vital Signs")],
        "code": coding("http://loinc.org", code.0, code.1),
        "subject": {"reference": subject},
        "encounter": {"reference": encounter},
        "effectiveDateTime": when,
        "valueQuantity": value
    })
}

/// A transaction Bundle with `patients` patients, each with an encounter, vital signs
/// and (for some) a condition. References use `urn:uuid:` fullUrls.
pub fn bundle(patients: usize, seed: u64) -> Value {
    let mut rng = Lcg(seed);
    let mut entries = vec![];
    let mut push = |full_url: String, resource: Value, if_none_exist: Option<String>| {
        let rtype = resource["resourceType"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut request = json!({"method": "POST", "url": rtype});
        if let Some(q) = if_none_exist {
            request["ifNoneExist"] = json!(q);
        }
        entries.push(json!({"fullUrl": full_url, "resource": resource, "request": request}));
    };
    for i in 0..patients {
        let female = rng.next() & 1 == 0;
        let given = if female { GIVEN_F } else { GIVEN_M }[rng.range(0, 9) as usize];
        let family = FAMILY[rng.range(0, 9) as usize];
        let birth = format!(
            "{}-{:02}-{:02}",
            rng.range(1940, 2015),
            rng.range(1, 12),
            rng.range(1, 28)
        );
        let mrn = format!("DEMO-{:05}", i + 1);
        let p_url = format!("urn:uuid:00000000-0000-4000-8000-{:012}", i * 10 + 1);
        let e_url = format!("urn:uuid:00000000-0000-4000-8000-{:012}", i * 10 + 2);
        push(
            p_url.clone(),
            json!({
                "resourceType": "Patient",
                "identifier": [{"system": "urn:salus:demo:mrn", "value": mrn}],
                "active": true,
                "name": [{"use": "official", "family": family, "given": [given]}],
                "gender": if female { "female" } else { "male" },
                "birthDate": birth,
                "telecom": [{"system": "phone", "value": format!("+1-555-{:04}", rng.range(0, 9999)), "use": "home"}],
                "address": [{"city": "Springfield", "country": "US", "postalCode": format!("{:05}", rng.range(10000, 99999))}]
            }),
            Some(format!("identifier=urn:salus:demo:mrn|{mrn}")),
        );
        let day = format!("2026-{:02}-{:02}", rng.range(1, 10), rng.range(1, 28));
        let when = format!("{day}T{:02}:{:02}:00Z", rng.range(8, 17), rng.range(0, 59));
        push(
            e_url.clone(),
            json!({
                "resourceType": "Encounter",
                "identifier": [{"system": "urn:salus:demo:encounter", "value": format!("{mrn}-E1")}],
                "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB", "display": "ambulatory"},
                "type": [coding("http://snomed.info/sct", "185349003", "Encounter for check up")],
                "subject": {"reference": p_url},
                "period": {"start": when, "end": when}
            }),
            Some(format!("identifier=urn:salus:demo:encounter|{mrn}-E1")),
        );
        let hr = rng.range(55, 110);
        push(
            format!("urn:uuid:00000000-0000-4000-8000-{:012}", i * 10 + 3),
            vital(
                &p_url,
                &e_url,
                &when,
                ("8867-4", "Heart rate"),
                json!({"value": hr, "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min"}),
                format!("{mrn}-HR"),
            ),
            Some(format!("identifier=urn:salus:demo:observation|{mrn}-HR")),
        );
        let kg = format!("{}.{}", rng.range(45, 120), rng.range(0, 9));
        let weight: Value = serde_json::from_str(&kg).unwrap_or(json!(70));
        push(
            format!("urn:uuid:00000000-0000-4000-8000-{:012}", i * 10 + 4),
            vital(
                &p_url,
                &e_url,
                &when,
                ("29463-7", "Body weight"),
                json!({"value": weight, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}),
                format!("{mrn}-WT"),
            ),
            Some(format!("identifier=urn:salus:demo:observation|{mrn}-WT")),
        );
        let (sys, dia) = (rng.range(100, 170), rng.range(60, 100));
        let mut bp = vital(
            &p_url,
            &e_url,
            &when,
            ("85354-9", "Blood pressure panel"),
            Value::Null,
            format!("{mrn}-BP"),
        );
        if let Some(o) = bp.as_object_mut() {
            o.shift_remove("valueQuantity");
            o.insert("component".into(), json!([
                {"code": coding("http://loinc.org", "8480-6", "Systolic blood pressure"),
                 "valueQuantity": {"value": sys, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
                {"code": coding("http://loinc.org", "8462-4", "Diastolic blood pressure"),
                 "valueQuantity": {"value": dia, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}
            ]));
        }
        push(
            format!("urn:uuid:00000000-0000-4000-8000-{:012}", i * 10 + 5),
            bp,
            Some(format!("identifier=urn:salus:demo:observation|{mrn}-BP")),
        );
        if sys >= 140 {
            push(
                format!("urn:uuid:00000000-0000-4000-8000-{:012}", i * 10 + 6),
                json!({
                    "resourceType": "Condition",
                    "identifier": [{"system": "urn:salus:demo:condition", "value": format!("{mrn}-HTN")}],
                    "clinicalStatus": coding("http://terminology.hl7.org/CodeSystem/condition-clinical", "active", "Active"),
                    "verificationStatus": coding("http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed", "Confirmed"),
                    "category": [coding("http://terminology.hl7.org/CodeSystem/condition-category", "problem-list-item", "Problem List Item")],
                    "code": coding("http://snomed.info/sct", "38341003", "Hypertensive disorder"),
                    "subject": {"reference": p_url},
                    "encounter": {"reference": e_url},
                    "onsetDateTime": when
                }),
                Some(format!("identifier=urn:salus:demo:condition|{mrn}-HTN")),
            );
        }
    }
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

/// Load the demo population unless the store already holds patients. Returns the
/// number of resources written.
pub async fn load_if_empty(service: &FhirService) -> Result<usize> {
    let counts = service.store().counts().await?;
    if counts.iter().any(|(t, n)| t == "Patient" && *n > 0) {
        return Ok(0);
    }
    let out = service
        .process_bundle(bundle(25, 2026), Return::Minimal, "")
        .await
        .map_err(|e| anyhow::anyhow!("loading demo data failed: {e}"))?;
    Ok(out["entry"].as_array().map_or(0, Vec::len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_bundle_is_deterministic() {
        assert_eq!(bundle(5, 1), bundle(5, 1));
        assert!(bundle(5, 1)["entry"].as_array().unwrap().len() >= 25);
    }
}
