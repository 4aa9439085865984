//! Scoring a model on HellaSwag exactly as build-nanogpt's `hellaswag.py` does: per example, the 4 rows
//! `context ++ ending_i` (from `hellaswag_file::Example::rows`); each row's next-token cross-entropy is summed over
//! its ending tokens only. `acc` counts examples whose lowest *summed* loss is the gold ending, `acc_norm` those
//! whose lowest *mean* (per ending token) loss is; the training log's `hella` value is `acc_norm`.
//!
//! `evaluate` runs many examples per forward: a process's examples sorted by length, packed into batches of rows
//! padded at their end to the batch's longest (causal attention: padding after a position changes nothing before
//! it), as many rows as `BatchLimits` allow; the model returns each position's loss (`LanguageModel::token_losses`,
//! the head in the compute dtype into the fused cross-entropy kernel), and the host sums the ending positions in
//! f64 in row order. The 10,042 validation tasks are 40,168 rows of 79 tokens on average: build-nanogpt's one task
//! per forward made that ~10,000 forwards; batching makes it a few hundred. `score_example` (one example, its 4 rows
//! together, a host log-softmax) is the reference the batched path is tested against.
//!
//! A row longer than the model's context keeps its last `block_size` tokens (never the case for GPT-2's 1024, whose
//! longest HellaSwag row is well under that; only tiny test models hit it).

use candle_core::{DType, Device, IndexOp, Result, Tensor, D};

use crate::eval::hellaswag_file::{Example, NUM_COMPLETIONS};
use crate::model::kernels::IGNORE_INDEX;
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

/// Score one example alone: its 4 rows through the model together, a host log-softmax over the logits (the
/// reference `score_batch` is tested against).
pub fn score_example(model: &dyn LanguageModel, ex: &Example, device: &Device) -> Result<ExampleScore> {
    let (tokens, mask, t) = cropped_rows(ex, model.config().block_size)?;
    let idx = Tensor::from_vec(tokens, (NUM_COMPLETIONS, t), device)?; // (4, T)
    let logits = model.forward(&idx)?.to_dtype(DType::F32)?; // (4, T, V)
    let shift_logits = logits.i((.., ..t - 1, ..))?; // (4, T-1, V)
    let shift_tokens = idx.i((.., 1..))?.contiguous()?; // (4, T-1)
    let logp = candle_nn::ops::log_softmax(&shift_logits, D::Minus1)?;
    let picked = logp.gather(&shift_tokens.unsqueeze(2)?, 2)?.squeeze(2)?; // (4, T-1)
    let losses = picked.neg()?.to_vec2::<f32>()?;
    let mut sums = [(0f64, 0usize); NUM_COMPLETIONS];
    for (r, sum) in sums.iter_mut().enumerate() {
        // The mask shifts with the targets: position j's loss scores token j+1.
        for (l, &m) in losses[r].iter().zip(&mask[r * t + 1..(r + 1) * t]) {
            if m != 0 {
                sum.0 += *l as f64;
                sum.1 += 1;
            }
        }
    }
    Ok(example_score(sums))
}

/// The sums and counts of one row's ending-token losses, and the example's two predictions from them.
fn example_score(sums: [(f64, usize); NUM_COMPLETIONS]) -> ExampleScore {
    let mut sum_loss = [0f64; NUM_COMPLETIONS];
    let mut avg_loss = [0f64; NUM_COMPLETIONS];
    for (r, &(s, n)) in sums.iter().enumerate() {
        // An ending cropped away entirely cannot be judged: never pick it.
        sum_loss[r] = if n == 0 { f64::INFINITY } else { s };
        avg_loss[r] = if n == 0 { f64::INFINITY } else { s / n as f64 };
    }
    ExampleScore { pred: argmin(&sum_loss), pred_norm: argmin(&avg_loss), sum_loss, avg_loss }
}

/// What turns a batch of padded rows into per-position losses: a candle model (`ModelScorer`, any device and
/// dtype) or the decoder engine's own forward (`train::decoder`, CUDA). `evaluate` sorts, batches and sums the
/// ending positions the same way for both.
pub trait RowScorer {
    /// The model's context: longer rows keep their last `block_size` tokens.
    fn block_size(&self) -> usize;
    /// How a batch whose longest row has `t` tokens runs.
    fn batch_shape(&self, t: usize) -> BatchShape;
    /// Each position's next-token loss (f32, `rows * t`) of `tokens` `(rows, t)` against `targets`; positions whose
    /// target is `IGNORE_INDEX` are not read by the caller (any finite or non-finite value will do there).
    fn token_losses(&mut self, tokens: Vec<u32>, targets: Vec<u32>, rows: usize, t: usize) -> Result<Vec<f32>>;
}

