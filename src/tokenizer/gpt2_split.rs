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
//! The character classes are `char_class`'s (the regex engine's own, by construction). The same pattern is the
//! `tokenizers` crate's ByteLevel split (`'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ...`, the same alternatives), which
//! `byte_bpe` runs through this scanner too.

use std::cell::RefCell;
use std::sync::OnceLock;

use rustc_hash::FxHashMap;
use tiktoken_rs::{CoreBPE, Rank};

use super::char_class::{char_at, class_of, classes, Class};
use super::piece_counts::{self, PieceCounts};

/// The same pattern as the `tokenizers` crate spells it (its ByteLevel pre-tokenizer's, and a `Split` of GPT-2-style
/// tokenizer.json files): the contractions listed one by one, the rest identical.
pub const HF_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

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

thread_local! {
    static CACHE: RefCell<FxHashMap<Box<str>, Box<[u32]>>> = RefCell::new(FxHashMap::default());
}

/// `bpe.encode_ordinary(text)` for r50k_base, appended to `out`: split here; a piece that is one vocabulary entry
/// is that token (tiktoken's own first check); another comes from this thread's cache, or is merged by tiktoken-rs's
/// BPE the first time (a piece on its own splits into itself, so its tokens in isolation are its tokens in context).
pub fn encode_into(bpe: &CoreBPE, text: &str, out: &mut Vec<u32>) {
    let ranks = ranks(bpe);
    let mut counts = PieceCounts::default();
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
    piece_counts::add(counts);
}

#[cfg(test)]
mod tests {
    use super::super::char_class::test_texts::{generated, HAND_CASES};
    use super::*;

    /// The pieces of tiktoken-rs's own regex (the r50k pattern through fancy-regex) for `text`.
    fn regex_pieces(text: &str) -> Vec<String> {
        static RE: OnceLock<fancy_regex::Regex> = OnceLock::new();
        let re = RE.get_or_init(|| {
            fancy_regex::Regex::new(r"'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+").unwrap()
        });
        re.find_iter(text).map(|m| m.unwrap().as_str().to_string()).collect()
    }

    /// The pieces of the `tokenizers` crate's regex engine running its own spelling of the pattern (every char
    /// starts a match, so its matches are all the pieces).
    fn hf_regex_pieces(text: &str) -> Vec<String> {
        static RE: OnceLock<tokenizers::utils::SysRegex> = OnceLock::new();
        let re = RE.get_or_init(|| tokenizers::utils::SysRegex::new(HF_PATTERN).unwrap());
        re.find_iter(text).map(|(start, end)| text[start..end].to_string()).collect()
    }

    fn pieces(text: &str) -> Vec<String> {
        let mut v = Vec::new();
        for_each_piece(text, |p| v.push(p.to_string()));
        v
    }

    #[test]
    fn hand_cases_split_like_the_regex() {
        for &text in HAND_CASES {
            assert_eq!(pieces(text), regex_pieces(text), "{text:?}");
            assert_eq!(pieces(text), hf_regex_pieces(text), "{text:?}");
        }
    }

    #[test]
    fn generated_text_splits_like_the_regex() {
        // Strings over an alphabet chosen to hit every branch: spaces of several kinds, apostrophes and the
        // contraction letters, letters and numbers from several scripts, punctuation and symbols.
        let alphabet = " \u{a0}\t\n\r\u{2003}'sdmtlvreSLVRxyZ09٣Ⅻ½.,!?-\"()中é🙂\u{301}_";
        for text in generated(alphabet, 0x2545_f491_4f6c_dd1d, 20_000, 24) {
            assert_eq!(pieces(&text), regex_pieces(&text), "{text:?}");
            assert_eq!(pieces(&text), hf_regex_pieces(&text), "{text:?}");
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
        let alphabet = " \n'sdtlverxyzqkjaeiouAEN0123.,!-中é🙂";
        let before = piece_counts::current();
        let mut pieces = 0u64;
        for text in generated(alphabet, 0x9e37_79b9_7f4a_7c15, 5_000, 160) {
            let mut ours = Vec::new();
            encode_into(bpe, &text, &mut ours);
            assert_eq!(ours, bpe.encode_ordinary(&text), "{text:?}");
            for_each_piece(&text, |_| pieces += 1);
        }
        let after = piece_counts::current();
        let (vocab, cached, merged) =
            (after.vocab - before.vocab, after.cached - before.cached, after.merged - before.merged);
        assert_eq!(vocab + cached + merged, pieces);
        // Random letters make many pieces of several tokens, some of them more than once.
        assert!(vocab > 0 && cached > 0 && merged > 0, "{vocab} {cached} {merged}");
    }
}
