//! Compiling a ViewDefinition (JSON) into a [`View`]: validation, column layout, parsed
//! FHIRPath, and the evaluation environment (constants and view functions).
//!
//! What is checked, following the ViewDefinition structure and the "Validating a
//! ViewDefinition" steps of the implementer guidance:
//! - `resource` is present and names a FHIR resource type; `select` is a non-empty array.
//! - Every `select` is an object; `forEach`/`forEachOrNull` are FHIRPath strings, at most
//!   one of them (and not together with `repeat`); `repeat` is a non-empty array of paths.
//! - Every `column` has a `name` usable as a database column (`^[A-Za-z][A-Za-z0-9_]*$`)
//!   and a `path`; names are unique across the whole view; `collection` is a boolean.
//! - The branches of a `unionAll` have the same column names, in the same order (and the
//!   same types where both declare one).
//! - `where.path` and `constant` entries are well formed; every `%name` refers to a
//!   constant or to a variable the runner defines (`%resource`, `%rowIndex`, ...).
//! - Every expression parses, and (unless compiled with [`View::compile_lenient`]) paths
//!   are checked against the FHIR type model where the type of their focus is known
//!   (`Patient.name.given1` is rejected); `repeat` paths, and what lies below them, are not.

use crate::error::ViewError;
use crate::functions;
use crate::scan::scan;
use salus_fhirpath::{parse, Env, Expr, Item};
use serde_json::{Map, Value};
use std::collections::HashSet;

/// One output column of a view, known before any resource is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// The column name (unique within the view).
    pub name: String,
    /// The declared type (`string`, `integer`, `dateTime`, ...; a FHIR type name or URI),
    /// when the ViewDefinition gives one. Later layers map it to storage types.
    pub type_name: Option<String>,
    /// Whether the column holds an array of values (`collection: true`) rather than at
    /// most one value.
    pub collection: bool,
    /// `description` from the ViewDefinition, if any.
    pub description: Option<String>,
}

/// A parsed FHIRPath expression with where it came from (for error messages).
#[derive(Debug, Clone)]
pub(crate) struct Compiled {
    pub expr: Expr,
    /// Where in the ViewDefinition the expression is.
    pub at: String,
    /// The source as parsed (after [`crate::scan`] rewrote it).
    pub text: String,
}

/// How a select chooses its focus (ViewDefinition `select.forEach` and friends).
#[derive(Debug, Clone)]
pub(crate) enum Iterate {
    /// The focus of the parent.
    Parent,
    /// One focus per item of the path's result; no rows when it is empty.
    ForEach(Compiled),
    /// As `ForEach`, but a row of nulls when the result is empty.
    ForEachOrNull(Compiled),
    /// Every node reached by applying the paths recursively (depth first, not including
    /// the starting node).
    Repeat(Vec<Compiled>),
}

#[derive(Debug, Clone)]
pub(crate) struct ColumnExpr {
    pub path: Compiled,
    pub collection: bool,
}

/// A compiled `select`: its own columns first, then nested selects, then `unionAll`, which
/// is also the order of its columns in the output.
#[derive(Debug, Clone)]
pub(crate) struct Select {
    pub iterate: Iterate,
    pub columns: Vec<ColumnExpr>,
    pub selects: Vec<Select>,
    pub union: Vec<Select>,
    /// Number of output columns this select produces (its own and its children's).
    pub width: usize,
    /// Whether `%rowIndex` appears in this select or below it (so iterating must set it).
    pub row_index: bool,
}

/// Variables whose value changes while a view runs.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Dynamic {
    /// `%rowIndex` is used: the environment is extended per iteration.
    pub row_index: bool,
    /// `%resource`/`%rootResource` is used: the environment is extended per resource.
    pub resource: bool,
}

