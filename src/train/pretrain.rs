//! Pretraining as each method's official script trains (`main_pretrain.py`,
//! `run_beit_pretraining.py`, `main_simmim.py`), as a [`Task`] of the one training loop: the
//! model of the method, masks drawn per batch from the run's seed, the script's optimizer recipe
//! ([`PretrainConfig::stepper`]), and an optional k-NN monitor at the end of epochs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::tensor::{Bytes, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::config::{OptimArgs, OptimConfig, RunArgs, RunConfig, parse_toml_table, settings};
use super::methods::Method;
use super::tokenizer::{load_tokenizer, read_tokenizer_header};
use super::trainer::{
    EpochEnd, EpochReport, Extras, Progress, Reporter, Start, Step, StepMetrics, Task, fit, settings_for_header,
};
use crate::checkpoint;
use crate::data::augment::{Augmentation, Transform};
use crate::data::loader::Batch;
use crate::data::resize::Resample;
use crate::data::{Dataset, Split};
use crate::eval::extract;
use crate::eval::knn::{KnnConfig, knn_accuracy};
use crate::masking::{MASK_STREAM, MaskStrategy, check_ratio};
use crate::models::beit::{BeitConfig, BeitForMaskedImageModeling};
use crate::models::mae::{MaeConfig, MaeTarget, MaskedAutoencoder};
use crate::models::pretrain::{MimModel, ModelConfig, StepContext};
use crate::models::simmim::SimMim;
use crate::models::swin::SwinConfig;
use crate::optim::{LrSchedule, Stepper, Update, adamw};

settings! {
    /// Pretraining settings; read from TOML (`mim pretrain --config FILE`) and/or flags.
    pub struct PretrainConfig / PretrainArgs {
        sections {
            /// Data, output, length, batch, seed, checkpoints, device.
            run: RunConfig / RunArgs,
            /// Learning rate, warm-up, weight decay, clipping (defaults: the method's recipe).
            optim: OptimConfig / OptimArgs,
        }
        fields {
            /// Method: mae, beit (needs --tokenizer) or simmim (a Swin Transformer).
            method: Method,
            /// Model preset (MAE: mae_tiny_28, mae_tiny_32, mae_micro, mae_vit_base_patch16, ...; BEiT: beit_tiny_28,
            /// ...; SimMIM: swin_tiny_28, swin_tiny_32, swin_tiny_patch4_window7_224, ...); default: the method's small
            /// preset.
            model: Option<String>,
            /// Input side in pixels (default: the preset's).
            img_size: Option<usize>,
            /// Fraction of patches masked, in (0, 1) (default: the method's paper, MAE 0.75, BEiT 0.4, SimMIM 0.6 of
            /// mask squares).
            mask_ratio: Option<f64> [allow_negative_numbers = true],
            /// Another masking strategy than the method's own, as a TOML table (`{ kind = "block" }`, `"grid"`,
            /// `"random"` or `"sim_mim"`); MAE keeps exactly `mask_ratio` of patches removed.
            mask: Option<MaskStrategy> [value_parser = parse_toml_table::<MaskStrategy>],
            /// Per-patch normalised pixel targets (true/false).
            norm_pix_loss: bool,
            /// MAE: what the decoder predicts at removed patches (pixels; pca, the largest PCA coefficients of the
            /// patch, basis fitted on the first 2,000 training images; or tokens, the ids of --tokenizer).
            target: Target,
            /// MAE ablation "encoder w/ [M]" (Table 1c): removed patches enter the encoder as a learned mask token.
            encoder_mask_token: bool [num_args = 0..=1, default_missing_value = "true"],
            /// MAE decoder blocks (default: the preset's).
            decoder_depth: Option<usize>,
            /// MAE decoder width (default: the preset's); its heads become width / 32.
            decoder_embed_dim: Option<usize>,
            /// Pretraining augmentation (default: the method's paper, colour jitter for BEiT, random resized crop +
            /// flip otherwise).
            augmentation: Option<Augmentation>,
            /// Resampling of the crops: bilinear or bicubic (the official scripts' `interpolation=3`), antialiased as
            /// torchvision; unset keeps mim's plain bilinear (bit-identical to earlier runs).
            resample: Option<Resample>,
            /// BEiT (or MAE with --target tokens): the visual tokenizer checkpoint (`mim tokenizer train`).
            tokenizer: Option<PathBuf>,
            /// Every this many epochs, k-NN accuracy of the encoder's features on the test split (a monitor; 0 =
            /// never), written to knn.jsonl.
            eval_every: usize,
            /// Training images in the k-NN monitor's memory bank.
            knn_images: usize,
        }
    }
}

