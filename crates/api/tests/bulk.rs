//! Bulk Data Access IG 2.0 through the router: `$export` (system, Patient, Group) with
//! kick-off, polling, download and cancel; snapshot consistency; `_typeFilter`,
//! `_since`, `_elements`; de-identified export; `$import` and the export → import →
//! export round trip; restart of unfinished jobs; `Patient/[id]/$everything`.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;

const BASE: &str = "http://localhost";
const KICK: &[(&str, &str)] = &[
    ("prefer", "respond-async"),
    ("accept", "application/fhir+json"),
];

fn local(url: &str) -> String {
    url.strip_prefix(BASE)
        .unwrap_or_else(|| panic!("{url} is not under {BASE}"))
        .to_string()
}

/// Kick off (GET, or POST with a body) and return the status URL's path.
async fn kick(app: &App, uri: &str, body: Option<&Value>) -> String {
    let method = if body.is_some() { "POST" } else { "GET" };
    let r = app.req(method, uri, KICK, body).await.expect(202);
    local(r.header("content-location").expect("Content-Location"))
}

/// Poll until done, checking the in-progress answers; the manifest.
async fn poll(app: &App, status: &str) -> Value {
    for _ in 0..100_000 {
        let r = app.get(status).await;
        match r.status.as_u16() {
            202 => {
                assert!(r.header("x-progress").is_some(), "X-Progress while running");
                assert!(
                    r.header("retry-after").is_some(),
                    "Retry-After while running"
                );
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            200 => {
                assert!(r
                    .header("content-type")
                    .is_some_and(|c| c.starts_with("application/json")));
                return r.json;
            }
            other => panic!("status {other}: {}", r.text),
        }
    }
    panic!("the job did not finish");
}

async fn lines(app: &App, url: &str) -> Vec<Value> {
    let r = app.get(&local(url)).await.expect(200);
    assert_eq!(r.header("content-type"), Some("application/fhir+ndjson"));
    r.text
        .lines()
        .map(|l| serde_json::from_str(l).expect("NDJSON line"))
        .collect()
}

/// Every output resource by type (and checks each file's count).
async fn outputs(app: &App, manifest: &Value) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for o in manifest["output"].as_array().expect("output") {
        let got = lines(app, o["url"].as_str().unwrap()).await;
        assert_eq!(
            got.len() as u64,
            o["count"].as_u64().unwrap(),
            "count of {o}"
        );
        for r in &got {
            assert_eq!(r["resourceType"], o["type"]);
        }
        out.entry(o["type"].as_str().unwrap().to_string())
            .or_default()
            .extend(got);
    }
    out
}

async fn export(app: &App, uri: &str) -> (Value, BTreeMap<String, Vec<Value>>) {
    let status = kick(app, uri, None).await;
    let manifest = poll(app, &status).await;
    let out = outputs(app, &manifest).await;
    (manifest, out)
}

