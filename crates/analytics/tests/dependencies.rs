//! DataFusion stays out of the rest of the workspace: only `salus-analytics` depends on
//! `datafusion`, and only the `salus` binary crate on `salus-analytics`, so the other
//! crates (the API, the service, the store) build and test without compiling it. Read
//! from the workspace's `Cargo.lock`, which lists each package's direct dependencies.

use std::collections::BTreeMap;
use std::path::Path;

/// Package name → its direct dependencies' names, for every package in the lock file.
fn lock_packages() -> BTreeMap<String, Vec<String>> {
    let lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.lock");
    let text = std::fs::read_to_string(&lock).expect("the workspace has a Cargo.lock");
    let mut out = BTreeMap::new();
    for block in text.split("[[package]]").skip(1) {
        let mut name = None;
        let mut deps = Vec::new();
        let mut in_deps = false;
        for line in block.lines() {
            let line = line.trim();
            if let Some(n) = line.strip_prefix("name = ") {
                name = Some(n.trim_matches('"').to_string());
            } else if line.starts_with("dependencies = [") {
                in_deps = true;
            } else if in_deps && line.starts_with(']') {
                in_deps = false;
            } else if in_deps {
                // "name", or "name version" when several versions are locked
                let d = line.trim_end_matches(',').trim_matches('"');
                deps.push(d.split(' ').next().unwrap_or(d).to_string());
            }
        }
        if let Some(n) = name {
            out.entry(n).or_insert_with(Vec::new).extend(deps);
        }
    }
    out
}

#[test]
fn only_the_binary_pulls_in_datafusion() {
    let packages = lock_packages();
    assert!(packages.contains_key("datafusion"), "datafusion is locked");
    let workspace: Vec<&String> = packages
        .keys()
        .filter(|n| n.starts_with("salus") || n.as_str() == "xtask")
        .collect();
    assert!(
        workspace.len() > 10,
        "workspace crates found: {workspace:?}"
    );
    for name in workspace {
        let deps = &packages[name];
        if name != "salus-analytics" {
            assert!(
                !deps.iter().any(|d| d.starts_with("datafusion")),
                "{name} depends on DataFusion directly"
            );
        }
        if name != "salus" {
            assert!(
                !deps.iter().any(|d| d == "salus-analytics"),
                "{name} depends on salus-analytics"
            );
        }
    }
    assert!(packages["salus"].iter().any(|d| d == "salus-analytics"));
}
