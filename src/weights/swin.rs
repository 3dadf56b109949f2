//! Swin Transformer and SimMIM weights. The canonical names are timm 1.0's Swin (patch merging at
//! the start of a stage, `head.fc`), with SimMIM's `encoder.` prefix, `encoder.mask_token` and
//! `decoder.0` for SimMIM. Read and written besides: the official Microsoft Swin / SimMIM layout
//! (patch merging at the end of a stage, `head`; timm < 0.9 too) and Hugging Face's `SwinModel`,
//! `SwinForImageClassification` and `SwinForMaskedImageModeling`.

use std::path::Path;

use anyhow::{Result, ensure};

use super::hf::HfConfig;
use super::names::{Names, owned, per_block};
use crate::io::{TensorMap, burn_to_pytorch_layout, load_tensor_map, pytorch_to_burn_layout, read_safetensors};
use crate::models::simmim::SimMim;
use crate::models::swin::{SwinConfig, SwinTransformer};

/// A Swin name split into SimMIM's `encoder.` prefix (or none) and the Swin name.
fn split_encoder(k: &str) -> (&str, &str) {
    match k.strip_prefix("encoder.") {
        Some(rest) => ("encoder.", rest),
        None => ("", k),
    }
}

/// The official layout (patch merging at the end of stage i, `head.weight`) -> timm 1.0's (at the
/// start of stage i + 1, `head.fc.weight`). A map already in timm's layout is returned as it is.
pub fn official_to_timm_layout(map: &TensorMap) -> Result<TensorMap> {
    let official = map.keys().any(|k| split_encoder(k).1.starts_with("layers.0.downsample."));
    let mut out = TensorMap::new();
    for (k, t) in map {
        let (prefix, name) = split_encoder(k);
        let mut name = name.to_string();
        if official
            && let Some((i, rest)) = name.strip_prefix("layers.").and_then(|r| r.split_once('.'))
            && rest.starts_with("downsample.")
        {
            name = format!("layers.{}.{rest}", i.parse::<usize>()? + 1);
        }
        if let Some(rest) = name.strip_prefix("head.")
            && !rest.starts_with("fc.")
        {
            name = format!("head.fc.{rest}");
        }
        out.insert(format!("{prefix}{name}"), t.clone());
    }
    Ok(out)
}

/// timm 1.0's layout -> the official one: the inverse of [`official_to_timm_layout`].
pub fn timm_to_official_layout(map: &TensorMap) -> Result<TensorMap> {
    let mut out = TensorMap::new();
    for (k, t) in map {
        let (prefix, name) = split_encoder(k);
        let mut name = name.to_string();
        if let Some((i, rest)) = name.strip_prefix("layers.").and_then(|r| r.split_once('.'))
            && rest.starts_with("downsample.")
        {
            let i: usize = i.parse()?;
            ensure!(i > 0, "'{k}': stage 0 of a timm Swin has no patch merging");
            name = format!("layers.{}.{rest}", i - 1);
        }
        if let Some(rest) = name.strip_prefix("head.fc.") {
            name = format!("head.{rest}");
        }
        out.insert(format!("{prefix}{name}"), t.clone());
    }
    Ok(out)
}

