//! The evaluator core: walks the AST over a focus collection, navigates FHIR JSON by the
//! type model, and implements the operators (boolean three-valued logic, equality and
//! equivalence, comparison, arithmetic including date/time and quantity arithmetic,
//! membership, union, concatenation, `is`/`as`).
//!
//! The function library lives in [`crate::functions`]; both share [`Evaluator`] and
//! [`Scope`]. Every failure is an [`EvalError`]; nothing here panics on any input.

use crate::ast::{BinOp, Ident, Node, TypeSpec};
use crate::datetime::DateTime;
use crate::env::Env;
use crate::error::EvalError;
use crate::model::{model, Kind, TyId, UNKNOWN};
use crate::quantity::Quantity;
use crate::value::{self, decimal_div, Item, JsonRef, Node as JNode, Prim, SystemType, Val};
use rust_decimal::Decimal;
use serde_json::Value as Json;
use std::cell::{Cell, OnceCell};
use std::cmp::Ordering;
use std::sync::Arc;

pub(crate) type R<'a> = Result<Vec<Item<'a>>, EvalError>;

/// Upper bound on items produced by `repeat()`/`descendants()`/`aggregate()` loops, so a
/// runaway expression (`1.repeat($this + 1)`) ends with an error instead of exhausting
/// memory.
pub(crate) const MAX_WORK: usize = 200_000;

/// Per-evaluation state.
pub(crate) struct Evaluator<'s, 'a> {
    pub env: &'a Env<'a>,
    /// `%context` (and `%resource`/`%rootResource` unless overridden).
    pub root: &'s [Item<'a>],
    /// The resource `resolve()` searches for contained resources and Bundle entries.
    pub root_resource: Option<JsonRef<'a>>,
    pub now: OnceCell<DateTime>,
    pub work: Cell<usize>,
}

/// What identifiers and target-less function calls apply to, and the `$` variables.
#[derive(Clone, Copy)]
pub(crate) struct Scope<'s, 'a> {
    /// `$this`: the focus collection (the root at top level, one item inside a lambda).
    pub this: &'s [Item<'a>],
    pub index: Option<usize>,
    pub total: Option<&'s [Item<'a>]>,
}

pub(crate) fn single<'x, 'a>(
    items: &'x [Item<'a>],
    what: &str,
) -> Result<Option<&'x Item<'a>>, EvalError> {
    match items.len() {
        0 => Ok(None),
        1 => Ok(Some(&items[0])),
        n => Err(EvalError::not_singleton(what, n)),
    }
}

/// Boolean value of a single item as a criterion: Booleans as they are; Integers, Decimals
/// and Strings by `toBoolean()` rules (so `'foo'` is empty and `0` false); any other single
/// item counts as true.
pub(crate) fn singleton_bool(item: &Item<'_>) -> Option<bool> {
    match item.prim() {
        Some(Prim::Boolean(b)) => Some(b),
        Some(Prim::Integer(_) | Prim::Decimal(_) | Prim::String(_)) => {
            crate::functions::to_boolean(item)
        }
        _ => Some(true),
    }
}