fn ids(rs: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = rs
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

fn observation(patient: &str, category: &str) -> Value {
    json!({"resourceType": "Observation", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": category}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "valueQuantity": {"value": 13.2, "unit": "g/dL"}})
}

#[tokio::test]
async fn kick_off_poll_download_and_cancel() {
    let app = bulk_app(|c| c.max_file_resources = 2);
    let mut patients = vec![];
    for i in 0..3 {
        patients.push(app.create(&patient("urn:x", &format!("p{i}"))).await);
    }
    app.create(&observation(&patients[0], "laboratory")).await;
    let status = kick(&app, "/$export", None).await;
    assert!(status.starts_with("/$export-poll-status?_jobId="));
    let manifest = poll(&app, &status).await;
    assert!(manifest["transactionTime"].is_string());
    assert_eq!(manifest["request"], format!("{BASE}/$export"));
    assert_eq!(manifest["requiresAccessToken"], false);
    assert_eq!(manifest["error"], json!([]));
    let files: Vec<&str> = manifest["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        files,
        vec!["Patient", "Patient", "Observation"],
        "split at 2 resources, Patients first"
    );
    let out = outputs(&app, &manifest).await;
    assert_eq!(ids(&out["Patient"]), {
        let mut p = patients.clone();
        p.sort();
        p
    });
    assert_eq!(out["Observation"].len(), 1);

    // DELETE cancels (here: removes a finished job); then everything about it is 404.
    let url = manifest["output"][0]["url"].as_str().unwrap().to_string();
    app.delete(&status).await.expect(202);
    app.get(&status).await.expect_outcome(404);
    app.delete(&status).await.expect_outcome(404);
    app.get(&local(&url)).await.expect_outcome(404);

    // A running job can be cancelled too.
    let status = kick(&app, "/$export", None).await;
    app.delete(&status).await.expect(202);
    app.get(&status).await.expect_outcome(404);
}

#[tokio::test]
async fn kick_off_errors_are_operation_outcomes() {
    let app = bulk_app(|_| {});
    app.create(&patient("urn:x", "1")).await;
    // no Prefer: respond-async
    app.req(
        "GET",
        "/$export",
        &[("accept", "application/fhir+json")],
        None,
    )
    .await
    .expect_outcome(400);
    for bad in [
        "/$export?_type=NoSuchType",
        "/$export?_outputFormat=text/csv",
        "/$export?_since=last-tuesday",
        "/$export?_typeFilter=Observation%3Fno-such-param%3Dx",
        "/$export?includeAssociatedData=LatestProvenanceResources",
        "/$export?_anonymizationConfig=no-such-config",
        "/Patient/$export?_type=Organization",
    ] {
        let r = app.req("GET", bad, KICK, None).await;
        assert_eq!(r.status.as_u16(), 400, "{bad}: {}", r.text);
        assert_outcome(&r.json);
    }
    app.req("GET", "/Group/nope/$export", KICK, None)
        .await
        .expect_outcome(404);
    app.req(
        "GET",
        "/$export",
        &[("prefer", "respond-async"), ("accept", "text/csv")],
        None,
    )
    .await
    .expect_outcome(406);
    app.get("/$export-poll-status?_jobId=0123abc")
        .await
        .expect_outcome(404);
    app.get("/$export-poll-status").await.expect_outcome(400);
    app.get("/$export-file/0123abc/Patient-1.ndjson")
        .await
        .expect_outcome(404);
    // Without an engine the operations are reported as unsupported.
    let plain = app_with(Default::default(), Default::default());
    let r = plain.req("GET", "/$export", KICK, None).await;
    assert!(r.status.is_client_error() || r.status.is_server_error());
    assert_outcome(&r.json);
    // Ordinary routes still work next to the operation routes.
    app.get("/Patient").await.expect(200);
}

#[tokio::test]
async fn writes_after_kick_off_are_not_exported() {
    // One resource per page: the job takes many steps, interleaved with the writes.
    let app = bulk_app(|c| c.page_size = 1);
    let mut ps = vec![];
    for i in 0..20 {
        ps.push(app.create(&patient("urn:s", &format!("{i}"))).await);
    }
    let status = kick(&app, "/$export?_type=Patient", None).await;
    let mut changed = patient("urn:s", "changed");
    changed["id"] = json!(ps[0]);
    app.put(&format!("/Patient/{}", ps[0]), &changed)
        .await
        .expect(200);
    app.delete(&format!("/Patient/{}", ps[1])).await;
    let late = app.create(&patient("urn:s", "late")).await;
    let manifest = poll(&app, &status).await;
    let out = outputs(&app, &manifest).await;
    let got = &out["Patient"];
    assert_eq!(got.len(), 20, "exactly the 20 patients of the snapshot");
    assert!(
        !ids(got).contains(&late),
        "a resource created after kick-off is not exported"
    );
    assert!(
        ids(got).contains(&ps[1]),
        "a resource deleted after kick-off is still exported"
    );
    for r in got {
        assert_eq!(
            r["meta"]["versionId"], "1",
            "every resource as of the snapshot: {r}"
        );
        assert_ne!(r["identifier"][0]["value"], "changed");
    }
    // A new export sees the new state.
    let (_, out) = export(&app, "/$export?_type=Patient").await;
    assert_eq!(out["Patient"].len(), 20);
    assert!(ids(&out["Patient"]).contains(&late));
}

#[tokio::test]
async fn type_filter_since_and_elements() {
    let app = bulk_app(|_| {});
    let p = app.create(&patient("urn:f", "1")).await;
    let lab = app.create(&observation(&p, "laboratory")).await;
    app.create(&observation(&p, "vital-signs")).await;
    let (_, out) = export(
        &app,
        "/$export?_typeFilter=Observation%3Fcategory%3Dlaboratory",
    )
    .await;
    assert_eq!(
        ids(&out["Observation"]),
        vec![lab.clone()],
        "only laboratory Observations"
    );
    assert_eq!(
        out["Patient"].len(),
        1,
        "types without a filter are exported whole"
    );

    // _since: only what changed at or after it (and deletions, in `deleted`).
    let since = app.get(&format!("/Observation/{lab}")).await.json["meta"]["lastUpdated"]
        .as_str()
        .unwrap()
        .to_string();
    let later = app.create(&observation(&p, "laboratory")).await;
    app.delete(&format!("/Observation/{lab}")).await;
    let uri = format!(
        "/$export?_type=Observation&_since={}",
        since.replace('+', "%2B")
    );
    let (manifest, out) = export(&app, &uri).await;
    let got = ids(&out["Observation"]);
    assert!(got.contains(&later));
    assert!(!got.contains(&lab), "deleted: not in output");
    let deleted = manifest["deleted"]
        .as_array()
        .expect("deleted files with _since");
    let bundles = lines(&app, deleted[0]["url"].as_str().unwrap()).await;
    assert_eq!(bundles[0]["type"], "transaction");
    assert_eq!(
        bundles[0]["entry"][0]["request"],
        json!({"method": "DELETE", "url": format!("Observation/{lab}")})
    );

    // _elements keeps the listed and the mandatory elements, tagged SUBSETTED.
    let (_, out) = export(
        &app,
        "/$export?_type=Observation,Patient&_elements=Observation.subject",
    )
    .await;
    for o in &out["Observation"] {
        assert!(o.get("subject").is_some() && o.get("status").is_some() && o.get("code").is_some());
        assert!(
            o.get("valueQuantity").is_none() && o.get("category").is_none(),
            "{o}"
        );
        assert_eq!(o["meta"]["tag"][0]["code"], "SUBSETTED");
    }
    let pat = &out["Patient"][0];
    assert!(
        pat.get("name").is_some(),
        "elements for another type leave Patient whole"
    );
}

#[tokio::test]
async fn patient_and_group_exports_follow_the_compartment() {
    let app = bulk_app(|_| {});
    let p1 = app.create(&patient("urn:g", "1")).await;
    let p2 = app.create(&patient("urn:g", "2")).await;
    let o1 = app.create(&observation(&p1, "laboratory")).await;
    let o2 = app.create(&observation(&p2, "laboratory")).await;
    app.create(&json!({"resourceType": "Organization", "name": "Acme"}))
        .await;
    let g = app
        .create(
            &json!({"resourceType": "Group", "type": "person", "actual": true,
            "member": [{"entity": {"reference": format!("Patient/{p1}")}}]}),
        )
        .await;
    let (manifest, out) = export(&app, &format!("/Group/{g}/$export")).await;
    assert_eq!(manifest["request"], format!("{BASE}/Group/{g}/$export"));
    assert_eq!(ids(&out["Patient"]), vec![p1.clone()]);
    assert_eq!(ids(&out["Observation"]), vec![o1.clone()]);
    assert!(!out.contains_key("Organization"), "{:?}", out.keys());
    // The Group itself is in its member's compartment (Group.member).
    assert_eq!(out.get("Group").map(Vec::len), Some(1));

    let (_, out) = export(&app, "/Patient/$export").await;
    assert_eq!(out["Patient"].len(), 2);
    assert_eq!(out["Observation"].len(), 2);
    assert!(
        !out.contains_key("Organization"),
        "not in the Patient compartment"
    );

    let body = json!({"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": format!("Patient/{p2}")}},
        {"name": "_type", "valueString": "Observation"}]});
    let status = kick(&app, "/Patient/$export", Some(&body)).await;
    let out = outputs(&app, &poll(&app, &status).await).await;
    assert_eq!(ids(&out["Observation"]), vec![o2]);
    assert!(!out.contains_key("Patient"));
}

