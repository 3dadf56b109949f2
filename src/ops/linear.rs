//! Affine map `y = x W + b` on 2-D `x` as one op with its own backward, each product one call of
//! the gemm crate (the GEMM burn-flex uses) straight on the operands' strides; optionally followed
//! by GELU in the same op (an MLP's first layer).
//!
//! The generic path is a matmul, a broadcast bias add and, in the backward pass, two matmuls on
//! transposed views and a sum over rows for the bias, each recorded by autodiff. In burn-flex
//! 0.22 every matmul output is also allocated zero-filled and then copied once more to realign it
//! (`FlexTensor::empty` goes through `Bytes::from_bytes_vec` of a `Vec<u8>`), on the main thread.
//! Here outputs are written once: the forward writes `x W` and the
//! backward `dy Wᵀ` and `xᵀ dy` directly, and only the gradients autodiff asks for are computed
//! (no input gradient for images, say).
//!
//! The bias is added after the product, in a parallel pass over rows (with GELU, the same pass
//! applies it): on the short-reduction MAE shapes (K = 128-192) a product accumulating into
//! bias-filled rows is slower than a plain product plus that pass, and behind GELU the add is free.
//! In the backward pass GELU's derivative and the bias gradient's column sums share one pass too.

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::{Shape, Tensor, TensorData};
use rayon::prelude::*;

use super::gelu::{backward_chunk as gelu_backward, forward_chunk as gelu_forward};
use super::{assume_init, contiguous_f32, init_f32, on_flex_f32, sum_in_order};

/// Below this many multiply-adds a product runs on the calling thread (burn-flex's threshold).
const PARALLEL_THRESHOLD: usize = 192 * 192 * 192;
/// Rows per rayon task for the bias (and GELU) pass and the bias gradient.
const ROWS_PER_TASK: usize = 256;

/// A row-major `rows x cols` operand, or its transpose, as the gemm crate takes it.
#[derive(Clone, Copy)]
struct Operand {
    ptr: *const f32,
    row_stride: isize,
    col_stride: isize,
}

impl Operand {
    fn of(data: &[f32], cols: usize) -> Self {
        Operand { ptr: data.as_ptr(), row_stride: cols as isize, col_stride: 1 }
    }
    fn t(self) -> Self {
        Operand { row_stride: self.col_stride, col_stride: self.row_stride, ..self }
    }
}

/// `dst[m, n] (+)= lhs[m, k] rhs[k, n]` into row-major `dst`, accumulating when `accumulate`
/// (otherwise `dst` is only written, so it may be uninitialised); on rayon's threads when the
/// product is large enough.
///
/// # Safety
/// `dst` has room for `m * n` values; `lhs` and `rhs` address `m x k` and `k x n` matrices.
unsafe fn gemm_f32(m: usize, n: usize, k: usize, dst: *mut f32, accumulate: bool, lhs: Operand, rhs: Operand) {
    let parallel = m * n * k >= PARALLEL_THRESHOLD;
    // SAFETY: the caller's contract.
    unsafe {
        gemm_with(
            m,
            n,
            k,
            dst,
            accumulate,
            lhs,
            rhs,
            if parallel { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None },
        )
    }
}

/// [`gemm_f32`] with the parallelism given.
///
/// # Safety
/// As [`gemm_f32`].
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_with(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    accumulate: bool,
    lhs: Operand,
    rhs: Operand,
    parallelism: gemm::Parallelism,
) {
    // SAFETY: the caller's contract; dst = 1 * dst + 1 * lhs rhs.
    unsafe {
        gemm::gemm(
            m, n, k, dst, 1, n as isize, accumulate, lhs.ptr, lhs.col_stride, lhs.row_stride, rhs.ptr, rhs.col_stride,
            rhs.row_stride, 1.0, 1.0, false, false, false, parallelism,
        );
    }
}

fn flex(v: Vec<f32>, shape: [usize; 2]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(v, Shape::from(shape.to_vec())))
}

