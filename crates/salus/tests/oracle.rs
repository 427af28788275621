//! Search results agree with an independent oracle.
//!
//! `tests/oracle/oracle.py` evaluates each SearchParameter's FHIRPath expression with
//! an independent implementation (`fhirpathpy` from PyPI) over the Synthea sample plus
//! resources it generates, applies the R4 matching rules of search.html, and compares
//! the ids it expects for a few hundred generated queries with those the real `salus`
//! binary returns. It needs the shared sample (`SALUS_SHARED_DIR`, else `../shared`)
//! and a Python with fhirpathpy (`SALUS_ORACLE_PYTHON`, else `target/oracle-venv`,
//! which `scripts/test` creates); without them the test is skipped, or fails when
//! `SALUS_REQUIRE_SHARED` is set.

mod process;

use process::{free_port, start, stop};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Whether the test can run: when `ok` is false, skip, or fail when the material is required.
fn available(ok: bool, why: &str) -> bool {
    if !ok {
        if std::env::var_os("SALUS_REQUIRE_SHARED").is_some() {
            panic!("SALUS_REQUIRE_SHARED is set but {why}");
        }
        eprintln!("SKIPPED: {why}");
    }
    ok
}

/// Kills the server if the test panics before stopping it.
struct Server(Option<Child>);

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn search_agrees_with_an_independent_fhirpath_oracle() {
    let shared = std::env::var_os("SALUS_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("../shared"));
    let sample = shared.join("data/bulk-10-patients");
    if !available(
        sample.is_dir(),
        &format!("the Synthea sample is not at {}", sample.display()),
    ) {
        return;
    }
    let python = std::env::var_os("SALUS_ORACLE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/oracle-venv/bin/python"));
    let has_fhirpathpy = Command::new(&python)
        .args(["-c", "import fhirpathpy"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !available(
        has_fhirpathpy,
        &format!(
            "{} cannot import fhirpathpy (set SALUS_ORACLE_PYTHON; scripts/test makes one)",
            python.display()
        ),
    ) {
        return;
    }

    // Load the sample into a fresh data dir with `salus import`, then serve that dir.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&sample)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "ndjson")
                && p.file_name().is_some_and(|n| n != "log.ndjson")
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no NDJSON in {}", sample.display());
    let import = Command::new(env!("CARGO_BIN_EXE_salus"))
        .arg("import")
        .arg("--data-dir")
        .arg(&data)
        .arg("--quiet")
        .args(&files)
        .env_remove("SALUS_CONFIG")
        .output()
        .expect("salus import runs");
    assert!(
        import.status.success(),
        "salus import failed: {}",
        String::from_utf8_lossy(&import.stderr)
    );
    let port = free_port();
    let mut server = Server(Some(start(&data, port, false)));

    let mut oracle = Command::new(&python)
        .arg(workspace().join("tests/oracle/oracle.py"))
        .arg(format!("http://127.0.0.1:{port}"))
        .arg(&sample)
        .arg(workspace().join("crates/fhir/data/searchparams.txt"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the oracle starts");
    // Stream the oracle's report, keeping the lines that explain a failure.
    let mut report = vec![];
    for line in BufReader::new(oracle.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        eprintln!("{line}");
        if !line.starts_with("oracle: skipped") {
            report.push(line);
        }
    }
    let status = oracle.wait().unwrap();
    stop(server.0.take().unwrap());
    assert!(
        status.success(),
        "search disagrees with the oracle ({status}):\n{}",
        report.join("\n")
    );
    assert!(
        report.iter().any(|l| l.contains(" disagree, ")),
        "the oracle printed no summary"
    );
}
