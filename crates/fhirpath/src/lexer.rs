//! Lexer: turns FHIRPath source text into [`Token`]s with byte positions.
//!
//! Handles identifiers (plain and `` `quoted` ``), string literals with the FHIRPath escapes
//! (`\'`, `\"`, `` \` ``, `\\`, `\/`, `\f`, `\n`, `\r`, `\t`, `\uXXXX`), numbers (kept as text
//! so decimals keep their precision), date/time literals (`@2015-02-04T14:34:28Z`, `@T14:34`),
//! `%variables`, `$this`/`$index`/`$total`, operators and punctuation, and `//` and `/* */`
//! comments. Keywords (`and`, `is`, `div`, ...) are returned as identifiers; the parser
//! decides from position whether they are operators.

use crate::error::ParseError;

/// What a date/time literal turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TemporalKind {
    Date,
    DateTime,
    Time,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    /// A plain identifier or keyword.
    Ident(String),
    /// A `` `delimited` `` identifier (never a keyword).
    QuotedIdent(String),
    Str(String),
    /// Integer or decimal literal text (no sign).
    Number(String),
    /// A date/time literal without the `@` (and, for times, without the `T`).
    Temporal(TemporalKind, String),
    /// `%name`, `` %`name` `` or `%'name'`.
    Var(String),
    /// `$this`, `$index`, `$total` (the name without `$`).
    Special(String),
    Dot,
    LParen,
    RParen,
    LBracket,
    RBracket,
    LBrace,
    RBrace,
    Comma,
    Plus,
    Minus,
    Star,
    Slash,
    Amp,
    Pipe,
    Eq,
    NotEq,
    Tilde,
    NotTilde,
    Lt,
    Le,
    Gt,
    Ge,
    Eof,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub tok: Tok,
    /// Byte offset of the token's first character.
    pub pos: usize,
}

/// Split `src` into tokens; the last one is always [`Tok::Eof`].
pub(crate) fn tokenize(src: &str) -> Result<Vec<Token>, ParseError> {
    let mut lx = Lexer {
        src,
        bytes: src.as_bytes(),
        pos: 0,
    };
    let mut out = Vec::new();
    loop {
        lx.skip_trivia()?;
        let pos = lx.pos;
        let Some(c) = lx.peek() else {
            out.push(Token { tok: Tok::Eof, pos });
            return Ok(out);
        };
        let tok = lx.token(c)?;
        out.push(Token { tok, pos });
    }
}

struct Lexer<'s> {
    src: &'s str,
    bytes: &'s [u8],
    pos: usize,
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_'
}

fn is_ident_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

