//! FHIR Subscriptions over HTTP (docs/subscriptions.md): writes of `Subscription` are
//! checked by the engine before they are stored (and record the writer's access grant),
//! `$status`, `$events`, `$get-ws-binding-token`, and the websocket endpoint
//! `/$subscription-ws` (public: a client proves itself with a binding token).
//! Without a subscription engine these routes behave like any other resource's.

use crate::auth::Scoped;
use crate::error::ApiError;
use crate::handlers::{self, base_url, if_match, write_response};
use crate::negotiate::{json_response, read_json, response_format};
use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use salus_service::salus_access::Principal;
use salus_service::{parse_pairs, FhirError};
use serde_json::Value;
use std::sync::Arc;

type ApiResult = Result<Response, ApiError>;
const TYPE: &str = "Subscription";

fn pairs(q: &Option<String>) -> Vec<(String, String)> {
    q.as_deref().map(parse_pairs).unwrap_or_default()
}

/// Check, record the grant, write; on a refused write the previous grant comes back.
async fn write_checked(
    state: &crate::AppState,
    principal: Option<Arc<Principal>>,
    id: &str,
    value: Value,
    if_match: Option<u64>,
) -> Result<salus_service::WriteOutcome, ApiError> {
    let Some(engine) = &state.subscriptions else {
        return Ok(state.service.update(TYPE, id, value, if_match).await?);
    };
    let mut value = value;
    if let Some(o) = value.as_object_mut() {
        o.insert("id".into(), id.into());
    }
    let spec = engine.check(&value)?;
    let previous = match &principal {
        Some(p) => Some(engine.record_grant(id, &spec, p).await?),
        None => None,
    };
    match state.service.update(TYPE, id, value, if_match).await {
        Ok(out) => Ok(out),
        Err(e) => {
            if let Some(prev) = previous {
                if let Err(re) = engine.restore_grant(id, prev).await {
                    tracing::warn!(error = %re, "cannot restore a subscription grant");
                }
            }
            Err(e.into())
        }
    }
}

