//! Search on every kind of parameter through the router (R4 search.html): dates with
//! precision, strings, tokens, references, quantities, modifiers, chains, `_has`,
//! `_include`/`_revinclude`, `_sort`, keyset paging, compartments and system search.

mod common;

use common::*;
use serde_json::{json, Value};

fn ids(bundle: &Value) -> Vec<String> {
    let mut v: Vec<String> = bundle["entry"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["search"]["mode"] == "match")
                .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

async fn find(app: &App, url: &str) -> Vec<String> {
    ids(&app.get(url).await.expect(200).json)
}

struct World {
    org: String,
    p1: String,
    p2: String,
    o1: String,
    o2: String,
    e1: String,
}

async fn world(app: &App) -> World {
    let org = app
        .create(&json!({"resourceType": "Organization", "name": "Acme Health"}))
        .await;
    let p1 = app
        .create(
            &json!({"resourceType": "Patient", "name": [{"family": "Zoë", "given": ["Ann"]}],
            "gender": "female", "birthDate": "1980-03-04",
            "managingOrganization": {"reference": format!("Organization/{org}")}}),
        )
        .await;
    let p2 = app
        .create(
            &json!({"resourceType": "Patient", "name": [{"family": "Adams"}], "gender": "male"}),
        )
        .await;
    let e1 = app
        .create(&json!({"resourceType": "Encounter", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": format!("Patient/{p1}")},
            "period": {"start": "2020-03-04T10:00:00Z", "end": "2020-03-04T11:00:00Z"}}))
        .await;
    let o1 = app
        .create(&json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
            "subject": {"reference": format!("Patient/{p1}")},
            "encounter": {"reference": format!("Encounter/{e1}")},
            "effectiveDateTime": "2020-03-04T10:00:00Z",
            "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}}))
        .await;
    let o2 = app
        .create(&json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7", "display": "Body weight"}]},
            "subject": {"reference": format!("http://other.example/fhir/Patient/{p2}")},
            "effectiveDateTime": "2021-06",
            "valueQuantity": {"value": 80.5, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}}))
        .await;
    World {
        org,
        p1,
        p2,
        o1,
        o2,
        e1,
    }
}

#[tokio::test]
async fn dates_follow_precision_and_prefixes() {
    let app = app();
    let w = world(&app).await;
    assert_eq!(
        find(&app, "/Observation?date=2020").await,
        vec![w.o1.clone()],
        "2020 contains 2020-03-04T10:00"
    );
    assert_eq!(
        find(&app, "/Observation?date=2020-03-04").await,
        vec![w.o1.clone()]
    );
    assert!(find(&app, "/Observation?date=2020-03-05").await.is_empty());
    assert_eq!(
        find(&app, "/Observation?date=ge2021-01-01").await,
        vec![w.o2.clone()]
    );
    assert_eq!(
        find(&app, "/Observation?date=lt2021").await,
        vec![w.o1.clone()]
    );
    assert_eq!(
        find(&app, "/Observation?date=ne2020").await,
        vec![w.o2.clone()]
    );
    assert_eq!(
        find(&app, "/Observation?date=sa2020-12-31").await,
        vec![w.o2.clone()],
        "2021-06 starts after"
    );
    assert_eq!(
        find(&app, "/Observation?date=eb2021").await,
        vec![w.o1.clone()]
    );
    // a period
    assert_eq!(
        find(&app, "/Encounter?date=2020-03-04").await,
        vec![w.e1.clone()]
    );
    assert!(find(&app, "/Encounter?date=2020-03-04T12:00:00Z")
        .await
        .is_empty());
    // several dates ANDed make a range
    assert_eq!(
        find(&app, "/Observation?date=ge2020-01-01&date=lt2020-12-31").await,
        vec![w.o1.clone()]
    );
    assert_eq!(
        find(&app, "/Patient?birthdate=1980").await,
        vec![w.p1.clone()]
    );
}

#[tokio::test]
async fn strings_tokens_quantities_and_modifiers() {
    let app = app();
    let w = world(&app).await;
    assert_eq!(
        find(&app, "/Patient?family=zoe").await,
        vec![w.p1.clone()],
        "accent- and case-insensitive prefix"
    );
    assert_eq!(
        find(&app, "/Patient?name=an").await,
        vec![w.p1.clone()],
        "given names count"
    );
    assert_eq!(
        find(&app, "/Patient?family:exact=Zoë").await,
        vec![w.p1.clone()]
    );
    assert!(find(&app, "/Patient?family:exact=zoe").await.is_empty());
    assert_eq!(
        find(&app, "/Patient?family:contains=dam").await,
        vec![w.p2.clone()]
    );
    assert_eq!(find(&app, "/Patient?gender=female,male").await.len(), 2);
    assert_eq!(
        find(&app, "/Patient?gender:not=male").await,
        vec![w.p1.clone()]
    );
    assert_eq!(
        find(&app, "/Observation?code=http://loinc.org|8867-4").await,
        vec![w.o1.clone()]
    );
    assert!(
        find(&app, "/Observation?code=http://snomed.info/sct|8867-4")
            .await
            .is_empty()
    );
    assert_eq!(
        find(&app, "/Observation?code:text=heart").await,
        vec![w.o1.clone()]
    );
    assert_eq!(
        find(&app, "/Observation?value-quantity=gt75").await,
        vec![w.o2.clone()]
    );
    assert_eq!(
        find(
            &app,
            "/Observation?value-quantity=80.5|http://unitsofmeasure.org|kg"
        )
        .await,
        vec![w.o2.clone()]
    );
    assert!(find(&app, "/Observation?value-quantity=80.5||mg")
        .await
        .is_empty());
    assert_eq!(
        find(&app, "/Patient?birthdate:missing=true").await,
        vec![w.p2.clone()]
    );
    assert_eq!(
        find(&app, "/Patient?birthdate:missing=false").await,
        vec![w.p1.clone()]
    );
    assert_eq!(
        find(
            &app,
            "/Patient?gender:in=http://hl7.org/fhir/ValueSet/administrative-gender"
        )
        .await
        .len(),
        2
    );
}

