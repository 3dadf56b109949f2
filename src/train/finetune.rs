//! End-to-end and partial fine-tuning (MAE's `main_finetune.py`): the pretrained encoder on every
//! patch with a new head, layer-wise lr decay, drop path, label smoothing, optional mixup/cutmix,
//! AdamW under warmup + cosine; top-1/top-5 on the test split after every epoch, the best
//! checkpoint kept. `from_scratch` trains the same architecture from random initialisation with the
//! same budget, the baseline every comparison needs. `trainable_blocks = K` freezes all but the
//! last K blocks (the paper's partial fine-tuning, figure 9).

use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use burn::optim::ModuleOptimizer;
use burn::tensor::{Bytes, Device, Tensor, TensorData};
use rand::Rng;
use rand_distr::{Beta, Distribution};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, CheckpointHeader, ClassifierSpec};
use crate::data::augment::Transform;
use crate::data::loader::Batch;
use crate::data::resize::Resample;
use crate::data::{Dataset, Split};
use crate::eval::{evaluate, smoothed_targets, soft_cross_entropy};
use crate::models::beit::BeitForMaskedImageModeling;
use crate::models::classifier::{BeitClassifier, Classifier, Pool, VitClassifier, swin_from_scratch};
use crate::models::pretrain::{MimModel, ModelConfig};
use crate::models::swin::{SwinConfig, SwinTransformer};
use crate::optim::{LayerDecay, LrSchedule, ScheduleKind, Stepper, TORCH_BETAS, adamw, param_ranks};
use crate::train::config::{OptimArgs, OptimConfig, RunArgs, RunConfig, parse_pair, settings};
use crate::train::trainer::{EpochEnd, EpochReport, Progress, Reporter, Start, Step, Task, fit, settings_for_header};
use crate::weights::Weights;

/// Random stream ids (kept apart from augmentation and shuffling).
const MIX_STREAM: u64 = 0x4D49_5855;
const DROP_STREAM: u64 = 0x4452_4F50;

settings! {
    /// Fine-tuning settings; defaults follow MAE's ViT-B fine-tuning recipe (mixup/cutmix off unless set).
    pub struct FinetuneConfig / FinetuneArgs {
        sections {
            /// Data (train and test splits), output, length, batch, seed, checkpoints, device.
            run: RunConfig / RunArgs,
            /// Learning rate, warm-up, weight decay, clipping (MAE's `--clip_grad`: none by default, as there).
            optim: OptimConfig / OptimArgs,
        }
        fields {
            /// Pretrained encoder to fine-tune: a mim pretraining checkpoint, or a weights file of any
            /// format `mim inspect` reads (official / timm / Hugging Face MAE, BEiT, SimMIM or Swin, also
            /// fine-tuned ones, whose head is replaced); unset trains --model from scratch.
            checkpoint: Option<PathBuf>,
            /// Preset trained from scratch (the baseline): an MAE, BEiT or Swin preset.
            model: String,
            /// Token pooling before the head: avg (MAE's fine-tuning) or cls.
            pool: Pool,
            /// Train only the last K blocks (plus norm and head; the paper's partial fine-tuning); unset trains
            /// everything.
            trainable_blocks: Option<usize>,
            /// Layer-wise lr decay (1 = none).
            layer_decay: f64,
            /// Stochastic depth rate of the last block.
            drop_path: f64,
            /// Label smoothing.
            smoothing: f64,
            /// Mixup Beta(α, α) parameter (0 = off; the recipe uses 0.8).
            mixup: f64,
            /// CutMix Beta(α, α) parameter (0 = off; the recipe uses 1.0). With both on, one of the two is picked per
            /// batch with probability 0.5.
            cutmix: f64,
            /// Area range of the random resized crop, as MIN,MAX.
            crop_scale: (f64, f64) [value_parser = parse_pair],
            /// Resampling of the crops: bilinear or bicubic (the official scripts' `interpolation=3`), antialiased as
            /// torchvision; unset keeps mim's plain bilinear.
            resample: Option<Resample>,
            /// Input side in pixels (the official scripts' `--input_size`): pretrained position embeddings and
            /// relative position tables are resized to it as the official fine-tuning codes do; unset keeps the
            /// pretrained model's (or the preset's).
            img_size: Option<usize>,
            /// Evaluate the test split every this many epochs and after the last (1: every epoch, as MAE's
            /// `main_finetune.py`); the best checkpoint is the best of the evaluated epochs. Long runs on few
            /// images spend most of their time on the test split otherwise.
            eval_every: usize,
        }
    }
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        Self {
            run: RunConfig {
                out: PathBuf::from("runs/finetune"),
                epochs: 100,
                batch_size: 128,
                ..RunConfig::default()
            },
            optim: OptimConfig { base_lr: 5e-4, min_lr: 1e-6, warmup_epochs: Some(5.0), ..OptimConfig::default() },
            checkpoint: None,
            model: "mae_tiny_28".into(),
            pool: Pool::Avg,
            trainable_blocks: None,
            layer_decay: 0.75,
            drop_path: 0.1,
            smoothing: 0.1,
            mixup: 0.0,
            cutmix: 0.0,
            crop_scale: (0.08, 1.0),
            resample: None,
            img_size: None,
            eval_every: 1,
        }
    }
}

