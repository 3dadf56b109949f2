//! Training the VQ-VAE visual tokenizer (`mim tokenizer train`): AdamW on the encoder and decoder
//! with linear warmup and half-cycle cosine, the EMA codebook update after every step, atomic
//! checkpoints of their own [`Kind`], exact resume, per-iteration metrics (reconstruction loss,
//! perplexity, codebook usage) and a reconstruction picture at the end.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail, ensure};
use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::tensor::{Bytes, Device, Int, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::config::{OptimArgs, OptimConfig, RunArgs, RunConfig, settings};
use super::trainer::{
    EpochEnd, EpochReport, Extras, Progress, Reporter, Start, Step, StepMetrics, Task, fit, settings_for_header,
};
use crate::checkpoint::{self, Kind};
use crate::data::augment::Transform;
use crate::data::loader::{Batch, load_batch, rng_for};
use crate::data::{Dataset, Split};
use crate::models::tokenizer::{CodeUsage, TokenizerConfig, VqTokenizer, code_statistics};
use crate::optim::{LrSchedule, MAE_BETAS, ScheduleKind, Stepper, Update, adamw};

/// Random stream id of the dead-code restarts (kept apart from augmentation and shuffling).
const RESTART_STREAM: u64 = 0x52455354;

settings! {
    /// Tokenizer training settings (TOML and/or flags).
    pub struct TokenizerTrainConfig / TokenizerTrainArgs {
        sections {
            /// Data, output, length, batch, seed, checkpoints, device.
            run: RunConfig / RunArgs,
            /// Learning rate (absolute by default), warm-up, weight decay.
            optim: OptimConfig / OptimArgs,
        }
        fields {
            /// Tokenizer preset: vq_tiny_28 or vq_tiny_32.
            model: String,
            /// Input side in pixels (default: the preset's).
            img_size: Option<usize>,
            /// Codebook size (default: the preset's); must equal the BEiT model's `vocab_size`.
            vocab_size: Option<usize>,
            /// Batches over which codebook usage is measured.
            usage_window: usize,
        }
    }
}

impl Default for TokenizerTrainConfig {
    fn default() -> Self {
        Self {
            run: RunConfig { out: PathBuf::from("runs/tokenizer"), batch_size: 128, ..RunConfig::default() },
            optim: OptimConfig {
                lr: Some(2e-3),
                min_lr: 1e-5,
                warmup_epochs: Some(0.5),
                weight_decay: 1e-4,
                ..OptimConfig::default()
            },
            model: "vq_tiny_28".into(),
            img_size: None,
            vocab_size: None,
            usage_window: 20,
        }
    }
}

impl TokenizerTrainConfig {
    /// Reads a TOML file (see [`super::config::read_toml`]); unknown keys are errors.
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        super::config::read_toml(path)
    }

    /// The tokenizer this configuration trains on data with `channels` channels.
    pub fn model_config(&self, channels: usize) -> Result<TokenizerConfig> {
        let mut m = TokenizerConfig::preset(&self.model)?;
        m.in_chans = channels;
        m.img_size = self.img_size.unwrap_or(m.img_size);
        m.vocab_size = self.vocab_size.unwrap_or(m.vocab_size);
        m.validate()?;
        Ok(m)
    }

    /// Checks values are usable, naming the flag to change.
    pub fn validate(&self) -> Result<()> {
        self.run.validate()?;
        self.optim.validate(self.run.effective_batch())?;
        ensure!(self.run.accum_iter == 1, "--accum-iter must be 1: the EMA codebook follows every optimizer step");
        ensure!(self.usage_window > 0, "--usage-window must be at least 1");
        Ok(())
    }

    /// The training step: AdamW (MAE's betas; no decay on 1-D parameters and biases: no paper
    /// recipe to follow) under per-iteration warm-up and half-cosine, `optimizer` state if resuming.
    pub fn stepper(
        &self,
        model: &VqTokenizer,
        iters_per_epoch: usize,
        optimizer: Option<Bytes>,
    ) -> Result<Stepper<VqTokenizer>> {
        let mut optim =
            adamw(model, self.optim.weight_decay, MAE_BETAS, |path, ndim| ndim <= 1 || path.ends_with(".bias"));
        if let Some(bytes) = optimizer {
            optim = optim
                .from_bytes(bytes)
                .map_err(|e| anyhow::anyhow!("cannot read the checkpoint's optimizer state: {e:?}"))?;
        }
        let schedule = LrSchedule {
            kind: ScheduleKind::Mae,
            lr: self.optim.peak_lr(self.run.effective_batch()),
            min_lr: self.optim.min_lr,
            warmup_lr: 0.0,
            warmup_epochs: self.optim.warmup(self.run.epochs),
            epochs: self.run.epochs,
            iters_per_epoch,
        };
        Ok(Stepper::new(optim, schedule, 1).with_clip_grad(self.optim.clip_grad))
    }
}

