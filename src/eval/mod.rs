//! Evaluation: the HellaSwag eval file (llm.c layout, `hellaswag_file`) and scoring a model on it (`hellaswag`).

pub mod hellaswag;
pub mod hellaswag_file;
