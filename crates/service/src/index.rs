//! Index rows extracted from a resource at write time.
//!
//! For now this covers `identifier` (token) on every resource that has one — what the
//! conditional operations of the REST and transaction APIs need. The search issue
//! replaces this with extraction driven by every R4 SearchParameter's FHIRPath.

use salus_store::IndexRow;
use serde_json::Value;

pub fn extract(resource: &Value) -> Vec<IndexRow> {
    let mut rows = vec![];
    let ids = match resource.get("identifier") {
        Some(Value::Array(a)) => a.iter().collect::<Vec<_>>(),
        Some(v @ Value::Object(_)) => vec![v],
        _ => vec![],
    };
    for ident in ids {
        if let Some(code) = ident.get("value").and_then(Value::as_str) {
            rows.push(IndexRow::Token {
                param: "identifier".into(),
                system: ident
                    .get("system")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                code: code.to_owned(),
            });
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn identifiers_become_tokens() {
        let rows = extract(&json!({"resourceType":"Patient","identifier":[
            {"system":"urn:mrn","value":"1"},{"value":"2"},{"system":"x"}]}));
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[1],
            IndexRow::Token {
                param: "identifier".into(),
                system: None,
                code: "2".into()
            }
        );
        let single = extract(&json!({"resourceType":"Bundle","identifier":{"value":"b"}}));
        assert_eq!(single.len(), 1);
    }
}
