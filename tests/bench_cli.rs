//! `tokenmill bench` as a user runs it, on CPU with the tiny model: the table, JSON and CSV agree and hold sane
//! numbers (every case present, positive times, min <= median <= max, tokens/s = tokens / median time, TFLOP/s =
//! FLOPs / median time, MFU = TFLOP/s / peak), the sweep produces its grid, bad input fails before running,
//! `bench compare` drives a reference script with tokenmill's settings and prints the ratio, and the Python
//! reference accepts every flag `compare` passes it. The FLOP formula is checked against a hand count.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::Device;
use serde_json::Value;
use tokenmill::bench::compare::reference_args;
use tokenmill::bench::flops::{flops_per_iteration, matmul_params, total_params, train_flops_per_token};
use tokenmill::bench::report::CSV_COLUMNS;
use tokenmill::bench::runner::{BenchModel, Plan};
use tokenmill::bench::Computation;
use tokenmill::model::{build_model, ModelConfig, Precision};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tokenmill(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tokenmill")).args(args).current_dir(repo()).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn rel_close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * b.abs().max(1e-300)
}

/// The tiny preset at T = 16: N by hand from GPT-2's parameter list.
#[test]
fn flop_formula_matches_a_hand_count() {
    let cfg = ModelConfig::preset("tiny").unwrap();
    let (v, c, l, block) = (50304usize, 64usize, 2usize, 64usize);
    // Per block: ln_1 + ln_2 (4C), c_attn (3C^2 + 3C), attn c_proj (C^2 + C), c_fc (4C^2 + 4C), mlp c_proj (4C^2 + C).
    let per_block = 4 * c + (3 * c * c + 3 * c) + (c * c + c) + (4 * c * c + 4 * c) + (4 * c * c + c);
    let total = v * c + block * c + l * per_block + 2 * c; // wte + wpe + blocks + ln_f
    assert_eq!(total, 3_323_648);
    assert_eq!(total_params(&cfg), total);
    let model = build_model(&cfg, Precision::FP32, &Device::Cpu, 1).unwrap();
    assert_eq!(model.num_parameters(), total, "the FLOP count's N must be the model's own parameter count");
    let n = total - block * c; // the position table is a lookup, not a matmul
    assert_eq!(matmul_params(&cfg), n);
    // 6 N + 12 L T C at T = 16.
    let per_token = 6 * n + 12 * l * 16 * c;
    assert_eq!(train_flops_per_token(&cfg, 16), per_token as f64);
    assert_eq!(per_token, 19_941_888);
    let tokens = 2 * 16;
    assert_eq!(flops_per_iteration(Computation::TrainStep, &cfg, 16, tokens), Some((per_token * tokens) as f64));
    assert_eq!(flops_per_iteration(Computation::Forward, &cfg, 16, tokens), Some((per_token * tokens) as f64 / 3.0));
}

