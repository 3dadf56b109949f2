//! BEiT (Bao et al. 2021) masked image modeling, following microsoft/unilm `beit/modeling_pretrain.py`
//! (`VisionTransformerForMaskedImageModeling`): every patch is embedded, the masked ones are
//! replaced by one learned mask token, the whole sequence (cls first) runs through a ViT with a
//! relative position bias and layer scale, and a linear head predicts the visual token of each
//! masked patch (ids from a discrete tokenizer); the loss is the cross-entropy on masked patches.
//!
//! Parameter names follow the official checkpoints (`blocks.0.gamma_1`,
//! `rel_pos_bias.relative_position_bias_table`, `lm_head.weight`), except that the official
//! `q_bias`/`v_bias` pair lives in the shared [`Block`]'s full qkv bias (see [`crate::weights::beit_from_official`]).

use anyhow::{Context, Result, ensure};
use burn::module::{Module, Param};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::init::{InitRng, param, trunc_normal};
use super::vit::{Block, LayerNorm, Linear, PatchEmbed, WeightInit, run_blocks, with_mask_token};
use super::{Preset, find_preset, preset_names};
use crate::masking::BoolMask;

/// Architecture of a BEiT for masked image modeling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BeitConfig {
    /// Image side in pixels (square images).
    pub img_size: usize,
    /// Patch side in pixels; must divide `img_size`.
    pub patch_size: usize,
    /// Image channels.
    pub in_chans: usize,
    /// Visual tokens of the tokenizer (8192 for DALL-E's dVAE).
    pub vocab_size: usize,
    /// Width.
    pub embed_dim: usize,
    /// Blocks.
    pub depth: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// MLP hidden width / block width.
    pub mlp_ratio: f64,
    /// Initial layer scale (`gamma_1`, `gamma_2`) of every block; 0 disables layer scale.
    pub layer_scale_init_value: f64,
    /// Learned absolute position embeddings (off in BEiT pretraining).
    pub use_abs_pos_emb: bool,
    /// One relative position bias table per block.
    pub use_rel_pos_bias: bool,
    /// One relative position bias table shared by all blocks (on in BEiT pretraining).
    pub use_shared_rel_pos_bias: bool,
    /// Standard deviation (and truncation bound) of the initial weights and tokens.
    pub init_std: f64,
    /// Epsilon of every LayerNorm: 1e-6 in the official code and timm, 1e-12 in Hugging Face's
    /// `BeitConfig` (checkpoints from before this field used 1e-6).
    #[serde(default = "official_norm_eps")]
    pub layer_norm_eps: f64,
}

fn official_norm_eps() -> f64 {
    super::vit::LN_EPS
}

