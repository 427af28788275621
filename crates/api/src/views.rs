//! `POST [base]/ViewDefinition/$run` and `POST [base]/$viewdefinition-run`: run a
//! SQL-on-FHIR v2 ViewDefinition (SQL-on-FHIR v2, "$run" operation) over the stored
//! resources or over resources sent inline, answering CSV, NDJSON or JSON.

use crate::error::ApiError;
use crate::negotiate::read_json;
use crate::params::part_value;
use crate::AppState;
use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use salus_service::{time, FhirError, ViewScope};
use salus_views::{Format, RowWriter, View};
use serde_json::Value;

/// The output format: `_format` (query or parameter), else `Accept`, else JSON.
fn output_format(headers: &HeaderMap, requested: Option<&str>) -> Result<Format, ApiError> {
    if let Some(f) = requested {
        return f.parse::<Format>().map_err(|_| {
            ApiError::NotAcceptable(format!("_format '{f}': use csv, ndjson or json"))
        });
    }
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    for part in accept.split(',') {
        let mime = part.split(';').next().unwrap_or("").trim();
        if let Ok(f) = mime.parse::<Format>() {
            return Ok(f);
        }
    }
    Ok(Format::Json)
}

fn content_type(f: Format) -> &'static str {
    match f {
        Format::Csv => "text/csv; charset=utf-8",
        Format::Ndjson => "application/x-ndjson",
        Format::Json => "application/json",
    }
}

/// What a `$run` request asks for.
struct RunRequest {
    view: Value,
    format: Option<String>,
    scope: ViewScope,
    /// Resources sent inline (`resource` parameters): run over these, not the store.
    inline: Option<Vec<Value>>,
}

fn parse_request(pairs: &[(String, String)], body: Value) -> Result<RunRequest, FhirError> {
    let mut req = RunRequest {
        view: Value::Null,
        format: None,
        scope: ViewScope::default(),
        inline: None,
    };
    let set = |name: &str, value: String, req: &mut RunRequest| -> Result<(), FhirError> {
        match name {
            "_format" => req.format = Some(value),
            "_limit" => {
                req.scope.limit = Some(value.parse().map_err(|_| {
                    FhirError::invalid(format!("_limit '{value}' is not a non-negative integer"))
                })?)
            }
            "_since" => {
                req.scope.since = Some(
                    time::parse_range(&value)
                        .ok_or_else(|| {
                            FhirError::invalid(format!("_since '{value}' is not an instant"))
                        })?
                        .0,
                )
            }
            "patient" => req
                .scope
                .patients
                .push(value.trim_start_matches("Patient/").to_string()),
            _ => {}
        }
        Ok(())
    };
    for (k, v) in pairs {
        set(k, v.clone(), &mut req)?;
    }
    if body.get("resourceType").and_then(Value::as_str) == Some("Parameters") {
        for p in body
            .get("parameter")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = p.get("name").and_then(Value::as_str).unwrap_or("");
            match name {
                "viewResource" => {
                    req.view = p.get("resource").cloned().ok_or_else(|| {
                        FhirError::invalid("the viewResource parameter needs a resource")
                    })?
                }
                "resource" => {
                    let r = p.get("resource").cloned().ok_or_else(|| {
                        FhirError::invalid("a resource parameter needs a resource")
                    })?;
                    req.inline.get_or_insert_with(Vec::new).push(r);
                }
                "viewReference" => {
                    return Err(FhirError::NotSupported(
                        "viewReference: ViewDefinitions are not stored on this server yet; send viewResource".into(),
                    ))
                }
                _ => {
                    if let Some(v) = part_value(p) {
                        set(name, v, &mut req)?;
                    }
                }
            }
        }
    } else {
        // the ViewDefinition itself as the body
        req.view = body;
    }
    if req.view.is_null() {
        return Err(FhirError::invalid(
            "send a ViewDefinition, or Parameters with a viewResource",
        ));
    }
    Ok(req)
}

pub async fn view_run(
    state: &AppState,
    headers: &HeaderMap,
    pairs: &[(String, String)],
    body: Body,
) -> Result<Response, ApiError> {
    let value = read_json(headers, body, state.config.max_body_bytes, false).await?;
    let req = parse_request(pairs, value)?;
    let format = output_format(headers, req.format.as_deref())?;
    let view = View::compile(&req.view).map_err(FhirError::from)?;
    let mut out = RowWriter::new(&view, format, Vec::new()).map_err(FhirError::from)?;
    match &req.inline {
        Some(resources) => {
            for r in resources {
                if r.get("resourceType").and_then(Value::as_str) != Some(view.resource_type()) {
                    continue;
                }
                if req.scope.limit.is_some_and(|l| out.rows_written() >= l) {
                    break;
                }
                out.write_resource(r).map_err(FhirError::from)?;
            }
        }
        None => {
            state.service.run_view(&view, &req.scope, &mut out).await?;
        }
    }
    let (bytes, _) = out.finish().map_err(FhirError::from)?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, content_type(format))],
        bytes,
    )
        .into_response())
}
