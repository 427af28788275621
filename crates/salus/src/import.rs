//! `salus import` and `salus validate`: load FHIR Bundles (`.json`) and NDJSON files or
//! folders into a data dir or a running server.
//!
//! Each file is one unit: it is parsed and validated completely, then written in one
//! transaction (locally) — a bad file never leaves part of itself behind. Against a
//! server, files are validated here first and sent as transaction Bundles.

use crate::config::Config;
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use salus_fhir::validate::validate_resource;
use salus_service::{FhirService, ImportFailure};
use salus_store::StoreTx;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One problem, located as `file:line` (NDJSON) or `file` plus a FHIRPath location.
#[derive(Debug, Clone)]
pub struct Problem {
    pub location: String,
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.location, self.reason)
    }
}

/// What an import did.
#[derive(Debug, Default)]
pub struct Report {
    pub files: usize,
    pub files_failed: usize,
    pub resources: usize,
    pub skipped: Vec<(PathBuf, String)>,
    pub problems: Vec<Problem>,
    pub elapsed: Duration,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn rate(&self) -> f64 {
        self.resources as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The content of one input file.
pub enum Unit {
    /// A transaction or batch Bundle (batches are applied atomically too).
    Bundle(Value),
    /// Resources with the 1-based line (NDJSON) or 0 (single resource file) each came from.
    Resources(Vec<(usize, Value)>),
}

fn is_ndjson(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("ndjson") | Some("jsonl")
    )
}

fn is_json(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()) == Some("json")
}

/// Expand folders (recursively, sorted) into files. Files named explicitly are kept
/// whatever their extension; inside folders only `.json`, `.ndjson` and `.jsonl` count.
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = vec![];
    for p in paths {
        let meta = std::fs::metadata(p).with_context(|| format!("cannot read {}", p.display()))?;
        if meta.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("cannot list {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            entries.sort();
            let dirs: Vec<PathBuf> = entries.iter().filter(|e| e.is_dir()).cloned().collect();
            out.extend(
                entries
                    .into_iter()
                    .filter(|e| e.is_file() && (is_json(e) || is_ndjson(e))),
            );
            out.extend(collect_files(&dirs)?);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// Whether a file inside a folder is plainly not FHIR data (e.g. a Bulk Data export
/// `log.ndjson`, a package manifest): an NDJSON file whose first line, or a JSON file
/// whose first 64 KiB, has no `resourceType`.
fn looks_like_fhir(path: &Path) -> bool {
    use std::io::{BufRead, Read};
    let Ok(f) = std::fs::File::open(path) else {
        return true;
    };
    let mut head = String::new();
    if is_ndjson(path) {
        let _ = std::io::BufReader::new(f).read_line(&mut head);
    } else {
        let _ = f.take(64 * 1024).read_to_string(&mut head);
    }
    head.trim().is_empty() || head.contains("\"resourceType\"")
}

/// Parse a file into a [`Unit`]; JSON syntax problems are reported per line.
pub fn parse_file(path: &Path) -> Result<Unit, Vec<Problem>> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![Problem {
            location: name.clone(),
            reason: format!("cannot read: {e}"),
        }]
    })?;
    if is_ndjson(path) {
        let mut items = vec![];
        let mut problems = vec![];
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Value>(line) {
                Ok(v) if v.get("resourceType").and_then(Value::as_str).is_some() => {
                    items.push((i + 1, v))
                }
                Ok(_) => problems.push(Problem {
                    location: format!("{name}:{}", i + 1),
                    reason: "not a FHIR resource: no resourceType".into(),
                }),
                Err(e) => problems.push(Problem {
                    location: format!("{name}:{}", i + 1),
                    reason: format!("invalid JSON: {e}"),
                }),
            }
        }
        return if problems.is_empty() {
            Ok(Unit::Resources(items))
        } else {
            Err(problems)
        };
    }
    let v: Value = serde_json::from_str(&text).map_err(|e| {
        vec![Problem {
            location: format!("{name}:{}", e.line()),
            reason: format!("invalid JSON: {e}"),
        }]
    })?;
    if v.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        if v.get("resourceType").and_then(Value::as_str).is_none() {
            return Err(vec![Problem {
                location: name,
                reason: "not a FHIR resource: no resourceType".into(),
            }]);
        }
        return Ok(Unit::Resources(vec![(0, v)]));
    }
    match v.get("type").and_then(Value::as_str) {
        Some("transaction") => Ok(Unit::Bundle(v)),
        Some("batch") => {
            let mut v = v;
            v["type"] = json!("transaction");
            Ok(Unit::Bundle(v))
        }
        _ => Ok(Unit::Bundle(collection_to_transaction(v))),
    }
}

