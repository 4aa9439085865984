//! Any Hugging Face tokenizer: a `tokenizer.json` (with the `tokenizer_config.json` beside it, when there is one),
//! run by the `tokenizers` crate, Hugging Face's own Rust implementation, the one Python's `tokenizers` and
//! transformers' fast tokenizers wrap (already in the build through candle-core; the ids are held to Python's on
//! FineWeb and tiny Shakespeare by tests/hf_tokenizer.rs).
//!
//! Encoding for pretraining differs from a chat call in three ways, all fixed here: no truncation and no padding
//! (whatever tokenizer.json asks for), and special-token strings inside a document are text (`<|endoftext|>` written
//! in a web page must not end the document), as tiktoken's `encode_ordinary` treats them.
//!
//! Document boundaries are the model's own, derived once from the files:
//! 1. what the post-processor adds around a text (`TemplateProcessing "<s> $A"`: a BOS before it);
//! 2. `add_bos_token` / `add_eos_token` in tokenizer_config.json, where present, decide instead (as transformers'
//!    Llama tokenizers rebuild their post-processor from them);
//! 3. a tokenizer that then adds nothing (GPT-2, SmolLM2, Qwen2) gets its EOS appended to every document:
//!    tokenizer_config.json's `eos_token`, else the first of the usual end-of-text names in its vocabulary.
//!
//! The tokens before and after every document's text are recorded in the manifest (`HfRecord`), with the rule that
//! chose them; the first token added before the text (else the last after it) is the boundary one token per document
//! marks.
//!
//! Text is encoded by `byte_bpe`'s fast path when the tokenizer is a byte-level BPE it covers exactly (same ids,
//! ~10x the crate's speed in `prep`), else by the crate; [`HfTokenizer::encoder`] says which and why, and
//! `TOKENMILL_HF_ENCODER=crate` makes every tokenizer use the crate.

use std::cell::RefCell;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use crate::tokenizer::byte_bpe::{self, ByteBpe};
use crate::tokenizer::record::{BoundaryAt, HfRecord, SpecialToken};
use crate::tokenizer::TokenizerError;

/// The file name a Hugging Face tokenizer lives in, in a model folder, a shard directory and a checkpoint.
pub const TOKENIZER_JSON: &str = "tokenizer.json";
/// Its companion: special tokens by name, `add_bos_token` / `add_eos_token`, the tokenizer class.
pub const TOKENIZER_CONFIG_JSON: &str = "tokenizer_config.json";
/// End-of-text names tried, in order, when no tokenizer_config.json names the EOS.
const EOS_NAMES: [&str; 4] = ["<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>"];
/// Beginning-of-text names, recorded (not used for boundaries) when no tokenizer_config.json names the BOS.
const BOS_NAMES: [&str; 3] = ["<|begin_of_text|>", "<s>", "<bos>"];
/// A text the post-processor's additions are read off (any text works: the additions do not depend on it).
const PROBE: &str = "Hello world";

/// A loaded Hugging Face tokenizer with its document boundary rule and the bytes of its files.
pub struct HfTokenizer {
    tokenizer: tokenizers::Tokenizer,
    /// Distinguishes tokenizers for the per-thread copies (`with_local`).
    instance: u64,
    /// Exactly the files it was loaded from: a shard directory, a checkpoint and an export get these bytes.
    json: Vec<u8>,
    config: Option<Vec<u8>>,
    record: HfRecord,
    /// 1 + the largest id of the vocabulary (added tokens included).
    vocab_size: u32,
    boundary: (u32, BoundaryAt),
    /// Which encoder runs, decided (and its tables built) on first use: loading a tokenizer to read its record or
    /// decode a sample costs nothing more.
    engine: OnceLock<Engine>,
}

/// The encoder of a tokenizer's text.
enum Engine {
    /// `byte_bpe`'s fast path.
    Fast(Box<ByteBpe>),
    /// The `tokenizers` crate, and why not the fast path.
    Crate(String),
}

/// Set to `crate`, every Hugging Face tokenizer encodes through the `tokenizers` crate (a check on the fast path,
/// and the slow side of scripts/prep-tokenizers.sh's comparison).
const ENCODER_ENV: &str = "TOKENMILL_HF_ENCODER";

impl std::fmt::Debug for HfTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfTokenizer").field("record", &self.record).field("vocab_size", &self.vocab_size).finish()
    }
}

