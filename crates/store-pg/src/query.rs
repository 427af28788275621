//! SQL for searches on PostgreSQL: every clause becomes an index lookup
//! (`rid IN (SELECT rid FROM idx_… WHERE rtype = $n AND param = $m AND …)`), never a
//! scan of resource JSON. Sorting uses per-parameter min/max sort keys; paging is
//! keyset-based on (sort keys…, type, id), with the same order and the same cursor
//! rules as the SQLite backend (text compared byte-wise: `COLLATE "C"`).
//!
//! Every value from a query is a bind parameter with an explicit cast (`$3::text`);
//! the only literals are this module's own SQL and table/column names.

use crate::text::to_tsquery;
use bytes::BytesMut;
use salus_store::{
    Clause, ContainedMode, ContainedType, Cursor, HistoryQuery, HistoryScope, IndexKind, Page,
    Prefix, RangeMatch, SearchQuery, SortField, SortValue, StringMode, TextField, UriMode,
};
use std::fmt::Write as _;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};

/// A bind parameter of a built query.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Arg {
    Text(String),
    Int(i64),
    Real(f64),
}

impl Arg {
    fn cast(&self) -> &'static str {
        match self {
            Arg::Text(_) => "text",
            Arg::Int(_) => "int8",
            Arg::Real(_) => "float8",
        }
    }
}

impl ToSql for Arg {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Arg::Text(s) => s.to_sql(ty, out),
            Arg::Int(i) => i.to_sql(ty, out),
            Arg::Real(f) => f.to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        <String as ToSql>::accepts(ty) || <i64 as ToSql>::accepts(ty) || <f64 as ToSql>::accepts(ty)
    }

    to_sql_checked!();
}

/// Accumulates SQL text and its numbered parameters.
#[derive(Default, Debug)]
pub(crate) struct Q {
    pub text: String,
    pub args: Vec<Arg>,
    aliases: usize,
}

impl Q {
    pub(crate) fn push(&mut self, s: &str) {
        self.text.push_str(s);
    }
    /// Append a new parameter (`$n::type`).
    pub(crate) fn arg(&mut self, v: Arg) {
        let cast = v.cast();
        self.args.push(v);
        let _ = write!(self.text, "${}::{cast}", self.args.len());
    }
    pub(crate) fn text_arg(&mut self, s: &str) {
        self.arg(Arg::Text(s.to_string()));
    }
    fn alias(&mut self, prefix: &str) -> String {
        self.aliases += 1;
        format!("{prefix}{}", self.aliases)
    }
    pub(crate) fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.args.iter().map(|a| a as &(dyn ToSql + Sync)).collect()
    }
}

pub(crate) fn table(kind: IndexKind) -> &'static str {
    match kind {
        IndexKind::Token => "idx_token",
        IndexKind::String => "idx_string",
        IndexKind::Reference => "idx_reference",
        IndexKind::Date => "idx_date",
        IndexKind::Number => "idx_number",
        IndexKind::Uri => "idx_uri",
    }
}

/// Characters of a text value in the index tables' B-tree keys (see `schema.rs`).
pub(crate) const KEY_CHARS: usize = 128;

/// `{col} = $v`, written so that the `left({col}, 128)` index key can serve it.
pub(crate) fn eq_key(q: &mut Q, col: &str, v: &str) {
    q.args.push(Arg::Text(v.to_string()));
    let n = q.args.len();
    let _ = write!(
        q.text,
        "left({col}, {KEY_CHARS}) = left(${n}::text, {KEY_CHARS}) AND {col} = ${n}::text"
    );
}

/// `{col} >= $lo AND {col} < $hi`, written so that the `left({col}, 128)` index key
/// can serve it (truncation keeps order, so the prefix bounds are inclusive).
fn range_key(q: &mut Q, col: &str, lo: &str, hi: &str) {
    q.args.push(Arg::Text(lo.to_string()));
    let l = q.args.len();
    q.args.push(Arg::Text(hi.to_string()));
    let h = q.args.len();
    let _ = write!(
        q.text,
        "left({col}, {KEY_CHARS}) >= left(${l}::text, {KEY_CHARS}) \
         AND left({col}, {KEY_CHARS}) <= left(${h}::text, {KEY_CHARS}) \
         AND {col} >= ${l}::text AND {col} < ${h}::text"
    );
}

