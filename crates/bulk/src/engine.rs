//! The job engine: kick-off, background tasks, status, cancellation, restart.

use crate::export::{self, ExportLevel, ExportRequest};
use crate::import::{self, ImportRequest};
use crate::job::{Job, JobKind, JobStatus, Progress};
use crate::{BulkConfig, JobError};
use salus_service::{time, FhirError, FhirService};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A job known to the engine.
pub(crate) struct JobHandle {
    pub(crate) job: Mutex<Job>,
    /// The service the job reads and writes through: the kick-off caller's scoped
    /// service when the API has one, else the engine's.
    pub(crate) service: Option<FhirService>,
    /// Set by a DELETE: the task stops at its next page and removes the folder.
    pub(crate) cancelled: AtomicBool,
    pub(crate) dir: PathBuf,
}

impl JobHandle {
    pub(crate) fn set_progress(&self, done: u64, total: u64, phase: &str) {
        let mut job = self.job.lock().expect("job lock");
        job.progress.done = done;
        job.progress.total = total.max(done);
        if !phase.is_empty() {
            job.progress.phase = phase.to_string();
        }
    }
}

/// A snapshot of a job for the status endpoint.
#[derive(Debug, Clone)]
pub struct JobView {
    pub job: Job,
}

impl JobView {
    /// `X-Progress` text (export.html#response---in-progress-status).
    pub fn progress_text(&self) -> String {
        let Progress { done, total, phase } = &self.job.progress;
        let what = if phase.is_empty() {
            String::new()
        } else {
            format!(" ({phase})")
        };
        match (self.job.status, *total) {
            (JobStatus::Accepted, _) => "queued".to_string(),
            (_, 0) => format!("{done} resources{what}"),
            (_, t) => format!(
                "{}% ({done} of about {t} resources){what}",
                (done * 100 / t).min(100)
            ),
        }
    }
}

/// Bulk jobs of one server: kicked off by the API (or the CLI), run as tokio tasks.
#[derive(Clone)]
pub struct BulkEngine {
    inner: Arc<Inner>,
}

/// Rebuilds, after a restart, the service a job's owner may use (`None`: the owner may
/// no longer act).
pub type Rescope = Arc<dyn Fn(&str) -> Option<FhirService> + Send + Sync>;

struct Inner {
    service: FhirService,
    config: BulkConfig,
    jobs: Mutex<HashMap<String, Arc<JobHandle>>>,
    rescope: Mutex<Option<Rescope>>,
}

