//! Vision Transformer building blocks shared by every model in mim (MAE, BEiT, classifiers):
//! patch embedding, 2-D sin-cos position embeddings, and the pre-norm transformer [`Block`].
//!
//! Field names follow the official MAE / timm checkpoints (`blocks.0.attn.qkv.weight`, ...), so
//! published weights map onto these modules directly. Linear weights are stored `[in, out]`
//! (burn's layout), i.e. transposed with respect to PyTorch.

use burn::module::{Module, Param};
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::init::{InitRng, normal, param, trunc_normal, xavier_uniform};
use crate::ops::attention::{attention, attention_with_bias};
use crate::ops::gather::gather_rows;

/// LayerNorm epsilon used by MAE / timm ViTs.
pub const LN_EPS: f64 = 1e-6;

/// Affine map `y = x W + b` with `W: [in, out]`.
#[derive(Module, Debug)]
pub struct Linear {
    /// `[in, out]`
    pub weight: Param<Tensor<2>>,
    /// `[out]`; absent in bias-free projections (Swin's patch-merging `reduction`).
    pub bias: Option<Param<Tensor<1>>>,
}

/// How linear (and patch-embedding) weights are drawn; biases always start at zero.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WeightInit {
    /// Xavier uniform (the official MAE `_init_weights`).
    XavierUniform,
    /// N(0, std²) truncated to `[-bound, bound]` (BEiT pretraining: std 0.02, bound 0.02).
    TruncNormal {
        /// Standard deviation.
        std: f32,
        /// Truncation bound.
        bound: f32,
    },
}

impl Linear {
    /// Xavier-uniform weight, zero bias (the official MAE `_init_weights`).
    pub fn new(d_in: usize, d_out: usize, rng: &mut InitRng, device: &Device) -> Self {
        Self::with_init(d_in, d_out, WeightInit::XavierUniform, rng, device)
    }

    /// Weight drawn by `init`, zero bias.
    pub fn with_init(d_in: usize, d_out: usize, init: WeightInit, rng: &mut InitRng, device: &Device) -> Self {
        let w = match init {
            WeightInit::XavierUniform => xavier_uniform(rng, d_in, d_out),
            WeightInit::TruncNormal { std, bound } => trunc_normal(rng, d_in * d_out, std, bound),
        };
        Self { weight: param(w, [d_in, d_out], device), bias: Some(param(vec![0.0; d_out], [d_out], device)) }
    }

    /// As [`Linear::new`], without a bias: `y = x W`.
    pub fn without_bias(d_in: usize, d_out: usize, rng: &mut InitRng, device: &Device) -> Self {
        Self { bias: None, ..Self::new(d_in, d_out, rng, device) }
    }

    /// `x: [..., in] -> [..., out]`.
    ///
    /// Runs as one 2-D matmul: burn 0.22 lowers a 3-D input to a broadcast batched matmul whose
    /// weight gradient is materialised per batch element, which is several times slower.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.apply(x, crate::ops::linear::linear)
    }

    /// `GELU(x W + b)` as one op (an MLP's first layer; exact, erf-based GELU).
    pub fn forward_gelu<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.apply(x, crate::ops::linear::linear_gelu)
    }

    fn apply<const D: usize>(
        &self,
        x: Tensor<D>,
        op: fn(Tensor<2>, Tensor<2>, Option<Tensor<1>>) -> Tensor<2>,
    ) -> Tensor<D> {
        let dims = x.dims();
        let d_in = dims[D - 1];
        let rows = dims[..D - 1].iter().product::<usize>();
        let w = self.weight.val();
        let d_out = w.dims()[1];
        let y = op(x.reshape([rows, d_in]), w, self.bias.as_ref().map(|b| b.val()));
        let mut out = dims;
        out[D - 1] = d_out;
        y.reshape(out)
    }
}

