//! End-to-end and partial fine-tuning (MAE's `main_finetune.py`): the pretrained encoder on every
//! patch with a new head, layer-wise lr decay, drop path, label smoothing, optional mixup/cutmix,
//! AdamW under warmup + cosine; top-1/top-5 on the test split after every epoch, the best
//! checkpoint kept. `from_scratch` trains the same architecture from random initialisation with the
//! same budget, the baseline every comparison needs. `trainable_blocks = K` freezes all but the
//! last K blocks (the paper's partial fine-tuning, figure 9).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use burn::tensor::Bytes;
use burn::tensor::{Device, Tensor, TensorData};
use rand::Rng;
use rand_distr::{Beta, Distribution};
use serde::{Deserialize, Serialize};

use super::pretrain::{Reporter, StepMetrics};
use crate::checkpoint::{self, CheckpointHeader, ClassifierSpec};
use crate::data::augment::Transform;
use crate::data::loader::{Batch, Prefetcher, epoch_order, rng_for};
use crate::data::{Dataset, Split};
use crate::eval::{evaluate, smoothed_targets, soft_cross_entropy};
use crate::models::beit::{BeitConfig, BeitForMaskedImageModeling};
use crate::models::classifier::{BeitClassifier, Classifier, Pool, VitClassifier, swin_from_scratch, swin_from_simmim};
use crate::models::mae::MaeConfig;
use crate::models::pretrain::{MimModel, ModelConfig};
use crate::models::simmim::SimMim;
use crate::models::swin::{SwinConfig, SwinTransformer};
use crate::optim::{LayerDecay, LrSchedule, ScheduleKind, Stepper, TORCH_BETAS, adamw, param_ranks};

/// Random stream ids (kept apart from augmentation and shuffling).
const MIX_STREAM: u64 = 0x4D49_5855;
const DROP_STREAM: u64 = 0x4452_4F50;

/// Fine-tuning settings; defaults follow MAE's ViT-B fine-tuning recipe (mixup/cutmix off unless set).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FinetuneConfig {
    /// Dataset path (train and test splits).
    pub data: PathBuf,
    /// Output folder: checkpoints, metrics.
    pub out: PathBuf,
    /// Pretraining checkpoint whose encoder is fine-tuned; `None` trains `model` from scratch.
    pub checkpoint: Option<PathBuf>,
    /// Preset of the from-scratch baseline ([`MaeConfig::PRESETS`]).
    pub model: String,
    /// Token pooling before the head.
    pub pool: Pool,
    /// Train only the last K blocks (plus norm and head); `None` trains everything.
    pub trainable_blocks: Option<usize>,
    /// Passes over the training split.
    pub epochs: usize,
    /// Images per forward/backward.
    pub batch_size: usize,
    /// Batches per optimizer update.
    pub accum_iter: usize,
    /// Learning rate per 256 images of effective batch.
    pub base_lr: f64,
    /// Absolute peak learning rate (overrides `base_lr`).
    pub lr: Option<f64>,
    /// Learning rate at the end of the cosine.
    pub min_lr: f64,
    /// Warmup epochs.
    pub warmup_epochs: f64,
    /// Layer-wise lr decay (1.0 = none).
    pub layer_decay: f64,
    /// AdamW weight decay (on the parameters the official script decays, see
    /// [`Classifier::no_weight_decay`]).
    pub weight_decay: f64,
    /// Global gradient-norm clipping (MAE's `--clip_grad`; none by default, as there).
    pub clip_grad: Option<f64>,
    /// Stochastic depth rate of the last block.
    pub drop_path: f64,
    /// Label smoothing.
    pub smoothing: f64,
    /// Mixup Beta(α, α) parameter (0 = off; the recipe uses 0.8).
    pub mixup: f64,
    /// CutMix Beta(α, α) parameter (0 = off; the recipe uses 1.0). With both on, one of the two
    /// is picked per batch with probability 0.5.
    pub cutmix: f64,
    /// Area range of the random resized crop.
    pub crop_scale: (f64, f64),
    /// Seed of the head, shuffling, augmentation, mixing and drop path.
    pub seed: u64,
    /// Use only the first N training images.
    pub max_images: Option<usize>,
    /// `cpu`, or `cuda:N` in a CUDA build.
    pub device: String,
    /// Batches the loader prepares ahead.
    pub prefetch: usize,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        Self {
            data: PathBuf::from("data/fashion-mnist-subset"),
            out: PathBuf::from("runs/finetune"),
            checkpoint: None,
            model: "mae_tiny_28".into(),
            pool: Pool::Avg,
            trainable_blocks: None,
            epochs: 100,
            batch_size: 128,
            accum_iter: 1,
            base_lr: 5e-4,
            lr: None,
            min_lr: 1e-6,
            warmup_epochs: 5.0,
            layer_decay: 0.75,
            weight_decay: 0.05,
            clip_grad: None,
            drop_path: 0.1,
            smoothing: 0.1,
            mixup: 0.0,
            cutmix: 0.0,
            crop_scale: (0.08, 1.0),
            seed: 0,
            max_images: None,
            device: "cpu".into(),
            prefetch: 4,
        }
    }
}

