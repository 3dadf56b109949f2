//! Training the VQ-VAE visual tokenizer (`mim tokenizer train`): AdamW on the encoder and decoder
//! with linear warmup and half-cycle cosine, the EMA codebook update after every step, atomic
//! checkpoints of their own [`Kind`], exact resume, per-iteration metrics (reconstruction loss,
//! perplexity, codebook usage) and a reconstruction picture at the end.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor};
use serde::{Deserialize, Serialize};

use super::pretrain::{Reporter, StepMetrics, truncate_metrics};
use crate::checkpoint::{self, Kind};
use crate::data::augment::Transform;
use crate::data::loader::{Prefetcher, epoch_order, load_batch, rng_for};
use crate::data::{Dataset, Split};
use crate::models::tokenizer::{CodeUsage, TokenizerConfig, VqTokenizer, code_statistics};
use crate::optim::{CosineSchedule, MAE_BETAS, adamw};

/// Random stream id of the dead-code restarts (kept apart from augmentation and shuffling).
const RESTART_STREAM: u64 = 0x52455354;

/// Tokenizer training settings (TOML and/or CLI flags).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenizerTrainConfig {
    /// Dataset path (see [`Dataset::open`]).
    pub data: PathBuf,
    /// Output folder: checkpoint, metrics, picture.
    pub out: PathBuf,
    /// Tokenizer preset ([`TokenizerConfig::PRESETS`]).
    pub model: String,
    /// Input side in pixels (default: the preset's).
    pub img_size: Option<usize>,
    /// Codebook size (default: the preset's); must equal the BEiT model's `vocab_size`.
    pub vocab_size: Option<usize>,
    /// Passes over the data.
    pub epochs: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Learning rate at the end of the cosine.
    pub min_lr: f64,
    /// Warmup epochs.
    pub warmup_epochs: f64,
    /// AdamW weight decay on weight matrices.
    pub weight_decay: f64,
    /// Seed of initialisation, shuffling, augmentation and restarts.
    pub seed: u64,
    /// Save a checkpoint every this many epochs (and always at the end).
    pub checkpoint_every: usize,
    /// Use only the first N training images.
    pub max_images: Option<usize>,
    /// `cpu`, or `cuda:N` in a CUDA build.
    pub device: String,
    /// Batches the loader prepares ahead of the training step.
    pub prefetch: usize,
    /// Batches over which codebook usage is measured.
    pub usage_window: usize,
}

impl Default for TokenizerTrainConfig {
    fn default() -> Self {
        Self {
            data: PathBuf::from("data/fashion-mnist-subset"),
            out: PathBuf::from("runs/tokenizer"),
            model: "vq_tiny_28".into(),
            img_size: None,
            vocab_size: None,
            epochs: 10,
            batch_size: 128,
            lr: 2e-3,
            min_lr: 1e-5,
            warmup_epochs: 0.5,
            weight_decay: 1e-4,
            seed: 0,
            checkpoint_every: 1,
            max_images: None,
            device: "cpu".into(),
            prefetch: 4,
            usage_window: 20,
        }
    }
}

