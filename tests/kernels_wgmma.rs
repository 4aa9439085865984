//! Hopper's warpgroup tensor-core product (`wgmma`, src/cuda/wgmma.cuh) on the device, through the check kernels of
//! src/cuda/wgmma_check.cu and their launcher `tokenmill::cuda::wgmma_check`: C = A B in bf16 -> f32 for every
//! variant (A and B from shared memory K- or MN-major, A from registers; N = 64, 128, 256) in both swizzle modes, on
//! one tile and on ragged shapes with several k tiles, compared element by element with a CPU reference in f64. The
//! kernel lab runs the same kernels under emulation against the same kind of reference (dev/cuda/check_wgmma.cpp,
//! `dev/cuda/run.sh wgmma`); this test is what shows the emulation's semantics are the hardware's. Then the wrong
//! B descriptors the lab also tries (SBO 1024 -> 0, LBO 128 -> 0, and the swizzle mode flipped where B is K-major)
//! must give wrong products, so a descriptor field the hardware ignores would show.
//!
//! Then Hopper's asynchronous pipeline (src/cuda/pipeline_check.cu: mbarriers, bulk copies, named barriers, dynamic
//! shared memory), every tile's sum bit for bit against the CPU in the kernel's order and the consumers' turns in order.
//!
//! Then the Hopper attention backward (`tokenmill::cuda::flash_bwd_sm90`, wgmma: dQ with D, then dK/dV) in every
//! launch variant against the mma.sync kernels (`cuda::flash_attn`) on the same inputs and forward: dq, dk and dv
//! within the tensor-core-vs-tensor-core tolerance of tests/kernels_cudnn_attention.rs (2% of the largest entry + 1/32
//! relative), every element written, a second run bitwise equal; multi-head with partial tiles, GPT-2's T = 1024,
//! and grouped-query.
//!
//! The kernels are compiled for sm_90a: on a GPU that is not compute capability 9.0 (and without the `cuda` feature
//! or a CUDA device) the tests print "SKIPPED" with the reason and pass, and the PTX is never loaded. On the GPU
//! machine they run from the GPU test binary (scripts/gpu-kernel-check.sh; module `kernels_wgmma`).

#[path = "common/mod.rs"]
mod common;

#[cfg(not(feature = "cuda"))]
#[test]
fn wgmma_check_not_built() {
    eprintln!("SKIPPED kernels_wgmma: built without the `cuda` feature");
}

#[cfg(feature = "cuda")]
mod device {
    use std::sync::Arc;

    use candle_core::cuda_backend::cudarc::driver::CudaStream;
    use half::bf16;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use tokenmill::cuda::devptr::DevPtr;
    use tokenmill::cuda::flash_attn::{AttnBwd, FlashAttn, Heads};
    use tokenmill::cuda::flash_bwd_sm90::{FlashBwdSm90, Sm90Variant};
    use tokenmill::cuda::wgmma_check::{GemmShape, Swizzle, Variant, WgmmaCheck};

    use super::common::cuda_device;

    /// The stream and the loaded kernels, or None (after printing why) where the test cannot run here.
    fn setup(test: &str) -> Option<(Arc<CudaStream>, WgmmaCheck)> {
        let dev = cuda_device().or_else(|| {
            eprintln!("SKIPPED {test}: no CUDA device");
            None
        })?;
        let stream = dev.as_cuda_device().unwrap().cuda_stream();
        let cc = stream.context().compute_capability().unwrap();
        if cc != (9, 0) {
            eprintln!("SKIPPED {test}: wgmma needs an sm_90 GPU (H100/H200), this one is sm_{}{}", cc.0, cc.1);
            return None;
        }
        let wg = WgmmaCheck::new(&stream).unwrap();
        Some((stream, wg))
    }