impl FinetuneConfig {
    /// The training step of `model` as MAE's `main_finetune.py`: AdamW with PyTorch's betas, the
    /// model's weight-decay exemptions, layer-wise lr decay (`param_groups_lrd`), the per-iteration
    /// half-cosine schedule and optional clipping; `optimizer` state when resuming.
    pub fn stepper<C: Classifier>(&self, model: &C, iters_per_epoch: usize, optimizer: Option<Bytes>) -> Result<Stepper<C>> {
        let mut optim = adamw(model, self.weight_decay, TORCH_BETAS, C::no_weight_decay);
        if let Some(bytes) = optimizer {
            optim = optim.from_bytes(bytes).map_err(|e| anyhow::anyhow!("cannot read the checkpoint's optimizer state: {e:?}"))?;
        }
        let paths = param_ranks(model);
        let depth = model.depth();
        let decay = LayerDecay::new(paths.iter().map(|(p, _)| p.as_str()), depth + 1, self.layer_decay, |p| model.layer_id(p));
        let schedule = LrSchedule {
            kind: ScheduleKind::Mae,
            lr: self.peak_lr(),
            min_lr: self.min_lr,
            warmup_lr: 0.0,
            warmup_epochs: self.warmup_epochs,
            epochs: self.epochs,
            iters_per_epoch,
        };
        Ok(Stepper::new(optim, schedule, self.accum_iter).with_clip_grad(self.clip_grad).with_layer_decay(decay))
    }

    /// Reads a TOML file; unknown keys are errors.
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        crate::io::read_toml(path)
    }

    /// Peak learning rate: `lr`, or `base_lr x batch x accum / 256`.
    pub fn peak_lr(&self) -> f64 {
        self.lr.unwrap_or(self.base_lr * (self.batch_size * self.accum_iter) as f64 / 256.0)
    }

    /// Checks values are usable, naming the flag to change.
    pub fn validate(&self) -> Result<()> {
        ensure!(self.epochs > 0, "--epochs must be at least 1");
        ensure!(self.batch_size > 0 && self.accum_iter > 0, "--batch-size and --accum-iter must be at least 1");
        ensure!(self.layer_decay > 0.0 && self.layer_decay <= 1.0, "--layer-decay {} must be in (0, 1]", self.layer_decay);
        ensure!((0.0..1.0).contains(&self.drop_path), "--drop-path {} must be in [0, 1)", self.drop_path);
        ensure!((0.0..1.0).contains(&self.smoothing), "--smoothing {} must be in [0, 1)", self.smoothing);
        ensure!(self.clip_grad.is_none_or(|c| c.is_finite()), "--clip-grad must be finite (0 turns clipping off)");
        ensure!(self.mixup >= 0.0 && self.cutmix >= 0.0, "--mixup and --cutmix are Beta parameters: 0 (off) or positive");
        let (lo, hi) = self.crop_scale;
        ensure!(0.0 < lo && lo <= hi && hi <= 1.0, "crop_scale ({lo}, {hi}) must satisfy 0 < min <= max <= 1");
        super::pretrain::check_optimizer_numbers(self.peak_lr(), "--base-lr / --lr", self.min_lr, self.warmup_epochs, self.weight_decay)?;
        Ok(())
    }
}

