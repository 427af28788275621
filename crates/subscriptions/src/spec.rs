//! A `Subscription` resource read into what the engine runs: an R4 criteria
//! subscription (`criteria` = `Observation?code=…`) or a Backport IG topic-based one
//! (`criteria` = topic canonical, filters in `_criteria`'s `backport-filter-criteria`
//! extensions, channel details in the `backport-*` extensions). Anything the engine
//! could not honour is refused with a message naming the element.

use crate::backport;
use crate::matcher::{compile, Compiled};
use crate::topic::{Topic, Topics};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// What triggers notifications.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Backport topic-based: the topic's canonical URL.
    Topic(String),
    /// R4 criteria: notify on creates and updates of resources matching `criteria`.
    Criteria,
}

/// How notifications travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    RestHook,
    Websocket,
}

/// What a notification carries (Backport IG `backport-content-value-set`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    Empty,
    IdOnly,
    FullResource,
}

impl Content {
    pub fn code(self) -> &'static str {
        match self {
            Content::Empty => "empty",
            Content::IdOnly => "id-only",
            Content::FullResource => "full-resource",
        }
    }

    pub fn parse(s: &str) -> Option<Content> {
        Some(match s {
            "empty" => Content::Empty,
            "id-only" => Content::IdOnly,
            "full-resource" => Content::FullResource,
            _ => return None,
        })
    }
}

/// One filter: a resource type and criteria on it.
#[derive(Debug, Clone)]
pub struct Filter {
    pub rtype: String,
    pub query: String,
    pub compiled: Compiled,
}

/// Where rest-hook endpoints may point.
#[derive(Debug, Clone, Default)]
pub struct EndpointPolicy {
    /// URL prefixes endpoints must start with; empty: any `https` URL (and `http` on
    /// loopback).
    pub allowed: Vec<String>,
}

impl EndpointPolicy {
    pub fn check(&self, endpoint: &str) -> Result<(), String> {
        let url = reqwest::Url::parse(endpoint)
            .map_err(|e| format!("channel.endpoint '{endpoint}' is not a URL: {e}"))?;
        let host = url.host_str().unwrap_or("");
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|a| a.is_loopback());
        match url.scheme() {
            "https" => {}
            "http" if loopback => {}
            "http" => {
                return Err(format!(
                    "channel.endpoint must use https (plain http only to a loopback address), got '{endpoint}'"
                ))
            }
            s => return Err(format!("channel.endpoint: scheme '{s}' is not supported (https)")),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("channel.endpoint must not carry credentials; use channel.header".into());
        }
        if !self.allowed.is_empty()
            && !self
                .allowed
                .iter()
                .any(|p| endpoint.starts_with(p.as_str()))
        {
            return Err(format!(
                "channel.endpoint '{endpoint}' is not on this server's list of allowed endpoints"
            ));
        }
        Ok(())
    }
}

/// A subscription as the engine runs it.
#[derive(Debug, Clone)]
pub struct Spec {
    pub id: String,
    /// `Subscription.status` as stored.
    pub status: String,
    pub mode: Mode,
    /// The criteria (one, for [`Mode::Criteria`]) or the topic's filters (ANDed per type).
    pub filters: Vec<Filter>,
    pub channel: Channel,
    pub endpoint: Option<String>,
    /// `channel.header`, split at the first `:`.
    pub headers: Vec<(String, String)>,
    /// `channel.payload` (a MIME type), when given.
    pub payload: Option<String>,
    pub content: Content,
    /// Seconds without traffic after which a heartbeat is sent.
    pub heartbeat: Option<u64>,
    /// Seconds a rest-hook delivery may take.
    pub timeout: u64,
    /// Events per notification.
    pub max_count: usize,
    /// `Subscription.end` (micros).
    pub end: Option<i64>,
    /// A digest of everything the subscriber chose (not the status): the access grant
    /// recorded for a subscription is valid for this content only.
    pub hash: String,
}

impl Spec {
    pub fn topic_url(&self) -> Option<&str> {
        match &self.mode {
            Mode::Topic(t) => Some(t),
            Mode::Criteria => None,
        }
    }
}

/// Most seconds a rest-hook delivery may take.
pub const MAX_TIMEOUT: u64 = 120;
/// Most events in one notification.
pub const MAX_COUNT: usize = 1000;

fn ext<'a>(v: &'a Value, url: &str) -> impl Iterator<Item = &'a Value> + 'a {
    let url = url.to_string();
    v.get("extension")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(move |e| e.get("url").and_then(Value::as_str) == Some(url.as_str()))
}

