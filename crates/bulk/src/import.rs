//! `$import` (Bulk Data IG import, "ping and pull" draft): the request, checked at
//! kick-off, and the job that reads each NDJSON input and writes it through the
//! service, with one error file of OperationOutcomes per input.

use crate::engine::JobHandle;
use crate::export::part_value;
use crate::job::OutputFile;
use crate::output::SplitWriter;
use crate::{BulkConfig, JobError};
use salus_fhir::{defs, issue::operation_outcome, Issue, IssueCode};
use salus_service::{FhirError, FhirService};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

/// How inputs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImportMode {
    /// Each resource becomes the next version of its id (ids kept).
    InitialLoad,
    /// Ids, `meta.versionId` and `meta.lastUpdated` are kept; versions already stored
    /// are skipped.
    IncrementalLoad,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportInput {
    /// The resource type every line must have.
    pub rtype: String,
    /// As given (`http://…`, `file://…` or a server path).
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportRequest {
    pub input_source: Option<String>,
    pub mode: ImportMode,
    pub inputs: Vec<ImportInput>,
}

fn bad(msg: impl Into<String>) -> FhirError {
    FhirError::invalid(msg)
}

/// Where an input is read from.
enum Location {
    Http(String),
    File(PathBuf),
}

/// Check an input location: `http://` URLs, or `file://` URLs and absolute paths inside
/// one of the configured import folders.
fn locate(url: &str, config: &BulkConfig) -> Result<Location, FhirError> {
    if url.starts_with("http://") {
        return Ok(Location::Http(url.to_string()));
    }
    if url.starts_with("https://") {
        return Err(FhirError::NotSupported(format!(
            "input url '{url}': this server fetches http:// inputs (it is built without TLS); serve the file over http:// or place it in an import folder"
        )));
    }
    let path = match url.strip_prefix("file://") {
        Some(p) => PathBuf::from(p),
        None if url.starts_with('/') => PathBuf::from(url),
        None => {
            return Err(bad(format!(
                "input url '{url}': use an http:// URL, a file:// URL or an absolute server path"
            )))
        }
    };
    if config.import_dirs.is_empty() {
        return Err(bad(format!(
            "input url '{url}': this server reads no local files (no bulk.import_dirs configured)"
        )));
    }
    let real = path
        .canonicalize()
        .map_err(|_| bad(format!("input url '{url}': no such file")))?;
    let allowed = config
        .import_dirs
        .iter()
        .filter_map(|d| d.canonicalize().ok())
        .any(|d| real.starts_with(d));
    if !allowed || !real.is_file() {
        return Err(bad(format!(
            "input url '{url}': not a file inside an allowed import folder"
        )));
    }
    Ok(Location::File(real))
}

impl ImportRequest {
    /// Check a kick-off body: a Parameters resource (`inputFormat`, `inputSource`,
    /// `mode`, `input` with `type` and `url` parts), or the draft's JSON manifest
    /// (`{"inputFormat", "inputSource", "input": [{"type", "url"}]}`).
    pub fn parse(body: &Value, config: &BulkConfig) -> Result<ImportRequest, FhirError> {
        let mut format = None;
        let mut req = ImportRequest {
            input_source: None,
            mode: ImportMode::InitialLoad,
            inputs: vec![],
        };
        let mut mode = None;
        if body.get("resourceType").and_then(Value::as_str) == Some("Parameters") {
            for p in body
                .get("parameter")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let name = p.get("name").and_then(Value::as_str).unwrap_or("");
                match name {
                    "inputFormat" => format = part_value(p),
                    "inputSource" => req.input_source = part_value(p),
                    "mode" => mode = part_value(p),
                    "input" => {
                        let (mut t, mut u) = (None, None);
                        for part in p
                            .get("part")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                        {
                            match part.get("name").and_then(Value::as_str) {
                                Some("type") => t = part_value(part),
                                Some("url") => u = part_value(part),
                                _ => {}
                            }
                        }
                        req.inputs.push(ImportInput {
                            rtype: t.ok_or_else(|| bad("an input needs a 'type' part"))?,
                            url: u.ok_or_else(|| bad("an input needs a 'url' part"))?,
                        });
                    }
                    _ => {}
                }
            }
        } else if body.get("input").is_some() {
            format = body
                .get("inputFormat")
                .and_then(Value::as_str)
                .map(str::to_string);
            req.input_source = body
                .get("inputSource")
                .and_then(Value::as_str)
                .map(str::to_string);
            mode = body.get("mode").and_then(Value::as_str).map(str::to_string);
            for i in body["input"].as_array().into_iter().flatten() {
                req.inputs.push(ImportInput {
                    rtype: i["type"]
                        .as_str()
                        .ok_or_else(|| bad("an input needs a 'type'"))?
                        .to_string(),
                    url: i["url"]
                        .as_str()
                        .ok_or_else(|| bad("an input needs a 'url'"))?
                        .to_string(),
                });
            }
        } else {
            return Err(bad(
                "an $import body is a Parameters resource with inputFormat, mode and input parts",
            ));
        }
        if let Some(f) = &format {
            if !crate::OUTPUT_FORMATS.contains(&f.as_str()) {
                return Err(FhirError::NotSupported(format!(
                    "inputFormat '{f}': this server reads application/fhir+ndjson"
                )));
            }
        }
        req.mode = match mode.as_deref() {
            None | Some("InitialLoad") => ImportMode::InitialLoad,
            Some("IncrementalLoad") => ImportMode::IncrementalLoad,
            Some(m) => {
                return Err(bad(format!(
                    "mode '{m}': use InitialLoad or IncrementalLoad"
                )))
            }
        };
        if req.inputs.is_empty() {
            return Err(bad("an $import needs at least one input"));
        }
        for i in &req.inputs {
            if !defs::is_resource_type(&i.rtype) {
                return Err(bad(format!(
                    "input type '{}' is not an R4 resource type",
                    i.rtype
                )));
            }
            locate(&i.url, config)?;
        }
        Ok(req)
    }
}