impl BeitConfig {
    /// Every preset, by the name [`BeitConfig::preset`] accepts.
    pub const PRESETS: &'static [Preset<Self>] = &[
        ("beit_base_patch16_224", Self::base_patch16_224),
        ("beit_large_patch16_224", Self::large_patch16_224),
        ("beit_tiny_32", Self::tiny_32),
        ("beit_tiny_28", Self::tiny_28),
    ];

    /// The preset called `name` in [`BeitConfig::PRESETS`].
    pub fn preset(name: &str) -> Result<Self> {
        find_preset(Self::PRESETS, name)
            .with_context(|| format!("unknown BEiT preset '{name}': choose one of {}", preset_names(Self::PRESETS)))
    }

    /// The paper's ViT-B/16 pretraining settings: 8192-token vocabulary, a shared relative position
    /// bias, no absolute position embedding, layer scale 0.1 as in the official scripts.
    pub fn base_patch16_224() -> Self {
        BeitConfig {
            img_size: 224,
            patch_size: 16,
            in_chans: 3,
            vocab_size: 8192,
            embed_dim: 768,
            depth: 12,
            num_heads: 12,
            mlp_ratio: 4.0,
            layer_scale_init_value: 0.1,
            use_abs_pos_emb: false,
            use_rel_pos_bias: false,
            use_shared_rel_pos_bias: true,
            init_std: 0.02,
            layer_norm_eps: super::vit::LN_EPS,
        }
    }

    /// The paper's ViT-L/16 pretraining settings (layer scale 1e-5, as the official scripts).
    pub fn large_patch16_224() -> Self {
        BeitConfig {
            embed_dim: 1024,
            depth: 24,
            num_heads: 16,
            layer_scale_init_value: 1e-5,
            ..Self::base_patch16_224()
        }
    }

    /// 32 px RGB (CIFAR-10) on a CPU: patch 4, 192 wide, 6 blocks, 512 visual tokens.
    pub fn tiny_32() -> Self {
        BeitConfig {
            img_size: 32,
            patch_size: 4,
            vocab_size: 512,
            embed_dim: 192,
            depth: 6,
            num_heads: 3,
            ..Self::base_patch16_224()
        }
    }

    /// 28 px greyscale (Fashion-MNIST): [`BeitConfig::tiny_32`] for one channel.
    pub fn tiny_28() -> Self {
        BeitConfig { img_size: 28, in_chans: 1, ..Self::tiny_32() }
    }

    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.img_size / self.patch_size
    }

    /// Patches per image L.
    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }

    /// Checks the sizes fit together, with an error that says what to change.
    pub fn validate(&self) -> Result<()> {
        ensure!(self.patch_size > 0 && self.img_size > 0, "image and patch sizes must be positive");
        ensure!(
            self.img_size.is_multiple_of(self.patch_size),
            "image size {} is not divisible by patch size {}: use an image size that is a multiple of {}",
            self.img_size,
            self.patch_size,
            self.patch_size
        );
        ensure!(
            self.num_heads > 0 && self.embed_dim.is_multiple_of(self.num_heads),
            "width {} is not divisible by {} heads: choose a head count that divides it",
            self.embed_dim,
            self.num_heads
        );
        ensure!(self.in_chans > 0, "in_chans must be positive (1 for greyscale, 3 for RGB)");
        ensure!(self.depth > 0, "depth must be at least 1 block");
        ensure!(
            self.vocab_size >= 2,
            "vocab_size {} is too small: set it to the tokenizer's codebook size (8192 for DALL-E)",
            self.vocab_size
        );
        ensure!(self.mlp_ratio > 0.0, "mlp_ratio must be positive (4 in BEiT)");
        ensure!(
            self.layer_scale_init_value >= 0.0,
            "layer_scale_init_value must be >= 0 (0 disables layer scale; BEiT uses 0.1)"
        );
        ensure!(self.init_std > 0.0, "init_std must be positive (0.02 in BEiT)");
        Ok(())
    }

    /// Builds the model with the official initialisation from `seed`: weights and tokens
    /// N(0, 0.02²) truncated at ±0.02, zero biases and relative position tables, LayerNorm 1/0,
    /// layer scale at its initial value, then `fix_init_weight`: each block's `attn.proj` and
    /// `mlp.fc2` weights divided by √(2 · layer), layers counted from 1.
    pub fn init(&self, seed: u64, device: &Device) -> Result<BeitForMaskedImageModeling> {
        self.validate()?;
        let mut rng = InitRng::seed_from_u64(seed);
        let (d, std) = (self.embed_dim, self.init_std as f32);
        let w = WeightInit::TruncNormal { std, bound: std };
        let window = (self.grid(), self.grid());
        let patch_embed = PatchEmbed::with_init(self.patch_size, self.in_chans, d, w, &mut rng, device);
        let token = |n: usize, rng: &mut InitRng| param(trunc_normal(rng, n * d, std, std), [1, n, d], device);
        let cls_token = token(1, &mut rng);
        let mask_token = token(1, &mut rng);
        let pos_embed = self.use_abs_pos_emb.then(|| token(self.num_patches() + 1, &mut rng));
        let blocks = (1..=self.depth)
            .map(|layer| {
                let mut b = Block::with_init(d, self.num_heads, self.mlp_ratio, w, &mut rng, device)
                    .with_norm_eps(self.layer_norm_eps);
                if self.layer_scale_init_value > 0.0 {
                    b = b.with_layer_scale(self.layer_scale_init_value as f32, device);
                }
                let s = (2.0 * layer as f64).sqrt();
                // A fresh leaf: on an autodiff device the division would otherwise leave the weight
                // as the output of a recorded op, whose tape the first backward pass consumes.
                let rescale = |t: Tensor<2>| {
                    let trainable = t.is_require_grad();
                    (t / s).detach().set_require_grad(trainable)
                };
                b.attn.proj.weight = b.attn.proj.weight.map(rescale);
                b.mlp.fc2.weight = b.mlp.fc2.weight.map(rescale);
                b
            })
            .collect();
        let rel = || RelativePositionBias::new(window, self.num_heads, device);
        Ok(BeitForMaskedImageModeling {
            patch_embed,
            cls_token,
            mask_token,
            pos_embed,
            rel_pos_bias: self.use_shared_rel_pos_bias.then(rel),
            blocks,
            block_rel_pos_bias: if self.use_rel_pos_bias {
                (0..self.depth).map(|_| rel()).collect()
            } else {
                Vec::new()
            },
            norm: LayerNorm::with_eps(d, self.layer_norm_eps, device),
            lm_head: Linear::with_init(d, self.vocab_size, w, &mut rng, device),
            grid: window,
        })
    }
}

