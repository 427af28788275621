//! FHIRPath for Salus: a parser and evaluator of FHIRPath N1
//! (<http://hl7.org/fhirpath/N1/>) with the FHIR R4 additions
//! (<http://hl7.org/fhir/R4/fhirpath.html>), evaluating over FHIR resources held as
//! `serde_json::Value`.
//!
//! Owns: the FHIRPath language (lexer, parser, AST), its type system over the R4 definitions
//! from `salus-fhir`, the function library, and the UCUM subset needed for quantities.
//! Must not touch: storage, HTTP, search-index layout; callers (search indexing,
//! validation invariants, SQL-on-FHIR views, de-identification) decide what to do with the
//! results.
//!
//! # Use
//!
//! Parse once, evaluate many times; an [`Expr`] is `Send + Sync`:
//!
//! ```
//! use salus_fhirpath::{parse, Env};
//! let expr = parse("Patient.name.where(use = 'official').family").unwrap();
//! let patient = serde_json::json!({
//!     "resourceType": "Patient",
//!     "name": [{"use": "official", "family": "Chalmers"}, {"use": "usual", "given": ["Jim"]}]
//! });
//! let result = expr.evaluate(&patient, Env::empty()).unwrap();
//! assert_eq!(result.len(), 1);
//! assert_eq!(result[0].as_str(), Some("Chalmers"));
//! assert_eq!(result[0].fhir_type(), Some("string"));
//! ```
//!
//! Items borrow from the resource; [`Item`] exposes the JSON ([`Item::as_json`]), typed
//! accessors (`as_str`, `as_bool`, `as_integer`, `as_decimal`, `as_date_time`, `as_time`,
//! `as_quantity`), the FHIR type ([`Item::fhir_type`]) and [`Item::to_json`].
//!
//! An [`Env`] supplies `%variables`, custom functions, a reference resolver for
//! `resolve()`, a `memberOf()` hook, a trace sink, a fixed `now()` and strict mode:
//!
//! ```
//! use salus_fhirpath::{parse, Env, Item};
//! let env = Env::new()
//!     .with_string_var("system", "http://loinc.org")
//!     .with_function("double", |input, _args| {
//!         Ok(input.iter().filter_map(|i| i.as_integer()).map(|n| Item::integer(n * 2)).collect())
//!     });
//! let obs = serde_json::json!({"resourceType": "Observation",
//!     "code": {"coding": [{"system": "http://loinc.org", "code": "1-8"}]}});
//! let r = parse("code.coding.where(system = %system).count().double()").unwrap()
//!     .evaluate(&obs, &env).unwrap();
//! assert_eq!(r[0].as_integer(), Some(2));
//! ```
//!
//! # Semantics worth knowing
//!
//! - Nodes carry their FHIR type from the definitions (`Patient.birthDate` is `date`,
//!   `Observation.value` through `valueQuantity` is `Quantity`), so `is`, `as`, `ofType()`
//!   and `type()` work with the `FHIR` and `System` namespaces; choice elements are
//!   navigated by their base name. In the default (lenient) mode an unknown element name
//!   gives an empty result; [`Env::strict`] makes it an error.
//! - Decimals keep their precision (`1.50`); division rounds to 8 decimal places when the
//!   quotient does not terminate earlier (as the reference implementation does).
//! - Dates, date-times and times keep partial precision; comparisons that the precision
//!   cannot decide are empty.
//! - `is`/`as` bind looser than `<`/`>` and `|` but tighter than `=` (see
//!   [`parser`](crate::parser) for the table).
//! - `resolve()` finds contained resources, Bundle entries, then asks the resolver hook, and
//!   finally returns a `{resourceType, id}` stub for a literal `Type/id` reference (so
//!   `where(resolve() is Patient)` works for search indexing without a store lookup).

mod ast;
pub mod datetime;
mod env;
mod error;
mod eval;
mod functions;
mod lexer;
mod model;
pub mod parser;
pub mod quantity;
mod value;

pub use datetime::{CalendarUnit, DateTime, Precision, Time};
pub use env::{ConformsToFn, CustomFn, Env, MemberOfFn, ResolverFn, TraceFn};
pub use error::{Error, EvalError, ParseError};
pub use quantity::Quantity;
pub use rust_decimal::Decimal;
pub use value::{Item, SystemType, TypeInfo};

use serde_json::Value as Json;
use value::JsonRef;

/// A compiled FHIRPath expression: parse once, evaluate many times, share across threads.
#[derive(Debug)]
pub struct Expr {
    root: ast::Node,
    source: Box<str>,
}

/// Parse an expression.
pub fn parse(src: &str) -> Result<Expr, ParseError> {
    Expr::parse(src)
}

/// Parse and evaluate in one call (for one-off use; prefer [`parse`] + [`Expr::evaluate`]).
pub fn evaluate<'a>(
    src: &str,
    resource: &'a Json,
    env: &'a Env<'a>,
) -> Result<Vec<Item<'a>>, Error> {
    Ok(parse(src)?.evaluate(resource, env)?)
}

impl Expr {
    /// Parse an expression.
    pub fn parse(src: &str) -> Result<Self, ParseError> {
        Ok(Self {
            root: parser::parse(src)?,
            source: src.into(),
        })
    }

    /// The source text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluate against a resource (or, with [`Env::with_root_type`], any FHIR value). The
    /// resource is `%context`, `%resource` and `%rootResource`, and where `resolve()` looks
    /// for contained resources and Bundle entries.
    pub fn evaluate<'a>(
        &self,
        resource: &'a Json,
        env: &'a Env<'a>,
    ) -> Result<Vec<Item<'a>>, EvalError> {
        let root = match &env.root_type {
            Some(t) if resource.get("resourceType").is_none() => Item::from_json_typed(resource, t),
            _ if resource.get("resourceType").is_some() => Item::from_resource(resource),
            _ => Item::from_json(resource),
        };
        self.evaluate_on(&[root], Some(resource), env)
    }

    /// Evaluate with an explicit focus collection (`$this` at the top level, and
    /// `%context`), e.g. the rows of a SQL-on-FHIR `forEach`, or a composite search
    /// parameter's component. `root_resource` is where `resolve()` searches.
    pub fn evaluate_on<'a>(
        &self,
        focus: &[Item<'a>],
        root_resource: Option<&'a Json>,
        env: &'a Env<'a>,
    ) -> Result<Vec<Item<'a>>, EvalError> {
        let ev = eval::Evaluator::new(env, focus.to_vec(), root_resource.map(JsonRef::Borrowed));
        let scope = eval::Scope {
            this: focus,
            index: None,
            total: None,
        };
        ev.eval(&self.root, &scope)
    }

    /// Evaluate as a boolean condition (an invariant, a `where` filter): `Some(b)` for a
    /// single Boolean (or a single item counting as true), `None` for an empty result.
    pub fn evaluate_bool(&self, resource: &Json, env: &Env<'_>) -> Result<Option<bool>, EvalError> {
        let items = self.evaluate(resource, env)?;
        eval::bool3(&items, "condition")
    }
}

#[cfg(test)]
mod tests;