/// The per-thread copy `with_local` hands out: (instance, tokenizer).
type LocalCopy = Option<(u64, Box<tokenizers::Tokenizer>)>;

impl HfTokenizer {
    /// A `tokenizer.json` file, or a folder holding one (its `tokenizer_config.json` is read too when present).
    /// `source` is how the user named it, for the manifest.
    pub fn load_path(path: &Path, source: &str) -> Result<HfTokenizer, TokenizerError> {
        let json_path = if path.is_dir() { path.join(TOKENIZER_JSON) } else { path.to_path_buf() };
        if path.is_dir() && !json_path.is_file() {
            return Err(TokenizerError::NoTokenizerJson { dir: path.display().to_string() });
        }
        let config_path = json_path.with_file_name(TOKENIZER_CONFIG_JSON);
        let json = read(&json_path)?;
        let config = if config_path.is_file() { Some(read(&config_path)?) } else { None };
        Self::from_bytes(json, config, source, &json_path)
    }

    /// Parse the files' bytes; `path` (where tokenizer.json came from) names them in errors.
    pub fn from_bytes(
        json: Vec<u8>,
        config: Option<Vec<u8>>,
        source: &str,
        path: &Path,
    ) -> Result<HfTokenizer, TokenizerError> {
        let p = || path.display().to_string();
        let mut tokenizer = tokenizers::Tokenizer::from_bytes(&json)
            .map_err(|e| TokenizerError::Parse { path: p(), message: one_line(&e.to_string()) })?;
        tokenizer
            .with_truncation(None)
            .map_err(|e| TokenizerError::Parse { path: p(), message: one_line(&e.to_string()) })?;
        tokenizer.with_padding(None);
        tokenizer.set_encode_special_tokens(true);
        // BPE dropout (a training-time regulariser) draws each text's merges at random: shards would not be the same
        // twice, and a resumed prep would not continue its own.
        if let tokenizers::models::ModelWrapper::BPE(bpe) = tokenizer.get_model() {
            if let Some(p_drop) = bpe.dropout.filter(|&d| d > 0.0) {
                return Err(TokenizerError::Parse {
                    path: p(),
                    message: format!(
                        "model.dropout {p_drop}: BPE dropout makes the ids random; set it to null for tokenizing data"
                    ),
                });
            }
        }
        let config_path = path.with_file_name(TOKENIZER_CONFIG_JSON);
        let settings = match &config {
            Some(bytes) => ConfigFile::parse(bytes, &config_path)?,
            None => ConfigFile::default(),
        };
        let vocab_size = tokenizer.get_vocab(true).values().max().map_or(0, |&m| m + 1);
        // A named token must exist; a null one is none; an absent one is looked for under its usual names.
        let special = |named: &Option<Option<String>>, field: &'static str, fallback: &[&str]| match named {
            Some(None) => Ok(None),
            Some(Some(text)) => match tokenizer.token_to_id(text) {
                Some(id) => Ok(Some(SpecialToken { id, text: text.clone() })),
                None => Err(TokenizerError::Config {
                    path: config_path.display().to_string(),
                    message: format!("{field} `{text}` is not in {}'s vocabulary", p()),
                }),
            },
            None => Ok(fallback
                .iter()
                .find_map(|name| tokenizer.token_to_id(name).map(|id| SpecialToken { id, text: name.to_string() }))),
        };
        let bos = special(&settings.bos_token, "bos_token", &BOS_NAMES)?;
        let eos = special(&settings.eos_token, "eos_token", &EOS_NAMES)?;