/// The official relative position index `[(1 + L)²]` for a `window` of patches with a cls token
/// first: patch pairs index their offset `(Δrow + Wh - 1) (2Ww - 1) + (Δcol + Ww - 1)`; the last
/// three table rows are cls -> patch, patch -> cls and cls -> cls.
pub fn relative_position_index(window: (usize, usize)) -> Vec<usize> {
    let (wh, ww) = window;
    let distances = (2 * wh - 1) * (2 * ww - 1);
    let n = wh * ww + 1;
    let mut index = vec![0; n * n];
    for i in 0..n {
        for j in 0..n {
            index[i * n + j] = match (i, j) {
                (0, 0) => distances + 2,
                (_, 0) => distances + 1,
                (0, _) => distances,
                _ => {
                    let (p, q) = (i - 1, j - 1);
                    (p / ww + wh - 1 - q / ww) * (2 * ww - 1) + (p % ww + ww - 1 - q % ww)
                }
            };
        }
    }
    index
}

/// A learned relative position bias for self-attention over a window of patches plus a cls token.
#[derive(Module, Debug)]
pub struct RelativePositionBias {
    /// `[(2Wh - 1)(2Ww - 1) + 3, H]`: a bias per head for each relative offset, then the cls rows.
    pub relative_position_bias_table: Param<Tensor<2>>,
    /// `[(1 + L)²]` rows of the table for each (query, key) pair (a constant).
    relative_position_index: Tensor<1, Int>,
    tokens: usize,
}

impl RelativePositionBias {
    /// A zero table (the official initialisation) for `window` patches and `num_heads` heads.
    pub fn new(window: (usize, usize), num_heads: usize, device: &Device) -> Self {
        let rows = (2 * window.0 - 1) * (2 * window.1 - 1) + 3;
        let index: Vec<i64> = relative_position_index(window).into_iter().map(|i| i as i64).collect();
        let tokens = window.0 * window.1 + 1;
        Self {
            relative_position_bias_table: param(vec![0.0; rows * num_heads], [rows, num_heads], device),
            relative_position_index: Tensor::from_data(TensorData::new(index, [tokens * tokens]), device),
            tokens,
        }
    }

    /// The attention score bias `[1, H, 1 + L, 1 + L]`.
    pub fn forward(&self) -> Tensor<4> {
        let n = self.tokens;
        let heads = self.relative_position_bias_table.dims()[1];
        let bias = self.relative_position_bias_table.val().select(0, self.relative_position_index.clone());
        bias.reshape([n, n, heads]).permute([2, 0, 1]).unsqueeze()
    }
}

/// BEiT for masked image modeling: a ViT encoder over all patches with masked ones replaced by a
/// mask token, and a linear head over the visual-token vocabulary.
#[derive(Module, Debug)]
pub struct BeitForMaskedImageModeling {
    /// Patch embedding.
    pub patch_embed: PatchEmbed,
    /// `[1, 1, D]`
    pub cls_token: Param<Tensor<3>>,
    /// `[1, 1, D]`: replaces the embedding of every masked patch.
    pub mask_token: Param<Tensor<3>>,
    /// Learned absolute position embeddings `[1, 1 + L, D]`, when configured.
    pub pos_embed: Option<Param<Tensor<3>>>,
    /// Relative position bias shared by all blocks, when configured.
    pub rel_pos_bias: Option<RelativePositionBias>,
    /// Transformer blocks (with layer scale when configured).
    pub blocks: Vec<Block>,
    /// Per-block relative position biases (official `blocks.N.attn.relative_position_bias_table`),
    /// empty unless configured; added to the shared one when both are on, as the official code.
    pub block_rel_pos_bias: Vec<RelativePositionBias>,
    /// Final norm.
    pub norm: LayerNorm,
    /// Width -> visual-token logits.
    pub lm_head: Linear,
    grid: (usize, usize),
}

impl BeitForMaskedImageModeling {
    /// Patch grid `(rows, cols)`.
    pub fn grid(&self) -> (usize, usize) {
        self.grid
    }