/// Test accuracy after an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EpochResult {
    /// 1-based epoch.
    pub epoch: u64,
    /// Mean training loss of the epoch.
    pub train_loss: f64,
    /// Test top-1 (percent).
    pub top1: f64,
    /// Test top-5 (percent).
    pub top5: f64,
    /// Seconds since this process started training.
    pub elapsed_s: f64,
}

/// What a fine-tuning run produced.
pub struct FinetuneSummary {
    /// Per-epoch results of this process.
    pub epochs: Vec<EpochResult>,
    /// Best test top-1 (percent) over the whole run and its epoch.
    pub best: (f64, u64),
    /// Last checkpoint (resumable) and best checkpoint.
    pub checkpoints: (PathBuf, PathBuf),
}

/// The training loss of micro-batch `iteration`: mixup / cutmix and label smoothing of the
/// targets, stochastic depth (both drawn from the run's seed and `iteration`), soft-target
/// cross-entropy (timm's `LabelSmoothingCrossEntropy` when nothing is mixed).
pub fn batch_loss<C: Classifier>(model: &C, batch: &mut Batch, classes: usize, cfg: &FinetuneConfig, iteration: u64, frozen_blocks: usize, device: &Device) -> Tensor<1> {
    let b = batch.len();
    let targets = mix_batch(batch, classes, cfg, &mut rng_for(&[cfg.seed, iteration, MIX_STREAM]));
    let targets = Tensor::<2>::from_data(TensorData::new(targets, [b, classes]), device);
    let logits = model.forward_train(batch.tensor(device), &mut rng_for(&[cfg.seed, iteration, DROP_STREAM]), frozen_blocks);
    soft_cross_entropy(logits, targets)
}

/// Mixes a batch with its reverse (timm's `Mixup`, batch mode) and returns the soft targets
/// `[B * classes]`: mixup blends whole images, cutmix pastes a box whose area is `1 - λ`.
pub fn mix_batch(batch: &mut Batch, classes: usize, cfg: &FinetuneConfig, rng: &mut impl Rng) -> Vec<f32> {
    let target = smoothed_targets(&batch.labels, classes, cfg.smoothing);
    if cfg.mixup <= 0.0 && cfg.cutmix <= 0.0 {
        return target;
    }
    let use_cutmix = cfg.cutmix > 0.0 && (cfg.mixup <= 0.0 || rng.gen_bool(0.5));
    let alpha = if use_cutmix { cfg.cutmix } else { cfg.mixup };
    let mut lam = Beta::new(alpha, alpha).expect("positive Beta parameters").sample(rng);
    let (b, s) = (batch.len(), batch.side);
    let per = batch.channels * s * s;
    let orig = batch.images.clone();
    if use_cutmix {
        let cut = ((1.0 - lam).sqrt() * s as f64) as usize;
        let (cy, cx) = (rng.gen_range(0..s), rng.gen_range(0..s));
        let (y0, y1) = (cy.saturating_sub(cut / 2), (cy + cut / 2).min(s));
        let (x0, x1) = (cx.saturating_sub(cut / 2), (cx + cut / 2).min(s));
        for i in 0..b {
            let j = b - 1 - i;
            for c in 0..batch.channels {
                for y in y0..y1 {
                    let row = c * s * s + y * s;
                    batch.images[i * per + row + x0..i * per + row + x1].copy_from_slice(&orig[j * per + row + x0..j * per + row + x1]);
                }
            }
        }
        lam = 1.0 - ((y1 - y0) * (x1 - x0)) as f64 / (s * s) as f64;
    } else {
        for i in 0..b {
            let j = b - 1 - i;
            for k in 0..per {
                batch.images[i * per + k] = (lam * orig[i * per + k] as f64 + (1.0 - lam) * orig[j * per + k] as f64) as f32;
            }
        }
    }
    (0..b * classes)
        .map(|k| {
            let (i, c) = (k / classes, k % classes);
            (lam * target[k] as f64 + (1.0 - lam) * target[(b - 1 - i) * classes + c] as f64) as f32
        })
        .collect()
}

