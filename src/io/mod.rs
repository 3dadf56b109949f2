//! Generic file formats: named tensors ([`TensorMap`]) in and out of safetensors and burn modules,
//! PyTorch `.pth` weights read without executing them ([`read_tensor_file`], see [`pth`]), the
//! PyTorch -> burn layout of keys that already match, atomic writes, TOML configs and JSON-lines
//! records. Nothing here knows a model type: the model-specific weight formats (official
//! MAE and BEiT names, Hugging Face `ViTMAEForPreTraining`) are [`crate::weights`].

pub mod pth;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use burn::module::{Module, ModuleVisitor, Param};
use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::{Gradients, Tensor};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

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

/// How a weights file was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorFormat {
    /// safetensors.
    Safetensors,
    /// `torch.save` since PyTorch 1.6: a zip archive holding `data.pkl` and the storages.
    PthZip,
    /// `torch.save` before 1.6 or with `_use_new_zipfile_serialization=False`: pickles, then the storages.
    PthLegacy,
}

/// The tensors of a weights file, whatever its format, with where they were found.
#[derive(Debug, Clone)]
pub struct TensorFile {
    /// Every tensor as f32, in PyTorch shapes, as stored (no layout change).
    pub tensors: TensorMap,
    /// The file's format, recognised by its first bytes.
    pub format: TensorFormat,
    /// The top-level entry the weights were under (`Some("model")` for `checkpoint["model"]`).
    pub nested: Option<String>,
    /// A safetensors file's `__metadata__` (empty for `.pth`).
    pub metadata: BTreeMap<String, String>,
    /// Top-level entries not used, sorted (`"optimizer"`, `"epoch"`, `"args"`, ...).
    pub ignored: Vec<String>,
}

/// Reads the tensors of a safetensors file or a PyTorch `.pth`/`.pt`/`.bin` (zip or legacy), told
/// apart by their first bytes rather than the extension. PyTorch files are checked not to name any
/// Python global beyond what `torch.save` and training scripts write (see [`pth`]) and are never
/// executed; a training checkpoint's weights are taken from under `model`, `state_dict`, `module`
/// or `model_ema`, and DDP's `module.` prefix is removed.
pub fn read_tensor_file(path: &Path) -> Result<TensorFile> {
    let mut head = Vec::with_capacity(9);
    std::fs::File::open(path)
        .and_then(|f| f.take(9).read_to_end(&mut head))
        .with_context(|| format!("cannot read '{}'", path.display()))?;
    // A safetensors header is a little-endian length then '{': its first byte may be 0x80, as a pickle's is.
    let safetensors_like = head.len() == 9 && head[8] == b'{';
    if head.starts_with(b"PK\x03\x04") {
        pth::read_pth(path, TensorFormat::PthZip)
    } else if head.first() == Some(&0x80) && !safetensors_like {
        pth::read_pth(path, TensorFormat::PthLegacy)
    } else {
        let (tensors, metadata) = read_safetensors_with_metadata(path).with_context(|| {
            format!(
                "'{}' is not a weights file mim reads: not a PyTorch zip (.pth/.pt/.bin, starts with PK), a legacy \
                 PyTorch pickle (starts with 0x80) nor safetensors",
                path.display()
            )
        })?;
        Ok(TensorFile { tensors, format: TensorFormat::Safetensors, nested: None, metadata, ignored: Vec::new() })
    }
}

/// The `__metadata__` of a safetensors file, from its header alone (the tensors are not read);
/// empty for a file that is not safetensors.
pub fn safetensors_metadata(path: &Path) -> Result<BTreeMap<String, String>> {
    #[derive(serde::Deserialize)]
    struct Header {
        #[serde(rename = "__metadata__", default)]
        metadata: BTreeMap<String, String>,
    }
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot read '{}'", path.display()))?;
    let mut len = [0u8; 8];
    if file.read_exact(&mut len).is_err() {
        return Ok(BTreeMap::new());
    }
    // safetensors caps its header at 100 MB; a larger length says this is another format.
    let len = u64::from_le_bytes(len);
    let mut header = Vec::new();
    if len > 100_000_000 || file.take(len).read_to_end(&mut header)? as u64 != len || header.first() != Some(&b'{') {
        return Ok(BTreeMap::new());
    }
    Ok(serde_json::from_slice::<Header>(&header).map(|h| h.metadata).unwrap_or_default())
}

/// Reads every tensor of a safetensors file as f32 (f32, f64, f16 and bf16 files are accepted; integer tensors too).
pub fn read_safetensors(path: &Path) -> Result<TensorMap> {
    Ok(read_safetensors_with_metadata(path)?.0)
}

