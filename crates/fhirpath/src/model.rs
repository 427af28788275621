//! The FHIR R4 type model as the evaluator needs it, built once from `salus_fhir::defs`.
//!
//! Every FHIR type (primitive, datatype, resource) and every backbone element path gets a
//! [`TyId`]; every non-primitive one a navigation context ([`Ctx`]) mapping FHIRPath child
//! names (`value`, `given`) to the JSON keys that may hold them (`valueQuantity`,
//! `valueString`, ..., with the `_key` of primitive extensions precomputed) and their types.
//! Navigation is then hash lookups on `&'static str`, with no string building per step.
//!
//! Must not touch: JSON values or evaluation state; it only describes types.

use salus_fhir::defs::{self, TypeKind};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::LazyLock;

/// Index into [`Model::tys`]. [`UNKNOWN`] is a JSON value without FHIR type information.
pub(crate) type TyId = u32;
pub(crate) const UNKNOWN: TyId = 0;

/// A small, fast, non-cryptographic hasher for the static `&str` keys (FxHash-style).
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

impl Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }
}

pub(crate) type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// How a FHIR primitive maps onto a FHIRPath system type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PrimKind {
    Boolean,
    Integer,
    Decimal,
    String,
    Date,
    DateTime,
    Time,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Unknown,
    Primitive,
    Complex,
    Resource,
    /// A backbone element (type name `BackboneElement` or `Element`, children per path).
    Backbone,
}

#[derive(Debug)]
pub(crate) struct TyInfo {
    /// FHIR type name (`Patient`, `HumanName`, `date`, `BackboneElement`); empty if unknown.
    pub name: &'static str,
    pub kind: Kind,
    pub ctx: Option<u32>,
    pub prim: Option<PrimKind>,
    /// Quantity or one of its specializations (Age, Duration, ...): converts to a
    /// System.Quantity.
    pub quantity: bool,
    /// Abstract `Resource`/`DomainResource`: the concrete type comes from `resourceType`.
    pub abstract_resource: bool,
    /// The type's name and its base types' names, nearest first (`Age`, `Quantity`,
    /// `Element`, `Base`): `is`, `as` and `ofType` test membership here instead of
    /// walking the definitions by name on every node.
    pub lineage: Box<[&'static str]>,
}

/// One way a child element can appear in JSON.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Variant {
    pub key: &'static str,
    /// `_key`, for primitive types (where JSON may carry extensions beside the value).
    pub ext_key: Option<&'static str>,
    pub ty: TyId,
}

#[derive(Debug)]
pub(crate) struct Child {
    pub choice: bool,
    pub variants: Vec<Variant>,
}

#[derive(Debug, Default)]
pub(crate) struct Ctx {
    pub children: FxMap<&'static str, Child>,
    /// JSON key → type, choice-typed keys (`valueQuantity`) included.
    pub keys: FxMap<&'static str, TyId>,
}

pub(crate) struct Model {
    pub tys: Vec<TyInfo>,
    pub by_name: FxMap<&'static str, TyId>,
    pub ctxs: Vec<Ctx>,
    /// Type of the `extension` children of primitives.
    pub extension_ty: TyId,
    pub string_ty: TyId,
}

static MODEL: LazyLock<Model> = LazyLock::new(build);

pub(crate) fn model() -> &'static Model {
    &MODEL
}

