//! The decoder engine's choices that do not change the model, as typed config: the `[engine]` table of a training
//! config (`train::config`), saved with the run's `config.toml` and its checkpoints and printed at start. None
//! changes the maths beyond rounding; each exists to time one implementation against another.
//!
//! Environment variables override the table for A/B timings without editing a config (`TOKENMILL_ATTENTION`,
//! `TOKENMILL_GELU_FUSION`, `TOKENMILL_BGRADB`, `TOKENMILL_BIAS_STREAM`, `TOKENMILL_CLASSIFIER_CHUNK`, `TOKENMILL_GEMM_TABLE`): `with_env_overrides` applies them once,
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
    /// The native forward with the backward on Hopper's wgmma (`crate::cuda::flash_bwd_sm90`; sm_90 GPUs only, refused
    /// at start elsewhere): for A/B timings until it is measured, not chosen by `auto`.
    #[serde(rename = "native-sm90", alias = "sm90")]
    NativeSm90,
}

impl AttentionBackend {
    /// `native` (or `flash`), `cudnn`, `native-sm90` (or `sm90`) or `auto`, case-insensitive.
    pub fn parse(s: &str) -> Option<AttentionBackend> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(AttentionBackend::Auto),
            "native" | "flash" => Some(AttentionBackend::Native),
            "cudnn" => Some(AttentionBackend::Cudnn),
            "native-sm90" | "sm90" => Some(AttentionBackend::NativeSm90),
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

/// Which cuBLASLt algorithm each product of the engine runs (`[engine] gemm_table`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum GemmTableChoice {
    /// `"auto"`: the tables tokenmill ships (`configs/gemm`, `cuda::gemm_table::SHIPPED`) that were tuned on this GPU
    /// model with this cuBLASLt version, merged; the heuristic's first where none was (said at start).
    #[default]
    Auto,
    /// `"heuristic"` (or `"none"`): cuBLASLt's heuristic's first choice for every product.
    Heuristic,
    /// A table from `tokenmill bench gemm-tune` (refused on another GPU or cuBLASLt).
    File(std::path::PathBuf),
}

impl GemmTableChoice {
    /// `auto`, `heuristic` / `none`, or a table's path.
    pub fn parse(s: &str) -> GemmTableChoice {
        match s.trim() {
            "auto" => GemmTableChoice::Auto,
            "heuristic" | "none" => GemmTableChoice::Heuristic,
            path => GemmTableChoice::File(path.into()),
        }
    }
}

impl std::fmt::Display for GemmTableChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GemmTableChoice::Auto => f.write_str("auto"),
            GemmTableChoice::Heuristic => f.write_str("heuristic"),
            GemmTableChoice::File(p) => write!(f, "{}", p.display()),
        }
    }
}

impl Serialize for GemmTableChoice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GemmTableChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim().is_empty() {
            return Err(serde::de::Error::custom("gemm_table: expected \"auto\", \"heuristic\" or a table's path"));
        }
        Ok(GemmTableChoice::parse(&s))
    }
}

