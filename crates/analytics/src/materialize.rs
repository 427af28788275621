//! Materializing views as Parquet, and refreshing them incrementally.
//!
//! # Layout
//!
//! ```text
//! <root>/<view-name>/_manifest.json          what the table is (see [`Manifest`])
//! <root>/<view-name>/part-000001.parquet     rows
//! <root>/<view-name>/part-000001.keys.json   which resources the rows came from
//! ```
//!
//! Rows are written resource by resource, and one resource's rows never span two parts.
//! Each part has a key file: the run-length list `[["<id>", <rows>], …]` of the
//! resources whose rows it holds, in row order. The manifest lists the parts that make up
//! the table; a part file that the manifest does not list is not part of it.
//!
//! # Incremental refresh: copy-on-write parts
//!
//! [`Materializer::refresh`] takes the [`Change`]s since the last refresh. The parts that
//! hold rows of a changed resource are rewritten without those rows (the key file says
//! which row ranges they are); the new rows of resources that still exist go into new
//! parts; then the manifest is replaced atomically (written aside, then renamed) and the
//! files it no longer lists are removed. We chose this over a delta file plus a deletion
//! list merged at read time because the directory then is, after every refresh, a plain
//! Parquet dataset with exactly the table's rows: DataFusion, DuckDB or pandas can read
//! `part-*.parquet` without knowing about deletions, and queries pay nothing for them.
//! The cost is on the write side: a refresh rewrites every part that holds a changed
//! resource, so smaller parts (`part_rows`) make refreshes cheaper and scans a little
//! slower. Refreshes add small parts; [`Materializer::compact`] merges them.
//!
//! One process writes a view at a time (there is no lock). A reader that took a manifest
//! before a refresh may find its part files gone: re-open [`crate::Analytics`] after a
//! refresh.

use crate::error::{AnalyticsError, Result};
use crate::schema::{view_schema, BatchBuilder, DEFAULT_BATCH_ROWS};
use datafusion::arrow::array::BooleanArray;
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::properties::WriterProperties;
use salus_views::{Row, View};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::BufWriter;
use std::path::{Path, PathBuf};

/// Name of the manifest file in a view's directory.
pub const MANIFEST_FILE: &str = "_manifest.json";
/// Version of the on-disk layout written by this crate.
pub const FORMAT_VERSION: u32 = 1;

/// What a materialized view directory holds (its `_manifest.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Layout version ([`FORMAT_VERSION`]).
    pub format: u32,
    /// The view name (also the directory name and the SQL table name).
    pub view: String,
    /// The resource type the view reads.
    pub resource: String,
    /// Hash of the ViewDefinition (see [`view_hash`]): a refresh with another definition is
    /// refused, since the stored rows would not match it.
    pub view_hash: String,
    /// The ViewDefinition itself, so the table can be described and rebuilt.
    pub definition: Value,
    /// Rows in the table.
    pub rows: u64,
    /// Resources that contributed at least one row.
    pub resources: u64,
    /// The change-feed position the table reflects, as given by the caller (a version id,
    /// a timestamp, a transaction number: opaque here).
    pub high_water_mark: Option<String>,
    /// The parts making up the table, in order.
    pub parts: Vec<PartInfo>,
    /// Number for the next part file (part numbers are never reused, so a reader holding an
    /// old manifest never reads a different file under the same name).
    pub next_part: u64,
}

/// One Parquet part of a materialized view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartInfo {
    /// File name of the Parquet file, relative to the view directory.
    pub file: String,
    /// File name of its key file (resource ids and their row counts, in row order).
    pub keys: String,
    /// Rows in the part.
    pub rows: u64,
    /// Resources in the part.
    pub resources: u64,
}

/// One entry of a change feed: a resource created or updated (`body` is its new content)
/// or deleted (`body` is `None`).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Resource type (`Patient`).
    pub rtype: String,
    /// Resource id.
    pub id: String,
    /// The new body, or `None` for a deletion.
    pub body: Option<Value>,
}

impl Change {
    /// A create or update; type and id are read from the body.
    pub fn upsert(body: Value) -> Result<Change> {
        let rtype = body.get("resourceType").and_then(Value::as_str);
        let id = body.get("id").and_then(Value::as_str);
        match (rtype, id) {
            (Some(t), Some(i)) if !t.is_empty() && !i.is_empty() => Ok(Change {
                rtype: t.to_string(),
                id: i.to_string(),
                body: Some(body),
            }),
            _ => Err(AnalyticsError::Invalid(
                "a changed resource needs a resourceType and an id".into(),
            )),
        }
    }

