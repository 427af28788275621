//! The HTTP layer of Salus: an axum [`Router`] that translates FHIR REST (R4
//! http.html) into calls on the [`FhirService`] and back.
//!
//! Owns: routing, content negotiation (`_format`, `Accept`, `Content-Type`), `Prefer`,
//! `_pretty`, ETag / `If-Match` / `If-None-Exist` headers, body limits, and the one
//! mapping from errors to HTTP statuses with an OperationOutcome ([`error::ApiError`]).
//! Must not touch: storage or FHIR rules — those live in `salus-service`.

mod capability;
pub mod error;
mod handlers;
mod negotiate;
mod views;

use axum::routing::{get, post};
use axum::Router;
use salus_service::FhirService;
use std::sync::Arc;
use std::time::Instant;

/// Settings of the HTTP layer.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Public base URL (`https://fhir.example.org/fhir`); derived from `Host` when unset.
    pub base_url: Option<String>,
    /// Largest request body accepted, in bytes (larger → 413).
    pub max_body_bytes: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            base_url: None,
            max_body_bytes: 32 * 1024 * 1024,
        }
    }
}

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub service: FhirService,
    pub config: Arc<ApiConfig>,
    pub started: Instant,
    pub metrics: Arc<handlers::Metrics>,
}

impl AppState {
    pub fn new(service: FhirService, config: ApiConfig) -> Self {
        AppState {
            service,
            config: Arc::new(config),
            started: Instant::now(),
            metrics: Arc::default(),
        }
    }
}

/// The complete FHIR API router.
pub fn router(state: AppState) -> Router {
    use handlers::*;
    Router::new()
        .route("/", post(bundle).get(root))
        .route("/metadata", get(metadata))
        .route("/$reindex", get(reindex_status).post(reindex_start))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/_history", get(history_system))
        .route(
            "/{rtype}",
            get(search_type)
                .post(create_or_op)
                .put(conditional_update)
                .delete(conditional_delete),
        )
        .route("/{rtype}/_search", post(search_post))
        .route("/{rtype}/_history", get(history_type))
        .route(
            "/{rtype}/{id}",
            get(read)
                .put(update)
                .patch(patch)
                .delete(delete)
                .post(instance_op),
        )
        .route("/{rtype}/{id}/_history", get(history_instance))
        .route("/{rtype}/{id}/{ctype}", get(search_compartment))
        .route("/{rtype}/{id}/_history/{vid}", get(vread))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            handlers::observe,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            error::panic_response,
        ))
        .with_state(state)
}
