//! What a weights file holds, read from its tensor names and shapes alone: whose names it uses, which
//! model it is, and the configuration the shapes imply.
//!
//! Shapes fix almost everything: widths, depths, patch and grid sizes, MLP ratios, the vocabulary,
//! and for BEiT and Swin the number of heads (their relative position tables have one column per
//! head). What they cannot say is listed in [`Detected::assumed`] with the value taken: a ViT's heads
//! (head width 64, the published ViT-B/L use 12 and 16), MAE's `norm_pix_loss`, a Swin's image size.
//! A configuration stored beside the weights (mim's own exports, a Hugging Face `config.json`)
//! replaces the guess; see [`super::open`].

use std::collections::BTreeSet;
use std::fmt;

use anyhow::{Context, Result, bail, ensure};

use crate::io::TensorMap;
use crate::models::beit::BeitConfig;
use crate::models::mae::{MaeConfig, MaeTarget};
use crate::models::pretrain::ModelConfig;
use crate::models::swin::SwinConfig;
use crate::models::vit::LN_EPS;

/// Whose parameter names a file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// The official repositories' names (facebookresearch/mae, microsoft/unilm, microsoft/SimMIM, the
    /// official Swin), which timm's ViT and BEiT share.
    Official,
    /// Hugging Face transformers (`vit.embeddings...`, `beit.encoder.layer.N...`, `swin.encoder.layers.N...`).
    HuggingFace,
    /// timm >= 0.9's Swin layout (patch merging at the start of a stage, `head.fc`).
    Timm,
}

impl fmt::Display for Naming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Naming::Official => "official (the papers' repositories; timm's ViT and BEiT use the same)",
            Naming::HuggingFace => "Hugging Face transformers",
            Naming::Timm => "timm",
        })
    }
}

/// Which model a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holds {
    /// An MAE for pretraining: the encoder, and the decoder when `decoder` (the official
    /// `mae_pretrain_vit_*.pth` files keep only the encoder, `mae_visualize_*` both).
    Mae {
        /// The decoder is in the file.
        decoder: bool,
    },
    /// A fine-tuned ViT classifier (MAE's `main_finetune.py`, timm's ViT with a head).
    VitClassifier {
        /// Average pooling with `fc_norm` (MAE's default `global_pool`) rather than the [CLS] token.
        global_pool: bool,
        /// Outputs of the head.
        num_classes: usize,
    },
    /// A BEiT for masked image modeling (with its `lm_head`).
    Beit,
    /// A fine-tuned BEiT classifier (mean pooling, `fc_norm`, `head`).
    BeitClassifier {
        /// Outputs of the head.
        num_classes: usize,
    },
    /// A Swin Transformer backbone, with a head when `num_classes > 0`.
    Swin {
        /// Outputs of the head (0: none).
        num_classes: usize,
    },
    /// The official SimMIM wrapper (`encoder.*` Swin, `encoder.mask_token`, `decoder.0` convolution).
    SimMim,
}

impl fmt::Display for Holds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Holds::Mae { decoder: true } => write!(f, "MAE encoder and decoder (pretraining, reconstruction)"),
            Holds::Mae { decoder: false } => write!(f, "MAE encoder only (no decoder: fine-tuning, features)"),
            Holds::VitClassifier { global_pool, num_classes } => {
                let pool = if *global_pool { "global average pool + fc_norm" } else { "[CLS] token" };
                write!(f, "ViT classifier, {num_classes} classes, {pool}")
            }
            Holds::Beit => write!(f, "BEiT for masked image modeling"),
            Holds::BeitClassifier { num_classes } => write!(f, "BEiT classifier, {num_classes} classes"),
            Holds::Swin { num_classes: 0 } => write!(f, "Swin Transformer backbone (no head)"),
            Holds::Swin { num_classes } => write!(f, "Swin Transformer classifier, {num_classes} classes"),
            Holds::SimMim => write!(f, "SimMIM (Swin encoder and its one-layer decoder)"),
        }
    }
}

