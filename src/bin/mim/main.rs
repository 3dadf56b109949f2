//! `mim`: the command-line interface. A thin shell over the library.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use mim::bench;
use mim::checkpoint;
use mim::data::Split;
use mim::reconstruct::{Images, MaskChoice, Reconstructor};
use mim::train::methods::Method;
use mim::train::pretrain;
use mim::train::pretrain::{PretrainConfig, checkpoint_path, metrics_path, read_metrics};
use mim::train::{OptimConfig, Reporter, RunConfig, StepMetrics};

mod ablate;
mod evaluate;
mod resume;
mod tokenizer;

#[derive(Parser)]
#[command(
    name = "mim",
    version,
    about = "Masked image modeling (MAE) for vision transformers, on burn: pretrain, evaluate, picture"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Short MAE pretraining on the shipped Fashion-MNIST subset, then a reconstruction picture (and the
    /// shipped pretrained MAE's, same images and masks).
    Demo {
        /// Output folder.
        #[arg(long, default_value = "runs/demo")]
        out: PathBuf,
        /// Pretraining epochs over the 10,000 shipped images (20-40 s each on 2 cores).
        #[arg(long, default_value_t = 3)]
        epochs: usize,
    },
    /// Pretrain by masked image modeling: MAE, BEiT or SimMIM (config from --config TOML, flags override it).
    Pretrain(PretrainCmd),
    /// Pictures of original | masked | reconstruction | reconstruction + visible, from an MAE or
    /// SimMIM checkpoint (or MAE weights).
    Reconstruct(ReconstructArgs),
    /// Throughput of pretraining and encoder inference on the PyTorch peer's workloads, optionally
    /// side by side with the peer measured in the same run.
    Bench(BenchArgs),
    /// Fine-tune a pretrained encoder with a classification head (or train it from scratch, the
    /// baseline); --trainable-blocks K for partial fine-tuning.
    Finetune(evaluate::FinetuneCmd),
    /// Linear probe on frozen, cached features (BatchNorm without affine + linear head, LARS).
    Linprobe(evaluate::LinprobeArgs),
    /// Weighted k-nearest-neighbour accuracy on frozen features.
    Knn(evaluate::KnnArgs),
    /// Write the features of a dataset split to a safetensors file.
    Embed(evaluate::EmbedArgs),
    /// Train a discrete visual tokenizer (VQ-VAE) whose ids are BEiT's targets, or show one's
    /// reconstructions and codebook use.
    Tokenizer(tokenizer::TokenizerArgs),
    /// Run one of the MAE paper's ablations (pretrain + linear probe + fine-tune per setting),
    /// with a table beside the paper's numbers and a plot; reruns resume the sweep.
    Ablate(ablate::AblateArgs),
    /// Parity of MAE, BEiT, Swin and SimMIM with the committed PyTorch fixtures on a device: forward
    /// values and every gradient (the check to run on a GPU machine).
    Check {
        /// Folder of the fixtures (mim's tests/fixtures).
        #[arg(long, default_value = "tests/fixtures")]
        fixtures: PathBuf,
        /// cpu, or cuda:N in a CUDA build.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Through burn's generic ops instead of the fused CPU kernels (the code a GPU runs).
        #[arg(long)]
        generic_ops: bool,
    },
    /// What a weights file holds: format, naming, model, the configuration it implies (and what had to
    /// be assumed), parameter count.
    Inspect {
        /// A weights file: safetensors or a PyTorch .pth/.pt/.bin (mim, official, Hugging Face or timm names), or a
        /// mim checkpoint.
        file: PathBuf,
    },
    /// Convert weights (MAE, BEiT, Swin, SimMIM; a mim checkpoint or any file `mim inspect` reads)
    /// to the official, timm or Hugging Face names (safetensors with the configuration in its
    /// metadata; for Hugging Face a config.json beside).
    Convert {
        /// A mim checkpoint (.mim) or a weights file (see `mim inspect`).
        input: PathBuf,
        /// Output .safetensors file.
        output: PathBuf,
        /// Names to write.
        #[arg(long, value_enum)]
        to: ConvertTo,
        /// Store half-precision (f16) tensors: half the size, about 3 significant digits.
        #[arg(long)]
        half: bool,
    },
    /// Attention maps of a ViT encoder (MAE or BEiT; a mim checkpoint or any weights file `mim inspect`
    /// reads): the [CLS] token's attention over the patches in every layer and head, one picture per image.
    Attention {
        /// A mim pretraining checkpoint or a weights file.
        #[arg(long)]
        checkpoint: PathBuf,
        /// Dataset to take images from.
        #[arg(long, required_unless_present = "images")]
        data: Option<PathBuf>,
        /// Dataset split.
        #[arg(long, value_enum, default_value = "test")]
        split: Split,
        /// Dataset indices, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "0,1,2,3")]
        indices: Vec<usize>,
        /// Image files instead of dataset indices (resized to the model's input).
        #[arg(long, num_args = 1..)]
        images: Vec<PathBuf>,
        /// Output folder.
        #[arg(long, default_value = "runs/attention")]
        out: PathBuf,
        /// Up-scaling of the pictures.
        #[arg(long, default_value_t = 4, value_parser = scale_range())]
        scale: usize,
    },
    /// A local web page to look at a model: hide patches and see the reconstruction, attention maps
    /// per layer and head, nearest training images; dataset images or your own photos.
    Serve {
        /// A mim pretraining checkpoint or a weights file (`mim inspect` reads it); default: the
        /// shipped pretrained model of --method (pretrained/README.md) on the shipped Fashion-MNIST subset.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// Which shipped model to show when no --checkpoint is given (default: mae).
        #[arg(long, value_enum)]
        method: Option<Method>,
        /// The visual tokenizer of a BEiT (default: the one its checkpoint names; needed for a
        /// BEiT weights file).
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        /// Dataset to browse (default: the one the checkpoint was trained on).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Split browsed (neighbours come from the training split).
        #[arg(long, value_enum, default_value = "test")]
        split: Split,
        /// Training images searched for nearest neighbours (0: none).
        #[arg(long, default_value_t = mim::serve::ViewerConfig::NEIGHBOURS)]
        neighbours: usize,
        /// Up-scaling of the reconstruction picture.
        #[arg(long, default_value_t = mim::serve::ViewerConfig::SCALE, value_parser = scale_range())]
        scale: usize,
        /// Address to listen on. Anything but loopback shows the model and data to the network.
        #[arg(long, default_value = "127.0.0.1")]
        host: std::net::IpAddr,
        /// Port (0: any free one).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Largest photo accepted, in MB.
        #[arg(long, default_value_t = mim::serve::ServeConfig::UPLOAD_LIMIT_MB)]
        upload_limit_mb: f64,
    },
    /// One self-contained HTML page about a pretraining run: loss, learning-rate and k-NN curves,
    /// reconstructions at each checkpoint, timings, configuration, commit and machine.
    Report {
        /// The run folder (`mim pretrain --out`).
        run: PathBuf,
        /// Output file (default: RUN/report.html).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Tables (mean ± std over seeds) and plots from the result records that `finetune`, `linprobe`
    /// and `knn` append with --record; printed, or written into a document's generated block.
    Results {
        /// Folder of the records (*.jsonl).
        #[arg(long, default_value = "docs/results")]
        records: PathBuf,
        /// Rewrite the generated block of this Markdown file (between the markers `mim results`
        /// documents) instead of printing the tables, and its summary block if it has one.
        #[arg(long)]
        write: Option<PathBuf>,
        /// Folder for one plot per study whose settings differ in mask ratio or pretraining epochs
        /// (the kept checkpoints of one run connected, rows without pretraining as dashed lines).
        #[arg(long)]
        plots: Option<PathBuf>,
    },
    /// Export a pretraining checkpoint's weights to safetensors (official names, PyTorch layout).
    Export {
        /// Checkpoint written by `mim pretrain`.
        #[arg(long)]
        checkpoint: PathBuf,
        /// Output .safetensors file.
        #[arg(long)]
        out: PathBuf,
        /// cpu, or cuda:N in a CUDA build.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Store half-precision (f16) tensors: half the size, about 3 significant digits.
        #[arg(long)]
        half: bool,
    },
}

#[derive(Args)]
struct PretrainCmd {
    /// TOML file with any PretrainConfig fields (see configs/).
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    resume: crate::resume::ResumeArgs,
    #[command(flatten)]
    settings: mim::train::pretrain::PretrainArgs,
}

/// Parameter names `mim convert` writes.
#[derive(Clone, Copy, clap::ValueEnum)]
enum ConvertTo {
    /// facebookresearch/mae's names (timm's ViT names).
    Official,
    /// Hugging Face ViTMAEForPreTraining, with its config.json.
    Hf,
    /// timm's names (for a ViT, the official ones).
    Timm,
}

#[derive(Args)]
struct ReconstructArgs {
    /// Checkpoint written by `mim pretrain`.
    #[arg(long, required_unless_present = "weights")]
    checkpoint: Option<PathBuf>,
    /// Instead of a checkpoint: a weights file holding an MAE with its decoder or a SimMIM (safetensors or
    /// .pth; official, timm or Hugging Face names, a HF config.json beside it is read); `mim inspect` shows
    /// what a file holds.
    #[arg(long, conflicts_with = "checkpoint")]
    weights: Option<PathBuf>,
    /// With --weights: a Hugging Face config.json describing them (default: the one beside the file).
    #[arg(long, requires = "weights")]
    hf_config: Option<PathBuf>,
    /// With --weights: the model preset they belong to, instead of the configuration the file implies.
    #[arg(long, requires = "weights", conflicts_with = "hf_config")]
    model: Option<String>,
    /// With --weights: run at this image size; position embeddings trained at another size are
    /// interpolated (bicubic) as the official fine-tuning code does.
    #[arg(long, requires = "weights")]
    img_size: Option<usize>,
    /// Dataset to take images from (default: the one the checkpoint was trained on).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Dataset split.
    #[arg(long, value_enum, default_value = "test")]
    split: Split,
    /// Dataset indices, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0,1,2,3,4,5,6,7")]
    indices: Vec<usize>,
    /// Image files instead of dataset indices (resized to the model's input).
    #[arg(long, num_args = 1..)]
    images: Vec<PathBuf>,
    /// Fraction of patches removed (default: the method's, 0.75 for MAE, 0.6 of mask squares for SimMIM).
    #[arg(long, allow_negative_numbers = true, conflicts_with_all = ["visible", "mask_image"])]
    mask_ratio: Option<f64>,
    /// Seed of the random mask.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Explicit visible patches (row-major indices, comma-separated) instead of a random mask.
    #[arg(long, value_delimiter = ',', conflicts_with = "mask_image")]
    visible: Vec<usize>,
    /// Explicit mask as an image: a patch is visible where the image (resized to the patch grid) is bright.
    #[arg(long)]
    mask_image: Option<PathBuf>,
    /// Output folder.
    #[arg(long, default_value = "runs/reconstruct")]
    out: PathBuf,
    /// Up-scaling of the pictures.
    #[arg(long, default_value_t = 4, value_parser = scale_range())]
    scale: usize,
    /// Bare panels: no title, column titles or image names (to assemble a figure elsewhere).
    #[arg(long)]
    no_titles: bool,
    /// cpu, or cuda:N in a CUDA build.
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct BenchArgs {
    /// A paper table instead of the throughput benchmark.
    #[command(subcommand)]
    table: Option<BenchTable>,
    /// Workloads: MAE pretraining (fmnist-tiny, vit-tiny-32, vit-base-224), beit-tiny, simmim-tiny,
    /// finetune-tiny, and the image-folder data pipeline (folder-jpeg).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "fmnist-tiny,vit-tiny-32,vit-base-224,beit-tiny,simmim-tiny,finetune-tiny,folder-jpeg"
    )]
    workloads: Vec<String>,
    /// Also run mask ratio 0 (encoder sees every token: the paper's Table 2 cost) on these MAE workloads.
    #[arg(long, value_delimiter = ',', default_value = "fmnist-tiny,vit-tiny-32")]
    no_mask_variant: Vec<String>,
    /// Untimed steps on each side after building a workload.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed steps per side in each round.
    #[arg(long, default_value_t = 3, value_parser = at_least_one())]
    iters: usize,
    /// Alternating rounds per workload (mim's steps, then the peer's, the first side alternating):
    /// ratios are the median and interquartile range of the per-round ratios, which a busy shared
    /// machine moves by up to 2x.
    #[arg(long, default_value_t = 10, value_parser = at_least_one())]
    rounds: usize,
    /// Python of the peer's venv (tools/peer/setup.sh) to run the PyTorch peer in the same invocation.
    #[arg(long)]
    peer: Option<PathBuf>,
    /// The peer script.
    #[arg(long, default_value_os_t = bench::default_peer_script())]
    peer_script: PathBuf,
    /// Also measure a torch.compile peer (a row of its own per workload; slow first steps).
    #[arg(long)]
    peer_compile: bool,
    /// Seed of models, inputs and masks on both sides.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// IDX data the folder-jpeg workload's JPEGs are made from, and of the data-pipeline line.
    #[arg(long, default_value = mim::data::SHIPPED_SUBSET)]
    data: PathBuf,
    /// Append every result as JSON lines here (with commit, command line, seed, CPU, threads).
    #[arg(long, default_value = "bench.jsonl")]
    out: PathBuf,
    /// cpu, or cuda:N in a CUDA build.
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Subcommand)]
enum BenchTable {
    /// MAE Table 2: training-step speed-up of the encoder without mask tokens over the encoder
    /// with them (mask ratio 0.75), with the preset's decoder and a 1-block one.
    Speedup {
        /// MAE presets.
        #[arg(long, value_delimiter = ',', default_value = "mae_tiny_28,mae_vit_base_patch16,mae_vit_large_patch16")]
        models: Vec<String>,
        /// Images per step, one per model (default: 256 for 28-32 px presets, 8 for ViT-B, 4 for ViT-L/H).
        #[arg(long, value_delimiter = ',', value_parser = at_least_one())]
        batch: Vec<usize>,
        /// Untimed steps first.
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        /// Timed steps (median reported).
        #[arg(long, default_value_t = 3, value_parser = at_least_one())]
        iters: usize,
        /// Append every row as JSON lines here.
        #[arg(long, default_value = "bench.jsonl")]
        out: PathBuf,
        /// cpu, or cuda:N in a CUDA build.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// The summary table of every run recorded in JSON-lines files written by `--out` (the
    /// published ones are in docs/bench/), computed again from their raw timings.
    Summary {
        /// JSON-lines files of `mim bench --out`.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn run_bench(a: &BenchArgs) -> Result<()> {
    let progress = &mut |line: &str| eprintln!("{line}");
    if let Some(BenchTable::Summary { files }) = &a.table {
        for file in files {
            let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
            let runs = bench::read_runs(&text)
                .with_context(|| format!("{} is not `mim bench --out` output", file.display()))?;
            ensure!(!runs.is_empty(), "{} holds no run of `mim bench --out`", file.display());
            for (i, run) in runs.iter().enumerate() {
                println!("\n## {} run {} of {}\n\n{}", file.display(), i + 1, runs.len(), run.provenance());
                print!("{}", run.report);
            }
        }
        return Ok(());
    }
    if let Some(BenchTable::Speedup { models, batch, warmup, iters, out, device }) = &a.table {
        let opts = bench::SpeedupOptions {
            models: models.clone(),
            batch: batch.clone(),
            warmup: *warmup,
            iters: *iters,
            out: out.clone(),
        };
        bench::speedup(&opts, &mim::runtime::device(device)?, progress, &mut |line| println!("{line}"))?;
        return Ok(());
    }
    let opts = bench::BenchOptions {
        workloads: a.workloads.clone(),
        no_mask_variant: a.no_mask_variant.clone(),
        warmup: a.warmup,
        iters: a.iters,
        rounds: a.rounds,
        peer: a.peer.clone(),
        peer_script: a.peer_script.clone(),
        peer_compile: a.peer_compile,
        seed: a.seed,
        data: a.data.clone(),
        out: a.out.clone(),
        // Empty or spaced arguments quoted, so that the recorded line can be run again.
        command: std::env::args()
            .map(|a| if a.is_empty() || a.contains(char::is_whitespace) { format!("{a:?}") } else { a })
            .collect::<Vec<_>>()
            .join(" "),
    };
    let report = bench::run(&opts, &mim::runtime::device(&a.device)?, progress)?;
    print!("{report}");
    if let Some(line) = report.data_pipeline_line(&a.data)? {
        println!("{line}");
    }
    Ok(())
}

/// Progress bar with loss, lr, images/s and ETA; plain lines (every 5%) when stderr is not a terminal.
#[derive(Default)]
struct Bar {
    pb: Option<ProgressBar>,
    total: u64,
    /// Draw reconstructions of fixed images from every checkpoint written (pretraining).
    snapshots: bool,
}

impl Bar {
    fn line(m: &StepMetrics) -> String {
        format!("epoch {} loss {:.4} lr {:.2e} {:.0} img/s", m.epoch + 1, m.loss, m.lr, m.images_per_sec)
    }
}

impl Reporter for Bar {
    fn start(&mut self, total: u64, done: u64, about: &str) {
        eprintln!("{about}");
        if done > 0 {
            eprintln!("resuming at iteration {done} of {total}");
        }
        self.total = total;
        if std::io::stderr().is_terminal() {
            let pb = ProgressBar::new(total).with_position(done);
            pb.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30.cyan/blue} {pos}/{len} {msg} ETA {eta}",
                )
                .unwrap()
                .progress_chars("=> "),
            );
            self.pb = Some(pb);
        }
    }
    fn step(&mut self, m: &StepMetrics) {
        match &self.pb {
            Some(pb) => {
                pb.set_message(Self::line(m));
                pb.set_position(m.iteration);
            }
            None if m.iteration.is_multiple_of((self.total / 20).max(1)) || m.iteration == self.total => {
                eprintln!("[{}/{}] {}", m.iteration, self.total, Self::line(m));
            }
            None => {}
        }
    }
    fn message(&mut self, msg: &str) {
        match &self.pb {
            Some(pb) => pb.println(msg),
            None => eprintln!("{msg}"),
        }
    }
    fn checkpoint(&mut self, path: &Path, epoch: u64) {
        if !self.snapshots {
            return;
        }
        match mim::report::write_snapshot(path, epoch) {
            Ok(Some(file)) => {
                self.message(&format!("epoch {epoch}: reconstructions of fixed test images in {}", file.display()))
            }
            Ok(None) => {}
            // A picture is not worth stopping a training run for.
            Err(e) => self.message(&format!("epoch {epoch}: no reconstruction snapshot: {e:#}")),
        }
    }
    fn finish(&mut self) {
        if let Some(pb) = self.pb.take() {
            pb.finish();
        }
    }
}

