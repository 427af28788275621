//! Every R4 SearchParameter expression must parse, and evaluate without error (or panic) on
//! every R4 example resource of a matching type (`../shared/conformance/r4-examples/json`;
//! skipped when the shared folder is absent, unless `SALUS_REQUIRE_SHARED` is set).

use salus_fhir::defs;
use salus_fhirpath::{parse, Env, Expr};
use serde_json::Value as Json;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

#[test]
fn every_search_parameter_expression_parses() {
    let mut failures = Vec::new();
    for p in defs::all_search_params() {
        if let Some(e) = &p.expression {
            if let Err(err) = parse(e) {
                failures.push(format!("{}: {e}: {err}", p.url));
            }
        }
        for (_, e) in &p.components {
            if let Err(err) = parse(e) {
                failures.push(format!("{} component: {e}: {err}", p.url));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

fn examples_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("SALUS_SHARED_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
    };
    let dir = dir.join("conformance/r4-examples/json");
    dir.is_dir().then_some(dir)
}

#[test]
fn search_parameters_evaluate_on_all_r4_examples() {
    let Some(dir) = examples_dir() else {
        if std::env::var_os("SALUS_REQUIRE_SHARED").is_some() {
            panic!("SALUS_REQUIRE_SHARED is set but the R4 examples are missing");
        }
        println!("SKIPPED: R4 examples not found (set SALUS_SHARED_DIR)");
        return;
    };
    let compiled: Vec<(Vec<String>, Expr)> = defs::all_search_params()
        .iter()
        .filter_map(|p| Some((p.base.clone(), parse(p.expression.as_deref()?).ok()?)))
        .collect();
    let env = Env::new();
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .expect("read examples")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    entries.sort();
    let (mut evaluations, mut values, mut errors, mut panics) = (0usize, 0usize, Vec::new(), 0);
    for path in &entries {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        let Ok(resource) = serde_json::from_str::<Json>(&text) else {
            continue;
        };
        let Some(rt) = resource.get("resourceType").and_then(Json::as_str) else {
            continue;
        };
        for (bases, expr) in &compiled {
            if !bases
                .iter()
                .any(|b| b == rt || b == "Resource" || b == "DomainResource")
            {
                continue;
            }
            evaluations += 1;
            match catch_unwind(AssertUnwindSafe(|| {
                expr.evaluate(&resource, &env).map(|r| r.len())
            })) {
                Ok(Ok(n)) => values += n,
                Ok(Err(e)) => errors.push(format!(
                    "{}: {}: {e}",
                    path.file_name().unwrap_or_default().to_string_lossy(),
                    expr.source()
                )),
                Err(_) => panics += 1,
            }
        }
    }
    for e in errors.iter().take(50) {
        println!("ERROR {e}");
    }
    println!(
        "search parameters on {} examples: {evaluations} evaluations, {values} values, {} errors, {panics} panics",
        entries.len(),
        errors.len()
    );
    assert_eq!(panics, 0);
    assert!(errors.is_empty(), "{} evaluation errors", errors.len());
}
