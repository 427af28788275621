//! Analytics through the real router, wired as `salus serve` wires it: `POST /$sql`
//! (JSON, CSV, NDJSON, Parquet; read-only; who may call it), tables that follow the
//! store's writes incrementally (creates, updates, deletes, a ViewDefinition stored as a
//! Binary), `Measure/$evaluate-measure` (summary, subject-list, the cohort as a Group,
//! stored), `$insights` and its SVG charts.

use axum::body::Body;
use axum::http::{Method, Request};
use base64::Engine;
use salus::config::Config;
use salus_service::salus_access::{Principal, StaticTokens};
use salus_service::FhirService;
use serde_json::{json, Value};
use std::sync::Arc;
use tower::ServiceExt;

struct App {
    router: axum::Router,
    svc: FhirService,
    analytics: Arc<salus::analytics::StoreAnalytics>,
    _dir: tempfile::TempDir,
}

struct Resp {
    status: u16,
    content_type: String,
    bytes: Vec<u8>,
    json: Value,
}

impl Resp {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).to_string()
    }

    fn outcome(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(
            self.json["resourceType"],
            "OperationOutcome",
            "{}",
            self.text()
        );
        self.json["issue"][0]["diagnostics"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

fn tokens() -> StaticTokens {
    StaticTokens::new()
        .with(
            "tok-admin",
            Principal::new("root", "user/*.cruds")
                .unwrap()
                .with_roles(&["admin"]),
        )
        .with(
            "tok-analyst",
            Principal::new("ann", "user/*.rs")
                .unwrap()
                .with_roles(&["analyst"]),
        )
        .with(
            "tok-clinician",
            Principal::new("dr", "user/*.cruds")
                .unwrap()
                .with_roles(&["clinician"]),
        )
}

fn app(secured: bool) -> App {
    app_with(secured, |_| {})
}

fn app_with(secured: bool, configure: impl FnOnce(&mut Config)) -> App {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().join("data"),
        ..Config::default()
    };
    configure(&mut config);
    let store = salus::serve::open_store(&config).unwrap();
    let svc = salus::serve::service(&config, store);
    let analytics = salus::analytics::open(&config, svc.unguarded_store().clone()).unwrap();
    let mut state = salus::serve::app_state(&config, svc.clone()).with_analytics(analytics.clone());
    if secured {
        state = state.with_auth(Arc::new(tokens()));
    }
    App {
        router: salus_api::router(state),
        svc,
        analytics,
        _dir: dir,
    }
}

impl App {
    async fn call(
        &self,
        method: Method,
        uri: &str,
        content_type: Option<&str>,
        token: Option<&str>,
        body: impl Into<Body>,
    ) -> Resp {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = self
            .router
            .clone()
            .oneshot(req.body(body.into()).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Resp {
            status,
            content_type,
            bytes,
            json,
        }
    }

    async fn sql(&self, query: &str) -> Resp {
        self.call(
            Method::POST,
            "/$sql",
            Some("text/plain"),
            None,
            query.to_string(),
        )
        .await
    }

    async fn put(&self, r: Value) {
        let (t, id) = (
            r["resourceType"].as_str().unwrap().to_string(),
            r["id"].as_str().unwrap().to_string(),
        );
        self.svc.update(&t, &id, r, None).await.unwrap();
    }
}

async fn seed(app: &App) {
    for (id, birth) in [
        ("p1", "1950-03-01"),
        ("p2", "1980-07-15"),
        ("p3", "2001-01-01"),
    ] {
        app.put(
            json!({"resourceType": "Patient", "id": id, "birthDate": birth, "gender": "female"}),
        )
        .await;
    }
    let enc = |id: &str, patient: &str, class: &str, start: &str, end: &str| {
        json!({"resourceType": "Encounter", "id": id, "status": "finished",
               "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": class},
               "subject": {"reference": format!("Patient/{patient}")},
               "period": {"start": start, "end": end}})
    };
    app.put(enc(
        "e1",
        "p1",
        "EMER",
        "2024-03-01T10:00:00Z",
        "2024-03-01T14:00:00Z",
    ))
    .await;
    app.put(enc(
        "e2",
        "p2",
        "EMER",
        "2024-05-01T10:00:00Z",
        "2024-05-01T12:00:00Z",
    ))
    .await;
    app.put(enc(
        "e3",
        "p1",
        "IMP",
        "2024-06-01T08:00:00Z",
        "2024-06-04T08:00:00Z",
    ))
    .await;
    app.put(enc(
        "e4",
        "p1",
        "IMP",
        "2024-06-20T08:00:00Z",
        "2024-06-22T08:00:00Z",
    ))
    .await;
    app.put(json!({"resourceType": "Condition", "id": "c1",
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]},
        "onsetDateTime": "2010-01-01"}))
        .await;
}