#[tokio::test]
async fn references_chains_and_has() {
    let app = app();
    let w = world(&app).await;
    assert_eq!(
        find(&app, &format!("/Observation?subject=Patient/{}", w.p1)).await,
        vec![w.o1.clone()]
    );
    assert_eq!(
        find(&app, &format!("/Observation?patient={}", w.p1)).await,
        vec![w.o1.clone()]
    );
    // absolute references match by type and id
    assert_eq!(
        find(&app, &format!("/Observation?subject=Patient/{}", w.p2)).await,
        vec![w.o2.clone()]
    );
    assert_eq!(
        find(&app, "/Observation?subject:Patient.name=zoe").await,
        vec![w.o1.clone()]
    );
    assert_eq!(
        find(&app, "/Observation?subject:Patient.organization.name=acme").await,
        vec![w.o1.clone()],
        "two-level chain"
    );
    assert_eq!(
        find(&app, "/Observation?patient.gender=male").await,
        vec![w.o2.clone()],
        "chain through an absolute reference"
    );
    assert_eq!(
        find(&app, "/Patient?_has:Observation:patient:code=8867-4").await,
        vec![w.p1.clone()]
    );
    assert_eq!(
        find(
            &app,
            "/Organization?_has:Patient:organization:_has:Observation:patient:code=8867-4"
        )
        .await,
        vec![w.org.clone()],
        "nested _has"
    );
    assert!(find(&app, "/Patient?_has:Observation:patient:code=nope")
        .await
        .is_empty());
}

#[tokio::test]
async fn includes_sort_and_paging() {
    let app = app();
    let w = world(&app).await;
    let b = app
        .get(&format!(
            "/Encounter?_id={}&_include=Encounter:patient&_revinclude=Observation:encounter",
            w.e1
        ))
        .await
        .expect(200)
        .json;
    let modes: Vec<(String, String)> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["search"]["mode"].as_str().unwrap().to_string(),
                e["resource"]["resourceType"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(modes.contains(&("match".into(), "Encounter".into())));
    assert!(modes.contains(&("include".into(), "Patient".into())));
    assert!(modes.contains(&("include".into(), "Observation".into())));
    // :iterate follows the included Patient to its Organization, and terminates
    let b = app.get(&format!("/Observation?_id={}&_include=Observation:subject&_include:iterate=Patient:organization", w.o1)).await.expect(200).json;
    let types: Vec<&str> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["resourceType"].as_str().unwrap())
        .collect();
    assert!(types.contains(&"Organization"), "{types:?}");
    let b = app
        .get("/Patient?_include=*&_revinclude=*&_include:iterate=*")
        .await
        .expect(200)
        .json;
    assert!(b["entry"].as_array().unwrap().len() >= 2);
    // sort: descending by date, missing values last
    for i in 0..3 {
        app.create(&json!({"resourceType": "Observation", "status": "final", "code": {"text": format!("x{i}")}})).await;
    }
    let b = app.get("/Observation?_sort=-date").await.expect(200).json;
    let order: Vec<&str> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(order[0], w.o2);
    assert_eq!(order[1], w.o1);
    // paging with keyset links: walk every page, no duplicate, no gap
    let mut url = "/Observation?_count=2&_sort=_id".to_string();
    let mut seen = vec![];
    let mut pages = 0;
    loop {
        let b = app.get(&url).await.expect(200).json;
        pages += 1;
        seen.extend(ids(&b));
        let links = b["link"].as_array().unwrap();
        assert!(links.iter().any(|l| l["relation"] == "first"));
        assert!(links.iter().any(|l| l["relation"] == "last"));
        match links.iter().find(|l| l["relation"] == "next") {
            Some(n) => {
                url = n["url"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("http://localhost")
                    .to_string()
            }
            None => break,
        }
        assert!(pages < 10);
    }
    let mut all = seen.clone();
    all.dedup();
    assert_eq!(seen.len(), 5);
    assert_eq!(all.len(), 5);
    // _count=0 gives only the total
    let b = app
        .get("/Observation?_count=0&_total=accurate")
        .await
        .expect(200)
        .json;
    assert_eq!(b["total"], 5);
    assert!(b
        .get("entry")
        .is_none_or(|e| e.as_array().unwrap().is_empty()));
}

#[tokio::test]
async fn compartment_and_system_search() {
    let app = app();
    let w = world(&app).await;
    assert_eq!(
        find(&app, &format!("/Patient/{}/Observation", w.p1)).await,
        vec![w.o1.clone()]
    );
    assert_eq!(
        find(&app, &format!("/Patient/{}/Encounter?date=2020", w.p1)).await,
        vec![w.e1.clone()]
    );
    assert!(
        find(&app, &format!("/Patient/{}/Observation", w.p2))
            .await
            .len()
            == 1
    );
    app.get(&format!("/Patient/{}/Organization", w.p1))
        .await
        .expect_outcome(400);
    let b = app
        .get("/?_type=Patient,Organization&_count=50")
        .await
        .expect(200)
        .json;
    let types: std::collections::BTreeSet<&str> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["resourceType"].as_str().unwrap())
        .collect();
    assert_eq!(
        types.into_iter().collect::<Vec<_>>(),
        vec!["Organization", "Patient"]
    );
    // an update re-indexes; a delete removes from results
    let mut p = app.get(&format!("/Patient/{}", w.p2)).await.json;
    p["gender"] = json!("other");
    app.put(&format!("/Patient/{}", w.p2), &p).await.expect(200);
    assert!(find(&app, "/Patient?gender=male").await.is_empty());
    app.delete(&format!("/Patient/{}", w.p1)).await.expect(204);
    assert!(find(&app, "/Patient?family=zoe").await.is_empty());
}

