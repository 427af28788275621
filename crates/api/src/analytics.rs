//! HTTP translation of the analytics operations (docs/analytics.md):
//! `POST [base]/$sql` (read-only SQL over the materialized views) and
//! `GET|POST [base]/Measure/$evaluate-measure` (a shipped population measure as a
//! `MeasureReport`, or one of its populations as a `Group`).
//!
//! The work is done behind [`AnalyticsProvider`], implemented by the binary (which owns
//! DataFusion): this crate only parses the request, checks the caller's capability and
//! shapes the answer, so it builds without DataFusion. Only callers holding the
//! `analytics` capability (the built-in `admin` and `analyst` roles) may call either
//! operation: the tables hold every patient's rows.

use crate::error::ApiError;
use crate::negotiate::{json_response, read_bytes, response_format};
use crate::AppState;
use axum::body::Body;
use axum::extract::{Path, RawQuery};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use salus_fhir::IssueCode;
use salus_service::salus_access::Capability;
use salus_service::{parse_pairs, FhirError};
use serde_json::Value;

type ApiResult = Result<Response, ApiError>;
type Pairs = Vec<(String, String)>;

/// How `$sql` writes its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlFormat {
    /// One JSON array of row objects (the default).
    Json,
    /// One JSON object per line.
    Ndjson,
    /// CSV with a header row.
    Csv,
    /// A Parquet file.
    Parquet,
}

impl SqlFormat {
    /// `json`, `ndjson`, `csv`, `parquet` (or their media types).
    pub fn parse(s: &str) -> Option<SqlFormat> {
        match s.trim().to_ascii_lowercase().as_str() {
            "json" | "application/json" => Some(SqlFormat::Json),
            "ndjson" | "application/x-ndjson" | "application/ndjson" => Some(SqlFormat::Ndjson),
            "csv" | "text/csv" => Some(SqlFormat::Csv),
            "parquet" | "application/vnd.apache.parquet" => Some(SqlFormat::Parquet),
            _ => None,
        }
    }

    /// The response's `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            SqlFormat::Json => "application/json",
            SqlFormat::Ndjson => "application/x-ndjson",
            SqlFormat::Csv => "text/csv; charset=utf-8",
            SqlFormat::Parquet => "application/vnd.apache.parquet",
        }
    }
}

/// `MeasureReport.type` asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportKind {
    /// Counts and the score.
    Summary,
    /// Counts, the score and the members of each population (contained `List`s).
    SubjectList,
}

/// A `$evaluate-measure` request, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeasureRequest {
    /// The measure id (`diabetes-hba1c-poor-control`, …).
    pub measure: String,
    /// First day of the period (`YYYY-MM-DD`).
    pub period_start: String,
    /// Last day of the period, included.
    pub period_end: String,
    pub report: ReportKind,
    /// A population code (`numerator`, …) whose patients are wanted as a `Group`.
    pub cohort: Option<String>,
}

/// What a measure evaluation gives.
#[derive(Debug, Clone)]
pub struct MeasureOutcome {
    /// The `MeasureReport`.
    pub report: Value,
    /// The requested population's patients as a `Group`, when a cohort was asked for.
    pub cohort: Option<Value>,
}

/// The analytics engine as the HTTP layer sees it. Errors are [`FhirError`]s: the
/// implementation says which are the caller's (400, 404) and which are internal.
#[async_trait::async_trait]
pub trait AnalyticsProvider: Send + Sync {
    /// Run one read-only SQL statement; the rows in `format`.
    async fn sql(&self, query: &str, format: SqlFormat) -> Result<Vec<u8>, FhirError>;

    /// Evaluate a shipped measure.
    async fn evaluate_measure(&self, request: &MeasureRequest)
        -> Result<MeasureOutcome, FhirError>;

    /// The `$insights` dashboard as JSON.
    async fn insights(&self) -> Result<Value, FhirError> {
        Err(FhirError::NotSupported("$insights is not available".into()))
    }

    /// One `$insights` chart as SVG text.
    async fn chart(&self, name: &str) -> Result<String, FhirError> {
        Err(FhirError::NotFound(format!("$insights/{name}.svg")))
    }
}

/// The provider, after checking that the caller may use it.
fn provider(
    state: &AppState,
    what: &str,
) -> Result<std::sync::Arc<dyn AnalyticsProvider>, ApiError> {
    state.service.require(Capability::Analytics, what)?;
    state.analytics.clone().ok_or_else(|| {
        FhirError::NotSupported(
            "analytics is not enabled on this server ([analytics] enabled = false)".into(),
        )
        .into()
    })
}

/// The parts of a `Parameters` body (an empty body gives none).
fn parameters(bytes: &[u8]) -> Result<Pairs, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(vec![]);
    }
    let v: Value =
        serde_json::from_slice(bytes).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    crate::params::pairs(&v)
}

