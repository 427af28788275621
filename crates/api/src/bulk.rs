//! Bulk Data Access IG 2.0 over HTTP: `$export` kick-off (system, Patient, Group),
//! status polling and cancellation, file download, `$import`, and
//! `Patient/[id]/$everything`. Only translation: the jobs live in `salus-bulk`.
//!
//! Authorization: the auth guard (`auth.rs`) inserts a [`BulkCaller`] for every
//! authenticated request. Kick-off records it as the job's owner and runs the job on the
//! caller's scoped service (the access policy applies to every resource the job reads
//! or writes); status, cancel and download go through [`authorize`], the one place to
//! decide who may see a job.

use crate::auth::Scoped;
use crate::error::ApiError;
use crate::handlers::base_url;
use crate::negotiate::{header_value, json_response, read_json, response_format, Format};
use crate::AppState;
use axum::body::Body;
use axum::extract::{Path, RawQuery};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use salus_bulk::{
    everything, BulkEngine, EverythingRequest, ExportLevel, ExportRequest, ImportRequest, Job,
    JobKind, JobStatus,
};
use salus_fhir::{issue::operation_outcome, Issue};
use salus_service::{parse_pairs, FhirError};
use serde_json::{json, Value};

type ApiResult = Result<Response, ApiError>;

/// Who is calling, as an authentication layer established it (a request extension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkCaller {
    /// A stable subject identifier (user or client id).
    pub subject: String,
}

/// May `caller` see `job`? A job kicked off by an identified caller is visible to that
/// caller only (others get 404, as if it did not exist); with no authentication both
/// are `None`. The authorization layer refines this (scopes, admin roles).
fn authorize(caller: Option<&BulkCaller>, job: &Job) -> Result<(), ApiError> {
    match (&job.owner, caller) {
        (None, _) => Ok(()),
        (Some(owner), Some(c)) if *owner == c.subject => Ok(()),
        _ => Err(FhirError::NotFound(format!("bulk job {}", job.id)).into()),
    }
}

fn engine(state: &AppState) -> Result<&BulkEngine, ApiError> {
    state.bulk.as_deref().ok_or_else(|| {
        FhirError::NotSupported("bulk data operations are not enabled on this server".into()).into()
    })
}

/// Kick-off needs `Prefer: respond-async` (export.html#headers).
fn require_async(headers: &HeaderMap) -> Result<(), ApiError> {
    let ok = headers.get_all("prefer").iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split([',', ';']).any(|p| p.trim() == "respond-async"))
    });
    if ok {
        Ok(())
    } else {
        Err(FhirError::invalid(
            "bulk data kick-off requests need the header 'Prefer: respond-async'",
        )
        .into())
    }
}

fn request_url(base: &str, path: &str, q: &Option<String>) -> String {
    match q {
        Some(q) if !q.is_empty() => format!("{base}{path}?{q}"),
        _ => format!("{base}{path}"),
    }
}

fn accepted(status_url: String, what: &str) -> Response {
    let oo = operation_outcome(&[Issue::information(format!(
        "{what} accepted; poll {status_url}"
    ))]);
    let mut resp = json_response(StatusCode::ACCEPTED, &oo, Format::default());
    resp.headers_mut()
        .insert(header::CONTENT_LOCATION, header_value(&status_url));
    resp
}

async fn kick_off(
    state: &AppState,
    headers: &HeaderMap,
    method: &Method,
    q: &Option<String>,
    body: Body,
    level: ExportLevel,
    caller: Option<&BulkCaller>,
) -> ApiResult {
    let engine = engine(state)?;
    let path = match &level {
        ExportLevel::System => "/$export".to_string(),
        ExportLevel::Patient => "/Patient/$export".to_string(),
        ExportLevel::Group(id) => format!("/Group/{id}/$export"),
    };
    let pairs = q.as_deref().map(parse_pairs).unwrap_or_default();
    response_format(headers, &[])?;
    require_async(headers)?;
    let body = if method == Method::POST {
        Some(read_json(headers, body, state.config.max_body_bytes, false).await?)
    } else {
        None
    };
    let mut req = ExportRequest::parse(level, &pairs, body.as_ref(), engine.config())?;
    let base = base_url(state, headers);
    // An analyst sees data only de-identified: the job reads with the server's rights
    // and always writes through an anonymization config (Safe Harbor unless one is named).
    let deidentified_only = state.service.access().principal().is_some_and(|p| {
        state.service.policy().has_capability(
            p,
            salus_service::salus_access::Capability::DeidentifiedExport,
        )
    });
    if deidentified_only {
        req.anonymization
            .get_or_insert_with(|| "safe-harbor".to_string());
    }
    let reading_as = match caller {
        Some(_) if !deidentified_only => Some(state.service.clone()),
        _ => None,
    };
    // An authenticated caller's job reads through the caller's scoped service, so an
    // export never holds more than its caller may see.
    let id = engine
        .start_export_as(
            reading_as,
            req,
            &request_url(&base, &path, q),
            caller.map(|c| c.subject.clone()),
        )
        .await?;
    Ok(accepted(
        format!("{base}/$export-poll-status?_jobId={id}"),
        "export",
    ))
}

