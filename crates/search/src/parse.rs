//! Parsing FHIR search parameters (R4 search.html) into a backend-neutral
//! [`SearchQuery`] plus the result parameters (`_include`, `_sort`, paging, shaping).
//!
//! Every parameter is resolved against the R4 SearchParameter definitions of the
//! resource type(s) searched; its type decides how values parse. Values separated by
//! commas are ORed, repeated parameters ANDed. Chains (`subject:Patient.name=x`) and
//! reverse chains (`_has:Observation:patient:code=x`) nest to any depth.

use crate::normalize::normalize;
use base64::Engine;
use salus_fhir::defs::{self, SearchParamDef, SearchParamType};
use salus_fhir::instant;
use salus_store::{
    Clause, ContainedMode, ContainedType, Cursor, IndexKind, Page, Prefix, QuantityMatch,
    RangeMatch, RefMatch, SearchQuery, SortField, SortKey, SortValue, StringMatch, StringMode,
    TextField, TextQuery, TokenMatch, UriMatch, UriMode,
};
use serde_json::{json, Value};

/// Why a search could not be parsed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SearchError {
    /// A value or parameter is malformed (400).
    #[error("{param}: {message}")]
    Invalid { param: String, message: String },
    /// A parameter or feature the server does not support (400 in strict handling).
    #[error("{0}")]
    Unsupported(String),
}

fn invalid(param: &str, message: impl Into<String>) -> SearchError {
    SearchError::Invalid {
        param: param.to_string(),
        message: message.into(),
    }
}

/// Parsing options.
#[derive(Debug, Clone)]
pub struct Options {
    pub default_count: usize,
    pub max_count: usize,
    /// `Prefer: handling=strict`: unknown or unsupported parameters are errors rather
    /// than ignored. Conditional operations always parse strictly.
    pub strict: bool,
}

/// `_include` / `_revinclude`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    /// The type holding the reference (`Encounter` in `Encounter:patient`); `*` for any.
    pub source_type: String,
    /// The reference parameter; `None` for `*` (every reference parameter).
    pub param: Option<String>,
    /// Restrict the targets to one type (`Encounter:patient:Patient`).
    pub target_type: Option<String>,
    /// `:iterate` (or R4's `:recurse`): apply to included resources too.
    pub iterate: bool,
}

/// `_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TotalMode {
    None,
    Estimate,
    Accurate,
}

/// A parsed search.
#[derive(Debug, Clone)]
pub struct SearchPlan {
    pub query: SearchQuery,
    pub includes: Vec<Include>,
    pub revincludes: Vec<Include>,
    pub summary: Option<String>,
    pub elements: Option<Vec<String>>,
    pub total: TotalMode,
    /// Parameters that shaped the result, as given (for `self`/paging links).
    pub applied: Vec<(String, String)>,
    /// Parameters ignored under lenient handling, with the reason.
    pub ignored: Vec<(String, String)>,
}

/// The UCUM code system.
pub const UCUM: &str = "http://unitsofmeasure.org";

/// Where a quantity parameter's UCUM values are also stored in canonical form (value in
/// base units, code naming the dimensions), apart from the values as written.
/// (For a composite's key, `code$value|system`, the marker goes before the `$`, so
/// that a search without a system — a prefix over the keys — never reaches them.)
pub fn canonical_param(param: &str) -> String {
    match param.split_once('$') {
        Some((code, key)) => format!("{code}:canonical${key}"),
        None => format!("{param}:canonical"),
    }
}

/// The index kind a parameter type lives in (`None`: composite/special).
pub fn index_kind(t: SearchParamType) -> Option<IndexKind> {
    Some(match t {
        SearchParamType::Number | SearchParamType::Quantity => IndexKind::Number,
        SearchParamType::Date => IndexKind::Date,
        SearchParamType::String => IndexKind::String,
        SearchParamType::Token => IndexKind::Token,
        SearchParamType::Reference => IndexKind::Reference,
        SearchParamType::Uri => IndexKind::Uri,
        SearchParamType::Composite | SearchParamType::Special => return None,
    })
}

