//! Rough throughput of the view runner over NDJSON: rows per second for a few realistic
//! views (patient demographics, encounter flattening, conditions), first over resources
//! already parsed, then end to end (NDJSON text -> parse -> rows -> CSV into a sink).
//!
//! `cargo run --release -p salus-views --example views_bench [repeats] [ndjson-dir]`
//! The default directory is `data/bulk-10-patients` in the shared directory
//! (`$SALUS_SHARED_DIR`, else `../shared` beside the repository); each file is processed
//! `repeats` times (default 20). No assertions; numbers depend on the machine.

use salus_views::{write_csv, View};
use serde_json::{json, Value};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn views() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        (
            "patient_demographics",
            "Patient",
            json!({
                "resource": "Patient", "name": "patient_demographics",
                "constant": [{"name": "race", "valueUri": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"}],
                "select": [{"column": [
                    {"name": "id", "path": "getResourceKey()", "type": "id"},
                    {"name": "gender", "path": "gender", "type": "code"},
                    {"name": "birth_date", "path": "birthDate", "type": "date"},
                    {"name": "family", "path": "name.where(use = 'official').family.first()", "type": "string"},
                    {"name": "given", "path": "name.where(use = 'official').given.join(' ')", "type": "string"},
                    {"name": "city", "path": "address.first().city", "type": "string"},
                    {"name": "race", "path": "extension(%race).extension('ombCategory').value.ofType(Coding).code.first()", "type": "code"},
                    {"name": "deceased", "path": "deceased.exists()", "type": "boolean"}
                ]}]
            }),
        ),
        (
            "encounter_reasons",
            "Encounter",
            json!({
                "resource": "Encounter", "name": "encounter_reasons",
                "select": [
                    {"column": [
                        {"name": "id", "path": "getResourceKey()", "type": "id"},
                        {"name": "patient_id", "path": "subject.getReferenceKey(Patient)", "type": "string"},
                        {"name": "status", "path": "status", "type": "code"},
                        {"name": "class", "path": "class.code", "type": "code"},
                        {"name": "type_code", "path": "type.coding.where(system = 'http://snomed.info/sct').code.first()", "type": "code"},
                        {"name": "start", "path": "period.start", "type": "dateTime"},
                        {"name": "end", "path": "period.end", "type": "dateTime"}
                    ]},
                    {"forEachOrNull": "reasonCode.coding", "column": [
                        {"name": "reason_system", "path": "system", "type": "uri"},
                        {"name": "reason_code", "path": "code", "type": "code"},
                        {"name": "reason_index", "path": "%rowIndex", "type": "integer"}
                    ]},
                    {"forEach": "participant", "column": [
                        {"name": "participant_type", "path": "type.coding.code.first()", "type": "code"},
                        {"name": "participant", "path": "individual.display", "type": "string"}
                    ]}
                ]
            }),
        ),
        (
            "conditions",
            "Condition",
            json!({
                "resource": "Condition", "name": "conditions",
                "where": [{"path": "verificationStatus.coding.code contains 'confirmed'"}],
                "select": [{"column": [
                    {"name": "id", "path": "getResourceKey()", "type": "id"},
                    {"name": "patient_id", "path": "subject.getReferenceKey(Patient)", "type": "string"},
                    {"name": "code", "path": "code.coding.code.first()", "type": "code"},
                    {"name": "display", "path": "code.coding.display.first()", "type": "string"},
                    {"name": "onset", "path": "onset.ofType(dateTime)", "type": "dateTime"},
                    {"name": "clinical_status", "path": "clinicalStatus.coding.code.first()", "type": "code"}
                ]}]
            }),
        ),
    ]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let repeats: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let dir = args.next().map(PathBuf::from).unwrap_or_else(|| {
        let shared = std::env::var_os("SALUS_SHARED_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
        shared.join("data/bulk-10-patients")
    });
    println!("input {}; {repeats} repeats", dir.display());
    for (name, resource_type, def) in views() {
        let view = View::compile(&def).expect("the view compiles");
        let path = dir.join(format!("{resource_type}.000.ndjson"));
        let Ok(text) = std::fs::read_to_string(&path) else {
            println!("SKIPPED {name}: {} not found", path.display());
            continue;
        };
        let resources: Vec<Value> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("NDJSON line"))
            .collect();

        // Rows from parsed resources.
        let start = Instant::now();
        let mut rows = 0usize;
        let mut buf = Vec::new();
        for _ in 0..repeats {
            for r in &resources {
                buf.clear();
                view.rows_into(r, &mut buf).expect("the view runs");
                rows += buf.len();
                black_box(&buf);
            }
        }
        let secs = start.elapsed().as_secs_f64();
        let n = resources.len() * repeats;
        println!(
            "{name:22} {n:7} resources -> {rows:8} rows in {secs:6.3}s: {:>10.0} rows/s, {:>9.0} resources/s (parsed input)",
            rows as f64 / secs,
            n as f64 / secs
        );

        // End to end: NDJSON text -> JSON -> rows -> CSV.
        let start = Instant::now();
        let mut written = 0u64;
        for _ in 0..repeats {
            let parsed = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str::<Value>(l).expect("NDJSON line"));
            written += write_csv(&view, parsed, std::io::sink()).expect("CSV output");
        }
        let secs = start.elapsed().as_secs_f64();
        let mb = (text.len() * repeats) as f64 / 1e6;
        println!(
            "{:22} {n:7} resources -> {written:8} rows in {secs:6.3}s: {:>10.0} rows/s, {:>9.1} MB/s (NDJSON -> CSV)",
            "",
            written as f64 / secs,
            mb / secs
        );
    }
}
