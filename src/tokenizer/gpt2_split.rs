//! GPT-2's pre-tokenizer written out by hand, and a per-thread cache of each piece's tokens.
//!
//! Why: profiling `prep fineweb` (perf, one thread) put ~50% of the time in fancy-regex running r50k_base's split
//! pattern and ~30% in the encoder's hash lookups; the BPE merges themselves were ~1%. This module replaces the
//! regex with a scanner and the lookups with a cache, and calls tiktoken-rs only for pieces not seen before, so
//! the tokens are still tiktoken's (held to it on the whole corpus by tests/golden_tokens.rs and on generated
//! text by the tests below).
//!
//! The pattern (tiktoken's r50k_base, leftmost-first alternation):
//! `'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
//! The character classes come from the same regex engine tiktoken-rs uses (`regex` over regex-syntax's Unicode
//! tables): a table of every char's class is built once by running `\p{L}+`, `\p{N}+` and `\s+` over all of
//! Unicode, so a class here is the regex's class by construction.

use std::cell::{Cell, RefCell};
use std::sync::OnceLock;

use rustc_hash::FxHashMap;
use tiktoken_rs::{CoreBPE, Rank};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Class {
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
fn classes() -> &'static [u8] {
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
fn classify(part: &mut [u8], first: u32) {
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

fn class_of(table: &[u8], c: char) -> Class {
    match table[c as usize] {
        0 => Class::Letter,
        1 => Class::Number,
        2 => Class::Space,
        _ => Class::Other,
    }
}

/// The char starting at byte `i` of `text` (which must be a char boundary).
fn char_at(text: &str, i: usize) -> char {
    text[i..].chars().next().expect("i is inside text")
}

/// Calls `f` with each piece of `text` exactly as r50k_base's regex splits it, in order.
pub fn for_each_piece(text: &str, mut f: impl FnMut(&str)) {
    let table = classes();
    let bytes = text.as_bytes();
    let n = text.len();
    let run_end = |mut j: usize, class: Class| {
        while j < n {
            let c = char_at(text, j);
            if class_of(table, c) != class {
                break;
            }
            j += c.len_utf8();
        }
        j
    };
    let mut i = 0;
    while i < n {
        let c = char_at(text, i);
        // 1. '(?:[sdmt]|ll|ve|re): tried first, case-sensitive.
        if c == '\'' {
            let rest = &bytes[i + 1..];
            let len = match rest {
                [b's' | b'd' | b'm' | b't', ..] => 1,
                [b'l', b'l', ..] | [b'v', b'e', ..] | [b'r', b'e', ..] => 2,
                _ => 0,
            };
            if len > 0 {
                f(&text[i..i + 1 + len]);
                i += 1 + len;
                continue;
            }
        }
        // 2. ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: an optional U+0020, then a run of one class.
        let (run_start, class) = if c == ' ' && i + 1 < n {
            match class_of(table, char_at(text, i + 1)) {
                Class::Space => (i, Class::Space),
                k => (i + 1, k),
            }
        } else {
            (i, class_of(table, c))
        };
        if class != Class::Space {
            let end = run_end(run_start, class);
            f(&text[i..end]);
            i = end;
            continue;
        }
        // 3. `\s+(?!\S)`: the whitespace run, less its last char when a non-space follows it; 4. `\s+` when that
        // leaves nothing (a single whitespace char before a non-space).
        let end = run_end(i, Class::Space);
        let last = if end < n { text[..end].char_indices().next_back().map_or(i, |(k, _)| k) } else { end };
        let stop = if last > i { last } else { end };
        f(&text[i..stop]);
        i = stop;
    }
}

/// r50k_base's vocabulary: every ordinary token's bytes -> its rank (tiktoken's `encoder`, which tiktoken-rs keeps
/// private), rebuilt from the decoder once per process and then shared read-only by every thread.
///
/// Why shared: most pieces of English text are one token. With only a per-thread cache, each of N threads had to
/// meet every such piece once before it was cheap, and on many threads each sees 1/N of the corpus, so the share of
/// its pieces still cold grows with N (and a miss went through tiktoken-rs's fancy-regex again). This table answers
/// them on every thread from the first document.
fn ranks(bpe: &CoreBPE) -> &'static FxHashMap<Vec<u8>, Rank> {
    static RANKS: OnceLock<FxHashMap<Vec<u8>, Rank>> = OnceLock::new();
    RANKS.get_or_init(|| {
        // r50k's ordinary tokens are ranks 0..50256; 50256 is <|endoftext|>, a special token no piece can be.
        (0..50256).filter_map(|rank| bpe.decode_bytes(&[rank]).ok().map(|bytes| (bytes, rank))).collect()
    })
}

/// Build the shared vocabulary table now (`TokenizerKind::warm_up`, once the encoder exists).
pub fn warm_up_ranks(bpe: &CoreBPE) {
    ranks(bpe);
}

/// Entries a thread's piece cache holds before it is cleared (~10-20 MB at typical piece lengths). Only pieces of
/// several tokens go in (single tokens are in the shared table).
const CACHE_CAP: usize = 1 << 18;
/// Pieces this long go through tiktoken-rs itself: its `byte_pair_encode` switches to another merge routine at 100
/// bytes, which `byte_pair_split` (the one merge entry point it exports) does not.
const LONG_PIECE: usize = 100;

/// How a thread's pieces were answered, since it started (`prep`'s profile reads it around each segment).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PieceCounts {
    /// One token, from the shared vocabulary table.
    pub vocab: u64,
    /// Several tokens, from this thread's cache.
    pub cached: u64,
    /// Several tokens, merged now (and cached).
    pub merged: u64,
}