fn ext_u64(v: &Value, url: &str, what: &str) -> Result<Option<u64>, String> {
    match ext(v, url).next() {
        None => Ok(None),
        Some(e) => e
            .get("valueUnsignedInt")
            .or_else(|| e.get("valuePositiveInt"))
            .or_else(|| e.get("valueInteger"))
            .and_then(Value::as_u64)
            .map(Some)
            .ok_or_else(|| format!("{what} must be a non-negative integer")),
    }
}

/// Split `Type?criteria` (or bare criteria for a topic with one resource type).
fn split_filter(text: &str, default_type: Option<&str>) -> Result<(String, String), String> {
    match text.split_once('?') {
        Some((t, q)) => {
            let t = t.trim_start_matches('/');
            let t = t.rsplit('/').next().unwrap_or(t);
            if !salus_fhir::defs::is_resource_type(t) {
                return Err(format!("'{t}' is not an R4 resource type"));
            }
            Ok((t.to_string(), q.to_string()))
        }
        None => match default_type {
            Some(t) => Ok((t.to_string(), text.to_string())),
            None => Err(format!(
                "'{text}' must name its resource type (Type?param=value): the topic covers several"
            )),
        },
    }
}

/// Read and check a Subscription.
pub fn parse(sub: &Value, topics: &Topics, policy: &EndpointPolicy) -> Result<Spec, String> {
    if sub.get("resourceType").and_then(Value::as_str) != Some("Subscription") {
        return Err("not a Subscription".into());
    }
    let id = sub
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let status = sub
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("requested")
        .to_string();
    let criteria = sub
        .get("criteria")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .ok_or("Subscription.criteria is required: a topic canonical URL or Type?criteria")?;
    let topical = criteria.starts_with("http://")
        || criteria.starts_with("https://")
        || criteria.starts_with("urn:");
    let mut filters = vec![];
    let mode = if topical {
        let topic: &Topic = topics.get(criteria).ok_or_else(|| {
            format!("Subscription.criteria: '{criteria}' is not a topic of this server (see the CapabilityStatement)")
        })?;
        let types = topic.resources();
        let only = match types.as_slice() {
            [one] if *one != "*" => Some(*one),
            _ => None,
        };
        let crit_ext = sub.get("_criteria").cloned().unwrap_or(Value::Null);
        for (i, f) in ext(&crit_ext, backport::FILTER_CRITERIA).enumerate() {
            let at = format!("Subscription._criteria filter {}", i + 1);
            let text = f
                .get("valueString")
                .and_then(Value::as_str)
                .ok_or(format!("{at}: valueString is required"))?;
            let (rtype, query) = split_filter(text, only).map_err(|e| format!("{at}: {e}"))?;
            if !types.iter().any(|t| *t == "*" || *t == rtype) {
                return Err(format!(
                    "{at}: the topic does not notify about {rtype} (it covers {})",
                    types.join(", ")
                ));
            }
            for (k, _) in salus_service::parse_pairs(&query) {
                let name = k.split(':').next().unwrap_or(&k);
                if !topic.allows_filter(&rtype, name) {
                    return Err(format!(
                        "{at}: the topic does not allow filtering {rtype} by '{name}'"
                    ));
                }
            }
            let compiled = compile(&rtype, &query).map_err(|e| format!("{at}: {e}"))?;
            filters.push(Filter {
                rtype,
                query,
                compiled,
            });
        }
        Mode::Topic(topic.url.clone())
    } else {
        let (rtype, query) =
            split_filter(criteria, None).map_err(|e| format!("Subscription.criteria: {e}"))?;
        let compiled = if query.trim().is_empty() {
            None
        } else {
            Some(compile(&rtype, &query).map_err(|e| format!("Subscription.criteria: {e}"))?)
        };
        if let Some(compiled) = compiled {
            filters.push(Filter {
                rtype,
                query,
                compiled,
            });
        } else {
            // `Observation?` (every Observation): a filter with no clauses.
            filters.push(Filter {
                rtype: rtype.clone(),
                query: String::new(),
                compiled: Compiled::Plan(salus_store::SearchQuery::new(rtype)),
            });
        }
        Mode::Criteria
    };
    let channel = sub
        .get("channel")
        .ok_or("Subscription.channel is required")?;
    let mut ctype = channel
        .get("type")
        .and_then(Value::as_str)
        .ok_or("Subscription.channel.type is required")?
        .to_string();
    if let Some(e) = channel
        .get("_type")
        .and_then(|t| ext(t, backport::CHANNEL_TYPE).next())
    {
        if let Some(code) = e.pointer("/valueCoding/code").and_then(Value::as_str) {
            ctype = code.to_string();
        }
    }
    let channel_kind = match ctype.as_str() {
        "rest-hook" => Channel::RestHook,
        "websocket" => Channel::Websocket,
        other => {
            return Err(format!(
                "Subscription.channel.type '{other}' is not supported (rest-hook, websocket)"
            ))
        }
    };
    let endpoint = channel
        .get("endpoint")
        .and_then(Value::as_str)
        .map(str::to_string);
    if channel_kind == Channel::RestHook {
        let e = endpoint
            .as_deref()
            .ok_or("Subscription.channel.endpoint is required for rest-hook")?;
        policy.check(e)?;
    }
    let mut headers = vec![];
    for h in channel
        .get("header")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let h = h
            .as_str()
            .ok_or("Subscription.channel.header must be strings")?;
        let (name, value) = h.split_once(':').ok_or(format!(
            "Subscription.channel.header '{h}' is not 'Name: value'"
        ))?;
        let name = name.trim();
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err()
            || reqwest::header::HeaderValue::from_str(value.trim()).is_err()
        {
            return Err(format!(
                "Subscription.channel.header '{name}' is not a valid HTTP header"
            ));
        }
        if matches!(
            name.to_ascii_lowercase().as_str(),
            "content-type" | "content-length" | "host"
        ) {
            return Err(format!("Subscription.channel.header may not set '{name}'"));
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }
    let payload = channel
        .get("payload")
        .and_then(Value::as_str)
        .map(str::to_string);
    if let Some(p) = &payload {
        if !matches!(p.as_str(), "application/fhir+json" | "application/json") {
            return Err(format!(
                "Subscription.channel.payload '{p}' is not supported (application/fhir+json)"
            ));
        }
    }
    let declared = channel
        .get("_payload")
        .and_then(|p| ext(p, backport::PAYLOAD_CONTENT).next())
        .map(|e| {
            e.get("valueCode")
                .and_then(Value::as_str)
                .and_then(Content::parse)
                .ok_or("channel._payload content must be empty, id-only or full-resource")
        })
        .transpose()?;
    let content = match (&mode, &payload, declared) {
        (_, None, _) => Content::Empty,
        (Mode::Criteria, Some(_), _) => Content::FullResource,
        (Mode::Topic(_), Some(_), Some(c)) => c,
        (Mode::Topic(_), Some(_), None) => Content::IdOnly,
    };
    let heartbeat =
        ext_u64(channel, backport::HEARTBEAT_PERIOD, "heartbeat period")?.filter(|h| *h > 0);
    let timeout = ext_u64(channel, backport::TIMEOUT, "timeout")?.unwrap_or(10);
    if timeout == 0 || timeout > MAX_TIMEOUT {
        return Err(format!("channel timeout must be 1..{MAX_TIMEOUT} seconds"));
    }
    let max_count = ext_u64(channel, backport::MAX_COUNT, "max count")?.unwrap_or(1) as usize;
    if max_count == 0 || max_count > MAX_COUNT {
        return Err(format!("channel max count must be 1..{MAX_COUNT}"));
    }
    let end = match sub.get("end").and_then(Value::as_str) {
        None => None,
        Some(e) => Some(
            salus_fhir::instant::parse_range(e)
                .ok_or(format!("Subscription.end '{e}' is not an instant"))?
                .0,
        ),
    };
    let chosen = serde_json::json!({
        "criteria": criteria,
        "filters": filters.iter().map(|f| format!("{}?{}", f.rtype, f.query)).collect::<Vec<_>>(),
        "channel": ctype, "endpoint": endpoint, "headers": headers, "payload": payload,
        "content": content.code(), "end": end,
    });
    let hash = Sha256::digest(chosen.to_string().as_bytes())
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Spec {
        id,
        status,
        mode,
        filters,
        channel: channel_kind,
        endpoint,
        headers,
        payload,
        content,
        heartbeat,
        timeout,
        max_count,
        end,
        hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn topic_sub() -> Value {
        json!({"resourceType": "Subscription", "id": "s1", "status": "requested", "reason": "test",
            "criteria": "https://salus.dev/fhir/SubscriptionTopic/patient-observation",
            "_criteria": {"extension": [{"url": backport::FILTER_CRITERIA, "valueString": "Observation?code=http://loinc.org|8867-4&patient=Patient/p1"}]},
            "channel": {"type": "rest-hook", "endpoint": "https://hooks.example.org/salus",
                "header": ["Authorization: Bearer abc"],
                "payload": "application/fhir+json",
                "_payload": {"extension": [{"url": backport::PAYLOAD_CONTENT, "valueCode": "full-resource"}]},
                "extension": [{"url": backport::HEARTBEAT_PERIOD, "valueUnsignedInt": 60},
                              {"url": backport::MAX_COUNT, "valuePositiveInt": 10}]}})
    }

    #[test]
    fn topic_subscriptions_are_read() {
        let s = parse(&topic_sub(), &Topics::builtin(), &EndpointPolicy::default()).unwrap();
        assert!(matches!(s.mode, Mode::Topic(_)));
        assert_eq!(s.filters.len(), 1);
        assert_eq!(s.filters[0].rtype, "Observation");
        assert_eq!(s.content, Content::FullResource);
        assert_eq!(s.heartbeat, Some(60));
        assert_eq!(s.max_count, 10);
        assert_eq!(
            s.headers,
            [("Authorization".to_string(), "Bearer abc".to_string())]
        );
        let mut other = topic_sub();
        other["status"] = json!("active");
        let t = parse(&other, &Topics::builtin(), &EndpointPolicy::default()).unwrap();
        assert_eq!(
            t.hash, s.hash,
            "the status is not part of the subscriber's choice"
        );
        other["channel"]["endpoint"] = json!("https://elsewhere.example.org/");
        let t = parse(&other, &Topics::builtin(), &EndpointPolicy::default()).unwrap();
        assert_ne!(t.hash, s.hash);
    }

    #[test]
    fn problems_are_named() {
        let topics = Topics::builtin();
        let policy = EndpointPolicy::default();
        let err = |f: &dyn Fn(&mut Value)| {
            let mut v = topic_sub();
            f(&mut v);
            parse(&v, &topics, &policy).unwrap_err()
        };
        assert!(
            err(&|v| v["criteria"] = json!("https://example.org/no-topic")).contains("not a topic")
        );
        assert!(err(&|v| v["_criteria"]["extension"][0]["valueString"] =
            json!("Observation?value-quantity=1"))
        .contains("does not allow filtering Observation by 'value-quantity'"));
        assert!(
            err(&|v| v["_criteria"]["extension"][0]["valueString"] = json!("Patient?name=x"))
                .contains("does not notify about Patient")
        );
        assert!(
            err(&|v| v["channel"]["endpoint"] = json!("http://hooks.example.org/"))
                .contains("https")
        );
        assert!(err(&|v| v["channel"]["type"] = json!("email")).contains("not supported"));
        assert!(
            err(&|v| v["channel"]["payload"] = json!("application/fhir+xml"))
                .contains("not supported")
        );
        assert!(err(&|v| v["channel"]["header"] = json!(["no colon"])).contains("Name: value"));
        assert!(
            err(&|v| v["channel"]["extension"][1]["valuePositiveInt"] = json!(0))
                .contains("max count")
        );
        let e = err(&|v| v["criteria"] = json!("Observation?bogus=1"));
        assert!(e.contains("Subscription.criteria"), "{e}");
    }

    #[test]
    fn criteria_subscriptions_and_endpoints() {
        let v = json!({"resourceType": "Subscription", "status": "requested", "reason": "r",
            "criteria": "Observation?code=http://loinc.org|8867-4",
            "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/hook", "payload": "application/fhir+json"}});
        let s = parse(&v, &Topics::builtin(), &EndpointPolicy::default()).unwrap();
        assert!(matches!(s.mode, Mode::Criteria));
        assert_eq!(s.content, Content::FullResource);
        let allow = EndpointPolicy {
            allowed: vec!["https://hooks.example.org/".into()],
        };
        assert!(allow.check("https://hooks.example.org/x").is_ok());
        assert!(allow
            .check("https://evil.example.org/x")
            .unwrap_err()
            .contains("allowed"));
        assert!(EndpointPolicy::default()
            .check("http://localhost:8080/x")
            .is_ok());
        assert!(EndpointPolicy::default()
            .check("http://[::1]:8080/x")
            .is_ok());
        assert!(EndpointPolicy::default()
            .check("https://u:p@example.org/")
            .is_err());
        assert!(EndpointPolicy::default()
            .check("ftp://example.org/")
            .is_err());
    }
}
