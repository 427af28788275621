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

#[test]
fn deid_files_folders_and_bundles() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("in")).unwrap();
    let patient = r#"{"resourceType":"Patient","id":"p1","name":[{"family":"Quackenbush","given":["Zelda"]}],"birthDate":"1961-07-13","telecom":[{"system":"phone","value":"555-867-5309"}]}"#;
    let note = r#"{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"note"},"subject":{"reference":"Patient/p1"},"valueString":"Zelda Quackenbush called from 555-867-5309 on 1961-07-13"}"#;
    std::fs::write(d.join("in/Patient.ndjson"), format!("{patient}\n")).unwrap();
    std::fs::write(d.join("in/Observation.ndjson"), format!("{note}\n")).unwrap();
    // a folder, with the default (Safe Harbor) configuration
    let out = salus(&["deid", "in", "out"], d);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("de-identified 2 resources"));
    let mut all = String::new();
    for f in ["Patient.ndjson", "Observation.ndjson"] {
        all.push_str(&std::fs::read_to_string(d.join("out").join(f)).unwrap());
    }
    for secret in ["Quackenbush", "Zelda", "867-5309", "1961-07-13"] {
        assert!(!all.contains(secret), "{secret} survived: {all}");
    }
    // the observation still points at the (pseudonymised) patient
    let p: serde_json::Value =
        serde_json::from_str(all.lines().find(|l| l.contains("\"Patient\"")).unwrap()).unwrap();
    assert!(all.contains(&format!("Patient/{}", p["id"].as_str().unwrap())));
    // one NDJSON file with a custom configuration
    std::fs::write(
        d.join("redact-names.json"),
        r#"{"fhirPathRules": [{"path": "nodesByType('HumanName')", "method": "redact"}], "parameters": {"enableFreeTextScrubbing": false}}"#,
    )
    .unwrap();
    let out = salus(
        &[
            "deid",
            "in/Patient.ndjson",
            "p.ndjson",
            "--config",
            "redact-names.json",
        ],
        d,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = std::fs::read_to_string(d.join("p.ndjson")).unwrap();
    assert!(
        !p.contains("Quackenbush") && p.contains("1961-07-13"),
        "{p}"
    );
    // a transaction Bundle
    std::fs::write(
        d.join("bundle.json"),
        format!(r#"{{"resourceType":"Bundle","type":"collection","entry":[{{"fullUrl":"urn:uuid:1","resource":{patient}}}]}}"#),
    )
    .unwrap();
    let out = salus(&["deid", "bundle.json", "bundle-out.json"], d);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b = std::fs::read_to_string(d.join("bundle-out.json")).unwrap();
    assert!(
        b.contains("\"Bundle\"") && !b.contains("Quackenbush"),
        "{b}"
    );
    // a bad configuration is a readable error
    std::fs::write(
        d.join("bad.json"),
        r#"{"fhirPathRules": [{"path": "Patient.name", "method": "shred"}]}"#,
    )
    .unwrap();
    let out = salus(&["deid", "in", "out2", "--config", "bad.json"], d);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.json") && err.contains("shred"), "{err}");
}

#[test]
fn sql_and_analytics_refresh_over_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("patients.ndjson"),
        "{\"resourceType\":\"Patient\",\"id\":\"p1\",\"birthDate\":\"1950-01-02\",\"gender\":\"female\"}\n\
         {\"resourceType\":\"Patient\",\"id\":\"p2\",\"birthDate\":\"1990-05-06\",\"gender\":\"male\"}\n\
         {\"resourceType\":\"Encounter\",\"id\":\"e1\",\"status\":\"finished\",\"class\":{\"code\":\"EMER\"},\"subject\":{\"reference\":\"Patient/p1\"},\"period\":{\"start\":\"2024-03-01T10:00:00Z\",\"end\":\"2024-03-01T12:00:00Z\"}}\n",
    )
    .unwrap();
    let ok = |out: &std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    ok(&salus(
        &["import", "--quiet", "--data-dir", "data", "patients.ndjson"],
        d,
    ));
    // the first refresh builds every table
    let out = ok(&salus(
        &["analytics", "refresh", "--quiet", "--data-dir", "data"],
        d,
    ));
    assert!(
        out.contains("mx_patient") && out.contains("rebuilt"),
        "{out}"
    );
    assert!(d.join("data/analytics/mx_patient/_manifest.json").is_file());
    let out = ok(&salus(
        &[
            "sql",
            "SELECT gender, count(*) AS n FROM mx_patient GROUP BY gender ORDER BY gender",
            "--data-dir",
            "data",
            "--format",
            "csv",
        ],
        d,
    ));
    assert_eq!(out, "gender,n\nfemale,1\nmale,1\n");
    // a later import reaches the tables incrementally
    std::fs::write(
        d.join("more.ndjson"),
        "{\"resourceType\":\"Patient\",\"id\":\"p3\",\"birthDate\":\"2000-01-01\",\"gender\":\"female\"}\n",
    )
    .unwrap();
    ok(&salus(
        &["import", "--quiet", "--data-dir", "data", "more.ndjson"],
        d,
    ));
    let out = ok(&salus(
        &["analytics", "refresh", "--quiet", "--data-dir", "data"],
        d,
    ));
    assert!(
        out.contains("refreshed") && !out.contains("rebuilt"),
        "{out}"
    );
    let out = ok(&salus(
        &[
            "sql",
            "SELECT count(*) AS n FROM mx_patient",
            "--data-dir",
            "data",
            "--format",
            "json",
        ],
        d,
    ));
    assert_eq!(out.trim(), "[{\"n\":3}]");
    // the default format is an aligned table; parquet goes to a file
    let out = ok(&salus(
        &[
            "sql",
            "SELECT id FROM mx_patient ORDER BY id",
            "--data-dir",
            "data",
        ],
        d,
    ));
    assert!(out.contains("| id |") && out.contains("| p3 |"), "{out}");
    ok(&salus(
        &[
            "sql",
            "SELECT * FROM mx_encounter",
            "--data-dir",
            "data",
            "--format",
            "parquet",
            "--out",
            "enc.parquet",
        ],
        d,
    ));
    assert_eq!(&std::fs::read(d.join("enc.parquet")).unwrap()[..4], b"PAR1");
    // errors are readable and exit non-zero
    for (args, want) in [
        (
            vec!["sql", "DROP TABLE mx_patient", "--data-dir", "data"],
            "read-only",
        ),
        (
            vec!["sql", "SELECT nope FROM mx_patient", "--data-dir", "data"],
            "nope",
        ),
        (
            vec!["sql", "SELECT 1", "--data-dir", "data", "--format", "xlsx"],
            "--format",
        ),
    ] {
        let out = salus(&args, d);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
