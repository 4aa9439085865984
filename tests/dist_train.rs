//! Data-parallel training on CPU, with N ranks as N threads over the in-process group, on real shards made by
//! `prep` from tiny Shakespeare: N ranks x micro-batch B reach the same parameters as 1 rank x N*B; ranks never read
//! the same tokens; val loss and HellaSwag are split and reduced; only rank 0 logs and checkpoints while every rank
//! resumes; a dead or hung rank fails the others with its name; indivisible batches are a clear error.

#[path = "common/mod.rs"]
mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tokenmill::shards::loader::{DataLoader, LoaderConfig};
use tokenmill::shards::Split;
use tokenmill::train::dist::{Communicator, DataParallel, LocalGroup};
use tokenmill::train::log::Event;
use tokenmill::train::{Resume, RunEnd, TrainConfig, Trainer, TrainerOptions};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn shards() -> &'static Path {
    common::tiny_shakespeare_shards()
}

/// configs/tiny-cpu.toml on the prepped shards, logging under `log`, plus `extra` overrides.
fn config(log: &Path, extra: &[String]) -> TrainConfig {
    let mut o = vec![
        format!("data.dir={:?}", shards().display().to_string()),
        format!("run.log_dir={:?}", log.display().to_string()),
        "data.seq_len=32".to_string(),
        "data.total_batch_tokens=256".to_string(),
        "eval.val_every=0".to_string(),
        "eval.sample_every=0".to_string(),
        "checkpoint.every=0".to_string(),
    ];
    o.extend(extra.iter().cloned());
    TrainConfig::resolve(Some(&repo().join("configs/tiny-cpu.toml")), &o).unwrap()
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn params(t: &Trainer) -> Vec<(String, Vec<f32>)> {
    t.model()
        .parameters()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect()
}

/// Run `f(rank, trainer)` for `world` ranks on threads over one in-process group; `cfg(rank)` gives each rank's
/// config. Returns the results by rank. The ranks leave the group cleanly (`shutdown`) after `f`.
fn on_ranks<R: Send + 'static>(
    world: usize,
    timeout: Duration,
    cfg: impl Fn(usize) -> TrainConfig,
    resume: Resume,
    f: impl Fn(usize, &mut Trainer) -> R + Send + Sync + 'static,
) -> Vec<R> {
    ranks(world, timeout, &cfg, resume, true, f)
}

/// As `on_ranks`, without the final shutdown (the ranks here end abnormally).
fn on_ranks_raw<R: Send + 'static>(
    world: usize,
    timeout: Duration,
    cfg: &dyn Fn(usize) -> TrainConfig,
    f: impl Fn(usize, &mut Trainer) -> R + Send + Sync + 'static,
) -> Vec<R> {
    ranks(world, timeout, cfg, Resume::No, false, f)
}

