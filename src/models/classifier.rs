//! Image classifiers for the evaluation protocols, behind one [`Classifier`] trait the fine-tuning
//! loop trains:
//!
//! - [`VitClassifier`] (MAE's `models_vit.py`): the encoder of a pretrained masked autoencoder (or
//!   a fresh one) on every patch, pooled, normalised, and a linear head. Global average pooling of
//!   the patch tokens followed by a fresh `fc_norm` is MAE's fine-tuning default; cls-token pooling
//!   after the encoder's own norm is the option (and MAE's linear-probing default).
//! - [`BeitClassifier`]: BEiT's encoder, mean-pooled patch tokens, `fc_norm`, a linear head.
//! - [`SwinTransformer`] with its head (SimMIM's fine-tuning), from a SimMIM encoder or fresh.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use anyhow::{Result, ensure};

use super::beit::BeitForMaskedImageModeling;
use super::init::{InitRng, normal, param};
use super::mae::MaskedAutoencoder;
use super::simmim::SimMim;
use super::swin::{ClassifierHead, SwinConfig, SwinTransformer};
use super::vit::{Block, LayerNorm, Linear, PatchEmbed, PatchTokens, embed_with_cls, run_blocks};

/// How the token sequence becomes one feature vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Pool {
    /// Mean of the patch tokens, then a fresh LayerNorm (`fc_norm`); MAE's fine-tuning default.
    #[default]
    Avg,
    /// The cls token after the encoder's final norm.
    Cls,
}

impl std::str::FromStr for Pool {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "avg" => Ok(Pool::Avg),
            "cls" => Ok(Pool::Cls),
            other => anyhow::bail!("unknown pooling '{other}': use avg (mean of patch tokens) or cls"),
        }
    }
}

/// A ViT encoder with a classification head.
#[derive(Module, Debug)]
pub struct VitClassifier {
    /// Patch embedding.
    pub patch_embed: PatchEmbed,
    /// `[1, 1, D]`
    pub cls_token: Param<Tensor<3>>,
    /// Position embeddings `[1, 1 + L, D]`, trained (as timm's `VisionTransformer` the official
    /// fine-tuning uses), starting from the MAE's; layer 0 for layer-wise lr decay.
    pub pos_embed: Param<Tensor<3>>,
    /// Encoder blocks.
    pub blocks: Vec<Block>,
    /// The norm before the head: the encoder's final norm for [`Pool::Cls`], a fresh `fc_norm`
    /// for [`Pool::Avg`] (as the official fine-tuning code, which drops the pretrained norm).
    pub norm: LayerNorm,
    /// `[D, classes]`
    pub head: Linear,
    global_pool: bool,
    drop_path: f64,
}

impl VitClassifier {
    /// The encoder of `mae` with a new head of `num_classes` outputs; its position embeddings
    /// become trainable, as in the official fine-tuning. The head weight is
    /// N(0, `head_std`), bias zero (MAE uses timm's `trunc_normal_` with std 2e-5 for fine-tuning,
    /// 0.01 for linear probing; its bounds of ±2 never bind at these scales).
    pub fn from_mae(mae: MaskedAutoencoder, num_classes: usize, pool: Pool, head_std: f32, seed: u64) -> Self {
        let device = mae.cls_token.val().device();
        let dim = mae.cls_token.val().dims()[2];
        let mut rng = InitRng::seed_from_u64(seed ^ 0x4845_4144);
        let head = Linear {
            weight: param(normal(&mut rng, dim * num_classes, head_std), [dim, num_classes], &device),
            bias: Some(param(vec![0.0; num_classes], [num_classes], &device)),
        };
        let norm = match pool {
            Pool::Avg => LayerNorm::with_eps(dim, mae.norm.eps(), &device),
            Pool::Cls => mae.norm,
        };
        Self {
            patch_embed: mae.patch_embed,
            cls_token: mae.cls_token,
            pos_embed: mae.pos_embed.set_require_grad(true),
            blocks: mae.blocks,
            norm,
            head,
            global_pool: pool == Pool::Avg,
            drop_path: 0.0,
        }
    }

    /// The classifier with stochastic depth `rate` at the last block in training.
    pub fn with_drop_path(self, rate: f64) -> Self {
        Self { drop_path: rate, ..self }
    }

    /// Pooling in use.
    pub fn pool(&self) -> Pool {
        if self.global_pool { Pool::Avg } else { Pool::Cls }
    }

    /// Number of encoder blocks.
    pub fn depth(&self) -> usize {
        self.blocks.len()
    }