/// Hugging Face Swin names (transformers 4.x names, which `save_pretrained` writes; then 5.x's
/// in-memory names) <-> the official layout, under `encoder.` for SimMIM.
fn hf_names(simmim: bool) -> Names {
    let o = if simmim { "encoder." } else { "" };
    let blocks = [("swin.encoder.layers.#.blocks.#".to_string(), format!("{o}layers.#.blocks.#"))];
    let blocks: Vec<(&str, &str)> = blocks.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let modules = [
        ("layernorm_before.*", "norm1.*"),
        ("layernorm_after.*", "norm2.*"),
        ("attention.self.{query|key|value}.*", "attn.qkv.*"),
        ("attention.self.relative_position_bias_table", "attn.relative_position_bias_table"),
        ("attention.self.relative_position_index", ""),
        ("attention.output.dense.*", "attn.proj.*"),
        ("intermediate.dense.*", "mlp.fc1.*"),
        ("output.dense.*", "mlp.fc2.*"),
        ("attention.{q_proj|k_proj|v_proj}.*", "attn.qkv.*"),
        ("attention.relative_position_bias.relative_position_bias_table", "attn.relative_position_bias_table"),
        ("attention.o_proj.*", "attn.proj.*"),
        ("mlp.fc1.*", "mlp.fc1.*"),
        ("mlp.fc2.*", "mlp.fc2.*"),
    ];
    let mut top = vec![
        ("swin.embeddings.patch_embeddings.projection.*".to_string(), format!("{o}patch_embed.proj.*")),
        ("swin.embeddings.norm.*".to_string(), format!("{o}patch_embed.norm.*")),
        ("swin.embeddings.mask_token".to_string(), format!("{o}mask_token")),
        ("swin.encoder.layers.#.downsample.*".to_string(), format!("{o}layers.#.downsample.*")),
        ("swin.layernorm.*".to_string(), format!("{o}norm.*")),
    ];
    top.extend(owned(if simmim { &[("decoder.0.*", "decoder.0.*")] } else { &[("classifier.*", "head.*")] }));
    let what = if simmim { "a Hugging Face SwinForMaskedImageModeling" } else { "a Hugging Face Swin" };
    Names::new(what, [top, per_block(&blocks, &modules)].concat())
}

/// Hugging Face Swin keys (PyTorch layout) -> canonical (timm layout; SimMIM's names for a
/// `SwinForMaskedImageModeling`).
pub fn hf_to_canonical(hf: &TensorMap) -> Result<TensorMap> {
    let simmim = hf.keys().any(|k| k.starts_with("decoder.0."));
    official_to_timm_layout(&hf_names(simmim).to_canonical(hf)?)
}

/// Canonical Swin or SimMIM keys -> Hugging Face's, as `save_pretrained` writes them.
pub fn canonical_to_hf(canonical: &TensorMap) -> Result<TensorMap> {
    let simmim = canonical.keys().any(|k| k.starts_with("decoder.0."));
    hf_names(simmim).to_theirs(&timm_to_official_layout(canonical)?)
}

/// A Swin configuration from a Hugging Face `config.json` (`SwinConfig`): keys left out take
/// transformers' defaults; every architecture key is honoured or refused with the reason.
/// `num_classes` is the head's, which the caller knows from the tensors.
pub fn swin_config_from_hf(json: &serde_json::Value, num_classes: usize) -> Result<SwinConfig> {
    let c = HfConfig::new(json, "Swin")?;
    c.check_blocks()?;
    ensure!(
        !c.flag("use_absolute_embeddings", false)?,
        "config.json sets use_absolute_embeddings: mim's Swin has relative position biases only (as the published Swins)"
    );
    let eps = c.float("layer_norm_eps", 1e-5)?;
    ensure!(eps == 1e-5, "config.json sets layer_norm_eps {eps}: mim's Swin uses PyTorch's LayerNorm default 1e-5");
    let cfg = SwinConfig {
        img_size: c.usize("image_size", 224)?,
        patch_size: c.usize("patch_size", 4)?,
        in_chans: c.usize("num_channels", 3)?,
        embed_dim: c.usize("embed_dim", 96)?,
        depths: c.list("depths", &[2, 2, 6, 2])?,
        num_heads: c.list("num_heads", &[3, 6, 12, 24])?,
        window_size: c.usize("window_size", 7)?,
        mlp_ratio: c.float("mlp_ratio", 4.0)?,
        num_classes,
        drop_path_rate: c.float("drop_path_rate", 0.1)?,
    };
    cfg.validate()?;
    let stride = c.usize("encoder_stride", 32)?;
    ensure!(
        json.get("encoder_stride").is_none() || stride == cfg.encoder_stride(),
        "config.json sets encoder_stride {stride}, but this Swin downsamples by {} (patch {} x 2^{}): SimMIM's \
         decoder must restore the full resolution",
        cfg.encoder_stride(),
        cfg.patch_size,
        cfg.num_stages() - 1
    );
    Ok(cfg)
}

