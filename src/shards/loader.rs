//! Memory-mapped multi-rank data loader: streams `(x, y)` batches of shape `(B, T)` out of the shards of one split.
//!
//! Order without shuffling is build-nanogpt's `DataLoaderLite`: rank `r` reads its `B*T+1` window at
//! `B*T*r` inside a global batch of `B*T*world` tokens and advances by `B*T*world`. A shard holds
//! `(len - 1) / (B*T*world)` global batches; when the next one would not fit, every rank moves to the next shard at the
//! same step (llm.c's rule; DataLoaderLite lets ranks drift apart on the last batch of a shard, which can only skip
//! tokens, never help). After the last shard the loader wraps to the first and counts an epoch.
//!
//! With `shuffle_seed`, as llm.c's loader: each epoch permutes the shard order and, inside each shard, the order of
//! its global batches; permutations derive from `(seed, epoch, shard)`, identical on every rank, so ranks never overlap.
//!
//! The position is a small [`LoaderState`] serialised into checkpoints: restoring it continues on the exact next batch.
//! Shards are mmapped (never read whole) and validated when opened (header, size) and when first entered: ids <
//! vocab, and the whole file against the manifest's xxh3 (`open_with(.., verify = false)` skips that; docs/PERF.md
//! has the cost).

use std::path::{Path, PathBuf};

use memmap2::Mmap;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::shards::format::{ShardError, ShardHeader, TokenWidth, HEADER_BYTES};
use crate::shards::manifest::{Manifest, ManifestError, Split};
use crate::shards::npy::parse_npy_header;
use crate::shards::verify::check_xxh3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderConfig {
    /// B: sequences per micro-batch on this rank.
    pub batch_size: usize,
    /// T: tokens per sequence.
    pub seq_len: usize,
    pub rank: usize,
    pub world: usize,
    /// `Some(seed)`: shuffle shard order and batch order per epoch (llm.c style).
    pub shuffle_seed: Option<u64>,
}

impl LoaderConfig {
    pub fn new(batch_size: usize, seq_len: usize) -> Self {
        LoaderConfig { batch_size, seq_len, rank: 0, world: 1, shuffle_seed: None }
    }

    fn local_tokens(&self) -> usize {
        self.batch_size * self.seq_len
    }

    fn global_tokens(&self) -> usize {
        self.local_tokens() * self.world
    }
}

/// Where the loader is. Everything else (permutations) is derived from it and the config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderState {
    pub split: Option<Split>,
    pub epoch: u64,
    /// Index into this epoch's shard order.
    pub shard: usize,
    /// Index of the next global batch inside the current shard (in this epoch's batch order).
    pub batch: usize,
    pub shuffle_seed: Option<u64>,
    /// B, T and world the state was taken with: restoring under other values would not continue the same stream.
    pub batch_size: usize,
    pub seq_len: usize,
    pub world: usize,
}

/// One micro-batch: inputs and next-token targets, row-major `(B, T)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub x: Vec<u32>,
    pub y: Vec<u32>,
    pub batch_size: usize,
    pub seq_len: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error(transparent)]
    Shard(#[from] ShardError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{dir}: no {split} shards (looked for manifest.json, then *_{split}_*.bin / *_{split}_*.npy); run `tokenmill prep` first")]
    NoShards { dir: String, split: Split },
    #[error(
        "{dir}: holds the folders of `prep --worker I/N` runs ({}/) but no dataset yet: run `tokenmill prep merge \
         {dir}` once every worker has finished, then train on {dir}",
        crate::shards::WORKERS_DIR
    )]
    UnmergedWorkers { dir: String },
    #[error("{}", empty_split_message(.dir, *.split, *.shards, *.shard_size, *.tokens))]
    EmptySplit { dir: String, split: Split, shards: usize, shard_size: u64, tokens: u64 },
    #[error(
        "{path}: u32 token shards without a manifest.json: their vocabulary is unknown (only u16 shards are taken as \
         GPT-2's); prepare the corpus with `tokenmill prep corpus --tokenizer ...`, which records the tokenizer in a \
         manifest"
    )]
    UnknownVocab { path: String },
    #[error("{path}: {tokens} tokens is too few for one global batch of B*T*world+1 = {needed} tokens (B={b}, T={t}, world={world}); use a smaller batch or larger shards")]
    ShardTooSmall { path: String, tokens: u64, needed: usize, b: usize, t: usize, world: usize },
    #[error("invalid loader config: {0}")]
    Config(String),
    #[error("cannot restore loader state: {0}")]
    State(String),
    #[error("{path}: shard uses {found:?} tokens but the other shards use {expected:?}")]
    MixedWidths { path: String, found: TokenWidth, expected: TokenWidth },
}

