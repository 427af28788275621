//! Quantities and the subset of UCUM needed to compare and combine them.
//!
//! A [`Quantity`] is a decimal value with a unit that is either a UCUM code (`'mg'`,
//! `'[lb_av]'`, `'10*3/uL'`) or a FHIRPath calendar keyword (`day`, `weeks`, ...).
//!
//! UCUM support: unit expressions are parsed (`.` and `/` products, parentheses, exponents
//! like `m2` and `s-1`, `10*3` factors, `{annotations}`, metric prefixes) over a table of
//! common atoms (SI base and derived units, time, US/imperial length, mass and volume,
//! pressure including `mm[Hg]`, `%`, `[ppm]`, `eq`, `U`, `[iU]`, ...) and reduced to a factor
//! and a dimension vector. Two units convert into each other when their dimensions match;
//! special (affine) units like `Cel` and `[degF]` compare only with themselves.
//!
//! Calendar keywords follow the specification: `week`, `day`, `hour`, `minute`, `second`
//! and `millisecond` equal their UCUM definite durations (`7 days = 1 'wk'`), while `year`
//! and `month` only compare with themselves (`1 year = 1 'a'` is empty).

use crate::datetime::CalendarUnit;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// A value with a unit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Quantity {
    pub value: Decimal,
    /// A UCUM code, or a calendar keyword (`day`, `weeks`, ...) as written.
    pub unit: Arc<str>,
}

impl fmt::Display for Quantity {
    /// `value 'unit'`, the FHIRPath literal form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} '{}'", self.value, self.unit)
    }
}

/// Dimensions: length, mass, time, angle, temperature, charge, luminous intensity, amount
/// of substance, arbitrary (international) units.
type Dims = [i8; 9];

#[derive(Debug, Clone, PartialEq)]
struct Canonical {
    factor: Decimal,
    dims: Dims,
}

impl Quantity {
    pub fn new(value: Decimal, unit: impl Into<Arc<str>>) -> Self {
        Self {
            value,
            unit: unit.into(),
        }
    }

    /// The calendar unit, when the unit is a FHIRPath calendar keyword.
    pub fn calendar_unit(&self) -> Option<CalendarUnit> {
        CalendarUnit::from_keyword(&self.unit)
    }

    /// The unit as a UCUM code: calendar keywords become their definite durations.
    fn ucum_code(&self) -> &str {
        match self.calendar_unit() {
            Some(c) => c.ucum(),
            None => &self.unit,
        }
    }

    /// The unit usable in date/time arithmetic (calendar keyword or UCUM time code).
    pub fn time_unit(&self) -> Option<CalendarUnit> {
        self.calendar_unit()
            .or_else(|| CalendarUnit::from_ucum(&self.unit))
    }

    /// `(value in the common unit of both, other value in it)` when the two can be
    /// compared, `None` when they cannot (different dimensions, years against `a`, ...).
    fn common(&self, other: &Quantity) -> Option<(Decimal, Decimal)> {
        if self.unit == other.unit {
            return Some((self.value, other.value));
        }
        let (a, b) = (self.calendar_unit(), other.calendar_unit());
        let calendar_only = |c: Option<CalendarUnit>| {
            matches!(c, Some(CalendarUnit::Year) | Some(CalendarUnit::Month))
        };
        if calendar_only(a) || calendar_only(b) {
            // Years and months compare with each other, not with UCUM or other durations.
            let months = |q: &Quantity, c: Option<CalendarUnit>| match c {
                Some(CalendarUnit::Year) => q.value.checked_mul(Decimal::from(12)),
                Some(CalendarUnit::Month) => Some(q.value),
                _ => None,
            };
            return Some((months(self, a)?, months(other, b)?));
        }
        let ca = canonical(self.ucum_code())?;
        let cb = canonical(other.ucum_code())?;
        if ca.dims != cb.dims {
            return None;
        }
        Some((
            self.value.checked_mul(ca.factor)?,
            other.value.checked_mul(cb.factor)?,
        ))
    }