/// What [`detect`] found.
#[derive(Debug, Clone)]
pub struct Detected {
    /// Whose names the file uses.
    pub naming: Naming,
    /// The model in the file.
    pub holds: Holds,
    /// The architecture the shapes imply (the encoder's, for classifiers).
    pub config: ModelConfig,
    /// What the shapes do not fix and was assumed: `(field, why)`.
    pub assumed: Vec<(String, String)>,
    /// What the shapes do not fix and no rule could assume: the file cannot build a model until a
    /// configuration is given.
    pub unknown: Vec<String>,
}

/// Reads the naming, model and configuration of a state dict (any nesting and `module.` prefix
/// already removed), and returns its tensors in the family's canonical names: official MAE / BEiT
/// names, timm 1.0's Swin layout (under SimMIM's `encoder.` for SimMIM); PyTorch layout.
pub fn detect(t: TensorMap) -> Result<(Detected, TensorMap)> {
    let any = |p: &str| t.keys().any(|k| k.starts_with(p));
    // Hugging Face `ViTMAEModel` and `SwinModel` (the encoder alone) save without their prefix.
    if any("embeddings.patch_embeddings.") {
        let prefix = if any("encoder.layers.") { "swin" } else { "vit" };
        let prefixed = t.into_iter().map(|(k, v)| (format!("{prefix}.{k}"), v)).collect();
        return detect(prefixed);
    }
    let official = if any("vit.embeddings.") {
        super::mae::hf_to_official(&t)?
    } else if any("beit.") {
        super::beit::hf_beit_to_official(&t)?
    } else if any("swin.") {
        super::swin::hf_to_canonical(&t)?
    } else {
        let d = detect_official(&t)?;
        // One Swin layout whichever the file's: timm 1.0's.
        let t = if let ModelConfig::Swin(_) = d.config { super::swin::official_to_timm_layout(&t)? } else { t };
        return Ok((d, t));
    };
    let mut d = detect_official(&official)?;
    // transformers' ViTMAE and BEiT configs default to eps 1e-12, which no tensor shows (Swin's is
    // PyTorch's 1e-5, as mim's).
    let eps = match &mut d.config {
        ModelConfig::Mae(cfg) => Some((&mut cfg.layer_norm_eps, "ViTMAEConfig")),
        ModelConfig::Beit(cfg) => Some((&mut cfg.layer_norm_eps, "BeitConfig")),
        ModelConfig::Swin(_) => None,
    };
    if let Some((eps, class)) = eps {
        *eps = 1e-12;
        d.assumed.push(("layer_norm_eps".into(), format!("1e-12 (Hugging Face {class}'s default; not stored)")));
    }
    Ok((Detected { naming: Naming::HuggingFace, ..d }, official))
}

fn detect_official(t: &TensorMap) -> Result<Detected> {
    let has = |k: &str| t.contains_key(k);
    let any = |p: &str| t.keys().any(|k| k.starts_with(p));
    if any("encoder.layers.") && any("decoder.0.") {
        let swin: TensorMap =
            t.iter().filter_map(|(k, v)| Some((k.strip_prefix("encoder.")?.to_string(), v.clone()))).collect();
        let d = swin_config(&swin)?;
        return Ok(Detected { holds: Holds::SimMim, ..d });
    }
    if any("layers.0.blocks.0.attn.") {
        return swin_config(t);
    }
    if has("rel_pos_bias.relative_position_bias_table")
        || any("blocks.0.attn.q_bias")
        || any("blocks.0.gamma_1")
        || has("lm_head.weight")
    {
        return beit(t);
    }
    if has("patch_embed.proj.weight") && any("blocks.0.attn.qkv.") {
        return mae(t);
    }
    let sample: Vec<&str> = t.keys().take(6).map(String::as_str).collect();
    bail!(
        "cannot tell which model these {} tensors are (first names: {}): mim reads MAE / ViT (official, timm or \
         Hugging Face names), BEiT (official or Hugging Face names) and Swin / SimMIM (timm, official or Hugging Face \
         names)",
        t.len(),
        sample.join(", ")
    )
}

