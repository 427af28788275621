//! A JSONPath evaluator for the dialect the IoMT connector's templates are written in
//! (Json.NET's `SelectTokens`), which differs from RFC 9535 in ways existing templates rely on:
//!
//! - `$..[?(filter)]` tests the node it starts from as well as every descendant, so
//!   `$..[?(@Body.heartrate)]` matches an IoT Hub message's root object;
//! - `@name` inside a filter means `@.name`;
//! - dot-notation names may hold `-` (`$.SystemProperties.iothub-connection-device-id`);
//! - filters are written in parentheses, `?(...)`, with `&&`, `||`, `!`, comparisons and
//!   existence tests (`?(@heartRate)` is true when the member exists, whatever its value).
//!
//! RFC 9535 crates (`serde_json_path` 0.7, `jsonpath-rust` 1.0) reject the second and third forms and
//! never select the root from `..[?()]`, so Salus carries this small evaluator instead.
//! Supported: `$`, `@`, `.name`, `.*`, `..name`, `..*`, `..[...]`, `['name']` (and unions of
//! quoted names), `[n]` (negative counts from the end), `[*]`, `[start:end]`, `[?(...)]`.
//! Evaluation never panics; parsing reports the offending position.

use serde_json::Value;
use std::cmp::Ordering;

/// A parse error: what was expected and the character position where it failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid JSONPath at position {position}: {message}")]
pub struct JsonPathError {
    /// Character offset into the expression.
    pub position: usize,
    /// What went wrong.
    pub message: String,
}

/// A parsed JSONPath expression.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonPath {
    /// `true` for `$…` (absolute), `false` for `@…` (relative to the current node).
    absolute: bool,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Child(Selector),
    Descendant(Selector),
}

#[derive(Debug, Clone, PartialEq)]
enum Selector {
    Names(Vec<String>),
    Wildcard,
    Index(i64),
    Slice(Option<i64>, Option<i64>),
    Filter(Box<Filter>),
}

#[derive(Debug, Clone, PartialEq)]
enum Filter {
    Or(Box<Filter>, Box<Filter>),
    And(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
    Exists(JsonPath),
    Compare(Operand, CmpOp, Operand),
    Literal(Value),
}

#[derive(Debug, Clone, PartialEq)]
enum Operand {
    Path(JsonPath),
    Literal(Value),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// Recursion limit for nested filters and parentheses, so hostile input cannot overflow the stack.
const MAX_DEPTH: usize = 64;

impl JsonPath {
    /// Parses an expression such as `$..[?(@heartRate && @endDate)]` or `$.Body.deviceId`.
    pub fn parse(source: &str) -> Result<JsonPath, JsonPathError> {
        let chars: Vec<char> = source.chars().collect();
        let mut p = Parser {
            chars: &chars,
            pos: 0,
            depth: 0,
        };
        p.skip_ws();
        let path = p.path()?;
        p.skip_ws();
        if p.pos < chars.len() {
            return Err(p.err("unexpected trailing characters"));
        }
        Ok(path)
    }

    /// Every node the path selects from `root`, in document order.
    pub fn select<'a>(&self, root: &'a Value) -> Vec<&'a Value> {
        self.select_from(root, root, 0)
    }

    fn select_from<'a>(&self, root: &'a Value, current: &'a Value, depth: usize) -> Vec<&'a Value> {
        let start = if self.absolute { root } else { current };
        let mut nodes = vec![start];
        for seg in &self.segments {
            let mut next = Vec::new();
            for node in nodes {
                match seg {
                    Segment::Child(sel) => apply(sel, root, node, &mut next, depth),
                    Segment::Descendant(sel) => descend(sel, root, node, &mut next, depth),
                }
            }
            nodes = next;
            if nodes.is_empty() {
                break;
            }
        }
        nodes
    }
}

fn children(v: &Value) -> Vec<&Value> {
    match v {
        Value::Object(m) => m.values().collect(),
        Value::Array(a) => a.iter().collect(),
        _ => Vec::new(),
    }
}