/// What an empty split's error says: for val, that the dataset was prepared without one; for train, that the corpus
/// fit in the val shard(s), and what to do given how small it is.
pub fn empty_split_message(dir: &str, split: Split, shards: usize, shard_size: u64, tokens: u64) -> String {
    if split == Split::Val {
        return format!(
            "{dir}: no val shards: manifest.json lists {shards} shard(s), all train (the dataset was prepared with \
             --val-shards 0). Train without validation (--set eval.val_every=0), or prep it again with --val-shards 1 \
             and --overwrite"
        );
    }
    let advice = if shard_size > 1024 {
        format!(
            "Prep it again with a smaller --shard-size (below {tokens}) and --overwrite; `tokenmill prep corpus` picks \
             one that gives about 10 shards"
        )
    } else {
        "The corpus is too small to split into val and train shards: use a larger corpus, or prep it with \
         --val-shards 0 and train without validation (--set eval.val_every=0)"
            .to_string()
    };
    format!(
        "{dir}: the train split is empty: the corpus ({tokens} tokens) fit in the first {shards} shard(s) of up to \
         {shard_size} tokens, which are val. {advice}"
    )
}

/// One opened shard: its map and where the tokens start.
struct MappedShard {
    path: PathBuf,
    map: Mmap,
    data_offset: usize,
    num_tokens: usize,
    width: TokenWidth,
    /// The manifest's xxh3 of the whole file, checked on first entry (`None`: no manifest, or verification off).
    expected_xxh3: Option<String>,
    /// Ids (and checksum) already checked.
    checked: bool,
}

impl MappedShard {
    fn open(listed: &ListedShard) -> Result<Self, ShardError> {
        let (path, expected_xxh3) = (listed.path.as_path(), listed.xxh3.clone());
        let file = std::fs::File::open(path).map_err(|e| ShardError::io(path, e))?;
        let len = file.metadata().map_err(|e| ShardError::io(path, e))?.len();
        // SAFETY: shard files are immutable once renamed into place (docs/SHARD_FORMAT.md); nothing writes to them
        // while they are mapped.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| ShardError::io(path, e))?;
        let is_npy = path.extension().is_some_and(|e| e == "npy");
        let (data_offset, num_tokens, width) = if is_npy {
            let layout = parse_npy_header(&map[..map.len().min(4096)], len, path)?;
            (layout.data_offset, layout.num_tokens, TokenWidth::U16)
        } else {
            let header = ShardHeader::decode(&map[..map.len().min(HEADER_BYTES)], len, path)?;
            (HEADER_BYTES, header.num_tokens, header.width)
        };
        // The manifest's word on the shard must be the header's: its token width and count (cheap, always checked).
        if let Some(expected) = listed.width.filter(|w| *w != width) {
            return Err(ShardError::WidthMismatch {
                path: path.display().to_string(),
                header: width,
                listed: expected,
            });
        }
        if let Some(listed) = listed.tokens.filter(|t| *t != num_tokens) {
            return Err(ShardError::CountMismatch { path: path.display().to_string(), header: num_tokens, listed });
        }
        #[cfg(unix)]
        let _ = map.advise(memmap2::Advice::Sequential);
        Ok(MappedShard {
            path: path.to_path_buf(),
            map,
            data_offset,
            num_tokens: num_tokens as usize,
            width,
            expected_xxh3,
            checked: false,
        })
    }

    fn body(&self) -> &[u8] {
        &self.map[self.data_offset..]
    }