impl FinetuneConfig {
    /// The training step of `model` as MAE's `main_finetune.py`: AdamW with PyTorch's betas, the
    /// model's weight-decay exemptions, layer-wise lr decay (`param_groups_lrd`), the per-iteration
    /// half-cosine schedule and optional clipping; `optimizer` state when resuming.
    pub fn stepper<C: Classifier>(
        &self,
        model: &C,
        iters_per_epoch: usize,
        optimizer: Option<Bytes>,
    ) -> Result<Stepper<C>> {
        let mut optim = adamw(model, self.optim.weight_decay, TORCH_BETAS, C::no_weight_decay);
        if let Some(bytes) = optimizer {
            optim = optim
                .from_bytes(bytes)
                .map_err(|e| anyhow::anyhow!("cannot read the checkpoint's optimizer state: {e:?}"))?;
        }
        let paths = param_ranks(model);
        let depth = model.depth();
        let decay =
            LayerDecay::new(paths.iter().map(|(p, _)| p.as_str()), depth + 1, self.layer_decay, |p| model.layer_id(p));
        let schedule = LrSchedule {
            kind: ScheduleKind::Mae,
            lr: self.peak_lr(),
            min_lr: self.optim.min_lr,
            warmup_lr: 0.0,
            warmup_epochs: self.optim.warmup(self.run.epochs),
            epochs: self.run.epochs,
            iters_per_epoch,
        };
        Ok(Stepper::new(optim, schedule, self.run.accum_iter)
            .with_clip_grad(self.optim.clip_grad)
            .with_layer_decay(decay))
    }

