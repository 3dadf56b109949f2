//! Parity of this build's models with the committed PyTorch fixtures (`tests/fixtures`), on any
//! device (`mim check`): the forward value and every parameter gradient of MAE (Hugging Face
//! `ViTMAEForPreTraining`), BEiT (microsoft/unilm), the Swin classifier (timm) and SimMIM (the
//! official repository) on fixed weights and inputs. It is what a GPU machine runs with a prebuilt
//! binary and no Rust toolchain; the test suite runs it on the CPU through the fused kernels and
//! through burn's generic ops. tests/parity_*.rs check more (intermediate values, q/k/v parts).

use std::fmt;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::eval::host;
use crate::io::{TensorMap, gradients, read_safetensors};
use crate::masking::{BoolMask, Mask};
use crate::models::beit::{BeitConfig, BeitForMaskedImageModeling};
use crate::models::simmim::SimMim;
use crate::models::swin::SwinConfig;
use crate::weights::swin::{load_simmim, load_timm, simmim_to_burn, timm_to_burn};
use crate::weights::{
    beit_from_official, from_pytorch_layout, hf_to_official, load_beit_weights, load_weights, mae_config_from_hf,
};

/// Largest tolerated absolute difference of values and gradients (O(1) values; PyTorch and burn
/// sum in different orders).
pub const TOLERANCE: f32 = 1e-4;
/// Largest tolerated gradient difference relative to the tensor's largest entry.
pub const RELATIVE_TOLERANCE: f32 = 1e-3;

/// One model's comparison with its fixture.
#[derive(Debug, Clone, PartialEq)]
pub struct Parity {
    /// The model and its reference implementation.
    pub model: &'static str,
    /// Largest |ours - reference| of the checked forward value (loss or logits).
    pub forward: f32,
    /// Parameters whose gradients were compared.
    pub gradients: usize,
    /// Largest |ours - reference| over every gradient entry, and the parameter.
    pub gradient_abs: (f32, String),
    /// Largest per-parameter max |ours - reference| / max |reference|, and the parameter.
    pub gradient_rel: (f32, String),
}

impl Parity {
    /// Whether every difference is within [`TOLERANCE`] / [`RELATIVE_TOLERANCE`].
    pub fn passed(&self) -> bool {
        self.forward <= TOLERANCE && self.gradient_abs.0 <= TOLERANCE && self.gradient_rel.0 <= RELATIVE_TOLERANCE
    }
}

impl fmt::Display for Parity {
    /// One Markdown table row: model, forward, gradients, worst absolute and relative, verdict.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "| {} | {:.1e} | {} | {:.1e} ({}) | {:.1e} ({}) | {} |",
            self.model,
            self.forward,
            self.gradients,
            self.gradient_abs.0,
            self.gradient_abs.1,
            self.gradient_rel.0,
            self.gradient_rel.1,
            if self.passed() { "ok" } else { "FAILED" }
        )
    }
}

/// The table header matching [`Parity`]'s rows.
pub const TABLE_HEADER: &str = "| model | forward max abs | gradients | worst abs (parameter) | worst relative (parameter) | |\n|---|---|---|---|---|---|";

/// Compares MAE, BEiT, Swin and SimMIM on `device` with the fixtures in `fixtures`.
pub fn parity(fixtures: &Path, device: &Device) -> Result<Vec<Parity>> {
    ensure!(
        fixtures.join("mae_tiny_config.json").is_file(),
        "'{}' holds no mim fixtures: pass --fixtures with the folder of mim's tests/fixtures",
        fixtures.display()
    );
    let device = device.clone().autodiff();
    let f = Fixtures { dir: fixtures, device: &device };
    Ok(vec![f.mae()?, f.beit()?, f.swin()?, f.simmim()?])
}

struct Fixtures<'a> {
    dir: &'a Path,
    device: &'a Device,
}