/// NDJSON lines sorted, for comparing exports.
fn sorted_lines(out: &BTreeMap<String, Vec<Value>>) -> Vec<String> {
    let mut v: Vec<String> = out.values().flatten().map(|r| r.to_string()).collect();
    v.sort();
    v
}

#[tokio::test]
async fn export_import_export_round_trip() {
    let a = bulk_app(|c| c.max_file_resources = 3);
    let p = a.create(&patient("urn:r", "1")).await;
    for i in 0..5 {
        a.create(&observation(
            &p,
            if i % 2 == 0 {
                "laboratory"
            } else {
                "vital-signs"
            },
        ))
        .await;
    }
    // a second version, kept by an incremental load
    let mut v2 = patient("urn:r", "1b");
    v2["id"] = json!(p);
    a.put(&format!("/Patient/{p}"), &v2).await.expect(200);
    a.create(&json!({"resourceType": "Organization", "name": "Acme", "active": true}))
        .await;
    let (manifest, first) = export(&a, "/$export").await;

    // Files into the import folder of a new, empty server.
    let inbox_dir = tempfile::tempdir().unwrap();
    let inbox = inbox_dir.path().to_path_buf();
    let b = {
        let inbox = inbox.clone();
        bulk_app(move |c| c.import_dirs = vec![inbox])
    };
    let mut inputs = vec![];
    for (i, o) in manifest["output"].as_array().unwrap().iter().enumerate() {
        let text = a
            .get(&local(o["url"].as_str().unwrap()))
            .await
            .expect(200)
            .text;
        let path = inbox.join(format!("{i}.ndjson"));
        std::fs::write(&path, text).unwrap();
        inputs.push(json!({"name": "input", "part": [
            {"name": "type", "valueCode": o["type"]},
            {"name": "url", "valueUri": format!("file://{}", path.display())}]}));
    }
    let mut parameter = vec![
        json!({"name": "inputFormat", "valueCode": "application/fhir+ndjson"}),
        json!({"name": "mode", "valueCode": "IncrementalLoad"}),
    ];
    parameter.extend(inputs);
    let body = json!({"resourceType": "Parameters", "parameter": parameter});
    let r = b
        .req("POST", "/$import", KICK, Some(&body))
        .await
        .expect(202);
    let status = local(r.header("content-location").unwrap());
    assert!(status.starts_with("/$import-poll-status?_jobId="));
    let imported = poll(&b, &status).await;
    let total: u64 = imported["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["count"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 7, "{imported}");
    assert_eq!(imported["error"], json!([]), "{imported}");
    assert!(imported["output"][0]["inputUrl"].is_string());

    let (_, second) = export(&b, "/$export").await;
    assert_eq!(
        sorted_lines(&first),
        sorted_lines(&second),
        "the same resources, ids, versions and timestamps"
    );
    assert_eq!(second["Patient"][0]["meta"]["versionId"], "2");
    // Importing again changes nothing (versions already there are skipped).
    let r = b
        .req("POST", "/$import", KICK, Some(&body))
        .await
        .expect(202);
    let again = poll(&b, &local(r.header("content-location").unwrap())).await;
    assert!(
        again["output"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["count"] == 0),
        "{again}"
    );
}

#[tokio::test]
async fn import_reports_bad_lines_and_refuses_bad_locations() {
    let inbox_dir = tempfile::tempdir().unwrap();
    let inbox = inbox_dir.path().to_path_buf();
    let app = {
        let inbox = inbox.clone();
        bulk_app(move |c| c.import_dirs = vec![inbox])
    };
    let path = inbox.join("Patient.ndjson");
    let good = patient("urn:i", "ok");
    std::fs::write(
        &path,
        format!(
            "{}\nnot json\n{}\n{}\n",
            good,
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}}),
            json!({"resourceType": "Patient", "gender": "sometimes"})
        ),
    )
    .unwrap();
    let body = json!({"resourceType": "Parameters", "parameter": [
        {"name": "inputFormat", "valueCode": "application/fhir+ndjson"},
        {"name": "input", "part": [{"name": "type", "valueCode": "Patient"},
            {"name": "url", "valueUri": path.display().to_string()}]}]});
    let r = app
        .req("POST", "/$import", KICK, Some(&body))
        .await
        .expect(202);
    let m = poll(&app, &local(r.header("content-location").unwrap())).await;
    assert_eq!(m["output"][0]["count"], 1, "{m}");
    let errs = lines(&app, m["error"][0]["url"].as_str().unwrap()).await;
    assert_eq!(errs.len(), 3, "{errs:?}");
    for (e, line) in errs.iter().zip(["line 2", "line 3", "line 4"]) {
        assert_outcome(e);
        assert!(e.to_string().contains(line), "{e}");
    }
    assert_eq!(app.count("Patient").await, 1);

    for url in [
        "/etc/passwd",
        "ftp://example.org/x.ndjson",
        "relative/path.ndjson",
    ] {
        let mut b = body.clone();
        b["parameter"][1]["part"][1]["valueUri"] = json!(url);
        app.req("POST", "/$import", KICK, Some(&b))
            .await
            .expect_outcome(400);
    }
    app.req(
        "POST",
        "/$import",
        &[("accept", "application/fhir+json")],
        Some(&body),
    )
    .await
    .expect_outcome(400);
}

