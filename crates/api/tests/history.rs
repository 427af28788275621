//! History at instance, type and system level (R4 http.html#history) with `_since`,
//! `_at`, `_count` and paging through the `next` link.

mod common;

use common::{app, patient, App};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

/// `(type/id, version)` of every entry.
fn versions(bundle: &Value) -> Vec<(String, String)> {
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let full = e["fullUrl"].as_str().unwrap();
            let parts: Vec<&str> = full.rsplitn(3, '/').collect();
            let etag = e["response"]["etag"].as_str().unwrap();
            (
                format!("{}/{}", parts[1], parts[0]),
                etag.trim_start_matches("W/").trim_matches('"').to_string(),
            )
        })
        .collect()
}

fn path_of(url: &str) -> String {
    let after_scheme = url.split_once("://").map_or(url, |(_, r)| r);
    format!("/{}", after_scheme.split_once('/').unwrap().1)
}

fn next_link(bundle: &Value) -> Option<String> {
    bundle["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .map(|l| path_of(l["url"].as_str().unwrap()))
}

async fn history(app: &App, url: &str) -> Value {
    let r = app.get(url).await.expect(200);
    assert_eq!(r.json["resourceType"], "Bundle");
    assert_eq!(r.json["type"], "history");
    r.json
}

async fn last_updated(app: &App, url: &str) -> String {
    app.get(url).await.expect(200).json["meta"]["lastUpdated"]
        .as_str()
        .unwrap()
        .to_string()
}

fn enc(s: &str) -> String {
    s.replace(':', "%3A").replace('+', "%2B")
}

#[tokio::test]
async fn instance_history_lists_every_version_newest_first() {
    let app = app();
    let id = app.create(&patient("urn:h", "1")).await;
    let url = format!("/Patient/{id}");
    let mut body = app.get(&url).await.json;
    body["gender"] = json!("male");
    app.put(&url, &body).await.expect(200);
    app.raw(
        "PATCH",
        &url,
        &[("content-type", "application/json-patch+json")],
        r#"[{"op":"replace","path":"/gender","value":"other"}]"#,
    )
    .await
    .expect(200);
    app.delete(&url).await.expect(204);
    let h = history(&app, &format!("{url}/_history")).await;
    assert_eq!(h["total"], 4);
    let v: Vec<String> = versions(&h).into_iter().map(|(_, v)| v).collect();
    assert_eq!(v, ["4", "3", "2", "1"]);
    let methods: Vec<&str> = h["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["request"]["method"].as_str().unwrap())
        .collect();
    assert_eq!(methods, ["DELETE", "PATCH", "PUT", "POST"]);
    let e = &h["entry"];
    assert!(e[0].get("resource").is_none());
    assert!(e[0]["response"]["status"]
        .as_str()
        .unwrap()
        .starts_with("204"));
    assert!(e[3]["response"]["status"]
        .as_str()
        .unwrap()
        .starts_with("201"));
    assert_eq!(e[3]["request"]["url"], "Patient");
    assert_eq!(e[2]["request"]["url"], format!("Patient/{id}"));
    assert_eq!(e[1]["resource"]["gender"], "other");
    assert_eq!(e[2]["resource"]["gender"], "male");
    assert_eq!(e[3]["resource"]["gender"], "female");
    assert_eq!(e[3]["resource"]["meta"]["versionId"], "1");
    for entry in e.as_array().unwrap() {
        assert!(entry["response"]["lastModified"].is_string());
    }
    // A resource that never existed has no history.
    app.get("/Patient/none/_history").await.expect_outcome(404);
}

#[tokio::test]
async fn type_and_system_history() {
    let app = app();
    let p1 = app.create(&patient("urn:h", "1")).await;
    let p2 = app.create(&patient("urn:h", "2")).await;
    let o = app
        .create(&json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}}))
        .await;
    let mut body = app.get(&format!("/Patient/{p1}")).await.json;
    body["gender"] = json!("male");
    app.put(&format!("/Patient/{p1}"), &body).await.expect(200);
    app.delete(&format!("/Patient/{p2}")).await.expect(204);

    let t = history(&app, "/Patient/_history").await;
    assert_eq!(t["total"], 4);
    assert_eq!(
        versions(&t),
        [
            (format!("Patient/{p2}"), "2".to_string()),
            (format!("Patient/{p1}"), "2".to_string()),
            (format!("Patient/{p2}"), "1".to_string()),
            (format!("Patient/{p1}"), "1".to_string()),
        ]
    );
    let s = history(&app, "/_history").await;
    assert_eq!(s["total"], 5);
    assert_eq!(
        versions(&s)[2],
        (format!("Observation/{o}"), "1".to_string())
    );
    let obs = history(&app, "/Observation/_history").await;
    assert_eq!(obs["total"], 1);
    assert_eq!(history(&app, "/Encounter/_history").await["total"], 0);
}