fn run_pretrain(cfg: &PretrainConfig, resume: Option<&Path>) -> Result<()> {
    let t0 = Instant::now();
    let summary = pretrain(cfg, resume, &mut Bar { snapshots: true, ..Bar::default() })?;
    let metrics = read_metrics(&metrics_path(&cfg.run.out))?;
    let losses: Vec<(f64, f64)> = metrics.iter().map(|m| (m.iteration as f64, m.loss)).collect();
    let curve = cfg.run.out.join("loss.png");
    mim::viz::loss_curve(
        &curve,
        &format!("{} pretraining loss ({})", cfg.method.name(), cfg.model_name()),
        &losses,
        20,
    )?;
    // Weights in official MAE naming for other tools (the checkpoint serves mim itself).
    let weights = cfg.run.out.join("weights.safetensors");
    mim::weights::convert(
        &with_pretraining(mim::weights::from_checkpoint(&summary.checkpoint)?)?,
        mim::weights::Naming::Official,
        &weights,
        mim::io::Precision::F32,
    )?;
    let rate = summary.steps.iter().rev().take(20).map(|s| s.images_per_sec).sum::<f64>()
        / summary.steps.len().clamp(1, 20) as f64;
    eprintln!(
        "done in {:.1} s ({rate:.0} images/s): checkpoint {}, metrics {}, loss curve {}, weights {} (official names)",
        t0.elapsed().as_secs_f64(),
        summary.checkpoint.display(),
        metrics_path(&cfg.run.out).display(),
        curve.display(),
        weights.display(),
    );
    Ok(())
}

