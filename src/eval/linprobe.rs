//! Linear probing (MAE's `main_linprobe.py`): a linear classifier on frozen features, behind a
//! BatchNorm without affine parameters, trained with LARS (or SGD) under warmup + cosine.
//!
//! Features are computed once and cached (see [`super::extract`]), so a probe costs seconds. On
//! cached features the BatchNorm's running statistics converge to the training set's mean and
//! variance; we use those exact statistics from the start (a fixed standardisation), which is what
//! the probe evaluates with. MAE's probe also augments (random resized crop); caching trades that
//! away.

use anyhow::{Result, ensure};
use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer, SgdConfig, momentum::MomentumConfig};
use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::{Features, host, smoothed_targets, soft_cross_entropy, topk_accuracy};
use crate::models::init::{InitRng, normal, param};
use crate::models::vit::Linear;
use crate::optim::{CosineSchedule, Lars};

/// Optimizer of the probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeOptimizer {
    /// LARS with momentum 0.9 (MAE's choice for its 16384 batch).
    Lars,
    /// SGD with momentum 0.9.
    Sgd,
}

/// Probe settings; defaults are MAE's linear-probing recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinprobeConfig {
    /// Passes over the features.
    pub epochs: usize,
    /// Vectors per step (capped at the training set size).
    pub batch_size: usize,
    /// Learning rate per 256 vectors of batch.
    pub base_lr: f64,
    /// Weight decay of the head's weight.
    pub weight_decay: f64,
    /// Linear warmup in epochs.
    pub warmup_epochs: f64,
    /// LARS or SGD.
    pub optimizer: ProbeOptimizer,
    /// Seed of the head's initialisation and of the shuffling.
    pub seed: u64,
}

impl Default for LinprobeConfig {
    fn default() -> Self {
        Self {
            epochs: 90,
            batch_size: 16384,
            base_lr: 0.1,
            weight_decay: 0.0,
            warmup_epochs: 10.0,
            optimizer: ProbeOptimizer::Lars,
            seed: 0,
        }
    }
}

impl LinprobeConfig {
    /// Checks the settings before any feature is extracted, naming the flag.
    pub fn validate(&self) -> Result<()> {
        ensure!(self.epochs > 0 && self.batch_size > 0, "the probe needs --epochs >= 1 and --batch-size >= 1");
        ensure!(
            self.base_lr.is_finite() && self.base_lr > 0.0,
            "--base-lr {} must be a finite value > 0",
            self.base_lr
        );
        let wd = self.weight_decay;
        ensure!(wd.is_finite() && wd >= 0.0, "--weight-decay {wd} must be a finite value >= 0 (0 turns it off)");
        let w = self.warmup_epochs;
        ensure!(w.is_finite() && w >= 0.0, "--warmup-epochs {w} must be a finite value >= 0");
        Ok(())
    }
}

/// One epoch of a probe.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ProbeEpoch {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss.
    pub loss: f64,
    /// Test top-1 (percent).
    pub top1: f64,
    /// Test top-5 (percent).
    pub top5: f64,
}

/// Standardises `f` with the per-dimension mean and variance of `stats` (BatchNorm without
/// affine, eps 1e-6 as MAE's probe).
fn standardise(f: &Features, mean: &[f64], var: &[f64]) -> Features {
    let mut values = f.values.clone();
    for row in values.chunks_mut(f.dim) {
        for (j, v) in row.iter_mut().enumerate() {
            *v = ((*v as f64 - mean[j]) / (var[j] + 1e-6).sqrt()) as f32;
        }
    }
    Features { dim: f.dim, values, labels: f.labels.clone() }
}