/// Checks one JSON case's figures against each other and the peak.
fn check_case(case: &Value, peak_tflops: f64, steps: usize) {
    let name = format!("{} {} {}", case["model"], case["what"], case["dtype"]);
    assert!(case["error"].is_null(), "{name}: {}", case["error"]);
    let samples: Vec<f64> = case["samples_ms"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert_eq!(samples.len(), steps, "{name}");
    assert!(samples.iter().all(|&s| s > 0.0 && s < 600_000.0), "{name}: {samples:?}");
    let t = &case["time_ms"];
    let f = |k: &str| t[k].as_f64().unwrap();
    assert_eq!(t["n"].as_u64().unwrap() as usize, steps);
    assert!(f("min") <= f("median") && f("median") <= f("max"), "{name}: {t}");
    assert!(f("min") <= f("mean") && f("mean") <= f("max"), "{name}: {t}");
    assert!(f("std") >= 0.0);
    assert!(rel_close(f("total"), samples.iter().sum(), 1e-9), "{name}");
    assert!(rel_close(f("min"), samples.iter().cloned().fold(f64::MAX, f64::min), 1e-12));
    let median_s = f("median") / 1e3;
    match case["tokens_per_iter"].as_u64() {
        Some(tokens) => {
            let tps = case["tokens_per_s"].as_f64().unwrap();
            assert!(rel_close(tps, tokens as f64 / median_s, 1e-9), "{name}: {tps} tok/s");
            let flops = case["flops_per_iter"].as_f64().unwrap();
            let tflops = case["tflops"].as_f64().unwrap();
            assert!(rel_close(tflops, flops / median_s / 1e12, 1e-9), "{name}");
            assert!(rel_close(case["mfu"].as_f64().unwrap(), tflops / peak_tflops, 1e-9), "{name}");
            let loss = case["loss"].as_f64().unwrap();
            assert!((loss - 50257f64.ln()).abs() < 1.0, "{name}: loss {loss} on uniform random tokens");
        }
        None => {
            assert_eq!(case["what"], "optimizer_step");
            assert!(case["tokens_per_s"].is_null() && case["tflops"].is_null() && case["mfu"].is_null());
        }
    }
    assert!(case["peak_memory_bytes"].as_u64().unwrap() > 0, "{name}");
}

#[test]
fn cpu_bench_writes_consistent_table_json_and_csv() {
    let tmp = tempfile::tempdir().unwrap();
    let (json_path, csv_path) = (tmp.path().join("bench.json"), tmp.path().join("bench.csv"));
    let args = [
        "bench",
        "--model",
        "tiny",
        "--device",
        "cpu",
        "--batch",
        "1",
        "--seq-len",
        "16",
        "--warmup",
        "1",
        "--steps",
        "3",
        "--peak-size",
        "128",
        "--json",
        json_path.to_str().unwrap(),
        "--csv",
        csv_path.to_str().unwrap(),
    ];
    let (ok, stdout, stderr) = tokenmill(&args);
    assert!(ok, "{stderr}");

    let report = read_json(&json_path);
    let peak = report["peak"]["tflops"].as_f64().unwrap();
    assert!(peak > 0.0 && report["peak"]["n"] == 128 && report["peak"]["dtype"] == "fp32");
    assert_eq!(report["host"]["device"], "cpu");
    let cases = report["cases"].as_array().unwrap();
    let whats: Vec<&str> = cases.iter().map(|c| c["what"].as_str().unwrap()).collect();
    assert_eq!(whats, ["forward", "backward", "forward_backward", "optimizer_step", "train_step"]);
    for c in cases {
        assert_eq!(
            (c["batch"].as_u64(), c["seq_len"].as_u64(), c["dtype"].as_str()),
            (Some(1), Some(16), Some("fp32"))
        );
        // A preset's default total batch is two micro-batches.
        assert_eq!((c["total_batch"].as_u64(), c["grad_accum"].as_u64()), (Some(32), Some(2)));
        check_case(c, peak, 3);
    }
    let train = &cases[4];
    assert_eq!(train["tokens_per_iter"], 32);
    assert_eq!(train["flops_per_iter"].as_f64().unwrap(), 19_941_888.0 * 32.0);

    // The table: the header, then one row per case in order, with the JSON's median.
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.starts_with('#')).collect();
    assert!(lines[0].starts_with("model") && lines[0].contains("median ms") && lines[0].contains("MFU"), "{stdout}");
    assert_eq!(lines.len(), 1 + cases.len(), "{stdout}");
    for (line, case) in lines[1..].iter().zip(cases) {
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!((cells[0], cells[1]), ("tiny", case["what"].as_str().unwrap()), "{line}");
        let median: f64 = cells[8].parse().unwrap();
        assert!(rel_close(median, case["time_ms"]["median"].as_f64().unwrap(), 1e-3), "{line}");
    }
    assert!(stdout.contains("# peak (measured):") && stdout.contains("6*N + 12*L*T*C"), "{stdout}");

    // The CSV: the documented columns, one row per case, the JSON's numbers at full precision.
    let text = std::fs::read_to_string(&csv_path).unwrap();
    let mut rows = text.lines().map(|l| l.split(',').collect::<Vec<_>>());
    let header = rows.next().unwrap();
    assert_eq!(header, CSV_COLUMNS.to_vec());
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let rows: Vec<Vec<&str>> = rows.collect();
    assert_eq!(rows.len(), cases.len());
    for (row, case) in rows.iter().zip(cases) {
        assert_eq!(row.len(), CSV_COLUMNS.len());
        assert_eq!(row[col("what")], case["what"].as_str().unwrap());
        let median: f64 = row[col("median_ms")].parse().unwrap();
        // (serde_json's default float parsing may be 1 ulp off the shortest round-trip text both sides print.)
        assert!(rel_close(median, case["time_ms"]["median"].as_f64().unwrap(), 1e-14));
        match case["tokens_per_s"].as_f64() {
            Some(tps) => assert!(rel_close(row[col("tokens_per_s")].parse::<f64>().unwrap(), tps, 1e-14)),
            None => assert_eq!(row[col("tokens_per_s")], ""),
        }
        assert_eq!(row[col("error")], "");
        assert!(row[col("peak_memory_bytes")].parse::<u64>().unwrap() > 0);
    }
}

