//! BEiT weights: the official microsoft/unilm names (timm's BEiT names too) in PyTorch layout.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Result, bail, ensure};

use super::hf::HfConfig;
use super::names::{Names, owned, per_block};
use crate::io::{
    TensorMap, burn_to_pytorch_layout, convert_patch_weight, load_tensor_map, read_safetensors, transpose,
};
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

/// Hugging Face `BeitForMaskedImageModeling` / `BeitForImageClassification` names (transformers 4.x
/// names, which `save_pretrained` writes; then 5.x's in-memory names): q, k and v weights fused into
/// `attn.qkv.weight` (the key has no bias in either code), `lambda_1/2` <-> `gamma_1/2`, the
/// pooler's norm <-> `fc_norm`, `classifier` <-> `head`.
fn hf_names() -> Names {
    let blocks = [("beit.encoder.layer.#", "blocks.#"), ("beit.layers.#", "blocks.#")];
    let modules = [
        ("lambda_1", "gamma_1"),
        ("lambda_2", "gamma_2"),
        ("layernorm_before.*", "norm1.*"),
        ("layernorm_after.*", "norm2.*"),
        ("attention.attention.query.bias", "attn.q_bias"),
        ("attention.attention.value.bias", "attn.v_bias"),
        ("attention.attention.{query|key|value}.weight", "attn.qkv.weight"),
        (
            "attention.attention.relative_position_bias.relative_position_bias_table",
            "attn.relative_position_bias_table",
        ),
        ("attention.attention.relative_position_bias.relative_position_index", ""),
        ("attention.output.dense.*", "attn.proj.*"),
        ("intermediate.dense.*", "mlp.fc1.*"),
        ("output.dense.*", "mlp.fc2.*"),
        ("attention.q_proj.bias", "attn.q_bias"),
        ("attention.v_proj.bias", "attn.v_bias"),
        ("attention.{q_proj|k_proj|v_proj}.weight", "attn.qkv.weight"),
        ("relative_position_bias.relative_position_bias_table", "attn.relative_position_bias_table"),
        ("attention.o_proj.*", "attn.proj.*"),
        ("mlp.fc1.*", "mlp.fc1.*"),
        ("mlp.fc2.*", "mlp.fc2.*"),
    ];
    let top = owned(&[
        ("beit.embeddings.cls_token", "cls_token"),
        ("beit.embeddings.mask_token", "mask_token"),
        ("beit.embeddings.position_embeddings", "pos_embed"),
        ("beit.embeddings.patch_embeddings.projection.*", "patch_embed.proj.*"),
        (
            "beit.encoder.relative_position_bias.relative_position_bias_table",
            "rel_pos_bias.relative_position_bias_table",
        ),
        ("beit.encoder.relative_position_bias.relative_position_index", ""),
        // BeitForMaskedImageModeling's norm is its own; BeitModel's (no mean pooling) is under `beit.`.
        ("layernorm.*", "norm.*"),
        ("beit.layernorm.*", "norm.*"),
        ("beit.pooler.layernorm.*", "fc_norm.*"),
        ("classifier.*", "head.*"),
        ("lm_head.*", "lm_head.*"),
    ]);
    Names::new("a Hugging Face BEiT", [top, per_block(&blocks, &modules)].concat())
}

/// mim's BEiT (burn layout) -> official unilm keys in PyTorch layout: the inverse of
/// [`beit_from_official`] (each block's fused qkv bias split into `q_bias` and `v_bias`; its key part,
/// which no output depends on, is left out as BEiT has none).
pub fn official_from_burn(cfg: &BeitConfig, burn: &TensorMap) -> Result<TensorMap> {
    let patch = [cfg.embed_dim, cfg.in_chans, cfg.patch_size, cfg.patch_size];
    let mut out = TensorMap::new();
    for (k, (s, v)) in burn_to_pytorch_layout(burn, &[("patch_embed.proj.weight", patch)]) {
        if let Some(prefix) = k.strip_suffix(".attn.qkv.bias") {
            let d = v.len() / 3;
            out.insert(format!("{prefix}.attn.q_bias"), (vec![d], v[..d].to_vec()));
            out.insert(format!("{prefix}.attn.v_bias"), (vec![d], v[2 * d..].to_vec()));
            continue;
        }
        let name = match k.strip_prefix("block_rel_pos_bias.").and_then(|r| r.split_once('.')) {
            Some((i, table)) => format!("blocks.{i}.attn.{table}"),
            None => k,
        };
        out.insert(name, (s, v));
    }
    Ok(out)
}