fn dims2(t: &FlexTensor) -> (usize, usize) {
    let s = t.shape();
    (s[0], s[1])
}

/// `x W + b`, or `(GELU(x W + b), x W + b)` with `gelu` (the pre-activation kept for the backward).
fn forward_kernel(x: &FlexTensor, w: &FlexTensor, b: &FlexTensor, gelu: bool) -> (FlexTensor, Option<FlexTensor>) {
    let ((m, k), (_, n)) = (dims2(x), dims2(w));
    let (xs, ws, bs) = (contiguous_f32(x), contiguous_f32(w), contiguous_f32(b));
    // SAFETY: the GEMM writes all of h (m x n) from xs (m x k) and ws (k x n), row-major.
    let mut h = unsafe {
        init_f32(m * n, |h| gemm_f32(m, n, k, h.as_mut_ptr().cast(), false, Operand::of(&xs, k), Operand::of(&ws, n)))
    };
    let add_bias = |rows: &mut [f32]| {
        rows.chunks_exact_mut(n).for_each(|row| row.iter_mut().zip(bs.iter()).for_each(|(o, &v)| *o += v))
    };
    if !gelu {
        h.par_chunks_mut(n * ROWS_PER_TASK).for_each(add_bias);
        return (flex(h, [m, n]), None);
    }
    // SAFETY: the chunks cover both buffers and gelu_forward writes each value of its chunk.
    let y = unsafe {
        init_f32(m * n, |y| {
            y.par_chunks_mut(n * ROWS_PER_TASK).zip(h.par_chunks_mut(n * ROWS_PER_TASK)).for_each(|(yc, hc)| {
                add_bias(hc);
                gelu_forward(hc, yc);
            })
        })
    };
    (flex(y, [m, n]), Some(flex(h, [m, n])))
}

/// Column sums of `dy: [m, n]`, per-task partial sums added in a fixed order (deterministic).
fn column_sums(dy: &[f32], n: usize) -> Vec<f32> {
    let partials: Vec<Vec<f32>> = dy.par_chunks(n * ROWS_PER_TASK).map(|rows| column_sum(rows, n)).collect();
    sum_in_order(partials)
}

fn column_sum(rows: &[f32], n: usize) -> Vec<f32> {
    let mut acc = vec![0f32; n];
    for row in rows.chunks_exact(n) {
        acc.iter_mut().zip(row).for_each(|(a, &v)| *a += v);
    }
    acc
}

/// `(dy GELU'(h), its column sums)`: the gradient at the pre-activation and the bias gradient in
/// one pass.
fn gelu_backward_with_sums(h: &[f32], dy: &[f32], n: usize) -> (Vec<f32>, Vec<f32>) {
    let mut partials = Vec::new();
    // SAFETY: the chunks cover the buffer and gelu_backward writes each value of its chunk, which
    // is then read as initialised values.
    let dh = unsafe {
        init_f32(h.len(), |dh| {
            partials = dh
                .par_chunks_mut(n * ROWS_PER_TASK)
                .zip(h.par_chunks(n * ROWS_PER_TASK))
                .zip(dy.par_chunks(n * ROWS_PER_TASK))
                .map(|((dc, hc), gc)| {
                    gelu_backward(hc, gc, dc);
                    column_sum(assume_init(dc), n)
                })
                .collect();
        })
    };
    (dh, sum_in_order(partials))
}

/// Row chunks of the weight gradient's reduction: a fixed count, so that the result does not
/// depend on the number of threads.
const WEIGHT_GRAD_CHUNKS: usize = 4;

