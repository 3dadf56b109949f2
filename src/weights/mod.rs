//! Model weights in and out, in the official codes' formats.
//!
//! mim's parameter paths are the official state-dict keys (`blocks.0.attn.qkv.weight`), in burn's
//! layout (linear weights `[in, out]`, the patch embedding as a `[p*p*C, D]` matrix). Each family's
//! file formats live in its own module: [`mae`] (official MAE / timm ViT names, Hugging Face
//! `ViTMAEForPreTraining`), [`beit`] (official microsoft/unilm names) and [`swin`] (timm and official
//! Swin names, the official SimMIM wrapper). The generic file formats they build on are [`crate::io`].
//!
//! [`open`] is the one entry for a file of any of these: it finds the naming, the model and the
//! configuration ([`detect`]), and [`Weights`] builds mim's model from it.

pub mod beit;
pub mod detect;
pub mod mae;
pub mod swin;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use burn::tensor::Device;

use crate::io::{TensorMap, load_tensor_map, parameters, pytorch_to_burn_layout, read_safetensors};
use crate::models::classifier::{Pool, VitClassifier};
use crate::models::mae::{MaeConfig, MaskedAutoencoder};
use crate::models::pretrain::ModelConfig;
use crate::models::swin::SwinTransformer;
pub use beit::{beit_from_official, load_beit_weights};
pub use detect::{Detected, Holds, Naming};
pub use mae::{
    export_weights, from_pytorch_layout, hf_to_official, load_mae_tensors, load_weights, mae_config_from_hf,
    to_pytorch_layout,
};

/// The safetensors metadata key under which mim writes a file's model configuration (the tagged
/// JSON of [`ModelConfig`]).
pub const CONFIG_KEY: &str = "mim.config";

/// A weights file read by [`open`]: what it holds and its tensors in the family's canonical names.
#[derive(Debug)]
pub struct Weights {
    /// The file.
    pub path: PathBuf,
    /// Naming, model, configuration and what was assumed.
    pub detected: Detected,
    /// Where the configuration came from.
    pub config_source: String,
    /// The tensors in canonical names (see [`detect::detect`]), PyTorch layout.
    pub tensors: TensorMap,
}

/// Reads a weights file and finds what it holds. A Hugging Face file takes its architecture from
/// the `config.json` beside it when there is one.
pub fn open(path: &Path) -> Result<Weights> {
    let (mut detected, tensors) =
        detect::detect(read_safetensors(path)?).with_context(|| format!("reading '{}'", path.display()))?;
    let mut config_source = "the tensor shapes".to_string();
    if let Some(json) = safetensors_metadata(path)?.get(CONFIG_KEY) {
        let config: ModelConfig = serde_json::from_str(json)
            .with_context(|| format!("'{}': the {CONFIG_KEY} metadata is not a model configuration", path.display()))?;
        detected.config = config;
        detected.assumed.clear();
        detected.unknown.clear();
        config_source = "the file's metadata".to_string();
    }
    let config_json = path.with_file_name("config.json");
    if detected.naming == Naming::HuggingFace && config_json.exists() {
        let text = std::fs::read_to_string(&config_json)
            .with_context(|| format!("cannot read '{}'", config_json.display()))?;
        let json = serde_json::from_str(&text).with_context(|| format!("'{}' is not JSON", config_json.display()))?;
        let cfg = mae_config_from_hf(&json).with_context(|| format!("in '{}'", config_json.display()))?;
        detected.config = ModelConfig::Mae(cfg);
        detected.assumed.clear();
        detected.unknown.clear();
        config_source = format!("'{}'", config_json.display());
    }
    Ok(Weights { path: path.to_path_buf(), detected, config_source, tensors })
}

/// The `__metadata__` of a safetensors file's header (empty when it has none or is not safetensors).
fn safetensors_metadata(path: &Path) -> Result<std::collections::BTreeMap<String, String>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot read '{}'", path.display()))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)?;
    let mut header = vec![0u8; u64::from_le_bytes(len).min(100_000_000) as usize];
    f.read_exact(&mut header)?;
    let header: serde_json::Value = serde_json::from_slice(&header).unwrap_or_default();
    Ok(serde_json::from_value(header["__metadata__"].clone()).unwrap_or_default())
}