/// ` AND {col} = $n` / ` AND {col} IN (…)` when types are given.
fn in_types(q: &mut Q, col: &str, types: &[String]) {
    match types {
        [] => {}
        [one] => {
            q.push(&format!(" AND {col} = "));
            q.text_arg(one);
        }
        many => {
            q.push(&format!(" AND {col} IN ("));
            for (i, t) in many.iter().enumerate() {
                if i > 0 {
                    q.push(", ");
                }
                q.text_arg(t);
            }
            q.push(")");
        }
    }
}

/// Start `{a}.rid IN (SELECT {x}.rid FROM {tbl} {x} WHERE <types> AND <param> AND (`;
/// the caller appends the value condition and closes with `))`.
fn open_lookup(q: &mut Q, a: &str, types: &[String], tbl: &str, x: &str, param: &str) {
    q.push(&format!(
        "{a}.rid IN (SELECT {x}.rid FROM {tbl} {x} WHERE TRUE"
    ));
    in_types(q, &format!("{x}.rtype"), types);
    q.push(" AND ");
    param_cond(q, x, param);
    q.push(" AND (");
}

/// `{x}.param = $n`, or for a name ending in `|*` (see [`salus_store::Clause`]) a range
/// over the names that start with the part before the `*`.
pub(crate) fn param_cond(q: &mut Q, x: &str, param: &str) {
    match param.strip_suffix('*').filter(|p| p.ends_with('|')) {
        Some(prefix) => {
            // '}' follows '|' in byte order ("C" collation): [prefix, prefix-with-'}')
            // holds exactly the names starting with the prefix.
            let upper = format!("{}}}", &prefix[..prefix.len() - 1]);
            range_key(q, &format!("{x}.param"), prefix, &upper);
        }
        None => eq_key(q, &format!("{x}.param"), param),
    }
}

/// The condition for one range criterion against columns `lo`/`hi` (R4
/// search.html#prefix): the resource's range [lo, hi] compared with the search range.
fn range_cond<T: Copy>(q: &mut Q, lo: &str, hi: &str, m: &RangeMatch<T>, to_arg: fn(T) -> Arg) {
    let pl = || to_arg(m.low);
    let ph = || to_arg(m.high);
    match m.prefix {
        Prefix::Eq | Prefix::Ne => {
            q.push(if m.prefix == Prefix::Ne { "NOT (" } else { "(" });
            q.push(&format!("{lo} >= "));
            q.arg(pl());
            q.push(&format!(" AND {hi} <= "));
            q.arg(ph());
            q.push(")");
        }
        Prefix::Gt => {
            q.push(&format!("{hi} > "));
            q.arg(ph());
        }
        Prefix::Lt => {
            q.push(&format!("{lo} < "));
            q.arg(pl());
        }
        Prefix::Ge => {
            q.push(&format!("({hi} > "));
            q.arg(ph());
            q.push(&format!(" OR ({lo} >= "));
            q.arg(pl());
            q.push(&format!(" AND {hi} <= "));
            q.arg(ph());
            q.push("))");
        }
        Prefix::Le => {
            q.push(&format!("({lo} < "));
            q.arg(pl());
            q.push(&format!(" OR ({lo} >= "));
            q.arg(pl());
            q.push(&format!(" AND {hi} <= "));
            q.arg(ph());
            q.push("))");
        }
        Prefix::Sa => {
            q.push(&format!("{lo} > "));
            q.arg(ph());
        }
        Prefix::Eb => {
            q.push(&format!("{hi} < "));
            q.arg(pl());
        }
        Prefix::Ap => {
            // overlap of the ranges; the caller widens the search range for `ap`
            q.push(&format!("({lo} <= "));
            q.arg(ph());
            q.push(&format!(" AND {hi} >= "));
            q.arg(pl());
            q.push(")");
        }
    }
}

fn or_each<T>(q: &mut Q, items: &[T], mut f: impl FnMut(&mut Q, &T)) {
    if items.is_empty() {
        q.push("FALSE");
        return;
    }
    for (i, it) in items.iter().enumerate() {
        if i > 0 {
            q.push(" OR ");
        }
        q.push("(");
        f(q, it);
        q.push(")");
    }
}

fn text_column(field: TextField) -> &'static str {
    match field {
        TextField::Narrative => "narrative",
        TextField::Content => "content",
    }
}

