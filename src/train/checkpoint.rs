//! Checkpoints: one file holding the model, the optimizer state and a JSON header (configs,
//! progress, seed), written atomically so a crash never leaves a half-written checkpoint.
//!
//! Layout: an 8-byte magic naming the [`Kind`] (`MIMCKPT1` for pretraining and fine-tuning,
//! `MIMTOKN1` for tokenizers), then three length-prefixed (u64 LE) sections: header JSON, model
//! (burnpack, which keeps parameter ids so the optimizer state re-attaches), optimizer (burnpack).

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use burn::optim::ModuleOptimizer;
use burn::store::{BurnpackStore, ModuleSnapshot};
use burn::tensor::{Bytes, Device};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use burn::module::Module;

use crate::models::classifier::Pool;
use super::methods::{MimModel, ModelConfig};
use crate::models::mae::MaskedAutoencoder;

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

    fn magic(self) -> &'static [u8; 8] {
        match self {
            Kind::Model => b"MIMCKPT1",
            Kind::Tokenizer => b"MIMTOKN1",
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

/// Writes `path` atomically: a temporary file beside it, flushed and synced, then renamed.
pub fn write_atomic(path: &Path, sections: &[&[u8]]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create '{}'", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("cannot write '{}'", tmp.display()))?;
        for s in sections {
            f.write_all(s)?;
        }
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot move '{}' into place", path.display()))
}

/// Saves model, optimizer and header to `path` atomically.
pub fn save<M: Module>(path: &Path, header: &CheckpointHeader, model: &M, optim: Option<&ModuleOptimizer>) -> Result<()> {
    save_kind(path, Kind::Model, header, model, optim)
}

/// Saves a checkpoint of `kind` with any serialisable header, atomically.
pub fn save_kind<M: Module>(path: &Path, kind: Kind, header: &impl Serialize, model: &M, optim: Option<&ModuleOptimizer>) -> Result<()> {
    let head = serde_json::to_vec(header)?;
    let model = model_bytes(model)?;
    let opt = match optim {
        Some(o) => o.into_bytes().map_err(|e| anyhow::anyhow!("cannot serialise the optimizer: {e:?}"))?.to_vec(),
        None => Vec::new(),
    };
    let lens: Vec<[u8; 8]> = [&head, &model, &opt].iter().map(|s| (s.len() as u64).to_le_bytes()).collect();
    write_atomic(path, &[kind.magic(), &lens[0], &head, &lens[1], &model, &lens[2], &opt])
}

fn sections(bytes: &[u8], path: &Path, kind: Kind) -> Result<Vec<Vec<u8>>> {
    let bad = || format!("'{}' is not a mim checkpoint or is truncated: pass {}", path.display(), kind.describe());
    if let Some(other) = Kind::ALL.iter().find(|k| **k != kind && bytes.starts_with(k.magic())) {
        bail!("'{}' is {}, not {}", path.display(), other.describe(), kind.describe());
    }
    ensure!(bytes.len() >= 8 && &bytes[..8] == kind.magic(), bad());
    let mut at = 8usize;
    let mut out = Vec::new();
    for _ in 0..3 {
        let len_bytes = bytes.get(at..at + 8).with_context(bad)?;
        let n = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes"));
        at += 8;
        // A length field is untrusted: compare it with what is left of the file in u64, so a value
        // near u64::MAX can neither wrap nor become an allocation.
        let left = (bytes.len() - at) as u64;
        ensure!(
            n <= left,
            "'{}' is corrupted or truncated: a section claims {n} bytes but only {left} remain in the file; \
             use an intact copy of the checkpoint",
            path.display()
        );
        let n = n as usize;
        out.push(bytes[at..at + n].to_vec());
        at += n;
    }
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
pub fn load_model<M: Module>(path: &Path, device: &Device, build: impl FnOnce(&ModelConfig, u64, &Device) -> Result<M>) -> Result<Checkpoint<M>> {
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
        bail!("'{}' is a pretraining checkpoint, not a classifier: fine-tune it first with `mim finetune`", path.display());
    };
    let model = fill(build(&header.model, &spec)?, model_bytes, path)?;
    Ok(Checkpoint { header, model, optimizer: (!opt.is_empty()).then(|| Bytes::from_bytes_vec(opt)) })
}

/// Overwrites the parameters of `model` with the serialised ones.
pub fn fill<M: Module>(mut model: M, bytes: Vec<u8>, path: &Path) -> Result<M> {
    let mut store = BurnpackStore::from_bytes(Some(Bytes::from_bytes_vec(bytes)));
    let result = model
        .load_from(&mut store)
        .map_err(|e| anyhow::anyhow!("checkpoint '{}' does not fit its own model config: {e}", path.display()))?;
    if !result.errors.is_empty() || !result.missing.is_empty() {
        bail!("checkpoint '{}' is inconsistent: missing {:?}, errors {:?}", path.display(), result.missing, result.errors);
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(kind: Kind, lens: [u64; 3], body: &[u8]) -> Vec<u8> {
        let mut b = kind.magic().to_vec();
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
            assert!(err.contains("corrupted or truncated"), "{err}");
        }
        let ok = sections(&file(Kind::Model, [2, 1, 1], b"{}ab"), p, Kind::Model).unwrap();
        assert_eq!(ok, vec![b"{}".to_vec(), b"a".to_vec(), b"b".to_vec()]);
        // Cut inside a length field.
        let mut cut = file(Kind::Model, [2, 1, 1], b"{}ab");
        cut.truncate(8 + 8 + 2 + 3);
        assert!(sections(&cut, p, Kind::Model).unwrap_err().to_string().contains("truncated"));
    }
}
