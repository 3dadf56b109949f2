//! Model weights in and out, in the official codes' formats.
//!
//! mim's parameter paths are the official MAE / timm state-dict keys (`blocks.0.attn.qkv.weight`).
//! Export writes them in PyTorch layout (linear weights `[out, in]`, the patch embedding as a
//! `[D, C, p, p]` convolution, the position embeddings as they are), so the official code can load
//! the file. Import reads that layout, or Hugging Face `ViTMAEForPreTraining` checkpoints (separate
//! q/k/v, `vit.encoder.layer.N...` names), converted to safetensors. BEiT weights load from the
//! official microsoft/unilm (or timm) names with [`load_beit_weights`]. The generic file formats
//! these build on are [`crate::io`].

pub mod resize;
use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};

use crate::io::{
    TensorMap, check_pos_embed_shape, convert_patch_weight, load_tensor_map, parameters, read_safetensors,
    safetensors_bytes, transpose,
};
use crate::models::beit::{BeitConfig, BeitForMaskedImageModeling, relative_position_index};
use crate::models::mae::{MaeConfig, MaskedAutoencoder};

/// burn layout -> PyTorch layout (official MAE keys). The position embeddings are parameters
/// (never trained) and pass through as they are.
pub fn to_pytorch_layout(cfg: &MaeConfig, burn: &TensorMap) -> TensorMap {
    let mut out = TensorMap::new();
    for (k, (s, v)) in burn {
        let t = if k == "patch_embed.proj.weight" {
            (
                vec![cfg.embed_dim, cfg.in_chans, cfg.patch_size, cfg.patch_size],
                convert_patch_weight((cfg.patch_size, cfg.in_chans, cfg.embed_dim), v, true),
            )
        } else if s.len() == 2 && k.ends_with(".weight") {
            transpose(s, v)
        } else {
            (s.clone(), v.clone())
        };
        out.insert(k.clone(), t);
    }
    out
}

/// PyTorch layout (official MAE keys) -> burn layout; the position embeddings are kept as they are.
pub fn from_pytorch_layout(cfg: &MaeConfig, torch: &TensorMap) -> Result<TensorMap> {
    let mut out = TensorMap::new();
    for (k, (s, v)) in torch {
        let t = if k == "patch_embed.proj.weight" {
            let want = [cfg.embed_dim, cfg.in_chans, cfg.patch_size, cfg.patch_size];
            ensure!(
                s == &want,
                "'{k}' has shape {s:?} but this model needs {want:?}: the weights are for another configuration"
            );
            (
                vec![cfg.patch_dim(), cfg.embed_dim],
                convert_patch_weight((cfg.patch_size, cfg.in_chans, cfg.embed_dim), v, false),
            )
        } else if s.len() == 2 && k.ends_with(".weight") {
            transpose(s, v)
        } else {
            (s.clone(), v.clone())
        };
        out.insert(k.clone(), t);
    }
    Ok(out)
}

/// Hugging Face `ViTMAEForPreTraining` keys (transformers 4.x `vit.encoder.layer.N.attention.attention.query`
/// or 5.x `vit.layers.N.attention.q_proj` naming) -> official MAE keys (PyTorch layout; q, k and v are
/// concatenated into one qkv projection).
pub fn hf_to_official(hf: &TensorMap) -> Result<TensorMap> {
    let mut out = TensorMap::new();
    // Per block, the q, k and v tensors (shape, values) as they are found.
    type Parts = [Option<(Vec<usize>, Vec<f32>)>; 3];
    let mut qkv: BTreeMap<String, Parts> = BTreeMap::new();
    for (k, t) in hf {
        let block = |rest: &str, prefix: &str| -> Option<String> {
            let (i, tail) = rest.split_once('.')?;
            let (module, param) = tail.rsplit_once('.')?;
            let ours = match module {
                "layernorm_before" => "norm1",
                "layernorm_after" => "norm2",
                // transformers 4.x names, then 5.x names
                "attention.output.dense" | "attention.o_proj" => "attn.proj",
                "intermediate.dense" | "mlp.fc1" => "mlp.fc1",
                "output.dense" | "mlp.fc2" => "mlp.fc2",
                "attention.attention.query" | "attention.q_proj" => {
                    return Some(format!("{prefix}.{i}.qkv:query.{param}"));
                }
                "attention.attention.key" | "attention.k_proj" => return Some(format!("{prefix}.{i}.qkv:key.{param}")),
                "attention.attention.value" | "attention.v_proj" => {
                    return Some(format!("{prefix}.{i}.qkv:value.{param}"));
                }
                _ => return None,
            };
            Some(format!("{prefix}.{i}.{ours}.{param}"))
        };
        let name = match k.as_str() {
            "vit.embeddings.cls_token" => Some("cls_token".to_string()),
            "vit.embeddings.position_embeddings" => Some("pos_embed".to_string()),
            "decoder.decoder_pos_embed" => Some("decoder_pos_embed".to_string()),
            "decoder.mask_token" => Some("mask_token".to_string()),
            k if k.starts_with("vit.embeddings.patch_embeddings.projection.") => {
                Some(k.replacen("vit.embeddings.patch_embeddings.projection", "patch_embed.proj", 1))
            }
            k if k.starts_with("vit.layernorm.") => Some(k.replacen("vit.layernorm", "norm", 1)),
            k if k.starts_with("vit.encoder.layer.") => block(&k["vit.encoder.layer.".len()..], "blocks"),
            k if k.starts_with("vit.layers.") => block(&k["vit.layers.".len()..], "blocks"),
            k if k.starts_with("decoder.decoder_layers.") => {
                block(&k["decoder.decoder_layers.".len()..], "decoder_blocks")
            }
            k if k.starts_with("decoder.") => Some(k["decoder.".len()..].to_string()),
            _ => None,
        };
        let Some(name) = name else { bail!("unexpected tensor '{k}' in a Hugging Face ViTMAE checkpoint") };
        if let Some((prefix, which)) = name.split_once(".qkv:") {
            let (role, param) = which.split_once('.').unwrap_or((which, ""));
            let slot = match role {
                "query" => 0,
                "key" => 1,
                "value" => 2,
                _ => bail!("unexpected attention tensor '{k}'"),
            };
            qkv.entry(format!("{prefix}.attn.qkv.{param}")).or_default()[slot] = Some(t.clone());
        } else {
            out.insert(name, t.clone());
        }
    }
    for (name, parts) in qkv {
        let [Some(q), Some(k), Some(v)] = parts else { bail!("'{name}' is missing one of query/key/value") };
        let mut shape = q.0.clone();
        shape[0] *= 3;
        // PyTorch [out, in]: stacking rows = concatenating outputs, the order timm's qkv uses.
        out.insert(name, (shape, [q.1, k.1, v.1].concat()));
    }
    Ok(out)
}

