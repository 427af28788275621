//! Wiring and running the server: open storage, build the service and router, load
//! demo data, listen (HTTP, and MLLP for HL7 v2 when configured), and shut down
//! gracefully on SIGINT/SIGTERM: both listeners stop on the same signal and finish the
//! request or message in progress.

use crate::config::{Config, Durability, LogFormat};
use anyhow::{Context, Result};
use salus_api::{router, ApiConfig, AppState};
use salus_service::{FhirService, Limits};
use salus_store::sqlite::{self, SqliteOptions, SqliteStore};
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Set up structured logging (`RUST_LOG` filters; default `info`).
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Open the embedded store for a configuration (encrypted when `[encryption]` is on).
pub fn open_store(config: &Config) -> Result<SqliteStore> {
    let key = crate::encryption::sqlite_keys(config)?.store;
    let options = SqliteOptions {
        key,
        durability: match config.storage.durability {
            Durability::Normal => sqlite::Durability::Normal,
            Durability::Full => sqlite::Durability::Full,
        },
        readers: config.storage.readers,
        busy_timeout_ms: config.storage.busy_timeout_ms,
    };
    SqliteStore::open_dir(&config.data_dir, options)
        .with_context(|| format!("cannot open the database in {}", config.data_dir.display()))
}

/// The store `salus serve` runs on: the embedded SQLite one, or PostgreSQL.
pub enum Backend {
    Sqlite(SqliteStore),
    Postgres(salus_store_pg::PgStore),
}

impl Backend {
    /// Open what the configuration names (`storage.database`, else the data dir).
    pub async fn open(config: &Config) -> Result<Backend> {
        match &config.storage.database {
            Some(url) => {
                let options = salus_store_pg::PgOptions {
                    pool_size: config.storage.pool_size,
                    encryption: crate::encryption::kek(config)?,
                    copy_min_puts: match config.storage.bulk_copy {
                        true => salus_store_pg::COPY_MIN_PUTS,
                        false => usize::MAX,
                    },
                    ..Default::default()
                };
                let store = salus_store_pg::PgStore::connect(url, options)
                    .await
                    // the URL may hold a password: name the host only
                    .map_err(|e| anyhow::anyhow!("cannot open the PostgreSQL database: {e}"))?;
                Ok(Backend::Postgres(store))
            }
            None => Ok(Backend::Sqlite(open_store(config)?)),
        }
    }

    pub fn store(&self) -> Arc<dyn salus_store::Store> {
        match self {
            Backend::Sqlite(s) => Arc::new(s.clone()),
            Backend::Postgres(p) => Arc::new(p.clone()),
        }
    }

    /// Flush and release at shutdown.
    pub async fn close(&self) -> Result<()> {
        match self {
            Backend::Sqlite(s) => s.checkpoint().await.context("final checkpoint"),
            Backend::Postgres(p) => {
                p.close();
                Ok(())
            }
        }
    }

    pub fn describe(&self, config: &Config) -> String {
        let enc = if config.encryption.enabled {
            ", encrypted"
        } else {
            ""
        };
        match self {
            Backend::Sqlite(_) => format!("SQLite in {}{enc}", config.data_dir.display()),
            Backend::Postgres(_) => format!("PostgreSQL{enc}"),
        }
    }
}

/// The service over a store, with the configured limits.
pub fn service(config: &Config, store: SqliteStore) -> FhirService {
    service_over(config, Arc::new(store))
}

/// The service over any backend, with the configured limits.
pub fn service_over(config: &Config, store: Arc<dyn salus_store::Store>) -> FhirService {
    FhirService::new(
        store,
        Limits {
            default_count: config.limits.default_count,
            max_count: config.limits.max_count,
            max_bundle_entries: config.limits.max_bundle_entries,
        },
    )
}

async fn store_needs_reindex(svc: &FhirService) -> Result<bool> {
    svc.store()
        .reindex_pending()
        .await
        .context("cannot read the store's reindex mark")
}