#[test]
fn sweep_runs_the_grid_and_json_can_go_to_stdout() {
    // Computations and the warm-up axis given; the sweep fills dtype (fp32, bf16) and the model (tiny on CPU).
    let args = [
        "bench",
        "--sweep",
        "--device",
        "cpu",
        "--batch",
        "1",
        "--seq-len",
        "8",
        "--steps",
        "1",
        "--warmup",
        "0,1",
        "--what",
        "forward,optimizer_step",
        "--peak-size",
        "64",
        "--json",
        "-",
    ];
    let (ok, stdout, stderr) = tokenmill(&args);
    assert!(ok, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("stdout is exactly the JSON report");
    let cases = report["cases"].as_array().unwrap();
    let mut got: Vec<(String, String, u64)> = cases
        .iter()
        .map(|c| {
            (c["what"].as_str().unwrap().into(), c["dtype"].as_str().unwrap().into(), c["warmup"].as_u64().unwrap())
        })
        .collect();
    got.sort();
    let mut want = Vec::new();
    for what in ["forward", "optimizer_step"] {
        for dtype in ["bf16", "fp32"] {
            for warmup in [0, 1] {
                want.push((what.to_string(), dtype.to_string(), warmup));
            }
        }
    }
    assert_eq!(got, want);
    for c in cases {
        assert_eq!(c["model"], "tiny");
        check_case(c, report["peak"]["tflops"].as_f64().unwrap(), 1);
    }
    // The table went to stderr, after the progress lines.
    assert!(stderr.contains("median ms") && stderr.contains("8 cases"), "{stderr}");
}

#[test]
fn config_files_and_bad_input() {
    // A config file brings its own B, T and total batch (tiny-cpu.toml: 4 x 64, 512 tokens = 2 micro-steps).
    let src = BenchModel::file(&repo().join("configs/tiny-cpu.toml")).unwrap();
    let plan = Plan {
        models: vec![src],
        seq_lens: vec![],
        batches: vec![],
        total_batch: None,
        dtypes: vec![],
        warmups: vec![0],
        steps: 1,
        what: vec![Computation::TrainStep],
        seed: 1,
        engine: None,
    };
    let cases = plan.cases(&Device::Cpu).unwrap();
    assert_eq!(cases.len(), 1);
    let c = &cases[0];
    assert_eq!(
        (c.label.as_str(), c.batch(), c.seq_len(), c.total_batch(), c.grad_accum()),
        ("tiny-cpu", 4, 64, 512, 2)
    );

    for (args, needle) in [
        (vec!["bench", "--model", "gpt5", "--device", "cpu"], "gpt5"),
        (vec!["bench", "--model", "tiny", "--device", "cpu", "--what", "fowrard"], "fowrard"),
        (vec!["bench", "--model", "tiny", "--device", "cpu", "--seq-len", "128"], "block_size 64"),
        (
            vec![
                "bench",
                "--model",
                "tiny",
                "--device",
                "cpu",
                "--batch",
                "3",
                "--seq-len",
                "16",
                "--total-batch",
                "50",
            ],
            "total_batch_tokens 50",
        ),
        (vec!["bench", "--model", "tiny", "--device", "cpu", "--dtype", "fp8"], "fp8"),
        (vec!["bench", "--model", "tiny", "--device", "cpu", "--steps", "0"], "--steps"),
        (vec!["bench", "--config", "configs/no-such.toml", "--device", "cpu"], "no-such.toml"),
    ] {
        let (ok, _, stderr) = tokenmill(&args);
        assert!(!ok, "{args:?} should fail");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("measuring peak"), "{args:?} must fail before running anything: {stderr}");
    }
}

