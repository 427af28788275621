//! Values: the [`Item`]s of FHIRPath collections.
//!
//! An item is either a *system value* computed by an expression (Boolean, Integer, Decimal,
//! String, Date, DateTime, Time, Quantity, or a type descriptor from `type()`), or a *node*:
//! a borrowed reference into the FHIR JSON being evaluated together with its FHIR type from
//! the definitions (`Patient.birthDate` is a `date`, `Observation.valueQuantity` a
//! `Quantity`) and, for primitives, the `_name` object carrying its `id`/`extension`.
//! Nodes convert to system values on demand (a `date` node compares as a System.Date), so
//! navigation never copies JSON.
//!
//! This module also holds the value-level semantics shared by operators and functions:
//! equality, equivalence, ordering, and conversion to strings and JSON.

use crate::datetime::{DateTime, Time};
use crate::model::{model, Kind, PrimKind, TyId, UNKNOWN};
use crate::quantity::Quantity;
use rust_decimal::Decimal;
use serde_json::Value as Json;
use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;
use std::sync::Arc;

/// The FHIRPath system types (namespace `System`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SystemType {
    Boolean,
    String,
    Integer,
    Decimal,
    Date,
    DateTime,
    Time,
    Quantity,
    Any,
}

impl SystemType {
    pub fn name(self) -> &'static str {
        match self {
            Self::Boolean => "Boolean",
            Self::String => "String",
            Self::Integer => "Integer",
            Self::Decimal => "Decimal",
            Self::Date => "Date",
            Self::DateTime => "DateTime",
            Self::Time => "Time",
            Self::Quantity => "Quantity",
            Self::Any => "Any",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "Boolean" => Self::Boolean,
            "String" => Self::String,
            "Integer" => Self::Integer,
            "Decimal" => Self::Decimal,
            "Date" => Self::Date,
            "DateTime" => Self::DateTime,
            "Time" => Self::Time,
            "Quantity" => Self::Quantity,
            "Any" => Self::Any,
            _ => return None,
        })
    }
}

/// A JSON value borrowed from the evaluated resource (or the environment), or shared from a
/// resource that a resolver hook supplied.
#[derive(Debug, Clone)]
pub(crate) enum JsonRef<'a> {
    Borrowed(&'a Json),
    Shared(Arc<Json>),
}

impl JsonRef<'_> {
    pub fn get(&self) -> &Json {
        match self {
            JsonRef::Borrowed(j) => j,
            JsonRef::Shared(j) => j,
        }
    }

    /// Identity (same JSON node), used by `repeat()` to stop on cycles.
    pub fn ptr(&self) -> *const Json {
        self.get() as *const Json
    }
}

impl<'a> JsonRef<'a> {
    /// A child reached through `f`, keeping the borrow when possible.
    pub fn map(&self, f: impl Fn(&Json) -> Option<&Json>) -> Option<JsonRef<'a>> {
        match self {
            JsonRef::Borrowed(j) => f(j).map(JsonRef::Borrowed),
            JsonRef::Shared(j) => f(j).map(|c| JsonRef::Shared(Arc::new(c.clone()))),
        }
    }
}

/// A node of the evaluated FHIR JSON with its FHIR type.
#[derive(Debug, Clone)]
pub(crate) struct Node<'a> {
    /// The JSON value; `None` for a primitive that only has extensions (`_given: [{...}]`).
    pub value: Option<JsonRef<'a>>,
    /// The `_name` object of a primitive (its `id` and `extension`).
    pub ext: Option<JsonRef<'a>>,
    pub ty: TyId,
}

/// The result of `type()`: a type's namespace and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeInfo {
    pub namespace: &'static str,
    pub name: Arc<str>,
}

#[derive(Debug, Clone)]
pub(crate) enum Val<'a> {
    Boolean(bool),
    Integer(i64),
    Decimal(Decimal),
    String(Arc<str>),
    Date(DateTime),
    DateTime(DateTime),
    Time(Time),
    Quantity(Arc<Quantity>),
    Node(Node<'a>),
    Type(Arc<TypeInfo>),
}

