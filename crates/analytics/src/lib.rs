//! Analytics for Salus: SQL-on-FHIR views materialized as Arrow/Parquet, SQL over them
//! with Apache DataFusion, and population-health measures reported as FHIR
//! `MeasureReport`s and `Group`s.
//!
//! Owns: the mapping of view columns to Arrow types ([`schema`]), writing views to
//! Parquet and refreshing them from a change feed ([`Materializer`], [`Change`]), the
//! DataFusion table provider over materialized views ([`MaterializedTable`]), the read-only
//! SQL session ([`Analytics`]), result output ([`write_output`]) and the shipped measures
//! ([`measures`]).
//! Must not touch: storage (resources come in as iterators and [`Change`]s; the caller
//! reads the store and keeps the change-feed position), HTTP and the CLI (the binary wires
//! them), and the view language itself (`salus-views`). DataFusion, Arrow and Parquet
//! stay inside this crate.
//!
//! # Use
//!
//! ```
//! use salus_analytics::{Analytics, Materializer};
//! use serde_json::json;
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! let view = json!({"resource": "Patient", "name": "patient", "select": [{"column": [
//!     {"name": "id", "path": "getResourceKey()", "type": "id"},
//!     {"name": "gender", "path": "gender", "type": "code"}]}]});
//! let patients = vec![
//!     json!({"resourceType": "Patient", "id": "a", "gender": "female"}),
//!     json!({"resourceType": "Patient", "id": "b", "gender": "male"}),
//! ];
//! Materializer::new(dir.path()).materialize(&view, &patients, Some("42")).unwrap();
//! let sql = Analytics::new(dir.path()).unwrap();
//! let batches = sql.query("SELECT count(*) AS n FROM patient WHERE gender = 'female'").await.unwrap();
//! assert_eq!(batches[0].num_rows(), 1);
//! assert!(sql.query("DROP TABLE patient").await.unwrap_err().is_user_error());
//! # });
//! ```
//!
//! Queries are `async` (DataFusion is); call them from a Tokio runtime.
//! See `docs/analytics.md` for the type mapping, the on-disk layout and the measures.

mod error;
pub mod materialize;
pub mod measures;
mod output;
pub mod schema;
mod sql;
mod table;

pub use error::{AnalyticsError, Result};
pub use materialize::{
    view_hash, Change, Manifest, MaterializeOptions, MaterializeStats, Materializer, PartInfo,
    RefreshStats,
};
pub use output::{to_table_string, write_output, OutputFormat};
pub use schema::{view_batches, view_schema, BatchBuilder, ValueKind};
pub use sql::{Analytics, QueryLimits, QueryResult, TableInfo, TableSource};
pub use table::MaterializedTable;

/// Re-exports of the Arrow and DataFusion versions this crate is built with, so callers
/// use the same ones.
pub use datafusion::{self, arrow, parquet};
