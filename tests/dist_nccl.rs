//! The device-buffer collectives as the trainer uses them, on a one-rank job joined through `dist::init`: the tcp
//! backend on CPU (always, in CI) and NCCL on CUDA (when the binary has the `cuda` feature and a GPU is present;
//! scripts/gpu-kernel-check.sh runs it there). What is checked is what `DataParallel::reduce_grads` does: gradients
//! and the step's loss concatenated into one flat buffer, all-reduced, and read back through views (narrow +
//! reshape) — including the loss scalar read on the host.

#[path = "common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use common::cuda_device;
use tokenmill::train::dist::rendezvous::free_local_port;
use tokenmill::train::dist::{init, Communicator, DataParallel, DistEnv, DistTimeouts, EnvSource, ReduceOp};
use tokenmill::train::step::Reducer;
use tokenmill::train::{TrainConfig, Trainer, TrainerOptions};

fn one_rank_job(device: &Device) -> std::sync::Arc<dyn Communicator> {
    let env = DistEnv {
        rank: 0,
        local_rank: 0,
        world: 1,
        master_addr: "127.0.0.1".into(),
        master_port: free_local_port().unwrap(),
        source: EnvSource::Torchrun,
    };
    let t = Duration::from_secs(60);
    init(&env, device, DistTimeouts { rendezvous: t, collective: t }).unwrap()
}

fn check_on(device: &Device) {
    let comm = one_rank_job(device);

    // The raw collective: values computed on the device, a scalar appended, every element read back.
    let a = (Tensor::arange(0f32, 5., device).unwrap() * 0.5).unwrap(); // [0, 0.5, 1, 1.5, 2]
    let loss = (Tensor::new(3.25f32, device).unwrap() * 2.0).unwrap(); // 6.5, a computed scalar
    let flat = Tensor::cat(&[a.clone(), loss.reshape(1).unwrap()], 0).unwrap();
    let out = comm.all_reduce_tensor(&flat, ReduceOp::Avg).unwrap();
    assert_eq!(out.to_vec1::<f32>().unwrap(), vec![0.0, 0.5, 1.0, 1.5, 2.0, 6.5], "{}", comm.backend());
    let tail = out.narrow(0, 5, 1).unwrap().reshape(()).unwrap();
    assert_eq!(tail.to_scalar::<f32>().unwrap(), 6.5, "scalar view at an offset ({})", comm.backend());
    assert_eq!((tail * 1.0).unwrap().to_scalar::<f32>().unwrap(), 6.5, "{}", comm.backend());

    // Odd and large lengths: every element comes back, the last one included.
    for n in [7usize, 1_000_000, 1_000_001, 3_323_649] {
        let x = (Tensor::arange(0u32, n as u32, device).unwrap().to_dtype(DType::F32).unwrap() * 0.25).unwrap();
        let y = comm.all_reduce_tensor(&x, ReduceOp::Avg).unwrap();
        let last = y.narrow(0, n - 1, 1).unwrap().reshape(()).unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(last, (n - 1) as f32 * 0.25, "last of {n} ({})", comm.backend());
        let diff = (y - &x).unwrap().abs().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff, 0.0, "all of {n} ({})", comm.backend());
        let b = comm.broadcast_tensor(&x, 0).unwrap();
        assert_eq!(b.narrow(0, n - 1, 1).unwrap().reshape(()).unwrap().to_scalar::<f32>().unwrap(), last);
    }

    // Through the trainer's reducer: bf16 and f32 gradients, a computed loss; one bucket and several.
    for bucket in [usize::MAX, 3] {
        let reducer = DataParallel::new(comm.clone()).with_bucket_elems(bucket);
        let g1 = Tensor::new(&[[1f32, 2.], [3., 4.]], device).unwrap();
        let g2 = Tensor::new(&[0.25f32, -1.5, 8.], device).unwrap().to_dtype(DType::BF16).unwrap();
        let mut grads = vec![Some(g1.clone()), None, Some(g2.clone())];
        let mut loss = (Tensor::new(&[2f32, 4.], device).unwrap().mean_all().unwrap() / 2.0).unwrap(); // 1.5
        reducer.reduce_grads(&mut loss, &mut grads).unwrap();
        assert_eq!(
            loss.to_scalar::<f32>().unwrap(),
            1.5,
            "loss after reduce_grads, bucket {bucket} ({})",
            comm.backend()
        );
        assert_eq!(grads[0].as_ref().unwrap().to_vec2::<f32>().unwrap(), g1.to_vec2::<f32>().unwrap());
        assert!(grads[1].is_none());
        let g2r = grads[2].as_ref().unwrap();
        assert_eq!(g2r.dtype(), DType::BF16);
        assert_eq!(
            g2r.to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap(),
            g2.to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap()
        );
    }
    comm.shutdown().unwrap();
}

fn shards() -> &'static Path {
    common::tiny_shakespeare_shards()
}

/// A few optimizer steps of the tiny config on `device`, alone and as the one rank of a job: the logged losses and
/// the weights must agree exactly (averaging over one rank is the identity).
fn trainer_on(device: &Device, dev: &str) {
    let log = tempfile::tempdir().unwrap();
    let cfg = |name: &str| {
        let o: Vec<String> = vec![
            format!("data.dir={:?}", shards().display().to_string()),
            format!("run.log_dir={:?}", log.path().join(name).display().to_string()),
            format!("run.device={dev:?}"),
            "data.micro_batch=4".into(),
            "data.seq_len=32".into(),
            "data.total_batch_tokens=256".into(),
            "eval.val_every=0".into(),
            "eval.sample_every=0".into(),
            "checkpoint.every=0".into(),
        ];
        TrainConfig::resolve(Some(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs/tiny-cpu.toml")), &o)
            .unwrap()
    };
    let mut alone = Trainer::new(cfg("alone"), TrainerOptions::default()).unwrap();
    let comm = one_rank_job(device);
    let reducer = Box::new(DataParallel::new(comm.clone()));
    let mut ranked = Trainer::new(cfg("ranked"), TrainerOptions { reducer, ..Default::default() }).unwrap();
    for step in 0..3 {
        let (a, r) = (alone.train_step().unwrap(), ranked.train_step().unwrap());
        assert!(a.loss > 1.0, "step {step}: loss {}", a.loss);
        assert_eq!(a.loss, r.loss, "step {step} on {dev}: one-rank job vs alone");
        assert_eq!(a.grad_norm, r.grad_norm, "step {step} on {dev}");
    }
    comm.shutdown().unwrap();
}

#[test]
fn one_rank_collectives_read_back_exactly_on_cpu() {
    check_on(&Device::Cpu);
}

#[test]
fn one_rank_collectives_read_back_exactly_on_cuda() {
    if let Some(d) = cuda_device() {
        check_on(&d);
    }
}

#[test]
fn one_rank_job_trains_like_one_process_on_cpu() {
    trainer_on(&Device::Cpu, "cpu");
}

#[test]
fn one_rank_job_trains_like_one_process_on_cuda() {
    if let Some(d) = cuda_device() {
        trainer_on(&d, "cuda:0");
    }
}
