//! `salus migrate` through the real binary: the Synthea sample (with history added over
//! HTTP) moved SQLite → PostgreSQL → a second SQLite dir reads back identically on all
//! three servers; the same with encryption at rest on both sides; and the refusals
//! (non-empty target, bad URL, missing dir, unreachable database) as readable errors.
//!
//! Needs `SALUS_TEST_POSTGRES` (a database URL) for the PostgreSQL legs and the shared
//! material (`SALUS_SHARED_DIR`, default `../shared`) for the sample; says loudly what did
//! not run, and fails instead where `SALUS_REQUIRE_POSTGRES` / `SALUS_REQUIRE_SHARED` is
//! set (CI).

mod process;

use process::{free_port, start_with, stop};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const NAME: &str = "Bartholomew Zyskowski";

fn shared_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("SALUS_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    if dir.is_dir() {
        Some(dir)
    } else if std::env::var_os("SALUS_REQUIRE_SHARED").is_some() {
        panic!(
            "shared material required (SALUS_REQUIRE_SHARED) but {} is missing",
            dir.display()
        );
    } else {
        eprintln!(
            "SKIPPED: shared material not found at {}; the Synthea migration test did not run",
            dir.display()
        );
        None
    }
}

fn database_url(what: &str) -> Option<String> {
    match std::env::var("SALUS_TEST_POSTGRES") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            if std::env::var_os("SALUS_REQUIRE_POSTGRES").is_some() {
                panic!("SALUS_REQUIRE_POSTGRES is set but SALUS_TEST_POSTGRES is not");
            }
            eprintln!("SKIPPED: SALUS_TEST_POSTGRES not set — {what} did not run");
            None
        }
    }
}

/// A fresh database on the server of `url`, dropped afterwards.
struct Database {
    admin: String,
    name: String,
    url: String,
}

async fn sql(url: &str, sql: &str) -> Vec<tokio_postgres::Row> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to PostgreSQL");
    let task = tokio::spawn(conn);
    let rows = client.query(sql, &[]).await.expect(sql);
    drop(client);
    let _ = task.await;
    rows
}

impl Database {
    async fn create(url: &str) -> Database {
        let name = format!("salus_mig_{}", uuid::Uuid::new_v4().simple());
        sql(url, &format!("CREATE DATABASE {name}")).await;
        let (base, _) = url.rsplit_once('/').expect("a database URL ends in /name");
        Database {
            admin: url.to_string(),
            url: format!("{base}/{name}"),
            name,
        }
    }
    async fn drop(self) {
        sql(
            &self.admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        )
        .await;
    }
}

fn salus(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_salus"))
        .args(args)
        .env_remove("SALUS_CONFIG")
        .env_remove("SALUS_ENCRYPTION")
        .env_remove("SALUS_ENCRYPTION_KEY")
        .env_remove("SALUS_ENCRYPTION_KEY_FILE")
        .env_remove("SALUS_DATABASE")
        .env_remove("SALUS_DATA_DIR")
        .current_dir(dir)
        .output()
        .expect("salus runs")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let e = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !e.contains("panicked"),
        "a readable error, not a panic: {e}"
    );
    e
}

