//! `salus import` behaviour: atomic files, precise errors, folders, remote servers.

use salus::config::Config;
use salus::import::{import_paths, Target};
use salus_service::FhirService;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn local(dir: &Path) -> (Config, FhirService) {
    let config = Config {
        data_dir: dir.join("data"),
        ..Config::default()
    };
    let store = salus::serve::open_store(&config).unwrap();
    let svc = salus::serve::service(&config, store);
    (config, svc)
}

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
        eprintln!("SKIPPED: shared material not found at {}", dir.display());
        None
    }
}

async fn count(svc: &FhirService, rtype: &str) -> u64 {
    svc.store()
        .counts()
        .await
        .unwrap()
        .into_iter()
        .find(|(t, _)| t == rtype)
        .map_or(0, |(_, n)| n)
}

#[tokio::test]
async fn malformed_ndjson_line_rejects_the_whole_file() {
    let dir = tempfile::tempdir().unwrap();
    let (_, svc) = local(dir.path());
    let f = dir.path().join("patients.ndjson");
    std::fs::write(
        &f,
        "{\"resourceType\":\"Patient\",\"id\":\"a\"}\n{\"resourceType\":\"Patient\",\"id\":\"b\"\n{\"resourceType\":\"Patient\",\"id\":\"c\"}\n",
    )
    .unwrap();
    let report = import_paths(&Target::Local(svc.clone()), std::slice::from_ref(&f), false)
        .await
        .unwrap();
    assert!(!report.ok());
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    let p = &report.problems[0];
    assert!(p.location.ends_with("patients.ndjson:2"), "{}", p.location);
    assert!(p.reason.contains("invalid JSON"), "{}", p.reason);
    assert_eq!(
        count(&svc, "Patient").await,
        0,
        "nothing of a bad file is stored"
    );
}

#[tokio::test]
async fn invalid_resource_names_line_and_element() {
    let dir = tempfile::tempdir().unwrap();
    let (_, svc) = local(dir.path());
    let f = dir.path().join("obs.ndjson");
    std::fs::write(
        &f,
        "{\"resourceType\":\"Patient\",\"id\":\"a\"}\n{\"resourceType\":\"Patient\",\"id\":\"b\",\"birthDate\":\"yesterday\"}\n",
    )
    .unwrap();
    let report = import_paths(&Target::Local(svc.clone()), &[f], false)
        .await
        .unwrap();
    assert!(!report.ok());
    assert!(report.problems[0].location.ends_with("obs.ndjson:2"));
    assert!(
        report.problems[0].reason.contains("birthDate"),
        "{}",
        report.problems[0].reason
    );
    assert_eq!(count(&svc, "Patient").await, 0);
}

/// NDJSON lines of `n` Patients with ids `{prefix}{i}`.
fn patients(prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!("{{\"resourceType\":\"Patient\",\"id\":\"{prefix}{i}\",\"gender\":\"female\"}}")
        })
        .collect()
}