/// An MAE held in memory (a mim checkpoint's) as [`Weights`] in official names.
pub fn from_mae(model: &MaskedAutoencoder, cfg: &MaeConfig, source: &Path) -> Weights {
    Weights {
        path: source.to_path_buf(),
        detected: Detected {
            naming: Naming::Official,
            holds: Holds::Mae { decoder: true },
            config: ModelConfig::Mae(cfg.clone()),
            assumed: Vec::new(),
            unknown: Vec::new(),
        },
        config_source: "the mim checkpoint".into(),
        tensors: to_pytorch_layout(cfg, &parameters(model)),
    }
}

/// Writes `w` to `out` as safetensors in `to`'s names, with the configuration in the metadata; for
/// Hugging Face names also `config.json` beside `out` (refused if a different one is there). Returns
/// the files written.
pub fn convert(w: &Weights, to: Naming, out: &Path) -> Result<Vec<PathBuf>> {
    w.ensure_known()?;
    let ModelConfig::Mae(cfg) = &w.detected.config else {
        bail!(
            "mim convert writes MAE files so far; '{}' holds a {} (mim loads it directly: see mim inspect)",
            w.path.display(),
            w.detected.holds
        );
    };
    if let Some(ext) = out.extension().and_then(|e| e.to_str()).filter(|e| matches!(*e, "pth" | "pt" | "bin")) {
        bail!(
            "mim writes safetensors, not .{ext}: name the output .safetensors (PyTorch reads it with \
             safetensors.torch.load_file; the official code's torch.load(path)['model'] takes that dict)"
        );
    }
    let mut written = Vec::new();
    let tensors = match to {
        Naming::Official | Naming::Timm => w.tensors.clone(),
        Naming::HuggingFace => {
            ensure!(
                w.detected.holds == (Holds::Mae { decoder: true }),
                "a Hugging Face ViTMAEForPreTraining needs the decoder, and '{}' holds a {}",
                w.path.display(),
                w.detected.holds
            );
            let json = serde_json::to_string_pretty(&mae::hf_config(cfg)?)? + "\n";
            let path = out.with_file_name("config.json");
            if let Ok(existing) = std::fs::read_to_string(&path) {
                ensure!(
                    existing == json,
                    "'{}' exists with another configuration: write the Hugging Face files into their own folder",
                    path.display()
                );
            }
            crate::io::write_atomic(&path, &[json.as_bytes()])?;
            written.push(path);
            mae::official_to_hf(&w.tensors)?
        }
    };
    let metadata = std::collections::BTreeMap::from([
        ("format".to_string(), "pt".to_string()),
        (CONFIG_KEY.to_string(), serde_json::to_string(&w.detected.config)?),
    ]);
    crate::io::write_atomic(out, &[&crate::io::safetensors_bytes_with_metadata(&tensors, &metadata)?])?;
    written.insert(0, out.to_path_buf());
    Ok(written)
}

impl Weights {
    /// Replaces the configuration the file implies by `config` (a preset or a config file), which
    /// must be of the same family; loading then checks every shape.
    pub fn with_config(mut self, config: ModelConfig, source: String) -> Result<Self> {
        if config.kind() != self.detected.config.kind() {
            bail!(
                "'{}' holds a {} model; the configuration given ({source}) is for {}",
                self.path.display(),
                self.detected.config.kind(),
                config.kind()
            );
        }
        self.detected.config = config;
        self.detected.assumed.clear();
        self.detected.unknown.clear();
        self.config_source = source;
        Ok(self)
    }

    /// Refuses to build a model from a configuration with parts the file could not tell.
    fn ensure_known(&self) -> Result<()> {
        let unknown = &self.detected.unknown;
        if !unknown.is_empty() {
            bail!(
                "'{}' does not say its {}: give the configuration (--model PRESET, or --hf-config config.json)",
                self.path.display(),
                unknown.join(", ")
            );
        }
        Ok(())
    }

    /// Parameters in the file (q, k and v counted once each, however they are stored).
    pub fn parameter_count(&self) -> usize {
        self.tensors.values().map(|(s, _)| s.iter().product::<usize>()).sum()
    }

