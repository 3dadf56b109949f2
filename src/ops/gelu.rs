//! GELU, `x Φ(x) = x (1 + erf(x / √2)) / 2`, as one fused op with its own backward.
//!
//! burn-flex evaluates GELU element by element through scalar `libm::erff` on one thread, forward
//! and again (with the derivative) in the backward pass: the largest serial block of an MAE step.
//! Here erf is a rational approximation that LLVM vectorises (max error 2e-7 against libm over
//! the whole line), and chunks run on rayon's pool.

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use std::mem::MaybeUninit;

use super::{contiguous_f32, exp, init_f32, on_flex_f32};

/// Elements per rayon task.
const CHUNK: usize = 1 << 14;
const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1 / sqrt(2 pi)
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// erf(x) as a rational function of x² (the approximation of Eigen / XLA), clamped to ±4 where
/// erf is ±1 in f32. Branch-free so that loops over it vectorise (`mul_add`: see [`super::exp`]).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    for c in [2.770_681_4e-8, -2.101_024e-6, -5.692_506_5e-5, -7.349_906e-4, -2.954_600_1e-3, -1.609_603_3e-2] {
        p = p.mul_add(x2, c);
    }
    let mut q = -1.456_607_2e-5_f32;
    for c in [-2.133_740_6e-4, -1.682_827e-3, -7.373_329e-3, -1.426_474e-2] {
        q = q.mul_add(x2, c);
    }
    x * p / q
}

multiversion! {
    pub(crate) fn forward_chunk(x: &[f32], y: &mut [MaybeUninit<f32>]) {
        for (o, &v) in y.iter_mut().zip(x) {
            o.write(0.5 * v * (1.0 + erf(v * FRAC_1_SQRT_2)));
        }
    }
}

multiversion! {
    pub(crate) fn backward_chunk(x: &[f32], dy: &[f32], dx: &mut [MaybeUninit<f32>]) {
        for ((o, &v), &g) in dx.iter_mut().zip(x).zip(dy) {
            // d/dx [x Φ(x)] = Φ(x) + x φ(x)
            let cdf = 0.5 * (1.0 + erf(v * FRAC_1_SQRT_2));
            let pdf = INV_SQRT_2PI * exp(-0.5 * v * v);
            o.write(g * (cdf + v * pdf));
        }
    }
}

fn forward_kernel(x: FlexTensor) -> FlexTensor {
    let shape = x.shape();
    let xs = contiguous_f32(&x);
    // SAFETY: the chunks cover the buffer and forward_chunk writes each of its values.
    let y = unsafe {
        init_f32(xs.len(), |y| {
            y.par_chunks_mut(CHUNK).zip(xs.par_chunks(CHUNK)).for_each(|(yc, xc)| forward_chunk(xc, yc))
        })
    };
    FlexTensor::from_data(TensorData::new(y, shape))
}

fn backward_kernel(x: FlexTensor, dy: FlexTensor) -> FlexTensor {
    let shape = x.shape();
    let (xs, dys) = (contiguous_f32(&x), contiguous_f32(&dy));
    // SAFETY: the chunks cover the buffer and backward_chunk writes each of its values.
    let dx = unsafe {
        init_f32(xs.len(), |dx| {
            dx.par_chunks_mut(CHUNK)
                .zip(xs.par_chunks(CHUNK))
                .zip(dys.par_chunks(CHUNK))
                .for_each(|((dc, xc), gc)| backward_chunk(xc, gc, dc))
        })
    };
    FlexTensor::from_data(TensorData::new(dx, shape))
}

/// The backend operation: implemented for flex and for autodiff over flex.
#[backend_extension(Flex, Autodiff)]
pub trait GeluBackend: burn::backend::Backend {
    /// `x Φ(x)` element-wise.
    fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// The raw kernels, on the concrete backend that runs them.
pub trait GeluKernels: burn::backend::Backend {
    /// `dy * GELU'(x)`.
    fn fused_gelu_backward(x: FloatTensor<Self>, dy: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl GeluBackend for Flex {
    fn fused_gelu(x: FlexTensor) -> FlexTensor {
        forward_kernel(x)
    }
}

impl GeluKernels for Flex {
    fn fused_gelu_backward(x: FlexTensor, dy: FlexTensor) -> FlexTensor {
        backward_kernel(x, dy)
    }
}

impl<B: GeluBackend + GeluKernels, C: CheckpointStrategy> GeluBackend for Autodiff<B, C> {
    fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct GeluBackward;

        impl<B: GeluKernels> Backward<B, 1> for GeluBackward {
            type State = FloatTensor<B>;

            fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [node] = ops.parents;
                let dy = grads.consume::<B>(&ops.node);
                if let Some(node) = node {
                    grads.register::<B>(node.id, B::fused_gelu_backward(ops.state, dy));
                }
            }
        }

        match GeluBackward.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let y = B::fused_gelu(x.primitive().clone());
                prep.finish(x.into_primitive(), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_gelu(x.into_primitive())),
        }
    }
}

/// GELU (exact, erf-based, PyTorch's default): the fused op on flex f32 tensors, burn's own elsewhere.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if on_flex_f32(&x) {
        Tensor::from_dispatch(Dispatch::fused_gelu(x.into_dispatch()))
    } else {
        burn::tensor::activation::gelu(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    #[test]
    fn erf_approximation_matches_libm() {
        let mut worst = 0f32;
        for i in -800_000..=800_000 {
            let x = i as f32 * 1e-5;
            worst = worst.max((erf(x) - libm::erff(x)).abs());
        }
        assert!(worst < 5e-7, "max |erf - libm::erff| = {worst}");
    }

    #[test]
    fn fused_gelu_matches_burn_forward_and_gradient() {
        let device = Device::flex().autodiff();
        device.seed(0);
        let x = Tensor::<3>::random([4, 33, 70], Distribution::Normal(0.0, 3.0), &device).require_grad();
        let w = Tensor::<3>::random([4, 33, 70], Distribution::Default, &device);
        let fused = gelu(x.clone());
        let generic = burn::tensor::activation::gelu(x.clone());
        // erf is within 2.5e-7 of libm, so GELU within 2.5e-7 |x| / 2
        let d = ((fused.clone() - generic.clone()).abs() / (x.clone().abs() + 1.0)).max().into_scalar::<f32>();
        assert!(d < 5e-7, "forward differs by {d} (relative)");
        let g_fused = x.grad(&(fused * w.clone()).sum().backward()).unwrap();
        let g_generic = x.grad(&(generic * w).sum().backward()).unwrap();
        let d = (g_fused - g_generic).abs().max().into_scalar::<f32>();
        assert!(d < 1e-5, "gradient differs by {d}");
    }
}
