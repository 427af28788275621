//! [`Analytics`]: SQL over materialized (and in-memory) views with DataFusion.
//!
//! Every view materialized under a directory becomes a table named after the view, in
//! lower case (DataFusion folds unquoted identifiers to lower case; column names keep
//! their case, so `birthDate` is written `"birthDate"` in SQL). `information_schema` is on,
//! so `SHOW TABLES` and `SHOW COLUMNS FROM t` work.
//!
//! Queries are read-only: a statement is planned first, and a plan that contains DDL
//! (`CREATE`, `DROP`), DML (`INSERT`, `UPDATE`, `DELETE`), `COPY` or a session statement
//! (`SET`, transactions, `PREPARE`) anywhere, including under `EXPLAIN`, is refused with
//! [`AnalyticsError::ReadOnly`] before anything runs. Reading files by URL in `FROM` is
//! not enabled.

use crate::error::{AnalyticsError, Result};
use crate::materialize::{compile_named, MANIFEST_FILE};
use crate::schema::{view_batches, view_schema, DEFAULT_BATCH_ROWS};
use crate::table::MaterializedTable;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::MemTable;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use serde_json::Value;
use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Bounds on one statement (see [`Analytics::query_limited`]); `None`: unbounded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueryLimits {
    /// The most rows a result may have.
    pub max_rows: Option<usize>,
    /// The longest a statement may run.
    pub timeout: Option<std::time::Duration>,
}

/// Where a registered table's rows live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableSource {
    /// Parquet parts under this view directory.
    Parquet {
        /// The change-feed position the table reflects.
        high_water_mark: Option<String>,
    },
    /// Arrow batches in memory.
    Memory,
}

/// A table [`Analytics`] can query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    /// SQL table name.
    pub name: String,
    /// Rows in the table.
    pub rows: u64,
    /// Where the rows are.
    pub source: TableSource,
}

/// A query's result: the schema (known even when there are no rows) and the batches.
#[derive(Debug, Clone)]
pub struct QueryResult {
    /// Schema of the result.
    pub schema: SchemaRef,
    /// The rows.
    pub batches: Vec<RecordBatch>,
}

impl QueryResult {
    /// Number of rows.
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// A read-only SQL session over views.
pub struct Analytics {
    ctx: SessionContext,
    tables: BTreeMap<String, TableInfo>,
}

impl std::fmt::Debug for Analytics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Analytics")
            .field("tables", &self.tables)
            .finish_non_exhaustive()
    }
}

impl Analytics {
    /// A session with no tables (add them with [`Analytics::register_view`] or
    /// [`Analytics::register_batches`]).
    pub fn in_memory() -> Self {
        let config = SessionConfig::new().with_information_schema(true);
        Analytics {
            ctx: SessionContext::new_with_config(config),
            tables: BTreeMap::new(),
        }
    }

    /// A session with every view materialized under `dir` registered as a table (each
    /// subdirectory holding a `_manifest.json`). The manifests are read now: open a new
    /// session to see later refreshes.
    pub fn new(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let mut a = Self::in_memory();
        let entries = std::fs::read_dir(dir).map_err(|e| AnalyticsError::io(dir, e))?;
        let mut dirs = Vec::new();
        for e in entries {
            let e = e.map_err(|e| AnalyticsError::io(dir, e))?;
            let path = e.path();
            let hidden = e.file_name().to_string_lossy().starts_with('.');
            if !hidden && path.join(MANIFEST_FILE).is_file() {
                dirs.push(path);
            }
        }
        dirs.sort();
        for d in dirs {
            a.register_materialized(&d)?;
        }
        Ok(a)
    }

    /// Register one materialized view directory; returns the table name.
    pub fn register_materialized(&mut self, view_dir: &Path) -> Result<String> {
        let table = MaterializedTable::open(view_dir)?;
        let m = table.manifest();
        let info = TableInfo {
            name: m.view.to_lowercase(),
            rows: m.rows,
            source: TableSource::Parquet {
                high_water_mark: m.high_water_mark.clone(),
            },
        };
        self.register(info, Arc::new(table))
    }

