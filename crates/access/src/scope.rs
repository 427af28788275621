//! SMART on FHIR scopes (SMART App Launch 2.0.0, scopes-and-launch-context.html).
//!
//! Resource scopes look like `patient/Observation.rs?category=laboratory`: a context
//! (`patient`, `user`, `system`), a resource type or `*`, and permissions — v2's ordered
//! subset of `cruds`, or v1's `read`, `write` and `*` — optionally narrowed by search
//! parameters. Everything else (`openid`, `fhirUser`, `launch/patient`,
//! `offline_access`, …) grants no access to resources and is kept aside.

use std::fmt;

/// Whose data a scope reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Context {
    /// The patient in context (the token's `patient`), through the Patient compartment.
    Patient,
    /// Whatever the signed-in user may see (their staff roles decide).
    User,
    /// A backend service acting for itself (SMART Backend Services).
    System,
}

/// One of the five SMART v2 permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interaction {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl Interaction {
    pub fn letter(self) -> char {
        match self {
            Interaction::Create => 'c',
            Interaction::Read => 'r',
            Interaction::Update => 'u',
            Interaction::Delete => 'd',
            Interaction::Search => 's',
        }
    }

    fn bit(self) -> u8 {
        match self {
            Interaction::Create => 1,
            Interaction::Read => 2,
            Interaction::Update => 4,
            Interaction::Delete => 8,
            Interaction::Search => 16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Interaction::Create => "create",
            Interaction::Read => "read",
            Interaction::Update => "update",
            Interaction::Delete => "delete",
            Interaction::Search => "search",
        }
    }
}

/// A set of [`Interaction`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Permissions(u8);

impl Permissions {
    pub const ALL: Permissions = Permissions(31);
    pub const NONE: Permissions = Permissions(0);

    pub fn allows(self, i: Interaction) -> bool {
        self.0 & i.bit() != 0
    }

    /// v2 permissions: a non-empty subset of `cruds`, in that order (`rs`, `cud`).
    pub fn parse_v2(s: &str) -> Option<Permissions> {
        let order = [
            Interaction::Create,
            Interaction::Read,
            Interaction::Update,
            Interaction::Delete,
            Interaction::Search,
        ];
        let mut bits = 0;
        let mut next = 0;
        for ch in s.chars() {
            let pos = order[next..].iter().position(|i| i.letter() == ch)? + next;
            bits |= order[pos].bit();
            next = pos + 1;
        }
        (bits != 0).then_some(Permissions(bits))
    }

    /// v2 letters, or v1's `read` / `write` / `*`.
    pub fn parse(s: &str) -> Option<Permissions> {
        match s {
            // SMART 2.0 §Scopes for requesting clinical data: v1 `read` is v2 `rs`,
            // `write` is `cud`, `*` is everything.
            "read" => Some(Permissions(
                Interaction::Read.bit() | Interaction::Search.bit(),
            )),
            "write" => Some(Permissions(
                Interaction::Create.bit() | Interaction::Update.bit() | Interaction::Delete.bit(),
            )),
            "*" => Some(Permissions::ALL),
            _ => Permissions::parse_v2(s),
        }
    }
}

impl fmt::Display for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for i in [
            Interaction::Create,
            Interaction::Read,
            Interaction::Update,
            Interaction::Delete,
            Interaction::Search,
        ] {
            if self.allows(i) {
                write!(f, "{}", i.letter())?;
            }
        }
        Ok(())
    }
}

/// A resource scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub context: Context,
    /// `None` for `*`.
    pub rtype: Option<String>,
    pub permissions: Permissions,
    /// Search parameters every matching resource must also satisfy (`?category=…`),
    /// as the raw query string; empty when the scope has none.
    pub criteria: String,
}

/// Why a scope string is not a resource scope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("'{0}' is not a SMART resource scope (context/Type.permissions)")]
    Shape(String),
    #[error("'{0}': unknown context (patient, user or system)")]
    Context(String),
    #[error("'{0}': permissions must be v2 letters in the order c r u d s, or read, write, *")]
    Permissions(String),
    #[error("'{0}': '{1}' is not a resource type name")]
    Type(String, String),
}

