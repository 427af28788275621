//! Benchmark: materialization rows/s over NDJSON input, incremental refresh, and SQL query
//! times on the materialized tables.
//!
//! ```text
//! cargo run --release -p salus-analytics --example materialize -- \
//!     [--input DIR_OF_NDJSON] [--repeat N] [--out DIR] [--changes PERCENT]
//! ```
//!
//! `--input` defaults to `<shared>/data/bulk-10-patients` (`SALUS_SHARED_DIR`, else the
//! `shared` directory beside the repository). `--repeat N` replays the input N times with
//! ids (and the references to them) suffixed, to get a bigger population. Generated data
//! works too, e.g. `carebundle generate --profile mixed --count 1000 --seed 7 --out DIR
//! --format ndjson`, then `--input DIR`.

use salus_analytics::measures::{self, MeasurePeriod, MEASURES};
use salus_analytics::{Analytics, Change, Materializer};
use serde_json::{json, Value};
use std::error::Error;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Instant;

type Res<T> = Result<T, Box<dyn Error>>;

fn ndjson_files(dir: &Path, out: &mut Vec<PathBuf>) -> Res<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            ndjson_files(&p, out)?;
        } else if p.extension().is_some_and(|e| e == "ndjson") && !p.ends_with("log.ndjson") {
            out.push(p);
        }
    }
    Ok(())
}

fn load(dir: &Path) -> Res<Vec<Value>> {
    let mut files = Vec::new();
    ndjson_files(dir, &mut files)?;
    files.sort();
    let mut out = Vec::new();
    for f in files {
        for line in std::io::BufReader::new(std::fs::File::open(&f)?).lines() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(&line)?;
            // A Bundle (some generators write those): take its entries.
            if v["resourceType"] == "Bundle" {
                if let Some(entries) = v["entry"].as_array() {
                    out.extend(entries.iter().filter_map(|e| e.get("resource").cloned()));
                }
            } else {
                out.push(v);
            }
        }
    }
    Ok(out)
}

