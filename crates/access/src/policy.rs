//! Staff roles and the one access decision: may this caller do this to this type, and
//! if only partly, which resources.

use crate::scope::{parse_scopes, Context, Interaction, Permissions, Scope, ScopeError};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Who is calling, as a verified token describes them.
#[derive(Debug, Clone)]
pub struct Principal {
    /// `sub`.
    pub subject: String,
    pub client_id: Option<String>,
    /// The granted scopes as the token carries them.
    pub scope: String,
    /// The resource scopes among them.
    pub scopes: Vec<Scope>,
    /// Launch context: a Patient id (no `Patient/` prefix).
    pub patient: Option<String>,
    /// `Practitioner/123`, `Patient/p1`, …
    pub fhir_user: Option<String>,
    /// Staff roles (from the user record or an external IdP's claim).
    pub roles: Vec<String>,
    /// `jti`, for the audit trail.
    pub token_id: Option<String>,
}

impl Principal {
    /// A principal with these granted scopes; malformed resource scopes are an error.
    pub fn new(subject: impl Into<String>, scope: impl Into<String>) -> Result<Self, ScopeError> {
        let scope = scope.into();
        Ok(Principal {
            subject: subject.into(),
            client_id: None,
            scopes: parse_scopes(&scope)?,
            scope,
            patient: None,
            fhir_user: None,
            roles: vec![],
            token_id: None,
        })
    }

    pub fn with_patient(mut self, id: impl Into<String>) -> Self {
        self.patient = Some(id.into());
        self
    }

    pub fn with_fhir_user(mut self, reference: impl Into<String>) -> Self {
        self.fhir_user = Some(reference.into());
        self
    }

    pub fn with_roles(mut self, roles: &[&str]) -> Self {
        self.roles = roles.iter().map(|r| r.to_string()).collect();
        self
    }

    /// The patient whose compartment `patient/` scopes reach: the launch context, else
    /// the user themself when they are a Patient.
    pub fn patient_context(&self) -> Option<&str> {
        self.patient.as_deref().or_else(|| {
            self.fhir_user
                .as_deref()
                .and_then(|u| u.strip_prefix("Patient/"))
        })
    }

    /// The reference that names this caller in an audit record.
    pub fn who(&self) -> String {
        self.fhir_user
            .clone()
            .unwrap_or_else(|| self.subject.clone())
    }
}

/// How a resource type relates to the Patient compartment (the caller of
/// [`Policy::decide`] knows the definitions; this crate does not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeClass {
    /// The type has members in the Patient compartment (Observation, Encounter, …).
    Compartment,
    /// Shared reference data no patient owns (Practitioner, Organization, Medication,
    /// ValueSet, Slot, …): `patient/` scopes may read it.
    Reference,
    /// Neither: reachable through `user/` or `system/` scopes only (Binary, …).
    Other,
}

/// Resource types `patient/` scopes may read although no patient owns them.
pub const REFERENCE_TYPES: &[&str] = &[
    "ActivityDefinition",
    "CapabilityStatement",
    "CodeSystem",
    "ConceptMap",
    "Endpoint",
    "HealthcareService",
    "Library",
    "Location",
    "Measure",
    "Medication",
    "MedicationKnowledge",
    "OperationDefinition",
    "Organization",
    "PlanDefinition",
    "Practitioner",
    "PractitionerRole",
    "Questionnaire",
    "Schedule",
    "SearchParameter",
    "Slot",
    "StructureDefinition",
    "Substance",
    "ValueSet",
];

/// One condition a resource must satisfy: membership of a patient's compartment
/// and/or search criteria (each a query string such as `category=laboratory`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Conjunction {
    pub compartment: Option<String>,
    pub criteria: Vec<String>,
}

impl Conjunction {
    fn is_unrestricted(&self) -> bool {
        self.compartment.is_none() && self.criteria.is_empty()
    }
}

/// What a caller may reach of one type for one interaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// Every resource of the type.
    All,
    /// The resources satisfying at least one of these (never empty).
    Only(Vec<Conjunction>),
}

/// A refusal, with the reason the caller is told (no secrets, no internals).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

