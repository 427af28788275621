//! Subscription topics. R4 has no `SubscriptionTopic` resource, so (as the Backport IG
//! describes for R4 servers) topics are server definitions named by canonical URL and
//! advertised in the CapabilityStatement. Salus ships the built-in ones below; an
//! administrator adds more as R4B `SubscriptionTopic` JSON files named in the
//! configuration (`subscriptions.topics`), read at start.

use salus_store::Method;
use serde_json::Value;

/// Canonical URL prefix of the built-in topics.
pub const BUILTIN_BASE: &str = "https://salus.dev/fhir/SubscriptionTopic/";

/// One `SubscriptionTopic.resourceTrigger`.
#[derive(Debug, Clone)]
pub struct Trigger {
    /// Resource type, or `*` for every type.
    pub resource: String,
    pub create: bool,
    pub update: bool,
    pub delete: bool,
    /// `queryCriteria.previous` / `.current`: search criteria without the type.
    pub previous: Option<String>,
    pub current: Option<String>,
    /// `queryCriteria.resultForCreate == test-passes` (the missing previous version).
    pub result_for_create: bool,
    /// `queryCriteria.resultForDelete == test-passes` (the missing current version).
    pub result_for_delete: bool,
    pub require_both: bool,
    /// `fhirPathCriteria`, evaluated with `%previous` and `%current` (and the current
    /// version, or the previous one for a deletion, as the focus).
    pub fhirpath: Option<salus_fhirpath::Expr>,
}

impl Trigger {
    fn any(resource: &str, create: bool, update: bool, delete: bool) -> Trigger {
        Trigger {
            resource: resource.to_string(),
            create,
            update,
            delete,
            previous: None,
            current: None,
            result_for_create: true,
            result_for_delete: true,
            require_both: false,
            fhirpath: None,
        }
    }

    /// Whether this trigger covers a change of `rtype` by `interaction`.
    pub fn covers(&self, rtype: &str, interaction: Interaction) -> bool {
        (self.resource == "*" || self.resource == rtype)
            && match interaction {
                Interaction::Create => self.create,
                Interaction::Update => self.update,
                Interaction::Delete => self.delete,
            }
    }
}

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interaction {
    Create,
    Update,
    Delete,
}

impl Interaction {
    /// From the stored version: deletion, first live version, or a later one.
    pub fn of(method: Method, deleted: bool, previous_live: bool) -> Interaction {
        if deleted || method == Method::Delete {
            Interaction::Delete
        } else if previous_live {
            Interaction::Update
        } else {
            Interaction::Create
        }
    }
}

/// One `SubscriptionTopic.canFilterBy`.
#[derive(Debug, Clone)]
pub struct FilterBy {
    /// Resource type (`None`: the topic's only resource type, or any).
    pub resource: Option<String>,
    /// Search parameter name; `*`: every search parameter of the resource.
    pub parameter: String,
}

/// A topic clients may subscribe to.
#[derive(Debug, Clone)]
pub struct Topic {
    pub url: String,
    pub title: String,
    pub description: String,
    pub triggers: Vec<Trigger>,
    pub can_filter_by: Vec<FilterBy>,
}

impl Topic {
    /// The resource types this topic can notify about (`*` for all).
    pub fn resources(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self.triggers.iter().map(|t| t.resource.as_str()).collect();
        out.dedup();
        out
    }

    /// Whether a filter on `rtype` by `param` is allowed.
    pub fn allows_filter(&self, rtype: &str, param: &str) -> bool {
        self.can_filter_by.iter().any(|f| {
            f.resource.as_deref().is_none_or(|r| r == rtype || r == "*")
                && (f.parameter == "*" || f.parameter == param)
        })
    }

