//! Throughput of the Safe Harbor configuration over the shared `bulk-10-patients` export.
//!
//! ```text
//! cargo run --release -p salus-deid --example deid_bench [-- --rounds N] [-- --out DIR]
//! ```
//!
//! Reads every resource file of `$SALUS_SHARED_DIR/data/bulk-10-patients` (default: the
//! `shared` folder beside the repository), learns the patients' PHI terms in a pre-pass,
//! then anonymizes each file line by line (in memory, so disk speed does not count) and
//! prints resources/s and MB/s. `--out DIR` also writes the anonymized NDJSON files there.

use salus_deid::Anonymizer;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rounds: usize = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let out_dir = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from);
    let shared = std::env::var_os("SALUS_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    let dir = shared.join("data/bulk-10-patients");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        println!("SKIPPED: {} not found", dir.display());
        return;
    };
    let mut files: Vec<(String, String)> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "ndjson"))
        .filter_map(|p| {
            let text = std::fs::read_to_string(&p).ok()?;
            text.contains("\"resourceType\"").then(|| {
                (
                    p.file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned(),
                    text,
                )
            })
        })
        .collect();
    files.sort();
    let lines: usize = files.iter().map(|(_, t)| t.lines().count()).sum();
    let bytes: usize = files.iter().map(|(_, t)| t.len()).sum();

    let t0 = Instant::now();
    let engine = Anonymizer::safe_harbor();
    for (_, text) in &files {
        engine.learn_ndjson(text.as_bytes()).expect("learn");
    }
    println!(
        "setup + learning pre-pass: {:.1} ms ({} patients known)",
        t0.elapsed().as_secs_f64() * 1e3,
        engine.phi_index().len()
    );

    let mut best = f64::MAX;
    for round in 0..rounds.max(1) {
        let t = Instant::now();
        let mut written = 0;
        let mut per_file = Vec::new();
        for (name, text) in &files {
            let tf = Instant::now();
            let mut out = Vec::with_capacity(text.len());
            let stats = engine
                .anonymize_ndjson(text.as_bytes(), &mut out)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            written += stats.written;
            per_file.push((name.clone(), stats.written, tf.elapsed().as_secs_f64()));
            if round == 0 {
                if let Some(d) = &out_dir {
                    std::fs::create_dir_all(d).expect("create --out dir");
                    std::fs::write(d.join(name), &out).expect("write output");
                }
            }
        }
        let s = t.elapsed().as_secs_f64();
        if round == 0 {
            for (name, n, secs) in &per_file {
                println!(
                    "  {name}: {n} resources, {:.0} resources/s",
                    *n as f64 / secs
                );
            }
        }
        best = best.min(s);
        println!(
            "round {}: {written} resources in {:.3} s: {:.0} resources/s, {:.1} MB/s",
            round + 1,
            s,
            written as f64 / s,
            bytes as f64 / s / 1e6
        );
    }
    println!(
        "best: {:.0} resources/s ({lines} resources, {:.1} MB of NDJSON)",
        lines as f64 / best,
        bytes as f64 / 1e6
    );
}