impl TokenizerTrainConfig {
    /// Reads a TOML file; unknown keys are errors.
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        crate::io::read_toml(path)
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
        ensure!(self.epochs > 0, "--epochs must be at least 1");
        ensure!(self.batch_size > 0, "--batch-size must be at least 1");
        ensure!(self.checkpoint_every > 0, "--checkpoint-every must be at least 1");
        ensure!(self.usage_window > 0, "--usage-window must be at least 1");
        super::pretrain::check_optimizer_numbers(self.lr, "--lr", self.min_lr, self.warmup_epochs, self.weight_decay)?;
        Ok(())
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

/// AdamW of the tokenizer (no paper recipe to follow: MAE's betas and rule, no decay on 1-D
/// parameters and biases).
fn tokenizer_adamw(model: &VqTokenizer, weight_decay: f64) -> burn::optim::ModuleOptimizer {
    adamw(model, weight_decay, MAE_BETAS, |path, ndim| ndim <= 1 || path.ends_with(".bias"))
}

/// Trains a tokenizer; with `resume`, continues the run saved in that checkpoint on exactly the
/// trajectory an uninterrupted run would have followed (same batches, restarts and metrics).
pub fn train_tokenizer(cfg: &TokenizerTrainConfig, resume: Option<&Path>, reporter: &mut dyn Reporter) -> Result<TokenizerSummary> {
    cfg.validate()?;
    let device = crate::runtime::device(&cfg.device)?.autodiff();
    let mut ds = Dataset::open(&cfg.data, Split::Train)?;
    if let Some(n) = cfg.max_images {
        ds.truncate(n);
    }
    let model_cfg = cfg.model_config(ds.channels)?;
    let spe = ds.len() / cfg.batch_size;
    ensure!(spe > 0, "the dataset has {} images, fewer than one batch of {}: lower --batch-size or add images", ds.len(), cfg.batch_size);
    let ckpt_path = tokenizer_checkpoint_path(&cfg.out);
    // Taken before the folder is looked at, and held to the end: a second run into the same
    // folder is refused instead of interleaving its checkpoints and metrics with this one's.
    let _lock = super::lock::lock_run_dir(&cfg.out)?;
    let (mut model, mut optim, mut it, mut usage) = match resume {
        Some(path) => {
            let ck = load_tokenizer(path, &device)?;
            let saved: TokenizerTrainConfig = serde_json::from_value(ck.header.train.clone())?;
            if ck.header.model != model_cfg || saved.seed != cfg.seed || saved.batch_size != cfg.batch_size || saved.max_images != cfg.max_images {
                bail!(
                    "checkpoint '{}' was trained with another tokenizer, seed, batch size or data subset: resume with the settings it was \
                     trained with, or start a new run with another --out",
                    path.display()
                );
            }
            checkpoint::check_iterations_per_epoch(path, ck.header.epoch, ck.header.iteration, spe, &cfg.data)?;
            let mut optim = tokenizer_adamw(&ck.model, cfg.weight_decay);
            if !ck.optimizer.is_empty() {
                optim = optim.from_bytes(burn::tensor::Bytes::from_bytes_vec(ck.optimizer)).map_err(|e| anyhow::anyhow!("{e:?}"))?;
            }
            (ck.model, optim, ck.header.iteration, ck.header.usage)
        }
        None => {
            if ckpt_path.exists() {
                bail!(
                    "'{}' already holds a tokenizer run: pass --resume to continue it, or choose another --out (nothing was overwritten)",
                    cfg.out.display()
                );
            }
            let model = checkpoint::number_params(model_cfg.init(cfg.seed, &device)?);
            let optim = tokenizer_adamw(&model, cfg.weight_decay);
            (model, optim, 0, CodeUsage::new(model_cfg.vocab_size, cfg.usage_window))
        }
    };
    std::fs::create_dir_all(&cfg.out).with_context(|| format!("cannot create output folder '{}'", cfg.out.display()))?;
    let mpath = tokenizer_metrics_path(&cfg.out);
    truncate_metrics(&mpath, it)?;
    let mut metrics = std::fs::OpenOptions::new().create(true).append(true).open(&mpath).with_context(|| format!("cannot write '{}'", mpath.display()))?;

    let ds = Arc::new(ds);
    let total = (cfg.epochs * spe) as u64;
    let sched = CosineSchedule { lr: cfg.lr, min_lr: cfg.min_lr, warmup_epochs: cfg.warmup_epochs, epochs: cfg.epochs as f64 };
    // The same augmentation as the MAE/BEiT pretraining views, so tokens are learned on the images BEiT sees.
    let transform = Transform::mae_pretrain(model_cfg.img_size);
    let about = format!(
        "{} | tokenizer {} ({} codes of {}, one per {}px patch) | batch {} | peak lr {:.2e} | {} epochs x {} iterations",
        ds.name, cfg.model, model_cfg.vocab_size, model_cfg.code_dim, model_cfg.patch_size, cfg.batch_size, cfg.lr, cfg.epochs, spe
    );
    reporter.start(total, it, &about);
    let started = Instant::now();
    let mut steps = Vec::new();
    for epoch in (it / spe as u64)..cfg.epochs as u64 {
        let first = (it % spe as u64) as usize;
        let order = epoch_order(ds.len(), cfg.seed, epoch);
        let loader = Prefetcher::spawn(ds.clone(), transform.clone(), order, cfg.batch_size, first, cfg.seed, epoch, cfg.prefetch);
        let mut t0 = Instant::now();
        for (k, batch) in loader.enumerate() {
            let batch = batch?;
            let out = model.forward_loss(batch.tensor(&device))?;
            let scalar = |t: &Tensor<1>| t.clone().into_scalar::<f32>() as f64;
            let (loss, recon, commit) = (scalar(&out.loss), scalar(&out.recon_loss), scalar(&out.commit_loss));
            ensure!(
                loss.is_finite(),
                "the loss is {loss} at iteration {it}: training diverged; lower --lr or lengthen --warmup-epochs"
            );
            let grads = GradientsParams::from_grads(out.loss.backward(), &model);
            let lr = sched.at(epoch as f64 + (first + k) as f64 / spe as f64);
            model = optim.step(lr, model, grads);
            let ids = ids_to_host(out.ids);
            let encodings = out.encodings.into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 encodings");
            let restarted = model.ema_update(&encodings, &ids, &mut rng_for(&[cfg.seed, it, RESTART_STREAM]));
            usage.push(&ids);
            it += 1;
            let (perplexity, _) = code_statistics(&ids, model_cfg.vocab_size);
            let m = TokenizerMetrics {
                step: StepMetrics {
                    iteration: it,
                    epoch,
                    loss,
                    lr,
                    images_per_sec: batch.len() as f64 / t0.elapsed().as_secs_f64().max(1e-9),
                    elapsed_s: started.elapsed().as_secs_f64(),
                },
                recon_loss: recon,
                commit_loss: commit,
                perplexity,
                codebook_usage: usage.fraction(),
                restarted,
            };
            writeln!(metrics, "{}", serde_json::to_string(&m)?).with_context(|| format!("cannot write '{}'", mpath.display()))?;
            reporter.step(&m.step);
            steps.push(m);
            t0 = Instant::now();
        }
        ensure!(it == (epoch + 1) * spe as u64, "the data loader stopped early in epoch {epoch}");
        if (epoch + 1) % cfg.checkpoint_every as u64 == 0 || epoch + 1 == cfg.epochs as u64 {
            metrics.flush().with_context(|| format!("cannot write '{}'", mpath.display()))?;
            let header = TokenizerHeader {
                mim_version: env!("CARGO_PKG_VERSION").into(),
                model: model_cfg.clone(),
                // Without the output folder: the same run gives the same bytes wherever it is written.
                train: serde_json::to_value(TokenizerTrainConfig { out: PathBuf::new(), ..cfg.clone() })?,
                iteration: it,
                epoch: epoch + 1,
                usage: usage.clone(),
                mean: ds.mean.clone(),
                std: ds.std.clone(),
            };
            checkpoint::save_kind(&ckpt_path, Kind::Tokenizer, &header, &model, Some(&optim))?;
            let last = steps.last().map_or(String::new(), |m| {
                format!(" (recon {:.4}, perplexity {:.1}, codebook usage {:.1}%)", m.recon_loss, m.perplexity, 100.0 * m.codebook_usage)
            });
            reporter.message(&format!("epoch {}: checkpoint written to {}{last}", epoch + 1, ckpt_path.display()));
        }
    }
    reporter.finish();
    let test = Dataset::open(&cfg.data, Split::Test).unwrap_or_else(|_| (*ds).clone());
    let picture = cfg.out.join("tokenizer_reconstructions.png");
    reconstruction_picture(&model.valid(), &test, &(0..8.min(test.len())).collect::<Vec<_>>(), &picture)?;
    Ok(TokenizerSummary { steps, checkpoint: ckpt_path, picture })
}

/// Saves rows of `original | reconstruction from its tokens` for images `indices` of `ds`
/// (resized to the tokenizer's input, normalised with the dataset's statistics).
pub fn reconstruction_picture(model: &VqTokenizer, ds: &Dataset, indices: &[usize], path: &Path) -> Result<()> {
    let device = model.codebook.device();
    let side = model.grid() * model.patch_size();
    let batch = load_batch(ds, &Transform::Resize { size: side }, indices, 0, 0)?;
    let x = batch.tensor(&device);
    let recon = model.decode_ids(model.encode_ids(x)?)?.into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 images");
    let per = recon.len() / indices.len().max(1);
    let rows: Vec<Vec<Vec<f32>>> = (0..indices.len())
        .map(|i| {
            let span = i * per..(i + 1) * per;
            vec![crate::viz::denormalize(&batch.images[span.clone()], &ds.mean, &ds.std), crate::viz::denormalize(&recon[span], &ds.mean, &ds.std)]
        })
        .collect();
    crate::viz::save_png(&crate::viz::panels_image(&rows, ds.channels, side, side, 4), path)
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
pub fn evaluate_tokenizer(model: &VqTokenizer, ds: &Dataset, max_images: usize, batch_size: usize) -> Result<TokenizerReport> {
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
    Ok(TokenizerReport { images: n, recon_mse: sq / count as f64, perplexity, codes_used, vocab_size: model.vocab_size() })
}