/// SQL for one clause about the row aliased `a` (columns `rid`, `rtype`, `id`,
/// `last_updated`), whose type is one of `types` (any when empty).
pub(crate) fn clause(q: &mut Q, c: &Clause, a: &str, types: &[String]) {
    match c {
        Clause::Text { field, query } => match to_tsquery(query) {
            Some(tsq) => {
                let f = q.alias("f");
                q.push(&format!(
                    "{a}.rid IN (SELECT {f}.rid FROM fulltext {f} WHERE {f}.{} @@ (",
                    text_column(*field)
                ));
                q.text_arg(&tsq);
                q.push(")::tsquery)");
            }
            None => q.push("FALSE"),
        },
        Clause::Id(ids) => {
            if ids.is_empty() {
                q.push("FALSE");
                return;
            }
            q.push(&format!("{a}.id IN ("));
            for (i, id) in ids.iter().enumerate() {
                if i > 0 {
                    q.push(", ");
                }
                q.text_arg(id);
            }
            q.push(")");
        }
        Clause::Types(ts) => {
            if ts.is_empty() {
                q.push("FALSE");
                return;
            }
            q.push("TRUE");
            in_types(q, &format!("{a}.rtype"), ts);
        }
        Clause::LastUpdated { low, high } => {
            q.push("TRUE");
            if let Some(l) = low {
                q.push(&format!(" AND {a}.last_updated >= "));
                q.arg(Arg::Int(*l));
            }
            if let Some(h) = high {
                q.push(&format!(" AND {a}.last_updated <= "));
                q.arg(Arg::Int(*h));
            }
        }
        Clause::LastUpdatedRange { any } => {
            let lo = format!("{a}.last_updated");
            let hi = format!("({a}.last_updated + 999)");
            or_each(q, any, |q, m| range_cond(q, &lo, &hi, m, Arg::Int));
        }
        Clause::Token { param, any } => {
            let x = q.alias("t");
            open_lookup(q, a, types, "idx_token", &x, param);
            or_each(q, any, |q, m| {
                q.push("TRUE");
                if let Some(code) = &m.code {
                    q.push(" AND ");
                    eq_key(q, &format!("{x}.code"), code);
                }
                if let Some(s) = &m.system {
                    q.push(" AND ");
                    eq_key(q, &format!("{x}.system"), s);
                }
            });
            q.push("))");
        }
        Clause::String { param, any } => {
            let x = q.alias("s");
            open_lookup(q, a, types, "idx_string", &x, param);
            or_each(q, any, |q, m| match m.mode {
                StringMode::Prefix => range_key(
                    q,
                    &format!("{x}.normalized"),
                    &m.value,
                    &format!("{}\u{10FFFF}", m.value),
                ),
                StringMode::Contains => {
                    q.push(&format!("strpos({x}.normalized, "));
                    q.text_arg(&m.value);
                    q.push(") > 0");
                }
                StringMode::Exact => {
                    q.push(&format!("{x}.exact = "));
                    q.text_arg(&m.value);
                }
            });
            q.push("))");
        }
        Clause::Reference { param, any } => {
            let x = q.alias("x");
            open_lookup(q, a, types, "idx_reference", &x, param);
            or_each(q, any, |q, m| {
                eq_key(q, &format!("{x}.target_id"), &m.target_id);
                if let Some(t) = &m.target_type {
                    q.push(" AND ");
                    eq_key(q, &format!("{x}.target_type"), t);
                }
                if let Some(v) = &m.version {
                    q.push(&format!(" AND {x}.version = "));
                    q.text_arg(v);
                }
            });
            q.push("))");
        }
        Clause::Date { param, any } => {
            let x = q.alias("d");
            open_lookup(q, a, types, "idx_date", &x, param);
            let (lo, hi) = (format!("{x}.low"), format!("{x}.high"));
            or_each(q, any, |q, m| range_cond(q, &lo, &hi, m, Arg::Int));
            q.push("))");
        }
        Clause::Number { param, any } => {
            let x = q.alias("n");
            open_lookup(q, a, types, "idx_number", &x, param);
            let v = format!("{x}.value");
            or_each(q, any, |q, m| range_cond(q, &v, &v, m, Arg::Real));
            q.push("))");
        }
        Clause::Quantity { param, any } => {
            let x = q.alias("n");
            open_lookup(q, a, types, "idx_number", &x, param);
            let v = format!("{x}.value");
            or_each(q, any, |q, m| {
                range_cond(q, &v, &v, &m.range, Arg::Real);
                if let Some(s) = &m.system {
                    q.push(&format!(" AND {x}.system = "));
                    q.text_arg(s);
                }
                if let Some(c) = &m.code {
                    q.push(&format!(" AND {x}.code = "));
                    q.text_arg(c);
                }
            });
            q.push("))");
        }
        Clause::Uri { param, any } => {
            let x = q.alias("u");
            open_lookup(q, a, types, "idx_uri", &x, param);
            or_each(q, any, |q, m| match m.mode {
                UriMode::Exact => eq_key(q, &format!("{x}.uri"), &m.value),
                UriMode::Below => range_key(
                    q,
                    &format!("{x}.uri"),
                    &m.value,
                    &format!("{}\u{10FFFF}", m.value),
                ),
                UriMode::Above => {
                    q.push("starts_with(");
                    q.text_arg(&m.value);
                    q.push(&format!(", {x}.uri)"));
                }
            });
            q.push("))");
        }
        Clause::Missing {
            param,
            kind,
            missing,
        } => {
            let x = q.alias("m");
            q.push(if *missing { "NOT EXISTS" } else { "EXISTS" });
            q.push(&format!(
                " (SELECT 1 FROM {} {x} WHERE {x}.rid = {a}.rid AND {x}.param = ",
                table(*kind)
            ));
            q.text_arg(param);
            q.push(")");
        }
        Clause::Not(inner) => {
            q.push("NOT (");
            clause(q, inner, a, types);
            q.push(")");
        }
        Clause::Any(cs) => {
            q.push("(");
            or_each(q, cs, |q, c| clause(q, c, a, types));
            q.push(")");
        }
        Clause::All(cs) => {
            q.push("(TRUE");
            for c in cs {
                q.push(" AND (");
                clause(q, c, a, types);
                q.push(")");
            }
            q.push(")");
        }
        Clause::Chain {
            param,
            target_types,
            inner,
        } => {
            // the references (through `param`) to current targets that match `inner`
            let x = q.alias("cx");
            let t = q.alias("ct");
            // The join also names the `idx_reference_target` key (`left(…, 128)`), so
            // the planner can start from the few targets the inner criteria select and
            // look their references up, instead of scanning every reference of
            // `param` (a 2-level chain took 300 ms at 90k resources).
            q.push(&format!(
                "{a}.rid IN (SELECT {x}.rid FROM idx_reference {x} JOIN resources {t} \
                 ON left({x}.target_type, {KEY_CHARS}) = left({t}.rtype, {KEY_CHARS}) \
                 AND left({x}.target_id, {KEY_CHARS}) = left({t}.id, {KEY_CHARS}) \
                 AND {t}.rtype = {x}.target_type AND {t}.id = {x}.target_id WHERE "
            ));
            param_cond(q, &x, param);
            in_types(q, &format!("{x}.rtype"), types);
            q.push(&format!(" AND NOT {t}.deleted"));
            in_types(q, &format!("{t}.rtype"), target_types);
            for c in inner {
                q.push(" AND (");
                clause(q, c, &t, target_types);
                q.push(")");
            }
            q.push(")");
        }
        Clause::Has {
            source_type,
            param,
            inner,
        } => {
            // current `source_type` resources that match `inner` and reference this one
            let x = q.alias("hx");
            let s = q.alias("hs");
            // A correlated EXISTS through the `idx_reference_target` key: the planner
            // may look up the references to each candidate (few candidates, e.g. one
            // `_id`) or hash the sources (many); `(rtype, id) IN (…)` allowed only
            // the latter, since it could not use the `left(…, 128)` index key.
            q.push(&format!(
                "EXISTS (SELECT 1 FROM idx_reference {x} JOIN resources {s} ON {s}.rid = {x}.rid \
                 WHERE left({x}.target_type, {KEY_CHARS}) = left({a}.rtype, {KEY_CHARS}) \
                 AND left({x}.target_id, {KEY_CHARS}) = left({a}.id, {KEY_CHARS}) \
                 AND {x}.target_type = {a}.rtype AND {x}.target_id = {a}.id AND "
            ));
            eq_key(q, &format!("{x}.param"), param);
            q.push(&format!(" AND {x}.rtype = "));
            q.text_arg(source_type);
            q.push(&format!(" AND NOT {s}.deleted"));
            let src = vec![source_type.clone()];
            for c in inner {
                q.push(" AND (");
                clause(q, c, &s, &src);
                q.push(")");
            }
            q.push(")");
        }
    }
}

