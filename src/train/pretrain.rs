//! The MAE pretraining loop (`mim pretrain`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use burn::tensor::{Bytes, Tensor};
use serde::{Deserialize, Serialize};

use super::checkpoint::{self, CheckpointHeader};
use super::optim::{LrSchedule, Stepper, adamw};
use crate::data::augment::Transform;
use crate::data::loader::{Prefetcher, epoch_order, rng_for};
use crate::data::{Dataset, Split};
use super::methods::{Method, MimModel, ModelConfig, StepContext};
use super::tokenizer::{load_tokenizer, read_tokenizer_header};
use crate::masking::{MaskStrategy, check_ratio};
use crate::eval::extract;
use crate::eval::knn::{KnnConfig, knn_accuracy};
use crate::models::beit::{BeitConfig, BeitForMaskedImageModeling};
use crate::models::mae::{MaeConfig, MaeTarget, MaskedAutoencoder};
use crate::models::simmim::SimMim;
use crate::models::swin::SwinConfig;

/// Random stream id of the masking noise (kept apart from augmentation and shuffling).
use crate::masking::MASK_STREAM;

/// Pretraining settings; read from TOML (`mim pretrain --config FILE`) and/or CLI flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PretrainConfig {
    /// Dataset path (see [`Dataset::open`]).
    pub data: PathBuf,
    /// Output folder: checkpoint, metrics, loss curve, exported weights.
    pub out: PathBuf,
    /// Pretraining method.
    pub method: Method,
    /// Model preset ([`MaeConfig::PRESETS`] for MAE, [`SwinConfig::PRESETS`] for SimMIM); default:
    /// the method's small preset.
    pub model: Option<String>,
    /// Input side in pixels (default: the preset's).
    pub img_size: Option<usize>,
    /// Fraction of patches masked (default: the method's paper, MAE 0.75, BEiT 0.4, SimMIM 0.6 of
    /// mask squares).
    pub mask_ratio: Option<f64>,
    /// Another masking strategy than the method's own (TOML `[mask]` table with `kind = "block"`,
    /// `"grid"`, `"random"` or `"sim_mim"`; MAE keeps exactly `mask_ratio` of patches removed).
    pub mask: Option<MaskStrategy>,
    /// Per-patch normalised pixel targets.
    pub norm_pix_loss: bool,
    /// MAE: what the decoder predicts at removed patches (pixels; the largest PCA coefficients of
    /// the patch, basis fitted on the first 2,000 training images; or the ids of `--tokenizer`).
    pub target: Target,
    /// MAE ablation "encoder w/ [M]" (Table 1c): removed patches enter the encoder as a learned
    /// mask token instead of being dropped.
    pub encoder_mask_token: bool,
    /// MAE decoder blocks (default: the preset's).
    pub decoder_depth: Option<usize>,
    /// MAE decoder width (default: the preset's); its heads become width / 32.
    pub decoder_embed_dim: Option<usize>,
    /// Pretraining augmentation (default: the method's paper, colour jitter for BEiT, random
    /// resized crop + flip otherwise).
    pub augmentation: Option<Augmentation>,
    /// Passes over the data.
    pub epochs: usize,
    /// Images per forward/backward.
    pub batch_size: usize,
    /// Batches whose gradients are summed before each optimizer update.
    pub accum_iter: usize,
    /// Learning rate per 256 images of effective batch.
    pub base_lr: f64,
    /// Absolute peak learning rate (overrides `base_lr`).
    pub lr: Option<f64>,
    /// Learning rate at the end of the cosine.
    pub min_lr: f64,
    /// Warmup epochs (default: 5% of the epochs, at most 40, the paper's 40 of 800).
    pub warmup_epochs: Option<f64>,
    /// AdamW weight decay (on the parameters the method's official script decays, see
    /// [`MimModel::no_weight_decay`]).
    pub weight_decay: f64,
    /// Learning rate the warm-up starts from (SimMIM's `WARMUP_LR`; MAE and BEiT start at 0).
    pub warmup_lr: f64,
    /// Global gradient-norm clipping (default: the method's recipe, MAE none, BEiT 3.0, SimMIM
    /// 5.0; 0 turns it off).
    pub clip_grad: Option<f64>,
    /// Seed of initialisation, shuffling, augmentation and masking.
    pub seed: u64,
    /// Save a checkpoint every this many epochs (and always at the end).
    pub checkpoint_every: usize,
    /// Use only the first N training images.
    pub max_images: Option<usize>,
    /// `cpu`, or `cuda:N` in a CUDA build.
    pub device: String,
    /// BEiT: the visual tokenizer checkpoint (`mim tokenizer train`) whose ids are the targets.
    pub tokenizer: Option<PathBuf>,
    /// Batches the loader prepares ahead of the training step.
    pub prefetch: usize,
    /// Every this many epochs, k-NN accuracy of the encoder's features on the test split
    /// (a monitor; 0 = never). Results go to `knn.jsonl` in the output folder.
    pub eval_every: usize,
    /// Training images in the k-NN memory bank of the monitor.
    pub knn_images: usize,
}

