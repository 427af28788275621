//! Applying a compiled [`View`] to one resource (SQL-on-FHIR v2, "Processing Algorithm" of
//! the implementer guidance, and the functional model's `column`/`forEach`/`select`/
//! `union`):
//!
//! 1. A resource of another type gives no rows; one for which any `where` path is not
//!    `true` gives no rows (a `where` must give a Boolean or nothing).
//! 2. Each `select` gives a set of partial rows for its focus: one row of its own columns,
//!    cross-joined with the rows of each nested `select`, cross-joined with the
//!    concatenated rows of its `unionAll` branches. `forEach` repeats this per item of its
//!    path (no rows when there is none); `forEachOrNull` gives a row of nulls instead of
//!    nothing; `repeat` iterates over every node reached recursively, depth first.
//! 3. The top-level selects are cross-joined in order.
//!
//! `%rowIndex` is the 0-based index of the focus within the nearest enclosing `forEach`,
//! `forEachOrNull` or `repeat` (0 outside of one, and for the row `forEachOrNull` gives
//! when there is no item).

use crate::compile::{ColumnExpr, Compiled, Iterate, Select, View};
use crate::error::ViewError;
use salus_fhirpath::{Env, Item};
use serde_json::{Map, Value};
use std::borrow::Borrow;

/// One output row: one value per [`View::columns`] entry, in order (`null` for no value; an
/// array for a collection column).
pub type Row = Vec<Value>;

/// Deepest nesting, and most nodes, a `repeat` may reach on one resource.
const MAX_REPEAT_DEPTH: usize = 256;
const MAX_REPEAT_NODES: usize = 100_000;

struct Run<'v, 'r> {
    view: &'v View,
    /// The resource being processed, named in error messages.
    current: &'r Value,
}

impl View {
    /// The rows of one resource (none when it is of another type or filtered out).
    pub fn rows(&self, resource: &Value) -> Result<Vec<Row>, ViewError> {
        let mut out = Vec::new();
        self.rows_into(resource, &mut out)?;
        Ok(out)
    }

    /// Append the rows of one resource to `out` (reusing its allocation).
    pub fn rows_into(&self, resource: &Value, out: &mut Vec<Row>) -> Result<(), ViewError> {
        if resource.get("resourceType").and_then(Value::as_str) != Some(self.resource.as_str()) {
            return Ok(());
        }
        let run = Run {
            view: self,
            current: resource,
        };
        if self.dynamic.resource {
            let env = self
                .env
                .clone()
                .with_json_var("resource", resource)
                .with_json_var("rootResource", resource);
            run.resource(resource, &env, out)
        } else {
            run.resource(resource, &self.env, out)
        }
    }

    /// The rows of many resources, lazily: resources are processed as the iterator is
    /// advanced. After an error the iterator goes on with the next resource.
    pub fn rows_iter<'v, I>(&'v self, resources: I) -> RowsIter<'v, I::IntoIter>
    where
        I: IntoIterator,
        I::Item: Borrow<Value>,
    {
        RowsIter {
            view: self,
            resources: resources.into_iter(),
            pending: Vec::new().into_iter(),
        }
    }

    /// Whether `resource` passes the view's `where` paths (and is of its type).
    pub fn matches(&self, resource: &Value) -> Result<bool, ViewError> {
        if resource.get("resourceType").and_then(Value::as_str) != Some(self.resource.as_str()) {
            return Ok(false);
        }
        let run = Run {
            view: self,
            current: resource,
        };
        let root = [Item::from_resource(resource)];
        run.passes(&root, resource, &self.env)
    }

    /// A row as a JSON object keyed by column name.
    pub fn row_object(&self, row: &[Value]) -> Map<String, Value> {
        self.columns
            .iter()
            .zip(row)
            .map(|(c, v)| (c.name.clone(), v.clone()))
            .collect()
    }
}

