//! Query-string helpers and the bridge from `salus-search` errors to [`FhirError`].

use crate::FhirError;
use salus_fhir::IssueCode;
use salus_search::SearchError;

/// Parse `a=b&c=d` (percent-encoded) into pairs.
pub fn parse_pairs(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

impl From<SearchError> for FhirError {
    fn from(e: SearchError) -> Self {
        match e {
            SearchError::Invalid { param, message } => {
                FhirError::invalid_at(IssueCode::Invalid, param, message)
            }
            SearchError::Unsupported(m) => FhirError::NotSupported(m),
        }
    }
}
