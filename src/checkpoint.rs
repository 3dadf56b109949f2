//! Checkpoints: one file holding the model, the optimizer state and a JSON header (configs,
//! progress, seed), written atomically so a crash never leaves a half-written checkpoint.
//!
//! Layout: an 8-byte magic naming the [`Kind`] and format version (`MIMCKPT2` for pretraining and
//! fine-tuning, `MIMTOKN2` for tokenizers), then three sections, each a u64 LE length, a u32 LE
//! CRC-32 of its bytes, and the bytes: header JSON, model (burnpack, which keeps parameter ids so
//! the optimizer state re-attaches), optimizer (burnpack). Version 1 files (no CRC) still load.
//! Every length is checked against the file's real size, every CRC verified, and loaded weights
//! must be finite, so a damaged file is an error naming it rather than a panic or black pictures.

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::store::{BurnpackStore, ModuleSnapshot};
use burn::tensor::{Bytes, Device};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::io::write_atomic;
use crate::models::classifier::Pool;
use crate::models::mae::MaskedAutoencoder;
use crate::models::pretrain::{MimModel, ModelConfig};

/// What a checkpoint file holds, told apart by its first 8 bytes so that passing one kind where
/// the other is expected gives an error naming both instead of a confusing weight mismatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A masked autoencoder being pretrained, or a classifier being fine-tuned (header [`CheckpointHeader`]).
    Model,
    /// A visual tokenizer ([`crate::train::tokenizer`]).
    Tokenizer,
}

impl Kind {
    const ALL: [Kind; 2] = [Kind::Model, Kind::Tokenizer];

    /// The first 7 bytes; the 8th is the format version.
    fn prefix(self) -> &'static [u8; 7] {
        match self {
            Kind::Model => b"MIMCKPT",
            Kind::Tokenizer => b"MIMTOKN",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Kind::Model => "a model checkpoint written by `mim pretrain` or `mim finetune`",
            Kind::Tokenizer => "a tokenizer checkpoint written by `mim tokenizer train`",
        }
    }
}

/// What a checkpoint says about itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckpointHeader {
    /// mim version that wrote it.
    pub mim_version: String,
    /// Model architecture (the encoder's, for a classifier).
    pub model: ModelConfig,
    /// Training configuration (as JSON, so older files stay readable).
    pub train: serde_json::Value,
    /// Training batches consumed so far (the loop resumes at this batch).
    pub iteration: u64,
    /// Optimizer updates applied so far.
    pub optimizer_steps: u64,
    /// Completed epochs.
    pub epoch: u64,
    /// Base seed; with `iteration` it determines every random draw still to come.
    pub seed: u64,
    /// Set for a classifier (fine-tuning) checkpoint: the head on top of the `model` encoder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier: Option<ClassifierSpec>,
}

/// The classification head of a fine-tuning checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClassifierSpec {
    /// Outputs of the head.
    pub num_classes: usize,
    /// Token pooling.
    pub pool: Pool,
    /// Best test top-1 accuracy so far (percent) and its epoch.
    pub best: Option<(f64, u64)>,
}

/// Everything needed to continue a run.
pub struct Checkpoint<M = MaskedAutoencoder> {
    /// Header.
    pub header: CheckpointHeader,
    /// Model weights.
    pub model: M,
    /// Optimizer state bytes (burnpack), if saved.
    pub optimizer: Option<Bytes>,
}

fn model_bytes<M: Module>(model: &M) -> Result<Vec<u8>> {
    let mut store = BurnpackStore::from_bytes(None);
    model.save_into(&mut store).map_err(|e| anyhow::anyhow!("cannot serialise the model: {e}"))?;
    Ok(store.get_bytes().map_err(|e| anyhow::anyhow!("cannot serialise the model: {e}"))?.to_vec())
}

