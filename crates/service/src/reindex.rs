//! Rebuilding index rows and full text of stored resources (`salus reindex`,
//! `POST [base]/$reindex`): after an upgrade that indexes more than before, or when
//! search parameters change. Current versions only; no new versions, no history.
//! Writes go on meanwhile: a resource written during the run is indexed by its write.

use crate::{index, FhirError, FhirService, Result};
use serde_json::{json, Value};

/// Resources per store transaction.
const PAGE: usize = 500;

/// State of the background reindex job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ReindexState {
    #[default]
    Idle,
    Running,
    Completed,
    Failed(String),
}

/// Progress of the reindex job, as `GET [base]/$reindex` reports it.
#[derive(Debug, Clone, Default)]
pub struct ReindexStatus {
    pub state: ReindexState,
    pub processed: u64,
    pub total: u64,
    /// Microseconds since the epoch.
    pub started: Option<i64>,
    pub finished: Option<i64>,
}

impl ReindexStatus {
    /// As a FHIR `Parameters` resource.
    pub fn to_parameters(&self) -> Value {
        let state = match &self.state {
            ReindexState::Idle => "idle",
            ReindexState::Running => "running",
            ReindexState::Completed => "completed",
            ReindexState::Failed(_) => "failed",
        };
        let mut params = vec![
            json!({"name": "status", "valueCode": state}),
            json!({"name": "processed", "valueInteger": self.processed}),
            json!({"name": "total", "valueInteger": self.total}),
        ];
        if let Some(t) = self.started {
            params.push(json!({"name": "started", "valueInstant": crate::time::format_instant(t)}));
        }
        if let Some(t) = self.finished {
            params
                .push(json!({"name": "finished", "valueInstant": crate::time::format_instant(t)}));
        }
        if let ReindexState::Failed(e) = &self.state {
            params.push(json!({"name": "error", "valueString": e}));
        }
        json!({"resourceType": "Parameters", "parameter": params})
    }
}