/// [`read_safetensors`], with the file's `__metadata__`.
fn read_safetensors_with_metadata(path: &Path) -> Result<(TensorMap, BTreeMap<String, String>)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read '{}'", path.display()))?;
    let st = SafeTensors::deserialize(&bytes)
        .with_context(|| format!("'{}' is not a safetensors file (or is truncated)", path.display()))?;
    let (_, header) = SafeTensors::read_metadata(&bytes)?;
    let metadata = header.metadata().clone().unwrap_or_default().into_iter().collect();
    let mut out = TensorMap::new();
    for (name, view) in st.tensors() {
        let d = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => d.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
            Dtype::F64 => d.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32).collect(),
            Dtype::I64 => d.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f32).collect(),
            Dtype::BF16 => {
                d.chunks_exact(2).map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16)).collect()
            }
            Dtype::F16 => d.chunks_exact(2).map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]]))).collect(),
            other => bail!("tensor '{name}' in '{}' has unsupported dtype {other:?}", path.display()),
        };
        out.insert(name, (view.shape().to_vec(), values));
    }
    Ok((out, metadata))
}

fn f16_to_f32(h: u16) -> f32 {
    let (sign, exp, frac) = ((h >> 15) as u32, ((h >> 10) & 0x1f) as i32, (h & 0x3ff) as f32);
    let mag = match exp {
        0 => frac * 2f32.powi(-24),
        31 => {
            if frac == 0.0 {
                f32::INFINITY
            } else {
                f32::NAN
            }
        }
        e => (1.0 + frac / 1024.0) * 2f32.powi(e - 15),
    };
    if sign == 1 { -mag } else { mag }
}

/// Serialises tensors as f32 safetensors bytes.
pub fn safetensors_bytes(map: &TensorMap) -> Result<Vec<u8>> {
    safetensors_bytes_with_metadata(map, &BTreeMap::new(), Precision::F32)
}

/// Floating-point precision of the tensors a file stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// 32-bit floats, as trained.
    #[default]
    F32,
    /// IEEE half precision (rounded to nearest): half the size, about 3 significant digits.
    F16,
}

/// As [`safetensors_bytes`], with `metadata` in the header's `__metadata__` (a file that says what
/// it is: mim writes its model configuration there), tensors stored in `precision`.
pub fn safetensors_bytes_with_metadata(
    map: &TensorMap,
    metadata: &BTreeMap<String, String>,
    precision: Precision,
) -> Result<Vec<u8>> {
    let bytes = |v: &[f32]| -> Vec<u8> {
        match precision {
            Precision::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Precision::F16 => v.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect(),
        }
    };
    let dtype = match precision {
        Precision::F32 => Dtype::F32,
        Precision::F16 => Dtype::F16,
    };
    let raw: Vec<(String, Vec<usize>, Vec<u8>)> =
        map.iter().map(|(k, (s, v))| (k.clone(), s.clone(), bytes(v))).collect();
    let views: Vec<(String, TensorView)> =
        raw.iter().map(|(k, s, b)| Ok((k.clone(), TensorView::new(dtype, s.clone(), b)?))).collect::<Result<_>>()?;
    let metadata = (!metadata.is_empty()).then(|| metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
    Ok(safetensors::serialize(views, &metadata)?)
}

/// The transpose of a row-major `[r, c]` matrix: linear weights between PyTorch `[out, in]` and burn `[in, out]`.
pub(crate) fn transpose(shape: &[usize], v: &[f32]) -> (Vec<usize>, Vec<f32>) {
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
pub(crate) fn convert_patch_weight((p, c, d): (usize, usize, usize), v: &[f32], to_conv: bool) -> Vec<f32> {
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

/// Checks position embeddings `key` of `shape` from `source` fit a `grid x grid` patch grid plus
/// the cls slot at width `dim`, naming the fix when they do not (a checkpoint's are loaded as they
/// are; a weights file's were fitted to the grid when [`crate::weights::open`] read it).
pub fn check_pos_embed_shape(key: &str, shape: &[usize], grid: usize, dim: usize, source: &str) -> Result<()> {
    let want = [1, grid * grid + 1, dim];
    if shape == want {
        return Ok(());
    }
    if let [1, _, d] = shape
        && *d != dim
    {
        bail!(
            "'{key}' in '{source}' is {d} wide, this model {dim} (shape {shape:?} against {want:?}): the weights are for \
             another configuration; build the model they were trained with (their config.json or the matching preset: `mim inspect` \
             shows what the file holds)"
        );
    }
    let theirs = match shape {
        [1, n, d] => {
            let g = ((n.saturating_sub(1)) as f64).sqrt().round() as usize;
            if g * g + 1 == *n {
                format!(" (a {g}x{g} patch grid plus the cls slot, width {d})")
            } else {
                String::new()
            }
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
        ensure!(
            s == want,
            "'{k}' in '{source}' has shape {s:?}, the model needs {want:?}: the weights are for another configuration"
        );
    }
    let mut store = SafetensorsStore::from_bytes(Some(safetensors_bytes(burn_map)?));
    let mut model = model;
    let res = model.load_from(&mut store).map_err(|e| anyhow::anyhow!("cannot load '{source}': {e}"))?;
    ensure!(res.errors.is_empty(), "cannot load '{source}': {:?}", res.errors);
    Ok(model)
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
                ensure!(
                    s[3] == p,
                    "'{k}' is a {}x{} convolution; only square kernels map to patch embeddings",
                    s[2],
                    s[3]
                );
                (vec![p * p * c, d], convert_patch_weight((p, c, d), v, false))
            }
            _ => (s.clone(), v.clone()),
        };
        out.insert(k.clone(), t);
    }
    Ok(out)
}

/// burn layout -> PyTorch layout, the inverse of [`pytorch_to_burn_layout`]: linear weights
/// transposed; `convs` names each convolution weight with its PyTorch shape `[out, in, k, k]`, which
/// the flattened `[k*k*in, out]` matrix does not keep.
pub fn burn_to_pytorch_layout(burn: &TensorMap, convs: &[(&str, [usize; 4])]) -> TensorMap {
    let mut out = TensorMap::new();
    for (k, (s, v)) in burn {
        let t = match convs.iter().find(|(name, _)| name == k) {
            Some((_, shape @ [d, c, p, _])) => (shape.to_vec(), convert_patch_weight((*p, *c, *d), v, true)),
            None if s.len() == 2 && k.ends_with(".weight") => transpose(s, v),
            None => (s.clone(), v.clone()),
        };
        out.insert(k.clone(), t);
    }
    out
}

/// Writes `path` atomically: a temporary file beside it, flushed and synced, then renamed. On any
/// failure (a full disk) the temporary file is removed and the previous `path` stays as it was.
pub fn write_atomic(path: &Path, sections: &[&[u8]]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create '{}'", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        for s in sections {
            f.write_all(s)?;
        }
        f.sync_all()
    };
    let result = write()
        .with_context(|| format!("cannot write '{}' (for '{}')", tmp.display(), path.display()))
        .and_then(|()| {
            std::fs::rename(&tmp, path)
                .with_context(|| format!("cannot move '{}' to '{}'", tmp.display(), path.display()))
        });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Whether `a` and `b` name one existing file (through links, `..` or another spelling).
