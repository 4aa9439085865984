//! The decoder engine's choices that do not change the model, as typed config: the `[engine]` table of a training
//! config (`train::config`), saved with the run's `config.toml` and its checkpoints and printed at start. None
//! changes the maths beyond rounding; each exists to time one implementation against another.
//!
//! Environment variables override the table for A/B timings without editing a config (`TOKENMILL_ATTENTION`,
//! `TOKENMILL_GELU_FUSION`, `TOKENMILL_BGRADB`, `TOKENMILL_CLASSIFIER_CHUNK`, `TOKENMILL_GEMM_TABLE`): `with_env_overrides` applies them once,
//! where the config is resolved, so what ran is what the run records.

use serde::{Deserialize, Serialize};

/// Which attention kernels the engine runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionBackend {
    /// cuDNN where the binary has it (a `--features cudnn` build), else the native kernels.
    #[default]
    Auto,
    /// tokenmill's flash attention (`crate::cuda::flash_attn`, always built).
    #[serde(alias = "flash")]
    Native,
    /// cuDNN's SDPA with the deterministic backward requested (needs a `--features cudnn` build).
    Cudnn,
}

impl AttentionBackend {
    /// `native` (or `flash`), `cudnn` or `auto`, case-insensitive.
    pub fn parse(s: &str) -> Option<AttentionBackend> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(AttentionBackend::Auto),
            "native" | "flash" => Some(AttentionBackend::Native),
            "cudnn" => Some(AttentionBackend::Cudnn),
            _ => None,
        }
    }

    /// `Auto` made concrete for this binary: cuDNN in a `cudnn` build (at GPT-2 124M shapes its deterministic SDPA
    /// is 1.49 ms per layer against the native kernels' 1.83, docs/PERF.md), else native.
    pub fn resolved(self) -> AttentionBackend {
        match self {
            AttentionBackend::Auto if cfg!(feature = "cudnn") => AttentionBackend::Cudnn,
            AttentionBackend::Auto => AttentionBackend::Native,
            other => other,
        }
    }
}

/// `[engine]`: how the decoder engine computes (the autograd engine ignores it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineOptions {
    /// `auto` (cuDNN in a cudnn build, else native), `native` or `cudnn`.
    pub attention: AttentionBackend,
    /// GPT-2's GELU inside the MLP matmuls' cuBLASLt epilogues (GELU_AUX_BIAS forward, DGELU backward) instead of
    /// its own kernels.
    pub gelu_fusion: bool,
    /// Bias gradients from the weight-gradient matmuls' BGRADB epilogue (then added to the accumulated gradient)
    /// instead of `bias_grad.cu`'s column sums, which read dout once more.
    pub bias_grad_epilogue: bool,
    /// Rows of the lm_head + classifier computed at once (bounds the logits buffer: rows x V bf16).
    pub classifier_chunk: usize,
    /// A table of cuBLASLt algorithms per matmul shape from `tokenmill bench gemm-tune` on this GPU and cuBLASLt
    /// version (`cuda::gemm_table`); unset: cuBLASLt's heuristic picks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gemm_table: Option<std::path::PathBuf>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            attention: AttentionBackend::Auto,
            gelu_fusion: true,
            bias_grad_epilogue: false,
            classifier_chunk: 16384,
            gemm_table: None,
        }
    }
}

/// An environment override that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{var}={value:?}: {expected}")]
pub struct BadOverride {
    pub var: &'static str,
    pub value: String,
    pub expected: &'static str,
}

impl EngineOptions {
    /// These options with `TOKENMILL_ATTENTION=auto|native|cudnn`, `TOKENMILL_GELU_FUSION=0|1`, `TOKENMILL_BGRADB=0|1`,
    /// `TOKENMILL_CLASSIFIER_CHUNK=ROWS` and `TOKENMILL_GEMM_TABLE=FILE` applied where set, and the name of each one
    /// applied.
    pub fn with_env_overrides(self) -> Result<(EngineOptions, Vec<String>), BadOverride> {
        self.with_overrides(|var| std::env::var(var).ok().filter(|v| !v.trim().is_empty()))
    }

