//! SQL-on-FHIR v2 views for Salus: a runner of ViewDefinitions
//! (<https://sql-on-fhir.org/ig/latest/StructureDefinition-ViewDefinition.html>) over FHIR
//! resources held as `serde_json::Value`, and writers for its rows.
//!
//! Owns: validating and compiling a ViewDefinition (`resource`, `select`, `column`,
//! `forEach`, `forEachOrNull`, `repeat`, `unionAll`, `where`, `constant`, nested selects),
//! the view-specific FHIRPath functions (`getResourceKey()`, `getReferenceKey([type])`,
//! registered as custom functions on a `salus_fhirpath::Env`), `%rowIndex`, the column
//! schema, and CSV / NDJSON / JSON output.
//! Must not touch: storage, HTTP, or the FHIRPath language itself (that is
//! `salus-fhirpath`); columnar formats (Arrow, Parquet) and SQL engines belong to a later
//! crate built on [`View::columns`] and [`View::rows`].
//!
//! # Use
//!
//! Compile once, run over many resources; a [`View`] is `Send + Sync`:
//!
//! ```
//! use salus_views::View;
//! use serde_json::json;
//! let view = View::compile(&json!({
//!     "resource": "Patient",
//!     "select": [
//!         {"column": [{"name": "id", "path": "getResourceKey()", "type": "id"}]},
//!         {"forEach": "name", "column": [{"name": "family", "path": "family", "type": "string"}]}
//!     ]
//! })).unwrap();
//! assert_eq!(view.columns()[1].name, "family");
//! let patient = json!({"resourceType": "Patient", "id": "p1",
//!     "name": [{"family": "Chalmers"}, {"family": "Windsor"}]});
//! let rows = view.rows(&patient).unwrap();
//! assert_eq!(rows, vec![vec![json!("p1"), json!("Chalmers")], vec![json!("p1"), json!("Windsor")]]);
//! ```
//!
//! Rows stream: [`View::rows_into`] appends one resource's rows to a buffer,
//! [`View::rows_iter`] runs lazily over an iterator of resources; [`write_csv`],
//! [`write_ndjson`], [`write_json`] take any iterator of resources, and [`RowWriter`]
//! takes them one at a time (e.g. from [`read_ndjson`]).
//!
//! # Semantics worth knowing
//!
//! - Invalid ViewDefinitions are rejected by [`View::compile`] with
//!   [`ViewError::Definition`] naming the element (`select[0].column[1].path`): missing
//!   `resource`/`select`, bad FHIRPath, paths the FHIR type model does not have, unknown
//!   `%constants`, duplicate or non-SQL column names, mismatched `unionAll` branches.
//! - A column that is not `collection: true` and whose path gives several values, and a
//!   `where` whose path gives something other than one Boolean (or nothing), are errors
//!   of the run ([`ViewError::Evaluation`]), as the specification requires.
//! - Values keep their JSON form: decimals their digits, dates their text; a complex value
//!   (a `Coding`) is its JSON object. Column `type`s are reported, not enforced.
//! - `getResourceKey()` is the resource `id`; `getReferenceKey()` the id of a literal
//!   reference (relative or absolute), so the two join.
//!
//! # Conformance
//!
//! `tests/conformance.rs` runs the official SQL-on-FHIR v2 test suite from
//! `../shared/conformance/sql-on-fhir-v2` and writes a report in the suite's format.

mod compile;
mod error;
mod functions;
mod run;
mod scan;
mod write;

pub use compile::{Column, View};
pub use error::ViewError;
pub use run::{Row, RowsIter};
pub use write::{read_ndjson, write_csv, write_json, write_ndjson, Format, RowWriter};

#[cfg(test)]
mod tests;
