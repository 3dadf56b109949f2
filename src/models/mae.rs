//! Masked Autoencoder (He et al. 2021), following the official `models_mae.py`:
//! the encoder sees only the visible patches; a light decoder appends one shared mask token per
//! removed patch, unshuffles, adds its own position embeddings and predicts patch pixels; the loss
//! is the MSE on removed patches only, against per-patch normalised pixels by default.
//!
//! `encoder_mask_token` builds the paper's Table 1c / Table 2 counterpart instead: every patch
//! enters the encoder, removed ones replaced by a learned mask token, and the decoder reads the
//! encoder's full, ordered sequence (3.3x the encoder FLOPs at 75% masking).

use anyhow::{Result, ensure};
use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::init::InitRng;
use super::vit::{Block, LayerNorm, Linear, PatchEmbed, PatchTokens, embed_with_cls, gather_tokens, patchify, pos_embed_tensor, token, unpatchify};
use crate::masking::Mask;

/// Architecture of a masked autoencoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaeConfig {
    /// Image side in pixels (square images).
    pub img_size: usize,
    /// Patch side in pixels; must divide `img_size`.
    pub patch_size: usize,
    /// Image channels (1 for Fashion-MNIST, 3 for RGB).
    pub in_chans: usize,
    /// Encoder width.
    pub embed_dim: usize,
    /// Encoder blocks.
    pub depth: usize,
    /// Encoder attention heads.
    pub num_heads: usize,
    /// Decoder width.
    pub decoder_embed_dim: usize,
    /// Decoder blocks.
    pub decoder_depth: usize,
    /// Decoder attention heads.
    pub decoder_num_heads: usize,
    /// MLP hidden width / block width.
    pub mlp_ratio: f64,
    /// Normalise each target patch by its own mean and variance (the paper's default).
    pub norm_pix_loss: bool,
    /// The ablation "encoder w/ [M]" (MAE Table 1c): removed patches enter the encoder as a
    /// learned mask token instead of being dropped.
    #[serde(default)]
    pub encoder_mask_token: bool,
}

impl MaeConfig {
    /// Preset names accepted by [`MaeConfig::preset`].
    pub const PRESETS: &'static [&'static str] =
        &["mae_vit_base_patch16", "mae_vit_large_patch16", "mae_vit_huge_patch14", "mae_tiny_28", "mae_tiny_32", "mae_micro"];

    /// A named architecture. The paper's ViT-B/L/H with the 512-wide 8-block decoder, and small
    /// models for 28-32 px images on a CPU (`mae_tiny_28` has exactly the shapes of the PyTorch
    /// peer's fmnist-tiny benchmark).
    pub fn preset(name: &str) -> Result<Self> {
        let paper = |img, patch, dim, depth, heads| MaeConfig {
            img_size: img,
            patch_size: patch,
            in_chans: 3,
            embed_dim: dim,
            depth,
            num_heads: heads,
            decoder_embed_dim: 512,
            decoder_depth: 8,
            decoder_num_heads: 16,
            mlp_ratio: 4.0,
            norm_pix_loss: true,
            encoder_mask_token: false,
        };
        let small = |img, chans, dim, depth, heads, ddim, ddepth, dheads| MaeConfig {
            img_size: img,
            patch_size: 4,
            in_chans: chans,
            embed_dim: dim,
            depth,
            num_heads: heads,
            decoder_embed_dim: ddim,
            decoder_depth: ddepth,
            decoder_num_heads: dheads,
            mlp_ratio: 4.0,
            norm_pix_loss: true,
            encoder_mask_token: false,
        };
        Ok(match name {
            "mae_vit_base_patch16" => paper(224, 16, 768, 12, 12),
            "mae_vit_large_patch16" => paper(224, 16, 1024, 24, 16),
            "mae_vit_huge_patch14" => paper(224, 14, 1280, 32, 16),
            "mae_tiny_28" => small(28, 1, 192, 6, 3, 128, 2, 4),
            "mae_tiny_32" => small(32, 3, 192, 12, 3, 128, 4, 4),
            "mae_micro" => small(28, 1, 64, 2, 4, 32, 1, 4),
            other => anyhow::bail!("unknown model preset '{other}': choose one of {}", Self::PRESETS.join(", ")),
        })
    }

    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.img_size / self.patch_size
    }

    /// Patches per image L.
    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }

    /// Values per flattened patch `p*p*C`.
    pub fn patch_dim(&self) -> usize {
        self.patch_size * self.patch_size * self.in_chans
    }

    /// Checks the sizes fit together, with an error that says what to change.
    pub fn validate(&self) -> Result<()> {
        ensure!(self.patch_size > 0 && self.img_size > 0, "image and patch sizes must be positive");
        ensure!(
            self.img_size % self.patch_size == 0,
            "image size {} is not divisible by patch size {}: use an image size that is a multiple of {} (e.g. --img-size {})",
            self.img_size,
            self.patch_size,
            self.patch_size,
            (self.img_size / self.patch_size).max(1) * self.patch_size
        );
        for (what, dim, heads) in [("encoder", self.embed_dim, self.num_heads), ("decoder", self.decoder_embed_dim, self.decoder_num_heads)] {
            ensure!(heads > 0 && dim % heads == 0, "{what} width {dim} is not divisible by its {heads} heads");
            ensure!(dim % 4 == 0, "{what} width {dim} must be a multiple of 4 for 2-D sin-cos position embeddings");
        }
        ensure!(self.in_chans > 0, "in_chans must be positive");
        Ok(())
    }

    /// Builds the model with the official initialisation from `seed`.
    pub fn init(&self, seed: u64, device: &Device) -> Result<MaskedAutoencoder> {
        self.validate()?;
        let mut rng = InitRng::seed_from_u64(seed);
        let g = (self.grid(), self.grid());
        let blocks = |n, dim, heads, rng: &mut InitRng| (0..n).map(|_| Block::new(dim, heads, self.mlp_ratio, rng, device)).collect();
        Ok(MaskedAutoencoder {
            patch_embed: PatchEmbed::new(self.patch_size, self.in_chans, self.embed_dim, &mut rng, device),
            cls_token: token(self.embed_dim, &mut rng, device),
            encoder_mask_token: self.encoder_mask_token.then(|| token(self.embed_dim, &mut rng, device)),
            pos_embed: pos_embed_tensor(self.embed_dim, g, true, device),
            blocks: blocks(self.depth, self.embed_dim, self.num_heads, &mut rng),
            norm: LayerNorm::new(self.embed_dim, device),
            decoder_embed: Linear::new(self.embed_dim, self.decoder_embed_dim, &mut rng, device),
            mask_token: token(self.decoder_embed_dim, &mut rng, device),
            decoder_pos_embed: pos_embed_tensor(self.decoder_embed_dim, g, true, device),
            decoder_blocks: blocks(self.decoder_depth, self.decoder_embed_dim, self.decoder_num_heads, &mut rng),
            decoder_norm: LayerNorm::new(self.decoder_embed_dim, device),
            decoder_pred: Linear::new(self.decoder_embed_dim, self.patch_dim(), &mut rng, device),
            patch_size: self.patch_size,
            norm_pix_loss: self.norm_pix_loss,
        })
    }
}