/// Fetch an http:// input into the job folder chunk by chunk (never whole in memory).
async fn download(url: &str, to: &Path) -> Result<(), JobError> {
    let mut resp = reqwest::get(url)
        .await
        .map_err(|e| JobError::Input(format!("input {url}: {e}")))?;
    if !resp.status().is_success() {
        return Err(JobError::Input(format!(
            "input {url}: the server answered {}",
            resp.status()
        )));
    }
    let mut f = std::io::BufWriter::new(std::fs::File::create(to)?);
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| JobError::Input(format!("input {url}: {e}")))?
    {
        f.write_all(&chunk)?;
    }
    f.flush()?;
    Ok(())
}

fn error_line(line: usize, issues: &[Issue]) -> Vec<u8> {
    let issues: Vec<Issue> = issues
        .iter()
        .map(|i| {
            let mut i = i.clone();
            i.diagnostics = format!("line {line}: {}", i.diagnostics);
            i
        })
        .collect();
    serde_json::to_vec(&operation_outcome(&issues)).expect("JSON")
}

/// A batch read and validated on the reader thread, ready to write.
struct Prepared {
    /// Input line of each value.
    lines: Vec<usize>,
    values: Vec<Value>,
    /// OperationOutcome lines for the lines left out.
    errors: Vec<Vec<u8>>,
    /// Lines read for this batch (for progress).
    read: u64,
}