thread_local! {
    static CACHE: RefCell<FxHashMap<Box<str>, Box<[u32]>>> = RefCell::new(FxHashMap::default());
    static COUNTS: Cell<PieceCounts> = const { Cell::new(PieceCounts { vocab: 0, cached: 0, merged: 0 }) };
}

/// This thread's piece counts so far.
pub fn piece_counts() -> PieceCounts {
    COUNTS.get()
}

/// `bpe.encode_ordinary(text)` for r50k_base, appended to `out`: split here; a piece that is one vocabulary entry
/// is that token (tiktoken's own first check); another comes from this thread's cache, or is merged by tiktoken-rs's
/// BPE the first time (a piece on its own splits into itself, so its tokens in isolation are its tokens in context).
pub fn encode_into(bpe: &CoreBPE, text: &str, out: &mut Vec<u32>) {
    let ranks = ranks(bpe);
    let mut counts = COUNTS.get();
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        for_each_piece(text, |piece| {
            if let Some(&rank) = ranks.get(piece.as_bytes()) {
                out.push(rank);
                counts.vocab += 1;
                return;
            }
            if let Some(ids) = cache.get(piece) {
                out.extend_from_slice(ids);
                counts.cached += 1;
                return;
            }
            counts.merged += 1;
            let start = out.len();
            if piece.len() < LONG_PIECE {
                // Not a vocabulary entry, so at least 2 bytes (every single byte is one): what `byte_pair_encode`
                // does below 100 bytes, without re-running the split regex over the piece.
                out.extend(tiktoken_rs::byte_pair_split(piece.as_bytes(), ranks).into_iter().map(|part| ranks[part]));
            } else {
                out.extend(bpe.encode_ordinary(piece));
            }
            if cache.len() >= CACHE_CAP {
                cache.clear();
            }
            cache.insert(piece.into(), out[start..].into());
        });
    });
    COUNTS.set(counts);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pieces of tiktoken-rs's own regex (the r50k pattern through fancy-regex) for `text`.
    fn regex_pieces(text: &str) -> Vec<String> {
        static RE: OnceLock<fancy_regex::Regex> = OnceLock::new();
        let re = RE.get_or_init(|| {
            fancy_regex::Regex::new(r"'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+").unwrap()
        });
        re.find_iter(text).map(|m| m.unwrap().as_str().to_string()).collect()
    }

    fn pieces(text: &str) -> Vec<String> {
        let mut v = Vec::new();
        for_each_piece(text, |p| v.push(p.to_string()));
        v
    }

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

    #[test]
    fn hand_cases_split_like_the_regex() {
        for text in [
            "",
            " ",
            "  ",
            "hello world",
            "  hello   world  ",
            "a\n\nb",
            "a \n b\n",
            "\n\n\n",
            "x's y'll z'VE 're 'm 'd 't 'q ''s",
            " 's ?'s !!'ll",
            "12,345.67 and ٣٤٥ and Ⅻ",
            "tab\there\r\nend\u{a0}nbsp\u{3000}ideographic",
            "emoji 🙂🙂 and 中文字符 and ﬁ ligature",
            "mixed: x1y2 3z !? ... --- ~~~",
            " \u{a0} x",
            "trailing \t",
        ] {
            assert_eq!(pieces(text), regex_pieces(text), "{text:?}");
        }
    }

    #[test]
    fn generated_text_splits_like_the_regex() {
        // Strings over an alphabet chosen to hit every branch: spaces of several kinds, apostrophes and the
        // contraction letters, letters and numbers from several scripts, punctuation and symbols.
        let alphabet: Vec<char> = " \u{a0}\t\n\r\u{2003}'sdmtlvreSLVRxyZ09٣Ⅻ½.,!?-\"()中é🙂\u{301}_".chars().collect();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 24) as usize;
            let text: String = (0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect();
            assert_eq!(pieces(&text), regex_pieces(&text), "{text:?}");
        }
    }

    #[test]
    fn encoding_equals_tiktoken() {
        let bpe = tiktoken_rs::r50k_base_singleton();
        let long_word = "Pneumonoultramicroscopicsilicovolcanoconiosis".repeat(3);
        let long_number = "31415926535897932384626433832795028841971".repeat(4);
        for text in [
            "Hello, I'm a language model,",
            "  spaced\n\n\nout  ",
            "ﬁ🙂 ٣٤٥ x's",
            "",
            // Pieces of several tokens (merged, then from the cache) and pieces past 100 bytes (tiktoken-rs itself).
            "antidisestablishmentarianism quizzaciously 1234567 ...!?!",
            &long_word,
            &format!(" {long_number}"),
        ] {
            let mut ours = Vec::new();
            encode_into(bpe, text, &mut ours);
            encode_into(bpe, text, &mut ours); // the second time from the cache
            let theirs = bpe.encode_ordinary(text);
            assert_eq!(ours, [theirs.clone(), theirs].concat(), "{text:?}");
        }
    }

    #[test]
    fn generated_text_encodes_like_tiktoken_and_counts_its_pieces() {
        let bpe = tiktoken_rs::r50k_base_singleton();
        let alphabet: Vec<char> = " \n'sdtlverxyzqkjaeiouAEN0123.,!-中é🙂".chars().collect();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let before = piece_counts();
        let mut pieces = 0u64;
        for _ in 0..5_000 {
            let len = (next() % 160) as usize;
            let text: String = (0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect();
            let mut ours = Vec::new();
            encode_into(bpe, &text, &mut ours);
            assert_eq!(ours, bpe.encode_ordinary(&text), "{text:?}");
            for_each_piece(&text, |_| pieces += 1);
        }
        let after = piece_counts();
        let (vocab, cached, merged) =
            (after.vocab - before.vocab, after.cached - before.cached, after.merged - before.merged);
        assert_eq!(vocab + cached + merged, pieces);
        // Random letters make many pieces of several tokens, some of them more than once.
        assert!(vocab > 0 && cached > 0 && merged > 0, "{vocab} {cached} {merged}");
    }
}
