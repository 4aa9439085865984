//! The Llama-3 / Qwen2 pre-tokenizer regex written out by hand (the `Split` in front of their ByteLevel), for
//! `byte_bpe`.
//!
//! Why: in a byte-level BPE with a piece cache, running the split regex through fancy-regex is most of the time left
//! (GPT-2's pattern was ~50% of `prep` before `gpt2_split` replaced it). The scanner gives the pieces the `tokenizers`
//! crate's regex gives, by construction of each alternative below and by test against that very regex
//! (`tokenizers::utils::SysRegex`, the crate's engine) on hand cases and generated text.
//!
//! The pattern (leftmost-first alternation; `D` is 3 for Llama-3, whose pattern is cl100k_base's, and 1 for Qwen2):
//! `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,D}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
//! Every char starts a match of some alternative (a letter the 2nd, a number the 3rd, whitespace the last, anything
//! else the 4th), so the pieces cover the text and a `Split` with `Isolated` behaviour yields exactly them.

use super::char_class::{char_at, class_of, classes, Class};

/// Llama-3's split regex, as its tokenizer.json spells it.
pub const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's: Llama-3's with one digit per piece.
pub const QWEN2_PATTERN: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The most digits one piece holds, for a pattern this scanner writes out; `None` for any other pattern.
pub fn digits_per_piece(pattern: &str) -> Option<usize> {
    match pattern {
        LLAMA3_PATTERN => Some(3),
        QWEN2_PATTERN => Some(1),
        _ => None,
    }
}

/// The length of the contraction `(?i:'s|'t|'re|'ve|'m|'ll|'d)` at the start of `rest` (which follows a `'`), 0 if
/// none. Case-insensitive as the regex is under Unicode simple case folding: `s` also matches U+017F LATIN SMALL
/// LETTER LONG S (`ſ`, 2 bytes); the other letters fold only to their ASCII case pair.
fn contraction(rest: &[u8]) -> usize {
    let lower = |b: u8| b.to_ascii_lowercase();
    match rest {
        [0xC5, 0xBF, ..] => 2, // ſ
        [a, ..] if matches!(lower(*a), b's' | b't' | b'm' | b'd') => 1,
        [a, b, ..] if matches!((lower(*a), lower(*b)), (b'r', b'e') | (b'v', b'e') | (b'l', b'l')) => 2,
        _ => 0,
    }
}