/// Split on unescaped `sep`; `\sep` becomes `sep`, other escapes stay for the next level.
pub fn split_escaped(s: &str, sep: char) -> Vec<String> {
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

/// Remove search escapes (`\,` `\|` `\$` `\\`) from a final value.
pub fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(n) if matches!(n, ',' | '|' | '$' | '\\') => out.push(n),
                Some(n) => {
                    out.push('\\');
                    out.push(n);
                }
                None => out.push(c),
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn values(v: &str) -> Vec<String> {
    split_escaped(v, ',')
}

fn token_match(v: &str) -> TokenMatch {
    let parts: Vec<String> = split_escaped(v, '|').iter().map(|p| unescape(p)).collect();
    if parts.len() >= 2 {
        let code = parts[1..].join("|");
        TokenMatch {
            system: Some(parts[0].clone()),
            code: (!code.is_empty()).then_some(code),
        }
    } else {
        TokenMatch {
            system: None,
            code: Some(parts.into_iter().next().unwrap_or_default()),
        }
    }
}

/// `ge2020` → (Ge, "2020"); no prefix → Eq.
fn prefix(v: &str) -> (Prefix, &str) {
    let p = match v.get(..2) {
        Some("eq") => Prefix::Eq,
        Some("ne") => Prefix::Ne,
        Some("gt") => Prefix::Gt,
        Some("lt") => Prefix::Lt,
        Some("ge") => Prefix::Ge,
        Some("le") => Prefix::Le,
        Some("sa") => Prefix::Sa,
        Some("eb") => Prefix::Eb,
        Some("ap") => Prefix::Ap,
        _ => return (Prefix::Eq, v),
    };
    (p, &v[2..])
}

/// A date criterion: the value's precision gives its range; `ap` widens it by 10% of
/// the distance to now (at least a day).
pub fn date_match(param: &str, v: &str) -> Result<RangeMatch<i64>, SearchError> {
    let (p, d) = prefix(v);
    let (mut low, mut high) = instant::parse_range(d).ok_or_else(|| {
        invalid(
            param,
            format!("'{d}' is not a valid date, dateTime or instant"),
        )
    })?;
    if p == Prefix::Ap {
        let now = instant::now_micros();
        let gap = ((now - low).abs() / 10).max(86_400_000_000);
        low -= gap;
        high += gap;
    }
    Ok(RangeMatch {
        prefix: p,
        low,
        high,
    })
}

/// A number criterion: `eq`/`ne` use the value's implicit precision range
/// (`100` covers [99.5, 100.5)); `ap` ±10%; the other prefixes the exact value.
pub fn number_match(param: &str, v: &str) -> Result<RangeMatch<f64>, SearchError> {
    let (p, n) = prefix(v);
    let value: f64 = n
        .parse()
        .ok()
        .filter(|f: &f64| f.is_finite())
        .ok_or_else(|| invalid(param, format!("'{n}' is not a number")))?;
    let (low, high) = match p {
        Prefix::Eq | Prefix::Ne => {
            let mantissa = n.split(['e', 'E']).next().unwrap_or(n);
            let decimals = mantissa.split_once('.').map_or(0, |(_, f)| f.len()) as i32;
            let exp: i32 = n
                .split_once(['e', 'E'])
                .and_then(|(_, e)| e.parse().ok())
                .unwrap_or(0);
            let half = 0.5 * 10f64.powi(exp - decimals);
            (
                value - half,
                value + half - f64::EPSILON * value.abs().max(1.0),
            )
        }
        Prefix::Ap => {
            let d = (value * 0.1).abs();
            (value - d, value + d)
        }
        _ => (value, value),
    };
    Ok(RangeMatch {
        prefix: p,
        low,
        high,
    })
}

fn reference_matches(v: &str, type_modifier: Option<&str>, def: &SearchParamDef) -> Vec<RefMatch> {
    let v = unescape(v);
    // canonical with version: url|version
    if let Some((url, version)) = v.split_once('|') {
        return vec![RefMatch {
            target_type: None,
            target_id: url.to_string(),
            version: Some(version.to_string()),
        }];
    }
    let segments: Vec<&str> = v.split('/').collect();
    let typed = |t: &str, id: &str, ver: Option<&str>| RefMatch {
        target_type: Some(t.to_string()),
        target_id: id.to_string(),
        version: ver.map(str::to_string),
    };
    let n = segments.len();
    // …/Type/id or …/Type/id/_history/v (relative or absolute)
    if n >= 4 && segments[n - 2] == "_history" && defs::is_resource_type(segments[n - 4]) {
        return vec![typed(
            segments[n - 4],
            segments[n - 3],
            Some(segments[n - 1]),
        )];
    }
    if n >= 2 && defs::is_resource_type(segments[n - 2]) {
        let m = typed(segments[n - 2], segments[n - 1], None);
        if v.contains("://") {
            return vec![
                m,
                RefMatch {
                    target_type: None,
                    target_id: v.clone(),
                    version: None,
                },
            ];
        }
        return vec![m];
    }
    if v.contains(':') {
        // absolute URL (e.g. a canonical) without a resource path
        return vec![RefMatch {
            target_type: None,
            target_id: v,
            version: None,
        }];
    }
    // a bare id: the modifier's type, or any of the parameter's targets
    match type_modifier {
        Some(t) => vec![typed(t, &v, None)],
        None if def.targets.len() == 1 => vec![typed(&def.targets[0], &v, None)],
        None => vec![RefMatch {
            target_type: None,
            target_id: v,
            version: None,
        }],
    }
}

/// Find a parameter's definition on every type of `types` (the first found decides).
fn find_def(types: &[String], code: &str) -> Option<&'static SearchParamDef> {
    if types.is_empty() {
        return defs::search_param("Resource", code)
            .or_else(|| defs::search_param("DomainResource", code));
    }
    types.iter().find_map(|t| defs::search_param(t, code))
}

