//! Swin Transformer (Liu et al. 2021), following timm 1.0's `swin_transformer.py`: a hierarchical
//! encoder whose blocks attend within non-overlapping `w x w` windows, every second block on windows
//! shifted by `w / 2` (a cyclic shift plus an attention mask keeps the window count), with a learned
//! relative position bias per block, and 2x2 patch merging at the start of every stage but the first.
//!
//! A Swin block is mim's one [`Block`]: norms, residuals and the MLP act per token, so they commute
//! with the cyclic shift and the window partition; the block therefore runs on the windows, and the
//! relative position bias plus the shift mask arrive as its score bias.
//!
//! Field names are timm's state-dict keys (`layers.1.downsample.reduction.weight`,
//! `layers.0.blocks.1.attn.relative_position_bias_table`, `head.fc.weight`); [`crate::weights::swin`]
//! reads timm and official Microsoft Swin checkpoints.

use anyhow::{Context, Result, ensure};
use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

use super::init::{InitRng, param, trunc_normal_matrices};
use super::vit::{Attention, Block, BlockExtras, LayerNorm, Linear, Mlp, PatchEmbed, drop_path_scales};
use super::{Preset, find_preset, preset_names};

/// LayerNorm epsilon of Swin: PyTorch's default, as timm builds Swin with plain `nn.LayerNorm`.
pub const SWIN_LN_EPS: f64 = 1e-5;

/// Score bias where a shifted window joins pixels that are not neighbours in the image (timm's value).
const MASKED_SCORE: f32 = -100.0;

/// Architecture of a Swin Transformer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwinConfig {
    /// Image side in pixels (square images).
    pub img_size: usize,
    /// Patch side in pixels; must divide `img_size`.
    pub patch_size: usize,
    /// Image channels.
    pub in_chans: usize,
    /// Width of the first stage; each later stage doubles it.
    pub embed_dim: usize,
    /// Blocks per stage.
    pub depths: Vec<usize>,
    /// Attention heads per stage.
    pub num_heads: Vec<usize>,
    /// Window side in tokens (capped at a stage's resolution, as timm).
    pub window_size: usize,
    /// MLP hidden width / block width.
    pub mlp_ratio: f64,
    /// Classes of the linear head; 0 for no head (the pooled features are the output).
    pub num_classes: usize,
    /// Stochastic depth rate of the last block, rising linearly from 0 over all blocks.
    pub drop_path_rate: f64,
}