    /// Whether both units measure the same dimension.
    pub fn comparable(&self, other: &Quantity) -> bool {
        self.common(other).is_some()
    }

    /// Ordering, or `None` when the units cannot be compared.
    pub fn compare(&self, other: &Quantity) -> Option<Ordering> {
        let (a, b) = self.common(other)?;
        Some(a.cmp(&b))
    }

    /// Equality: `None` when the units cannot be compared.
    pub fn equals(&self, other: &Quantity) -> Option<bool> {
        self.compare(other).map(|o| o == Ordering::Equal)
    }

    /// Equivalence: compared at the precision of the less precise value, after conversion;
    /// incomparable units are not equivalent.
    pub fn equivalent(&self, other: &Quantity) -> bool {
        let Some((a, b)) = self.common(other) else {
            return false;
        };
        let scale = a.scale().min(b.scale());
        a.round_dp(scale) == b.round_dp(scale)
    }

    /// `self + other` in `self`'s unit; `None` when the units do not convert.
    pub fn add(&self, other: &Quantity, negate: bool) -> Option<Quantity> {
        let other_value = if self.unit == other.unit {
            other.value
        } else {
            let factor_self = self.unit_factor(other)?;
            other.value.checked_mul(factor_self)?
        };
        let other_value = if negate { -other_value } else { other_value };
        Some(Quantity {
            value: self.value.checked_add(other_value)?,
            unit: self.unit.clone(),
        })
    }

    /// How many of `self`'s unit one of `other`'s unit is.
    fn unit_factor(&self, other: &Quantity) -> Option<Decimal> {
        let one_self = Quantity::new(Decimal::ONE, self.unit.clone());
        let one_other = Quantity::new(Decimal::ONE, other.unit.clone());
        let (s, o) = one_self.common(&one_other)?;
        o.checked_div(s)
    }

    /// Product with unit algebra (`2 'cm' * 2 'm'` is `4 'cm.m'`).
    pub fn mul(&self, other: &Quantity) -> Option<Quantity> {
        let unit = combine_units(self.ucum_code(), other.ucum_code(), '.');
        Some(Quantity {
            value: self.value.checked_mul(other.value)?,
            unit: unit.into(),
        })
    }

    /// Quotient with unit algebra (`4 'g' / 2 'm'` is `2 'g/m'`, `1 'm' / 1 'm'` is `1 '1'`).
    pub fn div(&self, other: &Quantity) -> Option<Quantity> {
        if other.value.is_zero() {
            return None;
        }
        let (a, b) = (self.ucum_code(), other.ucum_code());
        let unit = if a == b {
            "1".to_string()
        } else {
            combine_units(a, b, '/')
        };
        Some(Quantity {
            value: crate::value::decimal_div(self.value, other.value)?,
            unit: unit.into(),
        })
    }

    /// Parse the FHIRPath string form: a number, optionally followed by a quoted UCUM unit
    /// or a calendar keyword (`'4.5 mg'` is not a quantity: `'4.5 \'mg\''` is).
    pub fn parse(s: &str) -> Option<Quantity> {
        let s = s.trim();
        let (num, rest) = match s.find(|c: char| c.is_whitespace() || c == '\'') {
            Some(i) => (&s[..i], s[i..].trim()),
            None => (s, ""),
        };
        if !is_decimal_text(num) {
            return None;
        }
        let value = Decimal::from_str(num).ok()?;
        let unit: Arc<str> = if rest.is_empty() {
            "1".into()
        } else if let Some(inner) = rest.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
            if inner.contains('\'') {
                return None;
            }
            inner.into()
        } else if CalendarUnit::from_keyword(rest).is_some() {
            rest.into()
        } else {
            return None;
        };
        Some(Quantity { value, unit })
    }
}

/// `[+-]?digits(.digits)?`
pub(crate) fn is_decimal_text(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s, None),
    };
    !int.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
}

