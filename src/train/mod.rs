//! Training: a loop generic over `crate::model::LanguageModel` (GPT-2 or Llama-style, chosen by `[model] arch`),
//! with its own AdamW, the warmup + cosine schedule, gradient accumulation and clipping, val loss / HellaSwag /
//! sample hooks, atomic checkpoints that resume bit for bit, logs, and the report plot.
//!
//! Precision policy, in one place: parameters (master weights) and AdamW moments are fp32 `Var`s; the forward and
//! backward compute in `run.dtype` (bf16 on GPU by default, see `config::ComputeDtype`), gradients come back fp32;
//! losses, norms and evaluation statistics are reduced in fp32.
//!
//! Files: `config` (TrainConfig, resolution), `init` (a run that starts from a Hugging Face model), `schedule` (lr), `optim` (AdamW), `step` (micro-step, accumulation,
//! the gradient-reduction seam, clipping), `checkpoint`, `resume` (what a resumed run may change), `run_dir` (the
//! run directory's owner marker and lock: what a run may write and remove there), `log`, `sample`,
//! `trainer` (the loop), `stop` (SIGTERM/SIGINT: stop after the step, with a checkpoint), `report` (SVG);
//! `dist` is data-parallel training (process groups, and `DataParallel`, the multi-process `step::Reducer`).

pub mod checkpoint;
pub mod config;
pub mod decoder;
pub mod dist;
pub mod engine;
pub mod init;
pub mod log;
pub mod optim;
pub mod report;
pub mod resume;
pub mod run_dir;
pub mod sample;
pub mod schedule;
pub mod step;
pub mod stop;
pub mod trainer;

pub use config::{ComputeDtype, TrainConfig};
pub use log::StepStats;
pub use trainer::{Resume, RunEnd, TrainError, Trainer, TrainerOptions};
