//! salus-views beside helios-sof: the same SQL-on-FHIR v2 ViewDefinitions over the same
//! generated resources, rows per second for each engine.
//!
//! `scripts/bench-views-peer [copies]` builds and runs this (release, one core).
//!
//! Data: every NDJSON file of `data/bulk-10-patients` in the shared directory
//! (`$SALUS_SHARED_DIR`, else `../shared` beside the repository), copied `copies` times
//! (default 30, about 215,000 resources) with ids and references rewritten (`-N` suffix).
//! The resources are parsed into `serde_json::Value` once, before anything is timed.
//!
//! Per view, over the resources of its type, three timings (best of 3 rounds, the engines
//! alternating inside each round):
//! - salus: `View::rows_into` over the parsed JSON, every row kept (as helios-sof keeps them);
//! - helios-sof run only: `process_view_definition` on a typed Bundle parsed beforehand
//!   (the Bundle is consumed, so a clone is made outside the timer);
//! - helios-sof parse+run: from the same `serde_json::Value`s that salus starts from, through
//!   `create_bundle_from_resources_for_version` (its typed parse) and `process_view_definition`.
//!
//! Row counts of both engines are printed and compared, and so are the rows themselves
//! (each cell as text, rows sorted) outside the timed part.

use helios_sof::{
    create_bundle_from_resources_for_version, parse_view_definition_for_version,
    process_view_definition, FhirVersion, SofBundle, SofViewDefinition,
};
use salus_views::View;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Instant;

const ROUNDS: usize = 3;

/// The views both engines run. No Observation is in the shared sample, so the
/// "nested forEach over values" view is MedicationRequest dosage (forEach dosageInstruction,
/// forEachOrNull doseAndRate) rather than Observation components.
fn views() -> Vec<Value> {
    vec![
        json!({
            "resourceType": "ViewDefinition", "status": "active",
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
        json!({
            "resourceType": "ViewDefinition", "status": "active",
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
        json!({
            "resourceType": "ViewDefinition", "status": "active",
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
        json!({
            "resourceType": "ViewDefinition", "status": "active",
            "resource": "MedicationRequest", "name": "medication_dosage",
            "select": [
                {"column": [
                    {"name": "id", "path": "getResourceKey()", "type": "id"},
                    {"name": "patient_id", "path": "subject.getReferenceKey(Patient)", "type": "string"},
                    {"name": "status", "path": "status", "type": "code"},
                    {"name": "rxnorm", "path": "medication.ofType(CodeableConcept).coding.where(system = 'http://www.nlm.nih.gov/research/umls/rxnorm').code.first()", "type": "code"},
                    {"name": "authored", "path": "authoredOn", "type": "dateTime"}
                ]},
                {"forEach": "dosageInstruction", "select": [
                    {"column": [
                        {"name": "sequence", "path": "sequence", "type": "integer"},
                        {"name": "frequency", "path": "timing.repeat.frequency", "type": "integer"},
                        {"name": "period", "path": "timing.repeat.period", "type": "decimal"},
                        {"name": "period_unit", "path": "timing.repeat.periodUnit", "type": "code"}
                    ]},
                    {"forEachOrNull": "doseAndRate", "column": [
                        {"name": "dose_type", "path": "type.coding.code.first()", "type": "code"},
                        {"name": "dose_value", "path": "dose.ofType(Quantity).value", "type": "decimal"}
                    ]}
                ]}
            ]
        }),
        json!({
            "resourceType": "ViewDefinition", "status": "active",
            "resource": "Procedure", "name": "procedures",
            "select": [{"column": [
                {"name": "id", "path": "getResourceKey()", "type": "id"},
                {"name": "patient_id", "path": "subject.getReferenceKey(Patient)", "type": "string"},
                {"name": "encounter_id", "path": "encounter.getReferenceKey(Encounter)", "type": "string"},
                {"name": "status", "path": "status", "type": "code"},
                {"name": "code", "path": "code.coding.where(system = 'http://snomed.info/sct').code.first()", "type": "code"},
                {"name": "start", "path": "performed.ofType(Period).start", "type": "dateTime"},
                {"name": "location", "path": "location.display", "type": "string"}
            ]}]
        }),
    ]
}

fn shared_dir() -> PathBuf {
    std::env::var_os("SALUS_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"))
}

/// Append `-{n}` to the resource id and to every literal reference (`Type/id`, `urn:uuid:…`);
/// conditional references (`Type?identifier=…`) are left as they are.
fn rewrite(value: &mut Value, n: usize, top: bool) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                match (key.as_str(), &mut *v) {
                    ("id", Value::String(s)) if top => s.push_str(&format!("-{n}")),
                    ("reference", Value::String(s)) if !s.contains('?') => {
                        s.push_str(&format!("-{n}"))
                    }
                    _ => rewrite(v, n, false),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rewrite(v, n, false)),
        _ => {}
    }
}

/// Resources by type: the NDJSON files of the sample, `copies` times over.
fn load(dir: &Path, copies: usize) -> BTreeMap<String, Vec<Value>> {
    let mut by_type: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "ndjson")
                && p.file_name().is_some_and(|f| f != "log.ndjson")
        })
        .collect();
    files.sort();
    for path in files {
        let text = std::fs::read_to_string(&path).expect("NDJSON file");
        let originals: Vec<Value> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("NDJSON line"))
            .collect();
        for n in 0..copies {
            for r in &originals {
                let mut r = r.clone();
                rewrite(&mut r, n, true);
                let t = r["resourceType"]
                    .as_str()
                    .expect("resourceType")
                    .to_string();
                by_type.entry(t).or_default().push(r);
            }
        }
    }
    by_type
}

/// One cell as text, for comparing rows across the engines.
fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    }
}