/// Layer normalisation over the last dimension with a learned scale and shift.
#[derive(Module, Debug)]
pub struct LayerNorm {
    /// Scale `[d]`.
    pub weight: Param<Tensor<1>>,
    /// Shift `[d]`.
    pub bias: Param<Tensor<1>>,
    eps: f64,
}

impl LayerNorm {
    /// Ones / zeros, as PyTorch; epsilon [`LN_EPS`].
    pub fn new(d: usize, device: &Device) -> Self {
        Self::with_eps(d, LN_EPS, device)
    }

    /// As [`LayerNorm::new`] with another epsilon (Swin uses PyTorch's default 1e-5).
    pub fn with_eps(d: usize, eps: f64, device: &Device) -> Self {
        Self { weight: param(vec![1.0; d], [d], device), bias: param(vec![0.0; d], [d], device), eps }
    }

    /// The epsilon added to the variance.
    pub fn eps(&self) -> f64 {
        self.eps
    }

    /// `x: [..., d]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        crate::ops::layer_norm::layer_norm(x, self.weight.val(), self.bias.val(), self.eps)
    }
}

/// Multi-head self-attention with one fused qkv projection (with bias), as timm / MAE.
#[derive(Module, Debug)]
pub struct Attention {
    /// `[d, 3d]`: queries, keys, values.
    pub qkv: Linear,
    /// Output projection `[d, d]`.
    pub proj: Linear,
    /// Learned relative position bias table `[entries, H]` of models that keep one per block (Swin):
    /// stored here so checkpoint keys match (`blocks.N.attn.relative_position_bias_table`); the model
    /// turns it into the score bias passed through [`BlockExtras`], since its indexing is model-specific.
    pub relative_position_bias_table: Option<Param<Tensor<2>>>,
    num_heads: usize,
}

impl Attention {
    /// Attention of width `dim` with `num_heads` heads (`dim` divisible by `num_heads`).
    pub fn new(dim: usize, num_heads: usize, rng: &mut InitRng, device: &Device) -> Self {
        Self::with_init(dim, num_heads, WeightInit::XavierUniform, rng, device)
    }

    /// As [`Attention::new`] with weights drawn by `init`.
    pub fn with_init(dim: usize, num_heads: usize, init: WeightInit, rng: &mut InitRng, device: &Device) -> Self {
        let qkv = Linear::with_init(dim, 3 * dim, init, rng, device);
        Self {
            qkv,
            proj: Linear::with_init(dim, dim, init, rng, device),
            relative_position_bias_table: None,
            num_heads,
        }
    }

    /// `x: [B, N, D] -> [B, N, D]`: `softmax(q kᵀ / √hd) v` per head, then the output projection.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.forward_with_bias(x, None)
    }

    /// As [`Attention::forward`], with an optional additive score bias `[G, H, N, N]` (relative
    /// position bias, window masks; image `i` takes entry `i mod G`, see [`attention_with_bias`]).
    pub fn forward_with_bias(&self, x: Tensor<3>, bias: Option<Tensor<4>>) -> Tensor<3> {
        let qkv = self.qkv.forward(x);
        let out = match bias {
            None => attention(qkv, self.num_heads),
            Some(bias) => attention_with_bias(qkv, self.num_heads, bias),
        };
        self.proj.forward(out)
    }

    /// The attention probabilities `[B, H, N, N]` of `x: [B, N, D]` (with the score bias of
    /// [`Attention::forward_with_bias`]), for attention maps.
    pub fn probabilities(&self, x: Tensor<3>, bias: Option<Tensor<4>>) -> Tensor<4> {
        crate::ops::attention::attention_probabilities(self.qkv.forward(x), self.num_heads, bias)
    }

    /// Attention heads.
    pub fn num_heads(&self) -> usize {
        self.num_heads
    }
}

/// Two-layer GELU MLP.
#[derive(Module, Debug)]
pub struct Mlp {
    /// `[d, hidden]`
    pub fc1: Linear,
    /// `[hidden, d]`
    pub fc2: Linear,
}