    /// The MAE with its decoder, for reconstruction and further pretraining.
    pub fn mae(&self, device: &Device) -> Result<(MaskedAutoencoder, MaeConfig)> {
        self.ensure_known()?;
        let cfg = match (&self.detected.holds, &self.detected.config) {
            (Holds::Mae { decoder: true }, ModelConfig::Mae(cfg)) => cfg.clone(),
            (Holds::Mae { decoder: false }, _) => bail!(
                "'{}' holds only the MAE encoder (like the official mae_pretrain_vit_*.pth): reconstruction needs \
                 the decoder too, as in mae_visualize_vit_*.pth or a Hugging Face ViTMAEForPreTraining",
                self.path.display()
            ),
            (holds, _) => bail!("'{}' holds a {holds}, not an MAE", self.path.display()),
        };
        let model = load_mae_tensors(cfg.init(0, device)?, &cfg, &self.tensors, &self.source())?;
        Ok((model, cfg))
    }

    /// The MAE encoder of a file with or without the decoder (the official `mae_pretrain_vit_*.pth`,
    /// timm's `vit_*.mae`): what fine-tuning, linear probing and k-NN start from. A missing decoder
    /// is freshly initialised from `seed`; it is never used by these.
    pub fn mae_encoder(&self, seed: u64, device: &Device) -> Result<(MaskedAutoencoder, MaeConfig)> {
        self.ensure_known()?;
        let ModelConfig::Mae(cfg) = &self.detected.config else { bail!("'{}' holds no MAE", self.path.display()) };
        let cfg = cfg.clone();
        let fresh = cfg.init(seed, device)?;
        if matches!(self.detected.holds, Holds::Mae { decoder: true }) {
            return Ok((load_mae_tensors(fresh, &cfg, &self.tensors, &self.source())?, cfg));
        }
        ensure!(
            matches!(self.detected.holds, Holds::Mae { .. } | Holds::VitClassifier { .. }),
            "'{}' holds a {}, not a ViT encoder",
            self.path.display(),
            self.detected.holds
        );
        // The encoder's tensors from the file, everything else (decoder, mask token) as initialised.
        let encoder = |k: &str| {
            matches!(k, "cls_token" | "pos_embed")
                || ["patch_embed.", "blocks.", "norm."].iter().any(|p| k.starts_with(p))
        };
        let mut map: TensorMap =
            to_pytorch_layout(&cfg, &parameters(&fresh)).into_iter().filter(|(k, _)| !encoder(k)).collect();
        let classifier = matches!(self.detected.holds, Holds::VitClassifier { .. });
        for (k, t) in &self.tensors {
            match k.as_str() {
                // A fine-tuned model's head and pooling norm have no place in an MAE.
                k if classifier && (k.starts_with("head.") || k.starts_with("fc_norm.")) => {}
                k => {
                    map.insert(k.to_string(), t.clone());
                }
            }
        }
        Ok((load_mae_tensors(fresh, &cfg, &map, &self.source())?, cfg))
    }

    /// The fine-tuned ViT classifier of a file (MAE's `main_finetune.py`, timm's ViT with a head).
    pub fn vit_classifier(&self, device: &Device) -> Result<VitClassifier> {
        self.ensure_known()?;
        let (Holds::VitClassifier { global_pool, num_classes }, ModelConfig::Mae(cfg)) =
            (self.detected.holds, &self.detected.config)
        else {
            bail!("'{}' holds a {}, not a ViT classifier", self.path.display(), self.detected.holds);
        };
        let pool = if global_pool { Pool::Avg } else { Pool::Cls };
        let model = VitClassifier::from_scratch(cfg, num_classes, pool, 0, device)?;
        // mim calls the norm after the blocks `norm` whichever the pooling: models_vit's `fc_norm`
        // (after average pooling; the encoder's own `norm` is then absent).
        let map: TensorMap =
            self.tensors.iter().map(|(k, t)| (k.replacen("fc_norm.", "norm.", 1), t.clone())).collect();
        load_tensor_map(model, &pytorch_to_burn_layout(&map)?, &self.source())
    }

    /// The Swin Transformer of a file (timm or official names; with its head when it has one).
    pub fn swin(&self, device: &Device) -> Result<SwinTransformer> {
        let (Holds::Swin { .. }, ModelConfig::Swin(cfg)) = (self.detected.holds, &self.detected.config) else {
            bail!("'{}' holds a {}, not a Swin Transformer", self.path.display(), self.detected.holds);
        };
        load_tensor_map(cfg.init(0, device)?, &swin::timm_to_burn(&self.tensors)?, &self.source())
    }

    fn source(&self) -> String {
        self.path.display().to_string()
    }
}
