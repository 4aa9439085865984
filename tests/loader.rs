//! The memory-mapped loader: DataLoaderLite order, multi-rank disjointness and coverage, shard transitions, shuffling,
//! state round trip, .npy shards, and validation errors.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use tokenmill::shards::format::{encode_tokens, ShardHeader, TokenWidth};
use tokenmill::shards::npy::encode_npy_u16;
use tokenmill::shards::{DataLoader, LoaderConfig, LoaderError, Split};

/// A shard whose token at global stream position p is `p % modulus` would hide overlaps; instead every token is its
/// own position in the stream (mod 50000 is avoided by keeping streams short), so any batch names exactly where it
/// came from.
fn write_shard(dir: &Path, name: &str, tokens: &[u32], width: TokenWidth) -> PathBuf {
    let mut bytes = ShardHeader::new(width, tokens.len() as u64).encode().to_vec();
    encode_tokens(tokens, width, &mut bytes);
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Shards holding consecutive ids: shard k holds [k*10000, k*10000 + len).
fn stream_shards(dir: &Path, lens: &[usize]) -> Vec<PathBuf> {
    lens.iter()
        .enumerate()
        .map(|(k, &len)| {
            let toks: Vec<u32> = (0..len as u32).map(|i| k as u32 * 10000 + i).collect();
            write_shard(dir, &format!("s_train_{k:06}.bin", k = k + 1), &toks, TokenWidth::U16)
        })
        .collect()
}

fn cfg(b: usize, t: usize, rank: usize, world: usize) -> LoaderConfig {
    LoaderConfig { batch_size: b, seq_len: t, rank, world, shuffle_seed: None }
}

#[test]
fn single_rank_follows_dataloaderlite() {
    let dir = tempfile::tempdir().unwrap();
    let files = stream_shards(dir.path(), &[100, 50]);
    let mut l = DataLoader::from_files(files, cfg(2, 8, 0, 1), 0).unwrap();
    // Shard 0 (100 tokens) holds (100-1)/16 = 6 batches; the 7th would need tokens up to 113.
    for k in 0..6u32 {
        let b = l.next_batch().unwrap();
        let start = k * 16;
        assert_eq!(b.x, (start..start + 16).collect::<Vec<_>>());
        assert_eq!(b.y, (start + 1..start + 17).collect::<Vec<_>>());
    }
    // Then shard 1 from its start: (50-1)/16 = 3 batches, then wrap to shard 0 (epoch 1).
    let b = l.next_batch().unwrap();
    assert_eq!(b.x[0], 10000);
    l.next_batch().unwrap();
    assert_eq!(l.state().epoch, 0);
    l.next_batch().unwrap();
    // The state names the next batch: the first of epoch 1.
    assert_eq!((l.state().epoch, l.state().shard, l.state().batch), (1, 0, 0));
    let b = l.next_batch().unwrap();
    assert_eq!(b.x[0], 0);
}

#[test]
fn ranks_never_overlap_and_together_cover_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let files = stream_shards(dir.path(), &[1000, 777, 500]);
    let (b, t, world) = (2, 16, 3);
    let mut loaders: Vec<DataLoader> =
        (0..world).map(|r| DataLoader::from_files(files.clone(), cfg(b, t, r, world), 0).unwrap()).collect();
    let steps = loaders[0].batches_per_epoch();
    let mut seen: HashSet<u32> = HashSet::new();
    for step in 0..steps {
        for (r, l) in loaders.iter_mut().enumerate() {
            let batch = l.next_batch().unwrap();
            // DataLoaderLite: rank r reads B*T tokens at offset B*T*r inside each global batch.
            if step == 0 {
                assert_eq!(batch.x[0], (b * t * r) as u32, "rank {r} starts at B*T*rank");
            }
            for &tok in &batch.x {
                assert!(seen.insert(tok), "token {tok} read twice (rank {r}, step {step})");
            }
        }
    }
    // Every shard is covered up to its last whole global batch.
    let gb = b * t * world;
    let expected: usize = [1000usize, 777, 500].iter().map(|&n| (n - 1) / gb * gb).sum();
    assert_eq!(seen.len(), expected);
    for (k, n) in [1000u32, 777, 500].iter().enumerate() {
        let covered = (n - 1) / gb as u32 * gb as u32;
        for i in 0..covered {
            assert!(seen.contains(&(k as u32 * 10000 + i)), "shard {k} token {i} never read");
        }
    }
}

