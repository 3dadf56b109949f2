//! Evaluation protocols of the MAE and BEiT papers: linear probing on frozen features
//! ([`linprobe`]) and k-nearest-neighbour accuracy ([`knn`]), all on features produced here from a
//! pretraining checkpoint, a randomly initialised encoder (the baseline) or raw pixels (the floor),
//! and the test accuracy of a classifier ([`evaluate`]). Fine-tuning, a training job, is
//! [`crate::train::finetune`].

pub mod knn;
pub mod linprobe;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use burn::tensor::{Device, Tensor, TensorData};

use crate::data::Dataset;
use crate::data::loader::for_each_batch;
use crate::io::TensorMap;
use crate::models::beit::BeitForMaskedImageModeling;
use crate::models::classifier::{Classifier, Pool, VitClassifier};
use crate::models::pretrain::{MimModel, ModelConfig};
use crate::models::swin::SwinTransformer;
use crate::weights::Holds;

/// Where features come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Backbone {
    /// The encoder of a `mim pretrain` checkpoint, or of a weights file `crate::weights::open`
    /// reads (official, timm or Hugging Face MAE, BEiT, SimMIM or Swin files, fine-tuned ones too).
    Checkpoint(PathBuf),
    /// A freshly initialised encoder of a preset (what pretraining has to beat).
    RandomInit {
        /// Preset name of any family ([`ModelConfig::preset`]).
        model: String,
        /// Initialisation seed.
        seed: u64,
    },
    /// The normalised pixels themselves.
    Pixels,
}

impl Backbone {
    /// A short name for tables and file names.
    pub fn describe(&self) -> String {
        match self {
            Backbone::Checkpoint(p) => format!("checkpoint {}", p.display()),
            Backbone::RandomInit { model, seed } => format!("random-init {model} (seed {seed})"),
            Backbone::Pixels => "raw pixels".into(),
        }
    }

    /// The feature map `[B, C, H, W] -> [B, D]` of this backbone on `device` and the input side
    /// it expects, or `None` for pixels. MAE encoders pool by `pool`; BEiT encoders average their
    /// patch tokens, Swin (SimMIM) encoders their last feature map. `channels` is the dataset's.
    pub fn encoder(&self, channels: usize, pool: Pool, device: &Device) -> Result<Option<FeatureEncoder>> {
        let vit = |mae| -> Encoder {
            let clf = VitClassifier::from_mae(mae, 1, pool, 0.0, 0);
            Box::new(move |imgs| clf.forward_features(imgs, None, 0))
        };
        let beit = |m: BeitForMaskedImageModeling| -> Encoder { Box::new(move |imgs| m.features(imgs)) };
        let swin =
            |m: SwinTransformer| -> Encoder { Box::new(move |imgs| SwinTransformer::pool(m.forward_features(imgs))) };
        let mut assumed = Vec::new();
        let (encode, cfg): (Encoder, ModelConfig) = match self {
            Backbone::Pixels => return Ok(None),
            Backbone::Checkpoint(path) => {
                let w = crate::weights::open(path)?;
                let encode: Encoder = match w.detected.holds {
                    Holds::Mae { .. } | Holds::VitClassifier { .. } => vit(w.mae_encoder(0, device)?.0),
                    Holds::Beit | Holds::BeitClassifier { .. } => beit(w.beit_encoder(0, device)?),
                    Holds::SimMim => {
                        let m = w.simmim(device)?;
                        Box::new(move |imgs| m.features(imgs))
                    }
                    Holds::Swin { .. } => swin(w.swin(device)?),
                };
                assumed = w.detected.assumed.iter().map(|(what, value)| format!("{what} = {value}")).collect();
                (encode, w.detected.config)
            }
            // The same feature map as a pretrained checkpoint of the family, at initialisation.
            Backbone::RandomInit { model, seed } => match ModelConfig::preset(model)? {
                ModelConfig::Mae(mut c) => {
                    c.in_chans = channels;
                    (vit(c.init(*seed, device)?), ModelConfig::Mae(c))
                }
                ModelConfig::Beit(mut c) => {
                    c.in_chans = channels;
                    (beit(c.init(*seed, device)?), ModelConfig::Beit(c))
                }
                ModelConfig::Swin(mut c) => {
                    c.in_chans = channels;
                    (swin(c.init(*seed, device)?), ModelConfig::Swin(c))
                }
            },
        };
        ensure!(
            cfg.in_chans() == channels,
            "the encoder takes {}-channel images but the dataset has {channels} channels: use data like the pretraining data",
            cfg.in_chans()
        );
        Ok(Some(FeatureEncoder { encode, config: cfg, assumed }))
    }
}

/// A frozen encoder as a function from images `[B, C, H, W]` to features `[B, D]`.
pub type Encoder = Box<dyn Fn(Tensor<4>) -> Tensor<2>>;

