//! The service's error type. The HTTP layer maps each variant to a status code and an
//! OperationOutcome in exactly one place; the variants say *what* went wrong.

use salus_fhir::{Issue, IssueCode};
use salus_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum FhirError {
    /// The request content is invalid (400); every problem is listed.
    #[error("invalid request: {}", summarize(.0))]
    Invalid(Vec<Issue>),
    /// The resource type in a URL is not an R4 resource type (404).
    #[error("unknown resource type '{0}'")]
    UnknownType(String),
    /// No such resource or version (404).
    #[error("{0} not found")]
    NotFound(String),
    /// The resource was deleted (410).
    #[error("{0} has been deleted")]
    Gone(String),
    /// `If-Match` did not match, or a conditional operation matched several resources (412).
    #[error("{0}")]
    PreconditionFailed(String),
    /// A write conflicted with a concurrent one (409).
    #[error("{0}")]
    Conflict(String),
    /// The request asks for something the server does not support (400 / 501 via code).
    #[error("not supported: {0}")]
    NotSupported(String),
    /// The store is busy; the client may retry (503).
    #[error("server busy: {0}")]
    Busy(String),
    /// No valid credentials (401).
    #[error("{0}")]
    Unauthorized(String),
    /// The caller's access does not allow this (403).
    #[error("{0}")]
    Forbidden(String),
    /// Anything else (500); details are logged, not sent.
    #[error("internal error: {0}")]
    Internal(String),
}

fn summarize(issues: &[Issue]) -> String {
    issues
        .iter()
        .map(|i| match &i.expression {
            Some(e) => format!("{e}: {}", i.diagnostics),
            None => i.diagnostics.clone(),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl FhirError {
    pub fn invalid(diagnostics: impl Into<String>) -> Self {
        FhirError::Invalid(vec![Issue::error(IssueCode::Invalid, diagnostics)])
    }

    pub fn invalid_at(code: IssueCode, expr: impl Into<String>, msg: impl Into<String>) -> Self {
        FhirError::Invalid(vec![Issue::error(code, msg).at(expr)])
    }

    /// The issues to put in an OperationOutcome for this error.
    pub fn issues(&self) -> Vec<Issue> {
        match self {
            FhirError::Invalid(issues) => issues.clone(),
            FhirError::UnknownType(_) => {
                vec![Issue::error(IssueCode::NotSupported, self.to_string())]
            }
            FhirError::NotFound(_) => vec![Issue::error(IssueCode::NotFound, self.to_string())],
            FhirError::Gone(_) => vec![Issue::error(IssueCode::Deleted, self.to_string())],
            FhirError::PreconditionFailed(_) => {
                vec![Issue::error(IssueCode::Conflict, self.to_string())]
            }
            FhirError::Conflict(_) => vec![Issue::error(IssueCode::Conflict, self.to_string())],
            FhirError::NotSupported(_) => {
                vec![Issue::error(IssueCode::NotSupported, self.to_string())]
            }
            FhirError::Busy(_) => vec![Issue::error(IssueCode::Transient, "server busy, retry")],
            FhirError::Unauthorized(_) => vec![Issue::error(IssueCode::Login, self.to_string())],
            FhirError::Forbidden(_) => vec![Issue::error(IssueCode::Forbidden, self.to_string())],
            FhirError::Internal(_) => vec![Issue::error(
                IssueCode::Exception,
                "internal server error; see the server log",
            )],
        }
    }

    /// Prefix every issue's location with the Bundle entry it came from.
    pub fn in_entry(self, index: usize) -> Self {
        match self {
            FhirError::Invalid(issues) => FhirError::Invalid(
                issues
                    .into_iter()
                    .map(|mut i| {
                        i.expression = Some(match i.expression {
                            Some(e) => format!("Bundle.entry[{index}].resource.{}", strip_type(&e)),
                            None => format!("Bundle.entry[{index}]"),
                        });
                        i
                    })
                    .collect(),
            ),
            FhirError::NotFound(m) => FhirError::NotFound(format!("Bundle.entry[{index}]: {m}")),
            FhirError::Gone(m) => FhirError::Gone(format!("Bundle.entry[{index}]: {m}")),
            FhirError::PreconditionFailed(m) => {
                FhirError::PreconditionFailed(format!("Bundle.entry[{index}]: {m}"))
            }
            FhirError::Conflict(m) => FhirError::Conflict(format!("Bundle.entry[{index}]: {m}")),
            FhirError::Forbidden(m) => FhirError::Forbidden(format!("Bundle.entry[{index}]: {m}")),
            FhirError::NotSupported(m) => {
                FhirError::NotSupported(format!("Bundle.entry[{index}]: {m}"))
            }
            FhirError::UnknownType(t) => FhirError::Invalid(vec![Issue::error(
                IssueCode::NotSupported,
                format!("unknown resource type '{t}'"),
            )
            .at(format!("Bundle.entry[{index}]"))]),
            other => other,
        }
    }
}

/// `Patient.name[0]` → `name[0]`; leaves expressions without a type prefix alone.
fn strip_type(expr: &str) -> &str {
    match expr.split_once('.') {
        Some((head, rest)) if head.chars().next().is_some_and(|c| c.is_ascii_uppercase()) => rest,
        _ => expr,
    }
}

impl From<StoreError> for FhirError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::VersionConflict { rtype, id, .. } => FhirError::Conflict(format!(
                "{rtype}/{id} was changed by another request; retry"
            )),
            StoreError::Unsupported(m) => FhirError::NotSupported(m),
            StoreError::Busy(m) => FhirError::Busy(m),
            StoreError::Forbidden(m) => FhirError::Forbidden(m),
            StoreError::Backend(m) => FhirError::Internal(m),
        }
    }
}

impl FhirError {
    /// The HTTP status and OperationOutcome for this error — the one place errors
    /// become responses (used by the HTTP layer and for Bundle entry responses).
    pub fn to_http(&self) -> (u16, serde_json::Value) {
        let status = match self {
            FhirError::Invalid(_) => 400,
            FhirError::UnknownType(_) => 404,
            FhirError::NotFound(_) => 404,
            FhirError::Gone(_) => 410,
            FhirError::PreconditionFailed(_) => 412,
            FhirError::Conflict(_) => 409,
            FhirError::NotSupported(_) => 400,
            FhirError::Busy(_) => 503,
            FhirError::Unauthorized(_) => 401,
            FhirError::Forbidden(_) => 403,
            FhirError::Internal(_) => 500,
        };
        (status, salus_fhir::issue::operation_outcome(&self.issues()))
    }
}

/// `201 Created` style status line for Bundle entry responses.
pub fn status_line(code: u16) -> String {
    let reason = match code {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        410 => "Gone",
        412 => "Precondition Failed",
        422 => "Unprocessable Entity",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    };
    format!("{code} {reason}").trim_end().to_string()
}
