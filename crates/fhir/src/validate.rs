//! Structural validation of FHIR R4 JSON resources against the generated element tables.
//!
//! [`validate_resource`] walks a resource once and reports every problem it finds as an
//! [`Issue`]. It checks, per the R4 StructureDefinitions and the JSON format
//! (<http://hl7.org/fhir/R4/json.html>):
//! - a JSON object with a known, concrete `resourceType` (`resourceType` appears nowhere else);
//! - unknown properties ([`IssueCode::Structure`]);
//! - array versus single value by the maximum cardinality, `max` limits, `max = 0`;
//! - required elements (`min >= 1`, [`IssueCode::Required`]), choice elements counted once;
//! - complex types, recursing through datatype and backbone definitions (content references
//!   such as `Questionnaire.item.item` included);
//! - choice elements: only the allowed type suffixes, at most one per element;
//! - primitive formats ([`crate::primitive`]), the JSON type of each primitive;
//! - no `null`, `""`, `{}` or `[]`, except `null` placeholders aligning a primitive array
//!   with its `_name` extension array;
//! - primitive extensions `_name`: only for primitive elements, objects with `id` and
//!   `extension` only, arrays aligned with their values;
//! - resources inside `contained`, `Bundle.entry.resource`, `Parameters.parameter.resource`
//!   (every element of type `Resource`), validated as resources; contained resources carry
//!   no `contained`, `meta.versionId`, `meta.lastUpdated` or `meta.security` (dom-2/4/5);
//! - `Extension` (url, one `value[x]` of any allowed type, ext-1: value or extensions, not
//!   both) and `ele-1` (an element has a value or children besides `id`);
//! - codes of `required` bindings whose value set can be enumerated ([`IssueCode::CodeInvalid`]);
//!   for `Coding`/`CodeableConcept`, codings whose system the value set draws from.
//!
//! Locations: FHIRPath-like, starting at the resource type (`Patient.name[0].given[1]`).
//! Choice elements use their JSON name (`Observation.valueQuantity.unit`); a primitive's
//! `_name` extension is located at the primitive (`Patient.birthDate.extension[0].url`);
//! a nested resource adds `ofType(Type)` (`Bundle.entry[2].resource.ofType(Patient).gender`,
//! `Patient.contained[0].ofType(Organization).name`).
//!
//! Speed: the element tables are compiled once into a graph of nodes whose properties are
//! keyed by JSON name (choice elements pre-expanded) in a fast hash map; the walk allocates
//! only when it reports an issue.

use crate::defs::{self, TypeKind, ValueSetDef};
use crate::hash::FastMap;
use crate::primitive::{has_discouraged_controls, JsonKind, PrimitiveError, PrimitiveType};
use crate::{Issue, IssueCode};
use serde_json::{Map, Value};
use std::sync::LazyLock;

/// Validate a resource; returns every problem found (errors, possibly warnings). An empty
/// result means the resource is valid.
pub fn validate_resource(resource: &Value) -> Vec<Issue> {
    let mut v = Walker {
        schema: &SCHEMA,
        issues: Vec::new(),
    };
    v.resource(resource, None, false);
    v.issues
}

/// Whether `validate_resource` finds no error (warnings allowed).
pub fn is_valid(resource: &Value) -> bool {
    !validate_resource(resource).iter().any(Issue::is_error)
}

/// Build the validator's schema now rather than on the first validation.
pub(crate) fn preload() {
    LazyLock::force(&SCHEMA);
}

// ------------------------------------------------------------------------------------------
// The compiled schema
// ------------------------------------------------------------------------------------------

type NodeId = u32;

/// Children per node are tracked in a bitset of this many bits.
const MAX_CHILDREN: usize = 256;