/// A backbone's frozen encoder.
pub struct FeatureEncoder {
    /// The feature map.
    pub encode: Encoder,
    /// Its architecture (`img_size` is the input side it expects).
    pub config: ModelConfig,
    /// What its weights file could not say and was assumed (`field = value (why)`), for the user
    /// to check.
    pub assumed: Vec<String>,
}

/// Feature vectors of a dataset, with labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    /// Feature width D.
    pub dim: usize,
    /// `[N * D]`
    pub values: Vec<f32>,
    /// `[N]`
    pub labels: Vec<u32>,
}

impl Features {
    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// `[N, D]` on `device`.
    pub fn tensor(&self, device: &Device) -> Tensor<2> {
        Tensor::from_data(TensorData::new(self.values.clone(), [self.len(), self.dim]), device)
    }

    /// Writes `features: [N, D]` (f32) and `labels: [N]` (stored as f32) to a safetensors file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut map = TensorMap::new();
        map.insert("features".into(), (vec![self.len(), self.dim], self.values.clone()));
        map.insert("labels".into(), (vec![self.len()], self.labels.iter().map(|&l| l as f32).collect()));
        let bytes = crate::io::safetensors_bytes(&map)?;
        crate::io::write_atomic(path, &[&bytes])
    }

    /// Reads a file written by [`Features::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let map = crate::io::read_safetensors(path)?;
        let bad = || format!("'{}' is not a features file: write one with `mim embed`", path.display());
        let (shape, values) = map.get("features").with_context(bad)?.clone();
        let (_, labels) = map.get("labels").with_context(bad)?;
        ensure!(shape.len() == 2 && labels.len() == shape[0], bad());
        Ok(Self { dim: shape[1], values, labels: labels.iter().map(|&l| l as u32).collect() })
    }
}

/// Features stored in `dir` under `key`, a spelled-out list of everything they depend on: read
/// back when `dir` holds features of the same key, else computed by `compute` and stored, so that
/// several protocols on one backbone extract once. The file is named by the key's CRC-32 and a
/// `.key` file beside it holds the key itself, compared in full: a collision recomputes, it never
/// returns another backbone's features. Returns the features and whether they came from `dir`.
pub fn cached_features(dir: &Path, key: &str, compute: impl FnOnce() -> Result<Features>) -> Result<(Features, bool)> {
    let stem = dir.join(format!("{:08x}", crc32fast::hash(key.as_bytes())));
    let (file, key_file) = (stem.with_extension("safetensors"), stem.with_extension("key"));
    if std::fs::read_to_string(&key_file).is_ok_and(|k| k == key) && file.exists() {
        return Ok((Features::load(&file)?, true));
    }
    let features = compute()?;
    // A key file left from other features under the same name must not outlive them: a write
    // stopped between the two files would otherwise pair that key with these features.
    match std::fs::remove_file(&key_file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("cannot replace '{}'", key_file.display()));
        }
        _ => {}
    }
    features.save(&file)?;
    crate::io::write_atomic(&key_file, &[key.as_bytes()])?;
    Ok((features, false))
}

/// Features of every image of `ds` (resized to `side`): the pooled encoder output, or the
/// flattened normalised pixels when `encoder` is `None`. `progress` gets the images done so far.
pub fn extract(
    encoder: Option<&dyn Fn(Tensor<4>) -> Tensor<2>>,
    ds: &Dataset,
    side: usize,
    batch: usize,
    device: &Device,
    progress: &mut dyn FnMut(usize),
) -> Result<Features> {
    let mut values = Vec::new();
    let mut dim = 0;
    for_each_batch(ds, side, batch, |b| {
        let f = match encoder {
            Some(encode) => encode(b.tensor(device)),
            None => Tensor::from_data(TensorData::new(b.images.clone(), [b.len(), b.images.len() / b.len()]), device),
        };
        dim = f.dims()[1];
        values.extend(host(f));
        progress(values.len() / dim);
        Ok(())
    })?;
    Ok(Features { dim, values, labels: ds.labels.clone() })
}

/// Top-1 and top-5 test accuracy (percent) of a classifier on every image of `ds`.
pub fn evaluate<C: Classifier>(
    model: &C,
    ds: &Dataset,
    side: usize,
    batch: usize,
    device: &Device,
) -> Result<(f64, f64)> {
    let mut scores = Vec::new();
    let mut classes = 0;
    for_each_batch(ds, side, batch, |b| {
        let logits = model.logits(b.tensor(device));
        classes = logits.dims()[1];
        scores.extend(host(logits));
        Ok(())
    })?;
    Ok(topk_accuracy(&scores, classes, &ds.labels))
}

/// The values of an f32 tensor on the host.
pub(crate) fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().expect("converted to f32")
}

