//! Model weights in and out, in the official codes' formats.
//!
//! mim's parameter paths are the official state-dict keys (`blocks.0.attn.qkv.weight`), in burn's
//! layout (linear weights `[in, out]`, the patch embedding as a `[p*p*C, D]` matrix). Each family's
//! names live in its own module: [`mae`] (official MAE / timm ViT names, Hugging Face
//! `ViTMAEForPreTraining`), [`beit`] (official microsoft/unilm names, Hugging Face BEiT) and [`swin`]
//! (timm and official Swin names, the official SimMIM wrapper, Hugging Face Swin and SimMIM); each
//! Hugging Face naming is one table of name patterns read and written both ways. The generic file
//! formats they build on are [`crate::io`].
//!
//! [`open`] is the one entry for a file of any of these, and for mim's own pretraining checkpoints:
//! it finds the naming, the model and the configuration ([`detect`]), and [`Weights`] builds mim's
//! model from it; [`convert`] writes it in another code's names.

pub mod beit;
pub mod detect;
mod hf;
pub mod mae;
mod names;
pub mod resize;
pub mod swin;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use burn::tensor::Device;

use crate::io::{
    Precision, TensorFormat, TensorMap, load_tensor_map, parameters, pytorch_to_burn_layout, read_tensor_file,
};
use crate::models::beit::BeitForMaskedImageModeling;
use crate::models::classifier::{BeitClassifier, Pool, VitClassifier, swin_from_scratch, swin_from_simmim};
use crate::models::mae::{MaeConfig, MaskedAutoencoder};
use crate::models::pretrain::{MimModel, ModelConfig};
use crate::models::simmim::SimMim;
use crate::models::swin::{SwinConfig, SwinTransformer};
pub use beit::{beit_from_official, load_beit_weights};
pub use detect::{Detected, Holds, Naming};
pub use mae::{
    export_weights, from_pytorch_layout, hf_to_official, load_mae_tensors, load_weights, mae_config_from_hf,
    to_pytorch_layout,
};

/// The safetensors metadata key under which mim writes a file's model configuration (the tagged
/// JSON of [`ModelConfig`]).
pub const CONFIG_KEY: &str = "mim.config";

/// The safetensors metadata key under which `mim export` writes the pretraining the weights come
/// from (the JSON of [`crate::results::Pretraining`]), so that results recorded from the exported
/// file still name it.
pub const PRETRAINING_KEY: &str = "mim.pretraining";

/// How a weights file was stored (see [`crate::io::TensorFile`]).
#[derive(Debug, Clone)]
pub struct FileInfo {
    /// safetensors or a `torch.save` format; `None` for a mim checkpoint's model.
    pub format: Option<TensorFormat>,
    /// The checkpoint entry the weights were under (`model` in the official training checkpoints).
    pub nested: Option<String>,
    /// The checkpoint's other entries (`optimizer`, `epoch`, `args`, ...), which mim does not use.
    pub ignored: Vec<String>,
}

/// The safetensors metadata key under which mim writes the input normalisation the weights expect.
pub const NORMALIZATION_KEY: &str = "mim.normalization";

/// The per-channel normalisation `(x - mean) / std` of pixels in [0, 1] that weights were trained with.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Normalization {
    /// Per-channel mean.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation.
    pub std: Vec<f32>,
}

impl Normalization {
    /// ImageNet's statistics, which the official MAE, Swin and SimMIM recipes use.
    pub fn imagenet() -> Self {
        Normalization { mean: vec![0.485, 0.456, 0.406], std: vec![0.229, 0.224, 0.225] }
    }

    /// 0.5 / 0.5 per channel: BEiT's pretraining default (`run_beit_pretraining.py` without
    /// `--imagenet_default_mean_and_std`) and Hugging Face's `BeitImageProcessor`.
    pub fn half() -> Self {
        Normalization { mean: vec![0.5; 3], std: vec![0.5; 3] }
    }
}

