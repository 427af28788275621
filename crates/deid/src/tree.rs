//! A typed, flattened view of one resource's JSON: every element is a [`Node`] (pre-order,
//! with the end of its subtree), carrying its FHIR type and element name from the R4
//! definitions, so that `nodesByType`/`nodesByName` are table scans, a rule can claim a
//! whole subtree, and FHIRPath results map back to JSON locations by address.
//!
//! Nested resources (`contained`, `Bundle.entry.resource`, any element of type `Resource`)
//! are opaque leaves here: the engine processes them as resources of their own.

use salus_fhir::defs::{self, TypeKind};
use serde_json::Value;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::LazyLock;

/// A small, fast hasher for the static `&str` keys of the type tables (FxHash-style).
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

impl Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// How a JSON key below a type (or backbone element) is typed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChildDef {
    /// The JSON key (`valueQuantity`).
    pub key: &'static str,
    /// FHIRPath element name (choice elements by their base name: `value`).
    pub name: &'static str,
    /// FHIR type code (`HumanName`, `date`, `BackboneElement`).
    pub ty: &'static str,
    /// Key of the children table for complex values (type name or backbone path).
    pub ctx: Option<&'static str>,
    pub primitive: bool,
    /// An element of type `Resource`: a nested resource.
    pub resource: bool,
}

type Children = FxMap<&'static str, ChildDef>;

struct Model {
    ctxs: FxMap<&'static str, Children>,
}

static MODEL: LazyLock<Model> = LazyLock::new(build_model);

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn normalize_code(code: &'static str) -> &'static str {
    if let Some(rest) = code.strip_prefix("http://hl7.org/fhirpath/System.") {
        match rest {
            "String" => "string",
            "Boolean" => "boolean",
            "Integer" => "integer",
            "Decimal" => "decimal",
            "Date" => "date",
            "DateTime" => "dateTime",
            "Time" => "time",
            _ => "string",
        }
    } else {
        code
    }
}

fn def_for(code: &'static str) -> (Option<&'static str>, bool, bool) {
    // (ctx, primitive, resource)
    match defs::type_def(code) {
        Some(t) if t.kind == TypeKind::Primitive => (None, true, false),
        Some(t) if t.kind == TypeKind::Resource && t.is_abstract => (None, false, true),
        Some(t) if t.kind == TypeKind::Resource => (None, false, true),
        Some(t) => (Some(t.name), false, false),
        None => (
            None,
            code.chars().next().is_some_and(|c| c.is_lowercase()),
            false,
        ),
    }
}

fn build_model() -> Model {
    let mut ctxs: FxMap<&'static str, Children> = FxMap::default();
    for t in defs::types()
        .iter()
        .filter(|t| t.kind != TypeKind::Primitive)
    {
        ctxs.entry(t.name).or_default();
        for e in t.elements.iter().skip(1) {
            let Some((parent, seg)) = e.path.rsplit_once('.') else {
                continue;
            };
            let choice = e.is_choice();
            let name: &'static str = if choice { &seg[..seg.len() - 3] } else { seg };
            let table = ctxs.entry(parent).or_default();
            if let Some(r) = e.content_reference {
                let ty = defs::element_by_path(r)
                    .and_then(|d| d.types.first())
                    .map_or("BackboneElement", |t| t.code);
                table.insert(
                    name,
                    ChildDef {
                        key: name,
                        name,
                        ty,
                        ctx: Some(r),
                        primitive: false,
                        resource: false,
                    },
                );
            } else if e.is_backbone() {
                table.insert(
                    name,
                    ChildDef {
                        key: name,
                        name,
                        ty: e.types[0].code,
                        ctx: Some(e.path),
                        primitive: false,
                        resource: false,
                    },
                );
            } else if choice {
                for et in &e.types {
                    let code = normalize_code(et.code);
                    let mut up = code.to_string();
                    if let Some(f) = up.get_mut(0..1) {
                        f.make_ascii_uppercase();
                    }
                    let key = leak(format!("{name}{up}"));
                    let (ctx, primitive, resource) = def_for(code);
                    table.insert(
                        key,
                        ChildDef {
                            key,
                            name,
                            ty: code,
                            ctx,
                            primitive,
                            resource,
                        },
                    );
                }
            } else if let Some(et) = e.types.first() {
                let code = normalize_code(et.code);
                let (ctx, primitive, resource) = def_for(code);
                table.insert(
                    name,
                    ChildDef {
                        key: name,
                        name,
                        ty: code,
                        ctx,
                        primitive,
                        resource,
                    },
                );
            }
        }
    }
    Model { ctxs }
}

/// Build the type tables now (a few milliseconds) rather than on first use.
pub(crate) fn preload() {
    let _ = &MODEL.ctxs;
}

fn child_def(ctx: Option<&str>, key: &str) -> Option<ChildDef> {
    MODEL.ctxs.get(ctx?)?.get(key).copied()
}

/// A key or name: borrowed from the type tables when known, owned otherwise.
pub(crate) type Str = std::borrow::Cow<'static, str>;

fn key_of(def: Option<ChildDef>, key: &str) -> Str {
    match def {
        Some(d) if d.key == key => Str::Borrowed(d.key),
        _ => Str::Owned(key.to_string()),
    }
}

fn name_of(def: Option<ChildDef>, key: &str) -> Str {
    match def {
        Some(d) if !d.name.is_empty() => Str::Borrowed(d.name),
        _ => Str::Owned(key.to_string()),
    }
}

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The resource being processed (node 0).
    Root,
    Complex,
    /// A primitive: a JSON scalar (`has_value`) and/or a `_name` object (`has_ext`).
    Primitive {
        has_value: bool,
        has_ext: bool,
    },
    /// A resource nested inside this one: processed separately.
    Nested,
}

