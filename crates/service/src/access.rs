//! Authorization at the storage boundary: a [`Store`] wrapper that asks the one access
//! decision ([`Policy::decide`]) before every read, search, history and write a
//! request's service makes, so every path — search, `_include`/`_revinclude`, chains,
//! `_has`, history, batch and transaction entries, operations, bulk export, views, and
//! anything added later that reads through the service — obeys the caller's grant.
//!
//! A restricted grant (a patient's compartment, scope or role criteria) is turned into
//! search clauses: searches get them ANDed in before they reach the backend; reads,
//! includes and history entries are kept only when the resource matches them; a write is
//! allowed only if the version it replaces matched and the new version matches (checked
//! inside the write's transaction, which a refusal rolls back).

use crate::search::compartment_clause;
use salus_access::{Capability, Grant, Interaction, Policy, Principal, TypeClass, REFERENCE_TYPES};
use salus_fhir::defs;
use salus_store::{
    Clause, ContainedIndex, ContainedMode, FullText, Head, HistoryPage, HistoryQuery, HistoryScope,
    IndexRow, NewVersion, Result, ScanPage, SearchPage, SearchQuery, SnapshotPage, SnapshotQuery,
    Store, StoreError, StoreTx, VersionRecord,
};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// A caller and the policy that decides for them.
pub(crate) struct Guard {
    pub(crate) policy: Arc<Policy>,
    pub(crate) who: Arc<Principal>,
    /// Patients whose active Consents deny this caller (see `consent.rs`): their
    /// compartments are cut out of every grant.
    pub(crate) excluded: Vec<String>,
}

fn forbidden(msg: impl Into<String>) -> StoreError {
    StoreError::Forbidden(msg.into())
}

pub(crate) fn class(rtype: &str) -> TypeClass {
    if defs::patient_compartment_params(rtype).is_some() {
        TypeClass::Compartment
    } else if REFERENCE_TYPES.contains(&rtype) {
        TypeClass::Reference
    } else {
        TypeClass::Other
    }
}

impl Guard {
    /// `None`: every resource of the type; `Some(clause)`: only those matching it.
    fn grant(&self, i: Interaction, rtype: &str) -> Result<Option<Clause>> {
        let granted = self.granted(i, rtype)?;
        if self.excluded.is_empty() || class(rtype) != TypeClass::Compartment {
            return Ok(granted);
        }
        let mut denied = vec![];
        for p in &self.excluded {
            denied.push(compartment_clause(rtype, p).map_err(|e| forbidden(e.to_string()))?);
        }
        let exclusion = Clause::Not(Box::new(Clause::Any(denied)));
        Ok(Some(match granted {
            None => exclusion,
            Some(c) => Clause::All(vec![c, exclusion]),
        }))
    }

    /// What the policy grants, before Consents.
    fn granted(&self, i: Interaction, rtype: &str) -> Result<Option<Clause>> {
        let grant = self
            .policy
            .decide(&self.who, i, rtype, class(rtype))
            .map_err(|d| forbidden(d.0))?;
        let Grant::Only(conjunctions) = grant else {
            return Ok(None);
        };
        let mut union = vec![];
        for c in conjunctions {
            let mut all = vec![];
            if let Some(pid) = &c.compartment {
                all.push(
                    compartment_clause(rtype, pid)
                        .map_err(|e| forbidden(format!("{rtype}: {e}")))?,
                );
            }
            for criteria in &c.criteria {
                let pairs = crate::parse_pairs(criteria);
                let options = salus_search::Options {
                    default_count: 1,
                    max_count: 1,
                    strict: true,
                };
                // Fail closed: criteria the server cannot apply grant nothing.
                let plan = salus_search::parse(rtype, &pairs, &options).map_err(|e| {
                    forbidden(format!(
                        "the access criteria '{criteria}' cannot be applied to {rtype}: {e}"
                    ))
                })?;
                all.extend(plan.query.clauses);
            }
            union.push(Clause::All(all));
        }
        Ok(Some(if union.len() == 1 {
            union.pop().expect("one")
        } else {
            Clause::Any(union)
        }))
    }

