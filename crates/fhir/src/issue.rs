//! OperationOutcome issues: the one vocabulary every crate uses to describe a problem.

use serde_json::{json, Value};

/// `OperationOutcome.issue.severity` (http://hl7.org/fhir/issue-severity).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Fatal,
    Error,
    Warning,
    Information,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Fatal => "fatal",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Information => "information",
        }
    }
}

/// `OperationOutcome.issue.code` (http://hl7.org/fhir/issue-type), the codes Salus uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueCode {
    Invalid,
    Structure,
    Required,
    Value,
    Invariant,
    Security,
    Login,
    Forbidden,
    Processing,
    NotSupported,
    Duplicate,
    MultipleMatches,
    NotFound,
    Deleted,
    TooLong,
    CodeInvalid,
    BusinessRule,
    Conflict,
    Transient,
    Exception,
    Timeout,
    TooCostly,
    Throttled,
    Informational,
}

impl IssueCode {
    pub fn as_str(self) -> &'static str {
        match self {
            IssueCode::Invalid => "invalid",
            IssueCode::Structure => "structure",
            IssueCode::Required => "required",
            IssueCode::Value => "value",
            IssueCode::Invariant => "invariant",
            IssueCode::Security => "security",
            IssueCode::Login => "login",
            IssueCode::Forbidden => "forbidden",
            IssueCode::Processing => "processing",
            IssueCode::NotSupported => "not-supported",
            IssueCode::Duplicate => "duplicate",
            IssueCode::MultipleMatches => "multiple-matches",
            IssueCode::NotFound => "not-found",
            IssueCode::Deleted => "deleted",
            IssueCode::TooLong => "too-long",
            IssueCode::CodeInvalid => "code-invalid",
            IssueCode::BusinessRule => "business-rule",
            IssueCode::Conflict => "conflict",
            IssueCode::Transient => "transient",
            IssueCode::Exception => "exception",
            IssueCode::Timeout => "timeout",
            IssueCode::TooCostly => "too-costly",
            IssueCode::Throttled => "throttled",
            IssueCode::Informational => "informational",
        }
    }
}

/// One problem (or note) about a request or resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub severity: Severity,
    pub code: IssueCode,
    /// Human-readable explanation.
    pub diagnostics: String,
    /// FHIRPath-style location, e.g. `Patient.name[0].given[1]`; empty when not tied to an element.
    pub expression: Option<String>,
}

impl Issue {
    pub fn error(code: IssueCode, diagnostics: impl Into<String>) -> Self {
        Issue {
            severity: Severity::Error,
            code,
            diagnostics: diagnostics.into(),
            expression: None,
        }
    }

    pub fn warning(code: IssueCode, diagnostics: impl Into<String>) -> Self {
        Issue {
            severity: Severity::Warning,
            code,
            diagnostics: diagnostics.into(),
            expression: None,
        }
    }

    pub fn at(mut self, expression: impl Into<String>) -> Self {
        self.expression = Some(expression.into());
        self
    }

    pub fn information(diagnostics: impl Into<String>) -> Self {
        Issue {
            severity: Severity::Information,
            code: IssueCode::Informational,
            diagnostics: diagnostics.into(),
            expression: None,
        }
    }

    pub fn is_error(&self) -> bool {
        matches!(self.severity, Severity::Error | Severity::Fatal)
    }

    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "severity": self.severity.as_str(),
            "code": self.code.as_str(),
            "diagnostics": self.diagnostics,
        });
        if let Some(e) = &self.expression {
            v["expression"] = json!([e]);
        }
        v
    }
}

/// Build an OperationOutcome resource from issues.
pub fn operation_outcome(issues: &[Issue]) -> Value {
    let issues: Vec<Value> = if issues.is_empty() {
        vec![Issue::information("All OK").to_json()]
    } else {
        issues.iter().map(Issue::to_json).collect()
    };
    json!({ "resourceType": "OperationOutcome", "issue": issues })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_lists_every_issue_with_location() {
        let oo = operation_outcome(&[
            Issue::error(IssueCode::Value, "bad date").at("Patient.birthDate"),
            Issue::error(IssueCode::Structure, "unknown element").at("Patient.foo"),
        ]);
        assert_eq!(oo["issue"].as_array().unwrap().len(), 2);
        assert_eq!(oo["issue"][0]["expression"][0], "Patient.birthDate");
        assert_eq!(oo["issue"][1]["code"], "structure");
    }

    #[test]
    fn empty_outcome_is_informational() {
        let oo = operation_outcome(&[]);
        assert_eq!(oo["issue"][0]["severity"], "information");
    }
}
