//! Searching: type, system and compartment level, with `_include`/`_revinclude`
//! (`:iterate`, `*`) resolved through the store's reference index.

use crate::service::ensure_type;
use crate::{FhirError, FhirService, Result};
use salus_fhir::defs;
use salus_search::{Include, Options, SearchPlan};
use salus_store::{Clause, RefMatch, SearchPage, VersionRecord};
use std::collections::HashSet;

/// Most resources an `_include`/`_revinclude` pass adds to one page.
const MAX_INCLUDED: usize = 1_000;

/// A page of results with the resources included alongside.
#[derive(Debug)]
pub struct SearchResult {
    pub plan: SearchPlan,
    pub page: SearchPage,
    pub included: Vec<VersionRecord>,
}

impl FhirService {
    fn options(&self, strict: bool) -> Options {
        Options {
            default_count: self.limits().default_count,
            max_count: self.limits().max_count,
            strict,
        }
    }

    /// `GET [type]?…` (`rtype` empty: system-level search, `GET [base]?_type=…`).
    /// `strict`: `Prefer: handling=strict`.
    pub async fn search(
        &self,
        rtype: &str,
        pairs: &[(String, String)],
        strict: bool,
    ) -> Result<SearchResult> {
        if !rtype.is_empty() {
            ensure_type(rtype)?;
        }
        let pairs = self.expand_subsumption(rtype, pairs).await?;
        let plan = salus_search::parse(rtype, &pairs, &self.options(strict))?;
        self.run_plan(plan).await
    }

    /// `GET [compartment]/[id]/[type]?…` (R4 compartmentdefinition.html): resources of
    /// `rtype` in the Patient compartment of `Patient/id`.
    pub async fn search_compartment(
        &self,
        compartment: &str,
        id: &str,
        rtype: &str,
        pairs: &[(String, String)],
        strict: bool,
    ) -> Result<SearchResult> {
        ensure_type(rtype)?;
        if compartment != "Patient" {
            return Err(FhirError::NotSupported(format!(
                "compartment search is supported for the Patient compartment, not {compartment}"
            )));
        }
        let pairs = self.expand_subsumption(rtype, pairs).await?;
        let mut plan = salus_search::parse(rtype, &pairs, &self.options(strict))?;
        plan.query.clauses.push(compartment_clause(rtype, id)?);
        self.run_plan(plan).await
    }

    async fn run_plan(&self, plan: SearchPlan) -> Result<SearchResult> {
        let page = self.store().search(&plan.query).await?;
        let included = self.includes(&plan, &page.entries).await?;
        Ok(SearchResult {
            plan,
            page,
            included,
        })
    }

    /// Resolve `_include` and `_revinclude` for a page, iterating where asked; cycles end
    /// because a resource is included once.
    async fn includes(
        &self,
        plan: &SearchPlan,
        matched: &[VersionRecord],
    ) -> Result<Vec<VersionRecord>> {
        if plan.includes.is_empty() && plan.revincludes.is_empty() {
            return Ok(vec![]);
        }
        let mut seen: HashSet<(String, String)> = matched
            .iter()
            .map(|r| (r.rtype.clone(), r.id.clone()))
            .collect();
        let mut out: Vec<VersionRecord> = vec![];
        let mut frontier: Vec<(String, String)> = seen.iter().cloned().collect();
        frontier.sort();
        let mut first = true;
        while !frontier.is_empty() && out.len() < MAX_INCLUDED {
            let mut found: Vec<(String, String)> = vec![];
            for inc in plan.includes.iter().filter(|i| first || i.iterate) {
                let sources: Vec<(String, String)> = frontier
                    .iter()
                    .filter(|(t, _)| inc.source_type == "*" || &inc.source_type == t)
                    .cloned()
                    .collect();
                if sources.is_empty() {
                    continue;
                }
                for (t, id) in self
                    .store()
                    .references_from(&sources, inc.param.as_deref())
                    .await?
                {
                    if inc.target_type.as_ref().is_none_or(|tt| tt == &t) {
                        found.push((t, id));
                    }
                }
            }
            for rev in plan.revincludes.iter().filter(|i| first || i.iterate) {
                let targets = rev_targets(rev, &frontier);
                if targets.is_empty() {
                    continue;
                }
                let source = (rev.source_type != "*").then_some(rev.source_type.as_str());
                found.extend(
                    self.store()
                        .references_to(&targets, source, rev.param.as_deref())
                        .await?,
                );
            }
            first = false;
            let new: Vec<(String, String)> = found
                .into_iter()
                .filter(|k| seen.insert(k.clone()))
                .take(MAX_INCLUDED - out.len())
                .collect();
            let records = self.store().read_many(&new).await?;
            frontier = records
                .iter()
                .map(|r| (r.rtype.clone(), r.id.clone()))
                .collect();
            out.extend(records);
            if !plan
                .includes
                .iter()
                .chain(&plan.revincludes)
                .any(|i| i.iterate)
            {
                break;
            }
        }
        Ok(out)
    }
}

fn rev_targets(rev: &Include, frontier: &[(String, String)]) -> Vec<(String, String)> {
    frontier
        .iter()
        .filter(|(t, _)| rev.target_type.as_ref().is_none_or(|tt| tt == t))
        .cloned()
        .collect()
}

/// Membership of `rtype` resources in `Patient/id`'s compartment.
pub(crate) fn compartment_clause(rtype: &str, id: &str) -> Result<Clause> {
    let params = defs::patient_compartment_params(rtype)
        .ok_or_else(|| FhirError::invalid(format!("{rtype} is not in the Patient compartment")))?;
    let mut any = vec![];
    for p in params {
        if p == "{def}" {
            any.push(Clause::Id(vec![id.to_string()]));
            continue;
        }
        any.push(Clause::Reference {
            param: p.clone(),
            any: vec![RefMatch {
                target_type: Some("Patient".into()),
                target_id: id.to_string(),
                version: None,
            }],
        });
    }
    if rtype == "Patient" {
        any.push(Clause::Id(vec![id.to_string()]));
    }
    Ok(Clause::Any(any))
}