    /// Run the ViewDefinition over `resources` and register its rows, in memory, as the
    /// table named after the view; returns the number of rows.
    pub fn register_view<I, R>(&mut self, definition: &Value, resources: I) -> Result<u64>
    where
        I: IntoIterator<Item = R>,
        R: Borrow<Value>,
    {
        let (view, name) = compile_named(definition)?;
        let batches = view_batches(&view, resources, DEFAULT_BATCH_ROWS)?;
        let rows = self.register_batches(&name, view_schema(&view), batches)?;
        Ok(rows)
    }

    /// Register Arrow batches as an in-memory table; returns the number of rows.
    pub fn register_batches(
        &mut self,
        name: &str,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> Result<u64> {
        if !crate::materialize::valid_name(name) {
            return Err(AnalyticsError::Invalid(format!(
                "table name '{name}' must be letters, digits and '_'"
            )));
        }
        let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        let table = MemTable::try_new(schema, vec![batches])?;
        let info = TableInfo {
            name: name.to_lowercase(),
            rows,
            source: TableSource::Memory,
        };
        self.register(info, Arc::new(table))?;
        Ok(rows)
    }

    fn register(
        &mut self,
        info: TableInfo,
        provider: Arc<dyn datafusion::catalog::TableProvider>,
    ) -> Result<String> {
        let name = info.name.clone();
        self.ctx.deregister_table(name.as_str())?;
        self.ctx.register_table(name.as_str(), provider)?;
        self.tables.insert(name.clone(), info);
        Ok(name)
    }

    /// The registered tables, by name.
    pub fn tables(&self) -> Vec<TableInfo> {
        self.tables.values().cloned().collect()
    }

    /// The DataFusion session (for callers that need more than [`Analytics::query`];
    /// statements run on it directly are not checked for being read-only).
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Run one read-only SQL statement and collect its rows.
    pub async fn query(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        Ok(self.query_result(sql).await?.batches)
    }

    /// Run one read-only SQL statement; the result keeps its schema.
    pub async fn query_result(&self, sql: &str) -> Result<QueryResult> {
        self.query_limited(sql, QueryLimits::default()).await
    }

    /// Run one read-only SQL statement within `limits`: a result longer than
    /// `max_rows` is refused with [`AnalyticsError::TooManyRows`] (the engine stops after
    /// the first row over the limit, so it never builds the rest), and a statement still
    /// running after `timeout` is cancelled with [`AnalyticsError::Timeout`].
    pub async fn query_limited(&self, sql: &str, limits: QueryLimits) -> Result<QueryResult> {
        let run = async {
            let state = self.ctx.state();
            let plan = state.create_logical_plan(sql).await?;
            check_read_only(&plan)?;
            let mut df = self.ctx.execute_logical_plan(plan).await?;
            if let Some(max) = limits.max_rows {
                df = df.limit(0, Some(max.saturating_add(1)))?;
            }
            let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
            let batches = df.collect().await?;
            let result = QueryResult { schema, batches };
            match limits.max_rows {
                Some(max) if result.num_rows() > max => Err(AnalyticsError::TooManyRows(max)),
                _ => Ok(result),
            }
        };
        match limits.timeout {
            // Dropping the unfinished future cancels the engine's work.
            Some(t) => tokio::time::timeout(t, run)
                .await
                .map_err(|_| AnalyticsError::Timeout(t))?,
            None => run.await,
        }
    }
}

/// Refuse a plan that would change anything.
pub(crate) fn check_read_only(plan: &LogicalPlan) -> Result<()> {
    let mut bad: Option<String> = None;
    plan.apply_with_subqueries(|p| {
        let what = match p {
            LogicalPlan::Ddl(d) => Some(d.name().to_string()),
            LogicalPlan::Dml(d) => Some(d.name().to_string()),
            LogicalPlan::Copy(_) => Some("COPY".to_string()),
            LogicalPlan::Statement(s) => Some(s.name().to_string()),
            _ => None,
        };
        match what {
            Some(w) => {
                bad = Some(w);
                Ok(TreeNodeRecursion::Stop)
            }
            None => Ok(TreeNodeRecursion::Continue),
        }
    })?;
    match bad {
        Some(w) => Err(AnalyticsError::ReadOnly(w)),
        None => Ok(()),
    }
}