/// Read, parse and validate an input, `batch` lines at a time, on a blocking thread, so
/// this CPU work overlaps with the writes of the previous batch.
fn read_input(
    service: FhirService,
    path: PathBuf,
    rtype: String,
    url: String,
    batch: usize,
    out: tokio::sync::mpsc::Sender<Result<Prepared, JobError>>,
) {
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) => {
            let _ = out.blocking_send(Err(JobError::Input(format!("input {url}: {e}"))));
            return;
        }
    };
    let reader = BufReader::with_capacity(256 * 1024, file);
    let mut cur = Prepared {
        lines: vec![],
        values: vec![],
        errors: vec![],
        read: 0,
    };
    let finish = |mut p: Prepared| -> Prepared {
        if let Err(problems) = service.check_resources(&p.values) {
            let bad: std::collections::HashSet<usize> = problems.iter().map(|(i, _)| *i).collect();
            for (i, issues) in &problems {
                p.errors.push(error_line(p.lines[*i], issues));
            }
            let keep: Vec<bool> = (0..p.values.len()).map(|i| !bad.contains(&i)).collect();
            let mut k = keep.iter();
            p.lines.retain(|_| *k.next().expect("same length"));
            let mut k = keep.iter();
            p.values.retain(|_| *k.next().expect("same length"));
        }
        p
    };
    for (i, line) in reader.split(b'\n').enumerate() {
        let line_no = i + 1;
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                let _ = out.blocking_send(Err(JobError::Input(format!("input {url}: {e}"))));
                return;
            }
        };
        cur.read += 1;
        let text = String::from_utf8_lossy(&line);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(text) {
            Err(e) => cur.errors.push(error_line(
                line_no,
                &[Issue::error(IssueCode::Structure, format!("not JSON: {e}"))],
            )),
            Ok(v) if v.get("resourceType").and_then(Value::as_str) != Some(&rtype) => {
                cur.errors.push(error_line(
                    line_no,
                    &[Issue::error(
                        IssueCode::Invalid,
                        format!(
                            "resourceType {} in an input declared as {rtype}",
                            v.get("resourceType").unwrap_or(&Value::Null)
                        ),
                    )],
                ))
            }
            Ok(v) => {
                cur.lines.push(line_no);
                cur.values.push(v);
            }
        }
        if cur.values.len() >= batch {
            let next = Prepared {
                lines: vec![],
                values: vec![],
                errors: vec![],
                read: 0,
            };
            if out
                .blocking_send(Ok(finish(std::mem::replace(&mut cur, next))))
                .is_err()
            {
                return; // the job stopped
            }
        }
    }
    let _ = out.blocking_send(Ok(finish(cur)));
}

/// Write one validated batch; returns how many resources were stored.
async fn write_batch(
    service: &FhirService,
    mode: ImportMode,
    p: Prepared,
    errors: &mut SplitWriter,
) -> Result<u64, JobError> {
    for e in &p.errors {
        errors.write_line(e)?;
    }
    if p.values.is_empty() {
        return Ok(0);
    }
    let (first, last) = (p.lines[0], p.lines[p.lines.len() - 1]);
    let values = p.values;
    let n = values.len() as u64;
    let result = async {
        let mut tx = service.store().begin_bulk().await?;
        let written = match mode {
            ImportMode::InitialLoad => service.checked_resources_into(tx.as_mut(), values).await?,
            ImportMode::IncrementalLoad => {
                service.checked_versioned_into(tx.as_mut(), values).await?
            }
        };
        tx.commit().await?;
        Ok::<_, FhirError>(written as u64)
    }
    .await;
    match result {
        Ok(w) => Ok(w),
        Err(e @ (FhirError::Internal(_) | FhirError::Busy(_))) => Err(JobError::Internal(format!(
            "writing lines {first}-{last}: {e}"
        ))),
        Err(e) => {
            let mut issues = e.issues();
            issues.push(Issue::error(
                IssueCode::Processing,
                format!("{n} resources of lines {first}-{last} were not imported"),
            ));
            errors.write_line(&error_line(first, &issues))?;
            Ok(0)
        }
    }
}

