//! FHIR semantics over a [`salus_store::Store`]: the one service every entry point
//! (HTTP API, import, HL7 v2, devices, scheduling) reads and writes through.
//!
//! Owns: validation on write, version and `meta` assignment, conditional create /
//! update / delete / patch, history, transaction and batch Bundles with reference
//! resolution, the search-query parsing it needs for conditional operations, and
//! response shaping (`_summary`, `_elements`).
//! Must not touch: HTTP (status codes are described by [`FhirError`], not produced),
//! SQL, configuration files.

mod access;
mod audit;
mod bundle;
mod consent;
mod devices;
mod error;
mod import;
mod index;
mod purge;
mod query;
mod reindex;
pub mod response;
pub mod scheduling;
mod search;
mod service;
pub mod shape;
mod subsumption;
mod views;
/// Re-exported: instants and date ranges live in `salus-fhir`.
pub use salus_fhir::instant as time;

pub use bundle::parse_etag;
pub use bundle::{BundleKind, PreparedTransaction};
pub use devices::{
    rule_state_id, DeviceCounters, DeviceIngest, IngestReport, DEAD_LETTER_CODE, RULE_STATE_SHARDS,
    SALUS_CODES,
};
pub use error::status_line;
pub use error::FhirError;
pub use import::ImportFailure;
pub use index::{extract as extract_index, Indexed};
pub use query::parse_pairs;
pub use reindex::{ReindexState, ReindexStatus};
pub use search::SearchResult;
pub use service::{FhirService, Limits, Return, WriteOutcome};
pub use views::ViewScope;

pub type Result<T, E = FhirError> = std::result::Result<T, E>;
pub use audit::{
    chain_fields, chain_hash, verify_chain, AuditRecord, AuditTrail, ChainProblem, ChainReport,
    CHAIN_URL,
};
pub use purge::purge_parameters;
pub use salus_access;