fn shape<'a>(t: &'a TensorMap, k: &str) -> Result<&'a [usize]> {
    Ok(&t.get(k).with_context(|| format!("the file has no '{k}'"))?.0)
}

/// The number of `prefix{i}.` blocks.
fn count(t: &TensorMap, prefix: &str) -> usize {
    let ids: BTreeSet<usize> =
        t.keys().filter_map(|k| k.strip_prefix(prefix)?.split('.').next()?.parse().ok()).collect();
    ids.len()
}

/// Patch embedding `[D, C, p, p]` -> (D, C, p).
fn patch_embed(t: &TensorMap, key: &str) -> Result<(usize, usize, usize)> {
    match shape(t, key)? {
        &[d, c, p, q] if p == q => Ok((d, c, p)),
        s => bail!("'{key}' has shape {s:?}, not a square patch convolution [D, C, p, p]"),
    }
}

/// The side of a square grid of `n` patches.
fn grid_side(n: usize, what: &str) -> Result<usize> {
    let g = (n as f64).sqrt().round() as usize;
    ensure!(g * g == n, "{what} covers {n} patches, not a square grid");
    Ok(g)
}

/// Heads of a ViT of width `d`, which its weights do not store: the published models' choice, else
/// head width 64 or 32; `None` when no rule fits.
fn vit_heads(d: usize, what: &str, assumed: &mut Vec<(String, String)>) -> Option<usize> {
    let (heads, why) = match d {
        768 => (12, "ViT-B"),
        1024 => (16, "ViT-L"),
        1280 => (16, "ViT-H"),
        d if d % 64 == 0 => (d / 64, "head width 64"),
        d if d % 32 == 0 => (d / 32, "head width 32"),
        _ => return None,
    };
    assumed.push((format!("{what} heads"), format!("{heads} ({why}; weights do not store it)")));
    Some(heads)
}

fn mae(t: &TensorMap) -> Result<Detected> {
    let mut assumed = Vec::new();
    let (d, c, p) = patch_embed(t, "patch_embed.proj.weight")?;
    let n = shape(t, "pos_embed")?;
    ensure!(n.len() == 3 && n[0] == 1 && n[2] == d, "'pos_embed' has shape {n:?}, not [1, 1 + patches, {d}]");
    let g = grid_side(n[1] - 1, "'pos_embed'")?;
    let depth = count(t, "blocks.");
    let hidden = shape(t, "blocks.0.mlp.fc1.weight")?[0];
    let mut unknown = Vec::new();
    let mut heads = |d, what: &str, assumed: &mut Vec<_>| {
        vit_heads(d, what, assumed).unwrap_or_else(|| {
            unknown.push(format!("{what} heads (width {d})"));
            1
        })
    };
    let num_heads = heads(d, "encoder", &mut assumed);
    let decoder = t.contains_key("decoder_embed.weight");
    let (decoder_embed_dim, decoder_depth, decoder_num_heads) = if decoder {
        let dd = shape(t, "decoder_embed.weight")?[0];
        // The official decoder: 512 wide, 16 heads.
        let h = if dd == 512 { 16 } else { heads(dd, "decoder", &mut assumed) };
        (dd, count(t, "decoder_blocks."), h)
    } else {
        // Never built for an encoder-only file's uses; the official decoder keeps the config valid.
        (512, 8, 16)
    };
    if decoder {
        assumed.push((
            "norm_pix_loss".into(),
            "false (not stored; the official mae_visualize_* checkpoints are trained without it)".into(),
        ));
    }
    let config = MaeConfig {
        img_size: g * p,
        patch_size: p,
        in_chans: c,
        embed_dim: d,
        depth,
        num_heads,
        decoder_embed_dim,
        decoder_depth,
        decoder_num_heads,
        mlp_ratio: hidden as f64 / d as f64,
        norm_pix_loss: false,
        encoder_mask_token: false,
        target: MaeTarget::Pixels,
        layer_norm_eps: LN_EPS,
    };
    let holds = match t.get("head.weight") {
        Some((s, _)) => Holds::VitClassifier { global_pool: t.contains_key("fc_norm.weight"), num_classes: s[0] },
        None => Holds::Mae { decoder },
    };
    Ok(Detected { naming: Naming::Official, holds, config: ModelConfig::Mae(config), assumed, unknown })
}