/// `salus reindex`: rebuild every resource's index rows and full text, with a
/// progress bar.
pub async fn reindex_cli(config: &Config, progress: bool) -> Result<u64> {
    let store = open_store(config)?;
    let svc = service(config, store.clone());
    svc.load_search_parameters().await?;
    let bar = if progress {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} resources ({per_sec})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let start = std::time::Instant::now();
    let n = svc
        .reindex(|done, total| {
            bar.set_length(total);
            bar.set_position(done);
        })
        .await?;
    bar.finish_and_clear();
    store.checkpoint().await?;
    println!(
        "reindexed {n} resources in {:.2}s ({:.0} resources/s)",
        start.elapsed().as_secs_f64(),
        n as f64 / start.elapsed().as_secs_f64().max(1e-9)
    );
    Ok(n)
}

/// The application state for a configuration.
pub fn app_state(config: &Config, service: FhirService) -> AppState {
    let mut state = AppState::new(
        service,
        ApiConfig {
            base_url: config.base_url.clone(),
            max_body_bytes: config.limits.max_body_bytes,
            hsts: config.tls.is_some(),
            smart: None,
        },
    )
    .with_convert_options(config.hl7.convert_options())
    .with_scheduling(config.scheduling.scheduling());
    if config.limits.rate_per_second > 0.0 {
        state = state.with_rate_limit(config.limits.rate_per_second, config.limits.rate_burst);
    }
    state
}

/// The public base URL: configured, else derived from the listen address.
pub fn public_base(config: &Config) -> String {
    match &config.base_url {
        Some(b) => b.trim_end_matches('/').to_string(),
        None => {
            let scheme = if config.tls.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{}", config.listen)
        }
    }
}

/// A verified `salus-auth` caller as the access policy's principal.
struct AuthAdapter(Arc<dyn salus_auth::Authenticator>);

#[async_trait::async_trait]
impl salus_service::salus_access::Authenticate for AuthAdapter {
    async fn authenticate(
        &self,
        bearer: &str,
    ) -> std::result::Result<
        salus_service::salus_access::Principal,
        salus_service::salus_access::AuthFailure,
    > {
        use salus_service::salus_access::{AuthFailure, Principal};
        let c = self
            .0
            .authenticate(bearer)
            .await
            .map_err(|e| AuthFailure(e.to_string()))?;
        let mut p = Principal::new(c.subject, c.scope)
            .map_err(|e| AuthFailure(format!("the token's scope is not valid: {e}")))?;
        p.client_id = c.client_id;
        p.patient = c.patient;
        p.fhir_user = c.fhir_user;
        p.roles = c.roles;
        p.token_id = c.token_id;
        Ok(p)
    }
}

/// Patient ids typed on the consent page or given to `/auth/launch` must exist.
struct Patients(FhirService);

#[async_trait::async_trait]
impl salus_auth::PatientDirectory for Patients {
    async fn exists(&self, patient_id: &str) -> bool {
        matches!(self.0.read("Patient", patient_id).await, Ok(r) if !r.is_deleted())
    }
}

/// Turn on authorization (and, unless disabled, the audit trail) for `state`: returns
/// the authorization server's routes to serve beside the FHIR API.
pub fn secure_state(
    config: &Config,
    state: AppState,
    svc: &FhirService,
) -> Result<(AppState, Option<axum::Router>)> {
    let Some(auth_config) = &config.auth else {
        let mut state = state;
        if config.audit.enabled == Some(true) {
            state = state.with_audit(salus_service::AuditTrail::start(svc.clone()));
        }
        return Ok((state, None));
    };
    let base = public_base(config);
    let db_key = crate::encryption::sqlite_keys(config)?.auth;
    let auth =
        salus_auth::Auth::open_with_key(auth_config, &base, &config.data_dir, db_key.as_ref())
            .map_err(|e| anyhow::anyhow!("cannot set up authorization: {e}"))?;
    if let Some(server) = &auth.server {
        server.set_patient_directory(Arc::new(Patients(svc.clone())));
    }
    let mut state = state.with_auth(Arc::new(AuthAdapter(auth.authenticator.clone())));
    if auth.server.is_some() {
        let mut api = (*state.config).clone();
        api.smart = Some(salus_api::SmartEndpoints {
            authorize: format!("{base}/auth/authorize"),
            token: format!("{base}/auth/token"),
            revoke: Some(format!("{base}/auth/revoke")),
            introspect: Some(format!("{base}/auth/introspect")),
        });
        state.config = Arc::new(api);
    }
    if config.audit.enabled != Some(false) {
        state = state.with_audit(salus_service::AuditTrail::start(svc.clone()));
    }
    Ok((state, auth.router()))
}