impl Default for PretrainConfig {
    fn default() -> Self {
        Self {
            data: PathBuf::from("data/fashion-mnist-subset"),
            out: PathBuf::from("runs/mae"),
            method: Method::Mae,
            model: None,
            img_size: None,
            mask_ratio: None,
            mask: None,
            tokenizer: None,
            encoder_mask_token: false,
            target: Target::Pixels,
            decoder_depth: None,
            decoder_embed_dim: None,
            augmentation: None,
            norm_pix_loss: true,
            epochs: 10,
            batch_size: 256,
            accum_iter: 1,
            base_lr: 1.5e-4,
            lr: None,
            min_lr: 0.0,
            warmup_epochs: None,
            weight_decay: 0.05,
            warmup_lr: 0.0,
            clip_grad: None,
            seed: 0,
            checkpoint_every: 1,
            max_images: None,
            device: "cpu".into(),
            prefetch: 4,
            eval_every: 0,
            knn_images: 10_000,
        }
    }
}

impl PretrainConfig {
    /// Reads a TOML file; unknown keys are errors (a typo should not silently fall back to a default).
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        crate::io::read_toml(path)
    }

    /// Images per optimizer update.
    pub fn effective_batch(&self) -> usize {
        self.batch_size * self.accum_iter
    }

    /// Peak learning rate: `lr`, or `base_lr x effective batch / 256`.
    pub fn peak_lr(&self) -> f64 {
        self.lr.unwrap_or(self.base_lr * self.effective_batch() as f64 / 256.0)
    }

    /// Warmup length in epochs.
    pub fn warmup(&self) -> f64 {
        self.warmup_epochs.unwrap_or((self.epochs as f64 * 0.05).min(40.0))
    }

    /// The learning-rate schedule of the method's script, for `iters_per_epoch` micro-batches an epoch.
    pub fn schedule(&self, iters_per_epoch: usize) -> LrSchedule {
        LrSchedule {
            kind: self.method.schedule(),
            lr: self.peak_lr(),
            min_lr: self.min_lr,
            warmup_lr: self.warmup_lr,
            warmup_epochs: self.warmup(),
            epochs: self.epochs,
            iters_per_epoch,
        }
    }

    /// Gradient clipping in effect.
    pub fn clip(&self) -> Option<f64> {
        self.clip_grad.or(self.method.default_clip_grad()).filter(|&c| c > 0.0)
    }

    /// The training step of this run for `model` (`M` is the method's model): the official
    /// script's parameter groups, betas, schedule and clipping, with `optimizer` state if resuming.
    pub fn stepper<M: MimModel>(&self, model: &M, iters_per_epoch: usize, optimizer: Option<Bytes>) -> Result<Stepper<M>> {
        let mut optim = adamw(model, self.weight_decay, self.method.betas(), M::no_weight_decay);
        if let Some(bytes) = optimizer {
            optim = optim.from_bytes(bytes).map_err(|e| anyhow::anyhow!("cannot read the checkpoint's optimizer state: {e:?}"))?;
        }
        Ok(Stepper::new(optim, self.schedule(iters_per_epoch), self.accum_iter).with_clip_grad(self.clip()))
    }

    /// The mask ratio in effect.
    pub fn ratio(&self) -> f64 {
        self.mask_ratio.unwrap_or(self.method.default_mask_ratio())
    }

    /// The preset this configuration trains.
    pub fn model_name(&self) -> &str {
        self.model.as_deref().unwrap_or(self.method.default_model())
    }

    /// The model this configuration trains on data with `channels` channels.
    pub fn model_config(&self, channels: usize) -> Result<ModelConfig> {
        let name = self.model_name();
        let cfg = match self.method {
            Method::Mae => {
                let mut m = MaeConfig::preset(name)?;
                m.in_chans = channels;
                m.norm_pix_loss = self.norm_pix_loss;
                m.encoder_mask_token = self.encoder_mask_token;
                if let Some(s) = self.img_size {
                    m.img_size = s;
                }
                m.target = match self.target {
                    Target::Pixels => MaeTarget::Pixels,
                    // The paper keeps 96 of 768 dimensions; tiny patches keep at least 8.
                    Target::Pca => MaeTarget::Pca { components: (m.patch_dim() / 8).max(8).min(m.patch_dim()) },
                    Target::Tokens => {
                        let path = self.tokenizer.as_ref().context(
                            "--target tokens predicts a visual tokenizer's ids: pass --tokenizer FILE (train one with `mim tokenizer train`)",
                        )?;
                        let t = read_tokenizer_header(path)?.model;
                        t.check_patch_grid("MAE", m.img_size, m.patch_size, m.in_chans)?;
                        MaeTarget::Tokens { vocab_size: t.vocab_size }
                    }
                };
                if let Some(d) = self.decoder_depth {
                    m.decoder_depth = d;
                }
                if let Some(w) = self.decoder_embed_dim {
                    m.decoder_embed_dim = w;
                    m.decoder_num_heads = (w / 32).max(1);
                }
                m.validate()?;
                ModelConfig::Mae(m)
            }
            Method::Beit => {
                let mut m = BeitConfig::preset(name).map_err(|e| anyhow::anyhow!("{e} (--method beit trains a BEiT)"))?;
                m.in_chans = channels;
                if let Some(s) = self.img_size {
                    m.img_size = s;
                }
                m.validate()?;
                ModelConfig::Beit(m)
            }
            Method::Simmim => {
                let mut m = SwinConfig::preset(name).map_err(|e| anyhow::anyhow!("{e} (--method simmim trains a Swin Transformer)"))?;
                m.in_chans = channels;
                if let Some(s) = self.img_size {
                    m.img_size = s;
                }
                m.validate()?;
                ModelConfig::Swin(m)
            }
        };
        if let Some(strategy) = &self.mask {
            strategy.validate((cfg.grid(), cfg.grid()))?;
        }
        Ok(cfg)
    }

    /// Checks values are usable, naming the flag to change.
    pub fn validate(&self) -> Result<()> {
        check_ratio(self.ratio())?;
        ensure!(
            self.method == Method::Mae || self.target == Target::Pixels,
            "--target {:?} is an MAE option: BEiT predicts tokens and SimMIM pixels by design",
            self.target
        );
        ensure!(
            self.method == Method::Beit || self.target == Target::Tokens || self.tokenizer.is_none(),
            "--tokenizer is for --method beit (or an MAE with --target tokens)"
        );
        ensure!(
            self.method != Method::Beit || self.tokenizer.is_some(),
            "BEiT predicts visual tokens: pass --tokenizer FILE (train one with `mim tokenizer train`)"
        );
        ensure!(
            self.method == Method::Mae || !self.encoder_mask_token,
            "encoder_mask_token is an MAE ablation: BEiT and SimMIM always put their mask token in the encoder"
        );
        ensure!(self.epochs > 0, "--epochs must be at least 1");
        ensure!(self.batch_size > 0, "--batch-size must be at least 1");
        ensure!(self.accum_iter > 0, "--accum-iter must be at least 1");
        ensure!(self.checkpoint_every > 0, "--checkpoint-every must be at least 1");
        check_optimizer_numbers(self.peak_lr(), "--base-lr / --lr", self.min_lr, self.warmup_epochs.unwrap_or(0.0), self.weight_decay)?;
        ensure!(self.warmup_lr >= 0.0 && self.warmup_lr.is_finite(), "--warmup-lr must be a finite value >= 0");
        ensure!(self.clip_grad.is_none_or(|c| c.is_finite()), "--clip-grad must be finite (0 turns clipping off)");
        Ok(())
    }
}