struct Schema {
    nodes: Vec<Node>,
    /// Concrete resource type → node.
    resources: FastMap<&'static str, NodeId>,
    /// The `Element` node (`id`, `extension`): the shape of a primitive's `_name` object.
    element: NodeId,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum NodeKind {
    Resource,
    Extension,
    Other,
}

struct Node {
    /// Type or backbone path, for messages.
    name: &'static str,
    kind: NodeKind,
    /// JSON property name (choices expanded, no leading `_`) → property.
    props: FastMap<Box<str>, Prop>,
    children: Vec<Child>,
    /// Indices into `children` with `min >= 1`.
    required: Vec<u16>,
    /// For `Extension`: the `extension` and `value[x]` children (ext-1).
    ext_children: Option<(u16, u16)>,
    /// For `CodeableConcept`/`Coding`: how a required binding is checked on it.
    coded: Coded,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Coded {
    No,
    Coding,
    CodeableConcept,
}

struct Child {
    /// Element name as in the definition (`value[x]`, `status`).
    name: &'static str,
    min: u32,
    max: Option<u32>,
}

impl Child {
    fn is_array(&self) -> bool {
        self.max.is_none_or(|m| m > 1)
    }
}

#[derive(Clone, Copy)]
struct Prop {
    child: u16,
    ty: ValueType,
    binding: Option<&'static ValueSetDef>,
    /// An XML-attribute element (`id`, `Extension.url`): no `_name` form.
    attribute: bool,
    /// One type of a choice element.
    choice: bool,
    /// `DomainResource.contained`: nested resources get the contained-resource rules.
    contained: bool,
}

#[derive(Clone, Copy)]
enum ValueType {
    Primitive(PrimitiveType),
    Complex(NodeId),
    Resource,
}

static SCHEMA: LazyLock<Schema> = LazyLock::new(build_schema);

fn upper_first(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    if let Some(c) = chars.next() {
        out.push(c.to_ascii_uppercase());
    }
    out.extend(chars);
    out
}

fn build_schema() -> Schema {
    let types = defs::types();
    // Pass 1: a node per complex/resource type root and per backbone element.
    let mut nodes: Vec<Node> = Vec::new();
    let mut by_path: FastMap<&'static str, NodeId> = FastMap::default();
    for t in types.iter().filter(|t| t.kind != TypeKind::Primitive) {
        for (i, e) in t.elements.iter().enumerate() {
            let has_children = t
                .elements
                .get(i + 1)
                .is_some_and(|n| n.path.len() > e.path.len() && n.path.starts_with(e.path));
            if i == 0 || (e.content_reference.is_none() && has_children) {
                let kind = match (t.kind, i) {
                    (TypeKind::Resource, 0) => NodeKind::Resource,
                    (_, 0) if t.name == "Extension" => NodeKind::Extension,
                    _ => NodeKind::Other,
                };
                let coded = match (t.name, i) {
                    ("Coding", 0) => Coded::Coding,
                    ("CodeableConcept", 0) => Coded::CodeableConcept,
                    _ => Coded::No,
                };
                by_path.insert(e.path, nodes.len() as NodeId);
                nodes.push(Node {
                    name: e.path,
                    kind,
                    props: FastMap::default(),
                    children: Vec::new(),
                    required: Vec::new(),
                    ext_children: None,
                    coded,
                });
            }
        }
    }
    // Pass 2: children and properties.
    for t in types.iter().filter(|t| t.kind != TypeKind::Primitive) {
        for e in t.elements.iter().skip(1) {
            let Some((parent, _)) = e.path.rsplit_once('.') else {
                continue;
            };
            let Some(&nid) = by_path.get(parent) else {
                continue;
            };
            let binding = e
                .required_binding
                .and_then(defs::required_value_set)
                .filter(|vs| vs.is_enumerated());
            let node = &mut nodes[nid as usize];
            let ci = node.children.len() as u16;
            assert!(
                node.children.len() < MAX_CHILDREN,
                "{} has too many children",
                node.name
            );
            node.children.push(Child {
                name: e.name(),
                min: e.min,
                max: e.max,
            });
            if e.min >= 1 {
                node.required.push(ci);
            }
            let choice = e.is_choice();
            let base_name = e.name().trim_end_matches("[x]");
            let mut add = |json_name: String, ty: ValueType| {
                let prop = Prop {
                    child: ci,
                    ty,
                    binding,
                    attribute: e.is_attribute,
                    choice,
                    contained: base_name == "contained" && matches!(ty, ValueType::Resource),
                };
                nodes[nid as usize]
                    .props
                    .insert(json_name.into_boxed_str(), prop);
            };
            if let Some(r) = e.content_reference {
                let target = *by_path.get(r).unwrap_or_else(|| panic!("no node for {r}"));
                add(base_name.to_string(), ValueType::Complex(target));
                continue;
            }
            for ty in &e.types {
                let vt = if let Some(p) = PrimitiveType::from_name(ty.code) {
                    ValueType::Primitive(p)
                } else if ty.code == "Resource" {
                    ValueType::Resource
                } else if let Some(&own) = by_path
                    .get(e.path)
                    .filter(|_| matches!(ty.code, "BackboneElement" | "Element"))
                {
                    ValueType::Complex(own)
                } else {
                    let name = ty.profile.unwrap_or(ty.code);
                    ValueType::Complex(
                        *by_path
                            .get(name)
                            .unwrap_or_else(|| panic!("no node for type {name} ({})", e.path)),
                    )
                };
                let json_name = if choice {
                    format!("{base_name}{}", upper_first(ty.code))
                } else {
                    base_name.to_string()
                };
                add(json_name, vt);
            }
        }
    }
    for node in nodes.iter_mut().filter(|n| n.kind == NodeKind::Extension) {
        let idx = |name: &str| node.children.iter().position(|c| c.name == name);
        if let (Some(ext), Some(val)) = (idx("extension"), idx("value[x]")) {
            node.ext_children = Some((ext as u16, val as u16));
        }
    }
    let resources = defs::resource_types()
        .iter()
        .map(|&rt| (rt, by_path[rt]))
        .collect();
    let element = by_path["Element"];
    Schema {
        nodes,
        resources,
        element,
    }
}

// ------------------------------------------------------------------------------------------
// Locations
// ------------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Seg<'a> {
    Root(&'a str),
    Field(&'a str),
    Index(usize),
    OfType(&'a str),
}

/// A location as a stack-allocated linked list, rendered only when an issue needs it.
#[derive(Clone, Copy)]
struct Loc<'a> {
    parent: Option<&'a Loc<'a>>,
    seg: Seg<'a>,
}

impl<'a> Loc<'a> {
    fn child(&'a self, seg: Seg<'a>) -> Loc<'a> {
        Loc {
            parent: Some(self),
            seg,
        }
    }

    fn render(&self) -> String {
        let mut segs = Vec::new();
        let mut cur = Some(self);
        while let Some(l) = cur {
            segs.push(l.seg);
            cur = l.parent;
        }
        let mut out = String::new();
        for seg in segs.iter().rev() {
            match seg {
                Seg::Root(s) => out.push_str(s),
                Seg::Field(s) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(s);
                }
                Seg::Index(i) => {
                    out.push('[');
                    out.push_str(&i.to_string());
                    out.push(']');
                }
                Seg::OfType(t) => {
                    out.push_str(".ofType(");
                    out.push_str(t);
                    out.push(')');
                }
            }
        }
        out
    }
}

// ------------------------------------------------------------------------------------------
// The walk
// ------------------------------------------------------------------------------------------

struct Walker {
    schema: &'static Schema,
    issues: Vec<Issue>,
}

fn json_kind_name(k: JsonKind) -> &'static str {
    match k {
        JsonKind::Bool => "a JSON boolean",
        JsonKind::Number => "a JSON number",
        JsonKind::String => "a JSON string",
    }
}

