//! The HTTP layer of Salus: an axum [`Router`] that translates FHIR REST (R4
//! http.html) into calls on the [`FhirService`] and back.
//!
//! Owns: routing, content negotiation (`_format`, `Accept`, `Content-Type`), `Prefer`,
//! `_pretty`, ETag / `If-Match` / `If-None-Exist` headers, body limits, and the one
//! mapping from errors to HTTP statuses with an OperationOutcome ([`error::ApiError`]).
//! Must not touch: storage or FHIR rules — those live in `salus-service`.

pub mod analytics;
pub mod auth;
pub mod bulk;
mod capability;
mod convert;
pub mod devices;
pub mod error;
mod handlers;
pub mod hardening;
mod negotiate;
mod params;
pub mod scheduling;
mod subscriptions;
mod views;

use axum::routing::{get, post};
use axum::Router;
use salus_service::FhirService;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Settings of the HTTP layer.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Public base URL (`https://fhir.example.org/fhir`); derived from `Host` when unset.
    pub base_url: Option<String>,
    /// Largest request body accepted, in bytes (larger → 413).
    pub max_body_bytes: usize,
    /// Send `Strict-Transport-Security` (the server speaks TLS).
    pub hsts: bool,
    /// The SMART authorization endpoints `/metadata` advertises (`rest.security`), when
    /// the built-in authorization server runs.
    pub smart: Option<SmartEndpoints>,
}

/// OAuth endpoints for the CapabilityStatement's SMART `oauth-uris` extension.
#[derive(Debug, Clone)]
pub struct SmartEndpoints {
    pub authorize: String,
    pub token: String,
    pub revoke: Option<String>,
    pub introspect: Option<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            base_url: None,
            max_body_bytes: 32 * 1024 * 1024,
            hsts: false,
            smart: None,
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
    /// HL7 v2 messages taken over MLLP (the binary's handler counts them; `/metrics`
    /// exports them next to the HTTP counters).
    pub hl7_metrics: Arc<Hl7Metrics>,
    /// How `$convert-data` maps v2 values (identifier systems, default zone): the same
    /// settings as the MLLP intake, so both give the same Bundle for a message.
    pub convert_options: Arc<salus_hl7v2::ConvertOptions>,
    /// The HTTP device source (`POST /devices/messages`), when devices are configured.
    pub devices: Option<Arc<devices::DeviceEndpoint>>,
    /// Verifies bearer tokens; `None`: no authorization (loopback-only mode).
    pub auth: Option<Arc<dyn salus_service::salus_access::Authenticate>>,
    /// Where accesses are recorded; `None`: no audit trail.
    pub audit: Option<salus_service::AuditTrail>,
    /// Per-client request limits; `None`: unlimited.
    pub rate_limiter: Option<Arc<hardening::RateLimiter>>,
    /// Bulk data jobs (`$export`, `$import`), when enabled.
    pub bulk: Option<Arc<salus_bulk::BulkEngine>>,
    /// Scheduling settings and the video provider (`Appointment/$book` and friends).
    pub scheduling: Arc<salus_service::scheduling::Scheduling>,
    /// The subscription engine (docs/subscriptions.md), when enabled.
    pub subscriptions: Option<salus_subscriptions::Engine>,
    /// SQL over the materialized views and the population measures (`$sql`,
    /// `Measure/$evaluate-measure`, `$insights`; docs/analytics.md), when enabled. A
    /// trait object: the engine (DataFusion) lives in the binary, not in this crate.
    pub analytics: Option<Arc<dyn analytics::AnalyticsProvider>>,
}

impl AppState {
    pub fn new(service: FhirService, config: ApiConfig) -> Self {
        AppState {
            service,
            config: Arc::new(config),
            started: Instant::now(),
            metrics: Arc::default(),
            hl7_metrics: Arc::default(),
            convert_options: Arc::default(),
            devices: None,
            auth: None,
            audit: None,
            rate_limiter: None,
            bulk: None,
            scheduling: Arc::default(),
            subscriptions: None,
            analytics: None,
        }
    }

    /// Require a valid bearer token on every data path, verified by `auth`; each
    /// request's service is then scoped to its caller.
    pub fn with_auth(mut self, auth: Arc<dyn salus_service::salus_access::Authenticate>) -> Self {
        self.auth = Some(auth);
        self
    }