    /// `imgs: [B, C, H, W] -> [B, 1 + L, D]`: embeds every patch, replaces masked ones by the mask
    /// token (`x * (1 - w) + mask_token * w`), prepends the cls token, adds absolute position
    /// embeddings if any, and runs the blocks with the relative position bias, then the final norm.
    ///
    /// Panics if `mask` is not one row per image over this model's patch grid.
    pub fn forward_features(&self, imgs: Tensor<4>, mask: &BoolMask) -> Tensor<3> {
        let b = imgs.dims()[0];
        assert!(
            mask.batch == b && mask.grid == self.grid,
            "mask is for {} images of {:?} patches, the input has {b} images of {:?}",
            mask.batch,
            mask.grid,
            self.grid
        );
        self.norm.forward(self.encode(imgs, Some(mask), None, 0))
    }

    /// The token sequence `[B, 1 + L, D]` after the blocks, before the final norm: masked patches
    /// (if any) replaced by the mask token; stochastic depth at rate `drop_path.0` for the last
    /// block (linear from 0) drawn from `drop_path.1`; the first `frozen_blocks` blocks and the
    /// embedding without gradient. Fine-tuning pools this (BEiT's mean pooling + `fc_norm`).
    pub fn encode(
        &self,
        imgs: Tensor<4>,
        mask: Option<&BoolMask>,
        drop_path: Option<(f64, &mut InitRng)>,
        frozen_blocks: usize,
    ) -> Tensor<3> {
        let x = self.embed(imgs, mask);
        let attn_bias = self.attn_bias();
        run_blocks(&self.blocks, x, drop_path, frozen_blocks, attn_bias)
    }

    /// The tokens `[B, 1 + L, D]` before the blocks: patch embeddings (masked ones replaced by the
    /// mask token), [CLS] first, absolute position embeddings when the model has them.
    fn embed(&self, imgs: Tensor<4>, mask: Option<&BoolMask>) -> Tensor<3> {
        let device = imgs.device();
        let b = imgs.dims()[0];
        let mut x = self.patch_embed.forward(imgs);
        if let Some(mask) = mask {
            x = with_mask_token(x, mask.weights_tensor(&device), self.mask_token.val());
        }
        let x = Tensor::cat(vec![self.cls_token.val().repeat_dim(0, b), x], 1);
        match &self.pos_embed {
            Some(pos) => x + pos.val(),
            None => x,
        }
    }

