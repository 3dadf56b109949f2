//! The evaluation commands: `finetune`, `linprobe`, `knn`, `embed`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use clap::Args;

use mim::data::{Dataset, Split};
use mim::eval::knn::{KnnConfig, knn_accuracy};
use mim::eval::linprobe::{LinprobeConfig, ProbeOptimizer, linear_probe};
use mim::eval::{Backbone, Features, cached_features, extract};
use mim::models::classifier::Pool;
use mim::results::{Pretraining, Record};
use mim::runtime::Stopwatch;
use mim::train::finetune::{FinetuneArgs, FinetuneConfig, finetune, last_checkpoint};

use crate::Bar;

/// Where features come from, shared by linprobe, knn and embed.
#[derive(Args, Clone)]
pub struct BackboneArgs {
    /// Pretraining checkpoint whose encoder gives the features.
    #[arg(long, conflicts_with_all = ["random_init", "pixels"])]
    checkpoint: Option<PathBuf>,
    /// Baseline: a randomly initialised encoder of --model.
    #[arg(long, conflicts_with = "pixels")]
    random_init: bool,
    /// Baseline: the normalised pixels themselves.
    #[arg(long)]
    pixels: bool,
    /// Preset of the --random-init encoder (any MAE, BEiT or Swin preset).
    #[arg(long, default_value = "mae_tiny_28")]
    model: String,
    /// Token pooling: cls (MAE's linear-probing default) or avg.
    #[arg(long, default_value = "cls")]
    pool: Pool,
    /// Dataset: IDX folder/file, CIFAR-10 binary folder, or image folder (train and test splits).
    #[arg(long, default_value = mim::data::SHIPPED_SUBSET)]
    data: PathBuf,
    /// Use only the first N training images.
    #[arg(long)]
    max_images: Option<usize>,
    /// Seed (random-init encoder, probe head, shuffling).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Images per forward pass when extracting features.
    #[arg(long, default_value_t = 256)]
    feature_batch: usize,
    /// cpu, or cuda:N in a CUDA build.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Keep the extracted features in this folder and reuse them when the same backbone (the
    /// checkpoint's bytes), data, split, image count and pooling come again: a k-NN and a linear
    /// probe of one checkpoint then extract once.
    #[arg(long)]
    features_cache: Option<PathBuf>,
}

impl BackboneArgs {
    fn backbone(&self) -> Result<Backbone> {
        Ok(match (&self.checkpoint, self.random_init, self.pixels) {
            (Some(p), false, false) => Backbone::Checkpoint(p.clone()),
            (None, true, false) => Backbone::RandomInit { model: self.model.clone(), seed: self.seed },
            (None, false, true) => Backbone::Pixels,
            _ => bail!("say where features come from: --checkpoint FILE, --random-init (with --model), or --pixels"),
        })
    }

    /// Features of the train and test splits, with the number of classes.
    fn features(&self, splits: &[Split]) -> Result<(Vec<Features>, usize)> {
        let backbone = self.backbone()?;
        ensure!(self.feature_batch > 0, "--feature-batch must be at least 1");
        ensure!(self.max_images != Some(0), "--max-images must be at least 1");
        let device = mim::runtime::device(&self.device)?;
        let mut out = Vec::new();
        let mut classes = 0;
        // What the features come from, read once for every split.
        let source = self.features_cache.as_ref().map(|_| cache_source(&backbone)).transpose()?;
        let datasets = match splits {
            [Split::Train, Split::Test] => {
                let (train, test) = Dataset::open_labelled(&self.data)?;
                vec![train, test]
            }
            _ => splits.iter().map(|&split| Dataset::open(&self.data, split)).collect::<Result<_>>()?,
        };
        for (&split, mut ds) in splits.iter().zip(datasets) {
            if split == Split::Train
                && let Some(n) = self.max_images
            {
                ds.truncate(n);
            }
            classes = ds.classes.len();
            let encoder = backbone.encoder(ds.channels, self.pool, &device)?;
            if out.is_empty() {
                // What the weights file could not say is the user's to check.
                for a in encoder.iter().flat_map(|e| &e.assumed) {
                    eprintln!("assumed {a}");
                }
            }
            let side = match &encoder {
                Some(e) => e.config.img_size(),
                None => ds.image(0)?.width,
            };
            let t0 = Instant::now();
            let n = ds.len();
            let compute = || {
                extract(
                    encoder.as_ref().map(|e| e.encode.as_ref()),
                    &ds,
                    side,
                    self.feature_batch,
                    &device,
                    &mut |done| {
                        if done == n || done % (self.feature_batch * 20) == 0 {
                            eprint!("\r{} features of {split:?}: {done}/{n}", backbone.describe());
                        }
                    },
                )
            };
            let f = match (&self.features_cache, &source) {
                (Some(dir), Some(source)) => {
                    let key = format!(
                        "{source}\ndata {} split {split:?} images {n} side {side} pool {:?} mim {}\n",
                        std::path::absolute(&self.data)?.display(),
                        self.pool,
                        env!("CARGO_PKG_VERSION")
                    );
                    let (f, hit) = cached_features(dir, &key, compute)?;
                    if hit {
                        eprint!("{} features of {split:?}: {n} read from {}", backbone.describe(), dir.display());
                    }
                    f
                }
                _ => compute()?,
            };
            eprintln!(" ({} wide, {:.1} s)", f.dim, t0.elapsed().as_secs_f64());
            out.push(f);
        }
        Ok((out, classes))
    }
}