/// Run an import job to completion (or until cancelled).
pub(crate) async fn run(
    service: &FhirService,
    config: &BulkConfig,
    handle: &JobHandle,
) -> Result<(), JobError> {
    let req = handle
        .job
        .lock()
        .expect("job lock")
        .import
        .clone()
        .ok_or_else(|| JobError::Internal("import job without its request".into()))?;
    let dir = handle.dir.clone();
    let mut outputs: Vec<OutputFile> = vec![];
    let mut error_files: Vec<OutputFile> = vec![];
    let mut done = 0u64;
    for (n, input) in req.inputs.iter().enumerate() {
        handle.set_progress(done, 0, &input.url);
        let path = match locate(&input.url, config).map_err(|e| JobError::Input(e.to_string()))? {
            Location::File(p) => p,
            Location::Http(u) => {
                let to = dir.join(format!("input-{}.download", n + 1));
                download(&u, &to).await?;
                to
            }
        };
        let mut errors = SplitWriter::new(
            &dir,
            "OperationOutcome",
            &format!("errors-input-{}", n + 1),
            config.max_file_resources,
            config.max_file_bytes,
        )
        .for_input(&input.url);
        let (tx, mut rx) = tokio::sync::mpsc::channel(2);
        let reader = {
            let (service, path) = (service.clone(), path.clone());
            let (rtype, url, batch) = (input.rtype.clone(), input.url.clone(), config.import_batch);
            tokio::task::spawn_blocking(move || read_input(service, path, rtype, url, batch, tx))
        };
        let mut count = 0u64;
        while let Some(prepared) = rx.recv().await {
            let prepared = prepared?;
            done += prepared.read;
            count += write_batch(service, req.mode, prepared, &mut errors).await?;
            handle.set_progress(done, 0, &input.url);
            if handle.cancelled.load(Ordering::Relaxed) {
                return Ok(());
            }
        }
        reader
            .await
            .map_err(|e| JobError::Internal(format!("input reader: {e}")))?;
        outputs.push(OutputFile {
            rtype: input.rtype.clone(),
            file: String::new(),
            count,
            bytes: 0,
            input_url: Some(input.url.clone()),
        });
        error_files.extend(errors.finish()?);
        if path.starts_with(&dir) {
            let _ = std::fs::remove_file(&path);
        }
    }
    // searches that follow are planned from fresh statistics (Store::analyze)
    service
        .store()
        .analyze()
        .await
        .map_err(|e| JobError::Internal(format!("updating planner statistics: {e}")))?;
    let mut job = handle.job.lock().expect("job lock");
    job.output = outputs;
    job.error = error_files;
    job.progress.done = done;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn locations_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("Patient.ndjson");
        std::fs::write(&f, "").unwrap();
        let mut cfg = BulkConfig::new(dir.path().join("jobs"));
        assert!(locate("http://example.org/x.ndjson", &cfg).is_ok());
        assert!(locate("https://example.org/x.ndjson", &cfg).is_err());
        assert!(locate("ftp://example.org/x", &cfg).is_err());
        assert!(
            locate(f.to_str().unwrap(), &cfg).is_err(),
            "no import folder configured"
        );
        cfg.import_dirs = vec![dir.path().to_path_buf()];
        assert!(locate(&format!("file://{}", f.display()), &cfg).is_ok());
        assert!(locate("/etc/passwd", &cfg).is_err(), "outside the folders");
        let dotdot = format!("{}/../../etc/passwd", dir.path().display());
        assert!(locate(&dotdot, &cfg).is_err(), "no escape through ..");
    }

    #[test]
    fn parameters_body() {
        let cfg = BulkConfig::new("/nonexistent");
        let body = json!({"resourceType": "Parameters", "parameter": [
            {"name": "inputFormat", "valueCode": "application/fhir+ndjson"},
            {"name": "mode", "valueCode": "IncrementalLoad"},
            {"name": "input", "part": [
                {"name": "type", "valueCode": "Patient"},
                {"name": "url", "valueUri": "http://h/Patient.ndjson"}]}
        ]});
        let r = ImportRequest::parse(&body, &cfg).unwrap();
        assert_eq!(r.mode, ImportMode::IncrementalLoad);
        assert_eq!(r.inputs[0].rtype, "Patient");
        let mut wrong = body.clone();
        wrong["parameter"][1]["valueCode"] = json!("Sometimes");
        assert!(ImportRequest::parse(&wrong, &cfg).is_err());
        let mut wrong = body.clone();
        wrong["parameter"][0]["valueCode"] = json!("text/csv");
        assert!(ImportRequest::parse(&wrong, &cfg).is_err());
        assert!(ImportRequest::parse(&json!({"resourceType": "Patient"}), &cfg).is_err());
    }
}
