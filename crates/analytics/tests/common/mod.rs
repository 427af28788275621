//! Helpers shared by the integration tests.
#![allow(dead_code)]

use salus_analytics::{write_output, Analytics, OutputFormat};
use std::path::PathBuf;

/// Every row of `table` as a JSON line, sorted (so tables compare regardless of row order).
pub async fn sorted_rows(sql: &Analytics, table: &str) -> Vec<String> {
    let r = sql
        .query_result(&format!("SELECT * FROM {table}"))
        .await
        .unwrap();
    let mut out = Vec::new();
    write_output(&r.schema, &r.batches, OutputFormat::JsonLines, &mut out).unwrap();
    let mut lines: Vec<String> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

/// One column of a single-column result as strings (cast in SQL when needed).
pub async fn strings(sql: &Analytics, query: &str) -> Vec<String> {
    use salus_analytics::arrow::array::{Array, AsArray};
    use salus_analytics::arrow::datatypes::DataType;
    let mut out = Vec::new();
    for b in sql.query(query).await.unwrap() {
        let col = salus_analytics::arrow::compute::cast(b.column(0), &DataType::Utf8).unwrap();
        let col = col.as_string::<i32>();
        for i in 0..col.len() {
            out.push(if col.is_null(i) {
                "NULL".to_string()
            } else {
                col.value(i).to_string()
            });
        }
    }
    out
}

/// The shared test material directory, or `None` (after printing SKIPPED) when absent and
/// not required.
pub fn shared_dir(what: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("SALUS_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    if dir.join(what).exists() {
        return Some(dir);
    }
    if std::env::var_os("SALUS_REQUIRE_SHARED").is_some() {
        panic!(
            "SALUS_REQUIRE_SHARED is set but {} is missing",
            dir.join(what).display()
        );
    }
    println!(
        "SKIPPED: shared material {what} not found under {}",
        dir.display()
    );
    None
}