/// One element of the resource.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub parent: u32,
    /// One past the last node of this node's subtree.
    pub end: u32,
    /// JSON key in the parent's object (the value's key for primitives).
    pub key: Str,
    pub index: Option<u32>,
    /// FHIRPath element name (`value` for `valueQuantity`).
    pub name: Str,
    /// FHIR type (`""` when unknown).
    pub ty: &'static str,
    /// Children table key: the type name, or the backbone path (`Bundle.entry`).
    pub ctx: Option<&'static str>,
    pub kind: Kind,
}

/// One step of a JSON location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(Str),
    Idx(usize),
}

/// The flattened resource.
#[derive(Debug)]
pub(crate) struct Tree {
    pub nodes: Vec<Node>,
    /// (address of a node's JSON value or `_name` object, node index), sorted.
    ptrs: Vec<(usize, u32)>,
}

pub(crate) const NO_PARENT: u32 = u32::MAX;

impl Tree {
    pub fn build(root: &Value) -> Tree {
        let rt = root
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or("");
        let ty: &'static str = defs::type_def(rt).map_or("", |t| t.name);
        let mut t = Tree {
            nodes: Vec::with_capacity(128),
            ptrs: Vec::with_capacity(256),
        };
        t.nodes.push(Node {
            parent: NO_PARENT,
            end: 0,
            key: Str::Borrowed(""),
            index: None,
            name: Str::Borrowed(ty),
            ty,
            ctx: (!ty.is_empty()).then_some(ty),
            kind: Kind::Root,
        });
        t.ptrs.push((root as *const Value as usize, 0));
        if let Some(obj) = root.as_object() {
            t.walk_object(obj, 0, Some(ty).filter(|s| !s.is_empty()), true, 0);
        }
        let n = t.nodes.len() as u32;
        t.nodes[0].end = n;
        t.ptrs.sort_unstable();
        t
    }