pub(crate) fn bool3(items: &[Item<'_>], what: &str) -> Result<Option<bool>, EvalError> {
    Ok(single(items, what)?.and_then(singleton_bool))
}

fn boolean<'a>(b: bool) -> Vec<Item<'a>> {
    vec![Item::boolean(b)]
}

fn opt_bool<'a>(b: Option<bool>) -> Vec<Item<'a>> {
    b.map(boolean).unwrap_or_default()
}

/// The system type of a system value or an untyped JSON scalar.
fn system_type_of(item: &Item<'_>) -> Option<SystemType> {
    Some(match item.prim()? {
        Prim::Boolean(_) => SystemType::Boolean,
        Prim::Integer(_) => SystemType::Integer,
        Prim::Decimal(_) => SystemType::Decimal,
        Prim::String(_) => SystemType::String,
        Prim::Date(_) => SystemType::Date,
        Prim::DateTime(_) => SystemType::DateTime,
        Prim::Time(_) => SystemType::Time,
        Prim::Quantity(_) => SystemType::Quantity,
    })
}

/// Whether an item is of the type (or a subtype).
pub(crate) fn matches_type(item: &Item<'_>, spec: &TypeSpec) -> bool {
    let m = model();
    match &item.0 {
        Val::Node(n) if m.ty(n.ty).kind != Kind::Unknown => {
            let target = match spec {
                TypeSpec::Any { fhir: Some(f), .. } | TypeSpec::Fhir(f) => *f,
                _ => return false,
            };
            m.is_subtype(n.ty, target)
        }
        Val::Type(_) => false,
        _ => match spec {
            TypeSpec::Any {
                system: Some(s), ..
            }
            | TypeSpec::System(s) => *s == SystemType::Any || system_type_of(item) == Some(*s),
            _ => false,
        },
    }
}

/// `obj[key]` and `obj[ext_key]` (the `_key` of a primitive): one pass over small objects
/// instead of two hashed lookups.
fn get_pair<'a>(
    v: &JsonRef<'a>,
    key: &str,
    ext_key: Option<&str>,
) -> (Option<JsonRef<'a>>, Option<JsonRef<'a>>) {
    match v {
        JsonRef::Borrowed(j) => {
            let Some(obj) = j.as_object() else {
                return (None, None);
            };
            if obj.len() > 12 {
                return (
                    obj.get(key).map(JsonRef::Borrowed),
                    ext_key.and_then(|k| obj.get(k)).map(JsonRef::Borrowed),
                );
            }
            let (mut val, mut ext) = (None, None);
            for (k, x) in obj {
                if k == key {
                    val = Some(JsonRef::Borrowed(x));
                } else if ext_key == Some(k.as_str()) {
                    ext = Some(JsonRef::Borrowed(x));
                }
            }
            (val, ext)
        }
        JsonRef::Shared(_) => (
            v.map(|j| j.get(key)),
            ext_key.and_then(|k| v.map(|j| j.get(k))),
        ),
    }
}

/// Add a JSON value (array or single, with its `_name` sibling) as nodes of type `ty`.
pub(crate) fn push_json<'a>(
    out: &mut Vec<Item<'a>>,
    val: Option<JsonRef<'a>>,
    ext: Option<JsonRef<'a>>,
    ty: TyId,
) {
    let make = |v: Option<JsonRef<'a>>, e: Option<JsonRef<'a>>| {
        let m = model();
        let mut t = ty;
        if t == UNKNOWN || m.ty(t).abstract_resource {
            if let Some(rt) = v.as_ref().and_then(|v| m.resource_ty(v.get())) {
                t = rt;
            }
        }
        Item::node(v, e, t)
    };
    let not_null = |j: &JsonRef<'a>| !j.get().is_null();
    match val {
        Some(v) => match v.get() {
            Json::Array(arr) => {
                for i in 0..arr.len() {
                    let item = v.map(|j| j.get(i)).filter(not_null);
                    let e = ext
                        .as_ref()
                        .and_then(|e| e.map(|j| j.get(i)))
                        .filter(not_null);
                    if item.is_some() || e.is_some() {
                        out.push(make(item, e));
                    }
                }
            }
            Json::Null => {
                if ext.as_ref().is_some_and(not_null) {
                    out.push(make(None, ext));
                }
            }
            _ => out.push(make(Some(v), ext.filter(not_null))),
        },
        None => {
            if let Some(e) = ext {
                match e.get() {
                    Json::Array(arr) => {
                        for i in 0..arr.len() {
                            if let Some(ei) = e.map(|j| j.get(i)).filter(not_null) {
                                out.push(make(None, Some(ei)));
                            }
                        }
                    }
                    Json::Null => {}
                    _ => out.push(make(None, Some(e))),
                }
            }
        }
    }
}

