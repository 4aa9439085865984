//! A fast encoder for byte-level BPE tokenizer.json files (GPT-2, Llama-3, Qwen2, SmolLM2 and their like), giving the
//! `tokenizers` crate's ids, for `prep`.
//!
//! Why: through the `tokenizers` crate, `prep` of the FineWeb sample ran at 0.11x the GPT-2 path's tokens/s (2
//! threads, 2026-12); a profile put ~45% of the time in malloc/free inside the crate (its NormalizedString keeps
//! per-byte alignments, every split is a new string). What makes the GPT-2 path fast is reused here: the pre-tokenizer
//! regex written out by hand (`gpt2_split`, `llama3_split`), a shared table of the pieces that are one token, a
//! per-thread cache of the others, and merging only a piece not seen before.
//!
//! Exactly the crate's ids, by construction and by test:
//! - it runs only for a tokenizer whose every part it recognises, read from the loaded tokenizer's own structures
//!   ([`plan`]): BPE without subword prefix/suffix or byte fallback, whose vocabulary holds the 256 byte
//!   symbols; no normalizer or NFC; a pre-tokenizer of `Split` (regex or string, `Isolated`, not inverted), `Digits`
//!   and, last, `ByteLevel` without a prefix space; added tokens all special (which `prep` encodes as text, so none
//!   is split out); a post-processor that adds nothing without special tokens. Anything else is the crate's
//!   ([`crate::tokenizer::hf`] says which, and why, in `prep`'s log);
//! - the merge loop is the crate's own (`Word::merge_all`: a heap of (rank, position), stale entries skipped), over
//!   the crate's merges read back from the loaded model, so ranks and ties are the crate's;
//! - a split regex with no hand-written scanner runs through the crate's own compiled regex;
//! - tests/hf_byte_bpe.rs holds the ids to the crate's, document by document, on tiny Shakespeare and the FineWeb
//!   sample, for GPT-2-, Llama-3-, Qwen2- and SmolLM2-style tokenizers.

use std::cell::RefCell;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;
use rustc_hash::FxHashMap;
use tokenizers::models::bpe::BPE;
use tokenizers::models::ModelWrapper;
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::SplitDelimiterBehavior;
use unicode_normalization_alignments::{is_nfc_quick, IsNormalized, UnicodeNormalization};

use super::piece_counts::{self, PieceCounts};
use super::{char_class, gpt2_split, hf_files, llama3_split};

/// One step of the pre-tokenizer: each splits every piece of the step before it.
enum Stage {
    /// GPT-2's pattern (`ByteLevel` with `use_regex`, or a `Split` with the same regex): `gpt2_split`.
    Gpt2,
    /// Llama-3's pattern (3 digits a piece) or Qwen2's (1): `llama3_split`.
    Llama3 { digits: usize },
    /// Any other `Split`: its own compiled regex.
    Regex(Split),
    /// `Digits`: each numeric char alone (`individual`) or runs of them, as pieces between the rest.
    Digits { individual: bool },
}

impl Stage {
    fn describe(&self) -> String {
        match self {
            Stage::Gpt2 => "GPT-2 regex (hand-written)".into(),
            Stage::Llama3 { digits: 3 } => "Llama-3 regex (hand-written)".into(),
            Stage::Llama3 { .. } => "Qwen2 regex (hand-written)".into(),
            Stage::Regex(_) => "Split regex (the crate's engine)".into(),
            Stage::Digits { individual } => format!("Digits(individual_digits={individual})"),
        }
    }
}

/// What [`plan`] found: the parts a [`ByteBpe`] is built from.
pub(super) struct Plan<'a> {
    bpe: &'a BPE,
    /// The tokenizer.json the tokenizer was loaded from (its merges, in rank order).
    json: &'a [u8],
    stages: Vec<Stage>,
    nfc: bool,
}

