//! Recursive-descent parser with precedence climbing, producing the [`ast`](crate::ast).
//!
//! Precedence, loosest first: `implies`; `or` `xor`; `and`; `in` `contains`;
//! `=` `~` `!=` `!~`; `is` `as`; `<` `>` `<=` `>=`; `|`; `+` `-` `&`; `*` `/` `div` `mod`;
//! unary `+` `-`; then `.` invocations and `[]` indexers. The place of `is`/`as` (between
//! equality and comparison) follows the reference implementation and the official test
//! suite (`1 > 2 is Boolean` is `(1 > 2) is Boolean`); write parentheses to be explicit.
//!
//! Nesting depth is bounded so no input can exhaust the stack.

use crate::ast::{BinOp, Call, Func, Ident, Node, TypeSpec};
use crate::datetime::{CalendarUnit, DateTime, Time};
use crate::error::ParseError;
use crate::lexer::{tokenize, TemporalKind, Tok, Token};
use crate::model::model;
use crate::quantity::Quantity;
use crate::value::{Item, SystemType};
use rust_decimal::Decimal;
use std::str::FromStr;

/// Deepest nesting accepted (parentheses, operator chains and `.`/`[]` chains all count).
const MAX_DEPTH: usize = 128;

pub(crate) fn parse(src: &str) -> Result<Node, ParseError> {
    let tokens = tokenize(src)?;
    let mut p = Parser {
        tokens,
        i: 0,
        depth: 0,
    };
    let node = p.expr(0)?;
    let t = p.peek();
    if t.tok != Tok::Eof {
        return Err(ParseError::new(
            format!("unexpected {}", describe(&t.tok)),
            t.pos,
        ));
    }
    Ok(node)
}

struct Parser {
    tokens: Vec<Token>,
    i: usize,
    depth: usize,
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Ident(s) | Tok::QuotedIdent(s) => format!("identifier '{s}'"),
        Tok::Str(_) => "string literal".into(),
        Tok::Number(n) => format!("number {n}"),
        Tok::Temporal(..) => "date/time literal".into(),
        Tok::Var(v) => format!("variable %{v}"),
        Tok::Special(s) => format!("${s}"),
        Tok::Eof => "end of expression".into(),
        other => format!("'{}'", punct(other)),
    }
}

fn punct(t: &Tok) -> &'static str {
    match t {
        Tok::Dot => ".",
        Tok::LParen => "(",
        Tok::RParen => ")",
        Tok::LBracket => "[",
        Tok::RBracket => "]",
        Tok::LBrace => "{",
        Tok::RBrace => "}",
        Tok::Comma => ",",
        Tok::Plus => "+",
        Tok::Minus => "-",
        Tok::Star => "*",
        Tok::Slash => "/",
        Tok::Amp => "&",
        Tok::Pipe => "|",
        Tok::Eq => "=",
        Tok::NotEq => "!=",
        Tok::Tilde => "~",
        Tok::NotTilde => "!~",
        Tok::Lt => "<",
        Tok::Le => "<=",
        Tok::Gt => ">",
        Tok::Ge => ">=",
        _ => "?",
    }
}

/// Binding power of a binary operator token (higher binds tighter); `is`/`as` are marked
/// with `true`.
fn binop(t: &Tok) -> Option<(BinOp, u8, bool)> {
    Some(match t {
        Tok::Ident(k) => match k.as_str() {
            "implies" => (BinOp::Implies, 1, false),
            "or" => (BinOp::Or, 2, false),
            "xor" => (BinOp::Xor, 2, false),
            "and" => (BinOp::And, 3, false),
            "in" => (BinOp::In, 4, false),
            "contains" => (BinOp::Contains, 4, false),
            "is" => (BinOp::Eq, 6, true),
            "as" => (BinOp::NotEq, 6, true),
            "div" => (BinOp::IntDiv, 10, false),
            "mod" => (BinOp::Mod, 10, false),
            _ => return None,
        },
        Tok::Eq => (BinOp::Eq, 5, false),
        Tok::NotEq => (BinOp::NotEq, 5, false),
        Tok::Tilde => (BinOp::Equiv, 5, false),
        Tok::NotTilde => (BinOp::NotEquiv, 5, false),
        Tok::Lt => (BinOp::Lt, 7, false),
        Tok::Le => (BinOp::Le, 7, false),
        Tok::Gt => (BinOp::Gt, 7, false),
        Tok::Ge => (BinOp::Ge, 7, false),
        Tok::Pipe => (BinOp::Union, 8, false),
        Tok::Plus => (BinOp::Add, 9, false),
        Tok::Minus => (BinOp::Sub, 9, false),
        Tok::Amp => (BinOp::Concat, 9, false),
        Tok::Star => (BinOp::Mul, 10, false),
        Tok::Slash => (BinOp::Div, 10, false),
        _ => return None,
    })
}