/// One iteration's numbers: the common [`StepMetrics`] (`loss` is the total loss) and the tokenizer's own.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenizerMetrics {
    /// Iteration, epoch, total loss, lr, throughput, time.
    #[serde(flatten)]
    pub step: StepMetrics,
    /// Reconstruction mean squared error (normalised pixels).
    pub recon_loss: f64,
    /// Mean squared distance of the encodings to their codes (before the β weight).
    pub commit_loss: f64,
    /// Perplexity of the batch's code frequencies.
    pub perplexity: f64,
    /// Fraction of the codebook used in the last `usage_window` batches.
    pub codebook_usage: f64,
    /// Dead codes restarted after this step.
    pub restarted: usize,
}

/// What a tokenizer checkpoint says about itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenizerHeader {
    /// mim version that wrote it.
    pub mim_version: String,
    /// Tokenizer architecture.
    pub model: TokenizerConfig,
    /// Training configuration ([`TokenizerTrainConfig`] as JSON).
    pub train: serde_json::Value,
    /// Batches consumed so far.
    pub iteration: u64,
    /// Completed epochs.
    pub epoch: u64,
    /// Codebook usage window at this point (so a resumed run reports the same usage).
    pub usage: CodeUsage,
    /// Per-channel normalisation of the training data (the tokenizer's input convention).
    pub mean: Vec<f32>,
    /// Per-channel standard deviation of the training data.
    pub std: Vec<f32>,
}

/// A loaded tokenizer checkpoint.
pub struct TokenizerCheckpoint {
    /// Header.
    pub header: TokenizerHeader,
    /// Weights and codebook.
    pub model: VqTokenizer,
    /// Optimizer state (burnpack), empty if none was saved.
    optimizer: Vec<u8>,
}

/// The header of a tokenizer checkpoint, without building the model.
pub fn read_tokenizer_header(path: &Path) -> Result<TokenizerHeader> {
    Ok(checkpoint::load_kind::<TokenizerHeader>(path, Kind::Tokenizer)?.0)
}

/// Loads a tokenizer checkpoint onto `device` (a pretraining checkpoint is refused with an error saying so).
pub fn load_tokenizer(path: &Path, device: &Device) -> Result<TokenizerCheckpoint> {
    let (header, model, optimizer): (TokenizerHeader, _, _) = checkpoint::load_kind(path, Kind::Tokenizer)?;
    let model = checkpoint::fill(header.model.init(0, device)?, model, path)?;
    Ok(TokenizerCheckpoint { header, model, optimizer })
}

/// Checkpoint file inside the output folder.
pub fn tokenizer_checkpoint_path(out: &Path) -> PathBuf {
    out.join("tokenizer.mim")
}

/// Metrics file (one JSON object per iteration).
pub fn tokenizer_metrics_path(out: &Path) -> PathBuf {
    out.join("tokenizer_metrics.jsonl")
}

/// Reads a metrics file written by [`train_tokenizer`].
pub fn read_tokenizer_metrics(path: &Path) -> Result<Vec<TokenizerMetrics>> {
    crate::io::read_jsonl(path, "metrics")
}

