//! The FHIR service: single-resource interactions and history.

use crate::index::Indexed;
use crate::query::parse_pairs;
use crate::{index, time, FhirError, Result};
use salus_fhir::{defs, validate::validate_resource, Issue, IssueCode};
use salus_store::{
    Head, HistoryPage, HistoryQuery, HistoryScope, Method, NewVersion, Store, StoreTx,
    VersionRecord,
};
use serde_json::{Map, Value};
use std::sync::Arc;

/// Paging and size limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// `_count` when the client gives none.
    pub default_count: usize,
    /// Largest `_count` honoured.
    pub max_count: usize,
    /// Largest number of entries accepted in a batch or transaction Bundle.
    pub max_bundle_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            default_count: 20,
            max_count: 1000,
            max_bundle_entries: 10_000,
        }
    }
}

/// The `Prefer: return=` choice (FHIR R4 http.html#ops).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Return {
    Minimal,
    #[default]
    Representation,
    OperationOutcome,
}

/// Result of a create/update/patch.
#[derive(Debug, Clone)]
pub struct WriteOutcome {
    pub record: VersionRecord,
    /// A new resource was created (201) rather than an existing one updated (200).
    pub created: bool,
    /// Conditional create matched an existing resource; nothing was written.
    pub existing: bool,
}

/// How many attempts a write without `If-Match` makes when it races another writer
/// (several server processes on one PostgreSQL database race for real).
const WRITE_ATTEMPTS: usize = 40;

/// A short, jittered pause before retrying a write that lost a race.
pub(crate) async fn backoff(attempt: usize) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    let base = 200 * attempt.min(20) as u64;
    tokio::time::sleep(std::time::Duration::from_micros(base + nanos % (base + 1))).await;
}

/// Run `$body` (an expression that may `.await`, evaluating to `Result<T>`) inside a
/// store transaction bound to `$tx`, committing on success. When `$retry` is set, a
/// conflict with a concurrent writer is retried on a fresh transaction; when it is not
/// (the request carried `If-Match`), a conflict means the version the client named is
/// no longer current: 412. A backend may report a queued write's conflict only at
/// commit, so commit failures are judged the same way.
macro_rules! in_tx {
    ($svc:expr, $retry:expr, |$tx:ident| $body:expr) => {{
        let mut attempt = 0usize;
        loop {
            attempt += 1;
            let mut guard = $svc.store.begin().await?;
            let result = {
                let $tx: &mut dyn StoreTx = guard.as_mut();
                $body
            };
            let result = match result {
                Ok(v) => guard.commit().await.map(|()| v).map_err(FhirError::from),
                Err(e) => Err(e),
            };
            match result {
                Ok(v) => break Ok(v),
                Err(FhirError::Conflict(_)) if $retry && attempt < WRITE_ATTEMPTS => {
                    crate::service::backoff(attempt).await;
                    continue;
                }
                Err(FhirError::Conflict(m)) if !$retry => {
                    break Err(FhirError::PreconditionFailed(m))
                }
                Err(e) => break Err(e),
            }
        }
    }};
}

#[derive(Clone)]
pub struct FhirService {
    /// The store as this service's caller may use it: the backend itself, or (for a
    /// [`FhirService::scoped`] service) the backend behind the caller's access guard.
    store: Arc<dyn Store>,
    /// The backend without any guard: the server's own bookkeeping (audit trail).
    unguarded: Arc<dyn Store>,
    limits: Limits,
    /// Who this service acts for.
    access: salus_access::Access,
    /// The roles and rules access decisions use.
    policy: Arc<salus_access::Policy>,
    pub(crate) reindex_job: Arc<std::sync::Mutex<crate::reindex::ReindexStatus>>,
    /// The custom-parameter generation the last completed reindex covered.
    pub(crate) reindexed_generation: Arc<std::sync::atomic::AtomicU64>,
}

/// Check a resource type named in a URL.
pub(crate) fn ensure_type(rtype: &str) -> Result<()> {
    if defs::is_resource_type(rtype) {
        Ok(())
    } else {
        Err(FhirError::UnknownType(rtype.to_string()))
    }
}