/// `POST /Subscription`.
pub async fn create(
    Scoped(state): Scoped,
    principal: Option<Extension<Arc<Principal>>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> ApiResult {
    if state.subscriptions.is_none() || headers.contains_key("if-none-exist") {
        if state.subscriptions.is_some() {
            return Err(FhirError::NotSupported(
                "conditional create of Subscriptions; POST without If-None-Exist".into(),
            )
            .into());
        }
        return handlers::create_or_op(
            Scoped(state),
            Path(TYPE.into()),
            headers,
            RawQuery(q),
            body,
        )
        .await;
    }
    let fmt = response_format(&headers, &pairs(&q))?;
    let value = read_json(&headers, body, state.config.max_body_bytes, false).await?;
    if value.get("resourceType").and_then(Value::as_str) != Some(TYPE) {
        return Err(FhirError::invalid("the body must be a Subscription").into());
    }
    let id = uuid::Uuid::new_v4().to_string();
    let base = base_url(&state, &headers);
    let out = write_checked(&state, principal.map(|p| p.0), &id, value, None).await?;
    Ok(write_response(out, &headers, fmt, &base))
}

/// `PUT /Subscription/[id]`.
pub async fn update(
    Scoped(state): Scoped,
    principal: Option<Extension<Arc<Principal>>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> ApiResult {
    let fmt = response_format(&headers, &pairs(&q))?;
    let value = read_json(&headers, body, state.config.max_body_bytes, false).await?;
    let base = base_url(&state, &headers);
    let out = write_checked(
        &state,
        principal.map(|p| p.0),
        &id,
        value,
        if_match(&headers)?,
    )
    .await?;
    Ok(write_response(out, &headers, fmt, &base))
}

/// `PATCH /Subscription/[id]`: refused while the engine runs (a patched subscription
/// could not be checked before it is stored).
pub async fn patch(
    Scoped(state): Scoped,
    Path(id): Path<String>,
    headers: HeaderMap,
    q: RawQuery,
    body: Body,
) -> ApiResult {
    if state.subscriptions.is_some() {
        return Err(ApiError::MethodNotAllowed(
            "PATCH of a Subscription is not supported; PUT the whole resource".into(),
        ));
    }
    handlers::patch(Scoped(state), Path((TYPE.into(), id)), headers, q, body).await
}

/// `PUT /Subscription?criteria`: refused while the engine runs.
pub async fn conditional_update(
    Scoped(state): Scoped,
    headers: HeaderMap,
    q: RawQuery,
    body: Body,
) -> ApiResult {
    if state.subscriptions.is_some() {
        return Err(ApiError::MethodNotAllowed(
            "conditional update of Subscriptions is not supported; PUT Subscription/[id]".into(),
        ));
    }
    handlers::conditional_update(Scoped(state), Path(TYPE.into()), headers, q, body).await
}

pub async fn search(s: Scoped, headers: HeaderMap, q: RawQuery) -> ApiResult {
    handlers::search_type(s, Path(TYPE.into()), headers, q).await
}

pub async fn conditional_delete(s: Scoped, headers: HeaderMap, q: RawQuery) -> ApiResult {
    handlers::conditional_delete(s, Path(TYPE.into()), headers, q).await
}

pub async fn read(s: Scoped, Path(id): Path<String>, headers: HeaderMap, q: RawQuery) -> ApiResult {
    handlers::read(s, Path((TYPE.into(), id)), headers, q).await
}

pub async fn delete(s: Scoped, Path(id): Path<String>, headers: HeaderMap) -> ApiResult {
    handlers::delete(s, Path((TYPE.into(), id)), headers).await
}

pub async fn instance_op(
    s: Scoped,
    Path(id): Path<String>,
    headers: HeaderMap,
    q: RawQuery,
    body: Body,
) -> ApiResult {
    handlers::instance_op(s, Path((TYPE.into(), id)), headers, q, body).await
}

fn engine(state: &crate::AppState) -> Result<&salus_subscriptions::Engine, ApiError> {
    state.subscriptions.as_ref().ok_or_else(|| {
        FhirError::NotSupported("subscriptions are not enabled on this server".into()).into()
    })
}

/// Parameters from the query string and, for POST, a `Parameters` body.
async fn op_params(
    state: &crate::AppState,
    headers: &HeaderMap,
    q: &Option<String>,
    body: Body,
) -> Result<Vec<(String, String)>, ApiError> {
    let mut out: Vec<(String, String)> = pairs(q);
    let bytes = axum::body::to_bytes(body, state.config.max_body_bytes)
        .await
        .map_err(|_| ApiError::TooLarge(state.config.max_body_bytes))?;
    if !bytes.is_empty() {
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| FhirError::invalid(format!("the body is not JSON: {e}")))?;
        if v["resourceType"] != "Parameters" {
            return Err(FhirError::invalid("the body of this operation must be Parameters").into());
        }
        for p in v["parameter"].as_array().into_iter().flatten() {
            let name = p["name"].as_str().unwrap_or_default().to_string();
            let value = [
                "valueString",
                "valueCode",
                "valueId",
                "valueInteger",
                "valueUnsignedInt",
                "valuePositiveInt",
            ]
            .iter()
            .find_map(|k| p.get(*k))
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string())
            });
            if let Some(value) = value {
                out.push((name, value));
            }
        }
    }
    let _ = headers;
    Ok(out)
}

fn number(p: &[(String, String)], name: &str) -> Result<Option<u64>, ApiError> {
    match p.iter().find(|(k, _)| k == name) {
        None => Ok(None),
        Some((_, v)) => v.parse().map(Some).map_err(|_| {
            FhirError::invalid(format!("{name} must be an event number, got '{v}'")).into()
        }),
    }
}

/// `Subscription/[id]/$status`.
pub async fn status(
    Scoped(state): Scoped,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let fmt = response_format(&headers, &pairs(&q))?;
    let b = engine(&state)?.status(&state.service, &id).await?;
    Ok(json_response(StatusCode::OK, &b, fmt))
}