/// What a finished run produced.
pub struct TokenizerSummary {
    /// Metrics of this process (after any resume point).
    pub steps: Vec<TokenizerMetrics>,
    /// The final checkpoint.
    pub checkpoint: PathBuf,
    /// The reconstruction picture.
    pub picture: PathBuf,
}

fn ids_to_host(ids: Tensor<2, Int>) -> Vec<u32> {
    ids.into_data().convert::<i64>().try_to_vec::<i64>().expect("int ids").into_iter().map(|i| i as u32).collect()
}

/// Trains a tokenizer; with `resume`, continues the run saved in that checkpoint on exactly the
/// trajectory an uninterrupted run would have followed (same batches, restarts and metrics).
pub fn train_tokenizer(
    cfg: &TokenizerTrainConfig,
    resume: Option<&Path>,
    reporter: &mut dyn Reporter,
) -> Result<TokenizerSummary> {
    let mut task = TokenizerTraining { cfg, model_cfg: None, usage: None, stats: (Vec::new(), Vec::new()), last: None };
    let done = fit(&mut task, resume, reporter)?;
    let steps = done
        .steps
        .into_iter()
        .map(|(step, extras)| {
            let mut v = serde_json::to_value(step)?;
            extras.into_iter().for_each(|(k, x)| v[k] = x);
            Ok(serde_json::from_value(v)?)
        })
        .collect::<Result<_>>()?;
    let test = Dataset::open(&cfg.run.data, Split::Test).or_else(|_| Dataset::open(&cfg.run.data, Split::Train))?;
    let picture = cfg.run.out.join("tokenizer_reconstructions.png");
    reconstruction_picture(&done.model.valid(), &test, &(0..8.min(test.len())).collect::<Vec<_>>(), &picture)?;
    Ok(TokenizerSummary { steps, checkpoint: task.checkpoint_path(), picture })
}

/// Tokenizer training as a [`Task`]: the EMA codebook update (and dead-code restarts) after
/// every optimizer step.
#[derive(Clone)]
struct TokenizerTraining<'a> {
    cfg: &'a TokenizerTrainConfig,
    model_cfg: Option<TokenizerConfig>,
    /// Codebook usage over the last `usage_window` batches.
    usage: Option<CodeUsage>,
    /// The training data's per-channel mean and standard deviation (the tokenizer's input convention).
    stats: (Vec<f32>, Vec<f32>),
    /// The last batch's reconstruction loss, perplexity and codebook usage, for the epoch's line.
    last: Option<(f64, f64, f64)>,
}

/// What a batch's forward leaves for the codebook update.
struct Codes {
    ids: Tensor<2, Int>,
    encodings: Tensor<2>,
    recon: f64,
    commit: f64,
}

impl TokenizerTraining<'_> {
    fn model_cfg(&self) -> &TokenizerConfig {
        self.model_cfg.as_ref().expect("prepared")
    }
}

