//! `mim ablate STUDY`: the MAE paper's ablations on the user's data and machine.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;

use mim::ablate::{AblateConfig, Study, run_study};
use mim::eval::linprobe::LinprobeConfig;
use mim::train::finetune::FinetuneConfig;
use mim::train::pretrain::PretrainConfig;
use mim::train::{OptimConfig, RunConfig};

use crate::Bar;

/// `mim ablate` flags.
#[derive(Args)]
pub struct AblateArgs {
    /// mask-ratio (figure 5), decoder-depth, decoder-width, mask-token, target, augmentation,
    /// mask-sampling (Table 1).
    study: Study,
    /// Minutes, not hours: fewer settings, 2,000 images, 2 pretraining epochs, 1 fine-tuning epoch.
    #[arg(long)]
    quick: bool,
    /// Dataset (train and test splits).
    #[arg(long, default_value = mim::data::SHIPPED_SUBSET)]
    data: PathBuf,
    /// Output folder (default: runs/ablate/STUDY); a rerun resumes the sweep.
    #[arg(long)]
    out: Option<PathBuf>,
    /// MAE preset every setting starts from.
    #[arg(long, default_value = "mae_tiny_28")]
    model: String,
    /// Training images for pretraining, probing and fine-tuning (default: all; 2,000 with --quick).
    #[arg(long)]
    max_images: Option<usize>,
    /// Pretraining epochs per setting (default 20; 2 with --quick).
    #[arg(long)]
    epochs: Option<usize>,
    /// Fine-tuning epochs per setting (default 5; 1 with --quick).
    #[arg(long, value_parser = crate::at_least_one())]
    finetune_epochs: Option<usize>,
    /// Images per pretraining and fine-tuning step.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Peak pretraining learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Seed of every run.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// `target` study: a visual tokenizer (`mim tokenizer train`) adds the dVAE-token row.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Also append each finished setting's linear probe and fine-tuning, with commit, command line,
    /// seed, machine and wall time, as JSON lines to this file (`mim results` makes tables and a
    /// plot of them, e.g. docs/results/NAME.jsonl).
    #[arg(long)]
    record: Option<PathBuf>,
    /// The study (table) the records belong to [default: "MAE ablation: STUDY"].
    #[arg(long, requires = "record")]
    record_study: Option<String>,
}

/// Runs `mim ablate`.
pub fn run_ablate(a: &AblateArgs) -> Result<()> {
    let t0 = Instant::now();
    let max_images = a.max_images.or(a.quick.then_some(2000));
    let study_name = serde_json::to_value(a.study)?.as_str().unwrap_or("study").to_string();
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from("runs/ablate").join(&study_name));
    let run =
        RunConfig { data: a.data.clone(), batch_size: a.batch_size, max_images, seed: a.seed, ..RunConfig::default() };
    let pretrain_defaults = PretrainConfig::default();
    let base = PretrainConfig {
        run: RunConfig { epochs: a.epochs.unwrap_or(if a.quick { 2 } else { 20 }), ..run.clone() },
        optim: OptimConfig {
            lr: Some(a.lr),
            warmup_epochs: Some(if a.quick { 0.3 } else { 1.0 }),
            ..pretrain_defaults.optim
        },
        model: Some(a.model.clone()),
        tokenizer: a.tokenizer.clone(),
        ..pretrain_defaults
    };
    let finetune_defaults = FinetuneConfig::default();
    let finetune = FinetuneConfig {
        run: RunConfig { epochs: a.finetune_epochs.unwrap_or(if a.quick { 1 } else { 5 }), ..run },
        optim: OptimConfig { lr: Some(1e-3), warmup_epochs: Some(0.5), ..finetune_defaults.optim },
        crop_scale: (0.35, 1.0),
        ..finetune_defaults
    };
    let cfg = AblateConfig {
        study: a.study,
        base,
        finetune,
        probe: LinprobeConfig::default(),
        probe_images: max_images,
        quick: a.quick,
        out: out.clone(),
        record: a
            .record
            .clone()
            .map(|path| (path, a.record_study.clone().unwrap_or_else(|| format!("MAE ablation: {study_name}")))),
    };
    // Each setting ends in a probe and a fine-tuning: refuse data they cannot score before pretraining.
    mim::data::Dataset::open_labelled(&a.data)?;
    let rows = run_study(&cfg, &mut Bar::default())?;
    println!("{}", std::fs::read_to_string(out.join("table.md"))?);
    eprintln!(
        "{} settings in {:.0} s: {} (table), {} (plot), {} (raw)",
        rows.len(),
        t0.elapsed().as_secs_f64(),
        out.join("table.md").display(),
        out.join("plot.png").display(),
        out.join("results.jsonl").display()
    );
    Ok(())
}