fn combine_units(a: &str, b: &str, op: char) -> String {
    let wrap = |u: &str| {
        if u.contains(['.', '/']) {
            format!("({u})")
        } else {
            u.to_string()
        }
    };
    match (a, b, op) {
        ("1", _, '.') => b.to_string(),
        (_, "1", _) => a.to_string(),
        ("1", _, '/') => format!("/{}", wrap(b)),
        _ => {
            let left = if op == '.' { a.to_string() } else { wrap(a) };
            format!("{left}{op}{}", wrap(b))
        }
    }
}

// ------------------------------------------------------------------------------------------
// UCUM
// ------------------------------------------------------------------------------------------

const L: usize = 0;
const M: usize = 1;
const T: usize = 2;
const ANG: usize = 3;
const TEMP: usize = 4;
const Q: usize = 5;
const LUM: usize = 6;
const N: usize = 7;
const ARB: usize = 8;

fn dims(pairs: &[(usize, i8)]) -> Dims {
    let mut d = [0i8; 9];
    for &(i, e) in pairs {
        d[i] = e;
    }
    d
}

/// `(code, factor to the base units, dimensions, metric (takes prefixes))`. Base units are
/// m, g, s, rad, K, C, cd, mol, and one arbitrary unit.
fn atom(code: &str) -> Option<(Decimal, Dims, bool)> {
    let d = |s: &str| Decimal::from_str(s).ok();
    let (f, dm, metric): (Option<Decimal>, Dims, bool) = match code {
        "m" => (d("1"), dims(&[(L, 1)]), true),
        "g" => (d("1"), dims(&[(M, 1)]), true),
        "s" => (d("1"), dims(&[(T, 1)]), true),
        "rad" => (d("1"), dims(&[(ANG, 1)]), true),
        "K" => (d("1"), dims(&[(TEMP, 1)]), true),
        "C" => (d("1"), dims(&[(Q, 1)]), true),
        "cd" => (d("1"), dims(&[(LUM, 1)]), true),
        "mol" | "eq" | "osm" => (d("1"), dims(&[(N, 1)]), true),
        "kat" => (d("1"), dims(&[(N, 1), (T, -1)]), true),
        "U" => (
            d("0.0000000166666666666666666667"),
            dims(&[(N, 1), (T, -1)]),
            true,
        ),
        "[iU]" | "[IU]" => (d("1"), dims(&[(ARB, 1)]), true),
        "sr" => (d("1"), dims(&[(ANG, 2)]), true),
        "deg" => (
            d("0.0174532925199432957692369077"),
            dims(&[(ANG, 1)]),
            false,
        ),
        "L" | "l" => (d("0.001"), dims(&[(L, 3)]), true),
        "ar" => (d("100"), dims(&[(L, 2)]), true),
        "t" => (d("1000000"), dims(&[(M, 1)]), true),
        "Hz" | "Bq" => (d("1"), dims(&[(T, -1)]), true),
        "Ci" => (d("37000000000"), dims(&[(T, -1)]), true),
        "N" => (d("1000"), dims(&[(M, 1), (L, 1), (T, -2)]), true),
        "Pa" => (d("1000"), dims(&[(M, 1), (L, -1), (T, -2)]), true),
        "bar" => (d("100000000"), dims(&[(M, 1), (L, -1), (T, -2)]), true),
        "atm" => (d("101325000"), dims(&[(M, 1), (L, -1), (T, -2)]), false),
        "m[Hg]" => (d("133322000"), dims(&[(M, 1), (L, -1), (T, -2)]), true),
        "m[H2O]" => (d("9806650"), dims(&[(M, 1), (L, -1), (T, -2)]), true),
        "[in_i'Hg]" => (d("3386388.64"), dims(&[(M, 1), (L, -1), (T, -2)]), false),
        "J" => (d("1000"), dims(&[(M, 1), (L, 2), (T, -2)]), true),
        "cal" => (d("4184"), dims(&[(M, 1), (L, 2), (T, -2)]), true),
        "[Cal]" => (d("4184000"), dims(&[(M, 1), (L, 2), (T, -2)]), false),
        "W" => (d("1000"), dims(&[(M, 1), (L, 2), (T, -3)]), true),
        "Gy" | "Sv" => (d("1"), dims(&[(L, 2), (T, -2)]), true),
        "A" => (d("1"), dims(&[(Q, 1), (T, -1)]), true),
        "V" => (d("1000"), dims(&[(M, 1), (L, 2), (T, -2), (Q, -1)]), true),
        "Ohm" => (d("1000"), dims(&[(M, 1), (L, 2), (T, -1), (Q, -2)]), true),
        "S" => (d("0.001"), dims(&[(M, -1), (L, -2), (T, 1), (Q, 2)]), true),
        "F" => (d("0.001"), dims(&[(M, -1), (L, -2), (T, 2), (Q, 2)]), true),
        "Wb" => (d("1000"), dims(&[(M, 1), (L, 2), (T, -1), (Q, -1)]), true),
        "T" => (d("1000"), dims(&[(M, 1), (T, -1), (Q, -1)]), true),
        "H" => (d("1000"), dims(&[(M, 1), (L, 2), (Q, -2)]), true),
        "lm" => (d("1"), dims(&[(LUM, 1), (ANG, 2)]), true),
        "lx" => (d("1"), dims(&[(LUM, 1), (ANG, 2), (L, -2)]), true),
        "min" => (d("60"), dims(&[(T, 1)]), false),
        "h" => (d("3600"), dims(&[(T, 1)]), false),
        "d" => (d("86400"), dims(&[(T, 1)]), false),
        "wk" => (d("604800"), dims(&[(T, 1)]), false),
        "mo" | "mo_j" => (d("2629800"), dims(&[(T, 1)]), false),
        "mo_g" => (d("2629746"), dims(&[(T, 1)]), false),
        "a" | "a_j" => (d("31557600"), dims(&[(T, 1)]), false),
        "a_g" => (d("31556952"), dims(&[(T, 1)]), false),
        "[in_i]" => (d("0.0254"), dims(&[(L, 1)]), false),
        "[ft_i]" => (d("0.3048"), dims(&[(L, 1)]), false),
        "[yd_i]" => (d("0.9144"), dims(&[(L, 1)]), false),
        "[mi_i]" => (d("1609.344"), dims(&[(L, 1)]), false),
        "[nmi_i]" => (d("1852"), dims(&[(L, 1)]), false),
        "[lb_av]" => (d("453.59237"), dims(&[(M, 1)]), false),
        "[oz_av]" => (d("28.349523125"), dims(&[(M, 1)]), false),
        "[dr_av]" => (d("1.7718451953125"), dims(&[(M, 1)]), false),
        "[gr]" => (d("0.06479891"), dims(&[(M, 1)]), false),
        "[stone_av]" => (d("6350.29318"), dims(&[(M, 1)]), false),
        "[ston_av]" => (d("907184.74"), dims(&[(M, 1)]), false),
        "[gal_us]" => (d("0.003785411784"), dims(&[(L, 3)]), false),
        "[qt_us]" => (d("0.000946352946"), dims(&[(L, 3)]), false),
        "[pt_us]" => (d("0.000473176473"), dims(&[(L, 3)]), false),
        "[cup_us]" => (d("0.0002365882365"), dims(&[(L, 3)]), false),
        "[foz_us]" => (d("0.0000295735295625"), dims(&[(L, 3)]), false),
        "[tbs_us]" => (d("0.00001478676478125"), dims(&[(L, 3)]), false),
        "[tsp_us]" => (d("0.00000492892159375"), dims(&[(L, 3)]), false),
        "[drp]" => (d("0.00000005"), dims(&[(L, 3)]), false),
        "[g]" => (d("9.80665"), dims(&[(L, 1), (T, -2)]), false),
        "%" => (d("0.01"), Dims::default(), false),
        "[ppth]" => (d("0.001"), Dims::default(), false),
        "[ppm]" => (d("0.000001"), Dims::default(), false),
        "[ppb]" => (d("0.000000001"), Dims::default(), false),
        "[pptr]" => (d("0.000000000001"), Dims::default(), false),
        "[pi]" => (d("3.1415926535897932384626433833"), Dims::default(), false),
        _ => return None,
    };
    Some((f?, dm, metric))
}

