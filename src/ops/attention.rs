//! Multi-head self-attention from a fused qkv projection, `softmax(q kᵀ / √d) v` per head, as one
//! op with its own backward.
//!
//! The generic path splits qkv with permutes (copies), runs batched matmuls on tiny per-head
//! matrices (13 or 50 tokens in the small MAE), a softmax, and records each step for autodiff.
//! Here one task per (image, head) reads q, k and v in place from the `[B, N, 3D]` projection,
//! keeps the `N x N` probabilities for the backward pass, and writes `[B, N, D]` ready for the
//! output projection; tasks run on rayon's pool.

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::{Shape, Tensor, TensorData};
use rayon::prelude::*;

use super::{contiguous_f32, exp, init_f32, on_flex_f32, zeroed};

/// Sizes of one call: batch, tokens, heads, head width.
#[derive(Clone, Copy, Debug)]
struct Dims {
    b: usize,
    n: usize,
    h: usize,
    hd: usize,
}

impl Dims {
    fn of(qkv: &FlexTensor, heads: usize) -> Self {
        let s = qkv.shape();
        let d = s[2] / 3;
        Dims { b: s[0], n: s[1], h: heads, hd: d / heads }
    }
    fn d(&self) -> usize {
        self.h * self.hd
    }
    /// Offset of token `t`'s head-`head` slice of part `part` (0 q, 1 k, 2 v) in qkv of image `img`.
    fn at(&self, img: usize, t: usize, part: usize, head: usize) -> usize {
        (img * self.n + t) * 3 * self.d() + part * self.d() + head * self.hd
    }
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    // eight lanes so the reduction vectorises (no fast-math in Rust)
    let mut acc = [0f32; 8];
    let main = a.len() / 8 * 8;
    for i in (0..main).step_by(8) {
        for l in 0..8 {
            acc[l] += a[i + l] * b[i + l];
        }
    }
    acc.iter().sum::<f32>() + (main..a.len()).map(|i| a[i] * b[i]).sum::<f32>()
}

/// `a` folded by `f` from `init` in eight lanes, so that the loop vectorises (a serial f32 fold may
/// not be reordered by the compiler).
#[inline(always)]
fn lanes(a: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; 8];
    let main = a.len() / 8 * 8;
    for i in (0..main).step_by(8) {
        for l in 0..8 {
            acc[l] = f(acc[l], a[i + l]);
        }
    }
    let lanes = acc.into_iter().fold(init, &f);
    a[main..].iter().fold(lanes, |x, &y| f(x, y))
}

/// Part `part` (1 k, 2 v) of one head of one image as a contiguous `[hd, np]` matrix, `np` = N
/// rounded up to a multiple of 8 and zero-padded, so that a row of `q kᵀ` is a [`mat_rows`]
/// product with whole vectors only.
#[inline(always)]
fn transposed(qkv: &[f32], dm: Dims, img: usize, part: usize, head: usize, np: usize) -> Vec<f32> {
    let (n, hd) = (dm.n, dm.hd);
    let mut t = vec![0f32; hd * np];
    for j in 0..n {
        for (c, &v) in qkv[dm.at(img, j, part, head)..][..hd].iter().enumerate() {
            t[c * np + j] = v;
        }
    }
    t
}

/// `out = Σ_r coeffs[r] rows[r * stride ..][..W]` with the W-wide sum held in registers.
#[inline(always)]
fn block<const W: usize>(coeffs: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
    let mut acc = [0f32; W];
    for (r, &c) in coeffs.iter().enumerate() {
        let row: &[f32; W] = rows[r * stride..r * stride + W].try_into().unwrap();
        for l in 0..W {
            acc[l] += c * row[l];
        }
    }
    out.copy_from_slice(&acc);
}

/// `out = Σ_r coeffs[r] rows[r * stride ..][..out.len()]`: a row of a small matrix product, the one
/// primitive of both passes. Widths that are multiples of 8 (head widths; token counts padded by
/// [`transposed`]) run as register-blocked columns of up to 64; the short rows here (13 or 50
/// tokens) made the former `y += a x` loops over memory the slowest part of the step.
#[inline(always)]
fn mat_rows(coeffs: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
    let w = out.len();
    if w % 8 != 0 {
        out.fill(0.0);
        for (r, &c) in coeffs.iter().enumerate() {
            for (o, &x) in out.iter_mut().zip(&rows[r * stride..][..w]) {
                *o += c * x;
            }
        }
        return;
    }
    for start in (0..w).step_by(64) {
        let (rows, out) = (&rows[start..], &mut out[start..(start + 64).min(w)]);
        match out.len() {
            8 => block::<8>(coeffs, rows, stride, out),
            16 => block::<16>(coeffs, rows, stride, out),
            24 => block::<24>(coeffs, rows, stride, out),
            32 => block::<32>(coeffs, rows, stride, out),
            40 => block::<40>(coeffs, rows, stride, out),
            48 => block::<48>(coeffs, rows, stride, out),
            56 => block::<56>(coeffs, rows, stride, out),
            _ => block::<64>(coeffs, rows, stride, out),
        }
    }
}