/// Parse one search parameter (`key=value`) on resources of `types` into a clause.
pub fn param_clause(types: &[String], key: &str, value: &str) -> Result<Clause, SearchError> {
    // reverse chaining
    if let Some(rest) = key.strip_prefix("_has:") {
        let mut parts = rest.splitn(3, ':');
        let (Some(source), Some(param), Some(inner_key)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid(
                key,
                "_has needs the form _has:Type:reference-param:param",
            ));
        };
        if !defs::is_resource_type(source) {
            return Err(invalid(key, format!("'{source}' is not a resource type")));
        }
        let def = defs::search_param(source, param)
            .ok_or_else(|| invalid(key, format!("{source} has no search parameter '{param}'")))?;
        if def.kind != SearchParamType::Reference {
            return Err(invalid(
                key,
                format!("{source}.{param} is not a reference parameter"),
            ));
        }
        let src = vec![source.to_string()];
        let inner = param_clause(&src, inner_key, value)?;
        return Ok(Clause::Has {
            source_type: source.to_string(),
            param: param.to_string(),
            inner: vec![inner],
        });
    }
    // chaining: subject:Patient.name, subject.name
    if let Some((head, rest)) = key.split_once('.') {
        let (code, modifier) = match head.split_once(':') {
            Some((c, m)) => (c, Some(m)),
            None => (head, None),
        };
        let def = find_def(types, code).ok_or_else(|| unknown(types, code))?;
        if def.kind != SearchParamType::Reference {
            return Err(invalid(
                key,
                format!("'{code}' is not a reference parameter, so it cannot be chained"),
            ));
        }
        let inner_code = rest.split(['.', ':']).next().unwrap_or(rest);
        let targets: Vec<String> = match modifier {
            Some(t) if defs::is_resource_type(t) => vec![t.to_string()],
            Some(m) => return Err(invalid(key, format!("':{m}' is not a resource type"))),
            None => {
                let candidates: Vec<String> = if def.targets.is_empty() {
                    defs::resource_types()
                        .iter()
                        .map(|s| s.to_string())
                        .collect()
                } else {
                    def.targets.clone()
                };
                let t: Vec<String> = candidates
                    .into_iter()
                    .filter(|t| {
                        inner_code.starts_with("_has")
                            || defs::search_param(t, inner_code).is_some()
                    })
                    .collect();
                if t.is_empty() {
                    return Err(invalid(
                        key,
                        format!("no target type of '{code}' has a search parameter '{inner_code}'"),
                    ));
                }
                t
            }
        };
        let inner = param_clause(&targets, rest, value)?;
        return Ok(Clause::Chain {
            param: code.to_string(),
            target_types: targets,
            inner: vec![inner],
        });
    }
    let (code, modifier) = match key.split_once(':') {
        Some((c, m)) => (c, Some(m)),
        None => (key, None),
    };
    match code {
        "_id" => {
            let ids: Vec<String> = values(value).iter().map(|v| unescape(v)).collect();
            return match modifier {
                None => Ok(Clause::Id(ids)),
                Some("not") => Ok(Clause::Not(Box::new(Clause::Id(ids)))),
                Some(m) => Err(SearchError::Unsupported(format!("modifier ':{m}' on _id"))),
            };
        }
        "_lastUpdated" => {
            if let Some(m) = modifier {
                return Err(SearchError::Unsupported(format!(
                    "modifier ':{m}' on _lastUpdated"
                )));
            }
            let any = values(value)
                .iter()
                .map(|v| date_match(code, v))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(Clause::LastUpdatedRange { any });
        }
        "_type" => {
            let ts: Vec<String> = values(value).iter().map(|v| unescape(v)).collect();
            if let Some(bad) = ts.iter().find(|t| !defs::is_resource_type(t)) {
                return Err(invalid(code, format!("'{bad}' is not a resource type")));
            }
            return Ok(Clause::Types(ts));
        }
        "_text" | "_content" => {
            if let Some(m) = modifier {
                return Err(SearchError::Unsupported(format!(
                    "modifier ':{m}' on {code}"
                )));
            }
            let field = if code == "_text" {
                TextField::Narrative
            } else {
                TextField::Content
            };
            return Ok(Clause::Text {
                field,
                query: text_query(key, value)?,
            });
        }
        "_filter" | "_query" | "_list" => {
            return Err(SearchError::Unsupported(format!(
                "search parameter '{code}' is not supported yet"
            )))
        }
        _ => {}
    }
    let def = find_def(types, code).ok_or_else(|| unknown(types, code))?;
    if let Some((own, component)) = union_parts(def) {
        // Not stored (extract.rs): the same search on the two parameters it unites. A
        // negation holds when it holds for both (`:not`, `:not-in`, `:missing=true`);
        // anything else when it holds for either.
        let part = |name: &str| {
            let key = match modifier {
                Some(m) => format!("{name}:{m}"),
                None => name.to_string(),
            };
            param_clause(types, &key, value)
        };
        let both = vec![part(own)?, part(component)?];
        let negated = matches!(modifier, Some("not" | "not-in"))
            || (modifier == Some("missing") && value == "true");
        return Ok(if negated {
            Clause::All(both)
        } else {
            Clause::Any(both)
        });
    }
    if def.kind == SearchParamType::Composite {
        if let Some(m) = modifier {
            return Err(SearchError::Unsupported(format!(
                "modifier ':{m}' on composite parameter '{code}'"
            )));
        }
        return composite_clause(def, key, value);
    }
    let kind = index_kind(def.kind).ok_or_else(|| {
        SearchError::Unsupported(format!(
            "{} search parameter '{code}' is not supported yet",
            def.kind.as_str()
        ))
    })?;
    if modifier == Some("missing") {
        let missing = match value {
            "true" => true,
            "false" => false,
            _ => return Err(invalid(key, "':missing' takes true or false")),
        };
        return Ok(Clause::Missing {
            param: code.to_string(),
            kind,
            missing,
        });
    }
    typed_clause(def, code, key, modifier, values(value))
}

/// R4 defines each of Observation's `combo-*` parameters as the union of the same
/// parameter on the Observation itself and on its components (`combo-code` =
/// `code` ∪ `component-code`, `combo-value-quantity` = `value-quantity` ∪
/// `component-value-quantity`, and likewise for `combo-value-concept`,
/// `combo-data-absent-reason` and the composites `combo-code-value-quantity` and
/// `combo-code-value-concept`): their index rows would repeat those of the two — about
/// a fifth of all rows for vital signs — so they are not stored, and a search or sort
/// on one reads the two it unites. `None` for every other parameter (custom ones too).
pub fn union_parts(def: &SearchParamDef) -> Option<(&'static str, &'static str)> {
    const UNIONS: &[(&str, &str, &str)] = &[
        ("combo-code", "code", "component-code"),
        (
            "combo-code-value-concept",
            "code-value-concept",
            "component-code-value-concept",
        ),
        (
            "combo-code-value-quantity",
            "code-value-quantity",
            "component-code-value-quantity",
        ),
        (
            "combo-data-absent-reason",
            "data-absent-reason",
            "component-data-absent-reason",
        ),
        (
            "combo-value-concept",
            "value-concept",
            "component-value-concept",
        ),
        (
            "combo-value-quantity",
            "value-quantity",
            "component-value-quantity",
        ),
    ];
    // the official definitions only: a custom parameter of the same name is stored
    let official = def
        .url
        .strip_prefix("http://hl7.org/fhir/SearchParameter/Observation-")?;
    let (_, own, component) = UNIONS
        .iter()
        .find(|(code, _, _)| *code == def.code && *code == official)?;
    Some((own, component))
}