fn prefix(p: &str) -> Option<Decimal> {
    let exp: i32 = match p {
        "Y" => 24,
        "Z" => 21,
        "E" => 18,
        "P" => 15,
        "T" => 12,
        "G" => 9,
        "M" => 6,
        "k" => 3,
        "h" => 2,
        "da" => 1,
        "d" => -1,
        "c" => -2,
        "m" => -3,
        "u" => -6,
        "n" => -9,
        "p" => -12,
        "f" => -15,
        "a" => -18,
        "z" => -21,
        "y" => -24,
        _ => return None,
    };
    pow10(exp)
}

fn pow10(exp: i32) -> Option<Decimal> {
    if exp >= 0 {
        let mut v = Decimal::ONE;
        for _ in 0..exp {
            v = v.checked_mul(Decimal::TEN)?;
        }
        Some(v)
    } else {
        let scale = u32::try_from(-exp).ok()?;
        (scale <= 28).then(|| Decimal::new(1, scale))
    }
}

fn pow_dec(base: Decimal, exp: i32) -> Option<Decimal> {
    let mut v = Decimal::ONE;
    for _ in 0..exp.unsigned_abs() {
        v = v.checked_mul(base)?;
    }
    if exp < 0 {
        Decimal::ONE.checked_div(v)
    } else {
        Some(v)
    }
}