/// A compiled ViewDefinition. Compile once with [`View::compile`], then apply to any number
/// of resources (a `View` is `Send + Sync`).
#[derive(Debug, Clone)]
pub struct View {
    pub(crate) name: Option<String>,
    pub(crate) resource: String,
    pub(crate) columns: Vec<Column>,
    pub(crate) selects: Vec<Select>,
    pub(crate) wheres: Vec<Compiled>,
    pub(crate) env: Env<'static>,
    pub(crate) dynamic: Dynamic,
}

/// How deeply `select`/`unionAll` may nest.
const MAX_SELECT_DEPTH: usize = 64;

/// Names the runner defines besides the view's constants.
fn builtin_variable(name: &str) -> bool {
    matches!(
        name,
        "resource" | "rootResource" | "context" | "rowIndex" | "ucum" | "sct" | "loinc"
    ) || name.starts_with("vs-")
        || name.starts_with("ext-")
}

/// Whether the FHIR R4 definitions know `name` as a resource type.
fn is_resource_type(name: &str) -> bool {
    let probe = serde_json::json!({ "resourceType": name });
    parse("$this is FHIR.Resource")
        .ok()
        .and_then(|e| e.evaluate_bool(&probe, Env::empty()).ok().flatten())
        == Some(true)
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// What is known statically about the focus of an expression, for checking its paths
/// against the FHIR type model.
#[derive(Debug, Clone)]
enum Focus {
    /// The resource itself.
    Resource,
    /// The result of this FHIRPath text evaluated on the resource (a `forEach` path).
    Path(String),
    /// Not known (below a `repeat`): paths are not checked.
    Unknown,
}

impl Focus {
    /// The focus of a select whose `forEach` path is `path`.
    fn each(&self, path: &str) -> Focus {
        match self {
            Focus::Resource => Focus::Path(path.to_string()),
            Focus::Path(c) => Focus::Path(format!("({c}).select({path})")),
            Focus::Unknown => Focus::Unknown,
        }
    }
}

/// State while compiling one view.
struct Ctx {
    resource: String,
    constants: HashSet<String>,
    dynamic: Dynamic,
    /// Column names claimed so far.
    names: HashSet<String>,
    /// Whether paths are checked against the FHIR type model.
    check_paths: bool,
    /// How many expressions so far refer to `%rowIndex`.
    row_index_refs: usize,
    /// Nesting of the select being compiled (bounded, so no definition exhausts the stack).
    depth: usize,
}

impl Ctx {
    /// Compile the expression at `at`, whose focus is `focus`.
    fn expr(&mut self, at: &str, v: &Value, focus: &Focus) -> Result<Compiled, ViewError> {
        let src = v
            .as_str()
            .ok_or_else(|| ViewError::definition(at, "must be a FHIRPath string"))?;
        if src.trim().is_empty() {
            return Err(ViewError::definition(at, "is an empty expression"));
        }
        let scanned = scan(src);
        for var in &scanned.variables {
            if self.constants.contains(var) {
                continue;
            }
            if !builtin_variable(var) {
                return Err(ViewError::definition(
                    at,
                    format!("'%{var}' is not a constant of this view"),
                ));
            }
            match var.as_str() {
                "rowIndex" => {
                    self.dynamic.row_index = true;
                    self.row_index_refs += 1;
                }
                "resource" | "rootResource" => self.dynamic.resource = true,
                _ => {}
            }
        }
        let text = scanned.rewrite(src);
        let expr = parse(&text)
            .map_err(|e| ViewError::definition(at, format!("invalid FHIRPath '{src}': {e}")))?;
        let checked = match focus {
            _ if !self.check_paths => None,
            Focus::Resource => Some(expr.clone()),
            Focus::Path(c) => parse(&format!("({c}).select({text})")).ok(),
            Focus::Unknown => None,
        };
        if let Some(e) = checked {
            e.check(&self.resource)
                .map_err(|e| ViewError::definition(at, format!("invalid path '{src}': {e}")))?;
        }
        Ok(Compiled {
            expr,
            at: at.to_string(),
            text: text.into_owned(),
        })
    }

    fn select(
        &mut self,
        at: &str,
        v: &Value,
        focus: &Focus,
        out: &mut Vec<Column>,
    ) -> Result<Select, ViewError> {
        if self.depth >= MAX_SELECT_DEPTH {
            return Err(ViewError::definition(
                at,
                format!("selects nest more than {MAX_SELECT_DEPTH} levels deep"),
            ));
        }
        self.depth += 1;
        let r = self.select_inner(at, v, focus, out);
        self.depth -= 1;
        r
    }

    fn select_inner(
        &mut self,
        at: &str,
        v: &Value,
        focus: &Focus,
        out: &mut Vec<Column>,
    ) -> Result<Select, ViewError> {
        let obj = v
            .as_object()
            .ok_or_else(|| ViewError::definition(at, "a select must be an object"))?;
        let for_each = obj.get("forEach");
        let or_null = obj.get("forEachOrNull");
        let repeat = obj.get("repeat");
        if [for_each, or_null, repeat].iter().flatten().count() > 1 {
            return Err(ViewError::definition(
                at,
                "only one of forEach, forEachOrNull and repeat may be given",
            ));
        }
        let (iterate, inner) = if let Some(p) = for_each {
            let c = self.expr(&format!("{at}.forEach"), p, focus)?;
            let inner = focus.each(&c.text);
            (Iterate::ForEach(c), inner)
        } else if let Some(p) = or_null {
            let c = self.expr(&format!("{at}.forEachOrNull"), p, focus)?;
            let inner = focus.each(&c.text);
            (Iterate::ForEachOrNull(c), inner)
        } else if let Some(r) = repeat {
            let paths = r.as_array().filter(|a| !a.is_empty()).ok_or_else(|| {
                ViewError::definition(
                    format!("{at}.repeat"),
                    "must be a non-empty array of FHIRPath strings",
                )
            })?;
            let mut compiled = Vec::with_capacity(paths.len());
            for (i, p) in paths.iter().enumerate() {
                // A repeat path is applied to every node it reaches, of types that vary
                // by level: it is evaluated leniently, so an element that none of them has
                // gives no rows (as the suite's repeat.json "empty expression" expects).
                compiled.push(self.expr(&format!("{at}.repeat[{i}]"), p, &Focus::Unknown)?);
            }
            // The type of a recursive traversal is not followed statically.
            (Iterate::Repeat(compiled), Focus::Unknown)
        } else {
            (Iterate::Parent, focus.clone())
        };
        let start = out.len();
        let refs_before = self.row_index_refs;

        let mut columns = Vec::new();
        if let Some(cols) = obj.get("column") {
            let cols = cols
                .as_array()
                .ok_or_else(|| ViewError::definition(format!("{at}.column"), "must be an array"))?;
            for (i, c) in cols.iter().enumerate() {
                let (column, expr) = self.column(&format!("{at}.column[{i}]"), c, &inner)?;
                out.push(column);
                columns.push(expr);
            }
        }

        let mut selects = Vec::new();
        if let Some(s) = obj.get("select") {
            let list = s
                .as_array()
                .ok_or_else(|| ViewError::definition(format!("{at}.select"), "must be an array"))?;
            for (i, s) in list.iter().enumerate() {
                selects.push(self.select(&format!("{at}.select[{i}]"), s, &inner, out)?);
            }
        }

        let mut union = Vec::new();
        if let Some(u) = obj.get("unionAll") {
            let list = u.as_array().filter(|a| !a.is_empty()).ok_or_else(|| {
                ViewError::definition(format!("{at}.unionAll"), "must be a non-empty array")
            })?;
            // Branches share their columns: each is checked against the names claimed
            // before the unionAll, and the first branch's names are kept.
            let before = self.names.clone();
            let mut first: Option<(Vec<Column>, HashSet<String>)> = None;
            for (i, branch) in list.iter().enumerate() {
                let bat = format!("{at}.unionAll[{i}]");
                self.names = before.clone();
                let mut cols = Vec::new();
                union.push(self.select(&bat, branch, &inner, &mut cols)?);
                match &first {
                    None => first = Some((cols, self.names.clone())),
                    Some((f, _)) => union_compatible(&bat, f, &cols)?,
                }
            }
            if let Some((cols, names)) = first {
                out.extend(cols);
                self.names = names;
            }
        }

        Ok(Select {
            iterate,
            columns,
            selects,
            union,
            width: out.len() - start,
            row_index: self.row_index_refs > refs_before,
        })
    }

    fn column(
        &mut self,
        at: &str,
        v: &Value,
        focus: &Focus,
    ) -> Result<(Column, ColumnExpr), ViewError> {
        let obj = v
            .as_object()
            .ok_or_else(|| ViewError::definition(at, "a column must be an object"))?;
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| ViewError::definition(at, "a column needs a string 'name'"))?;
        if !valid_name(name) {
            return Err(ViewError::definition(
                at,
                format!("column name '{name}' must match ^[A-Za-z][A-Za-z0-9_]*$"),
            ));
        }
        let path = obj
            .get("path")
            .ok_or_else(|| ViewError::definition(at, "a column needs a 'path'"))?;
        let path = self.expr(&format!("{at}.path"), path, focus)?;
        let collection = match obj.get("collection") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(ViewError::definition(
                    format!("{at}.collection"),
                    "must be a boolean",
                ))
            }
        };
        let opt_str = |key: &str| -> Result<Option<String>, ViewError> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(ViewError::definition(
                    format!("{at}.{key}"),
                    "must be a string",
                )),
            }
        };
        let column = Column {
            name: name.to_string(),
            type_name: opt_str("type")?,
            collection,
            description: opt_str("description")?,
        };
        if !self.names.insert(name.to_string()) {
            return Err(ViewError::definition(
                at,
                format!("column '{name}' is defined more than once"),
            ));
        }
        Ok((column, ColumnExpr { path, collection }))
    }
}

