//! Token `:below` / `:above` (R4 search.html#token): codes subsumed by, or subsuming,
//! the given code in the hierarchy of a `CodeSystem` stored on this server (nested
//! `concept`s, `hierarchyMeaning` is-a or unset). The criterion is rewritten into the
//! plain list of codes before the query is parsed.

use crate::{FhirError, FhirService, Result};
use salus_fhir::defs::{self, SearchParamType};
use salus_store::{Clause, SearchPage, SearchQuery, Store, StoreTx, UriMatch, UriMode};
use serde_json::Value;

/// Where the CodeSystems are read: the store, or a transaction (a conditional
/// operation sees the transaction's own writes).
pub(crate) enum Source<'a> {
    Store(&'a dyn Store),
    Tx(&'a mut dyn StoreTx),
}

impl Source<'_> {
    async fn search(&mut self, q: &SearchQuery) -> Result<SearchPage> {
        Ok(match self {
            Source::Store(s) => s.search(q).await?,
            Source::Tx(tx) => tx.search(q).await?,
        })
    }
}

/// Most codes one `:below`/`:above` criterion may expand to.
const MAX_CODES: usize = 1_000;

impl FhirService {
    /// `pairs` with every token `:below`/`:above` criterion replaced by the codes it
    /// stands for; other pairs unchanged.
    pub(crate) async fn expand_subsumption(
        &self,
        rtype: &str,
        pairs: &[(String, String)],
    ) -> Result<Vec<(String, String)>> {
        expand(&mut Source::Store(self.store().as_ref()), rtype, pairs).await
    }
}

/// [`FhirService::expand_subsumption`], reading CodeSystems from `source`.
pub(crate) async fn expand(
    source: &mut Source<'_>,
    rtype: &str,
    pairs: &[(String, String)],
) -> Result<Vec<(String, String)>> {
    let mut out = Vec::with_capacity(pairs.len());
    for (key, value) in pairs {
        let Some((code, below)) = key
            .strip_suffix(":below")
            .map(|c| (c, true))
            .or_else(|| key.strip_suffix(":above").map(|c| (c, false)))
        else {
            out.push((key.clone(), value.clone()));
            continue;
        };
        let is_token = !code.contains('.')
            && defs::search_param(rtype, code).is_some_and(|d| d.kind == SearchParamType::Token);
        if !is_token {
            out.push((key.clone(), value.clone()));
            continue;
        }
        let mut codes = vec![];
        for v in salus_search::parse::split_escaped(value, ',') {
            let parts = salus_search::parse::split_escaped(&v, '|');
            let [system, c] = parts.as_slice() else {
                return Err(FhirError::invalid(format!(
                    "{key}: give system|code (the code system's hierarchy is needed)"
                )));
            };
            let (system, c) = (
                salus_search::parse::unescape(system),
                salus_search::parse::unescape(c),
            );
            for found in related_codes(source, key, &system, &c, below).await? {
                codes.push(format!("{}|{}", escape(&system), escape(&found)));
            }
        }
        out.push((code.to_string(), codes.join(",")));
    }
    Ok(out)
}

/// `code` and every code below (or above) it in the stored CodeSystem `system`.
async fn related_codes(
    source: &mut Source<'_>,
    key: &str,
    system: &str,
    code: &str,
    below: bool,
) -> Result<Vec<String>> {
    let mut q = SearchQuery::new("CodeSystem");
    q.clauses.push(Clause::Uri {
        param: "url".into(),
        any: vec![UriMatch {
            value: system.to_string(),
            mode: UriMode::Exact,
        }],
    });
    q.count = 2;
    let page = source.search(&q).await?;
    let cs: Value = match page.entries.as_slice() {
        [one] => serde_json::from_str(one.body.as_deref().unwrap_or("{}"))
            .map_err(|e| FhirError::Internal(format!("stored CodeSystem is not JSON: {e}")))?,
        [] => {
            return Err(FhirError::invalid(format!(
            "{key}: no CodeSystem with url '{system}' is stored here, so its hierarchy is unknown"
        )))
        }
        _ => {
            return Err(FhirError::invalid(format!(
                "{key}: more than one CodeSystem has url '{system}'"
            )))
        }
    };
    if let Some(m) = cs
        .get("hierarchyMeaning")
        .and_then(Value::as_str)
        .filter(|m| *m != "is-a")
    {
        return Err(FhirError::invalid(format!(
            "{key}: CodeSystem '{system}' has hierarchyMeaning '{m}', not is-a"
        )));
    }
    // (code, parent) for every concept, depth first.
    let mut pairs: Vec<(String, Option<String>)> = vec![];
    fn walk(concepts: &Value, parent: Option<&str>, out: &mut Vec<(String, Option<String>)>) {
        for c in concepts.as_array().into_iter().flatten() {
            if let Some(code) = c.get("code").and_then(Value::as_str) {
                out.push((code.to_string(), parent.map(str::to_string)));
                if let Some(children) = c.get("concept") {
                    walk(children, Some(code), out);
                }
            }
        }
    }
    walk(cs.get("concept").unwrap_or(&Value::Null), None, &mut pairs);
    if !pairs.iter().any(|(c, _)| c == code) {
        return Err(FhirError::invalid(format!(
            "{key}: CodeSystem '{system}' has no code '{code}'"
        )));
    }
    let mut found = vec![code.to_string()];
    let mut i = 0;
    while i < found.len() {
        let current = found[i].clone();
        for (c, parent) in &pairs {
            let related: Option<&str> = if below {
                if parent.as_deref() == Some(current.as_str()) {
                    Some(c.as_str())
                } else {
                    None
                }
            } else if *c == current {
                parent.as_deref()
            } else {
                None
            };
            if let Some(r) = related {
                if !found.iter().any(|f| f == r) {
                    found.push(r.to_string());
                }
            }
        }
        if found.len() > MAX_CODES {
            return Err(FhirError::invalid(format!(
                "{key}: '{code}' stands for more than {MAX_CODES} codes"
            )));
        }
        i += 1;
    }
    Ok(found)
}

/// Escape a token part for a search value (R4 search.html#escaping).
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace(',', "\\,")
        .replace('|', "\\|")
        .replace('$', "\\$")
}