    /// `imgs: [B, C, H, W] -> [B, D]`: pooled, normalised features. `drop_path` is the stochastic
    /// depth rate of the last block (linearly increasing from 0 over the blocks, as timm), drawn
    /// from `rng`; the first `frozen_blocks` blocks (and the embedding) get no gradient (partial
    /// fine-tuning).
    pub fn forward_features(
        &self,
        imgs: Tensor<4>,
        drop_path: Option<(f64, &mut InitRng)>,
        frozen_blocks: usize,
    ) -> Tensor<2> {
        let b = imgs.dims()[0];
        let x = embed_with_cls(&self.patch_embed, &self.cls_token, &self.pos_embed, imgs, PatchTokens::All);
        let x = run_blocks(&self.blocks, x, drop_path, frozen_blocks, |_| None);
        let [_, n, d] = x.dims();
        if self.global_pool {
            self.norm.forward(x.slice([0..b, 1..n]).mean_dim(1).reshape([b, d]))
        } else {
            self.norm.forward(x.slice([0..b, 0..1]).reshape([b, d]))
        }
    }

    /// `imgs: [B, C, H, W] -> [B, classes]` logits (inference: no drop path).
    pub fn forward(&self, imgs: Tensor<4>) -> Tensor<2> {
        self.head.forward(self.forward_features(imgs, None, 0))
    }

    /// The layer index of a parameter for layer-wise lr decay, as the official `get_layer_id_for_vit`:
    /// embeddings and cls token 0, block `i` is `i + 1`, everything after the blocks `depth + 1`.
    pub fn layer_id(path: &str, depth: usize) -> usize {
        if path.starts_with("cls_token") || path.starts_with("pos_embed") || path.starts_with("patch_embed") {
            0
        } else if let Some(rest) = path.strip_prefix("blocks.") {
            rest.split('.').next().and_then(|i| i.parse::<usize>().ok()).map_or(depth + 1, |i| i + 1)
        } else {
            depth + 1
        }
    }

    /// A fresh classifier of the architecture of `mae_cfg` (the from-scratch baseline).
    pub fn from_scratch(
        mae_cfg: &super::mae::MaeConfig,
        num_classes: usize,
        pool: Pool,
        seed: u64,
        device: &Device,
    ) -> anyhow::Result<Self> {
        Ok(Self::from_mae(mae_cfg.init(seed, device)?, num_classes, pool, 2e-5, seed))
    }
}

/// What the fine-tuning loop needs of a classifier.
pub trait Classifier: Module + Sized {
    /// Logits `[B, classes]` in training mode: stochastic depth drawn from `rng`, the first
    /// `frozen_blocks` blocks (and the embedding) without gradient.
    fn forward_train(&self, imgs: Tensor<4>, rng: &mut InitRng, frozen_blocks: usize) -> Tensor<2>;
    /// Logits `[B, classes]` at inference.
    fn logits(&self, imgs: Tensor<4>) -> Tensor<2>;
    /// Transformer blocks in all.
    fn depth(&self) -> usize;
    /// Layer of the parameter at `path` for layer-wise lr decay: 0 for the embedding, `1..=depth`
    /// for the blocks in order, `depth + 1` for what follows them.
    fn layer_id(&self, path: &str) -> usize;
    /// Whether the official fine-tuning script exempts the parameter at `path` (of `ndim`
    /// dimensions) from weight decay.
    fn no_weight_decay(path: &str, ndim: usize) -> bool;
    /// The embedding and the first `blocks` blocks stop requiring gradients, so their operations
    /// are not even recorded (cutting the graph alone would leave an unconsumed tape behind every
    /// step).
    fn freeze_first(self, blocks: usize) -> Self;
}

/// Stops `blocks` from requiring gradients.
fn freeze_blocks(blocks: Vec<Block>, n: usize) -> Vec<Block> {
    blocks.into_iter().enumerate().map(|(i, b)| if i < n { b.no_grad() } else { b }).collect()
}