fn ranks<R: Send + 'static>(
    world: usize,
    timeout: Duration,
    cfg: &dyn Fn(usize) -> TrainConfig,
    resume: Resume,
    shutdown: bool,
    f: impl Fn(usize, &mut Trainer) -> R + Send + Sync + 'static,
) -> Vec<R> {
    let f = Arc::new(f);
    let handles: Vec<_> = LocalGroup::ranks(world, timeout)
        .into_iter()
        .enumerate()
        .map(|(rank, comm)| {
            let (cfg, f, resume) = (cfg(rank), f.clone(), resume.clone());
            thread::spawn(move || {
                let comm: Arc<dyn Communicator> = Arc::new(comm);
                // Small buckets, so gradients cross in several collectives as they do at 124M.
                let reducer = Box::new(DataParallel::new(comm.clone()).with_bucket_elems(50_000));
                let mut t =
                    Trainer::new(cfg, TrainerOptions { resume, echo: false, reducer, ..Default::default() }).unwrap();
                let r = f(rank, &mut t);
                if shutdown {
                    comm.shutdown().unwrap();
                }
                r
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().expect("rank thread panicked")).collect()
}

fn train_losses(history: &[Event]) -> Vec<f32> {
    history.iter().filter_map(|e| if let Event::Train(s) = e { Some(s.loss) } else { None }).collect()
}

#[test]
fn n_ranks_of_b_equal_one_rank_of_n_times_b() {
    let dir = tempfile::tempdir().unwrap();
    const STEPS: usize = 3;
    // 1 rank x B=4: 2 micro-steps of 4 x 32 per step.
    let mut single =
        Trainer::new(config(&dir.path().join("single"), &s(&["data.micro_batch=4"])), TrainerOptions::default())
            .unwrap();
    assert_eq!(single.grad_accum_steps(), 2);
    let single_stats: Vec<_> = (0..STEPS).map(|_| single.train_step().unwrap()).collect();
    let single_params = params(&single);

    // 2 ranks x B=2: also 2 micro-steps per step (256 / (2 * 32 * 2)); gradients averaged once per step.
    let dist = on_ranks(
        2,
        Duration::from_secs(60),
        |rank| config(&dir.path().join(format!("rank{rank}")), &s(&["data.micro_batch=2"])),
        Resume::No,
        |_, t| {
            assert_eq!(t.grad_accum_steps(), 2);
            let stats: Vec<_> = (0..STEPS).map(|_| t.train_step().unwrap()).collect();
            (stats, params(t))
        },
    );
    let (stats0, params0) = &dist[0];
    let (stats1, params1) = &dist[1];
    assert_eq!(params0, params1, "the ranks' parameters must stay bit-identical");
    for ((a, b), c) in stats0.iter().zip(stats1).zip(&single_stats) {
        assert_eq!((a.loss, a.grad_norm), (b.loss, b.grad_norm), "every rank logs the same reduced loss and norm");
        assert!((a.loss - c.loss).abs() < 1e-4, "step {}: loss {} (2 x 2) vs {} (1 x 4)", a.step, a.loss, c.loss);
        assert!((a.grad_norm - c.grad_norm).abs() < 1e-3 * c.grad_norm, "grad norm {} vs {}", a.grad_norm, c.grad_norm);
    }
    let lr = single.config().optim.max_lr as f32;
    for ((name, a), (_, b)) in params0.iter().zip(&single_params) {
        let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(diff < 0.05 * lr, "{name}: weights differ by {diff} after {STEPS} steps (lr {lr})");
    }
    // And training did move the weights: the comparison is not between two untouched initialisations.
    let fresh = Trainer::new(config(&dir.path().join("fresh"), &s(&["data.micro_batch=4"])), TrainerOptions::default())
        .unwrap();
    let moved = params(&fresh).iter().zip(&single_params).any(|((_, a), (_, b))| a != b);
    assert!(moved);
}

#[test]
fn ranks_never_read_the_same_tokens() {
    let (world, b, t) = (3, 2, 32);
    for shuffle_seed in [None, Some(7)] {
        let open = |batch_size, rank, world| {
            DataLoader::open(shards(), Split::Train, LoaderConfig { batch_size, seq_len: t, rank, world, shuffle_seed })
                .unwrap()
        };
        let mut global = open(b * world, 0, 1);
        let mut ranks: Vec<DataLoader> = (0..world).map(|r| open(b, r, world)).collect();
        let steps = ranks[0].batches_per_epoch();
        assert_eq!(steps, global.batches_per_epoch());
        assert!(steps > 1000, "{steps} global batches: the test should cover every shard");
        let mut seen: HashSet<Vec<u32>> = HashSet::new();
        for step in 0..steps {
            let big = global.next_batch().unwrap();
            for (r, loader) in ranks.iter_mut().enumerate() {
                let mine = loader.next_batch().unwrap();
                // Rank r's micro-batch is exactly rows [rB, (r+1)B) of the one-rank batch of N*B.
                assert_eq!(
                    mine.x[..],
                    big.x[r * b * t..(r + 1) * b * t],
                    "step {step} rank {r} (shuffle {shuffle_seed:?})"
                );
                for row in mine.x.chunks(t) {
                    assert!(
                        seen.insert(row.to_vec()),
                        "step {step}: rank {r} re-reads a row (shuffle {shuffle_seed:?})"
                    );
                }
            }
        }
    }
}

#[test]
fn val_loss_and_hellaswag_are_split_and_reduced() {
    let dir = tempfile::tempdir().unwrap();
    let hs = tokenmill::pipelines::hellaswag::prep(&tokenmill::pipelines::hellaswag::PrepConfig {
        pipeline: tokenmill::pipelines::hellaswag::HellaswagPipeline::builtin(),
        input: tokenmill::pipelines::hellaswag::Input::Files {
            paths: vec![repo().join("tests/fixtures/hellaswag_sample.jsonl")],
            format: None,
        },
        out_dir: dir.path().join("hs"),
        limit: None,
        tokenizer: None,
        overwrite: false,
    })
    .unwrap();
    let eval = |mb: &str| {
        s(&[
            mb,
            "eval.val_every=1",
            "eval.val_steps=3",
            "eval.hellaswag_every=1",
            &format!("eval.hellaswag_file={:?}", hs.path.display().to_string()),
        ])
    };
    let mut single =
        Trainer::new(config(&dir.path().join("single"), &eval("data.micro_batch=4")), TrainerOptions::default())
            .unwrap();
    let (val, hella) = (single.val_loss().unwrap(), single.hellaswag().unwrap().unwrap());
    assert_eq!(hella.n, 5);
    let dist = on_ranks(
        2,
        Duration::from_secs(60),
        |rank| config(&dir.path().join(format!("rank{rank}")), &eval("data.micro_batch=2")),
        Resume::No,
        |_, t| (t.val_loss().unwrap(), t.hellaswag().unwrap().unwrap()),
    );
    for (v, h) in &dist {
        assert!((v - val).abs() < 1e-5, "val loss {v} (2 ranks) vs {val} (1 rank)");
        assert_eq!(h, &hella, "HellaSwag counts summed over the ranks' halves");
    }
}

#[test]
fn rank_zero_alone_logs_and_checkpoints_and_every_rank_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    let cfg = |name: &'static str| {
        let (dir, ckpt) = (dir.path().to_path_buf(), ckpt.clone());
        move |rank: usize| {
            let extra = vec![
                "data.micro_batch=2".to_string(),
                "optim.max_steps=4".to_string(),
                "checkpoint.every=2".to_string(),
                format!("checkpoint.dir={:?}", ckpt.join(name).display().to_string()),
            ];
            config(&dir.join(format!("{name}-log{rank}")), &extra)
        }
    };
    // Uninterrupted: 4 steps.
    let straight = on_ranks(2, Duration::from_secs(60), cfg("straight"), Resume::No, |_, t| {
        t.run(None).unwrap();
        (params(t), train_losses(t.history()))
    });
    assert!(dir.path().join("straight-log0/log.txt").is_file());
    assert!(!dir.path().join("straight-log1").exists(), "rank 1 must write no logs");
    let written: Vec<String> = std::fs::read_dir(ckpt.join("straight"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(written.len(), 2, "one checkpoint per due step, written once: {written:?}");

    // Interrupted after 2 steps, then every rank resumes from rank 0's checkpoint.
    on_ranks(2, Duration::from_secs(60), cfg("split"), Resume::No, |_, t| t.run(Some(2)).unwrap());
    let resumed = on_ranks(2, Duration::from_secs(60), cfg("split"), Resume::Latest, |_, t| {
        assert_eq!(t.step(), 2);
        t.run(None).unwrap();
        (params(t), train_losses(t.history()))
    });
    for rank in 0..2 {
        assert_eq!(resumed[rank].0, straight[rank].0, "rank {rank}: resumed weights differ");
        assert_eq!(resumed[rank].1[..], straight[rank].1[2..], "rank {rank}: resumed losses differ");
    }
}

#[test]
fn dead_or_hung_rank_fails_the_others_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = |rank: usize| config(&dir.path().join(format!("r{rank}")), &s(&["data.micro_batch=2"]));
    // Rank 1 dies after one step (its thread ends, dropping its handle); the timeout is long, the failure is not.
    let t0 = Instant::now();
    let out = on_ranks_raw(2, Duration::from_secs(120), &cfg, |rank, t| {
        t.train_step().unwrap();
        if rank == 1 {
            return None;
        }
        Some(t.train_step().unwrap_err().to_string())
    });
    let err = out[0].clone().unwrap();
    assert!(err.contains("lost rank 1"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(60), "{:?}", t0.elapsed());

    // Rank 0 hangs (stops responding); rank 1 fails once the timeout passes, naming it.
    let out = on_ranks_raw(2, Duration::from_secs(1), &cfg, |rank, t| {
        if rank == 0 {
            thread::sleep(Duration::from_secs(3));
            return None;
        }
        Some(t.train_step().unwrap_err().to_string())
    });
    let err = out[1].clone().unwrap();
    assert!(err.contains("timed out after 1s waiting for rank 0"), "{err}");
}

#[test]
fn batch_that_does_not_divide_across_ranks_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let comm = LocalGroup::ranks(3, Duration::from_secs(5)).into_iter().next().unwrap();
    let reducer = Box::new(DataParallel::new(Arc::new(comm)));
    let err =
        Trainer::new(config(dir.path(), &s(&["data.micro_batch=2"])), TrainerOptions { reducer, ..Default::default() })
            .err()
            .expect("256 tokens do not split into micro-batches of 2 x 32 on 3 ranks")
            .to_string();
    assert!(err.contains("total_batch_tokens 256") && err.contains("* 3 = 192"), "{err}");
}

#[test]
fn every_rank_starts_from_rank_zeros_weights() {
    let dir = tempfile::tempdir().unwrap();
    // Rank 1 would initialise differently; DDP-style, rank 0's weights are broadcast at construction.
    let out = on_ranks(
        2,
        Duration::from_secs(60),
        |rank| {
            let seed = format!("run.seed={}", 1000 + rank);
            config(&dir.path().join(format!("r{rank}")), &s(&["data.micro_batch=2", &seed]))
        },
        Resume::No,
        |_, t| params(t),
    );
    assert_eq!(out[0], out[1]);
    let own = Trainer::new(
        config(&dir.path().join("own"), &s(&["data.micro_batch=2", "run.seed=1001"])),
        TrainerOptions::default(),
    )
    .unwrap();
    assert_ne!(params(&own), out[1], "seed 1001 alone gives other weights: the broadcast did something");
}

/// A stop requested on one rank only (a signal that reaches one process first): every rank stops after the same step
/// (they agree once per step), and rank 0 writes the checkpoint although the request was not its own.
#[test]
fn a_stop_on_one_rank_stops_every_rank_after_the_same_step() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    let (d, c) = (dir.path().to_path_buf(), ckpt.clone());
    let cfg = move |rank: usize| {
        let extra = vec![
            "data.micro_batch=2".to_string(),
            "optim.max_steps=50".to_string(),
            format!("checkpoint.dir={:?}", c.display().to_string()),
        ];
        config(&d.join(format!("log{rank}")), &extra)
    };
    let ends = on_ranks(2, Duration::from_secs(60), cfg, Resume::No, |rank, t| {
        if rank == 1 {
            t.stop_request().request(15);
        }
        t.run(None).unwrap()
    });
    let at = tokenmill::train::checkpoint::step_dir(&ckpt, 1);
    assert_eq!(ends[0], RunEnd::Stopped { signal: None, step: 1, checkpoint: Some(at.clone()) });
    assert_eq!(ends[1], RunEnd::Stopped { signal: Some(15), step: 1, checkpoint: None });
    assert_eq!(tokenmill::train::checkpoint::load_state(&at).unwrap().step, 1);
}
