//! The shipped Safe Harbor configuration over every resource of the shared
//! `bulk-10-patients` export: no name, address line, telecom value, identifier value or
//! day-precision date of the input survives anywhere in the output; every reference in
//! the output resolves; and the output is counted against the validator.

use aho_corasick::AhoCorasick;
use salus_deid::Anonymizer;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

fn shared_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("SALUS_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    let data = dir.join("data/bulk-10-patients");
    if data.is_dir() {
        Some(data)
    } else if std::env::var_os("SALUS_REQUIRE_SHARED").is_some() {
        panic!(
            "SALUS_REQUIRE_SHARED is set but {} was not found",
            data.display()
        );
    } else {
        println!("SKIPPED: shared data {} not found", data.display());
        None
    }
}

/// The export's resource files (the export log, which holds no resources, left out).
fn resource_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read data dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "ndjson"))
        .filter(|p| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            text.lines()
                .next()
                .and_then(|l| serde_json::from_str::<Value>(l).ok())
                .is_some_and(|v| v.get("resourceType").is_some())
        })
        .collect();
    files.sort();
    files
}

#[derive(Default)]
struct Sensitive {
    values: HashSet<String>,
    kinds: HashMap<String, &'static str>,
}

impl Sensitive {
    fn add(&mut self, s: &str, kind: &'static str) {
        let s = s.trim();
        if s.len() < 3 {
            return;
        }
        if self.values.insert(s.to_string()) {
            self.kinds.insert(s.to_string(), kind);
        }
    }
}