impl Mlp {
    /// MLP `dim -> hidden -> dim`.
    pub fn new(dim: usize, hidden: usize, rng: &mut InitRng, device: &Device) -> Self {
        Self::with_init(dim, hidden, WeightInit::XavierUniform, rng, device)
    }

    /// As [`Mlp::new`] with weights drawn by `init`.
    pub fn with_init(dim: usize, hidden: usize, init: WeightInit, rng: &mut InitRng, device: &Device) -> Self {
        let fc1 = Linear::with_init(dim, hidden, init, rng, device);
        Self { fc1, fc2: Linear::with_init(hidden, dim, init, rng, device) }
    }

    /// `x: [B, N, D] -> [B, N, D]` (exact, erf-based GELU as PyTorch's default).
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.fc2.forward(self.fc1.forward_gelu(x))
    }
}

/// Pre-norm transformer block: `x + attn(norm1(x))`, then `x + mlp(norm2(x))`; with layer scale
/// (CaiT / BEiT) the branches are scaled per channel: `x + gamma_1 * attn(..)`, `x + gamma_2 * mlp(..)`.
///
/// The one block implementation used by every encoder and decoder in mim.
#[derive(Module, Debug)]
pub struct Block {
    /// Norm before attention.
    pub norm1: LayerNorm,
    /// Self-attention.
    pub attn: Attention,
    /// Norm before the MLP.
    pub norm2: LayerNorm,
    /// Feed-forward network.
    pub mlp: Mlp,
    /// Layer scale of the attention branch `[d]` (BEiT); `None` in MAE and plain ViTs.
    pub gamma_1: Option<Param<Tensor<1>>>,
    /// Layer scale of the MLP branch `[d]`.
    pub gamma_2: Option<Param<Tensor<1>>>,
}

impl Block {
    /// A block of width `dim`, `num_heads` heads and MLP hidden width `dim * mlp_ratio`.
    pub fn new(dim: usize, num_heads: usize, mlp_ratio: f64, rng: &mut InitRng, device: &Device) -> Self {
        Self::with_init(dim, num_heads, mlp_ratio, WeightInit::XavierUniform, rng, device)
    }

    /// As [`Block::new`] with linear weights drawn by `init`.
    pub fn with_init(
        dim: usize,
        num_heads: usize,
        mlp_ratio: f64,
        init: WeightInit,
        rng: &mut InitRng,
        device: &Device,
    ) -> Self {
        Self {
            norm1: LayerNorm::new(dim, device),
            attn: Attention::with_init(dim, num_heads, init, rng, device),
            norm2: LayerNorm::new(dim, device),
            mlp: Mlp::with_init(dim, (dim as f64 * mlp_ratio) as usize, init, rng, device),
            gamma_1: None,
            gamma_2: None,
        }
    }

    /// Adds layer scale: both branch scales start at `init_value` in every channel (BEiT: 0.1 for
    /// base, 1e-5 for large).
    pub fn with_layer_scale(self, init_value: f32, device: &Device) -> Self {
        let d = self.norm1.weight.dims()[0];
        let gamma = || Some(param(vec![init_value; d], [d], device));
        Self { gamma_1: gamma(), gamma_2: gamma(), ..self }
    }

    /// Sets both norms' epsilon (Hugging Face ViTs use 1e-12, the official codes 1e-6).
    pub fn with_norm_eps(mut self, eps: f64) -> Self {
        self.norm1.eps = eps;
        self.norm2.eps = eps;
        self
    }

