//! Static checking of an expression against the FHIR type model (used by strict mode and
//! by [`Expr::check`](crate::Expr::check)).
//!
//! Infers, where it can, the possible FHIR types of each path step starting from a root
//! type, and reports a name that is an element of none of them
//! (`(Observation.value as Period).unit`, `Patient.name.given1`), and an ordered function
//! (`first()`, `skip()`, `[0]`, ...) applied to a collection whose order is undefined
//! (`children()`, `descendants()`). Where a type cannot be inferred (variables, function
//! results, untyped JSON) checking stops for that branch, so it never rejects what it
//! cannot see.

use crate::ast::{Call, Func, Ident, Node, TypeSpec};
use crate::error::EvalError;
use crate::model::{model, Kind, TyId, UNKNOWN};

/// What is statically known about a collection.
#[derive(Debug, Clone, Default)]
struct St {
    /// The possible FHIR types; `None` when unknown.
    tys: Option<Vec<TyId>>,
    /// Produced by `children()`/`descendants()`: its order is undefined.
    unordered: bool,
}

impl St {
    fn unknown() -> Self {
        Self::default()
    }

    fn of(tys: Vec<TyId>) -> Self {
        Self {
            tys: Some(tys),
            unordered: false,
        }
    }
}

/// Check `node` with `$this` of the given types.
pub(crate) fn check(node: &Node, root: &[TyId]) -> Result<(), EvalError> {
    let this = if root.is_empty() || root.contains(&UNKNOWN) {
        St::unknown()
    } else {
        St::of(root.to_vec())
    };
    infer(node, &this).map(|_| ())
}

fn spec_type(spec: &TypeSpec) -> Option<TyId> {
    match spec {
        TypeSpec::Fhir(f) | TypeSpec::Any { fhir: Some(f), .. } => model().type_id(f),
        _ => None,
    }
}

fn member(s: &St, id: &Ident) -> Result<St, EvalError> {
    let Some(tys) = &s.tys else {
        return Ok(St::unknown());
    };
    let m = model();
    let mut out: Vec<TyId> = Vec::new();
    let mut add = |t: TyId| {
        if !out.contains(&t) {
            out.push(t);
        }
    };
    for &ty in tys {
        let info = m.ty(ty);
        match info.kind {
            Kind::Unknown => return Ok(St::unknown()),
            Kind::Primitive => match &*id.name {
                "extension" => add(m.extension_ty),
                "id" => add(m.string_ty),
                _ => {}
            },
            _ => {
                if let Some(child) = m.child(ty, &id.name) {
                    for v in &child.variants {
                        if v.ty == UNKNOWN || m.ty(v.ty).abstract_resource {
                            return Ok(St::unknown());
                        }
                        add(v.ty);
                    }
                }
            }
        }
        if let Some(TypeSpec::Fhir(f)) = &id.type_filter {
            if m.is_subtype(ty, f) {
                add(ty);
            }
        }
    }
    if out.is_empty() {
        let names: Vec<&str> = tys.iter().map(|t| m.ty(*t).name).collect();
        return Err(EvalError::UnknownElement {
            type_name: names.join(" | "),
            name: id.name.to_string(),
        });
    }
    Ok(St {
        tys: Some(out),
        unordered: s.unordered,
    })
}

fn ordered(s: &St, what: &str) -> Result<(), EvalError> {
    if s.unordered {
        return Err(EvalError::Argument(format!(
            "{what} needs an ordered collection, and the order of children()/descendants() is undefined"
        )));
    }
    Ok(())
}

fn infer(node: &Node, this: &St) -> Result<St, EvalError> {
    Ok(match node {
        Node::Literal(_) | Node::Empty | Node::Var(_) | Node::IndexVar | Node::Total => {
            St::unknown()
        }
        Node::This => this.clone(),
        Node::Ident(id) => member(this, id)?,
        Node::Member(t, id) => member(&infer(t, this)?, id)?,
        Node::Index(t, i) => {
            infer(i, this)?;
            let s = infer(t, this)?;
            ordered(&s, "an indexer")?;
            s
        }
        Node::Neg(e) | Node::Pos(e) => {
            infer(e, this)?;
            St::unknown()
        }
        Node::Binary(_, l, r) => {
            infer(l, this)?;
            infer(r, this)?;
            St::unknown()
        }
        Node::Is(e, _) => {
            infer(e, this)?;
            St::unknown()
        }
        Node::As(e, spec) => {
            let s = infer(e, this)?;
            match spec_type(spec) {
                Some(t) => St {
                    tys: Some(vec![t]),
                    unordered: s.unordered,
                },
                None => St::unknown(),
            }
        }
        Node::Call(c) => call(c, this)?,
    })
}

fn call(c: &Call, this: &St) -> Result<St, EvalError> {
    let target = match &c.target {
        Some(t) => infer(t, this)?,
        None => this.clone(),
    };
    // The per-item view of the input, for lambda arguments.
    let item = St {
        tys: target.tys.clone(),
        unordered: false,
    };
    let lambda = matches!(
        c.func,
        Func::Where | Func::Select | Func::All | Func::Exists | Func::Repeat | Func::Aggregate
    ) || (c.func == Func::Trace && c.args.len() > 1);
    for (i, a) in c.args.iter().enumerate() {
        if lambda && (c.func != Func::Trace || i == 1) && !(c.func == Func::Aggregate && i == 1) {
            infer(a, &item)?;
        } else {
            infer(a, this)?;
        }
    }
    Ok(match c.func {
        Func::Where | Func::Distinct | Func::Trace => target,
        Func::Select => match c.args.first() {
            Some(a) => {
                let s = infer(a, &item)?;
                St {
                    tys: s.tys,
                    unordered: target.unordered,
                }
            }
            None => St::unknown(),
        },
        Func::First | Func::Last | Func::Tail | Func::Skip | Func::Take | Func::Single => {
            ordered(&target, &format!("{}()", c.name))?;
            target
        }
        Func::OfType | Func::As => match c.type_arg.as_ref().and_then(spec_type) {
            Some(t) => St {
                tys: Some(vec![t]),
                unordered: target.unordered,
            },
            None => St::unknown(),
        },
        Func::Extension => St::of(vec![model().extension_ty]),
        Func::Children | Func::Descendants => St {
            tys: None,
            unordered: true,
        },
        _ => St::unknown(),
    })
}
