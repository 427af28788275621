//! The rule engine: applies a [`Config`]'s rules to one resource at a time.
//!
//! For each resource: nested resources (`contained`, Bundle entries) are processed first
//! as resources of their own; then each rule, in order, selects nodes (a FHIRPath
//! expression, or `nodesByType`/`nodesByName` over the typed tree) and applies its method
//! to every node of the selected subtrees that no earlier rule processed; then free text
//! that no rule processed is scrubbed (if enabled); then removed values are pruned
//! (empty objects and arrays, extensions left without a value) with primitive arrays and
//! their `_name` arrays kept aligned.

use crate::config::CompiledPath;
use crate::config::{
    Config, DateShiftScope, Method, NodesBy, OtherValues, ProcessingErrorMode, RangeType, Rule,
};
use crate::crypto;
use crate::dates::{self, Ymd};
use crate::error::DeidError;
use crate::scrub::{self, PatientEntry, PhiIndex, PhiTerms, TermMatcher};
use crate::tree::{self, Kind, Seg, Tree};
use base64::Engine as _;
use rand::Rng;
use salus_fhirpath::{Env, Item};
use serde_json::Value;
use std::cell::OnceCell;
use std::collections::HashSet;

/// The de-identification engine. Build once from a [`Config`]; it is `Send + Sync` and
/// can be shared between threads.
pub struct Anonymizer {
    config: Config,
    hash_key: Vec<u8>,
    shift_key: Vec<u8>,
    encrypt_key: Vec<u8>,
    env: Env<'static>,
    phi: PhiIndex,
    /// Learn PHI terms from Patient/RelatedPerson/Person resources as they pass through
    /// (so later resources about the same patient get their free text scrubbed).
    learn: bool,
    /// The date ages are measured against (today, unless fixed for reproducible runs).
    today: Ymd,
    restricted_zips: HashSet<String>,
    needs_terms: bool,
}

impl std::fmt::Debug for Anonymizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Anonymizer")
            .field("rules", &self.config.rules.len())
            .field("parameters", &self.config.parameters)
            .field("learn", &self.learn)
            .field("today", &self.today)
            .finish()
    }
}

/// What one primitive becomes.
enum Action {
    Keep,
    Remove,
    Replace(Value),
}

/// Per-resource state.
struct ResCtx {
    date_offset: i64,
    /// The resource's own terms (its names, identifiers, ...).
    terms: PhiTerms,
    matcher: OnceCell<TermMatcher>,
    /// The patients it is about (their matchers are shared).
    patients: Vec<std::sync::Arc<PatientEntry>>,
}

impl ResCtx {
    fn matchers(&self) -> Vec<&TermMatcher> {
        let mut m = Vec::with_capacity(1 + self.patients.len());
        if !self.terms.is_empty() {
            m.push(self.matcher.get_or_init(|| TermMatcher::new(&self.terms)));
        }
        m.extend(self.patients.iter().map(|p| p.matcher()));
        m
    }
}

/// Counts from processing one resource (Bundles: entries left out under
/// `processingError: skip`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub skipped_entries: u64,
}

static DESCENDANTS: std::sync::LazyLock<salus_fhirpath::Expr> = std::sync::LazyLock::new(|| {
    salus_fhirpath::parse("descendants()").expect("static FHIRPath expression")
});

const DATE_TYPES: &[&str] = &["date", "dateTime", "instant"];
const INT_TYPES: &[&str] = &["integer", "positiveInt", "unsignedInt", "integer64"];

fn is_reference_like(tree: &Tree, i: u32) -> bool {
    let n = &tree.nodes[i as usize];
    let Some(p) = tree.parent(i) else {
        return false;
    };
    (&*n.name == "reference" && p.ty == "Reference")
        || (&*n.name == "fullUrl" && p.ctx == Some("Bundle.entry"))
        || (&*n.name == "url" && p.ctx == Some("Bundle.entry.request"))
        || (&*n.name == "location" && p.ctx == Some("Bundle.entry.response"))
}

fn is_free_text(tree: &Tree, i: u32) -> bool {
    let n = &tree.nodes[i as usize];
    if !matches!(
        n.kind,
        Kind::Primitive {
            has_value: true,
            ..
        }
    ) {
        return false;
    }
    let parent_ty = tree.parent(i).map_or("", |p| p.ty);
    n.ty == "xhtml"
        || (&*n.name == "text" && parent_ty == "Annotation")
        || (matches!(&*n.name, "comment" | "description")
            && matches!(n.ty, "string" | "markdown" | ""))
        || (matches!(&*n.name, "data" | "title") && parent_ty == "Attachment")
}

