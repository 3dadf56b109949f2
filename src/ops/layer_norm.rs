//! LayerNorm over the last dimension as one fused op with its own backward.
//!
//! burn 0.22's autodiff has no LayerNorm node: it records the generic decomposition (mean, centre,
//! square, mean, add, sqrt, divide, scale, shift), nine element-wise passes forward and their
//! backward nodes after it, most of them serial. Here the forward is one parallel pass over rows
//! that also keeps each row's mean and 1/std, and the backward one pass that gives the input,
//! scale and shift gradients together (per-task partial sums of the latter two, reduced in a fixed
//! order so results do not depend on scheduling).

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::{Shape, Tensor, TensorData};
use rayon::prelude::*;

use std::mem::MaybeUninit;

use super::{contiguous_f32, init_f32, on_flex_f32, sum_in_order, sum8};

/// Rows per rayon task (widths are 32 ... 1024).
const ROWS_PER_TASK: usize = 64;

multiversion! {
    /// Normalises the rows of `x` (`d` wide) into `y`, writing each row's mean and 1/std.
    fn forward_rows(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, y: &mut [MaybeUninit<f32>], mean: &mut [f32], rstd: &mut [f32]) {
        let d = gamma.len();
        for (r, (xr, yr)) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)).enumerate() {
            let mu = sum8([xr], |[x]| x) / d as f32;
            let var = sum8([xr], |[x]| (x - mu) * (x - mu)) / d as f32;
            let rs = 1.0 / (var + eps).sqrt();
            mean[r] = mu;
            rstd[r] = rs;
            for j in 0..d {
                yr[j].write((xr[j] - mu) * rs * gamma[j] + beta[j]);
            }
        }
    }
}

multiversion! {
    /// Input gradient of the rows into `dx`; scale and shift gradients added into `dg`, `db`.
    fn backward_rows(x: &[f32], gamma: &[f32], mean: &[f32], rstd: &[f32], dy: &[f32], dx: &mut [MaybeUninit<f32>], dg: &mut [f32], db: &mut [f32]) {
        let d = gamma.len();
        for (r, ((xr, dyr), dxr)) in x.chunks_exact(d).zip(dy.chunks_exact(d)).zip(dx.chunks_exact_mut(d)).enumerate() {
            let (mu, rs) = (mean[r], rstd[r]);
            // dx = rstd (g - mean(g) - xhat mean(g xhat)) with g = dy gamma
            let m1 = sum8([dyr, gamma], |[dy, g]| dy * g) / d as f32;
            let m2 = sum8([dyr, gamma, xr], |[dy, g, x]| dy * g * (x - mu) * rs) / d as f32;
            for j in 0..d {
                let xh = (xr[j] - mu) * rs;
                dg[j] += dyr[j] * xh;
                db[j] += dyr[j];
                dxr[j].write(rs * (dyr[j] * gamma[j] - m1 - xh * m2));
            }
        }
    }
}

fn flex(v: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(v, shape))
}

/// The backend operation: implemented for flex and for autodiff over flex.
#[backend_extension(Flex, Autodiff)]
pub trait LayerNormBackend: burn::backend::Backend {
    /// `(x - mean) / sqrt(var + eps) * gamma + beta` over the last dimension.
    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self>;
}

/// The raw kernels, on the concrete backend that runs them.
pub trait LayerNormKernels: burn::backend::Backend {
    /// Output, and each row's mean and 1/std kept for the backward pass.
    fn fused_layer_norm_forward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
    /// Gradients with respect to x, gamma and beta.
    fn fused_layer_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        rstd: FloatTensor<Self>,
        dy: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

impl LayerNormKernels for Flex {
    fn fused_layer_norm_forward(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        eps: f32,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let shape = x.shape();
        let d = shape[shape.num_dims() - 1];
        let rows = shape.num_elements() / d;
        let (xs, gs, bs) = (contiguous_f32(&x), contiguous_f32(&gamma), contiguous_f32(&beta));
        let (mut mean, mut rstd) = (vec![0f32; rows], vec![0f32; rows]);
        // SAFETY: the chunks cover the buffer and forward_rows writes every value of its rows.
        let y = unsafe {
            init_f32(rows * d, |y| {
                y.par_chunks_mut(d * ROWS_PER_TASK)
                    .zip(mean.par_chunks_mut(ROWS_PER_TASK))
                    .zip(rstd.par_chunks_mut(ROWS_PER_TASK))
                    .zip(xs.par_chunks(d * ROWS_PER_TASK))
                    .for_each(|(((yc, mc), rc), xc)| forward_rows(xc, &gs, &bs, eps, yc, mc, rc))
            })
        };
        (flex(y, shape), flex(mean, Shape::from(vec![rows])), flex(rstd, Shape::from(vec![rows])))
    }