impl Walker {
    fn report(&mut self, code: IssueCode, loc: Option<&Loc>, msg: String) {
        let mut issue = Issue::error(code, msg);
        if let Some(l) = loc {
            issue = issue.at(l.render());
        }
        self.issues.push(issue);
    }

    fn warn(&mut self, code: IssueCode, loc: &Loc, msg: String) {
        self.issues.push(Issue::warning(code, msg).at(loc.render()));
    }

    /// A resource at the top level (`at` = None) or inside an element of type `Resource`.
    fn resource(&mut self, value: &Value, at: Option<&Loc>, contained: bool) {
        let Some(obj) = value.as_object() else {
            self.report(
                IssueCode::Structure,
                at,
                "a resource must be a JSON object".into(),
            );
            return;
        };
        let rt = match obj.get("resourceType") {
            None => {
                self.report(IssueCode::Required, at, "missing resourceType".into());
                return;
            }
            Some(Value::String(s)) => s.as_str(),
            Some(_) => {
                self.report(
                    IssueCode::Structure,
                    at,
                    "resourceType must be a JSON string".into(),
                );
                return;
            }
        };
        let Some(&nid) = self.schema.resources.get(rt) else {
            self.report(
                IssueCode::Invalid,
                at,
                format!("unknown resourceType {:?}", truncate(rt, 64)),
            );
            return;
        };
        let loc = match at {
            None => Loc {
                parent: None,
                seg: Seg::Root(rt),
            },
            Some(parent) => parent.child(Seg::OfType(rt)),
        };
        self.object(nid, obj, &loc);
        if contained {
            self.contained_rules(obj, &loc);
        }
    }

    fn contained_rules(&mut self, obj: &Map<String, Value>, loc: &Loc) {
        if obj.contains_key("contained") {
            self.report(
                IssueCode::Invariant,
                Some(&loc.child(Seg::Field("contained"))),
                "a contained resource must not contain resources (dom-2)".into(),
            );
        }
        if let Some(meta) = obj.get("meta").and_then(Value::as_object) {
            let meta_loc = loc.child(Seg::Field("meta"));
            for key in ["versionId", "lastUpdated"] {
                if meta.contains_key(key) {
                    self.report(
                        IssueCode::Invariant,
                        Some(&meta_loc.child(Seg::Field(key))),
                        format!("a contained resource must not have meta.{key} (dom-4)"),
                    );
                }
            }
            if meta.contains_key("security") {
                self.report(
                    IssueCode::Invariant,
                    Some(&meta_loc.child(Seg::Field("security"))),
                    "a contained resource must not have a security label (dom-5)".into(),
                );
            }
        }
    }

    /// The properties of one JSON object described by node `nid`.
    fn object(&mut self, nid: NodeId, obj: &Map<String, Value>, loc: &Loc) {
        let schema = self.schema;
        let node = &schema.nodes[nid as usize];
        if obj.is_empty() {
            self.report(
                IssueCode::Structure,
                Some(loc),
                "empty object is not allowed".into(),
            );
            return;
        }
        let mut seen = [0u64; MAX_CHILDREN / 64];
        // (child, JSON name) of choice elements met so far.
        let mut choices: [(u16, &str); 8] = [(u16::MAX, ""); 8];
        let mut n_choices = 0;
        for (key, val) in obj {
            let (is_ext, name) = match key.strip_prefix('_') {
                Some(n) => (true, n),
                None => (false, key.as_str()),
            };
            let Some(prop) = node.props.get(name) else {
                // `resourceType` belongs to a resource's root, and to elements that are
                // really called so (ExampleScenario.instance.resourceType).
                if key == "resourceType" {
                    if node.kind != NodeKind::Resource {
                        self.report(
                            IssueCode::Structure,
                            Some(&loc.child(Seg::Field(key))),
                            "resourceType is only allowed at the root of a resource".into(),
                        );
                    }
                    continue;
                }
                self.report(
                    IssueCode::Structure,
                    Some(&loc.child(Seg::Field(key))),
                    format!("unknown element {key:?} in {}", node.name),
                );
                continue;
            };
            let field_loc = loc.child(Seg::Field(name));
            let child = &node.children[prop.child as usize];
            seen[prop.child as usize / 64] |= 1 << (prop.child % 64);
            if prop.choice {
                match choices[..n_choices]
                    .iter()
                    .find(|(c, n)| *c == prop.child && *n != name)
                {
                    Some((_, other)) => {
                        let other = *other;
                        self.report(
                            IssueCode::Structure,
                            Some(&field_loc),
                            format!(
                                "only one type of {} is allowed, found {other:?} and {name:?}",
                                child.name
                            ),
                        );
                    }
                    None if n_choices < choices.len() => {
                        choices[n_choices] = (prop.child, name);
                        n_choices += 1;
                    }
                    None => {}
                }
            }
            if child.max == Some(0) {
                self.report(
                    IssueCode::Structure,
                    Some(&field_loc),
                    format!("element {name:?} is not allowed here (max cardinality 0)"),
                );
                continue;
            }
            if is_ext {
                self.primitive_extension(prop, child, obj, name, val, &field_loc);
            } else {
                self.element_value(prop, child, obj, key, val, &field_loc);
            }
        }
        for &ci in &node.required {
            if seen[ci as usize / 64] & (1 << (ci % 64)) == 0 {
                let c = &node.children[ci as usize];
                self.report(
                    IssueCode::Required,
                    Some(&loc.child(Seg::Field(c.name))),
                    format!(
                        "missing required element {:?} (min cardinality {})",
                        c.name, c.min
                    ),
                );
            }
        }
        if node.kind == NodeKind::Extension {
            if let Some((ext, value)) = node.ext_children {
                let has = |i: u16| seen[i as usize / 64] & (1 << (i % 64)) != 0;
                if has(ext) == has(value) {
                    self.report(
                        IssueCode::Invariant,
                        Some(loc),
                        "an extension must have either extensions or a value[x], not both (ext-1)"
                            .into(),
                    );
                }
            }
        } else if node.kind == NodeKind::Other
            // A primitive's `_name` object is judged by `extension_object` instead: an id
            // alone is fine there when the primitive has a value.
            && nid != schema.element
            && obj.len() == 1
            && obj.contains_key("id")
        {
            self.report(
                IssueCode::Invariant,
                Some(loc),
                "an element must have a value or children besides id (ele-1)".into(),
            );
        }
    }