/// A collection (or searchset, document, …) Bundle as a transaction: resources with an
/// id are PUT (keeping it), others POSTed; `fullUrl`s are kept so references resolve.
pub fn collection_to_transaction(bundle: Value) -> Value {
    let entries: Vec<Value> = bundle
        .get("entry")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|e| {
                    let r = e.get("resource")?;
                    let rtype = r.get("resourceType")?.as_str()?;
                    let request = match r.get("id").and_then(Value::as_str) {
                        Some(id) => json!({"method": "PUT", "url": format!("{rtype}/{id}")}),
                        None => json!({"method": "POST", "url": rtype}),
                    };
                    let mut entry = json!({"resource": r, "request": request});
                    if let Some(f) = e.get("fullUrl") {
                        entry["fullUrl"] = f.clone();
                    }
                    Some(entry)
                })
                .collect()
        })
        .unwrap_or_default();
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

/// Number of entries of a Bundle.
fn unit_len(bundle: &Value) -> usize {
    bundle
        .get("entry")
        .and_then(Value::as_array)
        .map_or(0, Vec::len)
}

/// Files per local import transaction.
const BATCH_FILES: usize = 64;
/// Resources per local import transaction.
const BATCH_RESOURCES: usize = 50_000;

/// Where imported data goes.
pub enum Target {
    Local(FhirService),
    Remote {
        client: reqwest::Client,
        base: String,
    },
}

fn located(name: &str, line: usize) -> String {
    if line == 0 {
        name.to_string()
    } else {
        format!("{name}:{line}")
    }
}