fn mime(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn get<'a>(p: &'a Pairs, name: &str) -> Option<&'a str> {
    p.iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn required<'a>(p: &'a Pairs, name: &str) -> Result<&'a str, ApiError> {
    get(p, name)
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| {
            FhirError::invalid_at(
                IssueCode::Required,
                name,
                format!("the operation needs the '{name}' parameter"),
            )
            .into()
        })
}

/// `POST [base]/$sql`: the SQL as a `text/plain` (or `application/sql`) body, or a
/// `Parameters` body with `query` (valueString) and optional `format` (`json`,
/// `ndjson`, `csv`, `parquet`; also `_format` in the URL). Statements that would change
/// anything are refused with 400.
pub async fn sql(
    crate::auth::Scoped(state): crate::auth::Scoped,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> ApiResult {
    let analytics = provider(&state, "SQL analytics ($sql)")?;
    let mut pairs: Pairs = q.as_deref().map(parse_pairs).unwrap_or_default();
    let bytes = read_bytes(body, state.config.max_body_bytes).await?;
    let ct = mime(&headers);
    let query = match ct.as_str() {
        "text/plain" | "application/sql" => String::from_utf8(bytes.to_vec())
            .map_err(|_| FhirError::invalid("the SQL body is not UTF-8 text"))?,
        "application/fhir+json" | "application/json" | "application/json+fhir" | "" => {
            pairs.extend(parameters(&bytes)?);
            required(&pairs, "query")?.to_string()
        }
        _ => return Err(ApiError::UnsupportedMediaType(ct.clone())),
    };
    if query.trim().is_empty() {
        return Err(FhirError::invalid_at(IssueCode::Required, "query", "the SQL is empty").into());
    }
    let format = match get(&pairs, "format").or_else(|| get(&pairs, "_format")) {
        None => SqlFormat::Json,
        Some(f) => SqlFormat::parse(f).ok_or_else(|| {
            FhirError::invalid_at(
                IssueCode::Value,
                "format",
                format!("format '{f}': use json, ndjson, csv or parquet"),
            )
        })?,
    };
    let rows = analytics.sql(&query, format).await?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, format.content_type())],
        rows,
    )
        .into_response())
}

/// The `measure` parameter as a measure id: `id`, `Measure/id` or the canonical
/// `urn:salus:measure:id`.
fn measure_id(s: &str) -> &str {
    let s = s.trim();
    let s = s.strip_prefix("urn:salus:measure:").unwrap_or(s);
    s.strip_prefix("Measure/").unwrap_or(s)
}

/// A period bound: a date (`2024-01-01`), or a dateTime whose date is taken.
fn period_date(p: &Pairs, name: &str) -> Result<String, ApiError> {
    let v = required(p, name)?.trim();
    let date = v.get(..10).unwrap_or(v);
    let ok = date.len() == 10
        && date.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    if !ok {
        return Err(FhirError::invalid_at(
            IssueCode::Value,
            name,
            format!("{name} '{v}' is not a date (YYYY-MM-DD)"),
        )
        .into());
    }
    Ok(date.to_string())
}

fn measure_request(p: &Pairs, id: Option<&str>) -> Result<MeasureRequest, ApiError> {
    let measure = match id {
        Some(id) => id.to_string(),
        None => measure_id(required(p, "measure")?).to_string(),
    };
    let report = match get(p, "reportType").map(str::trim) {
        None | Some("summary") | Some("population") => ReportKind::Summary,
        Some("subject-list") => ReportKind::SubjectList,
        Some(other) => {
            return Err(FhirError::invalid_at(
                IssueCode::Value,
                "reportType",
                format!("reportType '{other}': use summary (population) or subject-list"),
            )
            .into())
        }
    };
    Ok(MeasureRequest {
        measure,
        period_start: period_date(p, "periodStart")?,
        period_end: period_date(p, "periodEnd")?,
        report,
        cohort: get(p, "cohort").map(|c| c.trim().to_string()),
    })
}

async fn evaluate(state: AppState, headers: HeaderMap, p: Pairs, id: Option<String>) -> ApiResult {
    let fmt = response_format(&headers, &p)?;
    let analytics = provider(&state, "measure evaluation ($evaluate-measure)")?;
    let req = measure_request(&p, id.as_deref())?;
    let store = match get(&p, "storeCohort").map(str::trim) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(FhirError::invalid_at(
                IssueCode::Value,
                "storeCohort",
                format!("storeCohort '{other}' is not true or false"),
            )
            .into())
        }
    };
    if store && req.cohort.is_none() {
        return Err(FhirError::invalid_at(
            IssueCode::Required,
            "cohort",
            "storeCohort needs the cohort parameter (a population code such as numerator)",
        )
        .into());
    }
    let outcome = analytics.evaluate_measure(&req).await?;
    let Some(group) = outcome.cohort else {
        return Ok(json_response(StatusCode::OK, &outcome.report, fmt));
    };
    if !store {
        return Ok(json_response(StatusCode::OK, &group, fmt));
    }
    // Stored through the caller's own service: the access rules on Group writes apply.
    let id = group
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or("cohort")
        .to_string();
    let written = state.service.update("Group", &id, group, None).await?;
    let body = written.record.body.unwrap_or_default();
    let value: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let status = if written.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_response(status, &value, fmt))
}