/// A masked autoencoder with a ViT encoder and a light ViT decoder.
#[derive(Module, Debug)]
pub struct MaskedAutoencoder {
    /// Patch embedding of the encoder.
    pub patch_embed: PatchEmbed,
    /// `[1, 1, D]`
    pub cls_token: Param<Tensor<3>>,
    /// `[1, 1, D]`, only in the "encoder w/ [M]" ablation.
    pub encoder_mask_token: Option<Param<Tensor<3>>>,
    /// Fixed sin-cos `[1, 1 + L, D]` (a constant: not trained, not saved).
    pub pos_embed: Tensor<3>,
    /// Encoder blocks.
    pub blocks: Vec<Block>,
    /// Final encoder norm.
    pub norm: LayerNorm,
    /// Encoder width -> decoder width.
    pub decoder_embed: Linear,
    /// Shared learned token standing in for every removed patch `[1, 1, Dd]`.
    pub mask_token: Param<Tensor<3>>,
    /// Fixed sin-cos `[1, 1 + L, Dd]`.
    pub decoder_pos_embed: Tensor<3>,
    /// Decoder blocks.
    pub decoder_blocks: Vec<Block>,
    /// Final decoder norm.
    pub decoder_norm: LayerNorm,
    /// Decoder width -> patch pixels.
    pub decoder_pred: Linear,
    patch_size: usize,
    norm_pix_loss: bool,
}

/// What a forward pass returns.
#[derive(Debug, Clone)]
pub struct MaeOutput {
    /// Scalar loss `[1]`.
    pub loss: Tensor<1>,
    /// Predicted patches `[B, L, p*p*C]` (normalised pixels when `norm_pix_loss`).
    pub pred: Tensor<3>,
}

impl MaskedAutoencoder {
    /// Patch side in pixels.
    pub fn patch_size(&self) -> usize {
        self.patch_size
    }

    /// Whether targets are per-patch normalised.
    pub fn norm_pix_loss(&self) -> bool {
        self.norm_pix_loss
    }