    /// Copy tokens `[start, start+out.len())` into `out`, widening to u32.
    fn read_into(&self, start: usize, out: &mut [u32]) {
        let body = self.body();
        match self.width {
            TokenWidth::U16 => {
                let bytes = &body[start * 2..(start + out.len()) * 2];
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = u16::from_le_bytes([c[0], c[1]]) as u32;
                }
            }
            TokenWidth::U32 => {
                let bytes = &body[start * 4..(start + out.len()) * 4];
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
        }
    }

    /// The file must match the manifest's checksum and every id must be < vocab; checked once per shard, the first
    /// time the loader enters it.
    fn check(&mut self, vocab: u32) -> Result<(), ShardError> {
        if self.checked {
            return Ok(());
        }
        if let Some(expected) = &self.expected_xxh3 {
            check_xxh3(&self.path, &self.map, expected)?;
        }
        let body = self.body();
        let bad = match self.width {
            TokenWidth::U16 => {
                // max over the slice vectorises; only on failure do we look for the offending index.
                let max = body.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).max().unwrap_or(0) as u32;
                (max >= vocab).then(|| {
                    body.chunks_exact(2)
                        .position(|c| u16::from_le_bytes([c[0], c[1]]) as u32 >= vocab)
                        .map(|i| (i, max))
                })
            }
            TokenWidth::U32 => {
                let max = body.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).max().unwrap_or(0);
                (max >= vocab).then(|| {
                    body.chunks_exact(4)
                        .position(|c| u32::from_le_bytes(c.try_into().unwrap()) >= vocab)
                        .map(|i| (i, max))
                })
            }
        };
        if let Some(Some((index, _))) = bad {
            let mut one = [0u32];
            self.read_into(index, &mut one);
            return Err(ShardError::TokenOutOfRange {
                path: self.path.display().to_string(),
                index,
                token: one[0],
                vocab,
            });
        }
        self.checked = true;
        Ok(())
    }
}

pub struct DataLoader {
    cfg: LoaderConfig,
    split: Option<Split>,
    shards: Vec<MappedShard>,
    vocab_size: u32,
    state: LoaderState,
    /// This epoch's shard order (indices into `shards`).
    shard_order: Vec<usize>,
    /// The current shard's global-batch order.
    batch_order: Vec<usize>,
}

impl DataLoader {
    /// Open the `split` shards of a directory written by `tokenmill prep` (manifest.json), or, without a manifest,
    /// llm.c `.bin` / build-nanogpt `.npy` shards named `*_{split}_*` (GPT-2 vocabulary assumed for u16 shards).
    /// Each shard is checked against the manifest's xxh3 the first time the loader enters it.
    pub fn open(data_dir: &Path, split: Split, cfg: LoaderConfig) -> Result<Self, LoaderError> {
        Self::open_with(data_dir, split, cfg, true)
    }

    /// As [`open`](Self::open); `verify = false` skips the checksums (`train --no-verify`), not the id check.
    pub fn open_with(data_dir: &Path, split: Split, cfg: LoaderConfig, verify: bool) -> Result<Self, LoaderError> {
        let (mut files, vocab) = split_files(data_dir, split)?;
        if files.is_empty() {
            return Err(no_shards(data_dir, split));
        }
        if !verify {
            files.iter_mut().for_each(|f| f.xxh3 = None);
        }
        if vocab == 0 {
            // No manifest: u16 shards are GPT-2's; u32 ones could be any vocabulary.
            dir_vocab_size(data_dir)?;
        }
        let mut loader = Self::from_listed(files, cfg, vocab)?;
        loader.split = Some(split);
        loader.state.split = Some(split);
        Ok(loader)
    }

    /// Open explicit shard files. `vocab_size == 0` means: GPT-2's 50257 for u16 shards, no id check for u32.
    pub fn from_files(files: Vec<PathBuf>, cfg: LoaderConfig, vocab_size: u32) -> Result<Self, LoaderError> {
        Self::from_listed(files.into_iter().map(ListedShard::unlisted).collect(), cfg, vocab_size)
    }