#[tokio::test]
async fn unfinished_jobs_restart_on_their_snapshot() {
    let app = bulk_app(|_| {});
    let p = app.create(&patient("urn:rs", "1")).await;
    let status = kick(&app, "/$export?_type=Patient", None).await;
    let first = poll(&app, &status).await;
    let id = status.rsplit('=').next().unwrap().to_string();
    // Pretend the server stopped mid-job: the job file says running, a partial file lies
    // there; meanwhile the data changed.
    let dir = app.dir().join("bulk").join(&id);
    let mut job: Value =
        serde_json::from_slice(&std::fs::read(dir.join("job.json")).unwrap()).unwrap();
    job["status"] = json!("running");
    job["output"] = json!([]);
    std::fs::write(dir.join("job.json"), job.to_string()).unwrap();
    std::fs::write(dir.join("Patient-1.ndjson"), "{\"partial").unwrap();
    app.create(&patient("urn:rs", "2")).await;

    // A new engine over the same folder (a restarted server) picks it up.
    let config = app.state.bulk.as_ref().unwrap().config().clone();
    let engine = salus_bulk::BulkEngine::new(app.state.service.clone(), config);
    assert_eq!(engine.resume().unwrap(), 1, "one unfinished job restarted");
    let done = engine.wait(&id).await.expect("job known after restart");
    assert_eq!(done.job.status, salus_bulk::JobStatus::Completed);
    assert_eq!(done.job.attempts, 2);
    let text = std::fs::read_to_string(dir.join("Patient-1.ndjson")).unwrap();
    let got: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        ids(&got),
        vec![p],
        "the original snapshot, not the later patient"
    );
    assert_eq!(
        done.job.transaction_time,
        first["transactionTime"].as_str().unwrap()
    );
}

