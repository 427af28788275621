//! The engine's durable records, kept in the FHIR store itself so that every backend
//! (and every process sharing a PostgreSQL database) sees them: `Binary` resources with
//! JSON content under ids starting `salus-sub` (never matched, written by the server
//! only — the access guard refuses other writers):
//!
//! - `Binary/salus-sub-engine`: the change-feed cursor and the lease of the process
//!   that matches and delivers;
//! - `Binary/salus-sub-<key>`: per subscription, the event counter, the delivery
//!   watermark, retry state, and the index of its retained event batches;
//! - `Binary/salus-sub-<key>-<n>`: the events numbered from `n` (one batch, written
//!   once, purged when no longer retained);
//! - `Binary/salus-sub-<key>-grant`: who created the subscription (the access grant
//!   notifications are read with), for the content digest it was recorded for;
//! - `Binary/salus-sub-secret`: the key websocket binding tokens are signed with.
//!
//! `<key>` is a digest of the Subscription id (ids may be 64 characters long).

use base64::Engine as _;
use salus_store::{Method, NewVersion, Store, StoreError, StoreTx};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub const ENGINE_ID: &str = "salus-sub-engine";
pub const SECRET_ID: &str = "salus-sub-secret";

/// The bookkeeping key of a subscription.
pub fn key(sub_id: &str) -> String {
    Sha256::digest(sub_id.as_bytes())
        .iter()
        .take(10)
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn state_id(sub_id: &str) -> String {
    format!("salus-sub-{}", key(sub_id))
}

pub fn batch_id(sub_id: &str, first: u64) -> String {
    format!("salus-sub-{}-{first}", key(sub_id))
}

pub fn grant_id(sub_id: &str) -> String {
    format!("salus-sub-{}-grant", key(sub_id))
}

/// One notification event (R5 `SubscriptionStatus.notificationEvent`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Event number, per subscription, from 1.
    pub n: u64,
    /// When the change was committed (micros).
    pub at: i64,
    pub rtype: String,
    pub id: String,
    pub version: u64,
    /// `POST`, `PUT`, `DELETE` (how the focus changed).
    pub method: String,
    /// The store's sequence number of the change.
    pub seq: i64,
}

/// Per-subscription delivery state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SubState {
    /// Events generated so far (`events-since-subscription-start`).
    pub count: u64,
    /// Highest event number delivered over rest-hook.
    pub delivered: u64,
    /// Retained event batches: (first, last) event numbers.
    pub batches: Vec<(u64, u64)>,
    /// Consecutive failed deliveries.
    pub failures: u32,
    /// No delivery attempt before this instant (micros).
    pub next_attempt: i64,
    pub last_error: Option<String>,
    /// Last notification (of any kind) sent over rest-hook (micros): heartbeats count
    /// from it.
    pub last_sent: i64,
    /// The content digest the last successful handshake was for.
    pub handshake_for: Option<String>,
    /// Undelivered events dropped because the backlog limit was reached.
    pub lost: u64,
}

/// The access grant a subscription's notifications are read with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grant {
    /// The [`crate::Spec::hash`] it was recorded for.
    pub hash: String,
    pub subject: String,
    pub client_id: Option<String>,
    pub scope: String,
    pub patient: Option<String>,
    pub fhir_user: Option<String>,
    pub roles: Vec<String>,
}

impl Grant {
    pub fn of(p: &salus_access::Principal, hash: &str) -> Grant {
        Grant {
            hash: hash.to_string(),
            subject: p.subject.clone(),
            client_id: p.client_id.clone(),
            scope: p.scope.clone(),
            patient: p.patient.clone(),
            fhir_user: p.fhir_user.clone(),
            roles: p.roles.clone(),
        }
    }

    pub fn principal(&self) -> Result<salus_access::Principal, String> {
        let mut p = salus_access::Principal::new(self.subject.clone(), self.scope.clone())
            .map_err(|e| format!("the recorded scopes no longer parse: {e}"))?;
        p.client_id = self.client_id.clone();
        p.patient = self.patient.clone();
        p.fhir_user = self.fhir_user.clone();
        p.roles = self.roles.clone();
        Ok(p)
    }
}

/// The change-feed position and the lease.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineState {
    /// Highest `seq` processed.
    pub cursor: i64,
    /// `seq`s below the cursor not seen yet, with when they were first missed (micros):
    /// on PostgreSQL a transaction may commit a smaller `seq` after a larger one.
    pub gaps: Vec<(i64, i64)>,
    /// The process holding the lease, and until when (micros).
    pub owner: String,
    pub lease_until: i64,
}

