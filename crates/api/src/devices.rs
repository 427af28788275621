//! `POST [base]/devices/messages`: the HTTP device source (issue: remote patient
//! monitoring). A JSON device message, or an array of them, is handed to the configured
//! sink (the device pipeline); `202 Accepted` only once the sink has stored it, otherwise
//! an error the sender retries on (at-least-once; the pipeline's writes are idempotent).
//! Devices or their gateways authenticate with a bearer token from the configuration.

use crate::error::ApiError;
use crate::negotiate::{json_response, read_bytes, Format};
use crate::AppState;
use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use salus_fhir::{issue::operation_outcome, Issue, IssueCode};
use salus_service::FhirError;
use std::sync::Arc;

/// The HTTP device source's settings.
pub struct DeviceEndpoint {
    pub sink: Arc<dyn salus_ingest::Sink>,
    /// Bearer tokens accepted (one per device or gateway); empty: no token needed (only
    /// sensible on a loopback-only server).
    pub tokens: Vec<String>,
    /// The pipeline behind the sink, whose ingestion totals `/metrics` shows.
    pub ingest: Option<Arc<salus_service::DeviceIngest>>,
}

/// Compare without leaking, through timing, how much of a token matched.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn outcome(status: StatusCode, code: IssueCode, msg: &str) -> Response {
    let issue = if status.is_success() {
        Issue::information(msg)
    } else {
        Issue::error(code, msg)
    };
    json_response(status, &operation_outcome(&[issue]), Format::default())
}

pub async fn messages(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Some(endpoint) = &state.devices else {
        return Err(FhirError::NotSupported(
            "device ingestion is not configured on this server ([devices] in the configuration)"
                .into(),
        )
        .into());
    };
    if !endpoint.tokens.is_empty() {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !endpoint
            .tokens
            .iter()
            .any(|t| same_secret(t.as_bytes(), given.as_bytes()))
        {
            let mut r = outcome(
                StatusCode::UNAUTHORIZED,
                IssueCode::Login,
                "a device token is required (Authorization: Bearer …)",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return Ok(r);
        }
    }
    let bytes = read_bytes(body, state.config.max_body_bytes).await?;
    match endpoint.sink.deliver(&bytes, "http").await {
        Ok(()) => Ok(outcome(
            StatusCode::ACCEPTED,
            IssueCode::Informational,
            "accepted: stored (messages that could not be mapped are kept as dead letters: GET /Basic?code=device-dead-letter)",
        )),
        Err(e) => {
            tracing::warn!(error = %e, "device message not stored");
            let mut r = outcome(
                StatusCode::SERVICE_UNAVAILABLE,
                IssueCode::Transient,
                "the message could not be stored now; send it again",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            Ok(r)
        }
    }
}