/// Whether the fast path covers `tokenizer` (loaded from `json`) exactly: its plan, or the first part it does not
/// recognise.
pub(super) fn plan<'a>(tokenizer: &'a tokenizers::Tokenizer, json: &'a [u8]) -> Result<Plan<'a>, String> {
    let ModelWrapper::BPE(bpe) = tokenizer.get_model() else {
        return Err(format!("model {}", type_name(tokenizer.get_model())));
    };
    // (BPE dropout is refused when the tokenizer is loaded: `hf`.)
    // GPT-2's own tokenizer.json spells "none" as "" for both.
    let set = |affix: &Option<String>| affix.as_deref().is_some_and(|a| !a.is_empty());
    if set(&bpe.continuing_subword_prefix) || set(&bpe.end_of_word_suffix) {
        return Err("BPE continuing_subword_prefix / end_of_word_suffix".into());
    }
    if bpe.byte_fallback {
        return Err("BPE byte_fallback".into());
    }
    let nfc = match tokenizer.get_normalizer() {
        None => false,
        Some(NormalizerWrapper::NFC(_)) => true,
        Some(other) => return Err(format!("normalizer {}", type_name(other))),
    };
    let mut stages = Vec::new();
    let mut byte_level = false;
    match tokenizer.get_pre_tokenizer() {
        Some(pre) => add_stages(pre, &mut stages, &mut byte_level)?,
        None => return Err("no pre-tokenizer (not byte-level)".into()),
    }
    if !byte_level {
        return Err("no ByteLevel pre-tokenizer".into());
    }
    if let Some(token) = tokenizer.get_added_tokens_decoder().values().find(|t| !t.special) {
        return Err(format!("added token `{}` that is not special (split out of the text)", token.content));
    }
    if let Some(post) = tokenizer.get_post_processor() {
        let value = serde_json::to_value(post).map_err(|e| format!("post-processor: {e}"))?;
        post_processor_adds_nothing(&value)?;
    }
    Ok(Plan { bpe, json, stages, nfc })
}

/// Append the stages of `pre` (a `Sequence` flattened); `ByteLevel` must come last.
fn add_stages(pre: &PreTokenizerWrapper, stages: &mut Vec<Stage>, byte_level: &mut bool) -> Result<(), String> {
    if *byte_level {
        return Err(format!("pre-tokenizer {} after ByteLevel", type_name(pre)));
    }
    match pre {
        PreTokenizerWrapper::Sequence(seq) => {
            for p in seq.as_ref() {
                add_stages(p, stages, byte_level)?;
            }
        }
        PreTokenizerWrapper::ByteLevel(b) => {
            if b.add_prefix_space {
                return Err("ByteLevel add_prefix_space".into());
            }
            if b.use_regex {
                stages.push(Stage::Gpt2);
            }
            *byte_level = true;
        }
        PreTokenizerWrapper::Split(split) => {
            if split.behavior != SplitDelimiterBehavior::Isolated || split.invert {
                return Err(format!("Split behavior {:?}, invert {}", split.behavior, split.invert));
            }
            stages.push(match &split.pattern {
                SplitPattern::Regex(r) if r == gpt2_split::HF_PATTERN => Stage::Gpt2,
                SplitPattern::Regex(r) => match llama3_split::digits_per_piece(r) {
                    Some(digits) => Stage::Llama3 { digits },
                    None => Stage::Regex(split.clone()),
                },
                SplitPattern::String(_) => Stage::Regex(split.clone()),
            });
        }
        PreTokenizerWrapper::Digits(d) => stages.push(Stage::Digits { individual: d.individual_digits }),
        other => return Err(format!("pre-tokenizer {}", type_name(other))),
    }
    Ok(())
}

/// A post-processor (as JSON) that, asked for no special tokens, returns the text's ids as they are.
fn post_processor_adds_nothing(value: &serde_json::Value) -> Result<(), String> {
    match value["type"].as_str().unwrap_or("") {
        "ByteLevel" | "RobertaProcessing" | "BertProcessing" => Ok(()),
        // Its special tokens are left out; the text's ids appear once per `Sequence` piece of the template.
        "TemplateProcessing" => {
            let single = value["single"].as_array().map_or(&[][..], |a| a.as_slice());
            match single.iter().filter(|p| p.get("Sequence").is_some()).count() {
                1 => Ok(()),
                n => Err(format!("TemplateProcessing with the text {n} times")),
            }
        }
        "Sequence" => value["processors"].as_array().into_iter().flatten().try_for_each(post_processor_adds_nothing),
        other => Err(format!("post-processor {other}")),
    }
}