/// A stand-in reference: prints noise, then a JSON line that echoes the arguments it got.
const STUB_REFERENCE: &str = r#"echo "stub reference running" >&2
echo "not json"
printf '{"impl": "stub", "tokens_per_s": 1000.0, "ms_per_step_median": 32.0, "peak_memory_bytes": 4096, "argv": "%s"}\n' "$*"
"#;

#[test]
fn compare_runs_the_reference_with_the_same_settings_and_prints_the_ratio() {
    let tmp = tempfile::tempdir().unwrap();
    let stub = tmp.path().join("ref.sh");
    std::fs::write(&stub, STUB_REFERENCE).unwrap();
    let json_path = tmp.path().join("compare.json");
    let args = [
        "bench",
        "compare",
        "--model",
        "tiny",
        "--device",
        "cpu",
        "--batch",
        "1",
        "--seq-len",
        "16",
        "--total-batch",
        "48",
        "--warmup",
        "1",
        "--steps",
        "2",
        "--python",
        "sh",
        "--reference",
        stub.to_str().unwrap(),
        "--reference-arg=--no-tf32",
        "--json",
        json_path.to_str().unwrap(),
    ];
    let (ok, stdout, stderr) = tokenmill(&args);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("stub reference running"), "the reference's stderr is passed through: {stderr}");
    let c = read_json(&json_path);
    let argv = c["reference"]["raw"]["argv"].as_str().unwrap().to_string();
    for expected in [
        "--n-layer 2",
        "--n-head 2",
        "--n-embd 64",
        "--block-size 64",
        "--vocab-size 50304",
        "--batch 1",
        "--seq-len 16",
        "--total-batch 48",
        "--steps 2",
        "--warmup 1",
        "--dtype fp32",
        "--device cpu",
        "--seed 1337",
        "--no-compile",
        "--no-tf32",
    ] {
        assert!(argv.contains(expected), "`{expected}` missing from the reference's arguments: {argv}");
    }
    let ours = &c["tokenmill"];
    assert_eq!((ours["what"].as_str(), ours["grad_accum"].as_u64()), (Some("train_step"), Some(3)));
    let tps = ours["tokens_per_s"].as_f64().unwrap();
    assert!(rel_close(tps, 48.0 / (ours["time_ms"]["median"].as_f64().unwrap() / 1e3), 1e-9));
    assert!(rel_close(c["ratio"].as_f64().unwrap(), tps / 1000.0, 1e-12));
    assert!(stdout.contains("reference (stub)") && stdout.contains("ratio (tokenmill / reference tok/s)"), "{stdout}");

    // A reference that fails is an error naming its command.
    let bad = tmp.path().join("bad.sh");
    std::fs::write(&bad, "echo broken >&2; exit 3\n").unwrap();
    let (ok, _, stderr) = tokenmill(&[
        "bench",
        "compare",
        "--model",
        "tiny",
        "--device",
        "cpu",
        "--batch",
        "1",
        "--seq-len",
        "8",
        "--warmup",
        "0",
        "--steps",
        "1",
        "--python",
        "sh",
        "--reference",
        bad.to_str().unwrap(),
    ]);
    assert!(!ok && stderr.contains("bad.sh") && stderr.contains("exit"), "{stderr}");
}