/// Things beyond per-type permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    /// Server administration: `$reindex`, clients, custom SearchParameters' reindexing.
    Admin,
    /// Reading the audit trail (AuditEvent).
    Audit,
    /// `Patient/[id]/$purge` (erasure).
    Purge,
    /// Bulk `$export` whose output is de-identified, whatever the caller's reads.
    DeidentifiedExport,
    /// SQL over the materialized analytics views (`$sql`) and measure evaluation
    /// (`Measure/$evaluate-measure`, `$insights`). The tables hold every patient's rows
    /// (ids, dates, codes): not de-identified, and not filtered by the caller's reads.
    Analytics,
}

/// A staff role's rule: these interactions on these types, optionally only on
/// resources matching `criteria`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Resource types, or `*`.
    pub types: Vec<String>,
    /// v2 letters (`rs`, `cruds`) or `read` / `write` / `*`.
    pub permissions: String,
    /// Search criteria the resources must match (`category=laboratory`).
    #[serde(default)]
    pub criteria: Option<String>,
}

/// A staff role as configured (`[[access.roles]]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    pub name: String,
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    #[serde(default)]
    pub capabilities: Vec<Capability>,
}

/// The `[access]` section of the configuration.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessConfig {
    /// Roles added to (or replacing, by name) the built-in ones.
    #[serde(default)]
    pub roles: Vec<RoleConfig>,
    /// Roles of a `user/` caller whose token names none.
    #[serde(default)]
    pub default_roles: Vec<String>,
}

#[derive(Debug, Clone)]
struct Rule {
    types: Option<Vec<String>>,
    permissions: Permissions,
    criteria: Option<String>,
}

#[derive(Debug, Clone)]
struct Role {
    rules: Vec<Rule>,
    capabilities: Vec<Capability>,
}

/// A configuration problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("access role '{role}': permissions '{permissions}' are not v2 letters (cruds) or read/write/*")]
    Permissions { role: String, permissions: String },
    #[error("access role '{0}' has an empty name or no types in a rule")]
    Empty(String),
    #[error("access.default_roles names '{0}', which is not a role")]
    UnknownDefault(String),
}

/// The roles and how scopes combine with them.
#[derive(Debug, Clone)]
pub struct Policy {
    roles: HashMap<String, Role>,
    default_roles: Vec<String>,
}

/// Types a care manager writes: the visit and follow-up workflow.
const CARE_MANAGER_WRITES: &[&str] = &[
    "Appointment",
    "AppointmentResponse",
    "CarePlan",
    "CareTeam",
    "Communication",
    "CommunicationRequest",
    "Goal",
    "Schedule",
    "ServiceRequest",
    "Slot",
    "Task",
];

fn builtin_roles() -> Vec<RoleConfig> {
    let rule = |types: &[&str], p: &str| RuleConfig {
        types: types.iter().map(|t| t.to_string()).collect(),
        permissions: p.to_string(),
        criteria: None,
    };
    vec![
        RoleConfig {
            name: "admin".into(),
            rules: vec![rule(&["*"], "cruds")],
            capabilities: vec![
                Capability::Admin,
                Capability::Audit,
                Capability::Purge,
                Capability::Analytics,
            ],
        },
        RoleConfig {
            name: "clinician".into(),
            rules: vec![rule(&["*"], "cruds")],
            capabilities: vec![],
        },
        RoleConfig {
            name: "care-manager".into(),
            rules: vec![rule(&["*"], "rs"), rule(CARE_MANAGER_WRITES, "cruds")],
            capabilities: vec![],
        },
        RoleConfig {
            name: "data-importer".into(),
            rules: vec![rule(&["*"], "cu")],
            capabilities: vec![],
        },
        // Sees data only de-identified or aggregated: no direct reads at all; SQL over the
        // analytics views (which do hold patient ids and dates: docs/analytics.md).
        RoleConfig {
            name: "analyst".into(),
            rules: vec![],
            capabilities: vec![Capability::DeidentifiedExport, Capability::Analytics],
        },
    ]
}

impl Policy {
    /// The built-in roles: admin, clinician, care-manager, data-importer, analyst.
    pub fn builtin() -> Policy {
        Policy::from_config(&AccessConfig::default()).expect("built-in roles are valid")
    }