fn json_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Age in years of an `Age` value (`None` when there is no number).
fn age_years(age: &Value) -> Option<f64> {
    let v = age.get("value")?.as_f64()?;
    let unit = age
        .get("code")
        .or_else(|| age.get("unit"))
        .and_then(Value::as_str)
        .unwrap_or("a")
        .to_ascii_lowercase();
    Some(match unit.as_str() {
        "mo" | "month" | "months" => v / 12.0,
        "wk" | "week" | "weeks" => v / 52.0,
        "d" | "day" | "days" => v / 365.0,
        "h" | "hour" | "hours" => v / 8760.0,
        "min" | "minute" | "minutes" => v / 525_600.0,
        _ => v,
    })
}

fn number_value(text: &str) -> Option<Value> {
    serde_json::from_str::<Value>(text)
        .ok()
        .filter(Value::is_number)
}

impl Anonymizer {
    /// Build an engine. Empty `cryptoHashKey`/`dateShiftKey` get a random key for the
    /// life of this engine (consistent within a run, not across runs).
    pub fn new(config: Config) -> Anonymizer {
        crate::tree::preload();
        let p = &config.parameters;
        let key_or_random = |k: &str| {
            if k.is_empty() {
                crypto::random_key()
            } else {
                k.as_bytes().to_vec()
            }
        };
        let hash_key = key_or_random(&p.crypto_hash_key);
        let shift_key = key_or_random(&p.date_shift_key);
        let encrypt_key = p.encrypt_key.as_bytes().to_vec();
        let restricted_zips = p
            .restricted_zip_code_tabulation_areas
            .iter()
            .cloned()
            .collect();
        let needs_terms = p.enable_free_text_scrubbing
            || config
                .rules
                .iter()
                .any(|r| matches!(r.method, Method::Scrub));
        Anonymizer {
            config,
            hash_key,
            shift_key,
            encrypt_key,
            env: Env::new(),
            phi: PhiIndex::new(),
            learn: true,
            today: Ymd::today(),
            restricted_zips,
            needs_terms,
        }
    }

    /// The engine for the shipped HIPAA Safe Harbor configuration.
    pub fn safe_harbor() -> Anonymizer {
        Anonymizer::new(Config::safe_harbor())
    }

    /// Measure ages (the over-89 rule) against this date instead of today.
    pub fn with_today(mut self, today: Ymd) -> Anonymizer {
        self.today = today;
        self
    }

