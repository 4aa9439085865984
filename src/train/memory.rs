//! What a run needs in memory, estimated on the host from the config alone, before anything is allocated: the
//! parameters, their gradients and AdamW's two moments (fp32, 16 bytes per parameter), and the activations one
//! micro-batch keeps for its backward (llm.c's `ActivationTensors` for B x T tokens, fp32: a lower bound, the
//! autograd engine keeps more). `train`, `bench` and the data-parallel launcher refuse a run whose estimate does not
//! fit, with the numbers, instead of aborting in the allocator (`memory allocation of N bytes failed`, a backtrace,
//! SIGABRT). Every size is multiplied with checked arithmetic: a product that does not fit 64 bits is itself the
//! refusal.
//!
//! The estimate is compared with the host's available memory (`/proc/meminfo`'s MemAvailable) on CPU, where an
//! allocation failure aborts the process. On CUDA the device's allocator returns an error instead, so there only a
//! size that cannot be represented is refused here.

use crate::model::ModelConfig;

/// Bytes per parameter a training run holds: fp32 weights, fp32 gradients, AdamW's fp32 first and second moments.
pub const TRAIN_BYTES_PER_PARAM: u64 = 4 + 4 + 4 + 4;
/// Bytes per activation value (fp32, the autograd engine's master precision).
const ACTIVATION_BYTES: u64 = 4;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("{what}: {detail} does not fit in 64 bits; no machine can hold it ({advice})")]
    Overflow { what: String, detail: String, advice: String },
    #[error(
        "{what} needs at least {} ({}), more than the {} of memory available on this machine; nothing was \
         allocated ({advice})",
        gib(need.total()),
        need.describe(),
        gib(*available)
    )]
    TooBig { what: String, need: Estimate, available: u64, advice: String },
}

/// `bytes` as GiB with one decimal (`12.5 GiB`).
pub fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// What one run holds, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Estimate {
    pub parameters: u64,
    /// Weights, gradients and optimizer state.
    pub training_state: u64,
    /// One micro-batch's activations.
    pub activations: u64,
}

impl Estimate {
    pub fn total(&self) -> u64 {
        self.training_state.saturating_add(self.activations)
    }

    fn describe(&self) -> String {
        format!(
            "{} parameters: {} of weights, gradients and AdamW state, and {} of activations per micro-batch",
            self.parameters,
            gib(self.training_state),
            gib(self.activations)
        )
    }
}

/// `a * b * ...`, or `None` when it does not fit 64 bits.
fn product(factors: &[u64]) -> Option<u64> {
    factors.iter().try_fold(1u64, |acc, &f| acc.checked_mul(f))
}

fn sum(terms: &[Option<u64>]) -> Option<u64> {
    terms.iter().try_fold(0u64, |acc, t| acc.checked_add((*t)?))
}

/// The parameter count of `cfg`: the model's own parameter list (`model::param_specs`, the architecture's row) for
/// one and for two layers gives what the embeddings and head hold and what each layer adds, so a million layers are
/// counted without listing them; every size is multiplied checked. `None` when it does not fit 64 bits.
pub fn parameters(cfg: &ModelConfig) -> Option<u64> {
    let listed = |n_layer: usize| -> Option<u64> {
        let specs = crate::model::param_specs(&ModelConfig { n_layer, ..cfg.clone() });
        let sizes: Vec<Option<u64>> =
            specs.iter().map(|p| product(&p.shape.iter().map(|&d| d as u64).collect::<Vec<_>>())).collect();
        sum(&sizes)
    };
    let (one, two) = (listed(1)?, listed(2)?);
    let per_layer = two.checked_sub(one)?;
    let outside = one.checked_sub(per_layer)?;
    outside.checked_add(per_layer.checked_mul(cfg.n_layer as u64)?)
}

/// Activation values one micro-batch of `b` x `t` tokens keeps for its backward (llm.c's list): per layer and token
/// the normalised inputs, q/k/v, attention output and projection, two residuals, the MLP's input, hidden and output
/// (`10 C + 2 H`) and the attention scores (`2 NH T`); per token the final norm and the logits and probabilities
/// (`C + 2 V`).
pub fn activations(cfg: &ModelConfig, b: usize, t: usize) -> Option<u64> {
    let u = |x: usize| x as u64;
    let (c, v, nh, h) = (u(cfg.n_embd), u(cfg.vocab_size), u(cfg.n_head), u(cfg.hidden()));
    let tokens = product(&[u(b), u(t)])?;
    let per_layer_token = sum(&[product(&[10, c]), product(&[2, h]), product(&[2, nh, u(t)])])?;
    let per_token = sum(&[Some(c), product(&[2, v])])?;
    let values = sum(&[product(&[per_layer_token, u(cfg.n_layer), tokens]), product(&[per_token, tokens])])?;
    product(&[values, ACTIVATION_BYTES])
}