/// The `type` a tokenizer part serialises with (`Metaspace`, `Unigram`, ...), for messages.
fn type_name(part: &impl serde::Serialize) -> String {
    serde_json::to_value(part).ok().and_then(|v| v["type"].as_str().map(str::to_string)).unwrap_or("?".into())
}

/// The part of a tokenizer.json the merge table is read from.
#[derive(serde::Deserialize)]
struct TokenizerJsonMerges {
    model: ModelMerges,
}

#[derive(serde::Deserialize)]
struct ModelMerges {
    #[serde(default)]
    merges: Vec<MergeSpelling>,
}

/// A merge as tokenizer.json spells it: `["a", "b"]`, or (older files) `"a b"`.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum MergeSpelling {
    Pair(String, String),
    Joined(String),
}

/// Entries a thread's piece cache holds before it is cleared (as `gpt2_split`'s).
const CACHE_CAP: usize = 1 << 18;

/// A byte-level BPE tokenizer's encoder, built from its [`Plan`].
pub(super) struct ByteBpe {
    stages: Vec<Stage>,
    nfc: bool,
    /// The id of each byte's symbol.
    byte_ids: [u32; 256],
    /// (left id, right id) -> (rank, merged id): the crate's merge map.
    merges: FxHashMap<(u32, u32), (u32, u32)>,
    /// Every piece whose tokens are one vocabulary entry, by its bytes: the whole vocabulary under `ignore_merges`
    /// (the crate looks a piece up first), else each entry that merges back into itself.
    single: FxHashMap<Box<[u8]>, u32>,
    /// Tells threads' caches of different tokenizers apart.
    instance: u64,
    description: String,
}

impl ByteBpe {
    /// The tables: the byte symbols' ids, the merges with their ranks, the one-token pieces (built on all threads:
    /// a vocabulary of 128k entries, each merged once, is ~0.1 s on one core).
    pub(super) fn build(plan: Plan<'_>) -> Result<ByteBpe, String> {
        let Plan { bpe, json, stages, nfc } = plan;
        // The split's character classes (~1.1M chars through three regexes) are built meanwhile.
        let needs_classes = stages.iter().any(|s| matches!(s, Stage::Gpt2 | Stage::Llama3 { .. }));
        std::thread::scope(|s| {
            if needs_classes {
                s.spawn(char_class::warm_up);
            }
            Self::build_tables(bpe, json, stages, nfc)
        })
    }