/// One item of a FHIRPath collection. Cheap to clone (no JSON is copied).
#[derive(Debug, Clone)]
pub struct Item<'a>(pub(crate) Val<'a>);

/// A primitive view of an item, used by operators: system values as they are, FHIR
/// primitives converted to their system type, FHIR `Quantity` nodes as quantities.
#[derive(Debug, Clone)]
pub(crate) enum Prim<'x> {
    Boolean(bool),
    Integer(i64),
    Decimal(Decimal),
    String(&'x str),
    Date(DateTime),
    DateTime(DateTime),
    Time(Time),
    Quantity(Cow<'x, Quantity>),
}

impl Prim<'_> {
    pub fn kind_name(&self) -> &'static str {
        match self {
            Prim::Boolean(_) => "Boolean",
            Prim::Integer(_) => "Integer",
            Prim::Decimal(_) => "Decimal",
            Prim::String(_) => "String",
            Prim::Date(_) => "Date",
            Prim::DateTime(_) => "DateTime",
            Prim::Time(_) => "Time",
            Prim::Quantity(_) => "Quantity",
        }
    }
}

/// Parse JSON number text (possibly in exponent form) into a decimal keeping its scale.
pub(crate) fn decimal_from_text(s: &str) -> Option<Decimal> {
    if s.contains(['e', 'E']) {
        Decimal::from_scientific(s).ok()
    } else {
        Decimal::from_str(s).ok()
    }
}

/// Decimal division as FHIRPath implementations do it: exact when the quotient has at most
/// 8 decimal places, otherwise rounded to 8 (`1.2 / 1.8` is `0.66666667`).
pub(crate) fn decimal_div(a: Decimal, b: Decimal) -> Option<Decimal> {
    if b.is_zero() {
        return None;
    }
    let q = a.checked_div(b)?;
    if q.normalize().scale() > 8 {
        Some(q.round_dp(8))
    } else {
        Some(q.normalize())
    }
}

fn json_text(j: &Json) -> Option<&str> {
    j.as_str()
}

impl<'a> Item<'a> {
    pub(crate) fn node(value: Option<JsonRef<'a>>, ext: Option<JsonRef<'a>>, ty: TyId) -> Self {
        Item(Val::Node(Node { value, ext, ty }))
    }

    /// A node for a whole resource (its type taken from `resourceType`).
    pub fn from_resource(json: &'a Json) -> Self {
        let ty = model().resource_ty(json).unwrap_or(UNKNOWN);
        Item::node(Some(JsonRef::Borrowed(json)), None, ty)
    }

    /// A node for JSON of a known FHIR type (`HumanName`, `Patient`, `date`); unknown
    /// names give an untyped node.
    pub fn from_json_typed(json: &'a Json, fhir_type: &str) -> Self {
        let m = model();
        let ty = m
            .type_id(fhir_type)
            .map(|t| {
                if m.ty(t).abstract_resource {
                    m.resource_ty(json).unwrap_or(t)
                } else {
                    t
                }
            })
            .unwrap_or(UNKNOWN);
        Item::node(Some(JsonRef::Borrowed(json)), None, ty)
    }

    /// A resource shared from elsewhere (what a resolver hook returns).
    pub fn from_shared(json: Arc<Json>) -> Self {
        let ty = model().resource_ty(&json).unwrap_or(UNKNOWN);
        Item::node(Some(JsonRef::Shared(json)), None, ty)
    }

    pub fn boolean(b: bool) -> Self {
        Item(Val::Boolean(b))
    }

    pub fn integer(i: i64) -> Self {
        Item(Val::Integer(i))
    }

    pub fn decimal(d: Decimal) -> Self {
        Item(Val::Decimal(d))
    }

    pub fn string(s: impl Into<Arc<str>>) -> Self {
        Item(Val::String(s.into()))
    }

    pub fn date(d: DateTime) -> Self {
        Item(Val::Date(d))
    }

    pub fn date_time(d: DateTime) -> Self {
        Item(Val::DateTime(d))
    }