/// Import one parsed unit into the target.
/// Import one parsed unit: locally into the open batch transaction `tx` (the caller
/// wraps it in a savepoint), or to a server.
async fn import_unit(
    target: &Target,
    tx: Option<&mut dyn StoreTx>,
    name: &str,
    unit: Unit,
) -> Result<usize, Vec<Problem>> {
    match target {
        Target::Local(svc) => {
            let tx = tx.expect("a local import runs in a transaction");
            match unit {
                Unit::Resources(items) => {
                    let lines: Vec<usize> = items.iter().map(|(l, _)| *l).collect();
                    let values = items.into_iter().map(|(_, v)| v).collect();
                    svc.resources_into(tx, values).await.map_err(|f| match f {
                        ImportFailure::Invalid(list) => list
                            .into_iter()
                            .flat_map(|(i, issues)| {
                                let loc = located(name, lines[i]);
                                issues.into_iter().map(move |is| Problem {
                                    location: loc.clone(),
                                    reason: match is.expression {
                                        Some(e) => format!("{e}: {}", is.diagnostics),
                                        None => is.diagnostics,
                                    },
                                })
                            })
                            .collect(),
                        ImportFailure::Failed(e) => vec![Problem {
                            location: name.to_string(),
                            reason: e.to_string(),
                        }],
                    })
                }
                Unit::Bundle(b) => svc.transaction_into(tx, b).await.map_err(|e| {
                    e.issues()
                        .into_iter()
                        .map(|is| Problem {
                            location: name.to_string(),
                            reason: match is.expression {
                                Some(x) => format!("{x}: {}", is.diagnostics),
                                None => is.diagnostics,
                            },
                        })
                        .collect()
                }),
            }
        }
        Target::Remote { client, base } => {
            // Validate here first so nothing of a bad file is sent.
            let mut problems = vec![];
            let bundles: Vec<Value> = match unit {
                Unit::Resources(items) => {
                    for (line, v) in &items {
                        for is in validate_resource(v).into_iter().filter(|i| i.is_error()) {
                            problems.push(Problem {
                                location: located(name, *line),
                                reason: match is.expression {
                                    Some(e) => format!("{e}: {}", is.diagnostics),
                                    None => is.diagnostics,
                                },
                            });
                        }
                    }
                    items
                        .chunks(1000)
                        .map(|chunk| {
                            let entries: Vec<Value> = chunk
                                .iter()
                                .map(|(_, r)| {
                                    let rtype = r["resourceType"].as_str().unwrap_or_default();
                                    let request = match r.get("id").and_then(Value::as_str) {
                                        Some(id) => json!({"method": "PUT", "url": format!("{rtype}/{id}")}),
                                        None => json!({"method": "POST", "url": rtype}),
                                    };
                                    json!({"resource": r, "request": request})
                                })
                                .collect();
                            json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
                        })
                        .collect()
                }
                Unit::Bundle(b) => {
                    if let Some(entries) = b.get("entry").and_then(Value::as_array) {
                        for (i, e) in entries.iter().enumerate() {
                            if let Some(r) = e.get("resource") {
                                for is in validate_resource(r).into_iter().filter(|i| i.is_error())
                                {
                                    problems.push(Problem {
                                        location: format!("{name}: Bundle.entry[{i}]"),
                                        reason: match is.expression {
                                            Some(e) => format!("{e}: {}", is.diagnostics),
                                            None => is.diagnostics,
                                        },
                                    });
                                }
                            }
                        }
                    }
                    vec![b]
                }
            };
            if !problems.is_empty() {
                return Err(problems);
            }
            let mut n = 0;
            for b in bundles {
                let count = unit_len(&b);
                let resp = client
                    .post(format!("{}/", base.trim_end_matches('/')))
                    .header("content-type", "application/fhir+json")
                    .header("prefer", "return=minimal")
                    .body(serde_json::to_vec(&b).unwrap_or_default())
                    .send()
                    .await
                    .map_err(|e| {
                        vec![Problem {
                            location: name.to_string(),
                            reason: format!("cannot reach {base}: {e}"),
                        }]
                    })?;
                let status = resp.status();
                if !status.is_success() {
                    let body: Value = resp.json().await.unwrap_or(Value::Null);
                    let reasons: Vec<String> = body
                        .get("issue")
                        .and_then(Value::as_array)
                        .map(|a| {
                            a.iter()
                                .map(|i| {
                                    let d = i["diagnostics"].as_str().unwrap_or("");
                                    match i["expression"][0].as_str() {
                                        Some(e) => format!("{e}: {d}"),
                                        None => d.to_string(),
                                    }
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    return Err(vec![Problem {
                        location: name.to_string(),
                        reason: format!("server answered {status}: {}", reasons.join("; ")),
                    }]);
                }
                n += count;
            }
            Ok(n)
        }
    }
}

/// Import files and folders into a target, with an optional progress bar.
pub async fn import_paths(target: &Target, paths: &[PathBuf], progress: bool) -> Result<Report> {
    let start = Instant::now();
    let files = collect_files(paths)?;
    let explicit: Vec<&PathBuf> = paths.iter().filter(|p| p.is_file()).collect();
    let total: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
    let bar = if progress {
        let b = ProgressBar::new(total);
        b.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {bytes}/{total_bytes} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let mut report = Report::default();
    // Locally, files are written in batches: one store transaction holds up to
    // BATCH_FILES files, each inside its own savepoint, so a bad file is undone alone
    // and commits stay few.
    let mut batch: Option<Box<dyn StoreTx>> = None;
    let (mut pending, mut pending_files) = (0usize, 0usize);
    for f in &files {
        let size = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
        if !explicit.contains(&f) && !looks_like_fhir(f) {
            report
                .skipped
                .push((f.clone(), "not FHIR data (no resourceType found)".into()));
            bar.inc(size);
            continue;
        }
        report.files += 1;
        let name = f.display().to_string();
        bar.set_message(
            f.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        let result = match parse_file(f) {
            Ok(unit) => match (target, batch.as_mut()) {
                (Target::Local(svc), _) => {
                    let tx = match batch.as_mut() {
                        Some(tx) => tx,
                        None => batch.insert(svc.store().begin().await?),
                    };
                    tx.savepoint().await?;
                    let r = import_unit(target, Some(tx.as_mut()), &name, unit).await;
                    if r.is_ok() {
                        tx.release_savepoint().await?;
                    } else {
                        tx.rollback_to_savepoint().await?;
                    }
                    r
                }
                (Target::Remote { .. }, _) => import_unit(target, None, &name, unit).await,
            },
            Err(p) => Err(p),
        };
        match result {
            Ok(n) => {
                pending += n;
                pending_files += 1;
                if batch.is_none() {
                    report.resources += n;
                    pending = 0;
                } else if pending_files >= BATCH_FILES || pending >= BATCH_RESOURCES {
                    batch.take().expect("open batch").commit().await?;
                    report.resources += pending;
                    (pending, pending_files) = (0, 0);
                }
            }
            Err(p) => {
                report.files_failed += 1;
                for problem in &p {
                    bar.println(format!("error: {problem}"));
                }
                report.problems.extend(p);
            }
        }
        bar.inc(size);
    }
    if let Some(tx) = batch.take() {
        tx.commit().await?;
        report.resources += pending;
    }
    bar.finish_and_clear();
    report.elapsed = start.elapsed();
    Ok(report)
}

/// `salus import`: returns whether everything imported.
pub async fn run_cli(
    config: &Config,
    paths: &[PathBuf],
    server: Option<String>,
    progress: bool,
) -> Result<bool> {
    let target = match server {
        Some(base) => Target::Remote {
            client: reqwest::Client::new(),
            base,
        },
        None => {
            let store = crate::serve::open_store(config)?;
            Target::Local(crate::serve::service(config, store))
        }
    };
    let report = import_paths(&target, paths, progress).await?;
    for (f, why) in &report.skipped {
        eprintln!("skipped {}: {why}", f.display());
    }
    println!(
        "imported {} resources from {} files in {:.2}s ({:.0} resources/s); {} files failed, {} errors",
        report.resources,
        report.files - report.files_failed,
        report.elapsed.as_secs_f64(),
        report.rate(),
        report.files_failed,
        report.problems.len()
    );
    if !report.ok() {
        eprintln!("errors:");
        for p in &report.problems {
            eprintln!("  {p}");
        }
    }
    Ok(report.ok())
}

/// `salus validate`: returns whether every resource is valid.
pub fn validate_cli(paths: &[PathBuf]) -> Result<bool> {
    let files = collect_files(paths)?;
    let mut problems = vec![];
    let mut count = 0;
    for f in &files {
        let name = f.display().to_string();
        match parse_file(f) {
            Err(p) => problems.extend(p),
            Ok(Unit::Resources(items)) => {
                for (line, v) in items {
                    count += 1;
                    for is in validate_resource(&v).into_iter().filter(|i| i.is_error()) {
                        problems.push(Problem {
                            location: located(&name, line),
                            reason: format!(
                                "{}{}",
                                is.expression.map(|e| format!("{e}: ")).unwrap_or_default(),
                                is.diagnostics
                            ),
                        });
                    }
                }
            }
            Ok(Unit::Bundle(b)) => {
                count += 1;
                for is in validate_resource(&b).into_iter().filter(|i| i.is_error()) {
                    problems.push(Problem {
                        location: name.clone(),
                        reason: format!(
                            "{}{}",
                            is.expression.map(|e| format!("{e}: ")).unwrap_or_default(),
                            is.diagnostics
                        ),
                    });
                }
            }
        }
    }
    for p in &problems {
        eprintln!("{p}");
    }
    println!("{count} resources checked, {} problems", problems.len());
    Ok(problems.is_empty())
}
