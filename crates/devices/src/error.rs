//! Error types. Every error names where the problem is (`template[2] (JsonPathContent
//! 'heartrate')`, `measurement 'heartrate' from device 'd1'`) and what is wrong.

use std::fmt;

/// One problem found in a template document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateProblem {
    /// Where: `template[2] (JsonPathContent 'heartrate')`, `template[0] (CodeValueFhir 'hr').value`.
    pub location: String,
    /// What: `missing required 'typeMatchExpression'`.
    pub message: String,
}

impl fmt::Display for TemplateProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// A template document that cannot be loaded. A document with several problems reports all
/// of them, so the author can fix them in one go.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The text is not JSON.
    #[error("template is not valid JSON: {0}")]
    Json(String),
    /// The JSON does not describe valid templates.
    #[error("{}", join(.0))]
    Invalid(Vec<TemplateProblem>),
}

impl TemplateError {
    /// The individual problems (one for a JSON syntax error).
    pub fn problems(&self) -> Vec<String> {
        match self {
            TemplateError::Json(_) => vec![self.to_string()],
            TemplateError::Invalid(p) => p.iter().map(ToString::to_string).collect(),
        }
    }
}

fn join(problems: &[TemplateProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A device message (or part of one) that a matching template could not turn into a
/// measurement; the other matches of the message are still normalized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{template}, match {match_index}: {message}")]
pub struct NormalizeError {
    /// The template, e.g. `template[0] (JsonPathContent 'heartrate')`.
    pub template: String,
    /// Which of the template's type-match results (0-based).
    pub match_index: usize,
    /// What was wrong, e.g. `required value 'hr' ($.heartrate) not found`.
    pub message: String,
}

/// A measurement that could not be mapped to FHIR, or an existing Observation that could not
/// be merged with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    /// No CodeValueFhir template has the measurement's type name.
    #[error("no FHIR mapping template for measurement type '{0}'")]
    NoTemplate(String),
    /// A value could not be represented in the configured FHIR type.
    #[error("measurement '{type_name}' from device '{device_id}': {message}")]
    Value {
        /// Measurement type.
        type_name: String,
        /// Device that sent it.
        device_id: String,
        /// What is wrong with the value.
        message: String,
    },
    /// The measurement's device has no patient: unknown device (Lookup mode) or no patient id
    /// in the message (Create mode).
    #[error("device '{device_id}': {message}")]
    Identity {
        /// Device identifier from the message.
        device_id: String,
        /// Why no subject could be determined.
        message: String,
    },
    /// The existing Observation passed to [`crate::merge`] is not one this crate produced.
    #[error("cannot merge into existing Observation: {0}")]
    Merge(String),
}
