//! HellaSwag scoring against an independent reference: every ending scored alone (no padding, no batching) with a
//! host-side log-softmax, on real HellaSwag tasks (the first tasks of the validation set, GPT-2 BPE), with a
//! tiny random GPT-2. Also the context-cropping path and `tokenmill eval hellaswag` on a checkpoint directory.

use std::path::Path;

#[path = "common/mod.rs"]
mod common;

use candle_core::{Device, Tensor};
use tokenmill::eval::hellaswag::{
    evaluate, evaluate_with, flips, score_batch, score_example, tally, BatchShape, ModelScorer, RowScorer,
};
use tokenmill::eval::hellaswag_file::{self, Example, HellaswagFile};
use tokenmill::model::{build_model, Architecture, LanguageModel, ModelConfig, Precision};
use tokenmill::tokenizer::Tokenizer;

/// The first `n` tasks of the llama.cpp-layout validation file (6 lines each: context, label, 4 endings), tokenized
/// as build-nanogpt's render_example does (`" " + ending`), written to and read back from an eval file.
fn real_examples(n: usize, dir: &Path) -> Vec<Example> {
    let text = std::fs::read_to_string(common::hellaswag_val_full()).unwrap();
    let lines: Vec<&str> = text.lines().take(6 * n).collect();
    let tok = Tokenizer::gpt2();
    let examples: Vec<Example> = lines
        .chunks_exact(6)
        .enumerate()
        .map(|(index, t)| Example {
            index,
            label: t[1].parse().unwrap(),
            context: tok.encode(t[0]).unwrap(),
            endings: [2, 3, 4, 5].map(|i| tok.encode(&format!(" {}", t[i])).unwrap()),
        })
        .collect();
    let path = dir.join("hellaswag_val.bin");
    hellaswag_file::write(&path, &examples).unwrap();
    let back = HellaswagFile::open(&path).unwrap();
    assert_eq!(back.examples(), &examples[..]);
    examples
}

fn tiny(block_size: usize) -> Box<dyn LanguageModel> {
    let cfg = ModelConfig {
        arch: Architecture::Gpt2,
        block_size,
        vocab_size: 50304,
        real_vocab_size: 50257,
        n_layer: 2,
        n_head: 2,
        n_embd: 32,
        n_kv_head: None,
        ffn_hidden: None,
        rope_theta: None,
        tie_word_embeddings: None,
        norm_eps: None,
    };
    build_model(&cfg, Precision::FP32, &Device::Cpu, 42).unwrap()
}

/// -log p(tokens[j+1] | tokens[..=j]) summed over the positions `from..tokens.len()-1`, one unpadded row.
fn reference_sum_loss(model: &dyn LanguageModel, tokens: &[u32], first_scored: usize) -> f64 {
    let idx = Tensor::from_slice(tokens, (1, tokens.len()), &Device::Cpu).unwrap();
    let logits = model.forward(&idx).unwrap().squeeze(0).unwrap().to_vec2::<f32>().unwrap(); // (T, V)
    (first_scored..tokens.len())
        .map(|target_pos| {
            let row = &logits[target_pos - 1];
            let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
            let lse = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
            lse - row[tokens[target_pos] as usize] as f64
        })
        .sum()
}

#[test]
fn matches_per_ending_reference_on_real_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let examples = real_examples(6, dir.path());
    let model = tiny(256);
    let (mut correct, mut correct_norm) = (0, 0);
    for ex in &examples {
        assert!(ex.row_len() <= 256, "no cropping in this test");
        let s = score_example(&*model, ex, &Device::Cpu).unwrap();
        for (i, ending) in ex.endings.iter().enumerate() {
            let row: Vec<u32> = ex.context.iter().chain(ending).copied().collect();
            let want = reference_sum_loss(&*model, &row, ex.context.len());
            assert!(
                (s.sum_loss[i] - want).abs() < 1e-3 * want,
                "example {} ending {i}: {} vs {want}",
                ex.index,
                s.sum_loss[i]
            );
            let want_avg = want / ending.len() as f64;
            assert!((s.avg_loss[i] - want_avg).abs() < 1e-3 * want_avg);
        }
        let argmin = |v: &[f64; 4]| (0..4).fold(0, |b, i| if v[i] < v[b] { i } else { b });
        assert_eq!((s.pred, s.pred_norm), (argmin(&s.sum_loss), argmin(&s.avg_loss)));
        correct += usize::from(s.pred == ex.label);
        correct_norm += usize::from(s.pred_norm == ex.label);
    }
    let score = evaluate(&*model, &examples, 0, 1, &Device::Cpu).unwrap();
    assert_eq!((score.n, score.correct, score.correct_norm), (6, correct, correct_norm));
    // Two ranks split the examples and their counts add up to the whole.
    let mut halves = evaluate(&*model, &examples, 0, 2, &Device::Cpu).unwrap();
    halves.merge(&evaluate(&*model, &examples, 1, 2, &Device::Cpu).unwrap());
    assert_eq!(halves, score);
}

