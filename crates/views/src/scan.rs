//! A small lexical pass over FHIRPath source, run once per expression when a view is
//! compiled. It skips string literals, delimited identifiers and comments, and
//!
//! - lists the `%variables` an expression refers to (to reject a reference to a constant
//!   the view does not define before any resource is read, and to know whether the view
//!   needs the per-row `%rowIndex` or `%resource`), and
//! - rewrites `getReferenceKey(Patient)` to `getReferenceKey('Patient')`: the argument is
//!   a type specifier, which a custom FHIRPath function cannot see unevaluated.

use std::borrow::Cow;

/// What the pass found in one expression.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Scan {
    /// Names of the `%variables` referenced, in order of appearance (with repeats).
    pub variables: Vec<String>,
    /// Byte ranges of the type-specifier arguments of `getReferenceKey(...)`.
    type_args: Vec<(usize, usize)>,
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_'
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// The end (exclusive) of a quoted run starting at `start` (which holds the quote).
fn skip_quoted(b: &[u8], start: usize, quote: u8) -> usize {
    let mut i = start + 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// Scan an expression.
pub(crate) fn scan(src: &str) -> Scan {
    let b = src.as_bytes();
    let mut out = Scan::default();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\'' => i = skip_quoted(b, i, b'\''),
            b'`' => i = skip_quoted(b, i, b'`'),
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                    i += 1;
                }
                i = (i + 2).min(b.len());
            }
            b'%' => {
                let start = i + 1;
                match b.get(start) {
                    Some(&q @ (b'`' | b'\'')) => {
                        let end = skip_quoted(b, start, q);
                        // `end` is just past the closing quote (an ASCII byte), or the end
                        // of an unterminated literal.
                        let inner = if end > start + 1 && b[end - 1] == q {
                            src.get(start + 1..end - 1)
                        } else {
                            src.get(start + 1..)
                        };
                        out.variables.push(inner.unwrap_or_default().to_string());
                        i = end;
                    }
                    Some(&c) if is_ident_start(c) => {
                        let mut end = start;
                        while end < b.len() && is_ident(b[end]) {
                            end += 1;
                        }
                        out.variables.push(src[start..end].to_string());
                        i = end;
                    }
                    _ => i += 1,
                }
            }
            c if is_ident_start(c) => {
                let start = i;
                while i < b.len() && is_ident(b[i]) {
                    i += 1;
                }
                if &src[start..i] == "getReferenceKey" {
                    if let Some(range) = type_argument(b, i) {
                        out.type_args.push(range);
                    }
                }
            }
            _ => i += 1,
        }
    }
    out
}

/// After `getReferenceKey` ending at `i`: the range of a bare (possibly qualified) type
/// name in `( Name )`.
fn type_argument(b: &[u8], i: usize) -> Option<(usize, usize)> {
    let mut j = skip_ws(b, i);
    if b.get(j) != Some(&b'(') {
        return None;
    }
    j = skip_ws(b, j + 1);
    let start = j;
    if !b.get(j).copied().is_some_and(is_ident_start) {
        return None;
    }
    while j < b.len() && (is_ident(b[j]) || b[j] == b'.') {
        j += 1;
    }
    let end = j;
    (b.get(skip_ws(b, j)) == Some(&b')')).then_some((start, end))
}

impl Scan {
    /// The source with the type arguments of `getReferenceKey` quoted as strings.
    pub fn rewrite<'s>(&self, src: &'s str) -> Cow<'s, str> {
        if self.type_args.is_empty() {
            return Cow::Borrowed(src);
        }
        let mut out = String::with_capacity(src.len() + 2 * self.type_args.len());
        let mut last = 0;
        for &(start, end) in &self.type_args {
            out.push_str(&src[last..start]);
            out.push('\'');
            out.push_str(&src[start..end]);
            out.push('\'');
            last = end;
        }
        out.push_str(&src[last..]);
        Cow::Owned(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_variables_outside_literals() {
        let s = scan("name.where(use = %name_use and text != '%fake') | %`vs-x` | %'y'");
        assert_eq!(s.variables, ["name_use", "vs-x", "y"]);
        assert!(scan("// %a\n /* %b */ %c").variables == ["c"]);
        assert!(scan("'unterminated %x").variables.is_empty());
        assert_eq!(scan("%").variables, Vec::<String>::new());
    }

    #[test]
    fn quotes_reference_key_type_arguments() {
        let src = "getResourceKey() = link.other.getReferenceKey( Patient )";
        assert_eq!(
            scan(src).rewrite(src),
            "getResourceKey() = link.other.getReferenceKey( 'Patient' )"
        );
        let src =
            "a.getReferenceKey() | b.getReferenceKey('Patient') | c.getReferenceKey(FHIR.Group)";
        assert_eq!(
            scan(src).rewrite(src),
            "a.getReferenceKey() | b.getReferenceKey('Patient') | c.getReferenceKey('FHIR.Group')"
        );
        let src = "'getReferenceKey(Patient)'";
        assert_eq!(scan(src).rewrite(src), src);
        let src = "getReferenceKey(Patient";
        assert_eq!(scan(src).rewrite(src), src);
    }
}