    fn fused_layer_norm_backward(
        x: FlexTensor,
        gamma: FlexTensor,
        mean: FlexTensor,
        rstd: FlexTensor,
        dy: FlexTensor,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let shape = x.shape();
        let d = shape[shape.num_dims() - 1];
        let rows = shape.num_elements() / d;
        let (xs, gs, ms, rs, dys) = (
            contiguous_f32(&x),
            contiguous_f32(&gamma),
            contiguous_f32(&mean),
            contiguous_f32(&rstd),
            contiguous_f32(&dy),
        );
        let mut partials: Vec<(Vec<f32>, Vec<f32>)> = Vec::new();
        // SAFETY: the chunks cover the buffer and backward_rows writes every value of its rows.
        let dx = unsafe {
            init_f32(rows * d, |dx| {
                partials = dx
                    .par_chunks_mut(d * ROWS_PER_TASK)
                    .enumerate()
                    .map(|(t, dxc)| {
                        let (r0, n) = (t * ROWS_PER_TASK, dxc.len() / d);
                        let (mut dg, mut db) = (vec![0f32; d], vec![0f32; d]);
                        backward_rows(
                            &xs[r0 * d..(r0 + n) * d],
                            &gs,
                            &ms[r0..r0 + n],
                            &rs[r0..r0 + n],
                            &dys[r0 * d..(r0 + n) * d],
                            dxc,
                            &mut dg,
                            &mut db,
                        );
                        (dg, db)
                    })
                    .collect()
            })
        };
        let (pg, pb): (Vec<_>, Vec<_>) = partials.into_iter().unzip();
        let (dg, db) = (sum_in_order(pg), sum_in_order(pb));
        (flex(dx, shape), flex(dg, Shape::from(vec![d])), flex(db, Shape::from(vec![d])))
    }
}

impl LayerNormBackend for Flex {
    fn fused_layer_norm(x: FlexTensor, gamma: FlexTensor, beta: FlexTensor, eps: f32) -> FlexTensor {
        Self::fused_layer_norm_forward(x, gamma, beta, eps).0
    }
}

impl<B: LayerNormBackend + LayerNormKernels, C: CheckpointStrategy> LayerNormBackend for Autodiff<B, C> {
    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct LayerNormBackward;

        impl<B: LayerNormKernels> Backward<B, 3> for LayerNormBackward {
            /// x, gamma, row means, row 1/std.
            type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [node_x, node_g, node_b] = ops.parents;
                let dy = grads.consume::<B>(&ops.node);
                let (x, gamma, mean, rstd) = ops.state;
                let (dx, dg, db) = B::fused_layer_norm_backward(x, gamma, mean, rstd, dy);
                for (node, grad) in [(node_x, dx), (node_g, dg), (node_b, db)] {
                    if let Some(node) = node {
                        grads.register::<B>(node.id, grad);
                    }
                }
            }
        }

        match LayerNormBackward.prepare::<C>([x.node(), gamma.node(), beta.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (y, mean, rstd) = B::fused_layer_norm_forward(
                    x.primitive().clone(),
                    gamma.primitive().clone(),
                    beta.primitive().clone(),
                    eps,
                );
                prep.finish((x.into_primitive(), gamma.into_primitive(), mean, rstd), y)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::fused_layer_norm(x.into_primitive(), gamma.into_primitive(), beta.into_primitive(), eps))
            }
        }
    }
}

/// LayerNorm of `x: [..., d]` with scale and shift `[d]`: the fused op on flex f32 tensors, burn's
/// own elsewhere.
pub fn layer_norm<const D: usize>(x: Tensor<D>, gamma: Tensor<1>, beta: Tensor<1>, eps: f64) -> Tensor<D> {
    if on_flex_f32(&x) && on_flex_f32(&gamma) && on_flex_f32(&beta) {
        return Tensor::from_dispatch(Dispatch::fused_layer_norm(
            x.into_dispatch(),
            gamma.into_dispatch(),
            beta.into_dispatch(),
            eps as f32,
        ));
    }
    burn::tensor::module::layer_norm(x, gamma, Some(beta), eps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::relative_diff;
    use burn::tensor::{Device, Distribution};

    #[test]
    fn fused_layer_norm_matches_burn_forward_and_gradients() {
        let device = Device::flex().autodiff();
        device.seed(0);
        // Widths with and without a multiple of 8; row counts across task boundaries.
        for (rows, d) in [(3, 13), (130, 192), (70, 64), (1, 1024)] {
            let x = Tensor::<3>::random([2, rows, d], Distribution::Normal(1.0, 3.0), &device).require_grad();
            let g = Tensor::<1>::random([d], Distribution::Normal(1.0, 0.5), &device).require_grad();
            let b = Tensor::<1>::random([d], Distribution::Normal(0.0, 0.5), &device).require_grad();
            let w = Tensor::<3>::random([2, rows, d], Distribution::Default, &device);
            let fused = layer_norm(x.clone(), g.clone(), b.clone(), 1e-6);
            let generic = burn::tensor::module::layer_norm(x.clone(), g.clone(), Some(b.clone()), 1e-6);
            let diff = (fused.clone() - generic.clone()).abs().max().into_scalar::<f32>();
            assert!(diff < 1e-5, "forward differs by {diff} at {rows}x{d}");
            let gf = (fused * w.clone()).sum().backward();
            let gg = (generic * w).sum().backward();
            for (name, ours, theirs) in [
                ("x", x.grad(&gf).unwrap().reshape([-1]), x.grad(&gg).unwrap().reshape([-1])),
                ("gamma", g.grad(&gf).unwrap(), g.grad(&gg).unwrap()),
                ("beta", b.grad(&gf).unwrap(), b.grad(&gg).unwrap()),
            ] {
                let diff = relative_diff(ours, theirs);
                assert!(diff < 1e-5, "{name} gradient differs by {diff} (relative) at {rows}x{d}");
            }
        }
    }
}