/// The components of a composite parameter whose first component is a token and
/// which has two (every R4 composite): the second component's definition.
pub fn composite_value_def(def: &SearchParamDef) -> Option<&'static SearchParamDef> {
    let [(first, _), (second, _)] = def.components.as_slice() else {
        return None;
    };
    let first = defs::search_param_by_url(first)?;
    let second = defs::search_param_by_url(second)?;
    (first.kind == SearchParamType::Token && index_kind(second.kind).is_some()).then_some(second)
}

/// Where a composite's second component is stored for one value of its first (a
/// token): under `code$value|system` (`code$value|` without a system). A search that
/// names no system (`None`) looks at every `code$value|…` (the store reads a name
/// ending in `|*` as that prefix).
pub fn composite_key(code: &str, system: Option<&str>, value: &str) -> String {
    match system {
        Some(s) => format!("{code}${value}|{s}"),
        None => format!("{code}${value}|*"),
    }
}

/// `code-value-quantity=http://loinc.org|8480-6$gt100` (R4 search.html#composite): the
/// second component's criterion on the rows kept for the first component's token;
/// comma-separated values are alternatives.
fn composite_clause(def: &SearchParamDef, key: &str, value: &str) -> Result<Clause, SearchError> {
    let second = composite_value_def(def).ok_or_else(|| {
        SearchError::Unsupported(format!(
            "composite search parameter '{}' is not supported",
            def.code
        ))
    })?;
    let mut any = vec![];
    for v in values(value) {
        let parts = split_escaped(&v, '$');
        let [token, criterion] = parts.as_slice() else {
            return Err(invalid(
                key,
                "a composite value is a token and a value joined by '$' (e.g. http://loinc.org|8480-6$gt100)",
            ));
        };
        let t = token_match(token);
        let Some(code) = t.code.filter(|c| !c.is_empty()) else {
            return Err(invalid(
                key,
                "the first part of a composite value needs a code",
            ));
        };
        let stored = composite_key(&def.code, t.system.as_deref(), &code);
        any.push(typed_clause(
            second,
            &stored,
            key,
            None,
            vec![criterion.clone()],
        )?);
    }
    Ok(match any.len() {
        1 => any.pop().expect("one"),
        _ => Clause::Any(any),
    })
}

/// The clause for a parameter of an indexed type, its rows stored under `code` (the
/// parameter's name, or a composite's key for its second component).
fn typed_clause(
    def: &SearchParamDef,
    code: &str,
    key: &str,
    modifier: Option<&str>,
    vals: Vec<String>,
) -> Result<Clause, SearchError> {
    let unsupported = |m: &str| {
        SearchError::Unsupported(format!(
            "modifier ':{m}' is not supported on {} parameter '{code}'",
            def.kind.as_str()
        ))
    };
    Ok(match def.kind {
        SearchParamType::Token => match modifier {
            None | Some("not") => {
                let c = Clause::Token {
                    param: code.to_string(),
                    any: vals.iter().map(|v| token_match(v)).collect(),
                };
                if modifier == Some("not") {
                    Clause::Not(Box::new(c))
                } else {
                    c
                }
            }
            Some("text") => Clause::String {
                param: format!("{code}:text"),
                any: vals
                    .iter()
                    .map(|v| StringMatch {
                        value: normalize(&unescape(v)),
                        mode: StringMode::Prefix,
                    })
                    .collect(),
            },
            Some("of-type") => Clause::Token {
                param: format!("{code}:of-type"),
                any: vals
                    .iter()
                    .map(|v| {
                        let parts: Vec<String> =
                            split_escaped(v, '|').iter().map(|p| unescape(p)).collect();
                        if parts.len() != 3 {
                            return Err(invalid(
                                key,
                                "':of-type' takes type-system|type-code|value",
                            ));
                        }
                        Ok(TokenMatch {
                            system: None,
                            code: Some(parts.join("|")),
                        })
                    })
                    .collect::<Result<_, _>>()?,
            },
            Some(m @ ("in" | "not-in")) => {
                let mut any = vec![];
                for v in &vals {
                    let url = unescape(v);
                    let vs = defs::required_value_set(&url)
                        .filter(|vs| vs.is_enumerated())
                        .ok_or_else(|| {
                            SearchError::Unsupported(format!(
                                "value set '{url}' is not known to this server (':{m}' works with the R4 value sets bundled with it)"
                            ))
                        })?;
                    for (system, codes) in &vs.systems {
                        for c in codes {
                            any.push(TokenMatch {
                                system: Some(system.to_string()),
                                code: Some(c.to_string()),
                            });
                            // `code` elements are indexed without a system
                            any.push(TokenMatch {
                                system: Some(String::new()),
                                code: Some(c.to_string()),
                            });
                        }
                    }
                }
                let c = Clause::Token {
                    param: code.to_string(),
                    any,
                };
                if m == "not-in" {
                    Clause::Not(Box::new(c))
                } else {
                    c
                }
            }
            Some(m) => return Err(unsupported(m)),
        },
        SearchParamType::String => {
            let mode = match modifier {
                None => StringMode::Prefix,
                Some("exact") => StringMode::Exact,
                Some("contains") => StringMode::Contains,
                Some(m) => return Err(unsupported(m)),
            };
            Clause::String {
                param: code.to_string(),
                any: vals
                    .iter()
                    .map(|v| {
                        let v = unescape(v);
                        StringMatch {
                            value: if mode == StringMode::Exact {
                                v
                            } else {
                                normalize(&v)
                            },
                            mode,
                        }
                    })
                    .collect(),
            }
        }
        SearchParamType::Date | SearchParamType::Number => {
            if let Some(m) = modifier {
                return Err(unsupported(m));
            }
            let param = code.to_string();
            ne_split(if def.kind == SearchParamType::Date {
                Clause::Date {
                    param,
                    any: vals
                        .iter()
                        .map(|v| date_match(code, v))
                        .collect::<Result<_, _>>()?,
                }
            } else {
                Clause::Number {
                    param,
                    any: vals
                        .iter()
                        .map(|v| number_match(code, v))
                        .collect::<Result<_, _>>()?,
                }
            })
        }
        SearchParamType::Quantity => {
            if let Some(m) = modifier {
                return Err(unsupported(m));
            }
            // Each value searches the rows as written, or — with a UCUM unit — every
            // stored UCUM quantity of that dimension, converted
            // (`5.4|http://unitsofmeasure.org|g` finds 5400 mg).
            let mut by_param: Vec<(String, Vec<QuantityMatch>)> = vec![];
            for v in &vals {
                let parts: Vec<String> =
                    split_escaped(v, '|').iter().map(|p| unescape(p)).collect();
                let range = number_match(code, &parts[0])?;
                let opt = |i: usize| parts.get(i).filter(|s| !s.is_empty()).cloned();
                let (system, unit) = (opt(1), opt(2));
                let canonical = match (system.as_deref(), unit.as_deref()) {
                    (Some(UCUM), Some(u)) => salus_fhirpath::quantity::ucum_canonical(u),
                    _ => None,
                };
                let (param, m) = match canonical {
                    Some((factor, dims)) => (
                        canonical_param(code),
                        QuantityMatch {
                            range: RangeMatch {
                                prefix: range.prefix,
                                low: range.low * factor,
                                high: range.high * factor,
                            },
                            system: None,
                            code: Some(dims),
                        },
                    ),
                    None => (
                        code.to_string(),
                        QuantityMatch {
                            range,
                            system,
                            code: unit,
                        },
                    ),
                };
                match by_param.iter_mut().find(|(p, _)| *p == param) {
                    Some((_, any)) => any.push(m),
                    None => by_param.push((param, vec![m])),
                }
            }
            let mut clauses: Vec<Clause> = by_param
                .into_iter()
                .map(|(param, any)| ne_split(Clause::Quantity { param, any }))
                .collect();
            match clauses.len() {
                1 => clauses.pop().expect("one"),
                _ => Clause::Any(clauses),
            }
        }
        SearchParamType::Reference => match modifier {
            Some("identifier") => Clause::Token {
                param: format!("{code}:identifier"),
                any: vals.iter().map(|v| token_match(v)).collect(),
            },
            Some(t) if !defs::is_resource_type(t) => return Err(unsupported(t)),
            t => Clause::Reference {
                param: code.to_string(),
                any: vals
                    .iter()
                    .flat_map(|v| reference_matches(v, t, def))
                    .collect(),
            },
        },
        SearchParamType::Uri => {
            let mode = match modifier {
                None => UriMode::Exact,
                Some("above") => UriMode::Above,
                Some("below") => UriMode::Below,
                Some(m) => return Err(unsupported(m)),
            };
            Clause::Uri {
                param: code.to_string(),
                any: vals
                    .iter()
                    .map(|v| UriMatch {
                        value: unescape(v),
                        mode,
                    })
                    .collect(),
            }
        }
        SearchParamType::Composite | SearchParamType::Special => unreachable!("no index kind"),
    })
}