        let (mut prepend, mut append) = post_processor_additions(&tokenizer, path)?;
        let mut rule = "the post-processor adds them".to_string();
        for (flag, token, list, what) in [
            (settings.add_bos_token, &bos, &mut prepend, "add_bos_token"),
            (settings.add_eos_token, &eos, &mut append, "add_eos_token"),
        ] {
            let Some(on) = flag else { continue };
            let want: Vec<u32> = match (on, token) {
                (true, Some(t)) => vec![t.id],
                (true, None) => {
                    return Err(TokenizerError::Config {
                        path: config_path.display().to_string(),
                        message: format!("{what} is true but the tokenizer names no such token"),
                    })
                }
                (false, _) => Vec::new(),
            };
            if *list != want {
                *list = want;
                rule = format!("{TOKENIZER_CONFIG_JSON} sets {what}={on}");
            }
        }
        if prepend.is_empty() && append.is_empty() {
            let Some(eos) = &eos else {
                return Err(TokenizerError::NoBoundary { path: p(), names: EOS_NAMES.join(", ") });
            };
            append.push(eos.id);
            let named = if settings.eos_token.is_some() { "its eos_token" } else { "found by its name" };
            rule = format!("the tokenizer adds no BOS or EOS: EOS `{}` ({named}) appended", eos.text);
        }
        let boundary = match (prepend.first(), append.last()) {
            (Some(&id), _) => (id, BoundaryAt::First),
            (None, Some(&id)) => (id, BoundaryAt::Last),
            (None, None) => unreachable!("an EOS is appended above when nothing else is"),
        };
        if let Some(&id) = prepend.iter().chain(&append).find(|&&id| id >= vocab_size) {
            return Err(TokenizerError::Parse {
                path: p(),
                message: format!("the post-processor adds token id {id}, outside the vocabulary of {vocab_size}"),
            });
        }
        let record = HfRecord {
            source: source.to_string(),
            file: TOKENIZER_JSON.to_string(),
            config_file: config.as_ref().map(|_| TOKENIZER_CONFIG_JSON.to_string()),
            sha256: hex::encode(Sha256::digest(&json)),
            bos,
            eos,
            prepend,
            append,
            rule,
        };
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Ok(HfTokenizer {
            tokenizer,
            instance: NEXT.fetch_add(1, Ordering::Relaxed),
            json,
            config,
            record,
            vocab_size,
            boundary,
            engine: OnceLock::new(),
        })
    }

    pub fn record(&self) -> &HfRecord {
        &self.record
    }

    pub fn vocab_size(&self) -> u32 {
        self.vocab_size
    }

    /// The boundary token (one per document) and where in the document it is.
    pub fn boundary(&self) -> (u32, BoundaryAt) {
        self.boundary
    }

    /// The files to keep beside token ids made with it: tokenizer.json, and tokenizer_config.json when it had one.
    pub fn files(&self) -> Vec<(&'static str, &[u8])> {
        let mut files = vec![(TOKENIZER_JSON, self.json.as_slice())];
        if let Some(c) = &self.config {
            files.push((TOKENIZER_CONFIG_JSON, c.as_slice()));
        }
        files
    }

    /// The files a Hugging Face model folder needs for `AutoTokenizer.from_pretrained(folder)`: tokenizer.json as it
    /// is, and its tokenizer_config.json as it is, or, when it had none, one naming the fast tokenizer class, its
    /// BOS / EOS and the model's context (`model_max_length`).
    pub fn export_files(&self, model_max_length: usize) -> Vec<(&'static str, Vec<u8>)> {
        let config = match &self.config {
            Some(c) => c.clone(),
            None => {
                let mut c = serde_json::json!({
                    "tokenizer_class": "PreTrainedTokenizerFast",
                    "model_max_length": model_max_length,
                    "clean_up_tokenization_spaces": false,
                });
                for (key, token) in [("bos_token", &self.record.bos), ("eos_token", &self.record.eos)] {
                    if let Some(t) = token {
                        c[key] = serde_json::Value::String(t.text.clone());
                    }
                }
                serde_json::to_vec_pretty(&c).expect("a JSON object serialises")
            }
        };
        vec![(TOKENIZER_JSON, self.json.clone()), (TOKENIZER_CONFIG_JSON, config)]
    }

    /// The encoder, chosen and built once.
    fn engine(&self) -> &Engine {
        self.engine.get_or_init(|| {
            if std::env::var(ENCODER_ENV).is_ok_and(|v| v == "crate") {
                return Engine::Crate(format!("{ENCODER_ENV}=crate"));
            }
            match byte_bpe::plan(&self.tokenizer, &self.json).and_then(ByteBpe::build) {
                Ok(fast) => Engine::Fast(Box::new(fast)),
                Err(why) => Engine::Crate(format!("not covered by the fast path: {why}")),
            }
        })
    }

    /// Choose the encoder and build its tables now (`prep` does it while it lists its inputs).
    pub fn warm_up(&self) {
        self.engine();
    }

    /// Which encoder encodes this tokenizer's text, in one line (for `prep`'s log).
    pub fn encoder(&self) -> String {
        match self.engine() {
            Engine::Fast(fast) => fast.describe().to_string(),
            Engine::Crate(why) => format!("the `tokenizers` crate ({why})"),
        }
    }

    /// Whether the fast path encodes it.
    pub fn is_fast(&self) -> bool {
        matches!(self.engine(), Engine::Fast(_))
    }

    /// `text`'s ids, no boundary tokens, appended to `out`.
    pub fn encode_into(&self, text: &str, out: &mut Vec<u32>) -> Result<(), TokenizerError> {
        match self.engine() {
            Engine::Fast(fast) => {
                fast.encode_into(text, out);
                Ok(())
            }
            Engine::Crate(_) => self.encode_with_crate_into(text, out),
        }
    }

    /// `encode_into` through the `tokenizers` crate, whatever the encoder: the reference the fast path is held to.
    pub fn encode_with_crate_into(&self, text: &str, out: &mut Vec<u32>) -> Result<(), TokenizerError> {
        self.with_local(|t| {
            let encoding =
                t.encode_fast(text, false).map_err(|e| TokenizerError::Encode { message: one_line(&e.to_string()) })?;
            out.extend_from_slice(encoding.get_ids());
            Ok(())
        })
    }

    /// A document as the model saw its pretraining data: the tokens added before it, its ids, those after it.
    pub fn encode_document_into(&self, text: &str, out: &mut Vec<u32>) -> Result<(), TokenizerError> {
        out.extend_from_slice(&self.record.prepend);
        self.encode_into(text, out)?;
        out.extend_from_slice(&self.record.append);
        Ok(())
    }

    /// Ids back to text, special tokens included; `None` when the decoder fails.
    pub fn decode(&self, ids: &[u32]) -> Option<String> {
        self.tokenizer.decode(ids, false).ok()
    }

    /// Run `f` on this thread's own copy of the tokenizer. The BPE model's word cache sits behind one RwLock per
    /// tokenizer: shared by every prep thread, each lookup would bounce that lock's cache line between cores. A copy
    /// per thread costs its vocabulary's memory once per thread.
    fn with_local<R>(&self, f: impl FnOnce(&tokenizers::Tokenizer) -> R) -> R {
        thread_local! {
            static LOCAL: RefCell<LocalCopy> = const { RefCell::new(None) };
        }
        LOCAL.with_borrow_mut(|local| {
            if local.as_ref().is_none_or(|(instance, _)| *instance != self.instance) {
                *local = Some((self.instance, Box::new(self.tokenizer.clone())));
            }
            f(&local.as_ref().expect("set above").1)
        })
    }
}

