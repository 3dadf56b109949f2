//! BEiT weights: the official microsoft/unilm names (timm's BEiT names too) in PyTorch layout.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Result, bail, ensure};

use crate::io::{TensorMap, convert_patch_weight, load_tensor_map, read_safetensors, transpose};
use crate::models::beit::{BeitConfig, BeitForMaskedImageModeling, relative_position_index};

/// Official BEiT state-dict keys in PyTorch layout (microsoft/unilm `beit/modeling_pretrain.py`
/// `VisionTransformerForMaskedImageModeling`; timm's `beit.py` uses the same names) -> mim's BEiT
/// in burn layout. Each block's `attn.q_bias` and `attn.v_bias` become the shared block's full
/// `attn.qkv.bias` with a zero key part; per-block `blocks.N.attn.relative_position_bias_table`
/// become `block_rel_pos_bias.N.relative_position_bias_table`; relative position index buffers are
/// checked against mim's and dropped.
pub fn beit_from_official(cfg: &BeitConfig, torch: &TensorMap) -> Result<TensorMap> {
    let (p, c, d, g) = (cfg.patch_size, cfg.in_chans, cfg.embed_dim, cfg.grid());
    let index: Vec<f32> = relative_position_index((g, g)).into_iter().map(|i| i as f32).collect();
    let mut out = TensorMap::new();
    let mut q_v: BTreeMap<String, [Option<Vec<f32>>; 2]> = BTreeMap::new();
    for (k, (s, v)) in torch {
        if k.ends_with("relative_position_index") {
            ensure!(
                v == &index,
                "'{k}' is not the relative position index of a {g}x{g} patch grid: the weights are for another image or patch size"
            );
            continue;
        }
        if let Some((prefix, which)) = k.split_once(".attn.").filter(|(_, w)| *w == "q_bias" || *w == "v_bias") {
            q_v.entry(prefix.to_string()).or_default()[(which == "v_bias") as usize] = Some(v.clone());
            continue;
        }
        let name = match k.strip_prefix("blocks.").and_then(|r| r.strip_suffix(".attn.relative_position_bias_table")) {
            Some(i) => format!("block_rel_pos_bias.{i}.relative_position_bias_table"),
            None => k.clone(),
        };
        let t = if k == "patch_embed.proj.weight" {
            let want = [d, c, p, p];
            ensure!(
                s == &want,
                "'{k}' has shape {s:?} but this model needs {want:?}: the weights are for another configuration"
            );
            (vec![p * p * c, d], convert_patch_weight((p, c, d), v, false))
        } else if s.len() == 2 && k.ends_with(".weight") {
            transpose(s, v)
        } else {
            (s.clone(), v.clone())
        };
        out.insert(name, t);
    }
    for (prefix, parts) in q_v {
        let [Some(q), Some(v)] = parts else { bail!("'{prefix}.attn' has only one of q_bias / v_bias") };
        // BEiT has no key bias. A key bias b adds q·b to every score of a query row, and softmax is
        // invariant to a per-row shift, so zeros reproduce the model exactly and the key part's
        // gradient is mathematically zero (rounding noise in practice); it never changes the output.
        let k = vec![0.0; q.len()];
        out.insert(format!("{prefix}.attn.qkv.bias"), (vec![3 * q.len()], [q, k, v].concat()));
    }
    Ok(out)
}

/// Loads a BEiT masked-image-modeling model from a safetensors file in official naming (see
/// [`beit_from_official`]); every parameter must be present and of the right shape.
pub fn load_beit_weights(
    model: BeitForMaskedImageModeling,
    cfg: &BeitConfig,
    path: &Path,
) -> Result<BeitForMaskedImageModeling> {
    load_tensor_map(model, &beit_from_official(cfg, &read_safetensors(path)?)?, &path.display().to_string())
}