    /// Limit each client to `per_second` requests (bursts of `burst`).
    pub fn with_rate_limit(mut self, per_second: f64, burst: u32) -> Self {
        self.rate_limiter = Some(Arc::new(hardening::RateLimiter::new(per_second, burst)));
        self
    }

    /// Record every access in this audit trail.
    pub fn with_audit(mut self, trail: salus_service::AuditTrail) -> Self {
        self.audit = Some(trail);
        self
    }

    /// Serve `$export` / `$import` through this engine.
    pub fn with_bulk(mut self, engine: salus_bulk::BulkEngine) -> Self {
        self.bulk = Some(Arc::new(engine));
        self
    }

    /// Accept device messages over HTTP, delivering them to this endpoint's sink.
    pub fn with_devices(mut self, endpoint: devices::DeviceEndpoint) -> Self {
        self.devices = Some(Arc::new(endpoint));
        self
    }

    /// Use these scheduling settings (hold time, reminders, video provider).
    pub fn with_scheduling(mut self, scheduling: salus_service::scheduling::Scheduling) -> Self {
        self.scheduling = Arc::new(scheduling);
        self
    }

    /// Check Subscription writes with this engine and serve its operations.
    pub fn with_subscriptions(mut self, engine: salus_subscriptions::Engine) -> Self {
        self.subscriptions = Some(engine);
        self
    }

    /// Serve `$sql`, `Measure/$evaluate-measure` and `$insights` through this provider.
    pub fn with_analytics(mut self, provider: Arc<dyn analytics::AnalyticsProvider>) -> Self {
        self.analytics = Some(provider);
        self
    }

    /// Use these conversion settings for `$convert-data`.
    pub fn with_convert_options(mut self, options: salus_hl7v2::ConvertOptions) -> Self {
        self.convert_options = Arc::new(options);
        self
    }
}

/// Counters of HL7 v2 messages by acknowledgement code, for `/metrics`.
#[derive(Default)]
pub struct Hl7Metrics {
    /// AA, AE, AR.
    by_code: [AtomicU64; 3],
    /// Time from receipt to ACK (conversion, storage, commit), summed.
    latency_micros: AtomicU64,
}

