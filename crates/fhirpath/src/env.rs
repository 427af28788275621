//! The evaluation environment a caller supplies: `%variables`, custom functions, hooks for
//! resolving references and checking value-set membership, a trace sink, a fixed "now",
//! the type of a non-resource root, and strict mode.
//!
//! An [`Env`] is built once and shared (it is `Send + Sync`); variables may borrow from
//! data that outlives the evaluations (`Env<'e>`).

use crate::datetime::DateTime;
use crate::error::EvalError;
use crate::value::Item;
use serde_json::Value as Json;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

/// A custom function: `(input collection, evaluated arguments) -> result`. Arguments are
/// evaluated against the same focus as the call (not per input item).
pub type CustomFn =
    dyn for<'a> Fn(&[Item<'a>], &[Vec<Item<'a>>]) -> Result<Vec<Item<'a>>, EvalError> + Send + Sync;

/// Resolves a reference (`Patient/123`, an absolute URL, `urn:uuid:...`) that `resolve()`
/// could not find inside the resource or Bundle being evaluated.
pub type ResolverFn = dyn Fn(&str) -> Option<Arc<Json>> + Send + Sync;

/// `memberOf(valueSetUrl)` hook: given a `code`/`Coding`/`CodeableConcept` (or string) item
/// and the value set URL, `Some(answer)` or `None` when unknown.
pub type MemberOfFn =
    dyn for<'a> Fn(&Item<'a>, &str) -> Result<Option<bool>, EvalError> + Send + Sync;

/// `conformsTo(profileUrl)` hook for profiles other than the core resource definitions.
pub type ConformsToFn =
    dyn for<'a> Fn(&Item<'a>, &str) -> Result<Option<bool>, EvalError> + Send + Sync;

/// `trace(name)` sink: the name and the traced items.
pub type TraceFn = dyn for<'a> Fn(&str, &[Item<'a>]) + Send + Sync;

/// The evaluation environment. `Env::new()` is empty; use the builder methods to add to it.
#[derive(Clone, Default)]
pub struct Env<'e> {
    pub(crate) vars: HashMap<String, Vec<Item<'e>>>,
    pub(crate) functions: HashMap<String, Arc<CustomFn>>,
    pub(crate) resolver: Option<Arc<ResolverFn>>,
    pub(crate) member_of: Option<Arc<MemberOfFn>>,
    pub(crate) conforms_to: Option<Arc<ConformsToFn>>,
    pub(crate) trace: Option<Arc<TraceFn>>,
    /// Fixed value for `now()`/`today()`/`timeOfDay()` (tests, reproducible runs).
    pub(crate) now: Option<DateTime>,
    /// FHIR type of the root when it is not a resource (e.g. evaluating on a `HumanName`).
    pub(crate) root_type: Option<String>,
    pub(crate) strict: bool,
    /// Whether `resolve()` turns an unresolvable `Type/id` reference into a stub
    /// `{resourceType, id}` (so `resolve() is Patient` works without a resolver).
    pub(crate) no_stub_references: bool,
}

static EMPTY: LazyLock<Env<'static>> = LazyLock::new(Env::new);

impl std::fmt::Debug for Env<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env")
            .field("vars", &self.vars.keys().collect::<Vec<_>>())
            .field("functions", &self.functions.keys().collect::<Vec<_>>())
            .field("resolver", &self.resolver.is_some())
            .field("member_of", &self.member_of.is_some())
            .field("strict", &self.strict)
            .finish()
    }
}

impl<'e> Env<'e> {
    pub fn new() -> Self {
        Self::default()
    }

    /// A shared empty environment.
    pub fn empty() -> &'static Env<'static> {
        &EMPTY
    }

    /// Set `%name` to a collection (overrides the built-in `%resource`, `%rootResource`,
    /// `%context` when those names are used).
    pub fn with_var(mut self, name: impl Into<String>, items: Vec<Item<'e>>) -> Self {
        self.vars.insert(name.into(), items);
        self
    }

    /// Set `%name` to a string.
    pub fn with_string_var(self, name: impl Into<String>, value: impl Into<Arc<str>>) -> Self {
        self.with_var(name, vec![Item::string(value)])
    }

    /// Set `%name` to JSON (a resource becomes a typed node; scalars act as system values).
    pub fn with_json_var(self, name: impl Into<String>, json: &'e Json) -> Self {
        let item = if json.get("resourceType").is_some() {
            Item::from_resource(json)
        } else {
            Item::from_json(json)
        };
        self.with_var(name, vec![item])
    }

    /// Register a custom function callable as `name(...)` or `x.name(...)`. Built-in
    /// function names take precedence.
    pub fn with_function<F>(mut self, name: impl Into<String>, f: F) -> Self
    where
        F: for<'a> Fn(&[Item<'a>], &[Vec<Item<'a>>]) -> Result<Vec<Item<'a>>, EvalError>
            + Send
            + Sync
            + 'static,
    {
        self.functions.insert(name.into(), Arc::new(f));
        self
    }

    /// Hook for references `resolve()` cannot find in the resource or Bundle itself.
    pub fn with_resolver<F>(mut self, f: F) -> Self
    where
        F: Fn(&str) -> Option<Arc<Json>> + Send + Sync + 'static,
    {
        self.resolver = Some(Arc::new(f));
        self
    }

    /// Hook for `memberOf()`. Without one, value sets bound `required` in R4 are checked
    /// from the built-in tables and anything else gives an empty result.
    pub fn with_member_of<F>(mut self, f: F) -> Self
    where
        F: for<'a> Fn(&Item<'a>, &str) -> Result<Option<bool>, EvalError> + Send + Sync + 'static,
    {
        self.member_of = Some(Arc::new(f));
        self
    }

    /// Hook for `conformsTo()` with profiles other than core resource/type definitions.
    pub fn with_conforms_to<F>(mut self, f: F) -> Self
    where
        F: for<'a> Fn(&Item<'a>, &str) -> Result<Option<bool>, EvalError> + Send + Sync + 'static,
    {
        self.conforms_to = Some(Arc::new(f));
        self
    }

    /// Sink for `trace()`; without one, traces are dropped.
    pub fn with_trace<F>(mut self, f: F) -> Self
    where
        F: for<'a> Fn(&str, &[Item<'a>]) + Send + Sync + 'static,
    {
        self.trace = Some(Arc::new(f));
        self
    }

    /// Fix the value of `now()` (and so `today()` and `timeOfDay()`).
    pub fn with_now(mut self, now: DateTime) -> Self {
        self.now = Some(now);
        self
    }

    /// The FHIR type of the root value when it is not a resource (`HumanName`, ...).
    pub fn with_root_type(mut self, fhir_type: impl Into<String>) -> Self {
        self.root_type = Some(fhir_type.into());
        self
    }

    /// Strict mode: navigating to a name the FHIR definitions do not define for a known
    /// type is an error instead of an empty result (`Patient.name.given1`,
    /// `Encounter.name` evaluated on a Patient, `Observation.valueQuantity`).
    pub fn strict(mut self, on: bool) -> Self {
        self.strict = on;
        self
    }

    /// Whether `resolve()` may return a stub `{resourceType, id}` for a literal `Type/id`
    /// reference it cannot resolve (default: yes).
    pub fn stub_references(mut self, on: bool) -> Self {
        self.no_stub_references = !on;
        self
    }
}
