//! The persisted state of a bulk job (`job.json` in the job's folder).

use crate::export::ExportRequest;
use crate::import::ImportRequest;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Export,
    Import,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Kicked off, not started yet (or waiting to be restarted after a restart).
    Accepted,
    Running,
    Completed,
    /// Ended with an error caused by the request or its inputs.
    Rejected,
    /// Ended with an internal error.
    Failed,
}

impl JobStatus {
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Rejected | JobStatus::Failed
        )
    }
}

/// One file a job produced (in its folder).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    /// Resource type of the lines (`OperationOutcome` for error files, `Bundle` for
    /// deletions).
    #[serde(rename = "type")]
    pub rtype: String,
    /// File name in the job folder.
    pub file: String,
    pub count: u64,
    pub bytes: u64,
    /// The import input this file belongs to (import manifests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_url: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Resources processed so far.
    pub done: u64,
    /// Estimated resources in all (0: not known).
    pub total: u64,
    /// What the job is doing (`Observation`, an input URL).
    pub phase: String,
}

/// A bulk job as kept on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub kind: JobKind,
    pub status: JobStatus,
    /// The kick-off request URL (`request` in the manifest).
    pub request: String,
    /// When the snapshot was taken (FHIR instant; `transactionTime`).
    pub transaction_time: String,
    /// The store position of the snapshot: exports read versions up to it, also when
    /// restarted after a server restart.
    pub snapshot_seq: i64,
    /// Who kicked the job off, when the API knows (the authorization hook's subject).
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub export: Option<ExportRequest>,
    #[serde(default)]
    pub import: Option<ImportRequest>,
    #[serde(default)]
    pub progress: Progress,
    #[serde(default)]
    pub output: Vec<OutputFile>,
    #[serde(default)]
    pub error: Vec<OutputFile>,
    #[serde(default)]
    pub deleted: Vec<OutputFile>,
    /// Why the job failed.
    #[serde(default)]
    pub failure: Option<String>,
    /// How many times the job was started (more than 1 after restarts).
    #[serde(default)]
    pub attempts: u32,
}

impl Job {
    /// Write `job.json` atomically (a temporary file renamed over it).
    pub(crate) fn save(&self, dir: &Path) -> std::io::Result<()> {
        let tmp = dir.join("job.json.tmp");
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, text)?;
        std::fs::rename(tmp, dir.join("job.json"))
    }

    pub(crate) fn load(dir: &Path) -> std::io::Result<Job> {
        let text = std::fs::read(dir.join("job.json"))?;
        serde_json::from_slice(&text).map_err(std::io::Error::other)
    }

    /// Every file the job produced (for downloads).
    pub fn files(&self) -> impl Iterator<Item = &OutputFile> {
        self.output
            .iter()
            .chain(self.error.iter())
            .chain(self.deleted.iter())
    }

    /// The completion manifest (Bulk Data IG 2.0 export.html#response---complete-status;
    /// import adds `inputUrl`s), with file URLs under `file_base`
    /// (`[base]/$export-file/<job-id>`).
    pub fn manifest(&self, file_base: &str, requires_access_token: bool) -> serde_json::Value {
        use serde_json::json;
        let entry = |f: &OutputFile| {
            let mut e = json!({"type": f.rtype});
            if !f.file.is_empty() {
                e["url"] = json!(format!("{file_base}/{}", f.file));
            }
            e["count"] = json!(f.count);
            if let Some(u) = &f.input_url {
                e["inputUrl"] = json!(u);
            }
            e
        };
        let mut m = json!({
            "transactionTime": self.transaction_time,
            "request": self.request,
            "requiresAccessToken": requires_access_token,
            "output": self.output.iter().map(entry).collect::<Vec<_>>(),
            "error": self.error.iter().map(entry).collect::<Vec<_>>(),
        });
        if !self.deleted.is_empty() {
            m["deleted"] = json!(self.deleted.iter().map(entry).collect::<Vec<_>>());
        }
        m
    }
}