    /// The built-in roles, with the configured ones added or replacing them by name.
    pub fn from_config(config: &AccessConfig) -> Result<Policy, PolicyError> {
        let mut roles = HashMap::new();
        for rc in builtin_roles().iter().chain(config.roles.iter()) {
            if rc.name.trim().is_empty() {
                return Err(PolicyError::Empty(rc.name.clone()));
            }
            let mut rules = vec![];
            for r in &rc.rules {
                if r.types.is_empty() {
                    return Err(PolicyError::Empty(rc.name.clone()));
                }
                let permissions =
                    Permissions::parse(&r.permissions).ok_or_else(|| PolicyError::Permissions {
                        role: rc.name.clone(),
                        permissions: r.permissions.clone(),
                    })?;
                rules.push(Rule {
                    types: (!r.types.iter().any(|t| t == "*")).then(|| r.types.clone()),
                    permissions,
                    criteria: r.criteria.clone().filter(|c| !c.is_empty()),
                });
            }
            roles.insert(
                rc.name.clone(),
                Role {
                    rules,
                    capabilities: rc.capabilities.clone(),
                },
            );
        }
        for d in &config.default_roles {
            if !roles.contains_key(d) {
                return Err(PolicyError::UnknownDefault(d.clone()));
            }
        }
        Ok(Policy {
            roles,
            default_roles: config.default_roles.clone(),
        })
    }

