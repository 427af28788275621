//! FHIR R4 (4.0.1) core knowledge for Salus.
//!
//! Owns: the generated definition tables (resource types, elements, search parameters,
//! the Patient compartment, required value sets), resource validation, and the
//! OperationOutcome issue vocabulary shared by every crate.
//! Must not touch: storage, HTTP, configuration.

pub mod defs;
mod hash;
pub mod instant;
pub mod issue;
pub mod primitive;
pub mod validate;

pub use issue::{Issue, IssueCode, Severity};

/// Build every definition table and the validator's schema now (about 15 ms in a release
/// build) instead of on first use, e.g. at server start-up.
pub fn preload() {
    let _ = defs::resource_types();
    let _ = defs::search_params("Patient");
    let _ = defs::patient_compartment_params("Patient");
    let _ = defs::required_value_set("");
    validate::preload();
}
