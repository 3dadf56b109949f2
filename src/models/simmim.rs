//! SimMIM (Xie et al. 2022) with a Swin encoder, following the official `models/simmim.py`
//! (`SwinTransformerForSimMIM` + `SimMIM`): masked patches are replaced by a learned mask token right
//! after the patch embedding, the whole image goes through the encoder, a 1x1 convolution and a pixel
//! shuffle predict every pixel at full resolution, and the loss is the L1 error on masked pixels only.
//!
//! Masks are inputs here (`[B, L]`, 1 = masked, per model patch); generating them is
//! [`crate::masking`]'s job. The official generator draws masks on a coarser grid (32 px mask patches)
//! and repeats them onto the model's patch grid: [`upsample_mask`] does that step.

use anyhow::Result;
use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};
use rand::{RngCore, SeedableRng};

use super::init::{InitRng, trunc_normal_matrices};
use super::swin::{SwinConfig, SwinTransformer};
use super::vit::{Linear, token, with_mask_token};

/// Added to the masked-pixel count in the loss's denominator, as the official code.
const LOSS_EPS: f64 = 1e-5;

/// A Swin encoder with SimMIM's mask token and one-layer prediction head.
#[derive(Module, Debug)]
pub struct SimMim {
    /// The Swin encoder, without a classifier head.
    pub encoder: SwinTransformer,
    /// `[1, 1, D]`, stands in for every masked patch's embedding.
    pub mask_token: Param<Tensor<3>>,
    /// The official 1x1 convolution `[num_features, stride^2 * C]`, applied per feature position.
    pub decoder: Linear,
    encoder_stride: usize,
    in_chans: usize,
}

/// What a SimMIM forward pass returns.
#[derive(Debug, Clone)]
pub struct SimMimOutput {
    /// Scalar L1 loss on masked pixels `[1]`.
    pub loss: Tensor<1>,
    /// Predicted image `[B, C, H, W]` (every pixel, masked or not).
    pub reconstruction: Tensor<4>,
}

impl SimMim {
    /// SimMIM on the Swin described by `cfg` (its `num_classes` is ignored: no head), initialised like
    /// the official code from `seed` (trunc N(0, 0.02) matrices, N(0, 0.02) mask token).
    pub fn new(cfg: &SwinConfig, seed: u64, device: &Device) -> Result<Self> {
        let encoder = SwinConfig { num_classes: 0, ..cfg.clone() }.init(seed, device)?;
        let mut rng = InitRng::seed_from_u64(seed.wrapping_add(1));
        let stride = cfg.encoder_stride();
        let model = SimMim {
            encoder,
            mask_token: token(cfg.embed_dim, &mut rng, device),
            decoder: Linear::new(cfg.num_features(), stride * stride * cfg.in_chans, &mut rng, device),
            encoder_stride: stride,
            in_chans: cfg.in_chans,
        };
        // The encoder is already initialised; redraw only the decoder's weight.
        let decoder = trunc_normal_matrices(model.decoder, &mut rng);
        Ok(SimMim { decoder, ..model })
    }

    /// Pixels per final feature position (the side of SimMIM's default mask squares).
    pub fn encoder_stride(&self) -> usize {
        self.encoder_stride
    }

    /// `imgs: [B, C, H, W]`, `mask: [B, L]` (1 = masked) `-> [B, h, w, D]`: patch embeddings with
    /// masked ones blended to the mask token (`w * token + (1 - w) * x`), the Swin stages, the final
    /// norm. With `rng`, stochastic depth is applied (training).
    pub fn forward_encoder(&self, imgs: Tensor<4>, mask: Tensor<2>, rng: Option<&mut dyn RngCore>) -> Tensor<4> {
        let x = self.encoder.embed(imgs);
        let [b, h, w, _] = x.dims();
        assert_eq!(mask.dims(), [b, h * w], "SimMIM mask must be [batch, patches] = [{b}, {}]", h * w);
        let m = mask.reshape([b, h, w, 1]);
        let x = with_mask_token(x, m, self.mask_token.val().unsqueeze_dim::<4>(0));
        let last = self.encoder.forward_stages_from(x, rng).pop().expect("at least one stage");
        self.encoder.norm.forward(last)
    }

    /// `z: [B, h, w, D] -> [B, C, h*s, w*s]`: the 1x1 convolution to `s^2 * C` channels, then a pixel
    /// shuffle (channel `c*s*s + i*s + j` of position (y, x) becomes pixel (y*s + i, x*s + j) of channel c).
    pub fn forward_decoder(&self, z: Tensor<4>) -> Tensor<4> {
        let [b, h, w, _] = z.dims();
        let (s, c) = (self.encoder_stride, self.in_chans);
        self.decoder.forward(z).reshape([b, h, w, c, s, s]).permute([0, 3, 1, 4, 2, 5]).reshape([b, c, h * s, w * s])
    }

    /// `sum(|imgs - rec| * mask) / (sum(mask) + 1e-5) / C` with the patch mask `[B, L]` spread to
    /// pixels `[B, 1, H, W]`: the mean absolute error per masked pixel and channel.
    pub fn forward_loss(&self, imgs: Tensor<4>, rec: Tensor<4>, mask: Tensor<2>) -> Tensor<1> {
        let [b, _, hh, ww] = imgs.dims();
        let p = self.encoder.patch_embed.patch_size();
        let pixels = upsample_mask(mask.reshape([b, hh / p, ww / p]), p).unsqueeze_dim::<4>(1);
        let l1 = (imgs - rec).abs() * pixels.clone();
        l1.sum() / (pixels.sum() + LOSS_EPS) / self.in_chans as f64
    }

    /// Encoder, decoder and loss for `imgs: [B, C, H, W]` under `mask: [B, L]` (1 = masked).
    pub fn forward(&self, imgs: Tensor<4>, mask: Tensor<2>) -> SimMimOutput {
        self.forward_train(imgs, mask, None)
    }

    /// As [`SimMim::forward`], with stochastic depth drawn from `rng` when given.
    pub fn forward_train(&self, imgs: Tensor<4>, mask: Tensor<2>, rng: Option<&mut dyn RngCore>) -> SimMimOutput {
        let reconstruction = self.forward_decoder(self.forward_encoder(imgs.clone(), mask.clone(), rng));
        let loss = self.forward_loss(imgs, reconstruction.clone(), mask);
        SimMimOutput { loss, reconstruction }
    }
}

/// `mask: [B, h, w] -> [B, h*s, w*s]`: every entry repeated over an `s x s` block (the official
/// `repeat_interleave`, used for mask patches -> model patches and model patches -> pixels).
pub fn upsample_mask(mask: Tensor<3>, s: usize) -> Tensor<3> {
    let [b, h, w] = mask.dims();
    mask.reshape([b, h, 1, w, 1]).repeat_dim(2, s).repeat_dim(4, s).reshape([b, h * s, w * s])
}