/// A burnpack rewritten with its tensors in name order: burn lists the optimizer state in the
/// order of a HashMap, so the same state would otherwise give different bytes in every process.
fn canonical_burnpack(bytes: Bytes) -> Result<Vec<u8>> {
    let err = |e: burn_pack::Error| anyhow::anyhow!("cannot serialise the optimizer: {e:?}");
    let reader = burn_pack::Reader::from_bytes(bytes).map_err(err)?;
    let (scalars, metadata) = (reader.scalars().clone(), reader.metadata().clone());
    let mut tensors = reader.into_tensors().map_err(err)?;
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    let mut writer = burn_pack::Writer::new(tensors);
    for (k, v) in &scalars {
        writer = writer.with_scalar(k, *v);
    }
    for (k, v) in &metadata {
        writer = writer.with_metadata(k, v);
    }
    Ok(writer.into_bytes().map_err(err)?.to_vec())
}

/// The format version written: 2 adds a CRC-32 to every section.
const VERSION: u8 = b'2';

/// Saves model, optimizer and header to `path` atomically.
pub fn save<M: Module>(
    path: &Path,
    header: &CheckpointHeader,
    model: &M,
    optim: Option<&ModuleOptimizer>,
) -> Result<()> {
    save_kind(path, Kind::Model, header, model, optim)
}

/// Saves a checkpoint of `kind` with any serialisable header, atomically.
pub fn save_kind<M: Module>(
    path: &Path,
    kind: Kind,
    header: &impl Serialize,
    model: &M,
    optim: Option<&ModuleOptimizer>,
) -> Result<()> {
    let head = serde_json::to_vec(header)?;
    let model = model_bytes(model)?;
    let opt = match optim {
        Some(o) => {
            canonical_burnpack(o.into_bytes().map_err(|e| anyhow::anyhow!("cannot serialise the optimizer: {e:?}"))?)?
        }
        None => Vec::new(),
    };
    let mut magic = kind.prefix().to_vec();
    magic.push(VERSION);
    let frame = |s: &[u8]| [&(s.len() as u64).to_le_bytes()[..], &crc32fast::hash(s).to_le_bytes()].concat();
    let (f0, f1, f2) = (frame(&head), frame(&model), frame(&opt));
    write_atomic(path, &[&magic, &f0, &head, &f1, &model, &f2, &opt])
}

const SECTIONS: [&str; 3] = ["header", "model", "optimizer"];

fn sections(bytes: &[u8], path: &Path, kind: Kind) -> Result<Vec<Vec<u8>>> {
    let bad = || format!("'{}' is not a mim checkpoint or is truncated: pass {}", path.display(), kind.describe());
    if let Some(other) = Kind::ALL.iter().find(|k| **k != kind && bytes.starts_with(k.prefix())) {
        bail!("'{}' is {}, not {}", path.display(), other.describe(), kind.describe());
    }
    // safetensors: an 8-byte header length, then JSON; a PyTorch file: a zip or a pickle.
    let weights_file = bytes.get(8) == Some(&b'{') || bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(&[0x80]);
    ensure!(
        !weights_file || bytes.starts_with(kind.prefix()),
        "'{}' is a weights file (safetensors or PyTorch), not a mim checkpoint: commands that read weights files take \
         it as --weights (`mim inspect` shows what it holds), or pass {}",
        path.display(),
        kind.describe()
    );
    ensure!(bytes.len() >= 8 && bytes.starts_with(kind.prefix()), bad());
    let with_crc = match bytes[7] {
        b'1' => false,
        b'2' => true,
        v => bail!(
            "'{}' is a checkpoint of format version {} that this mim cannot read: use the mim that wrote it",
            path.display(),
            v as char
        ),
    };
    let corrupted =
        |what: String| format!("checkpoint '{}' is corrupted ({what}): use an intact copy of it", path.display());
    let mut at = 8usize;
    let mut out = Vec::new();
    for name in SECTIONS {
        let frame = if with_crc { 12 } else { 8 };
        let head =
            bytes.get(at..at + frame).with_context(|| corrupted(format!("truncated before its {name} section")))?;
        let n = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
        at += frame;
        // A length field is untrusted: compare it with what is left of the file in u64, so a value
        // near u64::MAX can neither wrap nor become an allocation.
        let left = (bytes.len() - at) as u64;
        ensure!(
            n <= left,
            corrupted(format!("its {name} section claims {n} bytes but only {left} remain: truncated or damaged"))
        );
        let body = &bytes[at..at + n as usize];
        if with_crc {
            let crc = u32::from_le_bytes(head[8..].try_into().expect("4 bytes"));
            ensure!(
                crc32fast::hash(body) == crc,
                corrupted(format!("the CRC-32 of its {name} section does not match"))
            );
        }
        out.push(body.to_vec());
        at += n as usize;
    }
    ensure!(at == bytes.len(), corrupted(format!("{} unexpected bytes after its last section", bytes.len() - at)));
    Ok(out)
}

