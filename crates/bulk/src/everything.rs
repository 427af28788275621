//! `Patient/[id]/$everything` (R4 patient-operation-everything.html): the patient, every
//! resource in its compartment (R4 CompartmentDefinition Patient), and the resources
//! those reference (one level: practitioners, organizations, medications, locations…),
//! paged with a stable cursor.
//!
//! Order: the compartment types, `Patient` first, then by name; within a type the
//! search's keyset order. A page's referenced resources come with it (`include`
//! entries, like `_include`), so the cursor only has to say where the compartment
//! listing stands: `<type index>.<search page token>`.

use crate::export::in_patient_compartment;
use salus_fhir::defs;
use salus_search::parse::encode_page;
use salus_service::{time, FhirError, FhirService};
use salus_store::{Page, VersionRecord};
use std::collections::HashSet;

/// A checked `$everything` request.
#[derive(Debug, Clone, Default)]
pub struct EverythingRequest {
    /// `_since` (an instant as given).
    pub since: Option<String>,
    /// `_type`: empty = every type.
    pub types: Vec<String>,
    /// `_count` (page size).
    pub count: Option<usize>,
    /// The cursor of a `next` link.
    pub cursor: Option<String>,
}

/// One page of `$everything`.
#[derive(Debug)]
pub struct EverythingPage {
    /// Compartment resources (`search.mode = match`).
    pub matched: Vec<VersionRecord>,
    /// Resources they reference (`search.mode = include`).
    pub included: Vec<VersionRecord>,
    /// Cursor of the next page.
    pub next: Option<String>,
}

impl EverythingRequest {
    /// From query/body pairs (`_since`, `_type`, `_count`, `_cursor`); unknown types
    /// and malformed values are errors.
    pub fn parse(pairs: &[(String, String)]) -> Result<Self, FhirError> {
        let mut r = EverythingRequest::default();
        for (k, v) in pairs {
            match k.as_str() {
                "_since" => {
                    time::parse_range(v).ok_or_else(|| {
                        FhirError::invalid(format!("_since '{v}' is not a FHIR instant"))
                    })?;
                    r.since = Some(v.clone());
                }
                "_type" => {
                    for t in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                        if !defs::is_resource_type(t) {
                            return Err(FhirError::invalid(format!(
                                "_type: '{t}' is not an R4 resource type"
                            )));
                        }
                        r.types.push(t.to_string());
                    }
                }
                "_count" => {
                    r.count = Some(v.parse().map_err(|_| {
                        FhirError::invalid(format!("_count '{v}' is not a positive integer"))
                    })?)
                }
                "_cursor" => r.cursor = Some(v.clone()),
                _ => {}
            }
        }
        Ok(r)
    }
}

/// The compartment types in listing order.
fn listing(types: &[String]) -> Vec<String> {
    let mut all: Vec<String> = defs::resource_types()
        .iter()
        .filter(|t| in_patient_compartment(t))
        .filter(|t| types.is_empty() || types.iter().any(|x| x == *t))
        .map(|t| t.to_string())
        .collect();
    all.sort_by_key(|t| (t != "Patient", t.clone()));
    all
}

/// Run one page of `$everything` for `Patient/id` (404 when the patient is unknown).
pub async fn everything(
    service: &FhirService,
    id: &str,
    req: &EverythingRequest,
) -> Result<EverythingPage, FhirError> {
    service.read("Patient", id).await?;
    let limits = service.limits();
    let count = req
        .count
        .unwrap_or(limits.default_count)
        .clamp(1, limits.max_count);
    let types = listing(&req.types);
    let (mut ti, mut token) = match &req.cursor {
        None => (0usize, None),
        Some(c) => {
            let (i, t) = c
                .split_once('.')
                .and_then(|(i, t)| Some((i.parse::<usize>().ok()?, t)))
                .ok_or_else(|| FhirError::invalid(format!("_cursor '{c}' is not valid")))?;
            (i, (!t.is_empty()).then(|| t.to_string()))
        }
    };
    let mut matched: Vec<VersionRecord> = vec![];
    let mut next = None;
    while ti < types.len() {
        let rtype = &types[ti];
        // Types the caller may not search (the audit trail for a patient) are left out.
        if !service.permits(salus_service::salus_access::Interaction::Search, rtype) {
            ti += 1;
            token = None;
            continue;
        }
        let mut pairs = vec![("_count".to_string(), (count - matched.len()).to_string())];
        if let Some(s) = &req.since {
            pairs.push(("_lastUpdated".into(), format!("ge{s}")));
        }
        if let Some(t) = &token {
            pairs.push(("_page".into(), t.clone()));
        }
        let result = service
            .search_compartment("Patient", id, rtype, &pairs, false)
            .await?;
        matched.extend(result.page.entries);
        let more = match (&result.page.last_cursor, result.page.more) {
            (Some(c), true) => Some(encode_page(&Page::After(c.clone()))),
            _ => None,
        };
        if let Some(m) = more {
            if matched.len() >= count {
                next = Some(format!("{ti}.{m}"));
                break;
            }
            token = Some(m);
            continue;
        }
        ti += 1;
        token = None;
        if matched.len() >= count {
            if ti < types.len() {
                next = Some(format!("{ti}."));
            }
            break;
        }
    }
    // One level of referenced resources (outside the compartment listing).
    let seen: HashSet<(String, String)> = matched
        .iter()
        .map(|r| (r.rtype.clone(), r.id.clone()))
        .collect();
    let keys: Vec<(String, String)> = seen.iter().cloned().collect();
    let mut targets: Vec<(String, String)> = service
        .store()
        .references_from(&keys, None)
        .await?
        .into_iter()
        .filter(|k| !seen.contains(k))
        .filter(|(t, _)| req.types.is_empty() || req.types.contains(t))
        .collect();
    targets.sort();
    targets.dedup();
    let since = req
        .since
        .as_deref()
        .and_then(time::parse_range)
        .map(|(low, _)| low);
    let included = service
        .store()
        .read_many(&targets)
        .await?
        .into_iter()
        .filter(|r| since.is_none_or(|s| r.last_updated >= s))
        .collect();
    Ok(EverythingPage {
        matched,
        included,
        next,
    })
}
