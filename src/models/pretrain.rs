//! What pretraining needs of a model, behind one interface for every method's loop: the
//! architecture as checkpoints record it ([`ModelConfig`]), and for each pretrainable model how a
//! batch is masked and its loss ([`MimModel`]).
//!
//! - MAE: random masking by argsort of noise (or any [`MaskStrategy`] made MAE-ready), pixel
//!   regression on removed patches ([`MaskedAutoencoder`]).
//! - BEiT: block-wise masking, a [MASK] embedding at the encoder input, cross-entropy against the
//!   visual tokenizer's ids at masked patches ([`BeitForMaskedImageModeling`]).
//! - SimMIM: coarse random masking of large squares, a mask token at the Swin input, L1 on masked
//!   pixels ([`SimMim`]).

use anyhow::{Result, bail};
use burn::module::Module;
use burn::tensor::{Device, Int, Tensor};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::Dataset;
use crate::data::loader::{Batch, for_each_batch};
use crate::masking::{BlockMasking, BoolMask, Mask, MaskStrategy, SimMimMasking, len_keep, uniform_noise};
use crate::models::beit::{BeitConfig, BeitForMaskedImageModeling};
use crate::models::mae::{MaeConfig, MaeTarget, MaskedAutoencoder, PcaBasis};
use crate::models::simmim::SimMim;
use crate::models::swin::{SwinConfig, SwinTransformer};
use crate::models::tokenizer::VqTokenizer;
use crate::optim::Update;

/// The architecture of any pretrainable model, as checkpoints record it: the family's config
/// tagged with the family (`{"family": "mae", "img_size": 28, ...}`), so that a config is read as
/// the family that wrote it rather than as the first family whose fields happen to fit. Checkpoints
/// written before the tag hold the bare config; they still load (see the [`Deserialize`] impl).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "family", rename_all = "lowercase")]
pub enum ModelConfig {
    /// A masked autoencoder.
    Mae(MaeConfig),
    /// A BEiT for masked image modeling.
    Beit(BeitConfig),
    /// A Swin Transformer (pretrained by SimMIM).
    Swin(SwinConfig),
}

/// [`ModelConfig`] as written now: tagged with its `family`.
#[derive(Deserialize)]
#[serde(tag = "family", rename_all = "lowercase")]
enum Tagged {
    Mae(MaeConfig),
    Beit(BeitConfig),
    Swin(SwinConfig),
}

/// [`ModelConfig`] as written before the tag (`#[serde(untagged)]`): the bare config, whose family
/// is the first whose fields match (every family's config denies unknown fields). Its own module
/// keeps the name `ModelConfig` in serde's error message, as before.
mod untagged {
    use super::{BeitConfig, MaeConfig, SwinConfig};

    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    pub(super) enum ModelConfig {
        Mae(MaeConfig),
        Beit(BeitConfig),
        Swin(SwinConfig),
    }
}

/// Reads the tagged form when the object names a `family` (no family's config has such a field),
/// and otherwise the untagged form of older checkpoints, matched as those were written.
impl<'de> Deserialize<'de> for ModelConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error;
        let value = serde_json::Value::deserialize(deserializer)?;
        Ok(if value.get("family").is_some() {
            match Tagged::deserialize(value).map_err(D::Error::custom)? {
                Tagged::Mae(c) => ModelConfig::Mae(c),
                Tagged::Beit(c) => ModelConfig::Beit(c),
                Tagged::Swin(c) => ModelConfig::Swin(c),
            }
        } else {
            match untagged::ModelConfig::deserialize(value).map_err(D::Error::custom)? {
                untagged::ModelConfig::Mae(c) => ModelConfig::Mae(c),
                untagged::ModelConfig::Beit(c) => ModelConfig::Beit(c),
                untagged::ModelConfig::Swin(c) => ModelConfig::Swin(c),
            }
        })
    }
}

