//! The one place errors become HTTP responses with an OperationOutcome.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use salus_fhir::{issue::operation_outcome, Issue, IssueCode};
use salus_service::FhirError;

/// Errors a handler returns.
#[derive(Debug)]
pub enum ApiError {
    /// Anything the service reports.
    Fhir(FhirError),
    /// The body is larger than the configured limit (413).
    TooLarge(usize),
    /// `Content-Type` the server does not read (415).
    UnsupportedMediaType(String),
    /// `Accept` / `_format` the server cannot produce (406).
    NotAcceptable(String),
    /// The body is not JSON (400).
    MalformedJson(String),
    /// Interaction not allowed on this URL (405).
    MethodNotAllowed(String),
    /// Unknown URL (404).
    UnknownPath(String),
}

impl From<FhirError> for ApiError {
    fn from(e: FhirError) -> Self {
        ApiError::Fhir(e)
    }
}

impl ApiError {
    /// Status and OperationOutcome. Every variant is matched: no catch-all.
    pub fn status_and_outcome(&self) -> (StatusCode, serde_json::Value) {
        let one = |code: IssueCode, msg: String| operation_outcome(&[Issue::error(code, msg)]);
        match self {
            ApiError::Fhir(e) => {
                if let FhirError::Internal(detail) = e {
                    tracing::error!(error = %detail, "internal error");
                }
                let (status, oo) = e.to_http();
                (
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    oo,
                )
            }
            ApiError::TooLarge(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                one(
                    IssueCode::TooLong,
                    format!("request body exceeds the limit of {limit} bytes"),
                ),
            ),
            ApiError::UnsupportedMediaType(ct) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                one(
                    IssueCode::NotSupported,
                    format!("Content-Type '{ct}' is not supported; send application/fhir+json"),
                ),
            ),
            ApiError::NotAcceptable(f) => (
                StatusCode::NOT_ACCEPTABLE,
                one(
                    IssueCode::NotSupported,
                    format!("cannot produce '{f}'; this server returns application/fhir+json"),
                ),
            ),
            ApiError::MalformedJson(m) => (
                StatusCode::BAD_REQUEST,
                one(
                    IssueCode::Structure,
                    format!("the body is not valid JSON: {m}"),
                ),
            ),
            ApiError::MethodNotAllowed(m) => (
                StatusCode::METHOD_NOT_ALLOWED,
                one(IssueCode::NotSupported, m.clone()),
            ),
            ApiError::UnknownPath(p) => (
                StatusCode::NOT_FOUND,
                one(IssueCode::NotFound, format!("no FHIR endpoint at '{p}'")),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, oo) = self.status_and_outcome();
        (
            status,
            [(header::CONTENT_TYPE, crate::negotiate::FHIR_JSON)],
            serde_json::to_string(&oo).unwrap_or_default(),
        )
            .into_response()
    }
}

/// A handler panicked: answer 500 with an OperationOutcome (details go to the log).
pub fn panic_response(err: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = err
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    tracing::error!(panic = %detail, "handler panicked");
    ApiError::Fhir(FhirError::Internal(detail)).into_response()
}