fn union_compatible(at: &str, first: &[Column], other: &[Column]) -> Result<(), ViewError> {
    let names = |c: &[Column]| c.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
    if names(first) != names(other) {
        return Err(ViewError::definition(
            at,
            format!(
                "unionAll branches must have the same columns in the same order: [{}] vs [{}]",
                names(first).join(", "),
                names(other).join(", ")
            ),
        ));
    }
    for (a, b) in first.iter().zip(other) {
        if let (Some(x), Some(y)) = (&a.type_name, &b.type_name) {
            if x != y {
                return Err(ViewError::definition(
                    at,
                    format!(
                        "unionAll column '{}' has type {x} in one branch and {y} in another",
                        a.name
                    ),
                ));
            }
        }
        if a.collection != b.collection {
            return Err(ViewError::definition(
                at,
                format!(
                    "unionAll column '{}' is a collection in only some branches",
                    a.name
                ),
            ));
        }
    }
    Ok(())
}

fn constants(view: &Map<String, Value>) -> Result<Vec<(String, Item<'static>)>, ViewError> {
    let Some(list) = view.get("constant") else {
        return Ok(Vec::new());
    };
    let list = list
        .as_array()
        .ok_or_else(|| ViewError::definition("constant", "must be an array"))?;
    let mut out: Vec<(String, Item<'static>)> = Vec::with_capacity(list.len());
    for (i, c) in list.iter().enumerate() {
        let at = format!("constant[{i}]");
        let obj = c
            .as_object()
            .ok_or_else(|| ViewError::definition(&at, "a constant must be an object"))?;
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| ViewError::definition(&at, "a constant needs a string 'name'"))?;
        if !valid_name(name) {
            return Err(ViewError::definition(
                &at,
                format!("constant name '{name}' must match ^[A-Za-z][A-Za-z0-9_]*$"),
            ));
        }
        if builtin_variable(name) || out.iter().any(|(n, _)| n == name) {
            return Err(ViewError::definition(
                &at,
                format!("constant '{name}' is defined more than once or shadows a built-in"),
            ));
        }
        let values: Vec<(&String, &Value)> =
            obj.iter().filter(|(k, _)| k.starts_with("value")).collect();
        let [(key, value)] = values.as_slice() else {
            return Err(ViewError::definition(
                &at,
                format!("constant '{name}' needs exactly one value[x]"),
            ));
        };
        out.push((
            name.to_string(),
            functions::constant_value(&at, key, value)?,
        ));
    }
    Ok(out)
}

