//! Request handlers: each one parses HTTP, calls the service, and writes HTTP.

use crate::auth::Scoped;
use crate::error::ApiError;
use crate::negotiate::{
    header_value, json_response, prefer_return, read_bytes, read_json, response_format,
    text_response, Format,
};
use crate::AppState;
use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use salus_service::response::{encode_pairs, etag, history_bundle, searchset_text};
use salus_service::{parse_etag, parse_pairs, shape, time, FhirError, Return, WriteOutcome};
use salus_store::{HistoryScope, VersionRecord};
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};

type Pairs = Vec<(String, String)>;
type ApiResult = Result<Response, ApiError>;

fn pairs(q: &Option<String>) -> Pairs {
    q.as_deref().map(parse_pairs).unwrap_or_default()
}

/// The server's base URL for `fullUrl`, `Location` and links.
pub(crate) fn base_url(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(b) = &state.config.base_url {
        return b.trim_end_matches('/').to_string();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let proto = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("http");
    format!("{proto}://{host}")
}

pub(crate) fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    match headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()) {
        None => Ok(None),
        Some(s) => parse_etag(s).map(Some).ok_or_else(|| {
            ApiError::Fhir(FhirError::invalid(format!(
                "If-Match '{s}' is not a version ETag like W/\"3\""
            )))
        }),
    }
}

/// Response for a stored version: body per `Prefer`, with ETag, Last-Modified, Location.
fn version_response(
    r: &VersionRecord,
    status: StatusCode,
    ret: Return,
    fmt: Format,
    base: &str,
    location: bool,
) -> Response {
    let mut resp = match ret {
        Return::Minimal => status.into_response(),
        Return::OperationOutcome => json_response(
            status,
            &salus_fhir::issue::operation_outcome(&[salus_fhir::Issue::information(format!(
                "{}/{}/_history/{} stored",
                r.rtype, r.id, r.version
            ))]),
            fmt,
        ),
        Return::Representation => text_response(status, r.body.clone().unwrap_or_default(), fmt),
    };
    let h = resp.headers_mut();
    h.insert(header::ETAG, header_value(&etag(r.version)));
    h.insert(
        header::LAST_MODIFIED,
        header_value(&time::format_http_date(r.last_updated)),
    );
    if location {
        h.insert(
            header::LOCATION,
            header_value(&format!(
                "{base}/{}/{}/_history/{}",
                r.rtype, r.id, r.version
            )),
        );
    }
    resp
}

pub(crate) fn write_response(
    out: WriteOutcome,
    headers: &HeaderMap,
    fmt: Format,
    base: &str,
) -> Response {
    let status = if out.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    version_response(&out.record, status, prefer_return(headers), fmt, base, true)
}

/// `GET [base]`: a system-level search when there are parameters (`?_type=…`),
/// otherwise the CapabilityStatement.
pub async fn root(Scoped(state): Scoped, headers: HeaderMap, RawQuery(q): RawQuery) -> ApiResult {
    let p = pairs(&q);
    if p.iter().all(|(k, _)| k == "_format" || k == "_pretty") {
        return metadata(Scoped(state), headers, RawQuery(q)).await;
    }
    run_search(&state, "", p, &headers).await
}

/// `POST [base]/$reindex`: rebuild every resource's index rows and full text in the
/// background; 202 with the job's status, whose progress `GET [base]/$reindex` reports.
pub async fn reindex_start(
    Scoped(state): Scoped,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let fmt = response_format(&headers, &pairs(&q))?;
    let status = state.service.start_reindex()?;
    let base = base_url(&state, &headers);
    let mut resp = json_response(StatusCode::ACCEPTED, &status.to_parameters(), fmt);
    if let Ok(v) = axum::http::HeaderValue::from_str(&format!("{base}/$reindex")) {
        resp.headers_mut().insert(header::CONTENT_LOCATION, v);
    }
    Ok(resp)
}

/// `GET [base]/$reindex`: the reindex job's status (`Parameters`: status, processed,
/// total, started, finished, error).
pub async fn reindex_status(
    Scoped(state): Scoped,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let fmt = response_format(&headers, &pairs(&q))?;
    Ok(json_response(
        StatusCode::OK,
        &state.service.reindex_status().to_parameters(),
        fmt,
    ))
}