    /// Whether to learn PHI terms from Patient/RelatedPerson/Person resources as they are
    /// anonymized (default: yes).
    pub fn with_learning(mut self, on: bool) -> Anonymizer {
        self.learn = on;
        self
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The PHI terms learnt so far, by patient id.
    pub fn phi_index(&self) -> &PhiIndex {
        &self.phi
    }

    /// Learn the PHI terms of a resource (a pre-pass, so free text in resources that come
    /// before their Patient is scrubbed of the patient's names too).
    pub fn learn(&self, resource: &Value) {
        self.phi.learn(resource);
    }

    /// The `cryptoHash` of a value with this engine's key (for checking and joining).
    pub fn hash(&self, value: &str) -> String {
        crypto::hash_hex(&self.hash_key, value)
    }

    /// De-identify a resource (a Bundle: every entry, with fullUrls kept consistent).
    pub fn anonymize(&self, mut resource: Value) -> Result<Value, DeidError> {
        self.anonymize_in_place(&mut resource, None)?;
        Ok(resource)
    }

    /// De-identify in place; `file_name` is the scope value for `dateShiftScope: file`.
    pub fn anonymize_in_place(
        &self,
        resource: &mut Value,
        file_name: Option<&str>,
    ) -> Result<(), DeidError> {
        self.anonymize_counted(resource, file_name).map(|_| ())
    }

    pub(crate) fn anonymize_counted(
        &self,
        resource: &mut Value,
        file_name: Option<&str>,
    ) -> Result<Outcome, DeidError> {
        if self.learn {
            self.phi.learn(resource);
        }
        self.process(resource, None, file_name, 0)
    }

    pub(crate) fn mode(&self) -> ProcessingErrorMode {
        self.config.processing_error
    }

    fn scope_offset(&self, resource_scope: &str, file_name: Option<&str>) -> i64 {
        let p = &self.config.parameters;
        if let Some(n) = p.date_shift_fixed_offset_in_days {
            return n;
        }
        let scope = match p.date_shift_scope {
            DateShiftScope::Resource => resource_scope,
            DateShiftScope::File => file_name.unwrap_or(""),
            DateShiftScope::Folder => "",
        };
        crypto::date_offset(&self.shift_key, scope)
    }

    fn process(
        &self,
        res: &mut Value,
        container_scope: Option<&str>,
        file_name: Option<&str>,
        depth: usize,
    ) -> Result<Outcome, DeidError> {
        let rt = match res.get("resourceType") {
            Some(Value::String(s)) if res.is_object() => s.clone(),
            _ => {
                return Err(DeidError::InvalidResource(
                    "expected a JSON object with a string resourceType".into(),
                ))
            }
        };
        if depth > 16 {
            return Err(DeidError::InvalidResource(
                "resources nested too deeply".into(),
            ));
        }
        let own_id = res
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let scope_id = container_scope.unwrap_or(&own_id).to_string();
        let tree0 = Tree::build(res);

        // Terms for the scrubber, from the original values.
        let mut terms = PhiTerms::default();
        let mut patients = Vec::new();
        if self.needs_terms {
            scrub::collect_terms(res, &tree0, &mut terms);
            let mut pids = Vec::new();
            scrub::patient_ids(res, &tree0, &mut pids);
            pids.sort();
            pids.dedup();
            for pid in pids {
                if let Some(t) = self.phi.entry(&pid) {
                    patients.push(t);
                }
            }
        }
        let ctx = ResCtx {
            date_offset: self.scope_offset(&scope_id, file_name),
            terms,
            matcher: OnceCell::new(),
            patients,
        };

        // Nested resources first, each on its own.
        let mut outcome = Outcome::default();
        let mut drop_entries: Vec<usize> = Vec::new();
        let mut entry_ids: Vec<(usize, String, String)> = Vec::new();
        for i in 0..tree0.nodes.len() as u32 {
            if tree0.nodes[i as usize].kind != Kind::Nested {
                continue;
            }
            let is_entry =
                rt == "Bundle" && tree0.parent(i).and_then(|p| p.ctx) == Some("Bundle.entry");
            let path = tree0.value_path(i);
            let Some(slot) = tree::get_mut(res, &path) else {
                continue;
            };
            let mut nested = std::mem::take(slot);
            let old_id = nested
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let scope = if is_entry {
                None
            } else {
                Some(scope_id.as_str())
            };
            let r = self.process(&mut nested, scope, file_name, depth + 1);
            let new_id = nested
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if let Some(slot) = tree::get_mut(res, &path) {
                *slot = nested;
            }
            match r {
                Ok(o) => outcome.skipped_entries += o.skipped_entries,
                Err(_) if is_entry && self.mode() == ProcessingErrorMode::Skip => {
                    if let Some(Seg::Idx(ix)) = path.get(1) {
                        drop_entries.push(*ix);
                    }
                }
                Err(e) => return Err(e),
            }
            if is_entry {
                if let Some(Seg::Idx(ix)) = path.get(1) {
                    entry_ids.push((*ix, old_id, new_id));
                }
            }
        }
        // Original fullUrls and request URLs of Bundle entries.
        let originals: Vec<(usize, Option<String>, Option<String>)> = if rt == "Bundle" {
            entry_ids
                .iter()
                .map(|(ix, _, _)| {
                    let e = res.get("entry").and_then(|e| e.get(*ix));
                    let full = e
                        .and_then(|e| e.get("fullUrl"))
                        .and_then(Value::as_str)
                        .map(String::from);
                    let req = e
                        .and_then(|e| e.get("request"))
                        .and_then(|r| r.get("url"))
                        .and_then(Value::as_str)
                        .map(String::from);
                    (*ix, full, req)
                })
                .collect()
        } else {
            Vec::new()
        };

        // The rules.
        let mut tree = tree0;
        let mut processed = vec![false; tree.nodes.len()];
        for (ri, rule) in self.config.rules.iter().enumerate() {
            if let Some(t) = rule.compiled.resource_type() {
                if t != rt {
                    continue;
                }
            }
            let matched = self.select(ri, rule, res, &tree)?;
            if matched.is_empty() {
                continue;
            }
            let rebuild = self.apply(ri, rule, res, &tree, &mut processed, &matched, &ctx)?;
            if let Some(prefixes) = rebuild {
                let (t, p) = rebuild_tree(res, &tree, &processed, &prefixes);
                tree = t;
                processed = p;
            }
        }

        // Free text no rule processed.
        if self.config.parameters.enable_free_text_scrubbing {
            for i in 0..tree.nodes.len() as u32 {
                if !processed[i as usize] && is_free_text(&tree, i) {
                    processed[i as usize] = true;
                    let action = self.scrub_node(res, &tree, i, &ctx);
                    write_action(res, &tree, i, action);
                }
            }
        }

        // Bundle: fullUrls and request URLs follow hashed entry ids.
        if rt == "Bundle" {
            for ((ix, old_id, new_id), (_, full, req)) in entry_ids.iter().zip(&originals) {
                if old_id.is_empty() || *new_id != self.hash(old_id) {
                    continue;
                }
                let Some(entry) = res.get_mut("entry").and_then(|e| e.get_mut(*ix)) else {
                    continue;
                };
                if let (Some(orig), Some(cur)) =
                    (full, entry.get("fullUrl").and_then(Value::as_str))
                {
                    if cur == orig {
                        let h = crypto::hash_reference(&self.hash_key, orig);
                        entry["fullUrl"] = Value::String(h);
                    }
                }
                if let (Some(orig), Some(cur)) = (
                    req,
                    entry
                        .get("request")
                        .and_then(|r| r.get("url"))
                        .and_then(Value::as_str),
                ) {
                    if cur == orig && orig.contains(old_id.as_str()) {
                        let h = crypto::hash_reference(&self.hash_key, orig);
                        entry["request"]["url"] = Value::String(h);
                    }
                }
            }
            if !drop_entries.is_empty() {
                if let Some(Value::Array(entries)) = res.get_mut("entry") {
                    drop_entries.sort_unstable();
                    for ix in drop_entries.iter().rev() {
                        if *ix < entries.len() {
                            entries.remove(*ix);
                            outcome.skipped_entries += 1;
                        }
                    }
                }
            }
        }

        prune(res, false);
        Ok(outcome)
    }

    /// The nodes a rule selects, in order, without duplicates.
    fn select(
        &self,
        ri: usize,
        rule: &Rule,
        res: &Value,
        tree: &Tree,
    ) -> Result<Vec<u32>, DeidError> {
        let err = |e: salus_fhirpath::EvalError| DeidError::Processing {
            rule: ri,
            path: rule.path.clone(),
            message: e.to_string(),
        };
        let items = match &rule.compiled {
            CompiledPath::Expr { expr, .. } => expr.evaluate(res, &self.env).map_err(err)?,
            CompiledPath::NodesBy { by, arg, rest, .. } => {
                let cands: Vec<u32> = tree
                    .nodes
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| {
                        n.kind != Kind::Nested
                            && match by {
                                NodesBy::Type => n.ty == arg,
                                NodesBy::Name => &*n.name == arg,
                            }
                    })
                    .map(|(i, _)| i as u32)
                    .collect();
                let Some(rest) = rest else {
                    return Ok(cands);
                };
                // Backbone elements have no type of their own to build an item from: take
                // the typed items the FHIRPath engine gives for them.
                let backbone =
                    |i: &u32| tree.nodes[*i as usize].ctx.is_some_and(|c| c.contains('.'));
                let mut typed: std::collections::HashMap<usize, Item<'_>> =
                    std::collections::HashMap::new();
                if cands.iter().any(backbone) {
                    let all = DESCENDANTS.evaluate(res, &self.env).map_err(err)?;
                    for item in all {
                        if let Some(j) = item.as_json() {
                            typed.insert(j as *const Value as usize, item);
                        }
                    }
                }
                let focus: Vec<Item<'_>> = cands
                    .iter()
                    .filter_map(|&i| {
                        let n = &tree.nodes[i as usize];
                        let v = tree::get(res, &tree.value_path(i))?;
                        Some(match n.ctx {
                            Some(c) if c.contains('.') => typed
                                .get(&(v as *const Value as usize))
                                .cloned()
                                .unwrap_or_else(|| Item::from_json(v)),
                            _ if n.ty.is_empty() => Item::from_json(v),
                            _ => Item::from_json_typed(v, n.ty),
                        })
                    })
                    .collect();
                if focus.is_empty() {
                    return Ok(Vec::new());
                }
                rest.evaluate_on(&focus, Some(res), &self.env)
                    .map_err(err)?
            }
        };
        let mut out = Vec::with_capacity(items.len());
        let mut seen = HashSet::new();
        for item in &items {
            let j = item.as_json().or_else(|| item.primitive_extension_json());
            if let Some(i) = j.and_then(|j| tree.node_at(j)) {
                if seen.insert(i) {
                    out.push(i);
                }
            }
        }
        Ok(out)
    }

