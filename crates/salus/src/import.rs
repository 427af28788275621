//! `salus import` and `salus validate`: load FHIR Bundles (`.json`) and NDJSON files or
//! folders into a data dir or a running server.
//!
//! Each file is one unit, written in one transaction (locally): a bad file never
//! leaves part of itself behind. A Bundle is parsed and validated completely before it
//! is written; a large NDJSON file is read, validated and written in parts of
//! [`PART_LINES`] lines inside that one transaction (bounded memory, and the parts
//! overlap: one is read while the previous is indexed and stored), and a problem in
//! any part undoes the file. Against a server, files are validated here first and
//! sent as transaction Bundles.

use crate::config::Config;
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use salus_fhir::validate::validate_resource;
use salus_service::{FhirService, PreparedTransaction};
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
    /// Record a file that failed.
    fn fail(&mut self, bar: &ProgressBar, problems: Vec<Problem>) {
        self.files_failed += 1;
        for problem in &problems {
            bar.println(format!("error: {problem}"));
        }
        self.problems.extend(problems);
    }

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
            // Targets of references first (a Synthea export's Encounters and
            // MedicationRequests refer to `Practitioner?identifier=…`, which a transaction
            // must resolve), then by name.
            entries.sort_by_key(|e| (referenced_rank(e), e.clone()));
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