impl SwinConfig {
    /// Every preset, by the name `--model` and [`SwinConfig::preset`] accept.
    pub const PRESETS: &'static [Preset<Self>] = &[
        ("swin_tiny_patch4_window7_224", Self::tiny_patch4_window7_224),
        ("swin_small_patch4_window7_224", Self::small_patch4_window7_224),
        ("swin_base_patch4_window7_224", Self::base_patch4_window7_224),
        ("swin_tiny_32", Self::tiny_32),
        ("swin_tiny_28", Self::tiny_28),
    ];

    /// The preset called `name` in [`SwinConfig::PRESETS`].
    pub fn preset(name: &str) -> Result<Self> {
        find_preset(Self::PRESETS, name)
            .with_context(|| format!("unknown Swin preset '{name}': choose one of {}", preset_names(Self::PRESETS)))
    }

    /// timm's Swin-T for 224 px ImageNet, with timm's default drop path 0.1 (the paper trains
    /// Swin-T/S/B with 0.2/0.3/0.5).
    pub fn tiny_patch4_window7_224() -> Self {
        SwinConfig {
            img_size: 224,
            patch_size: 4,
            in_chans: 3,
            embed_dim: 96,
            depths: vec![2, 2, 6, 2],
            num_heads: vec![3, 6, 12, 24],
            window_size: 7,
            mlp_ratio: 4.0,
            num_classes: 1000,
            drop_path_rate: 0.1,
        }
    }

    /// timm's Swin-S: Swin-T with 18 blocks in the third stage.
    pub fn small_patch4_window7_224() -> Self {
        SwinConfig { depths: vec![2, 2, 18, 2], ..Self::tiny_patch4_window7_224() }
    }

    /// timm's Swin-B: Swin-S 128 wide.
    pub fn base_patch4_window7_224() -> Self {
        SwinConfig { embed_dim: 128, num_heads: vec![4, 8, 16, 32], ..Self::small_patch4_window7_224() }
    }

    /// 32 px RGB (CIFAR-10) on a CPU: patch 2 and window 4 divide every stage (16, 8 and 4 tokens a
    /// side), so nothing is padded; the last stage is one window, so it does not shift.
    pub fn tiny_32() -> Self {
        SwinConfig {
            img_size: 32,
            patch_size: 2,
            in_chans: 3,
            embed_dim: 48,
            depths: vec![2, 2, 6],
            num_heads: vec![3, 6, 12],
            window_size: 4,
            mlp_ratio: 4.0,
            num_classes: 10,
            drop_path_rate: 0.1,
        }
    }

    /// 28 px greyscale (Fashion-MNIST): patch 2 and window 7 give stages of 14 and 7 tokens a side
    /// (7 is prime, so only two stages fit).
    pub fn tiny_28() -> Self {
        SwinConfig {
            img_size: 28,
            in_chans: 1,
            depths: vec![2, 6],
            num_heads: vec![3, 6],
            window_size: 7,
            ..Self::tiny_32()
        }
    }

    /// Stages.
    pub fn num_stages(&self) -> usize {
        self.depths.len()
    }

    /// Patches per side at the input of the first stage.
    pub fn grid(&self) -> usize {
        self.img_size / self.patch_size
    }

    /// Width of stage `i`: `embed_dim * 2^i`.
    pub fn stage_dim(&self, i: usize) -> usize {
        self.embed_dim << i
    }

    /// Tokens per side in stage `i` (after its patch merging).
    pub fn stage_resolution(&self, i: usize) -> usize {
        self.grid() >> i
    }

    /// Window side of stage `i`: the whole stage when it is no larger than a window (timm).
    pub fn stage_window(&self, i: usize) -> usize {
        self.window_size.min(self.stage_resolution(i))
    }

    /// Cyclic shift of the odd blocks of stage `i`: half a window, none when one window covers the stage.
    pub fn stage_shift(&self, i: usize) -> usize {
        if self.stage_resolution(i) <= self.window_size { 0 } else { self.window_size / 2 }
    }

    /// Width of the final features.
    pub fn num_features(&self) -> usize {
        self.stage_dim(self.num_stages() - 1)
    }

    /// Pixels per final-feature position (SimMIM's `encoder_stride`): `patch_size * 2^(stages - 1)`.
    pub fn encoder_stride(&self) -> usize {
        self.patch_size << (self.num_stages() - 1)
    }

    /// Checks the sizes fit together, with an error that says what to change.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.img_size > 0 && self.patch_size > 0 && self.window_size > 0,
            "image, patch and window sizes must be positive"
        );
        ensure!(self.in_chans > 0, "in_chans must be positive");
        ensure!(
            self.img_size.is_multiple_of(self.patch_size),
            "image size {} is not divisible by patch size {}: use an image size that is a multiple of {}",
            self.img_size,
            self.patch_size,
            self.patch_size
        );
        ensure!(!self.depths.is_empty(), "depths is empty: give the number of blocks of each stage, e.g. [2, 2, 6, 2]");
        ensure!(
            self.depths.len() == self.num_heads.len(),
            "depths has {} stages but num_heads has {}: give one head count per stage",
            self.depths.len(),
            self.num_heads.len()
        );
        let s = self.num_stages();
        ensure!(
            self.grid().is_multiple_of(1 << (s - 1)),
            "the {0}x{0} patch grid cannot be halved {1} times by patch merging: use an image size whose patch grid is a multiple of {2} (e.g. {3} px)",
            self.grid(),
            s - 1,
            1 << (s - 1),
            self.patch_size * (1 << (s - 1)) * (self.grid() >> (s - 1)).max(1)
        );
        let resolutions: Vec<usize> = (0..s).map(|i| self.stage_resolution(i)).collect();
        for i in 0..s {
            let (r, w) = (resolutions[i], self.stage_window(i));
            ensure!(
                r % w == 0,
                "stage {i} resolution {r} is not divisible by window size {w}: choose a window size that divides every stage resolution {resolutions:?} (or is at least as large)"
            );
            let (d, h) = (self.stage_dim(i), self.num_heads[i]);
            ensure!(h > 0 && d % h == 0, "stage {i} width {d} is not divisible by its {h} heads");
        }
        ensure!(self.mlp_ratio > 0.0, "mlp_ratio must be positive");
        ensure!((0.0..1.0).contains(&self.drop_path_rate), "drop_path_rate {} must be in [0, 1)", self.drop_path_rate);
        Ok(())
    }

    /// Builds the model initialised like timm from `seed`: trunc N(0, 0.02) for every linear weight and
    /// relative position table, zero biases, unit norms (the patch embedding too, which timm leaves at
    /// PyTorch's convolution default).
    pub fn init(&self, seed: u64, device: &Device) -> Result<SwinTransformer> {
        self.validate()?;
        let mut rng = InitRng::seed_from_u64(seed);
        let ln = |d| LayerNorm::with_eps(d, SWIN_LN_EPS, device);
        let total: usize = self.depths.iter().sum();
        let mut rates =
            (0..total).map(|k| if total > 1 { self.drop_path_rate * k as f64 / (total - 1) as f64 } else { 0.0 });
        let layers = (0..self.num_stages())
            .map(|i| {
                let (dim, heads, window) = (self.stage_dim(i), self.num_heads[i], self.stage_window(i));
                let blocks = (0..self.depths[i])
                    .map(|_| {
                        let mut attn = Attention::new(dim, heads, &mut rng, device);
                        let entries = (2 * window - 1) * (2 * window - 1);
                        attn.relative_position_bias_table =
                            Some(param(vec![0.0; entries * heads], [entries, heads], device));
                        let hidden = (dim as f64 * self.mlp_ratio) as usize;
                        Block {
                            norm1: ln(dim),
                            attn,
                            norm2: ln(dim),
                            mlp: Mlp::new(dim, hidden, &mut rng, device),
                            gamma_1: None,
                            gamma_2: None,
                        }
                    })
                    .collect();
                // Stage i > 0 starts by merging 2x2 tokens of width dim / 2 into one of width dim.
                let downsample = (i > 0).then(|| PatchMerging {
                    norm: ln(2 * dim),
                    reduction: Linear::without_bias(2 * dim, dim, &mut rng, device),
                });
                SwinStage::new(
                    downsample,
                    blocks,
                    self.stage_resolution(i),
                    window,
                    self.stage_shift(i),
                    (&mut rates).take(self.depths[i]).collect(),
                    device,
                )
            })
            .collect();
        let model = SwinTransformer {
            patch_embed: PatchEmbed::new(self.patch_size, self.in_chans, self.embed_dim, &mut rng, device)
                .with_norm(ln(self.embed_dim)),
            layers,
            norm: ln(self.num_features()),
            head: (self.num_classes > 0)
                .then(|| ClassifierHead { fc: Linear::new(self.num_features(), self.num_classes, &mut rng, device) }),
            grid: self.grid(),
        };
        Ok(trunc_normal_matrices(model, &mut rng))
    }
}