/// `ne` means "no value equal": turn `ne` criteria into a negated `eq` (the spec's
/// reading for resources with several values), keeping other prefixes as they are.
/// A `_text`/`_content` value: comma-separated (or `OR`-separated) alternatives, each
/// words that must all occur; `"…"` quotes a phrase; a trailing `*` matches a prefix;
/// `AND` between words is allowed and changes nothing.
pub fn text_query(key: &str, value: &str) -> Result<TextQuery, SearchError> {
    let mut any = vec![];
    for alternative in values(value) {
        let alternative = unescape(&alternative);
        let mut terms: Vec<String> = vec![];
        let mut rest = alternative.trim();
        while !rest.is_empty() {
            let (term, tail) = if let Some(quoted) = rest.strip_prefix('"') {
                match quoted.split_once('"') {
                    Some((phrase, tail)) => (phrase.trim().to_string(), tail),
                    None => return Err(invalid(key, "unbalanced '\"' in the search text")),
                }
            } else {
                let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                (rest[..end].to_string(), &rest[end..])
            };
            rest = tail.trim_start();
            match term.as_str() {
                "" | "AND" => {}
                "OR" => {
                    if !terms.is_empty() {
                        any.push(std::mem::take(&mut terms));
                    }
                }
                _ => terms.push(term),
            }
        }
        if !terms.is_empty() {
            any.push(terms);
        }
    }
    if any
        .iter()
        .flatten()
        .any(|t| t.trim_end_matches('*').trim().is_empty())
        || any.is_empty()
    {
        return Err(invalid(key, "give at least one word to search for"));
    }
    Ok(TextQuery { any })
}

fn ne_split(c: Clause) -> Clause {
    fn split<T: Clone>(any: &[RangeMatch<T>]) -> Option<Vec<RangeMatch<T>>> {
        if any.len() == 1 && any[0].prefix == Prefix::Ne {
            let mut m = any[0].clone();
            m.prefix = Prefix::Eq;
            Some(vec![m])
        } else {
            None
        }
    }
    match &c {
        Clause::Date { param, any } => match split(any) {
            Some(eq) => Clause::Not(Box::new(Clause::Date {
                param: param.clone(),
                any: eq,
            })),
            None => c,
        },
        Clause::Number { param, any } => match split(any) {
            Some(eq) => Clause::Not(Box::new(Clause::Number {
                param: param.clone(),
                any: eq,
            })),
            None => c,
        },
        _ => c,
    }
}

fn unknown(types: &[String], code: &str) -> SearchError {
    SearchError::Unsupported(format!(
        "unknown search parameter '{code}' for {}",
        if types.is_empty() {
            "a system-level search".to_string()
        } else {
            types.join(", ")
        }
    ))
}

