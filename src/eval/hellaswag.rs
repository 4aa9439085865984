//! Scoring a model on HellaSwag exactly as build-nanogpt's `hellaswag.py` does: per example, the 4 rows
//! `context ++ ending_i` (from `hellaswag_file::Example::rows`) go through the model together; each row's
//! next-token cross-entropy is summed over its ending tokens only. `acc` counts examples whose lowest *summed*
//! loss is the gold ending, `acc_norm` those whose lowest *mean* (per ending token) loss is; the training log's
//! `hella` value is `acc_norm`.
//!
//! A row longer than the model's context keeps its last `block_size` tokens (never the case for GPT-2's 1024, whose
//! longest HellaSwag row is well under that; only tiny test models hit it).

use candle_core::{DType, Device, IndexOp, Result, Tensor, D};

use crate::eval::hellaswag_file::{Example, NUM_COMPLETIONS};
use crate::model::LanguageModel;

/// The losses of one example's 4 endings and the two predictions.
#[derive(Clone, Debug, PartialEq)]
pub struct ExampleScore {
    pub sum_loss: [f64; NUM_COMPLETIONS],
    pub avg_loss: [f64; NUM_COMPLETIONS],
    /// argmin of `sum_loss` (first on ties, as torch.argmin).
    pub pred: usize,
    /// argmin of `avg_loss`.
    pub pred_norm: usize,
}

/// Counts over a set of examples. Counts rather than fractions so ranks' partial results add up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HellaswagScore {
    pub n: usize,
    pub correct: usize,
    pub correct_norm: usize,
}

impl HellaswagScore {
    pub fn acc(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.correct as f64 / self.n as f64
        }
    }

    pub fn acc_norm(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.correct_norm as f64 / self.n as f64
        }
    }

    pub fn merge(&mut self, other: &HellaswagScore) {
        self.n += other.n;
        self.correct += other.correct;
        self.correct_norm += other.correct_norm;
    }
}

fn argmin(xs: &[f64; NUM_COMPLETIONS]) -> usize {
    let mut best = 0;
    for i in 1..NUM_COMPLETIONS {
        if xs[i] < xs[best] {
            best = i;
        }
    }
    best
}

/// Score one example.
pub fn score_example(model: &dyn LanguageModel, ex: &Example, device: &Device) -> Result<ExampleScore> {
    let (tokens, mask, t_full) = ex.rows();
    let block = model.config().block_size;
    // Keep the last `block` columns of every row (see the module doc).
    let drop = t_full.saturating_sub(block);
    let t = t_full - drop;
    if t < 2 {
        candle_core::bail!("HellaSwag example {} needs at least 2 tokens of context window", ex.index);
    }
    let cols = |v: &[u32]| -> Vec<u32> {
        (0..NUM_COMPLETIONS).flat_map(|r| v[r * t_full + drop..(r + 1) * t_full].to_vec()).collect()
    };
    let tokens = cols(&tokens);
    let mask: Vec<u8> = (0..NUM_COMPLETIONS).flat_map(|r| mask[r * t_full + drop..(r + 1) * t_full].to_vec()).collect();

    let idx = Tensor::from_vec(tokens, (NUM_COMPLETIONS, t), device)?; // (4, T)
    let logits = model.forward(&idx)?.to_dtype(DType::F32)?; // (4, T, V)
    let shift_logits = logits.i((.., ..t - 1, ..))?; // (4, T-1, V)
    let shift_tokens = idx.i((.., 1..))?.contiguous()?; // (4, T-1)
    let logp = candle_nn::ops::log_softmax(&shift_logits, D::Minus1)?;
    let picked = logp.gather(&shift_tokens.unsqueeze(2)?, 2)?.squeeze(2)?; // (4, T-1)
    let losses = picked.neg()?.to_vec2::<f32>()?;

    let mut sum_loss = [0f64; NUM_COMPLETIONS];
    let mut avg_loss = [0f64; NUM_COMPLETIONS];
    for r in 0..NUM_COMPLETIONS {
        // The mask shifts with the targets: position j's loss scores token j+1.
        let row_mask = &mask[r * t + 1..(r + 1) * t];
        let (mut s, mut n) = (0f64, 0usize);
        for (l, &m) in losses[r].iter().zip(row_mask) {
            if m != 0 {
                s += *l as f64;
                n += 1;
            }
        }
        sum_loss[r] = s;
        // An ending cropped away entirely cannot be judged: never pick it.
        avg_loss[r] = if n == 0 { f64::INFINITY } else { s / n as f64 };
        if n == 0 {
            sum_loss[r] = f64::INFINITY;
        }
    }
    Ok(ExampleScore { pred: argmin(&sum_loss), pred_norm: argmin(&avg_loss), sum_loss, avg_loss })
}

/// Score `examples[rank], examples[rank + world], ...` (all of them for one process). Merge ranks' results with
/// `HellaswagScore::merge`.
pub fn evaluate(
    model: &dyn LanguageModel,
    examples: &[Example],
    rank: usize,
    world: usize,
    device: &Device,
) -> Result<HellaswagScore> {
    evaluate_with_progress(model, examples, rank, world, device, |_| {})
}

/// As `evaluate`, calling `progress` with the running score after every example.
pub fn evaluate_with_progress(
    model: &dyn LanguageModel,
    examples: &[Example],
    rank: usize,
    world: usize,
    device: &Device,
    mut progress: impl FnMut(&HellaswagScore),
) -> Result<HellaswagScore> {
    let mut score = HellaswagScore::default();
    for ex in examples.iter().skip(rank).step_by(world.max(1)) {
        let s = score_example(model, ex, device)?;
        score.n += 1;
        score.correct += usize::from(s.pred == ex.label);
        score.correct_norm += usize::from(s.pred_norm == ex.label);
        progress(&score);
    }
    Ok(score)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmin_takes_first_of_ties() {
        assert_eq!(argmin(&[2.0, 1.0, 1.0, 3.0]), 1);
        assert_eq!(argmin(&[0.5, 1.0, 1.0, f64::INFINITY]), 0);
    }

    #[test]
    fn score_merges_as_counts() {
        let mut a = HellaswagScore { n: 3, correct: 1, correct_norm: 2 };
        a.merge(&HellaswagScore { n: 1, correct: 1, correct_norm: 0 });
        assert_eq!((a.acc(), a.acc_norm()), (0.5, 0.5));
    }
}