pub fn same_file(a: &Path, b: &Path) -> bool {
    matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b)
}

/// Checks, before any work, that a command writing a `.{ext}` file may write `out`: a typo in
/// `--out` must not replace the input being read, a run's checkpoint or its records. So `out`
/// must end in `.{ext}` (an existing file of that kind is replaced: rewriting an export or a report
/// is routine) and must not be one of `inputs`.
pub fn check_output(out: &Path, ext: &str, inputs: &[&Path]) -> Result<()> {
    ensure!(
        out.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case(ext)),
        "'{}': this command writes a .{ext} file, so name the output .{ext} (mim does not write under \
         another extension, so that a checkpoint or a record there is never overwritten)",
        out.display()
    );
    ensure!(!out.is_dir(), "'{}' is a folder: name a .{ext} file", out.display());
    if let Some(input) = inputs.iter().find(|i| same_file(out, i)) {
        bail!(
            "'{}' is also the input '{}': choose another output, the input would be lost",
            out.display(),
            input.display()
        );
    }
    Ok(())
}

/// Reads a TOML configuration file into `T` (whose unknown keys are errors when `T` denies them).
pub fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config '{}'", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config '{}' is not valid", path.display()))
}

/// Reads a JSON-lines file (metrics, results) written by mim; `what` names it in errors.
pub fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<Vec<T>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {what} '{}'", path.display()))?;
    // A process killed mid-write leaves its last line cut short, without the newline: the complete
    // lines before it are the run's record (resuming truncates it the same way).
    let torn = !text.is_empty() && !text.ends_with('\n');
    let n = text.lines().count();
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .filter_map(|(i, l)| match serde_json::from_str(l) {
            Ok(v) => Some(Ok(v)),
            Err(_) if torn && i + 1 == n => None,
            Err(e) => {
                Some(Err(anyhow::Error::new(e).context(format!("bad line {} in '{}': {l}", i + 1, path.display()))))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_reading_skips_a_torn_last_line_and_blank_lines_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.jsonl");
        std::fs::write(&path, "{\"a\":1}\n\n{\"a\":2}\n{\"a\":").unwrap();
        let v: Vec<serde_json::Value> = read_jsonl(&path, "metrics").unwrap();
        assert_eq!(v.len(), 2);
        std::fs::write(&path, "{\"a\":1}\n{\"a\":\n{\"a\":2}\n").unwrap();
        let err = format!("{:#}", read_jsonl::<serde_json::Value>(&path, "metrics").unwrap_err());
        assert!(err.contains("bad line 2 in"), "{err}");
    }

    #[test]
    fn a_failed_atomic_write_removes_its_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // The target is a non-empty folder: the rename fails after the temporary file was written.
        let target = dir.path().join("checkpoint.mim");
        std::fs::create_dir_all(target.join("x")).unwrap();
        let err = format!("{:#}", write_atomic(&target, &[b"abc"]).unwrap_err());
        assert!(err.contains("checkpoint.tmp") && err.contains("checkpoint.mim"), "{err}");
        assert!(!dir.path().join("checkpoint.tmp").exists());
    }
}