    /// Apply a rule's method to the selected nodes. Returns the path keys of replaced
    /// complex nodes when the JSON structure changed (the tree must be rebuilt).
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &self,
        ri: usize,
        rule: &Rule,
        res: &mut Value,
        tree: &Tree,
        processed: &mut [bool],
        matched: &[u32],
        ctx: &ResCtx,
    ) -> Result<Option<Vec<String>>, DeidError> {
        let perr = |message: String| DeidError::Processing {
            rule: ri,
            path: rule.path.clone(),
            message,
        };
        match &rule.method {
            Method::Substitute { replace_with } => {
                let mut replaced = Vec::new();
                for &m in matched {
                    if processed[m as usize] {
                        continue;
                    }
                    let n = &tree.nodes[m as usize];
                    let new = match n.kind {
                        Kind::Primitive {
                            has_value: true, ..
                        } => substitute_primitive(n.ty, replace_with).map_err(perr)?,
                        Kind::Primitive { .. } | Kind::Nested | Kind::Root => continue,
                        Kind::Complex => match replace_with {
                            Value::Object(_) | Value::Array(_) => replace_with.clone(),
                            Value::String(s) => match serde_json::from_str::<Value>(s) {
                                Ok(v @ Value::Object(_)) => v,
                                _ => {
                                    return Err(perr(format!(
                                        "replaceWith for a {} node must be a JSON object",
                                        if n.ty.is_empty() { "complex" } else { n.ty }
                                    )))
                                }
                            },
                            _ => {
                                return Err(perr(
                                    "replaceWith for a complex node must be a JSON object".into(),
                                ))
                            }
                        },
                    };
                    mark(processed, m, n.end);
                    if n.kind == Kind::Complex {
                        replaced.push(tree.path_key(m));
                    }
                    write_action(res, tree, m, Action::Replace(new));
                }
                Ok((!replaced.is_empty()).then_some(replaced))
            }
            Method::Generalize {
                cases,
                other_values,
            } => {
                let mut actions = Vec::new();
                for &m in matched {
                    if processed[m as usize] {
                        continue;
                    }
                    let n = &tree.nodes[m as usize];
                    if matches!(n.kind, Kind::Nested | Kind::Root) {
                        continue;
                    }
                    let Some(v) = tree::get(res, &tree.value_path(m)) else {
                        continue;
                    };
                    let item = if n.ty.is_empty() {
                        Item::from_json(v)
                    } else {
                        Item::from_json_typed(v, n.ty)
                    };
                    let focus = [item];
                    let mut action = match other_values {
                        OtherValues::Redact => Action::Remove,
                        OtherValues::Keep => Action::Keep,
                    };
                    for case in cases {
                        let r = case
                            .condition
                            .evaluate_on(&focus, Some(res), &self.env)
                            .map_err(|e| {
                                perr(format!("case `{}`: {e}", case.condition.source()))
                            })?;
                        if r.len() == 1 && r[0].as_bool() == Some(true) {
                            let val = case
                                .value
                                .evaluate_on(&focus, Some(res), &self.env)
                                .map_err(|e| {
                                    perr(format!("case value `{}`: {e}", case.value.source()))
                                })?;
                            action = match val.first() {
                                Some(it) => Action::Replace(it.to_json()),
                                None => Action::Remove,
                            };
                            break;
                        }
                    }
                    actions.push((m, action));
                }
                let mut replaced = Vec::new();
                for (m, action) in actions {
                    let n = &tree.nodes[m as usize];
                    if n.kind == Kind::Complex {
                        replaced.push(tree.path_key(m));
                        if matches!(action, Action::Remove) {
                            // Remove the whole subtree's values.
                            for i in m..n.end {
                                if !processed[i as usize]
                                    && matches!(
                                        tree.nodes[i as usize].kind,
                                        Kind::Primitive {
                                            has_value: true,
                                            ..
                                        }
                                    )
                                {
                                    write_action(res, tree, i, Action::Remove);
                                }
                            }
                            mark(processed, m, n.end);
                            continue;
                        }
                    }
                    mark(processed, m, n.end);
                    write_action(res, tree, m, action);
                }
                Ok((!replaced.is_empty()).then_some(replaced))
            }
            method => {
                for &m in matched {
                    let end = tree.nodes[m as usize].end;
                    let mut i = m;
                    while i < end {
                        if processed[i as usize] {
                            i += 1;
                            continue;
                        }
                        let n = &tree.nodes[i as usize];
                        // Ages of 89 or less survive a redact with enablePartialAgesForRedact.
                        if n.kind == Kind::Complex
                            && n.ty == "Age"
                            && matches!(method, Method::Redact)
                            && self.config.parameters.enable_partial_ages_for_redact
                        {
                            let years = tree::get(res, &tree.value_path(i)).and_then(age_years);
                            if years.is_some_and(|y| y <= 89.0) {
                                mark(processed, i, n.end);
                                i = n.end;
                                continue;
                            }
                        }
                        processed[i as usize] = true;
                        if matches!(
                            n.kind,
                            Kind::Primitive {
                                has_value: true,
                                ..
                            }
                        ) {
                            let action = self
                                .primitive_action(method, res, tree, i, ctx)
                                .map_err(perr)?;
                            write_action(res, tree, i, action);
                        }
                        i += 1;
                    }
                }
                Ok(None)
            }
        }
    }

    fn primitive_action(
        &self,
        method: &Method,
        res: &Value,
        tree: &Tree,
        i: u32,
        ctx: &ResCtx,
    ) -> Result<Action, String> {
        let n = &tree.nodes[i as usize];
        let Some(v) = tree::get(res, &tree.value_path(i)) else {
            return Ok(Action::Keep);
        };
        let p = &self.config.parameters;
        Ok(match method {
            Method::Keep => Action::Keep,
            Method::Redact => {
                let parent = tree.parent(i);
                let parent_ty = parent.map_or("", |p| p.ty);
                if p.enable_partial_dates_for_redact && matches!(n.ty, "date" | "dateTime") {
                    match v.as_str().and_then(dates::parse) {
                        Some(d) if !dates::indicates_age_over_89(&d, self.today) => {
                            Action::Replace(Value::String(format!("{:04}", d.year)))
                        }
                        _ => Action::Remove,
                    }
                } else if p.enable_partial_zip_codes_for_redact
                    && &*n.name == "postalCode"
                    && parent_ty == "Address"
                {
                    let zip = v.as_str().unwrap_or("");
                    match zip.get(0..3) {
                        Some(prefix) if prefix.bytes().all(|b| b.is_ascii_digit()) => {
                            let head = if self.restricted_zips.contains(prefix) {
                                "000"
                            } else {
                                prefix
                            };
                            let stars = "*".repeat(zip.chars().count().saturating_sub(3));
                            Action::Replace(Value::String(format!("{head}{stars}")))
                        }
                        _ => Action::Remove,
                    }
                } else if p.enable_partial_ages_for_redact
                    && parent_ty == "Age"
                    && &*n.name == "value"
                {
                    let keep = parent_json(res, tree, i)
                        .and_then(age_years)
                        .is_some_and(|y| y <= 89.0);
                    if keep {
                        Action::Keep
                    } else {
                        Action::Remove
                    }
                } else {
                    Action::Remove
                }
            }
            Method::DateShift => {
                if !DATE_TYPES.contains(&n.ty) {
                    return Ok(Action::Keep);
                }
                let s = v
                    .as_str()
                    .ok_or_else(|| format!("{} value is not a string", n.ty))?;
                // The message names the node, not its value (errors end up in logs).
                let d = dates::parse(s).ok_or_else(|| {
                    format!("the {} at {} does not parse", n.ty, tree.path_key(i))
                })?;
                if d.day.is_some() {
                    match dates::shift(&d, ctx.date_offset) {
                        Some(s) => Action::Replace(Value::String(s)),
                        None => Action::Remove,
                    }
                } else if dates::indicates_age_over_89(&d, self.today) {
                    Action::Remove
                } else {
                    Action::Replace(Value::String(format!("{:04}", d.year)))
                }
            }
            Method::CryptoHash => {
                let text = json_text(v);
                let h = if is_reference_like(tree, i) {
                    crypto::hash_reference(&self.hash_key, &text)
                } else {
                    crypto::hash_hex(&self.hash_key, &text)
                };
                Action::Replace(Value::String(h))
            }
            Method::Encrypt => {
                let c =
                    crypto::encrypt(&self.encrypt_key, &json_text(v)).map_err(|e| e.to_string())?;
                Action::Replace(Value::String(c))
            }
            Method::Perturb {
                span,
                range_type,
                round_to,
            } => {
                let Some(x) = v.as_f64().filter(|_| v.is_number()) else {
                    return Ok(Action::Keep);
                };
                let half = match range_type {
                    RangeType::Fixed => span / 2.0,
                    RangeType::Proportional => span * x.abs() / 2.0,
                };
                let noise = if half > 0.0 && half.is_finite() {
                    rand::thread_rng().gen_range(-half..=half)
                } else {
                    0.0
                };
                let y = x + noise;
                let text = if INT_TYPES.contains(&n.ty) {
                    let mut r = y.round();
                    if n.ty == "unsignedInt" {
                        r = r.max(0.0);
                    } else if n.ty == "positiveInt" {
                        r = r.max(1.0);
                    }
                    format!("{}", r as i64)
                } else {
                    format!("{:.*}", *round_to as usize, y)
                };
                match number_value(&text) {
                    Some(num) => Action::Replace(num),
                    None => Action::Keep,
                }
            }
            Method::Scrub => self.scrub_node(res, tree, i, ctx),
            Method::Substitute { .. } | Method::Generalize { .. } => Action::Keep,
        })
    }

    fn scrub_node(&self, res: &Value, tree: &Tree, i: u32, ctx: &ResCtx) -> Action {
        let n = &tree.nodes[i as usize];
        let Some(Value::String(s)) = tree::get(res, &tree.value_path(i)) else {
            return Action::Keep;
        };
        let parent_ty = tree.parent(i).map_or("", |p| p.ty);
        if &*n.name == "data" && parent_ty == "Attachment" {
            return self.scrub_attachment(res, tree, i, s, ctx);
        }
        let out = if n.ty == "xhtml" {
            scrub::scrub_xhtml(s, &ctx.matchers())
        } else {
            scrub::scrub_plain(s, &ctx.matchers())
        };
        match out {
            Some(t) => Action::Replace(Value::String(t)),
            None => Action::Keep,
        }
    }

    /// Attachment data: text types are decoded, scrubbed and re-encoded; anything the
    /// scrubber cannot read (binary, unknown type, not UTF-8) is removed.
    fn scrub_attachment(
        &self,
        res: &Value,
        tree: &Tree,
        i: u32,
        data: &str,
        ctx: &ResCtx,
    ) -> Action {
        let ct = parent_json(res, tree, i)
            .and_then(|a| a.get("contentType"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_ascii_lowercase();
        let mime = ct.split(';').next().unwrap_or("").trim();
        let markup = mime.contains("html") || mime.contains("xml");
        let texty = mime.starts_with("text/") || mime.contains("json") || markup;
        if !texty {
            return Action::Remove;
        }
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(data.trim()) else {
            return Action::Remove;
        };
        let Ok(text) = String::from_utf8(raw) else {
            return Action::Remove;
        };
        let out = if markup {
            scrub::scrub_xhtml(&text, &ctx.matchers())
        } else {
            scrub::scrub_plain(&text, &ctx.matchers())
        };
        match out {
            Some(t) => Action::Replace(Value::String(
                base64::engine::general_purpose::STANDARD.encode(t.as_bytes()),
            )),
            None => Action::Keep,
        }
    }
}

fn parent_json<'v>(res: &'v Value, tree: &Tree, i: u32) -> Option<&'v Value> {
    let p = tree.nodes[i as usize].parent;
    if p == tree::NO_PARENT {
        return None;
    }
    tree::get(res, &tree.value_path(p))
}