pub async fn metadata(
    Scoped(state): Scoped,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let fmt = response_format(&headers, &pairs(&q))?;
    let base = base_url(&state, &headers);
    let mut statement =
        crate::capability::capability_statement(&base, state.service.store().backend());
    if state.analytics.is_some() {
        crate::capability::add_analytics(&mut statement);
    }
    if let Some(smart) = &state.config.smart {
        // SMART App Launch 2.0 conformance.html: the oauth-uris extension and service.
        let mut uris = vec![
            serde_json::json!({"url": "authorize", "valueUri": smart.authorize}),
            serde_json::json!({"url": "token", "valueUri": smart.token}),
        ];
        if let Some(r) = &smart.revoke {
            uris.push(serde_json::json!({"url": "revoke", "valueUri": r}));
        }
        if let Some(i) = &smart.introspect {
            uris.push(serde_json::json!({"url": "introspect", "valueUri": i}));
        }
        if let Some(rest) = statement
            .get_mut("rest")
            .and_then(|r| r.get_mut(0))
            .and_then(Value::as_object_mut)
        {
            rest.insert(
                "security".into(),
                serde_json::json!({
                    "cors": true,
                    "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR"}]}],
                    "description": "SMART on FHIR v2 access tokens (Bearer) from this server's authorization server; see /.well-known/smart-configuration",
                    "extension": [{"url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris", "extension": uris}]
                }),
            );
        }
    }
    if let Some(engine) = &state.subscriptions {
        crate::subscriptions::advertise(engine, &mut statement);
    }
    Ok(json_response(StatusCode::OK, &statement, fmt))
}

pub async fn health(State(state): State<AppState>) -> Response {
    match state
        .service
        .store()
        .read("Patient", "-health-check-")
        .await
    {
        Ok(_) => (StatusCode::OK, "ok").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("storage: {e}")).into_response(),
    }
}

/// Counters exported at `/metrics` in the Prometheus text format.
#[derive(Default)]
pub struct Metrics {
    by_class: [AtomicU64; 6],
    latency_micros: AtomicU64,
    count: AtomicU64,
}

/// Middleware: count requests and log them.
pub async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = std::time::Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    let micros = start.elapsed().as_micros() as u64;
    let class = (resp.status().as_u16() / 100) as usize;
    let m = &state.metrics;
    m.by_class[class.min(5)].fetch_add(1, Ordering::Relaxed);
    m.latency_micros.fetch_add(micros, Ordering::Relaxed);
    m.count.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%method, %path, status = resp.status().as_u16(), micros, "request");
    resp
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    let m = &state.metrics;
    let mut out = String::new();
    out.push_str("# HELP salus_http_requests_total HTTP requests by status class.\n# TYPE salus_http_requests_total counter\n");
    for (i, c) in m.by_class.iter().enumerate().skip(1) {
        out.push_str(&format!(
            "salus_http_requests_total{{class=\"{i}xx\"}} {}\n",
            c.load(Ordering::Relaxed)
        ));
    }
    out.push_str("# HELP salus_http_request_duration_seconds_sum Total time spent serving requests.\n# TYPE salus_http_request_duration_seconds_sum counter\n");
    out.push_str(&format!(
        "salus_http_request_duration_seconds_sum {}\n",
        m.latency_micros.load(Ordering::Relaxed) as f64 / 1e6
    ));
    out.push_str(&format!(
        "salus_http_request_duration_seconds_count {}\n",
        m.count.load(Ordering::Relaxed)
    ));
    out.push_str(
        "# HELP salus_resources Current resources by type.\n# TYPE salus_resources gauge\n",
    );
    if let Ok(counts) = state.service.store().counts().await {
        for (t, n) in counts {
            out.push_str(&format!("salus_resources{{type=\"{t}\"}} {n}\n"));
        }
    }
    out.push_str(&format!(
        "# HELP salus_uptime_seconds Seconds since start.\n# TYPE salus_uptime_seconds gauge\nsalus_uptime_seconds {}\n",
        state.started.elapsed().as_secs()
    ));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::UnknownPath(uri.path().to_string())
}

/// A known path with a method it does not take (axum adds the `Allow` header).
pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{method} is not allowed on '{}'", uri.path()))
}