/// `x: [B, H, W, C] -> [B * nW, w*w, C]`: non-overlapping `w x w` windows, image-major then
/// row-major, tokens row-major inside a window (timm's `window_partition`).
pub fn window_partition(x: Tensor<4>, w: usize) -> Tensor<3> {
    let [b, h, wd, c] = x.dims();
    x.reshape([b, h / w, w, wd / w, w, c]).permute([0, 1, 3, 2, 4, 5]).reshape([b * (h / w) * (wd / w), w * w, c])
}

/// Inverse of [`window_partition`]: `windows: [B * nW, w*w, C] -> [B, H, W, C]`.
pub fn window_reverse(windows: Tensor<3>, w: usize, h: usize, wd: usize) -> Tensor<4> {
    let [n, _, c] = windows.dims();
    let b = n / ((h / w) * (wd / w));
    windows.reshape([b, h / w, wd / w, w, w, c]).permute([0, 1, 3, 2, 4, 5]).reshape([b, h, wd, c])
}

/// Index into the `[(2w-1)^2, H]` relative position table for every (query, key) pair of a window,
/// `[w*w * w*w]` row-major: `(dy + w - 1) * (2w - 1) + (dx + w - 1)` (timm's `get_relative_position_index`).
pub fn relative_position_index(w: usize) -> Vec<i64> {
    let n = w * w;
    let coord = |t: usize| ((t / w) as i64, (t % w) as i64);
    let span = 2 * w as i64 - 1;
    (0..n * n)
        .map(|k| {
            let ((yi, xi), (yj, xj)) = (coord(k / n), coord(k % n));
            (yi - yj + w as i64 - 1) * span + (xi - xj + w as i64 - 1)
        })
        .collect()
}

