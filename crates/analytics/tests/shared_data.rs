//! The measure views and SQL over the shared Synthea-style bulk export
//! (`<shared>/data/bulk-10-patients`); skipped when the shared material is absent.

mod common;

use common::{shared_dir, sorted_rows, strings};
use salus_analytics::measures::{self, MeasurePeriod, MEASURES};
use salus_analytics::{Analytics, Change, MaterializeOptions, Materializer};
use serde_json::Value;
use std::io::BufRead;

fn load(dir: &std::path::Path) -> Vec<Value> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "ndjson") && !p.ends_with("log.ndjson"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let reader = std::io::BufReader::new(std::fs::File::open(&f).unwrap());
        for line in reader.lines() {
            let line = line.unwrap();
            if !line.trim().is_empty() {
                out.push(serde_json::from_str(&line).unwrap());
            }
        }
    }
    out
}

#[tokio::test]
async fn bulk_export_materializes_queries_and_refreshes() {
    let Some(shared) = shared_dir("data/bulk-10-patients") else {
        return;
    };
    let resources = load(&shared.join("data/bulk-10-patients"));
    let count = |t: &str| resources.iter().filter(|r| r["resourceType"] == t).count();
    let dir = tempfile::tempdir().unwrap();
    let m = Materializer::new(dir.path()).with_options(MaterializeOptions {
        part_rows: 500,
        ..Default::default()
    });
    measures::materialize(&m, &resources, Some("0")).unwrap();
    let sql = Analytics::new(dir.path()).unwrap();
    assert_eq!(
        strings(&sql, "SELECT count(*) FROM mx_patient").await,
        vec![count("Patient").to_string()]
    );
    assert_eq!(
        strings(&sql, "SELECT count(DISTINCT id) FROM mx_encounter").await,
        vec![count("Encounter").to_string()]
    );
    assert_eq!(
        strings(
            &sql,
            "SELECT count(*) FROM mx_encounter WHERE patient_id NOT IN (SELECT id FROM mx_patient)"
        )
        .await,
        vec!["0"],
        "every encounter's subject is a patient in the export"
    );
    for year in [2015, 2020] {
        let period = MeasurePeriod::year(year).unwrap();
        for mdef in MEASURES {
            let r = measures::evaluate(&sql, mdef.id, &period).await.unwrap();
            assert!(r.count("numerator") <= r.count("denominator").max(r.count("numerator")));
            println!(
                "{year} {}: {:?} score {:?}",
                mdef.id,
                r.populations
                    .iter()
                    .map(|p| (p.code, p.count()))
                    .collect::<Vec<_>>(),
                r.score
            );
        }
    }

    // Delete every other encounter and change the rest's status: refresh = rebuild.
    let defs = measures::view_definitions().unwrap();
    let enc_view = defs.iter().find(|d| d["name"] == "mx_encounter").unwrap();
    let mut changes = Vec::new();
    let mut remaining = Vec::new();
    for (i, r) in resources
        .iter()
        .filter(|r| r["resourceType"] == "Encounter")
        .enumerate()
    {
        if i % 2 == 0 {
            changes.push(Change::delete("Encounter", r["id"].as_str().unwrap()));
        } else {
            let mut r = r.clone();
            r["status"] = Value::from("entered-in-error");
            changes.push(Change::upsert(r.clone()).unwrap());
            remaining.push(r);
        }
    }
    m.refresh(enc_view, changes, Some("1")).unwrap();
    let full_dir = tempfile::tempdir().unwrap();
    Materializer::new(full_dir.path())
        .materialize(enc_view, &remaining, None)
        .unwrap();
    let a = Analytics::new(dir.path()).unwrap();
    let b = Analytics::new(full_dir.path()).unwrap();
    assert_eq!(
        sorted_rows(&a, "mx_encounter").await,
        sorted_rows(&b, "mx_encounter").await
    );
}
