//! Index extraction at write time: every R4 SearchParameter that applies to a
//! resource's type is evaluated (its FHIRPath expression, compiled once) and each value
//! becomes typed index rows (R4 search.html#ptypes):
//!
//! - token: `system|code` from Coding, CodeableConcept, Identifier, ContactPoint, code,
//!   boolean, id, string; plus `param:text` string rows (display, text) and
//!   `param:of-type` rows (`type-system|type-code|value`) for identifiers;
//! - string: normalised and exact text of strings, HumanName and Address parts;
//! - reference: `Type/id[/_history/v]` (relative or absolute — both the typed form and
//!   the URL are kept), canonicals with `|version`, and `param:identifier` token rows;
//! - date: the [low, high] range a date, dateTime, instant, Period or Timing covers;
//! - number / quantity: values with unit system and code (quantities also by unit text);
//! - uri: the URI text.
//!
//! `_id` and `_lastUpdated` are columns of the resource itself, and `_text`/`_content`
//! are full-text; they are not extracted here.

use crate::normalize::normalize;
use salus_fhir::defs::{self, SearchParamDef, SearchParamType};
use salus_fhir::instant;
use salus_fhirpath::{Env, Expr, Item};
use salus_store::IndexRow;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::LazyLock;

/// A compiled parameter: its definition and expression.
struct Compiled {
    def: &'static SearchParamDef,
    expr: Expr,
    /// For a composite: its two components' expressions and the second's definition.
    composite: Option<(Expr, Expr, &'static SearchParamDef)>,
}

/// Parameters per resource type, compiled on first use of the type.
/// (Custom-parameter generation it was built for, parameters by type.)
type Cache = (u64, HashMap<String, &'static [Compiled]>);
static COMPILED: LazyLock<std::sync::RwLock<Cache>> = LazyLock::new(Default::default);

const SKIPPED: &[&str] = &["_id", "_lastUpdated", "_text", "_content", "_query"];

fn compiled(rtype: &str) -> &'static [Compiled] {
    let generation = defs::custom_generation();
    {
        let cache = COMPILED.read().expect("index cache");
        if cache.0 == generation {
            if let Some(c) = cache.1.get(rtype) {
                return c;
            }
        }
    }
    let list: Vec<Compiled> = defs::search_params(rtype)
        .into_iter()
        .filter(|d| !SKIPPED.contains(&d.code.as_str()))
        .filter(|d| d.kind != SearchParamType::Special)
        // unions of two other parameters: searched through those (parse::union_parts)
        .filter(|d| crate::parse::union_parts(d).is_none())
        .filter_map(|def| {
            let src = def.expression.as_deref()?;
            let parsed = salus_fhirpath::parse(src).and_then(|expr| {
                if def.kind != SearchParamType::Composite {
                    return Ok(Some(Compiled {
                        def,
                        expr,
                        composite: None,
                    }));
                }
                let Some(second) = crate::parse::composite_value_def(def) else {
                    return Ok(None);
                };
                let first_expr = salus_fhirpath::parse(&def.components[0].1)?;
                let second_expr = salus_fhirpath::parse(&def.components[1].1)?;
                Ok(Some(Compiled {
                    def,
                    expr,
                    composite: Some((first_expr, second_expr, second)),
                }))
            });
            match parsed {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(param = %def.url, error = %e, "search parameter expression does not parse");
                    None
                }
            }
        })
        .collect();
    let leaked: &'static [Compiled] = Box::leak(list.into_boxed_slice());
    let mut cache = COMPILED.write().expect("index cache");
    if cache.0 != generation {
        // custom parameters changed: recompile every type on its next use
        *cache = (generation, HashMap::new());
    }
    cache.1.insert(rtype.to_string(), leaked);
    leaked
}

/// Problems met while extracting (expressions that failed to evaluate).
#[derive(Debug, Default)]
pub struct Extraction {
    pub rows: Vec<IndexRow>,
    pub errors: Vec<(String, String)>,
}