    /// `x: [B, N, D] -> [B, N, D]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.forward_with(x, &BlockExtras::default())
    }

    /// The block with the training-time and model-specific extras of [`BlockExtras`].
    pub fn forward_with(&self, x: Tensor<3>, extras: &BlockExtras) -> Tensor<3> {
        let residual = |branch: Tensor<3>, k: usize| {
            let branch = match [&self.gamma_1, &self.gamma_2][k] {
                Some(gamma) => branch * gamma.val().unsqueeze::<3>(),
                None => branch,
            };
            match &extras.drop_path {
                Some(scales) => branch * scales[k].clone(),
                None => branch,
            }
        };
        let a = self.attn.forward_with_bias(self.norm1.forward(x.clone()), extras.attn_bias.clone());
        // Attention has mixed every token into each row; rows are independent from here on.
        let (x, a) = match &extras.rows {
            Some(ids) => (gather_rows(x, ids.clone()), gather_rows(a, ids.clone())),
            None => (x, a),
        };
        let x = x + residual(a, 0);
        let m = self.mlp.forward(self.norm2.forward(x.clone()));
        x.clone() + residual(m, 1)
    }
}

/// The attention probabilities `[B, H, N, N]` of every block of `blocks` run over the tokens
/// `x: [B, N, D]` (block `i` with the score bias `attn_bias(i)`), in order: what attention maps draw
/// (BEiT's figure 2: the [CLS] query's row).
pub fn attention_maps(
    blocks: &[Block],
    mut x: Tensor<3>,
    attn_bias: impl Fn(usize) -> Option<Tensor<4>>,
) -> Vec<Tensor<4>> {
    let mut maps = Vec::with_capacity(blocks.len());
    for (i, block) in blocks.iter().enumerate() {
        let bias = attn_bias(i);
        maps.push(block.attn.probabilities(block.norm1.forward(x.clone()), bias.clone()));
        x = block.forward_with(x, &BlockExtras { attn_bias: bias, ..BlockExtras::default() });
    }
    maps
}

/// What a [`Block`] may take besides its input.
#[derive(Debug, Clone, Default)]
pub struct BlockExtras {
    /// Additive attention score bias `[1 or B, H, N, N]` (relative position bias).
    pub attn_bias: Option<Tensor<4>>,
    /// Stochastic depth: per-sample scales `[B, 1, 1]` of the attention and MLP residual branches
    /// (0 for a dropped sample, `1 / keep_prob` for a kept one); see [`drop_path_scales`].
    pub drop_path: Option<[Tensor<3>; 2]>,
    /// `[B, R]` token rows the block returns, `[B, R, D]`: attention still reads every token, the
    /// rest of the block runs on these rows only (a last block whose other rows nothing reads).
    pub rows: Option<Tensor<2, Int>>,
}

