//! FHIR search (R4 search.html) for Salus.
//!
//! Owns: parsing search parameters into the backend-neutral [`salus_store::SearchQuery`]
//! plus result parameters ([`parse`]), string normalisation ([`normalize`]), and (with the
//! FHIRPath engine) extraction of index rows from resources at write time.
//! Must not touch: SQL (backends turn the plan into queries), HTTP.

pub mod custom;
pub mod extract;
pub mod fulltext;
pub mod normalize;
pub mod parse;

pub use parse::{param_clause, parse, Include, Options, SearchError, SearchPlan, TotalMode};