    pub fn time(t: Time) -> Self {
        Item(Val::Time(t))
    }

    pub fn quantity(q: Quantity) -> Self {
        Item(Val::Quantity(Arc::new(q)))
    }

    /// Untyped JSON: scalars act as system values (String, Boolean, Integer/Decimal) and
    /// objects are navigated by key, without FHIR type information.
    pub fn from_json(json: &'a Json) -> Self {
        Item::node(Some(JsonRef::Borrowed(json)), None, UNKNOWN)
    }

    pub(crate) fn as_node(&self) -> Option<&Node<'a>> {
        match &self.0 {
            Val::Node(n) => Some(n),
            _ => None,
        }
    }

    /// The FHIR type of a node (`date`, `HumanName`, `Patient`, `BackboneElement`); `None`
    /// for system values and untyped JSON.
    pub fn fhir_type(&self) -> Option<&'static str> {
        let n = self.as_node()?;
        let name = model().ty(n.ty).name;
        (!name.is_empty()).then_some(name)
    }

    /// `(namespace, name)` of the item's type: `("FHIR", "date")`, `("System", "Integer")`.
    pub fn type_name(&self) -> (&'static str, Cow<'static, str>) {
        match &self.0 {
            Val::Node(n) => match model().ty(n.ty).name {
                "" => match self.prim() {
                    Some(p) => ("System", Cow::Borrowed(p.kind_name())),
                    None => ("System", Cow::Borrowed("Any")),
                },
                name => ("FHIR", Cow::Borrowed(name)),
            },
            Val::Type(_) => ("System", Cow::Borrowed("TypeInfo")),
            _ => (
                "System",
                Cow::Borrowed(self.prim().map_or("Any", |p| p.kind_name())),
            ),
        }
    }

    /// The JSON of a node (a primitive's scalar, an object, ...); `None` for system values.
    pub fn as_json(&self) -> Option<&Json> {
        self.as_node()?.value.as_ref().map(JsonRef::get)
    }

    /// The `_name` extension object of a primitive node, if any.
    pub fn primitive_extension_json(&self) -> Option<&Json> {
        self.as_node()?.ext.as_ref().map(JsonRef::get)
    }

    /// Text of a string value: a System.String, or a node whose JSON is a string (string,
    /// code, uri, id, markdown, and the text of date/time primitives).
    pub fn as_str(&self) -> Option<&str> {
        match &self.0 {
            Val::String(s) => Some(s),
            Val::Node(n) => n.value.as_ref().and_then(|v| json_text(v.get())),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self.prim()? {
            Prim::Boolean(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_integer(&self) -> Option<i64> {
        match self.prim()? {
            Prim::Integer(i) => Some(i),
            _ => None,
        }
    }

    /// Decimal value of a Decimal or Integer (keeping the written precision).
    pub fn as_decimal(&self) -> Option<Decimal> {
        match self.prim()? {
            Prim::Decimal(d) => Some(d),
            Prim::Integer(i) => Some(Decimal::from(i)),
            _ => None,
        }
    }

    /// A Date or DateTime value (a Date has precision at most day).
    pub fn as_date_time(&self) -> Option<DateTime> {
        match self.prim()? {
            Prim::Date(d) | Prim::DateTime(d) => Some(d),
            _ => None,
        }
    }

    pub fn as_time(&self) -> Option<Time> {
        match self.prim()? {
            Prim::Time(t) => Some(t),
            _ => None,
        }
    }

    /// A System.Quantity, or a FHIR Quantity (or Age, Duration, ...) node as one (its UCUM
    /// `code`, else its `unit`).
    pub fn as_quantity(&self) -> Option<Quantity> {
        match self.prim()? {
            Prim::Quantity(q) => Some(q.into_owned()),
            _ => None,
        }
    }

    /// The `type()` result, when this item is one.
    pub fn as_type_info(&self) -> Option<&TypeInfo> {
        match &self.0 {
            Val::Type(t) => Some(t),
            _ => None,
        }
    }

    /// The primitive view of this item (see [`Prim`]).
    pub(crate) fn prim(&self) -> Option<Prim<'_>> {
        match &self.0 {
            Val::Boolean(b) => Some(Prim::Boolean(*b)),
            Val::Integer(i) => Some(Prim::Integer(*i)),
            Val::Decimal(d) => Some(Prim::Decimal(*d)),
            Val::String(s) => Some(Prim::String(s)),
            Val::Date(d) => Some(Prim::Date(*d)),
            Val::DateTime(d) => Some(Prim::DateTime(*d)),
            Val::Time(t) => Some(Prim::Time(*t)),
            Val::Quantity(q) => Some(Prim::Quantity(Cow::Borrowed(q))),
            Val::Type(_) => None,
            Val::Node(n) => node_prim(n),
        }
    }

    /// Render as FHIRPath `toString()` would (`None` for complex nodes).
    pub fn to_fhirpath_string(&self) -> Option<String> {
        Some(match self.prim()? {
            Prim::Boolean(b) => b.to_string(),
            Prim::Integer(i) => i.to_string(),
            Prim::Decimal(d) => d.to_string(),
            Prim::String(s) => s.to_string(),
            Prim::Date(d) | Prim::DateTime(d) => d.to_string(),
            Prim::Time(t) => t.to_string(),
            Prim::Quantity(q) => q.to_string(),
        })
    }

    /// The item as JSON: nodes as they are; system values in their FHIR JSON form
    /// (decimals keep their digits; quantities become `{value, unit, system, code}`).
    pub fn to_json(&self) -> Json {
        match &self.0 {
            Val::Node(n) => n.value.as_ref().map_or(Json::Null, |v| v.get().clone()),
            Val::Boolean(b) => Json::Bool(*b),
            Val::Integer(i) => Json::from(*i),
            Val::Decimal(d) => decimal_json(*d),
            Val::String(s) => Json::String(s.to_string()),
            Val::Date(d) | Val::DateTime(d) => Json::String(d.to_string()),
            Val::Time(t) => Json::String(t.to_string()),
            Val::Quantity(q) => {
                let mut m = serde_json::Map::new();
                m.insert("value".into(), decimal_json(q.value));
                match q.calendar_unit() {
                    Some(_) => {
                        m.insert("unit".into(), Json::String(q.unit.to_string()));
                    }
                    None => {
                        m.insert("unit".into(), Json::String(q.unit.to_string()));
                        m.insert(
                            "system".into(),
                            Json::String("http://unitsofmeasure.org".into()),
                        );
                        m.insert("code".into(), Json::String(q.unit.to_string()));
                    }
                }
                Json::Object(m)
            }
            Val::Type(t) => {
                let mut m = serde_json::Map::new();
                m.insert("namespace".into(), Json::String(t.namespace.into()));
                m.insert("name".into(), Json::String(t.name.to_string()));
                Json::Object(m)
            }
        }
    }
}

fn decimal_json(d: Decimal) -> Json {
    d.to_string()
        .parse::<serde_json::Number>()
        .map(Json::Number)
        .unwrap_or_else(|_| Json::String(d.to_string()))
}

impl fmt::Display for Item<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_fhirpath_string() {
            Some(s) => f.write_str(&s),
            None => write!(f, "{}", self.to_json()),
        }
    }
}