impl Hl7Metrics {
    /// Count one message answered with `code` after `micros` microseconds.
    pub fn record(&self, code: salus_hl7v2::AckCode, micros: u64) {
        let i = match code {
            salus_hl7v2::AckCode::Accept => 0,
            salus_hl7v2::AckCode::Error => 1,
            salus_hl7v2::AckCode::Reject => 2,
        };
        self.by_code[i].fetch_add(1, Ordering::Relaxed);
        self.latency_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Messages counted so far with `code`.
    pub fn count(&self, code: salus_hl7v2::AckCode) -> u64 {
        let i = match code {
            salus_hl7v2::AckCode::Accept => 0,
            salus_hl7v2::AckCode::Error => 1,
            salus_hl7v2::AckCode::Reject => 2,
        };
        self.by_code[i].load(Ordering::Relaxed)
    }

    /// The Prometheus text lines.
    fn prometheus(&self) -> String {
        let mut out = String::from(
            "# HELP salus_hl7_messages_total HL7 v2 messages received over MLLP, by ACK code.\n# TYPE salus_hl7_messages_total counter\n",
        );
        let mut total = 0;
        for (i, code) in ["AA", "AE", "AR"].iter().enumerate() {
            let n = self.by_code[i].load(Ordering::Relaxed);
            total += n;
            out.push_str(&format!("salus_hl7_messages_total{{ack=\"{code}\"}} {n}\n"));
        }
        out.push_str("# HELP salus_hl7_message_duration_seconds_sum Time from receipt to ACK, summed.\n# TYPE salus_hl7_message_duration_seconds_sum counter\n");
        out.push_str(&format!(
            "salus_hl7_message_duration_seconds_sum {}\nsalus_hl7_message_duration_seconds_count {total}\n",
            self.latency_micros.load(Ordering::Relaxed) as f64 / 1e6
        ));
        out
    }
}

/// `/metrics`: the HTTP and storage counters, then the HL7 v2 ones.
async fn metrics_with_hl7(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> axum::response::Response {
    let mut hl7 = state.hl7_metrics.prometheus();
    if let Some(ingest) = state.devices.as_ref().and_then(|d| d.ingest.as_ref()) {
        hl7.push_str(&ingest.counters().prometheus());
    }
    let resp = handlers::metrics(axum::extract::State(state)).await;
    let (mut parts, body) = resp.into_parts();
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    let mut text = axum::body::to_bytes(body, usize::MAX)
        .await
        .map(|b| b.to_vec())
        .unwrap_or_default();
    text.extend_from_slice(hl7.as_bytes());
    axum::response::Response::from_parts(parts, axum::body::Body::from(text))
}

/// The complete FHIR API router.
pub fn router(state: AppState) -> Router {
    use handlers::*;
    Router::new()
        .route("/", post(bundle).get(root))
        .route("/metadata", get(metadata))
        .route("/$reindex", get(reindex_status).post(reindex_start))
        .route("/health", get(health))
        .route("/devices/messages", post(device_messages))
        .route("/metrics", get(metrics_with_hl7))
        .route("/_history", get(history_system))
        // analytics (crates/api/src/analytics.rs)
        .route("/$sql", post(analytics::sql))
        .route(
            "/Measure/$evaluate-measure",
            get(analytics::evaluate_get).post(analytics::evaluate_post),
        )
        .route(
            "/Measure/{id}/$evaluate-measure",
            get(analytics::evaluate_instance_get).post(analytics::evaluate_instance_post),
        )
        .route("/$insights", get(analytics::insights))
        .route("/$insights/{chart}", get(analytics::chart))
        // scheduling operations (crates/api/src/scheduling.rs): static segments win
        // over the generic `/{rtype}/…` routes below
        .route("/$worklist", get(scheduling::worklist))
        .route(
            "/Schedule/{id}/$set-availability",
            post(scheduling::set_availability),
        )
        .route(
            "/Appointment/$find",
            get(scheduling::find_get).post(scheduling::find_post),
        )
        .route("/Appointment/$hold", post(scheduling::hold))
        .route("/Appointment/$book", post(scheduling::book))
        .route("/Appointment/$waitlist", post(scheduling::waitlist))
        .route("/Appointment/{id}/$cancel", post(scheduling::cancel))
        .route(
            "/Appointment/{id}/$reschedule",
            post(scheduling::reschedule),
        )
        .route(
            "/Appointment/{id}/$set-status",
            post(scheduling::set_status),
        )
        .route("/Patient/{id}/$ics", get(scheduling::ics_patient))
        .route("/Practitioner/{id}/$ics", get(scheduling::ics_practitioner))
        .route("/PractitionerRole/{id}/$ics", get(scheduling::ics_role))
        .route(
            "/$export",
            get(bulk::export_system).post(bulk::export_system),
        )
        .route(
            "/$export-poll-status",
            get(bulk::status).delete(bulk::status),
        )
        .route(
            "/$import-poll-status",
            get(bulk::status).delete(bulk::status),
        )
        .route("/$export-file/{job}/{file}", get(bulk::download))
        .route("/$import", post(bulk::import))
        .route(
            "/Patient/$export",
            get(bulk::export_patient).post(bulk::export_patient),
        )
        .route(
            "/Group/{id}/$export",
            get(bulk::export_group).post(bulk::export_group),
        )
        .route(
            "/Patient/{id}/$everything",
            get(bulk::patient_everything).post(bulk::patient_everything),
        )
        // subscriptions (crates/api/src/subscriptions.rs)
        .route("/$subscription-ws", get(subscriptions::websocket))
        .route(
            "/Subscription",
            get(subscriptions::search)
                .post(subscriptions::create)
                .put(subscriptions::conditional_update)
                .delete(subscriptions::conditional_delete),
        )
        .route(
            "/Subscription/{id}",
            get(subscriptions::read)
                .put(subscriptions::update)
                .patch(subscriptions::patch)
                .delete(subscriptions::delete)
                .post(subscriptions::instance_op),
        )
        .route(
            "/Subscription/{id}/$status",
            get(subscriptions::status).post(subscriptions::status),
        )
        .route(
            "/Subscription/{id}/$events",
            get(subscriptions::events).post(subscriptions::events),
        )
        .route(
            "/Subscription/$get-ws-binding-token",
            get(subscriptions::ws_token_type).post(subscriptions::ws_token_type),
        )
        .route(
            "/Subscription/{id}/$get-ws-binding-token",
            get(subscriptions::ws_token_instance).post(subscriptions::ws_token_instance),
        )
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
        .route(
            "/{rtype}/{id}/{ctype}",
            get(search_compartment).post(resource_op),
        )
        .route("/{rtype}/{id}/_history/{vid}", get(vread))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::guard,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            hardening::harden,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            handlers::observe,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            error::panic_response,
        ))
        .with_state(state)
}