/// The shifted-window attention mask `[nW * w*w * w*w]` for an `r x r` map rolled by `-shift`: 0 where
/// query and key come from the same image region, -100 where the cyclic shift brought
/// together pixels from opposite borders (timm's `get_attn_mask`).
pub fn shifted_window_mask(r: usize, w: usize, shift: usize) -> Vec<f32> {
    // Regions along one axis of the rolled map: [0, r - w), [r - w, r - shift), [r - shift, r).
    let region = |i: usize| (i >= r - w) as usize + (i >= r - shift) as usize;
    let nw = r / w;
    let mut out = Vec::with_capacity(nw * nw * w.pow(4));
    for (wy, wx) in (0..nw * nw).map(|k| (k / nw, k % nw)) {
        let label: Vec<usize> = (0..w * w).map(|t| region(wy * w + t / w) * 3 + region(wx * w + t % w)).collect();
        for &a in &label {
            out.extend(label.iter().map(|&b| if a == b { 0.0 } else { MASKED_SCORE }));
        }
    }
    out
}

/// Patch merging: each 2x2 neighbourhood concatenated, normalised and projected to twice the width.
#[derive(Module, Debug)]
pub struct PatchMerging {
    /// Norm over the concatenated `4C` features.
    pub norm: LayerNorm,
    /// `[4C, 2C]`, no bias.
    pub reduction: Linear,
}

impl PatchMerging {
    /// `x: [B, H, W, C] -> [B, H/2, W/2, 2C]`, concatenating `x[0::2, 0::2], x[1::2, 0::2],
    /// x[0::2, 1::2], x[1::2, 1::2]` (the order of the official code and timm's permute).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, h, w, c] = x.dims();
        let x = x.reshape([b, h / 2, 2, w / 2, 2, c]).permute([0, 1, 3, 4, 2, 5]).reshape([b, h / 2, w / 2, 4 * c]);
        self.reduction.forward(self.norm.forward(x))
    }
}

/// One stage: optional patch merging, then blocks alternating plain and shifted windows.
#[derive(Module, Debug)]
pub struct SwinStage {
    /// Patch merging at the start of every stage but the first (timm >= 0.9 layout).
    pub downsample: Option<PatchMerging>,
    /// Blocks; odd ones use shifted windows.
    pub blocks: Vec<Block>,
    resolution: usize,
    window: usize,
    shift: usize,
    drop_path: Vec<f64>,
    /// Constant `[w*w * w*w]` index into each block's relative position table.
    relative_position_index: Tensor<1, Int>,
    /// Constant `[nW, 1, w*w, w*w]` shifted-window mask; absent when the stage does not shift.
    shift_mask: Option<Tensor<4>>,
}

