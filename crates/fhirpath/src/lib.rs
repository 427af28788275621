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
//! Items borrow from the resource and the environment (`evaluate<'a>(&self, &'a Value,
//! &'a Env<'a>) -> Result<Vec<Item<'a>>, EvalError>`); [`Item`] exposes the JSON ([`Item::as_json`]), typed
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
//!   cannot decide are empty. When only one side has a zone, the other is taken as
//!   anywhere within ±14 hours; a date equals no date-time that has a zone.
//! - Where a Boolean is expected, a single Integer, Decimal or String converts as
//!   `toBoolean()` does (`'foo'` gives empty, `0` false); any other single item is true.
//! - `=` between collections of different sizes is empty (as in the official suite).
//! - Operator precedence, loosest first: `implies`; `or` `xor`; `and`; `in` `contains`;
//!   `=` `~` `!=` `!~`; `is` `as`; `<` `>` `<=` `>=`; `|`; `+` `-` `&`; `*` `/` `div`
//!   `mod`; unary `+` `-`; `.` and `[]`. The place of `is`/`as` follows the reference
//!   implementation and the official suite (`1 > 2 is Boolean` is `(1 > 2) is Boolean`).
//! - Strict mode ([`Env::strict`]) and [`Expr::check`] validate paths against the type
//!   model statically (`(Observation.value as Period).unit` is an error).
//! - Nesting is limited to 128 levels, and loops (`repeat`, `descendants`, `aggregate`) to
//!   200,000 items, so no expression can exhaust the stack or run away.
//! - `resolve()` finds contained resources, Bundle entries, then asks the resolver hook, and
//!   finally returns a `{resourceType, id}` stub for a literal `Type/id` reference (so
//!   `where(resolve() is Patient)` works for search indexing without a store lookup).
//!
//! # Conformance and speed
//!
//! `tests/official.rs` runs the official FHIRPath R4 suite (709 of 711 pass; the two
//! failures are errors in the suite), `tests/search_params.rs` evaluates every R4
//! SearchParameter expression on every R4 example, and `examples/bench.rs` times
//! evaluations (`Patient.name.where(use='official').family` takes about 0.4 µs in a
//! release build).

mod ast;
mod boundary;
mod check;
pub mod datetime;
mod env;
mod error;
mod eval;
mod functions;
mod lexer;
mod model;
mod parser;
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
#[derive(Debug, Clone)]
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
        if env.strict {
            let types: Vec<model::TyId> = focus
                .iter()
                .map(|i| i.as_node().map_or(model::UNKNOWN, |n| n.ty))
                .collect();
            check::check(&self.root, &types)?;
        }
        let ev = eval::Evaluator::new(env, focus, root_resource.map(JsonRef::Borrowed));
        let scope = eval::Scope {
            this: focus,
            index: None,
            total: None,
        };
        ev.eval(&self.root, &scope)
    }

    /// Check the expression statically against a FHIR type (`Patient`, `HumanName`):
    /// report element names the type model does not define along the paths it can follow
    /// (`(Observation.value as Period).unit`), and ordered functions (`first()`, `[0]`,
    /// ...) applied to `children()`/`descendants()`. Branches whose type cannot be known
    /// (variables, most function results) are not checked. Strict mode runs this before
    /// every evaluation.
    pub fn check(&self, fhir_type: &str) -> Result<(), EvalError> {
        let m = model::model();
        let ty = m
            .type_id(fhir_type)
            .ok_or_else(|| EvalError::Argument(format!("unknown FHIR type '{fhir_type}'")))?;
        check::check(&self.root, &[ty])
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