/// The content of a bookkeeping `Binary`, with its current version (for the write that
/// replaces it).
pub struct Loaded<T> {
    pub value: T,
    pub head: Option<salus_store::Head>,
}

fn decode<T: DeserializeOwned>(body: &str) -> Result<T, StoreError> {
    let v: Value = serde_json::from_str(body)
        .map_err(|e| StoreError::Backend(format!("bookkeeping record is not JSON: {e}")))?;
    let data = v.get("data").and_then(Value::as_str).unwrap_or("");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| StoreError::Backend(format!("bookkeeping record is not base64: {e}")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| StoreError::Backend(format!("bookkeeping record does not parse: {e}")))
}

/// Read a bookkeeping record outside a transaction.
pub async fn read<T: DeserializeOwned + Default>(
    store: &dyn Store,
    id: &str,
) -> Result<Loaded<T>, StoreError> {
    match store.read("Binary", id).await? {
        Some(r) => {
            let head = Some(salus_store::Head {
                version: r.version,
                last_updated: r.last_updated,
                deleted: r.is_deleted(),
            });
            match r.body.as_deref() {
                Some(b) => Ok(Loaded {
                    value: decode(b)?,
                    head,
                }),
                None => Ok(Loaded {
                    value: T::default(),
                    head,
                }),
            }
        }
        None => Ok(Loaded {
            value: T::default(),
            head: None,
        }),
    }
}

/// Read a bookkeeping record inside a transaction.
pub async fn read_tx<T: DeserializeOwned + Default>(
    tx: &mut dyn StoreTx,
    id: &str,
) -> Result<Loaded<T>, StoreError> {
    match tx.read("Binary", id).await? {
        Some(r) => {
            let head = Some(salus_store::Head {
                version: r.version,
                last_updated: r.last_updated,
                deleted: r.is_deleted(),
            });
            Ok(Loaded {
                value: match r.body.as_deref() {
                    Some(b) => decode(b)?,
                    None => T::default(),
                },
                head,
            })
        }
        None => Ok(Loaded {
            value: T::default(),
            head: None,
        }),
    }
}

/// Write a bookkeeping record over the version `head` (the store refuses the write if
/// another writer got there first).
pub async fn write<T: Serialize>(
    tx: &mut dyn StoreTx,
    id: &str,
    value: &T,
    head: Option<salus_store::Head>,
) -> Result<(), StoreError> {
    let version = head.map_or(1, |h| h.version + 1);
    let now = salus_fhir::instant::now_micros();
    let last_updated = head.map_or(now, |h| now.max(h.last_updated + 1));
    let data = serde_json::to_vec(value)
        .map_err(|e| StoreError::Backend(format!("cannot serialise bookkeeping: {e}")))?;
    let body = json!({
        "resourceType": "Binary",
        "id": id,
        "meta": {
            "versionId": version.to_string(),
            "lastUpdated": salus_fhir::instant::format_instant(last_updated),
            "tag": [{"system": salus_service::SALUS_CODES, "code": "subscription-bookkeeping"}]
        },
        "contentType": "application/json",
        "data": base64::engine::general_purpose::STANDARD.encode(data),
    });
    tx.put(NewVersion {
        rtype: "Binary".into(),
        id: id.to_string(),
        version,
        expected_version: head.map(|h| h.version),
        last_updated,
        method: if head.is_none_or(|h| h.deleted) {
            Method::Post
        } else {
            Method::Put
        },
        index: salus_search::extract::extract(&body),
        body: Some(body.to_string()),
        fulltext: None,
        contained: vec![],
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_short_and_stable() {
        let long = "x".repeat(64);
        assert!(state_id(&long).len() <= 64);
        assert!(batch_id(&long, u64::MAX).len() <= 64);
        assert!(grant_id(&long).len() <= 64);
        assert_eq!(state_id("a"), state_id("a"));
        assert_ne!(state_id("a"), state_id("b"));
        assert!(crate::is_bookkeeping("Binary", &batch_id("a", 1)));
        assert!(crate::is_bookkeeping("Binary", ENGINE_ID));
    }

    #[test]
    fn grants_round_trip() {
        let p = salus_access::Principal::new("u1", "user/Observation.rs patient/*.rs")
            .unwrap()
            .with_patient("p1")
            .with_roles(&["nurse"]);
        let g = Grant::of(&p, "h");
        let back = g.principal().unwrap();
        assert_eq!(back.scopes, p.scopes);
        assert_eq!(back.patient.as_deref(), Some("p1"));
        assert_eq!(back.roles, ["nurse"]);
    }
}
