//! SQL for searches on the SQLite backend: every clause becomes an index lookup
//! (`id IN (SELECT id FROM idx_… WHERE …)`), never a scan of resource JSON. Sorting
//! uses per-parameter min/max sort keys; paging is keyset-based on
//! (sort keys…, type, id), so pages stay correct while data changes.

use crate::{
    Clause, ContainedMode, ContainedType, Cursor, IndexKind, Page, Prefix, RangeMatch, SearchPage,
    SearchQuery, SortField, SortValue, StringMode, TextField, TextQuery, UriMode, VersionRecord,
};
use rusqlite::types::Value as Sql;

/// Accumulates SQL text and its positional arguments.
#[derive(Default)]
pub(crate) struct Q {
    pub text: String,
    pub args: Vec<Sql>,
    aliases: usize,
}

impl Q {
    fn push(&mut self, s: &str) {
        self.text.push_str(s);
    }
    fn arg(&mut self, v: Sql) {
        self.text.push('?');
        self.args.push(v);
    }
    fn text_arg(&mut self, s: &str) {
        self.arg(Sql::Text(s.to_string()));
    }
    fn alias(&mut self, prefix: &str) -> String {
        self.aliases += 1;
        format!("{prefix}{}", self.aliases)
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

/// Start `{a}.rid IN (SELECT x.rid FROM {table} x WHERE x.pid IN (<the parameter's ids>) AND (`
/// — or, when `drive` is false, a correlated `EXISTS` on the candidate row; either way
/// the caller appends the value condition and closes with `))`.
fn open_lookup(q: &mut Q, a: &str, types: &[String], tbl: &str, x: &str, param: &str, drive: bool) {
    if drive {
        q.push(&format!("{a}.rid IN (SELECT {x}.rid FROM {tbl} {x} WHERE "));
    } else {
        // A correlated check of the candidate row (through the table's `rid` index).
        q.push(&format!(
            "EXISTS (SELECT 1 FROM {tbl} {x} WHERE {x}.rid = {a}.rid AND "
        ));
    }
    pid_cond(q, x, types, param, false);
    q.push(" AND (");
}

/// Index rows name their search parameter by `pid`, the `params` row of (resource type,
/// parameter name): `{x}.pid = (SELECT pid FROM params WHERE rtype = ? AND param = ?)`
/// for one type, an `IN` list for several or any type (`types` empty), and for a name
/// ending in `|*` (see [`crate::Clause`]) the ids of every name that starts with the
/// part before the `*`. `plus` (`+{x}.pid`) keeps SQLite from driving by it.
pub(crate) fn pid_cond(q: &mut Q, x: &str, types: &[String], param: &str, plus: bool) {
    let plus = if plus { "+" } else { "" };
    let prefix = param.strip_suffix('*').filter(|p| p.ends_with('|'));
    match (types, prefix) {
        ([_], None) => q.push(&format!("{plus}{x}.pid = (SELECT pid FROM params WHERE ")),
        _ => q.push(&format!("{plus}{x}.pid IN (SELECT pid FROM params WHERE ")),
    }
    match types {
        [] => {}
        [one] => {
            q.push("rtype = ");
            q.text_arg(one);
            q.push(" AND ");
        }
        many => {
            q.push("rtype IN (");
            for (i, t) in many.iter().enumerate() {
                if i > 0 {
                    q.push(",");
                }
                q.text_arg(t);
            }
            q.push(") AND ");
        }
    }
    match prefix {
        Some(prefix) => {
            // '}' follows '|' in byte order: [prefix, prefix-with-'}') holds exactly
            // the names starting with the prefix.
            let upper = format!("{}}}", &prefix[..prefix.len() - 1]);
            q.push("param >= ");
            q.text_arg(prefix);
            q.push(" AND param < ");
            q.text_arg(&upper);
        }
        None => {
            q.push("param = ");
            q.text_arg(param);
        }
    }
    q.push(")");
}

/// The condition for one range criterion against columns `lo`/`hi` (R4 search.html#prefix):
/// the resource's range [lo, hi] compared with the search range [pl, ph].
fn range_cond<T: Copy>(q: &mut Q, lo: &str, hi: &str, m: &RangeMatch<T>, to_sql: fn(T) -> Sql) {
    let pl = || to_sql(m.low);
    let ph = || to_sql(m.high);
    match m.prefix {
        Prefix::Eq => {
            q.push(&format!("({lo} >= "));
            q.arg(pl());
            q.push(&format!(" AND {hi} <= "));
            q.arg(ph());
            q.push(")");
        }
        Prefix::Ne => {
            q.push(&format!("NOT ({lo} >= "));
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
            // Overlap of the ranges; the caller widens the search range for `ap`.
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
        q.push("0");
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

/// SQL for one clause about the `resources` row aliased `a`, whose type is one of
/// `types` (any when empty).
/// `drive`: whether this clause produces the candidate set (an `IN` list looked up by
/// value) or checks candidates found by another clause (correlated `EXISTS`).
pub(crate) fn clause(q: &mut Q, c: &Clause, a: &str, types: &[String], drive: bool) {
    match c {
        Clause::Text { field, query } => {
            q.push(&format!(
                "{a}.rid IN (SELECT rowid FROM fulltext WHERE fulltext MATCH "
            ));
            q.text_arg(&fts_match(*field, query));
            q.push(")");
        }
        Clause::Id(ids) => {
            if ids.is_empty() {
                q.push("0");
                return;
            }
            q.push(&format!("{a}.id IN ("));
            for (i, id) in ids.iter().enumerate() {
                if i > 0 {
                    q.push(",");
                }
                q.text_arg(id);
            }
            q.push(")");
        }
        Clause::Types(ts) => {
            if ts.is_empty() {
                q.push("0");
                return;
            }
            q.push(&format!("{a}.rtype IN ("));
            for (i, t) in ts.iter().enumerate() {
                if i > 0 {
                    q.push(",");
                }
                q.text_arg(t);
            }
            q.push(")");
        }
        Clause::LastUpdated { low, high } => {
            q.push("1=1");
            if let Some(l) = low {
                q.push(&format!(" AND {a}.last_updated >= "));
                q.arg(Sql::Integer(*l));
            }
            if let Some(h) = high {
                q.push(&format!(" AND {a}.last_updated <= "));
                q.arg(Sql::Integer(*h));
            }
        }
        Clause::LastUpdatedRange { any } => {
            let lo = format!("{a}.last_updated");
            let hi = format!("({a}.last_updated + 999)");
            or_each(q, any, |q, m| range_cond(q, &lo, &hi, m, Sql::Integer));
        }
        Clause::Token { param, any } => {
            let x = q.alias("t");
            open_lookup(q, a, types, "idx_token", &x, param, drive);
            or_each(q, any, |q, m| {
                q.push("1=1");
                if let Some(code) = &m.code {
                    q.push(&format!(" AND {x}.code = "));
                    q.text_arg(code);
                }
                match &m.system {
                    None => {}
                    Some(s) if s.is_empty() => q.push(&format!(" AND {x}.system = ''")),
                    Some(s) => {
                        q.push(&format!(" AND {x}.system = "));
                        q.text_arg(s);
                    }
                }
            });
            q.push("))");
        }
        Clause::String { param, any } => {
            let x = q.alias("s");
            open_lookup(q, a, types, "idx_string", &x, param, drive);
            or_each(q, any, |q, m| match m.mode {
                StringMode::Prefix => {
                    q.push(&format!("{x}.normalized >= "));
                    q.text_arg(&m.value);
                    q.push(&format!(" AND {x}.normalized < "));
                    q.text_arg(&format!("{}\u{10FFFF}", m.value));
                }
                StringMode::Contains => {
                    q.push(&format!("instr({x}.normalized, "));
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
            open_lookup(q, a, types, "idx_reference", &x, param, drive);
            or_each(q, any, |q, m| {
                q.push(&format!("{x}.target_id = "));
                q.text_arg(&m.target_id);
                if let Some(t) = &m.target_type {
                    q.push(&format!(" AND {x}.target_type = "));
                    q.text_arg(t);
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
            open_lookup(q, a, types, "idx_date", &x, param, drive);
            let (lo, hi) = (format!("{x}.low"), format!("{x}.high"));
            or_each(q, any, |q, m| range_cond(q, &lo, &hi, m, Sql::Integer));
            q.push("))");
        }
        Clause::Number { param, any } => {
            let x = q.alias("n");
            open_lookup(q, a, types, "idx_number", &x, param, drive);
            let v = format!("{x}.value");
            or_each(q, any, |q, m| range_cond(q, &v, &v, m, Sql::Real));
            q.push("))");
        }
        Clause::Quantity { param, any } => {
            let x = q.alias("n");
            open_lookup(q, a, types, "idx_number", &x, param, drive);
            let v = format!("{x}.value");
            or_each(q, any, |q, m| {
                range_cond(q, &v, &v, &m.range, Sql::Real);
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
            open_lookup(q, a, types, "idx_uri", &x, param, drive);
            or_each(q, any, |q, m| match m.mode {
                UriMode::Exact => {
                    q.push(&format!("{x}.uri = "));
                    q.text_arg(&m.value);
                }
                UriMode::Below => {
                    q.push(&format!("{x}.uri >= "));
                    q.text_arg(&m.value);
                    q.push(&format!(" AND {x}.uri < "));
                    q.text_arg(&format!("{}\u{10FFFF}", m.value));
                }
                UriMode::Above => {
                    q.push("instr(");
                    q.text_arg(&m.value);
                    q.push(&format!(", {x}.uri) = 1"));
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
                " (SELECT 1 FROM {} {x} WHERE {x}.rid = {a}.rid AND ",
                table(*kind)
            ));
            pid_cond(q, &x, types, param, false);
            q.push(")");
        }
        Clause::Not(inner) => {
            q.push("NOT (");
            clause(q, inner, a, types, false);
            q.push(")");
        }
        Clause::Any(cs) => {
            q.push("(");
            or_each(q, cs, |q, c| clause(q, c, a, types, drive));
            q.push(")");
        }
        Clause::All(cs) => {
            q.push("(1");
            for c in cs {
                q.push(" AND (");
                clause(q, c, a, types, false);
                q.push(")");
            }
            q.push(")");
        }
        Clause::Chain {
            param,
            target_types,
            inner,
        } => {
            let x = q.alias("cx");
            let t = q.alias("ct");
            if !drive {
                // check this candidate's references
                q.push(&format!(
                    "EXISTS (SELECT 1 FROM idx_reference {x} JOIN resources {t} \
                     ON {t}.rtype = {x}.target_type AND {t}.id = {x}.target_id \
                     WHERE {x}.rid = {a}.rid AND "
                ));
                pid_cond(q, &x, types, param, false);
                q.push(&format!(" AND {t}.deleted = 0"));
                in_types(q, &format!("{t}.rtype"), target_types);
                for c in inner {
                    q.push(" AND (");
                    clause(q, c, &t, target_types, false);
                    q.push(")");
                }
                q.push(")");
                return;
            }
            // inner first: the matching targets, then the references to them
            open_lookup(q, a, types, "idx_reference", &x, param, true);
            let lead = driver(inner);
            let target = |q: &mut Q, tt: Option<&String>| {
                match tt {
                    Some(tt) => {
                        q.push(&format!("{x}.target_type = "));
                        q.text_arg(tt);
                        // `+` lets an inner index lookup drive, as for the outer query
                        let plus = if matches!(lead.map(|i| &inner[i]), None | Some(Clause::Id(_))) {
                            ""
                        } else {
                            "+"
                        };
                        q.push(&format!(
                            " AND {x}.target_id IN (SELECT {t}.id FROM resources {t} WHERE {t}.deleted = 0 AND {plus}{t}.rtype = "
                        ));
                        q.text_arg(tt);
                    }
                    None => q.push(&format!(
                        "({x}.target_type, {x}.target_id) IN (SELECT {t}.rtype, {t}.id FROM resources {t} WHERE {t}.deleted = 0"
                    )),
                }
                let types: Vec<String> = tt.into_iter().cloned().collect();
                for (i, c) in inner.iter().enumerate() {
                    q.push(" AND (");
                    clause(q, c, &t, &types, Some(i) == lead);
                    q.push(")");
                }
                q.push(")");
            };
            if target_types.is_empty() {
                target(q, None);
            } else {
                or_each(q, target_types, |q, tt| target(q, Some(tt)));
            }
            q.push("))");
        }
        Clause::Has {
            source_type,
            param,
            inner,
        } => {
            let x = q.alias("hx");
            let s = q.alias("hs");
            if !drive {
                // check the references to this candidate
                q.push(&format!(
                    "EXISTS (SELECT 1 FROM idx_reference {x} JOIN resources {s} ON {s}.rid = {x}.rid \
                     WHERE {x}.target_type = {a}.rtype AND {x}.target_id = {a}.id AND "
                ));
                let src = vec![source_type.clone()];
                // `+`: look up by target (idx_reference_target), not by the parameter
                pid_cond(q, &x, &src, param, true);
                q.push(&format!(" AND {s}.deleted = 0"));
                for c in inner {
                    q.push(" AND (");
                    clause(q, c, &s, &src, false);
                    q.push(")");
                }
                q.push(")");
                return;
            }
            // inner first: the matching sources, then what they reference
            q.push(&format!(
                "({a}.rtype, {a}.id) IN (SELECT {x}.target_type, {x}.target_id FROM idx_reference {x} \
                 WHERE "
            ));
            let src = vec![source_type.clone()];
            pid_cond(q, &x, &src, param, false);
            q.push(&format!(
                " AND {x}.rid IN (SELECT {s}.rid FROM resources {s} WHERE {s}.deleted = 0 AND +{s}.rtype = "
            ));
            q.text_arg(source_type);
            let lead = driver(inner);
            for (i, c) in inner.iter().enumerate() {
                q.push(" AND (");
                clause(q, c, &s, &src, Some(i) == lead);
                q.push(")");
            }
            q.push("))");
        }
    }
}

/// The SQL expression of a sort key for the resource row `r`.
fn sort_expr(q: &mut Q, field: &SortField, descending: bool) -> String {
    match field {
        SortField::Relevance { field, query } => {
            // FTS5's bm25 rank: lower is more relevant. A literal, like parameter names
            // below: quotes doubled.
            let m = fts_match(*field, query).replace('\'', "''");
            let x = q.alias("f");
            format!(
                "(SELECT bm25(fulltext) FROM fulltext {x} WHERE fulltext MATCH '{m}' AND {x}.rowid = r.rid)"
            )
        }
        SortField::Id => "r.id".into(),
        SortField::LastUpdated => "r.last_updated".into(),
        SortField::Either(a, b) => {
            // SQLite's scalar min/max are NULL when an argument is: coalesce each with
            // the other, so an absent side yields the present one.
            let (a, b) = (sort_expr(q, a, descending), sort_expr(q, b, descending));
            let f = if descending { "max" } else { "min" };
            format!("{f}(coalesce({a}, {b}), coalesce({b}, {a}))")
        }
        SortField::Quantity { param, canonical } => {
            let agg = if descending { "max" } else { "min" };
            let (x, y) = (q.alias("o"), q.alias("o"));
            let (p, c) = (param.replace('\'', "''"), canonical.replace('\'', "''"));
            format!(
                "coalesce((SELECT {agg}({x}.value) FROM idx_number {x} WHERE {x}.rid = r.rid AND {x}.pid IN (SELECT pid FROM params WHERE param = '{c}')), \
                 (SELECT {agg}({y}.value) FROM idx_number {y} WHERE {y}.rid = r.rid AND {y}.pid IN (SELECT pid FROM params WHERE param = '{p}')))"
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
            // the parameter name is a literal from the server's own tables: quote it safely
            let p = param.replace('\'', "''");
            format!(
                "(SELECT {agg}({x}.{col}) FROM {} {x} WHERE {x}.rid = r.rid AND {x}.pid IN (SELECT pid FROM params WHERE param = '{p}'))",
                table(*kind)
            )
        }
    }
}

/// A [`TextQuery`] in FTS5's query language, limited to one column: every term quoted
/// (so nothing the user typed is read as FTS5 syntax), `*` kept as a prefix marker.
fn fts_match(field: TextField, query: &TextQuery) -> String {
    let column = match field {
        TextField::Narrative => "narrative",
        TextField::Content => "content",
    };
    let alternatives: Vec<String> = query
        .any
        .iter()
        .map(|terms| {
            let all: Vec<String> = terms
                .iter()
                .map(|t| {
                    let (word, prefix) = match t.strip_suffix('*') {
                        Some(w) => (w, " *"),
                        None => (t.as_str(), ""),
                    };
                    format!("\"{}\"{prefix}", word.replace('"', "\"\""))
                })
                .collect();
            format!("({})", all.join(" AND "))
        })
        .collect();
    format!("{{{column}}} : ({})", alternatives.join(" OR "))
}

fn value_sql(v: &SortValue) -> Sql {
    match v {
        SortValue::Null => Sql::Null,
        SortValue::Int(i) => Sql::Integer(*i),
        SortValue::Real(f) => Sql::Real(*f),
        SortValue::Text(s) => Sql::Text(s.clone()),
    }
}

/// One component of the total order: a column of the inner query, its direction, and
/// the cursor's value for it.
struct Component {
    col: String,
    descending: bool,
    value: Sql,
}

fn components(q: &SearchQuery, c: &Cursor) -> Vec<Component> {
    let mut out = vec![];
    for (i, key) in q.sort.iter().enumerate() {
        let v = c.values.get(i).cloned().unwrap_or(SortValue::Null);
        let null = matches!(v, SortValue::Null);
        out.push(Component {
            col: format!("n{i}"),
            descending: false,
            value: Sql::Integer(null as i64),
        });
        if !null {
            out.push(Component {
                col: format!("k{i}"),
                descending: key.descending,
                value: value_sql(&v),
            });
        }
    }
    out.push(Component {
        col: "ktype".into(),
        descending: false,
        value: Sql::Text(c.rtype.clone()),
    });
    out.push(Component {
        col: "kid".into(),
        descending: false,
        value: Sql::Text(c.id.clone()),
    });
    out
}

/// `(c1 > v1) OR (c1 = v1 AND c2 > v2) OR …` — strictly after (or before) the cursor.
fn keyset(qs: &mut Q, comps: &[Component], after: bool) {
    qs.push("(");
    for i in 0..comps.len() {
        if i > 0 {
            qs.push(" OR ");
        }
        qs.push("(");
        for c in &comps[..i] {
            qs.push(&format!("{} = ", c.col));
            qs.arg(c.value.clone());
            qs.push(" AND ");
        }
        let c = &comps[i];
        let greater = after != c.descending;
        qs.push(&format!("{} {} ", c.col, if greater { ">" } else { "<" }));
        qs.arg(c.value.clone());
        qs.push(")");
    }
    qs.push(")");
}

const COLS: &str = "v.rtype, v.id, v.version, v.last_updated, v.method, v.body, v.seq";

/// Build the filtered inner query: every matching current resource with its sort keys
/// (columns `n{i}`/`k{i}`), then `cid`: the local id of a matched contained resource
/// when contained resources are returned themselves.
fn inner(q: &SearchQuery) -> Q {
    let mut s = Q::default();
    let mut keys = String::new();
    let mut exprs = vec![];
    for key in &q.sort {
        exprs.push(sort_expr(&mut s, &key.field, key.descending));
    }
    for (i, e) in exprs.iter().enumerate() {
        keys.push_str(&format!(", ({e}) IS NULL AS n{i}, {e} AS k{i}"));
    }
    // R4 search.html#contained: contained resources are matched through their own
    // index rows (stored under negative rids, see the `contained` table); `matches`
    // below is a derived table of them (and, for `both`, of ordinary resources too)
    // with the columns the clauses use.
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
                "SELECT {COLS}, r.rtype AS ktype, r.id AS kid{keys}, NULL AS cid FROM resources r \
                 JOIN resource_versions v ON v.seq = r.seq WHERE r.deleted = 0"
            ));
            "r"
        }
        (_, ContainedType::Contained) => {
            s.push(&format!(
                "SELECT {COLS}, r.rtype AS ktype, \
                 CASE WHEN r.container_key IS NULL THEN r.id ELSE r.container_key || '#' || r.id END AS kid{keys}, \
                 CASE WHEN r.container_key IS NULL THEN NULL ELSE r.id END AS cid FROM "
            ));
            matches(&mut s);
            s.push(" r JOIN resource_versions v ON v.seq = r.seq WHERE r.deleted = 0");
            "r"
        }
        (_, ContainedType::Container) => {
            // the containers of the matches, once each (and, for `both`, the matches
            // that are not contained)
            s.push(&format!(
                "SELECT {COLS}, r.rtype AS ktype, r.id AS kid{keys}, NULL AS cid FROM resources r \
                 JOIN resource_versions v ON v.seq = r.seq WHERE r.deleted = 0 \
                 AND r.rid IN (SELECT m.container FROM "
            ));
            matches(&mut s);
            s.push(" m WHERE m.deleted = 0");
            "m"
        }
    };
    let types: Vec<String> = if q.rtype.is_empty() {
        vec![]
    } else {
        // With criteria, let the index lookups drive the query (`+` keeps SQLite from
        // scanning every resource of the type instead); without, scan the type.
        // (`_id` needs the (rtype, id) index itself.)
        let lead = driver(&q.clauses).map(|i| &q.clauses[i]);
        let plus = if matches!(lead, None | Some(Clause::Id(_))) {
            ""
        } else {
            "+"
        };
        s.push(&format!(" AND {plus}{alias}.rtype = "));
        s.text_arg(&q.rtype);
        vec![q.rtype.clone()]
    };
    let lead = driver(&q.clauses);
    for (i, c) in q.clauses.iter().enumerate() {
        s.push(" AND (");
        clause(&mut s, c, alias, &types, Some(i) == lead);
        s.push(")");
    }
    if alias == "m" {
        s.push(")");
    }
    s
}

/// ` AND {col} IN (types…)` when types are given.
fn in_types(q: &mut Q, col: &str, types: &[String]) {
    if types.is_empty() {
        return;
    }
    q.push(&format!(" AND {col} IN ("));
    for (i, t) in types.iter().enumerate() {
        if i > 0 {
            q.push(",");
        }
        q.text_arg(t);
    }
    q.push(")");
}

/// The clause that should produce the candidates: the most selective kind of lookup
/// (ids, then references, tokens, exact strings, …); the others check candidates.
fn driver(clauses: &[Clause]) -> Option<usize> {
    fn rank(c: &Clause) -> Option<u8> {
        Some(match c {
            Clause::Id(_) => 0,
            Clause::Reference { .. } => 1,
            Clause::Token { .. } => 2,
            Clause::Uri { .. } => 3,
            Clause::String { .. } => 4,
            Clause::Chain { .. } | Clause::Has { .. } => 5,
            Clause::Quantity { .. } | Clause::Number { .. } => 6,
            Clause::Date { .. } => 7,
            // e.g. compartment membership: a union of lookups
            Clause::Any(cs) if !cs.is_empty() && cs.iter().all(|c| rank(c).is_some()) => 1,
            _ => return None,
        })
    }
    clauses
        .iter()
        .enumerate()
        .filter_map(|(i, c)| rank(c).map(|r| (r, i)))
        .min()
        .map(|(_, i)| i)
}

/// `ORDER BY` for the outer query, forwards or reversed.
fn order_by(q: &SearchQuery, reverse: bool) -> String {
    let dir = |desc: bool| if desc != reverse { "DESC" } else { "ASC" };
    let mut parts = vec![];
    for (i, key) in q.sort.iter().enumerate() {
        parts.push(format!("n{i} {}", dir(false)));
        parts.push(format!("k{i} {}", dir(key.descending)));
    }
    parts.push(format!("ktype {}", dir(false)));
    parts.push(format!("kid {}", dir(false)));
    format!(" ORDER BY {}", parts.join(", "))
}

/// The full search: returns the rows and a cursor per row.
pub(crate) fn run(conn: &rusqlite::Connection, q: &SearchQuery) -> crate::Result<SearchPage> {
    use crate::sqlite::db_err;
    let base = inner(q);
    let total = if q.with_total {
        let n: i64 = conn
            .prepare_cached(&format!("SELECT count(*) FROM ({})", base.text))
            .map_err(db_err)?
            .query_row(rusqlite::params_from_iter(base.args.iter()), |r| r.get(0))
            .map_err(db_err)?;
        Some(n as u64)
    } else {
        None
    };
    if q.count == 0 {
        return Ok(SearchPage {
            entries: vec![],
            total,
            more: false,
            before: false,
            first_cursor: None,
            last_cursor: None,
            contained_ids: vec![],
        });
    }
    let mut s = Q {
        text: format!("SELECT * FROM ({}) WHERE 1=1", base.text),
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
    s.arg(Sql::Integer(q.count as i64 + 1));
    if q.page == Page::First && q.offset > 0 {
        s.push(" OFFSET ");
        s.arg(Sql::Integer(q.offset as i64));
    }
    let nkeys = q.sort.len();
    if std::env::var_os("SALUS_DEBUG_SQL").is_some() {
        eprintln!("SQL {} {:?}", s.text, s.args);
    }
    let mut st = conn.prepare_cached(&s.text).map_err(db_err)?;
    let mut rows: Vec<(VersionRecord, Cursor, Option<String>)> = st
        .query_map(rusqlite::params_from_iter(s.args.iter()), |row| {
            let rec = crate::sqlite::row_to_record(row)?;
            let mut values = Vec::with_capacity(nkeys);
            for i in 0..nkeys {
                let v: Sql = row.get(9 + 2 * i + 1)?;
                values.push(match v {
                    Sql::Null => SortValue::Null,
                    Sql::Integer(i) => SortValue::Int(i),
                    Sql::Real(f) => SortValue::Real(f),
                    Sql::Text(t) => SortValue::Text(t),
                    Sql::Blob(_) => SortValue::Null,
                });
            }
            let cid: Option<String> = row.get(9 + 2 * nkeys)?;
            let cursor = Cursor {
                values,
                rtype: row.get(7)?,
                id: row.get(8)?,
            };
            Ok((rec, cursor, cid))
        })
        .map_err(db_err)?
        .collect::<rusqlite::Result<_>>()
        .map_err(db_err)?;
    let overflow = rows.len() > q.count;
    rows.truncate(q.count);
    if reverse {
        rows.reverse();
    }
    let (more, before) = match &q.page {
        Page::First => (overflow, q.offset > 0),
        Page::After(_) => (overflow, true),
        Page::Before(_) => (true, overflow),
        Page::Last => (false, overflow),
    };
    let first_cursor = rows.first().map(|r| r.1.clone());
    let last_cursor = rows.last().map(|r| r.1.clone());
    let contained_ids = if q.contained_type == ContainedType::Contained {
        rows.iter().map(|r| r.2.clone()).collect()
    } else {
        vec![]
    };
    Ok(SearchPage {
        entries: rows.into_iter().map(|r| r.0).collect(),
        contained_ids,
        total,
        more,
        before,
        first_cursor,
        last_cursor,
    })
}