/// Suffix ids and references so a copy of the data set is a distinct population.
fn suffixed(v: &Value, suffix: &str) -> Value {
    fn walk(v: &mut Value, suffix: &str, top: bool) {
        match v {
            Value::Object(m) => {
                for (k, x) in m.iter_mut() {
                    match (k.as_str(), &*x) {
                        ("id", Value::String(s)) if top => {
                            *x = Value::String(format!("{s}{suffix}"))
                        }
                        ("reference", Value::String(s)) if !s.starts_with('#') => {
                            *x = Value::String(format!("{s}{suffix}"))
                        }
                        _ => walk(x, suffix, false),
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| walk(x, suffix, false)),
            _ => {}
        }
    }
    let mut v = v.clone();
    walk(&mut v, suffix, true);
    v
}

fn shared_default() -> PathBuf {
    std::env::var_os("SALUS_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"))
        .join("data/bulk-10-patients")
}

fn extra_views() -> Vec<Value> {
    vec![
        json!({"name": "condition_flat", "resource": "Condition", "select": [
        {"column": [
            {"name": "id", "path": "getResourceKey()", "type": "id"},
            {"name": "patient_id", "path": "subject.getReferenceKey(Patient)", "type": "id"},
            {"name": "onset", "path": "onset.ofType(dateTime)", "type": "dateTime"},
            {"name": "codes", "path": "code.coding.code", "type": "code", "collection": true}
        ]}]}),
        json!({"name": "medication_request", "resource": "MedicationRequest", "select": [
        {"column": [
            {"name": "id", "path": "getResourceKey()", "type": "id"},
            {"name": "patient_id", "path": "subject.getReferenceKey(Patient)", "type": "id"},
            {"name": "status", "path": "status", "type": "code"},
            {"name": "authored", "path": "authoredOn", "type": "dateTime"},
            {"name": "medication", "path": "medication.ofType(CodeableConcept).coding.code.first()", "type": "code"}
        ]}]}),
    ]
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> Res<()> {
    let mut input = shared_default();
    let mut repeat = 1usize;
    let mut out: Option<PathBuf> = None;
    let mut change_pct = 1.0f64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--input" => input = PathBuf::from(val()?),
            "--repeat" => repeat = val()?.parse()?,
            "--out" => out = Some(PathBuf::from(val()?)),
            "--changes" => change_pct = val()?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let t = Instant::now();
    let base = load(&input)?;
    if base.is_empty() {
        return Err(format!("no NDJSON resources under {}", input.display()).into());
    }
    let mut resources = Vec::with_capacity(base.len() * repeat);
    for r in 0..repeat {
        let suffix = if r == 0 {
            String::new()
        } else {
            format!("-r{r}")
        };
        resources.extend(base.iter().map(|v| {
            if r == 0 {
                v.clone()
            } else {
                suffixed(v, &suffix)
            }
        }));
    }
    println!(
        "input: {} resources ({} × {repeat}) from {}, parsed in {:.0} ms",
        resources.len(),
        base.len(),
        input.display(),
        ms(t)
    );
    let scratch = out.is_none();
    let root = out.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("salus-analytics-bench-{}", std::process::id()))
    });
    let m = Materializer::new(&root);

    println!("\n## materialize (full build)\n");
    println!("| view | resources read | rows | parts | ms | rows/s | resources/s |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut defs = measures::view_definitions()?;
    defs.extend(extra_views());
    let (mut total_rows, mut total_ms) = (0u64, 0f64);
    for d in &defs {
        let t = Instant::now();
        let s = m.materialize(d, &resources, Some("0"))?;
        let el = ms(t);
        total_rows += s.rows;
        total_ms += el;
        println!(
            "| {} | {} | {} | {} | {:.1} | {:.0} | {:.0} |",
            d["name"].as_str().unwrap_or("?"),
            s.resources_read,
            s.rows,
            s.parts,
            el,
            s.rows as f64 / (el / 1000.0),
            s.resources_read as f64 / (el / 1000.0)
        );
    }
    println!(
        "| **all** | | {total_rows} | | {total_ms:.1} | {:.0} | |",
        total_rows as f64 / (total_ms / 1000.0)
    );

    // Incremental refresh: change_pct % of encounters updated, as many deleted.
    let enc = defs
        .iter()
        .find(|d| d["name"] == "mx_encounter")
        .ok_or("no mx_encounter")?;
    let encounters: Vec<&Value> = resources
        .iter()
        .filter(|r| r["resourceType"] == "Encounter")
        .collect();
    let n = ((encounters.len() as f64) * change_pct / 100.0).ceil() as usize;
    let mut changes = Vec::new();
    for (i, e) in encounters.iter().take(2 * n).enumerate() {
        if i % 2 == 0 {
            let mut e = (*e).clone();
            e["status"] = json!("entered-in-error");
            changes.push(Change::upsert(e)?);
        } else if let Some(id) = e["id"].as_str() {
            changes.push(Change::delete("Encounter", id));
        }
    }
    let t = Instant::now();
    let r = m.refresh(enc, changes, Some("1"))?;
    println!(
        "\n## incremental refresh\n\nmx_encounter: {} changes of {} encounters → {} rows removed, {} added, {} parts rewritten, {} added in {:.1} ms",
        r.changes, encounters.len(), r.rows_removed, r.rows_added, r.parts_rewritten, r.parts_added, ms(t)
    );
    let t = Instant::now();
    m.materialize(enc, &resources, Some("1"))?;
    println!("(a full rebuild of mx_encounter takes {:.1} ms)", ms(t));

    println!("\n## SQL (each query run 3 times; best and first)\n");
    let t = Instant::now();
    let sql = Analytics::new(&root)?;
    println!("open {} tables: {:.1} ms\n", sql.tables().len(), ms(t));
    println!("| query | rows out | first ms | best ms |");
    println!("| --- | ---: | ---: | ---: |");
    let queries = [
        ("count encounters", "SELECT count(*) FROM mx_encounter".to_string()),
        ("encounters by class", "SELECT class_code, count(*) FROM mx_encounter GROUP BY class_code".to_string()),
        ("conditions per patient (join)", "SELECT p.id, count(c.id) FROM mx_patient p LEFT JOIN mx_condition c ON c.patient_id = p.id GROUP BY p.id".to_string()),
        ("top condition codes", "SELECT code, count(DISTINCT patient_id) AS n FROM mx_condition GROUP BY code ORDER BY n DESC LIMIT 10".to_string()),
        ("medications by year", "SELECT substr(authored, 1, 4) AS y, count(*) FROM medication_request GROUP BY y ORDER BY y".to_string()),
    ];
    for (label, q) in &queries {
        let mut times = Vec::new();
        let mut rows = 0;
        for _ in 0..3 {
            let t = Instant::now();
            rows = sql.query_result(q).await?.num_rows();
            times.push(ms(t));
        }
        let best = times.iter().cloned().fold(f64::MAX, f64::min);
        println!("| {label} | {rows} | {:.1} | {best:.1} |", times[0]);
    }
    let year: i32 = std::env::var("MEASURE_YEAR")
        .ok()
        .and_then(|y| y.parse().ok())
        .unwrap_or(2020);
    let period = MeasurePeriod::year(year)?;
    for mdef in MEASURES {
        let mut times = Vec::new();
        let mut summary = String::new();
        for _ in 0..3 {
            let t = Instant::now();
            let r = measures::evaluate(&sql, mdef.id, &period).await?;
            times.push(ms(t));
            summary = r
                .populations
                .iter()
                .map(|p| format!("{}={}", p.code, p.count()))
                .collect::<Vec<_>>()
                .join(" ");
        }
        let best = times.iter().cloned().fold(f64::MAX, f64::min);
        println!(
            "| measure {} ({year}: {summary}) | | {:.1} | {best:.1} |",
            mdef.id, times[0]
        );
    }
    if scratch {
        let _ = std::fs::remove_dir_all(&root);
    }
    println!("\nNoisy shared 2-core machine: repeat runs vary by tens of percent.");
    Ok(())
}