impl Task for TokenizerTraining<'_> {
    type Model = VqTokenizer;
    type Output = Codes;
    const WHAT: &'static str = "tokenizer run";

    fn run(&self) -> &RunConfig {
        &self.cfg.run
    }

    fn checkpoint_path(&self) -> PathBuf {
        tokenizer_checkpoint_path(&self.cfg.run.out)
    }

    fn metrics_path(&self) -> PathBuf {
        tokenizer_metrics_path(&self.cfg.run.out)
    }

    fn validate(&self) -> Result<()> {
        self.cfg.validate()
    }

    fn data_parallel(&self) -> Result<()> {
        bail!(
            "the tokenizer trains on one device: its EMA codebook follows the codes of each batch, which data-parallel \
             devices would each see only a share of; pass a single --device"
        )
    }

    fn prepare(&mut self, data: &Dataset, _device: &Device) -> Result<()> {
        self.model_cfg = Some(self.cfg.model_config(data.channels)?);
        self.stats = (data.mean.clone(), data.std.clone());
        Ok(())
    }

    fn start(&mut self, _data: &Dataset, resume: Option<&Path>, device: &Device) -> Result<Start<VqTokenizer>> {
        let Some(path) = resume else {
            let model = checkpoint::number_params(self.model_cfg().init(self.cfg.run.seed, device)?);
            self.usage = Some(CodeUsage::new(self.model_cfg().vocab_size, self.cfg.usage_window));
            return Ok(Start::fresh(model));
        };
        let ck = load_tokenizer(path, device)?;
        let saved: TokenizerTrainConfig = super::config::from_json(ck.header.train.clone())?;
        ensure!(
            &ck.header.model == self.model_cfg(),
            "checkpoint '{}' holds another tokenizer than this configuration builds: resume with the settings it was trained with, \
             or start a new run with another --out",
            path.display()
        );
        self.cfg.run.check_resumable(&saved.run, path)?;
        self.usage = Some(ck.header.usage);
        let optimizer = (!ck.optimizer.is_empty()).then(|| Bytes::from_bytes_vec(ck.optimizer));
        Ok(Start { model: ck.model, optimizer, iteration: ck.header.iteration, epoch: ck.header.epoch })
    }

    fn stepper(
        &self,
        model: &VqTokenizer,
        iters_per_epoch: usize,
        optimizer: Option<Bytes>,
    ) -> Result<Stepper<VqTokenizer>> {
        self.cfg.stepper(model, iters_per_epoch, optimizer)
    }

    /// The same augmentation as the MAE/BEiT pretraining views, so tokens are learned on the images BEiT sees.
    fn transform(&self) -> Transform {
        Transform::mae_pretrain(self.model_cfg().img_size)
    }

    fn about(&self, data: &Dataset, iters_per_epoch: usize) -> String {
        let (cfg, m) = (self.cfg, self.model_cfg());
        format!(
            "{} | tokenizer {} ({} codes of {}, one per {}px patch) | batch {} | peak lr {:.2e} | {} epochs x {} iterations",
            data.name,
            cfg.model,
            m.vocab_size,
            m.code_dim,
            m.patch_size,
            cfg.run.batch_size,
            cfg.optim.peak_lr(cfg.run.effective_batch()),
            cfg.run.epochs,
            iters_per_epoch
        )
    }

    fn loss(
        &mut self,
        model: &VqTokenizer,
        batch: &mut Batch,
        _step: Step,
        device: &Device,
    ) -> Result<(Tensor<1>, Codes)> {
        let out = model.forward_loss(batch.tensor(device))?;
        let scalar = |t: &Tensor<1>| t.clone().into_scalar::<f32>() as f64;
        let codes = Codes {
            recon: scalar(&out.recon_loss),
            commit: scalar(&out.commit_loss),
            ids: out.ids,
            encodings: out.encodings,
        };
        Ok((out.loss, codes))
    }

    fn after_batch(
        &mut self,
        mut model: VqTokenizer,
        codes: Codes,
        iteration: u64,
        _update: Option<&Update>,
    ) -> Result<(VqTokenizer, Extras)> {
        let ids = ids_to_host(codes.ids);
        let encodings = codes.encodings.into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 encodings");
        let restarted =
            model.ema_update(&encodings, &ids, &mut rng_for(&[self.cfg.run.seed, iteration, RESTART_STREAM]));
        let (perplexity, _) = code_statistics(&ids, self.model_cfg().vocab_size);
        let usage = self.usage.as_mut().expect("started");
        usage.push(&ids);
        self.last = Some((codes.recon, perplexity, usage.fraction()));
        let extras = vec![
            ("recon_loss", json!(codes.recon)),
            ("commit_loss", json!(codes.commit)),
            ("perplexity", json!(perplexity)),
            ("codebook_usage", json!(usage.fraction())),
            ("restarted", json!(restarted)),
        ];
        Ok((model, extras))
    }

    fn end_of_epoch(&mut self, _model: &VqTokenizer, end: &EpochEnd) -> Result<EpochReport> {
        let message = self.last.map(|(recon, perplexity, usage)| {
            format!(
                "epoch {}: recon {recon:.4}, perplexity {perplexity:.1}, codebook usage {:.1}%",
                end.progress.epoch,
                100.0 * usage
            )
        });
        Ok(EpochReport { message, record: None })
    }

    fn save(&self, path: &Path, model: &VqTokenizer, optimizer: &ModuleOptimizer, progress: Progress) -> Result<()> {
        let header = TokenizerHeader {
            mim_version: env!("CARGO_PKG_VERSION").into(),
            model: self.model_cfg().clone(),
            train: settings_for_header(self.cfg)?,
            iteration: progress.iteration,
            epoch: progress.epoch,
            usage: self.usage.clone().expect("started"),
            mean: self.stats.0.clone(),
            std: self.stats.1.clone(),
        };
        checkpoint::save_kind(path, Kind::Tokenizer, &header, model, Some(optimizer))
    }
}

