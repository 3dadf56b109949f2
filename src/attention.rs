//! Attention maps of a pretrained ViT (`mim attention`): for each image, the [CLS] token's attention
//! over the patches in every layer and head, the pictures of BEiT's figure 2. MAE and BEiT encoders,
//! from a mim checkpoint or any weights file [`crate::weights::open`] reads.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use burn::tensor::{Device, Tensor};

use crate::viz::{Images, attention_image, denormalize, load_images, save_png};
use crate::weights::{Holds, Weights};

/// The [CLS] query's attention over the patches: `[layer][image][head][patch]`.
pub type ClsAttention = Vec<Vec<Vec<Vec<f32>>>>;

/// The [CLS] row of each block's attention, patches only, of the encoder in `weights` on
/// `imgs: [B, C, H, W]` (normalised as the weights expect).
pub fn cls_attention(weights: &Weights, imgs: Tensor<4>, device: &Device) -> Result<ClsAttention> {
    let maps = match weights.detected.holds {
        Holds::Mae { .. } | Holds::VitClassifier { .. } => weights.mae_encoder(0, device)?.0.attention_maps(imgs),
        Holds::Beit | Holds::BeitClassifier { .. } => weights.beit_encoder(0, device)?.attention_maps(imgs),
        holds => bail!(
            "'{}' holds a {holds}: Swin attends within windows and has no [CLS] token; mim attention draws the \
             maps of ViT encoders (MAE, BEiT)",
            weights.path.display()
        ),
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
            Ok((0..b).map(|i| (0..h).map(|j| row[(i * h + j) * l..(i * h + j + 1) * l].to_vec()).collect()).collect())
        })
        .collect()
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