fn inspect(file: &Path) -> Result<()> {
    let w = mim::weights::open(file)?;
    let d = &w.detected;
    println!("file        {}", file.display());
    println!("format      {}", w.file.format.map_or("mim checkpoint".to_string(), |f| format!("{f:?}")));
    if let Some(key) = &w.file.nested {
        let others = if w.file.ignored.is_empty() { "nothing else".to_string() } else { w.file.ignored.join(", ") };
        println!("weights     under '{key}' (also in the file, unused: {others})");
    }
    println!("naming      {}", d.naming);
    println!("holds       {}", d.holds);
    println!("parameters  {} ({:.1} M)", w.parameter_count(), w.parameter_count() as f64 / 1e6);
    println!("config      (from {}) {}", w.config_source, serde_json::to_string(&d.config)?);
    for (what, value) in &d.assumed {
        println!("assumed     {what} = {value}");
    }
    if let Ok((n, why)) = w.input_normalization() {
        println!("inputs      mean {:?}, std {:?} ({why})", n.mean, n.std);
    }
    if let Some(p) = mim::results::Pretraining::of_checkpoint(file)? {
        println!("pretrained  {} ({:.0} s on {} threads)", p.describe(), p.seconds, p.threads);
    }
    for what in &d.unknown {
        println!("unknown     {what}: not stored and no rule fits; give the configuration (--model, --hf-config)");
    }
    Ok(())
}