/// Whether a sort key's values are text (compared byte-wise).
fn is_text(field: &SortField) -> bool {
    match field {
        SortField::Id => true,
        SortField::LastUpdated | SortField::Relevance { .. } | SortField::Quantity { .. } => false,
        SortField::Either(a, _) => is_text(a),
        SortField::Param { kind, .. } => matches!(
            kind,
            IndexKind::Token | IndexKind::String | IndexKind::Reference | IndexKind::Uri
        ),
    }
}

/// The SQL expression of a sort key for the resource row `r`.
fn sort_expr(q: &mut Q, field: &SortField, descending: bool) -> String {
    match field {
        SortField::Relevance { field, query } => {
            // ts_rank: higher is more relevant; negated so ascending is best first
            let Some(tsq) = to_tsquery(query) else {
                return "NULL::float8".into();
            };
            let f = q.alias("f");
            let mut e = format!("(SELECT -ts_rank({f}.{col}, (", col = text_column(*field));
            q.args.push(Arg::Text(tsq));
            let _ = write!(
                e,
                "${}::text)::tsquery)::float8 FROM fulltext {f} WHERE {f}.rid = r.rid)",
                q.args.len()
            );
            e
        }
        SortField::Id => "r.id".into(),
        SortField::LastUpdated => "r.last_updated".into(),
        SortField::Either(a, b) => {
            // LEAST/GREATEST ignore NULLs: an absent side yields the present one. Text
            // compares byte-wise, as every sort key does (`COLLATE "C"` in `inner`).
            let c = if is_text(field) { " COLLATE \"C\"" } else { "" };
            let (a, b) = (sort_expr(q, a, descending), sort_expr(q, b, descending));
            let f = if descending { "GREATEST" } else { "LEAST" };
            format!("{f}(({a}){c}, ({b}){c})")
        }
        SortField::Quantity { param, canonical } => {
            let agg = if descending { "max" } else { "min" };
            let (x, y) = (q.alias("o"), q.alias("o"));
            q.args.push(Arg::Text(canonical.clone()));
            let c = q.args.len();
            q.args.push(Arg::Text(param.clone()));
            let p = q.args.len();
            format!(
                "coalesce((SELECT {agg}({x}.value) FROM idx_number {x} WHERE {x}.rid = r.rid AND {x}.param = ${c}::text), \
                 (SELECT {agg}({y}.value) FROM idx_number {y} WHERE {y}.rid = r.rid AND {y}.param = ${p}::text))"
            )
        }
        SortField::Param { param, kind } => {
            let agg = if descending { "max" } else { "min" };
            let col = match (kind, descending) {
                (IndexKind::Token, _) => "code",
                (IndexKind::String, _) => "normalized",
                (IndexKind::Reference, _) => "target_id",
                (IndexKind::Date, false) => "low",
                (IndexKind::Date, true) => "high",
                (IndexKind::Number, _) => "value",
                (IndexKind::Uri, _) => "uri",
            };
            let x = q.alias("o");
            q.args.push(Arg::Text(param.clone()));
            format!(
                "(SELECT {agg}({x}.{col}) FROM {} {x} WHERE {x}.rid = r.rid AND {x}.param = ${}::text)",
                table(*kind),
                q.args.len()
            )
        }
    }
}

