//! SMART on FHIR against the real `salus serve --auth`:
//!
//! 1. A patient app built with independent client libraries (Python Authlib + fhirpy,
//!    `tests/smart/app_flow.py`) signs in with authorization code + PKCE, reads its own
//!    record, is refused another patient's, refreshes, and is cut off after revocation.
//! 2. The leak matrix with real signed tokens: every data path × {patient A, patient B,
//!    user, system, expired, wrong audience, bad signature, none}.
//!
//! The Python part needs `python3` with venv and PyPI; where that is missing it is
//! skipped loudly (and fails where `SALUS_REQUIRE_SHARED` is set, as in CI).

mod process;

use process::{free_port, start_with, stop};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn salus() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_salus"));
    c.env_remove("SALUS_CONFIG");
    c
}

/// Patients pa (Abigail) and pb (Zebediah) with two and one Observations.
fn seed(data: &Path, dir: &Path) {
    let file = dir.join("seed.ndjson");
    let obs = |id: &str, p: &str, v: &str| {
        json!({"resourceType": "Observation", "id": id, "status": "final", "code": {"text": "t"},
            "subject": {"reference": format!("Patient/{p}")}, "valueString": v})
    };
    let lines = [
        json!({"resourceType": "Patient", "id": "pa", "name": [{"family": "Abigail"}]}),
        json!({"resourceType": "Patient", "id": "pb", "name": [{"family": "Zebediah"}]}),
        obs("oa1", "pa", "A-RESULT-1"),
        obs("oa2", "pa", "A-RESULT-2"),
        obs("ob1", "pb", "B-SECRET"),
        json!({"resourceType": "Encounter", "id": "eb1", "status": "finished", "class": {"code": "AMB"},
            "subject": {"reference": "Patient/pb"}, "reasonCode": [{"text": "B-SECRET-VISIT"}]}),
    ];
    let text: String = lines.iter().map(|l| l.to_string() + "\n").collect();
    std::fs::write(&file, text).unwrap();
    let out = salus()
        .args(["import", "--quiet", "--data-dir"])
        .arg(data)
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn register(data: &Path) -> String {
    let out = salus()
        .args([
            "auth",
            "client",
            "add",
            "--name",
            "Patient app",
            "--public",
            "--redirect-uri",
            "http://127.0.0.1:9/callback",
            "--scope",
            "launch/patient openid fhirUser patient/*.rs offline_access",
            "--data-dir",
        ])
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("client_id: "))
        .expect("client_id printed")
        .trim()
        .to_string();
    let mut child = salus()
        .args([
            "auth",
            "user",
            "add",
            "--username",
            "abigail",
            "--password-stdin",
            "--fhir-user",
            "Patient/pa",
            "--data-dir",
        ])
        .arg(data)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"correct horse battery staple\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    id
}