    fn build_tables(bpe: &BPE, json: &[u8], stages: Vec<Stage>, nfc: bool) -> Result<ByteBpe, String> {
        let vocab = bpe.get_vocab();
        // A byte-level vocabulary spells byte `b` as `chars[b]` (GPT-2's map, which the crate's ByteLevel copies).
        let chars = hf_files::byte_to_unicode();
        let mut byte_ids = [0u32; 256];
        for (b, c) in chars.iter().enumerate() {
            byte_ids[b] = *vocab
                .get(c.to_string().as_str())
                .ok_or_else(|| format!("byte 0x{b:02X} (`{c}`) has no token in the vocabulary"))?;
        }
        // The merges as the crate reads them: rank = place in tokenizer.json's list, a pair listed twice keeps its
        // last rank (the crate collects them into a map). Read from the file, not the loaded model: serialising the
        // model (its only way out) took ~0.1 s of a GPT-2 vocabulary's start-up, on one thread.
        let listed: TokenizerJsonMerges =
            serde_json::from_slice(json).map_err(|e| format!("tokenizer.json model.merges: {e}"))?;
        let mut merges = FxHashMap::default();
        for (rank, merge) in listed.model.merges.iter().enumerate() {
            let (a, b) = match merge {
                MergeSpelling::Pair(a, b) => (a.as_str(), b.as_str()),
                MergeSpelling::Joined(line) => line.split_once(' ').unwrap_or((line, "")),
            };
            let id = |s: &str| vocab.get(s).copied();
            let (Some(a_id), Some(b_id)) = (id(a), id(b)) else {
                return Err(format!("merge {rank} `{a} {b}` is not a pair of vocabulary entries"));
            };
            let merged = vocab.get(&format!("{a}{b}")).ok_or_else(|| format!("merge `{a} {b}` makes no entry"))?;
            merges.insert((a_id, b_id), (rank as u32, *merged));
        }
        let mut byte_of = FxHashMap::default();
        for (b, c) in chars.iter().enumerate() {
            byte_of.insert(*c, b as u8);
        }
        // Entries spelled in byte symbols only: any other (an added token's text) can never be a piece.
        let entries: Vec<(Box<[u8]>, u32)> = vocab
            .iter()
            .filter_map(|(token, &id)| {
                let bytes: Option<Vec<u8>> = token.chars().map(|c| byte_of.get(&c).copied()).collect();
                bytes.map(|b| (b.into_boxed_slice(), id))
            })
            .collect();
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let mut this = ByteBpe {
            stages,
            nfc,
            byte_ids,
            merges,
            single: FxHashMap::default(),
            instance: NEXT.fetch_add(1, Ordering::Relaxed),
            description: String::new(),
        };
        this.single = if bpe.ignore_merges {
            entries.into_iter().collect()
        } else {
            entries
                .into_par_iter()
                .filter(|(bytes, id)| {
                    let mut ids = Vec::with_capacity(1);
                    this.merge_into(bytes, &mut ids);
                    ids == [*id]
                })
                .collect()
        };
        let split: Vec<String> = this.stages.iter().map(Stage::describe).collect();
        this.description = format!(
            "byte-level BPE fast path ({}{}, {} merges{})",
            if nfc { "NFC, " } else { "" },
            if split.is_empty() { "no split".into() } else { split.join(" then ") },
            this.merges.len(),
            if bpe.ignore_merges { ", ignore_merges" } else { "" }
        );
        Ok(this)
    }

    /// One line for `prep`'s log: which path encodes, with what.
    pub(super) fn describe(&self) -> &str {
        &self.description
    }

    /// `text`'s ids (no boundary tokens), appended to `out`: what the crate's `encode(text, false)` gives with
    /// special-token strings treated as text.
    pub(super) fn encode_into(&self, text: &str, out: &mut Vec<u32>) {
        let normalized: String;
        let text = if self.nfc && !text.is_ascii() && is_nfc_quick(text.chars()) != IsNormalized::Yes {
            // The crate's NFC (`NormalizedString::nfc`): the same normalization crate, char by char.
            normalized = text.nfc().map(|(c, _)| c).collect();
            &normalized
        } else {
            text
        };
        let mut counts = PieceCounts::default();
        CACHE.with_borrow_mut(|cache| {
            if cache.0 != Some(self.instance) {
                *cache = (Some(self.instance), FxHashMap::default());
            }
            let cache = &mut cache.1;
            split(&self.stages, text, &mut |piece: &str| {
                let piece = piece.as_bytes();
                if let Some(&id) = self.single.get(piece) {
                    out.push(id);
                    counts.vocab += 1;
                } else if let Some(ids) = cache.get(piece) {
                    out.extend_from_slice(ids);
                    counts.cached += 1;
                } else {
                    counts.merged += 1;
                    let start = out.len();
                    self.merge_into(piece, out);
                    if cache.len() >= CACHE_CAP {
                        cache.clear();
                    }
                    cache.insert(piece.into(), out[start..].into());
                }
            });
        });
        piece_counts::add(counts);
    }