    fn roles_of<'a>(&'a self, who: &'a Principal) -> impl Iterator<Item = &'a Role> + 'a {
        let names: &'a [String] = if who.roles.is_empty() {
            &self.default_roles
        } else {
            &who.roles
        };
        names.iter().filter_map(|n| self.roles.get(n))
    }

    /// Whether the caller holds a capability through one of their roles.
    pub fn has_capability(&self, who: &Principal, cap: Capability) -> bool {
        if self.roles_of(who).any(|r| r.capabilities.contains(&cap)) {
            return true;
        }
        // A backend service granted the audit trail by scope (a SIEM export).
        cap == Capability::Audit
            && who.scopes.iter().any(|s| {
                s.context == Context::System
                    && s.covers("AuditEvent")
                    && s.permissions.allows(Interaction::Read)
            })
    }

    /// The one access decision: what `who` may reach of `rtype` for `interaction`.
    pub fn decide(
        &self,
        who: &Principal,
        interaction: Interaction,
        rtype: &str,
        class: TypeClass,
    ) -> Result<Grant, Denied> {
        if rtype == "AuditEvent" {
            // The audit trail is append-only and written by the server itself.
            if !matches!(interaction, Interaction::Read | Interaction::Search) {
                return Err(Denied(
                    "AuditEvent records are written by the server only and cannot be changed"
                        .into(),
                ));
            }
            if !self.has_capability(who, Capability::Audit) {
                return Err(Denied(
                    "reading the audit trail needs the admin role".into(),
                ));
            }
            return Ok(Grant::All);
        }
        if rtype == "SearchParameter"
            && !matches!(interaction, Interaction::Read | Interaction::Search)
            && !self.has_capability(who, Capability::Admin)
            && !who.scopes.iter().any(|s| {
                s.context == Context::System && s.covers(rtype) && s.permissions.allows(interaction)
            })
        {
            // A custom SearchParameter changes indexing for every record: administrators only.
            return Err(Denied(
                "changing SearchParameters needs the admin role".into(),
            ));
        }
        let mut union: Vec<Conjunction> = vec![];
        let mut reason = None;
        for s in who
            .scopes
            .iter()
            .filter(|s| s.covers(rtype) && s.permissions.allows(interaction))
        {
            let scope_criteria: Vec<String> = if s.criteria.is_empty() {
                vec![]
            } else {
                vec![s.criteria.clone()]
            };
            match s.context {
                Context::System => union.push(Conjunction {
                    compartment: None,
                    criteria: scope_criteria,
                }),
                Context::Patient => {
                    let Some(pid) = who.patient_context() else {
                        reason = Some("patient/ scopes need a patient in context (launch/patient)");
                        continue;
                    };
                    match class {
                        TypeClass::Compartment => union.push(Conjunction {
                            compartment: Some(pid.to_string()),
                            criteria: scope_criteria,
                        }),
                        TypeClass::Reference
                            if matches!(interaction, Interaction::Read | Interaction::Search) =>
                        {
                            union.push(Conjunction {
                                compartment: None,
                                criteria: scope_criteria,
                            })
                        }
                        _ => {
                            reason = Some("patient/ scopes reach only the patient's own records");
                        }
                    }
                }
                Context::User => {
                    let mut any = false;
                    for role in self.roles_of(who) {
                        for rule in &role.rules {
                            let covers = rule
                                .types
                                .as_ref()
                                .is_none_or(|ts| ts.iter().any(|t| t == rtype));
                            if covers && rule.permissions.allows(interaction) {
                                any = true;
                                let mut criteria = scope_criteria.clone();
                                criteria.extend(rule.criteria.clone());
                                union.push(Conjunction {
                                    compartment: None,
                                    criteria,
                                });
                            }
                        }
                    }
                    if !any {
                        reason = Some("the user's roles do not allow this");
                    }
                }
            }
        }
        if union.is_empty() {
            let why = reason.unwrap_or("the token's scopes do not allow this");
            return Err(Denied(format!(
                "{} of {rtype} is not permitted: {why}",
                interaction.name()
            )));
        }
        if union.iter().any(Conjunction::is_unrestricted) {
            return Ok(Grant::All);
        }
        union.dedup();
        Ok(Grant::Only(union))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(scope: &str) -> Principal {
        Principal::new("u1", scope).unwrap()
    }

    #[test]
    fn patient_scopes_reach_the_compartment() {
        let pol = Policy::builtin();
        let who = p("patient/*.rs").with_patient("A");
        let g = pol
            .decide(
                &who,
                Interaction::Search,
                "Observation",
                TypeClass::Compartment,
            )
            .unwrap();
        assert_eq!(
            g,
            Grant::Only(vec![Conjunction {
                compartment: Some("A".into()),
                criteria: vec![]
            }])
        );
        // reference data is readable, not writable; other types are not reachable
        assert_eq!(
            pol.decide(
                &who,
                Interaction::Read,
                "Practitioner",
                TypeClass::Reference
            ),
            Ok(Grant::All)
        );
        assert!(pol
            .decide(&who, Interaction::Read, "Binary", TypeClass::Other)
            .is_err());
        assert!(pol
            .decide(
                &who,
                Interaction::Create,
                "Observation",
                TypeClass::Compartment
            )
            .is_err());
    }

    #[test]
    fn patient_scopes_without_context_are_refused() {
        let pol = Policy::builtin();
        let e = pol
            .decide(
                &p("patient/*.rs"),
                Interaction::Read,
                "Observation",
                TypeClass::Compartment,
            )
            .unwrap_err();
        assert!(e.0.contains("patient in context"), "{e}");
        // a patient user is their own context
        let who = p("patient/*.rs").with_fhir_user("Patient/P9");
        assert!(matches!(
            pol.decide(
                &who,
                Interaction::Read,
                "Observation",
                TypeClass::Compartment
            ),
            Ok(Grant::Only(_))
        ));
    }

    #[test]
    fn scope_parameters_become_criteria() {
        let pol = Policy::builtin();
        let who = p("patient/Observation.rs?category=laboratory patient/Observation.rs?category=vital-signs")
            .with_patient("A");
        let Grant::Only(c) = pol
            .decide(
                &who,
                Interaction::Search,
                "Observation",
                TypeClass::Compartment,
            )
            .unwrap()
        else {
            panic!("restricted")
        };
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].criteria, vec!["category=laboratory".to_string()]);
        // a broader scope beside them wins
        let who = p("patient/Observation.rs?category=laboratory system/Observation.rs");
        assert_eq!(
            pol.decide(
                &who,
                Interaction::Search,
                "Observation",
                TypeClass::Compartment
            ),
            Ok(Grant::All)
        );
    }

    #[test]
    fn user_scopes_need_a_role() {
        let pol = Policy::builtin();
        let who = p("user/*.cruds");
        assert!(pol
            .decide(
                &who,
                Interaction::Read,
                "Observation",
                TypeClass::Compartment
            )
            .is_err());
        let cm = p("user/*.cruds").with_roles(&["care-manager"]);
        assert_eq!(
            pol.decide(
                &cm,
                Interaction::Read,
                "Observation",
                TypeClass::Compartment
            ),
            Ok(Grant::All)
        );
        assert!(pol
            .decide(
                &cm,
                Interaction::Update,
                "Observation",
                TypeClass::Compartment
            )
            .is_err());
        assert_eq!(
            pol.decide(&cm, Interaction::Update, "Task", TypeClass::Compartment),
            Ok(Grant::All)
        );
        // the scope limits the role too
        let narrow = p("user/Observation.rs").with_roles(&["clinician"]);
        assert!(pol
            .decide(
                &narrow,
                Interaction::Read,
                "Patient",
                TypeClass::Compartment
            )
            .is_err());
        let analyst = p("user/*.rs").with_roles(&["analyst"]);
        assert!(pol
            .decide(
                &analyst,
                Interaction::Read,
                "Patient",
                TypeClass::Compartment
            )
            .is_err());
        assert!(pol.has_capability(&analyst, Capability::DeidentifiedExport));
        assert!(pol.has_capability(&analyst, Capability::Analytics));
        let admin = p("user/*.cruds").with_roles(&["admin"]);
        assert!(pol.has_capability(&admin, Capability::Analytics));
        let clin = p("user/*.cruds").with_roles(&["clinician"]);
        assert!(!pol.has_capability(&clin, Capability::Analytics));
    }

    #[test]
    fn search_parameters_are_changed_by_admins_only() {
        let pol = Policy::builtin();
        let clin = p("user/*.cruds").with_roles(&["clinician"]);
        assert!(pol
            .decide(
                &clin,
                Interaction::Create,
                "SearchParameter",
                TypeClass::Reference
            )
            .is_err());
        assert!(pol
            .decide(
                &clin,
                Interaction::Read,
                "SearchParameter",
                TypeClass::Reference
            )
            .is_ok());
        let admin = p("user/*.cruds").with_roles(&["admin"]);
        assert!(pol
            .decide(
                &admin,
                Interaction::Update,
                "SearchParameter",
                TypeClass::Reference
            )
            .is_ok());
    }

    #[test]
    fn audit_events_are_admin_read_only() {
        let pol = Policy::builtin();
        let admin = p("user/*.cruds").with_roles(&["admin"]);
        assert_eq!(
            pol.decide(
                &admin,
                Interaction::Search,
                "AuditEvent",
                TypeClass::Compartment
            ),
            Ok(Grant::All)
        );
        assert!(pol
            .decide(
                &admin,
                Interaction::Delete,
                "AuditEvent",
                TypeClass::Compartment
            )
            .is_err());
        let clin = p("user/*.cruds").with_roles(&["clinician"]);
        assert!(pol
            .decide(
                &clin,
                Interaction::Read,
                "AuditEvent",
                TypeClass::Compartment
            )
            .is_err());
        let siem = p("system/AuditEvent.rs");
        assert!(pol
            .decide(
                &siem,
                Interaction::Search,
                "AuditEvent",
                TypeClass::Compartment
            )
            .is_ok());
    }

    #[test]
    fn configured_roles() {
        let cfg: AccessConfig = toml::from_str(
            r#"
            default_roles = ["lab-tech"]
            [[roles]]
            name = "lab-tech"
            rules = [{ types = ["Observation"], permissions = "crus", criteria = "category=laboratory" }]
            "#,
        )
        .unwrap();
        let pol = Policy::from_config(&cfg).unwrap();
        let who = p("user/*.cruds");
        let Grant::Only(c) = pol
            .decide(
                &who,
                Interaction::Search,
                "Observation",
                TypeClass::Compartment,
            )
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(c[0].criteria, vec!["category=laboratory".to_string()]);
        let bad: AccessConfig = toml::from_str(
            r#"
            [[roles]]
            name = "x"
            rules = [{ types = ["Observation"], permissions = "sr" }]
            "#,
        )
        .unwrap();
        assert!(matches!(
            Policy::from_config(&bad),
            Err(PolicyError::Permissions { .. })
        ));
        let unknown = AccessConfig {
            roles: vec![],
            default_roles: vec!["nobody".into()],
        };
        assert!(Policy::from_config(&unknown).is_err());
    }
}