    /// The topic as R4B `SubscriptionTopic` JSON (for documentation and `$status`).
    pub fn to_json(&self) -> Value {
        let triggers: Vec<Value> = self
            .triggers
            .iter()
            .map(|t| {
                let mut interactions = vec![];
                for (on, code) in [(t.create, "create"), (t.update, "update"), (t.delete, "delete")] {
                    if on {
                        interactions.push(Value::from(code));
                    }
                }
                let mut v = serde_json::json!({
                    "resource": if t.resource == "*" { "http://hl7.org/fhir/StructureDefinition/Resource".to_string() } else { format!("http://hl7.org/fhir/StructureDefinition/{}", t.resource) },
                    "supportedInteraction": interactions,
                });
                if t.previous.is_some() || t.current.is_some() {
                    let mut q = serde_json::Map::new();
                    if let Some(p) = &t.previous {
                        q.insert("previous".into(), p.clone().into());
                        q.insert(
                            "resultForCreate".into(),
                            if t.result_for_create { "test-passes" } else { "test-fails" }.into(),
                        );
                    }
                    if let Some(c) = &t.current {
                        q.insert("current".into(), c.clone().into());
                        q.insert(
                            "resultForDelete".into(),
                            if t.result_for_delete { "test-passes" } else { "test-fails" }.into(),
                        );
                    }
                    q.insert("requireBoth".into(), t.require_both.into());
                    v["queryCriteria"] = Value::Object(q);
                }
                if let Some(f) = &t.fhirpath {
                    v["fhirPathCriteria"] = f.source().into();
                }
                v
            })
            .collect();
        serde_json::json!({
            "resourceType": "SubscriptionTopic",
            "url": self.url,
            "title": self.title,
            "status": "active",
            "description": self.description,
            "resourceTrigger": triggers,
            "canFilterBy": self.can_filter_by.iter().map(|f| {
                let mut v = serde_json::json!({"filterParameter": f.parameter});
                if let Some(r) = &f.resource { v["resource"] = r.clone().into(); }
                v
            }).collect::<Vec<_>>(),
        })
    }
}

/// The topics this server offers.
#[derive(Debug, Clone)]
pub struct Topics {
    list: Vec<Topic>,
}

impl Default for Topics {
    fn default() -> Self {
        Topics::builtin()
    }
}

fn filters(resource: &str, params: &[&str]) -> Vec<FilterBy> {
    params
        .iter()
        .map(|p| FilterBy {
            resource: Some(resource.to_string()),
            parameter: p.to_string(),
        })
        .collect()
}

impl Topics {
    /// The built-in topics (docs/subscriptions.md lists them).
    pub fn builtin() -> Topics {
        let any_filter = vec![FilterBy {
            resource: None,
            parameter: "*".into(),
        }];
        let change = |name: &str, title: &str, c: bool, u: bool, d: bool| {
            Topic {
            url: format!("{BUILTIN_BASE}{name}"),
            title: title.to_string(),
            description: format!(
                "{title}. Filter by type and any search parameter, e.g. Observation?code=http://loinc.org|8867-4"
            ),
            triggers: vec![Trigger::any("*", c, u, d)],
            can_filter_by: any_filter.clone(),
        }
        };
        let status_change = |resource: &str, status: &str| Trigger {
            previous: Some(format!("status:not={status}")),
            current: Some(format!("status={status}")),
            result_for_create: true,
            result_for_delete: false,
            require_both: true,
            ..Trigger::any(resource, true, true, false)
        };
        let alert_fhirpath = salus_fhirpath::parse(
            "%current.reasonCode.coding.where(system = 'urn:salus:devices:alert-rule').exists()",
        )
        .expect("built-in FHIRPath parses");
        let flag_raised = salus_fhirpath::parse(
            "%current.status = 'active' and (%previous.empty() or %previous.status != 'active') \
             and %current.code.coding.where(system = 'urn:salus:devices:alert-rule').exists()",
        )
        .expect("built-in FHIRPath parses");
        let list = vec![
            change("resource-change", "Any resource created, updated or deleted", true, true, true),
            change("resource-created", "Any resource created", true, false, false),
            change("resource-updated", "Any resource updated", false, true, false),
            change("resource-deleted", "Any resource deleted", false, false, true),
            Topic {
                url: format!("{BUILTIN_BASE}encounter-start"),
                title: "Encounter started".into(),
                description: "An Encounter becomes in-progress (created so, or updated to it)".into(),
                triggers: vec![status_change("Encounter", "in-progress")],
                can_filter_by: filters(
                    "Encounter",
                    &["patient", "subject", "class", "type", "location", "service-provider", "participant"],
                ),
            },
            Topic {
                url: format!("{BUILTIN_BASE}encounter-end"),
                title: "Encounter finished".into(),
                description: "An Encounter becomes finished".into(),
                triggers: vec![status_change("Encounter", "finished")],
                can_filter_by: filters(
                    "Encounter",
                    &["patient", "subject", "class", "type", "location", "service-provider", "participant"],
                ),
            },
            Topic {
                url: format!("{BUILTIN_BASE}patient-observation"),
                title: "Observation for a patient".into(),
                description: "An Observation is created or updated; filter by patient, code, category".into(),
                triggers: vec![Trigger::any("Observation", true, true, false)],
                can_filter_by: filters(
                    "Observation",
                    &["patient", "subject", "code", "category", "status", "device", "combo-code"],
                ),
            },
            Topic {
                url: format!("{BUILTIN_BASE}device-alert"),
                title: "Remote monitoring alert".into(),
                description: "A device alert rule fires: its Flag becomes active, its Communication is sent (docs/devices.md)".into(),
                triggers: vec![
                    // R4 Flag has no `status` search parameter: FHIRPath it is.
                    Trigger {
                        fhirpath: Some(flag_raised),
                        ..Trigger::any("Flag", true, true, false)
                    },
                    Trigger {
                        fhirpath: Some(alert_fhirpath),
                        ..Trigger::any("Communication", true, false, false)
                    },
                ],
                can_filter_by: [
                    filters("Flag", &["patient", "subject", "author", "identifier", "date"]),
                    filters("Communication", &["patient", "subject", "recipient"]),
                ]
                .concat(),
            },
        ];
        Topics { list }
    }