fn strings(v: Option<&Value>) -> Vec<&str> {
    match v {
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// Every name part, address line, telecom value, identifier value and day-precision date.
fn collect(v: &Value, parent_key: &str, out: &mut Sensitive) {
    match v {
        Value::Object(m) => {
            if m.contains_key("family") || m.contains_key("given") {
                for k in ["family", "given", "text"] {
                    for s in strings(m.get(k)) {
                        out.add(s, "name");
                    }
                }
            }
            if parent_key == "address" || m.contains_key("line") {
                for s in strings(m.get("line")) {
                    out.add(s, "address line");
                }
            }
            if parent_key == "telecom" {
                for s in strings(m.get("value")) {
                    out.add(s, "telecom");
                }
            }
            if parent_key == "identifier" {
                for s in strings(m.get("value")) {
                    out.add(s, "identifier");
                }
            }
            for (k, c) in m {
                collect(c, k, out);
            }
        }
        Value::Array(a) => {
            for c in a {
                collect(c, parent_key, out);
            }
        }
        Value::String(s) => {
            let b = s.as_bytes();
            let is_day = b.len() >= 10
                && b[..4].iter().all(u8::is_ascii_digit)
                && b[4] == b'-'
                && b[5..7].iter().all(u8::is_ascii_digit)
                && b[7] == b'-'
                && b[8..10].iter().all(u8::is_ascii_digit);
            if is_day {
                out.add(s, "date");
                out.add(&s[..10], "date");
            }
        }
        _ => {}
    }
}

/// References found in a resource: (reference string, the Reference object).
fn references<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Object(m) => {
            let logical = m.get("identifier").is_some_and(Value::is_object)
                && !m.contains_key("resourceType");
            if m.contains_key("reference") || logical {
                out.push(v);
            }
            for c in m.values() {
                references(c, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|c| references(c, out)),
        _ => {}
    }
}

#[test]
fn safe_harbor_leaves_no_phi_and_keeps_references() {
    let Some(dir) = shared_dir() else {
        return;
    };
    let files = resource_files(&dir);
    assert!(!files.is_empty(), "no resource files in {}", dir.display());
    let engine = Anonymizer::safe_harbor();

    // Pre-pass: learn the patients' names etc. for the free-text scrubber.
    for f in &files {
        let r = std::io::BufReader::new(std::fs::File::open(f).unwrap());
        engine.learn_ndjson(r).unwrap();
    }

    let mut sensitive = Sensitive::default();
    let mut output = Vec::new();
    let mut inputs = 0u64;
    let mut valid_in = 0u64;
    let started = std::time::Instant::now();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: Value = serde_json::from_str(line).unwrap();
            collect(&v, "", &mut sensitive);
            inputs += 1;
            if salus_fhir::validate::is_valid(&v) {
                valid_in += 1;
            }
        }
        let stats = engine
            .anonymize_ndjson(text.as_bytes(), &mut output)
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert_eq!(stats.skipped, 0);
    }
    let elapsed = started.elapsed();
    let out_text = String::from_utf8(output).unwrap();
    let resources: Vec<Value> = out_text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(resources.len() as u64, inputs);

    // 1. Nothing sensitive survives, anywhere in the serialized output.
    let patterns: Vec<&String> = sensitive.values.iter().collect();
    let ac = AhoCorasick::new(&patterns).unwrap();
    let mut survivors: HashSet<usize> = HashSet::new();
    for m in ac.find_overlapping_iter(&out_text) {
        survivors.insert(m.pattern().as_usize());
    }
    let mut by_kind: HashMap<&str, usize> = HashMap::new();
    for k in sensitive.kinds.values() {
        *by_kind.entry(k).or_default() += 1;
    }
    println!(
        "leak check: {} distinct values checked ({by_kind:?}) over {} resources",
        patterns.len(),
        inputs
    );
    let leaked: Vec<String> = survivors
        .iter()
        .take(20)
        .map(|&i| format!("{} ({})", patterns[i], sensitive.kinds[patterns[i]]))
        .collect();
    println!("survivors: {}", survivors.len());
    assert!(survivors.is_empty(), "survived: {leaked:?}");

    // 2. Every reference resolves within the output.
    let mut ids: HashSet<(String, String)> = HashSet::new();
    let mut idents: HashSet<(String, String)> = HashSet::new();
    let mut idents_any: HashSet<String> = HashSet::new();
    for r in &resources {
        let rt = r["resourceType"].as_str().unwrap().to_string();
        ids.insert((rt.clone(), r["id"].as_str().unwrap_or("").to_string()));
        let list = match r.get("identifier") {
            Some(Value::Array(a)) => a.clone(),
            Some(v @ Value::Object(_)) => vec![v.clone()],
            _ => Vec::new(),
        };
        for i in list {
            let key = format!(
                "{}|{}",
                i.get("system").and_then(Value::as_str).unwrap_or(""),
                i.get("value").and_then(Value::as_str).unwrap_or("")
            );
            idents.insert((rt.clone(), key.clone()));
            idents_any.insert(key);
        }
    }
    let (mut literal, mut conditional, mut logical, mut unresolved) =
        (0u64, 0u64, 0u64, Vec::new());
    for r in &resources {
        let mut refs = Vec::new();
        references(r, &mut refs);
        for rf in refs {
            if let Some(s) = rf.get("reference").and_then(Value::as_str) {
                if let Some((ty, query)) = s.split_once('?') {
                    let value = query.strip_prefix("identifier=").unwrap_or(query);
                    if idents.contains(&(ty.to_string(), value.to_string())) {
                        conditional += 1;
                    } else {
                        unresolved.push(s.to_string());
                    }
                } else {
                    let mut it = s.rsplitn(2, '/');
                    let id = it.next().unwrap_or("");
                    let ty = it.next().unwrap_or("");
                    if ids.contains(&(ty.to_string(), id.to_string())) {
                        literal += 1;
                    } else {
                        unresolved.push(s.to_string());
                    }
                }
            } else if let Some(i) = rf.get("identifier") {
                let key = format!(
                    "{}|{}",
                    i.get("system").and_then(Value::as_str).unwrap_or(""),
                    i.get("value").and_then(Value::as_str).unwrap_or("")
                );
                if idents_any.contains(&key) {
                    logical += 1;
                } else {
                    unresolved.push(key);
                }
            }
        }
    }
    println!(
        "references resolved: {} (literal {literal}, conditional {conditional}, logical {logical}); unresolved {}",
        literal + conditional + logical,
        unresolved.len()
    );
    assert!(literal > 0 && conditional > 0 && logical > 0);
    assert!(
        unresolved.is_empty(),
        "unresolved: {:?}",
        &unresolved[..unresolved.len().min(10)]
    );

    // 3. The validator, before and after.
    let mut valid_out = 0u64;
    let mut issues: HashMap<String, usize> = HashMap::new();
    for r in &resources {
        let found = salus_fhir::validate::validate_resource(r);
        let errors: Vec<_> = found.iter().filter(|i| i.is_error()).collect();
        if errors.is_empty() {
            valid_out += 1;
        }
        for e in errors.iter().take(3) {
            let key = format!(
                "{} at {}",
                e.diagnostics.chars().take(80).collect::<String>(),
                e.expression.clone().unwrap_or_default()
            );
            *issues.entry(key).or_default() += 1;
        }
    }
    println!(
        "validator: {valid_out} of {} output resources valid (input: {valid_in} of {inputs})",
        resources.len()
    );
    let mut top: Vec<_> = issues.into_iter().collect();
    top.sort_by_key(|b| std::cmp::Reverse(b.1));
    for (k, n) in top.iter().take(10) {
        println!("  {n} × {k}");
    }
    println!(
        "anonymized {inputs} resources in {:.2?} ({:.0} resources/s, this build)",
        elapsed,
        inputs as f64 / elapsed.as_secs_f64()
    );
    assert!(
        valid_out * 100 >= valid_in * 95,
        "validity dropped: {valid_out} of {valid_in}"
    );
}