#[test]
fn state_round_trip_continues_on_the_exact_next_batch() {
    let dir = tempfile::tempdir().unwrap();
    let files = stream_shards(dir.path(), &[300, 200, 400]);
    for shuffle in [None, Some(1234u64)] {
        let c = LoaderConfig { shuffle_seed: shuffle, ..cfg(2, 8, 1, 2) };
        let mut a = DataLoader::from_files(files.clone(), c, 0).unwrap();
        for _ in 0..13 {
            a.next_batch().unwrap();
        }
        let state = a.state();
        let json = serde_json::to_string(&state).unwrap();
        let expected: Vec<_> = (0..40).map(|_| a.next_batch().unwrap()).collect();
        let mut b = DataLoader::from_files(files.clone(), c, 0).unwrap();
        b.restore(&serde_json::from_str(&json).unwrap()).unwrap();
        let got: Vec<_> = (0..40).map(|_| b.next_batch().unwrap()).collect();
        assert_eq!(got, expected, "shuffle {shuffle:?}");
    }
}

#[test]
fn restore_refuses_a_state_from_another_batch_shape() {
    let dir = tempfile::tempdir().unwrap();
    let files = stream_shards(dir.path(), &[300]);
    let a = DataLoader::from_files(files.clone(), cfg(2, 8, 0, 1), 0).unwrap();
    let mut b = DataLoader::from_files(files, cfg(4, 8, 0, 1), 0).unwrap();
    let err = b.restore(&a.state()).unwrap_err();
    assert!(matches!(err, LoaderError::State(_)), "{err}");
}

#[test]
fn shuffle_is_seeded_a_permutation_and_changes_per_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let files = stream_shards(dir.path(), &[641, 641, 641]);
    let c = LoaderConfig { shuffle_seed: Some(7), ..cfg(1, 16, 0, 1) };
    let mut l = DataLoader::from_files(files.clone(), c, 0).unwrap();
    let n = l.batches_per_epoch();
    let epoch0: Vec<u32> = (0..n).map(|_| l.next_batch().unwrap().x[0]).collect();
    let epoch1: Vec<u32> = (0..n).map(|_| l.next_batch().unwrap().x[0]).collect();
    let mut plain = DataLoader::from_files(files.clone(), cfg(1, 16, 0, 1), 0).unwrap();
    let mut ordered: Vec<u32> = (0..n).map(|_| plain.next_batch().unwrap().x[0]).collect();
    assert_ne!(epoch0, ordered, "shuffled order differs from file order");
    assert_ne!(epoch0, epoch1, "each epoch has its own order");
    let (mut s0, mut s1) = (epoch0.clone(), epoch1.clone());
    s0.sort();
    s1.sort();
    ordered.sort();
    assert_eq!(s0, ordered, "an epoch visits every batch once");
    assert_eq!(s1, ordered);
    let mut again = DataLoader::from_files(files, c, 0).unwrap();
    let replay: Vec<u32> = (0..n).map(|_| again.next_batch().unwrap().x[0]).collect();
    assert_eq!(replay, epoch0, "same seed, same order");
}

#[test]
fn reset_returns_to_the_first_batch() {
    let dir = tempfile::tempdir().unwrap();
    let files = stream_shards(dir.path(), &[300, 300]);
    let mut l = DataLoader::from_files(files, cfg(2, 8, 0, 1), 0).unwrap();
    let first = l.next_batch().unwrap();
    for _ in 0..30 {
        l.next_batch().unwrap();
    }
    l.reset();
    assert_eq!(l.next_batch().unwrap(), first);
}

#[test]
fn reads_build_nanogpt_npy_and_u32_shards() {
    let dir = tempfile::tempdir().unwrap();
    let toks: Vec<u16> = (0..200u16).collect();
    std::fs::write(dir.path().join("edufineweb_val_000000.npy"), encode_npy_u16(&toks)).unwrap();
    let mut l = DataLoader::open(dir.path(), Split::Val, cfg(2, 10, 0, 1)).unwrap();
    let b = l.next_batch().unwrap();
    assert_eq!(b.x, (0..20).collect::<Vec<u32>>());
    assert_eq!(b.y, (1..21).collect::<Vec<u32>>());

    let big: Vec<u32> = (0..100).map(|i| 100_000 + i).collect();
    let p = write_shard(dir.path(), "big_train_000001.bin", &big, TokenWidth::U32);
    let mut l = DataLoader::from_files(vec![p], cfg(1, 10, 0, 1), 100_277).unwrap();
    assert_eq!(l.next_batch().unwrap().x[0], 100_000);
}