/// Saves rows of `original | reconstruction from its tokens` for images `indices` of `ds`
/// (resized to the tokenizer's input, normalised with the dataset's statistics).
pub fn reconstruction_picture(model: &VqTokenizer, ds: &Dataset, indices: &[usize], path: &Path) -> Result<()> {
    let device = model.codebook.device();
    let side = model.grid() * model.patch_size();
    let batch = load_batch(ds, &Transform::Resize { size: side }, indices, 0, 0)?;
    let x = batch.tensor(&device);
    let recon =
        model.decode_ids(model.encode_ids(x)?)?.into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 images");
    let per = recon.len() / indices.len().max(1);
    let rows: Vec<Vec<Vec<f32>>> = (0..indices.len())
        .map(|i| {
            let span = i * per..(i + 1) * per;
            vec![
                crate::viz::denormalize(&batch.images[span.clone()], &ds.mean, &ds.std),
                crate::viz::denormalize(&recon[span], &ds.mean, &ds.std),
            ]
        })
        .collect();
    let captions = crate::viz::Captions {
        title: format!("tokenizer reconstructions through the visual tokens ({})", ds.name),
        columns: vec!["original".into(), "through the tokens".into()],
        rows: batch.labels.iter().map(|&l| ds.classes.get(l as usize).cloned().unwrap_or_default()).collect(),
    };
    crate::viz::save_png(&crate::viz::panels_image(&rows, (ds.channels, side, side), 4, &captions)?, path)
}

/// Tokenizer quality on a dataset: reconstruction error through the tokens and codebook use.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TokenizerReport {
    /// Images evaluated.
    pub images: usize,
    /// Mean squared error of `decode(encode(x))` on normalised pixels.
    pub recon_mse: f64,
    /// Perplexity of the code frequencies over all images.
    pub perplexity: f64,
    /// Distinct codes used.
    pub codes_used: usize,
    /// Codebook size.
    pub vocab_size: usize,
}

/// Encodes the first `max_images` images of `ds` (resized, no augmentation) in batches of `batch_size`.
pub fn evaluate_tokenizer(
    model: &VqTokenizer,
    ds: &Dataset,
    max_images: usize,
    batch_size: usize,
) -> Result<TokenizerReport> {
    let device = model.codebook.device();
    let n = ds.len().min(max_images);
    ensure!(n > 0 && batch_size > 0, "nothing to evaluate: the dataset is empty or --batch-size is 0");
    let transform = Transform::Resize { size: model.grid() * model.patch_size() };
    let (mut ids, mut sq, mut count) = (Vec::new(), 0.0, 0usize);
    for chunk in (0..n).collect::<Vec<_>>().chunks(batch_size) {
        let x = load_batch(ds, &transform, chunk, 0, 0)?.tensor(&device);
        let batch_ids = model.encode_ids(x.clone())?;
        let recon = model.decode_ids(batch_ids.clone())?;
        count += x.dims().iter().product::<usize>();
        sq += (recon - x).powi_scalar(2).sum().into_scalar::<f32>() as f64;
        ids.extend(ids_to_host(batch_ids));
    }
    let (perplexity, codes_used) = code_statistics(&ids, model.vocab_size());
    Ok(TokenizerReport {
        images: n,
        recon_mse: sq / count as f64,
        perplexity,
        codes_used,
        vocab_size: model.vocab_size(),
    })
}
