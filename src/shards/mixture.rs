//! A weighted mixture of shard directories (`train --data a:0.7,b:0.3`, `[data] mix`): one [`DataLoader`] per
//! source, and a deterministic interleave of their micro-batches in the given proportions.
//!
//! Every micro-batch comes whole from one source. Micro-batch k goes to the source furthest behind its share:
//! the largest `w_i * (k + 1) - n_i` (`n_i` its batches so far, ties to the first source). That is Megatron's
//! `BlendedDataset` rule: after any number of batches every source is within one batch of its share, with no random
//! numbers. The choice depends only on the counts, so every rank makes it alike, and each source's loader keeps
//! build-nanogpt's rank layout within that source. The state (each source's count and loader position) goes into
//! checkpoints, so a resume continues the interleave bit for bit.
//!
//! A single directory is a mixture of one, whose state is that loader's plain [`LoaderState`] (checkpoints read as
//! they always did).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::shards::loader::{Batch, DataLoader, LoaderConfig, LoaderError, LoaderState};
use crate::shards::manifest::Split;

/// One source: a shard directory and its share of the batches (weights are normalised to sum to 1).
struct Source {
    dir: PathBuf,
    weight: f64,
    loader: DataLoader,
    /// Micro-batches taken from it (per rank; the same count on every rank).
    batches: u64,
}

pub struct MixtureLoader {
    sources: Vec<Source>,
}