impl ModelConfig {
    /// The architecture of preset `name` of any family (a from-scratch run names only a preset).
    pub fn preset(name: &str) -> Result<Self> {
        use super::{find_preset, preset_names};
        let found = find_preset(MaeConfig::PRESETS, name)
            .map(ModelConfig::Mae)
            .or_else(|| find_preset(BeitConfig::PRESETS, name).map(ModelConfig::Beit))
            .or_else(|| find_preset(SwinConfig::PRESETS, name).map(ModelConfig::Swin));
        let Some(cfg) = found else {
            bail!(
                "unknown model preset '{name}': choose an MAE ({}), BEiT ({}) or Swin ({}) preset",
                preset_names(MaeConfig::PRESETS),
                preset_names(BeitConfig::PRESETS),
                preset_names(SwinConfig::PRESETS)
            )
        };
        Ok(cfg)
    }

    /// The masked autoencoder's architecture, or an error naming what the checkpoint holds.
    pub fn mae(&self) -> Result<&MaeConfig> {
        match self {
            ModelConfig::Mae(c) => Ok(c),
            other => bail!(
                "this checkpoint holds a {} model, not a masked autoencoder: this command works on `mim pretrain --method mae` checkpoints",
                other.kind()
            ),
        }
    }

    /// Short name of the architecture family.
    pub fn kind(&self) -> &'static str {
        match self {
            ModelConfig::Mae(_) => "MAE",
            ModelConfig::Beit(_) => "BEiT",
            ModelConfig::Swin(_) => "Swin",
        }
    }

    /// Input side in pixels.
    pub fn img_size(&self) -> usize {
        match self {
            ModelConfig::Mae(c) => c.img_size,
            ModelConfig::Beit(c) => c.img_size,
            ModelConfig::Swin(c) => c.img_size,
        }
    }

    /// Patch side in pixels.
    pub fn patch_size(&self) -> usize {
        match self {
            ModelConfig::Mae(c) => c.patch_size,
            ModelConfig::Beit(c) => c.patch_size,
            ModelConfig::Swin(c) => c.patch_size,
        }
    }

    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.img_size() / self.patch_size()
    }

    /// Patches per image.
    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }

    /// Image channels.
    pub fn in_chans(&self) -> usize {
        match self {
            ModelConfig::Mae(c) => c.in_chans,
            ModelConfig::Beit(c) => c.in_chans,
            ModelConfig::Swin(c) => c.in_chans,
        }
    }

    /// Checks the architecture is buildable, naming what is not.
    pub fn validate(&self) -> Result<()> {
        match self {
            ModelConfig::Mae(c) => c.validate(),
            ModelConfig::Beit(c) => c.validate(),
            ModelConfig::Swin(c) => c.validate(),
        }
    }
}

/// What `mim pretrain` needs of a model.
pub trait MimModel: Module + Sized {
    /// A freshly initialised model of architecture `cfg` (an error if `cfg` is another family).
    fn build(cfg: &ModelConfig, seed: u64, device: &Device) -> Result<Self>;

    /// The loss of one batch (`batch.tensor(device)` is the input); masks (and stochastic depth) are
    /// drawn from `rng`.
    fn batch_loss(&self, batch: &Batch, device: &Device, ctx: &StepContext, rng: &mut ChaCha8Rng) -> Result<Tensor<1>>;

    /// Whether the method's official pretraining script exempts the parameter at `path` (of
    /// `ndim` dimensions) from weight decay.
    fn no_weight_decay(path: &str, ndim: usize) -> bool;

    /// Fits what a fresh model takes from the data before training (MAE's PCA target basis);
    /// nothing by default.
    fn fit_to_data(self, _ds: &Dataset, _device: &Device) -> Result<Self> {
        Ok(self)
    }

    /// Encoder features `[B, D]` of unmasked images, for the k-NN monitor (MAE: the cls token after
    /// the final norm; Swin: the pooled final feature map).
    fn features(&self, imgs: Tensor<4>) -> Tensor<2>;

    /// After each optimizer update (`iteration` is the micro-batch that completed it): where a
    /// model with an EMA teacher moves the teacher towards the student. Nothing by default.
    fn after_update(self, _update: &Update, _iteration: u64) -> Self {
        self
    }
}

