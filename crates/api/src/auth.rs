//! Who is calling: the bearer token of every request is verified (by the configured
//! [`Authenticate`]), the request's service is scoped to that caller (every storage
//! access it makes is then decided by the access policy), and the access is recorded
//! in the audit trail.
//!
//! Handlers get the scoped state through the [`Scoped`] extractor; without auth
//! configured it is the server's own (loopback-only mode, see `salus serve`).

use crate::error::ApiError;
use crate::AppState;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use salus_service::salus_access::{Access, Principal};
use salus_service::{AuditRecord, FhirError};
use std::net::SocketAddr;
use std::sync::Arc;

/// The application state as one request's caller may use it.
#[derive(Clone)]
pub struct Scoped(pub AppState);

impl FromRequestParts<AppState> for Scoped {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match parts.extensions.get::<Scoped>() {
            Some(s) => Ok(s.clone()),
            // Fail closed: a route the guard did not see gets no data when auth is on.
            None if state.auth.is_some() => Err(ApiError::Fhir(FhirError::Unauthorized(
                "this request was not authenticated".into(),
            ))),
            None => Ok(Scoped(state.clone())),
        }
    }
}

/// Paths anyone may call: discovery, health and metrics, the device intake (which
/// checks its own device tokens), and the subscription websocket (which accepts only a
/// binding token from `$get-ws-binding-token`).
fn is_public(method: &Method, path: &str, query: Option<&str>) -> bool {
    matches!(
        path,
        "/metadata" | "/health" | "/metrics" | "/devices/messages" | "/$subscription-ws"
    ) || path.starts_with("/.well-known/")
        || (path == "/" && method == Method::GET && query.is_none_or(|q| q.is_empty()))
}

/// The restful-interaction code and audit action of a request.
fn classify(method: &Method, path: &str) -> (&'static str, char, Option<String>) {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let op = segs.iter().any(|s| s.starts_with('$'));
    let entity = match segs.as_slice() {
        [t, id, ..]
            if !t.starts_with('$')
                && !t.starts_with('_')
                && !id.starts_with('$')
                && !id.starts_with('_') =>
        {
            Some(format!("{t}/{id}"))
        }
        _ => None,
    };
    if op {
        return ("operation", 'E', entity);
    }
    let m = method.as_str();
    let code = match (m, segs.as_slice()) {
        ("POST", []) => "transaction",
        ("GET" | "HEAD", []) => "search-system",
        ("GET" | "HEAD", ["_history"]) => "history-system",
        ("GET" | "HEAD", [_]) | ("POST", [_, "_search"]) => "search-type",
        ("GET" | "HEAD", [_, "_history"]) => "history-type",
        ("POST", [_]) => "create",
        ("PUT", [_]) | ("PUT", [_, _]) => "update",
        ("DELETE", [_]) | ("DELETE", [_, _]) => "delete",
        ("PATCH", _) => "patch",
        ("GET" | "HEAD", [_, _]) => "read",
        ("GET" | "HEAD", [_, _, "_history"]) => "history-instance",
        ("GET" | "HEAD", [_, _, "_history", _]) => "vread",
        ("GET" | "HEAD", [_, _, _]) => "search-compartment",
        _ => "operation",
    };
    let action = match code {
        "create" => 'C',
        "update" | "patch" => 'U',
        "delete" => 'D',
        "transaction" | "operation" => 'E',
        _ => 'R',
    };
    (code, action, entity)
}

fn bearer(req: &Request) -> Result<Option<&str>, String> {
    let Some(h) = req.headers().get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let s = h
        .to_str()
        .map_err(|_| "the Authorization header is not text".to_string())?;
    match s.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim()))
        }
        _ => Err("the Authorization header must be 'Bearer <access token>'".into()),
    }
}

