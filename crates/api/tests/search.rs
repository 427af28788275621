//! The search subset: `_id`, `identifier`, `_lastUpdated`, `_count` paging, `_summary`,
//! `_elements`, POST `_search`, and rejection of what is not supported.

mod common;

use common::{app, patient, App};
use serde_json::{json, Value};
use std::collections::BTreeSet;

fn ids(bundle: &Value) -> BTreeSet<String> {
    bundle["entry"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

async fn search(app: &App, q: &str) -> Value {
    let r = app.get(q).await.expect(200);
    assert_eq!(r.json["resourceType"], "Bundle");
    assert_eq!(r.json["type"], "searchset");
    r.json
}

#[tokio::test]
async fn by_id() {
    let app = app();
    let a = app.create(&patient("urn:a", "1")).await;
    let b = app.create(&patient("urn:a", "2")).await;
    app.create(&patient("urn:a", "3")).await;
    assert_eq!(
        ids(&search(&app, &format!("/Patient?_id={a}")).await),
        BTreeSet::from([a.clone()])
    );
    assert_eq!(
        ids(&search(&app, &format!("/Patient?_id={a},{b}")).await),
        BTreeSet::from([a.clone(), b.clone()])
    );
    assert!(ids(&search(&app, "/Patient?_id=none").await).is_empty());
    // Entries carry fullUrl and search mode.
    let bundle = search(&app, &format!("/Patient?_id={a}")).await;
    let e = &bundle["entry"][0];
    assert!(e["fullUrl"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/Patient/{a}")));
    assert_eq!(e["search"]["mode"], "match");
    // Deleted resources are not found.
    app.delete(&format!("/Patient/{a}")).await.expect(204);
    assert!(ids(&search(&app, &format!("/Patient?_id={a}")).await).is_empty());
    // Type scoping: the id of a Patient is not found among Observations.
    assert!(ids(&search(&app, &format!("/Observation?_id={b}")).await).is_empty());
}

#[tokio::test]
async fn by_identifier() {
    let app = app();
    let with_sys = app.create(&patient("urn:mrn", "100")).await;
    let other_sys = app.create(&patient("urn:other", "100")).await;
    let no_sys = app
        .create(&json!({"resourceType": "Patient", "identifier": [{"value": "100"}]}))
        .await;
    let other_val = app.create(&patient("urn:mrn", "200")).await;

    // system|value
    assert_eq!(
        ids(&search(&app, "/Patient?identifier=urn:mrn|100").await),
        BTreeSet::from([with_sys.clone()])
    );
    // |value: no system
    assert_eq!(
        ids(&search(&app, "/Patient?identifier=%7C100").await),
        BTreeSet::from([no_sys.clone()])
    );
    // value: any system
    assert_eq!(
        ids(&search(&app, "/Patient?identifier=100").await),
        BTreeSet::from([with_sys.clone(), other_sys.clone(), no_sys.clone()])
    );
    // system|: any value in the system
    assert_eq!(
        ids(&search(&app, "/Patient?identifier=urn%3Amrn%7C").await),
        BTreeSet::from([with_sys.clone(), other_val.clone()])
    );
    // OR with a comma; AND by repeating.
    assert_eq!(
        ids(&search(&app, "/Patient?identifier=urn:mrn|100,urn:mrn|200").await),
        BTreeSet::from([with_sys.clone(), other_val.clone()])
    );
    assert_eq!(
        ids(&search(&app, &format!("/Patient?identifier=100&_id={no_sys}")).await),
        BTreeSet::from([no_sys.clone()])
    );
    // An update that drops the identifier drops it from the index.
    let mut body = app.get(&format!("/Patient/{other_val}")).await.json;
    body["identifier"] = json!([{"system": "urn:mrn", "value": "300"}]);
    app.put(&format!("/Patient/{other_val}"), &body)
        .await
        .expect(200);
    assert!(ids(&search(&app, "/Patient?identifier=urn:mrn|200").await).is_empty());
    assert_eq!(
        ids(&search(&app, "/Patient?identifier=urn:mrn|300").await),
        BTreeSet::from([other_val])
    );
}

#[tokio::test]
async fn by_last_updated() {
    let app = app();
    let old = app.create(&patient("urn:a", "old")).await;
    let old_lu = app.get(&format!("/Patient/{old}")).await.json["meta"]["lastUpdated"]
        .as_str()
        .unwrap()
        .to_string();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let new = app.create(&patient("urn:a", "new")).await;
    let new_lu = app.get(&format!("/Patient/{new}")).await.json["meta"]["lastUpdated"]
        .as_str()
        .unwrap()
        .to_string();
    let enc = |s: &str| s.replace('+', "%2B").replace(':', "%3A");
    assert_eq!(
        ids(&search(&app, &format!("/Patient?_lastUpdated=gt{}", enc(&old_lu))).await),
        BTreeSet::from([new.clone()])
    );
    assert_eq!(
        ids(&search(&app, &format!("/Patient?_lastUpdated=lt{}", enc(&new_lu))).await),
        BTreeSet::from([old.clone()])
    );
    assert_eq!(
        ids(&search(&app, &format!("/Patient?_lastUpdated=ge{}", enc(&old_lu))).await).len(),
        2
    );
    assert_eq!(
        ids(&search(&app, &format!("/Patient?_lastUpdated={}", enc(&new_lu))).await),
        BTreeSet::from([new.clone()])
    );
    assert_eq!(
        ids(&search(
            &app,
            "/Patient?_lastUpdated=ge2000-01-01&_lastUpdated=lt2000-01-02"
        )
        .await)
        .len(),
        0
    );
    assert_eq!(
        ids(&search(&app, "/Patient?_lastUpdated=gt2000").await).len(),
        2
    );
    app.get("/Patient?_lastUpdated=gt2024-13-45")
        .await
        .expect_outcome(400);
    app.get("/Patient?_lastUpdated=xx2024")
        .await
        .expect_outcome(400);
}

#[tokio::test]
async fn count_and_paging() {
    let app = app();
    let mut all = BTreeSet::new();
    for i in 0..7 {
        all.insert(app.create(&patient("urn:p", &i.to_string())).await);
    }
    let mut seen = BTreeSet::new();
    let mut url = "/Patient?_count=3".to_string();
    let mut pages = 0;
    loop {
        let b = search(&app, &url).await;
        pages += 1;
        let page = ids(&b);
        assert!(page.len() <= 3);
        for id in page {
            assert!(seen.insert(id), "no resource on two pages");
        }
        let next = b["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .map(|l| l["url"].as_str().unwrap().to_string());
        match next {
            // Links are absolute; send the path and query.
            Some(n) => {
                url = n
                    .split_once("://")
                    .unwrap()
                    .1
                    .split_once('/')
                    .map(|(_, p)| format!("/{p}"))
                    .unwrap()
            }
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, all);
    // `_total=accurate` gives the total; `_summary=count` only the total.
    let b = search(&app, "/Patient?_count=2&_total=accurate").await;
    assert_eq!(b["total"], 7);
    let b = search(&app, "/Patient?_summary=count").await;
    assert_eq!(b["total"], 7);
    assert!(b.get("entry").is_none());
    // `_count=0` returns no entries.
    assert!(ids(&search(&app, "/Patient?_count=0").await).is_empty());
    app.get("/Patient?_count=many").await.expect_outcome(400);
}

#[tokio::test]
async fn summary_and_elements_in_search() {
    let app = app();
    let mut p = patient("urn:s", "1");
    p["text"] = json!({"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Ann</div>"});
    app.create(&p).await;
    let b = search(&app, "/Patient?_elements=gender").await;
    let r = &b["entry"][0]["resource"];
    assert_eq!(r["gender"], "female");
    assert!(r.get("name").is_none() && r.get("identifier").is_none());
    assert!(r["meta"]["tag"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["code"] == "SUBSETTED"));
    let b = search(&app, "/Patient?_summary=text").await;
    let r = &b["entry"][0]["resource"];
    assert!(r.get("text").is_some() && r.get("gender").is_none());
    let b = search(&app, "/Patient?_summary=data").await;
    let r = &b["entry"][0]["resource"];
    assert!(r.get("text").is_none() && r.get("gender").is_some());
    let b = search(&app, "/Patient?_summary=true").await;
    let r = &b["entry"][0]["resource"];
    // name and gender are summary elements of Patient; text is not.
    assert!(r.get("name").is_some() && r.get("gender").is_some() && r.get("text").is_none());
    app.get("/Patient?_summary=bogus").await.expect_outcome(400);
}

#[tokio::test]
async fn strict_and_lenient_handling() {
    let app = app();
    app.create(&patient("urn:s", "1")).await;
    let strict = [("prefer", "handling=strict")];
    // strict: unknown parameters and unsupported modifiers are 400
    let r = app
        .req("GET", "/Patient?nonsense=1", &strict, None)
        .await
        .expect_outcome(400);
    assert!(r.text.contains("nonsense"), "{}", r.text);
    app.req("GET", "/Patient?identifier:below=x", &strict, None)
        .await
        .expect_outcome(400);
    // lenient (the default): ignored, reported in an outcome entry, left out of `self`
    let b = app
        .get("/Patient?nonsense=1&identifier=urn:s|1")
        .await
        .expect(200)
        .json;
    let entries = b["entry"].as_array().unwrap();
    assert_eq!(
        entries
            .iter()
            .filter(|e| e["search"]["mode"] == "match")
            .count(),
        1
    );
    let outcome = entries
        .iter()
        .find(|e| e["search"]["mode"] == "outcome")
        .unwrap();
    assert!(outcome["resource"]["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("nonsense"));
    let self_link = b["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "self")
        .unwrap();
    assert!(!self_link["url"].as_str().unwrap().contains("nonsense"));
    assert!(self_link["url"].as_str().unwrap().contains("identifier"));
    // malformed values of known parameters are errors in either mode
    app.get("/Patient?birthdate=yesterday")
        .await
        .expect_outcome(400);
    app.get("/NotAType?_id=1").await.expect_outcome(404);
}

#[tokio::test]
async fn post_search() {
    let app = app();
    let a = app.create(&patient("urn:ps", "1")).await;
    app.create(&patient("urn:ps", "2")).await;
    let r = app
        .raw(
            "POST",
            "/Patient/_search",
            &[("content-type", "application/x-www-form-urlencoded")],
            "identifier=urn%3Aps%7C1",
        )
        .await
        .expect(200);
    assert_eq!(ids(&r.json), BTreeSet::from([a]));
    app.raw(
        "POST",
        "/Patient/_search",
        &[("content-type", "application/fhir+json")],
        "{}",
    )
    .await
    .expect_outcome(415);
}
