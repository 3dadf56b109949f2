//! Attention maps of a pretrained ViT (`mim attention`): for each image, the [CLS] token's attention
//! over the patches in every layer and head, the pictures of BEiT's figure 2. MAE and BEiT encoders,
//! from a mim checkpoint or any weights file [`crate::weights::open`] reads.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use burn::tensor::{Device, Tensor};

use crate::models::beit::BeitForMaskedImageModeling;
use crate::models::mae::MaskedAutoencoder;
use crate::viz::{Images, attention_image, denormalize, load_images, save_png};
use crate::weights::{Holds, Weights};

/// The [CLS] query's attention over the patches: `[layer][image][head][patch]`.
pub type ClsAttention = Vec<Vec<Vec<Vec<f32>>>>;

/// A ViT encoder (MAE or BEiT) built once, whose blocks' attention can be read.
pub enum AttentionEncoder {
    /// An MAE (or ViT classifier) encoder.
    Mae(MaskedAutoencoder),
    /// A BEiT encoder, relative position biases included.
    Beit(BeitForMaskedImageModeling),
}

impl AttentionEncoder {
    /// The encoder of `weights` on `device` (an error for Swin, which has no [CLS] token).
    pub fn new(weights: &Weights, device: &Device) -> Result<Self> {
        Ok(match weights.detected.holds {
            Holds::Mae { .. } | Holds::VitClassifier { .. } => Self::Mae(weights.mae_encoder(0, device)?.0),
            Holds::Beit | Holds::BeitClassifier { .. } => Self::Beit(weights.beit_encoder(0, device)?),
            holds => bail!(
                "'{}' holds a {holds}: Swin attends within windows and has no [CLS] token; attention maps are drawn \
                 for ViT encoders (MAE, BEiT)",
                weights.path.display()
            ),
        })
    }

    /// The [CLS] row of each block's attention, patches only, on `imgs: [B, C, H, W]` (normalised
    /// as the weights expect).
    pub fn cls_attention(&self, imgs: Tensor<4>) -> Result<ClsAttention> {
        let maps = match self {
            Self::Mae(m) => m.attention_maps(imgs),
            Self::Beit(m) => m.attention_maps(imgs),
        };
        maps.into_iter()
            .map(|p| {
                let [b, h, n, _] = p.dims();
                let row: Vec<f32> = p
                    .slice([0..b, 0..h, 0..1, 1..n])
                    .into_data()
                    .convert::<f32>()
                    .try_to_vec::<f32>()
                    .map_err(|e| anyhow::anyhow!("cannot read the attention: {e:?}"))?;
                let l = n - 1;
                Ok((0..b)
                    .map(|i| (0..h).map(|j| row[(i * h + j) * l..(i * h + j + 1) * l].to_vec()).collect())
                    .collect())
            })
            .collect()
    }
}

/// The [CLS] row of each block's attention, patches only, of the encoder in `weights` on
/// `imgs: [B, C, H, W]` (normalised as the weights expect).
pub fn cls_attention(weights: &Weights, imgs: Tensor<4>, device: &Device) -> Result<ClsAttention> {
    AttentionEncoder::new(weights, device)?.cls_attention(imgs)
}

/// Writes `attention_NN.png` per image of `images` into `out` (layers as rows, heads and their mean
/// as columns, each panel scaled up `scale` times) and returns the files.
pub fn write_attention_pictures(weights: &Weights, images: &Images, out: &Path, scale: usize) -> Result<Vec<PathBuf>> {
    let device = Device::flex();
    let cfg = &weights.detected.config;
    let (norm, _) = weights.input_normalization()?;
    let (batch, names, mean, std) = load_images(images, cfg, None, Some(&(norm.mean, norm.std)))?;
    let maps = cls_attention(weights, batch.tensor(&device), &device)?;
    let (c, s, grid) = (cfg.in_chans(), cfg.img_size(), cfg.grid());
    let per = c * s * s;
    let source = weights.path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let mut written = Vec::new();
    for (k, name) in names.iter().enumerate() {
        let image = denormalize(&batch.images[k * per..(k + 1) * per], &mean, &std);
        let per_layer: Vec<Vec<Vec<f32>>> = maps.iter().map(|layer| layer[k].clone()).collect();
        let label = Path::new(name).file_name().map_or_else(|| name.clone(), |n| n.to_string_lossy().into_owned());
        let title = format!("{} ({source}): [CLS] attention over the patches, {label}", cfg.kind());
        let path = out.join(format!("attention_{k:02}.png"));
        save_png(&attention_image(&image, (c, s, s), &per_layer, grid, scale, &title)?, &path)?;
        written.push(path);
    }
    Ok(written)
}
