//! Parsing FHIR search parameters into a backend-neutral [`SearchQuery`].
//!
//! Supports what conditional operations and basic searches need today: `_id`,
//! `identifier`, `_lastUpdated` (with prefixes), `_count`, `_offset`, `_total`, and the
//! result-shaping parameters `_summary` / `_elements`. Anything else is rejected with a
//! clear error rather than silently ignored (an ignored criterion in a conditional
//! delete would match everything).

use crate::{time, FhirError, Result};
use salus_fhir::IssueCode;
use salus_store::{Clause, SearchQuery, TokenMatch};

/// A parsed search request.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub query: SearchQuery,
    /// `_summary` value, if given.
    pub summary: Option<String>,
    /// `_elements` list, if given.
    pub elements: Option<Vec<String>>,
    /// The parameters that were applied, for the `self` link.
    pub applied: Vec<(String, String)>,
}

/// Parse `a=b&c=d` (percent-encoded) into pairs.
pub fn parse_pairs(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Split on unescaped `sep`; `\\sep` becomes `sep`, other escapes are kept for the
/// next level of splitting (see [`unescape`]).
fn split_escaped(s: &str, sep: char) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        let cur = out.last_mut().expect("non-empty");
        if c == '\\' {
            match chars.next() {
                Some(n) if n == sep => cur.push(n),
                Some(n) => {
                    cur.push('\\');
                    cur.push(n);
                }
                None => cur.push('\\'),
            }
        } else if c == sep {
            out.push(String::new());
        } else {
            cur.push(c);
        }
    }
    out
}

/// Remove search escapes (`\\,` `\\|` `\\$` `\\\\`) from a final value.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                if !matches!(n, ',' | '|' | '$' | '\\') {
                    out.push('\\');
                }
                out.push(n);
            } else {
                out.push(c);
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn token_match(v: &str) -> TokenMatch {
    let parts: Vec<String> = split_escaped(v, '|').iter().map(|p| unescape(p)).collect();
    if parts.len() >= 2 {
        let system = parts[0].clone();
        let code = parts[1..].join("|");
        TokenMatch {
            system: Some(system),
            code: if code.is_empty() { None } else { Some(code) },
        }
    } else {
        TokenMatch {
            system: None,
            code: Some(parts.into_iter().next().unwrap_or_default()),
        }
    }
}

fn bad(param: &str, msg: impl Into<String>) -> FhirError {
    FhirError::invalid_at(IssueCode::Invalid, param.to_string(), msg)
}

/// Parse search parameters for `rtype`. `max_count` caps `_count`.
pub fn parse_search(
    rtype: &str,
    pairs: &[(String, String)],
    default_count: usize,
    max_count: usize,
) -> Result<SearchRequest> {
    let mut query = SearchQuery::new(rtype);
    query.count = default_count;
    let mut summary = None;
    let mut elements = None;
    let mut applied = vec![];
    for (key, value) in pairs {
        let (name, modifier) = match key.split_once(':') {
            Some((n, m)) => (n, Some(m)),
            None => (key.as_str(), None),
        };
        if let Some(m) = modifier {
            return Err(FhirError::NotSupported(format!(
                "search modifier ':{m}' on '{name}' is not supported yet"
            )));
        }
        match name {
            "_format" | "_pretty" => continue,
            "_id" => query.clauses.push(Clause::Id(
                split_escaped(value, ',').iter().map(|v| unescape(v)).collect(),
            )),
            "identifier" => query.clauses.push(Clause::Token {
                param: "identifier".into(),
                any: split_escaped(value, ',').iter().map(|v| token_match(v)).collect(),
            }),
            "_lastUpdated" => {
                let (prefix, date) = if value.len() > 2 && value.as_bytes()[..2].iter().all(u8::is_ascii_lowercase) {
                    value.split_at(2)
                } else {
                    ("eq", value.as_str())
                };
                let (lo, hi) = time::parse_range(date)
                    .ok_or_else(|| bad(name, format!("'{date}' is not a valid date/dateTime")))?;
                let (low, high) = match prefix {
                    "eq" => (Some(lo), Some(hi)),
                    "gt" | "sa" => (Some(hi + 1), None),
                    "ge" => (Some(lo), None),
                    "lt" | "eb" => (None, Some(lo - 1)),
                    "le" => (None, Some(hi)),
                    p => return Err(bad(name, format!("prefix '{p}' is not supported on _lastUpdated"))),
                };
                query.clauses.push(Clause::LastUpdated { low, high });
            }
            "_count" => {
                let n: usize = value
                    .parse()
                    .map_err(|_| bad(name, format!("_count must be a non-negative integer, got '{value}'")))?;
                query.count = n.min(max_count);
            }
            "_offset" => {
                query.offset = value
                    .parse()
                    .map_err(|_| bad(name, format!("_offset must be a non-negative integer, got '{value}'")))?;
            }
            "_total" => match value.as_str() {
                "none" => query.with_total = false,
                "accurate" | "estimate" => query.with_total = true,
                _ => return Err(bad(name, "_total must be none, estimate or accurate")),
            },
            "_summary" => {
                if !matches!(value.as_str(), "true" | "false" | "text" | "data" | "count") {
                    return Err(bad(name, "_summary must be true, false, text, data or count"));
                }
                if value == "count" {
                    query.with_total = true;
                    query.count = 0;
                }
                summary = Some(value.clone());
            }
            "_elements" => {
                elements = Some(value.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect());
            }
            other => {
                return Err(FhirError::NotSupported(format!(
                    "search parameter '{other}' is not supported yet on {rtype} (supported: _id, identifier, _lastUpdated, _count, _offset, _total, _summary, _elements)"
                )))
            }
        }
        applied.push((key.clone(), value.clone()));
    }
    Ok(SearchRequest {
        query,
        summary,
        elements,
        applied,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(q: &str) -> Result<SearchRequest> {
        parse_search("Patient", &parse_pairs(q), 20, 1000)
    }

    #[test]
    fn identifier_tokens() {
        let r = p("identifier=urn%3Amrn%7C123,456").unwrap();
        assert_eq!(
            r.query.clauses,
            vec![Clause::Token {
                param: "identifier".into(),
                any: vec![
                    TokenMatch {
                        system: Some("urn:mrn".into()),
                        code: Some("123".into())
                    },
                    TokenMatch {
                        system: None,
                        code: Some("456".into())
                    },
                ]
            }]
        );
        let r = p("identifier=%7Cx").unwrap();
        assert!(
            matches!(&r.query.clauses[0], Clause::Token { any, .. } if any[0].system.as_deref() == Some(""))
        );
    }

    #[test]
    fn escaped_comma_is_not_a_separator() {
        let r = p("_id=a%5C,b,c").unwrap();
        assert_eq!(
            r.query.clauses,
            vec![Clause::Id(vec!["a,b".into(), "c".into()])]
        );
    }

    #[test]
    fn unknown_parameters_are_rejected() {
        assert!(matches!(p("name=x"), Err(FhirError::NotSupported(_))));
        assert!(matches!(
            p("identifier:text=x"),
            Err(FhirError::NotSupported(_))
        ));
        assert!(matches!(p("_count=abc"), Err(FhirError::Invalid(_))));
        assert!(matches!(
            p("_lastUpdated=gt2024-13"),
            Err(FhirError::Invalid(_))
        ));
    }

    #[test]
    fn count_is_capped() {
        assert_eq!(p("_count=5000").unwrap().query.count, 1000);
        let r = p("_lastUpdated=ge2024-01-01&_summary=count").unwrap();
        assert_eq!(r.query.count, 0);
        assert!(r.query.with_total);
    }
}