/// The backbone part of a features-cache key (see `cached_features`): a checkpoint by its path,
/// size and CRC-32, so a retrained file at the same path is new.
fn cache_source(backbone: &Backbone) -> Result<String> {
    Ok(match backbone {
        Backbone::Checkpoint(path) => {
            let bytes = std::fs::read(path).with_context(|| format!("cannot read '{}'", path.display()))?;
            let crc = crc32fast::hash(&bytes);
            format!("checkpoint {} ({} bytes, crc32 {crc:08x})", std::path::absolute(path)?.display(), bytes.len())
        }
        Backbone::RandomInit { model, seed } => format!("random initialisation of {model}, seed {seed}"),
        Backbone::Pixels => "pixels".into(),
    })
}

/// Where a result is recorded, with its provenance (`mim results` makes the tables from such files).
#[derive(Args, Clone)]
pub struct RecordArgs {
    /// Append the result, with its commit, command line, seed, machine and wall time, as one JSON
    /// line to this file (e.g. docs/results/NAME.jsonl).
    #[arg(long, alias = "results")]
    record: Option<PathBuf>,
    /// The study (table) the record belongs to [default: the protocol].
    #[arg(long, requires = "record")]
    study: Option<String>,
    /// The record's row in its study [default: what the features come from].
    #[arg(long, requires = "record")]
    setting: Option<String>,
}

impl RecordArgs {
    /// Refuses, before any work, a --record that cannot take a line, so that hours of training are
    /// not lost to a typo in it.
    fn check(&self) -> Result<()> {
        let Some(path) = &self.record else { return Ok(()) };
        ensure!(!path.is_dir(), "--record '{}' is a folder: name a .jsonl file in it", path.display());
        if path.exists() {
            std::fs::OpenOptions::new()
                .append(true)
                .open(path)
                .with_context(|| format!("--record '{}' cannot be written", path.display()))?;
        } else if let Some(dir) = path.parent().filter(|d| d.exists()) {
            ensure!(dir.is_dir(), "--record '{}': '{}' is not a folder", path.display(), dir.display());
        }
        Ok(())
    }

    /// Appends the record `make` builds to --record, in the study and row the flags name; without
    /// --record nothing is built (it reads the checkpoint's header and metrics).
    fn write(&self, make: impl FnOnce() -> Result<Record>) -> Result<()> {
        let Some(path) = &self.record else { return Ok(()) };
        let mut record = make()?;
        record.study = self.study.clone().unwrap_or(record.study);
        record.setting = self.setting.clone().unwrap_or(record.setting);
        mim::results::append(path, &record)?;
        eprintln!("recorded in {} (study '{}', setting '{}')", path.display(), record.study, record.setting);
        Ok(())
    }
}

/// The default row name of features from `backbone`, and the pretraining behind them.
fn setting_of(backbone: &Backbone) -> Result<(String, Option<Pretraining>)> {
    Ok(match backbone {
        Backbone::Checkpoint(path) => match Pretraining::of_checkpoint(path)? {
            Some(p) => (p.describe(), Some(p)),
            None => (path.display().to_string(), None),
        },
        Backbone::RandomInit { model, .. } => (format!("{model}, random initialisation"), None),
        Backbone::Pixels => ("raw pixels".into(), None),
    })
}

/// `mim finetune` flags (over an optional TOML config).
#[derive(Args)]
pub struct FinetuneCmd {
    /// TOML file with any FinetuneConfig fields (see configs/).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Train --model from random initialisation with the same recipe (the baseline).
    #[arg(long, conflicts_with = "checkpoint")]
    from_scratch: bool,
    /// Continue the run saved in --out.
    #[arg(long)]
    resume: bool,
    #[command(flatten)]
    settings: FinetuneArgs,
    #[command(flatten)]
    record: RecordArgs,
}