    /// The value of property `key` (not a `_name`), single or array per the cardinality.
    fn element_value(
        &mut self,
        prop: &Prop,
        child: &Child,
        obj: &Map<String, Value>,
        key: &str,
        val: &Value,
        loc: &Loc,
    ) {
        if child.is_array() {
            let Some(items) = val.as_array() else {
                self.report(
                    IssueCode::Structure,
                    Some(loc),
                    format!("element {key:?} must be a JSON array (max cardinality *)"),
                );
                return;
            };
            if items.is_empty() {
                self.report(
                    IssueCode::Structure,
                    Some(loc),
                    "empty array is not allowed".into(),
                );
                return;
            }
            if let Some(max) = child.max {
                if items.len() > max as usize {
                    self.report(
                        IssueCode::Structure,
                        Some(loc),
                        format!("{} items, at most {max} allowed", items.len()),
                    );
                }
            }
            for (i, item) in items.iter().enumerate() {
                let item_loc = loc.child(Seg::Index(i));
                if item.is_null() {
                    // Allowed only as a placeholder aligned with a `_key` extension.
                    let aligned = matches!(prop.ty, ValueType::Primitive(_))
                        && obj
                            .get(&format!("_{key}"))
                            .and_then(Value::as_array)
                            .and_then(|ext| ext.get(i))
                            .is_some_and(|e| !e.is_null());
                    if !aligned {
                        self.report(
                            IssueCode::Structure,
                            Some(&item_loc),
                            "null is only allowed in an array aligned with a non-null \
                             primitive extension"
                                .into(),
                        );
                    }
                    continue;
                }
                self.single_value(prop, item, &item_loc);
            }
        } else {
            if val.is_array() {
                self.report(
                    IssueCode::Structure,
                    Some(loc),
                    format!("element {key:?} must not be an array (max cardinality 1)"),
                );
                return;
            }
            if val.is_null() {
                self.report(
                    IssueCode::Structure,
                    Some(loc),
                    "null is not allowed".into(),
                );
                return;
            }
            self.single_value(prop, val, loc);
        }
    }

    fn single_value(&mut self, prop: &Prop, val: &Value, loc: &Loc) {
        match prop.ty {
            ValueType::Primitive(p) => match p.check(val) {
                Ok(()) => {
                    if let (PrimitiveType::String | PrimitiveType::Markdown, Value::String(s)) =
                        (p, val)
                    {
                        if has_discouraged_controls(s) {
                            self.warn(
                                IssueCode::Value,
                                loc,
                                "strings should not contain control characters other than \
                                 tab, CR and LF"
                                    .into(),
                            );
                        }
                    }
                    if let (Some(vs), Value::String(code)) = (prop.binding, val) {
                        if !vs.contains_code(code) {
                            self.report(
                                IssueCode::CodeInvalid,
                                Some(loc),
                                format!(
                                    "code {:?} is not in the required value set {}",
                                    truncate(code, 64),
                                    vs.url
                                ),
                            );
                        }
                    }
                }
                Err(PrimitiveError::WrongJsonType { expected }) => {
                    let what = if val.is_null() {
                        "null is not allowed".to_string()
                    } else {
                        format!("a {} must be {}", p.name(), json_kind_name(expected))
                    };
                    self.report(IssueCode::Structure, Some(loc), what);
                }
                Err(PrimitiveError::Format(msg)) => {
                    self.report(IssueCode::Value, Some(loc), msg);
                }
            },
            ValueType::Complex(nid) => match val.as_object() {
                Some(obj) => {
                    self.object(nid, obj, loc);
                    if let Some(vs) = prop.binding {
                        self.coded_binding(vs, nid, obj, loc);
                    }
                }
                None => {
                    let name = self.schema.nodes[nid as usize].name;
                    self.report(
                        IssueCode::Structure,
                        Some(loc),
                        format!("a {name} must be a JSON object"),
                    );
                }
            },
            ValueType::Resource => self.resource(val, Some(loc), prop.contained),
        }
    }