/// `GET|POST [base]/$export`
pub async fn export_system(
    Scoped(state): Scoped,
    caller: Option<Extension<BulkCaller>>,
    method: Method,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> ApiResult {
    let caller = caller.map(|Extension(c)| c);
    kick_off(
        &state,
        &headers,
        &method,
        &q,
        body,
        ExportLevel::System,
        caller.as_ref(),
    )
    .await
}

/// `GET|POST [base]/Patient/$export`
pub async fn export_patient(
    Scoped(state): Scoped,
    caller: Option<Extension<BulkCaller>>,
    method: Method,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> ApiResult {
    let caller = caller.map(|Extension(c)| c);
    kick_off(
        &state,
        &headers,
        &method,
        &q,
        body,
        ExportLevel::Patient,
        caller.as_ref(),
    )
    .await
}

/// `GET|POST [base]/Group/[id]/$export`
pub async fn export_group(
    Scoped(state): Scoped,
    caller: Option<Extension<BulkCaller>>,
    Path(id): Path<String>,
    method: Method,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> ApiResult {
    let caller = caller.map(|Extension(c)| c);
    kick_off(
        &state,
        &headers,
        &method,
        &q,
        body,
        ExportLevel::Group(id),
        caller.as_ref(),
    )
    .await
}

/// `POST [base]/$import`
pub async fn import(
    Scoped(state): Scoped,
    caller: Option<Extension<BulkCaller>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> ApiResult {
    let engine = engine(&state)?;
    response_format(&headers, &[])?;
    require_async(&headers)?;
    let body = read_json(&headers, body, state.config.max_body_bytes, false).await?;
    let req = ImportRequest::parse(&body, engine.config())?;
    let base = base_url(&state, &headers);
    let scoped = caller.as_ref().map(|_| state.service.clone());
    let id = engine
        .start_import_as(
            scoped,
            req,
            &request_url(&base, "/$import", &q),
            caller.map(|Extension(c)| c.subject),
        )
        .await?;
    Ok(accepted(
        format!("{base}/$import-poll-status?_jobId={id}"),
        "import",
    ))
}

fn job_id(q: &Option<String>) -> Result<String, ApiError> {
    q.as_deref()
        .map(parse_pairs)
        .unwrap_or_default()
        .into_iter()
        .find(|(k, _)| k == "_jobId")
        .map(|(_, v)| v)
        .ok_or_else(|| FhirError::invalid("the status URL needs a _jobId parameter").into())
}

/// `GET` / `DELETE` on a status URL (export.html#bulk-data-status-request,
/// #bulk-data-delete-request).
pub async fn status(
    Scoped(state): Scoped,
    caller: Option<Extension<BulkCaller>>,
    method: Method,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let engine = engine(&state)?;
    let id = job_id(&q)?;
    let gone = || ApiError::from(FhirError::NotFound(format!("bulk job {id}")));
    let view = engine.status(&id).ok_or_else(gone)?;
    let caller = caller.map(|Extension(c)| c);
    authorize(caller.as_ref(), &view.job)?;
    if method == Method::DELETE {
        engine.cancel(&id);
        let oo = operation_outcome(&[Issue::information(format!(
            "bulk job {id} cancelled; its files are removed"
        ))]);
        return Ok(json_response(StatusCode::ACCEPTED, &oo, Format::default()));
    }
    let job = &view.job;
    match job.status {
        JobStatus::Accepted | JobStatus::Running => Ok((
            StatusCode::ACCEPTED,
            [
                ("x-progress", header_value(&view.progress_text())),
                ("retry-after", header_value("1")),
            ],
        )
            .into_response()),
        JobStatus::Completed => {
            let base = base_url(&state, &headers);
            let requires = engine.config().requires_access_token;
            let mut manifest = job.manifest(&format!("{base}/$export-file/{}", job.id), requires);
            if job.kind == JobKind::Import {
                manifest["mode"] = json!(job
                    .import
                    .as_ref()
                    .map(|i| format!("{:?}", i.mode))
                    .unwrap_or_default());
            }
            let body = serde_json::to_string(&manifest).unwrap_or_default();
            Ok((
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response())
        }
        JobStatus::Rejected => Err(FhirError::invalid(format!(
            "bulk job {id} failed: {}",
            job.failure.as_deref().unwrap_or("no reason recorded")
        ))
        .into()),
        JobStatus::Failed => Err(FhirError::Internal(format!(
            "bulk job {id}: {}",
            job.failure.as_deref().unwrap_or("no reason recorded")
        ))
        .into()),
    }
}

/// `GET [base]/$export-file/[job]/[file]`: an output file, streamed from disk.
pub async fn download(
    Scoped(state): Scoped,
    caller: Option<Extension<BulkCaller>>,
    Path((id, file)): Path<(String, String)>,
) -> ApiResult {
    let engine = engine(&state)?;
    let missing = || ApiError::from(FhirError::NotFound(format!("bulk file {id}/{file}")));
    let view = engine.status(&id).ok_or_else(missing)?;
    let caller = caller.map(|Extension(c)| c);
    authorize(caller.as_ref(), &view.job)?;
    let path = engine.file_path(&id, &file).ok_or_else(missing)?;
    let f = tokio::fs::File::open(&path).await.map_err(|_| missing())?;
    let len = f.metadata().await.map(|m| m.len()).ok();
    let stream = tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024);
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header_value("application/fhir+ndjson"),
    );
    if let Some(len) = len {
        h.insert(header::CONTENT_LENGTH, header_value(&len.to_string()));
    }
    Ok(resp)
}

/// `GET|POST [base]/Patient/[id]/$everything`
pub async fn patient_everything(
    Scoped(state): Scoped,
    Path(id): Path<String>,
    method: Method,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> ApiResult {
    let mut pairs = q.as_deref().map(parse_pairs).unwrap_or_default();
    let fmt = response_format(&headers, &pairs)?;
    if method == Method::POST {
        let body = read_json(&headers, body, state.config.max_body_bytes, false).await?;
        if body.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
            return Err(FhirError::invalid(
                "a POST $everything body must be a Parameters resource",
            )
            .into());
        }
        for p in body["parameter"].as_array().into_iter().flatten() {
            let name = p["name"].as_str().unwrap_or("").to_string();
            let value = p
                .as_object()
                .and_then(|o| o.iter().find(|(k, _)| k.starts_with("value")))
                .map(|(_, v)| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                });
            if let Some(v) = value {
                pairs.push((name, v));
            }
        }
    }
    let req = EverythingRequest::parse(&pairs)?;
    let page = everything::everything(&state.service, &id, &req).await?;
    let base = base_url(&state, &headers);
    let path = format!("{base}/Patient/{id}/$everything");
    let mut link_pairs: Vec<(String, String)> = vec![];
    if let Some(s) = &req.since {
        link_pairs.push(("_since".into(), s.clone()));
    }
    if !req.types.is_empty() {
        link_pairs.push(("_type".into(), req.types.join(",")));
    }
    if let Some(c) = req.count {
        link_pairs.push(("_count".into(), c.to_string()));
    }
    let link = |extra: Option<&str>| {
        let mut p = link_pairs.clone();
        if let Some(c) = extra {
            p.push(("_cursor".into(), c.to_string()));
        }
        if p.is_empty() {
            path.clone()
        } else {
            format!("{path}?{}", salus_service::response::encode_pairs(&p))
        }
    };
    let mut links = vec![json!({"relation": "self", "url": link(req.cursor.as_deref())})];
    if let Some(n) = &page.next {
        links.push(json!({"relation": "next", "url": link(Some(n))}));
    }
    let entry = |r: &salus_store::VersionRecord, mode: &str| {
        json!({
            "fullUrl": format!("{base}/{}/{}", r.rtype, r.id),
            "resource": salus_service::response::body_value(r),
            "search": {"mode": mode}
        })
    };
    let entries: Vec<Value> = page
        .matched
        .iter()
        .map(|r| entry(r, "match"))
        .chain(page.included.iter().map(|r| entry(r, "include")))
        .collect();
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": entries,
    });
    Ok(json_response(StatusCode::OK, &bundle, fmt))
}
