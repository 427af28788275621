//! Command-line tools run as a user would: `salus view run` over a data dir and over
//! NDJSON files, with readable errors.

use std::path::Path;
use std::process::Command;

fn salus(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_salus"))
        .args(args)
        .env_remove("SALUS_CONFIG")
        .current_dir(dir)
        .output()
        .expect("salus runs")
}

#[test]
fn view_run_over_ndjson_and_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("view.json"),
        r#"{"resourceType": "ViewDefinition", "resource": "Patient", "status": "active",
            "select": [{"column": [{"name": "id", "path": "getResourceKey()"},
                                   {"name": "birth", "path": "birthDate"}]}]}"#,
    )
    .unwrap();
    std::fs::write(
        d.join("patients.ndjson"),
        "{\"resourceType\":\"Patient\",\"id\":\"p1\",\"birthDate\":\"1970-01-02\"}\n\
         {\"resourceType\":\"Observation\",\"id\":\"o1\",\"status\":\"final\",\"code\":{\"text\":\"x\"}}\n\
         {\"resourceType\":\"Patient\",\"id\":\"p2\"}\n",
    )
    .unwrap();
    let out = salus(
        &["view", "run", "view.json", "--input", "patients.ndjson"],
        d,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "id,birth\r\np1,1970-01-02\r\np2,\r\n"
    );
    // into the data dir, then the view over it, as NDJSON into a file
    let out = salus(
        &["import", "--quiet", "--data-dir", "data", "patients.ndjson"],
        d,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = salus(
        &[
            "view",
            "run",
            "view.json",
            "--data-dir",
            "data",
            "--format",
            "ndjson",
            "--out",
            "rows.ndjson",
            "--limit",
            "1",
        ],
        d,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = std::fs::read_to_string(d.join("rows.ndjson")).unwrap();
    assert_eq!(rows.lines().count(), 1, "{rows}");
    assert!(
        rows.contains("\"id\":\"p1\"") || rows.contains("\"id\":\"p2\""),
        "{rows}"
    );
    // errors name the problem and exit non-zero
    std::fs::write(
        d.join("bad.json"),
        r#"{"resource": "Patient", "select": [{"column": [{"name": "x", "path": "name.nope"}]}]}"#,
    )
    .unwrap();
    let out = salus(
        &["view", "run", "bad.json", "--input", "patients.ndjson"],
        d,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.json") && err.contains("nope"), "{err}");
    let out = salus(
        &[
            "view",
            "run",
            "view.json",
            "--input",
            "patients.ndjson",
            "--format",
            "xlsx",
        ],
        d,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--format"));
}
