//! Test top-1 after every fine-tuning epoch, mean ± standard deviation over seeds, one line per
//! group of runs: how fast a pretrained encoder learns against the same one from scratch.
//!
//! ```bash
//! cargo run --release --example finetune_curves -- out.png \
//!     "MAE pretrained=runs/ft-mae-s0,runs/ft-mae-s1" "from scratch=runs/ft-scratch-s0,runs/ft-scratch-s1"
//! ```
//! Each run is a `mim finetune` output folder or its per-epoch `eval.jsonl`; the runs of a group
//! (its seeds) must have been evaluated after the same epochs.

use anyhow::{Context, Result, bail, ensure};
use mim::results::mean_std;
use mim::train::finetune::{read_results, results_path};
use std::path::Path;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((out, groups)) = args.split_first() else {
        bail!("usage: finetune_curves OUT.png LABEL=RUN[,RUN...] [LABEL=RUN[,RUN...] ...]")
    };
    let mut series = Vec::new();
    for group in groups {
        let (label, runs) = group.split_once('=').with_context(|| format!("'{group}' is not LABEL=RUN[,RUN...]"))?;
        // Per run, (epoch, top-1) of each evaluated epoch (every epoch, or every --eval-every N).
        let mut runs_top1: Vec<Vec<(u64, f64)>> = Vec::new();
        for run in runs.split(',') {
            let path = Path::new(run);
            let file = if path.is_dir() { results_path(path) } else { path.to_path_buf() };
            runs_top1.push(read_results(&file)?.iter().map(|r| (r.epoch, r.top1)).collect());
        }
        let evaluated: Vec<u64> = runs_top1[0].iter().map(|&(e, _)| e).collect();
        ensure!(
            runs_top1.iter().all(|t| t.iter().map(|&(e, _)| e).eq(evaluated.iter().copied())),
            "the runs of '{label}' were evaluated after different epochs"
        );
        let points: Vec<(f64, f64, f64)> = (0..evaluated.len())
            .map(|i| {
                let (mean, std) = mean_std(&runs_top1.iter().map(|t| t[i].1).collect::<Vec<_>>());
                (evaluated[i] as f64, mean, std)
            })
            .collect();
        let (epoch, last, std) = *points.last().context("a run with no evaluated epoch")?;
        println!("{label}: {} run(s), top-1 after epoch {epoch}: {last:.2} ± {std:.2}", runs_top1.len());
        series.push((label, points));
    }
    let title = "Fine-tuning: test top-1 per epoch (mean ± std over seeds)";
    mim::viz::error_bar_chart(out.as_ref(), title, "fine-tuning epoch", "test top-1 (%)", &series, &[])?;
    println!("wrote {out}");
    Ok(())
}
