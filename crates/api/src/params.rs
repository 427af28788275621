//! FHIR `Parameters` bodies of operations as name/value pairs (shared by the
//! operation handlers).

use crate::error::ApiError;
use salus_fhir::IssueCode;
use salus_service::FhirError;
use serde_json::Value;

/// The scalar value of a Parameters part: `valueString`, `valueCode`, `valueInteger`,
/// `valueBoolean`, `valueDateTime`, `valueInstant`, `valueUri`, or a `valueReference`'s
/// `reference`.
pub(crate) fn part_value(p: &Value) -> Option<String> {
    p.as_object()?.iter().find_map(|(k, v)| {
        if !k.starts_with("value") {
            return None;
        }
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Number(n) => Some(n.to_string()),
            Value::Object(o) if k == "valueReference" => o
                .get("reference")
                .and_then(Value::as_str)
                .map(str::to_string),
            _ => None,
        }
    })
}

/// The parts of a `Parameters` resource as (name, value) pairs; anything else, or a part
/// without a simple value, is a 400 naming it.
pub(crate) fn pairs(v: &Value) -> Result<Vec<(String, String)>, ApiError> {
    if v.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(FhirError::invalid_at(
            IssueCode::Structure,
            "Parameters",
            "the operation takes a Parameters resource",
        )
        .into());
    }
    let mut out = vec![];
    for p in v
        .get("parameter")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = p.get("name").and_then(Value::as_str).unwrap_or("");
        match part_value(p) {
            Some(val) => out.push((name.to_string(), val)),
            None => {
                return Err(FhirError::invalid_at(
                    IssueCode::Value,
                    format!("Parameters.parameter[{name}]"),
                    "expected a value[x] of a simple type or a valueReference",
                )
                .into())
            }
        }
    }
    Ok(out)
}