/// `t[j * rows + i] = m[i * cols + j]` for an `rows x cols` matrix `m`.
#[inline(always)]
fn transpose(m: &[f32], rows: usize, cols: usize, t: &mut [f32]) {
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = m[i * cols + j];
        }
    }
}

multiversion! {
    /// One (image, head) of the forward pass: probabilities `p: [N, N]`, output rows `o: [N, hd]`.
    fn forward_task(qkv: &[f32], dm: Dims, task: usize, p: &mut [f32], o: &mut [f32]) {
        let Dims { n, h, hd, .. } = dm;
        let (np, d3) = (n.div_ceil(8) * 8, 3 * dm.d());
        let scale = (hd as f32).powf(-0.5);
        let (img, head) = (task / h, task % h);
        let kt = transposed(qkv, dm, img, 1, head, np);
        let v = &qkv[dm.at(img, 0, 2, head)..];
        let mut scores = vec![0f32; np];
        for i in 0..n {
            mat_rows(&qkv[dm.at(img, i, 0, head)..][..hd], &kt, np, &mut scores);
            let row = &mut p[i * n..(i + 1) * n];
            let max = lanes(&scores[..n], f32::NEG_INFINITY, f32::max);
            // exp in its own loop: with the running sum beside it the loop would not vectorise
            for (pj, &s) in row.iter_mut().zip(&scores[..n]) {
                *pj = exp((s - max) * scale);
            }
            let inv = 1.0 / lanes(row, 0.0, |a, b| a + b);
            row.iter_mut().for_each(|pj| *pj *= inv);
            mat_rows(row, v, d3, &mut o[i * hd..(i + 1) * hd]);
        }
    }
}

/// Returns (out `[B, N, D]`, probabilities `[B, H, N, N]`).
fn forward_kernel(qkv: &[f32], dm: Dims) -> (Vec<f32>, Vec<f32>) {
    let Dims { b, n, h, hd } = dm;
    let d = dm.d();
    // Per (image, head): the probabilities and the head's output rows, gathered into [B, N, D]
    // afterwards. The kernels write whole rows; the chunks are zeroed first only to hand them over
    // as initialised values (in the parallel task, hot in cache).
    let mut heads_out = Vec::new();
    // SAFETY (both): the chunks cover the buffers; `zeroed` writes every value of a chunk, and
    // the gather copies every value of `out`.
    let probs = unsafe {
        init_f32(b * h * n * n, |probs| {
            heads_out = init_f32(b * h * n * hd, |ho| {
                probs.par_chunks_mut(n * n).zip(ho.par_chunks_mut(n * hd)).enumerate().for_each(|(task, (p, o))| forward_task(qkv, dm, task, zeroed(p), zeroed(o)))
            })
        })
    };
    let out = unsafe {
        init_f32(b * n * d, |out| {
            out.par_chunks_mut(n * d).enumerate().for_each(|(img, oimg)| {
                for head in 0..h {
                    let src = &heads_out[(img * h + head) * n * hd..][..n * hd];
                    for t in 0..n {
                        for (o, &v) in oimg[t * d + head * hd..][..hd].iter_mut().zip(&src[t * hd..(t + 1) * hd]) {
                            o.write(v);
                        }
                    }
                }
            })
        })
    };
    (out, probs)
}

