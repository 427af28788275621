//! Error types: [`ConfigError`] for configurations that cannot be used (reported before any
//! data is touched), [`DeidError`] for failures while de-identifying data.

use thiserror::Error;

/// A configuration that cannot be used. Every variant names the offending rule (by its
/// position in `fhirPathRules`, counting from 0) or parameter.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("configuration is not valid JSON: {0}")]
    Json(String),
    #[error("configuration must be a JSON object")]
    NotAnObject,
    #[error("`{field}` has the wrong type: expected {expected}")]
    WrongType {
        field: String,
        expected: &'static str,
    },
    #[error("unsupported fhirVersion '{0}': only R4 is supported")]
    FhirVersion(String),
    #[error("processingError must be 'raise' or 'skip', not '{0}'")]
    ProcessingError(String),
    #[error("rule {index}: missing `{field}`")]
    MissingField { index: usize, field: &'static str },
    #[error("rule {index}: unknown method '{method}' (expected one of keep, redact, dateShift, cryptoHash, encrypt, substitute, perturb, generalize, scrub)")]
    UnknownMethod { index: usize, method: String },
    #[error("rule {index}: invalid FHIRPath `{path}`: {message}")]
    BadPath {
        index: usize,
        path: String,
        message: String,
    },
    #[error("rule {index}: {message}")]
    BadRule { index: usize, message: String },
    #[error("unknown parameter '{0}'")]
    UnknownParameter(String),
    #[error("parameter {name}: {message}")]
    BadParameter { name: &'static str, message: String },
}

/// A failure while de-identifying. With `processingError: skip`, the NDJSON and Bundle
/// helpers leave the failing resource out and count it instead of returning the error.
#[derive(Debug, Error)]
pub enum DeidError {
    #[error("not a FHIR resource: {0}")]
    InvalidResource(String),
    #[error("rule {rule} (`{path}`): {message}")]
    Processing {
        rule: usize,
        path: String,
        message: String,
    },
    #[error("line {line}: invalid JSON: {message}")]
    BadLine { line: u64, message: String },
    #[error("line {line}: {source}")]
    Line {
        line: u64,
        #[source]
        source: Box<DeidError>,
    },
    #[error("{file}: {source}")]
    File {
        file: String,
        #[source]
        source: Box<DeidError>,
    },
    #[error("{0}")]
    Usage(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("decryption failed: {0}")]
    Decrypt(String),
}