/// `GET [base]/Measure/$evaluate-measure?measure=…&periodStart=…&periodEnd=…`.
pub async fn evaluate_get(
    crate::auth::Scoped(state): crate::auth::Scoped,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let p = q.as_deref().map(parse_pairs).unwrap_or_default();
    evaluate(state, headers, p, None).await
}

/// `POST [base]/Measure/$evaluate-measure` with the parameters in a `Parameters` body
/// (and/or the URL).
pub async fn evaluate_post(
    crate::auth::Scoped(state): crate::auth::Scoped,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> ApiResult {
    let mut p: Pairs = q.as_deref().map(parse_pairs).unwrap_or_default();
    let bytes = read_bytes(body, state.config.max_body_bytes).await?;
    p.extend(parameters(&bytes)?);
    evaluate(state, headers, p, None).await
}

/// `GET [base]/Measure/[id]/$evaluate-measure?periodStart=…&periodEnd=…`.
pub async fn evaluate_instance_get(
    crate::auth::Scoped(state): crate::auth::Scoped,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let p = q.as_deref().map(parse_pairs).unwrap_or_default();
    evaluate(state, headers, p, Some(id)).await
}

/// `POST [base]/Measure/[id]/$evaluate-measure`.
pub async fn evaluate_instance_post(
    crate::auth::Scoped(state): crate::auth::Scoped,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> ApiResult {
    let mut p: Pairs = q.as_deref().map(parse_pairs).unwrap_or_default();
    let bytes = read_bytes(body, state.config.max_body_bytes).await?;
    p.extend(parameters(&bytes)?);
    evaluate(state, headers, p, Some(id)).await
}

/// `GET [base]/$insights`: the dashboard as JSON (census, encounters by class, length
/// of stay, top conditions, measure results).
pub async fn insights(
    crate::auth::Scoped(state): crate::auth::Scoped,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let p = q.as_deref().map(parse_pairs).unwrap_or_default();
    let fmt = response_format(&headers, &p)?;
    let analytics = provider(&state, "the insights dashboard ($insights)")?;
    let v = analytics.insights().await?;
    Ok(json_response(StatusCode::OK, &v, fmt))
}

/// `GET [base]/$insights/{chart}.svg`: one chart of the dashboard, drawn on the server.
pub async fn chart(
    crate::auth::Scoped(state): crate::auth::Scoped,
    Path(chart): Path<String>,
) -> ApiResult {
    let analytics = provider(&state, "the insights dashboard ($insights)")?;
    let Some(name) = chart.strip_suffix(".svg") else {
        return Err(FhirError::NotFound(format!("$insights/{chart}: charts end in .svg")).into());
    };
    let svg = analytics.chart(name).await?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "image/svg+xml")],
        svg,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(s: &str) -> Pairs {
        parse_pairs(s)
    }

    #[test]
    fn measure_requests_are_checked() {
        let r = measure_request(
            &pairs("measure=Measure/ed-visits-per-1000&periodStart=2024-01-01&periodEnd=2024-12-31T23:59:59Z&reportType=subject-list"),
            None,
        )
        .unwrap();
        assert_eq!(r.measure, "ed-visits-per-1000");
        assert_eq!(r.period_end, "2024-12-31");
        assert_eq!(r.report, ReportKind::SubjectList);
        assert_eq!(
            measure_id("urn:salus:measure:readmission-30-day"),
            "readmission-30-day"
        );
        assert!(measure_request(&pairs("measure=x&periodStart=2024"), None).is_err());
        assert!(
            measure_request(&pairs("periodStart=2024-01-01&periodEnd=2024-12-31"), None).is_err()
        );
        assert!(measure_request(
            &pairs("measure=x&periodStart=2024-01-01&periodEnd=2024-12-31&reportType=subject"),
            None
        )
        .is_err());
    }

    #[test]
    fn sql_formats() {
        assert_eq!(SqlFormat::parse("CSV"), Some(SqlFormat::Csv));
        assert_eq!(SqlFormat::parse("ndjson"), Some(SqlFormat::Ndjson));
        assert_eq!(SqlFormat::parse("xml"), None);
    }
}