/// `Subscription/[id]/$events`.
pub async fn events(
    Scoped(state): Scoped,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> ApiResult {
    let fmt = response_format(&headers, &pairs(&q))?;
    let p = op_params(&state, &headers, &q, body).await?;
    let since = number(&p, "eventsSinceNumber")?;
    let until = number(&p, "eventsUntilNumber")?;
    let content = p
        .iter()
        .find(|(k, _)| k == "content")
        .map(|(_, v)| v.as_str());
    let b = engine(&state)?
        .events(&state.service, &id, since, until, content)
        .await?;
    Ok(json_response(StatusCode::OK, &b, fmt))
}

/// `Subscription/$get-ws-binding-token` (ids in `id` parameters).
pub async fn ws_token_type(
    Scoped(state): Scoped,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> ApiResult {
    let fmt = response_format(&headers, &pairs(&q))?;
    let p = op_params(&state, &headers, &q, body).await?;
    let ids: Vec<String> = p
        .iter()
        .filter(|(k, _)| k == "id")
        .flat_map(|(_, v)| v.split(','))
        .map(|v| v.trim().trim_start_matches("Subscription/").to_string())
        .filter(|v| !v.is_empty())
        .collect();
    let b = engine(&state)?.ws_token(&state.service, &ids).await?;
    Ok(json_response(StatusCode::OK, &b, fmt))
}

/// `Subscription/[id]/$get-ws-binding-token`.
pub async fn ws_token_instance(
    Scoped(state): Scoped,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let fmt = response_format(&headers, &pairs(&q))?;
    let b = engine(&state)?.ws_token(&state.service, &[id]).await?;
    Ok(json_response(StatusCode::OK, &b, fmt))
}

/// `GET /$subscription-ws`: the websocket channel.
pub async fn websocket(
    State(state): State<crate::AppState>,
    upgrade: WebSocketUpgrade,
) -> ApiResult {
    let engine = engine(&state)?.clone();
    Ok(upgrade
        .on_upgrade(move |socket| serve_socket(engine, socket))
        .into_response())
}

async fn serve_socket(engine: salus_subscriptions::Engine, mut socket: WebSocket) {
    // The client has 30 s to bind.
    let first = tokio::time::timeout(std::time::Duration::from_secs(30), socket.recv()).await;
    let token = match first {
        Ok(Some(Ok(Message::Text(t)))) => {
            match t.as_str().trim().strip_prefix("bind-with-token ") {
                Some(tok) => tok.trim().to_string(),
                None => {
                    let _ = socket
                        .send(Message::Text(
                            "error: send 'bind-with-token <token>' first".into(),
                        ))
                        .await;
                    return;
                }
            }
        }
        _ => return,
    };
    let mut session = match engine.ws_bind(&token).await {
        Ok(s) => s,
        Err(e) => {
            let _ = socket
                .send(Message::Text(format!("error: {e}").into()))
                .await;
            return;
        }
    };
    loop {
        tokio::select! {
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(t))) if t.as_str().trim() == "ping" => {
                    if socket.send(Message::Text("pong".into())).await.is_err() { return; }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
            out = session.next() => match out {
                Ok(texts) => {
                    for t in texts {
                        if socket.send(Message::Text(t.into())).await.is_err() { return; }
                    }
                }
                Err(e) => {
                    let _ = socket.send(Message::Text(format!("error: {e}").into())).await;
                    return;
                }
            }
        }
    }
}

/// The CapabilityStatement additions: topics (Backport IG
/// `capabilitystatement-subscriptiontopic-canonical`) and the operations.
pub fn advertise(engine: &salus_subscriptions::Engine, statement: &mut Value) {
    use salus_subscriptions::backport as b;
    let Some(resources) = statement
        .pointer_mut("/rest/0/resource")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    let Some(sub) = resources.iter_mut().find(|r| r["type"] == TYPE) else {
        return;
    };
    let topics: Vec<Value> = engine
        .topics()
        .all()
        .iter()
        .map(|t| serde_json::json!({"url": b::TOPIC_CANONICAL, "valueCanonical": t.url}))
        .collect();
    sub["extension"] = Value::Array(topics);
    sub["supportedProfile"] = serde_json::json!([b::SUBSCRIPTION_PROFILE]);
    if let Some(ops) = sub["operation"].as_array_mut() {
        ops.push(serde_json::json!({"name": "status", "definition": b::STATUS_OPERATION}));
        ops.push(serde_json::json!({"name": "events", "definition": b::EVENTS_OPERATION}));
        ops.push(serde_json::json!({"name": "get-ws-binding-token", "definition": b::WS_TOKEN_OPERATION}));
    }
    if let Some(ints) = sub["interaction"].as_array_mut() {
        ints.retain(|i| i["code"] != "patch");
    }
}