/// A FHIR id: 1–64 of `[A-Za-z0-9\-\.]`.
pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Validate a resource body for `rtype` (when given). Returns the errors as `Invalid`.
pub(crate) fn check_body(body: &Value, rtype: Option<&str>) -> Result<()> {
    let Some(obj) = body.as_object() else {
        return Err(FhirError::invalid_at(
            IssueCode::Structure,
            "Resource",
            "the body must be a JSON object holding a FHIR resource",
        ));
    };
    let actual = obj.get("resourceType").and_then(Value::as_str);
    if let (Some(expected), Some(actual)) = (rtype, actual) {
        if expected != actual {
            return Err(FhirError::invalid_at(
                IssueCode::Invalid,
                "resourceType",
                format!("resourceType '{actual}' does not match the URL's type '{expected}'"),
            ));
        }
    }
    let issues: Vec<Issue> = validate_resource(body)
        .into_iter()
        .filter(Issue::is_error)
        .collect();
    if issues.is_empty() {
        Ok(())
    } else {
        Err(FhirError::Invalid(issues))
    }
}

/// Set `id` and `meta.versionId`/`meta.lastUpdated`, order `resourceType, id, meta`
/// first, and serialise.
pub(crate) fn finalize(body: Value, id: &str, version: u64, last_updated: i64) -> String {
    let Value::Object(mut obj) = body else {
        unreachable!("checked by check_body")
    };
    let mut out = Map::with_capacity(obj.len() + 2);
    if let Some(rt) = obj.shift_remove("resourceType") {
        out.insert("resourceType".into(), rt);
    }
    obj.shift_remove("id");
    out.insert("id".into(), Value::String(id.to_string()));
    let mut meta = match obj.shift_remove("meta") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    meta.shift_remove("versionId");
    meta.shift_remove("lastUpdated");
    let mut new_meta = Map::with_capacity(meta.len() + 2);
    new_meta.insert("versionId".into(), Value::String(version.to_string()));
    new_meta.insert(
        "lastUpdated".into(),
        Value::String(time::format_instant(last_updated)),
    );
    new_meta.extend(meta);
    out.insert("meta".into(), Value::Object(new_meta));
    out.extend(obj);
    serde_json::to_string(&Value::Object(out)).expect("JSON values serialise")
}

/// `lastUpdated` for a new version: now, but never before the previous version.
/// A version's `lastUpdated`: now, but always after the previous version's.
fn next_timestamp(now: i64, prev: Option<i64>) -> i64 {
    match prev {
        Some(p) if p >= now => p + 1_000,
        _ => now,
    }
}

/// `If-Match`: the resource must exist and its current version must be `expected`.
fn check_if_match(
    current: Option<&VersionRecord>,
    if_match: Option<u64>,
    rtype: &str,
    id: &str,
) -> Result<()> {
    let Some(expected) = if_match else {
        return Ok(());
    };
    match current {
        Some(c) if !c.is_deleted() && c.version == expected => Ok(()),
        Some(c) if !c.is_deleted() => Err(FhirError::PreconditionFailed(format!(
            "If-Match version {expected} does not match the current version {} of {rtype}/{id}",
            c.version
        ))),
        _ => Err(FhirError::PreconditionFailed(format!(
            "If-Match given but {rtype}/{id} does not exist"
        ))),
    }
}

/// Store a (validated) resource as the next version of `rtype/id` inside `tx`.
pub(crate) async fn tx_write(
    tx: &mut dyn StoreTx,
    rtype: &str,
    id: &str,
    body: Value,
    if_match: Option<u64>,
    method: Method,
) -> Result<WriteOutcome> {
    tx_write_known(tx, rtype, id, body, if_match, method, None).await
}