/// A file larger than one part (it is read, validated and written in parts, all in one
/// transaction): complete when good; when a line near its end is bad, none of its
/// earlier parts stays stored, every problem of the file is reported with its line, and
/// a good file written before it in the same batch is kept.
#[tokio::test]
async fn a_file_written_in_parts_is_still_one_unit() {
    let dir = tempfile::tempdir().unwrap();
    let (_, svc) = local(dir.path());
    let good = dir.path().join("a-good.ndjson");
    std::fs::write(&good, patients("g", 5_000).join("\n")).unwrap();
    let report = import_paths(
        &Target::Local(svc.clone()),
        std::slice::from_ref(&good),
        false,
    )
    .await
    .unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!((report.files, report.resources), (1, 5_000));
    assert_eq!(count(&svc, "Patient").await, 5_000);

    let first = dir.path().join("b-first.ndjson");
    std::fs::write(&first, patients("f", 10).join("\n")).unwrap();
    let bad = dir.path().join("c-bad.ndjson");
    let mut lines = patients("b", 5_000);
    lines[100] = "{\"resourceType\":\"Patient\",\"id\":\"x\"".into(); // line 101
    lines[4_899] = "{\"resourceType\":\"Patient\",\"birthDate\":\"soon\"}".into(); // line 4900
    std::fs::write(&bad, lines.join("\n")).unwrap();
    let report = import_paths(
        &Target::Local(svc.clone()),
        &[first.clone(), bad.clone()],
        false,
    )
    .await
    .unwrap();
    assert_eq!((report.files, report.files_failed), (2, 1));
    assert_eq!(report.resources, 10, "the good file of the batch is kept");
    let locations: Vec<&str> = report
        .problems
        .iter()
        .map(|p| p.location.as_str())
        .collect();
    assert_eq!(locations.len(), 2, "{:?}", report.problems);
    assert!(locations[0].ends_with("c-bad.ndjson:101"), "{locations:?}");
    assert!(locations[1].ends_with("c-bad.ndjson:4900"), "{locations:?}");
    assert!(
        report.problems[1].reason.contains("birthDate"),
        "{:?}",
        report.problems
    );
    assert_eq!(
        count(&svc, "Patient").await,
        5_010,
        "nothing of the bad file"
    );

    // Bad only in its last part: earlier parts were already written into the batch.
    let late = dir.path().join("d-late.ndjson");
    let mut lines = patients("l", 4_500);
    lines[4_400] = "{\"resourceType\":\"Patient\",\"birthDate\":\"soon\"}".into();
    std::fs::write(&late, lines.join("\n")).unwrap();
    let after = dir.path().join("e-after.ndjson");
    std::fs::write(&after, patients("e", 3).join("\n")).unwrap();
    let report = import_paths(
        &Target::Local(svc.clone()),
        &[first.clone(), late, after],
        false,
    )
    .await
    .unwrap();
    assert_eq!(
        (report.files, report.files_failed),
        (3, 1),
        "{:?}",
        report.problems
    );
    assert_eq!(report.problems.len(), 1);
    assert!(report.problems[0].location.ends_with("d-late.ndjson:4401"));
    assert_eq!(report.resources, 13, "{report:?}");
    assert_eq!(count(&svc, "Patient").await, 5_013);
    let read = svc.store().read("Patient", "l0").await.unwrap();
    assert!(read.is_none(), "the first part of the bad file was undone");
}

#[tokio::test]
async fn bundles_of_every_kind_import() {
    let dir = tempfile::tempdir().unwrap();
    let (_, svc) = local(dir.path());
    let tx = dir.path().join("tx.json");
    std::fs::write(
        &tx,
        serde_json::to_string(&json!({"resourceType":"Bundle","type":"transaction","entry":[
            {"fullUrl":"urn:uuid:11111111-1111-4111-8111-111111111111","resource":{"resourceType":"Patient","name":[{"family":"Tx"}]},"request":{"method":"POST","url":"Patient"}},
            {"resource":{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"urn:uuid:11111111-1111-4111-8111-111111111111"}},"request":{"method":"POST","url":"Observation"}}
        ]}))
        .unwrap(),
    )
    .unwrap();
    let coll = dir.path().join("coll.json");
    std::fs::write(
        &coll,
        serde_json::to_string(&json!({"resourceType":"Bundle","type":"collection","entry":[
            {"fullUrl":"urn:uuid:22222222-2222-4222-8222-222222222222","resource":{"resourceType":"Patient","id":"coll-1"}},
            {"resource":{"resourceType":"Observation","status":"final","code":{"text":"y"},"subject":{"reference":"urn:uuid:22222222-2222-4222-8222-222222222222"}}}
        ]}))
        .unwrap(),
    )
    .unwrap();
    let single = dir.path().join("single.json");
    std::fs::write(&single, r#"{"resourceType":"Patient","id":"solo"}"#).unwrap();
    let report = import_paths(
        &Target::Local(svc.clone()),
        &[dir.path().to_path_buf()],
        false,
    )
    .await
    .unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.resources, 5);
    assert_eq!(count(&svc, "Patient").await, 3);
    // references were rewritten to the stored ids
    let obs = svc
        .store()
        .search(&salus_store::SearchQuery::new("Observation"))
        .await
        .unwrap();
    for o in obs.entries {
        let v: Value = serde_json::from_str(o.body.as_deref().unwrap()).unwrap();
        let r = v["subject"]["reference"].as_str().unwrap();
        assert!(r.starts_with("Patient/"), "{r}");
    }
    assert!(svc.read("Patient", "coll-1").await.is_ok());
}

#[tokio::test]
async fn folders_skip_non_fhir_logs_but_named_files_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let (_, svc) = local(dir.path());
    let data = dir.path().join("in");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("Patient.ndjson"),
        "{\"resourceType\":\"Patient\",\"id\":\"p\"}\n",
    )
    .unwrap();
    std::fs::write(data.join("log.ndjson"), "{\"eventId\":\"kickoff\"}\n").unwrap();
    std::fs::write(data.join("notes.txt"), "hello").unwrap();
    let report = import_paths(
        &Target::Local(svc.clone()),
        std::slice::from_ref(&data),
        false,
    )
    .await
    .unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.resources, 1);
    assert_eq!(report.skipped.len(), 1);
    let report = import_paths(&Target::Local(svc), &[data.join("log.ndjson")], false)
        .await
        .unwrap();
    assert!(!report.ok());
    assert!(report.problems[0].reason.contains("no resourceType"));
}