/// Reads only the header of a checkpoint.
pub fn read_header(path: &Path) -> Result<CheckpointHeader> {
    load_parts(path).map(|(h, _, _)| h)
}

fn load_parts(path: &Path) -> Result<(CheckpointHeader, Vec<u8>, Vec<u8>)> {
    load_kind(path, Kind::Model)
}

/// Reads a checkpoint of `kind`: its header, model bytes (for [`fill`]) and optimizer bytes
/// (empty when none was saved).
pub fn load_kind<H: DeserializeOwned>(path: &Path, kind: Kind) -> Result<(H, Vec<u8>, Vec<u8>)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read checkpoint '{}'", path.display()))?;
    let mut s = sections(&bytes, path, kind)?.into_iter();
    let header: H = serde_json::from_slice(&s.next().unwrap())
        .with_context(|| format!("checkpoint '{}' has an unreadable header", path.display()))?;
    Ok((header, s.next().unwrap(), s.next().unwrap()))
}

/// Loads a pretraining checkpoint onto `device`, building the empty model with `build` (e.g.
/// [`MimModel::build`]).
pub fn load_model<M: Module>(
    path: &Path,
    device: &Device,
    build: impl FnOnce(&ModelConfig, u64, &Device) -> Result<M>,
) -> Result<Checkpoint<M>> {
    let (header, model_bytes, opt) = load_parts(path)?;
    ensure!(
        header.classifier.is_none(),
        "'{}' is a fine-tuned classifier checkpoint, not a pretraining one: pass the checkpoint written by `mim pretrain`",
        path.display()
    );
    let model = fill(build(&header.model, 0, device)?, model_bytes, path)?;
    Ok(Checkpoint { header, model, optimizer: (!opt.is_empty()).then(|| Bytes::from_bytes_vec(opt)) })
}

/// Loads a masked-autoencoder pretraining checkpoint onto `device`.
pub fn load(path: &Path, device: &Device) -> Result<Checkpoint> {
    load_model(path, device, MaskedAutoencoder::build)
}

/// Loads a classifier (fine-tuning) checkpoint, building the empty classifier with `build`.
pub fn load_classifier<C: Module>(
    path: &Path,
    build: impl FnOnce(&ModelConfig, &ClassifierSpec) -> Result<C>,
) -> Result<Checkpoint<C>> {
    let (header, model_bytes, opt) = load_parts(path)?;
    let Some(spec) = header.classifier.clone() else {
        bail!(
            "'{}' is a pretraining checkpoint, not a classifier: fine-tune it first with `mim finetune`",
            path.display()
        );
    };
    let model = fill(build(&header.model, &spec)?, model_bytes, path)?;
    Ok(Checkpoint { header, model, optimizer: (!opt.is_empty()).then(|| Bytes::from_bytes_vec(opt)) })
}