/// Resolve a type name with an optional namespace.
pub(crate) fn resolve_type(namespace: Option<&str>, name: &str) -> TypeSpec {
    let fhir = || {
        let m = model();
        m.type_id(name).map(|t| m.ty(t).name)
    };
    match namespace {
        Some("System") => SystemType::from_name(name)
            .map(TypeSpec::System)
            .unwrap_or_else(|| TypeSpec::Unknown(format!("System.{name}"))),
        Some("FHIR") => fhir()
            .map(TypeSpec::Fhir)
            .unwrap_or_else(|| TypeSpec::Unknown(format!("FHIR.{name}"))),
        Some(ns) => TypeSpec::Unknown(format!("{ns}.{name}")),
        None => {
            let (f, s) = (fhir(), SystemType::from_name(name));
            if f.is_none() && s.is_none() {
                TypeSpec::Unknown(name.to_string())
            } else {
                TypeSpec::Any { fhir: f, system: s }
            }
        }
    }
}

fn ident(name: String) -> Ident {
    let type_filter = name
        .starts_with(|c: char| c.is_ascii_uppercase())
        .then(|| model().type_id(&name).map(|t| model().ty(t).name))
        .flatten()
        .map(TypeSpec::Fhir);
    Ident {
        name: name.into_boxed_str(),
        type_filter,
    }
}

fn number_literal(text: &str, pos: usize) -> Result<Item<'static>, ParseError> {
    if text.contains('.') {
        Decimal::from_str(text)
            .map(Item::decimal)
            .map_err(|_| ParseError::new(format!("decimal literal out of range: {text}"), pos))
    } else {
        text.parse::<i64>()
            .map(Item::integer)
            .map_err(|_| ParseError::new(format!("integer literal out of range: {text}"), pos))
    }
}

impl Parser {
    fn peek(&self) -> &Token {
        &self.tokens[self.i.min(self.tokens.len() - 1)]
    }

    fn peek_at(&self, off: usize) -> &Tok {
        &self.tokens[(self.i + off).min(self.tokens.len() - 1)].tok
    }

    fn next(&mut self) -> Token {
        let t = self.peek().clone();
        if self.i < self.tokens.len() {
            self.i += 1;
        }
        t
    }

    fn expect(&mut self, want: Tok) -> Result<(), ParseError> {
        let t = self.next();
        if t.tok == want {
            Ok(())
        } else {
            Err(ParseError::new(
                format!("expected '{}', found {}", punct(&want), describe(&t.tok)),
                t.pos,
            ))
        }
    }