fn mark(processed: &mut [bool], from: u32, end: u32) {
    for p in &mut processed[from as usize..end as usize] {
        *p = true;
    }
}

fn substitute_primitive(ty: &str, with: &Value) -> Result<Value, String> {
    Ok(match with {
        Value::String(s) if ty == "boolean" => match s.trim() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(format!("replaceWith '{s}' is not a boolean")),
        },
        Value::String(s) if ty == "decimal" || INT_TYPES.contains(&ty) => number_value(s.trim())
            .ok_or_else(|| format!("replaceWith '{s}' is not a number for a {ty}"))?,
        Value::Object(_) | Value::Array(_) => {
            return Err(format!(
                "replaceWith must be a single value for a {} node",
                if ty.is_empty() { "primitive" } else { ty }
            ))
        }
        Value::Null => return Err("replaceWith must not be null".into()),
        v => v.clone(),
    })
}

fn write_action(res: &mut Value, tree: &Tree, i: u32, action: Action) {
    let new = match action {
        Action::Keep => return,
        Action::Remove => Value::Null,
        Action::Replace(v) => v,
    };
    let path = tree.value_path(i);
    let n = &tree.nodes[i as usize];
    let attachment_data =
        &*n.name == "data" && tree.parent(i).is_some_and(|p| p.ty == "Attachment");
    if let Some(slot) = tree::get_mut(res, &path) {
        *slot = new;
    }
    if attachment_data {
        // Keep `size` true and drop a `hash` that no longer matches.
        let len = tree::get(res, &path)
            .and_then(Value::as_str)
            .and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok())
            .map(|b| b.len());
        let parent_path = &path[..path.len() - 1];
        if let Some(Value::Object(a)) = tree::get_mut(res, parent_path) {
            a.remove("hash");
            match len {
                Some(l) if a.contains_key("size") => {
                    a.insert("size".into(), Value::from(l as u64));
                }
                None => {
                    a.remove("size");
                }
                _ => {}
            }
        }
    }
}