/// `xᵀ dy` (`[k, n]`) for `x: [m, k]`, `dy: [m, n]`. gemm parallelises a product over blocks of
/// its output only, and this output (a few hundred square) has too few of them: it ran at about
/// one thread's speed. A long reduction over the m rows is split into chunks instead, their
/// partial products computed in parallel and added in a fixed order.
fn weight_gradient(xs: &[f32], dys: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let x_t = |r0: usize| Operand::of(&xs[r0 * k..], k).t();
    let dy = |r0: usize| Operand::of(&dys[r0 * n..], n);
    // Short reductions keep gemm's own split: chunks under ~512 rows ran slower than it (ViT-B's
    // 400-row encoder batches, whose large outputs have blocks enough).
    if m * k * n < PARALLEL_THRESHOLD || m < WEIGHT_GRAD_CHUNKS * 512 {
        // SAFETY: the GEMM writes all of dst (k x n) from xᵀ (k x m) and dy (m x n).
        return unsafe { init_f32(k * n, |dst| gemm_f32(k, n, m, dst.as_mut_ptr().cast(), false, x_t(0), dy(0))) };
    }
    // More threads than chunks: each chunk's product also spreads over output blocks.
    let inner = if rayon::current_num_threads() > WEIGHT_GRAD_CHUNKS {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    let rows = m.div_ceil(WEIGHT_GRAD_CHUNKS);
    let partials: Vec<Vec<f32>> = (0..WEIGHT_GRAD_CHUNKS)
        .into_par_iter()
        .map(|c| {
            let (r0, r1) = (c * rows, ((c + 1) * rows).min(m));
            // SAFETY: the GEMM writes all of dst (k x n) from the chunk's xᵀ (k x rows) and dy (rows x n).
            unsafe {
                init_f32(k * n, |dst| gemm_with(k, n, r1 - r0, dst.as_mut_ptr().cast(), false, x_t(r0), dy(r0), inner))
            }
        })
        .collect();
    sum_in_order(partials)
}

/// Which gradients the backward pass computes.
#[derive(Clone, Copy, Debug)]
pub struct Wanted {
    /// Gradient of the input.
    pub x: bool,
    /// Gradient of the weight.
    pub w: bool,
    /// Gradient of the bias.
    pub b: bool,
}

/// `(dz Wᵀ, xᵀ dz, Σ_rows dz)`, each only when wanted, where `dz` is `dy`, or `dy GELU'(h)` when
/// the op applied GELU to the pre-activation `h`.
fn backward_kernel(
    x: &FlexTensor,
    w: &FlexTensor,
    h: Option<&FlexTensor>,
    dy: &FlexTensor,
    wanted: Wanted,
) -> [Option<FlexTensor>; 3] {
    let ((m, k), (_, n)) = (dims2(x), dims2(w));
    let (dz, db) = match h {
        Some(h) => {
            let (dz, db) = gelu_backward_with_sums(&contiguous_f32(h), &contiguous_f32(dy), n);
            (std::borrow::Cow::Owned(dz), wanted.b.then_some(db))
        }
        None => {
            let dz = contiguous_f32(dy);
            let db = wanted.b.then(|| column_sums(&dz, n));
            (dz, db)
        }
    };
    let dx = wanted.x.then(|| {
        let ws = contiguous_f32(w);
        // SAFETY: the GEMM writes all of dst (m x k) from dz (m x n) and Wᵀ (n x k).
        flex(
            unsafe {
                init_f32(m * k, |dst| {
                    gemm_f32(m, k, n, dst.as_mut_ptr().cast(), false, Operand::of(&dz, n), Operand::of(&ws, n).t())
                })
            },
            [m, k],
        )
    });
    let dw = wanted.w.then(|| flex(weight_gradient(&contiguous_f32(x), &dz, m, k, n), [k, n]));
    let db = db.map(|db| FlexTensor::from_data(TensorData::new(db, Shape::from(vec![n]))));
    [dx, dw, db]
}

/// The backend operation: implemented for flex and for autodiff over flex.
#[backend_extension(Flex, Autodiff)]
pub trait LinearBackend: burn::backend::Backend {
    /// `x W + b` for `x: [m, k]`, `W: [k, n]`, `b: [n]`, then GELU when `gelu`.
    fn fused_linear(x: FloatTensor<Self>, w: FloatTensor<Self>, b: FloatTensor<Self>, gelu: bool) -> FloatTensor<Self>;
}

/// The raw kernels, on the concrete backend that runs them.
pub trait LinearKernels: burn::backend::Backend {
    /// The output and, with `gelu`, the pre-activation `x W + b` the backward pass needs.
    fn fused_linear_forward(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: FloatTensor<Self>,
        gelu: bool,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>);
    /// Gradients with respect to x, W and b, each only when wanted; `h` is the pre-activation of
    /// an op with GELU.
    fn fused_linear_backward(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        h: Option<FloatTensor<Self>>,
        dy: FloatTensor<Self>,
        wanted: Wanted,
    ) -> [Option<FloatTensor<Self>>; 3];
}

impl LinearBackend for Flex {
    fn fused_linear(x: FlexTensor, w: FlexTensor, b: FlexTensor, gelu: bool) -> FlexTensor {
        forward_kernel(&x, &w, &b, gelu).0
    }
}

impl LinearKernels for Flex {
    fn fused_linear_forward(
        x: FlexTensor,
        w: FlexTensor,
        b: FlexTensor,
        gelu: bool,
    ) -> (FlexTensor, Option<FlexTensor>) {
        forward_kernel(&x, &w, &b, gelu)
    }

    fn fused_linear_backward(
        x: FlexTensor,
        w: FlexTensor,
        h: Option<FlexTensor>,
        dy: FlexTensor,
        wanted: Wanted,
    ) -> [Option<FlexTensor>; 3] {
        backward_kernel(&x, &w, h.as_ref(), &dy, wanted)
    }
}

impl<B: LinearBackend + LinearKernels, C: CheckpointStrategy> LinearBackend for Autodiff<B, C> {
    fn fused_linear(x: FloatTensor<Self>, w: FloatTensor<Self>, b: FloatTensor<Self>, gelu: bool) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct LinearBackward;

        impl<B: LinearKernels> Backward<B, 3> for LinearBackward {
            /// x, W and the pre-activation of an op with GELU.
            type State = (FloatTensor<B>, FloatTensor<B>, Option<FloatTensor<B>>);

            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [node_x, node_w, node_b] = ops.parents;
                let dy = grads.consume::<B>(&ops.node);
                let (x, w, h) = ops.state;
                let wanted = Wanted { x: node_x.is_some(), w: node_w.is_some(), b: node_b.is_some() };
                let [dx, dw, db] = B::fused_linear_backward(x, w, h, dy, wanted);
                for (node, grad) in [(node_x, dx), (node_w, dw), (node_b, db)] {
                    if let (Some(node), Some(grad)) = (node, grad) {
                        grads.register::<B>(node.id, grad);
                    }
                }
            }
        }

        match LinearBackward.prepare::<C>([x.node(), w.node(), b.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (y, h) =
                    B::fused_linear_forward(x.primitive().clone(), w.primitive().clone(), b.into_primitive(), gelu);
                prep.finish((x.into_primitive(), w.into_primitive(), h), y)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::fused_linear(x.into_primitive(), w.into_primitive(), b.into_primitive(), gelu))
            }
        }
    }
}