/// Trains a linear probe on `train` and reports test accuracy after every epoch.
pub fn linear_probe(
    train: &Features,
    test: &Features,
    classes: usize,
    cfg: &LinprobeConfig,
    device: &Device,
    progress: &mut dyn FnMut(&ProbeEpoch),
) -> Result<Vec<ProbeEpoch>> {
    cfg.validate()?;
    ensure!(train.dim == test.dim, "train and test features differ in width ({} vs {})", train.dim, test.dim);
    ensure!(!train.is_empty(), "the probe needs training features: --max-images must be at least 1");
    let d = train.dim;
    let n = train.len() as f64;
    let mut mean = vec![0.0f64; d];
    let mut var = vec![0.0f64; d];
    for row in train.values.chunks(d) {
        row.iter().enumerate().for_each(|(j, &v)| mean[j] += v as f64 / n);
    }
    for row in train.values.chunks(d) {
        row.iter().enumerate().for_each(|(j, &v)| var[j] += (v as f64 - mean[j]).powi(2) / n);
    }
    let (train, test) = (standardise(train, &mean, &var), standardise(test, &mean, &var));

    let ad = device.clone().autodiff();
    let mut rng = InitRng::seed_from_u64(cfg.seed);
    let mut head = Linear {
        weight: param(normal(&mut rng, d * classes, 0.01), [d, classes], &ad),
        bias: Some(param(vec![0.0; classes], [classes], &ad)),
    };
    let mut optim: ModuleOptimizer = match cfg.optimizer {
        ProbeOptimizer::Lars => Lars { weight_decay: cfg.weight_decay, momentum: 0.9, trust_coefficient: 0.001 }.into(),
        ProbeOptimizer::Sgd => SgdConfig::new()
            .with_momentum(Some(MomentumConfig::new().with_momentum(0.9).with_dampening(0.0)))
            .with_weight_decay(
                (cfg.weight_decay > 0.0).then(|| burn::optim::decay::WeightDecayConfig::new(cfg.weight_decay as f32)),
            )
            .init(),
    };
    let batch = cfg.batch_size.min(train.len());
    let steps = train.len().div_ceil(batch);
    let sched = CosineSchedule {
        lr: cfg.base_lr * batch as f64 / 256.0,
        min_lr: 0.0,
        warmup_epochs: cfg.warmup_epochs,
        epochs: cfg.epochs as f64,
    };
    let test_x = test.tensor(device);
    let mut history = Vec::new();
    for epoch in 0..cfg.epochs {
        let mut order: Vec<usize> = (0..train.len()).collect();
        order.shuffle(&mut rng);
        let mut loss_sum = 0.0;
        for (k, idx) in order.chunks(batch).enumerate() {
            let mut x = Vec::with_capacity(idx.len() * d);
            idx.iter().for_each(|&i| x.extend_from_slice(&train.values[i * d..(i + 1) * d]));
            let labels: Vec<u32> = idx.iter().map(|&i| train.labels[i]).collect();
            let x = Tensor::<2>::from_data(TensorData::new(x, [idx.len(), d]), &ad);
            let t = Tensor::<2>::from_data(
                TensorData::new(smoothed_targets(&labels, classes, 0.0), [idx.len(), classes]),
                &ad,
            );
            let loss = soft_cross_entropy(head.forward(x), t);
            loss_sum += loss.clone().into_scalar::<f32>() as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &head);
            head = optim.step(sched.at(epoch as f64 + k as f64 / steps as f64), head, grads);
        }
        let scores = host(head.valid().forward(test_x.clone()));
        let (top1, top5) = topk_accuracy(&scores, classes, &test.labels);
        let e = ProbeEpoch { epoch: epoch + 1, loss: loss_sum / steps as f64, top1, top5 };
        progress(&e);
        history.push(e);
    }
    Ok(history)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_separates_linearly_separable_classes() {
        // Three well separated clusters in 4-D.
        let mut rng = InitRng::seed_from_u64(1);
        let make = |n: usize, rng: &mut InitRng| {
            let noise = normal(rng, n * 4, 0.3);
            let labels: Vec<u32> = (0..n as u32).map(|i| i % 3).collect();
            let values =
                (0..n * 4).map(|k| noise[k] + if k % 4 == labels[k / 4] as usize { 2.0 } else { 0.0 }).collect();
            Features { dim: 4, values, labels }
        };
        let (train, test) = (make(300, &mut rng), make(90, &mut rng));
        // LARS steps are `lr x 0.001 x |w|`: it needs MAE's large learning rate (6.4 at its batch).
        for (optimizer, base_lr) in [(ProbeOptimizer::Lars, 25.6), (ProbeOptimizer::Sgd, 0.1)] {
            let cfg = LinprobeConfig {
                epochs: 30,
                batch_size: 64,
                base_lr,
                warmup_epochs: 2.0,
                optimizer,
                ..Default::default()
            };
            let h = linear_probe(&train, &test, 3, &cfg, &Device::flex(), &mut |_| {}).unwrap();
            assert!(h.last().unwrap().top1 > 95.0, "{optimizer:?}: {:?}", h.last());
            assert!(h.last().unwrap().loss < h[0].loss);
        }
    }
}