/// Checks the optimizer's numbers, naming the flag: a learning rate must be positive and finite
/// (`inf` is not "not positive"), the rest finite and >= 0 (a negative weight decay grows weights).
pub fn check_optimizer_numbers(lr: f64, lr_flags: &str, min_lr: f64, warmup_epochs: f64, weight_decay: f64) -> Result<()> {
    ensure!(lr.is_finite(), "the learning rate is {lr}: it must be a finite number, check {lr_flags}");
    ensure!(lr > 0.0, "the learning rate is {lr}: it must be positive, check {lr_flags}");
    ensure!(min_lr.is_finite() && min_lr >= 0.0, "--min-lr {min_lr} must be a finite value >= 0");
    ensure!(warmup_epochs.is_finite() && warmup_epochs >= 0.0, "--warmup-epochs {warmup_epochs} must be a finite value >= 0");
    ensure!(weight_decay.is_finite() && weight_decay >= 0.0, "--weight-decay {weight_decay} must be a finite value >= 0 (0 turns it off)");
    Ok(())
}

/// MAE reconstruction target (Table 1d).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Patch pixels (normalised per patch with `norm_pix_loss`).
    #[default]
    Pixels,
    /// The largest PCA coefficients of the patch.
    Pca,
    /// The visual tokenizer's id of the patch (cross-entropy), as BEiT's target.
    Tokens,
}

