//! `$export` (Bulk Data IG 2.0 export.html): the request, checked at kick-off, and the
//! job that writes NDJSON files from a store snapshot.

use crate::engine::JobHandle;
use crate::job::OutputFile;
use crate::output::SplitWriter;
use crate::{BulkConfig, JobError};
use salus_deid::{Anonymizer, Config as DeidConfig};
use salus_fhir::{defs, issue::operation_outcome, Issue, IssueCode};
use salus_search::parse::encode_page;
use salus_service::{parse_pairs, time, FhirError, FhirService};
use salus_store::{Page, SnapshotQuery, VersionRecord};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::atomic::Ordering;

/// `_outputFormat` values accepted (export.html#query-parameters); all mean NDJSON.
pub const OUTPUT_FORMATS: &[&str] = &["application/fhir+ndjson", "application/ndjson", "ndjson"];

/// Which kick-off endpoint was called.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExportLevel {
    /// `[base]/$export`
    System,
    /// `[base]/Patient/$export`
    Patient,
    /// `[base]/Group/[id]/$export`
    Group(String),
}

/// A checked `$export` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportRequest {
    pub level: ExportLevel,
    /// `_type`: empty = every type (that has data).
    pub types: Vec<String>,
    /// `_since` as microseconds.
    pub since: Option<i64>,
    /// `_until` as microseconds.
    pub until: Option<i64>,
    /// `_elements`: `Type.element` or `element`.
    pub elements: Vec<String>,
    /// `_typeFilter`: `Type?query`.
    pub type_filters: Vec<String>,
    /// `patient` (POST), or the Group's members: the patients whose compartments
    /// are exported (empty at Patient level: every patient).
    pub patients: Vec<String>,
    /// `_anonymizationConfig`: `safe-harbor` or a file name in the configured folder.
    pub anonymization: Option<String>,
}

fn bad(msg: impl Into<String>) -> FhirError {
    FhirError::invalid(msg)
}

/// Whether a type belongs to the Patient compartment (R4 compartmentdefinition-patient).
pub(crate) fn in_patient_compartment(rtype: &str) -> bool {
    rtype == "Patient" || defs::patient_compartment_params(rtype).is_some_and(|p| !p.is_empty())
}

/// The value of a Parameters part (`valueString`, `valueCode`, …, `valueReference`).
pub(crate) fn part_value(p: &Value) -> Option<String> {
    p.as_object()?
        .iter()
        .find(|(k, _)| k.starts_with("value"))
        .and_then(|(k, v)| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Object(o) if k == "valueReference" => o
                .get("reference")
                .and_then(Value::as_str)
                .map(str::to_string),
            _ => None,
        })
}

fn instant(name: &str, v: &str) -> Result<i64, FhirError> {
    time::parse_range(v)
        .map(|(low, _)| low)
        .ok_or_else(|| bad(format!("{name} '{v}' is not a FHIR instant")))
}