    /// One product on the device: random A and B in [-1, 1) stored by `v`'s majors, C starting as NaN. Returns the
    /// device's C and the f64 reference.
    fn run(
        stream: &Arc<CudaStream>,
        wg: &WgmmaCheck,
        v: Variant,
        swizzle: Swizzle,
        s: GemmShape,
        b_desc_xor: u64,
        seed: u64,
    ) -> (Vec<f32>, Vec<f64>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut rand = |n: usize| -> Vec<bf16> { (0..n).map(|_| bf16::from_f32(rng.gen_range(-1f32..1.))).collect() };
        let (a, b) = (rand(s.m * s.k), rand(s.k * s.n));
        let at = |m: usize, k: usize| if v.a_m_major() { a[k * s.m + m] } else { a[m * s.k + k] }.to_f64();
        let bt = |k: usize, n: usize| if v.b_n_major() { b[k * s.n + n] } else { b[n * s.k + k] }.to_f64();
        let want: Vec<f64> =
            (0..s.m * s.n).map(|i| (0..s.k).map(|k| at(i / s.n, k) * bt(k, i % s.n)).sum::<f64>()).collect();
        let (da, db) = (stream.clone_htod(&a).unwrap(), stream.clone_htod(&b).unwrap());
        let mut dc = stream.clone_htod(&vec![f32::NAN; s.m * s.n]).unwrap();
        {
            let (pa, _a) = DevPtr::of(&da, stream);
            let (pb, _b) = DevPtr::of(&db, stream);
            let (pc, _c) = DevPtr::of_mut(&mut dc, stream);
            // SAFETY: a holds m * k, b k * n bf16 and c m * n f32, allocated above on this stream's device.
            unsafe { wg.gemm(v, swizzle, pa, pb, pc, s, b_desc_xor).unwrap() };
        }
        (stream.clone_dtoh(&dc).unwrap(), want)
    }

    /// How many elements exceed abs + rel |want| (NaN, an element never written, exceeds everything), and the worst.
    fn count_bad(got: &[f32], want: &[f64], abs: f64, rel: f64) -> (usize, f64) {
        let mut worst = 0f64;
        let mut bad = 0;
        for (&g, &w) in got.iter().zip(want) {
            let err = (g as f64 - w).abs();
            if err.is_nan() || err > abs + rel * w.abs() {
                bad += 1;
            }
            if err.is_nan() || err > worst {
                worst = err;
            }
        }
        (bad, worst)
    }

    // f32 accumulation of k <= 512 products of bf16 values in [-1, 1): the hardware's summation order differs from
    // the reference's, a few ulps of sums below ~20. A layout or descriptor error is off by O(1).
    const ABS: f64 = 1e-4;
    const REL: f64 = 1e-4;

    #[test]
    fn cuda_matches_cpu() {
        let Some((stream, wg)) = setup("kernels_wgmma::cuda_matches_cpu") else { return };
        let mut failures = Vec::new();
        for swizzle in [Swizzle::B128, Swizzle::None] {
            for (i, v) in Variant::ALL.into_iter().enumerate() {
                let bn = v.block_n();
                let shapes = [
                    GemmShape { m: 64, n: bn, k: 64 },            // one tile, one k tile
                    GemmShape { m: 136, n: 2 * bn + 40, k: 200 }, // partial tiles in M, N and K
                    GemmShape { m: 256, n: 2 * bn, k: 512 },      // several full tiles, 8 k tiles
                ];
                for (j, s) in shapes.into_iter().enumerate() {
                    let (got, want) = run(&stream, &wg, v, swizzle, s, 0, (i * 10 + j) as u64);
                    let (bad, worst) = count_bad(&got, &want, ABS, REL);
                    let verdict = if bad == 0 { "ok" } else { "FAIL" };
                    println!(
                        "cuda wgmma {verdict} {v:?} swizzle {swizzle:?} M={} N={} K={}: max |diff| {worst:.3e}, {bad} of {} bad",
                        s.m,
                        s.n,
                        s.k,
                        want.len()
                    );
                    if bad > 0 {
                        failures.push(format!("{v:?} {swizzle:?} {s:?}: {bad} bad, max |diff| {worst:.3e}"));
                    }
                }
            }
        }
        assert!(failures.is_empty(), "wgmma products differ from the CPU reference:\n{}", failures.join("\n"));
    }

    #[test]
    fn cuda_wrong_descriptors_give_wrong_products() {
        let Some((stream, wg)) = setup("kernels_wgmma::cuda_wrong_descriptors_give_wrong_products") else { return };
        let mut missed = Vec::new();
        for v in Variant::ALL {
            for swizzle in [Swizzle::B128, Swizzle::None] {
                let mut cases = vec![("SBO 1024 -> 0", (1024u64 >> 4) << 32)];
                // Flipping an N-major B's swizzle mode makes the hardware read past the shared-memory tile: on the
                // H100 (SsMn64, 128B -> none) that is CUDA_ERROR_ILLEGAL_ADDRESS, which poisons the context for
                // every later test (and the process hung on exit). The lab, with no window bounds, reads on; here
                // only the K-major B's flip, which stays inside the tile.
                if !v.b_n_major() {
                    cases.push(("swizzle mode flipped", 1u64 << 62));
                }
                if swizzle == Swizzle::None {
                    cases.push(("LBO 128 -> 0", (128u64 >> 4) << 16));
                }
                for (what, xor) in cases {
                    let s = GemmShape { m: 64, n: v.block_n(), k: 64 };
                    let (got, want) = run(&stream, &wg, v, swizzle, s, xor, 99);
                    let (bad, worst) = count_bad(&got, &want, ABS, REL);
                    let verdict = if bad > 0 { "ok (caught)" } else { "FAIL (NOT caught)" };
                    println!(
                        "cuda wgmma {verdict} {v:?} swizzle {swizzle:?} with {what}: {bad} of {} wrong, max |diff| {worst:.3e}",
                        want.len()
                    );
                    if bad == 0 {
                        missed.push(format!("{v:?} {swizzle:?} {what}"));
                    }
                }
            }
        }
        assert!(
            missed.is_empty(),
            "wrong descriptors gave the right product (a field the hardware ignores?):\n{}",
            missed.join("\n")
        );
    }

