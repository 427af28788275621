//! Content negotiation, `Prefer`, request bodies and FHIR JSON responses.

use crate::error::ApiError;
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use salus_service::Return;
use serde_json::Value;

pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// How to write the response body.
#[derive(Debug, Clone, Copy, Default)]
pub struct Format {
    pub pretty: bool,
}

fn is_json_mime(m: &str) -> bool {
    let m = m
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    matches!(
        m.as_str(),
        "application/fhir+json"
            | "application/json"
            | "json"
            | "application/json+fhir"
            | "*/*"
            | "application/*"
    )
}

/// Decide the response format from `_format`, `_pretty` and `Accept` (R4 http.html#mime-type).
pub fn response_format(
    headers: &HeaderMap,
    pairs: &[(String, String)],
) -> Result<Format, ApiError> {
    let mut fmt = Format::default();
    for (k, v) in pairs {
        match k.as_str() {
            "_format" if !is_json_mime(v) => return Err(ApiError::NotAcceptable(v.clone())),
            "_pretty" => fmt.pretty = v == "true",
            _ => {}
        }
    }
    if !pairs.iter().any(|(k, _)| k == "_format") {
        if let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) {
            if !accept.trim().is_empty() && !accept.split(',').any(is_json_mime) {
                return Err(ApiError::NotAcceptable(accept.to_string()));
            }
        }
    }
    Ok(fmt)
}

/// `Prefer: return=…`.
pub fn prefer_return(headers: &HeaderMap) -> Return {
    for v in headers.get_all("prefer") {
        if let Ok(s) = v.to_str() {
            for part in s.split([',', ';']) {
                match part.trim() {
                    "return=minimal" => return Return::Minimal,
                    "return=OperationOutcome" => return Return::OperationOutcome,
                    "return=representation" => return Return::Representation,
                    _ => {}
                }
            }
        }
    }
    Return::Representation
}

/// Read a request body of at most `limit` bytes.
pub async fn read_bytes(body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::TooLarge(limit))
}

/// Read a JSON body after checking `Content-Type` (`patch` accepts JSON Patch).
pub async fn read_json(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    patch: bool,
) -> Result<Value, ApiError> {
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if len > limit {
            return Err(ApiError::TooLarge(limit));
        }
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let ok = if patch {
        matches!(
            mime.as_str(),
            "application/json-patch+json" | "application/json"
        )
    } else {
        matches!(
            mime.as_str(),
            "application/fhir+json" | "application/json" | "application/json+fhir" | ""
        )
    };
    if !ok {
        return Err(ApiError::UnsupportedMediaType(ct.to_string()));
    }
    let bytes = read_bytes(body, limit).await?;
    if bytes.is_empty() {
        return Err(ApiError::MalformedJson("the body is empty".into()));
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::MalformedJson(e.to_string()))
}

/// Serialise a JSON value as a FHIR response.
pub fn json_response(status: StatusCode, value: &Value, fmt: Format) -> Response {
    let body = if fmt.pretty {
        serde_json::to_string_pretty(value)
    } else {
        serde_json::to_string(value)
    }
    .unwrap_or_default();
    (status, [(header::CONTENT_TYPE, FHIR_JSON)], body).into_response()
}

/// A stored resource text as a response, re-encoding only when pretty printing.
pub fn text_response(status: StatusCode, text: String, fmt: Format) -> Response {
    if fmt.pretty {
        if let Ok(v) = serde_json::from_str::<Value>(&text) {
            return json_response(status, &v, fmt);
        }
    }
    (status, [(header::CONTENT_TYPE, FHIR_JSON)], text).into_response()
}

pub fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}
