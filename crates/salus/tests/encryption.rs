//! Encryption at rest through the real binary: `salus keys init`, an encrypted data dir
//! whose files hold no patient name (and do without encryption, so the check can fail),
//! clear errors for a missing or wrong key and for plaintext data with encryption on,
//! `salus keys encrypt`, and both rotations keeping the data readable.

mod process;

use std::path::Path;
use std::process::{Command, Output};

const NAME: &str = "Bartholomew Zyskowski";

fn salus(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_salus"))
        .args(args)
        .env_remove("SALUS_CONFIG")
        .env_remove("SALUS_ENCRYPTION")
        .env_remove("SALUS_ENCRYPTION_KEY")
        .env_remove("SALUS_ENCRYPTION_KEY_FILE")
        .env_remove("SALUS_DATABASE")
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
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Whether any file of `dir` holds the name (the database, its WAL and shared memory).
fn files_hold_name(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().any(|e| {
        let p = e.unwrap().path();
        if p.is_dir() {
            return false;
        }
        let bytes = std::fs::read(&p).unwrap();
        bytes
            .windows(9)
            .any(|w| w.eq_ignore_ascii_case(b"zyskowski"))
    })
}

fn setup(d: &Path) {
    std::fs::write(
        d.join("patients.ndjson"),
        format!(
            "{{\"resourceType\":\"Patient\",\"id\":\"p1\",\"name\":[{{\"family\":\"Zyskowski\",\"given\":[\"Bartholomew\"]}}],\
             \"text\":{{\"status\":\"generated\",\"div\":\"<div xmlns=\\\"http://www.w3.org/1999/xhtml\\\">{NAME}</div>\"}}}}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("view.json"),
        r#"{"resourceType": "ViewDefinition", "resource": "Patient", "status": "active",
            "select": [{"column": [{"name": "family", "path": "name.family.first()"}]}]}"#,
    )
    .unwrap();
}

fn view(d: &Path, data: &str, key: Option<&str>) -> Output {
    let mut args = vec!["view", "run", "view.json", "--data-dir", data];
    if let Some(k) = key {
        args.extend(["--encryption-key-file", k]);
    }
    salus(&args, d)
}

#[test]
fn an_encrypted_data_dir_holds_no_name_and_needs_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    let out = ok(&salus(&["keys", "init", "--out", "kek"], d));
    assert!(out.contains("key id"), "{out}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.join("kek"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let e = fails(&salus(&["keys", "init", "--out", "kek"], d));
    assert!(e.contains("not overwritten"), "{e}");

    // without encryption the name is in the files: the check below can fail
    ok(&salus(
        &[
            "import",
            "--quiet",
            "--data-dir",
            "plain",
            "patients.ndjson",
        ],
        d,
    ));
    assert!(files_hold_name(&d.join("plain")));

    ok(&salus(
        &[
            "import",
            "--quiet",
            "--data-dir",
            "data",
            "--encryption-key-file",
            "kek",
            "patients.ndjson",
        ],
        d,
    ));
    // the auth store is encrypted too
    ok(&salus(
        &[
            "auth",
            "client",
            "add",
            "--name",
            "App",
            "--public",
            "--redirect-uri",
            "https://app.example/cb",
            "--scope",
            "patient/*.rs",
            "--data-dir",
            "data",
            "--encryption-key-file",
            "kek",
        ],
        d,
    ));
    assert!(d.join("data/keyring.json").exists());
    assert!(
        !files_hold_name(&d.join("data")),
        "a name in the encrypted files"
    );
    let head = std::fs::read(d.join("data/auth.sqlite")).unwrap();
    assert!(
        !head.starts_with(b"SQLite format 3"),
        "auth.sqlite is encrypted"
    );
    assert!(ok(&view(d, "data", Some("kek"))).contains("Zyskowski"));

    // no key, a wrong key: clear errors
    let e = fails(&view(d, "data", None));
    assert!(
        e.contains("is encrypted") && e.contains("[encryption]"),
        "{e}"
    );
    ok(&salus(&["keys", "init", "--out", "other"], d));
    let e = fails(&view(d, "data", Some("other")));
    assert!(e.contains("wrong encryption key"), "{e}");
    let e = fails(&view(d, "data", Some("missing-file")));
    assert!(e.contains("salus keys init"), "{e}");

    // plaintext data with encryption on: refused with the way out, then encrypted
    let e = fails(&view(d, "plain", Some("kek")));
    assert!(e.contains("salus keys encrypt"), "{e}");
    let out = ok(&salus(
        &[
            "keys",
            "encrypt",
            "--data-dir",
            "plain",
            "--encryption-key-file",
            "kek",
        ],
        d,
    ));
    assert!(out.contains("encrypted"), "{out}");
    assert!(!files_hold_name(&d.join("plain")));
    assert!(ok(&view(d, "plain", Some("kek"))).contains("Zyskowski"));
}

#[test]
fn rotations_keep_the_data_readable() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    ok(&salus(&["keys", "init", "--out", "kek"], d));
    ok(&salus(
        &[
            "import",
            "--quiet",
            "--data-dir",
            "data",
            "--encryption-key-file",
            "kek",
            "patients.ndjson",
        ],
        d,
    ));
    let keyring = |d: &Path| std::fs::read_to_string(d.join("data/keyring.json")).unwrap();
    let before = keyring(d);

    // a new data key: every page re-encrypted, the old key gone
    let out = ok(&salus(
        &[
            "keys",
            "rotate",
            "--data-key",
            "--data-dir",
            "data",
            "--encryption-key-file",
            "kek",
        ],
        d,
    ));
    assert!(out.contains("data key 2"), "{out}");
    let after = keyring(d);
    assert!(
        after.contains("\"id\": 2") && !after.contains("\"id\": 1"),
        "{after}"
    );
    assert!(ok(&view(d, "data", Some("kek"))).contains("Zyskowski"));
    assert!(!files_hold_name(&d.join("data")));
    let status = ok(&salus(
        &[
            "keys",
            "status",
            "--data-dir",
            "data",
            "--encryption-key-file",
            "kek",
        ],
        d,
    ));
    assert!(
        status.contains("salus.db: encrypted under data key 2"),
        "{status}"
    );
    assert_ne!(before, after);

    // a new key-encryption key: the keyring rewrapped; the old key no longer opens it
    ok(&salus(&["keys", "init", "--out", "kek2"], d));
    ok(&salus(
        &[
            "keys",
            "rotate",
            "--new-key-file",
            "kek2",
            "--data-dir",
            "data",
            "--encryption-key-file",
            "kek",
        ],
        d,
    ));
    let e = fails(&view(d, "data", Some("kek")));
    assert!(e.contains("wrong encryption key"), "{e}");
    assert!(ok(&view(d, "data", Some("kek2"))).contains("Zyskowski"));
    // neither rotation flag: refused by the command line
    let e = fails(&salus(&["keys", "rotate", "--data-dir", "data"], d));
    assert!(e.contains("--data-key") || e.contains("required"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_an_encrypted_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    ok(&salus(&["keys", "init", "--out", "kek"], &d));
    let data = d.join("data");
    let kek = d.join("kek");
    let args = ["--encryption-key-file", kek.to_str().unwrap()];
    let port = process::free_port();
    let server = process::start_with(&data, port, false, &args);
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let patient = serde_json::json!({"resourceType": "Patient", "id": "p1",
        "name": [{"family": "Zyskowski", "given": ["Bartholomew"]}]});
    let r = http
        .put(format!("{base}/Patient/p1"))
        .header("content-type", "application/fhir+json")
        .body(patient.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // search indexes and full text work inside the encrypted file
    for q in ["family=zyskowski", "_content=Bartholomew"] {
        let r: serde_json::Value = http
            .get(format!("{base}/Patient?{q}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let n = r["entry"].as_array().map_or(0, |e| e.len());
        assert_eq!(n, 1, "{q}: {r}");
    }
    // a data key rotation needs the files to itself: refused while the server runs,
    // and the keyring is left as it was
    let before = std::fs::read_to_string(data.join("keyring.json")).unwrap();
    let rotate = [
        "keys",
        "rotate",
        "--data-key",
        "--data-dir",
        "data",
        "--encryption-key-file",
        "kek",
    ];
    let e = fails(&salus(&rotate, &d));
    assert!(e.contains("in use") && e.contains("stop the server"), "{e}");
    assert_eq!(
        std::fs::read_to_string(data.join("keyring.json")).unwrap(),
        before
    );
    process::stop(server);
    assert!(!files_hold_name(&data), "a name in the encrypted files");

    ok(&salus(&rotate, &d));
    let server = process::start_with(&data, port, false, &args);
    let r: serde_json::Value = http
        .get(format!("{base}/Patient/p1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["name"][0]["family"], "Zyskowski");
    process::stop(server);
}
