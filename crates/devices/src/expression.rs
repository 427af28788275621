//! Template expressions: JSONPath (the connector's Json.NET dialect, [`crate::jsonpath`]) or
//! JMESPath (the `jmespath` crate, with the connector's extra functions registered).
//!
//! A template writes an expression either as a string, which uses the template's default
//! language, or as an object `{"value": "...", "language": "JsonPath" | "JmesPath"}`.

use crate::jsonpath::JsonPath;
use serde_json::Value;
use std::fmt;
use std::sync::{Arc, LazyLock};

/// Expression languages a template may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Language {
    /// JSONPath, Json.NET dialect.
    JsonPath,
    /// JMESPath (<https://jmespath.org>), plus the connector's arithmetic and time functions.
    JmesPath,
}

impl Language {
    /// Parses a `language` / `defaultExpressionLanguage` value, case-insensitively.
    pub fn parse(s: &str) -> Option<Language> {
        match s.to_ascii_lowercase().as_str() {
            "jsonpath" => Some(Language::JsonPath),
            "jmespath" => Some(Language::JmesPath),
            _ => None,
        }
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Language::JsonPath => "JsonPath",
            Language::JmesPath => "JmesPath",
        })
    }
}

/// A compiled template expression.
#[derive(Clone)]
pub struct Expression {
    source: String,
    compiled: Compiled,
}

#[derive(Clone)]
enum Compiled {
    JsonPath(JsonPath),
    JmesPath(Arc<jmespath::ast::Ast>),
}

impl fmt::Debug for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({:?})", self.language(), self.source)
    }
}

/// The JMESPath runtime: the standard functions plus those the connector documents for
/// calculated templates (`add`, `subtract`, `multiply`, `divide`, `pow`, `fromUnixTimestamp`,
/// `fromUnixTimestampMs`, `insertString`).
static RUNTIME: LazyLock<jmespath::Runtime> = LazyLock::new(|| {
    let mut rt = jmespath::Runtime::new();
    rt.register_builtin_functions();
    custom::register(&mut rt);
    rt
});

impl Expression {
    /// Compiles `source` in `language`; the error text says why it does not compile.
    pub fn compile(source: &str, language: Language) -> Result<Expression, String> {
        if source.trim().is_empty() {
            return Err("expression is empty".into());
        }
        let compiled = match language {
            Language::JsonPath => {
                Compiled::JsonPath(JsonPath::parse(source).map_err(|e| e.to_string())?)
            }
            Language::JmesPath => {
                if nesting(source) > MAX_NESTING {
                    return Err(format!(
                        "JMESPath expression nested deeper than {MAX_NESTING} levels"
                    ));
                }
                let mut ast = jmespath::parse(source)
                    .map_err(|e| format!("invalid JMESPath: {}", one_line(&e.to_string())))?;
                fix_literals(&mut ast);
                Compiled::JmesPath(Arc::new(ast))
            }
        };
        Ok(Expression {
            source: source.to_string(),
            compiled,
        })
    }

    /// The expression text as written in the template.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The expression's language.
    pub fn language(&self) -> Language {
        match self.compiled {
            Compiled::JsonPath(_) => Language::JsonPath,
            Compiled::JmesPath(_) => Language::JmesPath,
        }
    }

    /// Every match of the expression against `data`. A JMESPath result that is an array
    /// yields its elements (that is how a type-match expression returns several tokens);
    /// `null` yields nothing. Errors (a function applied to the wrong type) are returned.
    pub fn matches(&self, data: &Value) -> Result<Vec<Value>, String> {
        match &self.compiled {
            Compiled::JsonPath(p) => Ok(p.select(data).into_iter().cloned().collect()),
            Compiled::JmesPath(e) => match jmes_search(&self.source, e, data)? {
                Value::Null => Ok(Vec::new()),
                Value::Array(items) => Ok(items),
                other => Ok(vec![other]),
            },
        }
    }