/// Gives the parameters of a freshly built `module` ids 0, 1, 2... in visiting order (tied
/// parameters keep sharing one). burn draws ids at random; they are saved with the model and key
/// the optimizer state, so random ones made two identical runs write different checkpoint bytes.
pub fn number_params<M: Module>(module: M) -> M {
    struct Numbering(std::collections::HashMap<burn::module::ParamId, burn::module::ParamId>);
    impl Numbering {
        fn next(&mut self, id: burn::module::ParamId) -> burn::module::ParamId {
            // A high tag keeps these apart from any random id still around in the process.
            let n = self.0.len() as u64;
            *self.0.entry(id).or_insert_with(|| burn::module::ParamId::from(0x6d69_6d00_0000_0000 | n))
        }
    }
    impl burn::module::ModuleMapper for Numbering {
        fn map_float<const D: usize>(
            &mut self,
            mut p: burn::module::Param<burn::tensor::Tensor<D>>,
        ) -> burn::module::Param<burn::tensor::Tensor<D>> {
            p.id = self.next(p.id);
            p
        }
        fn map_int<const D: usize>(
            &mut self,
            mut p: burn::module::Param<burn::tensor::Tensor<D, burn::tensor::Int>>,
        ) -> burn::module::Param<burn::tensor::Tensor<D, burn::tensor::Int>> {
            p.id = self.next(p.id);
            p
        }
        fn map_bool<const D: usize>(
            &mut self,
            mut p: burn::module::Param<burn::tensor::Tensor<D, burn::tensor::Bool>>,
        ) -> burn::module::Param<burn::tensor::Tensor<D, burn::tensor::Bool>> {
            p.id = self.next(p.id);
            p
        }
    }
    module.map(&mut Numbering(Default::default()))
}

/// The first parameter of `module` (by path) holding a NaN or an infinity.
fn first_non_finite<M: Module>(module: &M) -> Option<String> {
    crate::io::parameters(module).into_iter().find(|(_, (_, v))| v.iter().any(|x| !x.is_finite())).map(|(name, _)| name)
}

/// Checkpoints fall on epoch ends, so the saved iterations per epoch tell the size of the data set
/// a run was trained on: resuming on a subset (or another data set) that gives `spe` iterations per
/// epoch instead is refused, naming `data`.
pub fn check_iterations_per_epoch(path: &Path, epoch: u64, iteration: u64, spe: usize, data: &Path) -> Result<()> {
    if epoch > 0 && iteration != epoch * spe as u64 {
        bail!(
            "checkpoint '{}' was trained on a data set of {} iterations per epoch, '{}' gives {spe}: resume with the data it was trained on",
            path.display(),
            iteration / epoch,
            data.display()
        );
    }
    Ok(())
}