#[tokio::test]
async fn sql_over_the_store_follows_its_writes() {
    let app = app(false);
    seed(&app).await;
    let r = app.sql("SELECT count(*) AS n FROM mx_patient").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.content_type, "application/json");
    assert_eq!(r.json, json!([{"n": 3}]));
    // the tables were built under <data-dir>/analytics
    assert!(app
        .analytics
        .root()
        .join("mx_patient/_manifest.json")
        .is_file());

    // a Parameters body, CSV
    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "query", "valueString": "SELECT id, class_code FROM mx_encounter ORDER BY id"},
        {"name": "format", "valueCode": "csv"}]});
    let r = app
        .call(
            Method::POST,
            "/$sql",
            Some("application/fhir+json"),
            None,
            params.to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.content_type.starts_with("text/csv"));
    assert_eq!(
        r.text().lines().collect::<Vec<_>>(),
        ["id,class_code", "e1,EMER", "e2,EMER", "e3,IMP", "e4,IMP"]
    );
    // NDJSON and Parquet by _format
    let r = app
        .call(
            Method::POST,
            "/$sql?_format=ndjson",
            Some("text/plain"),
            None,
            "SELECT id FROM mx_patient ORDER BY id",
        )
        .await;
    assert_eq!(
        r.text(),
        "{\"id\":\"p1\"}\n{\"id\":\"p2\"}\n{\"id\":\"p3\"}\n"
    );
    let r = app
        .call(
            Method::POST,
            "/$sql?_format=parquet",
            Some("text/plain"),
            None,
            "SELECT id FROM mx_patient",
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.bytes[..4], b"PAR1");

    // writes reach the tables on the next query: create, update, delete
    app.put(
        json!({"resourceType": "Patient", "id": "p4", "birthDate": "1990-01-01", "gender": "male"}),
    )
    .await;
    app.put(json!({"resourceType": "Patient", "id": "p2", "birthDate": "1980-07-15", "gender": "other"}))
        .await;
    app.svc.delete("Patient", "p3", None).await.unwrap();
    let r = app
        .sql("SELECT id, gender FROM mx_patient ORDER BY id")
        .await;
    assert_eq!(
        r.json,
        json!([{"id": "p1", "gender": "female"}, {"id": "p2", "gender": "other"}, {"id": "p4", "gender": "male"}])
    );
    // ... and that was a refresh from the change feed, not a rebuild
    let report = app.analytics.refresh(false, None).await.unwrap();
    assert!(report.views.iter().all(|v| !v.full), "{report:?}");

    // a ViewDefinition stored as a Binary becomes a table; changing it rebuilds it
    let view = |cols: Value| {
        let v = json!({"resourceType": "ViewDefinition", "name": "pt_birth", "status": "active",
                       "resource": "Patient", "select": [{"column": cols}]});
        json!({"resourceType": "Binary", "id": "view-pt-birth", "contentType": "application/json",
               "data": base64::engine::general_purpose::STANDARD.encode(v.to_string())})
    };
    app.put(view(
        json!([{"name": "id", "path": "getResourceKey()"}, {"name": "birth", "path": "birthDate"}]),
    ))
    .await;
    let r = app.sql("SELECT id, birth FROM pt_birth ORDER BY id").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json[0], json!({"id": "p1", "birth": "1950-03-01"}));
    app.put(view(
        json!([{"name": "id", "path": "getResourceKey()"}, {"name": "sex", "path": "gender"}]),
    ))
    .await;
    let r = app.sql("SELECT sex FROM pt_birth ORDER BY id").await;
    assert_eq!(
        r.json,
        json!([{"sex": "female"}, {"sex": "other"}, {"sex": "male"}]),
        "{}",
        r.text()
    );
    app.svc
        .delete("Binary", "view-pt-birth", None)
        .await
        .unwrap();
    let msg = app.sql("SELECT * FROM pt_birth").await.outcome(400);
    assert!(msg.contains("pt_birth"), "{msg}");
}

