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

use anyhow::{Context, Result, bail};
use burn::tensor::Device;

use crate::io::{TensorMap, read_safetensors};
use crate::models::mae::{MaeConfig, MaskedAutoencoder};
use crate::models::pretrain::ModelConfig;
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
        let model = load_mae_tensors(cfg.init(0, device)?, &cfg, &self.tensors, &self.path.display().to_string())?;
        Ok((model, cfg))
    }
}