#[tokio::test]
async fn since_and_at() {
    let app = app();
    let a = app.create(&patient("urn:h", "a")).await;
    let a_v1 = last_updated(&app, &format!("/Patient/{a}")).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut body = app.get(&format!("/Patient/{a}")).await.json;
    body["gender"] = json!("male");
    app.put(&format!("/Patient/{a}"), &body).await.expect(200);
    let a_v2 = last_updated(&app, &format!("/Patient/{a}")).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let b = app.create(&patient("urn:h", "b")).await;
    let b_v1 = last_updated(&app, &format!("/Patient/{b}")).await;
    assert!(a_v1 < a_v2 && a_v2 < b_v1);

    // _since is inclusive.
    let h = history(&app, &format!("/_history?_since={}", enc(&a_v2))).await;
    assert_eq!(
        versions(&h),
        [
            (format!("Patient/{b}"), "1".to_string()),
            (format!("Patient/{a}"), "2".to_string())
        ]
    );
    let h = history(
        &app,
        &format!("/Patient/{a}/_history?_since={}", enc(&a_v2)),
    )
    .await;
    assert_eq!(versions(&h), [(format!("Patient/{a}"), "2".to_string())]);
    let h = history(&app, &format!("/Patient/_history?_since={}", enc(&b_v1))).await;
    assert_eq!(versions(&h), [(format!("Patient/{b}"), "1".to_string())]);
    let h = history(&app, "/_history?_since=2999-01-01T00:00:00Z").await;
    assert_eq!(h["total"], 0);

    // _at: the versions current at that point in time (v2 of `a` and `b` are later).
    let h = history(&app, &format!("/_history?_at={}", enc(&a_v1))).await;
    assert_eq!(versions(&h), [(format!("Patient/{a}"), "1".to_string())]);
    // at a_v2, version 1 of `a` had already been replaced: only version 2 was current
    let h = history(&app, &format!("/Patient/{a}/_history?_at={}", enc(&a_v2))).await;
    assert_eq!(versions(&h), [(format!("Patient/{a}"), "2".to_string())]);
    let h = history(&app, &format!("/_history?_at={}", enc(&a_v2))).await;
    assert!(!versions(&h).iter().any(|(r, _)| r.ends_with(&b)));
    let h = history(&app, "/_history?_at=1999").await;
    assert_eq!(h["total"], 0);

    // Both together.
    let h = history(
        &app,
        &format!("/_history?_since={}&_at={}", enc(&a_v2), enc(&a_v2)),
    )
    .await;
    assert_eq!(versions(&h), [(format!("Patient/{a}"), "2".to_string())]);

    // Bad values are 400; unknown parameters are refused.
    app.get("/_history?_since=yesterday")
        .await
        .expect_outcome(400);
    app.get("/_history?_at=2024-13").await.expect_outcome(400);
    app.get("/_history?_count=-1").await.expect_outcome(400);
    app.get("/_history?_list=x").await.expect_outcome(400);
}

#[tokio::test]
async fn paging_with_count_follows_next_links() {
    let app = app();
    let mut expected = BTreeSet::new();
    let mut ids = vec![];
    for i in 0..5 {
        let id = app.create(&patient("urn:page", &i.to_string())).await;
        expected.insert((format!("Patient/{id}"), "1".to_string()));
        ids.push(id);
    }
    for id in &ids[..2] {
        let mut body = app.get(&format!("/Patient/{id}")).await.json;
        body["gender"] = json!("male");
        app.put(&format!("/Patient/{id}"), &body).await.expect(200);
        expected.insert((format!("Patient/{id}"), "2".to_string()));
    }
    for scope in ["/_history", "/Patient/_history"] {
        let mut url = format!("{scope}?_count=3");
        let mut seen = BTreeSet::new();
        let mut order = vec![];
        let mut pages = 0;
        loop {
            let h = history(&app, &url).await;
            pages += 1;
            assert_eq!(h["total"], 7, "total counts every version, not the page");
            let page = versions(&h);
            assert!(page.len() <= 3);
            for v in page {
                assert!(seen.insert(v.clone()), "{v:?} on two pages");
                order.push(v);
            }
            match next_link(&h) {
                Some(n) => {
                    assert!(n.contains("_count=3"), "next keeps _count: {n}");
                    url = n;
                }
                None => break,
            }
            assert!(pages < 10, "paging does not end");
        }
        assert_eq!(pages, 3, "{scope}");
        assert_eq!(seen, expected, "{scope}");
        // Newest first across pages: the two updates come first.
        assert!(order[..2].iter().all(|(_, v)| v == "2"), "{order:?}");
    }
    // Instance history pages too.
    let url = format!("/Patient/{}/_history?_count=1", ids[0]);
    let h = history(&app, &url).await;
    assert_eq!(
        versions(&h),
        [(format!("Patient/{}", ids[0]), "2".to_string())]
    );
    let h = history(&app, &next_link(&h).expect("next")).await;
    assert_eq!(
        versions(&h),
        [(format!("Patient/{}", ids[0]), "1".to_string())]
    );
    assert!(next_link(&h).is_none());
    // Paging keeps _since.
    let h = history(&app, "/_history?_count=2&_since=2000-01-01").await;
    assert!(next_link(&h).unwrap().contains("_since=2000-01-01"));
    // A page written after the first one was read does not shift later pages.
    let h1 = history(&app, "/_history?_count=4").await;
    app.create(&patient("urn:page", "late")).await;
    let h2 = history(&app, &next_link(&h1).unwrap()).await;
    let first: BTreeSet<_> = versions(&h1).into_iter().collect();
    for v in versions(&h2) {
        assert!(
            !first.contains(&v),
            "{v:?} repeated after a concurrent write"
        );
    }
    assert_eq!(versions(&h2).len(), 3);
    // `_count=0` gives the total only, and no `next` link that would never advance.
    let h = history(&app, "/_history?_count=0").await;
    assert_eq!(h["total"], 8);
    assert!(h["entry"].as_array().is_none_or(|e| e.is_empty()));
    assert!(next_link(&h).is_none(), "{h}");
}