/// Rebuild the tree after a structural change, carrying the processed flags (by
/// location) and marking everything below the replaced nodes processed.
fn rebuild_tree(
    res: &Value,
    old: &Tree,
    processed: &[bool],
    replaced: &[String],
) -> (Tree, Vec<bool>) {
    let done: HashSet<String> = (0..old.nodes.len() as u32)
        .filter(|&i| processed[i as usize])
        .map(|i| old.path_key(i))
        .collect();
    let tree = Tree::build(res);
    let flags = (0..tree.nodes.len() as u32)
        .map(|i| {
            let k = tree.path_key(i);
            done.contains(&k)
                || replaced.iter().any(|r| {
                    k == *r || (k.starts_with(r.as_str()) && k[r.len()..].starts_with('/'))
                })
        })
        .collect();
    (tree, flags)
}

/// Remove nulls, empty strings, empty objects and arrays, and extensions left with only
/// a `url`; keep primitive arrays aligned with their `_name` arrays. Returns whether the
/// value itself is now empty.
pub(crate) fn prune(v: &mut Value, in_extension: bool) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => {
            a.retain_mut(|x| !prune(x, in_extension));
            a.is_empty()
        }
        Value::Object(m) => {
            if !m.keys().any(|k| k.starts_with('_')) {
                // The common case: no primitive extensions to keep aligned.
                m.retain(|k, c| {
                    let is_ext = k == "extension" || k == "modifierExtension";
                    !prune(c, is_ext)
                });
                if in_extension && m.keys().all(|k| k == "url" || k == "id") {
                    return true;
                }
                return m.is_empty();
            }
            let old = std::mem::take(m);
            let mut entries: Vec<(String, Option<Value>)> =
                old.into_iter().map(|(k, v)| (k, Some(v))).collect();
            let pos: std::collections::HashMap<String, usize> = entries
                .iter()
                .enumerate()
                .map(|(i, (k, _))| (k.clone(), i))
                .collect();
            for i in 0..entries.len() {
                let k = entries[i].0.clone();
                if let Some(base) = k.strip_prefix('_') {
                    if pos.contains_key(base) {
                        continue; // handled with its value
                    }
                    if let Some(v) = entries[i].1.as_mut() {
                        if prune(v, false) {
                            entries[i].1 = None;
                        }
                    }
                    continue;
                }
                let is_ext = k == "extension" || k == "modifierExtension";
                let partner = pos.get(&format!("_{k}")).copied();
                let joint = partner.is_some_and(|j| {
                    matches!(
                        (&entries[i].1, &entries[j].1),
                        (Some(Value::Array(_)), Some(Value::Array(_)))
                    )
                });
                if let (true, Some(j)) = (joint, partner) {
                    let vals = match entries[i].1.take() {
                        Some(Value::Array(a)) => a,
                        _ => Vec::new(),
                    };
                    let exts = match entries[j].1.take() {
                        Some(Value::Array(a)) => a,
                        _ => Vec::new(),
                    };
                    let len = vals.len().max(exts.len());
                    let mut vals = vals.into_iter();
                    let mut exts = exts.into_iter();
                    let mut nv = Vec::with_capacity(len);
                    let mut ne = Vec::with_capacity(len);
                    for _ in 0..len {
                        let mut a = vals.next().unwrap_or(Value::Null);
                        let mut b = exts.next().unwrap_or(Value::Null);
                        let ea = prune(&mut a, false);
                        let eb = prune(&mut b, false);
                        if ea && eb {
                            continue;
                        }
                        nv.push(if ea { Value::Null } else { a });
                        ne.push(if eb { Value::Null } else { b });
                    }
                    if nv.iter().any(|x| !x.is_null()) {
                        entries[i].1 = Some(Value::Array(nv));
                    }
                    if ne.iter().any(|x| !x.is_null()) {
                        entries[j].1 = Some(Value::Array(ne));
                    }
                } else {
                    if let Some(v) = entries[i].1.as_mut() {
                        if prune(v, is_ext) {
                            entries[i].1 = None;
                        }
                    }
                    if let Some(j) = partner {
                        if let Some(v) = entries[j].1.as_mut() {
                            if prune(v, false) {
                                entries[j].1 = None;
                            }
                        }
                    }
                }
            }
            *m = entries
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k, v)))
                .collect();
            if in_extension && m.keys().all(|k| k == "url" || k == "id") {
                return true;
            }
            m.is_empty()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn age_units() {
        let a = |v: f64, code: &str| age_years(&json!({"value": v, "code": code})).unwrap();
        assert_eq!(a(90.0, "a"), 90.0);
        assert_eq!(a(24.0, "mo"), 2.0);
        assert_eq!(a(104.0, "wk"), 2.0);
        assert_eq!(a(730.0, "d"), 2.0);
        assert_eq!(age_years(&json!({"value": 3})).unwrap(), 3.0);
        assert!(age_years(&json!({"unit": "a"})).is_none());
    }

    #[test]
    fn free_text_and_reference_like_nodes() {
        let r = json!({"resourceType": "Bundle", "type": "collection",
            "entry": [{"fullUrl": "urn:uuid:x", "request": {"method": "GET", "url": "Patient/1"}}]});
        let t = Tree::build(&r);
        let find = |name: &str| t.nodes.iter().position(|n| &*n.name == name).unwrap() as u32;
        assert!(is_reference_like(&t, find("fullUrl")));
        assert!(is_reference_like(&t, find("url")));
        let o = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "note": [{"text": "free"}], "text": {"status": "generated", "div": "<div/>"}});
        let t = Tree::build(&o);
        let texts: Vec<bool> = (0..t.nodes.len() as u32)
            .filter(|&i| &*t.nodes[i as usize].name == "text")
            .map(|i| is_free_text(&t, i))
            .collect();
        // CodeableConcept.text is not free text; Annotation.text is; Narrative is complex.
        assert_eq!(texts, vec![false, true, false]);
        let div = t.nodes.iter().position(|n| &*n.name == "div").unwrap() as u32;
        assert!(is_free_text(&t, div));
    }

    #[test]
    fn prune_keeps_alignment() {
        let mut v = json!({"resourceType": "Patient",
            "name": [{"given": [null, "B", null], "_given": [{"extension": [{"url": "u", "valueString": "x"}]}, null, {"id": ""}]}],
            "extension": [{"url": "only-url"}],
            "address": [{"line": [null]}],
            "text": ""});
        prune(&mut v, false);
        assert_eq!(
            v,
            json!({"resourceType": "Patient",
                "name": [{"given": [null, "B"], "_given": [{"extension": [{"url": "u", "valueString": "x"}]}, null]}]})
        );
    }
}