/// `[engine]`: how the decoder engine computes (the autograd engine ignores it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineOptions {
    /// `auto` (cuDNN in a cudnn build, else native), `native`, `cudnn` or `native-sm90`.
    pub attention: AttentionBackend,
    /// GPT-2's GELU inside the MLP matmuls' cuBLASLt epilogues (GELU_AUX_BIAS forward, DGELU backward) instead of
    /// its own kernels.
    pub gelu_fusion: bool,
    /// Bias gradients from the weight-gradient matmuls' BGRADB epilogue (then added to the accumulated gradient)
    /// instead of `bias_grad.cu`'s column sums, which read dout once more.
    pub bias_grad_epilogue: bool,
    /// `bias_grad.cu`'s column sums on a second stream, beside the products (same kernels, same bits; ignored with
    /// `bias_grad_epilogue`).
    pub bias_grad_stream: bool,
    /// Rows of the lm_head + classifier computed at once (bounds the logits buffer: rows x V bf16).
    pub classifier_chunk: usize,
    /// cuBLASLt's algorithm per matmul shape: `"auto"` (the shipped tables tuned on this GPU and cuBLASLt, else
    /// the heuristic), `"heuristic"`, or a table from `tokenmill bench gemm-tune` (`cuda::gemm_table`).
    pub gemm_table: GemmTableChoice,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            attention: AttentionBackend::Auto,
            gelu_fusion: true,
            bias_grad_epilogue: false,
            bias_grad_stream: true,
            classifier_chunk: 16384,
            gemm_table: GemmTableChoice::Auto,
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
    /// These options with `TOKENMILL_ATTENTION=auto|native|cudnn|native-sm90`, `TOKENMILL_GELU_FUSION=0|1`, `TOKENMILL_BGRADB=0|1`,
    /// `TOKENMILL_CLASSIFIER_CHUNK=ROWS` and `TOKENMILL_GEMM_TABLE=auto|heuristic|FILE` applied where set, and the name of each one
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
                expected: "expected auto, native, cudnn or native-sm90",
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
        if let Some(v) = get("TOKENMILL_BIAS_STREAM") {
            self.bias_grad_stream = flag("TOKENMILL_BIAS_STREAM", v.clone())?;
            applied.push(format!("TOKENMILL_BIAS_STREAM={v}"));
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
            self.gemm_table = GemmTableChoice::parse(&v);
            applied.push(format!("TOKENMILL_GEMM_TABLE={v}"));
        }
        Ok((self, applied))
    }

    /// A one-line summary for the run's start.
    pub fn describe(&self) -> String {
        format!(
            "attention {:?}, gelu_fusion {}, bias_grad_epilogue {}, bias_grad_stream {}, classifier_chunk {}, gemm_table {}",
            self.attention.resolved(),
            self.gelu_fusion,
            self.bias_grad_epilogue,
            self.bias_grad_stream,
            self.classifier_chunk,
            self.gemm_table
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names_parse_and_auto_resolves_per_build() {
        assert_eq!(AttentionBackend::parse("cudnn"), Some(AttentionBackend::Cudnn));
        assert_eq!(AttentionBackend::parse("SM90"), Some(AttentionBackend::NativeSm90));
        assert_eq!(AttentionBackend::NativeSm90.resolved(), AttentionBackend::NativeSm90);
        let o: EngineOptions = toml::from_str("attention = \"native-sm90\"").unwrap();
        assert_eq!(o.attention, AttentionBackend::NativeSm90);
        assert!(toml::to_string(&o).unwrap().contains("attention = \"native-sm90\""));
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
        assert_eq!(o.gemm_table, GemmTableChoice::File("h100.toml".into()));
        assert_eq!(
            applied,
            ["TOKENMILL_ATTENTION=native", "TOKENMILL_CLASSIFIER_CHUNK=4096", "TOKENMILL_GEMM_TABLE=h100.toml"]
        );
        let err = EngineOptions::default().with_overrides(env(&[("TOKENMILL_BGRADB", "yes")])).unwrap_err();
        assert!(err.to_string().contains("TOKENMILL_BGRADB") && err.to_string().contains("0 or 1"), "{err}");
        let toml: EngineOptions =
            toml::from_str("attention = \"cudnn\"\nclassifier_chunk = 8192\ngemm_table = \"t.toml\"").unwrap();
        assert_eq!(toml.gemm_table, GemmTableChoice::File("t.toml".into()));
        // The shipped tables by default; the heuristic or a file when named; what was chosen reads back.
        assert_eq!(EngineOptions::default().gemm_table, GemmTableChoice::Auto);
        for (text, want) in [
            ("auto", GemmTableChoice::Auto),
            ("heuristic", GemmTableChoice::Heuristic),
            ("none", GemmTableChoice::Heuristic),
            ("configs/gemm/x.toml", GemmTableChoice::File("configs/gemm/x.toml".into())),
        ] {
            let o: EngineOptions = toml::from_str(&format!("gemm_table = {text:?}")).unwrap();
            assert_eq!(o.gemm_table, want, "{text}");
            let back: EngineOptions = toml::from_str(&toml::to_string(&o).unwrap()).unwrap();
            assert_eq!(back, o);
        }
        assert!(toml::from_str::<EngineOptions>("gemm_table = \"\"").is_err());
        assert_eq!((toml.attention, toml.classifier_chunk, toml.gelu_fusion), (AttentionBackend::Cudnn, 8192, true));
        assert!(toml::from_str::<EngineOptions>("fusion = true").is_err(), "unknown keys are refused");
    }
}