#[tokio::test]
async fn sql_is_read_only_and_bad_input_is_an_outcome() {
    let app = app(false);
    seed(&app).await;
    for stmt in [
        "DROP TABLE mx_patient",
        "CREATE TABLE x AS SELECT 1",
        "INSERT INTO mx_patient (id) VALUES ('x')",
        "COPY mx_patient TO '/tmp/x.csv'",
    ] {
        let msg = app.sql(stmt).await.outcome(400);
        assert!(
            msg.contains("read-only") || msg.contains("SQL error"),
            "{stmt}: {msg}"
        );
    }
    let msg = app.sql("SELEC nothing").await.outcome(400);
    assert!(msg.contains("SQL error"), "{msg}");
    let msg = app.sql("SELECT * FROM no_such_table").await.outcome(400);
    assert!(msg.contains("no_such_table"), "{msg}");
    let msg = app.sql("   ").await.outcome(400);
    assert!(msg.contains("empty"), "{msg}");
    let r = app
        .call(
            Method::POST,
            "/$sql?_format=xml",
            Some("text/plain"),
            None,
            "SELECT 1",
        )
        .await;
    assert!(r.outcome(400).contains("xml"));
    let r = app
        .call(
            Method::POST,
            "/$sql",
            Some("application/fhir+json"),
            None,
            "{\"resourceType\": \"Parameters\"}",
        )
        .await;
    assert!(r.outcome(400).contains("query"));
    let r = app
        .call(Method::POST, "/$sql", Some("application/xml"), None, "<x/>")
        .await;
    assert_eq!(r.status, 415);
    // the tables are intact
    assert_eq!(
        app.sql("SELECT count(*) AS n FROM mx_patient").await.json,
        json!([{"n": 3}])
    );
}

#[tokio::test]
async fn sql_answers_are_bounded_in_rows_and_time() {
    let app = app_with(false, |c| {
        c.analytics.max_rows = 2;
        c.analytics.query_timeout_s = 1;
    });
    seed(&app).await;
    // three patients, two allowed: refused whole, not cut short
    let r = app.sql("SELECT id FROM mx_patient").await;
    let msg = r.outcome(400);
    assert!(msg.contains("more than 2 rows"), "{msg}");
    assert_eq!(r.json["issue"][0]["code"], "too-costly", "{}", r.text());
    let r = app
        .sql("SELECT id FROM mx_patient ORDER BY id LIMIT 2")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json.as_array().map(Vec::len), Some(2));
    assert_eq!(
        app.sql("SELECT count(*) AS n FROM mx_patient").await.json,
        json!([{"n": 3}])
    );
    // a statement that would run for hours is cancelled after query_timeout_s
    let r = app
        .sql("SELECT count(*) FROM generate_series(1, 100000000000)")
        .await;
    let msg = r.outcome(400);
    assert!(msg.contains("cancelled after 1 s"), "{msg}");
    assert_eq!(r.json["issue"][0]["code"], "timeout", "{}", r.text());
    // and the server answers the next one
    assert_eq!(app.sql("SELECT 1 AS one").await.json, json!([{"one": 1}]));
}

