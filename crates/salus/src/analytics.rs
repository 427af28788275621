//! `[analytics]`: the store's data as SQL tables (docs/analytics.md).
//!
//! [`StoreAnalytics`] materializes the measure ViewDefinitions shipped with
//! `salus-analytics` and the ViewDefinitions stored in the store (as `Binary`
//! resources, see [`stored_views`]) into Parquet under `<data-dir>/analytics/`, and keeps
//! them current from the store's change feed ([`salus_store::Store::changes_after`]): a
//! refresh reads the versions written since the tables' high-water mark (a store `seq`)
//! and rewrites only the parts holding changed resources. A view whose definition
//! changed, that is new, or that is too far behind is rebuilt in full from a snapshot of
//! the store. Refreshes run on demand (before a query, `salus analytics refresh`) and
//! every `refresh_interval_s`.
//!
//! It implements [`salus_api::analytics::AnalyticsProvider`], so the HTTP layer
//! (`$sql`, `Measure/$evaluate-measure`, `$insights`) stays free of DataFusion, and backs
//! `salus sql` and `salus analytics refresh`.

use anyhow::{bail, Context, Result};
use salus_analytics::measures::{self, MeasurePeriod, ReportType};
use salus_analytics::{
    view_hash, write_output, Analytics, AnalyticsError, Change, MaterializeOptions, Materializer,
    OutputFormat, QueryLimits, QueryResult,
};
use salus_api::analytics::{
    AnalyticsProvider, MeasureOutcome, MeasureRequest, ReportKind, SqlFormat,
};
use salus_fhir::{Issue, IssueCode};
use salus_service::FhirError;
use salus_store::{SnapshotQuery, Store, VersionRecord};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `[analytics]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnalyticsSection {
    /// Materialize the views and serve `$sql`, `Measure/$evaluate-measure`, `$insights`.
    pub enabled: bool,
    /// Seconds between background refreshes in `salus serve`; 0: only on demand.
    pub refresh_interval_s: u64,
    /// Bring the tables up to date before each query (read-your-writes; one cheap
    /// `seq` look-up when nothing changed).
    pub refresh_on_query: bool,
    /// A view more than this many store versions behind is rebuilt from a snapshot
    /// rather than refreshed change by change.
    pub full_rebuild_changes: u64,
    /// Write the tables even though `[encryption]` is on. The Parquet files are NOT
    /// encrypted: without this, analytics stays off on an encrypted server.
    pub allow_unencrypted: bool,
    /// The most rows one `$sql` answer may have (a longer one is refused, not cut);
    /// 0: no limit.
    pub max_rows: usize,
    /// Seconds one `$sql` statement may run before it is cancelled; 0: no limit.
    pub query_timeout_s: u64,
}

impl Default for AnalyticsSection {
    fn default() -> Self {
        AnalyticsSection {
            enabled: true,
            refresh_interval_s: 300,
            refresh_on_query: true,
            full_rebuild_changes: 50_000,
            allow_unencrypted: false,
            max_rows: 100_000,
            query_timeout_s: 60,
        }
    }
}

impl AnalyticsSection {
    pub fn validate(&self) -> Result<()> {
        if self.full_rebuild_changes == 0 {
            bail!("analytics.full_rebuild_changes must be at least 1");
        }
        Ok(())
    }
}

/// Where the tables live for a data dir.
pub fn analytics_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("analytics")
}

/// Where a view's rows come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewSource {
    /// Shipped with the measures (`mx_*`).
    Measure,
    /// A `Binary` resource in the store.
    Stored(String),
}

/// One view to keep materialized.
#[derive(Debug, Clone)]
pub struct ViewSpec {
    pub name: String,
    pub resource: String,
    pub definition: Value,
    pub source: ViewSource,
}

/// What a refresh did to one view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewRefresh {
    pub name: String,
    /// Rebuilt from a snapshot (new, changed, or too far behind) rather than refreshed.
    pub full: bool,
    /// Resources read (full) or changes applied (incremental).
    pub resources: u64,
    /// Rows in the table afterwards.
    pub rows: u64,
}

/// What a refresh did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefreshReport {
    /// The store `seq` the tables now reflect.
    pub high_water_mark: i64,
    pub views: Vec<ViewRefresh>,
    /// Views dropped (their stored ViewDefinition is gone).
    pub removed: Vec<String>,
    /// Stored ViewDefinitions that could not be used, with the reason.
    pub skipped: Vec<String>,
}

/// Progress of a refresh: `(view, resources read so far)`.
pub type Progress = Arc<dyn Fn(&str, u64) + Send + Sync>;

/// Resources read from the store per page.
const PAGE: usize = 1000;

/// A SQL name for a view: letters, digits and `_`, not starting with a digit.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The ViewDefinition a stored `Binary` holds, if it is one: `contentType`
/// `application/json` (or `application/fhir+json`, parameters allowed) and `data` the
/// base64 of a JSON object with `"resourceType": "ViewDefinition"`.
pub fn view_in_binary(binary: &Value) -> Option<Value> {
    use base64::Engine;
    let ct = binary.get("contentType")?.as_str()?;
    let mime = ct.split(';').next()?.trim().to_ascii_lowercase();
    if mime != "application/json" && mime != "application/fhir+json" {
        return None;
    }
    let data = binary.get("data")?.as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    (v.get("resourceType").and_then(Value::as_str) == Some("ViewDefinition")).then_some(v)
}

/// The SQL answer in the API's formats.
fn output_format(f: SqlFormat) -> OutputFormat {
    match f {
        SqlFormat::Json => OutputFormat::Json,
        SqlFormat::Ndjson => OutputFormat::JsonLines,
        SqlFormat::Csv => OutputFormat::Csv,
        SqlFormat::Parquet => OutputFormat::Parquet,
    }
}

/// An analytics error as the FHIR layer reports it: the caller's mistakes are 400
/// (an unknown measure 404), the rest internal (logged, not sent).
pub fn fhir_error(e: AnalyticsError) -> FhirError {
    match e {
        AnalyticsError::UnknownMeasure(id) => FhirError::NotFound(format!("Measure/{id}")),
        e @ AnalyticsError::TooManyRows(_) => {
            FhirError::Invalid(vec![Issue::error(IssueCode::TooCostly, e.to_string())])
        }
        e @ AnalyticsError::Timeout(_) => {
            FhirError::Invalid(vec![Issue::error(IssueCode::Timeout, e.to_string())])
        }
        e if e.is_user_error() => FhirError::invalid(e.to_string()),
        e => {
            tracing::error!(error = %e, "analytics failed");
            FhirError::Internal(e.to_string())
        }
    }
}

fn internal(e: anyhow::Error) -> FhirError {
    tracing::error!(error = %format!("{e:#}"), "analytics refresh failed");
    FhirError::Internal(format!("{e:#}"))
}

/// The store's data as SQL tables under one directory.
pub struct StoreAnalytics {
    root: PathBuf,
    store: Arc<dyn Store>,
    settings: AnalyticsSection,
    /// Refreshes write, queries read: a query never sees a part file disappear.
    lock: tokio::sync::RwLock<()>,
    /// The `seq` the tables reflect after the last refresh (`None`: not yet known).
    mark: std::sync::Mutex<Option<i64>>,
}

impl StoreAnalytics {
    /// Tables under `root`, from `store` (read with the server's rights: the HTTP layer
    /// decides who may query).
    pub fn new(root: PathBuf, store: Arc<dyn Store>, settings: AnalyticsSection) -> Self {
        StoreAnalytics {
            root,
            store,
            settings,
            lock: tokio::sync::RwLock::new(()),
            mark: std::sync::Mutex::new(None),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The views to keep: the measure views, then the stored ones (names must be SQL
    /// names and unique; the measure views' names are reserved).
    pub async fn views(&self, at_seq: i64) -> Result<(Vec<ViewSpec>, Vec<String>)> {
        let mut out = vec![];
        let mut names = BTreeSet::new();
        for def in measures::view_definitions()? {
            let name = def["name"].as_str().unwrap_or_default().to_string();
            let resource = def["resource"].as_str().unwrap_or_default().to_string();
            names.insert(name.clone());
            out.push(ViewSpec {
                name,
                resource,
                definition: def,
                source: ViewSource::Measure,
            });
        }
        let mut skipped = vec![];
        let mut after = None;
        loop {
            let mut q = SnapshotQuery::new("Binary", at_seq);
            q.after_id = after.clone();
            q.limit = PAGE;
            let page = self.store.snapshot_scan(&q).await?;
            for r in &page.records {
                let Some(body) = &r.body else { continue };
                let Ok(v) = serde_json::from_str::<Value>(body) else {
                    continue;
                };
                let Some(def) = view_in_binary(&v) else {
                    continue;
                };
                let name = def.get("name").and_then(Value::as_str).unwrap_or("");
                let resource = def.get("resource").and_then(Value::as_str).unwrap_or("");
                let why = if !valid_name(name) {
                    Some(format!(
                        "its name '{name}' is not an SQL name (letters, digits, _)"
                    ))
                } else if names.contains(name) {
                    Some(format!("the name '{name}' is already taken"))
                } else if let Err(e) = salus_views::View::compile(&def) {
                    Some(e.to_string())
                } else {
                    None
                };
                if let Some(why) = why {
                    skipped.push(format!("Binary/{}: {why}", r.id));
                    continue;
                }
                names.insert(name.to_string());
                out.push(ViewSpec {
                    name: name.to_string(),
                    resource: resource.to_string(),
                    definition: def.clone(),
                    source: ViewSource::Stored(r.id.clone()),
                });
            }
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        Ok((out, skipped))
    }

    fn materializer(&self) -> Materializer {
        Materializer::new(&self.root).with_options(MaterializeOptions {
            // one resource the view cannot turn into rows must not stop the others
            skip_errors: true,
            ..MaterializeOptions::default()
        })
    }

    /// Refresh if the store changed since the last refresh.
    pub async fn ensure_fresh(&self) -> Result<()> {
        let now = self.store.snapshot_seq().await?;
        let known = *self.mark.lock().unwrap_or_else(|e| e.into_inner());
        if known == Some(now) {
            return Ok(());
        }
        self.refresh(false, None).await?;
        Ok(())
    }

    /// Bring every view up to the store's current `seq`; `full` rebuilds them all.
    pub async fn refresh(&self, full: bool, progress: Option<Progress>) -> Result<RefreshReport> {
        let _w = self.lock.write().await;
        std::fs::create_dir_all(&self.root)
            .with_context(|| format!("cannot create {}", self.root.display()))?;
        let target = self.store.snapshot_seq().await?;
        let (views, skipped) = self.views(target).await?;
        let m = self.materializer();
        let mut report = RefreshReport {
            high_water_mark: target,
            skipped,
            ..Default::default()
        };
        for s in &report.skipped {
            tracing::warn!("stored ViewDefinition not materialized: {s}");
        }
        // Which views can be refreshed from the feed, and from where.
        let mut incremental: Vec<(&ViewSpec, i64)> = vec![];
        let mut rebuild: Vec<&ViewSpec> = vec![];
        for v in &views {
            let mark = match m.manifest(&v.name) {
                Ok(man) if !full && man.view_hash == view_hash(&v.definition) => man
                    .high_water_mark
                    .as_deref()
                    .and_then(|h| h.parse::<i64>().ok()),
                _ => None,
            };
            match mark {
                Some(h)
                    if h <= target && (target - h) as u64 <= self.settings.full_rebuild_changes =>
                {
                    incremental.push((v, h))
                }
                _ => rebuild.push(v),
            }
        }
        if let Some(from) = incremental.iter().map(|(_, h)| *h).min() {
            let types: BTreeSet<&str> = incremental
                .iter()
                .map(|(v, _)| v.resource.as_str())
                .collect();
            let changes = self.changes(from, target, &types).await?;
            for (v, h) in incremental {
                let mine: Vec<Change> = changes
                    .iter()
                    .filter(|(seq, c)| *seq > h && c.rtype == v.resource)
                    .map(|(_, c)| c.clone())
                    .collect();
                let n = mine.len() as u64;
                let (m2, def, mark) = (m.clone(), v.definition.clone(), target.to_string());
                let stats = tokio::task::spawn_blocking(move || {
                    m2.refresh(&def, mine, Some(mark.as_str()))
                })
                .await
                .context("refresh task")?
                .with_context(|| format!("cannot refresh the view {}", v.name))?;
                if let Some(p) = &progress {
                    p(&v.name, n);
                }
                report.views.push(ViewRefresh {
                    name: v.name.clone(),
                    full: false,
                    resources: n,
                    rows: stats.rows,
                });
            }
        }
        for v in rebuild {
            let (resources, rows) = self.rebuild(&m, v, target, progress.clone()).await?;
            report.views.push(ViewRefresh {
                name: v.name.clone(),
                full: true,
                resources,
                rows,
            });
        }
        // Tables whose stored ViewDefinition is gone.
        let keep: BTreeSet<&str> = views.iter().map(|v| v.name.as_str()).collect();
        if let Ok(entries) = std::fs::read_dir(&self.root) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                let is_table = e
                    .path()
                    .join(salus_analytics::materialize::MANIFEST_FILE)
                    .is_file();
                if is_table && !name.starts_with('.') && !keep.contains(name.as_str()) {
                    std::fs::remove_dir_all(e.path())
                        .with_context(|| format!("cannot remove {}", e.path().display()))?;
                    report.removed.push(name);
                }
            }
        }
        *self.mark.lock().unwrap_or_else(|e| e.into_inner()) = Some(target);
        tracing::debug!(
            high_water_mark = target,
            views = report.views.len(),
            "analytics refreshed"
        );
        Ok(report)
    }

    /// The changes with `from < seq <= to` for these types, in feed order.
    async fn changes(
        &self,
        from: i64,
        to: i64,
        types: &BTreeSet<&str>,
    ) -> Result<Vec<(i64, Change)>> {
        let mut out = vec![];
        let mut cursor = from;
        while cursor < to {
            let page: Vec<VersionRecord> = self.store.changes_after(cursor, PAGE).await?;
            let Some(last) = page.last().map(|r| r.seq) else {
                break;
            };
            for r in page {
                if r.seq > to {
                    break;
                }
                if !types.contains(r.rtype.as_str()) {
                    continue;
                }
                let change = match &r.body {
                    None => Change::delete(&r.rtype, &r.id),
                    Some(b) => {
                        let body: Value = serde_json::from_str(b)
                            .with_context(|| format!("stored {}/{} is not JSON", r.rtype, r.id))?;
                        Change {
                            rtype: r.rtype.clone(),
                            id: r.id.clone(),
                            body: Some(body),
                        }
                    }
                };
                out.push((r.seq, change));
            }
            cursor = last;
        }
        Ok(out)
    }

    /// Build one view from a snapshot at `at_seq`: resources are read page by page and
    /// handed to the materializer on a blocking thread as they come.
    async fn rebuild(
        &self,
        m: &Materializer,
        v: &ViewSpec,
        at_seq: i64,
        progress: Option<Progress>,
    ) -> Result<(u64, u64)> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Value>(PAGE * 2);
        let (m2, def, mark) = (m.clone(), v.definition.clone(), at_seq.to_string());
        let job = tokio::task::spawn_blocking(move || {
            m2.materialize(
                &def,
                std::iter::from_fn(|| rx.blocking_recv()),
                Some(mark.as_str()),
            )
        });
        let mut after = None;
        let mut read = 0u64;
        'pages: loop {
            let mut q = SnapshotQuery::new(v.resource.clone(), at_seq);
            q.after_id = after.clone();
            q.limit = PAGE;
            let page = self.store.snapshot_scan(&q).await?;
            for r in page.records {
                let Some(body) = r.body else { continue };
                let value: Value = serde_json::from_str(&body)
                    .with_context(|| format!("stored {}/{} is not JSON", r.rtype, r.id))?;
                if tx.send(value).await.is_err() {
                    // the materializer stopped: its error is reported below
                    break 'pages;
                }
                read += 1;
            }
            if let Some(p) = &progress {
                p(&v.name, read);
            }
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        drop(tx);
        let stats = job
            .await
            .context("materialize task")?
            .with_context(|| format!("cannot materialize the view {}", v.name))?;
        if stats.skipped > 0 {
            tracing::warn!(
                view = %v.name,
                skipped = stats.skipped,
                first = stats.first_error.as_deref().unwrap_or(""),
                "resources the view could not turn into rows were skipped"
            );
        }
        Ok((read, stats.rows))
    }

    /// A read-only session over the tables as they are now (call under the read lock).
    fn session(&self) -> Result<Analytics, AnalyticsError> {
        if !self.root.exists() {
            return Ok(Analytics::in_memory());
        }
        Analytics::new(&self.root)
    }

    async fn fresh(&self) -> Result<(), FhirError> {
        if self.settings.refresh_on_query {
            self.ensure_fresh().await.map_err(internal)?;
        }
        Ok(())
    }

    /// Run one read-only statement.
    pub async fn query(&self, sql: &str) -> Result<QueryResult, FhirError> {
        self.fresh().await?;
        self.query_now(sql).await.map_err(fhir_error)
    }

    /// Run one read-only statement over the tables as they are (no refresh).
    pub async fn query_now(&self, sql: &str) -> Result<QueryResult, AnalyticsError> {
        let _r = self.lock.read().await;
        self.session()?.query_result(sql).await
    }

    /// The bounds `[analytics]` sets on a caller's statement (`$sql`).
    pub fn caller_limits(&self) -> QueryLimits {
        QueryLimits {
            max_rows: (self.settings.max_rows > 0).then_some(self.settings.max_rows),
            timeout: (self.settings.query_timeout_s > 0)
                .then(|| std::time::Duration::from_secs(self.settings.query_timeout_s)),
        }
    }

    /// Run a caller's read-only statement within [`Self::caller_limits`].
    pub async fn caller_query(&self, sql: &str) -> Result<QueryResult, FhirError> {
        self.fresh().await?;
        let _r = self.lock.read().await;
        let session = self.session().map_err(fhir_error)?;
        session
            .query_limited(sql, self.caller_limits())
            .await
            .map_err(fhir_error)
    }

    /// Evaluate a shipped measure for a period.
    pub async fn measure(
        &self,
        id: &str,
        start: &str,
        end: &str,
    ) -> Result<measures::MeasureResult, FhirError> {
        // unknown measures and bad periods before any work
        measures::measure(id).map_err(fhir_error)?;
        let period = MeasurePeriod::new(start, end).map_err(fhir_error)?;
        self.fresh().await?;
        let _r = self.lock.read().await;
        let session = self.session().map_err(fhir_error)?;
        measures::evaluate(&session, id, &period)
            .await
            .map_err(fhir_error)
    }
}

#[async_trait::async_trait]
impl AnalyticsProvider for StoreAnalytics {
    async fn sql(&self, query: &str, format: SqlFormat) -> Result<Vec<u8>, FhirError> {
        let r = self.caller_query(query).await?;
        let mut out = Vec::new();
        write_output(&r.schema, &r.batches, output_format(format), &mut out).map_err(fhir_error)?;
        Ok(out)
    }

    async fn evaluate_measure(
        &self,
        request: &MeasureRequest,
    ) -> Result<MeasureOutcome, FhirError> {
        let result = self
            .measure(&request.measure, &request.period_start, &request.period_end)
            .await?;
        let kind = match request.report {
            ReportKind::Summary => ReportType::Summary,
            ReportKind::SubjectList => ReportType::SubjectList,
        };
        let now = salus_service::time::format_instant(salus_service::time::now_micros());
        let report = result.measure_report(kind, Some(&now));
        let cohort = match &request.cohort {
            None => None,
            Some(code) => Some(result.group(code).ok_or_else(|| {
                let codes: Vec<&str> = result.populations.iter().map(|p| p.code).collect();
                FhirError::invalid(format!(
                    "cohort '{code}': the measure {} has the populations {}",
                    request.measure,
                    codes.join(", ")
                ))
            })?),
        };
        Ok(MeasureOutcome { report, cohort })
    }

    async fn insights(&self) -> Result<Value, FhirError> {
        crate::insights::dashboard(self).await
    }

    async fn chart(&self, name: &str) -> Result<String, FhirError> {
        crate::insights::chart(self, name).await
    }
}

/// The analytics of `salus serve` (and the CLI) for a configuration, or why there is none.
pub fn open(
    config: &crate::config::Config,
    store: Arc<dyn Store>,
) -> std::result::Result<Arc<StoreAnalytics>, String> {
    if !config.analytics.enabled {
        return Err("analytics is off (analytics.enabled = false)".into());
    }
    if config.encryption.enabled && !config.analytics.allow_unencrypted {
        return Err(
            "analytics is off: encryption at rest is on, and the analytics tables (Parquet \
             files under the data dir) would not be encrypted; set \
             analytics.allow_unencrypted = true to accept that"
                .into(),
        );
    }
    Ok(Arc::new(StoreAnalytics::new(
        analytics_dir(&config.data_dir),
        store,
        config.analytics.clone(),
    )))
}

/// Refresh every `every` until `stop` completes (the first refresh at once).
pub async fn run_refresher(
    analytics: Arc<StoreAnalytics>,
    every: std::time::Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => {
                match analytics.refresh(false, None).await {
                    Ok(r) => tracing::debug!(high_water_mark = r.high_water_mark, "analytics tables refreshed"),
                    Err(e) => tracing::warn!(error = %format!("{e:#}"), "analytics tables not refreshed"),
                }
            }
        }
    }
}

/// `salus sql`: what was asked.
pub struct SqlArgs {
    pub query: String,
    /// `table` (default), `csv`, `json`, `ndjson`, `parquet`.
    pub format: String,
    pub out: Option<PathBuf>,
    /// Skip bringing the tables up to date first.
    pub no_refresh: bool,
}

fn cli_analytics(
    config: &crate::config::Config,
    store: Arc<dyn Store>,
) -> Result<Arc<StoreAnalytics>> {
    let mut config = config.clone();
    // the command line asks for analytics explicitly
    config.analytics.enabled = true;
    open(&config, store).map_err(|why| anyhow::anyhow!(why))
}

/// `salus sql "SELECT …"`: refresh the tables from the data dir (or database), run the
/// statement, print the rows.
pub async fn sql_cli(config: &crate::config::Config, args: SqlArgs) -> Result<()> {
    use std::io::{IsTerminal, Write};
    let format: OutputFormat = args
        .format
        .parse()
        .map_err(|e: AnalyticsError| anyhow::anyhow!("--format: {e}"))?;
    if format == OutputFormat::Parquet && args.out.is_none() && std::io::stdout().is_terminal() {
        bail!("--format parquet writes a binary file: add --out FILE, or redirect the output");
    }
    let backend = crate::serve::Backend::open(config).await?;
    let analytics = cli_analytics(config, backend.store())?;
    if !args.no_refresh {
        analytics
            .refresh(false, None)
            .await
            .context("cannot bring the analytics tables up to date")?;
    }
    let result = analytics.query_now(&args.query).await;
    backend.close().await?;
    let result = result.map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut sink: Box<dyn Write + Send> = match &args.out {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    write_output(&result.schema, &result.batches, format, &mut sink)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    sink.flush()?;
    if format == OutputFormat::Table || args.out.is_some() {
        eprintln!("{} rows", result.num_rows());
    }
    Ok(())
}

/// `salus analytics refresh [--full]`: bring the tables up to date, with progress.
pub async fn refresh_cli(config: &crate::config::Config, full: bool, progress: bool) -> Result<()> {
    let backend = crate::serve::Backend::open(config).await?;
    let analytics = cli_analytics(config, backend.store())?;
    let bar = if progress {
        let b = indicatif::ProgressBar::new_spinner();
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        b.enable_steady_tick(std::time::Duration::from_millis(120));
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let b2 = bar.clone();
    let report: Progress = Arc::new(move |view: &str, n: u64| {
        b2.set_message(format!("{view}: {n} resources"));
    });
    let start = std::time::Instant::now();
    let result = analytics.refresh(full, Some(report)).await;
    bar.finish_and_clear();
    backend.close().await?;
    let report = result?;
    for line in summary_lines(&report) {
        println!("{line}");
    }
    for r in &report.removed {
        println!("removed {r} (its stored ViewDefinition is gone)");
    }
    for s in &report.skipped {
        eprintln!("skipped {s}");
    }
    println!(
        "{} views up to store seq {} in {:.2}s, in {}",
        report.views.len(),
        report.high_water_mark,
        start.elapsed().as_secs_f64(),
        analytics.root().display()
    );
    Ok(())
}

/// Per view: rows and high-water mark, as `salus analytics refresh` prints them.
pub fn summary_lines(report: &RefreshReport) -> Vec<String> {
    let mut by_name: BTreeMap<&str, &ViewRefresh> = BTreeMap::new();
    for v in &report.views {
        by_name.insert(&v.name, v);
    }
    by_name
        .values()
        .map(|v| {
            format!(
                "{:<24} {:>9} rows  ({}, {} {})",
                v.name,
                v.rows,
                if v.full { "rebuilt" } else { "refreshed" },
                v.resources,
                if v.full { "resources" } else { "changes" }
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    #[test]
    fn views_are_found_in_binaries() {
        let view = serde_json::json!({"resourceType": "ViewDefinition", "name": "pt",
            "resource": "Patient", "select": [{"column": [{"name": "id", "path": "id"}]}]});
        let data = base64::engine::general_purpose::STANDARD.encode(view.to_string());
        let bin = serde_json::json!({"resourceType": "Binary", "contentType": "application/json", "data": data});
        assert_eq!(view_in_binary(&bin), Some(view));
        let other = serde_json::json!({"resourceType": "Binary", "contentType": "text/plain", "data": data});
        assert_eq!(view_in_binary(&other), None);
        assert!(valid_name("_a1"));
        assert!(!valid_name("1a"));
        assert!(!valid_name("a-b"));
    }

    #[test]
    fn defaults_validate() {
        AnalyticsSection::default().validate().unwrap();
    }
}