/// What tokenizer_config.json says about special tokens (every other field is transformers' business). A token is
/// absent (`None`), null (`Some(None)`) or named.
#[derive(Debug, Default)]
struct ConfigFile {
    bos_token: Option<Option<String>>,
    eos_token: Option<Option<String>>,
    add_bos_token: Option<bool>,
    add_eos_token: Option<bool>,
}

impl ConfigFile {
    fn parse(bytes: &[u8], path: &Path) -> Result<ConfigFile, TokenizerError> {
        let bad = |message: String| TokenizerError::Config { path: path.display().to_string(), message };
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not valid JSON: {}", one_line(&e.to_string()))))?;
        let obj = value.as_object().ok_or_else(|| bad("not a JSON object".into()))?;
        // A token is a string, or transformers' AddedToken object {"content": "...", ...}; null means none.
        let token = |field: &str| -> Result<Option<Option<String>>, TokenizerError> {
            match obj.get(field) {
                None => Ok(None),
                Some(serde_json::Value::Null) => Ok(Some(None)),
                Some(serde_json::Value::String(s)) => Ok(Some(Some(s.clone()))),
                Some(serde_json::Value::Object(o)) => match o.get("content") {
                    Some(serde_json::Value::String(s)) => Ok(Some(Some(s.clone()))),
                    _ => Err(bad(format!("{field} is an object without a string `content`"))),
                },
                Some(other) => Err(bad(format!("{field} is {other}, expected a string or an object"))),
            }
        };
        let flag = |field: &str| -> Result<Option<bool>, TokenizerError> {
            match obj.get(field) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::Bool(b)) => Ok(Some(*b)),
                Some(other) => Err(bad(format!("{field} is {other}, expected true or false"))),
            }
        };
        Ok(ConfigFile {
            bos_token: token("bos_token")?,
            eos_token: token("eos_token")?,
            add_bos_token: flag("add_bos_token")?,
            add_eos_token: flag("add_eos_token")?,
        })
    }
}

