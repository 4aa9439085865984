//! Batch assembly throughput of the mmap loader (tokens/s on one core). A GPU step of GPT-2 124M consumes ~0.5M
//! tokens/s on an H100; the loader must be orders of magnitude faster so it never shows up in a profile.
//! And the one-off check when the loader first enters a shard: token ids < vocab, with and without the manifest's
//! xxh3 (`train --no-verify` skips the checksum).
//! Run: cargo bench --bench loader

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use tokenmill::shards::format::{encode_tokens, ShardHeader, TokenWidth};
use tokenmill::shards::manifest::{Manifest, ShardEntry};
use tokenmill::shards::{DataLoader, LoaderConfig, Split};
use tokenmill::tokenizer::TokenizerKind;

fn make_shards(dir: &std::path::Path, n: usize, tokens: usize) -> Vec<std::path::PathBuf> {
    (0..n)
        .map(|k| {
            let toks: Vec<u32> = (0..tokens as u32).map(|i| (i.wrapping_mul(2654435761) >> 7) % 50257).collect();
            let mut bytes = ShardHeader::new(TokenWidth::U16, tokens as u64).encode().to_vec();
            encode_tokens(&toks, TokenWidth::U16, &mut bytes);
            let p = dir.join(format!("bench_train_{k:06}.bin"));
            std::fs::write(&p, bytes).unwrap();
            p
        })
        .collect()
}

fn bench_loader(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    // 4 shards of 16M tokens (32 MB each): batches cross shard boundaries during the measurement.
    let files = make_shards(dir.path(), 4, 16 << 20);
    let mut group = c.benchmark_group("loader");
    for (b, t, shuffle) in [(64usize, 1024usize, None), (64, 1024, Some(1u64)), (16, 1024, None)] {
        let cfg = LoaderConfig { batch_size: b, seq_len: t, rank: 0, world: 1, shuffle_seed: shuffle };
        let mut loader = DataLoader::from_files(files.clone(), cfg, 0).unwrap();
        let (mut x, mut y) = (vec![0u32; b * t], vec![0u32; b * t]);
        group.throughput(Throughput::Elements((b * t) as u64));
        let name = format!("next_batch_into B={b} T={t}{}", if shuffle.is_some() { " shuffled" } else { "" });
        group.bench_function(name, |bench| {
            bench.iter(|| {
                loader.next_batch_into(&mut x, &mut y).unwrap();
                black_box((&x, &y));
            })
        });
    }
    group.finish();
}

fn bench_first_entry(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    // One 16M-token (32 MB) shard listed in a manifest, in the page cache after the first iteration: the CPU cost.
    let file = make_shards(dir.path(), 1, 16 << 20).remove(0);
    let mut m = Manifest::new("bench", TokenizerKind::Gpt2, 16 << 20);
    m.shards.push(ShardEntry {
        file: file.file_name().unwrap().to_string_lossy().into_owned(),
        split: Split::Train,
        tokens: 16 << 20,
        xxh3: tokenmill::util::xxh3_file(&file).unwrap(),
    });
    m.save(dir.path()).unwrap();
    let mut group = c.benchmark_group("first entry of a 16M-token shard");
    group.throughput(Throughput::Elements(16 << 20));
    group.sample_size(20);
    for verify in [false, true] {
        let name = if verify { "ids + xxh3" } else { "ids only (--no-verify)" };
        group.bench_function(name, |bench| {
            bench.iter(|| {
                let l = DataLoader::open_with(dir.path(), Split::Train, LoaderConfig::new(64, 1024), verify).unwrap();
                black_box(l.num_shards());
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_loader, bench_first_entry);
criterion_main!(benches);