impl ExportRequest {
    /// Check a kick-off: query parameters (GET or POST) and, for POST, a Parameters
    /// body (export.html#bulk-data-kick-off-request). Groups are resolved by the caller.
    pub fn parse(
        level: ExportLevel,
        query: &[(String, String)],
        body: Option<&Value>,
        config: &BulkConfig,
    ) -> Result<ExportRequest, FhirError> {
        let mut pairs: Vec<(String, String)> = query.to_vec();
        if let Some(b) = body {
            if b.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
                return Err(bad("a POST kick-off body must be a Parameters resource"));
            }
            for p in b
                .get("parameter")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let name = p.get("name").and_then(Value::as_str).unwrap_or("");
                let value = part_value(p).ok_or_else(|| {
                    bad(format!(
                        "parameter '{name}' needs a value[x] (string, code, reference…)"
                    ))
                })?;
                pairs.push((name.to_string(), value));
            }
        }
        let mut req = ExportRequest {
            level,
            types: vec![],
            since: None,
            until: None,
            elements: vec![],
            type_filters: vec![],
            patients: vec![],
            anonymization: None,
        };
        let list = |v: &str| -> Vec<String> {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        };
        for (k, v) in &pairs {
            match k.as_str() {
                "_outputFormat" if !OUTPUT_FORMATS.contains(&v.as_str()) => {
                    return Err(FhirError::NotSupported(format!(
                        "_outputFormat '{v}': this server writes application/fhir+ndjson (also accepted: application/ndjson, ndjson)"
                    )));
                }
                "_since" => req.since = Some(instant("_since", v)?),
                "_until" => req.until = Some(instant("_until", v)?),
                "_type" => req.types.extend(list(v)),
                "_elements" => req.elements.extend(list(v)),
                "_typeFilter" => req.type_filters.extend(list(v)),
                "patient" => {
                    let id = v.strip_prefix("Patient/").ok_or_else(|| {
                        bad(format!("patient '{v}' must be a reference Patient/[id]"))
                    })?;
                    req.patients.push(id.to_string());
                }
                "includeAssociatedData" => {
                    return Err(FhirError::NotSupported(format!(
                        "includeAssociatedData '{v}' is not supported by this server"
                    )))
                }
                "_anonymizationConfig" => req.anonymization = Some(v.clone()),
                _ => {}
            }
        }
        if !req.patients.is_empty() && req.level == ExportLevel::System {
            return Err(bad(
                "the patient parameter applies to Patient/$export and Group/[id]/$export only",
            ));
        }
        for t in &req.types {
            if !defs::is_resource_type(t) {
                return Err(bad(format!("_type: '{t}' is not an R4 resource type")));
            }
            if req.level != ExportLevel::System && !in_patient_compartment(t) {
                return Err(bad(format!(
                    "_type: {t} is not in the Patient compartment, so a patient-level export has none"
                )));
            }
        }
        req.types.sort();
        req.types.dedup();
        for e in &req.elements {
            let (t, name) = match e.split_once('.') {
                Some((t, n)) => (Some(t), n),
                None => (None, e.as_str()),
            };
            if name.is_empty() || name.contains('.') {
                return Err(bad(format!(
                    "_elements '{e}': only top-level elements (Type.element or element)"
                )));
            }
            if let Some(t) = t {
                if !defs::is_resource_type(t) {
                    return Err(bad(format!("_elements '{e}': unknown resource type {t}")));
                }
            }
        }
        for f in &req.type_filters {
            let (t, q) = f.split_once('?').ok_or_else(|| {
                bad(format!(
                    "_typeFilter '{f}' must look like Type?search-parameters"
                ))
            })?;
            if !defs::is_resource_type(t) {
                return Err(bad(format!("_typeFilter '{f}': unknown resource type {t}")));
            }
            let opts = salus_search::Options {
                default_count: 100,
                max_count: 1000,
                strict: true,
            };
            salus_search::parse(t, &parse_pairs(q), &opts)
                .map_err(|e| bad(format!("_typeFilter '{f}': {e}")))?;
        }
        if let Some(a) = &req.anonymization {
            // Fails here, at kick-off, rather than in the job.
            anonymizer(a, config)?;
        }
        Ok(req)
    }
}

/// The de-identification engine an `_anonymizationConfig` names.
pub(crate) fn anonymizer(name: &str, config: &BulkConfig) -> Result<Anonymizer, FhirError> {
    if name == "safe-harbor" {
        return Ok(Anonymizer::safe_harbor());
    }
    let Some(dir) = &config.anonymization_dir else {
        return Err(bad(format!(
            "_anonymizationConfig '{name}': this server offers only 'safe-harbor' (no bulk.anonymization_dir configured)"
        )));
    };
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if !plain {
        return Err(bad(format!(
            "_anonymizationConfig '{name}': name a configuration file in the server's anonymization folder (letters, digits, '-', '_', '.')"
        )));
    }
    let path = dir.join(name);
    let text = std::fs::read_to_string(&path).map_err(|_| {
        bad(format!(
            "_anonymizationConfig '{name}': no such configuration"
        ))
    })?;
    let cfg = DeidConfig::from_json(&text)
        .map_err(|e| bad(format!("_anonymizationConfig '{name}': {e}")))?;
    Ok(Anonymizer::new(cfg))
}

