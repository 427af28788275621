//! Every SearchParameter expression of R4 evaluates without error on every official R4
//! example, and indexing them all succeeds (issue: search, "Done when").

use serde_json::Value;
use std::path::{Path, PathBuf};

fn shared() -> Option<PathBuf> {
    let dir = std::env::var_os("SALUS_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    if dir.join("conformance/r4-examples/json").is_dir() {
        return Some(dir);
    }
    if std::env::var_os("SALUS_REQUIRE_SHARED").is_some() {
        panic!(
            "R4 examples required (SALUS_REQUIRE_SHARED) but {} is missing",
            dir.display()
        );
    }
    println!("SKIPPED: R4 examples not found under {}", dir.display());
    None
}

#[test]
fn every_expression_evaluates_on_every_example() {
    let Some(dir) = shared() else { return };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("conformance/r4-examples/json"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let (mut resources, mut rows, mut errors) = (0usize, 0usize, vec![]);
    for f in &files {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
        if v.get("resourceType").is_none() {
            continue;
        }
        resources += 1;
        let out = salus_search::extract::extract_checked(&v);
        rows += out.rows.len();
        for (param, e) in out.errors {
            errors.push(format!(
                "{}: {param}: {e}",
                f.file_name().unwrap().to_string_lossy()
            ));
        }
    }
    println!(
        "R4 examples indexed: {resources} resources, {rows} index rows, {} expression errors",
        errors.len()
    );
    for e in errors.iter().take(50) {
        println!("  {e}");
    }
    assert!(
        resources > 2_900,
        "expected the whole example set, got {resources}"
    );
    assert!(errors.is_empty(), "{} expressions failed", errors.len());
}
