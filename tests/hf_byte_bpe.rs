//! The byte-level BPE fast path (src/tokenizer/byte_bpe.rs) gives the `tokenizers` crate's ids, document by document:
//! on every FineWeb sample document (the 4 vendored files; all 28 where the shared data is) and tiny Shakespeare (as
//! one document and paragraph by paragraph), for the GPT-2-style fixture (`bpe`) and the Llama-3-style one
//! (`bpe_llama3`: Split with Llama-3's regex, `ignore_merges`), and for variants of them edited here: Qwen2's regex
//! with NFC, SmolLM2's Digits before a GPT-2 ByteLevel, split regexes without a hand-written scanner, `ignore_merges`
//! flipped, merges spelled as strings or listed twice. Tokenizers it does not cover go to the crate and say why;
//! `prep` logs which path ran and writes the same shards either way. (The crate itself is held to Python `tokenizers`
//! by tests/hf_tokenizer.rs.)

use std::path::{Path, PathBuf};
use std::process::Command;

use rayon::prelude::*;
use serde_json::{json, Value};
use tokenmill::tokenizer::HfTokenizer;

#[path = "common/mod.rs"]
mod common;

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf_tokenizers").join(name)
}

fn fixture_json(name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(fixture_dir(name).join("tokenizer.json")).unwrap()).unwrap()
}

/// A tokenizer from tokenizer.json contents (`what` names it in failures).
fn tokenizer(json: &Value, what: &str) -> HfTokenizer {
    let path = PathBuf::from(format!("{what}/tokenizer.json"));
    HfTokenizer::from_bytes(serde_json::to_vec(json).unwrap(), None, what, &path).unwrap()
}

/// Tiny Shakespeare whole, and its paragraphs.
fn shakespeare() -> Vec<String> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("data/tinyshakespeare.txt")).unwrap();
    let mut docs: Vec<String> = text.split("\n\n").map(str::to_string).collect();
    docs.push(text);
    docs
}

/// The FineWeb sample's documents: the vendored files, and the other 24 of the shared data where it is (`all`).
fn fineweb(all: bool) -> Vec<String> {
    let shared = common::shared_data_root().join("fineweb_legal_pilot");
    let mut files: Vec<PathBuf> =
        common::FINEWEB_FIXTURE_FILES.iter().map(|f| common::fineweb_fixture_dir().join(f)).collect();
    if all && shared.is_dir() {
        files = (1..=28).map(|i| shared.join(format!("batch_{i:06}.parquet"))).collect();
    } else if all {
        eprintln!("skipped the other 24 FineWeb files: no {}", shared.display());
    }
    files.iter().flat_map(|f| common::read_parquet_texts(f)).collect()
}

/// Texts that reach the corners: long runs (merged past any cache), digits, contractions in both cases, newlines in
/// whitespace runs, combining marks and compatibility forms (NFC changes them), special-token strings as text.
fn corner_cases() -> Vec<String> {
    vec![
        String::new(),
        " ".repeat(5000),
        "a".repeat(3000),
        "1234567890".repeat(50),
        "=-".repeat(700) + "\n\n\n",
        "It's THEY'RE we'VE I'M you'LL he'D 'ſ x''s".into(),
        "  \n\t \r\n  word \n\n\n  \u{a0}\u{3000}end   ".into(),
        "e\u{301} A\u{30a} \u{212b} \u{1100}\u{1161}\u{11a8} ﬁ ① ½ Ⅻ ٣٤٥ 中文 🙂🎉 \u{fb01}".into(),
        "<|endoftext|> <|begin_of_text|> <|end_of_text|> <s> </s> <|reserved_special_token_0|>".into(),
    ]
}

