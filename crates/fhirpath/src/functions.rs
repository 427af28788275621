//! The function library: FHIRPath N1 (existence, filtering and projection, subsetting,
//! combining, conversion, string, math, tree navigation, utility, type functions) and the
//! FHIR additions (`resolve`, `extension`, `hasValue`, `getValue`, `htmlChecks`,
//! `conformsTo`, `memberOf`, `comparable`), `lowBoundary`/`highBoundary` from FHIRPath 3.0
//! (see `boundary.rs`), plus dispatch to caller-supplied functions.
//!
//! Conventions, from the specification: functions that need a single input item return
//! empty for an empty input and an error for several; arguments are evaluated against the
//! focus of the call, except the *lambda* arguments of `where`, `select`, `all`, `exists`,
//! `repeat`, `aggregate` and `trace`, evaluated per input item with `$this`/`$index`.

use crate::ast::{BinOp, Call, Func, Node, TypeSpec};
use crate::boundary;
use crate::datetime::{DateTime, Precision, Time};
use crate::error::EvalError;
use crate::eval::{matches_type, push_json, single, Evaluator, Scope, R};
use crate::model::{model, Kind, UNKNOWN};
use crate::quantity::{self, is_decimal_text, Quantity};
use crate::value::{self, DistinctSet, Item, JsonRef, Prim, TypeInfo, Val};
use base64::Engine as _;
use regex::Regex;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::Value as Json;
use std::str::FromStr;
use std::sync::Arc;

/// Compile a FHIRPath regular expression (single-line mode: `.` matches newlines).
pub(crate) fn compile_regex(pattern: &str) -> Result<Regex, regex::Error> {
    regex::RegexBuilder::new(pattern)
        .dot_matches_new_line(true)
        .size_limit(1 << 20)
        .build()
}

fn boolean<'a>(b: bool) -> R<'a> {
    Ok(vec![Item::boolean(b)])
}

fn opt<'a>(i: Option<Item<'a>>) -> R<'a> {
    Ok(i.into_iter().collect())
}

/// An owned system item from a primitive view.
pub(crate) fn prim_item<'a>(p: Prim<'_>) -> Item<'a> {
    match p {
        Prim::Boolean(b) => Item::boolean(b),
        Prim::Integer(i) => Item::integer(i),
        Prim::Decimal(d) => Item::decimal(d),
        Prim::String(s) => Item::string(s),
        Prim::Date(d) => Item::date(d),
        Prim::DateTime(d) => Item::date_time(d),
        Prim::Time(t) => Item::time(t),
        Prim::Quantity(q) => Item::quantity(q.into_owned()),
    }
}

// ------------------------------------------------------------------------------------------
// Conversions (shared with the evaluator)
// ------------------------------------------------------------------------------------------

