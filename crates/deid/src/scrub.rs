//! The free-text PHI scrubber (a Salus addition to the original tool's methods).
//!
//! Two layers:
//! - **Patterns** any text may hold: e-mail addresses, dates (ISO, `3/14/2020`,
//!   `March 14, 2020`, `14 Mar 2020`, `March 2020`, `March 14`), US phone numbers, SSNs,
//!   IPv4 addresses and ages over 89 (`93-year-old`, `aged 95`).
//! - **Terms** known for the resource: names (every part of `HumanName`s of the resource,
//!   of its patient, the patient's contacts and related persons, and of `display`s of
//!   references to people), identifier values, telecom values, address lines, cities,
//!   districts and postal codes. They match case-insensitively on word boundaries.
//!
//! Matches become placeholders: `[NAME]`, `[ID]`, `[PHONE]`, `[EMAIL]`, `[ADDRESS]`,
//! `[DATE]`, `[AGE]`, `[IP]`. XHTML (the narrative `div`) is scrubbed in its text and
//! attribute values only, never inside tags' names, entity references or the `xmlns`, so
//! a well-formed `div` stays well-formed (placeholders hold no markup characters).

use crate::tree::{Kind, Tree};
use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, MatchKind};
use regex::Regex;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, OnceLock, RwLock};

/// What a known term is (decides its placeholder).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum TermKind {
    Name,
    Id,
    Phone,
    Email,
    Address,
}

impl TermKind {
    fn placeholder(self) -> &'static str {
        match self {
            TermKind::Name => "[NAME]",
            TermKind::Id => "[ID]",
            TermKind::Phone => "[PHONE]",
            TermKind::Email => "[EMAIL]",
            TermKind::Address => "[ADDRESS]",
        }
    }

    fn min_len(self) -> usize {
        match self {
            TermKind::Name => 2,
            _ => 4,
        }
    }
}

/// Known PHI strings of one resource or patient.
#[derive(Debug, Clone, Default)]
pub struct PhiTerms {
    terms: Vec<(String, TermKind)>,
    seen: HashSet<String>,
}

impl PhiTerms {
    pub(crate) fn add(&mut self, s: &str, kind: TermKind) {
        let s = s.trim();
        if s.chars().count() < kind.min_len() {
            return;
        }
        let lower = s.to_lowercase();
        if self.seen.insert(lower) {
            self.terms.push((s.to_string(), kind));
        }
        if kind == TermKind::Name || kind == TermKind::Address {
            // Parts of multi-word values ("Mary Ann", "O'Brien", "12 Main St").
            let parts: Vec<&str> = s
                .split(|c: char| !c.is_alphanumeric())
                .filter(|p| !p.is_empty())
                .collect();
            if parts.len() > 1 {
                for p in parts {
                    if kind == TermKind::Name && p.chars().count() >= 2 {
                        self.add(p, kind);
                    }
                }
            }
        }
    }

    pub(crate) fn extend(&mut self, other: &PhiTerms) {
        for (t, k) in &other.terms {
            self.add(t, *k);
        }
    }

    pub fn len(&self) -> usize {
        self.terms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }
}