/// The Hugging Face `config.json` of `cfg`: `SwinForMaskedImageModeling` for SimMIM, else
/// `SwinForImageClassification` with a head or `SwinModel` without one.
pub fn hf_config(cfg: &SwinConfig, simmim: bool) -> serde_json::Value {
    let architecture = match (simmim, cfg.num_classes) {
        (true, _) => "SwinForMaskedImageModeling",
        (false, 0) => "SwinModel",
        (false, _) => "SwinForImageClassification",
    };
    let mut json = serde_json::json!({
        "architectures": [architecture],
        "model_type": "swin",
        "image_size": cfg.img_size,
        "patch_size": cfg.patch_size,
        "num_channels": cfg.in_chans,
        "embed_dim": cfg.embed_dim,
        "depths": cfg.depths,
        "num_heads": cfg.num_heads,
        "window_size": cfg.window_size,
        "mlp_ratio": cfg.mlp_ratio,
        "qkv_bias": true,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "drop_path_rate": cfg.drop_path_rate,
        "use_absolute_embeddings": false,
        "layer_norm_eps": 1e-5,
        "encoder_stride": cfg.encoder_stride(),
        "initializer_range": 0.02,
    });
    if cfg.num_classes > 0 && !simmim {
        json["num_labels"] = cfg.num_classes.into();
    }
    json
}

/// Canonical Swin keys (PyTorch layout) -> this model's keys and layout: linear weights
/// transposed, the patch-embedding convolution flattened in patchify order, the derived buffers
/// (`relative_position_index`, `attn_mask`) dropped. Official-layout keys are moved first.
pub fn timm_to_burn(torch: &TensorMap) -> Result<TensorMap> {
    let mut timm = official_to_timm_layout(torch)?;
    timm.retain(|k, _| !(k.ends_with("relative_position_index") || k.ends_with("attn_mask")));
    pytorch_to_burn_layout(&timm)
}

/// mim's SimMIM (burn layout) -> canonical SimMIM keys in PyTorch layout: the inverse of
/// [`simmim_to_burn`].
pub fn simmim_from_burn(cfg: &SwinConfig, burn: &TensorMap) -> TensorMap {
    let (stride, c) = (cfg.encoder_stride(), cfg.in_chans);
    let convs = [
        ("encoder.patch_embed.proj.weight", [cfg.embed_dim, c, cfg.patch_size, cfg.patch_size]),
        ("decoder.0.weight", [stride * stride * c, cfg.num_features(), 1, 1]),
    ];
    let renamed: TensorMap = burn
        .iter()
        .map(|(k, t)| {
            let name = match k.as_str() {
                "mask_token" => "encoder.mask_token".to_string(),
                k => k.strip_prefix("decoder.").map_or_else(|| k.to_string(), |rest| format!("decoder.0.{rest}")),
            };
            (name, t.clone())
        })
        .collect();
    burn_to_pytorch_layout(&renamed, &convs)
}

/// Loads a timm- (or official-) named Swin checkpoint in safetensors into `model`; every parameter must
/// be present with the right shape.
pub fn load_timm(model: SwinTransformer, path: &Path) -> Result<SwinTransformer> {
    load_tensor_map(model, &timm_to_burn(&read_safetensors(path)?)?, &path.display().to_string())
}

/// SimMIM keys (PyTorch layout, official or canonical) -> this model's: `encoder.*` as
/// [`timm_to_burn`], `encoder.mask_token` -> `mask_token`, the `decoder.0` convolution -> `decoder`.
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
