//! MAE weights: the official facebookresearch/mae names (timm's ViT names) in PyTorch layout, and
//! Hugging Face `ViTMAEForPreTraining` checkpoints with their `config.json`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Result, bail, ensure};

use super::hf::HfConfig;
use super::names::{Names, owned, per_block};
use crate::io::{
    TensorMap, burn_to_pytorch_layout, check_pos_embed_shape, convert_patch_weight, load_tensor_map, parameters,
    read_safetensors, safetensors_bytes_with_metadata, transpose,
};
use crate::models::mae::{MaeConfig, MaskedAutoencoder};
use crate::models::pretrain::ModelConfig;

/// burn layout -> PyTorch layout (official MAE keys). The position embeddings are parameters
/// (never trained) and pass through as they are.
pub fn to_pytorch_layout(cfg: &MaeConfig, burn: &TensorMap) -> TensorMap {
    let patch = [cfg.embed_dim, cfg.in_chans, cfg.patch_size, cfg.patch_size];
    burn_to_pytorch_layout(burn, &[("patch_embed.proj.weight", patch)])
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
    let c = HfConfig::new(json, "MAE")?;
    c.check_blocks()?;
    let hidden = c.usize("hidden_size", 768)?;
    let inter = c.usize("intermediate_size", 3072)?;
    let dec = c.usize("decoder_hidden_size", 512)?;
    let dec_inter = c.usize("decoder_intermediate_size", 2048)?;
    ensure!(
        inter * dec == dec_inter * hidden,
        "mim uses one MLP ratio for encoder and decoder; this config has {inter}/{hidden} and {dec_inter}/{dec}"
    );
    let cfg = MaeConfig {
        img_size: c.usize("image_size", 224)?,
        patch_size: c.usize("patch_size", 16)?,
        in_chans: c.usize("num_channels", 3)?,
        embed_dim: hidden,
        depth: c.usize("num_hidden_layers", 12)?,
        num_heads: c.usize("num_attention_heads", 12)?,
        decoder_embed_dim: dec,
        decoder_depth: c.usize("decoder_num_hidden_layers", 8)?,
        decoder_num_heads: c.usize("decoder_num_attention_heads", 16)?,
        mlp_ratio: inter as f64 / hidden as f64,
        norm_pix_loss: c.flag("norm_pix_loss", false)?,
        encoder_mask_token: false,
        target: crate::models::mae::MaeTarget::Pixels,
        layer_norm_eps: c.float("layer_norm_eps", 1e-12)?,
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
    let bytes = safetensors_bytes_with_metadata(
        &to_pytorch_layout(cfg, &parameters(model)),
        &metadata,
        crate::io::Precision::F32,
    )?;
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