/// What a method needs besides the batch: how to mask it, and BEiT's tokenizer.
#[derive(Debug, Clone)]
pub struct StepContext {
    /// Fraction of patches masked (MAE's ratio; the default SimMIM ratio).
    pub ratio: f64,
    /// Another strategy than the method's own (MAE ablations: block, grid).
    pub strategy: Option<MaskStrategy>,
    /// Patch grid `(rows, cols)`.
    pub grid: (usize, usize),
    /// BEiT's visual tokenizer (frozen).
    pub tokenizer: Option<VqTokenizer>,
}

impl MimModel for MaskedAutoencoder {
    fn build(cfg: &ModelConfig, seed: u64, device: &Device) -> Result<Self> {
        cfg.mae()?.init(seed, device)
    }

    /// `main_pretrain.py`'s timm `add_weight_decay` with no skip list: 1-D parameters and biases.
    /// The `[1, 1, D]` cls and mask tokens are decayed, as there.
    fn no_weight_decay(path: &str, ndim: usize) -> bool {
        ndim <= 1 || path.ends_with(".bias")
    }

    fn batch_loss(&self, batch: &Batch, device: &Device, ctx: &StepContext, rng: &mut ChaCha8Rng) -> Result<Tensor<1>> {
        let imgs = batch.tensor(device);
        let b = imgs.dims()[0];
        let l = ctx.grid.0 * ctx.grid.1;
        let mask = match &ctx.strategy {
            None => Mask::from_noise(&uniform_noise(rng, b, l), b, ctx.ratio)?,
            Some(s) => s.sample(ctx.grid, b, rng)?.to_mae_mask(len_keep(l, ctx.ratio), rng)?,
        };
        match self.target_kind() {
            MaeTarget::Tokens { .. } => {
                let pred = self.forward_decoder_targets(self.forward_encoder(imgs, &mask), &mask);
                Ok(self.forward_token_loss(pred, token_ids(ctx, batch, device)?, &mask))
            }
            _ => Ok(self.forward(imgs, &mask).loss),
        }
    }

    /// A PCA target's basis from the patches of the first [`PCA_IMAGES`] training images (resized,
    /// normalised per patch as the targets are).
    fn fit_to_data(self, ds: &Dataset, device: &Device) -> Result<Self> {
        let MaeTarget::Pca { components } = self.target_kind() else { return Ok(self) };
        let mut sample = ds.clone();
        sample.truncate(PCA_IMAGES);
        let side = self.img_size();
        let mut patches = Vec::new();
        for_each_batch(&sample, side, 256, |batch| {
            let t = self.pixel_target(batch.tensor(device)).detach();
            let [b, l, p] = t.dims();
            patches.push(t.reshape([b * l, p]));
            Ok(())
        })?;
        let basis = PcaBasis::fit(Tensor::cat(patches, 0), components)?;
        self.with_pca(basis)
    }

    fn features(&self, imgs: Tensor<4>) -> Tensor<2> {
        let [b, _, _, _] = imgs.dims();
        let l = self.pos_embed.dims()[1] - 1;
        let latent = self.forward_encoder(imgs, &Mask::keep_all(b, l));
        let d = latent.dims()[2];
        latent.slice([0..b, 0..1]).reshape([b, d])
    }
}

impl MimModel for BeitForMaskedImageModeling {
    fn build(cfg: &ModelConfig, seed: u64, device: &Device) -> Result<Self> {
        match cfg {
            ModelConfig::Beit(c) => c.init(seed, device),
            other => bail!("BEiT pretraining needs a beit_* --model, not a {} model", other.kind()),
        }
    }

    /// unilm `optim_factory.get_parameter_groups` with the model's `no_weight_decay()`: 1-D
    /// parameters (layer scales included), biases, `pos_embed` and `cls_token`. The mask token and
    /// the relative position bias tables are decayed, as there.
    fn no_weight_decay(path: &str, ndim: usize) -> bool {
        ndim == 1 || path.ends_with(".bias") || matches!(path, "pos_embed" | "cls_token")
    }