impl Default for PretrainConfig {
    fn default() -> Self {
        Self {
            run: RunConfig { out: PathBuf::from("runs/mae"), ..RunConfig::default() },
            optim: OptimConfig::default(),
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
            resample: None,
            norm_pix_loss: true,
            eval_every: 0,
            knn_images: 10_000,
        }
    }
}

impl PretrainConfig {
    /// Reads a TOML file (see [`super::config::read_toml`]); unknown keys are errors.
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        super::config::read_toml(path)
    }

    /// Images per optimizer update.
    pub fn effective_batch(&self) -> usize {
        self.run.effective_batch()
    }

    /// Peak learning rate: `lr`, or `base_lr x effective batch / 256`.
    pub fn peak_lr(&self) -> f64 {
        self.optim.peak_lr(self.effective_batch())
    }

    /// Warmup length in epochs.
    pub fn warmup(&self) -> f64 {
        self.optim.warmup(self.run.epochs)
    }

    /// The learning-rate schedule of the method's script, for `iters_per_epoch` micro-batches an epoch.
    pub fn schedule(&self, iters_per_epoch: usize) -> LrSchedule {
        LrSchedule {
            kind: self.method.recipe().schedule,
            lr: self.peak_lr(),
            min_lr: self.optim.min_lr,
            warmup_lr: self.optim.warmup_lr,
            warmup_epochs: self.warmup(),
            epochs: self.run.epochs,
            iters_per_epoch,
        }
    }

    /// Gradient clipping in effect.
    pub fn clip(&self) -> Option<f64> {
        self.optim.clip_grad.or(self.method.recipe().clip_grad).filter(|&c| c > 0.0)
    }

    /// The training step of this run for `model` (`M` is the method's model): the official
    /// script's parameter groups, betas, schedule and clipping, with `optimizer` state if resuming.
    pub fn stepper<M: MimModel>(
        &self,
        model: &M,
        iters_per_epoch: usize,
        optimizer: Option<Bytes>,
    ) -> Result<Stepper<M>> {
        let mut optim = adamw(model, self.optim.weight_decay, self.method.recipe().betas, M::no_weight_decay);
        if let Some(bytes) = optimizer {
            optim = optim
                .from_bytes(bytes)
                .map_err(|e| anyhow::anyhow!("cannot read the checkpoint's optimizer state: {e:?}"))?;
        }
        Ok(Stepper::new(optim, self.schedule(iters_per_epoch), self.run.accum_iter).with_clip_grad(self.clip()))
    }

    /// The mask ratio in effect.
    pub fn ratio(&self) -> f64 {
        self.mask_ratio.unwrap_or(self.method.recipe().mask_ratio)
    }

    /// The preset this configuration trains.
    pub fn model_name(&self) -> &str {
        self.model.as_deref().unwrap_or(self.method.recipe().default_model)
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
                let mut m =
                    BeitConfig::preset(name).map_err(|e| anyhow::anyhow!("{e} (--method beit trains a BEiT)"))?;
                m.in_chans = channels;
                if let Some(s) = self.img_size {
                    m.img_size = s;
                }
                m.validate()?;
                ModelConfig::Beit(m)
            }
            Method::Simmim => {
                let mut m = SwinConfig::preset(name)
                    .map_err(|e| anyhow::anyhow!("{e} (--method simmim trains a Swin Transformer)"))?;
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
        self.run.validate()?;
        self.optim.validate(self.effective_batch())
    }
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

