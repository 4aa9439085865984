//! Named parameters: each architecture lists its tensors once (`ParamSpec`: checkpoint name, shape, initialiser),
//! and that one list drives seeded initialisation, loading from a name -> tensor map, and the trait's stable
//! `parameters()` order.
//!
//! Initialisation is build-nanogpt's: N(0, 0.02) for matmul weights and embeddings, std scaled by
//! `(2 * n_layer)^-0.5` for the projections that write into the residual stream, zero biases, norm gains of one.
//! Each tensor draws from its own ChaCha8 stream (`seed`, stream = its index in the list), so a run is bitwise
//! reproducible on CPU and the tensors can be generated in parallel.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::ModelError;

/// How a parameter starts out.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// N(0, std^2).
    Normal(f64),
    Zeros,
    Ones,
}

/// One named parameter of an architecture.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

impl ParamSpec {
    pub fn new(name: impl Into<String>, shape: &[usize], init: Init) -> Self {
        ParamSpec { name: name.into(), shape: shape.to_vec(), init }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// `n` draws from N(0, std^2) (Box-Muller on ChaCha8 stream `stream` of `seed`), as f64.
fn normal_values(n: usize, std: f64, seed: u64, stream: u64) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        // u1 in (0, 1] keeps ln(u1) finite.
        let u1: f64 = 1.0 - rng.gen::<f64>();
        let u2: f64 = rng.gen::<f64>();
        let r = (-2.0 * u1.ln()).sqrt() * std;
        let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
        out.push(r * c);
        out.push(r * s);
    }
    out.truncate(n);
    out
}

/// Fresh parameters for `specs`, in `dtype` on `device`, reproducible from `seed`.
pub fn init_params(
    specs: &[ParamSpec],
    seed: u64,
    dtype: DType,
    device: &Device,
) -> Result<Vec<(String, Var)>, ModelError> {
    // Host-side values first (in parallel: ~1 s for the 124M model on one core), then one upload per tensor.
    let host: Vec<Vec<f64>> = specs
        .par_iter()
        .enumerate()
        .map(|(i, s)| match s.init {
            Init::Normal(std) => normal_values(s.numel(), std, seed, i as u64),
            Init::Zeros => vec![0.0; s.numel()],
            Init::Ones => vec![1.0; s.numel()],
        })
        .collect();
    let mut out = Vec::with_capacity(specs.len());
    for (spec, values) in specs.iter().zip(host) {
        let t = match dtype {
            DType::F64 => Tensor::from_vec(values, spec.shape.as_slice(), device)?,
            _ => {
                let v32: Vec<f32> = values.into_iter().map(|v| v as f32).collect();
                Tensor::from_vec(v32, spec.shape.as_slice(), device)?.to_dtype(dtype)?
            }
        };
        out.push((spec.name.clone(), Var::from_tensor(&t)?));
    }
    Ok(out)
}

/// Parameters for `specs` taken from `tensors` (already renamed and laid out as the specs say), cast to `dtype` and
/// moved to `device`. Every spec must be present with its exact shape, and nothing else may be left over: a
/// checkpoint of another size or architecture is an error naming the file and tensor, never a silent partial load.
pub fn params_from_tensors(
    specs: &[ParamSpec],
    mut tensors: HashMap<String, Tensor>,
    source: &Path,
    arch: &str,
    dtype: DType,
    device: &Device,
) -> Result<Vec<(String, Var)>, ModelError> {
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        let t = tensors
            .remove(&spec.name)
            .ok_or_else(|| ModelError::MissingTensor { path: source.to_path_buf(), name: spec.name.clone() })?;
        if t.dims() != spec.shape.as_slice() {
            return Err(ModelError::Shape {
                path: source.to_path_buf(),
                name: spec.name.clone(),
                expected: spec.shape.clone(),
                got: t.dims().to_vec(),
            });
        }
        // Var::from_tensor copies, so the loaded map (possibly an mmap) is never aliased by a trainable tensor.
        let t = t.to_dtype(dtype)?.to_device(device)?;
        out.push((spec.name.clone(), Var::from_tensor(&t)?));
    }
    if !tensors.is_empty() {
        let mut names: Vec<String> = tensors.into_keys().collect();
        names.sort();
        return Err(ModelError::UnexpectedTensors { path: source.to_path_buf(), arch: arch.to_string(), names });
    }
    Ok(out)
}

/// Looks parameters up by name while an architecture wires its layers.
pub struct ParamTable {
    vars: HashMap<String, Var>,
}

impl ParamTable {
    pub fn new(params: &[(String, Var)]) -> Self {
        ParamTable { vars: params.iter().cloned().collect() }
    }

    /// The parameter `name`; the specs and the wiring come from the same code, so a miss is a programming error.
    pub fn get(&self, name: &str) -> Var {
        self.vars.get(name).unwrap_or_else(|| panic!("parameter `{name}` is not in the model's spec list")).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_values_are_seeded_and_standard() {
        let a = normal_values(100_000, 0.02, 7, 3);
        assert_eq!(a, normal_values(100_000, 0.02, 7, 3));
        assert_ne!(a, normal_values(100_000, 0.02, 7, 4));
        let mean = a.iter().sum::<f64>() / a.len() as f64;
        let var = a.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / a.len() as f64;
        assert!(mean.abs() < 3e-4, "mean {mean}");
        assert!((var.sqrt() - 0.02).abs() < 3e-4, "std {}", var.sqrt());
    }
}
