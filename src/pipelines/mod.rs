//! Prep stages: where documents come from (`sources`, `hub`), how a corpus is described (`spec`, loaded from
//! `pipelines/*.toml`), and the drivers that turn documents into shards (`fineweb`) or eval files (`hellaswag`).

pub mod fineweb;
pub mod hellaswag;
pub mod hub;
pub mod sources;
pub mod spec;
