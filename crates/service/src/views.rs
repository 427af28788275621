//! Running SQL-on-FHIR v2 views (`salus-views`) over the stored current resources:
//! `ViewDefinition/$run` and `salus view run` both come here.

use crate::search::compartment_clause;
use crate::{FhirError, FhirService, Result};
use salus_store::{Clause, Page, SearchQuery};
use salus_views::{RowWriter, View, ViewError};
use serde_json::Value;
use std::io::Write;

/// Which resources a view runs over (SQL-on-FHIR v2 `$run` parameters).
#[derive(Debug, Clone, Default)]
pub struct ViewScope {
    /// Only resources changed at or after this instant (micros; `_since`).
    pub since: Option<i64>,
    /// Only resources in these patients' compartments (`patient`).
    pub patients: Vec<String>,
    /// At most this many rows (`_limit`).
    pub limit: Option<u64>,
}

/// Resources read from the store per page.
const PAGE: usize = 500;

impl From<ViewError> for FhirError {
    fn from(e: ViewError) -> Self {
        match e {
            ViewError::Io(e) => FhirError::Internal(format!("writing view output: {e}")),
            e if e.is_user_error() => FhirError::invalid(e.to_string()),
            e => FhirError::Internal(e.to_string()),
        }
    }
}

impl FhirService {
    /// Run `view` over the current resources of its type in `scope`, writing rows to
    /// `out`; returns how many rows were written. Resources are read page by page, so
    /// memory stays flat however many there are.
    pub async fn run_view<W: Write>(
        &self,
        view: &View,
        scope: &ViewScope,
        out: &mut RowWriter<'_, W>,
    ) -> Result<u64> {
        let rtype = view.resource_type().to_string();
        let mut clauses = vec![];
        if let Some(since) = scope.since {
            clauses.push(Clause::LastUpdated {
                low: Some(since),
                high: None,
            });
        }
        if !scope.patients.is_empty() {
            let any = scope
                .patients
                .iter()
                .map(|p| compartment_clause(&rtype, p))
                .collect::<Result<Vec<_>>>()?;
            clauses.push(Clause::Any(any));
        }
        let mut page = Page::First;
        loop {
            let mut q = SearchQuery::new(rtype.clone());
            q.clauses = clauses.clone();
            q.count = PAGE;
            q.page = page;
            let found = self.store().search(&q).await?;
            for rec in &found.entries {
                let Some(body) = rec.body.as_deref() else {
                    continue;
                };
                let resource: Value = serde_json::from_str(body).map_err(|e| {
                    FhirError::Internal(format!("stored {}/{} is not JSON: {e}", rec.rtype, rec.id))
                })?;
                if let Some(limit) = scope.limit {
                    let rows = view.rows(&resource)?;
                    for row in rows {
                        if out.rows_written() >= limit {
                            return Ok(out.rows_written());
                        }
                        out.write_row(&row)?;
                    }
                } else {
                    out.write_resource(&resource)?;
                }
            }
            match (found.more, found.last_cursor) {
                (true, Some(c)) => page = Page::After(c),
                _ => break,
            }
        }
        Ok(out.rows_written())
    }
}