fn node_prim<'x>(n: &'x Node<'_>) -> Option<Prim<'x>> {
    let m = model();
    let t = m.ty(n.ty);
    let v = n.value.as_ref()?.get();
    match t.prim {
        Some(kind) => match (kind, v) {
            (PrimKind::Boolean, Json::Bool(b)) => Some(Prim::Boolean(*b)),
            (PrimKind::Integer, Json::Number(num)) => num.as_i64().map(Prim::Integer),
            (PrimKind::Decimal, Json::Number(num)) => {
                decimal_from_text(num.as_str()).map(Prim::Decimal)
            }
            (PrimKind::Date, Json::String(s)) => Some(
                DateTime::parse_date(s)
                    .map(Prim::Date)
                    .unwrap_or(Prim::String(s)),
            ),
            (PrimKind::DateTime, Json::String(s)) => Some(
                DateTime::parse_datetime(s)
                    .map(Prim::DateTime)
                    .unwrap_or(Prim::String(s)),
            ),
            (PrimKind::Time, Json::String(s)) => {
                Some(Time::parse(s).map(Prim::Time).unwrap_or(Prim::String(s)))
            }
            (_, other) => json_prim(other),
        },
        None if t.quantity => {
            let obj = v.as_object()?;
            let value = match obj.get("value")? {
                Json::Number(num) => decimal_from_text(num.as_str())?,
                _ => return None,
            };
            let unit = obj
                .get("code")
                .and_then(Json::as_str)
                .or_else(|| obj.get("unit").and_then(Json::as_str))
                .unwrap_or("1");
            Some(Prim::Quantity(Cow::Owned(Quantity::new(value, unit))))
        }
        None if t.kind == Kind::Unknown => json_prim(v),
        None => None,
    }
}