/// Top-1 and top-5 accuracy (percent) of `scores: [N * C]` against `labels`.
pub fn topk_accuracy(scores: &[f32], classes: usize, labels: &[u32]) -> (f64, f64) {
    let (mut top1, mut top5) = (0usize, 0usize);
    for (row, &label) in scores.chunks(classes).zip(labels) {
        let target = row[label as usize];
        // A NaN score is never right: a NaN label score ranks last, any other NaN above the label.
        let better = if target.is_nan() {
            usize::MAX
        } else {
            row.iter()
                .enumerate()
                .filter(|&(c, &s)| s.is_nan() || s > target || (s == target && c < label as usize))
                .count()
        };
        top1 += (better == 0) as usize;
        top5 += (better < 5) as usize;
    }
    let n = labels.len().max(1) as f64;
    (100.0 * top1 as f64 / n, 100.0 * top5 as f64 / n)
}

/// Cross-entropy against soft targets `[B, C]` (one-hot, label-smoothed or mixed): the batch mean
/// of `-Σ_c t_c log softmax(logits)_c`, as timm's `SoftTargetCrossEntropy`.
pub fn soft_cross_entropy(logits: Tensor<2>, targets: Tensor<2>) -> Tensor<1> {
    (burn::tensor::activation::log_softmax(logits, 1) * targets).sum_dim(1).mean().neg()
}

/// Host targets `[B * C]` for `labels` with label smoothing: `1 - s + s / C` on the label, `s / C`
/// elsewhere (timm's convention).
pub fn smoothed_targets(labels: &[u32], classes: usize, smoothing: f64) -> Vec<f32> {
    let off = (smoothing / classes as f64) as f32;
    let on = (1.0 - smoothing) as f32 + off;
    let mut t = vec![off; labels.len() * classes];
    for (i, &l) in labels.iter().enumerate() {
        t[i * classes + l as usize] = on;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topk_counts_ties_against_the_label() {
        let scores = [0.1, 0.9, 0.0, /**/ 0.5, 0.5, 0.0, /**/ 0.2, 0.3, 0.5];
        let (t1, t5) = topk_accuracy(&scores, 3, &[1, 1, 0]);
        assert!((t1 - 100.0 / 3.0).abs() < 1e-9, "{t1}");
        assert_eq!(t5, 100.0);
    }

    #[test]
    fn nan_scores_never_count_as_right() {
        // A diverged probe or a NaN temperature must not read as a perfect score.
        let (t1, t5) = topk_accuracy(&[f32::NAN; 6], 3, &[0, 2]);
        assert_eq!((t1, t5), (0.0, 0.0));
        let scores = [0.9, f32::NAN, 0.1, /**/ 0.2, 0.1, 0.7];
        let (t1, t5) = topk_accuracy(&scores, 3, &[0, 2]);
        assert_eq!((t1, t5), (50.0, 100.0));
    }

    #[test]
    fn cached_features_are_reused_only_for_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let a = Features { dim: 2, values: vec![1.0, 2.0, 3.0, 4.0], labels: vec![0, 1] };
        let b = Features { dim: 1, values: vec![5.0], labels: vec![2] };
        let (got, hit) = cached_features(dir.path(), "backbone a", || Ok(a.clone())).unwrap();
        assert_eq!((got, hit), (a.clone(), false));
        let (got, hit) = cached_features(dir.path(), "backbone a", || panic!("must be read back")).unwrap();
        assert_eq!((got, hit), (a.clone(), true));
        let (got, hit) = cached_features(dir.path(), "backbone b", || Ok(b.clone())).unwrap();
        assert_eq!((got, hit), (b, false));
        // A key file that disagrees (a CRC collision, a hand edit) means recomputing.
        let stem = dir.path().join(format!("{:08x}", crc32fast::hash(b"backbone a")));
        std::fs::write(stem.with_extension("key"), "another backbone").unwrap();
        let (_, hit) = cached_features(dir.path(), "backbone a", || Ok(a.clone())).unwrap();
        assert!(!hit);
    }

    #[test]
    fn random_init_gives_the_features_of_each_family() {
        let device = Device::flex();
        // MAE's [CLS] and BEiT's mean patch token are the ViT's width; Swin's pooled last stage
        // doubles its 48 channels once.
        for (model, kind, dim) in
            [("mae_tiny_28", "MAE", 192), ("beit_tiny_28", "BEiT", 192), ("swin_tiny_28", "Swin", 96)]
        {
            let backbone = Backbone::RandomInit { model: model.into(), seed: 0 };
            let e = backbone.encoder(1, Pool::Cls, &device).unwrap().expect("an encoder");
            assert_eq!(e.config.kind(), kind);
            let side = e.config.img_size();
            let f = (e.encode)(Tensor::<4>::random(
                [2, 1, side, side],
                burn::tensor::Distribution::Normal(0.0, 1.0),
                &device,
            ));
            assert_eq!(f.dims(), [2, dim], "{model}");
        }
        let unknown = Backbone::RandomInit { model: "vit_nope".into(), seed: 0 }.encoder(1, Pool::Cls, &device);
        assert!(unknown.err().unwrap().to_string().contains("unknown model preset 'vit_nope'"));
    }
}