impl SwinStage {
    fn new(
        downsample: Option<PatchMerging>,
        blocks: Vec<Block>,
        resolution: usize,
        window: usize,
        shift: usize,
        drop_path: Vec<f64>,
        device: &Device,
    ) -> Self {
        let n = window * window;
        let index = Tensor::from_data(TensorData::new(relative_position_index(window), [n * n]), device);
        let nw = (resolution / window).pow(2);
        let shift_mask = (shift > 0).then(|| {
            Tensor::from_data(TensorData::new(shifted_window_mask(resolution, window, shift), [nw, 1, n, n]), device)
        });
        Self { downsample, blocks, resolution, window, shift, drop_path, relative_position_index: index, shift_mask }
    }

    /// Tokens per side after the patch merging.
    pub fn resolution(&self) -> usize {
        self.resolution
    }

    /// Window side.
    pub fn window(&self) -> usize {
        self.window
    }

    /// Shift of the odd blocks (0: none).
    pub fn shift(&self) -> usize {
        self.shift
    }

    /// `x: [B, H, W, C] -> [B, H', W', C']`. With `rng`, blocks drop their residual branches per
    /// sample at their stochastic depth rate (training).
    pub fn forward(&self, x: Tensor<4>, mut rng: Option<&mut dyn RngCore>) -> Tensor<4> {
        let mut x = match &self.downsample {
            Some(merge) => merge.forward(x),
            None => x,
        };
        for (k, block) in self.blocks.iter().enumerate() {
            let shifted = k % 2 == 1 && self.shift > 0;
            let rate = self.drop_path[k];
            let drop_path = match rng.as_deref_mut() {
                Some(r) if rate > 0.0 => {
                    let b = x.dims()[0];
                    let mut r = r;
                    Some([0, 1].map(|_| drop_path_scales(rate, b, &mut r, &x.device())))
                }
                _ => None,
            };
            x = self.forward_block(block, x, shifted, drop_path);
        }
        x
    }

    /// The relative position bias of `block`, `[1, H, w*w, w*w]`, gathered from its table.
    pub fn relative_position_bias(&self, block: &Block) -> Tensor<4> {
        let table =
            block.attn.relative_position_bias_table.as_ref().expect("Swin blocks own a relative position table").val();
        let (n, heads) = (self.window * self.window, table.dims()[1]);
        table.select(0, self.relative_position_index.clone()).reshape([n, n, heads]).permute([2, 0, 1]).unsqueeze_dim(0)
    }

    /// One Swin block on `x: [B, H, W, C]`: roll by `-shift` (shifted blocks), partition into windows,
    /// run the block on the windows with the relative position bias (plus the shift mask), undo both.
    fn forward_block(
        &self,
        block: &Block,
        x: Tensor<4>,
        shifted: bool,
        drop_path: Option<[Tensor<3>; 2]>,
    ) -> Tensor<4> {
        let [b, h, w, _] = x.dims();
        let s = if shifted { self.shift as i64 } else { 0 };
        let x = if shifted { x.roll(&[-s, -s], &[1, 2]) } else { x };
        let windows = window_partition(x, self.window);
        let nw = windows.dims()[0] / b;
        let bias = self.window_bias(block, shifted);
        // A sample's drop decision holds for all of its windows.
        let per_window = |t: Tensor<3>| t.reshape([b, 1, 1, 1]).repeat_dim(1, nw).reshape([b * nw, 1, 1]);
        let extras = BlockExtras { attn_bias: Some(bias), drop_path: drop_path.map(|d| d.map(per_window)), rows: None };
        let y = window_reverse(block.forward_with(windows, &extras), self.window, h, w);
        if shifted { y.roll(&[s, s], &[1, 2]) } else { y }
    }