/// The estimate of training `cfg` on micro-batches of `b` x `t` tokens, or the refusal when a size overflows.
/// `what` names the run in messages (`train: the model`, `bench case ...`).
pub fn estimate(cfg: &ModelConfig, b: usize, t: usize, what: &str) -> Result<Estimate, MemoryError> {
    let overflow = |detail: &str| MemoryError::Overflow {
        what: what.to_string(),
        detail: detail.to_string(),
        advice: advice_for(cfg),
    };
    let parameters = parameters(cfg).ok_or_else(|| overflow("the parameter count"))?;
    let training_state =
        parameters.checked_mul(TRAIN_BYTES_PER_PARAM).ok_or_else(|| overflow("the weights and optimizer state"))?;
    let activations = activations(cfg, b, t).ok_or_else(|| overflow("one micro-batch's activations (B x T)"))?;
    training_state.checked_add(activations).ok_or_else(|| overflow("the total"))?;
    Ok(Estimate { parameters, training_state, activations })
}

/// The sizes to look at first, as advice.
fn advice_for(cfg: &ModelConfig) -> String {
    format!(
        "check model.n_layer {}, n_embd {}, ffn_hidden {}, vocab_size {} and data.micro_batch / seq_len",
        cfg.n_layer,
        cfg.n_embd,
        cfg.hidden(),
        cfg.vocab_size
    )
}

/// Refuse training `cfg` on `b` x `t` micro-batches where it cannot fit: any device when a size overflows, and on
/// CPU (`on_host`) when the estimate exceeds the memory available.
pub fn check(cfg: &ModelConfig, b: usize, t: usize, on_host: bool, what: &str) -> Result<Estimate, MemoryError> {
    let need = estimate(cfg, b, t, what)?;
    if on_host {
        if let Some(available) = mem_available_bytes().filter(|&a| need.total() > a) {
            return Err(MemoryError::TooBig { what: what.to_string(), need, available, advice: advice_for(cfg) });
        }
    }
    Ok(need)
}

/// MemAvailable from /proc/meminfo, in bytes (`None` where there is no such file).
pub fn mem_available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parameter_count_is_the_models_own() {
        for preset in crate::model::config::PRESETS {
            let cfg = ModelConfig::preset(preset).unwrap();
            let listed: usize = crate::model::param_specs(&cfg).iter().map(|p| p.numel()).sum();
            assert_eq!(parameters(&cfg), Some(listed as u64), "{preset}");
        }
        let untied = ModelConfig { tie_word_embeddings: Some(false), ..ModelConfig::preset("llama-tiny").unwrap() };
        let listed: usize = crate::model::param_specs(&untied).iter().map(|p| p.numel()).sum();
        assert_eq!(parameters(&untied), Some(listed as u64));
        // GPT-2 124M: 124,475,904 parameters with the padded vocabulary.
        assert_eq!(parameters(&ModelConfig::preset("gpt2-124m").unwrap()), Some(124_475_904));
    }

    #[test]
    fn sizes_that_cannot_fit_are_refused_with_the_numbers() {
        let tiny = ModelConfig::preset("tiny").unwrap();
        let est = check(&tiny, 4, 64, true, "train").unwrap();
        assert!(est.total() < 256 << 20, "{est:?}"); // mostly the logits: 2 x 256 tokens x 50304 x 4 bytes
                                                     // Issue 26: these aborted in the allocator with a backtrace.
                                                     // (8.8 TB of training state: more than any machine, so the test holds on any.)
        let wide = ModelConfig { ffn_hidden: Some(20_000_000), ..ModelConfig::preset("llama-124m").unwrap() };
        let deep = ModelConfig { n_layer: 1_000_000_000_000, ..tiny.clone() };
        for (cfg, b) in [(wide, 4), (deep, 4), (tiny.clone(), 1_000_000_000_000)] {
            let err = check(&cfg, b, 64, true, "train").unwrap_err().to_string();
            assert!(err.starts_with("train") && (err.contains("GiB") || err.contains("64 bits")), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
        let huge = ModelConfig { n_layer: usize::MAX / 2, ..tiny };
        let err = estimate(&huge, 4, 64, "train").unwrap_err().to_string();
        assert!(err.contains("does not fit in 64 bits") && err.contains("n_layer"), "{err}");
    }
}
