//! Multi-head self-attention from a fused qkv projection, `softmax(q kᵀ / √d + bias) v` per head,
//! as one op with its own backward. The optional score bias (BEiT's relative position bias; Swin's,
//! plus its shifted-window masks) is shared by groups of images and gets its gradient too.
//!
//! The generic path splits qkv with permutes (copies), runs batched matmuls on tiny per-head
//! matrices (13 or 50 tokens in the small MAE), a softmax, and records each step for autodiff.
//! Here one task per image reads q, k and v of every head in place from its rows of the
//! `[B, N, 3D]` projection (the next image's rows prefetched meanwhile), keeps the `N x N`
//! probabilities for the backward pass, and writes its `[N, D]` rows ready for the output
//! projection; tasks run on rayon's pool. (A batch of one image therefore runs its attention on
//! one thread; its projections, most of the work, still use all of them.)

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::{Shape, Tensor, TensorData};
use rayon::prelude::*;

use super::{assume_init, contiguous_f32, exp, fold8, init_f32, on_flex_f32, prefetch, sum8, zeroed};

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
    /// Token count rounded up to whole 8-wide vectors: the width of score rows.
    fn np(&self) -> usize {
        self.n.div_ceil(8) * 8
    }
    /// Head `head`'s q, k and v inside one image's `[N, 3D]` rows of qkv.
    fn head<'a>(&self, x: &'a [f32], head: usize) -> [Rows<'a>; 3] {
        let (d, x) = (self.d(), Rows::new(x, 3 * self.d()));
        [0, d, 2 * d].map(|part| x.from(0, part + head * self.hd))
    }
}

/// Image `img`'s `len` values of a buffer laid out image by image, the next image's values
/// prefetched meanwhile for the task that reads them next.
fn image(buf: &[f32], img: usize, len: usize) -> &[f32] {
    prefetch(buf.get((img + 1) * len..(img + 2) * len).unwrap_or_default());
    &buf[img * len..][..len]
}

/// `t[c * np + j] = m[j][c]` for `j < n`, `c < hd`: one head's k or v as an `[hd, np]` matrix, so
/// that a row of `q kᵀ` is a product over whole vectors. Columns from `n` to `np` keep the zeros
/// `t` started with.
#[inline(always)]
fn transposed(m: Rows, n: usize, hd: usize, np: usize, t: &mut [f32]) {
    for j in 0..n {
        for (c, &v) in m.from(j, 0).v[..hd].iter().enumerate() {
            t[c * np + j] = v;
        }
    }
}

/// A row-major matrix in a slice, its rows `ld` values apart (a head's columns inside qkv rows).
#[derive(Clone, Copy)]
struct Rows<'a> {
    v: &'a [f32],
    ld: usize,
}

impl<'a> Rows<'a> {
    fn new(v: &'a [f32], ld: usize) -> Self {
        Rows { v, ld }
    }
    /// The same rows from row `i` and column `j` on.
    fn from(self, i: usize, j: usize) -> Self {
        Rows { v: &self.v[i * self.ld + j..], ld: self.ld }
    }
}

