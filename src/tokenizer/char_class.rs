//! The character classes of the pre-tokenizer regexes (`\p{L}`, `\p{N}`, `\s`, and the rest), one byte per Unicode
//! scalar value, for the hand-written scanners (`gpt2_split`, `llama3_split`).
//!
//! The classes come from the same regex engine tiktoken-rs and the `tokenizers` crate split with (`regex` and
//! fancy-regex, both over regex-syntax's Unicode tables): a table of every char's class is built once by running
//! `\p{L}+`, `\p{N}+` and `\s+` over all of Unicode, so a class here is the regex's class by construction.

use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Class {
    /// `\p{L}`
    Letter = 0,
    /// `\p{N}`
    Number = 1,
    /// `\s`
    Space = 2,
    /// anything else: `[^\s\p{L}\p{N}]`
    Other = 3,
}

/// The class of every char (indexed by scalar value; surrogates unused).
pub(super) fn classes() -> &'static [u8] {
    static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = vec![Class::Other as u8; char::MAX as usize + 1];
        // ~1.1M chars through three regexes is ~50 ms on one core, on the critical path of every `prep` start; a
        // char's class does not depend on its neighbours (every char of a class is inside some match of `class+`),
        // so ranges of code points are classified on their own threads.
        let parts = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8);
        let chunk = table.len().div_ceil(parts);
        std::thread::scope(|s| {
            for (i, part) in table.chunks_mut(chunk).enumerate() {
                s.spawn(move || classify(part, (i * chunk) as u32));
            }
        });
        table
    })
}

/// Fill `part` (the table entries of code points `first..first + part.len()`) with their classes.
pub(super) fn classify(part: &mut [u8], first: u32) {
    let chars: String = (first..first + part.len() as u32).filter_map(char::from_u32).collect();
    for (pattern, class) in [(r"\p{L}+", Class::Letter), (r"\p{N}+", Class::Number), (r"\s+", Class::Space)] {
        let re = regex::Regex::new(pattern).expect("a valid class pattern");
        for m in re.find_iter(&chars) {
            for c in m.as_str().chars() {
                part[(c as u32 - first) as usize] = class as u8;
            }
        }
    }
}

/// Build the class table now (~1.1M chars through three regexes) rather than on the first piece.
pub fn warm_up() {
    classes();
}

pub(super) fn class_of(table: &[u8], c: char) -> Class {
    match table[c as usize] {
        0 => Class::Letter,
        1 => Class::Number,
        2 => Class::Space,
        _ => Class::Other,
    }
}

/// The char starting at byte `i` of `text` (which must be a char boundary).
pub(super) fn char_at(text: &str, i: usize) -> char {
    text[i..].chars().next().expect("i is inside text")
}

/// Texts the hand-written scanners are held to their regexes on (`gpt2_split`, `llama3_split`).
#[cfg(test)]
pub(super) mod test_texts {
    /// Hand cases: every alternative of both patterns, newlines inside whitespace runs, contractions in both cases
    /// (and `ſ`, which `(?i)` folds to `s`), numbers of several scripts and lengths, non-ASCII spaces.
    pub const HAND_CASES: &[&str] = &[
        "",
        " ",
        "  ",
        "hello world",
        "  hello   world  ",
        "a\n\nb",
        "a \n b\n",
        "\n\n\n",
        " \r\n\t x",
        "x's y'll z'VE 're 'm 'd 't 'q ''s",
        "x's y'll z'VE 'RE 'M 'd 't 'q ''s 'ſ 'Ll",
        " 's ?'s !!'ll",
        "12,345.67 and ٣٤٥ and Ⅻ",
        "12,345.67 and 1234567 and ٣٤٥ and Ⅻ",
        "tab\there\r\nend\u{a0}nbsp\u{3000}ideographic",
        "emoji 🙂🙂 and 中文字符 and ﬁ ligature",
        "mixed: x1y2 3z !? ... --- ~~~",
        "mixed: x1y2 3z !? ... --- ~~~\n\n",
        "(foo) [bar]\n{baz}\r\n",
        " \u{a0} x",
        "trailing \t",
        "a  \n  \n  b",
    ];

    /// `count` strings of up to `max_len - 1` chars drawn from `alphabet` (xorshift64 from `seed`: the same strings on
    /// every run).
    pub fn generated(alphabet: &str, seed: u64, count: usize, max_len: u64) -> Vec<String> {
        let alphabet: Vec<char> = alphabet.chars().collect();
        let mut state = seed;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        (0..count)
            .map(|_| {
                let len = (next() % max_len) as usize;
                (0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_of_code_point_ranges_equal_one_pass_over_all_of_unicode() {
        let mut whole = vec![Class::Other as u8; char::MAX as usize + 1];
        classify(&mut whole, 0);
        assert_eq!(classes(), &whole[..]);
        // Cut where the machine's core count would not: 7 ranges, boundaries inside letter and space runs.
        let mut cut = vec![Class::Other as u8; whole.len()];
        let chunk = cut.len().div_ceil(7);
        for (i, part) in cut.chunks_mut(chunk).enumerate() {
            classify(part, (i * chunk) as u32);
        }
        assert_eq!(cut, whole);
        assert_eq!(class_of(&whole, 'é'), Class::Letter);
        assert_eq!(class_of(&whole, '٣'), Class::Number);
        assert_eq!(class_of(&whole, '\u{3000}'), Class::Space);
    }
}