impl Classifier for VitClassifier {
    fn forward_train(&self, imgs: Tensor<4>, rng: &mut InitRng, frozen_blocks: usize) -> Tensor<2> {
        let dp = (self.drop_path > 0.0).then_some((self.drop_path, rng));
        self.head.forward(self.forward_features(imgs, dp, frozen_blocks))
    }
    fn logits(&self, imgs: Tensor<4>) -> Tensor<2> {
        self.forward(imgs)
    }
    fn depth(&self) -> usize {
        self.blocks.len()
    }
    fn layer_id(&self, path: &str) -> usize {
        Self::layer_id(path, self.blocks.len())
    }
    /// MAE `util/lr_decay.param_groups_lrd`: 1-D parameters and `no_weight_decay()` =
    /// `pos_embed`, `cls_token`, `dist_token`.
    fn no_weight_decay(path: &str, ndim: usize) -> bool {
        ndim == 1 || matches!(path, "pos_embed" | "cls_token" | "dist_token")
    }
    fn freeze_first(self, blocks: usize) -> Self {
        if blocks == 0 {
            return self;
        }
        Self {
            patch_embed: self.patch_embed.no_grad(),
            cls_token: self.cls_token.set_require_grad(false),
            pos_embed: self.pos_embed.set_require_grad(false),
            blocks: freeze_blocks(self.blocks, blocks),
            ..self
        }
    }
}

/// BEiT's fine-tuning model: the pretrained BEiT encoder on every patch (no masking), mean of the
/// patch tokens, a fresh `fc_norm`, a linear head (the official `use_mean_pooling`). The MIM head
/// of the pretrained model stays unused. The relative position bias stays shared across blocks
/// (the official fine-tuning copies it into every block first; both start from the same values).
#[derive(Module, Debug)]
pub struct BeitClassifier {
    /// The pretrained encoder.
    pub encoder: BeitForMaskedImageModeling,
    /// Norm of the pooled features.
    pub fc_norm: LayerNorm,
    /// `[D, classes]`
    pub head: Linear,
    drop_path: f64,
}

impl BeitClassifier {
    /// A classifier with `num_classes` outputs on `encoder`, stochastic depth `drop_path`.
    pub fn new(encoder: BeitForMaskedImageModeling, num_classes: usize, drop_path: f64, seed: u64) -> Self {
        let device = encoder.cls_token.val().device();
        let d = encoder.cls_token.val().dims()[2];
        let mut rng = InitRng::seed_from_u64(seed ^ 0x4845_4144);
        let head = Linear {
            weight: param(normal(&mut rng, d * num_classes, 2e-5), [d, num_classes], &device),
            bias: Some(param(vec![0.0; num_classes], [num_classes], &device)),
        };
        let fc_norm = LayerNorm::with_eps(d, encoder.norm.eps(), &device);
        Self { encoder, fc_norm, head, drop_path }
    }

    fn head_of(&self, x: Tensor<3>) -> Tensor<2> {
        let [b, n, d] = x.dims();
        self.head.forward(self.fc_norm.forward(x.slice([0..b, 1..n]).mean_dim(1).reshape([b, d])))
    }
}

impl Classifier for BeitClassifier {
    fn forward_train(&self, imgs: Tensor<4>, rng: &mut InitRng, frozen_blocks: usize) -> Tensor<2> {
        let dp = (self.drop_path > 0.0).then_some((self.drop_path, rng));
        self.head_of(self.encoder.encode(imgs, None, dp, frozen_blocks))
    }
    fn logits(&self, imgs: Tensor<4>) -> Tensor<2> {
        self.head_of(self.encoder.encode(imgs, None, None, 0))
    }
    fn depth(&self) -> usize {
        self.encoder.blocks.len()
    }
    /// BEiT's `get_num_layer_for_vit`: tokens and patch embedding 0, block `i` is `i + 1`, the
    /// relative position bias and everything after the blocks `depth + 1`.
    fn layer_id(&self, path: &str) -> usize {
        VitClassifier::layer_id(path.strip_prefix("encoder.").unwrap_or(path), self.encoder.blocks.len())
    }
    /// unilm `run_class_finetuning.py`'s `get_parameter_groups`: 1-D parameters, biases and the
    /// model's `no_weight_decay()` = `pos_embed`, `cls_token` (here under `encoder.`).
    fn no_weight_decay(path: &str, ndim: usize) -> bool {
        ndim == 1
            || path.ends_with(".bias")
            || matches!(path.strip_prefix("encoder.").unwrap_or(path), "pos_embed" | "cls_token")
    }
    /// Also freezes the shared relative position bias, which the frozen blocks use too.
    fn freeze_first(self, blocks: usize) -> Self {
        if blocks == 0 {
            return self;
        }
        let mut e = self.encoder;
        e.patch_embed = e.patch_embed.no_grad();
        e.cls_token = e.cls_token.set_require_grad(false);
        e.mask_token = e.mask_token.set_require_grad(false);
        e.pos_embed = e.pos_embed.map(|p| p.set_require_grad(false));
        e.rel_pos_bias = e.rel_pos_bias.map(|r| r.no_grad());
        e.blocks = freeze_blocks(e.blocks, blocks);
        e.block_rel_pos_bias = e
            .block_rel_pos_bias
            .into_iter()
            .enumerate()
            .map(|(i, r)| if i < blocks { r.no_grad() } else { r })
            .collect();
        Self { encoder: e, ..self }
    }
}

