//! Consent enforcement (R4 consent.html, "privacy" consents): an active Consent whose
//! root provision is `deny` and names the caller as an actor — or names a purpose of
//! use the request declares — blocks that caller from the patient's compartment.
//!
//! The denying Consents are looked up once per request (two indexed searches) and
//! become an exclusion in every grant (see `access.rs`), so reads, searches, includes,
//! history and writes all honour them.

use crate::{FhirService, Result};
use salus_fhir::instant as time;
use salus_store::{Clause, RefMatch, SearchQuery, Store, TokenMatch};
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::Arc;

/// Whether a Consent's root provision denies, and is in force now.
fn denies_now(consent: &Value, now: i64) -> bool {
    if consent.get("status").and_then(Value::as_str) != Some("active") {
        return false;
    }
    let Some(p) = consent.get("provision") else {
        return false;
    };
    if p.get("type").and_then(Value::as_str) != Some("deny") {
        return false;
    }
    let bound = |k: &str| {
        p.get("period")
            .and_then(|per| per.get(k))
            .and_then(Value::as_str)
            .and_then(time::parse_range)
    };
    if let Some((start, _)) = bound("start") {
        if now < start {
            return false;
        }
    }
    if let Some((_, end)) = bound("end") {
        if now > end {
            return false;
        }
    }
    true
}

fn patient_of(consent: &Value) -> Option<String> {
    consent
        .get("patient")?
        .get("reference")?
        .as_str()?
        .strip_prefix("Patient/")
        .map(str::to_owned)
}

async fn denying(store: &Arc<dyn Store>, clause: Clause, out: &mut BTreeSet<String>) -> Result<()> {
    let mut q = SearchQuery::new("Consent");
    q.count = 1000;
    q.clauses = vec![
        Clause::Token {
            param: "status".into(),
            any: vec![TokenMatch {
                system: None,
                code: Some("active".into()),
            }],
        },
        clause,
    ];
    let now = time::now_micros();
    for r in store.search(&q).await?.entries {
        let Some(body) = r.body.as_deref() else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(body) else {
            continue;
        };
        if denies_now(&v, now) {
            if let Some(p) = patient_of(&v) {
                out.insert(p);
            }
        }
    }
    Ok(())
}

impl FhirService {
    /// The patients whose active Consents deny `actor` (a reference such as
    /// `Practitioner/1`) or one of `purposes` (`system|code` or `code`).
    pub async fn consent_denials(
        &self,
        actor: Option<&str>,
        purposes: &[String],
    ) -> Result<Vec<String>> {
        let store = self.unguarded_store().clone();
        let mut out = BTreeSet::new();
        if let Some((t, id)) = actor.and_then(|a| a.split_once('/')) {
            let clause = Clause::Reference {
                param: "actor".into(),
                any: vec![RefMatch {
                    target_type: Some(t.to_string()),
                    target_id: id.to_string(),
                    version: None,
                }],
            };
            denying(&store, clause, &mut out).await?;
        }
        for p in purposes {
            let (system, code) = match p.split_once('|') {
                Some((s, c)) => (Some(s.to_string()), c.to_string()),
                None => (None, p.clone()),
            };
            let clause = Clause::Token {
                param: "purpose".into(),
                any: vec![TokenMatch {
                    system,
                    code: Some(code),
                }],
            };
            denying(&store, clause, &mut out).await?;
        }
        Ok(out.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_active_denials_in_force_count() {
        let now = time::parse_range("2025-06-01T00:00:00Z").unwrap().0;
        let c = json!({"status": "active", "provision": {"type": "deny"}});
        assert!(denies_now(&c, now));
        assert!(!denies_now(
            &json!({"status": "inactive", "provision": {"type": "deny"}}),
            now
        ));
        assert!(!denies_now(
            &json!({"status": "active", "provision": {"type": "permit"}}),
            now
        ));
        let past = json!({"status": "active", "provision": {"type": "deny", "period": {"end": "2024-12-31"}}});
        assert!(!denies_now(&past, now));
        let future = json!({"status": "active", "provision": {"type": "deny", "period": {"start": "2026-01-01"}}});
        assert!(!denies_now(&future, now));
    }
}