    /// Add a topic (an administrator's); one with the same URL is replaced.
    pub fn add(&mut self, topic: Topic) {
        self.list.retain(|t| t.url != topic.url);
        self.list.push(topic);
    }

    pub fn get(&self, url: &str) -> Option<&Topic> {
        // A canonical may carry a version (`url|1.0`): topics here have one version.
        let url = url.split('|').next().unwrap_or(url);
        self.list.iter().find(|t| t.url == url)
    }

    pub fn all(&self) -> &[Topic] {
        &self.list
    }
}

/// Read an R4B `SubscriptionTopic` (JSON) into a topic; every criterion is checked.
pub fn parse_topic(v: &Value) -> Result<Topic, String> {
    if v.get("resourceType").and_then(Value::as_str) != Some("SubscriptionTopic") {
        return Err("a topic must be a SubscriptionTopic resource".into());
    }
    let url = v
        .get("url")
        .and_then(Value::as_str)
        .filter(|u| u.contains(':'))
        .ok_or("SubscriptionTopic.url (an absolute canonical URL) is required")?;
    let mut triggers = vec![];
    for (i, t) in v
        .get("resourceTrigger")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let at = format!("resourceTrigger[{i}]");
        let resource = t
            .get("resource")
            .and_then(Value::as_str)
            .ok_or(format!("{at}.resource is required"))?;
        let resource = resource
            .strip_prefix("http://hl7.org/fhir/StructureDefinition/")
            .unwrap_or(resource);
        let resource = if resource == "Resource" || resource == "DomainResource" {
            "*".to_string()
        } else if salus_fhir::defs::is_resource_type(resource) {
            resource.to_string()
        } else {
            return Err(format!(
                "{at}.resource: '{resource}' is not an R4 resource type"
            ));
        };
        let inter: Vec<&str> = t
            .get("supportedInteraction")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_else(|| vec!["create", "update", "delete"]);
        for x in &inter {
            if !matches!(*x, "create" | "update" | "delete") {
                return Err(format!("{at}.supportedInteraction: unknown '{x}'"));
            }
        }
        let mut trig = Trigger::any(
            &resource,
            inter.contains(&"create"),
            inter.contains(&"update"),
            inter.contains(&"delete"),
        );
        if let Some(q) = t.get("queryCriteria") {
            let text = |k: &str| q.get(k).and_then(Value::as_str).map(str::to_string);
            trig.previous = text("previous");
            trig.current = text("current");
            let passes = |k: &str| -> Result<bool, String> {
                match q.get(k).and_then(Value::as_str) {
                    None | Some("test-passes") => Ok(true),
                    Some("test-fails") => Ok(false),
                    Some(o) => Err(format!(
                        "{at}.queryCriteria.{k}: '{o}' is not test-passes or test-fails"
                    )),
                }
            };
            trig.result_for_create = passes("resultForCreate")?;
            trig.result_for_delete = passes("resultForDelete")?;
            trig.require_both = q
                .get("requireBoth")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            for (k, c) in [("previous", &trig.previous), ("current", &trig.current)] {
                if let Some(c) = c {
                    if resource == "*" {
                        return Err(format!(
                            "{at}.queryCriteria.{k} needs a concrete resource type"
                        ));
                    }
                    crate::matcher::compile(&resource, c)
                        .map_err(|e| format!("{at}.queryCriteria.{k}: {e}"))?;
                }
            }
        }
        if let Some(f) = t.get("fhirPathCriteria").and_then(Value::as_str) {
            trig.fhirpath =
                Some(salus_fhirpath::parse(f).map_err(|e| format!("{at}.fhirPathCriteria: {e}"))?);
        }
        triggers.push(trig);
    }
    if triggers.is_empty() {
        return Err(
            "a topic needs at least one resourceTrigger (eventTrigger is not supported)".into(),
        );
    }
    let mut can_filter_by = vec![];
    for (i, f) in v
        .get("canFilterBy")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let parameter = f
            .get("filterParameter")
            .and_then(Value::as_str)
            .ok_or(format!("canFilterBy[{i}].filterParameter is required"))?;
        let resource = f.get("resource").and_then(Value::as_str).map(|r| {
            r.strip_prefix("http://hl7.org/fhir/StructureDefinition/")
                .unwrap_or(r)
                .to_string()
        });
        can_filter_by.push(FilterBy {
            resource,
            parameter: parameter.to_string(),
        });
    }
    Ok(Topic {
        url: url.to_string(),
        title: v
            .get("title")
            .and_then(Value::as_str)
            .unwrap_or(url)
            .to_string(),
        description: v
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        triggers,
        can_filter_by,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn builtin_topics_have_unique_urls_and_round_trip() {
        let t = Topics::builtin();
        let mut urls: Vec<&str> = t.all().iter().map(|t| t.url.as_str()).collect();
        urls.sort();
        urls.dedup();
        assert_eq!(urls.len(), t.all().len());
        for topic in t.all() {
            let back =
                parse_topic(&topic.to_json()).unwrap_or_else(|e| panic!("{}: {e}", topic.url));
            assert_eq!(back.triggers.len(), topic.triggers.len());
        }
        assert!(t.get(&format!("{BUILTIN_BASE}device-alert|1.0")).is_some());
    }

    #[test]
    fn admin_topics_are_checked() {
        let ok = json!({"resourceType": "SubscriptionTopic", "url": "https://example.org/topics/lab",
            "resourceTrigger": [{"resource": "http://hl7.org/fhir/StructureDefinition/DiagnosticReport",
                "supportedInteraction": ["create", "update"],
                "queryCriteria": {"current": "status=final", "previous": "status:not=final",
                    "resultForCreate": "test-passes", "requireBoth": true}}],
            "canFilterBy": [{"resource": "DiagnosticReport", "filterParameter": "patient"}]});
        let t = parse_topic(&ok).unwrap();
        assert!(t.triggers[0].require_both);
        assert!(t.allows_filter("DiagnosticReport", "patient"));
        assert!(!t.allows_filter("DiagnosticReport", "code"));

        let mut bad = ok.clone();
        bad["resourceTrigger"][0]["queryCriteria"]["current"] = json!("no-such-param=1");
        let e = parse_topic(&bad).unwrap_err();
        assert!(e.contains("queryCriteria.current"), "{e}");
        let mut bad = ok.clone();
        bad["resourceTrigger"][0]["resource"] = json!("Nonsense");
        assert!(parse_topic(&bad)
            .unwrap_err()
            .contains("not an R4 resource type"));
        let mut bad = ok;
        bad["resourceTrigger"][0]["supportedInteraction"] = json!(["read"]);
        assert!(parse_topic(&bad).unwrap_err().contains("unknown 'read'"));
    }
}