fn value_arg(v: &SortValue) -> Option<Arg> {
    match v {
        SortValue::Null => None,
        SortValue::Int(i) => Some(Arg::Int(*i)),
        SortValue::Real(f) => Some(Arg::Real(*f)),
        SortValue::Text(s) => Some(Arg::Text(s.clone())),
    }
}

/// One component of the total order: a column of the inner query, its direction, and
/// the cursor's value for it.
struct Component {
    col: String,
    descending: bool,
    value: Arg,
}

fn components(q: &SearchQuery, c: &Cursor) -> Vec<Component> {
    let mut out = vec![];
    for (i, key) in q.sort.iter().enumerate() {
        let v = c.values.get(i).and_then(value_arg);
        out.push(Component {
            col: format!("n{i}"),
            descending: false,
            value: Arg::Int(v.is_none() as i64),
        });
        if let Some(value) = v {
            out.push(Component {
                col: format!("k{i}"),
                descending: key.descending,
                value,
            });
        }
    }
    out.push(Component {
        col: "ktype".into(),
        descending: false,
        value: Arg::Text(c.rtype.clone()),
    });
    out.push(Component {
        col: "kid".into(),
        descending: false,
        value: Arg::Text(c.id.clone()),
    });
    out
}

/// `(c1 > v1) OR (c1 = v1 AND c2 > v2) OR …` — strictly after (or before) the cursor.
fn keyset(q: &mut Q, comps: &[Component], after: bool) {
    q.push("(");
    for i in 0..comps.len() {
        if i > 0 {
            q.push(" OR ");
        }
        q.push("(");
        for c in &comps[..i] {
            q.push(&format!("s.{} = ", c.col));
            q.arg(c.value.clone());
            q.push(" AND ");
        }
        let c = &comps[i];
        let greater = after != c.descending;
        q.push(&format!("s.{} {} ", c.col, if greater { ">" } else { "<" }));
        q.arg(c.value.clone());
        q.push(")");
    }
    q.push(")");
}

