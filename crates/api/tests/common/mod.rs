//! Shared test harness: the real router over a SQLite store in a temporary directory,
//! wired as `salus serve` wires it (`open_store` → `service` → `app_state`), driven with
//! `tower::ServiceExt::oneshot` (no socket).
//!
//! With `SALUS_TEST_BACKEND=postgres` (and `SALUS_TEST_POSTGRES=postgres://…`) every test
//! runs on PostgreSQL instead, each in a fresh schema dropped afterwards: one API suite,
//! two backends (`scripts/test` runs it both ways).
#![allow(dead_code)]

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use salus_api::{router, ApiConfig, AppState};
use salus_service::{FhirService, Limits};
use salus_store::sqlite::{SqliteOptions, SqliteStore};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use tower::ServiceExt;

/// A running application (no socket) and the directory its database lives in.
pub struct App {
    pub router: Router,
    pub state: AppState,
    _dir: tempfile::TempDir,
    _pg: Option<PgSchema>,
}

/// Set-up and tear-down of PostgreSQL schemas run on a runtime of their own that lives
/// as long as the test process (the pool's first connections belong to it), on another
/// thread (a test's own runtime cannot block on them).
fn pg_runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime")
    })
}

fn on_pg_runtime<T: Send + 'static>(f: impl std::future::Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || pg_runtime().block_on(f))
        .join()
        .expect("PostgreSQL set-up thread")
}

/// A test's PostgreSQL schema, dropped with the test's [`App`].
struct PgSchema {
    url: String,
    schema: String,
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let (url, schema) = (self.url.clone(), self.schema.clone());
        on_pg_runtime(async move {
            if let Ok((client, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                let task = tokio::spawn(conn);
                // The test's connections are named after its schema; one may still be
                // in a transaction whose rollback was queued on the test's (now idle)
                // runtime: end them first. `schema` is ours: letters, digits and `_`.
                let _ = client
                    .batch_execute(&format!(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE application_name = '{schema}' AND pid <> pg_backend_pid(); \
                         DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
                    ))
                    .await;
                drop(client);
                let _ = task.await;
            }
        });
    }
}

/// The backend the suite runs on: `SALUS_TEST_BACKEND` (`sqlite`, the default, or
/// `postgres`).
fn backend(dir: &std::path::Path) -> (Arc<dyn salus_store::Store>, Option<PgSchema>) {
    match std::env::var("SALUS_TEST_BACKEND").as_deref() {
        Ok("postgres") => {
            let url = std::env::var("SALUS_TEST_POSTGRES")
                .expect("SALUS_TEST_BACKEND=postgres needs SALUS_TEST_POSTGRES=postgres://…");
            let schema = format!("salus_api_{}", uuid::Uuid::new_v4().simple());
            let options = salus_store_pg::PgOptions {
                schema: Some(schema.clone()),
                pool_size: 8,
                application_name: schema.clone(),
                encryption: test_kek(),
                ..Default::default()
            };
            let u = url.clone();
            let store =
                on_pg_runtime(async move { salus_store_pg::PgStore::connect(&u, options).await })
                    .expect("connect to PostgreSQL");
            (Arc::new(store), Some(PgSchema { url, schema }))
        }
        Ok("sqlite") | Err(_) => (
            Arc::new(SqliteStore::open_dir(dir, sqlite_options()).expect("open store")),
            None,
        ),
        Ok(other) => panic!("SALUS_TEST_BACKEND '{other}': use sqlite or postgres"),
    }
}

/// With `SALUS_TEST_ENCRYPTION` set, every store of the suite is encrypted at rest
/// (SQLite files under a data key, PostgreSQL bodies under a KEK): one key per process.
fn test_key() -> Option<&'static salus_keys::DataKey> {
    static KEY: std::sync::OnceLock<Option<salus_keys::DataKey>> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        std::env::var_os("SALUS_TEST_ENCRYPTION").map(|_| salus_keys::DataKey::generate())
    })
    .as_ref()
}

fn test_kek() -> Option<Arc<dyn salus_keys::KeyEncryptionKey>> {
    test_key().map(|k| Arc::new(salus_keys::LocalKek::new(k.clone())) as _)
}