    /// Shard files with what the manifest says of each (nothing: unchecked).
    fn from_listed(files: Vec<ListedShard>, cfg: LoaderConfig, vocab_size: u32) -> Result<Self, LoaderError> {
        if cfg.batch_size == 0 || cfg.seq_len == 0 || cfg.world == 0 || cfg.rank >= cfg.world {
            return Err(LoaderError::Config(format!(
                "need B > 0, T > 0 and rank < world (got B={}, T={}, rank={}, world={})",
                cfg.batch_size, cfg.seq_len, cfg.rank, cfg.world
            )));
        }
        let mut shards = Vec::with_capacity(files.len());
        for listed in &files {
            let (f, s) = (&listed.path, MappedShard::open(listed)?);
            let needed = cfg.global_tokens() + 1;
            if s.num_tokens < needed {
                return Err(LoaderError::ShardTooSmall {
                    path: f.display().to_string(),
                    tokens: s.num_tokens as u64,
                    needed,
                    b: cfg.batch_size,
                    t: cfg.seq_len,
                    world: cfg.world,
                });
            }
            if let Some(first) = shards.first() {
                let first: &MappedShard = first;
                if first.width != s.width {
                    return Err(LoaderError::MixedWidths {
                        path: f.display().to_string(),
                        found: s.width,
                        expected: first.width,
                    });
                }
            }
            shards.push(s);
        }
        if shards.is_empty() {
            return Err(LoaderError::Config("no shard files given".into()));
        }
        let vocab_size = match (vocab_size, shards[0].width) {
            (0, TokenWidth::U16) => crate::tokenizer::TokenizerKind::Gpt2.vocab_size(),
            (0, TokenWidth::U32) => u32::MAX,
            (v, _) => v,
        };
        let state = LoaderState {
            split: None,
            epoch: 0,
            shard: 0,
            batch: 0,
            shuffle_seed: cfg.shuffle_seed,
            batch_size: cfg.batch_size,
            seq_len: cfg.seq_len,
            world: cfg.world,
        };
        let mut loader = DataLoader {
            cfg,
            split: None,
            shards,
            vocab_size,
            state,
            shard_order: Vec::new(),
            batch_order: Vec::new(),
        };
        loader.enter_epoch()?;
        Ok(loader)
    }

    /// Back to the first batch of epoch 0 (the trainer resets the val loader before every evaluation).
    pub fn reset(&mut self) {
        self.state.epoch = 0;
        self.state.shard = 0;
        self.state.batch = 0;
        self.enter_epoch().expect("shards were validated when the loader was opened");
    }

    /// The next `(x, y)` micro-batch of this rank.
    pub fn next_batch(&mut self) -> Result<Batch, LoaderError> {
        let n = self.cfg.local_tokens();
        let mut batch =
            Batch { x: vec![0; n], y: vec![0; n], batch_size: self.cfg.batch_size, seq_len: self.cfg.seq_len };
        self.next_batch_into(&mut batch.x, &mut batch.y)?;
        Ok(batch)
    }

    /// Like [`next_batch`](Self::next_batch) into caller-owned buffers of `B*T` tokens (no allocation).
    pub fn next_batch_into(&mut self, x: &mut [u32], y: &mut [u32]) -> Result<(), LoaderError> {
        let n = self.cfg.local_tokens();
        assert!(x.len() == n && y.len() == n, "x and y must hold B*T = {n} tokens");
        let shard = &self.shards[self.shard_order[self.state.shard]];
        let global_batch = self.batch_order[self.state.batch];
        let start = global_batch * self.cfg.global_tokens() + self.cfg.rank * n;
        // x = tokens[start .. start+n], y = tokens[start+1 .. start+n+1]: read n+1 once, then shift.
        shard.read_into(start, x);
        y[..n - 1].copy_from_slice(&x[1..]);
        let mut last = [0u32];
        shard.read_into(start + n, &mut last);
        y[n - 1] = last[0];
        self.advance()
    }

    pub fn state(&self) -> LoaderState {
        self.state.clone()
    }