/// Overwrites the parameters of `model` with the serialised ones.
pub fn fill<M: Module>(mut model: M, bytes: Vec<u8>, path: &Path) -> Result<M> {
    let mut store = BurnpackStore::from_bytes(Some(Bytes::from_bytes_vec(bytes)));
    let result = model
        .load_from(&mut store)
        .map_err(|e| anyhow::anyhow!("checkpoint '{}' does not fit its own model config: {e}", path.display()))?;
    // Checkpoints written before position embeddings were saved lack them; those runs used the
    // fresh model's sin-cos, which the model already holds.
    let missing: Vec<_> =
        result.missing.iter().filter(|(p, _)| !matches!(p.as_str(), "pos_embed" | "decoder_pos_embed")).collect();
    if !result.errors.is_empty() || !missing.is_empty() {
        bail!("checkpoint '{}' is inconsistent: missing {:?}, errors {:?}", path.display(), missing, result.errors);
    }
    // A diverged run stops before it saves, so NaN or infinite weights mean damage; using them
    // would only give black pictures and NaN features with exit status 0.
    if let Some(name) = first_non_finite(&model) {
        bail!(
            "checkpoint '{}' is corrupted: parameter '{name}' holds NaN or infinite values; use an intact copy of it",
            path.display()
        );
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version-1 file (no CRC), as older mim wrote.
    fn file(kind: Kind, lens: [u64; 3], body: &[u8]) -> Vec<u8> {
        let mut b = kind.prefix().to_vec();
        b.push(b'1');
        let mut at = 0;
        for n in lens {
            b.extend(n.to_le_bytes());
            let take = (n as usize).min(body.len() - at);
            b.extend(&body[at..at + take]);
            at += take;
        }
        b
    }

    #[test]
    fn huge_section_lengths_are_refused_without_panicking() {
        let p = Path::new("c.mim");
        // The crash input: a length near u64::MAX wrapped `at + n` and passed the check.
        for lens in [[u64::MAX, 0, 0], [u64::MAX - 7, 0, 0], [2, u64::MAX - 17, 0], [2, 2, u64::MAX], [1 << 40, 0, 0]] {
            let err = sections(&file(Kind::Model, lens, b"{}ab"), p, Kind::Model).unwrap_err().to_string();
            assert!(err.contains("is corrupted") && err.contains("remain"), "{err}");
        }
        let ok = sections(&file(Kind::Model, [2, 1, 1], b"{}ab"), p, Kind::Model).unwrap();
        assert_eq!(ok, vec![b"{}".to_vec(), b"a".to_vec(), b"b".to_vec()]);
        // Cut inside a length field.
        let mut cut = file(Kind::Model, [2, 1, 1], b"{}ab");
        cut.truncate(8 + 8 + 2 + 3);
        assert!(sections(&cut, p, Kind::Model).unwrap_err().to_string().contains("truncated"));
    }

    fn v2(sections: [&[u8]; 3]) -> Vec<u8> {
        let mut b = b"MIMCKPT2".to_vec();
        for s in sections {
            b.extend((s.len() as u64).to_le_bytes());
            b.extend(crc32fast::hash(s).to_le_bytes());
            b.extend(s);
        }
        b
    }

    #[test]
    fn every_flipped_bit_and_any_trailing_byte_is_caught() {
        let p = Path::new("c.mim");
        let good = v2([b"{\"a\":1}", b"model bytes", b"optimizer"]);
        assert_eq!(sections(&good, p, Kind::Model).unwrap()[1], b"model bytes");
        for i in 8..good.len() {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[i] ^= 1 << bit;
                let err = sections(&bad, p, Kind::Model).unwrap_err().to_string();
                assert!(err.contains("is corrupted"), "byte {i} bit {bit}: {err}");
            }
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(sections(&longer, p, Kind::Model).unwrap_err().to_string().contains("unexpected bytes"));
        let mut future = good;
        future[7] = b'9';
        assert!(sections(&future, p, Kind::Model).unwrap_err().to_string().contains("format version 9"));
    }

    #[test]
    fn non_finite_weights_are_refused_on_load() {
        use burn::module::Param;
        use burn::tensor::{Tensor, TensorData};
        let dev = Device::flex();
        let empty = burn::nn::LinearConfig::new(2, 2).init(&dev);
        let mut nan = empty.clone();
        nan.weight =
            Param::from_tensor(Tensor::from_data(TensorData::new(vec![0.0f32, f32::NAN, 0.0, 0.0], [2, 2]), &dev));
        let err = fill(empty.clone(), model_bytes(&nan).unwrap(), Path::new("c.mim")).unwrap_err().to_string();
        assert!(err.contains("is corrupted: parameter 'weight' holds NaN"), "{err}");
        assert!(fill(empty.clone(), model_bytes(&empty).unwrap(), Path::new("c.mim")).is_ok());
    }

    #[test]
    fn a_checkpoint_header_round_trips_and_an_untagged_one_still_loads() {
        use crate::models::mae::MaeConfig;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint.mim");
        let header = CheckpointHeader {
            mim_version: "0.1.0".into(),
            model: ModelConfig::Mae(MaeConfig::preset("mae_tiny_28").unwrap()),
            train: serde_json::json!({"epochs": 2}),
            iteration: 6,
            optimizer_steps: 3,
            epoch: 2,
            seed: 7,
            classifier: Some(ClassifierSpec { num_classes: 10, pool: Pool::Cls, best: Some((81.5, 1)) }),
        };
        let linear = burn::nn::LinearConfig::new(2, 2).init(&Device::flex());
        save(&path, &header, &linear, None).unwrap();
        assert_eq!(read_header(&path).unwrap(), header);
        let (json, _, _) = load_kind::<serde_json::Value>(&path, Kind::Model).unwrap();
        assert_eq!(json["model"]["family"], "mae", "{json}");
        // A header of a checkpoint written before the family tag.
        let mut old = json;
        old["model"].as_object_mut().unwrap().remove("family");
        save_kind(&path, Kind::Model, &old, &linear, None).unwrap();
        assert_eq!(read_header(&path).unwrap(), header);
    }
}
