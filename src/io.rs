//! Weights in and out.
//!
//! mim's parameter paths are the official MAE / timm state-dict keys (`blocks.0.attn.qkv.weight`).
//! Export writes them in PyTorch layout (linear weights `[out, in]`, the patch embedding as a
//! `[D, C, p, p]` convolution, the position embeddings as they are), so the official code can load
//! the file. Import reads that layout, or Hugging Face `ViTMAEForPreTraining` checkpoints (separate
//! q/k/v, `vit.encoder.layer.N...` names), converted to safetensors. BEiT weights load from the
//! official microsoft/unilm (or timm) names with [`load_beit_weights`].

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use burn::module::{Module, ModuleVisitor, Param};
use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::{Gradients, Tensor};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::models::beit::{BeitConfig, BeitForMaskedImageModeling, relative_position_index};
use crate::models::mae::{MaeConfig, MaskedAutoencoder};

/// Named f32 tensors: name -> (shape, row-major values).
pub type TensorMap = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

struct Named<'a> {
    grads: Option<&'a Gradients>,
    path: Vec<String>,
    out: TensorMap,
}

impl ModuleVisitor for Named<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let tensor = param.val();
        let t = match self.grads {
            Some(g) => match tensor.grad(g) {
                Some(t) => t,
                None => return,
            },
            None => tensor,
        };
        let values = t.to_data().convert::<f32>().try_to_vec::<f32>().expect("f32 tensor");
        self.out.insert(self.path.join("."), (t.dims().to_vec(), values));
    }
}

/// Every parameter of `module` by path, in burn layout.
pub fn parameters<M: Module>(module: &M) -> TensorMap {
    let mut v = Named { grads: None, path: Vec::new(), out: TensorMap::new() };
    module.visit(&mut v);
    v.out
}

/// The gradient of every parameter of `module` that has one, by path, in burn layout.
pub fn gradients<M: Module>(module: &M, grads: &Gradients) -> TensorMap {
    let mut v = Named { grads: Some(grads), path: Vec::new(), out: TensorMap::new() };
    module.visit(&mut v);
    v.out
}

/// Reads every tensor of a safetensors file as f32 (f32, f64, f16 and bf16 files are accepted; integer tensors too).
pub fn read_safetensors(path: &Path) -> Result<TensorMap> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read '{}'", path.display()))?;
    let st = SafeTensors::deserialize(&bytes)
        .with_context(|| format!("'{}' is not a safetensors file (or is truncated)", path.display()))?;
    let mut out = TensorMap::new();
    for (name, view) in st.tensors() {
        let d = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => d.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
            Dtype::F64 => d.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32).collect(),
            Dtype::I64 => d.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f32).collect(),
            Dtype::BF16 => d.chunks_exact(2).map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16)).collect(),
            Dtype::F16 => d.chunks_exact(2).map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]]))).collect(),
            other => bail!("tensor '{name}' in '{}' has unsupported dtype {other:?}", path.display()),
        };
        out.insert(name, (view.shape().to_vec(), values));
    }
    Ok(out)
}

fn f16_to_f32(h: u16) -> f32 {
    let (sign, exp, frac) = ((h >> 15) as u32, ((h >> 10) & 0x1f) as i32, (h & 0x3ff) as f32);
    let mag = match exp {
        0 => frac * 2f32.powi(-24),
        31 => if frac == 0.0 { f32::INFINITY } else { f32::NAN },
        e => (1.0 + frac / 1024.0) * 2f32.powi(e - 15),
    };
    if sign == 1 { -mag } else { mag }
}

/// Serialises tensors as f32 safetensors bytes.
pub fn safetensors_bytes(map: &TensorMap) -> Result<Vec<u8>> {
    let raw: Vec<(String, Vec<usize>, Vec<u8>)> =
        map.iter().map(|(k, (s, v))| (k.clone(), s.clone(), v.iter().flat_map(|x| x.to_le_bytes()).collect())).collect();
    let views: Vec<(String, TensorView)> = raw
        .iter()
        .map(|(k, s, b)| Ok((k.clone(), TensorView::new(Dtype::F32, s.clone(), b)?)))
        .collect::<Result<_>>()?;
    Ok(safetensors::serialize(views, &None)?)
}

fn transpose(shape: &[usize], v: &[f32]) -> (Vec<usize>, Vec<f32>) {
    let (r, c) = (shape[0], shape[1]);
    let mut out = vec![0.0; v.len()];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = v[i * c + j];
        }
    }
    (vec![c, r], out)
}