    /// Reads a TOML file (see [`crate::train::config::read_toml`]); unknown keys are errors.
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        crate::train::config::read_toml(path)
    }

    /// Peak learning rate: `lr`, or `base_lr x batch x accum / 256`.
    pub fn peak_lr(&self) -> f64 {
        self.optim.peak_lr(self.run.effective_batch())
    }

    /// Checks values are usable, naming the flag to change.
    pub fn validate(&self) -> Result<()> {
        self.run.validate()?;
        self.optim.validate(self.run.effective_batch())?;
        ensure!(
            self.layer_decay > 0.0 && self.layer_decay <= 1.0,
            "--layer-decay {} must be in (0, 1]",
            self.layer_decay
        );
        ensure!((0.0..1.0).contains(&self.drop_path), "--drop-path {} must be in [0, 1)", self.drop_path);
        ensure!(self.eval_every >= 1, "--eval-every must be at least 1 (the last epoch is always evaluated)");
        ensure!((0.0..1.0).contains(&self.smoothing), "--smoothing {} must be in [0, 1)", self.smoothing);
        ensure!(
            self.mixup >= 0.0 && self.cutmix >= 0.0,
            "--mixup and --cutmix are Beta parameters: 0 (off) or positive"
        );
        let (lo, hi) = self.crop_scale;
        ensure!(0.0 < lo && lo <= hi && hi <= 1.0, "--crop-scale {lo},{hi} must satisfy 0 < min <= max <= 1");
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
    /// CPU seconds (all threads) since this process started training; absent in runs recorded
    /// before it was measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_s: Option<f64>,
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

/// The training loss of the micro-batch at `step`: mixup / cutmix and label smoothing of the
/// targets, stochastic depth (both drawn from the run's seed and the step), soft-target
/// cross-entropy (timm's `LabelSmoothingCrossEntropy` when nothing is mixed).
pub fn batch_loss<C: Classifier>(
    model: &C,
    batch: &mut Batch,
    classes: usize,
    cfg: &FinetuneConfig,
    step: Step,
    frozen_blocks: usize,
    device: &Device,
) -> Tensor<1> {
    let b = batch.len();
    let targets = mix_batch(batch, classes, cfg, &mut step.rng(cfg.run.seed, MIX_STREAM));
    let targets = Tensor::<2>::from_data(TensorData::new(targets, [b, classes]), device);
    let logits = model.forward_train(batch.tensor(device), &mut step.rng(cfg.run.seed, DROP_STREAM), frozen_blocks);
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
                    batch.images[i * per + row + x0..i * per + row + x1]
                        .copy_from_slice(&orig[j * per + row + x0..j * per + row + x1]);
                }
            }
        }
        lam = 1.0 - ((y1 - y0) * (x1 - x0)) as f64 / (s * s) as f64;
    } else {
        for i in 0..b {
            let j = b - 1 - i;
            for k in 0..per {
                batch.images[i * per + k] =
                    (lam * orig[i * per + k] as f64 + (1.0 - lam) * orig[j * per + k] as f64) as f32;
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

/// How a classifier family starts a run and comes back from a checkpoint.
trait Recipe: Classifier {
    /// The classifier to fine-tune for `shape` = (classes, channels, side): from the `pretrained`
    /// weights, or a fresh `--model` at `side` pixels (the preset's when unset); with its encoder
    /// architecture.
    fn start(
        cfg: &FinetuneConfig,
        pretrained: Option<&Weights>,
        shape: (usize, usize, Option<usize>),
        device: &Device,
    ) -> Result<(ModelConfig, Self)>;
    /// An empty classifier to load a fine-tuning checkpoint into.
    fn empty(model: &ModelConfig, spec: &ClassifierSpec, cfg: &FinetuneConfig, device: &Device) -> Result<Self>;
}

/// `--model`'s preset for a run from scratch, on the dataset's channels, at `--img-size` if given.
fn preset(cfg: &FinetuneConfig, channels: usize, side: Option<usize>) -> Result<ModelConfig> {
    let mut m = ModelConfig::preset(&cfg.model)?;
    match &mut m {
        ModelConfig::Mae(c) => (c.in_chans, c.img_size) = (channels, side.unwrap_or(c.img_size)),
        ModelConfig::Beit(c) => (c.in_chans, c.img_size) = (channels, side.unwrap_or(c.img_size)),
        ModelConfig::Swin(c) => (c.in_chans, c.img_size) = (channels, side.unwrap_or(c.img_size)),
    }
    m.validate()?;
    Ok(m)
}

impl Recipe for VitClassifier {
    fn start(
        cfg: &FinetuneConfig,
        pretrained: Option<&Weights>,
        (classes, channels, side): (usize, usize, Option<usize>),
        device: &Device,
    ) -> Result<(ModelConfig, Self)> {
        let (mae, mcfg) = match pretrained {
            Some(w) => w.mae_encoder(cfg.run.seed, device)?,
            None => {
                let m = preset(cfg, channels, side)?.mae()?.clone();
                (m.init(cfg.run.seed, device)?, m)
            }
        };
        let model = VitClassifier::from_mae(mae, classes, cfg.pool, 2e-5, cfg.run.seed).with_drop_path(cfg.drop_path);
        Ok((ModelConfig::Mae(mcfg), model))
    }

    fn empty(model: &ModelConfig, spec: &ClassifierSpec, cfg: &FinetuneConfig, device: &Device) -> Result<Self> {
        Ok(VitClassifier::from_scratch(model.mae()?, spec.num_classes, spec.pool, 0, device)?
            .with_drop_path(cfg.drop_path))
    }
}

impl Recipe for BeitClassifier {
    fn start(
        cfg: &FinetuneConfig,
        pretrained: Option<&Weights>,
        (classes, channels, side): (usize, usize, Option<usize>),
        device: &Device,
    ) -> Result<(ModelConfig, Self)> {
        let (encoder, config) = match pretrained {
            Some(w) => (w.beit_encoder(cfg.run.seed, device)?, w.detected.config.clone()),
            None => {
                let config = preset(cfg, channels, side)?;
                (BeitForMaskedImageModeling::build(&config, cfg.run.seed, device)?, config)
            }
        };
        Ok((config, BeitClassifier::new(encoder, classes, cfg.drop_path, cfg.run.seed)))
    }

    fn empty(model: &ModelConfig, spec: &ClassifierSpec, cfg: &FinetuneConfig, device: &Device) -> Result<Self> {
        match model {
            ModelConfig::Beit(b) => Ok(BeitClassifier::new(b.init(0, device)?, spec.num_classes, cfg.drop_path, 0)),
            other => bail!("a fine-tuning checkpoint of a {} encoder cannot resume as a BEiT classifier", other.kind()),
        }
    }
}

impl Recipe for SwinTransformer {
    fn start(
        cfg: &FinetuneConfig,
        pretrained: Option<&Weights>,
        (classes, channels, side): (usize, usize, Option<usize>),
        device: &Device,
    ) -> Result<(ModelConfig, Self)> {
        let (config, model) = match pretrained {
            Some(w) => (w.detected.config.clone(), w.swin_encoder(classes, cfg.drop_path, cfg.run.seed, device)?),
            None => {
                let config = preset(cfg, channels, side)?;
                let ModelConfig::Swin(s) = &config else { bail!("'{}' is not a Swin preset", cfg.model) };
                let model = swin_from_scratch(s, classes, cfg.drop_path, cfg.run.seed, device)?;
                (config, model)
            }
        };
        // The checkpoint records the classifier's architecture: its head and drop path.
        let ModelConfig::Swin(s) = config else { bail!("not a Swin: {}", config.kind()) };
        Ok((ModelConfig::Swin(SwinConfig { num_classes: classes, drop_path_rate: cfg.drop_path, ..s }), model))
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
/// from SimMIM, BEiT) follows the checkpoint, or the preset when training from scratch.
pub fn finetune(cfg: &FinetuneConfig, resume: Option<&Path>, reporter: &mut dyn Reporter) -> Result<FinetuneSummary> {
    fn run<C: Recipe>(
        cfg: &FinetuneConfig,
        pretrained: Option<Weights>,
        resume: Option<&Path>,
        reporter: &mut dyn Reporter,
    ) -> Result<FinetuneSummary> {
        let mut task = Finetuning::<C> {
            cfg,
            pretrained: pretrained.map(Arc::new),
            test: None,
            classes: 0,
            channels: 0,
            model_cfg: None,
            depth: 0,
            frozen: 0,
            best: (0.0, 0),
            history: Vec::new(),
            _model: PhantomData,
        };
        fit(&mut task, resume, reporter)?;
        let out = &cfg.run.out;
        Ok(FinetuneSummary {
            epochs: task.history,
            best: task.best,
            checkpoints: (last_checkpoint(out), best_checkpoint(out)),
        })
    }
    // A resumed run rebuilds its classifier from its own checkpoint.
    let pretrained = match (resume, &cfg.checkpoint) {
        (None, Some(path)) => {
            let w = crate::weights::open(path).with_context(|| {
                format!("'{}' is neither a mim checkpoint nor a weights file mim reads", path.display())
            })?;
            let w = match cfg.img_size {
                Some(side) => w.at_image_size(side)?,
                None => w,
            };
            // What the file could not say is the user's to check: say it before training.
            for (what, value) in &w.detected.assumed {
                reporter.message(&format!("'{}': {what} = {value}", path.display()));
            }
            Some(w)
        }
        _ => None,
    };
    let family = match (resume, &pretrained) {
        (Some(path), _) => checkpoint::read_header(path)?.model,
        (None, Some(w)) => w.detected.config.clone(),
        (None, None) => ModelConfig::preset(&cfg.model)?,
    };
    match family {
        ModelConfig::Mae(_) => run::<VitClassifier>(cfg, pretrained, resume, reporter),
        ModelConfig::Beit(_) => run::<BeitClassifier>(cfg, pretrained, resume, reporter),
        ModelConfig::Swin(_) => run::<SwinTransformer>(cfg, pretrained, resume, reporter),
    }
}

/// Fine-tuning of classifier `C` as a [`Task`]: the test split is evaluated after every
/// `eval_every`-th epoch and the last, the best checkpoint kept.
#[derive(Clone)]
struct Finetuning<'a, C> {
    cfg: &'a FinetuneConfig,
    /// The weights a new run starts from (`--checkpoint`, at `--img-size`), shared by the devices'
    /// copies of the task.
    pretrained: Option<Arc<Weights>>,
    /// The test split and the device it is evaluated on.
    test: Option<(Dataset, Device)>,
    classes: usize,
    channels: usize,
    /// The encoder's architecture, once the model is built.
    model_cfg: Option<ModelConfig>,
    depth: usize,
    /// Leading blocks kept frozen (partial fine-tuning).
    frozen: usize,
    /// Best test top-1 (percent) and its epoch.
    best: (f64, u64),
    history: Vec<EpochResult>,
    _model: PhantomData<C>,
}

impl<C: Recipe> Finetuning<'_, C> {
    fn header(&self, progress: Progress) -> Result<CheckpointHeader> {
        let head = ClassifierSpec { num_classes: self.classes, pool: self.cfg.pool, best: Some(self.best) };
        let model = self.model_cfg.clone().expect("started");
        Ok(progress.header(model, settings_for_header(self.cfg)?, self.cfg.run.seed, Some(head)))
    }
}

impl<C: Recipe> Task for Finetuning<'_, C> {
    type Model = C;
    type Output = ();

    fn run(&self) -> &RunConfig {
        &self.cfg.run
    }

    fn epoch_log(&self) -> Option<PathBuf> {
        Some(results_path(&self.cfg.run.out))
    }

    fn validate(&self) -> Result<()> {
        self.cfg.validate()
    }

    fn prepare(&mut self, data: &Dataset, device: &Device) -> Result<()> {
        let test = Dataset::open(&self.cfg.run.data, Split::Test)?;
        data.check_test_split(&test)?;
        self.test = Some((test, device.clone()));
        (self.classes, self.channels) = (data.classes.len(), data.channels);
        Ok(())
    }

    fn start(&mut self, _data: &Dataset, resume: Option<&Path>, device: &Device) -> Result<Start<C>> {
        let (model_cfg, model, start) = match resume {
            Some(path) => {
                let ck = checkpoint::load_classifier(path, |m, spec| C::empty(m, spec, self.cfg, device))?;
                let saved: FinetuneConfig = crate::train::config::from_json(ck.header.train.clone())?;
                self.cfg.run.check_resumable(&saved.run, path)?;
                ensure!(
                    saved.checkpoint == self.cfg.checkpoint,
                    "'{}' fine-tunes another pretrained checkpoint: resume with the same --checkpoint",
                    path.display()
                );
                self.best = ck.header.classifier.as_ref().and_then(|c| c.best).unwrap_or((0.0, 0));
                let (iteration, epoch) = (ck.header.iteration, ck.header.epoch);
                (ck.header.model, ck.model, Start { model: (), optimizer: ck.optimizer, iteration, epoch })
            }
            None => {
                let shape = (self.classes, self.channels, self.cfg.img_size);
                let (mcfg, model) = C::start(self.cfg, self.pretrained.as_deref(), shape, device)?;
                (mcfg, checkpoint::number_params(model), Start::fresh(()))
            }
        };
        ensure!(
            model_cfg.in_chans() == self.channels,
            "the encoder takes {}-channel images but '{}' has {}-channel images: fine-tune on data like the \
             pretraining data",
            model_cfg.in_chans(),
            self.cfg.run.data.display(),
            self.channels
        );
        self.depth = model.depth();
        self.frozen = match self.cfg.trainable_blocks {
            Some(k) => {
                ensure!(k <= self.depth, "--trainable-blocks {k} exceeds the encoder's {} blocks", self.depth);
                self.depth - k
            }
            None => 0,
        };
        self.model_cfg = Some(model_cfg);
        Ok(Start {
            model: model.freeze_first(self.frozen),
            optimizer: start.optimizer,
            iteration: start.iteration,
            epoch: start.epoch,
        })
    }

    fn stepper(&self, model: &C, iters_per_epoch: usize, optimizer: Option<Bytes>) -> Result<Stepper<C>> {
        self.cfg.stepper(model, iters_per_epoch, optimizer)
    }

    fn transform(&self) -> Transform {
        let side = self.model_cfg.as_ref().expect("started").img_size();
        Transform::RandomResizedCrop {
            size: side,
            scale: self.cfg.crop_scale,
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            hflip: true,
            color_jitter: 0.0,
        }
        .resampled(self.cfg.resample)
    }

    fn about(&self, data: &Dataset, iters_per_epoch: usize) -> String {
        let cfg = self.cfg;
        let source = cfg
            .checkpoint
            .as_ref()
            .map_or_else(|| format!("{} from scratch", cfg.model), |p| format!("encoder of {}", p.display()));
        format!(
            "fine-tune {source} on {} ({} classes) | {} | layer decay {} | peak lr {:.2e} | {} epochs x {iters_per_epoch} iterations",
            data.name,
            self.classes,
            match cfg.trainable_blocks {
                Some(k) => format!("last {k} of {} blocks trainable", self.depth),
                None => "all blocks trainable".into(),
            },
            cfg.layer_decay,
            cfg.peak_lr(),
            cfg.run.epochs
        )
    }

    fn loss(&mut self, model: &C, batch: &mut Batch, step: Step, device: &Device) -> Result<(Tensor<1>, ())> {
        Ok((batch_loss(model, batch, self.classes, self.cfg, step, self.frozen, device), ()))
    }

    fn end_of_epoch(&mut self, model: &C, end: &EpochEnd) -> Result<EpochReport> {
        let epoch = end.progress.epoch;
        if !epoch.is_multiple_of(self.cfg.eval_every as u64) && epoch < self.cfg.run.epochs as u64 {
            return Ok(EpochReport { message: None, record: None });
        }
        let side = self.model_cfg.as_ref().expect("started").img_size();
        let (test, device) = self.test.as_ref().expect("prepared");
        let (top1, top5) = evaluate(&model.valid(), test, side, 256, device)?;
        let r =
            EpochResult { epoch, train_loss: end.mean_loss, top1, top5, elapsed_s: end.elapsed_s, cpu_s: end.cpu_s };
        if top1 > self.best.0 {
            self.best = (top1, epoch);
            checkpoint::save(&best_checkpoint(&self.cfg.run.out), &self.header(end.progress)?, model, None)?;
        }
        self.history.push(r);
        Ok(EpochReport {
            message: Some(format!(
                "epoch {epoch}: test top-1 {top1:.2}% top-5 {top5:.2}% (best {:.2}% at epoch {}), train loss {:.4}",
                self.best.0, self.best.1, r.train_loss
            )),
            record: Some(serde_json::to_value(r)?),
        })
    }

    fn save(&self, path: &Path, model: &C, optimizer: &ModuleOptimizer, progress: Progress) -> Result<()> {
        checkpoint::save(path, &self.header(progress)?, model, Some(optimizer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::loader::rng_for;

    fn batch(b: usize) -> Batch {
        Batch {
            images: (0..b * 16).map(|k| (k / 16) as f32).collect(),
            labels: (0..b as u32).collect(),
            indices: (0..b).collect(),
            channels: 1,
            side: 4,
        }
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
                    assert!(
                        (row[i] - expected).abs() < 1e-4,
                        "{mixup} {cutmix}: target {} vs pixel weight {lam}",
                        row[i]
                    );
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