    /// Block-wise masking of `ratio x L` patches (BEiT's 75 of 196 at 224 is 0.38), cross-entropy
    /// at the masked patches against the tokenizer's ids of the same (augmented) image.
    fn batch_loss(&self, batch: &Batch, device: &Device, ctx: &StepContext, rng: &mut ChaCha8Rng) -> Result<Tensor<1>> {
        self.token_loss(batch.tensor(device), token_ids(ctx, batch, device)?, ctx, rng)
    }

    /// Mean of the patch tokens after the final norm (BEiT's linear-probing features).
    fn features(&self, imgs: Tensor<4>) -> Tensor<2> {
        let b = imgs.dims()[0];
        let (h, w) = self.grid();
        let none = BoolMask::new(vec![false; b * h * w], b, (h, w)).expect("a mask of the model's own grid");
        let x = self.forward_features(imgs, &none);
        let [_, n, d] = x.dims();
        x.slice([0..b, 1..n]).mean_dim(1).reshape([b, d])
    }
}

impl MimModel for SimMim {
    fn build(cfg: &ModelConfig, seed: u64, device: &Device) -> Result<Self> {
        match cfg {
            ModelConfig::Swin(c) => SimMim::new(c, seed, device),
            other => bail!("SimMIM trains a Swin Transformer, not a {} model: pass a swin_* --model", other.kind()),
        }
    }

    /// SimMIM `optimizer.get_pretrain_param_groups`: 1-D parameters, biases, and the model's
    /// `no_weight_decay()` (`encoder.mask_token`, here `mask_token`; `encoder.absolute_pos_embed`).
    /// Its keyword `encoder.relative_position_bias_table` matches no parameter name (the tables
    /// live at `encoder.layers.N.blocks.M.attn.`), so the official script decays the tables, and
    /// so does mim.
    fn no_weight_decay(path: &str, ndim: usize) -> bool {
        ndim == 1 || path.ends_with(".bias") || matches!(path, "mask_token" | "encoder.absolute_pos_embed")
    }

    fn batch_loss(
        &self,
        batch: &Batch,
        device: &Device,
        masking: &StepContext,
        rng: &mut ChaCha8Rng,
    ) -> Result<Tensor<1>> {
        let imgs = batch.tensor(device);
        let b = imgs.dims()[0];
        let strategy = masking.strategy.clone().unwrap_or_else(|| simmim_default(self, masking.ratio));
        let mask = strategy.sample(masking.grid, b, rng)?;
        let l = mask.num_patches();
        let m = mask.weights_tensor(&imgs.device()).reshape([b, l]);
        Ok(self.forward_train(imgs, m, Some(rng)).loss)
    }

    fn features(&self, imgs: Tensor<4>) -> Tensor<2> {
        SwinTransformer::pool(self.encoder.forward_features(imgs))
    }
}

impl BeitForMaskedImageModeling {
    /// The loss of [`MimModel::batch_loss`] given the visual-token ids `[B, L]` of `imgs` (the
    /// benchmark passes random ids, keeping the tokenizer out of the timed step): block-wise masking
    /// of `ratio x L` patches drawn from `rng` (or `ctx.strategy`), cross-entropy at the masked ones.
    pub fn token_loss(
        &self,
        imgs: Tensor<4>,
        ids: Tensor<2, Int>,
        ctx: &StepContext,
        rng: &mut ChaCha8Rng,
    ) -> Result<Tensor<1>> {
        let b = imgs.dims()[0];
        let strategy =
            ctx.strategy.clone().unwrap_or_else(|| MaskStrategy::Block(BlockMasking::beit(beit_masked(ctx))));
        let mask = strategy.sample(ctx.grid, b, rng)?;
        let logits = self.forward(imgs, &mask);
        Ok(Self::forward_loss(logits, Self::masked_targets(ids, &mask)))
    }
}

/// Patches BEiT's block-wise masking aims to mask per image: `ratio x L`, rounded (BEiT's 75 of
/// 196 at 224 is 0.38).
pub fn beit_masked(ctx: &StepContext) -> usize {
    (ctx.ratio * (ctx.grid.0 * ctx.grid.1) as f64).round() as usize
}

/// Images whose patches fit an MAE's PCA target basis.
pub const PCA_IMAGES: usize = 2000;