/// Pretraining augmentation (MAE Table 1e).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Augmentation {
    /// The whole image, resized.
    None,
    /// A fixed-size crop (64% of the area, square) at a random place, plus flip.
    FixedCrop,
    /// Random resized crop, scale 0.2-1.0, plus flip (MAE's and SimMIM's default).
    #[default]
    RandomResizedCrop,
    /// Random resized crop, flip and colour jitter 0.4 (BEiT's default).
    RandomResizedCropColorJitter,
}

impl Augmentation {
    /// The transform to `side` pixels.
    pub fn transform(self, side: usize) -> Transform {
        match self {
            Augmentation::None => Transform::Resize { size: side },
            Augmentation::FixedCrop => Transform::RandomResizedCrop { size: side, scale: (0.64, 0.64), ratio: (1.0, 1.0), hflip: true, color_jitter: 0.0 },
            Augmentation::RandomResizedCropColorJitter => Transform::beit_pretrain(side),
            Augmentation::RandomResizedCrop => Transform::mae_pretrain(side),
        }
    }
}

/// One training iteration's numbers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepMetrics {
    /// Batches done, counting this one.
    pub iteration: u64,
    /// Epoch of this batch (0-based).
    pub epoch: u64,
    /// Loss of this batch.
    pub loss: f64,
    /// Learning rate of the most recent update.
    pub lr: f64,
    /// Training throughput over the last 20 iterations (data wait included).
    pub images_per_sec: f64,
    /// Seconds since this process started training.
    pub elapsed_s: f64,
}