/// The shape of one scoring batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchShape {
    /// Rows are padded at their end to this length (>= the longest).
    pub t: usize,
    /// At most this many rows (at least `NUM_COMPLETIONS`).
    pub rows: usize,
    /// The scorer runs exactly `rows` rows (a fixed shape: the batch is padded with empty rows to it).
    pub fixed: bool,
}

/// A candle `LanguageModel` as a scorer: `LanguageModel::token_losses` on batches bounded by `BatchLimits`.
pub struct ModelScorer<'a> {
    pub model: &'a dyn LanguageModel,
    pub device: Device,
    pub limits: BatchLimits,
}

impl<'a> ModelScorer<'a> {
    pub fn new(model: &'a dyn LanguageModel, device: &Device) -> ModelScorer<'a> {
        ModelScorer { model, device: device.clone(), limits: BatchLimits::for_device(device) }
    }
}

impl RowScorer for ModelScorer<'_> {
    fn block_size(&self) -> usize {
        self.model.config().block_size
    }

    fn batch_shape(&self, t: usize) -> BatchShape {
        let v = self.model.config().vocab_size;
        let rows = (self.limits.max_logits / (t * v)).min(self.limits.max_rows);
        BatchShape { t, rows: rows.max(NUM_COMPLETIONS), fixed: false }
    }

    fn token_losses(&mut self, tokens: Vec<u32>, targets: Vec<u32>, rows: usize, t: usize) -> Result<Vec<f32>> {
        let idx = Tensor::from_vec(tokens, (rows, t), &self.device)?;
        let targets = Tensor::from_vec(targets, (rows, t), &self.device)?;
        self.model.token_losses(&idx, &targets)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
    }
}

/// How many rows go through the model at once: at most `max_rows`, and rows x T x V logits at most `max_logits`
/// (the head's `(rows * T, V)` product is the batch's largest tensor).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchLimits {
    pub max_rows: usize,
    pub max_logits: usize,
}

impl BatchLimits {
    /// 512 rows and 2^29 logits (1 GiB in bf16) on a GPU; 64 rows and 2^26 logits (256 MiB in f32) on a CPU.
    pub fn for_device(device: &Device) -> BatchLimits {
        if device.is_cuda() {
            BatchLimits { max_rows: 512, max_logits: 1 << 29 }
        } else {
            BatchLimits { max_rows: 64, max_logits: 1 << 26 }
        }
    }
}

/// One example's rows cropped to the context: (tokens, mask) of length t each, row by row.
fn cropped_rows(ex: &Example, block: usize) -> Result<(Vec<u32>, Vec<u8>, usize)> {
    let (tokens, mask, t_full) = ex.rows();
    let drop = t_full.saturating_sub(block);
    let t = t_full - drop;
    if t < 2 {
        candle_core::bail!("HellaSwag example {} needs at least 2 tokens of context window", ex.index);
    }
    let crop = |v: &[u32]| (0..NUM_COMPLETIONS).flat_map(|r| v[r * t_full + drop..(r + 1) * t_full].to_vec()).collect();
    let mask = (0..NUM_COMPLETIONS).flat_map(|r| mask[r * t_full + drop..(r + 1) * t_full].to_vec()).collect();
    Ok((crop(&tokens), mask, t))
}