fn json_prim(v: &Json) -> Option<Prim<'_>> {
    match v {
        Json::Bool(b) => Some(Prim::Boolean(*b)),
        Json::String(s) => Some(Prim::String(s)),
        Json::Number(num) => {
            let text = num.as_str();
            if text.contains(['.', 'e', 'E']) {
                decimal_from_text(text).map(Prim::Decimal)
            } else {
                num.as_i64()
                    .map(Prim::Integer)
                    .or_else(|| decimal_from_text(text).map(Prim::Decimal))
            }
        }
        _ => None,
    }
}

// ------------------------------------------------------------------------------------------
// Equality, equivalence, ordering
// ------------------------------------------------------------------------------------------

/// `=` on two items: `None` when undetermined (dates of different precision, quantities
/// of incomparable units).
pub(crate) fn equals(a: &Item<'_>, b: &Item<'_>) -> Option<bool> {
    if let (Val::Type(x), Val::Type(y)) = (&a.0, &b.0) {
        return Some(x == y);
    }
    match (a.prim(), b.prim()) {
        (Some(x), Some(y)) => prim_equals(&x, &y),
        (None, None) => match (a.as_node(), b.as_node()) {
            (Some(x), Some(y)) => Some(node_deep_eq(x, y, false)),
            _ => Some(false),
        },
        _ => Some(false),
    }
}

fn node_deep_eq(a: &Node<'_>, b: &Node<'_>, equiv: bool) -> bool {
    match (&a.value, &b.value) {
        (Some(x), Some(y)) => json_eq(x.get(), y.get(), equiv, 0),
        (None, None) => true,
        _ => false,
    }
}

fn json_eq(a: &Json, b: &Json, equiv: bool, depth: usize) -> bool {
    if depth > 256 {
        return false;
    }
    match (a, b) {
        (Json::Object(x), Json::Object(y)) => {
            // `id` of elements is ignored by equivalence.
            let keys = |m: &serde_json::Map<String, Json>| {
                m.iter()
                    .filter(|(k, _)| !(equiv && k.as_str() == "id"))
                    .count()
            };
            keys(x) == keys(y)
                && x.iter()
                    .filter(|(k, _)| !(equiv && k.as_str() == "id"))
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w, equiv, depth + 1)))
        }
        (Json::Array(x), Json::Array(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y.iter())
                    .all(|(v, w)| json_eq(v, w, equiv, depth + 1))
        }
        (Json::Number(x), Json::Number(y)) => {
            x.as_str() == y.as_str()
                || match (decimal_from_text(x.as_str()), decimal_from_text(y.as_str())) {
                    (Some(p), Some(q)) => p == q,
                    _ => false,
                }
        }
        (Json::String(x), Json::String(y)) => {
            if equiv {
                normalize_ws_lower(x) == normalize_ws_lower(y)
            } else {
                x == y
            }
        }
        _ => a == b,
    }
}