/// File names inside the output folder.
pub fn checkpoint_path(out: &Path) -> PathBuf {
    out.join("checkpoint.mim")
}
/// Metrics file (one JSON object per iteration).
pub fn metrics_path(out: &Path) -> PathBuf {
    out.join("metrics.jsonl")
}

/// Reads a metrics file written by [`pretrain`].
pub fn read_metrics(path: &Path) -> Result<Vec<StepMetrics>> {
    crate::io::read_jsonl(path, "metrics")
}

/// What a finished run produced.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Per-iteration metrics of this process (after any resume point).
    pub steps: Vec<StepMetrics>,
    /// The final checkpoint.
    pub checkpoint: PathBuf,
    /// The run folder's lock, still held: the caller writes its own files (the CLI: loss.png,
    /// weights.safetensors) before dropping it, so no other run starts in between.
    pub lock: Arc<super::lock::RunLock>,
}

/// Pretrains with `cfg.method`; with `resume`, continues the run saved in that checkpoint on
/// exactly the trajectory an uninterrupted run would have followed.
pub fn pretrain(cfg: &PretrainConfig, resume: Option<&Path>, reporter: &mut dyn Reporter) -> Result<Summary> {
    fn run<M: MimModel>(cfg: &PretrainConfig, resume: Option<&Path>, reporter: &mut dyn Reporter) -> Result<Summary> {
        let mut task =
            Pretraining::<M> { cfg, model_cfg: None, ctx: None, monitor: None, _model: std::marker::PhantomData };
        let done = fit(&mut task, resume, reporter)?;
        Ok(Summary {
            steps: done.steps.into_iter().map(|s| s.0).collect(),
            checkpoint: task.checkpoint_path(),
            lock: Arc::new(done.lock),
        })
    }
    match cfg.method {
        Method::Mae => run::<MaskedAutoencoder>(cfg, resume, reporter),
        Method::Beit => run::<BeitForMaskedImageModeling>(cfg, resume, reporter),
        Method::Simmim => run::<SimMim>(cfg, resume, reporter),
    }
}

/// Pretraining of model `M` as a [`Task`].
#[derive(Clone)]
struct Pretraining<'a, M> {
    cfg: &'a PretrainConfig,
    /// The architecture, once the data's channels are known.
    model_cfg: Option<ModelConfig>,
    /// How batches are masked (and BEiT's tokenizer).
    ctx: Option<StepContext>,
    /// The k-NN monitor's memory bank, test split and device, when it runs.
    monitor: Option<(Dataset, Dataset, Device)>,
    _model: std::marker::PhantomData<M>,
}

impl<M> Pretraining<'_, M> {
    fn model_cfg(&self) -> &ModelConfig {
        self.model_cfg.as_ref().expect("prepared")
    }
}