/// A venv (under the target dir) with Authlib, requests and fhirpy; `None` to skip.
fn python() -> Option<PathBuf> {
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("smart-venv");
    let py = venv.join("bin/python");
    let ready = |py: &Path| {
        Command::new(py)
            .args(["-c", "import authlib, fhirpy, requests"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if ready(&py) {
        return Some(py);
    }
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success())
        && Command::new(venv.join("bin/pip"))
            .args([
                "install",
                "-q",
                "Authlib==1.9.10",
                "fhirpy==2.3.1",
                "requests==2.34.2",
            ])
            .status()
            .is_ok_and(|s| s.success());
    if made && ready(&py) {
        return Some(py);
    }
    if std::env::var_os("SALUS_REQUIRE_SHARED").is_some() {
        panic!("the SMART app test needs python3 with venv and PyPI (Authlib, fhirpy)");
    }
    eprintln!("SKIPPED: SMART app flow: python3 venv with Authlib and fhirpy unavailable");
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smart_app_signs_in_with_pkce_reads_its_record_and_refreshes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    seed(&data, dir.path());
    let client_id = register(&data);
    let Some(py) = python() else { return };
    let port = free_port();
    let child = start_with(&data, port, false, &["--auth"]);
    let base = format!("http://127.0.0.1:{port}");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/smart/app_flow.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(py)
            .arg(script)
            .args([
                &base,
                &client_id,
                "abigail",
                "correct horse battery staple",
                "pa",
                "pb",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    stop(child);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    println!("{text}");
    assert!(out.status.success(), "the SMART app flow failed:\n{text}");
    assert!(text.contains("all checks passed"), "{text}");
}

/// Tokens signed as the server signs them (its key file), with these claims.
fn tokens(data: &Path, base: &str) -> Vec<(&'static str, Option<String>)> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let ring = salus_auth::keys::KeyRing::load_or_create(data, now).unwrap();
    let claims = |sub: &str, scope: &str, extra: Value, exp: i64, aud: &str| {
        let mut c = json!({"iss": base, "aud": aud, "sub": sub, "iat": now, "exp": exp,
            "jti": uuid::Uuid::new_v4().to_string(), "scope": scope});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let hour = now + 3600;
    let sign = |c: Value| Some(ring.signer().sign(&c));
    let stranger = salus_auth::keys::SigningKey::generate(now);
    vec![
        (
            "patient A",
            sign(claims(
                "a",
                "patient/*.rs",
                json!({"patient": "pa"}),
                hour,
                base,
            )),
        ),
        (
            "patient B",
            sign(claims(
                "b",
                "patient/*.rs",
                json!({"patient": "pb"}),
                hour,
                base,
            )),
        ),
        (
            "user",
            sign(claims(
                "dr",
                "user/*.rs",
                json!({"fhirUser": "Practitioner/dr", "roles": ["clinician"]}),
                hour,
                base,
            )),
        ),
        (
            "system",
            sign(claims("svc", "system/*.rs", json!({}), hour, base)),
        ),
        (
            "expired",
            sign(claims(
                "a",
                "patient/*.rs",
                json!({"patient": "pa"}),
                now - 3600,
                base,
            )),
        ),
        (
            "wrong audience",
            sign(claims(
                "a",
                "patient/*.rs",
                json!({"patient": "pa"}),
                hour,
                "https://other.example/fhir",
            )),
        ),
        (
            "bad signature",
            Some(stranger.sign(&claims(
                "a",
                "patient/*.rs",
                json!({"patient": "pa"}),
                hour,
                base,
            ))),
        ),
        ("none", None),
    ]
}

const PATHS: &[&str] = &[
    "/Patient/pb",
    "/Observation/ob1",
    "/Observation",
    "/Observation?_include=Observation:subject",
    "/Patient?_revinclude=Observation:subject",
    "/Observation?subject.name=Zebediah",
    "/Patient?_has:Observation:subject:value-string=B-SECRET",
    "/Patient/pb/_history",
    "/Observation/_history",
    "/_history",
    "/Encounter",
    "/Patient/pb/Observation",
    "/?_type=Patient,Observation,Encounter",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leak_matrix_with_real_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    seed(&data, dir.path());
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let child = start_with(&data, port, false, &["--auth"]);
    let http = reqwest::Client::new();
    for (who, token) in tokens(&data, &base) {
        for path in PATHS {
            let mut req = http.get(format!("{base}{path}"));
            if let Some(t) = &token {
                req = req.bearer_auth(t);
            }
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            let mut data_only = body.clone();
            if let Some(o) = data_only.as_object_mut() {
                o.shift_remove("link");
            }
            let text = data_only.to_string();
            match who {
                "patient A" => {
                    assert!(matches!(status, 200 | 403), "{who} {path}: {status} {body}");
                    assert!(
                        !text.contains("B-SECRET") && !text.contains("Zebediah"),
                        "{who} {path} leaked B: {body}"
                    );
                    if status == 403 {
                        assert_eq!(body["resourceType"], "OperationOutcome");
                    }
                }
                "patient B" => {
                    assert!(matches!(status, 200 | 403), "{who} {path}: {status}");
                    assert!(
                        !text.contains("A-RESULT") && !text.contains("Abigail"),
                        "{who} {path} leaked A: {body}"
                    );
                }
                "user" | "system" => assert_eq!(status, 200, "{who} {path}: {body}"),
                _ => {
                    assert_eq!(status, 401, "{who} {path}: {body}");
                    assert_eq!(body["resourceType"], "OperationOutcome");
                }
            }
        }
    }
    // what A may see, A does see
    let toks = tokens(&data, &base);
    let a = toks[0].1.clone().unwrap();
    let obs: Value = http
        .get(format!("{base}/Observation"))
        .bearer_auth(&a)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(obs["entry"].as_array().map(Vec::len), Some(2), "{obs}");
    stop(child);
}