/// A weights file read by [`open`]: what it holds and its tensors in the family's canonical names.
#[derive(Debug)]
pub struct Weights {
    /// The file.
    pub path: PathBuf,
    /// Naming, model, configuration and what was assumed.
    pub detected: Detected,
    /// Where the configuration came from.
    pub config_source: String,
    /// How the file stores its tensors (safetensors, a torch.save zip or legacy pickle), where in a
    /// checkpoint they were, and what else the checkpoint held.
    pub file: FileInfo,
    /// The tensors in canonical names (see [`detect::detect`]), PyTorch layout.
    pub tensors: TensorMap,
    /// The input normalisation stored with the weights (mim writes it; other codes do not).
    pub normalization: Option<Normalization>,
    /// The pretraining the weights come from, as the JSON [`PRETRAINING_KEY`] holds: read from a
    /// file that has it, written back by [`convert`]. A mim checkpoint's is set by the caller
    /// (`mim export` and `mim convert` use `mim::results::Pretraining::of_checkpoint`).
    pub pretraining: Option<String>,
}

/// Reads a weights file and finds what it holds: safetensors or a PyTorch file in any naming
/// [`detect`] knows, or a mim pretraining checkpoint ([`from_checkpoint`]). A Hugging Face file
/// takes its architecture from the `config.json` beside it when there is one.
pub fn open(path: &Path) -> Result<Weights> {
    if crate::checkpoint::read_header(path).is_ok() {
        return from_checkpoint(path);
    }
    let read = read_tensor_file(path)?;
    let file = FileInfo { format: Some(read.format), nested: read.nested, ignored: read.ignored };
    let (detected, tensors) = detect::detect(read.tensors).with_context(|| format!("reading '{}'", path.display()))?;
    let normalization = match read.metadata.get(NORMALIZATION_KEY) {
        Some(json) => Some(serde_json::from_str(json).with_context(|| {
            format!("'{}': the {NORMALIZATION_KEY} metadata is not {{\"mean\": [..], \"std\": [..]}}", path.display())
        })?),
        None => None,
    };
    let mut w = Weights {
        path: path.to_path_buf(),
        detected,
        config_source: "the tensor shapes".into(),
        file,
        tensors,
        normalization,
        pretraining: read.metadata.get(PRETRAINING_KEY).cloned(),
    };
    if let Some(json) = read.metadata.get(CONFIG_KEY) {
        let config: ModelConfig = serde_json::from_str(json)
            .with_context(|| format!("'{}': the {CONFIG_KEY} metadata is not a model configuration", path.display()))?;
        w.set_config(config, "the file's metadata".into())?;
    }
    let config_json = path.with_file_name("config.json");
    if w.detected.naming == Naming::HuggingFace && config_json.exists() {
        let text = std::fs::read_to_string(&config_json)
            .with_context(|| format!("cannot read '{}'", config_json.display()))?;
        let json = serde_json::from_str(&text).with_context(|| format!("'{}' is not JSON", config_json.display()))?;
        let within = || format!("in '{}'", config_json.display());
        let config = match (&w.detected.config, w.detected.holds) {
            (ModelConfig::Beit(_), _) => ModelConfig::Beit(beit::beit_config_from_hf(&json).with_context(within)?),
            (ModelConfig::Swin(_), holds) => {
                let classes = if let Holds::Swin { num_classes } = holds { num_classes } else { 0 };
                ModelConfig::Swin(swin::swin_config_from_hf(&json, classes).with_context(within)?)
            }
            (ModelConfig::Mae(_), _) => ModelConfig::Mae(mae_config_from_hf(&json).with_context(within)?),
        };
        w.set_config(config, format!("'{}'", config_json.display()))?;
    }
    Ok(w)
}