/// Composite parameters (R4 search.html#composite): both components must match on the
/// same element — a blood pressure's systolic component, not any component.
#[tokio::test]
async fn composite_parameters_match_within_one_element() {
    let app = app();
    let bp = |sys: f64, dia: f64| {
        json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "component": [
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
             "valueQuantity": {"value": sys, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
             "valueQuantity": {"value": dia, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}
        ]})
    };
    let high = app.create(&bp(150.0, 95.0)).await;
    let normal = app.create(&bp(120.0, 80.0)).await;
    let weight = app
        .create(&json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}], "text": "weight"},
            "valueQuantity": {"value": 80, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}}))
        .await;
    let smoker = app
        .create(&json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "72166-2"}]},
            "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "449868002"}]},
            "effectiveDateTime": "2024-05-01"}))
        .await;
    let q = "/Observation?component-code-value-quantity=";
    assert_eq!(
        find(&app, &format!("{q}http://loinc.org|8480-6$gt140")).await,
        vec![high.clone()]
    );
    assert_eq!(
        find(&app, &format!("{q}8462-4$lt90")).await,
        vec![normal.clone()],
        "a code without a system matches any system"
    );
    assert!(
        find(&app, &format!("{q}8480-6$95")).await.is_empty(),
        "95 is the diastolic value, not the systolic"
    );
    assert!(find(&app, &format!("{q}http://other|8480-6$gt140"))
        .await
        .is_empty());
    let mut both = vec![high.clone(), normal.clone()];
    both.sort();
    assert_eq!(
        find(&app, &format!("{q}8480-6$gt140,8462-4$lt90")).await,
        both,
        "comma-separated values are alternatives"
    );
    assert_eq!(
        find(&app, &format!("{q}8480-6$120||mm[Hg]")).await,
        vec![normal.clone()],
        "quantity with its unit"
    );
    assert_eq!(
        find(
            &app,
            &format!("{q}8480-6$gt18|http://unitsofmeasure.org|kPa")
        )
        .await,
        vec![high.clone()],
        "UCUM conversion inside a composite: 150 mm[Hg] is 20 kPa, 120 is 16"
    );
    assert_eq!(
        find(
            &app,
            "/Observation?code-value-quantity=http://loinc.org|29463-7$ge80"
        )
        .await,
        vec![weight.clone()]
    );
    assert_eq!(
        find(
            &app,
            "/Observation?code-value-concept=72166-2$http://snomed.info/sct|449868002"
        )
        .await,
        vec![smoker.clone()]
    );
    assert_eq!(
        find(&app, "/Observation?combo-code-value-quantity=8480-6$ge150").await,
        vec![high.clone()],
        "combo covers the code and the components"
    );
    // combo-* is the union of the Observation's own element and its components'
    // (stored as those two only): each search form must agree with that reading
    assert_eq!(
        find(&app, "/Observation?combo-code=8480-6").await,
        both,
        "a component's code"
    );
    assert_eq!(
        find(&app, "/Observation?combo-code=29463-7").await,
        vec![weight.clone()],
        "the Observation's own code"
    );
    let mut no_systolic = vec![weight.clone(), smoker.clone()];
    no_systolic.sort();
    assert_eq!(
        find(&app, "/Observation?combo-code:not=8480-6").await,
        no_systolic,
        ":not holds when neither the code nor a component's code matches"
    );
    assert_eq!(
        find(&app, "/Observation?combo-value-quantity=ge80").await,
        vec![high.clone(), normal.clone(), weight.clone()]
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>(),
        "values of components (95, 80) and of the Observation (80)"
    );
    assert_eq!(
        find(&app, "/Observation?combo-value-quantity:missing=true").await,
        vec![smoker.clone()],
        "missing only when neither has a quantity"
    );
    let sorted = app
        .get("/Observation?_sort=-combo-value-quantity&_elements=id")
        .await
        .expect(200)
        .json;
    let order: Vec<String> = sorted["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        order,
        [high.clone(), normal.clone(), weight.clone(), smoker.clone()],
        "largest value of the union first, in canonical units (150 and 120 mm[Hg] are \
         ~2e7 and ~1.6e7 g/(m.s2), above 80 kg); without one, last"
    );
    // Bad input gets a clear error.
    for bad in [
        "/Observation?component-code-value-quantity=8480-6",
        "/Observation?component-code-value-quantity=8480-6$gtx",
        "/Observation?component-code-value-quantity:exact=8480-6$1",
    ] {
        let r = app
            .req("GET", bad, &[("prefer", "handling=strict")], None)
            .await;
        assert!(
            r.status == 400 || r.status == 501,
            "{bad}: {} {}",
            r.status,
            r.json
        );
        assert_eq!(r.json["resourceType"], "OperationOutcome", "{bad}");
    }
}