/// Encode a paging cursor for a link (`_page=…`).
pub fn encode_page(page: &Page) -> String {
    let cursor = |dir: &str, c: &Cursor| {
        let values: Vec<Value> = c
            .values
            .iter()
            .map(|v| match v {
                SortValue::Null => Value::Null,
                SortValue::Int(i) => json!({"i": i}),
                SortValue::Real(f) => json!({"r": f}),
                SortValue::Text(s) => json!({"s": s}),
            })
            .collect();
        let j = json!({"d": dir, "v": values, "t": c.rtype, "i": c.id});
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(j.to_string())
    };
    match page {
        Page::First => String::new(),
        Page::Last => "last".into(),
        Page::After(c) => cursor("a", c),
        Page::Before(c) => cursor("b", c),
    }
}

fn decode_page(s: &str) -> Option<Page> {
    if s == "last" {
        return Some(Page::Last);
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()?;
    let j: Value = serde_json::from_slice(&bytes).ok()?;
    let values = j["v"]
        .as_array()?
        .iter()
        .map(|v| {
            if v.is_null() {
                Some(SortValue::Null)
            } else if let Some(i) = v.get("i") {
                i.as_i64().map(SortValue::Int)
            } else if let Some(f) = v.get("r") {
                f.as_f64().map(SortValue::Real)
            } else {
                v.get("s")?.as_str().map(|s| SortValue::Text(s.to_string()))
            }
        })
        .collect::<Option<Vec<_>>>()?;
    let c = Cursor {
        values,
        rtype: j["t"].as_str()?.to_string(),
        id: j["i"].as_str()?.to_string(),
    };
    match j["d"].as_str()? {
        "a" => Some(Page::After(c)),
        "b" => Some(Page::Before(c)),
        _ => None,
    }
}

fn parse_include(
    key: &str,
    value: &str,
    rev: bool,
    types: &[String],
) -> Result<Include, SearchError> {
    let iterate = key.ends_with(":iterate") || key.ends_with(":recurse");
    if key.contains(':') && !iterate {
        return Err(invalid(
            key,
            "the only modifiers of _include/_revinclude are :iterate and :recurse",
        ));
    }
    if value == "*" {
        return Ok(Include {
            source_type: "*".into(),
            param: None,
            target_type: None,
            iterate,
        });
    }
    let parts: Vec<&str> = value.split(':').collect();
    let (source, param, target) = match parts.as_slice() {
        [s, p] => (*s, *p, None),
        [s, p, t] => (*s, *p, Some(*t)),
        _ => {
            return Err(invalid(
                key,
                format!("'{value}' is not of the form Type:param[:TargetType]"),
            ))
        }
    };
    if !defs::is_resource_type(source) {
        return Err(invalid(key, format!("'{source}' is not a resource type")));
    }
    if !rev && !iterate && !types.is_empty() && !types.iter().any(|t| t == source) {
        return Err(invalid(
            key,
            format!("_include source '{source}' is not a type being searched"),
        ));
    }
    let param = if param == "*" {
        None
    } else {
        let def = defs::search_param(source, param)
            .ok_or_else(|| invalid(key, format!("{source} has no search parameter '{param}'")))?;
        if def.kind != SearchParamType::Reference {
            return Err(invalid(
                key,
                format!("{source}.{param} is not a reference parameter"),
            ));
        }
        Some(param.to_string())
    };
    if let Some(t) = target {
        if !defs::is_resource_type(t) {
            return Err(invalid(key, format!("'{t}' is not a resource type")));
        }
    }
    Ok(Include {
        source_type: source.to_string(),
        param,
        target_type: target.map(str::to_string),
        iterate,
    })
}

fn parse_sort(value: &str, types: &[String]) -> Result<Vec<SortKey>, SearchError> {
    let mut keys = vec![];
    for part in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (descending, code) = match part.strip_prefix('-') {
            Some(c) => (true, c),
            None => (false, part),
        };
        let field = match code {
            "_id" => SortField::Id,
            "_lastUpdated" => SortField::LastUpdated,
            _ => {
                let def = find_def(types, code).ok_or_else(|| unknown(types, code))?;
                if let Some((own, component)) = union_parts(def) {
                    let by = |name: &str| parse_sort(name, types).map(|mut k| k.remove(0).field);
                    keys.push(SortKey {
                        field: SortField::Either(Box::new(by(own)?), Box::new(by(component)?)),
                        descending,
                    });
                    continue;
                }
                let kind = index_kind(def.kind).ok_or_else(|| {
                    SearchError::Unsupported(format!(
                        "cannot sort by {} parameter '{code}'",
                        def.kind.as_str()
                    ))
                })?;
                if def.kind == SearchParamType::Quantity {
                    SortField::Quantity {
                        param: code.to_string(),
                        canonical: canonical_param(code),
                    }
                } else {
                    SortField::Param {
                        param: code.to_string(),
                        kind,
                    }
                }
            }
        };
        keys.push(SortKey { field, descending });
    }
    Ok(keys)
}