/// The bf16 train_step case `bench compare` would run for preset `model` (on the CPU device: only its flags matter).
fn bf16_train_step_case(model: &str) -> tokenmill::bench::CaseSpec {
    Plan {
        models: vec![BenchModel::preset(model).unwrap()],
        seq_lens: vec![],
        batches: vec![],
        total_batch: None,
        dtypes: vec!["bf16".into()],
        warmups: vec![3],
        steps: 10,
        what: vec![Computation::TrainStep],
        seed: 1,
        engine: None,
    }
    .cases(&Device::Cpu)
    .unwrap()
    .remove(0)
}

#[test]
fn reference_script_defines_every_flag_compare_passes() {
    let script_path = repo().join("reference/train_gpt2_ref.py");
    let script = std::fs::read_to_string(&script_path).unwrap();
    let spec = bf16_train_step_case("small");
    let mut flags: Vec<String> = reference_args(&spec, &Device::Cpu, true);
    flags.extend(reference_args(&spec, &Device::Cpu, false));
    for flag in flags.iter().filter(|a| a.starts_with("--")) {
        assert!(script.contains(&format!("add_argument(\"{flag}\"")), "train_gpt2_ref.py does not define {flag}");
    }
    // Where Python is installed, the script must at least compile and reject a bad batch shape without torch.
    if Command::new("python3").arg("--version").output().is_ok_and(|o| o.status.success()) {
        let out = Command::new("python3")
            .args([
                script_path.to_str().unwrap(),
                "--model",
                "tiny",
                "--batch",
                "4",
                "--seq-len",
                "64",
                "--total-batch",
                "100",
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "argparse error exit");
        assert!(String::from_utf8_lossy(&out.stderr).contains("not divisible"));
    }
}

/// The Llama reference takes every flag `bench compare` passes for a Llama preset (GQA, MLP width, rotary base,
/// untied head), and, where Python is installed, parses them without torch into tokenmill's shape.
#[test]
fn llama_reference_script_defines_every_flag_compare_passes() {
    let script_path = repo().join("reference/train_llama_ref.py");
    let script = std::fs::read_to_string(&script_path).unwrap();
    let spec = bf16_train_step_case("llama-1b");
    let mut flags: Vec<String> = reference_args(&spec, &Device::Cpu, true);
    flags.extend(reference_args(&spec, &Device::Cpu, false));
    flags.push("--untied".into());
    for flag in flags.iter().filter(|a| a.starts_with("--")) {
        assert!(script.contains(&format!("add_argument(\"{flag}\"")), "train_llama_ref.py does not define {flag}");
    }
    if Command::new("python3").arg("--version").output().is_ok_and(|o| o.status.success()) {
        let args = reference_args(&spec, &Device::Cpu, false);
        let probe = "import sys; sys.path.insert(0, 'reference'); import train_llama_ref as r; \
                     print(r.model_dims(r.parse_args(sys.argv[1:])))";
        let out = Command::new("python3").current_dir(repo()).arg("-c").arg(probe).args(&args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        for want in ["'n_kv_head': 8", "'ffn_hidden': 8192", "'rope_theta': 500000.0", "'tied': True", "'n_layer': 16"]
        {
            assert!(text.contains(want), "{want} not in {text}");
        }
    }
}

/// Issue 20: `bench --peak-size 200000` aborted allocating 160 GB, with a backtrace. Refused up front, in one line.
#[test]
fn a_peak_size_past_the_memory_is_refused_in_one_line() {
    let (ok, _, err) = tokenmill(&["bench", "--device", "cpu", "--peak-size", "200000"]);
    assert!(!ok && err.contains("--peak-size 200000") && err.contains("GiB"), "{err}");
    assert!(err.trim().lines().count() == 1 && !err.contains("panicked") && !err.contains("backtrace"), "{err}");
}

#[test]
fn gemm_tune_refuses_what_it_cannot_time_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("gemm.toml");
    let out_s = out.to_str().unwrap();
    let (ok, _, err) = tokenmill(&["bench", "gemm-tune", "--device", "cpu", "--out", out_s]);
    let why = if cfg!(feature = "cuda") { "--device cuda" } else { "`cuda` build" };
    assert!(!ok && err.contains("gemm-tune") && err.contains(why), "{err}");
    let (ok, _, err) = tokenmill(&["bench", "gemm-tune", "--device", "cpu", "--reps", "0", "--out", out_s]);
    assert!(!ok && err.contains("--reps"), "{err}");
    assert!(!out.exists(), "a refused tuning wrote {out:?}");
}

/// Issue 26, data loss 3: `bench --json FILE` / `--csv FILE` replaced any existing file, a run's `log.txt` included
/// (`report --out` refused this; bench did not). Every output follows one rule: a file is replaced only when it is
/// the same kind of output tokenmill wrote. The refusal comes before anything runs.
#[test]
fn bench_outputs_replace_only_a_bench_output() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log.txt");
    std::fs::write(&log, "0 train 10.9\n").unwrap();
    let bench = |flag: &str, path: &Path| {
        tokenmill(&[
            "bench",
            "--model",
            "tiny",
            "--device",
            "cpu",
            "--batch",
            "1",
            "--seq-len",
            "16",
            "--warmup",
            "0",
            "--steps",
            "1",
            "--what",
            "forward",
            "--peak-size",
            "64",
            flag,
            path.to_str().unwrap(),
        ])
    };
    for flag in ["--json", "--csv"] {
        let (ok, _, stderr) = bench(flag, &log);
        assert!(!ok && stderr.contains("is not a bench") && stderr.contains("log.txt"), "{stderr}");
        assert!(!stderr.contains("cases\n"), "refused before running: {stderr}");
    }
    assert_eq!(std::fs::read(&log).unwrap(), b"0 train 10.9\n");
    // Its own outputs are replaced, run after run; a JSON file that is not a bench result is not.
    let (json, csv) = (tmp.path().join("b.json"), tmp.path().join("b.csv"));
    for _ in 0..2 {
        for (flag, path) in [("--json", &json), ("--csv", &csv)] {
            let (ok, _, stderr) = bench(flag, path);
            assert!(ok, "{stderr}");
        }
    }
    std::fs::write(&json, "{\"my\": \"data\"}").unwrap();
    let (ok, _, stderr) = bench("--json", &json);
    assert!(!ok && stderr.contains("is not a bench result"), "{stderr}");
}

/// Issue 26, resources: `bench --batch 1000000000` aborted with `memory allocation of N bytes failed`, a backtrace and
/// SIGABRT. What a case needs is estimated first; one that cannot fit is refused (a failed row), with the numbers.
#[test]
fn a_bench_case_too_big_for_memory_is_refused_with_the_numbers() {
    let (ok, stdout, stderr) = tokenmill(&[
        "bench",
        "--model",
        "tiny",
        "--device",
        "cpu",
        "--batch",
        "1000000000",
        "--seq-len",
        "64",
        "--warmup",
        "0",
        "--steps",
        "1",
        "--what",
        "forward",
        "--peak-size",
        "64",
    ]);
    let all = format!("{stdout}{stderr}");
    assert!(!ok && all.contains("GiB") && all.contains("nothing was allocated"), "{all}");
    assert!(!all.contains("memory allocation of") && !all.contains("panicked"), "{all}");
}