fn beit(t: &TensorMap) -> Result<Detected> {
    let (d, c, p) = patch_embed(t, "patch_embed.proj.weight")?;
    let shared = t.contains_key("rel_pos_bias.relative_position_bias_table");
    let table =
        if shared { "rel_pos_bias.relative_position_bias_table" } else { "blocks.0.attn.relative_position_bias_table" };
    let (g, num_heads) = match t.get(table) {
        // (2g - 1)^2 offsets + 3 rows for [CLS].
        Some((s, _)) => (grid_side(s[0] - 3, table)?.div_ceil(2), s[1]),
        None => bail!("a BEiT without relative position bias (absolute position embeddings only) is not supported"),
    };
    let vocab_size = t.get("lm_head.weight").map_or(8192, |(s, _)| s[0]);
    let config = BeitConfig {
        img_size: g * p,
        patch_size: p,
        in_chans: c,
        vocab_size,
        embed_dim: d,
        depth: count(t, "blocks."),
        num_heads,
        mlp_ratio: shape(t, "blocks.0.mlp.fc1.weight")?[0] as f64 / d as f64,
        // Only the initial value is not stored; loading overwrites it.
        layer_scale_init_value: if t.contains_key("blocks.0.gamma_1") { 0.1 } else { 0.0 },
        use_abs_pos_emb: t.contains_key("pos_embed"),
        use_rel_pos_bias: !shared,
        use_shared_rel_pos_bias: shared,
        init_std: 0.02,
        layer_norm_eps: LN_EPS,
    };
    let holds = match t.get("head.weight") {
        Some((s, _)) => Holds::BeitClassifier { num_classes: s[0] },
        None => Holds::Beit,
    };
    Ok(Detected {
        naming: Naming::Official,
        holds,
        config: ModelConfig::Beit(config),
        assumed: Vec::new(),
        unknown: Vec::new(),
    })
}

fn swin_config(t: &TensorMap) -> Result<Detected> {
    let (embed_dim, in_chans, patch_size) = patch_embed(t, "patch_embed.proj.weight")?;
    let stages = count(t, "layers.");
    let mut depths = Vec::new();
    let mut num_heads = Vec::new();
    let mut window_size = 0;
    for i in 0..stages {
        depths.push(count(t, &format!("layers.{i}.blocks.")));
        let key = format!("layers.{i}.blocks.0.attn.relative_position_bias_table");
        let s = shape(t, &key)?;
        // (2w - 1)^2 offsets per head; stages smaller than a window have smaller tables.
        window_size = window_size.max(grid_side(s[0], &key)?.div_ceil(2));
        num_heads.push(s[1]);
    }
    let head = t.get("head.fc.weight").or_else(|| t.get("head.weight"));
    let num_classes = head.map_or(0, |(s, _)| s[0]);
    // The last stage's resolution is at least a window in the published models: 224 px for patch 4,
    // window 7, four stages; in general patch * window * 2^(stages - 1).
    let img_size = (patch_size * window_size) << (stages - 1);
    let assumed = vec![(
        "img_size".to_string(),
        format!("{img_size} (not stored: patch {patch_size} x window {window_size} x 2^{})", stages - 1),
    )];
    let config = SwinConfig {
        img_size,
        patch_size,
        in_chans,
        embed_dim,
        depths,
        num_heads,
        window_size,
        mlp_ratio: shape(t, "layers.0.blocks.0.mlp.fc1.weight")?[0] as f64 / embed_dim as f64,
        num_classes,
        drop_path_rate: 0.0,
    };
    // Official Microsoft Swin (and timm < 0.9) merge patches at the end of a stage.
    let naming = if t.keys().any(|k| k.starts_with("layers.0.downsample.")) { Naming::Official } else { Naming::Timm };
    Ok(Detected {
        naming,
        holds: Holds::Swin { num_classes },
        config: ModelConfig::Swin(config),
        assumed,
        unknown: Vec::new(),
    })
}