fn normalize_ws_lower(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

fn dates_equal(x: &DateTime, y: &DateTime, x_is_date: bool, y_is_date: bool) -> Option<bool> {
    // A calendar date is not the same thing as an instant in a given zone (this matches
    // the reference implementation: `@1974-12-25 = @1974-12-25T12:34:00Z` is false).
    let zoned = |d: &DateTime| d.offset.is_some() && !d.is_date_only();
    if (x_is_date && zoned(y)) || (y_is_date && zoned(x)) {
        return Some(false);
    }
    x.compare(y).map(|o| o == Ordering::Equal)
}

pub(crate) fn prim_equals(a: &Prim<'_>, b: &Prim<'_>) -> Option<bool> {
    use Prim as P;
    match (a, b) {
        (P::Boolean(x), P::Boolean(y)) => Some(x == y),
        (P::Integer(x), P::Integer(y)) => Some(x == y),
        (P::Integer(x), P::Decimal(y)) | (P::Decimal(y), P::Integer(x)) => {
            Some(Decimal::from(*x) == *y)
        }
        (P::Decimal(x), P::Decimal(y)) => Some(x == y),
        (P::String(x), P::String(y)) => Some(x == y),
        (P::Date(x), P::Date(y)) => dates_equal(x, y, true, true),
        (P::Date(x), P::DateTime(y)) => dates_equal(x, y, true, false),
        (P::DateTime(x), P::Date(y)) => dates_equal(x, y, false, true),
        (P::DateTime(x), P::DateTime(y)) => dates_equal(x, y, false, false),
        (P::Time(x), P::Time(y)) => x.compare(y).map(|o| o == Ordering::Equal),
        (P::Quantity(x), P::Quantity(y)) => x.equals(y),
        _ => Some(false),
    }
}

/// `~` on two items.
pub(crate) fn equivalent(a: &Item<'_>, b: &Item<'_>) -> bool {
    if let (Val::Type(x), Val::Type(y)) = (&a.0, &b.0) {
        return x == y;
    }
    match (a.prim(), b.prim()) {
        (Some(x), Some(y)) => prim_equivalent(&x, &y),
        (None, None) => match (a.as_node(), b.as_node()) {
            (Some(x), Some(y)) => node_deep_eq(x, y, true),
            _ => false,
        },
        _ => false,
    }
}

fn decimal_equivalent(x: Decimal, y: Decimal) -> bool {
    let scale = x.scale().min(y.scale());
    x.round_dp(scale) == y.round_dp(scale)
}

pub(crate) fn prim_equivalent(a: &Prim<'_>, b: &Prim<'_>) -> bool {
    use Prim as P;
    match (a, b) {
        (P::Boolean(x), P::Boolean(y)) => x == y,
        (P::Integer(x), P::Integer(y)) => x == y,
        (P::Integer(x), P::Decimal(y)) | (P::Decimal(y), P::Integer(x)) => {
            decimal_equivalent(Decimal::from(*x), *y)
        }
        (P::Decimal(x), P::Decimal(y)) => decimal_equivalent(*x, *y),
        (P::String(x), P::String(y)) => normalize_ws_lower(x) == normalize_ws_lower(y),
        (P::Date(x) | P::DateTime(x), P::Date(y) | P::DateTime(y)) => x.equivalent(y),
        (P::Time(x), P::Time(y)) => x.equivalent(y),
        (P::Quantity(x), P::Quantity(y)) => x.equivalent(y),
        _ => false,
    }
}

/// Ordering for `<`, `>`, `<=`, `>=`: `Err` for operands that cannot be ordered against each
/// other, `Ok(None)` when undetermined.
pub(crate) fn compare(a: &Prim<'_>, b: &Prim<'_>) -> Result<Option<Ordering>, String> {
    use Prim as P;
    Ok(match (a, b) {
        (P::Integer(x), P::Integer(y)) => Some(x.cmp(y)),
        (P::Integer(x), P::Decimal(y)) => Some(Decimal::from(*x).cmp(y)),
        (P::Decimal(x), P::Integer(y)) => Some(x.cmp(&Decimal::from(*y))),
        (P::Decimal(x), P::Decimal(y)) => Some(x.cmp(y)),
        (P::String(x), P::String(y)) => Some(x.cmp(y)),
        (P::Date(x) | P::DateTime(x), P::Date(y) | P::DateTime(y)) => x.compare(y),
        (P::Time(x), P::Time(y)) => x.compare(y),
        (P::Quantity(x), P::Quantity(y)) => x.compare(y),
        _ => {
            return Err(format!(
                "cannot compare {} with {}",
                a.kind_name(),
                b.kind_name()
            ))
        }
    })
}

/// Identity key for `repeat()`: the same JSON node (by address and type), or the same
/// system value (by type and text). Hashable, so `repeat()` stays linear.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) enum ItemKey {
    Node(usize, TyId),
    Value(&'static str, String),
}

pub(crate) fn item_key(item: &Item<'_>) -> Option<ItemKey> {
    match &item.0 {
        Val::Node(n) => n
            .value
            .as_ref()
            .map(|v| ItemKey::Node(v.ptr() as usize, n.ty)),
        Val::Type(t) => Some(ItemKey::Value(
            "TypeInfo",
            format!("{}.{}", t.namespace, t.name),
        )),
        _ => {
            let p = item.prim()?;
            let kind = p.kind_name();
            // Numbers compare by value: 1 and 1.0 are the same item.
            let text = match p {
                Prim::Integer(i) => Decimal::from(i).normalize().to_string(),
                Prim::Decimal(d) => d.normalize().to_string(),
                _ => item.to_fhirpath_string()?,
            };
            let kind = if kind == "Integer" { "Decimal" } else { kind };
            Some(ItemKey::Value(kind, text))
        }
    }
}

/// A hash that equal items (by `=`) always share: coarse for dates, times and quantities
/// (whose equality crosses zones and units), exact for the rest. Used to bucket items so
/// `distinct()`, `|` and friends stay near-linear on large collections.
fn equality_hash(item: &Item<'_>) -> u64 {
    let mut h = crate::model::FxHasher::default();
    match item.prim() {
        Some(Prim::Boolean(b)) => (0u8, b).hash(&mut h),
        Some(Prim::Integer(i)) => (1u8, Decimal::from(i).normalize().to_string()).hash(&mut h),
        Some(Prim::Decimal(d)) => (1u8, d.normalize().to_string()).hash(&mut h),
        Some(Prim::String(s)) => (2u8, s).hash(&mut h),
        Some(Prim::Date(_) | Prim::DateTime(_)) => 3u8.hash(&mut h),
        Some(Prim::Time(_)) => 4u8.hash(&mut h),
        Some(Prim::Quantity(_)) => 5u8.hash(&mut h),
        None => match &item.0 {
            Val::Type(t) => (6u8, t.namespace, &*t.name).hash(&mut h),
            Val::Node(n) => {
                7u8.hash(&mut h);
                if let Some(v) = &n.value {
                    json_hash(v.get(), 0).hash(&mut h);
                }
            }
            _ => 8u8.hash(&mut h),
        },
    }
    h.finish()
}

/// Structural hash consistent with [`json_eq`] (objects order-independent, numbers by
/// value).
fn json_hash(v: &Json, depth: usize) -> u64 {
    let mut h = crate::model::FxHasher::default();
    if depth > 64 {
        return 0;
    }
    match v {
        Json::Null => 0u8.hash(&mut h),
        Json::Bool(b) => b.hash(&mut h),
        Json::Number(n) => match decimal_from_text(n.as_str()) {
            Some(d) => d.normalize().to_string().hash(&mut h),
            None => n.as_str().hash(&mut h),
        },
        Json::String(s) => s.hash(&mut h),
        Json::Array(a) => {
            for x in a {
                json_hash(x, depth + 1).hash(&mut h);
            }
        }
        Json::Object(m) => {
            let mut acc = 0u64;
            for (k, x) in m {
                let mut e = crate::model::FxHasher::default();
                (k, json_hash(x, depth + 1)).hash(&mut e);
                acc = acc.wrapping_add(e.finish());
            }
            acc.hash(&mut h);
        }
    }
    h.finish()
}

/// A collection without duplicates (by `=`), with hashed buckets.
#[derive(Default)]
pub(crate) struct DistinctSet<'a> {
    items: Vec<Item<'a>>,
    buckets: HashMap<u64, Vec<usize>>,
}

