//! MAE weights: the official facebookresearch/mae names (timm's ViT names) in PyTorch layout, and
//! Hugging Face `ViTMAEForPreTraining` checkpoints with their `config.json`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};

use super::names::{Names, owned, per_block};
use crate::io::{
    TensorMap, check_pos_embed_shape, convert_patch_weight, load_tensor_map, parameters, read_safetensors,
    safetensors_bytes_with_metadata, transpose,
};
use crate::models::mae::{MaeConfig, MaskedAutoencoder};
use crate::models::pretrain::ModelConfig;

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

/// Hugging Face `ViTMAEForPreTraining` names: transformers 4.x names first (the published
/// `facebook/vit-mae-*` files hold them; writing uses them), then transformers 5.x's
/// (`vit.layers.N.attention.q_proj`, and `decoder.decoder_encoder.layer.N` as its `save_pretrained`
/// writes the decoder). The encoder alone (`ViTMAEModel`) saves without `vit.`, which
/// [`super::detect`] puts back.
fn hf_names() -> Names {
    let blocks = [
        ("vit.encoder.layer.#", "blocks.#"),
        ("decoder.decoder_layers.#", "decoder_blocks.#"),
        ("vit.layers.#", "blocks.#"),
        ("decoder.decoder_encoder.layer.#", "decoder_blocks.#"),
    ];
    let modules = [
        ("layernorm_before.*", "norm1.*"),
        ("layernorm_after.*", "norm2.*"),
        ("attention.attention.{query|key|value}.*", "attn.qkv.*"),
        ("attention.output.dense.*", "attn.proj.*"),
        ("intermediate.dense.*", "mlp.fc1.*"),
        ("output.dense.*", "mlp.fc2.*"),
        ("attention.{q_proj|k_proj|v_proj}.*", "attn.qkv.*"),
        ("attention.o_proj.*", "attn.proj.*"),
        ("mlp.fc1.*", "mlp.fc1.*"),
        ("mlp.fc2.*", "mlp.fc2.*"),
    ];
    let top = owned(&[
        ("vit.embeddings.cls_token", "cls_token"),
        ("vit.embeddings.position_embeddings", "pos_embed"),
        ("vit.embeddings.patch_embeddings.projection.*", "patch_embed.proj.*"),
        ("vit.layernorm.*", "norm.*"),
        ("decoder.mask_token", "mask_token"),
        ("decoder.decoder_pos_embed", "decoder_pos_embed"),
        ("decoder.decoder_embed.*", "decoder_embed.*"),
        ("decoder.decoder_norm.*", "decoder_norm.*"),
        ("decoder.decoder_pred.*", "decoder_pred.*"),
    ]);
    Names::new("a Hugging Face ViTMAE checkpoint", [top, per_block(&blocks, &modules)].concat())
}

/// Hugging Face `ViTMAEForPreTraining` keys (transformers 4.x or 5.x names) -> official MAE keys
/// (PyTorch layout; q, k and v concatenated into one qkv projection).
pub fn hf_to_official(hf: &TensorMap) -> Result<TensorMap> {
    hf_names().to_canonical(hf)
}

/// Official MAE keys (PyTorch layout) -> Hugging Face `ViTMAEForPreTraining` keys as the published
/// `facebook/vit-mae-*` files name them (transformers 4.x names, which 5.x renames on load): the
/// inverse of [`hf_to_official`], q, k and v split out of each qkv projection.
pub fn official_to_hf(official: &TensorMap) -> Result<TensorMap> {
    hf_names().to_theirs(official)
}

