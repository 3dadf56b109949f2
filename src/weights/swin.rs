//! Swin Transformer and SimMIM weights: timm (>= 0.9) and official Microsoft Swin names, the official
//! SimMIM wrapper's names, into mim's models.

use std::path::Path;

use anyhow::Result;

use crate::io::{TensorMap, load_tensor_map, pytorch_to_burn_layout, read_safetensors};
use crate::models::simmim::SimMim;
use crate::models::swin::SwinTransformer;

/// timm / official Swin keys (PyTorch layout) -> this model's keys and layout: linear weights
/// transposed, the patch-embedding convolution flattened in patchify order; the derived buffers
/// (`relative_position_index`, `attn_mask`) dropped; official Microsoft / timm < 0.9 checkpoints
/// (patch merging at the end of stage i, head `head.weight`) moved to timm 1.0's layout.
pub fn timm_to_burn(torch: &TensorMap) -> Result<TensorMap> {
    let old_layout = torch.keys().any(|k| k.starts_with("layers.0.downsample."));
    let mut renamed = TensorMap::new();
    for (k, t) in torch {
        if k.ends_with("relative_position_index") || k.ends_with("attn_mask") {
            continue;
        }
        let mut key = k.clone();
        if old_layout
            && let Some((i, rest)) = k.strip_prefix("layers.").and_then(|r| r.split_once('.'))
            && rest.starts_with("downsample.")
        {
            key = format!("layers.{}.{rest}", i.parse::<usize>()? + 1);
        }
        if let Some(rest) = key.strip_prefix("head.")
            && !rest.starts_with("fc.")
        {
            key = format!("head.fc.{rest}");
        }
        renamed.insert(key, t.clone());
    }
    pytorch_to_burn_layout(&renamed)
}

/// Loads a timm- (or official-) named Swin checkpoint in safetensors into `model`; every parameter must
/// be present with the right shape.
pub fn load_timm(model: SwinTransformer, path: &Path) -> Result<SwinTransformer> {
    load_tensor_map(model, &timm_to_burn(&read_safetensors(path)?)?, &path.display().to_string())
}

/// Official SimMIM keys (PyTorch layout) -> this model's: `encoder.*` as [`timm_to_burn`] (timm or
/// official Swin names), `encoder.mask_token` -> `mask_token`, the `decoder.0` convolution -> `decoder`.
pub fn simmim_to_burn(torch: &TensorMap) -> Result<TensorMap> {
    let mut encoder = TensorMap::new();
    let mut rest = TensorMap::new();
    for (k, t) in torch {
        match k.strip_prefix("encoder.") {
            Some("mask_token") => rest.insert("mask_token".into(), t.clone()),
            Some(key) => encoder.insert(key.to_string(), t.clone()),
            None => rest.insert(k.replacen("decoder.0.", "decoder.", 1), t.clone()),
        };
    }
    let mut out: TensorMap = timm_to_burn(&encoder)?.into_iter().map(|(k, t)| (format!("encoder.{k}"), t)).collect();
    out.extend(pytorch_to_burn_layout(&rest)?);
    Ok(out)
}

/// Loads an official-named SimMIM checkpoint in safetensors into `model`.
pub fn load_simmim(model: SimMim, path: &Path) -> Result<SimMim> {
    load_tensor_map(model, &simmim_to_burn(&read_safetensors(path)?)?, &path.display().to_string())
}