    /// Required binding on a `Coding` / `CodeableConcept`: codings from a system the value
    /// set draws on must use one of its codes.
    fn coded_binding(
        &mut self,
        vs: &'static ValueSetDef,
        nid: NodeId,
        obj: &Map<String, Value>,
        loc: &Loc,
    ) {
        match self.schema.nodes[nid as usize].coded {
            Coded::No => {}
            Coded::Coding => self.coding_in(vs, obj, loc),
            Coded::CodeableConcept => {
                if let Some(codings) = obj.get("coding").and_then(Value::as_array) {
                    let codings_loc = loc.child(Seg::Field("coding"));
                    for (i, c) in codings.iter().enumerate() {
                        if let Some(c) = c.as_object() {
                            self.coding_in(vs, c, &codings_loc.child(Seg::Index(i)));
                        }
                    }
                }
            }
        }
    }

    fn coding_in(&mut self, vs: &'static ValueSetDef, coding: &Map<String, Value>, loc: &Loc) {
        let system = coding.get("system").and_then(Value::as_str);
        let code = coding.get("code").and_then(Value::as_str);
        if let (Some(system), Some(code)) = (system, code) {
            if vs.contains(system, code) == Some(false) {
                self.report(
                    IssueCode::CodeInvalid,
                    Some(&loc.child(Seg::Field("code"))),
                    format!(
                        "code {:?} of {system} is not in the required value set {}",
                        truncate(code, 64),
                        vs.url
                    ),
                );
            }
        }
    }

    /// `_name`: the id/extensions of primitive element `name`.
    fn primitive_extension(
        &mut self,
        prop: &Prop,
        child: &Child,
        obj: &Map<String, Value>,
        name: &str,
        val: &Value,
        loc: &Loc,
    ) {
        if !matches!(prop.ty, ValueType::Primitive(_)) || prop.attribute {
            self.report(
                IssueCode::Structure,
                Some(loc),
                format!("\"_{name}\" is only allowed for a primitive element"),
            );
            return;
        }
        let values = obj.get(name);
        if child.is_array() {
            let Some(items) = val.as_array() else {
                self.report(
                    IssueCode::Structure,
                    Some(loc),
                    format!("\"_{name}\" must be a JSON array (max cardinality *)"),
                );
                return;
            };
            if items.is_empty() {
                self.report(
                    IssueCode::Structure,
                    Some(loc),
                    format!("\"_{name}\": empty array is not allowed"),
                );
                return;
            }
            let value_items = values.and_then(Value::as_array);
            if let Some(v) = value_items {
                if v.len() != items.len() {
                    self.report(
                        IssueCode::Structure,
                        Some(loc),
                        format!(
                            "\"_{name}\" has {} items but {name:?} has {}; they must align",
                            items.len(),
                            v.len()
                        ),
                    );
                }
            }
            for (i, item) in items.iter().enumerate() {
                let item_loc = loc.child(Seg::Index(i));
                let has_value = value_items
                    .and_then(|v| v.get(i))
                    .is_some_and(|v| !v.is_null());
                if item.is_null() {
                    if !has_value {
                        self.report(
                            IssueCode::Structure,
                            Some(&item_loc),
                            format!("null in \"_{name}\" must align with a value in {name:?}"),
                        );
                    }
                    continue;
                }
                self.extension_object(item, has_value, &item_loc);
            }
        } else {
            if val.is_array() {
                self.report(
                    IssueCode::Structure,
                    Some(loc),
                    format!("\"_{name}\" must not be an array (max cardinality 1)"),
                );
                return;
            }
            let has_value = values.is_some_and(|v| !v.is_null());
            self.extension_object(val, has_value, loc);
        }
    }

