//! Index rows extracted from a resource at write time: every R4 SearchParameter of the
//! resource's type (see `salus_search::extract`), for the resource and for each
//! resource it contains (found by `_contained` searches).

use salus_store::{ContainedIndex, FullText, IndexRow};
use serde_json::Value;

/// What a version is found by: its index rows, its full text, and the index rows of
/// its contained resources.
pub struct Indexed {
    pub rows: Vec<IndexRow>,
    pub text: FullText,
    pub contained: Vec<ContainedIndex>,
}

pub fn extract(resource: &Value) -> Indexed {
    let contained = resource
        .get("contained")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|c| {
                    let rtype = c.get("resourceType")?.as_str()?;
                    let id = c.get("id")?.as_str()?;
                    Some(ContainedIndex {
                        rtype: rtype.to_string(),
                        id: id.to_string(),
                        index: salus_search::extract::extract(c),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Indexed {
        rows: salus_search::extract::extract(resource),
        text: salus_search::fulltext::extract(resource),
        contained,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn contained_resources_get_their_own_rows() {
        let med = json!({
            "resourceType": "MedicationRequest", "id": "mr", "status": "active", "intent": "order",
            "subject": {"reference": "Patient/p1"},
            "medicationReference": {"reference": "#m1"},
            "contained": [
                {"resourceType": "Medication", "id": "m1",
                 "code": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "1049502"}]}},
                {"resourceType": "Medication", "code": {"text": "no id: not indexable"}}
            ]
        });
        let ix = extract(&med);
        assert_eq!(ix.contained.len(), 1);
        let c = &ix.contained[0];
        assert_eq!((c.rtype.as_str(), c.id.as_str()), ("Medication", "m1"));
        assert!(c.index.iter().any(|r| matches!(r,
            IndexRow::Token { param, code, .. } if param == "code" && code == "1049502")));
        // the container's own rows do not carry the contained code
        assert!(!ix.rows.iter().any(|r| matches!(r,
            IndexRow::Token { code, .. } if code == "1049502")));
    }
}
