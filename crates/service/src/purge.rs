//! Erasure (GDPR art. 17): `Patient/[id]/$purge` removes the patient and every resource
//! in their compartment — all versions, index rows and full text — then asks the store
//! to drop what lingers in its files. The audit trail stays: AuditEvents hold
//! references, not the patient's data, and the purge itself is recorded.

use crate::search::compartment_clause;
use crate::{FhirError, FhirService, Result};
use salus_access::Capability;
use salus_fhir::defs;
use salus_store::{Page, SearchQuery};
use serde_json::{json, Value};
use std::collections::BTreeMap;

impl FhirService {
    /// Erase `Patient/id` and its compartment; the count of resources erased per type.
    pub async fn purge_patient(&self, id: &str) -> Result<BTreeMap<String, u64>> {
        self.require(Capability::Purge, "erasing a patient's records ($purge)")?;
        let store = self.unguarded_store().clone();
        if store.read("Patient", id).await?.is_none() {
            return Err(FhirError::NotFound(format!("Patient/{id}")));
        }
        let mut keys = vec![("Patient".to_string(), id.to_string())];
        for rtype in defs::resource_types() {
            // The audit trail is kept (and must stay a complete chain).
            if *rtype == "AuditEvent" || defs::patient_compartment_params(rtype).is_none() {
                continue;
            }
            let mut q = SearchQuery::new(*rtype);
            q.clauses = vec![compartment_clause(rtype, id)?];
            q.count = 1000;
            loop {
                let page = store.search(&q).await?;
                keys.extend(
                    page.entries
                        .iter()
                        .filter(|r| !(r.rtype == "Patient" && r.id == id))
                        .map(|r| (r.rtype.clone(), r.id.clone())),
                );
                match (page.more, page.last_cursor) {
                    (true, Some(c)) => q.page = Page::After(c),
                    _ => break,
                }
            }
        }
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        let mut tx = store.begin_bulk().await?;
        for (t, rid) in &keys {
            if tx.purge(t, rid).await? > 0 {
                *counts.entry(t.clone()).or_default() += 1;
            }
        }
        tx.commit().await?;
        store.compact().await?;
        tracing::info!(resources = keys.len(), "patient compartment erased");
        Ok(counts)
    }
}

/// The `$purge` answer: how many resources of each type were erased.
pub fn purge_parameters(counts: &BTreeMap<String, u64>) -> Value {
    let total: u64 = counts.values().sum();
    let mut parameter = vec![json!({"name": "purged", "valueInteger": total})];
    for (t, n) in counts {
        parameter.push(json!({"name": "resource", "part": [
            {"name": "type", "valueCode": t},
            {"name": "count", "valueInteger": n}
        ]}));
    }
    json!({"resourceType": "Parameters", "parameter": parameter})
}
