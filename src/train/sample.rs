//! Text generation as build-nanogpt's training-time samples: `count` continuations of one prompt, each token drawn
//! from the softmax of the top-k logits (k = 50 by default), with a KV cache (`model::attention::KvCache`): one
//! position's work per new token while the context fits the block. Padded vocabulary ids (>= the tokenizer's real
//! vocabulary) are never drawn.
//!
//! Bounded memory whatever `count`: sequences go through the model [`CHUNK`] at a time, and only the last position's
//! logits are computed (`LanguageModel::forward_last`).

use candle_core::{DType, Device, Result, Tensor};
use rand::Rng;

use crate::model::attention::KvCache;
use crate::model::LanguageModel;

/// Sequences sampled together (one forward of `CHUNK` rows per token).
pub const CHUNK: usize = 16;

/// Continue `prompt` to `total_len` tokens, `count` times. Returns each full sequence (prompt included).
/// The context is cropped to the model's block size when it grows past it. Sequences are drawn [`CHUNK`] at a
/// time, each chunk to the end before the next (so `count <= CHUNK` draws as one batch did).
pub fn generate(
    model: &dyn LanguageModel,
    prompt: &[u32],
    count: usize,
    total_len: usize,
    top_k: usize,
    rng: &mut impl Rng,
    device: &Device,
) -> Result<Vec<Vec<u32>>> {
    if prompt.is_empty() {
        candle_core::bail!("sampling needs a non-empty prompt");
    }
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let mut seqs = vec![prompt.to_vec(); CHUNK.min(count - out.len())];
        extend_batch(model, &mut seqs, total_len, top_k, rng, device)?;
        out.append(&mut seqs);
    }
    Ok(out)
}

/// Grow every sequence of `seqs` (all the same length) to `total_len` tokens, as one batch.
fn extend_batch(
    model: &dyn LanguageModel,
    seqs: &mut [Vec<u32>],
    total_len: usize,
    top_k: usize,
    rng: &mut impl Rng,
    device: &Device,
) -> Result<()> {
    let cfg = model.config();
    let real_vocab = cfg.real_vocab_size.min(cfg.vocab_size);
    // Keys and values of the positions fed so far: each step feeds only the new token. Dropped when the model has no
    // cache or the context outgrows the block (the window then slides, and every step re-runs it).
    let mut cache = Some(KvCache::new());
    let mut fed = 0;
    let tokens = |seqs: &[Vec<u32>], from: usize| -> Result<Tensor> {
        let flat: Vec<u32> = seqs.iter().flat_map(|s| s[from..].iter().copied()).collect();
        Tensor::from_vec(flat, (seqs.len(), seqs[0].len() - from), device) // (B, T)
    };
    while seqs[0].len() < total_len {
        let len = seqs[0].len();
        let cached = match cache.as_mut().filter(|_| len <= cfg.block_size) {
            Some(c) => model.forward_last_cached(&tokens(seqs, fed)?, c)?,
            None => None,
        };
        let logits = match cached {
            Some(logits) => {
                fed = len;
                logits
            }
            None => {
                cache = None;
                model.forward_last(&tokens(seqs, len.saturating_sub(cfg.block_size))?)?
            }
        };
        let last = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?; // (B, V)
        for (seq, row) in seqs.iter_mut().zip(&last) {
            seq.push(sample_top_k(&row[..real_vocab], top_k, rng));
        }
    }
    Ok(())
}

/// Draw one id from softmax over the `k` largest `logits` (ties broken towards the lower id).
pub fn sample_top_k(logits: &[f32], k: usize, rng: &mut impl Rng) -> u32 {
    let k = k.clamp(1, logits.len());
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    // Partial sort: the k best first, in descending logit order.
    ids.select_nth_unstable_by(k - 1, |&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
    let top = &mut ids[..k];
    top.sort_unstable_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
    let max = logits[top[0] as usize] as f64;
    let weights: Vec<f64> = top.iter().map(|&i| (logits[i as usize] as f64 - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut u = rng.gen::<f64>() * total;
    for (&id, w) in top.iter().zip(&weights) {
        if u < *w {
            return id;
        }
        u -= w;
    }
    top[k - 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn top_k_never_leaves_the_k_best() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(0);
        let logits = [0.0f32, 5.0, 1.0, 4.9, -3.0, 4.8];
        let mut seen = [0usize; 6];
        for _ in 0..3000 {
            seen[sample_top_k(&logits, 3, &mut rng) as usize] += 1;
        }
        assert_eq!(seen[0] + seen[2] + seen[4], 0);
        // exp(5) : exp(4.9) : exp(4.8) ~ 0.367 : 0.332 : 0.301.
        assert!((seen[1] as f64 / 3000.0 - 0.367).abs() < 0.04, "{seen:?}");
        assert!(seen[5] > 700, "{seen:?}");
        assert_eq!(sample_top_k(&logits, 1, &mut rng), 1);
    }
}