/// The visual tokenizer's ids `[B, L]` of the batch's images (the same augmented views the model
/// sees). The tokenizer is frozen: it runs outside autodiff.
fn token_ids(ctx: &StepContext, batch: &Batch, device: &Device) -> Result<Tensor<2, Int>> {
    let Some(tokenizer) = &ctx.tokenizer else {
        bail!("token targets need a tokenizer: pass --tokenizer FILE (train one with `mim tokenizer train`)")
    };
    let tokenizer_device = tokenizer.codebook.val().device();
    Ok(tokenizer.encode_ids(batch.tensor(&tokenizer_device))?.to_device(device))
}

/// SimMIM's masking scaled to the model: squares as large as the encoder's total stride (32 px
/// for Swin at 192 px, as the paper), `ratio` of them masked (0.6 in the paper).
fn simmim_default(model: &SimMim, ratio: f64) -> MaskStrategy {
    MaskStrategy::SimMim(SimMimMasking {
        mask_patch_size: model.encoder_stride(),
        model_patch_size: model.encoder.patch_embed.patch_size(),
        mask_ratio: ratio,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configs() -> [ModelConfig; 3] {
        [
            ModelConfig::Mae(MaeConfig::preset("mae_tiny_28").unwrap()),
            ModelConfig::Beit(BeitConfig::preset("beit_tiny_28").unwrap()),
            ModelConfig::Swin(SwinConfig::preset("swin_tiny_28").unwrap()),
        ]
    }

    #[test]
    fn model_configs_are_written_tagged_and_read_back() {
        for (cfg, family) in configs().into_iter().zip(["mae", "beit", "swin"]) {
            let json = serde_json::to_value(&cfg).unwrap();
            assert_eq!(json["family"], family, "{json}");
            assert_eq!(json["img_size"], 28, "the family's fields sit beside the tag: {json}");
            assert_eq!(serde_json::from_value::<ModelConfig>(json).unwrap(), cfg);
        }
    }

    #[test]
    fn untagged_model_configs_of_older_checkpoints_still_load() {
        // What `#[serde(untagged)]` wrote: the bare config of the family.
        for cfg in configs() {
            let bare = match &cfg {
                ModelConfig::Mae(c) => serde_json::to_string(c),
                ModelConfig::Beit(c) => serde_json::to_string(c),
                ModelConfig::Swin(c) => serde_json::to_string(c),
            }
            .unwrap();
            assert!(!bare.contains("family"), "{bare}");
            assert_eq!(serde_json::from_str::<ModelConfig>(&bare).unwrap(), cfg, "{bare}");
        }
        // A bare MAE config without the fields that have defaults (`encoder_mask_token`, `target`).
        let old = r#"{"img_size":28,"patch_size":4,"in_chans":1,"embed_dim":192,"depth":12,"num_heads":3,
            "decoder_embed_dim":128,"decoder_depth":4,"decoder_num_heads":4,"mlp_ratio":4.0,"norm_pix_loss":true}"#;
        let ModelConfig::Mae(mae) = serde_json::from_str(old).unwrap() else { panic!("an MAE config") };
        assert_eq!((mae.embed_dim, mae.target, mae.encoder_mask_token), (192, MaeTarget::Pixels, false));
    }

    #[test]
    fn a_config_of_the_wrong_family_or_with_unknown_fields_is_refused() {
        let mut beit = serde_json::to_value(&configs()[1]).unwrap();
        beit["family"] = "mae".into();
        assert!(serde_json::from_value::<ModelConfig>(beit).unwrap_err().to_string().contains("unknown field"));
        let mut swin = serde_json::to_value(&configs()[2]).unwrap();
        swin["colour"] = 1.into();
        assert!(serde_json::from_value::<ModelConfig>(swin).is_err());
        assert!(
            serde_json::from_str::<ModelConfig>(r#"{"family":"vgg","img_size":28}"#)
                .unwrap_err()
                .to_string()
                .contains("vgg")
        );
        let err = serde_json::from_str::<ModelConfig>(r#"{"img_size":28}"#).unwrap_err().to_string();
        assert!(err.contains("untagged enum ModelConfig"), "{err}");
    }
}