#[tokio::test]
async fn de_identified_export_leaves_no_identity_of_the_input() {
    let dir = shared_dir().join("data/bulk-10-patients");
    if !dir.exists() {
        skip("shared bulk data", &dir);
        return;
    }
    let app = bulk_app(|_| {});
    let mut secrets: Vec<String> = vec![];
    for t in ["Patient", "Condition", "Encounter"] {
        let text = std::fs::read_to_string(dir.join(format!("{t}.000.ndjson"))).unwrap();
        let items: Vec<Value> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if t == "Patient" {
            for p in &items {
                for n in p["name"].as_array().into_iter().flatten() {
                    secrets.extend(n["family"].as_str().map(str::to_string));
                    for g in n["given"].as_array().into_iter().flatten() {
                        secrets.extend(g.as_str().map(str::to_string));
                    }
                }
                for i in p["identifier"].as_array().into_iter().flatten() {
                    secrets.extend(i["value"].as_str().map(str::to_string));
                }
                for c in p["telecom"].as_array().into_iter().flatten() {
                    secrets.extend(c["value"].as_str().map(str::to_string));
                }
            }
        }
        app.state
            .service
            .import_resources(items)
            .await
            .unwrap_or_else(|_| panic!("{t} loads"));
    }
    secrets.retain(|s| s.len() >= 4);
    assert!(secrets.len() > 30, "the input has identities to hide");
    let (manifest, out) = export(&app, "/$export?_anonymizationConfig=safe-harbor").await;
    assert!(out["Patient"].len() >= 10, "{manifest}");
    let mut text = String::new();
    for r in out.values().flatten() {
        text.push_str(&r.to_string());
        text.push('\n');
    }
    for s in &secrets {
        assert!(
            !text.contains(s.as_str()),
            "'{s}' of the input is in the de-identified export"
        );
    }
    println!(
        "de-identified export: {} resources, {} identities checked",
        out.values().map(Vec::len).sum::<usize>(),
        secrets.len()
    );
}

