//! Per-sample row gather `x: [B, N, D]`, `ids: [B, K] -> [B, K, D]` (MAE keeping the visible
//! tokens, and un-shuffling them before the decoder) as one op with its own backward.
//!
//! The generic path expands the ids to `[B, K, D]` (a copy), gathers element by element, and its
//! backward is burn-flex's `scatter_add`, serial on the main thread. Here both directions copy
//! whole rows, one parallel task per image; the backward adds
//! rows into that image's zeroed gradient, so repeated ids accumulate as in the generic op.

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Autodiff, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::{Int, Shape, Tensor, TensorData};
use rayon::prelude::*;

use super::{contiguous_f32, init_f32, on_flex_f32, zeroed};

/// The ids as row indices, checked against the number of rows `n`.
fn row_ids(ids: FlexTensor, n: usize) -> Vec<usize> {
    let ids: Vec<i64> = ids.into_data().convert::<i64>().try_to_vec().expect("integer ids");
    ids.into_iter()
        .map(|i| {
            usize::try_from(i)
                .ok()
                .filter(|&i| i < n)
                .unwrap_or_else(|| panic!("gather index {i} out of range for {n} rows"))
        })
        .collect()
}

/// `[B, K, D]` rows of `x: [B, N, D]` picked by `ids: [B * K]`.
fn forward_kernel(x: &[f32], ids: &[usize], (b, n, d): (usize, usize, usize)) -> Vec<f32> {
    let k = ids.len() / b;
    // SAFETY: the per-image chunks cover the buffer and every row of each is copied.
    unsafe {
        init_f32(b * k * d, |out| {
            out.par_chunks_mut(k * d).enumerate().for_each(|(img, o)| {
                for (row, &i) in o.chunks_exact_mut(d).zip(&ids[img * k..(img + 1) * k]) {
                    row.iter_mut().zip(&x[(img * n + i) * d..][..d]).for_each(|(o, &v)| _ = o.write(v));
                }
            })
        })
    }
}

/// Gradient `[B, N, D]` of `x` from `dy: [B, K, D]`.
fn backward_kernel(dy: &[f32], ids: &[usize], (b, n, d): (usize, usize, usize)) -> Vec<f32> {
    let k = ids.len() / b;
    // SAFETY: the per-image chunks cover the buffer and `zeroed` writes every value of each.
    unsafe {
        init_f32(b * n * d, |dx| {
            dx.par_chunks_mut(n * d).enumerate().for_each(|(img, g)| {
                let g = zeroed(g);
                for (row, &i) in dy[img * k * d..(img + 1) * k * d].chunks_exact(d).zip(&ids[img * k..(img + 1) * k]) {
                    g[i * d..(i + 1) * d].iter_mut().zip(row).for_each(|(a, &v)| *a += v);
                }
            })
        })
    }
}

/// The backend operation: implemented for flex and for autodiff over flex.
#[backend_extension(Flex, Autodiff)]
pub trait GatherBackend: burn::backend::Backend {
    /// `x: [B, N, D]`, `ids: [B, K] -> [B, K, D]`.
    fn fused_gather_rows(x: FloatTensor<Self>, ids: IntTensor<Self>) -> FloatTensor<Self>;
}

/// The raw backward kernel, on the concrete backend that runs it.
pub trait GatherKernels: burn::backend::Backend {
    /// Gradient `[B, n, D]` of the gathered tensor from `dy: [B, K, D]`.
    fn fused_gather_rows_backward(dy: FloatTensor<Self>, ids: IntTensor<Self>, n: usize) -> FloatTensor<Self>;
}

impl GatherBackend for Flex {
    fn fused_gather_rows(x: FlexTensor, ids: FlexTensor) -> FlexTensor {
        let s = x.shape();
        let (b, n, d) = (s[0], s[1], s[2]);
        let k = ids.shape()[1];
        let out = forward_kernel(&contiguous_f32(&x), &row_ids(ids, n), (b, n, d));
        FlexTensor::from_data(TensorData::new(out, Shape::from(vec![b, k, d])))
    }
}

impl GatherKernels for Flex {
    fn fused_gather_rows_backward(dy: FlexTensor, ids: FlexTensor, n: usize) -> FlexTensor {
        let s = dy.shape();
        let (b, d) = (s[0], s[2]);
        let dx = backward_kernel(&contiguous_f32(&dy), &row_ids(ids, n), (b, n, d));
        FlexTensor::from_data(TensorData::new(dx, Shape::from(vec![b, n, d])))
    }
}

impl<B: GatherBackend + GatherKernels, C: CheckpointStrategy> GatherBackend for Autodiff<B, C> {
    fn fused_gather_rows(x: FloatTensor<Self>, ids: IntTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct GatherBackward;

        impl<B: GatherKernels> Backward<B, 1> for GatherBackward {
            /// The ids and the number of rows of the input.
            type State = (IntTensor<B>, usize);

            fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [node] = ops.parents;
                let dy = grads.consume::<B>(&ops.node);
                let (ids, n) = ops.state;
                if let Some(node) = node {
                    grads.register::<B>(node.id, B::fused_gather_rows_backward(dy, ids, n));
                }
            }
        }

        let n = x.primitive().shape()[1];
        match GatherBackward.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let y = B::fused_gather_rows(x.into_primitive(), ids.clone());
                prep.finish((ids, n), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_gather_rows(x.into_primitive(), ids)),
        }
    }
}

/// `x: [B, N, D]`, `ids: [B, K] -> [B, K, D]`: rows of `x` picked per sample (the fused op on flex
/// f32 tensors, burn's gather elsewhere).
pub fn gather_rows(x: Tensor<3>, ids: Tensor<2, Int>) -> Tensor<3> {
    if on_flex_f32(&x) {
        return Tensor::from_dispatch(Dispatch::fused_gather_rows(x.into_dispatch(), ids.into_dispatch()));
    }
    let d = x.dims()[2];
    x.gather(1, ids.unsqueeze_dim::<3>(2).repeat_dim(2, d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    #[test]
    fn fused_gather_matches_burn_forward_and_gradient() {
        let device = Device::flex().autodiff();
        device.seed(0);
        let (b, n, d) = (3, 7, 5);
        // Fewer, more (with repeats) and as many rows as the input.
        for ids in [
            vec![6, 0, 2, 1, 1, 5],
            vec![0, 0, 3, 6, 6, 6, 2, 1, 4, 5, 5, 0],
            (0..21).map(|i| (i * 5) % 7).collect::<Vec<i64>>(),
        ] {
            let k = ids.len() / b;
            let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, k]), &device);
            let x = Tensor::<3>::random([b, n, d], Distribution::Normal(0.0, 1.0), &device).require_grad();
            let w = Tensor::<3>::random([b, k, d], Distribution::Default, &device);
            let fused = gather_rows(x.clone(), ids.clone());
            let generic = x.clone().gather(1, ids.unsqueeze_dim::<3>(2).repeat_dim(2, d));
            let diff = (fused.clone() - generic.clone()).abs().max().into_scalar::<f32>();
            assert_eq!(diff, 0.0, "forward differs at k = {k}");
            let gf = x.grad(&(fused * w.clone()).sum().backward()).unwrap();
            let gg = x.grad(&(generic * w).sum().backward()).unwrap();
            let diff = (gf - gg).abs().max().into_scalar::<f32>();
            assert!(diff < 1e-6, "gradient differs by {diff} at k = {k}");
        }
    }
}
