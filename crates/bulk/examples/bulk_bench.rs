//! Bulk data throughput: `$import` (InitialLoad), `$export`, and de-identified export
//! (Safe Harbor) over generated data, with the peak resident memory of each phase.
//!
//! ```text
//! cargo run --release -p salus-bulk --example bulk_bench -- [RESOURCES] [--dir DIR]
//! ```
//!
//! Generates RESOURCES resources (default 200,000: one Patient per nine Observations,
//! fresh ids) as NDJSON, imports them into an empty SQLite store through the bulk
//! import job, exports everything, then exports it de-identified. Each phase runs the
//! same job code as `salus serve`; peak RSS is the process's high-water mark, reset
//! before each phase (Linux `/proc/self/clear_refs`), so runs at 20k and 200k show
//! whether memory grows with the data.

use salus_bulk::{BulkConfig, BulkEngine, ExportLevel, ExportRequest, ImportRequest, JobView};
use salus_service::{FhirService, Limits};
use salus_store::sqlite::{SqliteOptions, SqliteStore};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

// The allocator `salus serve` uses, so the figures match the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Resident anonymous memory (heap, SQLite page caches) in MiB: unlike the total, it
/// leaves out the database file pages SQLite maps (`mmap_size`), which the OS may drop.
fn anon_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("RssAnon:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn generate(dir: &Path, n: usize) -> (usize, usize) {
    std::fs::create_dir_all(dir).unwrap();
    let patients = n.div_ceil(10);
    let mut p = std::io::BufWriter::new(std::fs::File::create(dir.join("Patient.ndjson")).unwrap());
    for i in 0..patients {
        writeln!(
            p,
            r#"{{"resourceType":"Patient","id":"bp{i}","identifier":[{{"system":"urn:bench:mrn","value":"MRN{i:08}"}}],"name":[{{"family":"Family{i}","given":["Given{i}"]}}],"telecom":[{{"system":"phone","value":"555-{:04}"}}],"gender":"{}","birthDate":"19{:02}-0{}-1{}","address":[{{"line":["{i} Main St"],"city":"Springfield","postalCode":"0213{}"}}]}}"#,
            i % 10_000,
            if i % 2 == 0 { "female" } else { "male" },
            40 + i % 60,
            1 + i % 9,
            i % 10,
            i % 10
        )
        .unwrap();
    }
    p.flush().unwrap();
    let observations = n - patients;
    let mut o =
        std::io::BufWriter::new(std::fs::File::create(dir.join("Observation.ndjson")).unwrap());
    for i in 0..observations {
        writeln!(
            o,
            r#"{{"resourceType":"Observation","id":"bo{i}","status":"final","category":[{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"laboratory"}}]}}],"code":{{"coding":[{{"system":"http://loinc.org","code":"718-7","display":"Hemoglobin"}}]}},"subject":{{"reference":"Patient/bp{}"}},"effectiveDateTime":"2021-0{}-1{}T08:30:00Z","valueQuantity":{{"value":{}.{},"unit":"g/dL","system":"http://unitsofmeasure.org","code":"g/dL"}}}}"#,
            i % patients,
            1 + i % 9,
            i % 10,
            10 + i % 8,
            i % 10
        )
        .unwrap();
    }
    o.flush().unwrap();
    (patients, observations)
}

/// Wait for a job, sampling anonymous RSS; the job and its peak anonymous RSS.
async fn run(engine: &BulkEngine, id: String) -> (JobView, f64) {
    let mut peak = anon_rss_mib();
    let v = loop {
        let v = engine.status(&id).expect("job");
        if v.job.status.is_finished() {
            break v;
        }
        peak = peak.max(anon_rss_mib());
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    assert!(
        v.job.status == salus_bulk::JobStatus::Completed,
        "{:?}",
        v.job.failure
    );
    (v, peak.max(anon_rss_mib()))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args
        .iter()
        .find_map(|a| a.replace('_', "").parse().ok())
        .unwrap_or(200_000);
    let base = args
        .iter()
        .position(|a| a == "--dir")
        .and_then(|i| args.get(i + 1))
        .map(std::path::PathBuf::from);
    let tmp = tempfile::tempdir().unwrap();
    let dir = base.unwrap_or_else(|| tmp.path().to_path_buf());
    let input = dir.join("in");
    let (patients, observations) = generate(&input, n);
    let in_bytes: u64 = ["Patient.ndjson", "Observation.ndjson"]
        .iter()
        .map(|f| std::fs::metadata(input.join(f)).unwrap().len())
        .sum();
    println!(
        "bulk_bench: {n} resources ({patients} Patient, {observations} Observation), {:.1} MB NDJSON",
        in_bytes as f64 / 1e6
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let db = dir.join("db");
        std::fs::create_dir_all(&db).unwrap();
        let store = SqliteStore::open_dir(&db, SqliteOptions::default()).unwrap();
        let service = FhirService::new(Arc::new(store), Limits::default());
        let mut cfg = BulkConfig::new(dir.join("jobs"));
        cfg.import_dirs = vec![input.clone()];
        let engine = BulkEngine::new(service, cfg.clone());

        reset_peak();
        let body = serde_json::json!({"resourceType": "Parameters", "parameter": [
            {"name": "inputFormat", "valueCode": "application/fhir+ndjson"},
            {"name": "input", "part": [{"name": "type", "valueCode": "Patient"},
                {"name": "url", "valueUri": input.join("Patient.ndjson").display().to_string()}]},
            {"name": "input", "part": [{"name": "type", "valueCode": "Observation"},
                {"name": "url", "valueUri": input.join("Observation.ndjson").display().to_string()}]}
        ]});
        let req = ImportRequest::parse(&body, &cfg).unwrap();
        let t = Instant::now();
        let id = engine.start_import(req, "bench", None).await.unwrap();
        let (v, anon) = run(&engine, id).await;
        let secs = t.elapsed().as_secs_f64();
        let imported: u64 = v.job.output.iter().map(|o| o.count).sum();
        assert_eq!(imported as usize, n, "{:?}", v.job.error);
        println!(
            "import          {imported:>8} resources in {secs:6.2}s  {:>8.0} resources/s                peak RSS {:6.1} MiB, anonymous {anon:6.1} MiB",
            imported as f64 / secs,
            peak_rss_mib()
        );

        for (label, pairs) in [
            ("export", vec![]),
            (
                "export de-id",
                vec![("_anonymizationConfig".to_string(), "safe-harbor".to_string())],
            ),
        ] {
            reset_peak();
            let req = ExportRequest::parse(ExportLevel::System, &pairs, None, &cfg).unwrap();
            let t = Instant::now();
            let id = engine.start_export(req, "bench", None).await.unwrap();
            let (v, anon) = run(&engine, id.clone()).await;
            let secs = t.elapsed().as_secs_f64();
            let count: u64 = v.job.output.iter().map(|o| o.count).sum();
            let bytes: u64 = v.job.output.iter().map(|o| o.bytes).sum();
            assert_eq!(count as usize, n);
            println!(
                "{label:<15} {count:>8} resources in {secs:6.2}s  {:>8.0} resources/s  {:6.1} MB/s  peak RSS {:6.1} MiB, anonymous {anon:6.1} MiB",
                count as f64 / secs,
                bytes as f64 / 1e6 / secs,
                peak_rss_mib()
            );
            engine.cancel(&id);
        }
    });
}