/// The elements `_elements` keeps for `rtype`: `None` when none of them applies to it.
fn elements_for(rtype: &str, elements: &[String]) -> Option<Vec<String>> {
    let mut keep: Vec<String> = elements
        .iter()
        .filter_map(|e| match e.split_once('.') {
            Some((t, n)) if t == rtype => Some(n.to_string()),
            Some(_) => None,
            None => Some(e.clone()),
        })
        .collect();
    if keep.is_empty() {
        return None;
    }
    // Mandatory elements stay (export.html#query-parameters, `_elements`).
    if let Some(td) = defs::type_def(rtype) {
        for el in &td.elements {
            let Some((_, name)) = el.path.split_once('.') else {
                continue;
            };
            if el.min > 0 && !name.contains('.') {
                // A choice element stays as `name[x]`; `keep_choices` expands it.
                keep.push(name.to_string());
            }
        }
    }
    Some(keep)
}

/// Add the JSON names of kept choice elements (`medication[x]` → `medicationReference`).
fn keep_choices(resource: &Value, keep: &mut Vec<String>) {
    let bases: Vec<String> = keep
        .iter()
        .filter_map(|k| k.strip_suffix("[x]").map(str::to_string))
        .collect();
    if bases.is_empty() {
        return;
    }
    for key in resource.as_object().into_iter().flat_map(|o| o.keys()) {
        let key = key.trim_start_matches('_');
        for b in &bases {
            if key
                .strip_prefix(b.as_str())
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase()))
            {
                keep.push(key.to_string());
            }
        }
    }
}

/// What happens to each exported resource on its way to the file.
struct Transform {
    elements: Vec<String>,
    anonymizer: Option<Anonymizer>,
}

impl Transform {
    /// The line for a stored body, or an OperationOutcome when it cannot be produced.
    fn line(&self, rec: &VersionRecord, body: &str) -> Result<Vec<u8>, Value> {
        let elements = elements_for(&rec.rtype, &self.elements);
        if elements.is_none() && self.anonymizer.is_none() {
            return Ok(body.as_bytes().to_vec());
        }
        let outcome = |msg: String| {
            operation_outcome(&[
                Issue::error(IssueCode::Exception, msg).at(format!("{}/{}", rec.rtype, rec.id))
            ])
        };
        let mut v: Value = serde_json::from_str(body)
            .map_err(|e| outcome(format!("stored resource is not JSON: {e}")))?;
        if let Some(a) = &self.anonymizer {
            v = a.anonymize(v).map_err(|e| {
                outcome(format!(
                    "{}/{}: could not be de-identified and was left out: {e}",
                    rec.rtype, rec.id
                ))
            })?;
        }
        if let Some(mut els) = elements {
            keep_choices(&v, &mut els);
            salus_service::shape::apply(&mut v, None, Some(&els));
        }
        Ok(serde_json::to_vec(&v).expect("JSON values serialise"))
    }
}

/// Writers of one job: per type output, errors, deletions.
struct Sink {
    transform: Transform,
    errors: SplitWriter,
    deleted: SplitWriter,
    files: Vec<OutputFile>,
}

impl Sink {
    fn write(&mut self, out: &mut SplitWriter, rec: &VersionRecord) -> Result<(), JobError> {
        match &rec.body {
            None => {
                // export.html#response---complete-status, `deleted`: transaction Bundles
                // with DELETE entries.
                let b = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                    {"request": {"method": "DELETE", "url": format!("{}/{}", rec.rtype, rec.id)}}
                ]});
                self.deleted
                    .write_line(&serde_json::to_vec(&b).expect("JSON"))?;
            }
            Some(body) => match self.transform.line(rec, body) {
                Ok(line) => out.write_line(&line)?,
                Err(oo) => self
                    .errors
                    .write_line(&serde_json::to_vec(&oo).expect("JSON"))?,
            },
        }
        Ok(())
    }
}