/// The batched path (`evaluate`: examples sorted by length, rows padded at their end, many per forward, the losses
/// from `token_losses`) against each example scored alone with a host log-softmax, in f32 on real tasks of mixed
/// lengths, for GPT-2 and a grouped-query Llama: every ending's summed loss within 1e-5 relative, the same
/// predictions, the same counts, with several batches (the CPU's 64 rows a batch over 40 tasks) and two ranks.
#[test]
fn batched_scoring_equals_each_example_scored_alone() {
    let dir = tempfile::tempdir().unwrap();
    let examples = real_examples(40, dir.path());
    let lens: Vec<usize> = examples.iter().map(|e| e.row_len()).collect();
    assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() > 10, "mixed lengths: {lens:?}");
    let llama = ModelConfig {
        arch: Architecture::Llama,
        block_size: 256,
        vocab_size: 50304,
        real_vocab_size: 50257,
        n_layer: 2,
        n_head: 4,
        n_embd: 32,
        n_kv_head: Some(2),
        ffn_hidden: None,
        rope_theta: None,
        tie_word_embeddings: Some(false),
        norm_eps: None,
    };
    let models = [tiny(256), build_model(&llama, Precision::FP32, &Device::Cpu, 5).unwrap()];
    for model in &models {
        let (mut correct, mut correct_norm) = (0, 0);
        let refs: Vec<&Example> = examples.iter().collect();
        let batched = score_batch(&mut ModelScorer::new(&**model, &Device::Cpu), &refs).unwrap();
        for (ex, b) in examples.iter().zip(&batched) {
            let alone = score_example(&**model, ex, &Device::Cpu).unwrap();
            for i in 0..4 {
                let (got, want) = (b.sum_loss[i], alone.sum_loss[i]);
                assert!(
                    (got - want).abs() <= 1e-5 * want,
                    "{:?} example {} ending {i}: {got} vs {want}",
                    model.config().arch,
                    ex.index
                );
            }
            assert_eq!((b.pred, b.pred_norm), (alone.pred, alone.pred_norm), "example {}", ex.index);
            correct += usize::from(alone.pred == ex.label);
            correct_norm += usize::from(alone.pred_norm == ex.label);
        }
        let score = evaluate(&**model, &examples, 0, 1, &Device::Cpu).unwrap();
        assert_eq!((score.n, score.correct, score.correct_norm), (40, correct, correct_norm));
        let mut halves = evaluate(&**model, &examples, 0, 2, &Device::Cpu).unwrap();
        halves.merge(&evaluate(&**model, &examples, 1, 2, &Device::Cpu).unwrap());
        assert_eq!(halves, score);
    }
}

/// A fixed-shape scorer as the decoder engine is one: lengths rounded up to a bucket, always `rows` rows (padded
/// with empty rows), scored by a candle model underneath.
struct Bucketed<'a> {
    inner: ModelScorer<'a>,
    bucket: usize,
    rows: usize,
    calls: Vec<(usize, usize)>,
}

impl RowScorer for Bucketed<'_> {
    fn block_size(&self) -> usize {
        self.inner.block_size()
    }
    fn batch_shape(&self, t: usize) -> BatchShape {
        BatchShape { t: t.div_ceil(self.bucket) * self.bucket, rows: self.rows, fixed: true }
    }
    fn token_losses(
        &mut self,
        tokens: Vec<u32>,
        targets: Vec<u32>,
        rows: usize,
        t: usize,
    ) -> candle_core::Result<Vec<f32>> {
        self.calls.push((rows, t));
        self.inner.token_losses(tokens, targets, rows, t)
    }
}