impl View {
    /// Validate and compile a ViewDefinition. Paths are also checked against the FHIR R4
    /// type model where their focus type is known, so `name.given1` is an error rather than
    /// a column that is always null.
    pub fn compile(definition: &Value) -> Result<View, ViewError> {
        Self::compile_inner(definition, true)
    }

    /// Like [`View::compile`], without checking paths against the type model (for data with
    /// elements that R4 does not define, such as extensions-as-elements from later
    /// versions): an unknown element simply gives no value.
    pub fn compile_lenient(definition: &Value) -> Result<View, ViewError> {
        Self::compile_inner(definition, false)
    }

    fn compile_inner(definition: &Value, check_paths: bool) -> Result<View, ViewError> {
        let obj = definition
            .as_object()
            .ok_or_else(|| ViewError::definition("(root)", "a ViewDefinition must be an object"))?;
        let resource = match obj.get("resource") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(_) => return Err(ViewError::definition("resource", "must be a string")),
            None => return Err(ViewError::definition("resource", "is required")),
        };
        if !is_resource_type(&resource) {
            return Err(ViewError::definition(
                "resource",
                format!("'{resource}' is not a FHIR resource type"),
            ));
        }
        let name = match obj.get("name") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(ViewError::definition("name", "must be a string")),
        };
        let consts = constants(obj)?;
        let mut ctx = Ctx {
            resource: resource.clone(),
            constants: consts.iter().map(|(n, _)| n.clone()).collect(),
            dynamic: Dynamic::default(),
            names: HashSet::new(),
            check_paths,
            row_index_refs: 0,
            depth: 0,
        };

        let list = match obj.get("select") {
            Some(Value::Array(a)) if !a.is_empty() => a,
            Some(_) => return Err(ViewError::definition("select", "must be a non-empty array")),
            None => return Err(ViewError::definition("select", "is required")),
        };
        let mut columns = Vec::new();
        let mut selects = Vec::with_capacity(list.len());
        for (i, s) in list.iter().enumerate() {
            selects.push(ctx.select(&format!("select[{i}]"), s, &Focus::Resource, &mut columns)?);
        }

        let mut wheres = Vec::new();
        if let Some(w) = obj.get("where") {
            let list = w
                .as_array()
                .ok_or_else(|| ViewError::definition("where", "must be an array"))?;
            for (i, w) in list.iter().enumerate() {
                let at = format!("where[{i}]");
                let path = w
                    .as_object()
                    .and_then(|o| o.get("path"))
                    .ok_or_else(|| ViewError::definition(&at, "needs a 'path'"))?;
                wheres.push(ctx.expr(&format!("{at}.path"), path, &Focus::Resource)?);
            }
        }

        let mut env = functions::register(Env::new());
        for (n, item) in consts {
            env = env.with_var(n, vec![item]);
        }
        if ctx.dynamic.row_index {
            env = env.with_var("rowIndex", vec![Item::integer(0)]);
        }
        Ok(View {
            name,
            resource,
            columns,
            selects,
            wheres,
            env,
            dynamic: ctx.dynamic,
        })
    }

    /// The output columns, in order; every row has one value per column.
    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// The resource type the view applies to.
    pub fn resource_type(&self) -> &str {
        &self.resource
    }

    /// The view's `name`, if the ViewDefinition has one.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
}