    /// A deletion.
    pub fn delete(rtype: impl Into<String>, id: impl Into<String>) -> Change {
        Change {
            rtype: rtype.into(),
            id: id.into(),
            body: None,
        }
    }
}

/// How materialization writes its files.
#[derive(Debug, Clone)]
pub struct MaterializeOptions {
    /// Rows per Arrow batch (and Parquet write call).
    pub batch_rows: usize,
    /// A part is closed after the resource that brings it to this many rows.
    pub part_rows: usize,
    /// Rows per Parquet row group.
    pub row_group_rows: usize,
    /// Skip resources the view fails on (counted in [`MaterializeStats::skipped`]) instead
    /// of failing the whole run.
    pub skip_errors: bool,
}

impl Default for MaterializeOptions {
    fn default() -> Self {
        MaterializeOptions {
            batch_rows: DEFAULT_BATCH_ROWS,
            part_rows: 262_144,
            row_group_rows: 65_536,
            skip_errors: false,
        }
    }
}

/// What a full materialization did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MaterializeStats {
    /// Resources read (of any type).
    pub resources_read: u64,
    /// Resources that gave at least one row.
    pub resources: u64,
    /// Rows written.
    pub rows: u64,
    /// Part files written.
    pub parts: u64,
    /// Resources skipped because the view failed on them (only with `skip_errors`).
    pub skipped: u64,
    /// The first of those failures.
    pub first_error: Option<String>,
}

/// What an incremental refresh did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RefreshStats {
    /// Changes for the view's resource type (after keeping the last change per id).
    pub changes: u64,
    /// Rows removed (the old rows of changed and deleted resources).
    pub rows_removed: u64,
    /// Rows added (the new rows of changed resources).
    pub rows_added: u64,
    /// Existing parts rewritten.
    pub parts_rewritten: u64,
    /// New parts written.
    pub parts_added: u64,
    /// Resources skipped because the view failed on them (only with `skip_errors`).
    pub skipped: u64,
    /// Rows in the table afterwards.
    pub rows: u64,
}

/// Writes and refreshes materialized views under one root directory.
#[derive(Debug, Clone)]
pub struct Materializer {
    root: PathBuf,
    options: MaterializeOptions,
}

/// Hash of a ViewDefinition: FNV-1a (64 bit) over its JSON with object keys sorted, in hex.
/// Stable across runs and key order; not cryptographic (it only detects a changed view).
pub fn view_hash(definition: &Value) -> String {
    fn canon(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String((*k).clone()).to_string());
                    out.push(':');
                    if let Some(x) = m.get(*k) {
                        canon(x, out);
                    }
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    canon(x, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut s = String::new();
    canon(definition, &mut s);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Whether `name` can be a view (directory and table) name: an SQL identifier.
pub(crate) fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128
}

/// Compile a ViewDefinition that is to be materialized (it needs a usable `name`).
pub(crate) fn compile_named(definition: &Value) -> Result<(View, String)> {
    let view = View::compile(definition)?;
    let name = view
        .name()
        .ok_or_else(|| AnalyticsError::Invalid("a materialized view needs a 'name'".into()))?
        .to_string();
    if !valid_name(&name) {
        return Err(AnalyticsError::Invalid(format!(
            "view name '{name}' must be letters, digits and '_', not starting with a digit"
        )));
    }
    Ok((view, name))
}

fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{nanos}", std::process::id())
}

/// Read the manifest in a view directory.
pub fn read_manifest(view_dir: &Path) -> Result<Manifest> {
    let path = view_dir.join(MANIFEST_FILE);
    let text = fs::read_to_string(&path).map_err(|e| AnalyticsError::io(&path, e))?;
    let m: Manifest =
        serde_json::from_str(&text).map_err(|e| AnalyticsError::corrupt(&path, e.to_string()))?;
    if m.format != FORMAT_VERSION {
        return Err(AnalyticsError::corrupt(
            &path,
            format!(
                "layout version {} (this build reads {FORMAT_VERSION})",
                m.format
            ),
        ));
    }
    Ok(m)
}

