//! Seeded parameter initialisation on the host, so that a seed gives the same weights on every
//! backend and thread count (the official MAE initialisation: xavier-uniform linears, N(0, 0.02)
//! tokens, LayerNorm ones/zeros).

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Device, Tensor, TensorData};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Host random generator used for initialisation.
pub type InitRng = ChaCha8Rng;

/// A parameter from host values.
pub fn param<const D: usize>(values: Vec<f32>, shape: [usize; D], device: &Device) -> Param<Tensor<D>> {
    Param::from_tensor(Tensor::from_data(TensorData::new(values, shape), device))
}

/// Xavier (Glorot) uniform values for a `fan_in x fan_out` matrix: U(-a, a), a = sqrt(6 / (fan_in + fan_out)).
pub fn xavier_uniform(rng: &mut InitRng, fan_in: usize, fan_out: usize) -> Vec<f32> {
    let a = (6.0 / (fan_in + fan_out) as f64).sqrt() as f32;
    (0..fan_in * fan_out).map(|_| rng.gen_range(-a..a)).collect()
}

/// Normal values with standard deviation `std` (Box-Muller; the official code uses N(0, 0.02) for tokens).
pub fn normal(rng: &mut InitRng, n: usize, std: f32) -> Vec<f32> {
    (0..n).map(|_| standard_normal(rng) as f32 * std).collect()
}

fn standard_normal(rng: &mut InitRng) -> f64 {
    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
    let u2: f64 = rng.r#gen();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Normal values with standard deviation `std` truncated to `[-bound, bound]` by rejection, as
/// timm's `trunc_normal_(std=std, a=-bound, b=bound)` (BEiT pretraining truncates at one std).
pub fn trunc_normal(rng: &mut InitRng, n: usize, std: f32, bound: f32) -> Vec<f32> {
    let k = (bound / std) as f64;
    (0..n)
        .map(|_| {
            loop {
                let z = standard_normal(rng);
                if z.abs() <= k {
                    break z as f32 * std;
                }
            }
        })
        .collect()
}

/// Redraws every matrix parameter (rank 2: linear weights, relative position tables) of `module`
/// from trunc N(0, 0.02), in visiting order: timm's `_init_weights` for Swin-style models. Vectors
/// (biases, norms) keep their constructor values.
pub fn trunc_normal_matrices<M: Module>(module: M, rng: &mut InitRng) -> M {
    struct Redraw<'a>(&'a mut InitRng);
    impl ModuleMapper for Redraw<'_> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            if D != 2 {
                return param;
            }
            param.map(|t| {
                let shape = t.dims();
                // timm's default bounds are the absolute [-2, 2], which never bind at std 0.02.
                let values = trunc_normal(self.0, shape.iter().product(), 0.02, 2.0);
                let trainable = t.is_require_grad();
                Tensor::from_data(TensorData::new(values, shape), &t.device()).set_require_grad(trainable)
            })
        }
    }
    module.map(&mut Redraw(rng))
}