/// The Hugging Face `config.json` of `cfg` (`ViTMAEForPreTraining`; every key written, none left to
/// transformers' defaults).
pub fn hf_config(cfg: &MaeConfig) -> Result<serde_json::Value> {
    ensure!(
        cfg.target == crate::models::mae::MaeTarget::Pixels && !cfg.encoder_mask_token,
        "only a pixel-target MAE without the encoder mask token has a Hugging Face ViTMAE equivalent"
    );
    let hidden = |d: usize| (d as f64 * cfg.mlp_ratio).round() as usize;
    Ok(serde_json::json!({
        "architectures": ["ViTMAEForPreTraining"],
        "model_type": "vit_mae",
        "image_size": cfg.img_size,
        "patch_size": cfg.patch_size,
        "num_channels": cfg.in_chans,
        "hidden_size": cfg.embed_dim,
        "num_hidden_layers": cfg.depth,
        "num_attention_heads": cfg.num_heads,
        "intermediate_size": hidden(cfg.embed_dim),
        "decoder_hidden_size": cfg.decoder_embed_dim,
        "decoder_num_hidden_layers": cfg.decoder_depth,
        "decoder_num_attention_heads": cfg.decoder_num_heads,
        "decoder_intermediate_size": hidden(cfg.decoder_embed_dim),
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "layer_norm_eps": cfg.layer_norm_eps,
        "qkv_bias": true,
        "norm_pix_loss": cfg.norm_pix_loss,
        "mask_ratio": 0.75,
        "initializer_range": 0.02,
    }))
}

/// A model configuration from a Hugging Face `config.json` of `ViTMAEForPreTraining` / `ViTMAEModel`.
///
/// A key the file leaves out takes `ViTMAEConfig`'s default, as transformers does (`save_pretrained`
/// writes only what differs). Every architecture key is honoured or refused with the reason:
/// `layer_norm_eps` is honoured; `hidden_act` other than `gelu` (erf GELU, mim's only activation),
/// `qkv_bias: false`, non-zero dropout and non-square `image_size` / `patch_size` are refused.
/// `mask_ratio` is a masking choice, not architecture: mim takes it from `--mask-ratio`.
pub fn mae_config_from_hf(json: &serde_json::Value) -> Result<MaeConfig> {
    let obj = json.as_object().context("config.json is not a JSON object")?;
    let hf_default = |k: &str| -> serde_json::Value {
        match k {
            "hidden_size" => 768.into(),
            "num_hidden_layers" | "num_attention_heads" => 12.into(),
            "intermediate_size" => 3072.into(),
            "image_size" => 224.into(),
            "patch_size" => 16.into(),
            "num_channels" => 3.into(),
            "decoder_num_attention_heads" => 16.into(),
            "decoder_hidden_size" => 512.into(),
            "decoder_num_hidden_layers" => 8.into(),
            "decoder_intermediate_size" => 2048.into(),
            _ => serde_json::Value::Null,
        }
    };
    let value = |k: &str| obj.get(k).cloned().unwrap_or_else(|| hf_default(k));
    let get = |k: &str| -> Result<usize> {
        let v = value(k);
        // transformers accepts a pair for the image and patch sizes; mim's models are square.
        if let Some([a, b]) = v.as_array().map(Vec::as_slice) {
            ensure!(
                a == b,
                "config.json sets {k} {v}: mim's MAE takes square images and patches; resize the position \
                 embeddings to a square grid first"
            );
            return get_usize(k, a);
        }
        get_usize(k, &v)
    };
    let act = obj.get("hidden_act").and_then(|v| v.as_str()).unwrap_or("gelu");
    ensure!(
        act == "gelu",
        "config.json sets hidden_act \"{act}\": mim's ViT blocks use the exact (erf) GELU, Hugging Face's \"gelu\"; \
         these weights were trained with another activation and would give wrong outputs"
    );
    ensure!(
        obj.get("qkv_bias").and_then(|v| v.as_bool()).unwrap_or(true),
        "config.json sets qkv_bias false: mim's MAE attention always has a qkv bias (as the official MAE); \
         a model without one is not supported"
    );
    for key in ["hidden_dropout_prob", "attention_probs_dropout_prob"] {
        let p = obj.get(key).and_then(|v| v.as_f64()).unwrap_or(0.0);
        ensure!(
            p == 0.0,
            "config.json sets {key} {p}: mim's MAE has no dropout (the MAE recipes use none); set it to 0.0"
        );
    }
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
        norm_pix_loss: obj.get("norm_pix_loss").and_then(|v| v.as_bool()).unwrap_or(false),
        encoder_mask_token: false,
        target: crate::models::mae::MaeTarget::Pixels,
        layer_norm_eps: match obj.get("layer_norm_eps") {
            Some(v) => v.as_f64().with_context(|| format!("config.json: layer_norm_eps {v} is not a number"))?,
            None => 1e-12,
        },
    };
    cfg.validate()?;
    Ok(cfg)
}

