//! The FHIRPath additions of SQL-on-FHIR v2 ("FHIRPath functions" in the ViewDefinition
//! page), registered as custom functions on the view's [`Env`], and the conversion of
//! `constant.value[x]` into FHIRPath values.
//!
//! - `getResourceKey()`: a key for the resource in focus. Salus uses the logical `id`.
//! - `getReferenceKey([type])`: for each `Reference` in focus, the key of the resource it
//!   points to (the `id` of a relative or absolute literal reference, ignoring
//!   `_history`), or nothing when the reference is of another type than `type`, is a
//!   contained (`#x`) or `urn:` reference, or has no `reference`. Keys from the two
//!   functions compare equal exactly when the reference points at the resource.

use crate::error::ViewError;
use salus_fhirpath::{DateTime, Decimal, Env, EvalError, Item, Time};
use serde_json::Value;
use std::str::FromStr;

/// The functions every view's environment has.
pub(crate) fn register(env: Env<'static>) -> Env<'static> {
    env.with_function("getResourceKey", |input, args| {
        if !args.is_empty() {
            return Err(EvalError::Argument(
                "getResourceKey() takes no arguments".into(),
            ));
        }
        Ok(input.iter().filter_map(resource_key).collect())
    })
    .with_function("getReferenceKey", |input, args| {
        let wanted = match args {
            [] => None,
            [arg] => match arg.as_slice() {
                [] => None,
                [item] => Some(item.as_str().map(str::to_string).ok_or_else(|| {
                    EvalError::Argument("getReferenceKey() expects a resource type".into())
                })?),
                _ => {
                    return Err(EvalError::Argument(
                        "getReferenceKey() expects a single resource type".into(),
                    ))
                }
            },
            _ => {
                return Err(EvalError::Argument(
                    "getReferenceKey() takes at most one argument".into(),
                ))
            }
        };
        let wanted = wanted
            .as_deref()
            .map(|t| t.strip_prefix("FHIR.").unwrap_or(t));
        Ok(input
            .iter()
            .filter_map(|item| reference_key(item, wanted))
            .collect())
    })
}

fn resource_key<'a>(item: &Item<'a>) -> Option<Item<'a>> {
    let obj = item.as_json()?.as_object()?;
    obj.get("resourceType")?;
    Some(Item::string(obj.get("id")?.as_str()?))
}

/// `(type, id)` of a literal reference: `Patient/1`, `Patient/1/_history/2`,
/// `http://server/fhir/Patient/1`.
pub(crate) fn split_reference(reference: &str) -> Option<(&str, &str)> {
    let path = match reference.find("/_history/") {
        Some(at) => &reference[..at],
        None => reference,
    };
    if path.starts_with('#') || path.starts_with("urn:") {
        return None;
    }
    let mut parts = path.rsplit('/');
    let id = parts.next().filter(|s| !s.is_empty())?;
    let ty = parts
        .next()
        .filter(|t| t.starts_with(|c: char| c.is_ascii_uppercase()))?;
    Some((ty, id))
}

fn reference_key<'a>(item: &Item<'a>, wanted: Option<&str>) -> Option<Item<'a>> {
    let reference = item.as_json()?.get("reference")?.as_str()?;
    let (ty, id) = split_reference(reference)?;
    match wanted {
        Some(w) if w != ty => None,
        _ => Some(Item::string(id)),
    }
}

