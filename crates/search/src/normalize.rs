//! String normalisation for the string index: case- and accent-insensitive matching
//! (R4 search.html#string: "ignoring accents and case").

use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

/// Lower-case, decompose (NFKD) and drop combining marks: `Zoë` → `zoe`.
pub fn normalize(s: &str) -> String {
    s.nfkd()
        .filter(|c| !is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accents_case_and_spaces() {
        assert_eq!(normalize("Zoë  ÅSTRÖM"), "zoe astrom");
        assert_eq!(normalize("Müller-Lüdenscheidt"), "muller-ludenscheidt");
        assert_eq!(normalize(""), "");
    }
}
