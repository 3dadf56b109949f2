//! The `tokenizer` commands: `tokenizer train` (a VQ-VAE whose token ids are BEiT's targets) and
//! `tokenizer show` (reconstructions through the tokens and codebook use).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};

use mim::data::{Dataset, Split};
use mim::train::tokenizer::{
    TokenizerTrainArgs, TokenizerTrainConfig, evaluate_tokenizer, load_tokenizer, reconstruction_picture,
    tokenizer_checkpoint_path, tokenizer_metrics_path, train_tokenizer,
};

use crate::Bar;

/// `mim tokenizer ...`
#[derive(Args)]
pub struct TokenizerArgs {
    #[command(subcommand)]
    command: TokenizerCommand,
}

#[derive(Subcommand)]
enum TokenizerCommand {
    /// Train a VQ-VAE tokenizer (EMA codebook) with one token per BEiT patch.
    Train(TrainArgs),
    /// Picture of original | reconstruction from tokens, and codebook statistics, from a checkpoint.
    Show(ShowArgs),
}

#[derive(Args)]
struct TrainArgs {
    /// TOML file with any TokenizerTrainConfig fields.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    resume: crate::resume::ResumeArgs,
    #[command(flatten)]
    settings: TokenizerTrainArgs,
}

#[derive(Args)]
struct ShowArgs {
    /// Checkpoint written by `mim tokenizer train`.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Dataset (default: the one the tokenizer was trained on).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Dataset split.
    #[arg(long, value_enum, default_value = "test")]
    split: Split,
    /// Dataset indices of the pictured images, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0,1,2,3,4,5,6,7")]
    indices: Vec<usize>,
    /// Images over which codebook statistics are computed.
    #[arg(long, default_value_t = 10_000)]
    max_images: usize,
    /// Images per forward pass.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Output folder.
    #[arg(long, default_value = "runs/tokenizer-show")]
    out: PathBuf,
    /// cpu, or cuda:N in a CUDA build.
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// Runs `mim tokenizer ...`.
pub fn run_tokenizer(a: &TokenizerArgs) -> Result<()> {
    match &a.command {
        TokenizerCommand::Train(t) => run_train(t),
        TokenizerCommand::Show(s) => run_show(s),
    }
}

fn run_train(a: &TrainArgs) -> Result<()> {
    let mut cfg: TokenizerTrainConfig = crate::settings(a.config.as_deref(), |c| a.settings.apply(c))?;
    let resume = a.resume.checkpoint(|| tokenizer_checkpoint_path(&cfg.run.out));
    if let Some(r) = resume.as_ref().filter(|r| !r.exists()) {
        bail!("nothing to resume: '{}' does not exist (run without --resume to start)", r.display());
    }
    match &resume {
        Some(r) => {
            let saved = mim::train::tokenizer::read_tokenizer_header(r)?.train;
            let mutable = &["epochs", "device", "prefetch", "checkpoint_every", "keep_checkpoints"];
            cfg = crate::resume::resumed(r, &saved, &cfg, a.config.as_deref(), mutable, &["data"], &cfg.run.out)?;
        }
        None => crate::resume::absolute(&mut cfg.run.data),
    }
    let t0 = Instant::now();
    let summary = train_tokenizer(&cfg, resume.as_deref(), &mut Bar::default())?;
    let last = summary.steps.last().map_or(String::new(), |m| {
        format!(
            "; last step: loss {:.4}, recon {:.4}, perplexity {:.1}, codebook usage {:.1}%",
            m.step.loss,
            m.recon_loss,
            m.perplexity,
            100.0 * m.codebook_usage
        )
    });
    eprintln!(
        "done in {:.1} s: checkpoint {}, metrics {}, picture {}{last}",
        t0.elapsed().as_secs_f64(),
        summary.checkpoint.display(),
        tokenizer_metrics_path(&cfg.run.out).display(),
        summary.picture.display()
    );
    Ok(())
}

fn run_show(a: &ShowArgs) -> Result<()> {
    let ck = load_tokenizer(&a.checkpoint, &mim::runtime::device(&a.device)?)?;
    let data = match &a.data {
        Some(d) => d.clone(),
        None => mim::train::config::from_json::<TokenizerTrainConfig>(ck.header.train.clone())?.run.data,
    };
    let ds = Dataset::open(&data, a.split)?;
    if let Some(&bad) = a.indices.iter().find(|&&i| i >= ds.len()) {
        bail!("index {bad} is out of range: the {:?} split of '{}' has {} images", a.split, data.display(), ds.len());
    }
    let picture = a.out.join("tokenizer_reconstructions.png");
    reconstruction_picture(&ck.model, &ds, &a.indices, &picture)?;
    let report = evaluate_tokenizer(&ck.model, &ds, a.max_images, a.batch_size)?;
    println!("{}", serde_json::to_string(&report)?);
    eprintln!(
        "{} images: reconstruction MSE {:.4} (normalised pixels), perplexity {:.1}, {} of {} codes used ({:.1}%) | picture {} \
         (columns: original, reconstruction from tokens)",
        report.images,
        report.recon_mse,
        report.perplexity,
        report.codes_used,
        report.vocab_size,
        100.0 * report.codes_used as f64 / report.vocab_size as f64,
        picture.display()
    );
    Ok(())
}