/// Receives progress (the CLI draws a progress bar; tests collect losses).
pub trait Reporter {
    /// Training starts (or resumes at `done` of `total` iterations).
    fn start(&mut self, _total: u64, _done: u64, _about: &str) {}
    /// After every iteration.
    fn step(&mut self, _m: &StepMetrics) {}
    /// A line of information (checkpoint written, ...).
    fn message(&mut self, _msg: &str) {}
    /// Training ended.
    fn finish(&mut self) {}
}

/// A reporter that prints nothing.
pub struct Silent;
impl Reporter for Silent {}

/// What a finished run produced.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Per-iteration metrics of this process (after any resume point).
    pub steps: Vec<StepMetrics>,
    /// The final checkpoint.
    pub checkpoint: PathBuf,
    /// The run folder's lock, still held: the caller writes its own files (the CLI: loss.png,
    /// weights.safetensors) before dropping it, so no other run starts in between.
    pub lock: std::sync::Arc<super::lock::RunLock>,
}

/// File names inside the output folder.
pub fn checkpoint_path(out: &Path) -> PathBuf {
    out.join("checkpoint.mim")
}
/// Metrics file (one JSON object per iteration).
pub fn metrics_path(out: &Path) -> PathBuf {
    out.join("metrics.jsonl")
}

/// Keeps the metrics of iterations up to `iteration` (a resumed run rewrites what came after).
pub(crate) fn truncate_metrics(path: &Path, iteration: u64) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path)?;
    let kept: String = text
        .lines()
        .filter(|l| serde_json::from_str::<StepMetrics>(l).is_ok_and(|m| m.iteration <= iteration))
        .map(|l| format!("{l}\n"))
        .collect();
    checkpoint::write_atomic(path, &[kept.as_bytes()])
}

/// Reads a metrics file written by [`pretrain`].
pub fn read_metrics(path: &Path) -> Result<Vec<StepMetrics>> {
    crate::io::read_jsonl(path, "metrics")
}

/// k-NN accuracy (k = 20) of the encoder's features on the test split, with the first
/// `cfg.knn_images` training images as the memory bank.
fn knn_monitor<M: MimModel>(model: &M, train: &Dataset, cfg: &PretrainConfig, side: usize) -> Result<(f64, f64)> {
    let device = crate::runtime::device(&cfg.device)?;
    let model = model.valid();
    let encode = |imgs: Tensor<4>| model.features(imgs);
    let mut bank = train.clone();
    bank.truncate(cfg.knn_images);
    let test = Dataset::open(&cfg.data, Split::Test).context("the k-NN monitor (--eval-every) needs a test split")?;
    let f_train = extract(Some(&encode), &bank, side, 256, &device, &mut |_| {})?;
    let f_test = extract(Some(&encode), &test, side, 256, &device, &mut |_| {})?;
    knn_accuracy(&f_train, &f_test, train.classes.len(), KnnConfig::default(), &device)
}

/// Pretrains with `cfg.method`; with `resume`, continues the run saved in that checkpoint on
/// exactly the trajectory an uninterrupted run would have followed.
pub fn pretrain(cfg: &PretrainConfig, resume: Option<&Path>, reporter: &mut dyn Reporter) -> Result<Summary> {
    match cfg.method {
        Method::Mae => run::<MaskedAutoencoder>(cfg, resume, reporter),
        Method::Beit => run::<BeitForMaskedImageModeling>(cfg, resume, reporter),
        Method::Simmim => run::<SimMim>(cfg, resume, reporter),
    }
}