fn apply<'a>(
    sel: &Selector,
    root: &'a Value,
    node: &'a Value,
    out: &mut Vec<&'a Value>,
    depth: usize,
) {
    match sel {
        Selector::Names(names) => {
            if let Value::Object(m) = node {
                for n in names {
                    if let Some(v) = m.get(n) {
                        out.push(v);
                    }
                }
            }
        }
        Selector::Wildcard => out.extend(children(node)),
        Selector::Index(i) => {
            if let Value::Array(a) = node {
                let len = a.len() as i64;
                let idx = if *i < 0 { len + i } else { *i };
                if (0..len).contains(&idx) {
                    if let Some(v) = usize::try_from(idx).ok().and_then(|i| a.get(i)) {
                        out.push(v);
                    }
                }
            }
        }
        Selector::Slice(start, end) => {
            if let Value::Array(a) = node {
                let len = a.len() as i64;
                let norm = |x: i64| if x < 0 { (len + x).max(0) } else { x.min(len) };
                let s = start.map(norm).unwrap_or(0);
                let e = end.map(norm).unwrap_or(len);
                let mut i = s;
                while i < e {
                    if let Some(v) = usize::try_from(i).ok().and_then(|i| a.get(i)) {
                        out.push(v);
                    }
                    i += 1;
                }
            }
        }
        Selector::Filter(f) => {
            // Json.NET filters the children of an array, and an object's own values.
            for c in children(node) {
                if f.test(root, c, depth + 1) {
                    out.push(c);
                }
            }
        }
    }
}

fn descend<'a>(
    sel: &Selector,
    root: &'a Value,
    node: &'a Value,
    out: &mut Vec<&'a Value>,
    depth: usize,
) {
    // Document-order walk over the node and all its descendants.
    let mut stack = vec![node];
    while let Some(n) = stack.pop() {
        match sel {
            // Json.NET's scan filter tests the starting node itself too.
            Selector::Filter(f) => {
                if f.test(root, n, depth + 1) {
                    out.push(n);
                }
            }
            other => apply(other, root, n, out, depth),
        }
        let mut kids = children(n);
        kids.reverse();
        stack.extend(kids);
    }
}

impl Filter {
    fn test(&self, root: &Value, current: &Value, depth: usize) -> bool {
        if depth > MAX_DEPTH {
            return false;
        }
        match self {
            Filter::Or(a, b) => a.test(root, current, depth) || b.test(root, current, depth),
            Filter::And(a, b) => a.test(root, current, depth) && b.test(root, current, depth),
            Filter::Not(a) => !a.test(root, current, depth),
            Filter::Exists(p) => !p.select_from(root, current, depth).is_empty(),
            Filter::Literal(v) => truthy(v),
            Filter::Compare(l, op, r) => {
                let lv = l.values(root, current, depth);
                let rv = r.values(root, current, depth);
                lv.iter().any(|a| rv.iter().any(|b| compare(a, *op, b)))
            }
        }
    }
}

impl Operand {
    fn values<'a>(&'a self, root: &'a Value, current: &'a Value, depth: usize) -> Vec<&'a Value> {
        match self {
            Operand::Literal(v) => vec![v],
            Operand::Path(p) => p.select_from(root, current, depth),
        }
    }
}

fn truthy(v: &Value) -> bool {
    !matches!(v, Value::Null | Value::Bool(false))
}

fn as_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
}

fn compare(a: &Value, op: CmpOp, b: &Value) -> bool {
    let ord = match (a, b) {
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::Null, Value::Null) => Some(Ordering::Equal),
        // Device payloads often carry numbers as strings ("heartRate": "78"): compare them as
        // numbers when one side is a number and the other parses as one.
        (Value::Number(_), _) | (_, Value::Number(_)) => match (as_number(a), as_number(b)) {
            (Some(x), Some(y)) => x.partial_cmp(&y),
            _ => None,
        },
        _ => None,
    };
    match (op, ord) {
        (CmpOp::Eq, Some(o)) => o == Ordering::Equal,
        (CmpOp::Ne, Some(o)) => o != Ordering::Equal,
        (CmpOp::Ne, None) => true,
        (CmpOp::Lt, Some(o)) => o == Ordering::Less,
        (CmpOp::Le, Some(o)) => o != Ordering::Greater,
        (CmpOp::Gt, Some(o)) => o == Ordering::Greater,
        (CmpOp::Ge, Some(o)) => o != Ordering::Less,
        _ => false,
    }
}