/// Run an export job to completion (or until cancelled): fills the job's file lists.
pub(crate) async fn run(
    service: &FhirService,
    config: &BulkConfig,
    handle: &JobHandle,
) -> Result<(), JobError> {
    let (req, at_seq) = {
        let job = handle.job.lock().expect("job lock");
        (
            job.export
                .clone()
                .ok_or_else(|| JobError::Internal("export job without its request".into()))?,
            job.snapshot_seq,
        )
    };
    let dir = handle.dir.clone();
    let counts = service.store().counts().await?;
    let mut types: Vec<String> = if req.types.is_empty() {
        counts.iter().map(|(t, _)| t.clone()).collect()
    } else {
        req.types.clone()
    };
    if req.level != ExportLevel::System {
        types.retain(|t| in_patient_compartment(t));
    }
    // Patients first: a de-identifier learns their names before scrubbing the rest.
    types.sort_by_key(|t| (t != "Patient", t.clone()));
    let total: u64 = counts
        .iter()
        .filter(|(t, _)| types.contains(t))
        .map(|(_, n)| n)
        .sum();
    handle.set_progress(0, total, "");
    let anonymizer = match &req.anonymization {
        Some(a) => Some(anonymizer(a, config).map_err(|e| JobError::Input(e.to_string()))?),
        None => None,
    };
    let mut sink = Sink {
        transform: Transform {
            elements: req.elements.clone(),
            anonymizer,
        },
        errors: SplitWriter::new(
            &dir,
            "OperationOutcome",
            "errors",
            config.max_file_resources,
            config.max_file_bytes,
        ),
        deleted: SplitWriter::new(
            &dir,
            "Bundle",
            "deleted",
            config.max_file_resources,
            config.max_file_bytes,
        ),
        files: vec![],
    };
    let mut done = 0u64;
    for rtype in &types {
        if handle.cancelled.load(Ordering::Relaxed) {
            return Ok(());
        }
        // A caller's export holds only the types its grant lets it search.
        if !service.permits(salus_service::salus_access::Interaction::Search, rtype) {
            continue;
        }
        handle.set_progress(done, total, rtype);
        let mut out = SplitWriter::new(
            &dir,
            rtype,
            rtype,
            config.max_file_resources,
            config.max_file_bytes,
        );
        let filters: Vec<Vec<(String, String)>> = req
            .type_filters
            .iter()
            .filter_map(|f| f.split_once('?'))
            .filter(|(t, _)| t == rtype)
            .map(|(_, q)| parse_pairs(q))
            .collect();
        // A Group's members are the selection, even when there are none.
        let group = matches!(req.level, ExportLevel::Group(_));
        let selected = !filters.is_empty() || !req.patients.is_empty() || group;
        if !selected {
            // The whole type at the snapshot, by id.
            let mut q = SnapshotQuery::new(rtype.clone(), at_seq);
            q.since = req.since;
            q.until = req.until;
            q.include_deleted = req.since.is_some() && req.level == ExportLevel::System;
            q.limit = config.page_size;
            loop {
                let page = service.store().snapshot_scan(&q).await?;
                for rec in &page.records {
                    sink.write(&mut out, rec)?;
                }
                done += page.records.len() as u64;
                handle.set_progress(done, total, rtype);
                if handle.cancelled.load(Ordering::Relaxed) {
                    return Ok(());
                }
                match page.next {
                    Some(next) => q.after_id = Some(next),
                    None => break,
                }
                tokio::task::yield_now().await;
            }
        } else {
            // A selection (compartments, `_typeFilter`) found by searching the current
            // data, then read at the snapshot: resources created later are not in it
            // and changed ones are exported as they were (see docs/bulk.md).
            let filters = if filters.is_empty() {
                vec![vec![]]
            } else {
                filters
            };
            let patients: Vec<Option<&String>> = if req.patients.is_empty() && !group {
                vec![None]
            } else {
                req.patients.iter().map(Some).collect()
            };
            let mut seen: HashSet<String> = HashSet::new();
            for patient in &patients {
                for filter in &filters {
                    let mut token: Option<String> = None;
                    loop {
                        let mut pairs = filter.clone();
                        pairs.push(("_count".into(), config.page_size.to_string()));
                        if let Some(t) = &token {
                            pairs.push(("_page".into(), t.clone()));
                        }
                        let result = match patient {
                            Some(p) => {
                                service
                                    .search_compartment("Patient", p, rtype, &pairs, false)
                                    .await?
                            }
                            None => service.search(rtype, &pairs, false).await?,
                        };
                        let ids: Vec<String> = result
                            .page
                            .entries
                            .iter()
                            .filter(|r| seen.insert(r.id.clone()))
                            .map(|r| r.id.clone())
                            .collect();
                        if !ids.is_empty() {
                            let mut q = SnapshotQuery::new(rtype.clone(), at_seq);
                            q.since = req.since;
                            q.until = req.until;
                            q.limit = ids.len();
                            q.ids = Some(ids);
                            let page = service.store().snapshot_scan(&q).await?;
                            for rec in &page.records {
                                sink.write(&mut out, rec)?;
                            }
                            done += page.records.len() as u64;
                            handle.set_progress(done, total, rtype);
                        }
                        if handle.cancelled.load(Ordering::Relaxed) {
                            return Ok(());
                        }
                        match (&result.page.last_cursor, result.page.more) {
                            (Some(c), true) => token = Some(encode_page(&Page::After(c.clone()))),
                            _ => break,
                        }
                    }
                }
            }
        }
        sink.files.extend(out.finish()?);
    }
    let Sink {
        errors,
        deleted,
        files,
        ..
    } = sink;
    let errors = errors.finish()?;
    let deleted = deleted.finish()?;
    if let Some(copy) = &config.copy_to {
        let id = handle.job.lock().expect("job lock").id.clone();
        let target = copy.join(&id);
        std::fs::create_dir_all(&target)?;
        for f in files.iter().chain(&errors).chain(&deleted) {
            std::fs::copy(dir.join(&f.file), target.join(&f.file))?;
        }
    }
    let mut job = handle.job.lock().expect("job lock");
    job.output = files;
    job.error = errors;
    job.deleted = deleted;
    job.progress.done = done;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BulkConfig {
        BulkConfig::new("/nonexistent")
    }

    fn pairs(s: &str) -> Vec<(String, String)> {
        parse_pairs(s)
    }

    #[test]
    fn kick_off_parameters_are_checked() {
        let ok = ExportRequest::parse(
            ExportLevel::System,
            &pairs("_type=Patient,Observation&_since=2020-01-01T00:00:00Z&_outputFormat=ndjson&_typeFilter=Observation%3Fcategory%3Dlaboratory"),
            None,
            &cfg(),
        )
        .unwrap();
        assert_eq!(ok.types, vec!["Observation", "Patient"]);
        assert!(ok.since.is_some());
        assert_eq!(ok.type_filters, vec!["Observation?category=laboratory"]);
        for bad in [
            "_type=Nope",
            "_outputFormat=text/csv",
            "_since=yesterday",
            "_typeFilter=Observation",
            "_typeFilter=Observation%3Fnosuchparam%3D1",
            "_elements=name.given",
            "includeAssociatedData=LatestProvenanceResources",
            "_anonymizationConfig=../etc/passwd",
        ] {
            assert!(
                ExportRequest::parse(ExportLevel::System, &pairs(bad), None, &cfg()).is_err(),
                "{bad} must be refused"
            );
        }
        assert!(
            ExportRequest::parse(
                ExportLevel::Patient,
                &pairs("_type=Organization"),
                None,
                &cfg()
            )
            .is_err(),
            "not in the Patient compartment"
        );
    }

    #[test]
    fn post_parameters_and_patients() {
        let body = json!({"resourceType": "Parameters", "parameter": [
            {"name": "_type", "valueString": "Observation"},
            {"name": "patient", "valueReference": {"reference": "Patient/p1"}}
        ]});
        let r = ExportRequest::parse(ExportLevel::Patient, &[], Some(&body), &cfg()).unwrap();
        assert_eq!(r.patients, vec!["p1"]);
        assert!(ExportRequest::parse(ExportLevel::System, &[], Some(&body), &cfg()).is_err());
    }

    #[test]
    fn elements_keep_mandatory_ones() {
        let els =
            elements_for("Observation", &["Observation.subject".into(), "id".into()]).unwrap();
        assert!(els.contains(&"subject".to_string()));
        assert!(
            els.contains(&"status".to_string()),
            "Observation.status is 1..1"
        );
        assert!(
            els.contains(&"code".to_string()),
            "Observation.code is 1..1"
        );
        assert!(elements_for("Patient", &["Observation.subject".into()]).is_none());
    }
}