/// Calls `f` with each piece of `text` as the pattern with `digits` digits per number piece splits it, in order.
pub fn for_each_piece(text: &str, digits: usize, mut f: impl FnMut(&str)) {
    let table = classes();
    let n = text.len();
    let bytes = text.as_bytes();
    let is_newline = |b: u8| b == b'\r' || b == b'\n';
    // The end of the run of `class` chars from byte `j`, and how many chars it has (at most `max`).
    let run_end = |mut j: usize, class: Class, max: usize| {
        let mut count = 0;
        while j < n && count < max {
            let c = char_at(text, j);
            if class_of(table, c) != class {
                break;
            }
            j += c.len_utf8();
            count += 1;
        }
        j
    };
    let newlines_end = |mut j: usize| {
        while j < n && is_newline(bytes[j]) {
            j += 1;
        }
        j
    };
    let mut i = 0;
    while i < n {
        let c = char_at(text, i);
        let class = class_of(table, c);
        let after = i + c.len_utf8();
        let next_class = (after < n).then(|| class_of(table, char_at(text, after)));
        // 1. A contraction.
        if c == '\'' {
            let len = contraction(&bytes[after..]);
            if len > 0 {
                f(&text[i..after + len]);
                i = after + len;
                continue;
            }
        }
        // 2. `[^\r\n\p{L}\p{N}]?\p{L}+`: letters, with one char before them that is no newline, letter or number.
        let end = match class {
            Class::Letter => Some(run_end(i, Class::Letter, usize::MAX)),
            Class::Space | Class::Other if !is_newline(bytes[i]) && next_class == Some(Class::Letter) => {
                Some(run_end(after, Class::Letter, usize::MAX))
            }
            // 3. `\p{N}{1,D}`.
            Class::Number => Some(run_end(i, Class::Number, digits)),
            _ => None,
        };
        if let Some(end) = end {
            f(&text[i..end]);
            i = end;
            continue;
        }
        // 4. ` ?[^\s\p{L}\p{N}]+[\r\n]*`.
        let other_from = match class {
            Class::Other => Some(i),
            _ if c == ' ' && next_class == Some(Class::Other) => Some(after),
            _ => None,
        };
        if let Some(from) = other_from {
            let end = newlines_end(run_end(from, Class::Other, usize::MAX));
            f(&text[i..end]);
            i = end;
            continue;
        }
        // Whitespace from here on (every other class matched above).
        let space_end = run_end(i, Class::Space, usize::MAX);
        // 5. `\s*[\r\n]+`: `\s*` backs off from the run's end to its last newline, which `[\r\n]+` then takes (the
        // chars after it in the run are no newlines, so it takes that one only).
        if let Some(last_newline) = bytes[i..space_end].iter().rposition(|&b| is_newline(b)) {
            let end = i + last_newline + 1;
            f(&text[i..end]);
            i = end;
            continue;
        }
        // 6. `\s+(?!\S)`: the run, less its last char when a non-space follows it; 7. `\s+` when that leaves
        // nothing.
        let last = if space_end < n { text[..space_end].char_indices().next_back().map_or(i, |(k, _)| k) } else { n };
        let end = if last > i { last } else { space_end };
        f(&text[i..end]);
        i = end;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use super::super::char_class::test_texts::{generated, HAND_CASES};
    use super::*;

    /// The pieces the `tokenizers` crate's own regex engine gives (a `Split` with `Isolated` behaviour: matches and
    /// the text between them, empty ones dropped).
    fn regex_pieces(pattern: &str, text: &str) -> Vec<String> {
        static COMPILED: OnceLock<[tokenizers::utils::SysRegex; 2]> = OnceLock::new();
        let [llama3, qwen2] = COMPILED
            .get_or_init(|| [LLAMA3_PATTERN, QWEN2_PATTERN].map(|p| tokenizers::utils::SysRegex::new(p).unwrap()));
        let re = if pattern == LLAMA3_PATTERN { llama3 } else { qwen2 };
        let mut pieces = Vec::new();
        let mut prev = 0;
        for (start, end) in re.find_iter(text) {
            if prev < start {
                pieces.push(text[prev..start].to_string());
            }
            if start < end {
                pieces.push(text[start..end].to_string());
            }
            prev = end;
        }
        if prev < text.len() {
            pieces.push(text[prev..].to_string());
        }
        pieces
    }

    fn pieces(text: &str, digits: usize) -> Vec<String> {
        let mut v = Vec::new();
        for_each_piece(text, digits, |p| v.push(p.to_string()));
        v
    }

    #[test]
    fn the_patterns_are_recognised_with_their_digit_counts() {
        assert_eq!(digits_per_piece(LLAMA3_PATTERN), Some(3));
        assert_eq!(digits_per_piece(QWEN2_PATTERN), Some(1));
        assert_eq!(digits_per_piece(r"\s+"), None);
    }

    #[test]
    fn hand_cases_split_like_the_regex() {
        for &text in HAND_CASES {
            for (pattern, digits) in [(LLAMA3_PATTERN, 3), (QWEN2_PATTERN, 1)] {
                assert_eq!(pieces(text, digits), regex_pieces(pattern, text), "{text:?} {digits}");
            }
        }
    }

    #[test]
    fn generated_text_splits_like_the_regex() {
        // An alphabet that hits every branch: newlines and other spaces, apostrophes and every contraction letter in
        // both cases (and ſ, which `(?i)` folds to s), letters, numbers and punctuation of several scripts.
        let alphabet = " \u{a0}\t\n\r\u{2003}'sSſdDmMtTlLvVrReExyZ09٣Ⅻ½.,!?-\"()中é🙂\u{301}_";
        for text in generated(alphabet, 0x2545_f491_4f6c_dd1d, 10_000, 24) {
            for (pattern, digits) in [(LLAMA3_PATTERN, 3), (QWEN2_PATTERN, 1)] {
                assert_eq!(pieces(&text, digits), regex_pieces(pattern, &text), "{text:?} {digits}");
            }
        }
    }
}
