//! Notification Bundles (Backport IG 1.1.0, R4: `backport-subscription-notification-r4`):
//! a `history` Bundle whose first entry is the subscription status as a `Parameters`
//! resource (`backport-subscription-status-r4`), followed by the focus resources as the
//! payload content asks (none, their URLs, or the resources themselves).

use crate::backport;
use crate::state::Event;
use serde_json::{json, Value};

/// `SubscriptionStatus.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Handshake,
    Heartbeat,
    EventNotification,
    QueryStatus,
    QueryEvent,
}

impl Kind {
    pub fn code(self) -> &'static str {
        match self {
            Kind::Handshake => "handshake",
            Kind::Heartbeat => "heartbeat",
            Kind::EventNotification => "event-notification",
            Kind::QueryStatus => "query-status",
            Kind::QueryEvent => "query-event",
        }
    }
}

/// What the status part says.
pub struct Status<'a> {
    pub base: &'a str,
    pub sub_id: &'a str,
    pub topic: Option<&'a str>,
    pub status: &'a str,
    pub kind: Kind,
    pub events_since_start: u64,
    pub error: Option<&'a str>,
}

/// One event with what the payload carries about its focus.
pub struct Item<'a> {
    pub event: &'a Event,
    /// Include the focus reference (`id-only`, `full-resource`).
    pub reference: bool,
    /// The focus resource (`full-resource`, and only when the subscriber may read it).
    pub resource: Option<Value>,
}

fn focus_url(base: &str, e: &Event) -> String {
    format!("{base}/{}/{}/_history/{}", e.rtype, e.id, e.version)
}

/// The `Parameters` status resource.
pub fn status_parameters(s: &Status<'_>, items: &[Item<'_>]) -> Value {
    let mut params = vec![
        json!({"name": "subscription", "valueReference": {"reference": format!("{}/Subscription/{}", s.base, s.sub_id)}}),
    ];
    if let Some(t) = s.topic {
        params.push(json!({"name": "topic", "valueCanonical": t}));
    }
    params.push(json!({"name": "status", "valueCode": s.status}));
    params.push(json!({"name": "type", "valueCode": s.kind.code()}));
    params.push(json!({"name": "events-since-subscription-start", "valueString": s.events_since_start.to_string()}));
    for it in items {
        let mut parts = vec![
            json!({"name": "event-number", "valueString": it.event.n.to_string()}),
            json!({"name": "timestamp", "valueInstant": salus_fhir::instant::format_instant(it.event.at)}),
        ];
        if it.reference {
            parts.push(json!({"name": "focus", "valueReference": {"reference": focus_url(s.base, it.event)}}));
        }
        params.push(json!({"name": "notification-event", "part": parts}));
    }
    if let Some(e) = s.error {
        params.push(json!({"name": "error", "valueCodeableConcept": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/subscription-error", "code": "no-response"}],
            "text": e}}));
    }
    json!({
        "resourceType": "Parameters",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": {"profile": [backport::STATUS_PROFILE]},
        "parameter": params,
    })
}

fn response_status(e: &Event) -> &'static str {
    match e.method.as_str() {
        "POST" => "201",
        "DELETE" => "204",
        _ => "200",
    }
}

/// A notification Bundle (`history`), or for `$status` a `searchset` of the status.
pub fn bundle(s: &Status<'_>, items: &[Item<'_>]) -> Value {
    let status = status_parameters(s, items);
    let status_url = format!("{}/Subscription/{}/$status", s.base, s.sub_id);
    let mut entries = vec![json!({
        "fullUrl": format!("urn:uuid:{}", status["id"].as_str().unwrap_or_default()),
        "resource": status,
        "request": {"method": "GET", "url": status_url},
        "response": {"status": "200"},
    })];
    for it in items.iter().filter(|i| i.reference) {
        let e = it.event;
        let mut entry = json!({
            "fullUrl": format!("{}/{}/{}", s.base, e.rtype, e.id),
            "request": {"method": e.method, "url": format!("{}/{}", e.rtype, e.id)},
            "response": {"status": response_status(e),
                "etag": format!("W/\"{}\"", e.version),
                "lastModified": salus_fhir::instant::format_instant(e.at)},
        });
        if let Some(r) = &it.resource {
            entry["resource"] = r.clone();
        }
        entries.push(entry);
    }
    json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": {"profile": [backport::NOTIFICATION_PROFILE]},
        "type": "history",
        "timestamp": salus_fhir::instant::format_instant(salus_fhir::instant::now_micros()),
        "entry": entries,
    })
}

/// `$status`: a `searchset` Bundle of status resources.
pub fn status_searchset(statuses: Vec<Value>) -> Value {
    let total = statuses.len();
    json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "entry": statuses.into_iter().map(|p| json!({
            "fullUrl": format!("urn:uuid:{}", p["id"].as_str().unwrap_or_default()),
            "resource": p,
            "search": {"mode": "match"}
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u64, method: &str) -> Event {
        Event {
            n,
            at: 1_775_000_000_000_000,
            rtype: "Observation".into(),
            id: "o1".into(),
            version: n,
            method: method.into(),
            seq: 10 + n as i64,
        }
    }

    #[test]
    fn notification_bundles_follow_the_backport_profile() {
        let (e1, e2) = (event(1, "POST"), event(2, "DELETE"));
        let s = Status {
            base: "https://fhir.example.org",
            sub_id: "s1",
            topic: Some("https://salus.dev/fhir/SubscriptionTopic/resource-change"),
            status: "active",
            kind: Kind::EventNotification,
            events_since_start: 2,
            error: None,
        };
        let b = bundle(
            &s,
            &[
                Item {
                    event: &e1,
                    reference: true,
                    resource: Some(json!({"resourceType": "Observation", "id": "o1"})),
                },
                Item {
                    event: &e2,
                    reference: true,
                    resource: None,
                },
            ],
        );
        assert_eq!(b["type"], "history");
        let status = &b["entry"][0]["resource"];
        assert_eq!(status["resourceType"], "Parameters");
        assert_eq!(status["meta"]["profile"][0], backport::STATUS_PROFILE);
        let p = status["parameter"].as_array().unwrap();
        let named = |n: &str| p.iter().filter(|x| x["name"] == n).collect::<Vec<_>>();
        assert_eq!(named("type")[0]["valueCode"], "event-notification");
        assert_eq!(
            named("events-since-subscription-start")[0]["valueString"],
            "2"
        );
        assert_eq!(named("notification-event").len(), 2);
        assert_eq!(
            named("notification-event")[0]["part"][2]["valueReference"]["reference"],
            "https://fhir.example.org/Observation/o1/_history/1"
        );
        assert_eq!(b["entry"][1]["resource"]["id"], "o1");
        assert_eq!(b["entry"][1]["response"]["status"], "201");
        assert!(b["entry"][2].get("resource").is_none());
        assert_eq!(b["entry"][2]["request"]["method"], "DELETE");

        let empty = bundle(
            &s,
            &[Item {
                event: &e1,
                reference: false,
                resource: None,
            }],
        );
        assert_eq!(
            empty["entry"].as_array().unwrap().len(),
            1,
            "empty: the status only"
        );
        let ev = &empty["entry"][0]["resource"]["parameter"];
        assert!(
            ev.as_array()
                .unwrap()
                .iter()
                .any(|x| x["name"] == "notification-event"
                    && x["part"].as_array().unwrap().len() == 2)
        );
    }
}
