//! Bulk data in and out of Salus (FHIR Bulk Data Access IG 2.0): asynchronous `$export`
//! and `$import` jobs, and the `Patient/[id]/$everything` operation.
//!
//! Owns: the job engine ([`BulkEngine`]: kick-off, background tokio tasks, progress,
//! cancellation, job files persisted under `<data-dir>/bulk/<job-id>/job.json` and
//! resumed after a restart), export over a consistent store snapshot
//! ([`salus_store::Store::snapshot_scan`]) streamed to split NDJSON files, optional
//! de-identification of the output through `salus-deid`, import of NDJSON inputs
//! through the service's one write path, the completion manifests, and `$everything`
//! paging ([`everything`]).
//!
//! Must not touch: HTTP (the API crate translates requests into [`ExportRequest`] /
//! [`ImportRequest`] and manifests into responses), SQL, or authorization (requests
//! carry an optional `owner` the caller's identity can be recorded in; deciding who
//! may kick off, poll or download is the API's hook to fill).

mod engine;
pub mod everything;
mod export;
mod import;
mod job;
mod output;

pub use engine::{BulkEngine, JobView, Rescope};
pub use everything::{EverythingPage, EverythingRequest};
pub use export::{ExportLevel, ExportRequest, OUTPUT_FORMATS};
pub use import::{ImportInput, ImportMode, ImportRequest};
pub use job::{Job, JobKind, JobStatus, OutputFile, Progress};

use std::path::PathBuf;

/// Settings of bulk jobs (`[bulk]` in the configuration file).
#[derive(Debug, Clone)]
pub struct BulkConfig {
    /// Where job folders live (`<data-dir>/bulk`).
    pub jobs_dir: PathBuf,
    /// Also copy finished export files to `<copy_to>/<job-id>/`, when set.
    pub copy_to: Option<PathBuf>,
    /// Start a new output file after this many resources...
    pub max_file_resources: u64,
    /// ... or once a file holds this many bytes (whichever comes first).
    pub max_file_bytes: u64,
    /// Server-side folders `$import` may read (`file://` URLs and plain paths); none:
    /// only `http://` inputs.
    pub import_dirs: Vec<PathBuf>,
    /// Folder holding de-identification configurations that `_anonymizationConfig`
    /// may name (besides `safe-harbor`); none: only `safe-harbor`.
    pub anonymization_dir: Option<PathBuf>,
    /// `requiresAccessToken` in manifests: whether downloads need the kick-off's token.
    pub requires_access_token: bool,
    /// Resources read from the store per page.
    pub page_size: usize,
    /// Resources written per import transaction.
    pub import_batch: usize,
}

impl BulkConfig {
    /// Defaults with jobs under `jobs_dir`.
    pub fn new(jobs_dir: impl Into<PathBuf>) -> Self {
        BulkConfig {
            jobs_dir: jobs_dir.into(),
            copy_to: None,
            max_file_resources: 100_000,
            max_file_bytes: 256 * 1024 * 1024,
            import_dirs: vec![],
            anonymization_dir: None,
            requires_access_token: false,
            page_size: 1_000,
            import_batch: 1_000,
        }
    }
}

/// Why a job could not run (recorded in its job file and reported on the status URL).
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Caused by the request or its inputs (reported as 400).
    #[error("{0}")]
    Input(String),
    /// Anything else (reported as 500; the detail is logged).
    #[error("{0}")]
    Internal(String),
}

impl From<std::io::Error> for JobError {
    fn from(e: std::io::Error) -> Self {
        JobError::Internal(format!("file system: {e}"))
    }
}

impl From<salus_service::FhirError> for JobError {
    fn from(e: salus_service::FhirError) -> Self {
        use salus_service::FhirError as E;
        match e {
            E::Invalid(_) | E::UnknownType(_) | E::NotFound(_) | E::NotSupported(_) => {
                JobError::Input(e.to_string())
            }
            other => JobError::Internal(other.to_string()),
        }
    }
}

impl From<salus_store::StoreError> for JobError {
    fn from(e: salus_store::StoreError) -> Self {
        JobError::Internal(e.to_string())
    }
}