/// Reduce a UCUM unit expression to a factor and dimensions (`None` when unknown or
/// special).
fn canonical(unit: &str) -> Option<Canonical> {
    let mut p = UcumParser {
        s: unit.as_bytes(),
        i: 0,
        depth: 0,
    };
    let c = p.term()?;
    (p.i == p.s.len()).then_some(c)
}

struct UcumParser<'s> {
    s: &'s [u8],
    i: usize,
    depth: u8,
}

fn mul_canon(a: Canonical, b: &Canonical, sign: i8) -> Option<Canonical> {
    let factor = if sign > 0 {
        a.factor.checked_mul(b.factor)?
    } else {
        a.factor.checked_div(b.factor)?
    };
    let mut dims = a.dims;
    for (d, e) in dims.iter_mut().zip(b.dims.iter()) {
        *d = d.checked_add(e.checked_mul(sign)?)?;
    }
    Some(Canonical { factor, dims })
}

impl UcumParser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn term(&mut self) -> Option<Canonical> {
        self.depth += 1;
        if self.depth > 16 {
            return None;
        }
        let one = Canonical {
            factor: Decimal::ONE,
            dims: Dims::default(),
        };
        let mut acc = if self.peek() == Some(b'/') {
            self.i += 1;
            let c = self.component()?;
            mul_canon(one, &c, -1)?
        } else {
            let c = self.component()?;
            mul_canon(one, &c, 1)?
        };
        loop {
            match self.peek() {
                Some(b'.') => {
                    self.i += 1;
                    let c = self.component()?;
                    acc = mul_canon(acc, &c, 1)?;
                }
                Some(b'/') => {
                    self.i += 1;
                    let c = self.component()?;
                    acc = mul_canon(acc, &c, -1)?;
                }
                _ => break,
            }
        }
        self.depth -= 1;
        Some(acc)
    }

    fn exponent(&mut self) -> Option<i32> {
        let start = self.i;
        if matches!(self.peek(), Some(b'+' | b'-')) {
            self.i += 1;
        }
        let digits_start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        if self.i == digits_start {
            self.i = start;
            return None;
        }
        std::str::from_utf8(&self.s[start..self.i])
            .ok()?
            .parse()
            .ok()
    }

    fn annotation(&mut self) -> Option<()> {
        if self.peek() == Some(b'{') {
            let end = self.s[self.i..].iter().position(|&c| c == b'}')?;
            self.i += end + 1;
        }
        Some(())
    }

    fn component(&mut self) -> Option<Canonical> {
        let one = Canonical {
            factor: Decimal::ONE,
            dims: Dims::default(),
        };
        match self.peek()? {
            b'(' => {
                self.i += 1;
                let inner = self.term()?;
                if self.peek() != Some(b')') {
                    return None;
                }
                self.i += 1;
                let exp = self.exponent().unwrap_or(1);
                self.annotation()?;
                raise(inner, exp)
            }
            b'{' => {
                self.annotation()?;
                Some(one)
            }
            c if c.is_ascii_digit() => {
                let start = self.i;
                while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                    self.i += 1;
                }
                let n =
                    Decimal::from_str(std::str::from_utf8(&self.s[start..self.i]).ok()?).ok()?;
                let factor = if matches!(self.peek(), Some(b'*' | b'^')) {
                    self.i += 1;
                    let e = self.exponent()?;
                    pow_dec(n, e)?
                } else {
                    n
                };
                self.annotation()?;
                Some(Canonical {
                    factor,
                    dims: Dims::default(),
                })
            }
            _ => {
                let start = self.i;
                while let Some(c) = self.peek() {
                    if c == b'[' {
                        let end = self.s[self.i..].iter().position(|&c| c == b']')?;
                        self.i += end + 1;
                    } else if c.is_ascii_alphabetic() || c == b'%' || c == b'_' || c == b'\'' {
                        self.i += 1;
                    } else {
                        break;
                    }
                }
                if self.i == start {
                    return None;
                }
                let name = std::str::from_utf8(&self.s[start..self.i]).ok()?;
                let base = resolve_atom(name)?;
                let exp = self.exponent().unwrap_or(1);
                self.annotation()?;
                raise(base, exp)
            }
        }
    }
}