fn sqlite_options() -> SqliteOptions {
    SqliteOptions {
        key: test_key().cloned(),
        ..SqliteOptions::default()
    }
}

/// A response: status, headers, the body as text, and the body parsed as JSON
/// (`Value::Null` when empty or not JSON).
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
    pub json: Value,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Assert the status, printing the body when it differs.
    #[track_caller]
    pub fn expect(self, status: u16) -> Self {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            self.text
        );
        self
    }

    /// Assert the body is an OperationOutcome with at least one issue and FHIR JSON type.
    #[track_caller]
    pub fn expect_outcome(self, status: u16) -> Self {
        let r = self.expect(status);
        assert_outcome(&r.json);
        assert!(
            r.header("content-type")
                .is_some_and(|c| c.starts_with("application/fhir+json")),
            "OperationOutcome must be served as application/fhir+json, got {:?}",
            r.header("content-type")
        );
        r
    }
}

/// Assert `v` is an OperationOutcome with at least one issue, each with severity and code.
#[track_caller]
pub fn assert_outcome(v: &Value) {
    assert_eq!(
        v["resourceType"], "OperationOutcome",
        "not an OperationOutcome: {v}"
    );
    let issues = v["issue"].as_array().expect("OperationOutcome.issue");
    assert!(!issues.is_empty(), "OperationOutcome without issues: {v}");
    for i in issues {
        assert!(i["severity"].is_string() && i["code"].is_string(), "{i}");
    }
}

/// The store options and limits `salus serve` uses by default (store in a temp dir).
pub fn app() -> App {
    app_with(Limits::default(), ApiConfig::default())
}

pub fn app_with(limits: Limits, api: ApiConfig) -> App {
    app_wired(limits, api, |s| s)
}

/// An app whose state `wire` finishes (auth, audit, …) before the router is built.
pub fn app_wired(limits: Limits, api: ApiConfig, wire: impl FnOnce(AppState) -> AppState) -> App {
    let dir = tempfile::tempdir().expect("temp dir");
    let (store, pg) = backend(dir.path());
    let service = FhirService::new(store, limits);
    let state = wire(AppState::new(service, api));
    App {
        router: router(state.clone()),
        state,
        _dir: dir,
        _pg: pg,
    }
}

impl App {
    /// A second application on the same database, as a second server process would
    /// see it: on PostgreSQL its own connection pool on this test's schema, on SQLite
    /// the same database directory opened again. Its state has default settings.
    pub fn twin(&self) -> AppState {
        let store: Arc<dyn salus_store::Store> = match &self._pg {
            Some(pg) => {
                let options = salus_store_pg::PgOptions {
                    schema: Some(pg.schema.clone()),
                    pool_size: 8,
                    application_name: pg.schema.clone(),
                    encryption: test_kek(),
                    ..Default::default()
                };
                let u = pg.url.clone();
                Arc::new(
                    on_pg_runtime(
                        async move { salus_store_pg::PgStore::connect(&u, options).await },
                    )
                    .expect("connect to PostgreSQL"),
                )
            }
            None => Arc::new(
                SqliteStore::open_dir(self._dir.path(), sqlite_options())
                    .expect("open the store a second time"),
            ),
        };
        let service = FhirService::new(store, self.state.service.limits().clone());
        AppState::new(service, (*self.state.config).clone())
    }