/// `R` rows by `V` columns of `C = A B` held in registers (`c`'s rows `ldc` apart), where `A` is
/// `a`, or with `AT` the transpose of `a` (so that `Pᵀ dO` and `dSᵀ Q` need no transposed
/// copies): each loaded row of `B` serves `R` outputs and the `R x V / 8` accumulators are
/// independent, so the multiply-adds are not waiting on each other. Within the AVX2 + FMA kernels
/// `mul_add` is one instruction (the baseline build, for x86-64 CPUs without FMA, calls the C
/// library's `fmaf`: correct, slower).
#[inline(always)]
fn tile<const AT: bool, const R: usize, const V: usize>(a: Rows, k: usize, b: Rows, c: &mut [f32], ldc: usize) {
    let a_len = if AT { (k - 1) * a.ld + R } else { (R - 1) * a.ld + k };
    assert!(k > 0 && a.v.len() >= a_len && b.v.len() >= (k - 1) * b.ld + V && c.len() >= (R - 1) * ldc + V);
    let mut acc = [[0f32; V]; R];
    for kk in 0..k {
        // SAFETY (both reads): in bounds by the assertion above, as kk < k and r < R.
        let row: &[f32; V] = unsafe { b.v.get_unchecked(kk * b.ld..kk * b.ld + V) }.try_into().unwrap();
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = unsafe { *a.v.get_unchecked(if AT { kk * a.ld + r } else { r * a.ld + kk }) };
            for l in 0..V {
                acc[l] = x.mul_add(row[l], acc[l]);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        c[r * ldc..][..V].copy_from_slice(acc);
    }
}

/// `R` rows of `C = A B`, `w` (a multiple of 8) columns wide, in [`tile`]s of 16 and 8 columns.
#[inline(always)]
fn row_block<const AT: bool, const R: usize>(a: Rows, k: usize, b: Rows, w: usize, c: &mut [f32], ldc: usize) {
    let mut col = 0;
    while col + 16 <= w {
        tile::<AT, R, 16>(a, k, b.from(0, col), &mut c[col..], ldc);
        col += 16;
    }
    if col < w {
        tile::<AT, R, 8>(a, k, b.from(0, col), &mut c[col..], ldc);
    }
}

/// `C = A B` for `A: m x k` (`a`, or with `AT` the transpose of `a: k x m`), `B: k x w` and
/// `C: m x w` (`c`'s rows `ldc` apart): the one primitive of both passes (the matrices are one
/// image's per-head slices, 13 to 50 tokens, too small for a GEMM library's packing to pay).
/// Register-blocked in 4 rows when `w` is a multiple of 8 (head widths, token counts padded by
/// [`transposed`]), plain loops otherwise.
#[inline(always)]
fn matmul<const AT: bool>(a: Rows, m: usize, k: usize, b: Rows, w: usize, c: &mut [f32], ldc: usize) {
    if !w.is_multiple_of(8) {
        for i in 0..m {
            let ci = &mut c[i * ldc..][..w];
            ci.fill(0.0);
            for kk in 0..k {
                let x = if AT { a.v[kk * a.ld + i] } else { a.v[i * a.ld + kk] };
                ci.iter_mut().zip(&b.from(kk, 0).v[..w]).for_each(|(o, &y)| *o += x * y);
            }
        }
        return;
    }
    let mut i = 0;
    while i < m {
        let rows = match m - i {
            4.. => 4,
            2 | 3 => 2,
            _ => 1,
        };
        let (ai, ci) = (if AT { a.from(0, i) } else { a.from(i, 0) }, &mut c[i * ldc..]);
        match rows {
            4 => row_block::<AT, 4>(ai, k, b, w, ci, ldc),
            2 => row_block::<AT, 2>(ai, k, b, w, ci, ldc),
            _ => row_block::<AT, 1>(ai, k, b, w, ci, ldc),
        }
        i += rows;
    }
}

multiversion! {
    /// The forward pass for one image, all heads: `x` its `[N, 3D]` rows of qkv, `bias` its score
    /// bias `[H, N, N]` if any, `p` its probabilities `[H, N, N]` (or, when nothing keeps them, one
    /// `[N, N]` scratch that each head overwrites), `o` its output rows `[N, D]`.
    /// Reading one image's contiguous qkv rows, rather than one head's slices scattered over all of
    /// them, lets the prefetcher stream.
    fn forward_image(x: &[f32], bias: Option<&[f32]>, dm: Dims, p: &mut [f32], o: &mut [f32]) {
        let Dims { n, h, hd, .. } = dm;
        let (d, np) = (dm.d(), dm.np());
        let scale = (hd as f32).powf(-0.5);
        let (mut kt, mut s) = (vec![0f32; hd * np], vec![0f32; n * np]);
        for head in 0..h {
            let [q, k, v] = dm.head(x, head);
            let at = if p.len() == n * n { 0 } else { head * n * n };
            let p = &mut p[at..][..n * n];
            transposed(k, n, hd, np, &mut kt);
            matmul::<false>(q, n, hd, Rows::new(&kt, np), np, &mut s, np);
            for (i, (si, pi)) in s.chunks_exact_mut(np).zip(p.chunks_exact_mut(n)).enumerate() {
                // exp in its own loop: with the running sum beside it the loop would not vectorise
                match bias {
                    None => {
                        let max = fold8([&si[..n]], f32::NEG_INFINITY, f32::max, |[s]| s);
                        for (pj, &sj) in pi.iter_mut().zip(si.iter()) {
                            *pj = exp((sj - max) * scale);
                        }
                    }
                    Some(bias) => {
                        let li = &mut si[..n];
                        for (l, &b) in li.iter_mut().zip(&bias[(head * n + i) * n..][..n]) {
                            *l = l.mul_add(scale, b);
                        }
                        let max = fold8([li], f32::NEG_INFINITY, f32::max, |[l]| l);
                        for (pj, &lj) in pi.iter_mut().zip(li.iter()) {
                            *pj = exp(lj - max);
                        }
                    }
                }
                let inv = 1.0 / sum8([pi], |[p]| p);
                pi.iter_mut().for_each(|pj| *pj *= inv);
            }
            matmul::<false>(Rows::new(p, n), n, n, v, hd, &mut o[head * hd..], d);
        }
    }
}

/// Returns (out `[B, N, D]`, probabilities `[B, H, N, N]` if `keep_probs`); image `i` adds
/// `bias[i mod G]` of a bias `[G, H, N, N]` to its scores. Without a backward pass to feed, the
/// probabilities live in one `[N, N]` scratch per task: inference neither allocates nor zeroes the
/// `B x H x N x N` values (119 MB per layer for 64 images of ViT-B/16).
fn forward_kernel(qkv: &[f32], bias: Option<&[f32]>, dm: Dims, keep_probs: bool) -> (Vec<f32>, Option<Vec<f32>>) {
    let Dims { b, n, h, .. } = dm;
    let d = dm.d();
    let (qkv_len, hnn) = (n * 3 * d, h * n * n);
    let bias_of = |img| bias.map(|bias| group(bias, img, hnn));
    // One task per image; the chunks are zeroed first only to hand them over as initialised
    // values (in the parallel task, hot in cache): the kernel writes every value.
    let mut probs = None;
    // SAFETY (both): the chunks cover the buffers and `zeroed` writes every value of each.
    let out = unsafe {
        init_f32(b * n * d, |out| {
            if keep_probs {
                probs = Some(init_f32(b * hnn, |probs| {
                    probs.par_chunks_mut(hnn).zip(out.par_chunks_mut(n * d)).enumerate().for_each(|(img, (p, o))| {
                        forward_image(image(qkv, img, qkv_len), bias_of(img), dm, zeroed(p), zeroed(o))
                    })
                }));
            } else {
                out.par_chunks_mut(n * d).enumerate().for_each_init(
                    || vec![0f32; n * n],
                    |p, (img, o)| forward_image(image(qkv, img, qkv_len), bias_of(img), dm, p, zeroed(o)),
                );
            }
        })
    };
    (out, probs)
}

multiversion! {
    /// The backward pass for one image: `x` its `[N, 3D]` rows of qkv, `p` its probabilities,
    /// `dout` its `[N, D]` output gradient, `g` its `[N, 3D]` rows of the qkv gradient (every head
    /// writes all of its own columns) and, when asked for, `dl` its `[H, N, N]` gradient of the
    /// scores after scaling and bias (what the bias's gradient sums).
    fn backward_image(x: &[f32], p: &[f32], dout: &[f32], dm: Dims, g: &mut [f32], dl: Option<&mut [f32]>) {
        let Dims { n, h, hd, .. } = dm;
        let (d, np) = (dm.d(), dm.np());
        let scale = (hd as f32).powf(-0.5);
        let (mut vt, mut dp) = (vec![0f32; hd * np], vec![0f32; n * np]);
        let mut ds = vec![0f32; n * n];
        let mut dl = dl;
        for head in 0..h {
            let [q, k, v] = dm.head(x, head);
            let (p, go) = (&p[head * n * n..][..n * n], Rows::new(&dout[head * hd..], d));
            // dP = dO Vᵀ, then dL = P (dP - sum_j P dP) and dS = dL / √hd
            transposed(v, n, hd, np, &mut vt);
            matmul::<false>(go, n, hd, Rows::new(&vt, np), np, &mut dp, np);
            for ((dsi, pi), dpi) in ds.chunks_exact_mut(n).zip(p.chunks_exact(n)).zip(dp.chunks_exact(np)) {
                let weighted = sum8([pi, &dpi[..n]], |[p, dp]| p * dp);
                for ((s, &pij), &dpij) in dsi.iter_mut().zip(pi).zip(dpi) {
                    *s = pij * (dpij - weighted);
                }
            }
            if let Some(dl) = dl.as_deref_mut() {
                dl[head * n * n..][..n * n].copy_from_slice(&ds);
            }
            ds.iter_mut().for_each(|s| *s *= scale);
            // dQ = dS K ; dK = dSᵀ Q ; dV = Pᵀ dO
            matmul::<false>(Rows::new(&ds, n), n, n, k, hd, &mut g[head * hd..], 3 * d);
            matmul::<true>(Rows::new(&ds, n), n, n, q, hd, &mut g[d + head * hd..], 3 * d);
            matmul::<true>(Rows::new(p, n), n, n, go, hd, &mut g[2 * d + head * hd..], 3 * d);
        }
    }
}

/// Gradient with respect to qkv `[B, N, 3D]` from the output gradient `[B, N, D]` and, with
/// `bias_groups = Some(G)`, with respect to a score bias `[G, H, N, N]` (image `i` added `bias[i mod G]`).
fn backward_kernel(
    qkv: &[f32],
    probs: &[f32],
    dout: &[f32],
    dm: Dims,
    bias_groups: Option<usize>,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let Dims { b, n, h, .. } = dm;
    let (d, x, hnn) = (dm.d(), n * 3 * dm.d(), h * n * n);
    // The scores' gradient per image, when the bias needs it: summed over each group below.
    let mut dl = bias_groups.map(|_| Vec::<f32>::with_capacity(b * hnn));
    // One task per image, zeroing its own rows (hot in cache) only to hand them over as
    // initialised values: every head writes all of its columns.
    // SAFETY: the chunks cover the buffer and `zeroed` writes every value of each; `backward_image`
    // writes every value of its `dl` chunk (each head copies its whole `[N, N]` gradient).
    let dqkv = unsafe {
        init_f32(b * x, |dqkv| {
            let run = |img: usize, g: &mut [std::mem::MaybeUninit<f32>], dl: Option<&mut [f32]>| {
                let p = image(probs, img, hnn);
                backward_image(image(qkv, img, x), p, image(dout, img, n * d), dm, zeroed(g), dl)
            };
            match dl.as_mut() {
                None => dqkv.par_chunks_mut(x).enumerate().for_each(|(img, g)| run(img, g, None)),
                Some(dl) => dqkv
                    .par_chunks_mut(x)
                    .zip(dl.spare_capacity_mut()[..b * hnn].par_chunks_mut(hnn))
                    .enumerate()
                    .for_each(|(img, (g, dl))| run(img, g, Some(assume_init(dl)))),
            }
        })
    };
    let dbias = bias_groups.zip(dl).map(|(groups, mut dl)| {
        // SAFETY: every image's chunk was written above.
        unsafe { dl.set_len(b * hnn) };
        group_sums(&dl, groups, hnn)
    });
    (dqkv, dbias)
}

/// Image `img`'s `[H, N, N]` bias of a bias `[G, H, N, N]` shared by the images `img mod G`.
fn group(bias: &[f32], img: usize, len: usize) -> &[f32] {
    let groups = bias.len() / len;
    &bias[img % groups * len..][..len]
}

/// `out[g] = Σ_{i mod G = g} per_image[i]` for `per_image: [B, len]`, summed in image order (the
/// result does not depend on the thread count); columns in parallel.
fn group_sums(per_image: &[f32], groups: usize, len: usize) -> Vec<f32> {
    const COLUMNS: usize = 1024;
    let images = per_image.len() / len;
    let mut out = vec![0f32; groups * len];
    out.par_chunks_mut(len).enumerate().for_each(|(g, out)| {
        out.par_chunks_mut(COLUMNS).enumerate().for_each(|(c, out)| {
            for img in (g..images).step_by(groups) {
                let src = &per_image[img * len + c * COLUMNS..][..out.len()];
                out.iter_mut().zip(src).for_each(|(o, s)| *o += s);
            }
        })
    });
    out
}

/// The backend operation: implemented for flex and for autodiff over flex.
#[backend_extension(Flex, Autodiff)]
pub trait AttentionBackend: burn::backend::Backend {
    /// `qkv: [B, N, 3D] -> [B, N, D]` with `heads` heads.
    fn fused_attention(qkv: FloatTensor<Self>, heads: usize) -> FloatTensor<Self>;
    /// The same with a score bias `[G, H, N, N]`, image `i` adding `bias[i mod G]`.
    fn fused_attention_bias(qkv: FloatTensor<Self>, bias: FloatTensor<Self>, heads: usize) -> FloatTensor<Self>;
}

/// The raw kernels, on the concrete backend that runs them.
pub trait AttentionKernels: burn::backend::Backend {
    /// Output and the attention probabilities kept for the backward pass.
    fn fused_attention_forward(
        qkv: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        heads: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
    /// Gradient with respect to qkv and, with `bias_shape`, to the bias of that shape.
    fn fused_attention_backward(
        qkv: FloatTensor<Self>,
        probs: FloatTensor<Self>,
        dout: FloatTensor<Self>,
        heads: usize,
        bias_shape: Option<Shape>,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>);
}

impl AttentionKernels for Flex {
    fn fused_attention_forward(qkv: FlexTensor, bias: Option<FlexTensor>, heads: usize) -> (FlexTensor, FlexTensor) {
        let (out, probs) = flex_forward(qkv, bias, heads, true);
        (out, probs.expect("probabilities were asked for"))
    }

    fn fused_attention_backward(
        qkv: FlexTensor,
        probs: FlexTensor,
        dout: FlexTensor,
        heads: usize,
        bias_shape: Option<Shape>,
    ) -> (FlexTensor, Option<FlexTensor>) {
        let dm = Dims::of(&qkv, heads);
        let groups = bias_shape.as_ref().map(|s| s[0]);
        let (g, dbias) =
            backward_kernel(&contiguous_f32(&qkv), &contiguous_f32(&probs), &contiguous_f32(&dout), dm, groups);
        let dbias = dbias.zip(bias_shape).map(|(v, shape)| FlexTensor::from_data(TensorData::new(v, shape)));
        (FlexTensor::from_data(TensorData::new(g, qkv.shape())), dbias)
    }
}

/// The forward kernel on flex tensors: the output `[B, N, D]` and, if `keep_probs`, the
/// probabilities `[B, H, N, N]`.
fn flex_forward(
    qkv: FlexTensor,
    bias: Option<FlexTensor>,
    heads: usize,
    keep_probs: bool,
) -> (FlexTensor, Option<FlexTensor>) {
    let dm = Dims::of(&qkv, heads);
    let bias = bias.as_ref().map(contiguous_f32);
    let (out, probs) = forward_kernel(&contiguous_f32(&qkv), bias.as_deref(), dm, keep_probs);
    let probs = probs.map(|p| FlexTensor::from_data(TensorData::new(p, Shape::from(vec![dm.b, dm.h, dm.n, dm.n]))));
    (FlexTensor::from_data(TensorData::new(out, Shape::from(vec![dm.b, dm.n, dm.d()]))), probs)
}

impl AttentionBackend for Flex {
    fn fused_attention(qkv: FlexTensor, heads: usize) -> FlexTensor {
        flex_forward(qkv, None, heads, false).0
    }

    fn fused_attention_bias(qkv: FlexTensor, bias: FlexTensor, heads: usize) -> FlexTensor {
        flex_forward(qkv, Some(bias), heads, false).0
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
                    grads.register::<B>(node.id, B::fused_attention_backward(qkv, probs, dout, heads, None).0);
                }
            }
        }

        match AttentionBackward.prepare::<C>([qkv.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (out, probs) = B::fused_attention_forward(qkv.primitive().clone(), None, heads);
                prep.finish((qkv.into_primitive(), probs, heads), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_attention(qkv.into_primitive(), heads)),
        }
    }

    fn fused_attention_bias(qkv: FloatTensor<Self>, bias: FloatTensor<Self>, heads: usize) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct AttentionBiasBackward;

        impl<B: AttentionKernels> Backward<B, 2> for AttentionBiasBackward {
            /// qkv, the probabilities, the bias's shape and the head count.
            type State = (FloatTensor<B>, FloatTensor<B>, Shape, usize);

            fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [node_qkv, node_bias] = ops.parents;
                let dout = grads.consume::<B>(&ops.node);
                let (qkv, probs, bias_shape, heads) = ops.state;
                let wanted = node_bias.is_some().then_some(bias_shape);
                let (dqkv, dbias) = B::fused_attention_backward(qkv, probs, dout, heads, wanted);
                if let Some(node) = node_qkv {
                    grads.register::<B>(node.id, dqkv);
                }
                if let (Some(node), Some(grad)) = (node_bias, dbias) {
                    grads.register::<B>(node.id, grad);
                }
            }
        }

        match AttentionBiasBackward.prepare::<C>([qkv.node(), bias.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let shape = bias.primitive().shape();
                let (out, probs) =
                    B::fused_attention_forward(qkv.primitive().clone(), Some(bias.into_primitive()), heads);
                prep.finish((qkv.into_primitive(), probs, shape, heads), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::fused_attention_bias(qkv.into_primitive(), bias.into_primitive(), heads))
            }
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

/// Self-attention with an additive bias on the scores, `softmax(q kᵀ / √hd + bias) v`:
/// `bias: [G, H, N, N]` with `G` dividing `B`, image `i` adding `bias[i mod G]`, carries a relative
/// position bias (BEiT, Swin; `G = 1`) and/or a shifted-window mask (Swin: one per window of an
/// image, large negative values where attention is not allowed). The fused op on flex f32, burn's
/// generic ops elsewhere.
pub fn attention_with_bias(qkv: Tensor<3>, heads: usize, bias: Tensor<4>) -> Tensor<3> {
    let [b, n, d3] = qkv.dims();
    let [g, h, bn, bm] = bias.dims();
    assert!(
        g > 0 && b % g == 0 && h == heads && bn == n && bm == n && d3 % (3 * heads) == 0,
        "attention bias {:?} does not fit qkv {:?} with {heads} heads",
        bias.dims(),
        qkv.dims()
    );
    if on_flex_f32(&qkv) && on_flex_f32(&bias) {
        return Tensor::from_dispatch(Dispatch::fused_attention_bias(qkv.into_dispatch(), bias.into_dispatch(), heads));
    }
    generic_attention_with_bias(qkv, heads, bias)
}

/// [`attention_with_bias`] with burn's generic tensor ops (any backend).
pub fn generic_attention_with_bias(qkv: Tensor<3>, heads: usize, bias: Tensor<4>) -> Tensor<3> {
    scores_attention(qkv, heads, Some(bias))
}

fn scores_attention(qkv: Tensor<3>, heads: usize, bias: Option<Tensor<4>>) -> Tensor<3> {
    let [b, n, d3] = qkv.dims();
    let (probs, v) = probabilities_and_values(qkv, heads, bias);
    probs.matmul(v).swap_dims(1, 2).reshape([b, n, d3 / 3])
}

/// The attention probabilities `softmax(q kᵀ / √hd + bias)`, `[B, H, N, N]` (row: query, column:
/// key), of a fused projection `qkv: [B, N, 3D]` with the optional bias of [`attention_with_bias`]:
/// what attention maps draw.
pub fn attention_probabilities(qkv: Tensor<3>, heads: usize, bias: Option<Tensor<4>>) -> Tensor<4> {
    probabilities_and_values(qkv, heads, bias).0
}

fn probabilities_and_values(qkv: Tensor<3>, heads: usize, bias: Option<Tensor<4>>) -> (Tensor<4>, Tensor<4>) {
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
        // [G, H, N, N] to one per image (image i takes bias[i mod G]); G = 1 broadcasts
        let g = bias.dims()[0];
        let bias =
            if g > 1 && g < b { bias.unsqueeze_dim::<5>(0).repeat_dim(0, b / g).reshape([b, h, n, n]) } else { bias };
        scores = scores + bias;
    }
    (burn::tensor::activation::softmax(scores, 3), v)
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

    #[test]
    fn inference_attention_without_kept_probabilities_matches_generic() {
        // no autodiff: the kernel reuses one scratch for every head's probabilities
        let device = Device::flex();
        device.seed(2);
        for (b, n, heads, hd, g) in [(3, 13, 3, 64, 1), (8, 49, 2, 24, 4), (2, 5, 1, 12, 2)] {
            let d = heads * hd;
            let qkv = Tensor::<3>::random([b, n, 3 * d], Distribution::Normal(0.0, 1.0), &device);
            let bias = Tensor::<4>::random([g, heads, n, n], Distribution::Normal(0.0, 1.0), &device);
            let dispatches = crate::ops::fused_dispatches();
            let (fused, fused_bias) =
                (attention(qkv.clone(), heads), attention_with_bias(qkv.clone(), heads, bias.clone()));
            // one count for `attention`, one per input `attention_with_bias` checks
            assert_eq!(crate::ops::fused_dispatches(), dispatches + 3, "the fused kernel ran");
            let at = (b, n, heads, hd, g);
            let diff = crate::ops::relative_diff(fused, generic_attention(qkv.clone(), heads));
            assert!(diff < 1e-5, "forward differs by {diff} at {at:?}");
            let diff = crate::ops::relative_diff(fused_bias, generic_attention_with_bias(qkv, heads, bias));
            assert!(diff < 1e-5, "forward with bias differs by {diff} at {at:?}");
        }
    }

    #[test]
    fn fused_attention_with_bias_matches_generic_forward_and_gradients() {
        let device = Device::flex().autodiff();
        device.seed(1);
        // (batch, tokens, heads, head width, bias groups): BEiT's shared bias (G = 1), Swin's
        // shifted windows (G windows per image, a -100 mask), one bias per image (G = B)
        for (b, n, heads, hd, g) in [(3, 13, 3, 64, 1), (8, 49, 2, 24, 4), (2, 5, 2, 12, 2)] {
            let d = heads * hd;
            let qkv = Tensor::<3>::random([b, n, 3 * d], Distribution::Normal(0.0, 1.0), &device).require_grad();
            let mask = Tensor::<4>::random([g, 1, n, n], Distribution::Bernoulli(0.3), &device).mul_scalar(-100.0);
            let bias = Tensor::<4>::random([g, heads, n, n], Distribution::Normal(0.0, 1.0), &device) + mask;
            let bias = bias.detach().require_grad();
            let w = Tensor::<3>::random([b, n, d], Distribution::Default, &device);
            let dispatches = crate::ops::fused_dispatches();
            let fused = attention_with_bias(qkv.clone(), heads, bias.clone());
            assert_eq!(crate::ops::fused_dispatches(), dispatches + 2, "the fused kernel ran");
            let generic = generic_attention_with_bias(qkv.clone(), heads, bias.clone());
            let at = (b, n, heads, hd, g);
            let diff = crate::ops::relative_diff(fused.clone(), generic.clone());
            assert!(diff < 1e-5, "forward differs by {diff} at {at:?}");
            let (gf, gg) = ((fused * w.clone()).sum().backward(), (generic * w).sum().backward());
            let diff = crate::ops::relative_diff(qkv.grad(&gf).unwrap(), qkv.grad(&gg).unwrap());
            assert!(diff < 1e-5, "qkv gradient differs by {diff} at {at:?}");
            let diff = crate::ops::relative_diff(bias.grad(&gf).unwrap(), bias.grad(&gg).unwrap());
            assert!(diff < 1e-5, "bias gradient differs by {diff} at {at:?}");
        }
    }
}