impl FinetuneCmd {
    fn config(&self) -> Result<FinetuneConfig> {
        let mut c: FinetuneConfig = crate::settings(self.config.as_deref(), |c| self.settings.apply(c))?;
        if self.from_scratch {
            c.checkpoint = None;
        }
        ensure!(
            c.checkpoint.is_none() || !crate::resume::given().iter().any(|k| k == "model"),
            "--model names the architecture trained from scratch; with --checkpoint the model is the checkpoint's: \
             drop --model"
        );
        ensure!(
            c.checkpoint.is_some() || self.from_scratch || self.resume,
            "say what to fine-tune: --checkpoint FILE (a `mim pretrain` checkpoint) or --from-scratch (the baseline)"
        );
        Ok(c)
    }
}

/// Runs `mim finetune`.
pub fn run_finetune(a: &FinetuneCmd) -> Result<()> {
    a.record.check()?;
    let mut cfg = a.config()?;
    let resume = a.resume.then(|| last_checkpoint(&cfg.run.out));
    match &resume {
        Some(r) => {
            ensure!(r.exists(), "nothing to resume: '{}' does not exist (run without --resume to start)", r.display());
            let header = mim::checkpoint::read_header(r)?;
            ensure!(
                header.classifier.is_some(),
                "'{}' holds a pretraining run, not a fine-tuning: fine-tune it with --checkpoint '{}' and a new --out",
                cfg.run.out.display(),
                r.display()
            );
            let saved = header.train;
            let mutable = &["epochs", "device", "prefetch", "checkpoint_every", "keep_checkpoints", "eval_every"];
            cfg = crate::resume::resumed(
                r,
                &saved,
                &cfg,
                a.config.as_deref(),
                mutable,
                &["data", "checkpoint"],
                &cfg.run.out,
            )?;
        }
        None => {
            crate::resume::absolute(&mut cfg.run.data);
            cfg.checkpoint.iter_mut().for_each(crate::resume::absolute);
        }
    }
    let t0 = Instant::now();
    let s = finetune(&cfg, resume.as_deref(), &mut Bar::default())?;
    eprintln!(
        "done in {:.1} s: best test top-1 {:.2}% at epoch {} | checkpoints {} (last), {} (best) | per-epoch results {}",
        t0.elapsed().as_secs_f64(),
        s.best.0,
        s.best.1,
        s.checkpoints.0.display(),
        s.checkpoints.1.display(),
        mim::train::finetune::results_path(&cfg.run.out).display()
    );
    a.record.write(|| {
        // The whole run's epochs, a resumed one's earlier starts included.
        let all = mim::train::finetune::read_results(&mim::train::finetune::results_path(&cfg.run.out))?;
        let last = all.last().context("the run recorded no epoch")?;
        let (setting, pretraining) = match &cfg.checkpoint {
            Some(path) => setting_of(&Backbone::Checkpoint(path.clone()))?,
            None => (format!("{} from scratch", cfg.model), None),
        };
        let train_images =
            Dataset::open(&cfg.run.data, Split::Train)?.len().min(cfg.run.max_images.unwrap_or(usize::MAX));
        let here = Record::here("finetune", setting, cfg.run.seed, pretraining);
        let readings = all.iter().map(|e| (e.elapsed_s, e.cpu_s));
        Ok(Record {
            top1: last.top1,
            top5: last.top5,
            epochs: last.epoch as f64,
            train_images,
            seconds: mim::train::trainer::training_seconds(all.iter().map(|e| e.elapsed_s)),
            core_seconds: Some(mim::train::trainer::training_core_seconds(readings, here.run.threads)),
            ..here
        })
    })?;
    Ok(())
}

/// `mim linprobe` flags.
#[derive(Args)]
pub struct LinprobeArgs {
    #[command(flatten)]
    backbone: BackboneArgs,
    /// Epochs over the cached features.
    #[arg(long, default_value_t = 90)]
    epochs: usize,
    /// Vectors per step (capped at the training set size).
    #[arg(long, default_value_t = 16384)]
    batch_size: usize,
    /// Learning rate per 256 vectors.
    #[arg(long, default_value_t = 0.1)]
    base_lr: f64,
    /// lars (MAE) or sgd.
    #[arg(long, default_value = "lars", value_parser = ["lars", "sgd"])]
    optimizer: String,
    /// Weight decay.
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Warmup epochs.
    #[arg(long, default_value_t = 10.0)]
    warmup_epochs: f64,
    #[command(flatten)]
    record: RecordArgs,
}