/// Where a training loader is, as checkpoints store it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TrainLoaderState {
    /// Several sources (tried first when reading: a plain state has no `sources`).
    Mixture(MixtureState),
    /// One directory: its loader's position.
    Single(LoaderState),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MixtureState {
    pub sources: Vec<SourceState>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceState {
    /// The source's directory as the config names it (a resume must name the same sources).
    pub dir: String,
    pub weight: f64,
    pub batches: u64,
    pub loader: LoaderState,
}

impl MixtureLoader {
    /// Open the `split` of every source `(dir, weight)`; weights must be positive (`[data] mix` is checked where the
    /// config is) and are normalised here.
    pub fn open(
        sources: &[(PathBuf, f64)],
        split: Split,
        cfg: LoaderConfig,
        verify: bool,
    ) -> Result<MixtureLoader, LoaderError> {
        let total: f64 = sources.iter().map(|(_, w)| w).sum();
        if sources.is_empty() || !sources.iter().all(|(_, w)| w.is_finite() && *w > 0.0) {
            return Err(LoaderError::Config(format!("a mixture needs sources of positive weight (got {sources:?})")));
        }
        let mut opened = Vec::with_capacity(sources.len());
        for (dir, weight) in sources {
            let loader = DataLoader::open_with(dir, split, cfg, verify)?;
            opened.push(Source { dir: dir.clone(), weight: weight / total, loader, batches: 0 });
        }
        Ok(MixtureLoader { sources: opened })
    }

    /// The source the next micro-batch comes from (see the module comment).
    pub fn next_source(&self) -> usize {
        furthest_behind(self.sources.iter().map(|s| (s.weight, s.batches)))
    }

    /// The next `(x, y)` micro-batch of this rank.
    pub fn next_batch(&mut self) -> Result<Batch, LoaderError> {
        let i = self.next_source();
        let batch = self.sources[i].loader.next_batch()?;
        self.sources[i].batches += 1;
        Ok(batch)
    }

    /// Back to the start of every source (the trainer resets the val loaders before each evaluation).
    pub fn reset(&mut self) {
        for s in &mut self.sources {
            s.loader.reset();
            s.batches = 0;
        }
    }

    pub fn is_mixture(&self) -> bool {
        self.sources.len() > 1
    }

    /// Each source: its directory, normalised weight and loader (for evaluating one source at a time).
    pub fn sources_mut(&mut self) -> impl Iterator<Item = (&Path, f64, &mut DataLoader)> {
        self.sources.iter_mut().map(|s| (s.dir.as_path(), s.weight, &mut s.loader))
    }

    /// Tokens each source has contributed, over all ranks: its micro-batches times B * T * world.
    pub fn tokens_per_source(&self) -> Vec<(String, u64)> {
        self.sources
            .iter()
            .map(|s| {
                let c = s.loader.config();
                (s.dir.display().to_string(), s.batches * (c.batch_size * c.seq_len * c.world) as u64)
            })
            .collect()
    }

    pub fn total_tokens(&self) -> u64 {
        self.sources.iter().map(|s| s.loader.total_tokens()).sum()
    }

    pub fn num_shards(&self) -> usize {
        self.sources.iter().map(|s| s.loader.num_shards()).sum()
    }

    pub fn state(&self) -> TrainLoaderState {
        if let [one] = &self.sources[..] {
            return TrainLoaderState::Single(one.loader.state());
        }
        TrainLoaderState::Mixture(MixtureState {
            sources: self
                .sources
                .iter()
                .map(|s| SourceState {
                    dir: s.dir.display().to_string(),
                    weight: s.weight,
                    batches: s.batches,
                    loader: s.loader.state(),
                })
                .collect(),
        })
    }

    /// Continue from a state taken by [`state`](Self::state) over the same sources and weights.
    pub fn restore(&mut self, state: &TrainLoaderState) -> Result<(), LoaderError> {
        match (state, &mut self.sources[..]) {
            (TrainLoaderState::Single(s), [one]) => one.loader.restore(s),
            (TrainLoaderState::Mixture(m), sources) => {
                let now: Vec<(String, f64)> = sources.iter().map(|s| (s.dir.display().to_string(), s.weight)).collect();
                let then: Vec<(String, f64)> = m.sources.iter().map(|s| (s.dir.clone(), s.weight)).collect();
                if now != then {
                    return Err(LoaderError::State(format!(
                        "the state is of the mixture {}, the loader reads {}",
                        describe(&then),
                        describe(&now)
                    )));
                }
                for (source, saved) in sources.iter_mut().zip(&m.sources) {
                    source.loader.restore(&saved.loader)?;
                    source.batches = saved.batches;
                }
                Ok(())
            }
            (TrainLoaderState::Single(_), sources) => Err(LoaderError::State(format!(
                "the state is of one directory, the loader reads a mixture of {}",
                sources.len()
            ))),
        }
    }
}

/// Of sources `(normalised weight, batches so far)`, the one furthest behind its share of the next batch: the largest
/// `w_i * (k + 1) - n_i` over `k` batches so far; the first on ties.
fn furthest_behind(sources: impl Iterator<Item = (f64, u64)> + Clone) -> usize {
    let next = sources.clone().map(|(_, n)| n).sum::<u64>() + 1;
    let mut best = (0, f64::NEG_INFINITY);
    for (i, (weight, batches)) in sources.enumerate() {
        let behind = weight * next as f64 - batches as f64;
        if behind > best.1 {
            best = (i, behind);
        }
    }
    best.0
}

/// `a:0.7,b:0.3`.
fn describe(sources: &[(String, f64)]) -> String {
    sources.iter().map(|(d, w)| format!("{d}:{w}")).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The interleave alone: counts only, no shards.
    fn picks(weights: &[f64], n: usize) -> Vec<u64> {
        let total: f64 = weights.iter().sum();
        let mut counts = vec![0u64; weights.len()];
        for _ in 0..n {
            let i = furthest_behind(weights.iter().zip(counts.clone()).map(|(w, c)| (w / total, c)));
            counts[i] += 1;
        }
        counts
    }

    #[test]
    fn every_prefix_is_within_one_batch_of_its_share() {
        for weights in [[0.7, 0.3].as_slice(), &[1.0, 1.0, 2.0], &[0.01, 0.99]] {
            let total: f64 = weights.iter().sum();
            for n in 1..300 {
                let counts = picks(weights, n);
                for (c, w) in counts.iter().zip(weights) {
                    assert!((*c as f64 - w / total * n as f64).abs() <= 1.0, "{weights:?} after {n}: {counts:?}");
                }
            }
        }
        assert_eq!(picks(&[0.7, 0.3], 10), [7, 3]);
    }
}