    /// `imgs: [B, C, H, W] -> [B, 1 + K, D]`: embeds all patches, keeps the visible ones, prepends
    /// the cls token and runs the encoder (no mask tokens enter the encoder). In the "encoder w/ [M]"
    /// ablation every patch is kept, removed ones as the mask token: `[B, 1 + L, D]`.
    pub fn forward_encoder(&self, imgs: Tensor<4>, mask: &Mask) -> Tensor<3> {
        let device = imgs.device();
        let tokens = match &self.encoder_mask_token {
            None => PatchTokens::Keep(mask.ids_keep_tensor(&device)),
            Some(token) => PatchTokens::Replace { weights: mask.mask_tensor(&device).unsqueeze_dim(2), token: token.val() },
        };
        let mut x = embed_with_cls(&self.patch_embed, &self.cls_token, &self.pos_embed, imgs, tokens);
        for block in &self.blocks {
            x = block.forward(x);
        }
        self.norm.forward(x)
    }

    /// `latent: [B, 1 + K, D] -> [B, L, p*p*C]`: appends mask tokens, unshuffles with
    /// `ids_restore`, adds decoder position embeddings, runs the decoder, drops the cls token.
    /// (With the encoder's mask token the latent is already the full sequence in patch order.)
    pub fn forward_decoder(&self, latent: Tensor<3>, mask: &Mask) -> Tensor<3> {
        let device = latent.device();
        let x = self.decoder_embed.forward(latent);
        let [b, n_vis, _] = x.dims();
        let l = mask.num_patches;
        let x = if self.encoder_mask_token.is_some() {
            x
        } else {
            let mut x_ = x.clone().slice([0..b, 1..n_vis]);
            if mask.removes_any() {
                let mask_tokens = self.mask_token.val().repeat_dim(0, b).repeat_dim(1, l + 1 - n_vis);
                x_ = Tensor::cat(vec![x_, mask_tokens], 1);
            }
            let x_ = gather_tokens(x_, mask.ids_restore_tensor(&device));
            Tensor::cat(vec![x.slice([0..b, 0..1]), x_], 1)
        };
        let mut x = x + self.decoder_pos_embed.clone();
        for block in &self.decoder_blocks {
            x = block.forward(x);
        }
        let x = self.decoder_pred.forward(self.decoder_norm.forward(x));
        x.slice([0..b, 1..l + 1])
    }

    /// The regression target `[B, L, p*p*C]`: patch pixels, normalised per patch when
    /// `norm_pix_loss` (unbiased variance, eps 1e-6, as the official code).
    pub fn target(&self, imgs: Tensor<4>) -> Tensor<3> {
        let target = patchify(imgs, self.patch_size);
        if !self.norm_pix_loss {
            return target;
        }
        let (var, mean) = target.clone().var_mean(2);
        (target - mean) / (var + 1e-6).sqrt()
    }

    /// Mean squared error over the removed patches only: `[1]`. With [`Mask::keep_all`] (nothing
    /// removed; used to measure the cost of a full encoder) the mean is over all patches.
    pub fn forward_loss(&self, imgs: Tensor<4>, pred: Tensor<3>, mask: &Mask) -> Tensor<1> {
        let per_patch = (pred - self.target(imgs.clone())).powi_scalar(2).mean_dim(2).squeeze_dim::<2>(2);
        if !mask.removes_any() {
            return per_patch.mean();
        }
        let m = mask.mask_tensor(&imgs.device());
        (per_patch * m.clone()).sum() / m.sum()
    }

    /// Encoder, decoder and loss for `imgs: [B, C, H, W]` under `mask`.
    pub fn forward(&self, imgs: Tensor<4>, mask: &Mask) -> MaeOutput {
        let latent = self.forward_encoder(imgs.clone(), mask);
        let pred = self.forward_decoder(latent, mask);
        let loss = self.forward_loss(imgs, pred.clone(), mask);
        MaeOutput { loss, pred }
    }

    /// Predicted images `[B, C, H, W]` in the input's (normalised) pixel space. With
    /// `norm_pix_loss` the per-patch predictions are un-normalised with the mean and variance of the
    /// true patch, as the official visualisation does.
    pub fn predict_pixels(&self, imgs: Tensor<4>, mask: &Mask) -> Tensor<4> {
        let [_, c, h, w] = imgs.dims();
        let p = self.patch_size;
        let mut pred = self.forward_decoder(self.forward_encoder(imgs.clone(), mask), mask);
        if self.norm_pix_loss {
            let (var, mean) = patchify(imgs, p).var_mean(2);
            pred = pred * (var + 1e-6).sqrt() + mean;
        }
        unpatchify(pred, p, (h / p, w / p), c)
    }
}