fn salus_run(view: &View, resources: &[Value]) -> Vec<Vec<Value>> {
    let mut rows = Vec::new();
    for r in resources {
        view.rows_into(r, &mut rows).expect("salus runs the view");
    }
    rows
}

fn peer_bundle(resources: &[Value]) -> SofBundle {
    create_bundle_from_resources_for_version(resources.to_vec(), FhirVersion::R4)
        .expect("helios-sof parses the resources")
}

#[derive(Clone, Copy)]
struct Best(f64);

impl Best {
    fn update(&mut self, secs: f64) {
        self.0 = self.0.min(secs);
    }
}

fn main() {
    let copies: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(30);
    let dir = shared_dir().join("data/bulk-10-patients");
    if !dir.is_dir() {
        eprintln!(
            "SKIPPED: the shared sample {} is absent; set SALUS_SHARED_DIR to the shared directory",
            dir.display()
        );
        std::process::exit(2);
    }
    println!(
        "threads: available_parallelism={}, RAYON_NUM_THREADS={}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "(unset)".into())
    );
    let start = Instant::now();
    let by_type = load(&dir, copies);
    let total: usize = by_type.values().map(Vec::len).sum();
    println!(
        "input: {copies} copies of {} -> {total} resources parsed in {:.1}s",
        dir.file_name().unwrap().to_string_lossy(),
        start.elapsed().as_secs_f64()
    );

    println!(
        "\n| view | resources | rows salus | rows helios-sof | salus rows/s | helios-sof rows/s (run only) | helios-sof rows/s (parse+run) | ratio vs run only | ratio vs parse+run | helios-sof parse alone (s) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut notes = Vec::new();
    for def in views() {
        let name = def["name"].as_str().unwrap().to_string();
        let rtype = def["resource"].as_str().unwrap().to_string();
        let resources: &[Value] = by_type.get(&rtype).map_or(&[], Vec::as_slice);
        let ours = View::compile(&def).expect("salus compiles the view");
        let theirs: SofViewDefinition =
            match parse_view_definition_for_version(def.clone(), FhirVersion::R4) {
                Ok(v) => v,
                Err(e) => {
                    println!("| {name} | helios-sof rejects the view: {e} |");
                    continue;
                }
            };

        // Typed parse for the peer's "run only" timing (timed once, separately).
        let t = Instant::now();
        let typed = peer_bundle(resources);
        let parse_secs = t.elapsed().as_secs_f64();

        // Correctness first, untimed: both engines' rows, compared as text.
        let our_rows = salus_run(&ours, resources);
        let their = match process_view_definition(theirs.clone(), typed.clone()) {
            Ok(r) => r,
            Err(e) => {
                println!(
                    "| {name} | {} | {} | error: {e} |",
                    resources.len(),
                    our_rows.len()
                );
                continue;
            }
        };
        let mut a: Vec<Vec<String>> = our_rows
            .iter()
            .map(|r| r.iter().map(Some).map(cell).collect())
            .collect();
        let mut b: Vec<Vec<String>> = their
            .rows
            .iter()
            .map(|r| r.values.iter().map(|v| cell(v.as_ref())).collect())
            .collect();
        let our_cols: Vec<&str> = ours.columns().iter().map(|c| c.name.as_str()).collect();
        if our_cols != their.columns {
            notes.push(format!(
                "{name}: column order differs: salus {our_cols:?}, helios-sof {:?}",
                their.columns
            ));
        }
        a.sort();
        b.sort();
        let differing = a.iter().zip(&b).filter(|(x, y)| x != y).count();
        if a.len() != b.len() || differing > 0 {
            let example = a.iter().zip(&b).find(|(x, y)| x != y);
            notes.push(format!(
                "{name}: rows salus {} vs helios-sof {}; {differing} sorted rows differ; first: {example:?}",
                a.len(),
                b.len()
            ));
        }
        let (rows_ours, rows_theirs) = (our_rows.len(), their.rows.len());
        drop((our_rows, their, a, b));

        let (mut s, mut p_run, mut p_all) = (Best(f64::MAX), Best(f64::MAX), Best(f64::MAX));
        for _ in 0..ROUNDS {
            let t = Instant::now();
            let rows = salus_run(&ours, resources);
            s.update(t.elapsed().as_secs_f64());
            assert_eq!(black_box(rows).len(), rows_ours);

            let (v, bundle) = (theirs.clone(), typed.clone());
            let t = Instant::now();
            let out = process_view_definition(v, bundle).expect("helios-sof runs");
            p_run.update(t.elapsed().as_secs_f64());
            assert_eq!(black_box(out).rows.len(), rows_theirs);

            let (v, input) = (theirs.clone(), resources.to_vec());
            let t = Instant::now();
            let bundle = create_bundle_from_resources_for_version(input, FhirVersion::R4)
                .expect("helios-sof parses the resources");
            let out = process_view_definition(v, bundle).expect("helios-sof runs");
            p_all.update(t.elapsed().as_secs_f64());
            assert_eq!(black_box(out).rows.len(), rows_theirs);
        }
        let rate = |rows: usize, secs: f64| rows as f64 / secs;
        let (rs, rr, ra) = (
            rate(rows_ours, s.0),
            rate(rows_theirs, p_run.0),
            rate(rows_theirs, p_all.0),
        );
        println!(
            "| {name} | {} | {rows_ours} | {rows_theirs} | {rs:.0} | {rr:.0} | {ra:.0} | {:.2}x | {:.2}x | {parse_secs:.3} |",
            resources.len(),
            rs / rr,
            rs / ra
        );
    }
    if notes.is_empty() {
        println!("\nrows: both engines gave the same rows (cells compared as text) for every view");
    } else {
        println!("\ndiscrepancies:");
        for n in notes {
            println!("- {n}");
        }
    }
}