    /// The score bias of `block`'s windows: the relative position bias `[1, H, n, n]`, or in a
    /// shifted block with it the shift mask of each window of an image, `[nW, H, n, n]` (window `i`
    /// of the batch takes entry `i mod nW`, see [`crate::ops::attention::attention_with_bias`]).
    fn window_bias(&self, block: &Block, shifted: bool) -> Tensor<4> {
        let bias = self.relative_position_bias(block);
        match (shifted, &self.shift_mask) {
            (true, Some(mask)) => bias + mask.clone(),
            _ => bias,
        }
    }

    /// Runs the stage on `x: [B, H, W, C]` (eval: no stochastic depth) and returns its output with,
    /// per block, the attention each token receives `[B, heads, H' * W']`: the mean over the
    /// queries of its window of their attention to it, mapped back to its place on the grid
    /// (Swin has no [CLS] token whose attention could be shown).
    pub fn attention_received(&self, x: Tensor<4>) -> (Tensor<4>, Vec<Tensor<3>>) {
        let mut x = match &self.downsample {
            Some(merge) => merge.forward(x),
            None => x,
        };
        let mut maps = Vec::with_capacity(self.blocks.len());
        for (k, block) in self.blocks.iter().enumerate() {
            let shifted = k % 2 == 1 && self.shift > 0;
            let [b, h, w, _] = x.dims();
            let s = if shifted { self.shift as i64 } else { 0 };
            let rolled = if shifted { x.clone().roll(&[-s, -s], &[1, 2]) } else { x.clone() };
            let windows = window_partition(rolled, self.window);
            let bias = self.window_bias(block, shifted);
            let probs = block.attn.probabilities(block.norm1.forward(windows), Some(bias));
            let [n_windows, heads, _, n] = probs.dims();
            let received = probs.mean_dim(2).reshape([n_windows, heads, n]).swap_dims(1, 2);
            let map = window_reverse(received, self.window, h, w);
            let map = if shifted { map.roll(&[s, s], &[1, 2]) } else { map };
            maps.push(map.permute([0, 3, 1, 2]).reshape([b, heads, h * w]));
            x = self.forward_block(block, x, shifted, None);
        }
        (x, maps)
    }
}

/// timm's `ClassifierHead` after pooling: one linear layer.
#[derive(Module, Debug)]
pub struct ClassifierHead {
    /// `[num_features, num_classes]`
    pub fc: Linear,
}

/// The Swin Transformer: patch embedding (with norm), stages, final norm, average pool, linear head.
#[derive(Module, Debug)]
pub struct SwinTransformer {
    /// Patch embedding followed by a LayerNorm.
    pub patch_embed: PatchEmbed,
    /// Stages.
    pub layers: Vec<SwinStage>,
    /// Norm of the last stage's features.
    pub norm: LayerNorm,
    /// Classifier; absent when `num_classes` is 0.
    pub head: Option<ClassifierHead>,
    grid: usize,
}

impl SwinTransformer {
    /// `imgs: [B, C, H, W] -> [B, h, w, D]`: normalised patch embeddings on the patch grid.
    pub fn embed(&self, imgs: Tensor<4>) -> Tensor<4> {
        let x = self.patch_embed.forward(imgs);
        let [b, _, d] = x.dims();
        x.reshape([b, self.grid, self.grid, d])
    }

    /// Every stage's output `[B, H_i, W_i, C_i]` (before the final norm) from embeddings `x: [B, h, w, D]`;
    /// with `rng`, stochastic depth is applied (training).
    pub fn forward_stages_from(&self, mut x: Tensor<4>, mut rng: Option<&mut dyn RngCore>) -> Vec<Tensor<4>> {
        let mut outs = Vec::with_capacity(self.layers.len());
        for stage in &self.layers {
            x = stage.forward(x, rng.as_mut().map(|r| &mut **r as &mut dyn RngCore));
            outs.push(x.clone());
        }
        outs
    }