/// File names inside the output folder.
pub fn last_checkpoint(out: &Path) -> PathBuf {
    out.join("checkpoint.mim")
}
/// The checkpoint of the best test top-1.
pub fn best_checkpoint(out: &Path) -> PathBuf {
    out.join("best.mim")
}
/// One JSON line per epoch.
pub fn results_path(out: &Path) -> PathBuf {
    out.join("eval.jsonl")
}

/// Reads the per-epoch results of a run.
pub fn read_results(path: &Path) -> Result<Vec<EpochResult>> {
    crate::io::read_jsonl(path, "results")
}

/// Drops results of epochs after `epoch` (a resumed run redoes them).
fn keep_results_up_to(path: &Path, epoch: u64) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let kept: String = read_results(path)?.iter().filter(|r| r.epoch <= epoch).map(|r| format!("{}\n", serde_json::to_string(r).unwrap())).collect();
    crate::io::write_atomic(path, &[kept.as_bytes()])
}

/// How a classifier family starts a run and comes back from a checkpoint.
trait Recipe: Classifier {
    /// The classifier to fine-tune (from `cfg.checkpoint`, or fresh), with its encoder architecture.
    fn start(cfg: &FinetuneConfig, classes: usize, channels: usize, device: &Device) -> Result<(ModelConfig, Self)>;
    /// An empty classifier to load a fine-tuning checkpoint into.
    fn empty(model: &ModelConfig, spec: &ClassifierSpec, cfg: &FinetuneConfig, device: &Device) -> Result<Self>;
}

impl Recipe for VitClassifier {
    fn start(cfg: &FinetuneConfig, classes: usize, channels: usize, device: &Device) -> Result<(ModelConfig, Self)> {
        let (mae, mcfg) = match &cfg.checkpoint {
            Some(path) => {
                let ck = checkpoint::load(path, device)?;
                (ck.model, ck.header.model.mae()?.clone())
            }
            None => {
                let mut m = MaeConfig::preset(&cfg.model)?;
                m.in_chans = channels;
                (m.init(cfg.seed, device)?, m)
            }
        };
        let model = VitClassifier::from_mae(mae, classes, cfg.pool, 2e-5, cfg.seed).with_drop_path(cfg.drop_path);
        Ok((ModelConfig::Mae(mcfg), model))
    }

    fn empty(model: &ModelConfig, spec: &ClassifierSpec, cfg: &FinetuneConfig, device: &Device) -> Result<Self> {
        Ok(VitClassifier::from_scratch(model.mae()?, spec.num_classes, spec.pool, 0, device)?.with_drop_path(cfg.drop_path))
    }
}

impl Recipe for BeitClassifier {
    fn start(cfg: &FinetuneConfig, classes: usize, channels: usize, device: &Device) -> Result<(ModelConfig, Self)> {
        let (encoder, bcfg) = match &cfg.checkpoint {
            Some(path) => {
                let ck = checkpoint::load_model(path, device, BeitForMaskedImageModeling::build)?;
                let ModelConfig::Beit(b) = ck.header.model.clone() else { unreachable!("BEiT's build accepts only BEiT configs") };
                (ck.model, b)
            }
            None => {
                let mut b = BeitConfig::preset(&cfg.model)?;
                b.in_chans = channels;
                (b.init(cfg.seed, device)?, b)
            }
        };
        Ok((ModelConfig::Beit(bcfg), BeitClassifier::new(encoder, classes, cfg.drop_path, cfg.seed)))
    }