/// Score several examples in one forward (rows padded at their end to the longest, or to the scorer's length;
/// see the module doc).
pub fn score_batch(scorer: &mut dyn RowScorer, examples: &[&Example]) -> Result<Vec<ExampleScore>> {
    let block = scorer.block_size();
    let rows = examples.iter().map(|ex| cropped_rows(ex, block)).collect::<Result<Vec<_>>>()?;
    let longest = rows.iter().map(|r| r.2).max().unwrap_or(0);
    let shape = scorer.batch_shape(longest);
    let t = shape.t;
    let n_rows = NUM_COMPLETIONS * examples.len();
    if t < longest || (shape.fixed && shape.rows < n_rows) {
        candle_core::bail!("HellaSwag scorer: {n_rows} rows of {longest} tokens do not fit its batch {shape:?}");
    }
    // Rows beyond the examples' (a fixed-shape scorer's padding) are all padding: token 0, nothing scored.
    let n_run = if shape.fixed { shape.rows } else { n_rows };
    let mut tokens = vec![0u32; n_run * t];
    let mut targets = vec![IGNORE_INDEX; n_run * t];
    for (e, (tok, mask, te)) in rows.iter().enumerate() {
        for r in 0..NUM_COMPLETIONS {
            let (row, src) = ((e * NUM_COMPLETIONS + r) * t, r * te);
            tokens[row..row + te].copy_from_slice(&tok[src..src + te]);
            // Position j scores token j + 1, where the mask marks an ending token.
            for j in 0..te - 1 {
                if mask[src + j + 1] != 0 {
                    targets[row + j] = tok[src + j + 1];
                }
            }
        }
    }
    let losses = scorer.token_losses(tokens, targets.clone(), n_run, t)?;
    Ok((0..examples.len())
        .map(|e| {
            let mut sums = [(0f64, 0usize); NUM_COMPLETIONS];
            for (r, sum) in sums.iter_mut().enumerate() {
                let row = (e * NUM_COMPLETIONS + r) * t;
                for j in 0..t {
                    if targets[row + j] != IGNORE_INDEX {
                        sum.0 += losses[row + j] as f64;
                        sum.1 += 1;
                    }
                }
            }
            example_score(sums)
        })
        .collect())
}

/// Score `examples[rank], examples[rank + world], ...` (all of them for one process) with a candle model, batched
/// (module doc). Merge ranks' results with `HellaswagScore::merge`.
pub fn evaluate(
    model: &dyn LanguageModel,
    examples: &[Example],
    rank: usize,
    world: usize,
    device: &Device,
) -> Result<HellaswagScore> {
    let scored = evaluate_with(&mut ModelScorer::new(model, device), examples, rank, world, |_| {})?;
    Ok(tally(&scored))
}

/// One scored example: its index in the file, its label and the two predictions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prediction {
    pub index: usize,
    pub label: usize,
    pub pred: usize,
    pub pred_norm: usize,
}

/// The counts of a set of predictions.
pub fn tally(predictions: &[Prediction]) -> HellaswagScore {
    let mut score = HellaswagScore::default();
    for p in predictions {
        score.n += 1;
        score.correct += usize::from(p.pred == p.label);
        score.correct_norm += usize::from(p.pred_norm == p.label);
    }
    score
}

/// How many examples two runs over the same examples predict differently (`acc_norm`'s prediction; matched by
/// index), and how many of the first's indices the second lacks.
pub fn flips(a: &[Prediction], b: &[Prediction]) -> (usize, usize) {
    let by_index: std::collections::HashMap<usize, usize> = b.iter().map(|p| (p.index, p.pred_norm)).collect();
    let mut flipped = 0;
    let mut missing = 0;
    for p in a {
        match by_index.get(&p.index) {
            Some(&q) => flipped += usize::from(q != p.pred_norm),
            None => missing += 1,
        }
    }
    (flipped, missing)
}

/// Score this process's share of `examples` with any scorer, longest first, calling `progress` with the running
/// count after every batch; the predictions come back in scoring order.
pub fn evaluate_with(
    scorer: &mut dyn RowScorer,
    examples: &[Example],
    rank: usize,
    world: usize,
    mut progress: impl FnMut(&HellaswagScore),
) -> Result<Vec<Prediction>> {
    let block = scorer.block_size();
    let mut mine: Vec<&Example> = examples.iter().skip(rank).step_by(world.max(1)).collect();
    // Longest first: the first batch meets the memory limit, and every batch pads little.
    mine.sort_by_key(|ex| std::cmp::Reverse(ex.row_len().min(block)));
    let mut out = Vec::with_capacity(mine.len());
    let mut score = HellaswagScore::default();
    let mut start = 0;
    while start < mine.len() {
        let t = mine[start].row_len().min(block).max(1);
        let fits = scorer.batch_shape(t).rows / NUM_COMPLETIONS;
        let end = (start + fits.max(1)).min(mine.len());
        let batch = &mine[start..end];
        for (ex, s) in batch.iter().zip(score_batch(scorer, batch)?) {
            let p = Prediction { index: ex.index, label: ex.label, pred: s.pred, pred_norm: s.pred_norm };
            score.merge(&tally(&[p]));
            out.push(p);
        }
        progress(&score);
        start = end;
    }
    Ok(out)
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