impl Scope {
    /// Parse one resource scope. Identity and launch scopes (`openid`, `launch/patient`)
    /// return `Ok(None)`.
    pub fn parse(s: &str) -> Result<Option<Scope>, ScopeError> {
        let Some((context, rest)) = s.split_once('/') else {
            return Ok(None);
        };
        let context = match context {
            "patient" => Context::Patient,
            "user" => Context::User,
            "system" => Context::System,
            // `launch/patient`, `launch/encounter`: context requests, not access.
            "launch" => return Ok(None),
            _ => return Err(ScopeError::Context(s.to_string())),
        };
        let (resource, criteria) = match rest.split_once('?') {
            Some((r, q)) => (r, q.to_string()),
            None => (rest, String::new()),
        };
        let Some((rtype, perms)) = resource.rsplit_once('.') else {
            return Err(ScopeError::Shape(s.to_string()));
        };
        let rtype = match rtype {
            "*" => None,
            t if !t.is_empty()
                && t.chars().next().is_some_and(|c| c.is_ascii_uppercase())
                && t.chars().all(|c| c.is_ascii_alphanumeric()) =>
            {
                Some(t.to_string())
            }
            t => return Err(ScopeError::Type(s.to_string(), t.to_string())),
        };
        let permissions =
            Permissions::parse(perms).ok_or_else(|| ScopeError::Permissions(s.to_string()))?;
        Ok(Some(Scope {
            context,
            rtype,
            permissions,
            criteria,
        }))
    }

    /// Whether this scope speaks of `rtype`.
    pub fn covers(&self, rtype: &str) -> bool {
        self.rtype.as_deref().is_none_or(|t| t == rtype)
    }
}

/// The resource scopes of a space-separated scope string; identity and launch scopes
/// are skipped, malformed resource scopes reported.
pub fn parse_scopes(scope: &str) -> Result<Vec<Scope>, ScopeError> {
    let mut out = vec![];
    for s in scope.split_ascii_whitespace() {
        if let Some(sc) = Scope::parse(s)? {
            out.push(sc);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_scopes() {
        let s = Scope::parse("patient/Observation.rs").unwrap().unwrap();
        assert_eq!(s.context, Context::Patient);
        assert_eq!(s.rtype.as_deref(), Some("Observation"));
        assert!(s.permissions.allows(Interaction::Read));
        assert!(s.permissions.allows(Interaction::Search));
        assert!(!s.permissions.allows(Interaction::Create));
        assert_eq!(s.permissions.to_string(), "rs");
        let s = Scope::parse("user/*.cruds").unwrap().unwrap();
        assert_eq!(s.rtype, None);
        assert_eq!(s.permissions, Permissions::ALL);
        let s = Scope::parse("system/Patient.cud").unwrap().unwrap();
        assert_eq!(s.context, Context::System);
        assert!(!s.permissions.allows(Interaction::Read));
    }

    #[test]
    fn v1_scopes() {
        let r = Scope::parse("patient/*.read").unwrap().unwrap();
        assert_eq!(r.permissions.to_string(), "rs");
        let w = Scope::parse("user/Observation.write").unwrap().unwrap();
        assert_eq!(w.permissions.to_string(), "cud");
        let all = Scope::parse("system/*.*").unwrap().unwrap();
        assert_eq!(all.permissions, Permissions::ALL);
    }

    #[test]
    fn scope_parameters() {
        let s = Scope::parse(
            "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            s.criteria,
            "category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory"
        );
    }

    #[test]
    fn non_resource_scopes_are_skipped() {
        for s in [
            "openid",
            "fhirUser",
            "profile",
            "launch",
            "launch/patient",
            "offline_access",
        ] {
            assert_eq!(Scope::parse(s).unwrap(), None, "{s}");
        }
        let all =
            parse_scopes("openid fhirUser launch/patient patient/*.rs offline_access").unwrap();
        assert_eq!(all.len(), 1);
    }

    #[test]
    fn malformed_scopes_are_rejected() {
        for s in [
            "patient/Observation.sr",
            "patient/Observation.x",
            "patient/Observation",
            "doctor/Observation.rs",
            "patient/observation.rs",
            "patient/Observation.",
            "patient/Observation.rr",
        ] {
            assert!(Scope::parse(s).is_err(), "{s} should be rejected");
        }
    }
}