    /// Continue from a state taken by [`state`](Self::state) under the same B, T, world and shuffle seed.
    pub fn restore(&mut self, s: &LoaderState) -> Result<(), LoaderError> {
        let same = s.batch_size == self.cfg.batch_size
            && s.seq_len == self.cfg.seq_len
            && s.world == self.cfg.world
            && s.shuffle_seed == self.cfg.shuffle_seed;
        if !same {
            return Err(LoaderError::State(format!(
                "state was taken with B={}, T={}, world={}, shuffle={:?}; loader has B={}, T={}, world={}, shuffle={:?}",
                s.batch_size, s.seq_len, s.world, s.shuffle_seed,
                self.cfg.batch_size, self.cfg.seq_len, self.cfg.world, self.cfg.shuffle_seed
            )));
        }
        if s.split.is_some() && self.split.is_some() && s.split != self.split {
            return Err(LoaderError::State(format!("state is for split {:?}, loader reads {:?}", s.split, self.split)));
        }
        if s.shard >= self.shards.len() {
            return Err(LoaderError::State(format!("shard index {} but only {} shards", s.shard, self.shards.len())));
        }
        self.state.epoch = s.epoch;
        self.state.shard = s.shard;
        self.enter_epoch_keep_position()?;
        if s.batch >= self.batch_order.len() {
            return Err(LoaderError::State(format!(
                "batch {} beyond the {} batches of shard {}",
                s.batch,
                self.batch_order.len(),
                s.shard
            )));
        }
        self.state.batch = s.batch;
        Ok(())
    }

    pub fn vocab_size(&self) -> u32 {
        self.vocab_size
    }

    pub fn total_tokens(&self) -> u64 {
        self.shards.iter().map(|s| s.num_tokens as u64).sum()
    }

    pub fn num_shards(&self) -> usize {
        self.shards.len()
    }

    pub fn config(&self) -> &LoaderConfig {
        &self.cfg
    }

    /// Global batches one epoch holds (the same on every rank).
    pub fn batches_per_epoch(&self) -> usize {
        self.shards.iter().map(|s| self.batches_in(s)).sum()
    }

    fn batches_in(&self, s: &MappedShard) -> usize {
        (s.num_tokens - 1) / self.cfg.global_tokens()
    }

    fn advance(&mut self) -> Result<(), LoaderError> {
        self.state.batch += 1;
        if self.state.batch >= self.batch_order.len() {
            self.state.batch = 0;
            self.state.shard += 1;
            if self.state.shard >= self.shards.len() {
                self.state.shard = 0;
                self.state.epoch += 1;
                self.enter_epoch()?;
            } else {
                self.enter_shard()?;
            }
        }
        Ok(())
    }

    fn enter_epoch(&mut self) -> Result<(), LoaderError> {
        self.state.shard = 0;
        self.state.batch = 0;
        self.enter_epoch_keep_position()
    }

    fn enter_epoch_keep_position(&mut self) -> Result<(), LoaderError> {
        self.shard_order = (0..self.shards.len()).collect();
        if let Some(seed) = self.cfg.shuffle_seed {
            let mut rng = ChaCha8Rng::seed_from_u64(mix(seed, self.state.epoch, u64::MAX));
            self.shard_order.shuffle(&mut rng);
        }
        self.enter_shard()
    }

    fn enter_shard(&mut self) -> Result<(), LoaderError> {
        let idx = self.shard_order[self.state.shard];
        let vocab = self.vocab_size;
        self.shards[idx].check(vocab)?;
        let n = self.batches_in(&self.shards[idx]);
        self.batch_order = (0..n).collect();
        if let Some(seed) = self.cfg.shuffle_seed {
            let mut rng = ChaCha8Rng::seed_from_u64(mix(seed, self.state.epoch, idx as u64));
            self.batch_order.shuffle(&mut rng);
        }
        Ok(())
    }
}