fn valid_job_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl BulkEngine {
    /// An engine with no jobs loaded; call [`BulkEngine::resume`] to pick up the jobs
    /// a previous run left.
    pub fn new(service: FhirService, config: BulkConfig) -> Self {
        BulkEngine {
            inner: Arc::new(Inner {
                service,
                config,
                jobs: Mutex::new(HashMap::new()),
                rescope: Mutex::new(None),
            }),
        }
    }

    /// How to rebuild a job owner's scoped service when an unfinished job restarts.
    /// Without it, a restarted job that has an owner fails (it would otherwise run
    /// with the server's unrestricted service).
    pub fn with_rescope(self, rescope: Rescope) -> Self {
        *self.inner.rescope.lock().expect("rescope lock") = Some(rescope);
        self
    }

    pub fn config(&self) -> &BulkConfig {
        &self.inner.config
    }

    pub fn service(&self) -> &FhirService {
        &self.inner.service
    }

    /// Load the job files under the jobs folder: finished jobs are served again;
    /// unfinished ones start over from their beginning, on their original snapshot, so
    /// their output is what it would have been (docs/bulk.md, "Restarts"). Returns how
    /// many were restarted. Call inside a tokio runtime.
    pub fn resume(&self) -> std::io::Result<usize> {
        let root = &self.inner.config.jobs_dir;
        if !root.exists() {
            return Ok(0);
        }
        let mut restarted = 0;
        let mut entries: Vec<PathBuf> = std::fs::read_dir(root)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        entries.sort();
        for dir in entries {
            let job = match Job::load(&dir) {
                Ok(j) => j,
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "unreadable bulk job file; left alone");
                    continue;
                }
            };
            let mut job = job;
            let unfinished = !job.status.is_finished();
            let id = job.id.clone();
            let mut service = None;
            let mut runnable = unfinished;
            if let (true, Some(owner)) = (unfinished, job.owner.clone()) {
                let rescope = self.inner.rescope.lock().expect("rescope lock").clone();
                service = rescope.and_then(|r| r(&owner));
                if service.is_none() {
                    // Never run a caller's job with more rights than the caller had.
                    job.status = JobStatus::Rejected;
                    job.failure = Some(
                        "the server restarted and could not restore the kick-off caller's access; kick the job off again".into(),
                    );
                    let _ = job.save(&dir);
                    runnable = false;
                }
            }
            let handle = Arc::new(JobHandle {
                job: Mutex::new(job),
                service,
                cancelled: AtomicBool::new(false),
                dir,
            });
            self.inner
                .jobs
                .lock()
                .expect("jobs lock")
                .insert(id.clone(), handle.clone());
            if runnable {
                tracing::info!(job = %id, "restarting bulk job left unfinished");
                restarted += 1;
                self.spawn(handle);
            }
        }
        Ok(restarted)
    }

    /// Kick off an export. Group members are resolved now (unknown Group: 404), and
    /// the snapshot is taken now: `transactionTime` and the store position.
    pub async fn start_export(
        &self,
        request: ExportRequest,
        request_url: &str,
        owner: Option<String>,
    ) -> Result<String, FhirError> {
        self.start_export_as(None, request, request_url, owner)
            .await
    }

    /// [`BulkEngine::start_export`] reading through `service` (the kick-off caller's
    /// scoped service), when given.
    pub async fn start_export_as(
        &self,
        service: Option<FhirService>,
        mut request: ExportRequest,
        request_url: &str,
        owner: Option<String>,
    ) -> Result<String, FhirError> {
        let svc = service.as_ref().unwrap_or(&self.inner.service);
        if let ExportLevel::Group(gid) = &request.level {
            let group = svc.read("Group", gid).await?;
            let body: Value = serde_json::from_str(group.body.as_deref().unwrap_or("{}"))
                .map_err(|e| FhirError::Internal(format!("stored Group is not JSON: {e}")))?;
            let members: Vec<String> = body
                .get("member")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|m| m.get("inactive").and_then(Value::as_bool) != Some(true))
                .filter_map(|m| m.pointer("/entity/reference").and_then(Value::as_str))
                .filter_map(|r| r.strip_prefix("Patient/"))
                .map(str::to_string)
                .collect();
            request.patients = if request.patients.is_empty() {
                members
            } else {
                // `patient` narrows a Group export to those of its members.
                request
                    .patients
                    .iter()
                    .filter(|p| members.contains(p))
                    .cloned()
                    .collect()
            };
        }
        let mut job = self.new_job(JobKind::Export, request_url, owner).await?;
        job.export = Some(request);
        self.launch(job, service)
            .map_err(|e| FhirError::Internal(e.to_string()))
    }

    /// Kick off an import (inputs are checked by [`ImportRequest::parse`]).
    pub async fn start_import(
        &self,
        request: ImportRequest,
        request_url: &str,
        owner: Option<String>,
    ) -> Result<String, FhirError> {
        self.start_import_as(None, request, request_url, owner)
            .await
    }

    /// [`BulkEngine::start_import`] writing through `service` (the kick-off caller's
    /// scoped service), when given.
    pub async fn start_import_as(
        &self,
        service: Option<FhirService>,
        request: ImportRequest,
        request_url: &str,
        owner: Option<String>,
    ) -> Result<String, FhirError> {
        let mut job = self.new_job(JobKind::Import, request_url, owner).await?;
        job.import = Some(request);
        self.launch(job, service)
            .map_err(|e| FhirError::Internal(e.to_string()))
    }

    async fn new_job(
        &self,
        kind: JobKind,
        request_url: &str,
        owner: Option<String>,
    ) -> Result<Job, FhirError> {
        let snapshot_seq = self.inner.service.store().snapshot_seq().await?;
        Ok(Job {
            id: uuid::Uuid::new_v4().simple().to_string(),
            kind,
            status: JobStatus::Accepted,
            request: request_url.to_string(),
            transaction_time: time::format_instant(time::now_micros()),
            snapshot_seq,
            owner,
            export: None,
            import: None,
            progress: Progress::default(),
            output: vec![],
            error: vec![],
            deleted: vec![],
            failure: None,
            attempts: 0,
        })
    }

    fn launch(&self, job: Job, service: Option<FhirService>) -> std::io::Result<String> {
        let dir = self.inner.config.jobs_dir.join(&job.id);
        std::fs::create_dir_all(&dir)?;
        job.save(&dir)?;
        let id = job.id.clone();
        let handle = Arc::new(JobHandle {
            job: Mutex::new(job),
            service,
            cancelled: AtomicBool::new(false),
            dir,
        });
        self.inner
            .jobs
            .lock()
            .expect("jobs lock")
            .insert(id.clone(), handle.clone());
        self.spawn(handle);
        Ok(id)
    }

    fn spawn(&self, handle: Arc<JobHandle>) {
        let engine = self.clone();
        tokio::spawn(async move { engine.run(handle).await });
    }

    async fn run(&self, handle: Arc<JobHandle>) {
        let (kind, id) = {
            let mut job = handle.job.lock().expect("job lock");
            job.status = JobStatus::Running;
            job.attempts += 1;
            job.output.clear();
            job.error.clear();
            job.deleted.clear();
            job.progress = Progress::default();
            (job.kind, job.id.clone())
        };
        // A restarted job starts from a clean folder.
        if let Err(e) = clear_outputs(&handle.dir) {
            tracing::warn!(job = %id, error = %e, "could not clear old job files");
        }
        self.save(&handle);
        let service = handle.service.as_ref().unwrap_or(&self.inner.service);
        let config = &self.inner.config;
        let result = match kind {
            JobKind::Export => export::run(service, config, &handle).await,
            JobKind::Import => import::run(service, config, &handle).await,
        };
        if handle.cancelled.load(Ordering::Relaxed) {
            let _ = std::fs::remove_dir_all(&handle.dir);
            return;
        }
        {
            let mut job = handle.job.lock().expect("job lock");
            match result {
                Ok(()) => job.status = JobStatus::Completed,
                Err(JobError::Input(m)) => {
                    job.status = JobStatus::Rejected;
                    job.failure = Some(m);
                }
                Err(JobError::Internal(m)) => {
                    tracing::error!(job = %id, error = %m, "bulk job failed");
                    job.status = JobStatus::Failed;
                    job.failure = Some(m);
                }
            }
        }
        self.save(&handle);
        if handle.cancelled.load(Ordering::Relaxed) {
            let _ = std::fs::remove_dir_all(&handle.dir);
        }
    }

    fn save(&self, handle: &JobHandle) {
        let job = handle.job.lock().expect("job lock").clone();
        if let Err(e) = job.save(&handle.dir) {
            tracing::error!(job = %job.id, error = %e, "could not write the bulk job file");
        }
    }

    fn handle(&self, id: &str) -> Option<Arc<JobHandle>> {
        if !valid_job_id(id) {
            return None;
        }
        self.inner.jobs.lock().expect("jobs lock").get(id).cloned()
    }

    /// The job's current state; `None` for an unknown or cancelled job.
    pub fn status(&self, id: &str) -> Option<JobView> {
        let h = self.handle(id)?;
        let job = h.job.lock().expect("job lock").clone();
        Some(JobView { job })
    }

    /// Cancel a job (running or finished): it stops, its files are removed and its
    /// status URL answers 404 from now on. `false` for an unknown job.
    pub fn cancel(&self, id: &str) -> bool {
        let Some(h) = self.handle(id) else {
            return false;
        };
        h.cancelled.store(true, Ordering::Relaxed);
        self.inner.jobs.lock().expect("jobs lock").remove(id);
        let finished = h.job.lock().expect("job lock").status.is_finished();
        if finished {
            let _ = std::fs::remove_dir_all(&h.dir);
        }
        // A running job removes its folder when it sees the flag.
        true
    }

    /// The path of a file a job produced, if `file` is one of them.
    pub fn file_path(&self, id: &str, file: &str) -> Option<PathBuf> {
        let h = self.handle(id)?;
        let listed = h
            .job
            .lock()
            .expect("job lock")
            .files()
            .any(|f| f.file == file);
        listed.then(|| h.dir.join(file))
    }

    /// Wait until a job has finished (for the CLI and tests); `None` if it is unknown.
    pub async fn wait(&self, id: &str) -> Option<JobView> {
        loop {
            let v = self.status(id)?;
            if v.job.status.is_finished() {
                return Some(v);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// Remove everything but `job.json` from a job folder.
fn clear_outputs(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.file_name().and_then(|n| n.to_str()) != Some("job.json") && p.is_file() {
            std::fs::remove_file(p)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_plain() {
        assert!(valid_job_id("0a1b2c"));
        assert!(!valid_job_id("../x"));
        assert!(!valid_job_id(""));
    }
}