impl<'s, 'a> Evaluator<'s, 'a> {
    pub fn new(env: &'a Env<'a>, root: &'s [Item<'a>], root_resource: Option<JsonRef<'a>>) -> Self {
        Self {
            env,
            root,
            root_resource,
            now: OnceCell::new(),
            work: Cell::new(0),
        }
    }

    /// Count `n` units of work against [`MAX_WORK`].
    pub fn spend(&self, n: usize) -> Result<(), EvalError> {
        let w = self.work.get().saturating_add(n);
        self.work.set(w);
        if w > MAX_WORK {
            return Err(EvalError::Argument(
                "evaluation produced too many items".into(),
            ));
        }
        Ok(())
    }

    pub fn now(&self) -> DateTime {
        *self
            .now
            .get_or_init(|| self.env.now.unwrap_or_else(DateTime::now_utc))
    }

    pub fn eval(&self, node: &Node, scope: &Scope<'_, 'a>) -> R<'a> {
        match node {
            Node::Literal(item) => Ok(vec![item.clone()]),
            Node::Empty => Ok(Vec::new()),
            Node::Ident(id) => {
                let mut out = Vec::new();
                self.navigate(scope.this, id, &mut out)?;
                Ok(out)
            }
            Node::Member(target, id) => {
                let input = self.eval(target, scope)?;
                let mut out = Vec::with_capacity(input.len());
                self.navigate(&input, id, &mut out)?;
                Ok(out)
            }
            Node::Index(target, idx) => {
                let input = self.eval(target, scope)?;
                let idx = self.eval(idx, scope)?;
                let Some(i) = single(&idx, "indexer")? else {
                    return Ok(Vec::new());
                };
                let Some(i) = i.as_integer() else {
                    return Err(EvalError::type_err("indexer must be an Integer"));
                };
                Ok(usize::try_from(i)
                    .ok()
                    .and_then(|i| input.into_iter().nth(i))
                    .into_iter()
                    .collect())
            }
            Node::This => Ok(scope.this.to_vec()),
            Node::IndexVar => Ok(scope
                .index
                .map(|i| vec![Item::integer(i as i64)])
                .unwrap_or_default()),
            Node::Total => Ok(scope.total.map(<[Item<'a>]>::to_vec).unwrap_or_default()),
            Node::Var(name) => self.var(name),
            Node::Neg(e) => {
                let v = self.eval(e, scope)?;
                let Some(item) = single(&v, "unary minus")? else {
                    return Ok(Vec::new());
                };
                Ok(match item.prim() {
                    Some(Prim::Integer(i)) => {
                        i.checked_neg().map(Item::integer).into_iter().collect()
                    }
                    Some(Prim::Decimal(d)) => vec![Item::decimal(-d)],
                    Some(Prim::Quantity(q)) => {
                        vec![Item::quantity(Quantity::new(-q.value, q.unit.clone()))]
                    }
                    _ => {
                        return Err(EvalError::type_err(
                            "unary minus applies to numbers and quantities",
                        ))
                    }
                })
            }
            Node::Pos(e) => {
                let v = self.eval(e, scope)?;
                let Some(item) = single(&v, "unary plus")? else {
                    return Ok(Vec::new());
                };
                match item.prim() {
                    Some(Prim::Integer(_) | Prim::Decimal(_) | Prim::Quantity(_)) => Ok(v),
                    _ => Err(EvalError::type_err(
                        "unary plus applies to numbers and quantities",
                    )),
                }
            }
            Node::Binary(op, l, r) => self.binary(*op, l, r, scope),
            Node::Is(e, spec) => {
                let v = self.eval(e, scope)?;
                Ok(single(&v, "is")?
                    .map(|item| boolean(matches_type(item, spec)))
                    .unwrap_or_default())
            }
            Node::As(e, spec) => {
                let v = self.eval(e, scope)?;
                Ok(v.into_iter().filter(|i| matches_type(i, spec)).collect())
            }
            Node::Call(call) => self.call(call, scope),
        }
    }

    fn var(&self, name: &str) -> R<'a> {
        if let Some(v) = self.env.vars.get(name) {
            return Ok(v.clone());
        }
        let s = |v: String| Ok(vec![Item::string(v)]);
        match name {
            "context" | "resource" | "rootResource" => Ok(self.root.to_vec()),
            "ucum" => s("http://unitsofmeasure.org".into()),
            "sct" => s("http://snomed.info/sct".into()),
            "loinc" => s("http://loinc.org".into()),
            n if n.starts_with("vs-") => s(format!("http://hl7.org/fhir/ValueSet/{}", &n[3..])),
            n if n.starts_with("ext-") => s(format!(
                "http://hl7.org/fhir/StructureDefinition/{}",
                &n[4..]
            )),
            _ => Err(EvalError::UnknownVariable(name.to_string())),
        }
    }

    /// Child navigation (`focus.name`) for every input item.
    pub fn navigate(
        &self,
        input: &[Item<'a>],
        id: &Ident,
        out: &mut Vec<Item<'a>>,
    ) -> Result<(), EvalError> {
        for item in input {
            match &item.0 {
                Val::Node(n) => self.node_child(item, n, id, out)?,
                Val::Type(t) => match &*id.name {
                    "namespace" => out.push(Item::string(t.namespace)),
                    "name" => out.push(Item::string(t.name.clone())),
                    _ => {}
                },
                _ => {
                    if self.env.strict {
                        return Err(EvalError::UnknownElement {
                            type_name: item.type_name().1.into_owned(),
                            name: id.name.to_string(),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    fn node_child(
        &self,
        item: &Item<'a>,
        n: &JNode<'a>,
        id: &Ident,
        out: &mut Vec<Item<'a>>,
    ) -> Result<(), EvalError> {
        let m = model();
        let name = &*id.name;
        let info = m.ty(n.ty);
        match info.kind {
            Kind::Primitive => {
                let Some(ext) = &n.ext else {
                    return match name {
                        "extension" | "id" => Ok(()),
                        _ => self.unknown_child(item, info.name, id, out),
                    };
                };
                match name {
                    "extension" => {
                        push_json(out, ext.map(|j| j.get("extension")), None, m.extension_ty)
                    }
                    "id" => push_json(out, ext.map(|j| j.get("id")), None, m.string_ty),
                    _ => self.unknown_child(item, info.name, id, out)?,
                }
                Ok(())
            }
            Kind::Unknown => {
                let Some(v) = &n.value else { return Ok(()) };
                if !v.get().is_object() {
                    return Ok(());
                }
                if let Some(c) = v.map(|j| j.get(name)) {
                    let ext = v.map(|j| j.get(format!("_{name}")));
                    push_json(out, Some(c), ext, UNKNOWN);
                } else if let Some(tf) = &id.type_filter {
                    if matches_type(item, tf) {
                        out.push(item.clone());
                    }
                }
                Ok(())
            }
            _ => {
                let Some(v) = &n.value else { return Ok(()) };
                let Some(obj) = v.get().as_object() else {
                    return Ok(());
                };
                // FHIR element names start in lower case: try a type name as a filter first.
                if let Some(tf) = &id.type_filter {
                    if matches_type(item, tf) {
                        out.push(item.clone());
                        return Ok(());
                    }
                }
                let Some(child) = m.child(n.ty, name) else {
                    // Not an element name: a type filter (`Patient.name`), or in lenient
                    // mode a JSON key (`valueQuantity`, unknown content).
                    if id.type_filter.is_some() || self.env.strict {
                        return self.unknown_child(item, info.name, id, out);
                    }
                    if let Some(c) = v.map(|j| j.get(name)) {
                        let ty = m.key_ty(n.ty, name).unwrap_or(UNKNOWN);
                        let ext = v.map(|j| j.get(format!("_{name}")));
                        push_json(out, Some(c), ext, ty);
                    }
                    return Ok(());
                };
                if !child.choice {
                    let var = &child.variants[0];
                    let (val, ext) = get_pair(v, var.key, var.ext_key);
                    push_json(out, val, ext, var.ty);
                    return Ok(());
                }
                // Choice element: find the typed key(s) present (`valueQuantity`, or only
                // `_valueString` for a primitive with just extensions).
                for key in obj.keys() {
                    let (plain, is_ext) = match key.strip_prefix('_') {
                        Some(k) => (k, true),
                        None => (key.as_str(), false),
                    };
                    if plain.len() <= name.len() || !plain.starts_with(name) {
                        continue;
                    }
                    let Some(var) = child.variants.iter().find(|var| var.key == plain) else {
                        continue;
                    };
                    if is_ext {
                        if !obj.contains_key(plain) {
                            push_json(out, None, v.map(|j| j.get(key.as_str())), var.ty);
                        }
                        continue;
                    }
                    let val = v.map(|j| j.get(var.key));
                    let ext = var.ext_key.and_then(|k| v.map(|j| j.get(k)));
                    push_json(out, val, ext, var.ty);
                }
                Ok(())
            }
        }
    }

    /// A name that is not an element of the node's type: a type filter (`Patient.name`),
    /// an error in strict mode, nothing otherwise.
    fn unknown_child(
        &self,
        item: &Item<'a>,
        type_name: &str,
        id: &Ident,
        out: &mut Vec<Item<'a>>,
    ) -> Result<(), EvalError> {
        if let Some(tf) = &id.type_filter {
            if matches_type(item, tf) {
                out.push(item.clone());
                return Ok(());
            }
        }
        if self.env.strict {
            return Err(EvalError::UnknownElement {
                type_name: type_name.to_string(),
                name: id.name.to_string(),
            });
        }
        Ok(())
    }

    /// Evaluate an operand, borrowing literals from the AST instead of allocating.
    fn operand<'x>(
        &self,
        n: &'x Node,
        scope: &Scope<'_, 'a>,
        slot: &'x mut Vec<Item<'a>>,
    ) -> Result<&'x [Item<'a>], EvalError> {
        if let Node::Literal(x) = n {
            return Ok(std::slice::from_ref(x));
        }
        *slot = self.eval(n, scope)?;
        Ok(slot.as_slice())
    }

    /// Evaluate an expression used as a condition (`where`, `iif`, `and` operands, ...),
    /// without building a result collection for boolean operators and comparisons.
    pub fn eval_bool(
        &self,
        node: &Node,
        scope: &Scope<'_, 'a>,
        what: &str,
    ) -> Result<Option<bool>, EvalError> {
        match node {
            Node::Binary(op @ (BinOp::And | BinOp::Or | BinOp::Xor | BinOp::Implies), l, r) => {
                self.logic(*op, l, r, scope)
            }
            Node::Binary(op, l, r) if is_comparison(*op) => {
                let (mut sa, mut sb) = (Vec::new(), Vec::new());
                let a = self.operand(l, scope, &mut sa)?;
                let b = self.operand(r, scope, &mut sb)?;
                self.compare_values(*op, a, b)
            }
            Node::Literal(x) => Ok(singleton_bool(x)),
            _ => bool3(&self.eval(node, scope)?, what),
        }
    }

    fn logic(
        &self,
        op: BinOp,
        l: &Node,
        r: &Node,
        scope: &Scope<'_, 'a>,
    ) -> Result<Option<bool>, EvalError> {
        Ok(match op {
            BinOp::And => {
                let a = self.eval_bool(l, scope, "and")?;
                if a == Some(false) {
                    return Ok(Some(false));
                }
                match (a, self.eval_bool(r, scope, "and")?) {
                    (_, Some(false)) => Some(false),
                    (Some(true), Some(true)) => Some(true),
                    _ => None,
                }
            }
            BinOp::Or => {
                let a = self.eval_bool(l, scope, "or")?;
                if a == Some(true) {
                    return Ok(Some(true));
                }
                match (a, self.eval_bool(r, scope, "or")?) {
                    (_, Some(true)) => Some(true),
                    (Some(false), Some(false)) => Some(false),
                    _ => None,
                }
            }
            BinOp::Xor => {
                let a = self.eval_bool(l, scope, "xor")?;
                match (a, self.eval_bool(r, scope, "xor")?) {
                    (Some(x), Some(y)) => Some(x != y),
                    _ => None,
                }
            }
            _ => {
                let a = self.eval_bool(l, scope, "implies")?;
                if a == Some(false) {
                    return Ok(Some(true));
                }
                match (a, self.eval_bool(r, scope, "implies")?) {
                    (Some(true), b) => b,
                    (None, Some(true)) => Some(true),
                    _ => None,
                }
            }
        })
    }

    fn binary(&self, op: BinOp, l: &Node, r: &Node, scope: &Scope<'_, 'a>) -> R<'a> {
        if matches!(op, BinOp::And | BinOp::Or | BinOp::Xor | BinOp::Implies) {
            return Ok(opt_bool(self.logic(op, l, r, scope)?));
        }
        let (mut sa, mut sb) = (Vec::new(), Vec::new());
        let a = self.operand(l, scope, &mut sa)?;
        let b = self.operand(r, scope, &mut sb)?;
        if is_comparison(op) {
            return Ok(opt_bool(self.compare_values(op, a, b)?));
        }
        self.binary_values(op, a, b)
    }

    /// Equality, equivalence, membership and ordering operators.
    pub fn compare_values(
        &self,
        op: BinOp,
        a: &[Item<'a>],
        b: &[Item<'a>],
    ) -> Result<Option<bool>, EvalError> {
        Ok(match op {
            BinOp::Eq => collection_equals(a, b),
            BinOp::NotEq => collection_equals(a, b).map(|x| !x),
            BinOp::Equiv => Some(collection_equivalent(a, b)),
            BinOp::NotEquiv => Some(!collection_equivalent(a, b)),
            BinOp::In | BinOp::Contains => {
                let (needle, hay) = if op == BinOp::In { (a, b) } else { (b, a) };
                let Some(x) = single(needle, "membership")? else {
                    return Ok(None);
                };
                Some(hay.iter().any(|y| value::equals(x, y) == Some(true)))
            }
            _ => {
                let (Some(x), Some(y)) = (single(a, "comparison")?, single(b, "comparison")?)
                else {
                    return Ok(None);
                };
                let (Some(px), Some(py)) = (x.prim(), y.prim()) else {
                    return Err(EvalError::type_err("cannot compare complex values"));
                };
                let ord = value::compare(&px, &py).map_err(EvalError::Type)?;
                ord.map(|o| match op {
                    BinOp::Lt => o == Ordering::Less,
                    BinOp::Le => o != Ordering::Greater,
                    BinOp::Gt => o == Ordering::Greater,
                    _ => o != Ordering::Less,
                })
            }
        })
    }

    /// Union, concatenation and arithmetic.
    pub fn binary_values(&self, op: BinOp, a: &[Item<'a>], b: &[Item<'a>]) -> R<'a> {
        match op {
            BinOp::Union => {
                let mut out = value::DistinctSet::default();
                for item in a.iter().chain(b) {
                    out.insert(item.clone());
                }
                Ok(out.into_vec())
            }
            BinOp::Concat => {
                let text = |v: &[Item<'a>]| -> Result<String, EvalError> {
                    match single(v, "&")? {
                        None => Ok(String::new()),
                        Some(i) => match i.prim() {
                            Some(Prim::String(s)) => Ok(s.to_string()),
                            _ => Err(EvalError::type_err("'&' applies to strings")),
                        },
                    }
                };
                let mut s = text(a)?;
                s.push_str(&text(b)?);
                Ok(vec![Item::string(s)])
            }
            _ => {
                let (Some(x), Some(y)) = (single(a, "arithmetic")?, single(b, "arithmetic")?)
                else {
                    return Ok(Vec::new());
                };
                arithmetic(op, x, y)
            }
        }
    }
}

fn is_comparison(op: BinOp) -> bool {
    matches!(
        op,
        BinOp::Eq
            | BinOp::NotEq
            | BinOp::Equiv
            | BinOp::NotEquiv
            | BinOp::In
            | BinOp::Contains
            | BinOp::Lt
            | BinOp::Le
            | BinOp::Gt
            | BinOp::Ge
    )
}

/// `=` on collections: empty if either side is empty or the sizes differ, otherwise
/// item-wise in order.
pub(crate) fn collection_equals(a: &[Item<'_>], b: &[Item<'_>]) -> Option<bool> {
    if a.is_empty() || b.is_empty() || a.len() != b.len() {
        return None;
    }
    let mut result = Some(true);
    for (x, y) in a.iter().zip(b) {
        match value::equals(x, y) {
            Some(false) => return Some(false),
            None => result = None,
            Some(true) => {}
        }
    }
    result
}

/// `~` on collections: order-independent, both empty is true.
pub(crate) fn collection_equivalent(a: &[Item<'_>], b: &[Item<'_>]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut used = vec![false; b.len()];
    a.iter().all(|x| {
        let found = b
            .iter()
            .enumerate()
            .find(|(i, y)| !used[*i] && value::equivalent(x, y));
        match found {
            Some((i, _)) => {
                used[i] = true;
                true
            }
            None => false,
        }
    })
}

fn arithmetic<'a>(op: BinOp, x: &Item<'a>, y: &Item<'a>) -> R<'a> {
    let (Some(a), Some(b)) = (x.prim(), y.prim()) else {
        return Err(EvalError::type_err("arithmetic on complex values"));
    };
    let mismatch = || {
        Err(EvalError::Type(format!(
            "cannot apply {op:?} to {} and {}",
            a.kind_name(),
            b.kind_name()
        )))
    };
    let dec = |p: &Prim<'_>| match p {
        Prim::Integer(i) => Some(Decimal::from(*i)),
        Prim::Decimal(d) => Some(*d),
        _ => None,
    };
    let some = |i: Option<Item<'a>>| Ok(i.into_iter().collect::<Vec<_>>());
    use Prim as P;
    match (op, &a, &b) {
        (BinOp::Add, P::Integer(p), P::Integer(q)) => some(p.checked_add(*q).map(Item::integer)),
        (BinOp::Sub, P::Integer(p), P::Integer(q)) => some(p.checked_sub(*q).map(Item::integer)),
        (BinOp::Mul, P::Integer(p), P::Integer(q)) => some(p.checked_mul(*q).map(Item::integer)),
        (BinOp::IntDiv, P::Integer(p), P::Integer(q)) => some(p.checked_div(*q).map(Item::integer)),
        (BinOp::Mod, P::Integer(p), P::Integer(q)) => some(p.checked_rem(*q).map(Item::integer)),
        (BinOp::Add, P::String(p), P::String(q)) => {
            let mut s = String::with_capacity(p.len() + q.len());
            s.push_str(p);
            s.push_str(q);
            Ok(vec![Item::string(s)])
        }
        (BinOp::Add | BinOp::Sub, P::Date(d) | P::DateTime(d), P::Quantity(q)) => {
            let Some(unit) = q.time_unit() else {
                return Err(EvalError::type_err(format!(
                    "'{}' is not a time unit",
                    q.unit
                )));
            };
            let amount = if op == BinOp::Sub { -q.value } else { q.value };
            let is_date = matches!(a, P::Date(_));
            some(d.add(amount, unit).map(|r| {
                if is_date {
                    Item::date(r)
                } else {
                    Item::date_time(r)
                }
            }))
        }
        (BinOp::Add | BinOp::Sub, P::Time(t), P::Quantity(q)) => {
            let Some(unit) = q.time_unit() else {
                return Err(EvalError::type_err(format!(
                    "'{}' is not a time unit",
                    q.unit
                )));
            };
            let amount = if op == BinOp::Sub { -q.value } else { q.value };
            some(t.add(amount, unit).map(Item::time))
        }
        (BinOp::Add | BinOp::Sub, P::Quantity(p), P::Quantity(q)) => {
            some(p.add(q, op == BinOp::Sub).map(Item::quantity))
        }
        (BinOp::Mul, P::Quantity(p), P::Quantity(q)) => some(p.mul(q).map(Item::quantity)),
        (BinOp::Div, P::Quantity(p), P::Quantity(q)) => some(p.div(q).map(Item::quantity)),
        (BinOp::Mul, P::Quantity(p), n) | (BinOp::Mul, n, P::Quantity(p)) => match dec(n) {
            Some(n) => some(
                p.value
                    .checked_mul(n)
                    .map(|v| Item::quantity(Quantity::new(v, p.unit.clone()))),
            ),
            None => mismatch(),
        },
        (BinOp::Div, P::Quantity(p), n) => match dec(n) {
            Some(n) => some(
                decimal_div(p.value, n).map(|v| Item::quantity(Quantity::new(v, p.unit.clone()))),
            ),
            None => mismatch(),
        },
        _ => {
            let (Some(p), Some(q)) = (dec(&a), dec(&b)) else {
                return mismatch();
            };
            let r = match op {
                BinOp::Add => p.checked_add(q),
                BinOp::Sub => p.checked_sub(q),
                BinOp::Mul => p.checked_mul(q),
                BinOp::Div => decimal_div(p, q),
                BinOp::IntDiv => {
                    if q.is_zero() {
                        None
                    } else {
                        use rust_decimal::prelude::ToPrimitive;
                        return some(
                            p.checked_div(q)
                                .and_then(|r| r.trunc().to_i64())
                                .map(Item::integer),
                        );
                    }
                }
                BinOp::Mod => {
                    if q.is_zero() {
                        None
                    } else {
                        p.checked_rem(q)
                    }
                }
                _ => return mismatch(),
            };
            some(r.map(Item::decimal))
        }
    }
}

/// Used by functions that need an owned shared JSON from a resolver.
pub(crate) fn shared_node<'a>(json: Arc<Json>) -> Item<'a> {
    Item::from_shared(json)
}