/// [`tx_write`] for a caller that already knows the resource's latest version in this
/// transaction (`Some(None)`: nothing is stored under `id`), e.g. from the search of
/// a conditional update: the store is not asked again.
pub(crate) async fn tx_write_known(
    tx: &mut dyn StoreTx,
    rtype: &str,
    id: &str,
    body: Value,
    if_match: Option<u64>,
    method: Method,
    known: Option<Option<VersionRecord>>,
) -> Result<WriteOutcome> {
    // Index rows first: the store may still be applying the previous write meanwhile.
    let index = index::extract(&body);
    let current = match known {
        Some(current) => current,
        // A POST's id was just generated (a random UUID): nothing can be stored under it.
        None if method == Method::Post => None,
        None => tx.read(rtype, id).await?,
    };
    check_if_match(current.as_ref(), if_match, rtype, id)?;
    let head = current.as_ref().map(|c| Head {
        version: c.version,
        last_updated: c.last_updated,
        deleted: c.is_deleted(),
    });
    put_version(tx, rtype, id, body, index, head, method).await
}

/// Store `body` as the version after `current` (None: a new resource).
pub(crate) async fn put_version(
    tx: &mut dyn StoreTx,
    rtype: &str,
    id: &str,
    body: Value,
    index: Indexed,
    current: Option<Head>,
    method: Method,
) -> Result<WriteOutcome> {
    put_version_at(tx, rtype, id, body, index, current, method, None).await
}

/// [`put_version`], optionally with the version number and `lastUpdated` given by the
/// caller (an incremental bulk import keeps the source's `meta`); the store still
/// refuses the write unless `current` is the latest version.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn put_version_at(
    tx: &mut dyn StoreTx,
    rtype: &str,
    id: &str,
    body: Value,
    index: Indexed,
    current: Option<Head>,
    method: Method,
    at: Option<(u64, i64)>,
) -> Result<WriteOutcome> {
    let prepared = prepare_version(rtype, id, body, index, current, method, at)?;
    tx.put(prepared.write).await?;
    make_live(prepared.search_param);
    Ok(prepared.outcome)
}

/// A version ready to put (see [`prepare_version`]).
pub(crate) struct PreparedVersion {
    pub(crate) write: NewVersion,
    /// A `SearchParameter`'s body, to make live once the write is stored.
    pub(crate) search_param: Option<Value>,
    pub(crate) outcome: WriteOutcome,
}

/// What [`put_version_at`] puts, without putting it: for callers that store many
/// versions at once (`StoreTx::put_many`), then call [`make_live`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn prepare_version(
    rtype: &str,
    id: &str,
    body: Value,
    index: Indexed,
    current: Option<Head>,
    method: Method,
    at: Option<(u64, i64)>,
) -> Result<PreparedVersion> {
    // A SearchParameter is checked before it is stored, and live once it is.
    let custom = rtype == "SearchParameter";
    if custom {
        salus_search::custom::definition(&body).map_err(|e| {
            FhirError::invalid_at(
                IssueCode::Invalid,
                "SearchParameter",
                format!("cannot be used as a search parameter: {e}"),
            )
        })?;
    }
    let search_param = custom.then(|| body.clone());
    let (version, last_updated) = match at {
        Some(at) => at,
        None => (
            current.map_or(1, |c| c.version + 1),
            next_timestamp(time::now_micros(), current.map(|c| c.last_updated)),
        ),
    };
    let text = finalize(body, id, version, last_updated);
    let created = current.is_none_or(|c| c.deleted);
    Ok(PreparedVersion {
        write: NewVersion {
            rtype: rtype.to_string(),
            id: id.to_string(),
            version,
            expected_version: current.map(|c| c.version),
            last_updated,
            method,
            body: Some(text.clone()),
            index: index.rows,
            fulltext: Some(index.text),
            contained: index.contained,
        },
        search_param,
        outcome: WriteOutcome {
            record: VersionRecord {
                rtype: rtype.to_string(),
                id: id.to_string(),
                version,
                last_updated,
                method,
                body: Some(text),
                seq: 0,
            },
            created,
            existing: false,
        },
    })
}

/// Register a stored `SearchParameter` (see [`PreparedVersion::search_param`]).
pub(crate) fn make_live(search_param: Option<Value>) {
    if let Some(sp) = search_param {
        if let Err(e) = salus_search::custom::apply(&sp) {
            tracing::warn!(error = %e, "search parameter not made live");
        }
    }
}