struct Parser<'s> {
    chars: &'s [char],
    pos: usize,
    depth: usize,
}

/// Characters that end a dot-notation name.
fn ends_name(c: char) -> bool {
    matches!(
        c,
        '.' | '[' | ']' | '(' | ')' | '=' | '!' | '<' | '>' | '&' | '|' | ',' | '\'' | '"'
    ) || c.is_whitespace()
}

impl Parser<'_> {
    fn err(&self, message: &str) -> JsonPathError {
        JsonPathError {
            position: self.pos,
            message: message.to_string(),
        }
    }
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }
    fn peek_at(&self, n: usize) -> Option<char> {
        self.chars.get(self.pos + n).copied()
    }
    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn eat_str(&mut self, s: &str) -> bool {
        let n = s.chars().count();
        if self.chars.len() >= self.pos + n
            && s.chars().zip(&self.chars[self.pos..]).all(|(a, b)| a == *b)
        {
            self.pos += n;
            true
        } else {
            false
        }
    }
    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }
    fn enter(&mut self) -> Result<(), JsonPathError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            Err(self.err("expression nested too deeply"))
        } else {
            Ok(())
        }
    }

    fn path(&mut self) -> Result<JsonPath, JsonPathError> {
        let absolute = match self.peek() {
            Some('$') => true,
            Some('@') => false,
            _ => return Err(self.err("a path starts with '$' or '@'")),
        };
        self.pos += 1;
        let mut segments = Vec::new();
        // Json.NET: `@name` is `@.name`.
        if !absolute && self.peek().is_some_and(|c| !ends_name(c)) {
            segments.push(Segment::Child(Selector::Names(vec![self.name()?])));
        }
        loop {
            match self.peek() {
                Some('.') if self.peek_at(1) == Some('.') => {
                    self.pos += 2;
                    let sel = match self.peek() {
                        Some('[') => self.bracket()?,
                        Some('*') => {
                            self.pos += 1;
                            Selector::Wildcard
                        }
                        _ => Selector::Names(vec![self.name()?]),
                    };
                    segments.push(Segment::Descendant(sel));
                }
                Some('.') => {
                    self.pos += 1;
                    let sel = match self.peek() {
                        Some('*') => {
                            self.pos += 1;
                            Selector::Wildcard
                        }
                        // Tolerate `$.['name']`.
                        Some('[') => self.bracket()?,
                        _ => Selector::Names(vec![self.name()?]),
                    };
                    segments.push(Segment::Child(sel));
                }
                Some('[') => {
                    let sel = self.bracket()?;
                    segments.push(Segment::Child(sel));
                }
                _ => break,
            }
        }
        Ok(JsonPath { absolute, segments })
    }

    fn name(&mut self) -> Result<String, JsonPathError> {
        let start = self.pos;
        while self.peek().is_some_and(|c| !ends_name(c)) {
            self.pos += 1;
        }
        if self.pos == start {
            return Err(self.err("expected a member name"));
        }
        Ok(self.chars[start..self.pos].iter().collect())
    }

    fn quoted(&mut self) -> Result<String, JsonPathError> {
        let quote = match self.peek() {
            Some(q @ ('\'' | '"')) => q,
            _ => return Err(self.err("expected a quoted string")),
        };
        self.pos += 1;
        let mut s = String::new();
        loop {
            match self.peek() {
                None => return Err(self.err("unterminated string")),
                Some('\\') => {
                    self.pos += 1;
                    match self.peek() {
                        Some(c) => {
                            s.push(c);
                            self.pos += 1;
                        }
                        None => return Err(self.err("unterminated string")),
                    }
                }
                Some(c) if c == quote => {
                    self.pos += 1;
                    return Ok(s);
                }
                Some(c) => {
                    s.push(c);
                    self.pos += 1;
                }
            }
        }
    }

    fn integer(&mut self) -> Option<i64> {
        let start = self.pos;
        if self.peek() == Some('-') {
            self.pos += 1;
        }
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        let text: String = self.chars[start..self.pos].iter().collect();
        match text.parse::<i64>() {
            Ok(n) => Some(n),
            Err(_) => {
                self.pos = start;
                None
            }
        }
    }

    fn bracket(&mut self) -> Result<Selector, JsonPathError> {
        self.pos += 1; // '['
        self.skip_ws();
        let sel = match self.peek() {
            Some('*') => {
                self.pos += 1;
                Selector::Wildcard
            }
            Some('?') => {
                self.pos += 1;
                self.skip_ws();
                self.enter()?;
                let f = if self.eat('(') {
                    let f = self.or()?;
                    self.skip_ws();
                    if !self.eat(')') {
                        return Err(self.err("expected ')' closing the filter"));
                    }
                    f
                } else {
                    self.or()?
                };
                self.depth -= 1;
                Selector::Filter(Box::new(f))
            }
            Some('\'' | '"') => {
                let mut names = vec![self.quoted()?];
                loop {
                    self.skip_ws();
                    if !self.eat(',') {
                        break;
                    }
                    self.skip_ws();
                    names.push(self.quoted()?);
                }
                Selector::Names(names)
            }
            _ => {
                let start = self.integer();
                self.skip_ws();
                if self.eat(':') {
                    self.skip_ws();
                    let end = self.integer();
                    Selector::Slice(start, end)
                } else {
                    match start {
                        Some(i) => Selector::Index(i),
                        None => {
                            return Err(
                                self.err("expected '*', an index, a quoted name or a filter")
                            )
                        }
                    }
                }
            }
        };
        self.skip_ws();
        if !self.eat(']') {
            return Err(self.err("expected ']'"));
        }
        Ok(sel)
    }

    fn or(&mut self) -> Result<Filter, JsonPathError> {
        let mut left = self.and()?;
        loop {
            self.skip_ws();
            if self.eat_str("||") {
                let right = self.and()?;
                left = Filter::Or(Box::new(left), Box::new(right));
            } else {
                return Ok(left);
            }
        }
    }

    fn and(&mut self) -> Result<Filter, JsonPathError> {
        let mut left = self.unary()?;
        loop {
            self.skip_ws();
            if self.eat_str("&&") {
                let right = self.unary()?;
                left = Filter::And(Box::new(left), Box::new(right));
            } else {
                return Ok(left);
            }
        }
    }

    fn unary(&mut self) -> Result<Filter, JsonPathError> {
        self.skip_ws();
        self.enter()?;
        let f = if self.peek() == Some('!') && self.peek_at(1) != Some('=') {
            self.pos += 1;
            Filter::Not(Box::new(self.unary()?))
        } else if self.eat('(') {
            let f = self.or()?;
            self.skip_ws();
            if !self.eat(')') {
                return Err(self.err("expected ')'"));
            }
            f
        } else {
            self.comparison()?
        };
        self.depth -= 1;
        Ok(f)
    }

    fn comparison(&mut self) -> Result<Filter, JsonPathError> {
        let left = self.operand()?;
        self.skip_ws();
        let op = if self.eat_str("==") {
            Some(CmpOp::Eq)
        } else if self.eat_str("!=") {
            Some(CmpOp::Ne)
        } else if self.eat_str("<=") {
            Some(CmpOp::Le)
        } else if self.eat_str(">=") {
            Some(CmpOp::Ge)
        } else if self.eat('<') {
            Some(CmpOp::Lt)
        } else if self.eat('>') {
            Some(CmpOp::Gt)
        } else if self.eat('=') {
            // Json.NET accepts a single '=' for equality.
            Some(CmpOp::Eq)
        } else {
            None
        };
        match op {
            None => Ok(match left {
                Operand::Path(p) => Filter::Exists(p),
                Operand::Literal(v) => Filter::Literal(v),
            }),
            Some(op) => {
                self.skip_ws();
                let right = self.operand()?;
                Ok(Filter::Compare(left, op, right))
            }
        }
    }

    fn operand(&mut self) -> Result<Operand, JsonPathError> {
        self.skip_ws();
        match self.peek() {
            Some('$' | '@') => Ok(Operand::Path(self.path()?)),
            Some('\'' | '"') => Ok(Operand::Literal(Value::String(self.quoted()?))),
            Some(c) if c == '-' || c.is_ascii_digit() => {
                let start = self.pos;
                self.pos += 1;
                while self
                    .peek()
                    .is_some_and(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
                {
                    self.pos += 1;
                }
                let text: String = self.chars[start..self.pos].iter().collect();
                let n: f64 = text.parse().map_err(|_| JsonPathError {
                    position: start,
                    message: format!("invalid number '{text}'"),
                })?;
                serde_json::Number::from_f64(n)
                    .map(|n| Operand::Literal(Value::Number(n)))
                    .ok_or_else(|| self.err("number out of range"))
            }
            _ => {
                for (word, v) in [
                    ("true", Value::Bool(true)),
                    ("false", Value::Bool(false)),
                    ("null", Value::Null),
                ] {
                    if self.eat_str(word) {
                        return Ok(Operand::Literal(v));
                    }
                }
                Err(self.err("expected a path, a string, a number, true, false or null"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sel(path: &str, v: &Value) -> Vec<Value> {
        JsonPath::parse(path)
            .unwrap()
            .select(v)
            .into_iter()
            .cloned()
            .collect()
    }

    #[test]
    fn scan_filter_includes_root() {
        let v = json!({"Body": {"heartrate": "203"}, "x": {"Body": {"heartrate": 1}}});
        let got = sel("$..[?(@Body.heartrate)]", &v);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], v);
    }

    #[test]
    fn json_net_existence_and_names_with_dashes() {
        let v = json!({"SystemProperties": {"iothub-connection-device-id": "dev-1"}});
        assert_eq!(
            sel("$.SystemProperties.iothub-connection-device-id", &v),
            vec![json!("dev-1")]
        );
        assert_eq!(
            sel("$['SystemProperties']['iothub-connection-device-id']", &v),
            vec![json!("dev-1")]
        );
    }

    #[test]
    fn filters_and_comparisons() {
        let v = json!({"Body": [
            {"height": "78", "unit": "inches"},
            {"height": "1.9", "unit": "meters"},
            {"hr": 130}, {"hr": "90"}
        ]});
        assert_eq!(sel("$..[?(@unit == 'inches')]", &v).len(), 1);
        assert_eq!(sel("$..[?(@unit != 'inches' && @height)]", &v).len(), 1);
        assert_eq!(sel("$..[?(@hr > 100)]", &v), vec![json!({"hr": 130})]);
        assert_eq!(sel("$..[?(@hr >= 90)]", &v).len(), 2);
        assert_eq!(sel("$..[?(!@hr && @unit)]", &v).len(), 2);
        assert_eq!(sel("$..[?(@hr || @unit == 'meters')]", &v).len(), 3);
        assert_eq!(sel("$.Body[?(@.hr)]", &v).len(), 2);
        assert_eq!(sel("$.Body[-1].hr", &v), vec![json!("90")]);
        assert_eq!(sel("$.Body[0:2]", &v).len(), 2);
        assert_eq!(sel("$.Body[*].unit", &v).len(), 2);
        assert_eq!(sel("$..unit", &v).len(), 2);
        assert_eq!(sel("$.Body.*", &v).len(), 4);
    }

    #[test]
    fn existence_is_true_for_null_members() {
        let v = json!({"a": {"x": null}});
        assert_eq!(sel("$..[?(@x)]", &v).len(), 1);
    }

    #[test]
    fn parse_errors_name_position() {
        for bad in [
            "",
            "heartrate",
            "$[",
            "$..[?(@a",
            "$[?(@a ==)]",
            "$['a",
            "$.a]",
            "$[abc]",
        ] {
            let e = JsonPath::parse(bad).unwrap_err();
            assert!(
                e.to_string().starts_with("invalid JSONPath at position"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn deep_nesting_is_rejected_not_overflowed() {
        let deep = format!("$[?({}@a{})]", "(".repeat(500), ")".repeat(500));
        assert!(JsonPath::parse(&deep).is_err());
        let nots = format!("$[?({}@a)]", "!".repeat(500));
        assert!(JsonPath::parse(&nots).is_err());
    }
}