fn write_manifest(view_dir: &Path, m: &Manifest) -> Result<()> {
    let path = view_dir.join(MANIFEST_FILE);
    let tmp = view_dir.join(format!("{MANIFEST_FILE}.tmp"));
    let text =
        serde_json::to_vec_pretty(m).map_err(|e| AnalyticsError::corrupt(&path, e.to_string()))?;
    fs::write(&tmp, text).map_err(|e| AnalyticsError::io(&tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| AnalyticsError::io(&path, e))
}

type Runs = Vec<(String, u64)>;

fn read_keys(path: &Path) -> Result<Runs> {
    let text = fs::read_to_string(path).map_err(|e| AnalyticsError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| AnalyticsError::corrupt(path, e.to_string()))
}

fn write_keys(path: &Path, runs: &Runs) -> Result<()> {
    let text =
        serde_json::to_vec(runs).map_err(|e| AnalyticsError::corrupt(path, e.to_string()))?;
    fs::write(path, text).map_err(|e| AnalyticsError::io(path, e))
}

/// The batches of one Parquet part.
pub(crate) fn read_part(path: &Path, batch_rows: usize) -> Result<Vec<RecordBatch>> {
    let file = File::open(path).map_err(|e| AnalyticsError::io(path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)?
        .with_batch_size(batch_rows.max(1))
        .build()?;
    let mut out = Vec::new();
    for b in reader {
        out.push(b?);
    }
    Ok(out)
}

struct OpenPart {
    file: String,
    keys: String,
    writer: ArrowWriter<BufWriter<File>>,
    runs: Runs,
    rows: u64,
}

/// Writes parts into one view directory, numbering them from `next_part`.
struct PartWriter {
    dir: PathBuf,
    schema: SchemaRef,
    options: MaterializeOptions,
    builder: BatchBuilder,
    next_part: u64,
    open: Option<OpenPart>,
    done: Vec<PartInfo>,
}

impl PartWriter {
    fn new(dir: &Path, view: &View, options: &MaterializeOptions, next_part: u64) -> Self {
        PartWriter {
            dir: dir.to_path_buf(),
            schema: view_schema(view),
            options: options.clone(),
            builder: BatchBuilder::new(view),
            next_part,
            open: None,
            done: Vec::new(),
        }
    }

    fn start_part(&mut self) -> Result<OpenPart> {
        let n = self.next_part;
        self.next_part += 1;
        let file = format!("part-{n:06}.parquet");
        let keys = format!("part-{n:06}.keys.json");
        let path = self.dir.join(&file);
        let out = File::create(&path).map_err(|e| AnalyticsError::io(&path, e))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(self.options.row_group_rows.max(1)))
            .build();
        let writer = ArrowWriter::try_new(BufWriter::new(out), self.schema.clone(), Some(props))?;
        Ok(OpenPart {
            file,
            keys,
            writer,
            runs: Vec::new(),
            rows: 0,
        })
    }

    fn close(&mut self, mut part: OpenPart) -> Result<()> {
        if !self.builder.is_empty() {
            let batch = self.builder.finish()?;
            part.writer.write(&batch)?;
        }
        part.writer.close()?;
        write_keys(&self.dir.join(&part.keys), &part.runs)?;
        self.done.push(PartInfo {
            file: part.file,
            keys: part.keys,
            rows: part.rows,
            resources: part.runs.len() as u64,
        });
        Ok(())
    }

    /// Add one resource's rows (already checked to fit by the caller's builder pass).
    fn push_resource(&mut self, key: &str, rows: &[Row]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        self.builder.push_rows(rows)?;
        let mut part = match self.open.take() {
            Some(p) => p,
            None => self.start_part()?,
        };
        part.runs.push((key.to_string(), rows.len() as u64));
        part.rows += rows.len() as u64;
        if part.rows >= self.options.part_rows as u64 {
            return self.close(part);
        }
        if self.builder.len() >= self.options.batch_rows {
            let batch = self.builder.finish()?;
            part.writer.write(&batch)?;
        }
        self.open = Some(part);
        Ok(())
    }

    /// Write `batches` (rows of `runs`, in order) as one new part.
    fn write_whole(&mut self, batches: &[RecordBatch], runs: Runs) -> Result<()> {
        let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        if rows == 0 {
            return Ok(());
        }
        let mut part = self.start_part()?;
        for b in batches {
            if b.num_rows() > 0 {
                let b = RecordBatch::try_new(self.schema.clone(), b.columns().to_vec())?;
                part.writer.write(&b)?;
            }
        }
        part.runs = runs;
        part.rows = rows;
        self.close(part)
    }

    fn finish(mut self) -> Result<(Vec<PartInfo>, u64)> {
        if let Some(p) = self.open.take() {
            self.close(p)?;
        }
        Ok((self.done, self.next_part))
    }
}

impl Materializer {
    /// A materializer writing under `root` (created when missing).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Materializer {
            root: root.into(),
            options: MaterializeOptions::default(),
        }
    }

    /// The same, with other options.
    pub fn with_options(mut self, options: MaterializeOptions) -> Self {
        self.options = options;
        self
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of view `name`.
    pub fn view_dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The manifest of a materialized view.
    pub fn manifest(&self, name: &str) -> Result<Manifest> {
        let dir = self.view_dir(name);
        if !dir.join(MANIFEST_FILE).exists() {
            return Err(AnalyticsError::Materialized {
                view: name.to_string(),
                message: "is not materialized".into(),
            });
        }
        read_manifest(&dir)
    }

    /// Build the view from scratch over `resources` (resources of other types are
    /// skipped), replacing what was materialized under its name. `high_water_mark` is the
    /// change-feed position the resources reflect. Resource ids are expected to be unique.
    pub fn materialize<I, R>(
        &self,
        definition: &Value,
        resources: I,
        high_water_mark: Option<&str>,
    ) -> Result<MaterializeStats>
    where
        I: IntoIterator<Item = R>,
        R: Borrow<Value>,
    {
        self.materialize_results(
            definition,
            resources.into_iter().map(Ok::<R, AnalyticsError>),
            high_water_mark,
        )
    }

    /// As [`Materializer::materialize`], over fallible input (such as
    /// [`salus_views::read_ndjson`]); an input error stops the run.
    pub fn materialize_results<I, R, E>(
        &self,
        definition: &Value,
        resources: I,
        high_water_mark: Option<&str>,
    ) -> Result<MaterializeStats>
    where
        I: IntoIterator<Item = std::result::Result<R, E>>,
        R: Borrow<Value>,
        AnalyticsError: From<E>,
    {
        let (view, name) = compile_named(definition)?;
        fs::create_dir_all(&self.root).map_err(|e| AnalyticsError::io(&self.root, e))?;
        let suffix = unique_suffix();
        let tmp = self.root.join(format!(".build-{name}-{suffix}"));
        fs::create_dir_all(&tmp).map_err(|e| AnalyticsError::io(&tmp, e))?;
        let result = self.build_into(&tmp, &view, definition, resources, high_water_mark);
        let stats = match result {
            Ok(s) => s,
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        let dir = self.view_dir(&name);
        let old = self.root.join(format!(".old-{name}-{suffix}"));
        let had_old = dir.exists();
        if had_old {
            fs::rename(&dir, &old).map_err(|e| AnalyticsError::io(&dir, e))?;
        }
        fs::rename(&tmp, &dir).map_err(|e| AnalyticsError::io(&dir, e))?;
        if had_old {
            fs::remove_dir_all(&old).map_err(|e| AnalyticsError::io(&old, e))?;
        }
        Ok(stats)
    }

    fn build_into<I, R, E>(
        &self,
        dir: &Path,
        view: &View,
        definition: &Value,
        resources: I,
        high_water_mark: Option<&str>,
    ) -> Result<MaterializeStats>
    where
        I: IntoIterator<Item = std::result::Result<R, E>>,
        R: Borrow<Value>,
        AnalyticsError: From<E>,
    {
        let mut stats = MaterializeStats::default();
        let mut writer = PartWriter::new(dir, view, &self.options, 1);
        let mut rows = Vec::new();
        for r in resources {
            let r = r?;
            let r = r.borrow();
            stats.resources_read += 1;
            rows.clear();
            let outcome = view
                .rows_into(r, &mut rows)
                .map_err(AnalyticsError::View)
                .and_then(|()| writer.push_resource(resource_key(r), &rows));
            match outcome {
                Ok(()) => {
                    if !rows.is_empty() {
                        stats.resources += 1;
                        stats.rows += rows.len() as u64;
                    }
                }
                Err(e) if self.options.skip_errors && e.is_user_error() => {
                    stats.skipped += 1;
                    stats.first_error.get_or_insert_with(|| e.to_string());
                }
                Err(e) => return Err(e),
            }
        }
        let (parts, next_part) = writer.finish()?;
        stats.parts = parts.len() as u64;
        let manifest = Manifest {
            format: FORMAT_VERSION,
            view: view.name().unwrap_or_default().to_string(),
            resource: view.resource_type().to_string(),
            view_hash: view_hash(definition),
            definition: definition.clone(),
            rows: stats.rows,
            resources: stats.resources,
            high_water_mark: high_water_mark.map(str::to_string),
            parts,
            next_part,
        };
        write_manifest(dir, &manifest)?;
        Ok(stats)
    }

    /// Apply changes since the last refresh (or full build): only the changed resources are
    /// reprocessed. Changes for other resource types are ignored; when several changes
    /// name the same resource the last one wins. The definition must be the one the table
    /// was built with (else [`AnalyticsError::Materialized`]: rebuild in full).
    pub fn refresh<I>(
        &self,
        definition: &Value,
        changes: I,
        high_water_mark: Option<&str>,
    ) -> Result<RefreshStats>
    where
        I: IntoIterator<Item = Change>,
    {
        let (view, name) = compile_named(definition)?;
        let dir = self.view_dir(&name);
        let mut manifest = self.manifest(&name)?;
        if manifest.view_hash != view_hash(definition) {
            return Err(AnalyticsError::Materialized {
                view: name,
                message: "was built from another ViewDefinition; materialize it again".into(),
            });
        }
        // Last change per id, in first-seen order.
        let mut order: Vec<String> = Vec::new();
        let mut latest: HashMap<String, Option<Value>> = HashMap::new();
        for c in changes {
            if c.rtype != manifest.resource {
                continue;
            }
            if !latest.contains_key(&c.id) {
                order.push(c.id.clone());
            }
            latest.insert(c.id, c.body);
        }
        let mut stats = RefreshStats {
            changes: order.len() as u64,
            ..RefreshStats::default()
        };
        if let Some(h) = high_water_mark {
            manifest.high_water_mark = Some(h.to_string());
        }
        if order.is_empty() {
            stats.rows = manifest.rows;
            write_manifest(&dir, &manifest)?;
            return Ok(stats);
        }
        let changed: HashSet<&str> = order.iter().map(String::as_str).collect();

        let mut writer = PartWriter::new(&dir, &view, &self.options, manifest.next_part);
        let mut parts = Vec::with_capacity(manifest.parts.len());
        let mut obsolete = Vec::new();
        let mut removed_resources = 0u64;
        for part in &manifest.parts {
            let runs = read_keys(&dir.join(&part.keys))?;
            if !runs.iter().any(|(k, _)| changed.contains(k.as_str())) {
                parts.push(part.clone());
                continue;
            }
            let mut keep = Vec::with_capacity(part.rows as usize);
            let mut kept_runs = Vec::new();
            for (k, n) in runs {
                let drop = changed.contains(k.as_str());
                keep.extend(std::iter::repeat_n(!drop, n as usize));
                if drop {
                    stats.rows_removed += n;
                    removed_resources += 1;
                } else {
                    kept_runs.push((k, n));
                }
            }
            let path = dir.join(&part.file);
            let mut kept = Vec::new();
            let mut offset = 0usize;
            for batch in read_part(&path, self.options.batch_rows)? {
                let n = batch.num_rows();
                let mask: BooleanArray = keep
                    .get(offset..offset + n)
                    .ok_or_else(|| AnalyticsError::corrupt(&path, "more rows than its key file"))?
                    .iter()
                    .map(|b| Some(*b))
                    .collect();
                offset += n;
                kept.push(filter_record_batch(&batch, &mask)?);
            }
            if offset != keep.len() {
                return Err(AnalyticsError::corrupt(
                    &path,
                    "fewer rows than its key file",
                ));
            }
            writer.write_whole(&kept, kept_runs)?;
            stats.parts_rewritten += 1;
            obsolete.push(part.file.clone());
            obsolete.push(part.keys.clone());
        }
        let rewritten = writer.done.len();
        let mut rows = Vec::new();
        let mut added_resources = 0u64;
        for id in &order {
            let Some(Some(body)) = latest.get(id) else {
                continue;
            };
            rows.clear();
            let outcome = view
                .rows_into(body, &mut rows)
                .map_err(AnalyticsError::View)
                .and_then(|()| writer.push_resource(id, &rows));
            match outcome {
                Ok(()) => {
                    if !rows.is_empty() {
                        added_resources += 1;
                        stats.rows_added += rows.len() as u64;
                    }
                }
                Err(e) if self.options.skip_errors && e.is_user_error() => stats.skipped += 1,
                Err(e) => return Err(e),
            }
        }
        let (new_parts, next_part) = writer.finish()?;
        stats.parts_added = (new_parts.len() - rewritten) as u64;
        parts.extend(new_parts);
        manifest.parts = parts;
        manifest.next_part = next_part;
        manifest.rows = manifest.rows - stats.rows_removed + stats.rows_added;
        manifest.resources = manifest.resources - removed_resources + added_resources;
        stats.rows = manifest.rows;
        write_manifest(&dir, &manifest)?;
        for f in obsolete {
            let p = dir.join(f);
            fs::remove_file(&p).map_err(|e| AnalyticsError::io(&p, e))?;
        }
        Ok(stats)
    }

    /// Merge runs of small parts (fewer than `part_rows` rows together) into larger ones.
    /// Returns the number of parts afterwards.
    pub fn compact(&self, name: &str) -> Result<usize> {
        let mut manifest = self.manifest(name)?;
        let dir = self.view_dir(name);
        let view = View::compile(&manifest.definition)?;
        let target = self.options.part_rows as u64;
        // Group consecutive parts while the group stays under the target size.
        let mut groups: Vec<Vec<PartInfo>> = Vec::new();
        let mut rows_in_last = u64::MAX;
        for p in &manifest.parts {
            match groups.last_mut() {
                Some(g) if rows_in_last.saturating_add(p.rows) <= target => {
                    g.push(p.clone());
                    rows_in_last += p.rows;
                }
                _ => {
                    groups.push(vec![p.clone()]);
                    rows_in_last = p.rows;
                }
            }
        }
        let mut writer = PartWriter::new(&dir, &view, &self.options, manifest.next_part);
        let mut parts = Vec::new();
        let mut obsolete = Vec::new();
        for g in groups {
            if g.len() == 1 {
                parts.extend(g);
                continue;
            }
            let mut batches = Vec::new();
            let mut runs = Vec::new();
            for p in &g {
                batches.extend(read_part(&dir.join(&p.file), self.options.batch_rows)?);
                runs.extend(read_keys(&dir.join(&p.keys))?);
                obsolete.push(p.file.clone());
                obsolete.push(p.keys.clone());
            }
            let before = writer.done.len();
            writer.write_whole(&batches, runs)?;
            parts.extend(writer.done[before..].iter().cloned());
        }
        manifest.next_part = writer.next_part;
        manifest.parts = parts;
        write_manifest(&dir, &manifest)?;
        for f in obsolete {
            let p = dir.join(f);
            fs::remove_file(&p).map_err(|e| AnalyticsError::io(&p, e))?;
        }
        Ok(manifest.parts.len())
    }
}

/// The key rows of a resource are filed under: its `id` (empty when it has none; such rows
/// cannot be refreshed individually).
fn resource_key(resource: &Value) -> &str {
    resource.get("id").and_then(Value::as_str).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hash_ignores_key_order() {
        let a = json!({"resource": "Patient", "name": "p", "select": [{"column": []}]});
        let b = json!({"select": [{"column": []}], "name": "p", "resource": "Patient"});
        assert_eq!(view_hash(&a), view_hash(&b));
        assert_ne!(
            view_hash(&a),
            view_hash(&json!({"resource": "Observation"}))
        );
        assert_eq!(view_hash(&a).len(), 16);
    }

    #[test]
    fn names_must_be_identifiers() {
        assert!(valid_name("patient_demographics"));
        assert!(valid_name("_x1"));
        assert!(!valid_name("1x"));
        assert!(!valid_name("../etc"));
        assert!(!valid_name(""));
    }

    #[test]
    fn changes_read_type_and_id() {
        let c = Change::upsert(json!({"resourceType": "Patient", "id": "a"})).unwrap();
        assert_eq!((c.rtype.as_str(), c.id.as_str()), ("Patient", "a"));
        assert!(Change::upsert(json!({"resourceType": "Patient"})).is_err());
        assert_eq!(Change::delete("Patient", "a").body, None);
    }
}