#[tokio::test]
async fn only_admins_and_analysts_may_query() {
    let app = app(true);
    seed(&app).await;
    let sql = |token: Option<&'static str>| {
        let app = &app;
        async move {
            app.call(
                Method::POST,
                "/$sql",
                Some("text/plain"),
                token,
                "SELECT count(*) AS n FROM mx_patient",
            )
            .await
        }
    };
    assert_eq!(sql(Some("tok-admin")).await.json, json!([{"n": 3}]));
    assert_eq!(sql(Some("tok-analyst")).await.json, json!([{"n": 3}]));
    sql(Some("tok-clinician")).await.outcome(403);
    sql(None).await.outcome(401);
    let uri = "/Measure/$evaluate-measure?measure=ed-visits-per-1000&periodStart=2024-01-01&periodEnd=2024-12-31";
    let r = app
        .call(Method::GET, uri, None, Some("tok-analyst"), Body::empty())
        .await;
    assert_eq!(r.json["resourceType"], "MeasureReport", "{}", r.text());
    app.call(Method::GET, uri, None, Some("tok-clinician"), Body::empty())
        .await
        .outcome(403);
    // storing a cohort writes a Group with the caller's own rights: the analyst has none
    let store = format!("{uri}&cohort=numerator&storeCohort=true");
    app.call(
        Method::GET,
        &store,
        None,
        Some("tok-analyst"),
        Body::empty(),
    )
    .await
    .outcome(403);
    let r = app
        .call(Method::GET, &store, None, Some("tok-admin"), Body::empty())
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
}

#[tokio::test]
async fn measures_as_reports_and_groups() {
    let app = app(false);
    seed(&app).await;
    let base = "/Measure/$evaluate-measure?periodStart=2024-01-01&periodEnd=2024-12-31";
    let get = |q: String| {
        let app = &app;
        async move { app.call(Method::GET, &q, None, None, Body::empty()).await }
    };
    // 2 ED visits over 3 living patients: 666.666667 per 1000
    let r = get(format!("{base}&measure=ed-visits-per-1000")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json["resourceType"], "MeasureReport");
    assert_eq!(r.json["type"], "summary");
    assert_eq!(r.json["measure"], "urn:salus:measure:ed-visits-per-1000");
    assert_eq!(
        r.json["group"][0]["measureScore"]["value"],
        json!(666.666667)
    );
    assert!(r.json["date"].is_string());
    // readmissions: e3 discharged 2024-06-04, e4 admitted 16 days later
    let r = get(format!(
        "{base}&measure=Measure/readmission-30-day&reportType=subject-list"
    ))
    .await;
    assert_eq!(r.json["type"], "subject-list", "{}", r.text());
    let pops = r.json["group"][0]["population"].as_array().unwrap().clone();
    let count = |code: &str| {
        pops.iter()
            .find(|p| p["code"]["coding"][0]["code"] == code)
            .map(|p| p["count"].as_u64().unwrap())
    };
    assert_eq!(count("denominator"), Some(2));
    assert_eq!(count("numerator"), Some(1));
    let lists = r.json["contained"].as_array().unwrap();
    let numerator = lists.iter().find(|l| l["id"] == "numerator").unwrap();
    assert_eq!(numerator["entry"][0]["item"]["reference"], "Encounter/e3");
    // the instance form and POST with Parameters
    let r = get(
        "/Measure/ed-visits-per-1000/$evaluate-measure?periodStart=2024-01-01&periodEnd=2024-06-30"
            .into(),
    )
    .await;
    assert_eq!(r.json["period"]["end"], "2024-06-30", "{}", r.text());
    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "measure", "valueString": "urn:salus:measure:hypertension-bp-control"},
        {"name": "periodStart", "valueDate": "2024-01-01"},
        {"name": "periodEnd", "valueDate": "2024-12-31"}]});
    let r = app
        .call(
            Method::POST,
            "/Measure/$evaluate-measure",
            Some("application/fhir+json"),
            None,
            params.to_string(),
        )
        .await;
    assert_eq!(
        r.json["measure"],
        "urn:salus:measure:hypertension-bp-control",
        "{}",
        r.text()
    );
    // the cohort as a Group, returned, then stored
    let r = get(format!(
        "{base}&measure=readmission-30-day&cohort=numerator"
    ))
    .await;
    assert_eq!(r.json["resourceType"], "Group", "{}", r.text());
    assert_eq!(r.json["member"][0]["entity"]["reference"], "Patient/p1");
    let r = get(format!(
        "{base}&measure=readmission-30-day&cohort=numerator&storeCohort=true"
    ))
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json["id"].as_str().unwrap().to_string();
    let g = get(format!("/Group/{id}")).await;
    assert_eq!(g.json["quantity"], 1, "{}", g.text());
    // bad input
    assert!(get(format!("{base}&measure=no-such"))
        .await
        .outcome(404)
        .contains("no-such"));
    assert!(get(
        "/Measure/$evaluate-measure?measure=ed-visits-per-1000&periodStart=2024-01-01".into()
    )
    .await
    .outcome(400)
    .contains("periodEnd"));
    assert!(get("/Measure/$evaluate-measure?measure=ed-visits-per-1000&periodStart=2024-12-31&periodEnd=2024-01-01".into())
        .await
        .outcome(400)
        .contains("after"));
    assert!(get(format!(
        "{base}&measure=ed-visits-per-1000&reportType=individual"
    ))
    .await
    .outcome(400)
    .contains("reportType"));
    assert!(
        get(format!("{base}&measure=ed-visits-per-1000&cohort=nope"))
            .await
            .outcome(400)
            .contains("nope")
    );
}

