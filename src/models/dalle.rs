//! The encoder of OpenAI's DALL-E discrete VAE (Ramesh et al. 2021), the tokenizer of the BEiT
//! paper: architecture of `dall_e/encoder.py` in openai/DALL-E (Modified MIT licence), loadable
//! from the published `encoder.pkl` once converted by `tools/convert_dalle_encoder.py`.
//!
//! Architecture: a 7x7 input convolution to `n_hid` channels; four groups of `n_blk_per_group`
//! residual blocks of widths `n_hid, 2 n_hid, 4 n_hid, 8 n_hid`, the first three groups followed by
//! a 2x2 max-pool (so one token per 8x8 pixels); ReLU and a 1x1 convolution to `vocab_size`
//! logits. A block computes `id_path(x) + post_gain * res_path(x)` with `post_gain = 1 / n_layers²`
//! (`n_layers` = all blocks), `res_path` = ReLU-conv3x3-ReLU-conv3x3-ReLU-conv3x3-ReLU-conv1x1 through
//! `n_out / 4` hidden channels, and `id_path` a 1x1 convolution when the width changes. All
//! convolutions pad `(k - 1) / 2`. Token ids are the argmax of the logits over the vocabulary
//! (BEiT's `get_codebook_indices`) of images passed through [`map_pixels`].
//!
//! BEiT feeds the tokenizer a second view at half the model's resolution (112 px for a 224 px
//! model with 16 px patches) so that the 8x downsampling gives one token per model patch.
//!
//! Parameter names (PyTorch layout, `w: [out, in, k, k]`, `b: [out]`) are those of the official
//! module: `blocks.input.{w,b}`, `blocks.group_{g}.block_{i}.id_path.{w,b}`,
//! `blocks.group_{g}.block_{i}.res_path.conv_{1..4}.{w,b}`, `blocks.output.conv.{w,b}` (g, i from 1).

use std::path::Path;

use anyhow::{Context, Result, ensure};
use burn::module::{Module, Param};
use burn::tensor::activation::relu;
use burn::tensor::module::{conv2d, max_pool2d};
use burn::tensor::ops::{ConvOptions, MaxPoolOptions};
use burn::tensor::{Device, Int, Tensor};
use serde::{Deserialize, Serialize};

use super::init::param;
use crate::io::{TensorMap, read_safetensors};

/// `logit_laplace_eps` of the official `map_pixels`.
pub const LOGIT_LAPLACE_EPS: f64 = 0.1;

/// Groups of blocks (fixed at 4 in the official encoder).
pub const GROUP_COUNT: usize = 4;

/// The official input transform: pixels in `[0, 1]` to `[eps, 1 - eps]`, `(1 - 2 eps) x + eps`.
pub fn map_pixels(x: Tensor<4>) -> Tensor<4> {
    x.mul_scalar(1.0 - 2.0 * LOGIT_LAPLACE_EPS).add_scalar(LOGIT_LAPLACE_EPS)
}

/// Hyper-parameters of the encoder (the official defaults: 256, 2, 3, 8192).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DalleEncoderConfig {
    /// Width of the first group.
    pub n_hid: usize,
    /// Residual blocks per group.
    pub n_blk_per_group: usize,
    /// Image channels.
    pub input_channels: usize,
    /// Logits per token.
    pub vocab_size: usize,
}

impl DalleEncoderConfig {
    /// Pixels per token side: 2 per max-pool.
    pub const DOWNSAMPLE: usize = 1 << (GROUP_COUNT - 1);

    /// The configuration a set of official-named tensors describes (read from their shapes).
    pub fn from_tensors(map: &TensorMap) -> Result<Self> {
        let shape = |name: &str| {
            map.get(name).map(|t| t.0.clone()).with_context(|| {
                format!(
                    "'{name}' is missing: the file is not a DALL-E encoder converted by tools/convert_dalle_encoder.py"
                )
            })
        };
        let input = shape("blocks.input.w")?;
        let output = shape("blocks.output.conv.w")?;
        ensure!(
            input.len() == 4 && output.len() == 4,
            "blocks.input.w and blocks.output.conv.w must be 4-D convolution weights"
        );
        let n_blk_per_group =
            (1..).take_while(|i| map.contains_key(&format!("blocks.group_1.block_{i}.res_path.conv_1.w"))).count();
        ensure!(n_blk_per_group > 0, "no blocks.group_1.block_1.* tensors: the file is not a DALL-E encoder");
        Ok(Self { n_hid: input[0], n_blk_per_group, input_channels: input[1], vocab_size: output[0] })
    }
}

/// The official `Conv2d`: weight `w: [out, in, k, k]`, bias `b: [out]`, padding `(k - 1) / 2`.
#[derive(Module, Debug)]
pub struct DalleConv {
    /// Weight `[out, in, k, k]`.
    pub w: Param<Tensor<4>>,
    /// Bias `[out]`.
    pub b: Param<Tensor<1>>,
}

impl DalleConv {
    fn load(map: &TensorMap, name: &str, shape: [usize; 4], device: &Device) -> Result<Self> {
        let get = |suffix: &str, want: &[usize]| {
            let key = format!("{name}.{suffix}");
            let (s, v) =
                map.get(&key).with_context(|| format!("'{key}' is missing from the DALL-E encoder weights"))?;
            ensure!(s == want, "'{key}' has shape {s:?}, expected {want:?} for this encoder");
            Ok(v.clone())
        };
        let w = get("w", &shape)?;
        let b = get("b", &shape[..1])?;
        Ok(Self { w: param(w, shape, device), b: param(b, [shape[0]], device) })
    }