/// Seed for one (epoch, shard) permutation: splitmix-style so nearby inputs give unrelated streams.
fn mix(seed: u64, epoch: u64, shard: u64) -> u64 {
    let mut z = seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ shard.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A shard file and what the manifest says of it (all `None` without a manifest).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedShard {
    pub path: PathBuf,
    /// The xxh3 of the whole file, checked when the loader first enters it (cleared by `--no-verify`).
    pub xxh3: Option<String>,
    /// Its token count and token width, checked against the header when it is opened.
    pub tokens: Option<u64>,
    pub width: Option<TokenWidth>,
}

impl ListedShard {
    fn unlisted(path: PathBuf) -> ListedShard {
        ListedShard { path, xxh3: None, tokens: None, width: None }
    }
}

/// The `split` shard files of a directory, in order, each with what its manifest lists, and the vocabulary size the
/// manifest gives (without a manifest: `*_{split}_*.bin` / `.npy` by name, nothing to check, vocabulary 0).
pub fn split_files(data_dir: &Path, split: Split) -> Result<(Vec<ListedShard>, u32), LoaderError> {
    if Manifest::path_in(data_dir).exists() {
        let m = Manifest::load(data_dir)?;
        let files = m.shards.iter().filter(|s| s.split == split).map(|s| ListedShard {
            path: data_dir.join(&s.file),
            xxh3: Some(s.xxh3.clone()),
            tokens: Some(s.tokens),
            width: Some(m.token_width),
        });
        Ok((files.collect(), m.tokenizer.vocab_size))
    } else {
        Ok((discover_split_files(data_dir, split)?.into_iter().map(ListedShard::unlisted).collect(), 0))
    }
}

/// Why `data_dir` has no `split` shards, as the error to give.
fn no_shards(data_dir: &Path, split: Split) -> LoaderError {
    let dir = data_dir.display().to_string();
    match Manifest::load(data_dir) {
        Ok(m) if !m.shards.is_empty() => LoaderError::EmptySplit {
            dir,
            split,
            shards: m.shards.len(),
            shard_size: m.shard_size,
            tokens: m.shards.iter().map(|s| s.tokens).sum(),
        },
        Err(e) if Manifest::path_in(data_dir).exists() => e.into(),
        _ if data_dir.join(crate::shards::WORKERS_DIR).is_dir() => LoaderError::UnmergedWorkers { dir },
        _ => LoaderError::NoShards { dir, split },
    }
}

/// The vocabulary size of the token ids in `data_dir`, read without opening a loader: its manifest's tokenizer, or
/// without a manifest GPT-2's for u16 (`.bin`, `.npy`) shards; u32 shards without a manifest are refused (their
/// vocabulary is unknown), and so is a directory without shards (naming `prep merge` where workers wrote it).
pub fn dir_vocab_size(data_dir: &Path) -> Result<u32, LoaderError> {
    if Manifest::path_in(data_dir).exists() {
        return Ok(Manifest::load(data_dir)?.tokenizer.vocab_size);
    }
    if !data_dir.is_dir() {
        return Err(LoaderError::Shard(ShardError::io(
            data_dir,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
        )));
    }
    let mut files = discover_split_files(data_dir, Split::Train)?;
    files.extend(discover_split_files(data_dir, Split::Val)?);
    let Some(first) = files.iter().find(|f| f.extension().is_some_and(|e| e == "bin")).or(files.first()) else {
        return Err(no_shards(data_dir, Split::Train));
    };
    let gpt2 = crate::tokenizer::TokenizerKind::Gpt2.vocab_size();
    if first.extension().is_some_and(|e| e == "npy") {
        return Ok(gpt2);
    }
    let mut header = vec![0u8; HEADER_BYTES];
    let len = std::fs::metadata(first).map_err(|e| ShardError::io(first, e))?.len();
    {
        use std::io::Read;
        let mut f = std::fs::File::open(first).map_err(|e| ShardError::io(first, e))?;
        let n = f.read(&mut header).map_err(|e| ShardError::io(first, e))?;
        header.truncate(n);
    }
    match ShardHeader::decode(&header, len, first)?.width {
        TokenWidth::U16 => Ok(gpt2),
        TokenWidth::U32 => Err(LoaderError::UnknownVocab { path: data_dir.display().to_string() }),
    }
}

/// Shards of one split in a directory without a manifest: `*_{split}_*.bin` or `*.npy`, sorted by name.
fn discover_split_files(dir: &Path, split: Split) -> Result<Vec<PathBuf>, LoaderError> {
    let entries = std::fs::read_dir(dir).map_err(|e| ShardError::io(dir, e))?;
    let needle = format!("_{}_", split.name());
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.contains(&needle) && (name.ends_with(".bin") || name.ends_with(".npy"))
        })
        .collect();
    files.sort();
    Ok(files)
}