fn prim_kind(name: &str) -> PrimKind {
    match name {
        "boolean" => PrimKind::Boolean,
        "integer" | "unsignedInt" | "positiveInt" | "integer64" => PrimKind::Integer,
        "decimal" => PrimKind::Decimal,
        "date" => PrimKind::Date,
        "dateTime" | "instant" => PrimKind::DateTime,
        "time" => PrimKind::Time,
        _ => PrimKind::String,
    }
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn upper_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// `name` and the names of its base types, nearest first (at most 16: the definitions
/// have no cycles, the bound only guards against a corrupt table).
fn lineage(name: &'static str) -> Box<[&'static str]> {
    let mut out = vec![];
    let mut cur = Some(name).filter(|n| !n.is_empty());
    while let Some(n) = cur {
        if out.len() == 16 {
            break;
        }
        out.push(n);
        cur = defs::type_def(n).and_then(|t| t.base);
    }
    out.into_boxed_slice()
}

fn build() -> Model {
    let types = defs::types();
    let mut tys = vec![TyInfo {
        name: "",
        kind: Kind::Unknown,
        ctx: None,
        prim: None,
        quantity: false,
        abstract_resource: false,
        lineage: Box::new([]),
    }];
    let mut by_name: FxMap<&'static str, TyId> = FxMap::default();
    let mut ctxs: Vec<Ctx> = Vec::new();
    let mut ctx_by_path: FxMap<&'static str, u32> = FxMap::default();
    let mut backbone_ty: FxMap<&'static str, TyId> = FxMap::default();

    let is_quantity = |name: &str| {
        let mut cur = Some(name);
        while let Some(n) = cur {
            if n == "Quantity" {
                return true;
            }
            cur = defs::type_def(n).and_then(|t| t.base);
        }
        false
    };

    for t in types {
        let id = tys.len() as TyId;
        let (kind, prim) = match t.kind {
            TypeKind::Primitive => (Kind::Primitive, Some(prim_kind(t.name))),
            TypeKind::Complex => (Kind::Complex, None),
            TypeKind::Resource => (Kind::Resource, None),
        };
        let ctx = (kind != Kind::Primitive).then(|| {
            let c = ctxs.len() as u32;
            ctxs.push(Ctx::default());
            ctx_by_path.insert(t.name, c);
            c
        });
        tys.push(TyInfo {
            name: t.name,
            kind,
            ctx,
            prim,
            quantity: kind == Kind::Complex && is_quantity(t.name),
            abstract_resource: kind == Kind::Resource && t.is_abstract,
            lineage: lineage(t.name),
        });
        by_name.insert(t.name, id);
    }
    // Backbone elements get their own type and context, keyed by path.
    for t in types.iter().filter(|t| t.kind != TypeKind::Primitive) {
        for e in t.elements.iter().skip(1) {
            if e.content_reference.is_none() && e.is_backbone() {
                let c = ctxs.len() as u32;
                ctxs.push(Ctx::default());
                ctx_by_path.insert(e.path, c);
                let id = tys.len() as TyId;
                tys.push(TyInfo {
                    name: e.types[0].code,
                    kind: Kind::Backbone,
                    ctx: Some(c),
                    prim: None,
                    quantity: false,
                    abstract_resource: false,
                    lineage: lineage(e.types[0].code),
                });
                backbone_ty.insert(e.path, id);
            }
        }
    }
    for t in types.iter().filter(|t| t.kind != TypeKind::Primitive) {
        for e in t.elements.iter().skip(1) {
            let Some((parent, seg)) = e.path.rsplit_once('.') else {
                continue;
            };
            let Some(&pc) = ctx_by_path.get(parent) else {
                continue;
            };
            let choice = e.is_choice();
            let name: &'static str = if choice { &seg[..seg.len() - 3] } else { seg };
            let mut variants = Vec::new();
            if let Some(r) = e.content_reference {
                if let Some(&ty) = backbone_ty.get(r).or_else(|| by_name.get(r)) {
                    variants.push(Variant {
                        key: name,
                        ext_key: None,
                        ty,
                    });
                }
            } else if let Some(&ty) = backbone_ty.get(e.path) {
                variants.push(Variant {
                    key: name,
                    ext_key: None,
                    ty,
                });
            } else {
                for et in &e.types {
                    let ty = by_name.get(et.code).copied().unwrap_or(UNKNOWN);
                    let key: &'static str = if choice {
                        leak(format!("{name}{}", upper_first(et.code)))
                    } else {
                        name
                    };
                    let primitive = tys[ty as usize].kind == Kind::Primitive;
                    let ext_key = (primitive && !e.is_attribute).then(|| leak(format!("_{key}")));
                    variants.push(Variant { key, ext_key, ty });
                }
            }
            if variants.is_empty() {
                continue;
            }
            let ctx = &mut ctxs[pc as usize];
            for v in &variants {
                ctx.keys.insert(v.key, v.ty);
            }
            ctx.children.insert(name, Child { choice, variants });
        }
    }
    let extension_ty = by_name.get("Extension").copied().unwrap_or(UNKNOWN);
    let string_ty = by_name.get("string").copied().unwrap_or(UNKNOWN);
    Model {
        tys,
        by_name,
        ctxs,
        extension_ty,
        string_ty,
    }
}