    fn walk_object(
        &mut self,
        obj: &serde_json::Map<String, Value>,
        parent: u32,
        ctx: Option<&'static str>,
        is_resource: bool,
        depth: usize,
    ) {
        if depth > 64 {
            return;
        }
        for (key, value) in obj {
            if value.is_null() {
                continue;
            }
            if is_resource && key == "resourceType" {
                continue;
            }
            if let Some(base) = key.strip_prefix('_') {
                // Extensions of a primitive whose value is absent.
                if obj.get(base).is_none_or(Value::is_null) {
                    let def = child_def(ctx, base);
                    match value {
                        Value::Array(items) => {
                            for (i, ext) in items.iter().enumerate() {
                                if ext.is_object() {
                                    self.primitive(
                                        base,
                                        Some(i),
                                        def,
                                        None,
                                        Some(ext),
                                        parent,
                                        depth,
                                    );
                                }
                            }
                        }
                        Value::Object(_) => {
                            self.primitive(base, None, def, None, Some(value), parent, depth)
                        }
                        _ => {}
                    }
                }
                continue;
            }
            let def = child_def(ctx, key);
            let ext = obj.get(&format!("_{key}"));
            match value {
                Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        if item.is_null() {
                            continue;
                        }
                        let ext_i = ext.and_then(|e| e.get(i)).filter(|e| e.is_object());
                        self.element(key, Some(i), def, item, ext_i, parent, depth);
                    }
                }
                _ => {
                    let ext = ext.filter(|e| e.is_object());
                    self.element(key, None, def, value, ext, parent, depth);
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn element(
        &mut self,
        key: &str,
        index: Option<usize>,
        def: Option<ChildDef>,
        value: &Value,
        ext: Option<&Value>,
        parent: u32,
        depth: usize,
    ) {
        let is_scalar = !value.is_object() && !value.is_array();
        match def {
            Some(d) if d.resource && value.is_object() => {
                let idx = self.push(
                    key_of(def, key),
                    index,
                    Str::Borrowed(d.name),
                    d.ty,
                    None,
                    Kind::Nested,
                    parent,
                );
                self.ptrs.push((value as *const Value as usize, idx));
                self.nodes[idx as usize].end = idx + 1;
            }
            Some(d) if d.primitive || is_scalar => {
                self.primitive(key, index, Some(d), Some(value), ext, parent, depth)
            }
            None if is_scalar => self.primitive(key, index, None, Some(value), ext, parent, depth),
            _ => {
                let (ty, ctx) = match def {
                    Some(d) => (d.ty, d.ctx),
                    None => ("", None),
                };
                let idx = self.push(
                    key_of(def, key),
                    index,
                    name_of(def, key),
                    ty,
                    ctx,
                    Kind::Complex,
                    parent,
                );
                self.ptrs.push((value as *const Value as usize, idx));
                match value {
                    Value::Object(o) => self.walk_object(o, idx, ctx, false, depth + 1),
                    Value::Array(a) => {
                        // Arrays of arrays are not FHIR; walk them untyped.
                        for (i, v) in a.iter().enumerate() {
                            self.element(key, Some(i), None, v, None, idx, depth + 1);
                        }
                    }
                    _ => {}
                }
                let end = self.nodes.len() as u32;
                self.nodes[idx as usize].end = end;
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn primitive(
        &mut self,
        key: &str,
        index: Option<usize>,
        def: Option<ChildDef>,
        value: Option<&Value>,
        ext: Option<&Value>,
        parent: u32,
        depth: usize,
    ) {
        let ty = def.map_or("", |d| d.ty);
        let kind = Kind::Primitive {
            has_value: value.is_some(),
            has_ext: ext.is_some(),
        };
        let idx = self.push(
            key_of(def, key),
            index,
            name_of(def, key),
            ty,
            None,
            kind,
            parent,
        );
        if let Some(v) = value {
            self.ptrs.push((v as *const Value as usize, idx));
        }
        if let Some(e) = ext {
            self.ptrs.push((e as *const Value as usize, idx));
            if let Some(o) = e.as_object() {
                self.walk_object(o, idx, Some("Element"), false, depth + 1);
            }
        }
        let end = self.nodes.len() as u32;
        self.nodes[idx as usize].end = end;
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        key: Str,
        index: Option<usize>,
        name: Str,
        ty: &'static str,
        ctx: Option<&'static str>,
        kind: Kind,
        parent: u32,
    ) -> u32 {
        let idx = self.nodes.len() as u32;
        self.nodes.push(Node {
            parent,
            end: idx + 1,
            key,
            index: index.map(|i| i as u32),
            name,
            ty,
            ctx,
            kind,
        });
        idx
    }

    /// The node whose JSON value (or `_name` object) is at this address.
    pub fn node_at(&self, json: &Value) -> Option<u32> {
        let p = json as *const Value as usize;
        self.ptrs
            .binary_search_by_key(&p, |&(a, _)| a)
            .ok()
            .map(|i| self.ptrs[i].1)
    }

    pub fn parent(&self, i: u32) -> Option<&Node> {
        let p = self.nodes[i as usize].parent;
        (p != NO_PARENT).then(|| &self.nodes[p as usize])
    }

    /// Location of a node's value (for primitives: the scalar).
    pub fn value_path(&self, i: u32) -> Vec<Seg> {
        let n = &self.nodes[i as usize];
        if n.parent == NO_PARENT {
            return Vec::new();
        }
        let mut segs = self.container_path(n.parent);
        segs.push(Seg::Key(n.key.clone()));
        if let Some(ix) = n.index {
            segs.push(Seg::Idx(ix as usize));
        }
        segs
    }

    /// Location of a primitive's `_name` object.
    pub fn ext_path(&self, i: u32) -> Vec<Seg> {
        let n = &self.nodes[i as usize];
        let mut segs = self.container_path(n.parent);
        segs.push(Seg::Key(format!("_{}", n.key).into()));
        if let Some(ix) = n.index {
            segs.push(Seg::Idx(ix as usize));
        }
        segs
    }

    /// Location of the object holding a node's children.
    fn container_path(&self, i: u32) -> Vec<Seg> {
        match self.nodes[i as usize].kind {
            Kind::Primitive { .. } => self.ext_path(i),
            _ => self.value_path(i),
        }
    }

    /// A stable textual key of a node's location (`name/0/given/1`; `_` marks a
    /// primitive's extension object), used to carry state across rebuilds.
    pub fn path_key(&self, i: u32) -> String {
        let mut s = String::new();
        for seg in self.value_path(i) {
            match seg {
                Seg::Key(k) => {
                    s.push('/');
                    s.push_str(&k);
                }
                Seg::Idx(ix) => {
                    s.push('/');
                    s.push_str(&ix.to_string());
                }
            }
        }
        s
    }
}

pub(crate) fn get<'v>(root: &'v Value, path: &[Seg]) -> Option<&'v Value> {
    let mut cur = root;
    for seg in path {
        cur = match seg {
            Seg::Key(k) => cur.get(&**k)?,
            Seg::Idx(i) => cur.get(*i)?,
        };
    }
    Some(cur)
}

pub(crate) fn get_mut<'v>(root: &'v mut Value, path: &[Seg]) -> Option<&'v mut Value> {
    let mut cur = root;
    for seg in path {
        cur = match seg {
            Seg::Key(k) => cur.get_mut(&**k)?,
            Seg::Idx(i) => cur.get_mut(*i)?,
        };
    }
    Some(cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn types_and_names() {
        let p = json!({"resourceType": "Patient", "id": "p1",
            "name": [{"family": "Doe", "given": ["Jo", "Ann"], "_given": [null, {"extension": [{"url": "u", "valueString": "x"}]}]}],
            "birthDate": "1970-01-02",
            "extension": [{"url": "http://x", "valueAddress": {"city": "Town"}}],
            "contact": [{"name": {"family": "Roe"}}],
            "contained": [{"resourceType": "Organization", "id": "o"}],
            "unknownThing": {"a": 1}});
        let t = Tree::build(&p);
        let find = |ty: &str| t.nodes.iter().filter(|n| n.ty == ty).count();
        assert_eq!(find("HumanName"), 2);
        assert_eq!(find("date"), 1);
        assert_eq!(find("Address"), 1);
        assert_eq!(find("Extension"), 2);
        let nested = t.nodes.iter().position(|n| n.kind == Kind::Nested).unwrap();
        assert_eq!(t.nodes[nested].ty, "Resource");
        let city = t.nodes.iter().position(|n| &*n.name == "city").unwrap() as u32;
        assert_eq!(
            t.value_path(city),
            vec![
                Seg::Key("extension".into()),
                Seg::Idx(0),
                Seg::Key("valueAddress".into()),
                Seg::Key("city".into())
            ]
        );
        assert_eq!(get(&p, &t.value_path(city)), Some(&json!("Town")));
        let ext_url = t
            .nodes
            .iter()
            .position(|n| &*n.name == "url" && t.parent(0).is_none() && &*n.key == "url")
            .unwrap();
        assert!(ext_url > 0);
        let ann = t
            .nodes
            .iter()
            .position(|n| &*n.key == "given" && n.index == Some(1))
            .unwrap() as u32;
        assert_eq!(
            t.nodes[ann as usize].kind,
            Kind::Primitive {
                has_value: true,
                has_ext: true
            }
        );
        // The extension below `_given[1]` is a child of the primitive.
        assert_eq!(t.nodes[ann as usize + 1].ty, "Extension");
        let vs = t
            .nodes
            .iter()
            .position(|n| &*n.key == "valueString")
            .unwrap() as u32;
        assert_eq!(t.path_key(vs), "/name/0/_given/1/extension/0/valueString");
        let backbone = t.nodes.iter().find(|n| &*n.key == "contact").unwrap();
        assert_eq!(backbone.ctx, Some("Patient.contact"));
        assert!(t.nodes.iter().any(|n| &*n.key == "a" && n.ty.is_empty()));
    }
}