fn run_reconstruct(a: &ReconstructArgs) -> Result<PathBuf> {
    let device = mim::runtime::device(&a.device)?;
    let model = match (&a.checkpoint, &a.weights) {
        (Some(path), _) => Reconstructor::from_checkpoint(path, &device)?,
        (None, Some(weights)) => {
            let mut file = mim::weights::open(weights)?;
            if let Some(json) = &a.hf_config {
                let text =
                    std::fs::read_to_string(json).with_context(|| format!("cannot read '{}'", json.display()))?;
                let cfg = mim::weights::mae_config_from_hf(
                    &serde_json::from_str(&text).with_context(|| format!("'{}' is not JSON", json.display()))?,
                )?;
                file =
                    file.with_config(mim::models::pretrain::ModelConfig::Mae(cfg), format!("'{}'", json.display()))?;
            } else if let Some(preset) = &a.model {
                file =
                    file.with_config(mim::models::pretrain::ModelConfig::preset(preset)?, format!("preset {preset}"))?;
            }
            if let Some(side) = a.img_size {
                file = file.at_image_size(side)?;
            }
            for (what, value) in &file.detected.assumed {
                eprintln!("note: {what} = {value}; pass --model or --hf-config if that is wrong");
            }
            let (normalization, why) = file.input_normalization()?;
            eprintln!(
                "note: images normalised with mean {:?}, std {:?} ({why})",
                normalization.mean, normalization.std
            );
            Reconstructor::from_weights(&file, normalization, &device)?
        }
        (None, None) => bail!("pass --checkpoint or --weights"),
    };
    let images = if a.images.is_empty() {
        Images::Dataset { data: a.data.clone(), split: a.split, indices: a.indices.clone() }
    } else {
        Images::Files { files: a.images.clone(), data: a.data.clone() }
    };
    let mask = match &a.mask_image {
        Some(p) => MaskChoice::Image(p.clone()),
        None if !a.visible.is_empty() => MaskChoice::Visible(a.visible.clone()),
        None => MaskChoice::Random { ratio: a.mask_ratio, seed: a.seed },
    };
    if model.config().in_chans() == 1 {
        for file in a.images.iter().filter(|f| mim::data::folder::is_colour(f).unwrap_or(false)) {
            eprintln!("note: '{}' is a colour image; this 1-channel model sees it in greyscale (luma)", file.display());
        }
    }
    if model.config().in_chans() == 3
        && let Images::Dataset { data: Some(d), split, .. } = &images
        && mim::data::Dataset::open(d, *split).is_ok_and(|ds| ds.channels == 1)
    {
        eprintln!("note: '{}' is greyscale; this RGB model sees each image in all three channels", d.display());
    }
    let done = model.write_pictures(&images, &mask, &a.out, a.scale, !a.no_titles)?;
    eprintln!(
        "{} images ({}), {} of {} patches removed: {} (and one file per image) | columns: original, masked, reconstruction, reconstruction + visible",
        done.labels.len(),
        done.labels.join(", "),
        done.removed,
        done.patches,
        done.picture.display()
    );
    Ok(done.picture)
}