    fn empty(model: &ModelConfig, spec: &ClassifierSpec, cfg: &FinetuneConfig, device: &Device) -> Result<Self> {
        match model {
            ModelConfig::Beit(b) => Ok(BeitClassifier::new(b.init(0, device)?, spec.num_classes, cfg.drop_path, 0)),
            other => bail!("a fine-tuning checkpoint of a {} encoder cannot resume as a BEiT classifier", other.kind()),
        }
    }
}

impl Recipe for SwinTransformer {
    fn start(cfg: &FinetuneConfig, classes: usize, channels: usize, device: &Device) -> Result<(ModelConfig, Self)> {
        match &cfg.checkpoint {
            Some(path) => {
                let ck = checkpoint::load_model(path, device, SimMim::build)?;
                let ModelConfig::Swin(scfg) = ck.header.model.clone() else { unreachable!("SimMim::build accepts only Swin configs") };
                let model = swin_from_simmim(ck.model, &scfg, classes, cfg.drop_path, cfg.seed)?;
                Ok((ModelConfig::Swin(scfg), model))
            }
            None => {
                let mut scfg = SwinConfig::preset(&cfg.model)?;
                scfg.in_chans = channels;
                let model = swin_from_scratch(&scfg, classes, cfg.drop_path, cfg.seed, device)?;
                Ok((ModelConfig::Swin(scfg), model))
            }
        }
    }

    fn empty(model: &ModelConfig, spec: &ClassifierSpec, cfg: &FinetuneConfig, device: &Device) -> Result<Self> {
        match model {
            ModelConfig::Swin(scfg) => swin_from_scratch(scfg, spec.num_classes, cfg.drop_path, 0, device),
            other => bail!("a fine-tuning checkpoint of a {} encoder cannot resume as a Swin classifier", other.kind()),
        }
    }
}

/// Fine-tunes (or trains from scratch); with `resume`, continues the run saved in that
/// checkpoint from the end of its last completed epoch. The encoder family (ViT from MAE, Swin
/// from SimMIM, BEiT) follows the checkpoint, or the preset name when training from scratch.
pub fn finetune(cfg: &FinetuneConfig, resume: Option<&Path>, reporter: &mut dyn Reporter) -> Result<FinetuneSummary> {
    let family = match resume.or(cfg.checkpoint.as_deref()) {
        Some(path) => checkpoint::read_header(path)?.model.kind(),
        None if cfg.model.starts_with("swin") => "Swin",
        None if cfg.model.starts_with("beit") => "BEiT",
        None => "MAE",
    };
    match family {
        "MAE" => run::<VitClassifier>(cfg, resume, reporter),
        "Swin" => run::<SwinTransformer>(cfg, resume, reporter),
        _ => run::<BeitClassifier>(cfg, resume, reporter),
    }
}

