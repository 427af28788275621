//! Loading many resources at once (the `salus import` and `$import` path): every
//! resource is validated, then all are written in one store transaction, so a bad
//! input leaves nothing behind.

use crate::service::{check_body, new_id, put_version, tx_write, valid_id};
use crate::{index, FhirError, FhirService};
use salus_fhir::{Issue, IssueCode};
use salus_store::{Method, StoreTx};
use serde_json::Value;
use std::collections::HashSet;

/// Why an import unit was rejected.
#[derive(Debug)]
pub enum ImportFailure {
    /// Problems by the index of the offending item.
    Invalid(Vec<(usize, Vec<Issue>)>),
    /// The write itself failed.
    Failed(FhirError),
}

impl FhirService {
    /// Store resources (keeping their ids; assigning one when absent) in one
    /// transaction. Existing resources get a new version.
    pub async fn import_resources(&self, items: Vec<Value>) -> Result<usize, ImportFailure> {
        let mut tx = self
            .store()
            .begin()
            .await
            .map_err(|e| ImportFailure::Failed(e.into()))?;
        let n = self.resources_into(tx.as_mut(), items).await?;
        tx.commit()
            .await
            .map_err(|e| ImportFailure::Failed(e.into()))?;
        Ok(n)
    }

    /// Validate resources, then store them (ids kept) inside an existing transaction.
    pub async fn resources_into(
        &self,
        tx: &mut dyn StoreTx,
        items: Vec<Value>,
    ) -> Result<usize, ImportFailure> {
        self.check_resources(&items)
            .map_err(ImportFailure::Invalid)?;
        self.checked_resources_into(tx, items)
            .await
            .map_err(ImportFailure::Failed)
    }

    /// The validation of [`FhirService::resources_into`], which needs no store: every
    /// problem by the index of its item.
    pub fn check_resources(&self, items: &[Value]) -> Result<(), Vec<(usize, Vec<Issue>)>> {
        let mut problems = vec![];
        for (i, item) in items.iter().enumerate() {
            let mut issues = match check_body(item, None) {
                Ok(()) => vec![],
                Err(e) => e.issues(),
            };
            if let Some(id) = item.get("id").and_then(Value::as_str) {
                if !valid_id(id) {
                    issues.push(
                        Issue::error(IssueCode::Value, format!("'{id}' is not a valid FHIR id"))
                            .at("id"),
                    );
                }
            }
            if !issues.is_empty() {
                problems.push((i, issues));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// Store resources that passed [`FhirService::check_resources`] (ids kept; one
    /// assigned when absent) inside `tx`; existing resources get a new version.
    pub async fn checked_resources_into(
        &self,
        tx: &mut dyn StoreTx,
        items: Vec<Value>,
    ) -> Result<usize, FhirError> {
        let n = items.len();
        let write = async {
            let keys: Vec<(String, String)> = items
                .iter()
                .map(|item| {
                    let rtype = item
                        .get("resourceType")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string();
                    let id = item
                        .get("id")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                        .unwrap_or_else(new_id);
                    (rtype, id)
                })
                .collect();
            // One lookup for the whole unit, so writes stream to the store without a
            // round trip each.
            let heads = tx.heads(&keys).await?;
            let mut seen = HashSet::new();
            for ((item, (rtype, id)), head) in items.into_iter().zip(keys).zip(heads) {
                if !seen.insert((rtype.clone(), id.clone())) {
                    // The same resource twice in one unit: the later one is a new
                    // version of the earlier.
                    tx_write(tx, &rtype, &id, item, None, Method::Put).await?;
                    continue;
                }
                let index = index::extract(&item);
                put_version(tx, &rtype, &id, item, index, head, Method::Put).await?;
            }
            Ok::<_, FhirError>(())
        };
        write.await?;
        Ok(n)
    }
}