fn raise(c: Canonical, exp: i32) -> Option<Canonical> {
    let e = i8::try_from(exp).ok()?;
    let mut dims = c.dims;
    for d in dims.iter_mut() {
        *d = d.checked_mul(e)?;
    }
    Some(Canonical {
        factor: pow_dec(c.factor, exp)?,
        dims,
    })
}

fn resolve_atom(name: &str) -> Option<Canonical> {
    if let Some((factor, dims, _)) = atom(name) {
        return Some(Canonical { factor, dims });
    }
    for plen in [2usize, 1] {
        if name.len() <= plen || !name.is_char_boundary(plen) {
            continue;
        }
        let (p, rest) = name.split_at(plen);
        if let (Some(pf), Some((factor, dims, true))) = (prefix(p), atom(rest)) {
            return Some(Canonical {
                factor: pf.checked_mul(factor)?,
                dims,
            });
        }
    }
    None
}

/// Whether a UCUM code is understood by this module (used by `toQuantity` checks).
pub fn is_known_ucum(unit: &str) -> bool {
    canonical(unit).is_some()
}

/// A UCUM unit in canonical form, for search (R4 search.html#quantity): the factor to
/// multiply a value by, and a key naming its dimensions (the same for `mg`, `g` and
/// `[lb_av]`). `None` for unknown and special (affine) units such as `Cel`.
pub fn ucum_canonical(unit: &str) -> Option<(f64, String)> {
    let c = canonical(unit)?;
    let key: Vec<String> = c.dims.iter().map(|d| d.to_string()).collect();
    Some((c.factor.to_f64()?, key.join(".")))
}

/// Value of `q` converted to `unit`, when the dimensions match.
pub fn convert(q: &Quantity, unit: &str) -> Option<Quantity> {
    let target = Quantity::new(Decimal::ONE, unit);
    let f = target.unit_factor(q)?;
    Some(Quantity::new(q.value.checked_mul(f)?, unit))
}