/// The model of a mim pretraining checkpoint (MAE, BEiT or SimMIM) as [`Weights`] in canonical
/// names, with the normalisation of the dataset it was trained on when that dataset still opens.
pub fn from_checkpoint(path: &Path) -> Result<Weights> {
    let device = Device::flex();
    let header = crate::checkpoint::read_header(path)?;
    let data = header.train.get("run").and_then(|r| r.get("data")).and_then(|d| d.as_str());
    let normalization = data
        .and_then(|d| crate::data::Dataset::open(Path::new(d), crate::data::Split::Train).ok())
        .map(|d| Normalization { mean: d.mean, std: d.std });
    let (tensors, holds) = match &header.model {
        ModelConfig::Mae(cfg) => {
            let model = crate::checkpoint::load(path, &device)?.model;
            return Ok(from_mae(&model, cfg, normalization, path));
        }
        ModelConfig::Beit(cfg) => {
            let model = crate::checkpoint::load_model(path, &device, BeitForMaskedImageModeling::build)?.model;
            (beit::official_from_burn(cfg, &parameters(&model))?, Holds::Beit)
        }
        ModelConfig::Swin(cfg) => {
            let model = crate::checkpoint::load_model(path, &device, SimMim::build)?.model;
            (swin::simmim_from_burn(cfg, &parameters(&model)), Holds::SimMim)
        }
    };
    Ok(Weights {
        path: path.to_path_buf(),
        detected: Detected {
            naming: Naming::Official,
            holds,
            config: header.model,
            assumed: Vec::new(),
            unknown: Vec::new(),
        },
        config_source: "the mim checkpoint".into(),
        file: FileInfo { format: None, nested: None, ignored: Vec::new() },
        tensors,
        normalization,
        pretraining: None,
    })
}

/// An MAE held in memory (a mim checkpoint's) as [`Weights`] in official names, with the input
/// normalisation it was trained with when known.
pub fn from_mae(
    model: &MaskedAutoencoder,
    cfg: &MaeConfig,
    normalization: Option<Normalization>,
    source: &Path,
) -> Weights {
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
        file: FileInfo { format: None, nested: None, ignored: Vec::new() },
        tensors: to_pytorch_layout(cfg, &parameters(model)),
        normalization,
        pretraining: None,
    }
}

/// What [`convert`] wrote.
#[derive(Debug, Clone)]
pub struct Converted {
    /// The weights file, then `config.json` for Hugging Face names.
    pub written: Vec<PathBuf>,
    /// What the target naming has no place for and was left out, each with the reason.
    pub left_out: Vec<String>,
}