impl<M: MimModel> Task for Pretraining<'_, M> {
    type Model = M;
    type Output = ();

    fn run(&self) -> &RunConfig {
        &self.cfg.run
    }

    fn epoch_log(&self) -> Option<PathBuf> {
        (self.cfg.eval_every > 0).then(|| self.cfg.run.out.join("knn.jsonl"))
    }

    fn validate(&self) -> Result<()> {
        self.cfg.validate()
    }

    fn prepare(&mut self, data: &Dataset, device: &Device) -> Result<()> {
        let model_cfg = self.cfg.model_config(data.channels)?;
        let tokenizer = match &self.cfg.tokenizer {
            Some(path) => {
                let t = load_tokenizer(path, device)?;
                if let ModelConfig::Beit(b) = &model_cfg {
                    t.header.model.check_matches(b)?;
                }
                Some(t.model)
            }
            None => None,
        };
        let grid = (model_cfg.grid(), model_cfg.grid());
        self.ctx = Some(StepContext { ratio: self.cfg.ratio(), strategy: self.cfg.mask.clone(), grid, tokenizer });
        if self.cfg.eval_every > 0 {
            let test = Dataset::open(&self.cfg.run.data, Split::Test)
                .and_then(|test| data.check_test_split(&test).map(|()| test))
                .context("the k-NN monitor (--eval-every) needs a labelled test split")?;
            let mut bank = data.clone();
            bank.truncate(self.cfg.knn_images);
            self.monitor = Some((bank, test, device.clone()));
        }
        self.model_cfg = Some(model_cfg);
        Ok(())
    }

    fn to_device(&mut self, device: &Device) {
        if let Some(ctx) = &mut self.ctx {
            ctx.tokenizer = ctx.tokenizer.take().map(|t| t.to_device(device));
        }
    }

    fn start(&mut self, data: &Dataset, resume: Option<&Path>, device: &Device) -> Result<Start<M>> {
        let Some(path) = resume else {
            let model = M::build(self.model_cfg(), self.cfg.run.seed, device)?.fit_to_data(data, device)?;
            return Ok(Start::fresh(checkpoint::number_params(model)));
        };
        let ck = checkpoint::load_model(path, device, M::build)?;
        if &ck.header.model != self.model_cfg() {
            bail!(
                "checkpoint '{}' holds a different model ({:?}) from the one this configuration builds ({:?}): \
                 resume with the settings it was trained with, or start a new run with another --out",
                path.display(),
                ck.header.model,
                self.model_cfg()
            );
        }
        let saved: PretrainConfig = super::config::from_json(ck.header.train.clone())?;
        self.cfg.run.check_resumable(&saved.run, path)?;
        Ok(Start { model: ck.model, optimizer: ck.optimizer, iteration: ck.header.iteration, epoch: ck.header.epoch })
    }

    fn stepper(&self, model: &M, iters_per_epoch: usize, optimizer: Option<Bytes>) -> Result<Stepper<M>> {
        self.cfg.stepper(model, iters_per_epoch, optimizer)
    }

    fn transform(&self) -> Transform {
        let augmentation = self.cfg.augmentation.unwrap_or(self.cfg.method.recipe().augmentation);
        augmentation.transform(self.model_cfg().img_size()).resampled(self.cfg.resample)
    }

    fn about(&self, data: &Dataset, iters_per_epoch: usize) -> String {
        let (cfg, model) = (self.cfg, self.model_cfg());
        format!(
            "{} | {:?} {} ({} patches of {}px, mask {}{}) | batch {} x accum {} | peak lr {:.2e}{} | {} epochs x {} iterations",
            data.name,
            cfg.method,
            cfg.model_name(),
            model.num_patches(),
            model.patch_size(),
            cfg.ratio(),
            cfg.mask.as_ref().map_or(String::new(), |m| format!(", {}", serde_json::to_string(m).unwrap_or_default())),
            cfg.run.batch_size,
            cfg.run.accum_iter,
            cfg.peak_lr(),
            cfg.clip().map_or(String::new(), |c| format!(", clip {c}")),
            cfg.run.epochs,
            iters_per_epoch
        )
    }

    fn loss(&mut self, model: &M, batch: &mut Batch, step: Step, device: &Device) -> Result<(Tensor<1>, ())> {
        let ctx = self.ctx.as_ref().expect("prepared");
        Ok((model.batch_loss(batch, device, ctx, &mut step.rng(self.cfg.run.seed, MASK_STREAM))?, ()))
    }

    /// The model's own step after an update (an EMA teacher would follow the student here).
    fn after_batch(&mut self, model: M, _output: (), iteration: u64, update: Option<&Update>) -> Result<(M, Extras)> {
        Ok((
            match update {
                Some(u) => model.after_update(u, iteration),
                None => model,
            },
            Vec::new(),
        ))
    }

    /// k-NN accuracy (k = 20) of the encoder's features on the test split, with the first
    /// `knn_images` training images as the memory bank.
    fn end_of_epoch(&mut self, model: &M, end: &EpochEnd) -> Result<EpochReport> {
        let (Some((bank, test, device)), epoch) = (&self.monitor, end.progress.epoch) else {
            return Ok(EpochReport::default());
        };
        if epoch % self.cfg.eval_every as u64 != 0 {
            return Ok(EpochReport::default());
        }
        let t0 = Instant::now();
        let model = model.valid();
        let encode = |imgs: Tensor<4>| model.features(imgs);
        let side = self.model_cfg().img_size();
        let f_train = extract(Some(&encode), bank, side, 256, device, &mut |_| {})?;
        let f_test = extract(Some(&encode), test, side, 256, device, &mut |_| {})?;
        let (top1, top5) = knn_accuracy(&f_train, &f_test, bank.classes.len(), KnnConfig::default(), device)?;
        let seconds = t0.elapsed().as_secs_f64();
        Ok(EpochReport {
            message: Some(format!(
                "epoch {epoch}: {}-NN test top-1 {top1:.2}% top-5 {top5:.2}% ({seconds:.0} s)",
                KnnConfig::default().k
            )),
            record: Some(
                serde_json::json!({"epoch": epoch, "iteration": end.progress.iteration, "top1": top1, "top5": top5, "seconds": seconds}),
            ),
        })
    }

    fn save(&self, path: &Path, model: &M, optimizer: &ModuleOptimizer, progress: Progress) -> Result<()> {
        let header = progress.header(self.model_cfg().clone(), settings_for_header(self.cfg)?, self.cfg.run.seed, None);
        checkpoint::save(path, &header, model, Some(optimizer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::trainer::{Ranks, Silent, fit_on};
    use burn::tensor::Device;

    fn run(out: &Path, epochs: usize, devices: usize, resume: bool) -> Vec<StepMetrics> {
        let mut cfg = PretrainConfig { model: Some("mae_tiny_28".into()), ..Default::default() };
        (cfg.run.out, cfg.run.epochs, cfg.run.batch_size, cfg.run.max_images) = (out.into(), epochs, 4, Some(24));
        let mut task = Pretraining::<MaskedAutoencoder> {
            cfg: &cfg,
            model_cfg: None,
            ctx: None,
            monitor: None,
            _model: Default::default(),
        };
        let ranks = Ranks::unsynced(vec![Device::flex(); devices]);
        let resume = resume.then(|| out.join("checkpoint.mim"));
        fit_on(&mut task, resume.as_deref(), &mut Silent, ranks).unwrap().steps.into_iter().map(|s| s.0).collect()
    }

    /// What a CPU can check of a data-parallel run (no collectives here, so the devices' gradients
    /// are not averaged): an iteration is a global batch, rank 0 computes what a single device
    /// computes on the first share of it with the same masks, and only rank 0 writes.
    #[test]
    fn two_devices_split_each_batch_and_rank_zero_writes() {
        let tmp = tempfile::tempdir().unwrap();
        let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
        let single = run(&one, 1, 1, false);
        let parallel = run(&two, 1, 2, false);
        assert_eq!((single.len(), parallel.len()), (6, 3), "24 images in batches of 4, or of 2 x 4");
        assert_eq!(single[0].loss, parallel[0].loss, "rank 0's first share is the single device's first batch");
        assert_eq!(read_metrics(&two.join("metrics.jsonl")).unwrap().len(), 3, "one metrics line per global batch");
        assert_eq!(crate::checkpoint::read_header(&two.join("checkpoint.mim")).unwrap().iteration, 3);
        let resumed = run(&two, 2, 2, true);
        assert_eq!(resumed.first().map(|m| m.iteration), Some(4), "the resumed run continues at the next global batch");
        assert_eq!(read_metrics(&two.join("metrics.jsonl")).unwrap().len(), 6);
    }
}