/// Delete `rtype/id` inside `tx` (checking `If-Match` when given); `None` when there
/// was nothing to delete.
pub(crate) async fn tx_delete(
    tx: &mut dyn StoreTx,
    rtype: &str,
    id: &str,
    if_match: Option<u64>,
) -> Result<Option<VersionRecord>> {
    let current = tx.read(rtype, id).await?;
    check_if_match(current.as_ref(), if_match, rtype, id)?;
    let Some(current) = current else {
        return Ok(None);
    };
    if current.is_deleted() {
        return Ok(None);
    }
    if rtype == "SearchParameter" {
        let url = current
            .body
            .as_deref()
            .and_then(|b| serde_json::from_str::<Value>(b).ok())
            .and_then(|v| v.get("url").and_then(Value::as_str).map(str::to_owned));
        if let Some(url) = url {
            salus_fhir::defs::unregister_custom(&url);
        }
    }
    let version = current.version + 1;
    let last_updated = next_timestamp(time::now_micros(), Some(current.last_updated));
    tx.put(NewVersion {
        rtype: rtype.to_string(),
        id: id.to_string(),
        version,
        expected_version: Some(current.version),
        last_updated,
        method: Method::Delete,
        body: None,
        index: vec![],
        fulltext: None,
        contained: vec![],
    })
    .await?;
    Ok(Some(VersionRecord {
        rtype: rtype.to_string(),
        id: id.to_string(),
        version,
        last_updated,
        method: Method::Delete,
        body: None,
        seq: 0,
    }))
}

/// Resources matching a conditional-operation query (`identifier=…&_id=…`), at most 2.
pub(crate) async fn tx_match(
    tx: &mut dyn StoreTx,
    rtype: &str,
    query: &str,
    limits: &Limits,
) -> Result<Vec<VersionRecord>> {
    let pairs = parse_pairs(query);
    if pairs.is_empty() {
        return Err(FhirError::invalid(format!(
            "conditional operation on {rtype} needs search criteria"
        )));
    }
    // Conditional operations parse strictly: an ignored criterion would match everything.
    let options = salus_search::Options {
        default_count: limits.default_count,
        max_count: limits.max_count,
        strict: true,
    };
    // Two transactions matching the same criteria (two conditional creates of one
    // patient) run one after the other, on every backend: the second sees what the
    // first wrote.
    tx.lock(&format!("{rtype}?{query}")).await?;
    let pairs =
        crate::subsumption::expand(&mut crate::subsumption::Source::Tx(&mut *tx), rtype, &pairs)
            .await?;
    let mut plan = salus_search::parse(rtype, &pairs, &options)?;
    if plan.query.clauses.is_empty() {
        return Err(FhirError::invalid(format!(
            "conditional criteria '{query}' hold no search parameter"
        )));
    }
    plan.query.count = 2;
    plan.query.offset = 0;
    plan.query.page = Default::default();
    plan.query.with_total = false;
    Ok(tx.search(&plan.query).await?.entries)
}

/// Apply a JSON Patch (RFC 6902) document to a resource.
pub(crate) fn apply_patch(rtype: &str, id: &str, current: &str, patch: &Value) -> Result<Value> {
    let mut doc: Value = serde_json::from_str(current)
        .map_err(|e| FhirError::Internal(format!("stored resource is not JSON: {e}")))?;
    let ops: json_patch::Patch = serde_json::from_value(patch.clone()).map_err(|e| {
        FhirError::invalid_at(
            IssueCode::Structure,
            "Patch",
            format!("not a JSON Patch document: {e}"),
        )
    })?;
    json_patch::patch(&mut doc, &ops).map_err(|e| {
        FhirError::invalid_at(
            IssueCode::Processing,
            "Patch",
            format!("JSON Patch failed: {e}"),
        )
    })?;
    if doc.get("resourceType").and_then(Value::as_str) != Some(rtype)
        || doc.get("id").and_then(Value::as_str) != Some(id)
    {
        return Err(FhirError::invalid_at(
            IssueCode::Invalid,
            "Patch",
            "a patch must not change resourceType or id",
        ));
    }
    Ok(doc)
}

impl FhirService {
    pub fn new(store: Arc<dyn Store>, limits: Limits) -> Self {
        FhirService {
            unguarded: store.clone(),
            store,
            limits,
            access: salus_access::Access::Internal,
            policy: Arc::new(salus_access::Policy::builtin()),
            reindex_job: Arc::default(),
            reindexed_generation: Arc::default(),
        }
    }