/// Runs `mim linprobe`.
pub fn run_linprobe(a: &LinprobeArgs) -> Result<()> {
    let t0 = Stopwatch::start();
    let cfg = LinprobeConfig {
        epochs: a.epochs,
        batch_size: a.batch_size,
        base_lr: a.base_lr,
        weight_decay: a.weight_decay,
        warmup_epochs: a.warmup_epochs,
        optimizer: if a.optimizer == "sgd" { ProbeOptimizer::Sgd } else { ProbeOptimizer::Lars },
        seed: a.backbone.seed,
    };
    cfg.validate()?;
    a.record.check()?;
    let (f, classes) = a.backbone.features(&[Split::Train, Split::Test])?;
    let device = mim::runtime::device(&a.backbone.device)?;
    let every = (a.epochs / 10).max(1);
    let history = linear_probe(&f[0], &f[1], classes, &cfg, &device, &mut |e| {
        if e.epoch % every == 0 || e.epoch == a.epochs {
            eprintln!("epoch {:>3}: loss {:.4}  test top-1 {:.2}%  top-5 {:.2}%", e.epoch, e.loss, e.top1, e.top5);
        }
    })?;
    let last = history.last().expect("at least one epoch");
    let what = a.backbone.backbone()?.describe();
    println!("linear probe of {what}: test top-1 {:.2}%, top-5 {:.2}% ({:.1} s)", last.top1, last.top5, t0.wall_s());
    let (seconds, core_seconds) = (t0.wall_s(), t0.cpu_s());
    a.record.write(|| {
        let (setting, pretraining) = setting_of(&a.backbone.backbone()?)?;
        Ok(Record {
            top1: last.top1,
            top5: last.top5,
            epochs: a.epochs as f64,
            train_images: f[0].len(),
            seconds,
            core_seconds,
            ..Record::here("linprobe", setting, a.backbone.seed, pretraining)
        })
    })
}

/// `mim knn` flags.
#[derive(Args)]
pub struct KnnArgs {
    #[command(flatten)]
    backbone: BackboneArgs,
    /// Neighbours that vote.
    #[arg(long, default_value_t = 20)]
    k: usize,
    /// Temperature of the vote weights.
    #[arg(long, default_value_t = 0.07)]
    temperature: f64,
    #[command(flatten)]
    record: RecordArgs,
}

/// Runs `mim knn`.
pub fn run_knn(a: &KnnArgs) -> Result<()> {
    let t0 = Stopwatch::start();
    let cfg = KnnConfig { k: a.k, temperature: a.temperature };
    cfg.validate()?;
    a.record.check()?;
    let (f, classes) = a.backbone.features(&[Split::Train, Split::Test])?;
    let device = mim::runtime::device(&a.backbone.device)?;
    let (top1, top5) = knn_accuracy(&f[0], &f[1], classes, cfg, &device)?;
    let what = a.backbone.backbone()?.describe();
    println!("{}-NN of {what}: test top-1 {top1:.2}%, top-5 {top5:.2}% ({:.1} s)", a.k, t0.wall_s());
    let (seconds, core_seconds) = (t0.wall_s(), t0.cpu_s());
    a.record.write(|| {
        let (setting, pretraining) = setting_of(&a.backbone.backbone()?)?;
        Ok(Record {
            top1,
            top5,
            train_images: f[0].len(),
            seconds,
            core_seconds,
            ..Record::here("knn", setting, a.backbone.seed, pretraining)
        })
    })
}

/// `mim embed` flags.
#[derive(Args)]
pub struct EmbedArgs {
    #[command(flatten)]
    backbone: BackboneArgs,
    /// Split to embed.
    #[arg(long, default_value = "test", value_parser = ["train", "test"])]
    split: String,
    /// Output .safetensors file (`features` [N, D], `labels` [N]).
    #[arg(long)]
    out: PathBuf,
}

/// Runs `mim embed`.
pub fn run_embed(a: &EmbedArgs) -> Result<()> {
    mim::io::check_output(
        &a.out,
        "safetensors",
        &a.backbone.checkpoint.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
    )?;
    let split = if a.split == "train" { Split::Train } else { Split::Test };
    let (f, _) = a.backbone.features(&[split])?;
    f[0].save(&a.out)?;
    eprintln!("wrote {} ({} x {})", a.out.display(), f[0].len(), f[0].dim);
    Ok(())
}