async fn send(c: &reqwest::Client, method: &str, url: String, body: Option<Value>) -> (u16, Value) {
    let mut r = c.request(method.parse().unwrap(), url);
    if let Some(b) = body {
        r = r
            .header("content-type", "application/fhir+json")
            .body(b.to_string());
    }
    let resp = r.send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// A response with what legitimately differs between servers taken out: the base URL
/// (in links and fullUrls), and a search Bundle's own id, time and links.
fn normalized(base: &str, (status, mut v): (u16, Value)) -> (u16, String) {
    if v.get("resourceType").and_then(Value::as_str) == Some("Bundle") {
        if let Some(o) = v.as_object_mut() {
            o.remove("id");
            o.remove("meta");
            o.remove("link");
        }
    }
    (status, v.to_string().replace(base, "BASE"))
}

/// The reads compared across servers: (path, what a meaningful answer must hold).
fn reads(patient: &str, encounter: &str, family: &str) -> Vec<String> {
    vec![
        format!("Patient/{patient}"),
        format!("Patient/{patient}/_history/1"),
        format!("Patient/{patient}/_history/2"),
        format!("Patient/{patient}/_history"),
        format!("Encounter/{encounter}"),
        format!("Encounter/{encounter}/_history"),
        format!("Encounter/{encounter}/_history/1"),
        "Patient/migrated-new".to_string(),
        "Patient/_history?_count=50".to_string(),
        format!("Patient?family={family}"),
        format!("Encounter?patient=Patient/{patient}&_sort=date,_id&_count=30&_total=accurate"),
        "Condition?clinical-status=active&_sort=_id&_count=40&_total=accurate".to_string(),
        "Procedure?date=ge2010-01-01&_sort=-date,_id&_count=25".to_string(),
        "Immunization?_sort=_id&_count=10&_include=Immunization:patient".to_string(),
        "Patient?_sort=birthdate,_id&_count=20&_total=accurate".to_string(),
        "Patient?_content=migrated&_total=accurate".to_string(),
    ]
}

async fn read_all(c: &reqwest::Client, base: &str, paths: &[String]) -> Vec<(u16, String)> {
    let mut out = vec![];
    for p in paths {
        out.push(normalized(
            base,
            send(c, "GET", format!("{base}/{p}"), None).await,
        ));
    }
    out
}

/// Add history over HTTP: two updates of a Patient, a deletion of an Encounter, and a
/// new Patient. Returns (patient id, encounter id, family name).
async fn add_history(c: &reqwest::Client, base: &str) -> (String, String, String) {
    let (s, page) = send(c, "GET", format!("{base}/Patient?_count=1&_sort=_id"), None).await;
    assert_eq!(s, 200);
    let mut patient = page["entry"][0]["resource"].clone();
    let pid = patient["id"].as_str().unwrap().to_string();
    let family = patient["name"][0]["family"].as_str().unwrap().to_string();
    for gender in ["other", "unknown"] {
        patient["gender"] = json!(gender);
        let (s, _) = send(
            c,
            "PUT",
            format!("{base}/Patient/{pid}"),
            Some(patient.clone()),
        )
        .await;
        assert_eq!(s, 200, "update");
    }
    let (s, page) = send(
        c,
        "GET",
        format!("{base}/Encounter?patient=Patient/{pid}&_count=1&_sort=_id"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let eid = page["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, _) = send(c, "DELETE", format!("{base}/Encounter/{eid}"), None).await;
    assert!(s == 200 || s == 204, "delete: {s}");
    let (s, _) = send(
        c,
        "PUT",
        format!("{base}/Patient/migrated-new"),
        Some(json!({"resourceType": "Patient", "id": "migrated-new",
                    "name": [{"family": "Migrated", "given": ["Newly"]}], "birthDate": "1999-09-09"})),
    )
    .await;
    assert_eq!(s, 201);
    (pid, eid, family)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_to_postgres_to_sqlite_reads_the_same() {
    let Some(shared) = shared_dir() else { return };
    let Some(url) = database_url("the SQLite → PostgreSQL → SQLite migration test") else {
        return;
    };
    let sample = shared.join("data/bulk-10-patients");
    assert!(sample.is_dir(), "{} is missing", sample.display());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = ok(&salus(
        &[
            "import",
            "--quiet",
            "--data-dir",
            "a",
            sample.to_str().unwrap(),
        ],
        d,
    ));
    assert!(out.contains("imported"), "{out}");

    let client = reqwest::Client::new();
    let pa = free_port();
    let a = start_with(&d.join("a"), pa, false, &[]);
    let base_a = format!("http://127.0.0.1:{pa}");
    let (pid, eid, family) = add_history(&client, &base_a).await;
    stop(a);

    let db = Database::create(&url).await;
    let out = ok(&salus(
        &["migrate", "--quiet", "--from", "sqlite:a", "--to", &db.url],
        d,
    ));
    assert!(out.contains("verified:"), "{out}");
    let out = ok(&salus(
        &["migrate", "--quiet", "--from", &db.url, "--to", "sqlite:c"],
        d,
    ));
    assert!(out.contains("verified:"), "{out}");
    eprintln!("{out}");

    let (pa, pb, pc) = (free_port(), free_port(), free_port());
    let a = start_with(&d.join("a"), pa, false, &[]);
    let b = start_with(&d.join("b-unused"), pb, false, &["--database", &db.url]);
    let c = start_with(&d.join("c"), pc, false, &[]);
    let paths = reads(&pid, &eid, &family);
    let ra = read_all(&client, &format!("http://127.0.0.1:{pa}"), &paths).await;
    let rb = read_all(&client, &format!("http://127.0.0.1:{pb}"), &paths).await;
    let rc = read_all(&client, &format!("http://127.0.0.1:{pc}"), &paths).await;
    stop(a);
    stop(b);
    stop(c);
    db.drop().await;

    // the reads mean something: the updates, the deletion and the searches are there
    let status = |i: usize| ra[i].0;
    assert_eq!(status(0), 200);
    assert!(ra[0].1.contains("\"gender\":\"unknown\""), "{}", ra[0].1);
    assert_eq!(status(1), 200);
    assert!(!ra[1].1.contains("\"gender\":\"unknown\""));
    assert!(
        ra[3].1.contains("\"total\":3"),
        "three versions: {}",
        ra[3].1
    );
    assert_eq!(status(4), 410, "the deleted Encounter");
    assert!(ra[5].1.contains("\"total\":2"), "{}", ra[5].1);
    for i in 9..paths.len() {
        assert_eq!(status(i), 200, "{}", paths[i]);
        assert!(
            ra[i].1.contains("\"entry\""),
            "{} finds something",
            paths[i]
        );
    }
    for (i, p) in paths.iter().enumerate() {
        assert_eq!(ra[i], rb[i], "SQLite and PostgreSQL differ on {p}");
        assert_eq!(
            ra[i], rc[i],
            "the first and the second SQLite differ on {p}"
        );
    }
    println!(
        "migrate: {} reads identical on SQLite, PostgreSQL and SQLite again",
        paths.len()
    );
}

/// Whether any file of `dir` holds the name.
fn files_hold_name(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().any(|e| {
        let p = e.unwrap().path();
        !p.is_dir()
            && std::fs::read(&p)
                .unwrap()
                .windows(9)
                .any(|w| w.eq_ignore_ascii_case(b"zyskowski"))
    })
}

fn patients_file(d: &Path) {
    let mut lines = String::new();
    for i in 0..60 {
        lines.push_str(&format!(
            "{{\"resourceType\":\"Patient\",\"id\":\"p{i}\",\"name\":[{{\"family\":\"Zyskowski\",\"given\":[\"Bartholomew\"]}}],\
             \"text\":{{\"status\":\"generated\",\"div\":\"<div xmlns=\\\"http://www.w3.org/1999/xhtml\\\">{NAME}</div>\"}}}}\n"
        ));
    }
    std::fs::write(d.join("patients.ndjson"), lines).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn encrypted_on_both_sides() {
    let Some(url) = database_url("the encrypted migration test") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    patients_file(d);
    ok(&salus(&["keys", "init", "--out", "kek"], d));
    let key = ["--encryption-key-file", "kek"];
    let with_key = |args: &[&str]| -> Vec<String> {
        args.iter()
            .chain(key.iter())
            .map(|s| s.to_string())
            .collect()
    };
    let run = |args: Vec<String>| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        salus(&a, d)
    };
    ok(&run(with_key(&[
        "import",
        "--quiet",
        "--data-dir",
        "e1",
        "patients.ndjson",
    ])));
    assert!(!files_hold_name(&d.join("e1")));

    let db = Database::create(&url).await;
    // without the key the encrypted source cannot be read
    let e = fails(&salus(
        &["migrate", "--quiet", "--from", "sqlite:e1", "--to", &db.url],
        d,
    ));
    assert!(e.contains("cannot open the source"), "{e}");
    ok(&run(with_key(&[
        "migrate",
        "--quiet",
        "--from",
        "sqlite:e1",
        "--to",
        &db.url,
    ])));
    // sealed in PostgreSQL: no plaintext body, no name
    let rows = sql(
        &db.url,
        "SELECT count(*), count(*) FILTER (WHERE body NOT LIKE 'enc1:%' OR body ILIKE '%zyskowski%') \
         FROM resource_versions",
    )
    .await;
    let (all, plain): (i64, i64) = (rows[0].get(0), rows[0].get(1));
    assert_eq!((all, plain), (60, 0), "every body sealed");
    // and back into a second encrypted data dir
    let e = fails(&salus(
        &["migrate", "--quiet", "--from", &db.url, "--to", "sqlite:e2"],
        d,
    ));
    assert!(e.contains("encrypted"), "{e}");
    let out = ok(&run(with_key(&[
        "migrate",
        "--quiet",
        "--from",
        &db.url,
        "--to",
        "sqlite:e2",
    ])));
    assert!(out.contains("verified: 60 versions"), "{out}");
    assert!(!files_hold_name(&d.join("e2")));

    let port = free_port();
    let kek = d.join("kek");
    let s = start_with(
        &d.join("e2"),
        port,
        false,
        &["--encryption-key-file", kek.to_str().unwrap()],
    );
    let (status, p) = send(
        &reqwest::Client::new(),
        "GET",
        format!("http://127.0.0.1:{port}/Patient/p7"),
        None,
    )
    .await;
    stop(s);
    db.drop().await;
    assert_eq!(status, 200);
    assert_eq!(p["name"][0]["family"], "Zyskowski");
}

#[test]
fn a_non_empty_target_is_refused_unless_resumed_or_emptied() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    patients_file(d);
    ok(&salus(
        &["import", "--quiet", "--data-dir", "a", "patients.ndjson"],
        d,
    ));
    let out = ok(&salus(
        &[
            "migrate", "--quiet", "--from", "sqlite:a", "--to", "sqlite:b",
        ],
        d,
    ));
    assert!(out.contains("migrated 60 versions"), "{out}");
    assert!(
        out.contains("verified: 60 versions, 60 current resources in 1 types"),
        "{out}"
    );

    let e = fails(&salus(
        &[
            "migrate", "--quiet", "--from", "sqlite:a", "--to", "sqlite:b",
        ],
        d,
    ));
    assert!(e.contains("is not empty") && e.contains("--resume"), "{e}");
    let out = ok(&salus(
        &[
            "migrate", "--quiet", "--resume", "--from", "sqlite:a", "--to", "sqlite:b",
        ],
        d,
    ));
    assert!(
        out.contains("migrated 0 versions") && out.contains("60 already in the target"),
        "{out}"
    );

    // something the source lacks: verification fails and names it
    std::fs::write(
        d.join("extra.ndjson"),
        "{\"resourceType\":\"Organization\",\"id\":\"o1\",\"name\":\"Extra\"}\n",
    )
    .unwrap();
    ok(&salus(
        &["import", "--quiet", "--data-dir", "b", "extra.ndjson"],
        d,
    ));
    let out = salus(
        &[
            "migrate", "--quiet", "--resume", "--from", "sqlite:a", "--to", "sqlite:b",
        ],
        d,
    );
    let e = fails(&out);
    assert!(e.contains("verification FAILED"), "{e}");
    assert!(
        e.contains("Organization: 0 versions in the source, 1 in the target"),
        "{e}"
    );
    assert!(
        e.contains("Organization/o1/_history/1: only in the target"),
        "{e}"
    );

    let out = ok(&salus(
        &[
            "migrate",
            "--quiet",
            "--force-empty",
            "--from",
            "sqlite:a",
            "--to",
            "sqlite:b",
        ],
        d,
    ));
    assert!(
        out.contains("emptied the target first: 61 resources erased"),
        "{out}"
    );
    assert!(out.contains("verified: 60 versions"), "{out}");
}

#[test]
fn bad_endpoints_are_readable_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let e = fails(&salus(
        &[
            "migrate",
            "--from",
            "mysql://u:secret@h/db",
            "--to",
            "sqlite:x",
        ],
        d,
    ));
    assert!(
        e.contains("neither sqlite:DIR") && !e.contains("secret"),
        "{e}"
    );
    let e = fails(&salus(
        &["migrate", "--from", "sqlite:missing", "--to", "sqlite:x"],
        d,
    ));
    assert!(
        e.contains("the source data dir missing does not exist"),
        "{e}"
    );
    std::fs::create_dir(d.join("empty")).unwrap();
    let e = fails(&salus(
        &["migrate", "--from", "sqlite:empty", "--to", "sqlite:x"],
        d,
    ));
    assert!(e.contains("holds no Salus database"), "{e}");
    let e = fails(&salus(
        &["migrate", "--from", "sqlite:x", "--to", "sqlite:x"],
        d,
    ));
    assert!(e.contains("the same"), "{e}");

    patients_file(d);
    ok(&salus(
        &["import", "--quiet", "--data-dir", "a", "patients.ndjson"],
        d,
    ));
    // nothing listens on port 1
    let e = fails(&salus(
        &[
            "migrate",
            "--quiet",
            "--from",
            "sqlite:a",
            "--to",
            "postgres://postgres:pw@127.0.0.1:1/none",
        ],
        d,
    ));
    assert!(
        e.contains("cannot open the target postgres://postgres:***@127.0.0.1:1/none"),
        "{e}"
    );
    assert!(!e.contains(":pw@"), "{e}");
    let e = fails(&salus(
        &[
            "migrate",
            "--quiet",
            "--from",
            "sqlite:a",
            "--to",
            "postgres://127.0.0.1:5432/x?bogus=1",
        ],
        d,
    ));
    assert!(e.contains("cannot open the target"), "{e}");
}
