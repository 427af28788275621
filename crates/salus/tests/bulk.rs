//! Bulk data against the real binary: an independent Python client (`requests`, written
//! from the Bulk Data IG) drives kick-off, polling, download and cancel; a job survives
//! the server being killed right after kick-off; `salus export` and
//! `salus import --incremental` on the command line.

mod process;

use process::{free_port, start, stop};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Skip loudly, or fail when `SALUS_REQUIRE_SHARED` says the material must be there.
fn unavailable(why: &str) {
    if std::env::var_os("SALUS_REQUIRE_SHARED").is_some() {
        panic!("{why} (required: SALUS_REQUIRE_SHARED is set)");
    }
    let bar = "=".repeat(72);
    eprintln!("\n{bar}\nSKIPPED: {why}\n{bar}");
    println!("SKIPPED: {why}");
}

fn has_requests(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", "import requests"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A Python with `requests`: `SALUS_BULK_PYTHON`, else `target/bulk-venv` (made here
/// when missing, as scripts/test makes the oracle's).
fn python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SALUS_BULK_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let venv = workspace().join("target/bulk-venv");
    let py = venv.join("bin/python");
    if has_requests(&py) {
        return Some(py);
    }
    let made = Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success())
        && Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "requests==2.32.3"])
            .status()
            .is_ok_and(|s| s.success());
    (made && has_requests(&py)).then_some(py)
}

