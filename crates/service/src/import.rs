//! Loading many resources at once (the `salus import` and `$import` path): every
//! resource is validated, then all are written in one store transaction, so a bad
//! input leaves nothing behind.

use crate::index::{self, Indexed};
use crate::service::{
    check_body, make_live, new_id, prepare_version, tx_write, valid_id, PreparedVersion,
};
use crate::{FhirError, FhirService};
use salus_fhir::{Issue, IssueCode};
use salus_store::{Method, NewVersion, StoreTx};
use serde_json::Value;
use std::collections::HashSet;

/// Why an import unit was rejected.
#[derive(Debug)]
pub enum ImportFailure {
    /// Problems by the index of the offending item.
    Invalid(Vec<(usize, Vec<Issue>)>),
    /// The write itself failed.
    Failed(FhirError),
}

/// Versions prepared before they are handed to the store: a large unit is written as
/// it is indexed, not after (the backend's writer works while this thread extracts).
const WRITE_AHEAD: usize = 256;

/// Versions waiting to be stored by one `put_many`, and the search parameters to make
/// live once they are.
#[derive(Default)]
struct Batch {
    writes: Vec<NewVersion>,
    search_params: Vec<Value>,
}

impl Batch {
    fn push(&mut self, p: PreparedVersion) {
        self.writes.push(p.write);
        self.search_params.extend(p.search_param);
    }

    async fn store(&mut self, tx: &mut dyn StoreTx) -> Result<(), FhirError> {
        if self.writes.is_empty() {
            return Ok(());
        }
        tx.put_many(std::mem::take(&mut self.writes)).await?;
        for sp in std::mem::take(&mut self.search_params) {
            make_live(Some(sp));
        }
        Ok(())
    }
}

/// Where [`FhirService::checked_resources_into`] takes each resource with its index rows.
enum Source {
    /// Index rows depend on nothing stored, so a blocking thread extracts them, in
    /// order, while `heads` waits for the writer to finish what is queued before it (the
    /// previous part of a large file), and stays ahead of the writes after.
    Ahead {
        extracted: tokio::sync::mpsc::Receiver<(Value, Indexed)>,
        extractor: tokio::task::JoinHandle<()>,
    },
    /// Extracted one by one just before each is prepared: a unit with a
    /// `SearchParameter`, whose later resources are indexed with it once it is stored.
    Inline(std::vec::IntoIter<Value>),
}

impl Source {
    fn new(items: Vec<Value>) -> Source {
        let defines_params = items
            .iter()
            .any(|i| i.get("resourceType").and_then(Value::as_str) == Some("SearchParameter"));
        if defines_params {
            return Source::Inline(items.into_iter());
        }
        let (send, extracted) = tokio::sync::mpsc::channel(WRITE_AHEAD);
        let extractor = tokio::task::spawn_blocking(move || {
            for item in items {
                let index = index::extract(&item);
                if send.blocking_send((item, index)).is_err() {
                    return; // the write failed; nobody waits for the rest
                }
            }
        });
        Source::Ahead {
            extracted,
            extractor,
        }
    }

    /// The next resource (the caller asks for exactly as many as it gave).
    async fn next(&mut self) -> Result<(Value, Indexed), FhirError> {
        match self {
            Source::Inline(items) => {
                let item = items
                    .next()
                    .ok_or_else(|| FhirError::Internal("import unit ran short".into()))?;
                let index = index::extract(&item);
                Ok((item, index))
            }
            Source::Ahead {
                extracted,
                extractor,
            } => match extracted.recv().await {
                Some(next) => Ok(next),
                None => Err(FhirError::Internal(
                    match extractor.await {
                        Err(e) if e.is_panic() => "index extraction failed (panicked)",
                        _ => "index extraction stopped early",
                    }
                    .into(),
                )),
            },
        }
    }
}

impl FhirService {
    /// Store resources (keeping their ids; assigning one when absent) in one
    /// transaction. Existing resources get a new version.
    pub async fn import_resources(&self, items: Vec<Value>) -> Result<usize, ImportFailure> {
        let mut tx = self
            .store()
            .begin_bulk()
            .await
            .map_err(|e| ImportFailure::Failed(e.into()))?;
        let n = self.resources_into(tx.as_mut(), items).await?;
        tx.commit()
            .await
            .map_err(|e| ImportFailure::Failed(e.into()))?;
        Ok(n)
    }

    /// Validate resources, then store them (ids kept) inside an existing transaction.
    pub async fn resources_into(
        &self,
        tx: &mut dyn StoreTx,
        items: Vec<Value>,
    ) -> Result<usize, ImportFailure> {
        self.check_resources(&items)
            .map_err(ImportFailure::Invalid)?;
        self.checked_resources_into(tx, items)
            .await
            .map_err(ImportFailure::Failed)
    }