pub(crate) const VERSION_COLS: &str =
    "v.rtype, v.id, v.version, v.last_updated, v.method, v.body, v.seq";

/// The filtered inner query: every matching current resource (columns 0–6 as
/// [`VERSION_COLS`]), then `ktype`, `kid`, the sort keys (`n{i}`, `k{i}`), and `cid`:
/// the local id of a matched contained resource when those are returned themselves.
pub(crate) fn inner(q: &SearchQuery) -> Q {
    let mut s = Q::default();
    let mut keys = String::new();
    for (i, key) in q.sort.iter().enumerate() {
        let e = sort_expr(&mut s, &key.field, key.descending);
        let collate = if is_text(&key.field) {
            " COLLATE \"C\""
        } else {
            ""
        };
        let _ = write!(
            keys,
            ", CASE WHEN ({e}) IS NULL THEN 1 ELSE 0 END AS n{i}, ({e}){collate} AS k{i}"
        );
    }
    // R4 search.html#contained: contained resources are matched through their own
    // index rows (stored under negative rids, see the `contained` table); `matches` is
    // a derived table of them (and, for `both`, of ordinary resources too).
    let both = q.contained == ContainedMode::Both;
    let matches = |s: &mut Q| {
        s.push(
            "(SELECT -c.crid AS rid, c.rtype AS rtype, c.cid AS id, p.seq AS seq, p.deleted AS deleted, \
             p.last_updated AS last_updated, p.rtype || '/' || p.id AS container_key, p.rid AS container \
             FROM contained c JOIN resources p ON p.rid = c.rid",
        );
        if both {
            s.push(
                " UNION ALL SELECT rid, rtype, id, seq, deleted, last_updated, NULL, rid FROM resources",
            );
        }
        s.push(")");
    };
    let alias = match (q.contained, q.contained_type) {
        (ContainedMode::Exclude, _) => {
            s.push(&format!(
                "SELECT {VERSION_COLS}, r.rtype COLLATE \"C\" AS ktype, r.id COLLATE \"C\" AS kid{keys}, \
                 NULL::text AS cid FROM resources r JOIN resource_versions v ON v.seq = r.seq \
                 WHERE NOT r.deleted"
            ));
            "r"
        }
        (_, ContainedType::Contained) => {
            s.push(&format!(
                "SELECT {VERSION_COLS}, r.rtype COLLATE \"C\" AS ktype, \
                 (CASE WHEN r.container_key IS NULL THEN r.id ELSE r.container_key || '#' || r.id END) \
                 COLLATE \"C\" AS kid{keys}, \
                 CASE WHEN r.container_key IS NULL THEN NULL ELSE r.id END AS cid FROM "
            ));
            matches(&mut s);
            s.push(" r JOIN resource_versions v ON v.seq = r.seq WHERE NOT r.deleted");
            "r"
        }
        (_, ContainedType::Container) => {
            // the containers of the matches, once each (and, for `both`, the matches
            // that are not contained)
            s.push(&format!(
                "SELECT {VERSION_COLS}, r.rtype COLLATE \"C\" AS ktype, r.id COLLATE \"C\" AS kid{keys}, \
                 NULL::text AS cid FROM resources r JOIN resource_versions v ON v.seq = r.seq \
                 WHERE NOT r.deleted AND r.rid IN (SELECT m.container FROM "
            ));
            matches(&mut s);
            s.push(" m WHERE NOT m.deleted");
            "m"
        }
    };
    let types: Vec<String> = if q.rtype.is_empty() {
        vec![]
    } else {
        s.push(&format!(" AND {alias}.rtype = "));
        s.text_arg(&q.rtype);
        vec![q.rtype.clone()]
    };
    for c in &q.clauses {
        s.push(" AND (");
        clause(&mut s, c, alias, &types);
        s.push(")");
    }
    if alias == "m" {
        s.push(")");
    }
    s
}

