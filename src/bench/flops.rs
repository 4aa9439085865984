//! How many floating-point operations one timed iteration performs, for TFLOP/s and MFU.
//!
//! Accounting (PaLM, Chowdhery et al. 2022, appendix B; nanoGPT's `estimate_mfu`), per token of a sequence of T:
//! - weight matmuls: 2 FLOPs (multiply + add) per parameter in the forward pass, twice that in the backward pass
//!   (gradients of the activations and of the weights): 6 * N for forward + backward, where N counts every
//!   parameter that multiplies an activation. The tied token embedding counts (it is the lm_head matmul); the
//!   learned position embedding of GPT-2 does not (a table lookup and an add), as in nanoGPT's `get_num_params`.
//!   LayerNorm gains and biases are in N too, slightly over-counting, as everyone does.
//! - attention: per layer, Q K^T and att V each cost 2 * T * C per token in the forward pass (C = NH * HS),
//!   so 4 * L * T * C forward and 12 * L * T * C forward + backward. This counts the whole T x T score matrix;
//!   a causal kernel only needs half of it, which is why llm.c writes 6 * L * C * T (and keeps the position
//!   embedding in N): on GPT-2 124M at T = 1024 llm.c's count is 6% lower than this one, so an MFU quoted from
//!   llm.c reads 6% lower than ours for the same speed.
//!
//! Forward alone is one third of the total (2 N + 4 L T C per token), backward two thirds. The optimizer step does
//! no matmuls (O(N) elementwise work), so it gets no FLOP count and no MFU.

use super::Computation;
use crate::model::{param_specs, ModelConfig};

/// Parameters that are not a matmul operand (see the module doc).
const LOOKUP_ONLY: &[&str] = &["wpe.weight"];

/// N: the parameters that take part in matmuls (all but position-embedding tables; tied weights once).
pub fn matmul_params(cfg: &ModelConfig) -> usize {
    param_specs(cfg).iter().filter(|s| !LOOKUP_ONLY.contains(&s.name.as_str())).map(|s| s.numel()).sum()
}

/// Every trainable parameter (tied weights once), as the model reports it.
pub fn total_params(cfg: &ModelConfig) -> usize {
    param_specs(cfg).iter().map(|s| s.numel()).sum()
}

/// Forward + backward FLOPs per token at sequence length `seq_len`: 6 N + 12 L T C.
pub fn train_flops_per_token(cfg: &ModelConfig, seq_len: usize) -> f64 {
    6.0 * matmul_params(cfg) as f64 + 12.0 * (cfg.n_layer * seq_len * cfg.n_embd) as f64
}

/// FLOPs one iteration of `what` performs on `tokens` tokens of sequences of length `seq_len`; None for the
/// optimizer step.
pub fn flops_per_iteration(what: Computation, cfg: &ModelConfig, seq_len: usize, tokens: usize) -> Option<f64> {
    let per_token = train_flops_per_token(cfg, seq_len);
    let fraction = match what {
        Computation::Forward => 1.0 / 3.0,
        Computation::Backward => 2.0 / 3.0,
        Computation::ForwardBackward | Computation::TrainStep => 1.0,
        Computation::OptimizerStep => return None,
    };
    Some(per_token * fraction * tokens as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_124m_counts() {
        let cfg = ModelConfig::preset("gpt2-124m").unwrap();
        // V C + T_max C + L (12 C^2 + 13 C) + 2 C with V = 50304, C = 768, L = 12, T_max = 1024.
        assert_eq!(total_params(&cfg), 124_475_904);
        assert_eq!(matmul_params(&cfg), 124_475_904 - 1024 * 768);
        let per_token = train_flops_per_token(&cfg, 1024);
        assert_eq!(per_token, 6.0 * 123_689_472.0 + 12.0 * 12.0 * 1024.0 * 768.0);
        let fwd = flops_per_iteration(Computation::Forward, &cfg, 1024, 10).unwrap();
        let bwd = flops_per_iteration(Computation::Backward, &cfg, 1024, 10).unwrap();
        let both = flops_per_iteration(Computation::ForwardBackward, &cfg, 1024, 10).unwrap();
        assert!((fwd + bwd - both).abs() < 1e-3 * both && (2.0 * fwd - bwd).abs() < 1e-3 * bwd);
        assert_eq!(flops_per_iteration(Computation::OptimizerStep, &cfg, 1024, 10), None);
    }

    #[test]
    fn llama_has_no_lookup_only_table() {
        let cfg = ModelConfig::preset("llama-tiny").unwrap();
        assert_eq!(matmul_params(&cfg), total_params(&cfg));
    }
}