    fn enter(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ParseError::new(
                "expression nested too deeply",
                self.peek().pos,
            ));
        }
        Ok(())
    }

    fn expr(&mut self, min: u8) -> Result<Node, ParseError> {
        self.enter()?;
        let mut lhs = self.unary()?;
        let mut chain = 0;
        while let Some((op, level, is_type_op)) = binop(&self.peek().tok) {
            if level < min {
                break;
            }
            self.enter()?;
            chain += 1;
            let op_tok = self.next();
            if is_type_op {
                let spec = self.type_specifier()?;
                lhs = match &op_tok.tok {
                    Tok::Ident(k) if k == "is" => Node::Is(Box::new(lhs), spec),
                    _ => Node::As(Box::new(lhs), spec),
                };
                continue;
            }
            let rhs = self.expr(level + 1)?;
            lhs = Node::Binary(op, Box::new(lhs), Box::new(rhs));
        }
        self.depth -= 1 + chain;
        Ok(lhs)
    }

    fn type_specifier(&mut self) -> Result<TypeSpec, ParseError> {
        let t = self.next();
        let first = match t.tok {
            Tok::Ident(s) | Tok::QuotedIdent(s) => s,
            other => {
                return Err(ParseError::new(
                    format!("expected a type name, found {}", describe(&other)),
                    t.pos,
                ))
            }
        };
        if self.peek().tok == Tok::Dot {
            if let Tok::Ident(_) | Tok::QuotedIdent(_) = self.peek_at(1) {
                self.next();
                let t2 = self.next();
                if let Tok::Ident(s) | Tok::QuotedIdent(s) = t2.tok {
                    return Ok(resolve_type(Some(&first), &s));
                }
            }
        }
        Ok(resolve_type(None, &first))
    }

    fn unary(&mut self) -> Result<Node, ParseError> {
        match self.peek().tok {
            Tok::Minus | Tok::Plus => {
                let neg = self.next().tok == Tok::Minus;
                self.enter()?;
                let operand = self.unary()?;
                self.depth -= 1;
                if !neg {
                    return Ok(Node::Pos(Box::new(operand)));
                }
                // Fold negative numeric literals.
                Ok(match operand {
                    Node::Literal(Item(crate::value::Val::Integer(i))) if i != i64::MIN => {
                        Node::Literal(Item::integer(-i))
                    }
                    Node::Literal(Item(crate::value::Val::Decimal(d))) => {
                        Node::Literal(Item::decimal(-d))
                    }
                    other => Node::Neg(Box::new(other)),
                })
            }
            _ => self.postfix(),
        }
    }

    fn postfix(&mut self) -> Result<Node, ParseError> {
        let mut node = self.term()?;
        let mut chain = 0;
        loop {
            if matches!(self.peek().tok, Tok::Dot | Tok::LBracket) {
                self.enter()?;
                chain += 1;
            }
            match self.peek().tok {
                Tok::Dot => {
                    self.next();
                    let t = self.next();
                    let name = match t.tok {
                        Tok::Ident(s) | Tok::QuotedIdent(s) => s,
                        other => {
                            return Err(ParseError::new(
                                format!("expected a name after '.', found {}", describe(&other)),
                                t.pos,
                            ))
                        }
                    };
                    if self.peek().tok == Tok::LParen {
                        node = self.call(Some(node), name, t.pos)?;
                    } else {
                        node = Node::Member(Box::new(node), ident(name));
                    }
                }
                Tok::LBracket => {
                    self.next();
                    let idx = self.expr(0)?;
                    self.expect(Tok::RBracket)?;
                    node = Node::Index(Box::new(node), Box::new(idx));
                }
                _ => {
                    self.depth -= chain;
                    return Ok(node);
                }
            }
        }
    }

    fn call(&mut self, target: Option<Node>, name: String, pos: usize) -> Result<Node, ParseError> {
        self.expect(Tok::LParen)?;
        let mut args = Vec::new();
        if self.peek().tok != Tok::RParen {
            loop {
                args.push(self.expr(0)?);
                if self.peek().tok == Tok::Comma {
                    self.next();
                    continue;
                }
                break;
            }
        }
        self.expect(Tok::RParen)?;
        let func = Func::lookup(&name);
        let (min, max) = func.arity();
        if args.len() < min || args.len() > max {
            let expected = if min == max {
                format!("{min}")
            } else {
                format!("{min} to {max}")
            };
            return Err(ParseError::new(
                format!(
                    "function '{name}' takes {expected} argument(s), got {}",
                    args.len()
                ),
                pos,
            ));
        }
        let mut type_arg = None;
        if matches!(func, Func::Is | Func::As | Func::OfType) {
            type_arg = Some(match args.pop() {
                Some(Node::Ident(id)) => resolve_type(None, &id.name),
                Some(Node::Member(base, id)) => match *base {
                    Node::Ident(ns) => resolve_type(Some(&ns.name), &id.name),
                    _ => return Err(ParseError::new("expected a type name", pos)),
                },
                _ => return Err(ParseError::new("expected a type name", pos)),
            });
        }
        let mut regex = None;
        if matches!(func, Func::Matches | Func::ReplaceMatches) {
            if let Some(Node::Literal(lit)) = args.first() {
                if let Some(pattern) = lit.as_str() {
                    regex = Some(crate::functions::compile_regex(pattern).map_err(|e| {
                        ParseError::new(format!("invalid regular expression: {e}"), pos)
                    })?);
                }
            }
        }
        Ok(Node::Call(Box::new(Call {
            target,
            func,
            name: name.into_boxed_str(),
            args,
            type_arg,
            regex,
        })))
    }

    fn term(&mut self) -> Result<Node, ParseError> {
        let t = self.next();
        match t.tok {
            Tok::Number(text) => {
                let lit = number_literal(&text, t.pos)?;
                // Quantity literal: a number followed by a unit string or calendar keyword.
                match &self.peek().tok {
                    Tok::Str(unit) => {
                        let unit = unit.clone();
                        self.next();
                        let value = lit.as_decimal().unwrap_or_default();
                        Ok(Node::Literal(Item::quantity(Quantity::new(value, unit))))
                    }
                    Tok::Ident(word) if CalendarUnit::from_keyword(word).is_some() => {
                        let word = word.clone();
                        self.next();
                        let value = lit.as_decimal().unwrap_or_default();
                        Ok(Node::Literal(Item::quantity(Quantity::new(value, word))))
                    }
                    _ => Ok(Node::Literal(lit)),
                }
            }
            Tok::Str(s) => Ok(Node::Literal(Item::string(s))),
            Tok::Temporal(kind, text) => {
                let bad = || ParseError::new(format!("invalid date/time literal @{text}"), t.pos);
                let item = match kind {
                    TemporalKind::Date => Item::date(DateTime::parse_date(&text).ok_or_else(bad)?),
                    TemporalKind::DateTime => {
                        Item::date_time(DateTime::parse_datetime(&text).ok_or_else(bad)?)
                    }
                    TemporalKind::Time => Item::time(Time::parse(&text).ok_or_else(bad)?),
                };
                Ok(Node::Literal(item))
            }
            Tok::LBrace => {
                self.expect(Tok::RBrace)?;
                Ok(Node::Empty)
            }
            Tok::LParen => {
                let e = self.expr(0)?;
                self.expect(Tok::RParen)?;
                Ok(e)
            }
            Tok::Var(name) => Ok(Node::Var(name.into_boxed_str())),
            Tok::Special(s) => Ok(match s.as_str() {
                "this" => Node::This,
                "index" => Node::IndexVar,
                _ => Node::Total,
            }),
            Tok::Ident(name) => {
                if self.peek().tok == Tok::LParen {
                    return self.call(None, name, t.pos);
                }
                match name.as_str() {
                    "true" => Ok(Node::Literal(Item::boolean(true))),
                    "false" => Ok(Node::Literal(Item::boolean(false))),
                    _ => Ok(Node::Ident(ident(name))),
                }
            }
            Tok::QuotedIdent(name) => {
                if self.peek().tok == Tok::LParen {
                    return self.call(None, name, t.pos);
                }
                Ok(Node::Ident(ident(name)))
            }
            other => Err(ParseError::new(
                format!("unexpected {}", describe(&other)),
                t.pos,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(n: &Node) -> String {
        match n {
            Node::Literal(i) => i.to_string(),
            Node::Empty => "{}".into(),
            Node::Ident(id) => id.name.to_string(),
            Node::Member(t, id) => format!("{}.{}", shape(t), id.name),
            Node::Index(t, i) => format!("{}[{}]", shape(t), shape(i)),
            Node::Call(c) => format!(
                "{}{}({})",
                c.target
                    .as_ref()
                    .map(|t| format!("{}.", shape(t)))
                    .unwrap_or_default(),
                c.name,
                c.args.iter().map(shape).collect::<Vec<_>>().join(", ")
            ),
            Node::This => "$this".into(),
            Node::IndexVar => "$index".into(),
            Node::Total => "$total".into(),
            Node::Var(v) => format!("%{v}"),
            Node::Neg(e) => format!("-({})", shape(e)),
            Node::Pos(e) => format!("+({})", shape(e)),
            Node::Binary(op, l, r) => format!("({} {op:?} {})", shape(l), shape(r)),
            Node::Is(e, t) => format!("({} is {t:?})", shape(e)),
            Node::As(e, t) => format!("({} as {t:?})", shape(e)),
        }
    }

    fn p(s: &str) -> String {
        shape(&parse(s).unwrap())
    }

    #[test]
    fn precedence() {
        assert_eq!(p("1+2*3+4"), "((1 Add (2 Mul 3)) Add 4)");
        assert_eq!(p("a or b and c"), "(a Or (b And c))");
        assert_eq!(p("a implies b or c"), "(a Implies (b Or c))");
        assert_eq!(p("a | b = c"), "((a Union b) Eq c)");
        assert_eq!(p("1 in a | b"), "(1 In (a Union b))");
        assert_eq!(p("a xor b or c"), "((a Xor b) Or c)");
        assert!(p("1 > 2 is Boolean").starts_with("((1 Gt 2) is"));
        assert!(p("1 | 1 is Integer").starts_with("((1 Union 1) is"));
        assert_eq!(p("-Patient.name.count()"), "-(Patient.name.count())");
        assert_eq!(p("-1"), "-1");
        assert_eq!(p("-1.convertsToInteger()"), "-(1.convertsToInteger())");
        assert_eq!(p("a.b[0].c"), "a.b[0].c");
        assert_eq!(p("5 div 2 mod 3"), "((5 IntDiv 2) Mod 3)");
    }

    #[test]
    fn literals() {
        assert_eq!(p("4 'mg'"), "4 'mg'");
        assert_eq!(p("3 days"), "3 'days'");
        assert_eq!(p("1.50"), "1.50");
        assert_eq!(p("@2015-02-04T14:34:28Z"), "2015-02-04T14:34:28Z");
        assert_eq!(p("@T14:34"), "14:34");
        assert_eq!(p("{}"), "{}");
        assert_eq!(p("`given`"), "given");
        assert_eq!(p("%`vs-x`"), "%vs-x");
    }

    #[test]
    fn type_arguments_resolve() {
        let n = parse("value.is(FHIR.Quantity)").unwrap();
        let Node::Call(c) = n else { panic!() };
        assert_eq!(c.type_arg, Some(TypeSpec::Fhir("Quantity")));
        let n = parse("x is System.Boolean").unwrap();
        assert!(matches!(
            n,
            Node::Is(_, TypeSpec::System(SystemType::Boolean))
        ));
        let n = parse("x as Quantity").unwrap();
        assert!(matches!(
            n,
            Node::As(
                _,
                TypeSpec::Any {
                    fhir: Some("Quantity"),
                    system: Some(SystemType::Quantity)
                }
            )
        ));
    }

    #[test]
    fn errors_have_positions() {
        let e = parse("Patient.name.where(").unwrap_err();
        assert_eq!(e.position, 19);
        let e = parse("1 +").unwrap_err();
        assert!(e.message.contains("end of expression"));
        assert!(parse("first(1)").is_err());
        assert!(parse("substring()").is_err());
        assert!(parse("a b").is_err());
        assert!(parse("@2015-13-01").is_err());
        assert!(parse("99999999999999999999").is_err());
        assert!(parse("'a'.matches('(')").is_err());
        assert!(parse("a.is(1)").is_err());
        let deep = "(".repeat(10_000) + "1" + &")".repeat(10_000);
        assert!(parse(&deep).is_err());
        let deep = "-".repeat(10_000) + "1";
        assert!(parse(&deep).is_err());
        let long = vec!["a"; 10_000].join(" | ");
        assert!(parse(&long).is_err());
        let long = vec!["a"; 10_000].join(".");
        assert!(parse(&long).is_err());
        let ok = vec!["a"; 100].join(" | ");
        assert!(parse(&ok).is_ok());
    }
}