    /// The crate's `BPE::merge_word` + `Word::merge_all` for one piece (every byte a symbol; no dropout: `hf`
    /// refuses it): merge the adjacent pair of lowest rank, leftmost first, until none is a merge; ids appended to
    /// `out`.
    fn merge_into(&self, piece: &[u8], out: &mut Vec<u32>) {
        let n = piece.len();
        let mut symbols: Vec<Symbol> = piece
            .iter()
            .enumerate()
            .map(|(i, &b)| Symbol {
                id: self.byte_ids[b as usize],
                prev: i as isize - 1,
                next: if i + 1 < n { i as isize + 1 } else { -1 },
                removed: false,
            })
            .collect();
        let mut queue: BinaryHeap<Merge> = symbols
            .windows(2)
            .enumerate()
            .filter_map(|(pos, w)| self.merges.get(&(w[0].id, w[1].id)).map(|&(rank, id)| Merge { rank, pos, id }))
            .collect();
        while let Some(top) = queue.pop() {
            let left = symbols[top.pos];
            if left.removed || left.next == -1 {
                continue;
            }
            let next_pos = left.next as usize;
            let right = symbols[next_pos];
            // An entry made stale by an earlier merge: the pair there now is another one.
            if self.merges.get(&(left.id, right.id)).is_none_or(|&(_, id)| id != top.id) {
                continue;
            }
            symbols[top.pos].id = top.id;
            symbols[top.pos].next = right.next;
            symbols[next_pos].removed = true;
            if right.next >= 0 {
                symbols[right.next as usize].prev = top.pos as isize;
            }
            let current = symbols[top.pos];
            if current.prev >= 0 {
                let prev = current.prev as usize;
                if let Some(&(rank, id)) = self.merges.get(&(symbols[prev].id, current.id)) {
                    queue.push(Merge { rank, pos: prev, id });
                }
            }
            if current.next >= 0 {
                if let Some(&(rank, id)) = self.merges.get(&(current.id, symbols[current.next as usize].id)) {
                    queue.push(Merge { rank, pos: top.pos, id });
                }
            }
        }
        out.extend(symbols.iter().filter(|s| !s.removed).map(|s| s.id));
    }
}

/// A symbol of a piece being merged: its id and its live neighbours (-1: none), as the crate's `Word` keeps them.
#[derive(Clone, Copy)]
struct Symbol {
    id: u32,
    prev: isize,
    next: isize,
    removed: bool,
}

/// A candidate merge of the symbol at `pos` with the next one; the heap pops the lowest rank, then the lowest `pos`.
#[derive(PartialEq, Eq)]
struct Merge {
    rank: u32,
    pos: usize,
    id: u32,
}

impl Ord for Merge {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.rank, other.pos).cmp(&(self.rank, self.pos))
    }
}

impl PartialOrd for Merge {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

type PieceCache = (Option<u64>, FxHashMap<Box<[u8]>, Box<[u32]>>);

thread_local! {
    /// This thread's pieces of several tokens, for the tokenizer it last encoded with.
    static CACHE: RefCell<PieceCache> = RefCell::new((None, FxHashMap::default()));
}

/// Calls `f` with each piece of `text` after every stage, in order; empty pieces are dropped (as the crate does).
fn split(stages: &[Stage], text: &str, f: &mut dyn FnMut(&str)) {
    let Some((stage, rest)) = stages.split_first() else {
        if !text.is_empty() {
            f(text);
        }
        return;
    };
    let mut next = |piece: &str| split(rest, piece, f);
    match stage {
        Stage::Gpt2 => gpt2_split::for_each_piece(text, &mut next),
        Stage::Llama3 { digits } => llama3_split::for_each_piece(text, *digits, &mut next),
        Stage::Regex(s) => {
            // The crate's `Pattern for &SysRegex` with `Isolated`: matches and the text between them (its
            // iterator stops at a regex error, leaving the rest one piece, as the crate's does).
            let mut prev = 0;
            for (start, end) in s.regex.find_iter(text) {
                next(&text[prev..start]);
                next(&text[start..end]);
                prev = end;
            }
            next(&text[prev..]);
        }
        Stage::Digits { individual } => {
            // `char::is_numeric` chars alone (`Isolated`) or in runs (`Contiguous`), and the text between them.
            let mut run_start = 0;
            let mut in_digits = false;
            for (i, c) in text.char_indices() {
                let digit = c.is_numeric();
                if digit && *individual {
                    next(&text[run_start..i]);
                    next(&text[i..i + c.len_utf8()]);
                    run_start = i + c.len_utf8();
                } else if digit != in_digits {
                    next(&text[run_start..i]);
                    run_start = i;
                }
                in_digits = digit && !*individual;
            }
            next(&text[run_start..]);
        }
    }
}