    /// The first value the expression yields on `data` (a JMESPath array result is returned
    /// whole); `None` when it yields nothing or `null`.
    pub fn first(&self, data: &Value) -> Result<Option<Value>, String> {
        match &self.compiled {
            Compiled::JsonPath(p) => Ok(p.select(data).into_iter().find(|v| !v.is_null()).cloned()),
            Compiled::JmesPath(e) => match jmes_search(&self.source, e, data)? {
                Value::Null => Ok(None),
                other => Ok(Some(other)),
            },
        }
    }
}

/// Deepest bracket nesting accepted in a JMESPath expression: the `jmespath` parser recurses
/// per level, so hostile input must not reach it.
const MAX_NESTING: usize = 64;

fn nesting(s: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    for c in s.chars() {
        match c {
            '(' | '[' | '{' => {
                depth += 1;
                max = max.max(depth);
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    // Operators chain recursively too (`!!!!a`, `a|b|c…`): count them as levels.
    max.max(
        s.chars()
            .filter(|c| matches!(c, '!' | '|' | '&' | '.'))
            .count()
            / 4,
    )
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn jmes_search(source: &str, ast: &jmespath::ast::Ast, data: &Value) -> Result<Value, String> {
    let mut ctx = jmespath::Context::new(source, &RUNTIME);
    let result = jmespath::interpret(&to_variable(data), ast, &mut ctx)
        .map_err(|err| format!("JMESPath evaluation failed: {}", one_line(&err.to_string())))?;
    Ok(from_variable(&result))
}

/// serde_json's `arbitrary_precision` (enabled in this workspace) hands numbers to
/// deserializers as a one-member map; the `jmespath` crate then reads a literal such as
/// `` `0.0254` `` as an object. Put such literals back to numbers after parsing.
fn fix_literals(ast: &mut jmespath::ast::Ast) {
    use jmespath::ast::Ast;
    match ast {
        Ast::Literal { value, .. } => *value = fix_variable(value),
        Ast::Comparison { lhs, rhs, .. }
        | Ast::Projection { lhs, rhs, .. }
        | Ast::And { lhs, rhs, .. }
        | Ast::Or { lhs, rhs, .. }
        | Ast::Subexpr { lhs, rhs, .. } => {
            fix_literals(lhs);
            fix_literals(rhs);
        }
        Ast::Condition {
            predicate, then, ..
        } => {
            fix_literals(predicate);
            fix_literals(then);
        }
        Ast::Expref { ast, .. } => fix_literals(ast),
        Ast::Flatten { node, .. } | Ast::Not { node, .. } | Ast::ObjectValues { node, .. } => {
            fix_literals(node)
        }
        Ast::Function { args, .. } => args.iter_mut().for_each(fix_literals),
        Ast::MultiList { elements, .. } => elements.iter_mut().for_each(fix_literals),
        Ast::MultiHash { elements, .. } => elements
            .iter_mut()
            .for_each(|kv| fix_literals(&mut kv.value)),
        Ast::Identity { .. } | Ast::Field { .. } | Ast::Index { .. } | Ast::Slice { .. } => {}
    }
}

fn fix_variable(v: &jmespath::Rcvar) -> jmespath::Rcvar {
    use jmespath::{Rcvar, Variable};
    match &**v {
        Variable::Object(o) => {
            if o.len() == 1 {
                if let Some(Variable::String(s)) =
                    o.get("$serde_json::private::Number").map(|x| &**x)
                {
                    if let Ok(n) = serde_json::from_str::<serde_json::Number>(s) {
                        return Rcvar::new(Variable::Number(n));
                    }
                }
            }
            Rcvar::new(Variable::Object(
                o.iter()
                    .map(|(k, x)| (k.clone(), fix_variable(x)))
                    .collect(),
            ))
        }
        Variable::Array(a) => Rcvar::new(Variable::Array(a.iter().map(fix_variable).collect())),
        _ => v.clone(),
    }
}

// Converted by hand: the crate's serde-based conversion does not understand serde_json's
// `arbitrary_precision` numbers, which the workspace enables.
fn to_variable(v: &Value) -> jmespath::Rcvar {
    use jmespath::{Rcvar, Variable};
    Rcvar::new(match v {
        Value::Null => Variable::Null,
        Value::Bool(b) => Variable::Bool(*b),
        Value::Number(n) => Variable::Number(n.clone()),
        Value::String(s) => Variable::String(s.clone()),
        Value::Array(a) => Variable::Array(a.iter().map(to_variable).collect()),
        Value::Object(o) => {
            Variable::Object(o.iter().map(|(k, v)| (k.clone(), to_variable(v))).collect())
        }
    })
}

fn from_variable(v: &jmespath::Variable) -> Value {
    use jmespath::Variable;
    match v {
        Variable::Null | Variable::Expref(_) => Value::Null,
        Variable::Bool(b) => Value::Bool(*b),
        Variable::Number(n) => Value::Number(n.clone()),
        Variable::String(s) => Value::String(s.clone()),
        Variable::Array(a) => Value::Array(a.iter().map(|x| from_variable(x)).collect()),
        Variable::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| (k.clone(), from_variable(x)))
                .collect(),
        ),
    }
}

mod custom {
    use jmespath::functions::{ArgumentType, CustomFunction, Signature};
    use jmespath::{Context, ErrorReason, JmespathError, Rcvar, Runtime, RuntimeError, Variable};
    use time::format_description::well_known::Rfc3339;
    use time::OffsetDateTime;

    fn num(v: f64, ctx: &Context<'_>) -> Result<Rcvar, JmespathError> {
        match serde_json::Number::from_f64(v) {
            Some(n) => Ok(Rcvar::new(Variable::Number(n))),
            None => Err(fail(ctx, "result is not a finite number")),
        }
    }

    fn fail(ctx: &Context<'_>, msg: &str) -> JmespathError {
        JmespathError::from_ctx(
            ctx,
            ErrorReason::Runtime(RuntimeError::InvalidType {
                expected: msg.to_string(),
                actual: String::new(),
                position: 0,
            }),
        )
    }

    fn arg(args: &[Rcvar], i: usize) -> f64 {
        args.get(i).and_then(|v| v.as_number()).unwrap_or(f64::NAN)
    }

    fn binary(rt: &mut Runtime, name: &str, op: fn(f64, f64) -> f64) {
        rt.register_function(
            name,
            Box::new(CustomFunction::new(
                Signature::new(vec![ArgumentType::Number, ArgumentType::Number], None),
                Box::new(move |args: &[Rcvar], ctx: &mut Context<'_>| {
                    num(op(arg(args, 0), arg(args, 1)), ctx)
                }),
            )),
        );
    }

    fn from_unix(rt: &mut Runtime, name: &str, scale: f64) {
        rt.register_function(
            name,
            Box::new(CustomFunction::new(
                Signature::new(vec![ArgumentType::Number], None),
                Box::new(move |args: &[Rcvar], ctx: &mut Context<'_>| {
                    let nanos = arg(args, 0) * scale;
                    if !nanos.is_finite() || nanos.abs() > 1e20 {
                        return Err(fail(ctx, "a Unix timestamp in range"));
                    }
                    let t = OffsetDateTime::from_unix_timestamp_nanos(nanos as i128)
                        .map_err(|_| fail(ctx, "a Unix timestamp in range"))?;
                    let s = t
                        .format(&Rfc3339)
                        .map_err(|_| fail(ctx, "a formattable time"))?;
                    Ok(Rcvar::new(Variable::String(s)))
                }),
            )),
        );
    }

    pub(super) fn register(rt: &mut Runtime) {
        binary(rt, "add", |a, b| a + b);
        binary(rt, "subtract", |a, b| a - b);
        binary(rt, "multiply", |a, b| a * b);
        binary(rt, "divide", |a, b| if b == 0.0 { f64::NAN } else { a / b });
        binary(rt, "pow", f64::powf);
        from_unix(rt, "fromUnixTimestamp", 1e9);
        from_unix(rt, "fromUnixTimestampMs", 1e6);
        rt.register_function(
            "insertString",
            Box::new(CustomFunction::new(
                Signature::new(
                    vec![
                        ArgumentType::String,
                        ArgumentType::String,
                        ArgumentType::Number,
                    ],
                    None,
                ),
                Box::new(|args: &[Rcvar], ctx: &mut Context<'_>| {
                    let original = args
                        .first()
                        .and_then(|v| v.as_string().cloned())
                        .unwrap_or_default();
                    let insert = args
                        .get(1)
                        .and_then(|v| v.as_string().cloned())
                        .unwrap_or_default();
                    let pos = arg(args, 2);
                    let len = original.chars().count();
                    if !(pos >= 0.0 && pos <= len as f64 && pos.fract() == 0.0) {
                        return Err(fail(ctx, "an insert position within the string"));
                    }
                    let at = pos as usize;
                    let mut out: String = original.chars().take(at).collect();
                    out.push_str(&insert);
                    out.extend(original.chars().skip(at));
                    Ok(Rcvar::new(Variable::String(out)))
                }),
            )),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn jmespath_custom_functions() {
        let e = Expression::compile(
            "multiply(to_number(matchedToken.height), `0.0254`)",
            Language::JmesPath,
        )
        .unwrap();
        let v = e
            .first(&json!({"matchedToken": {"height": "78"}}))
            .unwrap()
            .unwrap();
        assert!((v.as_f64().unwrap() - 1.9812).abs() < 1e-9);
        let e = Expression::compile("fromUnixTimestamp(t)", Language::JmesPath).unwrap();
        assert_eq!(
            e.first(&json!({"t": 0})).unwrap(),
            Some(json!("1970-01-01T00:00:00Z"))
        );
        let e = Expression::compile("fromUnixTimestampMs(t)", Language::JmesPath).unwrap();
        assert_eq!(
            e.first(&json!({"t": 1500})).unwrap(),
            Some(json!("1970-01-01T00:00:01.5Z"))
        );
        let e = Expression::compile("insertString(s, '-', `2`)", Language::JmesPath).unwrap();
        assert_eq!(
            e.first(&json!({"s": "abcd"})).unwrap(),
            Some(json!("ab-cd"))
        );
        for (expr, want) in [
            ("add(`1`, `2`)", 3.0),
            ("subtract(`5`, `2`)", 3.0),
            ("divide(`9`, `3`)", 3.0),
            ("pow(`2`, `3`)", 8.0),
        ] {
            let e = Expression::compile(expr, Language::JmesPath).unwrap();
            assert_eq!(
                e.first(&json!({})).unwrap().and_then(|v| v.as_f64()),
                Some(want),
                "{expr}"
            );
        }
    }

    #[test]
    fn jmespath_errors_are_values_not_panics() {
        let e = Expression::compile("divide(`1`, `0`)", Language::JmesPath).unwrap();
        assert!(e.first(&json!({})).is_err());
        let e = Expression::compile("multiply(a, `2`)", Language::JmesPath).unwrap();
        assert!(e.first(&json!({"a": "x"})).is_err());
        let e = Expression::compile("nosuchfn(a)", Language::JmesPath).unwrap();
        assert!(e.first(&json!({"a": 1})).is_err());
        assert!(Expression::compile("to_array(@)[?", Language::JmesPath).is_err());
        assert!(Expression::compile("  ", Language::JsonPath).is_err());
        let deep = format!("{}a{}", "(".repeat(10_000), ")".repeat(10_000));
        assert!(Expression::compile(&deep, Language::JmesPath)
            .unwrap_err()
            .contains("nested deeper"));
        let nots = format!("{}a", "!".repeat(100_000));
        assert!(Expression::compile(&nots, Language::JmesPath).is_err());
    }

    #[test]
    fn jmespath_array_results_are_matches() {
        let e = Expression::compile("to_array(@)[?heartrate]", Language::JmesPath).unwrap();
        let m = e.matches(&json!({"heartrate": 60, "device": "d"})).unwrap();
        assert_eq!(m, vec![json!({"heartrate": 60, "device": "d"})]);
        assert!(e.matches(&json!({"steps": 1})).unwrap().is_empty());
    }
}