    /// Use these roles and rules for access decisions.
    pub fn with_policy(mut self, policy: salus_access::Policy) -> Self {
        self.policy = Arc::new(policy);
        self
    }

    pub fn policy(&self) -> &Arc<salus_access::Policy> {
        &self.policy
    }

    /// This service acting for `access`: every read, search, history and write it makes
    /// is decided by the policy for that caller (see `access.rs`). Cheap: a few `Arc`s.
    pub fn scoped(&self, access: salus_access::Access) -> FhirService {
        self.scoped_excluding(access, vec![])
    }

    /// [`FhirService::scoped`], honouring the active Consents that deny the caller (as
    /// an actor, or for one of the request's declared `purposes` of use).
    pub async fn scoped_with_consent(
        &self,
        access: salus_access::Access,
        purposes: &[String],
    ) -> Result<FhirService> {
        let excluded = match access.principal() {
            Some(p) => {
                self.consent_denials(p.fhir_user.as_deref(), purposes)
                    .await?
            }
            None => vec![],
        };
        if !excluded.is_empty() {
            tracing::debug!(
                patients = excluded.len(),
                "consent denials apply to this caller"
            );
        }
        Ok(self.scoped_excluding(access, excluded))
    }

    fn scoped_excluding(&self, access: salus_access::Access, excluded: Vec<String>) -> FhirService {
        let mut s = self.clone();
        s.store = match &access {
            salus_access::Access::Internal => self.unguarded.clone(),
            salus_access::Access::Caller(who) => Arc::new(crate::access::GuardedStore {
                inner: self.unguarded.clone(),
                guard: Arc::new(crate::access::Guard {
                    policy: self.policy.clone(),
                    who: who.clone(),
                    excluded,
                }),
            }),
        };
        s.access = access;
        s
    }

    /// Whether the caller may do `interaction` on at least some resources of `rtype`
    /// (operations that walk many types, `$everything` and `$export`, skip the others).
    pub fn permits(&self, interaction: salus_access::Interaction, rtype: &str) -> bool {
        match &self.access {
            salus_access::Access::Internal => true,
            salus_access::Access::Caller(who) => self
                .policy
                .decide(who, interaction, rtype, crate::access::class(rtype))
                .is_ok(),
        }
    }

    /// Who this service acts for.
    pub fn access(&self) -> &salus_access::Access {
        &self.access
    }

    /// Refuse unless the caller holds `cap` (the server's own calls always do).
    pub fn require(&self, cap: salus_access::Capability, what: &str) -> Result<()> {
        match &self.access {
            salus_access::Access::Internal => Ok(()),
            salus_access::Access::Caller(who) if self.policy.has_capability(who, cap) => Ok(()),
            salus_access::Access::Caller(_) => Err(FhirError::Forbidden(format!(
                "{what} is not permitted for this access token"
            ))),
        }
    }