/// `_text` (narrative) and `_content` (the whole resource): words in any order, case
/// and accents ignored, phrases, prefixes, alternatives; the best match first.
#[tokio::test]
async fn full_text_on_narrative_and_content() {
    let app = app();
    let narrative = |s: &str| {
        json!({"status": "generated",
            "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>{s}</p></div>")})
    };
    let chf = app
        .create(&json!({"resourceType": "Condition",
            "text": narrative("Chronic heart failure, NYHA class II"),
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "84114007", "display": "Heart failure"}]},
            "subject": {"reference": "Patient/x"}}))
        .await;
    let arm = app
        .create(&json!({"resourceType": "Condition",
            "text": narrative("Fractured left arm"),
            "code": {"text": "Fracture of humérus"},
            "note": [{"text": "heart sounds normal"}],
            "subject": {"reference": "Patient/x"}}))
        .await;
    let obs = app
        .create(&json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0", "display": "Glucose [Mass/volume] in Blood"}]},
            "valueQuantity": {"value": 6.3, "unit": "mmol/L"}}))
        .await;
    assert_eq!(
        find(&app, "/Condition?_text=HEART").await,
        vec![chf.clone()]
    );
    let mut both = vec![chf.clone(), arm.clone()];
    both.sort();
    assert_eq!(find(&app, "/Condition?_content=heart").await, both);
    assert_eq!(
        find(&app, "/Condition?_content=humerus").await,
        vec![arm.clone()],
        "accents are ignored"
    );
    assert_eq!(
        find(&app, "/Condition?_text=%22heart%20failure%22").await,
        vec![chf.clone()],
        "a quoted phrase"
    );
    assert!(find(&app, "/Condition?_text=%22failure%20heart%22")
        .await
        .is_empty());
    assert_eq!(
        find(&app, "/Condition?_text=fract*").await,
        vec![arm.clone()]
    );
    assert_eq!(find(&app, "/Condition?_text=nyha,fractured").await, both);
    assert_eq!(
        find(&app, "/Condition?_text=nyha%20OR%20fractured").await,
        both
    );
    assert_eq!(
        find(&app, "/Condition?_text=heart%20class").await,
        vec![chf.clone()],
        "every word must occur"
    );
    assert_eq!(
        find(&app, "/Observation?_content=glucose").await,
        vec![obs.clone()]
    );
    // System level, with other criteria, and relevance order (chf says heart twice).
    let system = app.get("/?_content=heart").await.expect(200).json;
    let order: Vec<&str> = system["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["resource"]["id"].as_str())
        .collect();
    assert_eq!(order, vec![chf.as_str(), arm.as_str()]);
    assert_eq!(
        find(&app, "/Condition?_content=heart&code=84114007").await,
        vec![chf.clone()]
    );
    // Paging through relevance-ordered results keeps every match once.
    let first = app
        .get("/Condition?_content=heart&_count=1")
        .await
        .expect(200)
        .json;
    let next = first["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .expect("a next link")["url"]
        .as_str()
        .unwrap()
        .to_string();
    let path = next
        .split_once("/Condition")
        .map(|(_, p)| format!("/Condition{p}"))
        .unwrap();
    let second = app.get(&path).await.expect(200).json;
    assert_eq!(ids(&first), vec![chf.clone()]);
    assert_eq!(ids(&second), vec![arm.clone()]);
    // Updates and deletes are reflected at once.
    app.delete(&format!("/Condition/{arm}")).await.expect(204);
    assert_eq!(
        find(&app, "/Condition?_content=heart").await,
        vec![chf.clone()]
    );
    for bad in [
        "/Condition?_text=",
        "/Condition?_text=%22open",
        "/Condition?_text:exact=x",
    ] {
        let r = app
            .req("GET", bad, &[("prefer", "handling=strict")], None)
            .await;
        assert!(r.status == 400 || r.status == 501, "{bad}: {}", r.status);
        assert_eq!(r.json["resourceType"], "OperationOutcome", "{bad}");
    }
}

/// `$reindex` rebuilds index rows and full text of stored resources in the background
/// (here: a resource stored without any, as by an older version) and reports progress.
#[tokio::test]
async fn reindex_rebuilds_indexes_in_the_background() {
    let app = app();
    let indexed = app
        .create(&json!({"resourceType": "Patient", "name": [{"family": "Indexed"}]}))
        .await;
    // Stored directly, with neither index rows nor full text.
    let store = app.state.service.store().clone();
    let mut tx = store.begin().await.unwrap();
    tx.put(salus_store::NewVersion {
        rtype: "Patient".into(),
        id: "legacy".into(),
        version: 1,
        expected_version: None,
        last_updated: 1_700_000_000_000_000,
        method: salus_store::Method::Put,
        body: Some(
            json!({"resourceType": "Patient", "id": "legacy",
                "meta": {"versionId": "1", "lastUpdated": "2023-11-14T22:13:20Z"},
                "name": [{"family": "Legacy"}]})
            .to_string(),
        ),
        index: vec![],
        fulltext: None,
        contained: vec![],
    })
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert!(find(&app, "/Patient?family=legacy").await.is_empty());
    assert!(find(&app, "/Patient?_content=legacy").await.is_empty());

    let started = app.post("/$reindex", &json!({})).await.expect(202);
    assert_eq!(started.json["resourceType"], "Parameters");
    assert!(started.headers["content-location"]
        .to_str()
        .unwrap()
        .ends_with("/$reindex"));
    let mut status = Value::Null;
    for _ in 0..200 {
        status = app.get("/$reindex").await.expect(200).json;
        if status["parameter"][0]["valueCode"] != "running" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(status["parameter"][0]["valueCode"], "completed", "{status}");
    assert_eq!(status["parameter"][1]["valueInteger"], 2, "{status}");
    assert_eq!(find(&app, "/Patient?family=legacy").await, vec!["legacy"]);
    assert_eq!(find(&app, "/Patient?_content=legacy").await, vec!["legacy"]);
    assert_eq!(find(&app, "/Patient?family=indexed").await, vec![indexed]);
    let v = app.get("/Patient/legacy").await.expect(200).json;
    assert_eq!(
        v["meta"]["versionId"], "1",
        "reindexing makes no new version"
    );
}

/// A SearchParameter resource goes live when stored: later writes are indexed and
/// searchable at once, `$reindex` indexes what was stored before, `$status` reports
/// it; an unusable one is refused; deleting it retires it.
#[tokio::test]
async fn custom_search_parameters_go_live() {
    let app = app();
    let born_in = |city: &str| {
        json!({"resourceType": "Patient", "extension": [{
            "url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
            "valueAddress": {"city": city}}]})
    };
    let before = app.create(&born_in("Boston")).await;
    let sp = json!({"resourceType": "SearchParameter",
        "url": "http://example.org/fhir/SearchParameter/patient-birthplace-city",
        "name": "BirthplaceCity", "status": "active", "description": "City of birth",
        "code": "birthplace-city", "base": ["Patient"], "type": "string",
        "expression": "Patient.extension.where(url = 'http://hl7.org/fhir/StructureDefinition/patient-birthPlace').value.ofType(Address).city"});
    let sp_id = app.create(&sp).await;
    let after = app.create(&born_in("Boston")).await;
    let elsewhere = app.create(&born_in("Denver")).await;
    assert_eq!(
        find(&app, "/Patient?birthplace-city=bos").await,
        vec![after.clone()],
        "written after the parameter went live"
    );
    let status = app.get("/SearchParameter/$status").await.expect(200).json;
    let mine = status["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["part"][1]["valueCode"] == "birthplace-city")
        .expect("listed")
        .clone();
    assert_eq!(mine["part"][4]["valueCode"], "active");
    assert_eq!(mine["part"][5]["valueBoolean"], false);
    let meta = app.get("/metadata").await.expect(200).json;
    let patient = meta["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Patient")
        .unwrap()
        .clone();
    assert!(patient["searchParam"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "birthplace-city"));

    app.post("/$reindex", &json!({})).await.expect(202);
    for _ in 0..200 {
        let s = app.get("/$reindex").await.expect(200).json;
        if s["parameter"][0]["valueCode"] != "running" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut both = vec![before.clone(), after.clone()];
    both.sort();
    assert_eq!(find(&app, "/Patient?birthplace-city=boston").await, both);
    assert_eq!(
        find(&app, "/Patient?birthplace-city=denver").await,
        vec![elsewhere]
    );
    let status = app.get("/SearchParameter/$status").await.expect(200).json;
    assert!(status["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["part"][1]["valueCode"] == "birthplace-city"
            && p["part"][5]["valueBoolean"] == true));

    // Unusable definitions are refused with a reason, and nothing is stored.
    for (bad, why) in [
        (
            json!({"code": "name", "base": ["Patient"], "type": "string", "expression": "Patient.name"}),
            "already has",
        ),
        (
            json!({"code": "x-bad", "base": ["Patient"], "type": "string", "expression": "Patient.name.("}),
            "FHIRPath",
        ),
        (
            json!({"code": "x-bad", "base": ["NoSuchType"], "type": "string", "expression": "Patient.name"}),
            "NoSuchType",
        ),
    ] {
        let mut r = bad.clone();
        r["resourceType"] = json!("SearchParameter");
        r["url"] = json!("http://example.org/fhir/SearchParameter/bad");
        r["name"] = json!("Bad");
        r["status"] = json!("active");
        r["description"] = json!("bad");
        let resp = app.post("/SearchParameter", &r).await.expect(400);
        assert!(resp.text.contains(why), "{why}: {}", resp.text);
    }
    // Deleting it retires it.
    app.delete(&format!("/SearchParameter/{sp_id}"))
        .await
        .expect(204);
    let r = app
        .req(
            "GET",
            "/Patient?birthplace-city=boston",
            &[("prefer", "handling=strict")],
            None,
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
}

/// UCUM quantities are also indexed in canonical form, so a search in one unit finds
/// values stored in another of the same dimension (R4 search.html#quantity).
#[tokio::test]
async fn ucum_quantities_match_across_units() {
    let app = app();
    let obs = |value: f64, code: &str| {
        json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
            "valueQuantity": {"value": value, "unit": code, "system": "http://unitsofmeasure.org", "code": code}})
    };
    let mg = app.create(&obs(5400.0, "mg")).await;
    let g = app.create(&obs(7.0, "g")).await;
    let lb = app.create(&obs(1.0, "[lb_av]")).await; // 453.6 g
    let temp = app.create(&obs(37.0, "Cel")).await;
    let q = "/Observation?value-quantity=";
    assert_eq!(
        find(&app, &format!("{q}5.4|http://unitsofmeasure.org|g")).await,
        vec![mg.clone()]
    );
    assert_eq!(
        find(&app, &format!("{q}5400|http://unitsofmeasure.org|mg")).await,
        vec![mg.clone()],
        "the stored unit itself still matches"
    );
    let mut heavier = vec![g.clone(), lb.clone()];
    heavier.sort();
    assert_eq!(
        find(&app, &format!("{q}gt6000|http://unitsofmeasure.org|mg")).await,
        heavier
    );
    assert_eq!(
        find(&app, &format!("{q}lt0.01|http://unitsofmeasure.org|kg")).await,
        {
            let mut v = vec![mg.clone(), g.clone()];
            v.sort();
            v
        }
    );
    assert!(
        find(&app, &format!("{q}5.4|http://unitsofmeasure.org|mL"))
            .await
            .is_empty(),
        "another dimension never matches"
    );
    assert_eq!(
        find(&app, &format!("{q}37|http://unitsofmeasure.org|Cel")).await,
        vec![temp],
        "special units match as written"
    );
    assert!(
        find(&app, &format!("{q}5.4||g")).await.is_empty(),
        "without a system, units are compared as written"
    );
    // `_sort` compares canonical values: 5,400 mg < 7 g < 1 [lb_av]
    let order = |url: String| {
        let app = &app;
        async move {
            let b = app.get(&url).await.expect(200).json;
            b["entry"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    let masses = "/Observation?code=2345-7&value-quantity=gt0|http://unitsofmeasure.org|g";
    assert_eq!(
        order(format!("{masses}&_sort=value-quantity")).await,
        vec![mg.clone(), g.clone(), lb.clone()]
    );
    assert_eq!(
        order(format!("{masses}&_sort=-value-quantity")).await,
        vec![lb, g, mg]
    );
}

/// Token `:below` / `:above` follow the is-a hierarchy of a CodeSystem stored here.
#[tokio::test]
async fn token_below_and_above_follow_a_stored_code_system() {
    let app = app();
    let system = "http://example.org/fhir/CodeSystem/wounds";
    app.create(&json!({"resourceType": "CodeSystem", "url": system, "status": "active",
        "content": "complete", "hierarchyMeaning": "is-a",
        "concept": [{"code": "wound", "display": "Wound", "concept": [
            {"code": "burn", "display": "Burn", "concept": [{"code": "burn-2", "display": "Second-degree burn"}]},
            {"code": "cut", "display": "Cut"}]},
            {"code": "rash", "display": "Rash"}]}))
        .await;
    let mut ids = std::collections::HashMap::new();
    for code in ["wound", "burn", "burn-2", "cut", "rash"] {
        let id = app
            .create(
                &json!({"resourceType": "Condition", "subject": {"reference": "Patient/x"},
                "code": {"coding": [{"system": system, "code": code}]}}),
            )
            .await;
        ids.insert(code, id);
    }
    let set = |codes: &[&str]| {
        let mut v: Vec<String> = codes.iter().map(|c| ids[c].clone()).collect();
        v.sort();
        v
    };
    assert_eq!(
        find(&app, &format!("/Condition?code:below={system}|burn")).await,
        set(&["burn", "burn-2"])
    );
    assert_eq!(
        find(&app, &format!("/Condition?code:below={system}|wound")).await,
        set(&["wound", "burn", "burn-2", "cut"])
    );
    assert_eq!(
        find(&app, &format!("/Condition?code:above={system}|burn-2")).await,
        set(&["wound", "burn", "burn-2"])
    );
    assert_eq!(
        find(
            &app,
            &format!("/Condition?code:below={system}|cut,{system}|rash")
        )
        .await,
        set(&["cut", "rash"])
    );
    for bad in [
        "/Condition?code:below=burn".to_string(),
        format!("/Condition?code:below={system}|nosuch"),
        "/Condition?code:below=http://unknown.example/cs|x".to_string(),
    ] {
        let r = app.get(&bad).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text);
        assert_eq!(r.json["resourceType"], "OperationOutcome");
    }
    // conditional operations expand `:below` too: a conditional delete of every cut
    // below "wound" that is not a burn finds exactly one
    app.delete(&format!(
        "/Condition?code:below={system}|cut&subject=Patient/x"
    ))
    .await
    .expect(204);
    assert!(find(&app, &format!("/Condition?code={system}|cut"))
        .await
        .is_empty());
    // and inside a transaction: conditional creates whose criteria use `:below`
    let bundle = |code: &str, below: &str| {
        json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "Condition", "subject": {"reference": "Patient/x"},
                "code": {"coding": [{"system": system, "code": code}]}},
             "request": {"method": "POST", "url": "Condition",
                "ifNoneExist": format!("code:below={system}|{below}&subject=Patient/x")}}]})
    };
    let r = app.post("/", &bundle("burn-2", "burn-2")).await.expect(200);
    assert_eq!(r.json["entry"][0]["response"]["status"], "200 OK", "found");
    let r = app.post("/", &bundle("cut", "cut")).await.expect(200);
    assert_eq!(
        r.json["entry"][0]["response"]["status"], "201 Created",
        "none left"
    );
    // burn and burn-2 are both below burn: ambiguous
    app.post("/", &bundle("burn", "burn")).await.expect(412);
}