/// Approximate `f64` of a decimal (for the transcendental functions).
pub(crate) fn to_f64(d: Decimal) -> Option<f64> {
    d.to_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(v: &str, u: &str) -> Quantity {
        Quantity::new(Decimal::from_str(v).unwrap(), u)
    }

    #[test]
    fn canonical_forms_for_search() {
        let (mg, kmg) = ucum_canonical("mg").unwrap();
        let (lb, klb) = ucum_canonical("[lb_av]").unwrap();
        assert_eq!(kmg, klb, "same dimension, same key");
        assert!((5400.0 * mg - 5.4).abs() < 1e-9, "mg to g");
        assert!((lb - 453.59237).abs() < 1e-6);
        assert_ne!(ucum_canonical("mm[Hg]").unwrap().1, kmg);
        assert!(ucum_canonical("Cel").is_none());
        assert!(ucum_canonical("nonsense").is_none());
    }

    #[test]
    fn same_dimension_conversions() {
        assert_eq!(q("4.0000", "g").equals(&q("4000.0", "mg")), Some(true));
        assert_eq!(q("4", "g").equals(&q("4040", "mg")), Some(false));
        assert!(q("4", "g").equivalent(&q("4040", "mg")));
        assert_eq!(q("1", "m").equals(&q("100", "cm")), Some(true));
        assert_eq!(q("2", "h").equals(&q("120", "min")), Some(true));
        assert_eq!(
            q("1", "kg").compare(&q("1", "[lb_av]")),
            Some(Ordering::Greater)
        );
        assert_eq!(q("1", "mg").equals(&q("1", "m")), None);
        assert_eq!(q("5", "mmol/L").equals(&q("0.005", "mol/L")), Some(true));
        assert_eq!(
            q("1", "mm[Hg]").compare(&q("1", "Pa")),
            Some(Ordering::Greater)
        );
        assert_eq!(q("1", "10*3/uL").equals(&q("1000000", "/mL")), Some(true));
        assert_eq!(q("1", "Cel").equals(&q("1", "Cel")), Some(true));
        assert_eq!(q("1", "Cel").equals(&q("1", "K")), None);
    }

    #[test]
    fn calendar_rules() {
        assert_eq!(q("7", "days").equals(&q("1", "week")), Some(true));
        assert_eq!(q("7", "days").equals(&q("1", "wk")), Some(true));
        assert_eq!(
            q("6", "days").compare(&q("1", "week")),
            Some(Ordering::Less)
        );
        assert_eq!(q("1", "year").equals(&q("1", "a")), None);
        assert_eq!(q("1", "year").equals(&q("12", "months")), Some(true));
        assert_eq!(q("1", "second").equals(&q("1", "s")), Some(true));
    }

    #[test]
    fn unit_algebra() {
        let area = q("2.0", "cm").mul(&q("2.0", "m")).unwrap();
        assert_eq!(area.unit.as_ref(), "cm.m");
        assert_eq!(area.equals(&q("0.040", "m2")), Some(true));
        let lin = q("4.0", "g").div(&q("2.0", "m")).unwrap();
        assert_eq!(lin.equals(&q("2", "g/m")), Some(true));
        let one = q("1.0", "m").div(&q("1.0", "m")).unwrap();
        assert_eq!(one.unit.as_ref(), "1");
        assert_eq!(
            q("1", "g").add(&q("500", "mg"), false).unwrap(),
            q("1.5", "g")
        );
        assert!(q("1", "g").add(&q("1", "m"), false).is_none());
        assert_eq!(
            convert(&q("185", "[lb_av]"), "kg")
                .unwrap()
                .value
                .round_dp(2),
            Decimal::from_str("83.91").unwrap()
        );
    }

    #[test]
    fn parse_string_form() {
        assert_eq!(Quantity::parse("1 day").unwrap(), q("1", "day"));
        assert_eq!(Quantity::parse("1 'wk'").unwrap(), q("1", "wk"));
        assert_eq!(Quantity::parse("1.0").unwrap(), q("1.0", "1"));
        assert!(Quantity::parse("1 wk").is_none());
        assert!(Quantity::parse("1.a").is_none());
        assert!(Quantity::parse("abc").is_none());
        assert_eq!(q("1", "wk").to_string(), "1 'wk'");
    }
}