/// Hugging Face BEiT keys (PyTorch layout) -> official unilm keys (see [`hf_names`]).
pub fn hf_beit_to_official(hf: &TensorMap) -> Result<TensorMap> {
    hf_names().to_canonical(hf)
}

/// Official unilm BEiT keys (PyTorch layout) -> Hugging Face's, as `save_pretrained` writes them.
pub fn official_to_hf(official: &TensorMap) -> Result<TensorMap> {
    hf_names().to_theirs(official)
}

/// A BEiT configuration from a Hugging Face `config.json` (`BeitConfig`): keys left out take
/// transformers' defaults; every architecture key is honoured or refused with the reason.
pub fn beit_config_from_hf(json: &serde_json::Value) -> Result<BeitConfig> {
    let c = HfConfig::new(json, "BEiT")?;
    c.check_blocks()?;
    let hidden = c.usize("hidden_size", 768)?;
    let cfg = BeitConfig {
        img_size: c.usize("image_size", 224)?,
        patch_size: c.usize("patch_size", 16)?,
        in_chans: c.usize("num_channels", 3)?,
        vocab_size: c.usize("vocab_size", 8192)?,
        embed_dim: hidden,
        depth: c.usize("num_hidden_layers", 12)?,
        num_heads: c.usize("num_attention_heads", 12)?,
        mlp_ratio: c.usize("intermediate_size", 3072)? as f64 / hidden as f64,
        layer_scale_init_value: c.float("layer_scale_init_value", 0.1)?,
        use_abs_pos_emb: c.flag("use_absolute_position_embeddings", false)?,
        use_rel_pos_bias: c.flag("use_relative_position_bias", false)?,
        use_shared_rel_pos_bias: c.flag("use_shared_relative_position_bias", false)?,
        init_std: c.float("initializer_range", 0.02)?,
        layer_norm_eps: c.float("layer_norm_eps", 1e-12)?,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// The Hugging Face `config.json` of `cfg`: `BeitForMaskedImageModeling`, or with `num_classes`
/// `BeitForImageClassification` (mean pooling, as unilm's fine-tuning).
pub fn hf_config(cfg: &BeitConfig, num_classes: Option<usize>) -> serde_json::Value {
    let mut json = serde_json::json!({
        "architectures": [if num_classes.is_some() { "BeitForImageClassification" } else { "BeitForMaskedImageModeling" }],
        "model_type": "beit",
        "image_size": cfg.img_size,
        "patch_size": cfg.patch_size,
        "num_channels": cfg.in_chans,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.embed_dim,
        "num_hidden_layers": cfg.depth,
        "num_attention_heads": cfg.num_heads,
        "intermediate_size": (cfg.embed_dim as f64 * cfg.mlp_ratio).round() as usize,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "layer_scale_init_value": cfg.layer_scale_init_value,
        "use_absolute_position_embeddings": cfg.use_abs_pos_emb,
        "use_relative_position_bias": cfg.use_rel_pos_bias,
        "use_shared_relative_position_bias": cfg.use_shared_rel_pos_bias,
        "use_mask_token": num_classes.is_none(),
        "use_mean_pooling": true,
        "initializer_range": cfg.init_std,
        "layer_norm_eps": cfg.layer_norm_eps,
    });
    if let Some(n) = num_classes {
        json["num_labels"] = n.into();
    }
    json
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