    /// The backend without the caller's guard, for the server's own records.
    pub fn unguarded_store(&self) -> &Arc<dyn Store> {
        &self.unguarded
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// `GET [type]/[id]`.
    pub async fn read(&self, rtype: &str, id: &str) -> Result<VersionRecord> {
        ensure_type(rtype)?;
        match self.store.read(rtype, id).await? {
            Some(r) if r.is_deleted() => Err(FhirError::Gone(format!("{rtype}/{id}"))),
            Some(r) => Ok(r),
            None => Err(FhirError::NotFound(format!("{rtype}/{id}"))),
        }
    }

    /// `GET [type]/[id]/_history/[vid]`.
    pub async fn vread(&self, rtype: &str, id: &str, version: &str) -> Result<VersionRecord> {
        ensure_type(rtype)?;
        let v: u64 = version
            .parse()
            .map_err(|_| FhirError::NotFound(format!("{rtype}/{id}/_history/{version}")))?;
        match self.store.vread(rtype, id, v).await? {
            Some(r) if r.is_deleted() => {
                Err(FhirError::Gone(format!("{rtype}/{id}/_history/{version}")))
            }
            Some(r) => Ok(r),
            None => Err(FhirError::NotFound(format!(
                "{rtype}/{id}/_history/{version}"
            ))),
        }
    }

    /// `POST [type]/$validate`: every problem, nothing stored.
    pub fn validate(&self, rtype: Option<&str>, body: &Value) -> Result<Vec<Issue>> {
        if let Some(t) = rtype {
            ensure_type(t)?;
        }
        if let Some(t) = rtype {
            if let Some(actual) = body.get("resourceType").and_then(Value::as_str) {
                if actual != t {
                    return Ok(vec![Issue::error(
                        IssueCode::Invalid,
                        format!("resourceType '{actual}' does not match the URL's type '{t}'"),
                    )
                    .at("resourceType")]);
                }
            }
        }
        Ok(validate_resource(body))
    }

    /// `POST [type]` (with optional `If-None-Exist`).
    pub async fn create(
        &self,
        rtype: &str,
        body: Value,
        if_none_exist: Option<&str>,
    ) -> Result<WriteOutcome> {
        ensure_type(rtype)?;
        check_body(&body, Some(rtype))?;
        in_tx!(self, true, |tx| async {
            if let Some(q) = if_none_exist {
                let found = tx_match(tx, rtype, q, &self.limits).await?;
                match found.len() {
                    0 => {}
                    1 => {
                        return Ok(WriteOutcome {
                            record: found.into_iter().next().expect("one"),
                            created: false,
                            existing: true,
                        })
                    }
                    _ => {
                        return Err(FhirError::PreconditionFailed(format!(
                            "If-None-Exist '{q}' matches more than one {rtype}"
                        )))
                    }
                }
            }
            tx_write(tx, rtype, &new_id(), body.clone(), None, Method::Post).await
        }
        .await)
    }

    /// `PUT [type]/[id]` (update, or create with a client-chosen id).
    pub async fn update(
        &self,
        rtype: &str,
        id: &str,
        body: Value,
        if_match: Option<u64>,
    ) -> Result<WriteOutcome> {
        ensure_type(rtype)?;
        if !valid_id(id) {
            return Err(FhirError::invalid(format!("'{id}' is not a valid FHIR id")));
        }
        match body.get("id").and_then(Value::as_str) {
            Some(body_id) if body_id == id => {}
            Some(body_id) => {
                return Err(FhirError::invalid_at(
                    IssueCode::Invalid,
                    format!("{rtype}.id"),
                    format!("resource id '{body_id}' does not match the URL id '{id}'"),
                ))
            }
            None => {
                return Err(FhirError::invalid_at(
                    IssueCode::Required,
                    format!("{rtype}.id"),
                    "an update must carry the resource id in the body",
                ))
            }
        }
        check_body(&body, Some(rtype))?;
        in_tx!(self, if_match.is_none(), |tx| async {
            tx_write(tx, rtype, id, body.clone(), if_match, Method::Put).await
        }
        .await)
    }

    /// `PUT [type]?criteria`.
    pub async fn conditional_update(
        &self,
        rtype: &str,
        criteria: &str,
        body: Value,
        if_match: Option<u64>,
    ) -> Result<WriteOutcome> {
        ensure_type(rtype)?;
        check_body(&body, Some(rtype))?;
        in_tx!(self, if_match.is_none(), |tx| async {
            let found = tx_match(tx, rtype, criteria, &self.limits).await?;
            let body_id = body.get("id").and_then(Value::as_str).map(str::to_owned);
            let id = match found.as_slice() {
                [] => body_id.unwrap_or_else(new_id),
                [one] => {
                    if let Some(b) = &body_id {
                        if b != &one.id {
                            return Err(FhirError::invalid(format!(
                                "resource id '{b}' does not match the matched resource {rtype}/{}",
                                one.id
                            )));
                        }
                    }
                    one.id.clone()
                }
                _ => {
                    return Err(FhirError::PreconditionFailed(format!(
                        "conditional update criteria '{criteria}' match more than one {rtype}"
                    )))
                }
            };
            if !valid_id(&id) {
                return Err(FhirError::invalid(format!("'{id}' is not a valid FHIR id")));
            }
            tx_write(tx, rtype, &id, body.clone(), if_match, Method::Put).await
        }
        .await)
    }

    /// `PATCH [type]/[id]` with a JSON Patch document.
    pub async fn patch(
        &self,
        rtype: &str,
        id: &str,
        patch: Value,
        if_match: Option<u64>,
    ) -> Result<WriteOutcome> {
        ensure_type(rtype)?;
        in_tx!(self, if_match.is_none(), |tx| async {
            let current = match tx.read(rtype, id).await? {
                Some(c) if c.is_deleted() => return Err(FhirError::Gone(format!("{rtype}/{id}"))),
                Some(c) => c,
                None => return Err(FhirError::NotFound(format!("{rtype}/{id}"))),
            };
            let doc = apply_patch(rtype, id, current.body.as_deref().unwrap_or("{}"), &patch)?;
            check_body(&doc, Some(rtype))?;
            tx_write(tx, rtype, id, doc, if_match, Method::Patch).await
        }
        .await)
    }

    /// `DELETE [type]/[id]` (with optional `If-Match`); `None` when there was nothing
    /// to delete.
    pub async fn delete(
        &self,
        rtype: &str,
        id: &str,
        if_match: Option<u64>,
    ) -> Result<Option<VersionRecord>> {
        ensure_type(rtype)?;
        in_tx!(self, if_match.is_none(), |tx| async {
            tx_delete(tx, rtype, id, if_match).await
        }
        .await)
    }

    /// `DELETE [type]?criteria` (single match; several → 412).
    pub async fn conditional_delete(
        &self,
        rtype: &str,
        criteria: &str,
    ) -> Result<Option<VersionRecord>> {
        ensure_type(rtype)?;
        in_tx!(self, true, |tx| async {
            let found = tx_match(tx, rtype, criteria, &self.limits).await?;
            match found.as_slice() {
                [] => Ok(None),
                [one] => tx_delete(tx, rtype, &one.id, None).await,
                _ => Err(FhirError::PreconditionFailed(format!(
                    "conditional delete criteria '{criteria}' match more than one {rtype}"
                ))),
            }
        }
        .await)
    }

    /// History at system, type or instance level with `_since`, `_at`, `_count`
    /// and the paging cursor `_cursor`.
    pub async fn history(
        &self,
        scope: HistoryScope,
        pairs: &[(String, String)],
    ) -> Result<HistoryPage> {
        match &scope {
            HistoryScope::System => {}
            HistoryScope::Type(t) | HistoryScope::Instance(t, _) => ensure_type(t)?,
        }
        let mut q = HistoryQuery {
            scope: scope.clone(),
            since: None,
            before: None,
            current_from: None,
            cursor: None,
            count: self.limits.default_count,
        };
        for (k, v) in pairs {
            let bad = |m: String| FhirError::invalid_at(IssueCode::Invalid, k.clone(), m);
            match k.as_str() {
                "_since" => {
                    q.since = Some(
                        time::parse_range(v)
                            .ok_or_else(|| bad(format!("'{v}' is not a valid instant")))?
                            .0,
                    )
                }
                "_at" => {
                    // versions current at some point of the period: written before its
                    // end and not replaced before its start
                    let (lo, hi) = time::parse_range(v)
                        .ok_or_else(|| bad(format!("'{v}' is not a valid date/dateTime")))?;
                    q.before = Some(hi);
                    q.current_from = Some(lo);
                }
                "_count" => {
                    q.count = v
                        .parse::<usize>()
                        .map_err(|_| bad(format!("'{v}' is not a non-negative integer")))?
                        .min(self.limits.max_count)
                }
                "_cursor" => {
                    q.cursor = Some(
                        v.parse()
                            .map_err(|_| bad(format!("'{v}' is not a valid paging cursor")))?,
                    )
                }
                "_format" | "_pretty" => {}
                other => {
                    return Err(FhirError::NotSupported(format!(
                    "history parameter '{other}' is not supported (supported: _since, _at, _count)"
                )))
                }
            }
        }
        if let HistoryScope::Instance(t, id) = &scope {
            if self.store.read(t, id).await?.is_none() {
                return Err(FhirError::NotFound(format!("{t}/{id}")));
            }
        }
        Ok(self.store.history(&q).await?)
    }
}