/// Writes `w` to `out` as safetensors in `to`'s names, with the configuration (and the input
/// normalisation when known) in the metadata; for Hugging Face names also `config.json` beside
/// `out` (refused if a different one is there), so that `from_pretrained` on the folder works.
///
/// - MAE / ViT and BEiT: official and timm names are the same; Hugging Face's are
///   `ViTMAEForPreTraining` (or `ViTMAEModel` for an encoder alone), `BeitForMaskedImageModeling`,
///   `BeitForImageClassification`. A fine-tuned ViT has no Hugging Face name here.
/// - Swin: timm 1.0's layout, the official Microsoft one (patch merging at the end of a stage), or
///   Hugging Face's `SwinModel` / `SwinForImageClassification`.
/// - SimMIM: the official names, Hugging Face's `SwinForMaskedImageModeling`, or (`timm`, which has no
///   SimMIM) its Swin encoder alone, without the mask token and decoder.
///
/// Derived buffers (relative position indices, attention masks) are not written: every code named
/// rebuilds them (the official loaders drop them from checkpoints).
pub fn convert(w: &Weights, to: Naming, out: &Path, precision: Precision) -> Result<Converted> {
    w.ensure_known()?;
    if let Some(ext) = out.extension().and_then(|e| e.to_str()).filter(|e| matches!(*e, "pth" | "pt" | "bin")) {
        bail!(
            "mim writes safetensors, not .{ext}: name the output .safetensors (PyTorch reads it with \
             safetensors.torch.load_file; the official code's torch.load(path)['model'] takes that dict)"
        );
    }
    crate::io::check_output(out, "safetensors", &[&w.path])?;
    let mut left_out = Vec::new();
    let mut config = w.detected.config.clone();
    let buffer = |k: &str| k.ends_with("relative_position_index") || k.ends_with("attn_mask");
    let mut canonical = w.tensors.clone();
    canonical.retain(|k, _| !buffer(k));
    let refuse = |what: &str| -> Result<TensorMap> {
        bail!("'{}' holds a {}, which has no {what} equivalent", w.path.display(), w.detected.holds)
    };
    let (tensors, hf_json) = match (to, &w.detected.config, w.detected.holds) {
        (Naming::Official | Naming::Timm, ModelConfig::Mae(_) | ModelConfig::Beit(_), _) => (canonical, None),
        (Naming::HuggingFace, ModelConfig::Mae(cfg), Holds::Mae { decoder }) => {
            let mut json = mae::hf_config(cfg)?;
            let mut hf = mae::official_to_hf(&canonical)?;
            if !decoder {
                // `ViTMAEModel`, the encoder alone, saves its names without `vit.`.
                hf = hf.into_iter().map(|(k, t)| (k.strip_prefix("vit.").unwrap_or(&k).to_string(), t)).collect();
                json["architectures"] = serde_json::json!(["ViTMAEModel"]);
            }
            (hf, Some(json))
        }
        (Naming::HuggingFace, ModelConfig::Mae(_), _) => {
            (refuse("Hugging Face name that mim reads back (ViTForImageClassification)")?, None)
        }
        (Naming::HuggingFace, ModelConfig::Beit(cfg), holds) => {
            let classes = if let Holds::BeitClassifier { num_classes } = holds { Some(num_classes) } else { None };
            (beit::official_to_hf(&canonical)?, Some(beit::hf_config(cfg, classes)))
        }
        (Naming::Timm, ModelConfig::Swin(cfg), holds) => {
            if holds == Holds::SimMim {
                left_out.push("the mask token and the decoder (timm's Swin is the encoder alone)".to_string());
                config = ModelConfig::Swin(SwinConfig { num_classes: 0, ..cfg.clone() });
                canonical = canonical
                    .into_iter()
                    .filter_map(|(k, t)| Some((k.strip_prefix("encoder.")?.to_string(), t)))
                    .filter(|(k, _)| k != "mask_token")
                    .collect();
            }
            (canonical, None)
        }
        (Naming::Official, ModelConfig::Swin(_), _) => (swin::timm_to_official_layout(&canonical)?, None),
        (Naming::HuggingFace, ModelConfig::Swin(cfg), holds) => {
            (swin::canonical_to_hf(&canonical)?, Some(swin::hf_config(cfg, holds == Holds::SimMim)))
        }
    };
    let mut written = vec![out.to_path_buf()];
    if let Some(json) = hf_json {
        let json = serde_json::to_string_pretty(&json)? + "\n";
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
    }
    let mut metadata = std::collections::BTreeMap::from([
        ("format".to_string(), "pt".to_string()),
        (CONFIG_KEY.to_string(), serde_json::to_string(&config)?),
    ]);
    if let Some(n) = &w.normalization {
        metadata.insert(NORMALIZATION_KEY.to_string(), serde_json::to_string(n)?);
    }
    if let Some(json) = &w.pretraining {
        metadata.insert(PRETRAINING_KEY.to_string(), json.clone());
    }
    crate::io::write_atomic(out, &[&crate::io::safetensors_bytes_with_metadata(&tensors, &metadata, precision)?])?;
    Ok(Converted { written, left_out })
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
        self.set_config(config, source)?;
        Ok(self)
    }

    /// The same weights for `side`-pixel images (the official fine-tuning codes' `--input_size`):
    /// the position parameters are resized to the new patch grid (see
    /// [`Self::fit_position_parameters`]); what the file could not say stays listed as assumed.
    pub fn at_image_size(mut self, side: usize) -> Result<Self> {
        if side == self.detected.config.img_size() {
            return Ok(self);
        }
        match &mut self.detected.config {
            ModelConfig::Mae(c) => c.img_size = side,
            ModelConfig::Beit(c) => c.img_size = side,
            ModelConfig::Swin(c) => c.img_size = side,
        }
        self.detected.config.validate().with_context(|| format!("'{}' at {side} px", self.path.display()))?;
        self.detected.assumed.retain(|(what, _)| what != "img_size");
        self.fit_position_parameters()?;
        Ok(self)
    }

    /// Takes `config` (from `source`) as the architecture: nothing left assumed, the position
    /// parameters fitted to its patch grid.
    fn set_config(&mut self, config: ModelConfig, source: String) -> Result<()> {
        self.detected.config = config;
        self.detected.assumed.clear();
        self.detected.unknown.clear();
        self.config_source = source;
        self.fit_position_parameters()
    }

    /// Resizes the position parameters to the configuration's patch grid when the file's are for
    /// another image size, as the official fine-tuning codes do: MAE's (and BEiT's absolute)
    /// position embeddings by `interpolate_pos_embed` (bicubic), BEiT's relative position tables by
    /// unilm's geometric spline, Swin's window tables (when a stage's window changes: a stage smaller
    /// than a window attends over the whole stage) bicubically as microsoft/Swin-Transformer's
    /// `load_pretrained`; the index and mask buffers dropped (mim rebuilds them).
    fn fit_position_parameters(&mut self) -> Result<()> {
        let g = self.detected.config.grid();
        let t = &mut self.tensors;
        for key in ["pos_embed", "decoder_pos_embed"] {
            if let Some(p) = t.get(key)
                && p.0.len() == 3
                && p.0[1] != g * g + 1
            {
                let resized = resize::interpolate_pos_embed(p, 1, (g, g))?;
                t.insert(key.to_string(), resized);
            }
        }
        if let ModelConfig::Beit(_) = self.detected.config {
            let tables: Vec<String> =
                t.keys().filter(|k| k.ends_with("relative_position_bias_table")).cloned().collect();
            let want = (2 * g - 1) * (2 * g - 1) + 3;
            let mut resized_any = false;
            for key in tables {
                if t[&key].0[0] != want {
                    let resized = resize::resize_rel_pos_bias_table(&t[&key], 3, (g, g), resize::RelPosResize::Spline)?;
                    t.insert(key, resized);
                    resized_any = true;
                }
            }
            // The index buffers are for the old grid; loading rebuilds them for the new one.
            if resized_any {
                t.retain(|k, _| !k.ends_with("relative_position_index"));
            }
        }
        if let ModelConfig::Swin(cfg) = &self.detected.config {
            for i in 0..cfg.num_stages() {
                let w = cfg.stage_window(i);
                let want = (2 * w - 1) * (2 * w - 1);
                let stage = format!("layers.{i}.");
                let tables: Vec<String> = t
                    .keys()
                    .filter(|k| k.trim_start_matches("encoder.").starts_with(&stage))
                    .filter(|k| k.ends_with("relative_position_bias_table") && t[*k].0[0] != want)
                    .cloned()
                    .collect();
                for key in tables {
                    let resized =
                        resize::resize_rel_pos_bias_table(&t[&key], 0, (w, w), resize::RelPosResize::Bicubic)?;
                    t.insert(key, resized);
                }
            }
            // Windows and shifts changed with the resolution: mim rebuilds the index and mask buffers.
            t.retain(|k, _| !(k.ends_with("relative_position_index") || k.ends_with("attn_mask")));
        }
        Ok(())
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

    /// The input normalisation these weights expect, and where it comes from: the file's own (mim
    /// writes it), else the official recipe's of the family (ImageNet's for MAE, Swin and SimMIM;
    /// 0.5 / 0.5 for BEiT).
    pub fn input_normalization(&self) -> Result<(Normalization, String)> {
        if let Some(n) = &self.normalization {
            return Ok((n.clone(), "stored with the weights".into()));
        }
        let channels = self.detected.config.in_chans();
        ensure!(
            channels == 3,
            "'{}' does not say how its {channels}-channel inputs were normalised (published recipes are for RGB)",
            self.path.display()
        );
        Ok(match self.detected.config {
            ModelConfig::Beit(_) => (Normalization::half(), "BEiT's default, mean 0.5 and std 0.5".into()),
            _ => (Normalization::imagenet(), "ImageNet's, as the official recipes".into()),
        })
    }

    /// Parameters in the file (q, k and v counted once each, however they are stored; derived
    /// buffers such as relative position indices and attention masks not counted).
    pub fn parameter_count(&self) -> usize {
        let buffer = |k: &str| k.ends_with("relative_position_index") || k.ends_with("attn_mask");
        self.tensors.iter().filter(|(k, _)| !buffer(k)).map(|(_, (s, _))| s.iter().product::<usize>()).sum()
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
        ensure!(
            matches!(self.detected.holds, Holds::Mae { .. } | Holds::VitClassifier { .. }),
            "'{}' holds a {}, not a ViT encoder",
            self.path.display(),
            self.detected.holds
        );
        // The file's tensors; what it lacks (an encoder-only file's decoder and mask token, the final
        // norm a global-pool classifier does not have) as initialised.
        let mut map = to_pytorch_layout(&cfg, &parameters(&fresh));
        let classifier = matches!(self.detected.holds, Holds::VitClassifier { .. });
        for (k, t) in &self.tensors {
            // A fine-tuned model's head and pooling norm have no place in an MAE.
            if !(classifier && (k.starts_with("head.") || k.starts_with("fc_norm."))) {
                map.insert(k.clone(), t.clone());
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

    /// The Swin encoder of a Swin backbone, Swin classifier or SimMIM file under a fresh head of
    /// `num_classes` outputs, with stochastic depth `drop_path`: what fine-tuning starts from.
    pub fn swin_encoder(
        &self,
        num_classes: usize,
        drop_path: f64,
        seed: u64,
        device: &Device,
    ) -> Result<SwinTransformer> {
        let ModelConfig::Swin(cfg) = &self.detected.config else {
            bail!("'{}' holds a {}, not a Swin", self.path.display(), self.detected.holds);
        };
        if self.detected.holds == Holds::SimMim {
            return swin_from_simmim(self.simmim(device)?, cfg, num_classes, drop_path, seed);
        }
        let fresh = swin_from_scratch(cfg, num_classes, drop_path, seed, device)?;
        let mut map = parameters(&fresh);
        map.extend(swin::timm_to_burn(&self.tensors)?.into_iter().filter(|(k, _)| !k.starts_with("head.")));
        load_tensor_map(fresh, &map, &self.source())
    }

    /// The BEiT for masked image modeling of a file (official names, or Hugging Face's converted).
    pub fn beit(&self, device: &Device) -> Result<BeitForMaskedImageModeling> {
        let (Holds::Beit, ModelConfig::Beit(cfg)) = (self.detected.holds, &self.detected.config) else {
            bail!("'{}' holds a {}, not a BEiT for masked image modeling", self.path.display(), self.detected.holds);
        };
        load_tensor_map(cfg.init(0, device)?, &beit::beit_from_official(cfg, &self.tensors)?, &self.source())
    }

    /// The BEiT encoder of a file, for fine-tuning: from a pretraining file, or a fine-tuned
    /// classifier's encoder (whose missing `mask_token`, final `norm` and `lm_head`, unused by
    /// fine-tuning, are initialised from `seed`).
    pub fn beit_encoder(&self, seed: u64, device: &Device) -> Result<BeitForMaskedImageModeling> {
        let ModelConfig::Beit(cfg) = &self.detected.config else {
            bail!("'{}' holds a {}, not a BEiT", self.path.display(), self.detected.holds);
        };
        let fresh = cfg.init(seed, device)?;
        let mut map = parameters(&fresh);
        let from_file = beit::beit_from_official(cfg, &self.tensors)?;
        for (k, t) in from_file {
            if !(k.starts_with("head.") || k.starts_with("fc_norm.")) {
                map.insert(k, t);
            }
        }
        load_tensor_map(fresh, &map, &self.source())
    }

    /// The fine-tuned BEiT classifier of a file (unilm's `run_class_finetuning.py`: mean pooling,
    /// `fc_norm`, `head`).
    pub fn beit_classifier(&self, device: &Device) -> Result<BeitClassifier> {
        let Holds::BeitClassifier { num_classes } = self.detected.holds else {
            bail!("'{}' holds a {}, not a BEiT classifier", self.path.display(), self.detected.holds);
        };
        let model = BeitClassifier::new(self.beit_encoder(0, device)?, num_classes, 0.0, 0);
        let mut map = parameters(&model);
        let head: TensorMap = self
            .tensors
            .iter()
            .filter(|(k, _)| k.starts_with("head.") || k.starts_with("fc_norm."))
            .map(|(k, t)| (k.clone(), t.clone()))
            .collect();
        map.extend(pytorch_to_burn_layout(&head)?);
        load_tensor_map(model, &map, &self.source())
    }

    /// The SimMIM model (Swin encoder, mask token, one-layer decoder) of a file in the official
    /// SimMIM names.
    pub fn simmim(&self, device: &Device) -> Result<SimMim> {
        let (Holds::SimMim, ModelConfig::Swin(cfg)) = (self.detected.holds, &self.detected.config) else {
            bail!("'{}' holds a {}, not SimMIM", self.path.display(), self.detected.holds);
        };
        load_tensor_map(SimMim::new(cfg, 0, device)?, &swin::simmim_to_burn(&self.tensors)?, &self.source())
    }

    fn source(&self) -> String {
        self.path.display().to_string()
    }
}