/// A Swin classifier from the encoder of a SimMIM model: a fresh `SwinConfig` with `num_classes`
/// outputs and stochastic depth `drop_path` (baked into the stages), the pretrained encoder weights
/// copied in, a new head.
pub fn swin_from_simmim(
    simmim: SimMim,
    cfg: &SwinConfig,
    num_classes: usize,
    drop_path: f64,
    seed: u64,
) -> Result<SwinTransformer> {
    let device = simmim.mask_token.val().device();
    let fresh = swin_from_scratch(cfg, num_classes, drop_path, seed, &device)?;
    let mut weights = crate::io::parameters(&simmim.encoder);
    weights.extend(crate::io::parameters(&fresh).into_iter().filter(|(k, _)| k.starts_with("head.")));
    crate::io::load_tensor_map(fresh, &weights, "the SimMIM encoder")
}

/// A fresh Swin classifier of architecture `cfg` with `num_classes` outputs.
pub fn swin_from_scratch(
    cfg: &SwinConfig,
    num_classes: usize,
    drop_path: f64,
    seed: u64,
    device: &Device,
) -> Result<SwinTransformer> {
    ensure!(num_classes > 0, "a classifier needs at least one class");
    let mut model = SwinConfig { num_classes, drop_path_rate: drop_path, ..cfg.clone() }.init(seed, device)?;
    // As the official fine-tuning: a small head so the pretrained features start unperturbed.
    let mut rng = InitRng::seed_from_u64(seed ^ 0x4845_4144);
    let d = cfg.num_features();
    model.head = Some(ClassifierHead {
        fc: Linear {
            weight: param(normal(&mut rng, d * num_classes, 2e-5), [d, num_classes], device),
            bias: Some(param(vec![0.0; num_classes], [num_classes], device)),
        },
    });
    Ok(model)
}