multiversion! {
    /// The backward pass for one image: `g` is that image's `[N, 3D]` slice of the qkv gradient
    /// (every head writes all of its own columns).
    fn backward_image(qkv: &[f32], probs: &[f32], dout: &[f32], dm: Dims, img: usize, g: &mut [f32]) {
        let Dims { n, h, hd, .. } = dm;
        let (d, np) = (dm.d(), n.div_ceil(8) * 8);
        let d3 = 3 * d;
        let scale = (hd as f32).powf(-0.5);
        let (mut ds, mut dst, mut pt, mut dp) = (vec![0f32; n * n], vec![0f32; n * n], vec![0f32; n * n], vec![0f32; np]);
        for head in 0..h {
            let p = &probs[(img * h + head) * n * n..][..n * n];
            let go = &dout[img * n * d + head * hd..];
            let local = |t: usize, part: usize| (t * 3 + part) * d + head * hd;
            let vt = transposed(qkv, dm, img, 2, head, np);
            for i in 0..n {
                // dP = dO Vᵀ, then dS = P (dP - sum_j P dP) / √hd
                mat_rows(&go[i * d..][..hd], &vt, np, &mut dp);
                let pi = &p[i * n..(i + 1) * n];
                let weighted = dot(pi, &dp[..n]);
                for ((s, &pij), &dpij) in ds[i * n..(i + 1) * n].iter_mut().zip(pi).zip(&dp[..n]) {
                    *s = pij * (dpij - weighted) * scale;
                }
            }
            transpose(&ds, n, n, &mut dst);
            transpose(p, n, n, &mut pt);
            // dQ = dS K ; dK = dSᵀ Q ; dV = Pᵀ dO
            let (q, k) = (&qkv[dm.at(img, 0, 0, head)..], &qkv[dm.at(img, 0, 1, head)..]);
            for i in 0..n {
                mat_rows(&ds[i * n..(i + 1) * n], k, d3, &mut g[local(i, 0)..][..hd]);
                mat_rows(&dst[i * n..(i + 1) * n], q, d3, &mut g[local(i, 1)..][..hd]);
                mat_rows(&pt[i * n..(i + 1) * n], go, d, &mut g[local(i, 2)..][..hd]);
            }
        }
    }
}

/// Gradient with respect to qkv `[B, N, 3D]` from the output gradient `[B, N, D]`.
fn backward_kernel(qkv: &[f32], probs: &[f32], dout: &[f32], dm: Dims) -> Vec<f32> {
    let Dims { b, n, .. } = dm;
    let d = dm.d();
    // One task per image, zeroing its own rows: heads write disjoint column ranges of them.
    // SAFETY: the chunks cover the buffer and `zeroed` writes every value of each.
    unsafe { init_f32(b * n * 3 * d, |dqkv| dqkv.par_chunks_mut(n * 3 * d).enumerate().for_each(|(img, g)| backward_image(qkv, probs, dout, dm, img, zeroed(g)))) }
}

/// The backend operation: implemented for flex and for autodiff over flex.
#[backend_extension(Flex, Autodiff)]
pub trait AttentionBackend: burn::backend::Backend {
    /// `qkv: [B, N, 3D] -> [B, N, D]` with `heads` heads.
    fn fused_attention(qkv: FloatTensor<Self>, heads: usize) -> FloatTensor<Self>;
}

/// The raw kernels, on the concrete backend that runs them.
pub trait AttentionKernels: burn::backend::Backend {
    /// Output and the attention probabilities kept for the backward pass.
    fn fused_attention_forward(qkv: FloatTensor<Self>, heads: usize) -> (FloatTensor<Self>, FloatTensor<Self>);
    /// Gradient with respect to qkv.
    fn fused_attention_backward(qkv: FloatTensor<Self>, probs: FloatTensor<Self>, dout: FloatTensor<Self>, heads: usize) -> FloatTensor<Self>;
}

impl AttentionKernels for Flex {
    fn fused_attention_forward(qkv: FlexTensor, heads: usize) -> (FlexTensor, FlexTensor) {
        let dm = Dims::of(&qkv, heads);
        let (out, probs) = forward_kernel(&contiguous_f32(&qkv), dm);
        (
            FlexTensor::from_data(TensorData::new(out, Shape::from(vec![dm.b, dm.n, dm.d()]))),
            FlexTensor::from_data(TensorData::new(probs, Shape::from(vec![dm.b, dm.h, dm.n, dm.n]))),
        )
    }

    fn fused_attention_backward(qkv: FlexTensor, probs: FlexTensor, dout: FlexTensor, heads: usize) -> FlexTensor {
        let dm = Dims::of(&qkv, heads);
        let g = backward_kernel(&contiguous_f32(&qkv), &contiguous_f32(&probs), &contiguous_f32(&dout), dm);
        FlexTensor::from_data(TensorData::new(g, qkv.shape()))
    }
}

impl AttentionBackend for Flex {
    fn fused_attention(qkv: FlexTensor, heads: usize) -> FlexTensor {
        Self::fused_attention_forward(qkv, heads).0
    }
}