    /// As `with_env_overrides`, reading variables through `get`.
    pub fn with_overrides(
        mut self,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<(EngineOptions, Vec<String>), BadOverride> {
        let mut applied = Vec::new();
        let flag = |var: &'static str, v: String| match v.trim() {
            "1" | "true" => Ok(true),
            "0" | "false" => Ok(false),
            _ => Err(BadOverride { var, value: v, expected: "expected 0 or 1" }),
        };
        if let Some(v) = get("TOKENMILL_ATTENTION") {
            self.attention = AttentionBackend::parse(&v).ok_or(BadOverride {
                var: "TOKENMILL_ATTENTION",
                value: v.clone(),
                expected: "expected auto, native or cudnn",
            })?;
            applied.push(format!("TOKENMILL_ATTENTION={v}"));
        }
        if let Some(v) = get("TOKENMILL_GELU_FUSION") {
            self.gelu_fusion = flag("TOKENMILL_GELU_FUSION", v.clone())?;
            applied.push(format!("TOKENMILL_GELU_FUSION={v}"));
        }
        if let Some(v) = get("TOKENMILL_BGRADB") {
            self.bias_grad_epilogue = flag("TOKENMILL_BGRADB", v.clone())?;
            applied.push(format!("TOKENMILL_BGRADB={v}"));
        }
        if let Some(v) = get("TOKENMILL_CLASSIFIER_CHUNK") {
            self.classifier_chunk = v.trim().parse().ok().filter(|&r: &usize| r > 0).ok_or(BadOverride {
                var: "TOKENMILL_CLASSIFIER_CHUNK",
                value: v.clone(),
                expected: "expected a positive number of rows",
            })?;
            applied.push(format!("TOKENMILL_CLASSIFIER_CHUNK={v}"));
        }
        if let Some(v) = get("TOKENMILL_GEMM_TABLE") {
            self.gemm_table = Some(v.trim().into());
            applied.push(format!("TOKENMILL_GEMM_TABLE={v}"));
        }
        Ok((self, applied))
    }

    /// A one-line summary for the run's start.
    pub fn describe(&self) -> String {
        let table = match &self.gemm_table {
            Some(p) => format!("gemm_table {}", p.display()),
            None => "cuBLASLt heuristic".to_string(),
        };
        format!(
            "attention {:?}, gelu_fusion {}, bias_grad_epilogue {}, classifier_chunk {}, {table}",
            self.attention.resolved(),
            self.gelu_fusion,
            self.bias_grad_epilogue,
            self.classifier_chunk
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names_parse_and_auto_resolves_per_build() {
        assert_eq!(AttentionBackend::parse("cudnn"), Some(AttentionBackend::Cudnn));
        assert_eq!(AttentionBackend::parse(" Native "), Some(AttentionBackend::Native));
        assert_eq!(AttentionBackend::parse("flash"), Some(AttentionBackend::Native));
        assert_eq!(AttentionBackend::parse("fa3"), None);
        let want = if cfg!(feature = "cudnn") { AttentionBackend::Cudnn } else { AttentionBackend::Native };
        assert_eq!(AttentionBackend::Auto.resolved(), want);
        assert_eq!(AttentionBackend::Native.resolved(), AttentionBackend::Native);
    }

    #[test]
    fn overrides_apply_and_bad_values_are_named() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        let (o, applied) = EngineOptions::default()
            .with_overrides(env(&[
                ("TOKENMILL_ATTENTION", "native"),
                ("TOKENMILL_CLASSIFIER_CHUNK", "4096"),
                ("TOKENMILL_GEMM_TABLE", "h100.toml"),
            ]))
            .unwrap();
        assert_eq!((o.attention, o.classifier_chunk, o.gelu_fusion), (AttentionBackend::Native, 4096, true));
        assert_eq!(o.gemm_table.as_deref(), Some(std::path::Path::new("h100.toml")));
        assert_eq!(
            applied,
            ["TOKENMILL_ATTENTION=native", "TOKENMILL_CLASSIFIER_CHUNK=4096", "TOKENMILL_GEMM_TABLE=h100.toml"]
        );
        let err = EngineOptions::default().with_overrides(env(&[("TOKENMILL_BGRADB", "yes")])).unwrap_err();
        assert!(err.to_string().contains("TOKENMILL_BGRADB") && err.to_string().contains("0 or 1"), "{err}");
        let toml: EngineOptions =
            toml::from_str("attention = \"cudnn\"\nclassifier_chunk = 8192\ngemm_table = \"t.toml\"").unwrap();
        assert_eq!(toml.gemm_table.as_deref(), Some(std::path::Path::new("t.toml")));
        assert_eq!((toml.attention, toml.classifier_chunk, toml.gelu_fusion), (AttentionBackend::Cudnn, 8192, true));
        assert!(toml::from_str::<EngineOptions>("fusion = true").is_err(), "unknown keys are refused");
    }
}