    /// Send a request with a raw body; `headers` are added as given.
    pub async fn raw(
        &self,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: impl Into<Body>,
    ) -> Resp {
        let mut req = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).expect("method"))
            .uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(body.into()).expect("request");
        let resp = self.router.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let text = String::from_utf8(bytes.to_vec()).expect("UTF-8 body");
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            text,
            json,
        }
    }

    /// Send a request with an optional JSON body (`Content-Type: application/fhir+json`
    /// unless `headers` name one).
    pub async fn req(
        &self,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Resp {
        match body {
            None => self.raw(method, uri, headers, Body::empty()).await,
            Some(b) => {
                let mut h: Vec<(&str, &str)> = headers.to_vec();
                if !h
                    .iter()
                    .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                {
                    h.push(("content-type", "application/fhir+json"));
                }
                self.raw(method, uri, &h, serde_json::to_vec(b).expect("JSON"))
                    .await
            }
        }
    }

    /// The `(status, headers, json)` form.
    pub async fn call(
        &self,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> (StatusCode, HeaderMap, Value) {
        let r = self.req(method, uri, headers, body).await;
        (r.status, r.headers, r.json)
    }

    pub async fn get(&self, uri: &str) -> Resp {
        self.req("GET", uri, &[], None).await
    }

    pub async fn post(&self, uri: &str, body: &Value) -> Resp {
        self.req("POST", uri, &[], Some(body)).await
    }

    pub async fn put(&self, uri: &str, body: &Value) -> Resp {
        self.req("PUT", uri, &[], Some(body)).await
    }

    pub async fn delete(&self, uri: &str) -> Resp {
        self.req("DELETE", uri, &[], None).await
    }

    /// Create a resource with POST and return its server-assigned id.
    pub async fn create(&self, resource: &Value) -> String {
        let rtype = resource["resourceType"].as_str().expect("resourceType");
        let r = self.post(&format!("/{rtype}"), resource).await.expect(201);
        r.json["id"].as_str().expect("id").to_string()
    }

    /// Number of current resources of a type (via `_summary=count`).
    pub async fn count(&self, rtype: &str) -> u64 {
        let r = self
            .get(&format!("/{rtype}?_summary=count"))
            .await
            .expect(200);
        r.json["total"].as_u64().expect("total")
    }
}

/// A minimal valid Patient with one identifier.
pub fn patient(system: &str, value: &str) -> Value {
    serde_json::json!({
        "resourceType": "Patient",
        "identifier": [{"system": system, "value": value}],
        "name": [{"family": "Test", "given": [value]}],
        "gender": "female"
    })
}

/// The shared folder (`../shared` next to the workspace), or `SALUS_SHARED_DIR`.
pub fn shared_dir() -> PathBuf {
    match std::env::var_os("SALUS_SHARED_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
    }
}

/// A missing shared folder skips loudly, unless `SALUS_REQUIRE_SHARED` is set (CI).
pub fn skip(what: &str, dir: &std::path::Path) {
    if std::env::var_os("SALUS_REQUIRE_SHARED").is_some() {
        panic!(
            "{what} {} is required (SALUS_REQUIRE_SHARED) but missing",
            dir.display()
        );
    }
    println!("SKIPPED: {what} {} not found", dir.display());
    eprintln!("SKIPPED: {what} {} not found", dir.display());
}

/// `Location`'s `Type/id/_history/v` parts.
pub fn location_parts(loc: &str) -> (String, String, String) {
    let parts: Vec<&str> = loc.rsplitn(4, '/').collect();
    assert_eq!(parts.len(), 4, "Location {loc}");
    assert_eq!(parts[1], "_history", "Location {loc}");
    let rtype = parts[3].rsplit('/').next().unwrap().to_string();
    (rtype, parts[2].to_string(), parts[0].to_string())
}

/// [`app`] with bulk data jobs enabled (`$export`, `$import`), their folder under the
/// app's temporary directory; `configure` adjusts the settings.
pub fn bulk_app(configure: impl FnOnce(&mut salus_bulk::BulkConfig)) -> App {
    bulk_app_wired(configure, |s| s)
}

/// [`bulk_app`] whose state `wire` finishes (auth, audit, …).
pub fn bulk_app_wired(
    configure: impl FnOnce(&mut salus_bulk::BulkConfig),
    wire: impl FnOnce(AppState) -> AppState,
) -> App {
    let dir = tempfile::tempdir().expect("temp dir");
    let (store, pg) = backend(dir.path());
    let service = FhirService::new(store, Limits::default());
    let mut config = salus_bulk::BulkConfig::new(dir.path().join("bulk"));
    configure(&mut config);
    let engine = salus_bulk::BulkEngine::new(service.clone(), config);
    let state = wire(AppState::new(service, ApiConfig::default()).with_bulk(engine));
    App {
        router: router(state.clone()),
        state,
        _dir: dir,
        _pg: pg,
    }
}

impl App {
    /// The app's temporary directory.
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }
}