#[test]
fn a_fixed_shape_scorer_gives_the_same_predictions_and_flips_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let examples = real_examples(30, dir.path());
    let model = tiny(256);
    let plain = evaluate_with(&mut ModelScorer::new(&*model, &Device::Cpu), &examples, 0, 1, |_| {}).unwrap();
    let mut bucketed = Bucketed { inner: ModelScorer::new(&*model, &Device::Cpu), bucket: 32, rows: 12, calls: vec![] };
    let fixed = evaluate_with(&mut bucketed, &examples, 0, 1, |_| {}).unwrap();
    assert_eq!(plain, fixed, "padding to a bucket and with empty rows changes no prediction");
    assert_eq!(flips(&plain, &fixed), (0, 0));
    assert!(bucketed.calls.iter().all(|&(r, t)| r == 12 && t % 32 == 0), "{:?}", bucketed.calls);
    assert_eq!(bucketed.calls.len(), 10, "3 examples (12 rows) per call");
    assert_eq!(tally(&plain), evaluate(&*model, &examples, 0, 1, &Device::Cpu).unwrap());
    // One prediction changed, one example missing from the second run.
    let mut other = fixed[1..].to_vec();
    other[0].pred_norm = (other[0].pred_norm + 1) % 4;
    assert_eq!(flips(&plain, &other), (1, 1));
}

#[test]
fn rows_longer_than_the_context_keep_their_endings() {
    let dir = tempfile::tempdir().unwrap();
    let examples = real_examples(2, dir.path());
    let ex = &examples[0];
    let block = ex.endings.iter().map(Vec::len).max().unwrap() + 4;
    assert!(ex.row_len() > block);
    let model = tiny(block);
    let s = score_example(&*model, ex, &Device::Cpu).unwrap();
    let b = &score_batch(&mut ModelScorer::new(&*model, &Device::Cpu), &[ex]).unwrap()[0];
    assert!((0..4).all(|i| (b.sum_loss[i] - s.sum_loss[i]).abs() <= 1e-5 * s.sum_loss[i].abs()), "{b:?} vs {s:?}");
    // The cropped row keeps the last `block` columns of the padded (4, T) rows: check ending 0 against that.
    let t = ex.row_len();
    let drop = t - block;
    let mut row: Vec<u32> = ex.context.iter().chain(&ex.endings[0]).copied().collect();
    row.resize(t, 0);
    let cropped = &row[drop..];
    let first_scored = ex.context.len() - drop;
    let want = reference_sum_loss(&*model, &cropped[..first_scored + ex.endings[0].len()], first_scored);
    assert!((s.sum_loss[0] - want).abs() < 1e-3 * want, "{} vs {want}", s.sum_loss[0]);
    assert!(s.avg_loss.iter().all(|l| l.is_finite()));
}

#[test]
fn cli_scores_a_checkpoint_directory() {
    let dir = tempfile::tempdir().unwrap();
    let examples = real_examples(4, dir.path());
    let model = tiny(256);
    let ckpt = dir.path().join("ckpt");
    std::fs::create_dir_all(&ckpt).unwrap();
    tokenmill::model::save_model_weights(&*model, &ckpt.join("model.safetensors")).unwrap();
    let want = evaluate(&*model, &examples, 0, 1, &Device::Cpu).unwrap();

    // --data takes the directory `prep hellaswag --out DIR` wrote (issue 12 item 8), as well as the file.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokenmill"))
        .args(["eval", "hellaswag", "--device", "cpu", "--limit", "3", "--model"])
        .arg(&ckpt)
        .arg("--data")
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let three = evaluate(&*model, &examples[..3], 0, 1, &Device::Cpu).unwrap();
    let line = format!("acc: {:.4} acc_norm: {:.4} (n=3)", three.acc(), three.acc_norm());
    assert!(stdout.contains(&line), "expected `{line}` in:\n{stdout}");
    assert_eq!(want.n, 4);

    // --compare-fp32 scores again in fp32 and counts the flips (none: both passes are fp32 here); --engine is
    // checked against the device and named when wrong.
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokenmill"))
            .args(["eval", "hellaswag", "--device", "cpu", "--limit", "3", "--model"])
            .arg(&ckpt)
            .arg("--data")
            .arg(dir.path())
            .args(extra)
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    };
    let (ok, text) = run(&["--compare-fp32"]);
    assert!(
        ok && text.contains("fp32: acc:") && text.contains("0 of 3 examples' acc_norm prediction differ"),
        "{text}"
    );
    let (ok, text) = run(&["--engine", "cuda"]);
    assert!(!ok && text.contains("--engine") && text.contains("CUDA"), "{text}");
    let (ok, text) = run(&["--engine", "fast"]);
    assert!(!ok && text.contains("--engine \"fast\"") && text.contains("auto, autograd or cuda"), "{text}");
}