/// Every text's ids through the fast path (twice: merged, then from the thread's cache) equal the crate's.
fn assert_fast_equals_crate(t: &HfTokenizer, what: &str, texts: &[String]) {
    assert!(t.is_fast(), "{what}: {}", t.encoder());
    texts.par_iter().enumerate().for_each(|(i, text)| {
        let (mut fast, mut reference) = (Vec::new(), Vec::new());
        t.encode_with_crate_into(text, &mut reference).unwrap();
        for pass in 0..2 {
            fast.clear();
            t.encode_into(text, &mut fast).unwrap();
            if fast != reference {
                let at =
                    fast.iter().zip(&reference).position(|(a, b)| a != b).unwrap_or(fast.len().min(reference.len()));
                panic!(
                    "{what}: document {i} (pass {pass}) differs at token {at}: fast {:?}, crate {:?}",
                    &fast[at..(at + 8).min(fast.len())],
                    &reference[at..(at + 8).min(reference.len())]
                );
            }
        }
    });
}

#[test]
fn the_fixtures_fast_ids_equal_the_crates_on_fineweb_and_tiny_shakespeare() {
    let texts: Vec<String> = [fineweb(true), shakespeare(), corner_cases()].concat();
    for name in ["bpe", "bpe_llama3"] {
        let t = tokenizer(&fixture_json(name), name);
        assert_fast_equals_crate(&t, name, &texts);
    }
    // The encoder says what it runs.
    let gpt2 = tokenizer(&fixture_json("bpe"), "bpe").encoder();
    assert!(gpt2.contains("fast path") && gpt2.contains("GPT-2 regex (hand-written)"), "{gpt2}");
    let llama3 = tokenizer(&fixture_json("bpe_llama3"), "bpe_llama3").encoder();
    assert!(llama3.contains("Llama-3 regex (hand-written)") && llama3.contains("ignore_merges"), "{llama3}");
}