/// Iterator returned by [`View::rows_iter`].
pub struct RowsIter<'v, I> {
    view: &'v View,
    resources: I,
    pending: std::vec::IntoIter<Row>,
}

impl<I> Iterator for RowsIter<'_, I>
where
    I: Iterator,
    I::Item: Borrow<Value>,
{
    type Item = Result<Row, ViewError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(row) = self.pending.next() {
                return Some(Ok(row));
            }
            let resource = self.resources.next()?;
            match self.view.rows(resource.borrow()) {
                Ok(rows) => self.pending = rows.into_iter(),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

fn label(resource: &Value) -> String {
    let ty = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or("resource");
    match resource.get("id").and_then(Value::as_str) {
        Some(id) => format!("{ty}/{id}"),
        None => ty.to_string(),
    }
}

impl Run<'_, '_> {
    fn error(&self, at: &str, message: impl Into<String>) -> ViewError {
        ViewError::Evaluation {
            resource: label(self.current),
            at: at.to_string(),
            message: message.into(),
        }
    }

    fn eval<'a>(
        &self,
        c: &Compiled,
        focus: &[Item<'a>],
        resource: &'a Value,
        env: &'a Env<'a>,
    ) -> Result<Vec<Item<'a>>, ViewError> {
        c.expr
            .evaluate_on(focus, Some(resource), env)
            .map_err(|e| self.error(&c.at, e.to_string()))
    }

    fn passes<'a>(
        &self,
        root: &[Item<'a>],
        resource: &'a Value,
        env: &'a Env<'a>,
    ) -> Result<bool, ViewError> {
        for w in &self.view.wheres {
            let items = self.eval(w, root, resource, env)?;
            match items.as_slice() {
                [] => return Ok(false),
                [item] => match item.as_bool() {
                    Some(true) => {}
                    Some(false) => return Ok(false),
                    None => {
                        return Err(self.error(
                            &w.at,
                            format!("where must give a Boolean, got {}", item.type_name().1),
                        ))
                    }
                },
                many => {
                    return Err(self.error(
                        &w.at,
                        format!("where must give a single Boolean, got {} items", many.len()),
                    ))
                }
            }
        }
        Ok(true)
    }

    fn resource<'a>(
        &self,
        resource: &'a Value,
        env: &'a Env<'a>,
        out: &mut Vec<Row>,
    ) -> Result<(), ViewError> {
        let root = [Item::from_resource(resource)];
        if !self.passes(&root, resource, env)? {
            return Ok(());
        }
        let mut rows = vec![Vec::with_capacity(self.view.columns.len())];
        for s in &self.view.selects {
            let part = self.select(s, &root, resource, env)?;
            rows = product(rows, part);
            if rows.is_empty() {
                return Ok(());
            }
        }
        out.extend(rows);
        Ok(())
    }

    fn select<'a>(
        &self,
        s: &Select,
        focus: &[Item<'a>],
        resource: &'a Value,
        env: &'a Env<'a>,
    ) -> Result<Vec<Row>, ViewError> {
        let items = match &s.iterate {
            Iterate::Parent => return self.body(s, focus, resource, env),
            Iterate::ForEach(p) | Iterate::ForEachOrNull(p) => {
                self.eval(p, focus, resource, env)?
            }
            Iterate::Repeat(paths) => {
                let mut nodes = Vec::new();
                for item in focus {
                    self.repeat(paths, item, resource, env, 0, &mut nodes)?;
                }
                nodes
            }
        };
        if items.is_empty() {
            if !matches!(s.iterate, Iterate::ForEachOrNull(_)) {
                return Ok(Vec::new());
            }
            // No item: the columns see an empty focus (so `%rowIndex` is 0 and paths give
            // null); if nested selects give no rows, a single row of nulls.
            let rows = if s.row_index {
                let local = env.clone().with_var("rowIndex", vec![Item::integer(0)]);
                self.body(s, &[], resource, &local)?
            } else {
                self.body(s, &[], resource, env)?
            };
            if rows.is_empty() {
                return Ok(vec![vec![Value::Null; s.width]]);
            }
            return Ok(rows);
        }
        let mut rows = Vec::new();
        if s.row_index {
            // One copy of the environment per iteration, its `%rowIndex` replaced per item.
            let mut local = env.clone();
            for (i, item) in items.iter().enumerate() {
                let index = i64::try_from(i).unwrap_or(i64::MAX);
                local = local.with_var("rowIndex", vec![Item::integer(index)]);
                rows.extend(self.body(s, std::slice::from_ref(item), resource, &local)?);
            }
        } else {
            for item in &items {
                rows.extend(self.body(s, std::slice::from_ref(item), resource, env)?);
            }
        }
        Ok(rows)
    }

    /// Depth-first, pre-order traversal for `repeat`: each node reached through any of the
    /// paths, then the nodes reached from it.
    fn repeat<'a>(
        &self,
        paths: &[Compiled],
        item: &Item<'a>,
        resource: &'a Value,
        env: &'a Env<'a>,
        depth: usize,
        out: &mut Vec<Item<'a>>,
    ) -> Result<(), ViewError> {
        for p in paths {
            if depth >= MAX_REPEAT_DEPTH {
                return Err(self.error(&p.at, "repeat nests too deeply"));
            }
            for child in self.eval(p, std::slice::from_ref(item), resource, env)? {
                if out.len() >= MAX_REPEAT_NODES {
                    return Err(self.error(&p.at, "repeat reaches too many nodes"));
                }
                out.push(child.clone());
                self.repeat(paths, &child, resource, env, depth + 1, out)?;
            }
        }
        Ok(())
    }

    /// The rows of a select for one focus, ignoring its `forEach`.
    fn body<'a>(
        &self,
        s: &Select,
        focus: &[Item<'a>],
        resource: &'a Value,
        env: &'a Env<'a>,
    ) -> Result<Vec<Row>, ViewError> {
        let mut own = Vec::with_capacity(s.width);
        for c in &s.columns {
            own.push(self.column(c, focus, resource, env)?);
        }
        let mut rows = vec![own];
        for nested in &s.selects {
            let part = self.select(nested, focus, resource, env)?;
            rows = product(rows, part);
            if rows.is_empty() {
                return Ok(rows);
            }
        }
        if !s.union.is_empty() {
            let mut part = Vec::new();
            for branch in &s.union {
                part.extend(self.select(branch, focus, resource, env)?);
            }
            rows = product(rows, part);
        }
        Ok(rows)
    }

    fn column<'a>(
        &self,
        c: &ColumnExpr,
        focus: &[Item<'a>],
        resource: &'a Value,
        env: &'a Env<'a>,
    ) -> Result<Value, ViewError> {
        let items = self.eval(&c.path, focus, resource, env)?;
        if c.collection {
            return Ok(Value::Array(items.iter().map(Item::to_json).collect()));
        }
        match items.as_slice() {
            [] => Ok(Value::Null),
            [item] => Ok(item.to_json()),
            many => Err(self.error(
                &c.path.at,
                format!(
                    "gave {} values for a column that is not a collection (set collection: true)",
                    many.len()
                ),
            )),
        }
    }
}

/// Cross join: every left row extended by every right row.
fn product(left: Vec<Row>, right: Vec<Row>) -> Vec<Row> {
    match right.len() {
        0 => Vec::new(),
        1 => {
            let Some(r) = right.into_iter().next() else {
                return Vec::new();
            };
            let mut left = left;
            for l in &mut left {
                l.extend(r.iter().cloned());
            }
            left
        }
        _ => {
            let mut out = Vec::with_capacity(left.len() * right.len());
            for l in &left {
                for r in &right {
                    let mut row = Vec::with_capacity(l.len() + r.len());
                    row.extend(l.iter().cloned());
                    row.extend(r.iter().cloned());
                    out.push(row);
                }
            }
            out
        }
    }
}
