//! `tokenmill export`: turn a tokenmill checkpoint into another tool's format.
//!
//! ```text
//! tokenmill export hf log/checkpoints/step_019073 gpt2-tokenmill/
//! python -c "from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained('gpt2-tokenmill')"
//! ```
//!
//! The folder is built beside DIR in a staging folder of tokenmill's (`DIR.tmp.PID`, holding a `.tokenmill-export`
//! marker) and renamed into place whole, so DIR is absent, or complete. A failed export (an error, another export
//! that got there first, SIGTERM or Ctrl-C) removes its staging folder; what a killed one leaves, the next export to
//! the same DIR removes (only a marked staging folder whose process is gone).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::model::{hf::export_hf, load_model, Precision};
use crate::output;

/// The file that proves a staging folder is an export's (what a later export may remove).
const STAGING_MARKER: &str = ".tokenmill-export";
/// The name the folder is built under inside the staging folder.
const STAGED: &str = "export";

#[derive(clap::Subcommand, Debug)]
pub enum ExportCommand {
    /// Write a Hugging Face folder (GPT2LMHeadModel, LlamaForCausalLM or Qwen2ForCausalLM: config.json +
    /// model.safetensors) from a checkpoint, with the tokenizer files of its data: a Hugging Face tokenizer's
    /// tokenizer.json and tokenizer_config.json, or GPT-2's for a GPT-2 vocabulary.
    Hf {
        /// A tokenmill checkpoint directory (or weights file, or HF folder).
        checkpoint: PathBuf,
        /// The folder to create; it must not exist yet (or be empty, and not a mount point).
        dir: PathBuf,
    },
}

pub fn run(c: ExportCommand) -> anyhow::Result<()> {
    match c {
        ExportCommand::Hf { checkpoint, dir } => {
            let spec = super::model_arg(checkpoint.to_str().context("the checkpoint path is not valid UTF-8")?)?;
            let spec = spec.as_str();
            if !checkpoint.exists() {
                anyhow::bail!("{}: no such checkpoint directory", checkpoint.display());
            }
            check_target(&dir)?;
            for removed in remove_stale_staging(&dir)? {
                eprintln!("removed {} (left by an export that was killed)", removed.display());
            }
            let model = load_model(spec, Precision::FP32, &candle_core::Device::Cpu)
                .with_context(|| format!("loading {}", checkpoint.display()))?;
            let (cfg, params) = (model.config().clone(), model.num_parameters());
            // The model's own tokenizer, the one its data was prepared with (kept in every checkpoint), written into
            // the staging folder with the weights.
            let hf_tokenizer = super::sample::recorded_tokenizer(spec)?.filter(|t| t.hf().is_some());
            let tokenizer_files: Vec<(String, Vec<u8>)> = match hf_tokenizer.as_ref().and_then(|t| t.hf()) {
                Some(hf) => hf.export_files(cfg.block_size).into_iter().map(|(n, b)| (n.to_string(), b)).collect(),
                None => Vec::new(),
            };
            export_staged(model, tokenizer_files, &dir)?;
            if let Some(t) = &hf_tokenizer {
                println!(
                    "tokenizer: the model's tokenizer.json ({}) and tokenizer_config.json (AutoTokenizer loads them)",
                    t.id()
                );
            } else if cfg.real_vocab_size == crate::tokenizer::TokenizerKind::Gpt2.vocab_size() as usize {
                println!(
                    "tokenizer: GPT-2's vocab.json, merges.txt and tokenizer_config.json (AutoTokenizer loads them)"
                );
            } else {
                eprintln!(
                    "note: no tokenizer files: the model's {}-id vocabulary is not GPT-2's (HF's GPT-2 tokenizer cannot \
                     encode for it); load its tiktoken tokenizer yourself",
                    cfg.real_vocab_size
                );
            }
            let class = cfg.arch.spec().hf.class;
            println!(
                "wrote {} ({class} L{} H{} C{}, vocab {}, {params} parameters)",
                dir.display(),
                cfg.n_layer,
                cfg.n_head,
                cfg.n_embd,
                cfg.real_vocab_size,
            );
            Ok(())
        }
    }
}

/// DIR must be new, or an empty folder that can be replaced by a rename (not a mount point), and name where it says.
fn check_target(dir: &Path) -> anyhow::Result<()> {
    output::check_dir_path(dir)?;
    let meta = match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(crate::util::io_at(dir)(e).into()),
        Ok(m) => m,
    };
    anyhow::ensure!(meta.is_dir(), "{}: exists and is not a folder; export into a new folder", dir.display());
    let entries = output::entries(dir, &[])?;
    anyhow::ensure!(
        entries.is_empty(),
        "{}: already exists and is not empty (it holds {}); export into a new folder",
        dir.display(),
        output::describe_entries(&entries)
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let parent = staging_parent(dir);
        if std::fs::metadata(&parent).is_ok_and(|p| p.dev() != meta.dev()) {
            anyhow::bail!(
                "{}: a mount point; the export is built beside it and renamed into place, which a mount point cannot \
                 take: export into a new folder inside it (e.g. {})",
                dir.display(),
                dir.join("model").display()
            );
        }
    }
    Ok(())
}

