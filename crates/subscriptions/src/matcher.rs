//! Does a resource version satisfy search criteria? Criteria are parsed by the search
//! engine (`salus_search::parse`, strictly) into the same plan the backends run, and the
//! plan is evaluated here on the version's own index rows (`salus_search::extract`), with
//! the comparison rules the SQL backends use (R4 search.html: token systems, string
//! prefixes, date/number prefixes against implicit ranges, `:missing`, `:not`). So a
//! subscription matches exactly the version that changed — also an older one, or the
//! previous version a topic's `queryCriteria.previous` looks at. Clauses that need other
//! resources (chains, `_has`) or the full-text index answer `None`; the engine then asks
//! the store (a search with `_id` on the current version).

use salus_store::{
    Clause, ContainedMode, IndexRow, Prefix, RangeMatch, SearchQuery, StringMode, UriMode,
};

/// Criteria ready to evaluate.
#[derive(Debug, Clone)]
pub enum Compiled {
    /// A plan evaluated on index rows (or, for its chains, by the store).
    Plan(SearchQuery),
    /// Criteria the service must expand first (`:below`/`:above` on codes): evaluated
    /// by a search through the service.
    Service(Vec<(String, String)>),
}

/// Result parameters make no sense in a filter.
const RESULT_PARAMS: &[&str] = &[
    "_count",
    "_offset",
    "_sort",
    "_include",
    "_revinclude",
    "_summary",
    "_elements",
    "_total",
    "_contained",
    "_containedType",
    "_page",
    "_format",
    "_pretty",
];