/// The tokens the post-processor puts before and after a text: `encode(PROBE, true)` is `before ++
/// encode(PROBE, false) ++ after`. A post-processor that changes the text's own tokens is refused.
fn post_processor_additions(
    tokenizer: &tokenizers::Tokenizer,
    path: &Path,
) -> Result<(Vec<u32>, Vec<u32>), TokenizerError> {
    let encode = |special| {
        tokenizer.encode_fast(PROBE, special).map(|e| e.get_ids().to_vec()).map_err(|e| TokenizerError::Parse {
            path: path.display().to_string(),
            message: format!("cannot encode `{PROBE}`: {}", one_line(&e.to_string())),
        })
    };
    let (plain, full) = (encode(false)?, encode(true)?);
    let at = (0..=full.len().saturating_sub(plain.len())).find(|&i| full[i..].starts_with(&plain));
    match at {
        Some(i) if !plain.is_empty() => Ok((full[..i].to_vec(), full[i + plain.len()..].to_vec())),
        _ => Err(TokenizerError::Parse {
            path: path.display().to_string(),
            message: format!(
                "its post-processor turns `{PROBE}` ({plain:?}) into {full:?}, not the text's tokens with some \
                 added around them; tokenmill supports post-processors that add tokens before or after a text"
            ),
        }),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TokenizerError> {
    std::fs::read(path).map_err(|source| TokenizerError::Io { path: path.display().to_string(), source })
}

/// Library messages (serde_json's, the tokenizers crate's) on one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixture's tokenizer.json with `config` as its tokenizer_config.json.
    fn with_config(fixture: &str, config: Option<&str>) -> Result<HfTokenizer, TokenizerError> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf_tokenizers").join(fixture);
        let json = std::fs::read(dir.join(TOKENIZER_JSON)).unwrap();
        HfTokenizer::from_bytes(json, config.map(|c| c.as_bytes().to_vec()), fixture, &dir.join(TOKENIZER_JSON))
    }

    fn edges(t: &HfTokenizer) -> (Vec<u32>, Vec<u32>, BoundaryAt) {
        (t.record().prepend.clone(), t.record().append.clone(), t.boundary().1)
    }

    #[test]
    fn boundaries_follow_the_post_processor_then_the_config_flags_then_the_eos() {
        // spm: <unk> 0, <s> 1, </s> 2; its post-processor prepends <s>.
        let t = with_config("spm", None).unwrap();
        assert_eq!(edges(&t), (vec![1], vec![], BoundaryAt::First));
        assert_eq!(t.record().rule, "the post-processor adds them");
        // add_bos_token = false takes the BOS away (transformers' Llama tokenizers rebuild the post-processor so):
        // then nothing is added and the EOS the config names is appended.
        let t = with_config("spm", Some(r#"{"add_bos_token": false, "eos_token": {"content": "</s>"}}"#)).unwrap();
        assert_eq!(edges(&t), (vec![], vec![2], BoundaryAt::Last));
        assert!(t.record().rule.contains("EOS `</s>` (its eos_token)"), "{}", t.record().rule);
        // add_eos_token = true adds the EOS after the post-processor's BOS; the BOS stays the boundary.
        let t = with_config("spm", Some(r#"{"add_eos_token": true, "eos_token": "</s>"}"#)).unwrap();
        assert_eq!(edges(&t), (vec![1], vec![2], BoundaryAt::First));
        assert_eq!(t.record().rule, "tokenizer_config.json sets add_eos_token=true");
        // bpe adds nothing: its <|endoftext|> (id 0) is appended, found by its name.
        let t = with_config("bpe", None).unwrap();
        assert_eq!(edges(&t), (vec![], vec![0], BoundaryAt::Last));
        // An EOS set to null is none: no boundary, named as such.
        let err = with_config("bpe", Some(r#"{"eos_token": null}"#)).unwrap_err().to_string();
        assert!(err.contains("adds no BOS or EOS") && err.contains("eos_token"), "{err}");
    }

    #[test]
    fn documents_have_their_boundaries_and_special_strings_stay_text() {
        let t = with_config("spm", None).unwrap();
        let mut ids = Vec::new();
        t.encode_document_into("a </s> b", &mut ids).unwrap();
        assert_eq!(ids[0], 1);
        assert!(!ids[1..].contains(&2) && !ids[1..].contains(&1), "{ids:?}");
        assert_eq!(t.decode(&ids[1..]).unwrap(), "a </s> b");
    }
}