#[tokio::test]
async fn imports_into_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let (config, svc) = local(dir.path());
    let state = salus::serve::app_state(&config, svc.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(salus::serve::run(state, listener, async {
        let _ = stopped.await;
    }));
    let f = dir.path().join("p.ndjson");
    std::fs::write(
        &f,
        "{\"resourceType\":\"Patient\",\"id\":\"r1\"}\n{\"resourceType\":\"Patient\",\"id\":\"r2\"}\n",
    )
    .unwrap();
    let target = Target::Remote {
        client: reqwest::Client::new(),
        base: format!("http://{addr}"),
    };
    let report = import_paths(&target, &[f], false).await.unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.resources, 2);
    assert!(svc.read("Patient", "r2").await.is_ok());
    // a bad file is refused before anything is sent
    let bad = dir.path().join("bad.ndjson");
    std::fs::write(
        &bad,
        "{\"resourceType\":\"Patient\",\"id\":\"r3\"}\n{\"resourceType\":\"Patient\",\"id\":\"r4\",\"gender\":42}\n",
    )
    .unwrap();
    let report = import_paths(&target, &[bad], false).await.unwrap();
    assert!(!report.ok());
    assert!(report.problems[0].location.ends_with("bad.ndjson:2"));
    assert!(svc.read("Patient", "r3").await.is_err());
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn synthea_bulk_sample_imports_completely() {
    let Some(shared) = shared_dir() else { return };
    let folder = shared.join("data/bulk-10-patients");
    let dir = tempfile::tempdir().unwrap();
    let (_, svc) = local(dir.path());
    let report = import_paths(
        &Target::Local(svc.clone()),
        std::slice::from_ref(&folder),
        false,
    )
    .await
    .unwrap();
    println!(
        "bulk-10-patients: {} resources from {} files in {:.2}s ({:.0}/s); {} problems; skipped {:?}",
        report.resources,
        report.files,
        report.elapsed.as_secs_f64(),
        report.rate(),
        report.problems.len(),
        report.skipped
    );
    for p in &report.problems {
        println!("  {p}");
    }
    assert!(report.ok());
    // every line of every FHIR file is stored
    let mut expected = 0;
    for f in std::fs::read_dir(&folder).unwrap() {
        let f = f.unwrap().path();
        if f.file_name().unwrap() != "log.ndjson" {
            expected += std::fs::read_to_string(&f)
                .unwrap()
                .lines()
                .filter(|l| !l.trim().is_empty())
                .count();
        }
    }
    assert_eq!(report.resources, expected);
    let total: u64 = svc
        .store()
        .counts()
        .await
        .unwrap()
        .iter()
        .map(|(_, n)| n)
        .sum();
    assert_eq!(total as usize, expected);
}

