//! The decoder engine as an evaluation scorer (`eval::hellaswag::RowScorer`): HellaSwag's rows through the engine's
//! own forward in bf16, in the training buffers, with no device allocation per call.
//!
//! The engine is sized for training micro-batches of B x T tokens; an evaluation batch of `rows` rows of `t` tokens
//! runs in the same buffers whenever rows * t <= B * T and t <= T (each buffer's first rows * t positions; the
//! kernels take the shape per call). Lengths are rounded up to a multiple of `LENGTH_BUCKET` and every batch of one
//! length has the same row count (padded with empty rows), so the attention backend sees a handful of shapes
//! (cuDNN builds a graph per shape, once per process). The classifier writes each position's loss; the host copies
//! them back (4 bytes a position) and sums the ending positions, as for a candle model.

use crate::eval::hellaswag::BatchShape;
use crate::eval::hellaswag_file::NUM_COMPLETIONS;

/// Evaluation rows are padded to a multiple of this many positions.
pub const LENGTH_BUCKET: usize = 32;

/// The batch the engine runs for rows whose longest has `t` tokens, with buffers of `capacity` positions and a
/// context of `t_max` (the training T); None where even one example's rows do not fit.
pub fn scoring_shape(capacity: usize, t_max: usize, t: usize) -> Option<BatchShape> {
    let padded = t.max(1).div_ceil(LENGTH_BUCKET) * LENGTH_BUCKET;
    let padded = if padded > t_max { t } else { padded };
    let rows = capacity / padded / NUM_COMPLETIONS * NUM_COMPLETIONS;
    (padded <= t_max && rows >= NUM_COMPLETIONS).then_some(BatchShape { t: padded, rows, fixed: true })
}

#[cfg(feature = "cuda")]
mod engine_scorer {
    use candle_core::Result;

    use super::scoring_shape;
    use crate::eval::hellaswag::{BatchShape, RowScorer};
    use crate::shards::loader::Batch;
    use crate::train::decoder::DecoderEngine;

    impl DecoderEngine {
        /// A scorer over this engine for rows of up to `longest` tokens (None if they do not fit its buffers).
        pub fn scorer(&mut self, longest: usize) -> Option<EngineScorer<'_>> {
            let (b, t) = (self.dims.b, self.dims.t);
            scoring_shape(b * t, t, longest)?;
            Some(EngineScorer { engine: self })
        }

        /// Each position's next-token loss of `tokens` `(rows, t)` (rows * t within the training micro-batch, t
        /// within its T) against `targets`; a target outside the vocabulary (an ignored position) is scored
        /// against token 0. The weights are the current bf16 working copy; no gradient is touched.
        pub fn token_losses(&mut self, tokens: &[u32], targets: &[u32], rows: usize, t: usize) -> Result<Vec<f32>> {
            let saved = self.dims;
            let n = rows * t;
            if rows == 0 || t == 0 || t > saved.t || n > saved.n() || tokens.len() != n || targets.len() != n {
                candle_core::bail!(
                    "cuda engine scoring: ({rows}, {t}) with {} / {} ids does not fit the engine's ({}, {})",
                    tokens.len(),
                    targets.len(),
                    saved.b,
                    saved.t
                );
            }
            let v = self.cfg.vocab_size as u32;
            let y = targets.iter().map(|&y| if y < v { y } else { 0 }).collect();
            let batch = Batch { x: tokens.to_vec(), y, batch_size: rows, seq_len: t };
            self.dims.b = rows;
            self.dims.t = t;
            let run = |e: &mut DecoderEngine| -> Result<Vec<f32>> {
                e.upload_batch(&batch, false)?;
                let mut out = vec![0f32; n];
                // SAFETY: a batch of the (temporary) shape was uploaded; the losses range holds B*T >= n f32.
                unsafe {
                    e.forward(None)?;
                    e.bufs.download(&mut out, e.bufs.act32.at(e.act.losses))?;
                }
                Ok(out)
            };
            let out = run(self);
            self.dims = saved;
            out
        }
    }

    /// `DecoderEngine::scorer`'s result.
    pub struct EngineScorer<'a> {
        engine: &'a mut DecoderEngine,
    }

    impl RowScorer for EngineScorer<'_> {
        fn block_size(&self) -> usize {
            self.engine.cfg.block_size
        }

        fn batch_shape(&self, t: usize) -> BatchShape {
            let (b, tt) = (self.engine.dims.b, self.engine.dims.t);
            // `scorer` checked the longest rows fit; shorter ones fit too.
            scoring_shape(b * tt, tt, t).expect("rows no longer than the scorer was made for")
        }

        fn token_losses(&mut self, tokens: Vec<u32>, targets: Vec<u32>, rows: usize, t: usize) -> Result<Vec<f32>> {
            self.engine.token_losses(&tokens, &targets, rows, t)
        }
    }
}

#[cfg(feature = "cuda")]
pub use engine_scorer::EngineScorer;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_go_to_buckets_and_rows_fill_the_buffers() {
        // GPT-2 124M at B=64, T=1024: 65,536 positions.
        let s = scoring_shape(65536, 1024, 151).unwrap();
        assert_eq!((s.t, s.rows, s.fixed), (160, 408, true));
        assert_eq!(scoring_shape(65536, 1024, 33).unwrap().t, 64);
        assert_eq!(scoring_shape(65536, 1024, 32).unwrap().rows, 2048);
        // Llama-1B at B=8: 8,192 positions still take 51 rows of 160 (rounded to whole examples).
        assert_eq!(scoring_shape(8192, 1024, 151).unwrap().rows, 48);
        // Where the bucket would pass the context, the row length itself.
        assert_eq!(scoring_shape(1000, 100, 90).unwrap(), BatchShape { t: 96, rows: 8, fixed: true });
        assert_eq!(scoring_shape(400, 100, 98).unwrap(), BatchShape { t: 98, rows: 4, fixed: true });
        // Too long for the context, or not one example's 4 rows: no scorer.
        assert_eq!(scoring_shape(65536, 128, 151), None);
        assert_eq!(scoring_shape(300, 1024, 100), None);
    }
}
