//! `salus deid IN OUT [--config FILE]`: de-identify NDJSON files, folders of them, or a
//! Bundle, with a configuration in the FHIR anonymization tool's format (default: the
//! shipped HIPAA Safe Harbor configuration). Nothing is read from or written to the store.

use anyhow::{bail, Context, Result};
use salus_deid::{Anonymizer, Config};
use std::io::{BufReader, BufWriter};
use std::path::Path;

/// What a run did, for the summary line.
pub struct Summary {
    pub files: u64,
    pub written: u64,
    pub skipped: u64,
}

/// De-identify `input` into `output`. A folder becomes a folder (every `*.ndjson`, same
/// names); an `.ndjson` file an NDJSON file; a `.json` file (a Bundle or one resource)
/// a JSON file.
pub fn run_cli(input: &Path, output: &Path, config: Option<&Path>) -> Result<Summary> {
    let config = match config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            Config::from_json(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
        }
        None => Config::safe_harbor(),
    };
    let engine = Anonymizer::new(config);
    if input.is_dir() {
        let s = engine
            .anonymize_ndjson_dir(input, output)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        return Ok(Summary {
            files: s.files,
            written: s.written,
            skipped: s.skipped + s.skipped_entries,
        });
    }
    if !input.is_file() {
        bail!("{} is neither a file nor a folder", input.display());
    }
    if input.canonicalize().ok() == output.canonicalize().ok() {
        bail!("the output must differ from the input");
    }
    let name = input
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    let create = || {
        std::fs::File::create(output).with_context(|| format!("cannot create {}", output.display()))
    };
    if name.ends_with(".ndjson") {
        let open = || {
            std::fs::File::open(input).with_context(|| format!("cannot open {}", input.display()))
        };
        // a first pass learns the names and identifiers the free-text scrubber looks for
        engine
            .learn_ndjson(BufReader::new(open()?))
            .map_err(|e| anyhow::anyhow!("{}: {e}", input.display()))?;
        let s = engine
            .anonymize_ndjson_file(BufReader::new(open()?), BufWriter::new(create()?), &name)
            .map_err(|e| anyhow::anyhow!("{}: {e}", input.display()))?;
        return Ok(Summary {
            files: 1,
            written: s.written,
            skipped: s.skipped + s.skipped_entries,
        });
    }
    let text = std::fs::read_to_string(input)
        .with_context(|| format!("cannot read {}", input.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", input.display()))?;
    let (out, written, skipped) =
        if value.get("resourceType").and_then(|t| t.as_str()) == Some("Bundle") {
            let (b, s) = engine
                .anonymize_bundle(value)
                .map_err(|e| anyhow::anyhow!("{}: {e}", input.display()))?;
            (b, s.entries, s.skipped)
        } else {
            engine.learn(&value);
            let r = engine
                .anonymize(value)
                .map_err(|e| anyhow::anyhow!("{}: {e}", input.display()))?;
            (r, 1, 0)
        };
    serde_json::to_writer(BufWriter::new(create()?), &out)?;
    Ok(Summary {
        files: 1,
        written,
        skipped,
    })
}