    /// `x: [B, in, H, W] -> [B, out, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let pad = (self.w.dims()[2] - 1) / 2;
        conv2d(x, self.w.val(), Some(self.b.val()), ConvOptions::new([1, 1], [pad, pad], [1, 1], 1))
    }
}

/// The official `EncoderBlock`.
#[derive(Module, Debug)]
pub struct EncoderBlock {
    /// 1x1 convolution when the width changes; identity otherwise.
    pub id_path: Option<DalleConv>,
    /// `conv_1` .. `conv_4`.
    pub res_path: Vec<DalleConv>,
    post_gain: f64,
}

impl EncoderBlock {
    /// `x + post_gain * res(x)` (with `x` through `id_path` when widths differ).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut h = x.clone();
        for conv in &self.res_path {
            h = conv.forward(relu(h));
        }
        let id = match &self.id_path {
            Some(conv) => conv.forward(x),
            None => x,
        };
        id + h.mul_scalar(self.post_gain)
    }
}

/// The DALL-E dVAE encoder (see the module documentation).
#[derive(Module, Debug)]
pub struct DalleEncoder {
    /// 7x7 input convolution.
    pub input: DalleConv,
    /// `GROUP_COUNT` groups of blocks.
    pub groups: Vec<Vec<EncoderBlock>>,
    /// 1x1 output convolution to the vocabulary.
    pub output: DalleConv,
}

impl DalleEncoder {
    /// Loads official-named weights (the output of `tools/convert_dalle_encoder.py`); the
    /// architecture is read from the tensor shapes.
    pub fn from_safetensors(path: &Path, device: &Device) -> Result<(Self, DalleEncoderConfig)> {
        let map = read_safetensors(path)?;
        let cfg = DalleEncoderConfig::from_tensors(&map).with_context(|| format!("'{}'", path.display()))?;
        let model = Self::from_tensors(&map, &cfg, device).with_context(|| format!("'{}'", path.display()))?;
        Ok((model, cfg))
    }

    /// Builds the encoder of `cfg` from official-named tensors.
    pub fn from_tensors(map: &TensorMap, cfg: &DalleEncoderConfig, device: &Device) -> Result<Self> {
        let h = cfg.n_hid;
        let post_gain = 1.0 / ((GROUP_COUNT * cfg.n_blk_per_group) as f64).powi(2);
        let mut groups = Vec::new();
        for g in 0..GROUP_COUNT {
            let width = h << g;
            let mut blocks = Vec::new();
            for i in 0..cfg.n_blk_per_group {
                let n_in = if i == 0 && g > 0 { width / 2 } else { width };
                let name = format!("blocks.group_{}.block_{}", g + 1, i + 1);
                let conv = |k: usize, n_in: usize, n_out: usize, kw: usize| {
                    DalleConv::load(map, &format!("{name}.res_path.conv_{k}"), [n_out, n_in, kw, kw], device)
                };
                let hid = width / 4;
                let res_path =
                    vec![conv(1, n_in, hid, 3)?, conv(2, hid, hid, 3)?, conv(3, hid, hid, 3)?, conv(4, hid, width, 1)?];
                let id_path = (n_in != width)
                    .then(|| DalleConv::load(map, &format!("{name}.id_path"), [width, n_in, 1, 1], device))
                    .transpose()?;
                blocks.push(EncoderBlock { id_path, res_path, post_gain });
            }
            groups.push(blocks);
        }
        Ok(Self {
            input: DalleConv::load(map, "blocks.input", [h, cfg.input_channels, 7, 7], device)?,
            groups,
            output: DalleConv::load(map, "blocks.output.conv", [cfg.vocab_size, 8 * h, 1, 1], device)?,
        })
    }

    /// Logits `[B, vocab, H/8, W/8]` of mapped pixels `x: [B, C, H, W]` (see [`map_pixels`]).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut x = self.input.forward(x);
        for (g, blocks) in self.groups.iter().enumerate() {
            for block in blocks {
                x = block.forward(x);
            }
            if g + 1 < self.groups.len() {
                x = max_pool2d(x, MaxPoolOptions::new([2, 2]));
            }
        }
        self.output.forward(relu(x))
    }

    /// Token ids `[B, (H/8) * (W/8)]` (row-major) of pixels in `[0, 1]`: map, encode, argmax over
    /// the vocabulary, as BEiT's `get_codebook_indices`.
    pub fn codebook_indices(&self, pixels: Tensor<4>) -> Result<Tensor<2, Int>> {
        let [b, c, h, w] = pixels.dims();
        let want = self.input.w.dims()[1];
        let s = DalleEncoderConfig::DOWNSAMPLE;
        ensure!(c == want, "the DALL-E encoder takes {want}-channel images, got {c}");
        ensure!(h % s == 0 && w % s == 0, "image sides must be multiples of {s} for the DALL-E encoder, got {h}x{w}");
        let logits = self.forward(map_pixels(pixels));
        Ok(logits.argmax(1).reshape([b, (h / s) * (w / s)]))
    }
}