/// A `constant.value[x]` as a FHIRPath value: `(type name, item)`. The types are those the
/// specification allows for constants (all FHIR primitives).
pub(crate) fn constant_value(
    at: &str,
    key: &str,
    value: &Value,
) -> Result<Item<'static>, ViewError> {
    let ty = key.strip_prefix("value").unwrap_or(key);
    let bad = |what: &str| ViewError::definition(at, format!("{key} must be {what}"));
    let text = || value.as_str().ok_or_else(|| bad("a string"));
    Ok(match ty {
        "String" | "Code" | "Id" | "Uri" | "Url" | "Canonical" | "Uuid" | "Oid" | "Markdown"
        | "Base64Binary" => Item::string(text()?),
        "Boolean" => Item::boolean(value.as_bool().ok_or_else(|| bad("a boolean"))?),
        "Integer" | "PositiveInt" | "UnsignedInt" | "Integer64" => {
            let n = value.as_i64().ok_or_else(|| bad("an integer"))?;
            if (ty == "PositiveInt" && n < 1) || (ty == "UnsignedInt" && n < 0) {
                return Err(bad("in range"));
            }
            Item::integer(n)
        }
        "Decimal" => {
            let n = value.as_number().ok_or_else(|| bad("a number"))?;
            let text = n.to_string();
            let d = Decimal::from_str(&text)
                .or_else(|_| Decimal::from_scientific(&text))
                .map_err(|_| bad("a decimal"))?;
            Item::decimal(d)
        }
        "Date" => Item::date(
            DateTime::parse_date(text()?)
                .filter(DateTime::is_date_only)
                .ok_or_else(|| bad("a date"))?,
        ),
        "DateTime" | "Instant" => {
            Item::date_time(DateTime::parse_datetime(text()?).ok_or_else(|| bad("a dateTime"))?)
        }
        "Time" => Item::time(Time::parse(text()?).ok_or_else(|| bad("a time"))?),
        _ => {
            return Err(ViewError::definition(
                at,
                format!("{key} is not a supported constant type"),
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use salus_fhirpath::parse;
    use serde_json::json;

    #[test]
    fn splits_references() {
        assert_eq!(split_reference("Patient/p1"), Some(("Patient", "p1")));
        assert_eq!(
            split_reference("http://x.org/fhir/Patient/p1/_history/3"),
            Some(("Patient", "p1"))
        );
        assert_eq!(split_reference("#contained"), None);
        assert_eq!(split_reference("urn:uuid:1234"), None);
        assert_eq!(split_reference("p1"), None);
        assert_eq!(split_reference("Patient/"), None);
    }

    #[test]
    fn key_functions() {
        let env = register(Env::new());
        let pt = json!({"resourceType": "Patient", "id": "p1",
            "link": [{"other": {"reference": "Patient/p1"}}, {"other": {"display": "x"}}]});
        let eval = |src: &str| -> Vec<String> {
            parse(src)
                .unwrap()
                .evaluate(&pt, &env)
                .unwrap()
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(eval("getResourceKey()"), ["p1"]);
        assert_eq!(eval("link.other.getReferenceKey()"), ["p1"]);
        assert_eq!(eval("link.other.getReferenceKey('Patient')"), ["p1"]);
        assert!(eval("link.other.getReferenceKey('Group')").is_empty());
        assert_eq!(
            eval("getResourceKey() = link.other.getReferenceKey()"),
            ["true"]
        );
        assert!(parse("getReferenceKey(1 | 2)")
            .unwrap()
            .evaluate(&pt, &env)
            .is_err());
        assert!(parse("getResourceKey(1)")
            .unwrap()
            .evaluate(&pt, &env)
            .is_err());
    }

    #[test]
    fn constants() {
        let c = |k: &str, v: Value| constant_value("constant[0]", k, &v).map(|i| i.to_string());
        assert_eq!(c("valueString", json!("x")).unwrap(), "x");
        assert_eq!(c("valueInteger", json!(3)).unwrap(), "3");
        assert_eq!(c("valueDecimal", json!(1.20)).unwrap(), "1.2");
        assert_eq!(c("valueDate", json!("2020-01")).unwrap(), "2020-01");
        assert_eq!(c("valueTime", json!("10:00:00")).unwrap(), "10:00:00");
        assert!(c("valueDate", json!("2020-01-01T10:00")).is_err());
        assert!(c("valuePositiveInt", json!(0)).is_err());
        assert!(c("valueInteger", json!("3")).is_err());
        assert!(c("valueCoding", json!({})).is_err());
    }
}
