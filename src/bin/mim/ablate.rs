//! `mim ablate STUDY`: the MAE paper's ablations on the user's data and machine.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;

use mim::ablate::{AblateConfig, Study, run_study};
use mim::train::finetune::FinetuneConfig;
use mim::eval::linprobe::LinprobeConfig;
use mim::train::pretrain::PretrainConfig;

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
    #[arg(long, default_value = "data/fashion-mnist-subset")]
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
    #[arg(long)]
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
}

/// Runs `mim ablate`.
pub fn run_ablate(a: &AblateArgs) -> Result<()> {
    let t0 = Instant::now();
    let max_images = a.max_images.or(a.quick.then_some(2000));
    let study_name = serde_json::to_value(a.study)?.as_str().unwrap_or("study").to_string();
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from("runs/ablate").join(&study_name));
    let base = PretrainConfig {
        data: a.data.clone(),
        model: Some(a.model.clone()),
        epochs: a.epochs.unwrap_or(if a.quick { 2 } else { 20 }),
        batch_size: a.batch_size,
        lr: Some(a.lr),
        warmup_epochs: Some(if a.quick { 0.3 } else { 1.0 }),
        max_images,
        seed: a.seed,
        tokenizer: a.tokenizer.clone(),
        ..PretrainConfig::default()
    };
    let finetune = FinetuneConfig {
        epochs: a.finetune_epochs.unwrap_or(if a.quick { 1 } else { 5 }),
        batch_size: a.batch_size,
        lr: Some(1e-3),
        warmup_epochs: 0.5,
        crop_scale: (0.35, 1.0),
        max_images,
        seed: a.seed,
        ..FinetuneConfig::default()
    };
    let cfg = AblateConfig { study: a.study, base, finetune, probe: LinprobeConfig::default(), probe_images: max_images, quick: a.quick, out: out.clone() };
    let rows = run_study(&cfg, &mut Bar::default())?;
    println!("{}", std::fs::read_to_string(out.join("table.md"))?);
    eprintln!("{} settings in {:.0} s: {} (table), {} (plot), {} (raw)", rows.len(), t0.elapsed().as_secs_f64(),
        out.join("table.md").display(), out.join("plot.png").display(), out.join("results.jsonl").display());
    Ok(())
}