fn run<C: Recipe>(cfg: &FinetuneConfig, resume: Option<&Path>, reporter: &mut dyn Reporter) -> Result<FinetuneSummary> {
    cfg.validate()?;
    let device = crate::runtime::device(&cfg.device)?;
    let ad = device.clone().autodiff();
    let mut train = Dataset::open(&cfg.data, Split::Train)?;
    if let Some(n) = cfg.max_images {
        train.truncate(n);
    }
    let test = Dataset::open(&cfg.data, Split::Test)?;
    let classes = train.classes.len();
    let spe = train.len() / cfg.batch_size;
    ensure!(spe > 0, "the training split has {} images, fewer than one batch of {}: lower --batch-size", train.len(), cfg.batch_size);

    // Taken before the folder is looked at, and held to the end: a second run into the same
    // folder is refused instead of interleaving its checkpoints and metrics with this one's.
    let _lock = super::lock::lock_run_dir(&cfg.out)?;
    let (model_cfg, mut model, optimizer, mut best, start_epoch) = match resume {
        Some(path) => {
            let ck = checkpoint::load_classifier(path, |m, spec| C::empty(m, spec, cfg, &ad))?;
            let saved: FinetuneConfig = serde_json::from_value(ck.header.train.clone())?;
            if saved.seed != cfg.seed || saved.batch_size != cfg.batch_size || saved.checkpoint != cfg.checkpoint {
                bail!("'{}' was fine-tuned with another seed, batch size or pretrained checkpoint: resume with the same settings", path.display());
            }
            let best = ck.header.classifier.as_ref().and_then(|c| c.best).unwrap_or((0.0, 0));
            (ck.header.model, ck.model, ck.optimizer, best, ck.header.epoch)
        }
        None => {
            if last_checkpoint(&cfg.out).exists() {
                bail!("'{}' already holds a run: pass --resume to continue it, or choose another --out (nothing was overwritten)", cfg.out.display());
            }
            let (mcfg, model) = C::start(cfg, classes, train.channels, &ad)?;
            let model = checkpoint::number_params(model);
            (mcfg, model, None, (0.0, 0), 0)
        }
    };
    let depth = model.depth();
    let frozen = match cfg.trainable_blocks {
        Some(k) => {
            ensure!(k <= depth, "--trainable-blocks {k} exceeds the encoder's {depth} blocks");
            depth - k
        }
        None => 0,
    };
    model = model.freeze_first(frozen);
    let mut stepper = cfg.stepper(&model, spe, optimizer)?;

    std::fs::create_dir_all(&cfg.out).with_context(|| format!("cannot create output folder '{}'", cfg.out.display()))?;
    keep_results_up_to(&results_path(&cfg.out), start_epoch)?;
    let mut results = std::fs::OpenOptions::new().create(true).append(true).open(results_path(&cfg.out)).with_context(|| format!("cannot write '{}'", results_path(&cfg.out).display()))?;
    let train = Arc::new(train);
    let side = model_cfg.img_size();
    let transform = Transform::RandomResizedCrop { size: side, scale: cfg.crop_scale, ratio: (3.0 / 4.0, 4.0 / 3.0), hflip: true, color_jitter: 0.0 };
    let source = cfg.checkpoint.as_ref().map_or_else(|| format!("{} from scratch", cfg.model), |p| format!("encoder of {}", p.display()));
    let about = format!(
        "fine-tune {source} on {} ({} classes) | {} | layer decay {} | peak lr {:.2e} | {} epochs x {spe} iterations",
        train.name,
        classes,
        match cfg.trainable_blocks {
            Some(k) => format!("last {k} of {depth} blocks trainable"),
            None => "all blocks trainable".into(),
        },
        cfg.layer_decay,
        cfg.peak_lr(),
        cfg.epochs
    );
    let total = (cfg.epochs * spe) as u64;
    let mut it = start_epoch * spe as u64;
    reporter.start(total, it, &about);
    let started = Instant::now();
    let mut history = Vec::new();
    let mut recent = std::collections::VecDeque::new();
    for epoch in start_epoch..cfg.epochs as u64 {
        let loader = Prefetcher::spawn(train.clone(), transform.clone(), epoch_order(train.len(), cfg.seed, epoch), cfg.batch_size, 0, cfg.seed, epoch, cfg.prefetch);
        let (mut loss_sum, mut lr) = (0.0, 0.0);
        let mut t0 = Instant::now();
        for batch in loader {
            let mut batch = batch?;
            let b = batch.len();
            let loss = batch_loss(&model, &mut batch, classes, cfg, it, frozen, &ad);
            let value = loss.clone().into_scalar::<f32>() as f64;
            ensure!(value.is_finite(), "the loss is {value} at iteration {it}: training diverged; lower --base-lr or raise --warmup-epochs");
            loss_sum += value;
            let update;
            (model, update) = stepper.backward(model, loss, it);
            if let Some(u) = update {
                lr = u.lr;
            }
            it += 1;
            recent.push_back((b, t0.elapsed().as_secs_f64()));
            if recent.len() > 20 {
                recent.pop_front();
            }
            let rate = recent.iter().map(|r| r.0).sum::<usize>() as f64 / recent.iter().map(|r| r.1).sum::<f64>().max(1e-9);
            reporter.step(&StepMetrics { iteration: it, epoch, loss: value, lr, images_per_sec: rate, elapsed_s: started.elapsed().as_secs_f64() });
            t0 = Instant::now();
        }
        let (top1, top5) = evaluate(&model.valid(), &test, side, 256, &device)?;
        let r = EpochResult { epoch: epoch + 1, train_loss: loss_sum / spe as f64, top1, top5, elapsed_s: started.elapsed().as_secs_f64() };
        writeln!(results, "{}", serde_json::to_string(&r)?).with_context(|| format!("cannot write '{}'", results_path(&cfg.out).display()))?;
        results.flush().with_context(|| format!("cannot write '{}'", results_path(&cfg.out).display()))?;
        let improved = top1 > best.0;
        if improved {
            best = (top1, epoch + 1);
        }
        let header = CheckpointHeader {
            mim_version: env!("CARGO_PKG_VERSION").into(),
            model: model_cfg.clone(),
            // Without the output folder: the same run gives the same bytes wherever it is written.
            train: serde_json::to_value(FinetuneConfig { out: PathBuf::new(), ..cfg.clone() })?,
            iteration: it,
            optimizer_steps: it / cfg.accum_iter as u64,
            epoch: epoch + 1,
            seed: cfg.seed,
            classifier: Some(ClassifierSpec { num_classes: classes, pool: cfg.pool, best: Some(best) }),
        };
        checkpoint::save(&last_checkpoint(&cfg.out), &header, &model, Some(stepper.optimizer()))?;
        if improved {
            checkpoint::save(&best_checkpoint(&cfg.out), &header, &model, None)?;
        }
        reporter.message(&format!(
            "epoch {}: test top-1 {top1:.2}% top-5 {top5:.2}% (best {:.2}% at epoch {}), train loss {:.4}",
            epoch + 1,
            best.0,
            best.1,
            r.train_loss
        ));
        history.push(r);
    }
    reporter.finish();
    Ok(FinetuneSummary { epochs: history, best, checkpoints: (last_checkpoint(&cfg.out), best_checkpoint(&cfg.out)) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(b: usize) -> Batch {
        Batch { images: (0..b * 16).map(|k| (k / 16) as f32).collect(), labels: (0..b as u32).collect(), indices: (0..b).collect(), channels: 1, side: 4 }
    }

    #[test]
    fn mixed_targets_sum_to_one_and_match_the_pixel_mix() {
        let mut rng = rng_for(&[1]);
        for (mixup, cutmix) in [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)] {
            let cfg = FinetuneConfig { mixup, cutmix, smoothing: 0.1, ..Default::default() };
            let mut b = batch(4);
            let t = mix_batch(&mut b, 4, &cfg, &mut rng);
            for (i, row) in t.chunks(4).enumerate() {
                assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
                // Image i mixes itself (value i) with image 3 - i: the mean pixel tells the weight.
                let mean = b.images[i * 16..(i + 1) * 16].iter().sum::<f32>() / 16.0;
                if i != 3 - i {
                    let lam = (mean - (3 - i) as f32) / (i as f32 - (3 - i) as f32);
                    let expected = lam * (0.9 + 0.025) + (1.0 - lam) * 0.025;
                    assert!((row[i] - expected).abs() < 1e-4, "{mixup} {cutmix}: target {} vs pixel weight {lam}", row[i]);
                }
            }
        }
    }

    #[test]
    fn without_mixing_targets_are_smoothed_one_hot() {
        let cfg = FinetuneConfig { smoothing: 0.2, ..Default::default() };
        let mut b = batch(2);
        let t = mix_batch(&mut b, 4, &cfg, &mut rng_for(&[2]));
        assert_eq!(t, vec![0.85, 0.05, 0.05, 0.05, 0.05, 0.85, 0.05, 0.05]);
    }
}