#[test]
fn out_of_vocab_token_is_reported_with_file_and_index() {
    let dir = tempfile::tempdir().unwrap();
    let mut toks: Vec<u32> = (0..100).collect();
    toks[42] = 60000; // >= GPT-2's 50257
    let p = write_shard(dir.path(), "bad_train_000001.bin", &toks, TokenWidth::U16);
    let err = DataLoader::from_files(vec![p], cfg(1, 8, 0, 1), 0).err().expect("must fail");
    let msg = err.to_string();
    assert!(msg.contains("bad_train_000001.bin") && msg.contains("index 42") && msg.contains("60000"), "{msg}");
}

#[test]
fn truncated_shard_and_too_small_shard_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_shard(dir.path(), "t_train_000001.bin", &(0..100).collect::<Vec<u32>>(), TokenWidth::U16);
    let len = std::fs::metadata(&p).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(len - 10).unwrap();
    let msg = DataLoader::from_files(vec![p], cfg(1, 8, 0, 1), 0).err().unwrap().to_string();
    assert!(msg.contains("t_train_000001.bin") && msg.contains("truncated"), "{msg}");

    let p = write_shard(dir.path(), "small_train_000001.bin", &(0..10).collect::<Vec<u32>>(), TokenWidth::U16);
    let err = DataLoader::from_files(vec![p], cfg(2, 8, 0, 1), 0).err().unwrap();
    assert!(matches!(err, LoaderError::ShardTooSmall { .. }), "{err}");
}

#[test]
fn open_without_shards_says_to_run_prep() {
    let dir = tempfile::tempdir().unwrap();
    let msg = DataLoader::open(dir.path(), Split::Train, cfg(1, 8, 0, 1)).err().unwrap().to_string();
    assert!(msg.contains("tokenmill prep"), "{msg}");
}

/// Issue 20, messages that misled: u32 shards without a manifest said "vocab_size 4294967296"; a folder of `prep
/// --worker` outputs said to run `prep` (the missing step is `prep merge`); a dataset prepared with `--val-shards 0`
/// blamed the corpus size.
#[test]
fn a_dataset_the_loader_cannot_use_says_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let wide = dir.path().join("wide");
    std::fs::create_dir(&wide).unwrap();
    write_shard(&wide, "c_train_000000.bin", &(0..100).collect::<Vec<u32>>(), TokenWidth::U32);
    let msg = DataLoader::open(&wide, Split::Train, cfg(1, 8, 0, 1)).err().unwrap().to_string();
    assert!(msg.contains("u32 token shards without a manifest.json") && !msg.contains("4294967"), "{msg}");
    assert!(matches!(tokenmill::shards::loader::dir_vocab_size(&wide), Err(LoaderError::UnknownVocab { .. })));

    let workers = dir.path().join("workers-out");
    std::fs::create_dir_all(workers.join("workers/00000-of-00002")).unwrap();
    let msg = DataLoader::open(&workers, Split::Train, cfg(1, 8, 0, 1)).err().unwrap().to_string();
    assert!(msg.contains("tokenmill prep merge"), "{msg}");

    let no_val = dir.path().join("no-val");
    std::fs::create_dir(&no_val).unwrap();
    let p = write_shard(&no_val, "n_train_000000.bin", &(0..100).collect::<Vec<u32>>(), TokenWidth::U16);
    let bytes = std::fs::read(&p).unwrap();
    let mut m = tokenmill::shards::Manifest::new("n", tokenmill::tokenizer::TokenizerKind::Gpt2, 100);
    m.shards.push(tokenmill::shards::manifest::ShardEntry {
        file: "n_train_000000.bin".into(),
        split: Split::Train,
        tokens: 100,
        xxh3: tokenmill::util::xxh3_hex(&bytes),
    });
    m.complete = true;
    m.save(&no_val).unwrap();
    let msg = DataLoader::open(&no_val, Split::Val, cfg(1, 8, 0, 1)).err().unwrap().to_string();
    assert!(msg.contains("--val-shards 0") && msg.contains("eval.val_every=0") && !msg.contains("corpus"), "{msg}");
}
