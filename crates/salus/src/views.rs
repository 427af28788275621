//! `salus view run`: run a SQL-on-FHIR v2 ViewDefinition over the data dir's current
//! resources, or over NDJSON files, writing CSV, NDJSON or JSON to a file or stdout.

use crate::config::Config;
use crate::serve::{open_store, service};
use anyhow::{bail, Context, Result};
use salus_service::ViewScope;
use salus_views::{read_ndjson, Format, RowWriter, View};
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

/// What `salus view run` was asked.
pub struct RunArgs {
    pub view: PathBuf,
    pub format: String,
    pub out: Option<PathBuf>,
    /// NDJSON files to run over instead of the data dir.
    pub inputs: Vec<PathBuf>,
    pub scope: ViewScope,
}

fn load_view(path: &Path) -> Result<View> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    View::compile(&json).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Run the view; returns how many rows were written.
pub async fn run_cli(config: &Config, args: RunArgs) -> Result<u64> {
    let view = load_view(&args.view)?;
    let format: Format = args
        .format
        .parse()
        .map_err(|e| anyhow::anyhow!("--format: {e}"))?;
    let sink: Box<dyn Write + Send> = match &args.out {
        Some(p) => Box::new(BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => Box::new(BufWriter::new(std::io::stdout())),
    };
    let mut out = RowWriter::new(&view, format, sink)?;
    if args.inputs.is_empty() {
        let store = open_store(config)?;
        let svc = service(config, store);
        svc.run_view(&view, &args.scope, &mut out)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    } else {
        if !args.scope.patients.is_empty() || args.scope.since.is_some() {
            bail!("--patient and --since need the data dir; they do not apply to --input files");
        }
        for path in &args.inputs {
            let file = std::fs::File::open(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            for (line, resource) in read_ndjson(BufReader::new(file)).enumerate() {
                let resource = resource
                    .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), line + 1))?;
                if resource.get("resourceType").and_then(|t| t.as_str())
                    != Some(view.resource_type())
                {
                    continue;
                }
                if args.scope.limit.is_some_and(|l| out.rows_written() >= l) {
                    break;
                }
                out.write_resource(&resource)
                    .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), line + 1))?;
            }
        }
    }
    let (mut sink, rows) = out.finish()?;
    sink.flush()?;
    Ok(rows)
}