    fn extension_object(&mut self, val: &Value, has_value: bool, loc: &Loc) {
        let Some(obj) = val.as_object() else {
            let msg = if val.is_null() {
                "null is not allowed".to_string()
            } else {
                "a primitive extension must be a JSON object with id and/or extension".to_string()
            };
            self.report(IssueCode::Structure, Some(loc), msg);
            return;
        };
        self.object(self.schema.element, obj, loc);
        if !has_value && !obj.is_empty() && !obj.contains_key("extension") {
            self.report(
                IssueCode::Invariant,
                Some(loc),
                "a primitive without a value must have extensions (ele-1)".into(),
            );
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Severity;
    use serde_json::json;

    /// (code, location) of every issue.
    fn issues(v: &Value) -> Vec<(IssueCode, String)> {
        validate_resource(v)
            .into_iter()
            .map(|i| (i.code, i.expression.unwrap_or_default()))
            .collect()
    }

    fn assert_valid(v: Value) {
        let found = validate_resource(&v);
        assert!(found.is_empty(), "expected valid, got {found:#?}");
    }

    fn assert_issue(v: Value, code: IssueCode, at: &str) {
        let found = issues(&v);
        assert!(
            found.iter().any(|(c, l)| *c == code && l == at),
            "expected {code:?} at {at}, got {found:#?}"
        );
    }

    fn patient() -> Value {
        json!({
            "resourceType": "Patient",
            "id": "p1",
            "meta": {"lastUpdated": "2024-01-02T03:04:05.678Z", "profile": ["http://x/p"]},
            "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"},
            "identifier": [{"system": "urn:oid:1.2.3", "value": "123"}],
            "active": true,
            "name": [{"use": "official", "family": "Chalmers", "given": ["Peter", "James"]}],
            "telecom": [{"system": "phone", "value": "(03) 5555 6473", "use": "work", "rank": 1}],
            "gender": "male",
            "birthDate": "1974-12-25",
            "_birthDate": {"extension": [{
                "url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                "valueDateTime": "1974-12-25T14:35:45-05:00"
            }]},
            "deceasedBoolean": false,
            "address": [{"line": ["534 Erewhon St"], "city": "PleasantVille", "postalCode": "3999"}],
            "contact": [{"relationship": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0131", "code": "N"}]}],
                          "name": {"family": "du Marché"}, "gender": "female"}],
            "managingOrganization": {"reference": "Organization/1"}
        })
    }

    fn observation() -> Value {
        json!({
            "resourceType": "Observation",
            "id": "o1",
            "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7", "display": "Body Weight"}]},
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2016-03-28",
            "valueQuantity": {"value": 185, "unit": "lbs", "system": "http://unitsofmeasure.org", "code": "[lb_av]"},
            "component": [{"code": {"text": "x"}, "valueString": "y"}]
        })
    }

    #[test]
    fn valid_patient_and_observation() {
        assert_valid(patient());
        assert_valid(observation());
    }

    #[test]
    fn resource_type_must_be_known() {
        assert_issue(json!({"id": "x"}), IssueCode::Required, "");
        assert_issue(json!({"resourceType": "Foo"}), IssueCode::Invalid, "");
        assert_issue(
            json!({"resourceType": "DomainResource"}),
            IssueCode::Invalid,
            "",
        );
        assert_issue(json!([1]), IssueCode::Structure, "");
        assert_issue(json!({"resourceType": 5}), IssueCode::Structure, "");
    }

    #[test]
    fn unknown_element() {
        let mut p = patient();
        p["foo"] = json!(1);
        p["name"][0]["nickname"] = json!("x");
        assert_issue(p.clone(), IssueCode::Structure, "Patient.foo");
        assert_issue(p, IssueCode::Structure, "Patient.name[0].nickname");
        let mut o = observation();
        o["meta"] = json!({"project": "x"}); // a Medplum extension of Meta, not R4
        assert_issue(o, IssueCode::Structure, "Observation.meta.project");
    }

    #[test]
    fn array_versus_single() {
        let mut p = patient();
        p["name"] = json!({"family": "x"});
        assert_issue(p, IssueCode::Structure, "Patient.name");
        let mut p = patient();
        p["gender"] = json!(["male"]);
        assert_issue(p, IssueCode::Structure, "Patient.gender");
        let mut p = patient();
        p["name"][0]["given"] = json!("Peter");
        assert_issue(p, IssueCode::Structure, "Patient.name[0].given");
    }

    #[test]
    fn missing_required() {
        let mut o = observation();
        o.as_object_mut().unwrap().remove("status");
        assert_issue(o, IssueCode::Required, "Observation.status");
        let mut o = observation();
        o["component"][0].as_object_mut().unwrap().remove("code");
        assert_issue(o, IssueCode::Required, "Observation.component[0].code");
        // Extension.url
        let mut p = patient();
        p["extension"] = json!([{"valueString": "x"}]);
        assert_issue(p, IssueCode::Required, "Patient.extension[0].url");
        // A required primitive given only by its extension is present.
        let mut o = observation();
        o.as_object_mut().unwrap().remove("status");
        o["_status"] = json!({"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}]});
        assert_valid(o);
    }

    #[test]
    fn primitive_formats() {
        let cases = [
            ("birthDate", json!("1974-13-01")),
            ("birthDate", json!("25/12/1974")),
            ("active", json!("true")),
            ("id", json!("not valid!")),
            ("gender", json!("")),
        ];
        for (k, v) in cases {
            let mut p = patient();
            p[k] = v.clone();
            let found = issues(&p);
            assert!(
                found.iter().any(|(_, l)| l == &format!("Patient.{k}")),
                "{k} = {v}: {found:?}"
            );
        }
        let mut p = patient();
        p["telecom"][0]["rank"] = json!(0);
        assert_issue(p, IssueCode::Value, "Patient.telecom[0].rank");
        let mut p = patient();
        p["name"][0]["given"][1] = json!("");
        assert_issue(p, IssueCode::Value, "Patient.name[0].given[1]");
        let mut p = patient();
        p["meta"]["lastUpdated"] = json!("2024-01-02");
        assert_issue(p, IssueCode::Value, "Patient.meta.lastUpdated");
    }

    #[test]
    fn decimals_keep_precision_and_integers_overflow() {
        let o: Value = serde_json::from_str(
            r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},
                "valueQuantity":{"value":1.50,"unit":"mg"}}"#,
        )
        .unwrap();
        assert_valid(o.clone());
        assert_eq!(o["valueQuantity"]["value"].to_string(), "1.50");
        let o: Value = serde_json::from_str(
            r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},
                "valueInteger":2147483648}"#,
        )
        .unwrap();
        assert_issue(o, IssueCode::Value, "Observation.valueInteger");
        let o: Value = serde_json::from_str(
            r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},
                "valueInteger":-2147483648}"#,
        )
        .unwrap();
        assert_valid(o);
        let mut o = observation();
        o["valueQuantity"]["value"] = json!("185");
        assert_issue(o, IssueCode::Structure, "Observation.valueQuantity.value");
    }

    #[test]
    fn choice_types() {
        let mut o = observation();
        o["valueFoo"] = json!("x");
        assert_issue(o, IssueCode::Structure, "Observation.valueFoo");
        let mut o = observation();
        o["valueString"] = json!("x");
        assert_issue(o, IssueCode::Structure, "Observation.valueString");
        // Observation.value[x] does not allow uri.
        let mut o = observation();
        o.as_object_mut().unwrap().remove("valueQuantity");
        o["valueUri"] = json!("http://x");
        assert_issue(o, IssueCode::Structure, "Observation.valueUri");
        // The plain base name is not a property either.
        let mut o = observation();
        o.as_object_mut().unwrap().remove("valueQuantity");
        o["value"] = json!("x");
        assert_issue(o, IssueCode::Structure, "Observation.value");
    }

    #[test]
    fn primitive_extensions() {
        // Not an object.
        let mut p = patient();
        p["_birthDate"] = json!("x");
        assert_issue(p, IssueCode::Structure, "Patient.birthDate");
        // Unknown key inside.
        let mut p = patient();
        p["_birthDate"] = json!({"value": "1974-12-25"});
        assert_issue(p, IssueCode::Structure, "Patient.birthDate.value");
        // Only for primitives.
        let mut p = patient();
        p["_address"] = json!([{"id": "a"}]);
        assert_issue(p, IssueCode::Structure, "Patient.address");
        // Unknown primitive.
        let mut p = patient();
        p["_birthdate"] = json!({"id": "a"});
        assert_issue(p, IssueCode::Structure, "Patient._birthdate");
        // Bad extension inside.
        let mut p = patient();
        p["_birthDate"]["extension"][0]["valueDateTime"] = json!("yesterday");
        assert_issue(
            p,
            IssueCode::Value,
            "Patient.birthDate.extension[0].valueDateTime",
        );
        // Extension-only primitive without a value.
        let mut p = patient();
        p.as_object_mut().unwrap().remove("birthDate");
        assert_valid(p.clone());
        p["_birthDate"] = json!({"id": "x"});
        assert_issue(p, IssueCode::Invariant, "Patient.birthDate");
        // An id alone is fine next to a value.
        let mut p = patient();
        p["_birthDate"] = json!({"id": "bd"});
        assert_valid(p);
        // Not for xml attributes.
        let mut p = patient();
        p["name"][0]["_id"] = json!({"id": "x"});
        assert_issue(p, IssueCode::Structure, "Patient.name[0].id");
    }

    #[test]
    fn primitive_array_alignment() {
        let mut p = patient();
        p["name"][0]["given"] = json!(["Peter", null]);
        p["name"][0]["_given"] =
            json!([null, {"extension": [{"url": "http://x", "valueString": "y"}]}]);
        assert_valid(p.clone());
        p["name"][0]["_given"] = json!([null]);
        assert_issue(p.clone(), IssueCode::Structure, "Patient.name[0].given");
        assert_issue(p, IssueCode::Structure, "Patient.name[0].given[1]");
        let mut p = patient();
        p["name"][0]["given"] = json!(["Peter", null]);
        assert_issue(p, IssueCode::Structure, "Patient.name[0].given[1]");
        // Extension array without values: no nulls allowed.
        let mut p = patient();
        p["name"][0].as_object_mut().unwrap().remove("given");
        p["name"][0]["_given"] = json!([{"extension": [{"url": "http://x", "valueString": "y"}]}]);
        assert_valid(p);
    }

    #[test]
    fn nulls_and_empties() {
        for (k, v) in [
            ("gender", Value::Null),
            ("name", json!([])),
            ("managingOrganization", json!({})),
            ("birthDate", json!("")),
        ] {
            let mut p = patient();
            p[k] = v;
            let found = issues(&p);
            assert!(
                found.iter().any(|(_, l)| l == &format!("Patient.{k}")),
                "{k}: {found:?}"
            );
        }
        let mut p = patient();
        p["name"][0]["given"] = json!([null]);
        assert_issue(p, IssueCode::Structure, "Patient.name[0].given[0]");
        let mut p = patient();
        p["name"] = json!([null]);
        assert_issue(p, IssueCode::Structure, "Patient.name[0]");
        let mut p = patient();
        p["managingOrganization"] = json!({"id": "x"});
        assert_issue(p, IssueCode::Invariant, "Patient.managingOrganization");
    }

    #[test]
    fn contained_resources() {
        let mut p = patient();
        p["contained"] = json!([{"resourceType": "Organization", "id": "o", "name": 5}]);
        assert_issue(
            p,
            IssueCode::Structure,
            "Patient.contained[0].ofType(Organization).name",
        );
        let mut p = patient();
        p["contained"] = json!([{"resourceType": "Nope"}]);
        assert_issue(p, IssueCode::Invalid, "Patient.contained[0]");
        let mut p = patient();
        p["contained"] = json!([{"resourceType": "Organization", "id": "o",
            "meta": {"versionId": "1"},
            "contained": [{"resourceType": "Organization", "id": "o2"}]}]);
        assert_issue(
            p.clone(),
            IssueCode::Invariant,
            "Patient.contained[0].ofType(Organization).contained",
        );
        assert_issue(
            p,
            IssueCode::Invariant,
            "Patient.contained[0].ofType(Organization).meta.versionId",
        );
    }

    #[test]
    fn bundle_entries_are_resources() {
        let b = json!({
            "resourceType": "Bundle", "type": "collection",
            "entry": [
                {"fullUrl": "urn:uuid:c757873d-ec9a-4326-a141-556f43239520", "resource": patient()},
                {"resource": observation()},
                {"resource": {"resourceType": "Patient", "gender": "nope"}}
            ]
        });
        let found = issues(&b);
        assert_eq!(
            found,
            [(
                IssueCode::CodeInvalid,
                "Bundle.entry[2].resource.ofType(Patient).gender".to_string()
            )]
        );
        let p = json!({"resourceType": "Parameters", "parameter": [
            {"name": "x", "resource": {"resourceType": "Patient", "birthDate": "x"}}]});
        assert_issue(
            p,
            IssueCode::Value,
            "Parameters.parameter[0].resource.ofType(Patient).birthDate",
        );
    }

    #[test]
    fn control_characters_are_a_warning() {
        let mut p = patient();
        p["name"][0]["family"] = json!("Chal\u{7}mers");
        let found = validate_resource(&p);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].severity, Severity::Warning);
        assert_eq!(
            found[0].expression.as_deref(),
            Some("Patient.name[0].family")
        );
        assert!(is_valid(&p));
    }

    #[test]
    fn resource_type_inside_datatype() {
        let mut p = patient();
        p["name"][0]["resourceType"] = json!("HumanName");
        assert_issue(p, IssueCode::Structure, "Patient.name[0].resourceType");
    }

    #[test]
    fn extensions() {
        let mut p = patient();
        p["extension"] = json!([{"url": "http://x", "valueString": "a", "valueInteger": 1}]);
        assert_issue(p, IssueCode::Structure, "Patient.extension[0].valueInteger");
        let mut p = patient();
        p["extension"] = json!([{"url": "http://x", "valueFoo": 1}]);
        assert_issue(p, IssueCode::Structure, "Patient.extension[0].valueFoo");
        let mut p = patient();
        p["extension"] = json!([{"url": "http://x"}]);
        assert_issue(p, IssueCode::Invariant, "Patient.extension[0]");
        let mut p = patient();
        p["extension"] = json!([{"url": "http://x", "valueString": "a",
            "extension": [{"url": "y", "valueCode": "b"}]}]);
        assert_issue(p, IssueCode::Invariant, "Patient.extension[0]");
        let mut p = patient();
        p["modifierExtension"] = json!([{"url": "http://x", "extension": [
            {"url": "a", "valueCodeableConcept": {"text": "t"}},
            {"url": "b", "valueReference": {"reference": "Patient/1"}}]}]);
        assert_valid(p);
    }

    #[test]
    fn required_bindings() {
        let mut p = patient();
        p["gender"] = json!("M");
        assert_issue(p, IssueCode::CodeInvalid, "Patient.gender");
        let mut o = observation();
        o["status"] = json!("done");
        assert_issue(o, IssueCode::CodeInvalid, "Observation.status");
        // Codes inside datatypes (HumanName.use).
        let mut p = patient();
        p["name"][0]["use"] = json!("nick");
        assert_issue(p, IssueCode::CodeInvalid, "Patient.name[0].use");
        // Required CodeableConcept binding: codings of the bound system are checked,
        // codings of other systems are left alone.
        let cond = |system: &str, code: &str| {
            json!({"resourceType": "Condition", "subject": {"reference": "Patient/1"},
                "clinicalStatus": {"coding": [{"system": system, "code": code}]}})
        };
        let sys = "http://terminology.hl7.org/CodeSystem/condition-clinical";
        assert_valid(cond(sys, "active"));
        assert_valid(cond("http://snomed.info/sct", "55561003"));
        assert_issue(
            cond(sys, "bogus"),
            IssueCode::CodeInvalid,
            "Condition.clinicalStatus.coding[0].code",
        );
    }

    #[test]
    fn simple_quantity_has_no_comparator() {
        let m = json!({"resourceType": "Medication",
            "amount": {"numerator": {"value": 1, "comparator": "<"}, "denominator": {"value": 2}}});
        // Ratio.numerator is a plain Quantity: comparator allowed.
        assert_valid(m);
        let d = json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
            "medicationCodeableConcept": {"text": "x"}, "subject": {"reference": "Patient/1"},
            "dosageInstruction": [{"doseAndRate": [{"doseQuantity": {"value": 1, "comparator": "<"}}]}]});
        assert_issue(
            d,
            IssueCode::Structure,
            "MedicationRequest.dosageInstruction[0].doseAndRate[0].doseQuantity.comparator",
        );
    }

    #[test]
    fn recursive_content_reference() {
        let q = json!({"resourceType": "Questionnaire", "status": "active",
            "item": [{"linkId": "1", "type": "group",
                "item": [{"linkId": "1.1", "type": "string", "text": "x",
                    "item": [{"linkId": "1.1.1", "type": "bogus"}]}]}]});
        assert_issue(
            q,
            IssueCode::CodeInvalid,
            "Questionnaire.item[0].item[0].item[0].type",
        );
    }

    /// Prints the time per validation; run with `cargo test --release -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn timing() {
        let resources = [("Patient", patient()), ("Observation", observation())];
        for (name, r) in &resources {
            assert!(validate_resource(r).is_empty());
            let n = 20_000;
            let start = std::time::Instant::now();
            for _ in 0..n {
                std::hint::black_box(validate_resource(std::hint::black_box(r)));
            }
            let per = start.elapsed() / n;
            println!("{name}: {per:?} per validation");
        }
    }
}