pub(crate) fn to_boolean(item: &Item<'_>) -> Option<bool> {
    match item.prim()? {
        Prim::Boolean(b) => Some(b),
        Prim::Integer(1) => Some(true),
        Prim::Integer(0) => Some(false),
        Prim::Decimal(d) if d == Decimal::ONE => Some(true),
        Prim::Decimal(d) if d.is_zero() => Some(false),
        Prim::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "t" | "yes" | "y" | "1" | "1.0" => Some(true),
            "false" | "f" | "no" | "n" | "0" | "0.0" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

fn is_integer_text(s: &str) -> bool {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

pub(crate) fn to_integer(item: &Item<'_>) -> Option<i64> {
    match item.prim()? {
        Prim::Integer(i) => Some(i),
        Prim::Boolean(b) => Some(i64::from(b)),
        Prim::String(s) if is_integer_text(s) => s.parse().ok(),
        _ => None,
    }
}

pub(crate) fn to_decimal(item: &Item<'_>) -> Option<Decimal> {
    match item.prim()? {
        Prim::Integer(i) => Some(Decimal::from(i)),
        Prim::Decimal(d) => Some(d),
        Prim::Boolean(b) => Some(if b {
            Decimal::new(10, 1)
        } else {
            Decimal::new(0, 1)
        }),
        Prim::String(s) if is_decimal_text(s) => Decimal::from_str(s).ok(),
        _ => None,
    }
}

fn to_date(item: &Item<'_>) -> Option<DateTime> {
    match item.prim()? {
        Prim::Date(d) => Some(d),
        Prim::DateTime(d) => Some(d.date_part()),
        Prim::String(s) => {
            DateTime::parse_date(s).or_else(|| DateTime::parse_datetime(s).map(|d| d.date_part()))
        }
        _ => None,
    }
}

fn to_datetime(item: &Item<'_>) -> Option<DateTime> {
    match item.prim()? {
        Prim::Date(d) | Prim::DateTime(d) => Some(d),
        Prim::String(s) => DateTime::parse_datetime(s),
        _ => None,
    }
}

fn to_time(item: &Item<'_>) -> Option<Time> {
    match item.prim()? {
        Prim::Time(t) => Some(t),
        Prim::String(s) => Time::parse(s),
        _ => None,
    }
}

fn to_quantity(item: &Item<'_>, unit: Option<&str>) -> Option<Quantity> {
    let q = match item.prim()? {
        Prim::Integer(i) => Quantity::new(Decimal::from(i), "1"),
        Prim::Decimal(d) => Quantity::new(d, "1"),
        Prim::Boolean(b) => Quantity::new(
            if b {
                Decimal::new(10, 1)
            } else {
                Decimal::new(0, 1)
            },
            "1",
        ),
        Prim::Quantity(q) => q.into_owned(),
        Prim::String(s) => Quantity::parse(s)?,
        _ => return None,
    };
    match unit {
        None => Some(q),
        Some(u) if *q.unit == *u => Some(q),
        Some(u) => quantity::convert(&q, u),
    }
}

// ------------------------------------------------------------------------------------------
// Strings
// ------------------------------------------------------------------------------------------

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn html_unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let Some(end) = rest.find(';').filter(|e| *e <= 10) else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..end];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            "nbsp" => Some('\u{a0}'),
            e if e.starts_with("#x") || e.starts_with("#X") => u32::from_str_radix(&e[2..], 16)
                .ok()
                .and_then(char::from_u32),
            e if e.starts_with('#') => e[1..].parse().ok().and_then(char::from_u32),
            _ => None,
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn json_unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some('u') => {
                let hex: String = chars.by_ref().take(4).collect();
                match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                    Some(ch) => out.push(ch),
                    None => {
                        out.push_str("\\u");
                        out.push_str(&hex);
                    }
                }
            }
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// `f64` result of a transcendental function as a decimal with 15 significant digits (so
/// `16.log(2)` is exactly 4); `None` for NaN and infinities.
fn float_result(x: f64) -> Option<Decimal> {
    if !x.is_finite() {
        return None;
    }
    let text = format!("{x:.14e}");
    Decimal::from_scientific(&text).ok().map(|d| d.normalize())
}

fn decimal_pow(base: Decimal, exp: i64) -> Option<Decimal> {
    let mut result = Decimal::ONE;
    for _ in 0..exp.unsigned_abs().min(10_000) {
        result = result.checked_mul(base)?;
    }
    if exp < 0 {
        Decimal::ONE.checked_div(result)
    } else {
        Some(result)
    }
}

// ------------------------------------------------------------------------------------------
// Dispatch
// ------------------------------------------------------------------------------------------

/// Defines, inside a function of the library, the shorthands `one!()` (the single input
/// item; an empty input returns an empty result), `text!()` (that item as a string) and
/// `str_arg!(i)` (the i-th argument as a string; empty returns empty).
macro_rules! local_helpers {
    ($self:ident, $c:ident, $input:ident, $scope:ident, $name:ident) => {
        #[allow(unused_macros)]
        macro_rules! one {
            () => {
                match single($input, $name)? {
                    Some(i) => i,
                    None => return Ok(Vec::new()),
                }
            };
        }
        #[allow(unused_macros)]
        macro_rules! text {
            () => {{
                let item = one!();
                match item.as_str() {
                    Some(s) => s,
                    None => {
                        return Err(EvalError::type_err(format!(
                            "{}() applies to strings",
                            $name
                        )))
                    }
                }
            }};
        }
        #[allow(unused_macros)]
        macro_rules! str_arg {
            ($i:expr) => {
                match $self.string_arg($c, $i, $scope)? {
                    Some(s) => s,
                    None => return Ok(Vec::new()),
                }
            };
        }
    };
}

impl<'a> Evaluator<'_, 'a> {
    /// Evaluate a lambda argument for each input item (with `$this` and `$index`).
    fn per_item(&self, input: &[Item<'a>], expr: &Node, i: usize) -> R<'a> {
        let scope = Scope {
            this: std::slice::from_ref(&input[i]),
            index: Some(i),
            total: None,
        };
        self.eval(expr, &scope)
    }

    fn criterion(
        &self,
        input: &[Item<'a>],
        expr: &Node,
        i: usize,
        name: &str,
    ) -> Result<bool, EvalError> {
        let scope = Scope {
            this: std::slice::from_ref(&input[i]),
            index: Some(i),
            total: None,
        };
        Ok(self.eval_bool(expr, &scope, name)? == Some(true))
    }

    fn string_arg(
        &self,
        c: &Call,
        i: usize,
        scope: &Scope<'_, 'a>,
    ) -> Result<Option<String>, EvalError> {
        let v = self.eval(&c.args[i], scope)?;
        match single(&v, &c.name)? {
            None => Ok(None),
            Some(item) => match item.as_str() {
                Some(s) => Ok(Some(s.to_string())),
                None => Err(EvalError::arg(format!(
                    "{}() expects a string argument",
                    c.name
                ))),
            },
        }
    }

    fn integer_arg(
        &self,
        c: &Call,
        i: usize,
        scope: &Scope<'_, 'a>,
    ) -> Result<Option<i64>, EvalError> {
        let v = self.eval(&c.args[i], scope)?;
        match single(&v, &c.name)? {
            None => Ok(None),
            Some(item) => match item.as_integer() {
                Some(n) => Ok(Some(n)),
                None => Err(EvalError::arg(format!(
                    "{}() expects an integer argument",
                    c.name
                ))),
            },
        }
    }

    pub(crate) fn call(&self, c: &Call, scope: &Scope<'_, 'a>) -> R<'a> {
        let owned;
        let input: &[Item<'a>] = match &c.target {
            Some(t) => {
                owned = self.eval(t, scope)?;
                &owned
            }
            None => scope.this,
        };
        match c.func {
            Func::Empty
            | Func::Exists
            | Func::All
            | Func::AllTrue
            | Func::AnyTrue
            | Func::AllFalse
            | Func::AnyFalse
            | Func::SubsetOf
            | Func::SupersetOf
            | Func::Count
            | Func::Distinct
            | Func::IsDistinct
            | Func::Where
            | Func::Select
            | Func::Repeat
            | Func::OfType
            | Func::As
            | Func::Is
            | Func::Single
            | Func::First
            | Func::Last
            | Func::Tail
            | Func::Skip
            | Func::Take
            | Func::Intersect
            | Func::Exclude
            | Func::Union
            | Func::Combine => self.call_collection(c, input, scope),
            Func::Iif
            | Func::ToBoolean
            | Func::ConvertsToBoolean
            | Func::ToInteger
            | Func::ConvertsToInteger
            | Func::ToDecimal
            | Func::ConvertsToDecimal
            | Func::ToStringFn
            | Func::ConvertsToString
            | Func::ToDate
            | Func::ConvertsToDate
            | Func::ToDateTime
            | Func::ConvertsToDateTime
            | Func::ToTime
            | Func::ConvertsToTime
            | Func::ToQuantity
            | Func::ConvertsToQuantity => self.call_conversion(c, input, scope),
            Func::IndexOf
            | Func::Substring
            | Func::StartsWith
            | Func::EndsWith
            | Func::ContainsStr
            | Func::Upper
            | Func::Lower
            | Func::Replace
            | Func::Matches
            | Func::ReplaceMatches
            | Func::Length
            | Func::ToChars
            | Func::Trim
            | Func::Split
            | Func::Join
            | Func::Encode
            | Func::Decode
            | Func::Escape
            | Func::Unescape => self.call_string(c, input, scope),
            Func::Abs
            | Func::Ceiling
            | Func::Floor
            | Func::Truncate
            | Func::Exp
            | Func::Ln
            | Func::Sqrt
            | Func::Round
            | Func::Log
            | Func::Power
            | Func::Children
            | Func::Descendants
            | Func::Trace
            | Func::Now
            | Func::Today
            | Func::TimeOfDay
            | Func::Aggregate
            | Func::Type
            | Func::Not
            | Func::Resolve
            | Func::Extension
            | Func::HasValue
            | Func::GetValue
            | Func::HtmlChecks
            | Func::HtmlChecksLower
            | Func::ConformsTo
            | Func::MemberOf
            | Func::Comparable
            | Func::LowBoundary
            | Func::HighBoundary
            | Func::Custom => self.call_other(c, input, scope),
        }
    }

    #[inline(never)]
    fn call_collection(&self, c: &Call, input: &[Item<'a>], scope: &Scope<'_, 'a>) -> R<'a> {
        let name: &str = &c.name;
        let _ = (input, scope, name);
        local_helpers!(self, c, input, scope, name);
        match c.func {
            Func::Empty => boolean(input.is_empty()),
            Func::Exists => {
                if c.args.is_empty() {
                    return boolean(!input.is_empty());
                }
                for i in 0..input.len() {
                    if self.criterion(input, &c.args[0], i, name)? {
                        return boolean(true);
                    }
                }
                boolean(false)
            }
            Func::All => {
                for i in 0..input.len() {
                    if !self.criterion(input, &c.args[0], i, name)? {
                        return boolean(false);
                    }
                }
                boolean(true)
            }
            Func::AllTrue => boolean(input.iter().all(|i| i.as_bool() == Some(true))),
            Func::AnyTrue => boolean(input.iter().any(|i| i.as_bool() == Some(true))),
            Func::AllFalse => boolean(input.iter().all(|i| i.as_bool() == Some(false))),
            Func::AnyFalse => boolean(input.iter().any(|i| i.as_bool() == Some(false))),
            Func::SubsetOf | Func::SupersetOf => {
                let other = self.eval(&c.args[0], scope)?;
                let (small, big) = if c.func == Func::SubsetOf {
                    (input, other.as_slice())
                } else {
                    (other.as_slice(), input)
                };
                let big = DistinctSet::from_items(big);
                boolean(small.iter().all(|x| big.contains(x)))
            }
            Func::Count => Ok(vec![Item::integer(input.len() as i64)]),
            Func::Distinct => Ok(DistinctSet::from_items(input).into_vec()),
            Func::IsDistinct => boolean(DistinctSet::from_items(input).len() == input.len()),
            Func::Where => {
                let mut out = Vec::new();
                for i in 0..input.len() {
                    if self.criterion(input, &c.args[0], i, name)? {
                        out.push(input[i].clone());
                    }
                }
                Ok(out)
            }
            Func::Select => {
                let mut out = Vec::new();
                for i in 0..input.len() {
                    out.extend(self.per_item(input, &c.args[0], i)?);
                }
                self.spend(out.len())?;
                Ok(out)
            }
            Func::Repeat => {
                let mut out: Vec<Item<'a>> = Vec::new();
                let mut seen = std::collections::HashSet::new();
                let mut frontier: Vec<Item<'a>> = input.to_vec();
                while !frontier.is_empty() {
                    let mut next = Vec::new();
                    for i in 0..frontier.len() {
                        for item in self.per_item(&frontier, &c.args[0], i)? {
                            self.spend(1)?;
                            let fresh = match value::item_key(&item) {
                                Some(k) => seen.insert(k),
                                None => true,
                            };
                            if fresh {
                                out.push(item.clone());
                                next.push(item);
                            }
                        }
                    }
                    frontier = next;
                }
                Ok(out)
            }
            Func::OfType | Func::As => {
                let spec = c.type_arg.as_ref().unwrap_or(&TypeSpec::Any {
                    fhir: None,
                    system: None,
                });
                Ok(input
                    .iter()
                    .filter(|i| matches_type(i, spec))
                    .cloned()
                    .collect())
            }
            Func::Is => {
                let item = one!();
                let spec = c.type_arg.as_ref().unwrap_or(&TypeSpec::Any {
                    fhir: None,
                    system: None,
                });
                boolean(matches_type(item, spec))
            }
            Func::Single => Ok(single(input, name)?.cloned().into_iter().collect()),
            Func::First => Ok(input.first().cloned().into_iter().collect()),
            Func::Last => Ok(input.last().cloned().into_iter().collect()),
            Func::Tail => Ok(input.iter().skip(1).cloned().collect()),
            Func::Skip | Func::Take => {
                let Some(n) = self.integer_arg(c, 0, scope)? else {
                    return Ok(Vec::new());
                };
                let n = usize::try_from(n.max(0)).unwrap_or(0);
                Ok(if c.func == Func::Skip {
                    input.iter().skip(n).cloned().collect()
                } else {
                    input.iter().take(n).cloned().collect()
                })
            }
            Func::Intersect => {
                let other = DistinctSet::from_items(&self.eval(&c.args[0], scope)?);
                let mut out = DistinctSet::default();
                for x in input.iter().filter(|x| other.contains(x)) {
                    out.insert(x.clone());
                }
                Ok(out.into_vec())
            }
            Func::Exclude => {
                let other = DistinctSet::from_items(&self.eval(&c.args[0], scope)?);
                Ok(input
                    .iter()
                    .filter(|x| !other.contains(x))
                    .cloned()
                    .collect())
            }
            Func::Union => {
                let other = self.eval(&c.args[0], scope)?;
                self.binary_values(BinOp::Union, input, &other)
            }
            Func::Combine => {
                let mut out = input.to_vec();
                out.extend(self.eval(&c.args[0], scope)?);
                Ok(out)
            }
            _ => Err(EvalError::UnknownFunction(name.to_string())),
        }
    }

    #[inline(never)]
    fn call_conversion(&self, c: &Call, input: &[Item<'a>], scope: &Scope<'_, 'a>) -> R<'a> {
        let name: &str = &c.name;
        let _ = (input, scope, name);
        local_helpers!(self, c, input, scope, name);
        match c.func {
            Func::Iif => {
                let crit_scope = match &c.target {
                    Some(_) => Scope {
                        this: input,
                        index: None,
                        total: None,
                    },
                    None => *scope,
                };
                if c.target.is_some() && input.len() > 1 {
                    return Err(EvalError::not_singleton("iif", input.len()));
                }
                if self.eval_bool(&c.args[0], &crit_scope, "iif criterion")? == Some(true) {
                    self.eval(&c.args[1], &crit_scope)
                } else if let Some(otherwise) = c.args.get(2) {
                    self.eval(otherwise, &crit_scope)
                } else {
                    Ok(Vec::new())
                }
            }
            Func::ToBoolean => opt(to_boolean(one!()).map(Item::boolean)),
            Func::ConvertsToBoolean => boolean(to_boolean(one!()).is_some()),
            Func::ToInteger => opt(to_integer(one!()).map(Item::integer)),
            Func::ConvertsToInteger => boolean(to_integer(one!()).is_some()),
            Func::ToDecimal => opt(to_decimal(one!()).map(Item::decimal)),
            Func::ConvertsToDecimal => boolean(to_decimal(one!()).is_some()),
            Func::ToStringFn => opt(one!().to_fhirpath_string().map(Item::string)),
            Func::ConvertsToString => boolean(one!().to_fhirpath_string().is_some()),
            Func::ToDate => opt(to_date(one!()).map(Item::date)),
            Func::ConvertsToDate => boolean(to_date(one!()).is_some()),
            Func::ToDateTime => opt(to_datetime(one!()).map(Item::date_time)),
            Func::ConvertsToDateTime => boolean(to_datetime(one!()).is_some()),
            Func::ToTime => opt(to_time(one!()).map(Item::time)),
            Func::ConvertsToTime => boolean(to_time(one!()).is_some()),
            Func::ToQuantity | Func::ConvertsToQuantity => {
                let item = one!();
                let unit = match c.args.first() {
                    Some(_) => match self.string_arg(c, 0, scope)? {
                        Some(u) => Some(u),
                        None => return Ok(Vec::new()),
                    },
                    None => None,
                };
                let q = to_quantity(item, unit.as_deref());
                if c.func == Func::ToQuantity {
                    opt(q.map(Item::quantity))
                } else {
                    boolean(q.is_some())
                }
            }
            _ => Err(EvalError::UnknownFunction(name.to_string())),
        }
    }

    #[inline(never)]
    fn call_string(&self, c: &Call, input: &[Item<'a>], scope: &Scope<'_, 'a>) -> R<'a> {
        let name: &str = &c.name;
        let _ = (input, scope, name);
        local_helpers!(self, c, input, scope, name);
        match c.func {
            Func::IndexOf => {
                let s = text!();
                let sub = str_arg!(0);
                Ok(vec![Item::integer(match s.find(sub.as_str()) {
                    Some(byte) => s[..byte].chars().count() as i64,
                    None => -1,
                })])
            }
            Func::Substring => {
                let s = text!();
                let Some(start) = self.integer_arg(c, 0, scope)? else {
                    return Ok(Vec::new());
                };
                let len = match c.args.get(1) {
                    Some(_) => self.integer_arg(c, 1, scope)?,
                    None => None,
                };
                let count = s.chars().count() as i64;
                if start < 0 || start >= count {
                    return Ok(Vec::new());
                }
                let take = len.map_or(count - start, |l| l.max(0));
                let out: String = s
                    .chars()
                    .skip(start as usize)
                    .take(usize::try_from(take).unwrap_or(0))
                    .collect();
                Ok(vec![Item::string(out)])
            }
            Func::StartsWith => {
                let s = text!();
                boolean(s.starts_with(str_arg!(0).as_str()))
            }
            Func::EndsWith => {
                let s = text!();
                boolean(s.ends_with(str_arg!(0).as_str()))
            }
            Func::ContainsStr => {
                let s = text!();
                boolean(s.contains(str_arg!(0).as_str()))
            }
            Func::Upper => Ok(vec![Item::string(text!().to_uppercase())]),
            Func::Lower => Ok(vec![Item::string(text!().to_lowercase())]),
            Func::Replace => {
                let s = text!();
                let pattern = str_arg!(0);
                let subst = str_arg!(1);
                Ok(vec![Item::string(s.replace(pattern.as_str(), &subst))])
            }
            Func::Matches | Func::ReplaceMatches => {
                let s = text!();
                let compiled;
                let re = match &c.regex {
                    Some(r) => r,
                    None => {
                        let pattern = str_arg!(0);
                        compiled =
                            compile_regex(&pattern).map_err(|e| EvalError::Regex(e.to_string()))?;
                        &compiled
                    }
                };
                if c.func == Func::Matches {
                    boolean(re.is_match(s))
                } else {
                    let subst = str_arg!(1);
                    Ok(vec![Item::string(
                        re.replace_all(s, subst.as_str()).into_owned(),
                    )])
                }
            }
            Func::Length => Ok(vec![Item::integer(text!().chars().count() as i64)]),
            Func::ToChars => Ok(text!()
                .chars()
                .map(|ch| Item::string(ch.to_string()))
                .collect()),
            Func::Trim => Ok(vec![Item::string(text!().trim())]),
            Func::Split => {
                let s = text!();
                let sep = str_arg!(0);
                if sep.is_empty() {
                    return Ok(s.chars().map(|ch| Item::string(ch.to_string())).collect());
                }
                Ok(s.split(sep.as_str()).map(Item::string).collect())
            }
            Func::Join => {
                let sep = match c.args.first() {
                    Some(_) => self.string_arg(c, 0, scope)?.unwrap_or_default(),
                    None => String::new(),
                };
                let mut parts = Vec::with_capacity(input.len());
                for item in input {
                    match item.as_str() {
                        Some(s) => parts.push(s),
                        None => return Err(EvalError::type_err("join() applies to strings")),
                    }
                }
                Ok(vec![Item::string(parts.join(&sep))])
            }
            Func::Encode | Func::Decode => {
                let s = text!();
                let format = str_arg!(0);
                let b64 = &base64::engine::general_purpose::STANDARD;
                let url = &base64::engine::general_purpose::URL_SAFE;
                let out = if c.func == Func::Encode {
                    match format.as_str() {
                        "base64" => Some(b64.encode(s)),
                        "urlbase64" => Some(url.encode(s)),
                        "hex" => Some(s.bytes().map(|b| format!("{b:02x}")).collect()),
                        _ => return Err(EvalError::arg(format!("unknown encoding '{format}'"))),
                    }
                } else {
                    let bytes = match format.as_str() {
                        "base64" => b64.decode(s).ok(),
                        "urlbase64" => url.decode(s).ok(),
                        "hex" => hex_decode(s),
                        _ => return Err(EvalError::arg(format!("unknown encoding '{format}'"))),
                    };
                    bytes.and_then(|b| String::from_utf8(b).ok())
                };
                opt(out.map(Item::string))
            }
            Func::Escape | Func::Unescape => {
                let s = text!();
                let format = str_arg!(0);
                let out = match (c.func, format.as_str()) {
                    (Func::Escape, "html") => html_escape(s),
                    (Func::Escape, "json") => json_escape(s),
                    (Func::Unescape, "html") => html_unescape(s),
                    (Func::Unescape, "json") => json_unescape(s),
                    _ => return Err(EvalError::arg(format!("unknown escape format '{format}'"))),
                };
                Ok(vec![Item::string(out)])
            }
            _ => Err(EvalError::UnknownFunction(name.to_string())),
        }
    }

    #[inline(never)]
    fn call_other(&self, c: &Call, input: &[Item<'a>], scope: &Scope<'_, 'a>) -> R<'a> {
        let name: &str = &c.name;
        let _ = (input, scope, name);
        local_helpers!(self, c, input, scope, name);
        match c.func {
            Func::Abs
            | Func::Ceiling
            | Func::Floor
            | Func::Truncate
            | Func::Exp
            | Func::Ln
            | Func::Sqrt
            | Func::Round
            | Func::Log
            | Func::Power => self.math(c, one!(), scope),
            Func::Children => {
                let mut out = Vec::new();
                for item in input {
                    children(item, &mut out);
                }
                Ok(out)
            }
            Func::Descendants => {
                let mut out = Vec::new();
                let mut frontier: Vec<Item<'a>> = input.to_vec();
                while !frontier.is_empty() {
                    let mut next = Vec::new();
                    for item in &frontier {
                        children(item, &mut next);
                    }
                    self.spend(next.len())?;
                    out.extend(next.iter().cloned());
                    frontier = next;
                }
                Ok(out)
            }
            Func::Trace => {
                let label = str_arg!(0);
                if let Some(sink) = &self.env.trace {
                    match c.args.get(1) {
                        Some(projection) => {
                            let mut projected = Vec::new();
                            for i in 0..input.len() {
                                projected.extend(self.per_item(input, projection, i)?);
                            }
                            sink(&label, &projected);
                        }
                        None => sink(&label, input),
                    }
                }
                Ok(input.to_vec())
            }
            Func::Now => Ok(vec![Item::date_time(self.now())]),
            Func::Today => Ok(vec![Item::date(self.now().date_part())]),
            Func::TimeOfDay => {
                let n = self.now();
                Ok(vec![Item::time(Time {
                    hour: n.hour,
                    minute: n.minute,
                    second: n.second,
                    nanos: n.nanos,
                    frac_digits: 3,
                    precision: Precision::Millisecond,
                })])
            }
            Func::Aggregate => {
                let mut total = match c.args.get(1) {
                    Some(init) => self.eval(init, scope)?,
                    None => Vec::new(),
                };
                for (i, item) in input.iter().enumerate() {
                    let s = Scope {
                        this: std::slice::from_ref(item),
                        index: Some(i),
                        total: Some(&total),
                    };
                    let next = self.eval(&c.args[0], &s)?;
                    self.spend(next.len())?;
                    total = next;
                }
                Ok(total)
            }
            Func::Type => Ok(input
                .iter()
                .map(|i| {
                    let (namespace, n) = i.type_name();
                    Item(Val::Type(Arc::new(TypeInfo {
                        namespace,
                        name: Arc::from(n.as_ref()),
                    })))
                })
                .collect()),
            Func::Not => match single(input, name)? {
                None => Ok(Vec::new()),
                Some(item) => match crate::eval::singleton_bool(item) {
                    Some(b) => boolean(!b),
                    None => Ok(Vec::new()),
                },
            },
            Func::Resolve => {
                let mut out = Vec::new();
                for item in input {
                    let reference = match item.as_node() {
                        Some(n) if model().ty(n.ty).name == "Reference" => item
                            .as_json()
                            .and_then(|j| j.get("reference"))
                            .and_then(Json::as_str),
                        _ => item.as_str(),
                    };
                    if let Some(r) = reference {
                        if let Some(found) = self.resolve_reference(r) {
                            out.push(found);
                        }
                    }
                }
                Ok(out)
            }
            Func::Extension => {
                let url = str_arg!(0);
                let m = model();
                let mut out = Vec::new();
                for item in input {
                    let Some(n) = item.as_node() else { continue };
                    let holder = if m.ty(n.ty).kind == Kind::Primitive {
                        n.ext.as_ref()
                    } else {
                        n.value.as_ref()
                    };
                    let Some(Json::Array(exts)) = holder.and_then(|h| h.get().get("extension"))
                    else {
                        continue;
                    };
                    let holder = holder.cloned();
                    for (i, e) in exts.iter().enumerate() {
                        if e.get("url").and_then(Json::as_str) == Some(url.as_str()) {
                            let node = holder
                                .as_ref()
                                .and_then(|h| h.map(|j| j.get("extension").and_then(|a| a.get(i))));
                            push_json(&mut out, node, None, m.extension_ty);
                        }
                    }
                }
                Ok(out)
            }
            Func::HasValue => {
                let Some(item) = single(input, name)? else {
                    return boolean(false);
                };
                boolean(match item.as_node() {
                    Some(n) => {
                        model().ty(n.ty).kind == Kind::Primitive && n.value.is_some()
                            || (n.ty == UNKNOWN && item.prim().is_some())
                    }
                    None => item.prim().is_some(),
                })
            }
            Func::GetValue => {
                let item = one!();
                match item.as_node() {
                    Some(n) if model().ty(n.ty).kind == Kind::Primitive => {
                        opt(item.prim().map(prim_item))
                    }
                    Some(_) => Ok(Vec::new()),
                    None => Ok(vec![item.clone()]),
                }
            }
            Func::HtmlChecks | Func::HtmlChecksLower => boolean(true),
            Func::ConformsTo => {
                let url = str_arg!(0);
                let item = one!();
                if let Some(t) = url.strip_prefix("http://hl7.org/fhir/StructureDefinition/") {
                    if model().type_id(t).is_some() {
                        return boolean(matches_type(
                            item,
                            &TypeSpec::Fhir(model().ty(model().type_id(t).unwrap_or(UNKNOWN)).name),
                        ));
                    }
                }
                match &self.env.conforms_to {
                    Some(hook) => opt(hook(item, &url)?.map(Item::boolean)),
                    None => Err(EvalError::arg(format!("unknown profile '{url}'"))),
                }
            }
            Func::MemberOf => {
                let url = str_arg!(0);
                let item = one!();
                if let Some(hook) = &self.env.member_of {
                    return opt(hook(item, &url)?.map(Item::boolean));
                }
                opt(member_of_required(item, &url).map(Item::boolean))
            }
            Func::Comparable => {
                let item = one!();
                let other = self.eval(&c.args[0], scope)?;
                let Some(o) = single(&other, name)? else {
                    return Ok(Vec::new());
                };
                match (item.as_quantity(), o.as_quantity()) {
                    (Some(a), Some(b)) => boolean(a.comparable(&b)),
                    _ => Err(EvalError::type_err("comparable() applies to quantities")),
                }
            }
            Func::LowBoundary | Func::HighBoundary => {
                let item = one!();
                let high = c.func == Func::HighBoundary;
                let precision = match c.args.first() {
                    Some(_) => match self.integer_arg(c, 0, scope)? {
                        Some(p) => Some(p),
                        None => return Ok(Vec::new()),
                    },
                    None => None,
                };
                opt(match item.prim() {
                    Some(Prim::Integer(i)) => {
                        boundary::decimal(Decimal::from(i), precision, high).map(Item::decimal)
                    }
                    Some(Prim::Decimal(d)) => {
                        boundary::decimal(d, precision, high).map(Item::decimal)
                    }
                    Some(Prim::Quantity(q)) => boundary::decimal(q.value, precision, high)
                        .map(|v| Item::quantity(Quantity::new(v, q.unit.clone()))),
                    Some(Prim::Date(d)) => {
                        boundary::date_time(&d, true, precision, high).map(Item::date)
                    }
                    Some(Prim::DateTime(d)) => {
                        boundary::date_time(&d, false, precision, high).map(Item::date_time)
                    }
                    Some(Prim::Time(t)) => boundary::time(&t, precision, high).map(Item::time),
                    _ => None,
                })
            }
            Func::Custom => {
                let Some(f) = self.env.functions.get(name) else {
                    return Err(EvalError::UnknownFunction(name.to_string()));
                };
                let mut args = Vec::with_capacity(c.args.len());
                for a in &c.args {
                    args.push(self.eval(a, scope)?);
                }
                f(input, &args)
            }

            _ => Err(EvalError::UnknownFunction(name.to_string())),
        }
    }

    fn math(&self, c: &Call, item: &Item<'a>, scope: &Scope<'_, 'a>) -> R<'a> {
        let p = item.prim();
        let num_arg = |i: usize| -> Result<Option<Decimal>, EvalError> {
            let v = self.eval(&c.args[i], scope)?;
            match single(&v, &c.name)? {
                None => Ok(None),
                Some(x) => x
                    .as_decimal()
                    .map(Some)
                    .ok_or_else(|| EvalError::arg(format!("{}() expects a number", c.name))),
            }
        };
        let not_number = || {
            Err(EvalError::type_err(format!(
                "{}() applies to numbers",
                c.name
            )))
        };
        let x = match &p {
            Some(Prim::Integer(i)) => Decimal::from(*i),
            Some(Prim::Decimal(d)) => *d,
            Some(Prim::Quantity(q)) if c.func == Func::Abs => {
                return Ok(vec![Item::quantity(Quantity::new(
                    q.value.abs(),
                    q.unit.clone(),
                ))]);
            }
            _ => return not_number(),
        };
        let is_int = matches!(p, Some(Prim::Integer(_)));
        let int_result = |d: Decimal| opt(d.to_i64().map(Item::integer));
        let f = || quantity::to_f64(x);
        match c.func {
            Func::Abs => {
                if let Some(Prim::Integer(i)) = p {
                    opt(i.checked_abs().map(Item::integer))
                } else {
                    Ok(vec![Item::decimal(x.abs())])
                }
            }
            Func::Ceiling => int_result(x.ceil()),
            Func::Floor => int_result(x.floor()),
            Func::Truncate => int_result(x.trunc()),
            Func::Round => {
                let digits = match c.args.first() {
                    Some(_) => match num_arg(0)? {
                        Some(d) => d.to_u32().filter(|d| *d <= 28).ok_or_else(|| {
                            EvalError::arg("round() precision must be a non-negative integer")
                        })?,
                        None => return Ok(Vec::new()),
                    },
                    None => 0,
                };
                let r = x.round_dp_with_strategy(digits, RoundingStrategy::MidpointAwayFromZero);
                if is_int {
                    int_result(r)
                } else {
                    Ok(vec![Item::decimal(r)])
                }
            }
            Func::Exp => opt(f().and_then(|v| float_result(v.exp())).map(Item::decimal)),
            Func::Ln => opt(f()
                .filter(|v| *v > 0.0)
                .and_then(|v| float_result(v.ln()))
                .map(Item::decimal)),
            Func::Sqrt => opt(f()
                .filter(|v| *v >= 0.0)
                .and_then(|v| float_result(v.sqrt()))
                .map(Item::decimal)),
            Func::Log => {
                let Some(base) = num_arg(0)? else {
                    return Ok(Vec::new());
                };
                let (Some(v), Some(b)) = (f(), quantity::to_f64(base)) else {
                    return Ok(Vec::new());
                };
                if v <= 0.0 || b <= 0.0 || b == 1.0 {
                    return Ok(Vec::new());
                }
                let r = if b == 10.0 {
                    v.log10()
                } else if b == 2.0 {
                    v.log2()
                } else {
                    v.ln() / b.ln()
                };
                opt(float_result(r).map(Item::decimal))
            }
            Func::Power => {
                let Some(e) = num_arg(0)? else {
                    return Ok(Vec::new());
                };
                let exp_is_int = e.fract().is_zero() && e.abs() <= Decimal::from(10_000);
                if exp_is_int {
                    let n = e.to_i64().unwrap_or(0);
                    let arg_is_int = c.args.first().is_some_and(|_| e.scale() == 0);
                    if is_int && arg_is_int && n >= 0 {
                        let (Some(b), Ok(n)) = (x.to_i64(), u32::try_from(n)) else {
                            return Ok(Vec::new());
                        };
                        return opt(b.checked_pow(n).map(Item::integer));
                    }
                    return opt(decimal_pow(x, n).map(Item::decimal));
                }
                let (Some(b), Some(e)) = (f(), quantity::to_f64(e)) else {
                    return Ok(Vec::new());
                };
                opt(float_result(b.powf(e)).map(Item::decimal))
            }
            _ => not_number(),
        }
    }

    /// Find a referenced resource: contained (`#id`), in the Bundle being evaluated (by
    /// `fullUrl` or `Type/id`), through the environment's resolver, or as a stub.
    fn resolve_reference(&self, reference: &str) -> Option<Item<'a>> {
        let root = self.root_resource.as_ref();
        if let Some(id) = reference.strip_prefix('#') {
            let root = root?;
            if id.is_empty() {
                return Some(typed_resource(root.clone()));
            }
            let contained = root.map(|j| j.get("contained"))?;
            let n = contained.get().as_array()?.len();
            for i in 0..n {
                let r = contained.map(|j| j.get(i))?;
                if r.get().get("id").and_then(Json::as_str) == Some(id) {
                    return Some(typed_resource(r));
                }
            }
            return None;
        }
        if let Some(root) = root {
            if root.get().get("resourceType").and_then(Json::as_str) == Some("Bundle") {
                if let Some(found) = find_in_bundle(root, reference) {
                    return Some(found);
                }
            }
        }
        if let Some(resolver) = &self.env.resolver {
            if let Some(json) = resolver(reference) {
                return Some(crate::eval::shared_node(json));
            }
        }
        if self.env.no_stub_references {
            return None;
        }
        let (rt, id) = type_and_id(reference)?;
        let mut stub = serde_json::Map::new();
        stub.insert("resourceType".into(), Json::String(rt.to_string()));
        stub.insert("id".into(), Json::String(id.to_string()));
        Some(crate::eval::shared_node(Arc::new(Json::Object(stub))))
    }
}

fn typed_resource(r: JsonRef<'_>) -> Item<'_> {
    let ty = model().resource_ty(r.get()).unwrap_or(UNKNOWN);
    Item::node(Some(r), None, ty)
}

/// `(resource type, id)` of a literal reference (`Patient/1`, `http://x/fhir/Patient/1`,
/// `Patient/1/_history/2`).
fn type_and_id(reference: &str) -> Option<(&str, &str)> {
    let path = reference.split(['?', '#']).next()?;
    let path = match path.find("/_history/") {
        Some(i) => &path[..i],
        None => path,
    };
    let mut parts = path.rsplitn(3, '/');
    let id = parts.next()?;
    let rt = parts.next()?;
    (!id.is_empty() && salus_fhir::defs::is_resource_type(rt)).then_some((rt, id))
}

fn find_in_bundle<'a>(bundle: &JsonRef<'a>, reference: &str) -> Option<Item<'a>> {
    let entries = bundle.map(|j| j.get("entry"))?;
    let n = entries.get().as_array()?.len();
    let wanted = type_and_id(reference);
    for i in 0..n {
        let entry = entries.map(|j| j.get(i))?;
        let full_url = entry.get().get("fullUrl").and_then(Json::as_str);
        let Some(resource) = entry.map(|j| j.get("resource")) else {
            continue;
        };
        if full_url == Some(reference) {
            return Some(typed_resource(resource));
        }
        if let Some((rt, id)) = wanted {
            let r = resource.get();
            if r.get("resourceType").and_then(Json::as_str) == Some(rt)
                && r.get("id").and_then(Json::as_str) == Some(id)
                && (reference.starts_with(rt)
                    || full_url.is_none_or(|u| u.ends_with(&format!("{rt}/{id}"))))
            {
                return Some(typed_resource(resource));
            }
        }
    }
    None
}

/// Children of a node: every element, in JSON order, primitives merged with their `_name`
/// extensions; the `extension`s of a primitive.
fn children<'a>(item: &Item<'a>, out: &mut Vec<Item<'a>>) {
    let m = model();
    let Some(n) = item.as_node() else { return };
    if m.ty(n.ty).kind == Kind::Primitive {
        if let Some(ext) = &n.ext {
            push_json(out, ext.map(|j| j.get("extension")), None, m.extension_ty);
        }
        return;
    }
    let Some(v) = &n.value else { return };
    let Some(obj) = v.get().as_object() else {
        return;
    };
    let has_ext = obj.keys().any(|k| k.starts_with('_'));
    for key in obj.keys() {
        if key == "resourceType" {
            continue;
        }
        if let Some(plain) = key.strip_prefix('_') {
            if !obj.contains_key(plain) {
                let ty = m.key_ty(n.ty, plain).unwrap_or(UNKNOWN);
                push_json(out, None, v.map(|j| j.get(key.as_str())), ty);
            }
            continue;
        }
        let ty = m.key_ty(n.ty, key).unwrap_or(UNKNOWN);
        let ext = if has_ext {
            v.map(|j| j.get(format!("_{key}")))
        } else {
            None
        };
        push_json(out, v.map(|j| j.get(key.as_str())), ext, ty);
    }
}

/// `memberOf` without a hook: value sets bound `required` in R4 are known.
fn member_of_required(item: &Item<'_>, url: &str) -> Option<bool> {
    let vs = salus_fhir::defs::required_value_set(url)?;
    if !vs.is_enumerated() {
        return None;
    }
    let coding_in = |c: &Json| -> Option<bool> {
        let code = c.get("code")?.as_str()?;
        match c.get("system").and_then(Json::as_str) {
            Some(system) => Some(vs.contains(system, code).unwrap_or(false)),
            None => Some(vs.contains_code(code)),
        }
    };
    match item.fhir_type() {
        Some("Coding") => coding_in(item.as_json()?),
        Some("CodeableConcept") => {
            let codings = item.as_json()?.get("coding")?.as_array()?;
            Some(codings.iter().any(|c| coding_in(c) == Some(true)))
        }
        _ => Some(vs.contains_code(item.as_str()?)),
    }
}