fn get_usize(key: &str, v: &serde_json::Value) -> Result<usize> {
    v.as_u64().map(|n| n as usize).with_context(|| format!("config.json: {key} {v} is not a non-negative integer"))
}

/// Loads weights into `model` from a safetensors file in official MAE or Hugging Face naming.
/// Every parameter must be present and of the right shape. The position embeddings are loaded as
/// the file holds them (the official code saves and loads them; transformers 5.x leaves them at
/// zero in a model built from a config), not replaced by sin-cos.
pub fn load_weights(model: MaskedAutoencoder, cfg: &MaeConfig, path: &Path) -> Result<MaskedAutoencoder> {
    let file = read_safetensors(path)?;
    let official = if file.keys().any(|k| k.starts_with("vit.")) { hf_to_official(&file)? } else { file };
    load_mae_tensors(model, cfg, &official, &path.display().to_string())
}

/// Loads official-named tensors (PyTorch layout) from `source` into `model`, as [`load_weights`].
pub fn load_mae_tensors(
    model: MaskedAutoencoder,
    cfg: &MaeConfig,
    official: &TensorMap,
    source: &str,
) -> Result<MaskedAutoencoder> {
    for (key, dim) in [("pos_embed", cfg.embed_dim), ("decoder_pos_embed", cfg.decoder_embed_dim)] {
        let Some((shape, _)) = official.get(key) else {
            bail!(
                "'{source}' has no '{key}': mim loads the position embeddings from the file, as the official code does \
                 (official MAE and Hugging Face ViTMAE files hold them as pos_embed / decoder_pos_embed or \
                 vit.embeddings.position_embeddings / decoder.decoder_pos_embed)"
            );
        };
        check_pos_embed_shape(key, shape, cfg.grid(), dim, source)?;
    }
    load_tensor_map(model, &from_pytorch_layout(cfg, official)?, source)
}

/// Writes the model's weights as safetensors in official MAE naming and PyTorch layout, with the
/// model configuration in the header's metadata (`mim.config`, see [`super::CONFIG_KEY`]) so the
/// file alone rebuilds the model.
pub fn export_weights(model: &MaskedAutoencoder, cfg: &MaeConfig, path: &Path) -> Result<()> {
    let config = serde_json::to_string(&ModelConfig::Mae(cfg.clone()))?;
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string()), (super::CONFIG_KEY.to_string(), config)]);
    let bytes = safetensors_bytes_with_metadata(&to_pytorch_layout(cfg, &parameters(model)), &metadata)?;
    crate::io::write_atomic(path, &[&bytes])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hf_config_takes_transformers_defaults_and_honours_or_refuses_each_key() {
        // `save_pretrained` leaves out what equals ViTMAEConfig's defaults: ViT-B/16 with eps 1e-12.
        let cfg = mae_config_from_hf(&json!({"model_type": "vit_mae"})).unwrap();
        assert_eq!((cfg.img_size, cfg.patch_size, cfg.embed_dim, cfg.depth, cfg.num_heads), (224, 16, 768, 12, 12));
        assert_eq!((cfg.decoder_embed_dim, cfg.decoder_depth, cfg.decoder_num_heads), (512, 8, 16));
        assert_eq!(cfg.layer_norm_eps, 1e-12);
        assert!(!cfg.norm_pix_loss);
        let eps = mae_config_from_hf(&json!({"layer_norm_eps": 1e-6, "image_size": [224, 224]})).unwrap();
        assert_eq!((eps.layer_norm_eps, eps.img_size), (1e-6, 224));
        for (bad, says) in [
            (json!({"hidden_act": "relu"}), "hidden_act \"relu\""),
            (json!({"hidden_act": "gelu_new"}), "hidden_act \"gelu_new\""),
            (json!({"qkv_bias": false}), "qkv_bias false"),
            (json!({"image_size": [32, 64]}), "image_size [32,64]"),
            (json!({"hidden_dropout_prob": 0.1}), "hidden_dropout_prob 0.1"),
            (json!({"patch_size": "16"}), "patch_size \"16\" is not a non-negative integer"),
        ] {
            let e = mae_config_from_hf(&bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