    /// The kernel's sum of one tile (pipeline_check.cu): thread t of a consumer sums elements t, t + 128, ... in f32,
    /// then thread 0 adds the 128 partial sums in order.
    fn pipeline_tile_sum(x: &[f32]) -> f32 {
        let part: Vec<f32> = (0..128).map(|t| x.iter().skip(t).step_by(128).fold(0f32, |a, &v| a + v)).collect();
        part.iter().fold(0f32, |a, &v| a + v)
    }

    /// Hopper's asynchronous pipeline (pipeline.cuh through pipeline_check.cu): a producer warpgroup streams tiles by
    /// bulk copies through mbarrier-guarded stages to two consumer warpgroups that take turns on named barriers.
    /// Every tile's sum must equal the CPU's in the kernel's order bit for bit (a stage read before its copy landed,
    /// or overwritten while read, gives another sum) and the turns must come in tile order. A protocol that
    /// deadlocks on the hardware would hang the test binary: the kernel gets 20 s, then the process exits.
    #[test]
    fn cuda_pipeline_matches_cpu() {
        use tokenmill::cuda::pipeline_check::{PipelineCheck, Stages, TILE};
        let Some((stream, _wg)) = setup("kernels_wgmma::cuda_pipeline_matches_cpu") else { return };
        let pc = PipelineCheck::new(&stream).unwrap();
        let mut failures = Vec::new();
        for stages in Stages::ALL {
            for (n_tiles, per_cta) in [(40, 1), (40, 5), (1000, 37), (4096, 256)] {
                let mut rng = ChaCha8Rng::seed_from_u64(n_tiles as u64 + per_cta as u64);
                let x: Vec<f32> = (0..n_tiles * TILE).map(|_| rng.gen_range(-1f32..1.)).collect();
                let dx = stream.clone_htod(&x).unwrap();
                let mut sums = stream.clone_htod(&vec![f32::NAN; n_tiles]).unwrap();
                let mut order = stream.clone_htod(&vec![-1i32; n_tiles]).unwrap();
                {
                    let (px, _a) = DevPtr::of(&dx, &stream);
                    let (ps, _b) = DevPtr::of_mut(&mut sums, &stream);
                    let (po, _c) = DevPtr::of_mut(&mut order, &stream);
                    // SAFETY: x holds n_tiles * TILE f32, sums and order n_tiles each, allocated above.
                    unsafe { pc.ring(stages, px, ps, po, n_tiles, per_cta).unwrap() };
                    let done = stream.record_event(None).unwrap();
                    let start = std::time::Instant::now();
                    while !done.try_is_complete().unwrap() {
                        if start.elapsed() > std::time::Duration::from_secs(20) {
                            println!(
                                "cuda FAIL pipeline {stages:?} {n_tiles} tiles: not finished after 20 s (deadlock)"
                            );
                            std::process::exit(3);
                        }
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                }
                let (sums, order) = (stream.clone_dtoh(&sums).unwrap(), stream.clone_dtoh(&order).unwrap());
                let wrong_sums = (0..n_tiles)
                    .filter(|&i| sums[i].to_bits() != pipeline_tile_sum(&x[i * TILE..(i + 1) * TILE]).to_bits())
                    .count();
                let wrong_order = (0..n_tiles).filter(|&i| order[i] != (i % per_cta) as i32).count();
                let ok = wrong_sums == 0 && wrong_order == 0;
                println!(
                    "cuda {} pipeline {stages:?} stages, {n_tiles} tiles, {per_cta} per block: {wrong_sums} sums differ, {wrong_order} turns out of order",
                    if ok { "ok" } else { "FAIL" }
                );
                if !ok {
                    failures.push(format!("{stages:?} {n_tiles}/{per_cta}"));
                }
            }
        }
        assert!(failures.is_empty(), "pipeline check failed:\n{}", failures.join("\n"));
    }

    /// One attention forward (flash_attn's) and backward on the device: `sm90` None = flash_attn's two kernels, else
    /// the Hopper kernels. Returns dqkv (starting as NaN).
    fn attn_backward(
        stream: &Arc<CudaStream>,
        (b, t, heads): (usize, usize, Heads),
        qkv: &[bf16],
        dy: &[bf16],
        sm90: Option<&FlashBwdSm90>,
    ) -> Vec<bf16> {
        let fa = FlashAttn::new(stream).unwrap();
        let c = heads.q * 64;
        let qkv = stream.clone_htod(qkv).unwrap();
        let dy = stream.clone_htod(dy).unwrap();
        let mut y = stream.clone_htod(&vec![bf16::NAN; b * t * c]).unwrap();
        let mut lse = stream.clone_htod(&vec![f32::NAN; b * heads.q * t]).unwrap();
        let mut scr = stream.clone_htod(&vec![f32::NAN; FlashAttn::scratch_len(b, t, heads.q)]).unwrap();
        let mut dqkv = stream.clone_htod(&vec![bf16::NAN; b * t * (c + 2 * heads.kv * 64)]).unwrap();
        {
            let (q, _a) = DevPtr::of(&qkv, stream);
            let (g, _b) = DevPtr::of(&dy, stream);
            let (yp, _c) = DevPtr::of_mut(&mut y, stream);
            let (lp, _d) = DevPtr::of_mut(&mut lse, stream);
            let (sp, _e) = DevPtr::of_mut(&mut scr, stream);
            let (dp, _f) = DevPtr::of_mut(&mut dqkv, stream);
            let p = AttnBwd { qkv: q, y: yp, dy: g, lse: lp, dvec_scratch: sp, dqkv: dp };
            // SAFETY: every buffer was allocated above at the size the flash_attn API documents for (b, t, heads).
            unsafe {
                fa.forward(p.fwd(), b, t, heads).unwrap();
                match sm90 {
                    None => fa.backward(p, b, t, heads).unwrap(),
                    Some(sm) => sm.backward(p, b, t, heads).unwrap(),
                }
            }
        }
        stream.clone_dtoh(&dqkv).unwrap()
    }

    #[test]
    fn cuda_sm90_backward_matches_flash() {
        let Some((stream, _wg)) = setup("kernels_wgmma::cuda_sm90_backward_matches_flash") else { return };
        let mut failures = Vec::new();
        for (b, t, heads) in [(2, 100, Heads::mha(3)), (4, 1024, Heads::mha(12)), (2, 300, Heads { q: 4, kv: 2 })] {
            let (c, kw) = (heads.q * 64, heads.kv * 64);
            let w = c + 2 * kw;
            let mut rng = ChaCha8Rng::seed_from_u64(t as u64);
            let mut rand =
                |n: usize| -> Vec<bf16> { (0..n).map(|_| bf16::from_f32(rng.gen_range(-1.5f32..1.5))).collect() };
            let (qkv, dy) = (rand(b * t * w), rand(b * t * c));
            let shape = (b, t, heads);
            let want = attn_backward(&stream, shape, &qkv, &dy, None);
            let scale = want.iter().fold(0f64, |m, x| m.max(x.to_f64().abs()));
            for v in Sm90Variant::ALL {
                let sm = FlashBwdSm90::new(&stream, v).unwrap();
                let got = attn_backward(&stream, shape, &qkv, &dy, Some(&sm));
                let again = attn_backward(&stream, shape, &qkv, &dy, Some(&sm));
                let (mut bad, mut worst) = (0usize, 0f64);
                for (g, r) in got.iter().zip(&want) {
                    let (g, r) = (g.to_f64(), r.to_f64());
                    let err = (g - r).abs();
                    if err.is_nan() || err > 0.02 * scale + r.abs() / 32.0 {
                        bad += 1;
                    }
                    if err.is_nan() || err > worst {
                        worst = err;
                    }
                }
                let repeat = got.iter().zip(&again).all(|(x, y)| x.to_bits() == y.to_bits());
                let label = format!("{} B={b} T={t} NH={} KV={}", v.label(), heads.q, heads.kv);
                let ok = bad == 0 && repeat;
                println!(
                    "cuda {} {label}: dqkv max |diff| vs flash {worst:.3e} (max |ref| {scale:.2e}), {bad} bad, second run {}",
                    if ok { "ok" } else { "FAIL" },
                    if repeat { "bitwise equal" } else { "DIFFERS" }
                );
                if !ok {
                    failures.push(label);
                }
            }
        }
        assert!(failures.is_empty(), "sm90 backward differs from flash_attn's:\n{}", failures.join("\n"));
    }
}
