//! Locating the shared IoMT connector test material (never copied into the repository).
#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};

/// `$SALUS_SHARED_DIR/data/devices`, else `<repo>/../shared/data/devices`. `None` (after a
/// SKIPPED line) when absent, unless `SALUS_REQUIRE_SHARED` is set, then it panics.
pub fn devices_dir(test: &str) -> Option<PathBuf> {
    let shared = std::env::var_os("SALUS_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    let dir = shared.join("data/devices");
    if dir.join("test-input").is_dir() {
        return Some(dir);
    }
    if std::env::var_os("SALUS_REQUIRE_SHARED").is_some() {
        panic!(
            "{test}: shared device data not found at {} (SALUS_REQUIRE_SHARED is set)",
            dir.display()
        );
    }
    println!(
        "SKIPPED: {test}: shared device data (data/devices) not found at {}",
        dir.display()
    );
    None
}

pub fn read(dir: &Path, rel: &str) -> String {
    std::fs::read_to_string(dir.join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

/// Parses a payload file (some carry a UTF-8 byte-order mark).
pub fn json(dir: &Path, rel: &str) -> Value {
    let text = read(dir, rel);
    serde_json::from_str(text.trim_start_matches('\u{feff}'))
        .unwrap_or_else(|e| panic!("parsing {rel}: {e}"))
}

pub fn input(name: &str) -> String {
    format!("test-input/{name}")
}