/// Issue 12 item 4: a cl100k-trained model was scored on the GPT-2 eval file (acc 0.40, exit 0). The file holds
/// GPT-2 ids; a model with another tokenizer's vocabulary is refused, naming it.
#[test]
fn cli_refuses_a_model_of_another_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    real_examples(2, dir.path());
    let cfg = ModelConfig {
        arch: Architecture::Gpt2,
        block_size: 64,
        vocab_size: 100_288,
        real_vocab_size: 100_277,
        n_layer: 1,
        n_head: 2,
        n_embd: 16,
        n_kv_head: None,
        ffn_hidden: None,
        rope_theta: None,
        tie_word_embeddings: None,
        norm_eps: None,
    };
    let model = build_model(&cfg, Precision::FP32, &Device::Cpu, 1).unwrap();
    let ckpt = dir.path().join("cl100k");
    std::fs::create_dir_all(&ckpt).unwrap();
    tokenmill::model::save_model_weights(&*model, &ckpt.join("model.safetensors")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokenmill"))
        .args(["eval", "hellaswag", "--device", "cpu", "--model"])
        .arg(&ckpt)
        .arg("--data")
        .arg(dir.path().join("hellaswag_val.bin"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(stderr.contains("holds GPT-2 token ids") && stderr.contains("cl100k_base (100277 token ids)"), "{stderr}");
}

/// Issue 20: `eval hellaswag --limit 0` printed acc 0.0000 with exit 0. It is refused.
#[test]
fn cli_refuses_a_limit_of_zero() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokenmill"))
        .args(["eval", "hellaswag", "--device", "cpu", "--limit", "0", "--model", "gpt2"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("--limit 0 scores nothing"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("acc"), "no score printed");
}

/// Timing (ignored; `cargo test --test eval_hellaswag -- --ignored --nocapture hellaswag_batched_timing`): 200 real
/// tasks on the CPU with a tiny GPT-2, scored one example per forward and batched; docs/PERF.md has the figures.
#[test]
#[ignore]
fn hellaswag_batched_timing() {
    let dir = tempfile::tempdir().unwrap();
    let examples = real_examples(200, dir.path());
    let model = tiny(256);
    let t0 = std::time::Instant::now();
    for ex in &examples {
        score_example(&*model, ex, &Device::Cpu).unwrap();
    }
    let alone = t0.elapsed().as_secs_f64();
    let t0 = std::time::Instant::now();
    let score = evaluate(&*model, &examples, 0, 1, &Device::Cpu).unwrap();
    let batched = t0.elapsed().as_secs_f64();
    println!("TIMING hellaswag 200 tasks, tiny GPT-2 (L2 C32), CPU: one example per forward {alone:.2} s, batched {batched:.2} s ({:.1}x); n={}", alone / batched, score.n);
}

/// Issue 26, silent wrong result 7 and misleading 6: eval-file ids 50257..50303 (outside GPT-2's vocabulary, inside
/// the model's padding) were scored, and an id past the model's rows (60000) failed with candle's `index-select
/// invalid index` and a backtrace naming neither the file nor the example. The file is refused where it is read.
#[test]
fn eval_file_ids_outside_gpt2s_vocabulary_are_refused_naming_the_example() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(256);
    let ckpt = dir.path().join("ckpt");
    std::fs::create_dir_all(&ckpt).unwrap();
    tokenmill::model::save_model_weights(&*model, &ckpt.join("model.safetensors")).unwrap();
    for bad in [50_300u32, 60_000] {
        let mut examples = real_examples(3, dir.path());
        examples[1].endings[2][0] = bad;
        let path = dir.path().join(format!("bad-{bad}.bin"));
        hellaswag_file::write(&path, &examples).unwrap();
        let err = HellaswagFile::open(&path).unwrap_err().to_string();
        assert!(
            err.contains(&format!("is {bad}, outside GPT-2's 50257 token ids")) && err.contains("example 1"),
            "{err}"
        );
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokenmill"))
            .args(["eval", "hellaswag", "--device", "cpu", "--model"])
            .arg(&ckpt)
            .arg("--data")
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        assert!(stderr.contains(path.to_str().unwrap()) && stderr.contains("example 1"), "{stderr}");
        assert!(!stderr.contains("index-select") && !stderr.contains("backtrace"), "{stderr}");
    }
}
