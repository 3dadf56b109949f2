//! Attention maps of a pretrained encoder (`mim attention`): for each image, the [CLS] token's
//! attention over the patches in every layer and head, the pictures of BEiT's figure 2 (MAE and
//! BEiT); for Swin, which has no [CLS] token, the attention each patch receives within its window.
//! From a mim checkpoint or any weights file [`crate::weights::open`] reads.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use burn::tensor::{Device, Tensor};

use crate::models::beit::BeitForMaskedImageModeling;
use crate::models::mae::MaskedAutoencoder;
use crate::models::swin::SwinTransformer;
use crate::viz::{Images, attention_image, denormalize, load_images, save_png};
use crate::weights::{Holds, Weights};

/// The [CLS] query's attention over the patches: `[layer][image][head][patch]`.
pub type ClsAttention = Vec<Vec<Vec<Vec<f32>>>>;

/// Attention over the patches in every layer (block) of an encoder.
#[derive(Debug, Clone)]
pub struct AttentionMaps {
    /// `[layer][image][head][patch]`, patches row-major on a `grids[layer]`-a-side grid.
    pub maps: ClsAttention,
    /// Patches per side of each layer (Swin's stages merge them).
    pub grids: Vec<usize>,
    /// What the maps show, for titles.
    pub what: &'static str,
}

/// An encoder built once, whose blocks' attention can be read.
pub enum AttentionEncoder {
    /// An MAE (or ViT classifier) encoder.
    Mae(MaskedAutoencoder),
    /// A BEiT encoder, relative position biases included.
    Beit(BeitForMaskedImageModeling),
    /// A Swin encoder (of a SimMIM, a backbone or a classifier).
    Swin(SwinTransformer),
}

impl AttentionEncoder {
    /// The encoder of `weights` on `device`.
    pub fn new(weights: &Weights, device: &Device) -> Result<Self> {
        Ok(match weights.detected.holds {
            Holds::Mae { .. } | Holds::VitClassifier { .. } => Self::Mae(weights.mae_encoder(0, device)?.0),
            Holds::Beit | Holds::BeitClassifier { .. } => Self::Beit(weights.beit_encoder(0, device)?),
            Holds::Swin { .. } => Self::Swin(weights.swin(device)?),
            Holds::SimMim => Self::Swin(weights.simmim(device)?.encoder),
        })
    }

    /// Every block's attention on `imgs: [B, C, H, W]` (normalised as the weights expect): the
    /// [CLS] row over the patches for ViTs, the attention each patch receives within its window
    /// (mean over the window's queries) for Swin.
    pub fn attention(&self, imgs: Tensor<4>) -> Result<AttentionMaps> {
        let read = |t: Tensor<3>| -> Result<Vec<Vec<Vec<f32>>>> {
            let [b, h, l] = t.dims();
            let v: Vec<f32> = t
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .map_err(|e| anyhow::anyhow!("cannot read the attention: {e:?}"))?;
            Ok((0..b).map(|i| (0..h).map(|j| v[(i * h + j) * l..(i * h + j + 1) * l].to_vec()).collect()).collect())
        };
        let (probs, what) = match self {
            Self::Mae(m) => (m.attention_maps(imgs), "[CLS] attention over the patches"),
            Self::Beit(m) => (m.attention_maps(imgs), "[CLS] attention over the patches"),
            Self::Swin(m) => {
                let (grids, maps): (Vec<usize>, Vec<Tensor<3>>) = m.attention_received(imgs).into_iter().unzip();
                let maps = maps.into_iter().map(read).collect::<Result<_>>()?;
                return Ok(AttentionMaps { maps, grids, what: "attention received within each window" });
            }
        };
        let mut grids = Vec::new();
        let maps = probs
            .into_iter()
            .map(|p| {
                let [b, h, n, _] = p.dims();
                grids.push(((n - 1) as f64).sqrt().round() as usize);
                read(p.slice([0..b, 0..h, 0..1, 1..n]).reshape([b, h, n - 1]))
            })
            .collect::<Result<_>>()?;
        Ok(AttentionMaps { maps, grids, what })
    }
}

/// The [CLS] row of each block's attention, patches only, of the ViT encoder in `weights` on
/// `imgs: [B, C, H, W]` (normalised as the weights expect).
pub fn cls_attention(weights: &Weights, imgs: Tensor<4>, device: &Device) -> Result<ClsAttention> {
    let encoder = AttentionEncoder::new(weights, device)?;
    if let AttentionEncoder::Swin(_) = encoder {
        bail!(
            "'{}' holds a {}: Swin has no [CLS] token (see AttentionEncoder::attention)",
            weights.path.display(),
            weights.detected.holds
        );
    }
    Ok(encoder.attention(imgs)?.maps)
}

/// Writes `attention_NN.png` per image of `images` into `out` (layers as rows, heads and their mean
/// as columns, each panel scaled up `scale` times) and returns the files.
pub fn write_attention_pictures(weights: &Weights, images: &Images, out: &Path, scale: usize) -> Result<Vec<PathBuf>> {
    let device = Device::flex();
    let cfg = &weights.detected.config;
    let (norm, _) = weights.input_normalization()?;
    let (batch, names, mean, std) = load_images(images, cfg, None, Some(&(norm.mean, norm.std)))?;
    let AttentionMaps { maps, grids, what } =
        AttentionEncoder::new(weights, &device)?.attention(batch.tensor(&device))?;
    let (c, s) = (cfg.in_chans(), cfg.img_size());
    let per = c * s * s;
    let source = weights.path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let mut written = Vec::new();
    for (k, name) in names.iter().enumerate() {
        let image = denormalize(&batch.images[k * per..(k + 1) * per], &mean, &std);
        let per_layer: Vec<Vec<Vec<f32>>> = maps.iter().map(|layer| layer[k].clone()).collect();
        let label = Path::new(name).file_name().map_or_else(|| name.clone(), |n| n.to_string_lossy().into_owned());
        let title = format!("{} ({source}): {what}, {label}", cfg.kind());
        let path = out.join(format!("attention_{k:02}.png"));
        save_png(&attention_image(&image, (c, s, s), &per_layer, &grids, scale, &title)?, &path)?;
        written.push(path);
    }
    Ok(written)
}