impl<'a> DistinctSet<'a> {
    pub fn from_items(items: &[Item<'a>]) -> Self {
        let mut set = Self::default();
        for i in items {
            set.insert(i.clone());
        }
        set
    }

    /// Add `item` unless an equal one is present; whether it was added.
    pub fn insert(&mut self, item: Item<'a>) -> bool {
        let h = equality_hash(&item);
        let bucket = self.buckets.entry(h).or_default();
        if bucket
            .iter()
            .any(|&i| equals(&self.items[i], &item) == Some(true))
        {
            return false;
        }
        bucket.push(self.items.len());
        self.items.push(item);
        true
    }

    pub fn contains(&self, item: &Item<'_>) -> bool {
        self.buckets.get(&equality_hash(item)).is_some_and(|b| {
            b.iter()
                .any(|&i| equals(&self.items[i], item) == Some(true))
        })
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn into_vec(self) -> Vec<Item<'a>> {
        self.items
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn distinct_set_matches_equality() {
        let a = json!({"x": 1.0, "y": [1, "a"]});
        let b = json!({"y": [1, "a"], "x": 1});
        let mut set = DistinctSet::default();
        assert!(set.insert(Item::from_json(&a)));
        assert!(!set.insert(Item::from_json(&b)));
        assert!(set.insert(Item::integer(1)));
        assert!(!set.insert(Item::decimal(Decimal::new(10, 1))));
        let d = |s| Item::date_time(DateTime::parse_datetime(s).unwrap());
        assert!(set.insert(d("2012-04-15T15:00:00+02:00")));
        assert!(!set.insert(d("2012-04-15T16:00:00+03:00")));
        assert_eq!(set.len(), 3);
        assert!(!set.contains(&Item::string("a")));
    }

    #[test]
    fn nodes_convert_by_fhir_type() {
        let obs: Json = serde_json::from_str(
            r#"{"resourceType": "Observation", "valueQuantity": {"value": 1.50, "code": "mg"}}"#,
        )
        .unwrap_or_default();
        let qty = obs.get("valueQuantity").unwrap();
        let item = Item::from_json_typed(qty, "Quantity");
        let q = item.as_quantity().unwrap();
        assert_eq!(q.value.to_string(), "1.50");
        assert_eq!(&*q.unit, "mg");
        let date = json!("1974-12-25");
        let d = Item::from_json_typed(&date, "date");
        assert_eq!(d.fhir_type(), Some("date"));
        assert!(d.as_date_time().is_some());
        assert_eq!(d.type_name(), ("FHIR", Cow::Borrowed("date")));
        let untyped = json!(3);
        assert_eq!(Item::from_json(&untyped).as_integer(), Some(3));
    }

    #[test]
    fn decimal_semantics() {
        let d = |s: &str| Item::decimal(Decimal::from_str(s).unwrap());
        assert_eq!(equals(&d("1.10"), &d("1.1")), Some(true));
        assert!(equivalent(&d("0.66666667"), &d("0.67")));
        assert!(!equivalent(&d("0.66666667"), &d("0.6")));
        assert_eq!(
            decimal_div(Decimal::from(1), Decimal::from(3))
                .unwrap()
                .to_string(),
            "0.33333333"
        );
        assert_eq!(
            decimal_div(Decimal::from(1), Decimal::from(2))
                .unwrap()
                .to_string(),
            "0.5"
        );
        assert_eq!(d("1.50").to_json().to_string(), "1.50");
    }

    #[test]
    fn string_equivalence_ignores_case_and_whitespace() {
        assert!(equivalent(
            &Item::string("Hello  World "),
            &Item::string("hello world")
        ));
        assert_eq!(equals(&Item::string("a"), &Item::string("A")), Some(false));
    }
}