/// The Synthea sample through a running server (`salus import --server`): each file is a
/// transaction there, which resolves `Practitioner?identifier=…` references, so the files
/// that others refer to go first.
#[tokio::test]
async fn synthea_bulk_sample_imports_into_a_running_server() {
    let Some(shared) = shared_dir() else { return };
    let folder = shared.join("data/bulk-10-patients");
    let dir = tempfile::tempdir().unwrap();
    let (config, svc) = local(dir.path());
    let state = salus::serve::app_state(&config, svc.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(salus::serve::run(state, listener, async {
        let _ = stopped.await;
    }));
    let target = Target::Remote {
        client: reqwest::Client::new(),
        base: format!("http://{addr}"),
    };
    let report = import_paths(&target, std::slice::from_ref(&folder), false)
        .await
        .unwrap();
    for p in &report.problems {
        println!("  {p}");
    }
    assert!(report.ok(), "{} problems", report.problems.len());
    assert!(count(&svc, "Encounter").await > 0);
    assert!(count(&svc, "MedicationRequest").await > 0);
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

/// A file that passes validation but fails while being written (a conditional
/// reference that matches nothing) sits between good files of the same batch: the
/// good files before and after it are kept, nothing of it is.
#[tokio::test]
async fn a_file_failing_at_write_time_leaves_its_batch_intact() {
    let dir = tempfile::tempdir().unwrap();
    let (_, svc) = local(dir.path());
    let bundle = |family: &str, subject: &str| {
        json!({"resourceType":"Bundle","type":"transaction","entry":[
            {"fullUrl":"urn:uuid:33333333-3333-4333-8333-333333333333","resource":{"resourceType":"Patient","name":[{"family":family}]},"request":{"method":"POST","url":"Patient"}},
            {"resource":{"resourceType":"Observation","status":"final","code":{"text":family},"subject":{"reference":subject}},"request":{"method":"POST","url":"Observation"}}
        ]})
    };
    let ok = "urn:uuid:33333333-3333-4333-8333-333333333333";
    for (name, b) in [
        ("a.json", bundle("Before", ok)),
        (
            "b.json",
            bundle("Broken", "Patient?identifier=urn:x|nobody"),
        ),
        ("c.json", bundle("After", ok)),
    ] {
        std::fs::write(dir.path().join(name), b.to_string()).unwrap();
    }
    // The same resource twice in one NDJSON file: the second is version 2.
    std::fs::write(
        dir.path().join("d.ndjson"),
        "{\"resourceType\":\"Patient\",\"id\":\"twice\",\"active\":false}\n{\"resourceType\":\"Patient\",\"id\":\"twice\",\"active\":true}\n",
    )
    .unwrap();
    let report = import_paths(
        &Target::Local(svc.clone()),
        &[dir.path().to_path_buf()],
        false,
    )
    .await
    .unwrap();
    assert_eq!(report.files_failed, 1, "{:?}", report.problems);
    assert!(
        report.problems[0].location.ends_with("b.json")
            && report.problems[0].reason.contains("nobody"),
        "{:?}",
        report.problems
    );
    assert_eq!(report.resources, 6);
    assert_eq!(count(&svc, "Patient").await, 3, "Before, After, twice");
    assert_eq!(count(&svc, "Observation").await, 2);
    let twice = svc.read("Patient", "twice").await.unwrap();
    assert_eq!(twice.version, 2);
    assert!(twice.body.as_deref().unwrap().contains("\"active\":true"));
}

/// A SearchParameter in an NDJSON file goes live when stored: the resources after it in
/// the same file are indexed with it, the ones before it are not (until a reindex), as
/// with one write each.
#[tokio::test]
async fn a_search_parameter_indexes_the_rest_of_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let (_, svc) = local(dir.path());
    let patient = |id: &str| {
        json!({"resourceType": "Patient", "id": id, "address": [{"city": "Lyon"}]}).to_string()
    };
    let sp = json!({"resourceType": "SearchParameter",
        "url": "http://example.org/fhir/SearchParameter/import-test-home-city",
        "name": "ImportTestHomeCity", "status": "active", "description": "City of any address",
        "code": "import-test-home-city", "base": ["Patient"], "type": "string",
        "expression": "Patient.address.city"});
    let lines = [
        patient("before"),
        sp.to_string(),
        patient("after1"),
        patient("after2"),
    ];
    std::fs::write(dir.path().join("p.ndjson"), lines.join("\n") + "\n").unwrap();
    let report = import_paths(
        &Target::Local(svc.clone()),
        &[dir.path().join("p.ndjson")],
        false,
    )
    .await
    .unwrap();
    assert_eq!(report.files_failed, 0, "{:?}", report.problems);
    assert_eq!(report.resources, 4);
    let found = svc
        .search(
            "Patient",
            &[("import-test-home-city".into(), "lyon".into())],
            true,
        )
        .await
        .unwrap();
    let mut ids: Vec<String> = found.page.entries.iter().map(|e| e.id.clone()).collect();
    ids.sort();
    assert_eq!(ids, ["after1", "after2"]);
}

/// `salus reindex` rebuilds every current resource's indexes and reports the count.
#[tokio::test]
async fn reindex_command_covers_every_current_resource() {
    let dir = tempfile::tempdir().unwrap();
    let (config, svc) = local(dir.path());
    let f = dir.path().join("p.ndjson");
    std::fs::write(
        &f,
        "{\"resourceType\":\"Patient\",\"id\":\"a\",\"name\":[{\"family\":\"Ames\"}]}\n{\"resourceType\":\"Patient\",\"id\":\"b\"}\n",
    )
    .unwrap();
    let report = import_paths(&Target::Local(svc.clone()), &[f], false)
        .await
        .unwrap();
    assert!(report.ok());
    svc.delete("Patient", "b", None).await.unwrap();
    drop(svc);
    let n = salus::serve::reindex_cli(&config, false).await.unwrap();
    assert_eq!(n, 1, "deleted resources are not reindexed");
}