/// Patch-embedding weight between burn `[p*p*C, D]` (pixels in (row, col, channel) order) and the
/// PyTorch convolution `[D, C, p, p]`, for patch side `p`, `c` channels and width `d`.
fn convert_patch_weight((p, c, d): (usize, usize, usize), v: &[f32], to_conv: bool) -> Vec<f32> {
    let mut out = vec![0.0; v.len()];
    for o in 0..d {
        for ch in 0..c {
            for i in 0..p {
                for j in 0..p {
                    let (linear, conv) = (((i * p + j) * c + ch) * d + o, ((o * c + ch) * p + i) * p + j);
                    let (to, from) = if to_conv { (conv, linear) } else { (linear, conv) };
                    out[to] = v[from];
                }
            }
        }
    }
    out
}

/// burn layout -> PyTorch layout (official MAE keys). The position embeddings are parameters
/// (never trained) and pass through as they are.
pub fn to_pytorch_layout(cfg: &MaeConfig, burn: &TensorMap) -> TensorMap {
    let mut out = TensorMap::new();
    for (k, (s, v)) in burn {
        let t = if k == "patch_embed.proj.weight" {
            (vec![cfg.embed_dim, cfg.in_chans, cfg.patch_size, cfg.patch_size], convert_patch_weight((cfg.patch_size, cfg.in_chans, cfg.embed_dim), v, true))
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
            ensure!(s == &want, "'{k}' has shape {s:?} but this model needs {want:?}: the weights are for another configuration");
            (vec![cfg.patch_dim(), cfg.embed_dim], convert_patch_weight((cfg.patch_size, cfg.in_chans, cfg.embed_dim), v, false))
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
    let mut qkv: BTreeMap<String, [Option<(Vec<usize>, Vec<f32>)>; 3]> = BTreeMap::new();
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
                "attention.attention.query" | "attention.q_proj" => return Some(format!("{prefix}.{i}.qkv:query.{param}")),
                "attention.attention.key" | "attention.k_proj" => return Some(format!("{prefix}.{i}.qkv:key.{param}")),
                "attention.attention.value" | "attention.v_proj" => return Some(format!("{prefix}.{i}.qkv:value.{param}")),
                _ => return None,
            };
            Some(format!("{prefix}.{i}.{ours}.{param}"))
        };
        let name = match k.as_str() {
            "vit.embeddings.cls_token" => Some("cls_token".to_string()),
            "vit.embeddings.position_embeddings" => Some("pos_embed".to_string()),
            "decoder.decoder_pos_embed" => Some("decoder_pos_embed".to_string()),
            "decoder.mask_token" => Some("mask_token".to_string()),
            k if k.starts_with("vit.embeddings.patch_embeddings.projection.") => Some(k.replacen("vit.embeddings.patch_embeddings.projection", "patch_embed.proj", 1)),
            k if k.starts_with("vit.layernorm.") => Some(k.replacen("vit.layernorm", "norm", 1)),
            k if k.starts_with("vit.encoder.layer.") => block(&k["vit.encoder.layer.".len()..], "blocks"),
            k if k.starts_with("vit.layers.") => block(&k["vit.layers.".len()..], "blocks"),
            k if k.starts_with("decoder.decoder_layers.") => block(&k["decoder.decoder_layers.".len()..], "decoder_blocks"),
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
    let get = |k: &str| json.get(k).and_then(|v| v.as_u64()).map(|v| v as usize).with_context(|| format!("config.json lacks '{k}'"));
    let hidden = get("hidden_size")?;
    let inter = get("intermediate_size")?;
    let dec = get("decoder_hidden_size")?;
    let dec_inter = get("decoder_intermediate_size")?;
    ensure!(inter * dec == dec_inter * hidden, "mim uses one MLP ratio for encoder and decoder; this config has {inter}/{hidden} and {dec_inter}/{dec}");
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

/// Checks position embeddings `key` of `shape` from `source` fit a `grid x grid` patch grid plus
/// the cls slot at width `dim`, naming the fix when they do not (mim loads them as they are and
/// does not interpolate them to another grid).
pub fn check_pos_embed_shape(key: &str, shape: &[usize], grid: usize, dim: usize, source: &str) -> Result<()> {
    let want = [1, grid * grid + 1, dim];
    if shape == want {
        return Ok(());
    }
    let theirs = match shape {
        [1, n, d] => {
            let g = ((n.saturating_sub(1)) as f64).sqrt().round() as usize;
            if g * g + 1 == *n { format!(" (a {g}x{g} patch grid plus the cls slot, width {d})") } else { String::new() }
        }
        _ => String::new(),
    };
    bail!(
        "'{key}' in '{source}' has shape {shape:?}{theirs}, this model needs {want:?} (a {grid}x{grid} patch grid plus the cls slot, \
         width {dim}): the weights are for another configuration; build the model with the one they were trained with \
         (their config.json, the matching preset, or --img-size = patch size x the file's grid side): mim loads \
         position embeddings as they are and does not interpolate them to another grid"
    )
}

/// Loads `burn_map` (burn layout, keys = parameter paths) into `model`: every parameter must be present
/// with the right shape, and nothing else; `source` names the origin in errors.
pub fn load_tensor_map<M: Module>(model: M, burn_map: &TensorMap, source: &str) -> Result<M> {
    let expected = parameters(&model);
    let missing: Vec<&String> = expected.keys().filter(|k| !burn_map.contains_key(*k)).collect();
    let unused: Vec<&String> = burn_map.keys().filter(|k| !expected.contains_key(*k)).collect();
    ensure!(
        missing.is_empty() && unused.is_empty(),
        "'{source}' does not match the model: missing {missing:?}, unexpected {unused:?}; check the model preset / config"
    );
    for (k, (s, _)) in burn_map {
        let want = &expected[k].0;
        ensure!(s == want, "'{k}' in '{source}' has shape {s:?}, the model needs {want:?}: the weights are for another configuration");
    }
    let mut store = SafetensorsStore::from_bytes(Some(safetensors_bytes(burn_map)?));
    let mut model = model;
    let res = model.load_from(&mut store).map_err(|e| anyhow::anyhow!("cannot load '{source}': {e}"))?;
    ensure!(res.errors.is_empty(), "cannot load '{source}': {:?}", res.errors);
    Ok(model)
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
            ensure!(v == &index, "'{k}' is not the relative position index of a {g}x{g} patch grid: the weights are for another image or patch size");
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
            ensure!(s == &want, "'{k}' has shape {s:?} but this model needs {want:?}: the weights are for another configuration");
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

/// PyTorch layout -> burn layout for models whose keys already match (timm Swin, SimMIM): every 2-D
/// `*.weight` is transposed to `[in, out]`, every 4-D `*.weight` (a convolution `[D, C, p, p]` whose
/// stride equals its kernel: patch embeddings, 1x1 decoders) becomes the `[p*p*C, D]` linear map on
/// [`crate::models::vit::patchify`]'d input; everything else is copied.
pub fn pytorch_to_burn_layout(torch: &TensorMap) -> Result<TensorMap> {
    let mut out = TensorMap::new();
    for (k, (s, v)) in torch {
        let t = match s.len() {
            2 if k.ends_with(".weight") => transpose(s, v),
            4 if k.ends_with(".weight") => {
                let (d, c, p) = (s[0], s[1], s[2]);
                ensure!(s[3] == p, "'{k}' is a {}x{} convolution; only square kernels map to patch embeddings", s[2], s[3]);
                (vec![p * p * c, d], convert_patch_weight((p, c, d), v, false))
            }
            _ => (s.clone(), v.clone()),
        };
        out.insert(k.clone(), t);
    }
    Ok(out)
}

/// Loads a BEiT masked-image-modeling model from a safetensors file in official naming (see
/// [`beit_from_official`]); every parameter must be present and of the right shape.
pub fn load_beit_weights(model: BeitForMaskedImageModeling, cfg: &BeitConfig, path: &Path) -> Result<BeitForMaskedImageModeling> {
    load_tensor_map(model, &beit_from_official(cfg, &read_safetensors(path)?)?, &path.display().to_string())
}

/// Writes the model's weights as safetensors in official MAE naming and PyTorch layout.
pub fn export_weights(model: &MaskedAutoencoder, cfg: &MaeConfig, path: &Path) -> Result<()> {
    let bytes = safetensors_bytes(&to_pytorch_layout(cfg, &parameters(model)))?;
    crate::train::checkpoint::write_atomic(path, &[&bytes])
}

/// Reads a TOML configuration file into `T` (whose unknown keys are errors when `T` denies them).
pub fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config '{}'", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config '{}' is not valid", path.display()))
}

/// Reads a JSON-lines file (metrics, results) written by mim; `what` names it in errors.
pub fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<Vec<T>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {what} '{}'", path.display()))?;
    text.lines().map(|l| serde_json::from_str(l).with_context(|| format!("bad line in '{}': {l}", path.display()))).collect()
}