/// Index rows for a resource (errors are skipped; see [`extract_checked`]).
pub fn extract(resource: &Value) -> Vec<IndexRow> {
    extract_checked(resource).rows
}

/// Index rows plus the parameters whose expression failed, with the error.
pub fn extract_checked(resource: &Value) -> Extraction {
    let mut out = Extraction::default();
    let Some(rtype) = resource.get("resourceType").and_then(Value::as_str) else {
        return out;
    };
    let env = Env::empty();
    for c in compiled(rtype) {
        let done = c.expr.evaluate(resource, env).and_then(|items| {
            for item in &items {
                match &c.composite {
                    None => rows_for(c.def.kind, &c.def.code, item, &mut out.rows),
                    Some((first, second, def2)) => composite_rows(
                        &c.def.code,
                        (first, second, def2),
                        item,
                        resource,
                        env,
                        &mut out.rows,
                    )?,
                }
            }
            Ok(())
        });
        if let Err(e) = done {
            out.errors.push((c.def.code.clone(), e.to_string()));
        }
    }
    out
}

/// Rows of a composite parameter for one element its expression selected (e.g. one
/// `Observation.component`): the second component's rows, stored under a key naming
/// the first component's token (see [`crate::parse::composite_key`]), so that both
/// must match on the same element.
fn composite_rows<'a>(
    code: &str,
    (first, second, def2): (&Expr, &Expr, &SearchParamDef),
    item: &Item<'a>,
    resource: &'a Value,
    env: &'a Env<'a>,
    rows: &mut Vec<IndexRow>,
) -> Result<(), salus_fhirpath::EvalError> {
    let focus = [item.clone()];
    let mut tokens = vec![];
    for t in first.evaluate_on(&focus, Some(resource), env)? {
        rows_for(SearchParamType::Token, "", &t, &mut tokens);
    }
    if tokens.is_empty() {
        return Ok(());
    }
    let values = second.evaluate_on(&focus, Some(resource), env)?;
    for t in tokens {
        let IndexRow::Token {
            system,
            code: value,
            ..
        } = t
        else {
            continue; // display text rows
        };
        {
            let key =
                crate::parse::composite_key(code, Some(system.as_deref().unwrap_or("")), &value);
            let start = rows.len();
            for v in &values {
                rows_for(def2.kind, &key, v, rows);
            }
            // keep the value rows only (not `:text` rows of a token's display)
            let canonical = crate::parse::canonical_param(&key);
            let mut i = start;
            while i < rows.len() {
                if row_param(&rows[i]) == key || row_param(&rows[i]) == canonical {
                    i += 1;
                } else {
                    rows.swap_remove(i);
                }
            }
        }
    }
    Ok(())
}

fn s(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_owned)
}

fn text_row(param: &str, text: &str, rows: &mut Vec<IndexRow>) {
    rows.push(IndexRow::String {
        param: format!("{param}:text"),
        normalized: normalize(text),
        exact: text.to_string(),
    });
}

fn coding_rows(param: &str, c: &Value, rows: &mut Vec<IndexRow>) {
    if let Some(code) = s(c, "code") {
        rows.push(IndexRow::Token {
            param: param.to_string(),
            system: s(c, "system"),
            code,
        });
    }
    if let Some(d) = c.get("display").and_then(Value::as_str) {
        text_row(param, d, rows);
    }
}

fn string_row(param: &str, text: &str, rows: &mut Vec<IndexRow>) {
    rows.push(IndexRow::String {
        param: param.to_string(),
        normalized: normalize(text),
        exact: text.to_string(),
    });
}

fn strings_in(v: &Value, keys: &[&str], param: &str, rows: &mut Vec<IndexRow>) {
    for k in keys {
        match v.get(*k) {
            Some(Value::String(t)) => string_row(param, t, rows),
            Some(Value::Array(a)) => {
                for t in a.iter().filter_map(Value::as_str) {
                    string_row(param, t, rows);
                }
            }
            _ => {}
        }
    }
}

fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.to_string().parse().ok(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn reference_rows(param: &str, reference: &str, rows: &mut Vec<IndexRow>) {
    if reference.starts_with('#') {
        return;
    }
    let (url, version) = match reference.split_once('|') {
        Some((u, v)) => (u, Some(v.to_string())),
        None => (reference, None),
    };
    let segs: Vec<&str> = url.split('/').collect();
    let n = segs.len();
    let typed = if n >= 4 && segs[n - 2] == "_history" && defs::is_resource_type(segs[n - 4]) {
        Some((segs[n - 4], segs[n - 3], Some(segs[n - 1].to_string())))
    } else if n >= 2 && defs::is_resource_type(segs[n - 2]) {
        Some((segs[n - 2], segs[n - 1], None))
    } else {
        None
    };
    if let Some((t, id, v)) = typed {
        rows.push(IndexRow::Reference {
            param: param.to_string(),
            target_type: Some(t.to_string()),
            target_id: id.to_string(),
            version: v,
        });
        if !url.contains("://") {
            return;
        }
    }
    rows.push(IndexRow::Reference {
        param: param.to_string(),
        target_type: None,
        target_id: url.to_string(),
        version,
    });
}

fn date_row(param: &str, low: i64, high: i64, rows: &mut Vec<IndexRow>) {
    rows.push(IndexRow::Date {
        param: param.to_string(),
        low,
        high,
    });
}

fn row_param(r: &IndexRow) -> &str {
    match r {
        IndexRow::Token { param, .. }
        | IndexRow::String { param, .. }
        | IndexRow::Reference { param, .. }
        | IndexRow::Date { param, .. }
        | IndexRow::Number { param, .. }
        | IndexRow::Uri { param, .. } => param,
    }
}

fn rows_for(kind: SearchParamType, param: &str, item: &Item<'_>, rows: &mut Vec<IndexRow>) {
    let owned;
    let json: &Value = match item.as_json() {
        Some(j) => j,
        None => {
            owned = item.to_json();
            &owned
        }
    };
    let ty = item.fhir_type().unwrap_or("");
    match kind {
        SearchParamType::Token => match json {
            Value::String(v) => {
                if ty == "ContactPoint" {
                    return;
                }
                rows.push(IndexRow::Token {
                    param: param.to_string(),
                    system: None,
                    code: v.clone(),
                })
            }
            Value::Bool(b) => rows.push(IndexRow::Token {
                param: param.to_string(),
                system: None,
                code: b.to_string(),
            }),
            Value::Object(_) => {
                if let Some(codings) = json.get("coding").and_then(Value::as_array) {
                    for c in codings {
                        coding_rows(param, c, rows);
                    }
                    if let Some(t) = json.get("text").and_then(Value::as_str) {
                        text_row(param, t, rows);
                    }
                } else if ty == "Identifier"
                    || json.get("value").is_some() && json.get("code").is_none()
                {
                    if let Some(v) = s(json, "value") {
                        rows.push(IndexRow::Token {
                            param: param.to_string(),
                            system: s(json, "system"),
                            code: v.clone(),
                        });
                        if let Some(types) = json.pointer("/type/coding").and_then(Value::as_array)
                        {
                            for t in types {
                                if let (Some(ts), Some(tc)) = (s(t, "system"), s(t, "code")) {
                                    rows.push(IndexRow::Token {
                                        param: format!("{param}:of-type"),
                                        system: None,
                                        code: format!("{ts}|{tc}|{v}"),
                                    });
                                }
                            }
                        }
                    }
                    if let Some(t) = json.pointer("/type/text").and_then(Value::as_str) {
                        text_row(param, t, rows);
                    }
                } else {
                    coding_rows(param, json, rows);
                }
            }
            _ => {}
        },
        SearchParamType::String => match json {
            Value::String(t) => string_row(param, t, rows),
            Value::Object(_) => {
                if ty == "HumanName" || json.get("family").is_some() || json.get("given").is_some()
                {
                    strings_in(
                        json,
                        &["text", "family", "given", "prefix", "suffix"],
                        param,
                        rows,
                    );
                } else if ty == "Address"
                    || json.get("line").is_some()
                    || json.get("city").is_some()
                {
                    strings_in(
                        json,
                        &[
                            "text",
                            "line",
                            "city",
                            "district",
                            "state",
                            "postalCode",
                            "country",
                        ],
                        param,
                        rows,
                    );
                } else {
                    let mut found = vec![];
                    collect_strings(json, &mut found);
                    for t in found {
                        string_row(param, &t, rows);
                    }
                }
            }
            _ => {}
        },
        SearchParamType::Reference => match json {
            Value::String(r) => reference_rows(param, r, rows),
            Value::Object(_) => {
                if let Some(r) = json.get("reference").and_then(Value::as_str) {
                    reference_rows(param, r, rows);
                }
                if let Some(ident) = json.get("identifier") {
                    if let Some(v) = s(ident, "value") {
                        rows.push(IndexRow::Token {
                            param: format!("{param}:identifier"),
                            system: s(ident, "system"),
                            code: v,
                        });
                    }
                }
            }
            _ => {}
        },
        SearchParamType::Date => match json {
            Value::String(d) => {
                if let Some((lo, hi)) = instant::parse_range(d) {
                    date_row(param, lo, hi, rows);
                }
            }
            Value::Object(_) => {
                if json.get("start").is_some() || json.get("end").is_some() {
                    let lo = json
                        .get("start")
                        .and_then(Value::as_str)
                        .and_then(instant::parse_range)
                        .map_or(i64::MIN, |r| r.0);
                    let hi = json
                        .get("end")
                        .and_then(Value::as_str)
                        .and_then(instant::parse_range)
                        .map_or(i64::MAX, |r| r.1);
                    date_row(param, lo, hi, rows);
                } else if let Some(events) = json.get("event").and_then(Value::as_array) {
                    for e in events.iter().filter_map(Value::as_str) {
                        if let Some((lo, hi)) = instant::parse_range(e) {
                            date_row(param, lo, hi, rows);
                        }
                    }
                }
            }
            _ => {}
        },
        SearchParamType::Number => {
            if let Some(v) = num(json) {
                rows.push(IndexRow::Number {
                    param: param.to_string(),
                    value: v,
                    system: None,
                    code: None,
                });
            }
        }
        SearchParamType::Quantity => {
            let value = json.get("value").and_then(num).or_else(|| num(json));
            if let Some(v) = value {
                let system = s(json, "system");
                let code = s(json, "code").or_else(|| s(json, "currency"));
                let unit = s(json, "unit");
                rows.push(IndexRow::Number {
                    param: param.to_string(),
                    value: v,
                    system: system.clone(),
                    code: code.clone(),
                });
                if let Some(u) = unit.filter(|u| Some(u) != code.as_ref()) {
                    rows.push(IndexRow::Number {
                        param: param.to_string(),
                        value: v,
                        system: None,
                        code: Some(u),
                    });
                }
                if let (Some(crate::parse::UCUM), Some(c)) = (system.as_deref(), code.as_deref()) {
                    if let Some((factor, dims)) = salus_fhirpath::quantity::ucum_canonical(c) {
                        rows.push(IndexRow::Number {
                            param: crate::parse::canonical_param(param),
                            value: v * factor,
                            system: None,
                            code: Some(dims),
                        });
                    }
                }
            }
        }
        SearchParamType::Uri => {
            if let Some(u) = json.as_str() {
                rows.push(IndexRow::Uri {
                    param: param.to_string(),
                    uri: u.to_string(),
                });
            }
        }
        SearchParamType::Composite | SearchParamType::Special => {}
    }
}

fn collect_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| collect_strings(x, out)),
        Value::Object(o) => o
            .iter()
            .filter(|(k, _)| !k.starts_with('_') && k.as_str() != "extension")
            .for_each(|(_, x)| collect_strings(x, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn has(rows: &[IndexRow], pred: impl Fn(&IndexRow) -> bool) -> bool {
        rows.iter().any(pred)
    }

    #[test]
    fn patient_rows() {
        let rows = extract(&json!({
            "resourceType": "Patient", "id": "p",
            "identifier": [{"system": "urn:mrn", "value": "1",
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}}],
            "name": [{"family": "Zoë", "given": ["Ann"]}],
            "gender": "female", "birthDate": "1980-02",
            "managingOrganization": {"reference": "Organization/o1"},
            "generalPractitioner": [{"reference": "http://ex.org/fhir/Practitioner/d1/_history/3"}]
        }));
        assert!(has(
            &rows,
            |r| matches!(r, IndexRow::Token { param, system, code } if param == "identifier" && system.as_deref() == Some("urn:mrn") && code == "1")
        ));
        assert!(has(
            &rows,
            |r| matches!(r, IndexRow::Token { param, code, .. } if param == "identifier:of-type" && code.ends_with("|MR|1"))
        ));
        assert!(has(
            &rows,
            |r| matches!(r, IndexRow::String { param, normalized, .. } if param == "family" && normalized == "zoe")
        ));
        assert!(has(
            &rows,
            |r| matches!(r, IndexRow::String { param, normalized, .. } if param == "name" && normalized == "ann")
        ));
        assert!(has(
            &rows,
            |r| matches!(r, IndexRow::Token { param, code, .. } if param == "gender" && code == "female")
        ));
        assert!(has(
            &rows,
            |r| matches!(r, IndexRow::Date { param, low, high } if param == "birthdate" && high - low > 27 * 86_400_000_000)
        ));
        assert!(has(
            &rows,
            |r| matches!(r, IndexRow::Reference { param, target_type, target_id, .. } if param == "organization" && target_type.as_deref() == Some("Organization") && target_id == "o1")
        ));
        assert!(has(
            &rows,
            |r| matches!(r, IndexRow::Reference { param, target_id, version, .. } if param == "general-practitioner" && target_id == "d1" && version.as_deref() == Some("3"))
        ));
    }

    #[test]
    fn observation_rows() {
        let rows = extract(&json!({
            "resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}], "text": "HR"},
            "subject": {"reference": "Patient/p"},
            "effectivePeriod": {"start": "2024-01-01T10:00:00Z"},
            "valueQuantity": {"value": 72, "unit": "beats/min", "system": "http://unitsofmeasure.org", "code": "/min"}
        }));
        assert!(has(
            &rows,
            |r| matches!(r, IndexRow::Token { param, code, .. } if param == "code" && code == "8867-4")
        ));
        assert!(has(
            &rows,
            |r| matches!(r, IndexRow::String { param, normalized, .. } if param == "code:text" && normalized == "heart rate")
        ));
        assert!(has(
            &rows,
            |r| matches!(r, IndexRow::Reference { param, .. } if param == "patient")
        ));
        assert!(has(
            &rows,
            |r| matches!(r, IndexRow::Date { param, high, .. } if param == "date" && *high == i64::MAX)
        ));
        assert!(has(
            &rows,
            |r| matches!(r, IndexRow::Number { param, value, code, .. } if param == "value-quantity" && *value == 72.0 && code.as_deref() == Some("/min"))
        ));
        // the combo-* unions are searched through their parts, never stored
        let stored: Vec<&str> = rows
            .iter()
            .map(row_param)
            .filter(|p| p.starts_with("combo-"))
            .collect();
        assert!(stored.is_empty(), "{stored:?}");
    }
}