#[tokio::test]
async fn patient_everything_pages_and_filters() {
    let app = bulk_app(|_| {});
    let doc = app
        .create(&json!({"resourceType": "Practitioner", "name": [{"family": "House"}]}))
        .await;
    let mut p = patient("urn:e", "1");
    p["generalPractitioner"] = json!([{"reference": format!("Practitioner/{doc}")}]);
    let pid = app.create(&p).await;
    let other = app.create(&patient("urn:e", "2")).await;
    let mut obs = vec![];
    for _ in 0..5 {
        obs.push(app.create(&observation(&pid, "laboratory")).await);
    }
    app.create(&observation(&other, "laboratory")).await;
    let enc = app
        .create(&json!({"resourceType": "Encounter", "status": "finished",
            "class": {"code": "AMB"}, "subject": {"reference": format!("Patient/{pid}")}}))
        .await;

    // Page through with _count=2, following next links.
    let mut url = format!("/Patient/{pid}/$everything?_count=2");
    let mut matched = vec![];
    let mut included = vec![];
    let mut pages = 0;
    loop {
        let r = app.get(&url).await.expect(200);
        pages += 1;
        assert_eq!(r.json["type"], "searchset");
        for e in r.json["entry"].as_array().unwrap() {
            let key = format!(
                "{}/{}",
                e["resource"]["resourceType"].as_str().unwrap(),
                e["resource"]["id"].as_str().unwrap()
            );
            match e["search"]["mode"].as_str().unwrap() {
                "match" => matched.push(key),
                _ => included.push(key),
            }
        }
        let next = r.json["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .map(|l| l["url"].as_str().unwrap().to_string());
        match next {
            Some(n) => url = local(&n),
            None => break,
        }
        assert!(pages < 20);
    }
    let mut expected: Vec<String> = obs.iter().map(|o| format!("Observation/{o}")).collect();
    expected.push(format!("Patient/{pid}"));
    expected.push(format!("Encounter/{enc}"));
    expected.sort();
    let mut got = matched.clone();
    got.sort();
    assert_eq!(got, expected, "the patient and its compartment, each once");
    assert!(pages >= 4, "7 resources at 2 a page");
    assert_eq!(matched[0], format!("Patient/{pid}"), "the Patient first");
    assert!(
        included.contains(&format!("Practitioner/{doc}")),
        "referenced resources included"
    );
    assert!(!matched.iter().chain(&included).any(|k| k.contains(&other)));

    // _type and _since; POST with Parameters.
    let r = app
        .get(&format!("/Patient/{pid}/$everything?_type=Encounter"))
        .await
        .expect(200);
    let types: Vec<&str> = r.json["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["resourceType"].as_str().unwrap())
        .collect();
    assert_eq!(types, vec!["Encounter"]);
    let since = app.get(&format!("/Encounter/{enc}")).await.json["meta"]["lastUpdated"]
        .as_str()
        .unwrap()
        .to_string();
    let body = json!({"resourceType": "Parameters", "parameter": [{"name": "_since", "valueInstant": since}]});
    let r = app
        .post(&format!("/Patient/{pid}/$everything"), &body)
        .await
        .expect(200);
    let keys: Vec<String> = r.json["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys, vec![enc.clone()], "only what changed since");

    app.get("/Patient/nobody/$everything")
        .await
        .expect_outcome(404);
    app.get(&format!("/Patient/{pid}/$everything?_type=Nope"))
        .await
        .expect_outcome(400);
    // the compartment search route still works beside it
    app.get(&format!("/Patient/{pid}/Observation"))
        .await
        .expect(200);
}

#[tokio::test]
async fn import_fetches_http_inputs() {
    // A file server standing in for the data provider of "ping and pull".
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let ndjson = format!(
        "{}\n{}\n",
        patient("urn:h", "1"),
        json!({"resourceType": "Patient", "id": "fixed", "gender": "male"})
    );
    let files = axum::Router::new().route(
        "/Patient.ndjson",
        axum::routing::get(move || {
            let body = ndjson.clone();
            async move { body }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, files).await.unwrap() });
    let app = bulk_app(|_| {});
    let body = |url: String| {
        json!({"inputFormat": "application/fhir+ndjson", "inputSource": "http://provider.example",
            "input": [{"type": "Patient", "url": url}]})
    };
    let r = app
        .req(
            "POST",
            "/$import",
            KICK,
            Some(&body(format!("http://{addr}/Patient.ndjson"))),
        )
        .await
        .expect(202);
    let m = poll(&app, &local(r.header("content-location").unwrap())).await;
    assert_eq!(m["output"][0]["count"], 2, "{m}");
    app.get("/Patient/fixed").await.expect(200);
    // An input the provider does not have: the job fails with a readable outcome.
    let r = app
        .req(
            "POST",
            "/$import",
            KICK,
            Some(&body(format!("http://{addr}/missing.ndjson"))),
        )
        .await
        .expect(202);
    let status = local(r.header("content-location").unwrap());
    let mut last = None;
    for _ in 0..100_000 {
        let r = app.get(&status).await;
        if r.status.as_u16() != 202 {
            last = Some(r);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let r = last.expect("the job ended").expect_outcome(400);
    assert!(r.text.contains("404"), "{}", r.text);
}

#[tokio::test]
async fn until_exports_resources_as_they_were() {
    let app = bulk_app(|_| {});
    let p = app.create(&patient("urn:u", "before")).await;
    let until = app.get(&format!("/Patient/{p}")).await.json["meta"]["lastUpdated"]
        .as_str()
        .unwrap()
        .to_string();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let mut v2 = patient("urn:u", "after");
    v2["id"] = json!(p);
    app.put(&format!("/Patient/{p}"), &v2).await.expect(200);
    let later = app.create(&patient("urn:u", "later")).await;
    let uri = format!(
        "/$export?_type=Patient&_until={}",
        until.replace('+', "%2B")
    );
    let (_, out) = export(&app, &uri).await;
    assert_eq!(ids(&out["Patient"]), vec![p.clone()], "not {later}");
    assert_eq!(out["Patient"][0]["meta"]["versionId"], "1");
    assert_eq!(out["Patient"][0]["identifier"][0]["value"], "before");
}

#[tokio::test]
async fn a_restarted_job_of_a_caller_needs_that_caller_s_access_back() {
    let app = bulk_app(|_| {});
    app.create(&patient("urn:o", "1")).await;
    let status = kick(&app, "/$export?_type=Patient", None).await;
    poll(&app, &status).await;
    let id = status.rsplit('=').next().unwrap().to_string();
    let dir = app.dir().join("bulk").join(&id);
    let mut job: Value =
        serde_json::from_slice(&std::fs::read(dir.join("job.json")).unwrap()).unwrap();
    job["status"] = json!("running");
    job["owner"] = json!("client-a");
    std::fs::write(dir.join("job.json"), job.to_string()).unwrap();
    let config = app.state.bulk.as_ref().unwrap().config().clone();

    // No way to restore the owner's access: the job fails instead of running unscoped.
    let engine = salus_bulk::BulkEngine::new(app.state.service.clone(), config.clone());
    assert_eq!(engine.resume().unwrap(), 0);
    let v = engine.status(&id).unwrap();
    assert_eq!(v.job.status, salus_bulk::JobStatus::Rejected);
    assert!(v.job.failure.unwrap().contains("kick the job off again"));

    // With a rescope hook it runs through the service the hook gives for that owner.
    job["status"] = json!("running");
    std::fs::write(dir.join("job.json"), job.to_string()).unwrap();
    let svc = app.state.service.clone();
    let asked = std::sync::Arc::new(std::sync::Mutex::new(vec![]));
    let seen = asked.clone();
    let engine = salus_bulk::BulkEngine::new(app.state.service.clone(), config).with_rescope(
        std::sync::Arc::new(move |owner: &str| {
            seen.lock().unwrap().push(owner.to_string());
            Some(svc.clone())
        }),
    );
    assert_eq!(engine.resume().unwrap(), 1);
    let v = engine.wait(&id).await.unwrap();
    assert_eq!(v.job.status, salus_bulk::JobStatus::Completed);
    assert_eq!(*asked.lock().unwrap(), vec!["client-a".to_string()]);
}