/// A model configuration from a Hugging Face `config.json` of `ViTMAEForPreTraining`.
pub fn mae_config_from_hf(json: &serde_json::Value) -> Result<MaeConfig> {
    let get = |k: &str| {
        json.get(k).and_then(|v| v.as_u64()).map(|v| v as usize).with_context(|| format!("config.json lacks '{k}'"))
    };
    let hidden = get("hidden_size")?;
    let inter = get("intermediate_size")?;
    let dec = get("decoder_hidden_size")?;
    let dec_inter = get("decoder_intermediate_size")?;
    ensure!(
        inter * dec == dec_inter * hidden,
        "mim uses one MLP ratio for encoder and decoder; this config has {inter}/{hidden} and {dec_inter}/{dec}"
    );
    let cfg = MaeConfig {
        img_size: get("image_size")?,
        patch_size: get("patch_size")?,
        in_chans: get("num_channels")?,
        embed_dim: hidden,
        depth: get("num_hidden_layers")?,
        num_heads: get("num_attention_heads")?,
        decoder_embed_dim: dec,
        decoder_depth: get("decoder_num_hidden_layers")?,
        decoder_num_heads: get("decoder_num_attention_heads")?,
        mlp_ratio: inter as f64 / hidden as f64,
        norm_pix_loss: json.get("norm_pix_loss").and_then(|v| v.as_bool()).unwrap_or(false),
        encoder_mask_token: false,
        target: crate::models::mae::MaeTarget::Pixels,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// Loads weights into `model` from a safetensors file in official MAE or Hugging Face naming.
/// Every parameter must be present and of the right shape. The position embeddings are loaded as
/// the file holds them (the official code saves and loads them; transformers 5.x leaves them at
/// zero in a model built from a config), not replaced by sin-cos.
pub fn load_weights(model: MaskedAutoencoder, cfg: &MaeConfig, path: &Path) -> Result<MaskedAutoencoder> {
    let file = read_safetensors(path)?;
    let official = if file.keys().any(|k| k.starts_with("vit.")) { hf_to_official(&file)? } else { file };
    for (key, dim) in [("pos_embed", cfg.embed_dim), ("decoder_pos_embed", cfg.decoder_embed_dim)] {
        let Some((shape, _)) = official.get(key) else {
            bail!(
                "'{}' has no '{key}': mim loads the position embeddings from the file, as the official code does \
                 (official MAE and Hugging Face ViTMAE files hold them as pos_embed / decoder_pos_embed or \
                 vit.embeddings.position_embeddings / decoder.decoder_pos_embed)",
                path.display()
            );
        };
        check_pos_embed_shape(key, shape, cfg.grid(), dim, &path.display().to_string())?;
    }
    load_tensor_map(model, &from_pytorch_layout(cfg, &official)?, &path.display().to_string())
}

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

/// Writes the model's weights as safetensors in official MAE naming and PyTorch layout.
pub fn export_weights(model: &MaskedAutoencoder, cfg: &MaeConfig, path: &Path) -> Result<()> {
    let bytes = safetensors_bytes(&to_pytorch_layout(cfg, &parameters(model)))?;
    crate::io::write_atomic(path, &[&bytes])
}