/// Pretraining settings a resume may change: none of them alters which run it is.
const PRETRAIN_MUTABLE: &[&str] =
    &["epochs", "device", "prefetch", "checkpoint_every", "keep_checkpoints", "eval_every", "knn_images"];

/// A job's settings: the TOML file's (or the defaults), then the flags that were given.
fn settings<C: Default + serde::Serialize + serde::de::DeserializeOwned>(
    file: Option<&Path>,
    flags: impl FnOnce(&mut C),
) -> Result<C> {
    let mut cfg = match file {
        Some(path) => mim::train::config::read_toml(path)?,
        None => C::default(),
    };
    flags(&mut cfg);
    Ok(cfg)
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Pretrain(args) => {
            let mut cfg = settings(args.config.as_deref(), |c| args.settings.apply(c))?;
            let resume = args.resume.checkpoint(|| checkpoint_path(&cfg.run.out));
            match &resume {
                Some(r) => {
                    if !r.exists() {
                        bail!("nothing to resume: '{}' does not exist (run without --resume to start)", r.display());
                    }
                    let saved = checkpoint::read_header(r)?.train;
                    cfg = resume::resumed(
                        r,
                        &saved,
                        &cfg,
                        args.config.as_deref(),
                        PRETRAIN_MUTABLE,
                        &["data", "tokenizer"],
                        &cfg.run.out,
                    )?;
                }
                None => {
                    resume::absolute(&mut cfg.run.data);
                    cfg.tokenizer.iter_mut().for_each(resume::absolute);
                }
            }
            run_pretrain(&cfg, resume.as_deref())
        }
        Command::Demo { out, epochs } => {
            // Pixel targets, as the official visualisation model: with norm_pix_loss the picture
            // borrows each removed patch's true mean and variance and would flatter the model.
            // Small batches give the few minutes of training more updates.
            let defaults = PretrainConfig::default();
            let cfg = PretrainConfig {
                run: RunConfig { out: out.clone(), epochs, batch_size: 64, ..defaults.run },
                optim: OptimConfig { lr: Some(1e-3), warmup_epochs: Some(0.3), ..defaults.optim },
                norm_pix_loss: false,
                ..defaults
            };
            ensure!(
                cfg.run.data.exists(),
                "mim demo trains on the shipped Fashion-MNIST subset '{}', which is not here: run it from the \
                 repository's root",
                cfg.run.data.display()
            );
            let ck = checkpoint_path(&out);
            let resume = ck.exists().then_some(ck.as_path());
            if resume.is_some() {
                // Only the demo's own run is continued: any other would be trained on with the demo's recipe.
                let recipe = |mut v: serde_json::Value| {
                    v["run"]["epochs"] = serde_json::Value::Null;
                    v
                };
                ensure!(
                    recipe(checkpoint::read_header(&ck)?.train)
                        == recipe(mim::train::trainer::settings_for_header(&cfg)?),
                    "'{}' holds a run that is not an earlier `mim demo` (another model, data or recipe): give the demo \
                     another --out, or delete the folder to start over",
                    out.display()
                );
                eprintln!(
                    "'{}' holds an earlier demo run: continuing it (delete the folder to start over)",
                    out.display()
                );
            }
            if resume.is_none() || checkpoint::read_header(&ck)?.epoch < epochs as u64 {
                run_pretrain(&cfg, resume)?;
            }
            // The same test images and masks through the demo's model and, beside it, the shipped
            // MAE trained on all of Fashion-MNIST: what longer training buys.
            let reconstruct = |checkpoint: Option<PathBuf>, weights: Option<PathBuf>, out: PathBuf| {
                run_reconstruct(&ReconstructArgs {
                    checkpoint,
                    weights,
                    hf_config: None,
                    model: None,
                    img_size: None,
                    data: Some(cfg.run.data.clone()),
                    split: Split::Test,
                    indices: (0..8).collect(),
                    images: vec![],
                    mask_ratio: Some(0.75),
                    seed: 0,
                    visible: vec![],
                    mask_image: None,
                    out,
                    scale: 4,
                    no_titles: false,
                    device: "cpu".into(),
                })
            };
            let picture = reconstruct(Some(ck.clone()), None, out.clone())?;
            eprintln!("demo picture: {}", picture.display());
            let shipped = PathBuf::from(mim::serve::shipped(Method::Mae).weights);
            if shipped.exists() {
                let picture = reconstruct(None, Some(shipped.clone()), out.join("pretrained"))?;
                eprintln!(
                    "the same images and masks through the shipped MAE, trained on all of Fashion-MNIST ('{}', see pretrained/README.md): {}",
                    shipped.display(),
                    picture.display()
                );
            }
            Ok(())
        }
        Command::Reconstruct(a) => run_reconstruct(&a).map(|_| ()),
        Command::Bench(a) => run_bench(&a),
        Command::Finetune(a) => evaluate::run_finetune(&a),
        Command::Ablate(a) => ablate::run_ablate(&a),
        Command::Linprobe(a) => evaluate::run_linprobe(&a),
        Command::Knn(a) => evaluate::run_knn(&a),
        Command::Embed(a) => evaluate::run_embed(&a),
        Command::Tokenizer(a) => tokenizer::run_tokenizer(&a),
        Command::Check { fixtures, device, generic_ops } => {
            let dev = mim::runtime::device(&device)?;
            let rows = if generic_ops {
                mim::ops::with_generic_ops(|| mim::check::parity(&fixtures, &dev))?
            } else {
                mim::check::parity(&fixtures, &dev)?
            };
            let path = if generic_ops { "burn's generic ops" } else { "mim's kernels where they apply" };
            println!(
                "parity on {device} ({path}), tolerance {:.0e} absolute, {:.0e} relative to the tensor's largest entry\n",
                mim::check::TOLERANCE,
                mim::check::RELATIVE_TOLERANCE
            );
            println!("{}", mim::check::TABLE_HEADER);
            rows.iter().for_each(|r| println!("{r}"));
            mim::check::ensure_passed(&rows)
        }
        Command::Inspect { file } => inspect(&file),
        Command::Convert { input, output, to, half } => {
            let w = with_pretraining(mim::weights::open(&input)?)?;
            let naming = match to {
                ConvertTo::Official => mim::weights::Naming::Official,
                ConvertTo::Hf => mim::weights::Naming::HuggingFace,
                ConvertTo::Timm => mim::weights::Naming::Timm,
            };
            let done = mim::weights::convert(&w, naming, &output, precision(half))?;
            for what in &done.left_out {
                eprintln!("left out {what}");
            }
            for path in &done.written {
                eprintln!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Attention { checkpoint, data, split, indices, images, out, scale } => {
            let w = mim::weights::open(&checkpoint)?;
            for (what, value) in &w.detected.assumed {
                eprintln!("note: {what} = {value}");
            }
            let images = if images.is_empty() {
                mim::viz::Images::Dataset { data, split, indices }
            } else {
                mim::viz::Images::Files { files: images, data }
            };
            for path in mim::attention::write_attention_pictures(&w, &images, &out, scale)? {
                eprintln!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Serve {
            checkpoint,
            method,
            tokenizer,
            data,
            split,
            neighbours,
            scale,
            host,
            port,
            upload_limit_mb,
        } => {
            if !host.is_loopback() {
                eprintln!(
                    "warning: listening on {host}: anyone who can reach this machine sees the model, the dataset and \
                     the photos uploaded (use --host 127.0.0.1 to keep it local)"
                );
            }
            if !upload_limit_mb.is_finite() || upload_limit_mb <= 0.0 {
                bail!("--upload-limit-mb must be positive, not {upload_limit_mb}");
            }
            let viewer = match (checkpoint, method) {
                (Some(_), Some(_)) => bail!("--method picks a shipped model: give it or --checkpoint, not both"),
                (Some(checkpoint), None) => {
                    mim::serve::ViewerConfig { checkpoint, data, split, neighbour_pool: neighbours, scale, tokenizer }
                }
                (None, method) => {
                    let shipped = mim::serve::shipped(method.unwrap_or_default()).viewer();
                    if !shipped.checkpoint.exists() {
                        bail!(
                            "no --checkpoint given and the shipped model '{}' is not here: run from the repository's \
                             root or pass --checkpoint",
                            shipped.checkpoint.display()
                        );
                    }
                    mim::serve::ViewerConfig {
                        data: data.or(shipped.data),
                        tokenizer: tokenizer.or(shipped.tokenizer),
                        split,
                        neighbour_pool: neighbours,
                        scale,
                        ..shipped
                    }
                }
            };
            let cfg = mim::serve::ServeConfig { viewer, host, port, upload_limit: (upload_limit_mb * 1e6) as usize };
            let server = mim::serve::start(cfg, &mut |m| eprintln!("{m}"))?;
            eprintln!("mim serve: open {} (Ctrl-C stops it)", server.url());
            server.wait()
        }
        Command::Report { run, out } => {
            let file = mim::report::write_report(&run, out.as_deref())?;
            eprintln!("wrote {} (opens from disk, no server needed)", file.display());
            Ok(())
        }
        Command::Results { records, write, plots } => {
            let studies = mim::results::summarise(&mim::results::read_records(&records)?)?;
            ensure!(!studies.is_empty(), "no records in '{}': write them with --record", records.display());
            let mut tables = mim::results::markdown(&studies);
            if let Some(dir) = &plots {
                std::fs::create_dir_all(dir).with_context(|| format!("cannot create '{}'", dir.display()))?;
                for study in &studies {
                    let file = dir
                        .join(format!("{}.png", study.name.replace(|c: char| !c.is_alphanumeric() && c != '-', "_")));
                    if mim::results::plot_study(study, &file)? {
                        eprintln!("wrote {}", file.display());
                        // The document links the plot relative to itself.
                        let base = write.as_deref().and_then(Path::parent).unwrap_or(Path::new(""));
                        let link = relative_to(&file, base)?;
                        tables += &format!("\n![{}]({})\n", study.name, link.display());
                    }
                }
            }
            match write {
                Some(doc) => {
                    let text =
                        std::fs::read_to_string(&doc).with_context(|| format!("cannot read '{}'", doc.display()))?;
                    let mut text = mim::results::replace_generated(&text, &tables)
                        .with_context(|| format!("'{}'", doc.display()))?;
                    // The summary block is optional: a document that has its markers opens with it.
                    if mim::results::marker_line(&text, mim::results::SUMMARY_BEGIN, 0).is_some() {
                        let markers = (mim::results::SUMMARY_BEGIN, mim::results::SUMMARY_END);
                        let summary = mim::results::summary_markdown(&studies);
                        text = mim::results::replace_between(&text, markers, &summary)
                            .with_context(|| format!("'{}'", doc.display()))?;
                    }
                    mim::io::write_atomic(&doc, &[text.as_bytes()])?;
                    eprintln!("wrote the tables of {} study(ies) into {}", studies.len(), doc.display());
                }
                None => print!("{tables}"),
            }
            Ok(())
        }
        Command::Export { checkpoint: ck, out, device, half } => {
            mim::runtime::device(&device)?;
            let w = with_pretraining(mim::weights::from_checkpoint(&ck)?)?;
            mim::weights::convert(&w, mim::weights::Naming::Official, &out, precision(half))?;
            eprintln!("wrote {}", out.display());
            Ok(())
        }
    }
}

/// `w` with the pretraining of the mim checkpoint it was read from, for [`mim::weights::convert`]
/// to write into the metadata (a weights file already carries its own, or none).
fn with_pretraining(mut w: mim::weights::Weights) -> Result<mim::weights::Weights> {
    if w.file.format.is_none() {
        w.pretraining =
            mim::results::Pretraining::of_checkpoint(&w.path)?.map(|p| serde_json::to_string(&p)).transpose()?;
    }
    Ok(w)
}

/// `path` as a link from a document in folder `base` (`../plots/x.png` for `plots/x.png` from `docs/`).
fn relative_to(path: &Path, base: &Path) -> Result<PathBuf> {
    let (path, base) = (std::path::absolute(path)?, std::path::absolute(base)?);
    let common = path.components().zip(base.components()).take_while(|(a, b)| a == b).count();
    let up = base.components().skip(common).map(|_| std::path::Component::ParentDir);
    Ok(up.chain(path.components().skip(common)).collect())
}

/// `--scale`: 1 to 32 (a 224 px image at 32x is a 7,168 px panel, already more than a screen).
fn scale_range() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..=32)
}

/// A count that must be at least 1.
fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..)
}

fn precision(half: bool) -> mim::io::Precision {
    if half { mim::io::Precision::F16 } else { mim::io::Precision::F32 }
}

fn main() -> ExitCode {
    mim::runtime::tune_allocator();
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    // Which flags were typed (not defaulted): a resumed run refuses the ones it cannot honour.
    resume::record_given(&matches);
    let cli = <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