impl Classifier for SwinTransformer {
    fn forward_train(&self, imgs: Tensor<4>, rng: &mut InitRng, _frozen_blocks: usize) -> Tensor<2> {
        let last = self.forward_stages_from(self.embed(imgs), Some(rng)).pop().expect("at least one stage");
        self.forward_head(self.norm.forward(last))
    }
    fn logits(&self, imgs: Tensor<4>) -> Tensor<2> {
        self.forward(imgs)
    }
    fn depth(&self) -> usize {
        self.layers.iter().map(|s| s.blocks.len()).sum()
    }
    /// SimMIM's `get_swin_layer` with timm's layout (patch merging at the start of stage `i`
    /// belongs with the blocks before it).
    fn layer_id(&self, path: &str) -> usize {
        let before = |i: usize| self.layers[..i.min(self.layers.len())].iter().map(|s| s.blocks.len()).sum::<usize>();
        if path.starts_with("patch_embed") {
            return 0;
        }
        let mut parts = path.split('.');
        if parts.next() == Some("layers")
            && let Some(i) = parts.next().and_then(|i| i.parse::<usize>().ok())
        {
            return match (parts.next(), parts.next().and_then(|j| j.parse::<usize>().ok())) {
                (Some("blocks"), Some(j)) => before(i) + j + 1,
                _ => before(i),
            };
        }
        self.depth() + 1
    }
    /// SimMIM's `build_finetune_optimizer` (and Swin's `build_optimizer`): 1-D parameters, biases,
    /// `absolute_pos_embed` and every `relative_position_bias_table` (the keyword matches the
    /// unprefixed names here).
    fn no_weight_decay(path: &str, ndim: usize) -> bool {
        ndim == 1
            || path.ends_with(".bias")
            || path == "absolute_pos_embed"
            || path.contains("relative_position_bias_table")
    }
    /// Freezes every parameter whose layer id is at most `blocks` (the embedding, the first
    /// `blocks` blocks across stages, and the patch merging of a stage whose preceding blocks are
    /// all frozen), the same split as layer-wise lr decay.
    fn freeze_first(mut self, blocks: usize) -> Self {
        if blocks == 0 {
            return self;
        }
        self.patch_embed = self.patch_embed.no_grad();
        let mut before = 0;
        for stage in &mut self.layers {
            let n = stage.blocks.len();
            if before <= blocks {
                stage.downsample = stage.downsample.take().map(|d| d.no_grad());
            }
            stage.blocks = freeze_blocks(std::mem::take(&mut stage.blocks), blocks.saturating_sub(before));
            before += n;
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::mae::MaeConfig;

    #[test]
    fn swin_partial_finetuning_trains_only_the_last_blocks() {
        use crate::models::swin::SwinConfig;
        use burn::optim::GradientsParams;
        let device = Device::flex().autodiff();
        let cfg = SwinConfig::preset("swin_tiny_28").unwrap();
        let model = swin_from_scratch(&SwinConfig { in_chans: 1, ..cfg }, 10, 0.0, 0, &device).unwrap();
        let depth = model.depth();
        let frozen = depth - 1;
        let model = model.freeze_first(frozen);
        let before = crate::io::parameters(&model);
        let imgs = Tensor::<4>::random([2, 1, 28, 28], burn::tensor::Distribution::Default, &device);
        let loss = model.forward_train(imgs, &mut InitRng::seed_from_u64(0), 0).powi_scalar(2).sum();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let model = crate::optim::adamw(&model, 0.0, crate::optim::TORCH_BETAS, |_, _| false).step(1e-2, model, grads);
        let after = crate::io::parameters(&model);
        for (path, (_, v)) in &before {
            let trainable = model.layer_id(path) > frozen;
            assert_eq!(
                &after[path].1 != v,
                trainable,
                "{path} (layer {}) should {}train",
                model.layer_id(path),
                if trainable { "" } else { "not " }
            );
        }
    }

    #[test]
    fn layer_ids_follow_the_official_rule() {
        assert_eq!(VitClassifier::layer_id("cls_token", 6), 0);
        assert_eq!(VitClassifier::layer_id("patch_embed.proj.weight", 6), 0);
        assert_eq!(VitClassifier::layer_id("pos_embed", 6), 0);
        assert_eq!(VitClassifier::layer_id("blocks.0.attn.qkv.weight", 6), 1);
        assert_eq!(VitClassifier::layer_id("blocks.5.mlp.fc2.bias", 6), 6);
        assert_eq!(VitClassifier::layer_id("norm.weight", 6), 7);
        assert_eq!(VitClassifier::layer_id("head.weight", 6), 7);
    }

    #[test]
    fn cls_features_are_the_mae_encoder_on_every_patch() {
        let device = Device::flex();
        let cfg = MaeConfig::preset("mae_micro").unwrap();
        let mae = cfg.init(3, &device).unwrap();
        let imgs = Tensor::<4>::random([2, 1, 28, 28], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let latent = mae.forward_encoder(imgs.clone(), &crate::masking::Mask::keep_all(2, cfg.num_patches()));
        let cls = latent.slice([0..2, 0..1]).reshape([2, cfg.embed_dim]);
        let features = VitClassifier::from_mae(mae, 10, Pool::Cls, 0.01, 0).forward_features(imgs, None, 0);
        let diff = (features - cls).abs().max().into_scalar::<f32>();
        assert!(diff < 1e-6, "classifier encoder differs from the MAE encoder by {diff}");
    }

    #[test]
    fn classifier_uses_every_patch_and_freezing_stops_gradients() {
        let device = Device::flex().autodiff();
        let cfg = MaeConfig::preset("mae_micro").unwrap();
        let model = VitClassifier::from_scratch(&cfg, 10, Pool::Avg, 0, &device).unwrap();
        let imgs = Tensor::<4>::random([2, 1, 28, 28], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        assert_eq!(model.forward(imgs.clone()).dims(), [2, 10]);
        let model = model.freeze_first(1);
        assert!(
            !model.blocks[0].attn.qkv.weight.val().is_require_grad()
                && !model.patch_embed.proj.weight.val().is_require_grad()
        );
        assert!(model.blocks[1].attn.qkv.weight.val().is_require_grad() && model.head.weight.val().is_require_grad());
        let grads = model.head.forward(model.forward_features(imgs, None, 1)).sum().backward();
        assert!(model.blocks[0].attn.qkv.weight.grad(&grads).is_none(), "a frozen block must get no gradient");
        assert!(model.blocks[1].attn.qkv.weight.grad(&grads).is_some(), "a trainable block must get a gradient");
    }
}