/// Serve HL7 v2 over MLLP on `listener` until `shutdown` completes; the message in
/// progress on each connection is stored and acknowledged first.
pub async fn run_mllp(
    state: &AppState,
    config: &Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let handler = crate::hl7::Hl7Handler::new(
        state.service.clone(),
        config.hl7.convert_options(),
        state.hl7_metrics.clone(),
    );
    salus_hl7v2::mllp::serve(listener, Arc::new(handler), shutdown)
        .await
        .context("MLLP server error")
}

/// Serve on `listener` until `shutdown` completes; in-flight requests finish first.
pub async fn run(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    run_router(router(state), listener, None, shutdown).await
}

/// Serve `app` (over TLS when `tls` is given) until `shutdown` completes.
pub async fn run_router(
    app: axum::Router,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    if let Some(tls) = tls {
        return crate::tls::serve(app, listener, tls, shutdown).await;
    }
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .context("server error")
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested; finishing in-flight requests");
}

/// How often `salus serve` re-reads the stored SearchParameters (written by another
/// process on the same database).
const SEARCH_PARAMETER_SYNC: std::time::Duration = std::time::Duration::from_secs(5);

/// `salus serve`.
pub async fn serve(config: Config) -> Result<()> {
    // Build the definition tables now rather than on the first request.
    salus_fhir::preload();
    let backend = Backend::open(&config).await?;
    // Subscriptions: commits made here wake the engine at once (docs/subscriptions.md).
    let changed = Arc::new(tokio::sync::Notify::new());
    let store = match config.subscriptions.enabled {
        true => Arc::new(salus_subscriptions::NotifyingStore::new(
            backend.store(),
            changed.clone(),
        )) as Arc<dyn salus_store::Store>,
        false => backend.store(),
    };
    let svc = service_over(&config, store);
    if config.demo {
        let loaded = crate::demo::load_if_empty(&svc).await?;
        if loaded > 0 {
            tracing::info!(resources = loaded, "loaded demo data");
        }
    }
    let live = svc
        .load_search_parameters()
        .await
        .context("cannot load the stored SearchParameters")?;
    if live > 0 {
        tracing::info!(parameters = live, "custom search parameters are live");
    }
    if store_needs_reindex(&svc).await? {
        tracing::warn!(
            "this data was stored by an earlier version that indexed less: reindexing in the \
             background (GET /$reindex shows progress); until it completes, full-text and \
             composite searches may miss those resources"
        );
        svc.start_reindex()?;
    }
    if config.auth.is_none() {
        if !config.listen.ip().is_loopback() {
            // Without authentication anyone who reaches the port could read and change
            // every record: only loopback is allowed then.
            anyhow::bail!(
                "refusing to listen on {} without authentication: anyone who can reach this \
                 address could read and change every record. Start with --auth (or an [auth] \
                 table, docs/security.md) or listen on 127.0.0.1",
                config.listen
            );
        }
        tracing::warn!(
            listen = %config.listen,
            "AUTHENTICATION IS OFF: every request on {} may read and change every record; \
             this mode is for local development only (start with --auth, docs/security.md)",
            config.listen
        );
    }
    let tls = match &config.tls {
        Some(t) => Some(crate::tls::server_config(&t.cert_file, &t.key_file)?),
        None => None,
    };
    // Other processes sharing the database may add, change or retire SearchParameters.
    let sync = svc.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SEARCH_PARAMETER_SYNC);
        tick.tick().await;
        loop {
            tick.tick().await;
            match sync.sync_search_parameters().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    changed = n,
                    "custom search parameters updated from the store"
                ),
                Err(e) => tracing::warn!(error = %e, "cannot read the stored SearchParameters"),
            }
        }
    });
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let mllp = match config.hl7.mllp_listen {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for MLLP on {addr}"))?;
            if !addr.ip().is_loopback() {
                tracing::warn!(
                    mllp_listen = %addr,
                    "MLLP on a non-loopback address WITHOUT authentication or TLS: anyone who \
                     can reach this port can write records; put it behind a VPN or TLS proxy"
                );
            }
            tracing::info!(mllp_listen = %addr, "HL7 v2 MLLP listener ready on {addr}");
            Some(l)
        }
        None => None,
    };
    let (mut state, auth_routes) = secure_state(&config, app_state(&config, svc.clone()), &svc)?;
    state = state.with_bulk(crate::bulk::engine(&config, svc.clone())?);
    if state.auth.is_some() {
        tracing::info!(
            audit = state.audit.is_some(),
            "authorization is on: SMART on FHIR access tokens required"
        );
    }
    tracing::info!(
        listen = %config.listen,
        store = %backend.describe(&config),
        "Salus FHIR server ready at {}/",
        public_base(&config)
    );
    // One signal stops both listeners.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    // Remote patient monitoring: POST /devices/messages, the MQTT source, the timer of
    // missing-data rules.
    let mut device_tasks = vec![];
    if let Some(rt) = config.devices.load(&svc)? {
        let subjects = svc.load_device_rule_state(&rt.ingest).await?;
        if subjects > 0 {
            tracing::info!(subjects, "alert-rule state resumed");
        }
        state = state.with_devices(salus_api::devices::DeviceEndpoint {
            sink: rt.sink.clone(),
            tokens: rt.tokens.clone(),
            ingest: Some(rt.ingest.clone()),
        });
        if rt.tokens.is_empty() && !config.listen.ip().is_loopback() {
            tracing::warn!("POST /devices/messages accepts messages without a device token");
        }
        if let Some(mqtt) = rt.mqtt {
            let sink: Arc<dyn salus_ingest::Sink> = rt.sink.clone();
            device_tasks.push(tokio::spawn(mqtt.run(sink, stopped(stop_rx.clone()))));
            tracing::info!("MQTT device source subscribed");
        }
        let (svc, ingest, every) = (svc.clone(), rt.ingest.clone(), rt.tick);
        let stop = stopped(stop_rx.clone());
        device_tasks.push(tokio::spawn(async move {
            tokio::pin!(stop);
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tick.tick() => {
                        if let Err(e) = svc.tick_device_rules(&ingest).await {
                            tracing::warn!(error = %e, "missing-data rules not evaluated");
                        }
                    }
                }
            }
        }));
        tracing::info!("device ingestion ready: POST /devices/messages");
    }
    // Analytics: the tables under <data-dir>/analytics, $sql, the measures, $insights.
    match crate::analytics::open(&config, svc.unguarded_store().clone()) {
        Ok(analytics) => {
            state = state.with_analytics(analytics.clone());
            if config.analytics.refresh_interval_s > 0 {
                let every = std::time::Duration::from_secs(config.analytics.refresh_interval_s);
                device_tasks.push(tokio::spawn(crate::analytics::run_refresher(
                    analytics,
                    every,
                    stopped(stop_rx.clone()),
                )));
            }
            tracing::info!("analytics ready: $sql, Measure/$evaluate-measure, $insights");
        }
        Err(why) if config.analytics.enabled => tracing::warn!("{why}"),
        Err(_) => {}
    }
    if config.subscriptions.enabled {
        let engine = config.subscriptions.engine(
            public_base(&config),
            state.auth.is_some(),
            svc.clone(),
            changed,
        )?;
        state = state.with_subscriptions(engine.clone());
        device_tasks.push(tokio::spawn(engine.run(stopped(stop_rx.clone()))));
        tracing::info!("subscriptions ready: rest-hook and websocket ($subscription-ws)");
    }
    let audit = state.audit.clone();
    let mut app = router(state.clone());
    if let Some(extra) = auth_routes {
        app = app.merge(extra);
    }
    // Scheduling: the reminder outbox and the slot sweeper.
    device_tasks.push(tokio::spawn(crate::scheduling::run_workers(
        svc.clone(),
        config.scheduling.clone(),
        state.scheduling.clone(),
        stopped(stop_rx.clone()),
    )));
    match mllp {
        Some(l) => {
            tokio::try_join!(
                run_router(app, listener, tls, stopped(stop_rx.clone())),
                run_mllp(&state, &config, l, stopped(stop_rx)),
            )?;
        }
        None => run_router(app, listener, tls, stopped(stop_rx)).await?,
    }
    if let Some(trail) = audit {
        // every access answered so far is on disk before the store closes
        trail.flush().await;
    }
    for t in device_tasks {
        let _ = t.await;
    }
    backend.close().await?;
    tracing::info!("stopped cleanly");
    Ok(())
}
