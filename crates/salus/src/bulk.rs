//! Bulk data in the binary: the `[bulk]` settings, the engine `salus serve` runs
//! (`$export`, `$import`, resumed jobs), `salus export` and `salus import --incremental`.

use crate::config::Config;
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use salus_bulk::{
    BulkConfig, BulkEngine, ExportLevel, ExportRequest, ImportInput, ImportMode, ImportRequest,
    JobStatus, JobView,
};
use salus_service::FhirService;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `[bulk]` (docs/configuration.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BulkSettings {
    /// Job folders (default `<data_dir>/bulk`).
    pub jobs_dir: Option<PathBuf>,
    /// Also copy finished export files to `<copy_to>/<job-id>/`.
    pub copy_to: Option<PathBuf>,
    /// Start a new NDJSON file after this many resources...
    pub max_file_resources: u64,
    /// ... or this many bytes.
    pub max_file_bytes: u64,
    /// Server folders `$import` may read (`file://` URLs, absolute paths).
    pub import_dirs: Vec<PathBuf>,
    /// Folder of de-identification configurations `_anonymizationConfig` may name.
    pub anonymization_dir: Option<PathBuf>,
    /// `requiresAccessToken` in manifests: set it when an authorization layer protects
    /// the file URLs.
    pub requires_access_token: bool,
}

impl Default for BulkSettings {
    fn default() -> Self {
        let d = BulkConfig::new("");
        BulkSettings {
            jobs_dir: None,
            copy_to: None,
            max_file_resources: d.max_file_resources,
            max_file_bytes: d.max_file_bytes,
            import_dirs: vec![],
            anonymization_dir: None,
            requires_access_token: false,
        }
    }
}

impl BulkSettings {
    pub fn validate(&self) -> Result<()> {
        if self.max_file_resources == 0 || self.max_file_bytes == 0 {
            bail!("bulk.max_file_resources and bulk.max_file_bytes must be at least 1");
        }
        for d in &self.import_dirs {
            if !d.is_dir() {
                bail!("bulk.import_dirs: {} is not a folder", d.display());
            }
        }
        Ok(())
    }

    /// The engine's settings for a data dir.
    pub fn engine_config(&self, data_dir: &Path) -> BulkConfig {
        let mut c = BulkConfig::new(
            self.jobs_dir
                .clone()
                .unwrap_or_else(|| data_dir.join("bulk")),
        );
        c.copy_to = self.copy_to.clone();
        c.max_file_resources = self.max_file_resources;
        c.max_file_bytes = self.max_file_bytes;
        c.import_dirs = self.import_dirs.clone();
        c.anonymization_dir = self.anonymization_dir.clone();
        c.requires_access_token = self.requires_access_token;
        c
    }
}

/// The engine `salus serve` runs, with the jobs a previous run left resumed.
pub fn engine(config: &Config, service: FhirService) -> Result<BulkEngine> {
    let engine = BulkEngine::new(service, config.bulk.engine_config(&config.data_dir));
    let restarted = engine.resume().context("reading bulk job files")?;
    if restarted > 0 {
        tracing::info!(jobs = restarted, "restarted unfinished bulk jobs");
    }
    Ok(engine)
}

fn bar(progress: bool) -> ProgressBar {
    if !progress {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(0);
    b.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    b
}

/// Follow a job with a progress bar until it ends.
async fn follow(engine: &BulkEngine, id: &str, bar: &ProgressBar) -> Result<JobView> {
    loop {
        let v = engine
            .status(id)
            .ok_or_else(|| anyhow::anyhow!("job {id} vanished"))?;
        bar.set_length(v.job.progress.total.max(v.job.progress.done));
        bar.set_position(v.job.progress.done);
        bar.set_message(v.job.progress.phase.clone());
        if v.job.status.is_finished() {
            bar.finish_and_clear();
            return Ok(v);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn finished(v: &JobView) -> Result<()> {
    match v.job.status {
        JobStatus::Completed => Ok(()),
        _ => bail!(
            "{}",
            v.job
                .failure
                .as_deref()
                .unwrap_or("the job did not complete")
        ),
    }
}

/// What `salus export` writes.
pub struct ExportArgs {
    pub out: PathBuf,
    pub types: Vec<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub type_filters: Vec<String>,
    pub elements: Vec<String>,
    /// `safe-harbor` or a de-identification configuration file.
    pub anonymize: Option<String>,
    pub progress: bool,
}

/// `salus export`: the data dir's resources as NDJSON files in `out` (one job of the
/// same engine the server runs, on a snapshot taken at start).
pub async fn export_cli(config: &Config, args: ExportArgs) -> Result<()> {
    let backend = crate::serve::Backend::open(config).await?;
    let service = crate::serve::service_over(config, backend.store());
    let mut bc = config.bulk.engine_config(&config.data_dir);
    let mut pairs: Vec<(String, String)> = vec![];
    let mut push = |k: &str, v: &str| pairs.push((k.to_string(), v.to_string()));
    for t in &args.types {
        push("_type", t);
    }
    for f in &args.type_filters {
        push("_typeFilter", f);
    }
    for e in &args.elements {
        push("_elements", e);
    }
    if let Some(s) = &args.since {
        push("_since", s);
    }
    if let Some(u) = &args.until {
        push("_until", u);
    }
    if let Some(a) = &args.anonymize {
        if a == "safe-harbor" {
            push("_anonymizationConfig", a);
        } else {
            // A file on the command line: its folder is the configuration folder.
            let p = Path::new(a);
            if !p.is_file() {
                bail!("--anonymize {a}: not a file (or use safe-harbor)");
            }
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .context("--anonymize: a file name")?;
            bc.anonymization_dir = Some(
                p.parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(Path::new("."))
                    .to_path_buf(),
            );
            push("_anonymizationConfig", name);
        }
    }
    let req = ExportRequest::parse(ExportLevel::System, &pairs, None, &bc)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let engine = BulkEngine::new(service, bc);
    let start = Instant::now();
    let id = engine
        .start_export(req, "salus export", None)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let view = follow(&engine, &id, &bar(args.progress)).await?;
    finished(&view)?;
    let dir = engine.config().jobs_dir.join(&id);
    let mut total = 0;
    for f in view.job.files() {
        std::fs::rename(dir.join(&f.file), args.out.join(&f.file))
            .or_else(|_| std::fs::copy(dir.join(&f.file), args.out.join(&f.file)).map(|_| ()))
            .with_context(|| format!("moving {} to {}", f.file, args.out.display()))?;
    }
    for f in &view.job.output {
        total += f.count;
    }
    std::fs::write(
        args.out.join("manifest.json"),
        serde_json::to_vec_pretty(&view.job.manifest(".", false))?,
    )?;
    engine.cancel(&id);
    let secs = start.elapsed().as_secs_f64();
    println!(
        "exported {total} resources into {} files in {} in {secs:.2}s ({:.0} resources/s); {} errors",
        view.job.output.len(),
        args.out.display(),
        total as f64 / secs.max(1e-9),
        view.job.error.iter().map(|f| f.count).sum::<u64>()
    );
    backend.close().await?;
    Ok(())
}

/// The resource type of an NDJSON file from its name (`Patient.000.ndjson`,
/// `Observation-1.ndjson`).
fn type_of(path: &Path) -> Result<String> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let t = name.split(['.', '-', '_']).next().unwrap_or_default();
    if salus_fhir::defs::is_resource_type(t) {
        Ok(t.to_string())
    } else {
        bail!(
            "{}: an incremental import needs files named after their resource type (Patient.ndjson, Observation-1.ndjson)",
            path.display()
        )
    }
}

/// `salus import --incremental`: NDJSON files kept as they are (ids, `meta.versionId`,
/// `meta.lastUpdated`) through the bulk import job; returns whether every line went in.
pub async fn import_incremental_cli(
    config: &Config,
    paths: &[PathBuf],
    progress: bool,
) -> Result<bool> {
    let mut files = vec![];
    for p in paths {
        if p.is_dir() {
            let mut inner: Vec<PathBuf> = std::fs::read_dir(p)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().and_then(|e| e.to_str()) == Some("ndjson"))
                .collect();
            inner.sort();
            // In a folder, files not named after a resource type (a Bulk export's
            // `log.ndjson`) are left out, as the plain import leaves out non-FHIR files;
            // named on the command line, such a file is an error.
            for f in inner {
                if type_of(&f).is_ok() {
                    files.push(f);
                } else {
                    eprintln!(
                        "skipped {}: not named after a resource type (Patient.ndjson, Observation-1.ndjson)",
                        f.display()
                    );
                }
            }
        } else if p.is_file() {
            files.push(p.clone());
        } else {
            bail!("{}: no such file or folder", p.display());
        }
    }
    let mut inputs = vec![];
    let mut dirs = vec![];
    for f in &files {
        let real = f.canonicalize()?;
        dirs.push(real.parent().context("a folder")?.to_path_buf());
        inputs.push(ImportInput {
            rtype: type_of(f)?,
            url: real.display().to_string(),
        });
    }
    let backend = crate::serve::Backend::open(config).await?;
    let service = crate::serve::service_over(config, backend.store());
    let mut bc = config.bulk.engine_config(&config.data_dir);
    bc.import_dirs = dirs;
    let engine = BulkEngine::new(service, bc);
    let start = Instant::now();
    let id = engine
        .start_import(
            ImportRequest {
                input_source: None,
                mode: ImportMode::IncrementalLoad,
                inputs,
            },
            "salus import --incremental",
            None,
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let view = follow(&engine, &id, &bar(progress)).await?;
    finished(&view)?;
    let written: u64 = view.job.output.iter().map(|o| o.count).sum();
    let dir = engine.config().jobs_dir.join(&id);
    let mut errors = 0;
    for e in &view.job.error {
        errors += e.count;
        let text = std::fs::read_to_string(dir.join(&e.file)).unwrap_or_default();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
            for i in v["issue"].as_array().into_iter().flatten() {
                eprintln!(
                    "  {}: {}",
                    e.input_url.as_deref().unwrap_or("?"),
                    i["diagnostics"].as_str().unwrap_or("")
                );
            }
        }
    }
    engine.cancel(&id);
    let secs = start.elapsed().as_secs_f64();
    println!(
        "imported {written} new versions from {} files in {secs:.2}s ({:.0} resources/s); {errors} lines rejected",
        files.len(),
        written as f64 / secs.max(1e-9)
    );
    backend.close().await?;
    Ok(errors == 0)
}
