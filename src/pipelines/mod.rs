//! Prep stages: where documents come from (`sources`; remote files through `crate::hub`), how a corpus is described (`spec`, loaded from
//! `pipelines/*.toml`), and the drivers that turn documents into shards (`fineweb`) or eval files (`hellaswag`).

pub mod fineweb;
pub mod hellaswag;
pub mod merge;
pub mod ordered;
pub mod profile;
pub mod segments;
pub mod sources;
pub mod spec;
pub mod workers;