    /// Block `i`'s score bias: its own relative position bias, the shared one, or their sum.
    fn attn_bias(&self) -> impl Fn(usize) -> Option<Tensor<4>> + '_ {
        let shared = self.rel_pos_bias.as_ref().map(RelativePositionBias::forward);
        move |i: usize| {
            let own = self.block_rel_pos_bias.get(i).map(RelativePositionBias::forward);
            match (own, shared.clone()) {
                (Some(a), Some(s)) => Some(a + s),
                (a, s) => a.or(s),
            }
        }
    }

    /// The attention probabilities `[B, H, 1 + L, 1 + L]` per block over every patch (no masking,
    /// [CLS] first), relative position biases included: BEiT's figure 2.
    pub fn attention_maps(&self, imgs: Tensor<4>) -> Vec<Tensor<4>> {
        crate::models::vit::attention_maps(&self.blocks, self.embed(imgs, None), self.attn_bias())
    }

    /// Logits `[M, vocab]` of the M masked patches of the batch, in row-major (image, patch) order
    /// (the official `lm_head(x[bool_masked_pos])`: the head runs on masked positions only).
    pub fn forward(&self, imgs: Tensor<4>, mask: &BoolMask) -> Tensor<2> {
        let device = imgs.device();
        let x = self.forward_features(imgs, mask);
        let [b, n, d] = x.dims();
        let patches = x.slice([0..b, 1..n]).reshape([b * (n - 1), d]);
        self.lm_head.forward(patches.select(0, mask.masked_indices_tensor(&device)))
    }

    /// The tokenizer's ids `[B, L]` at the masked patches, `[M]`, in the order of [`Self::forward`]'s rows.
    pub fn masked_targets(token_ids: Tensor<2, Int>, mask: &BoolMask) -> Tensor<1, Int> {
        let [b, l] = token_ids.dims();
        let device = token_ids.device();
        token_ids.reshape([b * l]).select(0, mask.masked_indices_tensor(&device))
    }

    /// Mean cross-entropy `[1]` of `logits: [M, vocab]` against visual-token ids `target_ids: [M]`.
    pub fn forward_loss(logits: Tensor<2>, target_ids: Tensor<1, Int>) -> Tensor<1> {
        let picked = log_softmax(logits, 1).gather(1, target_ids.unsqueeze_dim(1));
        picked.mean().neg()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_position_index_matches_the_official_layout() {
        // 2x2 window: 9 offsets + 3 cls rows = 12; patch 0 (0,0) vs patch 3 (1,1) is offset (-1,-1) -> 0.
        let idx = relative_position_index((2, 2));
        let n = 5;
        assert_eq!(idx[0], 11);
        assert_eq!(idx[1..n].to_vec(), vec![9; 4]);
        assert!((1..n).all(|i| idx[i * n] == 10));
        assert_eq!(idx[n + 1], 4, "a patch with itself is the centre offset");
        assert_eq!(idx[n + 4], 0);
        assert_eq!(idx[4 * n + 1], 8);
    }

    #[test]
    fn init_is_the_official_one() {
        let cfg = BeitConfig { depth: 3, ..BeitConfig::preset("beit_tiny_32").unwrap() };
        let params = crate::io::parameters(&cfg.init(0, &Device::flex()).unwrap());
        let max_abs = |k: &str| params[k].1.iter().fold(0f32, |m, v| m.max(v.abs()));
        for layer in 1..=3 {
            let bound = 0.02 / (2.0 * layer as f32).sqrt();
            for k in ["attn.proj.weight", "mlp.fc2.weight"] {
                let m = max_abs(&format!("blocks.{}.{k}", layer - 1));
                assert!(m <= bound * 1.0001 && m > bound * 0.9, "{k} of layer {layer}: {m} vs bound {bound}");
            }
            assert!(params[&format!("blocks.{}.gamma_2", layer - 1)].1.iter().all(|&g| g == 0.1));
            assert_eq!(max_abs(&format!("blocks.{}.attn.qkv.bias", layer - 1)), 0.0);
        }
        for k in ["blocks.0.attn.qkv.weight", "lm_head.weight", "patch_embed.proj.weight", "cls_token", "mask_token"] {
            assert!(max_abs(k) <= 0.02 && max_abs(k) > 0.019, "{k}");
        }
        assert_eq!(max_abs("rel_pos_bias.relative_position_bias_table"), 0.0);
        assert_eq!(params["rel_pos_bias.relative_position_bias_table"].0, vec![15 * 15 + 3, 3]);
        assert!(!params.keys().any(|k| k.starts_with("pos_embed") || k.starts_with("block_rel_pos_bias")));
    }

    #[test]
    fn a_training_step_runs_on_block_masks_with_a_variable_count() {
        use rand::SeedableRng;
        let cfg = BeitConfig { depth: 2, embed_dim: 48, ..BeitConfig::preset("beit_tiny_32").unwrap() };
        let device = Device::flex().autodiff();
        let model = cfg.init(1, &device).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let strategy = crate::masking::MaskStrategy::Block(crate::masking::BlockMasking {
            min_num_patches: 4,
            ..crate::masking::BlockMasking::beit(24)
        });
        let mask = strategy.sample((8, 8), 3, &mut rng).unwrap();
        let imgs = Tensor::<4>::random([3, 3, 32, 32], burn::tensor::Distribution::Default, &device);
        let ids = Tensor::<2, Int>::random([3, 64], burn::tensor::Distribution::Uniform(0.0, 512.0), &device);
        let logits = model.forward(imgs, &mask);
        assert_eq!(logits.dims(), [mask.count(), 512]);
        let loss =
            BeitForMaskedImageModeling::forward_loss(logits, BeitForMaskedImageModeling::masked_targets(ids, &mask));
        let l = loss.clone().into_scalar::<f32>();
        assert!((l - 512f32.ln()).abs() < 0.5, "initial loss {l} is near ln(vocab)");
        let grads = crate::io::gradients(&model, &loss.backward());
        assert!(grads.contains_key("mask_token") && grads.contains_key("blocks.1.gamma_1"));
    }

    #[test]
    fn presets_validate_and_bad_configs_say_what_to_change() {
        for (name, _) in BeitConfig::PRESETS {
            BeitConfig::preset(name).unwrap().validate().unwrap();
        }
        let base = BeitConfig::preset("beit_tiny_32").unwrap();
        let err = |c: BeitConfig| c.validate().unwrap_err().to_string();
        assert!(err(BeitConfig { img_size: 30, ..base.clone() }).contains("multiple of 4"));
        assert!(err(BeitConfig { num_heads: 5, ..base.clone() }).contains("divisible by 5 heads"));
        assert!(err(BeitConfig { vocab_size: 1, ..base.clone() }).contains("codebook size"));
        assert!(err(BeitConfig { layer_scale_init_value: -1.0, ..base.clone() }).contains("0 disables"));
        assert!(BeitConfig::preset("beit_huge").unwrap_err().to_string().contains("beit_base_patch16_224"));
        let json = serde_json::to_string(&base).unwrap();
        assert_eq!(serde_json::from_str::<BeitConfig>(&json).unwrap(), base);
    }
}