impl Fixtures<'_> {
    fn read(&self, name: &str) -> Result<TensorMap> {
        read_safetensors(&self.dir.join(name))
            .with_context(|| format!("pass --fixtures with the folder of mim's tests/fixtures (missing {name})"))
    }

    fn json(&self, name: &str) -> Result<serde_json::Value> {
        let path = self.dir.join(name);
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read '{}'", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("'{}' is not JSON", path.display()))
    }

    fn tensor<const D: usize>(&self, io: &TensorMap, name: &str) -> Result<Tensor<D>> {
        let (shape, v) = io.get(name).with_context(|| format!("the fixture has no '{name}'"))?;
        Ok(Tensor::from_data(TensorData::new(v.clone(), shape.clone()), self.device))
    }

    /// Hugging Face `ViTMAEForPreTraining`: the norm_pix loss and every gradient.
    fn mae(&self) -> Result<Parity> {
        let cfg = mae_config_from_hf(&self.json("mae_tiny_config.json")?)?;
        let io = self.read("mae_tiny_io.safetensors")?;
        let model = load_weights(cfg.init(0, self.device)?, &cfg, &self.dir.join("mae_tiny_weights.safetensors"))?;
        let (shape, noise) = io.get("noise").context("the fixture has no 'noise'")?;
        let mask = Mask::from_noise(noise, shape[0], 0.75)?;
        let loss = model.forward(self.tensor(&io, "pixel_values")?, &mask).loss;
        let forward = max_diff(&host(loss.clone()), &io["loss"].1);
        let theirs = from_pytorch_layout(&cfg, &hf_to_official(&strip(&io, "grad."))?)?;
        Ok(compare("MAE vs Hugging Face ViTMAE", forward, &gradients(&model, &loss.backward()), &theirs))
    }

    /// microsoft/unilm BEiT (the pretraining variant): the cross-entropy and every gradient.
    fn beit(&self) -> Result<Parity> {
        let cfg: BeitConfig = serde_json::from_value(self.json("beit_tiny_config.json")?["models"]["shared"].clone())?;
        let io = self.read("beit_tiny_shared_io.safetensors")?;
        let model =
            load_beit_weights(cfg.init(0, self.device)?, &cfg, &self.dir.join("beit_tiny_shared_weights.safetensors"))?;
        let (shape, m) = &io["bool_masked_pos"];
        let mask = BoolMask::new(m.iter().map(|&v| v > 0.5).collect(), shape[0], (cfg.grid(), cfg.grid()))?;
        let (shape, ids) = &io["token_ids"];
        let ids = Tensor::<2, Int>::from_data(
            TensorData::new(ids.iter().map(|&t| t as i64).collect(), shape.clone()),
            self.device,
        );
        let logits = model.forward(self.tensor(&io, "pixel_values")?, &mask);
        let loss =
            BeitForMaskedImageModeling::forward_loss(logits, BeitForMaskedImageModeling::masked_targets(ids, &mask));
        let forward = max_diff(&host(loss.clone()), &io["loss"].1);
        let theirs = beit_from_official(&cfg, &strip(&io, "grad."))?;
        Ok(compare("BEiT vs microsoft/unilm", forward, &gradients(&model, &loss.backward()), &theirs))
    }

    /// The fixtures' Swin architecture (tools/make_swin_fixtures.py).
    fn swin_config(&self) -> Result<SwinConfig> {
        let j = self.json("swin_tiny_config.json")?;
        let list = |k: &str| -> Vec<usize> {
            j[k].as_array().into_iter().flatten().filter_map(|v| v.as_u64()).map(|v| v as usize).collect()
        };
        let n =
            |k: &str| j[k].as_u64().map(|v| v as usize).with_context(|| format!("swin_tiny_config.json has no {k}"));
        Ok(SwinConfig {
            img_size: n("img_size")?,
            patch_size: n("patch_size")?,
            in_chans: n("in_chans")?,
            embed_dim: n("embed_dim")?,
            depths: list("depths"),
            num_heads: list("num_heads"),
            window_size: n("window_size")?,
            mlp_ratio: j["mlp_ratio"].as_f64().unwrap_or(4.0),
            num_classes: n("num_classes")?,
            drop_path_rate: 0.0,
        })
    }

    /// timm's Swin classifier: a weighted sum of the logits and every gradient.
    fn swin(&self) -> Result<Parity> {
        let io = self.read("swin_tiny_io.safetensors")?;
        let model =
            load_timm(self.swin_config()?.init(0, self.device)?, &self.dir.join("swin_tiny_weights.safetensors"))?;
        let loss = (model.forward(self.tensor(&io, "pixel_values")?) * self.tensor::<2>(&io, "logit_weights")?).sum();
        let forward = max_diff(&host(loss.clone()), &io["cls_loss"].1);
        let theirs = timm_to_burn(&strip(&io, "grad."))?;
        Ok(compare("Swin vs timm", forward, &gradients(&model, &loss.backward()), &theirs))
    }

    /// The official SimMIM: the masked L1 loss and every gradient.
    fn simmim(&self) -> Result<Parity> {
        let io = self.read("swin_tiny_io.safetensors")?;
        let model = load_simmim(
            SimMim::new(&self.swin_config()?, 0, self.device)?,
            &self.dir.join("swin_tiny_simmim.safetensors"),
        )?;
        let loss = model.forward(self.tensor(&io, "pixel_values")?, self.tensor(&io, "mask")?).loss;
        let forward = max_diff(&host(loss.clone()), &io["simmim_loss"].1);
        let theirs = simmim_to_burn(&strip(&io, "simmim_grad."))?;
        Ok(compare("SimMIM vs official", forward, &gradients(&model, &loss.backward()), &theirs))
    }
}

/// The entries of `io` under `prefix`, without it.
fn strip(io: &TensorMap, prefix: &str) -> TensorMap {
    io.iter().filter_map(|(k, v)| k.strip_prefix(prefix).map(|n| (n.to_string(), v.clone()))).collect()
}

/// Largest |a - b| (infinite when the lengths differ: a shape mismatch must fail).
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return f32::INFINITY;
    }
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// Every reference gradient against ours; a parameter missing on one side counts as infinitely far.
fn compare(model: &'static str, forward: f32, ours: &TensorMap, theirs: &TensorMap) -> Parity {
    let (mut abs, mut rel) = ((0f32, String::new()), (0f32, String::new()));
    let names: std::collections::BTreeSet<&String> = ours.keys().chain(theirs.keys()).collect();
    for name in &names {
        let (d, scale) = match (ours.get(*name), theirs.get(*name)) {
            (Some(o), Some(t)) if o.0 == t.0 => (max_diff(&o.1, &t.1), t.1.iter().fold(0f32, |m, v| m.max(v.abs()))),
            _ => (f32::INFINITY, 1.0),
        };
        if d > abs.0 || abs.1.is_empty() {
            abs = (d, name.to_string());
        }
        // A reference gradient of zeros (BEiT's absent key bias) has no scale to be relative to.
        let r = if scale > 0.0 { d / scale } else { 0.0 };
        if r > rel.0 || rel.1.is_empty() {
            rel = (r, name.to_string());
        }
    }
    Parity { model, forward, gradients: names.len(), gradient_abs: abs, gradient_rel: rel }
}

/// Fails naming every model outside the tolerances.
pub fn ensure_passed(rows: &[Parity]) -> Result<()> {
    let failed: Vec<&str> = rows.iter().filter(|r| !r.passed()).map(|r| r.model).collect();
    ensure!(failed.is_empty(), "parity failed for {}: see the table", failed.join(", "));
    Ok(())
}