fn str_of(v: Option<&Value>) -> impl Iterator<Item = &str> {
    let items: Vec<&str> = match v {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    items.into_iter()
}

const TITLES: &[&str] = &[
    "mr", "mrs", "ms", "miss", "dr", "prof", "sr", "jr", "md", "phd", "rn", "np",
];

/// Collect the PHI terms of a resource from its typed tree (nested resources too).
pub(crate) fn collect_terms(root: &Value, tree: &Tree, out: &mut PhiTerms) {
    for (i, n) in tree.nodes.iter().enumerate() {
        if n.kind == Kind::Nested {
            if let Some(v) = crate::tree::get(root, &tree.value_path(i as u32)) {
                let t = Tree::build(v);
                collect_terms(v, &t, out);
            }
            continue;
        }
        let ty = n.ty;
        if !matches!(
            ty,
            "HumanName" | "Identifier" | "ContactPoint" | "Address" | "Reference"
        ) {
            continue;
        }
        let Some(v) = crate::tree::get(root, &tree.value_path(i as u32)) else {
            continue;
        };
        match ty {
            "HumanName" => {
                for k in ["family", "given", "text"] {
                    for s in str_of(v.get(k)) {
                        out.add(s, TermKind::Name);
                    }
                }
            }
            "Identifier" => {
                for s in str_of(v.get("value")) {
                    out.add(s, TermKind::Id);
                }
            }
            "ContactPoint" => {
                for s in str_of(v.get("value")) {
                    let kind = if s.contains('@') {
                        TermKind::Email
                    } else {
                        TermKind::Phone
                    };
                    out.add(s, kind);
                }
            }
            "Address" => {
                for k in ["line", "city", "district", "postalCode", "text"] {
                    for s in str_of(v.get(k)) {
                        out.add(s, TermKind::Address);
                    }
                }
            }
            _ => {
                let target = v.get("reference").and_then(Value::as_str).unwrap_or("");
                let person = ["Patient/", "RelatedPerson/", "Person/", "Practitioner/"]
                    .iter()
                    .any(|p| target.starts_with(p) || target.contains(&format!("/{p}")))
                    || ["Patient?", "RelatedPerson?", "Practitioner?"]
                        .iter()
                        .any(|p| target.starts_with(p));
                if person {
                    for s in str_of(v.get("display")) {
                        for w in s.split_whitespace() {
                            let bare = w.trim_matches(|c: char| !c.is_alphanumeric());
                            if !TITLES.contains(&bare.to_lowercase().as_str()) {
                                out.add(bare, TermKind::Name);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The ids of the patients a resource is about: itself if a Patient, and every
/// `Patient/<id>` reference in it.
pub(crate) fn patient_ids(root: &Value, tree: &Tree, out: &mut Vec<String>) {
    if tree.nodes[0].ty == "Patient" {
        if let Some(id) = root.get("id").and_then(Value::as_str) {
            out.push(id.to_string());
        }
    }
    for (i, n) in tree.nodes.iter().enumerate() {
        if n.ty != "Reference" {
            continue;
        }
        let Some(r) = crate::tree::get(root, &tree.value_path(i as u32))
            .and_then(|v| v.get("reference"))
            .and_then(Value::as_str)
        else {
            continue;
        };
        let segs: Vec<&str> = r.split('/').collect();
        for w in segs.windows(2) {
            if w[0] == "Patient" && !w[1].is_empty() {
                out.push(w[1].to_string());
            }
        }
    }
}

/// PHI terms by patient id, learnt from Patient, RelatedPerson and Person resources, so
/// that free text in any resource about a patient can be scrubbed of the patient's (and
/// their contacts') names, identifiers, phone numbers and addresses.
#[derive(Debug, Default)]
pub struct PhiIndex {
    by_patient: RwLock<HashMap<String, Arc<PatientEntry>>>,
}

/// One patient's terms and, built on first use and shared by every resource about the
/// patient, their matcher.
#[derive(Default)]
pub(crate) struct PatientEntry {
    terms: PhiTerms,
    matcher: OnceLock<TermMatcher>,
}

impl std::fmt::Debug for PatientEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PatientEntry({} terms)", self.terms.len())
    }
}

impl PatientEntry {
    pub(crate) fn matcher(&self) -> &TermMatcher {
        self.matcher.get_or_init(|| TermMatcher::new(&self.terms))
    }
}

impl PhiIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Learn from one resource (resources other than Patient, RelatedPerson and Person
    /// teach nothing). Bundles are searched entry by entry.
    pub fn learn(&self, resource: &Value) {
        let rt = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or("");
        match rt {
            "Bundle" => {
                if let Some(entries) = resource.get("entry").and_then(Value::as_array) {
                    for e in entries {
                        if let Some(r) = e.get("resource") {
                            self.learn(r);
                        }
                    }
                }
            }
            "Patient" | "RelatedPerson" | "Person" => {
                let tree = Tree::build(resource);
                let mut terms = PhiTerms::default();
                collect_terms(resource, &tree, &mut terms);
                let mut ids = Vec::new();
                if rt == "Patient" {
                    if let Some(id) = resource.get("id").and_then(Value::as_str) {
                        ids.push(id.to_string());
                    }
                } else {
                    patient_ids(resource, &tree, &mut ids);
                }
                if terms.is_empty() || ids.is_empty() {
                    return;
                }
                let Ok(mut map) = self.by_patient.write() else {
                    return;
                };
                for id in ids {
                    let entry = map.entry(id).or_default();
                    let mut merged = entry.terms.clone();
                    merged.extend(&terms);
                    *entry = Arc::new(PatientEntry {
                        terms: merged,
                        matcher: OnceLock::new(),
                    });
                }
            }
            _ => {}
        }
        // Contained patients and related persons teach too.
        if let Some(c) = resource.get("contained").and_then(Value::as_array) {
            for r in c {
                self.learn(r);
            }
        }
    }

    /// Terms known for a patient id.
    pub fn terms(&self, patient_id: &str) -> Option<PhiTerms> {
        Some(self.entry(patient_id)?.terms.clone())
    }

    pub(crate) fn entry(&self, patient_id: &str) -> Option<Arc<PatientEntry>> {
        self.by_patient.read().ok()?.get(patient_id).cloned()
    }

    /// Number of patients with known terms.
    pub fn len(&self) -> usize {
        self.by_patient.read().map_or(0, |m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A compiled set of terms for one resource.
pub(crate) struct TermMatcher {
    ac: Option<AhoCorasick>,
    kinds: Vec<TermKind>,
}

impl TermMatcher {
    pub fn new(terms: &PhiTerms) -> TermMatcher {
        let kinds: Vec<TermKind> = terms.terms.iter().map(|(_, k)| *k).collect();
        let ac = if terms.terms.is_empty() {
            None
        } else {
            AhoCorasickBuilder::new()
                .ascii_case_insensitive(true)
                .match_kind(MatchKind::LeftmostLongest)
                // Built per resource: a DFA's build cost outweighs its search speed here.
                .kind(Some(AhoCorasickKind::ContiguousNFA))
                .build(terms.terms.iter().map(|(t, _)| t.as_str()))
                .ok()
        };
        TermMatcher { ac, kinds }
    }

    fn replace(&self, text: &str) -> Option<String> {
        let ac = self.ac.as_ref()?;
        let mut out = String::new();
        let mut last = 0;
        let mut changed = false;
        for m in ac.find_iter(text) {
            let before = text[..m.start()].chars().next_back();
            let after = text[m.end()..].chars().next();
            let boundary = |c: Option<char>| c.is_none_or(|c| !c.is_alphanumeric());
            if !(boundary(before) && boundary(after)) {
                continue;
            }
            out.push_str(&text[last..m.start()]);
            out.push_str(self.kinds[m.pattern().as_usize()].placeholder());
            last = m.end();
            changed = true;
        }
        if !changed {
            return None;
        }
        out.push_str(&text[last..]);
        Some(out)
    }
}

const MONTHS: &str = "(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?|JAN(?:UARY)?|FEB(?:RUARY)?|MAR(?:CH)?|APR(?:IL)?|MAY|JUNE?|JULY?|AUG(?:UST)?|SEP(?:T(?:EMBER)?)?|OCT(?:OBER)?|NOV(?:EMBER)?|DEC(?:EMBER)?)";

static PATTERNS: LazyLock<Regex> = LazyLock::new(|| {
    let m = MONTHS;
    let src = format!(
        r"(?P<email>[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{{2,}})|(?P<date>(?-u:\b)\d{{4}}-\d{{2}}-\d{{2}}(?:[T ]\d{{2}}:\d{{2}}(?::\d{{2}}(?:\.\d+)?)?(?:Z|[+\-]\d{{2}}:?\d{{2}})?)?|(?-u:\b)\d{{1,2}}/\d{{1,2}}/\d{{2,4}}(?-u:\b)|(?-u:\b)\d{{4}}/\d{{1,2}}/\d{{1,2}}(?-u:\b)|(?-u:\b)\d{{1,2}}\.\d{{1,2}}\.\d{{4}}(?-u:\b)|(?-u:\b){m}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}(?-u:\b)|(?-u:\b)\d{{1,2}}(?:st|nd|rd|th)?\s+{m}\.?,?\s+\d{{4}}(?-u:\b)|(?-u:\b){m}\.?,?\s+\d{{4}}(?-u:\b)|(?-u:\b){m}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?(?-u:\b))|(?P<phone>(?:\+?1[\s.\-]?)?\(\d{{3}}\)\s*\d{{3}}[\s.\-]?\d{{4}}(?-u:\b)|(?-u:\b)(?:\+?1[\s.\-])?\d{{3}}[\s.\-]\d{{3}}[\s.\-]\d{{4}}(?-u:\b))|(?P<ssn>(?-u:\b)\d{{3}}-\d{{2}}-\d{{4}}(?-u:\b))|(?P<ip>(?-u:\b)(?:\d{{1,3}}\.){{3}}\d{{1,3}}(?-u:\b))|(?P<age>(?-u:\b)(?:9\d|1\d\d)[\s\-]*(?:years?|yrs?|y/?o)(?-u:\b)(?:[\s\-]*old)?|(?-u:\b)[Aa]ged?\s+(?:9\d|1\d\d)(?-u:\b))"
    );
    Regex::new(&src).expect("static scrubber regex")
});

/// Scrub plain text: patterns first (so e-mail addresses go whole), then known terms.
pub(crate) fn scrub_plain(text: &str, terms: &[&TermMatcher]) -> Option<String> {
    let mut changed = false;
    let after_patterns = PATTERNS.replace_all(text, |c: &regex::Captures<'_>| {
        if let Some(ip) = c.name("ip") {
            // Part of a longer dotted number (an OID, a version): not an address.
            let before = text[..ip.start()].chars().next_back();
            let after = text[ip.end()..].chars().next();
            if before == Some('.')
                || (after == Some('.')
                    && text[ip.end() + 1..].starts_with(|c: char| c.is_ascii_digit()))
            {
                return ip.as_str().to_string();
            }
        }
        changed = true;
        let placeholder = if c.name("email").is_some() {
            "[EMAIL]"
        } else if c.name("date").is_some() {
            "[DATE]"
        } else if c.name("phone").is_some() {
            "[PHONE]"
        } else if c.name("ssn").is_some() {
            "[ID]"
        } else if c.name("ip").is_some() {
            "[IP]"
        } else {
            "[AGE]"
        };
        placeholder.to_string()
    });
    let mut cur: Option<String> = None;
    for m in terms {
        let base = cur.as_deref().unwrap_or(&after_patterns);
        if let Some(s) = m.replace(base) {
            cur = Some(s);
        }
    }
    match cur {
        Some(s) => Some(s),
        None if changed => Some(after_patterns.into_owned()),
        None => None,
    }
}

/// Scrub a run of markup text: entity references (`&amp;`, `&#233;`) are left untouched
/// and only the text between them is scrubbed.
fn scrub_markup_text(text: &str, terms: &[&TermMatcher], out: &mut String) -> bool {
    let mut changed = false;
    let mut rest = text;
    while !rest.is_empty() {
        let (chunk, entity, tail) = match rest.find('&') {
            Some(a) => {
                let after = &rest[a + 1..];
                let len = after
                    .find(';')
                    .filter(|&e| {
                        e > 0
                            && e <= 32
                            && after[..e]
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'#')
                    })
                    .map(|e| e + 2);
                match len {
                    Some(l) => (&rest[..a], &rest[a..a + l], &rest[a + l..]),
                    None => (&rest[..a + 1], "", &rest[a + 1..]),
                }
            }
            None => (rest, "", ""),
        };
        match scrub_plain(chunk, terms) {
            Some(s) => {
                out.push_str(&s);
                changed = true;
            }
            None => out.push_str(chunk),
        }
        out.push_str(entity);
        rest = tail;
    }
    changed
}

/// Scrub XHTML (or any XML/HTML): text content, comments, CDATA and attribute values
/// (not `xmlns` declarations); tags and entity references stay as they are.
pub(crate) fn scrub_xhtml(xml: &str, terms: &[&TermMatcher]) -> Option<String> {
    let mut out = String::with_capacity(xml.len());
    let mut changed = false;
    let mut rest = xml;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("<!--") {
            let end = after.find("-->").unwrap_or(after.len());
            out.push_str("<!--");
            changed |= scrub_markup_text(&after[..end], terms, &mut out);
            rest = &after[end..];
            if let Some(r) = rest.strip_prefix("-->") {
                out.push_str("-->");
                rest = r;
            }
        } else if let Some(after) = rest.strip_prefix("<![CDATA[") {
            let end = after.find("]]>").unwrap_or(after.len());
            out.push_str("<![CDATA[");
            match scrub_plain(&after[..end], terms) {
                Some(s) => {
                    out.push_str(&s);
                    changed = true;
                }
                None => out.push_str(&after[..end]),
            }
            rest = &after[end..];
            if let Some(r) = rest.strip_prefix("]]>") {
                out.push_str("]]>");
                rest = r;
            }
        } else if rest.starts_with('<') {
            // A tag: copy it, scrubbing quoted attribute values.
            let bytes = rest.as_bytes();
            let mut i = 1;
            let mut seg_start = 0;
            let mut quote: Option<u8> = None;
            let mut value_start = 0;
            while i < bytes.len() {
                let b = bytes[i];
                match quote {
                    Some(q) if b == q => {
                        let value = &rest[value_start..i];
                        let attr_name = rest[seg_start..value_start]
                            .trim_end_matches(['"', '\''])
                            .trim_end()
                            .trim_end_matches('=')
                            .trim_end()
                            .rsplit(|c: char| c.is_whitespace())
                            .next()
                            .unwrap_or("");
                        out.push_str(&rest[seg_start..value_start]);
                        if attr_name.starts_with("xmlns") {
                            out.push_str(value);
                        } else {
                            changed |= scrub_markup_text(value, terms, &mut out);
                        }
                        seg_start = i;
                        quote = None;
                    }
                    Some(_) => {}
                    None if b == b'"' || b == b'\'' => {
                        quote = Some(b);
                        value_start = i + 1;
                    }
                    None if b == b'>' => break,
                    None => {}
                }
                i += 1;
            }
            let end = (i + 1).min(rest.len());
            if quote.is_some() {
                // Unterminated attribute value: copy the rest unchanged.
                out.push_str(&rest[seg_start..]);
                rest = "";
            } else {
                out.push_str(&rest[seg_start..end]);
                rest = &rest[end..];
            }
        } else {
            let end = rest.find('<').unwrap_or(rest.len());
            changed |= scrub_markup_text(&rest[..end], terms, &mut out);
            rest = &rest[end..];
        }
    }
    changed.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(names: &[&str]) -> TermMatcher {
        let mut t = PhiTerms::default();
        for n in names {
            t.add(n, TermKind::Name);
        }
        t.add("555-201-3344", TermKind::Phone);
        t.add("D12345678", TermKind::Id);
        TermMatcher::new(&t)
    }

    #[test]
    fn patterns() {
        let m = matcher(&[]);
        let s = scrub_plain(
            "Seen 2019-03-04T10:00:00-05:00, again 3/14/2020 and March 14, 2020; 14 Mar 2021. Call (555) 123-4567 or 555.123.4567, mail jo.doe@example.com, SSN 123-45-6789, host 10.0.0.1, a 93-year-old, aged 95; a 60 year-old.",
            &[&m],
        )
        .unwrap();
        assert_eq!(
            s,
            "Seen [DATE], again [DATE] and [DATE]; [DATE]. Call [PHONE] or [PHONE], mail [EMAIL], SSN [ID], host [IP], a [AGE], [AGE]; a 60 year-old."
        );
        assert_eq!(scrub_plain("nothing to see", &[&m]), None);
        assert_eq!(
            scrub_plain("code system 2.16.840.1.113883.6.1", &[&m]),
            None
        );
    }

    #[test]
    fn terms_on_word_boundaries() {
        let m = matcher(&["Arvo12", "Quill77", "Ann", "O'Brien"]);
        assert_eq!(
            scrub_plain(
                "arvo12 QUILL77 met Anna and Ann O'Brien; D12345678 555-201-3344",
                &[&m]
            )
            .unwrap(),
            "[NAME] [NAME] met Anna and [NAME] [NAME]; [ID] [PHONE]"
        );
    }

    #[test]
    fn xhtml_stays_well_formed() {
        let m = matcher(&["John", "Smith", "amp"]);
        let div = r#"<div xmlns="http://www.w3.org/1999/xhtml"><p title="John Smith">John&amp;Smith born 1970-01-02</p><!-- John --><a href="mailto:john@x.org">x</a> &lt;Smith&gt;</div>"#;
        let out = scrub_xhtml(div, &[&m]).unwrap();
        assert_eq!(
            out,
            r#"<div xmlns="http://www.w3.org/1999/xhtml"><p title="[NAME] [NAME]">[NAME]&amp;[NAME] born [DATE]</p><!-- [NAME] --><a href="mailto:[EMAIL]">x</a> &lt;[NAME]&gt;</div>"#
        );
        assert_eq!(scrub_xhtml("<div>plain</div>", &[&m]), None);
        // Malformed input does not panic.
        for bad in [
            "<div",
            "<p a=\"John",
            "<!-- John",
            "<![CDATA[John",
            "&",
            "John &x",
            "<>",
        ] {
            let _ = scrub_xhtml(bad, &[&m]);
        }
    }
}