impl FhirService {
    /// Reindex every current resource, calling `progress(done, total)` after each page;
    /// returns how many were reindexed. Clears the store's "reindex pending" mark.
    pub async fn reindex(&self, progress: impl Fn(u64, u64) + Send) -> Result<u64> {
        let generation = salus_fhir::defs::custom_generation();
        let mut after = None;
        let mut done = 0u64;
        loop {
            let page = self.store().scan_current(after, PAGE).await?;
            let mut tx = self.store().begin_bulk().await?;
            for rec in &page.records {
                let Some(body) = rec.body.as_deref() else {
                    continue;
                };
                let value: Value = serde_json::from_str(body).map_err(|e| {
                    FhirError::Internal(format!("stored {}/{} is not JSON: {e}", rec.rtype, rec.id))
                })?;
                let indexed = index::extract(&value);
                tx.reindex(
                    &rec.rtype,
                    &rec.id,
                    rec.version,
                    indexed.rows,
                    Some(indexed.text),
                    indexed.contained,
                )
                .await?;
            }
            tx.commit().await?;
            done += page.records.len() as u64;
            progress(done, page.total.max(done));
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        self.store().clear_reindex_pending().await?;
        self.reindexed_generation
            .fetch_max(generation, std::sync::atomic::Ordering::Relaxed);
        Ok(done)
    }

    /// Make every stored `SearchParameter` live (at start-up); returns how many are.
    pub async fn load_search_parameters(&self) -> Result<usize> {
        self.sync_search_parameters().await?;
        Ok(salus_fhir::defs::custom_search_params().len())
    }

    /// Bring this process's custom search parameters in line with the stored
    /// `SearchParameter` resources: register new or changed active ones, retire those no
    /// longer stored or active. Another process sharing the database may have written
    /// them; `salus serve` calls this periodically. Returns how many changed.
    pub async fn sync_search_parameters(&self) -> Result<usize> {
        let mut q = salus_store::SearchQuery::new("SearchParameter");
        q.count = 10_000;
        let page = self.store().search(&q).await?;
        let live = salus_fhir::defs::custom_search_params();
        let mut wanted = std::collections::HashSet::new();
        let mut changed = 0;
        for rec in page.entries {
            let Some(v) = rec
                .body
                .as_deref()
                .and_then(|b| serde_json::from_str::<Value>(b).ok())
            else {
                continue;
            };
            match salus_search::custom::definition(&v) {
                Ok(Some(def)) => {
                    wanted.insert(def.url.clone());
                    if live.iter().any(|(l, _)| same_definition(l, &def)) {
                        continue;
                    }
                    match salus_fhir::defs::register_custom(def) {
                        Ok(()) => changed += 1,
                        Err(e) => {
                            tracing::warn!(id = %rec.id, error = %e, "SearchParameter not made live")
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(id = %rec.id, error = %e, "SearchParameter not made live"),
            }
        }
        for (l, _) in live {
            if !wanted.contains(&l.url) && salus_fhir::defs::unregister_custom(&l.url) {
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// `SearchParameter/$status`: every custom parameter with its state — `active`
    /// (searched, and indexed on every write) and whether stored resources have been
    /// reindexed for it since it went live.
    pub fn search_parameter_status(&self) -> Value {
        let reindexed = self
            .reindexed_generation
            .load(std::sync::atomic::Ordering::Relaxed);
        let params: Vec<Value> = salus_fhir::defs::custom_search_params()
            .into_iter()
            .map(|(def, generation)| {
                json!({"name": "parameter", "part": [
                    {"name": "url", "valueUri": def.url},
                    {"name": "code", "valueCode": def.code},
                    {"name": "base", "valueString": def.base.join(",")},
                    {"name": "type", "valueCode": def.kind.as_str()},
                    {"name": "status", "valueCode": "active"},
                    {"name": "existingResourcesIndexed", "valueBoolean": generation <= reindexed},
                ]})
            })
            .collect();
        json!({"resourceType": "Parameters", "parameter": params})
    }

    /// Start [`FhirService::reindex`] in the background (Conflict while one runs).
    pub fn start_reindex(&self) -> Result<ReindexStatus> {
        self.require(salus_access::Capability::Admin, "reindexing")?;
        {
            let mut job = self.reindex_job.lock().expect("reindex status");
            if job.state == ReindexState::Running {
                return Err(FhirError::Conflict("a reindex is already running".into()));
            }
            *job = ReindexStatus {
                state: ReindexState::Running,
                started: Some(crate::time::now_micros()),
                ..Default::default()
            };
        }
        let svc = self.clone();
        tokio::spawn(async move {
            let job = svc.reindex_job.clone();
            let result = svc
                .reindex(|done, total| {
                    let mut j = job.lock().expect("reindex status");
                    j.processed = done;
                    j.total = total;
                })
                .await;
            let mut j = job.lock().expect("reindex status");
            j.finished = Some(crate::time::now_micros());
            match result {
                Ok(n) => {
                    j.state = ReindexState::Completed;
                    tracing::info!(resources = n, "reindex completed");
                }
                Err(e) => {
                    tracing::error!(error = %e, "reindex failed");
                    j.state = ReindexState::Failed(e.to_string());
                }
            }
        });
        Ok(self.reindex_status())
    }

    /// The background reindex job's progress.
    pub fn reindex_status(&self) -> ReindexStatus {
        self.reindex_job.lock().expect("reindex status").clone()
    }
}

/// Whether two definitions search the same way (so re-registering would change nothing).
fn same_definition(
    a: &salus_fhir::defs::SearchParamDef,
    b: &salus_fhir::defs::SearchParamDef,
) -> bool {
    a.url == b.url
        && a.code == b.code
        && a.kind == b.kind
        && a.expression == b.expression
        && a.base == b.base
        && a.targets == b.targets
        && a.components == b.components
}