impl<B: AttentionBackend + AttentionKernels, C: CheckpointStrategy> AttentionBackend for Autodiff<B, C> {
    fn fused_attention(qkv: FloatTensor<Self>, heads: usize) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct AttentionBackward;

        impl<B: AttentionKernels> Backward<B, 1> for AttentionBackward {
            type State = (FloatTensor<B>, FloatTensor<B>, usize);

            fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [node] = ops.parents;
                let dout = grads.consume::<B>(&ops.node);
                let (qkv, probs, heads) = ops.state;
                if let Some(node) = node {
                    grads.register::<B>(node.id, B::fused_attention_backward(qkv, probs, dout, heads));
                }
            }
        }

        match AttentionBackward.prepare::<C>([qkv.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (out, probs) = B::fused_attention_forward(qkv.primitive().clone(), heads);
                prep.finish((qkv.into_primitive(), probs, heads), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_attention(qkv.into_primitive(), heads)),
        }
    }
}

/// Self-attention of a fused projection `qkv: [B, N, 3D]` (q, k, v each `D = heads x head width`,
/// as timm's `qkv` linear) `-> [B, N, D]`: the fused op on flex f32, burn's generic ops elsewhere.
pub fn attention(qkv: Tensor<3>, heads: usize) -> Tensor<3> {
    if on_flex_f32(&qkv) {
        return Tensor::from_dispatch(Dispatch::fused_attention(qkv.into_dispatch(), heads));
    }
    generic_attention(qkv, heads)
}

/// The same computation with burn's generic tensor ops (any backend).
pub fn generic_attention(qkv: Tensor<3>, heads: usize) -> Tensor<3> {
    scores_attention(qkv, heads, None)
}

/// Self-attention with an additive bias on the scores, `softmax(q kᵀ / √hd + bias) v`, on burn's
/// generic ops: `bias: [1 or B, H, N, N]` carries a relative position bias (BEiT, Swin) and/or a
/// shifted-window mask (Swin, large negative values where attention is not allowed).
pub fn attention_with_bias(qkv: Tensor<3>, heads: usize, bias: Tensor<4>) -> Tensor<3> {
    scores_attention(qkv, heads, Some(bias))
}

fn scores_attention(qkv: Tensor<3>, heads: usize, bias: Option<Tensor<4>>) -> Tensor<3> {
    let [b, n, d3] = qkv.dims();
    let (d, h) = (d3 / 3, heads);
    let hd = d / h;
    // [B, N, 3, H, hd] -> [3, B, H, N, hd]
    let qkv = qkv.reshape([b, n, 3, h, hd]).permute([2, 0, 3, 1, 4]);
    let q = qkv.clone().slice([0..1]).reshape([b, h, n, hd]);
    let k = qkv.clone().slice([1..2]).reshape([b, h, n, hd]);
    let v = qkv.slice([2..3]).reshape([b, h, n, hd]);
    let mut scores = q.matmul(k.swap_dims(2, 3)).mul_scalar((hd as f64).powf(-0.5));
    if let Some(bias) = bias {
        scores = scores + bias;
    }
    burn::tensor::activation::softmax(scores, 3).matmul(v).swap_dims(1, 2).reshape([b, n, d])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    #[test]
    fn fused_attention_matches_generic_forward_and_gradient() {
        let device = Device::flex().autodiff();
        device.seed(0);
        for (b, n, heads, hd) in [(3, 13, 3, 64), (2, 50, 4, 32), (2, 5, 2, 12)] {
            let d = heads * hd;
            let qkv = Tensor::<3>::random([b, n, 3 * d], Distribution::Normal(0.0, 1.0), &device).require_grad();
            let w = Tensor::<3>::random([b, n, d], Distribution::Default, &device);
            let fused = attention(qkv.clone(), heads);
            let generic = generic_attention(qkv.clone(), heads);
            let diff = (fused.clone() - generic.clone()).abs().max().into_scalar::<f32>();
            assert!(diff < 1e-5, "forward differs by {diff} at {:?}", (b, n, heads, hd));
            let gf = qkv.grad(&(fused * w.clone()).sum().backward()).unwrap();
            let gg = qkv.grad(&(generic * w).sum().backward()).unwrap();
            let diff = (gf - gg).abs().max().into_scalar::<f32>();
            assert!(diff < 1e-5, "gradient differs by {diff} at {:?}", (b, n, heads, hd));
        }
    }
}