fn unauthorized(message: String, error: Option<&str>) -> Response {
    let mut resp = ApiError::Fhir(FhirError::Unauthorized(message.clone())).into_response();
    // RFC 6750 §3: the challenge names the problem.
    let challenge = match error {
        Some(e) => format!(
            "Bearer realm=\"salus\", error=\"{e}\", error_description=\"{}\"",
            message.replace('"', "'")
        ),
        None => "Bearer realm=\"salus\"".to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

/// Middleware: authenticate, scope the service, audit.
pub async fn guard(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_owned);
    if is_public(&method, &path, query.as_deref()) {
        let internal = Scoped(state.clone());
        req.extensions_mut().insert(internal);
        return next.run(req).await;
    }
    let address = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let (interaction, action, entity) = classify(&method, &path);
    let mut record = AuditRecord {
        when: salus_service::time::now_micros(),
        address,
        action,
        interaction: interaction.to_string(),
        request: format!("{method} {path}"),
        query: query.clone().filter(|q| !q.is_empty()),
        entity: entity.clone(),
        patient: entity.filter(|e| e.starts_with("Patient/")),
        ..Default::default()
    };
    let principal: Option<Arc<Principal>> = match &state.auth {
        None => None,
        Some(auth) => {
            let token = match bearer(&req) {
                Ok(Some(t)) => t.to_string(),
                Ok(None) => {
                    let msg = "this server requires an access token (Authorization: Bearer …)"
                        .to_string();
                    audit(&state, record, 401, Some(msg.clone()));
                    return unauthorized(msg, None);
                }
                Err(msg) => {
                    audit(&state, record, 401, Some(msg.clone()));
                    return unauthorized(msg, Some("invalid_request"));
                }
            };
            match auth.authenticate(&token).await {
                Ok(p) => Some(Arc::new(p)),
                Err(e) => {
                    audit(&state, record, 401, Some(e.0.clone()));
                    return unauthorized(e.0, Some("invalid_token"));
                }
            }
        }
    };
    let mut scoped = state.clone();
    if let Some(p) = &principal {
        record.who = Some(p.who());
        record.client_id = p.client_id.clone();
        record.token_id = p.token_id.clone();
        if let Some(pid) = p.patient_context() {
            record.patient = Some(format!("Patient/{pid}"));
        }
        // Purposes of use the request declares (`system|code`, comma-separated).
        let purposes: Vec<String> = req
            .headers()
            .get_all("x-purpose-of-use")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect();
        scoped.service = match state
            .service
            .scoped_with_consent(Access::Caller(p.clone()), &purposes)
            .await
        {
            Ok(s) => s,
            Err(e) => return ApiError::Fhir(e).into_response(),
        };
        req.extensions_mut().insert(p.clone());
        // Bulk jobs belong to the client and subject that kicked them off.
        req.extensions_mut().insert(crate::bulk::BulkCaller {
            subject: format!("{}|{}", p.client_id.as_deref().unwrap_or(""), p.subject),
        });
    }
    req.extensions_mut().insert(Scoped(scoped));
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    let reason = (status == 403).then(|| "access denied by policy".to_string());
    audit(&state, record, status, reason);
    resp
}

fn audit(state: &AppState, mut record: AuditRecord, status: u16, reason: Option<String>) {
    if let Some(trail) = &state.audit {
        record.status = status;
        record.outcome_desc = reason;
        trail.record(record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interactions_are_classified() {
        let c = |m: Method, p: &str| classify(&m, p).0;
        assert_eq!(c(Method::GET, "/Patient/1"), "read");
        assert_eq!(c(Method::GET, "/Patient"), "search-type");
        assert_eq!(c(Method::POST, "/Patient/_search"), "search-type");
        assert_eq!(c(Method::POST, "/Patient"), "create");
        assert_eq!(c(Method::PUT, "/Patient/1"), "update");
        assert_eq!(c(Method::DELETE, "/Patient/1"), "delete");
        assert_eq!(c(Method::GET, "/Patient/1/_history/2"), "vread");
        assert_eq!(
            c(Method::GET, "/Patient/1/Observation"),
            "search-compartment"
        );
        assert_eq!(c(Method::GET, "/Patient/1/$everything"), "operation");
        assert_eq!(c(Method::POST, "/"), "transaction");
        assert_eq!(
            classify(&Method::GET, "/Patient/1").2.as_deref(),
            Some("Patient/1")
        );
    }

    #[test]
    fn public_paths() {
        assert!(is_public(&Method::GET, "/metadata", None));
        assert!(is_public(
            &Method::GET,
            "/.well-known/smart-configuration",
            None
        ));
        assert!(is_public(&Method::GET, "/", None));
        assert!(!is_public(&Method::GET, "/", Some("_type=Patient")));
        assert!(!is_public(&Method::GET, "/Patient", None));
    }
}