/// Per-sample residual scales for stochastic depth ("drop path", timm's `DropPath`): each of the
/// `batch` samples keeps the branch with probability `1 - rate`, scaled by `1 / (1 - rate)`.
pub fn drop_path_scales(rate: f64, batch: usize, rng: &mut impl rand::Rng, device: &Device) -> Tensor<3> {
    let keep = 1.0 - rate;
    let v: Vec<f32> = (0..batch).map(|_| if rng.r#gen::<f64>() < keep { (1.0 / keep) as f32 } else { 0.0 }).collect();
    Tensor::from_data(TensorData::new(v, [batch, 1, 1]), device)
}

/// Runs `blocks` over the tokens `x: [B, N, D]` as fine-tuning and pretraining need them: block `i`
/// gets the score bias `attn_bias(i)`; with `drop_path = (rate, rng)`, stochastic depth rising
/// linearly from 0 at the first block to `rate` at the last (timm's schedule); the input and the
/// first `frozen` blocks are cut from the gradient (partial fine-tuning).
pub fn run_blocks(
    blocks: &[Block],
    mut x: Tensor<3>,
    mut drop_path: Option<(f64, &mut crate::models::init::InitRng)>,
    frozen: usize,
    attn_bias: impl Fn(usize) -> Option<Tensor<4>>,
) -> Tensor<3> {
    let [b, _, _] = x.dims();
    let device = x.device();
    if frozen > 0 {
        x = x.detach();
    }
    let depth = blocks.len();
    for (i, block) in blocks.iter().enumerate() {
        let rate = drop_path.as_ref().map_or(0.0, |(r, _)| r * i as f64 / (depth - 1).max(1) as f64);
        let scales = match drop_path.as_mut() {
            Some((_, rng)) if rate > 0.0 && i >= frozen => {
                Some([drop_path_scales(rate, b, *rng, &device), drop_path_scales(rate, b, *rng, &device)])
            }
            _ => None,
        };
        x = block.forward_with(x, &BlockExtras { attn_bias: attn_bias(i), drop_path: scales, rows: None });
        if i + 1 == frozen {
            x = x.detach();
        }
    }
    x
}

/// `imgs: [B, C, H, W] -> [B, L, p*p*C]`, patches in row-major order, pixels ordered (row, col,
/// channel) inside a patch, exactly as the official `patchify`.
pub fn patchify(imgs: Tensor<4>, p: usize) -> Tensor<3> {
    let [b, c, hh, ww] = imgs.dims();
    let (h, w) = (hh / p, ww / p);
    imgs.reshape([b, c, h, p, w, p]).permute([0, 2, 4, 3, 5, 1]).reshape([b, h * w, p * p * c])
}

/// Inverse of [`patchify`]: `x: [B, L, p*p*C] -> [B, C, H, W]` for an `h x w` grid of patches.
pub fn unpatchify(x: Tensor<3>, p: usize, grid: (usize, usize), c: usize) -> Tensor<4> {
    let [b, _, _] = x.dims();
    let (h, w) = grid;
    x.reshape([b, h, w, p, p, c]).permute([0, 5, 1, 3, 2, 4]).reshape([b, c, h * p, w * p])
}

/// Patch embedding: a linear map of each flattened patch (equivalent to the stride-p convolution of
/// the official code, with the weight flattened in [`patchify`] order).
#[derive(Module, Debug)]
pub struct PatchEmbed {
    /// `[p*p*C, D]`
    pub proj: Linear,
    /// Norm of each embedded patch, in models that have one (Swin).
    pub norm: Option<LayerNorm>,
    patch_size: usize,
}

impl PatchEmbed {
    /// Initialised like the official code: xavier-uniform on the flattened convolution weight.
    pub fn new(patch_size: usize, in_chans: usize, dim: usize, rng: &mut InitRng, device: &Device) -> Self {
        Self::with_init(patch_size, in_chans, dim, WeightInit::XavierUniform, rng, device)
    }

    /// As [`PatchEmbed::new`] with the weight drawn by `init`.
    pub fn with_init(
        patch_size: usize,
        in_chans: usize,
        dim: usize,
        init: WeightInit,
        rng: &mut InitRng,
        device: &Device,
    ) -> Self {
        Self {
            proj: Linear::with_init(patch_size * patch_size * in_chans, dim, init, rng, device),
            norm: None,
            patch_size,
        }
    }

    /// The embedding followed by `norm` (Swin's `patch_norm`).
    pub fn with_norm(self, norm: LayerNorm) -> Self {
        Self { norm: Some(norm), ..self }
    }

    /// Patch side in pixels.
    pub fn patch_size(&self) -> usize {
        self.patch_size
    }

    /// `imgs: [B, C, H, W] -> [B, L, D]`.
    pub fn forward(&self, imgs: Tensor<4>) -> Tensor<3> {
        let x = self.proj.forward(patchify(imgs, self.patch_size));
        match &self.norm {
            Some(norm) => norm.forward(x),
            None => x,
        }
    }
}

/// Which patches enter a ViT encoder, and as what.
#[derive(Debug, Clone)]
pub enum PatchTokens {
    /// Every patch.
    All,
    /// Only the patches `[B, K]` (MAE's visible patches; the others never enter the encoder).
    Keep(Tensor<2, Int>),
    /// Every patch, those with weight 1 in `weights: [B, L, 1]` replaced by the shared learned
    /// `token: [1, 1, D]` before position embeddings are added (BEiT's [MASK], MAE's "encoder w/ [M]").
    Replace {
        /// 1 where the patch is masked, 0 elsewhere.
        weights: Tensor<3>,
        /// The mask token.
        token: Tensor<3>,
    },
}

/// The token sequence entering a ViT encoder, `[B, 1 + K, D]`: patch embeddings chosen by `tokens`
/// plus position embeddings, with the cls token (plus its position embedding) first.
/// `pos_embed: [1, 1 + L, D]` has the cls slot first.
pub fn embed_with_cls(
    patch_embed: &PatchEmbed,
    cls_token: &Param<Tensor<3>>,
    pos_embed: &Param<Tensor<3>>,
    imgs: Tensor<4>,
    tokens: PatchTokens,
) -> Tensor<3> {
    let b = imgs.dims()[0];
    let pos_embed = pos_embed.val();
    let n = pos_embed.dims()[1];
    let patch_pos = pos_embed.clone().slice([0..1, 1..n]);
    let x = patch_embed.forward(imgs);
    let x = match tokens {
        PatchTokens::All => x + patch_pos,
        PatchTokens::Keep(ids) => gather_rows(x + patch_pos, ids),
        PatchTokens::Replace { weights, token } => with_mask_token(x, weights, token) + patch_pos,
    };
    let cls = (cls_token.val() + pos_embed.clone().slice([0..1, 0..1])).repeat_dim(0, b);
    Tensor::cat(vec![cls, x], 1)
}

/// `x (1 - w) + token w`: the embeddings of masked positions (weight 1) replaced by a learned mask
/// token, broadcast over them (BEiT's [MASK], SimMIM's mask token, MAE's "encoder w/ [M]").
pub fn with_mask_token<const D: usize>(x: Tensor<D>, weights: Tensor<D>, token: Tensor<D>) -> Tensor<D> {
    x * (weights.clone().neg() + 1.0) + token * weights
}

/// Fixed 2-D sin-cos position embeddings `[(cls + h*w) * dim]` for an `h x w` grid, with a zero row
/// first when `cls_token` is set (the official `get_2d_sincos_pos_embed`: the first half of each
/// vector encodes the column, the second half the row).
pub fn sincos_pos_embed_2d(dim: usize, grid: (usize, usize), cls_token: bool) -> Vec<f32> {
    assert!(dim.is_multiple_of(4), "sin-cos position embedding needs a width divisible by 4, got {dim}");
    let quarter = dim / 4;
    let omega: Vec<f64> = (0..quarter).map(|i| 1.0 / 10000f64.powf(i as f64 / quarter as f64)).collect();
    let mut out = if cls_token { vec![0.0f32; dim] } else { Vec::new() };
    for row in 0..grid.0 {
        for col in 0..grid.1 {
            for pos in [col as f64, row as f64] {
                out.extend(omega.iter().map(|o| (pos * o).sin() as f32));
                out.extend(omega.iter().map(|o| (pos * o).cos() as f32));
            }
        }
    }
    out
}

/// Sin-cos position embeddings `[1, N, dim]` as a parameter that is never trained (the official
/// MAE's `nn.Parameter(..., requires_grad=False)`): it requires no gradient, so optimizers never
/// update or decay it, but it is saved and loaded with the model, since checkpoints may hold other
/// values (transformers 5.x leaves them at zero in a model built from a config).
pub fn fixed_pos_embed(dim: usize, grid: (usize, usize), cls_token: bool, device: &Device) -> Param<Tensor<3>> {
    let n = grid.0 * grid.1 + cls_token as usize;
    let t = Tensor::from_data(TensorData::new(sincos_pos_embed_2d(dim, grid, cls_token), [1, n, dim]), device);
    Param::from_tensor(t).set_require_grad(false)
}

/// A learned `[1, 1, dim]` token (cls or mask), initialised N(0, 0.02) as the official code.
pub fn token(dim: usize, rng: &mut InitRng, device: &Device) -> Param<Tensor<3>> {
    param(normal(rng, dim, 0.02), [1, 1, dim], device)
}