pub async fn bundle(
    Scoped(state): Scoped,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> ApiResult {
    let fmt = response_format(&headers, &pairs(&q))?;
    let value = read_json(&headers, body, state.config.max_body_bytes, false).await?;
    let base = base_url(&state, &headers);
    let out = state
        .service
        .process_bundle(value, prefer_return(&headers), &base)
        .await?;
    Ok(json_response(StatusCode::OK, &out, fmt))
}

pub async fn read(
    Scoped(state): Scoped,
    Path((rtype, id)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let p = pairs(&q);
    let fmt = response_format(&headers, &p)?;
    if rtype == "SearchParameter" && id == "$status" {
        return Ok(json_response(
            StatusCode::OK,
            &state.service.search_parameter_status(),
            fmt,
        ));
    }
    let base = base_url(&state, &headers);
    let r = state.service.read(&rtype, &id).await?;
    if let Some(inm) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        if parse_etag(inm) == Some(r.version) {
            let mut resp = StatusCode::NOT_MODIFIED.into_response();
            resp.headers_mut()
                .insert(header::ETAG, header_value(&etag(r.version)));
            return Ok(resp);
        }
    }
    shaped_version(r, &p, fmt, &base)
}

/// Apply `_summary`/`_elements` when asked, else return the stored text as is.
fn shaped_version(r: VersionRecord, p: &Pairs, fmt: Format, base: &str) -> ApiResult {
    let summary = p
        .iter()
        .find(|(k, _)| k == "_summary")
        .map(|(_, v)| v.as_str());
    let elements: Option<Vec<String>> = p
        .iter()
        .find(|(k, _)| k == "_elements")
        .map(|(_, v)| v.split(',').map(|s| s.trim().to_string()).collect());
    if let Some(s) = summary {
        if !matches!(s, "true" | "false" | "text" | "data") {
            return Err(
                FhirError::invalid("_summary must be true, false, text or data on a read").into(),
            );
        }
    }
    if summary.is_none_or(|s| s == "false") && elements.is_none() {
        return Ok(version_response(
            &r,
            StatusCode::OK,
            Return::Representation,
            fmt,
            base,
            false,
        ));
    }
    let mut v: Value = serde_json::from_str(r.body.as_deref().unwrap_or("{}"))
        .map_err(|e| FhirError::Internal(e.to_string()))?;
    shape::apply(&mut v, summary, elements.as_deref());
    let mut resp = json_response(StatusCode::OK, &v, fmt);
    let h = resp.headers_mut();
    h.insert(header::ETAG, header_value(&etag(r.version)));
    h.insert(
        header::LAST_MODIFIED,
        header_value(&time::format_http_date(r.last_updated)),
    );
    Ok(resp)
}

pub async fn vread(
    Scoped(state): Scoped,
    Path((rtype, id, vid)): Path<(String, String, String)>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let p = pairs(&q);
    let fmt = response_format(&headers, &p)?;
    let base = base_url(&state, &headers);
    let r = state.service.vread(&rtype, &id, &vid).await?;
    shaped_version(r, &p, fmt, &base)
}

pub async fn create_or_op(
    Scoped(state): Scoped,
    Path(rtype): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> ApiResult {
    let p = pairs(&q);
    if rtype == "$viewdefinition-run" {
        return crate::views::view_run(&state, &headers, &p, body).await;
    }
    if rtype == "$convert-data" {
        return crate::convert::convert_data(&state, &headers, &p, body).await;
    }
    let fmt = response_format(&headers, &p)?;
    if let Some(op) = rtype.strip_prefix('$') {
        return Err(FhirError::NotSupported(format!("system operation ${op}")).into());
    }
    let value = read_json(&headers, body, state.config.max_body_bytes, false).await?;
    let base = base_url(&state, &headers);
    let ine = headers
        .get("if-none-exist")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim_start_matches('?').to_string());
    let out = state.service.create(&rtype, value, ine.as_deref()).await?;
    if out.existing {
        return Ok(version_response(
            &out.record,
            StatusCode::OK,
            prefer_return(&headers),
            fmt,
            &base,
            true,
        ));
    }
    Ok(write_response(out, &headers, fmt, &base))
}

pub async fn instance_op(
    Scoped(state): Scoped,
    Path((rtype, op)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> ApiResult {
    let p = pairs(&q);
    if rtype == "ViewDefinition" && op == "$run" {
        return crate::views::view_run(&state, &headers, &p, body).await;
    }
    let fmt = response_format(&headers, &p)?;
    match op.as_str() {
        "$validate" => {
            let value = read_json(&headers, body, state.config.max_body_bytes, false).await?;
            // Accept a Parameters wrapper with a `resource` parameter, or the resource itself.
            let resource = if value.get("resourceType").and_then(Value::as_str)
                == Some("Parameters")
                && rtype != "Parameters"
            {
                value
                    .get("parameter")
                    .and_then(Value::as_array)
                    .and_then(|ps| {
                        ps.iter()
                            .find(|p| p.get("name").and_then(Value::as_str) == Some("resource"))
                    })
                    .and_then(|p| p.get("resource"))
                    .cloned()
                    .ok_or_else(|| {
                        FhirError::invalid("Parameters for $validate need a 'resource' parameter")
                    })?
            } else {
                value
            };
            let issues = state.service.validate(Some(&rtype), &resource)?;
            let status = if issues.iter().any(|i| i.is_error()) {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::OK
            };
            Ok(json_response(
                status,
                &salus_fhir::issue::operation_outcome(&issues),
                fmt,
            ))
        }
        _ if op.starts_with('$') => {
            Err(FhirError::NotSupported(format!("operation {op} on {rtype}")).into())
        }
        _ => Err(ApiError::MethodNotAllowed(format!(
            "POST to {rtype}/{op} is not allowed; use PUT to update a resource"
        ))),
    }
}

pub async fn update(
    Scoped(state): Scoped,
    Path((rtype, id)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> ApiResult {
    let fmt = response_format(&headers, &pairs(&q))?;
    let value = read_json(&headers, body, state.config.max_body_bytes, false).await?;
    let base = base_url(&state, &headers);
    let out = state
        .service
        .update(&rtype, &id, value, if_match(&headers)?)
        .await?;
    Ok(write_response(out, &headers, fmt, &base))
}

pub async fn conditional_update(
    Scoped(state): Scoped,
    Path(rtype): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> ApiResult {
    let p = pairs(&q);
    let fmt = response_format(&headers, &p)?;
    let criteria = criteria(&q, "conditional update")?;
    let value = read_json(&headers, body, state.config.max_body_bytes, false).await?;
    let base = base_url(&state, &headers);
    let out = state
        .service
        .conditional_update(&rtype, &criteria, value, if_match(&headers)?)
        .await?;
    Ok(write_response(out, &headers, fmt, &base))
}

/// The search criteria of a conditional interaction, without `_format`/`_pretty`.
fn criteria(q: &Option<String>, what: &str) -> Result<String, ApiError> {
    let kept: Vec<(String, String)> = pairs(q)
        .into_iter()
        .filter(|(k, _)| k != "_format" && k != "_pretty")
        .collect();
    if kept.is_empty() {
        return Err(ApiError::MethodNotAllowed(format!(
            "{what} on a resource type needs search criteria in the URL"
        )));
    }
    Ok(encode_pairs(&kept))
}

pub async fn patch(
    Scoped(state): Scoped,
    Path((rtype, id)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> ApiResult {
    let fmt = response_format(&headers, &pairs(&q))?;
    let value = read_json(&headers, body, state.config.max_body_bytes, true).await?;
    let base = base_url(&state, &headers);
    let out = state
        .service
        .patch(&rtype, &id, value, if_match(&headers)?)
        .await?;
    Ok(write_response(out, &headers, fmt, &base))
}

pub async fn delete(
    Scoped(state): Scoped,
    Path((rtype, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    let deleted = state
        .service
        .delete(&rtype, &id, if_match(&headers)?)
        .await?;
    Ok(delete_response(deleted, &headers))
}

fn delete_response(deleted: Option<VersionRecord>, headers: &HeaderMap) -> Response {
    let fmt = Format::default();
    match prefer_return(headers) {
        Return::OperationOutcome => json_response(
            StatusCode::OK,
            &salus_fhir::issue::operation_outcome(&[salus_fhir::Issue::information(
                match &deleted {
                    Some(r) => format!("deleted {}/{}", r.rtype, r.id),
                    None => "nothing to delete".to_string(),
                },
            )]),
            fmt,
        ),
        _ => {
            let mut resp = StatusCode::NO_CONTENT.into_response();
            if let Some(r) = deleted {
                resp.headers_mut()
                    .insert(header::ETAG, header_value(&etag(r.version)));
            }
            resp
        }
    }
}

pub async fn conditional_delete(
    Scoped(state): Scoped,
    Path(rtype): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let criteria = criteria(&q, "conditional delete")?;
    let deleted = state.service.conditional_delete(&rtype, &criteria).await?;
    Ok(delete_response(deleted, &headers))
}

/// `Prefer: handling=strict` (R4 search.html#errors); lenient otherwise.
fn strict_handling(headers: &HeaderMap) -> bool {
    headers.get_all("prefer").iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split([',', ';']).any(|p| p.trim() == "handling=strict"))
    })
}

async fn run_search(state: &AppState, rtype: &str, p: Pairs, headers: &HeaderMap) -> ApiResult {
    let fmt = response_format(headers, &p)?;
    let base = base_url(state, headers);
    let result = state
        .service
        .search(rtype, &p, strict_handling(headers))
        .await?;
    Ok(text_response(
        StatusCode::OK,
        searchset_text(&base, rtype, &result),
        fmt,
    ))
}

/// `POST [base]/[type]/[id]/$op`: operations on one resource (`Patient/[id]/$purge`).
pub async fn resource_op(
    Scoped(state): Scoped,
    Path((rtype, id, op)): Path<(String, String, String)>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let fmt = response_format(&headers, &pairs(&q))?;
    match (rtype.as_str(), op.as_str()) {
        ("Patient", "$purge") => {
            let counts = state.service.purge_patient(&id).await?;
            // Alert rules keep per-patient state (readings in trend windows): erase it too.
            if let Some(ingest) = state.devices.as_ref().and_then(|d| d.ingest.as_ref()) {
                state
                    .service
                    .forget_device_rule_subject(ingest, &id)
                    .await?;
            }
            Ok(json_response(
                StatusCode::OK,
                &salus_service::purge_parameters(&counts),
                fmt,
            ))
        }
        _ if op.starts_with('$') => Err(ApiError::Fhir(FhirError::NotSupported(format!(
            "operation {op} on {rtype}/[id] is not supported"
        )))),
        _ => Err(ApiError::MethodNotAllowed(format!(
            "POST is not allowed on '/{rtype}/{id}/{op}'"
        ))),
    }
}

/// `GET [base]/Patient/[id]/[type]?…`: search inside a patient's compartment.
pub async fn search_compartment(
    Scoped(state): Scoped,
    Path((ctype, id, rtype)): Path<(String, String, String)>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let p = pairs(&q);
    let fmt = response_format(&headers, &p)?;
    let base = base_url(&state, &headers);
    let result = state
        .service
        .search_compartment(&ctype, &id, &rtype, &p, strict_handling(&headers))
        .await?;
    let path = format!("{ctype}/{id}/{rtype}");
    Ok(text_response(
        StatusCode::OK,
        searchset_text(&base, &path, &result),
        fmt,
    ))
}

pub async fn search_type(
    Scoped(state): Scoped,
    Path(rtype): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult {
    run_search(&state, &rtype, pairs(&q), &headers).await
}

pub async fn search_post(
    Scoped(state): Scoped,
    Path(rtype): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> ApiResult {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/x-www-form-urlencoded") {
        return Err(ApiError::UnsupportedMediaType(ct.to_string()));
    }
    let bytes = read_bytes(body, state.config.max_body_bytes).await?;
    let mut p = pairs(&q);
    p.extend(parse_pairs(&String::from_utf8_lossy(&bytes)));
    run_search(&state, &rtype, p, &headers).await
}

async fn history(
    state: &AppState,
    scope: HistoryScope,
    self_path: String,
    headers: &HeaderMap,
    q: &Option<String>,
) -> ApiResult {
    let p = pairs(q);
    let fmt = response_format(headers, &p)?;
    let base = base_url(state, headers);
    let page = state.service.history(scope, &p).await?;
    Ok(json_response(
        StatusCode::OK,
        &history_bundle(&base, &self_path, &p, &page),
        fmt,
    ))
}

pub async fn history_system(
    Scoped(state): Scoped,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult {
    history(
        &state,
        HistoryScope::System,
        "_history".into(),
        &headers,
        &q,
    )
    .await
}

pub async fn history_type(
    Scoped(state): Scoped,
    Path(rtype): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let path = format!("{rtype}/_history");
    history(&state, HistoryScope::Type(rtype), path, &headers, &q).await
}

pub async fn history_instance(
    Scoped(state): Scoped,
    Path((rtype, id)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let path = format!("{rtype}/{id}/_history");
    history(
        &state,
        HistoryScope::Instance(rtype, id),
        path,
        &headers,
        &q,
    )
    .await
}

/// `POST /devices/messages` (the HTTP device source).
pub async fn device_messages(Scoped(state): Scoped, headers: HeaderMap, body: Body) -> ApiResult {
    crate::devices::messages(&state, &headers, body).await
}