    /// The first of `interactions` granted, most permissive answer first.
    fn any_grant(&self, interactions: &[Interaction], rtype: &str) -> Result<Option<Clause>> {
        let mut first_err = None;
        let mut restricted = vec![];
        for &i in interactions {
            match self.grant(i, rtype) {
                Ok(None) => return Ok(None),
                Ok(Some(c)) => restricted.push(c),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match restricted.len() {
            0 => Err(first_err.unwrap_or_else(|| forbidden("not permitted"))),
            1 => Ok(restricted.pop()),
            _ => Ok(Some(Clause::Any(restricted))),
        }
    }

    fn require(&self, cap: Capability, what: &str) -> Result<()> {
        if self.policy.has_capability(&self.who, cap) {
            Ok(())
        } else {
            Err(forbidden(format!("{what} needs the admin role")))
        }
    }

    /// A search with the grant's clauses added (system-level searches get one per type).
    fn restrict(&self, q: &SearchQuery, i: Interaction) -> Result<SearchQuery> {
        self.restrict_with(q, &[i])
    }

    fn restrict_with(&self, q: &SearchQuery, is: &[Interaction]) -> Result<SearchQuery> {
        let mut q = q.clone();
        if q.contained != ContainedMode::Exclude {
            // Contained resources carry their own index rows: a grant on their
            // container would not be checked. Only unrestricted callers search them.
            if q.rtype.is_empty() {
                return Err(forbidden("_contained searches need a resource type"));
            }
            if self.any_grant(is, &q.rtype)?.is_some() {
                return Err(forbidden(
                    "_contained searches need access to every resource of the type",
                ));
            }
            return Ok(q);
        }
        if !q.rtype.is_empty() {
            if let Some(c) = self.any_grant(is, &q.rtype)? {
                q.clauses.push(c);
            }
            return Ok(q);
        }
        // System level: the types named by `_type`, else every type.
        let named: Option<Vec<String>> = q.clauses.iter().find_map(|c| match c {
            Clause::Types(ts) => Some(ts.clone()),
            _ => None,
        });
        let types: Vec<String> = named.unwrap_or_else(|| {
            defs::resource_types()
                .iter()
                .map(|t| t.to_string())
                .collect()
        });
        let mut open = vec![];
        let mut groups = vec![];
        let mut first_err = None;
        for t in &types {
            match self.any_grant(is, t) {
                Ok(None) => open.push(t.clone()),
                Ok(Some(c)) => groups.push(Clause::All(vec![Clause::Types(vec![t.clone()]), c])),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if open.is_empty() && groups.is_empty() {
            return Err(first_err.unwrap_or_else(|| forbidden("not permitted")));
        }
        if groups.is_empty() && open.len() == types.len() {
            return Ok(q);
        }
        if !open.is_empty() {
            groups.push(Clause::Types(open));
        }
        q.clauses.push(Clause::Any(groups));
        Ok(q)
    }
}

/// Which of `ids` (of `rtype`) match `clause`, as `search` sees them.
async fn members<F, Fut>(
    rtype: &str,
    ids: Vec<String>,
    clause: Clause,
    search: F,
) -> Result<HashSet<String>>
where
    F: FnOnce(SearchQuery) -> Fut,
    Fut: std::future::Future<Output = Result<SearchPage>>,
{
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    let mut q = SearchQuery::new(rtype);
    q.count = ids.len();
    q.clauses = vec![Clause::Id(ids), clause];
    Ok(search(q).await?.entries.into_iter().map(|r| r.id).collect())
}

fn outside(rtype: &str, id: &str) -> StoreError {
    forbidden(format!(
        "{rtype}/{id} is outside what this access token may reach"
    ))
}

/// The store as one caller may use it.
pub(crate) struct GuardedStore {
    pub(crate) inner: Arc<dyn Store>,
    pub(crate) guard: Arc<Guard>,
}

impl GuardedStore {
    /// Whether the current version of `rtype/id` matches `clause`.
    async fn member(&self, rtype: &str, id: &str, clause: Clause) -> Result<bool> {
        let inner = &self.inner;
        Ok(
            members(rtype, vec![id.to_string()], clause, |q| async move {
                inner.search(&q).await
            })
            .await?
            .contains(id),
        )
    }

    /// Keep the records the caller may read.
    async fn filter(
        &self,
        records: Vec<VersionRecord>,
        deny_drops: bool,
    ) -> Result<Vec<VersionRecord>> {
        let mut by_type: HashMap<String, Vec<String>> = HashMap::new();
        for r in &records {
            by_type
                .entry(r.rtype.clone())
                .or_default()
                .push(r.id.clone());
        }
        let mut keep: HashMap<String, Option<HashSet<String>>> = HashMap::new();
        for (t, ids) in by_type {
            match self.guard.grant(Interaction::Read, &t) {
                Ok(None) => {
                    keep.insert(t, None);
                }
                Ok(Some(c)) => {
                    let inner = &self.inner;
                    let m = members(&t, ids, c, |q| async move { inner.search(&q).await }).await?;
                    keep.insert(t, Some(m));
                }
                Err(e) if !deny_drops => return Err(e),
                Err(_) => {
                    keep.insert(t, Some(HashSet::new()));
                }
            }
        }
        Ok(records
            .into_iter()
            .filter(|r| match keep.get(&r.rtype) {
                Some(None) => true,
                Some(Some(ids)) => ids.contains(&r.id),
                None => false,
            })
            .collect())
    }
}

#[async_trait::async_trait]
impl Store for GuardedStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn read(&self, rtype: &str, id: &str) -> Result<Option<VersionRecord>> {
        let grant = self.guard.grant(Interaction::Read, rtype)?;
        let rec = self.inner.read(rtype, id).await?;
        match (grant, &rec) {
            (None, _) | (Some(_), None) => Ok(rec),
            (Some(c), Some(r)) => {
                if !r.is_deleted() && self.member(rtype, id, c).await? {
                    Ok(rec)
                } else {
                    Err(outside(rtype, id))
                }
            }
        }
    }

    async fn vread(&self, rtype: &str, id: &str, version: u64) -> Result<Option<VersionRecord>> {
        if let Some(c) = self.guard.grant(Interaction::Read, rtype)? {
            // A version is readable when the resource (as it is now) is.
            if !self.member(rtype, id, c).await? {
                return match self.inner.read(rtype, id).await? {
                    None => Ok(None),
                    Some(_) => Err(outside(rtype, id)),
                };
            }
        }
        self.inner.vread(rtype, id, version).await
    }

    async fn history(&self, query: &HistoryQuery) -> Result<HistoryPage> {
        match &query.scope {
            HistoryScope::Instance(rtype, id) => {
                if let Some(c) = self.guard.grant(Interaction::Read, rtype)? {
                    if !self.member(rtype, id, c).await? {
                        return Err(outside(rtype, id));
                    }
                }
                self.inner.history(query).await
            }
            HistoryScope::Type(rtype) => {
                let grant = self.guard.grant(Interaction::Search, rtype)?;
                let mut page = self.inner.history(query).await?;
                if grant.is_some() {
                    page.entries = self.filter(page.entries, true).await?;
                }
                Ok(page)
            }
            HistoryScope::System => {
                let mut page = self.inner.history(query).await?;
                page.entries = self.filter(page.entries, true).await?;
                Ok(page)
            }
        }
    }

    async fn search(&self, query: &SearchQuery) -> Result<SearchPage> {
        let q = self.guard.restrict(query, Interaction::Search)?;
        self.inner.search(&q).await
    }

    async fn begin(&self) -> Result<Box<dyn StoreTx>> {
        Ok(Box::new(GuardedTx {
            inner: self.inner.begin().await?,
            guard: self.guard.clone(),
        }))
    }

    async fn begin_bulk(&self) -> Result<Box<dyn StoreTx>> {
        Ok(Box::new(GuardedTx {
            inner: self.inner.begin_bulk().await?,
            guard: self.guard.clone(),
        }))
    }

    async fn read_many(&self, keys: &[(String, String)]) -> Result<Vec<VersionRecord>> {
        let records = self.inner.read_many(keys).await?;
        // `_include`d and `_revinclude`d resources the caller may not read are left out.
        self.filter(records, true).await
    }

    async fn references_from(
        &self,
        sources: &[(String, String)],
        param: Option<&str>,
    ) -> Result<Vec<(String, String)>> {
        self.inner.references_from(sources, param).await
    }

    async fn references_to(
        &self,
        targets: &[(String, String)],
        source_type: Option<&str>,
        param: Option<&str>,
    ) -> Result<Vec<(String, String)>> {
        self.inner.references_to(targets, source_type, param).await
    }

    async fn counts(&self) -> Result<Vec<(String, u64)>> {
        self.inner.counts().await
    }

    async fn scan_current(&self, after: Option<u64>, limit: usize) -> Result<ScanPage> {
        self.guard
            .require(Capability::Admin, "reading the whole store")?;
        self.inner.scan_current(after, limit).await
    }

    async fn scan_versions(
        &self,
        after: Option<(String, String, u64)>,
        limit: usize,
    ) -> Result<Vec<VersionRecord>> {
        self.guard
            .require(Capability::Admin, "reading the whole store")?;
        self.inner.scan_versions(after, limit).await
    }

    async fn reindex_pending(&self) -> Result<bool> {
        self.inner.reindex_pending().await
    }

    async fn clear_reindex_pending(&self) -> Result<()> {
        self.guard.require(Capability::Admin, "reindexing")?;
        self.inner.clear_reindex_pending().await
    }

    async fn compact(&self) -> Result<()> {
        self.guard
            .require(Capability::Purge, "compacting the store")?;
        self.inner.compact().await
    }

    async fn analyze(&self) -> Result<()> {
        // statistics only: no data is read or changed, so any caller may ask
        self.inner.analyze().await
    }

    async fn snapshot_seq(&self) -> Result<i64> {
        self.inner.snapshot_seq().await
    }

    fn feed_gaps_are_final(&self) -> bool {
        self.inner.feed_gaps_are_final()
    }

    async fn snapshot_scan(&self, query: &SnapshotQuery) -> Result<SnapshotPage> {
        let grant = self.guard.grant(Interaction::Search, &query.rtype)?;
        let mut page = self.inner.snapshot_scan(query).await?;
        if let Some(c) = grant {
            // Bulk export as one caller: the snapshot's versions of the resources the
            // caller may reach (judged on their current state; deleted ones are left out).
            let ids: Vec<String> = page.records.iter().map(|r| r.id.clone()).collect();
            let inner = &self.inner;
            let keep = members(
                &query.rtype,
                ids,
                c,
                |q| async move { inner.search(&q).await },
            )
            .await?;
            page.records.retain(|r| keep.contains(&r.id));
        }
        Ok(page)
    }
}

/// A transaction as one caller may use it.
struct GuardedTx {
    inner: Box<dyn StoreTx>,
    guard: Arc<Guard>,
}

impl GuardedTx {
    async fn member(&mut self, rtype: &str, id: &str, clause: Clause) -> Result<bool> {
        let inner = &mut self.inner;
        Ok(
            members(rtype, vec![id.to_string()], clause, |q| async move {
                inner.search(&q).await
            })
            .await?
            .contains(id),
        )
    }
}

/// Reads inside a write transaction serve the write (its current version, `If-Match`)
/// as well as GET entries: any of these grants lets the caller see the resource.
const READ_LIKE: &[Interaction] = &[Interaction::Read, Interaction::Update, Interaction::Delete];

/// Matching inside a transaction (conditional create/update/delete, conditional
/// references) is allowed to callers who may search or write the type.
const MATCH_LIKE: &[Interaction] = &[
    Interaction::Search,
    Interaction::Update,
    Interaction::Create,
    Interaction::Delete,
];

#[async_trait::async_trait]
impl StoreTx for GuardedTx {
    async fn read(&mut self, rtype: &str, id: &str) -> Result<Option<VersionRecord>> {
        let grant = self.guard.any_grant(READ_LIKE, rtype)?;
        let rec = self.inner.read(rtype, id).await?;
        match (grant, &rec) {
            (None, _) | (Some(_), None) => Ok(rec),
            (Some(c), Some(r)) => {
                if !r.is_deleted() && self.member(rtype, id, c).await? {
                    Ok(rec)
                } else if r.is_deleted() {
                    // Writing over a deleted resource is a create: checked on `put`.
                    Ok(rec)
                } else {
                    Err(outside(rtype, id))
                }
            }
        }
    }

    async fn heads(&mut self, keys: &[(String, String)]) -> Result<Vec<Option<Head>>> {
        self.inner.heads(keys).await
    }

    async fn search(&mut self, query: &SearchQuery) -> Result<SearchPage> {
        let q = self.guard.restrict_with(query, MATCH_LIKE)?;
        self.inner.search(&q).await
    }

    async fn put(&mut self, write: NewVersion) -> Result<()> {
        let (rtype, id) = (write.rtype.clone(), write.id.clone());
        if rtype == "Basic" && id == crate::audit::HEAD_ID {
            // The audit chain's head is the server's own record.
            return Err(forbidden(
                "Basic/salus-audit-chain is written by the server only",
            ));
        }
        if rtype == "Binary" && id.starts_with("salus-sub") {
            // The subscription engine's bookkeeping (docs/subscriptions.md).
            return Err(forbidden(
                "Binary/salus-sub… records are written by the server only",
            ));
        }
        let previous = match write.expected_version {
            None => None,
            Some(_) => self.inner.read(&rtype, &id).await?,
        };
        let replaces_live = previous.as_ref().is_some_and(|p| !p.is_deleted());
        let interaction = if write.body.is_none() {
            Interaction::Delete
        } else if replaces_live {
            Interaction::Update
        } else {
            Interaction::Create
        };
        let grant = self.guard.grant(interaction, &rtype)?;
        if let (Some(c), true) = (&grant, replaces_live) {
            if !self.member(&rtype, &id, c.clone()).await? {
                return Err(outside(&rtype, &id));
            }
        }
        let deleting = write.body.is_none();
        self.inner.put(write).await?;
        if let (Some(c), false) = (grant, deleting) {
            // The new version must stay inside the grant (a patient writes their own).
            if !self.member(&rtype, &id, c).await? {
                return Err(forbidden(format!(
                    "the {rtype} written would be outside what this access token may reach"
                )));
            }
        }
        Ok(())
    }

    async fn savepoint(&mut self) -> Result<()> {
        self.inner.savepoint().await
    }

    async fn rollback_to_savepoint(&mut self) -> Result<()> {
        self.inner.rollback_to_savepoint().await
    }

    async fn release_savepoint(&mut self) -> Result<()> {
        self.inner.release_savepoint().await
    }

    async fn reindex(
        &mut self,
        rtype: &str,
        id: &str,
        version: u64,
        index: Vec<IndexRow>,
        fulltext: Option<FullText>,
        contained: Vec<ContainedIndex>,
    ) -> Result<()> {
        self.guard.require(Capability::Admin, "reindexing")?;
        self.inner
            .reindex(rtype, id, version, index, fulltext, contained)
            .await
    }

    async fn purge(&mut self, rtype: &str, id: &str) -> Result<u64> {
        self.guard.require(Capability::Purge, "erasing records")?;
        self.inner.purge(rtype, id).await
    }

    async fn lock(&mut self, key: &str) -> Result<()> {
        self.inner.lock(key).await
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        self.inner.commit().await
    }
}
