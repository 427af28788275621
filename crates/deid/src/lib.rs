//! De-identification of FHIR R4 JSON for Salus.
//!
//! Owns: the anonymization engine, its configuration format (that of the open-source
//! "Tools for Health Data Anonymization" FHIR tool: `fhirVersion`, `processingError`,
//! `fhirPathRules`, `parameters`, so existing configurations work unchanged), the shipped
//! HIPAA Safe Harbor configuration, the free-text PHI scrubber, and NDJSON/Bundle helpers.
//! Must not touch: storage, HTTP, the CLI, or the FHIRPath engine (`salus-fhirpath` is
//! used as a library; `nodesByType`/`nodesByName` are implemented here over a typed view
//! of the JSON).
//!
//! # Use
//!
//! ```
//! use salus_deid::{Anonymizer, Config};
//! let config = Config::from_json(r#"{
//!   "fhirPathRules": [
//!     {"path": "Resource.id", "method": "cryptoHash"},
//!     {"path": "nodesByType('HumanName')", "method": "redact"},
//!     {"path": "Patient.birthDate", "method": "dateShift"}
//!   ],
//!   "parameters": {"cryptoHashKey": "secret", "dateShiftKey": "k", "dateShiftFixedOffsetInDays": 10}
//! }"#).unwrap();
//! let engine = Anonymizer::new(config);
//! let out = engine.anonymize(serde_json::json!({
//!   "resourceType": "Patient", "id": "p1",
//!   "name": [{"family": "Chalmers"}], "birthDate": "1974-12-25"
//! })).unwrap();
//! assert_eq!(out["birthDate"], "1975-01-04");
//! assert!(out.get("name").is_none());
//! assert_eq!(out["id"].as_str().unwrap().len(), 64);
//! ```
//!
//! # Semantics
//!
//! - Rules apply in order; a rule applies its method to every node of each selected
//!   subtree that no earlier rule processed (`keep` counts as processing), so
//!   `nodesByType('Address').country: keep` followed by `nodesByType('Address'): redact`
//!   keeps the country.
//! - Paths are FHIRPath over the resource, or `[Type.]nodesByType('T')[.rest]` /
//!   `nodesByName('n')[.rest]`, which reach every node of that type or element name
//!   anywhere in the resource, inside extensions too (`valueAddress`, `_birthDate`).
//! - `contained` resources and Bundle entries are processed as resources of their own;
//!   rules of the container do not reach inside them.
//! - See `docs/deid.md` for every method, parameter, the Safe Harbor defaults, the
//!   scrubber, and what is and is not guaranteed.

mod config;
mod crypto;
mod dates;
mod engine;
mod error;
mod scrub;
mod stream;
mod tree;

pub use config::{
    Case, Config, DateShiftScope, Method, OtherValues, Parameters, ProcessingErrorMode, RangeType,
    Rule, SAFE_HARBOR_JSON,
};
pub use crypto::{decrypt, encrypt, hash_hex, hash_reference, hmac_sha256};
pub use dates::Ymd;
pub use engine::Anonymizer;
pub use error::{ConfigError, DeidError};
pub use scrub::{PhiIndex, PhiTerms};
pub use stream::{BundleStats, DirStats, NdjsonStats};
