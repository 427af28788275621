//! The official SQL-on-FHIR v2 test suite (`sql-on-fhir-v2/tests/*.json` under the shared
//! conformance directory; format in its `tests.schema.json`).
//!
//! Every test's view is compiled and run over the file's `resources`; a test expecting an
//! error passes when compiling or running fails. Rows are compared as a multiset (the
//! order of rows is not part of the expectation), each row as an object compared key by
//! key, numbers by value (`5` equals `5.0`), arrays in order. `expectColumns` compares the
//! column names in order, `expectCount` the number of rows.
//!
//! A report in the suite's format (`test_report/test-report.schema.json`) is written to
//! `$SALUS_VIEWS_REPORT`, or `sql-on-fhir-v2-test-report.json` in the target tmp directory.
//! The test fails if any test tagged `shareable` fails; experimental ones are reported.

use salus_views::View;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn shared_dir() -> PathBuf {
    match std::env::var_os("SALUS_SHARED_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
    }
}

/// A canonical text for a value: object keys sorted, numbers by value.
fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let sorted: BTreeMap<&String, &Value> = m.iter().collect();
            out.push('{');
            for (i, (k, v)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(v, out);
            }
            out.push(']');
        }
        Value::Number(n) => match n.as_f64() {
            Some(f) => out.push_str(&format!("{f}")),
            None => out.push_str(&n.to_string()),
        },
        other => out.push_str(&other.to_string()),
    }
}

fn canonical_rows(rows: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = rows
        .iter()
        .map(|r| {
            let mut s = String::new();
            canonical(r, &mut s);
            s
        })
        .collect();
    out.sort();
    out
}

/// Run one test: `Ok(error raised, if one was expected)` when it passes, else why not.
fn run_test(test: &Value, resources: &[Value]) -> Result<Option<String>, String> {
    let expect_error = test.get("expectError").and_then(Value::as_bool) == Some(true);
    let view = match View::compile(&test["view"]) {
        Ok(v) => v,
        Err(e) if expect_error => return Ok(Some(e.to_string())),
        Err(e) => return Err(format!("compile failed: {e}")),
    };
    let mut rows = Vec::new();
    for r in resources {
        if let Err(e) = view.rows_into(r, &mut rows) {
            return if expect_error {
                Ok(Some(e.to_string()))
            } else {
                Err(format!("run failed: {e}"))
            };
        }
    }
    if expect_error {
        return Err(format!("expected an error, got {} rows", rows.len()));
    }
    if let Some(cols) = test.get("expectColumns").and_then(Value::as_array) {
        let got: Vec<Value> = view.columns().iter().map(|c| json!(c.name)).collect();
        if &got != cols {
            return Err(format!("columns {got:?}, expected {cols:?}"));
        }
    }
    if let Some(n) = test.get("expectCount").and_then(Value::as_u64) {
        if rows.len() as u64 != n {
            return Err(format!("{} rows, expected {n}", rows.len()));
        }
    }
    if let Some(expected) = test.get("expect").and_then(Value::as_array) {
        let got: Vec<Value> = rows
            .iter()
            .map(|r| Value::Object(view.row_object(r)))
            .collect();
        let (g, e) = (canonical_rows(&got), canonical_rows(expected));
        if g != e {
            return Err(format!(
                "rows differ:\n  got      {}\n  expected {}",
                g.join(" "),
                e.join(" ")
            ));
        }
    }
    Ok(None)
}

#[derive(Default)]
struct Tally {
    passed: usize,
    total: usize,
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.passed, self.total)
    }
}

#[test]
fn official_sql_on_fhir_v2_suite() {
    let dir = shared_dir().join("conformance/sql-on-fhir-v2/tests");
    if !dir.is_dir() {
        assert!(
            std::env::var_os("SALUS_REQUIRE_SHARED").is_none(),
            "SQL-on-FHIR v2 suite not found at {} (SALUS_REQUIRE_SHARED is set)",
            dir.display()
        );
        println!(
            "SKIPPED: SQL-on-FHIR v2 suite not found at {}",
            dir.display()
        );
        return;
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("read the suite directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();

    let mut report = Map::new();
    let (mut all, mut shareable, mut experimental) =
        (Tally::default(), Tally::default(), Tally::default());
    let mut failures = Vec::new();
    for path in &files {
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(path).expect("read a suite file");
        let suite: Value = serde_json::from_str(&text).expect("a suite file is JSON");
        let resources = suite["resources"].as_array().cloned().unwrap_or_default();
        let mut results = Vec::new();
        for test in suite["tests"].as_array().into_iter().flatten() {
            let title = test["title"].as_str().unwrap_or("(untitled)").to_string();
            let tags: Vec<&str> = test["tags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let outcome = run_test(test, &resources);
            let passed = outcome.is_ok();
            for (tally, tag) in [
                (&mut shareable, "shareable"),
                (&mut experimental, "experimental"),
            ] {
                if tags.contains(&tag) {
                    tally.total += 1;
                    tally.passed += usize::from(passed);
                }
            }
            all.total += 1;
            all.passed += usize::from(passed);
            let mut result = Map::new();
            result.insert("passed".into(), json!(passed));
            if let Ok(Some(raised)) = &outcome {
                result.insert("details".into(), json!({"raised": raised}));
            }
            if let Err(why) = &outcome {
                result.insert("error".into(), json!(why));
                failures.push((
                    format!("{file_name}: {title} [{}]", tags.join(",")),
                    why.clone(),
                    tags.contains(&"shareable"),
                ));
            }
            results.push(json!({"name": title, "result": Value::Object(result)}));
        }
        report.insert(file_name, json!({"tests": results}));
    }

    let report_path = match std::env::var_os("SALUS_VIEWS_REPORT") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_TARGET_TMPDIR")).join("sql-on-fhir-v2-test-report.json"),
    };
    if let Some(parent) = report_path.parent() {
        std::fs::create_dir_all(parent).expect("create the report directory");
    }
    let text = serde_json::to_string_pretty(&Value::Object(report)).expect("serialize report");
    std::fs::write(&report_path, text).expect("write the report");

    for (name, why, _) in &failures {
        println!("FAILED {name}: {why}");
    }
    println!(
        "SQL-on-FHIR v2 suite: {all} passed; shareable {shareable}; experimental {experimental}"
    );
    println!("report: {}", report_path.display());
    assert!(all.total > 0, "the suite has no tests");
    let shareable_failures: Vec<&String> = failures
        .iter()
        .filter(|(_, _, s)| *s)
        .map(|(n, _, _)| n)
        .collect();
    assert!(
        shareable_failures.is_empty(),
        "shareable tests failed: {shareable_failures:#?}"
    );
}