fn run<M: MimModel>(cfg: &PretrainConfig, resume: Option<&Path>, reporter: &mut dyn Reporter) -> Result<Summary> {
    cfg.validate()?;
    let device = crate::runtime::device(&cfg.device)?.autodiff();
    let mut ds = Dataset::open(&cfg.data, Split::Train)?;
    if let Some(n) = cfg.max_images {
        ds.truncate(n);
    }
    let model_cfg = cfg.model_config(ds.channels)?;
    let spe = ds.len() / cfg.batch_size;
    ensure!(
        spe > 0,
        "the dataset has {} images, fewer than one batch of {}: lower --batch-size or add images",
        ds.len(),
        cfg.batch_size
    );
    let ckpt_path = checkpoint_path(&cfg.out);
    // Taken before the folder is looked at, and held to the end: a second run into the same
    // folder is refused instead of interleaving its checkpoints and metrics with this one's.
    let lock = super::lock::lock_run_dir(&cfg.out)?;
    let (mut model, mut stepper, mut it) = match resume {
        Some(path) => {
            let ck = checkpoint::load_model(path, &device, M::build)?;
            if ck.header.model != model_cfg {
                bail!(
                    "checkpoint '{}' holds a different model ({:?}) from the one this configuration builds ({:?}): \
                     resume with the settings it was trained with, or start a new run with another --out",
                    path.display(),
                    ck.header.model,
                    model_cfg
                );
            }
            let saved: PretrainConfig = serde_json::from_value(ck.header.train.clone())?;
            if saved.seed != cfg.seed || saved.batch_size != cfg.batch_size || saved.max_images != cfg.max_images {
                bail!("checkpoint '{}' was trained with another seed, batch size or data subset: resume with the same settings", path.display());
            }
            checkpoint::check_iterations_per_epoch(path, ck.header.epoch, ck.header.iteration, spe, &cfg.data)?;
            let stepper = cfg.stepper(&ck.model, spe, ck.optimizer)?;
            (ck.model, stepper, ck.header.iteration)
        }
        None => {
            if ckpt_path.exists() {
                bail!(
                    "'{}' already holds a run: pass --resume to continue it, or choose another --out (nothing was overwritten)",
                    cfg.out.display()
                );
            }
            let model = checkpoint::number_params(M::build(&model_cfg, cfg.seed, &device)?.fit_to_data(&ds, &device)?);
            let stepper = cfg.stepper(&model, spe, None)?;
            (model, stepper, 0)
        }
    };
    std::fs::create_dir_all(&cfg.out).with_context(|| format!("cannot create output folder '{}'", cfg.out.display()))?;
    let mpath = metrics_path(&cfg.out);
    truncate_metrics(&mpath, it)?;
    let mut metrics = std::fs::OpenOptions::new().create(true).append(true).open(&mpath).with_context(|| format!("cannot write '{}'", mpath.display()))?;

    let ds = Arc::new(ds);
    let total = (cfg.epochs * spe) as u64;
    let side = model_cfg.img_size();
    let transform = cfg.augmentation.unwrap_or(cfg.method.default_augmentation()).transform(side);
    let tokenizer = match &cfg.tokenizer {
        Some(path) => {
            let t = load_tokenizer(path, &crate::runtime::device(&cfg.device)?)?;
            if let ModelConfig::Beit(b) = &model_cfg {
                t.header.model.check_matches(b)?;
            }
            Some(t.model)
        }
        None => None,
    };
    let masking = StepContext { ratio: cfg.ratio(), strategy: cfg.mask.clone(), grid: (model_cfg.grid(), model_cfg.grid()), tokenizer };
    let about = format!(
        "{} | {:?} {} ({} patches of {}px, mask {}{}) | batch {} x accum {} | peak lr {:.2e}{} | {} epochs x {} iterations",
        ds.name,
        cfg.method,
        cfg.model_name(),
        model_cfg.grid() * model_cfg.grid(),
        model_cfg.patch_size(),
        cfg.ratio(),
        cfg.mask.as_ref().map_or(String::new(), |m| format!(", {}", serde_json::to_string(m).unwrap_or_default())),
        cfg.batch_size,
        cfg.accum_iter,
        cfg.peak_lr(),
        cfg.clip().map_or(String::new(), |c| format!(", clip {c}")),
        cfg.epochs,
        spe
    );
    reporter.start(total, it, &about);

    let started = Instant::now();
    let mut steps = Vec::new();
    let mut recent = std::collections::VecDeque::new();
    let mut lr = 0.0;
    let mut optimizer_steps = it / cfg.accum_iter as u64;
    for epoch in (it / spe as u64)..cfg.epochs as u64 {
        let order = epoch_order(ds.len(), cfg.seed, epoch);
        let first = (it % spe as u64) as usize;
        let loader = Prefetcher::spawn(ds.clone(), transform.clone(), order, cfg.batch_size, first, cfg.seed, epoch, cfg.prefetch);
        let mut t0 = Instant::now();
        for batch in loader {
            let batch = batch?;
            let b = batch.len();
            let loss_t = model.batch_loss(&batch, &device, &masking, &mut rng_for(&[cfg.seed, it, MASK_STREAM]))?;
            let loss = loss_t.clone().into_scalar::<f32>() as f64;
            if !loss.is_finite() {
                bail!(
                    "the loss is {loss} at iteration {it}: training diverged; lower --base-lr or lengthen --warmup-epochs \
                     (the last good checkpoint, if any, is '{}')",
                    ckpt_path.display()
                );
            }
            let update;
            (model, update) = stepper.backward(model, loss_t, it);
            if let Some(u) = update {
                lr = u.lr;
                optimizer_steps += 1;
            }
            it += 1;
            recent.push_back((b, t0.elapsed().as_secs_f64()));
            if recent.len() > 20 {
                recent.pop_front();
            }
            let rate = recent.iter().map(|r| r.0).sum::<usize>() as f64 / recent.iter().map(|r| r.1).sum::<f64>().max(1e-9);
            let m = StepMetrics { iteration: it, epoch, loss, lr, images_per_sec: rate, elapsed_s: started.elapsed().as_secs_f64() };
            writeln!(metrics, "{}", serde_json::to_string(&m)?).with_context(|| format!("cannot write '{}'", mpath.display()))?;
            reporter.step(&m);
            steps.push(m);
            t0 = Instant::now();
        }
        ensure!(it == (epoch + 1) * spe as u64, "the data loader stopped early in epoch {epoch}");
        if (epoch + 1) % cfg.checkpoint_every as u64 == 0 || epoch + 1 == cfg.epochs as u64 {
            metrics.flush().with_context(|| format!("cannot write '{}'", mpath.display()))?;
            let header = CheckpointHeader {
                mim_version: env!("CARGO_PKG_VERSION").into(),
                model: model_cfg.clone(),
                // Without the output folder: the same run gives the same bytes wherever it is written.
                train: serde_json::to_value(PretrainConfig { out: PathBuf::new(), ..cfg.clone() })?,
                iteration: it,
                optimizer_steps,
                epoch: epoch + 1,
                seed: cfg.seed,
                classifier: None,
            };
            checkpoint::save(&ckpt_path, &header, &model, Some(stepper.optimizer()))?;
            reporter.message(&format!("epoch {}: checkpoint written to {}", epoch + 1, ckpt_path.display()));
        }
        if cfg.eval_every > 0 && (epoch + 1) % cfg.eval_every as u64 == 0 {
            let t0 = Instant::now();
            let (top1, top5) = knn_monitor(&model, &ds, cfg, side)?;
            let line = serde_json::json!({"epoch": epoch + 1, "iteration": it, "top1": top1, "top5": top5, "seconds": t0.elapsed().as_secs_f64()});
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(cfg.out.join("knn.jsonl")).with_context(|| format!("cannot write '{}'", cfg.out.join("knn.jsonl").display()))?;
            writeln!(f, "{line}").with_context(|| format!("cannot write '{}'", cfg.out.join("knn.jsonl").display()))?;
            reporter.message(&format!("epoch {}: {}-NN test top-1 {top1:.2}% top-5 {top5:.2}% ({:.0} s)", epoch + 1, KnnConfig::default().k, t0.elapsed().as_secs_f64()));
        }
    }
    reporter.finish();
    Ok(Summary { steps, checkpoint: ckpt_path, lock: Arc::new(lock) })
}
