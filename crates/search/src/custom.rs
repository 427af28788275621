//! Custom search parameters: `SearchParameter` resources stored on the server become
//! live parameters (R4 searchparameter.html), indexed on every later write and searched
//! like the built-in ones; `$reindex` indexes what was stored before.

use salus_fhir::defs::{self, SearchParamDef, SearchParamType};
use serde_json::Value;

/// The definition a `SearchParameter` resource describes; `Ok(None)` when it is not
/// meant to be live (only `status` active ones are; drafts and retired ones are just
/// stored) or describes a built-in parameter.
pub fn definition(resource: &Value) -> Result<Option<SearchParamDef>, String> {
    let s = |k: &str| resource.get(k).and_then(Value::as_str);
    let list = |k: &str| -> Vec<String> {
        resource
            .get(k)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    if s("status") != Some("active") {
        return Ok(None);
    }
    let url = s("url").ok_or("a SearchParameter needs a url")?.to_string();
    if defs::all_search_params().iter().any(|p| p.url == url) {
        return Ok(None);
    }
    let code = s("code")
        .ok_or("a SearchParameter needs a code")?
        .to_string();
    let kind = s("type")
        .and_then(SearchParamType::from_code)
        .ok_or("a SearchParameter needs a type")?;
    let expression = s("expression")
        .ok_or("a SearchParameter needs an expression to be searchable")?
        .to_string();
    salus_fhirpath::parse(&expression)
        .map_err(|e| format!("expression '{expression}' is not valid FHIRPath: {e}"))?;
    // SearchParameter.component: the definition (canonical) and expression of each part
    let mut components = vec![];
    for (i, c) in resource
        .get("component")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let part = |k: &str| c.get(k).and_then(Value::as_str);
        let (Some(definition), Some(expr)) = (part("definition"), part("expression")) else {
            return Err(format!(
                "component {} needs a definition and an expression",
                i + 1
            ));
        };
        salus_fhirpath::parse(expr).map_err(|e| {
            format!(
                "component {} expression '{expr}' is not valid FHIRPath: {e}",
                i + 1
            )
        })?;
        components.push((definition.to_string(), expr.to_string()));
    }
    if kind != SearchParamType::Composite && !components.is_empty() {
        return Err("only composite search parameters have components".into());
    }
    let def = SearchParamDef {
        code,
        url,
        kind,
        expression: Some(expression),
        base: list("base"),
        targets: list("target"),
        components,
    };
    defs::check_custom(&def)?;
    Ok(Some(def))
}

/// Make the parameter a `SearchParameter` resource describes live, or retire it.
pub fn apply(resource: &Value) -> Result<(), String> {
    match definition(resource)? {
        Some(def) => defs::register_custom(def),
        None => {
            if let Some(url) = resource.get("url").and_then(Value::as_str) {
                defs::unregister_custom(url);
            }
            Ok(())
        }
    }
}