/// `ORDER BY` for the outer query, forwards or reversed.
fn order_by(q: &SearchQuery, reverse: bool) -> String {
    let dir = |desc: bool| if desc != reverse { "DESC" } else { "ASC" };
    let mut parts = vec![];
    for (i, key) in q.sort.iter().enumerate() {
        parts.push(format!("s.n{i} {}", dir(false)));
        parts.push(format!("s.k{i} {}", dir(key.descending)));
    }
    parts.push(format!("s.ktype {}", dir(false)));
    parts.push(format!("s.kid {}", dir(false)));
    format!(" ORDER BY {}", parts.join(", "))
}

/// `SELECT count(*)` over the matches.
pub(crate) fn count(q: &SearchQuery) -> Q {
    let base = inner(q);
    Q {
        text: format!("SELECT count(*) FROM ({}) s", base.text),
        args: base.args,
        aliases: base.aliases,
    }
}

/// The page query (asks for one row more than `count`, to know whether more follow),
/// and whether its rows come in reverse order.
pub(crate) fn page(q: &SearchQuery) -> (Q, bool) {
    let base = inner(q);
    let mut s = Q {
        text: format!("SELECT * FROM ({}) s WHERE TRUE", base.text),
        args: base.args,
        aliases: base.aliases,
    };
    let reverse = matches!(q.page, Page::Before(_) | Page::Last);
    match &q.page {
        Page::After(c) => {
            s.push(" AND ");
            keyset(&mut s, &components(q, c), true);
        }
        Page::Before(c) => {
            s.push(" AND ");
            keyset(&mut s, &components(q, c), false);
        }
        Page::First | Page::Last => {}
    }
    s.push(&order_by(q, reverse));
    s.push(" LIMIT ");
    s.arg(Arg::Int(q.count as i64 + 1));
    if q.page == Page::First && q.offset > 0 {
        s.push(" OFFSET ");
        s.arg(Arg::Int(q.offset as i64));
    }
    (s, reverse)
}