/// Parse a whole search on `rtype` (empty for a system-level search).
pub fn parse(
    rtype: &str,
    pairs: &[(String, String)],
    opts: &Options,
) -> Result<SearchPlan, SearchError> {
    let mut query = SearchQuery::new(rtype);
    query.count = opts.default_count;
    let mut plan = SearchPlan {
        query: SearchQuery::new(rtype),
        includes: vec![],
        revincludes: vec![],
        summary: None,
        elements: None,
        total: TotalMode::None,
        applied: vec![],
        ignored: vec![],
    };
    let mut types: Vec<String> = if rtype.is_empty() {
        vec![]
    } else {
        vec![rtype.to_string()]
    };
    if rtype.is_empty() {
        if let Some((_, v)) = pairs.iter().find(|(k, _)| k == "_type") {
            types = values(v).iter().map(|t| unescape(t)).collect();
        }
    }
    for (key, value) in pairs {
        let base = key.split(':').next().unwrap_or(key);
        let result: Result<(), SearchError> = (|| {
            match base {
                "_format" | "_pretty" => return Ok(()),
                "_count" => {
                    let n: usize = value.parse().map_err(|_| {
                        invalid(
                            key,
                            format!("_count must be a non-negative integer, got '{value}'"),
                        )
                    })?;
                    query.count = n.min(opts.max_count);
                }
                "_offset" => {
                    query.offset = value.parse().map_err(|_| {
                        invalid(
                            key,
                            format!("_offset must be a non-negative integer, got '{value}'"),
                        )
                    })?;
                }
                "_page" => {
                    query.page = decode_page(value)
                        .ok_or_else(|| invalid(key, "invalid or expired paging cursor"))?;
                    return Ok(()); // not part of the self link's criteria
                }
                "_total" => {
                    plan.total = match value.as_str() {
                        "none" => TotalMode::None,
                        "estimate" => TotalMode::Estimate,
                        "accurate" => TotalMode::Accurate,
                        _ => return Err(invalid(key, "_total must be none, estimate or accurate")),
                    };
                }
                "_summary" => {
                    if !matches!(value.as_str(), "true" | "false" | "text" | "data" | "count") {
                        return Err(invalid(
                            key,
                            "_summary must be true, false, text, data or count",
                        ));
                    }
                    if value == "count" {
                        plan.total = TotalMode::Accurate;
                    }
                    plan.summary = Some(value.clone());
                }
                "_elements" => {
                    plan.elements = Some(
                        value
                            .split(',')
                            .map(|s| s.trim().to_string())
                            .filter(|s| !s.is_empty())
                            .collect(),
                    );
                }
                "_sort" => query.sort = parse_sort(value, &types)?,
                "_include" => plan
                    .includes
                    .push(parse_include(key, value, false, &types)?),
                "_revinclude" => plan
                    .revincludes
                    .push(parse_include(key, value, true, &types)?),
                // R4 search.html#contained
                "_contained" => {
                    query.contained = match value.as_str() {
                        "false" => ContainedMode::Exclude,
                        "true" => ContainedMode::Only,
                        "both" => ContainedMode::Both,
                        _ => return Err(invalid(key, "_contained must be true, false or both")),
                    }
                }
                "_containedType" => {
                    query.contained_type = match value.as_str() {
                        "container" => ContainedType::Container,
                        "contained" => ContainedType::Contained,
                        _ => {
                            return Err(invalid(
                                key,
                                "_containedType must be container or contained",
                            ))
                        }
                    }
                }
                _ => query.clauses.push(param_clause(&types, key, value)?),
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                if !matches!(base, "_format" | "_pretty" | "_page") {
                    plan.applied.push((key.clone(), value.clone()));
                }
            }
            Err(SearchError::Unsupported(m)) if !opts.strict => plan.ignored.push((key.clone(), m)),
            Err(e) => return Err(e),
        }
    }
    if plan.summary.as_deref() == Some("count") {
        query.count = 0;
    }
    // Full-text matches come best first unless `_sort` says otherwise.
    if query.sort.is_empty() {
        if let Some(Clause::Text { field, query: text }) = query
            .clauses
            .iter()
            .find(|c| matches!(c, Clause::Text { .. }))
        {
            query.sort = vec![SortKey {
                field: SortField::Relevance {
                    field: *field,
                    query: text.clone(),
                },
                descending: false,
            }];
        }
    }
    query.with_total = plan.total != TotalMode::None;
    plan.query = query;
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &str) -> Vec<(String, String)> {
        q.split('&')
            .filter(|s| !s.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    fn strict(rtype: &str, q: &str) -> Result<SearchPlan, SearchError> {
        parse(
            rtype,
            &pairs(q),
            &Options {
                default_count: 20,
                max_count: 100,
                strict: true,
            },
        )
    }

    #[test]
    fn token_string_date_and_reference() {
        let p = strict("Observation", "code=http://loinc.org|8867-4,1234&subject=Patient/1&date=ge2020&value-quantity=lt100||mg").unwrap();
        let c = &p.query.clauses;
        assert!(matches!(&c[0], Clause::Token { param, any } if param == "code" && any.len() == 2));
        assert!(
            matches!(&c[1], Clause::Reference { any, .. } if any[0].target_type.as_deref() == Some("Patient") && any[0].target_id == "1")
        );
        assert!(matches!(&c[2], Clause::Date { any, .. } if any[0].prefix == Prefix::Ge));
        assert!(
            matches!(&c[3], Clause::Quantity { any, .. } if any[0].code.as_deref() == Some("mg") && any[0].system.is_none())
        );
        let p = strict("Patient", "name=Zoë&family:exact=Smith").unwrap();
        assert_eq!(
            p.query.clauses[0],
            Clause::String {
                param: "name".into(),
                any: vec![StringMatch {
                    value: "zoe".into(),
                    mode: StringMode::Prefix
                }]
            }
        );
        assert!(
            matches!(&p.query.clauses[1], Clause::String { any, .. } if any[0].mode == StringMode::Exact && any[0].value == "Smith")
        );
    }

    #[test]
    fn chains_and_has() {
        let p = strict("Observation", "subject:Patient.organization.name=Acme").unwrap();
        match &p.query.clauses[0] {
            Clause::Chain {
                param,
                target_types,
                inner,
            } => {
                assert_eq!(param, "subject");
                assert_eq!(target_types, &vec!["Patient".to_string()]);
                assert!(
                    matches!(&inner[0], Clause::Chain { param, .. } if param == "organization")
                );
            }
            other => panic!("{other:?}"),
        }
        let p = strict("Patient", "_has:Observation:patient:code=1234-5").unwrap();
        assert!(
            matches!(&p.query.clauses[0], Clause::Has { source_type, param, .. } if source_type == "Observation" && param == "patient")
        );
        assert!(strict("Patient", "_has:Observation:code:code=x").is_err());
    }

    /// `combo-*` reads the two parameters it unites; a negation must hold for both.
    #[test]
    fn combo_parameters_are_unions() {
        let one = |q: &str| strict("Observation", q).unwrap().query.clauses.remove(0);
        let params = |cs: &[Clause]| -> Vec<String> {
            cs.iter()
                .map(|c| match c {
                    Clause::Token { param, .. }
                    | Clause::Quantity { param, .. }
                    | Clause::Missing { param, .. } => param.clone(),
                    Clause::Not(inner) => match &**inner {
                        Clause::Token { param, .. } => format!("not {param}"),
                        other => panic!("{other:?}"),
                    },
                    other => panic!("{other:?}"),
                })
                .collect()
        };
        match one("combo-code=http://loinc.org|8480-6") {
            Clause::Any(cs) => assert_eq!(params(&cs), ["code", "component-code"]),
            other => panic!("{other:?}"),
        }
        match one("combo-code:not=8480-6") {
            Clause::All(cs) => assert_eq!(params(&cs), ["not code", "not component-code"]),
            other => panic!("{other:?}"),
        }
        match one("combo-value-quantity:missing=true") {
            Clause::All(cs) => {
                assert_eq!(params(&cs), ["value-quantity", "component-value-quantity"])
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            one("combo-value-quantity:missing=false"),
            Clause::Any(_)
        ));
        match one("combo-code-value-quantity=8480-6$gt100") {
            Clause::Any(cs) => assert_eq!(
                params(&cs),
                [
                    "code-value-quantity$8480-6|*",
                    "component-code-value-quantity$8480-6|*"
                ]
            ),
            other => panic!("{other:?}"),
        }
        let p = strict("Observation", "_sort=-combo-code").unwrap();
        assert!(p.query.sort[0].descending);
        assert!(matches!(
            &p.query.sort[0].field,
            SortField::Either(a, b) if matches!(&**a, SortField::Param { param, .. } if param == "code")
                && matches!(&**b, SortField::Param { param, .. } if param == "component-code")
        ));
        // a chain into Observation reads the parts too
        let p = strict("DiagnosticReport", "result.combo-code=8480-6").unwrap();
        assert!(matches!(
            &p.query.clauses[0],
            Clause::Chain { inner, .. } if matches!(inner[0], Clause::Any(_))
        ));
    }

    #[test]
    fn modifiers() {
        let p = strict("Patient", "gender:not=male&birthdate:missing=true&identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|123").unwrap();
        assert!(matches!(&p.query.clauses[0], Clause::Not(_)));
        assert!(matches!(
            &p.query.clauses[1],
            Clause::Missing {
                missing: true,
                kind: IndexKind::Date,
                ..
            }
        ));
        assert!(
            matches!(&p.query.clauses[2], Clause::Token { param, .. } if param == "identifier:of-type")
        );
        let p = strict(
            "Patient",
            "gender:in=http://hl7.org/fhir/ValueSet/administrative-gender",
        )
        .unwrap();
        assert!(matches!(&p.query.clauses[0], Clause::Token { any, .. } if any.len() == 8));
        assert!(strict("Patient", "gender:in=http://example.org/unknown").is_err());
    }

    #[test]
    fn strict_and_lenient() {
        assert!(matches!(
            strict("Patient", "nonsense=1"),
            Err(SearchError::Unsupported(_))
        ));
        let p = parse(
            "Patient",
            &pairs("nonsense=1&gender=male"),
            &Options {
                default_count: 20,
                max_count: 100,
                strict: false,
            },
        )
        .unwrap();
        assert_eq!(p.ignored.len(), 1);
        assert_eq!(p.applied, vec![("gender".to_string(), "male".to_string())]);
        // malformed values are errors either way
        assert!(parse(
            "Patient",
            &pairs("birthdate=garbage"),
            &Options {
                default_count: 20,
                max_count: 100,
                strict: false
            }
        )
        .is_err());
    }

    #[test]
    fn sort_include_paging() {
        let p = strict("Encounter", "_sort=-date,_id&_include=Encounter:patient&_revinclude:iterate=Observation:encounter&_count=5").unwrap();
        assert_eq!(p.query.sort.len(), 2);
        assert!(p.query.sort[0].descending);
        assert_eq!(p.includes[0].param.as_deref(), Some("patient"));
        assert!(p.revincludes[0].iterate);
        assert_eq!(p.query.count, 5);
        let c = Page::After(Cursor {
            values: vec![
                SortValue::Int(5),
                SortValue::Null,
                SortValue::Text("x".into()),
            ],
            rtype: "Encounter".into(),
            id: "a".into(),
        });
        assert_eq!(decode_page(&encode_page(&c)), Some(c));
        assert!(strict("Encounter", "_page=garbage").is_err());
    }

    #[test]
    fn number_precision() {
        let m = number_match("n", "100").unwrap();
        assert!(m.low <= 99.5 && m.high < 100.5 && m.high > 100.4);
        let m = number_match("n", "1.50").unwrap();
        assert!((m.low - 1.495).abs() < 1e-9);
        assert!(number_match("n", "abc").is_err());
    }

    #[test]
    fn references() {
        let p = strict(
            "Observation",
            "subject=http://example.org/fhir/Patient/7/_history/2",
        )
        .unwrap();
        assert!(
            matches!(&p.query.clauses[0], Clause::Reference { any, .. } if any[0].version.as_deref() == Some("2") && any[0].target_id == "7")
        );
        let p = strict("Observation", "subject:identifier=urn:mrn|1").unwrap();
        assert!(
            matches!(&p.query.clauses[0], Clause::Token { param, .. } if param == "subject:identifier")
        );
    }
}