/// Where a file of a folder goes in the import order: resources that others commonly refer
/// to (by conditional reference too) come first; the type is the name's first part
/// (`Practitioner.000.ndjson`, `Organization-1.ndjson`).
fn referenced_rank(path: &Path) -> usize {
    const FIRST: &[&str] = &[
        "Organization",
        "Location",
        "Practitioner",
        "PractitionerRole",
        "Patient",
        "RelatedPerson",
        "Device",
        "Medication",
        "Encounter",
    ];
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let t = name.split(['.', '-', '_']).next().unwrap_or_default();
    FIRST.iter().position(|f| *f == t).unwrap_or(FIRST.len())
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
            match ndjson_line(&name, i + 1, line) {
                Some(Ok(v)) => items.push((i + 1, v)),
                Some(Err(p)) => problems.push(p),
                None => {}
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

/// One NDJSON line (1-based `n`): `None` when blank, else the resource or the problem
/// with its `file:line`.
fn ndjson_line(name: &str, n: usize, line: &str) -> Option<Result<Value, Problem>> {
    let line = line.trim();
    if line.is_empty() {
        return None;
    }
    let reason = match serde_json::from_str::<Value>(line) {
        Ok(v) if v.get("resourceType").and_then(Value::as_str).is_some() => return Some(Ok(v)),
        Ok(_) => "not a FHIR resource: no resourceType".to_string(),
        Err(e) => format!("invalid JSON: {e}"),
    };
    Some(Err(Problem {
        location: located(name, n),
        reason,
    }))
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

/// A file parsed and validated for a local import, ready to write.
pub enum Ready {
    /// Resources, validated.
    Resources(Vec<Value>),
    /// A transaction Bundle, parsed and validated.
    Transaction(PreparedTransaction),
}

fn problem(location: String, issue: salus_fhir::Issue) -> Problem {
    Problem {
        location,
        reason: match issue.expression {
            Some(e) => format!("{e}: {}", issue.diagnostics),
            None => issue.diagnostics,
        },
    }
}

/// The part of a local import that needs no store (runs ahead on its own thread).
pub fn prepare_local(svc: &FhirService, name: &str, unit: Unit) -> Result<Ready, Vec<Problem>> {
    match unit {
        Unit::Resources(items) => {
            let (lines, values): (Vec<usize>, Vec<Value>) = items.into_iter().unzip();
            match svc.check_resources(&values) {
                Ok(()) => Ok(Ready::Resources(values)),
                Err(list) => Err(list
                    .into_iter()
                    .flat_map(|(i, issues)| {
                        let loc = located(name, lines[i]);
                        issues.into_iter().map(move |is| problem(loc.clone(), is))
                    })
                    .collect()),
            }
        }
        Unit::Bundle(b) => svc.prepare_bundle(b).map(Ready::Transaction).map_err(|e| {
            e.issues()
                .into_iter()
                .map(|is| problem(name.to_string(), is))
                .collect()
        }),
    }
}

/// Write a prepared file into the open batch transaction `tx`.
async fn apply_local(
    svc: &FhirService,
    tx: &mut dyn StoreTx,
    name: &str,
    ready: Ready,
) -> Result<usize, Vec<Problem>> {
    let failed = |e: salus_service::FhirError| -> Vec<Problem> {
        e.issues()
            .into_iter()
            .map(|is| problem(name.to_string(), is))
            .collect()
    };
    match ready {
        Ready::Resources(values) => svc.checked_resources_into(tx, values).await.map_err(failed),
        Ready::Transaction(t) => svc.apply_prepared(tx, t).await.map_err(failed),
    }
}

/// Send one parsed unit to a server (validated here first, as transaction Bundles).
async fn send_unit(
    client: &reqwest::Client,
    base: &str,
    name: &str,
    unit: Unit,
) -> Result<usize, Vec<Problem>> {
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
                                Some(id) => {
                                    json!({"method": "PUT", "url": format!("{rtype}/{id}")})
                                }
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
                        for is in validate_resource(r).into_iter().filter(|i| i.is_error()) {
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
    // Files are read, parsed and (locally) validated on their own thread, a few files
    // ahead of the writer, so that work overlaps with the database's.
    let (sender, mut steps) = tokio::sync::mpsc::channel::<Step>(2);
    let local = match target {
        Target::Local(svc) => Some(svc.clone()),
        Target::Remote { .. } => None,
    };
    let reader = {
        let files = files.clone();
        let explicit: Vec<PathBuf> = explicit.iter().map(|p| (*p).clone()).collect();
        std::thread::Builder::new()
            .name("salus-import-reader".into())
            .spawn(move || {
                for f in files {
                    let size = std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
                    let skip = !explicit.contains(&f) && !looks_like_fhir(&f);
                    if let (false, true, Some(svc)) = (skip, is_ndjson(&f), &local) {
                        if stream_ndjson(svc, &f, &sender).is_err() {
                            break; // the writer stopped
                        }
                        continue;
                    }
                    let work = if skip {
                        Work::Skip
                    } else {
                        let name = f.display().to_string();
                        match (parse_file(&f), &local) {
                            (Err(p), _) => Work::Failed(p),
                            (Ok(unit), Some(svc)) => match prepare_local(svc, &name, unit) {
                                Ok(ready) => Work::Ready(ready),
                                Err(p) => Work::Failed(p),
                            },
                            (Ok(unit), None) => Work::Parsed(unit),
                        }
                    };
                    if sender
                        .blocking_send(Step {
                            file: f,
                            size,
                            work,
                            first: true,
                            last: true,
                        })
                        .is_err()
                    {
                        break; // the writer stopped
                    }
                }
            })
            .context("cannot start the import reader thread")?
    };
    // Locally, files are written in batches: one store transaction holds up to
    // BATCH_FILES files, so commits stay few. Files were validated ahead, so a write
    // rarely fails; when one does (or the commit does), the batch is rolled back and
    // its files are written again one by one, each in its own savepoint, so that only
    // the bad file is left out. (A savepoint for every file would cost about a quarter
    // of the import time: SQLite copies each page a unit touches.)
    let mut batch: Option<Box<dyn StoreTx>> = None;
    let mut batch_files: Vec<PathBuf> = vec![];
    let mut pending = 0usize;
    // A large NDJSON file arrives in parts (see `stream_ndjson`), in order, all written
    // into the open batch: `partial` is how many resources the current file's parts
    // written so far hold (none before its first part); `dropped`: a part of the
    // current file failed to write, so its remaining parts are ignored.
    let mut partial: Option<usize> = None;
    let mut dropped = false;
    while let Some(Step {
        file: f,
        size,
        work,
        first,
        last,
    }) = steps.recv().await
    {
        if let Work::Skip = work {
            report
                .skipped
                .push((f.clone(), "not FHIR data (no resourceType found)".into()));
            bar.inc(size);
            continue;
        }
        if first {
            report.files += 1;
            dropped = false;
            bar.set_message(
                f.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            );
        }
        let name = f.display().to_string();
        if dropped {
            // A part of this file failed to write and the whole file was replayed
            // (which reported any problem in it): the rest of its parts are done.
            bar.inc(size);
            continue;
        }
        let in_batch = !first && partial.is_some();
        match (work, target) {
            (Work::Failed(p), Target::Local(svc)) if in_batch => {
                // Earlier parts of this file are in the batch: undo the batch and keep
                // only the files that were complete.
                drop(batch.take());
                partial = None;
                replay(svc, &batch_files, &mut report, &bar).await?;
                batch_files.clear();
                pending = 0;
                report.fail(&bar, p);
            }
            (Work::Failed(p), _) => report.fail(&bar, p),
            (Work::Ready(ready), Target::Local(svc)) => {
                let tx = match batch.as_mut() {
                    Some(tx) => tx,
                    None => batch.insert(svc.store().begin().await?),
                };
                let applied = apply_local(svc, tx.as_mut(), &name, ready).await;
                let before = partial.take().filter(|_| !first).unwrap_or(0);
                match applied {
                    Ok(n) if !last => partial = Some(before + n),
                    Ok(n) => {
                        batch_files.push(f.clone());
                        let n = before + n;
                        if batch_files.len() < BATCH_FILES && pending + n < BATCH_RESOURCES {
                            pending += n;
                        } else {
                            let tx = batch.take().expect("open batch");
                            match tx.commit().await {
                                Ok(()) => report.resources += pending + n,
                                Err(_) => replay(svc, &batch_files, &mut report, &bar).await?,
                            }
                            batch_files.clear();
                            pending = 0;
                        }
                    }
                    Err(_) => {
                        // The failure may be a queued write of an earlier file: write
                        // every file of the batch again, this one whole (read anew),
                        // each in its own savepoint; the replay reports what fails.
                        drop(batch.take());
                        batch_files.push(f.clone());
                        replay(svc, &batch_files, &mut report, &bar).await?;
                        batch_files.clear();
                        pending = 0;
                        dropped = !last;
                    }
                }
            }
            (Work::Parsed(unit), Target::Remote { client, base }) => {
                match send_unit(client, base, &name, unit).await {
                    Ok(n) => report.resources += n,
                    Err(p) => report.fail(&bar, p),
                }
            }
            (Work::Ready(_), Target::Remote { .. }) | (Work::Parsed(_), Target::Local(_)) => {
                anyhow::bail!("internal error: {name} was prepared for another kind of target")
            }
            (Work::Skip, _) => {}
        }
        bar.inc(size);
    }
    if let Some(tx) = batch.take() {
        match tx.commit().await {
            Ok(()) => report.resources += pending,
            Err(_) => {
                if let Target::Local(svc) = target {
                    replay(svc, &batch_files, &mut report, &bar).await?;
                }
            }
        }
    }
    if reader.join().is_err() {
        anyhow::bail!("the import reader thread panicked");
    }
    bar.finish_and_clear();
    report.elapsed = start.elapsed();
    Ok(report)
}

/// Write `files` again, each in its own savepoint, in one transaction: after a batch
/// failed, this keeps every good file and reports each bad one.
async fn replay(
    svc: &FhirService,
    files: &[PathBuf],
    report: &mut Report,
    bar: &ProgressBar,
) -> Result<()> {
    let mut tx = svc.store().begin().await?;
    let mut written = 0;
    for f in files {
        let name = f.display().to_string();
        let ready = match parse_file(f).and_then(|unit| prepare_local(svc, &name, unit)) {
            Ok(ready) => ready,
            Err(p) => {
                report.fail(bar, p);
                continue;
            }
        };
        tx.savepoint().await?;
        let result = match apply_local(svc, tx.as_mut(), &name, ready).await {
            // A write the store queued may fail late: release reports it.
            Ok(n) => tx.release_savepoint().await.map(|()| n).map_err(|e| {
                vec![Problem {
                    location: name.clone(),
                    reason: e.to_string(),
                }]
            }),
            Err(p) => Err(p),
        };
        match result {
            Ok(n) => written += n,
            Err(p) => {
                tx.rollback_to_savepoint().await?;
                report.fail(bar, p);
            }
        }
    }
    tx.commit().await?;
    report.resources += written;
    Ok(())
}

/// One input file, or one part of a large NDJSON file, as the reader thread hands it
/// to the writer.
struct Step {
    file: PathBuf,
    /// Bytes of the file this step covers (for the progress bar).
    size: u64,
    work: Work,
    /// The file's first step.
    first: bool,
    /// The file's last step: after it the file is complete.
    last: bool,
}

/// NDJSON lines per part of a local import: a large file is read, validated and
/// written part by part (all in the same transaction), so memory stays bounded and
/// reading, indexing and writing overlap within one file.
const PART_LINES: usize = 2_000;

/// Read, parse and validate a local NDJSON file in parts of [`PART_LINES`] and send
/// each valid part as it is ready. After the first problem no more parts are sent,
/// but the rest is still checked, so the final `Failed` step lists every problem of
/// the file with its line. `Err`: the writer stopped.
fn stream_ndjson(
    svc: &FhirService,
    path: &Path,
    sender: &tokio::sync::mpsc::Sender<Step>,
) -> std::result::Result<(), ()> {
    use std::io::BufRead;
    let name = path.display().to_string();
    let first = std::cell::Cell::new(true);
    let send = |size: u64, work: Work, last: bool| {
        sender
            .blocking_send(Step {
                file: path.to_path_buf(),
                size,
                work,
                first: first.replace(false),
                last,
            })
            .map_err(|_| ())
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => {
            let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            let p = vec![Problem {
                location: name.clone(),
                reason: format!("cannot read: {e}"),
            }];
            return send(size, Work::Failed(p), true);
        }
    };
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut problems: Vec<Problem> = vec![];
    let mut items: Vec<(usize, Value)> = vec![];
    let mut bytes = 0u64;
    let mut line = String::new();
    let mut n = 0usize;
    loop {
        line.clear();
        let read = match reader.read_line(&mut line) {
            Ok(read) => read,
            Err(e) => {
                problems.push(Problem {
                    location: located(&name, n + 1),
                    reason: format!("cannot read: {e}"),
                });
                0
            }
        };
        let eof = read == 0;
        if !eof {
            n += 1;
            bytes += read as u64;
            match ndjson_line(&name, n, &line) {
                Some(Ok(v)) => items.push((n, v)),
                Some(Err(p)) => problems.push(p),
                None => {}
            }
        }
        if items.len() >= PART_LINES || (eof && problems.is_empty()) {
            let part = std::mem::take(&mut items);
            match prepare_local(svc, &name, Unit::Resources(part)) {
                Ok(ready) if problems.is_empty() => {
                    send(std::mem::take(&mut bytes), Work::Ready(ready), eof)?;
                }
                Ok(_) => {}
                Err(p) => problems.extend(p),
            }
        }
        if eof {
            break;
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    if !items.is_empty() {
        if let Err(p) = prepare_local(svc, &name, Unit::Resources(items)) {
            problems.extend(p);
        }
    }
    problems.sort_by_key(|p| line_of(&p.location));
    send(bytes, Work::Failed(problems), true)
}

/// The line number at the end of a `file:line` location (0 without one), for ordering.
fn line_of(location: &str) -> usize {
    location
        .rsplit_once(':')
        .and_then(|(_, l)| l.parse().ok())
        .unwrap_or(0)
}

enum Work {
    /// Not FHIR data: skipped.
    Skip,
    /// Unreadable, unparsable or invalid.
    Failed(Vec<Problem>),
    /// Parsed, for a server (which validates).
    Parsed(Unit),
    /// Parsed and validated, for a local store.
    Ready(Ready),
}

/// `salus import`: returns whether everything imported.
pub async fn run_cli(
    config: &Config,
    paths: &[PathBuf],
    server: Option<String>,
    progress: bool,
) -> Result<bool> {
    let mut backend = None;
    let target = match server {
        Some(base) => Target::Remote {
            client: reqwest::Client::new(),
            base,
        },
        None => {
            // the embedded store, or PostgreSQL when `storage.database` names one
            let b = backend.insert(crate::serve::Backend::open(config).await?);
            Target::Local(crate::serve::service_over(config, b.store()))
        }
    };
    let report = import_paths(&target, paths, progress).await?;
    if let Some(b) = &backend {
        // PostgreSQL: plan the searches that follow from the loaded data's statistics
        b.store().analyze().await?;
        b.close().await?;
    }
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