/// `_contained` / `_containedType` (R4 search.html#contained): contained resources are
/// indexed with their container and found only when asked for.
#[tokio::test]
async fn contained_resources_are_found_when_asked_for() {
    let app = app();
    let rx = "http://www.nlm.nih.gov/research/umls/rxnorm";
    let request = |code: &str| {
        json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
            "subject": {"reference": "Patient/p1"},
            "medicationReference": {"reference": "#med"},
            "contained": [{"resourceType": "Medication", "id": "med",
                "code": {"coding": [{"system": rx, "code": code}]}}]})
    };
    let mr1 = app.create(&request("1049502")).await;
    let mr2 = app.create(&request("310965")).await;
    let standalone = app
        .create(&json!({"resourceType": "Medication",
            "code": {"coding": [{"system": rx, "code": "1049502"}]}}))
        .await;
    let q = format!("/Medication?code={rx}|1049502");
    assert_eq!(find(&app, &q).await, vec![standalone.clone()]);
    assert_eq!(
        find(&app, &format!("{q}&_contained=false")).await,
        vec![standalone.clone()]
    );
    // the container by default
    let b = app
        .get(&format!("{q}&_contained=true"))
        .await
        .expect(200)
        .json;
    assert_eq!(ids(&b), vec![mr1.clone()]);
    assert_eq!(
        b["entry"][0]["resource"]["resourceType"],
        "MedicationRequest"
    );
    let mut both = vec![mr1.clone(), standalone.clone()];
    both.sort();
    assert_eq!(find(&app, &format!("{q}&_contained=both")).await, both);
    // the contained resource itself, addressed inside its container
    let b = app
        .get(&format!(
            "{q}&_contained=true&_containedType=contained&_total=accurate"
        ))
        .await
        .expect(200)
        .json;
    assert_eq!(b["total"], 1);
    assert_eq!(b["entry"].as_array().unwrap().len(), 1);
    let e = &b["entry"][0];
    assert_eq!(e["resource"]["resourceType"], "Medication");
    assert_eq!(e["resource"]["id"], "med");
    assert!(e["fullUrl"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/MedicationRequest/{mr1}#med")));
    // `_id` of a contained resource is its local id; updates replace the contained rows
    assert_eq!(
        find(&app, "/Medication?_id=med&_contained=true")
            .await
            .len(),
        2
    );
    let mut changed = request("197361");
    changed["id"] = json!(mr2);
    app.put(&format!("/MedicationRequest/{mr2}"), &changed)
        .await
        .expect(200);
    assert!(find(
        &app,
        &format!("/Medication?code={rx}|310965&_contained=true")
    )
    .await
    .is_empty());
    assert_eq!(
        find(
            &app,
            &format!("/Medication?code={rx}|197361&_contained=true")
        )
        .await,
        vec![mr2.clone()]
    );
    app.delete(&format!("/MedicationRequest/{mr2}"))
        .await
        .expect(204);
    assert!(find(
        &app,
        "/Medication?_id=med&_contained=true&_containedType=contained"
    )
    .await
    .iter()
    .all(|id| id == "med"));
    assert_eq!(
        app.get("/Medication?_id=med&_contained=true&_containedType=contained")
            .await
            .expect(200)
            .json["entry"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // bad values are refused
    app.get("/Medication?_contained=sometimes")
        .await
        .expect_outcome(400);
    app.get("/Medication?_contained=true&_containedType=inside")
        .await
        .expect_outcome(400);
}

/// A custom composite SearchParameter (built-in token + custom string component) goes
/// live like the built-in composites; bad components are refused with the reason.
#[tokio::test]
async fn custom_composite_parameters_go_live() {
    let app = app();
    let city_expr = "extension.where(url = 'http://hl7.org/fhir/StructureDefinition/patient-birthPlace').value.ofType(Address).city";
    let sp = |url: &str, code: &str, kind: &str, expression: &str| {
        json!({"resourceType": "SearchParameter", "url": url, "name": code, "status": "active",
            "description": code, "code": code, "base": ["Patient"], "type": kind,
            "expression": expression})
    };
    let city_url = "http://example.org/fhir/SearchParameter/patient-birth-city";
    app.create(&sp(
        city_url,
        "birth-city",
        "string",
        &format!("Patient.{city_expr}"),
    ))
    .await;
    let mut composite = sp(
        "http://example.org/fhir/SearchParameter/patient-gender-birth-city",
        "gender-birth-city",
        "composite",
        "Patient",
    );
    composite["component"] = json!([
        {"definition": "http://hl7.org/fhir/SearchParameter/individual-gender", "expression": "gender"},
        {"definition": city_url, "expression": city_expr}
    ]);
    app.create(&composite).await;
    let patient = |gender: &str, city: &str| {
        json!({"resourceType": "Patient", "gender": gender, "extension": [{
            "url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
            "valueAddress": {"city": city}}]})
    };
    let woman_boston = app.create(&patient("female", "Boston")).await;
    let man_boston = app.create(&patient("male", "Boston")).await;
    app.create(&patient("female", "Denver")).await;
    assert_eq!(
        find(&app, "/Patient?gender-birth-city=female$bos").await,
        vec![woman_boston.clone()]
    );
    let mut boston = vec![woman_boston.clone(), man_boston.clone()];
    boston.sort();
    assert_eq!(
        find(&app, "/Patient?gender-birth-city=female$boston,male$boston").await,
        boston
    );
    assert!(find(&app, "/Patient?gender-birth-city=male$denver")
        .await
        .is_empty());

    for (components, why) in [
        (
            json!([{"definition": city_url, "expression": city_expr}]),
            "exactly two",
        ),
        (
            json!([{"definition": city_url, "expression": city_expr},
                   {"definition": "http://hl7.org/fhir/SearchParameter/individual-gender", "expression": "gender"}]),
            "must be a token",
        ),
        (
            json!([{"definition": "http://hl7.org/fhir/SearchParameter/individual-gender", "expression": "gender"},
                   {"definition": "http://example.org/nope", "expression": "x"}]),
            "not a known search parameter",
        ),
        (
            json!([{"definition": "http://hl7.org/fhir/SearchParameter/individual-gender", "expression": "gender.("},
                   {"definition": city_url, "expression": city_expr}]),
            "FHIRPath",
        ),
    ] {
        let mut bad = sp(
            "http://example.org/fhir/SearchParameter/bad-composite",
            "bad-composite",
            "composite",
            "Patient",
        );
        bad["component"] = components;
        let resp = app.post("/SearchParameter", &bad).await.expect(400);
        assert!(resp.text.contains(why), "{why}: {}", resp.text);
    }
}

/// The searchset served as text (stored resources copied in without re-encoding) is
/// exactly the Bundle built as a JSON value: matches, includes, outcome entries, links.
#[tokio::test]
async fn searchset_text_equals_the_built_bundle() {
    let app = app();
    let w = world(&app).await;
    let service = &app.state.service;
    for query in [
        format!(
            "_id={}&_revinclude=Observation:subject&_include=Patient:organization",
            w.p1
        ),
        "_count=1&_total=accurate&nonsense=1".to_string(),
        "name=nobody".to_string(),
    ] {
        let pairs = salus_service::parse_pairs(&query);
        let result = service.search("Patient", &pairs, false).await.unwrap();
        let base = "http://example.org/fhir";
        let text = salus_service::response::searchset_text(base, "Patient", &result);
        let value = salus_service::response::searchset(base, "Patient", &result);
        assert_eq!(text, value.to_string(), "{query}");
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), value);
    }
    // the HTTP answer is that text
    let r = app
        .get(&format!(
            "/Patient?_id={}&_revinclude=Observation:subject",
            w.o1
        ))
        .await
        .expect(200);
    assert_eq!(r.json["type"], "searchset");
}