/// GPT-2's own tokenizer.json (as Hugging Face's `gpt2` repo has it: 50,257 ids, empty subword prefix and suffix),
/// from tiktoken's r50k ranks (the vocabulary and merges `export hf` writes).
fn gpt2_tokenizer_json() -> Value {
    let vocab: serde_json::Map<String, Value> =
        tokenmill::tokenizer::hf_files::gpt2_vocab().into_iter().map(|(t, id)| (t, json!(id))).collect();
    let merges: Vec<Value> =
        tokenmill::tokenizer::hf_files::gpt2_merges().into_iter().map(|(a, b)| json!([a, b])).collect();
    let byte_level = json!({ "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true });
    json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [{ "id": 50256, "content": "<|endoftext|>", "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": true, "special": true }],
        "normalizer": null, "pre_tokenizer": byte_level, "post_processor": byte_level, "decoder": byte_level,
        "model": { "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "vocab": vocab, "merges": merges },
    })
}

#[test]
fn gpt2s_own_tokenizer_json_gives_tiktokens_ids_through_the_fast_path_and_the_crate() {
    let t = tokenizer(&gpt2_tokenizer_json(), "gpt2");
    let texts: Vec<String> = [fineweb(true), shakespeare(), corner_cases()].concat();
    assert_fast_equals_crate(&t, "gpt2", &texts);
    let tiktoken = tokenmill::tokenizer::Tokenizer::gpt2();
    texts.par_iter().for_each(|text| {
        let mut fast = Vec::new();
        t.encode_into(text, &mut fast).unwrap();
        assert!(fast == tiktoken.encode(text).unwrap(), "{:?}", &text[..text.len().min(80)]);
    });
}

/// The `Split` of a byte-level tokenizer whose pre-tokenizer is `Sequence[Split, ByteLevel]`.
fn set_split_regex(json: &mut Value, regex: &str) {
    json["pre_tokenizer"]["pretokenizers"][0]["pattern"] = json!({ "Regex": regex });
}

#[test]
fn variants_qwen2_nfc_smollm2_digits_other_regexes_and_ignore_merges_equal_the_crate() {
    let texts: Vec<String> = [fineweb(false), shakespeare(), corner_cases()].concat();
    let llama3 = fixture_json("bpe_llama3");
    let llama3_regex = llama3["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"].as_str().unwrap().to_string();

    // Qwen2: one digit a piece, NFC first.
    let mut qwen2 = llama3.clone();
    set_split_regex(&mut qwen2, &llama3_regex.replace(r"\p{N}{1,3}", r"\p{N}"));
    qwen2["normalizer"] = json!({ "type": "NFC" });
    let t = tokenizer(&qwen2, "qwen2-style");
    assert!(t.encoder().contains("NFC, Qwen2 regex (hand-written)"), "{}", t.encoder());
    assert_fast_equals_crate(&t, "qwen2-style", &texts);

    // SmolLM2 (StarCoder's layout): each digit alone, then GPT-2's ByteLevel regex.
    let mut smollm2 = fixture_json("bpe");
    smollm2["pre_tokenizer"] = json!({ "type": "Sequence", "pretokenizers": [
        { "type": "Digits", "individual_digits": true },
        { "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true },
    ]});
    let t = tokenizer(&smollm2, "smollm2-style");
    assert!(t.encoder().contains("Digits(individual_digits=true) then GPT-2 regex"), "{}", t.encoder());
    assert_fast_equals_crate(&t, "smollm2-style", &texts);
    smollm2["pre_tokenizer"]["pretokenizers"][0]["individual_digits"] = json!(false);
    assert_fast_equals_crate(&tokenizer(&smollm2, "digit runs"), "digit runs", &texts);

    // Regexes without a scanner run through the crate's engine: Llama-3's with 2 digits a piece, a plain one, a
    // string pattern; GPT-2's as a Split takes its scanner.
    for (what, pattern) in [
        ("2-digit llama3 regex", json!({ "Regex": llama3_regex.replace(r"\p{N}{1,3}", r"\p{N}{1,2}") })),
        ("whitespace regex", json!({ "Regex": r"\s+" })),
        ("string pattern", json!({ "String": "e" })),
        (
            "gpt2 regex as a Split",
            json!({ "Regex": r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+" }),
        ),
    ] {
        let mut v = llama3.clone();
        v["pre_tokenizer"]["pretokenizers"][0]["pattern"] = pattern;
        let t = tokenizer(&v, what);
        let expect = if what.starts_with("gpt2") { "GPT-2 regex (hand-written)" } else { "the crate's engine" };
        assert!(t.encoder().contains(expect), "{what}: {}", t.encoder());
        assert_fast_equals_crate(&t, what, &texts);
    }

    // Merges spelled "a b" (GPT-2's own tokenizer.json and other older files) are the same pairs; a pair listed
    // twice takes its last rank, as the crate reads it.
    let mut v = fixture_json("bpe");
    let merges = v["model"]["merges"].as_array().unwrap().clone();
    let joined: Vec<Value> =
        merges.iter().map(|p| json!(format!("{} {}", p[0].as_str().unwrap(), p[1].as_str().unwrap()))).collect();
    v["model"]["merges"] = json!(joined);
    assert_fast_equals_crate(&tokenizer(&v, "merges as strings"), "merges as strings", &texts);
    let mut v = fixture_json("bpe");
    for early in &merges[..20] {
        v["model"]["merges"].as_array_mut().unwrap().push(early.clone());
    }
    assert_fast_equals_crate(&tokenizer(&v, "merges listed twice"), "merges listed twice", &texts);

    // ignore_merges off for Llama-3's layout (pieces that are vocabulary entries are merged, not looked up), on for
    // GPT-2's.
    let mut v = llama3.clone();
    v["model"]["ignore_merges"] = json!(false);
    assert_fast_equals_crate(&tokenizer(&v, "llama3 without ignore_merges"), "llama3 without ignore_merges", &texts);
    let mut v = fixture_json("bpe");
    v["model"]["ignore_merges"] = json!(true);
    assert_fast_equals_crate(&tokenizer(&v, "gpt2 with ignore_merges"), "gpt2 with ignore_merges", &texts);
}

#[test]
fn tokenizers_it_does_not_cover_go_to_the_crate_naming_why() {
    let spm = tokenizer(&fixture_json("spm"), "spm");
    assert!(!spm.is_fast());
    assert!(
        spm.encoder().contains("`tokenizers` crate") && spm.encoder().contains("byte_fallback"),
        "{}",
        spm.encoder()
    );
    let bpe = fixture_json("bpe");
    let mut cases: Vec<(Value, &str)> = Vec::new();
    let mut v = bpe.clone();
    v["normalizer"] = json!({ "type": "Lowercase" });
    cases.push((v, "normalizer Lowercase"));
    let mut v = bpe.clone();
    v["pre_tokenizer"]["add_prefix_space"] = json!(true);
    cases.push((v, "add_prefix_space"));
    let mut v = bpe.clone();
    v["pre_tokenizer"] = json!({ "type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": true });
    cases.push((v, "pre-tokenizer Metaspace"));
    let mut v = bpe.clone();
    v["pre_tokenizer"] = json!({ "type": "Sequence", "pretokenizers": [
        { "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true },
        { "type": "Digits", "individual_digits": true },
    ]});
    cases.push((v, "after ByteLevel"));
    let mut v = fixture_json("bpe_llama3");
    v["pre_tokenizer"]["pretokenizers"][0]["behavior"] = json!("MergedWithNext");
    cases.push((v, "Split behavior MergedWithNext"));
    let mut v = bpe.clone();
    v["added_tokens"].as_array_mut().unwrap().push(json!({ "id": 4096, "content": "<tool_call>", "single_word": false,
        "lstrip": false, "rstrip": false, "normalized": false, "special": false }));
    cases.push((v, "`<tool_call>` that is not special"));
    for (json, why) in cases {
        let t = tokenizer(&json, why);
        assert!(!t.is_fast() && t.encoder().contains(why), "{why}: {}", t.encoder());
    }
    // BPE dropout draws merges at random: refused on load (no path would give the same ids twice).
    let mut v = bpe.clone();
    v["model"]["dropout"] = json!(0.1);
    let err = HfTokenizer::from_bytes(serde_json::to_vec(&v).unwrap(), None, "dropout", Path::new("d/tokenizer.json"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("d/tokenizer.json") && err.contains("model.dropout 0.1"), "{err}");
}

/// `tokenmill prep fineweb` over the vendored files: (its stderr, its output directory's shard files).
fn prep(tokenizer: &Path, env: Option<(&str, &str)>) -> (String, Vec<(String, Vec<u8>)>) {
    let out = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tokenmill"));
    cmd.args(["prep", "fineweb", "--no-progress", "--threads", "2", "--shard-size", "1000000", "--input"])
        .arg(common::fineweb_fixture_dir())
        .arg("--out")
        .arg(out.path().join("shards"))
        .arg("--tokenizer")
        .arg(tokenizer);
    if let Some((k, v)) = env {
        cmd.env(k, v);
    }
    let o = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{stderr}");
    (stderr, common::shard_files(&out.path().join("shards")))
}

#[test]
fn prep_logs_the_path_that_encodes_and_writes_the_same_shards_either_way() {
    let dir = fixture_dir("bpe_llama3");
    let (fast_log, fast) = prep(&dir, None);
    assert!(fast_log.contains("encoded by byte-level BPE fast path"), "{fast_log}");
    let (crate_log, slow) = prep(&dir, Some(("TOKENMILL_HF_ENCODER", "crate")));
    assert!(crate_log.contains("encoded by the `tokenizers` crate (TOKENMILL_HF_ENCODER=crate)"), "{crate_log}");
    assert!(!fast.is_empty());
    assert_eq!(fast, slow, "the shards are the same bytes");
}