fn staging_parent(dir: &Path) -> PathBuf {
    match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `PARENT/NAME.tmp.PID`.
fn staging_dir(dir: &Path, pid: u32) -> PathBuf {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "export".into());
    staging_parent(dir).join(format!("{name}.tmp.{pid}"))
}

/// Remove the staging folders earlier exports to `dir` left when killed: `NAME.tmp.PID` beside it, holding the
/// staging marker, whose process is gone. Returns the folders removed.
fn remove_stale_staging(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let parent = staging_parent(dir);
    let mut removed = Vec::new();
    for entry in output::entries(&parent, &[])? {
        let Some((base, pid)) = crate::util::parse_temp_name(&entry) else { continue };
        let path = parent.join(&entry);
        let marked = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) && path.join(STAGING_MARKER).is_file();
        if base == name && marked && pid != std::process::id() && !crate::util::process_running(pid) {
            std::fs::remove_dir_all(&path).map_err(crate::util::io_at(&path))?;
            removed.push(path);
        }
    }
    Ok(removed)
}

/// Export `model` into a marked staging folder on a worker thread, then rename it to `dir`. A failure or a stop
/// signal (SIGTERM, SIGINT) removes the staging folder; a signal then ends the command with 128 + its number.
fn export_staged(
    model: Box<dyn crate::model::LanguageModel>,
    extra_files: Vec<(String, Vec<u8>)>,
    dir: &Path,
) -> anyhow::Result<()> {
    let staging = staging_dir(dir, std::process::id());
    if staging.exists() {
        // This pid's own, from a process that had it before: an export's only if marked.
        anyhow::ensure!(
            staging.join(STAGING_MARKER).is_file(),
            "{}: exists and is not an export's staging folder; remove or rename it",
            staging.display()
        );
        std::fs::remove_dir_all(&staging).map_err(crate::util::io_at(&staging))?;
    }
    std::fs::create_dir(&staging).map_err(crate::util::io_at(&staging))?;
    let stop = crate::train::stop::StopRequest::new();
    let result = (|| -> anyhow::Result<()> {
        crate::util::write_atomic(&staging.join(STAGING_MARKER), format!("{}\n", std::process::id()).as_bytes())
            .map_err(crate::util::io_at(&staging))?;
        stop.on_signals().context("installing the SIGTERM / SIGINT handlers")?;
        let target = staging.join(STAGED);
        let worker = std::thread::spawn(move || -> anyhow::Result<()> {
            export_hf(model.as_ref(), &target)?;
            for (name, bytes) in extra_files {
                let path = target.join(&name);
                crate::util::write_atomic(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        });
        while !worker.is_finished() {
            if stop.raised() {
                return Err(crate::cli::Interrupted {
                    message: format!("export stopped by a signal; {} was not written", dir.display()),
                    code: (128 + stop.signal().unwrap_or(crate::train::stop::SIGTERM)) as u8,
                }
                .into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        worker.join().map_err(|_| anyhow::anyhow!("the export thread panicked"))??;
        std::fs::rename(staging.join(STAGED), dir).with_context(|| {
            format!("{}: could not put the export in place (another export got there first?)", dir.display())
        })?;
        crate::util::fsync_dir(&staging_parent(dir)).map_err(crate::util::io_at(dir))?;
        Ok(())
    })();
    remove_staging(&staging);
    result
}

/// Remove a staging folder, again if the export thread was still writing into it.
fn remove_staging(staging: &Path) {
    for _ in 0..50 {
        match std::fs::remove_dir_all(staging) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => std::thread::sleep(Duration::from_millis(20)),
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 26: an export whose rename into place failed (another export got there first, a mount point) left its
    /// full-size temp folder behind.
    #[test]
    fn a_failed_export_leaves_no_staging_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("hf");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("theirs.txt"), "there first").unwrap();
        let cfg = crate::model::ModelConfig::preset("tiny").unwrap();
        let model = crate::model::build_model(&cfg, Precision::FP32, &candle_core::Device::Cpu, 1).unwrap();
        let err = export_staged(model, Vec::new(), &dir).unwrap_err().to_string();
        assert!(err.contains("could not put the export in place"), "{err}");
        assert_eq!(output::entries(tmp.path(), &[]).unwrap(), ["hf"], "no staging folder left");
        assert_eq!(output::entries(&dir, &[]).unwrap(), ["theirs.txt"], "the winner's folder is untouched");
    }
}
