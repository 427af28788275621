//! Full text for `_text` / `_content` on PostgreSQL `tsvector`.
//!
//! Words are cut and normalised here, in Rust, for both the stored text and the
//! query: a word is a run of letters and digits, lower-cased with its accents removed
//! (the same words the SQLite backend's `unicode61 remove_diacritics` tokenizer makes).
//! The store sends PostgreSQL a finished `tsvector` (`'word':1 'other':2`) and a
//! finished `tsquery` whose every lexeme is quoted, so nothing a user typed is ever
//! read as query syntax and no text-search configuration or extension is needed.

use salus_store::TextQuery;
use unicode_normalization::{char::is_combining_mark, UnicodeNormalization};

/// PostgreSQL keeps positions up to this value (larger ones are clamped).
const MAX_POSITION: usize = 16_383;
/// PostgreSQL keeps at most 256 positions per lexeme.
const MAX_POSITIONS_PER_WORD: usize = 255;
/// Lexemes must be shorter than 2 KiB.
const MAX_WORD_BYTES: usize = 2_000;
/// A `tsvector` must stay under 1 MiB; stop adding words well before that.
const MAX_VECTOR_BYTES: usize = 900_000;

/// The normalised words of `text`, in order.
pub(crate) fn words(text: &str) -> Vec<String> {
    let mut out = vec![];
    let mut cur = String::new();
    let flush = |cur: &mut String, out: &mut Vec<String>| {
        if !cur.is_empty() {
            let w: String = cur
                .nfd()
                .filter(|c| !is_combining_mark(*c))
                .flat_map(char::to_lowercase)
                .collect();
            if !w.is_empty() && w.len() <= MAX_WORD_BYTES {
                out.push(w);
            }
            cur.clear();
        }
    };
    for c in text.chars() {
        if c.is_alphanumeric() || is_combining_mark(c) {
            cur.push(c);
        } else {
            flush(&mut cur, &mut out);
        }
    }
    flush(&mut cur, &mut out);
    out
}

/// A lexeme in `tsvector`/`tsquery` input syntax: single-quoted, quotes and
/// backslashes escaped (normalised words hold neither, but quote safely anyway).
fn quote(word: &str) -> String {
    let mut s = String::with_capacity(word.len() + 2);
    s.push('\'');
    for c in word.chars() {
        match c {
            '\'' => s.push_str("''"),
            '\\' => s.push_str("\\\\"),
            c => s.push(c),
        }
    }
    s.push('\'');
    s
}

/// `text` as `tsvector` input (`'word':1,4 'other':2`), with word positions so that
/// phrases can be matched.
pub(crate) fn to_tsvector(text: &str) -> String {
    let mut positions: std::collections::BTreeMap<String, Vec<usize>> = Default::default();
    let mut size = 0;
    for (i, w) in words(text).into_iter().enumerate() {
        let pos = (i + 1).min(MAX_POSITION);
        size += w.len() + 8;
        if size > MAX_VECTOR_BYTES {
            break;
        }
        let p = positions.entry(w).or_default();
        if p.len() < MAX_POSITIONS_PER_WORD && p.last() != Some(&pos) {
            p.push(pos);
        }
    }
    let mut out = String::with_capacity(size);
    for (w, ps) in positions {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&quote(&w));
        out.push(':');
        let ps: Vec<String> = ps.iter().map(|p| p.to_string()).collect();
        out.push_str(&ps.join(","));
    }
    out
}

/// A [`TextQuery`] as `tsquery` input: alternatives joined by `|`, the terms of one
/// alternative by `&`, the words of a phrase by `<->`, a trailing `*` as `:*` (prefix).
/// `None` when no alternative has a word to look for (the criterion matches nothing).
pub(crate) fn to_tsquery(query: &TextQuery) -> Option<String> {
    let alternatives: Vec<String> = query
        .any
        .iter()
        .filter_map(|terms| {
            let mut all = vec![];
            for t in terms {
                let (body, prefix) = match t.strip_suffix('*') {
                    Some(w) => (w, true),
                    None => (t.as_str(), false),
                };
                let ws = words(body);
                if ws.is_empty() {
                    return None; // a term without words: this alternative cannot match
                }
                let n = ws.len();
                let parts: Vec<String> = ws
                    .iter()
                    .enumerate()
                    .map(|(i, w)| {
                        if prefix && i + 1 == n {
                            format!("{}:*", quote(w))
                        } else {
                            quote(w)
                        }
                    })
                    .collect();
                all.push(format!("({})", parts.join(" <-> ")));
            }
            (!all.is_empty()).then(|| format!("({})", all.join(" & ")))
        })
        .collect();
    (!alternatives.is_empty()).then(|| alternatives.join(" | "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tq(any: &[&[&str]]) -> Option<String> {
        to_tsquery(&TextQuery {
            any: any
                .iter()
                .map(|a| a.iter().map(|t| t.to_string()).collect())
                .collect(),
        })
    }

    #[test]
    fn words_are_lowercase_and_accent_free() {
        assert_eq!(
            words("Héart failure, CHRONIC ça-va 8480-6"),
            vec!["heart", "failure", "chronic", "ca", "va", "8480", "6"]
        );
    }

    #[test]
    fn vectors_keep_positions() {
        assert_eq!(to_tsvector("b a b"), "'a':2 'b':1,3");
        assert_eq!(to_tsvector(""), "");
    }

    #[test]
    fn queries_quote_every_lexeme() {
        assert_eq!(tq(&[&["heart"]]).as_deref(), Some("(('heart'))"));
        assert_eq!(
            tq(&[&["failure chronic", "cardio*"], &["arm"]]).as_deref(),
            Some("(('failure' <-> 'chronic') & ('cardio':*)) | (('arm'))")
        );
        // query syntax typed by a user is only words
        assert_eq!(
            tq(&[&["\"quoted\" AND (odd"]]).as_deref(),
            Some("(('quoted' <-> 'and' <-> 'odd'))")
        );
        assert_eq!(tq(&[&["!!"]]), None);
        assert_eq!(tq(&[&["!!"], &["x"]]).as_deref(), Some("(('x'))"));
    }

    #[test]
    fn quoting_escapes() {
        assert_eq!(quote("a'b\\c"), "'a''b\\\\c'");
    }
}
