//! Which requested scopes a client may be granted: the client's allowed scopes are patterns.
//!
//! A SMART resource scope (`patient/Observation.rs`, v2, or `patient/Observation.read`, v1;
//! SMART App Launch 2.x scopes-and-launch-context.html) is allowed by a pattern with the same
//! context whose resource type is `*` or equal and whose permissions include the requested
//! ones (`patient/*.cruds` allows `patient/Observation.rs`). Any other scope is matched
//! literally, with `*` in the pattern matching any run of characters.

/// SMART v2 permission letters of a `.perm` suffix, v1 names translated.
fn permissions(p: &str) -> Option<String> {
    match p {
        "read" => Some("rs".into()),
        "write" => Some("cud".into()),
        "*" => Some("cruds".into()),
        _ if !p.is_empty() && p.bytes().all(|b| b"cruds".contains(&b)) => Some(p.into()),
        _ => None,
    }
}

/// `context/Type.perms[?query]` split up.
fn resource_scope(s: &str) -> Option<(&str, &str, String, Option<&str>)> {
    let (context, rest) = s.split_once('/')?;
    if !matches!(context, "patient" | "user" | "system") {
        return None;
    }
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (rtype, perm) = rest.rsplit_once('.')?;
    Some((context, rtype, permissions(perm)?, query))
}

fn glob(pattern: &str, s: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == s,
        Some((head, tail)) => {
            let Some(rest) = s.strip_prefix(head) else {
                return false;
            };
            (0..=rest.len())
                .filter(|&i| rest.is_char_boundary(i))
                .any(|i| glob(tail, &rest[i..]))
        }
    }
}

/// Whether `pattern` (one allowed scope) allows `requested` (one scope).
pub fn allows(pattern: &str, requested: &str) -> bool {
    if let (Some((pc, pt, pp, pq)), Some((rc, rt, rp, rq))) =
        (resource_scope(pattern), resource_scope(requested))
    {
        return pc == rc
            && (pt == "*" || pt == rt)
            && rp.bytes().all(|b| pp.as_bytes().contains(&b))
            // A pattern with a query allows only that query; one without allows any.
            && (pq.is_none() || pq == rq);
    }
    glob(pattern, requested)
}

/// The requested scopes (space separated) any of `allowed` allows, in request order,
/// duplicates dropped.
pub fn intersect(requested: &str, allowed: &str) -> Vec<String> {
    let patterns: Vec<&str> = allowed.split_ascii_whitespace().collect();
    let mut out: Vec<String> = Vec::new();
    for r in requested.split_ascii_whitespace() {
        if patterns.iter().any(|p| allows(p, r)) && !out.iter().any(|o| o == r) {
            out.push(r.to_string());
        }
    }
    out
}

/// Whether every scope of `narrower` is among `wider`'s (refresh may only narrow).
pub fn is_subset(narrower: &str, wider: &str) -> bool {
    narrower
        .split_ascii_whitespace()
        .all(|s| wider.split_ascii_whitespace().any(|w| w == s))
}

pub fn has(scope: &str, one: &str) -> bool {
    scope.split_ascii_whitespace().any(|s| s == one)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_patterns() {
        assert!(allows("patient/*.rs", "patient/Observation.rs"));
        assert!(allows("patient/*.rs", "patient/Observation.r"));
        assert!(allows("patient/*.cruds", "patient/Observation.read"));
        assert!(!allows("patient/*.rs", "patient/Observation.c"));
        assert!(!allows("patient/*.rs", "user/Observation.rs"));
        assert!(!allows("patient/Observation.rs", "patient/*.rs"));
        assert!(allows(
            "patient/Observation.rs",
            "patient/Observation.rs?category=laboratory"
        ));
        assert!(!allows(
            "patient/Observation.rs?category=vital-signs",
            "patient/Observation.rs"
        ));
        assert!(allows("openid", "openid") && !allows("openid", "fhirUser"));
        assert!(allows("launch*", "launch/patient"));
        assert_eq!(
            intersect(
                "openid fhirUser patient/Observation.rs user/*.rs openid",
                "openid patient/*.rs"
            ),
            vec!["openid", "patient/Observation.rs"]
        );
        assert!(is_subset("a b", "b c a") && !is_subset("a d", "a b"));
    }
}