    /// The attention each token receives within its window, per block of every stage, on
    /// `imgs: [B, C, H, W]`: `(tokens per side, [B, heads, side * side])` (see
    /// [`SwinStage::attention_received`]).
    pub fn attention_received(&self, imgs: Tensor<4>) -> Vec<(usize, Tensor<3>)> {
        let mut x = self.embed(imgs);
        let mut out = Vec::new();
        for stage in &self.layers {
            let (next, maps) = stage.attention_received(x);
            out.extend(maps.into_iter().map(|m| (stage.resolution(), m)));
            x = next;
        }
        out
    }

    /// The hierarchical feature maps of `imgs: [B, C, H, W]`: every stage's `[B, H_i, W_i, C_i]`.
    pub fn forward_stages(&self, imgs: Tensor<4>) -> Vec<Tensor<4>> {
        self.forward_stages_from(self.embed(imgs), None)
    }

    /// The final normalised feature map `[B, h, w, C]` (timm's `forward_features`).
    pub fn forward_features(&self, imgs: Tensor<4>) -> Tensor<4> {
        let last = self.forward_stages(imgs).pop().expect("at least one stage");
        self.norm.forward(last)
    }

    /// Global average pool over positions: `[B, h, w, C] -> [B, C]`.
    pub fn pool(features: Tensor<4>) -> Tensor<2> {
        let [b, h, w, c] = features.dims();
        features.reshape([b, h * w, c]).mean_dim(1).reshape([b, c])
    }

    /// `imgs: [B, C, H, W] -> [B, num_classes]` logits, or the pooled `[B, C]` features without a head.
    pub fn forward(&self, imgs: Tensor<4>) -> Tensor<2> {
        self.forward_head(self.forward_features(imgs))
    }

    /// Pool and classify a final feature map `[B, h, w, C]`.
    pub fn forward_head(&self, features: Tensor<4>) -> Tensor<2> {
        let pooled = Self::pool(features);
        match &self.head {
            Some(head) => head.fc.forward(pooled),
            None => pooled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    #[test]
    fn attention_received_runs_the_stages_unchanged_and_each_window_shares_out_one_unit_per_query() {
        let device = Device::flex();
        let cfg = SwinConfig::preset("swin_tiny_28").unwrap();
        let model = cfg.init(3, &device).unwrap();
        let imgs =
            Tensor::<4>::random([2, cfg.in_chans, cfg.img_size, cfg.img_size], Distribution::Normal(0.0, 1.0), &device);
        let maps = model.attention_received(imgs.clone());
        let blocks: usize = model.layers.iter().map(|s| s.blocks.len()).sum();
        assert_eq!(maps.len(), blocks);
        let mut x = model.embed(imgs.clone());
        let mut k = 0;
        for stage in &model.layers {
            let (out, _) = stage.attention_received(x.clone());
            let reference = stage.forward(x, None);
            assert!((out.clone() - reference).abs().max().into_scalar::<f32>() < 1e-5, "same stage output");
            x = out;
            for _ in &stage.blocks {
                let (side, map) = &maps[k];
                let [b, heads, l] = map.dims();
                assert_eq!((b, l), (2, side * side));
                // Rows of attention sum to 1, so a window's tokens receive 1 in all (on average
                // over its queries): the whole map sums to the number of windows.
                let windows = (side / stage.window()).pow(2) as f32;
                let sums = map.clone().sum_dim(2).into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
                assert_eq!(sums.len(), b * heads);
                for s in sums {
                    assert!((s - windows).abs() < 1e-3, "block {k}: {s} vs {windows} windows");
                }
                k += 1;
            }
        }
    }
}