/// `x W + b` for `x: [m, k]`, `W: [k, n]`, `b: [n]` (`x W` without a bias): the fused op on flex
/// f32 tensors, burn's matmul and add elsewhere.
pub fn linear(x: Tensor<2>, w: Tensor<2>, b: Option<Tensor<1>>) -> Tensor<2> {
    affine(x, w, b, false)
}

/// `GELU(x W + b)` (exact, erf-based GELU), an MLP's first layer, as one op on flex f32 tensors.
pub fn linear_gelu(x: Tensor<2>, w: Tensor<2>, b: Option<Tensor<1>>) -> Tensor<2> {
    affine(x, w, b, true)
}

fn affine(x: Tensor<2>, w: Tensor<2>, b: Option<Tensor<1>>, gelu: bool) -> Tensor<2> {
    let y = match b {
        Some(b) if on_flex_f32(&x) && on_flex_f32(&w) && on_flex_f32(&b) => {
            return Tensor::from_dispatch(Dispatch::fused_linear(
                x.into_dispatch(),
                w.into_dispatch(),
                b.into_dispatch(),
                gelu,
            ));
        }
        Some(b) => x.matmul(w) + b.unsqueeze_dim(0),
        None => x.matmul(w),
    };
    if gelu { super::gelu::gelu(y) } else { y }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::relative_diff;
    use burn::tensor::{Device, Distribution};

    #[test]
    fn fused_linear_matches_burn_forward_and_gradients() {
        let device = Device::flex().autodiff();
        device.seed(0);
        // Below and above the parallel threshold, weight gradients split into equal and unequal row
        // chunks; widths with and without a multiple of 16; each with and without GELU.
        let shapes = [(5, 7, 3), (300, 192, 576), (3328, 192, 768), (2050, 96, 48), (700, 130, 33)];
        for ((m, k, n), gelu) in shapes.into_iter().flat_map(|s| [(s, false), (s, true)]) {
            let x = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &device).require_grad();
            let w = Tensor::<2>::random([k, n], Distribution::Normal(0.0, 0.1), &device).require_grad();
            let b = Tensor::<1>::random([n], Distribution::Normal(0.0, 1.0), &device).require_grad();
            let probe = Tensor::<2>::random([m, n], Distribution::Default, &device);
            let affine = x.clone().matmul(w.clone()) + b.clone().unsqueeze_dim(0);
            let (fused, generic) = if gelu {
                (linear_gelu(x.clone(), w.clone(), Some(b.clone())), burn::tensor::activation::gelu(affine))
            } else {
                (linear(x.clone(), w.clone(), Some(b.clone())), affine)
            };
            let diff = (fused.clone() - generic.clone()).abs().max().into_scalar::<f32>();
            assert!(diff < 1e-4, "forward differs by {diff} at {m}x{k}x{n} (gelu: {gelu})");
            let gf = (fused * probe.clone()).sum().backward();
            let gg = (generic * probe).sum().backward();
            for (name, ours, theirs) in [
                ("x", x.grad(&gf).unwrap().reshape([-1]), x.grad(&gg).unwrap().reshape([-1])),
                ("w", w.grad(&gf).unwrap().reshape([-1]), w.grad(&gg).unwrap().reshape([-1])),
                ("b", b.grad(&gf).unwrap(), b.grad(&gg).unwrap()),
            ] {
                let diff = relative_diff(ours, theirs);
                assert!(diff < 1e-5, "{name} gradient differs by {diff} (relative) at {m}x{k}x{n} (gelu: {gelu})");
            }
        }
    }

    #[test]
    fn strided_input_and_untracked_input() {
        let device = Device::flex().autodiff();
        device.seed(1);
        // x as a transposed view (not contiguous) and without a gradient of its own.
        let xt = Tensor::<2>::random([64, 40], Distribution::Normal(0.0, 1.0), &device);
        let x = xt.clone().transpose();
        let w = Tensor::<2>::random([64, 24], Distribution::Normal(0.0, 0.1), &device).require_grad();
        let b = Tensor::<1>::random([24], Distribution::Normal(0.0, 1.0), &device).require_grad();
        let fused = linear(x.clone(), w.clone(), Some(b.clone()));
        let generic = x.matmul(w.clone()) + b.clone().unsqueeze_dim(0);
        let diff = (fused.clone() - generic.clone()).abs().max().into_scalar::<f32>();
        assert!(diff < 1e-5, "forward differs by {diff}");
        let (gf, gg) = (fused.sum().backward(), generic.sum().backward());
        let diff = (w.grad(&gf).unwrap() - w.grad(&gg).unwrap()).abs().max().into_scalar::<f32>();
        assert!(diff < 1e-4, "weight gradient differs by {diff}");
        let diff = (b.grad(&gf).unwrap() - b.grad(&gg).unwrap()).abs().max().into_scalar::<f32>();
        assert!(diff < 1e-4, "bias gradient differs by {diff}");
    }
}