/// History: the `WHERE` filter shared by the count and the page.
pub(crate) fn history_filter(q: &HistoryQuery) -> Q {
    let mut f = Q::default();
    f.push("TRUE");
    match &q.scope {
        HistoryScope::System => {}
        HistoryScope::Type(t) => {
            f.push(" AND v.rtype = ");
            f.text_arg(t);
        }
        HistoryScope::Instance(t, id) => {
            f.push(" AND v.rtype = ");
            f.text_arg(t);
            f.push(" AND v.id = ");
            f.text_arg(id);
        }
    }
    if let Some(since) = q.since {
        f.push(" AND v.last_updated >= ");
        f.arg(Arg::Int(since));
    }
    if let Some(before) = q.before {
        f.push(" AND v.last_updated <= ");
        f.arg(Arg::Int(before));
    }
    if let Some(from) = q.current_from {
        f.push(
            " AND NOT EXISTS (SELECT 1 FROM resource_versions n WHERE n.rtype = v.rtype \
             AND n.id = v.id AND n.version = v.version + 1 AND n.last_updated <= ",
        );
        f.arg(Arg::Int(from));
        f.push(")");
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use salus_store::{SortKey, TextQuery, TokenMatch};

    fn token(param: &str, code: &str) -> Clause {
        Clause::Token {
            param: param.into(),
            any: vec![TokenMatch {
                system: Some(String::new()),
                code: Some(code.into()),
            }],
        }
    }

    #[test]
    fn user_values_are_parameters_never_sql() {
        let evil = "x'); DROP TABLE resources; --";
        let mut q = SearchQuery::new("Patient");
        q.clauses = vec![
            token(evil, evil),
            Clause::Id(vec![evil.into()]),
            Clause::Text {
                field: TextField::Content,
                query: TextQuery {
                    any: vec![vec![evil.into()]],
                },
            },
        ];
        q.sort = vec![SortKey {
            field: SortField::Param {
                param: evil.into(),
                kind: IndexKind::String,
            },
            descending: true,
        }];
        let (p, _) = page(&q);
        assert!(!p.text.contains("DROP"), "{}", p.text);
        assert!(p.args.contains(&Arg::Text(evil.into())));
        // every placeholder has its argument, and each is typed
        let n = p.args.len();
        assert!(p.text.contains(&format!("${n}::")));
        assert!(!p.text.contains(&format!("${}::", n + 1)));
    }

    #[test]
    fn name_prefixes_become_a_range() {
        let mut q = Q::default();
        param_cond(&mut q, "x", "cvq$8480-6|*");
        assert_eq!(
            q.text,
            "left(x.param, 128) >= left($1::text, 128) AND left(x.param, 128) <= left($2::text, 128) \
             AND x.param >= $1::text AND x.param < $2::text"
        );
        assert_eq!(
            q.args,
            vec![
                Arg::Text("cvq$8480-6|".into()),
                Arg::Text("cvq$8480-6}".into())
            ]
        );
        let mut q = Q::default();
        param_cond(&mut q, "x", "a*");
        assert_eq!(
            q.text, "left(x.param, 128) = left($1::text, 128) AND x.param = $1::text",
            "only `|*` is a prefix"
        );
    }

    #[test]
    fn keyset_after_a_cursor() {
        let mut q = SearchQuery::new("T");
        q.sort = vec![SortKey {
            field: SortField::LastUpdated,
            descending: true,
        }];
        q.page = Page::After(Cursor {
            values: vec![SortValue::Int(5)],
            rtype: "T".into(),
            id: "b".into(),
        });
        let (p, reverse) = page(&q);
        assert!(!reverse);
        assert!(p.text.contains(
            "((s.n0 > $2::int8) OR (s.n0 = $3::int8 AND s.k0 < $4::int8) OR \
             (s.n0 = $5::int8 AND s.k0 = $6::int8 AND s.ktype > $7::text) OR"
        ));
        assert!(p
            .text
            .ends_with("ORDER BY s.n0 ASC, s.k0 DESC, s.ktype ASC, s.kid ASC LIMIT $12::int8"));
        // a previous page runs the same order reversed
        q.page = Page::Last;
        let (p, reverse) = page(&q);
        assert!(reverse);
        assert!(p
            .text
            .contains("ORDER BY s.n0 DESC, s.k0 ASC, s.ktype DESC, s.kid DESC"));
    }

    #[test]
    fn a_null_cursor_value_skips_its_key() {
        let mut q = SearchQuery::new("T");
        q.sort = vec![SortKey {
            field: SortField::Id,
            descending: false,
        }];
        let c = Cursor {
            values: vec![SortValue::Null],
            rtype: "T".into(),
            id: "x".into(),
        };
        let comps = components(&q, &c);
        let cols: Vec<&str> = comps.iter().map(|c| c.col.as_str()).collect();
        assert_eq!(cols, vec!["n0", "ktype", "kid"]);
        assert_eq!(comps[0].value, Arg::Int(1));
    }

    #[test]
    fn empty_alternatives_match_nothing() {
        let mut q = Q::default();
        clause(&mut q, &Clause::Id(vec![]), "r", &[]);
        clause(&mut q, &Clause::Any(vec![]), "r", &[]);
        assert_eq!(q.text, "FALSE(FALSE)");
    }

    #[test]
    fn history_filter_binds_every_value() {
        let f = history_filter(&HistoryQuery {
            scope: HistoryScope::Instance("Patient".into(), "p'1".into()),
            since: Some(10),
            before: None,
            current_from: Some(20),
            cursor: None,
            count: 5,
        });
        assert_eq!(f.args.len(), 4);
        assert!(!f.text.contains("p'1"));
    }
}