impl Model {
    pub fn ty(&self, id: TyId) -> &TyInfo {
        &self.tys[id as usize]
    }

    /// A FHIR type by name.
    pub fn type_id(&self, name: &str) -> Option<TyId> {
        self.by_name.get(name).copied()
    }

    /// The concrete resource type named by a JSON object's `resourceType`.
    pub fn resource_ty(&self, json: &serde_json::Value) -> Option<TyId> {
        let rt = json.get("resourceType")?.as_str()?;
        let id = self.type_id(rt)?;
        (self.ty(id).kind == Kind::Resource).then_some(id)
    }

    /// Whether `ty` is the FHIR type `target` or derives from it (`Patient` is a
    /// `DomainResource`, `code` is a `string`, `Age` is a `Quantity`).
    pub fn is_subtype(&self, ty: TyId, target: &str) -> bool {
        self.ty(ty).lineage.contains(&target)
    }

    pub fn child(&self, ty: TyId, name: &str) -> Option<&Child> {
        let ctx = self.ty(ty).ctx?;
        self.ctxs[ctx as usize].children.get(name)
    }

    /// Type of a JSON key (choice-typed keys included) below `ty`.
    pub fn key_ty(&self, ty: TyId, key: &str) -> Option<TyId> {
        let ctx = self.ty(ty).ctx?;
        self.ctxs[ctx as usize].keys.get(key).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn navigation_tables() {
        let m = model();
        let patient = m.type_id("Patient").unwrap();
        let name = m.child(patient, "name").unwrap();
        assert!(!name.choice);
        assert_eq!(m.ty(name.variants[0].ty).name, "HumanName");
        let birth = m.child(patient, "birthDate").unwrap();
        assert_eq!(birth.variants[0].ext_key, Some("_birthDate"));
        assert_eq!(m.ty(birth.variants[0].ty).prim, Some(PrimKind::Date));
        let obs = m.type_id("Observation").unwrap();
        let value = m.child(obs, "value").unwrap();
        assert!(value.choice);
        let vq = value
            .variants
            .iter()
            .find(|v| v.key == "valueQuantity")
            .unwrap();
        assert!(m.ty(vq.ty).quantity);
        let contact = m.child(patient, "contact").unwrap().variants[0].ty;
        assert_eq!(m.ty(contact).kind, Kind::Backbone);
        assert!(m.child(contact, "name").is_some());
        let q = m.type_id("Questionnaire").unwrap();
        let item = m.child(q, "item").unwrap().variants[0].ty;
        let nested = m.child(item, "item").unwrap().variants[0].ty;
        assert_eq!(item, nested);
        assert!(m.is_subtype(patient, "Resource"));
        assert!(m.is_subtype(m.type_id("code").unwrap(), "string"));
        assert!(m.is_subtype(m.type_id("Age").unwrap(), "Quantity"));
        assert!(m.ty(m.type_id("Age").unwrap()).quantity);
        // `Element.id` and `Extension.url` are attributes: no `_id` key.
        let hn = m.type_id("HumanName").unwrap();
        assert_eq!(m.child(hn, "id").unwrap().variants[0].ext_key, None);
    }
}