impl Lexer<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn peek_at(&self, off: usize) -> Option<u8> {
        self.bytes.get(self.pos + off).copied()
    }

    fn err<T>(&self, msg: impl Into<String>, pos: usize) -> Result<T, ParseError> {
        Err(ParseError::new(msg, pos))
    }

    fn skip_trivia(&mut self) -> Result<(), ParseError> {
        loop {
            match self.peek() {
                Some(c) if c.is_ascii_whitespace() => self.pos += 1,
                Some(b'/') if self.peek_at(1) == Some(b'/') => {
                    while let Some(c) = self.peek() {
                        if c == b'\n' {
                            break;
                        }
                        self.pos += 1;
                    }
                }
                Some(b'/') if self.peek_at(1) == Some(b'*') => {
                    let start = self.pos;
                    match self.src[self.pos + 2..].find("*/") {
                        Some(i) => self.pos += 2 + i + 2,
                        None => return self.err("unterminated comment", start),
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    fn token(&mut self, c: u8) -> Result<Tok, ParseError> {
        let start = self.pos;
        let single = |lx: &mut Self, t: Tok| {
            lx.pos += 1;
            Ok(t)
        };
        match c {
            b'.' => single(self, Tok::Dot),
            b'(' => single(self, Tok::LParen),
            b')' => single(self, Tok::RParen),
            b'[' => single(self, Tok::LBracket),
            b']' => single(self, Tok::RBracket),
            b'{' => single(self, Tok::LBrace),
            b'}' => single(self, Tok::RBrace),
            b',' => single(self, Tok::Comma),
            b'+' => single(self, Tok::Plus),
            b'-' => single(self, Tok::Minus),
            b'*' => single(self, Tok::Star),
            b'/' => single(self, Tok::Slash),
            b'&' => single(self, Tok::Amp),
            b'|' => single(self, Tok::Pipe),
            b'=' => single(self, Tok::Eq),
            b'~' => single(self, Tok::Tilde),
            b'!' => match self.peek_at(1) {
                Some(b'=') => {
                    self.pos += 2;
                    Ok(Tok::NotEq)
                }
                Some(b'~') => {
                    self.pos += 2;
                    Ok(Tok::NotTilde)
                }
                _ => self.err("unexpected '!'", start),
            },
            b'<' => {
                if self.peek_at(1) == Some(b'=') {
                    self.pos += 2;
                    Ok(Tok::Le)
                } else {
                    single(self, Tok::Lt)
                }
            }
            b'>' => {
                if self.peek_at(1) == Some(b'=') {
                    self.pos += 2;
                    Ok(Tok::Ge)
                } else {
                    single(self, Tok::Gt)
                }
            }
            b'\'' => {
                self.pos += 1;
                Ok(Tok::Str(self.delimited(b'\'', start)?))
            }
            b'`' => {
                self.pos += 1;
                Ok(Tok::QuotedIdent(self.delimited(b'`', start)?))
            }
            b'%' => {
                self.pos += 1;
                match self.peek() {
                    Some(b'`') => {
                        self.pos += 1;
                        Ok(Tok::Var(self.delimited(b'`', start)?))
                    }
                    Some(b'\'') => {
                        self.pos += 1;
                        Ok(Tok::Var(self.delimited(b'\'', start)?))
                    }
                    Some(c) if is_ident_start(c) => Ok(Tok::Var(self.ident_text().to_string())),
                    _ => self.err("expected a variable name after '%'", start),
                }
            }
            b'$' => {
                self.pos += 1;
                match self.peek() {
                    Some(c) if is_ident_start(c) => {
                        let name = self.ident_text().to_string();
                        match name.as_str() {
                            "this" | "index" | "total" => Ok(Tok::Special(name)),
                            _ => self.err(format!("unknown special variable '${name}'"), start),
                        }
                    }
                    _ => self.err("expected 'this', 'index' or 'total' after '$'", start),
                }
            }
            b'@' => {
                self.pos += 1;
                self.temporal(start)
            }
            c if c.is_ascii_digit() => Ok(Tok::Number(self.number())),
            c if is_ident_start(c) => Ok(Tok::Ident(self.ident_text().to_string())),
            _ => {
                let ch = self.src[start..].chars().next().unwrap_or('?');
                self.err(format!("unexpected character '{ch}'"), start)
            }
        }
    }

    fn ident_text(&mut self) -> &str {
        let start = self.pos;
        while self.peek().is_some_and(is_ident_char) {
            self.pos += 1;
        }
        &self.src[start..self.pos]
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> String {
        let start = self.pos;
        self.digits();
        if self.peek() == Some(b'.') && self.peek_at(1).is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
            self.digits();
        }
        self.src[start..self.pos].to_string()
    }

    /// Read up to the closing `delim`, processing escapes. `self.pos` is just after the
    /// opening delimiter; `start` is where the token began (for errors).
    fn delimited(&mut self, delim: u8, start: usize) -> Result<String, ParseError> {
        let mut out = String::new();
        loop {
            let Some(c) = self.peek() else {
                return self.err("unterminated string or quoted identifier", start);
            };
            if c == delim {
                self.pos += 1;
                return Ok(out);
            }
            if c == b'\\' {
                let esc_pos = self.pos;
                self.pos += 1;
                let Some(e) = self.peek() else {
                    return self.err("unterminated escape", esc_pos);
                };
                self.pos += 1;
                match e {
                    b'\'' => out.push('\''),
                    b'"' => out.push('"'),
                    b'`' => out.push('`'),
                    b'\\' => out.push('\\'),
                    b'/' => out.push('/'),
                    b'f' => out.push('\u{000C}'),
                    b'n' => out.push('\n'),
                    b'r' => out.push('\r'),
                    b't' => out.push('\t'),
                    b'u' => {
                        let hex = self.src.get(self.pos..self.pos + 4).unwrap_or("");
                        let code = (hex.len() == 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
                            .then(|| u32::from_str_radix(hex, 16).ok())
                            .flatten();
                        let Some(code) = code else {
                            return self.err("invalid \\u escape", esc_pos);
                        };
                        self.pos += 4;
                        // A surrogate pair written as two escapes.
                        if (0xD800..0xDC00).contains(&code)
                            && self.src.get(self.pos..self.pos + 2) == Some("\\u")
                        {
                            let lo = self.src.get(self.pos + 2..self.pos + 6).unwrap_or("");
                            if let Ok(lo) = u32::from_str_radix(lo, 16) {
                                if (0xDC00..0xE000).contains(&lo) {
                                    self.pos += 6;
                                    let cp = 0x10000 + ((code - 0xD800) << 10) + (lo - 0xDC00);
                                    out.push(char::from_u32(cp).unwrap_or('\u{FFFD}'));
                                    continue;
                                }
                            }
                        }
                        out.push(char::from_u32(code).unwrap_or('\u{FFFD}'));
                    }
                    _ => {
                        // Unknown escape: keep the character itself (lenient, as most
                        // implementations are).
                        let ch = self.src[self.pos - 1..].chars().next().unwrap_or('?');
                        self.pos += ch.len_utf8() - 1;
                        out.push(ch);
                    }
                }
                continue;
            }
            let ch = self.src[self.pos..].chars().next().unwrap_or('?');
            self.pos += ch.len_utf8();
            out.push(ch);
        }
    }

    fn expect_digits(&mut self, n: usize, start: usize) -> Result<(), ParseError> {
        if self.digits() != n {
            return self.err("malformed date/time literal", start);
        }
        Ok(())
    }

    /// Time part after `T`: `hh(:mm(:ss(.fff)?)?)?`.
    fn time_part(&mut self, start: usize) -> Result<(), ParseError> {
        self.expect_digits(2, start)?;
        if self.peek() == Some(b':') && self.peek_at(1).is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
            self.expect_digits(2, start)?;
            if self.peek() == Some(b':') && self.peek_at(1).is_some_and(|c| c.is_ascii_digit()) {
                self.pos += 1;
                self.expect_digits(2, start)?;
                if self.peek() == Some(b'.') && self.peek_at(1).is_some_and(|c| c.is_ascii_digit())
                {
                    self.pos += 1;
                    self.digits();
                }
            }
        }
        Ok(())
    }

    fn temporal(&mut self, start: usize) -> Result<Tok, ParseError> {
        if self.peek() == Some(b'T') {
            self.pos += 1;
            let body = self.pos;
            self.time_part(start)?;
            return Ok(Tok::Temporal(
                TemporalKind::Time,
                self.src[body..self.pos].to_string(),
            ));
        }
        let body = self.pos;
        self.expect_digits(4, start)?;
        if self.peek() == Some(b'-') && self.peek_at(1).is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
            self.expect_digits(2, start)?;
            if self.peek() == Some(b'-') && self.peek_at(1).is_some_and(|c| c.is_ascii_digit()) {
                self.pos += 1;
                self.expect_digits(2, start)?;
            }
        }
        if self.peek() != Some(b'T') {
            return Ok(Tok::Temporal(
                TemporalKind::Date,
                self.src[body..self.pos].to_string(),
            ));
        }
        self.pos += 1;
        if self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.time_part(start)?;
            match self.peek() {
                Some(b'Z') => self.pos += 1,
                Some(b'+' | b'-')
                    if self.peek_at(1).is_some_and(|c| c.is_ascii_digit())
                        && self.peek_at(2).is_some_and(|c| c.is_ascii_digit())
                        && self.peek_at(3) == Some(b':') =>
                {
                    self.pos += 1;
                    self.expect_digits(2, start)?;
                    self.pos += 1;
                    self.expect_digits(2, start)?;
                }
                _ => {}
            }
        }
        Ok(Tok::Temporal(
            TemporalKind::DateTime,
            self.src[body..self.pos].to_string(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok> {
        tokenize(s).unwrap().into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn basic_tokens() {
        assert_eq!(
            toks("Patient.name[0] != 'x'"),
            vec![
                Tok::Ident("Patient".into()),
                Tok::Dot,
                Tok::Ident("name".into()),
                Tok::LBracket,
                Tok::Number("0".into()),
                Tok::RBracket,
                Tok::NotEq,
                Tok::Str("x".into()),
                Tok::Eof
            ]
        );
    }

    #[test]
    fn numbers_keep_text_and_stop_before_member_dots() {
        assert_eq!(
            toks("1.50 1.toString()"),
            vec![
                Tok::Number("1.50".into()),
                Tok::Number("1".into()),
                Tok::Dot,
                Tok::Ident("toString".into()),
                Tok::LParen,
                Tok::RParen,
                Tok::Eof
            ]
        );
    }

    #[test]
    fn string_escapes() {
        assert_eq!(
            toks(r#"'\\\/\f\r\n\t\"\`\'\u002a'"#),
            vec![Tok::Str("\\/\u{c}\r\n\t\"`'*".into()), Tok::Eof]
        );
        assert!(tokenize("'abc").is_err());
        assert!(tokenize(r"'\u12'").is_err());
    }

    #[test]
    fn temporal_literals() {
        use TemporalKind::*;
        assert_eq!(
            toks("@2015-02-04T14:34:28.123+10:00"),
            vec![
                Tok::Temporal(DateTime, "2015-02-04T14:34:28.123+10:00".into()),
                Tok::Eof
            ]
        );
        assert_eq!(
            toks("@2015T"),
            vec![Tok::Temporal(DateTime, "2015T".into()), Tok::Eof]
        );
        assert_eq!(
            toks("@2015-02.is(Date)")[0],
            Tok::Temporal(Date, "2015-02".into())
        );
        assert_eq!(toks("@T14:34")[0], Tok::Temporal(Time, "14:34".into()));
        // A time with a zone offset is not a time literal: the `Z` is left over.
        assert_eq!(toks("@T14:34:28Z")[1], Tok::Ident("Z".into()));
        assert!(tokenize("@20").is_err());
    }

    #[test]
    fn variables_specials_comments() {
        assert_eq!(
            toks("%`vs-x` %resource $this // c\n /* d */ $index"),
            vec![
                Tok::Var("vs-x".into()),
                Tok::Var("resource".into()),
                Tok::Special("this".into()),
                Tok::Special("index".into()),
                Tok::Eof
            ]
        );
        assert!(tokenize("$foo").is_err());
        assert!(tokenize("/* open").is_err());
        assert!(tokenize("a ! b").is_err());
        assert!(tokenize("é").is_err());
    }
}
