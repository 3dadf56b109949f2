//! The masked-image-modeling methods `mim pretrain` trains, behind one loop: what the model is,
//! how a batch is masked, and the loss.
//!
//! - MAE: random masking by argsort of noise (or any [`MaskStrategy`] made MAE-ready), pixel
//!   regression on removed patches ([`MaskedAutoencoder`]).
//! - SimMIM: coarse random masking of large squares, a mask token at the Swin input, L1 on masked
//!   pixels ([`SimMim`]).

use anyhow::{Result, bail};
use burn::module::Module;
use burn::tensor::{Device, Tensor};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::masking::{Mask, MaskStrategy, SimMimMasking, len_keep, uniform_noise};
use crate::models::beit::BeitConfig;
use crate::models::mae::{MaeConfig, MaskedAutoencoder};
use crate::models::simmim::SimMim;
use crate::models::swin::{SwinConfig, SwinTransformer};

/// A pretraining method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Masked autoencoder (He et al.): ViT encoder on visible patches, light decoder, pixel loss.
    #[default]
    Mae,
    /// SimMIM (Xie et al.) on a Swin Transformer: mask token at the input, L1 on masked pixels.
    Simmim,
}

impl Method {
    /// The preset a method trains when none is named.
    pub fn default_model(self) -> &'static str {
        match self {
            Method::Mae => "mae_tiny_28",
            Method::Simmim => "swin_tiny_28",
        }
    }
}

/// The architecture of any pretrainable model, as checkpoints record it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ModelConfig {
    /// A masked autoencoder.
    Mae(MaeConfig),
    /// A BEiT for masked image modeling.
    Beit(BeitConfig),
    /// A Swin Transformer (pretrained by SimMIM).
    Swin(SwinConfig),
}

impl ModelConfig {
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
}

/// What `mim pretrain` needs of a model.
pub trait MimModel: Module + Sized {
    /// A freshly initialised model of architecture `cfg` (an error if `cfg` is another family).
    fn build(cfg: &ModelConfig, seed: u64, device: &Device) -> Result<Self>;

    /// The loss of one batch `imgs: [B, C, H, W]`; masks (and stochastic depth) are drawn from `rng`.
    fn batch_loss(&self, imgs: Tensor<4>, masking: &MaskSettings, rng: &mut ChaCha8Rng) -> Result<Tensor<1>>;

    /// Encoder features `[B, D]` of unmasked images, for the k-NN monitor (MAE: the cls token after
    /// the final norm; Swin: the pooled final feature map).
    fn features(&self, imgs: Tensor<4>) -> Tensor<2>;
}

/// How a method masks a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct MaskSettings {
    /// Fraction of patches masked (MAE's ratio; the default SimMIM ratio).
    pub ratio: f64,
    /// Another strategy than the method's own (MAE ablations: block, grid).
    pub strategy: Option<MaskStrategy>,
    /// Patch grid `(rows, cols)`.
    pub grid: (usize, usize),
}

impl MimModel for MaskedAutoencoder {
    fn build(cfg: &ModelConfig, seed: u64, device: &Device) -> Result<Self> {
        cfg.mae()?.init(seed, device)
    }

    fn batch_loss(&self, imgs: Tensor<4>, masking: &MaskSettings, rng: &mut ChaCha8Rng) -> Result<Tensor<1>> {
        let b = imgs.dims()[0];
        let l = masking.grid.0 * masking.grid.1;
        let mask = match &masking.strategy {
            None => Mask::from_noise(&uniform_noise(rng, b, l), b, masking.ratio)?,
            Some(s) => s.sample(masking.grid, b, rng)?.to_mae_mask(len_keep(l, masking.ratio), rng)?,
        };
        Ok(self.forward(imgs, &mask).loss)
    }

    fn features(&self, imgs: Tensor<4>) -> Tensor<2> {
        let [b, _, _, _] = imgs.dims();
        let l = self.pos_embed.dims()[1] - 1;
        let latent = self.forward_encoder(imgs, &Mask::keep_all(b, l));
        let d = latent.dims()[2];
        latent.slice([0..b, 0..1]).reshape([b, d])
    }
}

impl MimModel for SimMim {
    fn build(cfg: &ModelConfig, seed: u64, device: &Device) -> Result<Self> {
        match cfg {
            ModelConfig::Swin(c) => SimMim::new(c, seed, device),
            other => bail!("SimMIM trains a Swin Transformer, not a {} model: pass a swin_* --model", other.kind()),
        }
    }

    fn batch_loss(&self, imgs: Tensor<4>, masking: &MaskSettings, rng: &mut ChaCha8Rng) -> Result<Tensor<1>> {
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

/// SimMIM's masking scaled to the model: squares as large as the encoder's total stride (32 px
/// for Swin at 192 px, as the paper), `ratio` of them masked (0.6 in the paper).
fn simmim_default(model: &SimMim, ratio: f64) -> MaskStrategy {
    MaskStrategy::SimMim(SimMimMasking {
        mask_patch_size: model.encoder_stride(),
        model_patch_size: model.encoder.patch_embed.patch_size(),
        mask_ratio: ratio,
    })
}