#[tokio::test]
async fn insights_dashboard_and_svg_charts() {
    let app = app(false);
    seed(&app).await;
    // the CapabilityStatement names the analytics operations
    let m = app
        .call(Method::GET, "/metadata", None, None, Body::empty())
        .await;
    let rest = &m.json["rest"][0];
    let system: Vec<&str> = rest["operation"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["name"].as_str())
        .collect();
    assert!(
        system.contains(&"sql") && system.contains(&"insights"),
        "{system:?}"
    );
    let measure = rest["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Measure")
        .unwrap();
    assert!(measure["operation"]
        .as_array()
        .unwrap()
        .iter()
        .any(|o| o["name"] == "evaluate-measure"));
    let r = app
        .call(Method::GET, "/$insights", None, None, Body::empty())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let d = &r.json;
    assert_eq!(
        d["encountersByClass"],
        json!([{"class": "EMER", "encounters": 2}, {"class": "IMP", "encounters": 2}])
    );
    let los = d["lengthOfStayByClass"].as_array().unwrap();
    assert_eq!(
        los[0],
        json!({"class": "IMP", "averageDays": 2.5, "encounters": 2})
    );
    let days = d["census"]["days"].as_array().unwrap();
    assert_eq!(days.len(), 30);
    assert_eq!(
        days.last().unwrap(),
        &json!({"day": "2024-06-22", "inpatients": 1})
    );
    assert_eq!(d["topConditions"][0]["code"], "38341003");
    assert_eq!(d["measures"]["period"]["start"], "2024-01-01");
    assert_eq!(d["measures"]["results"].as_array().unwrap().len(), 5);

    let r = app
        .call(
            Method::GET,
            "/$insights/encounters-by-class.svg",
            None,
            None,
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.content_type, "image/svg+xml");
    let text = r.text();
    let doc = roxmltree::Document::parse(&text).expect("the SVG is well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let labels: Vec<&str> = doc
        .descendants()
        .filter(|n| n.tag_name().name() == "text")
        .filter_map(|n| n.text())
        .map(str::trim)
        .collect();
    for want in ["Encounters by class", "EMER", "IMP", "2"] {
        assert!(labels.contains(&want), "{want} in {labels:?}");
    }
    let bars = doc
        .descendants()
        .filter(|n| n.tag_name().name() == "rect")
        .count();
    assert!(bars >= 2, "{bars} rects");
    for chart in salus::insights::CHARTS {
        let r = app
            .call(
                Method::GET,
                &format!("/$insights/{chart}.svg"),
                None,
                None,
                Body::empty(),
            )
            .await;
        assert_eq!(r.status, 200, "{chart}: {}", r.text());
        roxmltree::Document::parse(&r.text()).unwrap_or_else(|e| panic!("{chart}: {e}"));
    }
    app.call(
        Method::GET,
        "/$insights/nope.svg",
        None,
        None,
        Body::empty(),
    )
    .await
    .outcome(404);
}

fn shared_dir() -> Option<std::path::PathBuf> {
    use std::path::{Path, PathBuf};
    let dir = std::env::var_os("SALUS_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    if dir.join("data/bulk-10-patients").is_dir() {
        Some(dir)
    } else if std::env::var_os("SALUS_REQUIRE_SHARED").is_some() {
        panic!(
            "shared material required (SALUS_REQUIRE_SHARED) but {} is missing",
            dir.display()
        );
    } else {
        eprintln!("SKIPPED: shared material not found at {}", dir.display());
        None
    }
}

/// The Synthea sample imported into the store gives, through `$evaluate-measure`, the
/// same populations as the library evaluating the NDJSON files in memory.
#[tokio::test]
async fn store_backed_measures_match_the_library_on_the_shared_sample() {
    let Some(shared) = shared_dir() else { return };
    let input = shared.join("data/bulk-10-patients");
    let app = app(false);
    let target = salus::import::Target::Local(app.svc.clone());
    let report = salus::import::import_paths(&target, std::slice::from_ref(&input), false)
        .await
        .unwrap();
    assert!(report.ok(), "the sample imports");
    let mut resources = vec![];
    for e in std::fs::read_dir(&input).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "ndjson") && !p.ends_with("log.ndjson") {
            for line in std::fs::read_to_string(&p).unwrap().lines() {
                if !line.trim().is_empty() {
                    resources.push(serde_json::from_str::<Value>(line).unwrap());
                }
            }
        }
    }
    let mut memory = salus_analytics::Analytics::in_memory();
    salus_analytics::measures::register_in_memory(&mut memory, &resources).unwrap();
    let n = app.sql("SELECT count(*) AS n FROM mx_encounter").await;
    let encounters = resources
        .iter()
        .filter(|r| r["resourceType"] == "Encounter")
        .count();
    assert_eq!(n.json, json!([{"n": encounters}]), "{}", n.text());
    for year in [2012, 2016, 2020] {
        let period = salus_analytics::measures::MeasurePeriod::year(year).unwrap();
        for m in salus_analytics::measures::MEASURES {
            let want = salus_analytics::measures::evaluate(&memory, m.id, &period)
                .await
                .unwrap();
            let uri = format!(
                "/Measure/$evaluate-measure?measure={}&periodStart={year}-01-01&periodEnd={year}-12-31",
                m.id
            );
            let r = app.call(Method::GET, &uri, None, None, Body::empty()).await;
            assert_eq!(r.status, 200, "{}", r.text());
            for p in r.json["group"][0]["population"].as_array().unwrap() {
                let code = p["code"]["coding"][0]["code"].as_str().unwrap();
                assert_eq!(
                    p["count"].as_u64().unwrap(),
                    want.count(code),
                    "{} {year} {code}",
                    m.id
                );
            }
        }
    }
}