/// Parse criteria (`code=http://loinc.org|8867-4&patient=Patient/1`) for `rtype`.
pub fn compile(rtype: &str, query: &str) -> Result<Compiled, String> {
    let pairs = salus_service::parse_pairs(query.trim_start_matches('?'));
    if pairs.is_empty() {
        return Err(format!("'{query}' holds no search parameter"));
    }
    for (k, _) in &pairs {
        let base = k.split(':').next().unwrap_or(k);
        if RESULT_PARAMS.contains(&base) {
            return Err(format!("'{k}' is a result parameter, not a criterion"));
        }
    }
    let options = salus_search::Options {
        default_count: 1,
        max_count: 1,
        strict: true,
    };
    match salus_search::parse(rtype, &pairs, &options) {
        Ok(plan) if plan.query.clauses.is_empty() => {
            Err(format!("'{query}' holds no search parameter"))
        }
        Ok(plan) => Ok(Compiled::Plan(plan.query)),
        Err(_)
            if pairs
                .iter()
                .any(|(k, _)| k.ends_with(":below") || k.ends_with(":above")) =>
        {
            Ok(Compiled::Service(pairs))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Evaluate a plan on one version: `Some(true|false)`, or `None` when a clause needs
/// the store.
pub fn matches(
    q: &SearchQuery,
    rtype: &str,
    id: &str,
    last_updated: i64,
    rows: &[IndexRow],
) -> Option<bool> {
    if q.contained != ContainedMode::Exclude || (!q.rtype.is_empty() && q.rtype != rtype) {
        return None;
    }
    let r = Row {
        rtype,
        id,
        last_updated,
        rows,
    };
    all(q.clauses.iter().map(|c| r.clause(c)))
}

struct Row<'a> {
    rtype: &'a str,
    id: &'a str,
    last_updated: i64,
    rows: &'a [IndexRow],
}

/// Three-valued AND: false wins, then unknown.
fn all(it: impl Iterator<Item = Option<bool>>) -> Option<bool> {
    let mut unknown = false;
    for v in it {
        match v {
            Some(false) => return Some(false),
            None => unknown = true,
            Some(true) => {}
        }
    }
    if unknown {
        None
    } else {
        Some(true)
    }
}

/// Three-valued OR: true wins, then unknown.
fn any(it: impl Iterator<Item = Option<bool>>) -> Option<bool> {
    let mut unknown = false;
    for v in it {
        match v {
            Some(true) => return Some(true),
            None => unknown = true,
            Some(false) => {}
        }
    }
    if unknown {
        None
    } else {
        Some(false)
    }
}

/// A clause's parameter name, where `name|*` stands for every name with that prefix.
fn param_is(clause_param: &str, row_param: &str) -> bool {
    match clause_param.strip_suffix('*').filter(|p| p.ends_with('|')) {
        Some(prefix) => row_param.starts_with(prefix),
        None => clause_param == row_param,
    }
}

/// The resource's range `[lo, hi]` against the criterion (R4 search.html#prefix), as the
/// SQL backends compare them.
fn in_range<T: PartialOrd + Copy>(lo: T, hi: T, m: &RangeMatch<T>) -> bool {
    let (pl, ph) = (m.low, m.high);
    let eq = lo >= pl && hi <= ph;
    match m.prefix {
        Prefix::Eq => eq,
        Prefix::Ne => !eq,
        Prefix::Gt => hi > ph,
        Prefix::Lt => lo < pl,
        Prefix::Ge => hi > ph || eq,
        Prefix::Le => lo < pl || eq,
        Prefix::Sa => lo > ph,
        Prefix::Eb => hi < pl,
        Prefix::Ap => lo <= ph && hi >= pl,
    }
}

/// How an optional stored text compares: absent values are stored as `''`.
fn stored(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("")
}

impl Row<'_> {
    fn clause(&self, c: &Clause) -> Option<bool> {
        let rows = self.rows;
        Some(match c {
            Clause::Text { .. } | Clause::Chain { .. } | Clause::Has { .. } => return None,
            Clause::Id(ids) => ids.iter().any(|i| i == self.id),
            Clause::Types(ts) => ts.iter().any(|t| t == self.rtype),
            Clause::LastUpdated { low, high } => {
                low.is_none_or(|l| self.last_updated >= l)
                    && high.is_none_or(|h| self.last_updated <= h)
            }
            Clause::LastUpdatedRange { any } => any
                .iter()
                .any(|m| in_range(self.last_updated, self.last_updated + 999, m)),
            Clause::Token { param, any } => rows.iter().any(|r| match r {
                IndexRow::Token {
                    param: p,
                    system,
                    code,
                } if param_is(param, p) => any.iter().any(|m| {
                    m.code.as_ref().is_none_or(|c| c == code)
                        && m.system.as_ref().is_none_or(|s| s == stored(system))
                }),
                _ => false,
            }),
            Clause::String { param, any } => rows.iter().any(|r| match r {
                IndexRow::String {
                    param: p,
                    normalized,
                    exact,
                } if param_is(param, p) => any.iter().any(|m| match m.mode {
                    StringMode::Prefix => normalized.starts_with(&m.value),
                    StringMode::Contains => normalized.contains(&m.value),
                    StringMode::Exact => exact == &m.value,
                }),
                _ => false,
            }),
            Clause::Reference { param, any } => rows.iter().any(|r| match r {
                IndexRow::Reference {
                    param: p,
                    target_type,
                    target_id,
                    version,
                } if param_is(param, p) => any.iter().any(|m| {
                    &m.target_id == target_id
                        && m.target_type
                            .as_ref()
                            .is_none_or(|t| t == stored(target_type))
                        && m.version.as_ref().is_none_or(|v| v == stored(version))
                }),
                _ => false,
            }),
            Clause::Date { param, any } => rows.iter().any(|r| match r {
                IndexRow::Date {
                    param: p,
                    low,
                    high,
                } if param_is(param, p) => any.iter().any(|m| in_range(*low, *high, m)),
                _ => false,
            }),
            Clause::Number { param, any } => rows.iter().any(|r| match r {
                IndexRow::Number {
                    param: p, value, ..
                } if param_is(param, p) => any.iter().any(|m| in_range(*value, *value, m)),
                _ => false,
            }),
            Clause::Quantity { param, any } => rows.iter().any(|r| match r {
                IndexRow::Number {
                    param: p,
                    value,
                    system,
                    code,
                } if param_is(param, p) => any.iter().any(|m| {
                    in_range(*value, *value, &m.range)
                        && m.system.as_ref().is_none_or(|s| s == stored(system))
                        && m.code.as_ref().is_none_or(|c| c == stored(code))
                }),
                _ => false,
            }),
            Clause::Uri { param, any } => rows.iter().any(|r| match r {
                IndexRow::Uri { param: p, uri } if param_is(param, p) => {
                    any.iter().any(|m| match m.mode {
                        UriMode::Exact => uri == &m.value,
                        UriMode::Below => uri.starts_with(&m.value),
                        UriMode::Above => m.value.starts_with(uri.as_str()),
                    })
                }
                _ => false,
            }),
            Clause::Missing {
                param,
                kind,
                missing,
            } => {
                let present = rows.iter().any(|r| {
                    let (p, k) = row_param(r);
                    p == param && k == *kind
                });
                present != *missing
            }
            Clause::Not(inner) => return self.clause(inner).map(|b| !b),
            Clause::Any(cs) => return any(cs.iter().map(|c| self.clause(c))),
            Clause::All(cs) => return all(cs.iter().map(|c| self.clause(c))),
        })
    }
}

fn row_param(r: &IndexRow) -> (&str, salus_store::IndexKind) {
    use salus_store::IndexKind as K;
    match r {
        IndexRow::Token { param, .. } => (param, K::Token),
        IndexRow::String { param, .. } => (param, K::String),
        IndexRow::Reference { param, .. } => (param, K::Reference),
        IndexRow::Date { param, .. } => (param, K::Date),
        IndexRow::Number { param, .. } => (param, K::Number),
        IndexRow::Uri { param, .. } => (param, K::Uri),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn check(rtype: &str, query: &str, resource: &Value) -> Option<bool> {
        let Compiled::Plan(q) = compile(rtype, query).unwrap() else {
            panic!("{query} needs the service")
        };
        let rows = salus_search::extract::extract(resource);
        let lu = salus_fhir::instant::parse_range("2026-04-01T10:00:00Z")
            .unwrap()
            .0;
        matches(&q, rtype, resource["id"].as_str().unwrap(), lu, &rows)
    }

    fn obs() -> Value {
        json!({"resourceType": "Observation", "id": "o1", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2026-04-01T09:30:00Z",
            "valueQuantity": {"value": 135, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}})
    }

    #[test]
    fn tokens_references_dates_and_quantities() {
        let o = obs();
        assert_eq!(
            check("Observation", "code=http://loinc.org|8867-4", &o),
            Some(true)
        );
        assert_eq!(check("Observation", "code=8867-4", &o), Some(true));
        assert_eq!(
            check("Observation", "code=http://snomed.info/sct|8867-4", &o),
            Some(false)
        );
        assert_eq!(
            check("Observation", "code=|8867-4", &o),
            Some(false),
            "no-system form"
        );
        assert_eq!(
            check("Observation", "code=http://loinc.org|", &o),
            Some(true)
        );
        assert_eq!(check("Observation", "patient=Patient/p1", &o), Some(true));
        assert_eq!(check("Observation", "patient=p1", &o), Some(true));
        assert_eq!(check("Observation", "subject=Patient/p2", &o), Some(false));
        assert_eq!(check("Observation", "date=2026-04-01", &o), Some(true));
        assert_eq!(check("Observation", "date=gt2026-04-02", &o), Some(false));
        assert_eq!(
            check("Observation", "date=ge2026-04-01T09:00:00Z", &o),
            Some(true)
        );
        assert_eq!(check("Observation", "value-quantity=gt120", &o), Some(true));
        assert_eq!(
            check("Observation", "value-quantity=lt120", &o),
            Some(false)
        );
        assert_eq!(check("Observation", "status:not=final", &o), Some(false));
        assert_eq!(check("Observation", "status=final,amended", &o), Some(true));
        assert_eq!(
            check("Observation", "code=8867-4&status=preliminary", &o),
            Some(false),
            "criteria are ANDed"
        );
        assert_eq!(check("Observation", "_id=o1", &o), Some(true));
        assert_eq!(
            check("Observation", "_lastUpdated=ge2026-04-01", &o),
            Some(true)
        );
        assert_eq!(
            check("Observation", "_lastUpdated=lt2026-04-01", &o),
            Some(false)
        );
        assert_eq!(
            check("Observation", "encounter:missing=true", &o),
            Some(true)
        );
        assert_eq!(
            check("Observation", "subject:missing=true", &o),
            Some(false)
        );
    }

    #[test]
    fn strings_and_uris() {
        let p = json!({"resourceType": "Patient", "id": "p", "name": [{"family": "Müller", "given": ["Anna"]}]});
        assert_eq!(
            check("Patient", "family=mul", &p),
            Some(true),
            "prefix, accent-free"
        );
        assert_eq!(check("Patient", "family:exact=Müller", &p), Some(true));
        assert_eq!(check("Patient", "family:exact=muller", &p), Some(false));
        assert_eq!(check("Patient", "name:contains=ll", &p), Some(true));
        let vs = json!({"resourceType": "ValueSet", "id": "v", "status": "active", "url": "http://example.org/fhir/ValueSet/a"});
        assert_eq!(
            check("ValueSet", "url=http://example.org/fhir/ValueSet/a", &vs),
            Some(true)
        );
        assert_eq!(
            check("ValueSet", "url:below=http://example.org/fhir", &vs),
            Some(true)
        );
        assert_eq!(
            check("ValueSet", "url:below=http://example.org/other", &vs),
            Some(false)
        );
    }

    #[test]
    fn chains_need_the_store_and_bad_criteria_are_refused() {
        assert_eq!(check("Observation", "subject:Patient.name=x", &obs()), None);
        assert!(compile("Observation", "nonsense=1").is_err());
        assert!(compile("Observation", "_count=5")
            .unwrap_err()
            .contains("result parameter"));
        assert!(compile("Observation", "").is_err());
        assert!(matches!(
            compile("Observation", "code:below=http://snomed.info/sct|1").unwrap(),
            Compiled::Service(_) | Compiled::Plan(_)
        ));
    }

    #[test]
    fn the_plan_agrees_with_the_sqlite_backend() {
        // The same criteria over the same resource, in memory and in SQLite.
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = std::sync::Arc::new(
                salus_store::sqlite::SqliteStore::open(dir.path().join("db"), Default::default())
                    .unwrap(),
            );
            let svc = salus_service::FhirService::new(store, Default::default());
            let o = obs();
            svc.update("Observation", "o1", o.clone(), None)
                .await
                .unwrap();
            for q in [
                "code=8867-4",
                "code=http://snomed.info/sct|8867-4",
                "value-quantity=gt120",
                "value-quantity=le135",
                "date=eb2026-04-02",
                "date=sa2026-04-01",
                "status:not=final",
                "patient=Patient/p1",
                "subject:missing=false",
                "combo-code-value-quantity=http://loinc.org|8867-4$gt100",
            ] {
                let pairs = salus_service::parse_pairs(q);
                let via_store = !svc
                    .search("Observation", &pairs, true)
                    .await
                    .unwrap()
                    .page
                    .entries
                    .is_empty();
                let stored: Value = serde_json::from_str(
                    svc.read("Observation", "o1")
                        .await
                        .unwrap()
                        .body
                        .as_deref()
                        .unwrap(),
                )
                .unwrap();
                let Compiled::Plan(plan) = compile("Observation", q).unwrap() else {
                    panic!()
                };
                let rows = salus_search::extract::extract(&stored);
                let rec = svc.read("Observation", "o1").await.unwrap();
                let here = matches(&plan, "Observation", "o1", rec.last_updated, &rows);
                assert_eq!(here, Some(via_store), "{q}");
            }
        });
    }
}