    /// The validation of [`FhirService::resources_into`], which needs no store: every
    /// problem by the index of its item.
    pub fn check_resources(&self, items: &[Value]) -> Result<(), Vec<(usize, Vec<Issue>)>> {
        let mut problems = vec![];
        for (i, item) in items.iter().enumerate() {
            let mut issues = match check_body(item, None) {
                Ok(()) => vec![],
                Err(e) => e.issues(),
            };
            if let Some(id) = item.get("id").and_then(Value::as_str) {
                if !valid_id(id) {
                    issues.push(
                        Issue::error(IssueCode::Value, format!("'{id}' is not a valid FHIR id"))
                            .at("id"),
                    );
                }
            }
            if !issues.is_empty() {
                problems.push((i, issues));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// Store resources that passed [`FhirService::check_resources`] (ids kept; one
    /// assigned when absent) inside `tx`; existing resources get a new version.
    pub async fn checked_resources_into(
        &self,
        tx: &mut dyn StoreTx,
        items: Vec<Value>,
    ) -> Result<usize, FhirError> {
        let n = items.len();
        let keys: Vec<(String, String)> = items
            .iter()
            .map(|item| {
                let rtype = item
                    .get("resourceType")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let id = item
                    .get("id")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(new_id);
                (rtype, id)
            })
            .collect();
        let mut source = Source::new(items);
        // One lookup for the whole unit, so writes stream to the store without a
        // round trip each.
        let heads = tx.heads(&keys).await?;
        let mut seen = HashSet::new();
        // stored together (`put_many`: a bulk path where the backend has one)
        let mut batch = Batch::default();
        for ((rtype, id), head) in keys.into_iter().zip(heads) {
            let (item, index) = source.next().await?;
            if !seen.insert((rtype.clone(), id.clone())) {
                // The same resource twice in one unit: the later one is a new
                // version of the earlier.
                batch.store(tx).await?;
                tx_write(tx, &rtype, &id, item, None, Method::Put).await?;
                continue;
            }
            batch.push(prepare_version(
                &rtype,
                &id,
                item,
                index,
                head,
                Method::Put,
                None,
            )?);
            if batch.writes.len() >= WRITE_AHEAD || !batch.search_params.is_empty() {
                // Hand these to the store now: it writes them while the next ones
                // are prepared here. A SearchParameter is live once stored, and the
                // resources after it are indexed with it.
                batch.store(tx).await?;
            }
        }
        batch.store(tx).await?;
        Ok(n)
    }

    /// Store resources that passed [`FhirService::check_resources`] keeping their id,
    /// `meta.versionId` and `meta.lastUpdated` (Bulk Data IG import, `IncrementalLoad`):
    /// validated and indexed like every write. A resource whose stored version is
    /// already at or past the input's is left alone (so re-running an import is
    /// harmless); returns how many were written. A resource without `meta.versionId`
    /// becomes the next version, one without `meta.lastUpdated` is stamped now.
    pub async fn checked_versioned_into(
        &self,
        tx: &mut dyn StoreTx,
        items: Vec<Value>,
    ) -> Result<usize, FhirError> {
        let mut keys = Vec::with_capacity(items.len());
        for item in &items {
            let rtype = item
                .get("resourceType")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let id = item
                .get("id")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| {
                    FhirError::invalid_at(
                        IssueCode::Required,
                        "id",
                        "an incremental import keeps ids: every resource needs one",
                    )
                })?;
            keys.push((rtype, id));
        }
        let mut written = 0;
        let mut heads = tx.heads(&keys).await?;
        let mut seen: HashSet<&(String, String)> = HashSet::with_capacity(keys.len());
        let mut batch = Batch::default();
        for (i, (item, key)) in items.into_iter().zip(keys.iter()).enumerate() {
            let (rtype, id) = key;
            // The same resource twice in one unit: later lines see the earlier write.
            if !seen.insert(key) {
                batch.store(tx).await?;
                heads[i] = tx.heads(&keys[i..=i]).await?.remove(0);
            }
            let meta = item.get("meta");
            let given_version = match meta.and_then(|m| m.get("versionId")) {
                None => None,
                Some(v) => Some(v.as_str().and_then(|s| s.parse::<u64>().ok()).ok_or_else(
                    || {
                        FhirError::invalid_at(
                            IssueCode::Value,
                            "meta.versionId",
                            format!("{rtype}/{id}: meta.versionId {v} is not a positive integer"),
                        )
                    },
                )?),
            };
            let given_time = match meta.and_then(|m| m.get("lastUpdated")) {
                None => None,
                Some(v) => Some(
                    v.as_str()
                        .and_then(crate::time::parse_range)
                        .map(|(low, _)| low)
                        .ok_or_else(|| {
                            FhirError::invalid_at(
                                IssueCode::Value,
                                "meta.lastUpdated",
                                format!("{rtype}/{id}: meta.lastUpdated {v} is not an instant"),
                            )
                        })?,
                ),
            };
            let head = heads[i];
            let version = given_version.unwrap_or_else(|| head.map_or(1, |h| h.version + 1));
            if version == 0 {
                return Err(FhirError::invalid_at(
                    IssueCode::Value,
                    "meta.versionId",
                    format!("{rtype}/{id}: meta.versionId must be at least 1"),
                ));
            }
            if head.is_some_and(|h| h.version >= version) {
                continue;
            }
            let last_updated = given_time.unwrap_or_else(crate::time::now_micros);
            let index = index::extract(&item);
            batch.push(prepare_version(
                rtype,
                id,
                item,
                index,
                head,
                Method::Put,
                Some((version, last_updated)),
            )?);
            if batch.writes.len() >= WRITE_AHEAD {
                batch.store(tx).await?;
            }
            written += 1;
        }
        batch.store(tx).await?;
        Ok(written)
    }
}