async fn post(client: &reqwest::Client, base: &str, r: &Value) -> String {
    let rt = r["resourceType"].as_str().unwrap();
    let resp = client
        .post(format!("{base}/{rt}"))
        .header("content-type", "application/fhir+json")
        .body(r.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let v: Value = resp.json().await.unwrap();
    v["id"].as_str().unwrap().to_string()
}

async fn seed(client: &reqwest::Client, base: &str) -> (String, Vec<String>) {
    let mut patients = vec![];
    for i in 0..3 {
        patients.push(
            post(
                client,
                base,
                &json!({"resourceType": "Patient", "name": [{"family": format!("Bulk{i}")}]}),
            )
            .await,
        );
    }
    for p in &patients {
        for _ in 0..2 {
            post(
                client,
                base,
                &json!({"resourceType": "Observation", "status": "final",
                "code": {"text": "hb"}, "subject": {"reference": format!("Patient/{p}")}}),
            )
            .await;
        }
    }
    let group = post(
        client,
        base,
        &json!({"resourceType": "Group", "type": "person", "actual": true,
            "member": [{"entity": {"reference": format!("Patient/{}", patients[0])}}]}),
    )
    .await;
    (group, patients)
}

#[tokio::test]
async fn an_independent_client_runs_the_export_cycle() {
    let Some(py) = python() else {
        unavailable("no Python with requests (python3 -m venv + pip install requests failed)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = start(&dir.path().join("data"), port, false);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let (group, _) = seed(&client, &base).await;
    let expected = json!({"Patient": 3, "Observation": 6, "Group": 1}).to_string();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bulk_client.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(py)
            .arg(script)
            .args([&base, &group, &expected])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}{}", String::from_utf8_lossy(&out.stderr));
    stop(child);
    assert!(
        out.status.success(),
        "the Python bulk client failed:\n{text}"
    );
    assert!(text.contains("all checks passed"));
}

#[tokio::test]
async fn a_job_survives_the_server_being_killed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let mut child = start(&data, port, false);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    seed(&client, &base).await;
    let r = client
        .get(format!("{base}/$export"))
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let status = r.headers()["content-location"]
        .to_str()
        .unwrap()
        .to_string();
    // No goodbye: SIGKILL right after kick-off.
    child.kill().unwrap();
    child.wait().unwrap();
    // A write after the kick-off, while the server is down (salus import).
    let extra = dir.path().join("Patient.ndjson");
    std::fs::write(
        &extra,
        r#"{"resourceType":"Patient","id":"late","name":[{"family":"Late"}]}"#,
    )
    .unwrap();
    let ok = Command::new(env!("CARGO_BIN_EXE_salus"))
        .args(["import", "--quiet", "--data-dir"])
        .arg(&data)
        .arg(&extra)
        .env_remove("SALUS_CONFIG")
        .status()
        .unwrap();
    assert!(ok.success());
    let child = start(&data, port, false);
    let client = reqwest::Client::new();
    let mut manifest = Value::Null;
    for _ in 0..2_000 {
        let r = client.get(&status).send().await.unwrap();
        match r.status().as_u16() {
            202 => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            200 => {
                manifest = r.json().await.unwrap();
                break;
            }
            s => panic!("status {s} after restart: {}", r.text().await.unwrap()),
        }
    }
    assert!(manifest.is_object(), "the job completed after the restart");
    let mut patients = 0;
    for o in manifest["output"].as_array().unwrap() {
        let text = client
            .get(o["url"].as_str().unwrap())
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if o["type"] == "Patient" {
            patients += text.lines().count();
            assert!(
                !text.contains("\"late\""),
                "written after kick-off: not exported"
            );
        }
    }
    assert_eq!(patients, 3, "the snapshot of the kick-off");
    stop(child);
}

#[test]
fn export_and_incremental_import_on_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, out) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("out"),
    );
    let input = dir.path().join("Patient.ndjson");
    std::fs::write(
        &input,
        concat!(
            r#"{"resourceType":"Patient","id":"p1","meta":{"versionId":"3","lastUpdated":"2024-05-01T10:00:00.000Z"},"name":[{"family":"One"}]}"#,
            "\n",
            r#"{"resourceType":"Patient","id":"p2","name":[{"family":"Two"}],"gender":"female"}"#,
            "\n"
        ),
    )
    .unwrap();
    let salus = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_salus"))
            .args(args)
            .env_remove("SALUS_CONFIG")
            .output()
            .unwrap();
        (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    };
    let p = |x: &Path| x.display().to_string();
    let (ok, text) = salus(&[
        "import",
        "--quiet",
        "--incremental",
        "--data-dir",
        &p(&a),
        &p(&input),
    ]);
    assert!(ok, "{text}");
    let (ok, text) = salus(&["export", "--quiet", "--data-dir", &p(&a), "--out", &p(&out)]);
    assert!(ok, "{text}");
    assert!(text.contains("exported 2 resources"), "{text}");
    let exported = std::fs::read_to_string(out.join("Patient-1.ndjson")).unwrap();
    assert!(
        exported.contains(r#""versionId":"3","lastUpdated":"2024-05-01T10:00:00.000Z""#),
        "{exported}"
    );
    assert!(out.join("manifest.json").exists());
    // Round trip through a second data dir: the same lines. The folder is imported, and a
    // file in it not named after a resource type (a bulk log) is skipped, said so.
    std::fs::write(out.join("log.ndjson"), "{\"event\":\"done\"}\n").unwrap();
    let (ok, text) = salus(&[
        "import",
        "--quiet",
        "--incremental",
        "--data-dir",
        &p(&b),
        &p(&out),
    ]);
    assert!(ok, "{text}");
    assert!(
        text.contains("skipped") && text.contains("log.ndjson"),
        "{text}"
    );
    // named on the command line, such a file is an error
    let (ok, text) = salus(&[
        "import",
        "--quiet",
        "--incremental",
        "--data-dir",
        &p(&b),
        &p(&out.join("log.ndjson")),
    ]);
    assert!(!ok, "{text}");
    assert!(text.contains("named after their resource type"), "{text}");
    let out2 = dir.path().join("out2");
    let (ok, text) = salus(&[
        "export",
        "--quiet",
        "--data-dir",
        &p(&b),
        "--out",
        &p(&out2),
    ]);
    assert!(ok, "{text}");
    let mut l1: Vec<&str> = exported.lines().collect();
    let again = std::fs::read_to_string(out2.join("Patient-1.ndjson")).unwrap();
    let mut l2: Vec<&str> = again.lines().collect();
    l1.sort();
    l2.sort();
    assert_eq!(l1, l2);
    // De-identified and filtered exports; bad input is a readable error.
    let out3 = dir.path().join("out3");
    let (ok, text) = salus(&[
        "export",
        "--quiet",
        "--data-dir",
        &p(&a),
        "--out",
        &p(&out3),
        "--anonymize",
        "safe-harbor",
        "--type-filter",
        "Patient?gender=female",
    ]);
    assert!(ok, "{text}");
    let deid = std::fs::read_to_string(out3.join("Patient-1.ndjson")).unwrap();
    assert_eq!(deid.lines().count(), 1, "{deid}");
    assert!(!deid.contains("Two"), "{deid}");
    let (ok, text) = salus(&[
        "export",
        "--quiet",
        "--data-dir",
        &p(&a),
        "--out",
        &p(&out3),
        "--type",
        "Nope",
    ]);
    assert!(!ok);
    assert!(text.contains("Nope"), "{text}");
}
